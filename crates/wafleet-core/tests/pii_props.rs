//! Properties of the redactor over inputs nobody wrote by hand: it never panics, its spans are
//! well-formed, and a payment card number never survives it, however it is grouped and whatever
//! text surrounds it (the one documented exception: a 13-digit number that is also a valid
//! EAN-13 barcode, right after a product word).

use proptest::prelude::*;
use wafleet_core::pii::{
    Redactor,
    checksums::{ean13_valid, luhn_valid},
};

fn redactor() -> &'static Redactor {
    static R: std::sync::OnceLock<Redactor> = std::sync::OnceLock::new();
    R.get_or_init(Redactor::new)
}

/// Spans sorted, disjoint, in bounds, on character boundaries; the text is rebuilt from them.
fn check_well_formed(text: &str) {
    let r = redactor().redact(text);
    let mut last = 0;
    let mut rebuilt = String::new();
    for s in &r.spans {
        assert!(
            s.start >= last && s.start < s.end && s.end <= text.len(),
            "{s:?} in {text:?}"
        );
        assert!(text.is_char_boundary(s.start) && text.is_char_boundary(s.end));
        rebuilt.push_str(&text[last..s.start]);
        rebuilt.push_str(s.kind.placeholder());
        last = s.end;
    }
    rebuilt.push_str(&text[last..]);
    assert_eq!(rebuilt, r.text);
    assert_eq!(redactor().find(text), r.spans);
}

/// Text that looks like chat: words, digits, the punctuation our detectors care about, accents,
/// emoji.
fn chatty() -> impl Strategy<Value = String> {
    proptest::string::string_regex(
        "([a-zA-Z]{1,8}|[0-9]{1,5}|[ .,:;#/+()@$€%-]|[áéíóúñçãõºª°¿¡]|😊|\n| ){0,30}",
    )
    .unwrap()
}

/// A Luhn-valid number with a real issuer prefix and length.
fn card_number() -> impl Strategy<Value = String> {
    let brands: Vec<(&'static str, usize)> = vec![
        ("4", 16),
        ("4", 19),
        ("4", 13),
        ("51", 16),
        ("55", 16),
        ("2221", 16),
        ("2720", 16),
        ("34", 15),
        ("37", 15),
        ("36", 14),
        ("300", 14),
        ("6011", 16),
        ("65", 16),
        ("3530", 16),
        ("62", 19),
        ("6362", 16),
        ("5067", 16),
    ];
    (
        proptest::sample::select(brands),
        proptest::collection::vec(0u8..10, 19),
    )
        .prop_map(|((prefix, len), rand)| {
            let mut d: Vec<u8> = prefix.bytes().collect();
            let mut k = 0;
            while d.len() < len - 1 {
                d.push(b'0' + rand[k]);
                k += 1;
            }
            for c in b'0'..=b'9' {
                d.push(c);
                if luhn_valid(&d) {
                    break;
                }
                d.pop();
            }
            String::from_utf8(d).unwrap()
        })
}

/// The card's digits split into groups of 1–6 joined by nothing, a space, a dash, a dot or a
/// slash.
fn grouped(card: String) -> impl Strategy<Value = (String, String)> {
    let n = card.len();
    proptest::collection::vec((1usize..=6, 0u8..5), 1..=n).prop_map(move |cuts| {
        let mut out = String::new();
        let mut i = 0;
        for (size, sep) in cuts {
            if i >= n {
                break;
            }
            let e = (i + size).min(n);
            if i > 0 {
                out.push_str(["", " ", "-", ".", "/"][sep as usize]);
            }
            out.push_str(&card[i..e]);
            i = e;
        }
        if i < n {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&card[i..]);
        }
        (card.clone(), out)
    })
}

/// The card's digits over several lines: groups of 4–8 digits (a shorter rest joins the group
/// before it), each line break `\n` or `\r\n` with or without spaces around it.
fn over_lines(card: String) -> impl Strategy<Value = (String, String)> {
    let n = card.len();
    proptest::collection::vec((4usize..=8, 0u8..4), 2..=4).prop_map(move |cuts| {
        let mut bounds = vec![0];
        for (size, _) in &cuts {
            let last = *bounds.last().unwrap();
            if n - last >= size + 4 {
                bounds.push(last + size);
            }
        }
        bounds.push(n);
        let mut out = String::new();
        for (k, w) in bounds.windows(2).enumerate() {
            if k > 0 {
                out.push_str(["\n", " \n", "\r\n", "\n "][cuts[k % cuts.len()].1 as usize]);
            }
            out.push_str(&card[w[0]..w[1]]);
        }
        (card.clone(), out)
    })
}

fn digits_only(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_unicode(s in any::<String>()) {
        check_well_formed(&s);
    }

    #[test]
    fn never_panics_on_chat_like_text(s in chatty()) {
        check_well_formed(&s);
    }

    #[test]
    fn no_card_survives_in_any_grouping_or_surrounding(
        (digits, written) in card_number().prop_flat_map(grouped),
        before in chatty(),
        after in chatty(),
        open in proptest::sample::select(vec![" ", ": ", ", ", "\n", " (", " x ", " #", " $"]),
        close in proptest::sample::select(vec![" ", ".", ", ", "\n", ") ", "!", "? "]),
    ) {
        // The documented exception: a 13-digit valid EAN-13 after a product word is a barcode.
        prop_assume!(!(digits.len() == 13 && ean13_valid(digits.as_bytes())));
        let text = format!("{before}{open}{written}{close}{after}");
        check_well_formed(&text);
        let out = redactor().redact(&text).text;
        prop_assert!(
            !digits_only(&out).contains(&digits),
            "card {digits} survived: {text:?} -> {out:?}"
        );
    }

    #[test]
    fn no_card_survives_written_over_several_lines(
        (digits, written) in card_number().prop_flat_map(over_lines),
        before in chatty(),
        after in chatty(),
    ) {
        prop_assume!(!(digits.len() == 13 && ean13_valid(digits.as_bytes())));
        let text = format!("{before}\n{written}\n{after}");
        let out = redactor().redact(&text).text;
        prop_assert!(
            !digits_only(&out).contains(&digits),
            "card {digits} survived: {text:?} -> {out:?}"
        );
    }
}
