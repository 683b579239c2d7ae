//! Dates of birth. A date is personal data only when the message says it is a birth date, so
//! this detector is anchored on birth words ("nací el", "fecha de nacimiento", "data de
//! nascimento", "born on", "DOB", "cumpleaños") and looks for a full date (with a year) a few
//! words after one. The finding is the date alone.
//!
//! Understood forms: 15/03/1990, 15-03-90, 15.03.1990, 1990-03-15, 03/15/1990, "15 de marzo de
//! 1990", "15 de março de 1990", "March 15, 1990", "15th of March 1990", "15 Mar 1990".
//! Delivery dates and other plain dates ("entrega el 15/03/2024") are left alone.

use crate::pii::detectors::numeric::val;
use crate::pii::keywords::Kw;
use crate::pii::text::{Cursor, lower};
use crate::pii::{Ctx, Found, PiiType};

/// How many words may sit between the birth word and the date ("nací en Cali el 3/4/1990").
const MAX_GAP_WORDS: usize = 4;

/// Adds every date of birth in the message.
pub fn find(ctx: &Ctx<'_>, found: &mut Found) {
    for k in ctx
        .kws
        .iter()
        .filter(|k| matches!(k.kind, Kw::Dob | Kw::Birthday))
    {
        if k.kind == Kw::Birthday && is_event(ctx.b, k.start) {
            continue;
        }
        let mut c = Cursor::new(ctx.text, k.end);
        let mut words = 0;
        loop {
            c.skip_spaces();
            while matches!(c.peek(), Some(b':' | b',' | b'-' | b'=' | b'(' | b'"')) {
                c.pos += 1;
                c.skip_spaces();
            }
            if let Some((s, e)) = parse_date(ctx.text, c.pos) {
                if found.covering(s).is_none() {
                    found.push(s, e, PiiType::Dob);
                }
                break;
            }
            if words >= MAX_GAP_WORDS || c.letters().is_none() {
                break;
            }
            words += 1;
        }
    }
}

/// Words that make a birthday an event: "la fiesta de cumpleaños", "birthday party", "regalo
/// de cumpleaños". Checked in the few words around the birthday word.
const EVENT: &[&[u8]] = &[
    b"fiesta",
    b"festa",
    b"party",
    b"celebraci",
    b"comemora",
    b"regalo",
    b"presente",
    b"gift",
    b"present",
    b"torta",
    b"bolo",
    b"cake",
    b"evento",
    b"event",
    b"sorpresa",
    b"surpresa",
];

fn is_event(b: &[u8], kw_start: usize) -> bool {
    let from = kw_start.saturating_sub(24);
    let to = (kw_start + 40).min(b.len());
    let mut buf = [0u8; 64];
    let n = (to - from).min(64);
    for (d, s) in buf.iter_mut().zip(&b[from..from + n]) {
        *d = s.to_ascii_lowercase();
    }
    let hay = &buf[..n];
    EVENT.iter().any(|w| hay.windows(w.len()).any(|x| x == *w))
}

const MONTHS: &[(&str, u8)] = &[
    ("enero", 1),
    ("febrero", 2),
    ("marzo", 3),
    ("abril", 4),
    ("mayo", 5),
    ("junio", 6),
    ("julio", 7),
    ("agosto", 8),
    ("septiembre", 9),
    ("setiembre", 9),
    ("octubre", 10),
    ("noviembre", 11),
    ("diciembre", 12),
    ("janeiro", 1),
    ("fevereiro", 2),
    ("março", 3),
    ("marco", 3),
    ("maio", 5),
    ("junho", 6),
    ("julho", 7),
    ("setembro", 9),
    ("outubro", 10),
    ("novembro", 11),
    ("dezembro", 12),
    ("january", 1),
    ("february", 2),
    ("march", 3),
    ("april", 4),
    ("may", 5),
    ("june", 6),
    ("july", 7),
    ("august", 8),
    ("september", 9),
    ("october", 10),
    ("november", 11),
    ("december", 12),
    ("ene", 1),
    ("feb", 2),
    ("mar", 3),
    ("abr", 4),
    ("jun", 6),
    ("jul", 7),
    ("ago", 8),
    ("sep", 9),
    ("sept", 9),
    ("set", 9),
    ("oct", 10),
    ("out", 10),
    ("nov", 11),
    ("dic", 12),
    ("dez", 12),
    ("jan", 1),
    ("fev", 2),
    ("mai", 5),
    ("apr", 4),
    ("aug", 8),
    ("dec", 12),
];

fn month_at(c: &mut Cursor<'_>) -> Option<u8> {
    let save = *c;
    let (s, e) = c.letters()?;
    let mut buf = [0u8; 24];
    let w = lower(&c.b[s..e], &mut buf);
    // "Março" has a non-ASCII letter; lower() only folds ASCII, which is enough for "MARÇO"
    // to miss, but all-caps months are rare in chat.
    if let Some(&(_, m)) = MONTHS.iter().find(|(n, _)| n.as_bytes() == w) {
        c.eat(b'.');
        return Some(m);
    }
    *c = save;
    None
}

fn num(c: &mut Cursor<'_>, min: usize, max: usize) -> Option<u32> {
    let save = *c;
    let (s, e) = c.digits()?;
    if e - s < min || e - s > max {
        *c = save;
        return None;
    }
    Some(val(&c.b[s..e]))
}

fn ordinal_suffix(c: &mut Cursor<'_>) {
    for suf in ["st", "nd", "rd", "th", "º", "°", "o"] {
        if c.eat_word_ci(suf) {
            return;
        }
    }
}

fn year_ok(y: u32, digits4: bool) -> bool {
    !digits4 || (1900..=2030).contains(&y)
}

/// A full date starting exactly at `pos`; returns its byte range.
pub fn parse_date(text: &str, pos: usize) -> Option<(usize, usize)> {
    let mut c = Cursor::new(text, pos);
    if pos > 0 && c.b[pos - 1].is_ascii_digit() {
        return None;
    }
    // Numeric forms.
    let save = c;
    if let Some((s, e)) = c.digits() {
        let a_len = e - s;
        let a = val(&c.b[s..e]);
        if let Some(sep @ (b'/' | b'-' | b'.')) = c.peek() {
            c.pos += 1;
            let b_ = num(&mut c, 1, 2);
            if let Some(b_) = b_
                && c.eat(sep)
                && let Some((ys, ye)) = c.digits()
            {
                let y_len = ye - ys;
                let y = val(&c.b[ys..ye]);
                let end_ok = c.peek().is_none_or(|n| !n.is_ascii_alphanumeric())
                    && !(matches!(c.peek(), Some(b'/' | b'-' | b'.'))
                        && c.peek_at(1).is_some_and(|n| n.is_ascii_digit()));
                if end_ok {
                    let dmy = (1..=2).contains(&a_len)
                        && (y_len == 2 || y_len == 4)
                        && year_ok(y, y_len == 4)
                        && ((1..=31).contains(&a) && (1..=12).contains(&b_)
                            || (1..=12).contains(&a) && (1..=31).contains(&b_));
                    let ymd = a_len == 4
                        && year_ok(a, true)
                        && (1..=12).contains(&b_)
                        && (1..=2).contains(&y_len)
                        && (1..=31).contains(&y);
                    if dmy || ymd {
                        return Some((pos, c.pos));
                    }
                }
            }
        }
        // "15 de marzo de 1990", "15th of March, 1990", "15 Mar 1990".
        c = save;
        let _ = c.digits();
        if a_len <= 2 && (1..=31).contains(&a) {
            ordinal_suffix(&mut c);
            c.skip_spaces();
            let _ = c.eat_word_ci("de") || c.eat_word_ci("of");
            c.skip_spaces();
            if month_at(&mut c).is_some() {
                c.skip_spaces();
                let _ = c.eat(b',');
                c.skip_spaces();
                let _ = c.eat_word_ci("del") || c.eat_word_ci("de");
                c.skip_spaces();
                if let Some(y) = num(&mut c, 4, 4)
                    && year_ok(y, true)
                {
                    return Some((pos, c.pos));
                }
            }
        }
        return None;
    }
    // "March 15, 1990", "Mar 15th 1990".
    c = save;
    month_at(&mut c)?;
    c.skip_spaces();
    let d = num(&mut c, 1, 2)?;
    if !(1..=31).contains(&d) {
        return None;
    }
    ordinal_suffix(&mut c);
    let _ = c.eat(b',');
    c.skip_spaces();
    let y = num(&mut c, 4, 4)?;
    year_ok(y, true).then_some((pos, c.pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dobs(t: &str) -> Vec<&str> {
        crate::pii::detectors::detect_texts(t, find)
    }

    #[test]
    fn long_digit_runs_after_a_birth_word_do_not_overflow() {
        for t in [
            "DOB 087820518386926753",
            "fecha de nacimiento: 99999999999/1/1990",
            "nací el 4294967296-01-90",
        ] {
            let _ = dobs(t);
        }
    }

    #[test]
    fn finds_birth_dates_after_birth_words() {
        for (t, want) in [
            ("nací el 15/03/1990", "15/03/1990"),
            ("Fecha de nacimiento: 1987-11-02.", "1987-11-02"),
            ("data de nascimento 12.04.1992", "12.04.1992"),
            ("I was born on March 3, 1985 in Ohio", "March 3, 1985"),
            ("DOB 03/15/1985", "03/15/1985"),
            (
                "mi cumpleaños es el 15 de marzo de 1990",
                "15 de marzo de 1990",
            ),
            ("nasci em 3 de março de 2001", "3 de março de 2001"),
            ("nací en Cali el 7/8/88", "7/8/88"),
            ("born 15th of March 1990", "15th of March 1990"),
        ] {
            assert_eq!(dobs(t), vec![want], "{t}");
        }
    }

    #[test]
    fn leaves_other_dates_alone() {
        for t in [
            "entrega el 15/03/2024",
            "el pedido llegó 2024-05-12",
            "cumpleaños de mi mamá el 20/05",
            "la fiesta de cumpleaños es el 20/05/2025",
            "the birthday party is on 10/11/2025",
            "a festa de aniversário é dia 11/09/2025",
            "nací en Cali y vivo en Bogotá desde hace muchos años, el pedido 15/03/2024",
            "DOB 32/13/1990",
            "fecha de nacimiento 15/03/1990/2",
        ] {
            assert!(dobs(t).is_empty(), "{t}");
        }
    }
}
