//! IP addresses. IPv6 is found here, from runs of hex digits and colons; IPv4 is recognised by
//! [`super::numeric`] among the other dotted numbers, with [`ipv4_octets_ok`] from here.
//!
//! IPv6 needs either eight groups or one `::`, so clock times ("10:30:45") and ratios never
//! match; an IPv4 needs four octets ≤ 255 and nothing dotted around them ("1.2.3.4.5" is a
//! version, not an address).

use crate::pii::text::is_alnum;
use crate::pii::{Ctx, Found, PiiType};

/// Whether four dotted groups of 1–3 digits are all ≤ 255.
pub fn ipv4_octets_ok(groups: &[&[u8]]) -> bool {
    groups.len() == 4
        && groups.iter().all(|g| {
            (1..=3).contains(&g.len())
                && g.iter().fold(0u32, |a, &c| a * 10 + u32::from(c - b'0')) <= 255
        })
}

fn hex(c: u8) -> bool {
    c.is_ascii_hexdigit()
}

/// Adds every IPv6 address in the message.
pub fn find_v6(ctx: &Ctx<'_>, found: &mut Found) {
    let b = ctx.b;
    let mut done = 0;
    for colon in memchr::memchr_iter(b':', b) {
        if colon < done {
            continue;
        }
        // The run of hex digits and colons around this colon.
        let mut i = colon;
        while i > 0 && (hex(b[i - 1]) || b[i - 1] == b':') {
            i -= 1;
        }
        let mut e = colon;
        while e < b.len() && (hex(b[e]) || b[e] == b':') {
            e += 1;
        }
        done = e;
        if i > 0 && is_alnum(b[i - 1]) {
            continue;
        }
        // A trailing single colon is punctuation ("IP fe80::1: no funciona").
        let mut end = e;
        if end > i + 1 && b[end - 1] == b':' && b[end - 2] != b':' {
            end -= 1;
        }
        let glued = e < b.len()
            && (is_alnum(b[e])
                || b[e] == b'.' && b.get(e + 1).is_some_and(u8::is_ascii_alphanumeric));
        if !glued && valid_v6(&b[i..end]) {
            found.push(i, end, PiiType::Ip);
        }
    }
}

/// Whether `s` (hex digits and colons only) is an IPv6 address.
pub fn valid_v6(s: &[u8]) -> bool {
    if s.len() < 3 || s.len() > 39 {
        return false;
    }
    let double = s.windows(2).filter(|w| w == b"::").count();
    if double > 1 || s.windows(3).any(|w| w == b":::") {
        return false;
    }
    let mut groups = 0;
    let mut long_group = false;
    for g in s.split(|&c| c == b':') {
        if g.is_empty() {
            continue;
        }
        if g.len() > 4 {
            return false;
        }
        long_group |= g.len() >= 3 || g.iter().any(u8::is_ascii_alphabetic);
        groups += 1;
    }
    if double == 0 {
        // Leading or trailing single colon is not an address.
        return groups == 8 && s[0] != b':' && s[s.len() - 1] != b':';
    }
    // "fe80::1", "2001:db8::8a2e:370:7334"; not "10::30".
    (2..=7).contains(&groups) && long_group
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(t: &str) -> Vec<&str> {
        let ctx = Ctx {
            text: t,
            b: t.as_bytes(),
            kws: &[],
        };
        let mut f = Found::default();
        find_v6(&ctx, &mut f);
        f.spans.iter().map(|s| &t[s.start..s.end]).collect()
    }

    #[test]
    fn finds_full_and_compressed_ipv6() {
        for (t, want) in [
            (
                "mi ip es 2001:0db8:85a3:0000:0000:8a2e:0370:7334 ok",
                "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            ),
            ("IP: fe80::1ff:fe23:4567:890a.", "fe80::1ff:fe23:4567:890a"),
            ("(2001:db8::8a2e:370:7334)", "2001:db8::8a2e:370:7334"),
            ("router fe80::1: caído", "fe80::1"),
        ] {
            assert_eq!(v6(t), vec![want], "{t}");
        }
    }

    #[test]
    fn rejects_times_and_ratios() {
        for t in [
            "a las 10:30:45",
            "10:30",
            "ratio 16:9",
            "12::30",
            "abc:def",
            "a:b:c:d:e:f:1:2:3",
        ] {
            assert!(v6(t).is_empty(), "{t}");
        }
    }

    #[test]
    fn ipv4_octets() {
        assert!(ipv4_octets_ok(&[b"192", b"168", b"0", b"1"]));
        assert!(!ipv4_octets_ok(&[b"256", b"1", b"1", b"1"]));
        assert!(!ipv4_octets_ok(&[b"1", b"1", b"1"]));
    }
}
