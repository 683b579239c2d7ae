//! The account stage: acts on what Meta says of a business's numbers, account and templates.
//!
//! It reads the events stream (`P:{events}:stream`, [`Source::Events`]) with the consumer group
//! `account`: ingest puts there every change of a field other than `messages` and every
//! `value.errors[]` item, one entry each, and the stage keeps every entry once done (only
//! acknowledged: the retention trims the stream, as before). Entries of one business account
//! (`conv` = `waba:<id>`) run one after another in stream order; an entry is acknowledged only
//! after its work, and a job run again (a crash, a takeover) records nothing twice: each update
//! is recorded on the channel with its entry id, newer only ([`account_state`]), and each
//! dashboard event goes out once per entry and number ([`super::publish_event_once`]).
//!
//! - `phone_number_quality_update` (a number flagged, unflagged, its messaging limit up or
//!   down): matched to the channel of the update's business account (`entry.id`, the channel's
//!   `waba_id`) whose display number it names, recorded on it (latest event and tier), counted
//!   in `wafleet_number_quality_events_total{channel,event}`, logged (a warning for a flag or a
//!   downgrade), announced on the dashboard stream (`number_quality`); the gauges
//!   `wafleet_channel_quality_flagged` and `wafleet_channel_messaging_limit` follow.
//! - `account_update` (the account disabled, restricted, in violation…): recorded on every
//!   channel of the account, counted (`wafleet_account_events_total{channel,event}`), logged,
//!   announced (`account_update`); `wafleet_channel_account_restricted` and
//!   `wafleet_channel_account_disabled` follow. It pauses nothing: see the README (Account,
//!   quality and template updates) for why the sender's own pause on Meta's refusal is kept as
//!   the one that stops sends.
//! - `message_template_status_update` (approved, rejected, paused…): counted once
//!   (`wafleet_template_status_events_total{event}`), announced to every number of the account
//!   (`template_status`), and the template's cached wording and status are dropped in every
//!   process, the API's too ([`Wordings::forget`] moves the fleet's template version).
//! - Anything else (other fields, errors, a value nobody documented) is left as it is: kept on
//!   the stream, counted as `kept`.
//!
//! An update for a business account no channel names finds nothing to record (ingest passes it
//! to the events stream, having no app to check its signature against): it is counted as
//! `unknown_account` and kept. An update ingest received longer ago than
//! [`AccountStage::announce_max_age`] (a first start reading what the stream holds, a worker
//! back after a long stop) is recorded but not announced and not counted in the per-event
//! counters the alerts watch: counted `late`. Nothing here logs a phone number, a template's text or Meta's
//! prose; Meta's codes and our ids only.

use chrono::{DateTime, TimeZone, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use wafleet_core::account::{
    self as meta, AccountChange, AccountUpdate, QualityUpdate, TemplateStatusUpdate,
};
use wafleet_core::envelope::{FieldEvent, Update};

use super::wording::Wordings;
use super::{db_outcome, decode_update, publish_event_once, redis_down};
use crate::shared_redis::SharedRedis;
use crate::store::account_state::{self, Applied, WabaChannel};
use crate::streams::Keys;
use crate::worker::{Handler, Job, Outcome, Source, Stage};

pub const STAGE: Stage = Stage {
    name: "account",
    source: Source::Events,
};

/// How often the per-channel gauges are read back from Postgres: they are the channels' state,
/// not this process's memory, so a restarted worker shows a flagged number as flagged.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// How old an update may be (since ingest received it) and still be announced:
/// `WAFLEET_ACCOUNT_ANNOUNCE_MAX_AGE_SECS`. An older one (a first start working through what the
/// events stream holds, a worker that was down for long) is recorded on the channels, so
/// `channel show`, the API and the gauges are right, but puts nothing on the dashboard stream and
/// moves none of the counters the alerts watch (`increase(…[1h])`): a console or an alert would
/// otherwise light up for something Meta said hours or days ago. One hour: the alerts' window.
pub const DEFAULT_ANNOUNCE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Quality events Meta documents; any other is counted as `other` (the label stays bounded).
const QUALITY_EVENTS: &[&str] = &[
    "FLAGGED",
    "UNFLAGGED",
    "UPGRADE",
    "DOWNGRADE",
    "ONBOARDING",
    "THROUGHPUT_UPGRADE",
];

/// Account events Meta documents (and `ACCOUNT_RESTRICTION`, seen in vendors' payloads).
const ACCOUNT_EVENTS: &[&str] = &[
    "DISABLED_UPDATE",
    "ACCOUNT_RESTRICTION",
    "ACCOUNT_VIOLATION",
    "ACCOUNT_DELETED",
    "AD_ACCOUNT_LINKED",
    "AUTH_INTL_PRICE_ELIGIBILITY_UPDATE",
    "BUSINESS_PRIMARY_LOCATION_COUNTRY_UPDATE",
    "MM_LITE_TERMS_SIGNED",
    "PARTNER_ADDED",
    "PARTNER_APP_INSTALLED",
    "PARTNER_APP_UNINSTALLED",
    "PARTNER_CLIENT_CERTIFICATION_STATUS_UPDATE",
    "PARTNER_REMOVED",
    "VOLUME_BASED_PRICING_TIER_UPDATE",
];

/// Template statuses Meta documents.
const TEMPLATE_EVENTS: &[&str] = &[
    "APPROVED",
    "ARCHIVED",
    "DELETED",
    "DISABLED",
    "FLAGGED",
    "IN_APPEAL",
    "LIMIT_EXCEEDED",
    "LOCKED",
    "PAUSED",
    "PENDING",
    "PENDING_DELETION",
    "REINSTATED",
    "REJECTED",
    "UNLOCKED",
];

/// `event` as a metric label: one Meta documents, else `other` (an absent one: `none`).
fn label(event: Option<&str>, known: &[&'static str]) -> &'static str {
    match event {
        None => "none",
        Some(e) => known.iter().find(|k| **k == e).copied().unwrap_or("other"),
    }
}

/// The field as a metric label.
fn field_label(field: &str) -> &'static str {
    match field {
        meta::QUALITY_FIELD => meta::QUALITY_FIELD,
        meta::ACCOUNT_FIELD => meta::ACCOUNT_FIELD,
        meta::TEMPLATE_STATUS_FIELD => meta::TEMPLATE_STATUS_FIELD,
        _ => "other",
    }
}

fn count(field: &str, result: &'static str) {
    metrics::counter!("wafleet_meta_changes_total", "field" => field_label(field), "result" => result)
        .increment(1);
}

/// The dashboard's `reason` of a Meta event: its name in lower case (`FLAGGED` → `flagged`),
/// `unknown` when it has none.
fn reason(event: Option<&str>) -> String {
    event.map_or_else(|| "unknown".into(), str::to_ascii_lowercase)
}

pub struct AccountStage {
    pub pg: PgPool,
    pub redis: SharedRedis,
    pub keys: Keys,
    /// The sender's cache of templates' wordings in this process, dropped for a template whose
    /// status changed.
    pub wordings: Wordings,
    /// Updates received longer ago than this are recorded but not announced
    /// ([`DEFAULT_ANNOUNCE_MAX_AGE`]).
    pub announce_max_age: std::time::Duration,
}

impl Handler for AccountStage {
    async fn handle(&self, job: &Job) -> Outcome {
        let update = match decode_update(job) {
            Ok(u) => u,
            // Dead-lettered with the job's fields; the entry itself stays on the events stream.
            Err(dead) => return dead,
        };
        let Update::Event(event) = update else {
            // A `value.errors[]` item: kept for inspection, as before.
            count("errors", "kept");
            return Outcome::Done;
        };
        let at = received_at(job);
        let age = (Utc::now() - at).to_std().unwrap_or_default();
        let late = age > self.announce_max_age;
        let result = match meta::read(&event) {
            AccountChange::Quality(q) => self.quality(job, &event, &q, at, late).await,
            AccountChange::Account(a) => self.account(job, &event, &a, at, late).await,
            AccountChange::TemplateStatus(t) => self.template(job, &event, &t, at, late).await,
            AccountChange::Other => Ok("kept"),
        };
        if result == Ok("late") {
            tracing::info!(
                field = field_label(&event.field),
                age_secs = age.as_secs(),
                max_age_secs = self.announce_max_age.as_secs(),
                "an update older than WAFLEET_ACCOUNT_ANNOUNCE_MAX_AGE_SECS: recorded, not \
                 announced or counted for alerts"
            );
        }
        match result {
            Ok(result) => {
                count(&event.field, result);
                Outcome::Done
            }
            Err(outcome) => outcome,
        }
    }
}

/// When ingest received the update (`received_at`, Unix ms), else when its entry was written.
fn received_at(job: &Job) -> DateTime<Utc> {
    let ms = job
        .field("received_at")
        .and_then(|v| v.parse::<i64>().ok())
        .or_else(|| job.id.split('-').next().and_then(|v| v.parse().ok()))
        .unwrap_or_default();
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(Utc::now)
}

impl AccountStage {
    /// The channels of the update's business account; empty when none names it.
    /// The channels of the event's business account; `None` (logged, naming `what` update it
    /// was) when no channel names it, and the update is only kept.
    async fn channels(
        &self,
        event: &FieldEvent,
        what: &'static str,
    ) -> Result<Option<Vec<WabaChannel>>, Outcome> {
        let channels = match event.waba_id.as_deref() {
            Some(waba) => account_state::channels_of_waba(&self.pg, waba)
                .await
                .map_err(|e| db_outcome(&e, "reading the business account's channels"))?,
            None => Vec::new(),
        };
        if channels.is_empty() {
            tracing::info!(
                waba_id = event.waba_id.as_deref().unwrap_or("-"),
                update = what,
                "an update for a business account no channel names; kept"
            );
            return Ok(None);
        }
        Ok(Some(channels))
    }

    /// Puts `event` on the dashboard stream once for this entry and number.
    async fn announce(
        &self,
        job: &Job,
        phone_number_id: &str,
        event: serde_json::Value,
    ) -> Result<bool, Outcome> {
        let mut con = self.redis.get().await.map_err(redis_down)?;
        let once = format!("meta:{}:{phone_number_id}", job.id);
        publish_event_once(&mut con, &self.keys, &event.to_string(), &once)
            .await
            .map_err(redis_down)
    }

    async fn quality(
        &self,
        job: &Job,
        event: &FieldEvent,
        q: &QualityUpdate,
        at: DateTime<Utc>,
        late: bool,
    ) -> Result<&'static str, Outcome> {
        let Some(channels) = self.channels(event, "quality").await? else {
            return Ok("unknown_account");
        };
        // Meta names the number by its display number (a payload with the phone_number_id is
        // taken by it): a channel without one stored (ingest learns it from the number's
        // messages, `crate::ingest::display_numbers`) cannot be matched.
        let channel = channels.iter().find(|c| {
            q.phone_number_id.as_deref() == Some(c.phone_number_id.as_str())
                || q.display_phone_number
                    .as_deref()
                    .zip(c.display_phone_number.as_deref())
                    .is_some_and(|(a, b)| meta::same_display_number(a, b))
        });
        let Some(channel) = channel else {
            tracing::warn!(
                waba_id = event.waba_id.as_deref().unwrap_or("-"),
                channels = channels.len(),
                "a number's quality update names a display number none of the account's channels \
                 has stored (learnt from the number's first message, or channel add \
                 --display-phone-number); kept, not recorded"
            );
            return Ok("unmatched_number");
        };
        let pnid = channel.phone_number_id.as_str();
        let applied = account_state::record_quality(
            &self.pg,
            channel.id,
            &job.id,
            q.event.as_deref(),
            q.limit.as_deref(),
            at,
        )
        .await
        .map_err(|e| db_outcome(&e, "recording the number's quality"))?;
        let event_label = label(q.event.as_deref(), QUALITY_EVENTS);
        if applied == Applied::New && !late {
            metrics::counter!("wafleet_number_quality_events_total", "channel" => pnid.to_string(), "event" => event_label)
                .increment(1);
            let limit = q.limit.as_deref().unwrap_or("-");
            if q.flags() || q.event.as_deref() == Some("DOWNGRADE") {
                tracing::warn!(
                    channel = pnid,
                    event = event_label,
                    limit,
                    "Meta flagged the number or lowered its messaging limit"
                );
            } else {
                tracing::info!(
                    channel = pnid,
                    event = event_label,
                    limit,
                    "Meta changed the number's quality or messaging limit"
                );
            }
        }
        if applied == Applied::Older {
            return Ok("older");
        }
        if !late {
            let dashboard = serde_json::json!({
                "kind": "number_quality", "reason": reason(q.event.as_deref()),
                "phone_number_id": pnid, "event": q.event, "messaging_limit": q.limit,
                "at": at.to_rfc3339(),
            });
            self.announce(job, pnid, dashboard).await?;
        }
        self.refresh_gauges(pnid).await;
        Ok(if late {
            "late"
        } else if applied == Applied::New {
            "recorded"
        } else {
            "again"
        })
    }

    /// The number's gauges at once, not at the next sample; a failed read leaves them to it.
    async fn refresh_gauges(&self, pnid: &str) {
        if let Ok(Some(state)) = account_state::state_of(&self.pg, pnid).await {
            set_gauges(&state, Utc::now());
        }
    }

    async fn account(
        &self,
        job: &Job,
        event: &FieldEvent,
        a: &AccountUpdate,
        at: DateTime<Utc>,
        late: bool,
    ) -> Result<&'static str, Outcome> {
        let Some(channels) = self.channels(event, "account").await? else {
            return Ok("unknown_account");
        };
        let restrictions_given =
            !a.restrictions.is_empty() || a.event.as_deref() == Some("ACCOUNT_RESTRICTION");
        let event_label = label(a.event.as_deref(), ACCOUNT_EVENTS);
        let mut result = "older";
        for channel in &channels {
            let pnid = channel.phone_number_id.as_str();
            let applied = account_state::record_account(
                &self.pg,
                channel.id,
                &job.id,
                a,
                restrictions_given,
                at,
            )
            .await
            .map_err(|e| db_outcome(&e, "recording the account update"))?;
            if applied == Applied::New && !late {
                metrics::counter!("wafleet_account_events_total", "channel" => pnid.to_string(), "event" => event_label)
                    .increment(1);
                let restrictions = account_state::restriction_types(&a.restrictions);
                let (ban, violation) = (
                    a.ban_state.as_deref().unwrap_or("-"),
                    a.violation.as_deref().unwrap_or("-"),
                );
                if a.disables() || !restrictions.is_empty() || a.violation.is_some() {
                    tracing::warn!(
                        channel = pnid,
                        event = event_label,
                        ban_state = ban,
                        ?restrictions,
                        violation,
                        "Meta restricted, disabled or warned the number's business account"
                    );
                } else {
                    tracing::info!(
                        channel = pnid,
                        event = event_label,
                        ban_state = ban,
                        "Meta updated the number's business account"
                    );
                }
            }
            if applied == Applied::Older {
                continue;
            }
            if late {
                result = "late";
            } else {
                result = match (applied, result) {
                    (Applied::New, _) | (_, "recorded") => "recorded",
                    _ => "again",
                };
                let dashboard = serde_json::json!({
                    "kind": "account_update", "reason": reason(a.event.as_deref()),
                    "phone_number_id": pnid, "waba_id": event.waba_id, "event": a.event,
                    "ban_state": a.ban_state, "restrictions": a.restrictions,
                    "violation": a.violation, "at": at.to_rfc3339(),
                });
                self.announce(job, pnid, dashboard).await?;
            }
            self.refresh_gauges(pnid).await;
        }
        Ok(result)
    }

    async fn template(
        &self,
        job: &Job,
        event: &FieldEvent,
        t: &TemplateStatusUpdate,
        at: DateTime<Utc>,
        late: bool,
    ) -> Result<&'static str, Outcome> {
        let Some(channels) = self.channels(event, "template_status").await? else {
            return Ok("unknown_account");
        };
        let waba = event.waba_id.as_deref().unwrap_or_default();
        // Every process's copy of the template (its wording and status) within about a second:
        // the API then refuses a paused template up front, and sends a reinstated one again.
        // Moved on every update (one without a name empties every process's cache).
        let (name, language) = (t.name.as_deref(), t.language.as_deref());
        self.wordings
            .forget(waba, name.unwrap_or_default(), language.unwrap_or_default())
            .await
            .map_err(redis_down)?;
        if late {
            // Nothing is recorded of a template's status; an old one is not news to anyone.
            return Ok("late");
        }
        let event_label = label(t.event.as_deref(), TEMPLATE_EVENTS);
        let mut first = true;
        let mut result = "again";
        for channel in &channels {
            let pnid = channel.phone_number_id.as_str();
            let dashboard = serde_json::json!({
                "kind": "template_status", "reason": reason(t.event.as_deref()),
                "phone_number_id": pnid, "waba_id": event.waba_id, "event": t.event,
                "template_id": t.template_id, "template_name": t.name, "language": t.language,
                "category": t.category, "meta_reason": t.reason, "detail": t.title,
                "at": at.to_rfc3339(),
            });
            let appended = self.announce(job, pnid, dashboard).await?;
            // Counted and logged once per update: by the run that announced it to the first
            // number (a job run again finds that event's mark).
            if first && appended {
                result = "recorded";
                metrics::counter!("wafleet_template_status_events_total", "event" => event_label)
                    .increment(1);
                let (template_id, reason) = (
                    t.template_id.as_deref().unwrap_or("-"),
                    t.reason.as_deref().unwrap_or("-"),
                );
                if t.stops_sends() {
                    tracing::warn!(
                        waba_id = waba,
                        template_id,
                        event = event_label,
                        reason,
                        "Meta rejected, paused or disabled a template"
                    );
                } else {
                    tracing::info!(
                        waba_id = waba,
                        template_id,
                        event = event_label,
                        reason,
                        "a template's status changed"
                    );
                }
            }
            first = false;
        }
        Ok(result)
    }
}

/// Sets the per-channel gauges from what is recorded: `wafleet_channel_quality_flagged`,
/// `wafleet_channel_messaging_limit` (the tier's daily limit, `+Inf` unlimited; unset until a
/// tier is known), `wafleet_channel_account_restricted` (a restriction in force at `now`) and
/// `wafleet_channel_account_disabled`.
pub fn set_gauges(state: &account_state::AccountState, now: DateTime<Utc>) {
    let channel = state.phone_number_id.clone();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    metrics::gauge!("wafleet_channel_quality_flagged", "channel" => channel.clone())
        .set(flag(state.flagged()));
    if let Some(limit) = state.messaging_limit.as_deref().and_then(meta::tier_limit) {
        metrics::gauge!("wafleet_channel_messaging_limit", "channel" => channel.clone()).set(limit);
    }
    metrics::gauge!("wafleet_channel_account_restricted", "channel" => channel.clone())
        .set(flag(!state.restrictions_in_force(now).is_empty()));
    metrics::gauge!("wafleet_channel_account_disabled", "channel" => channel)
        .set(flag(state.disabled()));
}

/// Reads every channel's state and sets its gauges every [`SAMPLE_EVERY`] until `stop` (a
/// restriction's expiry is seen here, with no update from Meta).
pub async fn sample_gauges(pg: PgPool, stop: CancellationToken) {
    loop {
        match account_state::states(&pg).await {
            Ok(states) => {
                let now = Utc::now();
                for state in &states {
                    set_gauges(state, now);
                }
            }
            Err(e) => {
                metrics::counter!("wafleet_account_sample_errors_total").increment(1);
                tracing::warn!(error = %e, "reading the channels' account state failed; the gauges keep their last values");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded_whatever_meta_writes() {
        assert_eq!(label(Some("FLAGGED"), QUALITY_EVENTS), "FLAGGED");
        assert_eq!(label(Some("flagged"), QUALITY_EVENTS), "other");
        assert_eq!(label(Some("SOMETHING_NEW"), TEMPLATE_EVENTS), "other");
        assert_eq!(label(None, ACCOUNT_EVENTS), "none");
        assert_eq!(field_label("security"), "other");
        assert_eq!(field_label(meta::QUALITY_FIELD), meta::QUALITY_FIELD);
        assert_eq!(reason(Some("DOWNGRADE")), "downgrade");
    }
}
