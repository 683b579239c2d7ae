//! `wafleetctl` run as operators run it: the built binary, in a clean environment holding only
//! the deployment's variables, against the real Postgres and Redis of the test harness (a fresh
//! database and Redis key prefix per test). What is checked is what an operator relies on: the
//! exit status (0 done, 1 refused or failed, 2 a usage error), what goes to stdout and stderr,
//! and that secrets and customers' data are never printed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use wafleet_tests::{
    APP_SECRET, Ingest, TestConfig, VERIFY_TOKEN, Worker, eventually, read_stream, text_message,
    wait_count,
};

const PNID: &str = "106540352242922";
/// A number no channel has (a typo of the operator's).
const UNKNOWN: &str = "106540352242999";
const ACCESS_TOKEN: &str = "EAAGtest-access-token-never-printed";

/// What one run of the binary did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Ran {
    /// Exited 0.
    #[track_caller]
    fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "{self:?}");
        self
    }

    /// Exited with `code`, saying why on stderr (and nothing on stdout).
    #[track_caller]
    fn refused(self, code: i32) -> Self {
        assert_eq!(self.code, Some(code), "{self:?}");
        assert!(!self.stderr.trim().is_empty(), "{self:?}");
        assert!(self.stdout.is_empty(), "{self:?}");
        self
    }

    /// Stdout holds `text`.
    #[track_caller]
    fn says(&self, text: &str) -> &Self {
        assert!(self.stdout.contains(text), "{text:?} not said: {self:?}");
        self
    }

    /// Stderr holds `text`.
    #[track_caller]
    fn complains(&self, text: &str) -> &Self {
        assert!(
            self.stderr.contains(text),
            "{text:?} not on stderr: {self:?}"
        );
        self
    }

    /// Neither stream holds `text`.
    #[track_caller]
    fn never_shows(&self, text: &str) -> &Self {
        assert!(
            !self.stdout.contains(text) && !self.stderr.contains(text),
            "{text:?} printed: {self:?}"
        );
        self
    }

    /// The line of stdout starting with `start`.
    #[track_caller]
    fn line(&self, start: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?}: {self:?}"))
    }
}

/// The variables of the test's deployment, as an operator's shell would have them.
fn deployment(cfg: &TestConfig) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", cfg.database_url.clone()),
        ("REDIS_URL", cfg.redis_url.clone()),
        ("WAFLEET_REDIS_PREFIX", cfg.prefix.clone()),
        ("WAFLEET_PARTITIONS", cfg.partitions.to_string()),
        ("WAFLEET_ENCRYPTION_KEY", cfg.key.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Runs `wafleetctl ARGS` with exactly `env` (nothing inherited: no backtraces, no stray
/// `WHATSAPP_APP_SECRET`) and no stdin.
async fn run(env: &[(String, String)], args: &[&str]) -> Ran {
    run_to(env, args, Stdio::piped()).await
}

/// `run`, its stdout a pipe whose reader is gone, as in `wafleetctl … | head -1` once `head` has
/// its line (stdout is then empty in the result).
async fn run_into_closed_pipe(env: &[(String, String)], args: &[&str]) -> Ran {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    run_to(env, args, writer.into()).await
}

async fn run_to(env: &[(String, String)], args: &[&str], stdout: Stdio) -> Ran {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wafleetctl"))
        .env_clear()
        .envs(env.iter().cloned())
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run wafleetctl");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("wafleetctl {args:?} did not finish"))
        .expect("wafleetctl's output");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// `wafleetctl ARGS` on the test's deployment.
async fn ctl(cfg: &TestConfig, args: &[&str]) -> Ran {
    run(&deployment(cfg), args).await
}

/// `wafleetctl ARGS` on the test's deployment, which must succeed saying `text` on stdout.
async fn ctl_says(cfg: &TestConfig, args: &[&str], text: &str) -> Ran {
    let ran = ctl(cfg, args).await.ok();
    ran.says(text);
    ran
}

/// `wafleetctl ARGS` on the test's deployment, with `changes` to its variables (`None` unsets).
async fn ctl_with(cfg: &TestConfig, changes: &[(&str, Option<&str>)], args: &[&str]) -> Ran {
    let mut env: HashMap<String, String> = deployment(cfg).into_iter().collect();
    for (name, value) in changes {
        match value {
            Some(v) => env.insert(name.to_string(), v.to_string()),
            None => env.remove(*name),
        };
    }
    run(&env.into_iter().collect::<Vec<_>>(), args).await
}

/// A port nothing listens on (bound, then let go).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `channel add` of `pnid` with the test harness's app secret, verify token and an access token.
async fn add_channel(cfg: &TestConfig, pnid: &str) -> Ran {
    ctl(
        cfg,
        &[
            "channel",
            "add",
            "--phone-number-id",
            pnid,
            "--app-secret",
            APP_SECRET,
            "--verify-token",
            VERIFY_TOKEN,
            "--access-token",
            ACCESS_TOKEN,
        ],
    )
    .await
    .ok()
}

/// A file of the test's, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("wafleetctl-cli-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    /// A file whose name ends in `.EXT`, as an operator's photo or invoice does.
    fn with_extension(extension: &str, contents: &[u8]) -> Self {
        let file = Self::new(contents);
        let named = file.0.with_extension(extension);
        std::fs::rename(&file.0, &named).unwrap();
        std::mem::forget(file);
        Self(named)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The cells of a `channel list` row.
fn cells(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

async fn count(cfg: &TestConfig, sql: &str) -> i64 {
    wafleet_tests::count(&cfg.pg().await, sql).await
}

/// Every entry of the inbound partition streams.
async fn inbound(cfg: &TestConfig) -> Vec<(String, HashMap<String, Vec<u8>>)> {
    let mut con = cfg.redis().await;
    let mut all = Vec::new();
    for p in 0..cfg.partitions {
        all.extend(read_stream(&mut con, &cfg.keys().inbound(p)).await);
    }
    all
}

#[tokio::test]
async fn a_channel_added_is_listed_and_its_secrets_are_never_printed() {
    let cfg = TestConfig::new().await;
    let token_file = TempFile::new(format!("{ACCESS_TOKEN}\n").as_bytes());
    let added = ctl_with(
        &cfg,
        &[("SHOP_APP_SECRET", Some(APP_SECRET))],
        &[
            "channel",
            "add",
            "--phone-number-id",
            PNID,
            "--waba-id",
            "WABA1",
            "--display-phone-number",
            "15550000000",
            "--app-secret",
            "env:SHOP_APP_SECRET",
            "--verify-token",
            VERIFY_TOKEN,
            "--access-token",
            &format!("file:{}", token_file.path()),
        ],
    )
    .await
    .ok();
    added.says(&format!("channel {PNID} added"));
    let list = ctl(&cfg, &["channel", "list"]).await.ok();
    assert_eq!(
        cells(list.line("PHONE_NUMBER_ID")),
        cells("PHONE_NUMBER_ID WABA APP DISPLAY ENABLED BOT SECRETS VERIFY TOKEN ALLOWLIST PAUSED")
    );
    assert_eq!(
        cells(list.line(PNID)),
        [
            PNID,
            "WABA1",
            "-",
            "15550000000",
            "true",
            "on",
            "1",
            "yes",
            "yes",
            "0",
            "-"
        ],
        "{list:?}"
    );
    let show = ctl(&cfg, &["channel", "show", PNID]).await.ok();
    // Saved again with only its bot mode, while WHATSAPP_APP_SECRET holds another number's
    // secret: what was stored stays, nothing is taken from the environment.
    let shadow = ctl_with(
        &cfg,
        &[("WHATSAPP_APP_SECRET", Some("another-numbers-secret"))],
        &[
            "channel",
            "add",
            "--phone-number-id",
            PNID,
            "--bot-mode",
            "shadow",
        ],
    )
    .await
    .ok();
    shadow.says(&format!("channel {PNID} saved"));
    let relisted = ctl(&cfg, &["channel", "list"]).await.ok();
    assert_eq!(
        cells(relisted.line(PNID))[4..],
        ["true", "shadow", "1", "yes", "yes", "0", "-"],
        "{relisted:?}"
    );
    for ran in [&added, &list, &show, &shadow, &relisted] {
        ran.never_shows(ACCESS_TOKEN)
            .never_shows(APP_SECRET)
            .never_shows(VERIFY_TOKEN)
            .never_shows(&cfg.key);
    }
}

/// Pauses the channel's sends for ten minutes for Meta's `code`, as the sender does.
async fn pause(cfg: &TestConfig, code: i32) {
    sqlx::query(
        "UPDATE channels SET sends_paused_until = now() + interval '10 minutes',
                sends_paused_code = $1,
                sends_paused_reason = 'Graph configuration error ' || $1 || ': (#' || $1 || ') Meta says'",
    )
    .bind(code)
    .execute(&cfg.pg().await)
    .await
    .unwrap();
}

/// `channel add` of the test channel with a new access token, which must succeed.
async fn new_token(cfg: &TestConfig, token: &str) -> Ran {
    ctl(
        cfg,
        &[
            "channel",
            "add",
            "--phone-number-id",
            PNID,
            "--access-token",
            token,
        ],
    )
    .await
    .ok()
}

const PAUSED: &str = "SELECT count(*) FROM channels WHERE sends_paused_until > now()";

#[tokio::test]
async fn a_paused_channel_is_listed_with_until_when_and_why_and_resumed_by_command() {
    let cfg = TestConfig::new().await;
    add_channel(&cfg, PNID).await;
    // Not paused: said, and nothing to do is not a failure.
    let idle = ctl(&cfg, &["channel", "resume", PNID]).await.ok();
    assert_eq!(
        idle.stdout,
        format!("channel {PNID} is not paused: nothing to resume\n")
    );
    pause(&cfg, 131031).await;
    let list = ctl(&cfg, &["channel", "list"]).await.ok();
    let until = cells(list.line(PNID))[10];
    let until = chrono::DateTime::parse_from_rfc3339(until)
        .unwrap_or_else(|e| panic!("PAUSED is not a time ({e}): {list:?}"));
    assert!(
        until > chrono::Utc::now() + chrono::Duration::minutes(9),
        "{list:?}"
    );
    let why = list.line(&format!("channel {PNID}: sends paused until "));
    assert!(
        why.contains("131031, the business account is locked")
            && why.contains(&format!("wafleetctl channel resume {PNID}")),
        "{list:?}"
    );
    // Meta's own message is not repeated.
    list.never_shows("Meta says");
    // A new token does not unlock an account: the pause stays, and the output says so.
    let saved = new_token(&cfg, "EAAG-a-newer-token").await;
    saved
        .says("sends stay paused")
        .says("131031, the business account is locked");
    assert_eq!(count(&cfg, PAUSED).await, 1);
    let resumed = ctl(&cfg, &["channel", "resume", PNID]).await.ok();
    assert!(
        resumed.stdout.starts_with(&format!(
            "channel {PNID} resumed: its sends were paused until "
        )) && resumed
            .stdout
            .contains("131031, the business account is locked"),
        "{resumed:?}"
    );
    assert_eq!(count(&cfg, PAUSED).await, 0);
    assert_eq!(
        count(
            &cfg,
            "SELECT count(*) FROM channels WHERE sends_paused_code IS NULL
                AND sends_paused_reason IS NULL"
        )
        .await,
        1
    );
    let relisted = ctl(&cfg, &["channel", "list"]).await.ok();
    assert_eq!(cells(relisted.line(PNID))[10], "-", "{relisted:?}");
    let again = ctl(&cfg, &["channel", "resume", PNID]).await.ok();
    again.says("is not paused");
    for ran in [&idle, &list, &saved, &resumed, &relisted, &again] {
        ran.never_shows(ACCESS_TOKEN)
            .never_shows("EAAG-a-newer-token");
    }
}

#[tokio::test]
async fn a_new_access_token_lifts_a_pause_for_an_expired_token_and_says_so() {
    let cfg = TestConfig::new().await;
    add_channel(&cfg, PNID).await;
    pause(&cfg, 190).await;
    // A change without a token leaves the pause.
    ctl(
        &cfg,
        &[
            "channel",
            "add",
            "--phone-number-id",
            PNID,
            "--bot-mode",
            "on",
        ],
    )
    .await
    .ok()
    .says("sends stay paused");
    assert_eq!(count(&cfg, PAUSED).await, 1);
    let saved = new_token(&cfg, "EAAG-the-renewed-token").await;
    saved
        .says("the new access token lifts the pause of its sends")
        .says("190, the access token expired");
    saved.never_shows("EAAG-the-renewed-token");
    assert_eq!(count(&cfg, PAUSED).await, 0);
}

#[tokio::test]
async fn a_disabled_channel_is_listed_as_disabled_until_enabled() {
    let cfg = TestConfig::new().await;
    add_channel(&cfg, PNID).await;
    let disabled = ctl(&cfg, &["channel", "disable", PNID]).await.ok();
    assert_eq!(disabled.stdout, format!("channel {PNID} disabled\n"));
    let list = ctl(&cfg, &["channel", "list"]).await.ok();
    assert_eq!(cells(list.line(PNID))[4], "false", "{list:?}");
    let enabled = ctl(&cfg, &["channel", "enable", PNID]).await.ok();
    assert!(
        enabled
            .stdout
            .starts_with(&format!("channel {PNID} enabled\n")),
        "{enabled:?}"
    );
    let list = ctl(&cfg, &["channel", "list"]).await.ok();
    assert_eq!(cells(list.line(PNID))[4], "true", "{list:?}");
}

#[tokio::test]
async fn every_command_given_a_number_no_channel_has_fails_naming_it() {
    let cfg = TestConfig::new().await;
    add_channel(&cfg, PNID).await;
    ctl(
        &cfg,
        &[
            "knowledge",
            "add",
            PNID,
            "Envíos",
            "Enviamos a todo el país.",
        ],
    )
    .await
    .ok();
    let listed = ctl(&cfg, &["knowledge", "list", PNID]).await.ok();
    listed.line("Envíos\tsimple\t24\t");
    let model = [
        "--name",
        "anthropic",
        "--kind",
        "anthropic",
        "--base-url",
        "https://api.anthropic.com",
        "--model",
        "claude",
        "--api-key",
        "sk-never-printed",
    ];
    let commands: Vec<Vec<&str>> = vec![
        vec!["channel", "disable", UNKNOWN],
        vec!["channel", "enable", UNKNOWN],
        vec!["channel", "show", UNKNOWN],
        vec!["channel", "set", UNKNOWN, "system_prompt", "Sé breve."],
        vec!["channel", "unset", UNKNOWN, "system_prompt"],
        [
            &["channel", "model", "--phone-number-id", UNKNOWN][..],
            &model,
        ]
        .concat(),
        vec!["channel", "clear-models", UNKNOWN],
        vec!["channel", "resume", UNKNOWN],
        vec!["channel", "check", UNKNOWN],
        vec!["knowledge", "add", UNKNOWN, "Envíos", "Enviamos."],
        vec!["knowledge", "list", UNKNOWN],
        vec!["knowledge", "remove", UNKNOWN, "Envíos"],
        vec!["api-token", "add", "dashboard", "--number", UNKNOWN],
        vec!["customer", "erase", UNKNOWN, "+57 300 123 4567", "--yes"],
        vec![
            "conversation",
            "start",
            UNKNOWN,
            "+57 300 123 4567",
            "order_update",
            "--language",
            "es",
        ],
    ];
    for args in commands {
        let ran = ctl(&cfg, &args).await;
        assert_eq!(ran.code, Some(1), "{args:?}: {ran:?}");
        assert!(
            ran.stderr.contains(&format!("no channel {UNKNOWN}"))
                || ran
                    .stderr
                    .contains(&format!("no channel with phone_number_id {UNKNOWN}"))
                || ran
                    .stderr
                    .contains(&format!("no channel has the number(s) {UNKNOWN}")),
            "{args:?}: {ran:?}"
        );
        assert!(ran.stdout.is_empty(), "{args:?}: {ran:?}");
        ran.never_shows("sk-never-printed");
    }
    // Nothing was made on the way.
    assert_eq!(count(&cfg, "SELECT count(*) FROM channels").await, 1);
    assert_eq!(count(&cfg, "SELECT count(*) FROM api_tokens").await, 0);
    assert_eq!(
        count(&cfg, "SELECT count(*) FROM knowledge_entries").await,
        1
    );
    assert_eq!(count(&cfg, "SELECT count(*) FROM conversations").await, 0);
}

#[tokio::test]
async fn a_missing_or_malformed_encryption_key_is_named_and_never_echoed() {
    let cfg = TestConfig::new().await;
    let needing_the_key: [&[&str]; 4] = [
        &[
            "channel",
            "add",
            "--phone-number-id",
            PNID,
            "--access-token",
            ACCESS_TOKEN,
        ],
        &["channel", "list"],
        &["rotate-secrets"],
        &["quarantine", "replay", "--all"],
    ];
    // Keys an operator may paste by mistake: a password, and one character off a real key
    // ('!' for its last character, with a '+' early on that only URL-safe base64 refuses).
    let bad_keys = [
        "hunter2-my-password",
        "Q+WdEfm3XQ4lD5ksV0Bq9FQ1Ja8pbNkHxWz3YvCj7r!=",
    ];
    for args in needing_the_key {
        let unset = ctl_with(&cfg, &[("WAFLEET_ENCRYPTION_KEY", None)], args)
            .await
            .refused(1);
        assert_eq!(
            unset.stderr, "Error: WAFLEET_ENCRYPTION_KEY must be set\n",
            "{args:?}"
        );
        for key in bad_keys {
            let bad = ctl_with(&cfg, &[("WAFLEET_ENCRYPTION_KEY", Some(key))], args)
                .await
                .refused(1);
            // The variable named, and nothing of the key: not even the one character the
            // base64 decoder names (by its code and offset) as the first it could not read.
            assert_eq!(
                bad.stderr, "Error: WAFLEET_ENCRYPTION_KEY is neither 64 hex digits nor base64\n",
                "{args:?} with {key:?}"
            );
        }
        let previous = ctl_with(
            &cfg,
            &[("WAFLEET_ENCRYPTION_KEY_PREVIOUS", Some(bad_keys[1]))],
            args,
        )
        .await
        .refused(1);
        assert_eq!(
            previous.stderr,
            "Error: WAFLEET_ENCRYPTION_KEY_PREVIOUS is neither 64 hex digits nor base64\n",
            "{args:?}"
        );
    }
    assert_eq!(count(&cfg, "SELECT count(*) FROM channels").await, 0);
}

#[tokio::test]
async fn a_dead_letter_is_listed_without_the_message_and_replayed_onto_its_stream() {
    let cfg = TestConfig {
        partitions: 2,
        ..TestConfig::new().await
    };
    add_channel(&cfg, PNID).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let (customer, text) = ("573001234567", "mi tarjeta es 4111 1111 1111 1111");
    let now = chrono::Utc::now().timestamp();
    let body = text_message(PNID, customer, "wamid.DEAD1", now, text);
    assert_eq!(ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    ingest.stop().await.unwrap();
    // The number is taken out of Postgres (by hand) before the conversation stage reads the
    // message: the stage gives it up as a dead letter.
    sqlx::query("DELETE FROM channels WHERE phone_number_id = $1")
        .bind(PNID)
        .execute(&cfg.pg().await)
        .await
        .unwrap();
    let worker = Worker::start(cfg.worker_settings(&["conversation"])).await;
    let dead_stream = cfg.keys().dead("conversation");
    let id = eventually(
        "the message dead-lettered",
        Duration::from_secs(20),
        || async {
            let dead = read_stream(&mut cfg.redis().await, &dead_stream).await;
            dead.first().map(|(id, _)| id.clone())
        },
    )
    .await;
    worker.stop().await.unwrap();

    let list = ctl(&cfg, &["dead", "list", "conversation"]).await.ok();
    let line = list.line(&id);
    assert!(
        line.contains(&format!("reason=no channel {PNID}")),
        "{list:?}"
    );
    assert_eq!(list.stdout.lines().count(), 1, "{list:?}");
    list.never_shows(customer)
        .never_shows("4111")
        .never_shows("tarjeta");

    // Fixed (the number added again), then replayed: back on its stream, once.
    add_channel(&cfg, PNID).await;
    let replay = ctl(&cfg, &["dead", "replay", "conversation", &id])
        .await
        .ok();
    assert!(
        replay.stdout.starts_with("replayed 1 dead letter(s) from "),
        "{replay:?}"
    );
    replay.never_shows(customer).never_shows("4111");
    assert!(
        read_stream(&mut cfg.redis().await, &dead_stream)
            .await
            .is_empty()
    );
    let back = inbound(&cfg).await;
    assert_eq!(back.len(), 1, "{back:?}");
    assert!(!back[0].1.contains_key("reason"), "{back:?}");
    // It is gone from the dead letters: asked again, the id is named as not there.
    let again = ctl(&cfg, &["dead", "replay", "conversation", &id]).await;
    assert_eq!(again.code, Some(1), "{again:?}");
    again.complains(&id);
    // And the conversation stage takes it this time.
    let worker = Worker::start(cfg.worker_settings(&["conversation"])).await;
    wait_count(&cfg.pg().await, "SELECT count(*) FROM messages", 1, 20).await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn quarantined_updates_are_listed_without_the_message_and_replayed_once_their_number_is_added()
 {
    let cfg = TestConfig::new().await;
    // Another number of the same app: ingest keeps aside only what one of its apps signed.
    add_channel(&cfg, "1122334455667").await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let now = chrono::Utc::now().timestamp();
    for (pnid, customer, wamid) in [
        (PNID, "573001234567", "wamid.Q1"),
        (UNKNOWN, "573007654321", "wamid.Q2"),
    ] {
        let body = text_message(pnid, customer, wamid, now, "hola, soy Ana");
        assert_eq!(ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    }
    ingest.stop().await.unwrap();
    let list = ctl(&cfg, &["quarantine", "list"]).await.ok();
    assert_eq!(list.stdout.lines().count(), 2, "{list:?}");
    for pnid in [PNID, UNKNOWN] {
        let line = list
            .stdout
            .lines()
            .find(|l| l.contains(&format!("channel={pnid} ")))
            .unwrap_or_else(|| panic!("{pnid} not listed: {list:?}"));
        assert!(line.contains("reason=unknown_channel"), "{list:?}");
    }
    list.never_shows("573001234567")
        .never_shows("573007654321")
        .never_shows("Ana");
    let id_of = |pnid: &str| {
        list.stdout
            .lines()
            .find(|l| l.contains(&format!("channel={pnid} ")))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_string()
    };
    let (kept, refused) = (id_of(PNID), id_of(UNKNOWN));

    let added = add_channel(&cfg, PNID).await;
    added.says(&format!("1 update(s) for {PNID} are in quarantine"));
    let replay = ctl(&cfg, &["quarantine", "replay", "--all"]).await.ok();
    assert!(
        replay.line(&refused).contains("still refused"),
        "{replay:?}"
    );
    assert!(
        replay.stdout.lines().last().is_some_and(|l| l
            .starts_with("enqueued 1, already enqueued 0, left in ")
            && l.ends_with(" 1")),
        "{replay:?}"
    );
    assert_eq!(inbound(&cfg).await.len(), 1);
    let left = ctl(&cfg, &["quarantine", "list"]).await.ok();
    assert_eq!(left.stdout.lines().count(), 1, "{left:?}");
    assert!(left.stdout.starts_with(&refused), "{left:?}");
    // The replayed entry left the quarantine: asked for again, it is named as not there.
    let again = ctl(&cfg, &["quarantine", "replay", &kept]).await;
    assert_eq!(again.code, Some(1), "{again:?}");
    again.complains(&kept);
    assert_eq!(inbound(&cfg).await.len(), 1);
}

#[tokio::test]
async fn adding_a_channel_looks_through_only_the_latest_quarantined_updates_and_says_so() {
    let cfg = TestConfig::new().await;
    let (key, mut con) = (cfg.keys().quarantine(), cfg.redis().await);
    let mut pipe = redis::pipe();
    // The number's only update, then a bound's worth of another number's after it.
    pipe.cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("channel")
        .arg(PNID)
        .ignore();
    for _ in 0..wafleet::quarantine::HINT_SCAN {
        pipe.cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("channel")
            .arg(UNKNOWN)
            .ignore();
    }
    let () = pipe.query_async(&mut con).await.unwrap();
    let added = add_channel(&cfg, PNID).await;
    added.says(&format!(
        "no update for {PNID} among the latest {} of the {} in quarantine",
        wafleet::quarantine::HINT_SCAN,
        wafleet::quarantine::HINT_SCAN + 1
    ));
    // One more of the number's, the latest: found, and still said to be a partial count.
    let () = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("channel")
        .arg(PNID)
        .query_async(&mut con)
        .await
        .unwrap();
    let enabled = ctl(&cfg, &["channel", "enable", PNID]).await;
    enabled.ok().says(&format!(
        "1 update(s) for {PNID} among the latest {} of the {} in quarantine",
        wafleet::quarantine::HINT_SCAN,
        wafleet::quarantine::HINT_SCAN + 2
    ));
}

#[tokio::test]
async fn an_api_token_is_printed_once_and_never_listed() {
    let cfg = TestConfig::new().await;
    add_channel(&cfg, PNID).await;
    let added = ctl(&cfg, &["api-token", "add", "dashboard", "--number", PNID])
        .await
        .ok();
    let token = added.stdout.trim_end().to_string();
    assert_eq!(
        added.stdout,
        format!("{token}\n"),
        "the token alone on stdout"
    );
    assert!(
        token.len() == 68
            && token.starts_with("wfa_")
            && token[4..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{added:?}"
    );
    added.complains("shown only now");
    added.complains(PNID);
    assert!(!added.stderr.contains(&token), "{added:?}");
    // Postgres keeps a digest of it, never the token.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_tokens t WHERE strpos(t::text, $1) > 0 OR strpos(t::text, $2) > 0",
    )
    .bind(&token)
    .bind(&token[4..])
    .fetch_one(&cfg.pg().await)
    .await
    .unwrap();
    assert_eq!(stored, 0);

    let twice = ctl(&cfg, &["api-token", "add", "dashboard"])
        .await
        .refused(1);
    twice.complains("exists already");
    let list = ctl(&cfg, &["api-token", "list"]).await.ok();
    list.never_shows(&token).never_shows(&token[4..]);
    assert_eq!(
        list.line("dashboard\t").split('\t').collect::<Vec<_>>()[..2],
        ["dashboard", PNID]
    );
    assert!(list.line("dashboard\t").ends_with("\t-"), "{list:?}");

    let revoked = ctl(&cfg, &["api-token", "revoke", "dashboard"]).await.ok();
    revoked.says("revoked");
    let list = ctl(&cfg, &["api-token", "list"]).await.ok();
    assert!(!list.line("dashboard\t").ends_with("\t-"), "{list:?}");
    list.never_shows(&token);
    let again = ctl(&cfg, &["api-token", "revoke", "dashboard"])
        .await
        .refused(1);
    again.complains("no live token");
}

#[tokio::test]
async fn output_to_a_reader_that_is_gone_neither_panics_nor_stops_the_command() {
    // `wafleetctl generate-key | head -c 0`: std's println! panicked ("failed printing to
    // stdout: Broken pipe"), exit 101 with a panic report.
    let key = run_into_closed_pipe(&[], &["generate-key"]).await.ok();
    assert!(key.stderr.is_empty(), "{key:?}");

    // A command that prints as it goes still does all it was asked.
    let cfg = TestConfig::new().await;
    ctl_says(&cfg, &["migrate"], "migrations applied").await;
    let add = run_into_closed_pipe(
        &deployment(&cfg),
        &[
            "channel",
            "add",
            "--phone-number-id",
            PNID,
            "--app-secret",
            APP_SECRET,
            "--access-token",
            ACCESS_TOKEN,
        ],
    )
    .await
    .ok();
    assert!(add.stderr.is_empty(), "{add:?}");
    ctl(&cfg, &["channel", "list"]).await.ok().line(PNID);
}

#[tokio::test]
async fn usage_errors_exit_2_before_anything_is_read_or_changed() {
    // No deployment at all: a usage error is found before any variable is read.
    let misuses: [&[&str]; 11] = [
        &[],
        &["bogus"],
        &["channel"],
        &["channel", "add"],
        &[
            "channel",
            "add",
            "--phone-number-id",
            PNID,
            "--bot-mode",
            "maybe",
        ],
        &["conversation", "list", "--limit", "0"],
        &["dead", "list", "sender", "--limit", "0"],
        &["quarantine", "list", "--limit", "0"],
        &["usage", "--from", "2026-13-01"],
        &["api-token", "add", "dashboard", "--admin", "--number", PNID],
        &["generate-key", "extra"],
    ];
    for args in misuses {
        let ran = run(&[], args).await.refused(2);
        assert!(
            ran.stderr.contains("Usage: wafleetctl") || ran.stderr.contains("--help"),
            "{args:?}: {ran:?}"
        );
        assert!(!ran.stderr.contains("must be set"), "{args:?}: {ran:?}");
    }
    let help = run(&[], &["--help"]).await.ok();
    help.says("Usage: wafleetctl <COMMAND>");
    let help = run(&[], &["channel", "add", "--help"]).await.ok();
    help.says("--phone-number-id");
}

#[tokio::test]
async fn replays_without_ids_and_unknown_stages_are_refused() {
    let cfg = TestConfig::new().await;
    let stage = ctl(&cfg, &["dead", "list", "bogus"]).await.refused(1);
    stage.complains("unknown stage \"bogus\": one of conversation, status, llm, sender");
    for args in [&["dead", "replay", "sender"][..], &["quarantine", "replay"]] {
        let ran = ctl(&cfg, args).await.refused(1);
        assert!(
            ran.stderr.contains("give entry ids to replay, or --all"),
            "{args:?}: {ran:?}"
        );
    }
    let erase = ctl(&cfg, &["customer", "erase", PNID, "573001234567"])
        .await
        .refused(1);
    erase.complains("add --yes");
    erase.never_shows("573001234567");
}

#[tokio::test]
async fn a_generated_key_serves_the_deployment_and_send_webhook_and_probe_report_failures() {
    let generated = run(&[], &["generate-key"]).await.ok();
    let key = generated.stdout.trim_end().to_string();
    assert_eq!(generated.stdout, format!("{key}\n"));
    assert_ne!(
        run(&[], &["generate-key"]).await.ok().stdout,
        generated.stdout
    );
    // The services read what the CLI sealed with it.
    let cfg = TestConfig {
        key,
        ..TestConfig::new().await
    };
    add_channel(&cfg, PNID).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let url = format!("{}/webhooks/whatsapp", ingest.url);
    let now = chrono::Utc::now().timestamp();
    let body = TempFile::new(&text_message(PNID, "573001234567", "wamid.W1", now, "hola"));
    let sent = ctl_with(
        &cfg,
        &[("WHATSAPP_APP_SECRET", Some(APP_SECRET))],
        &["send-webhook", "--url", &url, body.path()],
    )
    .await
    .ok();
    assert!(sent.stdout.starts_with("200 "), "{sent:?}");
    eventually("the message enqueued", Duration::from_secs(10), || async {
        (inbound(&cfg).await.len() == 1).then_some(())
    })
    .await;
    let forged = ctl(
        &cfg,
        &[
            "send-webhook",
            "--url",
            &url,
            "--secret",
            "not-the-app-secret",
            body.path(),
        ],
    )
    .await;
    assert_eq!(forged.code, Some(1), "{forged:?}");
    assert!(forged.stdout.starts_with("401 "), "{forged:?}");
    forged.complains("ingest answered 401");
    forged.never_shows("not-the-app-secret");
    // A file that is not there is named.
    let missing = format!("{}.missing", body.path());
    let no_file = ctl(
        &cfg,
        &[
            "send-webhook",
            "--url",
            &url,
            "--secret",
            APP_SECRET,
            &missing,
        ],
    )
    .await
    .refused(1);
    no_file.complains(&missing);

    ctl(&cfg, &["probe", &format!("{}/healthz", ingest.url)])
        .await
        .ok();
    let sick = ctl(&cfg, &["probe", &format!("{}/nowhere", ingest.url)]).await;
    assert_eq!(sick.code, Some(1), "{sick:?}");
    sick.complains("is not healthy");
    ingest.stop().await.unwrap();
}

#[tokio::test]
async fn redis_out_of_reach_is_named_without_its_password() {
    let cfg = TestConfig::new().await;
    // A port nothing listens on, behind a password.
    let port = closed_port();
    let url = format!("redis://:redis-pass-never-printed@127.0.0.1:{port}");
    for args in [
        &["dead", "list", "sender"][..],
        &["quarantine", "list"],
        &["customer", "erase", PNID, "573001234567", "--yes"],
    ] {
        let ran = ctl_with(&cfg, &[("REDIS_URL", Some(&url))], args)
            .await
            .refused(1);
        ran.complains("connecting to Redis (REDIS_URL)")
            .never_shows("redis-pass-never-printed");
    }
}

#[tokio::test]
async fn an_error_is_its_message_and_causes_with_no_backtrace_even_when_rust_backtrace_asks() {
    let cfg = TestConfig::new().await;
    let unset = ctl_with(
        &cfg,
        &[("RUST_BACKTRACE", Some("1")), ("DATABASE_URL", None)],
        &["channel", "list"],
    )
    .await
    .refused(1);
    assert_eq!(unset.stderr, "Error: DATABASE_URL must be set\n");
    let port = closed_port();
    let url = format!("redis://127.0.0.1:{port}");
    let away = ctl_with(
        &cfg,
        &[("RUST_BACKTRACE", Some("full")), ("REDIS_URL", Some(&url))],
        &["dead", "list", "sender"],
    )
    .await
    .refused(1);
    assert!(
        away.stderr
            .starts_with("Error: connecting to Redis (REDIS_URL)\n\nCaused by:\n    "),
        "{}",
        away.stderr
    );
    assert!(
        !away.stderr.contains("backtrace") && !away.stderr.contains(".rs:"),
        "{}",
        away.stderr
    );
}

#[tokio::test]
async fn a_title_or_token_name_is_removed_as_it_was_added_whatever_spaces_it_came_with() {
    let cfg = TestConfig::new().await;
    add_channel(&cfg, PNID).await;
    // Pasted with a space around it: stored trimmed, so it is removed the same way.
    ctl_says(
        &cfg,
        &["knowledge", "add", PNID, " Envíos ", "Enviamos."],
        "entry \"Envíos\" added",
    )
    .await;
    ctl_says(
        &cfg,
        &["knowledge", "remove", PNID, " Envíos "],
        "entry \"Envíos\" removed",
    )
    .await;
    let list = ctl(&cfg, &["knowledge", "list", PNID]).await.ok();
    assert_eq!(list.stdout.lines().count(), 1, "only the header: {list:?}");

    ctl(&cfg, &["api-token", "add", " dashboard "]).await.ok();
    ctl_says(
        &cfg,
        &["api-token", "revoke", " dashboard "],
        "token \"dashboard\" revoked",
    )
    .await;
}

#[tokio::test]
async fn a_key_rotation_reseals_every_secret_once_and_the_old_key_can_then_go() {
    let cfg = TestConfig::new().await;
    ctl_says(&cfg, &["migrate"], "migrations applied").await;
    add_channel(&cfg, PNID).await;
    let (old, new) = (
        cfg.key.clone(),
        run(&[], &["generate-key"]).await.ok().stdout,
    );
    let new = new.trim_end();
    // The new key alone reads none of what the old one sealed: that is a wrong key.
    ctl_with(
        &cfg,
        &[("WAFLEET_ENCRYPTION_KEY", Some(new))],
        &["channel", "list"],
    )
    .await
    .refused(1)
    .complains("is WAFLEET_ENCRYPTION_KEY the key they were stored with?")
    .never_shows(new);
    let both = [
        ("WAFLEET_ENCRYPTION_KEY", Some(new)),
        ("WAFLEET_ENCRYPTION_KEY_PREVIOUS", Some(old.as_str())),
    ];
    ctl_with(&cfg, &both, &["rotate-secrets"])
        .await
        .ok()
        .says("3 secret(s) sealed again with WAFLEET_ENCRYPTION_KEY, 0 already were");
    ctl_with(&cfg, &both, &["rotate-secrets"])
        .await
        .ok()
        .says("0 secret(s) sealed again with WAFLEET_ENCRYPTION_KEY, 3 already were");
    let list = ctl_with(
        &cfg,
        &[("WAFLEET_ENCRYPTION_KEY", Some(new))],
        &["channel", "list"],
    )
    .await
    .ok();
    assert_eq!(
        cells(list.line(PNID))[6..10],
        ["1", "yes", "yes", "0"],
        "{list:?}"
    );
    list.never_shows(new)
        .never_shows(&old)
        .never_shows(ACCESS_TOKEN);
}

/// Adds the channel and has one message of customer 573001234567 stored in its conversation,
/// through ingest and the conversation stage.
async fn store_one_message(cfg: &TestConfig, text: &str) {
    add_channel(cfg, PNID).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let now = chrono::Utc::now().timestamp();
    let body = text_message(PNID, "573001234567", "wamid.A1", now, text);
    assert_eq!(ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    let worker = Worker::start(cfg.worker_settings(&["conversation"])).await;
    wait_count(&cfg.pg().await, "SELECT count(*) FROM messages", 1, 20).await;
    worker.stop().await.unwrap();
    ingest.stop().await.unwrap();
}

#[tokio::test]
async fn an_agent_takes_writes_to_and_releases_a_conversation_and_the_customer_is_erased() {
    let cfg = TestConfig::new().await;
    store_one_message(&cfg, "necesito ayuda").await;

    let list = ctl(&cfg, &["conversation", "list"]).await.ok();
    assert_eq!(list.stdout.lines().count(), 2, "{list:?}");
    let row: Vec<&str> = list.stdout.lines().nth(1).unwrap().split('\t').collect();
    assert_eq!(row[1..4], ["bot", PNID, "573001234567"], "{list:?}");
    let id = row[0];
    ctl_says(
        &cfg,
        &["conversation", "take", id],
        &format!("conversation {id} taken from the bot"),
    )
    .await;
    ctl_says(
        &cfg,
        &["conversation", "take", id],
        "was already with a human",
    )
    .await;
    let reply = [
        "conversation",
        "reply",
        id,
        "Hola, soy Carla",
        "--agent",
        "carla",
    ];
    let sent = ctl(&cfg, &[&reply[..], &["--reference", "ref-1"]].concat())
        .await
        .ok();
    sent.says("queued in 1 part(s)")
        .complains("reference ref-1");
    // Repeated with its reference (the first run's answer lost): not written twice.
    ctl_says(
        &cfg,
        &[&reply[..], &["--reference", "ref-1"]].concat(),
        "recorded before with this reference",
    )
    .await;
    let shown = ctl(&cfg, &["conversation", "show", id]).await.ok();
    shown
        .says("customer: necesito ayuda")
        .says("agent carla [pending]: Hola, soy Carla");
    assert_eq!(shown.stdout.lines().count(), 2, "{shown:?}");
    ctl_says(
        &cfg,
        &["conversation", "release", id],
        &format!("conversation {id} given back to the bot"),
    )
    .await;

    // Named in another notation than Meta's: the same customer.
    let erased = ctl(
        &cfg,
        &["customer", "erase", PNID, "+57 300 123-4567", "--yes"],
    )
    .await
    .ok();
    erased
        .says(&format!(
            "erased: 1 conversation(s) ({id}), 1 message(s), 1 outbound part(s)"
        ))
        .never_shows("573001234567");
    let shown = ctl(&cfg, &["conversation", "show", id]).await.ok();
    shown.never_shows("necesito").never_shows("Carla");
    ctl(
        &cfg,
        &["customer", "erase", PNID, "+57 300 123-4567", "--yes"],
    )
    .await
    .refused(1)
    .complains(&format!("number {PNID} has no such customer"));
}

#[tokio::test]
async fn a_list_cut_at_its_limit_says_how_many_it_left_out() {
    let cfg = TestConfig::new().await;
    add_channel(&cfg, "1122334455667").await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let now = chrono::Utc::now().timestamp();
    for i in 0..3 {
        let body = text_message(UNKNOWN, "573001234567", &format!("wamid.L{i}"), now, "hola");
        assert_eq!(ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    }
    ingest.stop().await.unwrap();
    let cut = ctl(&cfg, &["quarantine", "list", "--limit", "2"])
        .await
        .ok();
    assert_eq!(cut.stdout.lines().count(), 2, "{cut:?}");
    cut.complains("2 of 3 entries shown (--limit 3 shows them all)");
    let whole = ctl(&cfg, &["quarantine", "list", "--limit", "3"])
        .await
        .ok();
    assert_eq!(whole.stdout.lines().count(), 3, "{whole:?}");
    assert!(whole.stderr.is_empty(), "{whole:?}");
    // The same for dead letters, read 200 at a time (more than one page here).
    let mut con = cfg.redis().await;
    let mut pipe = redis::pipe();
    for i in 0..250 {
        pipe.xadd(
            cfg.keys().dead("sender"),
            "*",
            &[("reason", format!("gave up {i}"))],
        )
        .ignore();
    }
    let () = pipe.query_async(&mut con).await.unwrap();
    let cut = ctl(&cfg, &["dead", "list", "sender", "--limit", "230"])
        .await
        .ok();
    let reasons: Vec<&str> = cut
        .stdout
        .lines()
        .map(|l| l.rsplit_once("reason=").unwrap().1)
        .collect();
    let want: Vec<String> = (0..230).map(|i| format!("gave up {i}")).collect();
    assert_eq!(reasons, want);
    cut.complains("230 of 250 entries shown (--limit 250 shows them all)");
}

#[tokio::test]
async fn an_allowlist_takes_numbers_as_people_write_them_and_stores_their_digits() {
    let cfg = TestConfig::new().await;
    add_channel(&cfg, PNID).await;
    let allow = |entries: &[&str]| {
        let mut args = vec!["channel", "add", "--phone-number-id", PNID];
        for e in entries {
            args.extend(["--allow", e]);
        }
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let stored = || async {
        let (list,): (Vec<String>,) =
            sqlx::query_as("SELECT phone_allowlist FROM channels WHERE phone_number_id = $1")
                .bind(PNID)
                .fetch_one(&cfg.pg().await)
                .await
                .unwrap();
        list
    };
    let args = allow(&[
        "+57 300 123 4567",
        "(57) 300-123-4568",
        " US.13491208655302741918 ",
    ]);
    ctl(&cfg, &args.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .ok();
    assert_eq!(
        stored().await,
        ["573001234567", "573001234568", "US.13491208655302741918"]
    );
    // What is neither a number nor a business-scoped id is refused, without being echoed.
    let args = allow(&["573001234567", "Camila Rojas"]);
    let refused = ctl(&cfg, &args.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .refused(1);
    refused.complains("entry 2 (from 1) is neither");
    assert!(!refused.stderr.contains("Camila"), "{refused:?}");
    assert_eq!(stored().await.len(), 3, "nothing changed");
}

#[tokio::test]
async fn a_setting_is_changed_from_a_file_shown_and_put_back_and_a_bad_value_is_refused() {
    let cfg = TestConfig::new().await;
    add_channel(&cfg, PNID).await;
    let prompt = TempFile::new("Eres el asistente de la tienda.\n".as_bytes());
    ctl_says(
        &cfg,
        &[
            "channel",
            "set",
            PNID,
            "system_prompt",
            &format!("@{}", prompt.path()),
        ],
        &format!("system_prompt of {PNID} changed"),
    )
    .await;
    ctl_says(
        &cfg,
        &["channel", "show", PNID],
        "system_prompt: Eres el asistente de la tienda.\nhistory_limit: 20\n",
    )
    .await;
    let bad = ctl(&cfg, &["channel", "set", PNID, "history_limit", "muchos"])
        .await
        .refused(1);
    bad.complains("history_limit takes a whole number above 0");
    ctl(&cfg, &["channel", "set", PNID, "bogus", "1"])
        .await
        .refused(1)
        .complains("unknown setting \"bogus\": one of system_prompt, history_limit");
    ctl_says(
        &cfg,
        &["channel", "unset", PNID, "system_prompt"],
        "back to its default",
    )
    .await;
    ctl_says(
        &cfg,
        &["channel", "show", PNID],
        "system_prompt: (default)\n",
    )
    .await;
}

#[tokio::test]
async fn a_merged_conversations_old_id_names_the_conversation_it_went_to() {
    let cfg = TestConfig::new().await;
    store_one_message(&cfg, "hola").await;
    let pg = cfg.pg().await;
    let into: i64 = sqlx::query_scalar("SELECT id FROM conversations")
        .fetch_one(&pg)
        .await
        .unwrap();
    // What a number change's merge leaves of the conversation it removed.
    let gone = into + 1000;
    sqlx::query("INSERT INTO conversation_merges (merged_id, into_id) VALUES ($1, $2)")
        .bind(gone)
        .bind(into)
        .execute(&pg)
        .await
        .unwrap();
    let points = format!("conversation {gone} was merged into conversation {into}");
    for cmd in ["show", "take", "release"] {
        ctl(&cfg, &["conversation", cmd, &gone.to_string()])
            .await
            .refused(1)
            .complains(&points);
    }
    ctl(&cfg, &["conversation", "show", &(gone + 1).to_string()])
        .await
        .refused(1)
        .complains(&format!("there is no conversation {}", gone + 1));
}

/// A blank template name or language is named as such (it said "the message is empty", though
/// no message was given), and `env:` without a variable's name says what is missing (it said
/// " is not set").
#[tokio::test]
async fn a_blank_template_field_and_an_unnamed_env_secret_say_what_is_missing() {
    let cfg = TestConfig::new().await;
    for args in [
        [
            "conversation",
            "template",
            "1",
            "order_update",
            "--language",
            " ",
        ],
        ["conversation", "template", "1", " ", "--language", "es"],
    ] {
        let ran = ctl(&cfg, &args).await;
        assert_eq!(ran.code, Some(1), "{ran:?}");
        ran.complains("a template needs its name and language")
            .never_shows("the message is empty");
    }
    let ran = ctl(
        &cfg,
        &[
            "channel",
            "add",
            "--phone-number-id",
            PNID,
            "--access-token",
            "env:",
        ],
    )
    .await
    .refused(1);
    ran.complains("env: needs the name of a variable (env:NAME)");
}

/// The simulator as Meta's Graph API, knowing [`PNID`] with [`ACCESS_TOKEN`] (and no other
/// number), and the deployment's variables with `WAFLEET_GRAPH_BASE_URL` pointing at it.
async fn meta(cfg: &TestConfig) -> (wafleet_tests::Sim, Vec<(String, String)>) {
    let sim = wafleet_tests::Sim::start(
        wafleet_sim::SimConfig {
            tokens: HashMap::from([(PNID.to_owned(), ACCESS_TOKEN.to_owned())]),
            ..wafleet_sim::SimConfig::default()
        },
        None,
    )
    .await;
    let mut env = deployment(cfg);
    env.push(("WAFLEET_GRAPH_BASE_URL".into(), sim.url.clone()));
    (sim, env)
}

/// A token Meta does not take, shaped so that Meta's 190 quotes it ("Malformed access token
/// …"), as the simulator's answer then does: printing Meta's message would print it.
const WRONG_TOKEN: &str = "wrong-token-never-printed";

#[tokio::test]
async fn a_channel_check_shows_the_number_as_meta_has_it_and_whether_it_matches_what_is_stored() {
    let cfg = TestConfig::new().await;
    let (_sim, env) = meta(&cfg).await;
    let add = |display: &'static str| {
        let env = env.clone();
        async move {
            #[rustfmt::skip]
            let args = ["channel", "add", "--phone-number-id", PNID, "--access-token", ACCESS_TOKEN,
                        "--display-phone-number", display, "--name", "Tienda Sol"];
            run(&env, &args).await.ok()
        }
    };
    add("15550000000").await;
    let ran = run(&env, &["channel", "check", PNID]).await.ok();
    ran.says(&format!("channel {PNID}: ok"));
    assert!(
        ran.line("  display number:")
            .contains("+1 555-000-0000 (stored 15550000000: matches)"),
        "{ran:?}"
    );
    assert!(
        ran.line("  verified name:").contains(&format!(
            "{} (stored name \"Tienda Sol\": differs",
            wafleet_sim::VERIFIED_NAME
        )),
        "{ran:?}"
    );
    ran.line("  quality rating: GREEN");
    ran.never_shows(ACCESS_TOKEN);

    // The number stored is not the one Meta has for this phone_number_id: said, not failed.
    add("15550000001").await;
    let ran = run(&env, &["channel", "check", PNID]).await.ok();
    assert!(
        ran.line("  display number:")
            .contains("+1 555-000-0000 (stored 15550000001: differs"),
        "{ran:?}"
    );
}

/// A failed check: exit 1, saying each of `says`, and showing neither token nor Meta's own words
/// (its 190 quotes the token; its 100 says "does not exist").
#[track_caller]
fn failed_check(ran: &Ran, says: &[&str]) {
    assert_eq!(ran.code, Some(1), "{ran:?}");
    for text in says {
        ran.complains(text);
    }
    for hidden in [WRONG_TOKEN, ACCESS_TOKEN, "Malformed", "does not exist"] {
        ran.never_shows(hidden);
    }
}

#[tokio::test]
async fn channel_check_names_a_wrong_token_or_an_unknown_number_and_never_prints_the_token() {
    let cfg = TestConfig::new().await;
    let (_sim, env) = meta(&cfg).await;
    let add = |pnid: &'static str, token: &'static str, check: bool| {
        let env = env.clone();
        async move {
            #[rustfmt::skip]
            let mut args = vec!["channel", "add", "--phone-number-id", pnid, "--access-token", token];
            args.extend(check.then_some("--check"));
            run(&env, &args).await
        }
    };
    add(PNID, WRONG_TOKEN, false).await.ok();
    let check = |pnid: &'static str| {
        let env = env.clone();
        async move { run(&env, &["channel", "check", pnid]).await }
    };
    let ran = check(PNID).await.refused(1);
    failed_check(&ran, &["190", "access token is expired or invalid"]);

    // `channel add --check` stores the channel, then fails the same way, saying it was stored.
    let ran = add(PNID, WRONG_TOKEN, true).await;
    ran.says(&format!("channel {PNID} saved"));
    failed_check(&ran, &["the channel was stored all the same", "190"]);
    let ran = add(PNID, ACCESS_TOKEN, true).await.ok();
    ran.says(&format!("channel {PNID}: ok"))
        .never_shows(ACCESS_TOKEN);

    // A phone_number_id Meta does not know (a typo, or another business's number).
    add(UNKNOWN, ACCESS_TOKEN, false).await.ok();
    let ran = check(UNKNOWN).await.refused(1);
    failed_check(&ran, &["100", "Meta does not know number"]);
}

#[tokio::test]
async fn a_channel_check_says_when_meta_cannot_be_reached_or_there_is_no_token_to_check() {
    let cfg = TestConfig::new().await;
    let mut env = deployment(&cfg);
    env.push((
        "WAFLEET_GRAPH_BASE_URL".into(),
        format!("http://127.0.0.1:{}", closed_port()),
    ));
    add_channel(&cfg, PNID).await;
    let ran = run(&env, &["channel", "check", PNID]).await.refused(1);
    ran.complains("could not be reached")
        .never_shows(ACCESS_TOKEN);

    #[rustfmt::skip]
    run(&env, &["channel", "add", "--phone-number-id", UNKNOWN, "--verify-token", VERIFY_TOKEN]).await.ok();
    run(&env, &["channel", "check", UNKNOWN])
        .await
        .refused(1)
        .complains("no access token");
}

#[tokio::test]
async fn an_agent_sends_a_file_and_reply_buttons_from_the_command_line() {
    let cfg = TestConfig::new().await;
    store_one_message(&cfg, "¿me mandas la factura?").await;
    let pg = cfg.pg().await;
    let (id,): (i64,) = sqlx::query_as("SELECT id FROM conversations")
        .fetch_one(&pg)
        .await
        .unwrap();
    let id = id.to_string();
    ctl(&cfg, &["conversation", "take", &id]).await.ok();
    let document = [
        "conversation",
        "reply",
        &id,
        "--document",
        "https://cdn.example.com/factura-4412.pdf",
        "--filename",
        "factura-4412.pdf",
        "--caption",
        "Tu factura",
        "--reference",
        "doc-1",
    ];
    ctl_says(&cfg, &document, "queued in 1 part(s)").await;
    ctl_says(&cfg, &document, "recorded before with this reference").await;
    ctl_says(
        &cfg,
        &[
            "conversation",
            "reply",
            &id,
            "¿Confirmas el pedido?",
            "--button",
            "si:Sí",
            "--button",
            "no:No",
            "--reference",
            "btn-1",
        ],
        "queued in 1 part(s)",
    )
    .await;
    ctl_says(
        &cfg,
        &[
            "conversation",
            "reply",
            &id,
            "¿Cómo lo quieres?",
            "--list-button",
            "Ver opciones",
            "--row",
            "casa:A domicilio:Mañana antes de las 12",
            "--row",
            "tienda:En tienda",
            "--reference",
            "list-1",
        ],
        "queued in 1 part(s)",
    )
    .await;
    // Meta's limits, before anything is recorded: the field is named, the value is not.
    ctl(
        &cfg,
        &[
            "conversation",
            "reply",
            &id,
            "¿Sí?",
            "--button",
            "si:Sí, confirmo el pedido de hoy",
        ],
    )
    .await
    .refused(1)
    .complains("buttons[0].title: is 29 characters; WhatsApp takes at most 20")
    .never_shows("confirmo");
    ctl(
        &cfg,
        &[
            "conversation",
            "reply",
            &id,
            "--audio",
            "https://cdn.example.com/a.ogg",
            "--caption",
            "x",
        ],
    )
    .await
    .refused(1)
    .complains("media.caption");

    let payloads: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT body, payload FROM outbound_messages WHERE kind = 'agent' ORDER BY id",
    )
    .fetch_all(&pg)
    .await
    .unwrap();
    assert_eq!(payloads.len(), 3, "{payloads:?}");
    assert_eq!(
        payloads[0].1,
        serde_json::json!({"type": "document", "document": {
            "link": "https://cdn.example.com/factura-4412.pdf",
            "caption": "Tu factura", "filename": "factura-4412.pdf"}})
    );
    assert_eq!(
        payloads[1].1["interactive"]["action"]["buttons"][1],
        serde_json::json!({"type": "reply", "reply": {"id": "no", "title": "No"}})
    );
    assert_eq!(
        payloads[2].1["interactive"]["action"]["sections"][0]["rows"][0],
        serde_json::json!({"id": "casa", "title": "A domicilio",
                           "description": "Mañana antes de las 12"})
    );
    ctl(&cfg, &["conversation", "show", &id])
        .await
        .ok()
        .says("[pending]: [document: factura-4412.pdf] Tu factura")
        .says("[pending]: ¿Confirmas el pedido? [buttons: Sí | No]")
        .says("[pending]: ¿Cómo lo quieres? [list Ver opciones: A domicilio | En tienda]");

    // Erased, the customer's files and options go with their text.
    ctl(&cfg, &["customer", "erase", PNID, "573001234567", "--yes"])
        .await
        .ok();
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbound_messages WHERE payload IS NOT NULL OR body <> ''",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(kept, 0);
}

/// `channel show` prints what Meta last said of the number and its business account, as the
/// account stage records it (tests/account.rs): nothing, then the flag, tier and ban.
#[tokio::test]
async fn channel_show_prints_what_meta_last_said_of_the_number_and_its_account() {
    use wafleet::store::account_state;
    let cfg = TestConfig::new().await;
    cfg.add_channel(PNID, |c| c.waba_id = Some("WABA1".into()))
        .await;
    let show = ctl(&cfg, &["channel", "show", PNID]).await.ok();
    show.says("meta_quality: (nothing from Meta)")
        .says("meta_account: (nothing from Meta)");
    let pg = cfg.pg().await;
    let id: i64 = sqlx::query_scalar("SELECT id FROM channels WHERE phone_number_id = $1")
        .bind(PNID)
        .fetch_one(&pg)
        .await
        .unwrap();
    let at = chrono::Utc::now();
    account_state::record_quality(&pg, id, "1-0", Some("FLAGGED"), Some("TIER_1K"), at)
        .await
        .unwrap();
    let banned = wafleet_core::account::AccountUpdate {
        event: Some("DISABLED_UPDATE".into()),
        ban_state: Some("DISABLE".into()),
        ..Default::default()
    };
    account_state::record_account(&pg, id, "2-0", &banned, false, at)
        .await
        .unwrap();
    let show = ctl(&cfg, &["channel", "show", PNID]).await.ok();
    show.says("meta_quality: FLAGGED, messaging limit TIER_1K, at ")
        .says("(FLAGGED)")
        .says("meta_account: DISABLED_UPDATE, ban state DISABLE, at ")
        .says("(DISABLED)");
}

/// `conversation start` with a template's named parameters (`--named`, `--header-named`):
/// checked name by name against the template Meta lists and sent with each name; a template Meta
/// paused is refused naming its status, before anything is recorded.
#[tokio::test]
async fn a_named_template_is_given_by_name_and_a_paused_one_is_refused_naming_its_status() {
    let cfg = TestConfig::new().await;
    let (sim, env) = meta(&cfg).await;
    #[rustfmt::skip]
    let add = ["channel", "add", "--phone-number-id", PNID, "--access-token", ACCESS_TOKEN,
               "--waba-id", "102290129340398"];
    run(&env, &add).await.ok();
    #[rustfmt::skip]
    let start = ["conversation", "start", PNID, "+57 300 555 0191", "order_pickup",
                 "--language", "es", "--header-named", "order_id=#1042",
                 "--named", "customer_name=Ana", "--named", "order_id=#1042"];
    let ran = run(&env, &start).await.refused(1);
    ran.complains("template order_pickup's body needs {{store}}");
    assert_eq!(count(&cfg, "SELECT count(*) FROM conversations").await, 0);

    let ran = run(&env, &[&start[..], &["--named", "store=Centro"]].concat())
        .await
        .ok();
    ran.says("conversation ");
    let pg = cfg.pg().await;
    let body: String =
        sqlx::query_scalar("SELECT body FROM outbound_messages WHERE kind = 'template'")
            .fetch_one(&pg)
            .await
            .unwrap();
    let sent: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        sent["components"],
        serde_json::json!([
            {"type": "header", "parameters":
                [{"type": "text", "parameter_name": "order_id", "text": "#1042"}]},
            {"type": "body", "parameters": [
                {"type": "text", "parameter_name": "customer_name", "text": "Ana"},
                {"type": "text", "parameter_name": "order_id", "text": "#1042"},
                {"type": "text", "parameter_name": "store", "text": "Centro"}]},
        ])
    );

    // Meta pauses it: refused naming the status, no conversation made for the new customer.
    sim.state
        .set_template_status("order_pickup", "es", "PAUSED");
    #[rustfmt::skip]
    let other = ["conversation", "start", PNID, "+57 300 555 0192", "order_pickup",
                 "--language", "es", "--header-named", "order_id=#7", "--named",
                 "customer_name=Eva", "--named", "order_id=#7", "--named", "store=Norte"];
    run(&env, &other)
        .await
        .refused(1)
        .complains("template order_pickup is PAUSED at Meta");
    assert_eq!(count(&cfg, "SELECT count(*) FROM conversations").await, 1);

    // By name and in order at once, or a name without its value: usage errors.
    let ran = run(&env, &[&start[..], &["--param", "x"]].concat()).await;
    assert_eq!(ran.code, Some(2), "{ran:?}");
    let ran = run(&env, &[&start[..], &["--named", "store"]].concat()).await;
    assert_eq!(ran.code, Some(2), "{ran:?}");
    ran.complains("give NAME=VALUE");
}

/// `conversation start` with a template's header and buttons: checked against the approved
/// template Meta lists (the channel's business account, read with its token), refused naming
/// what is missing before anything is recorded, and recorded as Meta's components when it fits.
#[tokio::test]
async fn a_template_s_header_and_buttons_are_given_by_flags_and_checked_against_meta_s() {
    let cfg = TestConfig::new().await;
    let (_sim, env) = meta(&cfg).await;
    #[rustfmt::skip]
    let add = ["channel", "add", "--phone-number-id", PNID, "--access-token", ACCESS_TOKEN,
               "--waba-id", "102290129340398"];
    run(&env, &add).await.ok();
    #[rustfmt::skip]
    let start = ["conversation", "start", PNID, "+57 300 555 0190", "order_invoice",
                 "--language", "es", "--param", "Ana", "--param", "#1042"];
    let ran = run(&env, &start).await.refused(1);
    ran.complains("template order_invoice needs a document header")
        .complains("button 0 (\"Seguir pedido\") needs its URL's suffix");
    assert_eq!(count(&cfg, "SELECT count(*) FROM conversations").await, 0);

    #[rustfmt::skip]
    let flags = ["--header-document", "https://shop.example/f/1042.pdf", "--filename",
                 "factura-1042.pdf", "--url-button", "0:1042", "--quick-reply", "1:TALK"];
    let ran = run(&env, &[&start[..], &flags].concat()).await.ok();
    ran.says("conversation ");
    let pg = cfg.pg().await;
    let body: String =
        sqlx::query_scalar("SELECT body FROM outbound_messages WHERE kind = 'template'")
            .fetch_one(&pg)
            .await
            .unwrap();
    let sent: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        sent["components"],
        serde_json::json!([
            {"type": "header", "parameters": [{"type": "document", "document":
                {"link": "https://shop.example/f/1042.pdf", "filename": "factura-1042.pdf"}}]},
            {"type": "body", "parameters": [{"type": "text", "text": "Ana"},
                                            {"type": "text", "text": "#1042"}]},
            {"type": "button", "sub_type": "url", "index": "0",
             "parameters": [{"type": "text", "text": "1042"}]},
            {"type": "button", "sub_type": "quick_reply", "index": "1",
             "parameters": [{"type": "payload", "payload": "TALK"}]},
        ])
    );

    // A button flag that is not INDEX:VALUE is a usage error; a filename needs a document.
    let ran = run(
        &env,
        &[&start[..], &["--url-button", "first:1042"]].concat(),
    )
    .await;
    assert_eq!(ran.code, Some(2), "{ran:?}");
    ran.complains("is not a button's position");
    let ran = run(&env, &[&start[..], &["--filename", "f.pdf"]].concat()).await;
    assert_eq!(ran.code, Some(2), "{ran:?}");
}

#[tokio::test]
async fn an_operator_clears_a_restriction_meta_lifted_early_and_it_is_logged() {
    let cfg = TestConfig::new().await;
    add_channel(&cfg, PNID).await;
    let pg = cfg.pg().await;
    sqlx::query(
        "UPDATE channels SET account_event = 'ACCOUNT_RESTRICTION', account_ban_state = 'REINSTATE',
                account_restrictions = '[{\"type\": \"RESTRICTED_BIZ_INITIATED_MESSAGING\",
                                          \"expiration\": \"2099-04-19T13:59:20+0000\"}]'
          WHERE phone_number_id = $1",
    )
    .bind(PNID)
    .execute(&pg)
    .await
    .unwrap();
    ctl(&cfg, &["channel", "show", PNID])
        .await
        .ok()
        .says("restricted: RESTRICTED_BIZ_INITIATED_MESSAGING");

    let ran = ctl(&cfg, &["channel", "clear-restriction", PNID])
        .await
        .ok();
    ran.says(&format!(
        "channel {PNID}: cleared RESTRICTED_BIZ_INITIATED_MESSAGING"
    ))
    // The audit line: who, which channel, which restriction; no secret.
    .complains("an operator cleared the account restrictions")
    .complains(&format!("channel=\"{PNID}\""))
    .complains("by=\"wafleetctl (")
    .complains("RESTRICTED_BIZ_INITIATED_MESSAGING")
    .never_shows(ACCESS_TOKEN)
    .never_shows(APP_SECRET);
    let shown = ctl(&cfg, &["channel", "show", PNID]).await.ok();
    assert!(
        shown
            .line("meta_account:")
            .starts_with("meta_account: ACCOUNT_RESTRICTION, ban state REINSTATE"),
        "{shown:?}"
    );
    assert!(!shown.stdout.contains("restricted:"), "{shown:?}");

    ctl(&cfg, &["channel", "clear-restriction", PNID])
        .await
        .ok()
        .says("no account restriction recorded: nothing to clear");
    ctl(&cfg, &["channel", "clear-restriction", UNKNOWN])
        .await
        .refused(1)
        .complains(&format!("no channel {UNKNOWN}"));
}

#[tokio::test]
async fn channel_check_fails_when_the_app_is_not_subscribed_to_the_business_accounts_webhooks() {
    const WABA: &str = "102290129340398";
    let cfg = TestConfig::new().await;
    let (sim, env) = meta(&cfg).await;
    let add = |app: &'static str| {
        let env = env.clone();
        async move {
            #[rustfmt::skip]
            let args = ["channel", "add", "--phone-number-id", PNID, "--access-token", ACCESS_TOKEN,
                        "--waba-id", WABA, "--app-id", app];
            run(&env, &args).await.ok()
        }
    };
    let check = || {
        let env = env.clone();
        async move { run(&env, &["channel", "check", PNID]).await }
    };
    // What an operator (or Meta's embedded signup) does to the account's subscription.
    let subscription = |method: reqwest::Method| {
        let request = reqwest::Client::new()
            .request(method, format!("{}/v23.0/{WABA}/subscribed_apps", sim.url))
            .bearer_auth(ACCESS_TOKEN);
        async move { assert!(request.send().await.unwrap().status().is_success()) }
    };
    add(wafleet_sim::APP_ID).await;
    check().await.ok().line(&format!(
        "  webhooks: app {} subscribed to WABA {WABA}",
        wafleet_sim::APP_ID
    ));

    subscription(reqwest::Method::DELETE).await;
    let ran = check().await.refused(1);
    ran.complains(&format!(
        "webhooks: app not subscribed to WABA {WABA} — run POST /{WABA}/subscribed_apps"
    ))
    .never_shows(ACCESS_TOKEN);

    subscription(reqwest::Method::POST).await;
    check().await.ok();
    // Another app than the channel's is subscribed: said, failed.
    add("1111111111").await;
    check().await.refused(1).complains(&format!(
        "webhooks: app 1111111111 not subscribed to WABA {WABA} (subscribed: {})",
        wafleet_sim::APP_ID
    ));
}

/// `conversation reply ID --image @PATH`: a file on the operator's disk is uploaded to Meta with
/// the channel's token and sent by the id Meta gave it, once however often the command is
/// repeated with its reference (not uploaded again once recorded); a missing file, one too
/// large for its kind or of a type WhatsApp does not take is refused naming why, before anything
/// is uploaded or recorded.
#[tokio::test]
async fn an_agent_sends_a_file_from_disk_uploaded_with_the_channels_token_and_sent_by_its_id() {
    let cfg = TestConfig::new().await;
    let (sim, env) = meta(&cfg).await;
    store_one_message(&cfg, "¿me mandas la foto del pedido?").await;
    let pg = cfg.pg().await;
    let (id,): (i64,) = sqlx::query_as("SELECT id FROM conversations")
        .fetch_one(&pg)
        .await
        .unwrap();
    let id = id.to_string();
    let bytes = b"\xff\xd8\xff\xe0 a photo of the order";
    let photo = TempFile::with_extension("jpg", bytes);
    let at = format!("@{}", photo.path());
    #[rustfmt::skip]
    let reply = ["conversation", "reply", &id, "--image", &at, "--caption", "Tu pedido",
                 "--reference", "photo-1"];
    // While the bot has the conversation the message is refused, before the file is uploaded.
    run(&env, &reply)
        .await
        .refused(1)
        .complains(&format!("conversation {id} is with the bot"));
    assert_eq!(sim.state.uploads().len(), 0);
    run(&env, &["conversation", "take", &id]).await.ok();
    let sent = run(&env, &reply).await.ok();
    sent.says("queued in 1 part(s)");
    let uploads = sim.state.uploads();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0].phone_number_id, PNID);
    assert_eq!(uploads[0].mime_type, "image/jpeg");
    assert_eq!(uploads[0].size, bytes.len());
    sent.says(&format!("uploaded as image: media id {}", uploads[0].id))
        .never_shows(ACCESS_TOKEN);

    // The sender sends it by the id Meta gave.
    let worker = Worker::start(cfg.pipeline_settings(&["sender"], &sim, vec![])).await;
    let messages = eventually(
        "the image at the Graph API",
        Duration::from_secs(30),
        || {
            let sim = &sim;
            async move {
                let m = sim.state.messages();
                (!m.is_empty()).then_some(m)
            }
        },
    )
    .await;
    assert_eq!(messages[0].kind, "image");
    assert_eq!(
        messages[0].message,
        Some(serde_json::json!({"id": uploads[0].id, "caption": "Tu pedido"}))
    );
    wait_count(
        &pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'accepted'",
        1,
        20,
    )
    .await;
    // Repeated with its reference (the first run's answer lost): not uploaded, not sent again.
    let again = run(&env, &reply).await.ok();
    again.says("recorded and settled before with this reference; nothing sent");
    assert_eq!(sim.state.uploads().len(), 1);
    worker.stop().await.unwrap();
    assert_eq!(sim.state.messages().len(), 1);

    // Refused before anything is uploaded or recorded, saying why.
    let missing = format!("@{}/no-such-photo.jpg", std::env::temp_dir().display());
    run(&env, &["conversation", "reply", &id, "--image", &missing])
        .await
        .refused(1)
        .complains("no-such-photo.jpg")
        .complains("No such file");
    let large = TempFile::with_extension("png", &vec![0u8; 5 * 1024 * 1024 + 1]);
    run(
        &env,
        &[
            "conversation",
            "reply",
            &id,
            "--image",
            &format!("@{}", large.path()),
        ],
    )
    .await
    .refused(1)
    .complains("5242881 bytes")
    .complains("WhatsApp takes at most 5242880 for an image");
    let gif = TempFile::with_extension("gif", b"GIF89a");
    run(
        &env,
        &[
            "conversation",
            "reply",
            &id,
            "--image",
            &format!("@{}", gif.path()),
        ],
    )
    .await
    .refused(1)
    .complains("image/gif is not a type WhatsApp takes");
    let sticker = TempFile::with_extension("webp", b"RIFF....WEBP");
    run(
        &env,
        &[
            "conversation",
            "reply",
            &id,
            "--image",
            &format!("@{}", sticker.path()),
        ],
    )
    .await
    .refused(1)
    .complains("image/webp is sent as a sticker: give it with --sticker");
    // The channel's token is sealed: without the key, the file cannot be uploaded.
    let keyless: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "WAFLEET_ENCRYPTION_KEY")
        .cloned()
        .collect();
    run(&keyless, &["conversation", "reply", &id, "--image", &at])
        .await
        .refused(1)
        .complains("WAFLEET_ENCRYPTION_KEY");
    assert_eq!(sim.state.uploads().len(), 1);
    assert_eq!(
        count(&cfg, "SELECT count(*) FROM outbound_messages").await,
        1
    );
}

/// `conversation upload PNID PATH`: a file on the operator's disk uploaded to Meta for the
/// number, its media id printed to give a template's header (`--header-document ID`), which
/// keeps the template's reference rules: the id, not the file, is what is sent and compared.
#[tokio::test]
async fn a_file_uploaded_from_disk_gives_a_templates_header_by_its_media_id() {
    let cfg = TestConfig::new().await;
    let (sim, env) = meta(&cfg).await;
    #[rustfmt::skip]
    let add = ["channel", "add", "--phone-number-id", PNID, "--access-token", ACCESS_TOKEN,
               "--waba-id", "102290129340398"];
    run(&env, &add).await.ok();
    let invoice = TempFile::with_extension("pdf", b"%PDF-1.4 factura 1042");
    let uploaded = run(&env, &["conversation", "upload", PNID, invoice.path()])
        .await
        .ok();
    let uploads = sim.state.uploads();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0].mime_type, "application/pdf");
    let id = &uploads[0].id;
    uploaded
        .says(&format!("media id {id} (document, application/pdf)"))
        .never_shows(ACCESS_TOKEN);

    #[rustfmt::skip]
    let start = ["conversation", "start", PNID, "+57 300 555 0190", "order_invoice",
                 "--language", "es", "--param", "Ana", "--param", "#1042",
                 "--header-document", id, "--filename", "factura-1042.pdf",
                 "--url-button", "0:1042", "--quick-reply", "1:TALK", "--reference", "inv-1"];
    run(&env, &start).await.ok().says("queued in 1 part(s)");
    run(&env, &start)
        .await
        .ok()
        .says("recorded before with this reference");
    // A file on this machine given to a header flag is refused with the way to send it.
    let mut from_disk = start.to_vec();
    let at = format!("@{}", invoice.path());
    from_disk[12] = &at;
    run(&env, &from_disk)
        .await
        .refused(2)
        .complains("upload it with `wafleetctl conversation upload PNID PATH`");
    let body: String =
        sqlx::query_scalar("SELECT body FROM outbound_messages WHERE kind = 'template'")
            .fetch_one(&cfg.pg().await)
            .await
            .unwrap();
    let sent: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        sent["components"][0],
        serde_json::json!({"type": "header", "parameters": [{"type": "document", "document":
            {"id": id, "filename": "factura-1042.pdf"}}]})
    );

    // Refused before anything is uploaded: a number no channel has, a type WhatsApp does not
    // take.
    run(&env, &["conversation", "upload", UNKNOWN, invoice.path()])
        .await
        .refused(1)
        .complains(&format!("no channel {UNKNOWN}"));
    let gif = TempFile::with_extension("gif", b"GIF89a");
    run(&env, &["conversation", "upload", PNID, gif.path()])
        .await
        .refused(1)
        .complains("image/gif is not a type WhatsApp takes");
    assert_eq!(sim.state.uploads().len(), 1);
}
