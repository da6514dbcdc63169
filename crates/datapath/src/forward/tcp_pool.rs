//! A reused, pipelined TCP connection to one upstream (RFC 7766 §6.2.1).
//!
//! Queries share one connection: each gets a fresh random ID, is written by a writer task
//! and matched to its answer by a reader task, so many can be outstanding at once. A broken
//! connection fails its outstanding queries and the next query opens a new one; a
//! connection idle for `forward.tcp_idle_timeout` is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use dnslens_wire as wire;

/// Queries outstanding on one connection; beyond it a query fails fast.
const MAX_OUTSTANDING: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connection closed before the answer")]
    Closed,
    #[error("no answer in time")]
    Timeout,
    #[error("too many queries outstanding on the connection")]
    Busy,
    #[error("answer does not match the question")]
    Mismatch,
    #[error("message too large for TCP")]
    TooLarge,
}

type PendingMap = Mutex<HashMap<u16, oneshot::Sender<Vec<u8>>>>;

struct Connection {
    frames: mpsc::Sender<Vec<u8>>,
    pending: Arc<PendingMap>,
    closed: Arc<AtomicBool>,
}

pub struct TcpUpstream {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    current: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl TcpUpstream {
    pub fn new(addr: SocketAddr, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        TcpUpstream {
            addr,
            connect_timeout,
            idle_timeout,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// Sends `query` (its ID is overwritten) and waits up to `timeout` for the answer whose
    /// ID and question match. The answer keeps the upstream's ID.
    pub async fn exchange(
        &self,
        query: &mut [u8],
        question_end: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, TcpError> {
        let len = u16::try_from(query.len()).map_err(|_| TcpError::TooLarge)?;
        let deadline = tokio::time::Instant::now() + timeout;
        // One retry on a fresh connection if the pooled one closed under us.
        for _ in 0..2 {
            let conn = tokio::time::timeout_at(deadline, self.connection())
                .await
                .map_err(|_| TcpError::ConnectTimeout)??;
            let (tx, rx) = oneshot::channel();
            let id = {
                let mut pending = conn.pending.lock().unwrap_or_else(|e| e.into_inner());
                if pending.len() >= MAX_OUTSTANDING {
                    return Err(TcpError::Busy);
                }
                let id = loop {
                    let id = rand::random::<u16>();
                    if !pending.contains_key(&id) {
                        break id;
                    }
                };
                pending.insert(id, tx);
                id
            };
            wire::set_id(query, id);
            let mut frame = Vec::with_capacity(query.len() + 2);
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(query);
            if conn.frames.send(frame).await.is_err() {
                conn.closed.store(true, Ordering::Relaxed);
                continue;
            }
            let answer = match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => return Err(TcpError::Closed),
                Err(_) => {
                    let mut pending = conn.pending.lock().unwrap_or_else(|e| e.into_inner());
                    pending.remove(&id);
                    return Err(TcpError::Timeout);
                }
            };
            return match wire::parse_response(&answer) {
                Ok(info)
                    if wire::same_question(query, question_end, &answer, info.question_end) =>
                {
                    Ok(answer)
                }
                _ => Err(TcpError::Mismatch),
            };
        }
        Err(TcpError::Closed)
    }

    async fn connection(&self) -> Result<Arc<Connection>, TcpError> {
        let mut current = self.current.lock().await;
        if let Some(conn) = current.as_ref() {
            if !conn.closed.load(Ordering::Relaxed) {
                return Ok(conn.clone());
            }
        }
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| TcpError::ConnectTimeout)?
            .map_err(TcpError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let (frames, frames_rx) = mpsc::channel(256);
        let conn = Arc::new(Connection {
            frames,
            pending: Arc::new(Mutex::new(HashMap::new())),
            closed: Arc::new(AtomicBool::new(false)),
        });
        tokio::spawn(write_frames(
            writer,
            frames_rx,
            conn.pending.clone(),
            conn.closed.clone(),
            self.idle_timeout,
        ));
        tokio::spawn(read_frames(
            reader,
            conn.pending.clone(),
            conn.closed.clone(),
        ));
        *current = Some(conn.clone());
        Ok(conn)
    }
}

async fn write_frames(
    mut writer: OwnedWriteHalf,
    mut frames: mpsc::Receiver<Vec<u8>>,
    pending: Arc<PendingMap>,
    closed: Arc<AtomicBool>,
    idle_timeout: Duration,
) {
    loop {
        match tokio::time::timeout(idle_timeout, frames.recv()).await {
            Ok(Some(frame)) => {
                if writer.write_all(&frame).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(_idle) => {
                if pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                    break;
                }
            }
        }
    }
    closed.store(true, Ordering::Relaxed);
    // Half-close: the upstream sees EOF, closes its side, and the reader ends.
    let _ = writer.shutdown().await;
}

async fn read_frames(mut reader: OwnedReadHalf, pending: Arc<PendingMap>, closed: Arc<AtomicBool>) {
    loop {
        let mut len = [0u8; 2];
        if reader.read_exact(&mut len).await.is_err() {
            break;
        }
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if reader.read_exact(&mut message).await.is_err() {
            break;
        }
        let Some(id) = wire::id(&message) else {
            continue;
        };
        let waiter = pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(message);
        }
    }
    closed.store(true, Ordering::Relaxed);
    // Dropping the senders wakes every waiter with `Closed`.
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
