//! The status stage: Meta's delivery statuses move our outbound messages' delivery state
//! forward only (sent → delivered → read; `failed` is final and keeps Meta's code and title).
//! A status for a wamid we have not recorded yet is kept and applied when the sender records it.
//! A `failed` 131047 (the 24-hour window had closed) hands the conversation to a human.
//!
//! Meta sends three or four statuses per message we send, so they are written together: the
//! jobs in flight hand their statuses to one [`StatusWriter`] ([`crate::batch`]), which applies
//! whatever queued up while its previous statement ran in one statement (one round trip, one
//! commit). A job still waits for its own status's result before it is acknowledged.

use chrono::{TimeZone, Utc};
use sqlx::PgPool;
use wafleet_core::envelope::Update;

use super::{batch_outcome, decode_update, hand_over_and_publish};
use crate::batch::Batcher;
use crate::store::conversations::{self as store, Status, StatusApplied, delivery_rank};
use crate::streams::Keys;
use crate::worker::{Handler, Job, Outcome, Source, Stage};

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
}

/// Applies the statuses of concurrent jobs together (see the module docs).
pub type StatusWriter = Batcher<Status, StatusApplied>;

/// Starts the status writer: up to 256 statuses per statement.
pub fn status_writer(pg: PgPool) -> StatusWriter {
    Batcher::start("statuses", 256, pg, |conn, statuses: Vec<Status>| {
        Box::pin(async move { store::apply_statuses(conn, &statuses).await })
    })
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
            tracing::info!(status = %s.status, "status kind not tracked");
            metrics::counter!("wafleet_statuses_total", "result" => "untracked").increment(1);
            return Outcome::Done;
        };
        let status = Status {
            wamid: s.wamid.clone(),
            status: s.status.clone(),
            rank,
            at: s.timestamp.and_then(|t| Utc.timestamp_opt(t, 0).single()),
            error_code: s.error_code,
            error_title: s.error_title.clone(),
            outbound_id: s
                .biz_opaque_callback_data
                .as_deref()
                .and_then(|v| v.parse().ok()),
        };
        let applied = match self.writer.run(status).await {
            Ok(a) => a,
            Err(e) => return batch_outcome(&e, "applying a status"),
        };
        let label = match &applied {
            StatusApplied::Advanced { .. } => "advanced",
            StatusApplied::Stale => "stale",
            StatusApplied::Kept => "kept",
        };
        metrics::counter!("wafleet_statuses_total", "result" => label).increment(1);
        if let (StatusApplied::Advanced { conversation_id }, Some(RE_ENGAGEMENT)) =
            (&applied, s.error_code)
            && let Err(outcome) = self.re_engagement(*conversation_id, job).await
        {
            return outcome;
        }
        Outcome::Done
    }
}

impl StatusStage {
    async fn re_engagement(&self, conversation_id: i64, job: &Job) -> Result<(), Outcome> {
        hand_over_and_publish(
            &self.pg,
            &self.redis,
            &self.keys,
            conversation_id,
            "re_engagement",
            None,
            job.field("channel"),
        )
        .await?;
        Ok(())
    }
}
