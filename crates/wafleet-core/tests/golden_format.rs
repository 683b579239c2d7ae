//! Golden tests for `markdown_to_whatsapp`: every `tests/golden/format/NAME.md` must convert to
//! exactly `NAME.txt` beside it.
//!
//! To add a case, write `NAME.md` and run
//!
//! ```text
//! UPDATE_GOLDEN=1 cargo test -p wafleet-core --test golden_format
//! ```
//!
//! which (re)writes every `.txt` from the current output instead of comparing; then read the diff
//! of the `.txt` files before committing them; the review is the test.

use std::{env, fs, path::PathBuf};

use wafleet_core::format::{WHATSAPP_MAX_CHARS, markdown_to_whatsapp, split_message};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/format")
}

#[test]
fn every_golden_markdown_file_converts_to_its_expected_text() {
    let update = env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut inputs: Vec<PathBuf> = fs::read_dir(golden_dir())
        .expect("golden directory exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 12, "only {} golden cases", inputs.len());

    let mut failures = Vec::new();
    for input in &inputs {
        let markdown = fs::read_to_string(input).expect("readable .md");
        let actual = markdown_to_whatsapp(&markdown);
        let expected_path = input.with_extension("txt");
        if update {
            fs::write(&expected_path, format!("{actual}\n")).expect("writable .txt");
            continue;
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_else(|_| {
            panic!(
                "missing {}; run with UPDATE_GOLDEN=1",
                expected_path.display()
            )
        });
        // The files end with a newline for editors; the converter's output does not.
        if expected.strip_suffix('\n').unwrap_or(&expected) != actual {
            failures.push(format!(
                "{}:\n--- expected\n{expected}\n--- actual\n{actual}\n",
                input.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn golden_outputs_have_no_trailing_whitespace_and_fit_after_splitting() {
    for entry in fs::read_dir(golden_dir()).expect("golden directory exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_none_or(|ext| ext != "md") {
            continue;
        }
        let text = markdown_to_whatsapp(&fs::read_to_string(&path).expect("readable .md"));
        for line in text.lines() {
            assert_eq!(line, line.trim_end(), "{}: {line:?}", path.display());
        }
        assert!(!text.contains("\n\n\n"), "{}", path.display());
        for max in [WHATSAPP_MAX_CHARS, 120, 40] {
            for part in split_message(&text, max) {
                // Both ways Meta may count its limit: chars and UTF-16 units.
                assert!(part.chars().count() <= max, "{}", path.display());
                assert!(part.encode_utf16().count() <= max, "{}", path.display());
            }
        }
    }
}
