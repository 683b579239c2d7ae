//! What human agents do through wafleet: take a conversation from the bot, write to the customer,
//! and give the conversation back (`wafleetctl conversation take|reply|release`).
//!
//! - **Take**: the conversation becomes the human's at once. The bot answers none of the
//!   customer's later messages, and a reply the model is still writing is suppressed at the
//!   sender's check right before the send. Dashboards receive the change like any handover
//!   (reason `agent`).
//! - **Reply**: the agent's text, sent as written (no Markdown conversion) and split at 4,096
//!   characters, is recorded as outbound parts of kind `agent` and queued for the sender stage,
//!   which sends it like the bot's replies: within the fleet-wide rate limits, at most once once
//!   Meta accepted it, with delivery statuses recorded. Only while a human owns the conversation
//!   and the customer's 24-hour window is open (a free-form message outside it would be refused
//!   by Meta). A request carries a reference: sent again with the same one (a retry after a
//!   timeout), it records and sends nothing new. The model never sees an agent's messages: the
//!   history it gets leaves out what humans handled.
//! - **Files, buttons, lists** ([`reply_content`]): the same, one part whose payload is the Graph
//!   API's message (an image by link or media id, reply buttons, a list), checked against Meta's
//!   limits first ([`wafleet_core::outgoing`]); the transcript shows it as a line
//!   (`[image] caption`, `¿Confirmas? [buttons: Sí | No]`).
//! - **Release**: the bot answers the customer's next message again. A conversation in which
//!   nothing happened for its channel's `human_release_after_secs` (default a day) goes back to
//!   the bot by itself ([`release_idle_loop`], in every worker), so a forgotten conversation does
//!   not leave its customer without answers for good.

use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;
use sqlx::PgPool;
use wafleet_core::format::split::{WHATSAPP_MAX_CHARS, split_message};
use wafleet_core::format::template::{Button, Header, Params, TemplateText};

use crate::stages::{OwnerChange, publish_handover, publish_handover_once};
use crate::store::agents::{AgentMessage, Recorded, record_agent_message};
use crate::store::conversations;
use crate::streams::Keys;

/// Why an agent's request was refused. The messages are written for the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("there is no conversation {0}")]
    NoConversation(i64),
    #[error("conversation {0}'s customer was erased: there is nobody to write to")]
    Erased(i64),
    #[error(
        "conversation {0}'s number now belongs to someone else (its customer's number went to \
         another customer): nothing can be sent there"
    )]
    NumberMoved(i64),
    #[error(
        "conversation {0} is with the bot: take it first (wafleetctl conversation take {0}), or \
         the bot and you would both answer"
    )]
    WithTheBot(i64),
    #[error(
        "the customer's last message in conversation {id} {age}: WhatsApp takes free-form \
         messages only within 24 hours of it; only an approved template reaches them now \
         (wafleetctl conversation template {id} NAME --language CODE)"
    )]
    WindowClosed { id: i64, age: String },
    #[error("the message is empty")]
    Empty,
    /// A file, buttons or a list Meta would refuse (a limit broken), naming the field.
    #[error("{0}")]
    Invalid(#[from] wafleet_core::outgoing::Invalid),
    #[error("a template needs its name and language")]
    NoTemplateName,
    /// A template's header or buttons given wrong, or not what the approved template takes (it
    /// lacks a parameter the template needs, or gives one it does not have: Meta would refuse
    /// the send with 132000). Names each problem.
    #[error("{0}")]
    TemplateMismatch(String),
    /// Not echoed: it is a customer's phone.
    #[error("the customer must be given by their phone number: 8 to 15 digits, in any notation")]
    BadPhone(String),
    #[error("there is no channel {0}")]
    NoChannel(String),
    #[error("channel {0} serves only the customers on its allowlist, and this one is not")]
    NotAllowed(String),
    #[error(
        "reference {reference:?} was already used in conversation {id} for another text: use a \
         new reference for a new message"
    )]
    ReferenceTaken { id: i64, reference: String },
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis: {0}")]
    RedisPool(#[from] deadpool_redis::PoolError),
}

/// A human takes the conversation from the bot. Returns whether it changed (false when a human
/// had it already).
pub async fn take(
    pg: &PgPool,
    con: &mut impl ConnectionLike,
    keys: &Keys,
    conversation_id: i64,
) -> Result<bool, AgentError> {
    change_owner(pg, con, keys, conversation_id, Owner::Human).await
}

/// A human gives the conversation back to the bot. Returns whether it changed (false when the
/// bot had it already).
pub async fn release(
    pg: &PgPool,
    con: &mut impl ConnectionLike,
    keys: &Keys,
    conversation_id: i64,
) -> Result<bool, AgentError> {
    change_owner(pg, con, keys, conversation_id, Owner::Bot).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Human,
    Bot,
}

/// Gives the conversation to `to` in Postgres; dashboards are told when it changed.
async fn change_owner(
    pg: &PgPool,
    con: &mut impl ConnectionLike,
    keys: &Keys,
    conversation_id: i64,
    to: Owner,
) -> Result<bool, AgentError> {
    let pnid = conversations::phone_number_id(pg, conversation_id)
        .await?
        .ok_or(AgentError::NoConversation(conversation_id))?;
    let mut tx = pg.begin().await?;
    let (changed, kind) = match to {
        Owner::Human => {
            let changed =
                conversations::hand_over(&mut tx, conversation_id, "agent", None, None).await?;
            // Also when a human had it already: an agent picking up a conversation idle for
            // almost a day must not see it given back to the bot a minute later.
            crate::store::agents::touch_agent_activity(&mut tx, conversation_id).await?;
            (changed, "handover")
        }
        Owner::Bot => (
            conversations::release_in(&mut tx, conversation_id).await?,
            "release",
        ),
    };
    // Announced before the commit: when Redis refuses the event, the change is rolled back and
    // the request fails, so its retry makes the change and announces it. (Announced after the
    // commit, the retry found nothing to change and dashboards never learnt of it.) A commit
    // that fails after the event went out leaves an event for a change not made; the request
    // fails and its retry makes it.
    if changed {
        announce_owner_change(con, keys, kind, "agent", conversation_id, &pnid).await?;
    }
    tx.commit().await?;
    if changed {
        count_owner_change(kind, "agent");
        tracing::info!(
            conversation_id,
            kind,
            "an agent changed who answers the conversation"
        );
    }
    Ok(changed)
}

fn count_owner_change(kind: &'static str, reason: &'static str) {
    let counter = if kind == "handover" {
        "wafleet_handovers_total"
    } else {
        "wafleet_releases_total"
    };
    metrics::counter!(counter, "reason" => reason).increment(1);
}

/// Tells dashboards who answers the conversation now (the handover stream and channel), after
/// an owner change in Postgres. (Nothing cached needs dropping: the conversation stage caches a
/// conversation's id and session, never its owner, which it reads where it stores each message.)
async fn announce_owner_change(
    con: &mut impl ConnectionLike,
    keys: &Keys,
    kind: &'static str,
    reason: &'static str,
    conversation_id: i64,
    pnid: &str,
) -> Result<(), AgentError> {
    let change = OwnerChange {
        kind,
        reason,
        conversation_id,
        message_id: None,
        phone_number_id: Some(pnid),
    };
    publish_handover(con, keys, &change).await?;
    Ok(())
}

/// How many idle conversations one pass of [`release_idle`] gives back at most.
const RELEASE_BATCH: i64 = 500;

/// Gives back to the bot the human-owned conversations that have been idle for their channel's
/// `human_release_after_secs` (see [`crate::store::agents::release_idle`]), then tells dashboards
/// (`release`, reason `idle`). Returns how many were given back. Safe in every worker at once:
/// each conversation is given back by one of them.
///
/// A release is recorded unannounced and marked once its event is on the dashboard stream, so
/// one whose event Redis refused (or whose pass stopped first) is announced by a later pass,
/// first thing, with the time it was made; an event is appended once however many passes try
/// ([`publish_handover_once`], keyed on the release). A release the conversation has changed
/// hands since (an agent took it again) is not announced that late: the later change's event
/// tells dashboards who answers, and the stale release after it would tell them otherwise.
pub async fn release_idle(
    pg: &PgPool,
    con: &mut impl ConnectionLike,
    keys: &Keys,
) -> Result<usize, AgentError> {
    loop {
        let late = crate::store::agents::unannounced_releases(pg, RELEASE_BATCH).await?;
        let announced = announce_releases(pg, con, keys, &late).await?;
        if (late.len() as i64) < RELEASE_BATCH || announced < late.len() {
            break;
        }
    }
    // Merges and number moves whose events a conversation stage did not get out (Redis refused
    // them). Refused, they wait for the next pass; the idle releases below go on regardless.
    match crate::stages::announce_late_number_changes(pg, con, keys, RELEASE_BATCH).await {
        Ok(()) => {}
        Err(crate::stages::AnnounceError::Db(e)) => return Err(AgentError::Db(e)),
        Err(crate::stages::AnnounceError::Redis(e)) => {
            metrics::counter!("wafleet_idle_release_errors_total").increment(1);
            tracing::warn!(
                error = %e,
                "a number change's event was not announced; the next pass tries again"
            );
        }
    }
    let mut total = 0;
    loop {
        let released = crate::store::agents::release_idle(pg, RELEASE_BATCH).await?;
        for r in &released {
            tracing::info!(
                conversation_id = r.conversation_id,
                "a conversation idle with a human went back to the bot"
            );
            count_owner_change("release", "idle");
        }
        announce_releases(pg, con, keys, &released).await?;
        total += released.len();
        if (released.len() as i64) < RELEASE_BATCH {
            return Ok(total);
        }
    }
}

/// Puts the idle releases' events on the dashboard stream and records in Postgres which went
/// (and which need not, being superseded); answers how many are settled. Released already: a
/// failed announcement is counted and logged, and does not keep the others from theirs.
async fn announce_releases(
    pg: &PgPool,
    con: &mut impl ConnectionLike,
    keys: &Keys,
    releases: &[crate::store::agents::Released],
) -> Result<usize, AgentError> {
    let mut settled = Vec::with_capacity(releases.len());
    for r in releases {
        if r.superseded {
            tracing::info!(
                conversation_id = r.conversation_id,
                "an idle release whose event did not go out is not announced: the conversation \
                 changed hands since"
            );
            settled.push(r.event_id);
            continue;
        }
        let change = OwnerChange {
            kind: "release",
            reason: "idle",
            conversation_id: r.conversation_id,
            message_id: None,
            phone_number_id: Some(&r.phone_number_id),
        };
        let once = format!("release:{}", r.event_id);
        match publish_handover_once(con, keys, &change, r.at, &once).await {
            Ok(_) => settled.push(r.event_id),
            Err(e) => {
                metrics::counter!("wafleet_idle_release_errors_total").increment(1);
                tracing::warn!(
                    conversation_id = r.conversation_id,
                    error = %e,
                    "an idle release was made but dashboards were not told; the next pass tries again"
                );
            }
        }
    }
    if !settled.is_empty() {
        crate::store::agents::announced(pg, &settled).await?;
    }
    Ok(settled.len())
}

/// Runs [`release_idle`] at once, then every `every`, until `stop`; then announces the failures
/// and recoveries of agents' parts their stage did not get out
/// ([`crate::stages::announce_late_agent_parts`], with the sender's `policy`). A pass that fails
/// (Postgres or Redis away) is logged and counted in `wafleet_idle_release_errors_total`; the
/// next pass finds what it left, releases and parts whose events did not go out included.
pub async fn release_idle_loop(
    pg: PgPool,
    redis: deadpool_redis::Pool,
    keys: Keys,
    policy: std::sync::Arc<crate::stages::sender::SendPolicy>,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let pass = async {
            let mut con = redis.get().await?;
            release_idle(&pg, &mut con, &keys).await
        };
        if let Err(e) = pass.await {
            metrics::counter!("wafleet_idle_release_errors_total").increment(1);
            tracing::warn!(error = %e, "giving idle conversations back to the bot failed; next try later");
        }
        let sweep = async {
            let mut con = redis.get().await.map_err(anyhow::Error::from)?;
            crate::stages::announce_late_agent_parts(
                &pg,
                &mut con,
                &keys,
                &policy,
                crate::stages::LATE_PART_QUIET,
                RELEASE_BATCH,
            )
            .await
            .map_err(anyhow::Error::from)
        };
        if let Err(e) = sweep.await {
            metrics::counter!("wafleet_idle_release_errors_total").increment(1);
            tracing::warn!(error = %e, "announcing agents' failed or recovered parts failed; next try later");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// An agent's message for the customer of a conversation.
#[derive(Debug, Clone)]
pub struct Reply<'a> {
    pub conversation_id: i64,
    pub text: &'a str,
    /// Makes the request idempotent within the conversation (a retry with the same reference
    /// sends nothing twice).
    pub reference: &'a str,
    /// Who wrote it, kept with the message.
    pub agent: Option<&'a str>,
}

/// What [`reply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// The outbound parts, in order.
    pub part_ids: Vec<i64>,
    /// Their send states (`pending`, `sending`, `accepted`, `failed`…) when recorded or found.
    pub states: Vec<String>,
    /// Whether they were recorded by this request (else by an earlier one with the reference).
    pub fresh: bool,
    /// Whether a send job was queued by this request.
    pub queued: bool,
}

/// Records an agent's message and queues its send. A request repeated with the same reference
/// records nothing new; it queues the send again while a part is still `pending` or `sending`
/// (the first request may have failed between recording and queueing; the sender skips parts
/// already sent), and not once every part is settled (accepted or failed: the states say which).
pub async fn reply(
    pg: &PgPool,
    con: &mut impl ConnectionLike,
    keys: &Keys,
    reply: &Reply<'_>,
) -> Result<Queued, AgentError> {
    let text = reply.text.trim();
    if text.is_empty() {
        return Err(AgentError::Empty);
    }
    let parts = split_message(text, WHATSAPP_MAX_CHARS);
    let msg = AgentMessage {
        conversation_id: reply.conversation_id,
        kind: "agent",
        reference: reply.reference,
        agent: reply.agent,
        parts: &parts,
        any_owner: false,
        history_text: None,
        payload: None,
    };
    record_and_queue(pg, con, keys, &msg).await
}

/// An agent's message that is not plain text: a file, or a text with reply buttons or a list.
#[derive(Debug, Clone)]
pub struct ContentReply<'a> {
    pub conversation_id: i64,
    pub content: wafleet_core::outgoing::Content<'a>,
    pub reference: &'a str,
    pub agent: Option<&'a str>,
}

/// Records an agent's file, buttons or list and queues its send, as [`reply`] does for text (a
/// human must own the conversation, the 24-hour window must be open, the reference makes it
/// idempotent). Meta's limits are checked first ([`AgentError::Invalid`] names the field). One
/// part of kind `agent`: its body is the transcript's line (`[image] caption`), its payload the
/// Graph API's message fields the sender sends.
pub async fn reply_content(
    pg: &PgPool,
    con: &mut impl ConnectionLike,
    keys: &Keys,
    r: &ContentReply<'_>,
) -> Result<Queued, AgentError> {
    r.content.check()?;
    let parts = [r.content.rendering()];
    let payload = r.content.graph_message();
    let msg = AgentMessage {
        conversation_id: r.conversation_id,
        kind: "agent",
        reference: r.reference,
        agent: r.agent,
        parts: &parts,
        any_owner: false,
        history_text: None,
        payload: Some(&payload),
    };
    record_and_queue(pg, con, keys, &msg).await
}

/// An approved template an agent sends to re-engage a customer (also outside the 24-hour window,
/// where nothing else reaches them).
#[derive(Debug, Clone)]
pub struct Template<'a> {
    pub conversation_id: i64,
    /// The template's name as approved in the business account.
    pub name: &'a str,
    /// Its language code, e.g. `es`, `en_US`.
    pub language: &'a str,
    /// The body's parameters (text only): `{{1}}`, `{{2}}`… in order, or by name
    /// (`{{order_id}}`) for a template created with named parameters.
    pub body_params: &'a Params,
    /// The header's media (an invoice's PDF) or its text's parameter, for a template whose
    /// header takes one.
    pub header: Option<&'a Header>,
    /// The buttons' parameters: a URL button's suffix, a quick reply's payload, a coupon code.
    pub buttons: &'a [Button],
    /// The template as Meta lists it, when it could be read ([`template_definition`]): the
    /// send is checked against it (its status, its parameters) before anything is recorded.
    pub definition: Option<&'a TemplateText>,
    pub reference: &'a str,
    pub agent: Option<&'a str>,
}

/// The Graph API's `template` object of `t`, its `components` built by
/// [`wafleet_core::format::template::components`].
pub fn template_object(t: &Template<'_>) -> serde_json::Value {
    let mut object = serde_json::json!({"name": t.name, "language": {"code": t.language}});
    let components = wafleet_core::format::template::components(t.header, t.body_params, t.buttons);
    if !components.is_empty() {
        object["components"] = serde_json::Value::Array(components);
    }
    object
}

/// What the model reads of a template the bot answers after until Meta's wording is known: the
/// template in a line, redacted (`[template: order_shipped] [document invoice.pdf] #1042 |
/// martes [button 0: 1042]`, see [`wafleet_core::format::template::describe`]).
pub fn template_history_text(t: &Template<'_>) -> String {
    static REDACTOR: std::sync::LazyLock<wafleet_core::pii::Redactor> =
        std::sync::LazyLock::new(wafleet_core::pii::Redactor::new);
    let line = wafleet_core::format::template::describe(&template_object(t));
    debug_assert!(line.starts_with(crate::store::replies::TEMPLATE_MARKER));
    REDACTOR.redact(&line).text
}

/// The template `name` in `language` of channel `phone_number_id`'s business account, as Meta
/// lists it with its status (through `wordings`' cache, which a template's status update empties
/// in every process), to check a send against before it is recorded.
/// `None` when it cannot be read: no `waba_id` or access token stored, no encryption key to open
/// the token, Meta not answering within [`crate::stages::wording::LOOKUP_TIMEOUT`], or Meta not
/// listing the template. The send then goes unchecked, and a mismatch fails it at Meta (132000,
/// a `message_failed` event). `wafleet_template_checks_total{result}` counts each outcome.
pub async fn template_definition(
    pg: &PgPool,
    wordings: &crate::stages::wording::Wordings,
    graph: &crate::graph::GraphClient,
    cipher: Option<&crate::crypto::Cipher>,
    phone_number_id: &str,
    name: &str,
    language: &str,
) -> Result<Option<TemplateText>, AgentError> {
    let unchecked = |result: &'static str| {
        metrics::counter!("wafleet_template_checks_total", "result" => result).increment(1);
        Ok(None)
    };
    let Some(cipher) = cipher else {
        return unchecked("no_account");
    };
    let asked = [phone_number_id.to_string()];
    let summary = crate::store::channels::summaries(pg, &asked).await?.pop();
    let Some(waba_id) = summary.and_then(|c| c.waba_id) else {
        return unchecked("no_account");
    };
    let token = match crate::store::channels::access_token(pg, cipher, phone_number_id).await {
        Ok(Some(token)) => token,
        Ok(None) => return unchecked("no_account"),
        Err(e) => {
            tracing::warn!(
                channel = phone_number_id,
                error = format!("{e:#}"),
                "a template's parameters are not checked: the channel's token does not open"
            );
            return unchecked("no_account");
        }
    };
    match wordings
        .definition(graph, &waba_id, token.expose(), name, language)
        .await
    {
        Ok(Some(definition)) => Ok(Some(definition)),
        Ok(None) => unchecked("unknown"),
        Err(reason) => {
            tracing::warn!(
                channel = phone_number_id,
                reason,
                "a template's parameters are not checked: Meta did not list the template"
            );
            unchecked("failed")
        }
    }
}

/// Records an agent's template and queues its send, as [`reply`] does for a message; only the
/// 24-hour window is not required. Meta refuses a template it does not know or whose parameters
/// do not match (132xxx): the part fails with Meta's reason, not retried.
pub async fn template(
    pg: &PgPool,
    con: &mut impl ConnectionLike,
    keys: &Keys,
    t: &Template<'_>,
) -> Result<Queued, AgentError> {
    queue_template(pg, con, keys, t, false, false).await
}

impl Template<'_> {
    /// A template needs its name and language, a well-formed header and buttons, and, when the
    /// template Meta lists is known, a status Meta sends (not paused, disabled or rejected) and
    /// what it takes: no parameter missing, none extra.
    fn check(&self) -> Result<(), AgentError> {
        use wafleet_core::format::template;
        if self.name.trim().is_empty() || self.language.trim().is_empty() {
            return Err(AgentError::NoTemplateName);
        }
        template::check_request(self.header, self.body_params, self.buttons)
            .map_err(AgentError::TemplateMismatch)?;
        if let Some(definition) = self.definition {
            if let Err(stopped) = template::sendable(self.name, definition) {
                metrics::counter!("wafleet_template_checks_total", "result" => "stopped")
                    .increment(1);
                return Err(AgentError::TemplateMismatch(stopped));
            }
            let checked = template::check(
                self.name,
                definition,
                self.header,
                self.body_params,
                self.buttons,
            );
            let result = if checked.is_ok() { "fits" } else { "refused" };
            metrics::counter!("wafleet_template_checks_total", "result" => result).increment(1);
            checked.map_err(AgentError::TemplateMismatch)?;
        }
        Ok(())
    }
}

/// Records a template (while a human owns the conversation, or whoever does with `any_owner`)
/// and queues its send. `for_model`: the bot answers after it, so the model reads it (when the
/// bot owns the conversation as it is recorded).
async fn queue_template(
    pg: &PgPool,
    con: &mut impl ConnectionLike,
    keys: &Keys,
    t: &Template<'_>,
    any_owner: bool,
    for_model: bool,
) -> Result<Queued, AgentError> {
    t.check()?;
    let parts = [template_object(t).to_string()];
    let history_text = for_model.then(|| template_history_text(t));
    let msg = AgentMessage {
        conversation_id: t.conversation_id,
        kind: "template",
        reference: t.reference,
        agent: t.agent,
        parts: &parts,
        any_owner,
        history_text: history_text.as_deref(),
        payload: None,
    };
    record_and_queue(pg, con, keys, &msg).await
}

/// Who answers a customer who replies to a business's first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answerer {
    /// The conversation is taken by a human (an agent following up).
    Human,
    /// It stays with whoever has it: the bot for a new one (an order update the bot can talk
    /// about).
    Bot,
}

/// A template a business sends to a customer by their phone, whether or not they ever wrote:
/// how a conversation is started (the 24-hour window is closed until the customer answers).
#[derive(Debug, Clone)]
pub struct Outreach<'a> {
    pub phone_number_id: &'a str,
    /// The customer's phone in any notation (`+57 301 600-0000`).
    pub to: &'a str,
    pub name: &'a str,
    pub language: &'a str,
    pub body_params: &'a Params,
    pub header: Option<&'a Header>,
    pub buttons: &'a [Button],
    pub definition: Option<&'a TemplateText>,
    /// Idempotent within the customer's conversation.
    pub reference: &'a str,
    pub agent: Option<&'a str>,
    pub answerer: Answerer,
}

/// Finds or makes the customer's conversation, takes it for a human when asked, records the
/// template and queues its send; answers the conversation id with what [`template`] answers.
/// Repeated with the same reference, it records and sends nothing twice, also after the
/// customer's data was erased ([`AgentError::Erased`]: no conversation is made for it).
pub async fn outreach(
    pg: &PgPool,
    con: &mut impl ConnectionLike,
    keys: &Keys,
    o: &Outreach<'_>,
) -> Result<(i64, Queued), AgentError> {
    use crate::store::agents::{Opened, open_conversation};
    let mut t = Template {
        conversation_id: 0,
        name: o.name,
        language: o.language,
        body_params: o.body_params,
        header: o.header,
        buttons: o.buttons,
        definition: o.definition,
        reference: o.reference,
        agent: o.agent,
    };
    // Before a conversation is made for it.
    t.check()?;
    let wa_id = crate::erasure::normalise_customer(o.to)
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()) && (8..=15).contains(&d.len()))
        .ok_or_else(|| AgentError::BadPhone(o.to.to_string()))?;
    let id = match open_conversation(pg, o.phone_number_id, &wa_id, o.reference).await? {
        Opened::Conversation(id) => id,
        Opened::NoChannel => return Err(AgentError::NoChannel(o.phone_number_id.into())),
        Opened::NotAllowed => return Err(AgentError::NotAllowed(o.phone_number_id.into())),
        // The retry of a request made before the customer's data was erased.
        Opened::Erased(id) => return Err(AgentError::Erased(id)),
    };
    t.conversation_id = id;
    // Recorded whoever owns the conversation, and only then taken: a request refused (a
    // reference already used for another template) takes nothing, and a retry after an agent
    // gave the conversation back does not take it again. A retry of a request that recorded the
    // template and failed before the take takes it, also when the template went out meanwhile:
    // what tells is whether the owner changed since the template was recorded.
    let queued = queue_template(pg, con, keys, &t, true, o.answerer == Answerer::Bot).await?;
    if o.answerer == Answerer::Human {
        let changed_since = match queued.part_ids.first() {
            Some(part) if !queued.fresh => {
                crate::store::agents::owner_changed_since(pg, id, *part).await?
            }
            _ => false,
        };
        if !changed_since {
            take(pg, con, keys, id).await?;
        }
    }
    Ok((id, queued))
}

/// What [`record_agent_message`] answered for an agent's message to conversation `id` with
/// `reference`: its parts (ids, send states, recorded now, the conversation's key), or the error
/// that says why it was refused.
fn recorded_or_refused(
    id: i64,
    reference: &str,
    recorded: Recorded,
    now: DateTime<Utc>,
) -> Result<(Vec<i64>, Vec<String>, bool, String), AgentError> {
    match recorded {
        Recorded::Parts {
            ids,
            states,
            fresh,
            conversation_key,
        } => Ok((ids, states, fresh, conversation_key)),
        Recorded::NoConversation => Err(AgentError::NoConversation(id)),
        Recorded::Erased => Err(AgentError::Erased(id)),
        Recorded::NumberMoved => Err(AgentError::NumberMoved(id)),
        Recorded::WithTheBot => Err(AgentError::WithTheBot(id)),
        Recorded::WindowClosed { last } => {
            let age = match last {
                Some(t) => format!("is {} hours old", (now - t).num_hours()),
                None => "is unknown".to_string(),
            };
            Err(AgentError::WindowClosed { id, age })
        }
        Recorded::ReferenceTaken => Err(AgentError::ReferenceTaken {
            id,
            reference: reference.to_string(),
        }),
    }
}

/// Refuses, as recording it would, an agent's new message of `kind` (`agent`: text, a file,
/// buttons, a list) to conversation `id` that would be refused now: for work worth not doing
/// before such a refusal (`wafleetctl` uploads a file from the operator's disk only after it).
/// Recording checks again, so a conversation taken back meanwhile still refuses the message.
/// Taken: the conversation's business number (its `phone_number_id`), to upload with.
pub async fn check_writable(pg: &PgPool, id: i64, kind: &str) -> Result<String, AgentError> {
    let now = Utc::now();
    match crate::store::agents::refusal_now(pg, id, kind, now).await? {
        Ok(pnid) => Ok(pnid),
        Err(refused) => recorded_or_refused(id, "", refused, now).and_then(|_| {
            // A refusal is always an error; `recorded_or_refused` only says which.
            Err(AgentError::NoConversation(id))
        }),
    }
}

async fn record_and_queue(
    pg: &PgPool,
    con: &mut impl ConnectionLike,
    keys: &Keys,
    msg: &AgentMessage<'_>,
) -> Result<Queued, AgentError> {
    let now = Utc::now();
    let id = msg.conversation_id;
    let (ids, states, fresh, conv) = recorded_or_refused(
        id,
        msg.reference,
        record_agent_message(pg, msg, now).await?,
        now,
    )?;
    let queued = fresh || states.iter().any(|s| s == "pending" || s == "sending");
    if queued {
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let _: String = redis::cmd("XADD")
            .arg(keys.outbox(keys.partition_of(&conv)))
            .arg("*")
            .arg("conv")
            .arg(&conv)
            .arg("outbound_id")
            .arg(&list)
            .query_async(con)
            .await?;
    }
    if fresh {
        metrics::counter!("wafleet_agent_messages_total", "kind" => msg.kind.to_string())
            .increment(1);
        tracing::info!(
            conversation_id = id,
            parts = ids.len(),
            "an agent's message is queued"
        );
    }
    Ok(Queued {
        part_ids: ids,
        states,
        fresh,
        queued,
    })
}
