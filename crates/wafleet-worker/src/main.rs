//! `wafleet-worker`: runs the stages named in `WAFLEET_STAGES` (default: all). Start as many as
//! the queues need; partitions rebalance among them by themselves.

use anyhow::Context;
use wafleet::config::var;
use wafleet::stages::process::{self, WorkerProcessSettings};
use wafleet::telemetry;

// glibc's allocator. Its malloc/free are about a quarter of the worker's CPU (`perf`), and
// both faster allocators were measured (`just bench-e2e`) and left out:
// - mimalloc (as in ingest) took about a fifth off the CPU per message, but with 1,000 model
//   calls in flight it raised the LLM worker's peak RSS to 110-121 MB, over its 100 MB budget.
// - jemalloc took about a quarter off (15,000 messages: workers 7.0-9.3 s against 9.8-12.4 s)
//   at the same peak RSS, but one LLM worker then got 828-1,181 model calls in flight in the
//   1-s model run (a third of the runs under 1,000, with or without its background thread)
//   against 1,080-1,199 on glibc.

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
