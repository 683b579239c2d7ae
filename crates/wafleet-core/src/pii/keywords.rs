//! The context vocabulary: every word in Spanish, Portuguese and English that changes what a
//! number or a date next to it means ("cédula", "nací el", "pedido", "cel", "Calle", "Ave"…),
//! compiled once into a single Aho-Corasick automaton and found in one pass per message.
//!
//! This module only *finds* the words (ASCII-case-insensitive, accented and unaccented spellings,
//! whole words only); the detectors decide what a word nearby means for them.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, Input, MatchKind};

use super::text::{word_end, word_start};

/// What a context word announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kw {
    /// A phone number follows ("cel", "telefone", "call me at").
    Phone,
    /// A national identity number follows.
    Id(IdKw),
    /// A Mexican bank account (CLABE) follows ("CLABE", "SPEI").
    Bank,
    /// A date of birth follows ("nací el", "DOB").
    Dob,
    /// A birthday: a birth date follows unless it is the party's date ("la fiesta de
    /// cumpleaños es el 20/05/2025").
    Birthday,
    /// The number that follows is a business identifier: order, tracking, invoice, SKU, version.
    Neg,
    /// "número de cuenta", "account number": a business identifier too (the customer's account
    /// with the business, see [`Kw::is_neg`]), except that a bank account (CLABE) may follow.
    Account,
    /// A street type that comes *before* the street name (Latin American and Iberian style).
    Street { strong: bool },
    /// A street type that comes *after* the name (US style: "Main St").
    Suffix { abbrev: bool },
}

impl Kw {
    /// Whether the word makes the number after it a business identifier, not personal data.
    pub fn is_neg(self) -> bool {
        matches!(self, Kw::Neg | Kw::Account)
    }
}

/// Which identifier an identity word announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKw {
    /// Colombian cédula and generic words ("documento", "identificación"): a bare 6–10 digit
    /// number after them is an identity number.
    Cedula,
    /// US Social Security number: nine digits, even unformatted.
    Ssn,
    /// CPF, CNPJ, DNI, NIE, NIF: checksummed, so they need no context, but the word still marks
    /// a number as "not a phone".
    Checksummed,
    /// Mexico's RFC and CURP: letters and digits, found by `detectors::mx`.
    Mexican,
    /// A passport number follows (`detectors::passport`).
    Passport,
}

/// One context word found in a message.
#[derive(Clone, Copy, Debug)]
pub struct KwMatch {
    pub start: usize,
    pub end: usize,
    pub kind: Kw,
}

#[rustfmt::skip]
const PHONE: &[&str] = &[
    "cel", "cel.", "celular", "cell", "cellphone", "cell phone", "celu", "móvil", "movil",
    "mobile", "tel", "tel.", "teléfono", "telefono", "telefone", "tlf", "tfno", "fone", "whatsapp",
    "whats", "wpp", "wsp", "zap", "número", "numero", "num", "contacto", "contato", "llámame",
    "llamame", "llámeme", "llamar", "llama", "márcame", "marcame", "ligar", "liga", "ligue",
    "call", "phone", "text me", "fijo", "fixo", "reach me", "me liga", "chama", "me chama",
    "telemóvel", "telemovel", "comunicarse", "comunícate", "comunicate", "escríbeme", "escribeme",
    "escríbanme", "escribanme", "marcar",
];

#[rustfmt::skip]
const CEDULA: &[&str] = &[
    "cédula", "cedula", "cc", "c.c.", "c.c", "c. c.", "documento", "documento de identidad", "doc",
    "identificación", "identificacion", "identidad", "nuip", "tarjeta de identidad",
];

#[rustfmt::skip]
const SSN: &[&str] = &[
    "ssn", "social security", "social security number", "ss#", "s.s.n.",
];

const CHECKSUMMED: &[&str] = &["cpf", "cnpj", "dni", "nie", "nif", "n.i.f.", "d.n.i."];

const MEXICAN: &[&str] = &["rfc", "r.f.c.", "curp", "c.u.r.p."];

const PASSPORT: &[&str] = &[
    "pasaporte",
    "passaporte",
    "passport",
    "passport number",
    "passport no",
];

// Narrow on purpose: "transferencia" or "cuenta" before a number says nothing about it (a Nequi
// account is a phone number; "número de cuenta" is a customer's account with the business).
#[rustfmt::skip]
const BANK: &[&str] = &[
    "clabe", "cuenta clabe", "clabe interbancaria", "clave interbancaria", "cuenta interbancaria",
    "spei",
];

#[rustfmt::skip]
const DOB: &[&str] = &[
    "nací", "naci", "nacido", "nacida", "nacimiento", "fecha de nacimiento", "f. nacimiento",
    "fec. nac.", "f. nac.", "nascimento", "data de nascimento", "nasci", "nascido", "nascida",
    "born", "dob", "d.o.b.", "d.o.b", "date of birth", "birth date", "birthdate",
];

#[rustfmt::skip]
const BIRTHDAY: &[&str] = &[
    "birthday", "cumpleaños", "cumpleanos", "cumple", "aniversário", "aniversario",
];

#[rustfmt::skip]
const NEG: &[&str] = &[
    "pedido", "pedidos", "orden", "ordem", "order", "orders", "factura", "fatura", "invoice",
    "guía", "guia", "rastreo", "rastreio", "rastreamento", "tracking", "seguimiento", "sku", "ref",
    "ref.", "referencia", "referência", "código", "codigo", "cod", "cód", "cód.", "ean", "gtin",
    "upc", "barras", "barcode", "nf", "nfe", "nf-e", "nota fiscal", "ticket", "caso", "case",
    "protocolo", "radicado", "transacción", "transaccion", "transação", "transacao", "transaction",
    "comprobante", "recibo", "receipt", "lote", "serial", "serie", "série", "modelo", "model",
    "item", "artículo", "articulo", "cupón", "cupon", "cupom", "coupon", "cotización",
    "cotizacion", "quote", "reserva", "booking", "confirmation", "confirmación", "confirmacion",
    "versión", "version", "versão", "versao", "firmware", "nit", "paquete", "package", "encomenda",
    "objeto", "remesa", "consecutivo", "número de orden", "número de pedido", "order number",
    "tracking number", "solicitud", "pqr", "incidencia", "chamado", "ticket number",
    "número da conta", "numero da conta", "producto", "produto", "product", "reference", "ref number",
    "confirmation number", "tracking no",
    // Mexico's word for a ticket, order or payment reference.
    "folio",
];

/// A customer's account number with the business ([`Kw::Account`]); a bare "cuenta" or
/// "account" is not enough ("mi cuenta Nequi es 3001234567": a Nequi account is a phone number).
#[rustfmt::skip]
const ACCOUNT: &[&str] = &[
    "número de cuenta", "numero de cuenta", "account number", "account no", "account #",
];

/// Street types written before the name. `strong` ones are abbreviations nobody uses in
/// running prose ("Cra", "C/", "Rua"); weak ones ("calle", "plaza") need more evidence.
#[rustfmt::skip]
const STREET_STRONG: &[&str] = &[
    "cra", "cra.", "kra", "kra.", "kr", "kr.", "cr", "cr.", "carrera", "cll", "cll.", "cl.",
    "clle", "dg", "dg.", "diag", "diag.", "diagonal", "tv", "tv.", "transv", "transv.",
    "transversal", "tr.", "ak", "ak.", "ac", "ac.", "av", "av.", "avda", "avda.", "avd.", "c/", "c.",
    "rua", "r.", "al.", "alameda", "travessa", "trav.", "rodovia", "rod.", "estrada", "pº", "p.º",
    "pza.", "pza", "pl.", "glorieta", "rambla", "ronda", "travesía", "travesia", "autopista",
    "circular", "calle", "avenida", "cl",
];
#[rustfmt::skip]
const STREET_WEAK: &[&str] = &[
    "plaza", "paseo", "camino", "carretera", "praça", "praca", "largo", "vía", "via", "gran vía",
    "gran via",
];

/// US street suffixes. `abbrev` ones ("St", "Ave") are only ever street types; full words
/// ("Way", "Drive") also occur in prose and need capitalised names before them.
#[rustfmt::skip]
const SUFFIX_ABBREV: &[&str] = &[
    "st", "st.", "ave", "ave.", "blvd", "blvd.", "rd", "rd.", "dr", "dr.", "ln", "ln.", "ct",
    "ct.", "pl", "ter", "ter.", "pkwy", "pkwy.", "hwy", "hwy.", "cir", "cir.", "trl",
];
#[rustfmt::skip]
const SUFFIX_WORD: &[&str] = &[
    "street", "avenue", "boulevard", "road", "drive", "lane", "court", "place", "terrace",
    "parkway", "highway", "circle", "way", "trail",
];

/// The compiled vocabulary.
pub struct Keywords {
    ac: AhoCorasick,
    kinds: Vec<Kw>,
    /// Whether the pattern ends in a letter or digit, i.e. needs a word boundary after it.
    needs_end: Vec<bool>,
}

fn strip_accents(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'á' | 'à' | 'â' | 'ã' => 'a',
            'é' | 'ê' => 'e',
            'í' => 'i',
            'ó' | 'ô' | 'õ' => 'o',
            'ú' | 'ü' => 'u',
            'ç' => 'c',
            'ñ' => 'n',
            c => c,
        })
        .collect()
}

impl Keywords {
    pub fn new() -> Self {
        let mut pats: Vec<String> = Vec::new();
        let mut kinds = Vec::new();
        let groups: [(&[&str], Kw); 15] = [
            (PHONE, Kw::Phone),
            (CEDULA, Kw::Id(IdKw::Cedula)),
            (SSN, Kw::Id(IdKw::Ssn)),
            (CHECKSUMMED, Kw::Id(IdKw::Checksummed)),
            (MEXICAN, Kw::Id(IdKw::Mexican)),
            (PASSPORT, Kw::Id(IdKw::Passport)),
            (BANK, Kw::Bank),
            (DOB, Kw::Dob),
            (BIRTHDAY, Kw::Birthday),
            (NEG, Kw::Neg),
            (ACCOUNT, Kw::Account),
            (STREET_STRONG, Kw::Street { strong: true }),
            (STREET_WEAK, Kw::Street { strong: false }),
            (SUFFIX_ABBREV, Kw::Suffix { abbrev: true }),
            (SUFFIX_WORD, Kw::Suffix { abbrev: false }),
        ];
        for (words, kind) in groups {
            for w in words {
                // Spellings: as written, without accents, and upper case (ASCII case is folded
                // by the automaton, but "CÉDULA" needs its own pattern).
                for v in [w.to_string(), strip_accents(w), w.to_uppercase()] {
                    if !pats.contains(&v) {
                        pats.push(v);
                        kinds.push(kind);
                    }
                }
            }
        }
        let needs_end = pats
            .iter()
            .map(|p| p.chars().last().is_some_and(char::is_alphanumeric))
            .collect();
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            // A full DFA: a few hundred kilobytes once, and the fastest scan per message.
            .kind(Some(AhoCorasickKind::DFA))
            .build(&pats)
            .expect("keyword automaton builds from static patterns");
        Keywords {
            ac,
            kinds,
            needs_end,
        }
    }

    /// All whole-word context words in `text`, in order.
    pub fn find(&self, text: &str, out: &mut Vec<KwMatch>) {
        // Leftmost-longest matching skips whatever overlaps a match, so a match rejected for its
        // word boundaries must not hide a shorter word inside it: "me ligar" is not "me liga",
        // but it does contain "ligar". Resume one byte after a rejected start.
        let mut pos = 0;
        while pos < text.len() {
            let Some(m) = self.ac.find(Input::new(text).span(pos..text.len())) else {
                break;
            };
            let id = m.pattern().as_usize();
            let ok =
                word_start(text, m.start()) && (!self.needs_end[id] || word_end(text, m.end()));
            if ok {
                out.push(KwMatch {
                    start: m.start(),
                    end: m.end(),
                    kind: self.kinds[id],
                });
                pos = m.end();
            } else {
                pos = m.start() + 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(String, Kw)> {
        let k = Keywords::new();
        let mut v = Vec::new();
        k.find(text, &mut v);
        v.into_iter()
            .map(|m| (text[m.start..m.end].to_string(), m.kind))
            .collect()
    }

    #[test]
    fn finds_whole_words_in_any_case_and_accent() {
        let got = kinds("Mi CÉDULA es 123, mi cel: 300. Acceso al calleja. Cedula ok");
        let words: Vec<&str> = got.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(words, ["CÉDULA", "cel", "Cedula"]);
        assert_eq!(got[0].1, Kw::Id(IdKw::Cedula));
        assert_eq!(got[1].1, Kw::Phone);
    }

    #[test]
    fn a_rejected_phrase_does_not_hide_a_word_inside_it() {
        let got = kinds("pode me ligar no 5364-2938");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "ligar");
        assert_eq!(got[0].1, Kw::Phone);
    }

    #[test]
    fn prefers_the_longest_phrase() {
        let got = kinds("fecha de nacimiento: 1990");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "fecha de nacimiento");
        assert_eq!(got[0].1, Kw::Dob);
    }

    #[test]
    fn street_words_and_suffixes() {
        let got = kinds("C/ Mayor 12 y 123 Main St. y ¿Calle 45?");
        let k: Vec<Kw> = got.iter().map(|g| g.1).collect();
        assert_eq!(
            k,
            [
                Kw::Street { strong: true },
                Kw::Suffix { abbrev: true },
                Kw::Street { strong: true }
            ]
        );
    }
}
