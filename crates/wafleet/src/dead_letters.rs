//! Reading and replaying a stage's dead letters (`wafleetctl dead list|replay`).
//!
//! A dead letter is the job as it was, plus the fields the runtime added when it gave up on it
//! ([`RUNTIME_FIELDS`]). A replay puts the job back on the stream it came from and removes the
//! dead letter. Replaying a send job also reopens its failed parts first (see
//! [`crate::store::replies::reopen_for_replay`]): the sender skips failed parts, so without that
//! a replay of a reply that ran out of retries would send nothing.

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

/// How long a replay's mark stays: as long as dead letters are kept by default, so a replay run
/// again after an interruption finds it.
const REPLAYED_MARK_TTL: std::time::Duration = crate::worker::retention::DEFAULT_RETENTION;

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
/// that finds the mark only removes the dead letter.
pub async fn replay<C: ConnectionLike>(
    con: &mut C,
    pg: &PgPool,
    keys: &Keys,
    stage: &str,
    letter: &DeadLetter,
    resend_unanswered: bool,
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
        let _: i64 = redis::Script::new(ENQUEUE_SCRIPT)
            .key(&mark)
            .key(&source)
            .arg(REPLAYED_MARK_TTL.as_secs())
            .arg(letter.fields_except(&RUNTIME_FIELDS))
            .invoke_async(con)
            .await?;
    }
    let _: i64 = redis::cmd("XDEL")
        .arg(keys.dead(stage))
        .arg(letter.id())
        .query_async(con)
        .await?;
    Ok(parts)
}
