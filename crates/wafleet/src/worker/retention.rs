//! How long what was kept aside for inspection stays in Redis.
//!
//! Nothing consumes these streams, so without a bound they grow for as long as the deployment
//! runs, holding message text and phone numbers: `P:{events}:stream` (Meta's `errors[]` and
//! changes of other fields), `P:{quarantine}:stream` (unknown or disabled numbers, senders outside
//! an allowlist), `P:{dead}:ingest` (signed bodies that did not parse) and every stage's
//! `P:{dead}:<stage>`. Every worker process trims entries older than `WAFLEET_RETENTION_DAYS`
//! from each of them once a minute (`XTRIM … MINID`: idempotent, so many workers doing it is
//! harmless) and counts what it removed in `wafleet_retention_trimmed_total{stream}`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::streams::Keys;

/// The default of `WAFLEET_RETENTION_DAYS`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(14 * 86_400);

/// `WAFLEET_RETENTION_DAYS` (default 14): how long kept-aside entries stay; `None` for `0`, kept
/// until deleted by hand. Read by the workers, which trim, and by `wafleetctl dead replay`, whose
/// marks must last as long as the dead letters ([`crate::dead_letters::replay`]).
pub fn from_env() -> anyhow::Result<Option<Duration>> {
    Ok(
        match crate::config::parsed(
            "WAFLEET_RETENTION_DAYS",
            DEFAULT_RETENTION.as_secs() / 86_400,
        )? {
            0 => None,
            days => Some(Duration::from_secs(days * 86_400)),
        },
    )
}

/// Every stream this module trims.
pub fn kept_aside_streams(keys: &Keys, stages: &[&str]) -> Vec<String> {
    let mut all = vec![keys.events(), keys.quarantine(), keys.ingest_dead()];
    all.extend(stages.iter().map(|s| keys.dead(s)));
    all
}

/// Removes the entries older than `retention` from every kept-aside stream; returns how many
/// entries each stream lost, in [`kept_aside_streams`] order.
pub async fn trim_once<C: redis::aio::ConnectionLike>(
    con: &mut C,
    keys: &Keys,
    stages: &[&str],
    retention: Duration,
) -> redis::RedisResult<Vec<(String, u64)>> {
    // Entry ids start with their Unix ms: everything below the cutoff is older than `retention`.
    let cutoff = chrono::Utc::now().timestamp_millis() - retention.as_millis() as i64;
    let streams = kept_aside_streams(keys, stages);
    let mut trimmed = Vec::with_capacity(streams.len());
    for stream in streams {
        let n: u64 = redis::cmd("XTRIM")
            .arg(&stream)
            .arg("MINID")
            .arg(cutoff.max(0))
            .query_async(con)
            .await?;
        trimmed.push((stream, n));
    }
    Ok(trimmed)
}

/// Trims once a minute until `stop`.
pub async fn run(
    redis: deadpool_redis::Pool,
    keys: Keys,
    stages: &'static [&'static str],
    retention: Duration,
    stop: CancellationToken,
) {
    loop {
        let pass = async {
            let mut con = redis.get().await?;
            Ok::<_, anyhow::Error>(trim_once(&mut con, &keys, stages, retention).await?)
        };
        match pass.await {
            Ok(trimmed) => {
                for (stream, n) in trimmed.into_iter().filter(|(_, n)| *n > 0) {
                    tracing::info!(stream, trimmed = n, "entries past their retention removed");
                    metrics::counter!("wafleet_retention_trimmed_total", "stream" => stream)
                        .increment(n);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "trimming kept-aside streams failed; next try in a minute")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}
