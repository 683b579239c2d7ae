//! What human agents read and write: the conversations they work on, a conversation's transcript
//! (redacted, as stored), and their own messages to customers (migration 0008).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// A conversation as an agent's list shows it. Carries the customer's number: for the people who
/// answer the customer, never for logs.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ConversationSummary {
    pub id: i64,
    pub phone_number_id: String,
    pub customer_key: String,
    pub profile_name: Option<String>,
    pub owner: String,
    pub handed_over_at: Option<DateTime<Utc>>,
    pub last_customer_message_at: Option<DateTime<Utc>>,
    pub last_activity_at: DateTime<Utc>,
    /// The customer's messages since the last message written to them (by the bot or an agent),
    /// sent or on its way.
    pub waiting: i64,
}

/// The conversations most recently active first, only those a human owns when `human_only`,
/// only those of `numbers` (phone_number_ids) unless it is empty.
pub async fn conversations(
    pool: &PgPool,
    human_only: bool,
    numbers: &[String],
    limit: i64,
) -> sqlx::Result<Vec<ConversationSummary>> {
    sqlx::query_as(
        "SELECT c.id, ch.phone_number_id, c.customer_key, c.profile_name, c.owner,
                c.handed_over_at, c.last_customer_message_at, c.last_activity_at,
                (SELECT count(*) FROM messages m
                  WHERE m.conversation_id = c.id
                    AND m.received_at > COALESCE(
                        (SELECT max(o.created_at) FROM outbound_messages o
                          WHERE o.conversation_id = c.id
                            AND o.state IN ('pending', 'sending', 'accepted')), '-infinity'))
                  AS waiting
           FROM conversations c JOIN channels ch ON ch.id = c.channel_id
          WHERE (NOT $1 OR c.owner = 'human')
            AND (cardinality($3::text[]) = 0 OR ch.phone_number_id = ANY($3))
          ORDER BY c.last_activity_at DESC, c.id DESC
          LIMIT $2",
    )
    .bind(human_only)
    .bind(limit)
    .bind(numbers)
    .fetch_all(pool)
    .await
}

/// One line of a transcript.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Line {
    /// A customer's message's id (its file, if it has one, is
    /// `GET /api/v1/conversations/{id}/media/{message_id}`); `None` for the bot's and agents'.
    pub message_id: Option<i64>,
    pub at: DateTime<Utc>,
    /// `customer`, `bot` or `agent`.
    pub side: String,
    /// The agent who wrote an agent's message, if they gave a name.
    pub agent: Option<String>,
    /// A customer's message type (`text`, `image`…), or an outbound part's kind.
    pub kind: String,
    /// Redacted text; `None` for a message without text (media, contacts…). A location is its
    /// line, `[location: Tienda Centro, [ADDRESS], CDMX (19.4326, -99.1332)]` (redacted name and
    /// address, coordinates rounded to 4 decimals).
    pub text: Option<String>,
    /// An outbound part's send state (`pending`, `accepted`, `failed`, `suppressed`…) and, once
    /// Meta reported it, delivery (`delivered`, `read`…).
    pub state: Option<String>,
    pub delivery: Option<String>,
    /// An outbound part's id (what a `message_failed` event names).
    pub outbound_id: Option<i64>,
    /// An agent's message's idempotency reference (`erased:…` once its customer was erased).
    pub reference: Option<String>,
    /// Meta's error code of a failed part, when Meta gave one.
    pub error_code: Option<i32>,
    /// Why a failed part failed, as [`failure_reason`] reads it; `None` unless `failed`.
    #[sqlx(skip)]
    pub failure: Option<&'static str>,
    /// Read only for [`Self::failure`]: it can hold Meta's own words, which may quote a token.
    #[serde(skip)]
    fail_reason: Option<String>,
}

/// Our reading of why a part failed, from Meta's `code` and the reason the sender recorded
/// (`fail_reason`, never shown: for a refused send it is Meta's own words): `unanswered` (no
/// answer nor status came for its sends), `gave_up` (past its retry bounds), `earlier_part` (an
/// earlier part of the message failed), then Meta's code's class (`permanent`, `re_engagement`,
/// `transient`, `throttled`, `config`), `window_closed` (the 24-hour window had closed before
/// the send), `erased` (the customer was erased), `number_moved` (their number passed to someone
/// else), else `failed`.
pub fn failure_reason(code: Option<i32>, fail_reason: Option<&str>) -> &'static str {
    use crate::stages::sender::{CUSTOMER_ERASED, EARLIER_PART_FAILED, GAVE_UP, WINDOW_CLOSED};
    let why = fail_reason.unwrap_or_default();
    if why.starts_with(super::replies::UNANSWERED) {
        "unanswered"
    } else if why.starts_with(GAVE_UP) {
        "gave_up"
    } else if why.starts_with(EARLIER_PART_FAILED) {
        "earlier_part"
    } else if let Some(code) = code {
        wafleet_core::graph_error::classify_status_error(code.into()).label()
    } else if why.starts_with(WINDOW_CLOSED) {
        "window_closed"
    } else if why == CUSTOMER_ERASED {
        "erased"
    } else if why == super::conversations::NUMBER_MOVED {
        "number_moved"
    } else {
        "failed"
    }
}

/// An agent's part (kind `agent` or `template`) that ended `failed` and whose failure the
/// dashboards have not heard of yet ([`crate::stages::announce_failures`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Failure {
    pub outbound_id: i64,
    pub conversation_id: i64,
    pub phone_number_id: String,
    pub part_no: i32,
    /// `agent` or `template`.
    pub kind: String,
    pub reference: Option<String>,
    /// A template's part: the template object sent (the event outlines it, without its values).
    pub template: Option<String>,
    pub error_code: Option<i32>,
    /// Never shown (see [`failure_reason`]).
    pub fail_reason: Option<String>,
    /// The part's send number, where its retries' age counts from and its delivery rank (4 once
    /// a `failed` status failed it): together they name this failure, as a part reopened (a
    /// replay, a resend) and failed again fails anew, and one a late status showed accepted and a
    /// later `failed` status failed fails anew too.
    pub send_no: i32,
    pub retries_since: DateTime<Utc>,
    pub delivery_rank: i16,
    /// The sends of this round (the sweep judges with them whether a `failed` status's resend is
    /// still to come, as the status stage did).
    pub attempts: i32,
    pub failed_at: DateTime<Utc>,
    /// The reason of the failure dashboards heard of that this one refines (`unanswered`: a
    /// late `failed` status gave Meta's code for a part given up as unanswered), migration 0040.
    pub refines: Option<String>,
}

/// What [`Failure`] reads of an agent's failed part whose failure is unannounced.
const FAILURE: &str =
    "SELECT o.id AS outbound_id, o.conversation_id, ch.phone_number_id, o.part_no,
        o.kind, o.agent_ref AS reference, o.error_code, o.fail_reason,
        CASE WHEN o.kind = 'template' THEN o.body END AS template,
        o.send_offset + o.attempts AS send_no,
        COALESCE(o.retries_since, o.created_at) AS retries_since, o.delivery_rank, o.attempts,
        o.updated_at AS failed_at, o.failure_refines AS refines
   FROM outbound_messages o JOIN channels ch ON ch.id = o.channel_id
  WHERE o.state = 'failed' AND o.kind IN ('agent', 'template') AND NOT o.failure_announced";

/// The unannounced failures of agents' parts among `ids` and the part Meta knows as `wamid`.
pub async fn unannounced_failures(
    pool: &PgPool,
    ids: &[i64],
    wamid: Option<&str>,
) -> sqlx::Result<Vec<Failure>> {
    among(pool, FAILURE, ids, wamid).await
}

/// The rows `select` (a `SELECT … FROM outbound_messages o … WHERE …`) reads of the parts among
/// `ids` and the part Meta knows as `wamid`, in id order.
async fn among<T>(
    pool: &PgPool,
    select: &str,
    ids: &[i64],
    wamid: Option<&str>,
) -> sqlx::Result<Vec<T>>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(&format!(
        "{select} AND (o.id = ANY($1) OR o.wamid = $2) ORDER BY o.id"
    ))
    .bind(ids)
    .bind(wamid)
    .fetch_all(pool)
    .await
}

/// Up to `limit` of the rows `select` reads of parts with ids above `after`, in id order, whose
/// part has not changed for `quiet`: what a workers' sweep takes from the stages.
async fn late<T>(
    pool: &PgPool,
    select: &str,
    quiet: std::time::Duration,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<T>>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(&format!(
        "{select} AND o.id > $1 AND o.updated_at < now() - make_interval(secs => $2)
          ORDER BY o.id LIMIT $3"
    ))
    .bind(after)
    .bind(quiet.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Up to `limit` unannounced failures of agents' parts with ids above `after`, in id order,
/// whose part has not changed for `quiet` (the stage that failed it announces it within moments;
/// the sweep takes what it left).
pub async fn late_failures(
    pool: &PgPool,
    quiet: std::time::Duration,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<Failure>> {
    late(pool, FAILURE, quiet, after, limit).await
}

/// Records that the dashboards heard of these parts' failures (Redis took their events): the
/// failure is announced while the part stays failed, and dashboards' last word on the part is
/// that it failed even when it was reopened or accepted meanwhile (its recovery is then due,
/// [`unannounced_recoveries`]).
pub async fn failures_announced(pool: &PgPool, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbound_messages SET failure_announced = (state = 'failed'), failure_shown = TRUE
          WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(())
}

/// An agent's part dashboards last heard of as failed that Meta took after all: a late status
/// showed it accepted a send the sender gave up on as unanswered, or an operator's replay sent it
/// again ([`crate::stages::announce_recoveries`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Recovery {
    pub outbound_id: i64,
    pub conversation_id: i64,
    pub phone_number_id: String,
    pub part_no: i32,
    /// `agent` or `template`.
    pub kind: String,
    pub reference: Option<String>,
    /// Meta's delivery of it, when a status told (`sent`, `delivered`, `read`).
    pub delivery: Option<String>,
    /// Sent again (a replay reopened it, forgetting the failure's reason), rather than the send
    /// given up on found accepted (which keeps it).
    pub resent: bool,
    /// With [`Self::retries_since`], names the send that was accepted.
    pub send_no: i32,
    pub retries_since: DateTime<Utc>,
    pub accepted_at: DateTime<Utc>,
}

/// What [`Recovery`] reads of an accepted part whose failure dashboards heard of last.
const RECOVERY: &str =
    "SELECT o.id AS outbound_id, o.conversation_id, ch.phone_number_id, o.part_no,
        o.kind, o.agent_ref AS reference, o.delivery, o.fail_reason IS NULL AS resent,
        o.send_offset + o.attempts AS send_no,
        COALESCE(o.retries_since, o.created_at) AS retries_since, o.updated_at AS accepted_at
   FROM outbound_messages o JOIN channels ch ON ch.id = o.channel_id
  WHERE o.failure_shown AND o.state = 'accepted'";

/// The parts among `ids` and the part Meta knows as `wamid` that dashboards last heard of as
/// failed and that are accepted now.
pub async fn unannounced_recoveries(
    pool: &PgPool,
    ids: &[i64],
    wamid: Option<&str>,
) -> sqlx::Result<Vec<Recovery>> {
    among(pool, RECOVERY, ids, wamid).await
}

/// Up to `limit` of [`unannounced_recoveries`] of any part with an id above `after`, in id
/// order, unchanged for `quiet`.
pub async fn late_recoveries(
    pool: &PgPool,
    quiet: std::time::Duration,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<Recovery>> {
    late(pool, RECOVERY, quiet, after, limit).await
}

/// Records that the dashboards heard these parts went out after all: a later failure of one
/// (a `failed` status after the acceptance) is a new one, announced again.
pub async fn recoveries_announced(pool: &PgPool, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbound_messages SET failure_shown = FALSE, failure_announced = FALSE
          WHERE id = ANY($1) AND state = 'accepted'",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(())
}

/// The last `last` lines of a conversation, both sides, oldest first; `None` when there is no
/// such conversation.
pub async fn transcript(
    pool: &PgPool,
    conversation_id: i64,
    last: i64,
) -> sqlx::Result<Option<Vec<Line>>> {
    let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM conversations WHERE id = $1")
        .bind(conversation_id)
        .fetch_optional(pool)
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let lines = sqlx::query_as(
        "SELECT * FROM (
             SELECT m.id AS message_id, m.received_at AS at, 'customer' AS side,
                    NULL::text AS agent,
                    m.message_type AS kind,
                    -- A location reads as the model reads it (whether or not it went to one).
                    CASE WHEN m.message_type = 'location' THEN location_text(m.metadata)
                         ELSE m.text_redacted END AS text,
                    NULL::text AS state,
                    NULL::text AS delivery, NULL::int8 AS outbound_id, NULL::text AS reference,
                    NULL::int4 AS error_code, NULL::text AS fail_reason,
                    m.id AS ord, 0 AS sub, m.id AS tie
               FROM messages m WHERE m.conversation_id = $1
             UNION ALL
             SELECT NULL::int8, o.created_at,
                    CASE WHEN o.kind IN ('agent', 'template') THEN 'agent' ELSE 'bot' END,
                    o.agent, o.kind, o.body, o.state, o.delivery, o.id, o.agent_ref,
                    CASE WHEN o.state = 'failed' THEN o.error_code END,
                    CASE WHEN o.state = 'failed' THEN o.fail_reason END,
                    -- A reply sits right after the message it answers; an agent's message where
                    -- it was written.
                    COALESCE(o.reply_to, (SELECT max(m.id) FROM messages m
                                           WHERE m.conversation_id = $1
                                             AND m.received_at <= o.created_at)),
                    1, o.id
               FROM outbound_messages o WHERE o.conversation_id = $1
         ) t
          -- The parts of one message share their creation time: their ids keep them in order.
          ORDER BY ord DESC NULLS LAST, sub DESC, at DESC, tie DESC
          LIMIT $2",
    )
    .bind(conversation_id)
    .bind(last)
    .fetch_all(pool)
    .await?;
    let mut lines: Vec<Line> = lines;
    lines.reverse();
    for line in &mut lines {
        if line.state.as_deref() == Some("failed") {
            line.failure = Some(failure_reason(line.error_code, line.fail_reason.as_deref()));
        }
        // A template's part holds the Graph API's template object: shown as a line
        // (`[template: order_update] [document invoice.pdf] Ana | #1042 [button 0: 1042]`).
        if line.kind == "template"
            && let Some(object) = line
                .text
                .as_deref()
                .and_then(|body| serde_json::from_str::<serde_json::Value>(body).ok())
        {
            line.text = Some(wafleet_core::format::template::describe(&object));
        }
    }
    Ok(Some(lines))
}

/// An agent's message to record.
#[derive(Debug, Clone)]
pub struct AgentMessage<'a> {
    pub conversation_id: i64,
    /// `agent` (text, only inside the 24-hour window) or `template` (one part: the template
    /// object as JSON, also outside the window).
    pub kind: &'a str,
    /// Makes the request idempotent within the conversation.
    pub reference: &'a str,
    pub agent: Option<&'a str>,
    /// The message split into parts of at most 4,096 characters.
    pub parts: &'a [String],
    /// Recorded whoever owns the conversation (a business's template that leaves the bot
    /// answering); else only while a human owns it.
    pub any_owner: bool,
    /// For a template the bot answers after: what the model reads of it (redacted), kept on the
    /// part when the bot owns the conversation as it is recorded.
    pub history_text: Option<&'a str>,
    /// A file, buttons or a list: the Graph API's message fields the sender sends instead of
    /// the text (one part; its body is the transcript's line).
    pub payload: Option<&'a serde_json::Value>,
}

/// What recording an agent's message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The parts, in order, with their send states, and whether they were recorded now (else
    /// by an earlier request with the same reference). `conversation_key` is the key the
    /// conversation's jobs run under (its lane and partition).
    Parts {
        ids: Vec<i64>,
        states: Vec<String>,
        fresh: bool,
        conversation_key: String,
    },
    NoConversation,
    /// The conversation's customer was erased: there is nobody to write to.
    Erased,
    /// The conversation's number passed to someone else: it is no longer theirs to write to.
    NumberMoved,
    /// The bot owns the conversation: a human must take it first.
    WithTheBot,
    /// The customer's last message (by its own time) is 24 hours old or more, or there is none.
    WindowClosed {
        last: Option<DateTime<Utc>>,
    },
    /// The reference was used before in this conversation for another text.
    ReferenceTaken,
}

/// Records an agent's message as `pending` parts of its kind, in one transaction, unless a
/// request with the same reference recorded it before (then its parts are answered). Checked in
/// the same transaction, with the conversation's row locked against a concurrent take, release
/// or idle release: a human owns the conversation, and (except for a template) the customer's 24-hour
/// window is open at `now`.
pub async fn record_agent_message(
    pool: &PgPool,
    msg: &AgentMessage<'_>,
    now: DateTime<Utc>,
) -> sqlx::Result<Recorded> {
    let mut tx = pool.begin().await?;
    // Locks the conversation against a concurrent take, release or idle release, and records
    // the agent's activity (kept only if the message is recorded: a refusal rolls back).
    // A template opens the talk it starts: a conversation idle past its channel's session
    // timeout starts a new session with it, and the customer's answer, within the timeout,
    // belongs to that session (so the model reads the template with it).
    let conversation: Option<Target> = sqlx::query_as(
        "UPDATE conversations c SET agent_activity_at = now(),
                session_no = CASE WHEN $2 AND now() - c.last_activity_at
                                          > make_interval(secs => ch.session_timeout_secs)
                                  THEN c.session_no + 1 ELSE c.session_no END,
                session_started_at = CASE WHEN $2 AND now() - c.last_activity_at
                                          > make_interval(secs => ch.session_timeout_secs)
                                  THEN now() ELSE c.session_started_at END,
                last_activity_at = CASE WHEN $2 THEN GREATEST(c.last_activity_at, now())
                                        ELSE c.last_activity_at END
           FROM channels ch
          WHERE ch.id = c.channel_id AND c.id = $1
      RETURNING c.owner, c.session_no, c.last_customer_message_at, c.channel_id,
                ch.phone_number_id, c.customer_key, c.wa_id, c.user_id",
    )
    .bind(msg.conversation_id)
    .bind(msg.kind == "template")
    .fetch_optional(&mut *tx)
    .await?;
    let Some(Target {
        owner,
        session_no,
        last_customer_message_at: last,
        channel_id,
        phone_number_id: pnid,
        customer_key: customer,
        wa_id,
        user_id,
    }) = conversation
    else {
        return Ok(Recorded::NoConversation);
    };
    // Before the reference is compared: an erased message's text is gone, and a retry would
    // otherwise look like another text under the same reference.
    if let Some(refused) = closed_to_anyone(&customer) {
        return Ok(refused);
    }
    let recorded_before = recorded(&mut tx, msg).await?;
    let mut fresh = false;
    if recorded_before.is_empty() {
        if let Some(refused) = closed_to_new(&owner, last, msg.kind, msg.any_owner, now) {
            return Ok(refused);
        }
        let numbers: Vec<i32> = (0..).take(msg.parts.len()).collect();
        let history_text = msg.history_text.filter(|_| owner == "bot");
        let inserted = sqlx::query(
            "INSERT INTO outbound_messages (conversation_id, channel_id, session_no, part_no, kind,
                                            body, agent_ref, agent, history_text, payload)
             SELECT $1, $2, $3, p.part_no, $8, p.body, $4, $5, $9, $10
               FROM unnest($6::int4[], $7::text[]) AS p(part_no, body)
             ON CONFLICT (conversation_id, agent_ref, part_no) WHERE agent_ref IS NOT NULL
             DO NOTHING",
        )
        .bind(msg.conversation_id)
        .bind(channel_id)
        .bind(session_no)
        .bind(msg.reference)
        .bind(msg.agent)
        .bind(&numbers)
        .bind(msg.parts)
        .bind(msg.kind)
        .bind(history_text)
        .bind(msg.payload)
        .execute(&mut *tx)
        .await?;
        fresh = inserted.rows_affected() > 0;
    }
    // Read back whatever holds the reference now: a concurrent request with the same reference
    // may have recorded it first.
    let rows = if recorded_before.is_empty() {
        recorded(&mut tx, msg).await?
    } else {
        recorded_before
    };
    // The same text and, for a file, buttons or a list, the same payload (the transcript's
    // line does not show a file's link).
    if rows.len() != msg.parts.len()
        || rows
            .iter()
            .zip(msg.parts)
            .any(|((_, b, _, payload), p)| b != p || payload.as_ref() != msg.payload)
    {
        return Ok(Recorded::ReferenceTaken);
    }
    tx.commit().await?;
    let (ids, states) = rows
        .into_iter()
        .map(|(id, _, state, _)| (id, state))
        .unzip();
    Ok(Recorded::Parts {
        ids,
        states,
        fresh,
        // As ingest names the conversation of a message with these ids.
        conversation_key: wafleet_core::envelope::conversation_key(
            &pnid,
            wa_id.as_deref(),
            user_id.as_deref(),
            &customer,
        ),
    })
}

/// Why no agent's message, new or repeated, goes to a conversation whose customer key is
/// `customer`: its customer was erased, or it is a former holder's conversation, set aside when
/// their number passed to someone else (`crate::store::conversations::follow_identity_change`),
/// and whoever has the number now must not get what an agent writes to the former holder.
fn closed_to_anyone(customer: &str) -> Option<Recorded> {
    if customer.starts_with("erased:") {
        Some(Recorded::Erased)
    } else if customer.starts_with("moved:") {
        Some(Recorded::NumberMoved)
    } else {
        None
    }
}

/// Why a new agent's message of `kind` does not go to a conversation `owner` has whose
/// customer last wrote at `last`: the bot has it (unless the message may go to any owner), or
/// its 24-hour window is closed (a template opens one).
fn closed_to_new(
    owner: &str,
    last: Option<DateTime<Utc>>,
    kind: &str,
    any_owner: bool,
    now: DateTime<Utc>,
) -> Option<Recorded> {
    if owner != "human" && !any_owner {
        Some(Recorded::WithTheBot)
    } else if kind != "template" && !crate::stages::llm::window_open(last, now) {
        Some(Recorded::WindowClosed { last })
    } else {
        None
    }
}

/// Why a new agent's message of `kind` would be refused in the conversation now, as
/// [`record_agent_message`] would refuse it (which checks again when it records): for work worth
/// not doing before a refusal, such as uploading the file the message sends. `Ok`: it would be
/// taken, for now, and this is the conversation's business number (its `phone_number_id`).
pub async fn refusal_now(
    pool: &PgPool,
    conversation_id: i64,
    kind: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Result<String, Recorded>> {
    let conversation: Option<(String, String, Option<DateTime<Utc>>, String)> = sqlx::query_as(
        "SELECT c.customer_key, c.owner, c.last_customer_message_at, ch.phone_number_id
           FROM conversations c JOIN channels ch ON ch.id = c.channel_id
          WHERE c.id = $1",
    )
    .bind(conversation_id)
    .fetch_optional(pool)
    .await?;
    Ok(match conversation {
        None => Err(Recorded::NoConversation),
        Some((customer, owner, last, pnid)) => closed_to_anyone(&customer)
            .or_else(|| closed_to_new(&owner, last, kind, false, now))
            .map_or(Ok(pnid), Err),
    })
}

/// Whether the conversation was taken or given back (by anyone, for any reason) since `part`
/// was recorded.
pub async fn owner_changed_since(
    pool: &PgPool,
    conversation_id: i64,
    part: i64,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM handover_events h JOIN outbound_messages o ON o.id = $2
                         WHERE h.conversation_id = $1 AND h.created_at >= o.created_at)",
    )
    .bind(conversation_id)
    .bind(part)
    .fetch_one(pool)
    .await
}

/// Meta's media id of a customer's message in a conversation (an image, audio, video, document
/// or sticker), with the conversation's business number: `None` when the conversation has no
/// such message; the id `None` when the message carries no media (or its customer was erased).
pub async fn media_of(
    pool: &PgPool,
    conversation_id: i64,
    message_id: i64,
) -> sqlx::Result<Option<(String, Option<String>)>> {
    sqlx::query_as(
        "SELECT ch.phone_number_id, m.metadata->>'id'
           FROM messages m JOIN conversations c ON c.id = m.conversation_id
           JOIN channels ch ON ch.id = c.channel_id
          WHERE m.id = $2 AND m.conversation_id = $1
            AND m.message_type IN ('image', 'audio', 'video', 'document', 'sticker')",
    )
    .bind(conversation_id)
    .bind(message_id)
    .fetch_optional(pool)
    .await
}

/// Where a business's first message to a customer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// The customer's conversation with the number, found or made now.
    Conversation(i64),
    NoChannel,
    /// The number serves only the customers on its allowlist, and this one is not.
    NotAllowed,
    /// A request with this reference to this customer was made before their data was erased
    /// (the erased conversation it went to): its retry must send nothing.
    Erased(i64),
}

/// The conversation of a channel's customer by their phone (`wa_id` digits): the one they have
/// (by phone, in either notation of a Mexican or Brazilian mobile, also one keyed by a
/// business-scoped id that knows the phone), or a new one, owned by the bot, with no customer
/// message yet (the 24-hour window is closed: only templates reach them). The allowlist is read
/// the same way. A new conversation is keyed by the number as given; when Meta names the
/// customer otherwise, the sender adopts Meta's `wa_id` (see `record_accepted_many`).
///
/// A `reference` this customer's template went out under before their data was erased (the
/// erasure kept the digest of their number and the reference, `erased_ref`) answers
/// [`Opened::Erased`], whatever conversation they have now: that request's retry must send
/// nothing, and no conversation is made for it. Read in the same statement as the conversation,
/// so an erasure committing meanwhile is seen one way or the other.
pub async fn open_conversation(
    pool: &PgPool,
    phone_number_id: &str,
    wa_id: &str,
    reference: &str,
) -> sqlx::Result<Opened> {
    let forms = wafleet_core::phone::forms(wa_id);
    // Twice at most: a concurrent call may make the row between this statement's snapshot and
    // its insert (which then does nothing); the second run sees it.
    for _ in 0..2 {
        let row: Option<(bool, Option<i64>, Option<i64>)> = sqlx::query_as(
            "WITH ch AS (
                 SELECT id, cardinality(phone_allowlist) = 0 OR phone_allowlist && $3 AS allowed
                   FROM channels WHERE phone_number_id = $1
             ), erased AS (
                 SELECT o.conversation_id AS id FROM outbound_messages o
                   JOIN conversations c ON c.id = o.conversation_id
                   JOIN ch ON c.channel_id = ch.id
                  WHERE o.agent_ref LIKE 'erased:%' AND o.kind = 'template'
                    AND o.agent_ref IN (SELECT erased_ref(f, $4) FROM unnest($3::text[]) AS f)
                  LIMIT 1
             ), found AS (
                 SELECT c.id FROM conversations c JOIN ch ON c.channel_id = ch.id
                  WHERE c.customer_key = ANY($3) OR c.wa_id = ANY($3)
                  ORDER BY c.customer_key = $2 DESC, c.customer_key = ANY($3) DESC, c.id LIMIT 1
             ), made AS (
                 INSERT INTO conversations (channel_id, customer_key, wa_id, session_started_at,
                                            last_activity_at)
                 SELECT ch.id, $2, $2, now(), now() FROM ch
                  WHERE ch.allowed AND NOT EXISTS (SELECT 1 FROM found)
                    AND NOT EXISTS (SELECT 1 FROM erased)
                 ON CONFLICT (channel_id, customer_key) DO NOTHING
                 RETURNING id
             )
             SELECT ch.allowed, COALESCE((SELECT id FROM found), (SELECT id FROM made)),
                    (SELECT id FROM erased)
               FROM ch",
        )
        .bind(phone_number_id)
        .bind(wa_id)
        .bind(&forms)
        .bind(reference)
        .fetch_optional(pool)
        .await?;
        match row {
            None => return Ok(Opened::NoChannel),
            Some((_, _, Some(erased))) => return Ok(Opened::Erased(erased)),
            Some((false, _, _)) => return Ok(Opened::NotAllowed),
            Some((true, Some(id), _)) => return Ok(Opened::Conversation(id)),
            Some((true, None, _)) => continue,
        }
    }
    Err(sqlx::Error::Protocol(
        "the customer's conversation was neither found nor made".into(),
    ))
}

/// The conversation an agent's message goes to, as [`record_agent_message`] checks it.
#[derive(sqlx::FromRow)]
struct Target {
    owner: String,
    session_no: i32,
    last_customer_message_at: Option<DateTime<Utc>>,
    channel_id: i64,
    phone_number_id: String,
    customer_key: String,
    wa_id: Option<String>,
    user_id: Option<String>,
}

/// The Graph API message fields (`payload`) of the first part an agent's message with
/// `reference` recorded in the conversation, if one did: how `wafleetctl conversation reply …
/// --image @PATH` repeated with its reference finds the media id its first run uploaded and
/// recorded, instead of uploading the file again (a new id would look like another message).
pub async fn recorded_payload(
    pool: &PgPool,
    conversation_id: i64,
    reference: &str,
) -> sqlx::Result<Option<serde_json::Value>> {
    let payload: Option<Option<serde_json::Value>> = sqlx::query_scalar(
        "SELECT payload FROM outbound_messages
          WHERE conversation_id = $1 AND agent_ref = $2 AND part_no = 0",
    )
    .bind(conversation_id)
    .bind(reference)
    .fetch_optional(pool)
    .await?;
    Ok(payload.flatten())
}

/// The parts recorded under a message's reference, in order: id, body, state, payload.
async fn recorded(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    msg: &AgentMessage<'_>,
) -> sqlx::Result<Vec<(i64, String, String, Option<serde_json::Value>)>> {
    sqlx::query_as(
        "SELECT id, body, state, payload FROM outbound_messages
          WHERE conversation_id = $1 AND agent_ref = $2 ORDER BY part_no",
    )
    .bind(msg.conversation_id)
    .bind(msg.reference)
    .fetch_all(&mut **tx)
    .await
}

/// A conversation given back to the bot because it was idle, with its `release` event, still to
/// be announced ([`announced`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Released {
    /// The event's row in `handover_events`.
    pub event_id: i64,
    pub conversation_id: i64,
    pub phone_number_id: String,
    /// When it was released.
    pub at: DateTime<Utc>,
    /// The conversation changed hands again since (a take, a handover): the release is no
    /// longer its state, and announced this late it would tell dashboards otherwise.
    pub superseded: bool,
}

/// Gives back to the bot, with a `release` event (reason `idle`), up to `limit` human-owned
/// conversations in which nothing happened (customer message, handover, an agent taking it or
/// writing in it: `agent_activity_at`) for their channel's `human_release_after_secs`. Rows another transaction holds (a message being stored)
/// are skipped, and an idle conversation is checked again once locked: a message stored
/// meanwhile keeps it with the human. The events are recorded unannounced.
pub async fn release_idle(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<Released>> {
    sqlx::query_as(
        "WITH idle AS (
             SELECT c.id FROM conversations c JOIN channels ch ON ch.id = c.channel_id
              WHERE c.owner = 'human' AND ch.human_release_after_secs IS NOT NULL
                AND GREATEST(c.last_activity_at, c.handed_over_at, c.agent_activity_at)
                    < now() - make_interval(secs => ch.human_release_after_secs)
              ORDER BY c.id
              LIMIT $1
                FOR UPDATE OF c SKIP LOCKED
         ), released AS (
             UPDATE conversations c SET owner = 'bot'
               FROM idle WHERE c.id = idle.id AND c.owner = 'human'
             RETURNING c.id, c.channel_id
         ), events AS (
             INSERT INTO handover_events (conversation_id, kind, reason, announced)
             SELECT id, 'release', 'idle', FALSE FROM released
             RETURNING id, conversation_id, created_at
         )
         SELECT e.id AS event_id, r.id AS conversation_id, ch.phone_number_id,
                e.created_at AS at, FALSE AS superseded
           FROM released r JOIN events e ON e.conversation_id = r.id
           JOIN channels ch ON ch.id = r.channel_id
          ORDER BY r.id",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Up to `limit` idle releases whose event a sweep did not get onto the dashboard stream (Redis
/// refused it, or the process stopped first), oldest first.
pub async fn unannounced_releases(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<Released>> {
    sqlx::query_as(
        "SELECT h.id AS event_id, h.conversation_id, ch.phone_number_id, h.created_at AS at,
                EXISTS (SELECT 1 FROM handover_events l
                         WHERE l.conversation_id = h.conversation_id AND l.id > h.id) AS superseded
           FROM handover_events h
           JOIN conversations c ON c.id = h.conversation_id
           JOIN channels ch ON ch.id = c.channel_id
          WHERE NOT h.announced
          ORDER BY h.id
          LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Records that the events `event_ids` are on the dashboard stream (or need not be).
pub async fn announced(pool: &PgPool, event_ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query("UPDATE handover_events SET announced = TRUE WHERE id = ANY($1) AND NOT announced")
        .bind(event_ids)
        .execute(pool)
        .await?;
    Ok(())
}

/// How long customers wait for people, per channel.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HumanWait {
    pub phone_number_id: String,
    /// Conversations people answer: those a human owns, and on a number whose bot is off or in
    /// shadow, the bot's in which something happened (a customer message, a template, an agent's
    /// take) within the channel's `human_release_after_secs`, as long as a human would keep one
    /// (for good when it is unset).
    pub conversations: i64,
    /// The longest wait, in seconds (0 when none waits). A conversation a human owns waits
    /// since the handover when no agent wrote since, else since the customer's first message
    /// after the agent's last one. One of the bot's on such a number waits since the customer's
    /// first message after the last one written to them, by an agent or by the bot (before its
    /// bot was switched off: a shadow reply is not sent). A message or template that failed
    /// does not count as written.
    pub oldest_wait_secs: f64,
}

/// [`HumanWait`] of every channel. Read every few seconds by every worker: the conversations a
/// human owns come from their partial index, and a channel's other conversations are read (by
/// channel) only when its bot is off or in shadow. Without JIT: the planner prices the read of
/// every channel's conversations, not just of those few, and on 400,000 conversations compiled
/// the query for 1.2 s, every time, to run it in 0.1 s.
pub async fn human_waits(pool: &PgPool) -> sqlx::Result<Vec<HumanWait>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
    let waits = sqlx::query_as(
        "SELECT ch.phone_number_id, count(c.id) AS conversations,
                COALESCE(max(EXTRACT(EPOCH FROM now() - CASE
                    WHEN c.owner = 'human'
                         AND (a.last_agent IS NULL OR a.last_agent < c.handed_over_at)
                        THEN c.handed_over_at
                    ELSE (SELECT min(m.received_at) FROM messages m
                           WHERE m.conversation_id = c.id
                             AND m.received_at > COALESCE(CASE WHEN c.owner = 'human'
                                                               THEN a.last_agent
                                                               ELSE a.last_written END,
                                                          '-infinity'))
                END)), 0)::float8 AS oldest_wait_secs
           FROM channels ch
           -- Not a former holder's conversation set aside (its number passed to someone
           -- else), nor an erased customer's: nobody can be answered there.
           LEFT JOIN LATERAL (
               SELECT c.id, c.owner, c.handed_over_at FROM conversations c
                WHERE c.channel_id = ch.id AND c.owner = 'human'
                  AND c.customer_key NOT LIKE 'moved:%' AND c.customer_key NOT LIKE 'erased:%'
               UNION ALL
               SELECT c.id, c.owner, c.handed_over_at FROM conversations c
                WHERE ch.bot_mode <> 'on' AND c.channel_id = ch.id AND c.owner = 'bot'
                  AND c.customer_key NOT LIKE 'moved:%' AND c.customer_key NOT LIKE 'erased:%'
                  AND (ch.human_release_after_secs IS NULL
                       OR GREATEST(c.last_activity_at, c.agent_activity_at)
                          >= now() - make_interval(secs => ch.human_release_after_secs))
           ) c ON TRUE
           LEFT JOIN LATERAL (
               SELECT max(o.created_at) FILTER (WHERE o.kind IN ('agent', 'template'))
                          AS last_agent,
                      max(o.created_at) AS last_written
                 FROM outbound_messages o
                WHERE o.conversation_id = c.id AND o.state IN ('pending', 'sending', 'accepted')
           ) a ON TRUE
          GROUP BY ch.phone_number_id
          ORDER BY ch.phone_number_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(waits)
}

/// Records that an agent acted in the conversation (took it): the idle release counts from now.
pub async fn touch_agent_activity(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    conversation_id: i64,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE conversations SET agent_activity_at = now() WHERE id = $1")
        .bind(conversation_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::failure_reason;

    #[test]
    fn a_failure_is_read_from_our_own_reasons_and_metas_code_never_from_metas_words() {
        let gave_up_unanswered = format!(
            "{} 3 sends and no status came",
            super::super::replies::UNANSWERED
        );
        let cases: &[(Option<i32>, Option<&str>, &str)] = &[
            (
                Some(131026),
                Some("(#131026) Message undeliverable"),
                "permanent",
            ),
            (Some(131047), None, "re_engagement"),
            (
                Some(132001),
                Some("(#132001) Template name does not exist"),
                "permanent",
            ),
            (
                Some(131000),
                Some("gave up on transient Graph error 131000"),
                "gave_up",
            ),
            (None, Some(&gave_up_unanswered), "unanswered"),
            (
                None,
                Some("an earlier part failed (131026)"),
                "earlier_part",
            ),
            (None, Some("the 24-hour window is closed"), "window_closed"),
            (None, Some("the customer's data was erased"), "erased"),
            (
                None,
                Some(super::super::conversations::NUMBER_MOVED),
                "number_moved",
            ),
            (None, Some("the template is not valid JSON: eof"), "failed"),
            (None, None, "failed"),
        ];
        for (code, why, want) in cases {
            assert_eq!(failure_reason(*code, *why), *want, "{code:?} {why:?}");
        }
    }
}
