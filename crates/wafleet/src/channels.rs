//! The channel registry: what ingest knows about every business number, served from memory.
//!
//! Ingest must answer Meta in milliseconds and keep answering when Postgres is briefly away, so
//! it never reads Postgres on the request path. A background task polls a cheap fingerprint of the
//! `channels` table (a digest of every row's id and `updated_at`) every `WAFLEET_CHANNEL_REFRESH_MS` and
//! rebuilds the registry when it changes; requests read the current snapshot through an `Arc`
//! swap. A failed refresh keeps the last good snapshot and is logged and counted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use wafleet_core::envelope::Update;
use wafleet_core::signature::AppSecret;

use crate::crypto::Cipher;
use crate::store::channels::{self, BotMode, Channel};

/// Quarantine reason: signed with the secret of an app the number is not linked to. Never
/// replayed: another tenant's app could have forged it.
pub const SIGNED_BY_ANOTHER_APP: &str = "signed_by_another_app";

/// Quarantine reason: an account event for a business account one of whose channels does not
/// decrypt, signed by no app ingest can read: it may be that channel's own app. Replayed once
/// the channel is fixed and its app is known to have signed it.
pub const CHANNEL_UNREADABLE: &str = "channel_unreadable";

/// Replay refusal: the app that signed a quarantined update is not one any channel holds now
/// (its secret was removed since), or the entry predates signers being kept. Which numbers it
/// may speak for cannot be checked, so it is not replayed.
pub const SIGNER_UNKNOWN: &str = "signer_unknown";

/// What ingest needs to route one business number.
#[derive(Debug, Clone)]
pub struct ChannelRoute {
    pub phone_number_id: String,
    pub enabled: bool,
    pub bot_mode: BotMode,
    /// As stored (`channel add --display-phone-number`, or learnt from Meta's webhooks, see
    /// [`crate::ingest::display_numbers`]).
    pub display_phone_number: Option<String>,
    /// Indices into [`Registry::secrets`] of the app secrets that may sign this number's updates.
    pub secret_ids: Vec<usize>,
    pub allowlist: HashSet<String>,
}

/// An immutable snapshot of every channel.
#[derive(Debug, Default)]
pub struct Registry {
    /// Distinct app secrets across all channels; a POST is verified against each.
    pub secrets: Vec<AppSecret>,
    /// Each secret's [`AppSecret::fingerprint`], by the same index.
    fingerprints: Vec<String>,
    /// SHA-256 of each enabled channel's verify token (see [`Registry::verify_token_matches`]).
    verify_tokens: Vec<Vec<u8>>,
    routes: HashMap<String, ChannelRoute>,
    /// Per WhatsApp Business Account id (`channels.waba_id`), who may sign the account's events
    /// (template and account updates name no number).
    waba_signers: HashMap<String, WabaSigners>,
    /// Per Meta App ID (`channels.app_id`): what `/webhooks/whatsapp/{app_id}` checks.
    apps: HashMap<String, AppRoute>,
}

/// What the webhook path of one Meta app checks: the secrets and verify tokens of the readable
/// channels that name the app.
#[derive(Debug, Default)]
struct AppRoute {
    /// Indices into [`Registry::secrets`], each once.
    secret_ids: Vec<usize>,
    /// Verify tokens of the app's enabled channels, as [`token_digest`]s.
    verify_tokens: Vec<Vec<u8>>,
}

/// Who may sign one business account's events.
#[derive(Debug, Default)]
struct WabaSigners {
    /// The app secrets of the account's readable numbers.
    secret_ids: HashSet<usize>,
    /// One of the account's channels does not decrypt: who else may sign is unknown.
    unreadable: bool,
}

impl Registry {
    pub fn build(channels: &[Channel]) -> Self {
        Self::build_with_unreadable(channels, &[])
    }

    /// [`Registry::build`], knowing the business accounts of the channels that could not be
    /// read (see [`channels::read_all`]).
    pub fn build_with_unreadable(channels: &[Channel], unreadable_wabas: &[String]) -> Self {
        let mut secret_index: HashMap<&[u8], usize> = HashMap::new();
        let mut secrets = Vec::new();
        let mut verify_tokens = Vec::new();
        let mut routes = HashMap::new();
        let mut waba_signers: HashMap<String, WabaSigners> = HashMap::new();
        let mut apps: HashMap<String, AppRoute> = HashMap::new();
        for ch in channels {
            let secret_ids: Vec<usize> = ch
                .app_secrets
                .iter()
                .map(|s| {
                    *secret_index
                        .entry(s.expose().as_slice())
                        .or_insert_with(|| {
                            secrets.push(AppSecret::new(s.expose()));
                            secrets.len() - 1
                        })
                })
                .collect();
            if let Some(waba) = &ch.waba_id {
                waba_signers
                    .entry(waba.clone())
                    .or_default()
                    .secret_ids
                    .extend(&secret_ids);
            }
            let token = match (&ch.verify_token, ch.enabled) {
                (Some(token), true) => Some(token_digest(token.expose().as_bytes())),
                _ => None,
            };
            if let Some(app) = &ch.app_id {
                let route = apps.entry(app.clone()).or_default();
                for id in &secret_ids {
                    if !route.secret_ids.contains(id) {
                        route.secret_ids.push(*id);
                    }
                }
                route.verify_tokens.extend(token.clone());
            }
            verify_tokens.extend(token);
            routes.insert(
                ch.phone_number_id.clone(),
                ChannelRoute {
                    phone_number_id: ch.phone_number_id.clone(),
                    enabled: ch.enabled,
                    bot_mode: ch.bot_mode,
                    display_phone_number: ch.display_phone_number.clone(),
                    secret_ids,
                    allowlist: ch.phone_allowlist.iter().cloned().collect(),
                },
            );
        }
        for waba in unreadable_wabas {
            // Named by a channel, so its events are checked, even when no readable channel has it.
            waba_signers.entry(waba.clone()).or_default().unreadable = true;
        }
        Self {
            fingerprints: secrets.iter().map(AppSecret::fingerprint).collect(),
            secrets,
            verify_tokens,
            routes,
            waba_signers,
            apps,
        }
    }

    /// The indices into [`Registry::secrets`] of the app secrets of the channels that name Meta
    /// app `app_id`; `None` when no readable channel names it.
    pub fn app_secret_ids(&self, app_id: &str) -> Option<&[usize]> {
        self.apps.get(app_id).map(|a| a.secret_ids.as_slice())
    }

    /// How many Meta apps have a webhook path of their own.
    pub fn apps(&self) -> usize {
        self.apps.len()
    }

    /// Logs `what` (loaded, reloaded) with the registry's size, and sets the gauges of what a
    /// POST is checked against: `wafleet_ingest_app_secrets` (the distinct secrets a POST to the
    /// shared path may be hashed with, one pass over the body each) and `wafleet_ingest_apps`
    /// (apps with a path of their own, checked once).
    pub fn report(&self, what: &str) {
        tracing::info!(
            channels = self.len(),
            app_secrets = self.secrets.len(),
            apps = self.apps(),
            "{what}"
        );
        metrics::gauge!("wafleet_ingest_app_secrets").set(self.secrets.len() as f64);
        metrics::gauge!("wafleet_ingest_apps").set(self.apps.len() as f64);
    }

    /// The fingerprint of the secret at `signed_by` (the index [`signature::verify`] returned),
    /// kept with quarantined updates.
    ///
    /// [`signature::verify`]: wafleet_core::signature::verify
    pub fn signer_fingerprint(&self, signed_by: usize) -> &str {
        self.fingerprints.get(signed_by).map_or("", String::as_str)
    }

    /// The index of the secret with this fingerprint, if a channel still holds it.
    pub fn signer_by_fingerprint(&self, fingerprint: &str) -> Option<usize> {
        self.fingerprints.iter().position(|f| f == fingerprint)
    }

    pub fn route(&self, phone_number_id: &str) -> Option<&ChannelRoute> {
        self.routes.get(phone_number_id)
    }

    /// Why `update` is kept out of processing (quarantined), if it is: an unknown or disabled
    /// number, a sender outside the allowlist, or a signature by an app the number is not linked
    /// to (`signed_by`: the index of the app secret whose signature matched).
    ///
    /// Account events name no number, only their business account: one for an account some
    /// channel belongs to (`waba_id`) must be signed by the app of one of its numbers; one for an
    /// account no channel names passes (there is nothing to check it against). While one of the
    /// account's channels does not decrypt, an event no readable number's app signed is kept as
    /// [`CHANNEL_UNREADABLE`] (it may be that channel's), not passed.
    pub fn refusal(&self, update: &Update, signed_by: usize) -> Option<&'static str> {
        self.admit(update, signed_by).err()
    }

    /// [`Registry::refusal`] as a `Result`: what keeps `update` out of processing, or, when it is
    /// taken, its number's route (`None` for an account event, which names no number), so a
    /// caller that needs the route looks it up once.
    pub fn admit(
        &self,
        update: &Update,
        signed_by: usize,
    ) -> Result<Option<&ChannelRoute>, &'static str> {
        if let Update::Event(event) = update {
            let signers = event
                .waba_id
                .as_ref()
                .and_then(|w| self.waba_signers.get(w));
            return match signers {
                Some(s) if !s.secret_ids.contains(&signed_by) => Err(if s.unreadable {
                    CHANNEL_UNREADABLE
                } else {
                    SIGNED_BY_ANOTHER_APP
                }),
                _ => Ok(None),
            };
        }
        let Some(pnid) = update.phone_number_id() else {
            return Ok(None);
        };
        let Some(route) = self.route(pnid) else {
            return Err("unknown_channel");
        };
        if !route.enabled {
            return Err("channel_disabled");
        }
        if !route.secret_ids.contains(&signed_by) {
            return Err(SIGNED_BY_ANOTHER_APP);
        }
        // The customer: who wrote, or whom the business wrote to from its app (an echo).
        let (wa_id, user_id) = match update {
            Update::Message(m) => (m.wa_id.as_deref(), m.user_id.as_deref()),
            Update::Echo(e) => (Some(e.to.as_str()), None),
            _ => return Ok(Some(route)),
        };
        // A Mexican or Brazilian customer's wa_id may be the other notation of the number
        // the business listed (see wafleet_core::phone).
        let allowed = route.allowlist.is_empty()
            || [wa_id, user_id]
                .into_iter()
                .flatten()
                .any(|id| route.allowlist.contains(id))
            || wa_id
                .and_then(wafleet_core::phone::other_form)
                .is_some_and(|other| route.allowlist.contains(&other));
        if !allowed {
            return Err("sender_not_allowed");
        }
        Ok(Some(route))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Whether `token` is the verify token of any enabled channel. Digests are compared, every
    /// one in constant time and all of them, so timing tells nothing, not even a token's length
    /// (comparing slices of different lengths returns at once).
    pub fn verify_token_matches(&self, token: &[u8]) -> bool {
        tokens_match(&self.verify_tokens, token)
    }

    /// [`Registry::verify_token_matches`] among the enabled channels that name Meta app `app_id`
    /// (the handshake of `/webhooks/whatsapp/{app_id}`).
    pub fn app_verify_token_matches(&self, app_id: &str, token: &[u8]) -> bool {
        self.apps
            .get(app_id)
            .is_some_and(|a| tokens_match(&a.verify_tokens, token))
    }
}

fn tokens_match(digests: &[Vec<u8>], token: &[u8]) -> bool {
    let asked = token_digest(token);
    digests
        .iter()
        .fold(subtle::Choice::from(0), |acc, t| {
            acc | t.as_slice().ct_eq(&asked)
        })
        .into()
}

/// What verify tokens are compared by: SHA-256, the same length whatever the token's.
fn token_digest(token: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(token).to_vec()
}

/// The shared, swappable current registry.
#[derive(Clone, Default)]
pub struct SharedRegistry(Arc<RwLock<Arc<Registry>>>);

impl SharedRegistry {
    pub fn new(registry: Registry) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(registry))))
    }
    pub fn current(&self) -> Arc<Registry> {
        self.0.read().expect("registry lock poisoned").clone()
    }
    pub fn replace(&self, registry: Registry) {
        *self.0.write().expect("registry lock poisoned") = Arc::new(registry);
    }
}

/// Loads every channel whose secrets decrypt and builds a registry (see
/// [`channels::list_readable`]: a channel that does not decrypt is left out, and its updates are
/// quarantined as `unknown_channel` until it is fixed).
pub async fn load(pool: &PgPool, cipher: &Cipher) -> anyhow::Result<Registry> {
    let read = channels::read_all(pool, cipher).await?;
    Ok(Registry::build_with_unreadable(
        &read.channels,
        &read.unreadable_wabas,
    ))
}

/// Bound on each Postgres step of a refresh. A Postgres that stops answering without a reset (a
/// dead network path) would otherwise hold the step for ever: no failure counted or logged, and
/// a shutdown, which waits for this task, never ending. A channel table is read well within it.
const REFRESH_STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// `step` within [`REFRESH_STEP_TIMEOUT`] (past it, an error); `None` once `stop` fires.
async fn bounded<T>(
    stop: &CancellationToken,
    step: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Option<anyhow::Result<T>> {
    tokio::select! {
        _ = stop.cancelled() => None,
        done = tokio::time::timeout(REFRESH_STEP_TIMEOUT, step) => Some(done.unwrap_or_else(|_| {
            Err(anyhow::anyhow!("Postgres did not answer within {REFRESH_STEP_TIMEOUT:?}"))
        })),
    }
}

/// Keeps `shared` in step with the `channels` table until `stop` fires. `loaded_at` is the
/// table's fingerprint read before `shared` was loaded (`None`: reload at the first tick). Read
/// here instead, it could include a change made after the snapshot (this task may first run much
/// later), and that change would never be loaded.
pub async fn refresh_loop(
    pool: PgPool,
    cipher: Cipher,
    shared: SharedRegistry,
    loaded_at: Option<(i64, Option<String>)>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut last = loaded_at;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(fingerprint) = bounded(&stop, channels::fingerprint(&pool)).await else {
            return;
        };
        let fingerprint = match fingerprint {
            Ok(f) => f,
            Err(e) => {
                metrics::counter!("wafleet_channel_refresh_errors_total").increment(1);
                // `{:#}`: the cause too, not only what was being done.
                tracing::warn!(
                    error = format!("{e:#}"),
                    "channel refresh failed; serving the last snapshot"
                );
                continue;
            }
        };
        if last.as_ref() == Some(&fingerprint) {
            continue;
        }
        let Some(loaded) = bounded(&stop, load(&pool, &cipher)).await else {
            return;
        };
        match loaded {
            Ok(registry) => {
                registry.report("channel registry reloaded");
                shared.replace(registry);
                last = Some(fingerprint);
            }
            Err(e) => {
                metrics::counter!("wafleet_channel_refresh_errors_total").increment(1);
                tracing::error!(
                    error = format!("{e:#}"),
                    "channel reload failed; serving the last snapshot"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use wafleet_core::envelope::FieldEvent;
    use wafleet_core::signature;

    fn channel(pnid: &str, waba: Option<&str>, secret: &str) -> Channel {
        Channel {
            id: 1,
            phone_number_id: pnid.into(),
            waba_id: waba.map(Into::into),
            app_id: None,
            display_phone_number: None,
            name: pnid.into(),
            app_secrets: vec![Secret::new(secret.as_bytes().to_vec())],
            verify_token: None,
            access_token: None,
            enabled: true,
            bot_mode: BotMode::On,
            phone_allowlist: Vec::new(),
            updated_at: chrono::Utc::now(),
        }
    }

    fn event(waba: Option<&str>) -> Update {
        Update::Event(FieldEvent {
            waba_id: waba.map(Into::into),
            field: "account_update".into(),
            raw: serde_json::value::RawValue::from_string(r#"{"event":"X"}"#.into()).unwrap(),
        })
    }

    #[test]
    fn an_accounts_events_must_be_signed_by_the_app_of_one_of_its_numbers() {
        let registry = Registry::build(&[
            channel("1", Some("W-A"), "app-a"),
            channel("2", Some("W-A"), "app-a2"),
            channel("3", Some("W-B"), "app-b"),
            channel("4", None, "app-c"),
        ]);
        // The index ingest gets when `secret` signed the POST.
        let signer = |secret: &str| {
            let header = signature::sign(b"{}", secret.as_bytes());
            signature::verify(b"{}", Some(header.as_bytes()), &registry.secrets).ok()
        };
        let [a, a2, b, c] = ["app-a", "app-a2", "app-b", "app-c"].map(|s| signer(s).unwrap());

        // Either number's app may sign for account A; account B's app may not.
        assert_eq!(registry.refusal(&event(Some("W-A")), a), None);
        assert_eq!(registry.refusal(&event(Some("W-A")), a2), None);
        assert_eq!(
            registry.refusal(&event(Some("W-A")), b),
            Some(SIGNED_BY_ANOTHER_APP)
        );
        assert_eq!(
            registry.refusal(&event(Some("W-B")), c),
            Some(SIGNED_BY_ANOTHER_APP)
        );
        // An account no channel names, or an event naming none, cannot be checked: it passes.
        assert_eq!(registry.refusal(&event(Some("W-Z")), b), None);
        assert_eq!(registry.refusal(&event(None), b), None);
        // A quarantined update names its signer by fingerprint, found again after a reload.
        let fingerprint = registry.signer_fingerprint(b).to_string();
        let reloaded = Registry::build(&[
            channel("3", Some("W-B"), "app-b"),
            channel("1", Some("W-A"), "app-a"),
        ]);
        let again = reloaded.signer_by_fingerprint(&fingerprint).unwrap();
        assert_eq!(
            reloaded.refusal(&event(Some("W-A")), again),
            Some(SIGNED_BY_ANOTHER_APP)
        );
        assert_eq!(reloaded.refusal(&event(Some("W-B")), again), None);
        assert_eq!(
            reloaded.signer_by_fingerprint(registry.signer_fingerprint(a2)),
            None
        );
        assert_ne!(
            registry.signer_fingerprint(a),
            registry.signer_fingerprint(a2)
        );
    }

    /// The registry of channel "1" serving only `allowlist`, and the index of its app's secret.
    fn allowlisted(allowlist: &[&str]) -> (Registry, usize) {
        let mut ch = channel("1", None, "app");
        ch.phone_allowlist = allowlist.iter().map(|n| n.to_string()).collect();
        let registry = Registry::build(&[ch]);
        let header = signature::sign(b"{}", b"app");
        let signer = signature::verify(b"{}", Some(header.as_bytes()), &registry.secrets).unwrap();
        (registry, signer)
    }

    #[test]
    fn an_allowlist_lets_in_a_customer_named_in_the_other_notation_of_their_number() {
        let (registry, signer) = allowlisted(&["525512345678", "5511987654321"]);
        let from = |wa_id: &str| {
            let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{
                "id": "W", "changes": [{"field": "messages", "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "1", "phone_number_id": "1"},
                    "contacts": [{"profile": {"name": "C"}, "wa_id": wa_id}],
                    "messages": [{"from": wa_id, "id": "wamid.A", "timestamp": "1",
                                  "type": "text", "text": {"body": "hola"}}]}}]}]});
            let parsed = wafleet_core::webhook::parse(body.to_string().as_bytes()).unwrap();
            registry.refusal(&parsed.updates[0], signer)
        };
        // Meta names these customers 521… and 55 11 8…: the allowlist lists 52 … and 55 11 9 8….
        assert_eq!(from("5215512345678"), None);
        assert_eq!(from("551187654321"), None);
        assert_eq!(from("525512345678"), None);
        assert_eq!(from("5215512345679"), Some("sender_not_allowed"));
        assert_eq!(from("573005550101"), Some("sender_not_allowed"));
    }

    /// The owner writing from the WhatsApp Business app to a customer the bot does not serve
    /// is kept aside, as that customer's own messages are.
    #[test]
    fn an_echo_to_a_customer_outside_the_allowlist_is_kept_aside() {
        let (registry, signer) = allowlisted(&["525512345678"]);
        let to = |to: &str| {
            let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{
                "id": "W", "changes": [{"field": "smb_message_echoes", "value": {
                    "metadata": {"display_phone_number": "1", "phone_number_id": "1"},
                    "message_echoes": [{"from": "1", "to": to, "id": "wamid.E",
                                        "type": "text", "text": {"body": "hola"}}]}}]}]});
            let parsed = wafleet_core::webhook::parse(body.to_string().as_bytes()).unwrap();
            assert_eq!(
                parsed.updates[0].kind(),
                wafleet_core::envelope::UpdateKind::Echo
            );
            registry.refusal(&parsed.updates[0], signer)
        };
        assert_eq!(to("5215512345678"), None);
        assert_eq!(to("573005550101"), Some("sender_not_allowed"));
    }

    #[test]
    fn an_account_with_an_unreadable_channel_lets_no_other_app_sign_its_events() {
        // Account W-U's only channel does not decrypt; W-A's second one does not either.
        let registry = Registry::build_with_unreadable(
            &[
                channel("1", Some("W-A"), "app-a"),
                channel("3", Some("W-B"), "app-b"),
            ],
            &["W-U".to_string(), "W-A".to_string()],
        );
        let signer = |secret: &str| {
            let header = signature::sign(b"{}", secret.as_bytes());
            signature::verify(b"{}", Some(header.as_bytes()), &registry.secrets).unwrap()
        };
        let (a, b) = (signer("app-a"), signer("app-b"));
        assert_eq!(
            registry.refusal(&event(Some("W-U")), b),
            Some(CHANNEL_UNREADABLE)
        );
        assert_eq!(registry.refusal(&event(Some("W-A")), a), None);
        assert_eq!(
            registry.refusal(&event(Some("W-A")), b),
            Some(CHANNEL_UNREADABLE)
        );
        assert_eq!(
            registry.refusal(&event(Some("W-B")), a),
            Some(SIGNED_BY_ANOTHER_APP)
        );
    }

    /// A refresh that fails says why in its log line: it said only what it was doing ("reading
    /// the channels fingerprint"), and an operator could not tell an unreachable Postgres from
    /// a refused password or a failed query.
    #[tokio::test]
    async fn a_failed_refresh_logs_its_cause() {
        let logs = crate::telemetry::CapturedLogs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        // Nothing listens on port 1 of the loopback: every connection is refused.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://wafleet@127.0.0.1:1/wafleet")
            .unwrap();
        let stop = CancellationToken::new();
        let refresher = refresh_loop(
            pool,
            Cipher::from_key_text(&Cipher::generate_key_text()).unwrap(),
            SharedRegistry::new(Registry::default()),
            None,
            Duration::from_millis(10),
            stop.clone(),
        );
        let logged = async {
            loop {
                if let Some(line) = logs
                    .text()
                    .lines()
                    .find(|l| l.contains("channel refresh failed"))
                {
                    return line.to_owned();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let line = tokio::select! {
            line = tokio::time::timeout(Duration::from_secs(20), logged) => line.expect("a refresh failure logged"),
            _ = refresher => unreachable!("the refresher runs until stopped"),
        };
        stop.cancel();
        assert!(
            line.contains("reading the channels fingerprint: pool timed out"),
            "{line}"
        );
    }
}
