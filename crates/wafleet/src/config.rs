//! Typed settings from the environment.
//!
//! Variables are read through these helpers (the stages' own settings in their modules), parsed
//! into their types at start-up, and a bad value fails start-up with a message naming the
//! variable. Secrets are wrapped in [`Secret`],
//! whose `Debug` prints `[redacted]`, so a settings struct can be logged whole.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};

/// A value that must never reach logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Reads an optional variable; empty counts as unset.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Reads a required variable.
pub fn required(name: &str) -> anyhow::Result<String> {
    var(name).with_context(|| format!("{name} must be set"))
}

/// Reads and parses a variable, with a default when unset.
pub fn parsed<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={raw:?} is invalid: {e}")),
    }
}

/// [`parsed`] for a count or size where 0 makes no sense (a pool of no connections, no attempts,
/// nothing in flight): 0 fails start-up with a message naming the variable.
pub fn positive<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr + PartialEq + Default,
    T::Err: std::fmt::Display,
{
    let value = parsed(name, default)?;
    if value == T::default() {
        bail!("{name} must be at least 1");
    }
    Ok(value)
}

/// A duration in whole milliseconds, at least 1 (a timeout or interval of 0 would fail every
/// request, or spin).
pub fn millis(name: &str, default: Duration) -> anyhow::Result<Duration> {
    Ok(Duration::from_millis(positive(
        name,
        default.as_millis() as u64,
    )?))
}

/// What every process needs: where Redis and Postgres are, how keys are laid out, and the key
/// that decrypts secrets.
#[derive(Debug, Clone)]
pub struct CommonSettings {
    pub redis_url: Secret<String>,
    pub database_url: Secret<String>,
    /// Prefix of every Redis key, so several deployments (or tests) share one Redis.
    pub redis_prefix: String,
    /// Number of inbound/status stream partitions. Every process must agree on it; change it only
    /// with the streams drained (it re-maps conversations to partitions).
    pub partitions: u32,
    /// How often the running process checks `partitions` against the fleet's recorded count
    /// (`WAFLEET_PARTITIONS_CHECK_MS`, [`crate::partition_count::Watch`]).
    pub partitions_check_every: Duration,
    pub encryption_key: Secret<String>,
    /// `WAFLEET_ENCRYPTION_KEY_PREVIOUS` (comma-separated): keys that still decrypt what they
    /// sealed, during a key rotation.
    pub other_encryption_keys: Vec<Secret<String>>,
    /// Connections in this process's Redis pool, for processes that hold a connection per task
    /// (blocking reads). Ingest does not use it: it shares one multiplexed connection
    /// ([`crate::shared_redis`]).
    pub redis_pool_size: usize,
    /// Connections in this process's Postgres pool.
    pub database_pool_size: u32,
    /// How Postgres plans the prepared statements (see [`crate::db::PlanCacheMode`]).
    pub plan_cache_mode: crate::db::PlanCacheMode,
}

/// Where Redis is and how wafleet lays out its keys: all a tool that works only on streams needs
/// (no encryption key).
#[derive(Debug, Clone)]
pub struct RedisLayout {
    pub redis_url: Secret<String>,
    pub redis_prefix: String,
    pub partitions: u32,
    /// `WAFLEET_PARTITIONS_CHECK_MS`: see [`CommonSettings::partitions_check_every`].
    pub partitions_check_every: Duration,
}

impl RedisLayout {
    /// `REDIS_URL`, `WAFLEET_REDIS_PREFIX`, `WAFLEET_PARTITIONS`.
    pub fn from_env() -> anyhow::Result<Self> {
        let partitions: u32 = parsed("WAFLEET_PARTITIONS", 16)?;
        if partitions == 0 || partitions > 4096 {
            bail!("WAFLEET_PARTITIONS must be between 1 and 4096, got {partitions}");
        }
        let redis_prefix = var("WAFLEET_REDIS_PREFIX").unwrap_or_else(|| "wafleet".into());
        if redis_prefix.contains(['{', '}', ' ']) {
            bail!(
                "WAFLEET_REDIS_PREFIX must not contain braces or spaces (Redis Cluster hash tags)"
            );
        }
        Ok(Self {
            redis_url: Secret::new(required("REDIS_URL")?),
            redis_prefix,
            partitions,
            partitions_check_every: millis(
                "WAFLEET_PARTITIONS_CHECK_MS",
                crate::partition_count::DEFAULT_CHECK_EVERY,
            )?,
        })
    }
}

impl CommonSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        let RedisLayout {
            redis_url,
            redis_prefix,
            partitions,
            partitions_check_every,
        } = RedisLayout::from_env()?;
        Ok(Self {
            redis_url,
            database_url: Secret::new(required("DATABASE_URL")?),
            redis_prefix,
            partitions,
            partitions_check_every,
            encryption_key: Secret::new(required("WAFLEET_ENCRYPTION_KEY")?),
            other_encryption_keys: other_encryption_keys(),
            redis_pool_size: positive("WAFLEET_REDIS_POOL_SIZE", 32)?,
            database_pool_size: positive("WAFLEET_DATABASE_POOL_SIZE", 10)?,
            plan_cache_mode: parsed("WAFLEET_PG_PLAN_CACHE_MODE", Default::default())?,
        })
    }
}

impl CommonSettings {
    /// The cipher of `WAFLEET_ENCRYPTION_KEY` and `WAFLEET_ENCRYPTION_KEY_PREVIOUS`.
    pub fn cipher(&self) -> anyhow::Result<crate::crypto::Cipher> {
        crate::crypto::Cipher::from_key_text(self.encryption_key.expose())?.with_other_keys(
            self.other_encryption_keys
                .iter()
                .map(|k| k.expose().as_str()),
        )
    }
}

fn other_encryption_keys() -> Vec<Secret<String>> {
    var("WAFLEET_ENCRYPTION_KEY_PREVIOUS")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| Secret::new(k.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The cipher from `WAFLEET_ENCRYPTION_KEY` and `WAFLEET_ENCRYPTION_KEY_PREVIOUS`, for tools that
/// need nothing else of [`CommonSettings`].
pub fn cipher_from_env() -> anyhow::Result<crate::crypto::Cipher> {
    crate::crypto::Cipher::from_key_text(&required("WAFLEET_ENCRYPTION_KEY")?)?
        .with_other_keys(other_encryption_keys().iter().map(|k| k.expose().as_str()))
}

/// The single channel of the quick start, from the variables WhatsApp users already know.
#[derive(Debug, Clone)]
pub struct QuickStartChannel {
    pub phone_number_id: String,
    /// `WHATSAPP_APP_ID`: Meta's App ID, for the app's own path `/webhooks/whatsapp/{app_id}`.
    pub app_id: Option<String>,
    /// `WHATSAPP_APP_SECRET`, plus `WHATSAPP_APP_SECRET_PREVIOUS` during a rotation.
    pub app_secrets: Vec<Secret<String>>,
    pub verify_token: Option<Secret<String>>,
    pub access_token: Option<Secret<String>>,
}

impl QuickStartChannel {
    /// `None` when `WHATSAPP_PHONE_NUMBER_ID` is unset (channels then come from `wafleetctl`).
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let Some(phone_number_id) = var("WHATSAPP_PHONE_NUMBER_ID") else {
            return Ok(None);
        };
        let mut app_secrets = vec![Secret::new(required("WHATSAPP_APP_SECRET").context(
            "WHATSAPP_PHONE_NUMBER_ID is set, so WHATSAPP_APP_SECRET must be set too",
        )?)];
        app_secrets.extend(var("WHATSAPP_APP_SECRET_PREVIOUS").map(Secret::new));
        Ok(Some(Self {
            phone_number_id,
            app_id: var("WHATSAPP_APP_ID"),
            app_secrets,
            verify_token: var("WHATSAPP_VERIFY_TOKEN").map(Secret::new),
            access_token: var("WHATSAPP_ACCESS_TOKEN").map(Secret::new),
        }))
    }
}

/// Settings of the ingest binary.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub common: CommonSettings,
    pub listen: SocketAddr,
    /// Largest body accepted. Meta sends up to 3 MB.
    pub max_body_bytes: usize,
    /// How long a redelivery is recognised. Meta retries for up to 7 days.
    pub dedup_ttl: Duration,
    /// Bound on the whole Redis step of one POST. Past it we answer 503 and Meta retries, which is
    /// safe because the step is idempotent. Keep it well under Meta's patience (seconds).
    pub redis_timeout: Duration,
    /// How often the channel registry checks Postgres for changes.
    pub channel_refresh: Duration,
    /// How long in-flight requests get to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Bound on one whole request, body included: a slow or stalled sender is cut off (408).
    pub request_timeout: Duration,
    /// `WAFLEET_INGEST_HEADER_TIMEOUT_MS` (default 30 s): bound on the wait for a request's head
    /// (request line and headers), from the moment the connection is ready for one: a sender
    /// that trickles its headers, or never sends them, is closed, and so is a keep-alive
    /// connection idle that long. The request timeout only starts once the head is in.
    pub header_timeout: Duration,
    /// `WAFLEET_INGEST_SHARED_PATH` (default true): serve `/webhooks/whatsapp`, which checks a
    /// POST against every app's secrets. `false` once every app posts to its own path, so a
    /// forged body costs one app's secrets, not all of them.
    pub shared_path: bool,
    /// `WAFLEET_INGEST_THREADS` ([`default_ingest_threads`]): serving threads, each with its own
    /// Redis connection (see `ingest::lanes`).
    pub threads: usize,
    pub quick_start: Option<QuickStartChannel>,
}

/// Half the cores the process may use, at least one. A webhook costs Redis about three quarters
/// of what it costs ingest, and Redis runs on one core, so one serving thread (about 50,000
/// webhooks/s) already keeps up with it; more share the machine with Redis for little: on 2 cores
/// shared with Redis and the load generator, one thread served 35,300-39,200 webhooks/s at
/// 17.5-18.5 µs of CPU each and two 34,600-35,200 at 18.7-19.2 µs (`just bench-ingest`, three
/// alternating runs each).
pub fn default_ingest_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// 3 MiB: Meta's documented maximum payload.
pub const DEFAULT_MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// `WAFLEET_DEDUP_TTL_SECS`: how long a redelivery is recognised (Meta retries for 7 days).
/// Read by ingest and by whatever enqueues as ingest does (`wafleetctl quarantine replay`).
pub fn dedup_ttl() -> anyhow::Result<Duration> {
    Ok(Duration::from_secs(positive(
        "WAFLEET_DEDUP_TTL_SECS",
        7 * 24 * 3600,
    )?))
}

impl IngestSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        let listen = var("WAFLEET_INGEST_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into());
        Ok(Self {
            common: CommonSettings::from_env()?,
            listen: listen
                .parse()
                .with_context(|| format!("WAFLEET_INGEST_ADDR={listen:?} is not an address"))?,
            max_body_bytes: positive("WAFLEET_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)?,
            dedup_ttl: dedup_ttl()?,
            redis_timeout: millis("WAFLEET_REDIS_TIMEOUT_MS", Duration::from_millis(2000))?,
            channel_refresh: millis("WAFLEET_CHANNEL_REFRESH_MS", Duration::from_millis(2000))?,
            shutdown_grace: Duration::from_secs(positive("WAFLEET_SHUTDOWN_GRACE_SECS", 20)?),
            request_timeout: millis(
                "WAFLEET_INGEST_REQUEST_TIMEOUT_MS",
                Duration::from_millis(30_000),
            )?,
            header_timeout: millis(
                "WAFLEET_INGEST_HEADER_TIMEOUT_MS",
                Duration::from_millis(30_000),
            )?,
            shared_path: parsed("WAFLEET_INGEST_SHARED_PATH", true)?,
            threads: positive("WAFLEET_INGEST_THREADS", default_ingest_threads())?,
            quick_start: QuickStartChannel::from_env()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert!(
            !format!(
                "{:?}",
                QuickStartChannel {
                    phone_number_id: "1".into(),
                    app_id: None,
                    app_secrets: vec![s.clone()],
                    verify_token: Some(s.clone()),
                    access_token: Some(s),
                }
            )
            .contains("hunter2")
        );
    }
}
