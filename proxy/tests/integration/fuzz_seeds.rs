//! The fuzz targets' seed corpus, captured rather than invented: every real client the
//! suite knows (glibc, musl, Go, dnspython, dig with its options) resolves names through
//! dnslens, and `fuzz/capture_relay.py`, between dnslens and Knot, keeps each distinct
//! query and answer. Ignored in the suite; `fuzz/capture-seeds.sh` runs it and files the
//! messages under `fuzz/seeds/<target>/`.

use crate::namespaces::{run_scene, Scene};
use crate::resolvers::{Clients, Resolver};

#[test]
#[ignore = "writes fuzz seeds: run by fuzz/capture-seeds.sh"]
fn capture() {
    let out = std::env::var("DNSLENS_SEED_CAPTURE").expect("DNSLENS_SEED_CAPTURE=DIR");
    let relay = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/capture_relay.py");
    let clients = Clients::build();
    let names = [
        "web",
        "web.default",
        "kubernetes.default.svc.cluster.local",
        "db.team-a",
        "alauda.cn",
        "github.com",
        "www.example.org",
        "nothing-here.example.org",
    ];
    let mut steps: Vec<String> = Resolver::ALL
        .iter()
        .map(|r| clients.resolve(*r, &names))
        .collect();
    let dig = [
        "example.org A",
        "example.org AAAA +dnssec",
        "example.org ANY",
        "github.com MX +nsid",
        "txt.example.org TXT +cookie",
        "big.example.org TXT +bufsize=512 +ignore",
        "big.example.org TXT +tcp",
        "_http._tcp.web.default.svc.cluster.local SRV",
        "34.12.96.10.in-addr.arpa PTR",
        "nothing.example.org A +noedns",
        "Example.ORG a +norecurse",
        "x.bulk.example.org A +subnet=10.0.0.0/24",
    ];
    steps.push(
        dig.iter()
            .map(|q| format!("dig @127.0.0.1 +time=2 +tries=1 {q} >/dev/null"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    run_scene(&Scene {
        knot_port: 5301,
        before: format!(
            "python3 {relay} 5300 5301 {out} 2>relay.log & relay=$!\ntrap 'kill $relay' EXIT\nsleep 0.5"
        ),
        steps,
        ..Scene::default()
    });
}

/// Every seed and every input that once crashed a target (fuzz/regressions/TARGET), through
/// its target's entry point: what the fuzzer starts from holds in the suite too.
#[test]
fn seeds_and_past_crashes_pass_every_target() {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    type EntryPoint = fn(&[u8]);
    let targets: [(&str, EntryPoint); 7] = [
        ("client_datagram", dnslens::fuzz::client_datagram),
        ("tcp_stream", dnslens::fuzz::tcp_stream),
        ("upstream_response", dnslens::fuzz::upstream_response),
        ("search", dnslens::fuzz::search),
        ("cache", dnslens::fuzz::cache),
        ("config", dnslens::fuzz::config),
        ("webhook", dnslens::fuzz::webhook),
    ];
    for (target, run) in targets {
        let mut inputs = 0;
        for dir in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let input = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&input));
                assert!(outcome.is_ok(), "{target}: {} fails", path.display());
                inputs += 1;
            }
        }
        assert!(inputs > 0, "{target}: no seeds");
    }
}
