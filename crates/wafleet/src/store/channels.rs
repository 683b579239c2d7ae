//! The `channels` table: one row per business number, with its secrets encrypted at rest.

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use wafleet_core::graph_error;

use crate::config::Secret;
use crate::crypto::Cipher;

/// How the bot behaves on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BotMode {
    /// Replies are produced and sent.
    On,
    /// Replies are produced and stored but never sent (for trying a prompt on live traffic).
    Shadow,
    /// No replies are produced; humans answer.
    Off,
}

impl BotMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BotMode::On => "on",
            BotMode::Shadow => "shadow",
            BotMode::Off => "off",
        }
    }
}

impl std::str::FromStr for BotMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "on" => Ok(BotMode::On),
            "shadow" => Ok(BotMode::Shadow),
            "off" => Ok(BotMode::Off),
            other => anyhow::bail!("bot mode must be on, shadow or off, not {other:?}"),
        }
    }
}

/// A channel with its secrets decrypted (in memory only).
#[derive(Debug, Clone)]
pub struct Channel {
    pub id: i64,
    pub phone_number_id: String,
    pub waba_id: Option<String>,
    /// The Meta app whose webhooks carry the number: served on `/webhooks/whatsapp/{app_id}`.
    pub app_id: Option<String>,
    pub display_phone_number: Option<String>,
    pub name: String,
    pub app_secrets: Vec<Secret<Vec<u8>>>,
    pub verify_token: Option<Secret<String>>,
    pub access_token: Option<Secret<String>>,
    pub enabled: bool,
    pub bot_mode: BotMode,
    pub phone_allowlist: Vec<String>,
    pub updated_at: DateTime<Utc>,
}

/// What an operator sets when adding or changing a channel. `None` leaves a field as it is on
/// update (and empty on insert).
#[derive(Debug, Clone, Default)]
pub struct ChannelSpec {
    pub phone_number_id: String,
    pub waba_id: Option<String>,
    /// Meta's App ID (digits) of the app that signs the number's webhooks.
    pub app_id: Option<String>,
    pub display_phone_number: Option<String>,
    pub name: Option<String>,
    pub app_secrets: Option<Vec<Secret<String>>>,
    pub verify_token: Option<Secret<String>>,
    pub access_token: Option<Secret<String>>,
    pub bot_mode: Option<BotMode>,
    pub phone_allowlist: Option<Vec<String>>,
    /// Serve the number (`true` on insert when not given).
    pub enabled: Option<bool>,
}

impl ChannelSpec {
    /// What is wrong with the spec, before anything is written: the phone_number_id is Meta's
    /// numeric id, a secret given is not blank, an allowlist holds customers' ids (digits or business-scoped ids).
    pub fn check(&self) -> Result<(), String> {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(self.phone_number_id.trim()) {
            return Err(format!(
                "phone_number_id must be Meta's numeric id, got {:?}",
                self.phone_number_id
            ));
        }
        if let Some(app) = &self.app_id
            && !digits(app.trim())
        {
            return Err(format!("app_id must be Meta's numeric App ID, got {app:?}"));
        }
        let blank = |s: &Secret<String>| s.expose().trim().is_empty();
        if let Some(secrets) = &self.app_secrets
            && (secrets.is_empty() || secrets.iter().any(blank))
        {
            return Err("app_secrets must hold at least one secret, none blank".into());
        }
        for (name, secret) in [
            ("verify_token", &self.verify_token),
            ("access_token", &self.access_token),
        ] {
            if secret.as_ref().is_some_and(blank) {
                return Err(format!("{name} is blank"));
            }
        }
        // Named by its position, never quoted: a refused entry may still be a customer's name or
        // number, and this message goes back in a 400 and to logs.
        if let Some(bad) = self
            .phone_allowlist
            .iter()
            .flatten()
            .position(|c| allowlist_entry(c).is_none())
        {
            return Err(format!(
                "the allowlist takes customers' wa_id digits or business-scoped ids: entry {} \
                 (from 1) is neither",
                bad + 1
            ));
        }
        Ok(())
    }
}

/// An allowlist entry as it is stored, or `None` for what is neither a phone number nor a
/// business-scoped id: a number in any usual notation (`+57 300 123 4567`) becomes its digits,
/// which is what Meta's `wa_id` holds, as `customer erase` and templates take it
/// ([`crate::erasure::normalise_customer`]); a business-scoped id (`US.1349…`) stays as it is,
/// trimmed.
pub fn allowlist_entry(raw: &str) -> Option<String> {
    crate::erasure::normalise_customer(raw).filter(|c| {
        c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    })
}

/// What [`upsert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub id: i64,
    /// The number was not there before.
    pub created: bool,
    /// The pause of the channel's sends when it was saved (`None`: not paused), and whether the
    /// save lifted it: a new access token lifts a pause a token fixes ([`Pause::new_token_lifts`]).
    pub pause: Option<(Pause, bool)>,
}

/// A channel's sends, paused by the sender after a configuration error (see
/// `stages::sender`): until when, and why. Meta's code and what it means in our words, never
/// Meta's message (whatever it may quote).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pause {
    pub until: DateTime<Utc>,
    /// Meta's error code; `None` for a pause of our own (no access token, or one that does not
    /// decrypt).
    pub code: Option<i64>,
    /// What the code means, for an operator.
    pub meaning: String,
    /// Whether putting in a new access token lifts it (190 and 0, or a pause of our own); a locked
    /// account or a missing permission stays until `wafleetctl channel resume`.
    pub new_token_lifts: bool,
}

impl Pause {
    /// The pause stored as `sends_paused_until` / `_code` / `_reason`; `None` unless `until` is
    /// given (the query gives it only while it is in the future).
    fn from_columns(
        until: Option<DateTime<Utc>>,
        code: Option<i32>,
        reason: Option<String>,
    ) -> Option<Self> {
        let code = code.map(i64::from);
        Some(Pause {
            until: until?,
            code,
            meaning: match code {
                Some(code) => graph_error::config_meaning(code).to_string(),
                // Ours: "no access token configured", "the access token does not decrypt…".
                None => reason.unwrap_or_else(|| "no reason recorded".into()),
            },
            new_token_lifts: code.is_none_or(graph_error::new_token_fixes),
        })
    }

    /// "until <time>: 190, the access token expired", for a line of output.
    pub fn describe(&self) -> String {
        let until = self.until.format("%Y-%m-%d %H:%M:%S UTC");
        match self.code {
            Some(code) => format!("until {until}: {code}, {}", self.meaning),
            None => format!("until {until}: {}", self.meaning),
        }
    }
}

/// The pause columns of `channels`, read as [`Pause::from_columns`] takes them (a pause that
/// ended reads as none).
const PAUSE_COLUMNS: &str = "CASE WHEN sends_paused_until > now() THEN sends_paused_until END \
    AS sends_paused_until, sends_paused_code, sends_paused_reason";

/// Logs and counts (`wafleet_channel_pauses_lifted_total{by}`) the lift of a channel's pause in
/// a long-running process: `by` is `new_token` when the API's `PUT` brought a new access token.
/// (`wafleetctl`, which no one scrapes, prints its lifts instead.)
pub fn pause_lifted(phone_number_id: &str, pause: &Pause, by: &'static str) {
    metrics::counter!("wafleet_channel_pauses_lifted_total", "by" => by).increment(1);
    tracing::info!(channel = %phone_number_id, by, code = pause.code, meaning = %pause.meaning,
        until = %pause.until, "the pause of the channel's sends was lifted: held replies go out");
}

/// What [`resume`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    NoChannel,
    /// Its sends were not paused (or the pause had ended): nothing changed.
    NotPaused,
    /// The pause was lifted: held sends go out as their jobs look again.
    Lifted(Pause),
}

/// Lifts a channel's pause now, whatever its reason (the operator says it is fixed). Held parts
/// go out when their jobs look again (`SendPolicy::paused_recheck`, 30 s).
pub async fn resume(pool: &PgPool, phone_number_id: &str) -> anyhow::Result<Resumed> {
    let old: Option<SendsPaused> = sqlx::query_as(&format!(
        "WITH old AS (SELECT id, {PAUSE_COLUMNS} FROM channels
                       WHERE phone_number_id = $1 FOR UPDATE),
              lifted AS (UPDATE channels c SET sends_paused_until = NULL,
                                sends_paused_code = NULL, sends_paused_reason = NULL
                           FROM old WHERE c.id = old.id AND old.sends_paused_until IS NOT NULL),
              -- The held parts' retry age starts again, as at the pause (`pause_channel`):
              -- a pause longer than `WAFLEET_SEND_MAX_AGE_MS` must not leave them too old to
              -- wait for the number's rate limit once it is lifted.
              held AS (UPDATE outbound_messages o SET retries_since = now()
                         FROM old WHERE o.channel_id = old.id AND o.state = 'pending'
                                    AND old.sends_paused_until IS NOT NULL)
         SELECT sends_paused_until, sends_paused_code, sends_paused_reason FROM old"
    ))
    .bind(phone_number_id)
    .fetch_optional(pool)
    .await
    .context("lifting the channel's pause")?;
    Ok(match old {
        None => Resumed::NoChannel,
        Some(SendsPaused(Some(pause))) => Resumed::Lifted(pause),
        Some(SendsPaused(None)) => Resumed::NotPaused,
    })
}

/// Records `display` (digits, as Meta's webhooks write it) as the channel's display number
/// unless the stored one has the same digits (a notation of the operator's is kept). Whether
/// the row changed; a number no channel has changes nothing.
pub async fn record_display_number(
    pool: &PgPool,
    phone_number_id: &str,
    display: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE channels SET display_phone_number = $2
          WHERE phone_number_id = $1
            AND (display_phone_number IS NULL
                 OR regexp_replace(display_phone_number, '[^0-9]', '', 'g')
                    <> regexp_replace($2, '[^0-9]', '', 'g'))",
    )
    .bind(phone_number_id)
    .bind(display)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// What a channel's secret is bound to when sealed (the AEAD's associated data).
pub fn owner(phone_number_id: &str, field: &str) -> String {
    format!("channel:{phone_number_id}:{field}")
}

/// Opens a channel's text secret (`field`: `access_token`, `verify_token`, `llm:<name>`).
pub fn open_text(
    cipher: &Cipher,
    phone_number_id: &str,
    field: &str,
    sealed: &[u8],
) -> anyhow::Result<Secret<String>> {
    let plain = cipher.decrypt(&owner(phone_number_id, field), sealed)?;
    Ok(Secret::new(
        String::from_utf8(plain).context("secret is not UTF-8")?,
    ))
}

/// Logs and counts (`wafleet_secrets_unreadable_total{channel,secret}`) a stored secret that
/// does not decrypt and is therefore not used.
pub fn report_unreadable(phone_number_id: &str, secret: &str) {
    metrics::counter!("wafleet_secrets_unreadable_total", "channel" => phone_number_id.to_string(), "secret" => secret.to_string())
        .increment(1);
    tracing::error!(channel = %phone_number_id, secret,
        "a stored secret does not decrypt with WAFLEET_ENCRYPTION_KEY (stored with another key, or changed by hand); it is not used");
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    phone_number_id: String,
    waba_id: Option<String>,
    app_id: Option<String>,
    display_phone_number: Option<String>,
    name: String,
    app_secrets: Vec<Vec<u8>>,
    verify_token: Option<Vec<u8>>,
    access_token: Option<Vec<u8>>,
    enabled: bool,
    bot_mode: String,
    phone_allowlist: Vec<String>,
    updated_at: DateTime<Utc>,
}

impl Row {
    fn decrypt(self, cipher: &Cipher) -> anyhow::Result<Channel> {
        let pnid = &self.phone_number_id;
        let text = |field: &str, v: Option<Vec<u8>>| {
            v.map(|v| open_text(cipher, pnid, field, &v)).transpose()
        };
        Ok(Channel {
            app_secrets: self
                .app_secrets
                .iter()
                .map(|v| {
                    cipher
                        .decrypt(&owner(pnid, "app_secret"), v)
                        .map(Secret::new)
                })
                .collect::<anyhow::Result<_>>()?,
            verify_token: text("verify_token", self.verify_token)?,
            access_token: text("access_token", self.access_token)?,
            bot_mode: self.bot_mode.parse()?,
            id: self.id,
            waba_id: self.waba_id,
            app_id: self.app_id,
            display_phone_number: self.display_phone_number,
            name: self.name,
            enabled: self.enabled,
            phone_allowlist: self.phone_allowlist,
            updated_at: self.updated_at,
            phone_number_id: self.phone_number_id,
        })
    }
}

const COLUMNS: &str = "id, phone_number_id, waba_id, app_id, display_phone_number, name, app_secrets, \
    verify_token, access_token, enabled, bot_mode, phone_allowlist, updated_at";

/// Every channel, decrypted. A row that does not decrypt is an error naming the channel.
pub async fn list(pool: &PgPool, cipher: &Cipher) -> anyhow::Result<Vec<Channel>> {
    rows(pool)
        .await?
        .into_iter()
        .map(|r| {
            let pnid = r.phone_number_id.clone();
            r.decrypt(cipher).with_context(|| unreadable(&pnid))
        })
        .collect()
}

/// Every row, still sealed.
async fn rows(pool: &PgPool) -> anyhow::Result<Vec<Row>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM channels ORDER BY id"))
        .fetch_all(pool)
        .await
        .context("listing channels")
}

fn unreadable(pnid: &str) -> String {
    format!(
        "channel {pnid}: its secrets do not decrypt (is WAFLEET_ENCRYPTION_KEY the key they were stored with?)"
    )
}

/// Every channel whose secrets decrypt, for the processes that serve them. A channel whose app
/// secrets or verify token do not (its row changed by hand, or written with another key) is
/// logged, counted (`wafleet_secrets_unreadable_total{channel,secret="channel"}`) and left out;
/// one whose access token alone does not is kept without it (`secret="access_token"`). One bad row
/// neither stops a fleet from starting nor the other channels' changes from being seen. When
/// channels exist and none decrypts, the key itself is wrong: that is the error, and ingest and
/// workers refuse to start with it.
pub async fn list_readable(pool: &PgPool, cipher: &Cipher) -> anyhow::Result<Vec<Channel>> {
    Ok(read_all(pool, cipher).await?.channels)
}

/// What [`read_all`] found: the channels that decrypt, and the business accounts of those that
/// do not.
pub struct Readable {
    pub channels: Vec<Channel>,
    /// `waba_id`s of unreadable channels: ingest must not let anyone sign these accounts' events
    /// while it cannot tell which app is theirs.
    pub unreadable_wabas: Vec<String>,
}

/// [`list_readable`], keeping the business accounts of the channels it leaves out.
pub async fn read_all(pool: &PgPool, cipher: &Cipher) -> anyhow::Result<Readable> {
    let rows = rows(pool).await?;
    let mut readable = Vec::with_capacity(rows.len());
    let mut unreadable_wabas = Vec::new();
    let mut last_error = None;
    for mut row in rows {
        let pnid = row.phone_number_id.clone();
        let waba = row.waba_id.clone();
        // Ingest needs the app secrets and verify token; an access token that alone does not
        // decrypt leaves the channel served without it (the sender pauses it and alerts).
        let token = row.access_token.take();
        match row.decrypt(cipher) {
            Ok(mut channel) => {
                if let Some(sealed) = token {
                    channel.access_token = open_text(cipher, &pnid, "access_token", &sealed)
                        .inspect_err(|_| report_unreadable(&pnid, "access_token"))
                        .ok();
                }
                readable.push(channel);
            }
            Err(e) => {
                report_unreadable(&pnid, "channel");
                unreadable_wabas.extend(waba);
                last_error = Some(e.context(unreadable(&pnid)));
            }
        }
    }
    match last_error {
        Some(e) if readable.is_empty() => Err(e),
        _ => Ok(Readable {
            channels: readable,
            unreadable_wabas,
        }),
    }
}

pub async fn get(
    pool: &PgPool,
    cipher: &Cipher,
    phone_number_id: &str,
) -> anyhow::Result<Option<Channel>> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM channels WHERE phone_number_id = $1"
    ))
    .bind(phone_number_id)
    .fetch_optional(pool)
    .await
    .context("reading a channel")?;
    row.map(|r| r.decrypt(cipher)).transpose()
}

/// A channel's access token, decrypted (only it: not the channel's other secrets); `None` when
/// the channel or its token does not exist.
pub async fn access_token(
    pool: &PgPool,
    cipher: &Cipher,
    phone_number_id: &str,
) -> anyhow::Result<Option<Secret<String>>> {
    let sealed: Option<Option<Vec<u8>>> =
        sqlx::query_scalar("SELECT access_token FROM channels WHERE phone_number_id = $1")
            .bind(phone_number_id)
            .fetch_optional(pool)
            .await
            .context("reading a channel's access token")?;
    sealed
        .flatten()
        .map(|t| open_text(cipher, phone_number_id, "access_token", &t))
        .transpose()
}

/// A cheap fingerprint of the table: it changes whenever a row is added, changed or removed.
///
/// A digest of every row's (id, updated_at), not `max(updated_at)`: two edits at once can commit
/// in the other order than they were stamped, and the one that commits last then carries the
/// older time, which a poll that already saw the newer one would never notice.
pub async fn fingerprint(pool: &PgPool) -> anyhow::Result<(i64, Option<String>)> {
    sqlx::query_as(
        "SELECT count(*), md5(string_agg(id::text || '@' || updated_at::text, ',' ORDER BY id))
           FROM channels",
    )
    .fetch_one(pool)
    .await
    .context("reading the channels fingerprint")
}

/// Inserts the channel, or updates the fields the spec sets (after [`ChannelSpec::check`]).
pub async fn upsert<'e>(
    db: impl sqlx::PgExecutor<'e>,
    cipher: &Cipher,
    spec: &ChannelSpec,
) -> anyhow::Result<Saved> {
    spec.check().map_err(anyhow::Error::msg)?;
    let pnid = spec.phone_number_id.trim();
    // Each entry once, as it is stored (all of them are, once checked).
    let allowlist: Option<Vec<String>> = spec.phone_allowlist.as_ref().map(|all| {
        let mut stored = Vec::with_capacity(all.len());
        for entry in all.iter().filter_map(|c| allowlist_entry(c)) {
            if !stored.contains(&entry) {
                stored.push(entry);
            }
        }
        stored
    });
    let secrets: Option<Vec<Vec<u8>>> = spec.app_secrets.as_ref().map(|all| {
        all.iter()
            .map(|s| cipher.encrypt(&owner(pnid, "app_secret"), s.expose().as_bytes()))
            .collect()
    });
    let seal = |field: &str, v: &Option<Secret<String>>| {
        v.as_ref()
            .map(|s| cipher.encrypt(&owner(pnid, field), s.expose().as_bytes()))
    };
    // A new access token lifts a pause it fixes (an expired token, one of our own); `old` is the
    // row as it was, for saying which pause was there and whether it was lifted.
    let (id, created, until, code, reason): (
        i64,
        bool,
        Option<DateTime<Utc>>,
        Option<i32>,
        Option<String>,
    ) = sqlx::query_as(&format!(
        "WITH old AS (SELECT id, {PAUSE_COLUMNS} FROM channels WHERE phone_number_id = $1),
              -- A lifted pause gives the held parts their retry age again, as `resume` does.
              held AS (UPDATE outbound_messages o SET retries_since = now()
                         FROM old WHERE o.channel_id = old.id AND o.state = 'pending'
                                    AND $7::bytea IS NOT NULL
                                    AND old.sends_paused_until IS NOT NULL
                                    AND (old.sends_paused_code IS NULL
                                         OR old.sends_paused_code = ANY($12))),
              saved AS (
         INSERT INTO channels (phone_number_id, waba_id, display_phone_number, name, app_secrets,
                               verify_token, access_token, bot_mode, phone_allowlist, enabled,
                               app_id)
         VALUES ($1, $2, $3, COALESCE($4, ''), COALESCE($5, '{{}}'), $6, $7, COALESCE($8, 'on'),
                 COALESCE($9, '{{}}'), COALESCE($10, true), $11)
         ON CONFLICT (phone_number_id) DO UPDATE SET
             waba_id = COALESCE($2, channels.waba_id),
             app_id = COALESCE($11, channels.app_id),
             display_phone_number = COALESCE($3, channels.display_phone_number),
             name = COALESCE($4, channels.name),
             app_secrets = COALESCE($5, channels.app_secrets),
             verify_token = COALESCE($6, channels.verify_token),
             access_token = COALESCE($7, channels.access_token),
             bot_mode = COALESCE($8, channels.bot_mode),
             phone_allowlist = COALESCE($9, channels.phone_allowlist),
             enabled = COALESCE($10, channels.enabled),
             (sends_paused_until, sends_paused_code, sends_paused_reason) =
                 (SELECT CASE WHEN lift THEN NULL ELSE channels.sends_paused_until END,
                         CASE WHEN lift THEN NULL ELSE channels.sends_paused_code END,
                         CASE WHEN lift THEN NULL ELSE channels.sends_paused_reason END
                    FROM (SELECT $7::bytea IS NOT NULL
                                 AND (channels.sends_paused_code IS NULL
                                      OR channels.sends_paused_code = ANY($12)) AS lift) l)
         RETURNING id, (xmax = 0) AS created)
         SELECT saved.id, saved.created, old.sends_paused_until, old.sends_paused_code,
                old.sends_paused_reason
           FROM saved LEFT JOIN old ON true"
    ))
    .bind(pnid)
    .bind(&spec.waba_id)
    .bind(&spec.display_phone_number)
    .bind(&spec.name)
    .bind(secrets)
    .bind(seal("verify_token", &spec.verify_token))
    .bind(seal("access_token", &spec.access_token))
    .bind(spec.bot_mode.map(BotMode::as_str))
    .bind(allowlist)
    .bind(spec.enabled)
    .bind(spec.app_id.as_deref().map(str::trim))
    .bind(graph_error::NEW_TOKEN_CODES.map(|c| c as i32))
    .fetch_one(db)
    .await
    .context("saving the channel")?;
    let pause = Pause::from_columns(until, code, reason).map(|pause| {
        let lifted = spec.access_token.is_some() && pause.new_token_lifts;
        (pause, lifted)
    });
    Ok(Saved { id, created, pause })
}

/// What [`reseal_all`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resealed {
    /// Secrets sealed again with the current key.
    pub resealed: usize,
    /// Secrets already sealed with it.
    pub current: usize,
}

/// Seals every stored secret (channels' app secrets, verify and access tokens, their models' API
/// keys) again with the current key, after a key rotation: opened with any key the cipher
/// holds. One transaction with the rows locked: a secret no key opens fails the whole of it,
/// naming the channel, and nothing is changed. Running it again changes nothing: a row whose
/// secrets are all current is not written (its `updated_at` would move, and every ingest and
/// worker reload its channels for nothing).
pub async fn reseal_all(pool: &PgPool, cipher: &Cipher) -> anyhow::Result<Resealed> {
    type ChannelSecrets = (i64, String, Vec<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);
    // Counted as it goes; a row is written only when one of its secrets was sealed again.
    let (resealed, current) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    let reseal = |owner: &str, stored: &[u8]| -> anyhow::Result<Vec<u8>> {
        Ok(match cipher.reseal(owner, stored)? {
            Some(sealed) => {
                resealed.set(resealed.get() + 1);
                sealed
            }
            None => {
                current.set(current.get() + 1);
                stored.to_vec()
            }
        })
    };
    let mut tx = pool.begin().await?;
    let channels: Vec<ChannelSecrets> = sqlx::query_as(
        "SELECT id, phone_number_id, app_secrets, verify_token, access_token
           FROM channels ORDER BY id FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await
    .context("reading the channels")?;
    for (id, pnid, app_secrets, verify_token, access_token) in channels {
        let resealed_before = resealed.get();
        let app_secrets = app_secrets
            .iter()
            .map(|v| reseal(&owner(&pnid, "app_secret"), v))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("channel {pnid}"))?;
        let field = |name: &str, v: Option<Vec<u8>>| {
            v.map(|v| reseal(&owner(&pnid, name), &v))
                .transpose()
                .with_context(|| format!("channel {pnid}"))
        };
        let verify_token = field("verify_token", verify_token)?;
        let access_token = field("access_token", access_token)?;
        if resealed.get() == resealed_before {
            continue;
        }
        sqlx::query(
            "UPDATE channels SET app_secrets = $2, verify_token = $3, access_token = $4
              WHERE id = $1",
        )
        .bind(id)
        .bind(&app_secrets)
        .bind(&verify_token)
        .bind(&access_token)
        .execute(&mut *tx)
        .await
        .context("saving a channel")?;
    }
    let models: Vec<(i64, i32, String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT p.channel_id, p.position, c.phone_number_id, p.name, p.api_key
           FROM channel_llm_providers p JOIN channels c ON c.id = p.channel_id
          ORDER BY p.channel_id, p.position FOR UPDATE OF p",
    )
    .fetch_all(&mut *tx)
    .await
    .context("reading the channels' models")?;
    for (channel_id, position, pnid, name, api_key) in models {
        let resealed_before = resealed.get();
        let api_key = reseal(&owner(&pnid, &format!("llm:{name}")), &api_key)
            .with_context(|| format!("channel {pnid}, model {name}"))?;
        if resealed.get() == resealed_before {
            continue;
        }
        sqlx::query(
            "UPDATE channel_llm_providers SET api_key = $3 WHERE channel_id = $1 AND position = $2",
        )
        .bind(channel_id)
        .bind(position)
        .bind(&api_key)
        .execute(&mut *tx)
        .await
        .context("saving a model")?;
    }
    tx.commit().await?;
    Ok(Resealed {
        resealed: resealed.get(),
        current: current.get(),
    })
}

/// Enables or disables a channel. Returns false when there is no such channel.
pub async fn set_enabled<'e>(
    db: impl sqlx::PgExecutor<'e>,
    phone_number_id: &str,
    enabled: bool,
) -> anyhow::Result<bool> {
    let done = sqlx::query("UPDATE channels SET enabled = $2 WHERE phone_number_id = $1")
        .bind(phone_number_id)
        .bind(enabled)
        .execute(db)
        .await
        .context("changing the channel")?;
    Ok(done.rows_affected() == 1)
}

/// One model of a channel's chain, as an operator sets it.
#[derive(Debug, Clone)]
pub struct ProviderSpec {
    /// Order in the chain, first tried first.
    pub position: i32,
    /// Label for metrics and logs (`anthropic`, `deepseek`…).
    pub name: String,
    /// `anthropic` or `openai` (any OpenAI-compatible endpoint).
    pub kind: String,
    pub base_url: String,
    pub model: String,
    pub api_key: Secret<String>,
}

impl ProviderSpec {
    /// What is wrong with the model, before anything is written.
    pub fn check(&self) -> Result<(), String> {
        if !matches!(self.kind.as_str(), "anthropic" | "openai") {
            return Err(format!(
                "kind must be anthropic or openai, not {:?}",
                self.kind
            ));
        }
        if self.position < 0 {
            return Err(format!("position must be 0 or more, not {}", self.position));
        }
        for (field, value) in [
            ("name", &self.name),
            ("model", &self.model),
            ("api_key", self.api_key.expose()),
        ] {
            if value.trim().is_empty() {
                return Err(format!("a model's {field} cannot be blank"));
            }
        }
        match reqwest::Url::parse(&self.base_url) {
            // The URL is shown to every token that reaches the number: a credential in it would be
            // too (and is not echoed here either).
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                Err("base_url must not hold a user or password: give the key as api_key".into())
            }
            Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
            // Not quoted: a URL that does not parse may still hold a key (`https//user:key@…`).
            Ok(u) => Err(format!(
                "base_url must be an http(s) URL, not a {} one",
                u.scheme()
            )),
            Err(e) => Err(format!("base_url is not a URL: {e}")),
        }
    }
}

/// Sets (or replaces) the model at `position` of a channel's chain; the key is stored encrypted.
/// Moves the channel's `updated_at`, so workers notice within seconds (their channel cache is
/// short-lived).
pub async fn set_provider<'e>(
    db: impl sqlx::PgExecutor<'e>,
    cipher: &Cipher,
    phone_number_id: &str,
    p: &ProviderSpec,
) -> anyhow::Result<()> {
    p.check().map_err(anyhow::Error::msg)?;
    let key = cipher.encrypt(
        &owner(phone_number_id, &format!("llm:{}", p.name)),
        p.api_key.expose().as_bytes(),
    );
    let done = sqlx::query(
        "WITH ch AS (UPDATE channels SET updated_at = now() WHERE phone_number_id = $1
                     RETURNING id)
         INSERT INTO channel_llm_providers (channel_id, position, name, kind, base_url, model, api_key)
         SELECT id, $2, $3, $4, $5, $6, $7 FROM ch
         ON CONFLICT (channel_id, position) DO UPDATE SET
             name = EXCLUDED.name, kind = EXCLUDED.kind, base_url = EXCLUDED.base_url,
             model = EXCLUDED.model, api_key = EXCLUDED.api_key",
    )
    .bind(phone_number_id)
    .bind(p.position)
    .bind(&p.name)
    .bind(&p.kind)
    .bind(&p.base_url)
    .bind(&p.model)
    .bind(key)
    .execute(db)
    .await
    .context("saving the model")?;
    anyhow::ensure!(
        done.rows_affected() == 1,
        "no channel with phone_number_id {phone_number_id}"
    );
    Ok(())
}

/// The business numbers of the channel's WhatsApp Business Account, its own included (only its
/// own when its WABA id is not recorded).
pub async fn waba_numbers(pool: &PgPool, channel_id: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT o.phone_number_id FROM channels c
           JOIN channels o ON o.id = c.id OR o.waba_id = c.waba_id
          WHERE c.id = $1
          ORDER BY o.id",
    )
    .bind(channel_id)
    .fetch_all(pool)
    .await
}

/// The business numbers of the channel's Meta app: every channel whose webhooks one of this
/// channel's app secrets signs (an app secret is the app's identity), its own included (only its
/// own when it has no app secret recorded). Decrypts every channel's secrets: for rare events
/// (the app's rate limit), not for the hot path. A channel that does not decrypt (another
/// tenant's row changed by hand) is left out, as the processes that serve channels leave it out,
/// instead of failing every app's rate limit with it.
pub async fn app_numbers(
    pool: &PgPool,
    cipher: &Cipher,
    channel_id: i64,
) -> anyhow::Result<Vec<String>> {
    let all = list_readable(pool, cipher).await?;
    let mine: std::collections::HashSet<&[u8]> = all
        .iter()
        .filter(|c| c.id == channel_id)
        .flat_map(|c| c.app_secrets.iter().map(|s| s.expose().as_slice()))
        .collect();
    Ok(all
        .iter()
        .filter(|c| {
            c.id == channel_id
                || c.app_secrets
                    .iter()
                    .any(|s| mine.contains(s.expose().as_slice()))
        })
        .map(|c| c.phone_number_id.clone())
        .collect())
}

/// Removes a channel's own chain (it falls back to the process-wide models): how many models it
/// had, `None` when there is no such channel.
pub async fn clear_providers<'e>(
    db: impl sqlx::PgExecutor<'e>,
    phone_number_id: &str,
) -> anyhow::Result<Option<u64>> {
    let (channels, removed): (i64, i64) = sqlx::query_as(
        "WITH ch AS (UPDATE channels SET updated_at = now() WHERE phone_number_id = $1
                     RETURNING id),
              gone AS (DELETE FROM channel_llm_providers
                        WHERE channel_id = (SELECT id FROM ch) RETURNING 1)
         SELECT (SELECT count(*) FROM ch), (SELECT count(*) FROM gone)",
    )
    .bind(phone_number_id)
    .fetch_one(db)
    .await?;
    Ok((channels == 1).then_some(removed as u64))
}

/// A channel as the API and `wafleetctl channel list` show it: no secret, only whether each is
/// set. Read without decrypting anything, so a process without the encryption key can show it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Summary {
    pub phone_number_id: String,
    pub waba_id: Option<String>,
    pub app_id: Option<String>,
    pub display_phone_number: Option<String>,
    pub name: String,
    pub enabled: bool,
    pub bot_mode: String,
    /// How many app secrets sign its webhooks (two during a rotation).
    pub app_secrets: i32,
    pub verify_token: bool,
    pub access_token: bool,
    pub phone_allowlist: Vec<String>,
    pub updated_at: DateTime<Utc>,
    /// Its sends' pause, while there is one (`null` otherwise).
    #[sqlx(flatten)]
    pub sends_paused: SendsPaused,
}

/// A channel's sends' pause as [`summaries`] reads it from [`PAUSE_COLUMNS`] (`null` in JSON
/// while there is none).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(transparent)]
pub struct SendsPaused(pub Option<Pause>);

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for SendsPaused {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> sqlx::Result<Self> {
        use sqlx::Row;
        Ok(Self(Pause::from_columns(
            row.try_get("sends_paused_until")?,
            row.try_get("sends_paused_code")?,
            row.try_get("sends_paused_reason")?,
        )))
    }
}

/// The channels among `numbers` (every channel when empty), by phone_number_id.
pub async fn summaries(pool: &PgPool, numbers: &[String]) -> sqlx::Result<Vec<Summary>> {
    sqlx::query_as(&format!(
        "SELECT phone_number_id, waba_id, app_id, display_phone_number, name, enabled, bot_mode,
                cardinality(app_secrets) AS app_secrets, verify_token IS NOT NULL AS verify_token,
                access_token IS NOT NULL AS access_token, phone_allowlist, updated_at,
                {PAUSE_COLUMNS}
           FROM channels
          WHERE cardinality($1::text[]) = 0 OR phone_number_id = ANY($1)
          ORDER BY phone_number_id"
    ))
    .bind(numbers)
    .fetch_all(pool)
    .await
}

/// One model of a channel's chain, without its key.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct ModelInfo {
    pub position: i32,
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub model: String,
}

/// A channel's own chain of models, first tried first.
pub async fn models(pool: &PgPool, phone_number_id: &str) -> sqlx::Result<Vec<ModelInfo>> {
    sqlx::query_as(
        "SELECT p.position, p.name, p.kind, p.base_url, p.model
           FROM channel_llm_providers p JOIN channels c ON c.id = p.channel_id
          WHERE c.phone_number_id = $1
          ORDER BY p.position",
    )
    .bind(phone_number_id)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allowlist_entry_is_a_number_in_any_notation_or_a_business_scoped_id() {
        for (raw, stored) in [
            ("+57 300 123 4567", "573001234567"),
            ("(57) 300-123-4567", "573001234567"),
            ("573001234567", "573001234567"),
            (" US.13491208655302741918 ", "US.13491208655302741918"),
        ] {
            assert_eq!(allowlist_entry(raw).as_deref(), Some(stored), "{raw:?}");
        }
        for bad in ["", " ", "+ -", "Camila Rojas", "ana@tienda.co", "57/300"] {
            assert_eq!(allowlist_entry(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_models_url_holds_no_credential_and_the_refusal_does_not_repeat_it() {
        let spec = |base_url: &str| ProviderSpec {
            position: 0,
            name: "own".into(),
            kind: "openai".into(),
            base_url: base_url.into(),
            model: "m".into(),
            api_key: Secret::new("k".into()),
        };
        assert_eq!(spec("https://llm.example.com/v1").check(), Ok(()));
        for bad in [
            "https://user:s3cr3t@llm.example.com/v1",
            "https://s3cr3t@llm.example.com/v1",
            // Mistyped: does not parse, and must not be quoted back either.
            "https//user:s3cr3t@llm.example.com/v1",
        ] {
            let refused = spec(bad).check().unwrap_err();
            assert!(!refused.contains("s3cr3t"), "{refused}");
        }
        assert!(spec("ftp://llm.example.com").check().is_err());
    }
}
