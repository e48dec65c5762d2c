//! The HTTP surface of a live worker, and the metrics text it exports.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_endpoints() {
    let (_servers, config) = sharing("http").await;
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
    let out = xtask::environments::root().join(".local/metrics-sample.txt");
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

/// The value of the sample `name` (with its labels as exported) in a `/metrics` text; 0 when absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The latency histograms are not only declared but fed: each acked message adds one observation
/// to `processing_duration`, and each flush one per request it sent to `scylla_query_duration`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_histograms_record_every_acked_message_and_every_request() {
    let (_servers, config) = sharing("histograms").await;
    let (_client, js) = jetstream(&config).await;
    let worker = Worker::start(config.clone()).await;
    let (_, before) = http_get(worker.addr, "/metrics").await;
    let processing = "score_worker_processing_duration_seconds";
    let query = |statement: &str, part: &str| {
        format!("score_worker_scylla_query_duration_seconds_{part}{{statement=\"{statement}\"}}")
    };
    let board = new_board("histograms");
    let events = events_on(&board, "hist", 25, Profiles::Each, Timing::IndexedRecent);
    publish_all(&js, &config, &events).await;
    let acked = events.len() as u64;
    wait_until("all messages acked", Duration::from_secs(60), || {
        worker.processed() >= acked
    })
    .await;
    let (_, after) = http_get(worker.addr, "/metrics").await;
    worker.stop().await;

    // Observed at every settlement, by outcome: each ack is one `outcome="ack"` observation.
    let acks = |part: &str| format!("{processing}_{part}{{outcome=\"ack\"}}");
    let count = |text: &str| sample(text, &acks("count"));
    println!(
        "processing_duration{{outcome=ack}}: count {} -> {}, sum {}",
        count(&before),
        count(&after),
        sample(&after, &acks("sum"))
    );
    assert_eq!(count(&after) - count(&before), acked as f64, "one per ack");
    assert!(sample(&after, &acks("sum")) > 0.0);
    for statement in ["write_profiles", "write_rows", "read_back"] {
        let grew = sample(&after, &query(statement, "count"))
            - sample(&before, &query(statement, "count"));
        let sum = sample(&after, &query(statement, "sum"));
        println!("scylla_query_duration{{statement={statement}}}: count +{grew}, sum {sum}");
        assert!(grew >= 1.0, "{statement}: no request timed");
        assert!(sum > 0.0, "{statement}: no time recorded");
    }
}
