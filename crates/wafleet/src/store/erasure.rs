//! What Postgres holds of one customer of a channel, found and erased (see [`crate::erasure`]).

use sqlx::{PgConnection, PgPool};

/// One customer of a channel as Postgres knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// Their conversations.
    pub conversations: Vec<i64>,
    /// Every identifier they are known by: the one asked for (and its other notation, for a
    /// Mexican or Brazilian mobile), then the phone, business-scoped id and conversation key of
    /// each conversation found.
    pub identifiers: Vec<String>,
    /// The channel's WhatsApp Business Account, which names updates that carry no number.
    pub waba_id: Option<String>,
    /// The outbound parts of their conversations: a part's wamid may sit in Redis while
    /// Postgres would not record it (the sender's stash), and Meta's wamids encode the
    /// customer's number.
    pub outbound: Vec<i64>,
}

/// Finds a channel's customer by any of `identifiers` (phone, business-scoped id or
/// conversation key), following every identifier found: a customer can have a conversation keyed
/// by their phone and another by their business-scoped id. A former holder's conversation set
/// aside when the number passed to someone else (`number_moves`, see
/// [`crate::store::conversations::follow_identity_change`]) is found by what it was known by;
/// those identifiers are not followed further (the number now names someone else too, whose
/// conversation the number finds anyway). `lock` takes the conversations
/// `FOR UPDATE`, which also waits for every transaction still writing under them.
async fn find(
    conn: &mut PgConnection,
    phone_number_id: &str,
    identifiers: &[String],
    lock: bool,
) -> sqlx::Result<Found> {
    let mut found = Found {
        identifiers: identifiers.to_vec(),
        ..Found::default()
    };
    let sql = format!(
        "SELECT c.id, c.customer_key, c.wa_id, c.user_id
           FROM conversations c JOIN channels ch ON ch.id = c.channel_id
          WHERE ch.phone_number_id = $1
            AND (c.customer_key = ANY($2) OR c.wa_id = ANY($2) OR c.user_id = ANY($2)
                 OR c.id IN (SELECT conversation_id FROM number_moves
                              WHERE identifiers && $2::text[]))
          ORDER BY c.id{}",
        if lock { " FOR UPDATE OF c" } else { "" }
    );
    loop {
        let rows: Vec<(i64, String, Option<String>, Option<String>)> = sqlx::query_as(&sql)
            .bind(phone_number_id)
            .bind(&found.identifiers)
            .fetch_all(&mut *conn)
            .await?;
        let before = (found.conversations.len(), found.identifiers.len());
        for (id, key, wa_id, user_id) in rows {
            if !found.conversations.contains(&id) {
                found.conversations.push(id);
            }
            for v in [Some(key), wa_id, user_id].into_iter().flatten() {
                if !found.identifiers.contains(&v) {
                    found.identifiers.push(v);
                }
            }
        }
        if (found.conversations.len(), found.identifiers.len()) == before {
            break;
        }
    }
    Ok(found)
}

/// The customer as Postgres knows them now, without changing anything: what the Redis side of
/// the erasure looks for before Postgres forgets the identifiers.
pub async fn find_customer(
    pool: &PgPool,
    phone_number_id: &str,
    customer: &str,
) -> sqlx::Result<Found> {
    let mut conn = pool.acquire().await?;
    // A Mexican or Brazilian customer may give their number in the notation Meta does not use.
    let asked = wafleet_core::phone::forms(customer);
    let mut found = find(&mut conn, phone_number_id, &asked, false).await?;
    found.waba_id = sqlx::query_scalar("SELECT waba_id FROM channels WHERE phone_number_id = $1")
        .bind(phone_number_id)
        .fetch_optional(&mut *conn)
        .await?
        .flatten();
    found.outbound =
        sqlx::query_scalar("SELECT id FROM outbound_messages WHERE conversation_id = ANY($1)")
            .bind(&found.conversations)
            .fetch_all(&mut *conn)
            .await?;
    Ok(found)
}

/// What erasing a customer changed in Postgres.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErasedRows {
    pub conversations: Vec<i64>,
    pub messages: u64,
    pub outbound: u64,
}

/// Erases what Postgres holds of the customer `known` ([`find_customer`]; found again, locked, by
/// its identifiers, so a conversation started since is erased too): their conversations lose
/// the customer's identifiers and profile name (the conversation key becomes `erased:<id>`, so a
/// later message starts a new conversation), their messages lose text, metadata and quoted ids,
/// every message written to them (bot, agent, template) loses its body (one not sent yet fails
/// instead of going out), and the wamids of both (Meta's wamids encode the customer's number)
/// become `erased:<sha-256>`, so each stays distinct; an agent's or a template's reference becomes
/// the SHA-256 of the customer's number and the reference, so a template to them by phone retried
/// with its key is refused rather than sent again. Ids, states, times and token counts stay, so
/// metrics and usage still add up.
///
/// Two transactions. The first finds and locks the conversations and erases them. The second
/// locks them again, which waits for every transaction that was writing under them meanwhile
/// (a reply the model finished during the first, whose outbound rows hold the conversation's
/// key share), and erases what they wrote. Replies recorded later find the conversation erased
/// and record no parts ([`crate::store::replies::record_replies`]).
pub async fn erase_customer(
    pool: &PgPool,
    phone_number_id: &str,
    known: &Found,
) -> sqlx::Result<ErasedRows> {
    let mut tx = pool.begin().await?;
    // Messages before conversations, the order in which recording a reply takes them (its
    // foreign keys share the message, then the conversation): the other order deadlocks, since
    // hashing a message's wamid (a unique key) conflicts with the reply's key share.
    lock_messages(&mut tx, &known.conversations).await?;
    let found = find(&mut tx, phone_number_id, &known.identifiers, true).await?;
    let ids = found.conversations;
    if ids.is_empty() {
        return Ok(ErasedRows::default());
    }
    let (messages, outbound) = scrub(&mut tx, &ids).await?;
    sqlx::query(
        "UPDATE conversations SET customer_key = 'erased:' || id, wa_id = NULL, user_id = NULL,
                                  profile_name = NULL
          WHERE id = ANY($1)",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE number_moves SET identifiers = '{}' WHERE conversation_id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    let mut tx = pool.begin().await?;
    lock_messages(&mut tx, &ids).await?;
    sqlx::query("SELECT id FROM conversations WHERE id = ANY($1) FOR UPDATE")
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
    let (late_messages, late_outbound) = scrub(&mut tx, &ids).await?;
    tx.commit().await?;
    Ok(ErasedRows {
        conversations: ids,
        messages: messages + late_messages,
        outbound: outbound + late_outbound,
    })
}

/// Locks the conversations' messages, waiting for every transaction that holds one of them (a
/// reply being recorded).
async fn lock_messages(conn: &mut PgConnection, conversations: &[i64]) -> sqlx::Result<()> {
    sqlx::query("SELECT id FROM messages WHERE conversation_id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(conversations)
        .fetch_all(&mut *conn)
        .await?;
    Ok(())
}

/// Erases the conversations' messages and outbound parts; answers how many of each it changed
/// (those already erased are left alone).
async fn scrub(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<(u64, u64)> {
    let messages = sqlx::query(
        "UPDATE messages
            SET text_redacted = NULL, metadata = '{}', context_wamid = NULL, pii_types = '{}',
                wamid = erased_wamid(wamid),
                -- Nothing of theirs waits for an answer any more.
                answered_at = COALESCE(answered_at, now())
          WHERE conversation_id = ANY($1) AND wamid NOT LIKE 'erased:%'",
    )
    .bind(ids)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query(
        "DELETE FROM early_statuses
          WHERE wamid IN (SELECT wamid FROM outbound_messages
                           WHERE conversation_id = ANY($1) AND wamid IS NOT NULL)",
    )
    .bind(ids)
    .execute(&mut *conn)
    .await?;
    // A part not sent yet will not be: its text is gone. An agent's or a template's reference
    // becomes the digest of the customer's number and the reference (`erased_ref`, migration
    // 0023), which is how a template to them by phone retried after this is recognised
    // (`crate::store::agents::open_conversation`). Done before the conversations lose the number.
    let outbound = sqlx::query(
        "UPDATE outbound_messages o
            SET body = '',
                history_text = NULL,
                payload = NULL,
                wamid = CASE WHEN o.wamid IS NULL OR o.wamid LIKE 'erased:%' THEN o.wamid
                             ELSE erased_wamid(o.wamid)
                        END,
                agent_ref = CASE WHEN o.agent_ref IS NULL OR o.agent_ref LIKE 'erased:%'
                                 THEN o.agent_ref
                                 ELSE erased_ref(COALESCE(c.wa_id, c.customer_key), o.agent_ref)
                            END,
                fail_reason = CASE WHEN o.state = 'pending' THEN 'the customer''s data was erased'
                                   ELSE o.fail_reason END,
                state = CASE WHEN o.state = 'pending' THEN 'failed' ELSE o.state END
           FROM conversations c
          WHERE c.id = o.conversation_id AND o.conversation_id = ANY($1)
            AND (o.body <> '' OR o.state = 'pending' OR o.history_text IS NOT NULL
                 OR o.payload IS NOT NULL
                 OR (o.wamid IS NOT NULL AND o.wamid NOT LIKE 'erased:%')
                 OR (o.agent_ref IS NOT NULL AND o.agent_ref NOT LIKE 'erased:%'))",
    )
    .bind(ids)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok((messages, outbound))
}
