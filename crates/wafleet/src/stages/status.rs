//! The status stage: Meta's delivery statuses move our outbound messages' delivery state
//! forward only (sent → delivered → read; `failed` is final and keeps Meta's code and title).
//! A status for a wamid we have not recorded yet is kept and applied when the sender records it;
//! one that echoes our tagged outbound id in `biz_opaque_callback_data` reconciles an ambiguous
//! send (callback data another app set is ignored). One that names another send of the part
//! than the one it holds (an ambiguous send's, after its resend was claimed) is never parked:
//! while the part holds no send Meta took it makes that send the part's, so nothing is sent
//! again; otherwise it is recorded among the part's other sends, a second copy counted.
//! A `failed` status is classified on its code like a synchronous Graph error (reference C.1:
//! one classifier for both paths): 131047 (the 24-hour window had closed) hands the conversation
//! to a human; a throttle or a transient error queues the part's send again, and the sender
//! sends it again within its attempt and age bounds (a transient error after the backoff a
//! synchronous one waits); a configuration error pauses the channel's sends and alerts as a
//! synchronous one does, also for a part past its bounds, and a part within them is sent again
//! once the pause ends; a permanent error stays as recorded.
//!
//! Meta sends three or four statuses per message we send, so they are written together: the
//! jobs in flight hand their statuses to one [`StatusWriter`] ([`crate::batch`]), which applies
//! whatever queued up while its previous statement ran in one statement (one round trip, one
//! commit). A job still waits for its own status's result before it is acknowledged.

use chrono::{TimeZone, Utc};
use sqlx::PgPool;
use wafleet_core::envelope::Update;

use super::sender::{SendPolicy, pause_sends};
use super::{
    announce_failures, announce_recoveries, batch_outcome, db_outcome, decode_update,
    hand_over_and_publish, redis_down,
};
use crate::batch::Batcher;
use crate::store::conversations::{self as store, Status, StatusApplied, delivery_rank};
use crate::store::replies as store_replies;
use crate::streams::Keys;
use crate::worker::{Handler, Job, Outcome, Source, Stage};
use wafleet_core::graph_error::{ErrorClass, classify_status_error};

pub const STAGE: Stage = Stage {
    name: "status",
    source: Source::Status,
};

/// Meta's code for a free-form message outside the customer-service window.
pub const RE_ENGAGEMENT: i64 = 131047;

pub struct StatusStage {
    pub pg: PgPool,
    pub redis: crate::shared_redis::SharedRedis,
    pub keys: Keys,
    pub writer: StatusWriter,
    /// Reads our outbound id back from `biz_opaque_callback_data`; other callback data is ignored.
    pub callbacks: crate::crypto::CallbackTags,
    /// The sender's bounds on sending a part again, and how long a configuration error pauses.
    pub send_policy: std::sync::Arc<SendPolicy>,
}

/// Applies the statuses of concurrent jobs together (see the module docs).
pub type StatusWriter = Batcher<Status, StatusApplied>;

/// Starts the status writer: up to 256 statuses per statement.
pub fn status_writer(pg: PgPool) -> StatusWriter {
    Batcher::start("statuses", 256, pg, |conn, statuses: &[Status]| {
        Box::pin(async move { store::apply_statuses(conn, statuses).await })
    })
}

/// A status value as logs may show it: Meta's are short lowercase words (`sent`, `deleted`…);
/// anything else is not logged as given, since it could hold whatever the body put there.
fn shown_status(status: &str) -> &str {
    let word = !status.is_empty()
        && status.len() <= 32
        && status.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if word { status } else { "(not a status word)" }
}

impl Handler for StatusStage {
    async fn handle(&self, job: &Job) -> Outcome {
        let update = match decode_update(job) {
            Ok(u) => u,
            Err(outcome) => return outcome,
        };
        let Update::Status(s) = update else {
            return Outcome::Dead {
                reason: "not a status".into(),
            };
        };
        let Some(rank) = delivery_rank(&s.status) else {
            tracing::info!(status = shown_status(&s.status), "status kind not tracked");
            metrics::counter!("wafleet_statuses_total", "result" => "untracked").increment(1);
            return Outcome::Done;
        };
        let callback = s
            .biz_opaque_callback_data
            .as_deref()
            .and_then(|v| self.callbacks.decode(v));
        let status = Status {
            wamid: s.wamid.clone(),
            status: s.status.clone(),
            rank,
            at: s.timestamp.and_then(|t| Utc.timestamp_opt(t, 0).single()),
            error_code: s.error_code,
            error_title: s.error_title.clone(),
            callback,
            recipient: s.recipient_id.clone(),
            phone_number_id: job.field("channel").map(str::to_string),
        };
        let applied = match self.writer.run(status).await {
            Ok(a) => a,
            Err(e) => return batch_outcome(&e, "applying a status"),
        };
        let label = match &applied {
            StatusApplied::Advanced { .. } => "advanced",
            StatusApplied::Stale => "stale",
            StatusApplied::Kept => "kept",
            StatusApplied::OtherSend { adopted: true, .. } => "earlier_send",
            StatusApplied::OtherSend { .. } => "other_send",
        };
        metrics::counter!("wafleet_statuses_total", "result" => label).increment(1);
        if let StatusApplied::OtherSend {
            by_agent,
            adopted,
            duplicate,
        } = applied
        {
            return self
                .other_send(callback, by_agent, adopted, duplicate, &s.status)
                .await;
        }
        // Not for an agent's message or template: a human had the conversation when it was
        // written, and may have released it since.
        if let (
            StatusApplied::Advanced {
                conversation_id,
                reply_to,
                by_agent: false,
            },
            Some(RE_ENGAGEMENT),
        ) = (&applied, s.error_code)
            && let Err(outcome) = self.re_engagement(*conversation_id, *reply_to, job).await
        {
            return outcome;
        }
        // A redelivery of a status the run before recorded (it stopped before handing over, or
        // before Redis took the handover's event): the handover is made now, or its event
        // published again, unless the conversation changed hands otherwise since.
        if applied == StatusApplied::Stale
            && s.status == "failed"
            && s.error_code == Some(RE_ENGAGEMENT)
        {
            let pending = store_replies::re_engagement_pending(&self.pg, &s.wamid)
                .await
                .map_err(|e| db_outcome(&e, "reading the failed part"));
            match pending {
                Ok(Some((conversation_id, reply_to))) => {
                    if let Err(outcome) = self.re_engagement(conversation_id, reply_to, job).await {
                        return outcome;
                    }
                }
                Ok(None) => {}
                Err(outcome) => return outcome,
            }
        }
        // An agent's part dashboards heard of as failed (a send given up as unanswered) that
        // this status shows Meta took: they hear it went out after all, once. Found by our
        // callback too: the part of an erased customer keeps only a digest of the wamid.
        if s.status != "failed"
            && matches!(applied, StatusApplied::Advanced { by_agent: true, .. })
            && let Err(outcome) = self
                .announce_recovered(callback.map(|c| c.outbound_id), Some(&s.wamid))
                .await
        {
            return outcome;
        }
        if s.status != "failed" || applied == StatusApplied::Kept {
            return Outcome::Done;
        }
        // Also when stale: a redelivery finds the part still failed if the run that applied the
        // status stopped before sending it again.
        let resending = match s.error_code {
            Some(code) => match self
                .failed_after_acceptance(
                    job,
                    &s.wamid,
                    code,
                    s.error_title.as_deref(),
                    matches!(applied, StatusApplied::Advanced { .. }),
                )
                .await
            {
                Ok(queued) => queued,
                Err(outcome) => return outcome,
            },
            None => false,
        };
        // An agent's message that stays failed: dashboards hear of it once (also when stale: the
        // run that applied the status may have stopped before Redis took the event). One sent
        // again is the sender's to announce if that send fails for good.
        if !resending
            && let Err(outcome) =
                announce_failures(&self.pg, &self.redis, &self.keys, &[], Some(&s.wamid)).await
        {
            return outcome;
        }
        Outcome::Done
    }
}

impl StatusStage {
    /// Dashboards hear that an agent's part they heard of as failed (a send given up as
    /// unanswered) went out after all, once: found by our callback's part (the part of an erased
    /// customer keeps only a digest of the wamid) or by `wamid`.
    async fn announce_recovered(
        &self,
        outbound_id: Option<i64>,
        wamid: Option<&str>,
    ) -> Result<(), Outcome> {
        let ids: Vec<i64> = outbound_id.into_iter().collect();
        announce_recoveries(&self.pg, &self.redis, &self.keys, &ids, wamid)
            .await
            .map(drop)
    }

    /// A status of another send of a part than the one it holds ([`StatusApplied::OtherSend`]):
    /// an ambiguous send's that came after its resend was claimed. Adopted, it made that send
    /// the part's, and nothing is sent again: an agent's part dashboards heard of as given up
    /// hears it went out after all. A duplicate (Meta took two sends of the part) is counted
    /// and logged, with ids only: the customer has two copies.
    async fn other_send(
        &self,
        callback: Option<crate::crypto::Callback>,
        by_agent: bool,
        adopted: bool,
        duplicate: bool,
        status: &str,
    ) -> Outcome {
        let outbound_id = callback.map(|c| c.outbound_id);
        if adopted {
            tracing::info!(
                outbound_id,
                status = shown_status(status),
                "a late status shows Meta took an earlier send of a part sent again; that send \
                 is the part's and the part is not sent again"
            );
            if by_agent && let Err(outcome) = self.announce_recovered(outbound_id, None).await {
                return outcome;
            }
        } else if duplicate {
            super::second_copy(outbound_id);
        }
        Outcome::Done
    }

    /// Meta failed a message it had accepted: send it again when the code says that can work.
    /// A configuration code pauses the channel and alerts as the same code answered to a send
    /// does, whether or not the part is sent again: every later send of the channel meets it.
    /// Only when this run recorded the failure (`first`): Meta redelivers webhooks, and one
    /// failure must not pause the channel again (past an operator's resume) nor page twice. A
    /// first run that stopped before pausing leaves it to the channel's next send, which meets
    /// the same code. Answers whether the part's send was queued again.
    async fn failed_after_acceptance(
        &self,
        job: &Job,
        wamid: &str,
        code: i64,
        title: Option<&str>,
        first: bool,
    ) -> Result<bool, Outcome> {
        let class = classify_status_error(code);
        if !class.worth_resending() {
            return Ok(false);
        }
        // `None`: resent already (the failed wamid is forgotten then), so a redelivery of an old
        // status neither pauses the channel again nor queues anything.
        let part = store_replies::failed_part(&self.pg, wamid)
            .await
            .map_err(|e| db_outcome(&e, "reading the failed part"))?;
        if class == ErrorClass::Config
            && first
            && let Some((_, channel_id, _, _)) = part
        {
            let reason = match title {
                Some(title) => {
                    format!("Graph configuration error {code}: {title} (in a failed status)")
                }
                None => format!("Graph configuration error {code} in a failed status"),
            };
            pause_sends(
                &self.pg,
                &self.send_policy,
                channel_id,
                job.field("channel").unwrap_or("-"),
                Some(code),
                &reason,
            )
            .await?;
        }
        // Judged as the sender does (`attempts` counts the sends, the last one failed).
        let retry = part.filter(|(_, _, attempts, retries_since)| {
            self.send_policy.resends(
                class,
                Some(code),
                (*attempts).max(1) as u32 - 1,
                *retries_since,
            )
        });
        let Some((outbound_id, _, _, _)) = retry else {
            // Resent already, or out of attempts or age: it stays failed.
            metrics::counter!("wafleet_failed_statuses_total", "class" => class.label(), "action" => "kept").increment(1);
            return Ok(false);
        };
        // The sender reopens the part and sends it again (within its bounds). A redelivery of
        // this status finds the part still failed if this job never got queued, and queues it.
        let mut con = self.redis.get().await.map_err(redis_down)?;
        let fields = [
            ("conv", job.conv.clone()),
            ("outbound_id", outbound_id.to_string()),
        ];
        let _: String =
            redis::AsyncCommands::xadd(&mut con, self.keys.outbox(job.partition), "*", &fields)
                .await
                .map_err(redis_down)?;
        metrics::counter!("wafleet_failed_statuses_total", "class" => class.label(), "action" => "resend").increment(1);
        tracing::info!(
            outbound_id,
            code,
            "Meta failed an accepted message; its send is queued again"
        );
        Ok(true)
    }

    /// Hands the conversation over for the customer's message the failed part answers, as the
    /// sender does for a synchronous 131047: keyed on that message, a run that comes back after
    /// an error (Redis refused the event) publishes the handover again instead of finding
    /// nothing to change.
    async fn re_engagement(
        &self,
        conversation_id: i64,
        reply_to: Option<i64>,
        job: &Job,
    ) -> Result<(), Outcome> {
        hand_over_and_publish(
            &self.pg,
            &self.redis,
            &self.keys,
            conversation_id,
            "re_engagement",
            reply_to,
            job.field("channel"),
        )
        .await?;
        Ok(())
    }
}

/// How long a status for a wamid we never recorded is kept by default
/// (`WAFLEET_EARLY_STATUS_TTL_SECS`).
pub const DEFAULT_EARLY_STATUS_TTL: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Deletes, once a minute, the statuses kept for a wamid that was never recorded after `ttl`.
///
/// Ours are recorded within moments of Meta's answer (and an ambiguous send is reconciled by its
/// callback id, never kept), so what stays is mostly the statuses of messages other apps sent from
/// the same number, which would otherwise pile up forever. `wafleet_early_statuses` shows how
/// many are kept, `wafleet_early_statuses_expired_total` how many went.
pub async fn expire_early_statuses(
    pg: PgPool,
    ttl: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let swept = async {
            let expired = sqlx::query(
                "DELETE FROM early_statuses
                  WHERE received_at < now() - make_interval(secs => $1::float8)",
            )
            .bind(ttl.as_secs_f64())
            .execute(&pg)
            .await?
            .rows_affected();
            let (kept,): (i64,) = sqlx::query_as("SELECT count(*) FROM early_statuses")
                .fetch_one(&pg)
                .await?;
            Ok::<_, sqlx::Error>((expired, kept))
        };
        match swept.await {
            Ok((expired, kept)) => {
                if expired > 0 {
                    tracing::info!(expired, kept, "early statuses expired");
                }
                metrics::counter!("wafleet_early_statuses_expired_total").increment(expired);
                metrics::gauge!("wafleet_early_statuses").set(kept as f64);
            }
            Err(e) => {
                tracing::warn!(error = %e, "expiring early statuses failed; next try in a minute")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shown_status;

    #[test]
    fn an_untracked_status_is_logged_only_when_it_is_a_word() {
        assert_eq!(shown_status("deleted"), "deleted");
        assert_eq!(shown_status("warning_sent"), "warning_sent");
        for odd in ["pomelo-4915112345678", "", "Read", &"x".repeat(33), "sent "] {
            assert_eq!(shown_status(odd), "(not a status word)", "{odd:?}");
        }
    }
}
