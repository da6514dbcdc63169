//! Binding the listening sockets: SO_REUSEPORT on every one (the handover), the IPv6
//! wildcard dual-stack (IPv4's on a kernel without IPv6), port 0 as a port free for both
//! UDP and TCP.

use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// A port free for both UDP and TCP on `ip`, found with sockets that do not share
/// (no SO_REUSEPORT), so no other listener holds it; they are closed before the shared
/// sockets bind it.
pub fn exclusive_port(ip: IpAddr) -> std::io::Result<u16> {
    let mut last_error = None;
    for _ in 0..16 {
        let udp = std::net::UdpSocket::bind((ip, 0))?;
        let port = udp.local_addr()?.port();
        match std::net::TcpListener::bind((ip, port)) {
            Ok(_) => return Ok(port),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no port free for UDP and TCP")))
}

/// Linux's EAFNOSUPPORT: the kernel has no such address family (booted without IPv6).
const NO_ADDRESS_FAMILY: i32 = 97;

/// `addr`, or IPv4's wildcard on the same port when `addr` is IPv6's wildcard and the
/// kernel has no IPv6 at all.
pub(super) fn family_available(addr: SocketAddr) -> SocketAddr {
    if addr.ip() != IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
        return addr;
    }
    match Socket::new(Domain::IPV6, Type::DGRAM, None) {
        Err(e) if e.raw_os_error() == Some(NO_ADDRESS_FAMILY) => {
            let v4 = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), addr.port());
            tracing::warn!(requested = %addr, bound = %v4, "no IPv6 in this kernel: IPv4 only");
            v4
        }
        _ => addr,
    }
}

/// A socket for `addr`: the IPv6 wildcard dual-stack (see the module doc).
fn socket_for(addr: SocketAddr, kind: Type, protocol: Protocol) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    if addr.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
        socket.set_only_v6(false)?;
    }
    Ok(socket)
}

pub(super) fn reuseport_udp(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = socket_for(addr, Type::DGRAM, Protocol::UDP)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Room for bursts while a worker is busy; the kernel caps it at rmem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A TCP listener that another dnslens may share (SO_REUSEPORT: the new pod of a rolling
/// update binds beside the old one).
pub fn tcp_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let addr = family_available(addr);
    let addr = if addr.port() == 0 {
        SocketAddr::new(addr.ip(), exclusive_port(addr.ip())?)
    } else {
        addr
    };
    let socket = socket_for(addr, Type::STREAM, Protocol::TCP)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}
