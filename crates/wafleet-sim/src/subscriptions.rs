//! The apps subscribed to a business account's webhooks, as Meta keeps them:
//! `GET /{version}/{waba_id}/subscribed_apps` answers
//! `{"data": [{"whatsapp_business_api_data": {"id", "name", "link"}}]}` (`{"data": []}` when
//! none is), `POST` subscribes the token's app and `DELETE` removes it, each answering
//! `{"success": true}`. What `wafleetctl channel check` reads.
//!
//! Not in the API reference wafleet follows (it names the endpoint only among the rate-limited
//! ones); the shapes are Meta's public Graph API reference, "WhatsApp Business Account
//! Subscribed Apps"
//! (<https://developers.facebook.com/docs/graph-api/reference/whats-app-business-account/subscribed_apps/>),
//! and vendors' copies of it.
//!
//! Every token the simulator takes belongs to one app, [`APP_ID`], subscribed to every business
//! account until a `DELETE` removes it (Meta's embedded signup subscribes it); `POST /_sim/reset`
//! subscribes it again everywhere. The bearer token must be one the simulator knows (any
//! non-empty one when [`crate::SimConfig::tokens`] is empty), else 190.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::{SimState, lock};

/// The App ID of the simulator's tokens.
pub const APP_ID: &str = "1946350872345";

/// The app's name in the list.
const APP_NAME: &str = "wafleet-sim";

/// 190 unless the bearer token is one the simulator knows.
fn refused(sim: &SimState, headers: &HeaderMap) -> Option<Response> {
    crate::unknown_token(sim, headers, "AsimSub")
}

/// `GET /{version}/{waba_id}/subscribed_apps`.
pub(crate) async fn list(
    State(sim): State<SimState>,
    Path((_version, waba_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = refused(&sim, &headers) {
        return refusal;
    }
    let data = if lock(&sim.0.unsubscribed).contains(&waba_id) {
        vec![]
    } else {
        vec![json!({"whatsapp_business_api_data": {
            "id": APP_ID, "name": APP_NAME,
            "link": format!("https://www.facebook.com/games/?app_id={APP_ID}"),
        }})]
    };
    axum::Json(json!({"data": data})).into_response()
}

/// `POST /{version}/{waba_id}/subscribed_apps`: the token's app subscribed.
pub(crate) async fn subscribe(
    State(sim): State<SimState>,
    Path((_version, waba_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    set_subscribed(&sim, &headers, waba_id, true)
}

/// `DELETE /{version}/{waba_id}/subscribed_apps`: the token's app no longer subscribed.
pub(crate) async fn unsubscribe(
    State(sim): State<SimState>,
    Path((_version, waba_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    set_subscribed(&sim, &headers, waba_id, false)
}

fn set_subscribed(sim: &SimState, headers: &HeaderMap, waba_id: String, on: bool) -> Response {
    if let Some(refusal) = refused(sim, headers) {
        return refusal;
    }
    let mut unsubscribed = lock(&sim.0.unsubscribed);
    if on {
        unsubscribed.remove(&waba_id);
    } else {
        unsubscribed.insert(waba_id);
    }
    axum::Json(json!({"success": true})).into_response()
}
