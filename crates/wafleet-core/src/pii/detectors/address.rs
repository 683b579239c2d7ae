//! Street addresses, the way our customers write them, anchored on street words:
//!
//! - Colombia: street type, street number or name, `#`/`No.`, and the `12-34` plate —
//!   "Calle 45 # 12-34", "Cra 7 No. 72-41 apto 501", "Av. Boyacá #12B-30", "Dg 40A Sur 24-10";
//! - Brazil and Portugal: type, name, comma, number, complement —
//!   "Rua das Flores, 123", "Av. Paulista, 1578 - apto 42", "Rua do Ouro 45, 2º Esq";
//! - Spain: "C/ Mayor 12, 3º B", "Calle de Alcalá 45", "Avda. de la Constitución 8, piso 2";
//! - the US, anchored on the suffix and read backwards to the house number —
//!   "123 Main St Apt 4B", "1600 Pennsylvania Avenue NW", "350 5th Ave, Suite 200".
//!
//! The finding is the street line with its unit (apartment, floor, suite), not the city or the
//! postal code. A street word without a house number ("la calle está cerrada", "Avenida 68",
//! "en la Av. Chile") is not an address.

use crate::pii::keywords::{Kw, KwMatch};
use crate::pii::text::{Cursor, lower, word_start};
use crate::pii::{Ctx, Found, PiiType};

/// Adds every street address in the message.
pub fn find(ctx: &Ctx<'_>, found: &mut Found) {
    for k in ctx.kws {
        let hit =
            match k.kind {
                // "Pl." is a Spanish plaza before a name and a US place after one.
                Kw::Street { strong } => prefix_street(ctx, k, strong)
                    .map(|e| (k.start, e))
                    .or_else(|| {
                        let w = &ctx.b[k.start..k.end];
                        let pl = w.len() >= 2 && w[..2].eq_ignore_ascii_case(b"pl");
                        pl.then(|| suffix_street(ctx, k, true)).flatten()
                    }),
                Kw::Suffix { abbrev } => suffix_street(ctx, k, abbrev),
                _ => None,
            };
        if let Some((s, e)) = hit
            && !found.overlaps(s, e)
        {
            found.push(s, e, PiiType::Address);
        }
    }
}

/// Words that end a street name: a street is never named "hay" or "tem".
#[rustfmt::skip]
const STOP: &[&str] = &[
    "hay", "es", "está", "esta", "estaba", "son", "fue", "tiene", "tengo", "hace", "por", "para",
    "con", "sin", "en", "a", "al", "que", "o", "u", "pero", "muy", "más", "mas", "mi", "mis", "tu",
    "su", "sus", "un", "una", "unos", "unas", "lo", "le", "se", "me", "te", "nos", "ya", "no",
    "si", "sí", "desde", "hasta", "entre", "cerca", "donde", "cuando", "como", "cada", "todo",
    "toda", "va", "van", "voy", "queda", "quedan", "cerrada", "cerrado", "tem", "é", "estava",
    "são", "foi", "com", "sem", "em", "na", "nas", "num", "numa", "ao", "à", "ou", "mas", "muito",
    "mais", "meu", "minha", "seu", "sua", "um", "uma", "já", "não", "sim", "até", "perto", "onde",
    "quando", "fica", "ficam", "vai", "the", "is", "are", "was", "has", "have", "at", "in", "on",
    "to", "for", "with", "and", "or", "but", "my", "your", "estoy", "estou", "llegó", "chegou",
    "hoy", "hoje", "ayer", "ontem", "mañana", "amanhã", "entrega", "entregan", "entregar", "llega",
    "chega", "pedido", "quiero", "quero", "también", "também",
];

/// Words allowed inside a name without being one: "Calle de la Paz", "Rua das Flores".
#[rustfmt::skip]
const CONNECTORS: &[&str] = &[
    "de", "del", "la", "las", "los", "el", "da", "das", "do", "dos", "e", "y",
];

/// Words that introduce the house number.
#[rustfmt::skip]
const MARKERS: &[&str] = &[
    "#", "no.", "no", "nº", "n°", "n.º", "n.", "nro.", "nro", "núm.", "num.", "número", "numero",
    "n",
];

/// Words that say the number after a name is not a house number ("calle 5 minutos").
#[rustfmt::skip]
const UNITS: &[&str] = &[
    "horas", "hora", "hrs", "h", "minutos", "min", "mins", "días", "dias", "dia", "día", "veces",
    "km", "metros", "m", "cuadras", "quadras", "blocks", "pm", "am", "unidades", "un", "ud", "uds",
    "pesos", "reais", "euros", "x", "años", "anos", "meses", "semanas", "minutes", "hours", "days",
    "%",
];

fn is_in(list: &[&str], w: &[u8]) -> bool {
    let mut buf = [0u8; 24];
    let l = lower(w, &mut buf);
    list.iter().any(|s| s.as_bytes() == l)
}

fn capitalised(text: &str, s: usize) -> bool {
    text[s..].chars().next().is_some_and(char::is_uppercase)
}

/// Eats a house-number marker ("#", "No.", "nº") without demanding a word end after it.
fn marker(c: &mut Cursor<'_>) -> bool {
    let save = *c;
    if c.eat(b'#') {
        return true;
    }
    if let Some((s, e)) = c.letters() {
        let mut end = e;
        // Take "º"/"°" and a dot that belong to the marker.
        for tail in ["º", "°", ".º", "."] {
            if c.b[end..].starts_with(tail.as_bytes()) {
                end += tail.len();
                break;
            }
        }
        if is_in(MARKERS, &c.b[s..end]) || is_in(MARKERS, &c.b[s..e]) {
            c.pos = end;
            // "No." directly followed by a letter is a word, not a marker.
            if !c.peek().is_some_and(|n| n.is_ascii_alphabetic()) {
                return true;
            }
        }
    }
    *c = save;
    false
}

/// A plate or house number: 1–`max` digits, optionally a letter ("12B"), optionally "bis".
fn house_number(c: &mut Cursor<'_>, max: usize) -> bool {
    let save = *c;
    let Some((s, e)) = c.digits() else {
        return false;
    };
    if e - s > max {
        *c = save;
        return false;
    }
    // A glued letter or two ("12B", "40A"), but not a word ("12horas").
    let t = *c;
    if let Some((ls, le)) = c.alnum()
        && le - ls > 1
        && !c.b[ls..le].eq_ignore_ascii_case(b"bis")
    {
        *c = t;
        // "12hs": not a house number at all.
        *c = save;
        return false;
    }
    let t = *c;
    c.skip_spaces();
    if !c.eat_word_ci("bis") {
        *c = t;
    }
    true
}

/// "3º B", "2ºA", "1º izq", "4º 2ª", "1.º Dto".
fn floor(c: &mut Cursor<'_>) -> bool {
    let save = *c;
    let Some((s, e)) = c.digits() else {
        return false;
    };
    if e - s > 2 {
        *c = save;
        return false;
    }
    c.eat(b'.');
    let mut ord = false;
    for o in ["º", "ª", "°"] {
        if c.b[c.pos..].starts_with(o.as_bytes()) {
            c.pos += o.len();
            ord = true;
            break;
        }
    }
    if !ord {
        *c = save;
        return false;
    }
    let t = *c;
    c.skip_spaces();
    let side = |c: &mut Cursor<'_>| -> bool {
        let t = *c;
        if let Some((s, e)) = c.alnum() {
            let w = &c.b[s..e];
            let mut buf = [0u8; 24];
            let l = lower(w, &mut buf);
            let ok = (w.len() == 1 && w[0].is_ascii_alphabetic())
                || matches!(
                    l,
                    b"izq"
                        | b"izda"
                        | b"izquierda"
                        | b"dcha"
                        | b"dcho"
                        | b"der"
                        | b"dere"
                        | b"derecha"
                        | b"drcha"
                        | b"esq"
                        | b"esquerdo"
                        | b"dto"
                        | b"dir"
                        | b"direito"
                        | b"frente"
                        | b"fte"
                        | b"ctro"
                        | b"centro"
                        | b"andar"
                        | b"piso"
                );
            if ok {
                c.eat(b'.');
                return true;
            }
            // "2ª" (door number with ordinal).
            if w.iter().all(u8::is_ascii_digit) && w.len() <= 2 {
                for o in ["ª", "º"] {
                    if c.b[c.pos..].starts_with(o.as_bytes()) {
                        c.pos += o.len();
                        return true;
                    }
                }
            }
        }
        *c = t;
        false
    };
    if !side(c) {
        *c = t;
    }
    true
}

#[rustfmt::skip]
const COMPLEMENTS: &[&str] = &[
    "apto", "apt", "apartamento", "ap", "int", "interior", "torre", "casa", "of", "oficina",
    "piso", "bloque", "bl", "local", "lc", "edificio", "edif", "conjunto", "manzana", "mz",
    "bloco", "sala", "conj", "cj", "andar", "loja", "lote", "lt", "puerta", "pta", "esc",
    "escalera", "dto", "esq", "suite", "ste", "unit", "fl", "floor", "rm", "room", "depto", "dpto",
    "departamento",
];
const BARE_COMPLEMENTS: &[&str] = &["bajo", "ático", "atico", "fundos", "r/c", "entlo", "sótano"];

/// Apartment, floor, tower, suite… after the house number. Returns where they end.
fn complements(c: &mut Cursor<'_>) -> usize {
    let mut end = c.pos;
    for _ in 0..3 {
        let mut t = *c;
        t.skip_spaces();
        let _ = t.eat(b',') || t.eat(b'-');
        t.skip_spaces();
        if floor(&mut t) {
            *c = t;
            end = c.pos;
            continue;
        }
        if t.eat_word_ci("r/c") {
            *c = t;
            end = c.pos;
            continue;
        }
        let word = if t.eat(b'#') {
            Some(&b"#"[..])
        } else {
            t.letters().map(|(s, e)| &t.b[s..e])
        };
        let Some(w) = word else { break };
        if is_in(BARE_COMPLEMENTS, w) {
            *c = t;
            end = c.pos;
            continue;
        }
        if w != b"#" && !is_in(COMPLEMENTS, w) {
            break;
        }
        t.eat(b'.');
        t.skip_spaces();
        let _ = t.eat(b'#') || t.eat(b':');
        t.skip_spaces();
        match t.alnum() {
            Some((s, e)) if e - s <= 6 => {
                // "2-301" (tower-apartment).
                if t.peek() == Some(b'-') && t.peek_at(1).is_some_and(|d| d.is_ascii_digit()) {
                    t.pos += 1;
                    let _ = t.alnum();
                }
                // The value must be a number or a short code, not a word like "casa grande".
                let v = &t.b[s..e];
                if v.iter().any(u8::is_ascii_digit) || v.len() <= 2 {
                    *c = t;
                    end = c.pos;
                    continue;
                }
                break;
            }
            _ => break,
        }
    }
    c.pos = end;
    end
}

/// What may follow a Colombian street or plate number: a spaced letter ("45 A"), "bis", and a
/// cardinal point ("Sur", "Este").
fn street_letters(c: &mut Cursor<'_>) {
    for _ in 0..3 {
        let t = *c;
        c.skip_spaces();
        let single = c.peek().is_some_and(|l| l.is_ascii_alphabetic())
            && c.peek_at(1)
                .is_none_or(|n| !n.is_ascii_alphanumeric() && n < 0x80)
            && c.peek()
                .is_some_and(|l| matches!(l.to_ascii_uppercase(), b'A'..=b'H'));
        if single {
            c.pos += 1;
            continue;
        }
        if !(c.eat_word_ci("bis")
            || c.eat_word_ci("sur")
            || c.eat_word_ci("este")
            || c.eat_word_ci("norte")
            || c.eat_word_ci("oeste"))
        {
            *c = t;
            break;
        }
    }
}

/// "Dr.", "Prof.", "Brig.": a short word's abbreviation dot belongs to the name.
fn abbreviation_dot(c: &mut Cursor<'_>, word_len: usize) {
    if word_len <= 5 && c.peek() == Some(b'.') && c.peek_at(1) == Some(b' ') {
        c.pos += 1;
    }
}

/// After the street type: Colombian plate grammar, else name-then-number grammar.
fn prefix_street(ctx: &Ctx<'_>, k: &KwMatch, strong: bool) -> Option<usize> {
    let mut c = Cursor::new(ctx.text, k.end);
    c.eat(b'.');
    if let Some(e) = colombian(c) {
        return Some(e);
    }
    named(c, strong)
}

/// "45 # 12-34", "7 No. 72-41 apto 501", "Boyacá #12B-30", "40A Sur 24-10".
fn colombian(mut c: Cursor<'_>) -> Option<usize> {
    c.skip_spaces();
    let numeric = c.peek().is_some_and(|d| d.is_ascii_digit());
    if numeric {
        if !house_number(&mut c, 3) {
            return None;
        }
        street_letters(&mut c);
    } else {
        let mut words = 0;
        let mut tokens = 0;
        loop {
            let t = c;
            if tokens > 0 && c.skip_spaces() == 0 {
                break;
            }
            tokens += 1;
            let Some((s, e)) = c.letters() else {
                // "Av. Calle 26 # 69-76": a street type used as a name takes its number.
                if words > 0 && house_number(&mut c, 3) {
                    street_letters(&mut c);
                    break;
                }
                c = t;
                break;
            };
            let w = &c.b[s..e];
            if is_in(MARKERS, w) || is_in(STOP, w) {
                c = t;
                break;
            }
            abbreviation_dot(&mut c, e - s);
            if !is_in(CONNECTORS, w) {
                words += 1;
            }
            if words >= 4 {
                break;
            }
        }
        if words == 0 {
            return None;
        }
    }
    c.skip_spaces();
    let had_marker = marker(&mut c);
    if !had_marker && !numeric {
        return None;
    }
    c.skip_spaces();
    if !house_number(&mut c, 3) {
        return None;
    }
    street_letters(&mut c);
    c.skip_spaces();
    if !(c.eat(b'-')
        || c.b[c.pos..].starts_with("–".as_bytes()) && {
            c.pos += "–".len();
            true
        })
    {
        return None;
    }
    c.skip_spaces();
    let (s, e) = c.digits()?;
    if e - s > 3 {
        return None;
    }
    // "12-34B"? a glued single letter is part of it; a word is not.
    if let Some((ls, le)) = c.alnum()
        && le - ls > 1
    {
        return None;
    }
    let t = c;
    c.skip_spaces();
    if !(c.eat_word_ci("sur") || c.eat_word_ci("este")) {
        c = t;
    }
    Some(complements(&mut c))
}

/// "das Flores, 123", "Mayor 12, 3º B", "de Alcalá 45", "Paulista, 1578 - apto 42".
fn named(mut c: Cursor<'_>, strong: bool) -> Option<usize> {
    let text = c.text;
    c.eat(b'/');
    let mut words = 0;
    let mut cap = false;
    let mut tokens = 0;
    loop {
        let t = c;
        let spaces = c.skip_spaces();
        if tokens > 0 && spaces == 0 {
            break;
        }
        if let Some((s, e)) = c.letters() {
            let w = &c.b[s..e];
            if is_in(STOP, w) || is_in(MARKERS, w) {
                c = t;
                break;
            }
            abbreviation_dot(&mut c, e - s);
            if !is_in(CONNECTORS, w) {
                words += 1;
                cap |= capitalised(text, s);
            }
        } else if let Some((_, e)) = c.digits() {
            // "Rua 25 de Março": a number is a name only when "de" follows.
            let mut la = Cursor::new(text, e);
            la.skip_spaces();
            if !la.eat_word_ci("de") {
                c = t;
                break;
            }
            words += 1;
        } else {
            c = t;
            break;
        }
        tokens += 1;
        if tokens >= 7 {
            return None;
        }
    }
    if words == 0 {
        return None;
    }
    c.skip_spaces();
    let comma = c.eat(b',');
    c.skip_spaces();
    if marker(&mut c) {
        c.skip_spaces();
    }
    let num_start = c.pos;
    if c.eat_word_ci("s/n") {
        // sin número / sem número
    } else if !house_number(&mut c, 5) {
        return None;
    }
    // The number must end there: not "12/03", "3.5", "10:30", "2,5".
    if matches!(c.peek(), Some(b'/' | b'.' | b':' | b',' | b'%'))
        && c.peek_at(1).is_some_and(|d| d.is_ascii_digit())
    {
        return None;
    }
    let after_num = c.pos;
    let mut la = c;
    la.skip_spaces();
    if let Some((s, e)) = la.letters()
        && is_in(UNITS, &la.b[s..e])
    {
        return None;
    }
    if la.peek() == Some(b'%') {
        return None;
    }
    let end = complements(&mut c);
    let has_complement = end > after_num;
    let _ = num_start;
    (cap || comma || has_complement || (strong && words <= 3)).then_some(end)
}

/// "123 Main St Apt 4B": from the suffix back to the house number, then forward to the unit.
fn suffix_street(ctx: &Ctx<'_>, k: &KwMatch, abbrev: bool) -> Option<(usize, usize)> {
    let b = ctx.b;
    let text = ctx.text;
    let mut p = k.start;
    let mut names = 0;
    let mut all_cap = true;
    let start = loop {
        let mut q = p;
        while q > 0 && b[q - 1] == b' ' {
            q -= 1;
        }
        if q == p || q == 0 {
            return None;
        }
        let mut s = q;
        while s > 0 && (b[s - 1].is_ascii_alphanumeric() || b[s - 1] >= 0x80) {
            s -= 1;
        }
        if s == q || !text.is_char_boundary(s) || !word_start(text, s) {
            return None;
        }
        let tok = &b[s..q];
        let digits = tok.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == tok.len()
            || (digits + 1 == tok.len()
                && tok[digits].is_ascii_alphabetic()
                && digits > 0
                && names > 0)
        {
            // House number ("123", "221B"), or a numbered street name only if followed by
            // an ordinal (handled below).
            // A house number stands alone: not the tail of "4587-2231" or "#12".
            if names == 0 || digits > 6 || (s > 0 && matches!(b[s - 1], b'-' | b'.' | b'/' | b'#'))
            {
                return None;
            }
            break s;
        }
        let ordinal = digits > 0
            && digits + 2 == tok.len()
            && matches!(
                lower(&tok[digits..], &mut [0u8; 24]),
                b"st" | b"nd" | b"rd" | b"th"
            );
        if !ordinal {
            if digits > 0 || is_in(STOP, tok) {
                return None;
            }
            let mut buf = [0u8; 24];
            let l = lower(tok, &mut buf);
            if matches!(
                l,
                b"the"
                    | b"a"
                    | b"an"
                    | b"by"
                    | b"of"
                    | b"i"
                    | b"you"
                    | b"it"
                    | b"this"
                    | b"that"
                    | b"from"
                    | b"me"
                    | b"per"
                    | b"please"
                    | b"near"
                    | b"our"
                    | b"we"
            ) {
                return None;
            }
            all_cap &= capitalised(text, s);
        }
        names += 1;
        if names > 4 {
            return None;
        }
        p = s;
    };
    if !abbrev && !all_cap && names > 2 {
        return None;
    }
    // Forward: ".", direction, unit.
    let mut c = Cursor::new(text, k.end);
    c.eat(b'.');
    let t = c;
    if c.skip_spaces() > 0 {
        let mut ok = false;
        for d in ["NW", "NE", "SW", "SE", "N", "S", "E", "W"] {
            let e = c.pos + d.len();
            if c.b.get(c.pos..e) == Some(d.as_bytes())
                && c.b.get(e).is_none_or(|n| !n.is_ascii_alphanumeric())
            {
                c.pos = e;
                c.eat(b'.');
                ok = true;
                break;
            }
        }
        if !ok {
            c = t;
        }
    } else {
        c = t;
    }
    let end = complements(&mut c);
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(t: &str) -> Vec<&str> {
        crate::pii::detectors::detect_texts(t, find)
    }

    #[test]
    fn finds_addresses_in_each_countrys_style() {
        for (t, want) in [
            ("vivo en la Calle 45 # 12-34, Bogotá", "Calle 45 # 12-34"),
            ("Cra 7 No. 72-41 apto 501", "Cra 7 No. 72-41 apto 501"),
            (
                "Av. Boyacá #12B-30 torre 2 apto 301.",
                "Av. Boyacá #12B-30 torre 2 apto 301",
            ),
            ("dg 40A sur # 24-10", "dg 40A sur # 24-10"),
            ("calle 80 12-34", "calle 80 12-34"),
            ("Rua das Flores, 123 - Centro", "Rua das Flores, 123"),
            (
                "Av. Paulista, 1578 - apto 42",
                "Av. Paulista, 1578 - apto 42",
            ),
            ("rua augusta 1500 ap 12", "rua augusta 1500 ap 12"),
            ("Rua XV de Novembro, 300", "Rua XV de Novembro, 300"),
            ("Rua 25 de Março, 1000", "Rua 25 de Março, 1000"),
            ("C/ Mayor 12, 3º B, Madrid", "C/ Mayor 12, 3º B"),
            ("Calle de Alcalá 45", "Calle de Alcalá 45"),
            ("Rua do Ouro 45, 2º Esq", "Rua do Ouro 45, 2º Esq"),
            ("I live at 123 Main St Apt 4B", "123 Main St Apt 4B"),
            (
                "1600 Pennsylvania Avenue NW, Washington",
                "1600 Pennsylvania Avenue NW",
            ),
            ("ship to 350 5th Ave, Suite 200", "350 5th Ave, Suite 200"),
            ("42 oak st", "42 oak st"),
            ("ship to 1133 Main Pl. Thx", "1133 Main Pl."),
            ("KR 68 D # 24 - 10 int 3", "KR 68 D # 24 - 10 int 3"),
            ("Calle 45 A bis # 12 B - 34", "Calle 45 A bis # 12 B - 34"),
            ("Av. Calle 26 # 69-76, Bogotá", "Av. Calle 26 # 69-76"),
            (
                "en Av. El Dorado N°133-32 of 570.",
                "Av. El Dorado N°133-32 of 570",
            ),
            ("Rua Dr. Arnaldo, 455", "Rua Dr. Arnaldo, 455"),
            (
                "Av. Brig. Faria Lima, 3477 - 14º andar",
                "Av. Brig. Faria Lima, 3477 - 14º andar",
            ),
        ] {
            assert_eq!(addrs(t), vec![want], "{t}");
        }
    }

    #[test]
    fn street_words_without_a_house_number_are_not_addresses() {
        for t in [
            "la calle está cerrada",
            "en la calle hay 3 perros",
            "tomé la Avenida 68 hasta el centro",
            "la tienda de la Av. Chile",
            "la calle principal 5 minutos",
            "2 questions by the way",
            "cita con el Dr. Pérez",
            "compré 2 St. Ives",
            "el TV 55 pulgadas",
            "Recogí en el CC Andino local 204",
            "en la calle 93 con 15 hay un trancón",
            "na Av. Paulista tem 2 lojas",
            "I live on Main St",
        ] {
            assert!(addrs(t).is_empty(), "{t}: {:?}", addrs(t));
        }
    }
}
