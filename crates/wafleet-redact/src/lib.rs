//! # wafleet-redact
//!
//! Two thin binaries over [`wafleet_core::pii`]:
//! - `wafleet-redact` (`just redact`): JSON lines `{"text": …}` on stdin → one
//!   `{"redacted": …, "spans": […]}` per line on stdout; a bad line gets `{"error": …}`.
//! - `bench-pii` (`just bench-pii`): precision/recall per type, leak and clean-touched shares, and
//!   single-core throughput over the labelled corpus.
//!
//! The per-line logic lives here ([`process_line`], [`run`]) so it is tested without a process;
//! the scoring rules live in [`wafleet_core::pii::eval`], shared with the core's corpus test.

use std::io::{BufRead, Write};

use serde_json::{Value, json};
use wafleet_core::pii::Redactor;

/// Turns one input line into one output line (without the newline). Never fails: a line that is
/// not a JSON object with a string `text` becomes `{"error": "..."}`.
pub fn process_line(redactor: &Redactor, line: &str) -> String {
    let v: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return json!({ "error": format!("invalid JSON: {e}") }).to_string(),
    };
    let Some(text) = v.get("text").and_then(Value::as_str) else {
        return json!({ "error": "expected an object with a string field \"text\"" }).to_string();
    };
    let r = redactor.redact(text);
    let spans: Vec<Value> = r
        .spans
        .iter()
        .map(|s| json!({ "start": s.start, "end": s.end, "type": s.kind.as_str() }))
        .collect();
    json!({ "redacted": r.text, "spans": spans }).to_string()
}

/// Reads JSON lines until end of input, writing and flushing one answer per line. Blank lines
/// are skipped. Only I/O errors end it early.
pub fn run(input: impl BufRead, mut output: impl Write) -> std::io::Result<()> {
    let redactor = Redactor::new();
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let out = process_line(&redactor, &line);
        output.write_all(out.as_bytes())?;
        output.write_all(b"\n")?;
        output.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_gets_an_answer_and_bad_lines_get_errors() {
        let input =
            "{\"text\": \"mi cel 300 123 4567\"}\nnot json\n\n{\"txt\": 1}\n{\"text\": \"hola\"}\n";
        let mut out = Vec::new();
        run(input.as_bytes(), &mut out).unwrap();
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["redacted"], "mi cel [PHONE]");
        assert_eq!(
            lines[0]["spans"][0],
            json!({"start": 7, "end": 19, "type": "PHONE"})
        );
        assert!(lines[1]["error"].as_str().unwrap().contains("invalid JSON"));
        assert!(lines[2]["error"].is_string());
        assert_eq!(lines[3], json!({"redacted": "hola", "spans": []}));
    }
}
