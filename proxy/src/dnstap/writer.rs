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
use super::{encode, DnstapMetrics, Event, Target};

/// What every message carries.
pub(crate) struct Header {
    pub identity: Option<Vec<u8>>,
    pub version: Option<Vec<u8>>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The handshake, and the goodbye at shutdown, take at most this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes written per batch at most (then the next batch).
const BATCH_BYTES: usize = 64 * 1024;

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
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            event = events.recv() => match event {
                Some(event) => event,
                None => return Ok(()),
            },
        };
        let mut count = 1;
        frame::data(&mut batch, &encode(first, header));
        while batch.len() < BATCH_BYTES {
            let Ok(event) = events.try_recv() else { break };
            frame::data(&mut batch, &encode(event, header));
            count += 1;
        }
        // A reader that stopped reading holds this write: shutdown must not wait for it.
        tokio::select! {
            written = stream.write_all(&batch) => written?,
            _ = stop.cancelled() => return Ok(()),
        }
        batch.clear();
        metrics.written.inc_by(count);
    }
}
