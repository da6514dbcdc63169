//! The demo's simulated clients: stub resolvers that walk a search list the way glibc and
//! musl do (docs/observability.md, "What dnslens reports, per resolver"), so the demo shows
//! real lookup shapes.
//!
//! - glibc: continues to the next name on NXDOMAIN *and* on NOERROR with no address.
//! - musl: continues only on NXDOMAIN; NOERROR with no address ends the lookup
//!   ("Name does not resolve"); SERVFAIL ends it too.
//!
//! Both send A and AAAA back to back from one socket per name, and try the absolute name
//! first when the name has at least `ndots` dots, last otherwise.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Libc {
    Glibc,
    Musl,
}

/// The names a resolver tries for `name`, in order.
pub fn search_order(name: &str, search: &[&str], ndots: usize) -> Vec<String> {
    let expanded = search.iter().map(|s| format!("{name}.{s}"));
    if name.matches('.').count() >= ndots {
        std::iter::once(name.to_string()).chain(expanded).collect()
    } else {
        expanded.chain(std::iter::once(name.to_string())).collect()
    }
}

/// Resolves `name` like `getaddrinfo` in the given libc: the addresses, or the error text
/// the real one reports.
pub async fn getaddrinfo(
    server: SocketAddr,
    name: &str,
    search: &[&str],
    ndots: usize,
    libc: Libc,
) -> Result<Vec<IpAddr>, &'static str> {
    for candidate in search_order(name, search, ndots) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.map_err(|_| "socket")?;
        let fqdn = Name::from_ascii(format!("{candidate}.")).map_err(|_| "bad name")?;
        // A fresh random ID per query, as real resolvers do (a repeated ID is a retry).
        let id: u16 = rand::random();
        for (id, qtype) in [(id, RecordType::A), (id ^ 1, RecordType::AAAA)] {
            let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
            msg.metadata.recursion_desired = true;
            msg.add_query(Query::query(fqdn.clone(), qtype));
            let bytes = msg.to_vec().map_err(|_| "encode")?;
            socket.send_to(&bytes, server).await.map_err(|_| "send")?;
        }
        let mut rcodes = Vec::new();
        let mut addresses = Vec::new();
        let mut buf = vec![0u8; 4096];
        while rcodes.len() < 2 {
            let Ok(Ok(len)) =
                tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await
            else {
                return Err("Temporary failure in name resolution");
            };
            let Ok(answer) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            rcodes.push(answer.metadata.response_code.low());
            addresses.extend(answer.answers.iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            }));
        }
        if !addresses.is_empty() {
            return Ok(addresses);
        }
        match (libc, rcodes.iter().all(|r| *r == 3), rcodes.contains(&2)) {
            (_, true, _) => continue,
            (Libc::Glibc, _, _) => continue,
            (Libc::Musl, _, true) => return Err("Try again"),
            (Libc::Musl, _, false) => return Err("Name does not resolve"),
        }
    }
    Err("Name or service not known")
}

/// Sends one query from `socket` and waits for its answer.
async fn ask(
    socket: &UdpSocket,
    server: SocketAddr,
    id: u16,
    name: &str,
    qtype: RecordType,
) -> Result<(), &'static str> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(
        Name::from_ascii(name).map_err(|_| "bad name")?,
        qtype,
    ));
    let bytes = msg.to_vec().map_err(|_| "encode")?;
    socket.send_to(&bytes, server).await.map_err(|_| "send")?;
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
        .await
        .map_err(|_| "timeout")?
        .map_err(|_| "receive")?;
    Ok(())
}

/// What an old-kernel node does to a resolver that sends A and AAAA together: the AAAA is
/// lost in conntrack, so only the A reaches the proxy; after its timeout (`wait`; 5 s in
/// real life) the resolver sends the AAAA again, alone, from the same socket.
pub async fn lost_twin(server: SocketAddr, name: &str, wait: Duration) -> Result<(), &'static str> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.map_err(|_| "socket")?;
    ask(&socket, server, 0x2000, name, RecordType::A).await?;
    tokio::time::sleep(wait).await;
    ask(&socket, server, 0x2001, name, RecordType::AAAA).await
}

/// A client whose answer was lost on the way back: it asks the same question again from
/// the same socket after `wait`.
pub async fn repeated_question(
    server: SocketAddr,
    name: &str,
    wait: Duration,
) -> Result<(), &'static str> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.map_err(|_| "socket")?;
    ask(&socket, server, 0x3000, name, RecordType::A).await?;
    tokio::time::sleep(wait).await;
    ask(&socket, server, 0x3000, name, RecordType::A).await
}
