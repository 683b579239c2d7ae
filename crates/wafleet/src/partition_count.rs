//! The fleet's agreed partition count, recorded in Redis so a process started with another
//! `WAFLEET_PARTITIONS` is refused instead of writing to streams no worker reads.
//!
//! # Key
//! | key | type | what |
//! |---|---|---|
//! | `P:{config}:partitions` | string | the `WAFLEET_PARTITIONS` every process of this prefix must use |
//!
//! The first process to start records its count (`SET NX`); each later one compares. A Redis
//! flushed or restarted without persistence has lost the key: the next process records it again
//! rather than refusing, since no stream survived the loss either.
//!
//! A process also checks while it runs ([`Watch`], every `WAFLEET_PARTITIONS_CHECK_MS`): a count
//! changed under it (an operator's `SET`, or a Redis that lost the key and had another count
//! recorded by a newer process) would otherwise have it read and write partitions the others
//! number differently, splitting one conversation's messages over two partitions, out of order
//! and perhaps answered twice. On a mismatch it stops taking work and exits with an error; a
//! lost key is recorded again, as at start; a Redis out of reach is no mismatch.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::shared_redis::SharedRedis;

/// How often a running process checks the recorded count (`WAFLEET_PARTITIONS_CHECK_MS`): two
/// commands every 10 s cost nothing beside the traffic, and the window in which a process on the
/// wrong count keeps working stays short.
pub const DEFAULT_CHECK_EVERY: Duration = Duration::from_secs(10);

/// The key holding the agreed partition count, under its own hash tag.
pub fn key(prefix: &str) -> String {
    format!("{prefix}:{{config}}:partitions")
}

/// A process's `WAFLEET_PARTITIONS` differs from the one the fleet recorded.
#[derive(Debug, thiserror::Error)]
#[error(
    "WAFLEET_PARTITIONS is {ours} but the processes of this Redis prefix use {recorded} \
     (recorded at {key}): start this process with WAFLEET_PARTITIONS={recorded}; to change the \
     count, stop every process, drain the streams and delete {key} (README, WAFLEET_PARTITIONS)"
)]
pub struct Mismatch {
    pub ours: u32,
    pub recorded: String,
    pub key: String,
}

/// Records `ours` as the fleet's count when none is recorded, else checks it is the recorded one.
pub async fn check_or_record<C>(con: &mut C, prefix: &str, ours: u32) -> anyhow::Result<()>
where
    C: redis::aio::ConnectionLike,
{
    // SETNX records ours when none is; the check then reads what won.
    let _: bool = redis::cmd("SETNX")
        .arg(key(prefix))
        .arg(ours)
        .query_async(con)
        .await?;
    check(con, prefix, ours).await
}

/// Checks `ours` against the recorded count, recording nothing: for wafleetctl, which may run
/// without the deployment's environment and must not set the fleet's count by accident.
pub async fn check<C>(con: &mut C, prefix: &str, ours: u32) -> anyhow::Result<()>
where
    C: redis::aio::ConnectionLike,
{
    match mismatch(con, prefix, ours).await? {
        Some(m) => {
            tracing::error!(
                ours,
                recorded = %m.recorded,
                "WAFLEET_PARTITIONS disagrees with the fleet's recorded count; refusing"
            );
            Err(m.into())
        }
        None => Ok(()),
    }
}

/// The recorded count when it is not `ours` (none recorded is no mismatch).
async fn mismatch<C>(con: &mut C, prefix: &str, ours: u32) -> redis::RedisResult<Option<Mismatch>>
where
    C: redis::aio::ConnectionLike,
{
    let key = key(prefix);
    let recorded: Option<String> = redis::cmd("GET").arg(&key).query_async(con).await?;
    Ok(recorded
        .filter(|v| v.trim() != ours.to_string())
        .map(|recorded| Mismatch {
            ours,
            recorded,
            key,
        }))
}

/// A running process's check of the recorded count (see the module docs): a task that looks
/// every `every` until it finds a mismatch or is finished.
pub struct Watch {
    task: tokio::task::JoinHandle<Result<(), Mismatch>>,
    /// Cancelled when the task found a mismatch: the process stops taking work.
    found: CancellationToken,
    stop: CancellationToken,
}

impl Watch {
    /// Starts watching the count recorded under `prefix` against `ours`.
    pub fn spawn(redis: SharedRedis, prefix: &str, ours: u32, every: Duration) -> Self {
        let (found, stop) = (CancellationToken::new(), CancellationToken::new());
        let task = tokio::spawn(watch(
            redis,
            prefix.to_string(),
            ours,
            every,
            found.clone(),
            stop.clone(),
        ));
        Self { task, found, stop }
    }

    /// Completes once a mismatch is found (never, while the counts agree).
    pub fn found(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.found.clone().cancelled_owned()
    }

    /// Stops watching; the [`Mismatch`] found, if one was: the process's exit error.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.stop.cancel();
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(m)) => Err(anyhow::Error::new(m)
                .context("the fleet's partition count changed while this process ran")),
            Err(e) => crate::telemetry::joined::<()>(Err(e)),
        }
    }
}

async fn watch(
    redis: SharedRedis,
    prefix: String,
    ours: u32,
    every: Duration,
    found: CancellationToken,
    stop: CancellationToken,
) -> Result<(), Mismatch> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        // SETNX first: a key lost meanwhile is recorded again with ours, as at start.
        let checked = async {
            let mut con = redis.get().await?;
            let _: bool = redis::cmd("SETNX")
                .arg(key(&prefix))
                .arg(ours)
                .query_async(&mut con)
                .await?;
            mismatch(&mut con, &prefix, ours).await
        };
        match tokio::time::timeout(crate::shared_redis::CONNECT_TIMEOUT, checked).await {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(m))) => {
                metrics::counter!("wafleet_partition_count_mismatches_total").increment(1);
                tracing::error!(
                    ours,
                    recorded = %m.recorded,
                    "the fleet's recorded partition count is no longer this process's                      WAFLEET_PARTITIONS: stopping work and exiting with an error"
                );
                found.cancel();
                return Err(m);
            }
            // Not a mismatch: the next tick tries again. (The error is not printed: a Redis
            // URL error may quote the URL, password included.)
            Ok(Err(_)) | Err(_) => {
                tracing::debug!("Redis out of reach; the partition count is checked next time")
            }
        }
    }
}

/// A service's check at start: refuses a [`Mismatch`]; a Redis out of reach is logged and let
/// through, as services start during a Redis outage (ingest answers 503 until it is back).
pub async fn check_at_start(redis_url: &str, prefix: &str, ours: u32) -> anyhow::Result<()> {
    let attempt = async {
        let mut con = redis::Client::open(redis_url)?
            .get_multiplexed_async_connection()
            .await?;
        check_or_record(&mut con, prefix, ours).await
    };
    match tokio::time::timeout(crate::shared_redis::CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.is::<Mismatch>() => Err(e),
        // The error is not printed: a Redis URL error may quote the URL, password included.
        Ok(Err(_)) | Err(_) => {
            tracing::warn!(
                ours,
                "Redis out of reach at start: WAFLEET_PARTITIONS not checked against the fleet's"
            );
            Ok(())
        }
    }
}
