//! Conversations, inbound messages, handover events and delivery state (migration 0002).
//!
//! Writes that must happen together happen in one transaction here; callers never compose SQL.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// A conversation as the stages see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Conversation {
    pub id: i64,
    pub channel_id: i64,
    pub session_no: i32,
    pub owner: String,
    pub last_customer_message_at: Option<DateTime<Utc>>,
    pub last_activity_at: DateTime<Utc>,
}

impl Conversation {
    pub fn bot_owns(&self) -> bool {
        self.owner == "bot"
    }
}

/// Who the customer is, as far as Meta told us.
#[derive(Debug, Clone)]
pub struct Customer {
    pub key: String,
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub profile_name: Option<String>,
}

/// How a message touches its conversation: who sent it, when (the message's own time), the
/// channel's session timeout, and whether it opens or extends the 24-hour window.
#[derive(Debug, Clone)]
pub struct Touch {
    pub customer: Customer,
    pub at: DateTime<Utc>,
    pub session_timeout_secs: i64,
    pub customer_message: bool,
}

// The statements below share their parameters: $1 channel id (or, for a known conversation, its
// id), $2 customer key (or session number), $3 wa_id, $4 user_id, $5 profile name, $6 the
// message's time, $7 that time again when the message extends the window, $8 the session timeout
// in seconds; then, for the message: $9 wamid … $17 its action if the bot owns the conversation.

/// Finds or creates the conversation; a conversation idle for longer than the session timeout
/// (by message times) starts a new session.
///
/// One customer, one conversation, whichever way Meta names them: the key is the phone number
/// when the message carries one, else the business-scoped user id (BSUID), and a customer can
/// move between the two (a username hides the phone; messaging the phone brings it back). So the
/// key of the message is used only when no conversation of the channel already has this BSUID:
/// a conversation keyed by the phone is found by a message with the BSUID alone, and one keyed
/// by the BSUID by a later message with phone and BSUID (which records the phone on it). The
/// conversation found by BSUID is read `FOR SHARE`: while an erasure holds it, the read waits and
/// then sees it without the BSUID, so the message does not bring back the erased phone as its key.
macro_rules! touch_sql {
    () => {
        "INSERT INTO conversations (channel_id, customer_key, wa_id, user_id, profile_name,
                                    session_started_at, last_customer_message_at, last_activity_at)
         VALUES ($1,
                 COALESCE((SELECT customer_key FROM conversations
                            WHERE channel_id = $1 AND customer_key = $2),
                          (SELECT customer_key FROM conversations
                            WHERE channel_id = $1 AND user_id = $4 ORDER BY id LIMIT 1
                              FOR SHARE),
                          $2),
                 $3, $4, $5, $6, $7, $6)
         ON CONFLICT (channel_id, customer_key) DO UPDATE SET
             wa_id = COALESCE(EXCLUDED.wa_id, conversations.wa_id),
             user_id = COALESCE(EXCLUDED.user_id, conversations.user_id),
             profile_name = COALESCE(EXCLUDED.profile_name, conversations.profile_name),
             session_no = CASE WHEN $6 - conversations.last_activity_at > make_interval(secs => $8)
                               THEN conversations.session_no + 1 ELSE conversations.session_no END,
             session_started_at = CASE WHEN $6 - conversations.last_activity_at > make_interval(secs => $8)
                               THEN $6 ELSE conversations.session_started_at END,
             last_customer_message_at = GREATEST(conversations.last_customer_message_at, $7),
             last_activity_at = GREATEST(conversations.last_activity_at, $6)"
    };
}

/// [`touch_sql`] for a conversation whose id and session are known (from the session cache):
/// an update by primary key that matches nothing when the cache is stale (another session
/// started, this message opens a new one, or the customer was erased meanwhile: their next
/// message must start a new conversation, not land in the erased one; or the number passed to
/// someone else, whose messages must not land in the former holder's conversation).
macro_rules! touch_known_sql {
    () => {
        "UPDATE conversations SET
             wa_id = COALESCE($3, wa_id),
             user_id = COALESCE($4, user_id),
             profile_name = COALESCE($5, profile_name),
             last_customer_message_at = GREATEST(last_customer_message_at, $7),
             last_activity_at = GREATEST(last_activity_at, $6)
         WHERE id = $1 AND session_no = $2 AND customer_key NOT LIKE 'erased:%'
           AND customer_key NOT LIKE 'moved:%'
           AND NOT ($6 - last_activity_at > make_interval(secs => $8))"
    };
}

macro_rules! conversation_columns {
    () => {
        " RETURNING id, channel_id, session_no, owner, last_customer_message_at, last_activity_at"
    };
}

/// Touches the conversation and stores the message in one statement. The message's action is
/// `$17` when the bot owns the conversation, else `none`; it is not stored when it already is
/// (a redelivery).
macro_rules! store_message_sql {
    ($touch:expr) => {
        concat!(
            "WITH c AS (",
            $touch,
            conversation_columns!(),
            "), m AS (
                 INSERT INTO messages (conversation_id, channel_id, session_no, wamid, message_type,
                                       text_redacted, pii_types, metadata, context_wamid, sent_at,
                                       source_entry, owner_at_arrival, action)
                 SELECT c.id, c.channel_id, c.session_no, $9, $10, $11, $12, $13, $14, $15, $16,
                        c.owner, CASE WHEN c.owner = 'bot' THEN $17 ELSE 'none' END
                   FROM c
                 ON CONFLICT (channel_id, wamid) DO NOTHING
                 RETURNING id, conversation_id, action, owner_at_arrival
             )
             SELECT c.*, m.id AS message_id, m.action, m.owner_at_arrival FROM c LEFT JOIN m ON TRUE"
        )
    };
}

/// Which conversation a message touches.
#[derive(Debug, Clone, Copy)]
pub enum ConversationRef {
    /// The channel's conversation with the customer, found or created.
    Channel(i64),
    /// A conversation and session known from the session cache.
    Known { id: i64, session_no: i32 },
}

fn touch_query<'q, O: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>>(
    sql: &'q str,
    target: ConversationRef,
    t: &'q Touch,
) -> sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments> {
    let q = sqlx::query_as(sql);
    let q = match target {
        ConversationRef::Channel(channel_id) => q.bind(channel_id).bind(t.customer.key.as_str()),
        ConversationRef::Known { id, session_no } => q.bind(id).bind(session_no),
    };
    q.bind(t.customer.wa_id.as_deref())
        .bind(t.customer.user_id.as_deref())
        .bind(t.customer.profile_name.as_deref())
        .bind(t.at)
        .bind(t.customer_message.then_some(t.at))
        .bind(t.session_timeout_secs as f64)
}

/// Finds (or creates) the conversation and records activity at the message's time. `None`:
/// the conversation was `Known` but the cache was stale.
pub async fn touch(
    tx: &mut Transaction<'_, Postgres>,
    target: ConversationRef,
    t: &Touch,
) -> sqlx::Result<Option<Conversation>> {
    let sql = match target {
        ConversationRef::Channel(_) => concat!(touch_sql!(), conversation_columns!()),
        ConversationRef::Known { .. } => concat!(touch_known_sql!(), conversation_columns!()),
    };
    touch_query(sql, target, t).fetch_optional(&mut **tx).await
}

/// Binds a message's columns, `wamid` through `action`, as the next nine parameters.
fn bind_message<'q, O>(
    q: sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>,
    m: &'q NewMessage,
) -> sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments> {
    q.bind(m.wamid.as_str())
        .bind(m.message_type.as_str())
        .bind(m.text_redacted.as_deref())
        .bind(&m.pii_types)
        .bind(&m.metadata)
        .bind(m.context_wamid.as_deref())
        .bind(m.sent_at)
        .bind(m.source_entry.as_str())
        .bind(m.action)
}

#[derive(sqlx::FromRow)]
struct StoreRow {
    #[sqlx(flatten)]
    conversation: Conversation,
    message_id: Option<i64>,
    action: Option<String>,
    owner_at_arrival: Option<String>,
}

impl StoreRow {
    /// The conversation, and the message if this statement stored it.
    fn into_parts(self) -> (Conversation, Option<StoredMessage>) {
        let stored = match (self.message_id, self.action, self.owner_at_arrival) {
            (Some(id), Some(action), Some(owner_at_arrival)) => Some(StoredMessage {
                id,
                conversation_id: self.conversation.id,
                action,
                owner_at_arrival,
            }),
            _ => None,
        };
        (self.conversation, stored)
    }
}

/// [`touch`] of the channel's conversation and [`insert_message`] in one statement (one round
/// trip, one commit), for messages that need nothing else written with them. `m.action` is the
/// action if the bot owns the conversation. Returns the conversation and the stored message,
/// `None` if it was stored before. (A conversation known from the session cache goes through
/// [`store_known_many`] instead.)
pub async fn store_message(
    pool: &PgPool,
    channel_id: i64,
    t: &Touch,
    m: &NewMessage,
) -> sqlx::Result<(Conversation, Option<StoredMessage>)> {
    let sql = store_message_sql!(touch_sql!());
    let row: StoreRow = bind_message(touch_query(sql, ConversationRef::Channel(channel_id), t), m)
        .fetch_one(pool)
        .await?;
    Ok(row.into_parts())
}

/// A message for a conversation known from the session cache, with its [`Touch`]: what
/// [`store_known_many`] stores for many jobs at once.
#[derive(Debug, Clone)]
pub struct KnownMessage {
    pub conversation_id: i64,
    pub session_no: i32,
    pub touch: Touch,
    pub message: NewMessage,
}

/// [`touch`] with `ConversationRef::Known` and [`insert_message`] for many messages, in one
/// statement per run of distinct conversations: each gets the conversation and the stored
/// message (`None` if it was stored before), or `None` when its cache entry was stale and
/// nothing was written.
pub async fn store_known_many(
    conn: &mut PgConnection,
    items: &[KnownMessage],
) -> sqlx::Result<Vec<Option<(Conversation, Option<StoredMessage>)>>> {
    let mut found = vec![None; items.len()];
    let mut offset = 0;
    for run in super::distinct_runs(items, |k| [k.conversation_id]) {
        let rows: Vec<BatchStoreRow> = sqlx::query_as(
            "WITH input AS (
                 SELECT * FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[], $5::text[],
                                      $6::timestamptz[], $7::timestamptz[], $8::float8[],
                                      $9::text[], $10::text[], $11::text[], $12::jsonb[],
                                      $13::jsonb[], $14::text[], $15::timestamptz[], $16::text[],
                                      $17::text[])
                   WITH ORDINALITY AS i(id, session_no, wa_id, user_id, profile_name, at,
                                        customer_at, timeout, wamid, message_type, text_redacted,
                                        pii_types, metadata, context_wamid, sent_at, source_entry,
                                        action, n)
             ), c AS (
                 UPDATE conversations SET
                     wa_id = COALESCE(i.wa_id, conversations.wa_id),
                     user_id = COALESCE(i.user_id, conversations.user_id),
                     profile_name = COALESCE(i.profile_name, conversations.profile_name),
                     last_customer_message_at =
                         GREATEST(conversations.last_customer_message_at, i.customer_at),
                     last_activity_at = GREATEST(conversations.last_activity_at, i.at)
                   FROM input i
                  WHERE conversations.id = i.id AND conversations.session_no = i.session_no
                    AND conversations.customer_key NOT LIKE 'erased:%'
                    AND NOT (i.at - conversations.last_activity_at > make_interval(secs => i.timeout))
                 RETURNING i.n, conversations.id, conversations.channel_id,
                           conversations.session_no, conversations.owner,
                           conversations.last_customer_message_at, conversations.last_activity_at
             ), m AS (
                 INSERT INTO messages (conversation_id, channel_id, session_no, wamid, message_type,
                                       text_redacted, pii_types, metadata, context_wamid, sent_at,
                                       source_entry, owner_at_arrival, action)
                 SELECT c.id, c.channel_id, c.session_no, i.wamid, i.message_type, i.text_redacted,
                        ARRAY(SELECT jsonb_array_elements_text(i.pii_types)), i.metadata,
                        i.context_wamid, i.sent_at, i.source_entry, c.owner,
                        CASE WHEN c.owner = 'bot' THEN i.action ELSE 'none' END
                   FROM c JOIN input i ON i.n = c.n
                 ON CONFLICT (channel_id, wamid) DO NOTHING
                 RETURNING id, conversation_id, action, owner_at_arrival
             )
             SELECT c.*, m.id AS message_id, m.action, m.owner_at_arrival FROM c LEFT JOIN m ON m.conversation_id = c.id",
        )
        .bind(super::column(run, |k| k.conversation_id))
        .bind(super::column(run, |k| k.session_no))
        .bind(super::column(run, |k| k.touch.customer.wa_id.as_deref()))
        .bind(super::column(run, |k| k.touch.customer.user_id.as_deref()))
        .bind(super::column(run, |k| k.touch.customer.profile_name.as_deref()))
        .bind(super::column(run, |k| k.touch.at))
        .bind(super::column(run, |k| k.touch.customer_message.then_some(k.touch.at)))
        .bind(super::column(run, |k| k.touch.session_timeout_secs as f64))
        .bind(super::column(run, |k| k.message.wamid.as_str()))
        .bind(super::column(run, |k| k.message.message_type.as_str()))
        .bind(super::column(run, |k| k.message.text_redacted.as_deref()))
        .bind(super::column(run, |k| serde_json::json!(k.message.pii_types)))
        .bind(super::column(run, |k| &k.message.metadata))
        .bind(super::column(run, |k| k.message.context_wamid.as_deref()))
        .bind(super::column(run, |k| k.message.sent_at))
        .bind(super::column(run, |k| k.message.source_entry.as_str()))
        .bind(super::column(run, |k| k.message.action))
        .fetch_all(&mut *conn)
        .await?;
        for r in rows {
            let Some(slot) = usize::try_from(r.n - 1)
                .ok()
                .and_then(|i| found.get_mut(offset + i))
            else {
                continue;
            };
            *slot = Some(r.row.into_parts());
        }
        offset += run.len();
    }
    Ok(found)
}

#[derive(sqlx::FromRow)]
struct BatchStoreRow {
    n: i64,
    #[sqlx(flatten)]
    row: StoreRow,
}

/// An inbound message to store (text already redacted).
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub wamid: String,
    pub message_type: String,
    pub text_redacted: Option<String>,
    pub pii_types: Vec<String>,
    pub metadata: serde_json::Value,
    pub context_wamid: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    /// The stream entry the message came from.
    pub source_entry: String,
    /// What the message calls for if the bot owns the conversation.
    pub action: &'static str,
}

/// A stored inbound message, as the stage needs it to finish its follow-up work.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredMessage {
    pub id: i64,
    pub conversation_id: i64,
    pub action: String,
    /// Who owned the conversation when it arrived (`bot` or `human`).
    pub owner_at_arrival: String,
}

/// Inserts the message unless it is already stored. Returns `(message, inserted)`.
pub async fn insert_message(
    tx: &mut Transaction<'_, Postgres>,
    conversation: &Conversation,
    m: &NewMessage,
) -> sqlx::Result<Option<StoredMessage>> {
    let q = sqlx::query_as(
        "INSERT INTO messages (conversation_id, channel_id, session_no, owner_at_arrival, wamid,
                               message_type, text_redacted, pii_types, metadata, context_wamid,
                               sent_at, source_entry, action)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (channel_id, wamid) DO NOTHING
         RETURNING id, conversation_id, action, owner_at_arrival",
    )
    .bind(conversation.id)
    .bind(conversation.channel_id)
    .bind(conversation.session_no)
    .bind(&conversation.owner);
    bind_message(q, m).fetch_optional(&mut **tx).await
}

pub async fn find_message(
    pool: &PgPool,
    channel_id: i64,
    wamid: &str,
) -> sqlx::Result<Option<StoredMessage>> {
    sqlx::query_as(
        "SELECT id, conversation_id, action, owner_at_arrival FROM messages
          WHERE channel_id = $1 AND wamid = $2",
    )
    .bind(channel_id)
    .bind(wamid)
    .fetch_optional(pool)
    .await
}

/// Deletes the conversation if nothing is in it: no message, outbound part or handover (a
/// reply comes with a message). Returns whether it did; a row that something refers to after
/// all (written meanwhile) is kept.
pub async fn delete_if_empty(pool: &PgPool, conversation_id: i64) -> sqlx::Result<bool> {
    let deleted = sqlx::query(
        "DELETE FROM conversations WHERE id = $1
            AND NOT EXISTS (SELECT 1 FROM messages WHERE conversation_id = $1)
            AND NOT EXISTS (SELECT 1 FROM outbound_messages WHERE conversation_id = $1)
            AND NOT EXISTS (SELECT 1 FROM handover_events WHERE conversation_id = $1)",
    )
    .bind(conversation_id)
    .execute(pool)
    .await;
    match deleted {
        Ok(done) => Ok(done.rows_affected() == 1),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Ok(false),
        Err(e) => Err(e),
    }
}

/// What [`follow_identity_change`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    /// The conversation's key now.
    pub key: String,
    /// The keys of the conversations merged into it (their cached sessions are stale).
    pub merged_keys: Vec<String>,
    /// The former holders' conversations set aside, by id, with the keys they had (their cached
    /// sessions lead to a conversation no longer found by them).
    pub moved: Vec<(i64, String)>,
}

/// A conversation merged into another and deleted ([`follow_identity_change`]), recorded in
/// `conversation_merges` in the merge's transaction, and its `merged` event still to be put on the
/// dashboard stream ([`merges_announced`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Merge {
    /// The deleted conversation.
    pub merged_id: i64,
    /// The conversation it was merged into (the one that holds it now).
    pub into_id: i64,
    pub phone_number_id: String,
    /// When it was merged.
    pub at: DateTime<Utc>,
}

/// A former holder's conversation set aside when a customer took their number
/// ([`follow_identity_change`], `number_moves`), whose `number_moved` event is still to be put
/// on the dashboard stream ([`number_moves_announced`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NumberMove {
    pub conversation_id: i64,
    pub phone_number_id: String,
    /// When it was set aside.
    pub at: DateTime<Utc>,
}

/// The `fail_reason` of a part not sent because its conversation's number passed to someone
/// else ([`follow_identity_change`]).
pub const NUMBER_MOVED: &str = "the customer's number now belongs to someone else";

/// How many times [`follow_identity_change`] looks again when the conversations it found
/// before locking changed meanwhile (the last pass goes on with what it locked), or a
/// conversation made under the new key meanwhile collided with it.
const FOLLOW_PASSES: u32 = 3;

/// Follows a customer to their new phone number (`wa_id`) or business-scoped id (`user_id`),
/// announced by a `system` message sent at `changed_at` (Meta's clock): the conversation keeps
/// its id, history, owner and session, takes the new identifiers, and its key follows when it
/// was keyed by the identifier that changed, so the customer's next message, from the new
/// number, finds it.
///
/// Meta does not order messages across numbers, so the customer may have written from the new
/// number first, which made a conversation of its own. Such a conversation (keyed by the new
/// identifier or holding it, and with no message sent before the change) is merged into this
/// one, in the same transaction: its messages, replies, outbound parts and handover events move
/// here (its sessions after this one's, so neither's history runs into the other's), it is
/// deleted, and the merged conversation is a human's if either was (the earlier one's agent
/// first), so the bot does not answer a customer a human holds.
///
/// A conversation under the new identifiers with a message from before the change is someone
/// who had that number before (Meta recycles numbers): it is set aside in the same transaction,
/// so the customer's messages from the number never land in a stranger's history. It keeps its
/// id, history and owner, is keyed `moved:<id>`, loses the number and business-scoped id (so
/// nothing finds it by them and nothing is sent to it: its pending parts fail as
/// [`NUMBER_MOVED`], and agents cannot write there), and `number_moves` records what it was
/// known by, for an erasure of its customer, and its `number_moved` event to announce.
/// `None` when the conversation was erased. Run again (a redelivered change), it finds the work
/// done and changes nothing.
///
/// Lock order: the outbound parts of the conversations merged or set aside, then the merged
/// ones' messages, then the conversations, which is the order recording an acceptance (parts,
/// then messages) and recording a reply or a handover (messages, then the conversation) take
/// them; taking the conversations first deadlocked with a reply or a handover under way. What
/// to lock is found unlocked first, and looked for again once locked. (An erasure takes
/// messages before parts: one of the same customer at the same moment can still deadlock.)
pub async fn follow_identity_change(
    pool: &PgPool,
    conversation_id: i64,
    wa_id: Option<&str>,
    user_id: Option<&str>,
    changed_at: Option<DateTime<Utc>>,
) -> sqlx::Result<Option<Followed>> {
    let change = Change {
        conversation_id,
        wa_id,
        user_id,
        changed_at,
    };
    let mut pass = 1;
    loop {
        let mut tx = pool.begin().await?;
        let Some(planned) = change.plan(&mut tx, false).await? else {
            return Ok(None);
        };
        let touched: Vec<i64> = planned
            .merged
            .iter()
            .chain(&planned.moved)
            .map(|(id, _)| *id)
            .collect();
        let merged_ids: Vec<i64> = planned.merged.iter().map(|(id, _)| *id).collect();
        if !touched.is_empty() {
            sqlx::query(
                "SELECT id FROM outbound_messages WHERE conversation_id = ANY($1)
                  ORDER BY id FOR UPDATE",
            )
            .bind(&touched)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query(
                "SELECT id FROM messages WHERE conversation_id = ANY($1) ORDER BY id FOR UPDATE",
            )
            .bind(&merged_ids)
            .fetch_all(&mut *tx)
            .await?;
        }
        let Some(plan) = change.plan(&mut tx, true).await? else {
            return Ok(None);
        };
        if plan != planned && pass < FOLLOW_PASSES {
            // Another conversation came (or went) between the look and the locks.
            pass += 1;
            continue;
        }
        match change.apply(&mut tx, plan).await {
            // The customer's message from the new number made a conversation under it while
            // this looked (its insert and the new key collide): the next pass merges it.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() && pass < FOLLOW_PASSES => {
                pass += 1;
            }
            followed => {
                let followed = followed?;
                tx.commit().await?;
                return Ok(Some(followed));
            }
        }
    }
}

/// A number change to follow ([`follow_identity_change`]).
struct Change<'a> {
    conversation_id: i64,
    wa_id: Option<&'a str>,
    user_id: Option<&'a str>,
    changed_at: Option<DateTime<Utc>>,
}

/// What a [`Change`] does: the conversation's new key, the customer's conversations to merge
/// into it and the former holders' to set aside (id and key).
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    new_key: String,
    merged: Vec<(i64, String)>,
    moved: Vec<(i64, String)>,
}

impl Change<'_> {
    /// Reads the conversation and the others under the new identifiers, `FOR UPDATE` when
    /// `lock`; `None` when the conversation was erased.
    async fn plan(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        lock: bool,
    ) -> sqlx::Result<Option<Plan>> {
        let lock = if lock { " FOR UPDATE" } else { "" };
        let Some((channel_id, key, old_wa_id, old_user_id)): Option<(
            i64,
            String,
            Option<String>,
            Option<String>,
        )> = sqlx::query_as(&format!(
            "SELECT channel_id, customer_key, wa_id, user_id FROM conversations
              WHERE id = $1 AND customer_key NOT LIKE 'erased:%'{lock}"
        ))
        .bind(self.conversation_id)
        .fetch_optional(&mut **tx)
        .await?
        else {
            return Ok(None);
        };
        let new_key = match (self.wa_id, self.user_id) {
            (Some(w), _) if old_wa_id.as_deref() == Some(key.as_str()) => w.to_string(),
            (_, Some(u)) if old_user_id.as_deref() == Some(key.as_str()) => u.to_string(),
            _ => key,
        };
        // The other conversations by the new key or identifiers, and whether each is the
        // customer's: nothing in it was sent before the change.
        let others: Vec<(i64, String, bool)> = sqlx::query_as(&format!(
            "SELECT c.id, c.customer_key,
                    $5::timestamptz IS NULL
                    OR NOT EXISTS (SELECT 1 FROM messages m
                                    WHERE m.conversation_id = c.id AND m.sent_at < $5)
               FROM conversations c
              WHERE c.channel_id = $1 AND c.id <> $2 AND c.customer_key NOT LIKE 'erased:%'
                AND (c.customer_key = $3 OR c.wa_id = $4 OR c.user_id = $6)
              ORDER BY c.id{lock}"
        ))
        .bind(channel_id)
        .bind(self.conversation_id)
        .bind(&new_key)
        .bind(self.wa_id)
        .bind(self.changed_at)
        .bind(self.user_id)
        .fetch_all(&mut **tx)
        .await?;
        let (merged, moved): (Vec<_>, Vec<_>) =
            others.into_iter().partition(|(_, _, theirs)| *theirs);
        let strip = |v: Vec<(i64, String, bool)>| v.into_iter().map(|(id, k, _)| (id, k)).collect();
        Ok(Some(Plan {
            new_key,
            merged: strip(merged),
            moved: strip(moved),
        }))
    }

    /// Sets the former holders' conversations aside, merges the customer's, and moves the
    /// conversation to its new identifiers, under the locks taken.
    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        plan: Plan,
    ) -> sqlx::Result<Followed> {
        let moved_ids: Vec<i64> = plan.moved.iter().map(|(id, _)| *id).collect();
        if !moved_ids.is_empty() {
            set_aside(tx, &moved_ids).await?;
        }
        let merged_ids: Vec<i64> = plan.merged.iter().map(|(id, _)| *id).collect();
        if !merged_ids.is_empty() {
            merge_conversations(tx, self.conversation_id, &merged_ids).await?;
        }
        let key: String = sqlx::query_scalar(
            "UPDATE conversations SET customer_key = $2,
                    wa_id = COALESCE($3, wa_id), user_id = COALESCE($4, user_id)
              WHERE id = $1 RETURNING customer_key",
        )
        .bind(self.conversation_id)
        .bind(&plan.new_key)
        .bind(self.wa_id)
        .bind(self.user_id)
        .fetch_one(&mut **tx)
        .await?;
        Ok(Followed {
            key,
            merged_keys: plan.merged.into_iter().map(|(_, k)| k).collect(),
            moved: plan.moved,
        })
    }
}

/// Sets former holders' conversations (locked by the caller) aside: keyed `moved:<id>`, without
/// the number and business-scoped id, which `number_moves` keeps for an erasure; their parts not
/// sent yet fail. See [`follow_identity_change`].
async fn set_aside(tx: &mut Transaction<'_, Postgres>, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query(
        "WITH old AS (
             SELECT id, customer_key, wa_id, user_id FROM conversations WHERE id = ANY($1)
         ), moved AS (
             UPDATE conversations c SET customer_key = 'moved:' || c.id, wa_id = NULL,
                    user_id = NULL
               FROM old WHERE c.id = old.id
         )
         INSERT INTO number_moves (conversation_id, identifiers)
         SELECT id, ARRAY(SELECT DISTINCT v FROM unnest(ARRAY[customer_key, wa_id, user_id]) v
                           WHERE v IS NOT NULL)
           FROM old
         ON CONFLICT (conversation_id) DO NOTHING",
    )
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE outbound_messages SET state = 'failed', fail_reason = $2
          WHERE conversation_id = ANY($1) AND state = 'pending'",
    )
    .bind(ids)
    .bind(NUMBER_MOVED)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Moves everything of the conversations `from` (locked by the caller) into `into`, deletes
/// them, and merges their state into it; see [`follow_identity_change`].
async fn merge_conversations(
    tx: &mut Transaction<'_, Postgres>,
    into: i64,
    from: &[i64],
) -> sqlx::Result<()> {
    // Their sessions come after this one's current session: the model's history of a message
    // stays what it was, and the customer's next message continues the latest session.
    let (offset,): (i32,) = sqlx::query_as("SELECT session_no FROM conversations WHERE id = $1")
        .bind(into)
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE messages SET conversation_id = $1, session_no = session_no + $3
          WHERE conversation_id = ANY($2)",
    )
    .bind(into)
    .bind(from)
    .bind(offset)
    .execute(&mut **tx)
    .await?;
    // An agent's reference is unique in its conversation: one the two share keeps its parts
    // apart by the conversation they came from.
    sqlx::query(
        "UPDATE outbound_messages o SET conversation_id = $1, session_no = o.session_no + $3,
                agent_ref = CASE WHEN EXISTS (SELECT 1 FROM outbound_messages x
                                               WHERE x.conversation_id = $1
                                                 AND x.agent_ref = o.agent_ref)
                                 THEN o.agent_ref || ' (conversation ' || o.conversation_id || ')'
                                 ELSE o.agent_ref END
          WHERE o.conversation_id = ANY($2)",
    )
    .bind(into)
    .bind(from)
    .bind(offset)
    .execute(&mut **tx)
    .await?;
    // Where each went, for whoever holds its id (announced after the commit, or by a sweep); a
    // conversation merged into one of these before now points at the survivor too.
    sqlx::query("UPDATE conversation_merges SET into_id = $1 WHERE into_id = ANY($2)")
        .bind(into)
        .bind(from)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO conversation_merges (merged_id, into_id)
         SELECT unnest($2::bigint[]), $1 ON CONFLICT (merged_id) DO NOTHING",
    )
    .bind(into)
    .bind(from)
    .execute(&mut **tx)
    .await?;
    for table in ["handover_events", "replies"] {
        sqlx::query(&format!(
            "UPDATE {table} SET conversation_id = $1 WHERE conversation_id = ANY($2)"
        ))
        .bind(into)
        .bind(from)
        .execute(&mut **tx)
        .await?;
    }
    // A human's if either was: the earlier conversation's handover first. The latest session
    // (the newer conversation's) is the current one.
    sqlx::query(
        "WITH gone AS (
             DELETE FROM conversations WHERE id = ANY($2)
             RETURNING session_no, session_started_at, owner, handed_over_at, user_id,
                       profile_name, last_customer_message_at, last_activity_at,
                       agent_activity_at, id
         ), b AS (
             SELECT max(session_no) AS sessions, max(session_started_at) AS started,
                    bool_or(owner = 'human') AS human, max(handed_over_at) FILTER (WHERE owner = 'human') AS handed_over_at,
                    (array_agg(user_id ORDER BY id DESC) FILTER (WHERE user_id IS NOT NULL))[1]
                        AS user_id,
                    (array_agg(profile_name ORDER BY id DESC)
                        FILTER (WHERE profile_name IS NOT NULL))[1] AS profile_name,
                    max(last_customer_message_at) AS last_customer_message_at,
                    max(last_activity_at) AS last_activity_at,
                    max(agent_activity_at) AS agent_activity_at
               FROM gone
         )
         UPDATE conversations c SET
                session_no = c.session_no + b.sessions,
                session_started_at = b.started,
                owner = CASE WHEN c.owner = 'human' OR b.human THEN 'human' ELSE 'bot' END,
                handed_over_at = CASE WHEN c.owner = 'human' THEN c.handed_over_at
                                      ELSE b.handed_over_at END,
                user_id = COALESCE(b.user_id, c.user_id),
                profile_name = COALESCE(b.profile_name, c.profile_name),
                last_customer_message_at =
                    GREATEST(c.last_customer_message_at, b.last_customer_message_at),
                last_activity_at = GREATEST(c.last_activity_at, b.last_activity_at),
                agent_activity_at = GREATEST(c.agent_activity_at, b.agent_activity_at)
           FROM b WHERE c.id = $1",
    )
    .bind(into)
    .bind(from)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The merges whose `merged` event is not on the dashboard stream yet (Redis refused it, or the
/// stage stopped first), oldest first, up to `limit`; `conversation_id` alone, that one's.
pub async fn unannounced_merges(
    pool: &PgPool,
    conversation_id: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<Merge>> {
    sqlx::query_as(
        "SELECT m.merged_id, m.into_id, ch.phone_number_id, m.merged_at AS at
           FROM conversation_merges m
           JOIN conversations c ON c.id = m.into_id
           JOIN channels ch ON ch.id = c.channel_id
          WHERE NOT m.announced AND ($1::bigint IS NULL OR m.into_id = $1)
          ORDER BY m.merged_id
          LIMIT $2",
    )
    .bind(conversation_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Records that the `merged` events of `merged_ids` are on the dashboard stream.
pub async fn merges_announced(pool: &PgPool, merged_ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE conversation_merges SET announced = TRUE
          WHERE merged_id = ANY($1) AND NOT announced",
    )
    .bind(merged_ids)
    .execute(pool)
    .await?;
    Ok(())
}

/// The conversation `conversation_id` was merged into, when a number change merged it away
/// (`None` for a conversation never merged).
pub async fn merged_into(pool: &PgPool, conversation_id: i64) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT into_id FROM conversation_merges WHERE merged_id = $1")
        .bind(conversation_id)
        .fetch_optional(pool)
        .await
}

/// The former holders' conversations whose `number_moved` event is not on the dashboard stream
/// yet, oldest first, up to `limit`; with `ids`, only those.
pub async fn unannounced_number_moves(
    pool: &PgPool,
    ids: Option<&[i64]>,
    limit: i64,
) -> sqlx::Result<Vec<NumberMove>> {
    sqlx::query_as(
        "SELECT n.conversation_id, ch.phone_number_id, n.moved_at AS at
           FROM number_moves n
           JOIN conversations c ON c.id = n.conversation_id
           JOIN channels ch ON ch.id = c.channel_id
          WHERE NOT n.announced AND ($1::bigint[] IS NULL OR n.conversation_id = ANY($1))
          ORDER BY n.conversation_id
          LIMIT $2",
    )
    .bind(ids)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Whether the conversation is a former holder's, set aside when their number passed to someone
/// else ([`follow_identity_change`]).
pub async fn number_moved(pool: &PgPool, conversation_id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM number_moves WHERE conversation_id = $1)")
        .bind(conversation_id)
        .fetch_one(pool)
        .await
}

/// Records that the `number_moved` events of `ids` are on the dashboard stream.
pub async fn number_moves_announced(pool: &PgPool, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE number_moves SET announced = TRUE WHERE conversation_id = ANY($1) AND NOT announced",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(())
}

/// The conversation a message is in now, read with a lock that waits for a merge
/// ([`follow_identity_change`]) under way; SQL for `$n`, the message id, falling back to `$c`.
macro_rules! current_conversation_sql {
    ($n:literal, $c:literal) => {
        concat!(
            "COALESCE((SELECT conversation_id FROM messages WHERE id = ",
            $n,
            " FOR SHARE), ",
            $c,
            ")"
        )
    };
}

/// The conversation `message_id` is in now (waiting for a merge under way), or
/// `conversation_id` without a message: the one a handover's event names.
pub async fn current_conversation(
    tx: &mut Transaction<'_, Postgres>,
    conversation_id: i64,
    message_id: Option<i64>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(concat!("SELECT ", current_conversation_sql!("$2", "$1")))
        .bind(conversation_id)
        .bind(message_id)
        .fetch_one(&mut **tx)
        .await
}

/// Hands the conversation to a human, unless a human already has it. Returns whether it changed.
/// With the message that caused it, the message's conversation is handed over: the one a stage
/// read before asking the model may have been merged into another since (a customer's number
/// change, [`follow_identity_change`]).
pub async fn hand_over(
    tx: &mut Transaction<'_, Postgres>,
    conversation_id: i64,
    reason: &str,
    keyword: Option<&str>,
    message_id: Option<i64>,
) -> sqlx::Result<bool> {
    let changed: Option<i64> = sqlx::query_scalar(concat!(
        "UPDATE conversations SET owner = 'human', handed_over_at = now()
         WHERE id = ",
        current_conversation_sql!("$2", "$1"),
        " AND owner = 'bot' RETURNING id"
    ))
    .bind(conversation_id)
    .bind(message_id)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(conversation_id) = changed {
        sqlx::query(
            "INSERT INTO handover_events (conversation_id, kind, reason, keyword, message_id)
             VALUES ($1, 'handover', $2, $3, $4)",
        )
        .bind(conversation_id)
        .bind(reason)
        .bind(keyword)
        .bind(message_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(changed.is_some())
}

/// Whether the conversation was already handed to a human because of `message_id` (a stage
/// redoing a handover after a crash or an error must not redo one a human has since released);
/// the conversation the message is in now, as in [`hand_over`].
pub async fn handed_over_for(
    tx: &mut Transaction<'_, Postgres>,
    conversation_id: i64,
    message_id: i64,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(concat!(
        "SELECT EXISTS (SELECT 1 FROM handover_events
                         WHERE conversation_id = ",
        current_conversation_sql!("$2", "$1"),
        " AND kind = 'handover' AND message_id = $2)"
    ))
    .bind(conversation_id)
    .bind(message_id)
    .fetch_one(&mut **tx)
    .await
}

/// Gives the conversation back to the bot. Returns whether it changed.
pub async fn release(pool: &PgPool, conversation_id: i64) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let changed = release_in(&mut tx, conversation_id).await?;
    tx.commit().await?;
    Ok(changed)
}

/// [`release`] in the caller's transaction (an agent's release is announced before it commits):
/// the owner back to the bot, with its `release` event (reason `agent`).
pub async fn release_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    conversation_id: i64,
) -> sqlx::Result<bool> {
    let changed =
        sqlx::query("UPDATE conversations SET owner = 'bot' WHERE id = $1 AND owner = 'human'")
            .bind(conversation_id)
            .execute(&mut **tx)
            .await?
            .rows_affected()
            == 1;
    if changed {
        sqlx::query(
            "INSERT INTO handover_events (conversation_id, kind, reason)
             VALUES ($1, 'release', 'agent')",
        )
        .bind(conversation_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(changed)
}

/// The business number (`phone_number_id`) a conversation is with.
pub async fn phone_number_id(pool: &PgPool, conversation_id: i64) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT ch.phone_number_id FROM conversations c
           JOIN channels ch ON ch.id = c.channel_id WHERE c.id = $1",
    )
    .bind(conversation_id)
    .fetch_optional(pool)
    .await
}

/// Who an echo of the WhatsApp Business app is recorded as written by (`outbound_messages.agent`,
/// kind `agent`), and the reason of the handover it makes.
pub const BUSINESS_APP: &str = "business_app";

/// What recording an echo of the business app did.
#[derive(Debug, Clone)]
pub struct EchoRecorded {
    pub conversation: Conversation,
    /// The conversation went from the bot to a human with it.
    pub handed_over: bool,
}

/// The customer key of the channel's conversation with the customer an echo was written `to`:
/// `to` itself, or, when only that exists, the conversation under the other notation of a
/// Mexican or Brazilian mobile (the business's contact may hold the number one way and Meta's
/// `from` the other, [`wafleet_core::phone`]). `None` when there is neither.
pub async fn echo_customer_key(
    pool: &PgPool,
    channel_id: i64,
    to: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT customer_key FROM conversations
          WHERE channel_id = $1 AND customer_key = ANY($2)
          ORDER BY customer_key = $3 DESC LIMIT 1",
    )
    .bind(channel_id)
    .bind(wafleet_core::phone::forms(to))
    .bind(to)
    .fetch_optional(pool)
    .await
}

/// Records a message the business wrote from the WhatsApp Business app (coexistence) in the
/// customer's conversation (found or created by `t`, which does not open the customer's window):
/// a part of kind `agent` by [`BUSINESS_APP`], `accepted` under the echo's wamid (nothing sends
/// it; its `agent_ref` `echo:<wamid>` is what an agent's reference is), with `body` (redacted)
/// as what agents read and the model's history text; then hands the conversation to a human
/// (reason [`BUSINESS_APP`]) unless one has it, and counts as an agent's activity for the idle
/// release. `None` when the echo was recorded before (a redelivery): the caller rolls back.
pub async fn record_business_echo(
    tx: &mut Transaction<'_, Postgres>,
    channel_id: i64,
    t: &Touch,
    wamid: &str,
    body: &str,
) -> sqlx::Result<Option<EchoRecorded>> {
    let conversation = touch(tx, ConversationRef::Channel(channel_id), t)
        .await?
        .expect("a conversation found by channel always exists");
    let recorded: Option<i64> = sqlx::query_scalar(
        "INSERT INTO outbound_messages (conversation_id, channel_id, session_no, part_no, kind,
                                        body, history_text, state, wamid, agent_ref, agent)
         VALUES ($1, $2, $3, 0, 'agent', $4, $4, 'accepted', $5, 'echo:' || $5, $6)
         ON CONFLICT DO NOTHING
         RETURNING id",
    )
    .bind(conversation.id)
    .bind(conversation.channel_id)
    .bind(conversation.session_no)
    .bind(body)
    .bind(wamid)
    .bind(BUSINESS_APP)
    .fetch_optional(&mut **tx)
    .await?;
    if recorded.is_none() {
        return Ok(None);
    }
    let handed_over = hand_over(tx, conversation.id, BUSINESS_APP, None, None).await?;
    super::agents::touch_agent_activity(tx, conversation.id).await?;
    Ok(Some(EchoRecorded {
        conversation,
        handed_over,
    }))
}

/// Records a message we will send (or only store, in shadow mode). Idempotent per
/// `(reply_to, kind, part_no)`; returns the outbound id.
pub async fn insert_outbound(
    tx: &mut Transaction<'_, Postgres>,
    (conversation_id, channel_id): (i64, i64),
    reply_to: Option<i64>,
    kind: &str,
    part_no: i32,
    body: &str,
    state: &str,
) -> sqlx::Result<i64> {
    let id: (i64,) = sqlx::query_as(
        "INSERT INTO outbound_messages (conversation_id, channel_id, reply_to, session_no, part_no,
                                        kind, body, state)
         VALUES ($1, $2, $3, (SELECT session_no FROM messages WHERE id = $3), $4, $5, $6, $7)
         ON CONFLICT (reply_to, kind, part_no) DO UPDATE SET kind = EXCLUDED.kind
         RETURNING id",
    )
    .bind(conversation_id)
    .bind(channel_id)
    .bind(reply_to)
    .bind(part_no)
    .bind(kind)
    .bind(body)
    .bind(state)
    .fetch_one(&mut **tx)
    .await?;
    Ok(id.0)
}

/// Order of delivery states; a status only ever raises it. `failed` is final.
pub fn delivery_rank(status: &str) -> Option<i16> {
    match status {
        "sent" => Some(1),
        "delivered" => Some(2),
        "read" | "played" => Some(3),
        "failed" => Some(4),
        _ => None,
    }
}

/// What applying a status did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusApplied {
    /// The outbound message moved forward; carries its conversation, the customer's message it
    /// answers (what a handover its failure makes is keyed on), and whether an agent wrote it (a
    /// message or template, which never hands the conversation over when it fails).
    Advanced {
        conversation_id: i64,
        reply_to: Option<i64>,
        by_agent: bool,
    },
    /// Known message, but the status is not newer (or the message already failed, or its
    /// customer was erased: nothing of it is kept).
    Stale,
    /// No outbound message with that wamid yet: kept for later.
    Kept,
    /// A status, found by our callback, of another send of a known part than the one it holds:
    /// an ambiguous send's that came after its resend was claimed or given up on, or the send
    /// a `failed` status reopened the part after. Never parked, never taken for the part's own
    /// send. `adopted`: it showed Meta took a send the part never learnt it had while the part
    /// holds no send Meta took (its resend unanswered or in flight, or given up as
    /// unanswered): that send is now the part's (its wamid recorded, `accepted`), so nothing is
    /// sent again. Otherwise it is only recorded (`other_wamids`), and `duplicate` says the
    /// part holds another send Meta took: the customer has two copies.
    OtherSend {
        by_agent: bool,
        adopted: bool,
        duplicate: bool,
    },
}

/// A delivery status from Meta.
#[derive(Debug, Clone)]
pub struct Status {
    pub wamid: String,
    pub status: String,
    pub rank: i16,
    pub at: Option<DateTime<Utc>>,
    pub error_code: Option<i64>,
    pub error_title: Option<String>,
    /// Our outbound id and send, echoed through `biz_opaque_callback_data`.
    pub callback: Option<crate::crypto::Callback>,
    /// `recipient_id`: how Meta names the customer. A send reconciled by its callback (its
    /// acceptance never reached us) re-keys its conversation by it as the acceptance would
    /// have (see [`Accepted::adopt_wa_id`]), when it is the other notation of the number dialled.
    pub recipient: Option<String>,
    /// The business number the status came for (its webhook's `phone_number_id`): only that
    /// number's outbound messages are matched, so a status in one tenant's webhook (its own app
    /// signs them) never changes, fails or hands over another number's; `None` matches any
    /// number's (statuses applied directly, not from a webhook).
    pub phone_number_id: Option<String>,
}

/// Applies statuses, forward only with `failed` final, and answers each in order. A status finds
/// its outbound message by wamid or, for an ambiguous send whose wamid we never learnt, by our
/// own id echoed in `biz_opaque_callback_data` (the message is then reconciled: wamid recorded,
/// `accepted`), among the messages of the status's own number ([`Status::phone_number_id`]). A
/// status for a message we do not know yet (or another number's) is kept in `early_statuses` and
/// applied when the sender records the message. A status that names by our callback another
/// send of a part than the one it holds is [`StatusApplied::OtherSend`]: never parked.
///
/// One statement per run of statuses with distinct wamids and outbound ids (so no row is
/// updated twice by one statement; in practice the whole slice): one round trip and one commit
/// however many there are. The update re-reads each row it changes, so a concurrent change of
/// the same message is applied on top of, not over. Rows are locked in id order first, as
/// [`record_accepted_many`] does: two statements locking the same parts in different orders
/// deadlocked, and Postgres's deadlock check waits a second before breaking the tie.
pub async fn apply_statuses(
    conn: &mut PgConnection,
    statuses: &[Status],
) -> sqlx::Result<Vec<StatusApplied>> {
    #[derive(PartialEq, Eq, Hash)]
    enum Key<'a> {
        Wamid(&'a str),
        Outbound(i64),
    }
    let mut results = Vec::with_capacity(statuses.len());
    let runs = super::distinct_runs(statuses, |s| {
        [
            Some(Key::Wamid(&s.wamid)),
            s.callback.map(|c| Key::Outbound(c.outbound_id)),
        ]
        .into_iter()
        .flatten()
    });
    for run in runs {
        results.extend(apply_distinct(&mut *conn, run).await?);
    }
    Ok(results)
}

async fn apply_distinct(
    conn: &mut PgConnection,
    statuses: &[Status],
) -> sqlx::Result<Vec<StatusApplied>> {
    /// Per status: its number, the conversation, advanced, known, by an agent, the message
    /// its part answers; whether it is of the send its part holds (`None`: no part), and for
    /// another send's, adopted and duplicate ([`StatusApplied::OtherSend`]).
    type Applied = (
        i64,
        Option<i64>,
        bool,
        bool,
        bool,
        Option<i64>,
        Option<bool>,
        bool,
        bool,
    );
    // Put together once: the statement's text never changes.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        "WITH input AS (
             SELECT s.*, ch.id AS channel_id
               FROM unnest($1::text[], $2::text[], $3::int2[], $4::timestamptz[],
                           $5::int4[], $6::text[], $7::int8[], $8::int4[], $9::text[],
                           $10::text[], $11::text[])
                    WITH ORDINALITY AS s(wamid, status, rank, at, code, title, outbound_id,
                                         send_try, recipient, recipient_other, number, n)
               LEFT JOIN channels ch ON ch.phone_number_id = s.number
         ), matched AS (
             -- By callback only the send that status is about: a part sent again has a higher
             -- send number (`send_offset + attempts`, which a replay does not reset), and an
             -- earlier send's late status is not the resend's. A failed part
             -- reopened for a resend and not claimed yet (pending, still with the failure's
             -- code) has no send in flight: a status by its callback is the failed send's. Nor
             -- is a status of a message the part's other sends name (`other_wamids`: the failed
             -- message a reopen forgot, whose number a configuration failure gives back).
             -- A status our callback names with another send of the part (`held` false: an
             -- earlier one, or one of those) is that send's: see `earlier`.
             SELECT DISTINCT ON (i.n) i.n, o.id AS oid, o.wamid IS NULL AS unrecorded, h.held
               FROM input i JOIN outbound_messages o
                 ON (o.wamid = i.wamid OR o.id = i.outbound_id)
                    -- Only the status's own number's: another tenant's webhook names no part
                    -- of ours (a number no channel has, none).
                    AND (i.number IS NULL OR o.channel_id = i.channel_id)
              CROSS JOIN LATERAL (
                  SELECT o.wamid IS NOT DISTINCT FROM i.wamid
                         OR (o.id = i.outbound_id AND o.wamid IS NULL
                             AND (i.send_try IS NULL OR o.send_offset + o.attempts = i.send_try)
                             AND NOT (o.state = 'pending' AND o.error_code IS NOT NULL)
                             AND NOT erased_wamid(i.wamid) = ANY(o.other_wamids)) AS held
              ) h
              WHERE h.held
                 -- Another send, named by a numbered callback (one before sends were numbered
                 -- cannot tell), unless it is the erased part's own (its wamid a digest).
                 OR (o.id = i.outbound_id AND i.send_try IS NOT NULL
                     AND o.wamid IS DISTINCT FROM erased_wamid(i.wamid))
              ORDER BY i.n, NOT h.held, o.wamid IS NULL
         ), locked AS MATERIALIZED (
             SELECT o.id FROM outbound_messages o WHERE o.id IN (SELECT oid FROM matched)
              ORDER BY o.id FOR UPDATE
         ), changed AS (
             UPDATE outbound_messages o SET
                    -- A part found by its wamid keeps the one it has: an erasure that
                    -- committed while this statement waited for the row made it a digest,
                    -- and Meta's, which encodes the customer's number, must not come back. A
                    -- part reconciled after its customer was erased keeps only the digest of
                    -- Meta's wamid. Erased is read from the row (its text is gone; no part is
                    -- recorded empty), not its conversation: a statement that waited for an
                    -- erasure re-reads the row it updates, but not the conversation.
                    wamid = CASE WHEN o.wamid IS NOT NULL THEN o.wamid
                                 WHEN o.body = '' THEN erased_wamid(i.wamid)
                                 ELSE i.wamid END,
                    state = CASE WHEN o.delivery_rank < i.rank AND o.delivery_rank < 4
                                      AND i.status = 'failed' THEN 'failed'
                                 WHEN o.wamid IS NULL THEN 'accepted' ELSE o.state END,
                    delivery = CASE WHEN o.delivery_rank < i.rank AND o.delivery_rank < 4
                                    THEN i.status ELSE o.delivery END,
                    delivery_rank = CASE WHEN o.delivery_rank < i.rank AND o.delivery_rank < 4
                                         THEN i.rank ELSE o.delivery_rank END,
                    delivery_at = CASE WHEN o.delivery_rank < i.rank AND o.delivery_rank < 4
                                       THEN i.at ELSE o.delivery_at END,
                    error_code = CASE WHEN o.delivery_rank < i.rank AND o.delivery_rank < 4
                                      THEN COALESCE(i.code, o.error_code) ELSE o.error_code END,
                    error_title = CASE WHEN o.delivery_rank < i.rank AND o.delivery_rank < 4
                                       THEN COALESCE(i.title, o.error_title) ELSE o.error_title END,
                    -- A `failed` status is Meta's word on why: the reason the sender recorded
                    -- when it gave up on a send Meta had taken after all (unanswered) no longer
                    -- says it (the transcript, a `message_failed` event read Meta's code).
                    fail_reason = CASE WHEN o.delivery_rank < i.rank AND o.delivery_rank < 4
                                            AND i.status = 'failed' THEN NULL
                                       ELSE o.fail_reason END,
                    -- An agent's part dashboards last heard of as failed `unanswered` that
                    -- Meta now fails with its code: they are told again, once, the event
                    -- saying it refines the first (crate::stages::announce_failures).
                    failure_announced = CASE WHEN {REFINES} THEN FALSE
                                             ELSE o.failure_announced END,
                    failure_refines = CASE WHEN {REFINES} THEN 'unanswered'
                                           ELSE o.failure_refines END
               FROM matched m JOIN input i ON i.n = m.n
              WHERE o.id = m.oid AND m.held AND o.id IN (SELECT id FROM locked)
                AND ((o.delivery_rank < i.rank AND o.delivery_rank < 4) OR o.wamid IS NULL)
          RETURNING m.n, o.conversation_id, o.delivery_rank = i.rank AS advanced,
                    o.kind IN ('agent', 'template') AS by_agent, o.reply_to,
                    m.unrecorded AND o.state = 'accepted' AS reconciled
         ), earlier AS (
             -- A status of another send of the part than the one it holds, not known yet.
             -- One that shows Meta took a send we never heard back from (an ambiguous send's
             -- `sent`, `delivered`, `read`) while the part holds no send Meta took (its
             -- resend is unanswered or in flight, it waits to go again, or it was given up as
             -- unanswered) makes that send the part's: its wamid recorded, `accepted`, so the
             -- resend is not repeated and the customer gets no further copy. Otherwise (a
             -- `failed` one, the part accepted under another send's wamid, a send that failed
             -- before) the message is only recorded among the part's other sends, as a digest:
             -- its later statuses are known, never parked.
             UPDATE outbound_messages o SET
                    wamid = CASE WHEN {ADOPT} THEN CASE WHEN o.body = '' THEN erased_wamid(i.wamid)
                                                    ELSE i.wamid END
                                 ELSE o.wamid END,
                    state = CASE WHEN {ADOPT} THEN 'accepted' ELSE o.state END,
                    delivery = CASE WHEN {ADOPT} AND o.delivery_rank < i.rank THEN i.status
                                    ELSE o.delivery END,
                    delivery_rank = CASE WHEN {ADOPT} AND o.delivery_rank < i.rank THEN i.rank
                                         ELSE o.delivery_rank END,
                    delivery_at = CASE WHEN {ADOPT} AND o.delivery_rank < i.rank THEN i.at
                                       ELSE o.delivery_at END,
                    -- A reopened part keeps its failure's code until its resend is claimed: it
                    -- went out after all, and the code no longer describes it.
                    error_code = CASE WHEN {ADOPT} THEN NULL ELSE o.error_code END,
                    error_title = CASE WHEN {ADOPT} THEN NULL ELSE o.error_title END,
                    other_wamids = CASE WHEN {ADOPT} THEN o.other_wamids
                                        ELSE array_append(o.other_wamids, erased_wamid(i.wamid))
                                   END
               FROM matched m JOIN input i ON i.n = m.n
              WHERE o.id = m.oid AND NOT m.held AND o.id IN (SELECT id FROM locked)
                AND NOT erased_wamid(i.wamid) = ANY(o.other_wamids)
                AND o.wamid IS DISTINCT FROM i.wamid
                AND o.wamid IS DISTINCT FROM erased_wamid(i.wamid)
          RETURNING m.n, o.conversation_id, o.kind IN ('agent', 'template') AS by_agent,
                    o.reply_to,
                    COALESCE(o.wamid IN (i.wamid, erased_wamid(i.wamid)), FALSE) AS adopted,
                    i.status <> 'failed' AND o.state = 'accepted'
                        AND NOT COALESCE(o.wamid IN (i.wamid, erased_wamid(i.wamid)), FALSE)
                        AS duplicate
         ), answered AS (
             -- A send reconciled here (Meta's answer to it was lost) answers the customer's
             -- message, as recording its acceptance does (record_accepted_many): else the
             -- message waited for the bot for good in `wafleet_oldest_unanswered_seconds`.
             UPDATE messages SET answered_at = COALESCE(answered_at, now())
              WHERE id IN (SELECT reply_to FROM changed WHERE reconciled
                           UNION ALL SELECT reply_to FROM earlier WHERE adopted)
         ), adopted AS (
             -- Only for a send reconciled by its callback (its wamid was unknown), to the other
             -- notation of the number dialled; rare, like the acceptance's own re-keying.
             UPDATE conversations c SET customer_key = i.recipient, wa_id = i.recipient
               FROM matched m JOIN input i ON i.n = m.n
               JOIN outbound_messages o ON o.id = m.oid
              WHERE i.recipient_other IS NOT NULL AND o.wamid IS NULL
                AND c.id = o.conversation_id
                AND c.customer_key = c.wa_id AND c.wa_id = i.recipient_other
                AND NOT EXISTS (SELECT 1 FROM conversations d
                                 WHERE d.channel_id = c.channel_id AND d.customer_key = i.recipient)
         ), known AS MATERIALIZED (
             -- Matched, or of a part whose customer was erased (its wamid is a digest now):
             -- kept for later only when neither.
             SELECT i.n FROM input i
              WHERE EXISTS (SELECT 1 FROM matched m WHERE m.n = i.n)
                 OR EXISTS (SELECT 1 FROM outbound_messages o
                             WHERE o.wamid = erased_wamid(i.wamid)
                               AND (i.number IS NULL OR o.channel_id = i.channel_id))
         ), early AS (
             INSERT INTO early_statuses (wamid, status, rank, status_at, error_code, error_title,
                                         channel_id)
             SELECT wamid, status, rank, at, code, title, COALESCE(channel_id, 0) FROM input i
              WHERE i.n NOT IN (SELECT n FROM known)
             ON CONFLICT DO NOTHING
         )
         SELECT i.n, c.conversation_id, COALESCE(c.advanced, FALSE),
                i.n IN (SELECT n FROM known), COALESCE(c.by_agent, e.by_agent, FALSE),
                c.reply_to, m.held, COALESCE(e.adopted, FALSE), COALESCE(e.duplicate, FALSE)
           FROM input i LEFT JOIN changed c ON c.n = i.n LEFT JOIN earlier e ON e.n = i.n
           LEFT JOIN matched m ON m.n = i.n
          ORDER BY i.n"
            .replace("{ADOPT}", ADOPT_EARLIER_SEND)
            .replace("{REFINES}", REFINES_UNANSWERED)
    });
    let rows: Vec<Applied> = sqlx::query_as(SQL.as_str())
        .bind(super::column(statuses, |s| s.wamid.as_str()))
        .bind(super::column(statuses, |s| s.status.as_str()))
        .bind(super::column(statuses, |s| s.rank))
        .bind(super::column(statuses, |s| s.at))
        .bind(super::column(statuses, |s| s.error_code.map(|c| c as i32)))
        .bind(super::column(statuses, |s| s.error_title.as_deref()))
        .bind(super::column(statuses, |s| {
            s.callback.map(|c| c.outbound_id)
        }))
        .bind(super::column(statuses, |s| {
            s.callback.and_then(|c| c.send_try)
        }))
        .bind(super::column(statuses, |s| {
            s.callback.and(s.recipient.as_deref())
        }))
        .bind(super::column(statuses, |s| {
            s.callback
                .and(s.recipient.as_deref())
                .and_then(wafleet_core::phone::other_form)
        }))
        .bind(super::column(statuses, |s| s.phone_number_id.as_deref()))
        .bind(super::replies::UNANSWERED)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(_, conversation, advanced, known, by_agent, reply_to, held, adopted, duplicate)| {
                match (conversation, advanced, known, held) {
                    (_, _, _, Some(false)) => StatusApplied::OtherSend {
                        by_agent,
                        adopted,
                        duplicate,
                    },
                    (Some(conversation_id), true, _, _) => StatusApplied::Advanced {
                        conversation_id,
                        reply_to,
                        by_agent,
                    },
                    (_, _, true, _) => StatusApplied::Stale,
                    _ => StatusApplied::Kept,
                }
            },
        )
        .collect())
}

/// When a status of another send of a part than the one it holds makes that send the part's
/// (`apply_distinct`'s `earlier`; `o` the part, `i` the status, `$12` [`UNANSWERED`]): it is
/// not a failure, the part holds no wamid (no send Meta is known to have taken), the send is
/// an earlier one (a later number is a send a configuration failure gave back, which failed),
/// and the part waits for its resend's outcome (`sending`), to be sent again (`pending`), or
/// was given up because Meta answered none of its sends.
///
/// [`UNANSWERED`]: super::replies::UNANSWERED
const ADOPT_EARLIER_SEND: &str = "(i.status <> 'failed' AND o.wamid IS NULL
     AND i.send_try < o.send_offset + o.attempts
     AND (o.state IN ('pending', 'sending')
          OR (o.state = 'failed' AND starts_with(COALESCE(o.fail_reason, ''), $12))))";

/// When a `failed` status (`i`) that fails a part (`o`, `apply_distinct`'s `changed`) refines
/// a failure dashboards heard of last: the part was given up as unanswered (`$12`,
/// [`UNANSWERED`]), and that is what they were told (`failure_shown`: no recovery since).
///
/// [`UNANSWERED`]: super::replies::UNANSWERED
const REFINES_UNANSWERED: &str = "(o.delivery_rank < i.rank AND o.delivery_rank < 4
     AND i.status = 'failed' AND o.failure_shown
     AND starts_with(COALESCE(o.fail_reason, ''), $12))";

/// What recording an acceptance found: whether a `failed` status had come first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    Recorded,
    /// Meta's `failed` status for this wamid arrived before the acceptance was recorded and is
    /// now applied: the part is `failed`, with this code when the status carried one.
    FailedFirst {
        code: Option<i32>,
    },
    /// A late status of an earlier send made that send the part's while this one was in flight
    /// (see [`StatusApplied::OtherSend`]): Meta took both, the customer has two copies. This
    /// wamid is recorded among the part's other sends (`other_wamids`), not over the first.
    SecondCopy,
}

/// Meta's acceptance of one outbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub outbound_id: i64,
    pub wamid: String,
    /// How Meta named the customer when that is not the number the part was sent to (Mexico's
    /// and Brazil's rewritten mobiles, see `wafleet_core::phone`): the conversation, made by a
    /// business's first message to the number it dialled, takes it as its key, so the
    /// customer's answers, which come from this `wa_id`, find it.
    pub adopt_wa_id: Option<String>,
    /// Which send of the part Meta accepted (`send_offset + attempts` when it was claimed):
    /// recorded only while the part still holds that send, so the acceptance of a send whose
    /// failure reopened the part, landing late, is not recorded over the resend in flight.
    /// `None`: not checked.
    pub send_no: Option<i32>,
}

impl Accepted {
    pub fn new(outbound_id: i64, wamid: impl Into<String>) -> Self {
        Self {
            outbound_id,
            wamid: wamid.into(),
            adopt_wa_id: None,
            send_no: None,
        }
    }
}

/// Records Meta's acceptance of outbound messages, applies to each the most advanced status
/// that arrived before it (a `failed` one stays final), marks the customer's messages they
/// answer as answered, and re-keys a conversation by the `wa_id` Meta named (unless the
/// customer already has a conversation under it). One statement per run of distinct ids.
pub async fn record_accepted_many(
    conn: &mut PgConnection,
    accepted: &[Accepted],
) -> sqlx::Result<Vec<Acceptance>> {
    let mut results = Vec::with_capacity(accepted.len());
    for run in super::distinct_runs(accepted, |a| [a.outbound_id]) {
        let ids: Vec<i64> = run.iter().map(|a| a.outbound_id).collect();
        let wamids: Vec<&str> = run.iter().map(|a| a.wamid.as_str()).collect();
        let adopt: Vec<Option<&str>> = run.iter().map(|a| a.adopt_wa_id.as_deref()).collect();
        let send_nos: Vec<Option<i32>> = run.iter().map(|a| a.send_no).collect();
        let rows: Vec<(i64, Option<bool>, Option<i32>, bool)> = sqlx::query_as(
            "WITH input AS (
                 -- With each part's number: its early statuses are only those of its number.
                 SELECT i.*, o.channel_id
                   FROM unnest($1::int8[], $2::text[], $3::text[], $4::int4[])
                        AS i(id, wamid, adopt, send_no)
                   LEFT JOIN outbound_messages o ON o.id = i.id
             ), locked AS MATERIALIZED (
                 SELECT o.id FROM outbound_messages o WHERE o.id IN (SELECT id FROM input)
                  ORDER BY o.id FOR UPDATE
             ), e AS (
                 -- Only statuses of the part's own number (or of none known): another
                 -- tenant's webhook naming this wamid changes nothing (migration 0028).
                 SELECT DISTINCT ON (s.wamid) s.wamid, s.status, s.rank, s.status_at,
                        s.error_code, s.error_title
                   FROM early_statuses s JOIN input i ON i.wamid = s.wamid
                  WHERE s.channel_id IN (0, i.channel_id)
                  ORDER BY s.wamid, s.rank DESC
             ), accepted AS (
                 UPDATE outbound_messages o SET
                        -- A part sent while its customer was erased (crate::erasure) keeps only
                        -- the digest of Meta's wamid, which encodes the customer's number.
                        -- Erased is read from the row (its text is gone; no part is recorded
                        -- empty), not its conversation: a statement that waited for an
                        -- erasure's lock on the row re-reads the row, but not the conversation.
                        wamid = CASE WHEN o.body = '' THEN erased_wamid(i.wamid)
                                     ELSE i.wamid END,
                        state = CASE WHEN o.delivery_rank >= 4 THEN o.state
                                     WHEN o.delivery_rank < e.rank AND e.status = 'failed' THEN 'failed'
                                     ELSE 'accepted' END,
                        delivery = CASE WHEN o.delivery_rank < e.rank THEN e.status
                                        ELSE o.delivery END,
                        delivery_rank = CASE WHEN o.delivery_rank < e.rank THEN e.rank
                                             ELSE o.delivery_rank END,
                        delivery_at = CASE WHEN o.delivery_rank < e.rank THEN e.status_at
                                           ELSE o.delivery_at END,
                        error_code = CASE WHEN o.delivery_rank < e.rank THEN e.error_code
                                          ELSE o.error_code END,
                        error_title = CASE WHEN o.delivery_rank < e.rank THEN e.error_title
                                           ELSE o.error_title END
                   FROM input i LEFT JOIN e ON e.wamid = i.wamid
                  WHERE o.id = i.id AND o.id IN (SELECT id FROM locked)
                    -- Reopened meanwhile (its `failed` status, matched by our callback id,
                    -- came first and put it back for a resend): that resend records its own.
                    AND o.state <> 'pending'
                    -- Nor a later send of it, claimed since: it records its own.
                    AND (i.send_no IS NULL OR o.send_offset + o.attempts = i.send_no)
                    -- Nor over the wamid of an earlier send a late status showed Meta took
                    -- while this one was in flight: see `second`.
                    AND (o.wamid IS NULL OR o.wamid IN (i.wamid, erased_wamid(i.wamid)))
              RETURNING o.id, o.reply_to, e.status = 'failed' AND o.state = 'failed' AS failed_first,
                        o.error_code
             ), second AS (
                 -- The part holds an earlier send Meta took (apply_statuses made it the part's
                 -- while this send was in flight): this one is a second copy, recorded among
                 -- the part's other sends as a digest, so its statuses are known.
                 UPDATE outbound_messages o
                    SET other_wamids = array_append(o.other_wamids, erased_wamid(i.wamid))
                   FROM input i
                  WHERE o.id = i.id AND o.id IN (SELECT id FROM locked)
                    AND o.state <> 'pending'
                    AND (i.send_no IS NULL OR o.send_offset + o.attempts = i.send_no)
                    AND o.wamid NOT IN (i.wamid, erased_wamid(i.wamid))
                    AND NOT erased_wamid(i.wamid) = ANY(o.other_wamids)
              RETURNING o.id
             ), applied AS (
                 DELETE FROM early_statuses s USING input i
                  WHERE s.wamid = i.wamid AND s.channel_id IN (0, i.channel_id)
             ), answered AS (
                 UPDATE messages SET answered_at = COALESCE(answered_at, now())
                  WHERE id IN (SELECT reply_to FROM accepted)
             ), adopted AS (
                 -- Rare (a number dialled in the notation Meta does not use), so costs nothing
                 -- in the common batch. Two conversations adopting one wa_id in a batch, or a
                 -- customer's conversation made under it meanwhile, fail the statement on the
                 -- unique key: the batcher then runs each item alone, where this check sees it.
                 UPDATE conversations c SET customer_key = a.adopt, wa_id = a.adopt
                   FROM (SELECT DISTINCT ON (o.conversation_id) o.conversation_id, i.adopt
                           FROM input i JOIN outbound_messages o ON o.id = i.id
                          WHERE i.adopt IS NOT NULL
                          ORDER BY o.conversation_id, i.id) a
                  WHERE c.id = a.conversation_id
                    AND c.customer_key = c.wa_id AND c.wa_id <> a.adopt
                    AND NOT EXISTS (SELECT 1 FROM conversations d
                                     WHERE d.channel_id = c.channel_id AND d.customer_key = a.adopt)
             )
             SELECT i.id, a.failed_first, a.error_code, i.id IN (SELECT id FROM second)
               FROM input i LEFT JOIN accepted a ON a.id = i.id",
        )
        .bind(&ids)
        .bind(&wamids)
        .bind(&adopt)
        .bind(&send_nos)
        .fetch_all(&mut *conn)
        .await?;
        let by_id: std::collections::HashMap<i64, (Option<bool>, Option<i32>, bool)> = rows
            .into_iter()
            .map(|(id, failed, code, second)| (id, (failed, code, second)))
            .collect();
        results.extend(ids.iter().map(|id| match by_id.get(id) {
            Some((Some(true), code, _)) => Acceptance::FailedFirst { code: *code },
            Some((_, _, true)) => Acceptance::SecondCopy,
            _ => Acceptance::Recorded,
        }));
    }
    Ok(results)
}
