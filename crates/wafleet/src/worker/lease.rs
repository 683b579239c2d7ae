//! Partition ownership: which process works which partition of a stage.
//!
//! Every process of a stage heartbeats into `P:{workers}:<stage>`; from the number of live
//! processes it computes its fair share `ceil(partitions / live)`, takes free partitions up to it
//! (`SET lease NX PX ttl`) and gives back what exceeds it (after finishing what it holds), so a
//! fleet rebalances by itself when processes come and go. Leases are renewed every third of their
//! TTL; a process that loses a lease (or cannot confirm it for two thirds of the TTL) abandons the
//! partition at once, before the lease can pass to anyone else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use redis::AsyncCommands;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::partition::{Partition, Scripts};
use super::{Handler, StageRuntime};

/// Longest pause between two lease rounds.
const REBALANCE_TICK: Duration = Duration::from_secs(1);

/// Extends a lease only if we still own it. KEYS: lease. ARGV: owner, ttl ms.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Deletes a lease only if we still own it. KEYS: lease. ARGV: owner.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

struct Owned {
    soft: CancellationToken,
    hard: CancellationToken,
    task: JoinHandle<()>,
    last_renewed: Instant,
    /// Being given back: no longer counted in our share, released once its task ends.
    releasing: bool,
}

/// When the first lease still held stops being confirmed: two thirds of its life after it was
/// last renewed, the moment its partition must be abandoned.
fn confirm_by(owned: &HashMap<u32, Owned>, ttl: Duration) -> Option<tokio::time::Instant> {
    owned
        .values()
        .filter(|o| !o.hard.is_cancelled())
        .map(|o| tokio::time::Instant::from_std(o.last_renewed + ttl * 2 / 3))
        .min()
}

/// A unique name for this process in consumer groups and leases.
pub fn consumer_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host = host.trim();
    let suffix: u32 = rand::thread_rng().r#gen();
    format!(
        "{}-{}-{suffix:08x}",
        if host.is_empty() { "host" } else { host },
        std::process::id()
    )
}

/// Runs a stage in this process until `rt.shutdown` fires, then stops taking work, gives
/// in-flight jobs `shutdown_grace` to finish, releases its leases and returns.
pub async fn run_stage<H: Handler>(rt: StageRuntime<H>) -> anyhow::Result<()> {
    rt.settings.validate()?;
    let rt = Arc::new(rt);
    let consumer = consumer_id();
    let stage = rt.stage.name;
    let scripts = Arc::new(Scripts::new());
    let renew = redis::Script::new(RENEW);
    let release = redis::Script::new(RELEASE);
    let permits = Arc::new(Semaphore::new(rt.settings.max_in_flight));
    let ttl = rt.settings.lease_ttl;
    // Leases are renewed every third of their life at least, and the round also notices new or
    // departed processes, gives back partitions over this process's share and releases the ones
    // whose work has drained: at least once a second, so scaling out takes effect in seconds,
    // not in thirds of a 45-second lease (given-back partitions sit idle until released).
    let tick = (ttl / 3).min(REBALANCE_TICK).max(Duration::from_millis(50));
    let partitions = rt.keys.partitions();
    let workers_key = rt.keys.workers(stage);
    let mut owned: HashMap<u32, Owned> = HashMap::new();
    tracing::info!(stage, consumer = %consumer, partitions, "worker started");

    loop {
        // Bounded by when the first lease stops being confirmed, so the check below comes in
        // time even when Redis answers nothing.
        let started = tokio::time::Instant::now();
        let round_until =
            confirm_by(&owned, ttl).map_or(started + ttl / 3, |c| c.min(started + ttl / 3));
        // One round of bookkeeping; Redis errors skip the round (leases are renewed by time).
        let round = async {
            let mut con = rt.shared.get().await?;
            let now = chrono::Utc::now().timestamp_millis();
            let _: () = redis::pipe()
                .zadd(&workers_key, &consumer, now)
                // Silent for a lease TTL: dead (a live process beats every round, at least
                // once a second). Its leases expire at about the same time, so its partitions
                // are taken as soon as they are free; kept for longer, it would still count in
                // the share and leave them idle for another TTL.
                .zrembyscore(&workers_key, "-inf", now - ttl.as_millis() as i64)
                .query_async(&mut con)
                .await?;
            let live: u32 = con.zcard(&workers_key).await?;
            let share = partitions.div_ceil(live.max(1));

            for (p, o) in owned.iter_mut() {
                let ok: i64 = renew
                    .key(rt.keys.lease(stage, *p))
                    .arg(&consumer)
                    .arg(ttl.as_millis() as u64)
                    .invoke_async(&mut con)
                    .await?;
                if ok == 1 {
                    o.last_renewed = Instant::now();
                } else {
                    tracing::warn!(stage, partition = p, "lease lost; abandoning the partition");
                    o.hard.cancel();
                }
            }
            // Partitions whose task ended (given back, abandoned, or failed): release.
            let ended: Vec<u32> = owned
                .iter()
                .filter(|(_, o)| o.task.is_finished())
                .map(|(p, _)| *p)
                .collect();
            for p in ended {
                owned.remove(&p);
                let _: i64 = release
                    .key(rt.keys.lease(stage, p))
                    .arg(&consumer)
                    .invoke_async(&mut con)
                    .await?;
                tracing::info!(stage, partition = p, "partition released");
            }
            let active = owned.values().filter(|o| !o.releasing).count() as u32;
            if active > share {
                let extra: Vec<u32> = owned
                    .iter()
                    .filter(|(_, o)| !o.releasing)
                    .map(|(p, _)| *p)
                    .take((active - share) as usize)
                    .collect();
                for p in extra {
                    let o = owned.get_mut(&p).expect("listed");
                    o.releasing = true;
                    o.soft.cancel();
                    tracing::info!(
                        stage,
                        partition = p,
                        share,
                        "giving a partition back to rebalance"
                    );
                }
            } else if active < share {
                let start = rand::thread_rng().gen_range(0..partitions);
                let mut want = share - active;
                for i in 0..partitions {
                    if want == 0 {
                        break;
                    }
                    let p = (start + i) % partitions;
                    if owned.contains_key(&p) {
                        continue;
                    }
                    let got: Option<String> = redis::cmd("SET")
                        .arg(rt.keys.lease(stage, p))
                        .arg(&consumer)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl.as_millis() as u64)
                        .query_async(&mut con)
                        .await?;
                    if got.is_none() {
                        continue;
                    }
                    want -= 1;
                    let soft = CancellationToken::new();
                    let hard = CancellationToken::new();
                    let part = Arc::new(Partition::new(
                        rt.clone(),
                        scripts.clone(),
                        p,
                        consumer.clone(),
                        permits.clone(),
                        soft.clone(),
                        hard.clone(),
                    ));
                    let task = tokio::spawn(part.run());
                    tracing::info!(stage, partition = p, "partition acquired");
                    owned.insert(
                        p,
                        Owned {
                            soft,
                            hard,
                            task,
                            last_renewed: Instant::now(),
                            releasing: false,
                        },
                    );
                }
            }
            metrics::gauge!("wafleet_worker_partitions_owned", "stage" => stage)
                .set(owned.len() as f64);
            Ok::<(), anyhow::Error>(())
        };
        // Bounded: commands on a dead connection may go unanswered for a while, and the check
        // below must run in time.
        let round = async {
            match tokio::time::timeout_at(round_until, round).await {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!(
                    "no answer from Redis within {:?}",
                    round_until - started
                )),
            }
        };
        if let Err(e) = round.await {
            metrics::counter!("wafleet_worker_redis_errors_total", "stage" => stage).increment(1);
            tracing::warn!(stage, error = %e, "lease round failed");
        }
        // A lease we could not renew for two thirds of its life may be gone: stop before another
        // process can take it.
        for (p, o) in owned.iter() {
            if o.last_renewed.elapsed() >= ttl * 2 / 3 && !o.hard.is_cancelled() {
                tracing::warn!(
                    stage,
                    partition = p,
                    "lease not confirmed in time; abandoning the partition"
                );
                o.hard.cancel();
            }
        }
        // Not past that moment either: a pause of a second after a round that waited a third
        // of the lease for Redis would otherwise check a short lease only after it expired,
        // while another process may already run its jobs.
        let next = tokio::time::Instant::now() + tick;
        let next = confirm_by(&owned, ttl).map_or(next, |c| c.min(next));
        tokio::select! {
            _ = rt.shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
    }

    tracing::info!(
        stage,
        "shutting down: no new work; finishing in-flight jobs"
    );
    for o in owned.values() {
        o.soft.cancel();
    }
    // The leases are no longer renewed: the grace ends before the first could pass to another.
    let deadline = tokio::time::Instant::now() + rt.settings.shutdown_grace.min(ttl * 2 / 3);
    let deadline = confirm_by(&owned, ttl).map_or(deadline, |c| c.min(deadline));
    for o in owned.values_mut() {
        if tokio::time::timeout_at(deadline, &mut o.task)
            .await
            .is_err()
        {
            o.hard.cancel();
            let _ = (&mut o.task).await;
        }
    }
    if let Ok(mut con) = rt.shared.get().await {
        for p in owned.keys() {
            let _: redis::RedisResult<i64> = release
                .key(rt.keys.lease(stage, *p))
                .arg(&consumer)
                .invoke_async(&mut con)
                .await;
        }
        let _: redis::RedisResult<i64> = con.zrem(&workers_key, &consumer).await;
    }
    tracing::info!(stage, "worker stopped");
    Ok(())
}
