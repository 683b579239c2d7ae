//! Erasing a customer of a channel on their request (the right to erasure):
//! `wafleetctl customer erase`.
//!
//! 1. Postgres is asked who the customer is: every conversation found by the identifier given,
//!    and every identifier those conversations know them by (phone, business-scoped id).
//! 2. Redis forgets them ([`scrub_redis`]): the conversation stage's cached entries, their send
//!    budgets, the jobs parked for a retry under their conversation, the wamids the sender kept
//!    for their parts while Postgres would not record them, and every entry of the
//!    kept-aside streams (events, quarantine, dead letters, which keep raw updates) that names
//!    them ([`names_customer`]). Done first, so that a failure here leaves Postgres as it was
//!    and a second run still knows every identifier.
//! 3. Postgres erases them ([`crate::store::erasure::erase_customer`]).
//! 4. Redis is scrubbed again, for what was kept aside while 2 and 3 ran.
//!
//! A customer known only to Redis (kept in quarantine because the number was not added yet) is
//! found by the identifier given. Run it once the customer's messages are no longer in flight:
//! an update still waiting on a partition stream is processed afterwards, as a new conversation.

use redis::aio::ConnectionLike;
use sqlx::PgPool;

use crate::ratelimit::RateLimitKeys;
use crate::store::erasure::{ErasedRows, Found};
use crate::streams::Keys;

/// What erasing removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    pub rows: ErasedRows,
    /// Kept-aside entries removed, by stream.
    pub stream_entries: Vec<(String, usize)>,
    /// Jobs that were parked for a retry under the customer's conversation, dropped.
    pub parked_jobs: usize,
}

impl Erased {
    pub fn stream_entries_removed(&self) -> usize {
        self.stream_entries.iter().map(|(_, n)| n).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error(
        "{0:?} is neither a phone number nor a business-scoped user id (give the customer's \
         number with its country code, or the id from their conversation)"
    )]
    BadCustomer(String),
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The customer as an operator writes them, as Meta names them: a phone number in any usual
/// notation (`+57 301 600-0000`, `(573) 016.000`) becomes its digits, which is what `wa_id`
/// holds; anything else (a business-scoped user id such as `US.13491208655302741918`) is taken
/// as it is, trimmed. `None` for nothing, or for text with spaces that is not a number.
pub fn normalise_customer(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let phone_like = raw
        .chars()
        .all(|c| c.is_ascii_digit() || "+ -().".contains(c));
    if phone_like {
        let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
        return (!digits.is_empty()).then_some(digits);
    }
    (!raw.chars().any(char::is_whitespace)).then(|| raw.to_string())
}

/// Erases a channel's customer everywhere wafleet keeps them (see the module). `None` when
/// neither Postgres nor Redis knew them.
pub async fn erase_customer(
    pg: &PgPool,
    con: &mut impl ConnectionLike,
    keys: &Keys,
    phone_number_id: &str,
    customer: &str,
) -> Result<Option<Erased>, ErasureError> {
    let customer =
        normalise_customer(customer).ok_or_else(|| ErasureError::BadCustomer(customer.into()))?;
    let found = crate::store::erasure::find_customer(pg, phone_number_id, &customer).await?;
    let before = scrub_redis(con, keys, phone_number_id, &found).await?;
    let rows = crate::store::erasure::erase_customer(pg, phone_number_id, &found).await?;
    if !rows.conversations.is_empty() {
        tracing::info!(
            conversations = rows.conversations.len(),
            messages = rows.messages,
            outbound = rows.outbound,
            "a customer's data was erased"
        );
    }
    let after = scrub_redis(con, keys, phone_number_id, &found).await?;
    let erased = Erased {
        rows,
        stream_entries: before
            .stream_entries
            .into_iter()
            .zip(after.stream_entries)
            .map(|((stream, a), (_, b))| (stream, a + b))
            .collect(),
        parked_jobs: before.parked_jobs + after.parked_jobs,
    };
    let nothing = erased.rows.conversations.is_empty()
        && erased.stream_entries_removed() == 0
        && erased.parked_jobs == 0;
    Ok((!nothing).then_some(erased))
}

/// What one pass over Redis removed.
struct Scrubbed {
    stream_entries: Vec<(String, usize)>,
    parked_jobs: usize,
}

/// Removes from Redis what names the customer (see the module).
async fn scrub_redis(
    con: &mut impl ConnectionLike,
    keys: &Keys,
    phone_number_id: &str,
    found: &Found,
) -> redis::RedisResult<Scrubbed> {
    let rl = RateLimitKeys::new(keys.prefix());
    // One round trip for every key named by the customer. A parked conversation's held list
    // goes with its place in the delayed set; a worker draining it at this moment finds it
    // empty and unschedules it.
    let mut pipe = redis::pipe();
    let mut held = Vec::new();
    // The partitions the customer's conversation keys fall on.
    let mut partitions = Vec::new();
    for id in &found.identifiers {
        let conv = format!("{phone_number_id}:{id}");
        pipe.del(&[
            keys.session_cache(&conv),
            rl.pair(phone_number_id, id),
            rl.penalty(phone_number_id, id),
            rl.strikes(phone_number_id, id),
        ])
        .ignore();
        let p = keys.partition_of(&conv);
        partitions.push(p);
        for stage in crate::stages::process::ALL_STAGES {
            let list = keys.held(stage, p, &conv);
            pipe.llen(&list)
                .del(&list)
                .ignore()
                .zrem(keys.delayed(stage, p), &conv)
                .ignore();
            held.push(stage);
        }
    }
    // The wamids the sender kept for parts Postgres would not record: named by the part, under
    // the partition of the conversation key it was sent under (any of the customer's).
    partitions.sort_unstable();
    partitions.dedup();
    if !found.outbound.is_empty() {
        for p in partitions {
            let stashed: Vec<String> = found
                .outbound
                .iter()
                .map(|id| keys.unrecorded_wamid(p, *id))
                .collect();
            pipe.del(stashed).ignore();
        }
    }
    let lengths: Vec<usize> = pipe.query_async(con).await?;
    let mut parked_jobs = 0;
    for (stage, jobs) in held.into_iter().zip(lengths).filter(|(_, n)| *n > 0) {
        tracing::info!(stage, jobs, "parked jobs of an erased customer dropped");
        parked_jobs += jobs;
    }
    let mut stream_entries = Vec::new();
    for stream in
        crate::worker::retention::kept_aside_streams(keys, crate::stages::process::ALL_STAGES)
    {
        let mut removed = 0;
        let mut after: Option<String> = None;
        loop {
            let page =
                crate::streams::read_after(con, &stream, after.as_deref(), crate::streams::PAGE)
                    .await?;
            let full = page.len() == crate::streams::PAGE;
            after = page.last().map(|e| e.id().to_string());
            let naming: Vec<&str> = page
                .iter()
                .filter(|e| {
                    names_customer(
                        &e.fields_except(&[]),
                        phone_number_id,
                        found.waba_id.as_deref(),
                        &found.identifiers,
                    )
                })
                .map(|e| e.id())
                .collect();
            if !naming.is_empty() {
                let n: usize = redis::cmd("XDEL")
                    .arg(&stream)
                    .arg(&naming)
                    .query_async(con)
                    .await?;
                removed += n;
            }
            if !full {
                break;
            }
        }
        if removed > 0 {
            tracing::info!(stream, removed, "entries naming an erased customer removed");
        }
        stream_entries.push((stream, removed));
    }
    Ok(Scrubbed {
        stream_entries,
        parked_jobs,
    })
}

/// The JSON keys under which Meta (and wafleet's own envelopes) name a customer.
const CUSTOMER_KEYS: &[&str] = &[
    "from",
    "wa_id",
    "user_id",
    "from_user_id",
    "parent_user_id",
    "recipient_id",
    "recipient_user_id",
    "recipient",
    "to",
];

/// Fields of kept-aside entries that hold our own counts, ids and times, never a customer: a
/// customer written as a short number (`3`) must not match a job's `attempts` or `v`.
const OWN_FIELDS: &[&str] = &["v", "outbound_id", "reply_to", "message_id", "attempt"];

/// Whether a kept-aside entry names one of a channel's customer's `identifiers`.
///
/// It must belong to the channel: its `channel` field is the number, or (events and dead letters,
/// whose `channel` is `-`) its content names the number or the channel's business account
/// (`waba_id`) as a JSON string. And it must name the customer exactly: a field (not one of
/// ours, [`OWN_FIELDS`] and the dead letters' runtime fields) that is an identifier or its
/// conversation key (`<number>:<identifier>`), or, in JSON, an identifier as
/// the value of a key Meta names customers by ([`CUSTOMER_KEYS`]); in a body that is not JSON (a
/// dead letter), the identifier as a JSON string (`"573016000000"`). Another customer whose number
/// merely contains this one's, or a message text that mentions it, does not match.
pub fn names_customer(
    fields: &[(String, Vec<u8>)],
    phone_number_id: &str,
    waba_id: Option<&str>,
    identifiers: &[String],
) -> bool {
    let channel = fields
        .iter()
        .find(|(k, _)| k == "channel")
        .map(|(_, v)| v.as_slice());
    let conv_prefix = format!("{phone_number_id}:");
    let belongs = match channel {
        Some(c) if c != b"-" => c == phone_number_id.as_bytes(),
        // Jobs between stages (a stage's dead letters) carry the conversation key, not always
        // the channel.
        _ if fields
            .iter()
            .any(|(k, v)| k == "conv" && v.starts_with(conv_prefix.as_bytes())) =>
        {
            true
        }
        _ => {
            let quoted: Vec<String> = std::iter::once(phone_number_id)
                .chain(waba_id)
                .map(|s| format!("\"{s}\""))
                .collect();
            fields.iter().any(|(_, v)| {
                quoted
                    .iter()
                    .any(|q| memchr::memmem::find(v, q.as_bytes()).is_some())
            })
        }
    };
    if !belongs {
        return false;
    }
    let convs: Vec<String> = identifiers
        .iter()
        .map(|id| format!("{phone_number_id}:{id}"))
        .collect();
    fields.iter().any(|(k, v)| {
        if OWN_FIELDS.contains(&k.as_str())
            || crate::dead_letters::RUNTIME_FIELDS.contains(&k.as_str())
        {
            return false;
        }
        if identifiers
            .iter()
            .chain(&convs)
            .any(|id| v == id.as_bytes())
        {
            return true;
        }
        match serde_json::from_slice::<serde_json::Value>(v) {
            Ok(json) => names_in_json(&json, identifiers),
            Err(_) => identifiers
                .iter()
                .any(|id| memchr::memmem::find(v, format!("\"{id}\"").as_bytes()).is_some()),
        }
    })
}

fn names_in_json(json: &serde_json::Value, identifiers: &[String]) -> bool {
    use serde_json::Value;
    match json {
        Value::Object(map) => map.iter().any(|(k, v)| {
            let named = CUSTOMER_KEYS.contains(&k.as_str())
                && v.as_str()
                    .is_some_and(|s| identifiers.iter().any(|id| id == s));
            named || names_in_json(v, identifiers)
        }),
        Value::Array(items) => items.iter().any(|v| names_in_json(v, identifiers)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn phone_numbers_in_any_notation_become_their_digits() {
        for raw in [
            "+57 301 600-0000",
            "573016000000",
            " (57) 3016000000 ",
            "57.301.600.0000",
        ] {
            assert_eq!(
                normalise_customer(raw).as_deref(),
                Some("573016000000"),
                "{raw}"
            );
        }
        assert_eq!(
            normalise_customer(" US.13491208655302741918 ").as_deref(),
            Some("US.13491208655302741918")
        );
        for bad in ["", "  ", "+ -", "Camila Rojas"] {
            assert_eq!(normalise_customer(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_entry_names_the_customer_only_exactly_and_only_on_their_channel() {
        let customer = ids(&["573016", "US.1349"]);
        let update = |from: &str, text: &str| {
            format!(
                r#"{{"message":{{"origin":{{"phone_number_id":"111"}},"wa_id":"{from}","text":"{text}","raw":{{"from":"{from}","text":{{"body":"{text}"}}}}}}}}"#
            )
        };
        let entry = |channel: &str, from: &str, text: &str| {
            fields(&[
                ("channel", channel),
                ("kind", "message"),
                ("update", &update(from, text)),
            ])
        };
        assert!(names_customer(
            &entry("111", "573016", "hola"),
            "111",
            None,
            &customer
        ));
        // Another customer whose number contains this one's, or who mentions it.
        assert!(!names_customer(
            &entry("111", "5730161", "hola"),
            "111",
            None,
            &customer
        ));
        assert!(!names_customer(
            &entry("111", "573017", "573016"),
            "111",
            None,
            &customer
        ));
        // The same customer of another number (another business) is not this erasure's.
        assert!(!names_customer(
            &entry("222", "573016", "hola"),
            "111",
            None,
            &customer
        ));
        // A stage's dead letter names them by its conversation key (a sender's job carries no
        // channel); a business-scoped id too.
        let outbox = fields(&[("conv", "111:573016"), ("outbound_id", "7")]);
        assert!(names_customer(&outbox, "111", None, &customer));
        assert!(!names_customer(&outbox, "222", None, &customer));
        let dead = fields(&[("channel", "111"), ("conv", "111:US.1349"), ("reason", "x")]);
        assert!(names_customer(&dead, "111", None, &customer));
        let other = fields(&[
            ("channel", "111"),
            ("conv", "111:US.13490"),
            ("reason", "x"),
        ]);
        assert!(!names_customer(&other, "111", None, &customer));
        // A status names them as its recipient.
        let status = fields(&[
            ("channel", "111"),
            ("update", r#"{"status":{"recipient_id":"573016","raw":{}}}"#),
        ]);
        assert!(names_customer(&status, "111", None, &customer));
        // Our own counts and ids are not customers, however the customer is written.
        let short = ids(&["3"]);
        let job = fields(&[
            ("conv", "111:573016"),
            ("v", "3"),
            ("outbound_id", "3"),
            ("attempts", "3"),
            ("deliveries", "3"),
        ]);
        assert!(!names_customer(&job, "111", None, &short));
        assert!(names_customer(&job, "111", None, &customer));
    }

    #[test]
    fn a_body_that_is_not_json_names_the_customer_by_a_quoted_identifier_and_the_number() {
        let customer = ids(&["573016"]);
        let dead =
            |body: &str| fields(&[("channel", "-"), ("reason", "malformed"), ("body", body)]);
        let truncated = r#"{"entry":[{"changes":[{"value":{"metadata":{"phone_number_id":"111"},"messages":[{"from":"573016","#;
        assert!(names_customer(&dead(truncated), "111", None, &customer));
        assert!(!names_customer(&dead(truncated), "222", None, &customer));
        let another = truncated.replace("573016", "5730160");
        assert!(!names_customer(&dead(&another), "111", None, &customer));
        // An event without the number is the channel's when it names its business account.
        let event = fields(&[
            ("channel", "-"),
            (
                "update",
                r#"{"event":{"waba_id":"9001","raw":{"wa_id":"573016"}}}"#,
            ),
        ]);
        assert!(names_customer(&event, "111", Some("9001"), &customer));
        assert!(!names_customer(&event, "111", Some("9002"), &customer));
    }
}
