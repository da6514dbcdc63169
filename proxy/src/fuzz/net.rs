//! The fuzz targets that go through a running proxy: one `Proxy` per fuzzing process, on
//! loopback ports of its own, with the cache on, forwarding to an upstream socket this
//! module answers from a thread of its own. Checks what a client can see.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::config::{Config, UpstreamAddr};
use crate::wire::{self, HEADER_LEN};
use crate::Proxy;

/// How long a reply may take before its absence is a finding: far above the upstream
/// timeout, so a slow machine does not report a lost answer that was only late.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

struct Harness {
    dns: SocketAddr,
    client: UdpSocket,
    /// What the upstream sends before its real answer (the `upstream_response` target).
    hostile: Arc<Mutex<Option<Vec<u8>>>>,
    /// Names unique to each run, so no run reads another's cache entry by accident.
    serial: AtomicU32,
    _runtime: tokio::runtime::Runtime,
    _proxy: Proxy,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| Harness::start().expect("the fuzz harness starts"))
}

impl Harness {
    fn start() -> std::io::Result<Harness> {
        let upstream = UdpSocket::bind("127.0.0.1:0")?;
        let hostile = Arc::new(Mutex::new(None));
        let upstream_addr = upstream.local_addr()?;
        let answers = hostile.clone();
        std::thread::spawn(move || serve_upstream(&upstream, &answers));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mut config = Config {
            listen: vec!["127.0.0.1:0".parse().map_err(std::io::Error::other)?],
            ..Config::default()
        };
        config.forward.upstreams = vec![UpstreamAddr(upstream_addr)];
        config.admin.listen = "127.0.0.1:0".parse().map_err(std::io::Error::other)?;
        config.forward.timeout = Duration::from_millis(500);
        config.forward.attempts = 2;
        config.cache.enabled = true;
        config.cache.serve_stale = true;
        config.listener.udp_workers = 1;
        let proxy = runtime
            .block_on(Proxy::start(&config))
            .map_err(std::io::Error::other)?;
        let client = UdpSocket::bind("127.0.0.1:0")?;
        client.set_read_timeout(Some(ANSWER_WAIT))?;
        Ok(Harness {
            dns: proxy.dns_addrs[0],
            client,
            hostile,
            serial: AtomicU32::new(0),
            _runtime: runtime,
            _proxy: proxy,
        })
    }

    fn next_name(&self) -> String {
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        format!("q{n}.fuzz.example.")
    }
}

/// The upstream: answers every query with one A record (TTL 30; the sentinel's TTL 0),
/// after the hostile bytes — as they are, then with the query's ID — when there are some.
fn serve_upstream(socket: &UdpSocket, hostile: &Mutex<Option<Vec<u8>>>) {
    let mut buf = [0u8; 65_535];
    while let Ok((len, from)) = socket.recv_from(&mut buf) {
        let query = &buf[..len];
        let Ok(info) = wire::parse_query(query) else {
            continue;
        };
        let before = hostile.lock().map(|h| h.clone()).unwrap_or(None);
        if let Some(mut bytes) = before {
            let _ = socket.send_to(&bytes, from);
            if bytes.len() >= 2 {
                wire::set_id(&mut bytes, info.id);
                let _ = socket.send_to(&bytes, from);
            }
        }
        let sentinel = query
            .get(HEADER_LEN..info.question_end)
            .and_then(wire::question_name)
            .is_some_and(|name| name.starts_with("sentinel."));
        let _ = socket.send_to(&a_answer(query, info.question_end, !sentinel), from);
    }
}

/// An answer to `query` (its header and question) with one A record, 192.0.2.1.
fn a_answer(query: &[u8], question_end: usize, cacheable: bool) -> Vec<u8> {
    let mut answer = query[..question_end].to_vec();
    answer[2] = 0x81; // QR, RD
    answer[3] = 0x80; // RA, NOERROR
    answer[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]);
    let ttl: u32 = if cacheable { 30 } else { 0 };
    answer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    answer.extend_from_slice(&ttl.to_be_bytes());
    answer.extend_from_slice(&[0, 4, 192, 0, 2, 1]);
    answer
}

/// A query for `name` (absolute, with its dot) of type `qtype`, RD set.
pub(super) fn query_bytes(name: &str, qtype: u16, id: u16) -> Vec<u8> {
    let mut query = id.to_be_bytes().to_vec();
    query.extend_from_slice(&[0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    query.extend(super::question_bytes(name, qtype).unwrap_or_default());
    query
}

/// The reply a client may receive for one message it sent.
struct Expected {
    id: u16,
    /// The question section and the client's UDP size, when the query parsed; `None` for
    /// an error answer to a query that did not (FORMERR, NOTIMP: no question, QDCOUNT 0).
    asked: Option<(Vec<u8>, usize)>,
}

impl Expected {
    /// For the message `sent`: `None` when nothing may come back (not a query at all).
    fn of(sent: &[u8]) -> Option<Expected> {
        match wire::parse_query(sent) {
            Ok(info) => Some(Expected {
                id: info.id,
                asked: Some((
                    sent[HEADER_LEN..info.question_end].to_vec(),
                    usize::from(info.udp_payload),
                )),
            }),
            Err(e) => e.answer_rcode().map(|_| Expected {
                id: wire::id(sent).unwrap_or(0),
                asked: None,
            }),
        }
    }

    /// Whether `reply` answers this message: its ID, and its question or none.
    fn matches(&self, reply: &[u8]) -> bool {
        wire::id(reply) == Some(self.id)
            && match &self.asked {
                Some((question, _)) => {
                    reply.get(HEADER_LEN..HEADER_LEN + question.len()) == Some(question.as_slice())
                }
                None => reply.get(4..6) == Some(&[0, 0]),
            }
    }

    /// Checks `reply` against what was asked (`sent`); panics with the bytes when it does
    /// not fit. `udp` holds the answer to the client's UDP size.
    fn check(&self, reply: &[u8], sent: &[u8], udp: bool) {
        assert_eq!(
            wire::id(reply),
            Some(self.id),
            "reply {reply:02x?} to {sent:02x?}"
        );
        assert!(
            reply.len() >= HEADER_LEN && reply[2] & 0x80 != 0,
            "not a response: {reply:02x?}"
        );
        assert!(
            self.matches(reply),
            "an answer to another question: {reply:02x?} for {sent:02x?}"
        );
        let limit = match &self.asked {
            Some((_, udp_size)) if udp => *udp_size,
            Some(_) => usize::from(u16::MAX),
            None => usize::from(wire::CLASSIC_UDP_PAYLOAD),
        };
        assert!(
            reply.len() <= limit,
            "{} bytes, {limit} allowed",
            reply.len()
        );
    }
}

/// Receives datagrams until `wanted` says every expected one came; panics on any
/// datagram nobody asked for, and when one does not come within [`ANSWER_WAIT`].
fn receive_until(harness: &Harness, mut wanted: impl FnMut(&[u8]) -> bool) {
    let mut buf = [0u8; 65_535];
    loop {
        let (len, from) = match harness.client.recv_from(&mut buf) {
            Ok(received) => received,
            // libFuzzer's own timers (SIGALRM) interrupt the wait.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("every query is answered within the wait: {e}"),
        };
        assert_eq!(from, harness.dns);
        if wanted(&buf[..len]) {
            return;
        }
    }
}

/// A client datagram through the whole request path.
pub fn client_datagram(data: &[u8]) {
    let harness = harness();
    if harness.client.send_to(data, harness.dns).is_err() {
        return; // larger than a datagram can be
    }
    // A sentinel after it, never cached: its answer comes through the upstream, so once
    // it is back every answer to `data` that could come has come or is on its way.
    let expected = Expected::of(data);
    let sentinel_id = expected.as_ref().map_or(0, |e| !e.id);
    let sentinel = query_bytes("sentinel.fuzz.example.", 1, sentinel_id);
    let sentinel_question = sentinel[HEADER_LEN..].to_vec();
    let _ = harness.client.send_to(&sentinel, harness.dns);
    let (mut fuzz_pending, mut sentinel_pending) = (expected.is_some(), true);
    receive_until(harness, |reply| {
        let reply_id = wire::id(reply);
        if sentinel_pending
            && reply_id == Some(sentinel_id)
            && reply.get(HEADER_LEN..HEADER_LEN + sentinel_question.len())
                == Some(sentinel_question.as_slice())
        {
            sentinel_pending = false;
        } else {
            assert!(
                fuzz_pending,
                "an unexpected datagram {reply:02x?} after {data:02x?}"
            );
            let expected = expected.as_ref().expect("pending implies expected");
            expected.check(reply, data, true);
            fuzz_pending = false;
        }
        !fuzz_pending && !sentinel_pending
    });
}

/// An upstream's answer, hostile or not, for a query the proxy forwarded; then the same
/// question again, answered from what the cache made of it.
pub fn upstream_response(data: &[u8]) {
    let harness = harness();
    let name = harness.next_name();
    if let Ok(mut hostile) = harness.hostile.lock() {
        *hostile = Some(data.to_vec());
    }
    for id in [0x0102, 0x0304] {
        let query = query_bytes(&name, 1, id);
        let expected = Expected::of(&query).expect("a query");
        let _ = harness.client.send_to(&query, harness.dns);
        receive_until(harness, |reply| {
            expected.check(reply, &query, true);
            true
        });
    }
    if let Ok(mut hostile) = harness.hostile.lock() {
        *hostile = None;
    }
}

/// Bytes written on a TCP connection to the proxy, then the write side closed: every reply
/// is a framed answer to a query framed in the input (the proxy may stop reading at a frame
/// that is not a query).
pub fn tcp_stream(data: &[u8]) {
    let harness = harness();
    let Ok(mut stream) = TcpStream::connect(harness.dns) else {
        return; // out of local ports for a moment: not the proxy's doing
    };
    let _ = stream.set_read_timeout(Some(ANSWER_WAIT));
    // What the proxy will read: frames until the input ends, at most what the listener
    // takes from one connection before answering.
    let mut expected = Vec::new();
    let mut rest = data;
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if len > tail.len() {
            break;
        }
        let (frame, next) = tail.split_at(len);
        rest = next;
        if let Some(expectation) = Expected::of(frame) {
            expected.push((frame.to_vec(), expectation));
        }
    }
    if stream.write_all(data).is_err() || stream.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let mut replies = Vec::new();
    let _ = stream.read_to_end(&mut replies);
    let mut rest = replies.as_slice();
    while !rest.is_empty() {
        let [hi, lo, tail @ ..] = rest else {
            panic!("a torn frame at the end of the replies: {rest:02x?}");
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        assert!(len <= tail.len(), "a torn reply {rest:02x?}");
        let (reply, next) = tail.split_at(len);
        rest = next;
        // Two queries on one connection may share an ID: matched on the question too.
        let index = expected
            .iter()
            .position(|(_, e)| e.matches(reply))
            .unwrap_or_else(|| panic!("a reply {reply:02x?} to no query in {data:02x?}"));
        let (sent, expectation) = expected.swap_remove(index);
        expectation.check(reply, &sent, false);
    }
}
