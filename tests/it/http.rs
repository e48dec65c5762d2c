//! The HTTP surface of a live worker, and the metrics text it exports.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_endpoints() {
    ensure_schema().await;
    let _servers = shared().await;
    let config = base_config("http");
    let worker = Worker::start(config).await;
    let addr = worker.addr;
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    let mut ready = (0, String::new());
    for _ in 0..100 {
        ready = http_get(addr, "/readyz").await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "score_worker_messages_received_total",
        "score_worker_processing_duration_seconds_bucket",
        "score_worker_scylla_query_duration_seconds_bucket",
        "score_worker_consumer_pending",
        "score_worker_nats_connected 1",
        "score_worker_build_info",
        "score_worker_events_clock_total{action=\"clamped\"} 0",
        "score_worker_jetstream_drift 0",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    // Kept for `scripts/check-metrics-contract.sh` (promtool lint and rule/dashboard names).
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".local/metrics-sample.txt");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, &text).unwrap();

    assert_eq!(http_get(addr, "/nope").await.0, 404);
    let (status, _) = http_request(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await;
    assert_eq!(status, 405, "nothing can be changed over HTTP");
    let (status, _) = http_request(addr, "GARBAGE\r\n\r\n").await;
    assert!(
        status == 400 || status == 0,
        "malformed request rejected, got {status}"
    );
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let (status, _) = http_request(addr, &huge).await;
    assert!(
        status == 431 || status == 400 || status == 0,
        "oversized request rejected, got {status}"
    );
    assert_eq!(
        http_get(addr, "/healthz").await.0,
        200,
        "still serving after hostile requests"
    );

    worker.stop().await;
}
