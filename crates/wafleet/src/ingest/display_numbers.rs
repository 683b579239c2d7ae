//! Learning each channel's display number from Meta's own webhooks.
//!
//! Meta names a number in a `phone_number_quality_update` by its display number only, so the
//! account stage can match such an update to a channel only when the channel has its display
//! number stored. Every `messages` webhook carries it anyway, beside the `phone_number_id` we
//! route by (`value.metadata.display_phone_number`, digits only). When an update ingest takes for
//! processing names a display number whose digits differ from the channel's in the registry
//! (none stored, or another), it is written to the channel, off the request path.
//!
//! Cheap by construction: the comparison is against the in-memory registry, so a channel whose
//! number is stored costs nothing per message; a write happens once per channel and value (the
//! registry reloads within `WAFLEET_CHANNEL_REFRESH_MS`, as the write moves the row's
//! `updated_at`), and this process writes a channel's number at most once per [`RELEARN_AFTER`],
//! whatever the value: two sources that disagree (a misconfigured simulator beside real traffic,
//! a number moved between apps) cost one write a minute, not one per message and a reload of
//! every process's registry each time. A stored number written
//! in another notation (`+1 555-078-3881` for `15550783881`) has the same digits and is kept as
//! the operator wrote it. Only updates that passed the signature and the channel's checks teach
//! (a quarantined one, possibly another tenant's, never does). Logs name the channel, never the
//! number.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::channels::ChannelRoute;
use crate::store::channels;

/// How long after writing a channel's display number this process writes it again, with the
/// same value (its registry did not reload, or a write failed silently elsewhere) or another
/// (webhooks that disagree): one write a minute per channel at most, however many messages
/// arrive meanwhile.
pub const RELEARN_AFTER: Duration = Duration::from_secs(60);

/// When one ingest process last wrote each channel's number, by phone_number_id.
#[derive(Clone)]
pub struct DisplayNumbers {
    pg: PgPool,
    /// The runtime that owns the pool's connections (ingest's `home`): writes run there, not on
    /// the lane that saw the webhook.
    home: tokio::runtime::Handle,
    written: Arc<Mutex<HashMap<String, Instant>>>,
}

impl DisplayNumbers {
    /// `home`: the runtime that owns `pg`'s connections.
    pub fn new(pg: PgPool, home: tokio::runtime::Handle) -> Self {
        Self {
            pg,
            home,
            written: Arc::default(),
        }
    }

    /// Records `display` (the webhook's `metadata.display_phone_number`) on the channel of
    /// `route` when its digits differ from the stored number's, in a task of its own.
    pub fn observe(&self, route: &ChannelRoute, display: &str) {
        let seen_before =
            |stored: &str| wafleet_core::account::same_display_number(display, stored);
        if !display.chars().any(|c| c.is_ascii_digit())
            || route
                .display_phone_number
                .as_deref()
                .is_some_and(seen_before)
        {
            return;
        }
        let seen = wafleet_core::account::display_digits(display);
        {
            let mut written = self.written.lock().expect("display numbers lock poisoned");
            if written
                .get(&route.phone_number_id)
                .is_some_and(|at| at.elapsed() < RELEARN_AFTER)
            {
                return;
            }
            written.insert(route.phone_number_id.clone(), Instant::now());
        }
        let (this, pnid) = (self.clone(), route.phone_number_id.clone());
        self.home.spawn(async move {
            match channels::record_display_number(&this.pg, &pnid, &seen).await {
                Ok(changed) => {
                    let result = if changed { "recorded" } else { "unchanged" };
                    metrics::counter!("wafleet_display_numbers_learned_total", "result" => result)
                        .increment(1);
                    if changed {
                        tracing::info!(
                            channel = %pnid,
                            "the channel's display number was recorded from Meta's webhook \
                             (quality updates name the number by it)"
                        );
                    }
                }
                Err(e) => {
                    // Forgotten, so the next update of the channel tries again.
                    this.written
                        .lock()
                        .expect("display numbers lock poisoned")
                        .remove(&pnid);
                    metrics::counter!("wafleet_display_numbers_learned_total", "result" => "failed")
                        .increment(1);
                    tracing::warn!(
                        channel = %pnid,
                        error = %e,
                        "recording the channel's display number from Meta's webhook failed; \
                         the next update tries again"
                    );
                }
            }
        });
    }
}
