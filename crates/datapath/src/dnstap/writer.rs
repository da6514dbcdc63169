//! The dnstap writer task: connects to the reader, does the Frame Streams handshake, writes
//! queued messages in batches, and reconnects with back-off when the reader goes away —
//! dropping (and counting) what arrives while there is none, so the queue never fills
//! because of a dead reader.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::frame::{self, Control, FrameError};
use super::{encode_frame, DnstapMetrics, Event, Header, Target};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The handshake, and the goodbye at shutdown, take at most this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A batch is written once it holds this many bytes, or when the queue is quiet.
const BATCH_BYTES: usize = 64 * 1024;
/// Once woken by a message the writer looks at the queue again this often, without being
/// woken by every message in between (a wake-up per message cost more than the rest of
/// dnstap together); a message waits at most about this long while traffic flows.
const BATCH_TICK: Duration = Duration::from_millis(5);

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("the reader answered READY with {0:?}, not ACCEPT")]
    Unexpected(Control),
    #[error("the handshake took longer than {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
}

/// Runs until `stop`: connect, stream, and after a failure wait (dropping) and again.
pub(crate) async fn run(
    target: Target,
    header: Header,
    mut events: mpsc::Receiver<Event>,
    metrics: DnstapMetrics,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut warned = false;
    loop {
        match connect(&target).await {
            Ok(mut stream) => {
                metrics.connected.set(1);
                info!(reader = %target, "dnstap: streaming to the reader");
                backoff = BACKOFF_MIN;
                warned = false;
                let ended = stream_to(&mut stream, &header, &mut events, &metrics, &stop).await;
                metrics.connected.set(0);
                match ended {
                    Ok(()) => {
                        // Stopping: STOP, then the reader's FINISH (or not, briefly).
                        let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, goodbye(&mut stream)).await;
                        return;
                    }
                    Err(e) => {
                        warn!(reader = %target, error = %e, "dnstap: the reader went away; reconnecting")
                    }
                }
            }
            Err(e) => {
                metrics.connect_failures.inc();
                // Once per outage, not once per retry.
                if !warned {
                    warn!(reader = %target, error = %e, "dnstap: cannot reach the reader; retrying, messages are dropped meanwhile");
                    warned = true;
                }
            }
        }
        let wake = tokio::time::sleep(backoff);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut wake => break,
                event = events.recv() => match event {
                    Some(_) => metrics.dropped.inc("no_reader"),
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect(target: &Target) -> Result<Box<dyn Stream>, WriteError> {
    let mut stream: Box<dyn Stream> = match target {
        Target::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        Target::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr.as_str()).await?;
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut stream))
        .await
        .map_err(|_| WriteError::Timeout)??;
    Ok(stream)
}

/// READY → ACCEPT (with dnstap's content type) → START.
async fn handshake(stream: &mut Box<dyn Stream>) -> Result<(), WriteError> {
    stream.write_all(&frame::control(Control::Ready)).await?;
    let (kind, types) = read_control(stream).await?;
    if kind != Control::Accept {
        return Err(WriteError::Unexpected(kind));
    }
    if !types.is_empty() && !types.iter().any(|t| t == frame::CONTENT_TYPE) {
        return Err(FrameError::ContentType.into());
    }
    stream.write_all(&frame::control(Control::Start)).await?;
    Ok(())
}

async fn goodbye(stream: &mut Box<dyn Stream>) -> Result<(), WriteError> {
    stream.write_all(&frame::control(Control::Stop)).await?;
    stream.flush().await?;
    read_control(stream).await?;
    Ok(())
}

async fn read_control(stream: &mut Box<dyn Stream>) -> Result<(Control, Vec<Vec<u8>>), WriteError> {
    if stream.read_u32().await? != 0 {
        return Err(FrameError::NotControl.into());
    }
    let len = stream.read_u32().await?;
    if len > frame::MAX_CONTROL_LEN {
        return Err(FrameError::TooLong(len).into());
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body).await?;
    Ok(frame::parse_control(&body)?)
}

/// Writes queued messages until `stop` (Ok) or a write fails (Err).
async fn stream_to(
    stream: &mut Box<dyn Stream>,
    header: &Header,
    events: &mut mpsc::Receiver<Event>,
    metrics: &DnstapMetrics,
    stop: &CancellationToken,
) -> Result<(), WriteError> {
    let mut batch = Vec::with_capacity(BATCH_BYTES + 4096);
    let mut count = 0;
    loop {
        // Idle: park until a message comes.
        let first = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            event = events.recv() => match event {
                Some(event) => event,
                None => return Ok(()),
            },
        };
        encode_frame(first, header, &mut batch);
        count += 1;
        // Busy: take what queued up every tick, writing full batches, until a tick finds
        // the queue empty; then write the rest and park again.
        loop {
            while let Ok(event) = events.try_recv() {
                encode_frame(event, header, &mut batch);
                count += 1;
                if batch.len() >= BATCH_BYTES {
                    write(stream, &mut batch, &mut count, metrics, stop).await?;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(BATCH_TICK) => {}
            }
            if events.is_empty() {
                break;
            }
        }
        write(stream, &mut batch, &mut count, metrics, stop).await?;
        if stop.is_cancelled() {
            return Ok(());
        }
    }
}

/// Writes the batch (a reader that stopped reading holds this write: shutdown does not wait
/// for it) and counts its messages.
async fn write(
    stream: &mut Box<dyn Stream>,
    batch: &mut Vec<u8>,
    count: &mut u64,
    metrics: &DnstapMetrics,
    stop: &CancellationToken,
) -> Result<(), WriteError> {
    if batch.is_empty() {
        return Ok(());
    }
    tokio::select! {
        written = stream.write_all(batch) => written?,
        _ = stop.cancelled() => return Ok(()),
    }
    metrics.written.inc_by(*count);
    *count = 0;
    batch.clear();
    Ok(())
}
