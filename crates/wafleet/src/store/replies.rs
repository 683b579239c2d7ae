//! What the LLM and sender stages read and write: the conversation behind a reply job, the
//! history given to the model, replies, and the outbound parts' send state (migration 0003).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The inbound message a reply job answers, with its conversation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReplyContext {
    pub message_id: i64,
    pub wamid: String,
    pub session_no: i32,
    pub conversation_id: i64,
    pub channel_id: i64,
    pub owner: String,
    pub last_customer_message_at: Option<DateTime<Utc>>,
    /// The outcome already recorded for this message (a redelivered job), if any.
    pub reply_outcome: Option<String>,
}

/// One turn of history: `true` for the customer, `false` for the bot.
pub type Turn = (bool, String);

#[derive(sqlx::FromRow)]
struct ContextRow {
    #[sqlx(flatten)]
    ctx: ReplyContext,
    turn_customer: Vec<bool>,
    turn_text: Vec<String>,
}

/// The message a reply job answers, with its conversation, and the last `history_limit` turns
/// of that conversation's current session up to the message, oldest first: the customer's
/// messages (redacted) from stretches the bot handled, and the bot's replies. What humans
/// handled and earlier sessions are left out. One query.
pub async fn reply_context(
    pool: &PgPool,
    message_id: i64,
    history_limit: i64,
) -> sqlx::Result<Option<(ReplyContext, Vec<Turn>)>> {
    let row: Option<ContextRow> = sqlx::query_as(
        "WITH ctx AS (
             SELECT m.id AS message_id, m.wamid, m.session_no, c.id AS conversation_id,
                    c.channel_id, c.owner, c.last_customer_message_at, r.outcome AS reply_outcome
               FROM messages m JOIN conversations c ON c.id = m.conversation_id
               LEFT JOIN replies r ON r.message_id = m.id
              WHERE m.id = $1
         ), turns AS (
             SELECT customer, text, at, ord FROM (
                 SELECT TRUE AS customer, m.text_redacted AS text, m.received_at AS at, m.id AS ord
                   FROM messages m, ctx
                  WHERE m.conversation_id = ctx.conversation_id AND m.session_no = ctx.session_no
                    AND m.id <= ctx.message_id
                    AND m.owner_at_arrival = 'bot' AND m.text_redacted IS NOT NULL
                    AND m.action IN ('reply', 'handover')
                 UNION ALL
                 SELECT FALSE, o.body, o.created_at, o.reply_to
                   FROM outbound_messages o JOIN messages m ON m.id = o.reply_to, ctx
                  WHERE o.conversation_id = ctx.conversation_id AND m.session_no = ctx.session_no
                    AND o.reply_to < ctx.message_id
                    AND o.kind = 'reply' AND o.state IN ('pending', 'sending', 'accepted')
             ) t
             ORDER BY at DESC, ord DESC
             LIMIT $2
         )
         SELECT ctx.*,
                ARRAY(SELECT customer FROM turns ORDER BY at, ord) AS turn_customer,
                ARRAY(SELECT text FROM turns ORDER BY at, ord) AS turn_text
           FROM ctx",
    )
    .bind(message_id)
    .bind(history_limit)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| {
        let turns = r.turn_customer.into_iter().zip(r.turn_text).collect();
        (r.ctx, turns)
    }))
}

/// What the model produced (or why nothing was asked).
#[derive(Debug, Clone, Default)]
pub struct NewReply<'a> {
    pub outcome: &'a str,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub input_tokens: Option<i32>,
    pub output_tokens: Option<i32>,
    pub canned: bool,
    pub failures: serde_json::Value,
}

/// One part of a reply to record: its kind (`reply`, `handover_ack`) and text.
pub type NewPart<'a> = (&'a str, &'a str);

/// Records the reply and its parts (numbered from 0, all in `state`) unless a reply exists;
/// returns false when it already did. One statement: one round trip, one commit.
pub async fn record_reply(
    pool: &PgPool,
    ctx: &ReplyContext,
    r: &NewReply<'_>,
    parts: &[NewPart<'_>],
    state: &str,
) -> sqlx::Result<bool> {
    let kinds: Vec<&str> = parts.iter().map(|p| p.0).collect();
    let bodies: Vec<&str> = parts.iter().map(|p| p.1).collect();
    let (fresh,): (bool,) = sqlx::query_as(
        "WITH reply AS (
             INSERT INTO replies (message_id, conversation_id, outcome, provider, model,
                                  input_tokens, output_tokens, canned, failures)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (message_id) DO NOTHING
             RETURNING message_id
         ), parts AS (
             INSERT INTO outbound_messages (conversation_id, channel_id, reply_to, part_no, kind,
                                            body, state)
             SELECT $2, $10, reply.message_id, p.n - 1, p.kind, p.body, $13
               FROM reply, unnest($11::text[], $12::text[]) WITH ORDINALITY AS p(kind, body, n)
             ON CONFLICT (reply_to, kind, part_no) DO NOTHING
         )
         SELECT EXISTS (SELECT 1 FROM reply)",
    )
    .bind(ctx.message_id)
    .bind(ctx.conversation_id)
    .bind(r.outcome)
    .bind(r.provider)
    .bind(r.model)
    .bind(r.input_tokens)
    .bind(r.output_tokens)
    .bind(r.canned)
    .bind(&r.failures)
    .bind(ctx.channel_id)
    .bind(&kinds)
    .bind(&bodies)
    .bind(state)
    .fetch_one(pool)
    .await?;
    Ok(fresh)
}

/// An outbound part with what the sender needs to send it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Part {
    pub id: i64,
    pub conversation_id: i64,
    pub channel_id: i64,
    pub kind: String,
    pub part_no: i32,
    pub body: String,
    pub state: String,
    pub attempts: i32,
    pub sending_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The customer's message this answers (quoted by the first part).
    pub inbound_wamid: Option<String>,
    pub reply_to: Option<i64>,
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub last_customer_message_at: Option<DateTime<Utc>>,
}

const PART: &str = "SELECT o.id, o.conversation_id, o.channel_id, o.kind, o.part_no, o.body, o.state,
        o.attempts, o.sending_at, o.created_at, m.wamid AS inbound_wamid, o.reply_to, c.wa_id, c.user_id,
        c.last_customer_message_at
   FROM outbound_messages o
   JOIN conversations c ON c.id = o.conversation_id
   LEFT JOIN messages m ON m.id = o.reply_to";

pub async fn part(pool: &PgPool, id: i64) -> sqlx::Result<Option<Part>> {
    sqlx::query_as(&format!("{PART} WHERE o.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The parts of a reply, in order.
pub async fn reply_parts(pool: &PgPool, message_id: i64) -> sqlx::Result<Vec<Part>> {
    sqlx::query_as(&format!(
        "{PART} WHERE o.reply_to = $1 AND o.kind = 'reply' ORDER BY o.part_no"
    ))
    .bind(message_id)
    .fetch_all(pool)
    .await
}

/// The result of the check made right before a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Marked `sending`: send now.
    Go,
    /// A human owns the conversation: recorded as suppressed, not sent.
    Suppressed,
    /// Not pending any more (already sent, failed, or being sent).
    NotPending(String),
}

/// In one statement: the part is still pending and the bot still owns the conversation (an
/// acknowledgement of a handover is sent to a human-owned conversation by design) → `sending`.
pub async fn claim(pool: &PgPool, id: i64) -> sqlx::Result<Claim> {
    let went = sqlx::query(
        "UPDATE outbound_messages o SET state = 'sending', sending_at = now(), attempts = o.attempts + 1
           FROM conversations c
          WHERE o.id = $1 AND o.state = 'pending' AND c.id = o.conversation_id
            AND (c.owner = 'bot' OR o.kind = 'handover_ack')",
    )
    .bind(id)
    .execute(pool)
    .await?;
    if went.rows_affected() == 1 {
        return Ok(Claim::Go);
    }
    let suppressed = sqlx::query(
        "UPDATE outbound_messages SET state = 'suppressed', fail_reason = 'a human owns the conversation'
          WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .execute(pool)
    .await?;
    if suppressed.rows_affected() == 1 {
        return Ok(Claim::Suppressed);
    }
    let (state,): (String,) = sqlx::query_as("SELECT state FROM outbound_messages WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await?;
    Ok(Claim::NotPending(state))
}

/// A send that certainly did not happen goes back to `pending`.
pub async fn unclaim(pool: &PgPool, id: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbound_messages SET state = 'pending' WHERE id = $1 AND state = 'sending'",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn mark_failed(
    pool: &PgPool,
    id: i64,
    code: Option<i64>,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbound_messages SET state = 'failed', error_code = COALESCE($2, error_code), fail_reason = $3
          WHERE id = $1 AND state IN ('pending', 'sending')",
    )
    .bind(id)
    .bind(code.map(|c| c as i32))
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Meta accepted a part: record its wamid (applying statuses that came first) and mark the
/// customer's message it answers as answered.
pub async fn accepted(pool: &PgPool, part: &Part, wamid: &str) -> sqlx::Result<()> {
    crate::store::conversations::record_accepted(pool, part.id, wamid).await
}

/// Stops a channel's sends until `until` (a configuration error needs an operator).
pub async fn pause_channel(
    pool: &PgPool,
    channel_id: i64,
    until: DateTime<Utc>,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE channels SET sends_paused_until = $2, sends_paused_reason = $3 WHERE id = $1",
    )
    .bind(channel_id)
    .bind(until)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}
