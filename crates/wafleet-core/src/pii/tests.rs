//! End-to-end tests of [`Redactor`]: whole messages in, placeholders out.

use super::*;

fn redact(t: &str) -> String {
    Redactor::new().redact(t).text
}

#[test]
fn clean_messages_come_back_unchanged() {
    for t in [
        "",
        "Hola, ¿tienen la crema de caléndula?",
        "Mi pedido #100234567 no ha llegado",
        "El total fue R$ 1.299,90 e chegou dia 15/03/2024",
        "Order 4587-2231 shipped via 1Z999AA10123456784",
    ] {
        assert_eq!(redact(t), t);
    }
}

#[test]
fn every_type_gets_its_placeholder() {
    for (t, want) in [
        ("correo ana@x.co", "correo [EMAIL]"),
        ("cel 300 123 4567", "cel [PHONE]"),
        ("tarjeta 4111 1111 1111 1111", "tarjeta [CARD]"),
        ("IBAN ES91 2100 0418 4502 0005 1332", "IBAN [IBAN]"),
        ("CPF 529.982.247-25", "CPF [NATIONAL_ID]"),
        ("ip 10.0.0.1", "ip [IP]"),
        ("https://a:b@x.com", "[URL_CREDENTIALS]"),
        ("nací el 01/02/1990", "nací el [DOB]"),
        ("Calle 45 # 12-34", "[ADDRESS]"),
        ("mi contraseña es hunter2", "mi contraseña es [SECRET]"),
    ] {
        assert_eq!(redact(t), want, "{t}");
    }
}

#[test]
fn numbers_grouped_by_unicode_spaces_are_found_and_the_rest_is_kept() {
    for (t, want) in [
        // No-break spaces, as banking apps copy a card number.
        (
            "tarjeta 4111\u{a0}1111\u{a0}1111\u{a0}1111 ok",
            "tarjeta [CARD] ok",
        ),
        // Narrow no-break spaces, the French grouping; thin spaces.
        (
            "carte 4111\u{202f}1111\u{202f}1111\u{202f}1111",
            "carte [CARD]",
        ),
        ("cel 300\u{2009}123\u{2009}4567", "cel [PHONE]"),
        // Accents before and after the number keep their place.
        (
            "número\u{a0}de tarjeta: 5555\u{a0}5555\u{a0}5555\u{a0}4444, ¿está bien?",
            "número\u{a0}de tarjeta: [CARD], ¿está bien?",
        ),
        // A price with a no-break space is not personal data.
        ("total 1\u{a0}299,90\u{a0}€", "total 1\u{a0}299,90\u{a0}€"),
    ] {
        assert_eq!(redact(t), want, "{t:?}");
    }
}

#[test]
fn numbers_grouped_by_unicode_dashes_are_found_and_the_rest_is_kept() {
    for (t, want) in [
        // En dashes and non-breaking hyphens, as word processors and web pages write them.
        ("tarjeta 4111–1111–1111–1111 ok", "tarjeta [CARD] ok"),
        (
            "tarjeta 5555\u{2011}5555\u{2011}5555\u{2011}4444",
            "tarjeta [CARD]",
        ),
        ("4111—1111—1111—1111", "[CARD]"),
        ("SSN 123‐45‐6789", "SSN [NATIONAL_ID]"),
        ("cel 300–123–4567", "cel [PHONE]"),
        // A range of prices keeps its dash.
        (
            "entre 10–20 mil pesos — gracias",
            "entre 10–20 mil pesos — gracias",
        ),
    ] {
        assert_eq!(redact(t), want, "{t:?}");
    }
}

#[test]
fn spans_are_sorted_disjoint_and_point_into_the_input() {
    let t = "Soy Ana (ana@x.co), cel +57 300 123 4567, vivo en Cra 7 No. 72-41 y mi CC es 1.023.456.789";
    let r = Redactor::new().redact(t);
    let kinds: Vec<PiiType> = r.spans.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            PiiType::Email,
            PiiType::Phone,
            PiiType::Address,
            PiiType::NationalId
        ]
    );
    for w in r.spans.windows(2) {
        assert!(w[0].end <= w[1].start);
    }
    assert_eq!(&t[r.spans[1].start..r.spans[1].end], "+57 300 123 4567");
}

#[test]
fn redactor_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Redactor>();
}

#[test]
fn type_names_round_trip() {
    for t in PiiType::ALL {
        assert_eq!(PiiType::parse(t.as_str()), Some(t));
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            format!("\"{}\"", t.as_str())
        );
        assert_eq!(t.placeholder(), format!("[{}]", t.as_str()));
    }
}

#[test]
fn an_account_word_does_not_make_a_phone_a_reference_number() {
    // Nequi and Daviplata accounts are phone numbers; "account" is not "order".
    for (t, want) in [
        (
            "mi cuenta Nequi es 3001234567",
            "mi cuenta Nequi es [PHONE]",
        ),
        ("cuenta nequi 300 123 4567", "cuenta nequi [PHONE]"),
        ("account (650) 555-1234", "account [PHONE]"),
        ("my account 650-555-1234", "my account [PHONE]"),
        ("la cuenta 12345 tiene saldo", "la cuenta 12345 tiene saldo"),
    ] {
        assert_eq!(redact(t), want, "{t}");
    }
}

#[test]
fn a_card_after_a_secret_word_is_a_card_whole() {
    for (t, want) in [
        ("pin 4111 1111 1111 1111", "pin [CARD]"),
        ("clave 4111111111111111 gracias", "clave [CARD] gracias"),
        // The code after the card is still a secret.
        (
            "tarjeta 4111 1111 1111 1111 cvv 123",
            "tarjeta [CARD] cvv [SECRET]",
        ),
    ] {
        assert_eq!(redact(t), want, "{t}");
    }
}
