//! Channel management: what a platform's console calls to connect a business's number, rotate
//! its secrets, change its settings, models and knowledge base, or stop serving it. The same
//! operations as `wafleetctl channel` and `wafleetctl knowledge`, over HTTP with JSON.
//!
//! Reading a channel needs a token that reaches its number; changing one needs an admin token
//! (`wafleetctl api-token add NAME --admin`, 403 otherwise), and the API process needs
//! `WAFLEET_ENCRYPTION_KEY` to seal the secrets it is given (503 otherwise). No answer ever
//! carries a secret: only whether each is set.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/api/v1/channels` | the channels the token reaches |
//! | GET | `/api/v1/channels/{pnid}` | one channel, its settings and its models |
//! | PUT | `/api/v1/channels/{pnid}` | adds the channel, or changes the fields the body gives (201 added, 200 changed) |
//! | GET | `/api/v1/channels/{pnid}/knowledge` | its knowledge base: titles, languages, sizes |
//! | PUT | `/api/v1/channels/{pnid}/knowledge/{title}` | `{"text", "language"?}` adds or replaces an entry |
//! | DELETE | `/api/v1/channels/{pnid}/knowledge/{title}` | removes an entry |
//!
//! A `PUT` is one transaction, checked whole before anything is written: a bad setting or model
//! changes nothing, not even the fields before it. Fields it leaves out keep their values;
//! `"settings": {"name": null}` puts a setting back to its default; `"models"` replaces the
//! whole chain (`[]`: the process-wide models apply). Ingest and the workers see the change
//! within seconds. A channel is never deleted (its conversations are history): `"enabled": false`
//! stops serving it. A new `access_token` lifts a pause of the channel's sends that a token
//! fixes (190 and 0, or no or an unreadable token), counted in
//! `wafleet_channel_pauses_lifted_total{by="new_token"}` and answered in `pause_lifted`; a pause
//! for a locked account or a missing permission stays (`sends_paused`), logged as a warning.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, Authed, body, no_nul, pg_down};
use crate::config::Secret;
use crate::store::api_tokens::Scope;
use crate::store::channels::{self, BotMode, ChannelSpec, ProviderSpec, pause_lifted};
use crate::store::knowledge::{self, Put};
use crate::store::settings::{Change, Setting};

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/channels", get(list))
        .route("/api/v1/channels/{pnid}", get(show).put(save))
        .route(
            "/api/v1/channels/{pnid}/clear-restriction",
            axum::routing::post(clear_restriction),
        )
        .route("/api/v1/channels/{pnid}/knowledge", get(knowledge_list))
        .route(
            "/api/v1/channels/{pnid}/knowledge/{title}",
            axum::routing::put(knowledge_put).delete(knowledge_remove),
        )
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message.into())
}

fn no_channel(pnid: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no channel {pnid}"))
}

/// Changing channels is for admin tokens only.
fn admin(scope: &Scope) -> Result<(), ApiError> {
    if scope.admin {
        return Ok(());
    }
    metrics::counter!("wafleet_api_forbidden_total").increment(1);
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "changing channels needs an admin token (wafleetctl api-token add NAME --admin)".into(),
    ))
}

/// A number the token does not reach answers 404, as one that does not exist.
fn reaches(scope: &Scope, pnid: &str) -> Result<(), ApiError> {
    if scope.reaches(pnid) {
        Ok(())
    } else {
        Err(no_channel(pnid))
    }
}

/// Postgres refusing the data itself (class 22, a NUL or an out-of-range number; class 23, a
/// constraint) is the request's fault; anything else is an outage.
fn db_error(e: anyhow::Error) -> ApiError {
    match e.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(d))
            if d.code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23")) =>
        {
            bad(d.message().to_string())
        }
        _ => pg_down(format!("{e:#}")),
    }
}

async fn list(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
) -> Result<Response, ApiError> {
    let all = channels::summaries(&state.pg, &scope.phone_number_ids)
        .await
        .map_err(pg_down)?;
    Ok(Json(all).into_response())
}

/// A channel with its settings and models, as `GET` and `PUT` answer it.
async fn view(state: &AppState, pnid: &str) -> Result<Value, ApiError> {
    let numbers = [pnid.to_string()];
    let (summary, settings, models, meta_status) = tokio::try_join!(
        channels::summaries(&state.pg, &numbers),
        crate::store::settings::show(&state.pg, pnid),
        channels::models(&state.pg, pnid),
        crate::store::account_state::state_of(&state.pg, pnid),
    )
    .map_err(pg_down)?;
    let (Some(summary), Some(settings)) = (summary.into_iter().next(), settings) else {
        return Err(no_channel(pnid));
    };
    let mut v = serde_json::to_value(summary).expect("a summary serialises");
    v["settings"] = settings
        .into_iter()
        .map(|(name, value)| (name.to_string(), Value::String(value)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    v["models"] = serde_json::to_value(models).expect("models serialise");
    // What Meta last said of the number and its business account (the account stage).
    v["meta_status"] = meta_status.map_or(Value::Null, |m| m.to_json(chrono::Utc::now()));
    Ok(v)
}

async fn show(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    Path(pnid): Path<String>,
) -> Result<Response, ApiError> {
    reaches(&scope, &pnid)?;
    Ok(Json(view(&state, &pnid).await?).into_response())
}

/// A `PUT` of a channel. Unknown fields are refused: a misspelt `app_secret` must not be taken
/// for "leave the secrets as they are".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelBody {
    waba_id: Option<String>,
    app_id: Option<String>,
    display_phone_number: Option<String>,
    name: Option<String>,
    app_secrets: Option<Vec<String>>,
    verify_token: Option<String>,
    access_token: Option<String>,
    bot_mode: Option<String>,
    phone_allowlist: Option<Vec<String>>,
    enabled: Option<bool>,
    #[serde(default)]
    settings: serde_json::Map<String, Value>,
    models: Option<Vec<ModelBody>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelBody {
    /// Order in the chain; the model's place in the list when left out.
    position: Option<i32>,
    name: String,
    kind: String,
    base_url: String,
    model: String,
    api_key: String,
}

impl ChannelBody {
    /// Every text of the body, for the NUL check.
    fn texts(&self) -> impl Iterator<Item = &str> {
        [
            &self.waba_id,
            &self.app_id,
            &self.display_phone_number,
            &self.name,
            &self.verify_token,
            &self.access_token,
            &self.bot_mode,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .chain(self.app_secrets.iter().flatten().map(String::as_str))
        .chain(self.phone_allowlist.iter().flatten().map(String::as_str))
        .chain(self.settings.values().filter_map(Value::as_str))
        .chain(self.models.iter().flatten().flat_map(|m| {
            [&m.name, &m.kind, &m.base_url, &m.model, &m.api_key].map(String::as_str)
        }))
    }

    /// Whether the body carries anything that must be sealed.
    fn has_secrets(&self) -> bool {
        self.app_secrets.is_some()
            || self.verify_token.is_some()
            || self.access_token.is_some()
            || self.models.as_ref().is_some_and(|m| !m.is_empty())
    }
}

/// A setting's change from its JSON value: `null` back to the default, a string or a number
/// parsed as `wafleetctl channel set` parses it, a list of phrases for the keywords.
fn setting_change(name: &str, value: &Value) -> Result<Change, String> {
    let setting = Setting::from_name(name).ok_or_else(|| {
        format!(
            "unknown setting {name:?}: one of {}",
            Setting::ALL.map(|s| s.name()).join(", ")
        )
    })?;
    let raw = match value {
        Value::Null => return Ok(setting.reset()),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b)
            if matches!(
                setting,
                Setting::ImagesToModel
                    | Setting::TranscribeAudio
                    | Setting::DocumentsToModel
                    | Setting::LocationsToModel
            ) =>
        {
            b.to_string()
        }
        Value::Array(items) if setting == Setting::HandoverKeywords => {
            let phrases = items
                .iter()
                .map(|i| match i.as_str() {
                    Some(p) if !p.contains(',') => Ok(p),
                    _ => Err(format!(
                        "{name}: each keyword is a string without a comma, not {i}"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            phrases.join(",")
        }
        other => {
            return Err(format!(
                "{name}: give a string, a number or null (the default), not {other}"
            ));
        }
    };
    setting.parse(&raw).map_err(|e| format!("{name}: {e}"))
}

/// Everything a `PUT` will write, checked.
struct Plan {
    spec: ChannelSpec,
    changes: Vec<Change>,
    models: Option<Vec<ProviderSpec>>,
}

fn plan(pnid: &str, b: ChannelBody) -> Result<Plan, String> {
    let changes = b
        .settings
        .iter()
        .map(|(name, value)| setting_change(name, value))
        .collect::<Result<Vec<_>, _>>()?;
    let models = b
        .models
        .map(|models| {
            let mut seen = std::collections::HashSet::new();
            models
                .into_iter()
                .enumerate()
                .map(|(i, m)| {
                    let spec = ProviderSpec {
                        position: m.position.unwrap_or(i as i32),
                        name: m.name.trim().to_string(),
                        kind: m.kind,
                        base_url: m.base_url,
                        model: m.model,
                        api_key: Secret::new(m.api_key),
                    };
                    spec.check()?;
                    if !seen.insert(spec.position) {
                        return Err(format!("two models at position {}", spec.position));
                    }
                    Ok(spec)
                })
                .collect::<Result<Vec<_>, String>>()
        })
        .transpose()?;
    let bot_mode = b
        .bot_mode
        .as_deref()
        .map(str::parse::<BotMode>)
        .transpose()
        .map_err(|e| e.to_string())?;
    let spec = ChannelSpec {
        phone_number_id: pnid.to_string(),
        waba_id: b.waba_id,
        app_id: b.app_id,
        display_phone_number: b.display_phone_number,
        name: b.name,
        app_secrets: b
            .app_secrets
            .map(|all| all.into_iter().map(Secret::new).collect()),
        verify_token: b.verify_token.map(Secret::new),
        access_token: b.access_token.map(Secret::new),
        bot_mode,
        phone_allowlist: b.phone_allowlist,
        enabled: b.enabled,
    };
    spec.check()?;
    Ok(Plan {
        spec,
        changes,
        models,
    })
}

/// The names of what a `PUT` changes, for the log line (never a value).
fn changed_fields(b: &ChannelBody) -> Vec<String> {
    let mut names: Vec<String> = [
        ("waba_id", b.waba_id.is_some()),
        ("app_id", b.app_id.is_some()),
        ("display_phone_number", b.display_phone_number.is_some()),
        ("name", b.name.is_some()),
        ("app_secrets", b.app_secrets.is_some()),
        ("verify_token", b.verify_token.is_some()),
        ("access_token", b.access_token.is_some()),
        ("bot_mode", b.bot_mode.is_some()),
        ("phone_allowlist", b.phone_allowlist.is_some()),
        ("enabled", b.enabled.is_some()),
        ("models", b.models.is_some()),
    ]
    .into_iter()
    .filter(|(_, given)| *given)
    .map(|(name, _)| name.to_string())
    .collect();
    names.extend(b.settings.keys().cloned());
    names
}

async fn save(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    Path(pnid): Path<String>,
    b: Result<Json<ChannelBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    admin(&scope)?;
    // The id names every row written: one with spaces around it would be stored trimmed for
    // the channel and untrimmed for its settings (which would then match no row).
    if pnid.trim() != pnid {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the phone number id in the path has spaces around it".into(),
        ));
    }
    let b = body(b)?;
    no_nul(b.texts().map(Some))?;
    let Some(cipher) = &state.cipher else {
        // Even a change without secrets: whether a body has them must not decide whether the
        // API can be configured without the key.
        tracing::error!("a channel change was refused: wafleet-api has no WAFLEET_ENCRYPTION_KEY");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this API process has no WAFLEET_ENCRYPTION_KEY: it cannot seal channels' secrets"
                .into(),
        ));
    };
    let fields = changed_fields(&b);
    let sealed = b.has_secrets();
    let Plan {
        spec,
        changes,
        models,
    } = plan(&pnid, b).map_err(bad)?;
    let mut tx = state.pg.begin().await.map_err(pg_down)?;
    let saved = channels::upsert(&mut *tx, cipher, &spec)
        .await
        .map_err(db_error)?;
    for change in &changes {
        crate::store::settings::set(&mut *tx, &pnid, change)
            .await
            .map_err(|e| db_error(e.into()))?;
    }
    if let Some(models) = &models {
        channels::clear_providers(&mut *tx, &pnid)
            .await
            .map_err(db_error)?;
        for m in models {
            channels::set_provider(&mut *tx, cipher, &pnid, m)
                .await
                .map_err(db_error)?;
        }
    }
    tx.commit().await.map_err(pg_down)?;
    metrics::counter!("wafleet_api_channel_changes_total",
        "change" => if saved.created { "added" } else { "changed" })
    .increment(1);
    tracing::info!(token = %scope.name, channel = %pnid, created = saved.created,
        fields = %fields.join(","), secrets = sealed, "channel saved through the API");
    let lifted = match &saved.pause {
        Some((pause, true)) => {
            pause_lifted(&pnid, pause, "new_token");
            Some(pause)
        }
        Some((pause, false)) if spec.access_token.is_some() => {
            tracing::warn!(token = %scope.name, channel = %pnid, code = pause.code,
                meaning = %pause.meaning, until = %pause.until,
                "a new access token does not lift this pause of the channel's sends: fix it at Meta, then wafleetctl channel resume");
            None
        }
        _ => None,
    };
    let status = if saved.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut shown = view(&state, &pnid).await?;
    if let Some(pause) = lifted {
        shown["pause_lifted"] = serde_json::to_value(pause).expect("a pause serialises");
    }
    Ok((status, Json(shown)).into_response())
}

/// Clears the account restrictions recorded for the channel (Meta lifted them early): the
/// channel as it is now, with `restrictions_cleared` (empty: there was nothing to clear).
/// Logged with the token's name.
async fn clear_restriction(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    Path(pnid): Path<String>,
) -> Result<Response, ApiError> {
    admin(&scope)?;
    use crate::store::account_state;
    let cleared = account_state::clear_restrictions(&state.pg, &pnid)
        .await
        .map_err(pg_down)?
        .ok_or_else(|| no_channel(&pnid))?;
    if !cleared.is_empty() {
        metrics::counter!("wafleet_api_channel_changes_total", "change" => "restriction_cleared")
            .increment(1);
        account_state::restrictions_cleared(&pnid, &cleared, &format!("api token {}", scope.name));
    }
    let mut shown = view(&state, &pnid).await?;
    shown["restrictions_cleared"] = serde_json::to_value(&cleared).expect("restrictions serialise");
    Ok(Json(shown).into_response())
}

async fn knowledge_list(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    Path(pnid): Path<String>,
) -> Result<Response, ApiError> {
    reaches(&scope, &pnid)?;
    if channels::summaries(&state.pg, std::slice::from_ref(&pnid))
        .await
        .map_err(pg_down)?
        .is_empty()
    {
        return Err(no_channel(&pnid));
    }
    let entries = knowledge::list(&state.pg, &pnid).await.map_err(pg_down)?;
    Ok(Json(entries).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryBody {
    text: String,
    language: Option<String>,
}

async fn knowledge_put(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    Path((pnid, title)): Path<(String, String)>,
    b: Result<Json<EntryBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    admin(&scope)?;
    let b = body(b)?;
    let language = b.language.as_deref().unwrap_or(knowledge::DEFAULT_LANGUAGE);
    no_nul([Some(title.as_str()), Some(b.text.as_str()), Some(language)])?;
    let title = title.trim();
    knowledge::check(title, &b.text).map_err(bad)?;
    let put = knowledge::put(&state.pg, &pnid, title, &b.text, language)
        .await
        .map_err(pg_down)?;
    let status = match put {
        Put::Added => StatusCode::CREATED,
        Put::Replaced => StatusCode::OK,
        Put::NoChannel => return Err(no_channel(&pnid)),
        Put::UnknownLanguage => {
            return Err(bad(format!(
                "Postgres has no text search configuration {language:?} (spanish, english, \
                 portuguese, simple…)"
            )));
        }
    };
    tracing::info!(token = %scope.name, channel = %pnid, replaced = put == Put::Replaced,
        "knowledge entry saved through the API");
    Ok((
        status,
        Json(json!({ "phone_number_id": pnid, "title": title, "language": language })),
    )
        .into_response())
}

async fn knowledge_remove(
    State(state): State<Arc<AppState>>,
    Authed(scope): Authed,
    Path((pnid, title)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    admin(&scope)?;
    no_nul([Some(title.as_str())])?;
    if !knowledge::remove(&state.pg, &pnid, title.trim())
        .await
        .map_err(pg_down)?
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("channel {pnid} has no entry {:?}", title.trim()),
        ));
    }
    tracing::info!(token = %scope.name, channel = %pnid, "knowledge entry removed through the API");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::settings::Value as SettingValue;

    #[test]
    fn settings_take_strings_numbers_null_and_a_list_of_keywords() {
        let v = |name: &str, value: Value| setting_change(name, &value).map(|c| c.value().clone());
        assert_eq!(v("history_limit", json!(12)), Ok(SettingValue::Int(12)));
        assert_eq!(v("history_limit", json!("12")), Ok(SettingValue::Int(12)));
        assert_eq!(v("history_limit", Value::Null), Ok(SettingValue::Default));
        assert!(v("history_limit", json!(0)).is_err());
        assert!(v("history_limit", json!(true)).is_err());
        assert!(v("histroy_limit", json!(12)).is_err());
        assert_eq!(
            v("handover_keywords", json!(["asesor", "hablar con alguien"])),
            Ok(SettingValue::List(vec![
                "asesor".into(),
                "hablar con alguien".into()
            ]))
        );
        // A comma inside one phrase would silently make it two.
        assert!(v("handover_keywords", json!(["asesor, humano"])).is_err());
        assert!(v("system_prompt", json!(["a"])).is_err());
        assert_eq!(
            v("images_to_model", json!(true)),
            Ok(SettingValue::Bool(true))
        );
        assert!(v("history_limit", json!(true)).is_err());
    }

    fn body(v: Value) -> ChannelBody {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_put_is_checked_whole_before_anything_is_written() {
        let model = json!({"name": "claude", "kind": "anthropic",
            "base_url": "https://api.anthropic.com", "model": "m", "api_key": "k"});
        let ok = plan(
            "106540352242922",
            body(json!({"app_secrets": ["s"], "bot_mode": "shadow",
                "settings": {"history_limit": 8}, "models": [model.clone(), model.clone()]})),
        )
        .unwrap();
        assert_eq!(ok.spec.bot_mode, Some(BotMode::Shadow));
        assert_eq!(
            ok.models
                .unwrap()
                .iter()
                .map(|m| m.position)
                .collect::<Vec<_>>(),
            vec![0, 1]
        );
        let refused = |v: Value| plan("106540352242922", body(v)).err().unwrap();
        assert!(refused(json!({"bot_mode": "sometimes"})).contains("bot mode"));
        assert!(refused(json!({"app_secrets": []})).contains("app_secrets"));
        assert!(refused(json!({"access_token": "  "})).contains("access_token"));
        assert!(refused(json!({"settings": {"pair_burst": 99}})).contains("pair_burst"));
        let mut twice = model.clone();
        twice["position"] = json!(0);
        assert!(refused(json!({"models": [twice.clone(), twice]})).contains("position 0"));
        let mut bad_kind = model.clone();
        bad_kind["kind"] = json!("gemini");
        assert!(refused(json!({"models": [bad_kind]})).contains("kind"));
        assert!(plan("not-a-number", body(json!({}))).is_err());
        assert!(serde_json::from_value::<ChannelBody>(json!({"app_secret": "s"})).is_err());
    }
}
