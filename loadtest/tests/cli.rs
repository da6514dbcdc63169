//! The binary's refusals: a remote server without `--allow-remote`, no load shape, a
//! duration beyond its bound — each a one-line error and a failed exit, before any query.
//! (Its models against the real resolvers: proxy/tests/integration/load_models.rs.)

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dnslens-load"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unsafe_or_unbounded_runs_are_refused() {
    for (args, expect) in [
        (
            &["--server", "192.0.2.1:53", "--rate", "10"][..],
            "not a loopback address: pass --allow-remote",
        ),
        (&["--server", "127.0.0.1:53"][..], "give --rate"),
        (
            &[
                "--server",
                "127.0.0.1:53",
                "--rate",
                "10",
                "--duration",
                "2h",
            ][..],
            "--duration is at most 1h",
        ),
        (&["--rate", "10"][..], "--server ADDR:PORT is needed"),
    ] {
        let (ok, stderr) = run(args);
        assert!(!ok, "{args:?}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}
