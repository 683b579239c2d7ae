//! E-mail addresses: found from each `@`, expanded left over the local part and right over a
//! dotted domain that ends in an alphabetic top-level domain of two letters or more.
//!
//! Rejects "@handle" mentions, "a@b" without a domain dot and "user@localhost".

use crate::pii::text::char_at;
use crate::pii::{Found, PiiType};

fn local_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-' | b'\'') || c >= 0x80
}

fn domain_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c >= 0x80
}

/// Adds every e-mail address in `text`.
pub fn find(text: &str, found: &mut Found) {
    let b = text.as_bytes();
    for at in memchr::memchr_iter(b'@', b) {
        if found.covering(at).is_some() {
            continue;
        }
        if let Some((s, e)) = at_email(text, at) {
            found.push(s, e, PiiType::Email);
        }
    }
}

/// The e-mail address around the `@` at byte `at`, if there is one.
pub fn at_email(text: &str, at: usize) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    // Local part.
    let mut s = at;
    while s > 0 && local_byte(b[s - 1]) && at - s < 64 {
        s -= 1;
    }
    // Non-ASCII bytes are only allowed as whole letters: back off to a char boundary that
    // starts a letter or ASCII.
    while s < at && (!text.is_char_boundary(s) || b[s] == b'.' || b[s] == b'\'') {
        s += 1;
    }
    while s < at && b[s] >= 0x80 && !char_at(text, s).is_some_and(char::is_alphanumeric) {
        s += 1;
        while s < at && !text.is_char_boundary(s) {
            s += 1;
        }
    }
    if s == at {
        return None;
    }
    // Domain: labels separated by single dots.
    let mut e = at + 1;
    let mut last_dot = None;
    let mut label_len = 0;
    while e < b.len() {
        let c = b[e];
        if domain_byte(c) {
            label_len += 1;
            e += 1;
        } else if c == b'.' && label_len > 0 && e + 1 < b.len() && domain_byte(b[e + 1]) {
            last_dot = Some(e);
            label_len = 0;
            e += 1;
        } else {
            break;
        }
    }
    while e > at + 1 && !text.is_char_boundary(e) {
        e -= 1;
    }
    // Trailing hyphens are punctuation, not the domain.
    while e > at + 1 && b[e - 1] == b'-' {
        e -= 1;
    }
    let dot = last_dot?;
    let tld = &b[dot + 1..e];
    if tld.len() < 2 || !tld.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    if b[at + 1] == b'-' || b[at + 1] == b'.' {
        return None;
    }
    Some((s, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emails(t: &str) -> Vec<&str> {
        let mut f = Found::default();
        find(t, &mut f);
        f.spans.iter().map(|s| &t[s.start..s.end]).collect()
    }

    #[test]
    fn finds_addresses_in_sentences() {
        for (t, want) in [
            (
                "mi correo es juan.perez@gmail.com, gracias",
                vec!["juan.perez@gmail.com"],
            ),
            (
                "Email: ANA+pedidos@Empresa.com.co.",
                vec!["ANA+pedidos@Empresa.com.co"],
            ),
            ("(maria_2@outlook.es)", vec!["maria_2@outlook.es"]),
            (
                "escribe a josé.núñez@correo.es",
                vec!["josé.núñez@correo.es"],
            ),
            ("a@b.co y c-d@e-f.com.br", vec!["a@b.co", "c-d@e-f.com.br"]),
        ] {
            assert_eq!(emails(t), want, "{t}");
        }
    }

    #[test]
    fn rejects_handles_and_domainless_at_signs() {
        for t in [
            "sígueme en @tienda_kaiu",
            "nos vemos @ 3pm",
            "user@localhost",
            "precio @ 2.5",
            "x@y.1",
            "@@@",
            "¿@",
        ] {
            assert!(emails(t).is_empty(), "{t}");
        }
    }
}
