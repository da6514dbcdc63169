//! The reply path: what a client gets back through [`ReplyTo::send`] — its own ID and
//! question bytes, a UDP answer cut to its payload size — and what is counted and traced.

use std::net::UdpSocket;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::Semaphore;

use super::*;
use crate::test_messages::{a_answer, query};
use dnslens_wire::Rcode;

/// Replies with their counters and trace sink kept for inspection.
struct Counted {
    replies: Arc<Replies>,
    requests: Family<RequestLabels, Counter>,
    truncated: Counter,
    send_failed: Counter,
    sink: TraceSink,
}

fn counted() -> Counted {
    let (requests, truncated, send_failed) =
        (Family::default(), Counter::default(), Counter::default());
    let sink = TraceSink::new(16, Counter::default());
    let replies = Replies::new(
        requests.clone(),
        RequestDurations::register(&mut Registry::default()),
        truncated.clone(),
        send_failed.clone(),
        Some(sink.clone()),
        None,
    );
    Counted {
        replies: Arc::new(replies),
        requests,
        truncated,
        send_failed,
        sink,
    }
}

impl Counted {
    /// `dnslens_requests_total{transport, qtype="A", rcode}`.
    fn answered(&self, transport: Transport, rcode: u8) -> u64 {
        let labels = RequestLabels {
            transport,
            qtype: QtypeLabel::from_qtype(1),
            rcode: RcodeLabel::from_rcode(rcode),
        };
        self.requests.get_or_create(&labels).get()
    }

    fn traces(&self) -> Vec<QueryTrace> {
        let (mut out, mut spare) = (Vec::new(), Vec::new());
        self.sink.drain_into(&mut out, &mut spare);
        out
    }
}

/// A client's query with a mixed-case name (resolvers randomise the case, 0x20) and the
/// upstream's answer to it: lowercase, another ID, `records` A records.
fn exchange(records: usize) -> (Vec<u8>, QueryInfo, Vec<u8>) {
    let query = query(
        "KuBeRnEtEs.DeFaUlT.svc.cluster.local.",
        RecordType::A,
        false,
    );
    let info = wire::parse_query(&query).expect("a valid query");
    let mut answer = a_answer("kubernetes.default.svc.cluster.local.", &vec![30; records]);
    wire::set_id(&mut answer, 0x9999);
    (query, info, answer)
}

fn trace_of(query: &[u8], info: &QueryInfo, client: SocketAddr) -> Option<Box<QueryTrace>> {
    let question = &query[wire::HEADER_LEN..info.question_end];
    let trace = QueryTrace::new(client, Transport::Udp, question, info.qtype, Instant::now());
    Some(Box::new(trace))
}

fn udp_endpoint(replies: Arc<Replies>) -> Arc<UdpReply> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
    socket.bind(&addr.into()).expect("bind");
    Arc::new(UdpReply {
        socket: DatagramSocket::new(socket).expect("datagram socket"),
        replies,
    })
}

fn client() -> UdpSocket {
    let client = UdpSocket::bind("127.0.0.1:0").expect("client socket");
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    client
}

fn received(client: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    let (len, _) = client.recv_from(&mut buf).expect("an answer");
    buf[..len].to_vec()
}

#[tokio::test]
async fn a_udp_answer_carries_the_askers_id_and_question_bytes() {
    let c = counted();
    let (query, info, mut answer) = exchange(2);
    let client = client();
    let peer = client.local_addr().expect("address");
    let trace = trace_of(&query, &info, peer);
    ReplyTo::Udp(udp_endpoint(c.replies.clone())).send(peer, &info, &query, &mut answer, trace);

    let got = received(&client);
    assert_eq!(wire::id(&got), Some(0x4242));
    assert_eq!(
        got[wire::HEADER_LEN..info.question_end],
        query[wire::HEADER_LEN..info.question_end],
        "the question byte for byte, case and all"
    );
    assert_eq!(wire::answer_count(&got), 2);
    assert_eq!(got[2] & 0x02, 0, "not truncated");
    assert_eq!(c.answered(Transport::Udp, Rcode::NOERROR), 1);
    assert_eq!(c.truncated.get(), 0);
    let traces = c.traces();
    assert_eq!(traces.len(), 1, "the trace is handed to the tracker");
    assert!(traces[0].answered >= traces[0].received);
}

#[tokio::test]
async fn a_udp_answer_longer_than_the_clients_payload_is_cut_and_flagged() {
    let c = counted();
    let (query, info, mut answer) = exchange(60);
    assert_eq!(info.udp_payload, 512, "no EDNS: 512 bytes");
    assert!(answer.len() > 512);
    let client = client();
    let peer = client.local_addr().expect("address");
    ReplyTo::Udp(udp_endpoint(c.replies.clone())).send(peer, &info, &query, &mut answer, None);

    let got = received(&client);
    assert!(got.len() <= 512, "{} bytes", got.len());
    assert_eq!(got[2] & 0x02, 0x02, "TC set");
    assert_eq!(wire::id(&got), Some(0x4242));
    assert_eq!(wire::answer_count(&got), 0);
    assert_eq!(
        got[wire::HEADER_LEN..info.question_end],
        query[wire::HEADER_LEN..info.question_end]
    );
    assert_eq!(c.truncated.get(), 1);
    assert_eq!(c.answered(Transport::Udp, Rcode::NOERROR), 1);
}

#[tokio::test]
async fn a_tcp_answer_travels_with_its_permit_and_a_closed_connection_is_counted() {
    let c = counted();
    let (query, info, answer) = exchange(60);
    let permits = Arc::new(Semaphore::new(1));
    let (answers, mut written) = mpsc::unbounded_channel();
    let reply = TcpReply {
        answers: answers.clone(),
        permit: permits.clone().try_acquire_owned().expect("a permit"),
        replies: c.replies.clone(),
    };
    let peer: SocketAddr = "127.0.0.1:5000".parse().expect("address");
    ReplyTo::Tcp(reply).send(peer, &info, &query, &mut answer.clone(), None);
    let (got, permit) = written.recv().await.expect("an answer to write");
    assert_eq!(wire::id(&got), Some(0x4242));
    assert_eq!(wire::answer_count(&got), 60, "TCP is never cut");
    assert_eq!(
        permits.available_permits(),
        0,
        "held until the answer is written"
    );
    drop(permit);
    assert_eq!(permits.available_permits(), 1);
    assert_eq!(c.answered(Transport::Tcp, Rcode::NOERROR), 1);

    // The connection's writer is gone: a failed send, nothing more counted as answered.
    drop(written);
    let reply = TcpReply {
        answers,
        permit: permits.clone().try_acquire_owned().expect("a permit"),
        replies: c.replies.clone(),
    };
    ReplyTo::Tcp(reply).send(peer, &info, &query, &mut answer.clone(), None);
    assert_eq!(c.send_failed.get(), 1);
    assert_eq!(c.answered(Transport::Tcp, Rcode::NOERROR), 1);
    assert_eq!(permits.available_permits(), 1, "the permit is released");
}

#[tokio::test]
async fn dnslens_own_question_gets_the_answer_with_its_id() {
    let (query, info, mut answer) = exchange(2);
    let (reply, answered) = oneshot::channel();
    let arrival = Arrival::internal(reply);
    assert!(matches!(arrival.reply, ReplyTo::Internal(_)));
    arrival
        .reply
        .send(arrival.peer, &info, &query, &mut answer, None);
    let got = answered.await.expect("the answer");
    assert_eq!(wire::id(&got), Some(0x4242));
    assert_eq!(wire::answer_count(&got), 2);
}
