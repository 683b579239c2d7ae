//! The agent API (`wafleet-api`) on the real Redis and Postgres, with the whole pipeline behind
//! it and the simulator standing in for Meta and the model.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use wafleet::config::{RedisLayout, Secret};
use wafleet::store::api_tokens;
use wafleet_sim::SimConfig;
use wafleet_tests::*;

const SHOP: &str = "106540352242922";
const OTHER: &str = "106540352242923";

struct Api {
    url: String,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Api {
    async fn start(cfg: &TestConfig) -> Self {
        let settings = wafleet::api::ApiSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: Secret::new(cfg.database_url.clone()),
            redis: RedisLayout {
                redis_url: Secret::new(cfg.redis_url.clone()),
                redis_prefix: cfg.prefix.clone(),
                partitions: cfg.partitions,
            },
            database_pool_size: 4,
            plan_cache_mode: Default::default(),
            max_event_streams: 4,
            request_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(1),
        };
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

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None, None)
            .await
    }

    async fn post(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(token), None, None)
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
    _worker: Worker,
    cfg: TestConfig,
}

async fn system() -> Sys {
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
            ..Default::default()
        },
        Some(&ingest),
    )
    .await;
    let worker = Worker::start(cfg.pipeline_settings(
        &["conversation", "status", "llm", "sender"],
        &sim,
        vec![sim.standin()],
    ))
    .await;
    let pg = cfg.pg().await;
    let token = |name: &'static str, numbers: &'static [&'static str]| {
        let pg = pg.clone();
        async move {
            let numbers: Vec<String> = numbers.iter().map(|n| n.to_string()).collect();
            api_tokens::add(&pg, name, &numbers).await.unwrap().unwrap()
        }
    };
    let (all, shop, other) = (
        token("platform", &[]).await,
        token("shop", &[SHOP]).await,
        token("other", &[OTHER]).await,
    );
    Sys {
        api: Api::start(&cfg).await,
        ingest,
        sim,
        pg,
        all,
        shop,
        other,
        _worker: worker,
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
                if !e.0.is_empty() {
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
    let open = |token: String, last: Option<String>| {
        let mut req = api
            .http
            .get(format!("{}/api/v1/events", api.url))
            .bearer_auth(token);
        if let Some(id) = last {
            req = req.header("last-event-id", id);
        }
        async move {
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()["content-type"], "text/event-stream");
            res
        }
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
