//! The redactor against the labelled corpus in `tests/data/pii_corpus.jsonl` (regenerate it with
//! `tests/data/gen_pii_corpus.py`). Asserts the accuracy targets; speed is `bench-pii`'s job.

use wafleet_core::pii::{PiiType, Redactor, eval};

const MIN_PRECISION: f64 = 0.95;
const MIN_RECALL: f64 = 0.97;
const MAX_LEAK_SHARE: f64 = 0.05;
const MAX_TOUCHED_SHARE: f64 = 0.05;

fn report() -> eval::Report {
    let raw = include_str!("data/pii_corpus.jsonl");
    let corpus = eval::parse_corpus(raw).expect("corpus parses");
    assert!(corpus.len() >= 1500, "corpus has {} messages", corpus.len());
    eval::evaluate(&Redactor::new(), &corpus)
}

fn show(r: &eval::Report) -> String {
    let mut s = format!("{r}\n");
    for m in r.misses.iter().take(60) {
        let what = if m.false_positive { "FP" } else { "FN" };
        s.push_str(&format!(
            "{what} {} {:?} in {:?}\n",
            m.kind.as_str(),
            m.value,
            m.text
        ));
    }
    s
}

#[test]
fn every_type_meets_its_precision_and_recall_targets() {
    let r = report();
    for t in PiiType::ALL {
        let s = r.score(t);
        assert!(
            s.support() >= 30,
            "{} has only {} labelled spans",
            t.as_str(),
            s.support()
        );
        assert!(
            s.precision() >= MIN_PRECISION && s.recall() >= MIN_RECALL,
            "{}: precision {:.4}, recall {:.4}\n{}",
            t.as_str(),
            s.precision(),
            s.recall(),
            show(&r)
        );
    }
}

#[test]
fn few_pii_messages_leak_and_few_clean_ones_are_touched() {
    let r = report();
    assert!(r.leak_share() <= MAX_LEAK_SHARE, "{}", show(&r));
    assert!(r.touched_share() <= MAX_TOUCHED_SHARE, "{}", show(&r));
}

#[test]
fn corpus_is_half_clean_and_labels_are_well_formed() {
    let raw = include_str!("data/pii_corpus.jsonl");
    let corpus = eval::parse_corpus(raw).unwrap();
    let clean = corpus.iter().filter(|m| m.spans.is_empty()).count();
    let share = clean as f64 / corpus.len() as f64;
    assert!((0.4..=0.6).contains(&share), "clean share {share}");
    for m in &corpus {
        for w in m.spans.windows(2) {
            assert!(w[0].end <= w[1].start, "overlapping labels in {:?}", m.text);
        }
        for s in &m.spans {
            assert!(m.text.is_char_boundary(s.start) && m.text.is_char_boundary(s.end));
            assert!(s.start < s.end && s.end <= m.text.len());
        }
    }
}
