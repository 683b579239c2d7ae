//! Replies end to end: signed webhook → ingest → conversation → LLM → sender → the Graph API
//! simulator (standing in for Meta and the model), on the real Redis and Postgres.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use sqlx::PgPool;
use wafleet::stages::channel_settings::{DEFAULT_CANNED_REPLY, DEFAULT_HANDOVER_ACK};
use wafleet_sim::{Fault, LlmFault, SimConfig};
use wafleet_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_test-worker");
const PNID: &str = "106540352242922";
const TOKEN: &str = "token-106540352242922";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

struct Sys {
    ingest: Ingest,
    sim: Sim,
    pg: PgPool,
    _worker: Option<Worker>,
    /// Last: fields drop in order, and this one deletes the database and keys the others use.
    cfg: TestConfig,
}

async fn system_with(
    sim_config: SimConfig,
    providers: impl FnOnce(&Sim) -> Vec<wafleet::llm::ProviderConfig>,
    stages: &[&str],
) -> Sys {
    system_tweaked(sim_config, providers, stages, |_| {}).await
}

/// [`system_with`], with the worker's settings changed by `tweak` first.
async fn system_tweaked(
    sim_config: SimConfig,
    providers: impl FnOnce(&Sim) -> Vec<wafleet::llm::ProviderConfig>,
    stages: &[&str],
    tweak: impl FnOnce(&mut wafleet::stages::process::WorkerProcessSettings),
) -> Sys {
    let cfg = TestConfig::new().await;
    cfg.add_channel(PNID, |_| {}).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let sim = Sim::start(
        SimConfig {
            tokens: HashMap::from([(PNID.to_string(), TOKEN.to_string())]),
            ..sim_config
        },
        Some(&ingest),
    )
    .await;
    let pg = cfg.pg().await;
    let providers = providers(&sim);
    let worker = if stages.is_empty() {
        None
    } else {
        let mut settings = cfg.pipeline_settings(stages, &sim, providers);
        tweak(&mut settings);
        Some(Worker::start(settings).await)
    };
    Sys {
        cfg,
        ingest,
        sim,
        pg,
        _worker: worker,
    }
}

/// The conversation, model and sender stages (no status stage) against a Meta that takes every
/// send and never answers, nor posts a status within the test: each send is ambiguous after
/// 300 ms, and taken as lost `resend_after` later, within `max_attempts` sends. (A status
/// queued and not read yet holds the resend back.)
async fn unanswered_sends(resend_after: Duration, max_attempts: u32) -> Sys {
    let s = system_tweaked(
        SimConfig {
            status_delay: Duration::from_secs(3600),
            ..SimConfig::default()
        },
        |s| vec![s.standin()],
        &["conversation", "llm", "sender"],
        |w| {
            w.graph.timeout = Duration::from_millis(300);
            w.send.ambiguous_resend_after = resend_after;
            w.send.ambiguous_check = Duration::from_millis(50);
            w.send.backoff.max_attempts = max_attempts;
        },
    )
    .await;
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"hang": true, "count": 1000})));
    s
}

/// The conversation, model and sender stages and no status stage, with the worker's settings
/// changed by `tweak`: only the sender learns what became of a send, and the statuses Meta posts
/// wait in their streams.
async fn without_status_stage(
    tweak: impl FnOnce(&mut wafleet::stages::process::WorkerProcessSettings),
) -> Sys {
    standin_tweaked(&["conversation", "llm", "sender"], tweak).await
}

/// `stages` and the stand-in model, with the worker's settings changed by `tweak`.
async fn standin_tweaked(
    stages: &[&str],
    tweak: impl FnOnce(&mut wafleet::stages::process::WorkerProcessSettings),
) -> Sys {
    system_tweaked(SimConfig::default(), |s| vec![s.standin()], stages, tweak).await
}

async fn system() -> Sys {
    system_with_sim(SimConfig::default()).await
}

/// Every stage and the stand-in model, with the worker's settings changed by `tweak`.
async fn system_with_settings(
    tweak: impl FnOnce(&mut wafleet::stages::process::WorkerProcessSettings),
) -> Sys {
    standin_tweaked(&["conversation", "status", "llm", "sender"], tweak).await
}

/// Every stage, the stand-in model, and a simulator configured as given.
async fn system_with_sim(sim_config: SimConfig) -> Sys {
    system_with(
        sim_config,
        |s| vec![s.standin()],
        &["conversation", "status", "llm", "sender"],
    )
    .await
}

/// Every stage, with `max_attempts` sends allowed for transient errors, and a pair budget large
/// enough that no try waits for it (every try takes a slot).
async fn system_retrying(max_attempts: u32) -> Sys {
    let s = system_with_settings(|w| w.send.backoff.max_attempts = max_attempts).await;
    sqlx::query("UPDATE channels SET pair_burst = 10")
        .execute(&s.pg)
        .await
        .unwrap();
    s
}

/// The model's next answer, whatever it is asked.
fn model_says(content: &str) -> LlmFault {
    serde_json::from_value(serde_json::json!({
        "status": 200,
        "body": {
            "model": "standin",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": content
            }}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9}
        }
    }))
    .unwrap()
}

fn fault(spec: serde_json::Value) -> Fault {
    serde_json::from_value(spec).unwrap()
}

impl Sys {
    async fn send(&self, from: &str, wamid: &str, text: &str) {
        let body = text_message(PNID, from, wamid, now(), text);
        assert_eq!(
            self.ingest.post_signed(&body, APP_SECRET).await.status(),
            200
        );
    }

    /// The turns the `n`-th model call saw, oldest first: (role, text), the system prompt left out.
    fn model_turns(&self, n: usize) -> Vec<(String, String)> {
        self.sim.state.llm_requests()[n].body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] != "system")
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_string(),
                    m["content"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Queues the send job of the (only) reply again, as a redelivery would.
    async fn redeliver_send(&self) {
        self.redeliver(|keys, p| keys.outbox(p), "reply_to").await;
    }

    /// Queues the reply job of the (only) message again, as a redelivery would.
    async fn redeliver_reply_job(&self) {
        self.redeliver(|keys, p| keys.replies(p), "message_id")
            .await;
    }

    async fn redeliver(
        &self,
        stream: impl Fn(&wafleet::streams::Keys, u32) -> String,
        field: &str,
    ) {
        let (message_id, conversation_id, wa_id): (i64, i64, String) = sqlx::query_as(
            "SELECT m.id, c.id, c.wa_id FROM messages m
               JOIN conversations c ON c.id = m.conversation_id LIMIT 1",
        )
        .fetch_one(&self.pg)
        .await
        .unwrap();
        let conv = format!("{PNID}:{wa_id}");
        let keys = self.cfg.keys();
        let _: String = self
            .cfg
            .redis()
            .await
            .xadd(
                stream(&keys, keys.partition_of(&conv)),
                "*",
                &[
                    ("conv", conv.clone()),
                    (field, message_id.to_string()),
                    ("conversation_id", conversation_id.to_string()),
                    ("channel", PNID.to_string()),
                ],
            )
            .await
            .unwrap();
    }

    /// As if the handover had never been made: the state a crash right before it leaves.
    async fn undo_handover(&self) {
        sqlx::query("DELETE FROM handover_events")
            .execute(&self.pg)
            .await
            .unwrap();
        sqlx::query("UPDATE conversations SET owner = 'bot'")
            .execute(&self.pg)
            .await
            .unwrap();
    }

    /// A human gives the (only) conversation back to the bot.
    async fn release(&self) {
        let (conversation,): (i64,) = sqlx::query_as("SELECT id FROM conversations")
            .fetch_one(&self.pg)
            .await
            .unwrap();
        assert!(
            wafleet::store::conversations::release(&self.pg, conversation)
                .await
                .unwrap()
        );
    }

    /// Waits until the model has been asked at least once.
    /// Gives the channel a model chain of its own: "shop-model" on the simulator.
    async fn add_shop_model(&self) {
        let spec = wafleet::store::channels::ProviderSpec {
            position: 0,
            name: "shop-model".into(),
            kind: "openai".into(),
            base_url: format!("{}/v1", self.sim.url),
            model: "shop-model-1".into(),
            api_key: wafleet::config::Secret::new("sk-shop-secret".into()),
        };
        wafleet::store::channels::set_provider(&self.pg, &self.cfg.cipher(), PNID, &spec)
            .await
            .unwrap();
    }

    async fn model_asked(&self) {
        let sim = &self.sim;
        eventually("the model to be asked", Duration::from_secs(20), || async {
            (!sim.state.llm_requests().is_empty()).then_some(())
        })
        .await;
    }

    /// The read receipt Meta got for `wamid`, once it comes.
    async fn read_receipt(&self, wamid: &str) -> wafleet_sim::ReadReceipt {
        let read = |r: &wafleet_sim::ReadReceipt| r.message_id == wamid;
        let found = || async { self.sim.state.reads().into_iter().find(read) };
        eventually("the read receipt", Duration::from_secs(30), found).await
    }

    async fn sent(&self, n: usize) -> Vec<wafleet_sim::SentMessage> {
        let sim = &self.sim;
        eventually(
            &format!("{n} messages at the Graph API"),
            Duration::from_secs(30),
            || async {
                let m = sim.state.messages();
                (m.len() >= n).then_some(m)
            },
        )
        .await
    }

    /// The sender's dead letters, once there is one.
    async fn sender_dead_letters(&self) -> Vec<wafleet::dead_letters::DeadLetter> {
        let keys = self.cfg.keys();
        let con = self.cfg.redis().await;
        eventually(
            "the send job's dead letter",
            Duration::from_secs(30),
            || {
                let (keys, mut con) = (keys.clone(), con.clone());
                async move {
                    let l = wafleet::dead_letters::read(&mut con, &keys, "sender")
                        .await
                        .unwrap();
                    (!l.is_empty()).then_some(l)
                }
            },
        )
        .await
    }

    /// Replays a dead letter of the sender, as `wafleetctl dead replay sender` does under the
    /// default retention.
    async fn replay_sender(
        &self,
        letter: &wafleet::dead_letters::DeadLetter,
        resend_unanswered: bool,
    ) -> wafleet::store::replies::Reopened {
        let (mut con, keys) = (self.cfg.redis().await, self.cfg.keys());
        let retention = Some(wafleet::worker::retention::DEFAULT_RETENTION);
        wafleet::dead_letters::replay(
            &mut con,
            &self.pg,
            &keys,
            "sender",
            letter,
            resend_unanswered,
            retention,
        )
        .await
        .unwrap()
    }

    /// Waits for exactly one job on the sender's dead-letter stream.
    async fn one_sender_dead_letter(&self) {
        let cfg = &self.cfg;
        eventually(
            "the job on the sender's dead-letter stream",
            Duration::from_secs(30),
            || async move {
                let mut con = cfg.redis().await;
                let dead = read_stream(&mut con, &cfg.keys().dead("sender")).await;
                (dead.len() == 1).then_some(())
            },
        )
        .await;
    }

    async fn count(&self, sql: &str) -> i64 {
        count(&self.pg, sql).await
    }

    /// Every stream and held list drained: nothing is left to do anywhere.
    async fn settled(&self) {
        let cfg = &self.cfg;
        eventually(
            "the pipeline to settle",
            Duration::from_secs(30),
            || async move {
                let keys = cfg.keys();
                let mut con = cfg.redis().await;
                for p in 0..keys.partitions() {
                    for s in [
                        keys.inbound(p),
                        keys.status(p),
                        keys.replies(p),
                        keys.outbox(p),
                    ] {
                        if !read_stream(&mut con, &s).await.is_empty() {
                            return None;
                        }
                    }
                    for stage in ["conversation", "status", "llm", "sender"] {
                        let n: usize =
                            redis::AsyncCommands::zcard(&mut con, keys.delayed(stage, p))
                                .await
                                .ok()?;
                        if n > 0 {
                            return None;
                        }
                    }
                }
                Some(())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn a_slow_read_receipt_holds_back_neither_the_model_nor_the_answer() {
    // Meta answers mark-read in 6 s, under a 10-s Graph timeout (as in production).
    let read_latency = Duration::from_secs(6);
    let s = system_tweaked(
        SimConfig {
            read_latency,
            ..SimConfig::default()
        },
        |sim| vec![sim.standin()],
        &["conversation", "status", "llm", "sender"],
        |w| w.graph.timeout = Duration::from_secs(10),
    )
    .await;
    s.send("573001112233", "wamid.R1", "Hola, ¿hay stock?")
        .await;
    let (read_at, asked_at) =
        eventually("read and model call", Duration::from_secs(30), || async {
            let read = s
                .sim
                .state
                .reads()
                .into_iter()
                .find(|r| r.message_id == "wamid.R1")?;
            let asked = s.sim.state.llm_requests().into_iter().next()?;
            Some((read.received_at, asked.received_at))
        })
        .await;
    assert!(
        asked_at < read_at + 1000,
        "the model was asked {} ms after the read receipt, not after its answer",
        asked_at as i64 - read_at as i64
    );
    let sent = s.sent(1).await;
    let latency = read_latency.as_millis() as u64;
    assert!(
        sent[0].received_at < read_at + latency,
        "the answer reached Meta {} ms after the read receipt, before Meta answered it ({latency} ms)",
        sent[0].received_at as i64 - read_at as i64
    );
    let reads = s.sim.state.reads();
    assert!(reads.iter().any(|r| r.message_id == "wamid.R1" && r.typing));
}

#[tokio::test]
async fn a_signed_webhook_gets_a_reply_that_quotes_the_customer_message_and_is_tracked_to_read() {
    let s = system().await;
    s.send(
        "573001112233",
        "wamid.Q1",
        "Hola, ¿tienen envío a Medellín?",
    )
    .await;
    let sent = s.sent(1).await;
    let m = &sent[0];
    assert_eq!(m.phone_number_id, PNID);
    assert_eq!(m.to.as_deref(), Some("+573001112233"));
    assert_eq!(
        m.context_message_id.as_deref(),
        Some("wamid.Q1"),
        "the reply quotes the customer's message"
    );
    assert!(!m.body.is_empty());
    let (id, body): (i64, String) = sqlx::query_as("SELECT id, body FROM outbound_messages")
        .fetch_one(&s.pg)
        .await
        .unwrap();
    let callback = m
        .callback_data
        .as_deref()
        .expect("callback data on every send");
    assert_eq!(
        s.cfg.cipher().callback_tags().decode(callback),
        Some(wafleet::crypto::Callback {
            outbound_id: id,
            send_try: Some(1)
        }),
        "our outbound id, tagged: {callback}"
    );
    assert_eq!(m.body, body);
    // The simulator reports sent → delivered → read; the status stage follows.
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'accepted' AND delivery = 'read'",
        1,
        30,
    )
    .await;
    assert_eq!(
        s.count("SELECT count(*) FROM messages WHERE answered_at IS NOT NULL")
            .await,
        1
    );
    let reads = s.sim.state.reads();
    assert!(
        reads.iter().any(|r| r.message_id == "wamid.Q1" && r.typing),
        "marked read with a typing indicator: {reads:?}"
    );
    let (provider, tokens): (Option<String>, Option<i32>) =
        sqlx::query_as("SELECT provider, output_tokens FROM replies")
            .fetch_one(&s.pg)
            .await
            .unwrap();
    assert_eq!(provider.as_deref(), Some("standin"));
    assert!(tokens.unwrap_or(0) > 0, "token usage is stored");
}

#[tokio::test]
async fn the_same_webhook_delivered_five_times_gets_one_reply() {
    let s = system().await;
    let body = text_message(
        PNID,
        "573009998877",
        "wamid.DUP",
        now(),
        "¿Cuál es el horario?",
    );
    let posts = (0..5).map(|_| s.ingest.post_signed(&body, APP_SECRET));
    for r in futures::future::join_all(posts).await {
        assert_eq!(r.status(), 200);
    }
    // Later redeliveries too, after the first is fully handled.
    s.sent(1).await;
    for _ in 0..2 {
        assert_eq!(s.ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    }
    s.settled().await;
    assert_eq!(s.sim.state.messages().len(), 1);
    assert_eq!(s.sim.state.llm_requests().len(), 1, "one model call");
}

#[tokio::test]
async fn a_message_redelivered_after_its_dedup_mark_expired_still_gets_one_reply() {
    let s = system().await;
    s.send("573050", "wamid.R1", "¿Tienen envíos a Cali?").await;
    s.sent(1).await;
    s.settled().await;
    // Meta redelivers after ingest's dedup mark is gone: the conversation stage sees the
    // message again and queues its reply job again.
    s.cfg.forget_dedup_marks().await;
    s.send("573050", "wamid.R1", "¿Tienen envíos a Cali?").await;
    s.cfg.wait_inbound_drained(30).await;
    s.settled().await;
    assert_eq!(s.sim.state.messages().len(), 1, "one reply");
    assert_eq!(s.sim.state.llm_requests().len(), 1, "one model call");
}

/// The keyword skips the model, and with it the read receipt the model's path sends: the message
/// is marked read all the same (no typing indicator: nobody types); before, the customer who asked
/// for a person saw it unread until an agent answered.
#[tokio::test]
async fn a_handover_keyword_is_marked_read_and_acknowledged_once_and_no_bot_replies_follow() {
    let s = system().await;
    s.send(
        "573001",
        "wamid.H1",
        "Quiero hablar con un humano por favor",
    )
    .await;
    let sent = s.sent(1).await;
    assert_eq!(sent[0].body, DEFAULT_HANDOVER_ACK);
    assert!(!s.read_receipt("wamid.H1").await.typing);
    s.send("573001", "wamid.H2", "¿Hola?").await;
    wait_count(&s.pg, "SELECT count(*) FROM messages", 2, 30).await;
    s.cfg.wait_inbound_drained(30).await;
    s.settled().await;
    assert_eq!(
        s.sim.state.messages().len(),
        1,
        "no bot reply after the handover"
    );
    assert!(
        s.sim.state.llm_requests().is_empty(),
        "the model was never asked"
    );
    let reads = s.sim.state.reads();
    assert!(
        reads.iter().all(|r| r.message_id != "wamid.H2"),
        "the agent's to read: {reads:?}"
    );
}

#[tokio::test]
async fn a_message_sent_while_the_model_answers_the_previous_one_ends_the_next_history() {
    let s = system_with_sim(SimConfig {
        llm_latency: Duration::from_millis(1000),
        ..Default::default()
    })
    .await;
    s.send("573003", "wamid.Q1", "Hola").await;
    s.model_asked().await;
    // The second message is stored while the first answer is still being written, so that
    // answer is recorded after it.
    s.send("573003", "wamid.Q2", "¿Abren el domingo?").await;
    let sent = s.sent(2).await;
    s.settled().await;
    assert_eq!(s.sim.state.llm_requests().len(), 2);
    let turns = s.model_turns(1);
    let answer_to_first = sent
        .iter()
        .find(|m| m.context_message_id.as_deref() == Some("wamid.Q1"))
        .expect("the first message answered");
    assert_eq!(
        turns,
        vec![
            ("user".to_string(), "Hola".to_string()),
            ("assistant".to_string(), answer_to_first.body.clone()),
            ("user".to_string(), "¿Abren el domingo?".to_string()),
        ],
        "each answer follows its question, and the history ends on the message to answer"
    );
}

#[tokio::test]
async fn a_handover_the_model_asked_for_is_made_even_when_its_job_runs_again() {
    let s = system().await;
    // No handover keyword, so the model is asked; the stand-in asks for a person.
    s.send("573007", "wamid.M1", "¿Eres humano o robot?").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM handover_events WHERE reason = 'model'",
        1,
        30,
    )
    .await;
    let sent = s.sent(1).await;
    s.settled().await;

    // The stage stopped between storing the reply and handing over (a crash, Postgres gone):
    // the redelivered job hands over without asking the model or acknowledging again.
    s.undo_handover().await;
    s.redeliver_reply_job().await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM handover_events WHERE reason = 'model'",
        1,
        30,
    )
    .await;
    s.settled().await;
    assert_eq!(
        s.count("SELECT count(*) FROM conversations WHERE owner = 'human'")
            .await,
        1
    );
    assert_eq!(s.sim.state.llm_requests().len(), 1);
    assert_eq!(s.sim.state.messages().len(), sent.len());

    // Once a human released it, a redelivery leaves the conversation with the bot.
    s.release().await;
    s.redeliver_reply_job().await;
    s.settled().await;
    assert_eq!(
        s.count("SELECT count(*) FROM conversations WHERE owner = 'bot'")
            .await,
        1
    );
    assert_eq!(s.count("SELECT count(*) FROM handover_events").await, 2);
}

#[tokio::test]
async fn the_models_handover_message_is_formatted_like_any_answer() {
    let s = system().await;
    s.sim.state.add_llm_fault(model_says(
        "[[HANDOVER]] Te paso con un **asesor**: [aquí](https://x.co)",
    ));
    s.send("573011", "wamid.HF", "Tengo un problema con mi pedido")
        .await;
    let sent = s.sent(1).await;
    assert_eq!(sent[0].body, "Te paso con un *asesor*: aquí (https://x.co)");
    wait_count(
        &s.pg,
        "SELECT count(*) FROM handover_events WHERE reason = 'model'",
        1,
        30,
    )
    .await;
}

#[tokio::test]
async fn an_answer_that_formats_to_nothing_gets_the_canned_reply_or_the_acknowledgement() {
    let s = system().await;
    // Markup alone: nothing is left of it once formatted for WhatsApp.
    s.sim.state.add_llm_fault(model_says("<br>"));
    s.send("573012", "wamid.NT1", "¿Tienen envío a Cali?").await;
    let sent = s.sent(1).await;
    assert_eq!(
        sent[0].body, DEFAULT_CANNED_REPLY,
        "a customer is never left without an answer"
    );
    assert_eq!(
        s.count("SELECT count(*) FROM replies WHERE canned").await,
        1
    );
    s.sim
        .state
        .add_llm_fault(model_says("[[HANDOVER]] <!-- a colleague -->"));
    s.send("573013", "wamid.NT2", "Tengo un problema con mi pedido")
        .await;
    let sent = s.sent(2).await;
    assert_eq!(sent[1].body, DEFAULT_HANDOVER_ACK);
}

#[tokio::test]
async fn in_shadow_mode_the_models_handover_is_recorded_but_not_made() {
    let s = system().await;
    sqlx::query("UPDATE channels SET bot_mode = 'shadow'")
        .execute(&s.pg)
        .await
        .unwrap();
    s.sim
        .state
        .add_llm_fault(model_says("[[HANDOVER]] Te paso con un asesor."));
    s.send("573017", "wamid.SH1", "¿Me ayudas con un reclamo?")
        .await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM replies WHERE outcome = 'handover'",
        1,
        30,
    )
    .await;
    s.send("573017", "wamid.SH2", "¿Tienen envíos a Lima?")
        .await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM replies WHERE outcome = 'shadow'",
        1,
        30,
    )
    .await;
    s.settled().await;
    // Nothing the bot would have said was sent, so the customer's two messages follow one
    // another: they reach the model as one turn (DeepSeek's reasoner refuses two in a row).
    // (The first answer was injected: the stand-in lists only the second request.)
    assert_eq!(
        s.model_turns(0),
        vec![(
            "user".to_string(),
            "¿Me ayudas con un reclamo?\n\n¿Tienen envíos a Lima?".to_string()
        )]
    );
    assert_eq!(
        s.count("SELECT count(*) FROM conversations WHERE owner = 'bot'")
            .await,
        1,
        "people run a shadow conversation: the model's wish changes nothing"
    );
    assert_eq!(s.count("SELECT count(*) FROM handover_events").await, 0);
    assert!(s.sim.state.messages().is_empty(), "shadow never sends");
}

/// People answer the customers of a number whose bot is off, and run a shadow one (its replies
/// are recorded, never sent): their dashboard learns of each customer message as it does of one
/// in a conversation a human took, or nobody knows the customer wrote.
#[tokio::test]
async fn a_customer_message_to_a_number_whose_bot_is_off_or_in_shadow_is_announced_to_the_dashboard()
 {
    for mode in ["off", "shadow"] {
        let s = system().await;
        sqlx::query("UPDATE channels SET bot_mode = $1::text")
            .bind(mode)
            .execute(&s.pg)
            .await
            .unwrap();
        s.send("573031", "wamid.P1", "hola, ¿me atienden?").await;
        wait_count(&s.pg, "SELECT count(*) FROM messages", 1, 30).await;
        s.settled().await;
        assert_eq!(
            s.owner_events().await,
            vec![("message".to_string(), "customer".to_string())],
            "bot {mode}"
        );
        assert!(
            s.sim.state.messages().is_empty(),
            "bot {mode}: nothing sent"
        );
    }
}

#[tokio::test]
async fn a_model_asking_for_a_person_after_a_keyword_handover_does_not_acknowledge_twice() {
    let s = system_with_sim(SimConfig {
        llm_latency: Duration::from_millis(1000),
        ..Default::default()
    })
    .await;
    // The stand-in answers this with the handover marker, a second after being asked.
    s.send("573012", "wamid.K1", "¿Eres humano o robot?").await;
    s.model_asked().await;
    // Meanwhile the customer asks for a person with a keyword: handed over and acknowledged.
    s.send("573012", "wamid.K2", "quiero hablar con un humano")
        .await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE kind = 'handover_ack'",
        2,
        30,
    )
    .await;
    s.settled().await;
    let sent = s.sim.state.messages();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].body, DEFAULT_HANDOVER_ACK);
    assert_eq!(sent[0].context_message_id.as_deref(), Some("wamid.K2"));
    assert_eq!(
        s.count(
            "SELECT count(*) FROM outbound_messages o JOIN messages m ON m.id = o.reply_to
              WHERE m.wamid = 'wamid.K1' AND o.state = 'suppressed'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn after_a_release_the_model_sees_the_request_for_a_person_was_answered() {
    let s = system().await;
    s.send("573015", "wamid.R1", "quiero hablar con un humano")
        .await;
    s.sent(1).await;
    s.settled().await;
    s.release().await;
    s.send("573015", "wamid.R2", "¿A qué hora cierran?").await;
    s.sent(2).await;
    assert_eq!(s.sim.state.llm_requests().len(), 1);
    assert_eq!(
        s.model_turns(0),
        vec![
            (
                "user".to_string(),
                "quiero hablar con un humano".to_string()
            ),
            ("assistant".to_string(), DEFAULT_HANDOVER_ACK.to_string()),
            ("user".to_string(), "¿A qué hora cierran?".to_string()),
        ]
    );
}

/// A customer's message whose answer the model is still writing when an agent takes the
/// conversation (and, with `release`, gives it back at once): the answer is suppressed.
/// A system whose model takes 1.5 s, asked about one customer message.
async fn the_model_thinking_about(from: &str, wamid: &str, text: &str) -> Sys {
    let s = system_with_sim(SimConfig {
        llm_latency: Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    s.send(from, wamid, text).await;
    s.model_asked().await;
    s
}

async fn a_human_takes_over_while_the_model_thinks(release: bool) -> Sys {
    let s = the_model_thinking_about("573002", "wamid.T1", "¿Tienen la talla M?").await;
    let (conversation,): (i64,) = sqlx::query_as("SELECT id FROM conversations")
        .fetch_one(&s.pg)
        .await
        .unwrap();
    let mut tx = s.pg.begin().await.unwrap();
    assert!(
        wafleet::store::conversations::hand_over(&mut tx, conversation, "agent", None, None)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    if release {
        assert!(
            wafleet::store::conversations::release(&s.pg, conversation)
                .await
                .unwrap()
        );
    }
    the_answer_is_suppressed(&s, "a human owns the conversation").await;
    s
}

/// The model's answer ends `suppressed` for `reason`, and nothing reaches the customer.
async fn the_answer_is_suppressed(s: &Sys, reason: &str) {
    let query = format!(
        "SELECT count(*) FROM outbound_messages WHERE state = 'suppressed' AND fail_reason = '{reason}'"
    );
    wait_count(&s.pg, &query, 1, 30).await;
    s.settled().await;
    assert!(
        s.sim.state.messages().is_empty(),
        "nothing reached the customer"
    );
}

#[tokio::test]
async fn a_human_taking_over_while_the_model_thinks_suppresses_the_reply() {
    let s = a_human_takes_over_while_the_model_thinks(false).await;
    assert_eq!(
        s.count("SELECT count(*) FROM messages WHERE answered_at IS NULL")
            .await,
        0,
        "the bot is done with the message: it no longer counts as waiting for an answer"
    );
}

#[tokio::test]
async fn a_human_taking_over_and_releasing_while_the_model_thinks_still_suppresses_the_reply() {
    // The bot owns the conversation again when its answer is claimed, but the agent had the
    // customer's message in hand (and may have answered it).
    let s = a_human_takes_over_while_the_model_thinks(true).await;
    // The bot answers what the customer says after the release.
    s.send("573002", "wamid.T2", "Gracias, ¿y en rojo?").await;
    let sent = s.sent(1).await;
    assert_eq!(sent[0].context_message_id.as_deref(), Some("wamid.T2"));
}

#[tokio::test]
async fn the_bot_switched_off_while_the_model_thinks_sends_nothing() {
    let s = the_model_thinking_about("573013", "wamid.OFF1", "¿Tienen envíos hoy?").await;
    // The operator stops the bot on the number (people answer from now on).
    sqlx::query("UPDATE channels SET bot_mode = 'off'")
        .execute(&s.pg)
        .await
        .unwrap();
    the_answer_is_suppressed(&s, "the bot is off on this number").await;
}

impl Sys {
    /// The business writes `text` to `to` from the WhatsApp Business app (coexistence).
    async fn echo(&self, to: &str, wamid: &str, text: &str) {
        self.post(&echo_message(PNID, to, wamid, now(), text)).await;
    }

    /// The parts recorded as the business app's: (kind, agent, state, body).
    async fn business_app_parts(&self) -> Vec<(String, String, String, String)> {
        sqlx::query_as(
            "SELECT kind, agent, state, body FROM outbound_messages
              WHERE agent = 'business_app' ORDER BY id",
        )
        .fetch_all(&self.pg)
        .await
        .unwrap()
    }
}

/// The seeds audit's "keeps talking after a human took over": the owner answers from the phone
/// while the model is writing its answer, and the bot's answer must not follow theirs.
#[tokio::test]
async fn the_owner_answering_from_the_business_app_while_the_model_thinks_suppresses_the_reply() {
    let s = the_model_thinking_about("573020", "wamid.C1", "¿Tienen la talla M?").await;
    s.echo(
        "573020",
        "wamid.E1",
        "Hola Ana, sí tenemos. Escríbeme a ana@tienda.co",
    )
    .await;
    the_answer_is_suppressed(&s, "a human owns the conversation").await;
    assert_eq!(
        s.count("SELECT count(*) FROM conversations WHERE owner = 'human'")
            .await,
        1
    );
    assert_eq!(
        s.count(
            "SELECT count(*) FROM handover_events WHERE kind = 'handover' AND reason = 'business_app'"
        )
        .await,
        1
    );
    assert!(
        s.owner_events()
            .await
            .contains(&("handover".into(), "business_app".into())),
        "{:?}",
        s.owner_events().await
    );
    // In the history as the business's message, redacted, and never sent by us.
    assert_eq!(
        s.business_app_parts().await,
        [(
            "agent".into(),
            "business_app".into(),
            "accepted".into(),
            "Hola Ana, sí tenemos. Escríbeme a [EMAIL]".into()
        )]
    );
    // We sent none of it: not in the usage a platform bills.
    let day = chrono::Duration::days(1);
    let usage = wafleet::store::usage::by_channel(
        &s.pg,
        chrono::Utc::now() - day,
        chrono::Utc::now() + day,
    )
    .await
    .unwrap();
    assert_eq!(usage[0].sent_by_agents, 0);
}

/// What the owner writes from the WhatsApp Business app in [`the_owner_answers_between`].
const OWNERS_ANSWER: &str = "Sí Ana, mañana te llega";

/// Customer `from` writes (`wamid.<tag>1`) and the bot answers; the owner writes
/// [`OWNERS_ANSWER`] to `to` from the WhatsApp Business app (`wamid.<tag>E`); the customer writes
/// again (`wamid.<tag>2`): the bot does not answer that.
async fn the_owner_answers_between(from: &str, to: &str, tag: &str) -> Sys {
    let s = system().await;
    s.send(from, &format!("wamid.{tag}1"), "Hola, ¿tienen envíos?")
        .await;
    s.sent(1).await;
    s.echo(to, &format!("wamid.{tag}E"), OWNERS_ANSWER).await;
    s.send(from, &format!("wamid.{tag}2"), "perfecto, gracias")
        .await;
    s.settled().await;
    let answers = s.sim.state.messages().len();
    assert_eq!(answers, 1, "no bot answer after the owner's");
    s
}

/// The owner writes between two of the customer's messages: the second is the human's to
/// answer, a redelivered echo changes nothing, and once the conversation goes back to the bot
/// (idle), the model reads what the owner wrote.
#[tokio::test]
async fn an_echo_between_two_customer_messages_leaves_the_second_to_the_human() {
    let s = the_owner_answers_between("573021", "573021", "D").await;
    assert_eq!(
        s.count(
            "SELECT count(*) FROM messages WHERE wamid = 'wamid.D2'
                AND owner_at_arrival = 'human' AND action = 'none'"
        )
        .await,
        1
    );
    // Meta delivers the echo again, also after ingest forgot it: one part, one handover.
    s.echo("573021", "wamid.DE", OWNERS_ANSWER).await;
    s.cfg.forget_dedup_marks().await;
    s.echo("573021", "wamid.DE", OWNERS_ANSWER).await;
    s.settled().await;
    assert_eq!(s.business_app_parts().await.len(), 1);
    // The handover, then the customer's message for the people answering it.
    assert_eq!(
        s.owner_events().await,
        [
            ("handover".to_string(), "business_app".to_string()),
            ("message".to_string(), "customer".to_string())
        ]
    );
    assert_eq!(s.count("SELECT count(*) FROM handover_events").await, 1);

    // Nobody wrote for the channel's release time (shortened here to a minute, within the
    // session): back to the bot, which answers knowing what the owner said.
    sqlx::query("UPDATE channels SET human_release_after_secs = 60")
        .execute(&s.pg)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE conversations SET last_activity_at = now() - interval '2 minutes',
                                  handed_over_at = now() - interval '2 minutes',
                                  agent_activity_at = now() - interval '2 minutes'",
    )
    .execute(&s.pg)
    .await
    .unwrap();
    assert_eq!(release_idle(&s).await, 1);
    s.send("573021", "wamid.D3", "¿Y a Cali?").await;
    s.sent(2).await;
    // The business's side of the talk, after the bot's answer (turns of one side are joined).
    let turns = s.model_turns(1);
    assert!(
        turns
            .iter()
            .any(|(role, text)| role == "assistant" && text.ends_with(OWNERS_ANSWER)),
        "{turns:?}"
    );
}

/// A Mexican customer writes as `521…` and the owner's phone has them as `52…`: the echo is in
/// their conversation all the same, which keeps the number Meta names them by.
#[tokio::test]
async fn an_echo_to_the_other_notation_of_a_mexican_number_takes_that_customers_conversation() {
    let s = the_owner_answers_between("5215512345678", "525512345678", "MX").await;
    assert_eq!(s.count("SELECT count(*) FROM conversations").await, 1);
    assert_eq!(
        s.count(
            "SELECT count(*) FROM conversations WHERE customer_key = '5215512345678'
                AND wa_id = '5215512345678' AND owner = 'human'"
        )
        .await,
        1
    );
}

/// Every stage but the model's, with the channel's `reply_gather_ms` at `gather_ms`: what the
/// customer sends is stored and its reply jobs wait, as they do behind a model still answering
/// an earlier message, until [`Sys::model_starts`].
async fn a_burst_waiting_for_the_model(gather_ms: i32) -> Sys {
    let s = system_with(
        SimConfig::default(),
        |s| vec![s.standin()],
        &["conversation", "status", "sender"],
    )
    .await;
    gather(&s, gather_ms).await;
    s
}

impl Sys {
    /// Once `stored` messages are stored, starts the model's stage (the stand-in).
    async fn model_starts(&self, stored: i64) -> Worker {
        wait_count(&self.pg, "SELECT count(*) FROM messages", stored, 30).await;
        Worker::start(
            self.cfg
                .pipeline_settings(&["llm"], &self.sim, vec![self.sim.standin()]),
        )
        .await
    }
}

/// Sets the channel's `reply_gather_ms`.
async fn gather(s: &Sys, ms: i32) {
    sqlx::query("UPDATE channels SET reply_gather_ms = $1")
        .bind(ms)
        .execute(&s.pg)
        .await
        .unwrap();
}

#[tokio::test]
async fn without_a_gather_time_each_message_of_a_burst_is_answered() {
    let s = a_burst_waiting_for_the_model(0).await;
    s.send("573033", "wamid.E1", "hola").await;
    s.send("573033", "wamid.E2", "¿tienen la talla M?").await;
    let _llm = s.model_starts(2).await;
    s.sent(2).await;
    s.settled().await;
    assert_eq!(
        reply_outcomes(&s.pg).await,
        vec![
            ("wamid.E1".to_string(), Some("produced".to_string())),
            ("wamid.E2".to_string(), Some("produced".to_string())),
        ]
    );
}

/// Each stored message's reply outcome, by wamid, oldest first.
async fn reply_outcomes(pg: &PgPool) -> Vec<(String, Option<String>)> {
    sqlx::query_as(
        "SELECT m.wamid, r.outcome FROM messages m LEFT JOIN replies r ON r.message_id = m.id
          ORDER BY m.id",
    )
    .fetch_all(pg)
    .await
    .unwrap()
}

/// The customer's last turn the `n`-th model call saw.
fn last_customer_turn(s: &Sys, n: usize) -> String {
    s.model_turns(n)
        .into_iter()
        .rev()
        .find(|(role, _)| role == "user")
        .map(|(_, text)| text)
        .unwrap_or_default()
}

#[tokio::test]
async fn a_burst_of_messages_gets_one_answer_written_knowing_all_of_them() {
    let s = a_burst_waiting_for_the_model(500).await;
    s.send("573030", "wamid.B1", "hola").await;
    s.send("573030", "wamid.B2", "una pregunta").await;
    s.send("573030", "wamid.B3", "¿tienen la talla M?").await;
    let _llm = s.model_starts(3).await;
    let sent = s.sent(1).await;
    s.settled().await;
    let sent_now = s.sim.state.messages();
    assert_eq!(sent_now.len(), 1, "one answer to the burst: {sent_now:?}");
    assert_eq!(sent[0].context_message_id.as_deref(), Some("wamid.B3"));
    assert_eq!(s.sim.state.llm_requests().len(), 1, "one model call");
    let asked = last_customer_turn(&s, 0);
    for said in ["hola", "una pregunta", "¿tienen la talla M?"] {
        assert!(asked.contains(said), "{said:?} not in {asked:?}");
    }
    assert_eq!(
        reply_outcomes(&s.pg).await,
        vec![
            ("wamid.B1".to_string(), Some("superseded".to_string())),
            ("wamid.B2".to_string(), Some("superseded".to_string())),
            ("wamid.B3".to_string(), Some("produced".to_string())),
        ]
    );
    assert_eq!(
        s.count("SELECT count(*) FROM messages WHERE answered_at IS NULL")
            .await,
        0,
        "no message of the burst is left waiting for an answer"
    );
}

#[tokio::test]
async fn a_photo_followed_by_text_is_still_answered_with_the_photo() {
    // Only the photo's own answer shows the model the photo: it is not folded into the next.
    let s = a_burst_waiting_for_the_model(500).await;
    let photo = message_body(
        PNID,
        "573031",
        serde_json::json!({"from": "573031", "id": "wamid.P1", "timestamp": now().to_string(),
                           "type": "image", "image": {"id": "photo-31", "mime_type": "image/jpeg",
                                                      "sha256": "x", "caption": "¿esto lo tienen?"}}),
    );
    assert_eq!(s.ingest.post_signed(&photo, APP_SECRET).await.status(), 200);
    s.send("573031", "wamid.P2", "en azul").await;
    let _llm = s.model_starts(2).await;
    s.sent(2).await;
    s.settled().await;
    assert_eq!(s.sim.state.messages().len(), 2);
    assert_eq!(
        reply_outcomes(&s.pg).await,
        vec![
            ("wamid.P1".to_string(), Some("produced".to_string())),
            ("wamid.P2".to_string(), Some("produced".to_string())),
        ]
    );
}

#[tokio::test]
async fn a_channel_that_gathers_answers_a_burst_once() {
    // With every stage running: the first message waits its gather time, the second comes
    // within it, and only the second is answered.
    let s = system().await;
    gather(&s, 10_000).await;
    s.send("573032", "wamid.G1", "hola").await;
    wait_count(&s.pg, "SELECT count(*) FROM messages", 1, 30).await;
    s.send("573032", "wamid.G2", "¿hacen envíos a Cali?").await;
    let sent = s.sent(1).await;
    s.settled().await;
    assert_eq!(s.sim.state.messages().len(), 1);
    assert_eq!(sent[0].context_message_id.as_deref(), Some("wamid.G2"));
    assert_eq!(s.sim.state.llm_requests().len(), 1);
    let asked = last_customer_turn(&s, 0);
    assert!(
        asked.contains("hola") && asked.contains("Cali"),
        "{asked:?}"
    );
    assert_eq!(
        reply_outcomes(&s.pg).await,
        vec![
            ("wamid.G1".to_string(), Some("superseded".to_string())),
            ("wamid.G2".to_string(), Some("produced".to_string())),
        ]
    );
}

#[tokio::test]
async fn the_second_provider_answers_when_the_first_fails_and_the_canned_reply_when_all_do() {
    let s = system_with(
        SimConfig::default(),
        |s| vec![s.anthropic(), s.standin()],
        &["conversation", "status", "llm", "sender"],
    )
    .await;
    s.sim.state.add_llm_fault(
        serde_json::from_value::<LlmFault>(
            serde_json::json!({"status": 529, "count": 2, "provider": "anthropic"}),
        )
        .unwrap(),
    );
    s.send("573003", "wamid.F1", "Hola, ¿qué precio tiene?")
        .await;
    s.sent(1).await;
    let (provider, canned): (Option<String>, bool) =
        sqlx::query_as("SELECT provider, canned FROM replies")
            .fetch_one(&s.pg)
            .await
            .unwrap();
    assert_eq!((provider.as_deref(), canned), (Some("standin"), false));

    s.sim.state.add_llm_fault(
        serde_json::from_value::<LlmFault>(serde_json::json!({"status": 500, "count": 100}))
            .unwrap(),
    );
    s.send("573004", "wamid.F2", "¿Y el envío?").await;
    let sent = s.sent(2).await;
    assert_eq!(
        sent[1].body, DEFAULT_CANNED_REPLY,
        "a customer is never left without an answer"
    );
    assert_eq!(
        s.count("SELECT count(*) FROM replies WHERE canned").await,
        1
    );
}

#[tokio::test]
async fn a_131047_is_not_retried_and_hands_the_conversation_to_a_human() {
    let s = system().await;
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": 131047, "count": 1})));
    s.send("573005", "wamid.W1", "hola").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'failed' AND error_code = 131047",
        1,
        30,
    )
    .await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM conversations WHERE owner = 'human'",
        1,
        30,
    )
    .await;
    s.settled().await;
    assert!(s.sim.state.messages().is_empty());
    assert_eq!(
        s.count("SELECT count(*) FROM handover_events WHERE reason = 're_engagement'")
            .await,
        1
    );
    assert_eq!(
        s.count("SELECT count(*) FROM messages WHERE answered_at IS NULL")
            .await,
        0,
        "a failed reply leaves nothing waiting for the bot"
    );

    // The sender stopped between failing the part and handing over (a crash, Postgres gone):
    // the redelivered job hands over.
    s.undo_handover().await;
    s.redeliver_send().await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM handover_events WHERE reason = 're_engagement'",
        1,
        30,
    )
    .await;
    assert_eq!(
        s.count("SELECT count(*) FROM conversations WHERE owner = 'human'")
            .await,
        1
    );
    // A human has since released the conversation: a later redelivery does not take it back.
    s.release().await;
    s.redeliver_send().await;
    s.settled().await;
    assert_eq!(
        s.count("SELECT count(*) FROM conversations WHERE owner = 'bot'")
            .await,
        1
    );
    assert_eq!(s.count("SELECT count(*) FROM handover_events").await, 2);
    assert!(
        s.sim.state.messages().is_empty(),
        "the failed part is never sent"
    );
}

#[tokio::test]
async fn a_message_meta_fails_after_accepting_it_is_sent_again_when_its_code_allows() {
    let s = system().await;
    // Meta accepts the first send to this customer, then fails it with a transient 131000.
    s.sim.state.add_fault(fault(serde_json::json!({
        "code": 131000, "count": 1, "async": true, "recipient": "573008"
    })));
    // And fails the first send to another customer with a permanent 131026 (undeliverable).
    s.sim.state.add_fault(fault(serde_json::json!({
        "code": 131026, "count": 1, "async": true, "recipient": "573009"
    })));
    s.send("573008", "wamid.F1", "hola").await;
    s.send("573009", "wamid.F2", "buenas").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages o JOIN conversations c ON c.id = o.conversation_id
          WHERE c.wa_id = '573008' AND o.state = 'accepted' AND o.delivery = 'read'",
        1,
        30,
    )
    .await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'failed' AND error_code = 131026",
        1,
        30,
    )
    .await;
    s.settled().await;
    let sends = |to: &str| -> Vec<wafleet_sim::SentMessage> {
        s.sim
            .state
            .messages()
            .into_iter()
            .filter(|m| m.recipient == to)
            .collect()
    };
    let again = sends("573008");
    assert_eq!(
        again.len(),
        2,
        "sent, failed by Meta, sent again: {again:?}"
    );
    assert_eq!(again[0].body, again[1].body);
    assert_eq!(again[1].context_message_id.as_deref(), Some("wamid.F1"));
    let (wamid,): (Option<String>,) = sqlx::query_as(
        "SELECT o.wamid FROM outbound_messages o JOIN conversations c ON c.id = o.conversation_id
          WHERE c.wa_id = '573008'",
    )
    .fetch_one(&s.pg)
    .await
    .unwrap();
    assert_eq!(wamid.as_deref(), Some(again[1].wamid.as_str()));
    assert_eq!(
        sends("573009").len(),
        1,
        "a permanent failure is not sent again"
    );
}

#[tokio::test]
async fn replaying_a_reply_that_ran_out_of_retries_sends_it_once() {
    let s = system_retrying(2).await;
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": 131000, "count": 2})));
    s.send("573011", "wamid.R1", "hola").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'failed' AND error_code = 131000",
        1,
        30,
    )
    .await;
    let keys = s.cfg.keys();
    let mut con = s.cfg.redis().await;
    let letters = s.sender_dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert!(s.sim.state.messages().is_empty(), "both tries failed");

    s.replay_sender(&letters[0], false).await;
    let sent = s.sent(1).await;
    assert_eq!(sent[0].context_message_id.as_deref(), Some("wamid.R1"));
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages
          WHERE state = 'accepted' AND attempts = 1 AND error_code IS NULL AND retries_since IS NOT NULL",
        1,
        30,
    )
    .await;
    assert!(
        wafleet::dead_letters::read(&mut con, &keys, "sender")
            .await
            .unwrap()
            .is_empty()
    );
    // The same dead letter replayed again (an operator repeating a replay that looked stuck):
    // the part was accepted, so nothing more goes out.
    s.replay_sender(&letters[0], false).await;
    s.settled().await;
    assert_eq!(s.sim.state.messages().len(), 1, "sent once");
}

#[tokio::test]
async fn an_unreachable_graph_api_is_waited_for_only_up_to_the_retry_age() {
    // Nothing listens where the Graph API should be: every send is refused before it leaves.
    let s = system_tweaked(
        SimConfig::default(),
        |s| vec![s.standin()],
        &["conversation", "llm", "sender"],
        |w| {
            w.graph.base_url = "http://127.0.0.1:9".into();
            w.send.backoff.max_age = Duration::from_secs(1);
        },
    )
    .await;
    s.send("573016", "wamid.UNR", "hola").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages
          WHERE state = 'failed' AND fail_reason LIKE 'gave up: Graph API unreachable%'",
        1,
        30,
    )
    .await;
    s.one_sender_dead_letter().await;
}

#[tokio::test]
async fn a_throttled_send_is_held_back_only_up_to_the_retry_age() {
    // Meta throttles the number on every try.
    let s = system_with_settings(|w| w.send.backoff.max_age = Duration::from_secs(2)).await;
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": 130429, "count": 1000})));
    s.send("573017", "wamid.THR", "hola").await;
    wait_count(
        &s.pg,
        // Given up on Meta's answer, or on the pause it left in the shared limiter, whichever
        // the part meets first past its age.
        "SELECT count(*) FROM outbound_messages
          WHERE state = 'failed' AND (fail_reason LIKE 'gave up: throttled by Meta (130429)%'
                                      OR fail_reason LIKE 'gave up: held back by the rate limits%')",
        1,
        30,
    )
    .await;
    s.one_sender_dead_letter().await;
    assert!(s.sim.state.messages().is_empty());
}

#[tokio::test]
async fn a_parts_own_retry_bounds_govern_its_resends_not_the_workers_job_attempts() {
    // The worker gives a job 3 attempts (test settings); the send policy gives a part 8. Four
    // transient errors in a row: the part is resent until it goes out, and is never left
    // `pending` by a job dead-lettered under it.
    let s = system_retrying(8).await;
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": 131000, "count": 4})));
    s.send("573015", "wamid.B4", "hola").await;
    let sent = s.sent(1).await;
    assert_eq!(sent[0].context_message_id.as_deref(), Some("wamid.B4"));
    s.settled().await;
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM outbound_messages")
            .fetch_one(&s.pg)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("accepted", 5));
    let mut con = s.cfg.redis().await;
    assert!(
        wafleet::dead_letters::read(&mut con, &s.cfg.keys(), "sender")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_invalid_request_or_server_error_is_retried_once_then_fails() {
    // Code 1 (reference C.2: "invalid request or possible server error", R once, then P): the
    // part allows 8 sends for transient errors, but a request Meta may find invalid is not
    // repeated seven times.
    let s = system_retrying(8).await;
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": 1, "count": 3})));
    s.send("573022", "wamid.C1", "hola").await;
    s.one_sender_dead_letter().await;
    let (state, attempts, code): (String, i32, Option<i32>) =
        sqlx::query_as("SELECT state, attempts, error_code FROM outbound_messages")
            .fetch_one(&s.pg)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts, code), ("failed", 2, Some(1)));
    assert!(s.sim.state.messages().is_empty());
}

#[tokio::test]
async fn throttles_do_not_use_up_the_attempts_a_transient_error_is_allowed() {
    // Three sends in all for transient errors; Meta throttles the number three times first, and
    // the pair once.
    let s = system_retrying(3).await;
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": 130429, "count": 3})));
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": 131056, "count": 1})));
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": 131000, "count": 2})));
    s.send("573010", "wamid.T9", "hola").await;
    let sent = s.sent(1).await;
    assert_eq!(sent[0].context_message_id.as_deref(), Some("wamid.T9"));
    s.settled().await;
    let (attempts,): (i32,) = sqlx::query_as("SELECT attempts FROM outbound_messages")
        .fetch_one(&s.pg)
        .await
        .unwrap();
    assert_eq!(
        attempts, 3,
        "two transient failures and the send, not the throttles"
    );
}

#[tokio::test]
async fn a_number_in_maintenance_is_held_for_a_minute_without_using_attempts() {
    // Meta upgrades the number's throughput: for up to a minute every send gets 131057. Three
    // sends allowed for transient errors would all go within a couple of seconds.
    let s = system_retrying(3).await;
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": 131057, "count": 1000})));
    s.send("573018", "wamid.MM", "hola").await;
    let keys = wafleet::ratelimit::RateLimitKeys::new(s.cfg.prefix.clone());
    let con = s.cfg.redis().await;
    let held = eventually(
        "the number held, or the part given up",
        Duration::from_secs(30),
        || {
            let mut con = con.clone();
            let key = keys.paused(PNID);
            let pg = s.pg.clone();
            async move {
                let held: i64 = redis::cmd("PTTL")
                    .arg(key)
                    .query_async(&mut con)
                    .await
                    .unwrap();
                let failed = count(
                    &pg,
                    "SELECT count(*) FROM outbound_messages WHERE state = 'failed'",
                )
                .await;
                (held > 0 || failed > 0).then_some(held)
            }
        },
    )
    .await;
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM outbound_messages")
            .fetch_one(&s.pg)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), attempts),
        ("pending", 0),
        "kept for after the maintenance, no attempt used"
    );
    assert!(held > 30_000, "held for about a minute: {held} ms");
}

#[tokio::test]
async fn sends_meta_never_answers_are_resent_only_within_the_retry_bounds() {
    // No status stage, and Meta takes every send but never answers: each send is ambiguous and,
    // with no status to reconcile it, taken as lost after 200 ms. Three attempts in all.
    let s = unanswered_sends(Duration::from_millis(200), 3).await;
    s.send("573014", "wamid.HANG", "hola").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'failed'
            AND fail_reason LIKE '%answered none of 3 sends%'",
        1,
        30,
    )
    .await;
    s.one_sender_dead_letter().await;
    assert_eq!(
        s.sim.state.messages().len(),
        3,
        "sent once and resent twice, never more"
    );
    // An operator's replay leaves the part failed and the dead letter in place: one of those
    // sends may have reached the customer. Asked to, it sends again.
    let mut con = s.cfg.redis().await;
    let keys = s.cfg.keys();
    let letters = wafleet::dead_letters::read(&mut con, &keys, "sender")
        .await
        .unwrap();
    let parts = s.replay_sender(&letters[0], false).await;
    assert_eq!((parts.reopened, parts.unanswered), (0, 1));
    let kept = wafleet::dead_letters::read(&mut con, &keys, "sender")
        .await
        .unwrap();
    assert_eq!(
        kept.len(),
        1,
        "the dead letter stays for a replay that asks"
    );
    assert_eq!(
        s.count("SELECT count(*) FROM outbound_messages WHERE state = 'failed'")
            .await,
        1
    );
    // Meta answers again (the simulator forgets its faults and what it received).
    s.sim.state.reset();
    let parts = s.replay_sender(&kept[0], true).await;
    assert_eq!((parts.reopened, parts.unanswered), (1, 0));
    s.sent(1).await;
    assert!(
        wafleet::dead_letters::read(&mut con, &keys, "sender")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_ambiguous_send_whose_statuses_wait_for_the_status_stage_is_not_sent_again() {
    // Meta takes the send and posts its statuses at once, but never answers the request; the
    // status stage is not running (down, or behind after an outage), so the statuses that would
    // confirm the send wait in the status stream past the resend delay.
    let s = without_status_stage(|w| {
        w.graph.timeout = Duration::from_millis(300);
        w.send.ambiguous_resend_after = Duration::from_millis(500);
        w.send.ambiguous_check = Duration::from_millis(50);
    })
    .await;
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"hang": true, "count": 1})));
    s.send("573018", "wamid.LATE", "hola").await;
    s.sent(1).await;
    let waits = || {
        metric_value(
            &wafleet::telemetry::metrics_handle().render(),
            "wafleet_sender_ambiguous_waits_total",
        )
    };
    // Past the resend delay the sender decides: it sends again, or waits for the statuses.
    eventually(
        "the sender to decide on the ambiguous send",
        Duration::from_secs(30),
        || async { (s.sim.state.messages().len() >= 2 || waits() > 0.0).then_some(()) },
    )
    .await;
    // The status stage comes back and records Meta's acceptance from the statuses it finds.
    let _status = Worker::start(s.cfg.pipeline_settings(&["status"], &s.sim, vec![])).await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'accepted'",
        1,
        30,
    )
    .await;
    assert_eq!(s.sim.state.messages().len(), 1, "sent once");
}

#[tokio::test]
async fn a_send_meta_accepted_while_postgres_would_not_record_it_is_never_sent_again() {
    // No status stage: only the sender itself can learn the wamid back. A send with no
    // recorded outcome is taken as lost after 300 ms.
    let s = without_status_stage(|w| {
        w.send.ambiguous_resend_after = Duration::from_millis(300);
        w.send.ambiguous_check = Duration::from_millis(100);
    })
    .await;
    // Postgres refuses to record any wamid ("insufficient resources": unavailable, retried)
    // until the gate opens; every refusal is counted (a sequence survives the rollback).
    for statement in [
        "CREATE SEQUENCE refused_accepts",
        "CREATE TABLE accept_gate (closed boolean NOT NULL)",
        "INSERT INTO accept_gate VALUES (TRUE)",
        "CREATE FUNCTION refuse_accept() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.wamid IS NOT NULL AND OLD.wamid IS NULL AND (SELECT closed FROM accept_gate) THEN
             PERFORM nextval('refused_accepts');
             RAISE EXCEPTION 'not now' USING ERRCODE = '53000';
           END IF;
           RETURN NEW;
         END $$",
        "CREATE TRIGGER refuse_accept BEFORE UPDATE ON outbound_messages
           FOR EACH ROW EXECUTE FUNCTION refuse_accept()",
    ] {
        sqlx::query(statement).execute(&s.pg).await.unwrap();
    }
    s.send("573013", "wamid.NR", "hola").await;
    let sent = s.sent(1).await;
    // Several runs of the job meet the refusal, the later ones long after the resend delay.
    wait_count(
        &s.pg,
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM refused_accepts",
        4,
        30,
    )
    .await;
    sqlx::query("UPDATE accept_gate SET closed = FALSE")
        .execute(&s.pg)
        .await
        .unwrap();
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'accepted'",
        1,
        30,
    )
    .await;
    // (No status stage: the status streams never drain, so wait for the sender's alone.)
    let cfg = &s.cfg;
    eventually(
        "the sends to finish",
        Duration::from_secs(30),
        || async move {
            let keys = cfg.keys();
            let mut con = cfg.redis().await;
            for p in 0..keys.partitions() {
                if !read_stream(&mut con, &keys.outbox(p)).await.is_empty() {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    assert_eq!(s.sim.state.messages().len(), 1, "sent once");
    let (wamid,): (Option<String>,) = sqlx::query_as("SELECT wamid FROM outbound_messages")
        .fetch_one(&s.pg)
        .await
        .unwrap();
    assert_eq!(wamid.as_deref(), Some(sent[0].wamid.as_str()));
}

#[tokio::test]
async fn the_spam_rate_limit_raises_an_alert() {
    let s = system().await;
    let before = metric_value(
        &wafleet::telemetry::metrics_handle().render(),
        r#"wafleet_sender_alerts_total{channel="106540352242922",kind="spam_limit"}"#,
    );
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": 131048, "count": 1})));
    s.send("573016", "wamid.SP", "hola").await;
    eventually("the spam-limit alert", Duration::from_secs(30), || async {
        let now = metric_value(
            &wafleet::telemetry::metrics_handle().render(),
            r#"wafleet_sender_alerts_total{channel="106540352242922",kind="spam_limit"}"#,
        );
        (now > before).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_refusal_with_a_code_metas_table_does_not_list_fails_the_part_and_raises_an_alert() {
    // Reference C.2: an unknown code with a 4xx is permanent, and someone must look at it (a new
    // account restriction would otherwise fail every reply silently).
    let s = system().await;
    let alerts = || {
        metric_value(
            &wafleet::telemetry::metrics_handle().render(),
            r#"wafleet_sender_alerts_total{channel="106540352242922",kind="unknown_code"}"#,
        )
    };
    let before = alerts();
    s.sim.state.add_fault(fault(
        serde_json::json!({"code": 139999, "http_status": 400, "count": 1}),
    ));
    s.send("573021", "wamid.UC", "hola").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'failed' AND error_code = 139999",
        1,
        30,
    )
    .await;
    eventually(
        "the unknown-code alert",
        Duration::from_secs(10),
        || async { (alerts() > before).then_some(()) },
    )
    .await;
    assert!(s.sim.state.messages().is_empty());
}

/// Meta's `code` (a limit wider than one number) met by the channel's send: the sending number
/// (of business account `waba-1`) and `sibling` wait, `stranger` does not. `sibling` and
/// `stranger` are added with their tweaks.
async fn a_wide_rate_limit_pauses(
    s: &Sys,
    code: i64,
    sibling: impl FnOnce(&mut wafleet::store::channels::ChannelSpec),
    stranger: impl FnOnce(&mut wafleet::store::channels::ChannelSpec),
) {
    const SIBLING: &str = "106540352242923";
    const STRANGER: &str = "106540352242924";
    // The sending number's business account; the tweaks say whether the others share it.
    sqlx::query("UPDATE channels SET waba_id = 'waba-1'")
        .execute(&s.pg)
        .await
        .unwrap();
    s.cfg.add_channel(SIBLING, sibling).await;
    s.cfg.add_channel(STRANGER, stranger).await;
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": code, "count": 1})));
    s.send("573017", "wamid.WB", "hola").await;
    let keys = wafleet::ratelimit::RateLimitKeys::new(s.cfg.prefix.clone());
    let mut con = s.cfg.redis().await;
    let paused = |con: &mut redis::aio::MultiplexedConnection, number: &str| {
        let key = keys.paused(number);
        let mut con = con.clone();
        async move { con.exists::<_, bool>(key).await.unwrap() }
    };
    eventually("the sending number paused", Duration::from_secs(30), || {
        let p = paused(&mut con, PNID);
        async move { p.await.then_some(()) }
    })
    .await;
    assert!(
        paused(&mut con, SIBLING).await,
        "{code}: the other number under the same limit waits too"
    );
    assert!(
        !paused(&mut con, STRANGER).await,
        "{code}: a number outside the limit does not"
    );
}

#[tokio::test]
async fn the_business_accounts_rate_limit_pauses_every_number_of_the_account() {
    let s = system().await;
    a_wide_rate_limit_pauses(
        &s,
        80007,
        |c| c.waba_id = Some("waba-1".into()),
        |c| c.waba_id = Some("waba-2".into()),
    )
    .await;
}

#[tokio::test]
async fn the_apps_rate_limit_pauses_every_number_of_the_app() {
    let s = system().await;
    // Same app: signed by the same app secret (here the second one of a rotation); another app
    // has its own secret. All three share one business account, which must not matter.
    a_wide_rate_limit_pauses(
        &s,
        4,
        |c| {
            c.app_secrets = Some(vec![
                wafleet::config::Secret::new("the-apps-next-secret".into()),
                wafleet::config::Secret::new(APP_SECRET.into()),
            ]);
            c.waba_id = Some("waba-1".into());
        },
        |c| {
            c.app_secrets = Some(vec![wafleet::config::Secret::new(
                "another-apps-secret".into(),
            )]);
            c.waba_id = Some("waba-1".into());
        },
    )
    .await;
}

#[tokio::test]
async fn an_expired_token_pauses_the_channel_and_raises_an_alert() {
    let s = system().await;
    s.sim.state.add_fault(fault(
        serde_json::json!({"code": 190, "http_status": 401, "count": 1}),
    ));
    s.send("573006", "wamid.X1", "hola").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM channels WHERE sends_paused_until > now()",
        1,
        30,
    )
    .await;
    // The alert is counted right after the pause commits: wait for it, not just the pause.
    eventually(
        "the configuration alert",
        Duration::from_secs(10),
        || async {
            let alerts = metric_value(
                &wafleet::telemetry::metrics_handle().render(),
                r#"wafleet_sender_alerts_total{kind="config"}"#,
            );
            (alerts >= 1.0).then_some(())
        },
    )
    .await;
    let (reason,): (Option<String>,) = sqlx::query_as("SELECT sends_paused_reason FROM channels")
        .fetch_one(&s.pg)
        .await
        .unwrap();
    assert!(reason.unwrap().contains("190"));
    assert_eq!(
        s.count("SELECT count(*) FROM outbound_messages WHERE state = 'pending'")
            .await,
        1,
        "kept for after the fix"
    );
    // Its retry age starts again with the pause, so an outage longer than the age bound does
    // not leave it too old to send once fixed.
    assert_eq!(
        s.count(
            "SELECT count(*) FROM outbound_messages o JOIN channels c ON c.id = o.channel_id
              WHERE o.retries_since >= c.sends_paused_until - interval '11 minutes'"
        )
        .await,
        1
    );
    assert!(s.sim.state.messages().is_empty());
}

/// Meta's own words stay out of the reasons a refused send leaves behind: the pause reason (logged
/// with the alert, kept on the channel) and a given-up job's reason (logged, kept in its dead
/// letter). Meta's `error.message` can quote what the request carried, as its 190 "Malformed
/// access token <the token>" does; a worker logged the whole token at `error`.
#[tokio::test]
async fn a_refused_sends_logged_reasons_never_quote_metas_message() {
    const TOKEN: &str = "EAAGm0PX4ZCpsBAKeptSecret123";
    let s = system_retrying(1).await;
    s.sim.state.add_fault(fault(serde_json::json!({
        "code": 190, "http_status": 401, "count": 1,
        "message": format!("Malformed access token {TOKEN} for +57 301 600 0042"),
    })));
    s.send("573016000042", "wamid.MT1", "hola").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM channels WHERE sends_paused_until > now()",
        1,
        30,
    )
    .await;
    let (reason,): (String,) = sqlx::query_as("SELECT sends_paused_reason FROM channels")
        .fetch_one(&s.pg)
        .await
        .unwrap();
    assert!(reason.contains("190"), "{reason}");
    for quoted in [TOKEN, "301 600 0042", "Malformed"] {
        assert!(!reason.contains(quoted), "{reason}");
    }

    // A transient error given up on: the job's dead letter says which code, not Meta's text.
    sqlx::query(
        "UPDATE channels
            SET sends_paused_until = NULL, sends_paused_code = NULL, sends_paused_reason = NULL",
    )
    .execute(&s.pg)
    .await
    .unwrap();
    s.sim.state.add_fault(fault(serde_json::json!({
        "code": 131000, "http_status": 500, "count": 1,
        "message": format!("Something went wrong with {TOKEN} to +57 301 600 0043"),
    })));
    s.send("573016000043", "wamid.MT2", "hola").await;
    let letters = s.sender_dead_letters().await;
    let reason = letters[0].text("reason");
    assert!(reason.contains("131000"), "{reason}");
    for quoted in [TOKEN, "301 600 0043", "went wrong"] {
        assert!(!reason.contains(quoted), "{reason}");
    }
}

#[tokio::test]
async fn clearing_a_pause_resumes_the_held_sends_before_the_pause_would_end() {
    // A 10-minute pause, looked at again every 300 ms.
    let s = system_with_settings(|w| w.send.paused_recheck = Duration::from_millis(300)).await;
    s.sim.state.add_fault(fault(
        serde_json::json!({"code": 190, "http_status": 401, "count": 1}),
    ));
    s.send("573014", "wamid.P1", "hola").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM channels WHERE sends_paused_until > now() + interval '5 minutes'",
        1,
        30,
    )
    .await;
    // The operator fixes the token at Meta and resumes the channel (`wafleetctl channel resume`).
    let resumed = wafleet::store::channels::resume(&s.pg, PNID).await.unwrap();
    let wafleet::store::channels::Resumed::Lifted(pause) = resumed else {
        panic!("not lifted: {resumed:?}");
    };
    assert_eq!(pause.code, Some(190));
    let sent = s.sent(1).await;
    assert_eq!(sent[0].context_message_id.as_deref(), Some("wamid.P1"));
    s.settled().await;
    assert_eq!(s.sim.state.messages().len(), 1, "sent once");
    assert_eq!(
        wafleet::store::channels::resume(&s.pg, PNID).await.unwrap(),
        wafleet::store::channels::Resumed::NotPaused
    );
}

/// Waits until the channel's sends are paused for Meta's `code`.
async fn paused_for(s: &Sys, code: i32) {
    wait_count(
        &s.pg,
        &format!(
            "SELECT count(*) FROM channels WHERE sends_paused_until > now() + interval '5 minutes'
                AND sends_paused_code = {code}"
        ),
        1,
        30,
    )
    .await;
}

/// Saves the test channel with `token` as its access token, as `wafleetctl channel add
/// --access-token` and the API's `PUT` do.
async fn new_token(s: &Sys, token: &str) -> wafleet::store::channels::Saved {
    let spec = wafleet::store::channels::ChannelSpec {
        phone_number_id: PNID.into(),
        access_token: Some(wafleet::config::Secret::new(token.into())),
        ..Default::default()
    };
    wafleet::store::channels::upsert(&s.pg, &s.cfg.cipher(), &spec)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_new_access_token_lifts_an_expired_token_pause_and_the_held_part_goes_once() {
    let s = system_with_settings(|w| w.send.paused_recheck = Duration::from_millis(300)).await;
    // The token the channel holds is one Meta no longer takes: it answers 190.
    new_token(&s, "EAAG-expired").await;
    s.send("573015", "wamid.NT1", "hola").await;
    paused_for(&s, 190).await;
    sender_decided(&s, 0).await;
    assert!(s.sim.state.messages().is_empty());
    let saved = new_token(&s, TOKEN).await;
    let (pause, lifted) = saved.pause.expect("it was paused");
    assert!(lifted, "{pause:?}");
    assert_eq!(pause.code, Some(190));
    let sent = s.sent(1).await;
    assert_eq!(sent[0].context_message_id.as_deref(), Some("wamid.NT1"));
    s.settled().await;
    assert_eq!(s.sim.state.messages().len(), 1, "sent once");
    assert_eq!(
        s.count("SELECT count(*) FROM channels WHERE sends_paused_until IS NOT NULL")
            .await,
        0
    );
}

#[tokio::test]
async fn a_new_access_token_leaves_a_pause_for_a_locked_account() {
    let s = system_with_settings(|w| w.send.paused_recheck = Duration::from_millis(300)).await;
    s.sim.state.add_fault(fault(
        serde_json::json!({"code": 131031, "http_status": 403, "count": 1}),
    ));
    s.send("573016", "wamid.NT2", "hola").await;
    paused_for(&s, 131031).await;
    let saved = new_token(&s, TOKEN).await;
    let (pause, lifted) = saved.pause.expect("it was paused");
    assert!(!lifted, "{pause:?}");
    assert_eq!(pause.meaning, "the business account is locked");
    assert_eq!(
        s.count(
            "SELECT count(*) FROM channels WHERE sends_paused_until > now() + interval '5 minutes'"
        )
        .await,
        1,
        "still paused"
    );
    sender_decided(&s, 0).await;
    assert!(s.sim.state.messages().is_empty(), "held while paused");
}

#[tokio::test]
async fn a_long_markdown_reply_arrives_in_ordered_parts_within_the_limit() {
    // A model that writes a long Markdown answer.
    let long = (1..=40)
        .map(|i| {
            format!(
                "## Sección {i}\n\n**Importante:** {}\n\n- punto uno\n- punto dos\n",
                "texto de ejemplo con acentos y más ".repeat(8)
            )
        })
        .collect::<String>();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let long = long.clone();
            async move {
                axum::Json(serde_json::json!({"id": "x", "object": "chat.completion", "model": "long",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": long}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 3000}}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let model_url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let s = system_with(
        SimConfig::default(),
        move |s| {
            vec![wafleet::llm::ProviderConfig {
                base_url: model_url,
                ..s.standin()
            }]
        },
        &["conversation", "status", "llm", "sender"],
    )
    .await;
    s.send("573007", "wamid.L1", "Explícame todo").await;
    let (parts,): (i64,) = eventually("parts stored", Duration::from_secs(30), || {
        let pg = s.pg.clone();
        async move {
            sqlx::query_as("SELECT count(*) FROM outbound_messages")
                .fetch_one(&pg)
                .await
                .ok()
                .filter(|(n,): &(i64,)| *n > 0)
        }
    })
    .await;
    assert!(parts >= 3, "{parts} parts");
    let sent = s.sent(parts as usize).await;
    let stored: Vec<(String,)> =
        sqlx::query_as("SELECT body FROM outbound_messages ORDER BY part_no")
            .fetch_all(&s.pg)
            .await
            .unwrap();
    let bodies: Vec<&str> = sent.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(
        bodies,
        stored.iter().map(|(b,)| b.as_str()).collect::<Vec<_>>(),
        "in order"
    );
    for (i, m) in sent.iter().enumerate() {
        assert!(
            m.body.chars().count() <= 4096,
            "part {i} is {} chars",
            m.body.chars().count()
        );
        assert_eq!(
            m.context_message_id.is_some(),
            i == 0,
            "only the first part quotes"
        );
    }
    assert!(
        sent[0].body.starts_with("*Sección 1*"),
        "headers become bold: {}",
        &sent[0].body[..40]
    );
}

#[tokio::test]
async fn three_sender_processes_under_a_throttling_storm_send_everything_within_the_rate_limit() {
    const RATE: i64 = 10;
    const N: usize = 40;
    let s = system_with(
        SimConfig {
            mps: 50,
            ..Default::default()
        },
        |s| vec![s.standin()],
        &["conversation", "status", "llm"],
    )
    .await;
    sqlx::query("UPDATE channels SET send_rate_per_sec = $1")
        .bind(RATE as i32)
        .execute(&s.pg)
        .await
        .unwrap();
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": 130429, "count": 8})));
    let env = s.cfg.pipeline_env(&s.sim);
    let _senders: Vec<_> = (0..3)
        .map(|_| ChildWorker::spawn_with(BIN, env.clone(), "real", &[("WAFLEET_STAGES", "sender")]))
        .collect();
    for i in 0..N {
        s.send(&format!("5731{i:04}"), &format!("wamid.S{i}"), "hola")
            .await;
    }
    let sent = eventually("every reply sent", Duration::from_secs(60), || async {
        let m = s.sim.state.messages();
        (m.len() >= N).then_some(m)
    })
    .await;
    s.settled().await;
    let sent_after = s.sim.state.messages();
    assert_eq!(sent_after.len(), N, "nothing sent twice");
    let mut recipients: Vec<_> = sent.iter().map(|m| m.recipient.clone()).collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(recipients.len(), N, "every customer answered once");
    // The limit holds fleet-wide: the shared limiter spaces its decisions 1/RATE apart. The sim
    // sees them after a request's latency, which varies (a send decided earlier can arrive later
    // than the next), so over a short window arrivals bunch up by a send or two. Over 3 s that
    // jitter is still a send or two while three unshared limiters would allow 3x: any 3-second
    // window must hold at most 3 * RATE + 2.
    let times: Vec<u64> = sent.iter().map(|m| m.received_at).collect();
    let worst = |window: u64| {
        times
            .iter()
            .map(|t| {
                times
                    .iter()
                    .filter(|u| **u >= *t && **u < t + window)
                    .count()
            })
            .max()
            .unwrap() as i64
    };
    eprintln!(
        "worst windows: {} sends in 1 s, {} in 3 s (limit {RATE}/s)",
        worst(1000),
        worst(3000)
    );
    assert!(
        worst(3000) <= 3 * RATE + 2,
        "{} sends in 3 seconds with a limit of {RATE}/s",
        worst(3000)
    );
}

#[tokio::test]
async fn each_customer_message_is_charged_to_the_numbers_throughput() {
    let s = system_with(
        SimConfig::default(),
        |s| vec![s.standin()],
        &["conversation"],
    )
    .await;
    // One message a second: a customer's message holds the number's budget for a second.
    sqlx::query("UPDATE channels SET send_rate_per_sec = 1")
        .execute(&s.pg)
        .await
        .unwrap();
    let key = wafleet::ratelimit::RateLimitKeys::new(s.cfg.keys().prefix()).number(PNID);
    let con = s.cfg.redis().await;
    let held = || {
        let (mut con, key) = (con.clone(), key.clone());
        async move {
            let ttl: i64 = con.pttl(&key).await.unwrap();
            (ttl > 0).then_some(())
        }
    };
    assert!(held().await.is_none());
    s.send("573020", "wamid.C1", "hola").await;
    eventually("the number's budget charged", Duration::from_secs(10), held).await;
}

#[tokio::test]
async fn a_card_typed_across_two_messages_never_reaches_the_model_whole() {
    let s = system().await;
    s.send("573021", "wamid.SPLIT1", "mi tarjeta es 4111 1111")
        .await;
    s.send("573021", "wamid.SPLIT2", "1111 1111").await;
    // Each message gets its reply; the second's history holds both (with the first reply between).
    s.sent(2).await;
    let bodies: Vec<String> = s
        .sim
        .state
        .llm_requests()
        .iter()
        .map(|r| r.body.to_string())
        .collect();
    assert!(
        bodies.iter().any(|b| b.contains("mi tarjeta es [CARD]")),
        "{bodies:#?}"
    );
    // The first half alone, before the second came, is not a card; never both halves together.
    assert!(
        bodies
            .iter()
            .all(|b| !(b.contains("4111 1111") && b.contains("1111 1111"))),
        "{bodies:#?}"
    );
}

#[tokio::test]
async fn a_131056_slows_only_its_recipient() {
    let s = system().await;
    s.sim.state.add_fault(fault(
        serde_json::json!({"code": 131056, "count": 2, "recipient": "573100"}),
    ));
    s.send("573100", "wamid.P1", "hola").await;
    for i in 0..5 {
        s.send(&format!("57320{i}"), &format!("wamid.O{i}"), "hola")
            .await;
    }
    let sent = s.sent(6).await;
    let slow = sent.iter().position(|m| m.recipient == "573100").unwrap();
    assert_eq!(
        slow,
        5,
        "the throttled recipient waited while the others went: {:?}",
        sent.iter().map(|m| &m.recipient).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_131056_in_a_failed_status_holds_its_recipient_back_like_a_synchronous_one() {
    let s = system().await;
    // Meta accepts the send, then fails it for the pair rate.
    s.sim.state.add_fault(fault(serde_json::json!({
        "code": 131056, "count": 1, "async": true, "recipient": "573019"
    })));
    s.send("573019", "wamid.AP", "hola").await;
    let sent = s.sent(2).await;
    assert!(sent.iter().all(|m| m.recipient == "573019"), "{sent:?}");
    // The resend waited Meta's 4^X s for this recipient: the failure was counted as X.
    let keys = wafleet::ratelimit::RateLimitKeys::new(s.cfg.prefix.clone());
    let mut con = s.cfg.redis().await;
    let strikes: Option<i64> = con.get(keys.strikes(PNID, "573019")).await.unwrap();
    assert_eq!(strikes, Some(1));
}

#[tokio::test]
async fn a_sender_killed_mid_batch_never_sends_a_part_twice() {
    const N: usize = 30;
    let s = system_with(
        SimConfig {
            mps: 0,
            ..Default::default()
        },
        |s| vec![s.standin()],
        &["conversation", "status", "llm"],
    )
    .await;
    let env = s.cfg.pipeline_env(&s.sim);
    let mut a = ChildWorker::spawn_with(BIN, env.clone(), "real", &[("WAFLEET_STAGES", "sender")]);
    for i in 0..N {
        s.send(&format!("5733{i:04}"), &format!("wamid.K{i}"), "hola")
            .await;
    }
    let sim = &s.sim;
    eventually("a first few sends", Duration::from_secs(30), || async {
        (sim.state.messages().len() >= 5).then_some(())
    })
    .await;
    a.kill();
    let _b = ChildWorker::spawn_with(BIN, env, "real", &[("WAFLEET_STAGES", "sender")]);
    eventually("every reply sent", Duration::from_secs(60), || async {
        (sim.state.messages().len() >= N).then_some(())
    })
    .await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'accepted'",
        N as i64,
        30,
    )
    .await;
    s.settled().await;
    let sent = s.sim.state.messages();
    let mut recipients: Vec<_> = sent.iter().map(|m| m.recipient.clone()).collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(
        (sent.len(), recipients.len()),
        (N, N),
        "each part sent exactly once"
    );
}

#[tokio::test]
async fn a_channel_answers_with_its_own_model_chain_and_its_key_is_stored_encrypted() {
    let s = system_with(
        SimConfig::default(),
        |_| vec![],
        &["conversation", "status", "llm", "sender"],
    )
    .await;
    s.add_shop_model().await;
    let (stored,): (Vec<u8>,) = sqlx::query_as("SELECT api_key FROM channel_llm_providers")
        .fetch_one(&s.pg)
        .await
        .unwrap();
    assert!(
        !stored.windows(6).any(|w| w == b"sk-sho"),
        "the key is encrypted at rest"
    );
    s.send("573008", "wamid.M1", "Hola").await;
    s.sent(1).await;
    let (provider, model): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT provider, model FROM replies")
            .fetch_one(&s.pg)
            .await
            .unwrap();
    assert_eq!(provider.as_deref(), Some("shop-model"));
    assert_eq!(s.sim.state.llm_requests()[0].model, "shop-model-1");
    assert!(model.is_some());
}

#[tokio::test]
async fn a_model_key_that_does_not_decrypt_is_skipped_and_the_canned_reply_answers() {
    // The process-wide chain is the stand-in; the channel has a chain of its own.
    let s = system().await;
    s.add_shop_model().await;
    // Renamed by hand: the key was sealed to the old name and no longer opens.
    sqlx::query("UPDATE channel_llm_providers SET name = 'renamed'")
        .execute(&s.pg)
        .await
        .unwrap();
    s.send("573010", "wamid.K1", "Hola").await;
    let sent = s.sent(1).await;
    assert_eq!(sent[0].body, DEFAULT_CANNED_REPLY);
    assert!(
        s.sim.state.llm_requests().is_empty(),
        "neither the unreadable model nor the process-wide one was called"
    );
    let alerts = metric_value(
        &wafleet::telemetry::metrics_handle().render(),
        r#"wafleet_secrets_unreadable_total{channel="106540352242922",secret="llm:renamed"}"#,
    );
    assert!(alerts >= 1.0, "{alerts}");
    assert_eq!(
        s.count("SELECT count(*) FROM replies WHERE canned").await,
        1
    );
}

#[tokio::test]
async fn an_access_token_that_does_not_decrypt_pauses_the_channel_instead_of_dead_lettering() {
    let s = system().await;
    // Sealed for another number: valid ciphertext, but not this channel's.
    let other = s
        .cfg
        .cipher()
        .encrypt("channel:999:access_token", b"token-999");
    sqlx::query("UPDATE channels SET access_token = $1")
        .bind(&other)
        .execute(&s.pg)
        .await
        .unwrap();
    s.send("573011", "wamid.K2", "hola").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM channels WHERE sends_paused_until > now()
           AND sends_paused_reason LIKE '%does not decrypt%'",
        1,
        30,
    )
    .await;
    assert_eq!(
        s.count("SELECT count(*) FROM outbound_messages WHERE state = 'pending'")
            .await,
        1,
        "kept for after the fix"
    );
    let mut con = s.cfg.redis().await;
    let dead: usize = con.xlen(s.cfg.keys().dead("sender")).await.unwrap();
    assert_eq!(dead, 0);
    assert!(s.sim.state.messages().is_empty());
}

#[tokio::test]
async fn a_worker_with_another_encryption_key_refuses_to_start() {
    let cfg = TestConfig::new().await;
    cfg.add_channel(PNID, |_| {}).await;
    let sim = Sim::start(SimConfig::default(), None).await;
    let mut settings = cfg.pipeline_settings(&["sender"], &sim, vec![]);
    settings.common.encryption_key =
        wafleet::config::Secret::new(wafleet::crypto::Cipher::generate_key_text());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let run = wafleet::stages::process::run(settings, listener, std::future::pending());
    let error = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("it stops instead of serving")
        .expect_err("it refuses to start");
    let text = format!("{error:#}");
    assert!(text.contains(&format!("channel {PNID}")), "{text}");
    assert!(text.contains("WAFLEET_ENCRYPTION_KEY"), "{text}");
}

#[tokio::test]
async fn the_model_sees_the_sessions_last_turns_redacted_without_what_a_human_handled() {
    let s = system().await;
    // Before the first message, so the worker reads these settings: sessions end after 10 idle
    // minutes (by message timestamps), the model sees at most 5 turns, and five replies to one
    // customer are not held back by the pair rate.
    sqlx::query(
        "UPDATE channels SET session_timeout_secs = 600, history_limit = 5, pair_burst = 10",
    )
    .execute(&s.pg)
    .await
    .unwrap();
    let t = now();
    let send_at = |wamid: &'static str, at: i64, text: &'static str| {
        let body = text_message(PNID, "573010", wamid, at, text);
        let ingest = &s.ingest;
        async move { assert_eq!(ingest.post_signed(&body, APP_SECRET).await.status(), 200) }
    };
    // An earlier session.
    send_at("wamid.E", t - 3600, "Quiero cambiar un pedido viejo").await;
    s.sent(1).await;
    // The current one: a message with an email, then a stretch a human handled.
    send_at(
        "wamid.A",
        t - 60,
        "Hola, mi correo es ana.perez@example.com",
    )
    .await;
    s.sent(2).await;
    let (conversation,): (i64,) = sqlx::query_as("SELECT id FROM conversations")
        .fetch_one(&s.pg)
        .await
        .unwrap();
    let mut tx = s.pg.begin().await.unwrap();
    wafleet::store::conversations::hand_over(&mut tx, conversation, "agent", None, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    send_at("wamid.H", t - 50, "¿Me atiende una persona ya?").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM messages WHERE wamid = 'wamid.H'",
        1,
        30,
    )
    .await;
    assert!(
        wafleet::store::conversations::release(&s.pg, conversation)
            .await
            .unwrap()
    );
    send_at("wamid.B", t - 40, "¿Cuánto tarda el envío?").await;
    s.sent(3).await;
    send_at("wamid.C", t - 30, "Gracias, ¿y a Medellín?").await;
    s.sent(4).await;
    send_at("wamid.D", t - 20, "Perfecto, lo espero").await;
    let sent = s.sent(5).await;
    s.settled().await;

    let turns = |n: usize| s.model_turns(n);
    let user = |t: &str| ("user".to_string(), t.to_string());
    let bot = |i: usize| ("assistant".to_string(), sent[i].body.clone());
    assert_eq!(
        s.sim.state.llm_requests().len(),
        5,
        "one call per answered message"
    );
    assert_eq!(turns(0), vec![user("Quiero cambiar un pedido viejo")]);
    assert_eq!(
        turns(1),
        vec![user("Hola, mi correo es [EMAIL]")],
        "a new session starts empty; the email never reaches the model"
    );
    // The human's stretch is left out; the bot's own replies are in.
    assert_eq!(
        turns(3),
        vec![
            user("Hola, mi correo es [EMAIL]"),
            bot(1),
            user("¿Cuánto tarda el envío?"),
            bot(2),
            user("Gracias, ¿y a Medellín?"),
        ]
    );
    // At most the last five turns.
    assert_eq!(
        turns(4),
        vec![
            user("¿Cuánto tarda el envío?"),
            bot(2),
            user("Gracias, ¿y a Medellín?"),
            bot(3),
            user("Perfecto, lo espero"),
        ]
    );
}

impl Sys {
    /// An agent takes the conversation; whether it changed.
    async fn take(&self, id: i64) -> bool {
        wafleet::agents::take(&self.pg, &mut self.cfg.redis().await, &self.cfg.keys(), id)
            .await
            .unwrap()
    }

    /// The owner of the (only) conversation.
    async fn owner(&self) -> String {
        let (o,): (String,) = sqlx::query_as("SELECT owner FROM conversations")
            .fetch_one(&self.pg)
            .await
            .unwrap();
        o
    }
}

/// The (only) conversation's id.
async fn the_conversation(pg: &PgPool) -> i64 {
    let (id,): (i64,) = sqlx::query_as("SELECT id FROM conversations")
        .fetch_one(pg)
        .await
        .unwrap();
    id
}

impl Sys {
    async fn agent_reply(
        &self,
        conversation_id: i64,
        text: &str,
        reference: &str,
    ) -> Result<wafleet::agents::Queued, wafleet::agents::AgentError> {
        wafleet::agents::reply(
            &self.pg,
            &mut self.cfg.redis().await,
            &self.cfg.keys(),
            &wafleet::agents::Reply {
                conversation_id,
                text,
                reference,
                agent: Some("ana"),
            },
        )
        .await
    }

    /// The owner-change events dashboards received: (kind, reason).
    async fn owner_events(&self) -> Vec<(String, String)> {
        let mut con = self.cfg.redis().await;
        read_stream(&mut con, &self.cfg.keys().handover_stream())
            .await
            .into_iter()
            .map(|(_, f)| {
                let e: serde_json::Value = serde_json::from_slice(&f["event"]).unwrap();
                (
                    e["kind"].as_str().unwrap().to_string(),
                    e["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

#[tokio::test]
async fn an_agent_takes_a_conversation_writes_to_the_customer_once_and_gives_it_back() {
    let s = system().await;
    sqlx::query("UPDATE channels SET pair_burst = 10")
        .execute(&s.pg)
        .await
        .unwrap();
    s.send("573010", "wamid.A1", "hola, ¿tienen envíos?").await;
    s.sent(1).await;
    let id = the_conversation(&s.pg).await;
    let (pg, mut con, keys) = (&s.pg, s.cfg.redis().await, s.cfg.keys());

    assert!(
        wafleet::agents::take(pg, &mut con, &keys, id)
            .await
            .unwrap()
    );
    assert!(
        !wafleet::agents::take(pg, &mut con, &keys, id)
            .await
            .unwrap(),
        "a second take changes nothing"
    );
    assert_eq!(
        s.owner_events().await,
        vec![("handover".to_string(), "agent".to_string())],
        "dashboards learn of the take once"
    );

    // The customer writes while the agent has the conversation: the bot stays silent.
    s.send("573010", "wamid.A2", "¿me llaman, por favor?").await;
    wait_count(pg, "SELECT count(*) FROM messages", 2, 30).await;
    s.settled().await;
    assert_eq!(s.sim.state.messages().len(), 1, "no bot reply");
    assert_eq!(s.sim.state.llm_requests().len(), 1, "no model call");
    // The agents' dashboard learns of the message.
    assert_eq!(
        s.owner_events().await,
        vec![
            ("handover".to_string(), "agent".to_string()),
            ("message".to_string(), "customer".to_string())
        ]
    );

    // The agent answers; the same request again (a retry) sends nothing more.
    let text = "Hola, soy Ana. Te llamo en 5 minutos.";
    let first = s.agent_reply(id, text, "ref-1").await.unwrap();
    assert!(first.fresh);
    assert_eq!(first.part_ids.len(), 1);
    let sent = s.sent(2).await;
    assert_eq!(sent[1].body, text, "sent as written");
    assert_eq!(sent[1].recipient, "573010");
    assert_eq!(
        sent[1].context_message_id, None,
        "an agent's message quotes nothing"
    );
    let again = s.agent_reply(id, text, "ref-1").await.unwrap();
    assert_eq!(again.part_ids, first.part_ids);
    assert!(!again.fresh);
    assert!(matches!(
        s.agent_reply(id, "otra cosa", "ref-1").await,
        Err(wafleet::agents::AgentError::ReferenceTaken { .. })
    ));
    s.settled().await;
    assert_eq!(s.sim.state.messages().len(), 2, "one message per reference");
    wait_count(
        pg,
        "SELECT count(*) FROM outbound_messages WHERE kind = 'agent' AND state = 'accepted'
            AND agent = 'ana'",
        1,
        30,
    )
    .await;

    // Given back: the bot answers the next message, and the model sees neither the message the
    // agent handled nor the agent's answer.
    assert!(
        wafleet::agents::release(pg, &mut con, &keys, id)
            .await
            .unwrap()
    );
    s.send("573010", "wamid.A3", "gracias").await;
    s.sent(3).await;
    let turns = s.model_turns(1);
    assert_eq!(turns.last().unwrap().1, "gracias");
    assert!(
        turns
            .iter()
            .all(|(_, t)| !t.contains("llaman") && !t.contains("Ana")),
        "{turns:?}"
    );
    assert_eq!(
        s.owner_events().await,
        vec![
            ("handover".to_string(), "agent".to_string()),
            ("message".to_string(), "customer".to_string()),
            ("release".to_string(), "agent".to_string())
        ],
        "the message the bot answers after the release is no event"
    );

    // The transcript holds both sides in order.
    let lines = wafleet::store::agents::transcript(pg, id, 10)
        .await
        .unwrap()
        .unwrap();
    let sides: Vec<&str> = lines.iter().map(|l| l.side.as_str()).collect();
    assert_eq!(
        sides,
        ["customer", "bot", "customer", "agent", "customer", "bot"]
    );
    assert_eq!(lines[3].text.as_deref(), Some(text));
    assert_eq!(lines[3].agent.as_deref(), Some("ana"));
}

#[tokio::test]
async fn an_agent_cannot_write_into_a_bot_conversation_nor_outside_the_window_and_long_text_is_split()
 {
    use wafleet::agents::AgentError;
    let s = system().await;
    sqlx::query("UPDATE channels SET pair_burst = 10")
        .execute(&s.pg)
        .await
        .unwrap();
    s.send("573011", "wamid.B1", "hola").await;
    s.sent(1).await;
    let id = the_conversation(&s.pg).await;
    assert!(matches!(
        s.agent_reply(id, "hola", "r").await,
        Err(AgentError::WithTheBot(i)) if i == id
    ));
    assert!(matches!(
        s.agent_reply(id + 1000, "hola", "r").await,
        Err(AgentError::NoConversation(_))
    ));
    let (pg, mut con, keys) = (&s.pg, s.cfg.redis().await, s.cfg.keys());
    assert!(
        wafleet::agents::take(pg, &mut con, &keys, id)
            .await
            .unwrap()
    );
    assert!(matches!(
        s.agent_reply(id, "  \n ", "r").await,
        Err(AgentError::Empty)
    ));
    sqlx::query("UPDATE conversations SET last_customer_message_at = now() - interval '25 hours'")
        .execute(pg)
        .await
        .unwrap();
    assert!(matches!(
        s.agent_reply(id, "hola", "r").await,
        Err(AgentError::WindowClosed { .. })
    ));
    assert_eq!(
        s.count("SELECT count(*) FROM outbound_messages WHERE kind = 'agent'")
            .await,
        0,
        "nothing recorded for a refused message"
    );

    // Inside the window, a long message goes out in parts, in order.
    sqlx::query("UPDATE conversations SET last_customer_message_at = now()")
        .execute(pg)
        .await
        .unwrap();
    // Three paragraphs of ~1,700 characters: two fit in a part, the third goes in the next.
    let paragraph = "Revisé tu pedido y el envío sale mañana por la mañana. ".repeat(30);
    let long = [paragraph.trim_end(); 3].join("\n\n");
    assert!(long.chars().count() > 4096);
    let queued = s.agent_reply(id, &long, "long").await.unwrap();
    assert_eq!(queued.part_ids.len(), 2);
    let sent = s.sent(3).await;
    let parts: Vec<&str> = sent[1..].iter().map(|m| m.body.as_str()).collect();
    assert!(parts.iter().all(|p| p.chars().count() <= 4096));
    assert_eq!(parts.join("\n\n"), long);
}

/// Ages what happened in every conversation by two days: the customer's last message, the
/// handover and the agent's last action.
async fn make_idle(pg: &PgPool) {
    sqlx::query(
        "UPDATE conversations SET last_activity_at = now() - interval '2 days',
                                  handed_over_at = now() - interval '2 days',
                                  agent_activity_at = now() - interval '2 days'",
    )
    .execute(pg)
    .await
    .unwrap();
}

async fn release_idle(s: &Sys) -> usize {
    wafleet::agents::release_idle(&s.pg, &mut s.cfg.redis().await, &s.cfg.keys())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_conversation_idle_with_a_human_goes_back_to_the_bot_unless_the_channel_keeps_it() {
    let s = system().await;
    sqlx::query("UPDATE channels SET pair_burst = 10")
        .execute(&s.pg)
        .await
        .unwrap();
    s.send("573012", "wamid.I1", "hola").await;
    s.sent(1).await;
    let id = the_conversation(&s.pg).await;
    let pg = &s.pg;
    let make_idle = || make_idle(pg);

    s.take(id).await;
    assert_eq!(release_idle(&s).await, 0, "just taken: not idle");
    make_idle().await;
    assert_eq!(release_idle(&s).await, 1);
    assert_eq!(s.owner().await, "bot");
    assert_eq!(release_idle(&s).await, 0, "released once");
    assert_eq!(
        s.count("SELECT count(*) FROM handover_events WHERE kind = 'release' AND reason = 'idle'")
            .await,
        1
    );
    assert_eq!(
        s.owner_events().await.last().unwrap(),
        &("release".to_string(), "idle".to_string())
    );

    // A customer who wrote recently keeps the conversation with the human.
    s.take(id).await;
    make_idle().await;
    sqlx::query("UPDATE conversations SET last_activity_at = now()")
        .execute(pg)
        .await
        .unwrap();
    assert_eq!(release_idle(&s).await, 0);

    // So does an agent who wrote recently, however old the rest is.
    sqlx::query("UPDATE conversations SET last_customer_message_at = now()")
        .execute(pg)
        .await
        .unwrap();
    make_idle().await;
    s.agent_reply(id, "Sigo revisando tu caso.", "busy")
        .await
        .unwrap();
    assert_eq!(release_idle(&s).await, 0);

    // And an agent who picks up a conversation a human already had.
    make_idle().await;
    assert!(!s.take(id).await, "a human had it already");
    assert_eq!(release_idle(&s).await, 0);

    // A channel that keeps conversations with humans until they are released.
    make_idle().await;
    sqlx::query("UPDATE channels SET human_release_after_secs = NULL")
        .execute(pg)
        .await
        .unwrap();
    assert_eq!(release_idle(&s).await, 0);
    assert_eq!(s.owner().await, "human");

    // Every worker gives idle conversations back by itself, first when it starts.
    sqlx::query("UPDATE channels SET human_release_after_secs = 3600")
        .execute(pg)
        .await
        .unwrap();
    let _second = Worker::start(s.cfg.pipeline_settings(&["status"], &s.sim, vec![])).await;
    wait_count(
        pg,
        "SELECT count(*) FROM conversations WHERE owner = 'bot'",
        1,
        30,
    )
    .await;
    // And the bot answers the customer's next message again.
    let before = s.sim.state.messages().len();
    s.send("573012", "wamid.I2", "¿siguen ahí?").await;
    let sent = s.sent(before + 1).await;
    assert_eq!(sent[before].context_message_id.as_deref(), Some("wamid.I2"));
}

#[tokio::test]
async fn an_idle_release_whose_event_redis_refused_reaches_dashboards_on_a_later_pass_once() {
    use redis::AsyncCommands;
    let s = system().await;
    s.send("573015", "wamid.I5", "hola").await;
    s.sent(1).await;
    let id = the_conversation(&s.pg).await;
    let pg = &s.pg;
    let make_idle = || make_idle(pg);
    let stream = s.cfg.keys().handover_stream();
    // Redis refuses the release's event (here: the stream key is not a stream).
    let refuse = |on: bool| {
        let (stream, cfg) = (stream.clone(), &s.cfg);
        async move {
            let mut con = cfg.redis().await;
            let _: () = con.del(&stream).await.unwrap();
            if on {
                let _: () = con.set(&stream, "not a stream").await.unwrap();
            }
        }
    };
    s.take(id).await;
    make_idle().await;
    refuse(true).await;
    assert_eq!(release_idle(&s).await, 1);
    assert_eq!(s.owner().await, "bot");
    refuse(false).await;
    // The next pass releases nothing new, and tells dashboards of the release.
    assert_eq!(release_idle(&s).await, 0);
    let released = [("release".to_string(), "idle".to_string())];
    assert_eq!(s.owner_events().await, released);
    // A pass that got the event onto the stream but could not record that in Postgres: the
    // next one does not append it a second time.
    sqlx::query("UPDATE handover_events SET announced = FALSE WHERE reason = 'idle'")
        .execute(pg)
        .await
        .unwrap();
    assert_eq!(release_idle(&s).await, 0);
    assert_eq!(s.owner_events().await, released);
    assert_eq!(
        s.count("SELECT count(*) FROM handover_events WHERE NOT announced")
            .await,
        0
    );

    // A release whose event did not go out before an agent took the conversation again is not
    // announced after the take: dashboards would show the bot answering.
    s.take(id).await;
    make_idle().await;
    refuse(true).await;
    assert_eq!(release_idle(&s).await, 1);
    refuse(false).await;
    s.take(id).await;
    assert_eq!(release_idle(&s).await, 0);
    assert_eq!(
        s.owner_events().await,
        [("handover".to_string(), "agent".to_string())]
    );
}

#[tokio::test]
async fn how_long_customers_wait_for_a_human_is_measured_per_channel() {
    let s = system().await;
    s.send("573013", "wamid.W1", "hola").await;
    s.sent(1).await;
    let id = the_conversation(&s.pg).await;
    let pg = &s.pg;
    let waits = || async {
        let w = wafleet::store::agents::human_waits(pg).await.unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].phone_number_id, PNID);
        (w[0].conversations, w[0].oldest_wait_secs)
    };
    assert_eq!(waits().await, (0, 0.0), "nobody waits for a human");

    wafleet::agents::take(pg, &mut s.cfg.redis().await, &s.cfg.keys(), id)
        .await
        .unwrap();
    sqlx::query("UPDATE conversations SET handed_over_at = now() - interval '100 seconds'")
        .execute(pg)
        .await
        .unwrap();
    let (n, wait) = waits().await;
    assert_eq!(n, 1);
    assert!(
        (100.0..160.0).contains(&wait),
        "waiting since the handover: {wait}"
    );

    // The agent answers: nobody waits until the customer writes again.
    s.agent_reply(id, "Hola, te ayudo yo.", "w1").await.unwrap();
    assert_eq!(waits().await, (1, 0.0));
    s.send("573013", "wamid.W2", "gracias, una pregunta más")
        .await;
    wait_count(pg, "SELECT count(*) FROM messages", 2, 30).await;
    for sql in [
        "UPDATE conversations SET handed_over_at = now() - interval '500 seconds'",
        "UPDATE outbound_messages SET created_at = now() - interval '400 seconds' WHERE kind = 'agent'",
        "UPDATE messages SET received_at = now() - interval '300 seconds' WHERE wamid = 'wamid.W2'",
    ] {
        sqlx::query(sql).execute(pg).await.unwrap();
    }
    let (n, wait) = waits().await;
    assert_eq!(n, 1);
    assert!(
        (300.0..360.0).contains(&wait),
        "waiting since the customer's message after the agent's: {wait}"
    );
}

#[tokio::test]
async fn a_customer_on_a_number_whose_bot_is_off_or_in_shadow_waits_for_a_person_until_one_answers()
{
    let s = system().await;
    let pg = &s.pg;
    let run = |sql: &'static str| async move { sqlx::query(sql).execute(pg).await.unwrap() };
    let waits = || async {
        let w = wafleet::store::agents::human_waits(pg).await.unwrap();
        assert_eq!(w.len(), 1);
        (w[0].conversations, w[0].oldest_wait_secs)
    };
    s.send("573016", "wamid.P1", "hola").await;
    s.sent(1).await;
    let id = the_conversation(pg).await;
    assert_eq!(waits().await, (0, 0.0), "the bot answers on this number");

    // People answer every conversation of the number from now on; the bot answered this one.
    run("UPDATE channels SET bot_mode = 'off'").await;
    assert_eq!(
        waits().await,
        (1, 0.0),
        "the bot's reply answered the customer"
    );
    s.send("573016", "wamid.P2", "¿me atiende alguien?").await;
    wait_count(pg, "SELECT count(*) FROM messages", 2, 30).await;
    // (Each moved back in time, in the order it happened.)
    for sql in [
        "UPDATE messages SET received_at = now() - interval '400 seconds' WHERE wamid = 'wamid.P1'",
        "UPDATE outbound_messages SET created_at = now() - interval '390 seconds'",
        "UPDATE messages SET received_at = now() - interval '200 seconds' WHERE wamid = 'wamid.P2'",
    ] {
        run(sql).await;
    }
    let (n, wait) = waits().await;
    assert_eq!(n, 1);
    assert!((200.0..260.0).contains(&wait), "bot off: {wait}");
    run("UPDATE channels SET bot_mode = 'shadow'").await;
    let (n, wait) = waits().await;
    assert_eq!(n, 1);
    assert!((200.0..260.0).contains(&wait), "shadow: {wait}");
    run("UPDATE channels SET bot_mode = 'on'").await;
    assert_eq!(waits().await, (0, 0.0), "the bot answers again");
    run("UPDATE channels SET bot_mode = 'off'").await;

    // A person takes the conversation and answers; given back, the customer is still answered.
    s.take(id).await;
    s.agent_reply(id, "Sí, dime.", "p1").await.unwrap();
    assert_eq!(waits().await, (1, 0.0));
    wafleet::agents::release(pg, &mut s.cfg.redis().await, &s.cfg.keys(), id)
        .await
        .unwrap();
    assert_eq!(s.owner().await, "bot");
    assert_eq!(waits().await, (1, 0.0), "a person answered the customer");
    s.send("573016", "wamid.P3", "¿y el envío?").await;
    wait_count(pg, "SELECT count(*) FROM messages", 3, 30).await;
    for sql in [
        "UPDATE outbound_messages SET created_at = now() - interval '150 seconds' WHERE kind = 'agent'",
        "UPDATE messages SET received_at = now() - interval '100 seconds' WHERE wamid = 'wamid.P3'",
    ] {
        run(sql).await;
    }
    let (n, wait) = waits().await;
    assert_eq!(n, 1);
    assert!(
        (100.0..160.0).contains(&wait),
        "after the person's answer: {wait}"
    );

    // Counted as long as a conversation a human took would stay with them.
    make_idle(pg).await;
    assert_eq!(
        waits().await,
        (0, 0.0),
        "idle past human_release_after_secs"
    );
    run("UPDATE channels SET human_release_after_secs = NULL").await;
    let (n, wait) = waits().await;
    assert_eq!(n, 1);
    assert!(wait >= 100.0, "kept with people for good: {wait}");
    // An erased customer waits for nobody: nothing can be written to them.
    wafleet::erasure::erase_customer(pg, &mut s.cfg.redis().await, &s.cfg.keys(), PNID, "573016")
        .await
        .unwrap()
        .expect("the customer is known");
    assert_eq!(waits().await, (0, 0.0));
}

#[tokio::test]
async fn a_failed_agent_message_repeated_after_a_release_neither_resends_nor_takes_the_conversation_back()
 {
    let s = system().await;
    sqlx::query("UPDATE channels SET pair_burst = 10")
        .execute(&s.pg)
        .await
        .unwrap();
    s.send("573014", "wamid.F1", "hola").await;
    s.sent(1).await;
    let id = the_conversation(&s.pg).await;
    let (pg, mut con, keys) = (&s.pg, s.cfg.redis().await, s.cfg.keys());
    s.take(id).await;
    // Meta refuses the agent's message: the customer's window is closed by Meta's count.
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": 131047, "count": 1})));
    // A three-part message, so the transcript shows its parts in order too.
    let paragraph =
        |n: usize| format!("Parte {n}. ") + &"Revisamos tu pedido con cuidado. ".repeat(100);
    let text = [paragraph(1), paragraph(2), paragraph(3)]
        .map(|p| p.trim_end().to_string())
        .join("\n\n");
    let first = s.agent_reply(id, &text, "late").await.unwrap();
    assert_eq!(first.part_ids.len(), 3);
    wait_count(
        pg,
        "SELECT count(*) FROM outbound_messages WHERE kind = 'agent' AND state = 'failed'",
        3,
        30,
    )
    .await;
    s.settled().await;
    assert!(
        wafleet::agents::release(pg, &mut con, &keys, id)
            .await
            .unwrap()
    );

    // The agent repeats the request: nothing is queued, sent, or taken back from the bot.
    let again = s.agent_reply(id, &text, "late").await.unwrap();
    assert!(!again.fresh && !again.queued);
    assert_eq!(again.states, ["failed", "failed", "failed"]);
    s.settled().await;
    assert_eq!(
        s.sim.state.messages().len(),
        1,
        "only the bot's first reply went out"
    );
    assert_eq!(s.owner().await, "bot");

    // A send job for those parts run again (a redelivery) takes nothing back either.
    let conv = format!("{PNID}:573014");
    let list = first
        .part_ids
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let _: String = con
        .xadd(
            keys.outbox(keys.partition_of(&conv)),
            "*",
            &[("conv", conv.as_str()), ("outbound_id", list.as_str())],
        )
        .await
        .unwrap();
    s.settled().await;
    assert_eq!(s.owner().await, "bot");

    let lines = wafleet::store::agents::transcript(pg, id, 10)
        .await
        .unwrap()
        .unwrap();
    let agent: Vec<&str> = lines
        .iter()
        .filter(|l| l.side == "agent")
        .map(|l| &l.text.as_deref().unwrap()[..7])
        .collect();
    assert_eq!(agent, ["Parte 1", "Parte 2", "Parte 3"]);
}

#[tokio::test]
async fn an_agent_re_engages_a_customer_outside_the_window_with_a_template_and_meta_refusals_are_not_retried()
 {
    use wafleet::agents::{AgentError, Template};
    let s = system().await;
    sqlx::query("UPDATE channels SET pair_burst = 10")
        .execute(&s.pg)
        .await
        .unwrap();
    s.send("573015", "wamid.T1", "hola").await;
    s.sent(1).await;
    let id = the_conversation(&s.pg).await;
    let (pg, mut con, keys) = (&s.pg, s.cfg.redis().await, s.cfg.keys());
    let params = vec!["Camila".to_string(), "100234".to_string()].into();
    let template = |reference: &'static str| Template {
        conversation_id: id,
        name: "order_update",
        language: "es",
        body_params: &params,
        header: None,
        buttons: &[],
        definition: None,
        reference,
        agent: Some("ana"),
    };
    assert!(matches!(
        wafleet::agents::template(pg, &mut con, &keys, &template("t0")).await,
        Err(AgentError::WithTheBot(_))
    ));
    s.take(id).await;
    sqlx::query("UPDATE conversations SET last_customer_message_at = now() - interval '3 days'")
        .execute(pg)
        .await
        .unwrap();
    assert!(matches!(
        s.agent_reply(id, "¿Sigues ahí?", "text").await,
        Err(AgentError::WindowClosed { .. })
    ));

    let queued = wafleet::agents::template(pg, &mut con, &keys, &template("t1"))
        .await
        .unwrap();
    assert!(queued.fresh);
    let sent = s.sent(2).await;
    assert_eq!(sent[1].kind, "template");
    assert_eq!(sent[1].context_message_id, None);
    assert_eq!(
        sent[1].template,
        Some(serde_json::json!({
            "name": "order_update",
            "language": {"code": "es"},
            "components": [{"type": "body", "parameters": [
                {"type": "text", "text": "Camila"}, {"type": "text", "text": "100234"}
            ]}]
        }))
    );
    wait_count(
        pg,
        "SELECT count(*) FROM outbound_messages WHERE kind = 'template' AND state = 'accepted'",
        1,
        30,
    )
    .await;
    // The same request again: nothing recorded, queued or sent.
    let again = wafleet::agents::template(pg, &mut con, &keys, &template("t1"))
        .await
        .unwrap();
    assert_eq!(
        (again.part_ids, again.states, again.fresh, again.queued),
        (
            queued.part_ids.clone(),
            vec!["accepted".to_string()],
            false,
            false
        )
    );

    // A template Meta does not know fails at once with Meta's code, and nothing is retried.
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": 132001, "count": 1})));
    wafleet::agents::template(pg, &mut con, &keys, &template("t2"))
        .await
        .unwrap();
    wait_count(
        pg,
        "SELECT count(*) FROM outbound_messages WHERE kind = 'template' AND state = 'failed'
            AND error_code = 132001",
        1,
        30,
    )
    .await;
    s.settled().await;
    assert_eq!(s.sim.state.messages().len(), 2);
    assert_eq!(s.owner().await, "human");
}

#[tokio::test]
async fn erasing_a_customer_removes_their_texts_identifiers_and_kept_aside_entries_and_nobody_elses()
 {
    let s = system().await;
    sqlx::query("UPDATE channels SET pair_burst = 10")
        .execute(&s.pg)
        .await
        .unwrap();
    s.send(
        "573016",
        "wamid.E1",
        "Hola, soy Camila Rojas, vivo en la Calle 5",
    )
    .await;
    s.send("573017", "wamid.E2", "hola, ¿abren hoy?").await;
    s.sent(2).await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'accepted'",
        2,
        30,
    )
    .await;
    // Customers also wrote to a number nobody added yet: kept aside in quarantine. One of them
    // has a number that contains Camila's.
    const UNKNOWN: &str = "999000111";
    for (from, wamid) in [
        ("573016", "wamid.Q1"),
        ("573017", "wamid.Q2"),
        ("5730160", "wamid.Q3"),
    ] {
        let body = text_message(UNKNOWN, from, wamid, now(), "hola");
        assert_eq!(s.ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    }
    let (pg, mut con, keys) = (&s.pg, s.cfg.redis().await, s.cfg.keys());
    assert_eq!(read_stream(&mut con, &keys.quarantine()).await.len(), 3);
    // A retry of hers is parked for later in the model stage.
    let conv = format!("{PNID}:573016");
    let p = keys.partition_of(&conv);
    let _: () = con
        .rpush(keys.held("llm", p, &conv), "{\"a parked\":\"job\"}")
        .await
        .unwrap();
    let due = chrono::Utc::now().timestamp_millis() + 3_600_000;
    let _: () = con.zadd(keys.delayed("llm", p), &conv, due).await.unwrap();
    // The sender kept each reply's wamid in Redis while Postgres would not record it (set here
    // by hand): Meta's wamids encode the customer's number.
    let mut stashes = Vec::new();
    for customer in ["573016", "573017"] {
        let part: i64 = sqlx::query_scalar(
            "SELECT o.id FROM outbound_messages o JOIN conversations c ON c.id = o.conversation_id
              WHERE c.wa_id = $1",
        )
        .bind(customer)
        .fetch_one(&s.pg)
        .await
        .unwrap();
        let key = keys.unrecorded_wamid(keys.partition_of(&format!("{PNID}:{customer}")), part);
        let _: () = con.set(&key, "wamid.HBgMNTczMDE2 573016").await.unwrap();
        stashes.push(key);
    }

    assert_eq!(
        wafleet::erasure::erase_customer(pg, &mut con, &keys, PNID, "573099")
            .await
            .unwrap(),
        None,
        "no such customer"
    );
    // Her number as an operator may write it.
    let erased = wafleet::erasure::erase_customer(pg, &mut con, &keys, PNID, "+57 30-16")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(erased.rows.conversations.len(), 1);
    assert_eq!((erased.rows.messages, erased.rows.outbound), (1, 1));
    assert_eq!(erased.parked_jobs, 1);
    assert!(
        !con.exists::<_, bool>(keys.held("llm", p, &conv))
            .await
            .unwrap()
    );
    let parked: usize = con.zcard(keys.delayed("llm", p)).await.unwrap();
    assert_eq!(parked, 0);
    let kept: Vec<bool> = {
        let mut kept = Vec::new();
        for key in &stashes {
            kept.push(con.exists(key).await.unwrap());
        }
        kept
    };
    assert_eq!(
        kept,
        [false, true],
        "her kept wamid goes, the other's stays"
    );
    // Quarantined messages to another number are that number's business, not this erasure's.
    assert_eq!(erased.stream_entries_removed(), 0);
    assert_eq!(read_stream(&mut con, &keys.quarantine()).await.len(), 3);
    let id = erased.rows.conversations[0];

    let (key, wa_id, name): (String, Option<String>, Option<String>) =
        sqlx::query_as("SELECT customer_key, wa_id, profile_name FROM conversations WHERE id = $1")
            .bind(id)
            .fetch_one(pg)
            .await
            .unwrap();
    assert_eq!((key, wa_id, name), (format!("erased:{id}"), None, None));
    assert_eq!(
        s.count("SELECT count(*) FROM messages WHERE text_redacted LIKE '%Camila%'")
            .await,
        0
    );
    assert_eq!(
        s.count("SELECT count(*) FROM outbound_messages WHERE body LIKE '%Camila%'")
            .await,
        0,
        "the reply quoted the customer"
    );
    // Meta's wamids encode the customer's number: hashed, still one per message.
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM messages WHERE conversation_id = {id} AND wamid LIKE 'erased:%'"
        ))
        .await,
        1
    );
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM outbound_messages WHERE conversation_id = {id}
                AND wamid LIKE 'erased:%'"
        ))
        .await,
        1
    );
    assert_eq!(
        s.count("SELECT count(*) FROM messages WHERE wamid = 'wamid.E1'")
            .await,
        0
    );
    // The other customer keeps everything.
    assert_eq!(
        s.count(
            "SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id
              WHERE c.wa_id = '573017' AND m.text_redacted = 'hola, ¿abren hoy?'
                AND m.wamid = 'wamid.E2'"
        )
        .await,
        1
    );
    assert_eq!(
        s.count(
            "SELECT count(*) FROM outbound_messages WHERE body <> '' AND wamid NOT LIKE 'erased:%'"
        )
        .await,
        1
    );

    // Erased at the other number too, where she is known only in quarantine; the customer whose
    // number contains hers keeps their entry.
    let there = wafleet::erasure::erase_customer(pg, &mut con, &keys, UNKNOWN, "573016")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            there.rows.conversations.len(),
            there.stream_entries_removed()
        ),
        (0, 1)
    );
    let mut kept: Vec<String> = read_stream(&mut con, &keys.quarantine())
        .await
        .iter()
        .map(|(_, f)| {
            let update: serde_json::Value = serde_json::from_slice(&f["update"]).unwrap();
            update["message"]["wa_id"].as_str().unwrap().to_string()
        })
        .collect();
    kept.sort();
    assert_eq!(kept, ["5730160", "573017"]);
    // Nothing is left to find.
    assert_eq!(
        wafleet::erasure::erase_customer(pg, &mut con, &keys, PNID, "573016")
            .await
            .unwrap(),
        None
    );

    // Writing again starts afresh: a new conversation, and the model sees only the new message;
    // even when a worker cached the erased conversation again just before (a message stored
    // while the erasure ran).
    let _: () = con
        .set(
            keys.session_cache(&format!("{PNID}:573016")),
            serde_json::json!({"conversation_id": id, "session_no": 1}).to_string(),
        )
        .await
        .unwrap();
    s.send("573016", "wamid.E3", "¿tienen envíos?").await;
    s.sent(3).await;
    assert_eq!(
        s.model_turns(2),
        vec![("user".to_string(), "¿tienen envíos?".to_string())]
    );
    assert_eq!(s.count("SELECT count(*) FROM conversations").await, 3);
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM messages WHERE conversation_id = {id}"
        ))
        .await,
        1,
        "nothing new in the erased conversation"
    );
    // Nothing of hers counts as waiting for an answer.
    s.settled().await;
    assert_eq!(
        s.count("SELECT count(*) FROM messages WHERE answered_at IS NULL")
            .await,
        0
    );
}

#[tokio::test]
async fn a_reply_the_model_finishes_after_its_customer_was_erased_is_neither_kept_nor_sent() {
    let s = system_with_sim(SimConfig {
        llm_latency: Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    s.send("573020", "wamid.R1", "Soy Camila, ¿tienen la talla M?")
        .await;
    s.model_asked().await;
    let (pg, mut con, keys) = (&s.pg, s.cfg.redis().await, s.cfg.keys());
    let erased = wafleet::erasure::erase_customer(pg, &mut con, &keys, PNID, "573020")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(erased.rows.conversations.len(), 1);
    // The model's answer arrives afterwards: the reply is counted, nothing is written to her.
    wait_count(pg, "SELECT count(*) FROM replies", 1, 30).await;
    s.settled().await;
    assert_eq!(s.count("SELECT count(*) FROM outbound_messages").await, 0);
    assert!(s.sim.state.messages().is_empty(), "nothing reached her");
}

#[tokio::test]
async fn usage_adds_up_per_channel_and_per_model_within_the_period() {
    use wafleet::store::usage;
    let s = system().await;
    s.cfg.add_channel("200000000000001", |_| {}).await;
    s.send("573018", "wamid.U1", "hola").await;
    s.send("573019", "wamid.U2", "¿abren hoy?").await;
    s.sent(2).await;
    s.send("573018", "wamid.U3", "¿y mañana?").await;
    s.sent(3).await;
    let pg = &s.pg;
    let (id,): (i64,) = sqlx::query_as("SELECT id FROM conversations WHERE wa_id = '573018'")
        .fetch_one(pg)
        .await
        .unwrap();
    s.take(id).await;
    s.agent_reply(id, "Hola, te escribe Ana.", "u")
        .await
        .unwrap();
    wait_count(
        pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'accepted'",
        4,
        30,
    )
    .await;

    let (input, output): (i64, i64) =
        sqlx::query_as("SELECT sum(input_tokens)::int8, sum(output_tokens)::int8 FROM replies")
            .fetch_one(pg)
            .await
            .unwrap();
    assert!(input > 0 && output > 0);
    let now = chrono::Utc::now();
    let hour = chrono::Duration::hours(1);
    let all = usage::by_channel(pg, now - hour, now + hour).await.unwrap();
    assert_eq!(
        all,
        vec![
            usage::ChannelUsage {
                phone_number_id: PNID.into(),
                customer_messages: 3,
                conversations: 2,
                model_replies: 3,
                canned_replies: 0,
                input_tokens: input,
                output_tokens: output,
                sent_by_bot: 3,
                sent_by_agents: 1,
                failed: 0,
                handovers: 1,
            },
            usage::ChannelUsage {
                phone_number_id: "200000000000001".into(),
                customer_messages: 0,
                conversations: 0,
                model_replies: 0,
                canned_replies: 0,
                input_tokens: 0,
                output_tokens: 0,
                sent_by_bot: 0,
                sent_by_agents: 0,
                failed: 0,
                handovers: 0,
            },
        ]
    );
    let models = usage::by_model(pg, now - hour, now + hour).await.unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(
        (
            models[0].replies,
            models[0].input_tokens,
            models[0].output_tokens
        ),
        (3, input, output)
    );
    // Nothing of it falls in yesterday.
    let yesterday = usage::by_channel(pg, now - hour * 48, now - hour * 24)
        .await
        .unwrap();
    assert!(
        yesterday
            .iter()
            .all(|u| u.customer_messages == 0 && u.input_tokens == 0 && u.sent_by_bot == 0)
    );
}

#[tokio::test]
async fn a_channel_setting_changed_by_name_is_what_the_workers_use() {
    use wafleet::store::settings::{self, Setting};
    let s = system().await;
    for (setting, raw) in [
        (Setting::HandoverKeywords, "asesor, persona real"),
        (Setting::HandoverAck, "Te paso con un asesor."),
    ] {
        let change = setting.parse(raw).unwrap();
        assert!(settings::set(&s.pg, PNID, &change).await.unwrap());
    }
    assert!(
        !settings::set(&s.pg, "999", &Setting::PairBurst.parse("5").unwrap())
            .await
            .unwrap(),
        "no such channel"
    );
    let shown = settings::show(&s.pg, PNID).await.unwrap().unwrap();
    assert!(shown.contains(&("handover_keywords", "asesor, persona real".to_string())));
    assert!(shown.contains(&("media_notice", "(none)".to_string())));

    // The channel's own phrase hands over; the built-in ones no longer do.
    s.send("573020", "wamid.S1", "quiero hablar con un agente")
        .await;
    s.sent(1).await;
    assert_eq!(s.sim.state.llm_requests().len(), 1, "a plain message now");
    s.send("573020", "wamid.S2", "mejor con una persona real")
        .await;
    let sent = s.sent(2).await;
    assert_eq!(sent[1].body, "Te paso con un asesor.");
    s.settled().await;
    assert_eq!(
        s.sim.state.llm_requests().len(),
        1,
        "no model call for the handover"
    );
    assert_eq!(s.owner().await, "human");

    // Back to the defaults.
    assert!(
        settings::set(&s.pg, PNID, &Setting::HandoverKeywords.reset())
            .await
            .unwrap()
    );
    let shown = settings::show(&s.pg, PNID).await.unwrap().unwrap();
    assert!(shown.contains(&("handover_keywords", "(default)".to_string())));
}

/// A customer who says they need no adviser gets the bot's answer: the channel's phrase is in the
/// message, but negated. Asked for in the next message, the same phrase hands over.
#[tokio::test]
async fn a_negated_handover_phrase_gets_a_bot_reply_and_no_handover() {
    use wafleet::store::settings::{self, Setting};
    let s = system().await;
    let change = Setting::HandoverKeywords.parse("asesor").unwrap();
    assert!(settings::set(&s.pg, PNID, &change).await.unwrap());

    s.send(
        "573021",
        "wamid.N1",
        "no necesito un asesor, ¿cuánto cuesta?",
    )
    .await;
    let sent = s.sent(1).await;
    assert_ne!(sent[0].body, DEFAULT_HANDOVER_ACK);
    assert_eq!(sent[0].context_message_id.as_deref(), Some("wamid.N1"));
    s.settled().await;
    assert_eq!(s.sim.state.llm_requests().len(), 1, "the model answered");
    assert_eq!(s.owner().await, "bot");
    let (handovers,): (i64,) = sqlx::query_as("SELECT count(*) FROM handover_events")
        .fetch_one(&s.pg)
        .await
        .unwrap();
    assert_eq!(handovers, 0);

    s.send("573021", "wamid.N2", "no me entiendes, quiero un asesor")
        .await;
    let sent = s.sent(2).await;
    assert_eq!(sent[1].body, DEFAULT_HANDOVER_ACK);
    s.settled().await;
    assert_eq!(s.sim.state.llm_requests().len(), 1, "no model call for it");
    assert_eq!(s.owner().await, "human");
}

#[tokio::test]
async fn an_agent_message_that_reaches_the_sender_after_the_window_closed_fails_and_hands_nothing_over()
 {
    // No sender yet: the agent's message waits in the outbox.
    let s = system_with(
        SimConfig::default(),
        |s| vec![s.standin()],
        &["conversation", "status", "llm"],
    )
    .await;
    sqlx::query("UPDATE channels SET bot_mode = 'off'")
        .execute(&s.pg)
        .await
        .unwrap();
    s.send("573021", "wamid.L1", "hola").await;
    wait_count(&s.pg, "SELECT count(*) FROM messages", 1, 30).await;
    let id = the_conversation(&s.pg).await;
    s.take(id).await;
    s.agent_reply(id, "Te escribo mañana.", "late")
        .await
        .unwrap();
    let (pg, mut con, keys) = (&s.pg, s.cfg.redis().await, s.cfg.keys());
    wafleet::agents::release(pg, &mut con, &keys, id)
        .await
        .unwrap();
    sqlx::query("UPDATE conversations SET last_customer_message_at = now() - interval '25 hours'")
        .execute(pg)
        .await
        .unwrap();

    let _sender = Worker::start(s.cfg.pipeline_settings(&["sender"], &s.sim, vec![])).await;
    wait_count(
        pg,
        "SELECT count(*) FROM outbound_messages
          WHERE kind = 'agent' AND state = 'failed' AND fail_reason = 'the 24-hour window is closed'",
        1,
        30,
    )
    .await;
    s.settled().await;
    assert!(s.sim.state.messages().is_empty(), "nothing went out");
    assert_eq!(s.owner().await, "bot", "the release stands");
    assert_eq!(
        s.owner_events()
            .await
            .iter()
            .filter(|(kind, _)| kind == "handover")
            .count(),
        1,
        "only the agent's take"
    );
}

/// Sets the channel's business hours (in UTC) and after-hours acknowledgement by name.
async fn set_hours(pg: &PgPool, schedule: &str, ack: &str) {
    use wafleet::store::settings::{self, Setting};
    for (setting, raw) in [
        (Setting::BusinessHours, schedule),
        (Setting::BusinessHoursTz, "UTC"),
        (Setting::AfterHoursAck, ack),
    ] {
        assert!(
            settings::set(pg, PNID, &setting.parse(raw).unwrap())
                .await
                .unwrap()
        );
    }
}

const AFTER_HOURS: &str = "Nuestro equipo atiende de 9:00 a 10:00; te escribimos apenas volvamos.";

#[tokio::test]
async fn outside_business_hours_a_customer_who_asks_for_a_person_is_told_the_team_is_away() {
    use chrono::Datelike;
    let s = system().await;
    // Open only on a day three days from now: closed now, whatever the hour.
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let open_day = days[(chrono::Utc::now().weekday().num_days_from_monday() as usize + 3) % 7];
    set_hours(&s.pg, &format!("{open_day} 09:00-10:00"), AFTER_HOURS).await;
    // A keyword, and the model asking for a person in its own words: both hand over, and both
    // customers are told the team is away (not that a person is coming now).
    s.send("573040", "wamid.H1", "quiero hablar con un humano")
        .await;
    s.sim
        .state
        .add_llm_fault(model_says("[[HANDOVER]] Te paso con un asesor ya mismo."));
    s.send("573041", "wamid.H2", "Tengo un problema con mi pedido")
        .await;
    let sent = s.sent(2).await;
    assert_eq!(
        sent.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        [AFTER_HOURS, AFTER_HOURS]
    );
    wait_count(
        &s.pg,
        "SELECT count(*) FROM conversations WHERE owner = 'human'",
        2,
        30,
    )
    .await;
}

#[tokio::test]
async fn within_business_hours_the_usual_acknowledgement_is_sent() {
    let s = system().await;
    set_hours(&s.pg, "mon-sun 00:00-24:00", AFTER_HOURS).await;
    s.send("573042", "wamid.H3", "quiero hablar con un humano")
        .await;
    let sent = s.sent(1).await;
    assert_eq!(sent[0].body, DEFAULT_HANDOVER_ACK);
}

#[tokio::test]
async fn the_model_is_given_the_knowledge_base_entries_that_match_the_customers_message() {
    use wafleet::store::knowledge::{self, Put};
    let s = system().await;
    let put = |title: &'static str, body: &'static str, language: &'static str| {
        let pg = s.pg.clone();
        async move {
            knowledge::put(&pg, PNID, title, body, language)
                .await
                .unwrap()
        }
    };
    let shipping = "Hacemos envíos a toda Colombia en 2 a 4 días hábiles; a Medellín y Bogotá \
                    llegan al día siguiente.";
    assert_eq!(
        put("Envíos y entregas", shipping, "spanish").await,
        Put::Added
    );
    assert_eq!(
        put(
            "Horario de la tienda",
            "Abrimos de lunes a sábado de 9:00 a 19:00.",
            "spanish"
        )
        .await,
        Put::Added
    );
    assert_eq!(
        put("Devoluciones", "Hasta 15 días.", "spanish").await,
        Put::Added
    );
    assert_eq!(
        put(
            "Devoluciones",
            "Aceptamos devoluciones hasta 30 días después de la compra.",
            "spanish"
        )
        .await,
        Put::Replaced
    );
    assert_eq!(
        put("Pagos", "Tarjeta o PSE.", "klingon").await,
        Put::UnknownLanguage
    );
    assert_eq!(
        knowledge::put(&s.pg, "999", "Pagos", "Tarjeta o PSE.", "spanish")
            .await
            .unwrap(),
        Put::NoChannel
    );
    let system_of = |n: usize| {
        s.sim.state.llm_requests()[n].body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Singular for plural, without the accents: stemmed in the entry's language.
    s.send("573050", "wamid.K1", "¿Hacen envio a Medellin?")
        .await;
    s.sent(1).await;
    let system = system_of(0);
    assert!(
        system.contains(&format!("### Envíos y entregas\n{shipping}")),
        "{system}"
    );
    assert!(!system.contains("Horario de la tienda"), "{system}");
    assert!(!system.contains("Devoluciones"), "{system}");

    s.send("573051", "wamid.K2", "¿puedo hacer devoluciones?")
        .await;
    s.sent(2).await;
    let system = system_of(1);
    assert!(
        system.contains("hasta 30 días"),
        "the replaced text: {system}"
    );
    assert!(!system.contains("Hasta 15 días"), "{system}");

    s.send("573052", "wamid.K3", "hola").await;
    s.sent(3).await;
    assert!(
        !system_of(2).contains("Reference information"),
        "nothing matches"
    );
    assert!(
        knowledge::remove(&s.pg, PNID, "Devoluciones")
            .await
            .unwrap()
    );
    assert_eq!(
        knowledge::list(&s.pg, PNID)
            .await
            .unwrap()
            .iter()
            .map(|e| e.title.as_str())
            .collect::<Vec<_>>(),
        ["Envíos y entregas", "Horario de la tienda"]
    );
}

#[tokio::test]
async fn erasure_removes_the_senders_dead_letters_naming_the_customer() {
    // A reply that ran out of retries: the runtime dead-letters its outbox job, whose `conv`
    // field is `<number>:<customer's phone>` (outbox jobs carry no `channel` field).
    let s = system_retrying(2).await;
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": 131000, "count": 2})));
    s.send("573011", "wamid.R1", "hola").await;
    s.one_sender_dead_letter().await;
    let (pg, mut con, keys) = (&s.pg, s.cfg.redis().await, s.cfg.keys());
    let before = read_stream(&mut con, &keys.dead("sender")).await;
    assert_eq!(
        before[0].1["conv"].as_slice(),
        format!("{PNID}:573011").as_bytes(),
        "the dead letter names the customer's phone"
    );
    let erased = wafleet::erasure::erase_customer(pg, &mut con, &keys, PNID, "573011")
        .await
        .unwrap()
        .unwrap();
    let left = read_stream(&mut con, &keys.dead("sender")).await;
    assert!(
        left.is_empty(),
        "the sender's dead letter still names the erased customer's phone: {:?} (erasure reported {:?})",
        left.iter()
            .map(|(_, f)| String::from_utf8_lossy(&f["conv"]).to_string())
            .collect::<Vec<_>>(),
        erased.stream_entries
    );
}

/// Sends a message from `customer`, whose reply meets `fault_spec` at the Graph API, and erases
/// the customer while the reply is on its way to Meta. Returns the erased conversation's id.
async fn erase_while_sending(s: &Sys, fault_spec: serde_json::Value, customer: &str) -> i64 {
    s.sim.state.add_fault(fault(fault_spec));
    s.send(customer, "wamid.S1", "hola, soy Camila").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'sending'",
        1,
        30,
    )
    .await;
    let (mut con, keys) = (s.cfg.redis().await, s.cfg.keys());
    let erased = wafleet::erasure::erase_customer(&s.pg, &mut con, &keys, PNID, customer)
        .await
        .unwrap()
        .unwrap();
    erased.rows.conversations[0]
}

#[tokio::test]
async fn a_send_in_flight_during_an_erasure_does_not_bring_back_the_customers_wamid() {
    let s = system().await;
    // Meta takes 1.2 s to answer the next send (the test Graph timeout is 2 s).
    let id = erase_while_sending(
        &s,
        serde_json::json!({"delay_ms": 1200, "count": 1}),
        "573050",
    )
    .await;
    let pg = &s.pg;
    s.sent(1).await;
    s.settled().await;
    let (wamid, state): (Option<String>, String) =
        sqlx::query_as("SELECT wamid, state FROM outbound_messages WHERE conversation_id = $1")
            .bind(id)
            .fetch_one(pg)
            .await
            .unwrap();
    assert!(
        wamid.as_deref().is_none_or(|w| w.starts_with("erased:")),
        "Meta's raw wamid is back on the erased customer's row after the erasure: {wamid:?} ({state})"
    );
}

#[tokio::test]
async fn a_part_retried_after_its_customer_was_erased_fails_as_erased_and_hands_nothing_over() {
    let s = system().await;
    // Meta takes 1.2 s to answer the next send, and then answers a transient error: the part
    // is retried after a backoff, by which time the customer's data is erased.
    let fault_spec =
        serde_json::json!({"delay_ms": 1200, "count": 1, "code": 131000, "http_status": 500});
    let id = erase_while_sending(&s, fault_spec, "573051").await;
    let pg = &s.pg;
    wait_count(
        pg,
        &format!("SELECT count(*) FROM outbound_messages WHERE conversation_id = {id} AND state = 'failed' AND attempts >= 1 AND error_code IS NULL"),
        1,
        30,
    )
    .await;
    s.settled().await;
    let reason: Option<String> =
        sqlx::query_scalar("SELECT fail_reason FROM outbound_messages WHERE conversation_id = $1")
            .bind(id)
            .fetch_one(pg)
            .await
            .unwrap();
    assert_eq!(reason.as_deref(), Some("the customer's data was erased"));
    let (owner, handovers): (String, i64) = sqlx::query_as(
        "SELECT owner, (SELECT count(*) FROM handover_events WHERE conversation_id = $1)
           FROM conversations WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pg)
    .await
    .unwrap();
    assert_eq!(
        (owner.as_str(), handovers),
        ("bot", 0),
        "an erased conversation is handed to no one"
    );
    assert!(
        s.sim.state.messages().is_empty(),
        "nothing reached the customer"
    );
}

#[tokio::test]
async fn a_mexican_customer_is_erased_by_their_number_as_they_write_it_without_the_1() {
    let s = system().await;
    // Meta names the account 521 + ten digits; the customer gives 52 + the ten digits.
    s.send("5215512345678", "wamid.MXE1", "hola").await;
    s.sent(1).await;
    s.settled().await;
    let (pg, mut con, keys) = (&s.pg, s.cfg.redis().await, s.cfg.keys());
    let erased = wafleet::erasure::erase_customer(pg, &mut con, &keys, PNID, "+52 55 1234 5678")
        .await
        .unwrap()
        .expect("the customer is found");
    assert_eq!(erased.rows.conversations.len(), 1);
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM conversations WHERE wa_id = '5215512345678'
            OR customer_key = '5215512345678'",
    )
    .fetch_one(pg)
    .await
    .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn an_erasure_and_a_reply_being_recorded_do_not_deadlock() {
    let s = system().await;
    s.send("573060", "wamid.DL1", "hola").await;
    s.sent(1).await;
    s.settled().await;
    let pg = &s.pg;
    let (conv, message): (i64, i64) = sqlx::query_as(
        "SELECT c.id, m.id FROM conversations c JOIN messages m ON m.conversation_id = c.id
          WHERE c.wa_id = '573060'",
    )
    .fetch_one(pg)
    .await
    .unwrap();
    // A reply being recorded: its foreign keys share the message, then the conversation.
    let mut reply = pg.begin().await.unwrap();
    sqlx::query("SELECT id FROM messages WHERE id = $1 FOR KEY SHARE")
        .bind(message)
        .fetch_all(&mut *reply)
        .await
        .unwrap();
    let erasing = {
        let (pg, mut con, keys) = (pg.clone(), s.cfg.redis().await, s.cfg.keys());
        tokio::spawn(async move {
            wafleet::erasure::erase_customer(&pg, &mut con, &keys, PNID, "573060").await
        })
    };
    wait_for_a_lock_wait(pg).await;
    sqlx::query("SELECT id FROM conversations WHERE id = $1 FOR KEY SHARE")
        .bind(conv)
        .fetch_all(&mut *reply)
        .await
        .expect("the reply gets its conversation: the erasure waits for it without holding it");
    reply.commit().await.unwrap();
    let erased = erasing.await.unwrap().unwrap().unwrap();
    assert_eq!(erased.rows.conversations, vec![conv]);
}

/// A webhook with an image the customer sent (Meta's media id `media_id`), with a caption or not.
fn image_message(from: &str, wamid: &str, media_id: &str, caption: Option<&str>) -> Vec<u8> {
    let mut image = serde_json::json!({"id": media_id, "mime_type": "image/jpeg", "sha256": "x"});
    if let Some(c) = caption {
        image["caption"] = c.into();
    }
    message_body(
        PNID,
        from,
        serde_json::json!({"from": from, "id": wamid, "timestamp": now().to_string(),
                           "type": "image", "image": image}),
    )
}

impl Sys {
    async fn post(&self, body: &[u8]) {
        assert_eq!(
            self.ingest.post_signed(body, APP_SECRET).await.status(),
            200
        );
    }

    async fn set(&self, setting: wafleet::store::settings::Setting, raw: &str) {
        let change = setting.parse(raw).unwrap();
        assert!(
            wafleet::store::settings::set(&self.pg, PNID, &change)
                .await
                .unwrap()
        );
    }

    /// The last user turn of every model request so far, as sent.
    fn last_user_turns(&self) -> Vec<serde_json::Value> {
        self.sim
            .state
            .llm_requests()
            .iter()
            .map(|r| {
                r.body["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .rev()
                    .find(|m| m["role"] == "user")
                    .unwrap()["content"]
                    .clone()
            })
            .collect()
    }
}

#[tokio::test]
async fn the_model_sees_the_image_a_customer_sends_when_the_channel_gives_it_images() {
    use base64::Engine;
    use wafleet::store::settings::Setting;
    let s = system_with(
        SimConfig::default(),
        |sim| vec![sim.anthropic()],
        &["conversation", "status", "llm", "sender"],
    )
    .await;
    s.set(Setting::ImagesToModel, "on").await;
    s.post(&image_message("573050", "wamid.I1", "png-photo-1", None))
        .await;
    s.sent(1).await;
    s.post(&image_message(
        "573050",
        "wamid.I2",
        "photo-2",
        Some("¿lo tienen en azul?"),
    ))
    .await;
    s.sent(2).await;
    let turns = s.last_user_turns();
    assert_eq!(turns.len(), 2);
    let data =
        |id: &str| base64::engine::general_purpose::STANDARD.encode(wafleet_sim::media_bytes(id));
    // Anthropic's image block, with Meta's bytes inline; an image without caption adds no text.
    assert_eq!(
        turns[0],
        serde_json::json!([{"type": "image", "source": {"type": "base64",
            "media_type": "image/png", "data": data("png-photo-1")}}, {"type": "text", "text": "[image]"}])
    );
    // The second request has the first image only as a mention in the history, and the new one
    // with its caption.
    assert_eq!(turns[1][0]["source"]["data"], data("photo-2"));
    assert_eq!(turns[1][0]["source"]["media_type"], "image/jpeg");
    assert_eq!(turns[1][1]["text"], "[image] ¿lo tienen en azul?");
    let history = &s.sim.state.llm_requests()[1].body["messages"];
    assert_eq!(history[0]["content"], "[image]");
}

#[tokio::test]
async fn an_image_the_model_cannot_be_given_still_gets_an_answer() {
    use wafleet::store::settings::Setting;
    let s = system().await;
    s.set(Setting::ImagesToModel, "on").await;
    // Meta no longer has one; another is larger than a model takes; a third is not an image
    // format models read. Every customer is answered, the model told an image was sent.
    s.post(&image_message("573052", "wamid.J2", "missing-4", None))
        .await;
    s.post(&image_message("573053", "wamid.J3", "huge-5", Some("mira")))
        .await;
    s.post(&image_message(
        "573054",
        "wamid.J4",
        "pdf-6",
        Some("factura"),
    ))
    .await;
    s.sent(3).await;
    let mut turns: Vec<String> = s
        .last_user_turns()
        .into_iter()
        .map(|t| t.as_str().expect("text only, no image part").to_string())
        .collect();
    turns.sort();
    assert_eq!(turns, ["[image]", "[image] factura", "[image] mira"]);
}

#[tokio::test]
async fn an_image_a_channel_does_not_give_to_the_model_gets_the_notice_and_no_model_call() {
    use wafleet::store::settings::Setting;
    let s = system().await;
    s.set(Setting::MediaNotice, "Por ahora solo leo texto.")
        .await;
    s.post(&image_message("573051", "wamid.J1", "photo-3", None))
        .await;
    assert_eq!(s.sent(1).await[0].body, "Por ahora solo leo texto.");
    assert!(s.sim.state.llm_requests().is_empty());
}

/// A webhook with a voice note that says `spoken` (the simulator's transcript of media id
/// `ogg-<hex of spoken>`), or with the recording `media_id` when `spoken` is `None`.
fn voice_note(from: &str, wamid: &str, spoken: Option<&str>, media_id: &str) -> Vec<u8> {
    let id = spoken.map_or_else(
        || media_id.to_string(),
        |s| format!("ogg-{}", hex::encode(s)),
    );
    message_body(
        PNID,
        from,
        serde_json::json!({"from": from, "id": wamid, "timestamp": now().to_string(),
                           "type": "audio", "audio": {"id": id, "mime_type": "audio/ogg; codecs=opus",
                                                       "sha256": "x", "voice": true}}),
    )
}

#[tokio::test]
async fn a_voice_note_is_transcribed_redacted_stored_and_answered_like_text() {
    use wafleet::store::settings::Setting;
    let s = system().await;
    s.set(Setting::TranscribeAudio, "on").await;
    let said = "¿Hacen envíos a Medellín? Mi tarjeta es 4111 1111 1111 1111";
    s.post(&voice_note("573060", "wamid.V1", Some(said), ""))
        .await;
    let sent = s.sent(1).await;
    assert_eq!(sent[0].context_message_id.as_deref(), Some("wamid.V1"));
    // The transcriber got Meta's recording, as an ogg file, from the configured model.
    let heard = s.sim.state.transcriptions();
    assert_eq!(heard.len(), 1);
    let id = format!("ogg-{}", hex::encode(said));
    assert_eq!(heard[0].file.as_bytes(), wafleet_sim::media_bytes(&id));
    assert_eq!(heard[0].model, "whisper-1");
    assert_eq!(heard[0].file_name, "voice.ogg");
    assert_eq!(heard[0].content_type, "audio/ogg");
    // The model reads the transcript, redacted, as the customer's turn.
    let redacted = "¿Hacen envíos a Medellín? Mi tarjeta es [CARD]";
    assert_eq!(
        s.sim.state.llm_requests()[0].last_user_message,
        format!("[voice note] {redacted}")
    );
    // It is the message's text from now on (redacted), never the card.
    let (text, pii): (Option<String>, Vec<String>) =
        sqlx::query_as("SELECT text_redacted, pii_types FROM messages WHERE wamid = 'wamid.V1'")
            .fetch_one(&s.pg)
            .await
            .unwrap();
    assert_eq!(text.as_deref(), Some(redacted));
    assert_eq!(pii, ["CARD"]);
    // The next answer has it in the history, without transcribing it again.
    s.post(&text_message(PNID, "573060", "wamid.V2", now(), "gracias"))
        .await;
    s.sent(2).await;
    let history = &s.sim.state.llm_requests()[1].body["messages"];
    let customer: Vec<&serde_json::Value> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| &m["content"])
        .collect();
    assert_eq!(
        customer,
        [
            &serde_json::json!(format!("[voice note] {redacted}")),
            &serde_json::json!("gracias")
        ]
    );
    assert_eq!(s.sim.state.transcriptions().len(), 1);
}

#[tokio::test]
async fn a_voice_note_that_cannot_be_transcribed_still_gets_an_answer() {
    use wafleet::store::settings::Setting;
    let s = system().await;
    s.set(Setting::TranscribeAudio, "on").await;
    // The transcriber refuses one as unreadable; one is a format it does not take (not
    // downloaded); Meta no longer has the third.
    s.post(&voice_note("573061", "wamid.W1", None, "ogg-corrupt-1"))
        .await;
    s.post(&voice_note("573062", "wamid.W2", None, "amr-2"))
        .await;
    s.post(&voice_note("573063", "wamid.W3", None, "missing-3"))
        .await;
    s.sent(3).await;
    let turns: Vec<String> = s
        .sim
        .state
        .llm_requests()
        .iter()
        .map(|r| r.last_user_message.clone())
        .collect();
    assert_eq!(turns, [wafleet::store::replies::VOICE_UNHEARD; 3]);
    let files: Vec<String> = s
        .sim
        .state
        .transcriptions()
        .into_iter()
        .map(|t| t.file)
        .collect();
    assert_eq!(files, ["wafleet-sim media ogg-corrupt-1"]);
    // Nothing was stored as their text.
    let (with_text,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM messages WHERE text_redacted IS NOT NULL")
            .fetch_one(&s.pg)
            .await
            .unwrap();
    assert_eq!(with_text, 0);
}

#[tokio::test]
async fn a_transcriber_that_is_briefly_unavailable_is_asked_again() {
    use wafleet::store::settings::Setting;
    let s = system().await;
    s.set(Setting::TranscribeAudio, "on").await;
    s.sim.state.add_llm_fault(
        serde_json::from_value(serde_json::json!({"status": 503, "provider": "transcription"}))
            .unwrap(),
    );
    s.post(&voice_note(
        "573064",
        "wamid.X1",
        Some("hola, ¿abren hoy?"),
        "",
    ))
    .await;
    s.sent(1).await;
    assert_eq!(
        s.sim.state.llm_requests()[0].last_user_message,
        "[voice note] hola, ¿abren hoy?"
    );
    // The 503 was not recorded; the second try was.
    assert_eq!(s.sim.state.transcriptions().len(), 1);
}

#[tokio::test]
async fn asking_for_a_person_in_a_voice_note_hands_over_without_the_model() {
    use wafleet::store::settings::Setting;
    let s = system().await;
    s.set(Setting::TranscribeAudio, "on").await;
    s.post(&voice_note(
        "573065",
        "wamid.Y1",
        Some("Buenas, quiero hablar con un asesor por favor"),
        "",
    ))
    .await;
    let sent = s.sent(1).await;
    assert_eq!(sent[0].body, DEFAULT_HANDOVER_ACK);
    assert_eq!(s.owner().await, "human");
    assert!(s.sim.state.llm_requests().is_empty());
    assert_eq!(
        s.owner_events().await,
        [("handover".to_string(), "keyword".to_string())]
    );
    // Marked read as a typed keyword is (no model call does it), nobody typing.
    assert!(!s.read_receipt("wamid.Y1").await.typing);
}

#[tokio::test]
async fn a_channel_that_does_not_transcribe_sends_the_notice_for_a_voice_note() {
    use wafleet::store::settings::Setting;
    let s = system().await;
    s.set(Setting::MediaNotice, "Por ahora solo leo texto.")
        .await;
    s.post(&voice_note("573066", "wamid.Z1", Some("hola"), ""))
        .await;
    assert_eq!(s.sent(1).await[0].body, "Por ahora solo leo texto.");
    assert!(s.sim.state.transcriptions().is_empty());
    assert!(s.sim.state.llm_requests().is_empty());
}

#[tokio::test]
async fn a_voice_note_transcribed_by_a_run_that_stopped_is_not_transcribed_again() {
    use wafleet::store::settings::Setting;
    // Only the conversation stage at first: the reply job waits on its stream.
    let s = system_with(
        SimConfig::default(),
        |sim| vec![sim.standin()],
        &["conversation"],
    )
    .await;
    s.set(Setting::TranscribeAudio, "on").await;
    s.post(&voice_note("573067", "wamid.T1", Some("lo que sea"), ""))
        .await;
    wait_count(&s.pg, "SELECT count(*) FROM messages", 1, 30).await;
    // An earlier LLM run stored the transcript and stopped before the reply was recorded; what
    // the customer said was a handover phrase.
    sqlx::query("UPDATE messages SET text_redacted = 'necesito hablar con una persona ya'")
        .execute(&s.pg)
        .await
        .unwrap();
    let _llm = Worker::start(s.cfg.pipeline_settings(
        &["llm", "sender"],
        &s.sim,
        vec![s.sim.standin()],
    ))
    .await;
    assert_eq!(s.sent(1).await[0].body, DEFAULT_HANDOVER_ACK);
    assert_eq!(s.owner().await, "human");
    assert!(s.sim.state.transcriptions().is_empty());
    assert!(s.sim.state.llm_requests().is_empty());
}

/// A webhook with a document the customer sent.
fn document_message(
    from: &str,
    wamid: &str,
    media_id: &str,
    filename: &str,
    caption: Option<&str>,
) -> Vec<u8> {
    let mut document = serde_json::json!({"id": media_id, "mime_type": "application/pdf",
                                          "sha256": "x", "filename": filename});
    if let Some(c) = caption {
        document["caption"] = c.into();
    }
    message_body(
        PNID,
        from,
        serde_json::json!({"from": from, "id": wamid, "timestamp": now().to_string(),
                           "type": "document", "document": document}),
    )
}

#[tokio::test]
async fn the_model_reads_the_pdf_a_customer_sends_when_the_channel_gives_it_documents() {
    use base64::Engine;
    use wafleet::store::settings::Setting;
    let s = system_with(
        SimConfig::default(),
        |sim| vec![sim.anthropic()],
        &["conversation", "status", "llm", "sender"],
    )
    .await;
    s.set(Setting::DocumentsToModel, "on").await;
    s.post(&document_message(
        "573070",
        "wamid.D1",
        "pdf-invoice-1",
        "factura.pdf",
        Some("aquí está la factura"),
    ))
    .await;
    s.sent(1).await;
    // Not a PDF at Meta (the simulator serves it as a JPEG): the model is told of it only.
    s.post(&document_message(
        "573070",
        "wamid.D2",
        "sheet-2",
        "pedido.xlsx",
        None,
    ))
    .await;
    s.sent(2).await;
    let turns = s.last_user_turns();
    let data =
        base64::engine::general_purpose::STANDARD.encode(wafleet_sim::media_bytes("pdf-invoice-1"));
    assert_eq!(
        turns[0],
        serde_json::json!([{"type": "document", "source": {"type": "base64",
            "media_type": "application/pdf", "data": data}},
            {"type": "text", "text": "[document: factura.pdf] aquí está la factura"}])
    );
    assert_eq!(turns[1], "[document: pedido.xlsx]");
    // The first document is in the second request's history as its mention only.
    let history = &s.sim.state.llm_requests()[1].body["messages"];
    assert_eq!(
        history[0]["content"],
        "[document: factura.pdf] aquí está la factura"
    );
}

/// A webhook with a location the customer shared: a bare pin, or a place picked from the map
/// with its name and address (reference A.4).
fn location_message(from: &str, wamid: &str, place: Option<(&str, &str)>) -> Vec<u8> {
    let mut location = serde_json::json!({"latitude": 19.432608, "longitude": -99.133209});
    if let Some((name, address)) = place {
        location["name"] = name.into();
        location["address"] = address.into();
        location["url"] = "https://maps.example/tienda".into();
    }
    message_body(
        PNID,
        from,
        serde_json::json!({"from": from, "id": wamid, "timestamp": now().to_string(),
                           "type": "location", "location": location}),
    )
}

#[tokio::test]
async fn the_model_reads_a_shared_location_when_the_channel_gives_it_locations() {
    use wafleet::store::settings::Setting;
    let s = system().await;
    s.set(Setting::LocationsToModel, "on").await;
    s.set(Setting::MediaNotice, "Por ahora solo leo texto.")
        .await;
    // A place picked from the map: its name and address go through redaction as typed text
    // does (a street address is taken out), the coordinates rounded to 4 decimals.
    s.post(&location_message(
        "573080",
        "wamid.L1",
        Some(("Tienda Centro", "Av. Reforma 123, CDMX")),
    ))
    .await;
    let sent = s.sent(1).await;
    assert_eq!(sent[0].context_message_id.as_deref(), Some("wamid.L1"));
    assert_ne!(sent[0].body, "Por ahora solo leo texto.");
    let place = "[location: Tienda Centro, [ADDRESS], CDMX (19.4326, -99.1332)]";
    assert_eq!(s.last_user_turns(), [place]);
    // A bare pin, in the next request after the place in the history.
    s.post(&location_message("573080", "wamid.L2", None)).await;
    s.sent(2).await;
    let pin = "[location: (19.4326, -99.1332)]";
    assert_eq!(
        s.model_turns(1),
        [
            ("user".to_string(), place.to_string()),
            ("assistant".to_string(), sent[0].body.clone()),
            ("user".to_string(), pin.to_string()),
        ]
    );
    // The agents' transcript shows both as the model read them.
    let id = the_conversation(&s.pg).await;
    let lines = wafleet::store::agents::transcript(&s.pg, id, 10)
        .await
        .unwrap()
        .unwrap();
    let shown: Vec<Option<&str>> = lines
        .iter()
        .filter(|l| l.side == "customer")
        .map(|l| l.text.as_deref())
        .collect();
    assert_eq!(shown, [Some(place), Some(pin)]);
    // Turned off, none goes to the model again, the earlier ones neither.
    s.set(Setting::LocationsToModel, "off").await;
    s.send("573080", "wamid.L6", "¿y abren hoy?").await;
    s.sent(3).await;
    let turns = s.model_turns(2);
    assert_eq!(
        turns,
        [("user".to_string(), "¿y abren hoy?".to_string())],
        "the answers to the locations go before the first turn"
    );

    // Erasing the customer takes the place and the pin: nothing of them is left to show.
    let erased = wafleet::erasure::erase_customer(
        &s.pg,
        &mut s.cfg.redis().await,
        &s.cfg.keys(),
        PNID,
        "573080",
    )
    .await
    .unwrap();
    assert!(erased.is_some());
    assert_eq!(
        s.count(
            "SELECT count(*) FROM messages WHERE message_type = 'location' AND metadata <> '{}'"
        )
        .await,
        0
    );
    let lines = wafleet::store::agents::transcript(&s.pg, id, 10)
        .await
        .unwrap()
        .unwrap();
    let shown: Vec<Option<&str>> = lines
        .iter()
        .filter(|l| l.kind == "location")
        .map(|l| l.text.as_deref())
        .collect();
    assert_eq!(shown, [Some("[location]"), Some("[location]")]);
}

/// Turned off, the setting takes the bot's answers to locations out of the history with the
/// locations: an answer quotes or is built from the place (the simulator quotes the question,
/// as a model says "we deliver to Coyoacán"), so kept, it would give the provider what the
/// setting now keeps from it. Also an answer to a burst a location was gathered into; the
/// answers to text alone stay.
#[tokio::test]
async fn turned_off_the_bots_answers_to_earlier_locations_leave_the_history_with_them() {
    use wafleet::store::settings::Setting;
    let s = system().await;
    s.set(Setting::LocationsToModel, "on").await;
    s.set(Setting::ReplyGatherMs, "1500").await;
    s.send("573083", "wamid.L7", "hola, ¿hacen envíos?").await;
    let first = s.sent(1).await[0].body.clone();
    s.post(&location_message(
        "573083",
        "wamid.L8",
        Some(("Casa", "Av. Reforma 123, CDMX")),
    ))
    .await;
    let sent = s.sent(2).await;
    assert!(sent[1].body.contains("19.4326"), "{:?}", sent[1].body);
    // A pin gathered with the question typed right after it: one answer, to the text.
    s.post(&location_message("573083", "wamid.L9", None)).await;
    s.send("573083", "wamid.L10", "¿entregan aquí?").await;
    let sent = s.sent(3).await;
    assert_eq!(sent[2].context_message_id.as_deref(), Some("wamid.L10"));
    assert!(sent[2].body.contains("19.4326"), "{:?}", sent[2].body);

    s.set(Setting::LocationsToModel, "off").await;
    s.send("573083", "wamid.L11", "¿y abren hoy?").await;
    s.sent(4).await;
    let request = s.sim.state.llm_requests()[3].body.to_string();
    for place in ["19.4326", "99.1332", "location", "Casa"] {
        assert!(!request.contains(place), "{place:?} went: {request}");
    }
    assert_eq!(
        s.model_turns(3),
        [
            ("user".to_string(), "hola, ¿hacen envíos?".to_string()),
            ("assistant".to_string(), first),
            (
                "user".to_string(),
                "¿entregan aquí?\n\n¿y abren hoy?".to_string()
            ),
        ]
    );
}

#[tokio::test]
async fn a_location_typed_about_right_after_is_answered_once_with_a_gathering_channel() {
    use wafleet::store::settings::Setting;
    let s = system().await;
    s.set(Setting::LocationsToModel, "on").await;
    s.set(Setting::ReplyGatherMs, "1500").await;
    s.post(&location_message("573081", "wamid.L3", None)).await;
    s.send("573081", "wamid.L4", "¿entregan aquí?").await;
    let sent = s.sent(1).await;
    assert_eq!(sent[0].context_message_id.as_deref(), Some("wamid.L4"));
    assert_eq!(s.sim.state.llm_requests().len(), 1);
    // One user turn on the wire: consecutive turns of one side are joined.
    assert_eq!(
        s.model_turns(0),
        [(
            "user".to_string(),
            "[location: (19.4326, -99.1332)]\n\n¿entregan aquí?".to_string()
        )]
    );
}

#[tokio::test]
async fn a_location_a_channel_does_not_give_to_the_model_gets_the_notice_and_no_model_call() {
    use wafleet::store::settings::Setting;
    let s = system().await;
    s.set(Setting::MediaNotice, "Por ahora solo leo texto.")
        .await;
    s.post(&location_message(
        "573082",
        "wamid.L5",
        Some(("Tienda Centro", "Av. Reforma 123, CDMX")),
    ))
    .await;
    assert_eq!(s.sent(1).await[0].body, "Por ahora solo leo texto.");
    assert!(s.sim.state.llm_requests().is_empty());
    // The transcript shows it all the same.
    let id = the_conversation(&s.pg).await;
    let lines = wafleet::store::agents::transcript(&s.pg, id, 10)
        .await
        .unwrap()
        .unwrap();
    let customer = lines.iter().find(|l| l.side == "customer").unwrap();
    assert_eq!(
        customer.text.as_deref(),
        Some("[location: Tienda Centro, [ADDRESS], CDMX (19.4326, -99.1332)]")
    );
}

#[tokio::test]
async fn a_transcriber_still_failing_on_the_last_attempt_the_worker_allows_leaves_an_answer() {
    use wafleet::store::settings::Setting;
    // Two attempts allowed, fewer than the three tries a transcription gets otherwise.
    let s = system_with_settings(|w| w.runtime.max_attempts = 2).await;
    s.set(Setting::TranscribeAudio, "on").await;
    s.sim.state.add_llm_fault(
        serde_json::from_value(
            serde_json::json!({"status": 503, "count": 2, "provider": "transcription"}),
        )
        .unwrap(),
    );
    s.post(&voice_note("573068", "wamid.U1", Some("hola"), ""))
        .await;
    s.sent(1).await;
    assert_eq!(
        s.sim.state.llm_requests()[0].last_user_message,
        wafleet::store::replies::VOICE_UNHEARD
    );
}

#[tokio::test]
async fn a_card_begun_in_a_typed_message_and_finished_in_a_voice_note_never_reaches_the_model() {
    use wafleet::store::settings::Setting;
    let s = system().await;
    s.set(Setting::TranscribeAudio, "on").await;
    s.post(&text_message(
        PNID,
        "573069",
        "wamid.C1",
        now(),
        "mi tarjeta es 4111 1111",
    ))
    .await;
    s.sent(1).await;
    s.post(&voice_note(
        "573069",
        "wamid.C2",
        Some("1111 1111 gracias"),
        "",
    ))
    .await;
    s.sent(2).await;
    let request = &s.sim.state.llm_requests()[1].body["messages"];
    let said: Vec<&str> = request
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(said, ["mi tarjeta es [CARD]", "[voice note]  gracias"]);
}

#[tokio::test]
async fn a_message_holding_only_the_rest_of_a_card_reaches_the_model_as_its_placeholder() {
    // Anthropic refuses a turn without content: the whole session would get the canned reply.
    let s = system_with(
        SimConfig::default(),
        |sim| vec![sim.anthropic()],
        &["conversation", "status", "llm", "sender"],
    )
    .await;
    s.send("573072", "wamid.N1", "mi tarjeta es 4111 1111")
        .await;
    s.sent(1).await;
    s.send("573072", "wamid.N2", "1111 1111").await;
    s.sent(2).await;
    let turns = s.model_turns(1);
    assert_eq!(turns.len(), 3, "{turns:?}");
    assert_eq!(
        turns[0],
        ("user".to_string(), "mi tarjeta es [CARD]".to_string())
    );
    assert_eq!(turns[2], ("user".to_string(), "[CARD]".to_string()));
    assert!(turns.iter().all(|(_, t)| !t.trim().is_empty()), "{turns:?}");
    assert_eq!(
        s.count("SELECT count(*) FROM replies WHERE canned").await,
        0
    );
}

#[tokio::test]
async fn nul_characters_in_a_transcript_an_answer_or_a_providers_error_cost_no_reply() {
    use wafleet::store::settings::Setting;
    let s = system().await;
    s.set(Setting::TranscribeAudio, "on").await;
    // Postgres refuses NUL in text and JSONB: each of these rows would fail, and the job with it.
    s.sim
        .state
        .add_llm_fault(model_says("¡Hola!\u{0} Abrimos a las 9."));
    s.post(&voice_note(
        "573073",
        "wamid.Z1",
        Some("hola\u{0}, ¿abren hoy?"),
        "",
    ))
    .await;
    let sent = s.sent(1).await;
    assert_eq!(sent[0].body, "¡Hola! Abrimos a las 9.");
    let (text,): (Option<String>,) =
        sqlx::query_as("SELECT text_redacted FROM messages WHERE wamid = 'wamid.Z1'")
            .fetch_one(&s.pg)
            .await
            .unwrap();
    assert_eq!(text.as_deref(), Some("hola, ¿abren hoy?"));

    s.sim.state.add_llm_fault(
        serde_json::from_value::<LlmFault>(serde_json::json!({"status": 400, "body": {
            "error": {"message": "bad\u{0} request", "type": "invalid_request_error"}}}))
        .unwrap(),
    );
    s.send("573073", "wamid.Z2", "gracias").await;
    let sent = s.sent(2).await;
    assert_eq!(sent[1].body, DEFAULT_CANNED_REPLY);
    let (error,): (String,) = sqlx::query_as(
        "SELECT failures->0->>'error' FROM replies WHERE jsonb_array_length(failures) > 0",
    )
    .fetch_one(&s.pg)
    .await
    .unwrap();
    // The provider's words are never kept (they can echo a customer's), only its status, type
    // and a fixed reading of the message.
    assert!(
        error.contains("HTTP 400 invalid_request_error") && !error.contains("bad"),
        "{error}"
    );

    // An answer that was nothing but NUL says nothing: the canned reply goes instead.
    s.sim.state.add_llm_fault(model_says("\u{0}"));
    s.send("573073", "wamid.Z3", "¿y mañana?").await;
    let sent = s.sent(3).await;
    assert_eq!(sent[2].body, DEFAULT_CANNED_REPLY);
}

#[tokio::test]
async fn a_late_status_of_a_send_before_a_replay_is_not_taken_for_the_send_after_it() {
    use wafleet::store::conversations::{Status, StatusApplied, apply_statuses, delivery_rank};
    use wafleet::store::replies::{claim_many, parts};
    // Meta takes the one send allowed and never answers: the part is given up, dead-lettered.
    let mut s = unanswered_sends(Duration::from_millis(200), 1).await;
    s.send("573016", "wamid.REPLAYED", "hola").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'failed'
            AND fail_reason LIKE 'gave up: Meta answered none%'",
        1,
        30,
    )
    .await;
    s.one_sender_dead_letter().await;
    let first = s.sim.state.messages()[0].clone();
    let cipher = s.cfg.cipher();
    let callback = cipher
        .callback_tags()
        .decode(first.callback_data.as_deref().unwrap())
        .unwrap();
    assert_eq!(callback.send_try, Some(1));
    // From here the test plays the sender: an operator's replay asks to send again, and the
    // resend is claimed (in flight, no answer yet).
    s._worker.take().unwrap().stop().await.unwrap();
    let (mut con, keys) = (s.cfg.redis().await, s.cfg.keys());
    let letters = wafleet::dead_letters::read(&mut con, &keys, "sender")
        .await
        .unwrap();
    let reopened = s.replay_sender(&letters[0], true).await;
    assert_eq!(reopened.reopened, 1);
    let mut conn = s.pg.acquire().await.unwrap();
    claim_many(&mut conn, &[callback.outbound_id])
        .await
        .unwrap();
    let part = parts(&s.pg, &[callback.outbound_id])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (
            part.state.as_str(),
            part.attempts,
            part.send_offset + part.attempts
        ),
        ("sending", 1, 2),
        "the resend is the part's second send, the first of its new round"
    );
    // The first send's failure comes in now: it is not the resend's.
    let late = Status {
        wamid: first.wamid.clone(),
        status: "failed".into(),
        rank: delivery_rank("failed").unwrap(),
        at: None,
        error_code: Some(131000),
        error_title: None,
        callback: Some(callback),
        recipient: None,
        phone_number_id: None,
    };
    // Known as that send's (recorded among the part's other sends), never parked.
    let applied = apply_statuses(&mut conn, &[late]).await.unwrap();
    assert_eq!(
        applied,
        [StatusApplied::OtherSend {
            by_agent: false,
            adopted: false,
            duplicate: false
        }]
    );
    assert_eq!(s.count("SELECT count(*) FROM early_statuses").await, 0);
    let part = parts(&s.pg, &[callback.outbound_id])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (part.state.as_str(), part.error_code),
        ("sending", None),
        "the resend in flight keeps its own outcome"
    );
}

#[tokio::test]
async fn a_wamid_kept_for_an_earlier_send_is_not_recorded_for_a_later_one() {
    // Meta takes every send and never answers; a send stays ambiguous for a minute.
    let s = unanswered_sends(Duration::from_secs(60), 8).await;
    s.send("573017", "wamid.STASHED", "hola").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'sending' AND attempts = 1",
        1,
        30,
    )
    .await;
    // As if this were the part's second send, and Meta's acceptance of its first (a message a
    // failed status reopened the part after) had been kept while Postgres would not record it.
    let id: i64 = sqlx::query_scalar("UPDATE outbound_messages SET attempts = 2 RETURNING id")
        .fetch_one(&s.pg)
        .await
        .unwrap();
    let keys = s.cfg.keys();
    let key = keys.unrecorded_wamid(keys.partition_of(&format!("{PNID}:573017")), id);
    let mut con = s.cfg.redis().await;
    let _: () = con.set(&key, "wamid.FIRST - 1").await.unwrap();
    eventually("the stale wamid dropped", Duration::from_secs(30), || {
        let mut con = con.clone();
        let key = key.clone();
        async move { (!con.exists::<_, bool>(&key).await.unwrap()).then_some(()) }
    })
    .await;
    let (state, wamid): (String, Option<String>) =
        sqlx::query_as("SELECT state, wamid FROM outbound_messages WHERE id = $1")
            .bind(id)
            .fetch_one(&s.pg)
            .await
            .unwrap();
    assert_eq!((state.as_str(), wamid), ("sending", None));
    // The acceptance of the send in flight is recorded from its stash.
    let _: () = con.set(&key, "wamid.SECOND - 2").await.unwrap();
    wait_count(
        &s.pg,
        &format!(
            "SELECT count(*) FROM outbound_messages WHERE id = {id} AND state = 'accepted'
                AND wamid = 'wamid.SECOND'"
        ),
        1,
        30,
    )
    .await;
}

/// Whether a send job waits in the sender's delayed set (deferred, or retried later): what the
/// sender decided once it is there, without waiting for the delay.
async fn send_deferred(s: &Sys) -> bool {
    let keys = s.cfg.keys();
    let mut con = s.cfg.redis().await;
    for p in 0..keys.partitions() {
        let n: usize = con.zcard(keys.delayed("sender", p)).await.unwrap();
        if n > 0 {
            return true;
        }
    }
    false
}

/// Waits until the sender has decided what to do with a part after `sent` sends: it sent the
/// part again, or its job waits in the delayed set.
async fn sender_decided(s: &Sys, sent: usize) {
    eventually("the sender's decision", Duration::from_secs(30), || async {
        (s.sim.state.messages().len() > sent || send_deferred(s).await).then_some(())
    })
    .await;
}

/// Waits until the channel is paused for Meta's 190 (an expired token), with the reason naming
/// the code, and the configuration alert counted past `before`.
async fn paused_for_the_token(s: &Sys, before: f64) {
    wait_count(
        &s.pg,
        "SELECT count(*) FROM channels
          WHERE sends_paused_until > now() + interval '5 minutes'
            AND sends_paused_reason LIKE 'Graph configuration error 190%'",
        1,
        30,
    )
    .await;
    eventually(
        "the configuration alert",
        Duration::from_secs(10),
        || async { (config_alerts() > before).then_some(()) },
    )
    .await;
}

/// The configuration alert for the test channel, as the sender counts it.
fn config_alerts() -> f64 {
    metric_value(
        &wafleet::telemetry::metrics_handle().render(),
        &format!(r#"wafleet_sender_alerts_total{{channel="{PNID}",kind="config"}}"#),
    )
}

#[tokio::test]
async fn a_configuration_error_in_a_failed_status_pauses_the_channel_even_past_the_parts_retry_bounds()
 {
    // No time for a resend (the age bound: a configuration failure uses no attempt): Meta
    // accepts the part, then fails it for an expired token. Nothing is sent again, but every
    // later reply of the channel would meet the same token.
    let s = system_with_settings(|w| w.send.backoff.max_age = Duration::ZERO).await;
    let before = config_alerts();
    s.sim.state.add_fault(fault(
        serde_json::json!({"code": 190, "count": 1, "async": true}),
    ));
    s.send("573031", "wamid.CFG1", "hola").await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'failed' AND error_code = 190",
        1,
        30,
    )
    .await;
    paused_for_the_token(&s, before).await;
    s.settled().await;
    assert_eq!(
        s.sim.state.messages().len(),
        1,
        "past its bounds: not resent"
    );
    assert_eq!(
        s.count("SELECT count(*) FROM outbound_messages WHERE state = 'failed'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_redelivered_configuration_failure_leaves_the_channel_paused_once_and_alerts_once() {
    // Past its bounds, the part stays failed under the wamid the status names.
    let s = system_with_settings(|w| w.send.backoff.max_age = Duration::ZERO).await;
    let before = config_alerts();
    s.sim.state.add_fault(fault(
        serde_json::json!({"code": 190, "count": 1, "async": true}),
    ));
    s.send("573034", "wamid.CFG4", "hola").await;
    paused_for_the_token(&s, before).await;
    s.settled().await;
    let alerts = config_alerts();
    assert_eq!(alerts, before + 1.0);
    let until = || async {
        let (until,): (chrono::DateTime<chrono::Utc>,) =
            sqlx::query_as("SELECT sends_paused_until FROM channels")
                .fetch_one(&s.pg)
                .await
                .unwrap();
        until
    };
    let paused_until = until().await;
    // Meta delivers the failed status again once ingest no longer remembers it.
    let stale = || {
        metric_value(
            &wafleet::telemetry::metrics_handle().render(),
            r#"wafleet_statuses_total{result="stale"}"#,
        )
    };
    let stale_before = stale();
    let wamid = s.sim.state.messages()[0].wamid.clone();
    s.cfg.forget_dedup_marks().await;
    let again = status_body(
        PNID,
        serde_json::json!([{"id": wamid, "status": "failed", "timestamp": now().to_string(),
            "recipient_id": "573034", "errors": [{"code": 190, "title": "Access token expired"}]}]),
    );
    assert_eq!(s.ingest.post_signed(&again, APP_SECRET).await.status(), 200);
    eventually(
        "the redelivery applied",
        Duration::from_secs(20),
        || async { (stale() > stale_before).then_some(()) },
    )
    .await;
    s.settled().await;
    assert_eq!(config_alerts(), alerts, "alerted again for one failure");
    assert_eq!(until().await, paused_until, "paused again for one failure");
    assert_eq!(s.sim.state.messages().len(), 1);
}

#[tokio::test]
async fn a_configuration_error_in_a_failed_status_that_came_first_pauses_the_channel_past_the_bounds()
 {
    let s = system_with_settings(|w| w.send.backoff.max_age = Duration::ZERO).await;
    // A first answer shows how the simulator numbers its messages (one counter, `n` last).
    s.send("573036", "wamid.FF0", "hola").await;
    let first = s.sent(1).await.remove(0).wamid;
    s.settled().await;
    let before = config_alerts();
    let (stem, n) = first.split_at(first.len() - 10);
    let n: u64 = n.parse().unwrap();
    // Meta's failure of the next send, for an expired token, comes before its acceptance is
    // recorded (whichever number the simulator gives it).
    for next in n + 1..n + 10 {
        sqlx::query(
            "INSERT INTO early_statuses (wamid, status, rank, error_code, error_title)
             VALUES ($1, 'failed', $2, 190, 'Access token expired')",
        )
        .bind(format!("{stem}{next:010}"))
        .bind(wafleet::store::conversations::delivery_rank("failed").unwrap())
        .execute(&s.pg)
        .await
        .unwrap();
    }
    s.send("573036", "wamid.FF1", "¿y mañana?").await;
    paused_for_the_token(&s, before).await;
    s.one_sender_dead_letter().await;
    assert_eq!(
        s.count(
            "SELECT count(*) FROM outbound_messages WHERE state = 'failed' AND error_code = 190"
        )
        .await,
        1
    );
    assert_eq!(
        s.sim.state.messages().len(),
        2,
        "past its bounds: not resent"
    );
}

#[tokio::test]
async fn a_configuration_error_in_a_failed_status_holds_the_resend_until_the_pause_is_lifted_and_uses_no_attempt()
 {
    // A 10-minute pause, looked at again every 300 ms; one attempt per part, which the
    // configuration failure (the channel's, not the part's) does not use up.
    let s = system_with_settings(|w| {
        w.send.paused_recheck = Duration::from_millis(300);
        w.send.backoff.max_attempts = 1;
    })
    .await;
    let before = config_alerts();
    s.sim.state.add_fault(fault(
        serde_json::json!({"code": 190, "count": 1, "async": true}),
    ));
    s.send("573032", "wamid.CFG2", "hola").await;
    paused_for_the_token(&s, before).await;
    // The sender has decided once the part is sent again or its job waits.
    sender_decided(&s, 1).await;
    assert_eq!(
        s.sim.state.messages().len(),
        1,
        "not sent again while the channel is paused"
    );
    // The operator fixes the token and resumes the channel: the part goes, once.
    wafleet::store::channels::resume(&s.pg, PNID).await.unwrap();
    let sent = s.sent(2).await;
    assert_eq!(sent[1].context_message_id.as_deref(), Some("wamid.CFG2"));
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'accepted' AND attempts = 1",
        1,
        30,
    )
    .await;
    s.settled().await;
    assert_eq!(s.sim.state.messages().len(), 2);
}

#[tokio::test]
async fn a_resend_after_a_configuration_failure_that_meta_takes_without_answering_is_reconciled_not_sent_again()
 {
    // Meta accepts the part, then fails it for an expired token; the pause is over by the time
    // the sender reads it (1 ms), so the part goes again in the same run. Meta takes that send
    // and posts its statuses, but never answers the request: only the statuses, which echo the
    // send's callback, can tell the sender it arrived. Before, the callback numbered the send
    // one past the part's own count (the configuration failure gives its attempt back), the
    // statuses were parked in `early_statuses` for a wamid nobody would record, the wait saw
    // nothing and the customer got the message twice.
    let s = system_with_settings(|w| {
        w.send.config_pause = Duration::from_millis(1);
        w.graph.timeout = Duration::from_millis(300);
        w.send.ambiguous_resend_after = Duration::from_millis(1500);
        w.send.ambiguous_check = Duration::from_millis(50);
    })
    .await;
    s.sim.state.add_fault(fault(
        serde_json::json!({"code": 190, "count": 1, "async": true}),
    ));
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"hang": true, "count": 1})));
    s.send("573037", "wamid.CFGH", "hola").await;
    s.sent(2).await;
    // Reconciled by its statuses, or sent a third time past the resend delay.
    eventually(
        "the resend reconciled or sent again",
        Duration::from_secs(30),
        || async {
            let accepted = s
                .count(
                    "SELECT count(*) FROM outbound_messages
                      WHERE state = 'accepted' AND wamid IS NOT NULL",
                )
                .await;
            (accepted == 1 || s.sim.state.messages().len() > 2).then_some(())
        },
    )
    .await;
    assert_eq!(
        s.sim.state.messages().len(),
        2,
        "Meta took the resend: not sent a third time"
    );
    assert_eq!(
        s.count("SELECT count(*) FROM early_statuses").await,
        0,
        "no status of ours parked"
    );
    s.settled().await;
    assert_eq!(s.sim.state.messages().len(), 2);
}

#[tokio::test]
async fn a_late_status_of_an_ambiguous_send_after_its_resend_was_claimed_stops_the_resends() {
    // Meta takes the first send and delivers it, but never answers the request, and its
    // statuses come late (the test posts them); every later send goes unanswered and nowhere.
    // The first send is taken as lost after a second and sent again; the first send's status
    // comes in while that resend waits for an answer. Before, it named a send the part no longer
    // held and was parked in `early_statuses` for a wamid nobody would record, and the part
    // was sent 6 more times (the bound, 8 sends) though the customer had it.
    let s = system_tweaked(
        SimConfig {
            status_delay: Duration::from_secs(3600),
            ..SimConfig::default()
        },
        |s| vec![s.standin()],
        &["conversation", "status", "llm", "sender"],
        |w| {
            w.graph.timeout = Duration::from_millis(300);
            w.send.ambiguous_resend_after = Duration::from_secs(1);
            w.send.ambiguous_check = Duration::from_millis(50);
        },
    )
    .await;
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"hang": true, "count": 1})));
    s.sim.state.add_fault(fault(
        serde_json::json!({"code": 131000, "hang": true, "count": 1000}),
    ));
    s.send("573038", "wamid.EARLIER", "hola").await;
    let first = s.sent(1).await.remove(0);
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'sending' AND attempts = 2",
        1,
        30,
    )
    .await;
    let before = metric_value(
        &wafleet::telemetry::metrics_handle().render(),
        r#"wafleet_statuses_total{result="earlier_send"}"#,
    );
    let late = status_body(
        PNID,
        serde_json::json!([{"id": first.wamid, "status": "delivered",
                "timestamp": now().to_string(), "recipient_id": "573038",
                "biz_opaque_callback_data": first.callback_data}]),
    );
    assert_eq!(s.ingest.post_signed(&late, APP_SECRET).await.status(), 200);
    eventually(
        "the part accepted, or sent a third time",
        Duration::from_secs(30),
        || async {
            let done = s
                .count(
                    "SELECT count(*) FROM outbound_messages
                      WHERE state = 'accepted' OR attempts > 2",
                )
                .await;
            (done > 0).then_some(())
        },
    )
    .await;
    let part = || async {
        sqlx::query_as::<_, (String, Option<String>, Option<String>, i32)>(
            "SELECT state, wamid, delivery, attempts FROM outbound_messages",
        )
        .fetch_one(&s.pg)
        .await
        .unwrap()
    };
    let want = (
        "accepted".to_string(),
        Some(first.wamid.clone()),
        Some("delivered".to_string()),
        2,
    );
    assert_eq!(
        part().await,
        want,
        "the first send is the part's, and the resend is not repeated"
    );
    s.settled().await;
    assert_eq!(part().await, want);
    assert_eq!(
        s.count("SELECT count(*) FROM early_statuses").await,
        0,
        "no status of ours parked"
    );
    assert!(
        metric_value(
            &wafleet::telemetry::metrics_handle().render(),
            r#"wafleet_statuses_total{result="earlier_send"}"#,
        ) > before,
        "the status is counted as an earlier send's"
    );
    assert_eq!(s.sim.state.messages().len(), 1);
}

#[tokio::test]
async fn a_late_status_of_an_ambiguous_send_whose_resend_meta_accepted_is_counted_as_a_second_copy()
{
    // Meta takes the first send without answering (its statuses come late: the test posts
    // them) and answers the resend. The first send's status then tells that the customer got
    // the message twice: counted, recorded beside the resend's, never parked.
    let s = system_tweaked(
        SimConfig {
            status_delay: Duration::from_secs(3600),
            ..SimConfig::default()
        },
        |s| vec![s.standin()],
        &["conversation", "status", "llm", "sender"],
        |w| {
            w.graph.timeout = Duration::from_millis(300);
            w.send.ambiguous_resend_after = Duration::from_millis(500);
            w.send.ambiguous_check = Duration::from_millis(50);
        },
    )
    .await;
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"hang": true, "count": 1})));
    s.send("573039", "wamid.TWICE", "hola").await;
    let sent = s.sent(2).await;
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE state = 'accepted'",
        1,
        30,
    )
    .await;
    let duplicates = || {
        metric_value(
            &wafleet::telemetry::metrics_handle().render(),
            "wafleet_sender_duplicates_total",
        )
    };
    let before = duplicates();
    let late = status_body(
        PNID,
        serde_json::json!([{"id": sent[0].wamid, "status": "delivered",
                "timestamp": now().to_string(), "recipient_id": "573039",
                "biz_opaque_callback_data": sent[0].callback_data}]),
    );
    assert_eq!(s.ingest.post_signed(&late, APP_SECRET).await.status(), 200);
    eventually(
        "the second copy counted",
        Duration::from_secs(30),
        || async { (duplicates() > before).then_some(()) },
    )
    .await;
    s.settled().await;
    let (wamid, others, first): (Option<String>, Vec<String>, String) =
        sqlx::query_as("SELECT wamid, other_wamids, erased_wamid($1) FROM outbound_messages")
            .bind(&sent[0].wamid)
            .fetch_one(&s.pg)
            .await
            .unwrap();
    assert_eq!((wamid, others), (Some(sent[1].wamid.clone()), vec![first]));
    assert_eq!(s.count("SELECT count(*) FROM early_statuses").await, 0);
    assert_eq!(s.sim.state.messages().len(), 2);
}

#[tokio::test]
async fn a_transient_error_in_a_failed_status_is_resent_after_a_backoff() {
    // A backoff of up to a day: the resend of a failed message waits in the delayed set.
    let s = system_with_settings(|w| {
        w.send.backoff.base = Duration::from_secs(86_400);
        w.send.backoff.max = Duration::from_secs(86_400);
    })
    .await;
    s.sim.state.add_fault(fault(
        serde_json::json!({"code": 131000, "count": 1, "async": true}),
    ));
    s.send("573033", "wamid.TR1", "hola").await;
    sender_decided(&s, 1).await;
    assert_eq!(
        s.sim.state.messages().len(),
        1,
        "the resend waits for its backoff"
    );
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM outbound_messages")
            .fetch_one(&s.pg)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("pending", 1));
}

/// A Redis user that may do everything except record a pause of a number (a `SET` on
/// `P:{rl:<pnid>}:paused`, which the limiter's hold script makes), for a worker whose throttle
/// push-back alone fails. Key patterns name no prefix: the user serves one test's worker.
async fn a_redis_user_that_cannot_pause_numbers() -> String {
    let user = format!("nopause-{}", uuid::Uuid::new_v4().simple());
    let writable = [
        "{p*",
        "{workers}*",
        "{dead}*",
        "{events}*",
        "{quarantine}*",
        "{rl:*}:number",
        "{rl:*}:to:*",
        "{rl:*}:strikes:*",
        "{rl:*}:penalty:*",
    ]
    .iter()
    .map(|k| format!("~*:{k}"))
    .collect::<Vec<_>>()
    .join(" ");
    let client = redis::Client::open(redis_url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-set")
        .arg(format!("({writable} +set)"))
        .query_async(&mut admin)
        .await
        .unwrap();
    user
}

async fn drop_redis_user(cfg: &TestConfig, user: &str) {
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(user)
        .query_async(&mut cfg.redis().await)
        .await
        .unwrap();
}

/// How many times Redis refused `user` the pause of the test channel's number.
async fn refused_pauses(cfg: &TestConfig, user: &str) -> i64 {
    let paused = wafleet::ratelimit::RateLimitKeys::new(cfg.prefix.clone()).paused(PNID);
    let log: Vec<Vec<redis::Value>> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut cfg.redis().await)
        .await
        .unwrap();
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(n) => n.to_string(),
        _ => String::new(),
    };
    log.iter()
        .map(|entry| {
            let fields: HashMap<String, String> = entry
                .chunks(2)
                .map(|kv| (text(&kv[0]), text(&kv[1])))
                .collect();
            let ours = fields.get("username").map(String::as_str) == Some(user)
                && fields.get("object") == Some(&paused);
            if ours {
                fields
                    .get("count")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0)
            } else {
                0
            }
        })
        .sum()
}

/// Every stage, with a worker whose Redis user cannot record a pause of a number.
async fn a_system_that_cannot_pause_numbers() -> (Sys, String) {
    let user = a_redis_user_that_cannot_pause_numbers().await;
    let url = redis_url().replacen("://", &format!("://{user}:pw@"), 1);
    let s = system_with_settings(|w| w.common.redis_url = wafleet::config::Secret::new(url)).await;
    (s, user)
}

#[tokio::test]
async fn a_throttle_whose_push_back_redis_refuses_still_holds_the_part_back() {
    // Meta's spam limit (131048): the number waits a minute. Redis will not record that pause.
    let (s, user) = a_system_that_cannot_pause_numbers().await;
    s.sim
        .state
        .add_fault(fault(serde_json::json!({"code": 131048, "count": 1})));
    s.send("573034", "wamid.NP1", "hola").await;
    sender_decided(&s, 0).await;
    assert!(refused_pauses(&s.cfg, &user).await >= 1);
    assert!(
        s.sim.state.messages().is_empty(),
        "not sent again without the minute's wait"
    );
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM outbound_messages")
            .fetch_one(&s.pg)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("pending", 0));
    drop_redis_user(&s.cfg, &user).await;
}

#[tokio::test]
async fn a_throttle_in_a_failed_status_whose_push_back_redis_refuses_is_not_resent_without_it() {
    // Meta accepts the send, then fails it for the spam limit (131048): the number waits a
    // minute before the resend. Redis will not record that pause.
    let (s, user) = a_system_that_cannot_pause_numbers().await;
    s.sim.state.add_fault(fault(
        serde_json::json!({"code": 131048, "count": 1, "async": true}),
    ));
    s.send("573035", "wamid.NP2", "hola").await;
    // The push-back is tried again (the part waits for it), or the part went without it.
    eventually(
        "the push-back tried again",
        Duration::from_secs(30),
        || async {
            (s.sim.state.messages().len() > 1 || refused_pauses(&s.cfg, &user).await >= 2)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        s.sim.state.messages().len(),
        1,
        "not sent again without the push-back"
    );
    assert_eq!(
        s.count(
            "SELECT count(*) FROM outbound_messages WHERE state = 'failed' AND error_code = 131048"
        )
        .await,
        1
    );
    drop_redis_user(&s.cfg, &user).await;
}

#[tokio::test]
async fn an_llm_worker_killed_during_a_model_call_and_restarted_with_its_id_answers_once_before_its_lease_ends()
 {
    // Model answers take 5 s: time to kill the worker while one is under way.
    let s = system_with(
        SimConfig {
            llm_latency: Duration::from_secs(5),
            ..Default::default()
        },
        |s| vec![s.standin()],
        &["conversation", "status", "sender"],
    )
    .await;
    // The LLM stage's own lease, 15 s past its job deadline (over 100 s): without the id the
    // customer would wait for all of it.
    let mut env = s.cfg.pipeline_env(&s.sim);
    env.extend([
        ("WAFLEET_STAGES".to_string(), "llm".to_string()),
        ("WAFLEET_WORKER_ID".to_string(), "testhost-1".to_string()),
    ]);
    let mut a = ChildWorker::spawn_with(BIN, env.clone(), "real", &[]);
    s.send("573098", "wamid.KILLED", "hola, ¿hacen envíos?")
        .await;
    eventually(
        "the model call under way",
        Duration::from_secs(30),
        || async { (!s.sim.state.llm_requests().is_empty()).then_some(()) },
    )
    .await;
    a.kill();
    let killed = std::time::Instant::now();
    let _b = ChildWorker::spawn_with(BIN, env, "real", &[]);
    eventually(
        "the customer answered by the restarted worker",
        Duration::from_secs(60),
        || async { (!s.sim.state.messages().is_empty()).then_some(()) },
    )
    .await;
    eprintln!("kill -9 to the customer's answer: {:?}", killed.elapsed());
    s.settled().await;
    assert_eq!(s.sim.state.messages().len(), 1, "answered once");
}
