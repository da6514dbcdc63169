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

use std::io;
use std::net::SocketAddr;

use socket2::Socket;

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

    /// A datagram already queued in the kernel, or `WouldBlock`; asks the kernel, not
    /// tokio's cached readiness (used to drain the queue at stop).
    pub fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.sender.recv_from(buf)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.receiver.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Protocol, Type};

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
