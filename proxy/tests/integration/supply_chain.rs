//! The advisory check as scripts/test.sh runs it: cargo-deny (built from crates.io by
//! scripts/install-test-deps.sh) reads a local copy of the advisory database, without
//! fetching, from `$CARGO_HOME/advisory-dbs` (deny.toml). The test machines cannot fetch the
//! RustSec database, so the copy here is a git repository of the same layout made by the
//! test: an advisory against a crate dnslens links fails the check and is named; one against
//! a crate it does not use passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::TempDir;

/// Where cargo-deny looks for the default database (`db-urls` of deny.toml) under `home`.
const DB_DIR: &str = "advisory-dbs/advisory-db-3157b0e258782691";

/// A CARGO_HOME sharing this machine's registry and config, with an advisory database of
/// one advisory, against `package`, as a git repository.
fn cargo_home_with_advisory(dir: &Path, package: &str) -> PathBuf {
    let real = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let home = dir.join("cargo-home");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::symlink(real.join("registry"), home.join("registry")).unwrap();
    for config in ["config.toml", "config"] {
        if real.join(config).exists() {
            std::fs::copy(real.join(config), home.join(config)).unwrap();
        }
    }
    let db = home.join(DB_DIR);
    std::fs::create_dir_all(db.join("crates").join(package)).unwrap();
    std::fs::write(
        db.join("crates").join(package).join("RUSTSEC-2099-0001.md"),
        format!(
            "```toml\n[advisory]\nid = \"RUSTSEC-2099-0001\"\npackage = \"{package}\"\n\
             date = \"2099-01-01\"\nurl = \"https://example.invalid/RUSTSEC-2099-0001\"\n\n\
             [versions]\npatched = [\">= 999.0.0\"]\n```\n\n# A test advisory against {package}\n\n\
             Made by dnslens's suite.\n"
        ),
    )
    .unwrap();
    for args in [
        vec!["init", "-q"],
        vec!["add", "-A"],
        vec!["commit", "-qm", "advisories"],
    ] {
        let ok = Command::new("git")
            .args([
                "-c",
                "user.email=test@dnslens.invalid",
                "-c",
                "user.name=dnslens test",
            ])
            .args(&args)
            .current_dir(&db)
            .status()
            .expect("git is needed");
        assert!(ok.success(), "git {args:?}");
    }
    home
}

fn check_advisories(home: &Path) -> (bool, String) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let deny = repo.join("target/tools/bin/cargo-deny");
    assert!(
        deny.exists(),
        "{} missing: scripts/install-test-deps.sh builds it",
        deny.display()
    );
    let out = Command::new(deny)
        .args(["--offline", "check", "advisories"])
        .current_dir(&repo)
        .env("CARGO_HOME", home)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_local_advisory_database_is_read_and_an_advisory_against_a_linked_crate_fails() {
    let dir = TempDir::new("advisories");
    let (ok, stderr) = check_advisories(&cargo_home_with_advisory(&dir.0.join("hit"), "anyhow"));
    assert!(!ok, "an advisory against anyhow passed:\n{stderr}");
    assert!(stderr.contains("RUSTSEC-2099-0001"), "{stderr}");
    assert!(stderr.contains("anyhow"), "{stderr}");
    let (ok, stderr) = check_advisories(&cargo_home_with_advisory(
        &dir.0.join("miss"),
        "a-crate-dnslens-does-not-use",
    ));
    assert!(ok, "an advisory against no linked crate failed:\n{stderr}");
}
