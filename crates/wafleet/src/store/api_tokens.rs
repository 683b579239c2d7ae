//! Bearer tokens of the agent API (migration 0012): made, listed and revoked by
//! `wafleetctl api-token`, checked by `wafleet-api` on every request. Only a SHA-256 of each
//! token is stored; the token is shown once, when it is made.

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// What a token may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The token's name (for logs: never the token).
    pub name: String,
    /// The business numbers it reaches; empty: every number.
    pub phone_number_ids: Vec<String>,
    /// Whether it manages channels (migration 0016); an admin token reaches every number.
    pub admin: bool,
}

impl Scope {
    /// Whether the token reaches this business number.
    pub fn reaches(&self, phone_number_id: &str) -> bool {
        self.phone_number_ids.is_empty()
            || self.phone_number_ids.iter().any(|n| n == phone_number_id)
    }
}

/// A token as `wafleetctl api-token list` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenInfo {
    pub name: String,
    pub phone_number_ids: Vec<String>,
    pub admin: bool,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// What a new token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// An agents' token reaching these business numbers (empty: every number).
    Agents(Vec<String>),
    /// An admin token: every number, and managing channels.
    Admin,
}

/// Makes a token named `name` with `grant` and returns it: `wfa_` and 64 hex digits (256 random
/// bits). `None` when the name is taken.
pub async fn add(pool: &PgPool, name: &str, grant: &Grant) -> sqlx::Result<Option<String>> {
    let (phone_number_ids, admin) = match grant {
        Grant::Agents(numbers) => (numbers.as_slice(), false),
        Grant::Admin => (&[][..], true),
    };
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let token = format!("wfa_{}", hex::encode(secret));
    let added = sqlx::query(
        "INSERT INTO api_tokens (name, token_sha256, phone_number_ids, admin)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(digest(&token))
    .bind(phone_number_ids)
    .bind(admin)
    .execute(pool)
    .await?
    .rows_affected();
    Ok((added == 1).then_some(token))
}

/// Those of `numbers` that are no channel's phone_number_id.
pub async fn unknown_numbers(pool: &PgPool, numbers: &[String]) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT n FROM unnest($1::text[]) AS n
          WHERE NOT EXISTS (SELECT 1 FROM channels WHERE phone_number_id = n)",
    )
    .bind(numbers)
    .fetch_all(pool)
    .await
}

/// Every token, revoked ones included, by name.
pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<TokenInfo>> {
    sqlx::query_as(
        "SELECT name, phone_number_ids, admin, created_at, revoked_at FROM api_tokens
          ORDER BY name",
    )
    .fetch_all(pool)
    .await
}

/// Revokes a token at once (the API checks every request against Postgres); `false` when no
/// token of that name is live.
pub async fn revoke(pool: &PgPool, name: &str) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL",
    )
    .bind(name)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// The scope of a live token; `None` for an unknown or revoked one. Looked up by the token's
/// digest, so neither the token nor a prefix of it is ever compared.
pub async fn authenticate(pool: &PgPool, token: &str) -> sqlx::Result<Option<Scope>> {
    let row: Option<(String, Vec<String>, bool)> = sqlx::query_as(
        "SELECT name, phone_number_ids, admin FROM api_tokens
          WHERE token_sha256 = $1 AND revoked_at IS NULL",
    )
    .bind(digest(token))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(name, phone_number_ids, admin)| Scope {
        name,
        phone_number_ids,
        admin,
    }))
}
