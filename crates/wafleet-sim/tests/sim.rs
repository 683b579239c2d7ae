//! The simulator's own behaviour, over HTTP on port 0: other tests only mean something if the
//! simulator answers like Meta and the LLM providers do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use wafleet_core::envelope::Update;
use wafleet_core::graph_error::{ErrorClass, ThrottleScope, parse_graph_error};
use wafleet_core::signature::{AppSecret, verify};
use wafleet_sim::{Fault, SimConfig, SimState, WebhookTarget};

const PNID: &str = "106540352242922";
const TOKEN: &str = "token-106";
const SECRET: &str = "sim-app-secret";

struct Sim {
    url: String,
    state: SimState,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

impl Sim {
    async fn start(config: SimConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = SimState::new(config);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(wafleet_sim::serve(state.clone(), listener, async move {
            let _ = stopped.await;
        }));
        Self {
            url,
            state,
            http: reqwest::Client::new(),
            _stop: stop,
        }
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.url)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("simulator answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn send(&self, to: &str, text: &str) -> (u16, Value) {
        self.post(
            &format!("/v23.0/{PNID}/messages"),
            Some(TOKEN),
            &text_body(to, text),
        )
        .await
    }
}

fn text_body(to: &str, text: &str) -> Value {
    json!({
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": format!("+{to}"),
        "type": "text", "text": {"preview_url": false, "body": text},
        "biz_opaque_callback_data": "job-1",
    })
}

fn config() -> SimConfig {
    SimConfig {
        tokens: HashMap::from([(PNID.to_owned(), TOKEN.to_owned())]),
        ..SimConfig::default()
    }
}

fn code_of(body: &Value) -> i64 {
    parse_graph_error(body.to_string().as_bytes())
        .expect("a Graph error body")
        .code
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A webhook receiver that keeps every (signature header, body) it is sent.
type Received = Arc<Mutex<Vec<(Option<String>, Bytes)>>>;

async fn webhook_receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let keep = received.clone();
    let app = axum::Router::new().route(
        "/webhooks/whatsapp",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let keep = keep.clone();
            async move {
                let signature = headers
                    .get("x-hub-signature-256")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                keep.lock().unwrap().push((signature, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/webhooks/whatsapp",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn with_webhooks(url: String) -> SimConfig {
    SimConfig {
        webhook: Some(WebhookTarget {
            url,
            app_secret: SECRET.into(),
        }),
        status_delay: Duration::from_millis(10),
        ..config()
    }
}

#[tokio::test]
async fn an_accepted_send_answers_like_meta_and_is_recorded() {
    let sim = Sim::start(config()).await;
    let (status, body) = sim.send("573001234567", "Hola").await;
    assert_eq!(status, 200);
    let wamid = body["messages"][0]["id"].as_str().unwrap();
    assert!(wamid.starts_with("wamid.SIM"));
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(
        body["contacts"],
        json!([{"input": "+573001234567", "wa_id": "573001234567"}])
    );

    let listed: Value = sim
        .http
        .get(format!("{}/_sim/messages", sim.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["wamid"], wamid);
    assert_eq!(listed[0]["body"], "Hola");
    assert_eq!(listed[0]["to"], "+573001234567");
    assert_eq!(listed[0]["callback_data"], "job-1");

    sim.post("/_sim/reset", None, &json!({})).await;
    assert!(sim.state.messages().is_empty());
}

#[tokio::test]
async fn over_the_throughput_a_number_gets_130429_as_http_400() {
    let sim = Sim::start(SimConfig {
        mps: 5,
        pair_burst: 0,
        ..config()
    })
    .await;
    let mut accepted = 0;
    let mut throttled = 0;
    for i in 0..12 {
        let (status, body) = sim.send(&format!("5730000000{i:02}"), "hi").await;
        match status {
            200 => accepted += 1,
            400 => {
                assert_eq!(code_of(&body), 130429);
                let error = parse_graph_error(body.to_string().as_bytes()).unwrap();
                assert_eq!(
                    error.class(400),
                    ErrorClass::Throttled {
                        scope: ThrottleScope::Number
                    }
                );
                throttled += 1;
            }
            other => panic!("unexpected HTTP {other}: {body}"),
        }
    }
    // A burst of 5, plus at most one refilled cell if the loop took over 200 ms.
    assert!((5..=6).contains(&accepted), "accepted {accepted}");
    assert_eq!(accepted + throttled, 12);
}

#[tokio::test]
async fn the_pair_limit_gives_131056_to_that_recipient_only() {
    let sim = Sim::start(SimConfig {
        pair_burst: 2,
        pair_period: Duration::from_secs(6),
        ..config()
    })
    .await;
    assert_eq!(sim.send("111", "1").await.0, 200);
    assert_eq!(sim.send("111", "2").await.0, 200);
    let (status, body) = sim.send("111", "3").await;
    assert_eq!((status, code_of(&body)), (400, 131056));
    assert_eq!(sim.send("222", "other recipient").await.0, 200);
    assert_eq!(sim.state.messages().len(), 3);
}

#[tokio::test]
async fn an_injected_fault_is_consumed_exactly_count_times_by_matching_sends() {
    let sim = Sim::start(config()).await;
    let (status, _) = sim
        .post(
            "/_sim/faults",
            None,
            &json!({"code": 131000, "http_status": 500, "count": 3, "recipient": "111"}),
        )
        .await;
    assert_eq!(status, 200);

    assert_eq!(sim.send("222", "not matching").await.0, 200);
    for _ in 0..3 {
        let (status, body) = sim.send("111", "x").await;
        assert_eq!((status, code_of(&body)), (500, 131000));
    }
    assert_eq!(sim.send("111", "fourth").await.0, 200);
    assert_eq!(sim.state.messages().len(), 2);
}

#[tokio::test]
async fn a_wrong_token_gets_401_with_code_190() {
    let sim = Sim::start(config()).await;
    let path = format!("/v23.0/{PNID}/messages");
    let body = text_body("111", "x");
    for token in [Some("wrong"), None] {
        let (status, error) = sim.post(&path, token, &body).await;
        assert_eq!((status, code_of(&error)), (401, 190), "{token:?}");
        let parsed = parse_graph_error(error.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.class(401), ErrorClass::Config);
    }
    let (status, error) = sim.post("/v23.0/999/messages", Some(TOKEN), &body).await;
    assert_eq!((status, code_of(&error)), (400, 100));
    assert!(sim.state.messages().is_empty());
}

/// `GET /{version}/{phone_number_id}` with the fields `wafleetctl channel check` asks for: the
/// number's token gets the number as Meta has it (its display number formatted, not digits); a
/// wrong token gets 190, quoting the token as Meta's "Malformed access token" does (what a client
/// must never print); a number the simulator does not know, 100 with subcode 33. A media id is
/// still a media file.
#[tokio::test]
async fn a_phone_number_answers_its_token_with_display_number_name_and_quality() {
    let sim = Sim::start(config()).await;
    let get = |id: String, token: &'static str, fields: bool| {
        let mut request = sim
            .http
            .get(format!("{}/v23.0/{id}", sim.url))
            .bearer_auth(token);
        if fields {
            request = request.query(&[(
                "fields",
                "display_phone_number,verified_name,quality_rating",
            )]);
        }
        async move {
            let response = request.send().await.expect("simulator answers");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, number) = get(PNID.into(), TOKEN, true).await;
    assert_eq!(status, 200, "{number}");
    assert_eq!(number["id"], PNID);
    assert_eq!(number["display_phone_number"], "+1 555-000-0000");
    assert_eq!(number["verified_name"], wafleet_sim::VERIFIED_NAME);
    assert_eq!(number["quality_rating"], "GREEN");

    let (status, error) = get(PNID.into(), "wrong-token-7", true).await;
    assert_eq!((status, code_of(&error)), (401, 190), "{error}");
    assert_eq!(
        error["error"]["message"], "Malformed access token wrong-token-7",
        "{error}"
    );
    // A token shaped like Meta's that is not the number's: expired or revoked.
    let (status, error) = get(PNID.into(), "EAAGexpired", true).await;
    assert_eq!((status, code_of(&error)), (401, 190), "{error}");
    assert!(!error.to_string().contains("EAAGexpired"), "{error}");

    let (status, error) = get("999".into(), TOKEN, true).await;
    assert_eq!((status, code_of(&error)), (400, 100), "{error}");
    assert_eq!(error["error"]["error_subcode"], 33, "{error}");

    let (status, media) = get("png-1".into(), TOKEN, false).await;
    assert_eq!(status, 200, "{media}");
    assert_eq!(media["mime_type"], "image/png");
}

#[tokio::test]
async fn text_longer_than_4096_characters_gets_code_100() {
    let sim = Sim::start(config()).await;
    let (status, body) = sim.send("111", &"a".repeat(4097)).await;
    assert_eq!((status, code_of(&body)), (400, 100));
    // The limit counts characters, not bytes.
    assert_eq!(sim.send("111", &"ñ".repeat(4096)).await.0, 200);
}

#[tokio::test]
async fn files_and_interactive_messages_are_recorded_with_their_object_and_bad_shapes_refused() {
    let sim = Sim::start(config()).await;
    let path = format!("/v23.0/{PNID}/messages");
    let send = |kind: &str, object: Value| {
        json!({"messaging_product": "whatsapp", "recipient_type": "individual",
               "to": "+573001234567", "type": kind, kind: object})
    };
    let image = json!({"link": "https://cdn.example.com/a.jpg", "caption": "Tu pedido"});
    let (status, _) = sim
        .post(&path, Some(TOKEN), &send("image", image.clone()))
        .await;
    assert_eq!(status, 200);
    let buttons = json!({"type": "button", "body": {"text": "¿Confirmas?"},
                         "action": {"buttons": [{"type": "reply", "reply": {"id": "si", "title": "Sí"}}]}});
    let (status, _) = sim
        .post(&path, Some(TOKEN), &send("interactive", buttons.clone()))
        .await;
    assert_eq!(status, 200);
    let sent = sim.state.messages();
    assert_eq!(
        sent.iter()
            .map(|m| (m.kind.as_str(), m.message.clone()))
            .collect::<Vec<_>>(),
        [("image", Some(image)), ("interactive", Some(buttons))]
    );

    for (kind, object, code) in [
        ("location", json!({"latitude": 1}), 100),
        ("image", json!({}), 131008),
        (
            "image",
            json!({"id": "1", "link": "https://x.example/a"}),
            100,
        ),
        ("audio", json!({"id": "1", "caption": "hola"}), 100),
        (
            "interactive",
            json!({"type": "button", "body": {"text": "x"}, "action": {"buttons": []}}),
            100,
        ),
        (
            "interactive",
            json!({"type": "carousel", "body": {"text": "x"}}),
            100,
        ),
        (
            "interactive",
            json!({"type": "list", "action": {"button": "Ver"}}),
            131008,
        ),
    ] {
        let (status, body) = sim
            .post(&path, Some(TOKEN), &send(kind, object.clone()))
            .await;
        assert_eq!((status, code_of(&body)), (400, code), "{kind} {object}");
    }
    assert_eq!(
        sim.state.messages().len(),
        2,
        "a refused send is not recorded"
    );
}

#[tokio::test]
async fn mark_read_and_typing_answer_success_and_are_recorded() {
    let sim = Sim::start(config()).await;
    let path = format!("/v23.0/{PNID}/messages");
    let read =
        json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN1"});
    let typing = json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN2",
                        "typing_indicator": {"type": "text"}});
    assert_eq!(
        sim.post(&path, Some(TOKEN), &read).await,
        (200, json!({"success": true}))
    );
    assert_eq!(sim.post(&path, Some(TOKEN), &typing).await.0, 200);
    let reads = sim.state.reads();
    assert_eq!(
        reads
            .iter()
            .map(|r| (r.message_id.as_str(), r.typing))
            .collect::<Vec<_>>(),
        [("wamid.IN1", false), ("wamid.IN2", true)]
    );
}

#[tokio::test]
async fn status_webhooks_are_signed_and_go_sent_delivered_read() {
    let (url, received) = webhook_receiver().await;
    let sim = Sim::start(with_webhooks(url)).await;
    let (_, body) = sim.send("573001234567", "Hola").await;
    let wamid = body["messages"][0]["id"].as_str().unwrap().to_owned();

    let posts = eventually("three status webhooks", || {
        let r = received.lock().unwrap();
        (r.len() == 3).then(|| r.clone())
    })
    .await;
    let secrets = [AppSecret::new(SECRET.as_bytes())];
    let mut statuses = Vec::new();
    for (signature, body) in &posts {
        verify(body, signature.as_deref().map(str::as_bytes), &secrets).expect("signed");
        let parsed = wafleet_core::webhook::parse(body).expect("ingest can parse it");
        let [Update::Status(status)] = parsed.updates.as_slice() else {
            panic!("one status per webhook: {:?}", parsed.updates);
        };
        assert_eq!(status.wamid, wamid);
        assert_eq!(status.origin.phone_number_id, PNID);
        assert_eq!(status.recipient_id.as_deref(), Some("573001234567"));
        assert_eq!(status.biz_opaque_callback_data.as_deref(), Some("job-1"));
        assert!(status.timestamp.is_some());
        statuses.push(status.status.clone());
    }
    assert_eq!(statuses, ["sent", "delivered", "read"]);
    let other = [AppSecret::new(b"another secret")];
    assert!(
        verify(
            &posts[0].1,
            posts[0].0.as_deref().map(str::as_bytes),
            &other
        )
        .is_err()
    );
}

#[tokio::test]
async fn an_async_131047_fault_accepts_the_send_then_posts_a_failed_status() {
    let (url, received) = webhook_receiver().await;
    let sim = Sim::start(with_webhooks(url)).await;
    sim.post(
        "/_sim/faults",
        None,
        &json!({"code": 131047, "count": 1, "async": true}),
    )
    .await;
    let (status, body) = sim.send("573001234567", "late reply").await;
    assert_eq!(status, 200);
    let wamid = body["messages"][0]["id"].as_str().unwrap().to_owned();

    let (signature, body) = eventually("the failed status", || {
        received.lock().unwrap().first().cloned()
    })
    .await;
    verify(
        &body,
        signature.as_deref().map(str::as_bytes),
        &[AppSecret::new(SECRET.as_bytes())],
    )
    .expect("signed");
    let parsed = wafleet_core::webhook::parse(&body).unwrap();
    let [Update::Status(failed)] = parsed.updates.as_slice() else {
        panic!("one status");
    };
    assert_eq!(
        (
            failed.wamid.as_str(),
            failed.status.as_str(),
            failed.error_code
        ),
        (wamid.as_str(), "failed", Some(131047))
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        received.lock().unwrap().len(),
        1,
        "no sent/delivered after failed"
    );
}

#[tokio::test]
async fn a_hanging_fault_never_answers_and_a_codeless_one_still_delivers() {
    let sim = Sim::start(config()).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let send = |to: &'static str| {
        client
            .post(format!("{}/v23.0/{PNID}/messages", sim.url))
            .bearer_auth(TOKEN)
            .json(&text_body(to, "x"))
            .send()
    };

    sim.state.add_fault(Fault {
        hang: true,
        ..Fault::code(131000, 1)
    });
    assert!(send("111").await.unwrap_err().is_timeout());
    assert!(
        sim.state.messages().is_empty(),
        "a failing hang sends nothing"
    );

    sim.state.add_fault(Fault {
        code: None,
        hang: true,
        ..Fault::code(0, 1)
    });
    assert!(send("111").await.unwrap_err().is_timeout());
    assert_eq!(sim.state.messages().len(), 1, "accepted, answer lost");

    assert_eq!(send("111").await.unwrap().status(), 200);
}

#[tokio::test]
async fn llm_endpoints_answer_in_the_providers_shapes_and_language() {
    let sim = Sim::start(SimConfig {
        llm_latency: Duration::from_millis(5),
        ..config()
    })
    .await;
    let (status, openai) = sim
        .post(
            "/v1/chat/completions",
            Some("sk-test"),
            &json!({"model": "gpt-4o-mini", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hola, ¿a qué hora abren el domingo?"}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(openai["object"], "chat.completion");
    assert_eq!(openai["choices"][0]["finish_reason"], "stop");
    let text = openai["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Recibí tu pregunta"), "{text}");
    let usage = &openai["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );

    let (status, anthropic) = sim
        .post(
            "/v1/messages",
            None,
            &json!({"model": "claude-sonnet-4-5", "max_tokens": 512, "system": "Be brief.",
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "Olá, vocês abrem no domingo?"}]}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(anthropic["type"], "message");
    assert_eq!(anthropic["stop_reason"], "end_turn");
    assert!(
        anthropic["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Recebi sua pergunta")
    );
    assert!(anthropic["usage"]["input_tokens"].as_u64().unwrap() > 0);

    let (_, handover) = sim
        .post(
            "/v1/messages",
            None,
            &json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "I want a human"}]}),
        )
        .await;
    assert_eq!(handover["content"][0]["text"], "[[HANDOVER]]");

    let (status, _) = sim
        .post(
            "/v1/messages",
            None,
            &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(status, 400, "max_tokens is required by Anthropic");
    assert_eq!(sim.state.llm_requests().len(), 3);
}

#[tokio::test]
async fn llm_faults_answer_count_requests_with_the_error_and_retry_after() {
    let sim = Sim::start(SimConfig {
        llm_latency: Duration::ZERO,
        ..config()
    })
    .await;
    sim.post(
        "/_sim/llm_faults",
        None,
        &json!({"status": 529, "count": 2, "retry_after": 3}),
    )
    .await;
    let request =
        json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..2 {
        let response = sim
            .http
            .post(format!("{}/v1/messages", sim.url))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 529);
        assert_eq!(response.headers()["retry-after"], "3");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "overloaded_error");
    }
    assert_eq!(sim.post("/v1/messages", None, &request).await.0, 200);
}

#[tokio::test]
async fn a_business_account_lists_its_subscribed_app_until_unsubscribed_as_meta_does() {
    let sim = Sim::start(SimConfig {
        tokens: HashMap::from([(PNID.to_owned(), TOKEN.to_owned())]),
        ..SimConfig::default()
    })
    .await;
    let path = "/v23.0/102290129340398/subscribed_apps";
    let call = |method: reqwest::Method, token: &'static str| {
        let request = sim
            .http
            .request(method, format!("{}{path}", sim.url))
            .bearer_auth(token);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let subscribed = json!({"data": [{"whatsapp_business_api_data": {
        "id": wafleet_sim::APP_ID, "name": "wafleet-sim",
        "link": format!("https://www.facebook.com/games/?app_id={}", wafleet_sim::APP_ID)}}]});
    assert_eq!(
        call(reqwest::Method::GET, TOKEN).await,
        (200, subscribed.clone())
    );
    let (status, refused) = call(reqwest::Method::GET, "not-a-token-it-knows").await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (401, json!(190))
    );

    let success = (200, json!({"success": true}));
    assert_eq!(call(reqwest::Method::DELETE, TOKEN).await, success);
    assert_eq!(
        call(reqwest::Method::GET, TOKEN).await,
        (200, json!({"data": []}))
    );
    assert_eq!(call(reqwest::Method::POST, TOKEN).await, success);
    assert_eq!(call(reqwest::Method::GET, TOKEN).await, (200, subscribed));
}
