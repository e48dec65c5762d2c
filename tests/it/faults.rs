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
    // Three times retry.total_budget (3 s): flushes are retried, then nak'd and redelivered.
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
    assert!(
        worker
            .metrics
            .messages_failed
            .with_label_values(&["write"])
            .get()
            > 0,
        "messages past the retry budget were nak'd and redelivered"
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_past_max_deliver_parks_messages_in_the_dlq_and_replay_restores_them() {
    ensure_schema().await;
    let _alone = exclusive().await;
    let mut config = base_config("parked");
    config.nats.max_deliver = 2;
    config.nats.ack_wait = Duration::from_secs(5);
    config.retry.progress_interval = Duration::from_secs(1);
    config.retry.total_budget = Duration::from_secs(1);
    config.retry.nak_delay = Duration::from_millis(200);
    config.scylla.request_timeout = Duration::from_millis(500);
    let (_client, js) = jetstream(&config).await;
    let session = session().await;
    let events = events_for("parked", 40, 40);
    let worker = Worker::start(config.clone()).await;

    let pid = services("cassandra-pid");
    signal(&pid, "STOP");
    let thaw = Thaw(pid);
    for e in &events {
        publish(&js, &config, e, &e.event_id).await;
    }
    wait_until(
        "every message parked as max_deliveries",
        Duration::from_secs(60),
        || {
            worker
                .metrics
                .dead_letters
                .with_label_values(&["max_deliveries"])
                .get()
                >= events.len() as u64
        },
    )
    .await;
    assert_eq!(worker.processed(), 0);
    drop(thaw);

    let listed = cli(&config, &["dlq", "list", "--reason", "max_deliveries"]);
    assert!(
        listed.ends_with(&format!("{} dead letters\n", events.len())),
        "{listed}"
    );
    let replayed = cli(&config, &["dlq", "replay", "--reason", "max_deliveries"]);
    assert_eq!(
        replayed.trim(),
        format!("replayed {} dead letters, skipped 0", events.len())
    );
    wait_until("replayed events written", Duration::from_secs(90), || {
        worker.processed() >= events.len() as u64
    })
    .await;
    worker.stop().await;
    assert_final_state(&session, &events, config.scylla.leaderboard_buckets).await;
}
