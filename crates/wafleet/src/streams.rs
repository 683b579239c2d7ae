//! The Redis layout: every stream, key and field wafleet uses, and the atomic enqueue step.
//!
//! # Keys
//! `P` is `WAFLEET_REDIS_PREFIX` (default `wafleet`), `n` a partition number in
//! `0..WAFLEET_PARTITIONS` (default 16). Braces are Redis Cluster hash tags: every key a single
//! script touches shares one tag, so each enqueue stays on one slot of a cluster.
//!
//! | key | type | what |
//! |---|---|---|
//! | `P:{pn}:inbound` | stream | inbound customer messages of partition n, and the business app's echoes to those customers (coexistence) |
//! | `P:{pn}:status` | stream | delivery statuses of our outbound messages, partition n |
//! | `P:{pn}:seen:<digest>` | string, TTL | dedup mark of an inbound message or status ([`Keys::seen_beside`]: a digest of the dedup key) |
//! | `P:{events}:stream` | stream | `value.errors[]` items and changes of other fields (templates, account…); read by the account stage, which keeps its entries (the retention trims them) |
//! | `P:{events}:templates:version` | string (integer) | the fleet's template version: the account stage increments it on each template status update, and every process (API, workers) empties its cache of templates when it moves, reading it at most once a second |
//! | `P:{events}:seen:<digest>` | string, TTL 10 min | dedup mark of an error or event (named by its content: [`Update::dedup_window`]) |
//! | `P:{quarantine}:stream` | stream | updates for unknown or disabled numbers, or senders outside a channel's allowlist: kept for inspection, not processed |
//! | `P:{quarantine}:seen:<digest>` | string, TTL | dedup mark of a quarantined update |
//! | `P:{dead}:ingest` | stream | signed bodies or items ingest could not parse, whole, with the reason |
//! | `P:{dead}:seen:<digest>` | string, TTL | dedup mark of a dead letter (digest of the body) |
//! | `P:{pn}:replies` | stream | reply jobs from the conversation stage to the LLM stage, partition n |
//! | `P:{pn}:outbox` | stream | send jobs for the sender stage, partition n |
//!
//! | `P:{events}:handover` | stream | handover and release events, and customers' messages in conversations humans answer, for dashboards (field `event`, JSON) |
//! | `P:events:handover` | pub/sub channel | the same events, live |
//! | `P:{pn}:session:<conv>` | string, TTL 1 d | cached conversation id and session of a conversation key (never the owner, read with each message) |
//! | `P:{pn}:wamid:<outbound id>` | string, TTL 7 d | the wamid of a part Meta accepted while Postgres would not record it: recorded from here, never sent again |
//!
//! The worker runtime adds its own keys per stage (leases, delayed retries, dead letters): see
//! `crate::worker`.
//!
//! # Partitioning
//! An update's partition is `fnv1a64(conversation key) mod WAFLEET_PARTITIONS`, where the
//! conversation key is `phone_number_id:wa_id` (or the business-scoped user id when Meta omits the
//! phone). All updates of one conversation therefore land, in arrival order, on one partition
//! stream; workers consume each partition in order (see the worker runtime), which is what keeps
//! a conversation's messages in order without a global lock.
//!
//! # Entry fields
//! | field | on | value |
//! |---|---|---|
//! | `v` | all | envelope version (`1`) |
//! | `kind` | all | `message`, `echo`, `status`, `error`, `event` (dead letters: `dead`) |
//! | `channel` | all | `phone_number_id`, or `-` for events and dead letters |
//! | `conv` | inbound, status, events | the conversation key (events: `waba:<id>` or `<pnid>:-`, what orders them for the account stage) |
//! | `update` | all but dead | the [`Update`] as JSON: parsed essentials plus the item's raw JSON |
//! | `reason` | quarantine, dead | why the entry is there |
//! | `signer` | quarantine | fingerprint of the app secret that signed the POST ([`wafleet_core::signature::AppSecret::fingerprint`]), checked again on replay |
//! | `body` | dead | the rejected body or item, byte for byte |
//! | `received_at` | all | Unix milliseconds when ingest received the POST |
//!
//! # Atomicity
//! [`ENQUEUE_SCRIPT`] (and [`ENQUEUE_UPDATE_SCRIPT`], for updates) takes the dedup mark and
//! appends the entry in one script, which Redis runs atomically; if the append fails the mark is
//! removed before the script returns, so an error can never leave a mark without its entry (which
//! would swallow Meta's redelivery).

use bytes::Bytes;
use redis::{Pipeline, RedisResult, Value};
use wafleet_core::envelope::{ENVELOPE_VERSION, Update, partition_of};

/// Where every key lives, for one prefix and partition count.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    partitions: u32,
}

impl Keys {
    pub fn new(prefix: impl Into<String>, partitions: u32) -> Self {
        Self {
            prefix: prefix.into(),
            partitions: partitions.max(1),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn partitions(&self) -> u32 {
        self.partitions
    }
    pub fn partition_of(&self, conversation_key: &str) -> u32 {
        partition_of(conversation_key, self.partitions)
    }
    pub fn inbound(&self, partition: u32) -> String {
        format!("{}:{{p{partition}}}:inbound", self.prefix)
    }
    pub fn status(&self, partition: u32) -> String {
        format!("{}:{{p{partition}}}:status", self.prefix)
    }
    pub fn replies(&self, partition: u32) -> String {
        format!("{}:{{p{partition}}}:replies", self.prefix)
    }
    pub fn outbox(&self, partition: u32) -> String {
        format!("{}:{{p{partition}}}:outbox", self.prefix)
    }
    /// Owner of a stage's partition.
    pub fn lease(&self, stage: &str, partition: u32) -> String {
        format!("{}:{{p{partition}}}:lease:{stage}", self.prefix)
    }
    /// Parked conversations of a stage's partition, scored by due time.
    pub fn delayed(&self, stage: &str, partition: u32) -> String {
        format!("{}:{{p{partition}}}:delayed:{stage}", self.prefix)
    }
    /// A parked conversation's jobs, oldest first.
    pub fn held(&self, stage: &str, partition: u32, conv: &str) -> String {
        format!("{}:{{p{partition}}}:held:{stage}:{conv}", self.prefix)
    }
    /// The wamid Meta gave an outbound part, kept while Postgres would not record it.
    pub fn unrecorded_wamid(&self, partition: u32, outbound_id: i64) -> String {
        format!("{}:{{p{partition}}}:wamid:{outbound_id}", self.prefix)
    }
    /// Live processes of a stage.
    pub fn workers(&self, stage: &str) -> String {
        format!("{}:{{workers}}:{stage}", self.prefix)
    }
    /// A stage's dead-letter stream.
    pub fn dead(&self, stage: &str) -> String {
        format!("{}:{{dead}}:{stage}", self.prefix)
    }
    pub fn handover_stream(&self) -> String {
        format!("{}:{{events}}:handover", self.prefix)
    }
    pub fn handover_channel(&self) -> String {
        format!("{}:events:handover", self.prefix)
    }
    pub fn session_cache(&self, conv: &str) -> String {
        let p = self.partition_of(conv);
        format!("{}:{{p{p}}}:session:{conv}", self.prefix)
    }
    pub fn events(&self) -> String {
        format!("{}:{{events}}:stream", self.prefix)
    }
    /// The fleet's template version: incremented by the account stage on each template status
    /// update; every process empties its cache of templates when it moves
    /// (`crate::stages::wording`).
    pub fn templates_version(&self) -> String {
        format!("{}:{{events}}:templates:version", self.prefix)
    }
    pub fn quarantine(&self) -> String {
        format!("{}:{{quarantine}}:stream", self.prefix)
    }
    pub fn ingest_dead(&self) -> String {
        format!("{}:{{dead}}:ingest", self.prefix)
    }
    /// The dedup mark that sits beside `stream` (same hash tag), named by a digest of the dedup
    /// key: 128 bits of SHA-256 in unpadded base64url, 22 characters instead of the 60 to 100
    /// of a wamid-based key. Marks live for days, one per update, so their size is most of
    /// Redis's memory and of every AOF rewrite.
    pub fn seen_beside(&self, stream: &str, dedup_key: &str) -> String {
        use base64::Engine;
        use sha2::Digest;
        let tag_end = stream.find('}').map_or(stream.len(), |i| i + 1);
        let digest = sha2::Sha256::digest(dedup_key.as_bytes());
        let name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16]);
        format!("{}:seen:{name}", &stream[..tag_end])
    }
    /// Every partition stream plus ingest's own, for the length gauges.
    pub fn all_streams(&self) -> Vec<String> {
        let mut all: Vec<String> = (0..self.partitions)
            .flat_map(|p| {
                [
                    self.inbound(p),
                    self.status(p),
                    self.replies(p),
                    self.outbox(p),
                ]
            })
            .collect();
        all.extend([self.events(), self.quarantine(), self.ingest_dead()]);
        all
    }
}

/// The script of [`ENQUEUE_SCRIPT`] and [`ENQUEUE_UPDATE_SCRIPT`] around their `XADD`, which
/// assigns `added`.
macro_rules! enqueue_script {
    ($xadd:literal) => {
        concat!(
            r"
local marked
if ARGV[1] == '0' then marked = redis.call('SET', KEYS[1], '1', 'NX')
else marked = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) end
if not marked then return 0 end
local added
",
            $xadd,
            r"
if type(added) == 'table' and added.err then
  redis.call('DEL', KEYS[1])
  return redis.error_reply(added.err)
end
return 1
"
        )
    };
}

/// Appends an entry unless its dedup mark exists; returns 1 when appended, 0 for a duplicate.
/// KEYS[1] = dedup mark, KEYS[2] = stream; ARGV[1] = mark TTL in seconds (0: no expiry, for a
/// dead-letter replay's mark kept as long as its dead letter, [`crate::dead_letters`]);
/// ARGV[2..] = fields.
///
/// The mark is taken first (`SET NX`, one call instead of `EXISTS` + `SET`), and given back if
/// `XADD` fails, so the script still never leaves a mark without its entry.
pub const ENQUEUE_SCRIPT: &str =
    enqueue_script!("added = redis.pcall('XADD', KEYS[2], '*', unpack(ARGV, 2))");

/// [`ENQUEUE_SCRIPT`] for an update's entry ([`Append::update`], every webhook's), which names
/// the fields itself: ARGV[2..] = `kind`, `channel`, `received_at`, `update`, then `conv` when
/// the entry has one; `v` is [`ENVELOPE_VERSION`]. Redis makes a Lua string and a table slot of
/// every argument of a script call (about 2,000 instructions each under callgrind), so sending
/// the seven names and the version with every webhook cost about as much as the `XADD` itself.
/// The entry is the same, field for field and in the same order.
pub const ENQUEUE_UPDATE_SCRIPT: &str = enqueue_script!(
    r"if ARGV[6] then
  added = redis.pcall('XADD', KEYS[2], '*', 'v', '1', 'kind', ARGV[2], 'channel', ARGV[3],
    'received_at', ARGV[4], 'conv', ARGV[6], 'update', ARGV[5])
else
  added = redis.pcall('XADD', KEYS[2], '*', 'v', '1', 'kind', ARGV[2], 'channel', ARGV[3],
    'received_at', ARGV[4], 'update', ARGV[5])
end"
);

// ENQUEUE_UPDATE_SCRIPT writes the version itself.
const _: () = assert!(ENVELOPE_VERSION == 1, "update ENQUEUE_UPDATE_SCRIPT's 'v'");

/// One entry to append, with its dedup mark.
#[derive(Debug, Clone)]
pub struct Append {
    pub stream: String,
    pub seen: String,
    pub fields: Vec<(&'static str, Bytes)>,
    /// A shorter life for the dedup mark than the configured TTL ([`Update::dedup_window`]).
    pub mark_ttl_cap: Option<std::time::Duration>,
}

impl Append {
    /// The entry for an update routed to a conversation stream (inbound or status) or events.
    pub fn update(keys: &Keys, update: &Update, received_at_ms: i64) -> Self {
        let (stream, conv) = match update {
            Update::Message(_) | Update::Echo(_) | Update::Status(_) => {
                let conv = update.conversation_key();
                let p = keys.partition_of(&conv);
                // An echo is read in order with the customer's messages: it decides who
                // answers the next one.
                let stream = if matches!(update, Update::Message(_) | Update::Echo(_)) {
                    keys.inbound(p)
                } else {
                    keys.status(p)
                };
                (stream, Some(conv))
            }
            // Named by their number (`pnid:-`) or business account (`waba:<id>`), so the
            // account stage takes one account's changes in the order Meta sent them.
            Update::Error(_) | Update::Event(_) => (keys.events(), Some(update.conversation_key())),
        };
        let mut fields = base_fields(update, received_at_ms);
        if let Some(conv) = conv {
            fields.push(("conv", Bytes::from(conv)));
        }
        fields.push(("update", update_json(update)));
        Self {
            seen: keys.seen_beside(&stream, &update.dedup_key()),
            stream,
            fields,
            mark_ttl_cap: update.dedup_window(),
        }
    }

    /// The entry that keeps an update out of processing, for inspection; `signer` is the
    /// fingerprint of the app secret that signed it.
    pub fn quarantine(
        keys: &Keys,
        update: &Update,
        reason: &str,
        signer: &str,
        received_at_ms: i64,
    ) -> Self {
        let stream = keys.quarantine();
        let mut fields = base_fields(update, received_at_ms);
        fields.push(("reason", Bytes::copy_from_slice(reason.as_bytes())));
        fields.push(("signer", Bytes::copy_from_slice(signer.as_bytes())));
        fields.push(("update", update_json(update)));
        Self {
            seen: keys.seen_beside(&stream, &update.dedup_key()),
            stream,
            fields,
            mark_ttl_cap: update.dedup_window(),
        }
    }

    /// A dead letter: a body or item that could not be parsed, kept whole with the reason.
    pub fn dead(keys: &Keys, body: Bytes, reason: &str, received_at_ms: i64) -> Self {
        use sha2::Digest;
        let stream = keys.ingest_dead();
        let digest = hex::encode(&sha2::Sha256::digest(&body)[..16]);
        let fields = vec![
            ("v", Bytes::from(ENVELOPE_VERSION.to_string())),
            ("kind", Bytes::from_static(b"dead")),
            ("channel", Bytes::from_static(b"-")),
            ("reason", Bytes::copy_from_slice(reason.as_bytes())),
            ("body", body),
            ("received_at", Bytes::from(received_at_ms.to_string())),
        ];
        Self {
            seen: keys.seen_beside(&stream, &digest),
            stream,
            fields,
            mark_ttl_cap: None,
        }
    }
}

/// The `update` field. The buffer is sized for the raw item up front: grown from empty it would
/// be reallocated and copied four or five times for a typical 1 KB message.
fn update_json(update: &Update) -> Bytes {
    let raw = match update {
        Update::Message(m) => m.raw.get().len(),
        Update::Echo(e) => e.raw.get().len(),
        Update::Status(s) => s.raw.get().len(),
        Update::Error(e) => e.raw.get().len(),
        Update::Event(e) => e.raw.get().len(),
    };
    let mut buf = Vec::with_capacity(raw + 512);
    serde_json::to_writer(&mut buf, update).expect("updates serialise");
    Bytes::from(buf)
}

fn base_fields(update: &Update, received_at_ms: i64) -> Vec<(&'static str, Bytes)> {
    vec![
        ("v", Bytes::from(ENVELOPE_VERSION.to_string())),
        (
            "kind",
            Bytes::from_static(update.kind().as_str().as_bytes()),
        ),
        (
            "channel",
            Bytes::copy_from_slice(update.phone_number_id().unwrap_or("-").as_bytes()),
        ),
        ("received_at", Bytes::from(received_at_ms.to_string())),
    ]
}

/// Whether an append added an entry or met its dedup mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Added,
    Duplicate,
}

/// The enqueue scripts, loaded by hash.
#[derive(Clone)]
pub struct Enqueuer {
    script: redis::Script,
    update_script: redis::Script,
    ttl_secs: u64,
}

impl Enqueuer {
    pub fn new(dedup_ttl: std::time::Duration) -> Self {
        Self {
            script: redis::Script::new(ENQUEUE_SCRIPT),
            update_script: redis::Script::new(ENQUEUE_UPDATE_SCRIPT),
            ttl_secs: dedup_ttl.as_secs().max(1),
        }
    }

    /// Runs every append in one pipelined round trip. Either all results come back or an error
    /// does (in which case some appends may have happened: retrying is safe, they dedup).
    pub async fn append_all<C>(&self, con: &mut C, appends: &[Append]) -> RedisResult<Vec<Appended>>
    where
        C: redis::aio::ConnectionLike,
    {
        let mut results = self.run(con, appends.iter()).await?;
        if results.iter().any(Option::is_none) {
            // Redis restarted or flushed its scripts, or holds one of the two (a replay loaded
            // the general one): the appends that met a missing script did not run. Load both and
            // redo those alone; the others ran, and redone they would read as duplicates.
            self.script.prepare_invoke().load_async(con).await?;
            self.update_script.prepare_invoke().load_async(con).await?;
            let missing = appends.iter().zip(&results).filter(|(_, r)| r.is_none());
            let redone = self.run(con, missing.map(|(a, _)| a)).await?;
            let mut redone = redone.into_iter();
            for result in results.iter_mut().filter(|r| r.is_none()) {
                *result = redone.next().flatten();
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.ok_or_else(|| {
                    (
                        redis::ErrorKind::NoScriptError,
                        "the enqueue script is still missing after loading it",
                    )
                        .into()
                })
            })
            .collect()
    }

    /// The appends' results, `None` for one whose script Redis does not have.
    async fn run<'a, C>(
        &self,
        con: &mut C,
        appends: impl Iterator<Item = &'a Append> + Clone,
    ) -> RedisResult<Vec<Option<Appended>>>
    where
        C: redis::aio::ConnectionLike,
    {
        let count = appends.clone().count();
        if count == 0 {
            return Ok(Vec::new());
        }
        let pipe = self.pipeline(appends);
        // The replies one by one (`query_async` would fail the whole pipeline on the first error).
        let values = con.req_packed_commands(&pipe, 0, count).await?;
        values
            .into_iter()
            .map(|v| match v {
                Value::Int(1) => Ok(Some(Appended::Added)),
                Value::ServerError(e) => {
                    let e = redis::RedisError::from(e);
                    match e.kind() {
                        redis::ErrorKind::NoScriptError => Ok(None),
                        _ => Err(e),
                    }
                }
                _ => Ok(Some(Appended::Duplicate)),
            })
            .collect()
    }

    fn pipeline<'a>(&self, appends: impl IntoIterator<Item = &'a Append>) -> Pipeline {
        let mut pipe = redis::pipe();
        for a in appends {
            let update = update_values(&a.fields);
            let script = match update {
                Some(_) => &self.update_script,
                None => &self.script,
            };
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(2)
                .arg(&a.seen)
                .arg(&a.stream)
                .arg(
                    a.mark_ttl_cap
                        .map_or(self.ttl_secs, |cap| cap.as_secs().clamp(1, self.ttl_secs)),
                );
            match update {
                Some((values, conv)) => {
                    for value in values.into_iter().chain(conv) {
                        cmd.arg(value.as_ref());
                    }
                }
                None => {
                    for (name, value) in &a.fields {
                        cmd.arg(*name).arg(value.as_ref());
                    }
                }
            }
        }
        pipe
    }
}

/// An update's entry as [`ENQUEUE_UPDATE_SCRIPT`] takes it: `kind`, `channel`, `received_at`,
/// `update`, and `conv` when there is one; `None` for any other entry (its fields are not an
/// update's exactly as that script writes them), which goes through [`ENQUEUE_SCRIPT`] with its
/// fields named.
fn update_values<'a>(
    fields: &'a [(&'static str, Bytes)],
) -> Option<([&'a Bytes; 4], Option<&'a Bytes>)> {
    match fields {
        [
            ("v", v),
            ("kind", kind),
            ("channel", channel),
            ("received_at", at),
            rest @ ..,
        ] if v.as_ref() == b"1" => match rest {
            [("conv", conv), ("update", update)] => Some(([kind, channel, at, update], Some(conv))),
            [("update", update)] => Some(([kind, channel, at, update], None)),
            _ => None,
        },
        _ => None,
    }
}

/// An entry read back whole from a stream that operators inspect (dead letters, quarantine).
#[derive(Debug, Clone)]
pub struct StoredEntry {
    entry: redis::streams::StreamId,
}

impl StoredEntry {
    /// Its entry id on the stream.
    pub fn id(&self) -> &str {
        &self.entry.id
    }

    /// A field as text ("" when absent or not text).
    pub fn text(&self, field: &str) -> String {
        self.entry
            .map
            .get(field)
            .and_then(|v| redis::from_redis_value::<String>(v).ok())
            .unwrap_or_default()
    }

    /// Every field as bytes, except those named in `except`.
    pub fn fields_except(&self, except: &[&str]) -> Vec<(String, Vec<u8>)> {
        self.entry
            .map
            .iter()
            .filter(|(k, _)| !except.contains(&k.as_str()))
            .filter_map(|(k, v)| {
                redis::from_redis_value::<Vec<u8>>(v)
                    .ok()
                    .map(|v| (k.clone(), v))
            })
            .collect()
    }
}

/// Entries read per `XRANGE` when reading a stream whole: a stream of dead letters can hold
/// thousands of bodies of up to 3 MB, and one unbounded `XRANGE` would keep Redis from everyone
/// else (ingest answering 503) for as long as it takes to send them.
pub(crate) const PAGE: usize = 200;

/// Up to `count` entries of `stream` after the entry id `after` (from the start when `None`),
/// oldest first.
pub async fn read_after<C: redis::aio::ConnectionLike>(
    con: &mut C,
    stream: &str,
    after: Option<&str>,
    count: usize,
) -> RedisResult<Vec<StoredEntry>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    // `(id`, an exclusive start, needs Redis 6.2 or later.
    let start = after.map_or_else(|| "-".to_string(), |id| format!("({id}"));
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(con)
        .await?;
    Ok(reply
        .ids
        .into_iter()
        .map(|entry| StoredEntry { entry })
        .collect())
}

/// Every entry of `stream`, oldest first, read [`PAGE`] entries at a time.
pub async fn read_whole<C: redis::aio::ConnectionLike>(
    con: &mut C,
    stream: &str,
) -> RedisResult<Vec<StoredEntry>> {
    read_first(con, stream, usize::MAX).await
}

/// The first `limit` entries of `stream`, oldest first, read [`PAGE`] entries at a time.
pub async fn read_first<C: redis::aio::ConnectionLike>(
    con: &mut C,
    stream: &str,
    limit: usize,
) -> RedisResult<Vec<StoredEntry>> {
    let mut all: Vec<StoredEntry> = Vec::new();
    while all.len() < limit {
        let after = all.last().map(|e| e.id().to_string());
        let want = PAGE.min(limit - all.len());
        let page = read_after(con, stream, after.as_deref(), want).await?;
        let done = page.len() < want;
        all.extend(page);
        if done {
            break;
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_one_enqueue_shares_a_hash_tag() {
        let keys = Keys::new("wf", 4);
        for stream in keys.all_streams() {
            let seen = keys.seen_beside(&stream, "m:1:wamid.X");
            let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_string();
            assert_eq!(tag(&stream), tag(&seen), "{stream} / {seen}");
            assert!(seen.starts_with("wf:{"));
        }
        assert_eq!(keys.inbound(3), "wf:{p3}:inbound");
    }

    /// The arguments of each EVALSHA in `appends`' pipeline, as sent.
    fn sent_arguments(appends: &[Append]) -> Vec<Vec<Vec<u8>>> {
        let packed = Enqueuer::new(std::time::Duration::from_secs(60))
            .pipeline(appends)
            .get_packed_pipeline();
        let mut commands = Vec::new();
        let mut lines = packed
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        while let Some(header) = lines.next() {
            if header.is_empty() {
                break;
            }
            let count: usize = std::str::from_utf8(&header[1..]).unwrap().parse().unwrap();
            let args = (0..count)
                .map(|_| {
                    lines.next().unwrap();
                    lines.next().unwrap().to_vec()
                })
                .collect();
            commands.push(args);
        }
        commands
    }

    #[test]
    fn an_update_is_sent_as_its_values_alone() {
        // Redis turns every argument of a script call into a Lua string and a table slot
        // (about 2,000 instructions each, callgrind): an update's six field names and its
        // version are written by the script itself, not sent with every webhook.
        let keys = Keys::new("wf", 4);
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"9","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":"100"},"contacts":[{"profile":{"name":"A"},"wa_id":"573001"}],"messages":[{"from":"573001","id":"wamid.A","timestamp":"1","type":"text","text":{"body":"hola"}}],"errors":[{"code":131000,"title":"Something went wrong"}]}}]}]}"#;
        let parsed = wafleet_core::webhook::parse(body).unwrap();
        let appends: Vec<Append> = parsed
            .updates
            .iter()
            .map(|u| Append::update(&keys, u, 1_700_000_000_000))
            .collect();
        let sent = sent_arguments(&appends);
        assert_eq!(sent.len(), 2);
        for (args, append) in sent.iter().zip(&appends) {
            let values: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let names: Vec<&str> = append.fields.iter().map(|(n, _)| *n).collect();
            for name in &names {
                assert!(!values.contains(&name.as_bytes()), "{name} sent: {names:?}");
            }
            // EVALSHA, sha, 2, mark, stream, TTL, then the values but the version.
            assert_eq!(values.len(), 6 + append.fields.len() - 1, "{names:?}");
        }
        // A quarantined update keeps the general script: its fields are named in the call.
        let quarantined = Append::quarantine(&keys, &parsed.updates[0], "unknown_channel", "fp", 1);
        let sent = sent_arguments(std::slice::from_ref(&quarantined));
        assert!(sent[0].iter().any(|a| a.as_slice() == b"signer"));
    }

    #[test]
    fn a_dedup_mark_is_named_by_a_short_digest_of_its_key() {
        let keys = Keys::new("wf", 4);
        let stream = keys.inbound(3);
        let long = "m:100000000000001:wamid.HBgM8F36958B0F600FE2000F000000000000FQIAERgSQUFCQkNDRERFRUZGR0dISAA=";
        let mark = keys.seen_beside(&stream, long);
        let name = mark
            .strip_prefix("wf:{p3}:seen:")
            .expect("beside its stream");
        assert_eq!(name.len(), 22, "{mark}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        // The same update always finds the same mark; another update, or the same one on
        // another stream, does not.
        assert_eq!(mark, keys.seen_beside(&stream, long));
        assert_ne!(mark, keys.seen_beside(&stream, &long.replace("AA=", "AB=")));
        assert_ne!(mark, keys.seen_beside(&keys.inbound(2), long));
        assert_ne!(
            keys.seen_beside(&stream, "m:1:wamid.X"),
            keys.seen_beside(&stream, "s:wamid.X:read")
        );
    }
}
