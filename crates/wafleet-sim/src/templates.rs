//! A business account's approved templates, as Meta lists them:
//! `GET /{version}/{waba_id}/message_templates?name=…` answers `{"data": [{name, language,
//! status, category, components: [{type: HEADER|BODY|FOOTER, format?, text}, {type: BUTTONS,
//! buttons: [{type, text, url?}]}]}], "paging": …}`. A template send is checked against the
//! template it names ([`check_send`]), as Meta refuses one whose parameters do not match.
//! `name` filters by part of the name, as Meta's does. Every account has the same catalogue,
//! [`TEMPLATES`]; the bearer token must be one the simulator knows (any non-empty one when
//! [`crate::SimConfig::tokens`] is empty).

use std::collections::HashMap;
use wafleet_core::format::template::{placeholder_names, placeholders};

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::SimState;

/// A template's header: text (`{{1}}` at most once), or media of a format (`IMAGE`,
/// `DOCUMENT`, `VIDEO`).
#[derive(Debug, Clone, Copy)]
pub enum Header {
    Text(&'static str),
    Media(&'static str),
}

/// A template's button: Meta's `type` (`QUICK_REPLY`, `URL`, `COPY_CODE`), its text, and a URL
/// button's address (`{{1}}` at its end when a send gives the rest).
pub type Button = (&'static str, &'static str, Option<&'static str>);

/// An approved template of the simulated accounts.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    pub name: &'static str,
    pub language: &'static str,
    pub header: Option<Header>,
    pub body: &'static str,
    pub footer: Option<&'static str>,
    pub buttons: &'static [Button],
    /// `parameter_format: NAMED`: its placeholders are names (`{{order_id}}`), and a send names
    /// each parameter it gives (`parameter_name`).
    pub named: bool,
}

const YES_NO: &[Button] = &[("QUICK_REPLY", "Sí", None), ("QUICK_REPLY", "No", None)];

/// Every template of every account.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "order_shipped",
        language: "es",
        header: Some(Header::Text("Pedido en camino")),
        body: "¡Hola! Tu pedido {{1}} ya va en camino. ¿Quieres que te avise cuando llegue?",
        footer: Some("Tienda Sol"),
        buttons: YES_NO,
        named: false,
    },
    Template {
        name: "order_shipped",
        language: "en_US",
        header: Some(Header::Text("Order on its way")),
        body: "Hi! Your order {{1}} is on its way. Shall we tell you when it arrives?",
        footer: None,
        buttons: YES_NO,
        named: false,
    },
    Template {
        name: "order_delayed",
        language: "es",
        header: None,
        body: "Tu pedido {{1}} se retrasa: llegará el {{2}}. Disculpa las molestias.",
        footer: None,
        buttons: YES_NO,
        named: false,
    },
    // An order confirmation with the invoice as a PDF and a tracking link.
    Template {
        name: "order_invoice",
        language: "es",
        header: Some(Header::Media("DOCUMENT")),
        body: "Hola {{1}}, adjuntamos la factura de tu pedido {{2}}.",
        footer: Some("Tienda Sol"),
        buttons: &[
            (
                "URL",
                "Seguir pedido",
                Some("https://shop.example/track/{{1}}"),
            ),
            ("QUICK_REPLY", "Hablar con alguien", None),
        ],
        named: false,
    },
    // A text header with a variable, a fixed link and a coupon.
    Template {
        name: "order_ready",
        language: "es",
        header: Some(Header::Text("Pedido {{1}} listo")),
        body: "Puedes recogerlo hoy en {{1}}.",
        footer: None,
        buttons: &[
            ("URL", "Ver tiendas", Some("https://shop.example/stores")),
            ("COPY_CODE", "Copiar código", None),
        ],
        named: false,
    },
    // Named parameters (WhatsApp Manager's default since 2024), in the header and the body.
    Template {
        name: "order_pickup",
        language: "es",
        header: Some(Header::Text("Pedido {{order_id}} listo")),
        body: "Hola {{customer_name}}, recoge tu pedido {{order_id}} en {{store}}.",
        footer: Some("Tienda Sol"),
        buttons: YES_NO,
        named: true,
    },
    Template {
        name: "new_collection",
        language: "es",
        header: Some(Header::Media("IMAGE")),
        body: "Llegó la colección de verano.",
        footer: None,
        buttons: YES_NO,
        named: false,
    },
];

fn template(t: &Template, n: usize, status: &str) -> Value {
    let mut components = Vec::new();
    match t.header {
        Some(Header::Text(h)) => {
            components.push(json!({"type": "HEADER", "format": "TEXT", "text": h}))
        }
        Some(Header::Media(format)) => components.push(json!({"type": "HEADER", "format": format,
            "example": {"header_handle": ["4::aW1hZ2UvanBlZw==:ARsim"]}})),
        None => {}
    }
    components.push(json!({"type": "BODY", "text": t.body}));
    if let Some(f) = t.footer {
        components.push(json!({"type": "FOOTER", "text": f}));
    }
    let buttons: Vec<Value> = t
        .buttons
        .iter()
        .map(|(kind, text, url)| match url {
            Some(url) => json!({"type": kind, "text": text, "url": url}),
            None => json!({"type": kind, "text": text}),
        })
        .collect();
    if !buttons.is_empty() {
        components.push(json!({"type": "BUTTONS", "buttons": buttons}));
    }
    json!({"name": t.name, "language": t.language, "status": status, "category": "UTILITY",
           "parameter_format": if t.named { "NAMED" } else { "POSITIONAL" },
           "components": components, "id": format!("{}", 900_000 + n)})
}

/// Whether `params`, a header's or body's, fill `text`'s placeholders: as many as it holds, or,
/// for a named template, each named once (`parameter_name`) and no other.
fn fills(text: &str, params: &[Value], named: bool) -> bool {
    if !named {
        return params.len() == placeholders(text);
    }
    let mut given: Vec<&str> = params
        .iter()
        .filter_map(|p| p["parameter_name"].as_str())
        .collect();
    let mut wanted = placeholder_names(text);
    given.sort_unstable();
    wanted.sort_unstable();
    given.len() == params.len() && given == wanted
}

/// The listed template a send's `template` object names (by name and language, in any case).
fn listed(object: &Value) -> Option<&'static Template> {
    let name = object["name"].as_str().unwrap_or_default();
    let language = object["language"]["code"].as_str().unwrap_or_default();
    TEMPLATES
        .iter()
        .find(|t| t.name == name && t.language.eq_ignore_ascii_case(language))
}

/// Why a template send does not fit its template: `(code, message)` as Meta answers, 132000 for
/// a parameter missing or extra, 132012 for one of another format than the template's.
pub(crate) type Misfit = (i64, &'static str);

const COUNT: Misfit = (
    132000,
    "(#132000) Number of parameters does not match the expected number of params",
);
const FORMAT: Misfit = (
    132012,
    "(#132012) Parameter format does not match format in the created template",
);

/// Whether a send's `template` object fits the template it names, as Meta checks it: the
/// header's media (of the template's format, with a `link` or `id`) or text parameters, as many
/// body parameters as the body's placeholders, a parameter for each URL button ending in
/// `{{1}}` and each copy-code button, none for a fixed URL; a quick reply's payload may be left
/// out. A template the simulator does not list is taken as it is (tests send made-up names).
pub(crate) fn check_send(object: &Value) -> Result<(), Misfit> {
    let Some(t) = listed(object) else {
        return Ok(());
    };
    let components: Vec<&Value> = object["components"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let of = |kind: &str| -> Vec<&Value> {
        components
            .iter()
            .filter(|c| {
                c["type"]
                    .as_str()
                    .is_some_and(|k| k.eq_ignore_ascii_case(kind))
            })
            .copied()
            .collect()
    };
    let params = |c: &Value| c["parameters"].as_array().cloned().unwrap_or_default();
    let header: Vec<Value> = of("header").iter().flat_map(|c| params(c)).collect();
    match t.header {
        None if !header.is_empty() => return Err(COUNT),
        None => {}
        Some(Header::Text(text)) => {
            if !fills(text, &header, t.named) {
                return Err(COUNT);
            }
            if header
                .iter()
                .any(|p| p["type"] != "text" || !p["text"].is_string())
            {
                return Err(FORMAT);
            }
        }
        Some(Header::Media(format)) => {
            let kind = format.to_ascii_lowercase();
            let [p] = header.as_slice() else {
                return Err(COUNT);
            };
            let media = &p[kind.as_str()];
            if p["type"] != kind.as_str() || !(media["link"].is_string() || media["id"].is_string())
            {
                return Err(FORMAT);
            }
        }
    }
    let body: Vec<Value> = of("body").iter().flat_map(|c| params(c)).collect();
    if !fills(t.body, &body, t.named) {
        return Err(COUNT);
    }
    let buttons = of("button");
    let mut filled = vec![false; t.buttons.len()];
    for b in buttons {
        let index = match &b["index"] {
            Value::String(s) => s.parse::<usize>().ok(),
            Value::Number(n) => n.as_u64().map(|n| n as usize),
            _ => None,
        };
        let Some((kind, _, url)) = index.and_then(|i| t.buttons.get(i)) else {
            return Err(COUNT);
        };
        let index = index.unwrap_or_default();
        if filled[index] {
            return Err(COUNT);
        }
        filled[index] = true;
        let sub_type = b["sub_type"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_uppercase();
        if sub_type != *kind {
            return Err(FORMAT);
        }
        let p = params(b);
        let wanted = match *kind {
            "URL" => url.map(placeholders).unwrap_or(0),
            _ => 1,
        };
        if p.len() != wanted {
            return Err(COUNT);
        }
        let field = match *kind {
            "URL" => "text",
            "QUICK_REPLY" => "payload",
            _ => "coupon_code",
        };
        if p.iter().any(|p| !p[field].is_string()) {
            return Err(FORMAT);
        }
    }
    let needs = |(kind, _, url): &Button| match *kind {
        "URL" => url.is_some_and(|u| placeholders(u) > 0),
        "COPY_CODE" => true,
        _ => false,
    };
    if t.buttons
        .iter()
        .zip(&filled)
        .any(|(b, given)| needs(b) && !given)
    {
        return Err(COUNT);
    }
    Ok(())
}

/// Whether template `object` names one Meta would send now: a paused one is refused with
/// 132015, a disabled one with 132016, and one of another status than `APPROVED` (rejected,
/// pending…) as a template that does not exist, 132001 (404). Not in our reference, which gives
/// the 132000–132016 range as "template problems (param count, missing template (404), paused,
/// disabled…)"; the codes are Meta's public error-code table's.
pub(crate) fn refused_for_status(sim: &SimState, object: &Value) -> Option<(u16, i64, String)> {
    let t = listed(object)?;
    match sim.template_status(t.name, t.language).as_str() {
        "APPROVED" => None,
        "PAUSED" => Some((400, 132015, "(#132015) Template is Paused".into())),
        "DISABLED" => Some((400, 132016, "(#132016) Template is Disabled".into())),
        other => Some((
            404,
            132001,
            format!("(#132001) Template name does not exist in the translation ({other})"),
        )),
    }
}

/// `GET /{version}/{waba_id}/message_templates`.
pub(crate) async fn list(
    State(sim): State<SimState>,
    Path((_version, _waba_id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = crate::unknown_token(&sim, &headers, "AsimTpl") {
        return refusal;
    }
    let wanted = q.get("name").map(String::as_str).unwrap_or("");
    let data: Vec<Value> = TEMPLATES
        .iter()
        .enumerate()
        .filter(|(_, t)| t.name.contains(wanted))
        .map(|(n, t)| template(t, n, &sim.template_status(t.name, t.language)))
        .collect();
    axum::Json(json!({"data": data, "paging": {"cursors": {"before": "A", "after": "B"}}}))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoice(components: Value) -> Value {
        json!({"name": "order_invoice", "language": {"code": "es"}, "components": components})
    }

    fn document() -> Value {
        json!({"type": "header", "parameters": [{"type": "document",
               "document": {"link": "https://shop.example/f.pdf", "filename": "f.pdf"}}]})
    }

    fn body() -> Value {
        json!({"type": "body", "parameters": [{"type": "text", "text": "Ana"},
                                              {"type": "text", "text": "#1042"}]})
    }

    fn url(index: Value) -> Value {
        json!({"type": "button", "sub_type": "url", "index": index,
               "parameters": [{"type": "text", "text": "1042"}]})
    }

    #[test]
    fn a_send_that_fits_its_template_passes() {
        assert_eq!(
            check_send(&invoice(json!([document(), body(), url(json!("0"))]))),
            Ok(())
        );
        // The index as a number, and a quick reply's payload, optional, given.
        let payload = json!({"type": "button", "sub_type": "quick_reply", "index": 1,
                             "parameters": [{"type": "payload", "payload": "TALK"}]});
        assert_eq!(
            check_send(&invoice(json!([
                document(),
                body(),
                url(json!(0)),
                payload
            ]))),
            Ok(())
        );
        // A template the simulator does not list is taken as it is.
        assert_eq!(
            check_send(&json!({"name": "made_up", "language": {"code": "es"}})),
            Ok(())
        );
    }

    #[test]
    fn a_parameter_missing_or_extra_is_132000_and_of_another_format_132012() {
        let code = |components: Value| check_send(&invoice(components)).map_err(|(c, _)| c);
        assert_eq!(
            code(json!([body(), url(json!("0"))])),
            Err(132000),
            "no document"
        );
        assert_eq!(
            code(json!([document(), body()])),
            Err(132000),
            "no URL suffix"
        );
        let one_param = json!({"type": "body", "parameters": [{"type": "text", "text": "Ana"}]});
        assert_eq!(
            code(json!([document(), one_param, url(json!("0"))])),
            Err(132000)
        );
        assert_eq!(
            code(json!([
                document(),
                body(),
                url(json!("0")),
                url(json!("5"))
            ])),
            Err(132000)
        );
        let image = json!({"type": "header", "parameters": [{"type": "image",
                           "image": {"link": "https://shop.example/a.png"}}]});
        assert_eq!(code(json!([image, body(), url(json!("0"))])), Err(132012));
        let as_quick_reply = json!({"type": "button", "sub_type": "quick_reply", "index": "0",
                                    "parameters": [{"type": "payload", "payload": "x"}]});
        assert_eq!(
            code(json!([document(), body(), as_quick_reply])),
            Err(132012)
        );
        // A fixed URL takes no parameter; a copy-code button needs its code.
        let ready = |components: Value| {
            check_send(&json!({"name": "order_ready", "language": {"code": "es"},
                               "components": components}))
            .map_err(|(c, _)| c)
        };
        let header = json!({"type": "header", "parameters": [{"type": "text", "text": "#1"}]});
        let body = json!({"type": "body", "parameters": [{"type": "text", "text": "Calle 10"}]});
        let code_button = json!({"type": "button", "sub_type": "copy_code", "index": "1",
                                 "parameters": [{"type": "coupon_code", "coupon_code": "SOL25"}]});
        assert_eq!(ready(json!([header, body, code_button])), Ok(()));
        assert_eq!(ready(json!([header, body])), Err(132000));
        assert_eq!(
            ready(json!([header, body, code_button, url(json!("0"))])),
            Err(132000)
        );
        // The old templates' bodies count too.
        let shipped = json!({"name": "order_shipped", "language": {"code": "es"}});
        assert_eq!(check_send(&shipped).map_err(|(c, _)| c), Err(132000));
    }

    #[test]
    fn a_named_template_takes_each_of_its_names_once_and_no_other() {
        let pickup = |header: Value, body: Value| {
            check_send(&json!({"name": "order_pickup", "language": {"code": "es"},
                "components": [{"type": "header", "parameters": header},
                               {"type": "body", "parameters": body}]}))
            .map_err(|(c, _)| c)
        };
        let named =
            |name: &str, text: &str| json!({"type": "text", "parameter_name": name, "text": text});
        let header = json!([named("order_id", "#1042")]);
        let body = json!([
            named("store", "Calle 10"),
            named("customer_name", "Ana"),
            named("order_id", "#1042")
        ]);
        assert_eq!(pickup(header.clone(), body.clone()), Ok(()));
        let missing = json!([named("customer_name", "Ana"), named("order_id", "#1042")]);
        assert_eq!(pickup(header.clone(), missing), Err(132000));
        let other = json!([
            named("store", "Calle 10"),
            named("customer", "Ana"),
            named("order_id", "#1042")
        ]);
        assert_eq!(pickup(header.clone(), other), Err(132000));
        let positional = json!([{"type": "text", "text": "Calle 10"}, {"type": "text", "text": "Ana"},
                                {"type": "text", "text": "#1042"}]);
        assert_eq!(pickup(header, positional), Err(132000));
        assert_eq!(pickup(json!([]), body), Err(132000));
    }
}
