//! An approved template's wording with a message's parameters filled in: what the customer
//! read, for the model's history.
//!
//! Meta keeps the wording (`GET /{waba_id}/message_templates`: components `HEADER` with
//! `format: TEXT`, `BODY`, `FOOTER`, each with a `text` holding `{{1}}`, `{{2}}`…); a send
//! carries only the body's parameters, in order. Named parameters (`{{order_id}}`) and numbers
//! past the parameters given are left as they are written.

/// The parts of a template that are text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateText {
    pub header: Option<String>,
    pub body: Option<String>,
    pub footer: Option<String>,
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
}
