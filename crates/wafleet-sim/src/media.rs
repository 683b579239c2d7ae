//! The media of customers' messages, as Meta serves it: `GET /{version}/{media_id}` answers
//! `{messaging_product, url, mime_type, sha256, file_size, id}`, and `GET /_sim/media/{media_id}`
//! (the `url`, short-lived at Meta) answers the bytes. Both want a bearer token the simulator
//! knows (any non-empty one when [`crate::SimConfig::tokens`] is empty).
//!
//! Any id is a file whose bytes are [`media_bytes`], so a test can tell which file reached the
//! model. Its prefix picks what it is: `png-…` an `image/png`, `pdf-…` an `application/pdf`,
//! `ogg-…` a voice note (`audio/ogg; codecs=opus`, see the transcription stand-in in `llm`),
//! `amr-…` an `audio/amr` recording, `huge-…` a 6 MB `image/jpeg`, `missing-…` does not exist
//! (Graph error 100); anything else is an `image/jpeg`.
//!
//! `POST /{version}/{phone_number_id}/media` is an upload, multipart as Meta documents it
//! (`messaging_product=whatsapp`, `type` the file's MIME type, `file`): with the number's token
//! it answers `{"id": "upl-…"}` and records the upload ([`Upload`]); without `file` or
//! `messaging_product` it answers Graph error 131008, a file that is not of `type` or empty 100.

use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::SimState;

/// The bytes of media `id`.
pub fn media_bytes(id: &str) -> Vec<u8> {
    if id.starts_with("huge-") {
        return vec![0xFF; 6 * 1024 * 1024];
    }
    format!("wafleet-sim media {id}").into_bytes()
}

fn mime_type(id: &str) -> &'static str {
    if id.starts_with("png-") {
        "image/png"
    } else if id.starts_with("pdf-") {
        "application/pdf"
    } else if id.starts_with("ogg-") {
        "audio/ogg; codecs=opus"
    } else if id.starts_with("amr-") {
        "audio/amr"
    } else {
        "image/jpeg"
    }
}

fn refused(status: u16, code: i64, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "OAuthException", "code": code,
                                "fbtrace_id": "AsimMedia"}});
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        axum::Json(body),
    )
        .into_response()
}

/// `GET /{version}/{media_id}`: where to download it (routed here by `numbers::node`).
pub(crate) async fn info(
    State(sim): State<SimState>,
    Path((_version, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !crate::authorised(&sim, &headers) {
        return refused(401, 190, "Error validating access token.");
    }
    if id.starts_with("missing-") {
        return refused(
            400,
            100,
            &format!("Unsupported get request. Object with ID '{id}' does not exist"),
        );
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let bytes = media_bytes(&id);
    axum::Json(json!({
        "messaging_product": "whatsapp",
        "url": format!("http://{host}/_sim/media/{id}"),
        "mime_type": mime_type(&id),
        "sha256": "c2ltdWxhdGVk",
        "file_size": bytes.len(),
        "id": id,
    }))
    .into_response()
}

/// `GET /_sim/media/{media_id}`: the file.
pub(crate) async fn download(
    State(sim): State<SimState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !crate::authorised(&sim, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if id.starts_with("missing-") {
        return StatusCode::NOT_FOUND.into_response();
    }
    ([(header::CONTENT_TYPE, mime_type(&id))], media_bytes(&id)).into_response()
}

/// A media upload, as `GET /_sim/uploads` lists it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Upload {
    pub phone_number_id: String,
    /// The id answered, what a send names in `{"type": …, "id"}`.
    pub id: String,
    /// `type` as given.
    pub mime_type: String,
    /// The file part's name, if it had one.
    pub filename: Option<String>,
    /// The file part's own content type, if it had one.
    pub part_type: Option<String>,
    pub size: usize,
}

/// `POST /{version}/{phone_number_id}/media`: an upload.
pub(crate) async fn upload(
    State(sim): State<SimState>,
    Path((_version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    if let Err(refused) =
        crate::graph::check_token(sim.config(), &phone_number_id, "post", &headers)
    {
        return refused.into_response();
    }
    let (mut product, mut kind, mut file) = (None, None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(_) => {
                return refused(
                    400,
                    100,
                    "(#100) The upload is not a readable multipart body",
                );
            }
        };
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().map(str::to_string);
        let part_type = field.content_type().map(str::to_string);
        let Ok(bytes) = field.bytes().await else {
            return refused(400, 100, "(#100) The upload broke off");
        };
        match name.as_str() {
            "messaging_product" => product = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "type" => kind = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "file" => file = Some((filename, part_type, bytes.len())),
            _ => {}
        }
    }
    if product.as_deref() != Some("whatsapp") {
        return refused(
            400,
            131008,
            "(#131008) Required parameter is missing: messaging_product",
        );
    }
    let (Some(mime_type), Some((filename, part_type, size))) = (kind, file) else {
        return refused(
            400,
            131008,
            "(#131008) Required parameter is missing: file or type",
        );
    };
    if size == 0 || part_type.as_deref().is_some_and(|t| t != mime_type) {
        return refused(
            400,
            100,
            "(#100) Param file must be a file of the given type",
        );
    }
    let id = format!("upl-{}", sim.next_id());
    crate::lock(&sim.0.uploads).push(Upload {
        phone_number_id,
        id: id.clone(),
        mime_type,
        filename,
        part_type,
        size,
    });
    axum::Json(json!({ "id": id })).into_response()
}
