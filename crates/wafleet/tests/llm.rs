//! The LLM client and fallback chain against HTTP mocks standing in for Anthropic, OpenAI and
//! DeepSeek. Deadlines and backoffs are tens of milliseconds so the suite stays fast; the one
//! exception is the `retry-after: 1` case, which really waits its second.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wafleet::config::Secret;
use wafleet::llm::{
    ChatMessage, ChatRequest, FallbackPolicy, LlmClient, LlmError, ProviderConfig, ProviderKind,
    Reply, Usage, reply_with_fallback,
};
use wafleet_core::retry::Backoff;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const ANTHROPIC_KEY: &str = "sk-ant-test-key";
const OPENAI_KEY: &str = "sk-openai-test-key";
const CANNED: &str = "Sorry, we can't answer right now. A colleague will get back to you.";

fn anthropic(server: &MockServer, name: &str) -> ProviderConfig {
    ProviderConfig {
        name: name.to_owned(),
        kind: ProviderKind::Anthropic,
        base_url: server.uri(),
        model: "claude-test".to_owned(),
        api_key: Secret::new(ANTHROPIC_KEY.to_owned()),
    }
}

fn openai(server: &MockServer, name: &str) -> ProviderConfig {
    ProviderConfig {
        name: name.to_owned(),
        kind: ProviderKind::OpenAiCompatible,
        // Like `https://api.openai.com/v1/`: a trailing slash must not double up.
        base_url: format!("{}/v1/", server.uri()),
        model: "gpt-test".to_owned(),
        api_key: Secret::new(OPENAI_KEY.to_owned()),
    }
}

fn request() -> ChatRequest {
    ChatRequest {
        system: "You are a helpful shop assistant.".to_owned(),
        messages: vec![
            ChatMessage::assistant("Welcome to the shop!"),
            ChatMessage::user("Hi"),
            ChatMessage::user("When do you open?"),
            ChatMessage::assistant("At 9am."),
            ChatMessage::user("And on Sundays?"),
        ],
        max_tokens: 300,
    }
}

/// Small numbers so retries cost milliseconds: backoff caps 40 ms, 80 ms, … (halved by jitter 0.5).
fn fast_policy() -> FallbackPolicy {
    FallbackPolicy {
        attempts_per_provider: 3,
        overall_deadline: Duration::from_secs(10),
        call_deadline: Duration::from_secs(2),
        backoff: Backoff {
            base: Duration::from_millis(40),
            max: Duration::from_millis(200),
            max_attempts: 3,
            max_age: Duration::from_secs(10),
        },
        max_retry_after: Duration::from_secs(2),
    }
}

fn anthropic_ok(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test-20250101",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 42, "output_tokens": 11}
    }))
}

fn openai_ok(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}
    }))
}

fn anthropic_error(status: u16, kind: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "type": "error", "error": {"type": kind, "message": "mock error"}, "request_id": "req_1"
    }))
}

async fn mount(server: &MockServer, path_: &str, response: ResponseTemplate, times: Option<u64>) {
    let mock = Mock::given(method("POST"))
        .and(path(path_))
        .respond_with(response);
    match times {
        Some(n) => mock.up_to_n_times(n).mount(server).await,
        None => mock.mount(server).await,
    }
}

const ANTHROPIC_PATH: &str = "/v1/messages";
const OPENAI_PATH: &str = "/v1/chat/completions";

#[derive(Clone, Copy)]
enum Api {
    Anthropic,
    OpenAi,
}

impl Api {
    fn path(self) -> &'static str {
        match self {
            Api::Anthropic => ANTHROPIC_PATH,
            Api::OpenAi => OPENAI_PATH,
        }
    }
    fn provider(self, server: &MockServer, name: &str) -> ProviderConfig {
        match self {
            Api::Anthropic => anthropic(server, name),
            Api::OpenAi => openai(server, name),
        }
    }
}

/// A chain of two providers, each `(api, name, what its server answers)`, asked with the fast
/// policy: the reply, and the first provider's server (to count what it received).
async fn two_providers(
    (first_api, first_name, first_answer): (Api, &str, ResponseTemplate),
    (second_api, second_name, second_answer): (Api, &str, ResponseTemplate),
) -> (Reply, MockServer) {
    let first = MockServer::start().await;
    let second = MockServer::start().await;
    mount(&first, first_api.path(), first_answer, None).await;
    mount(&second, second_api.path(), second_answer, None).await;
    let reply = reply(
        &[
            first_api.provider(&first, first_name),
            second_api.provider(&second, second_name),
        ],
        &fast_policy(),
    )
    .await;
    (reply, first)
}

async fn requests_received(server: &MockServer) -> usize {
    server.received_requests().await.unwrap_or_default().len()
}

async fn reply(providers: &[ProviderConfig], policy: &FallbackPolicy) -> Reply {
    reply_with_fallback(
        &LlmClient::new(),
        providers,
        &request(),
        policy,
        CANNED,
        &mut || 0.5,
    )
    .await
}

/// The value of one series in the process's Prometheus rendering, if it was recorded.
fn metric(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let rendered = wafleet::telemetry::metrics_handle().render();
    rendered
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn anthropic_request_carries_key_version_top_level_system_and_alternating_roles() {
    let server = MockServer::start().await;
    mount(
        &server,
        ANTHROPIC_PATH,
        anthropic_ok("We open at 10am."),
        None,
    )
    .await;

    let completion = LlmClient::new()
        .complete(
            &anthropic(&server, "anthropic"),
            &request(),
            Duration::from_secs(2),
        )
        .await
        .unwrap();

    assert_eq!(completion.text, "We open at 10am.");
    assert_eq!(
        completion.usage,
        Usage {
            input_tokens: 42,
            output_tokens: 11
        }
    );
    assert_eq!(completion.provider, "anthropic");
    assert_eq!(completion.model, "claude-test-20250101");
    assert_eq!(completion.stop_reason.as_deref(), Some("end_turn"));

    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    let sent = &received[0];
    assert_eq!(sent.headers["x-api-key"], ANTHROPIC_KEY);
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert_eq!(sent.headers["content-type"], "application/json");
    assert!(sent.headers.get("authorization").is_none());
    assert_eq!(
        sent.body_json::<Value>().unwrap(),
        json!({
            "model": "claude-test",
            "max_tokens": 300,
            "system": "You are a helpful shop assistant.",
            "messages": [
                {"role": "user", "content": "Hi\n\nWhen do you open?"},
                {"role": "assistant", "content": "At 9am."},
                {"role": "user", "content": "And on Sundays?"},
            ]
        })
    );
}

#[tokio::test]
async fn openai_request_carries_a_bearer_token_and_the_system_prompt_as_first_message() {
    let server = MockServer::start().await;
    mount(&server, OPENAI_PATH, openai_ok("Hi!"), None).await;

    let completion = LlmClient::new()
        .complete(
            &openai(&server, "openai"),
            &request(),
            Duration::from_secs(2),
        )
        .await
        .unwrap();

    assert_eq!(completion.text, "Hi!");
    assert_eq!(
        completion.usage,
        Usage {
            input_tokens: 20,
            output_tokens: 3
        }
    );
    assert_eq!(completion.stop_reason.as_deref(), Some("stop"));

    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    let sent = &received[0];
    assert_eq!(sent.headers["authorization"], "Bearer sk-openai-test-key");
    assert!(sent.headers.get("x-api-key").is_none());
    let body = sent.body_json::<Value>().unwrap();
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["max_tokens"], 300);
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "You are a helpful shop assistant."})
    );
    // From the customer's first turn on, one turn per side in turn (a leading assistant turn is
    // left out, two customer turns in a row go as one).
    let roles: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(
        body["messages"][3],
        json!({"role": "user", "content": "And on Sundays?"})
    );
}

#[tokio::test]
async fn deepseek_body_with_leading_blank_lines_is_parsed() {
    let server = MockServer::start().await;
    let body = "\n\n\n\n{\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hola, abrimos a las 10.\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":8}}";
    mount(
        &server,
        "/chat/completions",
        ResponseTemplate::new(200).set_body_raw(body, "application/json"),
        None,
    )
    .await;
    let deepseek = ProviderConfig {
        base_url: server.uri(),
        ..openai(&server, "deepseek")
    };

    let completion = LlmClient::new()
        .complete(&deepseek, &request(), Duration::from_secs(2))
        .await
        .unwrap();

    assert_eq!(completion.text, "Hola, abrimos a las 10.");
    assert_eq!(completion.model, "deepseek-chat");
    assert_eq!(completion.usage.output_tokens, 8);
}

#[tokio::test]
async fn rate_limit_with_retry_after_waits_then_succeeds_on_the_same_provider() {
    let server = MockServer::start().await;
    mount(
        &server,
        ANTHROPIC_PATH,
        anthropic_error(429, "rate_limit_error").insert_header("retry-after", "1"),
        Some(1),
    )
    .await;
    mount(&server, ANTHROPIC_PATH, anthropic_ok("Done."), None).await;

    let started = Instant::now();
    let reply = reply(&[anthropic(&server, "rl-anthropic")], &fast_policy()).await;

    assert_eq!(reply.text, "Done.");
    assert!(!reply.canned);
    assert_eq!(reply.provider.as_deref(), Some("rl-anthropic"));
    assert_eq!(requests_received(&server).await, 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reply.failures.len(), 1);
    assert!(reply.failures[0].1.contains("rate limited"));
}

#[tokio::test]
async fn retry_after_longer_than_the_cap_moves_to_the_next_provider_at_once() {
    let started = Instant::now();
    let (reply, first) = two_providers(
        (
            Api::Anthropic,
            "slow-anthropic",
            anthropic_error(429, "rate_limit_error").insert_header("retry-after", "30"),
        ),
        (Api::OpenAi, "backup", openai_ok("From the backup.")),
    )
    .await;

    assert_eq!(reply.text, "From the backup.");
    assert_eq!(reply.provider.as_deref(), Some("backup"));
    assert_eq!(requests_received(&first).await, 1);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn overload_and_server_errors_are_retried_with_backoff_then_succeed() {
    let server = MockServer::start().await;
    mount(
        &server,
        ANTHROPIC_PATH,
        anthropic_error(529, "overloaded_error"),
        Some(1),
    )
    .await;
    mount(
        &server,
        ANTHROPIC_PATH,
        anthropic_error(500, "api_error"),
        Some(1),
    )
    .await;
    mount(
        &server,
        ANTHROPIC_PATH,
        anthropic_ok("Third time lucky."),
        None,
    )
    .await;

    let started = Instant::now();
    let reply = reply(&[anthropic(&server, "flaky-anthropic")], &fast_policy()).await;

    assert_eq!(reply.text, "Third time lucky.");
    assert_eq!(requests_received(&server).await, 3);
    // Full jitter at 0.5: 20 ms after attempt 0, 40 ms after attempt 1.
    assert!(started.elapsed() >= Duration::from_millis(60));
    let outcomes: Vec<&str> = reply.failures.iter().map(|(_, e)| e.as_str()).collect();
    assert!(outcomes[0].contains("overloaded"), "{outcomes:?}");
    assert!(outcomes[1].contains("transient"), "{outcomes:?}");
}

#[tokio::test]
async fn openai_503_is_retried_with_backoff_then_succeeds() {
    let server = MockServer::start().await;
    mount(&server, OPENAI_PATH, ResponseTemplate::new(503), Some(2)).await;
    mount(&server, OPENAI_PATH, openai_ok("Back up."), None).await;

    let reply = reply(&[openai(&server, "busy-openai")], &fast_policy()).await;

    assert_eq!(reply.text, "Back up.");
    assert!(!reply.canned);
    assert_eq!(requests_received(&server).await, 3);
}

#[tokio::test]
async fn rejected_key_is_not_retried_raises_an_alert_and_the_next_provider_answers() {
    wafleet::telemetry::metrics_handle();
    let (reply, first) = two_providers(
        (
            Api::Anthropic,
            "bad-key-anthropic",
            anthropic_error(401, "authentication_error"),
        ),
        (
            Api::OpenAi,
            "good-key-openai",
            openai_ok("Hello from OpenAI."),
        ),
    )
    .await;

    assert_eq!(reply.text, "Hello from OpenAI.");
    assert_eq!(reply.provider.as_deref(), Some("good-key-openai"));
    assert_eq!(requests_received(&first).await, 1);
    assert_eq!(
        metric(
            "wafleet_llm_alerts_total",
            &[("provider", "bad-key-anthropic"), ("kind", "auth")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            "wafleet_llm_requests_total",
            &[("provider", "bad-key-anthropic"), ("outcome", "auth")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            "wafleet_llm_tokens_total",
            &[("provider", "good-key-openai"), ("kind", "output")]
        ),
        Some(3.0)
    );
    assert!(metric("wafleet_llm_fallbacks_total", &[("kind", "next_provider")]) >= Some(1.0));
    let (_, error) = &reply.failures[0];
    assert!(!error.contains(ANTHROPIC_KEY), "{error}");
}

#[tokio::test]
async fn anthropic_spend_cap_is_not_retried_and_the_next_provider_answers() {
    wafleet::telemetry::metrics_handle();
    let (reply, first) = two_providers(
        (
            Api::Anthropic,
            "capped-anthropic",
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(json!({
                    "type": "error",
                    "error": {
                        "type": "rate_limit_error",
                        "message": "You have reached your monthly spend limit",
                        "details": {"error_code": "enforced_spend_limit_reached"}
                    }
                })),
        ),
        (Api::OpenAi, "backup", openai_ok("Backup answer.")),
    )
    .await;

    assert_eq!(reply.text, "Backup answer.");
    assert_eq!(requests_received(&first).await, 1);
    assert!(
        reply.failures[0].1.contains("quota"),
        "{:?}",
        reply.failures
    );
    assert_eq!(
        metric(
            "wafleet_llm_alerts_total",
            &[("provider", "capped-anthropic"), ("kind", "quota")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn openai_insufficient_quota_is_not_retried_and_the_next_provider_answers() {
    wafleet::telemetry::metrics_handle();
    let (reply, first) = two_providers(
        (
            Api::OpenAi,
            "broke-openai",
            ResponseTemplate::new(429).set_body_json(json!({
                "error": {
                    "message": "You exceeded your current quota, please check your plan and billing details.",
                    "type": "insufficient_quota", "param": null, "code": "insufficient_quota"
                }
            })),
        ),
        (Api::Anthropic, "anthropic", anthropic_ok("Claude here.")),
    )
    .await;

    assert_eq!(reply.text, "Claude here.");
    assert_eq!(requests_received(&first).await, 1);
    assert_eq!(
        metric(
            "wafleet_llm_alerts_total",
            &[("provider", "broke-openai"), ("kind", "quota")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn when_every_provider_fails_the_canned_reply_is_sent_with_every_failure_listed() {
    let first = MockServer::start().await;
    let second = MockServer::start().await;
    mount(
        &first,
        ANTHROPIC_PATH,
        anthropic_error(500, "api_error"),
        None,
    )
    .await;
    mount(
        &second,
        OPENAI_PATH,
        ResponseTemplate::new(404).set_body_json(json!({
            "error": {"message": "The model `gpt-test` does not exist", "type": "invalid_request_error", "code": "model_not_found"}
        })),
        None,
    )
    .await;

    let reply = reply(
        &[
            anthropic(&first, "down-anthropic"),
            openai(&second, "misconfigured-openai"),
        ],
        &fast_policy(),
    )
    .await;

    assert!(reply.canned);
    assert_eq!(reply.text, CANNED);
    assert_eq!(reply.provider, None);
    assert_eq!(reply.usage, None);
    assert!(!reply.wants_human);
    assert_eq!(requests_received(&first).await, 3);
    assert_eq!(requests_received(&second).await, 1);
    let providers: Vec<&str> = reply.failures.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        providers,
        [
            "down-anthropic",
            "down-anthropic",
            "down-anthropic",
            "misconfigured-openai"
        ]
    );
    assert!(reply.failures[3].1.contains("model_not_found"));
}

#[tokio::test]
async fn a_provider_that_never_answers_times_out_within_the_call_deadline_and_falls_back() {
    let first = MockServer::start().await;
    let second = MockServer::start().await;
    mount(
        &first,
        "/chat/completions",
        openai_ok("too late").set_delay(Duration::from_secs(30)),
        None,
    )
    .await;
    mount(&second, ANTHROPIC_PATH, anthropic_ok("On time."), None).await;
    let stuck = ProviderConfig {
        base_url: first.uri(),
        ..openai(&first, "stuck-deepseek")
    };
    let policy = FallbackPolicy {
        attempts_per_provider: 2,
        call_deadline: Duration::from_millis(200),
        ..fast_policy()
    };

    let started = Instant::now();
    let reply = reply(&[stuck, anthropic(&second, "anthropic")], &policy).await;

    assert_eq!(reply.text, "On time.");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    // Not tried again: a provider that hung once is left for the next one.
    assert_eq!(
        reply.failures,
        [("stuck-deepseek".to_owned(), "deadline exceeded".to_owned())]
    );
    assert_eq!(requests_received(&first).await, 1);
}

/// A server that answers 200 at once, then sends one blank line every 20 ms forever, as DeepSeek
/// does while a request waits in its queue. Returns its base URL and the count of lines sent.
async fn keepalive_forever_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let lines = Arc::new(AtomicUsize::new(0));
    let counter = lines.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                // The pace of the simulated server, not a wait for work in the test.
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                loop {
                    tick.tick().await;
                    if socket.write_all(b"1\r\n\n\r\n").await.is_err() {
                        return;
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    (format!("http://{address}"), lines)
}

#[tokio::test]
async fn endless_keepalive_lines_do_not_extend_the_call_deadline() {
    let (base_url, lines) = keepalive_forever_server().await;
    let provider = ProviderConfig {
        name: "keepalive-deepseek".to_owned(),
        kind: ProviderKind::OpenAiCompatible,
        base_url,
        model: "deepseek-chat".to_owned(),
        api_key: Secret::new("sk-deepseek".to_owned()),
    };

    let started = Instant::now();
    let result = LlmClient::new()
        .complete(&provider, &request(), Duration::from_millis(300))
        .await;

    let elapsed = started.elapsed();
    assert_eq!(result, Err(LlmError::Timeout));
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(1),
        "{elapsed:?}"
    );
    // Headers arrived and the body kept flowing: an idle timeout would never have fired.
    assert!(lines.load(Ordering::Relaxed) >= 5, "{lines:?}");
}

#[tokio::test]
async fn a_provider_that_hangs_leaves_the_next_its_share_of_the_overall_deadline() {
    let first = MockServer::start().await;
    let second = MockServer::start().await;
    mount(
        &first,
        ANTHROPIC_PATH,
        anthropic_ok("too late").set_delay(Duration::from_secs(30)),
        None,
    )
    .await;
    mount(&second, OPENAI_PATH, openai_ok("In time."), None).await;
    // Calls may take the whole deadline, yet the first provider only gets half of it.
    let policy = FallbackPolicy {
        overall_deadline: Duration::from_millis(600),
        call_deadline: Duration::from_secs(5),
        ..fast_policy()
    };

    let started = Instant::now();
    let answered = reply(
        &[anthropic(&first, "slow"), openai(&second, "spare")],
        &policy,
    )
    .await;
    assert_eq!(answered.text, "In time.");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // When every provider hangs, the canned reply still comes within the overall deadline.
    let third = MockServer::start().await;
    mount(
        &third,
        OPENAI_PATH,
        openai_ok("too late").set_delay(Duration::from_secs(30)),
        None,
    )
    .await;
    let started = Instant::now();
    let canned = reply(
        &[anthropic(&first, "slow"), openai(&third, "also slow")],
        &policy,
    )
    .await;
    let elapsed = started.elapsed();
    assert!(canned.canned);
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    assert_eq!(requests_received(&third).await, 1);
}

#[tokio::test]
async fn connection_refused_is_transient_and_falls_back() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let server = MockServer::start().await;
    mount(&server, OPENAI_PATH, openai_ok("Still here."), None).await;
    let gone = ProviderConfig {
        name: "gone".to_owned(),
        kind: ProviderKind::Anthropic,
        base_url: format!("http://{address}"),
        model: "claude-test".to_owned(),
        api_key: Secret::new(ANTHROPIC_KEY.to_owned()),
    };

    let reply = reply(&[gone, openai(&server, "openai")], &fast_policy()).await;

    assert_eq!(reply.text, "Still here.");
    assert_eq!(reply.failures.len(), 3);
    assert!(
        reply.failures.iter().all(|(_, e)| e.contains("transient")),
        "{:?}",
        reply.failures
    );
}

#[tokio::test]
async fn handover_marker_sets_wants_human_and_is_stripped_from_the_text() {
    let server = MockServer::start().await;
    mount(
        &server,
        ANTHROPIC_PATH,
        anthropic_ok("[[HANDOVER]]\nTe paso con una persona del equipo."),
        None,
    )
    .await;

    let reply = reply(&[anthropic(&server, "anthropic")], &fast_policy()).await;

    assert!(reply.wants_human);
    assert!(!reply.canned);
    assert_eq!(reply.text, "Te paso con una persona del equipo.");
}

#[tokio::test]
async fn a_bare_handover_marker_leaves_an_empty_text_and_plain_answers_do_not_hand_over() {
    let server = MockServer::start().await;
    mount(&server, OPENAI_PATH, openai_ok("  [[HANDOVER]]  "), Some(1)).await;
    mount(&server, OPENAI_PATH, openai_ok("We open at 9."), None).await;
    let providers = [openai(&server, "openai")];

    let first = reply(&providers, &fast_policy()).await;
    let second = reply(&providers, &fast_policy()).await;

    assert!(first.wants_human);
    assert_eq!(first.text, "");
    assert!(!second.wants_human);
    assert_eq!(second.text, "We open at 9.");
}

#[tokio::test]
async fn a_key_that_cannot_be_sent_is_not_retried_and_raises_an_alert() {
    wafleet::telemetry::metrics_handle();
    // As a key read from a secret file often is: with its trailing newline.
    let first = MockServer::start().await;
    let second = MockServer::start().await;
    mount(&second, OPENAI_PATH, openai_ok("From the backup."), None).await;
    let pasted = ProviderConfig {
        api_key: Secret::new(format!("{ANTHROPIC_KEY}\n")),
        ..anthropic(&first, "pasted-key-anthropic")
    };

    let reply = reply(&[pasted, openai(&second, "backup")], &fast_policy()).await;

    assert_eq!(reply.text, "From the backup.");
    assert_eq!(reply.failures.len(), 1, "not retried: {:?}", reply.failures);
    assert!(
        reply.failures[0].1.contains("authentication"),
        "{:?}",
        reply.failures
    );
    assert!(!reply.failures[0].1.contains(ANTHROPIC_KEY));
    assert_eq!(
        metric(
            "wafleet_llm_alerts_total",
            &[("provider", "pasted-key-anthropic"), ("kind", "auth")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_provider_that_redirects_fails_without_the_key_reaching_the_other_host() {
    let elsewhere = MockServer::start().await;
    mount(&elsewhere, ANTHROPIC_PATH, anthropic_ok("stolen"), None).await;
    let redirecting = MockServer::start().await;
    mount(
        &redirecting,
        ANTHROPIC_PATH,
        ResponseTemplate::new(307)
            .insert_header("location", format!("{}{ANTHROPIC_PATH}", elsewhere.uri())),
        None,
    )
    .await;
    let err = LlmClient::new()
        .complete(
            &anthropic(&redirecting, "redirecting"),
            &request(),
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    assert_eq!(err.outcome(), "permanent", "{err}");
    assert_eq!(requests_received(&redirecting).await, 1);
    assert_eq!(
        requests_received(&elsewhere).await,
        0,
        "the redirect is not followed, so x-api-key stays with the configured host"
    );
}
