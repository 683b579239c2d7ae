//! [`LlmClient`]: one pooled HTTP client and the single-call path, with its deadline, error
//! mapping and per-request metrics.

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use wafleet_core::llm_error::{LlmErrorClass, classify_llm_error};

use super::wire;
use super::{ChatRequest, Completion, LlmError, ProviderConfig, ProviderKind};

/// Largest response body we read. Chat answers are a few KiB; anything near this is a broken
/// proxy or a runaway stream, and reading it whole would only waste memory.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Bound on TCP + TLS set-up alone, inside the call deadline: a black-holed address should fail
/// fast enough to leave time for a retry, not eat the whole deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for every provider. Cheap to clone: clones share one connection pool (rustls), so
/// keep one per process.
#[derive(Debug, Clone)]
pub struct LlmClient {
    http: reqwest::Client,
}

impl Default for LlmClient {
    fn default() -> Self {
        Self::new()
    }
}

impl LlmClient {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // No overall or read timeout here: `complete` bounds each call by its own deadline,
            // and an idle-read timeout would be reset by DeepSeek's keep-alive lines anyway.
            .user_agent(concat!("wafleet/", env!("CARGO_PKG_VERSION")))
            // A provider's API never redirects; a base URL that does is a mistake, answered as
            // a failure of that provider. Followed, it would hand the key to another host:
            // reqwest drops `Authorization` on a change of host, not Anthropic's `x-api-key`.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the TLS backend is compiled in; building a reqwest client cannot fail");
        Self { http }
    }

    /// One call, bounded by `deadline` for the WHOLE call (connect + headers + body), not an idle
    /// timeout: DeepSeek keeps connections alive with blank lines.
    ///
    /// Records `wafleet_llm_requests_total`, `wafleet_llm_request_duration_seconds` and, on
    /// success, `wafleet_llm_tokens_total`; on [`LlmError::Auth`] or [`LlmError::Quota`] it also
    /// bumps `wafleet_llm_alerts_total` and logs an error, whoever the caller is.
    pub async fn complete(
        &self,
        p: &ProviderConfig,
        req: &ChatRequest,
        deadline: Duration,
    ) -> Result<Completion, LlmError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(deadline, self.call(p, req)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(LlmError::Timeout),
        };
        record(p, result.as_ref().map(|c| c.usage), started.elapsed());
        result
    }

    /// Transcribes a recording (`mime_type` one of [`super::AUDIO_TYPES`]) with an
    /// OpenAI-compatible `POST {base_url}/audio/transcriptions` (OpenAI, Groq, a self-hosted
    /// Whisper server): multipart `file` and `model`, answered `{"text": …}`. One call, bounded
    /// by `deadline` for the whole of it, with the same error classes, metrics and alerts as a
    /// model call under the provider's name. A blank transcript (silence) is
    /// [`LlmError::Permanent`].
    pub async fn transcribe(
        &self,
        p: &ProviderConfig,
        mime_type: &str,
        audio: Vec<u8>,
        deadline: Duration,
    ) -> Result<String, LlmError> {
        let started = Instant::now();
        let call = self.transcription_call(p, mime_type, audio);
        let result = match tokio::time::timeout(deadline, call).await {
            Ok(result) => result,
            Err(_elapsed) => Err(LlmError::Timeout),
        };
        record(
            p,
            result.as_ref().map(|_| super::Usage::default()),
            started.elapsed(),
        );
        result
    }

    async fn transcription_call(
        &self,
        p: &ProviderConfig,
        mime_type: &str,
        audio: Vec<u8>,
    ) -> Result<String, LlmError> {
        let file = reqwest::multipart::Part::bytes(audio)
            .file_name(super::audio_file_name(mime_type))
            .mime_str(mime_type)
            .map_err(|_| LlmError::Permanent(format!("{mime_type:?} is not a media type")))?;
        let form = reqwest::multipart::Form::new()
            .part("file", file)
            .text("model", p.model.clone())
            .text("response_format", "json");
        let url = format!(
            "{}/audio/transcriptions",
            p.base_url.trim().trim_end_matches('/')
        );
        let request = self
            .http
            .post(url)
            .header(AUTHORIZATION, bearer(p)?)
            .multipart(form);
        let body = answer(request, ProviderKind::OpenAiCompatible).await?;
        #[derive(serde::Deserialize)]
        struct Transcription {
            text: String,
        }
        let parsed: Transcription = serde_json::from_slice(&body).map_err(|e| {
            LlmError::Transient(format!(
                "unreadable transcription: {}",
                wafleet_core::json_error_without_input(&e)
            ))
        })?;
        let text = parsed.text.trim();
        if text.is_empty() {
            return Err(LlmError::Permanent("the transcript is empty".into()));
        }
        Ok(text.to_string())
    }

    async fn call(&self, p: &ProviderConfig, req: &ChatRequest) -> Result<Completion, LlmError> {
        // The JSON tree is a temporary of this statement, dropped once `json` has made it bytes:
        // held across the call, it was a second copy of the system prompt and history beside
        // the bytes sent (about 4 KB a call, 5 MB of the LLM worker's peak with 1,200 calls in
        // flight).
        let request = self
            .http
            .post(wire::endpoint(p.kind, &p.base_url))
            .header(CONTENT_TYPE, "application/json")
            .json(&wire::request_body(p.kind, &p.model, req)?);
        let request = match p.kind {
            ProviderKind::Anthropic => request
                .header("x-api-key", key_header(p.api_key.expose())?)
                .header("anthropic-version", wire::ANTHROPIC_VERSION),
            ProviderKind::OpenAiCompatible => request.header(AUTHORIZATION, bearer(p)?),
        };

        let body = answer(request, p.kind).await?;
        let parsed = wire::parse_response(p.kind, &body)?;
        Ok(Completion {
            text: parsed.text,
            usage: parsed.usage,
            provider: p.name.clone(),
            model: parsed.model.unwrap_or_else(|| p.model.clone()),
            stop_reason: parsed.stop_reason,
        })
    }
}

/// `Authorization: Bearer <key>` of an OpenAI-compatible provider, as [`key_header`].
fn bearer(p: &ProviderConfig) -> Result<HeaderValue, LlmError> {
    key_header(&format!("Bearer {}", p.api_key.expose()))
}

/// The header carrying the API key. A key no header can carry (a line break pasted with it, as a
/// secret file's trailing newline) is [`LlmError::Auth`]: retrying cannot help, an operator must
/// fix the key. The error names neither the key nor the character.
fn key_header(value: &str) -> Result<HeaderValue, LlmError> {
    let mut header = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| {
        LlmError::Auth("the API key holds a character no HTTP header can carry".into())
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// Sends `request` and reads its answer's body; an error status (or an error body with 200) is
/// classified by `kind`'s error classes.
async fn answer(request: reqwest::RequestBuilder, kind: ProviderKind) -> Result<Vec<u8>, LlmError> {
    let mut response = request.send().await.map_err(transport_error)?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_body(&mut response).await?;
    if !(200..300).contains(&status) || wire::is_error_body(&body) {
        let class = classify_llm_error(kind.classifier(), status, retry_after.as_deref(), &body);
        return Err(to_error(class, status, &body));
    }
    Ok(body)
}

/// Reads the body in chunks so that a runaway answer is cut at [`MAX_BODY_BYTES`].
async fn read_body(response: &mut reqwest::Response) -> Result<Vec<u8>, LlmError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(LlmError::Transient(format!(
                "response larger than {MAX_BODY_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Connection refused, reset, TLS failure, cut body: all worth another try.
fn transport_error(error: reqwest::Error) -> LlmError {
    if error.is_timeout() {
        return LlmError::Timeout;
    }
    LlmError::Transient(crate::telemetry::http_error_text(&error))
}

fn to_error(class: LlmErrorClass, status: u16, body: &[u8]) -> LlmError {
    match class {
        LlmErrorClass::RateLimited { retry_after } => LlmError::RateLimited { retry_after },
        LlmErrorClass::Overloaded { retry_after } => LlmError::Overloaded { retry_after },
        LlmErrorClass::Transient => LlmError::Transient(wire::describe_error(status, body)),
        // Only type, code and a fixed reading: some providers echo a masked key in auth messages.
        LlmErrorClass::Auth => LlmError::Auth(wire::describe_error(status, body)),
        LlmErrorClass::Quota => LlmError::Quota(wire::describe_error(status, body)),
        LlmErrorClass::Permanent => LlmError::Permanent(wire::describe_error(status, body)),
    }
}

fn record(p: &ProviderConfig, result: Result<super::Usage, &LlmError>, elapsed: Duration) {
    let provider = p.name.clone();
    metrics::histogram!("wafleet_llm_request_duration_seconds", "provider" => provider.clone())
        .record(elapsed.as_secs_f64());
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    };
    metrics::counter!("wafleet_llm_requests_total", "provider" => provider.clone(), "outcome" => outcome)
        .increment(1);
    match result {
        Ok(usage) => {
            metrics::counter!("wafleet_llm_tokens_total", "provider" => provider.clone(), "kind" => "input")
                .increment(usage.input_tokens.into());
            metrics::counter!("wafleet_llm_tokens_total", "provider" => provider, "kind" => "output")
                .increment(usage.output_tokens.into());
        }
        Err(error @ (LlmError::Auth(_) | LlmError::Quota(_))) => {
            let kind = error.outcome();
            metrics::counter!("wafleet_llm_alerts_total", "provider" => provider, "kind" => kind)
                .increment(1);
            tracing::error!(
                provider = %p.name,
                model = %p.model,
                kind,
                error = %error,
                "LLM provider refuses our requests until an operator acts"
            );
        }
        Err(error) => {
            tracing::warn!(
                provider = %p.name,
                model = %p.model,
                outcome,
                elapsed_ms = elapsed.as_millis() as u64,
                error = %error,
                "LLM call failed"
            );
        }
    }
}
