//! Logs and metrics.
//!
//! Logs are structured `tracing` events (JSON when `WAFLEET_LOG_FORMAT=json`), filtered by
//! `RUST_LOG` (default `info`). By rule no log line carries a secret, a token, a message text or
//! a customer's phone number: we log the business number's `phone_number_id`, our own ids
//! (conversation, message, outbound part) and outcomes, never a wamid (Meta's wamids encode the
//! customer's number).
//!
//! Metrics go to one process-wide Prometheus recorder, rendered by each service's `/metrics`.

use std::cell::RefCell;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// An HTTP client error as logs and error messages may show it: reqwest's message with its
/// causes (the outermost is often just "error sending request"), and the URL without its query,
/// since a media download URL carries Meta's signature of a customer's file (`…?mid=…&hash=…`)
/// and a self-hosted model's URL may carry a key. reqwest never shows headers.
pub fn http_error_text(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if let Some(url) = e.url().filter(|u| u.query().is_some()) {
        let mut shown = url.clone();
        shown.set_query(None);
        text = text.replace(url.as_str(), shown.as_str());
    }
    text
}

/// Log lines kept in memory: give a clone to `tracing_subscriber::fmt().with_writer(…)` and
/// read them back with [`CapturedLogs::text`]. For tests that check what a service logs (and
/// what it must never log).
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Buckets for request and job latencies, in seconds: fine-grained under 10 ms, where ingest lives.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

/// The log filter (`RUST_LOG`, default `info`) and whether lines are JSON (`WAFLEET_LOG_FORMAT`:
/// `text`, the default, or `json`). A value that does not parse is an error naming the variable.
pub fn log_settings(
    rust_log: Option<&str>,
    format: Option<&str>,
) -> anyhow::Result<(EnvFilter, bool)> {
    let filter = match rust_log {
        None => EnvFilter::new("info"),
        Some(v) => {
            EnvFilter::try_new(v).map_err(|e| anyhow::anyhow!("RUST_LOG={v:?} is invalid: {e}"))?
        }
    };
    let json = match format {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => anyhow::bail!("WAFLEET_LOG_FORMAT={other:?} is invalid: text or json"),
    };
    Ok((filter, json))
}

/// Checks `RUST_LOG` and `WAFLEET_LOG_FORMAT`: the binaries call it first, so a bad value stops
/// them instead of logging at another level or format than asked.
pub fn check_logging_env() -> anyhow::Result<()> {
    log_settings(
        crate::config::var("RUST_LOG").as_deref(),
        crate::config::var("WAFLEET_LOG_FORMAT").as_deref(),
    )
    .map(|_| ())
}

/// Initialises logging once per process (later calls are no-ops, so tests may call it freely).
/// Bad logging variables fall back to the defaults here; [`check_logging_env`] refuses them.
pub fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let (filter, json) = log_settings(
            crate::config::var("RUST_LOG").as_deref(),
            crate::config::var("WAFLEET_LOG_FORMAT").as_deref(),
        )
        .unwrap_or_else(|_| (EnvFilter::new("info"), false));
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

thread_local! {
    /// Where this thread last panicked, for [`panic_text`] to name when the panic is caught.
    static PANICKED_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// What a panic may say in logs, dead-letter reasons and error messages. Its location always; its
/// message only when it is a literal of our code (`panic!("…")` without arguments). A formatted
/// message may quote the data being handled: std's string-slicing panic quotes the string (a
/// customer's text), `unwrap` shows the error and what it carries.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &'static str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .unwrap_or("message withheld: it may quote the data being handled")
}

/// A caught panic's payload as [`panic_message`] allows, with where this thread panicked when
/// the [hook](install_panic_hook) saw it (a panic caught on the thread it happened on).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    match PANICKED_AT.with(|at| at.borrow_mut().take()) {
        Some(at) => format!("panicked at {at} ({})", panic_message(payload)),
        None => format!("panicked ({})", panic_message(payload)),
    }
}

/// What a binary's `main` ends with on failure: printed as anyhow prints an error (`Error: …`,
/// then its causes under `Caused by:`), but without the backtrace anyhow captures when
/// `RUST_BACKTRACE` is set. A binary stops on a setting or an outage its message names, and 30
/// lines of frames buried that message (panics keep theirs: [`install_panic_hook`]).
pub struct Exit(anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Exit {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl std::fmt::Debug for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let causes: Vec<_> = self.0.chain().skip(1).collect();
        match causes.as_slice() {
            [] => Ok(()),
            [one] => write!(f, "\n\nCaused by:\n    {one}"),
            many => {
                write!(f, "\n\nCaused by:")?;
                many.iter()
                    .enumerate()
                    .try_for_each(|(i, c)| write!(f, "\n    {i}: {c}"))
            }
        }
    }
}

/// A joined task's failure as an error that [`panic_text`] words (tokio's own shows the message).
pub fn joined<T>(r: Result<T, tokio::task::JoinError>) -> anyhow::Result<T> {
    r.map_err(|e| match e.try_into_panic() {
        Ok(payload) => anyhow::anyhow!("a task {}", panic_text(&*payload)),
        Err(e) => anyhow::anyhow!("a task was cancelled ({e})"),
    })
}

/// Replaces Rust's panic report on stderr, which prints the message, with an `error` log line
/// (`panicked`, fields `at`, `thread`, `message` as [`panic_message`] allows, and `backtrace` when
/// `RUST_BACKTRACE` asks for one) and counts `wafleet_panics_total`. The binaries call it once at
/// start; tests leave Rust's report alone, assertion messages included.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map_or_else(|| "an unknown place".to_string(), ToString::to_string);
        PANICKED_AT.with(|slot| *slot.borrow_mut() = Some(at.clone()));
        metrics::counter!("wafleet_panics_total").increment(1);
        let thread = std::thread::current();
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
            .then(|| backtrace.to_string());
        tracing::error!(
            at,
            thread = thread.name().unwrap_or("unnamed"),
            message = panic_message(info.payload()),
            backtrace,
            "panicked"
        );
    }));
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

/// Every service's `/readyz`: 200 when Redis (a connection from `con`, then `PING`) and Postgres
/// (`SELECT 1`) both answer within a second, else 503; the body says which is down.
pub async fn readiness<C: redis::aio::ConnectionLike>(
    con: impl std::future::Future<Output = Option<C>>,
    pg: &sqlx::PgPool,
) -> (axum::http::StatusCode, String) {
    readiness_of(con, postgres_answers(pg)).await
}

/// Whether Postgres answers `SELECT 1`.
pub async fn postgres_answers(pg: &sqlx::PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pg).await.is_ok()
}

/// [`readiness`] with Postgres's answer asked by the caller (`pg_ok`).
pub async fn readiness_of<C: redis::aio::ConnectionLike>(
    con: impl std::future::Future<Output = Option<C>>,
    pg_ok: impl std::future::Future<Output = bool>,
) -> (axum::http::StatusCode, String) {
    let redis_ok = async {
        let mut con = con.await?;
        redis::cmd("PING")
            .query_async::<String>(&mut con)
            .await
            .ok()
    };
    let second = std::time::Duration::from_secs(1);
    let (r, g) = tokio::join!(
        tokio::time::timeout(second, redis_ok),
        tokio::time::timeout(second, pg_ok)
    );
    let (r, g) = (matches!(r, Ok(Some(_))), matches!(g, Ok(true)));
    let up = |ok| if ok { "up" } else { "down" };
    let status = if r && g {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("redis: {}\npostgres: {}\n", up(r), up(g)))
}

/// Every service's `/metrics`: the process's Prometheus exposition.
pub fn exposition(handle: &PrometheusHandle) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        handle.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logging_variables_that_do_not_parse_are_errors_naming_them() {
        let (_, json) = log_settings(None, None).unwrap();
        assert!(!json);
        assert!(
            log_settings(Some("wafleet=debug,warn"), Some("json"))
                .unwrap()
                .1
        );
        assert!(!log_settings(Some("debug"), Some("text")).unwrap().1);
        let bad_level = log_settings(Some("wafleet=loud"), None).unwrap_err();
        assert!(
            bad_level.to_string().starts_with("RUST_LOG="),
            "{bad_level}"
        );
        let bad_format = log_settings(None, Some("yaml")).unwrap_err();
        assert_eq!(
            bad_format.to_string(),
            "WAFLEET_LOG_FORMAT=\"yaml\" is invalid: text or json"
        );
    }

    #[test]
    fn an_exit_prints_the_error_and_its_causes_as_anyhow_does_without_a_backtrace() {
        use anyhow::Context;
        let plain = Exit::from(anyhow::anyhow!("DATABASE_URL must be set"));
        assert_eq!(format!("{plain:?}"), "DATABASE_URL must be set");
        let io = std::io::Error::other("connection refused");
        let one: anyhow::Result<()> = Err(io).context("connecting to Redis (REDIS_URL)");
        assert_eq!(
            format!("{:?}", Exit::from(one.unwrap_err())),
            "connecting to Redis (REDIS_URL)\n\nCaused by:\n    connection refused"
        );
        let two = anyhow::anyhow!("refused")
            .context("handshake")
            .context("starting");
        assert_eq!(
            format!("{:?}", Exit::from(two)),
            "starting\n\nCaused by:\n    0: handshake\n    1: refused"
        );
    }
}
