//! Reading and replaying what ingest kept aside (`wafleetctl quarantine list|replay`).
//!
//! Ingest answers Meta 200 for an update it will not process (an unknown or disabled number, a
//! sender outside the allowlist, a signature by another app) and keeps it on
//! `P:{quarantine}:stream`, since Meta would never send it again. Once the operator fixes the
//! cause (adds or enables the channel, widens the allowlist), a replay puts each entry through
//! the same checks ingest makes, against the channels as they are now, and enqueues what passes
//! exactly as ingest would have: same stream, same fields, same dedup mark, so an update Meta
//! delivered again after the fix is not processed twice. A replayed or duplicate entry leaves
//! the quarantine; one still refused stays. Updates signed by another app are replayed only once
//! the number lists that app's secret (an operator who rotated the secret on one number of an
//! app and not yet on the others): another tenant's app could have written them. That check is
//! made again on replay against the app that signed the POST (kept as a fingerprint), whatever
//! the first reason was: an update another app wrote for a number nobody had added yet is
//! refused once the number is added too.

use redis::aio::ConnectionLike;
use wafleet_core::envelope::Update;

use crate::channels::{Registry, SIGNER_UNKNOWN};
use crate::streams::{Append, Appended, Enqueuer, Keys, StoredEntry, read_whole};

/// One quarantined update: its entry id and fields.
pub type Kept = StoredEntry;

/// Every quarantined update, oldest first.
pub async fn read<C: ConnectionLike>(con: &mut C, keys: &Keys) -> redis::RedisResult<Vec<Kept>> {
    read_whole(con, &keys.quarantine()).await
}

/// How many of the most recent quarantined updates `wafleetctl channel add` and `enable` look
/// through for the number's (reading a quarantine of 100k entries whole took a second).
pub const HINT_SCAN: usize = 1_000;

/// What the most recent entries of the quarantine hold for one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recent {
    /// Entries for the number among those looked at.
    pub matching: usize,
    /// Entries looked at (the most recent ones).
    pub looked_at: usize,
    /// Entries in the quarantine.
    pub total: u64,
}

impl Recent {
    /// Whether older entries were left unread.
    pub fn bounded(&self) -> bool {
        (self.looked_at as u64) < self.total
    }
}

/// Counts the number's updates among the `limit` most recent entries of the quarantine.
pub async fn recent_for<C: ConnectionLike>(
    con: &mut C,
    keys: &Keys,
    phone_number_id: &str,
    limit: usize,
) -> redis::RedisResult<Recent> {
    let key = keys.quarantine();
    let (total, page): (u64, redis::streams::StreamRangeReply) = redis::pipe()
        .cmd("XLEN")
        .arg(&key)
        .cmd("XREVRANGE")
        .arg(&key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(limit)
        .query_async(con)
        .await?;
    let matching = page
        .ids
        .iter()
        .filter(|e| e.get::<String>("channel").as_deref() == Some(phone_number_id))
        .count();
    Ok(Recent {
        matching,
        looked_at: page.ids.len(),
        total,
    })
}

/// What a replay did with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// Enqueued for processing; removed from the quarantine.
    Enqueued,
    /// Already enqueued (Meta delivered it again after the fix); removed from the quarantine.
    Duplicate,
    /// Still refused, for this reason; left in the quarantine.
    Refused(&'static str),
    /// The entry holds no readable update; left in the quarantine.
    Unreadable(String),
}

/// Replays one entry against `registry` (the channels as they are now).
pub async fn replay<C: ConnectionLike>(
    con: &mut C,
    keys: &Keys,
    enqueuer: &Enqueuer,
    registry: &Registry,
    kept: &Kept,
) -> redis::RedisResult<Replayed> {
    let update: Update = match serde_json::from_str(&kept.text("update")) {
        Ok(u) => u,
        // Never serde's own message: it quotes the payload.
        Err(e) => {
            return Ok(Replayed::Unreadable(
                wafleet_core::json_error_without_input(&e),
            ));
        }
    };
    let Some(signer) = registry.signer_by_fingerprint(&kept.text("signer")) else {
        return Ok(Replayed::Refused(SIGNER_UNKNOWN));
    };
    if let Some(reason) = registry.refusal(&update, signer) {
        return Ok(Replayed::Refused(reason));
    }
    let received_at = kept.text("received_at").parse().unwrap_or_default();
    let append = Append::update(keys, &update, received_at);
    let appended = enqueuer.append_all(con, &[append]).await?;
    // Enqueued (or found enqueued) first, removed second: a crash in between leaves the entry,
    // and replaying it again meets its dedup mark.
    let _: i64 = redis::cmd("XDEL")
        .arg(keys.quarantine())
        .arg(kept.id())
        .query_async(con)
        .await?;
    Ok(match appended.first() {
        Some(Appended::Added) => Replayed::Enqueued,
        _ => Replayed::Duplicate,
    })
}
