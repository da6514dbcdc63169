//! UDP clients: one task per socket (`listener.udp_workers` sockets per address), reading
//! datagrams and handing each to the pipeline without spawning; on stop, answering what the
//! socket still holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::access::ClientPolicy;
use super::{refuse, refuse_or_reject, ListenMetrics};
use crate::dnstap::MessageKind;
use crate::metrics::Transport;
use crate::pipeline::Pipeline;
use crate::ratelimit::Verdict;
use crate::request::{Arrival, ReplyTo, UdpReply};
use crate::udp::RecvBatch;
use dnslens_wire as wire;

/// Largest UDP datagram read from a client.
const UDP_RECV_BUFFER: usize = 65_535;

/// Datagrams answered from a socket's queue after the stop, at most.
const UDP_DRAIN_MAX: usize = 65_536;

pub(super) async fn udp_worker(
    endpoint: Arc<UdpReply>,
    pipeline: Arc<Pipeline>,
    metrics: Arc<ListenMetrics>,
    policy: Arc<ClientPolicy>,
    stop: CancellationToken,
) {
    let mut batch = RecvBatch::new(UDP_RECV_BUFFER);
    let serve = |packet: &[u8], peer, arrived| {
        serve_datagram(
            &endpoint, packet, peer, arrived, &pipeline, &metrics, &policy,
        )
    };
    // One wait on the token for the worker's life: a fresh `cancelled()` per datagram
    // registered and removed a waiter under the token's mutex, shared by every worker.
    let mut stopped = std::pin::pin!(stop.cancelled());
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            received = endpoint.socket.recv_batch(&mut batch, true) => {
                if let Err(e) = received {
                    // ICMP errors and the like surface here on some kernels; keep serving.
                    debug!(error = %e, "udp receive error");
                    continue;
                }
            },
        };
        for r in &batch.received {
            serve(&batch.buffers[r.slot][..r.len], r.peer, r.arrived);
        }
    }
    let buf = &mut batch.buffers[0];
    // What the kernel queued on this socket before it closes would be lost: with another
    // dnslens on the same address (SO_REUSEPORT, a rolling update) new datagrams go to it
    // once this socket is gone, so answering the queue loses nothing.
    for _ in 0..UDP_DRAIN_MAX {
        match endpoint.socket.try_recv_stamped(buf) {
            Ok((len, peer, arrived)) => serve(&buf[..len], peer, arrived),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => continue,
        }
    }
}

/// One received datagram (`received`: when it reached the host): to the pipeline, or
/// refused / rejected.
fn serve_datagram(
    endpoint: &Arc<UdpReply>,
    packet: &[u8],
    peer: SocketAddr,
    received: Instant,
    pipeline: &Arc<Pipeline>,
    metrics: &ListenMetrics,
    policy: &ClientPolicy,
) {
    metrics
        .replies
        .tap(MessageKind::ClientQuery, Transport::Udp, peer, packet);
    let reply = ReplyTo::Udp(endpoint.clone());
    match wire::parse_query(packet) {
        Ok(info) if policy.allows(peer.ip()) => match policy.rate(peer.ip(), received) {
            Verdict::Pass => pipeline.handle(
                packet,
                info,
                Arrival {
                    peer,
                    received,
                    reply,
                },
            ),
            Verdict::Refuse => refuse(packet, &info, peer, reply),
            Verdict::Drop => {}
        },
        parsed => refuse_or_reject(packet, parsed, peer, reply, metrics),
    }
}
