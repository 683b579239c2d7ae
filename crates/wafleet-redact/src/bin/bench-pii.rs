//! `bench-pii`: scores the redactor on the labelled corpus and measures its single-core speed.
//!
//! Usage: `bench-pii [CORPUS.jsonl]` (default: the corpus in wafleet-core's test data).
//! Accuracy rules are [`wafleet_core::pii::eval`]'s: a prediction is a true positive when it
//! overlaps a same-type label by ≥ 50% of the longer span. Speed: one thread, the whole corpus
//! in a loop for at least two seconds, after one warm-up pass; build with `--release`.

use std::time::{Duration, Instant};

use wafleet_core::pii::{Redactor, eval};

const DEFAULT_CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../wafleet-core/tests/data/pii_corpus.jsonl"
);
const MIN_RUN: Duration = Duration::from_secs(2);

fn main() -> Result<(), String> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_CORPUS.to_string());
    let raw = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    let corpus = eval::parse_corpus(&raw)?;
    let redactor = Redactor::new();

    let report = eval::evaluate(&redactor, &corpus);
    println!("corpus: {} messages ({path})", corpus.len());
    println!("{report}");
    if std::env::var_os("BENCH_PII_MISSES").is_some() {
        for m in &report.misses {
            let what = if m.false_positive { "FP" } else { "FN" };
            println!(
                "{what} {:<15} {:?} in {:?}",
                m.kind.as_str(),
                m.value,
                m.text
            );
        }
    }

    let texts: Vec<&str> = corpus.iter().map(|m| m.text.as_str()).collect();
    let mut sink = 0usize;
    for t in &texts {
        sink += redactor.redact(t).text.len();
    }
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < MIN_RUN {
        for t in &texts {
            sink = sink.wrapping_add(redactor.redact(t).text.len());
        }
        n += texts.len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "throughput: {:.0} messages/s on one core ({n} messages in {secs:.2} s, redact(), checksum {})",
        n as f64 / secs,
        sink % 1000
    );
    Ok(())
}
