//! Ingest's serving threads ("lanes"): each is a single-threaded tokio runtime that serves the
//! connections handed to it, with its own multiplexed Redis connections (webhooks', and batches'
//! of more than [`super::http::BULK_APPENDS`] updates).
//!
//! Why not one work-stealing runtime: a webhook's Redis step went from the request's task to the
//! connection's driver task and back, and on a work-stealing runtime those two often ran on
//! different threads, so each step woke a parked thread (an eventfd write, a futex, a context
//! switch) twice. On a lane the request, its Redis connection and the connection's driver share
//! one thread: every wake-up is a queue push. Measured with `just bench-ingest` on 2 cores: 22-24
//! µs of ingest CPU per webhook on the work-stealing runtime, 18-19 µs on lanes (README, Figures).
//!
//! The accept loop runs on the caller's runtime and hands each new connection to the lane with
//! the fewest open ones; a connection stays on its lane for its life (HTTP/1 serves one request
//! at a time per connection anyway). Postgres work stays on the caller's runtime, which owns the
//! pool's connections: a lane asks it through [`AppState::home`](super::AppState::home).
//!
//! Shutdown: [`Lanes::drain`] stops taking connections, lets each connection finish the request
//! it is serving (idle keep-alive connections close at once), and waits up to the grace period;
//! past it, or when `run` is dropped, the lanes' runtimes are shut down with whatever is left.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::serve::{HeadTimeout, serve_connection};

/// The serving threads of one ingest.
pub struct Lanes {
    lanes: Vec<Lane>,
    /// Cancelled when the drain starts: lanes take no more connections, connections finish.
    draining: CancellationToken,
    /// Cancelled past the grace period, or when the lanes are dropped: lanes stop at once.
    abort: CancellationToken,
}

struct Lane {
    connections: mpsc::UnboundedSender<std::net::TcpStream>,
    open: Arc<AtomicUsize>,
    /// Completes when the lane's thread has shut its runtime down.
    done: oneshot::Receiver<()>,
}

impl Lanes {
    /// Starts `count` lanes; `app(i)` is lane `i`'s router (its state with its own Redis).
    /// `head` bounds the wait for each request's head on every connection.
    pub fn start(
        count: usize,
        head: HeadTimeout,
        mut app: impl FnMut(usize) -> Router,
    ) -> anyhow::Result<Self> {
        let draining = CancellationToken::new();
        let abort = CancellationToken::new();
        let mut lanes = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building an ingest lane's runtime")?;
            let (connections, incoming) = mpsc::unbounded_channel();
            let (finished, done) = oneshot::channel();
            let open = Arc::new(AtomicUsize::new(0));
            let serve = serve_lane(
                index,
                incoming,
                app(index),
                head.clone(),
                open.clone(),
                draining.clone(),
            );
            let abort = abort.clone();
            std::thread::Builder::new()
                .name(format!("ingest-lane-{index}"))
                .spawn(move || {
                    runtime.block_on(async {
                        tokio::select! {
                            () = serve => {}
                            () = abort.cancelled() => {}
                        }
                    });
                    // A heavy signature check or a batch's parse still on the blocking pool is
                    // waited for up to 1 s, then left (its request is dropped unanswered).
                    runtime.shutdown_timeout(Duration::from_secs(1));
                    let _ = finished.send(());
                })
                .context("starting an ingest lane's thread")?;
            lanes.push(Lane {
                connections,
                open,
                done,
            });
        }
        Ok(Self {
            lanes,
            draining,
            abort,
        })
    }

    /// Hands `stream` to the lane with the fewest open connections.
    pub fn dispatch(&self, stream: tokio::net::TcpStream) {
        // Out of this runtime's reactor; the lane registers it with its own.
        let mut stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "could not hand a connection to a lane; closed");
                return;
            }
        };
        // A lane's thread ends only on shutdown; one that ended otherwise is passed over.
        let mut lanes: Vec<&Lane> = self
            .lanes
            .iter()
            .filter(|lane| !lane.connections.is_closed())
            .collect();
        lanes.sort_by_key(|lane| lane.open.load(Ordering::Relaxed));
        for lane in lanes {
            lane.open.fetch_add(1, Ordering::Relaxed);
            match lane.connections.send(stream) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => {
                    lane.open.fetch_sub(1, Ordering::Relaxed);
                    stream = back;
                }
            }
        }
        tracing::error!("no ingest lane is serving; connection closed");
    }

    /// Lets every connection finish its request, for at most `grace`.
    pub async fn drain(mut self, grace: Duration) {
        self.draining.cancel();
        let lanes = std::mem::take(&mut self.lanes);
        let all_done = async {
            for lane in lanes {
                let _ = lane.done.await;
            }
        };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            tracing::warn!(
                ?grace,
                "drain exceeded the grace period; exiting with requests in flight"
            );
        }
        // Drop cancels `abort`: whatever is left stops now.
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        self.draining.cancel();
        self.abort.cancel();
    }
}

/// One lane: serves the connections it is handed until the drain, then waits for them.
async fn serve_lane(
    index: usize,
    mut incoming: mpsc::UnboundedReceiver<std::net::TcpStream>,
    app: Router,
    head: HeadTimeout,
    open: Arc<AtomicUsize>,
    draining: CancellationToken,
) {
    let label = index.to_string();
    let gauge = metrics::gauge!("wafleet_ingest_open_connections", "lane" => label);
    gauge.set(0.0);
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            biased;
            () = draining.cancelled() => break,
            stream = incoming.recv() => match stream {
                Some(stream) => stream,
                None => break,
            },
        };
        let guard = OpenGuard {
            open: open.clone(),
            gauge: gauge.clone(),
        };
        gauge.set(open.load(Ordering::Relaxed) as f64);
        match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => {
                let served = serve_connection(stream, app.clone(), head.clone(), draining.clone());
                tracker.spawn(async move {
                    served.await;
                    drop(guard);
                });
            }
            Err(e) => tracing::warn!(error = %e, "could not serve a connection on a lane; closed"),
        }
    }
    tracker.close();
    tracker.wait().await;
}

/// Counts a connection open on its lane until it ends.
struct OpenGuard {
    open: Arc<AtomicUsize>,
    gauge: metrics::Gauge,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let left = self.open.fetch_sub(1, Ordering::Relaxed) - 1;
        self.gauge.set(left as f64);
    }
}
