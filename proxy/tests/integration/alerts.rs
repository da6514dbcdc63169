//! The alert rules in config/alerts.yaml: valid for Prometheus, and their unit tests
//! (config/alerts_test.yaml: which alert fires when, with what text) pass under promtool.

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
    assert!(text.contains("14 rules found"), "{text}");
}

#[test]
fn alert_rules_pass_their_promtool_tests() {
    let (ok, text) = promtool(&["test", "rules", "alerts_test.yaml"]);
    assert!(ok, "{text}");
}
