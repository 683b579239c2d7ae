//! `wafleet-ingest`: Meta's webhook endpoint. Settings come from the environment (see the
//! README); everything else is `wafleet::ingest::run`.

use anyhow::Context;
use wafleet::config::IngestSettings;
use wafleet::{ingest, telemetry};

/// glibc's allocator spent about a sixth of ingest's CPU per webhook (`just bench-ingest`, perf);
/// mimalloc takes about 5 µs off each request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The main runtime accepts connections and runs the background work (channel refresh, Postgres);
/// webhooks are served on ingest's own threads (`WAFLEET_INGEST_THREADS`), so it needs one thread.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), wafleet::telemetry::Exit> {
    telemetry::check_logging_env()?;
    telemetry::init_logging();
    telemetry::install_panic_hook();
    let settings = IngestSettings::from_env()?;
    let listener =
        wafleet::listen(settings.listen).with_context(|| format!("binding {}", settings.listen))?;
    Ok(ingest::run(settings, listener, wafleet::shutdown_signal()).await?)
}
