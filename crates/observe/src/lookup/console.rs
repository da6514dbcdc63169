//! A lookup observer that prints each finished lookup as a small tree: the root, every query
//! in arrival order with its search suffix and answer, and every upstream try. The demo uses
//! it so a newcomer sees a trace without a collector.

use std::io::Write;
use std::time::{Duration, Instant};

use super::LookupObserver;
use dnslens_datapath::metrics::{QtypeLabel, RcodeLabel};
use dnslens_datapath::record::LookupRecord;

/// Writes lookup trees to `out` (stdout in the demo).
pub struct ConsoleTree<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> ConsoleTree<W> {
    pub fn new(out: W) -> Self {
        ConsoleTree { out }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn since(start: Instant, t: Instant) -> String {
    format!("+{}", ms(t.saturating_duration_since(start)))
}

/// The tree of one lookup, as text.
pub fn render(lookup: &LookupRecord) -> String {
    let mut s = String::new();
    let answered = match lookup.answered_by() {
        Some(a) => match &a.suffix {
            Some((i, suffix)) => format!(" by suffix {i} ({suffix})"),
            None => " by the absolute name".to_string(),
        },
        None => String::new(),
    };
    s.push_str(&format!(
        "lookup {} from {}: {}{} after {} queries in {}\n",
        lookup.base,
        lookup.client,
        lookup.outcome.as_str(),
        answered,
        lookup.attempts.len(),
        ms(lookup.end.saturating_duration_since(lookup.start)),
    ));
    let n = lookup.attempts.len();
    for (i, a) in lookup.attempts.iter().enumerate() {
        let last = i + 1 == n;
        let q = &a.query;
        let reading = match &a.suffix {
            Some((index, _)) => format!("suffix {index}"),
            None => "absolute".to_string(),
        };
        let mut marks = String::new();
        match q.cache {
            dnslens_datapath::record::CacheUse::Hit => marks.push_str("  (cache hit)"),
            dnslens_datapath::record::CacheUse::Stale => marks.push_str("  (served stale)"),
            dnslens_datapath::record::CacheUse::Miss => {}
        }
        if q.rewritten {
            marks.push_str("  -> sent as NXDOMAIN (musl shield)");
        }
        if let Some(name) = &q.autopath {
            marks.push_str(&format!("  -> CNAME to {name} (autopath)"));
        }
        s.push_str(&format!(
            "{} {:<5} {}  [{}]  {} {} answer{}  {} {}{}\n",
            if last { "└─" } else { "├─" },
            QtypeLabel::from_qtype(q.qtype).as_str(),
            a.qname,
            reading,
            RcodeLabel::from_rcode(q.rcode).as_str(),
            q.answers,
            if q.answers == 1 { "" } else { "s" },
            since(lookup.start, q.received),
            ms(q.answered.saturating_duration_since(q.received)),
            marks,
        ));
        for (k, t) in q.tries.iter().enumerate() {
            s.push_str(&format!(
                "{}  {} upstream {} {} try {}: {} {}\n",
                if last { "  " } else { "│ " },
                if k + 1 == q.tries.len() {
                    "└─"
                } else {
                    "├─"
                },
                t.upstream,
                t.transport.as_str(),
                k + 1,
                t.outcome.as_str(),
                ms(t.end.saturating_duration_since(t.start)),
            ));
        }
    }
    s
}

impl<W: Write + Send> LookupObserver for ConsoleTree<W> {
    fn observe(&mut self, lookup: &LookupRecord) {
        let _ = writeln!(self.out, "{}", render(lookup));
        let _ = self.out.flush();
    }
}
