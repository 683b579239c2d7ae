//! Everything made of digit groups: payment cards, phones, checksummed identity numbers
//! (CPF, CNPJ, DNI, NIE, dashed SSN) and IPv4 — and, just as important, everything that only
//! looks like them: prices, quantities, dates, order, tracking and invoice numbers.
//!
//! A message is read as *chunks*: runs of digit groups joined by short separators
//! (`300 123 4567`, `(11) 98765-4321`, `123.456.789-09`, `4111-1111-1111-1111`). Each chunk is
//! classified group by group:
//!
//! - [`find_cards`] runs first and ignores context: any run of space/dash-joined groups holding
//!   13–19 digits that pass Luhn and an issuer-prefix check is a card, even after "pedido".
//!   This is the guarantee that no card number survives redaction.
//! - [`find_rest`] then takes checksummed identifiers, IPv4, and phones by numbering plan
//!   (CO, BR, MX, ES, PT, US, and `+`-prefixed E.164 for any country), after setting aside
//!   prices (currency before or after, decimals), dates, thousands-grouped amounts, codes glued
//!   to letters (SKUs, invoice ids) and numbers whose nearest context word is an order word.

use crate::pii::checksums::{
    cnpj_valid, cpf_valid, dni_valid, ean13_valid, is_card, nie_valid, ssn_valid,
};
use crate::pii::detectors::ip::ipv4_octets_ok;
use crate::pii::keywords::{IdKw, Kw};
use crate::pii::text::{is_alnum, lower};
use crate::pii::{Ctx, Found, PiiType};

/// Most groups one chunk holds; a longer run is cut into several chunks.
const MAX_GROUPS: usize = 12;

/// How far back (bytes) a context word still speaks for a number: far enough for "mi número de
/// celular es el", short enough not to reach into the previous sentence.
const CONTEXT_WINDOW: usize = 40;

/// A run of digit groups, e.g. `+57 300 123 4567` → groups `57`, `300`, `123`, `4567`.
pub struct Chunk<'a> {
    b: &'a [u8],
    /// First byte: the `+` or `(` when there is one, else the first digit.
    pub start: usize,
    /// End of the last group.
    pub end: usize,
    /// Starts with `+` (E.164).
    pub plus: bool,
    n: usize,
    g: [(usize, usize); MAX_GROUPS],
}

fn valid_sep(s: &[u8]) -> bool {
    let dots = s.iter().filter(|&&c| c == b'.').count();
    let slashes = s.iter().filter(|&&c| c == b'/').count();
    let spaces = s.iter().filter(|&&c| c == b' ').count();
    if dots > 1 || slashes > 1 || spaces > 2 || (dots == 1 && s.len() > 1) {
        return false;
    }
    if slashes == 1 && s.len() > 1 {
        return false;
    }
    // Parentheses only as "(" before a group and ")" after one: "+55 (11) 9…".
    if let Some(p) = s.iter().position(|&c| c == b'(')
        && p != s.len() - 1
    {
        return false;
    }
    if let Some(p) = s.iter().position(|&c| c == b')')
        && p != 0
    {
        return false;
    }
    true
}

/// The longest separator read across lines: spaces or a tab on either side of `\r\n`.
const LINE_SEP_MAX: usize = 6;

fn line_break(s: &[u8]) -> bool {
    s.iter().any(|&c| matches!(c, b'\n' | b'\r'))
}

/// One line break (`\n` or `\r\n`) with only spaces or tabs around it.
fn valid_line_sep(s: &[u8]) -> bool {
    let mut rest = s.iter().filter(|c| !matches!(c, b' ' | b'\t'));
    matches!(
        (rest.next(), rest.next(), rest.next()),
        (Some(b'\n'), None, _) | (Some(b'\r'), Some(b'\n'), None)
    )
}

impl<'a> Chunk<'a> {
    /// Reads the chunk whose first digit is at `first`, not reading past `limit`. A line break
    /// ends the chunk (a new line is a new thought) unless `across_lines`: then one line break,
    /// with spaces around it, separates groups like a space does (for cards only, see
    /// [`find_cards`]).
    pub fn parse(b: &'a [u8], first: usize, limit: usize, across_lines: bool) -> Chunk<'a> {
        let mut c = Chunk {
            b,
            start: first,
            end: first,
            plus: false,
            n: 0,
            g: [(0, 0); MAX_GROUPS],
        };
        let limit = limit.min(b.len());
        if first > 0 && b[first - 1] == b'+' && (first < 2 || !is_alnum(b[first - 2])) {
            c.plus = true;
            c.start = first - 1;
            // "(+57) 300 …": the parenthesis opens the number.
            if first >= 2 && b[first - 2] == b'(' {
                c.start = first - 2;
            }
        }
        let (max_sep, line) = if across_lines {
            (LINE_SEP_MAX, &[b'\n', b'\r', b'\t'][..])
        } else {
            (3, &[][..])
        };
        let mut p = first;
        loop {
            let s = p;
            while p < limit && b[p].is_ascii_digit() {
                p += 1;
            }
            if p == s {
                break;
            }
            c.g[c.n] = (s, p);
            c.n += 1;
            c.end = p;
            if c.n == MAX_GROUPS {
                break;
            }
            let mut q = p;
            while q < limit
                && q - p < max_sep
                && (matches!(b[q], b' ' | b'-' | b'.' | b'/' | b'(' | b')') || line.contains(&b[q]))
            {
                q += 1;
            }
            let sep_ok = if across_lines && line_break(&b[p..q]) {
                valid_line_sep(&b[p..q])
            } else {
                valid_sep(&b[p..q])
            };
            if q == p || q >= limit || !b[q].is_ascii_digit() || !sep_ok {
                break;
            }
            p = q;
        }
        // "(11) 98765-4321": the opening parenthesis belongs to the number.
        if !c.plus && first > 0 && b[first - 1] == b'(' && b.get(c.g[0].1) == Some(&b')') && c.n > 1
        {
            c.start = first - 1;
        }
        c
    }

    pub fn len(&self) -> usize {
        self.n
    }

    /// Byte range of group `i`.
    pub fn group(&self, i: usize) -> (usize, usize) {
        self.g[i]
    }

    fn glen(&self, i: usize) -> usize {
        self.g[i].1 - self.g[i].0
    }

    /// The separator bytes before group `i` (empty for the first group).
    pub fn sep(&self, i: usize) -> &'a [u8] {
        if i == 0 || i >= self.n {
            return &[];
        }
        &self.b[self.g[i - 1].1..self.g[i].0]
    }

    /// Whether an ASCII letter follows group `i` directly ("500ml", "12345678Z").
    pub fn glued_right_letter(&self, i: usize) -> bool {
        self.b.get(self.g[i].1).is_some_and(u8::is_ascii_alphabetic)
    }

    /// Where group `i` starts, taking in a `+` or `(` that opens it.
    fn open(&self, i: usize) -> usize {
        if i == 0 {
            return self.start;
        }
        let s = self.g[i].0;
        if self.b[s - 1] == b'(' { s - 1 } else { s }
    }

    /// The first chunk group is glued to a code: "ABC12345", "FV-2024-0001", "/p/12345",
    /// "?id=123", "x2".
    fn code_glued(&self) -> bool {
        let s = self.start;
        if s == 0 {
            return false;
        }
        let p = self.b[s - 1];
        if p.is_ascii_alphabetic() || matches!(p, b'/' | b'=' | b'&' | b'?' | b'_' | b'\\') {
            return true;
        }
        // "ABC-12345", "FV-2024-…" are codes; "1.5" a decimal; but "cel.3001234567" is not.
        if p == b'-' && s >= 2 && is_alnum(self.b[s - 2])
            || p == b'.' && s >= 2 && self.b[s - 2].is_ascii_digit()
        {
            return true;
        }
        false
    }

    fn digits_into(&self, from: usize, to: usize, buf: &mut [u8]) -> usize {
        let mut n = 0;
        for g in from..=to {
            let (s, e) = self.g[g];
            for &d in &self.b[s..e] {
                if n == buf.len() {
                    return n + 1;
                }
                buf[n] = d;
                n += 1;
            }
        }
        n
    }
}

/// Iterates over the chunks of unclaimed digits in the message.
fn for_each_chunk(
    ctx: &Ctx<'_>,
    found: &mut Found,
    across_lines: bool,
    mut f: impl FnMut(&Chunk<'_>, &mut Found),
) {
    let b = ctx.b;
    let mut p = 0;
    while p < b.len() {
        let Some(rel) = b[p..].iter().position(u8::is_ascii_digit) else {
            break;
        };
        p += rel;
        if let Some(e) = found.covering(p) {
            p = e;
            continue;
        }
        if p > 0 && b[p - 1].is_ascii_digit() {
            // The tail of a run whose head was claimed: not a number of its own.
            while p < b.len() && b[p].is_ascii_digit() {
                p += 1;
            }
            continue;
        }
        let limit = found.next_start(p, b.len());
        let chunk = Chunk::parse(b, p, limit, across_lines);
        f(&chunk, found);
        p = chunk.end.max(p + 1);
    }
}

/// A 13-digit number that is a valid EAN-13 *and* introduced as a product or business code
/// ("código de barras 4005808…", "EAN …", "producto …"). The one documented exception to "every
/// Luhn-valid number goes": 13-digit cards (old Visa) are no longer issued, while German
/// barcodes (GS1 400–440) ship on every Nivea jar.
fn thirteen_digit_code(ctx: &Ctx<'_>, c: &Chunk<'_>, d: &[u8]) -> bool {
    d.len() == 13
        && ean13_valid(d)
        && ctx
            .nearest_kind(c.start, CONTEXT_WINDOW)
            .is_some_and(Kw::is_neg)
}

/// Adds every payment card: 13–19 digits, grouped by spaces, dashes, dots ("4111.1111.…", common
/// in Latin America) or slashes any way, Luhn-valid with an issuer prefix. Runs before any
/// context-based detector.
///
/// A card typed over several lines ("4111 1111\n1111 1111") is one card too, when every group
/// of it has at least [`MIN_GROUP_ACROSS_LINES`] digits: short numbers one per line (quantities,
/// a list) are not joined into one.
pub fn find_cards(ctx: &Ctx<'_>, found: &mut Found) {
    for_each_chunk(ctx, found, true, |c, found| {
        let mut i = 0;
        while i < c.len() {
            let mut buf = [0u8; 19];
            let mut n = 0;
            let mut best = None;
            let mut lines = false;
            let mut short_group = false;
            for j in i..c.len() {
                if j > i {
                    let sep = c.sep(j);
                    if line_break(sep) {
                        lines = true;
                    } else if !sep.iter().all(|&s| matches!(s, b' ' | b'-' | b'.' | b'/')) {
                        break;
                    }
                }
                short_group |= c.glen(j) < MIN_GROUP_ACROSS_LINES;
                if lines && short_group {
                    break;
                }
                let (s, e) = c.group(j);
                if n + (e - s) > 19 {
                    break;
                }
                buf[n..n + e - s].copy_from_slice(&c.b[s..e]);
                n += e - s;
                if n >= 13 && is_card(&buf[..n]) && !thirteen_digit_code(ctx, c, &buf[..n]) {
                    best = Some(j);
                }
            }
            if let Some(j) = best {
                found.push(c.group(i).0, c.group(j).1, PiiType::Card);
                i = j + 1;
            } else {
                i += 1;
            }
        }
    });
}

/// The fewest digits in each group of a card written over several lines.
const MIN_GROUP_ACROSS_LINES: usize = 4;

/// A checksummed identity number found in a chunk.
pub struct IdHit {
    pub start: usize,
    pub end: usize,
    /// Last chunk group it uses.
    pub last: usize,
}

fn shape(c: &Chunk<'_>, i: usize, sizes: &[usize], seps: &[&[&[u8]]]) -> bool {
    if i + sizes.len() > c.len() {
        return false;
    }
    sizes.iter().enumerate().all(|(k, &sz)| c.glen(i + k) == sz)
        && seps
            .iter()
            .enumerate()
            .all(|(k, allowed)| allowed.contains(&c.sep(i + k + 1)))
}

/// A CPF, CNPJ, DNI, NIE or dashed SSN starting at group `i`, validated by its check digits.
/// `bare_ok`: whether an unformatted 11/14-digit run may be a CPF/CNPJ here (not after an
/// order word, not where a phone was announced).
pub fn checksummed_id(ctx: &Ctx<'_>, c: &Chunk<'_>, i: usize, bare_ok: bool) -> Option<IdHit> {
    let b = ctx.b;
    let mut buf = [0u8; 20];
    let hit = |last: usize| IdHit {
        start: c.group(i).0,
        end: c.group(last).1,
        last,
    };
    // A letter right after the digits (optionally after '-' or ' '), then a word end.
    let letter_after = |last: usize| -> Option<(u8, usize)> {
        let mut p = c.group(last).1;
        if matches!(b.get(p), Some(b'-' | b' ')) {
            p += 1;
        }
        let l = *b.get(p)?;
        (l.is_ascii_alphabetic() && b.get(p + 1).is_none_or(|&n| !n.is_ascii_alphanumeric()))
            .then_some((l, p + 1))
    };
    const DOT: &[&[u8]] = &[b"."];
    const DOT_SP: &[&[u8]] = &[b".", b" "];
    const DASH: &[&[u8]] = &[b"-"];
    const CPF_LAST: &[&[u8]] = &[b"-", b".", b" ", b" - ", b"/"];

    // NIE: X1234567L, X-1234567-L, Y 1234567 X.
    if i == 0 && c.glen(0) == 7 {
        let s = c.group(0).0;
        let mut q = s;
        if q >= 1 && matches!(b[q - 1], b'-' | b' ') {
            q -= 1;
        }
        if q >= 1
            && matches!(b[q - 1], b'X' | b'Y' | b'Z' | b'x' | b'y' | b'z')
            && (q < 2 || !is_alnum(b[q - 2]))
            && let Some((l, e)) = letter_after(0)
            && nie_valid(b[q - 1], &b[s..c.group(0).1], l)
        {
            return Some(IdHit {
                start: q - 1,
                end: e,
                last: 0,
            });
        }
    }
    // DNI: 12345678Z, 12345678-Z, 12.345.678-Z.
    for (sizes, seps) in [(&[8][..], &[][..]), (&[2, 3, 3][..], &[DOT, DOT][..])] {
        if shape(c, i, sizes, seps) {
            let last = i + sizes.len() - 1;
            if let Some((l, e)) = letter_after(last) {
                let n = c.digits_into(i, last, &mut buf);
                if dni_valid(&buf[..n], l) {
                    return Some(IdHit {
                        end: e,
                        ..hit(last)
                    });
                }
            }
        }
    }
    // CPF: 123.456.789-09, 123456789-09, 123 456 789 09.
    for (sizes, seps) in [
        (&[3, 3, 3, 2][..], &[DOT_SP, DOT_SP, CPF_LAST][..]),
        (&[9, 2][..], &[DASH][..]),
    ] {
        if shape(c, i, sizes, seps) {
            let last = i + sizes.len() - 1;
            let n = c.digits_into(i, last, &mut buf);
            if cpf_valid(&buf[..n]) {
                return Some(hit(last));
            }
        }
    }
    // CNPJ: 12.345.678/0001-95, 12345678/0001-95.
    const SLASH: &[&[u8]] = &[b"/"];
    for (sizes, seps) in [
        (&[2, 3, 3, 4, 2][..], &[DOT, DOT, SLASH, DASH][..]),
        (&[8, 4, 2][..], &[SLASH, DASH][..]),
    ] {
        if shape(c, i, sizes, seps) {
            let last = i + sizes.len() - 1;
            let n = c.digits_into(i, last, &mut buf);
            if cnpj_valid(&buf[..n]) {
                return Some(hit(last));
            }
        }
    }
    // SSN: 123-45-6789.
    if shape(c, i, &[3, 2, 4], &[DASH, DASH]) {
        let n = c.digits_into(i, i + 2, &mut buf);
        if ssn_valid(&buf[..n]) {
            return Some(hit(i + 2));
        }
    }
    // Bare CPF / CNPJ.
    if bare_ok {
        let g = c.group(i);
        let d = &b[g.0..g.1];
        if (d.len() == 11 && cpf_valid(d)) || (d.len() == 14 && cnpj_valid(d)) {
            return Some(hit(i));
        }
    }
    None
}

#[rustfmt::skip]
const CURRENCY_WORDS: &[&[u8]] = &[
    b"pesos", b"peso", b"reais", b"real", b"euros", b"euro", b"dolares", b"dollars", b"dollar",
    b"usd", b"cop", b"mxn", b"brl", b"eur", b"millones", b"millon", b"k", b"bucks",
    b"centavos", b"cents", b"mxn$", b"clp", b"ars", b"pen", b"gbp", b"libras",
];

fn word_before(b: &[u8], mut p: usize) -> &[u8] {
    while p > 0 && matches!(b[p - 1], b' ' | b':') {
        p -= 1;
    }
    let e = p;
    while p > 0 && (b[p - 1].is_ascii_alphabetic() || b[p - 1] >= 0x80 || b[p - 1] == b'$') {
        p -= 1;
    }
    &b[p..e]
}

fn word_after(b: &[u8], mut p: usize) -> &[u8] {
    while p < b.len() && b[p] == b' ' {
        p += 1;
    }
    let s = p;
    while p < b.len() && (b[p].is_ascii_alphabetic() || b[p] >= 0x80) {
        p += 1;
    }
    &b[s..p]
}

/// A chunk that is an amount: currency before or after it, decimals after it, or a percent.
pub fn is_price_context(ctx: &Ctx<'_>, c: &Chunk<'_>) -> bool {
    let b = ctx.b;
    let mut p = c.start;
    if p > 0 && b[p - 1] == b' ' {
        p -= 1;
    }
    if p > 0 && matches!(b[p - 1], b'$' | b'~') {
        return true;
    }
    if b[..p].ends_with("€".as_bytes()) || b[..p].ends_with("£".as_bytes()) {
        return true;
    }
    let mut buf = [0u8; 24];
    let w = lower(word_before(b, c.start), &mut buf);
    if matches!(
        w,
        b"usd"
            | b"cop"
            | b"eur"
            | b"brl"
            | b"mxn"
            | b"us"
            | b"r"
            | b"precio"
            | b"valor"
            | b"price"
            | b"preco"
            | b"total"
    ) {
        return true;
    }
    let e = c.end;
    if matches!(b.get(e), Some(b',' | b'.')) && b.get(e + 1).is_some_and(u8::is_ascii_digit) {
        return true;
    }
    let mut q = e;
    if b.get(q) == Some(&b' ') {
        q += 1;
    }
    if matches!(b.get(q), Some(b'%' | b'$')) || b[q.min(b.len())..].starts_with("€".as_bytes()) {
        return true;
    }
    let w = word_after(b, e);
    // "dólares" has a non-ASCII letter: compare without it.
    if w.starts_with(b"d\xc3\xb3lar") {
        return true;
    }
    let w = lower(w, &mut buf);
    CURRENCY_WORDS.contains(&w)
}

/// Groups `i..=j` that are thousands-grouped ("1.234.567", "2.500").
fn thousands(c: &Chunk<'_>, i: usize) -> Option<usize> {
    if !(1..=3).contains(&c.glen(i)) {
        return None;
    }
    let mut j = i;
    while j + 1 < c.len() && c.sep(j + 1) == b"." && c.glen(j + 1) == 3 {
        j += 1;
    }
    // "300.123.4567" is dotted like an amount but its last group is not a thousand.
    if j + 1 < c.len() && c.sep(j + 1) == b"." {
        return None;
    }
    (j > i).then_some(j)
}

/// The value of a run of ASCII digits, saturating (a long run after a date word must not
/// overflow).
pub fn val(b: &[u8]) -> u32 {
    b.iter().fold(0u32, |a, &d| {
        a.saturating_mul(10).saturating_add(u32::from(d - b'0'))
    })
}

/// Groups `i..=j` that form a date (d/m/y, y-m-d, m/d/y, or d/m).
fn date(c: &Chunk<'_>, i: usize) -> Option<usize> {
    let b = c.b;
    let g = |k: usize| {
        let (s, e) = c.group(k);
        (val(&b[s..e]), e - s)
    };
    if i + 1 >= c.len() {
        return None;
    }
    let sep = c.sep(i + 1);
    if !matches!(sep, b"/" | b"-" | b".") {
        return None;
    }
    let (a, al) = g(i);
    let (m, ml) = g(i + 1);
    if i + 2 < c.len() && c.sep(i + 2) == sep {
        let (y, yl) = g(i + 2);
        let dmy = al <= 2
            && ml <= 2
            && (yl == 2 || yl == 4)
            && ((1..=31).contains(&a) && (1..=12).contains(&m)
                || (1..=12).contains(&a) && (1..=31).contains(&m));
        let ymd = al == 4 && ml <= 2 && yl <= 2 && (1..=12).contains(&m) && (1..=31).contains(&y);
        if dmy || ymd {
            return Some(i + 2);
        }
    }
    if sep == b"/" && al <= 2 && ml <= 2 && (1..=31).contains(&a) && (1..=12).contains(&m) {
        return Some(i + 1);
    }
    // Month/year ("03/2024") and year ranges ("2023-2024").
    let year = |v: u32| (1900..=2100).contains(&v);
    if al <= 2 && (1..=12).contains(&a) && ml == 4 && year(m)
        || al == 4 && ml == 4 && sep == b"-" && year(a) && year(m)
    {
        return Some(i + 1);
    }
    None
}

fn ipv4(c: &Chunk<'_>, i: usize) -> Option<usize> {
    if i + 3 >= c.len() || (i > 0 && c.sep(i) == b".") {
        return None;
    }
    if (1..4).any(|k| c.sep(i + k) != b".") {
        return None;
    }
    if i + 4 < c.len() && c.sep(i + 4) == b"." {
        return None;
    }
    let octs: [&[u8]; 4] = std::array::from_fn(|k| {
        let (s, e) = c.group(i + k);
        &c.b[s..e]
    });
    ipv4_octets_ok(&octs).then_some(i + 3)
}

/// Brazil's area codes (DDD) in use.
fn br_ddd(d: &[u8]) -> bool {
    let v = (d[0] - b'0') * 10 + (d[1] - b'0');
    matches!(v, 11..=19 | 21 | 22 | 24 | 27 | 28 | 31..=35 | 37 | 38 | 41..=49 | 51 | 53..=55
        | 61..=69 | 71 | 73..=75 | 77 | 79 | 81..=89 | 91..=99)
}

fn br_mobile(d: &[u8]) -> bool {
    d.len() == 11 && br_ddd(d) && d[2] == b'9' && d[3] != b'0'
}

/// Whether a number dialled with "00" starts with a country code our customers call from; a
/// bare "00…" is more often a barcode or an account than an exotic phone.
fn known_country(d: &[u8]) -> bool {
    [
        &b"1"[..],
        b"57",
        b"55",
        b"52",
        b"34",
        b"351",
        b"44",
        b"49",
        b"33",
        b"39",
        b"54",
        b"56",
        b"51",
        b"58",
        b"593",
        b"507",
        b"506",
    ]
    .iter()
    .any(|p| d.starts_with(p))
}

/// A number written in international form (after `+` or `00`), country code included.
fn international(d: &[u8]) -> bool {
    let n = d.len();
    if n < 8 {
        return false;
    }
    let starts = |p: &[u8]| d.starts_with(p);
    if starts(b"1") {
        return n == 11 && d[1] >= b'2';
    }
    if starts(b"57") {
        return n == 12 && (d[2] == b'3' || d[2] == b'6');
    }
    if starts(b"55") {
        return (n == 12 || n == 13) && br_ddd(&d[2..]);
    }
    if starts(b"52") {
        return n == 12 || n == 13;
    }
    if starts(b"34") {
        return n == 11 && matches!(d[2], b'6'..=b'9');
    }
    if starts(b"351") {
        return n == 12 && matches!(d[3], b'2' | b'9');
    }
    if d[0] == b'0' {
        return false;
    }
    (10..=15).contains(&n)
}

/// The ways people group national numbers, by digit count. Anything else ("123-45-6789",
/// "4587 2231 9") is some other number.
fn national_shape(sizes: &[u8]) -> bool {
    const SHAPES: &[&[u8]] = &[
        &[7],
        &[3, 4],
        &[3, 2, 2],
        &[8],
        &[4, 4],
        &[2, 3, 3],
        &[9],
        &[3, 3, 3],
        &[3, 2, 2, 2],
        &[2, 3, 2, 2],
        &[5, 4],
        &[2, 3, 4],
        &[3, 6],
        &[10],
        &[3, 3, 4],
        &[3, 7],
        &[2, 4, 4],
        &[3, 3, 2, 2],
        &[2, 8],
        &[11],
        &[2, 5, 4],
        &[2, 1, 4, 4],
        &[2, 9],
        &[1, 3, 3, 4],
        &[1, 3, 7],
        &[12],
        &[13],
        &[2, 3, 3, 4],
        &[2, 2, 5, 4],
        &[2, 2, 4, 4],
        &[2, 1, 2, 4, 4],
        &[3, 3, 3, 3],
        &[2, 3, 7],
        &[2, 2, 9],
    ];
    SHAPES.contains(&sizes)
}

/// A national number as people in our countries write it. `groups` is how many groups it was
/// written in; `announced` whether a phone word precedes it.
fn national(d: &[u8], groups: usize, announced: bool) -> bool {
    let n = d.len();
    let first = d[0];
    match n {
        // CO mobile 3xx and landline 60x; MX, US (NANP) and BR landline with area code. BR
        // area codes 11–19 start with 1 like Colombian cédulas do, so those must be grouped.
        10 => first >= b'2' || (groups > 1 && br_ddd(d) && matches!(d[2], b'2'..=b'5')),
        // BR mobile with area code; US with trunk 1 ("1-415-555-2671").
        11 => br_mobile(d) || (first == b'1' && d[1] >= b'2' && groups > 1),
        // ES (6, 7, 8, 9), PT (9 mobile, 2 landline); BR mobile without area code.
        9 => matches!(first, b'6'..=b'9') || (first == b'2' && (groups > 1 || announced)),
        // Short local numbers only when announced: BR landline 3456-7890, CO 234 5678.
        7 | 8 => announced && first >= b'2',
        // International without the '+'.
        12 | 13 => {
            (d.starts_with(b"57")
                || d.starts_with(b"55")
                || d.starts_with(b"52")
                || d.starts_with(b"351"))
                && international(d)
                && (groups == 1 || announced)
        }
        _ => false,
    }
}

/// The longest phone number starting at group `i`.
fn phone(c: &Chunk<'_>, i: usize, announced: bool) -> Option<usize> {
    let mut buf = [0u8; 16];
    let mut sizes = [0u8; MAX_GROUPS];
    let mut n = 0;
    let mut best = None;
    let plus = i == 0 && c.plus;
    for j in i..c.len() {
        if j > i && c.sep(j).contains(&b'/') {
            break;
        }
        let (s, e) = c.group(j);
        if n + (e - s) > 15 {
            break;
        }
        buf[n..n + e - s].copy_from_slice(&c.b[s..e]);
        n += e - s;
        sizes[j - i] = (e - s) as u8;
        let d = &buf[..n];
        let ok = if plus {
            international(d)
        } else if i == 0 && d.starts_with(b"00") {
            d.len() > 2
                && d[2] != b'0'
                && known_country(&d[2..])
                && international(&d[2..])
                && !(d.len() == 13 && ean13_valid(d))
        } else {
            national_shape(&sizes[..=j - i]) && national(d, j - i + 1, announced)
        };
        if ok && !c.glued_right_letter(j) {
            best = Some(j);
        }
    }
    best
}

fn version_word(w: &[u8]) -> bool {
    let mut buf = [0u8; 24];
    let w = lower(w, &mut buf);
    matches!(w, b"v" | b"version" | b"firmware" | b"build" | b"app")
        || w == "versión".as_bytes()
        || w == "versão".as_bytes()
}

/// Whether the chunk is introduced as an order/reference number: a `#` or `nº` right before it.
fn numbered(b: &[u8], start: usize) -> bool {
    let mut p = start;
    while p > 0 && b[p - 1] == b' ' {
        p -= 1;
    }
    if p > 0 && b[p - 1] == b'#' {
        return true;
    }
    let before = &b[..p];
    before.ends_with("nº".as_bytes())
        || before.ends_with("n°".as_bytes())
        || before.ends_with("Nº".as_bytes())
        || before.ends_with("N°".as_bytes())
        || before.ends_with(b"No.")
        || before.ends_with(b"no.")
        || before.ends_with(b"Nr.")
}

/// Adds checksummed identity numbers, IPv4 addresses and phones.
pub fn find_rest(ctx: &Ctx<'_>, found: &mut Found) {
    for_each_chunk(ctx, found, false, |c, found| classify(ctx, c, found));
}

fn classify(ctx: &Ctx<'_>, c: &Chunk<'_>, found: &mut Found) {
    let b = ctx.b;
    let near = ctx.nearest_kind(c.start, CONTEXT_WINDOW);
    let neg = near.is_some_and(Kw::is_neg) || numbered(b, c.start);
    let announced = near == Some(Kw::Phone);
    let code = c.code_glued();
    let price = is_price_context(ctx, c);
    let mut i = 0;
    while i < c.len() {
        if found.overlaps(c.group(i).0, c.group(i).1) {
            i += 1;
            continue;
        }
        let bare_ok = !neg && !code && c.len() == 1 && !price;
        let bare_ok = bare_ok
            && !(announced && {
                let g = c.group(i);
                br_mobile(&b[g.0..g.1])
            });
        if let Some(id) = checksummed_id(ctx, c, i, bare_ok)
            && !(code && i == 0 && id.start == c.group(0).0)
        {
            found.push(id.start, id.end, PiiType::NationalId);
            i = id.last + 1;
            continue;
        }
        if price || code {
            // Everything in an amount or a code is part of it.
            return;
        }
        if let Some(j) = ipv4(c, i) {
            if !version_word(word_before(b, c.group(i).0)) {
                found.push(c.group(i).0, c.group(j).1, PiiType::Ip);
            }
            i = j + 1;
            continue;
        }
        if let Some(j) = date(c, i) {
            i = j + 1;
            continue;
        }
        if let Some(j) = thousands(c, i) {
            i = j + 1;
            continue;
        }
        let intl = i == 0 && c.plus;
        // A phone inside a chunk starts after a space ("2 3001234567"), not after a dash or a
        // dot that ties it to the group before ("5932-0098-0364-1211").
        let fresh = i == 0 || c.sep(i).iter().any(|&x| x == b' ' || x == b'(');
        if (!neg || intl)
            && fresh
            && near != Some(Kw::Id(IdKw::Cedula))
            && let Some(j) = phone(c, i, announced)
        {
            found.push(c.open(i), c.group(j).1, PiiType::Phone);
            i = j + 1;
            continue;
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: &str) -> Vec<(&str, PiiType)> {
        crate::pii::detectors::detect(t, &[find_cards, find_rest])
    }

    /// The cards found in `t`.
    fn cards(t: &str) -> Vec<&str> {
        run(t)
            .into_iter()
            .filter_map(|(found, k)| (k == PiiType::Card).then_some(found))
            .collect()
    }

    #[test]
    fn cards_in_any_grouping_and_context() {
        for (t, want) in [
            ("tarjeta 4111 1111 1111 1111 gracias", "4111 1111 1111 1111"),
            ("4111-1111-1111-1111", "4111-1111-1111-1111"),
            ("amex 3782 822463 10005", "3782 822463 10005"),
            ("pedido 5555555555554444", "5555555555554444"),
            ("la 6011 1111 1111 1117.", "6011 1111 1111 1117"),
            ("x 7 4111 1111 1111 1111", "4111 1111 1111 1111"),
            ("abc4111111111111111", "4111111111111111"),
        ] {
            assert_eq!(run(t), vec![(want, PiiType::Card)], "{t}");
        }
    }

    #[test]
    fn a_card_typed_over_several_lines_is_one_card() {
        for (t, want) in [
            (
                "mi tarjeta:\n4111 1111\n1111 1111\ngracias",
                "4111 1111\n1111 1111",
            ),
            ("4111\n1111\n1111\n1111", "4111\n1111\n1111\n1111"),
            ("amex 3782 \r\n 822463\n10005", "3782 \r\n 822463\n10005"),
            ("41111111\n11111111 ok", "41111111\n11111111"),
            // A card on its line, then a short number on the next: the card alone.
            ("4111 1111 1111 1111\n2 unidades", "4111 1111 1111 1111"),
            ("pedido 12\n4111 1111 1111 1111", "4111 1111 1111 1111"),
        ] {
            assert_eq!(cards(t), vec![want], "{t:?}");
        }
    }

    #[test]
    fn short_numbers_one_per_line_or_a_blank_line_apart_are_not_joined_into_a_card() {
        for t in [
            // 4111111111111111 with short groups: a list, not a card.
            "41\n11\n11\n11\n11\n11\n11\n11",
            "411\n1111\n1111\n1111\n1",
            // Two line breaks: two thoughts.
            "4111 1111\n\n1111 1111",
        ] {
            assert_eq!(cards(t), Vec::<&str>::new(), "{t:?}");
        }
    }

    #[test]
    fn luhn_invalid_and_prefixless_numbers_are_not_cards() {
        for t in [
            "4111 1111 1111 1112",
            "código de barras 7702004003508",
            "pedido 2000004567891234",
            "guía 9400 1000 0000 0000 0000 00",
        ] {
            assert!(run(t).iter().all(|(_, k)| *k != PiiType::Card), "{t}");
        }
    }

    #[test]
    fn phones_in_local_and_international_formats() {
        for (t, want) in [
            ("mi cel es 300 123 4567", "300 123 4567"),
            ("escríbeme al +57 300 123 4567.", "+57 300 123 4567"),
            ("+573001234567", "+573001234567"),
            ("3001234567", "3001234567"),
            ("fijo 601 234 5678", "601 234 5678"),
            ("meu zap (11) 98765-4321", "(11) 98765-4321"),
            ("11 98765-4321", "11 98765-4321"),
            ("+55 11 98765-4321", "+55 11 98765-4321"),
            ("+55 (21) 3456-7890", "+55 (21) 3456-7890"),
            ("telefone 3456-7890", "3456-7890"),
            ("llámame al 55 1234 5678", "55 1234 5678"),
            ("+52 1 55 1234 5678", "+52 1 55 1234 5678"),
            ("móvil 612 34 56 78", "612 34 56 78"),
            ("612345678", "612345678"),
            ("+34 612 345 678", "+34 612 345 678"),
            ("o meu é 912 345 678", "912 345 678"),
            ("+351 912 345 678", "+351 912 345 678"),
            ("call me at (415) 555-2671", "(415) 555-2671"),
            ("415-555-2671", "415-555-2671"),
            ("415.555.2671", "415.555.2671"),
            ("+1 415 555 2671", "+1 415 555 2671"),
            ("1-415-555-2671", "1-415-555-2671"),
            ("0057 300 123 4567", "0057 300 123 4567"),
            ("tengo 2 3001234567", "3001234567"),
        ] {
            assert_eq!(run(t), vec![(want, PiiType::Phone)], "{t}");
        }
    }

    #[test]
    fn order_numbers_prices_dates_and_codes_are_not_phones() {
        for t in [
            "pedido #100234567",
            "orden 4587-2231",
            "guía 2045678913",
            "número de pedido 912345678",
            "$1.234.567",
            "R$ 1.299,90",
            "US$ 49.99",
            "€1.250",
            "1.250.000 pesos",
            "el 15/03/2024",
            "entrega 2024-05-12",
            "SKU ABC-12345",
            "ref. 3001234567",
            "factura FV-2024-000123",
            "https://tienda.com/p/3001234567",
            "tracking 1Z999AA10123456784",
            "son 20% de 300",
            "a las 10:30",
            "2 unidades de 500 ml",
            "Nº 612345678",
            "versión 1.2.3.4",
            "cupón 4587 2231",
        ] {
            assert!(run(t).is_empty(), "{t}: {:?}", run(t));
        }
    }

    #[test]
    fn checksummed_identity_numbers() {
        for (t, want) in [
            ("CPF 529.982.247-25", "529.982.247-25"),
            ("meu cpf: 52998224725", "52998224725"),
            ("CNPJ 11.222.333/0001-81", "11.222.333/0001-81"),
            ("DNI 12345678Z", "12345678Z"),
            ("dni 12345678-z.", "12345678-z"),
            ("NIE X1234567L", "X1234567L"),
            ("nie: Y-1234567-X", "Y-1234567-X"),
            ("SSN 123-45-6789", "123-45-6789"),
        ] {
            assert_eq!(run(t), vec![(want, PiiType::NationalId)], "{t}");
        }
    }

    #[test]
    fn bad_check_digits_are_not_identity_numbers() {
        for t in [
            "529.982.247-26",
            "12345678A",
            "X1234567A",
            "666-45-6789",
            "11.222.333/0001-82",
        ] {
            assert!(
                run(t).iter().all(|(_, k)| *k != PiiType::NationalId),
                "{t}: {:?}",
                run(t)
            );
        }
    }

    #[test]
    fn ipv4_but_not_versions_or_prices() {
        assert_eq!(
            run("mi ip es 192.168.0.12"),
            vec![("192.168.0.12", PiiType::Ip)]
        );
        assert_eq!(run("IP: 8.8.8.8."), vec![("8.8.8.8", PiiType::Ip)]);
        for t in ["v1.2.3.4", "1.2.3.4.5", "256.1.1.1", "$1.234.567.890"] {
            assert!(run(t).is_empty(), "{t}");
        }
    }
}
