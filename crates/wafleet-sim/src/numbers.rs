//! A business phone number as the Graph API shows it: `GET /{version}/{phone_number_id}` with the
//! number's access token answers `{id, display_phone_number, verified_name, quality_rating}`
//! (those asked for in `fields`, all of them when none are), what `wafleetctl channel check`
//! reads. The token is checked as for a send (see `graph`): a wrong one gets 190, a number the
//! simulator does not know 100 with subcode 33.
//!
//! The path is the media info's too (`media`): it is a number when [`crate::SimConfig::tokens`]
//! names it or `fields` asks for a number's field, a media id otherwise.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::SimState;

/// `verified_name` of every number: the display name Meta approved.
pub const VERIFIED_NAME: &str = "wafleet-sim";

/// The fields of a number the simulator answers.
const FIELDS: [&str; 3] = ["display_phone_number", "verified_name", "quality_rating"];

/// `GET /{version}/{id}`: a phone number, or a media file's info.
pub(crate) async fn node(
    State(sim): State<SimState>,
    Path((version, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let asked: Vec<&str> = query
        .get("fields")
        .map(|f| f.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let is_number =
        sim.config().tokens.contains_key(&id) || asked.iter().any(|f| FIELDS.contains(f));
    if !is_number {
        return crate::media::info(State(sim), Path((version, id)), headers).await;
    }
    if let Err(refused) = crate::graph::check_token(sim.config(), &id, "get", &headers) {
        return refused.into_response();
    }
    let config = sim.config();
    let values = [
        json!(meta_display(&config.display_phone_number)),
        json!(VERIFIED_NAME),
        json!("GREEN"),
    ];
    let mut number = Map::new();
    number.insert("id".into(), json!(id));
    for (field, value) in FIELDS.into_iter().zip(values) {
        if asked.is_empty() || asked.contains(&field) {
            number.insert(field.into(), value);
        }
    }
    axum::Json(Value::Object(number)).into_response()
}

/// The number as Meta's phone number node writes it (`+1 555-555-5555` in Meta's sample),
/// where the webhooks' `metadata.display_phone_number` has digits only.
fn meta_display(digits: &str) -> String {
    match digits.strip_prefix('1') {
        Some(rest) if rest.len() == 10 => {
            format!("+1 {}-{}-{}", &rest[..3], &rest[3..6], &rest[6..])
        }
        _ => format!("+{digits}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_north_american_number_is_written_as_meta_writes_it_and_others_keep_their_digits() {
        assert_eq!(super::meta_display("15550000000"), "+1 555-000-0000");
        assert_eq!(super::meta_display("573001234567"), "+573001234567");
    }
}
