//! What happens to a query around the forwarder: the cache, in-flight coalescing and the
//! mitigations, for UDP and TCP clients and for dnslens's own queries (prefetch, autopath,
//! the shield's twin check).
//!
//! ```text
//! UDP: listen ─▶ handle_udp ─▶ [autopath walk] ─▶ dispatch ─▶ cache hit ──────────────▶ finish ─▶ send
//!                                                     │ miss: coalesce (lead / wait)        ▲
//!                                                     ▼                                     │
//!                                              forward (UDP pool, or TCP with force_tcp)    │
//!                                                     ▼                                     │
//!                                   UdpRequest::respond ─▶ complete (serve-stale on SERVFAIL,
//!                                                          store, answer the waiters) ──────┘
//! ```
//!
//! `finish` records the answer on the query's trace as the upstream gave it, then applies
//! the musl shield (a rare path: it spawns a task for the twin check) and sends. A query
//! dnslens asks itself ([`Pipeline::resolve`]) travels the same path with a oneshot channel
//! in place of a client socket, so it shares the cache and coalescing.
//!
//! Config keys: `cache:` (see [`crate::cache`]), `mitigations:` (see [`crate::mitigate`]),
//! `forward.force_tcp`. Metrics are registered by those modules.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

use crate::cache::{Cache, CacheKey, Coalescer, Join, KeyBuf, Lookup};
use crate::config::Config;
use crate::forward::Forwarder;
use crate::listen::{ListenMetrics, UdpEndpoint, UdpRequest};
use crate::metrics::Transport;
use crate::mitigate::{self, AutopathResult, MitigationMetrics};
use crate::record::{CacheUse, QueryTrace, TraceSink};
use crate::search::SearchModel;
use crate::wire::{self, QueryInfo, Rcode, HEADER_LEN};

const RCODE_SERVFAIL: u8 = Rcode::ServFail as u8;
const RCODE_NXDOMAIN: u8 = Rcode::NxDomain as u8;

pub struct Pipeline {
    forwarder: Arc<Forwarder>,
    cache: Option<Cache>,
    coalescer: Coalescer<UdpRequest>,
    search: SearchModel,
    musl_shield: bool,
    autopath: bool,
    force_tcp: bool,
    metrics: MitigationMetrics,
    listen_metrics: Arc<ListenMetrics>,
    trace_sink: Option<TraceSink>,
}

impl Pipeline {
    /// Builds the cache and the mitigations around `forwarder` and registers their metrics.
    pub fn build(
        config: &Config,
        registry: &mut Registry,
        forwarder: Arc<Forwarder>,
        search: SearchModel,
        listen_metrics: Arc<ListenMetrics>,
        trace_sink: Option<TraceSink>,
    ) -> Arc<Pipeline> {
        Arc::new(Pipeline {
            forwarder,
            cache: config
                .cache
                .enabled
                .then(|| Cache::build(&config.cache, registry)),
            coalescer: Coalescer::default(),
            search,
            musl_shield: config.mitigations.musl_shield,
            autopath: config.mitigations.autopath,
            force_tcp: config.forward.force_tcp,
            metrics: MitigationMetrics::register(registry),
            listen_metrics,
            trace_sink,
        })
    }

    pub fn listen_metrics(&self) -> &ListenMetrics {
        &self.listen_metrics
    }

    /// A UDP client query (past the access list) as it came off the socket. A cache hit is
    /// answered from here without copying the query; everything else becomes a
    /// [`UdpRequest`].
    pub fn handle_udp_packet(
        self: &Arc<Self>,
        endpoint: &Arc<UdpEndpoint>,
        packet: &[u8],
        peer: SocketAddr,
        info: QueryInfo,
        received: Instant,
    ) {
        let from_cache = match (&self.cache, self.autopath) {
            (Some(cache), false) => KeyBuf::of(packet, &info).map(|key| {
                let lookup = cache.get(&key, received);
                (key, lookup)
            }),
            _ => None,
        };
        let Some((key, lookup)) = from_cache else {
            let request = UdpRequest::from_client(endpoint, self, packet, peer, info, received);
            self.handle_udp(request);
            return;
        };
        match lookup {
            Lookup::Hit {
                mut answer,
                prefetch,
            } => {
                if prefetch {
                    self.prefetch(key.to_key(), packet, info);
                }
                let mut trace = endpoint.trace(packet, peer, &info, received);
                if let Some(trace) = &mut trace {
                    trace.cache = CacheUse::Hit;
                }
                if self.shield_applies(packet, &info, &answer) {
                    let mut request =
                        UdpRequest::from_client(endpoint, self, packet, peer, info, received);
                    request.trace = trace;
                    self.finish(request, &mut answer);
                } else {
                    if let Some(trace) = &mut trace {
                        trace.record_answer(&answer);
                    }
                    endpoint.send_answer(peer, &info, &mut answer, trace);
                }
            }
            Lookup::Miss => {
                let request = UdpRequest::from_client(endpoint, self, packet, peer, info, received);
                self.coalesce_and_forward(request, key.to_key());
            }
        }
    }

    /// A UDP query that has not been looked up in the cache yet.
    pub fn handle_udp(self: &Arc<Self>, request: UdpRequest) {
        if self.autopath {
            let walk = request
                .query
                .get(HEADER_LEN..request.info.question_end)
                .and_then(wire::question_name)
                .and_then(|name| mitigate::autopath_walk(&self.search, &name));
            if let Some(walk) = walk {
                tokio::spawn(self.clone().autopath(request, walk));
                return;
            }
        }
        self.dispatch(request);
    }

    /// Cache, then coalescing, then the forwarder.
    fn dispatch(self: &Arc<Self>, mut request: UdpRequest) {
        let Some(cache) = &self.cache else {
            self.forward(request);
            return;
        };
        let Some(key) = KeyBuf::of(&request.query, &request.info) else {
            self.forward(request);
            return;
        };
        match cache.get(&key, Instant::now()) {
            Lookup::Hit {
                mut answer,
                prefetch,
            } => {
                if prefetch {
                    self.prefetch(key.to_key(), &request.query, request.info);
                }
                if let Some(trace) = &mut request.trace {
                    trace.cache = CacheUse::Hit;
                }
                self.finish(request, &mut answer);
            }
            Lookup::Miss => self.coalesce_and_forward(request, key.to_key()),
        }
    }

    /// A cache miss: waits for an identical question already asked, or asks it.
    fn coalesce_and_forward(self: &Arc<Self>, request: UdpRequest, key: CacheKey) {
        match self.coalescer.join(&key, request) {
            Join::Waiting => {
                if let Some(cache) = &self.cache {
                    cache.count_coalesced();
                }
            }
            Join::Lead(mut leader) => {
                leader.cache_key = Some(key);
                self.forward(leader);
            }
            Join::Alone(alone) => self.forward(alone),
        }
    }

    fn forward(&self, request: UdpRequest) {
        if self.force_tcp {
            self.forwarder.submit_over_tcp(request);
        } else {
            self.forwarder.submit_udp(request);
        }
    }

    /// Refreshes a popular entry in the background, unless it is being asked already.
    fn prefetch(self: &Arc<Self>, key: CacheKey, query: &[u8], info: QueryInfo) {
        let (reply, _ignored) = oneshot::channel();
        let request = UdpRequest::internal(self.clone(), query.to_vec(), info, reply);
        if let Join::Lead(mut leader) = self.coalescer.join(&key, request) {
            leader.cache_key = Some(key);
            self.forward(leader);
        }
    }

    /// The end of a forwarded query (called by [`UdpRequest::respond`]): serve-stale when
    /// the answer is SERVFAIL, store the answer, answer everyone who waited for it.
    pub fn complete(self: &Arc<Self>, mut request: UdpRequest, answer: &mut [u8]) {
        let leader_key = request.cache_key.take();
        let Some(cache) = &self.cache else {
            self.finish(request, answer);
            return;
        };
        let now = Instant::now();
        let mut stale = None;
        if wire::rcode(answer) == RCODE_SERVFAIL {
            let key = leader_key
                .clone()
                .or_else(|| CacheKey::of(&request.query, &request.info));
            stale = key.and_then(|k| cache.stale(&k, now));
            if let (Some(trace), true) = (&mut request.trace, stale.is_some()) {
                trace.cache = CacheUse::Stale;
            }
        }
        let fresh = stale.is_none();
        let answer: &mut [u8] = match &mut stale {
            Some(stale) => stale,
            None => answer,
        };
        if let Some(key) = leader_key {
            if fresh {
                cache.store(&key, answer, now);
            }
            let waiters = self.coalescer.release(&key);
            if !waiters.is_empty() {
                let shared = shareable(answer);
                for waiter in waiters {
                    self.finish(waiter, &mut shared.clone());
                }
            }
        }
        self.finish(request, answer);
    }

    /// Records the answer on the trace as the upstream gave it, applies the musl shield,
    /// sends.
    fn finish(self: &Arc<Self>, mut request: UdpRequest, answer: &mut [u8]) {
        if let Some(trace) = &mut request.trace {
            trace.record_answer(answer);
        }
        if self.shield_applies(&request.query, &request.info, answer) && request.is_client() {
            let this = self.clone();
            let mut answer = answer.to_vec();
            tokio::spawn(async move {
                let rewritten = this
                    .shield(&request.query, &request.info, &mut answer)
                    .await;
                if let (Some(trace), true) = (&mut request.trace, rewritten) {
                    trace.rewritten = true;
                }
                request.send(&mut answer);
            });
            return;
        }
        request.send(answer);
    }

    fn shield_applies(&self, query: &[u8], info: &QueryInfo, answer: &[u8]) -> bool {
        self.musl_shield
            && query
                .get(HEADER_LEN..info.question_end)
                .is_some_and(|q| mitigate::shield_candidate(&self.search, q, info.qtype, answer))
    }

    /// The twin check of the musl shield: NXDOMAIN in place of the empty NOERROR when the
    /// other address type has no records either. Returns whether it rewrote.
    async fn shield(self: &Arc<Self>, query: &[u8], info: &QueryInfo, answer: &mut [u8]) -> bool {
        let Some(twin) = mitigate::twin_qtype(info.qtype) else {
            return false;
        };
        let twin_answer = self
            .resolve(wire::with_qtype(query, info.question_end, twin))
            .await;
        let no_address =
            mitigate::is_empty_noerror(&twin_answer) || wire::rcode(&twin_answer) == RCODE_NXDOMAIN;
        if no_address {
            wire::set_rcode(answer, Rcode::NxDomain);
            self.metrics.rewrote_empty_noerror();
        }
        no_address
    }

    /// Asks a question on dnslens's own behalf, through the cache and coalescing. Always
    /// returns an answer (SERVFAIL when every try failed).
    pub async fn resolve(self: &Arc<Self>, query: Vec<u8>) -> Vec<u8> {
        let servfail = |query: &[u8]| wire::error_answer(query, None, Rcode::ServFail);
        let Ok(mut info) = wire::parse_query(&query) else {
            return servfail(&query);
        };
        info.udp_payload = wire::MAX_UDP_PAYLOAD;
        let (reply, answer) = oneshot::channel();
        self.dispatch(UdpRequest::internal(
            self.clone(),
            query.clone(),
            info,
            reply,
        ));
        answer.await.unwrap_or_else(|_| servfail(&query))
    }

    /// Server-side search for a first search expansion (see [`crate::mitigate`]).
    async fn autopath(self: Arc<Self>, mut request: UdpRequest, walk: Vec<String>) {
        let first = self.resolve(request.query.clone()).await;
        let (result, mut answer, found) = if wire::rcode(&first) != RCODE_NXDOMAIN {
            (AutopathResult::First, first, None)
        } else {
            self.walk(&request.query, request.info.question_end, walk, first)
                .await
        };
        self.metrics.autopath(result);
        if let Some(trace) = &mut request.trace {
            trace.autopath = found;
        }
        self.finish(request, &mut answer);
    }

    /// Tries each name of `walk` until one is not NXDOMAIN; returns the result, the answer
    /// for the client and the name that resolved.
    async fn walk(
        self: &Arc<Self>,
        query: &[u8],
        question_end: usize,
        walk: Vec<String>,
        first: Vec<u8>,
    ) -> (AutopathResult, Vec<u8>, Option<String>) {
        for name in walk {
            let Some(candidate) = wire::with_qname(query, question_end, &name) else {
                continue;
            };
            let answer = self.resolve(candidate).await;
            match wire::rcode(&answer) {
                RCODE_NXDOMAIN => continue,
                0 => {
                    return match mitigate::cname_answer(query, &name, &answer) {
                        Some(cname) => (AutopathResult::Answered, cname, Some(name)),
                        None => (AutopathResult::Failed, first, None),
                    }
                }
                _ => return (AutopathResult::Failed, first, None),
            }
        }
        (AutopathResult::NotFound, first, None)
    }

    /// Answers a query that arrived over TCP (length prefix already stripped). `None` means
    /// the message deserves no answer (a stray response, a runt).
    pub async fn answer_tcp(
        self: &Arc<Self>,
        mut message: Vec<u8>,
        peer: SocketAddr,
        received: Instant,
    ) -> Option<Vec<u8>> {
        let info = match wire::parse_query(&message) {
            Ok(info) => info,
            Err(e) => {
                self.listen_metrics.dropped(e.reason());
                let rcode = e.answer_rcode()?;
                self.listen_metrics.answered(Transport::Tcp, 0, rcode as u8);
                return Some(wire::error_answer(&message, None, rcode));
            }
        };
        let mut trace = QueryTrace::start(
            self.trace_sink.as_ref(),
            peer,
            Transport::Tcp,
            &message,
            &info,
            received,
        );
        let key = self
            .cache
            .as_ref()
            .and_then(|_| CacheKey::of(&message, &info));
        let mut answer = self
            .answer_tcp_from(&mut message, &info, key, &mut trace)
            .await;
        if let Some(trace) = &mut trace {
            trace.record_answer(&answer);
        }
        if self.shield_applies(&message, &info, &answer)
            && self.shield(&message, &info, &mut answer).await
        {
            if let Some(trace) = &mut trace {
                trace.rewritten = true;
            }
        }
        wire::set_id(&mut answer, info.id);
        self.listen_metrics
            .answered(Transport::Tcp, info.qtype, wire::rcode(&answer));
        if let (Some(mut trace), Some(sink)) = (trace, &self.trace_sink) {
            trace.answered = Instant::now();
            sink.send(*trace);
        }
        Some(answer)
    }

    /// The cache, else the upstreams over TCP (stored when cacheable; serve-stale on failure).
    async fn answer_tcp_from(
        &self,
        message: &mut [u8],
        info: &QueryInfo,
        key: Option<CacheKey>,
        trace: &mut Option<Box<QueryTrace>>,
    ) -> Vec<u8> {
        let (Some(cache), Some(key)) = (&self.cache, key) else {
            return self.forwarder.forward_tcp(message, info, trace).await;
        };
        let now = Instant::now();
        if let Lookup::Hit { answer, .. } = cache.get(&key, now) {
            if let Some(trace) = trace {
                trace.cache = CacheUse::Hit;
            }
            return answer;
        }
        let answer = self.forwarder.forward_tcp(message, info, trace).await;
        if wire::rcode(&answer) == RCODE_SERVFAIL {
            if let Some(stale) = cache.stale(&key, Instant::now()) {
                if let Some(trace) = trace {
                    trace.cache = CacheUse::Stale;
                }
                return stale;
            }
        }
        cache.store(&key, &answer, Instant::now());
        answer
    }
}

/// An answer another client may receive: EDNS options (the leader's cookie) removed.
fn shareable(answer: &[u8]) -> Vec<u8> {
    match wire::sections(answer) {
        Ok(sections) => wire::without_edns_options(answer, &sections),
        Err(_) => answer.to_vec(),
    }
}
