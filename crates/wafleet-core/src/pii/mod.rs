//! # PII redaction
//!
//! Finds personal data and secrets in customer messages (Spanish, Portuguese, English; Colombia, Brazil,
//! Mexico, Spain, Portugal, the US) and replaces each finding with a typed placeholder such as
//! `[PHONE]`, before the text is stored or sent to a model.
//!
//! It owns the decision "is this personal data?" and nothing else: no I/O, no logging of the
//! text, no allocation when a message is clean beyond the one copy [`Redactor::redact`] returns.
//!
//! ## How it works
//! One [`Redactor`] is built at start-up (it compiles an Aho-Corasick automaton of context
//! words) and shared. Each message goes through cheap prefilters first (is there a digit, an
//! `@`, a `://`?) and then through detectors in priority order; each detector only claims bytes
//! nobody claimed before it, so spans never overlap:
//!
//! 1. `detectors::url` — URLs carrying `user:password@` or token/key/secret parameters;
//! 2. `detectors::email`, then `detectors::secret` — passwords, PINs, CVVs, one-time codes
//!    after the word that names them (the only detector that also runs on messages without a
//!    digit, `@` or `://`);
//! 3. `detectors::iban` — mod-97 checked; then `detectors::mx` — Mexico's CURP and RFC by
//!    their check characters, and the CLABE (18-digit bank account) by its check digit, after
//!    "CLABE"/"SPEI" or, bare, when it starts with a major bank's code;
//! 4. `detectors::ip` — IPv6 (IPv4 is found with the other numbers);
//! 5. cards, in `detectors::numeric` — Luhn plus issuer prefix, any grouping, *before* any
//!    context rule can claim their digits: a card number is never left in the output (one
//!    documented exception: a 13-digit number that is also a valid EAN-13, right after a product
//!    or order word, is a barcode — 13-digit cards are no longer issued);
//! 6. `detectors::dob` — dates, only right after a birth word ("nací el", "DOB");
//! 7. `detectors::idctx` — numbers right after an identity word ("cédula", "SSN"), then
//!    `detectors::passport` — letters and digits right after "pasaporte"/"passport";
//! 8. `detectors::address` — street addresses, anchored on street words;
//! 9. the rest of `detectors::numeric` — CPF/CNPJ/DNI/NIE/SSN by their check digits, IPv4,
//!    phones by numbering plan and grouping, with prices, dates, order and tracking numbers
//!    recognised and left alone.
//!
//! ## Layout
//! - [`checksums`]: Luhn, mod-97, mod-11 and mod-23 arithmetic.
//! - [`eval`]: scoring against a labelled corpus (precision, recall, leaks), for tests and the
//!   benchmark.
//! - `keywords`: the context vocabulary and its automaton.
//! - `text`: byte classes, word boundaries, a cursor for the grammars.
//! - `detectors`: one module per family of data.

pub mod checksums;
mod detectors;
pub mod eval;
mod keywords;
mod text;

use serde::{Deserialize, Serialize};

use keywords::{Keywords, Kw, KwMatch};

/// The kinds of personal data the redactor recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PiiType {
    Email,
    Phone,
    Card,
    Iban,
    /// A bank account number that is not an IBAN: Mexico's CLABE.
    BankAccount,
    NationalId,
    Ip,
    UrlCredentials,
    Dob,
    Address,
    /// A password, PIN, card security code or one-time code, after the word that names it.
    Secret,
}

impl PiiType {
    pub const ALL: [PiiType; 11] = [
        PiiType::Email,
        PiiType::Phone,
        PiiType::Card,
        PiiType::Iban,
        PiiType::BankAccount,
        PiiType::NationalId,
        PiiType::Ip,
        PiiType::UrlCredentials,
        PiiType::Dob,
        PiiType::Address,
        PiiType::Secret,
    ];

    /// The text that replaces a finding of this type, e.g. `[EMAIL]`.
    pub fn placeholder(self) -> &'static str {
        match self {
            PiiType::Email => "[EMAIL]",
            PiiType::Phone => "[PHONE]",
            PiiType::Card => "[CARD]",
            PiiType::Iban => "[IBAN]",
            PiiType::BankAccount => "[BANK_ACCOUNT]",
            PiiType::NationalId => "[NATIONAL_ID]",
            PiiType::Ip => "[IP]",
            PiiType::UrlCredentials => "[URL_CREDENTIALS]",
            PiiType::Dob => "[DOB]",
            PiiType::Address => "[ADDRESS]",
            PiiType::Secret => "[SECRET]",
        }
    }

    /// The name used in JSON and reports, e.g. `EMAIL` (same as the serde form).
    pub fn as_str(self) -> &'static str {
        match self {
            PiiType::Email => "EMAIL",
            PiiType::Phone => "PHONE",
            PiiType::Card => "CARD",
            PiiType::Iban => "IBAN",
            PiiType::BankAccount => "BANK_ACCOUNT",
            PiiType::NationalId => "NATIONAL_ID",
            PiiType::Ip => "IP",
            PiiType::UrlCredentials => "URL_CREDENTIALS",
            PiiType::Dob => "DOB",
            PiiType::Address => "ADDRESS",
            PiiType::Secret => "SECRET",
        }
    }

    /// The inverse of [`PiiType::as_str`].
    pub fn parse(s: &str) -> Option<PiiType> {
        PiiType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One finding: UTF-8 byte offsets into the *input* text, `end` exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    #[serde(rename = "type")]
    pub kind: PiiType,
}

/// A redacted message and what was taken out of it (offsets refer to the original text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redacted {
    pub text: String,
    pub spans: Vec<Span>,
}

/// The redactor. Build it once; it is `Send + Sync` and every method takes `&self`.
pub struct Redactor {
    keywords: Keywords,
    secrets: detectors::secret::Secrets,
    scheme: memchr::memmem::Finder<'static>,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new()
    }
}

impl Redactor {
    /// Compiles the context vocabulary. Takes about a millisecond; do it once.
    pub fn new() -> Self {
        Redactor {
            keywords: Keywords::new(),
            secrets: detectors::secret::Secrets::new(),
            scheme: memchr::memmem::Finder::new("://"),
        }
    }

    /// The personal data in `text`: sorted, non-overlapping, on character boundaries.
    pub fn find(&self, text: &str) -> Vec<Span> {
        // Digits grouped by a no-break or thin space (pasted from a banking app, or the French
        // way) or by an en dash or non-breaking hyphen are grouped all the same, but the
        // detectors read ASCII: they read a copy with ASCII spaces and hyphens, and the spans are
        // mapped back onto `text`.
        if let Some((plain, origin)) = text::with_ascii_separators(text) {
            let mut spans = self.find_ascii_spaced(&plain);
            for s in &mut spans {
                s.start = origin[s.start];
                s.end = origin[s.end];
            }
            return spans;
        }
        self.find_ascii_spaced(text)
    }

    fn find_ascii_spaced(&self, text: &str) -> Vec<Span> {
        let b = text.as_bytes();
        let has_at = memchr::memchr(b'@', b).is_some();
        let has_scheme = self.scheme.find(b).is_some();
        let has_digit = b.iter().any(u8::is_ascii_digit);
        if !has_digit && !has_at && !has_scheme {
            let mut found = Found::default();
            self.secrets.find(text, &mut found);
            return found.spans;
        }
        let mut found = Found::default();
        if has_scheme {
            detectors::url::find(text, &mut found);
        }
        if has_at {
            detectors::email::find(text, &mut found);
        }
        if !has_digit {
            // Passwords need no digit.
            self.secrets.find(text, &mut found);
        } else {
            let mut kws = Vec::new();
            self.keywords.find(text, &mut kws);
            let ctx = Ctx { text, b, kws: &kws };
            detectors::iban::find(&ctx, &mut found);
            detectors::mx::find(&ctx, &mut found);
            if memchr::memchr(b':', b).is_some() {
                detectors::ip::find_v6(&ctx, &mut found);
            }
            detectors::numeric::find_cards(&ctx, &mut found);
            // After the cards: "pin 4111 1111 1111 1111" is a card, not a PIN and 12 digits.
            self.secrets.find(text, &mut found);
            detectors::dob::find(&ctx, &mut found);
            detectors::idctx::find(&ctx, &mut found);
            detectors::passport::find(&ctx, &mut found);
            detectors::address::find(&ctx, &mut found);
            detectors::numeric::find_rest(&ctx, &mut found);
        }
        // Every detector stops on ASCII bytes or whole words; this is the belt to those braces.
        for s in &mut found.spans {
            s.start = text::char_floor(text, s.start);
            s.end = text::char_ceil(text, s.end);
        }
        found.spans
    }

    /// `text` with every finding replaced by its placeholder.
    pub fn redact(&self, text: &str) -> Redacted {
        let spans = self.find(text);
        if spans.is_empty() {
            return Redacted {
                text: text.to_owned(),
                spans,
            };
        }
        let mut out = String::with_capacity(text.len() + 16);
        let mut last = 0;
        for s in &spans {
            out.push_str(&text[last..s.start]);
            out.push_str(s.kind.placeholder());
            last = s.end;
        }
        out.push_str(&text[last..]);
        Redacted { text: out, spans }
    }
}

/// What the detectors share about one message: its bytes and its context words.
pub(crate) struct Ctx<'a> {
    pub text: &'a str,
    pub b: &'a [u8],
    pub kws: &'a [KwMatch],
}

impl Ctx<'_> {
    /// The context word that ends closest before `pos`, within `window` bytes, if no other
    /// number, clause break or long phrase stands between them. "Closest wins" is what makes
    /// "número de pedido 912345678" an order and "número 912345678" a phone; the gap rule keeps
    /// "pedido 123 y 3001234567" or "envío gratis. 3001234567" from calling the phone an order:
    /// a context word speaks for the one number it introduces.
    pub fn nearest_before(&self, pos: usize, window: usize) -> Option<KwMatch> {
        self.kws
            .iter()
            .rev()
            .find(|k| k.end <= pos)
            .filter(|k| k.end + window >= pos)
            .filter(|k| gap_is_one_phrase(&self.b[k.end..pos]))
            .copied()
    }

    /// The kind of the context word nearest before `pos` (see [`Ctx::nearest_before`]).
    pub fn nearest_kind(&self, pos: usize, window: usize) -> Option<Kw> {
        self.nearest_before(pos, window).map(|k| k.kind)
    }
}

/// Whether the bytes between a context word and a number keep them in one phrase: no other
/// number, no sentence or clause break, at most four words ("número de guía de Servientrega es").
fn gap_is_one_phrase(gap: &[u8]) -> bool {
    const MAX_WORDS: usize = 4;
    let mut words = 0;
    let mut word_len = 0;
    for (i, &c) in gap.iter().enumerate() {
        if c.is_ascii_digit() || matches!(c, b'!' | b'?' | b'\n' | b';' | b',') {
            return false;
        }
        // A full stop after a real word ends the sentence; after "No", "ref", "Nº" it is an
        // abbreviation.
        if c == b'.' && word_len > 3 && gap.get(i + 1).is_none_or(|n| n.is_ascii_whitespace()) {
            return false;
        }
        if c.is_ascii_alphabetic() || c >= 0x80 {
            if word_len == 0 {
                words += 1;
            }
            word_len += 1;
        } else {
            word_len = 0;
        }
    }
    words <= MAX_WORDS
}

/// The findings so far, kept sorted; a detector may only claim bytes no one claimed before.
#[derive(Default)]
pub(crate) struct Found {
    pub spans: Vec<Span>,
}

impl Found {
    /// Adds a finding unless it is empty or overlaps an earlier one. Returns whether it was added.
    pub fn push(&mut self, start: usize, end: usize, kind: PiiType) -> bool {
        if start >= end {
            return false;
        }
        let i = self.spans.partition_point(|s| s.start < start);
        if i > 0 && self.spans[i - 1].end > start {
            return false;
        }
        if i < self.spans.len() && self.spans[i].start < end {
            return false;
        }
        self.spans.insert(i, Span { start, end, kind });
        true
    }

    /// If `pos` lies inside a finding, where that finding ends.
    pub fn covering(&self, pos: usize) -> Option<usize> {
        let i = self.spans.partition_point(|s| s.start <= pos);
        (i > 0 && self.spans[i - 1].end > pos).then(|| self.spans[i - 1].end)
    }

    /// Where the first finding at or after `pos` starts (or `limit`).
    pub fn next_start(&self, pos: usize, limit: usize) -> usize {
        let i = self.spans.partition_point(|s| s.start < pos);
        self.spans.get(i).map_or(limit, |s| s.start.min(limit))
    }

    /// Whether any byte of `start..end` is claimed.
    pub fn overlaps(&self, start: usize, end: usize) -> bool {
        let i = self.spans.partition_point(|s| s.end <= start);
        self.spans.get(i).is_some_and(|s| s.start < end)
    }
}

#[cfg(test)]
mod tests;
