//! The alert rules in config/alerts.yaml: valid for Prometheus, their unit tests
//! (config/alerts_test.yaml: which alert fires when, with what text) pass under promtool, and
//! every alert has one name prefix, a severity, and a runbook section of its own.

use std::process::Command;

fn promtool(args: &[&str]) -> (bool, String) {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&config)
        .output()
        .expect("promtool must be installed (Debian prometheus); scripts/test.sh installs it");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn alert_rules_are_valid() {
    let (ok, text) = promtool(&["check", "rules", "alerts.yaml"]);
    assert!(ok, "{text}");
    assert!(text.contains("18 rules found"), "{text}");
}

#[test]
fn alert_rules_pass_their_promtool_tests() {
    let (ok, text) = promtool(&["test", "rules", "alerts_test.yaml"]);
    assert!(ok, "{text}");
}

/// One prefix, a severity, and a `runbook_url` whose anchor is a section of
/// docs/operations.md (GitHub's anchor of `### NAME` is the lowercased name).
#[test]
fn every_alert_has_the_prefix_a_severity_and_a_runbook_section() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules: serde_json::Value =
        dnslens::yaml::from_str(&std::fs::read_to_string(root.join("config/alerts.yaml")).unwrap())
            .unwrap();
    let runbooks = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let sections: Vec<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    let mut count = 0;
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        let name = rule["alert"].as_str().unwrap();
        count += 1;
        assert!(name.starts_with("DNSLens"), "{name}");
        let severity = rule["labels"]["severity"].as_str().unwrap_or("");
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: {severity}"
        );
        let url = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
        let anchor = url
            .strip_prefix("https://github.com/dnslens/dnslens/blob/main/docs/operations.md#")
            .unwrap_or_else(|| panic!("{name}: {url}"));
        assert!(
            sections.iter().any(|s| s == anchor),
            "{name}: no section for #{anchor} in docs/operations.md"
        );
    }
    assert_eq!(count, 18);
}
