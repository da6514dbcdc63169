//! Forwarding-loop detection, as CoreDNS's `loop` plugin does it: when it starts (and after
//! each reload) dnslens asks its upstreams a question only it knows —
//! `<16 random hex digits>.loop-probe.dnslens.invalid. HINFO`. If that question ever reaches
//! dnslens's own listeners, its upstreams lead back to it (a node's resolv.conf naming the
//! node-local address, two forwarders pointing at each other): an error is logged, counted
//! (`dnslens_forwarding_loop_detected_total`) and shown by `/readyz?verbose`, and the
//! looping question is answered SERVFAIL at once instead of circling until it times out.
//! Every query is checked by its question's length first, so the check costs nothing on the
//! hot path.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use dnslens_wire as wire;

pub struct LoopGuard {
    /// The probe's question section (name, type, class), lower case.
    question: Vec<u8>,
    name: String,
    /// A probe went out (loop checking is on).
    probed: AtomicBool,
    detected: AtomicBool,
    count: Counter,
}

impl LoopGuard {
    /// A guard with a fresh random probe name; registers its counter.
    pub fn register(registry: &mut Registry) -> LoopGuard {
        let count = Counter::default();
        registry.register(
            "forwarding_loop_detected",
            "Times dnslens's own loop probe came back to it through its upstreams",
            count.clone(),
        );
        let name = format!("{:016x}.loop-probe.dnslens.invalid", rand::random::<u64>());
        let mut question = Vec::new();
        for label in name.split('.') {
            question.push(label.len() as u8);
            question.extend_from_slice(label.as_bytes());
        }
        question.push(0);
        question.extend_from_slice(&13u16.to_be_bytes()); // HINFO
        question.extend_from_slice(&1u16.to_be_bytes()); // IN
        LoopGuard {
            question,
            name,
            probed: AtomicBool::new(false),
            detected: AtomicBool::new(false),
            count,
        }
    }

    /// The probe, as a query message (RD set).
    pub fn probe_query(&self) -> Vec<u8> {
        self.probed.store(true, Ordering::Relaxed);
        let mut query = vec![0u8; wire::HEADER_LEN];
        query[..2].copy_from_slice(&rand::random::<u16>().to_be_bytes());
        query[2] = 0x01; // RD
        query[5] = 1; // QDCOUNT
        query.extend_from_slice(&self.question);
        query
    }

    /// Whether `question` (a query's question section) is the probe — in any letter case,
    /// as a resolver on the way may have changed it.
    pub fn is_probe(&self, question: &[u8]) -> bool {
        question.len() == self.question.len() && question.eq_ignore_ascii_case(&self.question)
    }

    /// The probe came back.
    pub fn caught(&self) {
        self.count.inc();
        if !self.detected.swap(true, Ordering::Relaxed) {
            tracing::error!(probe = %self.name,
                "forwarding loop: dnslens's probe came back to it through its upstreams; \
                 fix the upstreams (a resolv.conf naming dnslens itself?) — looping queries get SERVFAIL");
        }
    }

    pub fn detected(&self) -> bool {
        self.detected.load(Ordering::Relaxed)
    }

    /// Whether a probe was sent (loop checking is on).
    pub fn probed(&self) -> bool {
        self.probed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_is_recognised_in_any_case_and_nothing_else_is() {
        let guard = LoopGuard::register(&mut Registry::default());
        let query = guard.probe_query();
        let info = wire::parse_query(&query).unwrap();
        let question = &query[wire::HEADER_LEN..info.question_end];
        assert!(guard.is_probe(question));
        assert!(guard.is_probe(&question.to_ascii_uppercase()));
        let mut other = question.to_vec();
        other[1] = if other[1] == b'a' { b'b' } else { b'a' };
        assert!(!guard.is_probe(&other));
        assert!(!guard.detected());
        guard.caught();
        guard.caught();
        assert!(guard.detected());
        assert_eq!(guard.count.get(), 2);
    }
}
