//! Identity numbers that only context can tell apart from any other number: the Colombian
//! cédula (6–10 digits, often dotted: "C.C. 1.023.456.789") after "cédula", "CC", "documento",
//! "identificación"…, and a US SSN written without dashes after "SSN"/"social security".
//!
//! Checksummed identifiers (CPF, CNPJ, DNI, NIE, dashed SSN) need no context and are found by
//! [`super::numeric`]; this module only looks a few words past an identity word.

use crate::pii::checksums::ssn_valid;
use crate::pii::detectors::numeric::{Chunk, checksummed_id, is_price_context};
use crate::pii::keywords::{IdKw, Kw};
use crate::pii::text::Cursor;
use crate::pii::{Ctx, Found, PiiType};

/// Words allowed between "cédula" and the number ("cédula de ciudadanía número 1.023…").
const MAX_GAP_WORDS: usize = 4;

/// Adds the identity numbers that follow identity words.
pub fn find(ctx: &Ctx<'_>, found: &mut Found) {
    for (ki, k) in ctx.kws.iter().enumerate() {
        let Kw::Id(kind) = k.kind else { continue };
        if matches!(kind, IdKw::Checksummed | IdKw::Mexican | IdKw::Passport) {
            continue;
        }
        let mut c = Cursor::new(ctx.text, k.end);
        let mut words = 0;
        let start = loop {
            c.skip_spaces();
            while matches!(
                c.peek(),
                Some(b':' | b'#' | b'=' | b'-' | b'(' | b'.' | b',')
            ) {
                c.pos += 1;
                c.skip_spaces();
            }
            if c.peek().is_some_and(|d| d.is_ascii_digit()) {
                break Some(c.pos);
            }
            // Another context word on the way decides for itself ("documento del pedido 123").
            if ctx.kws[ki + 1..]
                .iter()
                .any(|n| n.start == c.pos && n.kind != Kw::Id(IdKw::Cedula))
            {
                break None;
            }
            if words >= MAX_GAP_WORDS || c.letters().is_none() {
                break None;
            }
            c.eat_ordinal();
            words += 1;
        };
        let Some(start) = start else { continue };
        if found.covering(start).is_some() {
            continue;
        }
        let limit = found.next_start(start, ctx.b.len());
        let chunk = Chunk::parse(ctx.b, start, limit, false);
        if is_price_context(ctx, &chunk) {
            continue;
        }
        // A checksummed identifier right after the word is still one.
        if let Some(id) = checksummed_id(ctx, &chunk, 0, true) {
            found.push(id.start, id.end, PiiType::NationalId);
            continue;
        }
        let id_groups = id_digit_groups(&chunk);
        let Some((last, ndig)) = id_groups else {
            continue;
        };
        let (s, _) = chunk.group(0);
        let (_, e) = chunk.group(last);
        match kind {
            IdKw::Cedula
                if (6..=10).contains(&ndig)
                // A letter glued after it makes it something else (a DNI with a bad letter, a
                // code); a cédula is digits only.
                && !chunk.glued_right_letter(last) =>
            {
                found.push(s, e, PiiType::NationalId);
            }
            IdKw::Ssn if ndig == 9 => {
                let mut d = [0u8; 9];
                let mut n = 0;
                for g in 0..=last {
                    let (gs, ge) = chunk.group(g);
                    for &x in &ctx.b[gs..ge] {
                        d[n] = x;
                        n += 1;
                    }
                }
                if ssn_valid(&d) {
                    found.push(s, e, PiiType::NationalId);
                }
            }
            _ => {}
        }
    }
}

/// The groups of a chunk that form one identity number (joined by dots, spaces or dashes, up to
/// 10 digits): index of the last group and the digit count.
fn id_digit_groups(chunk: &Chunk) -> Option<(usize, usize)> {
    let mut n = 0;
    let mut last = None;
    for g in 0..chunk.len() {
        if g > 0 && !matches!(chunk.sep(g), b"." | b" " | b"-" | b",") {
            break;
        }
        let (s, e) = chunk.group(g);
        if n + (e - s) > 10 {
            // A longer number is not a cédula or an SSN ("4111 1111 1111 1111"); but a cédula
            // followed by another whole number after a space ("CC 1023456789 3001234567")
            // still ends at its own group.
            if g > 0 && chunk.sep(g) == b" " && e - s >= 6 {
                break;
            }
            return None;
        }
        n += e - s;
        last = Some(g);
    }
    last.map(|l| (l, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(t: &str) -> Vec<&str> {
        crate::pii::detectors::detect_texts(t, find)
    }

    #[test]
    fn finds_cedulas_and_undashed_ssns_after_their_words() {
        for (t, want) in [
            ("mi cédula es 1023456789", "1023456789"),
            ("C.C. 79.456.123 de Bogotá", "79.456.123"),
            ("CC: 1.023.456.789", "1.023.456.789"),
            ("número de identificación 52 345 678", "52 345 678"),
            ("documento de identidad nº 1098765432.", "1098765432"),
            ("cedula 43567890 y cel 3001234567", "43567890"),
            ("SSN 123456789", "123456789"),
            ("my social security number is 123 45 6789", "123 45 6789"),
        ] {
            assert_eq!(ids(t), vec![want], "{t}");
        }
    }

    #[test]
    fn ignores_other_numbers_near_identity_words() {
        for t in [
            "el CC Andino local 204",
            "documento del pedido 100234567",
            "cédula de mi esposo, el pedido es 12345",
            "SSN 666123456",
            "cc 12345",
            "cédula 4111 1111 1111 1111",
            "documento $1.234.567",
        ] {
            assert!(ids(t).is_empty(), "{t}");
        }
    }
}
