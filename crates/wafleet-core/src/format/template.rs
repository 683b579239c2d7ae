//! Approved templates: the components a send carries, whether they are what the approved template
//! needs, and the template as the customer read it (for the model's history and the transcript).
//!
//! Meta keeps the wording (`GET /{waba_id}/message_templates`: components `HEADER` with a
//! `format` (`TEXT` with a `text` holding at most one `{{1}}`, or `IMAGE`, `DOCUMENT`, `VIDEO`…),
//! `BODY` and `FOOTER` with a `text` holding `{{1}}`, `{{2}}`…, and `BUTTONS` whose `URL` buttons
//! may end their `url` in `{{1}}`). A send carries only what varies: the header's media or text
//! parameter, the body's parameters in order, a URL button's suffix, a quick-reply button's
//! payload, a copy-code button's code ([`components`]). Meta refuses a send whose parameters do
//! not match the template (error 132000), so [`check`] compares them first. Named parameters
//! (`{{order_id}}`) are not sent; numbers past the parameters given are left as they are written.
//!
//! Not in our API reference; the component objects are Meta's public docs': "Template media"
//! (`developers.facebook.com/documentation/business-messaging/whatsapp/templates/template-media`:
//! a header parameter `{"type": "document", "document": {"link"|"id", "filename"}}`), "Coupon
//! code templates" (`…/templates/marketing-templates/coupon-templates`: `{"type": "button",
//! "sub_type": "copy_code", "index": 0, "parameters": [{"type": "coupon_code", "coupon_code"}]}`)
//! and "Send message templates" (`{"type": "button", "sub_type": "url" | "quick_reply", "index":
//! "0", "parameters": [{"type": "text", "text"} | {"type": "payload", "payload"}]}`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The parts of an approved template, as Meta lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateText {
    /// A `TEXT` header's text.
    pub header: Option<String>,
    pub body: Option<String>,
    pub footer: Option<String>,
    /// The header's `format` in capitals (`TEXT`, `IMAGE`, `DOCUMENT`, `VIDEO`, `LOCATION`…);
    /// `None` without a header.
    pub header_format: Option<String>,
    /// The buttons, in order: a send names one by its position here.
    pub buttons: Vec<DefinedButton>,
    /// `parameter_format: NAMED` (`{{order_id}}`): wafleet sends positional parameters only.
    pub named: bool,
}

/// A button of an approved template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DefinedButton {
    /// Meta's `type` in capitals: `URL`, `QUICK_REPLY`, `COPY_CODE`, `PHONE_NUMBER`…
    pub kind: String,
    pub text: String,
    /// A `URL` button's address, `{{1}}` at its end when the send gives the rest.
    pub url: Option<String>,
}

impl DefinedButton {
    /// Whether a send must give this button a parameter (a URL's suffix, a coupon code).
    fn needs_parameter(&self) -> bool {
        match self.kind.as_str() {
            "URL" => self.url.as_deref().is_some_and(|u| placeholders(u) > 0),
            "COPY_CODE" => true,
            _ => false,
        }
    }
}

/// A template's header as a send gives it: `{"type": "text", "parameters": [...]}` or
/// `{"type": "image" | "document" | "video", "link" | "id", "filename"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Header {
    Text {
        #[serde(default)]
        parameters: Vec<String>,
    },
    Image(Media),
    Document(Media),
    Video(Media),
}

/// A header's media: a public `https` link Meta fetches, or the id of media uploaded to Meta.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Media {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A document's name as the customer sees it (`invoice.pdf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// A button's parameter as a send gives it, by the button's position in the template (0-based).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "sub_type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Button {
    /// The end of a URL button's address (`{{1}}` in `https://shop.example/track/{{1}}`).
    Url { index: u8, parameter: String },
    /// What Meta sends back in the webhook when the customer taps the quick reply.
    QuickReply { index: u8, payload: String },
    /// The code a copy-code button copies.
    CopyCode { index: u8, coupon_code: String },
}

impl Button {
    pub fn index(&self) -> u8 {
        match self {
            Button::Url { index, .. }
            | Button::QuickReply { index, .. }
            | Button::CopyCode { index, .. } => *index,
        }
    }

    /// Meta's `sub_type`.
    pub fn sub_type(&self) -> &'static str {
        match self {
            Button::Url { .. } => "url",
            Button::QuickReply { .. } => "quick_reply",
            Button::CopyCode { .. } => "copy_code",
        }
    }

    /// The kind of template button it fills (Meta's `type`).
    fn fills(&self) -> &'static str {
        match self {
            Button::Url { .. } => "URL",
            Button::QuickReply { .. } => "QUICK_REPLY",
            Button::CopyCode { .. } => "COPY_CODE",
        }
    }

    /// The parameter, payload or code given.
    pub fn value(&self) -> &str {
        match self {
            Button::Url { parameter: v, .. }
            | Button::QuickReply { payload: v, .. }
            | Button::CopyCode { coupon_code: v, .. } => v,
        }
    }
}

/// A template's buttons are at most ten (Meta: "up to 10 buttons using index values of 0 to 9").
pub const MAX_BUTTONS: u8 = 10;
/// A copy-code button's code is at most 15 characters (Meta's coupon code templates).
pub const MAX_COUPON_CHARS: usize = 15;

/// What a send gives beside the body's parameters, checked on its own (before the template is
/// known): a media header has a link or an id (not both), a link is `https`, a file name only for
/// a document; buttons are at distinct positions 0–9 with non-empty values. Each problem is
/// named.
pub fn check_request(header: Option<&Header>, buttons: &[Button]) -> Result<(), String> {
    let mut problems = Vec::new();
    match header {
        Some(Header::Text { parameters }) => {
            if parameters.is_empty() {
                problems.push("a text header needs its parameters (or no header)".to_string());
            }
            if parameters.iter().any(|p| p.trim().is_empty()) {
                problems.push("a header parameter is empty".to_string());
            }
        }
        Some(h @ (Header::Image(m) | Header::Document(m) | Header::Video(m))) => {
            let kind = header_kind(h);
            match (&m.link, &m.id) {
                (Some(_), Some(_)) => {
                    problems.push(format!("the {kind} header has a link and an id: give one"))
                }
                (None, None) => {
                    problems.push(format!("the {kind} header needs a link or a media id"))
                }
                (Some(link), None) if !link.trim().starts_with("https://") => problems.push(
                    format!("the {kind} header's link must be an https:// address Meta can fetch"),
                ),
                (None, Some(id)) if id.trim().is_empty() => {
                    problems.push(format!("the {kind} header's media id is empty"))
                }
                _ => {}
            }
            if m.filename.is_some() && !matches!(h, Header::Document(_)) {
                problems.push(format!("only a document has a filename, not an {kind}"));
            }
        }
        None => {}
    }
    let mut seen = std::collections::BTreeSet::new();
    for b in buttons {
        let i = b.index();
        if i >= MAX_BUTTONS {
            problems.push(format!(
                "button {i}: a template's buttons are numbered 0 to 9"
            ));
        }
        if !seen.insert(i) {
            problems.push(format!("button {i} is given twice"));
        }
        if b.value().trim().is_empty() {
            problems.push(format!("button {i}'s {} is empty", value_name(b)));
        }
        if let Button::CopyCode { coupon_code, .. } = b
            && coupon_code.chars().count() > MAX_COUPON_CHARS
        {
            problems.push(format!(
                "button {i}'s coupon code is longer than {MAX_COUPON_CHARS} characters"
            ));
        }
    }
    joined(problems)
}

fn value_name(b: &Button) -> &'static str {
    match b {
        Button::Url { .. } => "parameter",
        Button::QuickReply { .. } => "payload",
        Button::CopyCode { .. } => "coupon_code",
    }
}

fn header_kind(h: &Header) -> &'static str {
    match h {
        Header::Text { .. } => "text",
        Header::Image(_) => "image",
        Header::Document(_) => "document",
        Header::Video(_) => "video",
    }
}

fn joined(problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Whether a send fits the approved template `t`: the header Meta needs (its media, its text's
/// parameter) and none it does not have, as many body parameters as the body has placeholders,
/// a suffix for every URL button that ends in `{{1}}` and a code for every copy-code button, and
/// no parameter for a button that takes none. Quick-reply payloads are optional. Each problem is
/// named, for the agent (`template order_update needs a document header: …`).
pub fn check(
    name: &str,
    t: &TemplateText,
    header: Option<&Header>,
    body_params: &[String],
    buttons: &[Button],
) -> Result<(), String> {
    let mut problems = Vec::new();
    if t.named {
        return Err(format!(
            "template {name} uses named parameters ({{{{name}}}}), which wafleet does not send"
        ));
    }
    let format = t.header_format.as_deref();
    match (format, header) {
        (None, Some(_)) => problems.push(format!("template {name} has no header")),
        (Some("TEXT"), given) => {
            let wanted = t.header.as_deref().map(placeholders).unwrap_or(0);
            let given_params = match given {
                Some(Header::Text { parameters }) => Some(parameters.len()),
                Some(other) => {
                    problems.push(format!(
                        "template {name}'s header is text, not {}",
                        with_article(header_kind(other))
                    ));
                    None
                }
                None => Some(0),
            };
            match given_params {
                Some(n) if n != wanted && wanted == 0 => {
                    problems.push(format!("template {name}'s header takes no parameters"))
                }
                Some(n) if n != wanted => problems.push(format!(
                    "template {name}'s header takes {wanted} parameter{} ({n} given): \
                     header: {{\"type\": \"text\", \"parameters\": [...]}}",
                    plural(wanted)
                )),
                _ => {}
            }
        }
        (Some(media @ ("IMAGE" | "DOCUMENT" | "VIDEO")), given) => {
            let wanted = media.to_ascii_lowercase();
            match given {
                Some(h) if header_kind(h) == wanted => {}
                Some(h) => problems.push(format!(
                    "template {name}'s header is {}, not {}",
                    with_article(&wanted),
                    with_article(header_kind(h))
                )),
                None => problems.push(format!(
                    "template {name} needs {} header: header: {{\"type\": \"{wanted}\", \
                     \"link\": \"https://…\"}} (or \"id\")",
                    with_article(&wanted)
                )),
            }
        }
        (Some(other), _) => problems.push(format!(
            "template {name} has a {} header, which wafleet does not send",
            other.to_ascii_lowercase()
        )),
        (None, None) => {}
    }
    let wanted = t.body.as_deref().map(placeholders).unwrap_or(0);
    if body_params.len() != wanted {
        problems.push(format!(
            "template {name}'s body takes {wanted} parameter{} ({} given)",
            plural(wanted),
            body_params.len()
        ));
    }
    for b in buttons {
        let i = b.index();
        match t.buttons.get(usize::from(i)) {
            None => problems.push(format!(
                "template {name} has no button {i} (it has {})",
                t.buttons.len()
            )),
            Some(d) if d.kind != b.fills() => problems.push(format!(
                "template {name}'s button {i} ({:?}) is {}, not {}",
                d.text,
                button_kind(&d.kind),
                button_kind(b.fills())
            )),
            Some(d) if d.kind == "URL" && !d.needs_parameter() => problems.push(format!(
                "template {name}'s button {i} ({:?}) has a fixed address: it takes no parameter",
                d.text
            )),
            Some(_) => {}
        }
    }
    for (i, d) in t.buttons.iter().enumerate() {
        let given = buttons.iter().any(|b| usize::from(b.index()) == i);
        if d.needs_parameter() && !given {
            let (sub_type, field) = if d.kind == "URL" {
                ("url", "parameter")
            } else {
                ("copy_code", "coupon_code")
            };
            problems.push(format!(
                "template {name}'s button {i} ({:?}) needs its {}: buttons: [{{\"index\": {i}, \
                 \"sub_type\": \"{sub_type}\", \"{field}\": …}}]",
                d.text,
                if d.kind == "URL" {
                    "URL's suffix"
                } else {
                    "coupon code"
                }
            ));
        }
    }
    joined(problems)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn with_article(kind: &str) -> String {
    match kind.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {kind}"),
        _ => format!("a {kind}"),
    }
}

fn button_kind(kind: &str) -> String {
    match kind {
        "URL" => "a URL button".into(),
        "QUICK_REPLY" => "a quick reply".into(),
        "COPY_CODE" => "a copy-code button".into(),
        "PHONE_NUMBER" => "a call button".into(),
        other => format!("a {} button", other.to_ascii_lowercase()),
    }
}

/// How many distinct placeholders (`{{1}}`, `{{ 2 }}`, `{{order_id}}`) `text` holds.
pub fn placeholders(text: &str) -> usize {
    let mut seen = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            break;
        };
        let inner = after[..close].trim();
        if !inner.is_empty() && !inner.contains('{') {
            seen.insert(inner.to_string());
        }
        rest = &after[close + 2..];
    }
    seen.len()
}

/// Meta's `components` of a send: a `header` (its media or text parameters), the `body`'s text
/// parameters, and one `button` component per button given. Empty when the send gives nothing.
pub fn components(
    header: Option<&Header>,
    body_params: &[String],
    buttons: &[Button],
) -> Vec<Value> {
    let mut out = Vec::new();
    match header {
        Some(Header::Text { parameters }) => out.push(json!({
            "type": "header",
            "parameters": parameters.iter().map(|p| json!({"type": "text", "text": p}))
                .collect::<Vec<_>>(),
        })),
        Some(h @ (Header::Image(m) | Header::Document(m) | Header::Video(m))) => {
            let kind = header_kind(h);
            let mut media = serde_json::Map::new();
            if let Some(link) = &m.link {
                media.insert("link".into(), json!(link.trim()));
            }
            if let Some(id) = &m.id {
                media.insert("id".into(), json!(id.trim()));
            }
            if let Some(f) = &m.filename {
                media.insert("filename".into(), json!(f));
            }
            out.push(json!({
                "type": "header",
                "parameters": [{"type": kind, kind: Value::Object(media)}],
            }));
        }
        None => {}
    }
    if !body_params.is_empty() {
        out.push(json!({
            "type": "body",
            "parameters": body_params.iter().map(|p| json!({"type": "text", "text": p}))
                .collect::<Vec<_>>(),
        }));
    }
    let mut sorted: Vec<&Button> = buttons.iter().collect();
    sorted.sort_by_key(|b| b.index());
    for b in sorted {
        let parameter = match b {
            Button::Url { parameter, .. } => json!({"type": "text", "text": parameter}),
            Button::QuickReply { payload, .. } => json!({"type": "payload", "payload": payload}),
            Button::CopyCode { coupon_code, .. } => {
                json!({"type": "coupon_code", "coupon_code": coupon_code})
            }
        };
        out.push(json!({
            "type": "button",
            "sub_type": b.sub_type(),
            // A string in Meta's examples of URL and quick-reply buttons.
            "index": b.index().to_string(),
            "parameters": [parameter],
        }));
    }
    out
}

/// What a sent template's `components` give, read back from the `template` object.
#[derive(Debug, Default)]
struct Sent {
    header_text: Vec<String>,
    /// (kind, file name) of a media header.
    header_media: Option<(String, Option<String>)>,
    body: Vec<String>,
    /// (index, sub_type, value).
    buttons: Vec<(usize, String, String)>,
}

fn sent(template: &Value) -> Sent {
    let mut s = Sent::default();
    let text_of = |p: &Value| p["text"].as_str().unwrap_or_default().trim().to_string();
    for c in template["components"].as_array().into_iter().flatten() {
        let params = c["parameters"].as_array().cloned().unwrap_or_default();
        match c["type"].as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("header") => {
                for p in &params {
                    match p["type"].as_str() {
                        Some("text") => s.header_text.push(text_of(p)),
                        Some(kind) => {
                            let filename = p[kind]["filename"].as_str().map(str::to_string);
                            s.header_media = Some((kind.to_string(), filename));
                        }
                        None => {}
                    }
                }
            }
            Some("body") => s.body.extend(params.iter().map(text_of)),
            Some("button") => {
                let index = match &c["index"] {
                    Value::String(i) => i.parse().ok(),
                    Value::Number(n) => n.as_u64().map(|n| n as usize),
                    _ => None,
                };
                let sub_type = c["sub_type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                let value = params
                    .first()
                    .map(|p| {
                        ["text", "payload", "coupon_code"]
                            .iter()
                            .find_map(|k| p[*k].as_str())
                            .unwrap_or_default()
                            .trim()
                            .to_string()
                    })
                    .unwrap_or_default();
                if let Some(index) = index {
                    s.buttons.push((index, sub_type, value));
                }
            }
            _ => {}
        }
    }
    s
}

fn media_marker(kind: &str, filename: Option<&str>) -> String {
    match filename {
        Some(f) if !f.trim().is_empty() => format!("[{kind} {}]", f.trim()),
        _ => format!("[{kind}]"),
    }
}

/// A sent template in a line, from its `template` object alone (what the transcript shows and
/// the model reads until Meta's wording is known): `[template: order_update] [document
/// invoice.pdf] [header: #1042] #1042 | martes [button 0: 1042] [quick reply 1: STOP]`. Media
/// links and ids are never shown (a link can carry a signature).
pub fn describe(template: &Value) -> String {
    let s = sent(template);
    let mut out = format!(
        "[template: {}]",
        template["name"].as_str().unwrap_or("?").trim()
    );
    if let Some((kind, filename)) = &s.header_media {
        out.push(' ');
        out.push_str(&media_marker(kind, filename.as_deref()));
    }
    if !s.header_text.is_empty() {
        out.push_str(&format!(" [header: {}]", s.header_text.join(" | ")));
    }
    if !s.body.is_empty() {
        out.push(' ');
        out.push_str(&s.body.join(" | "));
    }
    for (i, sub_type, value) in &s.buttons {
        let label = match sub_type.as_str() {
            "quick_reply" => "quick reply",
            "copy_code" => "code",
            _ => "button",
        };
        out.push_str(&format!(" [{label} {i}: {value}]"));
    }
    out
}

/// A sent template outlined without its values (for dashboards' `message_failed` events, which
/// never carry a customer's data): `[template: order_invoice] [document] [2 parameters] [button
/// 0] [quick reply 1]`.
pub fn outline(template: &Value) -> String {
    let s = sent(template);
    let mut out = format!(
        "[template: {}]",
        template["name"].as_str().unwrap_or("?").trim()
    );
    if let Some((kind, _)) = &s.header_media {
        out.push_str(&format!(" [{kind}]"));
    }
    if !s.header_text.is_empty() {
        out.push_str(" [header]");
    }
    match s.body.len() {
        0 => {}
        1 => out.push_str(" [1 parameter]"),
        n => out.push_str(&format!(" [{n} parameters]")),
    }
    for (i, sub_type, _) in &s.buttons {
        let label = match sub_type.as_str() {
            "quick_reply" => "quick reply",
            "copy_code" => "code",
            _ => "button",
        };
        out.push_str(&format!(" [{label} {i}]"));
    }
    out
}

/// A sent template as the customer read it, from Meta's wording `t` and the `template` object
/// sent: the header's media (`[document invoice.pdf]`) or text, the body with its parameters in
/// place, the footer, and the buttons (`[button: Track order → https://shop.example/track/1042]`),
/// one blank line between them. `None` when it has no text at all.
pub fn render_sent(t: &TemplateText, template: &Value) -> Option<String> {
    let s = sent(template);
    let media = s
        .header_media
        .as_ref()
        .map(|(kind, filename)| media_marker(kind, filename.as_deref()));
    let header = t.header.as_deref().map(|h| fill(h, &s.header_text));
    let body = t.body.as_deref().map(|b| fill(b, &s.body));
    let buttons: Vec<String> = t
        .buttons
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let value = s.buttons.iter().find(|b| b.0 == i).map(|b| b.2.clone());
            match (&d.url, d.kind.as_str()) {
                (Some(url), "URL") => {
                    let url = fill(url, &value.into_iter().collect::<Vec<_>>());
                    format!("[button: {} → {url}]", d.text)
                }
                (_, "COPY_CODE") => match value {
                    Some(code) => format!("[button: {} ({code})]", d.text),
                    None => format!("[button: {}]", d.text),
                },
                _ => format!("[button: {}]", d.text),
            }
        })
        .collect();
    let buttons = (!buttons.is_empty()).then(|| buttons.join(" "));
    let parts: Vec<&str> = [
        media.as_deref(),
        header.as_deref(),
        body.as_deref(),
        t.footer.as_deref(),
        buttons.as_deref(),
    ]
    .into_iter()
    .flatten()
    .map(str::trim)
    .filter(|p| !p.is_empty())
    .collect();
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

/// The template as the customer read it: header, body (with `params` in place of `{{1}}`,
/// `{{2}}`…) and footer, one blank line between them. `None` when it has no text at all.
pub fn render(t: &TemplateText, params: &[String]) -> Option<String> {
    let body = t.body.as_deref().map(|b| fill(b, params));
    let parts: Vec<&str> = [t.header.as_deref(), body.as_deref(), t.footer.as_deref()]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

/// `text` with `{{n}}` (1-based, spaces inside the braces allowed) replaced by `params[n - 1]`.
fn fill(text: &str, params: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let param = after[..close]
            .trim()
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| params.get(i));
        match param {
            Some(p) => out.push_str(p),
            None => out.push_str(&rest[open..open + 2 + close + 2]),
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_body_gets_its_parameters_between_header_and_footer() {
        let t = TemplateText {
            header: Some("Tu pedido".into()),
            body: Some("Hola, tu pedido {{1}} salió hoy y llega el {{ 2 }}.".into()),
            footer: Some("Tienda Sol".into()),
            ..TemplateText::default()
        };
        assert_eq!(
            render(&t, &params(&["#1042", "martes"])).as_deref(),
            Some("Tu pedido\n\nHola, tu pedido #1042 salió hoy y llega el martes.\n\nTienda Sol")
        );
    }

    #[test]
    fn what_cannot_be_filled_stays_as_written() {
        let t = TemplateText {
            body: Some("{{1}} y {{2}}; {{order_id}}; {{0}}; {{1".into()),
            ..TemplateText::default()
        };
        assert_eq!(
            render(&t, &params(&["uno"])).as_deref(),
            Some("uno y {{2}}; {{order_id}}; {{0}}; {{1")
        );
        // A parameter's own braces are not filled again.
        assert_eq!(
            render(&t, &params(&["{{2}}", "dos"])).as_deref(),
            Some("{{2}} y dos; {{order_id}}; {{0}}; {{1")
        );
    }

    #[test]
    fn a_template_without_text_renders_to_nothing() {
        assert_eq!(render(&TemplateText::default(), &[]), None);
        let blank = TemplateText {
            header: Some("  ".into()),
            ..TemplateText::default()
        };
        assert_eq!(render(&blank, &[]), None);
        let only_footer = TemplateText {
            footer: Some("Responde STOP para no recibir más".into()),
            ..TemplateText::default()
        };
        assert_eq!(
            render(&only_footer, &[]).as_deref(),
            Some("Responde STOP para no recibir más")
        );
    }

    fn order_update() -> TemplateText {
        TemplateText {
            header: None,
            header_format: Some("DOCUMENT".into()),
            body: Some("Hola {{1}}, tu pedido {{2}} ya salió.".into()),
            footer: Some("Tienda Sol".into()),
            buttons: vec![
                DefinedButton {
                    kind: "URL".into(),
                    text: "Track order".into(),
                    url: Some("https://shop.example/track/{{1}}".into()),
                },
                DefinedButton {
                    kind: "QUICK_REPLY".into(),
                    text: "Stop".into(),
                    url: None,
                },
                DefinedButton {
                    kind: "URL".into(),
                    text: "Help".into(),
                    url: Some("https://shop.example/help".into()),
                },
            ],
            named: false,
        }
    }

    fn document() -> Header {
        Header::Document(Media {
            link: Some("https://shop.example/f/invoice-1042.pdf".into()),
            id: None,
            filename: Some("invoice.pdf".into()),
        })
    }

    #[test]
    fn a_request_is_read_as_the_api_takes_it() {
        let header: Header = serde_json::from_value(json!(
            {"type": "document", "link": "https://x.example/a.pdf", "filename": "a.pdf"}))
        .unwrap();
        assert!(matches!(
            header,
            Header::Document(Media {
                filename: Some(_),
                ..
            })
        ));
        let header: Header =
            serde_json::from_value(json!({"type": "text", "parameters": ["#1042"]})).unwrap();
        assert_eq!(
            header,
            Header::Text {
                parameters: params(&["#1042"])
            }
        );
        // A misspelt field is refused, not ignored.
        assert!(
            serde_json::from_value::<Header>(json!({"type": "image", "url": "https://x"})).is_err()
        );
        assert!(
            serde_json::from_value::<Header>(json!({"type": "audio", "link": "https://x"}))
                .is_err()
        );
        let buttons: Vec<Button> = serde_json::from_value(json!([
            {"index": 0, "sub_type": "url", "parameter": "1042"},
            {"index": 1, "sub_type": "quick_reply", "payload": "STOP"},
            {"index": 2, "sub_type": "copy_code", "coupon_code": "SOL25"}]))
        .unwrap();
        assert_eq!(
            buttons[1],
            Button::QuickReply {
                index: 1,
                payload: "STOP".into()
            }
        );
        assert!(
            serde_json::from_value::<Button>(
                json!({"index": 0, "sub_type": "url", "payload": "x"})
            )
            .is_err()
        );
    }

    #[test]
    fn components_are_meta_s_objects_for_each_kind() {
        let buttons = [
            Button::QuickReply {
                index: 1,
                payload: "STOP".into(),
            },
            Button::Url {
                index: 0,
                parameter: "1042".into(),
            },
            Button::CopyCode {
                index: 3,
                coupon_code: "SOL25".into(),
            },
        ];
        let got = components(Some(&document()), &params(&["Ana", "#1042"]), &buttons);
        assert_eq!(
            Value::Array(got),
            json!([
                {"type": "header", "parameters": [{"type": "document", "document":
                    {"link": "https://shop.example/f/invoice-1042.pdf", "filename": "invoice.pdf"}}]},
                {"type": "body", "parameters": [{"type": "text", "text": "Ana"},
                                                {"type": "text", "text": "#1042"}]},
                {"type": "button", "sub_type": "url", "index": "0",
                 "parameters": [{"type": "text", "text": "1042"}]},
                {"type": "button", "sub_type": "quick_reply", "index": "1",
                 "parameters": [{"type": "payload", "payload": "STOP"}]},
                {"type": "button", "sub_type": "copy_code", "index": "3",
                 "parameters": [{"type": "coupon_code", "coupon_code": "SOL25"}]},
            ])
        );
        let image = Header::Image(Media {
            id: Some("4490709327".into()),
            ..Media::default()
        });
        assert_eq!(
            components(Some(&image), &[], &[]),
            [
                json!({"type": "header", "parameters": [{"type": "image", "image": {"id": "4490709327"}}]})
            ]
        );
        let text = Header::Text {
            parameters: params(&["#1042"]),
        };
        assert_eq!(
            components(Some(&text), &[], &[]),
            [json!({"type": "header", "parameters": [{"type": "text", "text": "#1042"}]})]
        );
        assert!(components(None, &[], &[]).is_empty());
    }

    #[test]
    fn a_request_s_own_mistakes_are_named() {
        let both = Header::Video(Media {
            link: Some("https://x.example/v.mp4".into()),
            id: Some("1".into()),
            filename: Some("v.mp4".into()),
        });
        let err = check_request(Some(&both), &[]).unwrap_err();
        assert!(
            err.contains("has a link and an id") && err.contains("only a document has a filename"),
            "{err}"
        );
        let http = Header::Image(Media {
            link: Some("http://x.example/a.png".into()),
            ..Media::default()
        });
        assert!(
            check_request(Some(&http), &[])
                .unwrap_err()
                .contains("https://")
        );
        let buttons = [
            Button::Url {
                index: 0,
                parameter: " ".into(),
            },
            Button::QuickReply {
                index: 0,
                payload: "A".into(),
            },
            Button::CopyCode {
                index: 10,
                coupon_code: "A_CODE_TOO_LONG_1".into(),
            },
        ];
        let err = check_request(None, &buttons).unwrap_err();
        for part in [
            "button 0's parameter is empty",
            "button 0 is given twice",
            "numbered 0 to 9",
            "longer than 15",
        ] {
            assert!(err.contains(part), "{part}: {err}");
        }
        assert_eq!(
            check_request(
                Some(&document()),
                &[Button::Url {
                    index: 0,
                    parameter: "1".into()
                }]
            ),
            Ok(())
        );
    }

    #[test]
    fn a_send_that_fits_the_template_passes() {
        let t = order_update();
        let ok = check(
            "order_update",
            &t,
            Some(&document()),
            &params(&["Ana", "#1042"]),
            &[Button::Url {
                index: 0,
                parameter: "1042".into(),
            }],
        );
        assert_eq!(ok, Ok(()));
        // A quick reply's payload is optional, and may be given.
        let with_payload = [
            Button::Url {
                index: 0,
                parameter: "1042".into(),
            },
            Button::QuickReply {
                index: 1,
                payload: "STOP".into(),
            },
        ];
        assert_eq!(
            check(
                "order_update",
                &t,
                Some(&document()),
                &params(&["Ana", "#1042"]),
                &with_payload
            ),
            Ok(())
        );
    }

    #[test]
    fn what_a_template_needs_and_is_not_given_is_named() {
        let t = order_update();
        let err = check("order_update", &t, None, &params(&["Ana"]), &[]).unwrap_err();
        assert!(
            err.contains("template order_update needs a document header"),
            "{err}"
        );
        assert!(err.contains("body takes 2 parameters (1 given)"), "{err}");
        assert!(
            err.contains("button 0 (\"Track order\") needs its URL's suffix"),
            "{err}"
        );
        let image = Header::Image(Media {
            link: Some("https://x.example/a.png".into()),
            ..Media::default()
        });
        let err = check(
            "order_update",
            &t,
            Some(&image),
            &params(&["Ana", "#1"]),
            &[Button::Url {
                index: 0,
                parameter: "1".into(),
            }],
        )
        .unwrap_err();
        assert_eq!(
            err,
            "template order_update's header is a document, not an image"
        );
    }

    #[test]
    fn what_is_given_and_the_template_does_not_have_is_named() {
        let t = order_update();
        let base = [Button::Url {
            index: 0,
            parameter: "1042".into(),
        }];
        let extra = |b: Button| {
            let mut v = base.to_vec();
            v.push(b);
            check(
                "order_update",
                &t,
                Some(&document()),
                &params(&["Ana", "#1042"]),
                &v,
            )
            .unwrap_err()
        };
        assert!(
            extra(Button::Url {
                index: 2,
                parameter: "x".into()
            })
            .contains("button 2 (\"Help\") has a fixed address")
        );
        assert!(
            extra(Button::Url {
                index: 5,
                parameter: "x".into()
            })
            .contains("has no button 5 (it has 3)")
        );
        assert!(
            extra(Button::CopyCode {
                index: 1,
                coupon_code: "X".into()
            })
            .contains("button 1 (\"Stop\") is a quick reply, not a copy-code button")
        );
        let plain = TemplateText {
            body: Some("Hola".into()),
            ..TemplateText::default()
        };
        let text = Header::Text {
            parameters: params(&["x"]),
        };
        assert_eq!(
            check("hello", &plain, Some(&text), &[], &[]).unwrap_err(),
            "template hello has no header"
        );
        assert_eq!(
            check("hello", &plain, None, &params(&["x"]), &[]).unwrap_err(),
            "template hello's body takes 0 parameters (1 given)"
        );
        let titled = TemplateText {
            header_format: Some("TEXT".into()),
            header: Some("Pedido {{1}}".into()),
            ..TemplateText::default()
        };
        assert!(
            check("t", &titled, None, &[], &[])
                .unwrap_err()
                .contains("header takes 1 parameter (0 given)")
        );
        assert_eq!(
            check(
                "t",
                &titled,
                Some(&Header::Text {
                    parameters: params(&["#1"])
                }),
                &[],
                &[]
            ),
            Ok(())
        );
        let fixed = TemplateText {
            header_format: Some("TEXT".into()),
            header: Some("Hola".into()),
            ..TemplateText::default()
        };
        assert!(
            check("t", &fixed, Some(&text), &[], &[])
                .unwrap_err()
                .contains("header takes no parameters")
        );
        let named = TemplateText {
            named: true,
            ..TemplateText::default()
        };
        assert!(
            check("t", &named, None, &[], &[])
                .unwrap_err()
                .contains("named parameters")
        );
    }

    #[test]
    fn a_sent_template_reads_as_a_line_and_as_the_customer_read_it() {
        let buttons = [
            Button::Url {
                index: 0,
                parameter: "1042".into(),
            },
            Button::QuickReply {
                index: 1,
                payload: "STOP".into(),
            },
        ];
        let object = json!({"name": "order_update", "language": {"code": "es"},
            "components": components(Some(&document()), &params(&["Ana", "#1042"]), &buttons)});
        assert_eq!(
            outline(&object),
            "[template: order_update] [document] [2 parameters] [button 0] [quick reply 1]"
        );
        assert_eq!(
            describe(&object),
            "[template: order_update] [document invoice.pdf] Ana | #1042 [button 0: 1042] [quick reply 1: STOP]"
        );
        assert_eq!(
            render_sent(&order_update(), &object).as_deref(),
            Some(
                "[document invoice.pdf]\n\nHola Ana, tu pedido #1042 ya salió.\n\nTienda Sol\n\n\
                  [button: Track order → https://shop.example/track/1042] [button: Stop] \
                  [button: Help → https://shop.example/help]"
            )
        );
        // Only a body: the line the model read before (`[template: name] params`).
        let plain = json!({"name": "order_shipped", "language": {"code": "es"},
            "components": components(None, &params(&["#1042", "martes"]), &[])});
        assert_eq!(describe(&plain), "[template: order_shipped] #1042 | martes");
        let titled = TemplateText {
            header_format: Some("TEXT".into()),
            header: Some("Pedido {{1}}".into()),
            body: Some("Listo.".into()),
            ..TemplateText::default()
        };
        let object = json!({"name": "t", "components": components(Some(&Header::Text { parameters: params(&["#7"]) }), &[], &[])});
        assert_eq!(describe(&object), "[template: t] [header: #7]");
        assert_eq!(
            render_sent(&titled, &object).as_deref(),
            Some("Pedido #7\n\nListo.")
        );
    }

    #[test]
    fn placeholders_are_counted_once_each() {
        assert_eq!(placeholders("{{1}} y {{ 2 }} y {{1}}"), 2);
        assert_eq!(placeholders("https://x.example/{{1}}"), 1);
        assert_eq!(placeholders("{{order_id}} {{1"), 1);
        assert_eq!(placeholders("nada"), 0);
    }
}
