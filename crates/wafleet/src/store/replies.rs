//! What the LLM and sender stages read and write: the conversation behind a reply job, the
//! history given to the model, replies, and the outbound parts' send state (migration 0003).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

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
    /// The message's type (`text`, `image`…).
    pub message_type: String,
    /// Meta's media id of an image, video, audio, document or sticker message.
    pub media_id: Option<String>,
    /// Whether the message has text: typed, a caption, or a voice note's stored transcript.
    pub has_text: bool,
    /// When the message was stored.
    pub received_at: DateTime<Utc>,
    /// Whether the customer wrote again since, in the same session, while the bot had the
    /// conversation, in a message the bot will answer (or hand over for): that answer is
    /// written knowing this message too.
    pub answered_later: bool,
}

/// How an image stands in a turn's text: the model is told one was sent even when it does not
/// see it (an earlier message, a channel whose images do not go to the model, a failed fetch).
pub const IMAGE_MARKER: &str = "[image]";

/// How a document stands in a turn's text, before its file name (redacted) and its caption:
/// `[document: factura.pdf] aquí está`.
pub const DOCUMENT_MARKER: &str = "[document";

/// How a location the customer shared stands in a turn's text and in the agents' transcript,
/// the whole turn (built by the SQL function `location_text`, migration 0038): its name and
/// address, redacted, and its coordinates rounded to 4 decimals,
/// `[location: Tienda Centro, [ADDRESS], CDMX (19.4326, -99.1332)]`, or a bare pin's
/// `[location: (19.4326, -99.1332)]`.
pub const LOCATION_MARKER: &str = "[location";

/// How a business's template stands in the model's history when the bot answers after it (the
/// template's text is Meta's; the model reads its name and parameters, redacted):
/// `[template: order_shipped] #1042 | martes`.
pub const TEMPLATE_MARKER: &str = "[template";

/// How a transcribed voice note (or audio file) stands in a turn's text, before its transcript.
pub const VOICE_MARKER: &str = "[voice note]";

/// How a cart sent from the catalog stands in a message's stored text, before its items and the
/// customer's note: `[order] 2 × aceite-lavanda-30ml, 45000 COP each`.
pub const ORDER_MARKER: &str = "[order]";

/// How a voice note stands in the turn the model answers when it could not be transcribed (the
/// model is told one was sent, and that it does not know what it says).
pub const VOICE_UNHEARD: &str = "[voice note: it could not be transcribed]";

/// One turn of history: `true` for the customer, `false` for the bot.
pub type Turn = (bool, String);

#[derive(sqlx::FromRow)]
struct ContextRow {
    n: i64,
    #[sqlx(flatten)]
    ctx: ReplyContext,
    turn_customer: Vec<bool>,
    turn_text: Vec<String>,
}

/// For each `(message id, history limit)`: the message a reply job answers, with its
/// conversation, and the last `history limit` turns of that conversation's current session up to
/// the message, oldest first: the customer's messages (redacted) from stretches the bot handled,
/// the bot's replies, and the business's templates the bot answers after. What humans handled and earlier sessions are left out. One query for
/// all; `None` for a message that does not exist.
///
/// A handover's acknowledgement is one of the bot's turns: after a human gives the conversation
/// back, the model sees that the request for a person was answered, rather than a request it
/// should hand over again for.
///
/// A reply sits right after the message it answers, not where its creation time would put it:
/// when a customer sends a second message while the model is still answering the first, the
/// first answer is recorded after the second message arrived, and ordering by time would end the
/// history on the bot's own answer, which Anthropic takes as the start of the reply to continue.
///
/// Shared locations follow the channel's `locations_to_model` as it is now: turned off, the
/// locations shared while it was on are left out, and so are the bot's answers to them (to the
/// stretch of messages a location was in), which quote or are built from the place.
pub async fn reply_contexts(
    conn: &mut PgConnection,
    wanted: &[(i64, i64)],
) -> sqlx::Result<Vec<Option<(ReplyContext, Vec<Turn>)>>> {
    let rows: Vec<ContextRow> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM unnest($1::int8[], $2::int8[]) WITH ORDINALITY AS i(message_id, lim, n)
         ), ctx AS (
             SELECT i.n, i.lim, m.id AS message_id, m.wamid, m.session_no,
                    c.id AS conversation_id, c.channel_id, c.owner, c.last_customer_message_at,
                    r.outcome AS reply_outcome, m.message_type, m.metadata->>'id' AS media_id,
                    m.text_redacted IS NOT NULL AS has_text, m.received_at,
                    ch.locations_to_model
               FROM input i
               JOIN messages m ON m.id = i.message_id
               JOIN conversations c ON c.id = m.conversation_id
               LEFT JOIN channels ch ON ch.id = c.channel_id
               LEFT JOIN replies r ON r.message_id = m.id
         )
         SELECT ctx.n, ctx.message_id, ctx.wamid, ctx.session_no, ctx.conversation_id,
                ctx.channel_id, ctx.owner, ctx.last_customer_message_at, ctx.reply_outcome,
                ctx.message_type, ctx.media_id, ctx.has_text, ctx.received_at,
                EXISTS (SELECT 1 FROM messages l
                         WHERE l.conversation_id = ctx.conversation_id
                           AND l.session_no = ctx.session_no AND l.id > ctx.message_id
                           AND l.owner_at_arrival = 'bot' AND l.action IN ('reply', 'handover'))
                    AS answered_later,
                COALESCE(h.turn_customer, '{}') AS turn_customer,
                COALESCE(h.turn_text, '{}') AS turn_text
           FROM ctx LEFT JOIN LATERAL (
               SELECT array_agg(customer ORDER BY ord, sub) AS turn_customer,
                      array_agg(text ORDER BY ord, sub) AS turn_text
                 FROM (
                     SELECT customer, text, ord, sub FROM (
                         -- An image is a turn with or without its caption ($3 before it), and
                         -- so is a document ($5, its file name, before it); a voice note is one
                         -- once transcribed ($4 before the transcript); a location is its
                         -- LOCATION_MARKER line (migration 0038's location_text).
                         SELECT TRUE AS customer,
                                CASE WHEN m.message_type = 'image'
                                     THEN concat_ws(' ', $3::text, m.text_redacted)
                                     WHEN m.message_type = 'audio'
                                     THEN concat_ws(' ', $4::text, m.text_redacted)
                                     WHEN m.message_type = 'document'
                                     THEN concat_ws(' ', $5::text
                                              || coalesce(': ' || (m.metadata->>'filename'), '')
                                              || ']',
                                          m.text_redacted)
                                     WHEN m.message_type = 'location'
                                     THEN location_text(m.metadata)
                                     ELSE m.text_redacted END AS text,
                                m.id AS ord, 0::int8 AS sub
                           FROM messages m
                          WHERE m.conversation_id = ctx.conversation_id
                            AND m.session_no = ctx.session_no AND m.id <= ctx.message_id
                            AND m.owner_at_arrival = 'bot'
                            AND (m.text_redacted IS NOT NULL OR m.message_type IN ('image', 'document')
                                 -- A location only while its channel gives them to the model:
                                 -- turned off, none goes again, earlier ones neither.
                                 OR m.message_type = 'location' AND ctx.locations_to_model)
                            AND m.action IN ('reply', 'handover')
                            -- What a human answered instead of the bot, though it came while the
                            -- bot had the conversation (a human took it while the message waited,
                            -- or its 24 hours had passed), is the human's stretch too.
                            AND (m.id = ctx.message_id
                                 OR NOT EXISTS (SELECT 1 FROM replies r WHERE r.message_id = m.id
                                                   AND r.outcome IN ('suppressed', 'window_closed'))
                                    AND NOT EXISTS (SELECT 1 FROM outbound_messages s
                                                     WHERE s.reply_to = m.id AND s.state = 'suppressed'))
                         UNION ALL
                         -- A reply sits after the message it answers; a business's template
                         -- the bot answers after, or what a person wrote from the WhatsApp
                         -- Business app (an agent's part by `business_app`, with its history
                         -- text), sits after the last message that came before it, and only one
                         -- recorded before the message answered counts.
                         SELECT FALSE, COALESCE(o.history_text, o.body),
                                COALESCE(o.reply_to,
                                         (SELECT coalesce(max(m.id), 0) FROM messages m
                                           WHERE m.conversation_id = o.conversation_id
                                             AND m.received_at <= o.created_at)),
                                o.id
                           FROM outbound_messages o
                          WHERE o.conversation_id = ctx.conversation_id
                            AND o.session_no = ctx.session_no
                            AND (o.kind IN ('reply', 'handover_ack') AND o.reply_to < ctx.message_id
                                 OR o.kind IN ('template', 'agent') AND o.history_text IS NOT NULL
                                    AND o.created_at < ctx.received_at)
                            AND o.state IN ('pending', 'sending', 'accepted')
                            -- With the setting off, the bot's answer to what it was asked
                            -- with a location (alone, or gathered with what followed) goes too:
                            -- an answer quotes or is built from the place ('we deliver to
                            -- Coyoacán'). The answer to a location: the bot's first answer or
                            -- acknowledgement to it or a message after it. Asked location first,
                            -- over the locations-only index (migration 0041): for a
                            -- conversation without one, a probe of a near-empty index per answer.
                            AND NOT (o.kind = 'reply'
                                     AND NOT ctx.locations_to_model
                                     AND EXISTS (
                                         SELECT 1 FROM messages l
                                          WHERE l.conversation_id = o.conversation_id
                                            AND l.message_type = 'location'
                                            AND l.action = 'reply'
                                            AND l.id <= o.reply_to
                                            AND (SELECT min(p.reply_to) FROM outbound_messages p
                                                  WHERE p.conversation_id = l.conversation_id
                                                    AND p.session_no = l.session_no
                                                    AND p.kind IN ('reply', 'handover_ack')
                                                    AND p.reply_to >= l.id) = o.reply_to))
                     ) t
                     ORDER BY ord DESC, sub DESC
                     LIMIT ctx.lim
                 ) last
           ) h ON TRUE",
    )
    .bind(super::column(wanted, |w| w.0))
    .bind(super::column(wanted, |w| w.1))
    .bind(IMAGE_MARKER)
    .bind(VOICE_MARKER)
    .bind(DOCUMENT_MARKER)
    .fetch_all(&mut *conn)
    .await?;
    let mut found: Vec<Option<(ReplyContext, Vec<Turn>)>> = vec![None; wanted.len()];
    for r in rows {
        let turns = r.turn_customer.into_iter().zip(r.turn_text).collect();
        if let Some(slot) = usize::try_from(r.n - 1).ok().and_then(|i| found.get_mut(i)) {
            *slot = Some((r.ctx, turns));
        }
    }
    Ok(found)
}

/// Stores a voice note's transcript, redacted, as its message's text, adding the kinds of
/// personal data taken out of it; from then on it is a turn of the history like typed text.
/// `false` when the message has text already (a redelivered job stored it first) or was erased
/// meanwhile (erasure empties its metadata, media id included): nothing is written then.
pub async fn store_transcript(
    pool: &PgPool,
    message_id: i64,
    text_redacted: &str,
    pii_types: &[String],
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE messages
            SET text_redacted = $2,
                pii_types = ARRAY(SELECT DISTINCT t FROM unnest(pii_types || $3::text[]) AS t ORDER BY t)
          WHERE id = $1 AND text_redacted IS NULL AND metadata ? 'id'",
    )
    .bind(message_id)
    .bind(text_redacted)
    .bind(pii_types)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
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

/// A reply to record, with its parts (numbered from 0), all in `state`.
#[derive(Debug, Clone)]
pub struct ReplyRecord {
    /// The message answered. The reply and its parts are recorded in its conversation and
    /// session as they are when recorded, which a customer's number change may have moved
    /// since the context was read.
    pub message_id: i64,
    pub channel_id: i64,
    pub outcome: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub input_tokens: Option<i32>,
    pub output_tokens: Option<i32>,
    pub canned: bool,
    pub failures: serde_json::Value,
    /// `(kind, text)`: kind `reply` or `handover_ack`.
    pub parts: Vec<(String, String)>,
    pub state: String,
}

impl ReplyRecord {
    pub fn new(
        ctx: &ReplyContext,
        r: &NewReply<'_>,
        parts: Vec<(String, String)>,
        state: &str,
    ) -> Self {
        Self {
            message_id: ctx.message_id,
            channel_id: ctx.channel_id,
            outcome: r.outcome.to_string(),
            provider: r.provider.map(String::from),
            model: r.model.map(String::from),
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            canned: r.canned,
            failures: r.failures.clone(),
            parts,
            state: state.to_string(),
        }
    }
}

/// Records replies and their parts, each unless its message already has a reply; answers, in
/// order, whether each was recorded now. One statement per run of distinct messages.
pub async fn record_replies(
    conn: &mut PgConnection,
    replies: &[ReplyRecord],
) -> sqlx::Result<Vec<bool>> {
    let mut fresh = Vec::with_capacity(replies.len());
    for run in super::distinct_runs(replies, |r| [r.message_id]) {
        fresh.extend(record_distinct(&mut *conn, run).await?);
    }
    Ok(fresh)
}

async fn record_distinct(
    conn: &mut PgConnection,
    replies: &[ReplyRecord],
) -> sqlx::Result<Vec<bool>> {
    let parts: Vec<(&ReplyRecord, i32, &(String, String))> = replies
        .iter()
        .flat_map(|r| (0..).zip(&r.parts).map(move |(n, p)| (r, n, p)))
        .collect();
    let rows: Vec<(i64, bool)> = sqlx::query_as(
        "WITH r AS (
             SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::int4[],
                                  $6::int4[], $7::bool[], $8::jsonb[], $15::bool[])
                 WITH ORDINALITY AS r(message_id, outcome, provider, model, input_tokens,
                                      output_tokens, canned, failures, settles, n)
         ), m AS (
             -- The conversation and session of each message as they are now, not as the
             -- context read them before the model ran: a customer's number change may have
             -- merged the conversation into another meanwhile (store::conversations::
             -- follow_identity_change). A locking read waits for such a merge and sees the row
             -- it left.
             SELECT m.id, m.conversation_id, m.session_no FROM messages m
              WHERE m.id IN (SELECT message_id FROM r)
                FOR SHARE
         ), inserted AS (
             INSERT INTO replies (message_id, conversation_id, outcome, provider, model,
                                  input_tokens, output_tokens, canned, failures)
             SELECT r.message_id, m.conversation_id, outcome, provider, model, input_tokens,
                    output_tokens, canned, failures FROM r JOIN m ON m.id = r.message_id
             ON CONFLICT (message_id) DO NOTHING
             RETURNING message_id
         ), parts AS (
             INSERT INTO outbound_messages (conversation_id, channel_id, reply_to, session_no,
                                            part_no, kind, body, state)
             SELECT m.conversation_id, p.channel_id, p.reply_to, m.session_no, p.part_no, p.kind,
                    p.body, p.state
               FROM unnest($9::int8[], $10::int8[], $11::int4[], $12::text[], $13::text[],
                           $14::text[])
                    AS p(reply_to, channel_id, part_no, kind, body, state)
               JOIN inserted i ON i.message_id = p.reply_to
               JOIN m ON m.id = p.reply_to
               -- Nothing is written to a customer erased meanwhile (crate::erasure).
               JOIN conversations c ON c.id = m.conversation_id
                                   AND c.customer_key NOT LIKE 'erased:%'
             ON CONFLICT (reply_to, kind, part_no) DO NOTHING
         ), settled AS (
             -- Nothing of this reply will be sent (suppressed, shadow, window closed): the bot
             -- is done with the message, which stops counting as waiting for an answer.
             UPDATE messages SET answered_at = COALESCE(answered_at, now())
              WHERE id IN (SELECT message_id FROM inserted JOIN r USING (message_id)
                            WHERE r.settles)
         )
         SELECT r.message_id, EXISTS (SELECT 1 FROM inserted i WHERE i.message_id = r.message_id)
           FROM r ORDER BY r.n",
    )
    .bind(super::column(replies, |r| r.message_id))
    .bind(super::column(replies, |r| r.outcome.as_str()))
    .bind(super::column(replies, |r| r.provider.as_deref()))
    .bind(super::column(replies, |r| r.model.as_deref()))
    .bind(super::column(replies, |r| r.input_tokens))
    .bind(super::column(replies, |r| r.output_tokens))
    .bind(super::column(replies, |r| r.canned))
    .bind(super::column(replies, |r| &r.failures))
    .bind(super::column(&parts, |(r, _, _)| r.message_id))
    .bind(super::column(&parts, |(r, _, _)| r.channel_id))
    .bind(super::column(&parts, |(_, n, _)| *n))
    .bind(super::column(&parts, |(_, _, p)| p.0.as_str()))
    .bind(super::column(&parts, |(_, _, p)| p.1.as_str()))
    .bind(super::column(&parts, |(r, _, _)| r.state.as_str()))
    .bind(super::column(replies, |r| {
        r.parts.is_empty() || r.state != "pending"
    }))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(_, fresh)| fresh).collect())
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
    /// Sends made before the last replay reset `attempts`: send N of this round is numbered
    /// `send_offset + N` in its callback data, so numbers never repeat.
    pub send_offset: i32,
    pub sending_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Where the age bound of its retries counts from: `created_at`, or the last replay.
    pub retries_since: DateTime<Utc>,
    /// The customer's message this answers (quoted by the first part).
    pub inbound_wamid: Option<String>,
    pub reply_to: Option<i64>,
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub last_customer_message_at: Option<DateTime<Utc>>,
    /// Why a `failed` part failed: Meta's code, or our reason.
    pub error_code: Option<i32>,
    pub fail_reason: Option<String>,
    /// What the model reads of it, when that is not its body (a template the bot answers after).
    pub history_text: Option<String>,
    /// An agent's file, buttons or list: the Graph API's message fields sent instead of the body
    /// (migration 0033).
    pub payload: Option<serde_json::Value>,
}

impl Part {
    /// The number of the send the part holds: its last claimed one (`send_offset + attempts`).
    /// The next send is this plus one.
    pub fn send_no(&self) -> i32 {
        self.send_offset + self.attempts
    }
}

const PART: &str = "SELECT o.id, o.conversation_id, o.channel_id, o.kind, o.part_no, o.body, o.state,
        o.attempts, o.send_offset, o.sending_at, o.created_at, COALESCE(o.retries_since, o.created_at) AS retries_since,
        m.wamid AS inbound_wamid, o.reply_to, c.wa_id, c.user_id,
        c.last_customer_message_at, o.error_code, o.fail_reason, o.history_text, o.payload
   FROM outbound_messages o
   JOIN conversations c ON c.id = o.conversation_id
   LEFT JOIN messages m ON m.id = o.reply_to";

/// Replaces what the model reads of a template part, its name and parameters, with its wording
/// (redacted), unless that was done already or the customer was erased meanwhile (erasure
/// empties the body and the history text).
pub async fn set_template_wording(pool: &PgPool, part_id: i64, text: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbound_messages SET history_text = $2
          WHERE id = $1 AND kind = 'template' AND starts_with(history_text, $3) AND body <> ''",
    )
    .bind(part_id)
    .bind(text)
    .bind(TEMPLATE_MARKER)
    .execute(pool)
    .await?;
    Ok(())
}

/// Parts by id, in the order given (the parts of an agent's message, or a single part); ids
/// that do not exist are left out.
pub async fn parts(pool: &PgPool, ids: &[i64]) -> sqlx::Result<Vec<Part>> {
    sqlx::query_as(&format!(
        "{PART} JOIN unnest($1::int8[]) WITH ORDINALITY AS i(id, n) ON i.id = o.id ORDER BY i.n"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// The parts of several replies (by the message each answers), each in order; one query.
pub async fn reply_parts_many(
    conn: &mut PgConnection,
    message_ids: &[i64],
) -> sqlx::Result<Vec<Vec<Part>>> {
    let parts: Vec<Part> = sqlx::query_as(&format!(
        "{PART} WHERE o.reply_to = ANY($1) AND o.kind = 'reply' ORDER BY o.reply_to, o.part_no"
    ))
    .bind(message_ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_reply: std::collections::HashMap<i64, Vec<Part>> = std::collections::HashMap::new();
    for p in parts {
        by_reply
            .entry(p.reply_to.unwrap_or_default())
            .or_default()
            .push(p);
    }
    Ok(message_ids
        .iter()
        .map(|id| by_reply.get(id).cloned().unwrap_or_default())
        .collect())
}

/// The result of the check made right before a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Marked `sending`: send now, as the part's send number `send_no` (`send_offset +
    /// attempts` after the claim), which the send's callback carries. Taken from the row the
    /// claim changed, not from a part read before: a configuration failure reopened since gives
    /// its attempt back, and a callback numbered from the older read named a send the part did
    /// not hold, so its statuses were parked instead of reconciling it.
    Go { send_no: i32 },
    /// A human owns the conversation (or the bot is off for the number): recorded as
    /// suppressed, not sent.
    Suppressed,
    /// Not pending any more (already sent, failed, or being sent).
    NotPending(String),
}

/// For each part, in one statement: if it is still pending, the bot still owns the conversation
/// and has owned it since the message the part answers arrived, and the bot is still on for the
/// number (an acknowledgement of a handover and an agent's message are sent to a human-owned
/// conversation by design) it becomes `sending`; if it is pending but one of those no longer
/// holds it is recorded `suppressed`; otherwise its state is reported. Ids must be distinct (a part is sent
/// by one job at a time); a repeated id is answered with its state after the first.
pub async fn claim_many(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<Vec<Claim>> {
    let rows: Vec<(i64, String, String, Option<i32>)> = sqlx::query_as(
        "WITH input AS (
             SELECT DISTINCT id FROM unnest($1::int8[]) AS i(id)
         ), target AS (
             -- A handover's acknowledgement goes out although a human now owns the
             -- conversation, but only the acknowledgement of the handover that happened: a
             -- model that asks for a person after a keyword already handed over must not
             -- acknowledge a second time. An agent's message or template goes out whoever owns
             -- the conversation: the agent wrote it on purpose, and may release the conversation
             -- before it is sent. The bot's own answer to a customer's message also stays
             -- unsent when a human took the conversation after that message arrived, even if
             -- it is back with the bot now: whoever took it answered the message, or chose not
             -- to (a take and a release while the model thinks must not give two answers).
             SELECT o.id, o.state,
                    -- The bot's own parts also wait on the number: switched off (bot mode
                    -- `off`, or the channel disabled) while they were written or queued, they
                    -- stay unsent, read here from the row, fresher than any cache.
                    ((c.owner = 'bot' AND b.bot_on
                      AND NOT EXISTS (SELECT 1 FROM handover_events h JOIN messages m ON m.id = o.reply_to
                                       WHERE h.conversation_id = o.conversation_id
                                         AND h.kind = 'handover' AND h.created_at >= m.received_at))
                     OR o.kind IN ('agent', 'template')
                     OR (o.kind = 'handover_ack'
                         AND EXISTS (SELECT 1 FROM handover_events h
                                      WHERE h.conversation_id = o.conversation_id
                                        AND h.kind = 'handover' AND h.message_id = o.reply_to)))
                    AS may_send,
                    NOT b.bot_on AS bot_off
               FROM outbound_messages o
               JOIN input i ON i.id = o.id
               JOIN conversations c ON c.id = o.conversation_id
               JOIN channels ch ON ch.id = o.channel_id
               CROSS JOIN LATERAL (SELECT ch.enabled AND ch.bot_mode <> 'off' AS bot_on) b
         ), changed AS (
             UPDATE outbound_messages o SET
                    state = CASE WHEN t.may_send THEN 'sending' ELSE 'suppressed' END,
                    sending_at = CASE WHEN t.may_send THEN now() ELSE o.sending_at END,
                    attempts = CASE WHEN t.may_send THEN o.attempts + 1 ELSE o.attempts END,
                    -- A send starts: a failure of an earlier one (a reopened part keeps its
                    -- code until here, see apply_statuses) no longer describes the part.
                    error_code = CASE WHEN t.may_send THEN NULL ELSE o.error_code END,
                    error_title = CASE WHEN t.may_send THEN NULL ELSE o.error_title END,
                    fail_reason = CASE WHEN t.may_send THEN o.fail_reason
                                       WHEN t.bot_off THEN 'the bot is off on this number'
                                       ELSE 'a human owns the conversation' END
               FROM target t
              WHERE o.id = t.id AND o.state = 'pending'
          RETURNING o.id, o.state, o.reply_to, o.send_offset + o.attempts AS send_no
         ), settled AS (
             -- A suppressed part's message gets no answer from the bot: it stops counting as
             -- waiting for one (`wafleet_oldest_unanswered_seconds`).
             UPDATE messages SET answered_at = COALESCE(answered_at, now())
              WHERE id IN (SELECT reply_to FROM changed WHERE state = 'suppressed')
         )
         SELECT t.id, t.state, COALESCE(c.state, ''), c.send_no
           FROM target t LEFT JOIN changed c ON c.id = t.id",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let by_id: std::collections::HashMap<i64, Claim> = rows
        .into_iter()
        .map(|(id, before, after, send_no)| {
            let claim = match (after.as_str(), send_no) {
                ("sending", Some(send_no)) => Claim::Go { send_no },
                ("suppressed", _) => Claim::Suppressed,
                _ => Claim::NotPending(before),
            };
            (id, claim)
        })
        .collect();
    Ok(ids
        .iter()
        .enumerate()
        .map(|(n, id)| match by_id.get(id) {
            Some(claim) if !ids[..n].contains(id) => claim.clone(),
            Some(_) => Claim::NotPending("sending".into()),
            None => Claim::NotPending("missing".into()),
        })
        .collect())
}

/// Whether putting a claimed part back to `pending` keeps the attempt its claim counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The send was tried (a transient error, a resend after an ambiguous send).
    Counted,
    /// The send was held back (a throttle, a paused channel, a request that never left), which
    /// says nothing about whether the message can go, so it must not use up the attempts
    /// transient errors are bounded by.
    GivenBack,
}

/// Puts a part claimed for sending back to `pending`.
pub async fn unclaim(pool: &PgPool, id: i64, attempt: Attempt) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbound_messages SET state = 'pending', attempts = GREATEST(attempts - $2, 0)
          WHERE id = $1 AND state = 'sending'",
    )
    .bind(id)
    .bind(i32::from(attempt == Attempt::GivenBack))
    .execute(pool)
    .await?;
    Ok(())
}

/// A part Meta failed after accepting it, still `failed` under that wamid:
/// `(id, channel id, attempts, where its retries' age counts from)`.
pub async fn failed_part(
    pool: &PgPool,
    wamid: &str,
) -> sqlx::Result<Option<(i64, i64, i32, DateTime<Utc>)>> {
    sqlx::query_as(
        "SELECT id, channel_id, attempts, COALESCE(retries_since, created_at) FROM outbound_messages
          WHERE wamid = $1 AND state = 'failed'",
    )
    .bind(wamid)
    .fetch_optional(pool)
    .await
}

/// The conversation of the bot's part Meta failed under `wamid` with 131047 (the 24-hour
/// window had closed), and the customer's message the part answers, when no handover or
/// release happened since the failure was recorded other than the handover for that message:
/// the handover that failure calls for is still to be made (the run that recorded it stopped
/// before making it), or was made and its event may not have gone out (Redis refused it).
pub async fn re_engagement_pending(
    pool: &PgPool,
    wamid: &str,
) -> sqlx::Result<Option<(i64, Option<i64>)>> {
    sqlx::query_as(
        "SELECT o.conversation_id, o.reply_to FROM outbound_messages o
          WHERE o.wamid = $1 AND o.state = 'failed' AND o.error_code = 131047
            AND o.kind NOT IN ('agent', 'template')
            AND NOT EXISTS (SELECT 1 FROM handover_events h
                             WHERE h.conversation_id = o.conversation_id
                               AND h.created_at >= o.updated_at
                               AND NOT COALESCE(h.kind = 'handover'
                                                AND h.message_id = o.reply_to, FALSE))",
    )
    .bind(wamid)
    .fetch_optional(pool)
    .await
}

/// What reopening a failed part sets: `pending`, with the failed message's wamid and delivery
/// forgotten (statuses of the failed message no longer find it by wamid). Its error code stays
/// until the resend is claimed: that is how a late status of the failed send, which still
/// carries that send's callback, is told from one of a send in flight (see `apply_statuses`).
/// A failure of it from now on is a new one, for dashboards to hear of
/// (`crate::stages::announce_failures`), and refines none. The forgotten wamid joins the part's
/// other sends (`other_wamids`, as a digest, migration 0040): a late status of the failed
/// message is then known for what it is, and never taken for a send Meta took without our
/// hearing of it (see `apply_statuses`).
const REOPEN: &str = "state = 'pending', wamid = NULL, sending_at = NULL, delivery = NULL,
                      delivery_rank = 0, delivery_at = NULL, failure_announced = FALSE,
                      failure_refines = NULL,
                      other_wamids = CASE WHEN wamid IS NULL THEN other_wamids
                                          WHEN wamid LIKE 'erased:%'
                                          THEN array_append(other_wamids, wamid)
                                          ELSE array_append(other_wamids, erased_wamid(wamid))
                                     END";

/// Puts a failed part back to `pending` for the sender to send again, its wamid and delivery
/// forgotten (statuses of the failed message no longer find it). Only the sender calls it, right
/// before claiming the part.
///
/// `give_back`: the failed send's attempt is given back too (a configuration failure is the
/// channel's, and uses none of the part's attempts).
pub async fn reopen_failed(pool: &PgPool, id: i64, give_back: bool) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "UPDATE outbound_messages
            SET {REOPEN}, attempts = GREATEST(attempts - CASE WHEN $2 THEN 1 ELSE 0 END, 0)
          WHERE id = $1 AND state = 'failed'"
    ))
    .bind(id)
    .bind(give_back)
    .execute(pool)
    .await?;
    Ok(())
}

/// How the reason of a part given up after unanswered sends begins (the sender writes it): Meta
/// may have delivered one of them without a status ever coming back.
pub const UNANSWERED: &str = "gave up: Meta answered none of";

/// What a replay did to a send job's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reopened {
    /// Failed parts put back to `pending`.
    pub reopened: u64,
    /// Failed parts left failed because their sends went unanswered ([`UNANSWERED`]).
    pub unanswered: u64,
}

/// What an operator's replay of a send job's dead letter does first: the job's failed parts (the
/// parts it names, or every part of the reply to a message) go back to `pending` with a fresh round of
/// retries (attempts 0, age counted from now) and their failure forgotten. Parts Meta accepted,
/// suppressed or still pending are left alone, so a replay never sends an accepted part again.
/// Nor, unless `resend_unanswered`, a part given up because Meta answered none of its sends:
/// one of them may have reached the customer, and sending again is the operator's call. When the
/// job has such a part and `resend_unanswered` is not given, nothing is reopened (the reply's
/// parts go out in order, so its later parts could not go without it either): the caller keeps
/// the dead letter for a replay that asks.
pub async fn reopen_for_replay(
    pool: &PgPool,
    outbound_ids: &[i64],
    reply_to: Option<i64>,
    resend_unanswered: bool,
) -> sqlx::Result<Reopened> {
    let (reopened, unanswered): (i64, i64) = sqlx::query_as(&format!(
        "WITH target AS (
             SELECT id, starts_with(COALESCE(fail_reason, ''), $3) AS unanswered
               FROM outbound_messages
              WHERE state = 'failed' AND (id = ANY($1) OR (reply_to = $2 AND kind = 'reply'))
         ), reopened AS (
             UPDATE outbound_messages o
                SET {REOPEN}, send_offset = o.send_offset + o.attempts, attempts = 0,
                    retries_since = now(),
                    error_code = NULL, error_title = NULL, fail_reason = NULL
               FROM target t
              WHERE o.id = t.id AND o.state = 'failed'
                AND ($4 OR NOT EXISTS (SELECT 1 FROM target WHERE unanswered))
          RETURNING o.id
         )
         SELECT (SELECT count(*) FROM reopened),
                (SELECT count(*) FROM target WHERE unanswered AND NOT $4)"
    ))
    .bind(outbound_ids)
    .bind(reply_to)
    .bind(UNANSWERED)
    .bind(resend_unanswered)
    .fetch_one(pool)
    .await?;
    Ok(Reopened {
        reopened: reopened as u64,
        unanswered: unanswered as u64,
    })
}

pub async fn mark_failed(
    pool: &PgPool,
    id: i64,
    code: Option<i64>,
    reason: &str,
) -> sqlx::Result<()> {
    // The message it answers will get no answer from the bot: it stops counting as waiting for
    // one (`wafleet_oldest_unanswered_seconds`).
    sqlx::query(
        "WITH failed AS (
             UPDATE outbound_messages SET state = 'failed', error_code = COALESCE($2, error_code),
                    fail_reason = $3
              WHERE id = $1 AND state IN ('pending', 'sending')
          RETURNING reply_to
         )
         UPDATE messages SET answered_at = COALESCE(answered_at, now())
          WHERE id IN (SELECT reply_to FROM failed)",
    )
    .bind(id)
    .bind(code.map(|c| c as i32))
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Stops a channel's sends until `until` (a configuration error needs an operator). `code` is
/// Meta's error code, `None` for a pause of our own (no access token, or one that does not
/// decrypt): it decides whether a new access token lifts the pause.
pub async fn pause_channel(
    pool: &PgPool,
    channel_id: i64,
    until: DateTime<Utc>,
    code: Option<i64>,
    reason: &str,
) -> sqlx::Result<()> {
    // A pause keeps the channel's parts for the operator's fix: their retry age starts again, so
    // a long outage does not leave them too old to send once it is fixed.
    sqlx::query(
        "WITH kept AS (
             UPDATE outbound_messages SET retries_since = now()
              WHERE channel_id = $1 AND state = 'pending'
         )
         UPDATE channels SET sends_paused_until = $2, sends_paused_reason = $3,
                             sends_paused_code = $4
          WHERE id = $1",
    )
    .bind(channel_id)
    .bind(until)
    .bind(reason)
    .bind(code.map(|c| c as i32))
    .execute(pool)
    .await?;
    Ok(())
}
