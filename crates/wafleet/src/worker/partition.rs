//! One owned partition of one stage: claims what the previous owner left pending, reads new
//! entries, runs each conversation's jobs in order on its own lane, parks conversations whose job
//! waits for a delayed retry, and drains them when due.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rand::Rng;
use redis::AsyncCommands;
use redis::streams::{
    StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadOptions, StreamReadReply,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Handler, Job, Outcome, StageRuntime};

/// Puts a retried job at the head of its conversation's held list, schedules the conversation,
/// and removes the entry from the stream (only acknowledges it where the stage keeps entries),
/// atomically.
/// KEYS: held, delayed, stream. ARGV: payload, due ms, conv, group, entry id (may be empty),
/// `1` to delete the entry.
const PARK_HEAD: &str = r"
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
if ARGV[5] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[4], ARGV[5])
  if ARGV[6] == '1' then redis.call('XDEL', KEYS[3], ARGV[5]) end
end
return 1
";

/// Appends a job behind its parked conversation's held list and removes it from the stream (as
/// [`PARK_HEAD`]).
/// KEYS: held, delayed, stream. ARGV: payload, now ms, conv, group, entry id, `1` to delete it.
const PARK_BEHIND: &str = r"
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[3])
redis.call('XACK', KEYS[3], ARGV[4], ARGV[5])
if ARGV[6] == '1' then redis.call('XDEL', KEYS[3], ARGV[5]) end
return 1
";

/// Replaces the head of a held list if it is still `old`. KEYS: held. ARGV: old, new payload.
const REPLACE_HEAD: &str = r"
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then redis.call('LSET', KEYS[1], 0, ARGV[2]) end
return 1
";

/// A held job is finished: pop it if it is still the head. KEYS: held. ARGV: payload.
const POP_HEAD: &str = r"
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then redis.call('LPOP', KEYS[1]) end
return 1
";

/// A held job asks for another retry: replace the head and reschedule.
/// KEYS: held, delayed. ARGV: old payload, new payload, due ms, conv.
const REPARK_HEAD: &str = r"
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then redis.call('LSET', KEYS[1], 0, ARGV[2]) end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
";

/// The held list is empty: unschedule the conversation. KEYS: held, delayed. ARGV: conv.
const FINISH_DRAIN: &str = r"
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) return 1 end
return 0
";

/// Deletes a consumer that holds no pending entry (deleting one that holds some would drop them
/// from the group for good). KEYS: stream. ARGV: group, consumer. 1 when deleted.
const FORGET_IF_EMPTY: &str = r"
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
";

pub(super) struct Scripts {
    park_head: redis::Script,
    park_behind: redis::Script,
    pop_head: redis::Script,
    replace_head: redis::Script,
    repark_head: redis::Script,
    finish_drain: redis::Script,
    forget_if_empty: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            park_head: redis::Script::new(PARK_HEAD),
            park_behind: redis::Script::new(PARK_BEHIND),
            pop_head: redis::Script::new(POP_HEAD),
            replace_head: redis::Script::new(REPLACE_HEAD),
            repark_head: redis::Script::new(REPARK_HEAD),
            finish_drain: redis::Script::new(FINISH_DRAIN),
            forget_if_empty: redis::Script::new(FORGET_IF_EMPTY),
        }
    }
}

/// How a job ended up after its handler settled.
enum Settled {
    Done,
    Dead(String),
    /// Retry at this time (Unix ms); `counts` when it is an attempt.
    Later {
        due: i64,
        counts: bool,
    },
    /// The partition is being given up; the job stays where it is.
    Abandoned,
}

enum Work {
    /// An entry read from the stream (or claimed), holding its in-flight permit.
    Fresh(Job, OwnedSemaphorePermit),
    /// Run the conversation's held jobs, oldest first, one at a time under this permit.
    Drain(OwnedSemaphorePermit),
}

/// Everything one partition's tasks share.
pub(super) struct Partition<H> {
    pub rt: Arc<StageRuntime<H>>,
    pub scripts: Arc<Scripts>,
    pub partition: u32,
    pub consumer: String,
    /// Jobs held in memory, running or waiting in a lane (the process's, shared by its
    /// partitions): taken before an entry is read or a due conversation drained.
    pub permits: Arc<Semaphore>,
    /// Jobs running (the process's `max_in_flight`): taken by a lane right before it runs its
    /// next work, so jobs waiting behind their own conversation's running job take none.
    pub running: Arc<Semaphore>,
    /// Stop reading new entries (lanes finish what they hold).
    pub soft: CancellationToken,
    /// Abandon everything now: the lease is gone (entries stay pending for the next owner).
    pub hard: CancellationToken,
    stream: String,
    lanes: Mutex<HashMap<String, VecDeque<Work>>>,
    draining: Mutex<HashSet<String>>,
    tracker: TaskTracker,
}

/// What a held list keeps of a job that runs again later: the job, one attempt further when the
/// wait counts as an attempt.
fn later_payload(job: &Job, counts: bool) -> String {
    let next = Job {
        attempt: job.attempt + u32::from(counts),
        ..job.clone()
    };
    serde_json::to_string(&next).expect("jobs serialise")
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A stream read failed after it may have reached Redis.
#[derive(Debug, thiserror::Error)]
#[error("reading the stream: {0}")]
struct ReadLost(redis::RedisError);

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

impl<H: Handler> Partition<H> {
    pub(super) fn new(
        rt: Arc<StageRuntime<H>>,
        scripts: Arc<Scripts>,
        partition: u32,
        consumer: String,
        (permits, running): (Arc<Semaphore>, Arc<Semaphore>),
        soft: CancellationToken,
        hard: CancellationToken,
    ) -> Self {
        let stream = rt.stage.stream(&rt.keys, partition);
        Self {
            rt,
            scripts,
            partition,
            consumer,
            permits,
            running,
            soft,
            hard,
            stream,
            lanes: Mutex::new(HashMap::new()),
            draining: Mutex::new(HashSet::new()),
            tracker: TaskTracker::new(),
        }
    }

    fn group(&self) -> &'static str {
        self.rt.stage.name
    }

    fn delayed_key(&self) -> String {
        self.rt.stage.delayed(&self.rt.keys, self.partition)
    }

    fn held_key(&self, conv: &str) -> String {
        self.rt.stage.held(&self.rt.keys, self.partition, conv)
    }

    /// `1` when a finished entry is deleted from the stream, `0` when the stage keeps it.
    fn deletes(&self) -> &'static str {
        if self.rt.stage.keeps_entries() {
            "0"
        } else {
            "1"
        }
    }

    /// Jittered exponential pause for the `n`th consecutive failure.
    fn pause(&self, n: u32) -> Duration {
        let s = &self.rt.settings;
        let cap = s
            .backoff_base
            .saturating_mul(2u32.saturating_pow(n.min(16)))
            .min(s.backoff_max);
        cap.mul_f64(rand::thread_rng().gen_range(0.5..1.0))
    }

    /// Sleeps, unless the partition is abandoned meanwhile (then returns false).
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.hard.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// The process's shared connection, for everything but the blocking read.
    async fn con(&self) -> anyhow::Result<crate::shared_redis::SharedConnection> {
        Ok(self.rt.shared.get().await?)
    }

    async fn ensure_group(&self) -> anyhow::Result<()> {
        let mut con = self.con().await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(self.group())
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut con)
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs the partition until soft-stopped (then waits for lanes) or abandoned.
    pub(super) async fn run(self: Arc<Self>) {
        let mut failures = 0;
        // Take over whatever the previous owner left pending, in stream order.
        loop {
            match self.take_over().await {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(stage = self.group(), partition = self.partition, error = %e, "taking over the partition failed; backing off");
                    if self.soft.is_cancelled() || !self.sleep(self.pause(failures)).await {
                        return;
                    }
                }
            }
        }
        failures = 0;
        let mut next_schedule = Instant::now();
        let mut next_sweep = Instant::now() + self.rt.settings.lease_ttl;
        while !self.soft.is_cancelled() && !self.hard.is_cancelled() {
            if Instant::now() >= next_schedule {
                if let Err(e) = self.schedule_due().await {
                    tracing::warn!(stage = self.group(), partition = self.partition, error = %e, "delayed-set scan failed");
                }
                next_schedule = Instant::now() + Duration::from_millis(100);
            }
            if Instant::now() >= next_sweep {
                if let Err(e) = self.forget_old_consumers().await {
                    tracing::debug!(stage = self.group(), partition = self.partition, error = %e, "deleting old consumers failed");
                }
                next_sweep = Instant::now() + self.rt.settings.lease_ttl;
            }
            match self.read_batch().await {
                Ok(()) => failures = 0,
                Err(e) if e.is::<ReadLost>() => {
                    // Entries Redis delivered with the lost answer are pending under this
                    // consumer and would stay there while it keeps the partition: give it back
                    // (lanes finish first), and whoever takes it next claims them, in order.
                    metrics::counter!("wafleet_worker_redis_errors_total", "stage" => self.group())
                        .increment(1);
                    tracing::warn!(stage = self.group(), partition = self.partition, error = %e, "a stream read's answer was lost; giving the partition back to claim what it held");
                    break;
                }
                Err(e) => {
                    failures += 1;
                    metrics::counter!("wafleet_worker_redis_errors_total", "stage" => self.group())
                        .increment(1);
                    tracing::warn!(stage = self.group(), partition = self.partition, error = %e, "reading the stream failed; backing off");
                    if !self.sleep(self.pause(failures)).await {
                        break;
                    }
                }
            }
        }
        self.tracker.close();
        tokio::select! {
            _ = self.tracker.wait() => {}
            _ = self.hard.cancelled() => {}
        }
        // Done reading here: the group's consumer of this process goes, unless a job left an
        // entry pending under it (for the next owner to claim). Redis keeps a consumer until it
        // is deleted, and the next owner, which takes the partition at once, sees it idle for
        // less than a lease and keeps it: each restart or rebalance left one per partition.
        if let Err(e) = self.forget(&self.consumer).await {
            tracing::debug!(stage = self.group(), partition = self.partition, error = %e, "deleting this process's consumer failed");
        }
    }

    /// Deletes `consumer` from the group if it holds no pending entry.
    async fn forget(&self, consumer: &str) -> anyhow::Result<()> {
        let mut con = self.con().await?;
        let _: i64 = self
            .scripts
            .forget_if_empty
            .key(&self.stream)
            .arg(self.group())
            .arg(consumer)
            .invoke_async(&mut con)
            .await?;
        Ok(())
    }

    /// Claims every entry pending in the group, this consumer's own included: what the last
    /// owner left, and what a read whose answer was lost delivered (see [`ReadLost`]).
    async fn take_over(self: &Arc<Self>) -> anyhow::Result<()> {
        self.ensure_group().await?;
        let mut con = self.con().await?;
        let mut start = "0-0".to_string();
        let mut claimed: Vec<StreamId> = Vec::new();
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(self.group())
                .arg(&self.consumer)
                .arg(0)
                .arg(&start)
                .arg("COUNT")
                .arg(200)
                .query_async(&mut con)
                .await?;
            if !reply.deleted_ids.is_empty() {
                // In the pending list but gone from the stream: nothing left to process.
                let _: () = con
                    .xack(&self.stream, self.group(), &reply.deleted_ids)
                    .await?;
            }
            claimed.extend(reply.claimed);
            if reply.next_stream_id == "0-0" {
                break;
            }
            start = reply.next_stream_id;
        }
        self.forget_old_consumers().await?;
        if claimed.is_empty() {
            return Ok(());
        }
        // A lane runs one job of its conversation at a time, so of each conversation's claimed
        // entries only the oldest can have been running when the last owner stopped; the others
        // were waiting behind it and never started. The claim counted a delivery for each: set
        // theirs back to this one, or a job crashing its process would take its conversation's
        // next messages to the dead-letter stream with it.
        let mut convs = std::collections::HashSet::new();
        let waiting: Vec<&str> = claimed
            .iter()
            .filter(|e| !convs.insert(conv_of(e)))
            .map(|e| e.id.as_str())
            .collect();
        for ids in waiting.chunks(200) {
            let _: redis::Value = redis::cmd("XCLAIM")
                .arg(&self.stream)
                .arg(self.group())
                .arg(&self.consumer)
                .arg(0)
                .arg(ids)
                .arg("RETRYCOUNT")
                .arg(1)
                .arg("JUSTID")
                .query_async(&mut con)
                .await?;
        }
        let deliveries = self.delivery_counts(&mut con).await?;
        tracing::info!(
            stage = self.group(),
            partition = self.partition,
            entries = claimed.len(),
            "claimed pending entries"
        );
        metrics::counter!("wafleet_worker_reclaimed_total", "stage" => self.group())
            .increment(claimed.len() as u64);
        for entry in claimed {
            let n = deliveries.get(&entry.id).copied().unwrap_or(1);
            let permit = self.permits.clone().acquire_owned().await?;
            self.dispatch_fresh(entry, n, permit);
        }
        Ok(())
    }

    /// Deletes the group's other consumers that hold nothing (at a takeover: all claimed just
    /// now) and did nothing for a lease TTL; at the takeover and once a lease TTL while the
    /// partition is owned, since a consumer left behind on a partition whose owner never changes
    /// again would otherwise stay (a process killed without an id whose partitions were taken
    /// just before its consumer had been idle for a lease, one that could not delete its own).
    /// Every process start names a new consumer, and Redis keeps each one until it is deleted,
    /// so a fleet that scales and redeploys would otherwise pile them up for good. The idle bound
    /// spares a process still reading; one that reads again later is made again by its read.
    /// Earlier incarnations of this process's worker id go whatever their idle time: the stage
    /// made sure they are silent before taking their leases, and this one takes them back at
    /// once, long before a lease has passed (a stopped process deletes its own consumer, see
    /// [`Self::run`], but one killed without a word cannot). Each goes only if it still holds
    /// nothing when it is deleted ([`FORGET_IF_EMPTY`]).
    async fn forget_old_consumers(&self) -> anyhow::Result<()> {
        let mut con = self.con().await?;
        let consumers: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.stream)
            .arg(self.group())
            .query_async(&mut con)
            .await?;
        let incarnation = self
            .rt
            .settings
            .worker_id
            .as_deref()
            .map(|id| format!("{id}@"));
        for c in consumers.consumers {
            let earlier_incarnation = incarnation
                .as_deref()
                .is_some_and(|prefix| c.name.starts_with(prefix));
            let idle = Duration::from_millis(c.idle as u64);
            let long_gone = c.pending == 0 && idle > self.rt.settings.lease_ttl;
            if c.name != self.consumer && (earlier_incarnation || long_gone) {
                self.forget(&c.name).await?;
            }
        }
        Ok(())
    }

    async fn delivery_counts(
        &self,
        con: &mut crate::shared_redis::SharedConnection,
    ) -> anyhow::Result<HashMap<String, u64>> {
        let mut counts = HashMap::new();
        let mut start = "-".to_string();
        loop {
            let reply: StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(&self.stream)
                .arg(self.group())
                .arg(&start)
                .arg("+")
                .arg(500)
                .arg(&self.consumer)
                .query_async(con)
                .await?;
            let last = reply.ids.last().map(|p| p.id.clone());
            let n = reply.ids.len();
            for p in reply.ids {
                counts.insert(p.id, p.times_delivered as u64);
            }
            match last {
                Some(id) if n == 500 => start = format!("({id}"),
                _ => return Ok(counts),
            }
        }
    }

    /// Jobs one conversation may have waiting in its lane (besides its running one):
    /// [`FLOOD_SHARE`] times `max_in_flight`.
    fn lane_cap(&self) -> usize {
        self.rt
            .settings
            .max_in_flight
            .saturating_mul(super::FLOOD_SHARE)
            .max(1)
    }

    /// The most jobs a conversation of this partition has waiting in its lane.
    fn fullest_lane(&self) -> usize {
        let lanes = self.lanes.lock().expect("lanes lock");
        lanes.values().map(VecDeque::len).max().unwrap_or(0)
    }

    async fn read_batch(self: &Arc<Self>) -> anyhow::Result<()> {
        // A customer flooding the number holds at most its lane's cap of the process's places
        // (and its running job), the rest stay free for the other partitions' customers: before, a
        // flood past the held bound took every place, and the process then read one job for
        // the others each time one of the flood's ended, one model call apart.
        let fullest = self.fullest_lane();
        if fullest >= self.lane_cap() {
            tokio::select! {
                _ = self.soft.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            return Ok(());
        }
        // Wait for room before reading, so the bound on in-flight jobs holds.
        let first = tokio::select! {
            p = self.permits.clone().acquire_owned() => p?,
            _ = self.soft.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(100)) => return Ok(()),
        };
        // No more than the fullest lane has left below its cap: whoever the entries are of, no
        // lane goes past it (a running job and its cap waiting, at most).
        let room = 1 + self
            .permits
            .available_permits()
            .min(199)
            .min(self.lane_cap() - 1 - fullest);
        // A blocking read holds its connection: a pooled one of its own.
        let mut con = self.rt.redis.get().await?;
        let opts = StreamReadOptions::default()
            .group(self.group(), &self.consumer)
            .count(room)
            .block(self.rt.settings.read_block.as_millis() as usize);
        // Pooled connections have no response timeout: a read on one that went silent (a
        // failover that black-holes the old address) would otherwise wait for TCP to give up,
        // about 15 minutes, with the partition held and read by nobody.
        let answer_within = self.rt.settings.read_block + crate::shared_redis::RESPONSE_TIMEOUT;
        let answer = tokio::time::timeout(
            answer_within,
            con.xread_options::<_, _, Option<StreamReadReply>>(&[&self.stream], &[">"], &opts),
        )
        .await;
        let reply: redis::RedisResult<Option<StreamReadReply>> = match answer {
            Ok(reply) => reply,
            Err(_) => {
                // Not back in the pool: nothing more comes over it.
                let _ = deadpool_redis::Connection::take(con);
                return Err(ReadLost(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {answer_within:?}"),
                )))
                .into());
            }
        };
        drop(con);
        let reply = match reply {
            Ok(r) => r,
            Err(e) if is_nogroup(&e) => {
                // Redis restarted without persistence: the group is gone. Re-create and go on.
                tracing::warn!(
                    stage = self.group(),
                    partition = self.partition,
                    "consumer group missing; re-creating it"
                );
                self.ensure_group().await?;
                return Ok(());
            }
            // The read may have reached Redis: its entries are then this consumer's pending
            // ones, which no later `>` read returns.
            Err(e) => return Err(ReadLost(e).into()),
        };
        let entries: Vec<StreamId> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect();
        let mut first = Some(first);
        for entry in entries {
            let permit = match first.take() {
                Some(p) => p,
                None => self.permits.clone().acquire_owned().await?,
            };
            self.dispatch_fresh(entry, 1, permit);
        }
        Ok(())
    }

    fn dispatch_fresh(
        self: &Arc<Self>,
        entry: StreamId,
        deliveries: u64,
        permit: OwnedSemaphorePermit,
    ) {
        let fields: HashMap<String, String> = entry
            .map
            .iter()
            .filter_map(|(k, v)| {
                redis::from_redis_value::<String>(v)
                    .ok()
                    .map(|v| (k.clone(), v))
            })
            .collect();
        let conv = conv_of(&entry);
        let job = Job {
            id: entry.id,
            partition: self.partition,
            conv: conv.clone(),
            fields,
            attempt: 0,
            deliveries,
            unfinished_held_runs: 0,
        };
        self.dispatch(conv, Work::Fresh(job, permit));
    }

    fn dispatch(self: &Arc<Self>, conv: String, work: Work) {
        let mut lanes = self.lanes.lock().expect("lanes lock");
        if let Some(queue) = lanes.get_mut(&conv) {
            queue.push_back(work);
            return;
        }
        lanes.insert(conv.clone(), VecDeque::from([work]));
        drop(lanes);
        let this = Arc::clone(self);
        self.tracker.spawn(async move {
            tokio::select! {
                _ = this.lane(conv) => {}
                _ = this.hard.cancelled() => {}
            }
        });
    }

    /// Runs one conversation's work, in order, until its queue is empty.
    async fn lane(&self, conv: String) {
        loop {
            let work = {
                let mut lanes = self.lanes.lock().expect("lanes lock");
                let queue = lanes.get_mut(&conv).expect("a running lane has a queue");
                match queue.pop_front() {
                    Some(w) => w,
                    None => {
                        lanes.remove(&conv);
                        return;
                    }
                }
            };
            // A place to run, taken only now: while the lane's earlier job ran, this one waited
            // without holding one, so a conversation with many jobs queued holds one place.
            // Places are held only by running work, which ends, so this wait always does.
            let Ok(_place) = self.running.acquire().await else {
                return;
            };
            match work {
                Work::Fresh(job, permit) => {
                    let settled = self.process_fresh(job).await;
                    drop(permit);
                    if !settled {
                        // Left pending (the partition is being given up): every later job of
                        // the conversation stays pending too, so the next owner runs them after
                        // it, in order.
                        self.abandon_lane(&conv);
                        return;
                    }
                }
                Work::Drain(permit) => {
                    self.drain(&conv).await;
                    drop(permit);
                    self.draining.lock().expect("draining lock").remove(&conv);
                }
            }
        }
    }

    /// Drops a lane's queued work, leaving its jobs pending in the stream.
    fn abandon_lane(&self, conv: &str) {
        let queued = self.lanes.lock().expect("lanes lock").remove(conv);
        if queued.is_some_and(|q| q.iter().any(|w| matches!(w, Work::Drain(_)))) {
            self.draining.lock().expect("draining lock").remove(conv);
        }
    }

    async fn schedule_due(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut con = self.con().await?;
        let due: Vec<String> = con
            .zrangebyscore_limit(self.delayed_key(), "-inf", now_ms(), 0, 100)
            .await?;
        for conv in due {
            if self.draining.lock().expect("draining lock").contains(&conv) {
                continue;
            }
            // A drain runs jobs like a fresh read does, so it takes an in-flight permit first,
            // waiting its turn with the readers (this partition reads nothing meanwhile). It is
            // taken here, never inside a lane: the jobs queued in lanes hold permits, and a lane
            // waiting for one could wait for itself.
            let permit = tokio::select! {
                p = self.permits.clone().acquire_owned() => p?,
                _ = self.soft.cancelled() => return Ok(()),
                _ = self.hard.cancelled() => return Ok(()),
            };
            self.draining
                .lock()
                .expect("draining lock")
                .insert(conv.clone());
            self.dispatch(conv, Work::Drain(permit));
        }
        Ok(())
    }

    /// Runs the handler with the stage's deadline and records metrics.
    async fn run_handler(&self, job: &Job) -> Outcome {
        let started = Instant::now();
        // A panicking handler is a bug, not a reason to lose the job or the lane: it counts as a
        // retry, so a job that always panics ends on the dead-letter stream. The reason names
        // where it panicked, not what it said (telemetry::panic_text).
        let run = std::panic::AssertUnwindSafe(self.rt.handler.handle(job)).catch_unwind();
        let outcome = match tokio::time::timeout(self.rt.settings.job_deadline, run).await {
            Ok(Ok(o)) => o,
            Ok(Err(panic)) => Outcome::Retry {
                after: self.pause(job.attempt),
                reason: format!("handler {}", crate::telemetry::panic_text(&*panic)),
            },
            Err(_) => Outcome::Retry {
                after: self.pause(job.attempt),
                reason: format!(
                    "job exceeded its deadline of {:?}",
                    self.rt.settings.job_deadline
                ),
            },
        };
        let stage = self.group();
        metrics::counter!("wafleet_jobs_total", "stage" => stage, "outcome" => outcome.label())
            .increment(1);
        metrics::histogram!("wafleet_job_duration_seconds", "stage" => stage)
            .record(started.elapsed().as_secs_f64());
        match &outcome {
            Outcome::Done => tracing::debug!(stage, id = %job.id, "job done"),
            Outcome::Retry { after, reason } | Outcome::Defer { after, reason } => {
                tracing::info!(stage, id = %job.id, ?after, reason, "job retries later")
            }
            Outcome::Dead { reason } => {
                tracing::warn!(stage, id = %job.id, reason, "job dead-lettered")
            }
            Outcome::Unavailable { reason } => {
                tracing::warn!(stage, id = %job.id, reason, "dependency unavailable; backing off")
            }
        }
        outcome
    }

    /// Repeats a Redis step until it succeeds or the partition is abandoned.
    async fn persist<T, F, Fut>(&self, what: &str, mut step: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let mut n = 0;
        loop {
            match step().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    n += 1;
                    metrics::counter!("wafleet_worker_redis_errors_total", "stage" => self.group())
                        .increment(1);
                    tracing::warn!(stage = self.group(), error = %e, what, "Redis step failed; retrying");
                    if !self.sleep(self.pause(n)).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Runs a fresh job to its end; false when it was left pending instead (given up on while
    /// the partition is released).
    async fn process_fresh(&self, job: Job) -> bool {
        if job.deliveries > self.rt.settings.max_deliveries {
            let reason = format!(
                "delivered {} times (limit {})",
                job.deliveries, self.rt.settings.max_deliveries
            );
            metrics::counter!("wafleet_jobs_total", "stage" => self.group(), "outcome" => "dead")
                .increment(1);
            tracing::warn!(stage = self.group(), id = %job.id, reason, "poison entry dead-lettered");
            return self.give_up(&job, &reason).await;
        }
        // A parked conversation keeps its order: this job waits behind the held ones.
        let Some(parked) = self
            .persist("checking for a parked conversation", || async {
                let mut con = self.con().await?;
                let parked: bool = con.exists(self.held_key(&job.conv)).await?;
                Ok(parked)
            })
            .await
        else {
            return false;
        };
        if parked {
            let payload = serde_json::to_string(&job).expect("jobs serialise");
            return self
                .park(
                    "parking a job behind its conversation",
                    &self.scripts.park_behind,
                    &job,
                    &payload,
                    now_ms(),
                )
                .await;
        }
        match self.settle(&job).await {
            Settled::Done => self.ack(&job).await,
            Settled::Dead(reason) => return self.give_up(&job, &reason).await,
            Settled::Later { due, counts } => {
                let payload = later_payload(&job, counts);
                return self
                    .park(
                        "parking a job for a delayed retry",
                        &self.scripts.park_head,
                        &job,
                        &payload,
                        due,
                    )
                    .await;
            }
            // Left pending: the next owner (or this one, later) picks it up.
            Settled::Abandoned => {
                self.give_back_delivery(&job).await;
                return false;
            }
        }
        true
    }

    /// A job given up on while the partition is released (its dependency was down) did not
    /// crash anything, so this delivery must not count towards `max_deliveries`: the next
    /// owner's claim adds one, so it is set one back first. Otherwise an outage with a few
    /// partition moves (workers added by an autoscaler watching the backlog grow, a restart)
    /// would send jobs that never failed to the dead-letter stream. Best effort: when Redis
    /// itself is away this fails, and the delivery counts.
    async fn give_back_delivery(&self, job: &Job) {
        let result: anyhow::Result<redis::Value> = async {
            let mut con = self.con().await?;
            Ok(redis::cmd("XCLAIM")
                .arg(&self.stream)
                .arg(self.group())
                .arg(&self.consumer)
                .arg(0)
                .arg(&job.id)
                .arg("RETRYCOUNT")
                .arg(job.deliveries.saturating_sub(1))
                .arg("JUSTID")
                .query_async(&mut con)
                .await?)
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(stage = self.group(), id = %job.id, error = %e, "could not give back the delivery of a job left pending");
        }
    }

    /// Runs the handler until it settles: waits out unavailable dependencies (not counted as
    /// attempts) and turns a retry past `max_attempts` into a dead letter.
    async fn settle(&self, job: &Job) -> Settled {
        let mut unavailable = 0;
        loop {
            match self.run_handler(job).await {
                Outcome::Done => return Settled::Done,
                Outcome::Dead { reason } => return Settled::Dead(reason),
                Outcome::Retry { reason, .. }
                    if job.attempt + 1 >= self.rt.settings.max_attempts =>
                {
                    return Settled::Dead(format!(
                        "{reason} (gave up after {} attempts)",
                        job.attempt + 1
                    ));
                }
                Outcome::Retry { after, .. } => {
                    let due = now_ms() + after.as_millis() as i64;
                    return Settled::Later { due, counts: true };
                }
                Outcome::Defer { after, .. } => {
                    let due = now_ms() + after.as_millis() as i64;
                    return Settled::Later { due, counts: false };
                }
                Outcome::Unavailable { .. } => {
                    unavailable += 1;
                    if self.soft.is_cancelled() || !self.sleep(self.pause(unavailable)).await {
                        return Settled::Abandoned;
                    }
                }
            }
        }
    }

    /// Moves a stream entry into its conversation's held list with [`PARK_HEAD`] or
    /// [`PARK_BEHIND`] (which share their keys and arguments; `score` is the due time or now).
    async fn park(
        &self,
        doing: &str,
        script: &redis::Script,
        job: &Job,
        payload: &str,
        score: i64,
    ) -> bool {
        self.persist(doing, || async {
            let mut con = self.con().await?;
            let _: i64 = script
                .key(self.held_key(&job.conv))
                .key(self.delayed_key())
                .key(&self.stream)
                .arg(payload)
                .arg(score)
                .arg(&job.conv)
                .arg(self.group())
                .arg(&job.id)
                .arg(self.deletes())
                .invoke_async(&mut con)
                .await?;
            Ok(())
        })
        .await
        .is_some()
    }

    async fn ack(&self, job: &Job) {
        self.persist("acknowledging a job", || async {
            let mut con = self.con().await?;
            // One transaction: a connection cut between the two would leave a finished entry
            // on the stream for good, counted as unread where Redis cannot tell the lag. A
            // stage that keeps its stream's entries only acknowledges them.
            let mut pipe = redis::pipe();
            pipe.atomic().xack(&self.stream, self.group(), &[&job.id]);
            if !self.rt.stage.keeps_entries() {
                pipe.xdel(&self.stream, &[&job.id]);
            }
            let _: () = pipe.query_async(&mut con).await?;
            Ok(())
        })
        .await;
    }

    /// Dead-letters a fresh job, then acknowledges it; false (left pending) when the partition
    /// was abandoned before Redis took the dead letter: the next owner gives up on it again.
    async fn give_up(&self, job: &Job, reason: &str) -> bool {
        if !self.dead_letter(job, reason).await {
            return false;
        }
        self.ack(job).await;
        true
    }

    /// [`Self::give_up`] for a held job (`payload` at the head of `held`): dropped from the list
    /// once its dead letter is written; false (left held) otherwise.
    async fn give_up_held(&self, job: &Job, reason: &str, held: &str, payload: &str) -> bool {
        if !self.dead_letter(job, reason).await {
            return false;
        }
        self.pop_head(held, payload).await;
        true
    }

    /// Writes the job's dead letter; false when the partition was abandoned before Redis took
    /// it, and the caller must then leave the job where it is (pending, or held) rather than
    /// acknowledge or drop it.
    #[must_use]
    async fn dead_letter(&self, job: &Job, reason: &str) -> bool {
        let dead = self.rt.keys.dead(self.group());
        let mut fields: Vec<(String, String)> = job
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        fields.extend(
            crate::dead_letters::GaveUp {
                reason,
                stage: self.group(),
                source_stream: &self.stream,
                source_id: &job.id,
                deliveries: job.deliveries,
                attempts: job.attempt,
                dead_at_ms: now_ms(),
            }
            .fields(),
        );
        self.persist("writing a dead letter", || async {
            let mut con = self.con().await?;
            let _: String = con.xadd(&dead, "*", &fields).await?;
            Ok(())
        })
        .await
        .is_some()
    }

    /// Runs a parked conversation's held jobs, oldest first, until the list is empty or one asks
    /// for another delay.
    async fn drain(&self, conv: &str) {
        let held = self.held_key(conv);
        loop {
            let Some(head) = self
                .persist("reading a held job", || async {
                    let mut con = self.con().await?;
                    let head: Option<String> = con.lindex(&held, 0).await?;
                    Ok(head)
                })
                .await
            else {
                return;
            };
            let Some(payload) = head else {
                self.persist("finishing a drain", || async {
                    let mut con = self.con().await?;
                    let _: i64 = self
                        .scripts
                        .finish_drain
                        .key(&held)
                        .key(self.delayed_key())
                        .arg(conv)
                        .invoke_async(&mut con)
                        .await?;
                    Ok(())
                })
                .await;
                return;
            };
            let job: Job = match serde_json::from_str(&payload) {
                Ok(j) => j,
                Err(e) => {
                    let stub = Job {
                        id: "held".into(),
                        partition: self.partition,
                        conv: conv.into(),
                        fields: HashMap::from([("payload".into(), payload.clone())]),
                        attempt: 0,
                        deliveries: 0,
                        unfinished_held_runs: 0,
                    };
                    let reason = format!(
                        "held job does not decode: {}",
                        wafleet_core::json_error_without_input(&e)
                    );
                    if !self.give_up_held(&stub, &reason, &held, &payload).await {
                        return;
                    }
                    continue;
                }
            };
            // A job whose runs keep killing the process: dead-lettered, not run again (else
            // every owner of the partition would crash on it in turn).
            let limit = self.rt.settings.max_deliveries;
            if job.unfinished_held_runs >= limit {
                let reason =
                    format!("held job: {limit} runs never ended (the worker died under them)");
                tracing::warn!(stage = self.group(), id = %job.id, reason, "poison held job dead-lettered");
                if !self.give_up_held(&job, &reason, &held, &payload).await {
                    return;
                }
                continue;
            }
            // This run counts until it ends; every ending below writes the job back without it.
            let running = Job {
                unfinished_held_runs: job.unfinished_held_runs + 1,
                ..job.clone()
            };
            let original = payload;
            let payload = serde_json::to_string(&running).expect("jobs serialise");
            if !self.replace_head(&held, &original, &payload).await {
                return;
            }
            // Under the drain's own permit, taken by the scheduler (see `schedule_due`).
            match self.settle(&job).await {
                Settled::Done => self.pop_head(&held, &payload).await,
                Settled::Dead(reason) => {
                    if !self.give_up_held(&job, &reason, &held, &payload).await {
                        return;
                    }
                }
                Settled::Later { due, counts } => {
                    let next = later_payload(&job, counts);
                    self.persist("rescheduling a held job", || async {
                        let mut con = self.con().await?;
                        let _: i64 = self
                            .scripts
                            .repark_head
                            .key(&held)
                            .key(self.delayed_key())
                            .arg(&payload)
                            .arg(&next)
                            .arg(due)
                            .arg(conv)
                            .invoke_async(&mut con)
                            .await?;
                        Ok(())
                    })
                    .await;
                    return;
                }
                Settled::Abandoned => {
                    // Given up on gracefully (the partition is released): not a death.
                    self.replace_head(&held, &payload, &original).await;
                    return;
                }
            }
        }
    }

    /// Replaces the held list's head if it is still `old`; false when Redis could not be
    /// reached before the partition was released.
    async fn replace_head(&self, held: &str, old: &str, new: &str) -> bool {
        let script = &self.scripts.replace_head;
        self.on_held_head("counting a held job's run", script, held, &[old, new])
            .await
    }

    async fn pop_head(&self, held: &str, payload: &str) {
        let script = &self.scripts.pop_head;
        self.on_held_head("removing a finished held job", script, held, &[payload])
            .await;
    }

    /// Runs a script on a held list (its only key) until Redis takes it; false when the
    /// partition was released first.
    async fn on_held_head(
        &self,
        doing: &str,
        script: &redis::Script,
        held: &str,
        args: &[&str],
    ) -> bool {
        self.persist(doing, || async {
            let mut con = self.con().await?;
            let _: i64 = script.key(held).arg(args).invoke_async(&mut con).await?;
            Ok(())
        })
        .await
        .is_some()
    }
}

/// The conversation an entry belongs to (its `conv` field; an entry without one is its own).
fn conv_of(entry: &StreamId) -> String {
    entry
        .map
        .get("conv")
        .and_then(|v| redis::from_redis_value::<String>(v).ok())
        .unwrap_or_else(|| entry.id.clone())
}
