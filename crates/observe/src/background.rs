//! Background threads that share a core with the DNS workers: the lookup tracker
//! (`lookup`) and the trace exporter (`telemetry`).
//!
//! Two tools keep them from delaying answers:
//! - a scheduling policy ([`run_as_background_work`]: SCHED_BATCH; [`run_as_idle_work`]:
//!   SCHED_IDLE), which needs no privilege;
//! - a [`Pacer`], which bounds how long such a thread works before it steps aside.
//!
//! Why the policy alone is not enough (measured on Linux 6.18, EEVDF, one core for the
//! proxy): the scheduler does not rank a SCHED_IDLE thread strictly below normal ones; when
//! the tracker went to sleep it picked the exporter over a runnable DNS worker and let it
//! run 2.3 ms, and such stretches doubled the p99 at 20k QPS. A thread that sleeps is never
//! picked, so a paced thread costs a worker at most one budget of waiting.
//!
//! No config keys or metrics of its own: the budgets are constants of the threads' modules
//! (100 µs of work, 20 µs of sleep), and what falls behind shows as
//! `dnslens_lookup_records_dropped_total` and `dnslens_spans_dropped_total`.

use std::time::{Duration, Instant};

/// Puts the calling thread under SCHED_BATCH: the scheduler treats it as CPU-bound
/// background work, so when it wakes with a batch it does not preempt a DNS worker on the
/// same core, yet it keeps its fair share of CPU under saturation (unlike a raised nice
/// value, which starved the tracker: 39% of records dropped at 125k QPS on one core,
/// against ~1.5% with SCHED_BATCH). Where it fails the thread keeps the default policy.
pub(crate) fn run_as_background_work() {
    set_policy(thread_priority::NormalThreadSchedulePolicy::Batch);
}

/// Puts the calling thread under SCHED_IDLE: the smallest CPU share there is (the trace
/// exporter: traces are sampled, answers are not).
pub(crate) fn run_as_idle_work() {
    set_policy(thread_priority::NormalThreadSchedulePolicy::Idle);
}

fn set_policy(policy: thread_priority::NormalThreadSchedulePolicy) {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, ThreadPriority, ThreadSchedulePolicy,
    };
    let policy = ThreadSchedulePolicy::Normal(policy);
    let unchanged_nice = ThreadPriority::Os(Default::default());
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), unchanged_nice, policy) {
        tracing::debug!(error = ?e, ?policy, "thread keeps the default scheduling policy");
    }
}

/// Bounds the stretches of CPU a background thread takes: call [`Pacer::checkpoint`]
/// between small units of work; after `budget` of work since the last pause it sleeps
/// `pause`, long enough for a waiting worker to be picked.
///
/// Under saturation a worker always wants the core, and a thread that keeps stepping aside
/// falls behind: the tracker, paced throughout, dropped 56% of its records at 80k QPS on one
/// core. [`Pacer::until_behind`] stops the pauses once a batch has taken that long, so the
/// thread gets its fair share back when the load is such that latency is queueing anyway.
pub struct Pacer {
    budget: Duration,
    pause: Duration,
    since: Instant,
    batch_started: Instant,
    behind_after: Option<Duration>,
}

impl Pacer {
    pub fn new(budget: Duration, pause: Duration) -> Pacer {
        let now = Instant::now();
        Pacer {
            budget,
            pause,
            since: now,
            batch_started: now,
            behind_after: None,
        }
    }

    /// No more pauses in a batch that has taken `after` (see the type's doc).
    pub fn until_behind(mut self, after: Duration) -> Pacer {
        self.behind_after = Some(after);
        self
    }

    /// Starts a batch of work (after the thread woke up).
    pub fn start(&mut self) {
        let now = Instant::now();
        self.since = now;
        self.batch_started = now;
    }

    /// Steps aside if this stretch has used its budget. A sleep, not `sched_yield`: a
    /// yielding thread may be picked again at once, a sleeping one cannot (A/B at 20k QPS
    /// with tracing on: p99 ×1.40 of tracing off with yields, ×0.97 with sleeps).
    /// Returns whether it paused.
    pub fn checkpoint(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.since) < self.budget {
            return false;
        }
        if self
            .behind_after
            .is_some_and(|after| now.duration_since(self.batch_started) >= after)
        {
            return false;
        }
        std::thread::sleep(self.pause);
        self.since = Instant::now();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_pauses_only_once_its_budget_is_spent() {
        let mut pacer = Pacer::new(Duration::from_secs(60), Duration::from_millis(5));
        pacer.start();
        assert!(!pacer.checkpoint(), "well within budget: no pause");

        let mut pacer = Pacer::new(Duration::from_millis(50), Duration::from_millis(5));
        pacer.start();
        std::thread::sleep(Duration::from_millis(60));
        let before = Instant::now();
        assert!(pacer.checkpoint(), "budget spent: pauses");
        assert!(
            before.elapsed() >= Duration::from_millis(5),
            "for the pause"
        );
        assert!(!pacer.checkpoint(), "a new stretch starts after the pause");
    }

    #[test]
    fn a_pacer_stops_pausing_in_a_batch_that_fell_behind() {
        let mut pacer = Pacer::new(Duration::from_micros(1), Duration::from_millis(5))
            .until_behind(Duration::from_millis(50));
        pacer.start();
        std::thread::sleep(Duration::from_millis(60));
        assert!(!pacer.checkpoint(), "behind: keeps working");
        pacer.start();
        std::thread::sleep(Duration::from_millis(1));
        assert!(pacer.checkpoint(), "a new batch is paced again");
    }
}
