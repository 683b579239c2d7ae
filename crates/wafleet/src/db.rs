//! The Postgres pool and the embedded migrations (`migrations/` at the workspace root).

use std::time::Duration;

use anyhow::Context;
pub use sqlx::postgres::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Migrations compiled into every binary, so a deployment cannot run code against a schema it
/// does not know.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// How Postgres plans wafleet's prepared statements (`WAFLEET_PG_PLAN_CACHE_MODE`).
///
/// Every query wafleet runs is a prepared statement keyed by ids (or arrays of them), which one
/// plan serves whatever the values. Postgres's default (`auto`) plans the first five executions
/// per connection with the values and then keeps doing so whenever the plan it would reuse looks
/// costlier, which it did here for most statements: below capacity, where batches hold one job,
/// planning was about 40 % of Postgres's CPU (`perf`, `just bench-e2e` at 100 msgs/s) and the
/// planner's stalls put the pipeline's p99 in the hundreds of milliseconds. A generic plan is
/// made once per connection and statement, and again after `ANALYZE` changes the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlanCacheMode {
    /// `plan_cache_mode=force_generic_plan` on every connection (the default).
    #[default]
    Generic,
    /// `plan_cache_mode=auto`: Postgres's own default.
    Auto,
    /// `plan_cache_mode=force_custom_plan`.
    Custom,
    /// Send nothing: whatever the server, database or role says. For poolers that refuse
    /// start-up options (PgBouncer without `ignore_startup_parameters = options`).
    Server,
}

impl PlanCacheMode {
    fn setting(self) -> Option<&'static str> {
        match self {
            PlanCacheMode::Generic => Some("force_generic_plan"),
            PlanCacheMode::Auto => Some("auto"),
            PlanCacheMode::Custom => Some("force_custom_plan"),
            PlanCacheMode::Server => None,
        }
    }
}

impl std::str::FromStr for PlanCacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "force_generic_plan" => Ok(PlanCacheMode::Generic),
            "auto" => Ok(PlanCacheMode::Auto),
            "force_custom_plan" => Ok(PlanCacheMode::Custom),
            "server" => Ok(PlanCacheMode::Server),
            other => Err(format!(
                "{other:?} is not one of force_generic_plan, auto, force_custom_plan, server"
            )),
        }
    }
}

pub async fn connect(
    url: &str,
    max_connections: u32,
    plan_cache_mode: PlanCacheMode,
) -> anyhow::Result<PgPool> {
    let mut options: PgConnectOptions = url
        .parse()
        .context("parsing DATABASE_URL (postgres://user:password@host:port/database)")?;
    if let Some(mode) = plan_cache_mode.setting() {
        // A start-up option, so it costs no round trip; it comes after any `options` of the URL
        // and therefore wins over them.
        options = options.options([("plan_cache_mode", mode)]);
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        // Bounded so a Postgres outage surfaces as an error to back off on, not a hang.
        .acquire_timeout(Duration::from_secs(3))
        // No round trip to test a connection before every use (sqlx's default): it doubled the
        // round trips of every single-statement query. A connection that died since its last
        // use fails the query instead, which every caller already treats as "Postgres
        // unavailable, retry", and sqlx's check when the connection is released drops it.
        .test_before_acquire(false)
        .connect_with(options.clone())
        .await;
    let what = format!(
        "connecting to Postgres at {} (DATABASE_URL)",
        server(&options)
    );
    match pool {
        Ok(pool) => Ok(pool),
        // The pool retries opening until its acquire timeout and then says only that it timed
        // out, which hides why (refused, unknown host, authentication, no such database): one
        // direct attempt names the cause.
        Err(sqlx::Error::PoolTimedOut) => {
            let attempt = tokio::time::timeout(
                Duration::from_secs(3),
                <sqlx::postgres::PgConnection as sqlx::Connection>::connect_with(&options),
            )
            .await;
            let cause = match attempt {
                Ok(Err(e)) => anyhow::Error::new(e),
                Ok(Ok(_)) => anyhow::anyhow!("timed out opening the pool; Postgres answered since"),
                Err(_) => anyhow::anyhow!("no answer within 3 s"),
            };
            Err(cause.context(what))
        }
        Err(e) => Err(e).context(what),
    }
}

/// Where `options` point, for errors: host (or socket directory), port and database, never the
/// user or password.
fn server(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}, database {}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(the user's)")
    )
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("running database migrations")
}

#[cfg(test)]
mod tests {
    use super::PlanCacheMode;

    #[test]
    fn plan_cache_modes_parse_from_postgres_names_and_refuse_others() {
        assert_eq!("force_generic_plan".parse(), Ok(PlanCacheMode::Generic));
        assert_eq!("auto".parse(), Ok(PlanCacheMode::Auto));
        assert_eq!("force_custom_plan".parse(), Ok(PlanCacheMode::Custom));
        assert_eq!("server".parse(), Ok(PlanCacheMode::Server));
        assert!("generic".parse::<PlanCacheMode>().is_err());
        assert_eq!(PlanCacheMode::default(), PlanCacheMode::Generic);
    }
}
