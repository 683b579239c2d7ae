//! Per-channel settings the stages need, cached in the process, so a change made with
//! `wafleetctl` is seen within seconds without a query per job. Secrets (the access token, model
//! API keys) are decrypted here, in memory only.
//!
//! An entry is trusted for 2 s; after that it is checked against every channel's `updated_at`
//! (read whole only when the table's fingerprint moved, at most once per 2 s per process), and
//! only a channel whose `updated_at` moved is read again: a quiet channel costs no read per
//! message. When a channel is re-read, one job reads it while its others keep using the stale
//! entry (a lock per channel: other channels' jobs do not wait), and the settings are rebuilt
//! (keyword automaton, decryption) only when the rows changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use wafleet_core::handover::HandoverMatcher;

use crate::config::Secret;
use crate::crypto::Cipher;
use crate::llm::{ProviderConfig, ProviderKind};
use crate::store::channels::{BotMode, open_text, report_unreadable};

/// Default acknowledgement when a conversation is handed to a human.
pub const DEFAULT_HANDOVER_ACK: &str =
    "Te comunico con una persona de nuestro equipo. / Connecting you with a person from our team.";

/// Sent when every model failed, so a customer is never left without an answer.
pub const DEFAULT_CANNED_REPLY: &str = "Gracias por escribirnos. En este momento no podemos \
    responder; una persona de nuestro equipo te contestará pronto. / Thanks for your message: a \
    person from our team will answer you shortly.";

#[derive(Debug)]
pub struct ChannelSettings {
    pub id: i64,
    pub phone_number_id: String,
    /// The WhatsApp Business Account (where its templates' wording is read), when configured.
    pub waba_id: Option<String>,
    pub enabled: bool,
    pub bot_mode: BotMode,
    pub session_timeout_secs: i64,
    pub handover: HandoverMatcher,
    /// Empty: no acknowledgement.
    pub handover_ack: String,
    /// When the channel's people answer (`None`: always), and what a customer who asks for one
    /// outside those hours is told instead of `handover_ack`.
    pub hours: Option<BusinessHours>,
    /// Empty: no notice.
    pub media_notice: String,
    /// Whether the model sees the images customers send (`images_to_model`).
    pub images_to_model: bool,
    /// Whether voice notes and audio files are transcribed and answered (`transcribe_audio`).
    pub transcribe_audio: bool,
    /// Whether the model reads the PDFs customers send (`documents_to_model`).
    pub documents_to_model: bool,
    /// Whether the model reads the locations customers share (`locations_to_model`).
    pub locations_to_model: bool,
    /// `None`: the built-in prompt.
    pub system_prompt: Option<String>,
    pub history_limit: i64,
    /// How long a customer's text waits before it is answered, for what they type right after
    /// it (`reply_gather_ms`; zero: answered at once).
    pub reply_gather: std::time::Duration,
    /// Whether the channel has a knowledge base (else no search for its messages).
    pub has_knowledge: bool,
    pub canned_reply: String,
    pub send_rate_per_sec: u32,
    pub pair_burst: u32,
    pub sends_paused_until: Option<chrono::DateTime<chrono::Utc>>,
    /// Decrypted in memory only.
    pub access_token: Option<Secret<String>>,
    /// The stored access token would not decrypt (another `WAFLEET_ENCRYPTION_KEY` stored it, or
    /// the row was changed by hand): the sender pauses the channel and alerts.
    pub access_token_unreadable: bool,
    /// Whether the channel has a model chain of its own (else the process defaults serve it).
    pub own_chain: bool,
    /// The channel's own models whose keys decrypt, in order (a model whose key does not is left
    /// out and alerted on: the others, then the canned reply, answer).
    pub providers: Vec<ProviderConfig>,
}

/// A channel's business hours, in its own time zone.
#[derive(Debug)]
pub struct BusinessHours {
    pub schedule: wafleet_core::hours::Schedule,
    pub tz: chrono_tz::Tz,
    /// `None`: the usual acknowledgement; empty: none.
    pub after_hours_ack: Option<String>,
}

impl BusinessHours {
    pub fn open_at(&self, at: chrono::DateTime<chrono::Utc>) -> bool {
        use chrono::{Datelike, Timelike};
        let local = at.with_timezone(&self.tz);
        self.schedule.is_open(
            local.weekday().num_days_from_monday(),
            local.hour() * 60 + local.minute(),
        )
    }
}

impl ChannelSettings {
    /// What a customer handed to a person at `at` is told instead of the usual acknowledgement
    /// (`handover_ack`, or the model's own words), because the channel's people are not there
    /// then: `None` within business hours, or without an after-hours acknowledgement; empty:
    /// nothing.
    pub fn after_hours_ack_at(&self, at: chrono::DateTime<chrono::Utc>) -> Option<&str> {
        self.hours
            .as_ref()
            .filter(|h| !h.open_at(at))
            .and_then(|h| h.after_hours_ack.as_deref())
    }

    /// Whether the bot writes to this channel's customers at all: not when its mode is `off`,
    /// nor when the channel is disabled (ingest keeps its new updates aside; what was already
    /// queued when it was disabled is stored, not answered).
    pub fn bot_answers(&self) -> bool {
        self.enabled && self.bot_mode != BotMode::Off
    }
}

#[derive(sqlx::FromRow, PartialEq)]
struct Row {
    id: i64,
    phone_number_id: String,
    waba_id: Option<String>,
    enabled: bool,
    bot_mode: String,
    session_timeout_secs: i32,
    handover_keywords: Option<Vec<String>>,
    handover_ack: Option<String>,
    media_notice: Option<String>,
    system_prompt: Option<String>,
    history_limit: i32,
    canned_reply: Option<String>,
    send_rate_per_sec: i32,
    pair_burst: i32,
    sends_paused_until: Option<chrono::DateTime<chrono::Utc>>,
    access_token: Option<Vec<u8>>,
    business_hours: Option<String>,
    business_hours_tz: String,
    after_hours_ack: Option<String>,
    has_knowledge: bool,
    images_to_model: bool,
    transcribe_audio: bool,
    documents_to_model: bool,
    locations_to_model: bool,
    reply_gather_ms: i32,
}

/// A row and its version (compared apart: a change that moved only `updated_at`, as a
/// knowledge entry's, builds nothing again).
#[derive(sqlx::FromRow)]
struct Versioned {
    updated_at: DateTime<Utc>,
    #[sqlx(flatten)]
    row: Row,
}

#[derive(sqlx::FromRow, PartialEq)]
struct ProviderRow {
    name: String,
    kind: String,
    base_url: String,
    model: String,
    api_key: Vec<u8>,
}

/// How long a cached entry is trusted without a look at Postgres.
const FRESH_FOR: Duration = Duration::from_secs(2);

/// A cached channel: since when it is known current, the row version (`updated_at`) and rows it
/// was built from, and what was built (`None`: no such channel).
struct Cached {
    at: Instant,
    version: Option<DateTime<Utc>>,
    rows: Option<(Row, Vec<ProviderRow>)>,
    settings: Option<Arc<ChannelSettings>>,
}

/// Every channel's `updated_at` as of `at`, and the table's fingerprint they were read with.
struct Versions {
    at: Instant,
    fingerprint: (i64, Option<String>),
    of: Arc<HashMap<String, DateTime<Utc>>>,
}

#[derive(Clone)]
pub struct ChannelCache {
    pg: PgPool,
    cipher: Cipher,
    fresh_for: Duration,
    entries: Arc<Mutex<HashMap<String, Cached>>>,
    /// Held while a channel is re-read, so one job reads it and the others use what they have;
    /// one per channel, so a read of one channel holds up no other channel's jobs.
    reading: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    versions: Arc<Mutex<Option<Versions>>>,
    /// Held while the versions are re-read.
    checking: Arc<tokio::sync::Mutex<()>>,
}

/// Locks a map that is only ever replaced or inserted into whole: a poisoned lock is usable.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ChannelCache {
    pub fn new(pg: PgPool, cipher: Cipher) -> Self {
        Self {
            pg,
            cipher,
            fresh_for: FRESH_FOR,
            entries: Arc::default(),
            reading: Arc::default(),
            versions: Arc::default(),
            checking: Arc::default(),
        }
    }

    /// How long an entry is trusted without a look at Postgres (tests shorten it).
    pub fn fresh_for(mut self, fresh_for: Duration) -> Self {
        self.fresh_for = fresh_for;
        self
    }

    /// Tags and checks our outbound ids in `biz_opaque_callback_data` (same key as the secrets).
    pub fn callback_tags(&self) -> &crate::crypto::CallbackTags {
        self.cipher.callback_tags()
    }

    /// The numbers of the channel's Meta app ([`crate::store::channels::app_numbers`]).
    pub async fn app_numbers(&self, channel_id: i64) -> anyhow::Result<Vec<String>> {
        crate::store::channels::app_numbers(&self.pg, &self.cipher, channel_id).await
    }

    /// Forgets a channel, so the next lookup reads it again (after this process changed it).
    pub fn forget(&self, phone_number_id: &str) {
        self.lock().remove(phone_number_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        locked(&self.entries)
    }

    /// `(fresh, version, cached value)` of an entry, if there is one.
    #[allow(clippy::type_complexity)]
    fn cached(
        &self,
        phone_number_id: &str,
    ) -> Option<(bool, Option<DateTime<Utc>>, Option<Arc<ChannelSettings>>)> {
        self.lock().get(phone_number_id).map(|c| {
            (
                c.at.elapsed() < self.fresh_for,
                c.version,
                c.settings.clone(),
            )
        })
    }

    /// The channel of a job's conversation; a job for a channel that does not exist (any more)
    /// can never succeed and is dead-lettered.
    pub async fn of_job(
        &self,
        job: &crate::worker::Job,
    ) -> Result<Arc<ChannelSettings>, crate::worker::Outcome> {
        let pnid = super::phone_number_id_of(job);
        match self.get(pnid).await {
            Ok(Some(channel)) => Ok(channel),
            Ok(None) => Err(crate::worker::Outcome::Dead {
                reason: format!("no channel {pnid}"),
            }),
            Err(e) => Err(super::db_outcome(&e, "reading the channel")),
        }
    }

    /// A channel's settings, at most [`FRESH_FOR`] behind Postgres. A stale entry is checked
    /// against every channel's `updated_at` (read, for the whole fleet, only when the table's
    /// fingerprint changed, at most once per [`FRESH_FOR`]): a quiet channel whose row did not
    /// change is not read again. Its models and knowledge entries move its `updated_at` too.
    pub async fn get(&self, phone_number_id: &str) -> sqlx::Result<Option<Arc<ChannelSettings>>> {
        let stale = match self.cached(phone_number_id) {
            Some((true, _, v)) => return Ok(v),
            Some((false, version, v)) => Some((version, v)),
            None => None,
        };
        if let Some((version, v)) = &stale {
            match self.current_versions().await? {
                // Someone is re-reading them: the stale value serves meanwhile.
                None => return Ok(v.clone()),
                Some((at, current)) if current.get(phone_number_id) == version.as_ref() => {
                    if let Some(c) = self.lock().get_mut(phone_number_id)
                        && c.version == *version
                    {
                        c.at = c.at.max(at);
                    }
                    return Ok(v.clone());
                }
                Some(_) => {}
            }
        }
        let lock = locked(&self.reading)
            .entry(phone_number_id.to_string())
            .or_default()
            .clone();
        let _reading = match (lock.clone().try_lock_owned(), stale) {
            (Ok(guard), _) => guard,
            // Someone is re-reading it: the stale value serves meanwhile.
            (Err(_), Some((_, v))) => return Ok(v),
            (Err(_), None) => lock.lock_owned().await,
        };
        // Re-read by whoever held the lock before us?
        if let Some((true, _, v)) = self.cached(phone_number_id) {
            return Ok(v);
        }
        self.read(phone_number_id).await
    }

    /// Every channel's `updated_at`, read at most [`FRESH_FOR`] ago, and when; `None` while
    /// another job re-reads them.
    #[allow(clippy::type_complexity)]
    async fn current_versions(
        &self,
    ) -> sqlx::Result<Option<(Instant, Arc<HashMap<String, DateTime<Utc>>>)>> {
        let fresh = |v: &Option<Versions>| {
            v.as_ref()
                .filter(|v| v.at.elapsed() < self.fresh_for)
                .map(|v| (v.at, v.of.clone()))
        };
        if let Some(v) = fresh(&locked(&self.versions)) {
            return Ok(Some(v));
        }
        let Ok(_checking) = self.checking.try_lock() else {
            return Ok(None);
        };
        if let Some(v) = fresh(&locked(&self.versions)) {
            return Ok(Some(v));
        }
        let at = Instant::now();
        // The same fingerprint as ingest's: a digest of every row's id and `updated_at`.
        let fingerprint = crate::store::channels::fingerprint(&self.pg)
            .await
            .map_err(|e| match e.downcast::<sqlx::Error>() {
                Ok(e) => e,
                Err(e) => sqlx::Error::Protocol(format!("{e:#}")),
            })?;
        let known = locked(&self.versions)
            .as_ref()
            .filter(|v| v.fingerprint == fingerprint)
            .map(|v| v.of.clone());
        let of = match known {
            Some(of) => of,
            None => sqlx::query_as::<_, (String, DateTime<Utc>)>(
                "SELECT phone_number_id, updated_at FROM channels",
            )
            .fetch_all(&self.pg)
            .await?
            .into_iter()
            .collect::<HashMap<_, _>>()
            .into(),
        };
        *locked(&self.versions) = Some(Versions {
            at,
            fingerprint,
            of: of.clone(),
        });
        Ok(Some((at, of)))
    }

    async fn read(&self, phone_number_id: &str) -> sqlx::Result<Option<Arc<ChannelSettings>>> {
        let at = Instant::now();
        let row: Option<Versioned> = sqlx::query_as(
            "SELECT id, phone_number_id, waba_id, enabled, bot_mode, session_timeout_secs, handover_keywords,
                    handover_ack, media_notice, system_prompt, history_limit, canned_reply,
                    send_rate_per_sec, pair_burst, sends_paused_until, access_token,
                    business_hours, business_hours_tz, after_hours_ack, images_to_model,
                    transcribe_audio, documents_to_model, locations_to_model, reply_gather_ms,
                    updated_at,
                    EXISTS (SELECT 1 FROM knowledge_entries k WHERE k.channel_id = channels.id)
                        AS has_knowledge
               FROM channels WHERE phone_number_id = $1",
        )
        .bind(phone_number_id)
        .fetch_optional(&self.pg)
        .await?;
        let version = row.as_ref().map(|r| r.updated_at);
        let rows = match row {
            None => None,
            Some(Versioned { row: r, .. }) => {
                let providers: Vec<ProviderRow> = sqlx::query_as(
                    "SELECT name, kind, base_url, model, api_key FROM channel_llm_providers
                      WHERE channel_id = $1 ORDER BY position",
                )
                .bind(r.id)
                .fetch_all(&self.pg)
                .await?;
                Some((r, providers))
            }
        };
        let unchanged = self
            .lock()
            .get(phone_number_id)
            .filter(|c| c.rows == rows)
            .map(|c| c.settings.clone());
        let settings = match (unchanged, &rows) {
            (Some(v), _) => v,
            (None, None) => None,
            (None, Some((r, p))) => Some(Arc::new(self.build(r, p)?)),
        };
        self.lock().insert(
            phone_number_id.to_string(),
            Cached {
                at,
                version,
                rows,
                settings: settings.clone(),
            },
        );
        Ok(settings)
    }

    /// Builds a channel's settings. A secret that does not decrypt does not fail the channel:
    /// it is logged and counted (`wafleet_secrets_unreadable_total{channel,secret}`) once per
    /// change of the rows, and left out, so a job is never dead-lettered for it.
    fn build(&self, r: &Row, rows: &[ProviderRow]) -> sqlx::Result<ChannelSettings> {
        let pnid = &r.phone_number_id;
        let decrypt = |field: &str, v: &[u8]| {
            open_text(&self.cipher, pnid, field, v)
                .inspect_err(|_| report_unreadable(pnid, field))
                .ok()
        };
        let mut providers = Vec::with_capacity(rows.len());
        for p in rows {
            let kind = p
                .kind
                .parse::<ProviderKind>()
                .map_err(|e| sqlx::Error::Decode(format!("{e:?}").into()))?;
            let Some(api_key) = decrypt(&format!("llm:{}", p.name), &p.api_key) else {
                continue;
            };
            providers.push(ProviderConfig {
                kind,
                api_key,
                name: p.name.clone(),
                base_url: p.base_url.clone(),
                model: p.model.clone(),
            });
        }
        let access_token = r
            .access_token
            .as_deref()
            .map(|t| decrypt("access_token", t));
        Ok(ChannelSettings {
            access_token_unreadable: matches!(access_token, Some(None)),
            access_token: access_token.flatten(),
            own_chain: !rows.is_empty(),
            id: r.id,
            phone_number_id: r.phone_number_id.clone(),
            waba_id: r.waba_id.clone(),
            enabled: r.enabled,
            bot_mode: r.bot_mode.parse().unwrap_or(BotMode::Off),
            session_timeout_secs: i64::from(r.session_timeout_secs),
            handover: match &r.handover_keywords {
                Some(k) => HandoverMatcher::new(k),
                None => HandoverMatcher::default(),
            },
            handover_ack: r
                .handover_ack
                .clone()
                .unwrap_or_else(|| DEFAULT_HANDOVER_ACK.into()),
            hours: business_hours(r),
            media_notice: r.media_notice.clone().unwrap_or_default(),
            images_to_model: r.images_to_model,
            transcribe_audio: r.transcribe_audio,
            documents_to_model: r.documents_to_model,
            locations_to_model: r.locations_to_model,
            system_prompt: r.system_prompt.clone(),
            history_limit: i64::from(r.history_limit),
            reply_gather: std::time::Duration::from_millis(r.reply_gather_ms.max(0) as u64),
            has_knowledge: r.has_knowledge,
            canned_reply: r
                .canned_reply
                .clone()
                .unwrap_or_else(|| DEFAULT_CANNED_REPLY.into()),
            send_rate_per_sec: r.send_rate_per_sec.max(1) as u32,
            pair_burst: r.pair_burst.max(1) as u32,
            sends_paused_until: r.sends_paused_until,
            providers,
        })
    }
}

/// A channel's business hours as stored. A schedule or zone that does not parse (the row was
/// changed by hand: `wafleetctl channel set` checks both) is logged and counted, and the
/// channel is taken as always open, so no customer is told the team is away when it is not.
fn business_hours(r: &Row) -> Option<BusinessHours> {
    let text = r.business_hours.as_deref()?;
    let parsed = text
        .parse::<wafleet_core::hours::Schedule>()
        .map_err(|e| e.to_string())
        .and_then(|schedule| {
            let tz = r
                .business_hours_tz
                .parse::<chrono_tz::Tz>()
                .map_err(|_| format!("{:?} is not a time zone", r.business_hours_tz))?;
            Ok((schedule, tz))
        });
    match parsed {
        Ok((schedule, tz)) => Some(BusinessHours {
            schedule,
            tz,
            after_hours_ack: r.after_hours_ack.clone(),
        }),
        Err(e) => {
            tracing::warn!(channel = %r.phone_number_id, error = %e, "business hours ignored");
            metrics::counter!("wafleet_channel_setting_errors_total", "channel" => r.phone_number_id.clone(), "setting" => "business_hours").increment(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn business_hours_are_read_in_the_channels_time_zone() {
        let hours = BusinessHours {
            schedule: "mon-fri 09:00-18:00".parse().unwrap(),
            tz: "America/Bogota".parse().unwrap(),
            after_hours_ack: None,
        };
        // Monday 7 December 2026: 14:00 UTC is 09:00 in Bogotá (UTC-5).
        let at = |d, h, m| Utc.with_ymd_and_hms(2026, 12, d, h, m, 0).unwrap();
        assert!(!hours.open_at(at(7, 13, 59)));
        assert!(hours.open_at(at(7, 14, 0)));
        assert!(hours.open_at(at(7, 22, 59)));
        assert!(!hours.open_at(at(7, 23, 0)), "18:00 in Bogotá");
        // Saturday 04:00 UTC is still Friday 23:00 in Bogotá: closed; Friday 20:00 UTC open.
        assert!(hours.open_at(at(11, 20, 0)));
        assert!(!hours.open_at(at(12, 4, 0)));
    }
}
