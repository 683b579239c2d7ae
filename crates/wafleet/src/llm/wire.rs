//! The two JSON dialects, as pure functions: where to POST, the body to send, and how to read the
//! answer. No I/O here, so every shape is unit-tested exactly.

use serde::Deserialize;
use serde_json::{Value, json};
use wafleet_core::llm_error::strip_leading_keepalive;

use super::{ChatMessage, ChatRequest, LlmError, ProviderKind, Role, Usage};

/// The Anthropic API version we speak; the response shape below is the one of this version.
pub(super) const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The endpoint of a provider, joined without double slashes. For Anthropic a base URL that
/// already ends in `/v1` does not get a second one.
pub(super) fn endpoint(kind: ProviderKind, base_url: &str) -> String {
    let base = base_url.trim().trim_end_matches('/');
    match kind {
        ProviderKind::Anthropic if base.ends_with("/v1") => format!("{base}/messages"),
        ProviderKind::Anthropic => format!("{base}/v1/messages"),
        ProviderKind::OpenAiCompatible => format!("{base}/chat/completions"),
    }
}

/// The request body for `kind`.
pub(super) fn request_body(
    kind: ProviderKind,
    model: &str,
    req: &ChatRequest,
) -> Result<Value, LlmError> {
    match kind {
        ProviderKind::Anthropic => {
            let messages: Vec<Value> = alternating(&req.messages)?
                .iter()
                .map(anthropic_message)
                .collect();
            let mut body = json!({
                "model": model,
                "max_tokens": req.max_tokens,
                "messages": messages,
            });
            // An empty `system` is rejected by some API versions; omit it instead.
            if !req.system.is_empty() {
                body["system"] = Value::String(req.system.clone());
            }
            Ok(body)
        }
        ProviderKind::OpenAiCompatible => {
            // The same reshaping as Anthropic's: DeepSeek's reasoner refuses two successive
            // turns of one role, and a first turn (after the system message) that is not the
            // customer's, with a 400 the chain reads as permanent.
            let history = alternating(&req.messages)?;
            let system = (!req.system.is_empty())
                .then(|| json!({ "role": "system", "content": req.system }));
            let messages: Vec<Value> = system
                .into_iter()
                .chain(history.iter().map(openai_message))
                .collect();
            Ok(json!({
                "model": model,
                "max_tokens": req.max_tokens,
                "messages": messages,
            }))
        }
    }
}

/// A turn in Anthropic's shape: its text as a string, or, with attachments, an `image` or
/// `document` block per attachment and then the text block (left out when empty: Anthropic
/// refuses an empty text block).
fn anthropic_message(m: &ChatMessage) -> Value {
    if m.attachments.is_empty() {
        return json!({ "role": m.role.as_str(), "content": m.content });
    }
    let mut blocks: Vec<Value> = m
        .attachments
        .iter()
        .map(|a| {
            let kind = if a.is_document() { "document" } else { "image" };
            json!({"type": kind,
                   "source": {"type": "base64", "media_type": a.media_type, "data": a.base64}})
        })
        .collect();
    if !m.content.trim().is_empty() {
        blocks.push(json!({"type": "text", "text": m.content}));
    }
    json!({ "role": m.role.as_str(), "content": blocks })
}

/// A turn in the OpenAI shape: its text as a string, or, with attachments, a text part and,
/// inline as `data:` URLs, an `image_url` part per image and a `file` part per document.
fn openai_message(m: &ChatMessage) -> Value {
    if m.attachments.is_empty() {
        return json!({ "role": m.role.as_str(), "content": m.content });
    }
    let mut parts = Vec::with_capacity(m.attachments.len() + 1);
    if !m.content.trim().is_empty() {
        parts.push(json!({"type": "text", "text": m.content}));
    }
    parts.extend(m.attachments.iter().map(|a| {
        let url = format!("data:{};base64,{}", a.media_type, a.base64);
        if a.is_document() {
            json!({"type": "file", "file": {"filename": "document.pdf", "file_data": url}})
        } else {
            json!({"type": "image_url", "image_url": {"url": url}})
        }
    }));
    json!({ "role": m.role.as_str(), "content": parts })
}

/// Stands for a customer's turn with neither text nor a file when it is the one answered (the
/// turn cannot be left out, and both providers refuse an empty one).
pub(super) const EMPTY_TURN: &str = "[empty message]";

/// Reshapes history into what both providers accept: it starts with a customer's turn, ends
/// with the customer's last one (the one answered; the model reads a final turn of its own as
/// the start of its reply), roles alternate, and no turn is empty.
///
/// Leading assistant turns are dropped (the customer cannot be answered about a turn the model
/// never saw asked), turns with neither text nor attachments are dropped (Anthropic refuses
/// empty content with a 400, which would leave the session on the canned reply), and
/// consecutive turns of one role are merged with a blank line between them (Anthropic and
/// DeepSeek's reasoner refuse successive turns of one role). The turn answered is never
/// dropped: left without text or file, it reads [`EMPTY_TURN`]. Refused as permanent when
/// there is no customer's turn to answer.
pub(super) fn alternating(messages: &[ChatMessage]) -> Result<Vec<ChatMessage>, LlmError> {
    let Some(answered) = messages.iter().rposition(|m| m.role == Role::User) else {
        return Err(LlmError::Permanent("no user message to answer".to_owned()));
    };
    let blank = |m: &ChatMessage| m.content.trim().is_empty();
    let mut out: Vec<ChatMessage> = Vec::with_capacity(answered + 1);
    let history = messages[..=answered]
        .iter()
        .enumerate()
        .skip_while(|(_, m)| m.role == Role::Assistant)
        .filter(|&(i, m)| i == answered || !blank(m) || !m.attachments.is_empty())
        .map(|(_, m)| m);
    for message in history {
        match out.last_mut() {
            Some(last) if last.role == message.role => {
                if blank(last) {
                    last.content.clone_from(&message.content);
                } else if !blank(message) {
                    last.content.push_str("\n\n");
                    last.content.push_str(&message.content);
                }
                last.attachments.extend(message.attachments.iter().cloned());
            }
            _ => out.push(message.clone()),
        }
    }
    if let Some(last) = out.last_mut()
        && blank(last)
        && last.attachments.is_empty()
    {
        last.content = EMPTY_TURN.to_owned();
    }
    Ok(out)
}

/// What a successful body yields, before the client adds provider and fallback model.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Parsed {
    pub text: String,
    pub usage: Usage,
    pub model: Option<String>,
    pub stop_reason: Option<String>,
}

/// A model's answer that does not decode. serde's message would quote the answer, which is the
/// model's text about a customer: only where it broke is kept.
fn unreadable(e: serde_json::Error) -> LlmError {
    LlmError::Transient(format!(
        "unreadable response: {}",
        wafleet_core::json_error_without_input(&e)
    ))
}

/// Reads a 2xx body. Bodies that are not the expected JSON are [`LlmError::Transient`] (a cut
/// connection or a proxy's page may well be followed by a good answer); an answer without text is
/// [`LlmError::Permanent`] ("empty completion"): asking again the same way rarely helps.
pub(super) fn parse_response(kind: ProviderKind, body: &[u8]) -> Result<Parsed, LlmError> {
    let body = strip_leading_keepalive(body);
    match kind {
        ProviderKind::Anthropic => {
            let parsed: AnthropicResponse = serde_json::from_slice(body).map_err(unreadable)?;
            let text: String = parsed
                .content
                .iter()
                .filter(|block| block.kind == "text")
                .filter_map(|block| block.text.as_deref())
                .collect();
            non_blank(Parsed {
                text,
                usage: parsed.usage.map_or_else(Usage::default, |u| Usage {
                    input_tokens: u.input_tokens.unwrap_or(0),
                    output_tokens: u.output_tokens.unwrap_or(0),
                }),
                model: parsed.model,
                stop_reason: parsed.stop_reason,
            })
        }
        ProviderKind::OpenAiCompatible => {
            let parsed: OpenAiResponse = serde_json::from_slice(body).map_err(unreadable)?;
            let choice = parsed.choices.into_iter().next();
            let (text, stop_reason) = match choice {
                Some(choice) => (
                    choice.message.content.unwrap_or_default(),
                    choice.finish_reason,
                ),
                None => (String::new(), None),
            };
            non_blank(Parsed {
                text,
                usage: parsed.usage.map_or_else(Usage::default, |u| Usage {
                    input_tokens: u.prompt_tokens.unwrap_or(0),
                    output_tokens: u.completion_tokens.unwrap_or(0),
                }),
                model: parsed.model,
                stop_reason,
            })
        }
    }
}

fn non_blank(parsed: Parsed) -> Result<Parsed, LlmError> {
    if parsed.text.trim().is_empty() {
        let reason = parsed.stop_reason.as_deref().unwrap_or("none");
        Err(LlmError::Permanent(format!(
            "empty completion (stop reason {reason})"
        )))
    } else {
        Ok(parsed)
    }
}

/// Whether a 2xx body is really an error object (an error can follow keep-alives on a 200).
pub(super) fn is_error_body(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(strip_leading_keepalive(body))
        .is_ok_and(|v| v.get("error").is_some_and(|e| !e.is_null()))
}

/// A log-safe description of an error body: `type`/`code` and a fixed reading of the message,
/// never the message itself ([`wafleet_core::llm_error::describe_llm_error`]: proxies such as
/// LiteLLM echo the request's messages and the system prompt, quoted or not).
pub(super) fn describe_error(status: u16, body: &[u8]) -> String {
    wafleet_core::llm_error::describe_llm_error(status, body)
}

#[derive(Deserialize)]
struct AnthropicResponse {
    #[serde(default)]
    content: Vec<AnthropicBlock>,
    model: Option<String>,
    stop_reason: Option<String>,
    /// Missing or `null` (as some OpenAI-compatible servers send it) reads as no tokens.
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct AnthropicBlock {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct OpenAiResponse {
    #[serde(default)]
    choices: Vec<OpenAiChoice>,
    model: Option<String>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
}

#[derive(Deserialize)]
struct OpenAiChoice {
    message: OpenAiMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct OpenAiMessage {
    content: Option<String>,
}

/// Like [`AnthropicUsage`]: missing or `null` counts reads as 0.
#[derive(Deserialize)]
struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: Option<u32>,
    #[serde(default)]
    completion_tokens: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> ChatMessage {
        ChatMessage::user(s)
    }
    fn assistant(s: &str) -> ChatMessage {
        ChatMessage::assistant(s)
    }

    #[test]
    fn an_image_goes_inline_in_each_dialect_and_an_empty_caption_adds_no_text() {
        let mut photo = user("");
        photo
            .attachments
            .push(super::super::Attachment::new("image/png", b"\x89PNG"));
        let mut captioned = user("¿tienen este en azul?");
        captioned.attachments = photo.attachments.clone();
        let req = |m: ChatMessage| ChatRequest {
            system: String::new(),
            messages: vec![user("hola"), assistant("¡Hola!"), m],
            max_tokens: 100,
        };
        let a = request_body(ProviderKind::Anthropic, "m", &req(photo.clone())).unwrap();
        assert_eq!(
            a["messages"][2]["content"],
            json!([{"type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw=="}}])
        );
        let a = request_body(ProviderKind::Anthropic, "m", &req(captioned.clone())).unwrap();
        assert_eq!(
            a["messages"][2]["content"][1]["text"],
            "¿tienen este en azul?"
        );
        let o = request_body(ProviderKind::OpenAiCompatible, "m", &req(captioned)).unwrap();
        assert_eq!(
            o["messages"][2]["content"],
            json!([{"type": "text", "text": "¿tienen este en azul?"},
                   {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}}])
        );
        // Turns without images keep the plain string content.
        assert_eq!(o["messages"][0]["content"], "hola");
        // Merged turns keep their images.
        let merged = alternating(&[user("mira"), photo]).unwrap();
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].attachments.len(), 1);
    }

    #[test]
    fn a_pdf_goes_inline_as_a_document_block_or_a_file_part() {
        let mut invoice = user("[document: factura.pdf] aquí está");
        invoice.attachments.push(super::super::Attachment::new(
            "application/pdf",
            b"%PDF-1.7",
        ));
        let req = ChatRequest {
            system: String::new(),
            messages: vec![invoice],
            max_tokens: 100,
        };
        let a = request_body(ProviderKind::Anthropic, "m", &req).unwrap();
        assert_eq!(
            a["messages"][0]["content"],
            json!([{"type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjc="}},
                   {"type": "text", "text": "[document: factura.pdf] aquí está"}])
        );
        let o = request_body(ProviderKind::OpenAiCompatible, "m", &req).unwrap();
        assert_eq!(
            o["messages"][0]["content"],
            json!([{"type": "text", "text": "[document: factura.pdf] aquí está"},
                   {"type": "file", "file": {"filename": "document.pdf",
                                              "file_data": "data:application/pdf;base64,JVBERi0xLjc="}}])
        );
    }

    #[test]
    fn endpoints_are_joined_without_double_slashes() {
        use ProviderKind::*;
        let cases = [
            (
                Anthropic,
                "https://api.anthropic.com",
                "https://api.anthropic.com/v1/messages",
            ),
            (
                Anthropic,
                "https://api.anthropic.com/",
                "https://api.anthropic.com/v1/messages",
            ),
            (
                Anthropic,
                "https://api.anthropic.com/v1/",
                "https://api.anthropic.com/v1/messages",
            ),
            (
                OpenAiCompatible,
                "https://api.openai.com/v1",
                "https://api.openai.com/v1/chat/completions",
            ),
            (
                OpenAiCompatible,
                "https://api.openai.com/v1/",
                "https://api.openai.com/v1/chat/completions",
            ),
            (
                OpenAiCompatible,
                "https://api.deepseek.com",
                "https://api.deepseek.com/chat/completions",
            ),
            (
                OpenAiCompatible,
                "http://127.0.0.1:8080//",
                "http://127.0.0.1:8080/chat/completions",
            ),
        ];
        for (kind, base, expected) in cases {
            assert_eq!(endpoint(kind, base), expected, "{kind} {base}");
        }
    }

    #[test]
    fn history_starts_with_the_user_and_alternates_in_both_dialects() {
        let history = [
            assistant("Welcome!"),
            assistant("How can I help?"),
            user("hi"),
            user("hours?"),
            assistant("9 to 5"),
            user("thanks"),
        ];
        assert_eq!(
            alternating(&history).unwrap(),
            [user("hi\n\nhours?"), assistant("9 to 5"), user("thanks")]
        );
        assert!(matches!(
            alternating(&[assistant("only the bot")]),
            Err(LlmError::Permanent(_))
        ));
        assert_eq!(
            alternating(&[
                user("hi"),
                assistant("hello"),
                user("hours?"),
                assistant("9 to 5")
            ])
            .unwrap(),
            [user("hi"), assistant("hello"), user("hours?")],
            "never ends on the bot's turn"
        );
        // DeepSeek's reasoner refuses successive turns of one role: the OpenAI-compatible body
        // is merged the same way, after the system message.
        let req = ChatRequest {
            system: "be brief".into(),
            messages: history.to_vec(),
            max_tokens: 10,
        };
        let body = request_body(ProviderKind::OpenAiCompatible, "m", &req).unwrap();
        assert_eq!(
            body["messages"],
            json!([
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi\n\nhours?"},
                {"role": "assistant", "content": "9 to 5"},
                {"role": "user", "content": "thanks"},
            ])
        );
    }

    #[test]
    fn no_empty_turn_is_sent_to_either_provider_and_the_turn_answered_is_never_dropped() {
        let mut photo = user(" ");
        photo
            .attachments
            .push(super::super::Attachment::new("image/png", b"\x89PNG"));
        let history = [
            user("mi tarjeta es [CARD]"),
            user(""),
            assistant("  "),
            user("gracias"),
            assistant(""),
            photo,
            user("\n"),
        ];
        let reshaped = alternating(&history).unwrap();
        assert_eq!(reshaped.len(), 1, "{reshaped:?}");
        assert_eq!(reshaped[0].content, "mi tarjeta es [CARD]\n\ngracias");
        assert_eq!(reshaped[0].attachments.len(), 1, "the image is kept");
        // The turn answered, empty, stands as a marker rather than be left out (the model would
        // answer an earlier turn) or be sent empty (a 400).
        let answered = alternating(&[user("hola"), assistant("¡Hola!"), user(" ")]).unwrap();
        assert_eq!(
            answered,
            [user("hola"), assistant("¡Hola!"), user(EMPTY_TURN)]
        );
        for kind in [ProviderKind::Anthropic, ProviderKind::OpenAiCompatible] {
            let req = ChatRequest {
                system: String::new(),
                messages: vec![
                    user(""),
                    assistant(""),
                    user("hola"),
                    assistant(" "),
                    user(""),
                ],
                max_tokens: 10,
            };
            let body = request_body(kind, "m", &req).unwrap();
            assert_eq!(
                body["messages"],
                json!([{"role": "user", "content": "hola"}]),
                "{kind}"
            );
        }
    }

    #[test]
    fn a_request_without_user_turns_is_refused_before_sending() {
        let req = ChatRequest {
            system: "s".into(),
            messages: vec![assistant("hello")],
            max_tokens: 10,
        };
        for kind in [ProviderKind::Anthropic, ProviderKind::OpenAiCompatible] {
            let empty = ChatRequest {
                messages: vec![],
                ..req.clone()
            };
            assert!(matches!(
                request_body(kind, "m", &empty),
                Err(LlmError::Permanent(_))
            ));
        }
        for kind in [ProviderKind::Anthropic, ProviderKind::OpenAiCompatible] {
            assert!(matches!(
                request_body(kind, "m", &req),
                Err(LlmError::Permanent(_))
            ));
        }
        // A history ending on the bot's turn is sent up to the customer's last message.
        let trailing = ChatRequest {
            messages: vec![user("hi"), assistant("hello")],
            ..req.clone()
        };
        let body = request_body(ProviderKind::OpenAiCompatible, "m", &trailing).unwrap();
        assert_eq!(body["messages"].as_array().unwrap().len(), 2, "{body}");
        assert_eq!(body["messages"][1]["role"], "user", "{body}");
    }

    #[test]
    fn openai_body_puts_the_system_prompt_first() {
        let req = ChatRequest {
            system: "be brief".into(),
            messages: vec![user("hi")],
            max_tokens: 50,
        };
        assert_eq!(
            request_body(ProviderKind::OpenAiCompatible, "gpt", &req).unwrap(),
            json!({"model": "gpt", "max_tokens": 50, "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
            ]})
        );
    }

    #[test]
    fn anthropic_text_is_the_concatenation_of_text_blocks() {
        let body = br#"{"model":"claude-x","content":[{"type":"thinking","thinking":"hmm"},{"type":"text","text":"Hello "},{"type":"text","text":"there"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3,"cache_read_input_tokens":0}}"#;
        assert_eq!(
            parse_response(ProviderKind::Anthropic, body).unwrap(),
            Parsed {
                text: "Hello there".into(),
                usage: Usage {
                    input_tokens: 12,
                    output_tokens: 3
                },
                model: Some("claude-x".into()),
                stop_reason: Some("end_turn".into()),
            }
        );
    }

    #[test]
    fn empty_or_null_completions_are_permanent_and_garbage_is_transient() {
        let cases: [(ProviderKind, &[u8], &str); 5] = [
            (
                ProviderKind::OpenAiCompatible,
                br#"{"choices":[{"message":{"content":null},"finish_reason":"tool_calls"}]}"#,
                "permanent",
            ),
            (
                ProviderKind::OpenAiCompatible,
                br#"{"choices":[]}"#,
                "permanent",
            ),
            (
                ProviderKind::Anthropic,
                br#"{"content":[{"type":"text","text":"  "}],"stop_reason":"max_tokens"}"#,
                "permanent",
            ),
            (ProviderKind::OpenAiCompatible, b"\n\n\n", "transient"),
            (ProviderKind::Anthropic, b"<html>502</html>", "transient"),
        ];
        for (kind, body, outcome) in cases {
            let err = parse_response(kind, body).unwrap_err();
            assert_eq!(err.outcome(), outcome, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn keepalive_lines_before_an_openai_body_are_skipped() {
        let body = b"\n\n\n: keep-alive\n\n{\"model\":\"deepseek-chat\",\"choices\":[{\"message\":{\"content\":\"Hola\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}";
        let parsed = parse_response(ProviderKind::OpenAiCompatible, body).unwrap();
        assert_eq!(parsed.text, "Hola");
        assert_eq!(
            parsed.usage,
            Usage {
                input_tokens: 5,
                output_tokens: 1
            }
        );
    }

    #[test]
    fn usage_that_is_missing_or_null_reads_as_no_tokens_not_as_a_bad_answer() {
        let cases: [(ProviderKind, &[u8]); 5] = [
            (
                ProviderKind::OpenAiCompatible,
                br#"{"choices":[{"message":{"content":"Hola"},"finish_reason":"stop"}],"usage":null}"#,
            ),
            (
                ProviderKind::OpenAiCompatible,
                br#"{"choices":[{"message":{"content":"Hola"},"finish_reason":"stop"}]}"#,
            ),
            (
                ProviderKind::OpenAiCompatible,
                br#"{"choices":[{"message":{"content":"Hola"}}],"usage":{"prompt_tokens":null,"completion_tokens":null}}"#,
            ),
            (
                ProviderKind::Anthropic,
                br#"{"content":[{"type":"text","text":"Hola"}],"usage":null}"#,
            ),
            (
                ProviderKind::Anthropic,
                br#"{"content":[{"type":"text","text":"Hola"}],"usage":{"input_tokens":7,"output_tokens":null}}"#,
            ),
        ];
        for (i, (kind, body)) in cases.into_iter().enumerate() {
            let parsed = parse_response(kind, body)
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(body)));
            assert_eq!(parsed.text, "Hola");
            let input = if i == 4 { 7 } else { 0 };
            assert_eq!(
                parsed.usage,
                Usage {
                    input_tokens: input,
                    output_tokens: 0
                }
            );
        }
    }

    #[test]
    fn error_descriptions_are_short_and_name_what_went_wrong() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-abc***xyz","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        assert_eq!(
            describe_error(401, body),
            "HTTP 401 invalid_request_error invalid_api_key: invalid key"
        );
        let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "x".repeat(500));
        assert_eq!(
            describe_error(400, long.as_bytes()),
            "HTTP 400: message not recognised (500 chars)"
        );
        assert!(is_error_body(
            b"\n\n{\"error\":{\"type\":\"overloaded_error\"}}"
        ));
        assert!(!is_error_body(br#"{"choices":[]}"#));
    }

    /// LiteLLM echoes the messages it was given unquoted: none of it reaches the description.
    #[test]
    fn error_descriptions_leave_out_an_unquoted_echo_of_the_request() {
        let body = br#"{"error":{"message":"litellm.BadRequestError: AnthropicException - messages: text content blocks must be non-empty. Received Messages=[{role: user, content: hola soy Camila Rojas, mi pedido de frambuesa}, {role: system, content: Eres el asistente de Tienda Lulo}]","type":null,"param":null,"code":"400"}}"#;
        let described = describe_error(400, body);
        for echoed in ["Camila", "frambuesa", "Eres el asistente", "Tienda Lulo"] {
            assert!(!described.contains(echoed), "{echoed}: {described}");
        }
        assert_eq!(described, "HTTP 400: request refused as malformed");
    }

    /// What a provider quotes of our request (LiteLLM's `Received Messages=[…]`, a key) is left
    /// out with the rest of the message; what went wrong is still told.
    #[test]
    fn error_descriptions_leave_out_what_the_message_quotes() {
        let body = br#"{"error":{"type":"invalid_request_error","message":"litellm.BadRequestError: Received Messages=[{'role': 'user', 'content': 'mi pedido frambuesa'}] from +57 301 999 8877, key sk-proj-Abc123Def456Ghi789 \"tamarindo\" `lichi`"}}"#;
        let described = describe_error(400, body);
        for quoted in [
            "frambuesa",
            "301 999 8877",
            "Abc123Def456",
            "tamarindo",
            "lichi",
        ] {
            assert!(!described.contains(quoted), "{quoted}: {described}");
        }
        let too_long = br#"{"error":{"type":"invalid_request_error","message":"prompt is too long: 201234 tokens > 200000 maximum"}}"#;
        assert_eq!(
            describe_error(400, too_long),
            "HTTP 400 invalid_request_error: context too long"
        );
        let missing = br#"{"error":{"type":"not_found_error","message":"model: claude-sonnet-9"}}"#;
        assert_eq!(
            describe_error(404, missing),
            "HTTP 404 not_found_error: model not found"
        );
    }
}
