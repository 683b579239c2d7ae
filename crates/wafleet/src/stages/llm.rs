//! The LLM stage: turns a reply job into an answer, stored as outbound parts before anything is
//! sent.
//!
//! Per job: if the conversation is no longer the bot's, or the customer's last message is older
//! than the 24-hour window (by its own timestamp, with a safety margin), nothing is asked of any
//! model and the outcome is recorded (`suppressed`, `window_closed`; the latter also hands the
//! conversation to a human). Otherwise the customer's message is marked read with a typing
//! indicator, the model chain is asked with the channel's system prompt and the last
//! `history_limit` turns of the current session (redacted text only, stretches a human handled
//! left out), and the answer is formatted for WhatsApp and split into ≤ 4096-character parts. A
//! model that answers with the handover marker hands the conversation over like a keyword does.
//! The reply row is unique per inbound message, so a redelivered job never produces a second
//! answer; it only re-queues the send of the first.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use redis::AsyncCommands;
use serde_json::json;
use sqlx::PgPool;
use wafleet_core::format::{WHATSAPP_MAX_CHARS, markdown_to_whatsapp, split_message};

use super::channel_settings::{ChannelCache, ChannelSettings};
use super::{batch_outcome, db_outcome, hand_over_and_publish, redis_down};
use crate::batch::Batcher;
use crate::graph::GraphClient;
use crate::llm::{
    ChatMessage, ChatRequest, FallbackPolicy, LlmClient, LlmError, ProviderConfig, Reply, Role,
    reply_with_fallback, system_prompt, with_knowledge, with_opening,
};
use crate::store::channels::BotMode;
use crate::store::replies::{self, NewReply, ReplyContext, ReplyRecord};
use crate::streams::Keys;
use crate::worker::{Handler, Job, Outcome, Source, Stage};

pub const STAGE: Stage = Stage {
    name: "llm",
    source: Source::Replies,
};

/// The customer-service window, less a margin: webhooks can arrive late and Meta notes rare
/// failures right at the edge.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600 - 10 * 60);

/// Process-wide model settings: the chain used by channels without their own.
pub struct LlmDefaults {
    pub providers: Vec<ProviderConfig>,
    pub policy: FallbackPolicy,
    pub max_tokens: u32,
    /// The largest image given to the model.
    pub image_max_bytes: u64,
    /// The largest document given to the model.
    pub document_max_bytes: u64,
    /// Images and documents held at once, from download until the model answered; also voice
    /// notes, from download until transcribed.
    pub images: Arc<tokio::sync::Semaphore>,
    /// Where voice notes are transcribed (an OpenAI-compatible `/audio/transcriptions`), when
    /// configured.
    pub transcriber: Option<ProviderConfig>,
    /// The largest recording downloaded for transcription.
    pub audio_max_bytes: u64,
    /// The stage's `max_attempts`: a transcription retried past it would dead-letter the job.
    pub max_attempts: u32,
}

/// The longest a job waits for a permit to hold a file in memory
/// ([`LlmDefaults::images`]); past it, an image or document is left out (`busy`) and a voice
/// note's job is deferred, so the wait never eats the job's deadline.
pub const MEDIA_PERMIT_WAIT: Duration = Duration::from_secs(10);

/// Whether Meta's refusal to serve a customer's file may pass: Meta unreachable, a server
/// error or a 429, or a code the Graph error table calls throttling or transient.
fn may_pass(e: &crate::graph::MediaError) -> bool {
    match e {
        crate::graph::MediaError::Transport(_) => true,
        crate::graph::MediaError::Rejected { http_status, code } => {
            *http_status >= 500
                || *http_status == 429
                || wafleet_core::graph_error::classify(*code, *http_status, None).is_retryable()
        }
        _ => false,
    }
}

/// A permit to hold a file in memory, waiting at most [`MEDIA_PERMIT_WAIT`]; `None` when none
/// came in time.
async fn media_permit(
    permits: &Arc<tokio::sync::Semaphore>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    tokio::time::timeout(MEDIA_PERMIT_WAIT, permits.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
}

/// Tries of a transcription (or of the recording's download) that failed for a reason that may
/// pass, each a retry of the job; after them the model answers without knowing what was said.
const TRANSCRIPTION_TRIES: u32 = 3;

/// What became of the voice note a reply job answers.
enum Voice {
    /// Not a voice note to transcribe (another type, or a channel that does not transcribe).
    Nothing,
    /// Its transcript, as the model reads it (redacted, stored), and the handover phrase it
    /// contains, if any.
    Heard {
        turn: String,
        keyword: Option<String>,
    },
    /// It could not be transcribed: the model is told a voice note came.
    Unheard,
    /// Transcribed by an earlier run: the history's last turn has it.
    Stored,
}

/// Records replies of many jobs in one statement (see [`crate::batch`]).
pub type ReplyWriter = Batcher<ReplyRecord, bool>;

pub fn reply_writer(pg: PgPool) -> ReplyWriter {
    Batcher::start("replies", 128, pg, |conn, records: &[ReplyRecord]| {
        Box::pin(async move { replies::record_replies(conn, records).await })
    })
}

/// Reads the context of many reply jobs in one query.
pub type ContextReader = Batcher<(i64, i64), Option<(ReplyContext, Vec<replies::Turn>)>>;

pub fn context_reader(pg: PgPool) -> ContextReader {
    Batcher::start("reply_contexts", 128, pg, |conn, wanted: &[(i64, i64)]| {
        Box::pin(async move { replies::reply_contexts(conn, wanted).await })
    })
}

pub struct LlmStage {
    pub contexts: ContextReader,
    pub writer: ReplyWriter,
    pub pg: PgPool,
    pub redis: crate::shared_redis::SharedRedis,
    pub keys: Keys,
    pub channels: ChannelCache,
    pub llm: LlmClient,
    pub graph: GraphClient,
    pub defaults: Arc<LlmDefaults>,
    /// Redacts what only the customer's turns together give away.
    pub redactor: Arc<wafleet_core::pii::Redactor>,
}

/// Redacts what the customer's turns give away only read together: a card or a phone typed
/// across two messages ("4111 1111", then "1111 1111", maybe with the bot's answer between).
/// Each turn was redacted when it was stored, but the model reads the whole history at once.
/// The customer's turns are read joined by line breaks; a finding that crosses from one turn
/// into another is replaced by its placeholder in the turn where it starts and removed from the
/// others. A turn it leaves blank (the customer typed only the rest of the number) reads the
/// placeholder too: an empty turn is refused by Anthropic, and the model should know the
/// customer wrote something. Findings within one turn were made when it was stored and are left
/// alone.
pub fn redact_across_turns(redactor: &wafleet_core::pii::Redactor, turns: &mut [(bool, String)]) {
    // A shared location's turn is left out: its redacted name and address and its coordinates
    // are not what the customer typed, so a number typed before and after it is one number.
    let customer: Vec<usize> = (0..turns.len())
        .filter(|&i| turns[i].0 && !turns[i].1.starts_with(replies::LOCATION_MARKER))
        .collect();
    if customer.len() < 2 {
        return;
    }
    // Each turn's text is read after its marker (`[image]`, `[voice note]`, `[document: …]`):
    // "4111 1111" typed, then "1111 1111" said, is one card.
    let skips: Vec<usize> = customer.iter().map(|&i| marker_len(&turns[i].1)).collect();
    let mut joined = String::new();
    let mut starts = Vec::with_capacity(customer.len());
    for (k, &i) in customer.iter().enumerate() {
        if !starts.is_empty() {
            joined.push('\n');
        }
        starts.push(joined.len());
        joined.push_str(&turns[i].1[skips[k]..]);
    }
    // Per customer turn, the placeholder of a finding cut out of it that began in an earlier
    // turn; looked at once every finding is out, since offsets hold only until then.
    let mut continued: Vec<Option<&'static str>> = vec![None; customer.len()];
    for span in redactor.find(&joined).iter().rev() {
        let first = starts.partition_point(|&s| s <= span.start) - 1;
        let last = starts.partition_point(|&s| s < span.end) - 1;
        if first == last {
            continue;
        }
        for k in (first..=last).rev() {
            let text = &mut turns[customer[k]].1;
            let from = (skips[k] + span.start.saturating_sub(starts[k])).min(text.len());
            let to = (skips[k] + (span.end - starts[k])).min(text.len());
            let with = if k == first {
                span.kind.placeholder()
            } else {
                continued[k] = Some(span.kind.placeholder());
                ""
            };
            text.replace_range(from..to, with);
        }
    }
    for (k, placeholder) in continued.into_iter().enumerate() {
        let text = &mut turns[customer[k]].1;
        if let Some(placeholder) = placeholder
            && text.trim().is_empty()
        {
            *text = placeholder.to_string();
        }
    }
}

/// `s` without NUL characters, which JSON and Rust strings allow and Postgres text and JSONB
/// refuse (SQLSTATE 22021, 22P05): a transcript, an answer or a provider's error carrying one
/// would make its row fail, and the job would be dead-lettered with no reply.
fn without_nul(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', ""))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The length of the marker a customer's turn starts with, with the space after it: what
/// stands for an image, a voice note or a document (see `store::replies`); 0 without one.
fn marker_len(text: &str) -> usize {
    let marked = [replies::IMAGE_MARKER, replies::VOICE_MARKER]
        .into_iter()
        .find(|m| text.starts_with(m))
        .map(str::len)
        .or_else(|| {
            text.starts_with(replies::DOCUMENT_MARKER)
                .then(|| text.find(']').map(|end| end + 1))
                .flatten()
        });
    match marked {
        Some(n) if text[n..].starts_with(' ') => n + 1,
        Some(n) => n,
        None => 0,
    }
}

/// How much longer a message that arrived at `received_at` waits for what the customer types
/// next, with the channel's gather time `gather`; `None` when it waited enough (or the channel
/// does not wait). A worker's clock behind Postgres's waits at most `gather`.
pub fn gather_left(
    gather: Duration,
    received_at: chrono::DateTime<Utc>,
    now: chrono::DateTime<Utc>,
) -> Option<Duration> {
    let waited = now
        .signed_duration_since(received_at)
        .to_std()
        .unwrap_or_default();
    gather.checked_sub(waited).filter(|rest| !rest.is_zero())
}

/// Whether the 24-hour window is still open for a customer whose last message was at `last`.
pub fn window_open(last: Option<chrono::DateTime<Utc>>, now: chrono::DateTime<Utc>) -> bool {
    last.is_some_and(|t| {
        now.signed_duration_since(t)
            .to_std()
            .map_or(true, |age| age < WINDOW)
    })
}

impl Handler for LlmStage {
    async fn handle(&self, job: &Job) -> Outcome {
        let Some(message_id) = job.field("message_id").and_then(|v| v.parse::<i64>().ok()) else {
            return Outcome::Dead {
                reason: "reply job without message_id".into(),
            };
        };
        match self.process(job, message_id).await {
            Ok(o) => o,
            Err(o) => o,
        }
    }
}

/// Knowledge-base entries given to the model with each request, at most.
const KNOWLEDGE_ENTRIES: i64 = 3;

fn db(doing: &'static str) -> impl Fn(sqlx::Error) -> Outcome {
    move |e| db_outcome(&e, doing)
}

impl LlmStage {
    async fn process(&self, job: &Job, message_id: i64) -> Result<Outcome, Outcome> {
        let channel = self.channels.of_job(job).await?;
        let found = self
            .contexts
            .run((message_id, channel.history_limit))
            .await
            .map_err(|e| batch_outcome(&e, "reading the message"))?;
        let Some((ctx, mut turns)) = found else {
            return Ok(Outcome::Dead {
                reason: format!("no message {message_id}"),
            });
        };
        // Shadow mode records what the bot would do and does none of it: no send, and no
        // handover either (people run the conversation; a handover would also silence the
        // shadow replies that follow).
        let shadow = channel.bot_mode == BotMode::Shadow;
        if let Some(outcome) = &ctx.reply_outcome {
            // Answered already (a redelivery): the run that stored the reply may have stopped
            // before its handover or before queueing the send. Both are idempotent.
            match outcome.as_str() {
                _ if shadow => {}
                "handover" => self.hand_over(job, &ctx, "model").await?,
                "window_closed" => self.hand_over(job, &ctx, "window_closed").await?,
                _ => {}
            }
            self.follow_up(job, &ctx, outcome).await?;
            return Ok(Outcome::Done);
        }

        if ctx.owner != "bot" || !channel.bot_answers() {
            self.record_no_answer(&ctx, "suppressed").await?;
            metrics::counter!("wafleet_replies_total", "outcome" => "suppressed").increment(1);
            return Ok(Outcome::Done);
        }
        if !window_open(ctx.last_customer_message_at, Utc::now()) {
            self.record_no_answer(&ctx, "window_closed").await?;
            if !shadow {
                self.hand_over(job, &ctx, "window_closed").await?;
            }
            metrics::counter!("wafleet_replies_total", "outcome" => "window_closed").increment(1);
            return Ok(Outcome::Done);
        }
        // Customers type in bursts ("hola", "una pregunta", "¿tienen la talla M?"). On a channel
        // that gathers them (`reply_gather_ms`), when the customer wrote again since this
        // message (while the model answered an earlier one, or while this one waited below),
        // the later message's answer is written with this one in its history: this one gets
        // none of its own, so the customer gets one answer, not one per message, the first of
        // them answering "hola" after the question was asked. Not a message with a file or a
        // voice note, which only its own answer gives the model. Without the setting every
        // message is answered on its own, as before it existed.
        let gathers = !channel.reply_gather.is_zero();
        if gathers && ctx.answered_later && ctx.media_id.is_none() {
            self.record_no_answer(&ctx, "superseded").await?;
            metrics::counter!("wafleet_replies_total", "outcome" => "superseded").increment(1);
            return Ok(Outcome::Done);
        }
        // The gather time: a text waits that long from its arrival for what the customer types
        // next (the conversation's later jobs queue behind it), then is superseded above or
        // answered.
        if gathers
            && ctx.media_id.is_none()
            && let Some(rest) = gather_left(channel.reply_gather, ctx.received_at, Utc::now())
        {
            return Ok(Outcome::Defer {
                after: rest,
                reason: "waiting for what the customer types next (reply_gather_ms)".into(),
            });
        }

        // A voice note is answered like the text it says; asking for a person in it hands over
        // at once, as typing the phrase does.
        let mut keyword = None;
        match self.voice(job, &channel, &ctx).await? {
            Voice::Nothing => {}
            Voice::Heard { turn, keyword: k } => {
                turns.push((true, turn));
                keyword = k;
            }
            Voice::Unheard => turns.push((true, replies::VOICE_UNHEARD.to_string())),
            Voice::Stored => {
                keyword = turns
                    .iter()
                    .rev()
                    .find(|(customer, _)| *customer)
                    .and_then(|(_, text)| channel.handover.find(text))
                    .map(str::to_string);
            }
        }
        // With the voice note's transcript among the turns: a card begun in a typed message
        // and finished in a voice note is redacted too.
        redact_across_turns(&self.redactor, &mut turns);
        let knowledge = if keyword.is_some() {
            Vec::new()
        } else {
            self.knowledge(&channel, &turns).await?
        };
        // Held until the model answered: the file is in memory until then.
        let (attachment, _attachment_permit) = self.attachment(&channel, &ctx).await;
        // What the business said before the customer's first turn goes to the system prompt.
        let leading = turns.iter().take_while(|(customer, _)| !customer).count();
        let opening: Vec<String> = turns.drain(..leading).map(|(_, text)| text).collect();
        let mut messages: Vec<ChatMessage> = turns
            .into_iter()
            .map(|(customer, content)| ChatMessage {
                role: if customer {
                    Role::User
                } else {
                    Role::Assistant
                },
                content,
                attachments: Vec::new(),
            })
            .collect();
        // The message answered is the last customer turn.
        if let (Some(attachment), Some(last)) = (
            attachment,
            messages.iter_mut().rev().find(|m| m.role == Role::User),
        ) {
            last.attachments.push(attachment);
        }
        let request = ChatRequest {
            system: with_opening(
                with_knowledge(system_prompt(channel.system_prompt.as_deref()), &knowledge),
                &opening,
            ),
            messages,
            max_tokens: self.defaults.max_tokens,
        };
        // A channel's own chain, even when none of its keys decrypt (then the canned reply): its
        // customers' conversations never go to a model its operator did not choose.
        let providers = if channel.own_chain {
            &channel.providers
        } else {
            &self.defaults.providers
        };
        let mut jitter = || rand::random::<f64>();
        let reply = if keyword.is_some() {
            // No model: the customer asked for a person. Their message is marked read all the
            // same, with nobody typing.
            super::mark_read(&self.graph, &channel, &ctx.wamid, false);
            Reply {
                text: String::new(),
                usage: None,
                provider: None,
                model: None,
                canned: false,
                wants_human: true,
                failures: Vec::new(),
            }
        } else {
            // The read receipt and typing indicator go out while the model works, not before it
            // and not waited for: a slow Graph API must not hold the customer's answer back.
            super::mark_read(&self.graph, &channel, &ctx.wamid, true);
            reply_with_fallback(
                &self.llm,
                providers,
                &request,
                &self.defaults.policy,
                &channel.canned_reply,
                &mut jitter,
            )
            .await
        };
        let usage = reply.usage.as_ref();
        let failures = json!(
            reply
                .failures
                .iter()
                .map(|(p, e)| json!({"provider": without_nul(p), "error": without_nul(e)}))
                .collect::<Vec<_>>()
        );
        let provider = reply.provider.as_deref().map(without_nul);
        let model = reply.model.as_deref().map(without_nul);
        let mut text = without_nul(&reply.text);
        let mut canned = reply.canned;
        // An answer that was only NUL characters, or only markup WhatsApp has no use for (`<br>`,
        // an HTML comment), leaves nothing to send: the customer still gets one.
        let says_nothing = |text: &str| markdown_to_whatsapp(text).trim().is_empty();
        if says_nothing(&text) && !reply.wants_human {
            text = std::borrow::Cow::Borrowed(channel.canned_reply.as_str());
            canned = true;
        }
        let outcome = if reply.wants_human {
            "handover"
        } else if shadow {
            "shadow"
        } else {
            "produced"
        };
        let new = NewReply {
            outcome,
            provider: provider.as_deref(),
            model: model.as_deref(),
            input_tokens: usage.map(|u| u.input_tokens as i32),
            output_tokens: usage.map(|u| u.output_tokens as i32),
            canned,
            failures,
        };
        let state = if shadow { "shadow" } else { "pending" };
        let parts: Vec<(String, String)> = if reply.wants_human {
            // The model's own words go through the same formatting as any answer; one part
            // (it is meant to be a sentence: anything past 4096 characters is cut at a boundary).
            // Outside business hours the model's words would promise a person who is not there.
            let ack = if let Some(after_hours) = channel.after_hours_ack_at(chrono::Utc::now()) {
                after_hours.to_string()
            } else if says_nothing(&text) {
                channel.handover_ack.clone()
            } else {
                split_message(&markdown_to_whatsapp(&text), WHATSAPP_MAX_CHARS)
                    .into_iter()
                    .next()
                    .unwrap_or_default()
            };
            if ack.is_empty() {
                vec![]
            } else {
                vec![("handover_ack".to_string(), ack)]
            }
        } else {
            split_message(&markdown_to_whatsapp(&text), WHATSAPP_MAX_CHARS)
                .into_iter()
                .map(|p| ("reply".to_string(), p))
                .collect()
        };
        let fresh = self.record(&ctx, &new, parts, state).await?;
        if fresh && reply.wants_human && !shadow {
            let reason = if keyword.is_some() {
                "keyword"
            } else {
                "model"
            };
            self.hand_over(job, &ctx, reason).await?;
        }
        metrics::counter!("wafleet_replies_total", "outcome" => outcome).increment(1);
        if canned {
            metrics::counter!("wafleet_replies_canned_total").increment(1);
        }
        self.follow_up(job, &ctx, outcome).await?;
        Ok(Outcome::Done)
    }

    /// The image or PDF the customer sent with the message answered, fetched from Meta, when the
    /// channel gives images (`images_to_model`) or documents (`documents_to_model`) to the
    /// model; with the permit that bounds them in memory. Any failure is logged and counted
    /// (`wafleet_images_total{result}`, `wafleet_documents_total{result}`) and the model answers
    /// without it: the turn's text says an image or a document was sent.
    async fn attachment(
        &self,
        channel: &ChannelSettings,
        ctx: &ReplyContext,
    ) -> (
        Option<crate::llm::Attachment>,
        Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        use crate::llm::Attachment;
        let (metric, accepted, max_bytes): (_, &[&str], _) = match ctx.message_type.as_str() {
            "image" if channel.images_to_model => (
                "wafleet_images_total",
                &Attachment::IMAGE_TYPES,
                self.defaults.image_max_bytes,
            ),
            "document" if channel.documents_to_model => (
                "wafleet_documents_total",
                &Attachment::DOCUMENT_TYPES,
                self.defaults.document_max_bytes,
            ),
            _ => return (None, None),
        };
        let Some(media_id) = ctx.media_id.as_deref() else {
            return (None, None);
        };
        let Some(token) = &channel.access_token else {
            metrics::counter!(metric, "result" => "no_token").increment(1);
            return (None, None);
        };
        let Some(permit) = media_permit(&self.defaults.images).await else {
            metrics::counter!(metric, "result" => "busy").increment(1);
            tracing::warn!(channel = %channel.phone_number_id, message_id = ctx.message_id,
                "the customer's file is not given to the model: too many files in memory");
            return (None, None);
        };
        let fetched = self
            .graph
            .fetch_media(token.expose(), media_id, max_bytes, accepted)
            .await;
        match fetched {
            Ok(media) => {
                metrics::counter!(metric, "result" => "given").increment(1);
                (
                    Some(Attachment::new(&media.mime_type, &media.bytes)),
                    Some(permit),
                )
            }
            Err(e) => {
                metrics::counter!(metric, "result" => e.label()).increment(1);
                tracing::warn!(channel = %channel.phone_number_id, message_id = ctx.message_id,
                    kind = %ctx.message_type, error = %e,
                    "the customer's file is not given to the model");
                (None, None)
            }
        }
    }

    /// The voice note (or audio file) the reply job answers, transcribed when the channel
    /// transcribes them: the recording is downloaded from Meta with the channel's token (held in
    /// memory under the image permits, never stored), sent to the transcriber, and the
    /// transcript redacted and stored as the message's text, so the history has it from then on.
    /// A failure that may pass (the transcriber or Meta unreachable, overloaded, rate limiting)
    /// retries the job, [`TRANSCRIPTION_TRIES`] tries in all; any other, or the last, leaves the
    /// voice note unheard. Each result is counted in `wafleet_transcriptions_total{result}`.
    async fn voice(
        &self,
        job: &Job,
        channel: &ChannelSettings,
        ctx: &ReplyContext,
    ) -> Result<Voice, Outcome> {
        let (true, "audio", Some(media_id)) = (
            channel.transcribe_audio,
            ctx.message_type.as_str(),
            ctx.media_id.as_deref(),
        ) else {
            return Ok(Voice::Nothing);
        };
        if ctx.has_text {
            // Transcribed by an earlier run that stopped before the reply was stored: the
            // history ends with it; only the handover phrase is looked for again.
            return Ok(Voice::Stored);
        }
        let count = |result: &'static str| {
            metrics::counter!("wafleet_transcriptions_total", "result" => result).increment(1);
        };
        let unheard = |result: &'static str, error: &dyn std::fmt::Display| {
            count(result);
            tracing::warn!(channel = %channel.phone_number_id, message_id = ctx.message_id,
                result, error = %error, "the customer's voice note is not transcribed");
            Ok(Voice::Unheard)
        };
        let again = |result: &'static str, error: &dyn std::fmt::Display, after: Duration| {
            count(result);
            tracing::info!(channel = %channel.phone_number_id, message_id = ctx.message_id,
                result, error = %error, attempt = job.attempt,
                "the customer's voice note is not transcribed yet; trying again");
            Err(Outcome::Retry {
                after,
                reason: format!("transcription: {error}"),
            })
        };
        let last_try = job.attempt + 1 >= TRANSCRIPTION_TRIES.min(self.defaults.max_attempts);
        let backoff = Duration::from_secs(2 << job.attempt.min(4));
        let Some(transcriber) = &self.defaults.transcriber else {
            return unheard("no_transcriber", &"no transcription provider is configured");
        };
        let Some(token) = &channel.access_token else {
            return unheard("no_token", &"the channel has no readable access token");
        };
        let Some(_permit) = media_permit(&self.defaults.images).await else {
            count("busy");
            return Err(Outcome::Defer {
                after: Duration::from_secs(1),
                reason: "too many files in memory to download a voice note".into(),
            });
        };
        let media = match self
            .graph
            .fetch_media(
                token.expose(),
                media_id,
                self.defaults.audio_max_bytes,
                &crate::llm::AUDIO_TYPES,
            )
            .await
        {
            Ok(media) => media,
            Err(e) if may_pass(&e) && !last_try => return again(e.label(), &e, backoff),
            Err(e) => return unheard(e.label(), &e),
        };
        let transcript = self
            .llm
            .transcribe(
                transcriber,
                &media.mime_type,
                media.bytes,
                self.defaults.policy.call_deadline,
            )
            .await;
        let text = match transcript {
            Ok(text) => text,
            Err(e) if e.is_retryable() && !last_try => {
                let after = transcription_retry(&e, backoff, self.defaults.policy.max_retry_after);
                return again("provider_error", &e, after);
            }
            Err(e) => return unheard("provider_error", &e),
        };
        let text = without_nul(&text);
        let redacted = self.redactor.redact(&text);
        let pii: Vec<String> = redacted
            .spans
            .iter()
            .map(|s| s.kind.as_str().to_string())
            .collect();
        replies::store_transcript(&self.pg, ctx.message_id, &redacted.text, &pii)
            .await
            .map_err(db("storing the transcript"))?;
        count("transcribed");
        // Matched on what was said, as a typed phrase is matched on what was typed.
        let keyword = channel.handover.find(&text).map(str::to_string);
        Ok(Voice::Heard {
            turn: format!("{} {}", replies::VOICE_MARKER, redacted.text),
            keyword,
        })
    }

    /// The channel's knowledge-base entries that match the customer's latest message (redacted,
    /// as the model sees it), best first; nothing for a channel without entries (no query).
    async fn knowledge(
        &self,
        channel: &ChannelSettings,
        turns: &[(bool, String)],
    ) -> Result<Vec<(String, String)>, Outcome> {
        if !channel.has_knowledge {
            return Ok(Vec::new());
        }
        let Some((_, latest)) = turns.iter().rev().find(|(customer, _)| *customer) else {
            return Ok(Vec::new());
        };
        let found =
            crate::store::knowledge::relevant(&self.pg, channel.id, latest, KNOWLEDGE_ENTRIES)
                .await
                .map_err(db("searching the knowledge base"))?;
        metrics::counter!("wafleet_knowledge_searches_total", "found" => if found.is_empty() { "none" } else { "some" })
            .increment(1);
        Ok(found)
    }

    /// Stores the reply and its parts together; false when it was already stored.
    async fn record(
        &self,
        ctx: &ReplyContext,
        reply: &NewReply<'_>,
        parts: Vec<(String, String)>,
        state: &str,
    ) -> Result<bool, Outcome> {
        self.writer
            .run(ReplyRecord::new(ctx, reply, parts, state))
            .await
            .map_err(|e| batch_outcome(&e, "storing the reply"))
    }

    /// Records that no answer of the bot's goes out for the message, and why (`suppressed`,
    /// `window_closed`, `superseded`).
    async fn record_no_answer(&self, ctx: &ReplyContext, outcome: &str) -> Result<bool, Outcome> {
        let nothing = NewReply {
            outcome,
            ..Default::default()
        };
        self.record(ctx, &nothing, Vec::new(), "pending").await
    }

    async fn hand_over(&self, job: &Job, ctx: &ReplyContext, reason: &str) -> Result<(), Outcome> {
        let pnid = job.conv.split(':').next();
        hand_over_and_publish(
            &self.pg,
            &self.redis,
            &self.keys,
            ctx.conversation_id,
            reason,
            Some(ctx.message_id),
            pnid,
        )
        .await?;
        Ok(())
    }

    /// Queues the send of what was produced (idempotent: the sender skips parts already sent).
    async fn follow_up(&self, job: &Job, ctx: &ReplyContext, outcome: &str) -> Result<(), Outcome> {
        let fields: Vec<(&str, String)> = match outcome {
            "produced" => vec![
                ("conv", job.conv.clone()),
                ("reply_to", ctx.message_id.to_string()),
            ],
            "handover" => {
                let ack: Option<(i64,)> = sqlx::query_as(
                    "SELECT id FROM outbound_messages WHERE reply_to = $1 AND kind = 'handover_ack' AND state = 'pending'",
                )
                .bind(ctx.message_id)
                .fetch_optional(&self.pg)
                .await
                .map_err(db("reading the acknowledgement"))?;
                match ack {
                    Some((id,)) => {
                        vec![("conv", job.conv.clone()), ("outbound_id", id.to_string())]
                    }
                    None => return Ok(()),
                }
            }
            _ => return Ok(()),
        };
        let mut con = self.redis.get().await.map_err(redis_down)?;
        let _: String = con
            .xadd(self.keys.outbox(job.partition), "*", &fields)
            .await
            .map_err(redis_down)?;
        Ok(())
    }
}

/// When to ask a transcriber that failed with `e` again: after `backoff`, or its `retry-after`
/// when longer, but never after more than `cap` (the model chain's `max_retry_after`): the whole
/// conversation waits behind the voice note, and a transcriber asking for an hour must not hold
/// the answer that long. Asked too early, it fails again and the note goes to the model unheard.
fn transcription_retry(e: &LlmError, backoff: Duration, cap: Duration) -> Duration {
    match e {
        LlmError::RateLimited { retry_after } | LlmError::Overloaded { retry_after } => retry_after
            .unwrap_or(backoff)
            .clamp(backoff, cap.max(backoff)),
        _ => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_waits_out_the_rest_of_its_gather_time() {
        use chrono::TimeZone;
        let at = Utc.timestamp_opt(1_700_000_000, 0).single().unwrap();
        let ms = chrono::Duration::milliseconds;
        let gather = Duration::from_millis(2500);
        assert_eq!(
            gather_left(Duration::ZERO, at, at),
            None,
            "no gather, no wait"
        );
        assert_eq!(
            gather_left(gather, at, at + ms(1000)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(gather_left(gather, at, at + ms(2500)), None);
        assert_eq!(gather_left(gather, at, at + ms(9000)), None);
        assert_eq!(
            gather_left(gather, at, at - ms(4000)),
            Some(gather),
            "a clock behind the database's waits the gather time, no more"
        );
    }

    #[test]
    fn a_transcribers_retry_after_is_waited_out_up_to_the_cap() {
        let (backoff, cap) = (Duration::from_secs(2), Duration::from_secs(10));
        let limited = |secs| LlmError::RateLimited {
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            transcription_retry(&limited(5), backoff, cap),
            Duration::from_secs(5)
        );
        assert_eq!(transcription_retry(&limited(1), backoff, cap), backoff);
        assert_eq!(
            transcription_retry(&limited(3600), backoff, cap),
            cap,
            "an hour's retry-after does not hold the conversation an hour"
        );
        assert_eq!(
            transcription_retry(&LlmError::Overloaded { retry_after: None }, backoff, cap),
            backoff
        );
        assert_eq!(
            transcription_retry(&LlmError::Timeout, Duration::from_secs(16), cap),
            Duration::from_secs(16),
            "a backoff above the cap stays as it is"
        );
    }

    #[test]
    fn meta_failing_to_serve_a_file_may_pass_when_it_is_down_or_throttling() {
        use crate::graph::MediaError;
        let rejected = |http_status, code| MediaError::Rejected { http_status, code };
        assert!(may_pass(&MediaError::Transport("reset".into())));
        assert!(!may_pass(&MediaError::Invalid(
            "the media URL is not https".into()
        )));
        assert!(may_pass(&rejected(503, 2)));
        assert!(may_pass(&rejected(429, 0)));
        assert!(may_pass(&rejected(400, 130429)));
        assert!(may_pass(&rejected(400, 80007)));
        assert!(!may_pass(&rejected(400, 100)));
        assert!(!may_pass(&rejected(401, 190)));
        assert!(!may_pass(&MediaError::TooLarge { size: 2, max: 1 }));
        assert!(!may_pass(&MediaError::Unsupported("audio/amr".into())));
    }

    #[test]
    fn a_card_typed_across_two_messages_is_redacted_where_it_starts() {
        let redactor = wafleet_core::pii::Redactor::new();
        let mut turns = vec![
            (true, "hola".to_string()),
            (false, "¿en qué te ayudo?".to_string()),
            (true, "mi tarjeta es 4111 1111".to_string()),
            (false, "¿y el resto?".to_string()),
            (true, "1111 1111 gracias".to_string()),
            (true, "y mi pedido 100234567".to_string()),
        ];
        redact_across_turns(&redactor, &mut turns);
        let texts: Vec<&str> = turns.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                "hola",
                "¿en qué te ayudo?",
                "mi tarjeta es [CARD]",
                "¿y el resto?",
                " gracias",
                "y mi pedido 100234567"
            ]
        );
        // A voice note's transcript or an image's caption is read after its marker.
        let mut marked = vec![
            (true, "mi tarjeta es 4111 1111".to_string()),
            (true, "[voice note] 1111 1111 gracias".to_string()),
            (true, "[document: a.pdf] 4111 1111".to_string()),
            (true, "[image] 1111 1111".to_string()),
        ];
        redact_across_turns(&redactor, &mut marked);
        let texts: Vec<&str> = marked.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                "mi tarjeta es [CARD]",
                "[voice note]  gracias",
                "[document: a.pdf] [CARD]",
                "[image] "
            ]
        );
        // Turns that give nothing away together are left as they are.
        let mut clean = vec![(true, "tengo 2".to_string()), (true, "3 cajas".to_string())];
        redact_across_turns(&redactor, &mut clean);
        assert_eq!(clean[0].1, "tengo 2");
        assert_eq!(clean[1].1, "3 cajas");
    }

    #[test]
    fn a_shared_locations_turn_is_left_whole_and_a_card_typed_around_it_is_still_found() {
        let redactor = wafleet_core::pii::Redactor::new();
        // Its name, address and coordinates are not what the customer typed: it is skipped
        // whole, so a card typed before and after it is one card, and the marker is not cut.
        let location = "[location: Local 12, [ADDRESS] (19.4326, -99.1332)]";
        let mut turns = vec![
            (true, "mi tarjeta es 4111 1111".to_string()),
            (true, location.to_string()),
            (true, "1111 1111 gracias".to_string()),
        ];
        redact_across_turns(&redactor, &mut turns);
        let texts: Vec<&str> = turns.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts, ["mi tarjeta es [CARD]", location, " gracias"]);
    }

    #[test]
    fn a_turn_that_held_only_the_rest_of_a_number_reads_its_placeholder_and_is_never_empty() {
        let redactor = wafleet_core::pii::Redactor::new();
        let mut turns = vec![
            (true, "mi tarjeta es 4111 1111".to_string()),
            (false, "¿y el resto?".to_string()),
            (true, "1111 1111".to_string()),
            (true, "¿la pueden cobrar?".to_string()),
        ];
        redact_across_turns(&redactor, &mut turns);
        let texts: Vec<&str> = turns.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                "mi tarjeta es [CARD]",
                "¿y el resto?",
                "[CARD]",
                "¿la pueden cobrar?"
            ]
        );
        // Typed over three turns, the middle one and the last one held only digits.
        let mut three = vec![
            (true, "4111 1111".to_string()),
            (true, " 1111 ".to_string()),
            (true, "1111".to_string()),
        ];
        redact_across_turns(&redactor, &mut three);
        assert!(three.iter().all(|(_, t)| !t.trim().is_empty()), "{three:?}");
        assert_eq!(three[0].1, "[CARD]");
    }

    #[test]
    fn nul_characters_are_taken_out_and_other_text_is_borrowed_as_it_is() {
        assert_eq!(without_nul("ho\0la\0"), "hola");
        assert!(matches!(
            without_nul("hola"),
            std::borrow::Cow::Borrowed("hola")
        ));
    }

    #[test]
    fn the_window_is_measured_from_the_last_customer_message_with_a_margin() {
        let now = Utc::now();
        let h = |n: i64| Some(now - chrono::Duration::hours(n));
        assert!(window_open(h(1), now));
        assert!(window_open(h(23), now));
        assert!(
            !window_open(Some(now - chrono::Duration::minutes(23 * 60 + 55)), now),
            "inside the margin"
        );
        assert!(!window_open(h(25), now));
        assert!(!window_open(None, now));
        assert!(
            window_open(Some(now + chrono::Duration::minutes(1)), now),
            "clock skew: a future timestamp is open"
        );
    }
}
