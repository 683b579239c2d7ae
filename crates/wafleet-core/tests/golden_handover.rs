//! Golden tests for negated handover phrases: every line of `tests/golden/handover/negation.txt`
//! is a customer's message labelled with what must happen to it (`handover` or `bot`), for the
//! built-in phrases or a channel's own list. Add a line to add a case; the file's header says how.

use std::{fs, path::PathBuf};

use wafleet_core::handover::{HandoverMatcher, normalize};

/// A channel's own list, as channels write it: single words, which a negation before them
/// governs from further away than the built-in phrases ("no necesito un asesor").
const CUSTOM: &[&str] = &["asesor", "humano", "human", "atendente"];

struct Case {
    line: usize,
    handover: bool,
    custom: bool,
    text: String,
}

fn cases() -> Vec<Case> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/handover/negation.txt");
    let file = fs::read_to_string(&path).expect("the golden file is readable");
    let mut cases = Vec::new();
    for (i, line) in file.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.splitn(3, " | ");
        let (Some(expected), Some(keywords), Some(text)) =
            (fields.next(), fields.next(), fields.next())
        else {
            panic!("line {}: not `EXPECTED | KEYWORDS | message`", i + 1);
        };
        let handover = match expected {
            "handover" => true,
            "bot" => false,
            other => panic!("line {}: expected is {other:?}", i + 1),
        };
        let custom = match keywords {
            "custom" => true,
            "default" => false,
            other => panic!("line {}: keywords are {other:?}", i + 1),
        };
        cases.push(Case {
            line: i + 1,
            handover,
            custom,
            text: text.to_string(),
        });
    }
    cases
}

#[test]
fn every_labelled_message_hands_over_exactly_when_its_phrase_is_not_negated() {
    let (default, custom) = (HandoverMatcher::default(), HandoverMatcher::new(CUSTOM));
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let matcher = if case.custom { &custom } else { &default };
        let found = matcher.find(&case.text);
        if found.is_some() != case.handover {
            failures.push(format!(
                "line {}: {:?} expected {}, matched {found:?}",
                case.line,
                case.text,
                if case.handover { "handover" } else { "bot" },
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Every `bot` line holds a phrase the matcher finds once the words before it are taken away,
/// so each one tests a negation and not a phrase missing from the list; and there are enough
/// lines of each kind.
#[test]
fn every_negated_message_holds_a_phrase_and_both_kinds_are_well_represented() {
    let (default, custom) = (HandoverMatcher::default(), HandoverMatcher::new(CUSTOM));
    let cases = cases();
    for case in cases.iter().filter(|c| !c.handover) {
        let matcher = if case.custom { &custom } else { &default };
        let normalized = normalize(&case.text);
        let words: Vec<&str> = normalized.split(' ').collect();
        assert!(
            (0..words.len()).any(|i| matcher.find(&words[i..].join(" ")).is_some()),
            "line {}: {:?} holds no phrase",
            case.line,
            case.text
        );
    }
    let negated = cases.iter().filter(|c| !c.handover).count();
    assert!(negated >= 30, "{negated} negated cases");
    assert!(
        cases.len() - negated >= 30,
        "{} handover cases",
        cases.len() - negated
    );
}
