//! The wording of the templates the bot answers after, for the model's history.
//!
//! A business's template sent with `answered_by: bot` is recorded with what the model reads of
//! it: its name and parameters (`[template: order_shipped] #1042`, see
//! [`crate::agents::template_history_text`]). Right before the template is first sent, the sender
//! asks Meta for the template's wording (`GET /{waba_id}/message_templates`) and, when Meta has it,
//! the model reads what the customer read instead: the header's file or text, the body with the
//! parameters in place, the footer and the buttons (a URL button with its address), redacted.
//! The agent API checks a send's parameters against the same cache ([`Wordings::definition`]).
//! Wordings are kept in memory for [`TTL`]: a campaign of thousands of one template costs one
//! Graph call per worker. Nothing here ever holds a send back for long or fails it: without
//! a `waba_id`, or when Meta does not answer within [`LOOKUP_TIMEOUT`], the name and parameters
//! stay (`wafleet_template_wordings_total{result}` counts each outcome).
//!
//! # One cache for the fleet
//! When Meta changes a template's status (paused, disabled, reinstated…) the account stage,
//! in whichever worker runs it, increments the fleet's template version
//! (`P:{events}:templates:version`, [`Keys::templates_version`]) besides dropping its own copy
//! ([`Wordings::forget`]). Every process built with [`Wordings::shared`] (the API, every worker)
//! reads that version with its shared Redis connection at most once per
//! [`VERSION_CHECK_EVERY`], and only when it looks a template up, and empties its cache when the
//! version moved: a status update reaches every process's next lookup within about a second,
//! without a Redis round trip per send. Redis out of reach keeps the cache as it is (for up to
//! its [`TTL`]), logged and counted in `wafleet_template_cache_version_errors_total`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wafleet_core::format::template::{TemplateText, render_sent};
use wafleet_core::pii::Redactor;

use super::channel_settings::ChannelSettings;
use crate::graph::GraphClient;
use crate::shared_redis::SharedRedis;
use crate::store::replies::{self, Part, TEMPLATE_MARKER};
use crate::streams::Keys;

/// How long a template's wording (or its absence) is trusted. Meta lets a business edit an
/// approved template at most once a day, so ten minutes is fresh enough.
pub const TTL: Duration = Duration::from_secs(600);

/// The longest a template's send waits for its wording.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Wordings cached past this many are dropped all at once (a bound, never reached in practice:
/// an account has at most a few hundred templates).
const MAX_CACHED: usize = 10_000;

/// How often, at most, a process reads the fleet's template version: a template's status update
/// reaches its lookups within this (plus the account stage's own delay), and a process costs
/// Redis at most one `GET` per interval, whatever its sends.
pub const VERSION_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The longest a lookup waits for the fleet's version; past it the cache is used as it is.
const VERSION_READ_TIMEOUT: Duration = Duration::from_millis(500);

type Key = (String, String, String);

#[derive(Default)]
struct Cache {
    entries: HashMap<Key, (Instant, Option<TemplateText>)>,
    /// Incremented each time the cache is emptied for the fleet's version: a lookup that began
    /// before (and may carry the old status) does not put its answer back.
    generation: u64,
}

/// The fleet's template version, as this process last read it.
struct Fleet {
    redis: SharedRedis,
    key: String,
    /// When it was last read (or a read began), and the value read (`None` inside: the key
    /// does not exist yet); `None`: never read.
    seen: Mutex<(Option<Instant>, Option<Option<i64>>)>,
}

/// Templates' wordings by (business account, name, language), shared by a worker's sender jobs
/// (or the API's requests).
#[derive(Clone, Default)]
pub struct Wordings {
    cached: Arc<Mutex<Cache>>,
    /// `None` (the default, and `wafleetctl`, whose process lives for one command): this cache
    /// follows only its [`TTL`] and this process's [`Wordings::forget`].
    fleet: Option<Arc<Fleet>>,
}

impl Wordings {
    /// A cache emptied whenever the fleet's template version moves ([`Keys::templates_version`],
    /// read with `redis` at most once per [`VERSION_CHECK_EVERY`]).
    pub fn shared(redis: SharedRedis, keys: &Keys) -> Self {
        Self {
            cached: Arc::default(),
            fleet: Some(Arc::new(Fleet {
                redis,
                key: keys.templates_version(),
                seen: Mutex::new((None, None)),
            })),
        }
    }

    /// Empties the cache when the fleet's version moved since it was last read; reads it at
    /// most once per [`VERSION_CHECK_EVERY`] (concurrent lookups do not wait for the read).
    async fn follow_fleet(&self) {
        let Some(fleet) = &self.fleet else {
            return;
        };
        {
            let mut seen = fleet.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.0.is_some_and(|at| at.elapsed() < VERSION_CHECK_EVERY) {
                return;
            }
            seen.0 = Some(Instant::now());
        }
        let read = async {
            let mut con = fleet.redis.get().await?;
            redis::AsyncCommands::get::<_, Option<i64>>(&mut con, &fleet.key).await
        };
        let version = match tokio::time::timeout(VERSION_READ_TIMEOUT, read).await {
            Ok(Ok(version)) => version,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {VERSION_READ_TIMEOUT:?}"),
                };
                metrics::counter!("wafleet_template_cache_version_errors_total").increment(1);
                tracing::warn!(
                    error,
                    "the fleet's template version was not read; templates \
                    cached here are kept (for up to 10 minutes)"
                );
                return;
            }
        };
        let moved = {
            let mut seen = fleet.seen.lock().unwrap_or_else(|e| e.into_inner());
            let moved = seen.1 != Some(version);
            seen.1 = Some(version);
            moved
        };
        if moved {
            let mut cache = self.lock();
            cache.entries.clear();
            cache.generation += 1;
        }
    }

    /// Puts the template's wording in the history of `part`, a template about to be sent for
    /// the first time, when its history still holds only the name and parameters.
    pub async fn fill(
        &self,
        pg: &sqlx::PgPool,
        graph: &GraphClient,
        redactor: &Redactor,
        channel: &ChannelSettings,
        part: &Part,
        template: &serde_json::Value,
    ) {
        let unfilled = part
            .history_text
            .as_deref()
            .is_some_and(|t| t.starts_with(TEMPLATE_MARKER));
        if !unfilled || part.state != "pending" || part.attempts > 0 {
            return;
        }
        let result = match self.wording(graph, channel, template).await {
            Ok(Some(text)) => {
                let text = redactor.redact(&text).text;
                match replies::set_template_wording(pg, part.id, &text).await {
                    Ok(()) => "filled",
                    Err(e) => {
                        tracing::warn!(outbound_id = part.id, error = %e,
                            "a template's wording was not stored; the model reads its name");
                        "not_stored"
                    }
                }
            }
            Ok(None) => "unknown",
            Err(reason) => {
                tracing::warn!(
                    outbound_id = part.id,
                    reason,
                    "a template's wording was not read from Meta; the model reads its name"
                );
                "failed"
            }
        };
        metrics::counter!("wafleet_template_wordings_total", "result" => result).increment(1);
    }

    /// The template as the customer reads it, from the cache or Meta. `Ok(None)`: Meta has no
    /// such approved template, or the channel has no business account configured.
    async fn wording(
        &self,
        graph: &GraphClient,
        channel: &ChannelSettings,
        template: &serde_json::Value,
    ) -> Result<Option<String>, String> {
        let (Some(waba_id), Some(token)) = (&channel.waba_id, &channel.access_token) else {
            return Ok(None);
        };
        let name = template["name"].as_str().unwrap_or_default();
        let language = template["language"]["code"].as_str().unwrap_or_default();
        let text = self
            .definition(graph, waba_id, token.expose(), name, language)
            .await?;
        Ok(text.and_then(|t| render_sent(&t, template)))
    }

    /// Business account `waba_id`'s approved template `name` in `language` (its wording, header
    /// format and buttons), from the cache or Meta (read with `token`). `Ok(None)`: Meta has no
    /// such approved template. `Err`: Meta did not answer within [`LOOKUP_TIMEOUT`], or refused.
    pub async fn definition(
        &self,
        graph: &GraphClient,
        waba_id: &str,
        token: &str,
        name: &str,
        language: &str,
    ) -> Result<Option<TemplateText>, String> {
        self.follow_fleet().await;
        let key = (waba_id.to_string(), name.to_string(), language.to_string());
        let (cached, generation) = {
            let cache = self.lock();
            let cached = cache
                .entries
                .get(&key)
                .filter(|(at, _)| at.elapsed() < TTL)
                .map(|(_, text)| text.clone());
            (cached, cache.generation)
        };
        let text = match cached {
            Some(text) => text,
            None => {
                let looked_up = tokio::time::timeout(
                    LOOKUP_TIMEOUT,
                    graph.template_text(token, waba_id, name, language),
                )
                .await
                .map_err(|_| format!("no answer within {LOOKUP_TIMEOUT:?}"))?
                .map_err(|e| e.to_string())?;
                let mut cache = self.lock();
                if cache.generation == generation {
                    if cache.entries.len() >= MAX_CACHED {
                        cache.entries.clear();
                    }
                    cache
                        .entries
                        .insert(key, (Instant::now(), looked_up.clone()));
                }
                looked_up
            }
        };
        Ok(text)
    }

    /// Drops the wording kept for a template of business account `waba_id` (the account stage
    /// calls it when Meta changes the template's status), so its next send reads it (and its
    /// status) from Meta again: here at once, and in every other process built with
    /// [`Wordings::shared`] within [`VERSION_CHECK_EVERY`], by moving the fleet's version. `Err`:
    /// Redis did not take the new version (the caller retries).
    pub async fn forget(
        &self,
        waba_id: &str,
        name: &str,
        language: &str,
    ) -> redis::RedisResult<()> {
        self.lock()
            .entries
            .remove(&(waba_id.to_string(), name.to_string(), language.to_string()));
        if let Some(fleet) = &self.fleet {
            let mut con = fleet.redis.get().await?;
            redis::AsyncCommands::incr::<_, _, i64>(&mut con, &fleet.key, 1).await?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cached.lock().unwrap_or_else(|e| e.into_inner())
    }
}
