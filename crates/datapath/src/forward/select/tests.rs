use std::time::{Duration, Instant};

use super::*;

fn states(available: &[bool], back_in_ms: &[u64]) -> impl Fn(usize) -> UpstreamState {
    let now = Instant::now();
    let available = available.to_vec();
    let back: Vec<Option<Instant>> = back_in_ms
        .iter()
        .zip(&available)
        .map(|(ms, up)| (!up).then(|| now + Duration::from_millis(*ms)))
        .collect();
    move |i| UpstreamState {
        available: available[i],
        back_at: back[i],
    }
}

#[test]
fn rotation_starts_where_it_is_told_and_skips_what_was_tried() {
    let members = [0, 1, 2];
    let all_up = states(&[true, true, true], &[0, 0, 0]);
    assert_eq!(pick(&members, 0, Tried::default(), &all_up), Some(0));
    assert_eq!(pick(&members, 1, Tried::default(), &all_up), Some(1));
    assert_eq!(
        pick(&members, 4, Tried::default(), &all_up),
        Some(1),
        "start wraps"
    );
    let tried = Tried::default().with(1);
    assert_eq!(
        pick(&members, 1, tried, &all_up),
        Some(2),
        "the next untried"
    );
    let tried = tried.with(2).with(0);
    assert_eq!(
        pick(&members, 1, tried, &all_up),
        Some(1),
        "all tried: the first available"
    );
}

#[test]
fn put_aside_upstreams_are_skipped_while_another_is_available() {
    let members = [0, 1, 2];
    let one_down = states(&[true, false, true], &[0, 500, 0]);
    assert_eq!(pick(&members, 1, Tried::default(), &one_down), Some(2));
    // The only available one was tried: tried again rather than one put aside.
    let only_zero = states(&[true, false, false], &[0, 500, 100]);
    assert_eq!(
        pick(&members, 1, Tried::default().with(0), &only_zero),
        Some(0)
    );
}

#[test]
fn with_every_upstream_put_aside_one_is_still_asked_untried_first_then_due_back_first() {
    let members = [0, 1, 2];
    let all_down = states(&[false, false, false], &[900, 300, 600]);
    assert_eq!(
        pick(&members, 0, Tried::default(), &all_down),
        Some(1),
        "due back first"
    );
    assert_eq!(
        pick(&members, 0, Tried::default().with(1), &all_down),
        Some(2),
        "an untried one before the tried one due back sooner"
    );
    let all_tried = Tried::default().with(0).with(1).with(2);
    assert_eq!(pick(&members, 2, all_tried, &all_down), Some(1));
}

#[test]
fn a_pool_is_a_subset_of_the_upstreams_and_an_empty_one_has_no_pick() {
    // A forward zone's pool: upstreams 3 and 5 of the forwarder.
    let up = |_| UpstreamState {
        available: true,
        back_at: None,
    };
    assert_eq!(pick(&[3, 5], 0, Tried::default().with(3), up), Some(5));
    assert_eq!(pick(&[], 0, Tried::default(), up), None);
}

#[test]
fn tried_holds_every_index_below_the_limit_and_ignores_beyond() {
    let mut tried = Tried::default();
    for i in 0..MAX_UPSTREAMS {
        assert!(!tried.contains(i));
        tried = tried.with(i);
        assert!(tried.contains(i));
    }
    assert_eq!(tried, Tried(u64::MAX));
    assert!(!Tried::default().with(MAX_UPSTREAMS).contains(MAX_UPSTREAMS));
}

#[test]
fn retries_until_attempts_are_used_up() {
    assert_eq!(after_failure(1, 2), AfterFailure::Retry);
    assert_eq!(after_failure(2, 2), AfterFailure::Exhausted);
    assert_eq!(after_failure(1, 1), AfterFailure::Exhausted);
}

#[test]
fn a_late_answer_is_one_from_the_upstream_its_timed_out_try_went_to() {
    let upstream = "10.0.0.1:53".parse().unwrap();
    let other = "10.0.0.2:53".parse().unwrap();
    assert_eq!(unmatched_reason(Some(upstream), upstream), "late");
    assert_eq!(
        unmatched_reason(Some(upstream), other),
        "unknown_id",
        "spoofed"
    );
    assert_eq!(unmatched_reason(None, upstream), "unknown_id");
}
