//! Queue gauges for dashboards and autoscalers, sampled from Redis every few seconds.
//!
//! Per stage and partition stream: `wafleet_stream_length`, `wafleet_stream_pending` (read but
//! not finished), `wafleet_stream_lag` (not yet read by the group), `wafleet_stream_oldest_pending_seconds`;
//! per stage: `wafleet_delayed_conversations`, `wafleet_dead_letters`, and
//! `wafleet_stage_backlog` (lag + pending + parked conversations, each counted once however
//! many jobs it holds, summed over partitions), the one number to
//! scale workers on. Every worker samples the same values; dashboards should take the max.
//! `wafleet_queue_sampled_at_seconds{stage}` is when they were last sampled (a failed sample,
//! counted in `wafleet_queue_sample_errors_total{stage}`, leaves the gauges as they were).

use std::time::Duration;

use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use super::Stage;
use crate::streams::Keys;

/// Samples until `stop`.
pub async fn run(
    redis: deadpool_redis::Pool,
    keys: Keys,
    stages: Vec<Stage>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        for stage in &stages {
            match sample(&redis, &keys, *stage).await {
                // When the gauges were last true: a failed sample leaves them at their last
                // values, and a dashboard (or an autoscaler) must be able to tell.
                Ok(()) => {
                    metrics::gauge!("wafleet_queue_sampled_at_seconds", "stage" => stage.name)
                        .set(chrono::Utc::now().timestamp() as f64)
                }
                Err(e) => {
                    metrics::counter!("wafleet_queue_sample_errors_total", "stage" => stage.name)
                        .increment(1);
                    tracing::warn!(stage = stage.name, error = %e, "queue sampling failed; the queue gauges keep their last values");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

fn entry_age_secs(id: &str, now_ms: i64) -> f64 {
    let ms: i64 = id
        .split('-')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or(now_ms);
    ((now_ms - ms).max(0) as f64) / 1000.0
}

pub async fn sample(redis: &deadpool_redis::Pool, keys: &Keys, stage: Stage) -> anyhow::Result<()> {
    let mut con = redis.get().await?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut backlog = 0u64;
    let mut delayed_total = 0u64;
    for p in 0..stage.partitions(keys) {
        let stream = stage.stream(keys, p);
        let StreamFigures {
            len,
            pending,
            lag,
            oldest,
        } = stream_figures(&mut con, &stream, stage.name).await?;
        let delayed: u64 = con.zcard(stage.delayed(keys, p)).await?;
        delayed_total += delayed;
        backlog += lag + pending;
        let labels = [("stage", stage.name.to_string()), ("stream", stream)];
        metrics::gauge!("wafleet_stream_length", &labels).set(len as f64);
        metrics::gauge!("wafleet_stream_pending", &labels).set(pending as f64);
        metrics::gauge!("wafleet_stream_lag", &labels).set(lag as f64);
        metrics::gauge!("wafleet_stream_oldest_pending_seconds", &labels)
            .set(oldest.map(|id| entry_age_secs(&id, now)).unwrap_or(0.0));
    }
    let dead: u64 = con.xlen(keys.dead(stage.name)).await?;
    metrics::gauge!("wafleet_delayed_conversations", "stage" => stage.name)
        .set(delayed_total as f64);
    metrics::gauge!("wafleet_dead_letters", "stage" => stage.name).set(dead as f64);
    metrics::gauge!("wafleet_stage_backlog", "stage" => stage.name)
        .set((backlog + delayed_total) as f64);
    Ok(())
}

/// One partition stream as a consumer group sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFigures {
    pub len: u64,
    /// Read by the group, not acknowledged yet.
    pub pending: u64,
    /// Not read by the group yet.
    pub lag: u64,
    /// Id of the oldest pending entry.
    pub oldest: Option<String>,
}

/// Reads [`StreamFigures`] of `stream` for `group`.
pub async fn stream_figures(
    con: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &str,
) -> anyhow::Result<StreamFigures> {
    let len: u64 = redis::cmd("XLEN").arg(stream).query_async(con).await?;
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(con)
        .await
        .unwrap_or(redis::Value::Nil);
    let (pending, lag) = group_info(&groups, group);
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(con)
        .await
        .unwrap_or(redis::Value::Nil);
    let oldest = match &summary {
        redis::Value::Array(v) if v.len() >= 2 => redis::from_redis_value::<String>(&v[1]).ok(),
        _ => None,
    };
    Ok(StreamFigures {
        len,
        pending,
        lag: unread(len, pending, lag),
        oldest,
    })
}

/// Entries the group has not read yet. Redis reports `lag` as nil when it cannot tell, which is
/// whenever entries were deleted out of order (we delete each entry once it is done, so older
/// pending entries below newer unread ones make it nil all the time under load); the stream
/// then holds exactly the pending and the unread entries. Without the group yet, all of it.
fn unread(len: u64, pending: u64, lag: Option<u64>) -> u64 {
    lag.unwrap_or(len.saturating_sub(pending))
}

/// `pending` and `lag` of our group from an `XINFO GROUPS` reply.
fn group_info(reply: &redis::Value, group: &str) -> (u64, Option<u64>) {
    let redis::Value::Array(groups) = reply else {
        return (0, None);
    };
    for g in groups {
        let fields: Vec<(String, redis::Value)> = match g {
            redis::Value::Array(kv) => kv
                .chunks(2)
                .filter_map(|c| {
                    Some((
                        redis::from_redis_value::<String>(&c[0]).ok()?,
                        c.get(1)?.clone(),
                    ))
                })
                .collect(),
            redis::Value::Map(kv) => kv
                .iter()
                .filter_map(|(k, v)| Some((redis::from_redis_value::<String>(k).ok()?, v.clone())))
                .collect(),
            _ => continue,
        };
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        if get("name")
            .and_then(|v| redis::from_redis_value::<String>(&v).ok())
            .as_deref()
            != Some(group)
        {
            continue;
        }
        let pending = get("pending")
            .and_then(|v| redis::from_redis_value::<u64>(&v).ok())
            .unwrap_or(0);
        let lag = get("lag").and_then(|v| redis::from_redis_value::<u64>(&v).ok());
        return (pending, lag);
    }
    (0, None)
}
