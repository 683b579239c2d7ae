//! What each channel used over a period: for a platform that bills the businesses it hosts, and
//! for a shop that watches its model spend (`wafleetctl usage`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// One channel's use in `[from, to)`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ChannelUsage {
    pub phone_number_id: String,
    /// Customer messages stored (by when they were received).
    pub customer_messages: i64,
    /// Conversations with at least one customer message.
    pub conversations: i64,
    /// Replies the model wrote, and canned replies (every provider failed).
    pub model_replies: i64,
    pub canned_replies: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Parts Meta accepted, by who wrote them (by when they were written); not the echoes of the
    /// WhatsApp Business app, which we never sent.
    pub sent_by_bot: i64,
    pub sent_by_agents: i64,
    pub failed: i64,
    /// Conversations handed to a human, for any reason (a keyword, the model, a closed window,
    /// an agent taking it), by when.
    pub handovers: i64,
}

/// Every channel's use in `[from, to)`, channels without any use included (all zero).
pub async fn by_channel(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> sqlx::Result<Vec<ChannelUsage>> {
    // Each table is read once, grouped by channel (a per-channel subquery would read the
    // period's rows once per channel: minutes instead of a second for 200 numbers).
    sqlx::query_as(
        "WITH m AS (
             SELECT channel_id, count(*) AS n, count(DISTINCT conversation_id) AS conversations
               FROM messages WHERE received_at >= $1 AND received_at < $2
              GROUP BY channel_id
         ), r AS (
             SELECT c.channel_id,
                    count(*) FILTER (WHERE r.provider IS NOT NULL AND NOT r.canned) AS model,
                    count(*) FILTER (WHERE r.canned) AS canned,
                    sum(r.input_tokens)::int8 AS input_tokens,
                    sum(r.output_tokens)::int8 AS output_tokens
               FROM replies r JOIN conversations c ON c.id = r.conversation_id
              WHERE r.created_at >= $1 AND r.created_at < $2
              GROUP BY c.channel_id
         ), o AS (
             SELECT channel_id,
                    count(*) FILTER (WHERE state = 'accepted'
                                       AND kind NOT IN ('agent', 'template')) AS bot,
                    -- Not what the owner wrote from the WhatsApp Business app: we sent none
                    -- of it.
                    count(*) FILTER (WHERE state = 'accepted'
                                       AND kind IN ('agent', 'template')
                                       AND agent IS DISTINCT FROM 'business_app') AS agents,
                    count(*) FILTER (WHERE state = 'failed') AS failed
               FROM outbound_messages WHERE created_at >= $1 AND created_at < $2
              GROUP BY channel_id
         ), h AS (
             SELECT c.channel_id, count(*) AS n
               FROM handover_events e JOIN conversations c ON c.id = e.conversation_id
              WHERE e.kind = 'handover' AND e.created_at >= $1 AND e.created_at < $2
              GROUP BY c.channel_id
         )
         SELECT ch.phone_number_id,
                COALESCE(m.n, 0) AS customer_messages, COALESCE(m.conversations, 0) AS conversations,
                COALESCE(r.model, 0) AS model_replies, COALESCE(r.canned, 0) AS canned_replies,
                COALESCE(r.input_tokens, 0) AS input_tokens,
                COALESCE(r.output_tokens, 0) AS output_tokens,
                COALESCE(o.bot, 0) AS sent_by_bot, COALESCE(o.agents, 0) AS sent_by_agents,
                COALESCE(o.failed, 0) AS failed, COALESCE(h.n, 0) AS handovers
           FROM channels ch
           LEFT JOIN m ON m.channel_id = ch.id
           LEFT JOIN r ON r.channel_id = ch.id
           LEFT JOIN o ON o.channel_id = ch.id
           LEFT JOIN h ON h.channel_id = ch.id
          ORDER BY ch.phone_number_id",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}

/// Tokens by channel, provider and model in `[from, to)`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ModelUsage {
    pub phone_number_id: String,
    pub provider: String,
    pub model: String,
    pub replies: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

pub async fn by_model(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> sqlx::Result<Vec<ModelUsage>> {
    sqlx::query_as(
        "SELECT ch.phone_number_id, r.provider, COALESCE(r.model, '-') AS model,
                count(*) AS replies, COALESCE(sum(r.input_tokens), 0)::int8 AS input_tokens,
                COALESCE(sum(r.output_tokens), 0)::int8 AS output_tokens
           FROM replies r
           JOIN conversations c ON c.id = r.conversation_id
           JOIN channels ch ON ch.id = c.channel_id
          WHERE r.provider IS NOT NULL AND r.created_at >= $1 AND r.created_at < $2
          GROUP BY ch.phone_number_id, r.provider, r.model
          ORDER BY ch.phone_number_id, r.provider, model",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}
