//! Reading and replaying a stage's dead letters (`wafleetctl dead list|replay`).
//!
//! A dead letter is the job as it was, plus the fields the runtime added when it gave up on it
//! ([`RUNTIME_FIELDS`]). A replay puts the job back on the stream it came from and removes the
//! dead letter. Replaying a send job also reopens its failed parts first (see
//! [`crate::store::replies::reopen_for_replay`]): the sender skips failed parts, so without that
//! a replay of a reply that ran out of retries would send nothing.

use std::time::Duration;

use redis::aio::ConnectionLike;
use sqlx::PgPool;

use crate::stages::sender;
use crate::store::replies;
use crate::streams::{ENQUEUE_SCRIPT, Keys, StoredEntry, read_whole};

/// Fields the runtime adds to a dead letter ([`GaveUp::fields`], in this order); a replay strips
/// them.
pub const RUNTIME_FIELDS: [&str; 7] = [
    "reason",
    "stage",
    "source_stream",
    "source_id",
    "deliveries",
    "attempts",
    "dead_at",
];

/// How long a replay's mark outlives what it guards: past the dead letter's trim (the trimmer runs
/// once a minute, and the dead letter's id is Redis's clock, not ours), and, once the replay
/// removed the dead letter, against a replay that read it before (two operators at once).
const REPLAYED_MARK_MARGIN: Duration = Duration::from_secs(86_400);

/// How long a replay's mark must last when it is taken: as long as the dead letter may still be
/// there to replay again (a replay interrupted between its add and its delete leaves it), that is
/// until the retention trims it (`WAFLEET_RETENTION_DAYS`, counted from the dead letter's id),
/// plus [`REPLAYED_MARK_MARGIN`]; `None` (no expiry) when dead letters are kept until deleted by
/// hand. A fixed 14 days let a replay run again after them, of a dead letter a longer retention
/// still kept, put its job back a second time.
fn replayed_mark_ttl(
    dead_letter_id: &str,
    retention: Option<Duration>,
    now_ms: i64,
) -> Option<Duration> {
    let retention = retention?;
    let written_ms = dead_letter_id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<i64>().ok())
        .unwrap_or(now_ms);
    let trimmed_ms = written_ms.saturating_add(retention.as_millis() as i64);
    let left = Duration::from_millis(trimmed_ms.saturating_sub(now_ms).max(0) as u64);
    Some(left + REPLAYED_MARK_MARGIN)
}

/// The mark that a dead letter's job was put back on `source`: beside the stream (same hash tag),
/// named by the stage and the dead letter's id.
fn replayed_mark(keys: &Keys, source: &str, stage: &str, dead_letter: &str) -> String {
    keys.seen_beside(source, &format!("replayed:{stage}:{dead_letter}"))
}

/// What the worker runtime records beside a job it gave up on.
pub struct GaveUp<'a> {
    pub reason: &'a str,
    /// The stage (consumer group) that gave up.
    pub stage: &'a str,
    /// Where the job was read from, and its entry id there.
    pub source_stream: &'a str,
    pub source_id: &'a str,
    pub deliveries: u64,
    pub attempts: u32,
    /// Unix milliseconds.
    pub dead_at_ms: i64,
}

impl GaveUp<'_> {
    /// The fields added to the job's own, named by [`RUNTIME_FIELDS`].
    pub fn fields(&self) -> impl Iterator<Item = (String, String)> + use<> {
        let values = [
            self.reason.to_string(),
            self.stage.to_string(),
            self.source_stream.to_string(),
            self.source_id.to_string(),
            self.deliveries.to_string(),
            self.attempts.to_string(),
            self.dead_at_ms.to_string(),
        ];
        RUNTIME_FIELDS.into_iter().map(String::from).zip(values)
    }
}

/// One dead letter: its entry id on the dead-letter stream and its fields.
pub type DeadLetter = StoredEntry;

/// Every dead letter of `stage`, oldest first.
pub async fn read<C: ConnectionLike>(
    con: &mut C,
    keys: &Keys,
    stage: &str,
) -> redis::RedisResult<Vec<DeadLetter>> {
    read_whole(con, &keys.dead(stage)).await
}

/// Puts one dead letter of `stage` back on its source stream and removes it from the dead-letter
/// stream. A send job's failed parts are reopened first; what was done to them is returned. A
/// send job with a part whose sends Meta never answered is left as it is, dead letter included,
/// unless `resend_unanswered` (see [`replies::reopen_for_replay`]): `unanswered` then says how
/// many such parts kept it.
///
/// The steps run in that order, each safe to repeat: a failure part way leaves the dead letter in
/// place, never a loss, and running the replay again finishes it. The job is queued once however
/// often the dead letter is replayed (again after an interruption, or by two operators at once):
/// it goes back together with a mark beside its source stream ([`replayed_mark`]), and a replay
/// that finds the mark only removes the dead letter. The mark lasts while the dead letter may
/// still be there under the workers' `retention` ([`replayed_mark_ttl`]); once the dead letter is
/// removed, a day.
pub async fn replay<C: ConnectionLike>(
    con: &mut C,
    pg: &PgPool,
    keys: &Keys,
    stage: &str,
    letter: &DeadLetter,
    resend_unanswered: bool,
    retention: Option<Duration>,
) -> anyhow::Result<replies::Reopened> {
    let source = letter.text("source_stream");
    anyhow::ensure!(
        !source.is_empty(),
        "dead letter {} has no source_stream",
        letter.id()
    );
    let mark = replayed_mark(keys, &source, stage, letter.id());
    let mut parts = replies::Reopened::default();
    let replayed: bool = redis::cmd("EXISTS").arg(&mark).query_async(con).await?;
    if !replayed && stage == sender::STAGE.name {
        let outbound_ids = sender::outbound_ids(&letter.text("outbound_id")).unwrap_or_default();
        let reply_to = letter.text("reply_to").parse::<i64>().ok();
        parts = replies::reopen_for_replay(pg, &outbound_ids, reply_to, resend_unanswered).await?;
        tracing::info!(
            dead_letter = letter.id(),
            reopened = parts.reopened,
            unanswered = parts.unanswered,
            "failed parts reopened for a replay"
        );
        if parts.unanswered > 0 {
            return Ok(parts);
        }
    }
    // Two steps, add first; the streams live on different Redis Cluster slots, so no
    // transaction spans them. The add takes the mark in the same script (the mark shares the
    // source stream's slot), so it happens once.
    if !replayed {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let ttl = replayed_mark_ttl(letter.id(), retention, now_ms);
        let _: i64 = redis::Script::new(ENQUEUE_SCRIPT)
            .key(&mark)
            .key(&source)
            .arg(ttl.map_or(0, |t| t.as_secs().max(1)))
            .arg(letter.fields_except(&RUNTIME_FIELDS))
            .invoke_async(con)
            .await?;
    }
    let _: i64 = redis::cmd("XDEL")
        .arg(keys.dead(stage))
        .arg(letter.id())
        .query_async(con)
        .await?;
    // The dead letter is gone: its mark only has to hold off a replay that read it before.
    let _: i64 = redis::cmd("EXPIRE")
        .arg(&mark)
        .arg(REPLAYED_MARK_MARGIN.as_secs())
        .query_async(con)
        .await?;
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replays_mark_lasts_as_long_as_its_dead_letter_may_be_kept() {
        let day = 86_400_000_i64;
        let now = 100 * day;
        let days = |n: u64| Duration::from_secs(n * 86_400);
        // Written a day ago, kept 30 days: 29 days left, and the margin.
        let id = format!("{}-0", now - day);
        assert_eq!(
            replayed_mark_ttl(&id, Some(days(30)), now),
            Some(days(29) + REPLAYED_MARK_MARGIN)
        );
        // Past its retention (the trimmer has not run yet): the margin.
        let old = format!("{}-3", now - 40 * day);
        assert_eq!(
            replayed_mark_ttl(&old, Some(days(30)), now),
            Some(REPLAYED_MARK_MARGIN)
        );
        // Kept until deleted by hand: so is the mark.
        assert_eq!(replayed_mark_ttl(&id, None, now), None);
    }
}
