//! A UDP socket that waits for datagrams through tokio and sends (and drains) with plain
//! non-blocking syscalls.
//!
//! Why not tokio's `try_send_to`: it consults tokio's cached readiness first, and a freshly
//! registered socket is not known to be writable until the reactor has turned once — a
//! query forwarded on a socket opened a moment ago (at start, after a reload, after a
//! socket rotation) failed with `WouldBlock` without any syscall, and so did every send
//! after one real `WouldBlock` until the reactor saw the socket writable again. A second
//! descriptor of the same socket (`dup`) sends straight to the kernel: `WouldBlock` then
//! means the kernel's send buffer is really full.
//!
//! Arrival times: a listener socket asks the kernel to stamp each datagram as it is queued
//! (`SO_TIMESTAMPNS`) and reads it with the stamp ([`DatagramSocket::recv_batch`]). A
//! query's time is then when it reached the host, not when a worker got to read it: an A
//! and an AAAA sent together stay together in the record although a starved or throttled
//! worker (a sidecar at its CPU limit) read the second one long after answering the first,
//! and a query's latency includes the time it waited in the socket's queue (the kernel
//! turns stamping on a moment after the first socket asks; until then, and should the wall
//! clock step, a datagram is timed when read, as before). Cost, from callgrind
//! (`loadtest/compare.py --profile`): ~360 user-space instructions per read, ~100 of them
//! the wall-clock read, against ~5,700 per cache-hit query. `nix` rather
//! than hand-written `recvmsg`: control messages need pointer arithmetic that nix wraps in
//! a safe API (the crate forbids `unsafe`).
//!
//! Batches ([`DatagramSocket::recv_batch`]): the receive loops read with `recvmmsg`, up to
//! [`BATCH`] datagrams a call. A batch that comes back short says the socket's queue is
//! empty, and tokio's readiness is cleared right there (`try_io` with `WouldBlock`): reading
//! one datagram at a time, every wake-up ended with a read that found nothing (EAGAIN) —
//! about one system call in four of a forwarded query (`loadtest/syscalls.sh`). Clearing
//! is safe: tokio clears only if no readiness event came in since the wait ended, and a
//! datagram queued after the read raises a new one. The `recvmmsg` headers live in a
//! thread-local (nix's `MultiHeaders` holds raw pointers, so it cannot live in a task that
//! moves between threads; it is only touched between two syscalls of one thread).

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::socket::{
    recvmmsg, recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, MultiHeaders, RecvMsg,
    SockaddrStorage,
};
use nix::sys::time::TimeSpec;
use socket2::Socket;
use tokio::io::Interest;

/// One UDP socket, two descriptors: tokio's for receiving, a plain one for sending.
pub struct DatagramSocket {
    receiver: tokio::net::UdpSocket,
    sender: std::net::UdpSocket,
}

impl DatagramSocket {
    /// Takes a bound socket; sets it non-blocking (shared by both descriptors).
    pub fn new(socket: Socket) -> io::Result<DatagramSocket> {
        socket.set_nonblocking(true)?;
        let sender: std::net::UdpSocket = socket.try_clone()?.into();
        let receiver = tokio::net::UdpSocket::from_std(socket.into())?;
        Ok(DatagramSocket { receiver, sender })
    }

    /// Sends now or fails: never waits, never consults cached readiness.
    pub fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.sender.send_to(datagram, to)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.receiver.local_addr()
    }

    /// Asks the kernel to stamp every datagram this socket receives with its arrival time.
    pub fn stamp_arrivals(&self) -> io::Result<()> {
        setsockopt(&self.sender, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
    }

    /// Waits for datagrams and reads up to [`BATCH`] of them in one call into `batch`
    /// (stamped with their arrival when `stamped`, see [`stamp_arrivals`](Self::stamp_arrivals));
    /// returns how many. Never ends a wake-up with a read that finds nothing: see the
    /// module doc.
    pub async fn recv_batch(&self, batch: &mut RecvBatch, stamped: bool) -> io::Result<usize> {
        let fd = self.receiver.as_raw_fd();
        loop {
            self.receiver.readable().await?;
            let RecvBatch { buffers, received } = batch;
            let read = self.receiver.try_io(Interest::READABLE, || {
                if recv_many(fd, buffers, received, stamped)? < BATCH {
                    // The queue is empty: tokio clears its readiness on `WouldBlock`.
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && received.is_empty() => {}
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => return Ok(received.len()),
            }
        }
    }

    /// One datagram already queued, its sender and when it arrived, or `WouldBlock`
    /// (asks the kernel, not tokio's cached readiness).
    pub fn try_recv_stamped(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Instant)> {
        recv_stamped(self.sender.as_raw_fd(), buf)
    }
}

/// Datagrams one `recvmmsg` reads at most. Small: each needs a buffer as large as a UDP
/// datagram can be, and the point is the read that finds nothing, not long batches (a busy
/// socket simply gets the next batch at once).
pub const BATCH: usize = 4;

/// One datagram of a batch: the buffer it is in, its length, its sender, when it arrived.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub slot: usize,
    pub len: usize,
    pub peer: SocketAddr,
    pub arrived: Instant,
}

/// A receive loop's buffers for [`DatagramSocket::recv_batch`].
pub struct RecvBatch {
    pub buffers: Box<[Vec<u8>; BATCH]>,
    /// What the last read put where.
    pub received: Vec<Received>,
}

impl RecvBatch {
    /// `buffer_len`: the largest datagram read whole (65,535 for any UDP datagram).
    pub fn new(buffer_len: usize) -> RecvBatch {
        RecvBatch {
            buffers: Box::new(std::array::from_fn(|_| vec![0u8; buffer_len])),
            received: Vec::with_capacity(BATCH),
        }
    }
}

thread_local! {
    /// `recvmmsg` headers of this thread: with room for an arrival stamp each, and without.
    static STAMPED_HEADERS: RefCell<Option<MultiHeaders<SockaddrStorage>>> = const { RefCell::new(None) };
    static PLAIN_HEADERS: RefCell<Option<MultiHeaders<SockaddrStorage>>> = const { RefCell::new(None) };
}

/// One `recvmmsg` into `buffers`; what came is listed in `received` (cleared first).
/// Returns how many datagrams were read (skipped ones included).
fn recv_many(
    fd: std::os::fd::RawFd,
    buffers: &mut [Vec<u8>; BATCH],
    received: &mut Vec<Received>,
    stamped: bool,
) -> io::Result<usize> {
    received.clear();
    let headers = if stamped {
        &STAMPED_HEADERS
    } else {
        &PLAIN_HEADERS
    };
    headers.with(|headers| {
        let mut headers = headers.borrow_mut();
        let headers = headers.get_or_insert_with(|| {
            MultiHeaders::preallocate(BATCH, stamped.then(|| nix::cmsg_space!(TimeSpec)))
        });
        let mut slices = buffers.each_mut().map(|b| [io::IoSliceMut::new(b)]);
        let messages = recvmmsg(fd, headers, slices.iter_mut(), MsgFlags::MSG_DONTWAIT, None)?;
        let read_at = Instant::now();
        let mut read = 0;
        for (slot, msg) in messages.enumerate() {
            read += 1;
            // A datagram without an IP sender cannot be answered: skipped.
            let Some(peer) = msg.address.as_ref().and_then(socket_addr) else {
                continue;
            };
            received.push(Received {
                slot,
                len: msg.bytes,
                peer,
                arrived: arrived(&msg, read_at),
            });
        }
        Ok(read)
    })
}

/// Room for one `SCM_TIMESTAMPNS` control message (CMSG_SPACE of a timespec is 32 bytes on
/// 64-bit Linux), aligned as a `cmsghdr` must be.
#[repr(C, align(8))]
struct ControlBuffer([u8; 64]);

/// A queued datagram stamped older than this is taken as a stepped wall clock, not a wait.
const MAX_QUEUED: Duration = Duration::from_secs(30);

fn recv_stamped(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Instant)> {
    let mut control = ControlBuffer([0; 64]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg =
        recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut control.0), MsgFlags::MSG_DONTWAIT)?;
    let read_at = Instant::now();
    let peer = msg.address.as_ref().and_then(socket_addr).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "datagram without an IP sender")
    })?;
    Ok((msg.bytes, peer, arrived(&msg, read_at)))
}

/// When `msg` reached the host: its kernel stamp (`SO_TIMESTAMPNS`) if it carries one (the
/// wall clock read only then), else `read_at`.
fn arrived<S>(msg: &RecvMsg<'_, '_, S>, read_at: Instant) -> Instant {
    let stamp = msg.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|c| match c {
            ControlMessageOwned::ScmTimestampns(at) => Some(at),
            _ => None,
        })
    });
    stamp.map_or(read_at, |at| arrival(at, read_at, SystemTime::now()))
}

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    addr.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

/// The kernel's wall-clock stamp as an `Instant`: `read_at` less the time it waited. A
/// stamp in the future or implausibly old (the wall clock stepped) gives `read_at`.
fn arrival(stamp: TimeSpec, read_at: Instant, wall_now: SystemTime) -> Instant {
    let (Ok(secs), Ok(nanos)) = (
        u64::try_from(stamp.tv_sec()),
        u32::try_from(stamp.tv_nsec()),
    ) else {
        return read_at;
    };
    let stamped = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
    match wall_now.duration_since(stamped) {
        Ok(waited) if waited <= MAX_QUEUED => read_at.checked_sub(waited).unwrap_or(read_at),
        _ => read_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Protocol, Type};

    /// A datagram read 50 ms after it arrived is stamped with its arrival, not its read.
    #[tokio::test]
    async fn a_stamped_datagram_keeps_its_arrival_time() {
        let (a, b) = (bound(), bound());
        b.stamp_arrivals().unwrap();
        let mut buf = [0u8; 16];
        // The kernel turns receive stamping on for the system a moment after the first
        // socket asks (deferred work); until then a datagram is stamped when it is read.
        let stamping = {
            let mut on = false;
            for _ in 0..100 {
                a.send_to(b"probe", b.local_addr().unwrap()).unwrap();
                std::thread::sleep(Duration::from_millis(20));
                let (_, _, arrived) = recv_one(&b).await;
                if arrived.elapsed() >= Duration::from_millis(15) {
                    on = true;
                    break;
                }
            }
            on
        };
        assert!(stamping, "the kernel never stamped a datagram on arrival");
        a.send_to(b"queued", b.local_addr().unwrap()).unwrap();
        let sent = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        let (datagram, from, arrived) = recv_one(&b).await;
        assert_eq!(
            (&datagram[..], from),
            (&b"queued"[..], a.local_addr().unwrap())
        );
        let read = Instant::now();
        assert!(
            arrived <= sent + Duration::from_millis(5),
            "{:?} after the send",
            arrived - sent
        );
        assert!(
            read - arrived >= Duration::from_millis(45),
            "waited {:?}",
            read - arrived
        );

        // Without stamps: the time it was read.
        a.send_to(b"plain", a.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let before = Instant::now();
        let (_, _, at) = a.try_recv_stamped(&mut buf).unwrap();
        assert!(at >= before);
        assert_eq!(
            a.try_recv_stamped(&mut buf).map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::WouldBlock)
        );
    }

    #[test]
    fn a_stepped_wall_clock_falls_back_to_the_read_time() {
        let read_at = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let stamp = |secs: i64, nanos: i64| TimeSpec::new(secs, nanos);
        let waited = arrival(stamp(1_800_000_000 - 1, 500_000_000), read_at, wall);
        assert_eq!(read_at - waited, Duration::from_millis(500));
        // In the future, an hour old, before the epoch: the read time.
        assert_eq!(arrival(stamp(1_800_000_001, 0), read_at, wall), read_at);
        assert_eq!(
            arrival(stamp(1_800_000_000 - 3600, 0), read_at, wall),
            read_at
        );
        assert_eq!(arrival(stamp(-5, 0), read_at, wall), read_at);
    }

    /// The first datagram of the next batch: its bytes, sender and arrival.
    async fn recv_one(socket: &DatagramSocket) -> (Vec<u8>, SocketAddr, Instant) {
        let mut batch = RecvBatch::new(64);
        while socket.recv_batch(&mut batch, true).await.unwrap() == 0 {}
        let r = batch.received[0];
        (batch.buffers[r.slot][..r.len].to_vec(), r.peer, r.arrived)
    }

    /// Six queued datagrams come as a full batch and a short one, in order; after the short
    /// one (readiness cleared without a read that found nothing) the next datagram still
    /// wakes the receiver.
    #[tokio::test]
    async fn a_short_batch_clears_readiness_and_the_next_datagram_still_wakes_it() {
        let (a, b) = (bound(), bound());
        let to = b.local_addr().unwrap();
        for i in 0..6u8 {
            a.send_to(&[i], to).unwrap();
        }
        let mut batch = RecvBatch::new(64);
        let mut seen = Vec::new();
        for expected in [BATCH, 6 - BATCH] {
            assert_eq!(b.recv_batch(&mut batch, false).await.unwrap(), expected);
            for r in &batch.received {
                assert_eq!((r.len, r.peer), (1, a.local_addr().unwrap()));
                seen.push(batch.buffers[r.slot][0]);
            }
        }
        assert_eq!(seen, [0, 1, 2, 3, 4, 5]);
        let idle =
            tokio::time::timeout(Duration::from_millis(100), b.recv_batch(&mut batch, false));
        assert!(idle.await.is_err(), "a batch out of an empty queue");
        a.send_to(b"later", to).unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(2), b.recv_batch(&mut batch, false));
        assert_eq!(woken.await.expect("not woken").unwrap(), 1);
        let r = batch.received[0];
        assert_eq!(&batch.buffers[r.slot][..r.len], b"later");
    }

    fn bound() -> DatagramSocket {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&addr.into()).unwrap();
        DatagramSocket::new(socket).unwrap()
    }

    /// The first send on a socket opened in the same task goes out: tokio's
    /// `try_send_to` returns `WouldBlock` here, before its reactor has seen the socket.
    #[tokio::test]
    async fn the_first_send_on_a_new_socket_goes_out() {
        let a = bound();
        let b = bound();
        a.send_to(b"first", b.local_addr().unwrap()).unwrap();
        let (datagram, from, _) = recv_one(&b).await;
        assert_eq!(&datagram[..], b"first");
        assert_eq!(from, a.local_addr().unwrap());

        let plain = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tokio_first = plain.try_send_to(b"x", b.local_addr().unwrap());
        assert_eq!(
            tokio_first.map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock),
            "tokio's try_send_to no longer needs a reactor turn; this type may be unnecessary"
        );
    }
}
