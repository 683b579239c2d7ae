//! Detecting that a customer asks for a human ("quiero hablar con un asesor", "talk to a human",
//! "falar com um atendente").
//!
//! Owns the keyword matching only: deciding what a handover *does* (pause the bot, notify an
//! operator) belongs to the workers. Matching is a pure function of the text, so it runs before the
//! LLM is called and costs nothing when no keyword is present.
//!
//! # How text is compared
//! Both the keywords and the message go through the same [`normalize`]: Unicode compatibility
//! decomposition (NFKD), combining marks removed (so `asesór` = `asesor`, `alguém` = `alguem`),
//! lowercased, and every run of characters that are not letters or digits (spaces, punctuation,
//! emoji) folded to one space. Then keywords match on **whole words only**: the normalized message is
//! padded with a space at both ends and each keyword is searched as `" keyword "`.
//!
//! Consequences, on purpose:
//! - `asesoramiento` does not trigger `asesor`, `inhuman` does not trigger `human`.
//! - Plurals do not trigger singular keywords (`humanos` ≠ `humano`): a plural is a different word,
//!   and matching prefixes would also make `asesor` fire on `asesoramiento`. Plural phrasings that
//!   really ask for a person ("hablar con humanos") are listed as keywords of their own.
//! - Punctuation and spacing never matter: `falar com um atendente, por favor` and
//!   `hablar   con... un asesor` both match.

use std::sync::{Arc, LazyLock};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};

/// Finds handover keywords in customer messages. Build it once (at start or on config reload) and
/// share it: it is `Send + Sync`, a clone shares the automaton, and matching is one linear scan
/// of the message.
#[derive(Debug, Clone)]
pub struct HandoverMatcher {
    /// One automaton for every keyword, searching the normalized, space-padded message.
    automaton: AhoCorasick,
    /// The keywords as the caller gave them, indexed by aho-corasick pattern id, so [`find`] can
    /// report the configured spelling rather than the normalized one.
    ///
    /// [`find`]: HandoverMatcher::find
    keywords: Arc<[String]>,
}

/// The matcher of the built-in keywords, built once: every channel that keeps them shares it.
static BUILT_IN: LazyLock<HandoverMatcher> =
    LazyLock::new(|| HandoverMatcher::new(DEFAULT_KEYWORDS));

/// Spanish, English and Portuguese phrasings of "I want a person", written as users type them
/// (accents optional: normalization removes them on both sides anyway).
const DEFAULT_KEYWORDS: &[&str] = &[
    // es
    "quiero hablar con un humano",
    "hablar con un humano",
    "hablar con humano",
    "hablar con humanos",
    "hablar con una persona",
    "hablar con persona real",
    "hablar con un asesor",
    "hablar con una asesora",
    "hablar con asesor",
    "hablar con un agente",
    "hablar con un operador",
    "hablar con una operadora",
    "hablar con un representante",
    "hablar con un ejecutivo",
    "hablar con alguien",
    "comunicarme con un asesor",
    "pasame con un asesor",
    "agente humano",
    "asesor humano",
    "atención humana",
    "persona real",
    "no quiero hablar con un bot",
    // en
    "talk to a human",
    "speak to a human",
    "talk with a human",
    "speak with a human",
    "talk to a person",
    "speak to a person",
    "talk to an agent",
    "speak to an agent",
    "talk to someone",
    "speak to someone",
    "talk to a representative",
    "speak to a representative",
    "talk to a real person",
    "real person",
    "human agent",
    "live agent",
    "customer service representative",
    "connect me to an agent",
    "transfer me to an agent",
    "i want a human",
    // pt
    "falar com um atendente",
    "falar com atendente",
    "falar com uma atendente",
    "falar com uma pessoa",
    "falar com um humano",
    "falar com humano",
    "falar com um agente",
    "falar com um consultor",
    "falar com uma consultora",
    "falar com um operador",
    "falar com alguém",
    "falar com o suporte",
    "quero falar com um humano",
    "conversar com um atendente",
    "conversar com uma pessoa",
    "atendente humano",
    "atendimento humano",
    "pessoa de verdade",
    "me transfere para um atendente",
];

impl HandoverMatcher {
    /// Builds a matcher for `keywords`. Keywords that normalize to nothing (empty, only punctuation
    /// or emoji) are ignored, since they would match every message.
    pub fn new(keywords: &[impl AsRef<str>]) -> Self {
        let mut patterns = Vec::with_capacity(keywords.len());
        let mut originals = Vec::with_capacity(keywords.len());
        for keyword in keywords {
            let normalized = normalize(keyword.as_ref());
            if !normalized.is_empty() {
                patterns.push(format!(" {normalized} "));
                originals.push(keyword.as_ref().to_owned());
            }
        }
        // Leftmost-longest: of two keywords starting at the same word ("hablar con un asesor" and
        // "hablar con un asesor humano"), report the more specific one.
        // A contiguous NFA, not the DFA aho-corasick picks on its own for a few dozen keywords:
        // a worker keeps a matcher per channel it serves, and the DFA of the built-in keywords
        // holds 108 KB (about 100 MB more RSS in a worker that had served 1,000 numbers) where
        // this holds 12 KB; a search of a 1 KB message takes about 9 µs instead of 3.
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(&patterns)
            .expect("handover keywords are short literal strings, well within automaton limits");
        Self {
            automaton,
            keywords: originals.into(),
        }
    }

    /// The built-in keywords: at least 15 each in Spanish, English and Portuguese.
    pub fn default_keywords() -> &'static [&'static str] {
        DEFAULT_KEYWORDS
    }

    /// The first keyword (leftmost in the message) that `text` contains as whole words, spelled as
    /// it was given to [`HandoverMatcher::new`].
    pub fn find(&self, text: &str) -> Option<&str> {
        let haystack = format!(" {} ", normalize(text));
        let found = self.automaton.find(&haystack)?;
        Some(&self.keywords[found.pattern().as_usize()])
    }

    /// Whether `text` asks for a human.
    pub fn matches(&self, text: &str) -> bool {
        self.find(text).is_some()
    }

    /// Heap bytes the matcher holds (automaton and keywords). A worker keeps one per channel it
    /// serves, so this is multiplied by the channels of a fleet.
    pub fn memory_usage(&self) -> usize {
        self.automaton.memory_usage()
            + self
                .keywords
                .iter()
                .map(|k| k.capacity() + std::mem::size_of::<String>())
                .sum::<usize>()
    }
}

impl Default for HandoverMatcher {
    /// A matcher over [`HandoverMatcher::default_keywords`], shared with every other default one.
    fn default() -> Self {
        BUILT_IN.clone()
    }
}

/// The comparison form of a text: NFKD, combining marks removed, lowercase, and every run of
/// non-alphanumeric characters folded into a single space, trimmed. `"¡Quiero  hablar, con un
/// ASESÓR!"` becomes `"quiero hablar con un asesor"`.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.nfkd().filter(|c| !is_combining_mark(*c)) {
        if c.is_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.extend(c.to_lowercase());
        } else {
            pending_space = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_folds_case_accents_punctuation_and_spacing() {
        let cases = [
            ("QUIERO HABLAR CON UN HUMANO", "quiero hablar con un humano"),
            (
                "¡Quiero  hablar, con un ASESÓR!",
                "quiero hablar con un asesor",
            ),
            ("falar com alguém...", "falar com alguem"),
            ("  atenção\thumana\n", "atencao humana"),
            ("I'd like a human 🙏", "i d like a human"),
            ("ﬁle", "file"),
            ("", ""),
            ("?!… 😀", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize(input), expected, "{input:?}");
        }
    }

    #[test]
    fn default_keywords_match_requests_in_three_languages() {
        let matcher = HandoverMatcher::default();
        let cases = [
            ("QUIERO HABLAR CON UN HUMANO", "quiero hablar con un humano"),
            ("Quiero hablar con un asesór", "hablar con un asesor"),
            (
                "hola, ¿puedo hablar con una persona?",
                "hablar con una persona",
            ),
            ("Necesito atencion humana ya", "atención humana"),
            ("me pasás con un agente humano??", "agente humano"),
            ("Can I talk to a human?", "talk to a human"),
            ("I want to SPEAK TO AN AGENT please", "speak to an agent"),
            ("is this a real person", "real person"),
            (
                "falar com um atendente, por favor",
                "falar com um atendente",
            ),
            ("Quero falar com alguem", "falar com alguém"),
            ("preciso de ATENDIMENTO HUMANO", "atendimento humano"),
            ("queria falar com uma pessoa 🙏", "falar com uma pessoa"),
        ];
        for (text, keyword) in cases {
            assert_eq!(matcher.find(text), Some(keyword), "{text:?}");
        }
    }

    #[test]
    fn words_that_merely_contain_a_keyword_do_not_match() {
        let matcher = HandoverMatcher::new(&["asesor", "human", "humano", "atendente"]);
        let cases = [
            "Me interesa el asesoramiento fiscal",
            "That was inhuman",
            "humanity is great",
            "los humanos somos así",
            "superhumano",
            "atendentes",
        ];
        for text in cases {
            assert_eq!(matcher.find(text), None, "{text:?}");
        }
        assert_eq!(matcher.find("un asesor, por favor"), Some("asesor"));
        assert_eq!(matcher.find("HUMAN!"), Some("human"));
    }

    #[test]
    fn ordinary_messages_do_not_trigger_a_handover() {
        let matcher = HandoverMatcher::default();
        let cases = [
            "¿Cuál es el horario de atención?",
            "Quiero comprar el aceite de lavanda",
            "What are your opening hours?",
            "Qual o prazo de entrega para São Paulo?",
            "Hablar es fácil",
            "the human body needs water",
            "",
        ];
        for text in cases {
            assert_eq!(matcher.find(text), None, "{text:?}");
        }
    }

    #[test]
    fn the_leftmost_and_then_longest_keyword_is_reported() {
        let matcher = HandoverMatcher::new(&[
            "hablar con un asesor",
            "hablar con un asesor humano",
            "humano",
        ]);
        assert_eq!(
            matcher.find("quiero hablar con un asesor humano"),
            Some("hablar con un asesor humano")
        );
        assert_eq!(matcher.find("humano: hablar con un asesor"), Some("humano"));
    }

    #[test]
    fn keywords_that_normalize_to_nothing_are_ignored() {
        let matcher = HandoverMatcher::new(&["", "!!!", "🙋", "Agente"]);
        assert_eq!(matcher.find("hola"), None);
        assert_eq!(matcher.find("un AGENTE"), Some("Agente"));
        let empty = HandoverMatcher::new(&[] as &[&str]);
        assert_eq!(empty.find("talk to a human"), None);
    }

    #[test]
    fn defaults_cover_each_language_with_at_least_fifteen_keywords() {
        let keywords = HandoverMatcher::default_keywords();
        let position = |k: &str| keywords.iter().position(|x| *x == k).unwrap();
        let (en, pt) = (
            position("talk to a human"),
            position("falar com um atendente"),
        );
        assert!(en >= 15, "es: {en}");
        assert!(pt - en >= 15, "en: {}", pt - en);
        assert!(keywords.len() - pt >= 15, "pt: {}", keywords.len() - pt);
        // Every default keyword matches itself, so none is shadowed by normalization.
        let matcher = HandoverMatcher::default();
        for keyword in keywords {
            assert!(matcher.find(keyword).is_some(), "{keyword}");
        }
    }

    /// A worker builds a matcher per channel it serves: with the automaton aho-corasick picks on
    /// its own for the built-in keywords (a DFA, 210 KB) a worker that had served 1,000 numbers
    /// held about 100 MB more than one that had served one.
    #[test]
    fn a_matcher_is_small_enough_to_keep_one_per_channel() {
        let matcher = HandoverMatcher::default();
        assert!(
            matcher.memory_usage() < 32 * 1024,
            "{} bytes",
            matcher.memory_usage()
        );
        let custom = HandoverMatcher::new(&["hablar con ventas", "asesor comercial"]);
        assert!(
            custom.memory_usage() < 8 * 1024,
            "{}",
            custom.memory_usage()
        );
    }

    /// Channels that keep the built-in keywords share one automaton instead of building their
    /// own each.
    #[test]
    fn the_built_in_matcher_is_built_once_and_shared() {
        let (a, b) = (HandoverMatcher::default(), HandoverMatcher::default());
        assert!(std::ptr::eq(a.keywords.as_ptr(), b.keywords.as_ptr()));
        assert_eq!(
            a.find("quiero hablar con un humano"),
            Some("quiero hablar con un humano")
        );
    }

    #[test]
    fn matcher_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<HandoverMatcher>();
    }
}
