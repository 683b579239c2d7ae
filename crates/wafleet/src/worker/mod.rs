//! The worker runtime every stage shares.
//!
//! # Guarantees
//! - **Nothing lost.** An entry leaves its stream only after its handler finished with it
//!   (`Done`), or after it was moved, in the same Redis script, to the stage's held list (a delayed
//!   retry) or to the dead-letter stream. A process that dies mid-job leaves the entry pending in
//!   the consumer group, and the next owner of the partition claims it (`XAUTOCLAIM`).
//! - **One conversation, in order, never two at once.** Ingest puts all updates of a conversation
//!   on one partition stream. Each partition of a stage is owned by exactly one live process at a
//!   time, through a lease in Redis ([`lease`]); the owner runs each conversation's jobs one after
//!   another in stream order (a lane per conversation) while different conversations run
//!   concurrently. A conversation whose job waits for a delayed retry is *parked*: its later jobs
//!   are appended behind it in a held list instead of overtaking it.
//! - **Bounded.** At most `max_in_flight` jobs run at once per process, delayed retries
//!   included. A job read waits in its conversation's lane without taking one of those places,
//!   so a customer who floods the number (hundreds of messages behind one slow model call) holds
//!   one place, not all of them, and the others' jobs run meanwhile; what the process holds in
//!   memory, running or waiting, is bounded at [`HELD_PER_RUNNING`] times `max_in_flight`, and
//!   reading and draining due retries wait when that bound is hit. One conversation holds at
//!   most [`FLOOD_SHARE`] times `max_in_flight` of them: its partition stops reading while it
//!   does (its other customers wait with it), and the other partitions keep the rest.
//! - **Crash-proof retries.** A delayed retry is a held list `P:{pn}:held:<stage>:<conv>` plus the
//!   conversation in the sorted set `P:{pn}:delayed:<stage>` scored by due time; the partition
//!   owner's scheduler drains due conversations. Both live in Redis, so a new owner resumes them.
//! - **Visibility timeout.** A lease lasts `lease_ttl`; a process that cannot renew it stops
//!   working the partition before the lease can pass to another process. The new owner claims
//!   every pending entry of the partition before reading new ones, which is safe only if no job can
//!   still be running elsewhere: hence `lease_ttl` must exceed the stage's job deadline, and
//!   [`WorkerSettings::validate`] refuses a configuration where it does not.
//!
//! # Keys (see also [`crate::streams`])
//! | key | type | what |
//! |---|---|---|
//! | `P:{pn}:lease:<stage>` | string, PX | consumer name of the process owning partition n for the stage (`<WAFLEET_WORKER_ID>@<incarnation>` when the id is set) |
//! | `P:{pn}:delayed:<stage>` | zset | parked conversations, scored by due time (Unix ms) |
//! | `P:{pn}:held:<stage>:<conv>` | list | a parked conversation's jobs, oldest first |
//! | `P:{events}:delayed:<stage>`, `P:{events}:held:<stage>:<conv>` | zset, list | the same for a stage of the events stream ([`Source::Events`], one partition, `n` = 0 in its lease) |
//! | `P:{workers}:<stage>` | zset | live processes of the stage, scored by last heartbeat |
//! | `P:{dead}:<stage>` | stream | jobs given up on, with `reason`, `deliveries`, `attempts` |

mod lease;
mod partition;
pub mod retention;
pub mod sampler;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::streams::Keys;

pub use lease::run_stage;

/// A stage: a consumer group over one family of partition streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// Consumer group name, also used in keys and metric labels.
    pub name: &'static str,
    /// Which partition streams it consumes.
    pub source: Source,
}

/// The families of partition streams, and the events stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Inbound,
    Status,
    Replies,
    Outbox,
    /// `P:{events}:stream`, one stream (ingest does not partition it): read as the stage's only
    /// partition, its entries kept once done, for inspection until the retention trims them
    /// ([`retention`]).
    Events,
}

impl Stage {
    pub fn stream(&self, keys: &Keys, partition: u32) -> String {
        match self.source {
            Source::Inbound => keys.inbound(partition),
            Source::Status => keys.status(partition),
            Source::Replies => keys.replies(partition),
            Source::Outbox => keys.outbox(partition),
            Source::Events => keys.events(),
        }
    }

    /// How many partitions the stage reads: one stream per partition, or the events stream
    /// alone.
    pub fn partitions(&self, keys: &Keys) -> u32 {
        match self.source {
            Source::Events => 1,
            _ => keys.partitions(),
        }
    }

    /// Whether a finished entry stays on its stream (acknowledged, not deleted): the events
    /// stream is kept for inspection, every other stream holds only work to do.
    pub fn keeps_entries(&self) -> bool {
        self.source == Source::Events
    }

    /// The parked conversations of a partition ([`Keys::delayed`]); on the events stream's hash
    /// tag for its stage, so each script still touches one Redis Cluster slot.
    pub fn delayed(&self, keys: &Keys, partition: u32) -> String {
        match self.source {
            Source::Events => format!("{}:{{events}}:delayed:{}", keys.prefix(), self.name),
            _ => keys.delayed(self.name, partition),
        }
    }

    /// A parked conversation's jobs ([`Keys::held`]), on the same hash tag as [`Self::delayed`].
    pub fn held(&self, keys: &Keys, partition: u32, conv: &str) -> String {
        match self.source {
            Source::Events => format!("{}:{{events}}:held:{}:{conv}", keys.prefix(), self.name),
            _ => keys.held(self.name, partition, conv),
        }
    }
}

/// One unit of work handed to a handler.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Stream entry id where the job was first read (stable across retries).
    pub id: String,
    pub partition: u32,
    /// Conversation key (the `conv` field), or the entry id when the entry has none.
    pub conv: String,
    pub fields: HashMap<String, String>,
    /// How many times a handler already asked to retry this job later.
    pub attempt: u32,
    /// How many times Redis delivered the entry (1 on first read; more after reclaims).
    #[serde(default)]
    pub deliveries: u64,
    /// Runs of this job from its conversation's held list that never ended: the process died
    /// under them (a run that ends, in any way, sets it back). A held job is no stream entry, so
    /// this stands in for `deliveries` against `max_deliveries`.
    #[serde(default)]
    pub unfinished_held_runs: u64,
}

impl Job {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// What a handler decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Try again after `after`, parking the conversation meanwhile. Counts towards
    /// `max_attempts`.
    Retry {
        after: Duration,
        reason: String,
    },
    /// Try again after `after`, parking the conversation meanwhile, without counting an attempt:
    /// for waits that say nothing about the job (rate limits, a paused channel).
    Defer {
        after: Duration,
        reason: String,
    },
    /// Give up: the job goes to the dead-letter stream with the reason.
    Dead {
        reason: String,
    },
    /// A dependency (Postgres, Redis, a provider) is away: keep the job and try again with
    /// jittered exponential backoff, for as long as it takes. Does not count as an attempt.
    Unavailable {
        reason: String,
    },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Retry { .. } => "retry",
            Outcome::Defer { .. } => "defer",
            Outcome::Dead { .. } => "dead",
            Outcome::Unavailable { .. } => "unavailable",
        }
    }
}

/// A stage's logic. Must be idempotent: a job may run again after a crash or a reclaim.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, job: &Job) -> impl Future<Output = Outcome> + Send;
}

/// How many jobs a process holds in memory (running, or waiting behind their conversation's
/// running job) per job it may run at once.
pub const HELD_PER_RUNNING: usize = 4;

/// How many jobs one conversation may have waiting in memory per job the process may run at
/// once: a partition with a conversation at that many reads nothing more until it drops below,
/// so a flood leaves the others at least `max_in_flight` of the [`HELD_PER_RUNNING`] times as
/// many places, enough to keep every running place busy.
pub const FLOOD_SHARE: usize = HELD_PER_RUNNING - 1;

/// Runtime settings of one stage in one process.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Jobs running at once in this process, across partitions (and [`HELD_PER_RUNNING`] times
    /// as many held, running or waiting).
    pub max_in_flight: usize,
    /// How long a handler may run before the job is treated as a retry.
    pub job_deadline: Duration,
    /// Partition lease duration (the visibility timeout). Must exceed `job_deadline`.
    pub lease_ttl: Duration,
    /// Deliveries of one entry (crashes, reclaims) before it is dead-lettered.
    pub max_deliveries: u64,
    /// Handler retries of one job before it is dead-lettered.
    pub max_attempts: u32,
    /// First and largest pause when a dependency is unavailable.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long in-flight jobs get after SIGTERM before they are released.
    pub shutdown_grace: Duration,
    /// How long one XREADGROUP blocks waiting for entries.
    pub read_block: Duration,
    /// Stable identity of this process across restarts (`WAFLEET_WORKER_ID`): a restarted
    /// process takes back at once the leases its previous incarnation held (see [`lease`]).
    pub worker_id: Option<String>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            job_deadline: Duration::from_secs(30),
            lease_ttl: Duration::from_secs(45),
            max_deliveries: 5,
            max_attempts: 8,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(20),
            read_block: Duration::from_millis(500),
            worker_id: None,
        }
    }
}

impl WorkerSettings {
    /// Refuses settings under which a reclaimed job could still be running elsewhere.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.lease_ttl <= self.job_deadline {
            bail!(
                "WAFLEET_LEASE_TTL_MS ({:?}) must exceed WAFLEET_JOB_DEADLINE_MS ({:?}): otherwise a \
                 partition could pass to another process while one of its jobs is still running",
                self.lease_ttl,
                self.job_deadline
            );
        }
        if self.max_in_flight == 0 || self.max_deliveries == 0 {
            bail!("WAFLEET_MAX_IN_FLIGHT and WAFLEET_MAX_DELIVERIES must be at least 1");
        }
        if let Some(id) = &self.worker_id {
            let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if id.len() > 64 || !id.chars().all(allowed) {
                bail!(
                    "WAFLEET_WORKER_ID ({id:?}) must be 1 to 64 letters, digits, '.', '_' or '-' \
                     (e.g. %H-%i in the systemd unit: host and instance)"
                );
            }
        }
        Ok(())
    }

    pub fn from_env() -> anyhow::Result<Self> {
        use crate::config::{millis as ms, positive};
        let d = Self::default();
        let s = Self {
            max_in_flight: positive("WAFLEET_MAX_IN_FLIGHT", d.max_in_flight)?,
            job_deadline: ms("WAFLEET_JOB_DEADLINE_MS", d.job_deadline)?,
            lease_ttl: ms("WAFLEET_LEASE_TTL_MS", d.lease_ttl)?,
            max_deliveries: positive("WAFLEET_MAX_DELIVERIES", d.max_deliveries)?,
            max_attempts: positive("WAFLEET_MAX_ATTEMPTS", d.max_attempts)?,
            backoff_base: ms("WAFLEET_BACKOFF_BASE_MS", d.backoff_base)?,
            backoff_max: ms("WAFLEET_BACKOFF_MAX_MS", d.backoff_max)?,
            shutdown_grace: Duration::from_secs(positive("WAFLEET_SHUTDOWN_GRACE_SECS", 20)?),
            read_block: d.read_block,
            worker_id: crate::config::var("WAFLEET_WORKER_ID"),
        };
        s.validate()?;
        Ok(s)
    }
}

/// Everything the runtime needs to run one stage.
pub struct StageRuntime<H> {
    pub stage: Stage,
    pub keys: Keys,
    /// Dedicated connections for the blocking stream reads (one per owned partition).
    pub redis: deadpool_redis::Pool,
    /// Everything else: one multiplexed connection, no per-use round trip (a pooled connection
    /// is pinged on every checkout).
    pub shared: crate::shared_redis::SharedRedis,
    pub handler: Arc<H>,
    pub settings: WorkerSettings,
    pub shutdown: CancellationToken,
}
