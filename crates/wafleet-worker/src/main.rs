//! `wafleet-worker`: runs the stages named in `WAFLEET_STAGES` (default: all). Start as many as
//! the queues need; partitions rebalance among them by themselves.

use anyhow::Context;
use wafleet::config::var;
use wafleet::stages::process::{self, WorkerProcessSettings};
use wafleet::telemetry;

// jemalloc: glibc's malloc/free were about a quarter of the worker's CPU (`perf`), and jemalloc
// takes about that off per message (`just bench-e2e`) at the same memory: one LLM worker with
// 1,200 model calls in flight peaks at 67-68 MB, within its 100 MB budget, most of it hyper's
// ~30 KiB per HTTP/1 connection (README, Allocators). Not mimalloc, as in ingest: it raised that
// peak to 110-121 MB (at 79-87 MB for jemalloc then). (An earlier trial blamed jemalloc for in-flight
// peaks below 1,000; the cause was the simulator's listen queue dropping SYNs, since fixed.)
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> Result<(), wafleet::telemetry::Exit> {
    telemetry::check_logging_env()?;
    telemetry::init_logging();
    telemetry::install_panic_hook();
    let settings = WorkerProcessSettings::from_env()?;
    let addr = var("WAFLEET_WORKER_METRICS_ADDR").unwrap_or_else(|| "127.0.0.1:9091".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding WAFLEET_WORKER_METRICS_ADDR={addr}"))?;
    Ok(process::run(settings, listener, wafleet::shutdown_signal()).await?)
}
