//! What Meta last said of a channel's number and business account (migration 0034's columns of
//! `channels`): the latest quality event and messaging-limit tier, and the account's latest
//! event, ban state, restrictions and violation. Written only by the account stage
//! ([`crate::stages::account`]); read by `wafleetctl channel show`, the channel API and the
//! per-channel gauges.
//!
//! Each group keeps the events-stream entry id that set it (`quality_entry`, `account_entry`):
//! an update is applied only when its entry is newer, so a job run twice records once and an
//! older update never overwrites a newer one.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use wafleet_core::account::{AccountUpdate, Restriction};

/// A channel of a business account, as the account stage matches updates to it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WabaChannel {
    pub id: i64,
    pub phone_number_id: String,
    pub display_phone_number: Option<String>,
}

/// The channels whose `waba_id` is `waba_id`, by id.
pub async fn channels_of_waba(pg: &PgPool, waba_id: &str) -> sqlx::Result<Vec<WabaChannel>> {
    sqlx::query_as(
        "SELECT id, phone_number_id, display_phone_number FROM channels
          WHERE waba_id = $1 ORDER BY id",
    )
    .bind(waba_id)
    .fetch_all(pg)
    .await
}

/// What recording an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The update is the newest: recorded.
    New,
    /// This very update was recorded before (a job run again).
    Again,
    /// A newer update was recorded already: nothing changed.
    Older,
}

/// `entry` (a stream entry id, `ms-seq`) newer than the column `col`, or `col` unset: entry ids
/// compare by their two numbers, not as text (`…-10` sorts before `…-9` as text).
fn newer_than(col: &str) -> String {
    format!(
        "({col} IS NULL OR (split_part({col}, '-', 1)::numeric, split_part({col}, '-', 2)::numeric)
            < (split_part($2, '-', 1)::numeric, split_part($2, '-', 2)::numeric))"
    )
}

/// What a write that changed no row means: this entry recorded before, or a newer one.
async fn unchanged(pg: &PgPool, col: &str, channel_id: i64, entry: &str) -> sqlx::Result<Applied> {
    let current: Option<Option<String>> =
        sqlx::query_scalar(&format!("SELECT {col} FROM channels WHERE id = $1"))
            .bind(channel_id)
            .fetch_optional(pg)
            .await?;
    Ok(if current.flatten().as_deref() == Some(entry) {
        Applied::Again
    } else {
        Applied::Older
    })
}

/// Records a `phone_number_quality_update` (stream entry `entry`, received `at`) on the channel:
/// its event, and its tier when it names one (an event without a tier keeps the last one).
pub async fn record_quality(
    pg: &PgPool,
    channel_id: i64,
    entry: &str,
    event: Option<&str>,
    limit: Option<&str>,
    at: DateTime<Utc>,
) -> sqlx::Result<Applied> {
    let sql = format!(
        "UPDATE channels
            SET quality_event = $3, messaging_limit = COALESCE($4, messaging_limit),
                quality_at = $5, quality_entry = $2
          WHERE id = $1 AND {}",
        newer_than("quality_entry")
    );
    let done = sqlx::query(&sql)
        .bind(channel_id)
        .bind(entry)
        .bind(event)
        .bind(limit)
        .bind(at)
        .execute(pg)
        .await?;
    if done.rows_affected() == 1 {
        return Ok(Applied::New);
    }
    unchanged(pg, "quality_entry", channel_id, entry).await
}

/// Records an `account_update` on the channel: its event always; the ban state, restrictions
/// and violation when it carries them (an update about something else, such as a partner
/// added, leaves the last ones as they were).
pub async fn record_account(
    pg: &PgPool,
    channel_id: i64,
    entry: &str,
    update: &AccountUpdate,
    restrictions_given: bool,
    at: DateTime<Utc>,
) -> sqlx::Result<Applied> {
    let restrictions = restrictions_given
        .then(|| serde_json::to_value(&update.restrictions).expect("restrictions serialise"));
    let sql = format!(
        "UPDATE channels
            SET account_event = $3, account_ban_state = COALESCE($4, account_ban_state),
                account_restrictions = CASE WHEN $5 THEN $6 ELSE account_restrictions END,
                account_violation = COALESCE($7, account_violation),
                account_at = $8, account_entry = $2
          WHERE id = $1 AND {}",
        newer_than("account_entry")
    );
    let done = sqlx::query(&sql)
        .bind(channel_id)
        .bind(entry)
        .bind(update.event.as_deref())
        .bind(update.ban_state.as_deref())
        .bind(restrictions_given)
        .bind(restrictions)
        .bind(update.violation.as_deref())
        .bind(at)
        .execute(pg)
        .await?;
    if done.rows_affected() == 1 {
        return Ok(Applied::New);
    }
    unchanged(pg, "account_entry", channel_id, entry).await
}

/// What Meta last said of one channel.
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct AccountState {
    pub phone_number_id: String,
    pub quality_event: Option<String>,
    pub messaging_limit: Option<String>,
    pub quality_at: Option<DateTime<Utc>>,
    pub account_event: Option<String>,
    pub account_ban_state: Option<String>,
    pub account_restrictions: Option<serde_json::Value>,
    pub account_violation: Option<String>,
    pub account_at: Option<DateTime<Utc>>,
}

impl AccountState {
    /// The restrictions recorded, as Meta gave them.
    pub fn restrictions(&self) -> Vec<Restriction> {
        parse_restrictions(self.account_restrictions.clone())
    }

    /// The restrictions still in force at `now`: those without an expiration, or whose
    /// expiration (Meta writes `2026-04-19T13:59:20+0000`) is later; one whose expiration does
    /// not parse counts as in force.
    pub fn restrictions_in_force(&self, now: DateTime<Utc>) -> Vec<Restriction> {
        self.restrictions()
            .into_iter()
            .filter(|r| match r.expiration.as_deref() {
                None => true,
                Some(e) => DateTime::parse_from_str(e, "%Y-%m-%dT%H:%M:%S%z")
                    .or_else(|_| DateTime::parse_from_rfc3339(e))
                    .map_or(true, |t| t > now),
            })
            .collect()
    }

    /// Flagged: the latest quality event is `FLAGGED`.
    pub fn flagged(&self) -> bool {
        self.quality_event.as_deref() == Some("FLAGGED")
    }

    /// Disabled, or scheduled to be: the ban state recorded (or the account deleted).
    pub fn disabled(&self) -> bool {
        matches!(
            self.account_ban_state.as_deref(),
            Some("DISABLE" | "SCHEDULE_FOR_DISABLE")
        ) || self.account_event.as_deref() == Some("ACCOUNT_DELETED")
    }
}

impl AccountState {
    /// The state as the channel API answers it (`meta_status`) and `channel show` prints it:
    /// what Meta said, when, and what it means now (`flagged`, `account_restricted` with the
    /// restrictions in force at `now`, `account_disabled`).
    pub fn to_json(&self, now: DateTime<Utc>) -> serde_json::Value {
        let at = |t: &Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339());
        serde_json::json!({
            "quality_event": self.quality_event,
            "flagged": self.flagged(),
            "messaging_limit": self.messaging_limit,
            "quality_at": at(&self.quality_at),
            "account_event": self.account_event,
            "account_ban_state": self.account_ban_state,
            "account_disabled": self.disabled(),
            "account_restrictions": self.restrictions(),
            "account_restricted": !self.restrictions_in_force(now).is_empty(),
            "account_violation": self.account_violation,
            "account_at": at(&self.account_at),
        })
    }
}

impl AccountState {
    /// The state as `wafleetctl channel show` prints it, two `name: value` lines: `meta_quality`
    /// and `meta_account`, `(nothing from Meta)` until Meta says something.
    pub fn describe(&self, now: DateTime<Utc>) -> [(&'static str, String); 2] {
        let at = |t: &Option<DateTime<Utc>>| {
            t.map(|t| {
                format!(
                    ", at {}",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            })
            .unwrap_or_default()
        };
        let quality = match (&self.quality_event, &self.messaging_limit) {
            (None, None) => "(nothing from Meta)".to_string(),
            (event, limit) => format!(
                "{}, messaging limit {}{}{}",
                event.as_deref().unwrap_or("-"),
                limit.as_deref().unwrap_or("unknown"),
                at(&self.quality_at),
                if self.flagged() { " (FLAGGED)" } else { "" }
            ),
        };
        let account = match &self.account_event {
            None => "(nothing from Meta)".to_string(),
            Some(event) => {
                let mut parts = vec![event.clone()];
                if let Some(ban) = &self.account_ban_state {
                    parts.push(format!("ban state {ban}"));
                }
                let in_force = self.restrictions_in_force(now);
                if !in_force.is_empty() {
                    let list: Vec<String> = in_force
                        .iter()
                        .map(|r| match &r.expiration {
                            Some(e) => format!("{} until {e}", r.restriction_type),
                            None => r.restriction_type.clone(),
                        })
                        .collect();
                    parts.push(format!("restricted: {}", list.join("; ")));
                }
                if let Some(v) = &self.account_violation {
                    parts.push(format!("violation {v}"));
                }
                format!(
                    "{}{}{}",
                    parts.join(", "),
                    at(&self.account_at),
                    if self.disabled() { " (DISABLED)" } else { "" }
                )
            }
        };
        [("meta_quality", quality), ("meta_account", account)]
    }
}

/// Clears the restrictions recorded for channel `phone_number_id`: an operator says Meta lifted
/// them before the expiration it gave (or never gave one). The rest of what Meta said (the
/// event, the ban state, the violation) and the entry id that recorded it are kept, so the same
/// update run again (a crash, a takeover) records nothing, while a new restriction from Meta is
/// recorded as before. `None` when no channel has the number; else the restrictions that were
/// recorded (empty: there was nothing to clear). The per-channel gauge follows at the account
/// stage's next sample ([`crate::stages::account::SAMPLE_EVERY`]).
pub async fn clear_restrictions(
    pg: &PgPool,
    phone_number_id: &str,
) -> sqlx::Result<Option<Vec<Restriction>>> {
    let old: Option<Option<serde_json::Value>> = sqlx::query_scalar(
        "WITH old AS (SELECT id, account_restrictions FROM channels
                       WHERE phone_number_id = $1 FOR UPDATE),
              cleared AS (UPDATE channels c SET account_restrictions = NULL
                            FROM old WHERE c.id = old.id)
         SELECT account_restrictions FROM old",
    )
    .bind(phone_number_id)
    .fetch_optional(pg)
    .await?;
    Ok(old.map(parse_restrictions))
}

/// The restrictions of a channel's `account_restrictions` column, as Meta gave them (none when
/// the column is empty or not their shape).
fn parse_restrictions(column: Option<serde_json::Value>) -> Vec<Restriction> {
    column
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// The restrictions' types (Meta's codes), for logs and messages.
pub fn restriction_types(restrictions: &[Restriction]) -> Vec<&str> {
    restrictions
        .iter()
        .map(|r| r.restriction_type.as_str())
        .collect()
}

/// The audit line of a [`clear_restrictions`]: the channel, who (`by`: the API token's name, or
/// `wafleetctl` and the operator's login) and the restriction types cleared; Meta's codes and our
/// ids only.
pub fn restrictions_cleared(phone_number_id: &str, cleared: &[Restriction], by: &str) {
    let types = restriction_types(cleared);
    tracing::warn!(
        channel = phone_number_id,
        by,
        restrictions = ?types,
        "an operator cleared the account restrictions recorded for the channel (Meta's next \
         account_update records them again if they still hold)"
    );
}

const STATE_COLUMNS: &str = "phone_number_id, quality_event, messaging_limit, quality_at,
    account_event, account_ban_state, account_restrictions, account_violation, account_at";

/// Every channel's state, by phone_number_id.
pub async fn states(pg: &PgPool) -> sqlx::Result<Vec<AccountState>> {
    sqlx::query_as(&format!(
        "SELECT {STATE_COLUMNS} FROM channels ORDER BY phone_number_id"
    ))
    .fetch_all(pg)
    .await
}

/// One channel's state; `None` when no channel has the number.
pub async fn state_of(pg: &PgPool, phone_number_id: &str) -> sqlx::Result<Option<AccountState>> {
    sqlx::query_as(&format!(
        "SELECT {STATE_COLUMNS} FROM channels WHERE phone_number_id = $1"
    ))
    .bind(phone_number_id)
    .fetch_optional(pg)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restrictions_in_force_are_those_not_expired_yet() {
        let state = AccountState {
            account_restrictions: Some(serde_json::json!([
                {"type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": "2026-04-19T13:59:20+0000"},
                {"type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION"},
                {"type": "RESTRICTED_CUSTOMER_INITIATED_MESSAGING", "expiration": "soon"},
            ])),
            ..Default::default()
        };
        let before: DateTime<Utc> = "2026-04-19T13:59:19Z".parse().unwrap();
        let after: DateTime<Utc> = "2026-04-19T13:59:21Z".parse().unwrap();
        assert_eq!(state.restrictions_in_force(before).len(), 3);
        let left: Vec<String> = state
            .restrictions_in_force(after)
            .into_iter()
            .map(|r| r.restriction_type)
            .collect();
        assert_eq!(
            left,
            [
                "RESTRICTED_ADD_PHONE_NUMBER_ACTION",
                "RESTRICTED_CUSTOMER_INITIATED_MESSAGING"
            ]
        );
        assert!(
            AccountState::default()
                .restrictions_in_force(after)
                .is_empty()
        );
    }

    #[test]
    fn channel_show_says_what_meta_said_and_what_it_means() {
        let now: DateTime<Utc> = "2026-04-01T00:00:00Z".parse().unwrap();
        let lines = |s: &AccountState| s.describe(now).map(|(n, v)| format!("{n}: {v}"));
        assert_eq!(
            lines(&AccountState::default()),
            [
                "meta_quality: (nothing from Meta)",
                "meta_account: (nothing from Meta)"
            ]
        );
        let state = AccountState {
            quality_event: Some("FLAGGED".into()),
            messaging_limit: Some("TIER_1K".into()),
            quality_at: Some(now),
            account_event: Some("DISABLED_UPDATE".into()),
            account_ban_state: Some("DISABLE".into()),
            account_restrictions: Some(serde_json::json!([
                {"type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": "2026-04-19T13:59:20+0000"},
                {"type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION", "expiration": "2026-03-01T00:00:00+0000"},
            ])),
            ..Default::default()
        };
        assert_eq!(
            lines(&state),
            [
                "meta_quality: FLAGGED, messaging limit TIER_1K, at 2026-04-01T00:00:00Z (FLAGGED)",
                "meta_account: DISABLED_UPDATE, ban state DISABLE, restricted: \
                 RESTRICTED_BIZ_INITIATED_MESSAGING until 2026-04-19T13:59:20+0000 (DISABLED)"
            ]
        );
        let json = state.to_json(now);
        assert_eq!(json["flagged"], true);
        assert_eq!(json["account_restricted"], true);
        assert_eq!(json["account_disabled"], true);
        assert_eq!(json["account_restrictions"].as_array().unwrap().len(), 2);
    }
}
