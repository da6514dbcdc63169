//! dnstap: every DNS message dnslens receives and sends, as it was on the wire, streamed to
//! a dnstap reader (Frame Streams over a unix or TCP socket) — the query log that CoreDNS,
//! Unbound, dnsdist and Knot write and Vector, fluent-bit and the dnstap tools read. Traces
//! keep a sample of ordinary lookups; dnstap answers "what exactly did this pod ask at 03:12".
//!
//! The data path never waits for it: a message is copied into a bounded queue (`queue`) and
//! dropped, counted, when the queue is full; one task encodes and writes, and while no
//! reader is connected it drops (counted) and reconnects with back-off (0.1 s doubling to
//! 5 s). Off unless `dnstap.socket` is set.
//!
//! Config (`dnstap:`): `socket` — `unix:///run/dnstap.sock` or a path (unix socket),
//! `tcp://10.0.0.9:6000` or `HOST:PORT` (TCP) [none: off]; `identity` [the host name];
//! `version` [`dnslens <version>`]; `messages` — which of `client_query`, `client_response`,
//! `forwarder_query`, `forwarder_response` [the client's two]; `queue` [10000 messages].
//! Changes take effect at restart (a reload keeps the running stream).
//!
//! Metrics: `dnslens_dnstap_messages_total` (written), `dnslens_dnstap_dropped_total{reason}`
//! (`queue_full`: the writer is behind, a slow reader; `no_reader`: not connected),
//! `dnslens_dnstap_connected` (1 while a reader has the stream),
//! `dnslens_dnstap_connect_failures_total`.
//!
//! Parts: `frame` (Frame Streams), `proto` (the dnstap messages), `writer` (the task).

pub mod frame;
pub mod proto;
#[cfg(test)]
mod tests;
mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{ReasonCounters, ReasonLabels, Transport};

/// The `dnstap:` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnstapConfig {
    /// Where the reader listens: a unix socket path (`unix://` optional) or `tcp://HOST:PORT`.
    pub socket: Option<String>,
    /// The `identity` of every message [the host name].
    pub identity: Option<String>,
    /// The `version` of every message [`dnslens <version>`].
    pub version: Option<String>,
    /// Which messages are written.
    pub messages: Vec<MessageKind>,
    /// Messages waiting for the writer at most.
    pub queue: usize,
}

impl Default for DnstapConfig {
    fn default() -> Self {
        DnstapConfig {
            socket: None,
            identity: None,
            version: None,
            messages: vec![MessageKind::ClientQuery, MessageKind::ClientResponse],
            queue: 10_000,
        }
    }
}

/// Which point of the data path a message was seen at (dnstap's `Message.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A client's query as it arrived.
    ClientQuery,
    /// The answer dnslens sent the client.
    ClientResponse,
    /// A query dnslens sent an upstream.
    ForwarderQuery,
    /// An upstream's answer as it arrived.
    ForwarderResponse,
}

impl MessageKind {
    fn dnstap_type(self) -> i32 {
        match self {
            MessageKind::ClientQuery => proto::CLIENT_QUERY,
            MessageKind::ClientResponse => proto::CLIENT_RESPONSE,
            MessageKind::ForwarderQuery => proto::FORWARDER_QUERY,
            MessageKind::ForwarderResponse => proto::FORWARDER_RESPONSE,
        }
    }

    fn is_query(self) -> bool {
        matches!(self, MessageKind::ClientQuery | MessageKind::ForwarderQuery)
    }

    fn is_client(self) -> bool {
        matches!(self, MessageKind::ClientQuery | MessageKind::ClientResponse)
    }
}

/// Where the reader is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "unix://{}", path.display()),
            Target::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

impl DnstapConfig {
    /// The reader's socket, if dnstap is on; a one-line reason when `socket` is not one.
    pub fn target(&self) -> Result<Option<Target>, String> {
        let Some(socket) = self.socket.as_deref().filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        if let Some(addr) = socket.strip_prefix("tcp://") {
            return tcp_target(addr).map(Some);
        }
        if let Some(path) = socket.strip_prefix("unix://") {
            return unix_target(path).map(Some);
        }
        if socket.starts_with('/') {
            return unix_target(socket).map(Some);
        }
        tcp_target(socket)
            .map(Some)
            .map_err(|_| format!("socket '{socket}' is neither a unix socket path (/…, unix://…) nor tcp://HOST:PORT"))
    }

    /// Checks the section (config validation): a usable socket and a queue.
    pub fn validate(&self) -> Result<(), String> {
        self.target()?;
        if self.queue == 0 {
            return Err("queue must be at least 1".into());
        }
        Ok(())
    }
}

fn unix_target(path: &str) -> Result<Target, String> {
    if path.starts_with('/') {
        Ok(Target::Unix(PathBuf::from(path)))
    } else {
        Err(format!("socket: unix socket path '{path}' is not absolute"))
    }
}

fn tcp_target(addr: &str) -> Result<Target, String> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(Target::Tcp(addr.to_string()))
        }
        _ => Err(format!("socket: '{addr}' is not HOST:PORT")),
    }
}

/// One message for the writer.
pub(crate) struct Event {
    kind: MessageKind,
    transport: Transport,
    /// The client (client messages) or the upstream (forwarder messages).
    peer: SocketAddr,
    at: SystemTime,
    message: Vec<u8>,
}

/// The dnstap metrics (see the module doc).
#[derive(Clone)]
pub struct DnstapMetrics {
    written: Counter,
    dropped: ReasonCounters,
    connected: Gauge,
    connect_failures: Counter,
}

const DROP_REASONS: &[&str] = &["queue_full", "no_reader"];

impl DnstapMetrics {
    pub fn register(registry: &mut Registry) -> DnstapMetrics {
        let written = Counter::default();
        registry.register(
            "dnstap_messages",
            "dnstap messages written to the reader",
            written.clone(),
        );
        let dropped =
            prometheus_client::metrics::family::Family::<ReasonLabels, Counter>::default();
        registry.register(
            "dnstap_dropped",
            "dnstap messages dropped: queue_full (the reader is slower than the traffic) or no_reader (not connected)",
            dropped.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "dnstap_connected",
            "1 while a dnstap reader has the stream",
            connected.clone(),
        );
        let connect_failures = Counter::default();
        registry.register(
            "dnstap_connect_failures",
            "Connections to the dnstap reader that failed (refused, no socket, handshake)",
            connect_failures.clone(),
        );
        DnstapMetrics {
            written,
            dropped: ReasonCounters::new(&dropped, DROP_REASONS),
            connected,
            connect_failures,
        }
    }
}

/// The data path's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Dnstap {
    queue: mpsc::Sender<Event>,
    /// Indexed by [`MessageKind`] as declared.
    wanted: [bool; 4],
    dropped_queue_full: Counter,
}

impl Dnstap {
    /// Starts the writer task when `config` turns dnstap on.
    pub fn start(
        config: &DnstapConfig,
        metrics: &DnstapMetrics,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Option<Dnstap>, String> {
        let Some(target) = config.target()? else {
            return Ok(None);
        };
        let (queue, events) = mpsc::channel(config.queue.max(1));
        let identity = config.identity.clone().or_else(host_name);
        let version = config
            .version
            .clone()
            .unwrap_or_else(|| format!("dnslens {}", env!("CARGO_PKG_VERSION")));
        let header = Header::new(
            identity.as_deref().map(str::as_bytes),
            Some(version.as_bytes()),
        );
        tasks.spawn(writer::run(target, header, events, metrics.clone(), stop));
        let mut wanted = [false; 4];
        for kind in &config.messages {
            wanted[*kind as usize] = true;
        }
        Ok(Some(Dnstap {
            queue,
            wanted,
            dropped_queue_full: metrics.dropped.handle("queue_full"),
        }))
    }

    /// Whether messages of `kind` are written.
    pub fn wants(&self, kind: MessageKind) -> bool {
        self.wanted[kind as usize]
    }

    /// Queues `message` as seen now at `kind` with `peer`; dropped and counted when the
    /// queue is full.
    pub fn log(&self, kind: MessageKind, transport: Transport, peer: SocketAddr, message: &[u8]) {
        if !self.wants(kind) {
            return;
        }
        let event = Event {
            kind,
            transport,
            peer,
            at: SystemTime::now(),
            message: message.to_vec(),
        };
        if self.queue.try_send(event).is_err() {
            self.dropped_queue_full.inc();
        }
    }
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// What every message carries, encoded once: `identity`, `version` and the `type` of the
/// `Dnstap` wrapper (protobuf fields may come in any order; the `message` field follows).
pub(crate) struct Header(Vec<u8>);

impl Header {
    pub(crate) fn new(identity: Option<&[u8]>, version: Option<&[u8]>) -> Header {
        let wrapper = proto::Dnstap {
            identity: identity.map(<[u8]>::to_vec),
            version: version.map(<[u8]>::to_vec),
            message: None,
            r#type: proto::DNSTAP_TYPE_MESSAGE,
        };
        Header(prost::Message::encode_to_vec(&wrapper))
    }
}

/// Appends `event` to `out` as one Frame Streams data frame holding a `Dnstap` message —
/// the header's bytes and the `message` field written in place, no copy in between.
pub(crate) fn encode_frame(event: Event, header: &Header, out: &mut Vec<u8>) {
    let (sec, nsec) = event
        .at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
    let ip = match event.peer.ip() {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let family = if event.peer.is_ipv4() { 1 } else { 2 };
    let protocol = match event.transport {
        Transport::Udp => 1,
        Transport::Tcp => 2,
    };
    let mut message = proto::Message {
        r#type: event.kind.dnstap_type(),
        socket_family: Some(family),
        socket_protocol: Some(protocol),
        ..Default::default()
    };
    // The client asks (query side); an upstream answers (response side).
    if event.kind.is_client() {
        message.query_address = Some(ip);
        message.query_port = Some(u32::from(event.peer.port()));
    } else {
        message.response_address = Some(ip);
        message.response_port = Some(u32::from(event.peer.port()));
    }
    if event.kind.is_query() {
        message.query_time_sec = Some(sec);
        message.query_time_nsec = Some(nsec);
        message.query_message = Some(event.message);
    } else {
        message.response_time_sec = Some(sec);
        message.response_time_nsec = Some(nsec);
        message.response_message = Some(event.message);
    }
    const MESSAGE_FIELD: u32 = 14;
    let len = header.0.len() + prost::encoding::message::encoded_len(MESSAGE_FIELD, &message);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&header.0);
    prost::encoding::message::encode(MESSAGE_FIELD, &message, out);
}

/// Shared so the tests can build an event.
#[cfg(test)]
pub(crate) fn event_for_test(
    kind: MessageKind,
    transport: Transport,
    peer: SocketAddr,
    at: SystemTime,
    message: Vec<u8>,
) -> Event {
    Event {
        kind,
        transport,
        peer,
        at,
        message,
    }
}
