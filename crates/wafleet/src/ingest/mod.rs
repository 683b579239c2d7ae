//! The ingest service: Meta's webhook endpoint.
//!
//! It does as little as it can and nothing it could lose: verify the signature over the raw
//! bytes, parse, route every update to its stream through the atomic dedup + enqueue step
//! ([`crate::streams`]), and answer 200 only once Redis acknowledged every update of the POST.
//! Anything else (Redis down or slow) is a 503 within `WAFLEET_REDIS_TIMEOUT_MS`, so Meta retries;
//! dedup makes the retry safe. Channel lookups come from memory ([`crate::channels`]).
//!
//! [`run`] is the seam binaries and tests call: settings, a bound listener, a shutdown future.

pub mod display_numbers;
mod http;
mod lanes;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::channels::{self, SharedRegistry};
use crate::config::{IngestSettings, QuickStartChannel};
use crate::crypto::Cipher;
use crate::shared_redis::SharedRedis;
use crate::store::channels::{ChannelSpec, upsert};
use crate::streams::{Enqueuer, Keys};
use crate::{db, telemetry};

pub use http::{Outcome, router};

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub registry: SharedRegistry,
    /// One multiplexed connection shared by the requests of a lane (see [`crate::shared_redis`]
    /// for why not a pool, and [`lanes`] for why one per lane).
    pub redis: SharedRedis,
    /// A second connection of the lane's, for webhooks of more than [`http::BULK_APPENDS`]
    /// updates: Redis answers one connection's commands in order, so on the shared one a
    /// 1,000-update batch's appends all ran ahead of every webhook that came after it.
    pub bulk_redis: SharedRedis,
    pub pg: sqlx::PgPool,
    /// The runtime `run` was called on, which owns the Postgres pool's connections: lanes ask
    /// Postgres through it, so no pooled connection is tied to a lane's runtime.
    pub home: tokio::runtime::Handle,
    pub keys: Arc<Keys>,
    pub enqueuer: Enqueuer,
    pub redis_timeout: std::time::Duration,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// `WAFLEET_MAX_BODY_BYTES`: a larger webhook is answered 413.
    pub max_body_bytes: usize,
    /// Channels' display numbers learnt from the webhooks (see [`display_numbers`]).
    pub display_numbers: display_numbers::DisplayNumbers,
}

/// Upserts the quick-start channel from `WHATSAPP_*` variables.
pub async fn apply_quick_start(
    pg: &sqlx::PgPool,
    cipher: &Cipher,
    qs: &QuickStartChannel,
) -> anyhow::Result<()> {
    let spec = ChannelSpec {
        phone_number_id: qs.phone_number_id.clone(),
        app_id: qs.app_id.clone(),
        app_secrets: Some(qs.app_secrets.clone()),
        verify_token: qs.verify_token.clone(),
        access_token: qs.access_token.clone(),
        ..Default::default()
    };
    upsert(pg, cipher, &spec)
        .await
        .context("saving the WHATSAPP_* quick-start channel")?;
    Ok(())
}

/// Runs ingest on `listener` until `shutdown` completes, then drains in-flight requests for at
/// most `shutdown_grace`.
pub async fn run(
    settings: IngestSettings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let common = &settings.common;
    // Installed first: what is measured from here on (the registry's gauges) is recorded.
    let metrics = telemetry::metrics_handle();
    let cipher = common.cipher()?;
    let pg = db::connect(
        common.database_url.expose(),
        common.database_pool_size,
        common.plan_cache_mode,
    )
    .await?;
    db::migrate(&pg).await?;
    // Refused before serving: a count the workers do not use would strand every message.
    crate::partition_count::check_at_start(
        common.redis_url.expose(),
        &common.redis_prefix,
        common.partitions,
    )
    .await?;
    if let Some(qs) = &settings.quick_start {
        apply_quick_start(&pg, &cipher, qs).await?;
    }
    // Read before the snapshot: a change made while it loads is then seen by the refresher.
    let loaded_at = crate::store::channels::fingerprint(&pg).await.ok();
    let registry = SharedRegistry::new(channels::load(&pg, &cipher).await?);
    registry.current().report("channel registry loaded");

    let stop = CancellationToken::new();
    let refresher = tokio::spawn(channels::refresh_loop(
        pg.clone(),
        cipher,
        registry.clone(),
        loaded_at,
        settings.channel_refresh,
        stop.clone(),
    ));

    let redis = SharedRedis::new(
        common.redis_url.expose(),
        crate::shared_redis::CONNECT_TIMEOUT,
    )
    .context("parsing REDIS_URL")?;
    // A count changed under the running process: it stops taking webhooks (Meta retries them
    // elsewhere) and exits with the mismatch (see `partition_count`).
    let watch = crate::partition_count::Watch::spawn(
        redis.clone(),
        &common.redis_prefix,
        common.partitions,
        common.partitions_check_every,
    );
    let found = watch.found();
    let shutdown = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = found => {}
        }
    };
    let home = tokio::runtime::Handle::current();
    let state = AppState {
        registry,
        bulk_redis: redis.clone(),
        redis,
        display_numbers: display_numbers::DisplayNumbers::new(pg.clone(), home.clone()),
        pg,
        home,
        keys: Arc::new(Keys::new(common.redis_prefix.clone(), common.partitions)),
        enqueuer: Enqueuer::new(settings.dedup_ttl),
        redis_timeout: settings.redis_timeout,
        metrics,
        max_body_bytes: settings.max_body_bytes,
    };
    let head = crate::serve::HeadTimeout {
        after: settings.header_timeout,
        setting: "WAFLEET_INGEST_HEADER_TIMEOUT_MS",
        counter: metrics::counter!("wafleet_ingest_requests_total", "outcome" => "header_timeout"),
    };
    let lanes = lanes::Lanes::start(settings.threads, head, |_| {
        // Each lane its own two connections (webhooks', batches'), opened (and their driver
        // tasks spawned) on the lane. Their every call is under a timeout of its caller's (the
        // Redis step's, /metrics' and /readyz's), so their commands arm none of their own
        // unless the step's is the longer.
        let lane_connection = || {
            if settings.redis_timeout < crate::shared_redis::RESPONSE_TIMEOUT {
                state.redis.another_bounded_by_callers()
            } else {
                state.redis.another()
            }
        };
        let state = AppState {
            redis: lane_connection(),
            bulk_redis: lane_connection(),
            ..state.clone()
        };
        router(state, settings.request_timeout, settings.shared_path)
    })?;
    tracing::info!(
        addr = %listener.local_addr()?,
        threads = settings.threads,
        "ingest listening"
    );
    crate::serve::accept(&listener, shutdown, |stream| lanes.dispatch(stream)).await;
    drop(listener);
    tracing::info!("shutdown requested; draining in-flight requests");
    lanes.drain(settings.shutdown_grace).await;
    stop.cancel();
    let _ = refresher.await;
    tracing::info!("ingest stopped");
    watch.finish().await
}
