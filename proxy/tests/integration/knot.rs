//! End to end: the dnslens binary in front of Knot DNS, queried with dig, must give Knot's
//! own answers, byte for byte in every section dig prints, over UDP and TCP — but for ANY,
//! which gets RFC 8482's minimal answer.

use hickory_proto::rr::RecordType;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_through_dnslens_equals_dig_at_knot() {
    let knot = Knot::start().await;
    let port = free_port();
    let metrics_port = free_port();
    let dns: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _proxy = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_dnslens"))
            .args([
                "serve",
                "--listen",
                &dns.to_string(),
                "--upstream",
                &knot.addr.to_string(),
            ])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    // Ready when it answers.
    for _ in 0..100 {
        let probe = query_bytes("github.com.", RecordType::A, 1, None);
        if udp_exchange(dns, &probe, std::time::Duration::from_millis(50))
            .await
            .is_some()
        {
            break;
        }
    }

    let cases: &[&[&str]] = &[
        &["kubernetes.default.svc.cluster.local", "A"],
        &["web.default.svc.cluster.local", "AAAA"],
        &["_http._tcp.web.default.svc.cluster.local", "SRV"],
        &["db.team-a.svc.cluster.local", "A"], // CNAME inside the zone
        &["www.example.org", "A"],             // CNAME chain
        &["github.com", "MX"],
        &["txt.example.org", "TXT"],
        &["nosuch.example.org", "A"], // NXDOMAIN with SOA
        &["alauda.cn.default.svc.cluster.local", "A"], // NODATA with SOA
        &["alauda.cn.default.svc.cluster.local", "AAAA"],
        &["big.example.org", "TXT"], // larger than 1232: TC, dig retries on TCP
        &["big.example.org", "TXT", "+noedns"], // larger than 512
        &["big.example.org", "TXT", "+bufsize=4096"], // whole over UDP
        &["github.com", "A", "+dnssec"], // DO bit
        &["GitHub.COM", "A"],        // case preserved
        &["kubernetes.default.svc.cluster.local", "A", "+tcp"],
        &["nosuch.example.org", "A", "+tcp"],
        &["cluster.local", "SOA", "+norecurse"],
    ];
    for args in cases {
        let mut want = dig(knot.addr, args);
        if args.contains(&"+bufsize=4096") {
            // Knot sends at most 1232 bytes over UDP and truncates; dnslens fetches the
            // answer over TCP and gives the client all of it over UDP, as it asked for 4096.
            want = want.replace(";; Truncated, retrying in TCP mode.\n", "");
        }
        let got = dig(dns, args);
        assert!(
            want.contains("status:"),
            "Knot did not answer {args:?}:\n{want}"
        );
        assert_eq!(got, want, "dig {args:?}");
    }
    // ANY gets RFC 8482's minimal answer (mitigations.minimal_any, on by default), over UDP
    // and TCP, as dig reads it.
    for transport in ["+notcp", "+tcp"] {
        let got = dig(dns, &["example.org", "ANY", transport]);
        assert!(got.contains("status: NOERROR"), "{got}");
        assert!(got.contains("ANSWER: 1,"), "{got}");
        assert!(got.contains("IN\tHINFO\t\"RFC8482\" \"\""), "{got}");
    }
}
