//! What a human agent sends besides text: a file (image, document, voice note or audio, video,
//! sticker) by its link or Meta's media id, or a text with reply buttons or a list to pick from.
//!
//! Owns the checks Meta makes of such a message, so an agent hears at once which field is wrong
//! instead of a `failed` part later, the Graph API's message object the sender sends
//! ([`Content::graph_message`]), and the line a transcript shows for it
//! ([`Content::rendering`]). Nothing here sends or stores.
//!
//! # Meta's limits
//! Not in our reference (it documents text sends only); from Meta's public Cloud API docs
//! (developers.facebook.com, "Media messages", "Interactive reply buttons messages",
//! "Interactive list messages", "Supported media types"), as the well-kept SDKs encode them too
//! (WhatsApp's own Node.js SDK `InteractiveObject`, whatsapp-api-js, wax):
//! - media: `type` one of `audio`, `document`, `image`, `sticker`, `video`; exactly one of `id`
//!   (an uploaded file) or `link` (a URL Meta fetches; we take only `https`); `caption` (at most
//!   1,024 characters) for image, video and document only; `filename` for a document only;
//! - reply buttons: 1 to 3 buttons, each `id` at most 256 characters and unique, each `title` at
//!   most 20 characters and unique; the body at most 1,024 characters;
//! - a list: its `button` label at most 20 characters; 1 to 10 sections, at most 10 rows in all;
//!   a section's `title` at most 24 characters, required when there are several sections; a
//!   row's `id` at most 200 characters and unique in the message, `title` at most 24,
//!   `description` at most 72; the body at most 4,096 characters in Meta's current list page but
//!   1,024 in its earlier one and in the SDKs: 1,024 here, the limit both agree with;
//! - an interactive message's text `header` and `footer`: at most 60 characters each.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Meta's media types an agent can send.
pub const MEDIA_TYPES: [&str; 5] = ["image", "document", "audio", "video", "sticker"];

/// Longest caption of an image, video or document, in characters.
pub const MAX_CAPTION: usize = 1024;
/// Longest body of an interactive message (buttons or list), in characters.
pub const MAX_INTERACTIVE_BODY: usize = 1024;
/// Most reply buttons in one message.
pub const MAX_BUTTONS: usize = 3;
/// Longest reply button title, and list button label, in characters.
pub const MAX_BUTTON_TITLE: usize = 20;
/// Longest reply button id.
pub const MAX_BUTTON_ID: usize = 256;
/// Most rows of a list, all sections together; also the most sections.
pub const MAX_LIST_ROWS: usize = 10;
/// Longest list row title, and section title.
pub const MAX_ROW_TITLE: usize = 24;
/// Longest list row description.
pub const MAX_ROW_DESCRIPTION: usize = 72;
/// Longest list row id.
pub const MAX_ROW_ID: usize = 200;
/// Longest text header or footer of an interactive message.
pub const MAX_HEADER: usize = 60;

/// What an uploaded file of MIME type `mime` is sent as, and the largest Meta takes of it:
/// `("image", 5 MiB)` for `image/jpeg`. `None` for a type Meta does not take. Not in our
/// reference; Meta's public "Supported media types" list (audio: AAC, AMR, MP3, MP4 audio, OGG
/// with Opus, 16 MB; documents: text, PDF, Word, Excel, PowerPoint, 100 MB; images: JPEG, PNG,
/// 5 MB; stickers: WebP, 500 KB animated, 100 KB static; video: MP4, 3GPP, 16 MB). Parameters
/// (`; codecs=opus`) and case are ignored.
pub fn upload_kind(mime: &str) -> Option<(&'static str, u64)> {
    const MB: u64 = 1024 * 1024;
    let mime = mime.split(';').next()?.trim().to_ascii_lowercase();
    Some(match mime.as_str() {
        "audio/aac" | "audio/amr" | "audio/mpeg" | "audio/mp4" | "audio/ogg" => ("audio", 16 * MB),
        "text/plain"
        | "application/pdf"
        | "application/msword"
        | "application/vnd.ms-excel"
        | "application/vnd.ms-powerpoint"
        | "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        | "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        | "application/vnd.openxmlformats-officedocument.presentationml.presentation" => {
            ("document", 100 * MB)
        }
        "image/jpeg" | "image/png" => ("image", 5 * MB),
        "image/webp" => ("sticker", 500 * 1024),
        "video/mp4" | "video/3gpp" => ("video", 16 * MB),
        _ => return None,
    })
}

/// Whether `name` may name an uploaded file (what a document shows the customer): at most
/// 240 bytes, without quotes, slashes or line breaks, which would break out of the upload's
/// `Content-Disposition` or pass for a path.
pub fn upload_filename_ok(name: &str) -> bool {
    name.len() <= 240 && !name.contains(['\0', '/', '\\', '"', '\r', '\n'])
}

/// A file to send: `{"type", "link" | "id", "caption"?, "filename"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Media {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// A reply button: the `id` comes back in the customer's tap, the `title` is what they see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Button {
    pub id: String,
    pub title: String,
}

/// A list to pick from: the `button` that opens it and its sections of rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct List {
    pub button: String,
    pub sections: Vec<Section>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    pub id: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An agent's message that is not plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content<'a> {
    Media(&'a Media),
    /// `body` with reply buttons under it.
    Buttons {
        body: &'a str,
        buttons: &'a [Button],
        header: Option<&'a str>,
        footer: Option<&'a str>,
    },
    /// `body` with a list to pick from.
    List {
        body: &'a str,
        list: &'a List,
        header: Option<&'a str>,
        footer: Option<&'a str>,
    },
}

/// Why a message cannot be sent: the field (as the API names it) and what is wrong with it.
/// Never quotes the value (it may be a customer's data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct Invalid {
    pub field: String,
    pub why: String,
}

fn invalid(field: impl Into<String>, why: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        why: why.into(),
    }
}

/// `text` is present (not blank) and at most `max` characters.
fn bounded(field: &str, text: &str, max: usize) -> Result<(), Invalid> {
    if text.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    let n = text.chars().count();
    if n > max {
        return Err(invalid(
            field,
            format!("is {n} characters; WhatsApp takes at most {max}"),
        ));
    }
    Ok(())
}

impl Content<'_> {
    /// Meta's limits (see the module's docs), checked before anything is recorded.
    pub fn check(&self) -> Result<(), Invalid> {
        match self {
            Content::Media(m) => check_media(m),
            Content::Buttons {
                body,
                buttons,
                header,
                footer,
            } => {
                bounded("text", body, MAX_INTERACTIVE_BODY)?;
                check_header_footer(*header, *footer)?;
                if buttons.is_empty() || buttons.len() > MAX_BUTTONS {
                    return Err(invalid(
                        "buttons",
                        format!("takes 1 to {MAX_BUTTONS} buttons, not {}", buttons.len()),
                    ));
                }
                for (i, b) in buttons.iter().enumerate() {
                    bounded(&format!("buttons[{i}].id"), &b.id, MAX_BUTTON_ID)?;
                    bounded(&format!("buttons[{i}].title"), &b.title, MAX_BUTTON_TITLE)?;
                    if buttons[..i].iter().any(|o| o.id == b.id) {
                        return Err(invalid(
                            format!("buttons[{i}].id"),
                            "is another button's id too: ids must be unique",
                        ));
                    }
                    if buttons[..i]
                        .iter()
                        .any(|o| o.title.trim() == b.title.trim())
                    {
                        return Err(invalid(
                            format!("buttons[{i}].title"),
                            "is another button's title too: titles must be unique",
                        ));
                    }
                }
                Ok(())
            }
            Content::List {
                body,
                list,
                header,
                footer,
            } => {
                bounded("text", body, MAX_INTERACTIVE_BODY)?;
                check_header_footer(*header, *footer)?;
                bounded("list.button", &list.button, MAX_BUTTON_TITLE)?;
                let sections = &list.sections;
                if sections.is_empty() || sections.len() > MAX_LIST_ROWS {
                    return Err(invalid(
                        "list.sections",
                        format!(
                            "takes 1 to {MAX_LIST_ROWS} sections, not {}",
                            sections.len()
                        ),
                    ));
                }
                let rows: usize = sections.iter().map(|s| s.rows.len()).sum();
                if rows > MAX_LIST_ROWS {
                    return Err(invalid(
                        "list.sections",
                        format!("hold {rows} rows in all; WhatsApp takes at most {MAX_LIST_ROWS}"),
                    ));
                }
                let mut ids: Vec<&str> = Vec::with_capacity(rows);
                for (s, section) in sections.iter().enumerate() {
                    let at = format!("list.sections[{s}]");
                    match &section.title {
                        Some(t) => bounded(&format!("{at}.title"), t, MAX_ROW_TITLE)?,
                        None if sections.len() > 1 => {
                            return Err(invalid(
                                format!("{at}.title"),
                                "is required when the list has several sections",
                            ));
                        }
                        None => {}
                    }
                    if section.rows.is_empty() {
                        return Err(invalid(format!("{at}.rows"), "must hold at least one row"));
                    }
                    for (r, row) in section.rows.iter().enumerate() {
                        let at = format!("{at}.rows[{r}]");
                        bounded(&format!("{at}.id"), &row.id, MAX_ROW_ID)?;
                        bounded(&format!("{at}.title"), &row.title, MAX_ROW_TITLE)?;
                        if let Some(d) = &row.description {
                            bounded(&format!("{at}.description"), d, MAX_ROW_DESCRIPTION)?;
                        }
                        if ids.contains(&row.id.as_str()) {
                            return Err(invalid(
                                format!("{at}.id"),
                                "is another row's id too: ids must be unique in the list",
                            ));
                        }
                        ids.push(&row.id);
                    }
                }
                Ok(())
            }
        }
    }

    /// The message's own fields of a Graph API send: `{"type": "image", "image": {...}}`,
    /// `{"type": "interactive", "interactive": {"type": "button", ...}}`. The sender adds the
    /// recipient, `messaging_product` and the callback data.
    pub fn graph_message(&self) -> Value {
        match self {
            Content::Media(m) => {
                let mut object = serde_json::Map::new();
                if let Some(id) = &m.id {
                    object.insert("id".into(), json!(id.trim()));
                }
                if let Some(link) = &m.link {
                    object.insert("link".into(), json!(link.trim()));
                }
                if let Some(c) = m.caption.as_deref().filter(|c| !c.trim().is_empty()) {
                    object.insert("caption".into(), json!(c));
                }
                if let Some(f) = m.filename.as_deref().filter(|f| !f.trim().is_empty()) {
                    object.insert("filename".into(), json!(f.trim()));
                }
                json!({"type": m.kind, m.kind.as_str(): object})
            }
            Content::Buttons {
                body,
                buttons,
                header,
                footer,
            } => {
                let buttons: Vec<Value> = buttons
                    .iter()
                    .map(|b| json!({"type": "reply", "reply": {"id": b.id, "title": b.title.trim()}}))
                    .collect();
                interactive(
                    "button",
                    body,
                    *header,
                    *footer,
                    json!({ "buttons": buttons }),
                )
            }
            Content::List {
                body,
                list,
                header,
                footer,
            } => {
                let sections: Vec<Value> = list
                    .sections
                    .iter()
                    .map(|s| {
                        let rows: Vec<Value> = s
                            .rows
                            .iter()
                            .map(|r| {
                                let mut row = json!({"id": r.id, "title": r.title.trim()});
                                if let Some(d) = r.description.as_deref() {
                                    row["description"] = json!(d.trim());
                                }
                                row
                            })
                            .collect();
                        let mut section = json!({ "rows": rows });
                        if let Some(t) = s.title.as_deref() {
                            section["title"] = json!(t.trim());
                        }
                        section
                    })
                    .collect();
                interactive(
                    "list",
                    body,
                    *header,
                    *footer,
                    json!({"button": list.button.trim(), "sections": sections}),
                )
            }
        }
    }

    /// The line an agent's transcript shows for it: `[image] caption`,
    /// `[document: factura.pdf] caption`, `¿Lo confirmas? [buttons: Sí | No]`,
    /// `Elige tu envío [list Ver opciones: Domicilio | Tienda]`.
    pub fn rendering(&self) -> String {
        match self {
            Content::Media(m) => {
                let marker = match m.filename.as_deref().map(str::trim) {
                    Some(f) if !f.is_empty() => format!("[{}: {f}]", m.kind),
                    _ => format!("[{}]", m.kind),
                };
                match m.caption.as_deref().map(str::trim) {
                    Some(c) if !c.is_empty() => format!("{marker} {c}"),
                    _ => marker,
                }
            }
            Content::Buttons { body, buttons, .. } => {
                let titles: Vec<&str> = buttons.iter().map(|b| b.title.trim()).collect();
                format!("{} [buttons: {}]", body.trim(), titles.join(" | "))
            }
            Content::List { body, list, .. } => {
                let titles: Vec<&str> = list
                    .sections
                    .iter()
                    .flat_map(|s| s.rows.iter().map(|r| r.title.trim()))
                    .collect();
                format!(
                    "{} [list {}: {}]",
                    body.trim(),
                    list.button.trim(),
                    titles.join(" | ")
                )
            }
        }
    }
}

fn interactive(
    kind: &str,
    body: &str,
    header: Option<&str>,
    footer: Option<&str>,
    action: Value,
) -> Value {
    let mut object = json!({"type": kind, "body": {"text": body.trim()}, "action": action});
    if let Some(h) = header {
        object["header"] = json!({"type": "text", "text": h.trim()});
    }
    if let Some(f) = footer {
        object["footer"] = json!({"text": f.trim()});
    }
    json!({"type": "interactive", "interactive": object})
}

fn check_header_footer(header: Option<&str>, footer: Option<&str>) -> Result<(), Invalid> {
    if let Some(h) = header {
        bounded("header", h, MAX_HEADER)?;
    }
    if let Some(f) = footer {
        bounded("footer", f, MAX_HEADER)?;
    }
    Ok(())
}

fn check_media(m: &Media) -> Result<(), Invalid> {
    if !MEDIA_TYPES.contains(&m.kind.as_str()) {
        return Err(invalid(
            "media.type",
            format!("is one of {}", MEDIA_TYPES.join(", ")),
        ));
    }
    match (&m.link, &m.id) {
        (Some(_), Some(_)) => {
            return Err(invalid("media", "takes a link or an id, not both"));
        }
        (None, None) => {
            return Err(invalid(
                "media",
                "needs a link (an https URL Meta fetches) or the id of an uploaded file",
            ));
        }
        (Some(link), None) => {
            let link = link.trim();
            let host = link
                .strip_prefix("https://")
                .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
            if host.is_none_or(str::is_empty) || link.chars().any(char::is_whitespace) {
                return Err(invalid(
                    "media.link",
                    "must be an https URL Meta can fetch the file from",
                ));
            }
            bounded("media.link", link, 2048)?;
        }
        (None, Some(id)) => {
            let id = id.trim();
            if id.is_empty()
                || id.len() > 128
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(invalid(
                    "media.id",
                    "must be the id Meta answered for an uploaded file",
                ));
            }
        }
    }
    if let Some(caption) = &m.caption {
        if matches!(m.kind.as_str(), "audio" | "sticker") {
            return Err(invalid(
                "media.caption",
                format!("WhatsApp shows no caption with {}", m.kind),
            ));
        }
        bounded("media.caption", caption, MAX_CAPTION)?;
    }
    if let Some(filename) = &m.filename {
        if m.kind != "document" {
            return Err(invalid("media.filename", "is for a document only"));
        }
        bounded("media.filename", filename, 240)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(kind: &str) -> Media {
        Media {
            kind: kind.into(),
            link: Some("https://cdn.example.com/f/1.jpg".into()),
            id: None,
            caption: None,
            filename: None,
        }
    }

    fn buttons(titles: &[&str]) -> Vec<Button> {
        titles
            .iter()
            .enumerate()
            .map(|(i, t)| Button {
                id: format!("b{i}"),
                title: t.to_string(),
            })
            .collect()
    }

    fn list(rows_per_section: &[usize]) -> List {
        List {
            button: "Ver opciones".into(),
            sections: rows_per_section
                .iter()
                .enumerate()
                .map(|(s, n)| Section {
                    title: Some(format!("Sección {s}")),
                    rows: (0..*n)
                        .map(|r| Row {
                            id: format!("s{s}r{r}"),
                            title: format!("Opción {r}"),
                            description: None,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn field(c: Content<'_>) -> String {
        c.check().unwrap_err().field
    }

    #[test]
    fn an_image_with_a_caption_is_metas_image_object() {
        let m = Media {
            caption: Some("Tu factura".into()),
            ..media("image")
        };
        let c = Content::Media(&m);
        c.check().unwrap();
        assert_eq!(
            c.graph_message(),
            json!({"type": "image", "image": {"link": "https://cdn.example.com/f/1.jpg", "caption": "Tu factura"}})
        );
        assert_eq!(c.rendering(), "[image] Tu factura");
    }

    #[test]
    fn a_document_by_id_carries_its_file_name() {
        let m = Media {
            link: None,
            id: Some("1037543291543636".into()),
            filename: Some("factura-1042.pdf".into()),
            ..media("document")
        };
        let c = Content::Media(&m);
        c.check().unwrap();
        assert_eq!(
            c.graph_message(),
            json!({"type": "document", "document": {"id": "1037543291543636", "filename": "factura-1042.pdf"}})
        );
        assert_eq!(c.rendering(), "[document: factura-1042.pdf]");
    }

    #[test]
    fn reply_buttons_are_metas_interactive_button_object() {
        let b = buttons(&["Sí", "No"]);
        let c = Content::Buttons {
            body: "¿Confirmas el pedido?",
            buttons: &b,
            header: None,
            footer: Some("Tienda Lavanda"),
        };
        c.check().unwrap();
        assert_eq!(
            c.graph_message(),
            json!({"type": "interactive", "interactive": {
                "type": "button",
                "body": {"text": "¿Confirmas el pedido?"},
                "footer": {"text": "Tienda Lavanda"},
                "action": {"buttons": [
                    {"type": "reply", "reply": {"id": "b0", "title": "Sí"}},
                    {"type": "reply", "reply": {"id": "b1", "title": "No"}}
                ]}
            }})
        );
        assert_eq!(c.rendering(), "¿Confirmas el pedido? [buttons: Sí | No]");
    }

    #[test]
    fn a_list_is_metas_interactive_list_object() {
        let mut l = list(&[2]);
        l.sections[0].rows[1].description = Some("Mañana antes de las 12".into());
        let c = Content::List {
            body: "¿Cómo lo quieres?",
            list: &l,
            header: Some("Envío"),
            footer: None,
        };
        c.check().unwrap();
        assert_eq!(
            c.graph_message(),
            json!({"type": "interactive", "interactive": {
                "type": "list",
                "header": {"type": "text", "text": "Envío"},
                "body": {"text": "¿Cómo lo quieres?"},
                "action": {"button": "Ver opciones", "sections": [{"title": "Sección 0", "rows": [
                    {"id": "s0r0", "title": "Opción 0"},
                    {"id": "s0r1", "title": "Opción 1", "description": "Mañana antes de las 12"}
                ]}]}
            }})
        );
        assert_eq!(
            c.rendering(),
            "¿Cómo lo quieres? [list Ver opciones: Opción 0 | Opción 1]"
        );
    }

    #[test]
    fn each_broken_limit_names_its_field() {
        let cases: Vec<(Media, &str)> = vec![
            (media("location"), "media.type"),
            (
                Media {
                    id: Some("1".into()),
                    ..media("image")
                },
                "media",
            ),
            (
                Media {
                    link: None,
                    ..media("image")
                },
                "media",
            ),
            (
                Media {
                    link: Some("http://cdn.example.com/a.jpg".into()),
                    ..media("image")
                },
                "media.link",
            ),
            (
                Media {
                    link: None,
                    id: Some("../x".into()),
                    ..media("image")
                },
                "media.id",
            ),
            (
                Media {
                    caption: Some("hola".into()),
                    ..media("audio")
                },
                "media.caption",
            ),
            (
                Media {
                    caption: Some("x".repeat(1025)),
                    ..media("image")
                },
                "media.caption",
            ),
            (
                Media {
                    filename: Some("a.pdf".into()),
                    ..media("image")
                },
                "media.filename",
            ),
        ];
        for (m, want) in &cases {
            assert_eq!(field(Content::Media(m)), *want, "{m:?}");
        }
        let sticker = media("sticker");
        Content::Media(&sticker).check().unwrap();
        let caption_at_limit = Media {
            caption: Some("é".repeat(1024)),
            ..media("video")
        };
        Content::Media(&caption_at_limit).check().unwrap();

        let btn = |b: &[Button], body: &str| {
            Content::Buttons {
                body,
                buttons: b,
                header: None,
                footer: None,
            }
            .check()
        };
        let bad = |r: Result<(), Invalid>| r.unwrap_err().field;
        assert_eq!(bad(btn(&buttons(&[]), "x")), "buttons");
        assert_eq!(bad(btn(&buttons(&["a", "b", "c", "d"]), "x")), "buttons");
        assert_eq!(
            bad(btn(&buttons(&["Veintiún caracteres!!"]), "x")),
            "buttons[0].title"
        );
        btn(&buttons(&["Veinte caracteres!!!"]), "x").unwrap();
        assert_eq!(bad(btn(&buttons(&["Sí", "Sí"]), "x")), "buttons[1].title");
        let mut same_id = buttons(&["Sí", "No"]);
        same_id[1].id = "b0".into();
        assert_eq!(bad(btn(&same_id, "x")), "buttons[1].id");
        assert_eq!(bad(btn(&buttons(&["Sí"]), " ")), "text");
        assert_eq!(bad(btn(&buttons(&["Sí"]), &"x".repeat(1025))), "text");
        let b = buttons(&["Sí"]);
        let long_footer = "x".repeat(61);
        assert_eq!(
            field(Content::Buttons {
                body: "x",
                buttons: &b,
                header: None,
                footer: Some(&long_footer)
            }),
            "footer"
        );

        let lst = |l: &List| {
            Content::List {
                body: "Elige",
                list: l,
                header: None,
                footer: None,
            }
            .check()
        };
        assert_eq!(bad(lst(&list(&[6, 5]))), "list.sections");
        lst(&list(&[5, 5])).unwrap();
        assert_eq!(bad(lst(&list(&[]))), "list.sections");
        assert_eq!(bad(lst(&list(&[0]))), "list.sections[0].rows");
        let mut l = list(&[1, 1]);
        l.sections[1].title = None;
        assert_eq!(bad(lst(&l)), "list.sections[1].title");
        let mut l = list(&[1]);
        l.sections[0].title = None;
        lst(&l).unwrap();
        let mut l = list(&[2]);
        l.sections[0].rows[1].title = "x".repeat(25);
        assert_eq!(bad(lst(&l)), "list.sections[0].rows[1].title");
        let mut l = list(&[2]);
        l.sections[0].rows[0].description = Some("x".repeat(73));
        assert_eq!(bad(lst(&l)), "list.sections[0].rows[0].description");
        let mut l = list(&[1, 1]);
        l.sections[1].rows[0].id = "s0r0".into();
        assert_eq!(bad(lst(&l)), "list.sections[1].rows[0].id");
        let mut l = list(&[1]);
        l.button = "x".repeat(21);
        assert_eq!(bad(lst(&l)), "list.button");
    }

    #[test]
    fn an_upload_is_sent_as_its_kind_within_metas_size() {
        assert_eq!(upload_kind("image/jpeg"), Some(("image", 5 * 1024 * 1024)));
        assert_eq!(
            upload_kind("Audio/OGG; codecs=opus"),
            Some(("audio", 16 * 1024 * 1024))
        );
        assert_eq!(
            upload_kind("application/pdf"),
            Some(("document", 100 * 1024 * 1024))
        );
        assert_eq!(upload_kind("image/webp"), Some(("sticker", 500 * 1024)));
        assert_eq!(upload_kind("video/3gpp").map(|k| k.0), Some("video"));
        for refused in ["image/gif", "application/zip", "text/html", ""] {
            assert_eq!(upload_kind(refused), None, "{refused}");
        }
    }

    #[test]
    fn an_error_never_quotes_the_value() {
        let m = Media {
            caption: Some("Camila Rojas 3001234567".into()),
            ..media("audio")
        };
        let e = Content::Media(&m).check().unwrap_err().to_string();
        assert!(!e.contains("Camila"), "{e}");
    }
}
