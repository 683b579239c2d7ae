//! Mexico's identifiers, which the digit-based detectors cannot see: the CURP (18 letters and
//! digits) and a person's RFC (13, "GODE561231GR8", also written "GODE-561231-GR8"), both with
//! a check character; the key on the voter card (INE's "clave de elector", 18, no check digit
//! but a fixed layout with a date and a state); and the CLABE, the 18-digit interbank account
//! number customers give for refunds, with its check digit.
//!
//! A CURP needs no context: its shape (a real date, a state, sex) and its check digit leave
//! nothing else it could be. An RFC with a right check character needs none either; one whose
//! check character is wrong is still taken right after "RFC" (people mistype it, and SAT issued
//! some that do not check). A CLABE is taken after "CLABE", "clave interbancaria" or "SPEI";
//! after "número de cuenta" or "account number" when it starts with the code of a bank in SPEI;
//! or bare when it is a solid 18-digit number that starts with the code of a bank most Mexicans
//! use and no order or tracking word comes before it: its check digit alone would pass one
//! order number in ten.

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

/// Banxico codes of every bank and payment institution in SPEI (the first three digits of a
/// CLABE), clearing houses left out.
#[rustfmt::skip]
const SPEI_BANKS: [&[u8; 3]; 82] = [
    b"002", b"006", b"009", b"012", b"014", b"019", b"021", b"030", b"036", b"042", b"044", b"058",
    b"059", b"060", b"062", b"072", b"102", b"103", b"106", b"108", b"110", b"112", b"113", b"127",
    b"128", b"129", b"130", b"132", b"133", b"135", b"136", b"137", b"138", b"140", b"141", b"143",
    b"145", b"147", b"148", b"150", b"151", b"152", b"154", b"155", b"156", b"157", b"158", b"159",
    b"160", b"166", b"168", b"600", b"601", b"602", b"605", b"608", b"616", b"617", b"620", b"630",
    b"631", b"634", b"638", b"646", b"652", b"653", b"656", b"659", b"661", b"670", b"677", b"680",
    b"683", b"684", b"685", b"686", b"688", b"689", b"706", b"710", b"722", b"723",
];

/// Adds every CURP, person's RFC and CLABE in the message.
pub fn find(ctx: &Ctx<'_>, found: &mut Found) {
    let b = ctx.b;
    if b.len() < 13 {
        return;
    }
    // Whether the message names a CLABE or an account at all: a CLABE in groups is only looked
    // for after such a word, so the common message pays nothing for it.
    let clabe_words = ctx
        .kws
        .iter()
        .any(|k| matches!(k.kind, Kw::Bank | Kw::Account));
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
        let hit = identifier_at(ctx, s, e, clabe_words).or_else(|| {
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
    clabe_words: bool,
) -> Option<(usize, usize, PiiType)> {
    let run = &ctx.b[s..e];
    if !word_end(ctx.text, e) {
        return None;
    }
    let digits_only = run.iter().all(u8::is_ascii_digit);
    if run.len() == 18 && digits_only {
        return (clabe_valid(run) && clabe_allowed(ctx, s, run, false)).then_some((
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
    if digits_only && run.len() < 18 && clabe_words {
        return grouped_clabe(ctx, s)
            .filter(|(_, digits)| clabe_allowed(ctx, s, digits, true))
            .map(|(end, _)| (s, end, PiiType::BankAccount));
    }
    None
}

/// Whether the CLABE-valid number `clabe` at `s` is taken, by the context word before it:
/// "CLABE" or "SPEI", any number; an account phrase ("número de cuenta", an order word for the
/// digit detectors), one that starts with the code of a bank in SPEI; no order or reference
/// word, a solid number (not `grouped`) from a major bank.
fn clabe_allowed(ctx: &Ctx<'_>, s: usize, clabe: &[u8], grouped: bool) -> bool {
    match ctx.nearest_kind(s, CONTEXT_WINDOW) {
        Some(Kw::Bank) => true,
        Some(Kw::Account) => from_bank(&SPEI_BANKS, clabe),
        Some(k) if k.is_neg() => false,
        _ => !grouped && from_bank(&COMMON_BANKS, clabe),
    }
}

fn from_bank(banks: &[&[u8; 3]], clabe: &[u8]) -> bool {
    banks.iter().any(|code| clabe.starts_with(&code[..]))
}

fn rfc_ok(ctx: &Ctx<'_>, s: usize, rfc: &[u8]) -> bool {
    rfc_person_valid(rfc)
        || (rfc_person_shape(rfc)
            && ctx.nearest_kind(s, CONTEXT_WINDOW) == Some(Kw::Id(IdKw::Mexican)))
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

/// The end and the digits of an 18-digit CLABE written in groups (single spaces or dashes) from
/// `s`.
fn grouped_clabe(ctx: &Ctx<'_>, s: usize) -> Option<(usize, [u8; 18])> {
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
            return (word_end(ctx.text, i) && clabe_valid(&digits)).then_some((i, digits));
        }
        if i + 1 < b.len() && matches!(b[i], b' ' | b'-') && b[i + 1].is_ascii_digit() {
            i += 1;
        } else {
            return None;
        }
    }
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
            (
                "clave interbancaria 002180700123456788",
                "002180700123456788",
            ),
            // After an account phrase: a bank in SPEI, solid or in groups.
            (
                "mi número de cuenta es 002180700123456788",
                "002180700123456788",
            ),
            (
                "numero de cuenta 1361 8001 2345 6789 08",
                "1361 8001 2345 6789 08",
            ),
            ("account number: 656180012345678909", "656180012345678909"),
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
            // After an account phrase, but no bank has that code, or a wrong check digit.
            "número de cuenta 999180012345678909",
            "numero de cuenta 9991 8001 2345 6789 09",
            "número de cuenta 002180700123456789",
            "SKU ABCD991301XYZ",
        ] {
            assert!(found(t).is_empty(), "{t}: {:?}", found(t));
        }
    }
}
