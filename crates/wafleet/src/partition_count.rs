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
    let key = key(prefix);
    let recorded: Option<String> = redis::cmd("GET").arg(&key).query_async(con).await?;
    match recorded {
        Some(v) if v.trim() != ours.to_string() => {
            tracing::error!(
                ours,
                recorded = %v,
                "WAFLEET_PARTITIONS disagrees with the fleet's recorded count; refusing"
            );
            Err(Mismatch {
                ours,
                recorded: v,
                key,
            }
            .into())
        }
        _ => Ok(()),
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
