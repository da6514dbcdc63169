//! What happens to a query around the forwarder: the cache, in-flight coalescing and the
//! mitigations, for UDP and TCP clients alike and for dnslens's own queries (prefetch,
//! autopath, the shield's twin check). The listeners hand every query to
//! [`Pipeline::handle`]; UDP and TCP differ only in their [`ReplyTo`].
//!
//! ```text
//! listen ─▶ handle ─▶ [autopath walk] ─▶ cache hit ───────────────────────────────▶ finish ─▶ ReplyTo::send
//!                                           │ miss: coalesce (lead / wait)             ▲
//!                                           ▼                                          │
//!                              forward (UDP pool; TCP for TCP clients and force_tcp)   │
//!                                           ▼                                          │
//!                             Request::respond ─▶ complete (serve-stale on SERVFAIL,   │
//!                                                 store, answer the waiters) ──────────┘
//! ```
//!
//! `finish` records the answer on the query's trace as the upstream gave it, then applies
//! the musl shield (a rare path: it spawns a task for the twin check) and sends. A query
//! dnslens asks itself ([`Pipeline::resolve`]) travels the same path with a oneshot channel
//! in place of a client, so it shares the cache and coalescing. Every task spawned here is
//! tracked, so shutdown waits for it.
//!
//! Config keys: `cache:` (see [`crate::cache`]), `mitigations:` (see [`crate::mitigate`]).
//! Metrics are registered by those modules.

mod loop_guard;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::CacheConfig;
use crate::cache::{Cache, CacheKey, CacheLookup, CacheMetrics, Coalescer, Join, KeyBuf};
use crate::forward::Forwarder;
use crate::mitigate::MitigationsConfig;
use crate::mitigate::{self, AutopathResult, MitigationMetrics};
use crate::record::{CacheUse, QueryTrace, TraceSink};
use crate::request::{Arrival, Complete, Request};
use crate::search::SearchModel;
use dnslens_k8s::identity::Identities;
use dnslens_wire::{self as wire, QueryInfo, Rcode, HEADER_LEN};
pub use loop_guard::LoopGuard;

/// The pause after each loop probe that got no answer; five probes in all, the last one
/// 15 s after the first.
const LOOP_PROBE_PAUSES: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::ZERO,
];

pub struct Pipeline {
    forwarder: Arc<Forwarder>,
    cache: Option<Arc<Cache>>,
    coalescer: Coalescer<Request>,
    search: SearchModel,
    musl_shield: bool,
    minimal_any: bool,
    autopath: bool,
    identities: Option<Identities>,
    metrics: MitigationMetrics,
    trace_sink: Option<TraceSink>,
    tasks: TaskTracker,
    loop_guard: Arc<LoopGuard>,
}

/// What the pipeline is built from: its own config sections and the pieces below it.
pub struct PipelineParts {
    pub forwarder: Arc<Forwarder>,
    pub search: SearchModel,
    pub trace_sink: Option<TraceSink>,
    /// Tasks the pipeline spawns (autopath, the shield's twin check), awaited at shutdown.
    pub tasks: TaskTracker,
    /// A cache to keep (a reload with the same `cache:` section); else one is made when
    /// `cache.enabled`.
    pub cache: Option<Arc<Cache>>,
    /// Recognises dnslens's own loop probe coming back.
    pub loop_guard: Arc<LoopGuard>,
    /// Node-local pod identity: autopath for clients whose pod it verified.
    pub identities: Option<Identities>,
}

/// The series of the cache and the mitigations, registered once for every pipeline.
#[derive(Clone)]
pub struct PipelineMetrics {
    pub cache: CacheMetrics,
    pub mitigations: MitigationMetrics,
}

impl PipelineMetrics {
    pub fn register(registry: &mut Registry) -> PipelineMetrics {
        PipelineMetrics {
            cache: CacheMetrics::register(registry),
            mitigations: MitigationMetrics::register(registry),
        }
    }
}

impl Pipeline {
    /// Builds the cache and the mitigations around the forwarder.
    pub fn build(
        cache: &CacheConfig,
        mitigations: &MitigationsConfig,
        parts: PipelineParts,
        metrics: &PipelineMetrics,
    ) -> Arc<Pipeline> {
        let cache = match parts.cache {
            Some(kept) if cache.enabled => Some(kept),
            _ => cache
                .enabled
                .then(|| Arc::new(Cache::new(cache, &metrics.cache))),
        };
        Arc::new(Pipeline {
            forwarder: parts.forwarder,
            cache,
            coalescer: Coalescer::default(),
            search: parts.search,
            musl_shield: mitigations.musl_shield,
            minimal_any: mitigations.minimal_any,
            autopath: mitigations.autopath,
            identities: parts.identities,
            metrics: metrics.mitigations.clone(),
            trace_sink: parts.trace_sink,
            tasks: parts.tasks,
            loop_guard: parts.loop_guard,
        })
    }

    /// Sends the loop probe to the upstreams (see [`LoopGuard`]) until it is caught or an
    /// upstream answers it: a probe lost on the way (an upstream still starting, a dropped
    /// datagram) is sent again after 1, 2, 4 and 8 s. Ends early when `stop` is cancelled.
    pub fn probe_for_loops(self: &Arc<Self>, stop: CancellationToken) {
        let pipeline = self.clone();
        self.tasks.spawn(async move {
            for pause in LOOP_PROBE_PAUSES {
                let answer = tokio::select! {
                    answer = pipeline.resolve(pipeline.loop_guard.probe_query()) => answer,
                    _ = stop.cancelled() => return,
                };
                if pipeline.loop_guard.detected() || wire::rcode(&answer) != Rcode::SERVFAIL {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.cancelled() => return,
                }
            }
        });
    }

    /// The cache, for the next pipeline to keep.
    pub fn cache(&self) -> Option<Arc<Cache>> {
        self.cache.clone()
    }

    /// A client query (past the access list) as it came off the socket or connection. A
    /// cache hit is answered from here without copying the query; everything else becomes
    /// a [`Request`].
    pub fn handle(self: &Arc<Self>, packet: &[u8], info: QueryInfo, arrival: Arrival) {
        let question = packet.get(HEADER_LEN..info.question_end).unwrap_or(&[]);
        if self.loop_guard.is_probe(question) {
            self.loop_guard.caught();
            self.request(packet.to_vec(), info, arrival, None)
                .respond_error(Rcode::SERVFAIL);
            return;
        }
        let trace = QueryTrace::start(
            self.trace_sink.as_ref(),
            arrival.peer,
            arrival.reply.transport(),
            packet,
            &info,
            arrival.received,
        );
        if self.minimal_any && info.qtype == wire::QTYPE_ANY {
            self.metrics.answered_any_minimally();
            let mut answer = wire::minimal_any_answer(packet, info.question_end);
            self.request(packet.to_vec(), info, arrival, trace)
                .respond(&mut answer);
            return;
        }
        if self.autopath {
            let walk = packet
                .get(HEADER_LEN..info.question_end)
                .and_then(wire::question_name)
                .and_then(|name| self.autopath_walk(arrival.peer.ip(), &name));
            if let Some(walk) = walk {
                let request = self.request(packet.to_vec(), info, arrival, trace);
                self.tasks.spawn(self.clone().autopath(request, walk));
                return;
            }
        }
        let Some(cache) = &self.cache else {
            self.forward(self.request(packet.to_vec(), info, arrival, trace));
            return;
        };
        let Some(key) = KeyBuf::of(packet, &info) else {
            self.forward(self.request(packet.to_vec(), info, arrival, trace));
            return;
        };
        match cache.get(&key, arrival.received) {
            CacheLookup::Hit {
                mut answer,
                prefetch,
            } => {
                if prefetch {
                    self.prefetch(key.to_key(), packet, info);
                }
                let mut trace = trace;
                if let Some(trace) = &mut trace {
                    trace.cache = CacheUse::Hit;
                }
                if self.shield_applies(packet, &info, &answer) {
                    let request = self.request(packet.to_vec(), info, arrival, trace);
                    self.finish(request, &mut answer);
                } else {
                    if let Some(trace) = &mut trace {
                        trace.record_answer(&answer);
                    }
                    arrival
                        .reply
                        .send(arrival.peer, &info, packet, &mut answer, trace);
                }
            }
            CacheLookup::Miss => {
                let request = self.request(packet.to_vec(), info, arrival, trace);
                self.coalesce_and_forward(request, key.to_key());
            }
        }
    }

    fn request(
        self: &Arc<Self>,
        query: Vec<u8>,
        info: QueryInfo,
        arrival: Arrival,
        trace: Option<Box<QueryTrace>>,
    ) -> Request {
        Request::new(query, info, arrival, trace, self.clone())
    }

    /// Cache, then coalescing, then the forwarder: dnslens's own queries.
    fn dispatch(self: &Arc<Self>, mut request: Request) {
        let Some(cache) = &self.cache else {
            self.forward(request);
            return;
        };
        let Some(key) = KeyBuf::of(&request.query, &request.info) else {
            self.forward(request);
            return;
        };
        match cache.get(&key, Instant::now()) {
            CacheLookup::Hit {
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
            CacheLookup::Miss => self.coalesce_and_forward(request, key.to_key()),
        }
    }

    /// A cache miss: waits for an identical question already asked, or asks it.
    fn coalesce_and_forward(self: &Arc<Self>, request: Request, key: CacheKey) {
        match self.coalescer.join(&key, request) {
            Join::Waiting => {
                if let Some(cache) = &self.cache {
                    cache.count_coalesced();
                }
            }
            Join::Lead(mut leader) => {
                leader.lead = Some(key);
                self.forward(leader);
            }
            Join::Alone(alone) => self.forward(alone),
        }
    }

    /// To the forwarder, which picks UDP or TCP (see [`Forwarder::submit`]).
    fn forward(&self, request: Request) {
        self.forwarder.submit(request);
    }

    /// Refreshes a popular entry in the background, unless it is being asked already.
    fn prefetch(self: &Arc<Self>, key: CacheKey, query: &[u8], info: QueryInfo) {
        let (reply, _ignored) = oneshot::channel();
        let request = self.request(query.to_vec(), info, Arrival::internal(reply), None);
        if let Join::Lead(mut leader) = self.coalescer.join(&key, request) {
            leader.lead = Some(key);
            self.forward(leader);
        }
    }

    /// The end of a forwarded query (called through [`Request::respond`]): serve-stale
    /// when the answer is SERVFAIL, store the answer, answer everyone who waited for it.
    fn complete_request(self: &Arc<Self>, mut request: Request, answer: &mut [u8]) {
        let leader_key = request.lead.take();
        let Some(cache) = &self.cache else {
            self.finish(request, answer);
            return;
        };
        let now = Instant::now();
        let mut stale = None;
        if wire::rcode(answer) == Rcode::SERVFAIL {
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
    fn finish(self: &Arc<Self>, mut request: Request, answer: &mut [u8]) {
        if let Some(trace) = &mut request.trace {
            trace.record_answer(answer);
        }
        if self.shield_applies(&request.query, &request.info, answer) && request.is_client() {
            let this = self.clone();
            let mut answer = answer.to_vec();
            self.tasks.spawn(async move {
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
        let Some(twin) = wire::address_twin(info.qtype) else {
            return false;
        };
        let twin_answer = self
            .resolve(wire::with_qtype(query, info.question_end, twin))
            .await;
        let no_address = mitigate::is_empty_noerror(&twin_answer)
            || wire::rcode(&twin_answer) == Rcode::NXDOMAIN;
        if no_address {
            wire::set_rcode(answer, Rcode::NXDOMAIN);
            self.metrics.rewrote_empty_noerror();
        }
        no_address
    }

    /// Asks a question on dnslens's own behalf, through the cache and coalescing. Always
    /// returns an answer (SERVFAIL when every try failed).
    pub async fn resolve(self: &Arc<Self>, query: Vec<u8>) -> Vec<u8> {
        let servfail = |query: &[u8]| wire::error_answer(query, None, Rcode::SERVFAIL);
        let Ok(mut info) = wire::parse_query(&query) else {
            return servfail(&query);
        };
        info.udp_payload = wire::MAX_UDP_PAYLOAD;
        let (reply, answer) = oneshot::channel();
        self.dispatch(self.request(query.clone(), info, Arrival::internal(reply), None));
        answer.await.unwrap_or_else(|_| servfail(&query))
    }

    /// Server-side search for a first search expansion (see [`crate::mitigate`]).
    /// The names autopath walks for `client`'s question `name`: the pod's own list (a
    /// sidecar); in node-local mode only for a client pod identity verified — a known
    /// address of a pod on this node, not stale — whose namespace gives its list (CoreDNS's
    /// `pods verified`); never for anyone else, whose list is unknown.
    fn autopath_walk(&self, client: std::net::IpAddr, name: &str) -> Option<Vec<String>> {
        match (&self.search, &self.identities) {
            (SearchModel::Fixed { .. }, _) => mitigate::autopath_walk(&self.search, name),
            (SearchModel::Kubernetes { .. }, Some(identities)) => {
                let pod = identities.namespace_of(client, std::time::Instant::now())?;
                mitigate::autopath_walk_in(&self.search, &pod.namespace, name)
            }
            (SearchModel::Kubernetes { .. }, None) => None,
        }
    }

    async fn autopath(self: Arc<Self>, mut request: Request, walk: Vec<String>) {
        let first = self.resolve(request.query.clone()).await;
        let (result, mut answer, found) = if wire::rcode(&first) != Rcode::NXDOMAIN {
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
                Rcode::NXDOMAIN => continue,
                Rcode::NOERROR => {
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
}

impl Complete for Pipeline {
    fn complete(self: Arc<Self>, request: Request, answer: &mut [u8]) {
        self.complete_request(request, answer);
    }
}

/// An answer another client may receive: EDNS options (the leader's cookie) removed.
fn shareable(answer: &[u8]) -> Vec<u8> {
    match wire::sections(answer) {
        Ok(sections) => wire::without_edns_options(answer, &sections),
        Err(_) => answer.to_vec(),
    }
}
