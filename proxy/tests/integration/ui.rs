//! The anomaly timeline page (`/ui/`) in a real browser: headless Chromium loads the page
//! served by dnslens after a real musl-trap lookup and an A/AAAA race (glibc, first AAAA
//! dropped by iptables), runs its script, and the rendered DOM is checked — the trap listed
//! with its kind, the timeline drawn, the trap's waterfall with its 2 attempts, and a window
//! before the events listing nothing. A screenshot is kept in target/test-artifacts/.

use std::path::PathBuf;

use crate::harness::*;
use crate::namespaces::{run_scene, Scene};
use crate::resolvers::{Clients, Resolver, DROP_FIRST_AAAA, RACE_RESOLV_CONF};

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium as the machine's probe runs it (as root, no network beyond the namespace):
/// `--virtual-time-budget` lets the page's fetch and rendering finish before the dump.
pub fn chromium(what: &str, url: &str, out: &std::path::Path, profile: &std::path::Path) -> String {
    format!(
        "{CHROMIUM} --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
         --disable-background-networking --disable-component-update --disable-sync \
         --hide-scrollbars --window-size=1400,1000 --user-data-dir='{profile}' \
         --virtual-time-budget=8000 {what} \"{url}\" {redirect} 2>/dev/null || true\n",
        profile = profile.display(),
        redirect = if what == "--dump-dom" {
            format!(">'{}'", out.display())
        } else {
            String::new()
        },
    )
}

/// The page at `url` after its scripts ran, loaded by headless Chromium from this process
/// (loopback only); `dir` holds the browser's profile.
pub fn dump_dom(url: &str, dir: &std::path::Path) -> String {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is not installed (apt-get install chromium; scripts/test.sh does)"
    );
    let out = dir.join("dom.html");
    let command = chromium("--dump-dom", url, &out, &dir.join("profile"));
    let status = std::process::Command::new("sh")
        .args(["-c", &command])
        .status()
        .expect("sh runs");
    assert!(status.success());
    std::fs::read_to_string(&out).unwrap_or_default()
}

pub fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[test]
fn the_timeline_page_shows_the_trap_and_the_race_in_a_browser() {
    // A missing browser fails the test: it must never pass without having looked.
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is not installed (apt-get install chromium; scripts/test.sh does)"
    );
    let clients = Clients::build();
    let dir = TempDir::new("ui");
    let d = &dir.0;
    let page = |query: &str| format!("http://127.0.0.1:9253/ui/?{query}");
    let profile = d.join("profile");
    let mut after = String::new();
    after.push_str(&chromium(
        "--dump-dom",
        &page("since=1h"),
        &d.join("all.html"),
        &profile,
    ));
    after.push_str(&chromium(
        "--dump-dom",
        &page("since=1h&name=alauda.cn&kind=empty_noerror_search&open=1"),
        &d.join("trap.html"),
        &profile,
    ));
    // A window that ends an hour before the events.
    after.push_str("now=$(date +%s)\n");
    after.push_str(&chromium(
        "--dump-dom",
        "http://127.0.0.1:9253/ui/?from=$((now-7200))&to=$((now-3600))",
        &d.join("before.html"),
        &profile,
    ));
    // `to` alone: the hour before it (issue 24: the page showed the last hour instead).
    after.push_str(&chromium(
        "--dump-dom",
        "http://127.0.0.1:9253/ui/?since=1h&to=$((now-3600))",
        &d.join("to-only.html"),
        &profile,
    ));
    let screenshot = d.join("ui.png");
    after.push_str(&chromium(
        &format!("--screenshot='{}'", screenshot.display()),
        &page("since=15m&open=1"),
        &d.join("unused"),
        &profile,
    ));
    run_scene(&Scene {
        resolv_conf: RACE_RESOLV_CONF.into(),
        window: "2s",
        steps: vec![
            clients.resolve(Resolver::Musl, &["alauda.cn"]),
            format!(
                "{DROP_FIRST_AAAA}\n{}",
                clients.resolve(Resolver::Glibc, &["github.com"])
            ),
        ],
        after,
        ..Scene::default()
    });
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();

    let all = read("all.html");
    assert!(all.contains("data-ready=\"1\""), "the script ran:\n{all}");
    assert!(all.contains("<td class=\"name\">alauda.cn</td>"), "{all}");
    assert!(all.contains("<td class=\"name\">github.com</td>"), "{all}");
    assert_eq!(count(&all, "<tr class=\"entry"), 2, "{all}");
    for kind in ["empty_noerror_search", "parallel_race"] {
        assert!(
            all.contains(&format!("data-kind=\"{kind}\"")),
            "a dot for {kind} on the timeline:\n{all}"
        );
    }
    assert!(count(&all, "class=\"event\"") >= 2, "{all}");

    let trap = read("trap.html");
    assert_eq!(count(&trap, "<tr class=\"entry"), 1, "{trap}");
    assert_eq!(
        count(&trap, "<tr class=\"attempt\">"),
        2,
        "musl's A and AAAA, then it stopped:\n{trap}"
    );
    assert!(
        trap.contains("alauda.cn.default.svc.cluster.local"),
        "{trap}"
    );
    assert!(
        trap.contains("musl/Alpine clients stop here"),
        "the kind explained:\n{trap}"
    );

    let before = read("before.html");
    assert!(before.contains("data-ready=\"1\""), "{before}");
    assert!(
        before.contains("No abnormal lookups in this window."),
        "{before}"
    );
    assert_eq!(count(&before, "<tr class=\"entry"), 0);
    let to_only = read("to-only.html");
    assert!(to_only.contains("data-ready=\"1\""), "{to_only}");
    assert_eq!(count(&to_only, "<tr class=\"entry"), 0, "{to_only}");
    assert!(
        to_only.contains("No abnormal lookups in this window."),
        "{to_only}"
    );

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let kept = artifacts.join("ui-timeline.png");
    std::fs::copy(&screenshot, &kept).expect("Chromium wrote a screenshot");
    assert!(std::fs::metadata(&kept).unwrap().len() > 10_000);
}
