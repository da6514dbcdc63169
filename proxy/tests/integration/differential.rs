//! A differential test in the manner of Knot's respdiff: a matrix of names × types ×
//! variants (UDP without EDNS, small and large EDNS payloads, DO, CD, TCP) asked of Knot
//! directly and through dnslens — cache off, and cache on (asked twice, the second answered
//! from the cache). Everything must match: RCODE, header flags, EDNS (payload size, DO,
//! version, options) and every record of every section, in order. What dnslens changes on
//! purpose (README, "What dnslens changes in an answer"):
//! - a UDP answer the upstream truncated although the client's payload size fits it whole is
//!   fetched again over TCP and sent whole (compared with Knot's TCP answer);
//! - answers from the cache carry TTLs counted down (compared within the seconds elapsed),
//!   none above what is left of the cached answer's lifetime (for a negative answer with a
//!   CNAME chain: the CNAMEs' TTLs are capped by the negative TTL);
//! - CD is copied from the query (RFC 4035 §3.1.6; Knot leaves it clear);
//! - a truncated answer is header, question and OPT (Knot's own TC answers are compared
//!   the same way: sections of a TC answer are not compared).
//!
//! `mitigations.minimal_any` is off here, so ANY is compared too.

use std::net::SocketAddr;
use std::time::Duration;

use dnslens::Proxy;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, Record, RecordType};
use tokio::net::TcpStream;

use crate::harness::*;

const DIFF_ZONE: &str = r#"$ORIGIN diff.test.
$TTL 600
@            IN SOA   ns.diff.test. hostmaster.diff.test. 7 7200 1800 86400 120
@            IN NS    ns.diff.test.
@            IN MX    10 mail.diff.test.
@            IN MX    20 mail2.diff.test.
@            IN CAA   0 issue "letsencrypt.org"
@            IN TXT   "v=spf1 -all"
ns           IN A     192.0.2.53
mail         IN A     192.0.2.25
svc          IN A     192.0.2.10
svc          IN A     192.0.2.11
svc          IN AAAA  2001:db8::10
Mixed        IN A     192.0.2.12
cname1       IN CNAME cname2.diff.test.
cname2       IN CNAME svc.diff.test.
outside      IN CNAME nosuch.example.invalid.
_http._tcp   IN SRV   0 100 80 svc.diff.test.
_http._tcp   IN SRV   10 50 8080 mail.diff.test.
nodata       IN TXT   "only text here"
a.b          IN A     192.0.2.30
"#;

const REVERSE_ZONE: &str = r#"$ORIGIN 2.0.192.in-addr.arpa.
$TTL 600
@   IN SOA ns.diff.test. hostmaster.diff.test. 3 7200 1800 86400 60
@   IN NS  ns.diff.test.
10  IN PTR svc.diff.test.
25  IN PTR mail.diff.test.
"#;

/// The big TXT answer: about 3 KB, above every UDP payload size but 4096.
fn big_zone() -> String {
    let mut zone = String::from("$ORIGIN big.test.\n$TTL 300\n@ IN SOA ns.diff.test. h.diff.test. 1 7200 1800 86400 60\n@ IN NS ns.diff.test.\n");
    for i in 0..14 {
        zone.push_str(&format!("@ IN TXT \"{}\"\n", format!("{i:x}").repeat(200)));
    }
    zone
}

const NAMES: &[&str] = &[
    "svc.diff.test.",
    "SvC.DiFf.TeSt.",
    "mixed.diff.test.",
    "cname1.diff.test.",
    "outside.diff.test.",
    "_http._tcp.diff.test.",
    "diff.test.",
    "nodata.diff.test.",
    "b.diff.test.",
    "nosuch.diff.test.",
    "10.2.0.192.in-addr.arpa.",
    "big.test.",
    "nosuch.invalid.",
];

const TYPES: &[RecordType] = &[
    RecordType::A,
    RecordType::AAAA,
    RecordType::TXT,
    RecordType::MX,
    RecordType::SRV,
    RecordType::CAA,
    RecordType::PTR,
    RecordType::SOA,
    RecordType::ANY,
];

#[derive(Debug, Clone, Copy)]
struct Variant {
    name: &'static str,
    tcp: bool,
    payload: Option<u16>,
    dnssec_ok: bool,
    checking_disabled: bool,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "udp",
        tcp: false,
        payload: None,
        dnssec_ok: false,
        checking_disabled: false,
    },
    Variant {
        name: "udp edns 512",
        tcp: false,
        payload: Some(512),
        dnssec_ok: false,
        checking_disabled: false,
    },
    Variant {
        name: "udp edns 1232",
        tcp: false,
        payload: Some(1232),
        dnssec_ok: false,
        checking_disabled: false,
    },
    Variant {
        name: "udp edns 4096",
        tcp: false,
        payload: Some(4096),
        dnssec_ok: false,
        checking_disabled: false,
    },
    Variant {
        name: "udp edns do",
        tcp: false,
        payload: Some(1232),
        dnssec_ok: true,
        checking_disabled: false,
    },
    Variant {
        name: "udp cd",
        tcp: false,
        payload: None,
        dnssec_ok: false,
        checking_disabled: true,
    },
    Variant {
        name: "tcp",
        tcp: true,
        payload: None,
        dnssec_ok: false,
        checking_disabled: false,
    },
    Variant {
        name: "tcp edns do",
        tcp: true,
        payload: Some(1232),
        dnssec_ok: true,
        checking_disabled: false,
    },
];

fn query(name: &str, qtype: RecordType, v: Variant, id: u16) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.metadata.checking_disabled = v.checking_disabled;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = v.payload {
        let mut edns = Edns::new();
        edns.set_max_payload(size);
        edns.set_dnssec_ok(v.dnssec_ok);
        msg.set_edns(edns);
    }
    msg.to_vec().unwrap()
}

async fn exchange(server: SocketAddr, query: &[u8], tcp: bool) -> Vec<u8> {
    if tcp {
        let mut stream = TcpStream::connect(server).await.unwrap();
        tcp_send(&mut stream, query).await;
        tokio::time::timeout(Duration::from_secs(3), tcp_recv(&mut stream))
            .await
            .expect("a TCP answer in time")
            .expect("a TCP answer")
    } else {
        udp_exchange(server, query, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| panic!("no UDP answer from {server}"))
    }
}

/// Everything compared, TTLs apart.
#[derive(Debug, PartialEq)]
struct Shape {
    id: u16,
    rcode: String,
    flags: String,
    question: Vec<u8>,
    edns: Option<String>,
    sections: Vec<Vec<String>>,
}

fn record_text(r: &Record) -> String {
    format!("{} {} {} {}", r.name, r.dns_class, r.record_type(), r.data)
}

fn shape(bytes: &[u8]) -> (Shape, Vec<u32>) {
    let msg = Message::from_vec(bytes).expect("an answer that parses");
    let m = &msg.metadata;
    let flags = format!(
        "qr={} aa={} tc={} rd={} ra={} ad={} cd={}",
        m.message_type == MessageType::Response,
        m.authoritative,
        m.truncation,
        m.recursion_desired,
        m.recursion_available,
        m.authentic_data,
        m.checking_disabled
    );
    let edns = msg.edns.as_ref().map(|e| {
        format!(
            "payload={} do={} version={} rcode_high={} options={:?}",
            e.max_payload(),
            e.flags().dnssec_ok,
            e.version(),
            e.rcode_high(),
            e.options()
        )
    });
    let question_end = dnslens::wire::parse_response(bytes)
        .expect("one question")
        .question_end;
    let truncated = m.truncation;
    let sections: Vec<Vec<String>> = if truncated {
        Vec::new()
    } else {
        [&msg.answers, &msg.authorities, &msg.additionals]
            .iter()
            .map(|s| s.iter().map(record_text).collect())
            .collect()
    };
    let ttls = if truncated {
        Vec::new()
    } else {
        msg.answers
            .iter()
            .chain(&msg.authorities)
            .chain(&msg.additionals)
            .map(|r| r.ttl)
            .collect()
    };
    (
        Shape {
            id: m.id,
            rcode: format!("{:?}", m.response_code),
            flags,
            question: bytes[12..question_end].to_vec(),
            edns,
            sections,
        },
        ttls,
    )
}

/// How long the cache keeps an answer (README, cache): the smallest TTL of the answer and
/// authority records of a positive answer, min(SOA TTL, MINIMUM) of a negative one. Served
/// TTLs never exceed what is left of it.
fn cache_lifetime(answer: &[u8]) -> u32 {
    let msg = Message::from_vec(answer).unwrap();
    if !msg.answers.is_empty() && msg.metadata.response_code.low() == 0 {
        return msg
            .answers
            .iter()
            .chain(&msg.authorities)
            .map(|r| r.ttl)
            .min()
            .unwrap_or(0);
    }
    msg.authorities
        .iter()
        .find_map(|r| match &r.data {
            hickory_proto::rr::RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })
        .unwrap_or(0)
}

/// Compares `got` with `want`; when `cached`, TTLs may be up to `aged` seconds lower (the
/// cache counts them down) and are capped by the entry's lifetime. Returns the difference,
/// if any.
fn differs(got: &[u8], want: &[u8], cached: bool, aged: u32) -> Option<String> {
    let (got_shape, got_ttls) = shape(got);
    let (want_shape, mut want_ttls) = shape(want);
    let aged = if cached {
        let lifetime = cache_lifetime(want);
        want_ttls.iter_mut().for_each(|t| *t = (*t).min(lifetime));
        aged
    } else {
        0
    };
    if got_shape != want_shape {
        return Some(format!("got  {got_shape:?}\nwant {want_shape:?}"));
    }
    let ttls_ok = got_ttls.len() == want_ttls.len()
        && got_ttls
            .iter()
            .zip(&want_ttls)
            .all(|(g, w)| g <= w && g + aged >= *w);
    (!ttls_ok).then(|| format!("TTLs {got_ttls:?}, want {want_ttls:?} (aged ≤ {aged} s)"))
}

/// Knot's answer to `query` as dnslens should pass it on: a UDP answer Knot truncated but
/// the client's payload size fits whole is expected as Knot's TCP answer.
async fn expected(knot: SocketAddr, query: &[u8], v: Variant) -> Vec<u8> {
    let mut want = knots_answer(knot, query, v).await;
    // dnslens copies CD from the query (RFC 4035 §3.1.6); Knot, authoritative for
    // unsigned zones, leaves it clear.
    want[3] = (want[3] & !0x10) | (query[3] & 0x10);
    want
}

async fn knots_answer(knot: SocketAddr, query: &[u8], v: Variant) -> Vec<u8> {
    let direct = exchange(knot, query, v.tcp).await;
    let truncated = direct.len() > 2 && direct[2] & 0x02 != 0;
    if v.tcp || !truncated {
        return direct;
    }
    let whole = exchange(knot, query, true).await;
    let fits = whole.len() <= usize::from(v.payload.unwrap_or(512).max(512));
    if fits {
        whole
    } else {
        direct
    }
}

async fn run_matrix(knot: SocketAddr, proxy: &Proxy, cached: bool) -> Vec<String> {
    let dns = proxy.dns_addrs[0];
    let mut failures = Vec::new();
    let mut id = 1u16;
    for name in NAMES {
        for &qtype in TYPES {
            for &v in VARIANTS {
                id = id.wrapping_add(1);
                let q = query(name, qtype, v, id);
                let want = expected(knot, &q, v).await;
                let started = std::time::Instant::now();
                if cached {
                    // The first ask fills the cache; the second is answered from it.
                    exchange(dns, &q, v.tcp).await;
                }
                let got = exchange(dns, &q, v.tcp).await;
                let aged = started.elapsed().as_secs() as u32 + 1;
                if let Some(diff) = differs(&got, &want, cached, aged) {
                    failures.push(format!("{name} {qtype} [{}]:\n{diff}", v.name));
                }
            }
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_through_dnslens_equal_knots_own() {
    let big = big_zone();
    let root = dnslens::demo::ZONES[1];
    let zones = [
        ("diff.test.", DIFF_ZONE),
        ("2.0.192.in-addr.arpa.", REVERSE_ZONE),
        ("big.test.", big.as_str()),
        root,
    ];
    let (knot, _) = Knot::start_serving(false, &zones, "svc.diff.test.").await;
    let mut failures = Vec::new();
    for cached in [false, true] {
        let mut config = test_config(&[knot.addr]);
        config.cache.enabled = cached;
        // ANY goes through as well: RFC 8482's minimal answer (on by default) is tested in
        // bad_input.rs.
        config.mitigations.minimal_any = false;
        config.forward.timeout = Duration::from_secs(2);
        let proxy = Proxy::start(&config).await.expect("proxy starts");
        for failure in run_matrix(knot.addr, &proxy, cached).await {
            failures.push(format!(
                "cache {}: {failure}",
                if cached { "on" } else { "off" }
            ));
        }
        let m = proxy.metrics_addr;
        let (_, body) = http_get(m, "/metrics").await;
        assert_eq!(
            series_sum(&body, "dnslens_forward_failures_total"),
            0.0,
            "every question reached Knot"
        );
        proxy.shutdown().await;
    }
    let cases = NAMES.len() * TYPES.len() * VARIANTS.len() * 2;
    assert!(
        failures.is_empty(),
        "{} of {cases} answers differ from Knot's:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
