//! Logs and metrics.
//!
//! Logs are structured `tracing` events (JSON when `WAFLEET_LOG_FORMAT=json`), filtered by
//! `RUST_LOG` (default `info`). By rule no log line carries a secret, a token, a message text or
//! a customer's phone number: we log ids Meta gave us (wamid, phone_number_id) and outcomes.
//!
//! Metrics go to one process-wide Prometheus recorder, rendered by each service's `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Buckets for request and job latencies, in seconds: fine-grained under 10 ms, where ingest lives.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

/// Initialises logging once per process (later calls are no-ops, so tests may call it freely).
pub fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let json = std::env::var("WAFLEET_LOG_FORMAT").is_ok_and(|v| v == "json");
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false);
        let _ = if json {
            builder.json().try_init()
        } else {
            builder.try_init()
        };
    });
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process's Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first, e.g. by an embedding program;
            // we then render that one's absence honestly (empty) rather than panic.
            let _ = metrics::set_global_recorder(recorder);
            // Histograms keep raw samples until they are folded into buckets, which a scrape does;
            // unscraped, they would grow by one sample per request. Fold them regularly.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawning the metrics upkeep thread");
            handle
        })
        .clone()
}
