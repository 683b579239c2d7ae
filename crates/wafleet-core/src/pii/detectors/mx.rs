//! Mexico's identifiers, which the digit-based detectors cannot see: the CURP (18 letters and
//! digits) and a person's RFC (13, "GODE561231GR8", also written "GODE-561231-GR8"), both with
//! a check character; the key on the voter card (INE's "clave de elector", 18, no check digit
//! but a fixed layout with a date and a state); and the CLABE, the 18-digit interbank account
//! number customers give for refunds, with its check digit.
//!
//! A CURP needs no context: its shape (a real date, a state, sex) and its check digit leave
//! nothing else it could be. An RFC with a right check character needs none either; one whose
//! check character is wrong is still taken right after "RFC" (people mistype it, and SAT issued
//! some that do not check). A CLABE is taken after "CLABE" or "SPEI", or bare when it is a solid
//! 18-digit number that starts with the code of a bank most Mexicans use and no order or
//! tracking word comes before it: its check digit alone would pass one order number in ten.

use crate::pii::checksums::{
    clabe_valid, curp_valid, elector_key_shape, rfc_person_shape, rfc_person_valid,
};
use crate::pii::keywords::{IdKw, Kw};
use crate::pii::text::{word_end, word_start};
use crate::pii::{Ctx, Found, PiiType};

/// How far after "RFC" or "CLABE" (in bytes) the identifier may start.
const CONTEXT_WINDOW: usize = 40;

/// Banxico codes of the banks that hold most personal accounts: Banamex, BBVA, Santander, HSBC,
/// Bajío, Inbursa, Scotiabank, Banregio, Afirme, Banorte, Azteca, Compartamos, BanCoppel, Nu,
/// STP (behind most fintech accounts) and Mercado Pago.
const COMMON_BANKS: [&[u8; 3]; 16] = [
    b"002", b"012", b"014", b"021", b"030", b"036", b"044", b"058", b"062", b"072", b"127", b"130",
    b"137", b"638", b"646", b"722",
];

/// Adds every CURP, person's RFC and CLABE in the message.
pub fn find(ctx: &Ctx<'_>, found: &mut Found) {
    let b = ctx.b;
    if b.len() < 13 {
        return;
    }
    let has_bank_word = ctx.kws.iter().any(|k| k.kind == Kw::Bank);
    // Every identifier here holds digits: visit each run of them once, and look at the word
    // (letters and digits) around it.
    let mut p = 0;
    while let Some(rel) = b[p..].iter().position(u8::is_ascii_digit) {
        let d = p + rel;
        let mut s = d;
        while s > 0 && is_id_byte(b[s - 1]) {
            s -= 1;
        }
        let mut e = d;
        while e < b.len() && is_id_byte(b[e]) {
            e += 1;
        }
        p = e;
        if !word_start(ctx.text, s) {
            continue;
        }
        let hit = identifier_at(ctx, s, e, has_bank_word).or_else(|| {
            // "GODE 561231 GR8": the date group, after four letters and a separator.
            (e - s == 6 && s >= 5 && matches!(b[s - 1], b' ' | b'-'))
                .then(|| s - 5)
                .filter(|&r| b[r..r + 4].iter().all(u8::is_ascii_alphabetic))
                .filter(|&r| word_start(ctx.text, r))
                .and_then(|r| spaced_rfc(ctx, r).map(|end| (r, end)))
                .map(|(r, end)| (r, end, PiiType::NationalId))
        });
        if let Some((start, end, kind)) = hit
            && found.push(start, end, kind)
        {
            p = p.max(end);
        }
    }
}

/// A byte of an identifier's word: ASCII letters and digits, and the `&` some RFCs start with.
fn is_id_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'&'
}

/// The identifier that is the word `s..e` (or, for a CLABE in groups, starts with it).
fn identifier_at(
    ctx: &Ctx<'_>,
    s: usize,
    e: usize,
    has_bank_word: bool,
) -> Option<(usize, usize, PiiType)> {
    let run = &ctx.b[s..e];
    if !word_end(ctx.text, e) {
        return None;
    }
    let digits_only = run.iter().all(u8::is_ascii_digit);
    if run.len() == 18 && digits_only {
        let named = has_bank_word && ctx.follows(s, CONTEXT_WINDOW, Kw::Bank);
        return (clabe_valid(run) && (named || bare_clabe_ok(ctx, s, run))).then_some((
            s,
            e,
            PiiType::BankAccount,
        ));
    }
    if run.len() == 18 && (curp_valid(run) || elector_key_shape(run)) {
        return Some((s, e, PiiType::NationalId));
    }
    if run.len() == 13 && rfc_ok(ctx, s, run) {
        return Some((s, e, PiiType::NationalId));
    }
    // A CLABE in groups after its word: "CLABE 0021 8007 0012 3456 78", "002-180-...".
    if digits_only && run.len() < 18 && has_bank_word && ctx.follows(s, CONTEXT_WINDOW, Kw::Bank) {
        return grouped_clabe(ctx, s).map(|end| (s, end, PiiType::BankAccount));
    }
    None
}

fn rfc_ok(ctx: &Ctx<'_>, s: usize, rfc: &[u8]) -> bool {
    rfc_person_valid(rfc)
        || (rfc_person_shape(rfc) && ctx.follows(s, CONTEXT_WINDOW, Kw::Id(IdKw::Mexican)))
}

/// The end of a person's RFC written in three groups from `s` ("GODE 561231 GR8").
fn spaced_rfc(ctx: &Ctx<'_>, s: usize) -> Option<usize> {
    let b = ctx.b;
    let mut rfc = [0u8; 13];
    rfc[..4].copy_from_slice(&b[s..s + 4]);
    let mut i = s + 4;
    let sep = *b.get(i)?;
    if !matches!(sep, b' ' | b'-') {
        return None;
    }
    i += 1;
    for (want, at) in [(6usize, 4usize), (3, 10)] {
        let part = b.get(i..i + want)?;
        if !part.iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
        rfc[at..at + want].copy_from_slice(part);
        i += want;
        if at == 4 {
            if b.get(i) != Some(&sep) {
                return None;
            }
            i += 1;
        }
    }
    (word_end(ctx.text, i) && rfc_ok(ctx, s, &rfc)).then_some(i)
}

/// The end of an 18-digit CLABE written in groups (single spaces or dashes) from `s`.
fn grouped_clabe(ctx: &Ctx<'_>, s: usize) -> Option<usize> {
    let b = ctx.b;
    let mut digits = [0u8; 18];
    let mut n = 0;
    let mut i = s;
    loop {
        while i < b.len() && b[i].is_ascii_digit() {
            if n == 18 {
                return None;
            }
            digits[n] = b[i];
            n += 1;
            i += 1;
        }
        if n == 18 {
            return (word_end(ctx.text, i) && clabe_valid(&digits)).then_some(i);
        }
        if i + 1 < b.len() && matches!(b[i], b' ' | b'-') && b[i + 1].is_ascii_digit() {
            i += 1;
        } else {
            return None;
        }
    }
}

fn bare_clabe_ok(ctx: &Ctx<'_>, s: usize, clabe: &[u8]) -> bool {
    COMMON_BANKS.iter().any(|code| clabe.starts_with(&code[..]))
        && !ctx.follows(s, CONTEXT_WINDOW, Kw::Neg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(t: &str) -> Vec<(&str, PiiType)> {
        crate::pii::detectors::detect(t, &[find])
    }

    #[test]
    fn curps_and_rfcs_in_any_case_and_grouping() {
        for (t, want) in [
            ("mi CURP es BOXW310820HNERXN09.", "BOXW310820HNERXN09"),
            ("boxw310820hnerxn09", "boxw310820hnerxn09"),
            ("RFC: GODE561231GR8 para la factura", "GODE561231GR8"),
            ("factura a GODE-561231-GR8 por favor", "GODE-561231-GR8"),
            ("rfc gode 561231 gr8", "gode 561231 gr8"),
            // A wrong check character, but right after "RFC".
            ("mi RFC es GODE561231GR9", "GODE561231GR9"),
            ("clave de elector GMVLMR80070501M100", "GMVLMR80070501M100"),
        ] {
            assert_eq!(found(t), vec![(want, PiiType::NationalId)], "{t}");
        }
    }

    #[test]
    fn clabes_after_their_word_or_bare_from_a_major_bank() {
        for (t, want) in [
            ("CLABE 032180000118359719", "032180000118359719"),
            (
                "mi cuenta CLABE: 0321 8000 0118 3597 19 gracias",
                "0321 8000 0118 3597 19",
            ),
            ("por SPEI a 032-180-00011835971-9", "032-180-00011835971-9"),
            // Bare, from Banamex.
            ("deposítenme a 002000000000000008", "002000000000000008"),
        ] {
            assert_eq!(found(t), vec![(want, PiiType::BankAccount)], "{t}");
        }
    }

    #[test]
    fn lookalikes_stay() {
        for t in [
            // One character off.
            "BOXW310820HNERXN08",
            "CLABE 032180000118359718",
            // A company's RFC (three letters) and a person's with a wrong check, no context.
            "RFC de la empresa ABC680524P76",
            "el código GODE561231GR9",
            // Right check digit, but an order number, or no major bank's code.
            "pedido 002000000000000008",
            "el número 999000000000000001",
            "SKU ABCD991301XYZ",
        ] {
            assert!(found(t).is_empty(), "{t}: {:?}", found(t));
        }
    }
}
