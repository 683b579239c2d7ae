//! The LLM providers' stand-in: OpenAI-shaped `POST /v1/chat/completions` (and DeepSeek's
//! `/chat/completions`) and Anthropic-shaped `POST /v1/messages`.
//!
//! Answers take [`crate::SimConfig::llm_latency`] and are canned but depend on the conversation:
//! [`reply_for`] detects the language of the last user message (Spanish, Portuguese, else
//! English) by counting marker words and letters, and quotes the start of the question back, so
//! an end-to-end test can tell which message an answer belongs to. When the last user message
//! contains the word `humano`/`humana`/`human`/`atendente` (any case), the answer is exactly
//! `[[HANDOVER]]` — the marker wafleet's LLM stage treats as "the model asks for a person".
//! `usage` counts about four characters per token. No API key is checked.
//!
//! Queued [`LlmFault`]s answer the next `count` matching requests with an error in the provider's
//! shape (or a given body), with `retry-after` when set.
//!
//! `POST /v1/audio/transcriptions` (also `/audio/transcriptions`) takes OpenAI's multipart form
//! (`file`, `model`) and answers `{"text": …}`: [`transcript_of`] the file, so a test decides
//! what a voice note says by its media id (see `media`). Only faults whose `provider` is
//! `transcription` apply to it.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{SimState, lock, now_ms};

/// What the model writes to ask for a human (wafleet's `HANDOVER_MARKER`).
pub const HANDOVER_MARKER: &str = "[[HANDOVER]]";

/// An error to inject into the next `count` LLM requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlmFault {
    /// HTTP status: 429, 500, 529 (Anthropic overloaded), 503, 401…
    pub status: u16,
    #[serde(default = "one")]
    pub count: u32,
    /// Seconds, sent as the `retry-after` header.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// The response body: a JSON string is sent as raw text, any other JSON as JSON. Default: the
    /// provider's error shape for the status.
    #[serde(default)]
    pub body: Option<Value>,
    /// `openai` or `anthropic`; `null` matches both. `transcription` matches transcriptions
    /// only.
    #[serde(default)]
    pub provider: Option<String>,
    /// Waited before answering.
    #[serde(default)]
    pub delay_ms: u64,
}

fn one() -> u32 {
    1
}

/// One LLM request, as `GET /_sim/llm_requests` lists it (tests check, e.g., that prompts were
/// redacted before leaving wafleet).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlmRequest {
    /// `openai` or `anthropic`.
    pub provider: String,
    pub model: String,
    /// Text of the last user message.
    pub last_user_message: String,
    /// The whole request body.
    pub body: Value,
    pub received_at: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Provider {
    OpenAi,
    Anthropic,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
        }
    }

    fn error(self, status: u16, message: &str) -> Response {
        let body = match self {
            Self::Anthropic => {
                let kind = match status {
                    400 => "invalid_request_error",
                    401 => "authentication_error",
                    402 => "billing_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    409 => "conflict_error",
                    413 => "request_too_large",
                    429 => "rate_limit_error",
                    529 => "overloaded_error",
                    _ => "api_error",
                };
                json!({"type": "error", "error": {"type": kind, "message": message},
                       "request_id": format!("req_sim{:x}", rand::random::<u64>())})
            }
            Self::OpenAi => {
                let (kind, code) = match status {
                    400 => ("invalid_request_error", Value::Null),
                    401 => ("invalid_request_error", json!("invalid_api_key")),
                    429 => ("requests", json!("rate_limit_exceeded")),
                    _ => ("server_error", Value::Null),
                };
                json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
            }
        };
        (status_code(status), Json(body)).into_response()
    }
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

pub(crate) async fn chat_completions(State(sim): State<SimState>, body: Bytes) -> Response {
    complete(sim, Provider::OpenAi, body).await
}

pub(crate) async fn anthropic_messages(State(sim): State<SimState>, body: Bytes) -> Response {
    complete(sim, Provider::Anthropic, body).await
}

async fn complete(sim: SimState, provider: Provider, body: Bytes) -> Response {
    let fault = take_fault(&sim, |p| {
        p != Some("transcription") && p.is_none_or(|p| p == provider.name())
    });
    if let Some(fault) = fault {
        return injected(provider, fault).await;
    }

    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return provider.error(400, "The request body is not valid JSON.");
    };
    let Some(messages) = request["messages"].as_array().filter(|m| !m.is_empty()) else {
        return provider.error(400, "messages: field required and must not be empty");
    };
    let Some(model) = request["model"].as_str() else {
        return provider.error(400, "model: field required");
    };
    if provider == Provider::Anthropic && !request["max_tokens"].is_u64() {
        return provider.error(400, "max_tokens: field required");
    }
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default();
    let user_turns = messages.iter().filter(|m| m["role"] == "user").count();
    lock(&sim.0.llm_requests).push(LlmRequest {
        provider: provider.name().into(),
        model: model.into(),
        last_user_message: last_user.clone(),
        body: request.clone(),
        received_at: now_ms(),
    });

    tokio::select! {
        _ = tokio::time::sleep(sim.config().llm_latency) => {}
        _ = sim.0.shutdown.cancelled() => return provider.error(529, "simulator shutting down"),
    }

    let reply = reply_for(&last_user, user_turns);
    let prompt_chars: usize = messages
        .iter()
        .map(|m| text_of(&m["content"]).len())
        .sum::<usize>()
        + text_of(&request["system"]).len();
    let input_tokens = prompt_chars.div_ceil(4).max(1);
    let output_tokens = reply.len().div_ceil(4).max(1);
    let id = sim.next_id();
    let (body, request_id_header) = match provider {
        Provider::OpenAi => (
            json!({
                "id": format!("chatcmpl-sim{id}"),
                "object": "chat.completion",
                "created": now_ms() / 1000,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                          "total_tokens": input_tokens + output_tokens},
            }),
            "x-request-id",
        ),
        Provider::Anthropic => (
            json!({
                "id": format!("msg_sim{id}"),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": reply}],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
            }),
            "request-id",
        ),
    };
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("req_sim{id}")) {
        headers.insert(request_id_header, value);
    }
    (StatusCode::OK, headers, Json(body)).into_response()
}

/// One transcription request, as `GET /_sim/transcriptions` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TranscriptionRequest {
    pub model: String,
    pub file_name: String,
    pub content_type: String,
    /// The file, as text (the simulator's media are text).
    pub file: String,
    /// What was answered (`None`: an error).
    pub transcript: Option<String>,
    pub received_at: u64,
}

/// What the recording `file` says: a simulator voice note (`media_bytes("ogg-<hex>")`) says the
/// UTF-8 text its id spells in hex; any other file says `transcript of <file>`; `None` for a
/// file whose id contains `corrupt` (answered 400, as OpenAI does an unreadable file).
pub fn transcript_of(file: &str) -> Option<String> {
    if file.contains("corrupt") {
        return None;
    }
    let spoken = file
        .strip_prefix("wafleet-sim media ogg-")
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| String::from_utf8(b).ok());
    Some(spoken.unwrap_or_else(|| format!("transcript of {file}")))
}

pub(crate) async fn transcriptions(
    State(sim): State<SimState>,
    mut form: axum::extract::Multipart,
) -> Response {
    let provider = Provider::OpenAi;
    if let Some(fault) = take_fault(&sim, |p| p == Some("transcription")) {
        return injected(provider, fault).await;
    }
    let (mut model, mut file) = (None, None);
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_string();
                let file_name = field.file_name().unwrap_or_default().to_string();
                let content_type = field.content_type().unwrap_or_default().to_string();
                let Ok(bytes) = field.bytes().await else {
                    return provider.error(400, "The multipart body could not be read.");
                };
                match name.as_str() {
                    "model" => model = Some(String::from_utf8_lossy(&bytes).into_owned()),
                    "file" => file = Some((file_name, content_type, bytes)),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(_) => return provider.error(400, "The request is not multipart/form-data."),
        }
    }
    let Some(model) = model else {
        return provider.error(400, "model: field required");
    };
    let Some((file_name, content_type, bytes)) = file else {
        return provider.error(400, "file: field required");
    };
    let known = [
        "flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "wav", "webm",
    ];
    if !known
        .iter()
        .any(|ext| file_name.ends_with(&format!(".{ext}")))
    {
        return provider.error(
            400,
            &format!("Invalid file format. Supported formats: {known:?}"),
        );
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let transcript = transcript_of(&text);
    lock(&sim.0.transcriptions).push(TranscriptionRequest {
        model,
        file_name,
        content_type,
        file: text,
        transcript: transcript.clone(),
        received_at: now_ms(),
    });
    match transcript {
        Some(text) => Json(json!({"text": text})).into_response(),
        None => provider.error(
            400,
            "Audio file might be corrupted or unsupported (wafleet-sim).",
        ),
    }
}

/// The first queued fault left whose `provider` `applies` to, counted down by one.
fn take_fault(sim: &SimState, applies: impl Fn(Option<&str>) -> bool) -> Option<LlmFault> {
    let mut faults = lock(&sim.0.llm_faults);
    faults
        .iter_mut()
        .find(|f| f.count > 0 && applies(f.provider.as_deref()))
        .map(|f| {
            f.count -= 1;
            f.clone()
        })
}

async fn injected(provider: Provider, fault: LlmFault) -> Response {
    if fault.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
    }
    let mut response = match fault.body {
        Some(Value::String(raw)) => (status_code(fault.status), raw).into_response(),
        Some(body) => (status_code(fault.status), Json(body)).into_response(),
        None => provider.error(fault.status, "Simulated failure (wafleet-sim)."),
    };
    if let Some(seconds) = fault.retry_after {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(seconds));
    }
    response
}

/// Text of a message `content`: a string, or the concatenated `text` of its text blocks/parts.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    Es,
    Pt,
    En,
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Spanish, Portuguese or English, by marker words and letters; English when nothing points
/// elsewhere. Words both languages share (`de`, `para`, `como`, `está`) are not counted.
fn language(text: &str) -> Lang {
    const ES: &[&str] = &[
        "hola", "gracias", "quiero", "necesito", "dónde", "donde", "cómo", "qué", "cuál", "cuánto",
        "cuanto", "tienen", "hay", "buenos", "buenas", "días", "el", "los", "las", "y", "con",
        "un", "una", "puedo", "mi", "mis", "usted", "ustedes", "pero", "también", "hasta", "ayuda",
        "hablar", "pedido", "envío", "horario", "abren", "sí",
    ];
    const PT: &[&str] = &[
        "olá",
        "ola",
        "obrigado",
        "obrigada",
        "quero",
        "preciso",
        "onde",
        "você",
        "voce",
        "vocês",
        "não",
        "nao",
        "meu",
        "minha",
        "tem",
        "bom",
        "boa",
        "dia",
        "o",
        "os",
        "e",
        "com",
        "um",
        "uma",
        "posso",
        "também",
        "até",
        "ajudar",
        "falar",
        "entrega",
        "horário",
        "abrem",
        "sim",
        "atendente",
        "pedido",
    ];
    const EN: &[&str] = &[
        "hello", "hi", "thanks", "thank", "please", "want", "need", "where", "how", "what", "my",
        "the", "is", "are", "you", "can", "order", "when", "open", "help", "with", "and", "i",
    ];
    let (mut es, mut pt, mut en) = (0, 0, 0);
    for word in words(text) {
        es += usize::from(ES.contains(&word.as_str()));
        pt += usize::from(PT.contains(&word.as_str()));
        en += usize::from(EN.contains(&word.as_str()));
    }
    for c in text.chars() {
        match c {
            'ñ' | 'Ñ' | '¿' | '¡' => es += 2,
            'ã' | 'õ' | 'ç' | 'ê' | 'Ã' | 'Õ' | 'Ç' => pt += 2,
            _ => {}
        }
    }
    if es > pt && es > en {
        Lang::Es
    } else if pt > es && pt > en {
        Lang::Pt
    } else {
        Lang::En
    }
}

/// The simulator's answer to a conversation whose last user message is `user_text`, the
/// `user_turns`-th message of the user. See the module docs.
pub fn reply_for(user_text: &str, user_turns: usize) -> String {
    if words(user_text).any(|w| matches!(w.as_str(), "humano" | "humana" | "human" | "atendente")) {
        return HANDOVER_MARKER.to_owned();
    }
    let flat = user_text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut quote: String = flat.chars().take(80).collect();
    if flat.chars().count() > 80 {
        quote.push('…');
    }
    let follow_up = user_turns > 1;
    match language(user_text) {
        Lang::Es => format!(
            "{}Recibí tu pregunta: «{quote}». Con gusto te ayudo: ya la revisé y te confirmo los detalles en un momento. ¿Necesitas algo más?",
            if follow_up {
                "Sigo con tu consulta. "
            } else {
                "¡Hola! "
            }
        ),
        Lang::Pt => format!(
            "{}Recebi sua pergunta: «{quote}». Vou te ajudar: já verifiquei e confirmo os detalhes em instantes. Precisa de mais alguma coisa?",
            if follow_up {
                "Continuando seu atendimento. "
            } else {
                "Olá! "
            }
        ),
        Lang::En => format!(
            "{}I received your question: \"{quote}\". Happy to help: I've looked into it and will confirm the details shortly. Anything else?",
            if follow_up { "Following up. " } else { "Hi! " }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_language_of_the_question_decides_the_language_of_the_answer() {
        let cases = [
            ("Hola, ¿a qué hora abren el domingo?", Lang::Es),
            ("quiero saber dónde está mi pedido", Lang::Es),
            ("Olá, vocês abrem no domingo?", Lang::Pt),
            ("não recebi meu pedido, pode verificar?", Lang::Pt),
            ("Hi, when do you open on Sunday?", Lang::En),
            ("12345", Lang::En),
            ("", Lang::En),
        ];
        for (text, lang) in cases {
            assert_eq!(language(text), lang, "{text}");
        }
        assert!(
            reply_for("Hola, ¿abren hoy?", 1)
                .starts_with("¡Hola! Recibí tu pregunta: «Hola, ¿abren hoy?»")
        );
        assert!(reply_for("Olá, vocês abrem hoje?", 2).starts_with("Continuando seu atendimento."));
        assert!(reply_for("Do you ship abroad?", 1).contains("\"Do you ship abroad?\""));
    }

    #[test]
    fn asking_for_a_person_gets_the_handover_marker() {
        for text in [
            "Quiero hablar con un HUMANO",
            "talk to a human please",
            "falar com atendente",
        ] {
            assert_eq!(reply_for(text, 1), HANDOVER_MARKER, "{text}");
        }
        assert_ne!(reply_for("humanity is great", 1), HANDOVER_MARKER);
    }

    #[test]
    fn long_questions_are_quoted_shortened() {
        let long = "palabra ".repeat(40);
        let reply = reply_for(&long, 1);
        assert!(reply.contains('…'));
        assert!(reply.chars().count() < 300);
    }
}
