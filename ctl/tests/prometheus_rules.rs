//! Prometheus rules, alerts and the Grafana dashboard, checked with promtool (Debian package
//! prometheus): every rule parses, every alert has a unit test (the deadlock fires the diversity
//! alert, the fix clears it), and every dashboard query parses.

use std::path::PathBuf;
use std::process::Command;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn promtool(args: &[&str], dir: &std::path::Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn rules_parse_and_their_unit_tests_pass() {
    let dir = deploy().join("prometheus");
    let checked = promtool(&["check", "rules", "rules/quantum.rules.yml"], &dir);
    assert!(checked.contains("SUCCESS: 24 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "tests/quantum.test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert has at least one unit test, and the deadlock/fix pair is among them.
    let rules = std::fs::read_to_string(dir.join("rules/quantum.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("tests/quantum.test.yml")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "alert {alert} has no unit test"
        );
    }
    assert!(tests.contains("# The deadlock:") && tests.contains("# The fix:"));
}

#[test]
fn prometheus_config_is_valid() {
    let checked = promtool(
        &["check", "config", "--syntax-only", "prometheus.yml"],
        &deploy().join("prometheus"),
    );
    assert!(checked.contains("SUCCESS"), "{checked}");
}

#[test]
fn every_dashboard_query_parses_and_the_first_row_answers_the_first_question() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/dashboards/quantum-pipeline.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard_queries\n    rules:\n");
    let mut count = 0;
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            count += 1;
            rules.push_str(&format!(
                "      - record: dashboard:query_{count}\n        expr: {}\n",
                serde_json::to_string(expr).unwrap()
            ));
        }
    }
    assert!(count >= 20, "only {count} queries");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.rules.yml"), rules).unwrap();
    let checked = promtool(&["check", "rules", "dashboard.rules.yml"], dir.path());
    assert!(checked.contains(&format!("SUCCESS: {count} rules found")), "{checked}");

    let first_row: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] != "row" && p["gridPos"]["y"].as_u64() == Some(1))
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        first_row,
        [
            "Symbols with published plans",
            "EXECUTE vs BLOCKED plans",
            "Gate outcomes by reason"
        ]
    );
    let provisioning = std::fs::read_to_string(deploy().join("grafana/provisioning/dashboards/quantum.yml")).unwrap();
    assert!(provisioning.contains("/var/lib/grafana/dashboards"));
}

/// The `quantum_...` names in `text`, histogram suffixes (`_bucket`, `_sum`, `_count`) taken
/// off where the name without one is a metric.
fn metric_names_in(text: &str) -> std::collections::BTreeSet<String> {
    let known: std::collections::BTreeSet<&str> = quantum_model::metric_names::ALL.iter().copied().collect();
    let mut found = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("quantum_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| known.contains(b)))
            .unwrap_or(name);
        found.insert(base.to_string());
        rest = &tail[end..];
    }
    found
}

#[test]
fn rules_dashboard_and_docs_name_only_metrics_the_code_exports() {
    let known: std::collections::BTreeSet<String> =
        quantum_model::metric_names::ALL.iter().map(|n| n.to_string()).collect();
    let rules = std::fs::read_to_string(deploy().join("prometheus/rules/quantum.rules.yml")).unwrap();
    // Rule group names share the prefix but are not metrics.
    let groups: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: "))
        .map(str::to_string)
        .collect();
    for file in [
        "prometheus/rules/quantum.rules.yml",
        "prometheus/tests/quantum.test.yml",
        "grafana/dashboards/quantum-pipeline.json",
        "../docs/observability.md",
    ] {
        let text = std::fs::read_to_string(deploy().join(file)).unwrap();
        for name in metric_names_in(&text) {
            assert!(
                known.contains(&name) || groups.contains(&name),
                "{file} names {name}, which no service exports (quantum_model::metric_names)"
            );
        }
    }
    let documented = metric_names_in(&std::fs::read_to_string(deploy().join("../docs/observability.md")).unwrap());
    for name in &known {
        assert!(
            documented.contains(name),
            "{name} is exported but not in docs/observability.md"
        );
    }
}
