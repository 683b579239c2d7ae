//! Partition ownership: which process works which partition of a stage.
//!
//! Every process of a stage heartbeats into `P:{workers}:<stage>`; from the number of live
//! processes it computes its fair share `ceil(partitions / live)`, takes free partitions up to it
//! (`SET lease NX PX ttl`) and gives back what exceeds it (after finishing what it holds), so a
//! fleet rebalances by itself when processes come and go. Leases are renewed every third of their
//! TTL; a process that loses a lease (or cannot confirm it for two thirds of the TTL) abandons the
//! partition at once, before the lease can pass to anyone else.
//!
//! # A stable identity across restarts (`WAFLEET_WORKER_ID`)
//!
//! Every process start names a new consumer, so a process killed without a word (kill -9, OOM,
//! an aborting panic) holds its leases until they expire, and the lease must exceed the job
//! deadline (about 145 s for the LLM stage): restarted by systemd within seconds, the process
//! could not tell that the holder was itself. With `WAFLEET_WORKER_ID` set, the consumer (and so
//! the lease value and the heartbeat member) is `<id>@<incarnation>`, the incarnation being the
//! usual per-start name; `@` is refused in ids, so one id's prefix is never another's.
//!
//! At start, before it takes anything, the stage looks in `P:{workers}:<stage>` for other
//! incarnations of its id. If there are some, it watches their heartbeats for three lease rounds
//! (a live process beats every round): one that beats again is a live process with the same id
//! (an operator's copy-paste), and this one refuses to start with an error naming the id
//! (`wafleet_worker_id_conflicts_total`), so two processes never steal each other's leases. The
//! silent ones are declared dead: their heartbeats are removed (else they would count in the
//! share for another TTL) and, from then on, a lease whose holder carries the id but another
//! incarnation, and that does not heartbeat after that moment, is taken over at once (compare
//! and set on the holder), its partition's pending entries claimed in order as at any takeover.
//! A twin started at the same moment heartbeats after that moment and is left alone.
//!
//! Why this is safe, and where it is not: taking a partition over claims every pending entry,
//! which is safe only if no job can still be running in the old holder. Without an id that is
//! proven by time (the lease outlived the job deadline). With one it rests on a promise: one
//! live process per id, which systemd keeps for a unit (it kills the old process's whole control
//! group before starting the new one), and which the heartbeat check verifies for processes that
//! are running. It cannot prove a *stalled* process dead: one frozen (SIGSTOP, a suspended VM, a
//! process swapped out) for longer than the three rounds and started again beside its successor
//! outside systemd would wake with jobs in flight whose entries the successor has claimed; it
//! loses its leases at its next round (renewal fails, the partitions are abandoned at once), but
//! a job already running may run twice concurrently, the handlers' idempotence (one message per
//! wamid, parts claimed before they are sent) being what is left between the customer and a
//! duplicate. Without an id the same happens to a process stalled for longer than a whole lease,
//! so the id shortens that bound from the TTL to three rounds and must only be given where one
//! process per id is guaranteed. The heartbeat scores of two incarnations are compared with one
//! clock only when they run on one host, which is what `%H` in the id ensures.

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

/// Takes a lease from a dead incarnation of our worker id if it still holds it.
/// KEYS: lease. ARGV: expected holder, us, ttl ms.
const TAKE_BACK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
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

/// Lease rounds an earlier incarnation of our worker id gets to show it is alive.
const ROUNDS_TO_PROVE_LIFE: u32 = 3;

/// A stage running under `WAFLEET_WORKER_ID`, once its earlier incarnations are known dead.
struct Identity {
    /// `<id>@`: what every incarnation's consumer name starts with.
    prefix: String,
    /// When they were declared dead (Unix ms): a holder that heartbeats later is alive.
    since_ms: i64,
}

/// The consumer name: `<id>@<incarnation>` with a worker id, the incarnation alone without.
fn consumer_name(worker_id: Option<&str>) -> String {
    match worker_id {
        Some(id) => format!("{id}@{}", consumer_id()),
        None => consumer_id(),
    }
}

/// Another live process has our worker id.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct IdInUse(String);

/// Makes sure no other incarnation of this stage's worker id is alive (see the module's doc):
/// watches their heartbeats for [`ROUNDS_TO_PROVE_LIFE`] rounds, refuses to start if one beats,
/// and forgets the silent ones. `None` without a worker id.
async fn claim_identity<H: Handler>(
    rt: &StageRuntime<H>,
    consumer: &str,
    workers_key: &str,
    tick: Duration,
) -> anyhow::Result<Option<Identity>> {
    let Some(id) = rt.settings.worker_id.as_deref() else {
        return Ok(None);
    };
    let stage = rt.stage.name;
    let prefix = format!("{id}@");
    let mut con = rt.shared.get().await?;
    let beats: Vec<(String, f64)> = con.zrange_withscores(workers_key, 0, -1).await?;
    let earlier: Vec<(String, f64)> = beats
        .into_iter()
        .filter(|(m, _)| m.starts_with(&prefix) && m != consumer)
        .collect();
    if !earlier.is_empty() {
        let watch = tick * ROUNDS_TO_PROVE_LIFE;
        let until = tokio::time::Instant::now() + watch;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(tick / 4).await;
            for (member, first) in &earlier {
                let now: Option<f64> = con.zscore(workers_key, member).await?;
                if now.is_some_and(|s| s > *first) {
                    metrics::counter!("wafleet_worker_id_conflicts_total", "stage" => stage)
                        .increment(1);
                    tracing::error!(
                        stage,
                        worker_id = id,
                        "another live process has this worker id; refusing to start"
                    );
                    return Err(IdInUse(format!(
                        "WAFLEET_WORKER_ID={id}: another live process of stage {stage} has this id \
                         (it heartbeat within the last {watch:?}); refusing to start. Give each \
                         process its own id (e.g. %H-%i in the systemd unit)"
                    ))
                    .into());
                }
            }
        }
        let members: Vec<&str> = earlier.iter().map(|(m, _)| m.as_str()).collect();
        let _: i64 = con.zrem(workers_key, &members).await?;
        tracing::info!(
            stage,
            worker_id = id,
            incarnations = earlier.len(),
            "this worker id's earlier incarnation is silent: taking back its partitions"
        );
    }
    Ok(Some(Identity {
        prefix,
        since_ms: chrono::Utc::now().timestamp_millis(),
    }))
}

/// Takes a free lease (`SET NX PX`), or, under a worker id, one held by a dead incarnation of it.
async fn acquire<H: Handler>(
    rt: &StageRuntime<H>,
    con: &mut crate::shared_redis::SharedConnection,
    identity: Option<&Identity>,
    consumer: &str,
    p: u32,
) -> anyhow::Result<bool> {
    let stage = rt.stage.name;
    let lease = rt.keys.lease(stage, p);
    let ttl_ms = rt.settings.lease_ttl.as_millis() as u64;
    let got: Option<String> = redis::cmd("SET")
        .arg(&lease)
        .arg(consumer)
        .arg("NX")
        .arg("PX")
        .arg(ttl_ms)
        .query_async(con)
        .await?;
    if got.is_some() {
        return Ok(true);
    }
    let Some(identity) = identity else {
        return Ok(false);
    };
    let holder: Option<String> = con.get(&lease).await?;
    let Some(holder) = holder.filter(|h| h.starts_with(&identity.prefix) && h != consumer) else {
        return Ok(false);
    };
    let beat: Option<f64> = con.zscore(rt.keys.workers(stage), &holder).await?;
    if beat.is_some_and(|b| b >= identity.since_ms as f64) {
        // A twin with our id started beside us: alive, not ours to take.
        return Ok(false);
    }
    let took: i64 = redis::Script::new(TAKE_BACK)
        .key(&lease)
        .arg(&holder)
        .arg(consumer)
        .arg(ttl_ms)
        .invoke_async(con)
        .await?;
    if took == 1 {
        metrics::counter!("wafleet_worker_leases_taken_back_total", "stage" => stage).increment(1);
        tracing::info!(
            stage,
            partition = p,
            "lease taken back from this worker id's earlier incarnation"
        );
    }
    Ok(took == 1)
}

/// Runs a stage in this process until `rt.shutdown` fires, then stops taking work, gives
/// in-flight jobs `shutdown_grace` to finish, releases its leases and returns.
pub async fn run_stage<H: Handler>(rt: StageRuntime<H>) -> anyhow::Result<()> {
    rt.settings.validate()?;
    let rt = Arc::new(rt);
    let consumer = consumer_name(rt.settings.worker_id.as_deref());
    let stage = rt.stage.name;
    let scripts = Arc::new(Scripts::new());
    let renew = redis::Script::new(RENEW);
    let release = redis::Script::new(RELEASE);
    let permits = Arc::new(Semaphore::new(
        rt.settings
            .max_in_flight
            .saturating_mul(super::HELD_PER_RUNNING),
    ));
    let running = Arc::new(Semaphore::new(rt.settings.max_in_flight));
    let ttl = rt.settings.lease_ttl;
    // Leases are renewed every third of their life at least, and the round also notices new or
    // departed processes, gives back partitions over this process's share and releases the ones
    // whose work has drained: at least once a second, so scaling out takes effect in seconds,
    // not in thirds of a 45-second lease (given-back partitions sit idle until released).
    let tick = (ttl / 3).min(REBALANCE_TICK).max(Duration::from_millis(50));
    let partitions = rt.stage.partitions(&rt.keys);
    let workers_key = rt.keys.workers(stage);
    let mut owned: HashMap<u32, Owned> = HashMap::new();
    // Redis being away at start delays the stage (as it would its first round); only another
    // live process with our id stops it.
    let identity = loop {
        // Bounded, as a round is: a silent connection must not hold the stage forever.
        let claim = tokio::time::timeout(ttl, claim_identity(&rt, &consumer, &workers_key, tick))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer from Redis within {ttl:?}")));
        match claim {
            Ok(identity) => break identity,
            Err(e) if e.is::<IdInUse>() => return Err(e),
            Err(e) => {
                metrics::counter!("wafleet_worker_redis_errors_total", "stage" => stage)
                    .increment(1);
                tracing::warn!(stage, error = %e, "checking the worker id failed; retrying");
                tokio::select! {
                    _ = rt.shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(tick) => {}
                }
            }
        }
    };
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
                    if !acquire(&rt, &mut con, identity.as_ref(), &consumer, p).await? {
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
                        (permits.clone(), running.clone()),
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
