//! Check-digit arithmetic for the identifiers the redactor recognises: Luhn and issuer prefixes
//! for payment cards, mod-97 for IBANs, the two mod-11 digits of Brazil's CPF and CNPJ, the
//! mod-23 letter of Spain's DNI and NIE, the structural rules of a US SSN, and Mexico's three:
//! the CURP's and RFC's check characters and the CLABE's weighted mod-10 digit.
//!
//! Every function takes the bare characters (digits only, or the IBAN without spaces) and never
//! panics: a malformed argument is simply "not valid". Nothing here looks at context; deciding
//! whether a number *is* an identifier is the detectors' job.

/// Luhn (mod 10) over ASCII digits. Non-digits make the number invalid.
pub fn luhn_valid(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let mut sum = 0u32;
    for (i, &c) in digits.iter().rev().enumerate() {
        if !c.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(c - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

/// Whether a 13–19 digit string starts like a card that a network actually issues, with a length
/// that network uses. This is what keeps Luhn-valid barcodes (GS1 prefixes 0, 1, 7, 8, 9),
/// Mercado Libre order ids (2000…) and the like from being taken for cards: a Luhn check alone
/// passes one random number in ten.
///
/// Ranges: Visa 4 (13, 16–19 digits); Mastercard 51–55 and 2221–2720; Mir 2200–2204;
/// Amex 34/37 (15); Diners 300–305, 36, 38, 39; JCB 35; Discover/UnionPay/Elo/Hipercard/Maestro
/// 5x and 6x. Only Visa ever issued 13 digits, only Amex uses 15.
pub fn card_prefix_plausible(digits: &[u8]) -> bool {
    let n = digits.len();
    if !(13..=19).contains(&n) || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let d = |i: usize| u32::from(digits[i] - b'0');
    let p2 = d(0) * 10 + d(1);
    let p4 = p2 * 100 + d(2) * 10 + d(3);
    match d(0) {
        4 => n != 15 && n != 14,
        5 => n >= 16,
        6 => n >= 16,
        3 => match p2 {
            34 | 37 => n == 15,
            30 => (3000..=3059).contains(&p4) && n >= 14,
            36 | 38 | 39 => n >= 14,
            35 => n >= 16,
            _ => false,
        },
        2 => ((2200..=2204).contains(&p4) || (2221..=2720).contains(&p4)) && n >= 16,
        _ => false,
    }
}

/// A payment card: Luhn-valid with a plausible issuer prefix and length.
pub fn is_card(digits: &[u8]) -> bool {
    card_prefix_plausible(digits) && luhn_valid(digits)
}

/// Brazil's CPF: 11 digits, two mod-11 check digits, and not all digits equal (000.000.000-00
/// and friends pass the arithmetic but are not issued).
pub fn cpf_valid(digits: &[u8]) -> bool {
    if digits.len() != 11 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    if digits.iter().all(|&c| c == digits[0]) {
        return false;
    }
    let v: Vec<u32> = digits.iter().map(|&c| u32::from(c - b'0')).collect();
    let check = |len: usize| {
        let s: u32 = (0..len).map(|i| v[i] * (len as u32 + 1 - i as u32)).sum();
        let r = (s * 10) % 11;
        if r == 10 { 0 } else { r }
    };
    check(9) == v[9] && check(10) == v[10]
}

/// Brazil's CNPJ: 14 digits, two mod-11 check digits with the 5..2,9..2 weights.
pub fn cnpj_valid(digits: &[u8]) -> bool {
    if digits.len() != 14 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    if digits.iter().all(|&c| c == digits[0]) {
        return false;
    }
    let v: Vec<u32> = digits.iter().map(|&c| u32::from(c - b'0')).collect();
    const W1: [u32; 12] = [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2];
    const W2: [u32; 13] = [6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2];
    let dv = |w: &[u32]| {
        let s: u32 = w.iter().zip(&v).map(|(a, b)| a * b).sum();
        let r = s % 11;
        if r < 2 { 0 } else { 11 - r }
    };
    dv(&W1) == v[12] && dv(&W2) == v[13]
}

const DNI_LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";

/// The check letter of a Spanish DNI number (8 digits) or NIE number with its X/Y/Z already
/// turned into 0/1/2.
pub fn dni_letter(number: u32) -> u8 {
    DNI_LETTERS[(number % 23) as usize]
}

/// Spain's DNI: 8 digits and the mod-23 letter (either case).
pub fn dni_valid(digits: &[u8], letter: u8) -> bool {
    if digits.len() != 8 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let n = digits
        .iter()
        .fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'));
    dni_letter(n) == letter.to_ascii_uppercase()
}

/// Spain's NIE: X, Y or Z, 7 digits and the mod-23 letter (either case).
pub fn nie_valid(prefix: u8, digits: &[u8], letter: u8) -> bool {
    let lead = match prefix.to_ascii_uppercase() {
        b'X' => 0,
        b'Y' => 1,
        b'Z' => 2,
        _ => return false,
    };
    if digits.len() != 7 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let n = digits
        .iter()
        .fold(lead, |a, &c| a * 10 + u32::from(c - b'0'));
    dni_letter(n) == letter.to_ascii_uppercase()
}

/// A US Social Security number as issued: area not 000, 666 or 900–999; group not 00; serial not
/// 0000. Takes the 9 digits.
pub fn ssn_valid(digits: &[u8]) -> bool {
    if digits.len() != 9 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let area = &digits[0..3];
    if area == b"000" || area == b"666" || area[0] == b'9' {
        return false;
    }
    &digits[3..5] != b"00" && &digits[5..9] != b"0000"
}

/// ISO 13616 mod-97 check over an IBAN without spaces (letters in either case).
pub fn iban_valid(iban: &[u8]) -> bool {
    if iban.len() < 15 || iban.len() > 34 {
        return false;
    }
    if !iban[0].is_ascii_alphabetic()
        || !iban[1].is_ascii_alphabetic()
        || !iban[2].is_ascii_digit()
        || !iban[3].is_ascii_digit()
    {
        return false;
    }
    let mut rem = 0u32;
    for &c in iban[4..].iter().chain(&iban[..4]) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'a'..=b'z' => u32::from(c - b'a') + 10,
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// The IBAN length of the countries our customers' banks are in: SEPA, Brazil and the few
/// Latin American IBAN countries. An unknown country code is not an IBAN here — two letters,
/// two digits and a few words pass mod-97 once in 97 tries ("invoice FE53953 has the…").
pub fn iban_length(country: [u8; 2]) -> Option<usize> {
    let cc = [
        country[0].to_ascii_uppercase(),
        country[1].to_ascii_uppercase(),
    ];
    Some(match &cc {
        b"ES" => 24,
        b"PT" => 25,
        b"BR" => 29,
        b"DE" => 22,
        b"FR" => 27,
        b"IT" => 27,
        b"GB" => 22,
        b"IE" => 22,
        b"NL" => 18,
        b"BE" => 16,
        b"CH" => 21,
        b"AT" => 20,
        b"LU" => 20,
        b"AD" => 24,
        b"MC" => 27,
        b"DK" => 18,
        b"SE" => 24,
        b"NO" => 15,
        b"FI" => 18,
        b"PL" => 28,
        b"CR" => 22,
        b"DO" => 28,
        b"GT" => 28,
        b"SV" => 28,
        b"AL" => 28,
        b"BA" => 20,
        b"BG" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"EE" => 20,
        b"GI" => 23,
        b"GR" => 27,
        b"HR" => 21,
        b"HU" => 28,
        b"IS" => 26,
        b"LI" => 21,
        b"LT" => 20,
        b"LV" => 21,
        b"MT" => 31,
        b"RO" => 24,
        b"RS" => 22,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"TR" => 26,
        b"UA" => 29,
        _ => return None,
    })
}

/// Mexico's CLABE (the 18-digit interbank account number): weights 3, 7, 1 over the first 17
/// digits, each product taken mod 10; the 18th digit is (10 - sum mod 10) mod 10.
pub fn clabe_valid(digits: &[u8]) -> bool {
    if digits.len() != 18 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    const W: [u32; 3] = [3, 7, 1];
    let s: u32 = digits[..17]
        .iter()
        .enumerate()
        .map(|(i, &c)| (u32::from(c - b'0') * W[i % 3]) % 10)
        .sum();
    (10 - s % 10) % 10 == u32::from(digits[17] - b'0')
}

/// A day that exists in a two-digit-year calendar (`YYMMDD`), as CURPs and RFCs write birth dates.
pub fn yymmdd_valid(d: &[u8]) -> bool {
    if d.len() != 6 || !d.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let n = |i: usize| u32::from(d[i] - b'0') * 10 + u32::from(d[i + 1] - b'0');
    let (yy, mm, dd) = (n(0), n(2), n(4));
    let days = match mm {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        // Any year ending in 00 could be 2000, a leap year.
        2 if yy % 4 == 0 => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&dd)
}

/// The value of a CURP character in RENAPO's alphabet `0-9 A-N Ñ O-Z` (Ñ is written as X in a
/// CURP, but the alphabet keeps its place, so O..Z count one higher than their ASCII rank).
fn curp_value(c: u8) -> Option<u32> {
    match c.to_ascii_uppercase() {
        c @ b'0'..=b'9' => Some(u32::from(c - b'0')),
        c @ b'A'..=b'N' => Some(u32::from(c - b'A') + 10),
        c @ b'O'..=b'Z' => Some(u32::from(c - b'O') + 25),
        _ => None,
    }
}

/// The 32 Mexican states (and NE, born abroad) as the CURP abbreviates them.
const CURP_STATES: [&[u8; 2]; 33] = [
    b"AS", b"BC", b"BS", b"CC", b"CL", b"CM", b"CS", b"CH", b"DF", b"DG", b"GT", b"GR", b"HG",
    b"JC", b"MC", b"MN", b"MS", b"NT", b"NL", b"OC", b"PL", b"QT", b"QR", b"SP", b"SL", b"SR",
    b"TC", b"TS", b"TL", b"VZ", b"YN", b"ZS", b"NE",
];

/// Mexico's CURP, 18 characters in either case: four letters (the second a vowel or X), the
/// birth date `YYMMDD`, sex (H, M or X), the state, three consonants, one letter or digit, and a
/// check digit over the first 17 (weights 18 down to 2, mod 10).
pub fn curp_valid(s: &[u8]) -> bool {
    if s.len() != 18 {
        return false;
    }
    let u: Vec<u8> = s.iter().map(u8::to_ascii_uppercase).collect();
    let consonant = |c: u8| c.is_ascii_uppercase() && !b"AEIOU".contains(&c);
    let shape = u[..4].iter().all(u8::is_ascii_uppercase)
        && b"AEIOUX".contains(&u[1])
        && yymmdd_valid(&u[4..10])
        && b"HMX".contains(&u[10])
        && CURP_STATES.iter().any(|st| st[..] == u[11..13])
        && u[13..16].iter().all(|&c| consonant(c))
        && u[16].is_ascii_alphanumeric()
        && u[17].is_ascii_digit();
    if !shape {
        return false;
    }
    let mut sum = 0u32;
    for (i, &c) in u[..17].iter().enumerate() {
        let Some(v) = curp_value(c) else { return false };
        sum += v * (18 - i as u32);
    }
    (10 - sum % 10) % 10 == u32::from(u[17] - b'0')
}

/// The shape of the key on a Mexican voter card (INE's "clave de elector"), 18 characters in
/// either case: six letters from the names, the birth date `YYMMDD`, the state of birth (01–32,
/// 87 and 88 for born abroad), sex (H or M) and three digits. It has no check digit; the date,
/// the state and the fixed layout are what tell it apart.
pub fn elector_key_shape(s: &[u8]) -> bool {
    s.len() == 18
        && s[..6].iter().all(u8::is_ascii_alphabetic)
        && yymmdd_valid(&s[6..12])
        && s[12..14].iter().all(u8::is_ascii_digit)
        && {
            let state = u32::from(s[12] - b'0') * 10 + u32::from(s[13] - b'0');
            (1..=32).contains(&state) || state == 87 || state == 88
        }
        && b"HM".contains(&s[14].to_ascii_uppercase())
        && s[15..].iter().all(u8::is_ascii_digit)
}

/// The value of an RFC character in SAT's alphabet `0-9 A-N & O-Z space Ñ`.
fn rfc_value(c: u8) -> Option<u32> {
    match c.to_ascii_uppercase() {
        c @ b'0'..=b'9' => Some(u32::from(c - b'0')),
        c @ b'A'..=b'N' => Some(u32::from(c - b'A') + 10),
        b'&' => Some(24),
        c @ b'O'..=b'Z' => Some(u32::from(c - b'O') + 25),
        b' ' => Some(37),
        _ => None,
    }
}

/// The shape of a person's RFC (Mexico's tax id), 13 characters in either case: four letters
/// (or `&`), the birth date `YYMMDD`, and a three-character homoclave whose last is a digit or A.
/// A company's RFC has three letters; it is not personal data and is left alone.
pub fn rfc_person_shape(s: &[u8]) -> bool {
    s.len() == 13
        && s[..4].iter().all(|&c| c.is_ascii_alphabetic() || c == b'&')
        && yymmdd_valid(&s[4..10])
        && s[10..12].iter().all(u8::is_ascii_alphanumeric)
        && (s[12].is_ascii_digit() || s[12].eq_ignore_ascii_case(&b'A'))
}

/// A person's RFC whose check character (weights 13 down to 2 over the first 12, mod 11; 10 is
/// written A) is right.
pub fn rfc_person_valid(s: &[u8]) -> bool {
    if !rfc_person_shape(s) {
        return false;
    }
    let mut sum = 0u32;
    for (i, &c) in s[..12].iter().enumerate() {
        let Some(v) = rfc_value(c) else { return false };
        sum += v * (13 - i as u32);
    }
    let check = (11 - sum % 11) % 11;
    let want = if check == 10 {
        b'A'
    } else {
        b'0' + check as u8
    };
    s[12].to_ascii_uppercase() == want
}

/// GS1 EAN-13 check digit (weights 1,3 from the left). Not used to *redact* anything — barcodes
/// are not personal data — but kept here so tests and the corpus agree on what a valid one is.
pub fn ean13_valid(digits: &[u8]) -> bool {
    if digits.len() != 13 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let s: u32 = digits[..12]
        .iter()
        .enumerate()
        .map(|(i, &c)| u32::from(c - b'0') * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    (10 - s % 10) % 10 == u32::from(digits[12] - b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_known_test_cards_and_rejects_one_digit_off() {
        for (n, ok) in [
            ("4111111111111111", true),
            ("4111111111111112", false),
            ("5555555555554444", true),
            ("378282246310005", true),
            ("6011111111111117", true),
            ("4222222222222", true),
            ("79927398713", true),
            ("79927398710", false),
            ("", false),
            ("41111111111a1111", false),
        ] {
            assert_eq!(luhn_valid(n.as_bytes()), ok, "{n}");
        }
    }

    #[test]
    fn card_prefix_needs_an_issuer_range_and_its_length() {
        for (n, ok) in [
            ("4111111111111111", true),
            ("4222222222222", true),    // 13-digit Visa
            ("378282246310005", true),  // Amex 15
            ("30569309025904", true),   // Diners 14
            ("3530111333300000", true), // JCB
            ("2223003122003222", true), // Mastercard 2-series
            ("6362970000457013", true), // Elo
            ("7701234567897", false),   // EAN-13 from Colombia, even if Luhn were valid
            ("2000004567891234", false),
            ("5555555555554", false), // 13 digits only for Visa
            ("1234567812345670", false),
        ] {
            assert_eq!(card_prefix_plausible(n.as_bytes()), ok, "{n}");
        }
    }

    #[test]
    fn cpf_and_cnpj_check_digits() {
        assert!(cpf_valid(b"52998224725"));
        assert!(cpf_valid(b"11144477735"));
        assert!(!cpf_valid(b"52998224726"));
        assert!(!cpf_valid(b"11111111111"));
        assert!(!cpf_valid(b"5299822472"));
        assert!(cnpj_valid(b"11222333000181"));
        assert!(cnpj_valid(b"11444777000161"));
        assert!(!cnpj_valid(b"11222333000182"));
        assert!(!cnpj_valid(b"00000000000000"));
    }

    #[test]
    fn dni_and_nie_letters() {
        assert!(dni_valid(b"12345678", b'Z'));
        assert!(dni_valid(b"12345678", b'z'));
        assert!(!dni_valid(b"12345678", b'A'));
        assert!(nie_valid(b'X', b"1234567", b'L'));
        assert!(nie_valid(b'Y', b"1234567", b'X'));
        assert!(!nie_valid(b'X', b"1234567", b'A'));
        assert!(!nie_valid(b'W', b"1234567", b'L'));
    }

    #[test]
    fn ssn_rules() {
        for (n, ok) in [
            ("123456789", true),
            ("000456789", false),
            ("666456789", false),
            ("912456789", false),
            ("123006789", false),
            ("123450000", false),
            ("12345678", false),
        ] {
            assert_eq!(ssn_valid(n.as_bytes()), ok, "{n}");
        }
    }

    #[test]
    fn iban_mod97() {
        assert!(iban_valid(b"ES9121000418450200051332"));
        assert!(iban_valid(b"es9121000418450200051332"));
        assert!(iban_valid(b"DE89370400440532013000"));
        assert!(iban_valid(b"PT50000201231234567890154"));
        assert!(iban_valid(b"GB82WEST12345698765432"));
        assert!(iban_valid(b"BR1800360305000010009795493C1"));
        assert!(!iban_valid(b"ES9121000418450200051333"));
        assert!(!iban_valid(b"ES91"));
        assert_eq!(iban_length(*b"es"), Some(24));
    }

    #[test]
    fn ean13_check_digit() {
        assert!(ean13_valid(b"4006381333931"));
        assert!(!ean13_valid(b"4006381333932"));
    }

    #[test]
    fn mexican_identifiers() {
        // Published examples (python-stdnum's mx.curp and mx.rfc, the `clabe` package), one
        // character off, and well-formed but impossible ones.
        assert!(curp_valid(b"BOXW310820HNERXN09"));
        assert!(curp_valid(b"boxw310820hnerxn09"));
        assert!(!curp_valid(b"BOXW310820HNERXN08"));
        assert!(!curp_valid(b"BOXW311320HNERXN09"), "month 13");
        assert!(!curp_valid(b"BOXW310820HZZRXN09"), "no state ZZ");
        assert!(rfc_person_valid(b"GODE561231GR8"));
        assert!(!rfc_person_valid(b"GODE561231GR9"));
        assert!(
            !rfc_person_valid(b"GOD561231GR8"),
            "a company's RFC is not a person's"
        );
        assert!(rfc_person_shape(b"GODE561231GR9"));
        assert!(!rfc_person_shape(b"GODE560231GR8"), "31 February");
        assert!(clabe_valid(b"002000000000000008"));
        assert!(clabe_valid(b"032180000118359719"));
        assert!(!clabe_valid(b"032180000118359718"));
        assert!(!clabe_valid(b"03218000011835971"), "17 digits");
        assert!(elector_key_shape(b"GMVLMR80070501M100"));
        assert!(!elector_key_shape(b"GMVLMR80070540M100"), "no state 40");
        assert!(!elector_key_shape(b"GMVLMR80130501M100"), "month 13");
        assert!(yymmdd_valid(b"000229"), "2000 was a leap year");
        assert!(!yymmdd_valid(b"010229"));
    }
}
