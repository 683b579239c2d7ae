//! The stages that run on the worker runtime, and the worker process that hosts them.
//!
//! - [`conversation`]: inbound messages → redacted, stored, on a known conversation; handover;
//!   reply jobs for the LLM stage.
//! - [`status`]: delivery statuses → outbound delivery state, forward only.
//! - [`account`]: Meta's changes of numbers, accounts and templates on the events stream →
//!   recorded on the channels, metrics, alerts and dashboard events.

pub mod account;
pub mod channel_settings;
pub mod conversation;
pub mod llm;
pub mod process;
pub mod sender;
pub mod status;
pub mod wording;

use crate::streams::Keys;

/// Classifies a database error: a lost connection is worth waiting for, a broken statement or a
/// constraint we did not expect is not.
pub fn db_outcome(e: &sqlx::Error, doing: &str) -> crate::worker::Outcome {
    use crate::worker::Outcome;
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08: connection exception, 40: transaction rollback (serialization, deadlock),
            // 53: insufficient resources, 57: operator intervention (shutdown), 58: system error.
            if ["08", "40", "53", "57", "58"]
                .iter()
                .any(|c| code.starts_with(c))
            {
                Outcome::Unavailable {
                    reason: format!("{doing}: database unavailable ({code})"),
                }
            } else {
                Outcome::Dead {
                    reason: format!("{doing}: database refused ({code}): {}", db.message()),
                }
            }
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::TypeNotFound { .. } => Outcome::Dead {
            reason: format!("{doing}: {e}"),
        },
        _ => Outcome::Unavailable {
            reason: format!("{doing}: {e}"),
        },
    }
}

/// A Redis step failed: wait for Redis and run the job again.
pub fn redis_down(e: impl std::fmt::Display) -> crate::worker::Outcome {
    crate::worker::Outcome::Unavailable {
        reason: format!("redis: {e}"),
    }
}

/// [`db_outcome`] for a statement run through a [`crate::batch::Batcher`].
pub fn batch_outcome(e: &crate::batch::BatchError, doing: &str) -> crate::worker::Outcome {
    match e {
        crate::batch::BatchError::Db(e) => db_outcome(e, doing),
        crate::batch::BatchError::Stopped => crate::worker::Outcome::Unavailable {
            reason: format!("{doing}: {e}"),
        },
    }
}

/// A change of who answers a conversation, as dashboards receive it ([`publish_handover`]); or
/// a customer's message in a conversation a human answers, or on a number whose bot is off or in
/// shadow (`message`), which their agents must see. Carries ids, never text or phone numbers of customers.
pub struct OwnerChange<'a> {
    /// `handover` (to a human), `release` (back to the bot) or `message`.
    pub kind: &'static str,
    /// What decided it: `keyword`, `model`, `window_closed`, `re_engagement`, `agent`, `idle`
    /// (`customer` for a message)…
    pub reason: &'a str,
    pub conversation_id: i64,
    /// The customer's message that caused it, if one did.
    pub message_id: Option<i64>,
    /// The business number.
    pub phone_number_id: Option<&'a str>,
}

/// How many events the dashboard stream keeps (about: trimmed with `MAXLEN ~`).
const HANDOVER_STREAM_LEN: usize = 100_000;

/// The JSON event of an owner change made at `at`: the fields of [`OwnerChange`] and `at`.
fn owner_change_event(change: &OwnerChange<'_>, at: chrono::DateTime<chrono::Utc>) -> String {
    serde_json::json!({
        "kind": change.kind, "reason": change.reason, "conversation_id": change.conversation_id,
        "message_id": change.message_id, "phone_number_id": change.phone_number_id,
        "at": at.to_rfc3339(),
    })
    .to_string()
}

/// Publishes an owner change on the dashboard stream and channel, as one JSON event (the fields
/// of [`OwnerChange`] and `at`, now).
pub async fn publish_handover(
    con: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    change: &OwnerChange<'_>,
) -> redis::RedisResult<()> {
    let json = owner_change_event(change, chrono::Utc::now());
    redis::pipe()
        .cmd("XADD")
        .arg(keys.handover_stream())
        .arg("MAXLEN")
        .arg("~")
        .arg(HANDOVER_STREAM_LEN)
        .arg("*")
        .arg("event")
        .arg(&json)
        .ignore()
        .cmd("PUBLISH")
        .arg(keys.handover_channel())
        .arg(&json)
        .ignore()
        .query_async(con)
        .await
}

/// How long the mark of an event published once ([`publish_handover_once`]) stays: it only has to
/// outlive the gap between Redis taking the event and Postgres recording that it did, which a
/// Postgres outage stretches; a week outlasts any the caller keeps retrying through.
const PUBLISHED_ONCE_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// Takes the event's mark (`KEYS[1]`) and appends the event to the dashboard stream (`KEYS[2]`,
/// the same slot) and publishes it, in one script; an event whose mark is taken is not appended
/// again. A refused append gives the mark back, so the next try appends it.
const PUBLISH_ONCE_SCRIPT: &str = r"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[3])
if type(added) == 'table' and added.err then
  redis.call('DEL', KEYS[1])
  return redis.error_reply(added.err)
end
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
";

/// [`publish_handover`] for an owner change Postgres records as announced or not (an idle
/// release): the event, made `at`, is appended once however often this is called with the same
/// `once` (the change's own name, such as its `handover_events` id), so a caller that announced it
/// but could not record that in Postgres announces it again without doubling it. Answers whether
/// it was appended now.
pub async fn publish_handover_once(
    con: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    change: &OwnerChange<'_>,
    at: chrono::DateTime<chrono::Utc>,
    once: &str,
) -> redis::RedisResult<bool> {
    publish_event_once(con, keys, &owner_change_event(change, at), once).await
}

/// Appends the JSON `event` to the dashboard stream and publishes it, once however often this is
/// called with the same `once` ([`PUBLISH_ONCE_SCRIPT`]). Answers whether it was appended now.
pub(crate) async fn publish_event_once(
    con: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    event: &str,
    once: &str,
) -> redis::RedisResult<bool> {
    let stream = keys.handover_stream();
    let appended: i64 = redis::Script::new(PUBLISH_ONCE_SCRIPT)
        .key(keys.seen_beside(&stream, &format!("announced:{once}")))
        .key(&stream)
        .arg(PUBLISHED_ONCE_TTL.as_secs())
        .arg(HANDOVER_STREAM_LEN)
        .arg(event)
        .arg(keys.handover_channel())
        .invoke_async(con)
        .await?;
    Ok(appended == 1)
}

/// Puts the `merged` events of `merges` on the dashboard stream (`kind` `merged`,
/// `conversation_id` the surviving conversation, `merged_id` the deleted one, `phone_number_id`,
/// `at` when it was merged: ids only, never the customer's numbers), each once however often
/// this is called (keyed on the deleted conversation), and records in Postgres those Redis took.
/// Answers how many went; stops at the first Redis refuses, for a later call to finish.
pub async fn announce_merges(
    pg: &sqlx::PgPool,
    con: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    merges: &[crate::store::conversations::Merge],
) -> Result<usize, AnnounceError> {
    let events = merges.iter().map(|m| {
        let event = serde_json::json!({
            "kind": "merged", "reason": "number_change", "conversation_id": m.into_id,
            "merged_id": m.merged_id, "phone_number_id": m.phone_number_id,
            "at": m.at.to_rfc3339(),
        });
        (m.merged_id, event, format!("merge:{}", m.merged_id))
    });
    announce_each(
        pg,
        con,
        keys,
        events,
        crate::store::conversations::merges_announced,
    )
    .await
}

/// Puts the `number_moved` events of `moves` on the dashboard stream (`kind` `number_moved`,
/// reason `number_change`, `conversation_id` the former holder's conversation set aside,
/// `phone_number_id`, `at`: ids only), each once however often this is called, and records in
/// Postgres those Redis took; as [`announce_merges`].
pub async fn announce_number_moves(
    pg: &sqlx::PgPool,
    con: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    moves: &[crate::store::conversations::NumberMove],
) -> Result<usize, AnnounceError> {
    let events = moves.iter().map(|m| {
        let event = serde_json::json!({
            "kind": "number_moved", "reason": "number_change",
            "conversation_id": m.conversation_id, "phone_number_id": m.phone_number_id,
            "at": m.at.to_rfc3339(),
        });
        let once = format!("number_moved:{}", m.conversation_id);
        (m.conversation_id, event, once)
    });
    announce_each(
        pg,
        con,
        keys,
        events,
        crate::store::conversations::number_moves_announced,
    )
    .await
}

/// Publishes each `(id, event, once)` once ([`publish_event_once`]) until Redis refuses one,
/// records the ids of those that went with `record`, and answers how many went (or the refusal).
async fn announce_each(
    pg: &sqlx::PgPool,
    con: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    events: impl Iterator<Item = (i64, serde_json::Value, String)>,
    record: impl AsyncFn(&sqlx::PgPool, &[i64]) -> sqlx::Result<()>,
) -> Result<usize, AnnounceError> {
    let mut done = Vec::new();
    let mut refused = None;
    for (id, event, once) in events {
        if let Err(e) = publish_event_once(con, keys, &event.to_string(), &once).await {
            refused = Some(e);
            break;
        }
        done.push(id);
    }
    if !done.is_empty() {
        record(pg, &done).await?;
    }
    refused.map_or(Ok(done.len()), |e| Err(e.into()))
}

/// Publishes a `message_failed` event on the dashboard stream for each failed agent's part
/// (kind `agent` or `template`) among `ids` and the part Meta knows as `wamid` whose failure is
/// unannounced, and records in Postgres those Redis took (`outbound_messages.failure_announced`):
/// the sender calls it when a job ends, the status stage after a `failed` status that leaves the
/// part failed. A run that stops between Redis and Postgres is made whole by the next (a job or
/// status redelivered, or the workers' sweep, [`announce_late_agent_parts`]), which the event's
/// mark keeps from doubling it. The event carries ids, Meta's `code` and our reading of it
/// ([`crate::store::agents::failure_reason`]), never Meta's words (they can quote a token), the
/// text, nor the customer's number. A part dashboards were told failed `unanswered` that a late
/// `failed` status then fails with Meta's code is announced again, once, its event's `refines`
/// naming the reason it refines (`outbound_messages.failure_refines`, set with the status).
/// Answers how many went.
pub async fn announce_failures(
    pg: &sqlx::PgPool,
    redis: &crate::shared_redis::SharedRedis,
    keys: &Keys,
    ids: &[i64],
    wamid: Option<&str>,
) -> Result<usize, crate::worker::Outcome> {
    let failures = crate::store::agents::unannounced_failures(pg, ids, wamid)
        .await
        .map_err(|e| db_outcome(&e, "reading agents' failed parts"))?;
    if failures.is_empty() {
        return Ok(0);
    }
    let mut con = redis.get().await.map_err(redis_down)?;
    publish_failures(pg, &mut con, keys, &failures)
        .await
        .map_err(|e| announce_outcome(e, "recording failures announced"))
}

/// Publishes a `message_recovered` event for each agent's part among `ids` and the part Meta
/// knows as `wamid` that dashboards last heard of as failed and that Meta took after all, and
/// records in Postgres those Redis took (`outbound_messages.failure_shown`, migration 0036): the
/// status stage calls it when a status shows Meta accepted a send the sender gave up on as
/// unanswered, the sender when a job ends (a replay sent the part again). Without it the agent's
/// console kept the part failed, and an agent who sent it again gave the customer a copy. Once
/// per recovery, as [`announce_failures`]. Answers how many went.
pub async fn announce_recoveries(
    pg: &sqlx::PgPool,
    redis: &crate::shared_redis::SharedRedis,
    keys: &Keys,
    ids: &[i64],
    wamid: Option<&str>,
) -> Result<usize, crate::worker::Outcome> {
    let recoveries = crate::store::agents::unannounced_recoveries(pg, ids, wamid)
        .await
        .map_err(|e| db_outcome(&e, "reading agents' recovered parts"))?;
    if recoveries.is_empty() {
        return Ok(0);
    }
    let mut con = redis.get().await.map_err(redis_down)?;
    publish_recoveries(pg, &mut con, keys, &recoveries)
        .await
        .map_err(|e| announce_outcome(e, "recording recoveries announced"))
}

/// Counts and logs that Meta took two sends of part `outbound_id` (an ambiguous send and its
/// resend): the customer has two copies. The sender finds it when the resend's acceptance comes
/// after the first send was made the part's, the status stage when the first's status comes
/// after the resend's acceptance.
pub fn second_copy(outbound_id: Option<i64>) {
    metrics::counter!("wafleet_sender_duplicates_total").increment(1);
    tracing::warn!(
        outbound_id,
        "Meta took two sends of one part (an ambiguous send and its resend): the customer has \
         two copies"
    );
}

/// The worker outcome of an announcement that did not finish.
fn announce_outcome(e: AnnounceError, doing: &str) -> crate::worker::Outcome {
    match e {
        AnnounceError::Db(e) => db_outcome(&e, doing),
        AnnounceError::Redis(e) => redis_down(e),
    }
}

/// The `message_failed` events of `failures`, published and recorded ([`announce_each`]).
async fn publish_failures(
    pg: &sqlx::PgPool,
    con: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    failures: &[crate::store::agents::Failure],
) -> Result<usize, AnnounceError> {
    let events = failures.iter().map(|f| {
        let reason = crate::store::agents::failure_reason(f.error_code, f.fail_reason.as_deref());
        tracing::info!(
            outbound_id = f.outbound_id,
            code = f.error_code,
            reason,
            "an agent's message failed; dashboards are told"
        );
        let mut event = serde_json::json!({
            "kind": "message_failed", "reason": reason, "conversation_id": f.conversation_id,
            "outbound_id": f.outbound_id, "part_no": f.part_no, "message_kind": f.kind,
            "reference": f.reference, "code": f.error_code,
            "phone_number_id": f.phone_number_id, "at": f.failed_at.to_rfc3339(),
        });
        // Which template and what it carried, without the values (they can be the customer's
        // data, and an event outlives an erasure): `[template: order_invoice] [document]
        // [2 parameters] [button 0]`.
        if let Some(object) = f
            .template
            .as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        {
            event["template"] = wafleet_core::format::template::outline(&object).into();
        }
        // Meta's code for a part dashboards were told failed `unanswered`: the same failure,
        // now with its code (its mark differs by the delivery rank a `failed` status sets).
        if let Some(refines) = &f.refines {
            event["refines"] = refines.as_str().into();
        }
        let once = format!(
            "message_failed:{}:{}:{}:{}",
            f.outbound_id,
            f.send_no,
            f.retries_since.timestamp_micros(),
            f.delivery_rank
        );
        (f.outbound_id, event, once)
    });
    announce_each(
        pg,
        con,
        keys,
        events,
        crate::store::agents::failures_announced,
    )
    .await
}

/// The `message_recovered` events of `recoveries`, published and recorded ([`announce_each`]):
/// reason `late_status` (a status showed Meta took the send given up on; nothing was sent again)
/// or `resent` (sent again and accepted), with the part's `delivery` when a status told it.
async fn publish_recoveries(
    pg: &sqlx::PgPool,
    con: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    recoveries: &[crate::store::agents::Recovery],
) -> Result<usize, AnnounceError> {
    let events = recoveries.iter().map(|r| {
        let reason = if r.resent { "resent" } else { "late_status" };
        tracing::info!(
            outbound_id = r.outbound_id,
            reason,
            "an agent's message announced failed went out after all; dashboards are told"
        );
        let event = serde_json::json!({
            "kind": "message_recovered", "reason": reason, "conversation_id": r.conversation_id,
            "outbound_id": r.outbound_id, "part_no": r.part_no, "message_kind": r.kind,
            "reference": r.reference, "delivery": r.delivery,
            "phone_number_id": r.phone_number_id, "at": r.accepted_at.to_rfc3339(),
        });
        let once = format!(
            "message_recovered:{}:{}:{}",
            r.outbound_id,
            r.send_no,
            r.retries_since.timestamp_micros()
        );
        (r.outbound_id, event, once)
    });
    announce_each(
        pg,
        con,
        keys,
        events,
        crate::store::agents::recoveries_announced,
    )
    .await
}

/// How long an agent's part stays unchanged before the sweep announces what its stage did not
/// ([`announce_late_agent_parts`]): the stage announces within moments, and a minute keeps the
/// sweep from doing it alongside (harmless, the event's mark keeps it once, but wasted).
pub const LATE_PART_QUIET: std::time::Duration = std::time::Duration::from_secs(60);

/// Announces the failures and recoveries of agents' parts that no event announced yet (Redis
/// refused it and the stage's run ended without it: stopped, dead-lettered), unchanged for
/// `quiet`, up to `batch` a query, until none is left or Redis refuses one. A part a `failed`
/// status failed and the sender is still to send again (its code and bounds say so, as
/// `policy` judges for the status stage) is left to the sender, which announces it if that send
/// fails for good. Every worker runs it ([`crate::agents::release_idle_loop`]); an event is
/// published once however many sweep at once (its mark). Answers how many it announced.
pub async fn announce_late_agent_parts(
    pg: &sqlx::PgPool,
    con: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    policy: &sender::SendPolicy,
    quiet: std::time::Duration,
    batch: i64,
) -> Result<usize, AnnounceError> {
    use crate::store::agents as store;
    let (mut failed, mut recovered) = (0, 0);
    let mut after = 0;
    loop {
        let late = store::late_failures(pg, quiet, after, batch).await?;
        let Some(last) = late.last() else { break };
        after = last.outbound_id;
        let full = late.len() as i64 == batch;
        let due: Vec<_> = late
            .into_iter()
            .filter(|f| !resend_to_come(f, policy))
            .collect();
        failed += publish_failures(pg, con, keys, &due).await?;
        if !full {
            break;
        }
    }
    after = 0;
    loop {
        let late = store::late_recoveries(pg, quiet, after, batch).await?;
        let Some(last) = late.last() else { break };
        after = last.outbound_id;
        recovered += publish_recoveries(pg, con, keys, &late).await?;
        if (late.len() as i64) < batch {
            break;
        }
    }
    for (kind, n) in [("message_failed", failed), ("message_recovered", recovered)] {
        if n > 0 {
            metrics::counter!("wafleet_late_part_events_total", "kind" => kind).increment(n as u64);
            tracing::warn!(
                kind,
                n,
                "agents' parts announced by the sweep: their stage's event did not go out"
            );
        }
    }
    Ok(failed + recovered)
}

/// Whether the sender is still to send a part again that a `failed` status failed: judged as the
/// status stage did when it queued the resend (its code's class, attempts and age).
fn resend_to_come(f: &crate::store::agents::Failure, policy: &sender::SendPolicy) -> bool {
    let Some(code) = f.error_code.map(i64::from) else {
        return false;
    };
    crate::store::conversations::delivery_rank("failed") == Some(f.delivery_rank)
        && policy.resends(
            wafleet_core::graph_error::classify_status_error(code),
            Some(code),
            f.attempts.max(1) as u32 - 1,
            f.retries_since,
        )
}

/// Announces what number changes left unannounced (Redis refused their events, or the stage
/// stopped first): merges, then former holders' conversations set aside, up to `batch` a call
/// each, until none is left or Redis refuses one. The workers' sweep calls it.
pub async fn announce_late_number_changes(
    pg: &sqlx::PgPool,
    con: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    batch: i64,
) -> Result<(), AnnounceError> {
    use crate::store::conversations as store;
    loop {
        let late = store::unannounced_merges(pg, None, batch).await?;
        if announce_merges(pg, con, keys, &late).await? < batch as usize {
            break;
        }
    }
    loop {
        let late = store::unannounced_number_moves(pg, None, batch).await?;
        if announce_number_moves(pg, con, keys, &late).await? < batch as usize {
            return Ok(());
        }
    }
}

/// Why [`announce_merges`] or [`announce_number_moves`] did not finish.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Hands a conversation to a human (unless one has it already), stores the event and publishes it
/// for dashboards. Shared by every stage that can decide a handover; returns whether it changed.
/// With `message_id`, idempotent per message: a stage that runs again after a crash or an error
/// calls it again, and a handover already made for that message is not made twice (nor redone
/// after a human released the conversation), only published again.
pub async fn hand_over_and_publish(
    pg: &sqlx::PgPool,
    redis: &crate::shared_redis::SharedRedis,
    keys: &Keys,
    conversation_id: i64,
    reason: &str,
    message_id: Option<i64>,
    phone_number_id: Option<&str>,
) -> Result<bool, crate::worker::Outcome> {
    let mut tx = pg
        .begin()
        .await
        .map_err(|e| db_outcome(&e, "starting a transaction"))?;
    let done_before = match message_id {
        Some(m) => crate::store::conversations::handed_over_for(&mut tx, conversation_id, m)
            .await
            .map_err(|e| db_outcome(&e, "reading the handovers"))?,
        None => false,
    };
    let changed = !done_before
        && crate::store::conversations::hand_over(
            &mut tx,
            conversation_id,
            reason,
            None,
            message_id,
        )
        .await
        .map_err(|e| db_outcome(&e, "handing over"))?;
    // The message's conversation now: a number change may have merged the one the stage read
    // into another, and dashboards must hear of the conversation that exists.
    let conversation_id =
        crate::store::conversations::current_conversation(&mut tx, conversation_id, message_id)
            .await
            .map_err(|e| db_outcome(&e, "reading the message's conversation"))?;
    tx.commit()
        .await
        .map_err(|e| db_outcome(&e, "committing the handover"))?;
    if changed {
        metrics::counter!("wafleet_handovers_total", "reason" => reason.to_string()).increment(1);
        tracing::info!(conversation_id, reason, "conversation handed to a human");
    }
    // Published again when this message's handover was done before: the run that did it may have
    // failed to publish (events are at least once; consumers key them on conversation and
    // message).
    if changed || done_before {
        let change = OwnerChange {
            kind: "handover",
            reason,
            conversation_id,
            message_id,
            phone_number_id,
        };
        let mut con = redis.get().await.map_err(redis_down)?;
        publish_handover(&mut con, keys, &change)
            .await
            .map_err(|e| crate::worker::Outcome::Unavailable {
                reason: format!("publishing the handover: {e}"),
            })?;
    }
    Ok(changed)
}

/// Marks a customer's message (and the earlier ones of the thread) read, with `typing` also
/// showing the typing indicator, on a task of its own that the job does not wait for: Meta may
/// take up to the Graph timeout to answer, and nothing the customer waits for (the model's
/// answer, a handover's acknowledgement) is held back meanwhile. Only where the bot is on: in
/// shadow mode people run the conversation and the bot shows nothing. Best effort: a failure is
/// counted and logged, nothing else; at most `WAFLEET_MARK_READ_MAX_IN_FLIGHT` are on the wire
/// at once, and one that waits 2 s for its place is dropped
/// ([`crate::graph::GraphClient::mark_read_in_background`]). The LLM stage's path while the model works, and a handover
/// keyword's, which skips the model.
pub fn mark_read(
    graph: &crate::graph::GraphClient,
    channel: &channel_settings::ChannelSettings,
    wamid: &str,
    typing: bool,
) {
    let bot_on = channel.enabled && channel.bot_mode == crate::store::channels::BotMode::On;
    let Some(token) = channel.access_token.clone().filter(|_| bot_on) else {
        return;
    };
    graph.mark_read_in_background(
        channel.phone_number_id.clone(),
        token,
        wamid.to_string(),
        typing,
    );
}

/// The update an ingest entry carries; an entry without one, or one that does not decode, can
/// never succeed and is dead-lettered.
pub fn decode_update(
    job: &crate::worker::Job,
) -> Result<wafleet_core::envelope::Update, crate::worker::Outcome> {
    use crate::worker::Outcome;
    match job.field("update").map(serde_json::from_str) {
        Some(Ok(u)) => Ok(u),
        Some(Err(e)) => Err(Outcome::Dead {
            reason: format!(
                "update does not decode: {}",
                wafleet_core::json_error_without_input(&e)
            ),
        }),
        None => Err(Outcome::Dead {
            reason: "entry has no update field".into(),
        }),
    }
}

/// The business number of a job, from its conversation key (`phone_number_id:customer`).
pub fn phone_number_id_of(job: &crate::worker::Job) -> &str {
    job.conv
        .split_once(':')
        .map_or(job.conv.as_str(), |(p, _)| p)
}
