//! Approved templates: the components a send carries, whether they are what the approved template
//! needs, and the template as the customer read it (for the model's history and the transcript).
//!
//! Meta keeps the wording (`GET /{waba_id}/message_templates`: components `HEADER` with a
//! `format` (`TEXT` with a `text` holding at most one `{{1}}`, or `IMAGE`, `DOCUMENT`, `VIDEO`…),
//! `BODY` and `FOOTER` with a `text` holding `{{1}}`, `{{2}}`…, and `BUTTONS` whose `URL` buttons
//! may end their `url` in `{{1}}`). A send carries only what varies: the header's media or text
//! parameter, the body's parameters in order, a URL button's suffix, a quick-reply button's
//! payload, a copy-code button's code ([`components`]). Meta refuses a send whose parameters do
//! not match the template (error 132000), so [`check`] compares them first, and one of a template
//! Meta paused, disabled or rejected ([`sendable`]). A template created with `parameter_format:
//! NAMED` (WhatsApp Manager's default since 2024) has named placeholders (`{{order_id}}`) in its
//! header and body, and a send names each parameter it gives ([`Params::Named`]); placeholders
//! past the parameters given are left as they are written.
//!
//! Not in our API reference; the component objects are Meta's public docs': "Template media"
//! (`developers.facebook.com/documentation/business-messaging/whatsapp/templates/template-media`:
//! a header parameter `{"type": "document", "document": {"link"|"id", "filename"}}`), "Coupon
//! code templates" (`…/templates/marketing-templates/coupon-templates`: `{"type": "button",
//! "sub_type": "copy_code", "index": 0, "parameters": [{"type": "coupon_code", "coupon_code"}]}`)
//! and "Send message templates" (`{"type": "button", "sub_type": "url" | "quick_reply", "index":
//! "0", "parameters": [{"type": "text", "text"} | {"type": "payload", "payload"}]}`).
//! Named parameters are not in our reference either: Meta's "Template fundamentals"
//! (`…/whatsapp/templates/overview`: `"parameter_format": "POSITIONAL" | "NAMED"` when a
//! template is created) and the sending examples of Meta's business-messaging docs ("For
//! templates created with `parameter_format` set to `NAMED`, include the `parameter_name` field
//! in each parameter": `{"type": "text", "parameter_name": "order_id", "text": "566701"}` in the
//! header's and the body's `parameters`; "URL button suffixes continue to use positional
//! parameters", so buttons are sent as before).

use std::collections::BTreeMap;

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
    /// `parameter_format: NAMED` (`{{order_id}}`): a send gives its header's and body's
    /// parameters by name.
    pub named: bool,
    /// Meta's review status in capitals (`APPROVED`, `PAUSED`, `DISABLED`, `REJECTED`…), `None`
    /// when Meta's list does not say.
    pub status: Option<String>,
}

/// The statuses under which Meta refuses a template's sends (only an `APPROVED` template is
/// sent; `FLAGGED` quality is a warning and still sends). A status Meta adds later is not
/// refused here: Meta refuses it, and the send fails with its code.
pub const STOPPED_STATUSES: &[&str] = &[
    "PAUSED",
    "DISABLED",
    "REJECTED",
    "PENDING",
    "IN_APPEAL",
    "PENDING_DELETION",
    "DELETED",
    "ARCHIVED",
    "LIMIT_EXCEEDED",
];

/// Whether Meta sends template `name` as its status `t.status` stands: `Err` naming the status
/// when Meta paused, disabled or rejected it (or it is not approved yet, or deleted).
pub fn sendable(name: &str, t: &TemplateText) -> Result<(), String> {
    match t.status.as_deref().map(str::to_ascii_uppercase) {
        Some(status) if STOPPED_STATUSES.contains(&status.as_str()) => Err(format!(
            "template {name} is {status} at Meta, which refuses its sends until it is approved \
             or reinstated (see WhatsApp Manager); send another template"
        )),
        _ => Ok(()),
    }
}

/// A header's or body's parameters as a send gives them: in order (`["Ana", "#1042"]` for
/// `{{1}}`, `{{2}}`), or by name (`{"customer_name": "Ana", "order_id": "#1042"}`) for a
/// template created with named parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, try_from = "Value")]
pub enum Params {
    Positional(Vec<String>),
    Named(BTreeMap<String, String>),
}

impl Default for Params {
    fn default() -> Self {
        Params::Positional(Vec::new())
    }
}

impl From<Vec<String>> for Params {
    fn from(v: Vec<String>) -> Self {
        Params::Positional(v)
    }
}

impl TryFrom<Value> for Params {
    type Error = String;

    fn try_from(v: Value) -> Result<Self, String> {
        const SHAPE: &str = "parameters are an array of texts, in order ([\"Ana\", \"#1042\"]), \
                             or an object of names and texts ({\"order_id\": \"#1042\"})";
        match v {
            Value::Array(items) => items
                .into_iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s),
                    _ => Err(SHAPE.to_string()),
                })
                .collect::<Result<_, _>>()
                .map(Params::Positional),
            Value::Object(map) => map
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    _ => Err(SHAPE.to_string()),
                })
                .collect::<Result<_, _>>()
                .map(Params::Named),
            _ => Err(SHAPE.to_string()),
        }
    }
}

impl Params {
    pub fn len(&self) -> usize {
        match self {
            Params::Positional(v) => v.len(),
            Params::Named(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every text given (and, for named ones, every name), for checks on the request's text.
    pub fn texts(&self) -> Vec<&str> {
        match self {
            Params::Positional(v) => v.iter().map(String::as_str).collect(),
            Params::Named(m) => m
                .iter()
                .flat_map(|(k, v)| [k.as_str(), v.as_str()])
                .collect(),
        }
    }

    /// Meta's `parameters` of a header or body: `{"type": "text", "text"}` each, with its
    /// `parameter_name` when named.
    fn json(&self) -> Vec<Value> {
        match self {
            Params::Positional(v) => v
                .iter()
                .map(|p| json!({"type": "text", "text": p}))
                .collect(),
            Params::Named(m) => m
                .iter()
                .map(|(k, p)| json!({"type": "text", "parameter_name": k, "text": p}))
                .collect(),
        }
    }

    /// Problems of the parameters on their own: an empty text or name.
    fn problems(&self, part: &str, problems: &mut Vec<String>) {
        match self {
            Params::Positional(v) => {
                if v.iter().any(|p| p.trim().is_empty()) {
                    problems.push(format!("a {part} parameter is empty"));
                }
            }
            Params::Named(m) => {
                for (k, v) in m {
                    if k.trim().is_empty() {
                        problems.push(format!("a {part} parameter has an empty name"));
                    } else if v.trim().is_empty() {
                        problems.push(format!("the {part} parameter {k} is empty"));
                    }
                }
            }
        }
    }
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
        parameters: Params,
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

/// What a send gives, checked on its own (before the template is known): no empty body
/// parameter or name, a media header has a link or an id (not both), a link is `https`, a file name only for
/// a document; buttons are at distinct positions 0–9 with non-empty values. Each problem is
/// named.
pub fn check_request(
    header: Option<&Header>,
    body_params: &Params,
    buttons: &[Button],
) -> Result<(), String> {
    let mut problems = Vec::new();
    body_params.problems("body", &mut problems);
    match header {
        Some(Header::Text { parameters }) => {
            if parameters.is_empty() {
                problems.push("a text header needs its parameters (or no header)".to_string());
            }
            parameters.problems("header", &mut problems);
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
    body_params: &Params,
    buttons: &[Button],
) -> Result<(), String> {
    let mut problems = Vec::new();
    let format = t.header_format.as_deref();
    match (format, header) {
        (None, Some(_)) => problems.push(format!("template {name} has no header")),
        (Some("TEXT"), given) => {
            let text = t.header.as_deref().unwrap_or_default();
            let none = Params::default();
            let given_params = match given {
                Some(Header::Text { parameters }) => Some(parameters),
                Some(other) => {
                    problems.push(format!(
                        "template {name}'s header is text, not {}",
                        with_article(header_kind(other))
                    ));
                    None
                }
                None => Some(&none),
            };
            if let Some(given) = given_params {
                fit(name, "header", text, t.named, given, &mut problems);
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
    let body = t.body.as_deref().unwrap_or_default();
    fit(name, "body", body, t.named, body_params, &mut problems);
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

/// Whether `given` fills the placeholders of `text`, the template's `part` (`header` or `body`):
/// as many as it holds, in order, or for a `named` template each of its names and no other.
fn fit(
    name: &str,
    part: &str,
    text: &str,
    named: bool,
    given: &Params,
    problems: &mut Vec<String>,
) {
    let example = if part == "header" {
        "header: {\"type\": \"text\", \"parameters\": "
    } else {
        "params: "
    };
    match (named, given) {
        (false, Params::Named(m)) if !m.is_empty() => problems.push(format!(
            "template {name}'s {part} takes its parameters in order ({{{{1}}}}, {{{{2}}}}…), not \
             by name: {example}[...]"
        )),
        (false, given) => {
            let (wanted, n) = (placeholders(text), given.len());
            if n == wanted {
            } else if part == "header" && wanted == 0 {
                problems.push(format!("template {name}'s header takes no parameters"))
            } else if part == "header" {
                problems.push(format!(
                    "template {name}'s header takes {wanted} parameter{} ({n} given): \
                     {example}[...]}}",
                    plural(wanted)
                ))
            } else {
                problems.push(format!(
                    "template {name}'s body takes {wanted} parameter{} ({n} given)",
                    plural(wanted)
                ))
            }
        }
        (true, Params::Positional(v)) if !v.is_empty() => {
            let names: Vec<String> = placeholder_names(text)
                .iter()
                .map(|n| format!("{{{{{n}}}}}"))
                .collect();
            problems.push(format!(
                "template {name}'s {part} takes named parameters ({}), not in order: \
                 {example}{{\"name\": \"value\", …}}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
        (true, given) => {
            let wanted = placeholder_names(text);
            let given: Vec<&str> = match given {
                Params::Named(m) => m.keys().map(String::as_str).collect(),
                Params::Positional(_) => Vec::new(),
            };
            for missing in wanted.iter().filter(|w| !given.contains(&w.as_str())) {
                problems.push(format!("template {name}'s {part} needs {{{{{missing}}}}}"));
            }
            for extra in given.iter().filter(|g| !wanted.iter().any(|w| w == *g)) {
                problems.push(format!("template {name}'s {part} has no {{{{{extra}}}}}"));
            }
        }
    }
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
    placeholder_names(text).len()
}

/// The distinct placeholders of `text` (`1`, `order_id`), in the order they first appear.
pub fn placeholder_names(text: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            break;
        };
        let inner = after[..close].trim();
        if !inner.is_empty() && !inner.contains('{') && !seen.iter().any(|s| s == inner) {
            seen.push(inner.to_string());
        }
        rest = &after[close + 2..];
    }
    seen
}

/// Meta's `components` of a send: a `header` (its media or text parameters), the `body`'s text
/// parameters, and one `button` component per button given. Empty when the send gives nothing.
pub fn components(header: Option<&Header>, body_params: &Params, buttons: &[Button]) -> Vec<Value> {
    let mut out = Vec::new();
    match header {
        Some(Header::Text { parameters }) => out.push(json!({
            "type": "header",
            "parameters": parameters.json(),
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
            "parameters": body_params.json(),
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
    header_text: Vec<Given>,
    /// (kind, file name) of a media header.
    header_media: Option<(String, Option<String>)>,
    body: Vec<Given>,
    /// (index, sub_type, value).
    buttons: Vec<(usize, String, String)>,
}

/// A header's or body's parameter as sent: its `parameter_name` when named, and its text.
type Given = (Option<String>, String);

/// The values of `given` in a line: `Ana | #1042`, or `customer_name: Ana | order_id: #1042`.
fn joined_given(given: &[Given]) -> String {
    given
        .iter()
        .map(|(name, text)| match name {
            Some(n) => format!("{n}: {text}"),
            None => text.clone(),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `text` with its placeholders filled from `given`: `{{n}}` by position, `{{name}}` by name.
fn fill_given(text: &str, given: &[Given]) -> String {
    fill_with(text, |key| match key.parse::<usize>() {
        Ok(n) => n
            .checked_sub(1)
            .and_then(|i| given.get(i))
            .map(|g| g.1.as_str()),
        Err(_) => given
            .iter()
            .find(|(name, _)| name.as_deref() == Some(key))
            .map(|g| g.1.as_str()),
    })
}

fn sent(template: &Value) -> Sent {
    let mut s = Sent::default();
    let text_of = |p: &Value| {
        (
            p["parameter_name"]
                .as_str()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty()),
            p["text"].as_str().unwrap_or_default().trim().to_string(),
        )
    };
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
        out.push_str(&format!(" [header: {}]", joined_given(&s.header_text)));
    }
    if !s.body.is_empty() {
        out.push(' ');
        out.push_str(&joined_given(&s.body));
    }
    for (i, sub_type, value) in &s.buttons {
        out.push_str(&format!(" [{} {i}: {value}]", button_label(sub_type)));
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
        out.push_str(&format!(" [{} {i}]", button_label(sub_type)));
    }
    out
}

/// How a sent button's parameter is named in a template's line: its Meta `sub_type` read.
fn button_label(sub_type: &str) -> &'static str {
    match sub_type {
        "quick_reply" => "quick reply",
        "copy_code" => "code",
        _ => "button",
    }
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
    let header = t.header.as_deref().map(|h| fill_given(h, &s.header_text));
    let body = t.body.as_deref().map(|b| fill_given(b, &s.body));
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
    fill_with(text, |key| {
        key.parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| params.get(i))
            .map(String::as_str)
    })
}

/// `text` with each placeholder (`{{key}}`, spaces inside the braces allowed) replaced by what
/// `lookup` answers for its key; one it answers nothing for stays as written.
fn fill_with<'a>(text: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let param = lookup(after[..close].trim());
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

    fn strings(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    fn params(p: &[&str]) -> Params {
        Params::Positional(strings(p))
    }

    fn named(p: &[(&str, &str)]) -> Params {
        Params::Named(
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
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
            render(&t, &strings(&["#1042", "martes"])).as_deref(),
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
            render(&t, &strings(&["uno"])).as_deref(),
            Some("uno y {{2}}; {{order_id}}; {{0}}; {{1")
        );
        // A parameter's own braces are not filled again.
        assert_eq!(
            render(&t, &strings(&["{{2}}", "dos"])).as_deref(),
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
            status: Some("APPROVED".into()),
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
            components(Some(&image), &Params::default(), &[]),
            [
                json!({"type": "header", "parameters": [{"type": "image", "image": {"id": "4490709327"}}]})
            ]
        );
        let text = Header::Text {
            parameters: params(&["#1042"]),
        };
        assert_eq!(
            components(Some(&text), &Params::default(), &[]),
            [json!({"type": "header", "parameters": [{"type": "text", "text": "#1042"}]})]
        );
        assert!(components(None, &Params::default(), &[]).is_empty());
    }

    #[test]
    fn a_request_s_own_mistakes_are_named() {
        let both = Header::Video(Media {
            link: Some("https://x.example/v.mp4".into()),
            id: Some("1".into()),
            filename: Some("v.mp4".into()),
        });
        let err = check_request(Some(&both), &Params::default(), &[]).unwrap_err();
        assert!(
            err.contains("has a link and an id") && err.contains("only a document has a filename"),
            "{err}"
        );
        let http = Header::Image(Media {
            link: Some("http://x.example/a.png".into()),
            ..Media::default()
        });
        assert!(
            check_request(Some(&http), &Params::default(), &[])
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
        let err = check_request(None, &Params::default(), &buttons).unwrap_err();
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
                &Params::default(),
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
            check("hello", &plain, Some(&text), &Params::default(), &[]).unwrap_err(),
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
            check("t", &titled, None, &Params::default(), &[])
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
                &Params::default(),
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
            check("t", &fixed, Some(&text), &Params::default(), &[])
                .unwrap_err()
                .contains("header takes no parameters")
        );
    }

    fn pickup() -> TemplateText {
        TemplateText {
            header_format: Some("TEXT".into()),
            header: Some("Pedido {{order_id}} listo".into()),
            body: Some(
                "Hola {{customer_name}}, recoge tu pedido {{ order_id }} en {{store}}.".into(),
            ),
            footer: Some("Tienda Sol".into()),
            named: true,
            status: Some("APPROVED".into()),
            ..TemplateText::default()
        }
    }

    #[test]
    fn a_named_template_takes_each_of_its_names_and_no_other() {
        let t = pickup();
        let header = Header::Text {
            parameters: named(&[("order_id", "#1042")]),
        };
        let body = named(&[
            ("customer_name", "Ana"),
            ("order_id", "#1042"),
            ("store", "Calle 10"),
        ]);
        assert_eq!(check("order_pickup", &t, Some(&header), &body, &[]), Ok(()));
        let err = check(
            "order_pickup",
            &t,
            None,
            &named(&[("customer", "Ana"), ("order_id", "#1042")]),
            &[],
        )
        .unwrap_err();
        for part in [
            "template order_pickup's header needs {{order_id}}",
            "template order_pickup's body needs {{customer_name}}",
            "template order_pickup's body needs {{store}}",
            "template order_pickup's body has no {{customer}}",
        ] {
            assert!(err.contains(part), "{part}: {err}");
        }
        // In order, to a named template, or by name, to a positional one: each refused.
        let err = check(
            "order_pickup",
            &t,
            Some(&header),
            &params(&["Ana", "#1042", "Calle 10"]),
            &[],
        )
        .unwrap_err();
        assert!(
            err.contains(
                "body takes named parameters ({{customer_name}}, {{order_id}}, {{store}})"
            ),
            "{err}"
        );
        let err = check(
            "order_delayed",
            &TemplateText {
                body: Some("Tu pedido {{1}} llega el {{2}}.".into()),
                ..TemplateText::default()
            },
            None,
            &named(&[("order_id", "#1")]),
            &[],
        )
        .unwrap_err();
        assert!(err.contains("takes its parameters in order"), "{err}");
    }

    #[test]
    fn named_parameters_go_out_with_their_names_and_read_back_in_place() {
        let header = Header::Text {
            parameters: named(&[("order_id", "#1042")]),
        };
        let body = named(&[("store", "Calle 10"), ("customer_name", "Ana")]);
        let got = components(Some(&header), &body, &[]);
        assert_eq!(
            Value::Array(got.clone()),
            json!([
                {"type": "header", "parameters":
                    [{"type": "text", "parameter_name": "order_id", "text": "#1042"}]},
                {"type": "body", "parameters": [
                    {"type": "text", "parameter_name": "customer_name", "text": "Ana"},
                    {"type": "text", "parameter_name": "store", "text": "Calle 10"}]},
            ])
        );
        let object = json!({"name": "order_pickup", "components": got});
        assert_eq!(
            describe(&object),
            "[template: order_pickup] [header: order_id: #1042] customer_name: Ana | store: Calle 10"
        );
        assert_eq!(
            outline(&object),
            "[template: order_pickup] [header] [2 parameters]"
        );
        assert_eq!(
            render_sent(&pickup(), &object).as_deref(),
            Some(
                "Pedido #1042 listo\n\nHola Ana, recoge tu pedido {{ order_id }} en Calle 10.\n\n\
                 Tienda Sol"
            )
        );
    }

    #[test]
    fn params_are_an_array_or_an_object_of_texts() {
        let p: Params = serde_json::from_value(json!(["Ana", "#1"])).unwrap();
        assert_eq!(p, params(&["Ana", "#1"]));
        let p: Params = serde_json::from_value(json!({"order_id": "#1"})).unwrap();
        assert_eq!(p, named(&[("order_id", "#1")]));
        for bad in [json!([1, 2]), json!({"order_id": 1}), json!("Ana")] {
            let err = serde_json::from_value::<Params>(bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("an array of texts"), "{err}");
        }
        let header: Header =
            serde_json::from_value(json!({"type": "text", "parameters": {"order_id": "#1"}}))
                .unwrap();
        assert_eq!(
            header,
            Header::Text {
                parameters: named(&[("order_id", "#1")])
            }
        );
        let mut problems = Vec::new();
        named(&[("", "x"), ("store", " ")]).problems("body", &mut problems);
        assert_eq!(
            problems,
            [
                "a body parameter has an empty name",
                "the body parameter store is empty"
            ]
        );
    }

    #[test]
    fn a_paused_disabled_or_rejected_template_is_not_sendable() {
        let mut t = pickup();
        assert_eq!(sendable("order_pickup", &t), Ok(()));
        for status in ["PAUSED", "DISABLED", "REJECTED", "paused"] {
            t.status = Some(status.into());
            let err = sendable("order_pickup", &t).unwrap_err();
            assert!(
                err.starts_with(&format!(
                    "template order_pickup is {} at Meta",
                    status.to_ascii_uppercase()
                )),
                "{err}"
            );
        }
        for status in [
            None,
            Some("APPROVED"),
            Some("FLAGGED"),
            Some("SOMETHING_NEW"),
        ] {
            t.status = status.map(str::to_string);
            assert_eq!(sendable("order_pickup", &t), Ok(()), "{status:?}");
        }
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
        let object = json!({"name": "t", "components": components(Some(&Header::Text { parameters: params(&["#7"]) }), &Params::default(), &[])});
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
