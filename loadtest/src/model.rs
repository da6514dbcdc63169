//! What each resolver sends for one lookup (`getaddrinfo` of a name), as measured against
//! the real ones (the suite's `load_models` test counts both at the same server):
//!
//! - `glibc`: the search walk (the name first when it has `ndots` dots or more, else the
//!   search domains first), a new socket per step, A and AAAA sent together on it; NXDOMAIN
//!   and NODATA go on to the next step; SERVFAIL too, remembered; the first step with an
//!   address ends the lookup. Unanswered queries are sent again after `timeout`, up to
//!   `attempts` times.
//! - `musl`: one socket for the whole lookup, A and AAAA together per step, re-sent every
//!   `timeout / attempts` while unanswered; the walk stops at the first NOERROR, empty or
//!   not — so an empty NOERROR for a search expansion fails the lookup (the trap).
//! - `go` (`PreferGo`): per step, A and AAAA at once from two sockets; NXDOMAIN and NODATA
//!   go on.
//! - `plain`: one A query for the name as given, as dnsperf does.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    Glibc,
    Musl,
    Go,
    Plain,
}

/// How a lookup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    /// No answer to some query within the resolver's timeout and attempts.
    Timeout,
    /// The walk ended without an address: the name does not exist.
    NxDomain,
    /// musl stopped at an empty NOERROR (the trap).
    EmptyNoerror,
    /// SERVFAIL and no address anywhere in the walk.
    ServFail,
}

impl Outcome {
    pub const FAILURES: [Outcome; 4] = [
        Outcome::Timeout,
        Outcome::NxDomain,
        Outcome::EmptyNoerror,
        Outcome::ServFail,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Timeout => "timeout",
            Outcome::NxDomain => "nxdomain",
            Outcome::EmptyNoerror => "empty_noerror",
            Outcome::ServFail => "servfail",
        }
    }
}

/// The resolver's settings (its resolv.conf).
#[derive(Debug, Clone)]
pub struct Resolver {
    pub model: Model,
    pub server: SocketAddr,
    pub search: Vec<String>,
    pub ndots: usize,
    pub timeout: Duration,
    pub attempts: u32,
}

/// One lookup's result: how it ended and each query's latency.
#[derive(Debug, Default)]
pub struct Lookup {
    pub outcome: Option<Outcome>,
    pub queries: u32,
    pub query_latencies: Vec<Duration>,
}

/// What one step (one name, A and AAAA) brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// An address for A or AAAA.
    Data,
    /// NOERROR with no address for both.
    NoData,
    NxDomain,
    ServFail,
    Timeout,
}

impl Resolver {
    /// The names the walk tries, in order (as glibc, musl and Go order them).
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if name.ends_with('.') || self.model == Model::Plain {
            return vec![name.trim_end_matches('.').to_string()];
        }
        let expansions = self.search.iter().map(|s| format!("{name}.{s}"));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_string())
                .chain(expansions)
                .collect()
        } else {
            expansions
                .chain(std::iter::once(name.to_string()))
                .collect()
        }
    }

    /// Resolves `name` as the model's resolver would.
    pub async fn lookup(&self, name: &str) -> std::io::Result<Lookup> {
        let mut lookup = Lookup::default();
        let candidates = self.candidates(name);
        if self.model == Model::Plain {
            let socket = bind(self.server).await?;
            let step = self
                .exchange(
                    &socket,
                    &socket,
                    &candidates[0],
                    &[RecordType::A],
                    &mut lookup,
                )
                .await?;
            lookup.outcome = Some(match step {
                Step::Data | Step::NoData => Outcome::Answered,
                Step::NxDomain => Outcome::NxDomain,
                Step::ServFail => Outcome::ServFail,
                Step::Timeout => Outcome::Timeout,
            });
            return Ok(lookup);
        }
        let both = [RecordType::A, RecordType::AAAA];
        let musl_socket = match self.model {
            Model::Musl => Some(bind(self.server).await?),
            _ => None,
        };
        let mut servfail = false;
        for (i, candidate) in candidates.iter().enumerate() {
            let step = match (self.model, &musl_socket) {
                (Model::Musl, Some(socket)) => {
                    self.exchange(socket, socket, candidate, &both, &mut lookup)
                        .await?
                }
                (Model::Go, _) => {
                    let (a, aaaa) = (bind(self.server).await?, bind(self.server).await?);
                    self.exchange(&a, &aaaa, candidate, &both, &mut lookup)
                        .await?
                }
                _ => {
                    let socket = bind(self.server).await?;
                    self.exchange(&socket, &socket, candidate, &both, &mut lookup)
                        .await?
                }
            };
            let expansion = i < candidates.len() && candidate != name;
            let end = match (self.model, step) {
                (_, Step::Data) => Some(Outcome::Answered),
                (_, Step::Timeout) => Some(Outcome::Timeout),
                (Model::Musl, Step::NoData) if expansion => Some(Outcome::EmptyNoerror),
                (Model::Musl, Step::NoData) => Some(Outcome::NxDomain),
                (_, Step::ServFail) => {
                    servfail = true;
                    None
                }
                _ => None,
            };
            if let Some(outcome) = end {
                lookup.outcome = Some(outcome);
                return Ok(lookup);
            }
        }
        lookup.outcome = Some(if servfail {
            Outcome::ServFail
        } else {
            Outcome::NxDomain
        });
        Ok(lookup)
    }

    /// Sends a query per type for `name` — the first type on `first`, the others on
    /// `second` — at once, re-sends what is unanswered, and sums up the answers.
    async fn exchange(
        &self,
        first: &UdpSocket,
        second: &UdpSocket,
        name: &str,
        types: &[RecordType],
        lookup: &mut Lookup,
    ) -> std::io::Result<Step> {
        let fqdn = Name::from_ascii(format!("{name}."))
            .map_err(|e| std::io::Error::other(format!("{name}: {e}")))?;
        let queries: Vec<(u16, Vec<u8>)> = types
            .iter()
            .map(|t| {
                let id = rand::random::<u16>();
                (id, query_bytes(&fqdn, *t, id))
            })
            .collect();
        let socket_of = |i: usize| if i == 0 { first } else { second };
        // musl re-sends every timeout/attempts within one overall timeout; glibc and Go
        // wait a whole timeout per attempt.
        let (resend_every, tries) = match self.model {
            Model::Musl => (self.timeout / self.attempts.max(1), self.attempts.max(1)),
            _ => (self.timeout, self.attempts.max(1)),
        };
        let mut answers: Vec<Option<(ResponseCode, usize)>> = vec![None; queries.len()];
        let started = Instant::now();
        for _ in 0..tries {
            for (i, (_, bytes)) in queries.iter().enumerate() {
                if answers[i].is_none() {
                    socket_of(i).send(bytes).await?;
                    lookup.queries += 1;
                }
            }
            let deadline = tokio::time::Instant::now() + resend_every;
            while answers.iter().any(Option::is_none) {
                let (mut one, mut two) = ([0u8; 4096], [0u8; 4096]);
                let received = tokio::time::timeout_at(deadline, async {
                    if std::ptr::eq(first, second) {
                        first.recv(&mut one).await.map(|n| &one[..n])
                    } else {
                        tokio::select! {
                            r = first.recv(&mut one) => r.map(|n| &one[..n]),
                            r = second.recv(&mut two) => r.map(|n| &two[..n]),
                        }
                    }
                })
                .await;
                let Ok(received) = received else { break };
                let Ok(message) = Message::from_vec(received?) else {
                    continue;
                };
                if let Some(i) = queries
                    .iter()
                    .position(|(id, _)| *id == message.metadata.id)
                {
                    if answers[i].is_none() {
                        let data = message
                            .answers
                            .iter()
                            .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
                            .count();
                        answers[i] = Some((message.metadata.response_code, data));
                        lookup.query_latencies.push(started.elapsed());
                    }
                }
            }
            if answers.iter().all(Option::is_some) {
                break;
            }
        }
        let got: Vec<(ResponseCode, usize)> = answers.iter().flatten().copied().collect();
        Ok(if got.iter().any(|(_, data)| *data > 0) {
            Step::Data
        } else if got.len() < queries.len() {
            Step::Timeout
        } else if got
            .iter()
            .all(|(rcode, _)| *rcode == ResponseCode::NXDomain)
        {
            Step::NxDomain
        } else if got
            .iter()
            .any(|(rcode, _)| *rcode == ResponseCode::ServFail)
        {
            Step::ServFail
        } else {
            Step::NoData
        })
    }
}

/// A connected UDP socket on a fresh random port, as a stub resolver opens one.
async fn bind(server: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse().map_err(std::io::Error::other)?
    } else {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    Ok(socket)
}

fn query_bytes(name: &Name, qtype: RecordType, id: u16) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name.clone(), qtype));
    message.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(model: Model) -> Resolver {
        Resolver {
            model,
            server: "127.0.0.1:53".parse().unwrap(),
            search: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            ndots: 5,
            timeout: Duration::from_secs(1),
            attempts: 2,
        }
    }

    #[test]
    fn the_walk_is_ordered_by_ndots_as_resolvers_order_it() {
        let r = resolver(Model::Glibc);
        assert_eq!(
            r.candidates("github.com"),
            [
                "github.com.default.svc.cluster.local",
                "github.com.svc.cluster.local",
                "github.com"
            ]
        );
        assert_eq!(r.candidates("github.com."), ["github.com"]);
        let few = Resolver { ndots: 1, ..r };
        assert_eq!(few.candidates("github.com")[0], "github.com");
        assert_eq!(resolver(Model::Plain).candidates("web"), ["web"]);
    }
}
