//! Adversarial and property tests for `markdown_to_whatsapp` followed by `split_message`, through
//! the public API only, with clusters the unit tests' generators do not make (keycaps,
//! tag-sequence flags, stacked combining marks, RTL text, CRLF input) and at Meta's real limit.

use proptest::prelude::*;
use unicode_segmentation::UnicodeSegmentation;
use wafleet_core::format::{WHATSAPP_MAX_CHARS, markdown_to_whatsapp, split_message};

fn utf16(s: &str) -> usize {
    s.encode_utf16().count()
}

/// What a cut may add or drop: whitespace, WhatsApp's markers (closed and reopened spans,
/// fences), and a quoted line's `>`.
fn shown(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, '*' | '_' | '~' | '`' | '>')
}

fn visible(s: &str) -> String {
    s.chars().filter(|c| shown(*c)).collect()
}

/// The grapheme clusters that hold something [`shown`], in order.
fn clusters(s: &str) -> Vec<&str> {
    s.graphemes(true).filter(|g| g.chars().any(shown)).collect()
}

/// Splits `text` and checks what every split must keep; returns the parts.
fn check_split(text: &str, max: usize) -> Result<Vec<String>, TestCaseError> {
    let parts = split_message(text, max);
    for part in &parts {
        prop_assert!(utf16(part) <= max, "part over {}: {:?}", max, part);
        prop_assert!(part.chars().count() <= max);
        prop_assert!(!part.trim().is_empty(), "blank part in {:?}", parts);
    }
    prop_assert_eq!(visible(&parts.concat()), visible(text), "{:?}", parts);
    Ok(parts)
}

/// The longest cluster below: the Scottish flag, 7 chars, 14 UTF-16 units.
const LONGEST_CLUSTER: usize = 14;

fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "hola",
        "שלום",
        "مرحبا",
        "עולם ",
        "1\u{fe0f}\u{20e3}",
        "#\u{fe0f}\u{20e3}",
        "🏴\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f}",
        "👩🏽‍💻",
        "👨‍👩‍👧‍👦",
        "🇨🇴",
        "a\u{301}\u{302}\u{303}",
        "ก\u{e34}\u{e49}",
        "한\u{1100}",
        " ",
        "\n",
        "\r\n",
        "\r\n\r\n",
        "\n\n",
        "**",
        "_",
        "~~",
        "`",
        "# ",
        "> ",
        "- ",
        "10. ",
        "```\n",
        "\n```\n",
        "[l](https://x.co/a_(b))",
        "| a | b |\n|---|---|\n| 1 | 2 |\n",
        "supercalifragilísticoexpialidoso",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn formatted_text_splits_within_the_limit_without_cutting_a_cluster(
        pieces in prop::collection::vec(piece(), 0..120),
        max in LONGEST_CLUSTER..=120,
    ) {
        let text = markdown_to_whatsapp(&pieces.concat());
        prop_assert!(!text.contains('\r'), "{:?}", text);
        let parts = check_split(&text, max)?;
        let split: Vec<&str> = parts.iter().flat_map(|p| clusters(p)).collect();
        prop_assert_eq!(split, clusters(&text), "{:?}", parts);
    }

    #[test]
    fn code_block_contents_are_kept_verbatim(
        lines in prop::collection::vec("[ ]{0,4}[a-z*_~#>|()\\[\\]=+.-]{1,12}( [a-z*_~#>|()=+.-]{1,12}){0,4}", 1..12),
    ) {
        let code = lines.join("\n");
        let text = markdown_to_whatsapp(&format!("Mira:\n\n```\n{code}\n```\n"));
        prop_assert_eq!(text, format!("Mira:\n\n```\n{code}\n```"));
    }
}

#[test]
fn a_word_longer_than_the_limit_is_cut_at_the_limit() {
    let word = "a".repeat(5000);
    let parts = split_message(&format!("Hola:\n\n{word}"), WHATSAPP_MAX_CHARS);
    assert_eq!(parts, ["Hola:", &word[..4096], &word[4096..]]);
}

#[test]
fn a_line_of_4096_emoji_families_is_cut_between_families() {
    let family = "👨‍👩‍👧‍👦"; // 11 UTF-16 units
    let text = family.repeat(4096);
    let parts = split_message(&text, WHATSAPP_MAX_CHARS);
    // 372 families (4092 units) fill a part.
    assert_eq!(parts.len(), 4096usize.div_ceil(372));
    for part in &parts {
        assert!(utf16(part) <= WHATSAPP_MAX_CHARS);
        assert!(part.graphemes(true).all(|g| g == family));
    }
    assert_eq!(parts.concat(), text);
}

#[test]
fn a_url_longer_than_the_limit_gets_parts_of_its_own() {
    let url = format!("https://x.co/{}", "a".repeat(5000));
    let parts = split_message(&format!("Mira {url} ok"), WHATSAPP_MAX_CHARS);
    assert_eq!(
        parts,
        ["Mira", &url[..4096], &format!("{} ok", &url[4096..])]
    );
}

#[test]
fn a_heading_at_the_limit_goes_with_its_section() {
    let first = "palabra ".repeat(505).trim_end().to_owned(); // 4039 chars
    // The heading and its section do not fit after the first paragraph.
    let md = format!(
        "{first}\n\n## Envíos\n\nTres días hábiles {}",
        "y más ".repeat(20)
    );
    let text = markdown_to_whatsapp(&md);
    let parts = split_message(&text, WHATSAPP_MAX_CHARS);
    assert_eq!(parts[0], first);
    assert!(
        parts[1].starts_with("*Envíos*\n\nTres días hábiles "),
        "{:?}",
        parts[1]
    );
}

#[test]
fn markdown_edge_cases_convert_as_documented() {
    // Not in the goldens: a URL with parentheses, numbers past 9, CRLF, RTL, literal markers in a table.
    let cases: &[(&str, &str)] = &[
        (
            "[docs](https://en.wikipedia.org/wiki/Rust_(programming_language))",
            "docs (https://en.wikipedia.org/wiki/Rust_(programming_language))",
        ),
        (
            "9. nueve\n10. diez\n11. once",
            "9. nueve\n10. diez\n11. once",
        ),
        ("10. diez\n    - sub", "10. diez\n  - sub"),
        (
            "| a | b |\n|---|---|\n| x*y | z_w |",
            "*a* | *b*\nx*y | z_w",
        ),
        ("uno\r\ndos\r\n\r\n# Tres\r\n", "uno\ndos\n\n*Tres*"),
        ("```\r\na *b* _c_\r\n```\r\n", "```\na *b* _c_\n```"),
        (
            "שלום **עולם** مرحبا _بالعالم_",
            "שלום *עולם* مرحبا _بالعالم_",
        ),
    ];
    for (md, expected) in cases {
        assert_eq!(markdown_to_whatsapp(md), *expected, "{md:?}");
    }
}

#[test]
fn table_cells_beyond_the_header_are_kept() {
    // GFM ignores a row's cells beyond the header's count, and a `|` inside a code span still
    // ends a cell: the customer lost "3" and the whole link.
    let cases: &[(&str, &str)] = &[
        (
            "| a | b |\n|---|---|\n| 1 | 2 | 3 |",
            "*a* | *b*\n1 | 2 | 3",
        ),
        (
            "| a | b |\n|---|---|\n| `c|d` | [l](https://x.co) |",
            "*a* | *b*\n`c | d` | l (https://x.co)",
        ),
        ("| a |\n|---|\n| 1 | **2** | 3", "*a*\n1 | *2* | 3"),
    ];
    for (md, expected) in cases {
        assert_eq!(markdown_to_whatsapp(md), *expected, "{md:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn no_table_cell_is_lost(
        head in prop::collection::vec("[a-z]{1,6}", 1..4),
        rows in prop::collection::vec(prop::collection::vec("[a-z0-9]{1,6}", 1..6), 1..5),
        quoted in any::<bool>(),
    ) {
        let prefix = if quoted { "> " } else { "" };
        let line = |cells: &[String]| format!("{prefix}| {} |", cells.join(" | "));
        let mut md = vec![line(&head), format!("{prefix}|{}", "---|".repeat(head.len()))];
        md.extend(rows.iter().map(|row| line(row)));
        let text = markdown_to_whatsapp(&md.join("\n"));
        let words: Vec<&str> = text
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let expected: Vec<&str> = head.iter().chain(rows.iter().flatten()).map(String::as_str).collect();
        prop_assert_eq!(words, expected, "{:?}", text);
    }
}
