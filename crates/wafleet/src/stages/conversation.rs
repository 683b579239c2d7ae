//! The conversation stage: every inbound message becomes a redacted, stored message on its
//! conversation, before any AI work; then the stage decides what happens next.
//!
//! Per message, in one Postgres transaction: find or create the conversation (new session after
//! the channel's idle timeout, measured on the messages' own timestamps), store the message with
//! its text redacted, and decide its `action`:
//! - `handover` — the text asks for a human: the conversation is handed over, the event stored,
//!   and an acknowledgement recorded for sending; the message is marked read (no model call
//!   does it);
//! - `reply` — the bot owns the conversation, the channel's bot is on (or shadow) and the
//!   message has text, or is an image, voice note, document or location the channel gives the
//!   model: a reply job goes to the LLM stage;
//! - `notice` — media, location, contacts and the like without text (and not given to the
//!   model), when the channel has a notice configured;
//! - `none` — reactions, system messages, conversations a human owns, bot off.
//!
//! An echo of the WhatsApp Business app (a person writing to the customer from the phone, on a
//! number shared with the Cloud API) comes on the same stream, in order with the customer's
//! messages. It sends nothing: it is recorded in the conversation as the business's message
//! (redacted, a part of kind `agent` by `business_app`, already delivered) and hands the
//! conversation to a human (reason `business_app`) unless one has it, in one transaction, the
//! dashboard event published before the commit as an agent's take is. The bot then answers none
//! of the customer's later messages, a reply the model is writing is suppressed by the sender's
//! check, and the idle release gives the conversation back as after any handover.
//!
//! After the commit come the follow-ups in Redis (reply job, outbound job, dashboard event: a
//! handover, or the message itself when people answer it, a human having the conversation or the
//! number's bot being off or in shadow); the stream entry is acknowledged only after them. A
//! redelivered message meets its row (the insert conflicts) and redoes its follow-ups, which every
//! later step takes idempotently (a second reply job finds the reply recorded; a second send job
//! finds its parts sent), so a crash anywhere repeats work but never loses or doubles a message.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use redis::AsyncCommands;
use serde_json::{Value, json};
use sqlx::PgPool;
use wafleet_core::envelope::{BusinessEcho, InboundMessage, Update};
use wafleet_core::pii::Redactor;

use super::channel_settings::ChannelCache;
use super::channel_settings::ChannelSettings;
use super::{OwnerChange, batch_outcome, db_outcome, decode_update, publish_handover, redis_down};
use crate::batch::{BatchError, Batcher};
use crate::store::channels::BotMode;
use crate::store::conversations::{
    self as store, Conversation, ConversationRef, Customer, KnownMessage, NewMessage,
    StoredMessage, Touch,
};
use crate::streams::Keys;
use crate::worker::{Handler, Job, Outcome, Source, Stage};

pub const STAGE: Stage = Stage {
    name: "conversation",
    source: Source::Inbound,
};

/// Message types that are not the customer saying something: they never get anything back, and
/// they do not open or extend the customer-service window. Every other type does both. Meta:
/// any message the user sends opens the window (reference E), so a type we do not know yet, an
/// `unsupported` one (a poll, a GIF) or a legacy `unknown` counts. Left out: what Meta writes
/// (`system`), what is not a message (`request_welcome`: the chat was opened), and what Meta does
/// not say resets it (a `reaction`, or a deletion or edit of an earlier message, also when it
/// arrives as `unsupported` with `unsupported.type` `edit` or `revoke`, reference A.4).
const SILENT_TYPES: &[&str] = &["reaction", "system", "request_welcome", "revoke", "edit"];

/// Whether the message is one of [`SILENT_TYPES`], directly or as the original kind of an
/// `unsupported` (legacy `unknown`) message.
fn is_silent(m: &InboundMessage) -> bool {
    let kind = m.message_type.as_str();
    SILENT_TYPES.contains(&kind)
        || (matches!(kind, "unsupported" | "unknown")
            && serde_json::from_str::<Value>(m.raw.get()).is_ok_and(|raw| {
                raw[kind]["type"]
                    .as_str()
                    .is_some_and(|original| matches!(original, "edit" | "revoke"))
            }))
}

pub struct ConversationStage {
    pub pg: PgPool,
    pub redis: crate::shared_redis::SharedRedis,
    pub keys: Keys,
    pub channels: ChannelCache,
    pub redactor: Arc<Redactor>,
    /// Charges each new customer message to its number's throughput budget.
    pub limiter: crate::ratelimit::RateLimiter,
    /// Marks read the message of a keyword handover, which no model call does.
    pub graph: crate::graph::GraphClient,
    /// Plain messages of conversations known from the session cache, stored together: the
    /// stage's most frequent write (see [`known_stores`]).
    pub known_stores: KnownStores,
}

/// Stores a [`KnownMessage`]: the conversation and the stored message (`None` if it was stored
/// before), or, when the cache entry was stale and nothing was written, the item back, for the
/// full lookup.
pub type KnownStores =
    Batcher<KnownMessage, Result<(Conversation, Option<StoredMessage>), Box<KnownMessage>>>;

/// The batch behind [`ConversationStage::known_stores`].
pub fn known_stores(pg: &PgPool) -> KnownStores {
    Batcher::start(
        "known_stores",
        256,
        pg.clone(),
        |conn, items: &[KnownMessage]| {
            Box::pin(async move {
                let found = store::store_known_many(conn, items).await?;
                // Rare (a stale cache entry): only then is the item copied back.
                Ok(found
                    .into_iter()
                    .zip(items)
                    .map(|(found, item)| found.ok_or_else(|| Box::new(item.clone())))
                    .collect())
            })
        },
    )
}

impl Handler for ConversationStage {
    async fn handle(&self, job: &Job) -> Outcome {
        let update = match decode_update(job) {
            Ok(u) => u,
            Err(outcome) => return outcome,
        };
        let processed = match update {
            Update::Message(message) => self.process(job, &message).await,
            Update::Echo(echo) => self.process_echo(job, &echo).await,
            _ => {
                return Outcome::Dead {
                    reason: "not an inbound message".into(),
                };
            }
        };
        match processed {
            Ok(outcome) => outcome,
            Err(StepError::Db(e, doing)) => db_outcome(&e, doing),
            Err(StepError::Batch(e, doing)) => batch_outcome(&e, doing),
            Err(StepError::Redis(e)) => redis_down(e),
        }
    }
}

enum StepError {
    Db(sqlx::Error, &'static str),
    Batch(BatchError, &'static str),
    Redis(anyhow::Error),
}

fn db(doing: &'static str) -> impl FnOnce(sqlx::Error) -> StepError {
    move |e| StepError::Db(e, doing)
}

impl ConversationStage {
    /// The number's settings, or the outcome of an update for a number we do not have.
    async fn channel(
        &self,
        phone_number_id: &str,
    ) -> Result<Result<Arc<ChannelSettings>, Outcome>, StepError> {
        let channel = self
            .channels
            .get(phone_number_id)
            .await
            .map_err(db("reading the channel"))?;
        Ok(channel.ok_or_else(|| Outcome::Dead {
            reason: format!("no channel {phone_number_id}"),
        }))
    }

    async fn process(&self, job: &Job, m: &InboundMessage) -> Result<Outcome, StepError> {
        let channel = match self.channel(&m.origin.phone_number_id).await? {
            Ok(channel) => channel,
            Err(outcome) => return Ok(outcome),
        };
        // A cart from the catalog says what was ordered: its items are what the customer says.
        // Read from the raw item once (the entry does not carry it beside the item).
        let own_text = m.text();
        let said = if m.message_type == "order" {
            order_text(m, own_text.as_deref())
        } else {
            own_text.clone()
        };
        let redacted = said
            .as_deref()
            .map(|t| self.redactor.redact(&without_nul(t)));
        let mut pii_types: Vec<String> = redacted
            .iter()
            .flat_map(|r| r.spans.iter().map(|s| s.kind.as_str().to_string()))
            .collect();
        let metadata = metadata_of(m, &self.redactor, &mut pii_types);
        pii_types.sort();
        pii_types.dedup();
        let sent_at: Option<DateTime<Utc>> =
            m.timestamp.and_then(|t| Utc.timestamp_opt(t, 0).single());
        let change = m.identity_change();
        if let Some(change) = &change
            && let Some(existing) = store::find_message(&self.pg, channel.id, &m.wamid)
                .await
                .map_err(db("finding the message"))?
        {
            // A redelivered change: its conversation may hold the new key by now, so the old
            // key would find none and make an empty one. Finish the move where the message is.
            self.follow(job, existing.conversation_id, change, sent_at)
                .await?;
            return self.stored_before(job, &channel, &m.wamid, None).await;
        }
        let at = sent_at.unwrap_or_else(Utc::now);
        let customer_key = job
            .conv
            .split_once(':')
            .map_or(job.conv.as_str(), |(_, c)| c);
        let customer = Customer {
            key: customer_key.to_string(),
            wa_id: m.wa_id.clone(),
            user_id: m.user_id.clone(),
            profile_name: m
                .profile_name
                .as_deref()
                .map(|p| without_nul(p).into_owned()),
        };

        let silent = is_silent(m);
        let touch = Touch {
            customer,
            at,
            session_timeout_secs: channel.session_timeout_secs,
            customer_message: !silent,
        };
        let text = redacted
            .as_ref()
            .map(|r| r.text.as_str())
            .filter(|t| !t.trim().is_empty());
        // Handover is matched on the original text (redaction never removes such phrases, but
        // it could split them).
        let keyword = own_text
            .as_deref()
            .and_then(|t| channel.handover.find(t))
            .map(str::to_string);
        // What the message calls for if the bot owns the conversation (else: nothing).
        let action_if_bot = if silent {
            "none"
        } else if keyword.is_some() {
            "handover"
        } else if !channel.bot_answers() {
            "none"
        } else if text.is_some()
            || (m.message_type == "image" && channel.images_to_model)
            || (m.message_type == "audio" && channel.transcribe_audio)
            || (m.message_type == "document" && channel.documents_to_model)
            || (m.message_type == "location" && channel.locations_to_model)
        {
            "reply"
        } else if !channel.media_notice.is_empty() {
            "notice"
        } else {
            "none"
        };
        let new = NewMessage {
            wamid: m.wamid.clone(),
            message_type: m.message_type.clone(),
            text_redacted: redacted.map(|r| r.text),
            pii_types,
            metadata,
            context_wamid: m.context_id.clone(),
            sent_at,
            source_entry: job.id.clone(),
            action: action_if_bot,
        };
        // The cached session lets a known conversation be touched by primary key; the update
        // re-checks the session and idle time, so a stale entry only costs the full lookup.
        let cached = self
            .cached_session(&job.conv)
            .await
            .map(|(id, session_no)| ConversationRef::Known { id, session_no });
        let stored = if matches!(action_if_bot, "handover" | "notice") {
            self.store_with_outbound(&channel, cached, &touch, new, keyword.as_deref())
                .await?
        } else {
            // Nothing else to write with it: one statement.
            'store: {
                let (touch, new) = if let Some(ConversationRef::Known { id, session_no }) = cached {
                    let known = KnownMessage {
                        conversation_id: id,
                        session_no,
                        touch,
                        message: new,
                    };
                    match self
                        .known_stores
                        .run(known)
                        .await
                        .map_err(|e| StepError::Batch(e, "storing the message"))?
                    {
                        Ok(found) => {
                            count_session_cache(true);
                            break 'store found;
                        }
                        // The cache was stale: nothing written, the full lookup below.
                        Err(stale) => {
                            let KnownMessage { touch, message, .. } = *stale;
                            (touch, message)
                        }
                    }
                } else {
                    (touch, new)
                };
                count_session_cache(false);
                store::store_message(&self.pg, channel.id, &touch, &new)
                    .await
                    .map_err(db("storing the message"))?
            }
        };
        // A customer's new number or business-scoped id: their conversation follows them (a
        // redelivered change, found stored above, finishes it there).
        let followed = match &change {
            Some(change) => self.follow(job, stored.0.id, change, sent_at).await?,
            None => false,
        };
        let touched = stored.0.id;
        let (conversation, Some(stored)) = stored else {
            // Stored before: a redelivery (or a reclaim). Finish what the first attempt may not
            // have: its follow-ups.
            return self
                .stored_before(job, &channel, &m.wamid, Some(touched))
                .await;
        };
        metrics::counter!("wafleet_conversation_messages_total", "action" => stored.action.clone())
            .increment(1);
        if stored.action == "handover" {
            metrics::counter!("wafleet_handovers_total", "reason" => "keyword").increment(1);
            // The message's row id, never its wamid: Meta's wamids encode the customer's number.
            tracing::info!(
                conversation_id = conversation.id,
                message_id = stored.id,
                "conversation handed to a human"
            );
        }
        // Independent writes: together they go out in one round trip on the shared connection.
        let ((), done, ()) = tokio::join!(
            async {
                // The old key's cache went with the change: a stranger later given the old
                // number must not land in this conversation.
                if !followed {
                    self.cache_session(&job.conv, conversation.id, conversation.session_no)
                        .await;
                }
            },
            self.follow_up(job, &channel, &m.wamid, &stored),
            self.charge_inbound(&channel),
        );
        done?;
        Ok(Outcome::Done)
    }

    /// Records an echo of the business app and hands the conversation to a human (see the
    /// module's header). A redelivered echo finds its part recorded and changes nothing.
    async fn process_echo(&self, job: &Job, e: &BusinessEcho) -> Result<Outcome, StepError> {
        let channel = match self.channel(&e.origin.phone_number_id).await? {
            Ok(channel) => channel,
            Err(outcome) => return Ok(outcome),
        };
        // What agents and the model read of it: the text, redacted, else its kind.
        let body = e
            .text()
            .map(|t| self.redactor.redact(&without_nul(&t)).text)
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| format!("[{}]", without_nul(&e.message_type)));
        let at = e
            .timestamp
            .and_then(|t| Utc.timestamp_opt(t, 0).single())
            .unwrap_or_else(Utc::now);
        let customer_key = job
            .conv
            .split_once(':')
            .map_or(job.conv.as_str(), |(_, c)| c);
        // The customer's conversation, also when it is under the other notation of their number:
        // then the number it holds is kept.
        let key = store::echo_customer_key(&self.pg, channel.id, customer_key)
            .await
            .map_err(db("finding the customer's conversation"))?
            .unwrap_or_else(|| customer_key.to_string());
        let touch = Touch {
            customer: Customer {
                wa_id: (key == e.to).then(|| e.to.clone()),
                key,
                user_id: None,
                profile_name: None,
            },
            at,
            session_timeout_secs: channel.session_timeout_secs,
            // The business writing opens no window: only the customer does.
            customer_message: false,
        };
        let mut tx = self
            .pg
            .begin()
            .await
            .map_err(db("starting a transaction"))?;
        let Some(recorded) =
            store::record_business_echo(&mut tx, channel.id, &touch, &e.wamid, &body)
                .await
                .map_err(db("recording the business app's message"))?
        else {
            metrics::counter!("wafleet_business_echoes_total", "result" => "redelivered")
                .increment(1);
            return Ok(Outcome::Done);
        };
        let conversation = &recorded.conversation;
        // Announced before the commit, as an agent's take: refused by Redis, the handover is
        // rolled back and the echo retried, so dashboards never miss it.
        if recorded.handed_over {
            self.publish(&OwnerChange {
                kind: "handover",
                reason: store::BUSINESS_APP,
                conversation_id: conversation.id,
                message_id: None,
                phone_number_id: Some(&channel.phone_number_id),
            })
            .await?;
        }
        tx.commit()
            .await
            .map_err(db("committing the business app's message"))?;
        let result = if recorded.handed_over {
            metrics::counter!("wafleet_handovers_total", "reason" => store::BUSINESS_APP)
                .increment(1);
            "handover"
        } else {
            "human_had_it"
        };
        metrics::counter!("wafleet_business_echoes_total", "result" => result).increment(1);
        // Ids only: the wamid encodes the customer's number.
        tracing::info!(
            conversation_id = conversation.id,
            handed_over = recorded.handed_over,
            "the business wrote from the WhatsApp Business app"
        );
        self.cache_session(&job.conv, conversation.id, conversation.session_no)
            .await;
        Ok(Outcome::Done)
    }

    /// Moves the conversation to the customer's new identifiers, merging into it the one their
    /// new number may already have and setting aside a former holder's
    /// ([`store::follow_identity_change`]), forgets the cached sessions of the old key and of
    /// the conversations merged or set aside, and announces both. Returns whether it moved.
    async fn follow(
        &self,
        job: &Job,
        conversation_id: i64,
        change: &wafleet_core::envelope::IdentityChange,
        changed_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StepError> {
        let followed = store::follow_identity_change(
            &self.pg,
            conversation_id,
            change.wa_id.as_deref(),
            change.user_id.as_deref(),
            changed_at,
        )
        .await
        .map_err(db("following the customer's new number"))?;
        let result = match &followed {
            Some(f) if !f.moved.is_empty() => "moved",
            Some(f) if !f.merged_keys.is_empty() => "merged",
            Some(_) => "followed",
            None => "not_followed",
        };
        metrics::counter!("wafleet_identity_changes_total", "result" => result).increment(1);
        // Ids only: the identifiers are the customer's.
        tracing::info!(
            conversation_id,
            moved_aside = ?followed.as_ref().map(|f| f.moved.iter().map(|(id, _)| *id).collect::<Vec<_>>()),
            result,
            "the customer changed their number or business-scoped id"
        );
        let Some(followed) = followed else {
            return Ok(false);
        };
        let channel = job.conv.split_once(':').map_or("", |(c, _)| c);
        // The old key, the merged conversations' keys, and those of former holders' conversations
        // set aside (the new number's cached session may lead to one: the customer's next message
        // must not land there).
        let stale = std::iter::once(job.conv.clone()).chain(
            followed
                .merged_keys
                .iter()
                .chain(followed.moved.iter().map(|(_, k)| k))
                .map(|k| format!("{channel}:{k}")),
        );
        let mut con = self
            .redis
            .get()
            .await
            .map_err(|e| StepError::Redis(e.into()))?;
        // One by one: the keys sit in different partitions' slots.
        for conv in stale {
            let _: () = con
                .del(self.keys.session_cache(&conv))
                .await
                .map_err(|e| StepError::Redis(e.into()))?;
        }
        // Dashboards holding a merged conversation's id learn where it went, and those holding a
        // former holder's that its number moved on. Refused, the step is retried and announces
        // the merges then; the workers' sweep announces both
        // ([`crate::agents::release_idle`]), and each event goes out once either way.
        let merges = store::unannounced_merges(&self.pg, Some(conversation_id), 100)
            .await
            .map_err(db("reading the merges to announce"))?;
        let moved: Vec<i64> = followed.moved.iter().map(|(id, _)| *id).collect();
        let moves = store::unannounced_number_moves(&self.pg, Some(&moved), 100)
            .await
            .map_err(db("reading the number moves to announce"))?;
        let announced = async {
            crate::stages::announce_merges(&self.pg, &mut con, &self.keys, &merges).await?;
            crate::stages::announce_number_moves(&self.pg, &mut con, &self.keys, &moves).await
        };
        announced.await.map_err(|e| match e {
            crate::stages::AnnounceError::Db(e) => {
                StepError::Db(e, "recording the number change announced")
            }
            crate::stages::AnnounceError::Redis(e) => StepError::Redis(e.into()),
        })?;
        Ok(true)
    }

    /// Stores a message that brings more writes with it (a handover with its event and
    /// acknowledgement, a media notice), all in one transaction.
    async fn store_with_outbound(
        &self,
        channel: &ChannelSettings,
        cached: Option<ConversationRef>,
        touch: &Touch,
        mut new: NewMessage,
        keyword: Option<&str>,
    ) -> Result<(Conversation, Option<StoredMessage>), StepError> {
        let mut tx = self
            .pg
            .begin()
            .await
            .map_err(db("starting a transaction"))?;
        let mut known = None;
        if let Some(target) = cached {
            known = store::touch(&mut tx, target, touch)
                .await
                .map_err(db("touching the conversation"))?;
        }
        count_session_cache(known.is_some());
        let conversation = match known {
            Some(c) => c,
            None => store::touch(&mut tx, ConversationRef::Channel(channel.id), touch)
                .await
                .map_err(db("finding the conversation"))?
                .expect("a conversation found by channel always exists"),
        };
        if !conversation.bot_owns() {
            new.action = "none";
        }
        let Some(stored) = store::insert_message(&mut tx, &conversation, &new)
            .await
            .map_err(db("storing the message"))?
        else {
            // Stored before: this attempt's touch is rolled back with the transaction.
            return Ok((conversation, None));
        };
        let outbound_state = if channel.bot_mode == BotMode::Shadow {
            "shadow"
        } else {
            "pending"
        };
        match new.action {
            "handover" => {
                store::hand_over(
                    &mut tx,
                    conversation.id,
                    "keyword",
                    keyword,
                    Some(stored.id),
                )
                .await
                .map_err(db("handing over"))?;
                let ack = channel
                    .after_hours_ack_at(chrono::Utc::now())
                    .unwrap_or(&channel.handover_ack);
                if channel.bot_answers() && !ack.is_empty() {
                    store::insert_outbound(
                        &mut tx,
                        (conversation.id, conversation.channel_id),
                        Some(stored.id),
                        "handover_ack",
                        0,
                        ack,
                        outbound_state,
                    )
                    .await
                    .map_err(db("recording the acknowledgement"))?;
                }
            }
            "notice" => {
                store::insert_outbound(
                    &mut tx,
                    (conversation.id, conversation.channel_id),
                    Some(stored.id),
                    "notice",
                    0,
                    &channel.media_notice,
                    outbound_state,
                )
                .await
                .map_err(db("recording the notice"))?;
            }
            _ => {}
        }
        tx.commit().await.map_err(db("committing the message"))?;
        Ok((conversation, Some(stored)))
    }

    /// A message already stored: redo its follow-ups (the first attempt may have stopped before
    /// them; if it did not, the later stages take the repeat as a no-op). `touched` is the
    /// conversation this attempt found or made by the message's key: when the message is in
    /// another (its conversation followed the customer to a new number since), one made now
    /// would stay empty under the old key, and is deleted.
    async fn stored_before(
        &self,
        job: &Job,
        channel: &Arc<ChannelSettings>,
        wamid: &str,
        touched: Option<i64>,
    ) -> Result<Outcome, StepError> {
        match store::find_message(&self.pg, channel.id, wamid)
            .await
            .map_err(db("finding the message"))?
        {
            Some(existing) => {
                metrics::counter!("wafleet_conversation_redeliveries_total").increment(1);
                if let Some(touched) = touched.filter(|t| *t != existing.conversation_id) {
                    store::delete_if_empty(&self.pg, touched)
                        .await
                        .map_err(db("dropping an empty conversation"))?;
                }
                self.follow_up(job, channel, wamid, &existing).await?;
                Ok(Outcome::Done)
            }
            // Its insert conflicted with a transaction that then rolled back: try again.
            None => Ok(Outcome::Retry {
                after: std::time::Duration::from_millis(200),
                reason: "message stored concurrently".into(),
            }),
        }
    }

    /// Counts the customer's message against the number's throughput, as Meta does. Best effort:
    /// a failure costs at most a throttled reply later (which the sender handles), so it is
    /// logged and counted, not retried.
    async fn charge_inbound(&self, channel: &ChannelSettings) {
        let charged = async {
            let mut con = self.redis.get().await?;
            let number = crate::ratelimit::Budget::new(f64::from(channel.send_rate_per_sec), 1);
            self.limiter
                .charge_inbound(&mut con, &channel.phone_number_id, number)
                .await
        };
        if let Err(e) = charged.await {
            metrics::counter!("wafleet_inbound_charge_errors_total").increment(1);
            tracing::warn!(error = %e, "could not charge an inbound message to the number's rate budget");
        }
    }

    /// The Redis side of a stored message: reply job, outbound jobs, dashboard event; and for a
    /// handover the read receipt the model's path would have sent.
    async fn follow_up(
        &self,
        job: &Job,
        channel: &Arc<ChannelSettings>,
        wamid: &str,
        stored: &StoredMessage,
    ) -> Result<(), StepError> {
        let redis = |e: redis::RedisError| StepError::Redis(e.into());
        let partition = job.partition;
        match stored.action.as_str() {
            "reply" => {
                let mut con = self
                    .redis
                    .get()
                    .await
                    .map_err(|e| StepError::Redis(e.into()))?;
                let _: String = con
                    .xadd(
                        self.keys.replies(partition),
                        "*",
                        &[
                            ("conv", job.conv.as_str()),
                            ("message_id", &stored.id.to_string()),
                            ("conversation_id", &stored.conversation_id.to_string()),
                            ("channel", job.field("channel").unwrap_or("-")),
                        ],
                    )
                    .await
                    .map_err(redis)?;
            }
            "handover" | "notice" => {
                let outbound: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT id, state FROM outbound_messages WHERE reply_to = $1 AND kind IN ('handover_ack', 'notice')",
                )
                .bind(stored.id)
                .fetch_all(&self.pg)
                .await
                .map_err(db("reading outbound messages"))?;
                let mut con = self
                    .redis
                    .get()
                    .await
                    .map_err(|e| StepError::Redis(e.into()))?;
                for (id, state) in outbound.iter().filter(|(_, s)| s == "pending") {
                    let _: String = con
                        .xadd(
                            self.keys.outbox(partition),
                            "*",
                            &[
                                ("conv", job.conv.as_str()),
                                ("outbound_id", &id.to_string()),
                                ("state", state.as_str()),
                            ],
                        )
                        .await
                        .map_err(redis)?;
                }
                if stored.action == "handover" {
                    let change = OwnerChange {
                        kind: "handover",
                        reason: "keyword",
                        conversation_id: stored.conversation_id,
                        message_id: Some(stored.id),
                        phone_number_id: job.field("channel"),
                    };
                    publish_handover(&mut con, &self.keys, &change)
                        .await
                        .map_err(redis)?;
                    // Again after a redelivery: Meta takes a second read receipt as the first.
                    super::mark_read(&self.graph, channel, wamid, false);
                }
            }
            _ => {}
        }
        // People answer this message: a human has the conversation, or the number's bot is off
        // or in shadow (its replies recorded, never sent). Their dashboard learns of it (again
        // after a redelivery: consumers key events on the message id); a handover has its own.
        let people_answer = stored.owner_at_arrival == "human" || channel.bot_mode != BotMode::On;
        if people_answer && stored.action != "handover" {
            self.publish(&OwnerChange {
                kind: "message",
                reason: "customer",
                conversation_id: stored.conversation_id,
                message_id: Some(stored.id),
                phone_number_id: job.field("channel"),
            })
            .await?;
        }
        Ok(())
    }

    /// Publishes an event for dashboards ([`publish_handover`]).
    async fn publish(&self, change: &OwnerChange<'_>) -> Result<(), StepError> {
        let mut con = self
            .redis
            .get()
            .await
            .map_err(|e| StepError::Redis(e.into()))?;
        publish_handover(&mut con, &self.keys, change)
            .await
            .map_err(|e| StepError::Redis(e.into()))
    }

    /// The cached conversation id and session of a conversation key, if any.
    async fn cached_session(&self, conv: &str) -> Option<(i64, i32)> {
        let mut con = self.redis.get().await.ok()?;
        let raw: Option<String> = con.get(self.keys.session_cache(conv)).await.ok()?;
        let v: Value = serde_json::from_str(&raw?).ok()?;
        Some((
            v["conversation_id"].as_i64()?,
            i32::try_from(v["session_no"].as_i64()?).ok()?,
        ))
    }

    /// Write-through cache of the conversation behind a conversation key, rewritten after every
    /// message (so a new session replaces it). Never the owner: that is read where each message
    /// is stored, in the same statement.
    async fn cache_session(&self, conv: &str, conversation_id: i64, session_no: i32) {
        let value =
            json!({"conversation_id": conversation_id, "session_no": session_no}).to_string();
        if let Ok(mut con) = self.redis.get().await {
            let _: redis::RedisResult<()> = con
                .set_ex(self.keys.session_cache(conv), value, 86_400)
                .await;
        }
    }
}

fn count_session_cache(hit: bool) {
    metrics::counter!("wafleet_session_cache_total", "result" => if hit { "hit" } else { "miss" })
        .increment(1);
}

/// `s` without NUL characters, which JSON and Rust strings allow and Postgres text and JSONB
/// refuse: a message carrying one would otherwise never be stored.
fn without_nul(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', ""))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// What a customer asks for with a cart sent from the catalog, as the model and the agents read
/// it: each item's quantity, product (its retailer id, all the webhook names) and price, then the
/// customer's note (`[order] 2 × aceite-lavanda-30ml, 45000 COP each\n¿Llega el sábado?`). Read
/// leniently from the raw item, since Meta sends the numbers as numbers or strings (reference
/// A.4): an item without a product is left out, one without a quantity or price says what it
/// has. The note alone when no item names a product.
fn order_text(m: &InboundMessage, note: Option<&str>) -> Option<String> {
    let raw: Value = serde_json::from_str(m.raw.get()).unwrap_or(Value::Null);
    let items: Vec<String> = raw["order"]["product_items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let field = |k: &str| match &item[k] {
                Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            let mut line = field("product_retailer_id")?;
            if let Some(quantity) = field("quantity") {
                line = format!("{quantity} × {line}");
            }
            if let Some(price) = field("item_price") {
                line.push_str(", ");
                line.push_str(&price);
                if let Some(currency) = field("currency") {
                    line.push(' ');
                    line.push_str(&currency);
                }
                line.push_str(" each");
            }
            Some(line)
        })
        .collect();
    let note = note.filter(|t| !t.trim().is_empty());
    if items.is_empty() {
        return note.map(str::to_string);
    }
    let mut text = format!(
        "{} {}",
        crate::store::replies::ORDER_MARKER,
        items.join("; ")
    );
    if let Some(note) = note {
        text.push('\n');
        text.push_str(note);
    }
    Some(text)
}

/// Type-specific facts worth keeping, with free text redacted.
fn metadata_of(m: &InboundMessage, redactor: &Redactor, pii: &mut Vec<String>) -> Value {
    let raw: Value = serde_json::from_str(m.raw.get()).unwrap_or(Value::Null);
    let body = &raw[m.message_type.as_str()];
    let mut redact = |v: &Value| -> Value {
        match v.as_str() {
            Some(s) => {
                let r = redactor.redact(&without_nul(s));
                pii.extend(r.spans.iter().map(|s| s.kind.as_str().to_string()));
                Value::String(r.text)
            }
            None => Value::Null,
        }
    };
    let pick = |keys: &[&str]| -> serde_json::Map<String, Value> {
        keys.iter()
            .filter(|k| !body[**k].is_null())
            .map(|k| (k.to_string(), body[*k].clone()))
            .collect()
    };
    let mut meta = match m.message_type.as_str() {
        "image" | "video" | "audio" | "document" | "sticker" => {
            let mut o = pick(&["id", "mime_type", "sha256", "voice", "animated"]);
            if !body["filename"].is_null() {
                o.insert("filename".into(), redact(&body["filename"]));
            }
            Value::Object(o)
        }
        "location" => {
            let mut o = pick(&["latitude", "longitude"]);
            for k in ["name", "address"] {
                if !body[k].is_null() {
                    o.insert(k.into(), redact(&body[k]));
                }
            }
            Value::Object(o)
        }
        "contacts" => json!({"count": raw["contacts"].as_array().map_or(0, Vec::len)}),
        "interactive" => {
            json!({"type": body["type"], "reply_id": body["button_reply"]["id"].as_str().or(body["list_reply"]["id"].as_str())})
        }
        "button" => json!({"payload": body["payload"]}),
        "reaction" => json!({"message_id": body["message_id"], "emoji": body["emoji"]}),
        "order" => {
            json!({"catalog_id": body["catalog_id"], "items": body["product_items"].as_array().map_or(0, Vec::len)})
        }
        "unsupported" | "unknown" => json!({
            "original_type": body["type"],
            "error_codes": raw["errors"].as_array().map(|e| e.iter().map(|x| x["code"].clone()).collect::<Vec<_>>()),
        }),
        _ => json!({}),
    };
    if raw["context"]["forwarded"].as_bool() == Some(true)
        || raw["context"]["frequently_forwarded"].as_bool() == Some(true)
    {
        meta["forwarded"] = Value::Bool(true);
    }
    if !raw["referral"].is_null() {
        meta["referral"] = json!({"source_type": raw["referral"]["source_type"], "source_id": raw["referral"]["source_id"]});
    }
    meta
}
