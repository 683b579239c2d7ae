//! # wafleet
//!
//! The adapters and services around [`wafleet_core`]: everything that touches the network, the
//! clock or the environment. Binaries (`wafleet-ingest`, `wafleetctl`) are thin wrappers around
//! the `run` functions here, which tests call directly on port 0.
//!
//! # Layout
//! - [`api`]: the agent API (`wafleet-api`): conversations, takes, releases, agents' messages
//!   and live events over HTTP, behind bearer tokens.
//! - [`config`]: typed settings from the environment; secrets wrapped so they never print.
//! - [`crypto`]: AES-256-GCM encryption of tokens and secrets at rest.
//! - [`db`]: the Postgres pool and migrations.
//! - [`dead_letters`]: reading and replaying a stage's dead letters.
//! - [`erasure`]: erasing a customer on their request, from Postgres and Redis.
//! - [`store`]: Postgres tables (channels).
//! - [`streams`]: the Redis key layout and the atomic dedup + enqueue step. The one place where
//!   stream names, fields and partitioning are defined.
//! - [`shared_redis`]: one multiplexed Redis connection per process, reopened after a failure.
//! - [`channels`]: the in-memory channel registry ingest serves lookups from.
//! - [`telemetry`]: tracing and the Prometheus recorder.
//! - [`ingest`]: the webhook HTTP service.
//! - [`serve`]: listening, accepting and serving HTTP/1 connections (with a bound on each
//!   request's head), and the drain, for ingest and the agent API.
//! - [`llm`]: LLM provider clients (Anthropic, OpenAI-compatible) with deadlines, retries, fallback
//!   to the next provider and a canned reply, and the handover marker.
//! - [`graph`]: the Graph API client (text sends, mark-read, typing); outcomes say whether a
//!   failed send may have reached Meta.
//! - [`ratelimit`]: the fleet-wide send limiter in Redis (number throughput + per-recipient pair
//!   rate, GCRA in one script), with penalties and pauses.

pub mod agents;
pub mod api;
pub mod batch;
pub mod channels;
pub mod config;
pub mod crypto;
pub mod db;
pub mod dead_letters;
pub mod erasure;
pub mod graph;
pub mod ingest;
pub mod llm;
pub mod partition_count;
pub mod quarantine;
pub mod ratelimit;
pub mod serve;
pub mod shared_redis;
pub mod stages;
pub mod store;
pub mod streams;
pub mod telemetry;
pub mod worker;

pub use serve::{LISTEN_BACKLOG, listen, serve_draining};

/// Completes on SIGTERM or Ctrl-C: what every binary passes as its shutdown future.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
