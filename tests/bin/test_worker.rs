//! A worker process for multi-process tests (the test can `kill -9` it).
//!
//! `TEST_WORKER_MODE=real` runs the real stages exactly like `wafleet-worker`.
//! `TEST_WORKER_MODE=crash` runs a probe stage on the inbound streams whose handler aborts the
//! process on entries with `poison=crash` and records every other entry it finishes in the list
//! `<prefix>:test:done`.

use std::sync::Arc;

use redis::AsyncCommands;
use wafleet::config::CommonSettings;
use wafleet::stages::process::{self, WorkerProcessSettings};
use wafleet::streams::Keys;
use wafleet::worker::{self, Handler, Job, Outcome, Source, Stage, StageRuntime, WorkerSettings};

struct Crasher {
    redis: deadpool_redis::Pool,
    done: String,
}

impl Handler for Crasher {
    async fn handle(&self, job: &Job) -> Outcome {
        if job.field("poison") == Some("crash") {
            std::process::abort();
        }
        let Ok(mut con) = self.redis.get().await else {
            return Outcome::Unavailable {
                reason: "redis".into(),
            };
        };
        match con.rpush::<_, _, ()>(&self.done, &job.id).await {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Unavailable {
                reason: e.to_string(),
            },
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    wafleet::telemetry::check_logging_env()?;
    wafleet::telemetry::init_logging();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    match std::env::var("TEST_WORKER_MODE").as_deref() {
        Ok("crash") => {
            let common = CommonSettings::from_env()?;
            let keys = Keys::new(common.redis_prefix.clone(), common.partitions);
            let redis = wafleet::shared_redis::blocking_pool(common.redis_url.expose(), 64)?;
            let stop = tokio_util::sync::CancellationToken::new();
            let handler = Crasher {
                redis: redis.clone(),
                done: format!("{}:test:done", common.redis_prefix),
            };
            let rt = StageRuntime {
                stage: Stage {
                    name: "probe",
                    source: Source::Inbound,
                },
                keys,
                redis,
                shared: wafleet::shared_redis::SharedRedis::new(
                    common.redis_url.expose(),
                    std::time::Duration::from_secs(2),
                )?,
                handler: Arc::new(handler),
                settings: WorkerSettings::from_env()?,
                shutdown: stop.clone(),
            };
            let run = tokio::spawn(worker::run_stage(rt));
            wafleet::shutdown_signal().await;
            stop.cancel();
            run.await?
        }
        _ => {
            process::run(
                WorkerProcessSettings::from_env()?,
                listener,
                wafleet::shutdown_signal(),
            )
            .await
        }
    }
}
