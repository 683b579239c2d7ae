//! One multiplexed Redis connection that every task of a process shares, reopened lazily.
//!
//! Why not a pool for ingest: a pooled connection carries one request at a time, and
//! deadpool-redis checks every checkout with an `UNWATCH`+`PING` round trip, so each webhook
//! cost Redis two round trips and the process two socket writes and two wake-ups. A multiplexed
//! connection takes commands from any number of tasks at once and writes whatever is queued in
//! one syscall; Redis then reads many webhooks' scripts per wake-up and answers them in one
//! write. Each caller's commands still go out contiguous and its replies come back in order, so
//! a pipeline behaves exactly as on a connection of its own.
//!
//! Failure handling (what the pool's recycle check did):
//! - Nothing is opened until the first command, so a process starts while Redis is down and
//!   `/readyz` says so.
//! - A command failing with an error that means the connection is gone (reset, refused, EOF,
//!   broken pipe: [`redis::RedisError::is_unrecoverable_error`]) drops the shared connection;
//!   the next caller opens a new one. Slow answers do not: the caller's own timeout handles
//!   those, and the connection stays usable, unless no answer comes for [`RESPONSE_TIMEOUT`]
//!   (a black-holed network path): then it is dropped too.
//! - An answer `READONLY` (the server was made a replica by a failover that kept connections
//!   open) drops it too, so the next caller reaches whatever primary the address names now.
//! - Opening is bounded by `connect_timeout`, and one caller opens while the others wait for it,
//!   so an outage costs one connection attempt at a time, not one per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// Bound on opening the connection, so an outage turns into errors, not hangs.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A command unanswered this long means the connection is dead even if no error says so (a
/// failover or a lost host black-holes packets without a reset, and TCP takes about 15 minutes
/// to give up): the connection is dropped and the next caller opens a new one. Far above any
/// answer Redis gives a live connection; callers keep their own, shorter timeouts.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A cheap handle (clone it freely) on the process's shared connection.
#[derive(Clone)]
pub struct SharedRedis {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    config: redis::AsyncConnectionConfig,
    /// The open connection and its generation; `None` until first use and after a failure.
    current: std::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Held while a connection is being opened, so concurrent callers open only one.
    opening: tokio::sync::Mutex<()>,
    /// Incremented per opened connection, so a failure only drops the connection it happened on.
    generation: AtomicU64,
    /// A probe of the connection is running (see [`ProbeOnDrop`]).
    probing: std::sync::atomic::AtomicBool,
    /// Every caller bounds each call with a timeout of its own, below [`RESPONSE_TIMEOUT`]
    /// ([`SharedRedis::another_bounded_by_callers`]): a command arms no timer.
    bounded_by_callers: bool,
}

impl SharedRedis {
    /// Parses `url`; does not connect.
    pub fn new(url: &str, connect_timeout: Duration) -> RedisResult<Self> {
        Ok(Self::unopened(
            redis::Client::open(url)?,
            redis::AsyncConnectionConfig::new().set_connection_timeout(connect_timeout),
        ))
    }

    /// A handle on a connection of its own to the same server, with the same settings, opened
    /// on first use (so on the runtime of its first caller, which runs its driver task).
    pub fn another(&self) -> Self {
        Self::unopened(self.inner.client.clone(), self.inner.config.clone())
    }

    /// [`another`](Self::another), for callers that each bound every call with a timeout below
    /// [`RESPONSE_TIMEOUT`] (ingest's serving threads): a command arms no timer of its own. A
    /// silent connection is still dropped: the caller that gave up leaves the probe behind
    /// ([`ProbeOnDrop`]), which drops it unless answered within [`RESPONSE_TIMEOUT`].
    ///
    /// Why: a webhook armed three timers (the request's, the Redis step's and this one), and a
    /// single-threaded tokio runtime whose timer wheel was empty when it last slept writes its
    /// own eventfd for every timer armed until it sleeps again (tokio's `reregister`), about one
    /// write per two webhooks in `just bench-ingest`.
    pub fn another_bounded_by_callers(&self) -> Self {
        let mut other = self.another();
        Arc::get_mut(&mut other.inner)
            .expect("a new handle is not shared yet")
            .bounded_by_callers = true;
        other
    }

    fn unopened(client: redis::Client, config: redis::AsyncConnectionConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                config,
                current: std::sync::Mutex::new(None),
                opening: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                probing: std::sync::atomic::AtomicBool::new(false),
                bounded_by_callers: false,
            }),
        }
    }

    /// The shared connection, opened if there is none.
    pub async fn get(&self) -> RedisResult<SharedConnection> {
        if let Some(con) = self.current() {
            return Ok(con);
        }
        let _opening = self.inner.opening.lock().await;
        // Someone else may have opened it while we waited.
        if let Some(con) = self.current() {
            return Ok(con);
        }
        let con = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&self.inner.config)
            .await?;
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.lock() = Some((generation, con.clone()));
        Ok(SharedConnection {
            con,
            generation,
            owner: self.inner.clone(),
        })
    }

    fn current(&self) -> Option<SharedConnection> {
        self.lock()
            .as_ref()
            .map(|(generation, con)| SharedConnection {
                con: con.clone(),
                generation: *generation,
                owner: self.inner.clone(),
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, MultiplexedConnection)>> {
        lock(&self.inner)
    }
}

fn lock(inner: &Inner) -> std::sync::MutexGuard<'_, Option<(u64, MultiplexedConnection)>> {
    // The guarded value is replaced whole, never left half-written: a poisoned lock is usable.
    inner.current.lock().unwrap_or_else(|e| e.into_inner())
}

/// A handle on the shared connection, used like any async Redis connection.
pub struct SharedConnection {
    con: MultiplexedConnection,
    generation: u64,
    owner: Arc<Inner>,
}

/// `result`, or the connection dropped when it did not come within [`RESPONSE_TIMEOUT`] or came
/// as an error that means the connection is gone. A caller that gives up sooner (its own
/// timeout) leaves a probe behind: a `PING` on the same connection that drops it unless answered
/// within [`RESPONSE_TIMEOUT`].
async fn answered<T>(
    owner: &Arc<Inner>,
    generation: u64,
    result: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    let mut guard = ProbeOnDrop {
        owner,
        generation,
        armed: true,
    };
    let result = if owner.bounded_by_callers {
        Ok(result.await)
    } else {
        tokio::time::timeout(RESPONSE_TIMEOUT, result).await
    };
    guard.armed = false;
    match result {
        Ok(Err(e)) if e.is_unrecoverable_error() => {
            forget(owner, generation);
            Err(e)
        }
        Ok(result) => result,
        Err(_) => {
            forget(owner, generation);
            tracing::warn!(timeout = ?RESPONSE_TIMEOUT, "Redis did not answer; reconnecting");
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer from Redis; the connection was dropped",
            )
            .into())
        }
    }
}

/// Drops the shared connection, if it is still generation `generation`.
fn forget(owner: &Inner, generation: u64) {
    let mut current = lock(owner);
    if current.as_ref().is_some_and(|(g, _)| *g == generation) {
        *current = None;
    }
}

/// Armed while a command waits for its answer; dropped armed (the caller gave up first), it
/// checks the connection with a `PING`, one probe per connection at a time.
struct ProbeOnDrop<'a> {
    owner: &'a Arc<Inner>,
    generation: u64,
    armed: bool,
}

impl Drop for ProbeOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed || self.owner.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (owner, generation) = (self.owner.clone(), self.generation);
        // The connection the command went out on, unless it was dropped already.
        let con = lock(&owner)
            .as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, con)| con.clone());
        let (Some(mut con), Ok(runtime)) = (con, tokio::runtime::Handle::try_current()) else {
            owner.probing.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(async move {
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut con);
            let alive = matches!(tokio::time::timeout(RESPONSE_TIMEOUT, ping).await, Ok(Ok(_)));
            if !alive {
                forget(&owner, generation);
                tracing::warn!(timeout = ?RESPONSE_TIMEOUT, "Redis did not answer a probe; reconnecting");
            }
            owner.probing.store(false, Ordering::Release);
        });
    }
}

/// Whether Redis answered `READONLY`: the server this connection reaches was made a replica (a
/// failover that kept client connections open, as managed services that move a DNS name do).
/// The connection is dropped so the next caller reaches the new primary; a pipeline's errors come
/// back as values, so they are looked at too.
fn read_only(owner: &Inner, generation: u64, answer: Result<&[Value], &redis::RedisError>) {
    let is_read_only = match answer {
        Err(e) => e.kind() == redis::ErrorKind::ReadOnly,
        Ok(values) => values
            .iter()
            .any(|v| matches!(v, Value::ServerError(e) if e.code() == "READONLY")),
    };
    if is_read_only {
        forget(owner, generation);
        tracing::warn!("Redis answered READONLY (a replica now); reconnecting");
    }
}

impl ConnectionLike for SharedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let Self {
            con,
            generation,
            owner,
        } = self;
        Box::pin(async move {
            let answer = answered(owner, *generation, con.req_packed_command(cmd)).await;
            read_only(
                owner,
                *generation,
                answer.as_ref().map(std::slice::from_ref),
            );
            answer
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let Self {
            con,
            generation,
            owner,
        } = self;
        Box::pin(async move {
            let answer = answered(
                owner,
                *generation,
                con.req_packed_commands(cmd, offset, count),
            )
            .await;
            read_only(owner, *generation, answer.as_ref().map(Vec::as_slice));
            answer
        })
    }

    fn get_db(&self) -> i64 {
        self.con.get_db()
    }
}

/// A pool of dedicated connections, for commands that hold their connection (a blocking
/// `XREADGROUP`); everything else goes over [`SharedRedis`]. Waits are bounded, so an outage
/// turns into errors, not hangs.
pub fn blocking_pool(url: &str, size: usize) -> anyhow::Result<deadpool_redis::Pool> {
    let mut cfg = deadpool_redis::Config::from_url(url);
    let timeout = Some(std::time::Duration::from_secs(2));
    cfg.pool = Some(deadpool_redis::PoolConfig {
        max_size: size,
        timeouts: deadpool_redis::Timeouts {
            wait: timeout,
            create: timeout,
            recycle: timeout,
        },
        ..Default::default()
    });
    cfg.create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|e| anyhow::anyhow!("building the Redis pool (REDIS_URL): {e}"))
}
