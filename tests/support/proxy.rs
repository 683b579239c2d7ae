//! A TCP proxy a test can cut, to take a dependency (Postgres) away from the code under test
//! without stopping the server other tests share.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    /// Cancelled to drop every live connection; replaced on each cut.
    conns: Arc<std::sync::Mutex<CancellationToken>>,
    /// Cancelled to stop forwarding on every live connection while keeping it open (a network
    /// that black-holes packets); replaced on each use.
    holes: Arc<std::sync::Mutex<CancellationToken>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy in front of the Redis at `redis_url` (`redis://host:port`); connect to
    /// [`Proxy::redis_url`].
    pub async fn in_front_of_redis(redis_url: &str) -> Self {
        let target = redis_url
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_string();
        Self::start(target).await
    }

    /// The URL of the Redis behind this proxy, through it.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let holes = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let task = tokio::spawn({
            let up = up.clone();
            let conns = conns.clone();
            let holes = holes.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let cut = conns.lock().unwrap().clone();
                    let hole = holes.lock().unwrap().clone();
                    let target = target.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(&target).await else {
                            return;
                        };
                        let black_holed = tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                            _ = cut.cancelled() => false,
                            _ = hole.cancelled() => true,
                        };
                        if black_holed {
                            // Nothing passes any more, but neither side learns it.
                            cut.cancelled().await;
                        }
                        drop((inbound, outbound));
                    });
                }
            }
        });
        Self {
            port,
            up,
            conns,
            holes,
            task,
        }
    }

    /// Live connections stop passing anything yet stay open, as when a network path dies
    /// without a reset; new connections work.
    pub fn black_hole(&self) {
        let mut h = self.holes.lock().unwrap();
        h.cancel();
        *h = CancellationToken::new();
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut c = self.conns.lock().unwrap();
        c.cancel();
        *c = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
