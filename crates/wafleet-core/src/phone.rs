//! The notations one WhatsApp phone number has.
//!
//! Meta names a customer by their `wa_id`, which is not always the number a business dials
//! (reference A.4 and B.2: `contacts[].input` echoes the number sent, `wa_id` may differ). Two
//! countries rewrite mobile numbers, and their customers are served on both forms:
//! - Mexico dropped the `1` that marked mobile numbers in international notation (2019), but
//!   many WhatsApp accounts are still named `521` + the ten digits; a business dials `52` + ten.
//! - Brazil added a `9` in front of mobile numbers (2012–2016); accounts made before it are
//!   named without it (`55` + area + eight digits), and a business dials the nine digits.
//!
//! [`forms`] gives every notation of a number, which is how a number a business typed is matched
//! against the conversations, allowlists and erasure requests that hold another one. Anything that
//! is not such a number has only itself as its form.

/// The number itself (digits, no `+`) followed by its other notation, if it has one.
///
/// ```
/// use wafleet_core::phone::forms;
/// assert_eq!(forms("525512345678"), ["525512345678", "5215512345678"]);
/// assert_eq!(forms("5511987654321"), ["5511987654321", "551187654321"]);
/// assert_eq!(forms("573005550101"), ["573005550101"]);
/// ```
pub fn forms(number: &str) -> Vec<String> {
    let mut all = vec![number.to_string()];
    all.extend(other_form(number));
    all
}

/// The other notation of a Mexican or Brazilian mobile number, `None` for any other number.
pub fn other_form(number: &str) -> Option<String> {
    let b = number.as_bytes();
    if !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    match (b.len(), b) {
        // Mexico: 52 + ten digits ⇄ 521 + ten digits. (No Mexican number's ten digits begin with 1,
        // so 52 1 … of length 12 is not a candidate.)
        (12, [b'5', b'2', first, ..]) if *first != b'1' => Some(format!("521{}", &number[2..])),
        (13, [b'5', b'2', b'1', first, ..]) if *first != b'1' => {
            Some(format!("52{}", &number[3..]))
        }
        // Brazil: 55 + area code (11–99, no zero) + a mobile's eight digits (6–9 first) ⇄ the same
        // with the 9 in front of them.
        (12, [b'5', b'5', a, c, first, ..]) if area(*a, *c) && mobile(*first) => {
            Some(format!("{}9{}", &number[..4], &number[4..]))
        }
        (13, [b'5', b'5', a, c, b'9', first, ..]) if area(*a, *c) && mobile(*first) => {
            Some(format!("{}{}", &number[..4], &number[5..]))
        }
        _ => None,
    }
}

/// A Brazilian area code: two digits, neither zero.
fn area(a: u8, b: u8) -> bool {
    a != b'0' && b != b'0'
}

/// The first of a Brazilian mobile's eight digits (landlines begin with 2–5 and are not rewritten).
fn mobile(d: u8) -> bool {
    (b'6'..=b'9').contains(&d)
}

/// Whether two numbers are one customer's: equal, or each the other's other notation.
pub fn same_number(a: &str, b: &str) -> bool {
    a == b || other_form(a).is_some_and(|o| o == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mexican_numbers_have_both_forms() {
        assert_eq!(other_form("525512345678").as_deref(), Some("5215512345678"));
        assert_eq!(other_form("5215512345678").as_deref(), Some("525512345678"));
        assert_eq!(other_form("523312345678").as_deref(), Some("5213312345678"));
    }

    #[test]
    fn brazilian_mobiles_have_both_forms() {
        assert_eq!(other_form("5511987654321").as_deref(), Some("551187654321"));
        assert_eq!(other_form("551187654321").as_deref(), Some("5511987654321"));
        assert_eq!(other_form("5521999998888").as_deref(), Some("552199998888"));
    }

    #[test]
    fn other_numbers_have_one_form() {
        for n in [
            // Colombia, Spain, the US, Argentina.
            "573005550101",
            "34612345678",
            "16505551234",
            "5491123456789",
            // A Brazilian landline (begins with 3), with and without a 9 in front.
            "551133334444",
            "5511933334444",
            // Brazilian area codes have no zero.
            "550187654321",
            // Mexico's shapes, a digit short or long.
            "52551234567",
            "52155123456789",
            // 52 1 followed by a 1: not the mobile prefix.
            "521123456789",
            // Not digits.
            "US.13491208655302741918",
            "",
        ] {
            assert_eq!(other_form(n), None, "{n}");
            assert_eq!(forms(n), [n]);
        }
    }

    #[test]
    fn the_other_form_of_the_other_form_is_the_number() {
        for n in [
            "525512345678",
            "5215512345678",
            "5511987654321",
            "551187654321",
        ] {
            let other = other_form(n).unwrap();
            assert_eq!(other_form(&other).as_deref(), Some(n));
            assert!(same_number(n, &other) && same_number(&other, n));
        }
        assert!(same_number("573005550101", "573005550101"));
        assert!(!same_number("525512345678", "525512345679"));
    }
}
