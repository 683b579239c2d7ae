//! The agent API (`wafleet-api`) on the real Redis and Postgres, with the whole pipeline behind
//! it and the simulator standing in for Meta and the model.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use wafleet::store::api_tokens;
use wafleet_sim::SimConfig;
use wafleet_tests::*;

const SHOP: &str = "106540352242922";
const OTHER: &str = "106540352242923";

/// The API bounds the wait for a request's head as ingest does (a trickled head is closed and
/// counted), and on shutdown it stops taking connections, ends an open event stream and returns
/// well before its grace period.
#[tokio::test]
async fn a_trickled_head_is_closed_and_counted_and_an_open_event_stream_ends_on_shutdown() {
    let cfg = TestConfig::new().await;
    cfg.add_channel(SHOP, |_| {}).await;
    let grant = api_tokens::Grant::Agents(vec![SHOP.to_string()]);
    let token = api_tokens::add(&cfg.pg().await, "shop", &grant)
        .await
        .unwrap()
        .unwrap();
    let settings = wafleet::api::ApiSettings {
        header_timeout: Duration::from_millis(400),
        // Longer than any wait below: the drain must end by itself.
        shutdown_grace: Duration::from_secs(60),
        ..cfg.api_settings(Some(cfg.cipher()), "http://127.0.0.1:9")
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let url = format!("http://{addr}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(wafleet::api::run(settings, listener, async move {
        let _ = stopped.await;
    }));
    wait_healthy(&reqwest::Client::new(), &url, "the API").await;

    let answer = trickle_a_head_until_closed(&addr, "/api/v1/conversations").await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // On a fresh connection: a pooled one may have been closed as idle.
    let timeouts = scrape_metric(
        &reqwest::Client::new(),
        &url,
        "wafleet_api_header_timeouts_total",
    )
    .await;
    assert_eq!(timeouts, 1.0);

    let mut events = reqwest::Client::new()
        .get(format!("{url}/api/v1/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    stop.send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = events.chunk().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the event stream stayed open through the drain"
    );
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the API returns once the drain is done")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
}

struct Api {
    url: String,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Api {
    async fn start(cfg: &TestConfig) -> Self {
        Self::start_with(cfg, Some(cfg.cipher()), "http://127.0.0.1:9").await
    }

    /// The API with or without the encryption key (without it, channels cannot be changed), its
    /// Graph API at `graph`.
    async fn start_with(
        cfg: &TestConfig,
        cipher: Option<wafleet::crypto::Cipher>,
        graph: &str,
    ) -> Self {
        let settings = cfg.api_settings(cipher, graph);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(wafleet::api::run(settings, listener, async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        wait_healthy(&http, &url, "the API").await;
        Self {
            url,
            http,
            _stop: stop,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Opens the event stream, resuming after `last` when given.
    async fn events(&self, token: &str, last: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .get(format!("{}/api/v1/events", self.url))
            .bearer_auth(token);
        if let Some(id) = last {
            req = req.header("last-event-id", id);
        }
        req.send().await.unwrap()
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None, None)
            .await
    }

    async fn post(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(token), None, None)
            .await
    }

    async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PUT, path, Some(token), None, Some(body))
            .await
    }

    async fn write(&self, id: i64, token: &str, key: &str, text: &str) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{id}/messages"),
            Some(token),
            Some(key),
            Some(json!({"text": text, "agent": "Lucía"})),
        )
        .await
    }
}

struct Sys {
    api: Api,
    ingest: Ingest,
    sim: Sim,
    pg: PgPool,
    /// Tokens: every number, the shop's number only, the other number only.
    all: String,
    shop: String,
    other: String,
    /// `None` once a test stopped it.
    worker: Option<Worker>,
    cfg: TestConfig,
}

async fn system() -> Sys {
    system_with(SimConfig::default(), |_| {}).await
}

/// [`system`] with the simulator configured as `sim` says (its tokens aside) and the worker's
/// settings changed by `tweak`.
async fn system_with(
    sim: SimConfig,
    tweak: impl FnOnce(&mut wafleet::stages::process::WorkerProcessSettings),
) -> Sys {
    let cfg = TestConfig::new().await;
    cfg.add_channel(SHOP, |_| {}).await;
    cfg.add_channel(OTHER, |_| {}).await;
    let ingest = Ingest::start(cfg.ingest_settings()).await;
    let sim = Sim::start(
        SimConfig {
            tokens: HashMap::from([
                (SHOP.to_string(), format!("token-{SHOP}")),
                (OTHER.to_string(), format!("token-{OTHER}")),
            ]),
            ..sim
        },
        Some(&ingest),
    )
    .await;
    let mut settings = cfg.pipeline_settings(
        &["conversation", "status", "llm", "sender"],
        &sim,
        vec![sim.standin()],
    );
    tweak(&mut settings);
    let worker = Worker::start(settings).await;
    let pg = cfg.pg().await;
    let token = |name: &'static str, numbers: &'static [&'static str]| {
        let pg = pg.clone();
        async move {
            let numbers: Vec<String> = numbers.iter().map(|n| n.to_string()).collect();
            api_tokens::add(&pg, name, &api_tokens::Grant::Agents(numbers))
                .await
                .unwrap()
                .unwrap()
        }
    };
    let (all, shop, other) = (
        token("platform", &[]).await,
        token("shop", &[SHOP]).await,
        token("other", &[OTHER]).await,
    );
    Sys {
        api: Api::start_with(&cfg, Some(cfg.cipher()), &sim.url).await,
        ingest,
        sim,
        pg,
        all,
        shop,
        other,
        worker: Some(worker),
        cfg,
    }
}

impl Sys {
    /// A customer's message to `number`; waits for the bot's reply; answers the conversation id.
    async fn customer_writes(&self, number: &str, from: &str, wamid: &str, replies: usize) -> i64 {
        let body = text_message(number, from, wamid, chrono::Utc::now().timestamp(), "hola");
        assert_eq!(
            self.ingest.post_signed(&body, APP_SECRET).await.status(),
            200
        );
        self.sent(replies).await;
        let (id,): (i64,) = sqlx::query_as("SELECT id FROM conversations WHERE wa_id = $1")
            .bind(from)
            .fetch_one(&self.pg)
            .await
            .unwrap();
        id
    }

    /// A customer's conversation with `number`, which the shop's agent then takes.
    async fn taken(&self, number: &str, from: &str, wamid: &str) -> i64 {
        let id = self.customer_writes(number, from, wamid, 1).await;
        let (status, _) = self
            .api
            .post(&format!("/api/v1/conversations/{id}/take"), &self.shop)
            .await;
        assert_eq!(status, StatusCode::OK);
        id
    }

    async fn sent(&self, n: usize) -> Vec<wafleet_sim::SentMessage> {
        let sim = &self.sim;
        eventually(
            &format!("{n} messages at the Graph API"),
            Duration::from_secs(30),
            || async move {
                let m = sim.state.messages();
                (m.len() >= n).then_some(m)
            },
        )
        .await
    }
}

#[tokio::test]
async fn an_agent_takes_writes_to_and_releases_a_conversation_through_the_api() {
    let s = system().await;
    let id = s.customer_writes(SHOP, "573030", "wamid.A1", 1).await;
    let api = &s.api;

    let (status, list) = api.get("/api/v1/conversations", &s.shop).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["owner"], "bot");
    assert_eq!(list[0]["customer_key"], "573030");
    let (_, list) = api.get("/api/v1/conversations?owner=human", &s.shop).await;
    assert_eq!(list, json!([]), "nobody took it yet");

    // Only a human may write; and only with an idempotency key.
    let (status, _) = api.write(id, &s.shop, "r1", "Hola, soy Lucía").await;
    assert_eq!(status, StatusCode::CONFLICT, "the bot has it");
    let (status, taken) = api
        .post(&format!("/api/v1/conversations/{id}/take"), &s.shop)
        .await;
    assert_eq!((status, &taken["changed"]), (StatusCode::OK, &json!(true)));
    let (_, again) = api
        .post(&format!("/api/v1/conversations/{id}/take"), &s.shop)
        .await;
    assert_eq!(again["changed"], false);
    let (status, err) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{id}/messages"),
            Some(&s.shop),
            None,
            Some(json!({"text": "sin clave"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().unwrap().contains("Idempotency-Key"));
    // A misspelt field is refused, not ignored: `refrence` ignored would make a retry a second
    // message.
    let (status, err) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{id}/messages"),
            Some(&s.shop),
            None,
            Some(json!({"text": "con clave", "refrence": "r0"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `refrence`"),
        "{err}"
    );

    let (status, queued) = api.write(id, &s.shop, "r1", "Hola, soy Lucía").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(queued["fresh"], true);
    let sent = s.sent(2).await;
    assert_eq!(
        (sent[1].recipient.as_str(), sent[1].body.as_str()),
        ("573030", "Hola, soy Lucía")
    );
    // A retry after a timeout sends nothing twice; the key with another text is refused.
    let (status, retried) = api.write(id, &s.shop, "r1", "Hola, soy Lucía").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&retried["fresh"], &retried["part_ids"]),
        (&json!(false), &queued["part_ids"])
    );
    let (status, _) = api.write(id, &s.shop, "r1", "Otro texto").await;
    assert_eq!(status, StatusCode::CONFLICT);
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE kind = 'agent' AND state = 'accepted'",
        1,
        30,
    )
    .await;
    assert_eq!(s.sim.state.messages().len(), 2);

    let (status, shown) = api
        .get(&format!("/api/v1/conversations/{id}"), &s.shop)
        .await;
    assert_eq!(status, StatusCode::OK);
    let lines = shown["lines"].as_array().unwrap();
    let sides: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["side"].as_str().unwrap(),
                l["text"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(sides[0], ("customer", "hola"));
    assert_eq!(sides[1].0, "bot");
    assert_eq!(sides[2], ("agent", "Hola, soy Lucía"));
    assert_eq!(lines[2]["agent"], "Lucía");

    let (status, released) = api
        .post(&format!("/api/v1/conversations/{id}/release"), &s.shop)
        .await;
    assert_eq!(
        (status, &released["owner"]),
        (StatusCode::OK, &json!("bot"))
    );
    let owner: (String,) = sqlx::query_as("SELECT owner FROM conversations WHERE id = $1")
        .bind(id)
        .fetch_one(&s.pg)
        .await
        .unwrap();
    assert_eq!(owner.0, "bot");
}

#[tokio::test]
async fn every_call_needs_a_live_token_that_reaches_the_conversations_number() {
    let s = system().await;
    let id = s.customer_writes(SHOP, "573031", "wamid.B1", 1).await;
    let api = &s.api;
    let path = format!("/api/v1/conversations/{id}");

    let (status, _) = api
        .call(reqwest::Method::GET, &path, None, None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let res = api
        .http
        .get(format!("{}{path}", api.url))
        .bearer_auth("wfa_not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");

    // Another number's token: the conversation does not exist for it, and it cannot act on it.
    assert_eq!(api.get(&path, &s.other).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        api.post(&format!("{path}/take"), &s.other).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/api/v1/conversations", &s.other).await.1,
        json!([])
    );
    assert_eq!(api.get(&path, &s.all).await.0, StatusCode::OK);
    assert_eq!(
        api.get("/api/v1/conversations/999999", &s.all).await.0,
        StatusCode::NOT_FOUND
    );
    let owner: (String,) = sqlx::query_as("SELECT owner FROM conversations WHERE id = $1")
        .bind(id)
        .fetch_one(&s.pg)
        .await
        .unwrap();
    assert_eq!(owner.0, "bot", "the other number's token changed nothing");

    // Bad input is named.
    let (status, _) = api.get("/api/v1/conversations?owner=robots", &s.shop).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let res = api
        .http
        .post(format!("{}{path}/messages", api.url))
        .bearer_auth(&s.shop)
        .header("idempotency-key", "k")
        .header("content-type", "application/json")
        .body("{\"text\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // A revoked token stops at once.
    assert!(api_tokens::revoke(&s.pg, "shop").await.unwrap());
    assert_eq!(api.get(&path, &s.shop).await.0, StatusCode::UNAUTHORIZED);
    let unauthorized = scrape_metric(
        &api.http,
        &api.url,
        "wafleet_api_requests_total{status=\"401\"}",
    )
    .await;
    assert!(unauthorized >= 3.0, "{unauthorized}");
}

/// Reads server-sent events from an open response until `n` events (keep-alive comments left
/// out): (id, event, data).
async fn read_events(res: &mut reqwest::Response, n: usize) -> Vec<(String, String, Value)> {
    let mut buf = String::new();
    let mut events = Vec::new();
    let read = async {
        while events.len() < n {
            let chunk = res.chunk().await.unwrap().expect("the stream stays open");
            buf.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let mut e = (String::new(), String::new(), Value::Null);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        e.0 = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        e.1 = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        e.2 = serde_json::from_str(v.trim()).unwrap();
                    }
                }
                // A block with only an id (the resume point sent first) dispatches no event.
                if !e.0.is_empty() && !e.2.is_null() {
                    events.push(e);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("events within 30 s");
    events
}

#[tokio::test]
async fn the_event_stream_brings_handovers_live_only_for_the_tokens_numbers_and_resumes() {
    let s = system().await;
    let shop_conv = s.customer_writes(SHOP, "573032", "wamid.C1", 1).await;
    let other_conv = s.customer_writes(OTHER, "573033", "wamid.C2", 2).await;
    let api = &s.api;
    let open = |token: String, last: Option<String>| async move {
        let res = api.events(&token, last.as_deref()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        res
    };
    // From now: the stream is open before anything happens.
    let mut live = open(s.shop.clone(), None).await;
    api.post(&format!("/api/v1/conversations/{shop_conv}/take"), &s.shop)
        .await;
    let got = read_events(&mut live, 1).await;
    assert_eq!(got[0].1, "handover");
    assert_eq!(got[0].2["conversation_id"], shop_conv);
    assert_eq!(got[0].2["reason"], "agent");
    let first = got[0].0.clone();

    // The customer writes while a human has the conversation: the agents are told.
    let body = text_message(
        SHOP,
        "573032",
        "wamid.C3",
        chrono::Utc::now().timestamp(),
        "¿hola?",
    );
    assert_eq!(s.ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    let got = read_events(&mut live, 1).await;
    assert_eq!(
        (got[0].1.as_str(), &got[0].2["reason"]),
        ("message", &json!("customer"))
    );

    // A scoped token sees only its number's events, whatever came before.
    api.post(&format!("/api/v1/conversations/{other_conv}/take"), &s.all)
        .await;
    let mut other = open(s.other.clone(), Some("0-0".into())).await;
    let got = read_events(&mut other, 1).await;
    assert_eq!(got[0].2["conversation_id"], other_conv);

    // Reconnecting after the first event resumes right after it.
    api.post(
        &format!("/api/v1/conversations/{shop_conv}/release"),
        &s.shop,
    )
    .await;
    let mut resumed = open(s.shop.clone(), Some(first)).await;
    let got = read_events(&mut resumed, 2).await;
    assert_eq!(
        got.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(),
        ["message", "release"]
    );
    drop((live, other, resumed));
    let _ = &s.cfg;
}

#[tokio::test]
async fn a_merged_conversation_is_announced_and_its_old_id_points_to_the_survivor() {
    let s = system().await;
    let older = s.taken(SHOP, "573060", "wamid.G1").await;
    // The customer writes from their new number before Meta's change message is processed.
    let newer = s.customer_writes(SHOP, "573069", "wamid.G2", 2).await;
    let api = &s.api;
    let mut live = api.events(&s.shop, None).await;
    let now = chrono::Utc::now().timestamp();
    let change = json!({"from": "573060", "id": "wamid.G3", "timestamp": (now - 3600).to_string(),
        "type": "system", "system": {"body": "User changed from 573060 to 573069",
        "type": "user_changed_number", "wa_id": "573069"}});
    let body = message_body(SHOP, "573060", change);
    assert_eq!(s.ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    let got = read_events(&mut live, 1).await;
    assert_eq!(got[0].1, "merged");
    assert_eq!(got[0].2["conversation_id"], older);
    assert_eq!(got[0].2["merged_id"], newer);
    assert!(
        !got[0].2.to_string().contains("57306"),
        "no phone number in the event"
    );
    // The removed id answers 404 naming the survivor, to every call a dashboard makes with it.
    let (status, err) = api
        .get(&format!("/api/v1/conversations/{newer}"), &s.shop)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["merged_into"], older);
    let (status, err) = api
        .post(&format!("/api/v1/conversations/{newer}/take"), &s.all)
        .await;
    assert_eq!(
        (status, &err["merged_into"]),
        (StatusCode::NOT_FOUND, &json!(older))
    );
    // A token that does not reach the survivor's number learns nothing of it.
    let (status, err) = api
        .get(&format!("/api/v1/conversations/{newer}"), &s.other)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(err.get("merged_into").is_none(), "{err}");
    drop(live);
    let _ = &s.cfg;
}

#[tokio::test]
async fn an_agent_cannot_write_to_a_former_holder_once_their_number_passed_to_another_customer() {
    let s = system().await;
    // The number's former holder, with an agent; then the customer, from their old number.
    let former = s.taken(SHOP, "573079", "wamid.P1").await;
    s.customer_writes(SHOP, "573070", "wamid.P2", 2).await;
    let api = &s.api;
    let mut live = api.events(&s.shop, None).await;
    // Sent after the former holder's message: they had the number before the customer.
    let at = chrono::Utc::now().timestamp() + 1;
    let change = json!({"from": "573070", "id": "wamid.P3", "timestamp": at.to_string(),
        "type": "system", "system": {"body": "User changed from 573070 to 573079",
        "type": "user_changed_number", "wa_id": "573079"}});
    let body = message_body(SHOP, "573070", change);
    assert_eq!(s.ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    let got = read_events(&mut live, 1).await;
    assert_eq!(got[0].1, "number_moved");
    assert_eq!(got[0].2["conversation_id"], former);
    assert!(
        !got[0].2.to_string().contains("57307"),
        "no phone number in the event"
    );
    let (status, err) = api.write(former, &s.shop, "r1", "¿sigue ahí?").await;
    assert_eq!(status, StatusCode::GONE, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("belongs to someone else"),
        "{err}"
    );
    // Still there to read, and what a dashboard lists says the number moved on.
    let (status, shown) = api
        .get(&format!("/api/v1/conversations/{former}"), &s.shop)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!shown["lines"].as_array().unwrap().is_empty(), "{shown}");
    let (_, list) = api.get("/api/v1/conversations", &s.shop).await;
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == former)
        .unwrap();
    assert_eq!(listed["customer_key"], format!("moved:{former}"));
    drop(live);
    let _ = &s.cfg;
}

/// Conversations' ids, keys and message counts of `number`, by id.
async fn conversations_of(pg: &PgPool, number: &str) -> Vec<(i64, String, i64)> {
    sqlx::query_as(
        "SELECT c.id, c.customer_key, (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id)
           FROM conversations c JOIN channels ch ON ch.id = c.channel_id
          WHERE ch.phone_number_id = $1 ORDER BY c.id",
    )
    .bind(number)
    .fetch_all(pg)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_number_change_on_one_business_number_leaves_another_numbers_conversations_alone() {
    let s = system().await;
    let shop_conv = s.taken(SHOP, "573090", "wamid.T1").await;
    // The other business's customers: one who wrote before the change (a former holder, were
    // the numbers one), one who writes after its date (the changing customer's own, were they).
    s.customer_writes(OTHER, "573091", "wamid.T2", 2).await;
    s.customer_writes(OTHER, "573092", "wamid.T3", 3).await;
    let before = conversations_of(&s.pg, OTHER).await;
    let api = &s.api;
    let mut other_live = api.events(&s.other, None).await;
    assert_eq!(other_live.status(), StatusCode::OK);
    let now = chrono::Utc::now().timestamp();
    let change = |old: &str, new: &str, wamid: &str, ts: i64| {
        let change = json!({"from": old, "id": wamid, "timestamp": ts.to_string(),
            "type": "system", "system": {"body": format!("User changed from {old} to {new}"),
            "type": "user_changed_number", "wa_id": new}});
        message_body(SHOP, old, change)
    };
    let key_is = |key: &'static str| {
        let pg = s.pg.clone();
        async move {
            let (k,): (String,) =
                sqlx::query_as("SELECT customer_key FROM conversations WHERE id = $1")
                    .bind(shop_conv)
                    .fetch_one(&pg)
                    .await
                    .unwrap();
            (k == key).then_some(())
        }
    };
    // On the shop's number: to a number the other business's customer wrote from before.
    let body = change("573090", "573091", "wamid.T4", now + 60);
    assert_eq!(s.ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    eventually("the change followed", Duration::from_secs(30), || {
        key_is("573091")
    })
    .await;
    // Then to one the other business's customer wrote from only after the change's date.
    let body = change("573091", "573092", "wamid.T5", now - 3600);
    assert_eq!(s.ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    eventually(
        "the second change followed",
        Duration::from_secs(30),
        || key_is("573092"),
    )
    .await;

    assert_eq!(
        conversations_of(&s.pg, OTHER).await,
        before,
        "the other number's conversations keep their keys and messages"
    );
    let (merges, moves): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM conversation_merges), (SELECT count(*) FROM number_moves)",
    )
    .fetch_one(&s.pg)
    .await
    .unwrap();
    assert_eq!((merges, moves), (0, 0));
    for (id, _, _) in &before {
        let (status, shown) = api
            .get(&format!("/api/v1/conversations/{id}"), &s.other)
            .await;
        assert_eq!(status, StatusCode::OK, "{shown}");
    }
    // The other number's stream carried nothing of the shop's changes: its first event is the
    // handover made after them.
    let (status, _) = api
        .post(
            &format!("/api/v1/conversations/{}/take", before[0].0),
            &s.other,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = read_events(&mut other_live, 1).await;
    assert_eq!(
        (got[0].1.as_str(), &got[0].2["conversation_id"]),
        ("handover", &json!(before[0].0)),
        "{got:?}"
    );
    drop(other_live);
}

/// The parts of the conversations `ids`: wamid, state, error code, and how many of `wamids`
/// have statuses kept for later.
async fn parts_of(
    pg: &PgPool,
    ids: [i64; 2],
    wamids: &[String],
) -> Vec<(Option<String>, String, Option<i32>, i64)> {
    sqlx::query_as(
        "SELECT o.wamid, o.state, o.error_code,
                (SELECT count(DISTINCT e.wamid) FROM early_statuses e WHERE e.wamid = ANY($2))
           FROM outbound_messages o WHERE o.conversation_id = ANY($1) ORDER BY o.id",
    )
    .bind(ids)
    .bind(wamids)
    .fetch_all(pg)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_status_for_one_number_never_changes_another_numbers_message() {
    let s = system().await;
    // The shop's bot answered two customers; the other business's token has a conversation too.
    let first = s.customer_writes(SHOP, "573101", "wamid.U1", 1).await;
    let second = s.customer_writes(SHOP, "573102", "wamid.U2", 2).await;
    let theirs = s.customer_writes(OTHER, "573103", "wamid.U3", 3).await;
    let wamids: Vec<String> = sqlx::query_scalar(
        "SELECT wamid FROM outbound_messages WHERE conversation_id = ANY($1) ORDER BY id",
    )
    .bind([first, second])
    .fetch_all(&s.pg)
    .await
    .unwrap();
    assert_eq!(wamids.len(), 2);
    let api = &s.api;
    let mut other_live = api.events(&s.other, None).await;
    assert_eq!(other_live.status(), StatusCode::OK);
    // The other number's app (its business signs its own webhooks) names the shop's messages
    // in statuses of its own number: the window closed on one, the token expired on the other.
    let now = chrono::Utc::now().timestamp().to_string();
    let failed = |wamid: &str, code: i64| {
        json!({"id": wamid, "status": "failed", "timestamp": now, "recipient_id": "573101",
               "errors": [{"code": code, "title": "x"}]})
    };
    let body = status_body(
        OTHER,
        json!([failed(&wamids[0], 131047), failed(&wamids[1], 190)]),
    );
    assert_eq!(s.ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    // Both statuses handled: applied to the shop's parts (failed, or reopened for a resend), or
    // kept as statuses of messages the number does not know.
    let untouched: Vec<_> = wamids
        .iter()
        .map(|w| (Some(w.clone()), "accepted".to_string(), None))
        .collect();
    let now = eventually("both statuses handled", Duration::from_secs(30), || async {
        let now = parts_of(&s.pg, [first, second], &wamids).await;
        let kept = now.iter().all(|p| p.3 == 2);
        let now: Vec<_> = now.into_iter().map(|(w, st, c, _)| (w, st, c)).collect();
        (kept || now != untouched).then_some(now)
    })
    .await;
    assert_eq!(
        now, untouched,
        "the shop's messages are not the other number's to fail"
    );
    let owners: Vec<String> =
        sqlx::query_scalar("SELECT owner FROM conversations WHERE id = ANY($1) ORDER BY id")
            .bind([first, second])
            .fetch_all(&s.pg)
            .await
            .unwrap();
    assert_eq!(
        owners,
        ["bot", "bot"],
        "nor its bot's conversations to hand over"
    );
    let (paused,): (bool,) = sqlx::query_as(
        "SELECT sends_paused_until IS NOT NULL FROM channels WHERE phone_number_id = $1",
    )
    .bind(SHOP)
    .fetch_one(&s.pg)
    .await
    .unwrap();
    assert!(!paused, "nor its sends to pause");
    // The other number's stream names none of the shop's conversations: its first event is its
    // own take, made after the statuses.
    let (status, _) = api
        .post(&format!("/api/v1/conversations/{theirs}/take"), &s.other)
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = read_events(&mut other_live, 1).await;
    assert_eq!(got[0].2["conversation_id"], theirs, "{got:?}");
    drop(other_live);
}

#[tokio::test]
async fn a_revoked_token_stops_receiving_events_on_its_open_stream() {
    let s = system().await;
    let id = s.customer_writes(SHOP, "573040", "wamid.V1", 1).await;
    let api = &s.api;
    let live = api.events(&s.shop, None).await;
    assert_eq!(live.status(), StatusCode::OK);
    // The token leaks; the operator revokes it ("the API refuses it from now on").
    assert!(api_tokens::revoke(&s.pg, "shop").await.unwrap());
    assert_eq!(
        api.get("/api/v1/conversations", &s.shop).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Activity afterwards must not reach the revoked token's open stream.
    api.post(&format!("/api/v1/conversations/{id}/take"), &s.all)
        .await;
    // The stream ends at its next read, without the event.
    let rest = tokio::time::timeout(Duration::from_secs(30), live.text())
        .await
        .expect("the stream closes")
        .unwrap();
    assert!(
        !rest.contains("event:"),
        "the revoked token still receives events: {rest:?}"
    );
}

#[tokio::test]
async fn a_nul_character_in_an_agents_message_is_a_bad_request_not_an_outage() {
    let s = system().await;
    let id = s.taken(SHOP, "573041", "wamid.N1").await;
    let api = &s.api;
    // Valid JSON; Postgres TEXT cannot hold U+0000.
    let (status, body) = api.write(id, &s.shop, "nul-1", "hola\u{0}").await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a permanent input error answered as retryable: {body}"
    );
}

#[tokio::test]
async fn an_event_id_redis_refuses_is_a_bad_request_not_an_empty_stream() {
    let s = system().await;
    let api = &s.api;
    let res = api.events(&s.shop, Some("99999999999999999999-0")).await;
    let status = res.status();
    let body = tokio::time::timeout(Duration::from_secs(10), res.text())
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "answered {status} with body {body:?} (the stream closed at once: EventSource reconnects forever)"
    );
}

#[tokio::test]
async fn event_streams_a_client_closed_give_their_slot_back() {
    let s = system().await;
    let api = &s.api;
    let open = || async { Ok::<_, ()>(api.events(&s.shop, None).await) };
    // max_event_streams is 4 in these tests.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let res = open().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        streams.push(res);
    }
    // The dashboard is reloaded: its connections close.
    assert_eq!(
        open().await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a fifth stream is over WAFLEET_API_MAX_EVENT_STREAMS"
    );
    drop(streams);
    eventually(
        "a slot given back by a closed stream",
        Duration::from_secs(20),
        || async { (open().await.unwrap().status() == StatusCode::OK).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn retrying_a_message_after_the_customer_was_erased_answers_gone() {
    let s = system().await;
    let id = s.taken(SHOP, "573042", "wamid.G1").await;
    let api = &s.api;
    let (status, _) = api.write(id, &s.shop, "g1", "Hola, soy Lucía").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    s.sent(2).await;
    let mut con = s.cfg.redis().await;
    wafleet::erasure::erase_customer(&s.pg, &mut con, &s.cfg.keys(), SHOP, "573042")
        .await
        .unwrap()
        .unwrap();
    // The dashboard's retry of the same request (it timed out before the erasure).
    let (status, body) = api.write(id, &s.shop, "g1", "Hola, soy Lucía").await;
    assert_eq!(status, StatusCode::GONE, "{body}");
}

#[tokio::test]
async fn retrying_a_template_by_phone_after_the_customer_was_erased_sends_nothing_again() {
    let s = system().await;
    let (api, shop, pg) = (&s.api, &s.shop, &s.pg);
    let path = format!("/api/v1/channels/{SHOP}/templates");
    let start = |key: &'static str, to: &'static str| {
        let body = json!({"to": to, "name": "order_shipped", "language": "es",
                          "params": ["#2048"]});
        api.call(
            reqwest::Method::POST,
            &path,
            Some(shop),
            Some(key),
            Some(body),
        )
    };
    let (status, first) = start("o1", "+57 300 555-0170").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    s.sent(1).await;
    let mut con = s.cfg.redis().await;
    wafleet::erasure::erase_customer(pg, &mut con, &s.cfg.keys(), SHOP, "573005550170")
        .await
        .unwrap()
        .expect("the customer is found");
    // The dashboard's retry of the same request (it timed out before the erasure): the
    // template is not sent a second time, nor is a conversation made for the erased number.
    let (status, body) = start("o1", "573005550170").await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    let conversations = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM conversations")
            .fetch_one(pg)
            .await
            .unwrap();
        n
    };
    assert_eq!(
        conversations().await,
        1,
        "a conversation made for the retry"
    );
    // The key is the request's only for that number: another customer's request with it goes
    // out, and so does a new request (a new key) to the erased customer.
    let (status, body) = start("o1", "573005550171").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = start("o2", "573005550170").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let sent = s.sent(3).await;
    assert_eq!(conversations().await, 3);
    let mut to: Vec<&str> = sent[1..].iter().map(|m| m.recipient.as_str()).collect();
    to.sort_unstable();
    assert_eq!(to, ["573005550170", "573005550171"]);
}

#[tokio::test]
async fn a_stream_opened_from_now_that_drops_before_its_first_event_misses_nothing() {
    let s = system().await;
    let id = s.customer_writes(SHOP, "573043", "wamid.F1", 1).await;
    let api = &s.api;
    // A dashboard on a quiet number: open from now, nothing happens, the connection drops
    // (an API redeploy, a proxy). It has received no id, so it reconnects without one.
    let mut first = api.events(&s.shop, None).await;
    assert_eq!(first.status(), StatusCode::OK);
    // What an EventSource keeps as lastEventId: any `id:` line the stream sent so far.
    let mut last_id = None;
    let mut seen = String::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(1), first.chunk())
        .await
        .map(|c| c.unwrap())
    {
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
        for line in seen.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                last_id = Some(v.trim().to_string());
            }
        }
    }
    drop(first);
    // Meanwhile a customer is handed to a human.
    api.post(&format!("/api/v1/conversations/{id}/take"), &s.all)
        .await;
    let mut again = api.events(&s.shop, last_id.as_deref()).await;
    let got = tokio::time::timeout(Duration::from_secs(8), read_events(&mut again, 1)).await;
    assert!(
        got.is_ok(),
        "the handover made while the dashboard reconnected is never delivered (the stream gave \
         no id to resume from)"
    );
}

/// A deployment with no channel yet: ingest and the API, and tokens of each kind.
struct Platform {
    api: Api,
    ingest: Ingest,
    pg: PgPool,
    cfg: TestConfig,
    admin: String,
    /// Every number, but no channel management.
    agents: String,
    /// Only `OTHER`'s.
    other: String,
}

async fn platform() -> Platform {
    let cfg = TestConfig::new().await;
    cfg.add_channel(OTHER, |_| {}).await;
    let pg = cfg.pg().await;
    let add = |name: &'static str, grant: api_tokens::Grant| {
        let pg = pg.clone();
        async move { api_tokens::add(&pg, name, &grant).await.unwrap().unwrap() }
    };
    Platform {
        admin: add("console", api_tokens::Grant::Admin).await,
        agents: add("agents", api_tokens::Grant::Agents(vec![])).await,
        other: add("other", api_tokens::Grant::Agents(vec![OTHER.into()])).await,
        ingest: Ingest::start(cfg.ingest_settings()).await,
        api: Api::start(&cfg).await,
        pg,
        cfg,
    }
}

const NEW_SECRET: &str = "app-secret-of-the-new-number";
const NEW_TOKEN: &str = "EAAG-access-token-of-the-new-number";
const NEW_KEY: &str = "sk-ant-key-of-the-new-number";

#[tokio::test]
async fn an_admin_connects_a_number_through_the_api_and_ingest_serves_it() {
    let p = platform().await;
    let path = format!("/api/v1/channels/{SHOP}");
    let new = json!({
        "name": "Tienda Kaiu",
        "waba_id": "102290129340398",
        "app_id": "1946350872345",
        "app_secrets": [NEW_SECRET],
        "verify_token": "verify-the-new-number",
        "access_token": NEW_TOKEN,
        "settings": {"history_limit": 8, "handover_keywords": ["asesor", "hablar con alguien"]},
        "models": [{"name": "claude", "kind": "anthropic", "base_url": "https://api.anthropic.com",
                    "model": "claude-sonnet-4-5", "api_key": NEW_KEY}],
    });
    // An agents' token reaches every number but manages none.
    let (status, _) = p.api.put(&path, &p.agents, new.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = p.api.get(&path, &p.admin).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused PUT added the channel"
    );

    // A number with spaces around it in the path is refused, not stored half-trimmed.
    let (status, _) = p
        .api
        .put(
            &format!("/api/v1/channels/%20{SHOP}"),
            &p.admin,
            new.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = p.api.get(&path, &p.admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, shown) = p.api.put(&path, &p.admin, new.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{shown}");
    assert_eq!(shown["name"], "Tienda Kaiu");
    assert_eq!(shown["app_id"], "1946350872345");
    assert_eq!(shown["app_secrets"], 1);
    assert_eq!(shown["access_token"], true);
    assert_eq!(shown["settings"]["history_limit"], "8");
    assert_eq!(
        shown["settings"]["handover_keywords"],
        "asesor, hablar con alguien"
    );
    assert_eq!(shown["models"][0]["model"], "claude-sonnet-4-5");
    // No answer carries a secret, and Postgres holds them sealed.
    let text = shown.to_string();
    for secret in [NEW_SECRET, NEW_TOKEN, NEW_KEY, "verify-the-new-number"] {
        assert!(!text.contains(secret), "the answer shows a secret");
    }
    let dump: String = sqlx::query_scalar(
        "SELECT c::text || string_agg(p::text, '') FROM channels c
           JOIN channel_llm_providers p ON p.channel_id = c.id
          WHERE c.phone_number_id = $1 GROUP BY c.*",
    )
    .bind(SHOP)
    .fetch_one(&p.pg)
    .await
    .unwrap();
    for secret in [NEW_SECRET, NEW_TOKEN, NEW_KEY] {
        let hex = hex::encode(secret);
        assert!(
            !dump.contains(secret) && !dump.contains(&hex),
            "a secret is stored in the clear"
        );
    }

    // Ingest sees the new number within seconds: its verify token answers Meta's handshake,
    // and a webhook signed with its app secret goes onto the streams.
    let http = reqwest::Client::new();
    let verify = format!(
        "{}/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=verify-the-new-number&hub.challenge=4242",
        p.ingest.url
    );
    eventually(
        "ingest to know the new number",
        Duration::from_secs(10),
        || {
            let (http, verify) = (http.clone(), verify.clone());
            async move {
                let res = http.get(&verify).send().await.ok()?;
                (res.status() == 200).then_some(())
            }
        },
    )
    .await;
    let body = text_message(
        SHOP,
        "573001",
        "wamid.NEW1",
        chrono::Utc::now().timestamp(),
        "hola",
    );
    assert_eq!(p.ingest.post_signed(&body, NEW_SECRET).await.status(), 200);
    let mut con = p.cfg.redis().await;
    let keys = p.cfg.keys();
    let inbound: Vec<String> = (0..p.cfg.partitions).map(|n| keys.inbound(n)).collect();
    let updates = all_updates(&mut con, &inbound).await;
    assert_eq!(
        updates.len(),
        1,
        "the new number's message was not enqueued"
    );
    // And on its app's own path, which checks that app's secret alone.
    let body = text_message(
        SHOP,
        "573001",
        "wamid.NEW2",
        chrono::Utc::now().timestamp(),
        "hola",
    );
    let on_app_path = http
        .post(format!("{}/webhooks/whatsapp/1946350872345", p.ingest.url))
        .header("x-hub-signature-256", sign(&body, NEW_SECRET.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(on_app_path.status(), 200);
    assert_eq!(all_updates(&mut con, &inbound).await.len(), 2);
    // An App ID is Meta's number.
    let (status, refused) = p
        .api
        .put(&path, &p.admin, json!({"app_id": "my-app"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused.to_string().contains("app_id"), "{refused}");
    // An allowlist entry is a number as people write it (stored as its digits) or a
    // business-scoped id; anything else is refused without being echoed (a 400's body ends up
    // in clients' and proxies' logs).
    let (status, shown) = p
        .api
        .put(
            &path,
            &p.admin,
            json!({"phone_allowlist": ["573001112233", "+57 300 111 2244"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    let allowlist = || async {
        let (list,): (Vec<String>,) =
            sqlx::query_as("SELECT phone_allowlist FROM channels WHERE phone_number_id = $1")
                .bind(SHOP)
                .fetch_one(&p.pg)
                .await
                .unwrap();
        list
    };
    assert_eq!(allowlist().await, ["573001112233", "573001112244"]);
    let (status, refused) = p
        .api
        .put(
            &path,
            &p.admin,
            json!({"phone_allowlist": ["573001112233", "Camila Rojas"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let said = refused["error"].as_str().unwrap();
    assert!(said.contains("allowlist"), "{said}");
    assert!(!said.contains("Camila"), "{said}");
    assert_eq!(allowlist().await, ["573001112233", "573001112244"]);
    // (Served again without one, as the rest of this test expects.)
    let (status, _) = p
        .api
        .put(&path, &p.admin, json!({"phone_allowlist": []}))
        .await;
    assert_eq!(status, StatusCode::OK);

    // A change of one field leaves the others, secrets included, as they were.
    let (status, shown) = p.api.put(&path, &p.admin, json!({"bot_mode": "off"})).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["bot_mode"], "off");
    assert_eq!(shown["models"].as_array().unwrap().len(), 1);
    let stored = wafleet::store::channels::get(&p.pg, &p.cfg.cipher(), SHOP)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.access_token.unwrap().expose(), NEW_TOKEN);
    assert_eq!(stored.app_secrets.len(), 1);

    // A PUT is checked whole: one bad setting and the bot mode before it is not changed either.
    let (status, refused) = p
        .api
        .put(
            &path,
            &p.admin,
            json!({"bot_mode": "on", "settings": {"pair_burst": 99}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(refused["error"].as_str().unwrap().contains("pair_burst"));
    let (_, shown) = p.api.get(&path, &p.admin).await;
    assert_eq!(shown["bot_mode"], "off");
    // A misspelt field is refused, not taken for "leave it as it is".
    let (status, _) = p
        .api
        .put(&path, &p.admin, json!({"app_secret": "rotated"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Disabling stops serving it; `[]` removes its own models; null puts a setting back.
    let (status, shown) = p
        .api
        .put(
            &path,
            &p.admin,
            json!({"enabled": false, "models": [], "settings": {"history_limit": null}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["enabled"], false);
    assert_eq!(shown["models"], json!([]));
    assert_eq!(shown["settings"]["history_limit"], "20");

    // Tokens see only the channels they reach.
    let (_, all) = p.api.get("/api/v1/channels", &p.agents).await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, mine) = p.api.get("/api/v1/channels", &p.other).await;
    let numbers: Vec<&str> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["phone_number_id"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, vec![OTHER]);
    let (status, _) = p.api.get(&path, &p.other).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_admin_keeps_a_numbers_knowledge_base_through_the_api() {
    let p = platform().await;
    let entry = |title: &str| format!("/api/v1/channels/{OTHER}/knowledge/{title}");
    let text = "Enviamos a toda Colombia: Medellín y Bogotá en 2 días hábiles.";
    let (status, _) = p
        .api
        .put(&entry("Envíos"), &p.other, json!({"text": text}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Added, then replaced by the same title.
    for want in [StatusCode::CREATED, StatusCode::OK] {
        let (status, body) = p
            .api
            .put(
                &entry("Env%C3%ADos"),
                &p.admin,
                json!({"text": text, "language": "spanish"}),
            )
            .await;
        assert_eq!(status, want, "{body}");
    }
    // What the LLM stage finds for a customer's message.
    let (channel_id,): (i64,) =
        sqlx::query_as("SELECT id FROM channels WHERE phone_number_id = $1")
            .bind(OTHER)
            .fetch_one(&p.pg)
            .await
            .unwrap();
    let found =
        wafleet::store::knowledge::relevant(&p.pg, channel_id, "¿hacen envíos a Medellín?", 3)
            .await
            .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, "Envíos");

    let (status, body) = p
        .api
        .put(
            &entry("x"),
            &p.admin,
            json!({"text": text, "language": "klingon"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // A title past what an index row takes is the request's fault, not an outage to retry.
    let (status, body) = p
        .api
        .put(
            &entry(&"título".repeat(500)),
            &p.admin,
            json!({"text": text}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = p
        .api
        .put(
            "/api/v1/channels/999/knowledge/x",
            &p.admin,
            json!({"text": text}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let list = format!("/api/v1/channels/{OTHER}/knowledge");
    let (status, entries) = p.api.get(&list, &p.other).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(entries[0]["title"], "Envíos");
    assert_eq!(entries[0]["language"], "spanish");

    let envios = entry("Env%C3%ADos");
    let delete = |token: String| {
        let (api, path) = (&p.api, envios.clone());
        async move {
            api.call(reqwest::Method::DELETE, &path, Some(&token), None, None)
                .await
        }
    };
    assert_eq!(delete(p.other.clone()).await.0, StatusCode::FORBIDDEN);
    assert_eq!(delete(p.admin.clone()).await.0, StatusCode::NO_CONTENT);
    assert_eq!(delete(p.admin.clone()).await.0, StatusCode::NOT_FOUND);
    let (_, entries) = p.api.get(&list, &p.admin).await;
    assert_eq!(entries, json!([]));
}

/// Pauses `pnid`'s sends for ten minutes for Meta's `code`, as the sender does.
async fn pause(pg: &PgPool, pnid: &str, code: i32) {
    sqlx::query(
        "UPDATE channels SET sends_paused_until = now() + interval '10 minutes',
                sends_paused_code = $2, sends_paused_reason = 'Graph configuration error ' || $2
          WHERE phone_number_id = $1",
    )
    .bind(pnid)
    .bind(code)
    .execute(pg)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_new_access_token_through_the_api_lifts_only_a_pause_a_token_fixes() {
    let p = platform().await;
    p.cfg.add_channel(SHOP, |_| {}).await;
    let lifted = || {
        metric_value(
            &wafleet::telemetry::metrics_handle().render(),
            r#"wafleet_channel_pauses_lifted_total{by="new_token"}"#,
        )
    };
    let p = &p;
    let renew = |pnid: &'static str| async move {
        p.api
            .put(
                &format!("/api/v1/channels/{pnid}"),
                &p.admin,
                json!({"access_token": "EAAG-renewed"}),
            )
            .await
    };
    let before = lifted();
    pause(&p.pg, OTHER, 190).await;
    pause(&p.pg, SHOP, 131031).await;
    // Shown to whoever reaches the number: until when, the code and what it means.
    let (status, shown) = p
        .api
        .get(&format!("/api/v1/channels/{OTHER}"), &p.other)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["sends_paused"]["code"], 190, "{shown}");
    assert_eq!(shown["sends_paused"]["meaning"], "the access token expired");
    assert_eq!(shown["sends_paused"]["new_token_lifts"], true);
    assert!(shown["sends_paused"]["until"].is_string(), "{shown}");
    let (_, all) = p.api.get("/api/v1/channels", &p.admin).await;
    let locked = all
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["phone_number_id"] == SHOP)
        .unwrap();
    assert_eq!(locked["sends_paused"]["code"], 131031, "{all}");
    assert_eq!(locked["sends_paused"]["new_token_lifts"], false);

    let (status, saved) = renew(OTHER).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(saved["sends_paused"], Value::Null, "{saved}");
    assert_eq!(saved["pause_lifted"]["code"], 190, "{saved}");
    assert_eq!(lifted(), before + 1.0);

    let (status, saved) = renew(SHOP).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(saved["sends_paused"]["code"], 131031, "{saved}");
    assert_eq!(saved["pause_lifted"], Value::Null, "{saved}");
    assert_eq!(lifted(), before + 1.0);
    assert_eq!(
        count(
            &p.pg,
            "SELECT count(*) FROM channels WHERE sends_paused_until > now()"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn without_the_encryption_key_the_api_shows_channels_but_changes_none() {
    let p = platform().await;
    let keyless = Api::start_with(&p.cfg, None, "http://127.0.0.1:9").await;
    let (status, body) = keyless
        .put(
            &format!("/api/v1/channels/{OTHER}"),
            &p.admin,
            json!({"access_token": "EAAG-new"}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("WAFLEET_ENCRYPTION_KEY")
    );
    let (status, shown) = keyless
        .get(&format!("/api/v1/channels/{OTHER}"), &p.admin)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["access_token"], true);
    let stored = wafleet::store::channels::get(&p.pg, &p.cfg.cipher(), OTHER)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.access_token.unwrap().expose(),
        &format!("token-{OTHER}")
    );
}

#[tokio::test]
async fn a_business_starts_a_conversation_with_a_template_to_a_customer_who_never_wrote() {
    let s = system().await;
    let api = &s.api;
    let path = format!("/api/v1/channels/{SHOP}/templates");
    let start = |token: &str, key: &str, to: &str, answered_by: &str| {
        let body = json!({"to": to, "name": "order_shipped", "language": "es",
                          "params": ["#1042"], "answered_by": answered_by});
        let (token, key) = (token.to_string(), key.to_string());
        let path = path.clone();
        async move {
            api.call(
                reqwest::Method::POST,
                &path,
                Some(&token),
                Some(&key),
                Some(body),
            )
            .await
        }
    };
    // Another number's token does not reach this one; a phone must be a phone.
    assert_eq!(
        start(&s.other, "o0", "573005550101", "bot").await.0,
        StatusCode::NOT_FOUND
    );
    // A misspelt field is refused, not ignored (`param` would send the template without its
    // values).
    let (status, err) = api
        .call(
            reqwest::Method::POST,
            &path,
            Some(&s.shop),
            Some("o0"),
            Some(
                json!({"to": "573005550101", "name": "order_shipped", "language": "es",
                        "param": ["#1042"]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `param`"),
        "{err}"
    );
    assert_eq!(
        start(&s.shop, "o0", "hola", "bot").await.0,
        StatusCode::BAD_REQUEST
    );

    // An order update the bot can talk about: the conversation stays with the bot.
    let (status, first) = start(&s.shop, "o1", "+57 300 555-0101", "bot").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let id = first["conversation_id"].as_i64().unwrap();
    let sent = s.sent(1).await;
    assert_eq!(sent[0].recipient, "573005550101");
    assert_eq!(sent[0].kind, "template");
    assert_eq!(sent[0].template.as_ref().unwrap()["name"], "order_shipped");
    // The dashboard's retry records and sends nothing twice.
    let (status, again) = start(&s.shop, "o1", "+57 300 555-0101", "bot").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["conversation_id"], id);
    // The customer answers in the same conversation, and the bot replies.
    let replied = s.customer_writes(SHOP, "573005550101", "wamid.O1", 2).await;
    assert_eq!(replied, id);
    assert_eq!(s.sim.state.messages().len(), 2, "the template went twice");

    // An agent following up: a human takes the conversation, and the customer's answer gets
    // no bot reply.
    let (status, taken) = start(&s.shop, "o2", "573005550102", "human").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{taken}");
    s.sent(3).await;
    let owner: String = sqlx::query_scalar("SELECT owner FROM conversations WHERE id = $1")
        .bind(taken["conversation_id"].as_i64().unwrap())
        .fetch_one(&s.pg)
        .await
        .unwrap();
    assert_eq!(owner, "human");
    // The agent gives it back; the dashboard's retry of its first request does not take it
    // again, and a request reusing the reference for another template is refused and takes
    // nothing either.
    let taken_id = taken["conversation_id"].as_i64().unwrap();
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{taken_id}/release"),
            Some(&s.shop),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, again) = start(&s.shop, "o2", "573005550102", "human").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let other = json!({"to": "573005550102", "name": "order_delayed", "language": "es",
                       "answered_by": "human"});
    let (status, refused) = api
        .call(
            reqwest::Method::POST,
            &path,
            Some(&s.shop),
            Some("o2"),
            Some(other),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let owner: String = sqlx::query_scalar("SELECT owner FROM conversations WHERE id = $1")
        .bind(taken_id)
        .fetch_one(&s.pg)
        .await
        .unwrap();
    assert_eq!(owner, "bot");

    // A number that serves only its allowlist starts no conversation with anyone else.
    sqlx::query(
        "UPDATE channels SET phone_allowlist = '{573009999999}' WHERE phone_number_id = $1",
    )
    .bind(SHOP)
    .execute(&s.pg)
    .await
    .unwrap();
    assert_eq!(
        start(&s.shop, "o3", "573005550103", "bot").await.0,
        StatusCode::CONFLICT
    );
}

#[tokio::test]
async fn the_bot_answers_a_reply_to_a_template_knowing_what_the_template_said() {
    let s = system().await;
    let pg = &s.pg;
    // The customer wrote three hours ago; sessions end after ten idle minutes.
    sqlx::query("UPDATE channels SET session_timeout_secs = 600 WHERE phone_number_id = $1")
        .bind(SHOP)
        .execute(pg)
        .await
        .unwrap();
    let earlier = chrono::Utc::now().timestamp() - 3 * 3600;
    let first = text_message(
        SHOP,
        "573005550150",
        "wamid.T0",
        earlier,
        "busco zapatos rojos",
    );
    assert_eq!(s.ingest.post_signed(&first, APP_SECRET).await.status(), 200);
    s.sent(1).await;

    // The order update, which the bot answers after; a parameter with personal data.
    let body = json!({"to": "573005550150", "name": "order_delayed", "language": "es",
                      "params": ["#1042", "ana@example.com"], "answered_by": "bot"});
    let (status, started) = s
        .api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/channels/{SHOP}/templates"),
            Some(&s.shop),
            Some("t1"),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    s.sent(2).await;
    let id = s.customer_writes(SHOP, "573005550150", "wamid.T1", 3).await;
    assert_eq!(started["conversation_id"], id);

    // The model read the template (before the customer's answer, so in the system prompt), with
    // its parameters redacted, and only the talk it started: the earlier session is left out.
    let asked = &s.sim.state.llm_requests()[1].body["messages"];
    let system = asked[0]["content"].as_str().unwrap();
    assert_eq!(asked[0]["role"], "system");
    assert!(
        system.contains("> [template: order_delayed] #1042 | [EMAIL]"),
        "{system}"
    );
    assert!(!system.contains("ana@example.com"));
    let turns: Vec<(&str, &str)> = asked.as_array().unwrap()[1..]
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(turns, [("user", "hola")]);
    let sessions: Vec<i32> = sqlx::query_scalar(
        "SELECT session_no FROM messages WHERE conversation_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pg)
    .await
    .unwrap();
    assert_eq!(sessions, [1, 2], "the template started the second session");
}

#[tokio::test]
async fn a_retried_template_takes_the_conversation_even_when_it_went_out_before_the_retry() {
    let s = system().await;
    let (api, shop) = (&s.api, &s.shop);
    let start = |answered_by: &str| {
        let body = json!({"to": "573005550170", "name": "order_shipped", "language": "es",
                          "params": ["#1042"], "answered_by": answered_by});
        async move {
            api.call(
                reqwest::Method::POST,
                &format!("/api/v1/channels/{SHOP}/templates"),
                Some(shop),
                Some("r1"),
                Some(body),
            )
            .await
        }
    };
    // The first request recorded the template (and Meta took it) but never took the
    // conversation (here: it asked for the bot, as a request cut off before its take leaves it).
    let (status, first) = start("bot").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let id = first["conversation_id"].as_i64().unwrap();
    let pg = &s.pg;
    eventually(
        "the template accepted",
        Duration::from_secs(30),
        || async move {
            let state: String = sqlx::query_scalar(
                "SELECT state FROM outbound_messages WHERE conversation_id = $1",
            )
            .bind(id)
            .fetch_one(pg)
            .await
            .unwrap();
            (state == "accepted").then_some(())
        },
    )
    .await;
    // Its retry sends nothing again, and takes the conversation.
    let (status, again) = start("human").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let owner: String = sqlx::query_scalar("SELECT owner FROM conversations WHERE id = $1")
        .bind(id)
        .fetch_one(pg)
        .await
        .unwrap();
    assert_eq!(owner, "human");
    assert_eq!(s.sim.state.messages().len(), 1);
}

#[tokio::test]
async fn a_template_whose_acceptance_was_lost_still_takes_the_wa_id_meta_names() {
    let s = system().await;
    // Meta takes the send but its answer never comes: the send is ambiguous, and only the status
    // webhooks, which carry our callback and Meta's recipient_id, tell.
    s.sim
        .state
        .add_fault(serde_json::from_value(json!({"hang": true, "count": 1})).unwrap());
    let body = json!({"to": "+52 55 1234 5679", "name": "order_shipped", "language": "es",
                      "params": ["#1042"], "answered_by": "human"});
    let (status, started) = s
        .api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/channels/{SHOP}/templates"),
            Some(&s.shop),
            Some("amb1"),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["conversation_id"].as_i64().unwrap();
    let pg = &s.pg;
    let row = eventually(
        "the send reconciled and the conversation re-keyed",
        Duration::from_secs(30),
        || async move {
            let row: (String, String, Option<String>) = sqlx::query_as(
                "SELECT c.customer_key, o.state, o.wamid FROM conversations c
                   JOIN outbound_messages o ON o.conversation_id = c.id WHERE c.id = $1",
            )
            .bind(id)
            .fetch_one(pg)
            .await
            .unwrap();
            (row.1 == "accepted" && row.0 == "5215512345679").then_some(row)
        },
    )
    .await;
    assert!(row.2.is_some_and(|w| w.starts_with("wamid.SIM")));
    assert_eq!(s.sim.state.messages().len(), 1, "sent once");
}

#[tokio::test]
async fn the_model_reads_a_template_in_the_wording_the_customer_read() {
    let s = system().await;
    let pg = &s.pg;
    // The business account is configured: the sender reads the template's wording from Meta.
    sqlx::query("UPDATE channels SET waba_id = '102290129340398' WHERE phone_number_id = $1")
        .bind(SHOP)
        .execute(pg)
        .await
        .unwrap();
    let (api, shop) = (&s.api, &s.shop);
    let start = |key: &str, to: &str, name: &str, params: Value| {
        let body = json!({"to": to, "name": name, "language": "es", "params": params,
                          "answered_by": "bot"});
        let key = key.to_string();
        async move {
            api.call(
                reqwest::Method::POST,
                &format!("/api/v1/channels/{SHOP}/templates"),
                Some(shop),
                Some(&key),
                Some(body),
            )
            .await
        }
    };
    let (status, _) = start(
        "w1",
        "573005550160",
        "order_delayed",
        json!(["#77", "ana@example.com"]),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // A template Meta does not have keeps its name and parameters.
    let (status, _) = start("w2", "573005550161", "no_such_template", json!(["#78"])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    s.sent(2).await;
    s.customer_writes(SHOP, "573005550160", "wamid.W1", 3).await;
    s.customer_writes(SHOP, "573005550161", "wamid.W2", 4).await;

    let systems: Vec<String> = s
        .sim
        .state
        .llm_requests()
        .iter()
        .map(|r| {
            r.body["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let wording = systems
        .iter()
        .find(|p| p.contains("#77"))
        .expect("the first customer's request");
    assert!(
        wording.contains("> Tu pedido #77 se retrasa: llegará el [EMAIL]. Disculpa las molestias."),
        "{wording}"
    );
    assert!(!wording.contains("ana@example.com") && !wording.contains("[template"));
    let named = systems
        .iter()
        .find(|p| p.contains("#78"))
        .expect("the second customer's request");
    assert!(
        named.contains("> [template: no_such_template] #78"),
        "{named}"
    );

    // Erasing the customer erases what the model read of the template too.
    let (mut con, keys) = (s.cfg.redis().await, s.cfg.keys());
    wafleet::erasure::erase_customer(pg, &mut con, &keys, SHOP, "573005550160")
        .await
        .unwrap()
        .expect("the customer is found");
    let kept: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT o.history_text FROM outbound_messages o
           JOIN conversations c ON c.id = o.conversation_id
          WHERE c.customer_key LIKE 'erased:%' AND o.kind = 'template'",
    )
    .fetch_all(pg)
    .await
    .unwrap();
    assert_eq!(kept, [None]);
}

#[tokio::test]
async fn a_mexican_customer_dialled_without_the_1_answers_in_the_conversation_the_agent_holds() {
    let s = system().await;
    let api = &s.api;
    let path = format!("/api/v1/channels/{SHOP}/templates");
    let shop = &s.shop;
    let start = |key: &str, to: &str, answered_by: &str| {
        let body = json!({"to": to, "name": "order_shipped", "language": "es",
                          "params": ["#2048"], "answered_by": answered_by});
        let (key, path) = (key.to_string(), path.clone());
        async move {
            api.call(
                reqwest::Method::POST,
                &path,
                Some(shop),
                Some(&key),
                Some(body),
            )
            .await
        }
    };
    // The business dials 52 + ten digits; Meta names the account 521 + the ten digits.
    let (status, first) = start("mx1", "+52 55 1234 5678", "human").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let id = first["conversation_id"].as_i64().unwrap();
    assert_eq!(s.sent(1).await[0].recipient, "525512345678");
    let pg = &s.pg;
    eventually(
        "the conversation keyed by Meta's wa_id",
        Duration::from_secs(30),
        || async move {
            let (key, wa_id): (String, Option<String>) =
                sqlx::query_as("SELECT customer_key, wa_id FROM conversations WHERE id = $1")
                    .bind(id)
                    .fetch_one(pg)
                    .await
                    .unwrap();
            (key == "5215512345678" && wa_id.as_deref() == Some("5215512345678")).then_some(())
        },
    )
    .await;

    // The customer's answer comes from the wa_id: it lands in the conversation the agent holds,
    // and the bot does not answer it.
    let answer = text_message(
        SHOP,
        "5215512345678",
        "wamid.MX1",
        chrono::Utc::now().timestamp(),
        "¿cuándo llega?",
    );
    assert_eq!(
        s.ingest.post_signed(&answer, APP_SECRET).await.status(),
        200
    );
    let stored = eventually(
        "the answer stored",
        Duration::from_secs(30),
        || async move {
            sqlx::query_as::<_, (i64, String)>(
                "SELECT conversation_id, owner_at_arrival FROM messages WHERE wamid = 'wamid.MX1'",
            )
            .fetch_optional(pg)
            .await
            .unwrap()
        },
    )
    .await;
    assert_eq!(stored, (id, "human".to_string()));
    let conversations: i64 = sqlx::query_scalar("SELECT count(*) FROM conversations")
        .fetch_one(pg)
        .await
        .unwrap();
    assert_eq!(conversations, 1);

    // Dialled either way, the next template finds that conversation; an allowlist that lists
    // the customer in the other notation lets the business reach them.
    sqlx::query(
        "UPDATE channels SET phone_allowlist = '{525512345678}' WHERE phone_number_id = $1",
    )
    .bind(SHOP)
    .execute(pg)
    .await
    .unwrap();
    for (key, to) in [("mx2", "525512345678"), ("mx3", "+52 1 55 1234 5678")] {
        let (status, again) = start(key, to, "bot").await;
        assert_eq!(status, StatusCode::ACCEPTED, "{again}");
        assert_eq!(again["conversation_id"], id, "{to}");
    }
    assert_eq!(
        s.sent(3).await.len(),
        3,
        "no bot reply to the customer's answer"
    );
}

#[tokio::test]
async fn an_agent_sees_the_photo_a_customer_sent_streamed_from_meta() {
    let s = system().await;
    let api = &s.api;
    let photo = |wamid: &str, media_id: &str| {
        message_body(
            SHOP,
            "573060",
            json!({"from": "573060", "id": wamid, "timestamp": chrono::Utc::now().timestamp().to_string(),
                   "type": "image", "image": {"id": media_id, "mime_type": "image/jpeg", "sha256": "x"}}),
        )
    };
    let id = s.customer_writes(SHOP, "573060", "wamid.M0", 1).await;
    for (wamid, media_id) in [
        ("wamid.M1", "photo-77"),
        ("wamid.M2", "missing-78"),
        ("wamid.M3", "huge-79"),
    ] {
        assert_eq!(
            s.ingest
                .post_signed(&photo(wamid, media_id), APP_SECRET)
                .await
                .status(),
            200
        );
    }
    let message = |wamid: &'static str| {
        let pg = s.pg.clone();
        async move {
            eventually("the photo stored", Duration::from_secs(10), || {
                let pg = pg.clone();
                async move {
                    sqlx::query_scalar::<_, i64>("SELECT id FROM messages WHERE wamid = $1")
                        .bind(wamid)
                        .fetch_optional(&pg)
                        .await
                        .unwrap()
                }
            })
            .await
        }
    };
    let get = |token: String, path: String| {
        let http = api.http.clone();
        let url = format!("{}{path}", api.url);
        async move { http.get(url).bearer_auth(token).send().await.unwrap() }
    };
    let m1 = message("wamid.M1").await;
    // The transcript names the message, which is how a dashboard finds the file.
    let (_, shown) = api
        .get(&format!("/api/v1/conversations/{id}"), &s.shop)
        .await;
    assert!(
        shown["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["message_id"] == m1 && l["kind"] == "image"),
        "{shown}"
    );
    let res = get(
        s.shop.clone(),
        format!("/api/v1/conversations/{id}/media/{m1}"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let headers = res.headers().clone();
    assert_eq!(headers["content-type"], "image/jpeg");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "private, no-store");
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        wafleet_sim::media_bytes("photo-77").as_slice()
    );
    // Another number's token, a message of another conversation or one without media: 404.
    let res = get(
        s.other.clone(),
        format!("/api/v1/conversations/{id}/media/{m1}"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let m0 = message("wamid.M0").await;
    let res = get(
        s.shop.clone(),
        format!("/api/v1/conversations/{id}/media/{m0}"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // Meta no longer has it: 404; larger than the API passes on: 502, before any download.
    let m2 = message("wamid.M2").await;
    let res = get(
        s.shop.clone(),
        format!("/api/v1/conversations/{id}/media/{m2}"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let m3 = message("wamid.M3").await;
    let res = get(
        s.shop.clone(),
        format!("/api/v1/conversations/{id}/media/{m3}"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
}

/// The owner-change events of a conversation on the dashboard stream: kinds, oldest first.
async fn owner_events_of(cfg: &TestConfig, id: i64) -> Vec<String> {
    let mut con = cfg.redis().await;
    read_stream(&mut con, &cfg.keys().handover_stream())
        .await
        .into_iter()
        .filter_map(|(_, f)| {
            let e: Value = serde_json::from_slice(&f["event"]).unwrap();
            (e["conversation_id"] == id).then(|| e["kind"].as_str().unwrap().to_string())
        })
        .collect()
}

#[tokio::test]
async fn a_take_or_release_retried_after_redis_refused_its_event_still_reaches_dashboards() {
    use redis::AsyncCommands;
    let s = system().await;
    let id = s.customer_writes(SHOP, "573044", "wamid.E1", 1).await;
    let api = &s.api;
    let stream = s.cfg.keys().handover_stream();
    let mut con = s.cfg.redis().await;
    for (action, kind, owner) in [("take", "handover", "human"), ("release", "release", "bot")] {
        // Redis refuses the event (here: the stream key is not a stream).
        let _: () = con.set(&stream, "not a stream").await.unwrap();
        let (status, body) = api
            .post(&format!("/api/v1/conversations/{id}/{action}"), &s.shop)
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{action}: {body}");
        let _: () = con.del(&stream).await.unwrap();
        // The dashboard retries, as a 503 asks.
        let (status, body) = api
            .post(&format!("/api/v1/conversations/{id}/{action}"), &s.shop)
            .await;
        assert_eq!(status, StatusCode::OK, "{action}: {body}");
        let now: (String,) = sqlx::query_as("SELECT owner FROM conversations WHERE id = $1")
            .bind(id)
            .fetch_one(&s.pg)
            .await
            .unwrap();
        assert_eq!(now.0, owner);
        assert_eq!(
            owner_events_of(&s.cfg, id).await,
            [kind],
            "the {action} is in Postgres, but dashboards never learn of it"
        );
    }
}

#[tokio::test]
async fn a_channel_token_the_api_cannot_use_is_logged_counted_and_not_blamed_on_postgres() {
    let s = system().await;
    let id = s.customer_writes(SHOP, "573061", "wamid.K0", 1).await;
    let photo = message_body(
        SHOP,
        "573061",
        json!({"from": "573061", "id": "wamid.K1", "timestamp": chrono::Utc::now().timestamp().to_string(),
               "type": "image", "image": {"id": "photo-77", "mime_type": "image/jpeg", "sha256": "x"}}),
    );
    assert_eq!(s.ingest.post_signed(&photo, APP_SECRET).await.status(), 200);
    let pg = s.pg.clone();
    let m1 = eventually("the photo stored", Duration::from_secs(10), || {
        let pg = pg.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT id FROM messages WHERE wamid = 'wamid.K1'")
                .fetch_optional(&pg)
                .await
                .unwrap()
        }
    })
    .await;
    // An API started with another key than the one the channel's token was sealed with (its
    // WAFLEET_ENCRYPTION_KEY was not rotated with the workers').
    let other_key = wafleet::crypto::Cipher::from_key_text(&"ab".repeat(32)).unwrap();
    let api = Api::start_with(&s.cfg, Some(other_key), &s.sim.url).await;
    let (status, body) = api
        .get(&format!("/api/v1/conversations/{id}/media/{m1}"), &s.shop)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(!error.contains("Postgres"), "{error}");
    assert!(error.contains("WAFLEET_ENCRYPTION_KEY"), "{error}");
    assert_eq!(
        scrape_metric(
            &api.http,
            &api.url,
            &format!(
                "wafleet_secrets_unreadable_total{{channel=\"{SHOP}\",secret=\"access_token\"}}"
            )
        )
        .await,
        1.0
    );
    // A channel without an access token: the agent's 503 is logged and counted too.
    sqlx::query("UPDATE channels SET access_token = NULL WHERE phone_number_id = $1")
        .bind(SHOP)
        .execute(&s.pg)
        .await
        .unwrap();
    let (status, body) = s
        .api
        .get(&format!("/api/v1/conversations/{id}/media/{m1}"), &s.shop)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    for result in ["unreadable_token", "no_token"] {
        let line = format!("wafleet_api_media_total{{result=\"{result}\"}}");
        assert_eq!(
            scrape_metric(&api.http, &api.url, &line).await,
            1.0,
            "{line}"
        );
    }
}

/// The `message_failed` events on the dashboard stream, oldest first, as raw JSON text.
async fn failure_events(cfg: &TestConfig) -> Vec<String> {
    let mut con = cfg.redis().await;
    read_stream(&mut con, &cfg.keys().handover_stream())
        .await
        .into_iter()
        .filter_map(|(_, f)| {
            let raw = String::from_utf8(f["event"].clone()).unwrap();
            let e: Value = serde_json::from_str(&raw).unwrap();
            (e["kind"] == "message_failed").then_some(raw)
        })
        .collect()
}

#[tokio::test]
async fn dashboards_hear_once_when_meta_fails_an_agents_message_with_its_code_and_no_text() {
    let s = system().await;
    // A bot's reply Meta refuses is the bot's business, not an agent's: no event for it.
    s.sim
        .state
        .add_fault(serde_json::from_value(json!({"code": 131026, "recipient": "573120"})).unwrap());
    let body = text_message(
        SHOP,
        "573120",
        "wamid.MF0",
        chrono::Utc::now().timestamp(),
        "hola",
    );
    assert_eq!(s.ingest.post_signed(&body, APP_SECRET).await.status(), 200);
    eventually(
        "the bot's reply failed",
        Duration::from_secs(30),
        || async {
            let failed: Option<(i32,)> = sqlx::query_as(
            "SELECT error_code FROM outbound_messages WHERE kind = 'reply' AND state = 'failed'",
        )
        .fetch_optional(&s.pg)
        .await
        .unwrap();
            failed
        },
    )
    .await;

    let id = s.taken(SHOP, "573121", "wamid.MF1").await;
    let mut live = s.api.events(&s.shop, None).await;
    assert_eq!(live.status(), StatusCode::OK);
    // Refused at once: the number cannot get WhatsApp messages. Meta's words quote what the
    // request carried; they stay on the part's row.
    s.sim.state.add_fault(
        serde_json::from_value(json!({"code": 131026, "recipient": "573121",
                                      "message": "(#131026) undeliverable to 573121 EAAGsecret"}))
        .unwrap(),
    );
    let (status, body) = s
        .api
        .write(
            id,
            &s.shop,
            "ref-refused",
            "Hola Ana, su pedido 4412 sale hoy",
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let got = read_events(&mut live, 1).await;
    assert_eq!(got[0].1, "message_failed", "{got:?}");
    let event = &got[0].2;
    assert_eq!(event["conversation_id"], id, "{event}");
    assert_eq!(event["reference"], "ref-refused", "{event}");
    assert_eq!(event["code"], 131026, "{event}");
    assert_eq!(event["reason"], "permanent", "{event}");
    assert_eq!(event["phone_number_id"], SHOP, "{event}");
    assert!(event["outbound_id"].is_i64(), "{event}");

    // Accepted, then failed in a status: the window had closed meanwhile.
    s.sim.state.add_fault(
        serde_json::from_value(json!({"code": 131047, "recipient": "573121", "async": true}))
            .unwrap(),
    );
    let (status, body) = s
        .api
        .write(id, &s.shop, "ref-late", "¿Le llegó la factura, Ana?")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let got = read_events(&mut live, 1).await;
    let event = &got[0].2;
    assert_eq!(
        (
            &event["kind"],
            &event["reference"],
            &event["code"],
            &event["reason"]
        ),
        (
            &json!("message_failed"),
            &json!("ref-late"),
            &json!(131047),
            &json!("re_engagement")
        ),
        "{event}"
    );
    drop(live);

    // Meta redelivers the failed status after ingest's dedup mark (and any other) is gone.
    let (wamid,): (String,) =
        sqlx::query_as("SELECT wamid FROM outbound_messages WHERE agent_ref = 'ref-late'")
            .fetch_one(&s.pg)
            .await
            .unwrap();
    s.cfg.wait_statuses_drained(30).await;
    s.cfg.forget_dedup_marks().await;
    let now = chrono::Utc::now().timestamp().to_string();
    let redelivered = status_body(
        SHOP,
        json!([{"id": wamid, "status": "failed", "timestamp": now, "recipient_id": "573121",
                "errors": [{"code": 131047, "title": "Re-engagement message"}]}]),
    );
    assert_eq!(
        s.ingest
            .post_signed(&redelivered, APP_SECRET)
            .await
            .status(),
        200
    );
    s.cfg.wait_inbound_drained(30).await;
    s.cfg.wait_statuses_drained(30).await;

    let events = failure_events(&s.cfg).await;
    assert_eq!(
        events.len(),
        2,
        "one event per failure, none for the bot: {events:?}"
    );
    for raw in &events {
        for secret in [
            "Ana",
            "4412",
            "factura",
            "573121",
            "573120",
            "EAAGsecret",
            "undeliverable",
        ] {
            assert!(!raw.contains(secret), "{secret:?} in {raw}");
        }
    }

    // The conversation's view says which parts failed, with Meta's code and our reading of it.
    let (status, view) = s
        .api
        .get(&format!("/api/v1/conversations/{id}"), &s.shop)
        .await;
    assert_eq!(status, StatusCode::OK);
    let failed: Vec<_> = view["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["side"] == "agent")
        .map(|l| {
            (
                l["reference"].clone(),
                l["state"].clone(),
                l["error_code"].clone(),
                l["failure"].clone(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        [
            (
                json!("ref-refused"),
                json!("failed"),
                json!(131026),
                json!("permanent")
            ),
            (
                json!("ref-late"),
                json!("failed"),
                json!(131047),
                json!("re_engagement")
            ),
        ],
        "{view}"
    );
}

#[tokio::test]
async fn an_agents_message_meta_fails_once_and_takes_on_a_resend_is_not_announced_as_failed() {
    let s = system().await;
    let id = s.taken(SHOP, "573122", "wamid.MF2").await;
    // Accepted, then failed in a status with a transient code: sent again, and that one goes.
    s.sim.state.add_fault(
        serde_json::from_value(json!({"code": 131000, "recipient": "573122", "async": true}))
            .unwrap(),
    );
    let (status, body) = s
        .api
        .write(id, &s.shop, "ref-again", "Ya va en camino")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    eventually("the resend accepted", Duration::from_secs(30), || async {
        let (state, sends): (String, i32) = sqlx::query_as(
            "SELECT state, send_offset + attempts FROM outbound_messages
              WHERE agent_ref = 'ref-again'",
        )
        .fetch_one(&s.pg)
        .await
        .unwrap();
        (state == "accepted" && sends == 2).then_some(())
    })
    .await;
    s.cfg.wait_statuses_drained(30).await;
    assert_eq!(
        failure_events(&s.cfg).await,
        Vec::<String>::new(),
        "the customer got it"
    );
}

/// The `message_failed` and `message_recovered` events naming the part `outbound_id`, oldest
/// first.
async fn part_events(cfg: &TestConfig, outbound_id: i64) -> Vec<Value> {
    let mut con = cfg.redis().await;
    read_stream(&mut con, &cfg.keys().handover_stream())
        .await
        .into_iter()
        .filter_map(|(_, f)| {
            let e: Value = serde_json::from_slice(&f["event"]).unwrap();
            (e["outbound_id"] == outbound_id).then_some(e)
        })
        .collect()
}

/// The part an agent's message with `reference` made (a one-part message).
async fn part_of(pg: &PgPool, reference: &str) -> i64 {
    sqlx::query_scalar("SELECT id FROM outbound_messages WHERE agent_ref = $1")
        .bind(reference)
        .fetch_one(pg)
        .await
        .unwrap()
}

/// Every stage, with a Meta that posts no status within the test (the test posts the late ones)
/// and a sender that gives an unanswered send up at once: one attempt, taken as lost 200 ms
/// after the 300 ms its request waits for an answer.
async fn sends_given_up_when_unanswered() -> Sys {
    system_with(
        SimConfig {
            status_delay: Duration::from_secs(3600),
            ..Default::default()
        },
        |w| {
            w.graph.timeout = Duration::from_millis(300);
            w.send.ambiguous_resend_after = Duration::from_millis(200);
            w.send.ambiguous_check = Duration::from_millis(50);
            w.send.backoff.max_attempts = 1;
        },
    )
    .await
}

impl Sys {
    /// An agent's message whose send Meta takes but never answers, which the sender gives up on
    /// and dashboards hear of as failed (`unanswered`); answers its part.
    async fn unanswered_agent_message(&self, id: i64, reference: &str) -> i64 {
        self.sim
            .state
            .add_fault(serde_json::from_value(json!({"hang": true, "count": 1})).unwrap());
        let (status, body) = self
            .api
            .write(id, &self.shop, reference, "Su pedido 4412 sale hoy")
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let part = part_of(&self.pg, reference).await;
        let cfg = &self.cfg;
        let events = eventually(
            "the unanswered send announced failed",
            Duration::from_secs(30),
            || async move {
                let events = part_events(cfg, part).await;
                (!events.is_empty()).then_some(events)
            },
        )
        .await;
        assert_eq!(
            (&events[0]["kind"], &events[0]["reason"]),
            (&json!("message_failed"), &json!("unanswered")),
            "{events:?}"
        );
        part
    }
}

#[tokio::test]
async fn a_late_status_showing_meta_took_an_agents_message_given_up_corrects_its_failure_once() {
    let s = sends_given_up_when_unanswered().await;
    let id = s.taken(SHOP, "573130", "wamid.LR1").await;
    let part = s.unanswered_agent_message(id, "ref-late-ok").await;
    // Meta had taken it: its status comes late, naming our callback (the wamid was never learnt).
    let sent = s.sim.state.messages();
    let taken = sent
        .iter()
        .find(|m| m.body == "Su pedido 4412 sale hoy")
        .unwrap();
    let status = |kind: &str| {
        status_body(
            SHOP,
            json!([{"id": taken.wamid, "status": kind,
                    "timestamp": chrono::Utc::now().timestamp().to_string(),
                    "recipient_id": "573130",
                    "biz_opaque_callback_data": taken.callback_data}]),
        )
    };
    assert_eq!(
        s.ingest
            .post_signed(&status("delivered"), APP_SECRET)
            .await
            .status(),
        200
    );
    let cfg = &s.cfg;
    let events = eventually(
        "dashboards told the part went out after all",
        Duration::from_secs(30),
        || async move {
            let events = part_events(cfg, part).await;
            (events.len() >= 2).then_some(events)
        },
    )
    .await;
    let recovered = &events[1];
    assert_eq!(
        (
            &recovered["kind"],
            &recovered["reason"],
            &recovered["conversation_id"],
            &recovered["reference"],
            &recovered["message_kind"],
            &recovered["delivery"],
        ),
        (
            &json!("message_recovered"),
            &json!("late_status"),
            &json!(id),
            &json!("ref-late-ok"),
            &json!("agent"),
            &json!("delivered"),
        ),
        "{recovered}"
    );
    // Meta redelivers the status, and the `read` follows: no second correction.
    s.cfg.wait_statuses_drained(30).await;
    s.cfg.forget_dedup_marks().await;
    for kind in ["delivered", "read"] {
        assert_eq!(
            s.ingest
                .post_signed(&status(kind), APP_SECRET)
                .await
                .status(),
            200
        );
    }
    s.cfg.wait_inbound_drained(30).await;
    s.cfg.wait_statuses_drained(30).await;
    let events = part_events(&s.cfg, part).await;
    let kinds: Vec<_> = events.iter().map(|e| e["kind"].clone()).collect();
    assert_eq!(
        kinds,
        [json!("message_failed"), json!("message_recovered")],
        "{events:?}"
    );
    for e in &events {
        let raw = e.to_string();
        for secret in ["4412", "573130", "pedido"] {
            assert!(!raw.contains(secret), "{secret:?} in {raw}");
        }
    }
    // The transcript says what became of it: accepted and read, no failure.
    let (status, view) = s
        .api
        .get(&format!("/api/v1/conversations/{id}"), &s.shop)
        .await;
    assert_eq!(status, StatusCode::OK);
    let line = view["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["outbound_id"] == part)
        .unwrap();
    assert_eq!(
        (
            &line["state"],
            &line["delivery"],
            &line["failure"],
            &line["error_code"]
        ),
        (
            &json!("accepted"),
            &json!("read"),
            &Value::Null,
            &Value::Null
        ),
        "{line}"
    );
    assert_eq!(s.sim.state.messages().len(), 2, "nothing was sent again");

    // Should Meta fail it after all, that is a failure of its own, announced again.
    let failed = status_body(
        SHOP,
        json!([{"id": taken.wamid, "status": "failed",
                "timestamp": chrono::Utc::now().timestamp().to_string(),
                "recipient_id": "573130",
                "errors": [{"code": 131026, "title": "Message undeliverable"}]}]),
    );
    assert_eq!(
        s.ingest.post_signed(&failed, APP_SECRET).await.status(),
        200
    );
    s.cfg.wait_inbound_drained(30).await;
    s.cfg.wait_statuses_drained(30).await;
    let events = part_events(&s.cfg, part).await;
    assert_eq!(
        events
            .iter()
            .map(|e| (e["kind"].clone(), e["reason"].clone()))
            .collect::<Vec<_>>(),
        [
            (json!("message_failed"), json!("unanswered")),
            (json!("message_recovered"), json!("late_status")),
            (json!("message_failed"), json!("permanent")),
        ],
        "{events:?}"
    );
}

#[tokio::test]
async fn a_failed_status_of_an_agents_message_announced_unanswered_tells_dashboards_metas_code_once()
 {
    let s = sends_given_up_when_unanswered().await;
    let id = s.taken(SHOP, "573131", "wamid.LF1").await;
    let part = s.unanswered_agent_message(id, "ref-late-failed").await;
    wait_count(
        &s.pg,
        &format!(
            "SELECT count(*) FROM outbound_messages
              WHERE id = {part} AND failure_announced AND failure_shown"
        ),
        1,
        30,
    )
    .await;
    // Meta had taken the send, and fails it late: its status names our callback.
    let taken = s
        .sim
        .state
        .messages()
        .into_iter()
        .find(|m| m.body == "Su pedido 4412 sale hoy")
        .unwrap();
    let failed = status_body(
        SHOP,
        json!([{"id": taken.wamid, "status": "failed",
                "timestamp": chrono::Utc::now().timestamp().to_string(),
                "recipient_id": "573131",
                "biz_opaque_callback_data": taken.callback_data,
                "errors": [{"code": 131026, "title": "Message undeliverable"}]}]),
    );
    assert_eq!(
        s.ingest.post_signed(&failed, APP_SECRET).await.status(),
        200
    );
    let cfg = &s.cfg;
    let events = eventually(
        "dashboards told Meta's code",
        Duration::from_secs(30),
        || async move {
            let events = part_events(cfg, part).await;
            (events.len() >= 2).then_some(events)
        },
    )
    .await;
    let refined = &events[1];
    assert_eq!(
        (
            &refined["kind"],
            &refined["reason"],
            &refined["code"],
            &refined["refines"],
            &refined["conversation_id"],
            &refined["reference"],
        ),
        (
            &json!("message_failed"),
            &json!("permanent"),
            &json!(131026),
            &json!("unanswered"),
            &json!(id),
            &json!("ref-late-failed"),
        ),
        "{refined}"
    );
    assert_eq!(events[0]["refines"], Value::Null, "{}", events[0]);
    // Meta redelivers the status: dashboards are not told twice.
    s.cfg.wait_statuses_drained(30).await;
    s.cfg.forget_dedup_marks().await;
    assert_eq!(
        s.ingest.post_signed(&failed, APP_SECRET).await.status(),
        200
    );
    s.cfg.wait_inbound_drained(30).await;
    s.cfg.wait_statuses_drained(30).await;
    assert_eq!(part_events(&s.cfg, part).await.len(), 2);
    assert_eq!(s.sim.state.messages().len(), 2, "nothing was sent again");
}

#[tokio::test]
async fn an_agents_message_announced_failed_that_an_operators_replay_sends_is_corrected_once() {
    let s = sends_given_up_when_unanswered().await;
    let id = s.taken(SHOP, "573131", "wamid.LR2").await;
    let part = s.unanswered_agent_message(id, "ref-replayed").await;
    // The operator replays the sender's dead letter, asking for the unanswered part to be sent
    // again; Meta answers this time.
    let (mut con, keys) = (s.cfg.redis().await, s.cfg.keys());
    let letters = eventually("the dead letter", Duration::from_secs(30), || {
        let (mut con, keys) = (con.clone(), keys.clone());
        async move {
            let letters = wafleet::dead_letters::read(&mut con, &keys, "sender")
                .await
                .unwrap();
            (!letters.is_empty()).then_some(letters)
        }
    })
    .await;
    let reopened = wafleet::dead_letters::replay(
        &mut con,
        &s.pg,
        &keys,
        "sender",
        &letters[0],
        true,
        Some(wafleet::worker::retention::DEFAULT_RETENTION),
    )
    .await
    .unwrap();
    assert_eq!(reopened.reopened, 1);
    let cfg = &s.cfg;
    let events = eventually(
        "dashboards told the part went out",
        Duration::from_secs(30),
        || async move {
            let events = part_events(cfg, part).await;
            (events.len() >= 2).then_some(events)
        },
    )
    .await;
    assert_eq!(
        (
            &events[1]["kind"],
            &events[1]["reason"],
            &events[1]["reference"]
        ),
        (
            &json!("message_recovered"),
            &json!("resent"),
            &json!("ref-replayed")
        ),
        "{events:?}"
    );
    // The sweep finds nothing more to say about it.
    let policy = wafleet::stages::sender::SendPolicy::default();
    wafleet::stages::announce_late_agent_parts(
        &s.pg,
        &mut con,
        &keys,
        &policy,
        Duration::ZERO,
        100,
    )
    .await
    .unwrap();
    assert_eq!(part_events(&s.cfg, part).await.len(), 2);
}

#[tokio::test]
async fn a_failure_redis_refused_is_announced_by_the_sweep_once_with_two_workers_sweeping() {
    use redis::AsyncCommands;
    let mut s = system().await;
    let id = s.taken(SHOP, "573132", "wamid.SW1").await;
    let (keys, policy) = (s.cfg.keys(), wafleet::stages::sender::SendPolicy::default());
    let stream = keys.handover_stream();
    let mut con = s.cfg.redis().await;
    // Redis refuses the event (here: the stream key is not a stream) when Meta refuses the
    // agent's message, and the worker stops before Redis takes it.
    let _: () = con.set(&stream, "not a stream").await.unwrap();
    s.sim
        .state
        .add_fault(serde_json::from_value(json!({"code": 131026, "recipient": "573132"})).unwrap());
    let (status, body) = s
        .api
        .write(id, &s.shop, "ref-swept", "Hola, su pedido 4412")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let part = part_of(&s.pg, "ref-swept").await;
    let pg = &s.pg;
    eventually("the part failed", Duration::from_secs(30), || async move {
        let state: String = sqlx::query_scalar("SELECT state FROM outbound_messages WHERE id = $1")
            .bind(part)
            .fetch_one(pg)
            .await
            .unwrap();
        (state == "failed").then_some(())
    })
    .await;
    let _ = s.worker.take().unwrap().stop().await;
    let announced = || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT failure_announced FROM outbound_messages WHERE id = $1",
        )
        .bind(part)
        .fetch_one(&s.pg)
        .await
        .unwrap()
    };
    // A sweep while Redis still refuses says so and loses nothing.
    let refused = wafleet::stages::announce_late_agent_parts(
        &s.pg,
        &mut con,
        &keys,
        &policy,
        Duration::ZERO,
        100,
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(!announced().await);
    // Redis is back: two workers sweep at once; dashboards hear of the failure once.
    let _: () = con.del(&stream).await.unwrap();
    let (mut a, mut b) = (s.cfg.redis().await, s.cfg.redis().await);
    let (ra, rb) = tokio::join!(
        wafleet::stages::announce_late_agent_parts(
            &s.pg,
            &mut a,
            &keys,
            &policy,
            Duration::ZERO,
            100
        ),
        wafleet::stages::announce_late_agent_parts(
            &s.pg,
            &mut b,
            &keys,
            &policy,
            Duration::ZERO,
            100
        ),
    );
    ra.unwrap();
    rb.unwrap();
    wafleet::stages::announce_late_agent_parts(&s.pg, &mut a, &keys, &policy, Duration::ZERO, 100)
        .await
        .unwrap();
    let events = part_events(&s.cfg, part).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (
            &events[0]["kind"],
            &events[0]["reason"],
            &events[0]["code"],
            &events[0]["reference"]
        ),
        (
            &json!("message_failed"),
            &json!("permanent"),
            &json!(131026),
            &json!("ref-swept")
        ),
        "{events:?}"
    );
    assert!(announced().await);

    // A part a `failed` status failed with a code worth another send, within its bounds, is the
    // sender's to send again: the sweep leaves it alone until those bounds are past.
    let fail_by_status = |since: &'static str| {
        let pg = s.pg.clone();
        async move {
            sqlx::query(&format!(
                "UPDATE outbound_messages SET failure_announced = FALSE, delivery_rank = 4,
                        delivery = 'failed', error_code = 131000, attempts = 1,
                        retries_since = {since}
                  WHERE id = $1"
            ))
            .bind(part)
            .execute(&pg)
            .await
            .unwrap();
        }
    };
    fail_by_status("now()").await;
    let sweep = wafleet::stages::announce_late_agent_parts;
    sweep(&s.pg, &mut a, &keys, &policy, Duration::ZERO, 100)
        .await
        .unwrap();
    assert_eq!(
        part_events(&s.cfg, part).await.len(),
        1,
        "a resend is to come"
    );
    fail_by_status("now() - interval '1 day'").await;
    sweep(&s.pg, &mut a, &keys, &policy, Duration::ZERO, 100)
        .await
        .unwrap();
    let events = part_events(&s.cfg, part).await;
    assert_eq!(
        (events.len(), &events[1]["reason"]),
        (2, &json!("transient")),
        "{events:?}"
    );

    // A status showed Meta took it after all, and the run that applied it stopped before
    // Redis took the correction: the sweep makes it, once, however many sweep.
    sqlx::query(
        "UPDATE outbound_messages SET state = 'accepted', delivery = 'delivered', delivery_rank = 2
          WHERE id = $1",
    )
    .bind(part)
    .execute(&s.pg)
    .await
    .unwrap();
    let (ra, rb) = tokio::join!(
        sweep(&s.pg, &mut a, &keys, &policy, Duration::ZERO, 100),
        sweep(&s.pg, &mut b, &keys, &policy, Duration::ZERO, 100),
    );
    ra.unwrap();
    rb.unwrap();
    sweep(&s.pg, &mut a, &keys, &policy, Duration::ZERO, 100)
        .await
        .unwrap();
    let events = part_events(&s.cfg, part).await;
    assert_eq!(
        (events.len(), &events[2]["kind"], &events[2]["delivery"]),
        (3, &json!("message_recovered"), &json!("delivered")),
        "{events:?}"
    );
}

impl Api {
    /// An agent's message of any shape (`text`, `media`, `buttons`, `list`…).
    async fn send(&self, id: i64, token: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{id}/messages"),
            Some(token),
            Some(key),
            Some(body),
        )
        .await
    }
}

#[tokio::test]
async fn an_agents_file_buttons_and_list_reach_meta_as_exactly_their_objects_once() {
    let s = system().await;
    let id = s.taken(SHOP, "573140", "wamid.RC1").await;
    let image = json!({"type": "image", "link": "https://cdn.example.com/pedido-4412.jpg",
                       "caption": "Tu pedido, listo"});
    let (status, first) = s
        .api
        .send(
            id,
            &s.shop,
            "img-1",
            json!({"media": image, "agent": "Lucía"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let document = json!({"type": "document", "id": "1037543291543636",
                          "filename": "factura-4412.pdf"});
    let (status, body) = s
        .api
        .send(id, &s.shop, "doc-1", json!({"media": document}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = s
        .api
        .send(
            id,
            &s.shop,
            "btn-1",
            json!({"text": "¿Confirmas el pedido?", "footer": "Tienda Lavanda",
                   "buttons": [{"id": "confirmar", "title": "Sí, confirmar"},
                               {"id": "cancelar", "title": "No"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = s
        .api
        .send(
            id,
            &s.shop,
            "list-1",
            json!({"text": "¿Cómo lo quieres recibir?", "header": "Envío",
                   "list": {"button": "Ver opciones", "sections": [
                       {"rows": [{"id": "casa", "title": "A domicilio",
                                  "description": "Mañana antes de las 12"},
                                 {"id": "tienda", "title": "Recojo en tienda"}]}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // The bot's greeting, then the agent's four, in order, each its object exactly.
    let sent = s.sent(5).await;
    let got: Vec<(&str, Option<&Value>, &str)> = sent[1..]
        .iter()
        .map(|m| (m.kind.as_str(), m.message.as_ref(), m.recipient.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "image",
                Some(&json!({"link": "https://cdn.example.com/pedido-4412.jpg",
                             "caption": "Tu pedido, listo"})),
                "573140"
            ),
            (
                "document",
                Some(&json!({"id": "1037543291543636", "filename": "factura-4412.pdf"})),
                "573140"
            ),
            (
                "interactive",
                Some(&json!({"type": "button",
                             "body": {"text": "¿Confirmas el pedido?"},
                             "footer": {"text": "Tienda Lavanda"},
                             "action": {"buttons": [
                                 {"type": "reply", "reply": {"id": "confirmar", "title": "Sí, confirmar"}},
                                 {"type": "reply", "reply": {"id": "cancelar", "title": "No"}}]}})),
                "573140"
            ),
            (
                "interactive",
                Some(&json!({"type": "list",
                             "header": {"type": "text", "text": "Envío"},
                             "body": {"text": "¿Cómo lo quieres recibir?"},
                             "action": {"button": "Ver opciones", "sections": [{"rows": [
                                 {"id": "casa", "title": "A domicilio",
                                  "description": "Mañana antes de las 12"},
                                 {"id": "tienda", "title": "Recojo en tienda"}]}]}})),
                "573140"
            ),
        ]
    );
    assert!(
        sent[1..]
            .iter()
            .all(|m| m.body.is_empty() && m.callback_data.is_some())
    );

    // A retry after a timeout records and sends nothing new; the key with another file is
    // refused although the caption (the transcript's line) is the same.
    let (status, retried) = s
        .api
        .send(
            id,
            &s.shop,
            "img-1",
            json!({"media": image, "agent": "Lucía"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["part_ids"], first["part_ids"]);
    let other = json!({"type": "image", "link": "https://cdn.example.com/otro.jpg",
                       "caption": "Tu pedido, listo"});
    let (status, body) = s
        .api
        .send(id, &s.shop, "img-1", json!({"media": other}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages WHERE kind = 'agent' AND state = 'accepted'",
        4,
        30,
    )
    .await;
    assert_eq!(s.sim.state.messages().len(), 5, "nothing went twice");

    // The transcript shows each as a line: the file's kind and caption, the options' titles.
    let (_, shown) = s
        .api
        .get(&format!("/api/v1/conversations/{id}"), &s.shop)
        .await;
    let agent_lines: Vec<(&str, &str)> = shown["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["side"] == "agent")
        .map(|l| (l["text"].as_str().unwrap(), l["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        agent_lines,
        [
            ("[image] Tu pedido, listo", "accepted"),
            ("[document: factura-4412.pdf]", "accepted"),
            (
                "¿Confirmas el pedido? [buttons: Sí, confirmar | No]",
                "accepted"
            ),
            (
                "¿Cómo lo quieres recibir? [list Ver opciones: A domicilio | Recojo en tienda]",
                "accepted"
            ),
        ]
    );

    // The customer taps a button: the reply lands in this conversation, for the agent, with
    // the option picked (its title as the text, its id kept).
    let buttons_wamid = sent[3].wamid.clone();
    let tap = message_body(
        SHOP,
        "573140",
        json!({"from": "573140", "id": "wamid.TAP1",
               "timestamp": chrono::Utc::now().timestamp().to_string(),
               "context": {"from": SHOP, "id": buttons_wamid},
               "type": "interactive",
               "interactive": {"type": "button_reply",
                               "button_reply": {"id": "confirmar", "title": "Sí, confirmar"}}}),
    );
    assert_eq!(s.ingest.post_signed(&tap, APP_SECRET).await.status(), 200);
    let (conversation, text, reply_id): (i64, Option<String>, Option<String>) =
        eventually("the tap is stored", Duration::from_secs(30), || async {
            sqlx::query_as(
                "SELECT conversation_id, text_redacted, metadata->>'reply_id' FROM messages
                  WHERE wamid = 'wamid.TAP1'",
            )
            .fetch_optional(&s.pg)
            .await
            .unwrap()
        })
        .await;
    assert_eq!(
        (conversation, text.as_deref(), reply_id.as_deref()),
        (id, Some("Sí, confirmar"), Some("confirmar"))
    );
    let (_, shown) = s
        .api
        .get(&format!("/api/v1/conversations/{id}"), &s.shop)
        .await;
    let last = shown["lines"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["side"], &last["kind"], &last["text"]),
        (
            &json!("customer"),
            &json!("interactive"),
            &json!("Sí, confirmar")
        ),
        "{last}"
    );
    assert_eq!(
        s.sim.state.messages().len(),
        5,
        "the bot does not answer the tap"
    );

    // Given back to the bot, the customer picks from the list: the model reads the row picked.
    let (status, _) = s
        .api
        .post(&format!("/api/v1/conversations/{id}/release"), &s.shop)
        .await;
    assert_eq!(status, StatusCode::OK);
    let pick = message_body(
        SHOP,
        "573140",
        json!({"from": "573140", "id": "wamid.TAP2",
               "timestamp": chrono::Utc::now().timestamp().to_string(),
               "context": {"from": SHOP, "id": sent[4].wamid},
               "type": "interactive",
               "interactive": {"type": "list_reply",
                               "list_reply": {"id": "tienda", "title": "Recojo en tienda"}}}),
    );
    assert_eq!(s.ingest.post_signed(&pick, APP_SECRET).await.status(), 200);
    s.sent(6).await;
    let asked = s.sim.state.llm_requests();
    assert_eq!(
        asked.last().unwrap().last_user_message,
        "Recojo en tienda",
        "{:?}",
        asked.last().unwrap().body
    );
}

#[tokio::test]
async fn a_file_buttons_or_list_meta_would_refuse_is_422_naming_the_field_and_nothing_is_recorded()
{
    let s = system().await;
    let id = s.taken(SHOP, "573141", "wamid.RC2").await;
    let link = "https://cdn.example.com/a.jpg";
    let cases = [
        (
            json!({"media": {"type": "location", "link": link}}),
            "media.type",
        ),
        (json!({"media": {"type": "image"}}), "media"),
        (
            json!({"media": {"type": "image", "link": "http://cdn.example.com/a.jpg"}}),
            "media.link",
        ),
        (
            json!({"media": {"type": "audio", "link": link, "caption": "escucha"}}),
            "media.caption",
        ),
        (
            json!({"media": {"type": "image", "link": link, "filename": "a.pdf"}}),
            "media.filename",
        ),
        (
            json!({"media": {"type": "image", "link": link}, "text": "hola"}),
            "text",
        ),
        (json!({"text": "¿Sí?", "buttons": []}), "buttons"),
        (
            json!({"text": "¿Sí?", "buttons": [{"id": "a", "title": "Un título de más de veinte"}]}),
            "buttons[0].title",
        ),
        (
            json!({"text": "¿Sí?", "buttons": [{"id": "a", "title": "Sí"}, {"id": "a", "title": "No"}]}),
            "buttons[1].id",
        ),
        (json!({"buttons": [{"id": "a", "title": "Sí"}]}), "text"),
        (
            json!({"text": "Elige", "list": {"button": "Ver", "sections": [
                {"title": "A", "rows": (0..6).map(|i| json!({"id": format!("a{i}"), "title": "x"})).collect::<Vec<_>>()},
                {"title": "B", "rows": (0..5).map(|i| json!({"id": format!("b{i}"), "title": "x"})).collect::<Vec<_>>()}]}}),
            "list.sections",
        ),
        (
            json!({"text": "Elige", "list": {"button": "Ver", "sections": [
                {"rows": [{"id": "a", "title": "x", "description": "d".repeat(73)}]}]}}),
            "list.sections[0].rows[0].description",
        ),
        (json!({"text": "hola", "footer": "pie"}), "footer"),
        (
            json!({"text": "¿Sí?", "buttons": [{"id": "a", "title": "Sí"}],
                   "list": {"button": "Ver", "sections": []}}),
            "one of media, buttons or list",
        ),
    ];
    for (n, (body, field)) in cases.iter().enumerate() {
        let (status, err) = s
            .api
            .send(id, &s.shop, &format!("bad-{n}"), body.clone())
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} {err}");
        let message = err["error"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
        assert!(
            !message.contains("escucha") && !message.contains("veinte"),
            "{message}"
        );
    }
    // A field the body does not take is still a 400, as in every body.
    let (status, _) = s
        .api
        .send(
            id,
            &s.shop,
            "bad-x",
            json!({"media": {"type": "image", "link": link, "url": link}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        count(
            &s.pg,
            "SELECT count(*) FROM outbound_messages WHERE kind = 'agent'"
        )
        .await,
        0
    );
    assert_eq!(s.sim.state.messages().len(), 1, "the bot's greeting only");
}

#[tokio::test]
async fn a_file_or_buttons_outside_the_window_or_to_the_bots_conversation_is_refused_like_text() {
    let s = system().await;
    let id = s.taken(SHOP, "573142", "wamid.RC3").await;
    let image = json!({"media": {"type": "image", "link": "https://cdn.example.com/a.jpg"}});
    let buttons = json!({"text": "¿Sí?", "buttons": [{"id": "si", "title": "Sí"}]});
    sqlx::query(
        "UPDATE conversations SET last_customer_message_at = now() - interval '25 hours'
          WHERE id = $1",
    )
    .bind(id)
    .execute(&s.pg)
    .await
    .unwrap();
    for (key, body) in [("late-img", &image), ("late-btn", &buttons)] {
        let (status, err) = s.api.send(id, &s.shop, key, body.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{err}");
        assert!(err["error"].as_str().unwrap().contains("24 hours"), "{err}");
    }
    sqlx::query("UPDATE conversations SET last_customer_message_at = now() WHERE id = $1")
        .bind(id)
        .execute(&s.pg)
        .await
        .unwrap();
    let (status, _) = s
        .api
        .post(&format!("/api/v1/conversations/{id}/release"), &s.shop)
        .await;
    assert_eq!(status, StatusCode::OK);
    for (key, body) in [("bot-img", &image), ("bot-btn", &buttons)] {
        let (status, err) = s.api.send(id, &s.shop, key, body.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{err}");
        assert!(
            err["error"].as_str().unwrap().contains("with the bot"),
            "{err}"
        );
    }
    assert_eq!(
        count(
            &s.pg,
            "SELECT count(*) FROM outbound_messages WHERE kind = 'agent'"
        )
        .await,
        0
    );
    assert_eq!(s.sim.state.messages().len(), 1, "the bot's greeting only");
}

#[tokio::test]
async fn dashboards_hear_when_meta_fails_an_agents_file() {
    let s = system().await;
    let id = s.taken(SHOP, "573143", "wamid.RC4").await;
    let mut live = s.api.events(&s.shop, None).await;
    // Meta could not fetch the file from the link (not in our reference's table as a send
    // error; 131053 "Media upload error" is, for media Meta could not use).
    s.sim
        .state
        .add_fault(serde_json::from_value(json!({"code": 131053, "recipient": "573143"})).unwrap());
    let (status, body) = s
        .api
        .send(
            id,
            &s.shop,
            "img-fail",
            json!({"media": {"type": "image", "link": "https://cdn.example.com/roto.jpg",
                             "caption": "Ana, tu factura"}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let got = read_events(&mut live, 1).await;
    assert_eq!(got[0].1, "message_failed", "{got:?}");
    let event = &got[0].2;
    assert_eq!(
        (&event["message_kind"], &event["reference"], &event["code"]),
        (&json!("agent"), &json!("img-fail"), &json!(131053)),
        "{event}"
    );
    assert!(!event.to_string().contains("Ana"), "{event}");
    let (_, shown) = s
        .api
        .get(&format!("/api/v1/conversations/{id}"), &s.shop)
        .await;
    let last = shown["lines"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["text"], &last["state"], &last["error_code"]),
        (
            &json!("[image] Ana, tu factura"),
            &json!("failed"),
            &json!(131053)
        ),
        "{last}"
    );
}

/// What Meta last said of a number and its business account, as the account stage records it
/// (tests/account.rs), is in the channel's view: `meta_status`, nothing but nulls until then.
#[tokio::test]
async fn a_channel_shows_what_meta_last_said_of_its_number_and_account() {
    use wafleet::store::account_state;
    let p = platform().await;
    let path = format!("/api/v1/channels/{OTHER}");
    let (status, view) = p.api.get(&path, &p.other).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["meta_status"]["quality_event"], Value::Null);
    assert_eq!(view["meta_status"]["flagged"], false);
    assert_eq!(view["meta_status"]["account_restrictions"], json!([]));
    let id: i64 = sqlx::query_scalar("SELECT id FROM channels WHERE phone_number_id = $1")
        .bind(OTHER)
        .fetch_one(&p.pg)
        .await
        .unwrap();
    let at = chrono::Utc::now();
    let flagged =
        account_state::record_quality(&p.pg, id, "1-0", Some("FLAGGED"), Some("TIER_1K"), at)
            .await
            .unwrap();
    assert_eq!(flagged, account_state::Applied::New);
    let update = wafleet_core::account::AccountUpdate {
        event: Some("ACCOUNT_RESTRICTION".into()),
        restrictions: vec![wafleet_core::account::Restriction {
            restriction_type: "RESTRICTED_BIZ_INITIATED_MESSAGING".into(),
            expiration: Some("2099-04-19T13:59:20+0000".into()),
        }],
        ..Default::default()
    };
    account_state::record_account(&p.pg, id, "2-0", &update, true, at)
        .await
        .unwrap();
    let (status, view) = p.api.get(&path, &p.other).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let meta = &view["meta_status"];
    assert_eq!(meta["quality_event"], "FLAGGED");
    assert_eq!(meta["flagged"], true);
    assert_eq!(meta["messaging_limit"], "TIER_1K");
    assert_eq!(meta["account_event"], "ACCOUNT_RESTRICTION");
    assert_eq!(meta["account_restricted"], true);
    assert_eq!(meta["account_disabled"], false);
    assert_eq!(
        meta["account_restrictions"],
        json!([{"type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": "2099-04-19T13:59:20+0000"}])
    );
}

#[tokio::test]
async fn a_console_uploads_a_file_to_meta_and_sends_it_by_its_id() {
    let s = system().await;
    let id = s.taken(SHOP, "573144", "wamid.RC5").await;
    let upload = |mime: &str, bytes: Vec<u8>, token: &str, pnid: &str| {
        s.api
            .http
            .post(format!(
                "{}/api/v1/channels/{pnid}/media?filename=factura-4412.pdf",
                s.api.url
            ))
            .bearer_auth(token)
            .header("content-type", mime)
            .body(bytes)
            .send()
    };
    let pdf = b"%PDF-1.7 factura 4412".to_vec();
    let res = upload("application/pdf", pdf.clone(), &s.shop, SHOP)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let uploaded: Value = res.json().await.unwrap();
    assert_eq!(uploaded["type"], "document", "{uploaded}");
    let media_id = uploaded["id"].as_str().unwrap().to_string();
    let at_meta = s.sim.state.uploads();
    assert_eq!(at_meta.len(), 1);
    assert_eq!(
        (
            at_meta[0].phone_number_id.as_str(),
            at_meta[0].id.as_str(),
            at_meta[0].mime_type.as_str(),
            at_meta[0].part_type.as_deref(),
            at_meta[0].filename.as_deref(),
            at_meta[0].size
        ),
        (
            SHOP,
            media_id.as_str(),
            "application/pdf",
            Some("application/pdf"),
            Some("factura-4412.pdf"),
            pdf.len()
        )
    );
    let (status, body) = s
        .api
        .send(
            id,
            &s.shop,
            "upl-1",
            json!({"media": {"type": "document", "id": media_id, "filename": "factura-4412.pdf"}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let sent = s.sent(2).await;
    assert_eq!(
        (sent[1].kind.as_str(), sent[1].message.as_ref()),
        (
            "document",
            Some(&json!({"id": media_id, "filename": "factura-4412.pdf"}))
        )
    );

    // A type WhatsApp does not take, a file over its bound (the API's 1 MiB here, under
    // Meta's 5 MB for an image), another number's channel: refused, nothing reaches Meta.
    let res = upload("text/html", b"<p>hola</p>".to_vec(), &s.shop, SHOP)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let res = upload("image/jpeg", vec![0xFF; 1024 * 1024 + 1], &s.shop, SHOP)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let res = upload("image/jpeg", vec![0xFF; 10], &s.other, SHOP)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.sim.state.uploads().len(), 1);
    let metrics = s
        .api
        .http
        .get(format!("{}/metrics", s.api.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (result, n) in [("uploaded", 1.0), ("unsupported", 1.0), ("too_large", 1.0)] {
        let line = format!("wafleet_api_uploads_total{{result=\"{result}\"}}");
        assert_eq!(metric_value(&metrics, &line), n, "{line}");
    }
}

// --- Templates with header media, header text, URL, quick-reply and copy-code buttons ---

/// The business account the simulator lists templates for.
const WABA: &str = "102290129340398";

impl Sys {
    /// The shop's number with its business account: the API reads its templates from Meta.
    async fn with_account(&self) {
        sqlx::query("UPDATE channels SET waba_id = $2, pair_burst = 10 WHERE phone_number_id = $1")
            .bind(SHOP)
            .bind(WABA)
            .execute(&self.pg)
            .await
            .unwrap();
    }

    /// A template to a customer by phone through the shop's number.
    async fn template_to(&self, key: &str, body: Value) -> (StatusCode, Value) {
        let path = format!("/api/v1/channels/{SHOP}/templates");
        self.api
            .call(
                reqwest::Method::POST,
                &path,
                Some(&self.shop),
                Some(key),
                Some(body),
            )
            .await
    }

    /// A template in conversation `id`.
    async fn template_in(&self, id: i64, key: &str, body: Value) -> (StatusCode, Value) {
        let path = format!("/api/v1/conversations/{id}/templates");
        self.api
            .call(
                reqwest::Method::POST,
                &path,
                Some(&self.shop),
                Some(key),
                Some(body),
            )
            .await
    }
}

#[tokio::test]
async fn templates_with_a_file_a_header_text_and_buttons_go_out_as_meta_takes_them() {
    let s = system().await;
    s.with_account().await;
    // An order confirmation with the invoice's PDF, a tracking link and a quick reply.
    let invoice = json!({"to": "573005550180", "name": "order_invoice", "language": "es",
        "params": ["Ana", "#1042"],
        "header": {"type": "document", "link": "https://shop.example/f/1042.pdf",
                   "filename": "factura-1042.pdf"},
        "buttons": [{"index": 0, "sub_type": "url", "parameter": "1042"},
                    {"index": 1, "sub_type": "quick_reply", "payload": "TALK-1042"}],
        "answered_by": "human"});
    let (status, started) = s.template_to("i1", invoice.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["conversation_id"].as_i64().unwrap();
    let sent = s.sent(1).await;
    assert_eq!(
        sent[0].template,
        Some(
            json!({"name": "order_invoice", "language": {"code": "es"}, "components": [
                {"type": "header", "parameters": [{"type": "document", "document":
                    {"link": "https://shop.example/f/1042.pdf", "filename": "factura-1042.pdf"}}]},
                {"type": "body", "parameters": [{"type": "text", "text": "Ana"},
                                                {"type": "text", "text": "#1042"}]},
                {"type": "button", "sub_type": "url", "index": "0",
                 "parameters": [{"type": "text", "text": "1042"}]},
                {"type": "button", "sub_type": "quick_reply", "index": "1",
                 "parameters": [{"type": "payload", "payload": "TALK-1042"}]},
            ]})
        )
    );
    // Meta took it; the dashboard's retry records and sends nothing again.
    let accepted = format!(
        "SELECT count(*) FROM outbound_messages WHERE conversation_id = {id} AND state = 'accepted'"
    );
    wait_count(&s.pg, &accepted, 1, 30).await;
    let (status, again) = s.template_to("i1", invoice).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["fresh"], false);
    assert_eq!(again["part_ids"], started["part_ids"]);

    // In the conversation the agent now has: a text header's parameter and a coupon code; an
    // image header by media id.
    let ready = json!({"name": "order_ready", "language": "es", "params": ["Calle 10 #4-20"],
        "header": {"type": "text", "parameters": ["#1042"]},
        "buttons": [{"index": 1, "sub_type": "copy_code", "coupon_code": "SOL25"}]});
    let (status, queued) = s.template_in(id, "r1", ready).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    let image = json!({"name": "new_collection", "language": "es",
                       "header": {"type": "image", "id": "1593081761623532"}});
    let (status, queued) = s.template_in(id, "c1", image).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    let sent = s.sent(3).await;
    assert_eq!(
        s.sim.state.messages().len(),
        3,
        "the retry sent the invoice again"
    );
    let components = |name: &str| {
        sent.iter()
            .filter_map(|m| m.template.as_ref())
            .find(|t| t["name"] == name)
            .map(|t| t["components"].clone())
    };
    assert_eq!(
        components("order_ready"),
        Some(json!([
            {"type": "header", "parameters": [{"type": "text", "text": "#1042"}]},
            {"type": "body", "parameters": [{"type": "text", "text": "Calle 10 #4-20"}]},
            {"type": "button", "sub_type": "copy_code", "index": "1",
             "parameters": [{"type": "coupon_code", "coupon_code": "SOL25"}]},
        ]))
    );
    assert_eq!(
        components("new_collection"),
        Some(json!([{"type": "header", "parameters":
            [{"type": "image", "image": {"id": "1593081761623532"}}]}]))
    );

    // The transcript shows what went, readably (never a file's link).
    let (_, shown) = s
        .api
        .get(&format!("/api/v1/conversations/{id}"), &s.shop)
        .await;
    let templates: Vec<&str> = shown["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "template")
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        templates,
        [
            "[template: order_invoice] [document factura-1042.pdf] Ana | #1042 [button 0: 1042] \
             [quick reply 1: TALK-1042]",
            "[template: order_ready] [header: #1042] Calle 10 #4-20 [code 1: SOL25]",
            "[template: new_collection] [image]",
        ]
    );
}

#[tokio::test]
async fn a_template_lacking_a_parameter_it_needs_or_given_one_it_has_not_is_refused_unrecorded() {
    let s = system().await;
    s.with_account().await;
    // Without the invoice and the tracking number: each named, and no conversation is made.
    let bare = json!({"to": "573005550181", "name": "order_invoice", "language": "es",
                      "params": ["Ana", "#1042"]});
    let (status, refused) = s.template_to("n1", bare).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains("template order_invoice needs a document header"),
        "{error}"
    );
    assert!(
        error.contains("button 0 (\"Seguir pedido\") needs its URL's suffix"),
        "{error}"
    );
    // What cannot be right is refused before Meta is asked.
    let plain_http = json!({"to": "573005550181", "name": "order_invoice", "language": "es",
        "params": ["Ana", "#1042"],
        "header": {"type": "document", "link": "http://shop.example/f/1042.pdf"},
        "buttons": [{"index": 0, "sub_type": "url", "parameter": "1042"}]});
    let (status, refused) = s.template_to("n2", plain_http).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("https://"),
        "{refused}"
    );

    // In a conversation an agent has: what the template does not take is refused too.
    let id = s.taken(SHOP, "573005550182", "wamid.N1").await;
    let cases = [
        (
            json!({"name": "order_shipped", "language": "es", "params": ["#1"],
                   "header": {"type": "text", "parameters": ["#1"]}}),
            "template order_shipped's header takes no parameters",
        ),
        (
            json!({"name": "order_ready", "language": "es", "params": ["Calle 10"],
                   "header": {"type": "text", "parameters": ["#1"]},
                   "buttons": [{"index": 0, "sub_type": "url", "parameter": "x"},
                               {"index": 1, "sub_type": "copy_code", "coupon_code": "SOL25"}]}),
            "button 0 (\"Ver tiendas\") has a fixed address: it takes no parameter",
        ),
        (
            json!({"name": "order_ready", "language": "es", "params": ["Calle 10"],
                   "header": {"type": "text", "parameters": ["#1"]}}),
            "button 1 (\"Copiar código\") needs its coupon code",
        ),
        (
            json!({"name": "order_delayed", "language": "es",
                   "params": ["#1", "martes", "de más"]}),
            "template order_delayed's body takes 2 parameters (3 given)",
        ),
        (
            json!({"name": "new_collection", "language": "es",
                   "header": {"type": "video", "link": "https://shop.example/v.mp4"}}),
            "template new_collection's header is an image, not a video",
        ),
    ];
    for (body, named) in cases {
        let (status, refused) = s.template_in(id, "e1", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
        let error = refused["error"].as_str().unwrap();
        assert!(error.contains(named), "{named}: {error}");
    }
    // Nothing recorded, nothing sent but the bot's reply.
    let templates = "SELECT count(*) FROM outbound_messages WHERE kind = 'template'";
    assert_eq!(count(&s.pg, templates).await, 0);
    let made = "SELECT count(*) FROM conversations WHERE wa_id = '573005550181'";
    assert_eq!(count(&s.pg, made).await, 0);
    assert_eq!(s.sim.state.messages().len(), 1);
    // The refusals did not take the reference: the send that fits goes out with it.
    let fits = json!({"name": "order_delayed", "language": "es", "params": ["#1", "martes"]});
    let (status, queued) = s.template_in(id, "e1", fits).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    s.sent(2).await;
}

#[tokio::test]
async fn without_the_business_account_a_template_lacking_its_file_fails_at_meta() {
    let s = system().await;
    // No waba_id: the API cannot read the template and lets the send go; Meta refuses it.
    let bare = json!({"to": "573005550183", "name": "order_invoice", "language": "es",
                      "params": ["Ana", "#1042"],
                      "buttons": [{"index": 0, "sub_type": "url", "parameter": "1042"}]});
    let (status, queued) = s.template_to("u1", bare).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    wait_count(
        &s.pg,
        "SELECT count(*) FROM outbound_messages
          WHERE kind = 'template' AND state = 'failed' AND error_code = 132000",
        1,
        30,
    )
    .await;
    assert!(s.sim.state.messages().is_empty());
    // Dashboards hear which template failed and what it carried, never its values.
    let cfg = &s.cfg;
    let event = eventually(
        "the template's message_failed event",
        Duration::from_secs(30),
        || async move { failure_events(cfg).await.pop() },
    )
    .await;
    let event: Value = serde_json::from_str(&event).unwrap();
    assert_eq!(
        (&event["message_kind"], &event["code"], &event["template"]),
        (
            &json!("template"),
            &json!(132000),
            &json!("[template: order_invoice] [2 parameters] [button 0]")
        ),
        "{event}"
    );
    assert!(!event.to_string().contains("Ana"), "{event}");
}

#[tokio::test]
async fn the_model_reads_a_template_with_its_file_and_buttons_as_the_customer_saw_it() {
    let s = system().await;
    s.with_account().await;
    let invoice = json!({"to": "573005550184", "name": "order_invoice", "language": "es",
        "params": ["Ana", "#1042"],
        "header": {"type": "document", "id": "1593081761623533", "filename": "factura-1042.pdf"},
        "buttons": [{"index": 0, "sub_type": "url", "parameter": "1042"}],
        "answered_by": "bot"});
    let (status, queued) = s.template_to("h1", invoice).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    s.sent(1).await;
    s.customer_writes(SHOP, "573005550184", "wamid.H1", 2).await;
    let asked = s.sim.state.llm_requests();
    let system = asked.last().unwrap().body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    for shown in [
        "[document factura-1042.pdf]",
        "adjuntamos la factura de tu pedido #1042.",
        "[button: Seguir pedido → https://shop.example/track/1042] [button: Hablar con alguien]",
    ] {
        assert!(system.contains(shown), "{shown}: {system}");
    }
    assert!(!system.contains("[template"), "{system}");
}

#[tokio::test]
async fn an_admin_clears_a_restriction_meta_lifted_early_and_the_channel_shows_it() {
    let p = platform().await;
    sqlx::query(
        "UPDATE channels SET account_event = 'ACCOUNT_RESTRICTION',
                account_restrictions = '[{\"type\": \"RESTRICTED_BIZ_INITIATED_MESSAGING\",
                                          \"expiration\": \"2099-04-19T13:59:20+0000\"}]'
          WHERE phone_number_id = $1",
    )
    .bind(OTHER)
    .execute(&p.pg)
    .await
    .unwrap();
    let path = format!("/api/v1/channels/{OTHER}/clear-restriction");
    let (status, _) = p.api.post(&path, &p.agents).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, shown) = p
        .api
        .get(&format!("/api/v1/channels/{OTHER}"), &p.admin)
        .await;
    assert_eq!(shown["meta_status"]["account_restricted"], true);

    let (status, shown) = p.api.post(&path, &p.admin).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(
        shown["restrictions_cleared"],
        json!([{"type": "RESTRICTED_BIZ_INITIATED_MESSAGING",
                "expiration": "2099-04-19T13:59:20+0000"}])
    );
    assert_eq!(shown["meta_status"]["account_restricted"], false);
    assert_eq!(shown["meta_status"]["account_restrictions"], json!([]));
    assert_eq!(shown["meta_status"]["account_event"], "ACCOUNT_RESTRICTION");
    assert_eq!(
        p.api
            .get(&format!("/api/v1/channels/{OTHER}"), &p.admin)
            .await
            .1["meta_status"]["account_restricted"],
        false
    );
    // Nothing left: said, nothing changed.
    let (status, shown) = p.api.post(&path, &p.admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["restrictions_cleared"], json!([]));
    let (status, _) = p
        .api
        .post(
            "/api/v1/channels/106540352249999/clear-restriction",
            &p.admin,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

// --- Templates with named parameters, and templates Meta paused ---

/// The shop's order-pickup template: named parameters in its header and body (the simulator's
/// `order_pickup`).
fn pickup(to: &str, header: Value, params: Value) -> Value {
    json!({"to": to, "name": "order_pickup", "language": "es",
           "header": {"type": "text", "parameters": header}, "params": params})
}

#[tokio::test]
async fn a_named_template_goes_out_with_each_parameter_named_and_a_mismatch_is_refused_unrecorded()
{
    let s = system().await;
    s.with_account().await;
    let fits = pickup(
        "573005550190",
        json!({"order_id": "#1042"}),
        json!({"store": "Calle 10 #4-20", "customer_name": "Ana", "order_id": "#1042"}),
    );
    let (status, started) = s.template_to("k1", fits).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["conversation_id"].as_i64().unwrap();
    let sent = s.sent(1).await;
    assert_eq!(
        sent[0].template,
        Some(
            json!({"name": "order_pickup", "language": {"code": "es"}, "components": [
                {"type": "header", "parameters":
                    [{"type": "text", "parameter_name": "order_id", "text": "#1042"}]},
                {"type": "body", "parameters": [
                    {"type": "text", "parameter_name": "customer_name", "text": "Ana"},
                    {"type": "text", "parameter_name": "order_id", "text": "#1042"},
                    {"type": "text", "parameter_name": "store", "text": "Calle 10 #4-20"}]},
            ]})
        )
    );

    // A name missing, one the template does not have, parameters in order: each named, 422.
    let cases = [
        (
            json!({"name": "order_pickup", "language": "es",
                   "header": {"type": "text", "parameters": {"order_id": "#7"}},
                   "params": {"customer": "Ana", "order_id": "#7"}}),
            vec![
                "template order_pickup's body needs {{customer_name}}",
                "template order_pickup's body needs {{store}}",
                "template order_pickup's body has no {{customer}}",
            ],
        ),
        (
            json!({"name": "order_pickup", "language": "es",
                   "params": {"customer_name": "Ana", "order_id": "#7", "store": "Centro"}}),
            vec!["template order_pickup's header needs {{order_id}}"],
        ),
        (
            json!({"name": "order_pickup", "language": "es",
                   "header": {"type": "text", "parameters": {"order_id": "#7"}},
                   "params": ["Ana", "#7", "Centro"]}),
            vec![
                "template order_pickup's body takes named parameters ({{customer_name}}, \
                 {{order_id}}, {{store}})",
            ],
        ),
        (
            json!({"name": "order_delayed", "language": "es",
                   "params": {"order_id": "#7", "date": "martes"}}),
            vec!["template order_delayed's body takes its parameters in order"],
        ),
    ];
    for (body, named) in cases {
        let (status, refused) = s.template_in(id, "m1", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
        let error = refused["error"].as_str().unwrap();
        for part in named {
            assert!(error.contains(part), "{part}: {error}");
        }
    }
    let templates = "SELECT count(*) FROM outbound_messages WHERE kind = 'template'";
    assert_eq!(count(&s.pg, templates).await, 1);

    // The transcript shows the names with what went.
    let (_, shown) = s
        .api
        .get(&format!("/api/v1/conversations/{id}"), &s.shop)
        .await;
    let lines: Vec<&str> = shown["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "template")
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            "[template: order_pickup] [header: order_id: #1042] customer_name: Ana | \
          order_id: #1042 | store: Calle 10 #4-20"
        ]
    );
    assert_eq!(s.sim.state.messages().len(), 1);
}

#[tokio::test]
async fn the_model_reads_a_named_template_as_the_customer_read_it() {
    let s = system().await;
    s.with_account().await;
    let mut body = pickup(
        "573005550197",
        json!({"order_id": "#1042"}),
        json!({"customer_name": "Ana", "order_id": "#1042", "store": "Calle 10"}),
    );
    body["answered_by"] = json!("bot");
    let (status, queued) = s.template_to("nb1", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    s.sent(1).await;
    s.customer_writes(SHOP, "573005550197", "wamid.NB1", 2)
        .await;
    let asked = s.sim.state.llm_requests();
    let system = asked.last().unwrap().body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    for shown in [
        "Pedido #1042 listo",
        "Hola Ana, recoge tu pedido #1042 en Calle 10.",
        "Tienda Sol",
    ] {
        assert!(system.contains(shown), "{shown}: {system}");
    }
    assert!(!system.contains("{{"), "{system}");
    assert!(!system.contains("[template"), "{system}");
}

/// The order-delayed template (positional parameters) to `to` through `api`, with the shop's
/// `token`.
async fn delayed_through(api: &Api, token: &str, key: &str, to: &str) -> (StatusCode, Value) {
    let body = json!({"to": to, "name": "order_delayed", "language": "es",
                      "params": ["#2001", "el martes"]});
    api.call(
        reqwest::Method::POST,
        &format!("/api/v1/channels/{SHOP}/templates"),
        Some(token),
        Some(key),
        Some(body),
    )
    .await
}

/// A webhook of Meta's `message_template_status_update` for the shop's business account.
fn template_status(event: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA, "time": 1_748_454_394, "changes": [{
            "field": "message_template_status_update",
            "value": {"event": event, "message_template_id": 900_006,
                      "message_template_name": name, "message_template_language": "es",
                      "reason": null}}]}]
    }))
    .unwrap()
}

#[tokio::test]
async fn a_paused_template_is_refused_by_every_api_process_within_seconds_and_sent_once_reinstated()
{
    // The worker runs the account stage too; a second API process beside the first.
    let s = system_with(SimConfig::default(), |w| w.stages.push("account".into())).await;
    s.with_account().await;
    let second = Api::start_with(&s.cfg, Some(s.cfg.cipher()), &s.sim.url).await;
    let shop = s.shop.as_str();
    // Both processes read the approved template (and keep it).
    for (api, key, to) in [
        (&s.api, "a1", "573005550191"),
        (&second, "b1", "573005550192"),
    ] {
        let (status, body) = delayed_through(api, shop, key, to).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    s.sent(2).await;

    // Meta pauses it: its list says so, and the account stage hears it.
    s.sim
        .state
        .set_template_status("order_delayed", "es", "PAUSED");
    let paused_at = std::time::Instant::now();
    let posted = s
        .ingest
        .post_signed(&template_status("PAUSED", "order_delayed"), APP_SECRET)
        .await;
    assert_eq!(posted.status(), 200);
    for (api, name) in [(&s.api, "first"), (&second, "second")] {
        let refused = eventually(
            &format!("the {name} API process refusing the paused template"),
            Duration::from_secs(15),
            || async move {
                let (status, body) = delayed_through(api, shop, "paused", "573005550193").await;
                (status == StatusCode::UNPROCESSABLE_ENTITY).then_some(body)
            },
        )
        .await;
        let error = refused["error"].as_str().unwrap();
        assert!(
            error.contains("template order_delayed is PAUSED at Meta"),
            "{error}"
        );
    }
    eprintln!(
        "both API processes refused the paused template {:?} after the webhook",
        paused_at.elapsed()
    );
    // Refused up front: a fresh request records nothing, makes no conversation, sends nothing.
    let (status, _) = delayed_through(&second, shop, "p2", "573005550194").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let made = "SELECT count(*) FROM conversations WHERE wa_id = '573005550194'";
    assert_eq!(count(&s.pg, made).await, 0);
    let metrics = s
        .api
        .http
        .get(format!("{}/metrics", second.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric_value(
            &metrics,
            "wafleet_template_checks_total{result=\"stopped\"}"
        ) >= 1.0,
        "{metrics}"
    );

    // Meta reinstates it: both processes send it again.
    s.sim
        .state
        .set_template_status("order_delayed", "es", "APPROVED");
    let posted = s
        .ingest
        .post_signed(&template_status("REINSTATED", "order_delayed"), APP_SECRET)
        .await;
    assert_eq!(posted.status(), 200);
    for (api, key, to) in [
        (&s.api, "a2", "573005550195"),
        (&second, "b2", "573005550196"),
    ] {
        eventually(
            "the reinstated template accepted",
            Duration::from_secs(15),
            || async move {
                let (status, _) = delayed_through(api, shop, key, to).await;
                (status == StatusCode::ACCEPTED).then_some(())
            },
        )
        .await;
    }
    s.sent(4).await;
}
