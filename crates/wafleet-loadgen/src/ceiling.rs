//! `wafleet-loadgen ceiling`: what ingest would sustain if Redis and Postgres cost nothing.
//!
//! The same HTTP stack as ingest (axum on tokio, same body limit) and the same CPU work per
//! request before any I/O: read the body, verify the signature over the raw bytes, parse the
//! envelope. Then 200, with nothing stored. Ingest's throughput divided by this one is the share
//! its Redis step leaves of what the machine can do.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use wafleet_core::signature::{self, AppSecret};
use wafleet_core::webhook;

/// Meta's documented maximum payload, as ingest's default.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

pub fn router(secret: &[u8]) -> Router {
    let secrets: Arc<[AppSecret]> = Arc::new([AppSecret::new(secret)]);
    Router::new()
        .route("/webhooks/whatsapp", post(receive))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(secrets)
}

async fn receive(
    State(secrets): State<Arc<[AppSecret]>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let header = headers.get("x-hub-signature-256").map(|v| v.as_bytes());
    if signature::verify(&body, header, &secrets).is_err() {
        return (StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // Ingest answers 200 to a signed body it cannot parse (it dead-letters it); so does this.
    let updates = webhook::parse(&body).map_or(0, |p| p.updates.len() + p.rejected.len());
    std::hint::black_box(updates);
    (StatusCode::OK, "ok")
}

/// Serves until SIGTERM or Ctrl-C.
pub async fn serve(listen: SocketAddr, secret: &[u8]) -> anyhow::Result<()> {
    anyhow::ensure!(
        listen.ip().is_loopback(),
        "--listen must be a loopback address, got {listen}"
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("ceiling listening on {}", listener.local_addr()?);
    axum::serve(listener, router(secret))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
