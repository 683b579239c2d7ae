//! A worker process: hosts one or more stages on the worker runtime, serves `/metrics`,
//! `/healthz` and `/readyz`, samples queue gauges, and stops cleanly on its shutdown future.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wafleet_core::pii::Redactor;

use super::channel_settings::ChannelCache;
use super::conversation::{self, ConversationStage};
use super::status::{self, StatusStage};
use crate::config::{CommonSettings, var};
use crate::ingest::redis_pool;
use crate::streams::Keys;
use crate::worker::{self, StageRuntime, WorkerSettings};
use crate::{db, telemetry};

/// The stages a worker process can run (`WAFLEET_STAGES`).
pub const ALL_STAGES: &[&str] = &["conversation", "status"];

#[derive(Debug, Clone)]
pub struct WorkerProcessSettings {
    pub common: CommonSettings,
    pub runtime: WorkerSettings,
    pub stages: Vec<String>,
}

impl WorkerProcessSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        let stages = var("WAFLEET_STAGES").unwrap_or_else(|| ALL_STAGES.join(","));
        let stages: Vec<String> = stages
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for s in &stages {
            if !ALL_STAGES.contains(&s.as_str()) {
                bail!(
                    "WAFLEET_STAGES: unknown stage {s:?} (known: {})",
                    ALL_STAGES.join(", ")
                );
            }
        }
        Ok(Self {
            common: CommonSettings::from_env()?,
            runtime: WorkerSettings::from_env()?,
            stages,
        })
    }
}

#[derive(Clone)]
struct Probe {
    redis: deadpool_redis::Pool,
    pg: sqlx::PgPool,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// Runs the configured stages until `shutdown`, serving metrics on `listener`.
pub async fn run(
    settings: WorkerProcessSettings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let common = &settings.common;
    let pg = db::connect(common.database_url.expose(), common.database_pool_size).await?;
    db::migrate(&pg).await?;
    // Blocking reads hold a connection per owned partition; leave room for the jobs' own calls.
    let redis = redis_pool(
        common.redis_url.expose(),
        common.redis_pool_size + common.partitions as usize,
    )?;
    let keys = Keys::new(common.redis_prefix.clone(), common.partitions);
    let stop = CancellationToken::new();
    let probe = Probe {
        redis: redis.clone(),
        pg: pg.clone(),
        metrics: telemetry::metrics_handle(),
    };
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(p): State<Probe>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    p.metrics.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(probe);
    tracing::info!(addr = %listener.local_addr()?, stages = ?settings.stages, "worker serving metrics");
    let http = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );

    let mut tasks = tokio::task::JoinSet::new();
    let mut stages = Vec::new();
    let redactor = Arc::new(Redactor::new());
    for name in &settings.stages {
        match name.as_str() {
            "conversation" => {
                let handler = ConversationStage {
                    pg: pg.clone(),
                    redis: redis.clone(),
                    keys: keys.clone(),
                    channels: ChannelCache::new(pg.clone()),
                    redactor: redactor.clone(),
                };
                stages.push(conversation::STAGE);
                tasks.spawn(worker::run_stage(runtime(
                    conversation::STAGE,
                    &keys,
                    &redis,
                    handler,
                    &settings.runtime,
                    &stop,
                )));
            }
            "status" => {
                let handler = StatusStage {
                    pg: pg.clone(),
                    redis: redis.clone(),
                    keys: keys.clone(),
                };
                stages.push(status::STAGE);
                tasks.spawn(worker::run_stage(runtime(
                    status::STAGE,
                    &keys,
                    &redis,
                    handler,
                    &settings.runtime,
                    &stop,
                )));
            }
            other => bail!("unknown stage {other}"),
        }
    }
    let sampler = tokio::spawn(worker::sampler::run(
        redis.clone(),
        keys.clone(),
        stages,
        Duration::from_secs(5),
        stop.clone(),
    ));
    let unanswered = tokio::spawn(sample_unanswered(pg.clone(), stop.clone()));

    let mut result = Ok(());
    tokio::select! {
        _ = shutdown => tracing::info!("shutdown requested"),
        Some(r) = tasks.join_next() => {
            result = r.context("stage task panicked").and_then(|r| r);
            tracing::error!("a stage stopped on its own; shutting the worker down");
        }
    }
    stop.cancel();
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.context("stage task panicked").and_then(|r| r) {
            tracing::error!(error = %e, "stage ended with an error");
            result = Err(e);
        }
    }
    let _ = sampler.await;
    let _ = unanswered.await;
    let _ = http.await;
    result
}

fn runtime<H>(
    stage: worker::Stage,
    keys: &Keys,
    redis: &deadpool_redis::Pool,
    handler: H,
    settings: &WorkerSettings,
    stop: &CancellationToken,
) -> StageRuntime<H> {
    StageRuntime {
        stage,
        keys: keys.clone(),
        redis: redis.clone(),
        handler: Arc::new(handler),
        settings: settings.clone(),
        shutdown: stop.clone(),
    }
}

/// `wafleet_oldest_unanswered_seconds{channel}`: age of the oldest inbound message per channel
/// that is waiting for a bot reply.
async fn sample_unanswered(pg: sqlx::PgPool, stop: CancellationToken) {
    let mut seen: Vec<String> = Vec::new();
    loop {
        let rows: sqlx::Result<Vec<(String, Option<f64>)>> = sqlx::query_as(
            "SELECT c.phone_number_id,
                    EXTRACT(EPOCH FROM now() - min(m.received_at))::float8
               FROM channels c
               LEFT JOIN messages m ON m.channel_id = c.id AND m.action = 'reply' AND m.answered_at IS NULL
              GROUP BY c.phone_number_id",
        )
        .fetch_all(&pg)
        .await;
        if let Ok(rows) = rows {
            for (channel, age) in rows {
                metrics::gauge!("wafleet_oldest_unanswered_seconds", "channel" => channel.clone())
                    .set(age.unwrap_or(0.0));
                if !seen.contains(&channel) {
                    seen.push(channel);
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

async fn ready(State(p): State<Probe>) -> impl IntoResponse {
    let redis_ok = async {
        let mut con = p.redis.get().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut con)
            .await
            .ok()
    };
    let pg_ok = sqlx::query("SELECT 1").execute(&p.pg);
    let (r, g) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(1), redis_ok),
        tokio::time::timeout(Duration::from_secs(1), pg_ok)
    );
    let (r, g) = (matches!(r, Ok(Some(_))), matches!(g, Ok(Ok(_))));
    let status = if r && g {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        format!(
            "redis: {}\npostgres: {}\n",
            if r { "up" } else { "down" },
            if g { "up" } else { "down" }
        ),
    )
}
