//! The jobs that travel on the Redis Streams.
//!
//! Ingest turns every update of a webhook POST into one [`Update`]; workers read them back. An
//! update carries the parsed essentials (what routing and dedup need without re-parsing) and the
//! raw JSON of the item exactly as Meta sent it, so unknown message types and unknown fields
//! survive for later stages and for inspection. A message's text is not carried beside it: the
//! stage that needs it reads it from the raw item ([`InboundMessage::text`]).
//!
//! Two derived keys decide how an update is stored (see `wafleet::streams` for the key layout):
//! - [`Update::dedup_key`]: Meta redelivers for up to 7 days; inbound messages (and the business
//!   app's echoes) are unique on `(phone_number_id, wamid)`, statuses on `(wamid, status)`. Items without an id are keyed by a
//!   digest of their raw JSON, so an identical redelivery is still recognised.
//! - [`Update::conversation_key`]: every update of one customer on one business number maps to the
//!   same key, hence the same stream partition, which is what keeps a conversation in order.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// Version of the envelope format, written with every entry. Readers do not check it today: a
/// change of format so far has been one that older entries still read under (README: the entry
/// fields).
pub const ENVELOPE_VERSION: u32 = 1;

/// One update from a webhook POST.
///
/// Serialised externally tagged (`{"message": {...}}`): internally tagged enums buffer their
/// content, which cannot carry the borrowed-free `RawValue` of the raw item.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Update {
    Message(InboundMessage),
    Status(StatusUpdate),
    /// A `value.errors[]` item: a system, app or account problem not tied to one message.
    Error(ValueError),
    /// A change of any field other than `messages` (templates, account, quality…).
    Event(FieldEvent),
    /// A message a person wrote to a customer from the WhatsApp Business app on the phone, on a
    /// number the Cloud API shares with it (coexistence): a `smb_message_echoes` change.
    Echo(BusinessEcho),
}

/// Where an update came from: the business number (`phone_number_id`, what we route by) and its
/// WhatsApp Business Account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub phone_number_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_phone_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waba_id: Option<String>,
}

/// An inbound customer message (`value.messages[]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboundMessage {
    pub origin: Origin,
    /// The wamid Meta gave the message.
    pub wamid: String,
    /// Sender's phone (`from` / `contacts[].wa_id`); absent for username users (BSUID era).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wa_id: Option<String>,
    /// Business-scoped user id (`from_user_id` / `contacts[].user_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_name: Option<String>,
    /// `messages[].timestamp`, Unix seconds: when the customer sent it. The 24-hour window is
    /// measured from this, never from when we received it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// The message type as Meta names it; unknown types are kept as they come.
    pub message_type: String,
    /// The wamid this message replies to (`context.id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
    /// The message object exactly as received. Its text is read from here
    /// ([`InboundMessage::text`]).
    pub raw: Box<RawValue>,
    /// The text, in an entry written before it was read from `raw` (ingest now leaves it out);
    /// kept, and preferred, so such an entry reads exactly as it did.
    #[serde(default, rename = "text", skip_serializing_if = "Option::is_none")]
    pub legacy_text: Option<String>,
}

/// A customer's new identifiers, announced by a `system` message (reference A.4, A.7): a new
/// phone number (`user_changed_number`, `system.wa_id`; their business-scoped id changes with
/// it, given as `system.user_id` when Meta sends it) or a new business-scoped id alone
/// (`user_changed_user_id`, `system.user_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityChange {
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
}

impl InboundMessage {
    /// The human-readable text of the message, where it has one: a text body, a media caption,
    /// the title of a tapped button or list row, an order's note. Read from the raw item, which
    /// ingest checked when it took the message, so the entry does not carry the text twice
    /// (README: Figures).
    pub fn text(&self) -> Option<String> {
        self.legacy_text
            .clone()
            .or_else(|| crate::webhook::message_text(&self.raw))
    }

    /// The identity change this message announces, if it is one.
    pub fn identity_change(&self) -> Option<IdentityChange> {
        #[derive(Deserialize)]
        struct Raw {
            system: Option<System>,
        }
        #[derive(Deserialize)]
        struct System {
            #[serde(rename = "type")]
            kind: Option<String>,
            wa_id: Option<String>,
            /// The older name of `wa_id`.
            new_wa_id: Option<String>,
            user_id: Option<String>,
        }
        if self.message_type != "system" {
            return None;
        }
        let system = serde_json::from_str::<Raw>(self.raw.get()).ok()?.system?;
        let non_empty = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        let change = match system.kind.as_deref()? {
            "user_changed_number" => IdentityChange {
                wa_id: non_empty(system.wa_id.or(system.new_wa_id)),
                user_id: non_empty(system.user_id),
            },
            "user_changed_user_id" => IdentityChange {
                wa_id: None,
                user_id: non_empty(system.user_id),
            },
            _ => return None,
        };
        (change.wa_id.is_some() || change.user_id.is_some()).then_some(change)
    }
}

/// A delivery status of one of our outbound messages (`value.statuses[]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub origin: Origin,
    pub wamid: String,
    /// `sent`, `delivered`, `read`, `failed`, `played`, or whatever Meta adds later.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_user_id: Option<String>,
    /// Echo of what we set when sending: our outbound record's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub biz_opaque_callback_data: Option<String>,
    /// First error of a `failed` status, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_title: Option<String>,
    pub raw: Box<RawValue>,
}

/// A `value.errors[]` item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValueError {
    pub origin: Origin,
    pub code: Option<i64>,
    pub title: Option<String>,
    pub raw: Box<RawValue>,
}

/// One `value.message_echoes[]` item of a `smb_message_echoes` change: what the business wrote to
/// a customer from the WhatsApp Business app. The shape is the one Meta documents for
/// Coexistence (the message object of an inbound message, plus `to`); our API reference does not
/// cover it, so only `id` and `to` are required and everything else is read leniently.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BusinessEcho {
    pub origin: Origin,
    /// The wamid of the business's message.
    pub wamid: String,
    /// The customer it was written to (`to`): their phone, as Meta writes a sender's `from`.
    pub to: String,
    /// `timestamp`, Unix seconds: when the business sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    pub message_type: String,
    /// The echo item exactly as received; its text is read from here ([`BusinessEcho::text`]).
    pub raw: Box<RawValue>,
    /// The text, in an entry written before it was read from `raw` ([`InboundMessage`]'s).
    #[serde(default, rename = "text", skip_serializing_if = "Option::is_none")]
    pub legacy_text: Option<String>,
}

impl BusinessEcho {
    /// The text of the message, where it has one: a text body or a media caption.
    pub fn text(&self) -> Option<String> {
        self.legacy_text
            .clone()
            .or_else(|| crate::webhook::echo_text(&self.raw))
    }
}

/// A change on a field other than `messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FieldEvent {
    pub waba_id: Option<String>,
    pub field: String,
    /// `change.value` as received.
    pub raw: Box<RawValue>,
}

/// The kind of an update, as written in the stream entry's `kind` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpdateKind {
    Message,
    Status,
    Error,
    Event,
    Echo,
}

impl UpdateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateKind::Message => "message",
            UpdateKind::Status => "status",
            UpdateKind::Error => "error",
            UpdateKind::Event => "event",
            UpdateKind::Echo => "echo",
        }
    }
}

impl Update {
    pub fn kind(&self) -> UpdateKind {
        match self {
            Update::Message(_) => UpdateKind::Message,
            Update::Status(_) => UpdateKind::Status,
            Update::Error(_) => UpdateKind::Error,
            Update::Event(_) => UpdateKind::Event,
            Update::Echo(_) => UpdateKind::Echo,
        }
    }

    /// Where the update came from, if it belongs to a business number.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            Update::Message(m) => Some(&m.origin),
            Update::Status(s) => Some(&s.origin),
            Update::Error(e) => Some(&e.origin),
            Update::Echo(e) => Some(&e.origin),
            Update::Event(_) => None,
        }
    }

    /// The business number the update belongs to, if it belongs to one.
    pub fn phone_number_id(&self) -> Option<&str> {
        self.origin().map(|o| o.phone_number_id.as_str())
    }

    /// How long a redelivery of this update is recognised, at most: `None` for messages and
    /// statuses (the configured dedup TTL: their wamid names one occurrence), and
    /// [`CONTENT_DEDUP_WINDOW`] for errors and events, whose key is their content because Meta
    /// gives them no id. Two occurrences of the same error (a 130429 "Rate limit hit" carries no
    /// id or time) are byte for byte alike, so a mark kept for days would hide every recurrence
    /// for days; within the window, a recurrence and a redelivery are one event.
    pub fn dedup_window(&self) -> Option<std::time::Duration> {
        match self {
            Update::Message(_) | Update::Status(_) | Update::Echo(_) => None,
            Update::Error(_) | Update::Event(_) => Some(CONTENT_DEDUP_WINDOW),
        }
    }

    /// The key that recognises a redelivery of this same update.
    pub fn dedup_key(&self) -> String {
        match self {
            Update::Message(m) => format!("m:{}:{}", m.origin.phone_number_id, m.wamid),
            Update::Status(s) => format!("s:{}:{}", s.wamid, s.status),
            Update::Echo(e) => format!("b:{}:{}", e.origin.phone_number_id, e.wamid),
            Update::Error(e) => format!("e:{}:{}", e.origin.phone_number_id, digest(&e.raw)),
            Update::Event(ev) => format!(
                "f:{}:{}:{}",
                ev.waba_id.as_deref().unwrap_or("-"),
                ev.field,
                digest(&ev.raw)
            ),
        }
    }

    /// The key of the conversation this update belongs to: business number + customer. Updates
    /// with no customer fall back to their own id, which spreads them evenly.
    pub fn conversation_key(&self) -> String {
        match self {
            Update::Message(m) => conversation_key(
                &m.origin.phone_number_id,
                m.wa_id.as_deref(),
                m.user_id.as_deref(),
                &m.wamid,
            ),
            Update::Status(s) => conversation_key(
                &s.origin.phone_number_id,
                s.recipient_id.as_deref(),
                s.recipient_user_id.as_deref(),
                &s.wamid,
            ),
            // The customer's conversation, as their own messages are keyed: the echo is taken in
            // order with what they write.
            Update::Echo(e) => {
                conversation_key(&e.origin.phone_number_id, Some(&e.to), None, &e.wamid)
            }
            Update::Error(e) => format!("{}:-", e.origin.phone_number_id),
            Update::Event(ev) => format!("waba:{}", ev.waba_id.as_deref().unwrap_or("-")),
        }
    }
}

/// How long an error or event is recognised as a redelivery (see [`Update::dedup_window`]).
pub const CONTENT_DEDUP_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// `phone_number_id:customer`, where the customer is the phone when known, else the BSUID.
///
/// The phone wins because Meta keeps sending it for customers we talk to. A customer first seen
/// by BSUID only and later with a phone (or the other way round) lands on another key, so on
/// another stream partition: ordering across that switch is not guaranteed. The conversation is
/// the same one: the conversation stage finds it by the BSUID it already recorded
/// (`wafleet::store::conversations`), so owner and history carry over.
pub fn conversation_key(
    phone_number_id: &str,
    wa_id: Option<&str>,
    user_id: Option<&str>,
    fallback: &str,
) -> String {
    let customer = wa_id.or(user_id).unwrap_or(fallback);
    format!("{phone_number_id}:{customer}")
}

/// Stable partition of a conversation key among `partitions` streams.
///
/// FNV-1a 64: stable across processes, versions and platforms (unlike `std`'s `RandomState`),
/// which matters because every ingest and worker process must agree on it.
pub fn partition_of(conversation_key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in conversation_key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

fn digest(raw: &RawValue) -> String {
    hex::encode(&Sha256::digest(raw.get().as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_in_range() {
        // Pinned values: changing the hash would re-route live conversations.
        assert_eq!(
            partition_of("106540352242922:16505551234", 16),
            partition_of("106540352242922:16505551234", 16)
        );
        for key in ["a", "b", "106540352242922:16505551234", ""] {
            assert!(partition_of(key, 16) < 16);
            assert_eq!(partition_of(key, 1), 0);
            assert_eq!(partition_of(key, 0), 0);
        }
        assert_eq!(
            partition_of("", 1 << 20),
            (0xcbf2_9ce4_8422_2325u64 % (1 << 20)) as u32
        );
    }

    #[test]
    fn updates_round_trip_through_json_with_their_raw_item_intact() {
        let raw = r#"{"id":"wamid.X","type":"text","text":{"body":"caf\u00e9"},"new_field":[1,2]}"#;
        let update = Update::Message(InboundMessage {
            origin: Origin {
                phone_number_id: "1".into(),
                ..Default::default()
            },
            wamid: "wamid.X".into(),
            wa_id: Some("57300".into()),
            user_id: None,
            profile_name: None,
            timestamp: Some(1),
            message_type: "text".into(),
            context_id: None,
            raw: RawValue::from_string(raw.into()).unwrap(),
            legacy_text: None,
        });
        let json = serde_json::to_vec(&update).unwrap();
        let back: Update = serde_json::from_slice(&json).unwrap();
        let Update::Message(m) = back else {
            panic!("kind changed")
        };
        assert_eq!(m.raw.get(), raw, "raw bytes kept exactly, escapes included");
        assert_eq!(
            m.text().as_deref(),
            Some("café"),
            "the text is read from the raw item"
        );
        let text = std::str::from_utf8(&json).unwrap();
        assert!(
            !text.contains("café"),
            "the text is not carried twice: {text}"
        );
        assert!(!text.contains("null"), "absent fields are left out: {text}");
    }

    #[test]
    fn an_entry_written_with_the_text_beside_the_raw_item_still_reads() {
        // What ingest wrote before the text was read from the raw item.
        let old = r#"{"message":{"origin":{"phone_number_id":"1","display_phone_number":null,"waba_id":null},"wamid":"wamid.X","wa_id":"57300","user_id":null,"profile_name":null,"timestamp":1,"message_type":"text","text":"hola","context_id":null,"raw":{"id":"wamid.X","type":"text","text":{"body":"hola"}}}}"#;
        let Update::Message(m) = serde_json::from_str(old).unwrap() else {
            panic!("not a message")
        };
        assert_eq!(
            (m.wa_id.as_deref(), m.text().as_deref()),
            (Some("57300"), Some("hola"))
        );
        // The text it carries is what it reads, even where today's reading of the raw item
        // finds none (here: a `text` that is not an object).
        let odd = old.replace(r#""text":{"body":"hola"}"#, r#""text":["hola"]"#);
        let Update::Message(m) = serde_json::from_str(&odd).unwrap() else {
            panic!("not a message")
        };
        assert_eq!(crate::webhook::message_text(&m.raw), None);
        assert_eq!(m.text().as_deref(), Some("hola"));
        let old_echo = r#"{"echo":{"origin":{"phone_number_id":"1"},"wamid":"wamid.E","to":"57300","timestamp":null,"message_type":"image","text":"mira","raw":{"id":"wamid.E","to":"57300","type":"image","image":{"caption":"mira"}}}}"#;
        let Update::Echo(e) = serde_json::from_str(old_echo).unwrap() else {
            panic!("not an echo")
        };
        assert_eq!(e.text().as_deref(), Some("mira"));
    }

    #[test]
    fn the_phone_wins_over_the_business_scoped_id() {
        assert_eq!(
            conversation_key("p", Some("57300"), Some("CO.1"), "w"),
            "p:57300"
        );
        assert_eq!(conversation_key("p", None, Some("CO.1"), "w"), "p:CO.1");
        assert_eq!(conversation_key("p", None, None, "w"), "p:w");
    }
}
