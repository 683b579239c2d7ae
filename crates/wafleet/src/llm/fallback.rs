//! [`reply_with_fallback`]: providers in order, each retried per its error class, then a canned
//! reply, all within one overall deadline, so a customer always gets an answer in bounded time.

use std::time::Duration;

use tokio::time::Instant;
use wafleet_core::retry::Backoff;

use super::{ChatRequest, LlmClient, LlmError, ProviderConfig, Usage, split_handover};

/// How hard to try before falling back. The defaults suit a WhatsApp reply: a customer waits a
/// minute at most, and one provider may take up to 25 s for a long answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackPolicy {
    /// Tries per provider, the first included (`0` counts as `1`).
    pub attempts_per_provider: u32,
    /// Bound on the whole chain, calls and waits; what is left also bounds each call and sleep.
    pub overall_deadline: Duration,
    /// Bound on one call (connect, headers and body).
    pub call_deadline: Duration,
    /// Delay between tries of one provider after overload, transient errors, timeouts and rate
    /// limits without `retry-after`. Only `base` and `max` are used here: attempts and age are
    /// bounded by `attempts_per_provider` and `overall_deadline`.
    pub backoff: Backoff,
    /// Longest `retry-after` we honour; a provider asking for more is skipped for the next one,
    /// since the customer is waiting.
    pub max_retry_after: Duration,
}

impl Default for FallbackPolicy {
    fn default() -> Self {
        Self {
            attempts_per_provider: 3,
            overall_deadline: Duration::from_secs(60),
            call_deadline: Duration::from_secs(25),
            backoff: Backoff {
                base: Duration::from_millis(500),
                max: Duration::from_secs(8),
                max_attempts: 3,
                max_age: Duration::from_secs(60),
            },
            max_retry_after: Duration::from_secs(10),
        }
    }
}

/// What to send the customer, and how it was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The answer with the handover marker removed; may be empty when the model only asked for a
    /// human.
    pub text: String,
    /// `None` for a canned reply.
    pub usage: Option<Usage>,
    /// [`ProviderConfig::name`] of the provider that answered; `None` for a canned reply.
    pub provider: Option<String>,
    pub model: Option<String>,
    /// Every provider failed (or the deadline ran out) and `text` is the canned reply.
    pub canned: bool,
    /// The text contained [`super::HANDOVER_MARKER`]: hand the conversation to a person.
    pub wants_human: bool,
    /// Each failed try, in order, as `(provider name, error)`. Safe to log.
    pub failures: Vec<(String, String)>,
}

/// Tries each provider in order with retries per its error classes, then falls back to
/// `canned_reply`, so a customer always gets an answer. `jitter` is a source of values in [0,1)
/// (pass `|| rand::random()` in prod, a fixed fn in tests).
///
/// Per failed try: rate limits wait `retry-after` when it is at most `max_retry_after` (else the
/// next provider is tried at once; the last provider waits it out if the deadline allows), or
/// back off when no `retry-after` came; overload honours a `retry-after` the same way and
/// otherwise backs off, like transient errors, with `backoff.next_delay(attempt, jitter())`. A
/// timeout moves on to the next provider (only the last one is tried again): a provider that hangs
/// once is likely to hang again. Auth, quota and permanent errors move to the next provider at
/// once.
///
/// Time: each provider may use an equal share of what is left of the overall deadline when its
/// turn comes (the last one, all of it), so one that hangs cannot leave the others none. A wait
/// that would outlast the provider's share moves on instead of waiting.
///
/// The canned reply goes through the same handover detection, so an operator may write
/// `[[HANDOVER]] Sorry, a colleague will answer shortly.` to make every canned reply a handover.
pub async fn reply_with_fallback(
    client: &LlmClient,
    providers: &[ProviderConfig],
    req: &ChatRequest,
    policy: &FallbackPolicy,
    canned_reply: &str,
    jitter: &mut (dyn FnMut() -> f64 + Send),
) -> Reply {
    let overall_end = Instant::now() + policy.overall_deadline;
    let attempts = policy.attempts_per_provider.max(1);
    let mut failures = Vec::new();
    // Providers before this index were called at least once; the rest never got a chance.
    let mut tried = 0;

    for (index, provider) in providers.iter().enumerate() {
        if index > 0 {
            if overall_end <= Instant::now() {
                break;
            }
            metrics::counter!("wafleet_llm_fallbacks_total", "kind" => "next_provider")
                .increment(1);
            tracing::warn!(
                from = %providers[index - 1].name,
                to = %provider.name,
                "falling back to the next LLM provider"
            );
        }
        let last = index + 1 == providers.len();
        let providers_left = u32::try_from(providers.len() - index).unwrap_or(u32::MAX);
        let provider_end =
            Instant::now() + overall_end.saturating_duration_since(Instant::now()) / providers_left;
        for attempt in 0..attempts {
            let remaining = provider_end.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            tried = index + 1;
            let error = match client
                .complete(provider, req, policy.call_deadline.min(remaining))
                .await
            {
                Ok(completion) => {
                    let (text, wants_human) = split_handover(&completion.text);
                    return Reply {
                        text,
                        usage: Some(completion.usage),
                        provider: Some(completion.provider),
                        model: Some(completion.model),
                        canned: false,
                        wants_human,
                        failures,
                    };
                }
                Err(error) => error,
            };
            failures.push((provider.name.clone(), error.to_string()));
            if attempt + 1 >= attempts {
                break;
            }
            let Some(wait) = wait_before_retry(&error, attempt, policy, jitter, last) else {
                break;
            };
            if Instant::now() + wait >= provider_end {
                break;
            }
            tokio::time::sleep(wait).await;
        }
    }

    for provider in &providers[tried..] {
        failures.push((
            provider.name.clone(),
            "not tried: overall deadline exhausted".to_owned(),
        ));
    }
    metrics::counter!("wafleet_llm_fallbacks_total", "kind" => "canned").increment(1);
    tracing::error!(
        providers = providers.len(),
        failures = failures.len(),
        "every LLM provider failed; sending the canned reply"
    );
    let (text, wants_human) = split_handover(canned_reply);
    Reply {
        text,
        usage: None,
        provider: None,
        model: None,
        canned: true,
        wants_human,
        failures,
    }
}

/// How long to wait before trying the same provider again, or `None` to move on now. `last`:
/// no provider comes after this one, so waiting is the only way to an answer.
fn wait_before_retry(
    error: &LlmError,
    attempt: u32,
    policy: &FallbackPolicy,
    jitter: &mut (dyn FnMut() -> f64 + Send),
    last: bool,
) -> Option<Duration> {
    if !error.is_retryable() || (matches!(error, LlmError::Timeout) && !last) {
        return None;
    }
    match error.retry_after() {
        Some(retry_after) if retry_after <= policy.max_retry_after || last => Some(retry_after),
        Some(_too_long) => None,
        None => Some(policy.backoff.next_delay(attempt, jitter())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> FallbackPolicy {
        FallbackPolicy {
            backoff: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(1),
                max_attempts: 3,
                max_age: Duration::from_secs(60),
            },
            max_retry_after: Duration::from_secs(5),
            ..FallbackPolicy::default()
        }
    }

    #[test]
    fn waits_follow_the_error_class() {
        let secs = |s| Some(Duration::from_secs(s));
        let cases = [
            (
                LlmError::RateLimited {
                    retry_after: secs(2),
                },
                0,
                secs(2),
            ),
            (
                LlmError::RateLimited {
                    retry_after: secs(30),
                },
                0,
                None,
            ),
            (
                LlmError::RateLimited { retry_after: None },
                1,
                Some(Duration::from_millis(100)),
            ),
            (
                LlmError::Overloaded {
                    retry_after: secs(1),
                },
                2,
                secs(1),
            ),
            (
                LlmError::Overloaded { retry_after: None },
                0,
                Some(Duration::from_millis(50)),
            ),
            (
                LlmError::Transient("x".into()),
                2,
                Some(Duration::from_millis(200)),
            ),
            (LlmError::Timeout, 0, None),
            (LlmError::Auth("x".into()), 0, None),
            (LlmError::Quota("x".into()), 0, None),
            (LlmError::Permanent("x".into()), 0, None),
        ];
        for (error, attempt, expected) in cases {
            let got = wait_before_retry(&error, attempt, &policy(), &mut || 0.5, false);
            assert_eq!(got, expected, "{error:?} attempt {attempt}");
        }
        // The last provider: a timeout is tried again, a long retry-after waited out.
        let last = [
            (LlmError::Timeout, 0, Some(Duration::from_millis(50))),
            (
                LlmError::RateLimited {
                    retry_after: secs(30),
                },
                0,
                secs(30),
            ),
            (LlmError::Quota("x".into()), 0, None),
        ];
        for (error, attempt, expected) in last {
            let got = wait_before_retry(&error, attempt, &policy(), &mut || 0.5, true);
            assert_eq!(got, expected, "last provider: {error:?} attempt {attempt}");
        }
    }
}
