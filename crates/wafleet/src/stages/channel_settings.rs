//! Per-channel settings the stages need, cached in the process for a couple of seconds so a
//! change made with `wafleetctl` is seen quickly without a query per job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use wafleet_core::handover::HandoverMatcher;

use crate::store::channels::BotMode;

/// Default acknowledgement when a conversation is handed to a human.
pub const DEFAULT_HANDOVER_ACK: &str =
    "Te comunico con una persona de nuestro equipo. / Connecting you with a person from our team.";

#[derive(Debug)]
pub struct ChannelSettings {
    pub id: i64,
    pub phone_number_id: String,
    pub enabled: bool,
    pub bot_mode: BotMode,
    pub session_timeout_secs: i64,
    pub handover: HandoverMatcher,
    /// Empty: no acknowledgement.
    pub handover_ack: String,
    /// Empty: no notice.
    pub media_notice: String,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    phone_number_id: String,
    enabled: bool,
    bot_mode: String,
    session_timeout_secs: i32,
    handover_keywords: Option<Vec<String>>,
    handover_ack: Option<String>,
    media_notice: Option<String>,
}

/// How long a cached entry is trusted.
const FRESH_FOR: Duration = Duration::from_secs(2);

/// When an entry was read, and what (None: no such channel).
type Cached = (Instant, Option<Arc<ChannelSettings>>);

#[derive(Clone)]
pub struct ChannelCache {
    pg: PgPool,
    entries: Arc<Mutex<HashMap<String, Cached>>>,
}

impl ChannelCache {
    pub fn new(pg: PgPool) -> Self {
        Self {
            pg,
            entries: Arc::default(),
        }
    }

    pub async fn get(&self, phone_number_id: &str) -> sqlx::Result<Option<Arc<ChannelSettings>>> {
        if let Some((at, v)) = self
            .entries
            .lock()
            .expect("cache lock")
            .get(phone_number_id)
            && at.elapsed() < FRESH_FOR
        {
            return Ok(v.clone());
        }
        let row: Option<Row> = sqlx::query_as(
            "SELECT id, phone_number_id, enabled, bot_mode, session_timeout_secs, handover_keywords,
                    handover_ack, media_notice
               FROM channels WHERE phone_number_id = $1",
        )
        .bind(phone_number_id)
        .fetch_optional(&self.pg)
        .await?;
        let settings = row.map(|r| {
            Arc::new(ChannelSettings {
                id: r.id,
                phone_number_id: r.phone_number_id,
                enabled: r.enabled,
                bot_mode: r.bot_mode.parse().unwrap_or(BotMode::Off),
                session_timeout_secs: i64::from(r.session_timeout_secs),
                handover: match &r.handover_keywords {
                    Some(k) => HandoverMatcher::new(k),
                    None => HandoverMatcher::default(),
                },
                handover_ack: r
                    .handover_ack
                    .unwrap_or_else(|| DEFAULT_HANDOVER_ACK.into()),
                media_notice: r.media_notice.unwrap_or_default(),
            })
        });
        self.entries.lock().expect("cache lock").insert(
            phone_number_id.to_string(),
            (Instant::now(), settings.clone()),
        );
        Ok(settings)
    }
}
