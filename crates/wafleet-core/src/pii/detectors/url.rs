//! URLs that carry credentials: `scheme://user:password@host…`, or a query or fragment parameter
//! whose name says it is a secret (token, key, password, secret, signature, auth, session).
//! The whole URL is the finding: a half-redacted credential URL is still a credential.
//!
//! Plain product links ("https://tienda.com/p/crema-123?utm_source=wa") are left alone.

use crate::pii::{Found, PiiType};

fn url_byte(c: u8) -> bool {
    !(c.is_ascii_whitespace() || matches!(c, b'"' | b'<' | b'>' | b'`' | b'{' | b'}' | b'|'))
        && c != 0
}

/// Adds every credential-carrying URL in `text`.
pub fn find(text: &str, found: &mut Found) {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(rel) = memchr::memmem::find(&b[from..], b"://") {
        let sep = from + rel;
        from = sep + 3;
        // Scheme: letters, digits, + . - before "://", starting with a letter.
        let mut s = sep;
        while s > 0 && (b[s - 1].is_ascii_alphanumeric() || matches!(b[s - 1], b'+' | b'.' | b'-'))
        {
            s -= 1;
        }
        while s < sep && !b[s].is_ascii_alphabetic() {
            s += 1;
        }
        if s == sep {
            continue;
        }
        let mut e = sep + 3;
        while e < b.len() && url_byte(b[e]) {
            e += 1;
        }
        // Sentence punctuation after a URL is not part of it.
        while e > sep + 3
            && matches!(
                b[e - 1],
                b'.' | b',' | b';' | b':' | b'!' | b'?' | b')' | b'\''
            )
        {
            e -= 1;
        }
        while e > sep + 3 && !text.is_char_boundary(e) {
            e -= 1;
        }
        from = from.max(e);
        if has_credentials(&b[sep + 3..e]) {
            found.push(s, e, PiiType::UrlCredentials);
        }
    }
}

/// Whether the part after "://" carries a password or a secret parameter.
pub fn has_credentials(rest: &[u8]) -> bool {
    let auth_end = rest
        .iter()
        .position(|&c| matches!(c, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    if let Some(at) = rest[..auth_end].iter().rposition(|&c| c == b'@') {
        let userinfo = &rest[..at];
        if let Some(colon) = userinfo.iter().position(|&c| c == b':')
            && colon > 0
            && colon + 1 < userinfo.len()
        {
            return true;
        }
    }
    let q = match rest.iter().position(|&c| c == b'?' || c == b'#') {
        Some(q) => q,
        None => return false,
    };
    rest[q + 1..]
        .split(|&c| matches!(c, b'&' | b';' | b'?' | b'#'))
        .any(|param| {
            let eq = match param.iter().position(|&c| c == b'=') {
                Some(eq) => eq,
                None => return false,
            };
            eq + 1 < param.len() && secret_name(&param[..eq])
        })
}

fn secret_name(name: &[u8]) -> bool {
    let mut buf = [0u8; 24];
    if name.len() > buf.len() {
        return false;
    }
    let n = crate::pii::text::lower(name, &mut buf);
    const EXACT: &[&[u8]] = &[
        b"key",
        b"pwd",
        b"pass",
        b"pw",
        b"sig",
        b"signature",
        b"auth",
        b"session",
        b"sessionid",
        b"sid",
        b"jwt",
        b"bearer",
        b"otp",
    ];
    const PART: &[&[u8]] = &[
        b"token",
        b"secret",
        b"password",
        b"passwd",
        b"apikey",
        b"api_key",
        b"api-key",
        b"signature",
        b"access_key",
        b"accesskey",
        b"private_key",
        b"credential",
    ];
    EXACT.contains(&n)
        || PART.iter().any(|p| n.windows(p.len()).any(|w| w == *p))
        || n.ends_with(b"_key")
        || n.ends_with(b"-key")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(t: &str) -> Vec<&str> {
        let mut f = Found::default();
        find(t, &mut f);
        f.spans.iter().map(|s| &t[s.start..s.end]).collect()
    }

    #[test]
    fn finds_userinfo_and_secret_parameters() {
        for (t, want) in [
            (
                "entra a https://admin:S3cr3t@panel.tienda.com/login.",
                "https://admin:S3cr3t@panel.tienda.com/login",
            ),
            (
                "ftp://juan:clave123@192.168.0.10/docs",
                "ftp://juan:clave123@192.168.0.10/docs",
            ),
            (
                "link: https://api.x.com/v1/orders?id=5&access_token=abc123XYZ",
                "https://api.x.com/v1/orders?id=5&access_token=abc123XYZ",
            ),
            (
                "(https://x.io/reset?password=hunter2)",
                "https://x.io/reset?password=hunter2",
            ),
            (
                "https://s3.aws.com/f.pdf?X-Amz-Signature=ab12&X-Amz-Credential=k",
                "https://s3.aws.com/f.pdf?X-Amz-Signature=ab12&X-Amz-Credential=k",
            ),
            ("http://x.co/#token=zzz", "http://x.co/#token=zzz"),
            (
                "https://maps.x.com/api?key=AIzaSyD",
                "https://maps.x.com/api?key=AIzaSyD",
            ),
        ] {
            assert_eq!(urls(t), vec![want], "{t}");
        }
    }

    #[test]
    fn leaves_plain_links_alone() {
        for t in [
            "https://tienda.com/p/crema-123",
            "https://tienda.com/p/crema-123?utm_source=whatsapp&ref=abc",
            "https://wa.me/573001234567",
            "mira https://x.com/search?q=keyboard&monkey=1",
            "https://x.com/?token=",
            "https://user@x.com/",
            "://",
            "a://",
        ] {
            assert!(urls(t).is_empty(), "{t}");
        }
    }
}
