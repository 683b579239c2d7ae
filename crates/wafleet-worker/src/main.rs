//! `wafleet-worker`: runs the stages named in `WAFLEET_STAGES` (default: all). Start as many as
//! the queues need; partitions rebalance among them by themselves.

use anyhow::Context;
use wafleet::config::var;
use wafleet::stages::process::{self, WorkerProcessSettings};
use wafleet::telemetry;

// glibc's allocator, not mimalloc as in ingest: mimalloc took about a fifth off the worker's
// CPU per message, but with 1,000 model calls in flight it raised the LLM worker's peak RSS from
// about 70 MB to 116-121 MB, over the 100 MB it must stay within (`just bench-e2e`).

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
