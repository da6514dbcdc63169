//! TCP clients (RFC 7766): one task per connection and one writer task; queries pipelined
//! through the pipeline, answered as they complete, at most
//! `listener.tcp_max_inflight_per_connection` at once; connections capped at
//! `listener.tcp_max_connections`, closed after `listener.tcp_idle_timeout` without a query.
//! On stop the listener accepts what the kernel queued for it, then leaves the group.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::access::ClientPolicy;
use super::{refuse, refuse_or_reject, ListenMetrics};
use crate::dnstap::MessageKind;
use crate::metrics::Transport;
use crate::pipeline::Pipeline;
use crate::ratelimit::Verdict;
use crate::request::{Arrival, ReplyTo, TcpReply};
use dnslens_wire as wire;

/// How long a connection accepted from the queue after the stop may take to send its
/// queries.
const TCP_DRAIN_READ: Duration = Duration::from_millis(500);

#[derive(Clone, Copy)]
pub(super) struct TcpSettings {
    pub(super) idle_timeout: Duration,
    pub(super) max_inflight: usize,
}

/// What a TCP connection hands its queries to.
#[derive(Clone)]
pub(super) struct Served {
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) metrics: Arc<ListenMetrics>,
    pub(super) policy: Arc<ClientPolicy>,
}

pub(super) async fn tcp_accept(
    listener: TcpListener,
    settings: TcpSettings,
    connections: Arc<Semaphore>,
    served: Served,
    stop: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            served.metrics.dropped("tcp_connection_limit");
            drop(stream);
            continue;
        };
        let served = served.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let _permit = permit;
            let result = tcp_connection(stream, peer, settings, served, stop).await;
            if let Err(e) = result {
                debug!(%peer, error = %e, "tcp connection ended");
            }
        });
    }
    // Connections the kernel completed that were not accepted yet would be reset when the
    // listener closes: take them too, and give them TCP_DRAIN_READ to send their queries.
    let drained = CancellationToken::new();
    while let Ok(Ok((stream, peer))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await
    {
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            served.metrics.dropped("tcp_connection_limit");
            continue;
        };
        let (served, drained) = (served.clone(), drained.clone());
        conns.spawn(async move {
            let _permit = permit;
            let _ = tcp_connection(stream, peer, settings, served, drained).await;
        });
    }
    // Out of the SO_REUSEPORT group, so new connections go to another dnslens on the address
    // (a rolling update) while the open ones answer what they already read.
    drop(listener);
    tokio::spawn(async move {
        tokio::time::sleep(TCP_DRAIN_READ).await;
        drained.cancel();
    });
    while conns.join_next().await.is_some() {}
}

/// One client connection: reads length-prefixed queries and hands each to the pipeline
/// with a [`TcpReply`]; a writer task frames the answers as they complete. No task per
/// query: the permit that bounds the connection's queries in flight travels with each.
async fn tcp_connection(
    stream: TcpStream,
    peer: SocketAddr,
    settings: TcpSettings,
    served: Served,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let allowed = served.policy.allows(peer.ip());
    let metrics = &served.metrics;
    let (mut reader, mut writer) = stream.into_split();
    let (answers_tx, mut answers_rx) = mpsc::unbounded_channel::<(Vec<u8>, OwnedSemaphorePermit)>();
    let write_failed = Arc::new(AtomicBool::new(false));
    let writer_task = {
        let write_failed = write_failed.clone();
        tokio::spawn(async move {
            while let Some((answer, _permit)) = answers_rx.recv().await {
                let Ok(len) = u16::try_from(answer.len()) else {
                    continue;
                };
                let mut frame = Vec::with_capacity(answer.len() + 2);
                frame.extend_from_slice(&len.to_be_bytes());
                frame.extend_from_slice(&answer);
                if writer.write_all(&frame).await.is_err() {
                    write_failed.store(true, Ordering::Relaxed);
                    return;
                }
            }
            let _ = writer.shutdown().await;
        })
    };
    let inflight = Arc::new(Semaphore::new(settings.max_inflight));
    let mut stopped = std::pin::pin!(stop.cancelled());
    loop {
        let mut len_prefix = [0u8; 2];
        let read = tokio::select! {
            _ = &mut stopped => break,
            read = tokio::time::timeout(settings.idle_timeout, reader.read_exact(&mut len_prefix)) => read,
        };
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break, // closed by the client, or idle
        }
        let len = usize::from(u16::from_be_bytes(len_prefix));
        if len < wire::HEADER_LEN {
            metrics.dropped("tcp_bad_length");
            break;
        }
        // At most 64 KiB: the prefix is 16 bits, so no length can make this unbounded.
        let mut message = vec![0u8; len];
        match tokio::time::timeout(settings.idle_timeout, reader.read_exact(&mut message)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => {
                metrics.dropped("tcp_bad_length");
                break;
            }
        }
        if write_failed.load(Ordering::Relaxed) {
            break;
        }
        let received = Instant::now();
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break;
        };
        metrics
            .replies
            .tap(MessageKind::ClientQuery, Transport::Tcp, peer, &message);
        let reply = ReplyTo::Tcp(TcpReply {
            answers: answers_tx.clone(),
            permit,
            replies: metrics.replies.clone(),
        });
        match wire::parse_query(&message) {
            Ok(info) if allowed => match served.policy.rate(peer.ip(), received) {
                Verdict::Pass => served.pipeline.handle(
                    &message,
                    info,
                    Arrival {
                        peer,
                        received,
                        reply,
                    },
                ),
                Verdict::Refuse => refuse(&message, &info, peer, reply),
                Verdict::Drop => {}
            },
            parsed => refuse_or_reject(&message, parsed, peer, reply, metrics),
        }
    }
    drop(answers_tx);
    // The writer ends once every query in flight has sent its answer (or failed).
    let _ = writer_task.await;
    Ok(())
}
