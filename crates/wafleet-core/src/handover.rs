//! Detecting that a customer asks for a human ("quiero hablar con un asesor", "talk to a human",
//! "falar com um atendente"), and not when they say they do not want one ("no necesito un
//! asesor", "I don't want to talk to a human", "não preciso de atendente").
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
//!
//! # Negation
//! A keyword found in the message hands over unless a negation *refuses* it, in the same clause,
//! shortly before it. Only the clause matters: punctuation that ends one (`, . ; : ! ? ¡ ¿`, a
//! dash, a line break) and the words `but`/`however`, `pero`/`sino`, `mas`/`porém` start another, so
//! "no, quiero un humano", "no me entiendes, quiero un asesor" and "no quiero un bot sino un
//! humano" hand over. Within the clause, the nearest negation (`NEGATIONS`: "no", "nunca",
//! "don't", "never", "without", "não", "nem", "sem", …) at most `MAX_GAP` words before the
//! keyword refuses it when what it negates is the keyword itself ("no human agent", "sin hablar
//! con un asesor") or a word of wanting, needing or asking (`GOVERNED`: "no necesito un asesor",
//! "I don't want to talk to a human", "não preciso de atendente"), with only small words between
//! ("no *me* pases con un asesor", "I don't *really* want"). So a negation of something else does
//! not count: "no funciona el pago asesor", "I can not reach a human agent" and "não consigo falar
//! com um atendente" (a complaint that they cannot reach one) all hand over. A second request in
//! the clause (`REQUESTS`: "no quiero esperar quiero un asesor", "I don't need help I need a
//! human") is a request of its own, and "no I want a human" (a pronoun right after the "no") is an
//! answer, not a negation. A keyword that holds a negation itself ("no quiero hablar con un bot")
//! is never refused. Every occurrence counts: one that is not refused hands over.
//!
//! Negation words, the words they govern and the words that end a clause are compared on the
//! normalized words, also when drawn out ("nooo", "nããão", "neeeed": a letter three times or
//! more, or doubled at the end of the word, counts once).
//!
//! This is a heuristic of words, not a parser: sarcasm ("sí, claro, no quiero hablar con un
//! humano 🙄"), double negation ("I don't not want a human"), a negation further than `MAX_GAP`
//! words before the keyword, or one in a run-on sentence without punctuation that happens to
//! negate a word of wanting ("no quiero esperar hablar con alguien") are read by these rules, not
//! understood. A refused keyword only means the model is asked instead, and it can still hand the
//! conversation over.

use std::sync::{Arc, LazyLock};

use aho_corasick::{AhoCorasick, AhoCorasickKind, Input, MatchKind};
use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};

/// Finds handover keywords in customer messages. Build it once (at start or on config reload) and
/// share it: it is `Send + Sync`, a clone shares the automaton, and matching is one linear scan
/// of the message (and, only when a keyword is found, a look at the few words before it).
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

    /// The first keyword (leftmost in the message) that `text` contains as whole words and does
    /// not refuse (see [the module's](self) Negation), spelled as it was given to
    /// [`HandoverMatcher::new`].
    pub fn find(&self, text: &str) -> Option<&str> {
        let haystack = format!(" {} ", normalize(text));
        // Where the clauses of the message begin, worked out for the first keyword found: most
        // messages hold none, and pay nothing for it.
        let mut clauses: Option<Clauses> = None;
        let mut from = 0;
        while let Some(found) = self.automaton.find(Input::new(&haystack).range(from..)) {
            let clauses = clauses.get_or_insert_with(|| Clauses::of(text));
            // The keyword's first word's position among the message's words: the spaces before it.
            let first = haystack[..found.start()].matches(' ').count();
            let len = haystack[found.start() + 1..found.end() - 1]
                .matches(' ')
                .count()
                + 1;
            if !clauses.refuses(first, len) {
                return Some(&self.keywords[found.pattern().as_usize()]);
            }
            // On from the keyword's closing space, the opening one of a keyword right after it. A
            // keyword within the refused one (`asesor` in `hablar con un asesor`) is refused with it.
            from = found.end() - 1;
        }
        None
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
    fold(text, |_| {})
}

/// [`normalize`], telling `clause_ends` the position (among the words of the result) of each word
/// that punctuation ending a clause comes before. With the no-op of [`normalize`] the check
/// compiles away, so the search of every message costs what it did before negation was read.
fn fold(text: &str, mut clause_ends: impl FnMut(usize)) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    let mut words = 0;
    for c in text.nfkd().filter(|c| !is_combining_mark(*c)) {
        if c.is_alphanumeric() {
            if pending_space || out.is_empty() {
                if !out.is_empty() {
                    out.push(' ');
                }
                words += 1;
            }
            pending_space = false;
            out.extend(c.to_lowercase());
        } else {
            pending_space = true;
            if ends_clause(c) {
                clause_ends(words);
            }
        }
    }
    out
}

/// Punctuation after which a negation no longer reaches: "no, quiero un humano". NFKD has already
/// turned `…` into dots and full-width marks into these.
fn ends_clause(c: char) -> bool {
    matches!(
        c,
        ',' | '.'
            | ';'
            | ':'
            | '!'
            | '?'
            | '¡'
            | '¿'
            | '\n'
            | '\r'
            | '\u{2028}'
            | '\u{2029}'
            | '–'
            | '—'
    )
}

/// The most words there may be between a negation and the keyword it refuses: "no quiero que me
/// pasen con un asesor" has six. Further away, a negation is more often about something else.
const MAX_GAP: usize = 6;

/// Words (or runs of words, normalized) that negate what follows them, in Spanish, English and
/// Portuguese. Not "can't"/"no puedo"/"não consigo": not being able to reach a person is a reason
/// to hand over, and those negate a word that is not in `GOVERNED` anyway.
const NEGATIONS: &[&str] = &[
    // es
    "no", "nunca", "jamas", "ni", "sin", "tampoco", "ningun", "ninguno", "ninguna",
    // en ("do not", "does not", "can not" are "not"; contractions lose their apostrophe)
    "not", "never", "without", "nor", "neither", "don t", "dont", "doesn t", "doesnt", "didn t",
    "didnt", "won t", "wont", "wouldn t", "wouldnt", "isn t", "isnt", "aren t", "arent", "haven t",
    "havent", "hasn t", "hasnt",
    // pt ("n" and "ñ" are how "não" is typed in a hurry)
    "nao", "naum", "n", "nem", "jamais", "sem", "tampouco", "nenhum", "nenhuma",
];

/// What a negation must govern to refuse a keyword that does not follow it directly: wanting,
/// needing, asking for, or being put through to someone. "No" before anything else ("no
/// funciona", "não consigo", "not working") is about that, and the keyword after it still asks.
#[rustfmt::skip]
const GOVERNED: &[&str] = &[
    // es
    "quiero", "quiere", "queremos", "quieren", "queria", "quise", "quisiera", "querer", "necesito",
    "necesita", "necesitamos", "necesitaba", "necesite", "necesitar", "necesidad", "ocupo",
    "requiero", "pedi", "pido", "pedimos", "pidiendo", "solicite", "solicito", "busco", "buscando",
    "interesa", "gusta", "gustaria", "pases", "pasen", "pase", "pasar", "transfieras",
    "transfieran", "transfiera", "transferir", "comuniques", "comuniquen", "comunicar", "conectes",
    "derives", "hace falta", "es necesario", "hay necesidad", "hay que", "tengo que", "dije",
    // en
    "want", "wants", "wanted", "wanna", "need", "needs", "needed", "require", "required", "ask",
    "asked", "asking", "request", "requested", "said", "say", "looking", "having", "have to",
    "necessary", "transfer", "connect", "put", "send",
    // pt
    "quero", "quer", "querem", "quis", "quiser", "preciso", "precisa", "precisamos", "precisava",
    "precisei", "precisar", "necessidade", "necessario", "peco", "pedindo", "solicitei", "gostaria",
    "procurando", "passe", "passa", "transfira", "transfere", "tenho que", "e necessario",
    "ha necessidade", "disse",
];

/// Small words that may stand between a negation and what it governs: pronouns ("no *me*
/// pases"), adverbs ("I don't *really* want"), auxiliaries ("no *estoy* buscando") and articles
/// ("ni *un* humano"). Not subject pronouns: "no yo quiero", "no I want" answer a question.
#[rustfmt::skip]
const BETWEEN: &[&str] = &[
    // es
    "me", "te", "le", "les", "lo", "la", "nos", "realmente", "ya", "estoy", "estaba", "he", "hemos",
    "un", "una", "el", "los", "las",
    // en
    "really", "even", "actually", "necessarily", "yet", "ever", "to", "have", "been", "am", "a",
    "an", "the",
    // pt ("tô" is "to", above)
    "lhe", "estou", "mesmo", "sequer", "um", "o", "os", "as",
];

/// A new request: after the word a negation governs, one of these starts a request of its own
/// ("no quiero esperar *quiero* un asesor", "I don't need help *I need* a human agent"), unless
/// it only joins the first ("I don't want *or* need a human agent").
#[rustfmt::skip]
const REQUESTS: &[&str] = &[
    // es
    "quiero", "quisiera", "queria", "necesito", "ocupo", "requiero", "pasame", "comunicame",
    "transfiereme", "conectame", "ponme", "dame",
    // en
    "want", "wanna", "need",
    // pt
    "quero", "preciso", "gostaria",
];

/// Words that join two things wanted ("want or need"), so the second is not a new request.
const OR: &[&str] = &["or", "o", "ou", "ni", "nem", "nor"];

/// Words that start a clause of their own, as punctuation does ("no quiero un bot *sino* un
/// humano"). `mas` is Portuguese "but", and Spanish "más" unaccented: "no quiero hablar más con un
/// humano" hands over.
const CLAUSE_WORDS: &[&str] = &["but", "however", "pero", "sino", "mas", "porem"];

/// Subject pronouns: right after a "no", the "no" answered something ("no I want a human").
const SUBJECTS: &[&str] = &["i", "yo", "eu", "we"];

/// The words of a message and where its clauses begin, to decide whether a keyword found in it is
/// refused.
struct Clauses {
    text: String,
    /// Positions of words that clause-ending punctuation comes before, ascending.
    starts: Vec<usize>,
}

impl Clauses {
    fn of(text: &str) -> Self {
        let mut starts = Vec::new();
        let text = fold(text, |word| starts.push(word));
        Self { text, starts }
    }

    /// Whether the keyword that is the words `first..first + len` is refused by a negation before
    /// it (see the module's Negation).
    fn refuses(&self, first: usize, len: usize) -> bool {
        let words: Vec<&str> = self.text.split(' ').collect();
        let Some(keyword) = words.get(first..first + len) else {
            return false;
        };
        // "no quiero hablar con un bot" asks for a person by refusing the bot.
        if (0..len).any(|i| at(keyword, i, NEGATIONS).is_some()) {
            return false;
        }
        let mut clause = self
            .starts
            .iter()
            .rev()
            .find(|&&start| start <= first)
            .copied()
            .unwrap_or(0);
        if let Some(word) = (clause..first).rev().find(|&i| is(words[i], CLAUSE_WORDS)) {
            clause = word + 1;
        }
        // The nearest negation decides: the one ending last before the keyword.
        let nearest = (clause.max(first.saturating_sub(MAX_GAP + 1))..first)
            .rev()
            .find(|&end| ending_at(&words[clause..=end], NEGATIONS));
        match nearest {
            Some(end) => governs(&words[end + 1..first + len], first - end - 1),
            None => false,
        }
    }
}

/// Whether a negation followed by `rest` (the `gap` words before the keyword, then the keyword)
/// refuses the keyword.
fn governs(rest: &[&str], gap: usize) -> bool {
    if rest.first().is_some_and(|w| is(w, SUBJECTS)) {
        return false;
    }
    let mut word = 0;
    while word < gap && is(rest[word], BETWEEN) {
        word += 1;
    }
    let after = if word == gap {
        // The negation is the keyword's own: "no human agent", "sin hablar con un asesor".
        word + 1
    } else {
        match at(rest, word, GOVERNED) {
            Some(len) => word + len,
            None => return false,
        }
    };
    !(after..rest.len()).any(|i| is(rest[i], REQUESTS) && !(i > 0 && is(rest[i - 1], OR)))
}

/// Whether some entry of `list` is the words `words` end with.
fn ending_at(words: &[&str], list: &[&str]) -> bool {
    list.iter().any(|entry| {
        let n = entry.bytes().filter(|&b| b == b' ').count() + 1;
        n <= words.len() && entry_at(&words[words.len() - n..], entry).is_some()
    })
}

/// The number of words of the longest entry of `list` that starts at `words[i]`.
fn at(words: &[&str], i: usize, list: &[&str]) -> Option<usize> {
    list.iter()
        .filter_map(|entry| entry_at(&words[i..], entry))
        .max()
}

fn is(word: &str, list: &[&str]) -> bool {
    list.iter().any(|entry| same_word(word, entry))
}

/// The number of words of `entry` when `words` begin with them.
fn entry_at(words: &[&str], entry: &str) -> Option<usize> {
    let mut n = 0;
    for e in entry.split(' ') {
        if !same_word(words.get(n)?, e) {
            return None;
        }
        n += 1;
    }
    Some(n)
}

/// `word` is `entry`, or `entry` drawn out ("nooo", "naaao", "neeeed"): a letter three times or
/// more, or doubled at the end. Not any doubled letter, or "seem" would be Portuguese "sem".
fn same_word(word: &str, entry: &str) -> bool {
    if word == entry {
        return true;
    }
    // Drawing out keeps the first letter: most words are told apart here.
    if word.as_bytes().first() != entry.as_bytes().first() {
        return false;
    }
    let (mut run, mut longest, mut last) = (0, 0, None);
    for c in word.chars() {
        run = if last == Some(c) { run + 1 } else { 1 };
        longest = longest.max(run);
        last = Some(c);
    }
    (longest >= 3 || run == 2) && squeezed(word).eq(squeezed(entry))
}

/// The letters of `word` with each run of one letter counted once.
fn squeezed(word: &str) -> impl Iterator<Item = char> + '_ {
    let mut previous = None;
    word.chars().filter(move |&c| {
        let new = previous != Some(c);
        previous = Some(c);
        new
    })
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

    /// The golden file (tests/golden/handover/negation.txt) holds the labelled sentences; these
    /// pin the edges of each rule.
    #[test]
    fn a_negation_reaches_six_words_and_no_further() {
        let matcher = HandoverMatcher::new(&["asesor"]);
        assert_eq!(matcher.find("no quiero que me pasen con un asesor"), None);
        assert_eq!(
            matcher.find("no quiero que de verdad me pasen con un asesor"),
            Some("asesor"),
            "seven words between"
        );
    }

    #[test]
    fn punctuation_and_words_that_end_a_clause_end_the_negation() {
        let matcher = HandoverMatcher::new(&["asesor"]);
        assert_eq!(matcher.find("no necesito un asesor"), None);
        for separator in [
            ",", ".", ";", ":", "!", "?", "¡", "¿", "\n", "\r\n", "…", " – ", " — ", "，",
        ] {
            let text = format!("no necesito{separator} un asesor");
            assert_eq!(matcher.find(&text), Some("asesor"), "{text:?}");
        }
        for word in ["but", "however", "pero", "sino", "mas", "porém", "PERO"] {
            let text = format!("no necesito eso {word} un asesor");
            assert_eq!(matcher.find(&text), Some("asesor"), "{text:?}");
        }
        // Neither a hyphen nor an apostrophe ends a clause: "don't", "e-mail".
        assert_eq!(matcher.find("no necesito un e-mail de asesor"), None);
    }

    #[test]
    fn drawn_out_negations_count_and_words_that_merely_look_drawn_out_do_not() {
        let matcher = HandoverMatcher::new(&["asesor", "atendente", "human"]);
        for text in [
            "nooo necesito un asesor",
            "noo necesito un asesor",
            "NÃÃÃO preciso de atendente",
            "no necesitoooo un asesor",
            "I don't neeeed a human",
        ] {
            assert_eq!(matcher.find(text), None, "{text:?}");
        }
        // "seem" is not Portuguese "sem" with a doubled e.
        assert_eq!(matcher.find("they seem to need a human"), Some("human"));
    }

    #[test]
    fn every_occurrence_counts_and_the_first_one_not_refused_is_reported() {
        let matcher = HandoverMatcher::new(&["Asesor", "humano"]);
        assert_eq!(
            matcher.find("no necesito un asesor, un humano sí"),
            Some("humano")
        );
        assert_eq!(
            matcher.find("no necesito un asesor asesor asesor"),
            None,
            "all three refused: \"no necesito un asesor\" governs the words after it"
        );
        assert_eq!(
            matcher.find("no necesito un asesor. ASESOR!"),
            Some("Asesor")
        );
        assert_eq!(matcher.find("no necesito un asesor ni un humano"), None);
    }

    /// What the README lists as the limits of reading negation by words.
    #[test]
    fn the_limits_the_readme_names_are_what_happens() {
        let matcher = HandoverMatcher::new(&["asesor", "humano", "human", "atendimento humano"]);
        let cases = [
            ("sí, claro, no quiero hablar con un humano 🙄", None),
            ("no es que no quiera un asesor", Some("asesor")),
            ("I don't not want a human", None),
            ("no quiero esperar hablar con un asesor", None),
            ("no quiero hablar mas con un humano", Some("humano")),
            ("tem alguém no atendimento humano?", None),
            ("no funciona la app asesor", Some("asesor")),
        ];
        for (text, expected) in cases {
            assert_eq!(matcher.find(text), expected, "{text:?}");
        }
    }

    #[test]
    fn matcher_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<HandoverMatcher>();
    }
}
