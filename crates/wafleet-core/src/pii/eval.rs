//! Scoring a [`Redactor`] against a labelled corpus — the rules shared by the corpus test and
//! the `bench-pii` binary, so the number a test asserts is the number the benchmark prints.
//!
//! - A predicted span is a **true positive** when a labelled span of the same type overlaps it
//!   by at least half of the longer of the two (`2·|P∩L| ≥ max(|P|, |L|)`); exact matches
//!   trivially qualify. Precision counts predicted spans, recall counts labelled spans.
//! - A PII message **leaks** when any byte of any labelled span is not covered by some predicted
//!   span, whatever its type: a phone redacted as `[NATIONAL_ID]` is not a leak.
//! - A clean message (no labels) is **touched** when anything at all is predicted in it.

use serde::Deserialize;

use super::{PiiType, Redactor, Span};

/// One corpus line.
#[derive(Clone, Debug, Deserialize)]
pub struct Labelled {
    pub text: String,
    pub spans: Vec<Span>,
    #[serde(default)]
    pub lang: String,
}

/// Parses a JSON-lines corpus; blank lines are skipped.
pub fn parse_corpus(jsonl: &str) -> Result<Vec<Labelled>, String> {
    jsonl
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// Counts for one type.
#[derive(Clone, Copy, Debug, Default)]
pub struct TypeScore {
    /// Predicted spans that match a label.
    pub tp: usize,
    /// Predicted spans that match no label.
    pub fp: usize,
    /// Labelled spans that some prediction matches.
    pub found: usize,
    /// Labelled spans no prediction matches.
    pub missed: usize,
}

impl TypeScore {
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    pub fn recall(&self) -> f64 {
        ratio(self.found, self.found + self.missed)
    }
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
    /// How many labelled spans of this type the corpus has.
    pub fn support(&self) -> usize {
        self.found + self.missed
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// A mistake, for reports.
#[derive(Clone, Debug)]
pub struct Miss {
    pub text: String,
    pub kind: PiiType,
    pub value: String,
    /// `true`: predicted but not labelled; `false`: labelled but not found.
    pub false_positive: bool,
}

/// The whole evaluation.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub per_type: Vec<(PiiType, TypeScore)>,
    pub pii_messages: usize,
    pub leaked_messages: usize,
    pub clean_messages: usize,
    pub touched_clean: usize,
    pub misses: Vec<Miss>,
}

impl Report {
    pub fn leak_share(&self) -> f64 {
        if self.pii_messages == 0 {
            0.0
        } else {
            self.leaked_messages as f64 / self.pii_messages as f64
        }
    }
    pub fn touched_share(&self) -> f64 {
        if self.clean_messages == 0 {
            0.0
        } else {
            self.touched_clean as f64 / self.clean_messages as f64
        }
    }
    pub fn score(&self, t: PiiType) -> TypeScore {
        self.per_type
            .iter()
            .find(|(k, _)| *k == t)
            .map(|(_, s)| *s)
            .unwrap_or_default()
    }
}

/// Whether a prediction and a label are the same finding (see the module docs).
pub fn matches(p: &Span, l: &Span) -> bool {
    if p.kind != l.kind {
        return false;
    }
    let inter = p.end.min(l.end).saturating_sub(p.start.max(l.start));
    2 * inter >= (p.end - p.start).max(l.end - l.start) && inter > 0
}

fn covered(l: &Span, preds: &[Span]) -> bool {
    let mut pos = l.start;
    for p in preds {
        if p.start <= pos && p.end > pos {
            pos = p.end;
        }
        if pos >= l.end {
            return true;
        }
    }
    pos >= l.end
}

/// Runs the redactor over the corpus and scores it.
pub fn evaluate(redactor: &Redactor, corpus: &[Labelled]) -> Report {
    let mut per: Vec<(PiiType, TypeScore)> = PiiType::ALL
        .iter()
        .map(|&t| (t, TypeScore::default()))
        .collect();
    let mut rep = Report::default();
    let slot = |t: PiiType| PiiType::ALL.iter().position(|&x| x == t).unwrap_or(0);
    for m in corpus {
        let preds = redactor.find(&m.text);
        let value = |s: &Span| m.text.get(s.start..s.end).unwrap_or("").to_string();
        for p in &preds {
            let s = &mut per[slot(p.kind)].1;
            if m.spans.iter().any(|l| matches(p, l)) {
                s.tp += 1;
            } else {
                s.fp += 1;
                rep.misses.push(Miss {
                    text: m.text.clone(),
                    kind: p.kind,
                    value: value(p),
                    false_positive: true,
                });
            }
        }
        for l in &m.spans {
            let s = &mut per[slot(l.kind)].1;
            if preds.iter().any(|p| matches(p, l)) {
                s.found += 1;
            } else {
                s.missed += 1;
                rep.misses.push(Miss {
                    text: m.text.clone(),
                    kind: l.kind,
                    value: value(l),
                    false_positive: false,
                });
            }
        }
        if m.spans.is_empty() {
            rep.clean_messages += 1;
            rep.touched_clean += usize::from(!preds.is_empty());
        } else {
            rep.pii_messages += 1;
            rep.leaked_messages += usize::from(m.spans.iter().any(|l| !covered(l, &preds)));
        }
    }
    rep.per_type = per;
    rep
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<16} {:>7} {:>9} {:>7} {:>7}   (tp/fp, found/labelled)",
            "type", "support", "precision", "recall", "F1"
        )?;
        for (t, s) in &self.per_type {
            writeln!(
                f,
                "{:<16} {:>7} {:>9.4} {:>7.4} {:>7.4}   ({}/{}, {}/{})",
                t.as_str(),
                s.support(),
                s.precision(),
                s.recall(),
                s.f1(),
                s.tp,
                s.fp,
                s.found,
                s.support()
            )?;
        }
        writeln!(
            f,
            "PII messages with a leak:  {}/{} = {:.4}",
            self.leaked_messages,
            self.pii_messages,
            self.leak_share()
        )?;
        write!(
            f,
            "clean messages touched:    {}/{} = {:.4}",
            self.touched_clean,
            self.clean_messages,
            self.touched_share()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(start: usize, end: usize, kind: PiiType) -> Span {
        Span { start, end, kind }
    }

    #[test]
    fn overlap_of_half_the_longer_span_matches() {
        let l = sp(10, 20, PiiType::Phone);
        assert!(matches(&sp(10, 20, PiiType::Phone), &l));
        assert!(matches(&sp(12, 20, PiiType::Phone), &l));
        assert!(matches(&sp(15, 25, PiiType::Phone), &l));
        assert!(!matches(&sp(16, 26, PiiType::Phone), &l));
        assert!(!matches(&sp(10, 20, PiiType::Card), &l));
        assert!(!matches(&sp(0, 40, PiiType::Phone), &l));
    }

    #[test]
    fn coverage_may_come_from_several_spans_of_any_type() {
        let l = sp(10, 20, PiiType::Address);
        assert!(covered(
            &l,
            &[sp(8, 15, PiiType::Phone), sp(15, 21, PiiType::Ip)]
        ));
        assert!(!covered(
            &l,
            &[sp(8, 15, PiiType::Phone), sp(16, 21, PiiType::Ip)]
        ));
        assert!(!covered(&l, &[]));
    }
}
