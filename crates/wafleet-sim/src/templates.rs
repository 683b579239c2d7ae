//! A business account's approved templates, as Meta lists them:
//! `GET /{version}/{waba_id}/message_templates?name=…` answers `{"data": [{name, language,
//! status, category, components: [{type: HEADER|BODY|FOOTER, format?, text}]}], "paging": …}`.
//! `name` filters by part of the name, as Meta's does. Every account has the same catalogue,
//! [`TEMPLATES`]; the bearer token must be one the simulator knows (any non-empty one when
//! [`crate::SimConfig::tokens`] is empty).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::SimState;

/// `(name, language, header, body, footer)` of a template.
pub type Template = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
);

/// Every template of every account.
pub const TEMPLATES: &[Template] = &[
    (
        "order_shipped",
        "es",
        Some("Pedido en camino"),
        "¡Hola! Tu pedido {{1}} ya va en camino. ¿Quieres que te avise cuando llegue?",
        Some("Tienda Sol"),
    ),
    (
        "order_shipped",
        "en_US",
        Some("Order on its way"),
        "Hi! Your order {{1}} is on its way. Shall we tell you when it arrives?",
        None,
    ),
    (
        "order_delayed",
        "es",
        None,
        "Tu pedido {{1}} se retrasa: llegará el {{2}}. Disculpa las molestias.",
        None,
    ),
];

fn template(t: &Template, n: usize) -> Value {
    let (name, language, header, body, footer) = *t;
    let mut components = Vec::new();
    if let Some(h) = header {
        components.push(json!({"type": "HEADER", "format": "TEXT", "text": h}));
    }
    components.push(json!({"type": "BODY", "text": body}));
    if let Some(f) = footer {
        components.push(json!({"type": "FOOTER", "text": f}));
    }
    components.push(json!({"type": "BUTTONS", "buttons": [
        {"type": "QUICK_REPLY", "text": "Sí"}, {"type": "QUICK_REPLY", "text": "No"}]}));
    json!({"name": name, "language": language, "status": "APPROVED", "category": "UTILITY",
           "parameter_format": "POSITIONAL", "components": components,
           "id": format!("{}", 900_000 + n)})
}

/// `GET /{version}/{waba_id}/message_templates`.
pub(crate) async fn list(
    State(sim): State<SimState>,
    Path((_version, _waba_id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let tokens = &sim.config().tokens;
    if !crate::bearer(&headers)
        .is_some_and(|b| tokens.is_empty() || tokens.values().any(|t| t == b))
    {
        let body = json!({"error": {"message": "Error validating access token.",
                                    "type": "OAuthException", "code": 190, "fbtrace_id": "AsimTpl"}});
        return (axum::http::StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    let wanted = q.get("name").map(String::as_str).unwrap_or("");
    let data: Vec<Value> = TEMPLATES
        .iter()
        .enumerate()
        .filter(|(_, t)| t.0.contains(wanted))
        .map(|(n, t)| template(t, n))
        .collect();
    axum::Json(json!({"data": data, "paging": {"cursors": {"before": "A", "after": "B"}}}))
        .into_response()
}
