//! Test harness: real Redis and Postgres (from `REDIS_URL` / `DATABASE_URL`, which `just test`
//! sets), isolated per test by a fresh database and a unique Redis key prefix, and the real
//! services started through their `run` functions on port 0.

pub mod proxy;
pub mod redis_server;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use sqlx::PgPool;
use tokio::sync::oneshot;
use wafleet::config::{CommonSettings, IngestSettings, Secret};
use wafleet::crypto::Cipher;
use wafleet::store::channels::{ChannelSpec, upsert};
use wafleet::streams::Keys;

pub use wafleet_core::signature::sign;

/// The test app secret every fixture is re-signed with.
pub const APP_SECRET: &str = "test-app-secret";
pub const VERIFY_TOKEN: &str = "test-verify-token";
/// How often test processes check the fleet's partition count (10 s in production): a test that
/// changes it sees them stop within a second.
pub const PARTITIONS_CHECK_EVERY: Duration = Duration::from_millis(300);

/// Business numbers that appear in `tests/fixtures/webhooks`.
pub const FIXTURE_NUMBERS: &[&str] = &[
    "106540352242922",
    "1122334455667",
    "108208485398311",
    "122217517640926",
];

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with `deploy/just test`, which starts Redis and Postgres")
    })
}

pub fn redis_url() -> String {
    env("REDIS_URL")
}

/// A fresh, empty database for one test; returns its URL.
pub async fn fresh_database() -> String {
    let admin_url = env("DATABASE_URL");
    let admin = PgPool::connect(&admin_url)
        .await
        .expect("connect to DATABASE_URL");
    let name = format!("wafleet_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("DATABASE_URL has a database name");
    format!("{base}/{name}")
}

/// Deletes what a test made once the last clone of its [`TestConfig`] is dropped: its database
/// (when it owns one) and every Redis key under its prefix. Without it each run of the suite left
/// about 200 databases and their streams behind (one development machine had collected 2,087
/// databases, 16 GB). `WAFLEET_TEST_KEEP=1` keeps them for a post-mortem.
pub struct Cleanup {
    database_url: Option<String>,
    redis_url: String,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::env::var("WAFLEET_TEST_KEEP").is_ok_and(|v| v == "1") {
            return;
        }
        let (database_url, redis_url) = (self.database_url.take(), self.redis_url.clone());
        let pattern = format!("{}:*", self.prefix);
        // On a thread and runtime of its own: this may run inside the test's runtime, which
        // cannot block on work of its own. Failures only leave litter behind, so they are
        // reported, not raised.
        let cleanup = on_own_runtime(async move {
            let work = async {
                if let Some(url) = database_url {
                    drop_database(&url).await?;
                }
                delete_keys(&redis_url, &pattern).await.map(drop)
            };
            match tokio::time::timeout(Duration::from_secs(10), work).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("test cleanup: {e}"),
                Err(_) => eprintln!("test cleanup: timed out"),
            }
        });
        let _ = cleanup.join();
    }
}

/// Runs `work` on a new thread with a runtime of its own, independent of the test's runtime.
fn on_own_runtime<F>(work: F) -> std::thread::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime of its own")
            .block_on(work)
    })
}

async fn drop_database(url: &str) -> anyhow::Result<()> {
    let name = url.rsplit_once('/').map(|(_, n)| n).unwrap_or_default();
    anyhow::ensure!(
        name.starts_with("wafleet_t_"),
        "not a test database: {name}"
    );
    let admin = PgPool::connect(&env("DATABASE_URL")).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(())
}

/// Deletes every key matching `pattern`; returns how many there were.
async fn delete_keys(redis_url: &str, pattern: &str) -> anyhow::Result<usize> {
    let client = redis::Client::open(redis_url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let (mut cursor, mut deleted) = (0u64, 0);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await?;
        deleted += keys.len();
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut con)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// A Redis key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// A signed-ready webhook body with one text message.
pub fn text_message(pnid: &str, from: &str, wamid: &str, timestamp: i64, text: &str) -> Vec<u8> {
    message_body(
        pnid,
        from,
        serde_json::json!({
            "from": from, "id": wamid, "timestamp": timestamp.to_string(), "type": "text", "text": {"body": text}
        }),
    )
}

/// A webhook body carrying one message object (any type).
pub fn message_body(pnid: &str, from: &str, message: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": pnid},
            "contacts": [{"profile": {"name": "Cliente"}, "wa_id": from}],
            "messages": [message]}}]}]
    }))
    .unwrap()
}

/// A webhook body with one message the business wrote to customer `to` from the WhatsApp Business
/// app (coexistence): a `smb_message_echoes` change, in the shape Meta documents.
pub fn echo_message(pnid: &str, to: &str, wamid: &str, timestamp: i64, text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA1", "changes": [{"field": "smb_message_echoes", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": pnid},
            "message_echoes": [{"from": "15550000000", "to": to, "id": wamid,
                                "timestamp": timestamp.to_string(), "type": "text",
                                "text": {"body": text}}]}}]}]
    }))
    .unwrap()
}

/// A webhook body with statuses.
pub fn status_body(pnid: &str, statuses: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": pnid},
            "statuses": statuses}}]}]
    }))
    .unwrap()
}

/// Fixture bytes from `tests/fixtures/webhooks`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/webhooks/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Polls `check` until it returns `Some`, or panics after `deadline` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The number a `SELECT count(*) …` returns (-1 while the database cannot answer).
pub async fn count(pg: &PgPool, sql: &str) -> i64 {
    sqlx::query_as::<_, (i64,)>(sql)
        .fetch_one(pg)
        .await
        .map(|r| r.0)
        .unwrap_or(-1)
}

/// Polls a `SELECT count(*) …` until it returns `want`, or panics after `secs` seconds.
pub async fn wait_count(pg: &PgPool, sql: &str, want: i64, secs: u64) {
    eventually(
        &format!("{sql} = {want}"),
        Duration::from_secs(secs),
        || async move { (count(pg, sql).await == want).then_some(()) },
    )
    .await;
}

/// Waits until a session of the test's database waits for a lock: a transaction the test
/// started in the background has reached the lock the test holds.
pub async fn wait_for_a_lock_wait(pg: &PgPool) {
    wait_count(
        pg,
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock'",
        1,
        30,
    )
    .await;
}

/// Settings for a test deployment.
#[derive(Clone)]
pub struct TestConfig {
    pub redis_url: String,
    pub database_url: String,
    pub prefix: String,
    pub partitions: u32,
    pub key: String,
    /// Held for its `Drop`: deletes the test's database and keys after the last clone.
    pub _cleanup: Arc<Cleanup>,
}

impl TestConfig {
    pub async fn new() -> Self {
        let (redis_url, database_url, prefix) =
            (redis_url(), fresh_database().await, unique_prefix());
        Self {
            _cleanup: Arc::new(Cleanup {
                database_url: Some(database_url.clone()),
                redis_url: redis_url.clone(),
                prefix: prefix.clone(),
            }),
            redis_url,
            database_url,
            prefix,
            partitions: 4,
            key: Cipher::generate_key_text(),
        }
    }

    /// The same deployment (database, channels, key) under a fresh Redis prefix, whose keys are
    /// deleted when it is dropped; the database stays with `self`.
    pub fn with_fresh_prefix(&self) -> Self {
        let prefix = unique_prefix();
        Self {
            _cleanup: Arc::new(Cleanup {
                database_url: None,
                redis_url: self.redis_url.clone(),
                prefix: prefix.clone(),
            }),
            prefix,
            ..self.clone()
        }
    }

    /// The agent API's settings: with or without the encryption key (without it, channels
    /// cannot be changed), its Graph API at `graph`.
    pub fn api_settings(
        &self,
        cipher: Option<wafleet::crypto::Cipher>,
        graph: &str,
    ) -> wafleet::api::ApiSettings {
        wafleet::api::ApiSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: Secret::new(self.database_url.clone()),
            redis: wafleet::config::RedisLayout {
                redis_url: Secret::new(self.redis_url.clone()),
                redis_prefix: self.prefix.clone(),
                partitions: self.partitions,
                partitions_check_every: PARTITIONS_CHECK_EVERY,
            },
            database_pool_size: 4,
            plan_cache_mode: Default::default(),
            max_event_streams: 4,
            request_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(1),
            cipher,
            graph: wafleet::stages::process::GraphSettings {
                base_url: graph.into(),
                version: "v23.0".into(),
                timeout: Duration::from_secs(5),
            },
            media_max_bytes: 1024 * 1024,
        }
    }

    pub fn common(&self) -> CommonSettings {
        CommonSettings {
            redis_url: Secret::new(self.redis_url.clone()),
            database_url: Secret::new(self.database_url.clone()),
            redis_prefix: self.prefix.clone(),
            partitions: self.partitions,
            partitions_check_every: PARTITIONS_CHECK_EVERY,
            encryption_key: Secret::new(self.key.clone()),
            other_encryption_keys: Vec::new(),
            redis_pool_size: 8,
            database_pool_size: 4,
            plan_cache_mode: Default::default(),
        }
    }

    pub fn keys(&self) -> Keys {
        Keys::new(self.prefix.clone(), self.partitions)
    }

    /// Deletes ingest's dedup marks, as if they had expired: Meta's next redelivery of an update
    /// gets through to the stages again.
    pub async fn forget_dedup_marks(&self) {
        let pattern = format!("{}:*:seen:*", self.prefix);
        let deleted = delete_keys(&self.redis_url, &pattern).await.unwrap();
        assert!(deleted > 0, "no dedup marks to forget");
    }

    /// Until the conversation stage has finished every inbound message sent so far: it deletes
    /// an entry only once the message is stored and its follow-ups (reply job, send jobs,
    /// events) are queued.
    pub async fn wait_inbound_drained(&self, secs: u64) {
        self.wait_drained("every inbound message processed", secs, Keys::inbound)
            .await;
    }

    /// Until the status stage has finished every status queued so far (it deletes an entry once
    /// done with it).
    pub async fn wait_statuses_drained(&self, secs: u64) {
        self.wait_drained("every status processed", secs, Keys::status)
            .await;
    }

    /// Until every partition's `stream` is empty.
    async fn wait_drained(&self, what: &str, secs: u64, stream: fn(&Keys, u32) -> String) {
        let keys = self.keys();
        let con = self.redis().await;
        eventually(what, Duration::from_secs(secs), || {
            let mut con = con.clone();
            let keys = keys.clone();
            async move {
                let mut left = 0usize;
                for p in 0..keys.partitions() {
                    left += redis::AsyncCommands::xlen::<_, usize>(&mut con, stream(&keys, p))
                        .await
                        .ok()?;
                }
                (left == 0).then_some(())
            }
        })
        .await;
    }

    pub fn cipher(&self) -> Cipher {
        Cipher::from_key_text(&self.key).unwrap()
    }

    pub async fn pg(&self) -> PgPool {
        let pool = PgPool::connect(&self.database_url)
            .await
            .expect("connect to test database");
        wafleet::db::migrate(&pool).await.expect("migrate");
        pool
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to Redis")
    }

    /// Adds (or changes) a channel signed by [`APP_SECRET`].
    pub async fn add_channel(&self, phone_number_id: &str, tweak: impl FnOnce(&mut ChannelSpec)) {
        let mut spec = ChannelSpec {
            phone_number_id: phone_number_id.into(),
            app_secrets: Some(vec![Secret::new(APP_SECRET.into())]),
            verify_token: Some(Secret::new(VERIFY_TOKEN.into())),
            access_token: Some(Secret::new(format!("token-{phone_number_id}"))),
            ..Default::default()
        };
        tweak(&mut spec);
        upsert(&self.pg().await, &self.cipher(), &spec)
            .await
            .expect("add channel");
    }

    pub fn ingest_settings(&self) -> IngestSettings {
        IngestSettings {
            common: self.common(),
            listen: "127.0.0.1:0".parse().unwrap(),
            max_body_bytes: wafleet::config::DEFAULT_MAX_BODY_BYTES,
            dedup_ttl: Duration::from_secs(7 * 24 * 3600),
            redis_timeout: Duration::from_millis(1500),
            channel_refresh: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(30),
            shared_path: true,
            // More than one, whatever the machine, so every test crosses lanes.
            threads: 2,
            quick_start: None,
        }
    }
}

impl TestConfig {
    /// Worker runtime settings for tests: short leases and deadlines so reclaims happen fast.
    pub fn worker_runtime(&self) -> wafleet::worker::WorkerSettings {
        wafleet::worker::WorkerSettings {
            max_in_flight: 64,
            job_deadline: Duration::from_secs(3),
            lease_ttl: Duration::from_secs(4),
            max_deliveries: 3,
            max_attempts: 3,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(3),
            read_block: Duration::from_millis(200),
            worker_id: None,
        }
    }

    pub fn worker_settings(
        &self,
        stages: &[&str],
    ) -> wafleet::stages::process::WorkerProcessSettings {
        wafleet::stages::process::WorkerProcessSettings {
            common: self.common(),
            runtime: self.worker_runtime(),
            stages: stages.iter().map(|s| s.to_string()).collect(),
            stage_runtime: Default::default(),
            graph: wafleet::stages::process::GraphSettings {
                base_url: "http://127.0.0.1:9".into(),
                version: "v23.0".into(),
                timeout: Duration::from_secs(2),
            },
            llm: wafleet::stages::process::LlmSettings {
                providers: vec![],
                policy: Default::default(),
                max_tokens: 512,
                image_max_bytes: 3_750_000,
                image_max_in_flight: 4,
                document_max_bytes: 5_000_000,
                transcriber: None,
                audio_max_bytes: 16 * 1024 * 1024,
            },
            send: Default::default(),
            early_status_ttl: wafleet::stages::status::DEFAULT_EARLY_STATUS_TTL,
            retention: Some(wafleet::worker::retention::DEFAULT_RETENTION),
            account_announce_max_age: wafleet::stages::account::DEFAULT_ANNOUNCE_MAX_AGE,
            receipts_in_flight: wafleet::graph::DEFAULT_RECEIPTS_IN_FLIGHT,
        }
    }

    /// Environment for a worker child process running with these settings.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        let rt = self.worker_runtime();
        vec![
            ("REDIS_URL".into(), self.redis_url.clone()),
            ("DATABASE_URL".into(), self.database_url.clone()),
            ("WAFLEET_REDIS_PREFIX".into(), self.prefix.clone()),
            ("WAFLEET_PARTITIONS".into(), self.partitions.to_string()),
            ("WAFLEET_ENCRYPTION_KEY".into(), self.key.clone()),
            (
                "WAFLEET_JOB_DEADLINE_MS".into(),
                rt.job_deadline.as_millis().to_string(),
            ),
            (
                "WAFLEET_LEASE_TTL_MS".into(),
                rt.lease_ttl.as_millis().to_string(),
            ),
            (
                "WAFLEET_MAX_DELIVERIES".into(),
                rt.max_deliveries.to_string(),
            ),
            ("WAFLEET_MAX_ATTEMPTS".into(), rt.max_attempts.to_string()),
            (
                "WAFLEET_BACKOFF_BASE_MS".into(),
                rt.backoff_base.as_millis().to_string(),
            ),
            (
                "WAFLEET_BACKOFF_MAX_MS".into(),
                rt.backoff_max.as_millis().to_string(),
            ),
            ("WAFLEET_SHUTDOWN_GRACE_SECS".into(), "3".into()),
            ("RUST_LOG".into(), "warn".into()),
        ]
    }
}

/// The Graph API and LLM simulator, in process.
pub struct Sim {
    pub state: wafleet_sim::SimState,
    pub url: String,
    /// Stops the simulator's server when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Sim {
    /// Starts the simulator; status webhooks go to `ingest` signed with [`APP_SECRET`].
    pub async fn start(mut config: wafleet_sim::SimConfig, ingest: Option<&Ingest>) -> Self {
        if let Some(ingest) = ingest {
            config.webhook = Some(wafleet_sim::WebhookTarget {
                url: format!("{}/webhooks/whatsapp", ingest.url),
                app_secret: APP_SECRET.into(),
            });
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = wafleet_sim::SimState::new(config);
        // Its own thread and runtime, like Meta's servers: a test's single-threaded runtime also
        // runs ingest and stages, and would otherwise stamp sends late, behind their work.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        on_own_runtime(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = wafleet_sim::serve(served, listener, async move {
                let _ = stopped.await;
            })
            .await;
        });
        Self {
            state,
            url,
            _stop: stop,
        }
    }

    /// The stand-in model, as an OpenAI-compatible provider.
    pub fn standin(&self) -> wafleet::llm::ProviderConfig {
        wafleet::llm::ProviderConfig {
            name: "standin".into(),
            kind: wafleet::llm::ProviderKind::OpenAiCompatible,
            base_url: format!("{}/v1", self.url),
            model: "standin".into(),
            api_key: Secret::new("k".into()),
        }
    }

    /// The simulator's speech to text, as the workers' transcriber.
    pub fn transcriber(&self) -> wafleet::llm::ProviderConfig {
        wafleet::llm::ProviderConfig {
            name: "transcription".into(),
            kind: wafleet::llm::ProviderKind::OpenAiCompatible,
            base_url: format!("{}/v1", self.url),
            model: "whisper-1".into(),
            api_key: Secret::new("k".into()),
        }
    }

    /// The stand-in model, spoken to as Anthropic.
    pub fn anthropic(&self) -> wafleet::llm::ProviderConfig {
        wafleet::llm::ProviderConfig {
            name: "anthropic".into(),
            kind: wafleet::llm::ProviderKind::Anthropic,
            base_url: self.url.clone(),
            model: "claude-test".into(),
            api_key: Secret::new("k".into()),
        }
    }
}

impl TestConfig {
    /// Worker settings for the whole pipeline against the simulator.
    pub fn pipeline_settings(
        &self,
        stages: &[&str],
        sim: &Sim,
        providers: Vec<wafleet::llm::ProviderConfig>,
    ) -> wafleet::stages::process::WorkerProcessSettings {
        let mut s = self.worker_settings(stages);
        s.graph.base_url = sim.url.clone();
        s.llm.providers = providers;
        s.llm.transcriber = Some(sim.transcriber());
        s.llm.policy = wafleet::llm::FallbackPolicy {
            attempts_per_provider: 2,
            overall_deadline: Duration::from_secs(5),
            call_deadline: Duration::from_secs(3),
            backoff: wafleet_core::retry::Backoff {
                base: Duration::from_millis(20),
                max: Duration::from_millis(100),
                max_attempts: 2,
                max_age: Duration::from_secs(5),
            },
            max_retry_after: Duration::from_secs(1),
        };
        s.send.ambiguous_check = Duration::from_millis(500);
        s.send.ambiguous_resend_after = Duration::from_secs(20);
        s
    }

    /// Environment for a child worker that talks to the simulator.
    pub fn pipeline_env(&self, sim: &Sim) -> Vec<(String, String)> {
        let mut env = self.worker_env();
        env.extend([
            ("WAFLEET_GRAPH_BASE_URL".to_string(), sim.url.clone()),
            (
                "WAFLEET_LLM_STANDIN_URL".to_string(),
                format!("{}/v1", sim.url),
            ),
            (
                "WAFLEET_SEND_AMBIGUOUS_CHECK_MS".to_string(),
                "500".to_string(),
            ),
            (
                "WAFLEET_SEND_AMBIGUOUS_RESEND_MS".to_string(),
                "20000".to_string(),
            ),
        ]);
        env
    }
}

/// A worker running in this test process.
pub struct Worker {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Worker {
    pub async fn start(settings: wafleet::stages::process::WorkerProcessSettings) -> Self {
        wafleet::telemetry::init_logging();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(wafleet::stages::process::run(
            settings,
            listener,
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A worker child process (`tests/bin/test_worker.rs`), killed with SIGKILL on drop.
pub struct ChildWorker {
    child: std::process::Child,
}

impl ChildWorker {
    /// `bin` is `env!("CARGO_BIN_EXE_test-worker")` (only integration tests can name it).
    pub fn spawn(bin: &str, cfg: &TestConfig, mode: &str, extra: &[(&str, &str)]) -> Self {
        Self::spawn_with(bin, cfg.worker_env(), mode, extra)
    }

    pub fn spawn_with(
        bin: &str,
        env: Vec<(String, String)>,
        mode: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut cmd = std::process::Command::new(bin);
        cmd.envs(env).env("TEST_WORKER_MODE", mode);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.stdout(std::process::Stdio::null());
        Self {
            child: cmd.spawn().expect("spawn test-worker"),
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM.
    pub fn terminate(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Exited by itself (e.g. aborted on a poison entry)?
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// How it exited, once it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ChildWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until the service at `url` answers `/healthz`.
pub async fn wait_healthy(http: &reqwest::Client, url: &str, what: &str) {
    let health = format!("{url}/healthz");
    eventually(
        &format!("{what} to answer /healthz"),
        Duration::from_secs(20),
        || async {
            http.get(&health)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        },
    )
    .await;
}

/// A running ingest service.
pub struct Ingest {
    pub url: String,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Ingest {
    pub async fn start(settings: IngestSettings) -> Self {
        wafleet::telemetry::init_logging();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(wafleet::ingest::run(settings, listener, async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::new();
        wait_healthy(&http, &url, "ingest").await;
        Self {
            url,
            http,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// POSTs `body` signed with `secret`.
    pub async fn post_signed(&self, body: &[u8], secret: &str) -> reqwest::Response {
        self.post(body, Some(&sign(body, secret.as_bytes()))).await
    }

    pub async fn post(&self, body: &[u8], signature: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/webhooks/whatsapp", self.url))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(sig) = signature {
            req = req.header("x-hub-signature-256", sig);
        }
        req.send().await.expect("ingest answers")
    }

    /// Current value of a counter or gauge line of `/metrics` (0 when absent).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        scrape_metric(&self.http, &self.url, name_and_labels).await
    }

    /// Waits up to `secs` for `run` to return by itself (no shutdown asked), and what it
    /// returned.
    pub async fn ended(mut self, secs: u64) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(secs), self.task.take().unwrap())
            .await
            .expect("ingest to stop by itself")
            .unwrap()
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Opens a connection to `addr` and writes the start of a request to `path` whose head never
/// ends: one more header byte every 50 ms until the server closes the connection. Returns what
/// the server answered meanwhile; panics if the connection is still open after 10 s.
pub async fn trickle_a_head_until_closed(addr: &str, path: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\nx-a: ").as_bytes())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut answer = Vec::new();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "a trickled head kept its connection open"
        );
        if tcp.write_all(b"a").await.is_err() {
            return answer;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(50), tcp.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0) | Err(_)) => return answer,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

/// Everything the server sends on `tcp` until it closes it; panics if it is still open after
/// 10 s.
pub async fn read_until_closed(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("the connection is closed")
        .unwrap();
    answer
}

/// Current value of a counter or gauge line of the `/metrics` of the service at `url` (0 when
/// absent).
pub async fn scrape_metric(http: &reqwest::Client, url: &str, name_and_labels: &str) -> f64 {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_value(&text, name_and_labels)
}

/// Finds `name{labels} value` in a Prometheus exposition (labels in any order).
pub fn metric_value(text: &str, name_and_labels: &str) -> f64 {
    let (name, labels) = match name_and_labels.split_once('{') {
        Some((n, l)) => (
            n,
            l.trim_end_matches('}')
                .split(',')
                .filter(|s| !s.is_empty())
                .collect(),
        ),
        None => (name_and_labels, Vec::new()),
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Every entry of a stream as (id, field → value).
pub async fn read_stream(
    con: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> Vec<(String, std::collections::HashMap<String, Vec<u8>>)> {
    let reply: redis::streams::StreamRangeReply = con.xrange_all(stream).await.expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|e| {
            let fields = e
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<Vec<u8>>(&v).unwrap()))
                .collect();
            (e.id, fields)
        })
        .collect()
}

/// Every entry of every inbound partition, parsed back into updates.
pub async fn all_updates(
    con: &mut redis::aio::MultiplexedConnection,
    streams: &[String],
) -> Vec<(String, wafleet_core::envelope::Update)> {
    let mut out = Vec::new();
    for s in streams {
        for (_, fields) in read_stream(con, s).await {
            let update = serde_json::from_slice(&fields["update"]).expect("update field is JSON");
            out.push((s.clone(), update));
        }
    }
    out
}
