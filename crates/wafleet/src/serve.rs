//! Serving HTTP/1: listening, accepting, one connection at a time, and the drain.
//!
//! Ingest (on its lanes) and the agent API serve every connection through [`serve_connection`],
//! which bounds the wait for each request's head ([`HeadTimeout`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Pending connections a listener queues before it accepts them (the kernel caps it at
/// `net.core.somaxconn`, 4096 on current Linux). tokio's `TcpListener::bind` asks for 1024; a
/// burst of more new connections than that (Meta's deliveries after an outage, a fleet of
/// workers starting) has its SYNs dropped, and each dropped client waits a full second for its
/// retransmission.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with [`LISTEN_BACKLOG`].
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Hands every connection `listener` accepts to `serve`, until `shutdown` completes.
pub async fn accept(
    listener: &TcpListener,
    shutdown: impl Future<Output = ()>,
    mut serve: impl FnMut(tokio::net::TcpStream),
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => serve(stream),
                // The client gave up before we took it: nothing to serve.
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                ) => {}
                // Out of file descriptors, most likely: waiting lets connections close.
                Err(e) => {
                    tracing::error!(error = %e, "accepting a connection failed; trying again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets in-flight requests finish for
/// up to `grace` (SIGTERM drains; a request still running after it is cut off). `draining` is
/// cancelled when the drain starts, for what must end first (long-lived responses). Every
/// connection is served by [`serve_connection`] with `head`.
pub async fn serve_draining(
    listener: TcpListener,
    app: Router,
    head: HeadTimeout,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    draining: CancellationToken,
) {
    let connections = TaskTracker::new();
    accept(&listener, shutdown, |stream| {
        connections.spawn(serve_connection(
            stream,
            app.clone(),
            head.clone(),
            draining.clone(),
        ));
    })
    .await;
    drop(listener);
    tracing::info!("shutdown requested; draining in-flight requests");
    draining.cancel();
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "drain exceeded the grace period; exiting with requests in flight"
        );
    }
}

/// The bound on the wait for a request's head on one server, and what counts a connection that
/// sent part of one and not the rest.
#[derive(Clone)]
pub struct HeadTimeout {
    pub after: Duration,
    /// The setting that sets `after`, named in the log.
    pub setting: &'static str,
    pub counter: metrics::Counter,
}

/// Serves HTTP/1 on one connection, as `axum::serve` does; on the drain the request in progress
/// finishes and the connection closes.
///
/// Each request's head must be in within `head.after` of the connection being ready for it
/// (hyper's header read timeout, which bytes trickling in do not extend). A connection idle that
/// long is closed quietly, as any server closes idle keep-alive connections; one that sent part
/// of a head is closed without an answer, counted (`head.counter`) and logged. hyper reports both
/// as the same timeout, so `HeadTimer` and `Tracked` tell them apart: bytes read since hyper
/// started waiting for the head. (A pipelining client's next head read in part before that wait
/// began is taken for idle.) A request's own timeout only starts once its head is in, so without this a client
/// sending a header byte now and then, or nothing, held its connection (a file descriptor) for
/// ever.
pub async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    head: HeadTimeout,
    draining: CancellationToken,
) {
    let service = TowerToHyperService::new(
        app.map_request(|req: axum::http::Request<Incoming>| req.map(axum::body::Body::new)),
    );
    let mid_head = Arc::new(AtomicBool::new(false));
    let stream = Tracked {
        inner: stream,
        mid_head: mid_head.clone(),
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(HeadTimer {
            inner: TokioTimer::new(),
            mid_head: mid_head.clone(),
        })
        .header_read_timeout(head.after)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = draining.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    match result {
        Ok(()) => {}
        Err(e) if e.is_timeout() && !mid_head.load(Ordering::Relaxed) => {
            tracing::debug!(setting = head.setting, "idle connection closed");
        }
        Err(e) if e.is_timeout() => {
            tracing::warn!(
                setting = head.setting,
                "request head not received in time; connection closed"
            );
            // Counted before the connection (owned by `conn`) is dropped and closed, so a client
            // that sees the close sees the count.
            head.counter.increment(1);
        }
        Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
    }
}

/// hyper's timer for one connection. hyper asks it for a sleep (`sleep_until`, or `reset`) each
/// time it starts waiting for a request's head, and for nothing else on an HTTP/1 server
/// connection: that is when [`Tracked`]'s note of bytes read starts afresh.
struct HeadTimer {
    inner: TokioTimer,
    mid_head: Arc<AtomicBool>,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.inner.sleep(duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.mid_head.store(false, Ordering::Relaxed);
        self.inner.sleep_until(deadline)
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        self.mid_head.store(false, Ordering::Relaxed);
        self.inner.reset(sleep, new_deadline);
    }

    fn now(&self) -> std::time::Instant {
        self.inner.now()
    }
}

/// A connection's stream that notes when bytes are read ([`HeadTimer`] clears the note).
struct Tracked {
    inner: tokio::net::TcpStream,
    mid_head: Arc<AtomicBool>,
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.mid_head.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
