//! `wafleet-worker`: runs the stages named in `WAFLEET_STAGES` (default: all). Start as many as
//! the queues need; partitions rebalance among them by themselves.

use anyhow::Context;
use wafleet::config::var;
use wafleet::stages::process::{self, WorkerProcessSettings};
use wafleet::telemetry;

/// As in ingest: with mimalloc the worker spends about a fifth less CPU per message than with
/// glibc's allocator (`BENCH_MESSAGES=15000 just bench-e2e`, one worker: 0.68 against 0.82 ms).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging();
    let settings = WorkerProcessSettings::from_env()?;
    let addr = var("WAFLEET_WORKER_METRICS_ADDR").unwrap_or_else(|| "127.0.0.1:9091".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding WAFLEET_WORKER_METRICS_ADDR={addr}"))?;
    process::run(settings, listener, wafleet::shutdown_signal()).await
}
