//! Faults with real processes: the database frozen longer than the retry budget, and SIGTERM of the
//! real binary during load.

use std::process::Command;
use std::time::Duration;

use rand::Rng;
use uuid::Uuid;

use crate::support::*;

fn services(arg: &str) -> String {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh"))
        .arg(arg)
        .output()
        .expect("scripts/services.sh runs");
    assert!(
        out.status.success(),
        "services.sh {arg}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn signal(pid: &str, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Resumes the database even if the test panics.
struct Thaw(String);
impl Drop for Thaw {
    fn drop(&mut self) {
        signal(&self.0, "CONT");
    }
}

fn events_for(tag: &str, n: usize, profiles: usize) -> Vec<Event> {
    let mut rng = rand::rng();
    let board = format!("{tag}-{}", Uuid::new_v4().simple());
    let people: Vec<Uuid> = (0..profiles).map(|_| Uuid::new_v4()).collect();
    (0..n)
        .map(|i| {
            let profile = people[rng.random_range(0..people.len())];
            Event {
                event_id: format!("{tag}-{i}-{}", Uuid::new_v4().simple()),
                profile,
                wallet: wallet_of(profile),
                leaderboard: board.clone(),
                score: rng.random_range(0..1_000_000),
                at_micros: recent_micros(&mut rng),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_frozen_past_the_retry_budget_loses_nothing() {
    ensure_schema().await;
    // Freezing the shared database would stall the other tests' queries: run alone.
    let _alone = exclusive().await;
    let mut config = base_config("outage");
    // Statements time out within the 3 s budget, so a frozen database shows both retries and naks.
    config.scylla.request_timeout = Duration::from_secs(1);
    let (_client, js) = jetstream(&config).await;
    let session = session().await;
    let events = events_for("outage", 300, 60);
    let worker = Worker::start(config.clone()).await;
    for e in &events[..100] {
        publish(&js, &config, e, &e.event_id).await;
    }
    wait_until("first events written", Duration::from_secs(60), || {
        worker.processed() >= 100
    })
    .await;

    let pid = services("cassandra-pid");
    signal(&pid, "STOP");
    let thaw = Thaw(pid);
    for e in &events[100..] {
        publish(&js, &config, e, &e.event_id).await;
    }
    // Three times retry.total_budget (3 s): flushes are retried, then held until the database answers.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(
        worker.processed() < events.len() as u64,
        "nothing can be acked while the database is frozen"
    );
    drop(thaw);

    wait_until(
        "every event written after the database came back",
        Duration::from_secs(90),
        || worker.processed() >= events.len() as u64,
    )
    .await;
    assert!(
        worker.metrics.batch_retries.get() > 0,
        "writes were retried"
    );
    // Past the budget the flushes were held, not given back: no delivery burnt by the outage.
    assert_eq!(
        worker
            .metrics
            .messages_failed
            .with_label_values(&["write"])
            .get(),
        0,
        "flushes past the retry budget are held while the database is down, not nak'd"
    );
    worker.stop().await;
    assert_final_state(&session, &events, config.scylla.leaderboard_buckets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_drains_and_exits_zero_then_another_worker_finishes() {
    ensure_schema().await;
    let _servers = shared().await;
    let config = base_config("sigterm");
    let (_client, js) = jetstream(&config).await;
    let session = session().await;
    let events = events_for("sigterm", 1500, 300);
    for e in &events {
        publish(&js, &config, e, &e.event_id).await;
    }

    let mut config = config;
    config.batch.max_inflight = 2;
    config.shutdown.timeout = Duration::from_secs(10);
    let port = free_port();
    let mut child = worker_command(&config, port)
        .arg("run")
        .spawn()
        .expect("the worker binary starts");

    // Let it get going, then SIGTERM while flushes are in flight.
    let processed = || -> u64 {
        let Ok(out) = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
            .output()
        else {
            return 0;
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("score_worker_messages_processed_total ")
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    };
    wait_until(
        "the binary processes something",
        Duration::from_secs(60),
        || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the worker exited early: {status:?}");
            }
            processed() > 0
        },
    )
    .await;
    let before = processed();
    signal(&child.id().to_string(), "TERM");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "worker did not exit within shutdown.timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(
        before < events.len() as u64,
        "SIGTERM arrived during load ({before} already processed)"
    );

    // A new worker takes the rest; afterwards the consumer has nothing pending.
    let worker = Worker::start(config.clone()).await;
    let stream = js.get_stream(&config.nats.stream).await.unwrap();
    let mut consumer = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&config.nats.consumer)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog not drained: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    worker.stop().await;
    assert_final_state(&session, &events, config.scylla.leaderboard_buckets).await;
    let mut history = history_event_ids(&session, &events).await;
    history.sort();
    history.dedup();
    assert_eq!(
        history.len(),
        events.len(),
        "every event in history exactly once"
    );
}

/// A database outage longer than max_deliver deliveries parks messages as `max_deliveries` dead
/// letters (never dropped); `dlq replay` brings them back once the database is up.
/// An outage of 10 × `max_deliver` × (`retry.total_budget` + `retry.nak_delay`) — long enough to
/// burn every delivery many times over if the worker kept pulling — ends with zero dead letters and
/// every event in place: pulling pauses while flushes cannot be written and resumes when the database
/// answers. (Before the pull breaker, this outage parked every message as `max_deliveries`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_any_length_dead_letters_nothing() {
    ensure_schema().await;
    let _alone = exclusive().await;
    let mut config = base_config("breaker");
    config.nats.max_deliver = 2;
    config.nats.ack_wait = Duration::from_secs(5);
    config.retry.progress_interval = Duration::from_secs(1);
    config.retry.total_budget = Duration::from_secs(1);
    config.retry.nak_delay = Duration::from_millis(200);
    config.scylla.request_timeout = Duration::from_millis(500);
    let outage = Duration::from_millis(
        10 * config.nats.max_deliver as u64
            * (config.retry.total_budget + config.retry.nak_delay).as_millis() as u64,
    );
    let (_client, js) = jetstream(&config).await;
    let session = session().await;
    let events = events_for("breaker", 200, 80);
    let worker = Worker::start(config.clone()).await;
    for e in &events[..50] {
        publish(&js, &config, e, &e.event_id).await;
    }
    wait_until("first events written", Duration::from_secs(60), || {
        worker.processed() >= 50
    })
    .await;

    let pid = services("cassandra-pid");
    signal(&pid, "STOP");
    let thaw = Thaw(pid);
    let started = std::time::Instant::now();
    for e in &events[50..] {
        publish(&js, &config, e, &e.event_id).await;
    }
    wait_until("pulling paused", Duration::from_secs(30), || {
        worker.metrics.pulls_paused.get() == 1
    })
    .await;
    tokio::time::sleep(outage.saturating_sub(started.elapsed())).await;
    let dead = |m: &score_worker::metrics::Metrics| -> u64 {
        score_worker::score::RejectReason::ALL
            .iter()
            .map(|r| m.dead_letters.with_label_values(&[r.as_str()]).get())
            .sum()
    };
    assert_eq!(
        dead(&worker.metrics),
        0,
        "nothing dead-lettered during the outage"
    );
    assert_eq!(worker.metrics.pulls_paused.get(), 1, "still paused");
    drop(thaw);

    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while worker.processed() < events.len() as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "not every event written after the database came back: processed {}, received {}, paused {}, dead {}",
            worker.processed(),
            worker.metrics.messages_received.get(),
            worker.metrics.pulls_paused.get(),
            dead(&worker.metrics)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(worker.metrics.pulls_paused.get(), 0, "pulling resumed");
    assert_eq!(dead(&worker.metrics), 0, "nothing dead-lettered at all");
    let failed = worker
        .metrics
        .messages_failed
        .with_label_values(&["write"])
        .get();
    eprintln!(
        "breaker: outage {outage:?} (max_deliver {}), {failed} messages given back once, 0 dead letters, {} events in place",
        config.nats.max_deliver,
        events.len()
    );
    worker.stop().await;
    assert_final_state(&session, &events, config.scylla.leaderboard_buckets).await;
}
