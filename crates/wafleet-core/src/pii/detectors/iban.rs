//! IBANs: two letters, two check digits and the account (BBAN), written solid or in groups
//! separated by single spaces, either case. Accepted only for a country whose IBAN length we
//! know, at exactly that length, when the ISO 13616 mod-97 check passes.

use crate::pii::checksums::{iban_length, iban_valid};
use crate::pii::text::word_start;
use crate::pii::{Ctx, Found, PiiType};

/// Adds every valid IBAN in the message.
pub fn find(ctx: &Ctx<'_>, found: &mut Found) {
    let b = ctx.b;
    if b.len() < 15 {
        return;
    }
    // Visit each run of digits once; an IBAN is two letters glued before one.
    let mut p = 0;
    while let Some(rel) = b[p..].iter().position(u8::is_ascii_digit) {
        let d = p + rel;
        let mut e = d;
        while e < b.len() && b[e].is_ascii_digit() {
            e += 1;
        }
        p = e;
        if d < 2 || e - d < 2 {
            continue;
        }
        let i = d - 2;
        if b[i].is_ascii_alphabetic()
            && b[i + 1].is_ascii_alphabetic()
            && word_start(ctx.text, i)
            && let Some(end) = at(b, i)
            && found.push(i, end, PiiType::Iban)
        {
            p = p.max(end);
        }
    }
}

/// The end of a valid IBAN starting at `s`, if there is one.
fn at(b: &[u8], s: usize) -> Option<usize> {
    let want = Some(iban_length([b[s], b[s + 1]])?);
    let mut buf = [0u8; 34];
    let mut n = 0;
    let mut i = s;
    let mut best = None;
    // Candidate ends are the ends of groups: a group is a run of letters/digits, groups are
    // separated by one space (or one dash, as some banks print them).
    loop {
        while i < b.len() && b[i].is_ascii_alphanumeric() {
            if n == buf.len() {
                return best;
            }
            buf[n] = b[i];
            n += 1;
            i += 1;
        }
        let boundary = i >= b.len() || !b[i].is_ascii_alphanumeric();
        if boundary && n >= 15 {
            let ok_len = want.is_none_or(|w| w == n);
            if ok_len && iban_valid(&buf[..n]) {
                best = Some(i);
                if want.is_some() {
                    return best;
                }
            }
        }
        if want.is_some_and(|w| n >= w) {
            return best;
        }
        if i + 1 < b.len() && matches!(b[i], b' ' | b'-') && b[i + 1].is_ascii_alphanumeric() {
            i += 1;
        } else {
            return best;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ibans(t: &str) -> Vec<&str> {
        crate::pii::detectors::detect_texts(t, find)
    }

    #[test]
    fn finds_spaced_solid_and_lowercase_ibans() {
        for (t, want) in [
            (
                "IBAN: ES91 2100 0418 4502 0005 1332 gracias",
                "ES91 2100 0418 4502 0005 1332",
            ),
            (
                "transfiere a ES9121000418450200051332.",
                "ES9121000418450200051332",
            ),
            (
                "pt50 0002 0123 1234 5678 9015 4 ok",
                "pt50 0002 0123 1234 5678 9015 4",
            ),
            ("DE89 3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 00"),
            (
                "conta BR18 0036 0305 0000 1000 9795 493C 1",
                "BR18 0036 0305 0000 1000 9795 493C 1",
            ),
        ] {
            assert_eq!(ibans(t), vec![want], "{t}");
        }
    }

    #[test]
    fn rejects_bad_check_digits_and_lookalikes() {
        for t in [
            "ES91 2100 0418 4502 0005 1333",
            "SKU AB12 3456 7890 1234",
            "ES12",
            "ref XX00 0000 0000 0000 0000",
            "invoice FE53953 has the wrong amount",
        ] {
            assert!(ibans(t).is_empty(), "{t}");
        }
    }
}
