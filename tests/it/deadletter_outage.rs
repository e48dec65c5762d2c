//! Dead letters off the pull loop (issue 17, item 4): a dead-letter stream that is slow or gone never
//! holds up good messages, and an outage of it loses nothing and strands nothing. The rejected
//! messages are held (kept alive by `+WPI`, never redelivered) while the dead-letter queue has room,
//! given back when it has none, caught by the max-deliveries advisory when the server gives up on them,
//! and all dead-lettered — each with its own reason — once the stream is back; none stays in the
//! score stream.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use score_worker::config::Config;
use score_worker::deadletter;
use uuid::Uuid;

use crate::support::*;

fn good_events(tag: &str, n: usize) -> Vec<Event> {
    let ten_s_ago = Timing::Ascending {
        ago_micros: 10_000_000,
    };
    events_on(&new_board(tag), tag, n, Profiles::Each, ten_s_ago)
}

/// The `i`-th bad payload and the reason it must be dead-lettered with.
fn bad_payload(i: usize) -> (&'static str, Vec<u8>) {
    match i % 3 {
        0 => ("malformed_json", format!("{{not json {i}").into_bytes()),
        1 => (
            "missing_field",
            format!("{{\"event_id\":\"bad-{i}\"}}").into_bytes(),
        ),
        _ => (
            "too_large",
            format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000)).into_bytes(),
        ),
    }
}

/// Publishes `goods` with `bad` bad payloads spread among them, then waits (at most 60 s) until
/// `worker` has written every good one `while_` the dead letters are stuck; returns the bad reasons.
async fn publish_mixed_and_write_goods(
    (js, config): (&async_nats::jetstream::Context, &Config),
    worker: &Worker,
    goods: &[Event],
    bad: usize,
    while_: &str,
) -> HashMap<String, usize> {
    let every = goods.len() / bad;
    let mut reasons = HashMap::new();
    for (i, chunk) in goods.chunks(every).enumerate() {
        for e in chunk {
            publish(js, config, e, &e.event_id).await;
        }
        if i < bad {
            let (reason, payload) = bad_payload(i);
            *reasons.entry(reason.to_string()).or_default() += 1;
            publish_raw(
                js,
                config,
                "bad",
                payload,
                &format!("bad-{i}-{}", Uuid::new_v4()),
            )
            .await;
        }
    }
    let written = format!("every good event written {while_}");
    wait_processed_or_report(
        worker,
        goods.len() as u64,
        Duration::from_secs(60),
        &written,
    )
    .await;
    reasons
}

async fn readyz(worker: &Worker) -> (u16, String) {
    http_get(worker.addr, "/readyz").await
}

/// Every letter of the dead-letter stream, counted by reason; each names its original.
async fn letters_by_reason(
    js: &async_nats::jetstream::Context,
    config: &Config,
    expect: usize,
) -> HashMap<String, usize> {
    let letters = read_stream(js, &config.nats.deadletter_stream, expect).await;
    let mut by_reason = HashMap::new();
    for letter in &letters {
        let headers = letter.headers.as_ref().unwrap();
        assert!(headers
            .get(deadletter::ORIGINAL_SUBJECT)
            .unwrap()
            .as_str()
            .ends_with(".bad"));
        *by_reason
            .entry(
                headers
                    .get(deadletter::REASON)
                    .unwrap()
                    .as_str()
                    .to_string(),
            )
            .or_default() += 1;
    }
    by_reason
}

async fn stream_messages(js: &async_nats::jetstream::Context, name: &str) -> u64 {
    js.get_stream(name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_deadletter_stream_does_not_hold_up_good_messages() {
    let (_servers, config) = sharing("dlq_slow").await;
    let (client, js, session) = nats_and_db(&config).await;
    let worker = Worker::start(config.clone()).await;
    // Slow: the dead-letter stream is gone and something takes its subjects without answering, so
    // every publish waits for its ack until nats.request_timeout (10 s).
    js.delete_stream(&config.nats.deadletter_stream)
        .await
        .unwrap();
    let mut silent = client
        .subscribe(format!("{}.>", config.nats.deadletter_prefix))
        .await
        .unwrap();
    let swallowed = tokio::spawn(async move {
        let mut n = 0usize;
        while silent.next().await.is_some() {
            n += 1;
        }
        n
    });
    let goods = good_events("dlq_slow", 500);
    let waiting = "while dead letters wait";
    let reasons = publish_mixed_and_write_goods((&js, &config), &worker, &goods, 30, waiting).await;
    let m = &worker.metrics;
    let held = m.deadletters_pending.get();
    eprintln!(
        "slow dead-letter stream: {} good written, {} dead-lettered, {held} letters waiting, received {}",
        worker.processed(),
        dead_lettered(m),
        m.messages_received.get()
    );
    assert_eq!(dead_lettered(m), 0, "nothing can be stored yet");
    assert_eq!(held, 30, "every letter waits, none given up");
    let addr = worker.addr;
    wait_until("readiness names the cause", Duration::from_secs(30), || {
        m.deadletter_failures.get() > 0
    })
    .await;
    let (status, body) = readyz(&worker).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("dead-letter stream unavailable"), "{body}");

    // Back: the stream exists again and nothing else takes its subjects.
    swallowed.abort();
    nats_topology(&js, &config).await;
    wait_until("every letter stored", Duration::from_secs(60), || {
        dead_lettered(m) >= 30
    })
    .await;
    wait_drained(&js, &config, Duration::from_secs(30)).await;
    assert_eq!(
        m.messages_received.get(),
        (goods.len() + 30) as u64,
        "held, not redelivered: no delivery burnt while the letters waited"
    );
    assert_eq!(letters_by_reason(&js, &config, 30).await, reasons);
    assert_eq!(stream_messages(&js, &config.nats.stream).await, 0);
    assert_eq!(m.deadletters_pending.get(), 0);
    let ready = wait_ready(addr).await;
    eprintln!(
        "slow dead-letter stream back: {} letters stored; {ready}",
        dead_lettered(m)
    );
    worker.stop().await;
    assert_final_state(&session, &goods, config.scylla.leaderboard_buckets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadletter_stream_outage_loses_nothing_and_strands_nothing() {
    let (_servers, mut config) = sharing("dlq_down").await;
    // A small queue (pull_batch letters), so most bad messages find it full and are given back, and a
    // small max_deliver, so the server gives up on them during the outage.
    config.nats.pull_batch = 10;
    config.nats.max_deliver = 3;
    let (_client, js, session) = nats_and_db(&config).await;
    let worker = Worker::start(config.clone()).await;
    js.delete_stream(&config.nats.deadletter_stream)
        .await
        .unwrap();
    let goods = good_events("dlq_down", 400);
    let bad = 60;
    let outage = "during the outage";
    let reasons = publish_mixed_and_write_goods((&js, &config), &worker, &goods, bad, outage).await;
    let m = &worker.metrics;
    // Held in the queue, or advised by the server once it gave up on them: all accounted for.
    wait_until(
        "every bad message waiting for the stream",
        Duration::from_secs(60),
        || m.deadletters_pending.get() == bad as i64,
    )
    .await;
    let (status, body) = readyz(&worker).await;
    eprintln!(
        "dead-letter stream gone: {} good written; {} letters waiting; {} given back (queue full); \
         {} failed attempts; /readyz {status} {body}",
        worker.processed(),
        m.deadletters_pending.get(),
        m.deadletters_deferred.get(),
        m.deadletter_failures.get(),
    );
    assert_eq!(dead_lettered(m), 0);
    assert!(
        m.deadletters_deferred.get() > 0,
        "some found the queue full"
    );
    assert_eq!(status, 503);
    assert!(body.contains("dead-letter stream unavailable"), "{body}");

    nats_topology(&js, &config).await;
    wait_until("every letter stored", Duration::from_secs(90), || {
        dead_lettered(m) >= bad as u64
    })
    .await;
    wait_drained(&js, &config, Duration::from_secs(30)).await;
    // Each letter once, with the reason of its payload, whichever path stored it.
    assert_eq!(letters_by_reason(&js, &config, bad).await, reasons);
    let left = stream_messages(&js, &config.nats.stream).await;
    assert_eq!(left, 0, "nothing stranded in the score stream");
    let ready = wait_ready(worker.addr).await;
    eprintln!(
        "dead-letter stream back: {} letters stored ({reasons:?}), {left} left in the score stream; {ready}",
        dead_lettered(m)
    );
    worker.stop().await;
    assert_final_state(&session, &goods, config.scylla.leaderboard_buckets).await;
}

/// The operator restores the streams (as `score-worker` does at start-up).
async fn nats_topology(js: &async_nats::jetstream::Context, config: &Config) {
    score_worker::nats::ensure_topology(js, &config.nats)
        .await
        .expect("topology");
}

/// Waits for `/readyz` 200; its body.
async fn wait_ready(addr: std::net::SocketAddr) -> String {
    readyz_until(addr, 200, "").await.trim().to_string()
}
