//! The sender stage: sends outbound parts through the Graph API, at most once each once Meta
//! accepted it, within the fleet-wide rate limits.
//!
//! # Exactly once to the customer
//! Every part is a row in `outbound_messages` before it is sent. Right before a send, one
//! statement checks that the part is still `pending` and that the bot still owns the
//! conversation, and marks it `sending` (else it is recorded `suppressed`: a human took over).
//! Then Meta is called with our outbound id, tagged ([`crate::crypto::CallbackTags`]), in
//! `biz_opaque_callback_data`.
//! - Accepted → `accepted` with Meta's wamid (statuses that came first are applied).
//! - The request certainly did not leave (connection refused) → back to `pending`, retried.
//! - **Ambiguous** (timeout, connection lost after sending): the part stays `sending` and is
//!   *not* resent at once. Status webhooks echo our outbound id, and the status stage records
//!   the wamid and `accepted` when one arrives. The job comes back every
//!   [`SendPolicy::ambiguous_check`]; only when no status arrived within
//!   [`SendPolicy::ambiguous_resend_after`] (queued, not only read: a status still waiting in
//!   its stream holds the resend back) is the part considered lost and sent again. Meta
//!   sends `sent` within seconds of accepting, so a duplicate needs Meta to have accepted a
//!   message and stayed silent about it for that long. Resends of unanswered sends count as
//!   attempts and are bounded like transient errors (attempts and age); past the bounds the part
//!   is `failed` and the job dead-lettered (`wafleet_sender_ambiguous_given_up_total`).
//!
//! A crash, a reclaim or a redelivery re-runs the job; parts already `accepted` are skipped.
//!
//! # Errors, classified on `error.code` (not the HTTP status)
//! - throttling (130429 number, 131056 pair, 4/80007/131048 account-wide, 131057 maintenance)
//!   → the shared limiter is pushed back and the job deferred (not counted as an attempt); 80007
//!   pauses every number of the business account, 4 every number of the Meta app (the channels
//!   its app secrets sign), 131048 and 131057 the number for a minute; past the retry age the
//!   part is given up all the same. A push-back Redis refused never lets the part out at once
//!   into the same throttle: it waits `UNRECORDED_PUSH_BACK_WAIT` itself (a part a `failed`
//!   status reopens stays failed until the push-back is recorded);
//! - transient → retried through the delayed set with exponential backoff and full jitter,
//!   bounded in attempts and total age, then failed and dead-lettered;
//! - permanent → failed at once with Meta's code and reason; later parts are skipped; a code
//!   Meta's table does not list also raises `wafleet_sender_alerts_total{kind="unknown_code"}`;
//! - 131047 (24-hour window closed) → failed, the conversation goes to a human;
//! - configuration (expired token, permissions, locked account) → the channel's sends pause
//!   for [`SendPolicy::config_pause`] and `wafleet_sender_alerts_total` moves, instead of burning
//!   retries.
//!
//! The same codes in a `failed` status (the status stage queues the part's job again) are
//! decided alike: a throttle pushes back, a transient error waits the backoff, a configuration
//! error pauses the channel and alerts, also for a part past its bounds.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use sqlx::PgPool;
use wafleet_core::graph_error::{
    ErrorClass, ThrottleScope, classify_status_error, is_known_code, max_tries,
};
use wafleet_core::retry::Backoff;

use super::channel_settings::{ChannelCache, ChannelSettings};
use super::llm::window_open;
use super::status::RE_ENGAGEMENT;
use super::{
    announce_failures, announce_recoveries, batch_outcome, db_outcome, hand_over_and_publish,
    redis_down,
};
use crate::batch::Batcher;
use crate::graph::{GraphClient, OutgoingText, Recipient, SendResult};
use crate::ratelimit::{Budget, Decision, RateLimiter};
use crate::store::conversations::{Acceptance, Accepted, record_accepted_many};
use crate::store::replies::{self, Attempt, Claim, Part};
use crate::streams::Keys;
use crate::worker::{Handler, Job, Outcome, Source, Stage};

pub const STAGE: Stage = Stage {
    name: "sender",
    source: Source::Outbox,
};

/// Meta's pair rate: one message per 6 s to one customer.
pub const PAIR_RATE_PER_SEC: f64 = 1.0 / 6.0;

/// How long a wamid Postgres would not record is kept in Redis (longer than any outage a job
/// outlives: the job is dead-lettered after `WAFLEET_SEND_MAX_AGE_MS` anyway).
const UNRECORDED_WAMID_TTL: Duration = Duration::from_secs(7 * 86_400);

/// How long a part Meta throttled waits when the push-back could not be recorded (Redis, or
/// Postgres for the numbers an account's or app's limit holds, would not take it): the longest
/// hold a throttle sets but for a recipient's repeated 131056s, so that its next try does not go
/// into the same throttle at once.
const UNRECORDED_PUSH_BACK_WAIT: Duration = Duration::from_secs(60);

/// The `fail_reason` of a part not sent because its customer's data was erased (as the erasure
/// records for the parts still pending then, [`crate::store::erasure`]).
pub const CUSTOMER_ERASED: &str = "the customer's data was erased";

/// The `fail_reason` of a part not sent because the customer's last message is over 24 hours old.
pub const WINDOW_CLOSED: &str = "the 24-hour window is closed";

/// How the `fail_reason` of a part not sent because an earlier part of its message failed begins.
pub const EARLIER_PART_FAILED: &str = "an earlier part failed";

/// How the `fail_reason` of a part the sender gave up on (past its retry bounds) begins.
pub const GAVE_UP: &str = "gave up";

#[derive(Debug, Clone)]
pub struct SendPolicy {
    /// Retries of transient errors (attempts and total age).
    pub backoff: Backoff,
    /// How often an ambiguous send is checked for a confirming status.
    pub ambiguous_check: Duration,
    /// After this long without a status, an ambiguous send is taken as lost and sent again.
    pub ambiguous_resend_after: Duration,
    /// How long a configuration error pauses a channel's sends.
    pub config_pause: Duration,
    /// How often a job held by a paused channel looks again, so that an operator who clears the
    /// pause (`sends_paused_until = NULL`) sees sends resume within this, not at the pause's end.
    pub paused_recheck: Duration,
    /// Waits for the rate limiter up to this long in all, in process; longer waits park the job.
    /// Must stay well below the stage's job deadline.
    pub max_inline_wait: Duration,
}

impl Default for SendPolicy {
    fn default() -> Self {
        Self {
            backoff: Backoff {
                base: Duration::from_millis(500),
                max: Duration::from_secs(60),
                max_attempts: 8,
                max_age: Duration::from_secs(3600),
            },
            ambiguous_check: Duration::from_secs(15),
            ambiguous_resend_after: Duration::from_secs(120),
            config_pause: Duration::from_secs(600),
            paused_recheck: Duration::from_secs(30),
            max_inline_wait: Duration::from_secs(1),
        }
    }
}

impl SendPolicy {
    pub fn from_env() -> anyhow::Result<Self> {
        use crate::config::{millis as ms, positive};
        let d = Self::default();
        Ok(Self {
            backoff: Backoff {
                max_attempts: positive("WAFLEET_SEND_MAX_ATTEMPTS", d.backoff.max_attempts)?,
                max_age: ms("WAFLEET_SEND_MAX_AGE_MS", d.backoff.max_age)?,
                ..d.backoff
            },
            ambiguous_check: ms("WAFLEET_SEND_AMBIGUOUS_CHECK_MS", d.ambiguous_check)?,
            ambiguous_resend_after: ms(
                "WAFLEET_SEND_AMBIGUOUS_RESEND_MS",
                d.ambiguous_resend_after,
            )?,
            config_pause: ms("WAFLEET_SEND_CONFIG_PAUSE_MS", d.config_pause)?,
            paused_recheck: d.paused_recheck,
            max_inline_wait: d.max_inline_wait,
        })
    }
}

impl SendPolicy {
    /// Whether a part whose try `failed_try` (zero-based) failed with `class` (Meta's `code`, when
    /// there is one) is sent again: the class is worth it and the retries are within their
    /// attempt and age bounds, the age counted from `retries_since` ([`Part::retries_since`]),
    /// and within the tries the code allows ([`max_tries`]: 1 is retried once). The one rule for
    /// a synchronous error, a `failed` status that finds its part (status stage) and one that
    /// came first (sender).
    pub fn resends(
        &self,
        class: ErrorClass,
        code: Option<i64>,
        failed_try: u32,
        retries_since: DateTime<Utc>,
    ) -> bool {
        let age = elapsed_since(retries_since);
        // A configuration failure is the channel's, not the part's: like a synchronous one, it
        // uses none of the part's attempts (the resend is given its attempt back, see
        // `reopen_failed_giving_back`) and the pause holds the resend: only the age bound applies.
        if class == ErrorClass::Config {
            return age < self.backoff.max_age;
        }
        class.worth_resending()
            && code
                .and_then(max_tries)
                .is_none_or(|tries| failed_try + 1 < tries)
            && self.backoff.should_retry(failed_try, age)
    }
}

/// Whether a part's kind is one an agent writes (a message or a template), which goes out to a
/// conversation a human owns and never hands it over again when it fails.
pub fn written_by_agent(kind: &str) -> bool {
    matches!(kind, "agent" | "template")
}

/// The parts a send job names in its `outbound_id` field: one id, or several separated by commas
/// (the parts of an agent's message, sent in that order); `None` unless every one is a number.
pub fn outbound_ids(field: &str) -> Option<Vec<i64>> {
    field.split(',').map(|id| id.trim().parse().ok()).collect()
}

/// Time since `since` (zero if it is in the future).
fn elapsed_since(since: DateTime<Utc>) -> Duration {
    (Utc::now() - since).to_std().unwrap_or_default()
}

/// Stops a channel's sends for `policy.config_pause` and raises the alert: a configuration error
/// (expired token, permissions, locked account) needs an operator, not retries. `code`: Meta's
/// error code, `None` for a pause of our own (no token, or one that does not decrypt).
pub async fn pause_sends(
    pg: &PgPool,
    policy: &SendPolicy,
    channel_id: i64,
    phone_number_id: &str,
    code: Option<i64>,
    reason: &str,
) -> Result<(), Outcome> {
    let until = Utc::now() + chrono::Duration::from_std(policy.config_pause).unwrap_or_default();
    replies::pause_channel(pg, channel_id, until, code, reason)
        .await
        .map_err(db("pausing the channel"))?;
    metrics::counter!("wafleet_sender_alerts_total", "channel" => phone_number_id.to_string(), "kind" => "config").increment(1);
    tracing::error!(channel = %phone_number_id, code, reason, "channel sends paused: needs an operator");
    Ok(())
}

/// The sender's two writes per part, each run for many jobs at once (see [`crate::batch`]):
/// the claim right before a send and the acceptance right after.
#[derive(Clone)]
pub struct SendWrites {
    claims: Batcher<i64, Claim>,
    accepts: Batcher<Accepted, Acceptance>,
    /// Not a write, but read by every job: batched the same way.
    parts: Batcher<i64, Vec<Part>>,
}

impl SendWrites {
    pub fn start(pg: &PgPool) -> Self {
        Self {
            parts: Batcher::start("reply_parts", 256, pg.clone(), |conn, ids: &[i64]| {
                Box::pin(async move { replies::reply_parts_many(conn, ids).await })
            }),
            claims: Batcher::start("claims", 256, pg.clone(), |conn, ids: &[i64]| {
                Box::pin(async move { replies::claim_many(conn, ids).await })
            }),
            accepts: Batcher::start("accepts", 256, pg.clone(), |conn, accepted: &[Accepted]| {
                Box::pin(async move { record_accepted_many(conn, accepted).await })
            }),
        }
    }
}

pub struct SenderStage {
    pub writes: SendWrites,
    pub pg: PgPool,
    pub redis: crate::shared_redis::SharedRedis,
    pub keys: Keys,
    pub channels: ChannelCache,
    pub graph: GraphClient,
    pub limiter: RateLimiter,
    pub policy: Arc<SendPolicy>,
    /// Redacts the wording of templates the model reads.
    pub redactor: Arc<wafleet_core::pii::Redactor>,
    pub wordings: super::wording::Wordings,
}

fn db(doing: &'static str) -> impl Fn(sqlx::Error) -> Outcome {
    move |e| db_outcome(&e, doing)
}

impl Handler for SenderStage {
    async fn handle(&self, job: &Job) -> Outcome {
        match self.process(job).await {
            Ok(o) | Err(o) => o,
        }
    }
}

impl SenderStage {
    async fn process(&self, job: &Job) -> Result<Outcome, Outcome> {
        let parts = if let Some(ids) = job.field("outbound_id").and_then(outbound_ids) {
            replies::parts(&self.pg, &ids)
                .await
                .map_err(db("reading the parts"))?
        } else if let Some(message_id) = job.field("reply_to").and_then(|v| v.parse().ok()) {
            self.writes
                .parts
                .run(message_id)
                .await
                .map_err(|e| batch_outcome(&e, "reading the parts"))?
        } else {
            return Ok(Outcome::Dead {
                reason: "send job without outbound_id or reply_to".into(),
            });
        };
        let channel = self.channels.of_job(job).await?;
        let outcome = self.send_parts(job, &channel, &parts).await?;
        // An agent's part that ended failed in this run (or in an earlier one that stopped
        // before announcing it): dashboards hear of it once. Only when the job is finished: a
        // part the job will send again is not failed for good.
        let agents: Vec<i64> = parts
            .iter()
            .filter(|p| written_by_agent(&p.kind))
            .map(|p| p.id)
            .collect();
        if !agents.is_empty() && matches!(outcome, Outcome::Done | Outcome::Dead { .. }) {
            announce_failures(&self.pg, &self.redis, &self.keys, &agents, None).await?;
            // A part announced failed before that this job sent after all (an operator's
            // replay): dashboards hear it went out, once.
            announce_recoveries(&self.pg, &self.redis, &self.keys, &agents, None).await?;
        }
        Ok(outcome)
    }

    /// Sends the parts of a job in order, until one stops the rest.
    async fn send_parts(
        &self,
        job: &Job,
        channel: &ChannelSettings,
        parts: &[Part],
    ) -> Result<Outcome, Outcome> {
        for (i, part) in parts.iter().enumerate() {
            match self.send_part(job, channel, part).await? {
                Step::Next => {}
                Step::StopRest(reason) => {
                    for rest in &parts[i + 1..] {
                        replies::mark_failed(&self.pg, rest.id, None, &reason)
                            .await
                            .map_err(db("failing a part"))?;
                    }
                    return Ok(Outcome::Done);
                }
                Step::Return(outcome) => return Ok(outcome),
            }
        }
        Ok(Outcome::Done)
    }

    async fn send_part(
        &self,
        job: &Job,
        channel: &ChannelSettings,
        part: &Part,
    ) -> Result<Step, Outcome> {
        match part.state.as_str() {
            "pending" => {}
            "sending" => {
                // Meta accepted it, but recording that failed: record it now, never resend.
                if let Some(accepted) = self.unrecorded_wamid(job, part).await? {
                    return self
                        .record_acceptance(job, channel, part, accepted, Stashed::Yes)
                        .await;
                }
                let age = part.sending_at.map_or(Duration::MAX, elapsed_since);
                if age < self.policy.ambiguous_resend_after {
                    return Ok(Step::Return(Outcome::Defer {
                        after: self.policy.ambiguous_check,
                        reason: "waiting for a status to confirm an ambiguous send".into(),
                    }));
                }
                // Bounded like any retry: `attempts` counts the sends, the unanswered one
                // included, so its zero-based index is attempts - 1. Past the bounds the part
                // fails rather than risk yet another copy reaching the customer.
                let unanswered_try = part.attempts.max(1) as u32 - 1;
                if !self.policy.resends(
                    ErrorClass::Transient,
                    None,
                    unanswered_try,
                    part.retries_since,
                ) {
                    let reason = format!(
                        "{} {} sends and no status came for them",
                        replies::UNANSWERED,
                        part.attempts
                    );
                    metrics::counter!("wafleet_sender_ambiguous_given_up_total").increment(1);
                    tracing::error!(outbound_id = part.id, attempts = part.attempts, "{reason}");
                    return self.give_up(part, None, reason).await;
                }
                // Meta posts a send's statuses within seconds, but the status stage may not
                // have read them yet (stopped, or behind after an outage): while a status
                // queued within the resend delay of the send still waits, the send is not
                // taken as lost. Before, a status stage more than the delay behind let every
                // ambiguous send of the time reach the customer twice.
                if let Some(sent_at) = part.sending_at
                    && let Some(oldest) = self.oldest_queued_status_ms().await?
                    && oldest
                        < sent_at.timestamp_millis()
                            + i64::try_from(self.policy.ambiguous_resend_after.as_millis())
                                .unwrap_or(i64::MAX / 2)
                {
                    metrics::counter!("wafleet_sender_ambiguous_waits_total").increment(1);
                    return Ok(Step::Return(Outcome::Defer {
                        after: self.policy.ambiguous_check,
                        reason: "statuses queued since an ambiguous send are not read yet".into(),
                    }));
                }
                metrics::counter!("wafleet_sender_ambiguous_resends_total").increment(1);
                tracing::warn!(
                    outbound_id = part.id,
                    "no status confirmed an ambiguous send; sending again"
                );
                replies::unclaim(&self.pg, part.id, Attempt::Counted)
                    .await
                    .map_err(db("reopening the part"))?;
            }
            "failed" => {
                let code = part.error_code.map(i64::from);
                // Meta failed the message after accepting it, with a code worth another try
                // (the status stage queued this job): back to pending, sent below. Bounded like
                // any retry (`attempts` counts the sends, the last one failed); a part the
                // sender itself gave up on is past those bounds.
                let failed_try = part.attempts.max(1) as u32 - 1;
                let class = code.map(classify_status_error);
                if let Some(class) = class
                    && let Some(c) = code
                    && self
                        .policy
                        .resends(class, code, failed_try, part.retries_since)
                {
                    // A throttle in a `failed` status slows down what a synchronous one does
                    // (the recipient's 4^X s, the number…) before the resend. Pushed back before
                    // the part is reopened: when Redis will not take it, the part stays failed
                    // and the job's next run decides again, where a reopened part would go out
                    // on that run without the wait.
                    let throttled = match class {
                        ErrorClass::Throttled { scope } => {
                            Some(self.push_back(channel, part, scope, c).await?)
                        }
                        _ => None,
                    };
                    replies::reopen_failed(&self.pg, part.id, class == ErrorClass::Config)
                        .await
                        .map_err(db("reopening the failed part"))?;
                    tracing::warn!(
                        outbound_id = part.id,
                        code,
                        "Meta failed an accepted message; sending it again"
                    );
                    if let Some(after) = throttled {
                        return Ok(Step::Return(Outcome::Defer {
                            after,
                            reason: format!("throttled by Meta ({c}) in a failed status"),
                        }));
                    }
                    // After the backoff a synchronous transient error waits, through the
                    // delayed set: sent again at once, it would likely meet the same trouble.
                    if class == ErrorClass::Transient {
                        return Ok(Step::Return(Outcome::Defer {
                            after: self.policy.backoff.next_delay(failed_try, rand::random()),
                            reason: format!("transient Graph error {c} in a failed status"),
                        }));
                    }
                    // The status stage paused the channel before it queued this job, and the
                    // settings cached here may be older than the pause: read afresh.
                    if class == ErrorClass::Config {
                        self.channels.forget(&channel.phone_number_id);
                        let fresh = self
                            .channels
                            .get(&channel.phone_number_id)
                            .await
                            .map_err(db("reading the channel"))?;
                        if let Some(wait) = fresh.and_then(|c| self.paused(&c)) {
                            return Ok(Step::Return(wait));
                        }
                    }
                } else {
                    // A redelivery after the run that failed this part stopped early (crash,
                    // error): the parts after it must not go out without it, and a failure that
                    // hands the conversation over must have done so.
                    if code == Some(RE_ENGAGEMENT) {
                        self.hand_over(job, part, "re_engagement").await?;
                    } else if part.fail_reason.as_deref() == Some(WINDOW_CLOSED) {
                        self.hand_over(job, part, "window_closed").await?;
                    }
                    return Ok(Step::StopRest(format!(
                        "{EARLIER_PART_FAILED} ({})",
                        code.map_or_else(|| "no code".to_string(), |c| c.to_string())
                    )));
                }
            }
            // accepted, suppressed, shadow: nothing to do.
            _ => return Ok(Step::Next),
        }
        if let Some(wait) = self.paused(channel) {
            return Ok(Step::Return(wait));
        }
        // First: a conversation with neither identifier is an erased customer's (a part retried,
        // reopened or reconciled after the erasure), which is neither sent, nor read as a
        // template, nor handed to a human for a closed window.
        let to = match (&part.wa_id, &part.user_id) {
            (Some(phone), _) => Recipient::Phone(phone),
            (None, Some(user)) => Recipient::UserId(user),
            (None, None) => {
                // Or a former holder's conversation, set aside when their number passed to
                // someone else: whoever has the number now must not get it.
                let moved =
                    crate::store::conversations::number_moved(&self.pg, part.conversation_id)
                        .await
                        .map_err(db("reading whether the number moved on"))?;
                let (reason, result) = if moved {
                    (crate::store::conversations::NUMBER_MOVED, "number_moved")
                } else {
                    (CUSTOMER_ERASED, "erased")
                };
                replies::mark_failed(&self.pg, part.id, None, reason)
                    .await
                    .map_err(db("failing a part"))?;
                metrics::counter!("wafleet_sender_sends_total", "result" => result).increment(1);
                return Ok(Step::StopRest(reason.into()));
            }
        };
        // An agent's template: the one message Meta takes outside the 24-hour window.
        let template = if part.kind == "template" {
            match serde_json::from_str::<serde_json::Value>(&part.body) {
                Ok(t) => Some(t),
                Err(e) => {
                    let reason = format!("the template is not valid JSON: {e}");
                    replies::mark_failed(&self.pg, part.id, None, &reason)
                        .await
                        .map_err(db("failing a part"))?;
                    return Ok(Step::StopRest(reason));
                }
            }
        } else {
            None
        };
        if let Some(t) = &template {
            self.wordings
                .fill(&self.pg, &self.graph, &self.redactor, channel, part, t)
                .await;
        }
        // An agent's file, buttons or list: sent as recorded, within the window like text.
        if let Some(message) = &part.payload
            && crate::graph::message_fields(message).is_none()
        {
            let reason = "the part's message is not a Graph API message (type and object)";
            replies::mark_failed(&self.pg, part.id, None, reason)
                .await
                .map_err(db("failing a part"))?;
            return Ok(Step::StopRest(reason.into()));
        }
        if template.is_none() && !window_open(part.last_customer_message_at, Utc::now()) {
            replies::mark_failed(&self.pg, part.id, None, WINDOW_CLOSED)
                .await
                .map_err(db("failing a part"))?;
            self.hand_over(job, part, "window_closed").await?;
            metrics::counter!("wafleet_sender_sends_total", "result" => "window_closed")
                .increment(1);
            return Ok(Step::StopRest("the 24-hour window is closed".into()));
        }
        let recipient_key = match to {
            Recipient::Phone(p) | Recipient::UserId(p) => p.to_string(),
        };

        // The fleet-wide budgets: the business number's throughput and the customer's pair rate.
        // A slot within `max_inline_wait` (well inside the job deadline) is taken and waited
        // for here; a later one, or a hold, parks the job instead, which frees the lane's slot.
        let mut waited = Duration::ZERO;
        loop {
            let mut con = self.redis.get().await.map_err(redis_down)?;
            let decision = self
                .limiter
                .acquire(
                    &mut con,
                    &channel.phone_number_id,
                    &recipient_key,
                    Budget {
                        per_second: f64::from(channel.send_rate_per_sec),
                        burst: 1,
                    },
                    Budget {
                        per_second: PAIR_RATE_PER_SEC,
                        burst: channel.pair_burst,
                    },
                    self.policy.max_inline_wait.saturating_sub(waited),
                )
                .await
                .map_err(redis_down)?;
            match decision {
                Decision::Go => break,
                // Our slot: nobody else takes it meanwhile.
                Decision::Scheduled(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Decision::Wait(d) if waited + d <= self.policy.max_inline_wait => {
                    waited += d;
                    tokio::time::sleep(d).await;
                }
                Decision::Wait(_) if self.too_old(part) => {
                    let reason = format!(
                        "{GAVE_UP}: held back by the rate limits for longer than {:?}",
                        self.policy.backoff.max_age
                    );
                    return self.give_up(part, None, reason).await;
                }
                Decision::Wait(d) => {
                    metrics::counter!("wafleet_sender_deferred_total", "reason" => "rate_limit")
                        .increment(1);
                    return Ok(Step::Return(Outcome::Defer {
                        after: d,
                        reason: "rate limit".into(),
                    }));
                }
            }
        }

        let send_no = match self
            .writes
            .claims
            .run(part.id)
            .await
            .map_err(|e| batch_outcome(&e, "claiming the part"))?
        {
            Claim::Go { send_no } => send_no,
            Claim::Suppressed => {
                metrics::counter!("wafleet_sender_sends_total", "result" => "suppressed")
                    .increment(1);
                tracing::info!(
                    outbound_id = part.id,
                    "a human owns the conversation; part suppressed"
                );
                return Ok(Step::Next);
            }
            Claim::NotPending(_) => return Ok(Step::Next),
        };
        let Some(token) = &channel.access_token else {
            replies::unclaim(&self.pg, part.id, Attempt::GivenBack)
                .await
                .map_err(db("reopening the part"))?;
            let reason = if channel.access_token_unreadable {
                "the access token does not decrypt with WAFLEET_ENCRYPTION_KEY"
            } else {
                "no access token configured"
            };
            return self.pause(channel, None, reason).await;
        };
        // The send the claim numbered (not `part`'s count plus one: see `Claim::Go`).
        let callback = self.channels.callback_tags().encode(part.id, send_no);
        let result = self
            .graph
            .send_text(&OutgoingText {
                phone_number_id: &channel.phone_number_id,
                token: token.expose(),
                to,
                body: &part.body,
                reply_to: if part.part_no == 0 {
                    part.inbound_wamid.as_deref()
                } else {
                    None
                },
                callback_data: Some(&callback),
                preview_url: false,
                template: template.as_ref(),
                message: part.payload.as_ref(),
            })
            .await;
        match result {
            SendResult::Accepted { wamid, wa_id } => {
                metrics::counter!("wafleet_sender_sends_total", "result" => "accepted")
                    .increment(1);
                let mut accepted = Accepted::new(part.id, wamid);
                // The send just claimed.
                accepted.send_no = Some(send_no);
                // Meta names the customer by the other notation of the number dialled (a
                // Mexican or Brazilian mobile): their answers will come from that wa_id, and
                // must find this conversation. Only that notation: a number taken over by
                // another form would no longer be found by the number the business has (its
                // retried request, an erasure, the allowlist all look for the number's forms).
                if let (Recipient::Phone(dialled), Some(wa_id)) = (to, wa_id)
                    && wafleet_core::phone::other_form(dialled.trim_start_matches('+'))
                        .is_some_and(|other| other == wa_id)
                {
                    metrics::counter!("wafleet_sender_customer_renamed_total").increment(1);
                    tracing::info!(
                        outbound_id = part.id,
                        "Meta names the customer by another notation of the number dialled; \
                         the conversation takes it"
                    );
                    accepted.adopt_wa_id = Some(wa_id);
                }
                self.record_acceptance(job, channel, part, accepted, Stashed::No)
                    .await
            }
            SendResult::NotSent { reason } => {
                // The request never left: no attempt is used up, and the job waits for the Graph
                // API like for any dependency, but not past the age bound of a part's retries
                // (a reply hours late confuses more than it helps; the dead letter can be
                // replayed).
                if self.too_old(part) {
                    let reason = format!(
                        "{GAVE_UP}: Graph API unreachable for longer than {:?} ({reason})",
                        self.policy.backoff.max_age
                    );
                    return self.give_up(part, None, reason).await;
                }
                replies::unclaim(&self.pg, part.id, Attempt::GivenBack)
                    .await
                    .map_err(db("reopening the part"))?;
                Ok(Step::Return(Outcome::Unavailable {
                    reason: format!("Graph API unreachable: {reason}"),
                }))
            }
            SendResult::Ambiguous { reason } => {
                metrics::counter!("wafleet_sender_sends_total", "result" => "ambiguous")
                    .increment(1);
                tracing::warn!(
                    outbound_id = part.id,
                    reason,
                    "ambiguous send; waiting for a status before any resend"
                );
                Ok(Step::Return(Outcome::Defer {
                    after: self.policy.ambiguous_check,
                    reason,
                }))
            }
            SendResult::Rejected { error, class, .. } => {
                self.rejected(job, channel, part, error.code, &error.message, class)
                    .await
            }
        }
    }

    /// The wait of a job whose channel's sends are paused, looked at again every
    /// [`SendPolicy::paused_recheck`]; `None` when they are not.
    fn paused(&self, channel: &ChannelSettings) -> Option<Outcome> {
        let until = channel.sends_paused_until.filter(|u| *u > Utc::now())?;
        Some(Outcome::Defer {
            after: (until - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(self.policy.paused_recheck)
                .max(Duration::from_millis(100)),
            reason: "channel sends are paused".into(),
        })
    }

    /// Records Meta's acceptance of a part. If Postgres will not take it, the wamid is kept in
    /// Redis first, so the job's next run records it from there: the part stays `sending`, and
    /// without the wamid a run after `ambiguous_resend_after` would send it a second time.
    ///
    /// Recording (or keeping) runs in a task of its own that the job awaits: a job cut off by
    /// its deadline meanwhile (a slow Postgres, a long reply) drops only the waiting, never the
    /// record of a message Meta already took.
    async fn record_acceptance(
        &self,
        job: &Job,
        channel: &ChannelSettings,
        part: &Part,
        accepted: Accepted,
        stashed: Stashed,
    ) -> Result<Step, Outcome> {
        let key = self.keys.unrecorded_wamid(job.partition, part.id);
        // The wamid, the wa_id to adopt (`-`: none) and the number of the send Meta accepted:
        // a stash left from an earlier send of a part reopened since must not be taken for a
        // later one's (see `unrecorded_wamid`). Only a stash kept before sends were numbered
        // carries none: it is of the send the part holds.
        let send_no = accepted.send_no.unwrap_or(part.send_no());
        let stash = format!(
            "{} {} {send_no}",
            accepted.wamid,
            accepted.adopt_wa_id.as_deref().unwrap_or("-")
        );
        let (accepts, redis, part_id) = (self.writes.accepts.clone(), self.redis.clone(), part.id);
        let kept_key = key.clone();
        let recording = tokio::spawn(async move {
            match accepts.run(accepted).await {
                Ok(a) => Ok(a),
                Err(e) => {
                    let outcome = batch_outcome(&e, "recording the send");
                    let mut con = redis.get().await.map_err(redis_down)?;
                    let _: () = con
                        .set_ex(&kept_key, &stash, UNRECORDED_WAMID_TTL.as_secs())
                        .await
                        .map_err(redis_down)?;
                    tracing::warn!(
                        outbound_id = part_id,
                        "accepted send not recorded yet; its wamid is kept in Redis"
                    );
                    Err(outcome)
                }
            }
        });
        let acceptance = match recording.await {
            Ok(recorded) => recorded?,
            Err(e) => {
                // Only a panic or a runtime shutting down ends the task unfinished.
                return Err(Outcome::Unavailable {
                    reason: format!("recording the send stopped: {e}"),
                });
            }
        };
        // Only a wamid read back from Redis has a key to clear (a leftover only costs its TTL):
        // a fresh acceptance, the common case, costs no Redis round trip.
        if stashed == Stashed::Yes
            && let Ok(mut con) = self.redis.get().await
        {
            let _: Result<(), _> = con.del(&key).await;
        }
        match acceptance {
            Acceptance::Recorded => Ok(Step::Next),
            Acceptance::SecondCopy => {
                super::second_copy(Some(part.id));
                Ok(Step::Next)
            }
            Acceptance::FailedFirst { code } => {
                self.failed_before_recorded(job, channel, part, code.map(i64::from))
                    .await
            }
        }
    }

    /// When (Unix ms) the oldest status still in any status stream was queued. An entry leaves
    /// its stream only once the status stage is done with it (or parks it for a later retry,
    /// which this does not see; an outage keeps jobs in place), so a status Meta posted for a
    /// send has either been applied or is, almost always, still there. One `XRANGE` per stream
    /// (one key per command, as a Redis Cluster needs), all in one round trip; this runs only
    /// when an ambiguous send is due for a resend.
    async fn oldest_queued_status_ms(&self) -> Result<Option<i64>, Outcome> {
        let mut pipe = redis::pipe();
        for p in 0..self.keys.partitions() {
            pipe.cmd("XRANGE")
                .arg(self.keys.status(p))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1);
        }
        let mut con = self.redis.get().await.map_err(redis_down)?;
        let firsts: Vec<redis::streams::StreamRangeReply> =
            pipe.query_async(&mut con).await.map_err(redis_down)?;
        // An entry id is `<Unix ms>-<sequence>`.
        Ok(firsts
            .iter()
            .filter_map(|r| r.ids.first())
            .filter_map(|e| e.id.split('-').next()?.parse::<i64>().ok())
            .min())
    }

    /// The acceptance kept by [`Self::record_acceptance`] for a part still `sending`, if any,
    /// and only when it is of the send the part holds now: a wamid kept for an earlier send of a
    /// part a failed status reopened since is that failed message's, and recorded for the resend
    /// it would mark a message that never left as accepted. Such a stash is dropped. (One kept
    /// before sends were numbered in it, `wamid[ wa_id]`, is taken as before.)
    async fn unrecorded_wamid(&self, job: &Job, part: &Part) -> Result<Option<Accepted>, Outcome> {
        let key = self.keys.unrecorded_wamid(job.partition, part.id);
        let mut con = self.redis.get().await.map_err(redis_down)?;
        let stash: Option<String> = con.get(&key).await.map_err(redis_down)?;
        let Some(stash) = stash else {
            return Ok(None);
        };
        let mut fields = stash.split(' ');
        let mut accepted = Accepted::new(part.id, fields.next().unwrap_or_default());
        accepted.adopt_wa_id = fields.next().filter(|w| *w != "-").map(str::to_string);
        let send_no = fields.next().map(str::parse::<i32>);
        let holds = part.send_no();
        if send_no.as_ref().is_some_and(|n| *n != Ok(holds)) {
            tracing::warn!(
                outbound_id = part.id,
                "a kept wamid is of an earlier send of the part; dropped"
            );
            let _: () = con.del(&key).await.map_err(redis_down)?;
            return Ok(None);
        }
        accepted.send_no = send_no.map(|_| holds);
        Ok(Some(accepted))
    }

    /// Meta's `failed` status for the part came in before its acceptance was recorded (the
    /// status stage could not find the part then): the same decision as for a `failed` status
    /// that finds it (see the status stage), taken here.
    async fn failed_before_recorded(
        &self,
        job: &Job,
        channel: &ChannelSettings,
        part: &Part,
        code: Option<i64>,
    ) -> Result<Step, Outcome> {
        let Some(code) = code else {
            return Ok(Step::StopRest(format!("{EARLIER_PART_FAILED} (no code)")));
        };
        let class = classify_status_error(code);
        let reason = format!("Meta failed the message it had accepted ({code})");
        match class {
            ErrorClass::ReEngagement => {
                self.hand_over(job, part, "re_engagement").await?;
                Ok(Step::StopRest(reason))
            }
            ErrorClass::Permanent => Ok(Step::StopRest(reason)),
            ErrorClass::Throttled { .. } | ErrorClass::Transient | ErrorClass::Config => {
                // `attempts` was read before this send: the zero-based index of the try that failed.
                let attempt = part.attempts.max(0) as u32;
                let resend = self
                    .policy
                    .resends(class, Some(code), attempt, part.retries_since);
                if class == ErrorClass::Config {
                    // Paused and alerted as for the code answered to a send, whether or not this
                    // part goes again: every later send of the channel would meet it.
                    let paused = self
                        .pause(
                            channel,
                            Some(code),
                            &format!("Graph configuration error {code} in a failed status"),
                        )
                        .await?;
                    if !resend {
                        return Ok(Step::Return(Outcome::Dead { reason }));
                    }
                    self.reopen_to_resend(part, class).await?;
                    return Ok(paused);
                }
                if !resend {
                    return Ok(Step::Return(Outcome::Dead { reason }));
                }
                // Deferred, not a worker retry: the part's own bounds (just checked) end it. A
                // throttle is pushed back before the part is reopened (see the `failed` state in
                // `send_part`).
                let after = match class {
                    ErrorClass::Throttled { scope } => {
                        self.push_back(channel, part, scope, code).await?
                    }
                    _ => self.policy.backoff.next_delay(attempt, rand::random()),
                };
                self.reopen_to_resend(part, class).await?;
                Ok(Step::Return(Outcome::Defer { after, reason }))
            }
        }
    }

    /// Puts a part Meta failed after accepting it back to `pending`, to be sent again.
    async fn reopen_to_resend(&self, part: &Part, class: ErrorClass) -> Result<(), Outcome> {
        replies::reopen_failed(&self.pg, part.id, class == ErrorClass::Config)
            .await
            .map_err(db("reopening the failed part"))?;
        metrics::counter!("wafleet_failed_statuses_total", "class" => class.label(), "action" => "resend").increment(1);
        Ok(())
    }

    /// Whether a part is past the age bound of its retries (`WAFLEET_SEND_MAX_AGE_MS`): then it is
    /// given up whatever holds it back (throttling, the rate limits, an unreachable Graph API),
    /// as one that keeps failing is; a configuration pause alone keeps it for the operator's fix.
    fn too_old(&self, part: &Part) -> bool {
        elapsed_since(part.retries_since) >= self.policy.backoff.max_age
    }

    /// Past a part's retry bounds: the part fails with the reason, and the job goes to the
    /// dead-letter stream (an operator's replay sends the part again).
    async fn give_up(
        &self,
        part: &Part,
        code: Option<i64>,
        reason: String,
    ) -> Result<Step, Outcome> {
        replies::mark_failed(&self.pg, part.id, code, &reason)
            .await
            .map_err(db("failing a part"))?;
        Ok(Step::Return(Outcome::Dead { reason }))
    }

    /// A send Meta refused with `code`. `message` is Meta's own words, kept on the part's row
    /// alone: never in a reason that is logged, kept in a dead letter or on the channel, as it can
    /// quote what the request carried (190's "Malformed access token <the token>").
    async fn rejected(
        &self,
        job: &Job,
        channel: &ChannelSettings,
        part: &Part,
        code: i64,
        message: &str,
        class: ErrorClass,
    ) -> Result<Step, Outcome> {
        metrics::counter!("wafleet_sender_sends_total", "result" => class.label()).increment(1);
        let reopen = || async {
            replies::unclaim(&self.pg, part.id, Attempt::Counted)
                .await
                .map_err(db("reopening the part"))
        };
        // Held back, not failed: the attempt is given back (the pair limit's 4^X counts the
        // recipient's failures in Redis, not the part's attempts).
        let hold = || async {
            replies::unclaim(&self.pg, part.id, Attempt::GivenBack)
                .await
                .map_err(db("reopening the part"))
        };
        match class {
            ErrorClass::Throttled { scope } => {
                hold().await?;
                // A push-back Redis refused must not end the job (its next run would find the
                // part pending and nothing holding it back, and send it at once into the same
                // throttle): the part waits itself.
                let pushed = self.push_back(channel, part, scope, code).await;
                let after = pushed.unwrap_or_else(|_| {
                    tracing::warn!(
                        outbound_id = part.id,
                        code,
                        "the throttle's push-back was not recorded; the part waits {:?} itself",
                        UNRECORDED_PUSH_BACK_WAIT
                    );
                    UNRECORDED_PUSH_BACK_WAIT
                });
                if self.too_old(part) {
                    let reason = format!(
                        "{GAVE_UP}: throttled by Meta ({code}) past {:?}",
                        self.policy.backoff.max_age
                    );
                    return self.give_up(part, Some(code), reason).await;
                }
                Ok(Step::Return(Outcome::Defer {
                    after,
                    reason: format!("throttled by Meta ({code})"),
                }))
            }
            ErrorClass::Transient => {
                reopen().await?;
                // Zero-based index of the try that just failed (`attempts` was read before it).
                let attempt = part.attempts.max(0) as u32;
                if self
                    .policy
                    .resends(class, Some(code), attempt, part.retries_since)
                {
                    let after = self.policy.backoff.next_delay(attempt, rand::random());
                    // Deferred, not a worker retry: this part's attempts and age bound its
                    // resends (just checked). Counted again per job, the parts of one reply would
                    // share the worker's `WAFLEET_MAX_ATTEMPTS`, and the job would be
                    // dead-lettered with a part back at `pending`, never sent nor failed.
                    Ok(Step::Return(Outcome::Defer {
                        after,
                        reason: format!("transient Graph error {code}"),
                    }))
                } else {
                    let reason = format!("{GAVE_UP} on transient Graph error {code}");
                    self.give_up(part, Some(code), reason).await
                }
            }
            ErrorClass::Permanent => {
                replies::mark_failed(&self.pg, part.id, Some(code), message)
                    .await
                    .map_err(db("failing a part"))?;
                tracing::warn!(
                    outbound_id = part.id,
                    code,
                    "Meta refused the message for good"
                );
                // A code Meta's table does not list (or no Graph error at all): classed by its
                // HTTP status alone, so it may be a new account or number problem that fails
                // every reply. Someone must look (reference C.2).
                if !is_known_code(code) {
                    metrics::counter!("wafleet_sender_alerts_total", "channel" => channel.phone_number_id.clone(), "kind" => "unknown_code").increment(1);
                    tracing::error!(channel = %channel.phone_number_id, code, "Meta refused a send with a code its table does not list");
                }
                Ok(Step::StopRest(format!("{EARLIER_PART_FAILED} ({code})")))
            }
            ErrorClass::ReEngagement => {
                replies::mark_failed(&self.pg, part.id, Some(code), message)
                    .await
                    .map_err(db("failing a part"))?;
                self.hand_over(job, part, "re_engagement").await?;
                Ok(Step::StopRest(
                    "the 24-hour window is closed (131047)".into(),
                ))
            }
            ErrorClass::Config => {
                hold().await?;
                self.pause(
                    channel,
                    Some(code),
                    &format!("Graph configuration error {code}"),
                )
                .await
            }
        }
    }

    /// Pushes the shared limiter back after Meta's throttle `code` (of `scope`), as a synchronous
    /// answer or a `failed` status: the recipient's 4^X s hold (131056), or a pause of the number,
    /// the business account's or the app's numbers. Returns how long the part should wait.
    async fn push_back(
        &self,
        channel: &ChannelSettings,
        part: &Part,
        scope: ThrottleScope,
        code: i64,
    ) -> Result<Duration, Outcome> {
        let mut con = self.redis.get().await.map_err(redis_down)?;
        Ok(match scope {
            ThrottleScope::Recipient => {
                // The recipient's failures so far: 1 s on the first, then 4 s, 16 s…
                let recipient = part
                    .wa_id
                    .as_deref()
                    .or(part.user_id.as_deref())
                    .unwrap_or("-");
                self.limiter
                    .pair_rate_failure(&mut con, &channel.phone_number_id, recipient)
                    .await
                    .map_err(redis_down)?
            }
            _ => {
                // A short, jittered pause smooths the number's rate (130429). The others
                // hold for a minute: 80007 every number of the business account, 4 every
                // number of the Meta app (the channels its app secrets sign), 131048 and
                // 131057 (maintenance, up to a minute) the number.
                let (d, numbers) = match scope {
                    ThrottleScope::Number => (
                        Duration::from_millis(500 + rand::random::<u64>() % 1000),
                        vec![channel.phone_number_id.clone()],
                    ),
                    ThrottleScope::Waba => (
                        Duration::from_secs(60),
                        crate::store::channels::waba_numbers(&self.pg, channel.id)
                            .await
                            .map_err(db("reading the account's numbers"))?,
                    ),
                    ThrottleScope::App => (
                        Duration::from_secs(60),
                        self.channels.app_numbers(channel.id).await.map_err(|e| {
                            Outcome::Unavailable {
                                reason: format!("reading the app's numbers: {e:#}"),
                            }
                        })?,
                    ),
                    _ => (
                        Duration::from_secs(60),
                        vec![channel.phone_number_id.clone()],
                    ),
                };
                if scope == ThrottleScope::Spam {
                    // 131048: Meta thinks the number spams; its quality needs a person.
                    metrics::counter!("wafleet_sender_alerts_total", "channel" => channel.phone_number_id.clone(), "kind" => "spam_limit").increment(1);
                    tracing::error!(channel = %channel.phone_number_id, code, "spam rate limit hit: check the number's quality rating");
                }
                for number in &numbers {
                    self.limiter
                        .pause_number(&mut con, number, d)
                        .await
                        .map_err(redis_down)?;
                }
                d
            }
        })
    }

    /// A configuration problem needs an operator: pause the channel's sends and alert.
    async fn pause(
        &self,
        channel: &ChannelSettings,
        code: Option<i64>,
        reason: &str,
    ) -> Result<Step, Outcome> {
        pause_sends(
            &self.pg,
            &self.policy,
            channel.id,
            &channel.phone_number_id,
            code,
            reason,
        )
        .await?;
        self.channels.forget(&channel.phone_number_id);
        Ok(Step::Return(Outcome::Defer {
            after: self.policy.config_pause.min(self.policy.paused_recheck),
            reason: reason.to_string(),
        }))
    }

    /// Hands the conversation of a part that cannot reach the customer to a human. Not for an
    /// agent's part: a human had the conversation when it was written, and nothing ties a
    /// handover to its failure (it answers no customer message), so a later run would take back
    /// a conversation the agent has since released.
    async fn hand_over(&self, job: &Job, part: &Part, reason: &str) -> Result<(), Outcome> {
        if written_by_agent(&part.kind) {
            return Ok(());
        }
        let pnid = job.conv.split(':').next();
        hand_over_and_publish(
            &self.pg,
            &self.redis,
            &self.keys,
            part.conversation_id,
            reason,
            part.reply_to,
            pnid,
        )
        .await?;
        Ok(())
    }
}

/// Whether a wamid being recorded was read back from Redis ([`SenderStage::record_acceptance`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stashed {
    Yes,
    No,
}

/// What to do after one part.
enum Step {
    Next,
    /// This part ended the reply (failed for good): mark the later parts failed with the reason.
    StopRest(String),
    Return(Outcome),
}

#[cfg(test)]
mod tests {
    use super::{ErrorClass, SendPolicy, Utc, outbound_ids};

    #[test]
    fn code_1_is_sent_again_once_wherever_it_is_reported() {
        let policy = SendPolicy::default();
        let now = Utc::now();
        let transient = ErrorClass::Transient;
        // The first try failed with 1: one more; the second too: no more (reference C.2).
        assert!(policy.resends(transient, Some(1), 0, now));
        assert!(!policy.resends(transient, Some(1), 1, now));
        // Other transient codes, and a send nobody answered, keep the policy's bounds.
        assert!(policy.resends(transient, Some(131000), 1, now));
        assert!(policy.resends(transient, None, 1, now));
        assert!(!policy.resends(ErrorClass::Permanent, Some(131026), 0, now));
    }

    #[test]
    fn a_send_job_names_one_part_or_several_in_order() {
        assert_eq!(outbound_ids("12"), Some(vec![12]));
        assert_eq!(outbound_ids("12,9,30"), Some(vec![12, 9, 30]));
        assert_eq!(outbound_ids(""), None);
        assert_eq!(outbound_ids("12,x"), None);
        assert_eq!(outbound_ids("12,"), None);
    }
}
