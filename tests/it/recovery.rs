//! Recovering by itself (issue 17, item 5): a consumer (or its stream) deleted by an operator is
//! recreated by a running managed worker, one they changed keeps their settings (issue 18, item 4); the max-deliveries watcher runs even when
//! JetStream does not answer at start-up; the pull breaker probes with one message before it pulls at
//! full speed again.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use prometheus::core::Metric;
use score_worker::app::App;
use score_worker::config::Config;
use score_worker::nats;
use uuid::Uuid;

use crate::support::*;

fn events(tag: &str, n: usize) -> Vec<Event> {
    let ten_s_ago = Timing::Ascending {
        ago_micros: 10_000_000,
    };
    events_on(&new_board(tag), tag, n, Profiles::Each, ten_s_ago)
}

/// Waits (at most 30 s) until `/readyz` answers 200 (`what`: when).
async fn wait_ready(addr: std::net::SocketAddr, what: &str) {
    eprintln!("waiting for /readyz {what}");
    readyz_until(addr, 200, "").await;
}

async fn consumer_config(
    js: &async_nats::jetstream::Context,
    config: &Config,
) -> Option<pull::Config> {
    let stream = js.get_stream(&config.nats.stream).await.ok()?;
    let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> =
        stream.get_consumer(&config.nats.consumer).await.ok()?;
    let c = &consumer.cached_info().config;
    Some(pull::Config {
        durable_name: c.durable_name.clone(),
        ack_wait: c.ack_wait,
        max_deliver: c.max_deliver,
        max_ack_pending: c.max_ack_pending,
        ..Default::default()
    })
}

/// A worker started on `config` and ready (`/readyz` 200).
async fn ready_worker(config: &Config) -> Worker {
    let worker = Worker::start(config.clone()).await;
    wait_ready(worker.addr, "at start").await;
    worker
}

/// Waits (at most 30 s) until `worker` has restored its consumer `n` times in all; the time since
/// `deleted`, when the test deleted what it restores.
async fn restored(worker: &Worker, n: u64, what: &str, deleted: Instant) -> Duration {
    let restores = &worker.metrics.consumer_restores;
    wait_until(what, Duration::from_secs(30), || restores.get() >= n).await;
    deleted.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_or_stream_is_recreated_by_the_worker_itself() {
    let (_servers, config) = sharing("restore").await;
    let (_client, js) = jetstream(&config).await;
    let worker = ready_worker(&config).await;
    let evs = events("restore", 2);

    let stream = js.get_stream(&config.nats.stream).await.unwrap();
    let deleted = Instant::now();
    stream.delete_consumer(&config.nats.consumer).await.unwrap();
    let consumer_back = restored(&worker, 1, "the consumer recreated", deleted).await;
    assert!(consumer_config(&js, &config).await.is_some());
    worker
        .publish_and_wait((&js, &config), &evs[0], 1, "consuming again")
        .await;

    // The whole stream, consumer and all.
    let deleted = Instant::now();
    js.delete_stream(&config.nats.stream).await.unwrap();
    let stream_back = restored(&worker, 2, "the stream recreated", deleted).await;
    worker
        .publish_and_wait((&js, &config), &evs[1], 2, "consuming again")
        .await;
    wait_ready(worker.addr, "after the restores").await;
    eprintln!(
        "restore: deleted consumer recreated after {consumer_back:?}, deleted stream after {stream_back:?}; \
         {} restores, {} pull errors, both events written",
        worker.metrics.consumer_restores.get(),
        worker.metrics.pull_errors.get()
    );
    worker.stop().await;
}

/// An operator changes the consumer in place under a running managed worker: the worker keeps their
/// settings (issue 18, item 4: only `nats apply` changes what exists), reports the drift and keeps
/// consuming. Before, it brought the consumer back to its configuration within the watcher's interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_an_operator_changed_keeps_their_settings_and_the_drift_is_reported() {
    let (_servers, config) = sharing("changed").await;
    let (_client, js) = jetstream(&config).await;
    let worker = ready_worker(&config).await;
    assert_eq!(worker.metrics.jetstream_drift.get(), 0);

    // The operator's settings, in place.
    let stream = js.get_stream(&config.nats.stream).await.unwrap();
    let mut theirs = nats::consumer_config(&config.nats);
    theirs.ack_wait = Duration::from_secs(30);
    theirs.max_deliver = 3;
    theirs.max_ack_pending = 5;
    stream.create_consumer(theirs).await.unwrap();
    let changed = Instant::now();
    wait_until("the drift reported", Duration::from_secs(30), || {
        worker.metrics.jetstream_drift.get() == 3
    })
    .await;
    let reported = changed.elapsed();
    // Past another watcher interval, the operator's settings still apply.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let now = consumer_config(&js, &config).await.unwrap();
    assert_eq!(
        (now.ack_wait, now.max_deliver, now.max_ack_pending),
        (Duration::from_secs(30), 3, 5),
        "the operator's settings stay"
    );
    let e = &events("changed", 1)[0];
    worker
        .publish_and_wait((&js, &config), e, 1, "consuming")
        .await;
    eprintln!(
        "changed consumer: ack_wait 30s, max_deliver 3, max_ack_pending 5 kept {:?} after the change; \
         drift reported after {reported:?} (gauge {}), {} restores",
        changed.elapsed(),
        worker.metrics.jetstream_drift.get(),
        worker.metrics.consumer_restores.get()
    );
    assert_eq!(worker.metrics.consumer_restores.get(), 0);
    worker.stop().await;
}

/// The max-deliveries watcher needs nothing but a subscription: with JetStream frozen while the
/// worker starts, it still runs, and an advisory that arrives later dead-letters its message and
/// removes it from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_advisory_watcher_runs_even_when_jetstream_does_not_answer_at_start() {
    ensure_schema().await;
    let _servers = shared().await;
    let mut own = OwnNats::start();
    let mut config = base_config("advised");
    config.nats.url = own.url.clone();
    config.nats.request_timeout = Duration::from_secs(1);
    // The test holds the message's delivery (as a crashed replica would) for the whole test.
    config.nats.ack_wait = Duration::from_secs(120);
    let (client, js) = jetstream(&config).await;
    let e = &events("advised", 1)[0];
    publish(&js, &config, e, &e.event_id).await;
    // Held for the whole test, as a crashed replica would.
    let (_held, sequence) = hold_one_delivery(&js, &config).await;

    let app = App::build(config.clone()).await.expect("worker starts");
    let addr = app.http_addr();
    let metrics = app.metrics();
    own.signal("STOP");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    // Longer than nats.request_timeout: a start-up that asked JetStream anything has given up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    own.signal("CONT");
    wait_ready(addr, "after the freeze").await;

    advise_max_deliveries(&client, &config, sequence).await;
    wait_until(
        "the advised message dead-lettered",
        Duration::from_secs(30),
        || dead_letters_for(&metrics, "max_deliveries") >= 1,
    )
    .await;
    let letters = read_stream(&js, &config.nats.deadletter_stream, 1).await;
    assert_eq!(letters.len(), 1);
    let headers = letters[0].headers.as_ref().unwrap();
    assert_eq!(
        headers
            .get(score_worker::deadletter::ORIGINAL_MSG_ID)
            .unwrap()
            .as_str(),
        e.event_id
    );
    assert_eq!(letters[0].payload, e.payload());
    let mut stream = js.get_stream(&config.nats.stream).await.unwrap();
    let left = stream.info().await.unwrap().state.messages;
    assert_eq!(
        left, 0,
        "removed from the work-queue stream once dead-lettered"
    );
    eprintln!(
        "advisory watcher: started with JetStream frozen for 3 s; the advised message (sequence \
         {sequence}) dead-lettered as max_deliveries and removed from the stream ({left} left)"
    );
    let _ = stop.send(());
    task.await.unwrap();
}

/// Fetches one delivery of the consumer and keeps it unacknowledged; returns it and its stream
/// sequence.
async fn hold_one_delivery(
    js: &async_nats::jetstream::Context,
    config: &Config,
) -> (async_nats::jetstream::Message, u64) {
    let stream = js.get_stream(&config.nats.stream).await.unwrap();
    let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> =
        stream.get_consumer(&config.nats.consumer).await.unwrap();
    let mut fetched = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let held = futures::StreamExt::next(&mut fetched)
        .await
        .unwrap()
        .unwrap();
    let sequence = held.info().unwrap().stream_sequence;
    (held, sequence)
}

/// Publishes the server's max-deliveries advisory for the message at `sequence`.
async fn advise_max_deliveries(client: &async_nats::Client, config: &Config, sequence: u64) {
    let advisory = serde_json::json!({
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "stream": config.nats.stream,
        "consumer": config.nats.consumer,
        "stream_seq": sequence,
        "deliveries": 20,
    });
    client
        .publish(
            score_worker::advisory::subject(&config.nats.stream, &config.nats.consumer),
            serde_json::to_vec(&advisory).unwrap().into(),
        )
        .await
        .unwrap();
}

/// The breaker tripped (as a failing write trips it) with a backlog waiting: once the health probe
/// reaches the database, one message is pulled and written alone before pulling goes on at full
/// speed. With nothing to pull, the probe closes the breaker by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_breaker_probes_with_one_message_before_pulling_at_full_speed() {
    let (_servers, config) = sharing("breaker").await;
    let (_client, js, session) = nats_and_db(&config).await;
    let worker = ready_worker(&config).await;
    let m = &worker.metrics;
    let state = |s: &str| m.pull_breaker_state.with_label_values(&[s]).get();

    // Idle: a trip with nothing to pull does not leave the breaker half-open.
    worker.health.breaker().open("test: writes failing");
    wait_until(
        "closed again with nothing to pull",
        Duration::from_secs(30),
        || state("closed") == 1,
    )
    .await;

    worker.health.breaker().open("test: writes failing");
    // The pull that was waiting when it tripped expires (nats::PULL_EXPIRES); nothing more is asked.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let evs = events("breaker", 300);
    for e in &evs {
        publish(&js, &config, e, &e.event_id).await;
    }
    assert_eq!(m.messages_received.get(), 0, "open: nothing pulled");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker.processed() < evs.len() as u64 {
        assert!(Instant::now() < deadline, "not drained: {seen:?}");
        let now = (
            ["closed", "open", "half_open"]
                .into_iter()
                .find(|s| state(s) == 1)
                .unwrap(),
            m.messages_received.get(),
        );
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let flushes = m.batch_size.get_sample_count();
    let singles = m
        .batch_size
        .metric()
        .get_histogram()
        .get_bucket()
        .iter()
        .find(|b| b.upper_bound() == 1.0)
        .unwrap()
        .cumulative_count();
    eprintln!(
        "breaker: (state, received) as seen {:?}; {flushes} flushes, {singles} of one score",
        &seen[..seen.len().min(12)]
    );
    assert_eq!(
        singles, 1,
        "the first message after the trip was pulled and written alone"
    );
    assert!(
        seen.iter().any(|(s, r)| *s == "half_open" && *r <= 1),
        "{seen:?}"
    );
    worker.stop().await;
    assert_final_state(&session, &evs, config.scylla.leaderboard_buckets).await;
}

/// An operator-owned consumer whose `max_deliver` an operator lowers (5 → 2) while the worker runs: the
/// worker's last delivery follows the server's without a restart. The key fails on every delivery
/// while the database takes other writes (its `scores_by_profile` row holds more dead cells than
/// `tombstone_failure_threshold`, in a keyspace of the test's own), so the worker dead-letters it
/// itself on the server's last delivery, as `write_failed`. With the value it started with (5) it
/// would give the message back on delivery 2, and NATS, done with it, would leave it to the
/// max-deliveries advisory instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_owned_consumer_changed_while_running_decides_the_last_delivery() {
    let _servers = shared().await;
    let mut config = base_config("owned_live");
    let admin = crate::faults::keyspace_of_its_own(&mut config, "it_live").await;
    config.nats.max_deliver = 5;
    config.nats.ack_wait = Duration::from_secs(5);
    let (_client, js) = jetstream(&config).await; // the operators' topology
    config.nats.manage_jetstream = false;
    config.retry.progress_interval = Duration::from_secs(1);
    config.retry.total_budget = Duration::from_secs(1);
    config.retry.nak_delay = Duration::from_millis(200);
    let worker = ready_worker(&config).await;

    // The operator lowers max_deliver in place; the watcher reads the consumer every 5 s.
    let stream = js.get_stream(&config.nats.stream).await.unwrap();
    let mut theirs = nats::consumer_config(&config.nats);
    theirs.max_deliver = 2;
    stream.create_consumer(theirs).await.unwrap();
    assert_eq!(consumer_config(&js, &config).await.unwrap().max_deliver, 2);
    tokio::time::sleep(Duration::from_secs(6)).await;

    let evs = events("owned_live", 3);
    let profile = Uuid::new_v4();
    let evs: Vec<Event> = evs
        .into_iter()
        .map(|mut e| {
            e.profile = profile;
            e.wallet = wallet_of(profile);
            e
        })
        .collect();
    let threshold = tombstone_failure_threshold(&admin)
        .await
        .expect("tombstone_failure_threshold");
    let key = (evs[0].profile, evs[0].leaderboard.as_str());
    write_dead_cells(&admin, &config.scylla.keyspace, key, -1, 0..threshold + 1).await;
    publish_all(&js, &config, &evs).await;
    let m = &worker.metrics;
    wait_until(
        "the key dead-lettered by the worker on the server's last delivery",
        Duration::from_secs(60),
        || dead_letters_for(m, "write_failed") + dead_letters_for(m, "max_deliveries") >= 1,
    )
    .await;
    wait_drained(&js, &config, Duration::from_secs(30)).await;
    let (write_failed, max_deliveries) = (
        dead_letters_for(m, "write_failed"),
        dead_letters_for(m, "max_deliveries"),
    );
    worker.stop().await;
    let letters = read_stream(&js, &config.nats.deadletter_stream, evs.len()).await;
    let _ = drop_keyspace(&admin, &config.scylla.keyspace).await;
    let errors: Vec<String> = dead_letter_errors(&letters)
        .into_iter()
        .filter(|e| !e.is_empty())
        .map(|e| e.chars().take(40).collect())
        .collect();
    eprintln!(
        "operator-owned consumer, max_deliver 5 -> 2 while running: {write_failed} write_failed, \
         {max_deliveries} max_deliveries; errors {errors:?}"
    );
    assert_eq!(max_deliveries, 0, "nothing left to the advisory");
    assert!(write_failed >= 1);
    assert!(
        errors
            .iter()
            .all(|e| e.starts_with("not written after 2 deliveries")),
        "{errors:?}"
    );
}
