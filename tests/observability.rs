//! The observability kit in `deploy/observability` (Prometheus rules, Grafana dashboard, KEDA
//! example) against the code: every PromQL expression parses, and every metric it names is one
//! wafleet exports, so a renamed metric cannot leave an alert silently watching nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kit(name: &str) -> String {
    let path = repo().join("deploy/observability").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of every Rust source under `crates/`.
fn sources() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo().join("crates"), &mut out);
    out
}

/// Every metric name the code registers: the `"wafleet_…"` literals of its sources.
fn exported() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for text in sources() {
        for (i, _) in text.match_indices("\"wafleet_") {
            let name: String = text[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if text[i + 1 + name.len()..].starts_with('"') {
                out.insert(name);
            }
        }
    }
    assert!(
        out.contains("wafleet_stage_backlog"),
        "the source scan found no metrics"
    );
    out
}

/// The `wafleet_…` metric names an expression reads (recording rules, `wafleet:…`, are not
/// metric names), with a histogram's series suffix taken off.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    for (i, _) in expr.match_indices("wafleet_") {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
            continue;
        }
        let name: String = expr[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        names.push(name);
    }
    names
}

/// Parses `expr` as PromQL (Grafana's `$__rate_interval` as a duration) and checks every metric
/// it names is exported; answers the recording rules it reads.
fn check_expr(what: &str, expr: &str, exported: &BTreeSet<String>) -> Vec<String> {
    let promql = expr.replace("$__rate_interval", "5m");
    if let Err(e) = promql_parser::parser::parse(&promql) {
        panic!("{what}: {expr:?} is not PromQL: {e}");
    }
    for name in metrics_in(expr) {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(*b)))
            .unwrap_or(&name);
        assert!(
            exported.contains(base),
            "{what}: {name} is no metric wafleet exports"
        );
    }
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("wafleet:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_alert_and_recording_rule_reads_metrics_wafleet_exports() {
    let exported = exported();
    let rules: serde_norway::Value = serde_norway::from_str(&kit("prometheus-rules.yml")).unwrap();
    let rules: Value = serde_json::to_value(rules).unwrap();
    let mut recorded = BTreeSet::new();
    let mut read = Vec::new();
    let mut alerts = 0;
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let expr = rule["expr"].as_str().expect("every rule has an expr");
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .expect("a rule is an alert or a recording");
            read.extend(check_expr(name, expr, &exported));
            if let Some(record) = rule["record"].as_str() {
                recorded.insert(record.to_string());
            } else {
                alerts += 1;
                assert!(
                    rule["labels"]["severity"].is_string(),
                    "{name} has no severity"
                );
                assert!(
                    rule["annotations"]["summary"].is_string(),
                    "{name} has no summary"
                );
            }
        }
    }
    assert!(alerts >= 10, "only {alerts} alerts");
    for r in read {
        assert!(recorded.contains(&r), "{r} is read but never recorded");
    }
}

#[test]
fn the_dashboard_and_the_autoscaler_read_metrics_wafleet_exports() {
    let exported = exported();
    let dashboard: Value = serde_json::from_str(&kit("grafana-dashboard.json")).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().expect("targets") {
            let read = check_expr(title, target["expr"].as_str().unwrap(), &exported);
            assert!(
                read.is_empty(),
                "{title}: a dashboard must not need our recording rules"
            );
        }
    }
    let keda: serde_norway::Value = serde_norway::from_str(&kit("keda-scaledobject.yaml")).unwrap();
    let keda: Value = serde_json::to_value(keda).unwrap();
    let query = keda["spec"]["triggers"][0]["metadata"]["query"]
        .as_str()
        .unwrap();
    check_expr("keda", query, &exported);
    assert!(query.contains("wafleet_stage_backlog"));
}

#[test]
fn a_metric_wafleet_does_not_export_is_caught() {
    // The check itself: a misspelt metric must fail it.
    let exported = exported();
    let caught = std::panic::catch_unwind(|| {
        check_expr("x", "rate(wafleet_jobs_totl[5m])", &exported);
    });
    assert!(caught.is_err());
    let caught = std::panic::catch_unwind(|| {
        check_expr("x", "rate(wafleet_jobs_total[5m]", &exported);
    });
    assert!(caught.is_err(), "unbalanced PromQL must not parse");
    check_expr(
        "x",
        "histogram_quantile(0.9, sum by (le) (rate(wafleet_job_duration_seconds_bucket[5m])))",
        &exported,
    );
}

/// The systemd units in `deploy/systemd` start binaries the workspace builds, and every variable
/// they or the example environment file set is one the README documents.
#[test]
fn the_systemd_units_start_workspace_binaries_with_documented_variables() {
    let dir = repo().join("deploy/systemd");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut units = 0;
    let mut variables = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines = text.lines().filter(|l| !l.starts_with('#'));
        if name.ends_with(".service") {
            units += 1;
            let exec: Vec<&str> = lines
                .clone()
                .filter_map(|l| l.strip_prefix("ExecStart="))
                .collect();
            assert_eq!(exec.len(), 1, "{name}: one ExecStart");
            let binary = exec[0].rsplit('/').next().unwrap();
            assert!(
                repo()
                    .join("crates")
                    .join(binary)
                    .join("src/main.rs")
                    .exists(),
                "{name} starts {binary}, which no crate builds"
            );
            assert!(
                readme.contains(&format!("deploy/systemd/{name}")),
                "the README does not mention {name}"
            );
            for l in lines.filter_map(|l| l.strip_prefix("Environment=")) {
                variables.push((name.clone(), l.split('=').next().unwrap().to_string()));
            }
        } else {
            for l in lines.filter(|l| l.contains('=')) {
                variables.push((name.clone(), l.split('=').next().unwrap().to_string()));
            }
        }
    }
    assert_eq!(units, 3, "ingest, worker and API units");
    assert!(variables.len() > 5);
    for (file, var) in variables {
        assert!(
            readme.contains(&format!("| `{var}` |")) || readme.contains(&format!("`{var}` / ")),
            "{file} sets {var}, which the README's configuration table does not document"
        );
    }
}

/// Every environment variable the code reads (`var("…")`, `required("…")`, `parsed("…", …)`,
/// `positive`, `millis`, clap's `env = "…"`) is named in the README, so its configuration table
/// cannot fall behind a new setting.
#[test]
fn every_variable_the_code_reads_is_in_the_readme() {
    let readers = [
        "var(\"",
        "required(\"",
        "parsed(\"",
        "positive(\"",
        "millis(\"",
        "env = \"",
    ];
    let mut read = BTreeSet::new();
    for text in sources() {
        for reader in readers {
            for (i, _) in text.match_indices(reader) {
                // A whole identifier: `var(` but not `env_var(`.
                let before = text[..i].chars().next_back();
                if reader.ends_with('(') && before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                {
                    continue;
                }
                let name: String = text[i + reader.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if name.len() > 2 && text[i + reader.len() + name.len()..].starts_with('"') {
                    read.insert(name);
                }
            }
        }
    }
    assert!(
        read.contains("WAFLEET_INGEST_SHARED_PATH") && read.contains("REDIS_URL"),
        "the scan found {read:?}"
    );
    assert!(read.len() > 50, "only {} variables found", read.len());
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let missing: Vec<&String> = read
        .iter()
        // The system's own, read to find programs.
        .filter(|v| *v != "PATH")
        .filter(|v| !readme.contains(&format!("`{v}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "read by the code, not in the README: {missing:?}"
    );
}
