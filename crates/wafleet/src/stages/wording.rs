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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wafleet_core::format::template::{TemplateText, render_sent};
use wafleet_core::pii::Redactor;

use super::channel_settings::ChannelSettings;
use crate::graph::GraphClient;
use crate::store::replies::{self, Part, TEMPLATE_MARKER};

/// How long a template's wording (or its absence) is trusted. Meta lets a business edit an
/// approved template at most once a day, so ten minutes is fresh enough.
pub const TTL: Duration = Duration::from_secs(600);

/// The longest a template's send waits for its wording.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Wordings cached past this many are dropped all at once (a bound, never reached in practice:
/// an account has at most a few hundred templates).
const MAX_CACHED: usize = 10_000;

type Key = (String, String, String);
type Cache = HashMap<Key, (Instant, Option<TemplateText>)>;

/// Templates' wordings by (business account, name, language), shared by a worker's sender jobs.
#[derive(Clone, Default)]
pub struct Wordings {
    cached: Arc<Mutex<Cache>>,
}

impl Wordings {
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
        let key = (waba_id.to_string(), name.to_string(), language.to_string());
        let cached = self
            .lock()
            .get(&key)
            .filter(|(at, _)| at.elapsed() < TTL)
            .map(|(_, text)| text.clone());
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
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
                cache.insert(key, (Instant::now(), looked_up.clone()));
                looked_up
            }
        };
        Ok(text)
    }

    /// Drops the wording kept for a template of business account `waba_id` (the account stage
    /// calls it when Meta changes the template's status), so its next send reads it from Meta
    /// again. Only this process's cache: another worker keeps its copy for up to [`TTL`].
    pub fn forget(&self, waba_id: &str, name: &str, language: &str) {
        self.lock()
            .remove(&(waba_id.to_string(), name.to_string(), language.to_string()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cached.lock().unwrap_or_else(|e| e.into_inner())
    }
}
