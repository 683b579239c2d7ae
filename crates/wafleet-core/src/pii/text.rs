//! Byte-level helpers the detectors share: character classes, word boundaries that understand
//! UTF-8 letters ("¿Calle", "Boyacá"), and a small cursor for hand-written grammars.
//!
//! Detectors work on `&[u8]` so that scanning is branch-cheap and can never split a code point
//! by accident: every position they return is either an ASCII byte or the end of a whole word,
//! and [`char_floor`]/[`char_ceil`] are the last line of defence before a span leaves the module.

/// ASCII letter or digit.
#[inline]
pub fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// The character that ends right before byte `i`, if `i` is a character boundary.
pub fn char_before(text: &str, i: usize) -> Option<char> {
    text.get(..i).and_then(|s| s.chars().next_back())
}

/// The character that starts at byte `i`, if `i` is a character boundary.
pub fn char_at(text: &str, i: usize) -> Option<char> {
    text.get(i..).and_then(|s| s.chars().next())
}

/// Whether a word may start at `i`: the previous character is not alphanumeric (any script).
pub fn word_start(text: &str, i: usize) -> bool {
    i == 0 || char_before(text, i).is_none_or(|c| !c.is_alphanumeric())
}

/// Whether a word may end at `i`: the next character is not alphanumeric (any script).
pub fn word_end(text: &str, i: usize) -> bool {
    i >= text.len() || char_at(text, i).is_none_or(|c| !c.is_alphanumeric())
}

/// The Unicode space separators other than the ASCII space: no-break (U+00A0), the typographic
/// spaces (U+2000–U+200A, among them the figure and thin spaces), narrow no-break (U+202F, the
/// French digit grouping), medium mathematical (U+205F), ideographic (U+3000) and Ogham (U+1680).
fn is_unicode_space(c: char) -> bool {
    matches!(
        c,
        '\u{A0}' | '\u{1680}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}'
    )
}

/// The Unicode dashes other than the ASCII hyphen-minus: hyphen and non-breaking hyphen
/// (U+2010, U+2011), figure, en and em dash (U+2012–U+2014), minus (U+2212), small and fullwidth
/// hyphen-minus (U+FE63, U+FF0D).
fn is_unicode_dash(c: char) -> bool {
    matches!(
        c,
        '\u{2010}'..='\u{2014}' | '\u{2212}' | '\u{FE63}' | '\u{FF0D}'
    )
}

/// `text` with every Unicode space separator replaced by one ASCII space and every Unicode dash by
/// one `-`, and for each byte offset of that copy (its length included) the offset in `text` it
/// came from; `None` when `text` has neither (the common case, at the cost of one scan of a
/// non-ASCII text).
pub fn with_ascii_separators(text: &str) -> Option<(String, Vec<usize>)> {
    if text.is_ascii()
        || !text
            .chars()
            .any(|c| is_unicode_space(c) || is_unicode_dash(c))
    {
        return None;
    }
    let mut plain = String::with_capacity(text.len());
    let mut origin = Vec::with_capacity(text.len() + 1);
    for (i, c) in text.char_indices() {
        if is_unicode_space(c) {
            plain.push(' ');
            origin.push(i);
        } else if is_unicode_dash(c) {
            plain.push('-');
            origin.push(i);
        } else {
            plain.push(c);
            origin.extend(i..i + c.len_utf8());
        }
    }
    origin.push(text.len());
    Some((plain, origin))
}

/// Largest character boundary ≤ `i`.
pub fn char_floor(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Smallest character boundary ≥ `i`.
pub fn char_ceil(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// A read position over the input with the few moves our grammars need. Every method either
/// advances and returns what it read, or leaves the position untouched and returns `None`.
#[derive(Clone, Copy)]
pub struct Cursor<'a> {
    pub text: &'a str,
    pub b: &'a [u8],
    pub pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(text: &'a str, pos: usize) -> Self {
        Cursor {
            text,
            b: text.as_bytes(),
            pos,
        }
    }

    pub fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    pub fn peek_at(&self, k: usize) -> Option<u8> {
        self.b.get(self.pos + k).copied()
    }

    /// Skips spaces and tabs (not newlines: a new line is a new thought in a chat message).
    pub fn skip_spaces(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Consumes `c` if it is next.
    pub fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Consumes the ordinal sign of "nº" / "n°" if it is next.
    pub fn eat_ordinal(&mut self) {
        for o in ["º", "°"] {
            if self.b[self.pos..].starts_with(o.as_bytes()) {
                self.pos += o.len();
            }
        }
    }

    /// Consumes an ASCII-case-insensitive literal if it is next and ends a word.
    pub fn eat_word_ci(&mut self, lit: &str) -> bool {
        let l = lit.as_bytes();
        let end = self.pos + l.len();
        if end <= self.b.len()
            && self.b[self.pos..end].eq_ignore_ascii_case(l)
            && (!l.last().is_some_and(|&c| is_alnum(c) || c >= 0x80) || word_end(self.text, end))
        {
            self.pos = end;
            true
        } else {
            false
        }
    }

    /// Reads a run of ASCII digits.
    pub fn digits(&mut self) -> Option<(usize, usize)> {
        let s = self.pos;
        let mut e = s;
        while e < self.b.len() && self.b[e].is_ascii_digit() {
            e += 1;
        }
        if e > s {
            self.pos = e;
            Some((s, e))
        } else {
            None
        }
    }

    /// Reads a word of letters (ASCII or any non-ASCII character), no digits.
    pub fn letters(&mut self) -> Option<(usize, usize)> {
        let s = self.pos;
        let mut e = s;
        while e < self.b.len() {
            let c = self.b[e];
            if c.is_ascii_alphabetic() {
                e += 1;
            } else if c >= 0x80 {
                // Take the whole character, and only if it is a letter (º, ª, « are not).
                let ch = match char_at(self.text, e) {
                    Some(ch) => ch,
                    None => break,
                };
                if !ch.is_alphabetic() || matches!(ch, 'º' | 'ª') {
                    break;
                }
                e += ch.len_utf8();
            } else {
                break;
            }
        }
        if e > s {
            self.pos = e;
            Some((s, e))
        } else {
            None
        }
    }

    /// Reads a run of ASCII letters and digits.
    pub fn alnum(&mut self) -> Option<(usize, usize)> {
        let s = self.pos;
        let mut e = s;
        while e < self.b.len() && is_alnum(self.b[e]) {
            e += 1;
        }
        if e > s {
            self.pos = e;
            Some((s, e))
        } else {
            None
        }
    }
}

/// ASCII-lowercases a short slice into a stack buffer, for keyword comparisons without
/// allocating. Longer words come back truncated, which only makes them compare unequal.
pub fn lower<'b>(src: &[u8], buf: &'b mut [u8; 24]) -> &'b [u8] {
    let n = src.len().min(buf.len());
    for (d, s) in buf.iter_mut().zip(&src[..n]) {
        *d = s.to_ascii_lowercase();
    }
    &buf[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_understand_accented_letters_and_spanish_punctuation() {
        let t = "¿Calle Boyacá?";
        let calle = t.find("Calle").unwrap();
        assert!(word_start(t, calle));
        assert!(word_end(t, t.find('?').unwrap()));
        let a = t.find("á").unwrap();
        assert!(!word_end(t, a));
        assert_eq!(char_floor(t, a + 1), a);
        assert_eq!(char_ceil(t, a + 1), a + 2);
    }

    #[test]
    fn cursor_reads_words_digits_and_literals() {
        let mut c = Cursor::new("Boyacá 12B-30", 0);
        assert_eq!(c.letters(), Some((0, 7)));
        c.skip_spaces();
        assert_eq!(c.digits(), Some((8, 10)));
        assert!(!c.eat_word_ci("bis"));
        assert!(c.eat_word_ci("b"));
        assert!(c.eat(b'-'));
        assert_eq!(c.alnum(), Some((12, 14)));
        let mut c = Cursor::new("3º B", 1);
        assert_eq!(c.letters(), None);
    }
}
