//! A channel's knowledge base (migration 0014): entries written by the business, found by
//! Postgres full-text search for each customer message and given to the model with its
//! instructions, so it answers from the business's facts instead of guessing.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The longest entry body taken: a few entries go into every request to the model.
pub const MAX_BODY_CHARS: usize = 4000;

/// The longest title taken: a title names an entry (and is unique per channel, so it is in an
/// index whose rows Postgres caps at about 2.7 kB).
pub const MAX_TITLE_CHARS: usize = 200;

/// What adding an entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Added,
    /// An entry with that title was there: its text and language were replaced.
    Replaced,
    NoChannel,
    /// Postgres knows no text search configuration of that name.
    UnknownLanguage,
}

/// The language of an entry when none is given: words matched as written.
pub const DEFAULT_LANGUAGE: &str = "simple";

/// What is wrong with an entry, before anything is written: a title, a body, and no more of it
/// than goes to the model.
pub fn check(title: &str, body: &str) -> Result<(), String> {
    if title.trim().is_empty() {
        return Err("give the entry a title".into());
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(format!(
            "the title is longer than {MAX_TITLE_CHARS} characters: name the entry, put the text in its body"
        ));
    }
    if body.trim().is_empty() {
        return Err("the entry is empty".into());
    }
    let chars = body.chars().count();
    if chars > MAX_BODY_CHARS {
        return Err(format!(
            "the entry has {chars} characters; at most {MAX_BODY_CHARS} go to the model: split it"
        ));
    }
    Ok(())
}

/// Adds an entry to a channel's knowledge base, or replaces the one with the same title (after
/// [`check`]).
pub async fn put(
    pool: &PgPool,
    phone_number_id: &str,
    title: &str,
    body: &str,
    language: &str,
) -> sqlx::Result<Put> {
    let known: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = $1)")
            .bind(language)
            .fetch_one(pool)
            .await?;
    if !known {
        return Ok(Put::UnknownLanguage);
    }
    let row: Option<(bool,)> = sqlx::query_as(
        "INSERT INTO knowledge_entries (channel_id, title, body, language, tsv)
         SELECT ch.id, $2, $3, $4::regconfig,
                setweight(to_tsvector($4::regconfig, $2), 'A')
                || setweight(to_tsvector($4::regconfig, $3), 'B')
           FROM channels ch WHERE ch.phone_number_id = $1
         ON CONFLICT (channel_id, title) DO UPDATE
            SET body = EXCLUDED.body, language = EXCLUDED.language, tsv = EXCLUDED.tsv,
                updated_at = now()
         RETURNING (xmax = 0)",
    )
    .bind(phone_number_id)
    .bind(title)
    .bind(body)
    .bind(language)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => Put::NoChannel,
        Some((true,)) => Put::Added,
        Some((false,)) => Put::Replaced,
    })
}

/// An entry as `wafleetctl knowledge list` and the API show it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct EntryInfo {
    pub title: String,
    pub language: String,
    pub chars: i32,
    pub updated_at: DateTime<Utc>,
}

/// A channel's entries, by title.
pub async fn list(pool: &PgPool, phone_number_id: &str) -> sqlx::Result<Vec<EntryInfo>> {
    sqlx::query_as(
        "SELECT k.title, k.language::text AS language, char_length(k.body) AS chars, k.updated_at
           FROM knowledge_entries k JOIN channels ch ON ch.id = k.channel_id
          WHERE ch.phone_number_id = $1 ORDER BY k.title",
    )
    .bind(phone_number_id)
    .fetch_all(pool)
    .await
}

/// Removes an entry; `false` when the channel has none with that title.
pub async fn remove(pool: &PgPool, phone_number_id: &str, title: &str) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "DELETE FROM knowledge_entries k USING channels ch
          WHERE ch.id = k.channel_id AND ch.phone_number_id = $1 AND k.title = $2",
    )
    .bind(phone_number_id)
    .bind(title)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// The `limit` entries of a channel that best match `text` (any of its words, stemmed in each
/// entry's language; title words weigh more), best first: (title, body). None when no word
/// matches.
pub async fn relevant(
    pool: &PgPool,
    channel_id: i64,
    text: &str,
    limit: i64,
) -> sqlx::Result<Vec<(String, String)>> {
    // plainto_tsquery ANDs the words, which a whole customer sentence would rarely match: its
    // `&`s become `|`s (lexemes are quoted and carry no `&` of their own).
    sqlx::query_as(
        "SELECT title, body FROM (
             SELECT k.title, k.body, ts_rank(k.tsv, q.q) AS rank
               FROM knowledge_entries k
              CROSS JOIN LATERAL (
                  SELECT NULLIF(replace(plainto_tsquery(k.language, $2)::text, '&', '|'), '')::tsquery AS q
              ) q
              WHERE k.channel_id = $1 AND q.q IS NOT NULL AND k.tsv @@ q.q
         ) t
          ORDER BY rank DESC, title
          LIMIT $3",
    )
    .bind(channel_id)
    .bind(text)
    .bind(limit)
    .fetch_all(pool)
    .await
}
