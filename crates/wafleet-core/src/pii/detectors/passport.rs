//! Passport numbers, which only the word before them tells apart from a code: after
//! "pasaporte", "passaporte" or "passport" (a few words may stand between: "pasaporte mexicano
//! número"), one token of up to three letters and six to nine digits: Mexico's G12345678,
//! Colombia's AB1234567, Brazil's FZ123456, Spain's PAA123456, a US 9-digit number.

use crate::pii::keywords::{IdKw, Kw};
use crate::pii::text::{Cursor, word_end};
use crate::pii::{Ctx, Found, PiiType};

/// Words allowed between "pasaporte" and the number.
const MAX_GAP_WORDS: usize = 3;

/// Adds the passport numbers that follow passport words.
pub fn find(ctx: &Ctx<'_>, found: &mut Found) {
    for (ki, k) in ctx.kws.iter().enumerate() {
        if k.kind != Kw::Id(IdKw::Passport) {
            continue;
        }
        let mut c = Cursor::new(ctx.text, k.end);
        for _ in 0..=MAX_GAP_WORDS {
            c.skip_spaces();
            while matches!(c.peek(), Some(b':' | b'#' | b'=' | b'-' | b'.' | b'(')) {
                c.pos += 1;
                c.skip_spaces();
            }
            let start = c.pos;
            // An order or reference word on the way speaks for what follows it ("pasaporte para
            // el pedido 12345678"); "número" does not.
            if ctx.kws[ki + 1..]
                .iter()
                .any(|n| n.start == start && n.kind.is_neg())
            {
                break;
            }
            if let Some((s, e)) = c.alnum()
                && word_end(ctx.text, e)
                && passport_shaped(&ctx.b[s..e])
            {
                if !found.overlaps(s, e) {
                    found.push(s, e, PiiType::NationalId);
                }
                break;
            }
            // Not the number: a word in between ("número", "es", "mexicano") lets the search go
            // on; anything else (another number, a code) ends it.
            c.pos = start;
            if c.letters().is_none() {
                break;
            }
            c.eat_ordinal();
            if !word_end(ctx.text, c.pos) {
                break;
            }
        }
    }
}

/// Up to three letters, then six to nine digits.
fn passport_shaped(t: &[u8]) -> bool {
    let letters = t.iter().take_while(|c| c.is_ascii_alphabetic()).count();
    let digits = t.len() - letters;
    letters <= 3 && (6..=9).contains(&digits) && t[letters..].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(t: &str) -> Vec<&str> {
        crate::pii::detectors::detect_texts(t, find)
    }

    #[test]
    fn passport_numbers_after_the_word() {
        for (t, want) in [
            ("pasaporte G12345678", "G12345678"),
            ("mi pasaporte mexicano número: N01234567 vence", "N01234567"),
            ("passaporte nº FZ123456", "FZ123456"),
            ("Passport #: 123456789", "123456789"),
            ("PASAPORTE PAA123456.", "PAA123456"),
        ] {
            assert_eq!(found(t), vec![want], "{t}");
        }
    }

    #[test]
    fn other_tokens_after_the_word_stay() {
        for t in [
            "pasaporte vencido, pedido 12345678",
            "passport photo 2x2",
            "pasaporte ABCD123456",
            "pasaporte 12345",
            "passport renewal in 3 weeks, order 123456789",
            "necesito el pasaporte para el pedido 12345678",
        ] {
            assert!(found(t).is_empty(), "{t}: {:?}", found(t));
        }
    }
}
