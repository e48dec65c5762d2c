//! The JetStream topology against the configuration (issue 9, items 1, 5 and 7): what the score
//! stream keeps, what happens at its byte limit, streams and consumers that drifted from the
//! configuration, and a consumer that disappears under a running worker.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use score_worker::config::Retention;
use score_worker::nats::{self, NatsError};
use uuid::Uuid;

use crate::support::*;

fn events(tag: &str, n: usize) -> Vec<Event> {
    let board = format!("{tag}-{}", Uuid::new_v4().simple());
    let now = chrono::Utc::now().timestamp_micros();
    (0..n)
        .map(|i| {
            let profile = Uuid::new_v4();
            Event {
                event_id: format!("{tag}-{i}-{}", Uuid::new_v4().simple()),
                profile,
                wallet: wallet_of(profile),
                leaderboard: board.clone(),
                score: i as i64,
                at_micros: now - 1_000_000 + i as i64,
            }
        })
        .collect()
}

async fn stream_messages(js: &async_nats::jetstream::Context, name: &str) -> u64 {
    let mut stream = js.get_stream(name).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Waits until `check` (async) holds, or panics after `timeout`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_updates_leave_the_stream() {
    ensure_schema().await;
    let _servers = shared().await;
    let config = base_config("retention");
    let (_client, js) = jetstream(&config).await;
    let events = events("retention", 200);
    for e in &events {
        publish(&js, &config, e, &e.event_id).await;
    }
    assert_eq!(stream_messages(&js, &config.nats.stream).await, 200);
    let worker = Worker::start(config.clone()).await;
    wait_until("every event written", Duration::from_secs(60), || {
        worker.processed() >= events.len() as u64
    })
    .await;
    // Acks are confirmed before `processed` counts them: the stream is empty at once, or very soon.
    eventually(
        "the drained stream to hold nothing",
        Duration::from_secs(5),
        || async { stream_messages(&js, &config.nats.stream).await == 0 },
    )
    .await;
    let stream = js.get_stream(&config.nats.stream).await.unwrap();
    let c = &stream.cached_info().config;
    eprintln!(
        "retention: drained {} events, stream holds 0 (retention {:?}, max_age {:?}, max_bytes {})",
        events.len(),
        c.retention,
        c.max_age,
        c.max_bytes
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_publishes_and_keeps_what_it_holds() {
    ensure_schema().await;
    let _servers = shared().await;
    let mut config = base_config("full");
    config.nats.max_bytes = 16 * 1024;
    let (_client, js) = jetstream(&config).await;
    let session = session().await;
    let events = events("full", 500);
    let mut accepted = Vec::new();
    let mut refusal = None;
    for e in &events {
        let subject =
            score_worker::cmd::sample::subject_for(&config.nats.subjects[0], &e.leaderboard);
        match score_worker::cmd::sample::publish(&js, subject, &e.event_id, e.payload()).await {
            Ok(()) => accepted.push(e.clone()),
            Err(err) => {
                refusal = Some(err.to_string());
                break;
            }
        }
    }
    let refusal = refusal.expect("a stream at max_bytes refuses publishes");
    assert!(
        refusal.contains("maximum bytes exceeded"),
        "the publisher is told why: {refusal}"
    );
    let held = stream_messages(&js, &config.nats.stream).await;
    assert_eq!(
        held,
        accepted.len() as u64,
        "nothing stored was deleted to make room"
    );
    eprintln!(
        "full stream: max_bytes=16384 accepted={} refused with `{refusal}` held={held}",
        accepted.len()
    );

    let worker = Worker::start(config.clone()).await;
    wait_until(
        "every accepted event written",
        Duration::from_secs(60),
        || worker.processed() >= accepted.len() as u64,
    )
    .await;
    assert_final_state(&session, &accepted, config.scylla.leaderboard_buckets).await;
    // Drained, the stream has room again.
    let late = &events[accepted.len()];
    publish(&js, &config, late, &late.event_id).await;
    wait_until("the late event written", Duration::from_secs(30), || {
        worker.processed() > accepted.len() as u64
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_worker_brings_the_stream_and_consumer_to_the_configuration() {
    ensure_schema().await;
    let _servers = shared().await;
    let mut old = base_config("managed");
    old.nats.max_age = Duration::from_secs(3600);
    old.nats.ack_wait = Duration::from_secs(30);
    old.nats.max_deliver = 5;
    old.nats.max_ack_pending = 100;
    let (_client, js) = jetstream(&old).await;

    let mut new = old.clone();
    new.nats.max_age = Duration::from_secs(7200);
    new.nats.max_bytes = 1 << 20;
    new.nats.ack_wait = Duration::from_secs(10);
    new.nats.max_deliver = 20;
    new.nats.max_ack_pending = 2000;
    let check = worker_command(&new, 0).arg("check").output().unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    eprintln!("check before the update:\n{report}");
    for line in [
        "max_age is 3600s on the server, 7200s in the configuration; `run` updates it",
        "max_bytes is -1 on the server, 1048576 in the configuration; `run` updates it",
        "ack_wait is 30s on the server, 10s in the configuration; `run` updates it",
        "max_deliver is 5 on the server, 20 in the configuration; `run` updates it",
    ] {
        assert!(report.contains(line), "`check` reports `{line}`:\n{report}");
    }

    let worker = Worker::start(new.clone()).await;
    let mut stream = js.get_stream(&new.nats.stream).await.unwrap();
    let s = stream.info().await.unwrap().config.clone();
    assert_eq!(
        (s.max_age, s.max_bytes),
        (Duration::from_secs(7200), 1 << 20)
    );
    let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> =
        stream.get_consumer(&new.nats.consumer).await.unwrap();
    let c = &consumer.cached_info().config;
    assert_eq!(
        (c.ack_wait, c.max_deliver, c.max_ack_pending),
        (Duration::from_secs(10), 20, 2000)
    );
    worker.stop().await;
    let again = cli(&new, &["check"]);
    assert!(
        again.contains("streams and consumer match the configuration"),
        "{again}"
    );

    // Retention cannot change in place: start-up names it instead of running on the old one.
    let mut limits = base_config("limits");
    limits.nats.retention = Retention::Limits;
    let (_client, js) = jetstream(&limits).await;
    let mut wants_queue = limits.clone();
    wants_queue.nats.retention = Retention::WorkQueue;
    let err = nats::ensure_topology(&js, &wants_queue.nats)
        .await
        .expect_err("a limits stream cannot become a work queue in place");
    assert!(matches!(err, NatsError::Drift { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("retention is Limits on the server, WorkQueue in the configuration"),
        "{text}"
    );
    eprintln!("managed: updated max_age, max_bytes, ack_wait, max_deliver, max_ack_pending; refused: {text}");
}

/// An operator-owned consumer (`nats.manage_jetstream = false`) that disappears: the worker cannot
/// recreate it, so it says so and waits for the operator. A managed one is recreated by the worker
/// (`recovery::a_deleted_consumer_is_recreated_by_the_worker_itself`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_fails_readiness_and_pulls_back_off_until_it_is_back() {
    ensure_schema().await;
    let _servers = shared().await;
    let mut config = base_config("gone");
    let (client, js) = jetstream(&config).await;
    config.nats.manage_jetstream = false;
    // nats-server 2.9 answers the first pulls for a missing consumer with an error and later ones not at
    // all (each just expires, so the worker does not spin): the growing wait shows from 2.10 on.
    let version = client.server_info().version;
    let errors_every_pull = !version.starts_with("2.9.");
    let worker = Worker::start(config.clone()).await;
    let addr = worker.addr;
    eventually("ready", Duration::from_secs(15), || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;

    let stream = js.get_stream(&config.nats.stream).await.unwrap();
    // Pull failures are counted (the first as the consumer goes), and the waits between them grow;
    // readiness fails meanwhile.
    let errors = || worker.metrics.pull_errors.get();
    let mut at = Vec::new();
    let mut seen = errors();
    stream.delete_consumer(&config.nats.consumer).await.unwrap();
    let deleted = Instant::now();
    let mut not_ready = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (errors_every_pull && at.len() < 4) || not_ready.is_none() {
        assert!(
            Instant::now() < deadline,
            "pull errors counted {at:?}, readiness failed: {not_ready:?}"
        );
        let now = errors();
        if now > seen {
            at.push((now, deleted.elapsed()));
            seen = now;
        }
        if not_ready.is_none() {
            let (status, body) = http_get(addr, "/readyz").await;
            if status == 503 && body.contains("consumer cannot be read") {
                not_ready = Some((deleted.elapsed(), body.trim().to_string()));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1].1 - w[0].1).collect();
    eprintln!(
        "deleted consumer (nats-server {version}): not ready {not_ready:?}; pull errors (count, since deletion) {at:?}, gaps {gaps:?}"
    );
    assert!(!at.is_empty(), "the failed pulls were counted");
    if errors_every_pull {
        assert!(
            gaps.last().unwrap() >= &(gaps[0] + Duration::from_millis(500)),
            "the wait between pull failures grows: {gaps:?}"
        );
    }

    // Back: the worker is ready and consuming again without a restart.
    let mut operator = config.clone();
    operator.nats.manage_jetstream = true;
    nats::ensure_topology(&js, &operator.nats).await.unwrap();
    eventually("ready again", Duration::from_secs(20), || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
    let e = &events("gone", 1)[0];
    publish(&js, &config, e, &e.event_id).await;
    wait_until("consuming again", Duration::from_secs(40), || {
        worker.processed() >= 1
    })
    .await;
    worker.stop().await;
}
