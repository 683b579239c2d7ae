//! A worker process: hosts one or more stages on the worker runtime, serves `/metrics`,
//! `/healthz` and `/readyz`, samples queue gauges, and stops cleanly on its shutdown future.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wafleet_core::pii::Redactor;

use super::account::{self, AccountStage};
use super::channel_settings::ChannelCache;
use super::conversation::{self, ConversationStage};
use super::status::{self, StatusStage};
use std::collections::HashMap;

use super::llm::{self as llm_stage, LlmDefaults, LlmStage};
use super::sender::{self, SendPolicy, SendWrites, SenderStage};
use crate::config::{CommonSettings, Secret, millis, positive, var};
use crate::graph::GraphClient;
use crate::llm::{FallbackPolicy, LlmClient, ProviderConfig, ProviderKind};
use crate::ratelimit::RateLimiter;
use crate::shared_redis::SharedRedis;
use crate::streams::Keys;
use crate::worker::{self, StageRuntime, WorkerSettings};
use crate::{db, telemetry};

/// The stages a worker process can run (`WAFLEET_STAGES`).
pub const ALL_STAGES: &[&str] = &["conversation", "status", "llm", "sender", "account"];

#[derive(Debug, Clone)]
pub struct WorkerProcessSettings {
    pub common: CommonSettings,
    pub runtime: WorkerSettings,
    pub stages: Vec<String>,
    /// Per-stage runtime settings where they differ from `runtime`.
    pub stage_runtime: HashMap<String, WorkerSettings>,
    pub graph: GraphSettings,
    pub llm: LlmSettings,
    pub send: SendPolicy,
    /// How long a status for a wamid we never recorded is kept (`WAFLEET_EARLY_STATUS_TTL_SECS`).
    pub early_status_ttl: Duration,
    /// How long events, quarantine and dead letters are kept (`WAFLEET_RETENTION_DAYS`; `None`
    /// keeps them until an operator deletes them). See [`crate::worker::retention`].
    pub retention: Option<Duration>,
    /// How old an account update may be and still be announced
    /// (`WAFLEET_ACCOUNT_ANNOUNCE_MAX_AGE_SECS`, see [`account::DEFAULT_ANNOUNCE_MAX_AGE`]).
    pub account_announce_max_age: Duration,
    /// Read receipts on the wire at once (`WAFLEET_MARK_READ_MAX_IN_FLIGHT`): only workers send
    /// them, so only workers read it.
    pub receipts_in_flight: usize,
}

/// Where the Graph API is.
#[derive(Debug, Clone)]
pub struct GraphSettings {
    pub base_url: String,
    pub version: String,
    pub timeout: Duration,
}

impl GraphSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            base_url: var("WAFLEET_GRAPH_BASE_URL")
                .unwrap_or_else(|| crate::graph::DEFAULT_BASE_URL.into()),
            version: var("WAFLEET_GRAPH_API_VERSION")
                .unwrap_or_else(|| crate::graph::DEFAULT_VERSION.into()),
            timeout: millis("WAFLEET_GRAPH_TIMEOUT_MS", Duration::from_secs(10))?,
        })
    }
}

/// The process-wide model chain (channels may have their own) and how hard to try.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    pub providers: Vec<ProviderConfig>,
    pub policy: FallbackPolicy,
    pub max_tokens: u32,
    /// `WAFLEET_IMAGE_MAX_BYTES` (default 3,750,000: Anthropic takes images up to 5 MB in
    /// base64): a larger image the customer sent is not given to the model.
    pub image_max_bytes: u64,
    /// `WAFLEET_IMAGE_MAX_IN_FLIGHT` (default 16): images held in memory at once, from their
    /// download until the model answered; more wait.
    pub image_max_in_flight: usize,
    /// `WAFLEET_DOCUMENT_MAX_BYTES` (default 5 MB): a larger PDF the customer sent is not given
    /// to the model.
    pub document_max_bytes: u64,
    /// Where voice notes are transcribed: `WAFLEET_TRANSCRIBE_API_KEY` at
    /// `WAFLEET_TRANSCRIBE_BASE_URL` (default `https://api.openai.com/v1`) with
    /// `WAFLEET_TRANSCRIBE_MODEL` (default `whisper-1`); without its own key, `OPENAI_API_KEY`
    /// when the OpenAI-compatible provider is at that same base URL, else the stand-in when the
    /// stand-in answers. `None`: voice notes are not transcribed.
    pub transcriber: Option<ProviderConfig>,
    /// `WAFLEET_AUDIO_MAX_BYTES` (default 16 MiB, Meta's limit for audio): a larger recording is
    /// not downloaded for transcription.
    pub audio_max_bytes: u64,
}

impl LlmSettings {
    /// Anthropic when `ANTHROPIC_API_KEY` is set, then OpenAI-compatible when `OPENAI_API_KEY`
    /// is; with neither, the local stand-in at `WAFLEET_LLM_STANDIN_URL` (the simulator).
    pub fn from_env() -> anyhow::Result<Self> {
        let mut providers = Vec::new();
        if let Some(key) = var("ANTHROPIC_API_KEY") {
            providers.push(ProviderConfig {
                name: "anthropic".into(),
                kind: ProviderKind::Anthropic,
                base_url: var("WAFLEET_ANTHROPIC_BASE_URL")
                    .unwrap_or_else(|| "https://api.anthropic.com".into()),
                model: var("WAFLEET_ANTHROPIC_MODEL").unwrap_or_else(|| "claude-sonnet-4-5".into()),
                api_key: Secret::new(key),
            });
        }
        if let Some(key) = var("OPENAI_API_KEY") {
            providers.push(ProviderConfig {
                name: var("WAFLEET_OPENAI_NAME").unwrap_or_else(|| "openai".into()),
                kind: ProviderKind::OpenAiCompatible,
                base_url: var("WAFLEET_OPENAI_BASE_URL")
                    .unwrap_or_else(|| "https://api.openai.com/v1".into()),
                model: var("WAFLEET_OPENAI_MODEL").unwrap_or_else(|| "gpt-4o-mini".into()),
                api_key: Secret::new(key),
            });
        }
        if providers.is_empty()
            && let Some(url) = var("WAFLEET_LLM_STANDIN_URL")
        {
            providers.push(ProviderConfig {
                name: "standin".into(),
                kind: ProviderKind::OpenAiCompatible,
                base_url: url,
                model: "standin".into(),
                api_key: Secret::new("standin".into()),
            });
        }
        let transcriber = transcriber(&providers, var);
        let mut policy = FallbackPolicy::default();
        policy.overall_deadline = millis("WAFLEET_LLM_DEADLINE_MS", policy.overall_deadline)?;
        policy.call_deadline = millis("WAFLEET_LLM_CALL_DEADLINE_MS", policy.call_deadline)?;
        Ok(Self {
            providers,
            policy,
            max_tokens: positive("WAFLEET_LLM_MAX_TOKENS", 1024)?,
            image_max_bytes: positive("WAFLEET_IMAGE_MAX_BYTES", 3_750_000)?,
            image_max_in_flight: positive("WAFLEET_IMAGE_MAX_IN_FLIGHT", 16)?,
            document_max_bytes: positive("WAFLEET_DOCUMENT_MAX_BYTES", 5_000_000)?,
            transcriber,
            audio_max_bytes: positive("WAFLEET_AUDIO_MAX_BYTES", 16 * 1024 * 1024)?,
        })
    }
}

/// The transcriber [`LlmSettings::transcriber`] describes, from the model chain and the
/// variables `var` reads.
fn transcriber(
    providers: &[ProviderConfig],
    var: impl Fn(&str) -> Option<String>,
) -> Option<ProviderConfig> {
    let base_url =
        var("WAFLEET_TRANSCRIBE_BASE_URL").unwrap_or_else(|| "https://api.openai.com/v1".into());
    let same_base =
        |a: &str, b: &str| a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/');
    let key = var("WAFLEET_TRANSCRIBE_API_KEY").or_else(|| {
        providers
            .iter()
            .find(|p| {
                p.kind == ProviderKind::OpenAiCompatible
                    && p.name != "standin"
                    && same_base(&p.base_url, &base_url)
            })
            .map(|p| p.api_key.expose().to_string())
    });
    match key {
        Some(key) => Some(ProviderConfig {
            name: "transcription".into(),
            kind: ProviderKind::OpenAiCompatible,
            base_url,
            model: var("WAFLEET_TRANSCRIBE_MODEL").unwrap_or_else(|| "whisper-1".into()),
            api_key: Secret::new(key),
        }),
        None => providers
            .iter()
            .find(|p| p.name == "standin")
            .map(|standin| ProviderConfig {
                name: "transcription".into(),
                ..standin.clone()
            }),
    }
}

/// Stage-specific defaults: the LLM stage holds many slow jobs (model calls take seconds), so it
/// gets more in flight and a deadline above the model chain's own. `graph_timeout` is the Graph
/// API's per-call timeout (`WAFLEET_GRAPH_TIMEOUT_MS`), which bounds a customer's file download.
fn stage_runtime(
    stage: &str,
    base: &WorkerSettings,
    llm: &LlmSettings,
    graph_timeout: Duration,
) -> anyhow::Result<WorkerSettings> {
    let mut s = base.clone();
    if stage == "llm" {
        s.max_in_flight = s.max_in_flight.max(1024);
        // Before the chain runs: a customer's file waits for its permit and is downloaded (two
        // Graph calls, the media's URL and then its bytes, each up to the Graph timeout), and a
        // voice note is transcribed. From the configured timeout: a raised one would otherwise
        // let such a job overrun its deadline.
        let media = llm_stage::MEDIA_PERMIT_WAIT + 2 * graph_timeout;
        let transcription = if llm.transcriber.is_some() {
            llm.policy.call_deadline
        } else {
            Duration::ZERO
        };
        s.job_deadline = s
            .job_deadline
            .max(llm.policy.overall_deadline + media + transcription + Duration::from_secs(15));
        s.lease_ttl = s.lease_ttl.max(s.job_deadline + Duration::from_secs(15));
    }
    let upper = stage.to_uppercase();
    s.max_in_flight = positive(&format!("WAFLEET_{upper}_MAX_IN_FLIGHT"), s.max_in_flight)?;
    s.job_deadline = millis(&format!("WAFLEET_{upper}_JOB_DEADLINE_MS"), s.job_deadline)?;
    s.lease_ttl = millis(&format!("WAFLEET_{upper}_LEASE_TTL_MS"), s.lease_ttl)?;
    s.validate()
        .map_err(|e| anyhow::anyhow!("stage {stage}: {e}"))?;
    Ok(s)
}

impl WorkerProcessSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        let stages = var("WAFLEET_STAGES").unwrap_or_else(|| ALL_STAGES.join(","));
        let stages: Vec<String> = stages
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for s in &stages {
            if !ALL_STAGES.contains(&s.as_str()) {
                bail!(
                    "WAFLEET_STAGES: unknown stage {s:?} (known: {})",
                    ALL_STAGES.join(", ")
                );
            }
        }
        let runtime = WorkerSettings::from_env()?;
        let llm = LlmSettings::from_env()?;
        let graph = GraphSettings::from_env()?;
        let stage_runtime = stages
            .iter()
            .map(|s| Ok((s.clone(), stage_runtime(s, &runtime, &llm, graph.timeout)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            common: CommonSettings::from_env()?,
            runtime,
            stages,
            stage_runtime,
            graph,
            llm,
            send: SendPolicy::from_env()?,
            early_status_ttl: Duration::from_secs(positive(
                "WAFLEET_EARLY_STATUS_TTL_SECS",
                status::DEFAULT_EARLY_STATUS_TTL.as_secs(),
            )?),
            retention: worker::retention::from_env()?,
            account_announce_max_age: Duration::from_secs(positive(
                "WAFLEET_ACCOUNT_ANNOUNCE_MAX_AGE_SECS",
                account::DEFAULT_ANNOUNCE_MAX_AGE.as_secs(),
            )?),
            receipts_in_flight: positive(
                "WAFLEET_MARK_READ_MAX_IN_FLIGHT",
                crate::graph::DEFAULT_RECEIPTS_IN_FLIGHT,
            )?,
        })
    }

    /// Runtime settings for one stage.
    pub fn runtime_for(&self, stage: &str) -> WorkerSettings {
        self.stage_runtime
            .get(stage)
            .cloned()
            .unwrap_or_else(|| self.runtime.clone())
    }
}

#[derive(Clone)]
struct Probe {
    redis: deadpool_redis::Pool,
    pg: sqlx::PgPool,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// Runs the configured stages until `shutdown`, serving metrics on `listener`.
pub async fn run(
    settings: WorkerProcessSettings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let common = &settings.common;
    let pg = db::connect(
        common.database_url.expose(),
        common.database_pool_size,
        common.plan_cache_mode,
    )
    .await?;
    db::migrate(&pg).await?;
    // A worker on another count than ingest's would read a subset of the partitions (or none).
    crate::partition_count::check_at_start(
        common.redis_url.expose(),
        &common.redis_prefix,
        common.partitions,
    )
    .await?;
    let cipher = common.cipher()?;
    // A worker holding another key than the one that stored the channels' secrets could send
    // nothing and call no model: it refuses to start, as ingest does. (One channel that does not
    // decrypt is only logged: the sender pauses it, the others are served.)
    crate::store::channels::list_readable(&pg, &cipher).await?;
    // Blocking reads hold a connection per owned partition; leave room for the jobs' own calls.
    // Every owned partition of every stage holds a connection in its blocking read; the jobs'
    // own calls need room beyond that, or they queue behind reads that block for up to 500 ms.
    let blocking_reads = common.partitions as usize * settings.stages.len();
    let redis = crate::shared_redis::blocking_pool(
        common.redis_url.expose(),
        common.redis_pool_size + blocking_reads,
    )?;
    // Everything but the blocking reads goes over one multiplexed connection.
    let shared = SharedRedis::new(
        common.redis_url.expose(),
        crate::shared_redis::CONNECT_TIMEOUT,
    )
    .context("parsing REDIS_URL")?;
    let keys = Keys::new(common.redis_prefix.clone(), common.partitions);
    let stop = CancellationToken::new();
    // A count changed under the running worker stops it (see `partition_count`).
    let watch = crate::partition_count::Watch::spawn(
        shared.clone(),
        &common.redis_prefix,
        common.partitions,
        common.partitions_check_every,
    );
    let probe = Probe {
        redis: redis.clone(),
        pg: pg.clone(),
        metrics: telemetry::metrics_handle(),
    };
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(p): State<Probe>| async move { telemetry::exposition(&p.metrics) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(probe);
    tracing::info!(addr = %listener.local_addr()?, stages = ?settings.stages, "worker serving metrics");
    let http = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );

    let mut tasks = tokio::task::JoinSet::new();
    let mut stages = Vec::new();
    let redactor = Arc::new(Redactor::new());
    let channels = ChannelCache::new(pg.clone(), cipher);
    let graph = GraphClient::new(
        settings.graph.base_url.clone(),
        settings.graph.version.clone(),
        settings.graph.timeout,
    )
    .with_receipts_in_flight(settings.receipts_in_flight);
    // Templates' wordings, shared by the sender and the account stage, which drops a template's
    // in every process when Meta changes its status.
    let wordings = super::wording::Wordings::shared(shared.clone(), &keys);
    for name in &settings.stages {
        let rt = settings.runtime_for(name);
        match name.as_str() {
            "conversation" => {
                let handler = ConversationStage {
                    pg: pg.clone(),
                    redis: shared.clone(),
                    keys: keys.clone(),
                    channels: channels.clone(),
                    redactor: redactor.clone(),
                    limiter: RateLimiter::new(common.redis_prefix.clone()),
                    graph: graph.clone(),
                    known_stores: conversation::known_stores(&pg),
                };
                stages.push(conversation::STAGE);
                tasks.spawn(worker::run_stage(runtime(
                    conversation::STAGE,
                    &keys,
                    (&redis, &shared),
                    handler,
                    &rt,
                    &stop,
                )));
            }
            "status" => {
                let handler = StatusStage {
                    pg: pg.clone(),
                    redis: shared.clone(),
                    keys: keys.clone(),
                    writer: status::status_writer(pg.clone()),
                    callbacks: channels.callback_tags().clone(),
                    send_policy: Arc::new(settings.send.clone()),
                };
                stages.push(status::STAGE);
                tasks.spawn(worker::run_stage(runtime(
                    status::STAGE,
                    &keys,
                    (&redis, &shared),
                    handler,
                    &rt,
                    &stop,
                )));
            }
            "llm" => {
                if settings.llm.providers.is_empty() {
                    tracing::warn!(
                        "no model configured (ANTHROPIC_API_KEY, OPENAI_API_KEY or WAFLEET_LLM_STANDIN_URL): \
                         channels without their own chain get the canned reply"
                    );
                }
                let handler = LlmStage {
                    writer: llm_stage::reply_writer(pg.clone()),
                    contexts: llm_stage::context_reader(pg.clone()),
                    pg: pg.clone(),
                    redis: shared.clone(),
                    keys: keys.clone(),
                    channels: channels.clone(),
                    llm: LlmClient::new(),
                    graph: graph.clone(),
                    redactor: redactor.clone(),
                    defaults: Arc::new(LlmDefaults {
                        providers: settings.llm.providers.clone(),
                        policy: settings.llm.policy,
                        max_tokens: settings.llm.max_tokens,
                        image_max_bytes: settings.llm.image_max_bytes,
                        document_max_bytes: settings.llm.document_max_bytes,
                        images: Arc::new(tokio::sync::Semaphore::new(
                            settings.llm.image_max_in_flight,
                        )),
                        transcriber: settings.llm.transcriber.clone(),
                        audio_max_bytes: settings.llm.audio_max_bytes,
                        max_attempts: rt.max_attempts,
                    }),
                };
                stages.push(llm_stage::STAGE);
                tasks.spawn(worker::run_stage(runtime(
                    llm_stage::STAGE,
                    &keys,
                    (&redis, &shared),
                    handler,
                    &rt,
                    &stop,
                )));
            }
            "sender" => {
                let handler = SenderStage {
                    writes: SendWrites::start(&pg),
                    pg: pg.clone(),
                    redis: shared.clone(),
                    keys: keys.clone(),
                    channels: channels.clone(),
                    graph: graph.clone(),
                    limiter: RateLimiter::new(common.redis_prefix.clone()),
                    policy: Arc::new(settings.send.clone()),
                    redactor: redactor.clone(),
                    wordings: wordings.clone(),
                };
                stages.push(sender::STAGE);
                tasks.spawn(worker::run_stage(runtime(
                    sender::STAGE,
                    &keys,
                    (&redis, &shared),
                    handler,
                    &rt,
                    &stop,
                )));
            }
            "account" => {
                let handler = AccountStage {
                    pg: pg.clone(),
                    redis: shared.clone(),
                    keys: keys.clone(),
                    wordings: wordings.clone(),
                    announce_max_age: settings.account_announce_max_age,
                };
                stages.push(account::STAGE);
                tasks.spawn(worker::run_stage(runtime(
                    account::STAGE,
                    &keys,
                    (&redis, &shared),
                    handler,
                    &rt,
                    &stop,
                )));
            }
            other => bail!("unknown stage {other}"),
        }
    }
    let sampler = tokio::spawn(worker::sampler::run(
        redis.clone(),
        keys.clone(),
        stages,
        Duration::from_secs(5),
        stop.clone(),
    ));
    let unanswered = tokio::spawn(sample_unanswered(pg.clone(), stop.clone()));
    let idle_release = tokio::spawn(crate::agents::release_idle_loop(
        pg.clone(),
        redis.clone(),
        keys.clone(),
        Arc::new(settings.send.clone()),
        IDLE_RELEASE_EVERY,
        stop.clone(),
    ));
    let retention = settings.retention.map(|keep| {
        tokio::spawn(worker::retention::run(
            redis.clone(),
            keys.clone(),
            ALL_STAGES,
            keep,
            stop.clone(),
        ))
    });
    let account_gauges = settings
        .stages
        .iter()
        .any(|s| s == account::STAGE.name)
        .then(|| tokio::spawn(account::sample_gauges(pg.clone(), stop.clone())));
    let expiry = settings
        .stages
        .iter()
        .any(|s| s == status::STAGE.name)
        .then(|| {
            tokio::spawn(status::expire_early_statuses(
                pg.clone(),
                settings.early_status_ttl,
                stop.clone(),
            ))
        });

    let mut result = Ok(());
    tokio::select! {
        _ = shutdown => tracing::info!("shutdown requested"),
        Some(r) = tasks.join_next() => {
            result = crate::telemetry::joined(r).and_then(|r| r);
            tracing::error!("a stage stopped on its own; shutting the worker down");
        }
        // The stages stop reading and finish what they hold, as on SIGTERM; the worker then
        // exits with the mismatch (below).
        _ = watch.found() => {}
    }
    stop.cancel();
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = crate::telemetry::joined(r).and_then(|r| r) {
            tracing::error!(error = %e, "stage ended with an error");
            result = Err(e);
        }
    }
    let _ = sampler.await;
    let _ = unanswered.await;
    let _ = idle_release.await;
    if let Some(retention) = retention {
        let _ = retention.await;
    }
    if let Some(expiry) = expiry {
        let _ = expiry.await;
    }
    if let Some(gauges) = account_gauges {
        let _ = gauges.await;
    }
    let _ = http.await;
    watch.finish().await.and(result)
}

fn runtime<H>(
    stage: worker::Stage,
    keys: &Keys,
    (redis, shared): (&deadpool_redis::Pool, &SharedRedis),
    handler: H,
    settings: &WorkerSettings,
    stop: &CancellationToken,
) -> StageRuntime<H> {
    StageRuntime {
        stage,
        keys: keys.clone(),
        redis: redis.clone(),
        shared: shared.clone(),
        handler: Arc::new(handler),
        settings: settings.clone(),
        shutdown: stop.clone(),
    }
}

/// How often a worker gives idle human-owned conversations back to the bot.
const IDLE_RELEASE_EVERY: Duration = Duration::from_secs(60);

/// `wafleet_oldest_unanswered_seconds{channel}`: age of the oldest inbound message per channel
/// that is waiting for a bot reply; and what waits for humans: `wafleet_human_conversations` and
/// `wafleet_oldest_human_wait_seconds` per channel ([`crate::store::agents::human_waits`]).
async fn sample_unanswered(pg: sqlx::PgPool, stop: CancellationToken) {
    let mut seen: Vec<String> = Vec::new();
    loop {
        let rows: sqlx::Result<Vec<(String, Option<f64>)>> = sqlx::query_as(
            "SELECT c.phone_number_id,
                    EXTRACT(EPOCH FROM now() - min(m.received_at))::float8
               FROM channels c
               LEFT JOIN messages m ON m.channel_id = c.id AND m.action = 'reply' AND m.answered_at IS NULL
              GROUP BY c.phone_number_id",
        )
        .fetch_all(&pg)
        .await;
        if let Ok(rows) = rows {
            for (channel, age) in rows {
                metrics::gauge!("wafleet_oldest_unanswered_seconds", "channel" => channel.clone())
                    .set(age.unwrap_or(0.0));
                if !seen.contains(&channel) {
                    seen.push(channel);
                }
            }
        }
        let waits = crate::store::agents::human_waits(&pg).await;
        if let Err(e) = &waits {
            metrics::counter!("wafleet_human_wait_sample_errors_total").increment(1);
            tracing::warn!(error = %e, "sampling the waits for humans failed; the gauges keep their last values");
        }
        if let Ok(waits) = waits {
            for w in waits {
                metrics::gauge!("wafleet_human_conversations", "channel" => w.phone_number_id.clone())
                    .set(w.conversations as f64);
                metrics::gauge!("wafleet_oldest_human_wait_seconds", "channel" => w.phone_number_id)
                    .set(w.oldest_wait_secs);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

async fn ready(State(p): State<Probe>) -> impl IntoResponse {
    crate::telemetry::readiness(async { p.redis.get().await.ok() }, &p.pg).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(name: &str, kind: ProviderKind, base_url: &str, key: &str) -> ProviderConfig {
        ProviderConfig {
            name: name.into(),
            kind,
            base_url: base_url.into(),
            model: "m".into(),
            api_key: Secret::new(key.into()),
        }
    }

    #[test]
    fn the_llm_job_deadline_leaves_two_graph_timeouts_for_a_customers_file() {
        let llm = LlmSettings {
            providers: Vec::new(),
            policy: FallbackPolicy::default(),
            max_tokens: 1024,
            image_max_bytes: 1,
            image_max_in_flight: 1,
            document_max_bytes: 1,
            transcriber: None,
            audio_max_bytes: 1,
        };
        let base = WorkerSettings::default();
        let deadline = |graph_secs: u64| {
            stage_runtime("llm", &base, &llm, Duration::from_secs(graph_secs))
                .unwrap()
                .job_deadline
        };
        let chain = llm.policy.overall_deadline;
        assert_eq!(
            deadline(10),
            chain + llm_stage::MEDIA_PERMIT_WAIT + Duration::from_secs(20 + 15)
        );
        // Meta given 30 s a call: the permit's wait, the two calls and the chain still fit.
        assert_eq!(
            deadline(30),
            chain + llm_stage::MEDIA_PERMIT_WAIT + Duration::from_secs(60 + 15)
        );
        let runtime = stage_runtime("llm", &base, &llm, Duration::from_secs(30)).unwrap();
        assert!(runtime.lease_ttl > runtime.job_deadline);
    }

    #[test]
    fn the_transcriber_takes_its_own_key_else_the_openai_key_for_the_same_host_else_the_stand_in() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let openai = provider(
            "openai",
            ProviderKind::OpenAiCompatible,
            "https://api.openai.com/v1/",
            "sk-openai",
        );
        let deepseek = provider(
            "deepseek",
            ProviderKind::OpenAiCompatible,
            "https://api.deepseek.com",
            "sk-deepseek",
        );
        let claude = provider(
            "anthropic",
            ProviderKind::Anthropic,
            "https://api.openai.com/v1",
            "sk-ant",
        );
        let standin = provider(
            "standin",
            ProviderKind::OpenAiCompatible,
            "http://127.0.0.1:8090/v1",
            "standin",
        );
        let key = |t: Option<ProviderConfig>| {
            t.map(|t| (t.base_url, t.model, t.api_key.expose().to_string()))
        };

        // OpenAI's key serves OpenAI's transcriptions; DeepSeek's and Anthropic's never do.
        assert_eq!(
            key(transcriber(&[claude.clone(), openai.clone()], env(&[]))),
            Some((
                "https://api.openai.com/v1".into(),
                "whisper-1".into(),
                "sk-openai".into()
            ))
        );
        assert_eq!(
            key(transcriber(&[claude.clone(), deepseek.clone()], env(&[]))),
            None
        );
        // Its own key and place win.
        assert_eq!(
            key(transcriber(
                &[openai],
                env(&[
                    ("WAFLEET_TRANSCRIBE_API_KEY", "gsk-groq"),
                    (
                        "WAFLEET_TRANSCRIBE_BASE_URL",
                        "https://api.groq.com/openai/v1"
                    ),
                    ("WAFLEET_TRANSCRIBE_MODEL", "whisper-large-v3"),
                ])
            )),
            Some((
                "https://api.groq.com/openai/v1".into(),
                "whisper-large-v3".into(),
                "gsk-groq".into()
            ))
        );
        // Without any key, the stand-in transcribes (the demo).
        assert_eq!(
            key(transcriber(&[standin], env(&[]))),
            Some((
                "http://127.0.0.1:8090/v1".into(),
                "m".into(),
                "standin".into()
            ))
        );
        assert_eq!(key(transcriber(&[deepseek], env(&[]))), None);
    }
}
