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
//! (`SO_TIMESTAMPNS`) and reads it with the stamp ([`DatagramSocket::recv_stamped`]). A
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

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
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

    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.receiver.recv_from(buf).await
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.receiver.local_addr()
    }

    /// Asks the kernel to stamp every datagram this socket receives with its arrival time.
    pub fn stamp_arrivals(&self) -> io::Result<()> {
        setsockopt(&self.sender, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
    }

    /// A datagram, its sender, and when it arrived: the kernel's stamp if
    /// [`stamp_arrivals`](Self::stamp_arrivals) is on, else the time it was read.
    pub async fn recv_stamped(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Instant)> {
        let fd = self.receiver.as_raw_fd();
        self.receiver
            .async_io(Interest::READABLE, || recv_stamped(fd, buf))
            .await
    }

    /// [`recv_stamped`](Self::recv_stamped) of a datagram already queued, or `WouldBlock`
    /// (asks the kernel, not tokio's cached readiness).
    pub fn try_recv_stamped(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Instant)> {
        recv_stamped(self.sender.as_raw_fd(), buf)
    }
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
    let stamp = msg.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|c| match c {
            ControlMessageOwned::ScmTimestampns(at) => Some(at),
            _ => None,
        })
    });
    let peer = msg.address.as_ref().and_then(socket_addr).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "datagram without an IP sender")
    })?;
    let arrived = stamp.map_or(read_at, |at| arrival(at, read_at, SystemTime::now()));
    Ok((msg.bytes, peer, arrived))
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
                let (_, _, arrived) = b.recv_stamped(&mut buf).await.unwrap();
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
        let (len, from, arrived) = b.recv_stamped(&mut buf).await.unwrap();
        assert_eq!(
            (&buf[..len], from),
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
        let mut buf = [0u8; 16];
        let (len, from) = b.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"first");
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
