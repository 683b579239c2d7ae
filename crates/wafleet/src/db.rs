//! The Postgres pool and the embedded migrations (`migrations/` at the workspace root).

use std::time::Duration;

use anyhow::Context;
pub use sqlx::postgres::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Migrations compiled into every binary, so a deployment cannot run code against a schema it
/// does not know.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        // Bounded so a Postgres outage surfaces as an error to back off on, not a hang.
        .acquire_timeout(Duration::from_secs(3))
        // No round trip to test a connection before every use (sqlx's default): it doubled the
        // round trips of every single-statement query. A connection that died since its last
        // use fails the query instead, which every caller already treats as "Postgres
        // unavailable, retry", and sqlx's check when the connection is released drops it.
        .test_before_acquire(false)
        .connect(url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("running database migrations")
}
