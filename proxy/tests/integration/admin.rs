//! /metrics, /healthz, /readyz, and what they do with unexpected requests.

use hickory_proto::rr::RecordType;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_and_metrics_name_every_family() {
    let world = World::start().await;
    let admin = world.proxy.metrics_addr;
    ask_udp(world.dns(), "github.com.", RecordType::A, None).await;
    assert_eq!(http_get(admin, "/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for family in [
        "dnslens_requests_total",
        "dnslens_requests_dropped_total",
        "dnslens_upstream_requests_total",
        "dnslens_upstream_duration_seconds_bucket",
        "dnslens_responses_dropped_total",
        "dnslens_forward_failures_total",
        "dnslens_upstream_healthy",
        "dnslens_inflight_queries",
    ] {
        assert!(body.contains(family), "{family} missing from /metrics");
    }
    assert!(body.contains("# EOF"), "OpenMetrics text ends with # EOF");
    // The latency clients saw: one UDP miss, well under a second.
    let udp_miss = "{transport=\"udp\",cache=\"miss\"}";
    assert_eq!(
        series_value(
            &body,
            &format!("dnslens_request_duration_seconds_count{udp_miss}")
        ),
        1.0
    );
    assert_eq!(
        series_value(
            &body,
            "dnslens_request_duration_seconds_bucket{le=\"1.0\",transport=\"udp\",cache=\"miss\"}"
        ),
        1.0
    );
    assert_eq!(
        series_value(
            &body,
            &format!(
                "dnslens_build_info{{version=\"{}\",revision=\"{}\"}}",
                env!("CARGO_PKG_VERSION"),
                dnslens::build_info::REVISION
            )
        ),
        1.0
    );
    // The standard process metrics, unprefixed, as every exporter names them.
    let rss = series_value(&body, "process_resident_memory_bytes");
    assert!(rss > 1e6 && rss < 1e9, "{rss}");
    assert!(series_value(&body, "process_open_fds") >= 3.0);
    assert!(series_value(&body, "process_max_fds") >= series_value(&body, "process_open_fds"));
    assert!(series_value(&body, "process_threads") >= 1.0);
    assert!(series_value(&body, "process_cpu_seconds_total") >= 0.0);
    let started = series_value(&body, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now - started < 3600.0 && now >= started - 2.0,
        "{started} vs {now}"
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_requests_get_errors_and_the_server_keeps_serving() {
    let world = World::start().await;
    let admin = world.proxy.metrics_addr;
    assert_eq!(http_get(admin, "/nope").await.0, 404);
    assert_eq!(http_get(admin, "/metrics/../../etc/passwd").await.0, 404);
    let (status, _) = http_raw(
        admin,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(status, 405);
    let (status, _) = http_raw(admin, b"\x00\x01garbage\r\n\r\n").await;
    assert!(status == 400 || status == 0, "{status}");
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let (status, _) = http_raw(admin, huge.as_bytes()).await;
    assert_ne!(status, 200, "a 1 MiB header is refused");
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    world.stop().await;
}
