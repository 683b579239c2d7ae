//! Secrets a customer types in the clear: passwords, PINs, card security codes, one-time codes.
//!
//! Anchored on the word that names them ("contraseña", "password", "senha", "PIN", "CVV",
//! "código de verificación"…): the token that follows, past a few linking words ("es", "is",
//! ":", "de mi cuenta"), is the secret when it looks like one. A word of the sentence is left
//! alone, so "la contraseña no funciona" or "es clave que llegue hoy" keep their meaning:
//! - after a password word: a token with a digit, a symbol or a capital inside it
//!   ("hunter2", "Perro123!", "SolYLuna"), or any token written as a value ("contraseña:
//!   gatito", "password = gatito"), or a plain word right after "es"/"is"/"é" that ends the
//!   clause ("mi contraseña es gatito", "my password is sunshine, thanks") unless it is one of
//!   the words that describe a password rather than be one ("incorrecta", "wrong", "bloqueada",
//!   "expired");
//! - after a code word (PIN, CVV, OTP, verification code): 3 to 8 digits.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use super::super::text::{word_end, word_start};
use super::super::{Found, PiiType};

/// The word names a password-like secret (`false`) or a numeric code (`true`).
#[rustfmt::skip]
const WORDS: &[(&str, bool)] = &[
    ("contraseña", false), ("contrasena", false), ("CONTRASEÑA", false), ("password", false),
    ("passwd", false), ("pass", false), ("pwd", false), ("senha", false), ("clave", false),
    ("clave de acceso", false), ("palavra-passe", false),
    ("pin", true), ("nip", true), ("cvv", true), ("cvv2", true), ("cvc", true), ("cvc2", true),
    ("otp", true), ("código de verificación", true), ("codigo de verificacion", true),
    ("código de seguridad", true), ("codigo de seguridad", true), ("código de verificação", true),
    ("codigo de verificacao", true), ("verification code", true), ("security code", true),
    ("one-time code", true), ("one time code", true), ("código otp", true), ("codigo otp", true),
];

/// Words that may stand between the name of a secret and the secret.
#[rustfmt::skip]
const LINKING: &[&str] = &[
    "es", "is", "era", "was", "é", "e", "de", "da", "do", "del", "mi", "my", "minha", "meu", "la",
    "el", "a", "o", "the", "cuenta", "conta", "account", "tarjeta", "cartão", "cartao", "card",
    "acceso", "acesso", "access", "actual", "nueva", "nova", "new", "wifi", "app", "banco",
    "bank", "temporal", "temporary", "sería", "seria", "would", "be", "usuario", "user",
];

/// The linking words that say what the secret *is*: after them a plain word may be the secret.
// Not "e": in Portuguese it is also "and" ("esqueci a senha e agora?").
const COPULAS: &[&str] = &["es", "is", "era", "was", "é"];

/// Words that describe a password (or stand before such a word) rather than spell one: after
/// "mi contraseña es" they keep their meaning. Participles ("bloqueada", "expired") and adverbs
/// ("-mente") are told by their endings in [`describes`].
#[rustfmt::skip]
const DESCRIBING: &[&str] = &[
    // es
    "incorrecta", "incorrecto", "correcta", "correcto", "inválida", "invalida", "inválido",
    "invalido", "válida", "valida", "válido", "valido", "nueva", "nuevo", "vieja", "viejo",
    "antigua", "antiguo", "larga", "largo", "corta", "corto", "segura", "seguro", "insegura",
    "débil", "debil", "fuerte", "mala", "malo", "buena", "bueno", "errónea", "erronea",
    "diferente", "distinta", "distinto", "igual", "misma", "mismo", "otra", "otro", "muy",
    "demasiado", "demasiada", "obligatoria", "necesaria", "sensible", "temporal", "provisional",
    "esta", "esa", "este", "ese", "eso", "esto", "secreta", "secreto", "privada", "personal",
    "importante", "simple", "fácil", "facil", "difícil", "dificil", "complicada", "confidencial",
    "vencida", "caducada", "vacía", "vacia", "ninguna", "nada", "siempre", "antes", "ayer", "hoy",
    "mía", "mia", "tuya", "suya", "única", "unica", "aleatoria", "numérica", "numerica",
    "alfanumérica", "alfanumerica", "bancaria", "bancario", "paciencia",
    // pt
    "errada", "errado", "incorreta", "incorreto", "correta", "nova", "novo", "antiga", "antigo",
    "muito", "mesma", "outra", "fraca", "fraco", "forte", "obrigatória", "obrigatoria",
    "temporária", "temporaria", "provisória", "provisoria", "curta", "longa", "certa", "certo",
    "ruim", "boa", "essa", "esse", "isso", "isto", "aquela", "pessoal", "vazia", "nenhuma",
    "sempre", "ontem", "hoje", "minha", "sua",
    // en ("personal" and "simple" are in es)
    "incorrect", "correct", "wrong", "invalid", "valid", "new", "old", "too", "very", "same",
    "different", "weak", "strong", "required", "temporary", "short", "long", "fine", "right",
    "good", "bad", "secure", "insecure", "case", "this", "that", "it", "not", "secret",
    "private", "important", "easy", "hard", "complicated", "confidential",
    "empty", "blank", "none", "always", "before", "yesterday", "today", "mine", "yours",
    "unique", "random", "numeric", "alphanumeric", "okay", "ok", "there", "here", "what",
    "ready", "lost", "broken", "gone", "missing", "which",
];

/// Words that may follow the secret in the same sentence without being part of it.
const AFTER_SECRET: &[&str] = &[
    "y", "e", "and", "pero", "but", "mas", "por", "please", "pls", "porfa", "gracias", "thanks",
    "obrigado", "obrigada", "thank",
];

/// The secret-word automaton; built once with the [`Redactor`](super::super::Redactor).
pub struct Secrets {
    ac: AhoCorasick,
}

impl Default for Secrets {
    fn default() -> Self {
        Self::new()
    }
}

impl Secrets {
    pub fn new() -> Self {
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .build(WORDS.iter().map(|(w, _)| *w))
            .expect("the secret words compile");
        Secrets { ac }
    }

    /// Claims the secret after each word that names one.
    pub fn find(&self, text: &str, found: &mut Found) {
        for m in self.ac.find_iter(text) {
            if !word_start(text, m.start()) || !word_end(text, m.end()) {
                continue;
            }
            let numeric = WORDS[m.pattern().as_usize()].1;
            if let Some((start, end)) = secret_after(text, m.end(), numeric) {
                found.push(start, end, PiiType::Secret);
            }
        }
    }
}

/// The secret that follows a secret word ending at `pos`, if one does.
fn secret_after(text: &str, mut pos: usize, numeric: bool) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    let mut as_value = false;
    let mut copula = false;
    for _ in 0..6 {
        while pos < b.len() && matches!(b[pos], b' ' | b'\t') {
            pos += 1;
        }
        if pos < b.len() && matches!(b[pos], b':' | b'=') {
            as_value = true;
            pos += 1;
            continue;
        }
        let end = token_end(b, pos);
        if end == pos {
            return None;
        }
        let token = &text[pos..end];
        if LINKING.iter().any(|w| token.eq_ignore_ascii_case(w)) {
            // Only the word right after "es" may be a plain-word secret: "es la de mi correo"
            // and "es la misma" describe it.
            copula = COPULAS.iter().any(|w| token.eq_ignore_ascii_case(w));
            pos = end;
            continue;
        }
        // A closing '!' is often part of a password; a full stop or comma is the sentence's.
        let token = token.trim_end_matches(['.', ',', '?', ';', ')']);
        let end = pos + token.len();
        // A number, in groups or not ("482 913", "0021 8007 0012", "4829"), is judged by its
        // digits and taken whole.
        let lead_end = pos + token.bytes().take_while(u8::is_ascii_digit).count();
        let number_end = if lead_end > pos {
            digit_groups_end(b, lead_end)
        } else {
            pos
        };
        if number_end >= end {
            let n = b[pos..number_end]
                .iter()
                .filter(|c| c.is_ascii_digit())
                .count();
            let enough = if numeric {
                (3..=8).contains(&n)
            } else {
                n >= 4
            };
            if enough {
                return Some((pos, number_end));
            }
        }
        let looks_secret = if numeric {
            (3..=8).contains(&token.len()) && token.bytes().all(|c| c.is_ascii_digit())
        } else {
            token.chars().count() >= 4
                && (as_value
                    || token.bytes().any(|c| c.is_ascii_digit())
                    || token.bytes().skip(1).any(|c| c.is_ascii_uppercase())
                    || token.bytes().any(|c| c.is_ascii_punctuation())
                    || (copula && !describes(token) && clause_ends(text, end)))
        };
        return looks_secret.then_some((pos, end));
    }
    None
}

/// Whether a plain word describes a password instead of being one: a listed word, a participle
/// ("bloqueada", "cambiado", "expired") or an adverb ("-mente"). A participle's ending comes
/// after a stem of two letters or more: "used" and "usado" describe, "king", "red", "nido" and
/// "vida" are words people choose as passwords.
fn describes(word: &str) -> bool {
    let w = word.to_lowercase();
    DESCRIBING.contains(&w.as_str())
        || [
            "ada", "ado", "ida", "ido", "adas", "ados", "mente", "ísima", "ísimo", "isima", "ed",
            "ing",
        ]
        .iter()
        .any(|e| {
            w.strip_suffix(e)
                .is_some_and(|stem| stem.chars().count() >= 2)
        })
}

/// Whether the sentence ends right after byte `end` (or goes on with "y", "please"…): a plain
/// word followed by more words ("es gatito el nombre de mi gato") is part of the sentence.
fn clause_ends(text: &str, end: usize) -> bool {
    let rest = text[end..].trim_start_matches([' ', '\t']);
    match rest.chars().next() {
        None => true,
        // Punctuation, an emoji, "¿", "…": the word ends its clause.
        Some(c) if !c.is_alphanumeric() => true,
        Some(_) => {
            let next = rest
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or("");
            AFTER_SECRET.iter().any(|w| next.eq_ignore_ascii_case(w))
        }
    }
}

/// Where the groups of digits that go on from the digits ending at `end` end: a single space
/// or dash before each group; a group that runs into a letter, a date, a time or a decimal is
/// not one.
fn digit_groups_end(b: &[u8], mut end: usize) -> usize {
    while end + 1 < b.len() && matches!(b[end], b' ' | b'-') && b[end + 1].is_ascii_digit() {
        let mut e = end + 1;
        while e < b.len() && b[e].is_ascii_digit() {
            e += 1;
        }
        // "123 12/27", "4829 12:30", "482 9.5": the next group belongs to a date, a time or an
        // amount.
        let goes_on = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
        if e < b.len()
            && (b[e].is_ascii_alphabetic()
                || matches!(b[e], b'/' | b':')
                || (matches!(b[e], b'.' | b',') && goes_on(e + 1)))
        {
            break;
        }
        end = e;
    }
    end
}

/// Where the whitespace-delimited token starting at `pos` ends.
fn token_end(b: &[u8], pos: usize) -> usize {
    let mut end = pos;
    while end < b.len() && !b[end].is_ascii_whitespace() {
        end += 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(t: &str) -> Vec<&str> {
        let mut found = Found::default();
        Secrets::new().find(t, &mut found);
        found.spans.iter().map(|s| &t[s.start..s.end]).collect()
    }

    #[test]
    fn the_secret_after_its_name_is_found() {
        for (t, want) in [
            ("mi contraseña es hunter2", "hunter2"),
            ("Contraseña: Sol2024", "Sol2024"),
            ("la clave de mi cuenta es Perro123!", "Perro123!"),
            ("user admin pass secret123", "secret123"),
            ("minha senha é Ab12cd!", "Ab12cd!"),
            ("password = gatito", "gatito"),
            ("mi pin 4321", "4321"),
            ("tarjeta terminada en 1111 cvv 123 vence 12/27", "123"),
            ("código de verificación 482913.", "482913"),
            // A code in groups is one code.
            ("the OTP is 55 1234", "55 1234"),
            ("código de verificación 482 913.", "482 913"),
            (
                "la clave es 0021 8007 0012 3456 78",
                "0021 8007 0012 3456 78",
            ),
            ("mi pin es 12-34 gracias", "12-34"),
            // Three digits are too few for a password, grouped or not.
            ("la clave es 12 3", ""),
            // Not a group of the code: an expiry date, a time.
            ("cvv 123 12/27", "123"),
            ("el código otp 4829 12:30 no llegó", "4829"),
            ("mi contraseña es gatito", "gatito"),
            ("my password is sunshine, thanks", "sunshine"),
            ("a senha é batata e não entra", "batata"),
            ("la clave era tortuga.", "tortuga"),
            ("mi contraseña es gatito 🙏", "gatito"),
            ("mi contraseña es gatito ¿me ayudan?", "gatito"),
            // An ending that is no participle's: the stem is one letter.
            ("my password is king", "king"),
            ("mi contraseña es nido", "nido"),
        ] {
            let got = secrets(t);
            if want.is_empty() {
                assert!(got.is_empty(), "{t}: {got:?}");
            } else {
                assert_eq!(got, [want], "{t}");
            }
        }
    }

    #[test]
    fn a_word_of_the_sentence_is_not_a_secret() {
        for t in [
            "la contraseña no funciona",
            "olvidé mi contraseña, ¿me ayudan?",
            "es clave que llegue hoy",
            "I'll pass on that one",
            "el pin de la chaqueta se cayó",
            "password reset please",
            "mi contraseña es incorrecta",
            "mi contraseña es la misma de siempre",
            "my password is wrong",
            "a senha está bloqueada",
            "mi contraseña es bloqueada por el banco",
            "my password is expired",
            "la contraseña es muy larga",
            "mi contraseña es gatito el nombre de mi gato",
            "my password is not working",
            "mi contraseña es la de mi correo",
            "mi contraseña es larguísima",
            "la clave es alfanumérica",
            "esqueci a senha e agora?",
            "my boarding pass is ready",
            "my password is used",
            "mi contraseña es usada",
        ] {
            assert!(secrets(t).is_empty(), "{t}: {:?}", secrets(t));
        }
    }
}
