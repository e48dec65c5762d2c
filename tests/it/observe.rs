//! What an operator sees coming, from the real servers: a held flush and the deliveries it holds
//! age in `/metrics` (and the write errors behind it are counted by statement), the backlog's
//! oldest pending message is aged from its stored time, and the read API's calls are timed and
//! their failures counted by operation and kind.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use score_worker::breaker::Breaker;
use score_worker::consumer::watch::{Signals, Watch};
use score_worker::health::Health;
use score_worker::metrics::Metrics;
use score_worker::pipeline::settle::Limits;
use score_worker::pipeline::Settler;
use score_worker::read::Reader;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::faults::freeze_database;
use crate::support::*;

/// The sum of the samples of `name` whose labels include every `key="value"` of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (set, sample) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let matches = labels
                .iter()
                .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            matches.then(|| sample.trim().parse::<f64>().ok())?
        })
        .sum()
}

fn events(tag: &str, n: usize) -> Vec<Event> {
    events_on(
        &new_board(tag),
        tag,
        n,
        Profiles::Each,
        Timing::IndexedRecent,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_flush_and_its_deliveries_show_how_long_they_wait() {
    let (_alone, mut config) = alone("observe_held").await;
    config.scylla.request_timeout = Duration::from_secs(1);
    config.retry.total_budget = Duration::from_secs(2);
    let (_client, js) = jetstream(&config).await;
    let events = events("held", 100);
    let worker = Worker::start(config.clone()).await;
    publish_all(&js, &config, &events[..50]).await;
    // One bad message: its settlement (a dead letter) is timed too, not only acks.
    publish_raw(&js, &config, "bad", b"{not json".to_vec(), "observe-bad").await;
    wait_until("first events written", Duration::from_secs(60), || {
        worker.processed() >= 50
    })
    .await;
    wait_until("the bad message settled", Duration::from_secs(30), || {
        value(
            &worker.metrics.encode(),
            "score_worker_processing_duration_seconds_count",
            &[("outcome", "dead_letter")],
        ) == 1.0
    })
    .await;

    let thaw = crate::faults::freeze_then_publish(&config, &js, &events[50..]).await;
    wait_until("a flush held", Duration::from_secs(30), || {
        value(&worker.metrics.encode(), "score_worker_flushes_held", &[]) >= 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_the_hold_shows(&worker.metrics.encode());
    crate::faults::thaw_and_catch_up(thaw, &worker, events.len()).await;
    let text = worker.metrics.encode();
    assert_eq!(value(&text, "score_worker_flushes_held", &[]), 0.0);
    assert_eq!(
        value(&text, "score_worker_flushes_held_oldest_age_seconds", &[]),
        0.0
    );
    wait_until("nothing unsettled", Duration::from_secs(10), || {
        value(
            &worker.metrics.encode(),
            "score_worker_unsettled_deliveries",
            &[],
        ) == 0.0
    })
    .await;
    assert_the_hold_is_in_the_processing_time(&text);
    worker.stop().await;
}

/// With the database frozen for 3 s: a flush held for at least that long, its deliveries unsettled
/// at least as long, and the failed write and probes counted by statement (`text`: the metrics).
fn assert_the_hold_shows(text: &str) {
    let held = value(text, "score_worker_flushes_held", &[]);
    let held_for = value(text, "score_worker_flushes_held_oldest_age_seconds", &[]);
    let unsettled = value(text, "score_worker_unsettled_deliveries", &[]);
    let unsettled_for = value(
        text,
        "score_worker_unsettled_deliveries_oldest_age_seconds",
        &[],
    );
    let errors = |statement| {
        value(
            text,
            "score_worker_scylla_errors_total",
            &[("statement", statement)],
        )
    };
    let (write_errors, probe_errors) = (errors("write_profiles"), errors("probe"));
    eprintln!(
        "database frozen: {held} flush(es) held, the oldest for {held_for:.1} s; {unsettled} deliveries unsettled, the oldest for {unsettled_for:.1} s; errors: write_profiles {write_errors}, probe {probe_errors}"
    );
    assert!(held >= 1.0, "a flush is held");
    assert!(held_for >= 3.0, "held for the 3 s waited: {held_for}");
    assert!(unsettled >= 1.0, "its deliveries are unsettled");
    assert!(
        unsettled_for >= held_for,
        "a held flush's deliveries are at least as old as its hold: {unsettled_for} < {held_for}"
    );
    assert!(write_errors >= 1.0, "the write that failed, by statement");
    assert!(probe_errors >= 1.0, "the probes that failed, as `probe`");
}

/// The held messages were acked after their hold: their processing time says so.
fn assert_the_hold_is_in_the_processing_time(text: &str) {
    let bucket = "score_worker_processing_duration_seconds_bucket";
    let acked = [("outcome", "ack")];
    let slow = value(text, bucket, &[("outcome", "ack"), ("le", "+Inf")])
        - value(text, bucket, &[("outcome", "ack"), ("le", "2")]);
    eprintln!(
        "after the thaw: {} acked, {slow} of them more than 2 s after their receipt",
        value(
            text,
            "score_worker_processing_duration_seconds_count",
            &acked
        )
    );
    assert!(
        slow >= 1.0,
        "the held messages' processing time counts their hold"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_pending_message_is_aged_from_its_stored_time() {
    let _servers = shared().await;
    let config = base_config("observe_pending");
    let (client, js) = jetstream(&config).await;
    let events = events("pending", 10);
    // Five, two seconds, five more; no worker pulls them.
    publish_all(&js, &config, &events[..5]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish_all(&js, &config, &events[5..]).await;
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let metrics = Arc::new(Metrics::new());
    let cancel = CancellationToken::new();
    let watcher = spawn_watcher(&config, &js, &metrics, &cancel);
    let age = |m: &Metrics| {
        value(
            &m.encode(),
            "score_worker_consumer_oldest_pending_age_seconds",
            &[],
        )
    };
    wait_until("an age", Duration::from_secs(10), || age(&metrics) > 0.0).await;
    let first = age(&metrics);
    let max_age = value(
        &metrics.encode(),
        "score_worker_stream_max_age_seconds",
        &[],
    );
    eprintln!(
        "ten messages pending, the first stored 3 s ago: oldest pending {first:.2} s, stream max_age {max_age} s"
    );
    assert!(
        (3.0..6.0).contains(&first),
        "the first message's age: {first}"
    );
    assert_eq!(max_age, config.nats.max_age.as_secs_f64());

    // The first five acknowledged: the oldest pending is now one of the later five.
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(&config.nats.stream)
        .await
        .unwrap()
        .get_consumer(&config.nats.consumer)
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(5).messages().await.unwrap();
    while let Some(message) = batch.next().await {
        message.unwrap().double_ack().await.unwrap();
    }
    wait_until("a younger oldest", Duration::from_secs(10), || {
        age(&metrics) < first - 1.5
    })
    .await;
    let second = age(&metrics);
    eprintln!("first five acked: oldest pending {second:.2} s");

    let mut rest = consumer.fetch().max_messages(5).messages().await.unwrap();
    while let Some(message) = rest.next().await {
        message.unwrap().double_ack().await.unwrap();
    }
    wait_until(
        "no age once nothing is pending",
        Duration::from_secs(10),
        || age(&metrics) == 0.0,
    )
    .await;
    cancel.cancel();
    watcher.await.unwrap();
}

/// The consumer watcher alone, every 200 ms, until `cancel`.
fn spawn_watcher(
    config: &score_worker::config::Config,
    js: &async_nats::jetstream::Context,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let signals = Arc::new(Signals::default());
    let limits = Limits {
        max_deliver: config.nats.max_deliver,
        nak_delay: config.retry.nak_delay,
    };
    tokio::spawn(
        Watch {
            js: js.clone(),
            config: config.nats.clone(),
            health: Arc::new(Health::new(
                metrics.clone(),
                Arc::new(Breaker::new(metrics.clone())),
            )),
            settler: Settler::new(limits, metrics.clone()),
            metrics: metrics.clone(),
            signals: signals.clone(),
            interval: Duration::from_millis(200),
            reported: Vec::new(),
        }
        .run(cancel.clone()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_api_calls_are_timed_and_failures_counted_by_operation_and_kind() {
    let (_alone, mut config) = alone("observe_read").await;
    config.scylla.request_timeout = Duration::from_millis(500);
    let session = Arc::new(score_worker::store::connect(&config.scylla).await.unwrap());
    let metrics = Arc::new(Metrics::new());
    let reader = Reader::new(session, &config.scylla, metrics.clone())
        .await
        .expect("reader");
    let board = new_board("observe-read");
    reader.top(&board, 10).await.expect("top");
    reader.top(&board, 10).await.expect("top");
    reader.rank(&board, Uuid::new_v4()).await.expect("rank");
    assert!(reader.top(&board, 0).await.is_err(), "a top of no rows");
    let thaw = freeze_database();
    let frozen = reader.scores(Uuid::new_v4()).await;
    drop(thaw);
    let frozen = frozen.expect_err("the database is frozen");

    let text = metrics.encode();
    let calls = |operation| {
        value(
            &text,
            "score_worker_read_duration_seconds_count",
            &[("operation", operation)],
        )
    };
    let errors = |operation, kind| {
        value(
            &text,
            "score_worker_read_errors_total",
            &[("operation", operation), ("kind", kind)],
        )
    };
    eprintln!(
        "calls: top {}, rank {}, profile {}, score_on {}; errors: top/argument {}, profile/timeout {} ({frozen})",
        calls("top"),
        calls("rank"),
        calls("profile"),
        calls("score_on"),
        errors("top", "argument"),
        errors("profile", "timeout"),
    );
    assert_eq!(calls("top"), 3.0, "every call timed, the refused one too");
    assert_eq!(calls("rank"), 1.0);
    assert_eq!(calls("score_on"), 0.0, "a rank's own read is not a call");
    assert_eq!(calls("profile"), 1.0);
    assert_eq!(errors("top", "argument"), 1.0);
    assert_eq!(errors("top", "timeout"), 0.0);
    assert_eq!(
        value(
            &text,
            "score_worker_read_errors_total",
            &[("operation", "profile")]
        ),
        1.0,
        "the frozen read, once"
    );
    assert!(
        errors("profile", "timeout") + errors("profile", "connection") == 1.0,
        "a frozen database times out: {frozen}"
    );
}
