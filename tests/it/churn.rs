//! Days, not minutes: what a key costs must not grow with its history. A hot key changes thousands of
//! times within `gc_grace_seconds`; every read the protocol makes of it must meet a bounded number of
//! dead cells, writers racing on it must keep the invariant, and a flush must stay a handful of
//! batched requests. Counts, not timings.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::seq::SliceRandom;
use rand::Rng;
use score_worker::config::Config;
use score_worker::metrics::{Metrics, REQUESTS};
use score_worker::pipeline::Store;
use score_worker::score::ScoreUpdate;
use score_worker::store::ScyllaStore;
use scylla::client::session::Session;
use scylla::statement::unprepared::Statement;
use uuid::Uuid;

use crate::support::*;

/// Dead cells a read of one key may meet whatever its history: the score and wallet cleared by an
/// operator's delete, and room for one more.
const DEAD_CELLS_BOUND: u64 = 3;

fn event(i: usize, profile: Uuid, leaderboard: &str, score: i64, at_micros: i64) -> Event {
    Event::new(
        format!("churn-{i}-{}", Uuid::new_v4().simple()),
        profile,
        leaderboard,
        score,
        at_micros,
    )
}

fn update(e: &Event) -> ScoreUpdate {
    ScoreUpdate {
        event_id: e.event_id.clone(),
        profile_id: e.profile,
        wallet_address: e.wallet.clone(),
        leaderboard_id: e.leaderboard.clone(),
        score: e.score,
        occurred_at_micros: e.at_micros,
    }
}

/// Dead (tombstone) cells the replicas met reading one key's `scores_by_profile` row, from the
/// query's trace ("Read 1 live rows and N tombstone cells"), summed over the replicas that read.
/// The database writes a trace's events after it answers: the trace is read again (for at most
/// 10 s) until the read's own event is in it.
async fn dead_cells_read(session: &Session, profile: Uuid, leaderboard: &str) -> u64 {
    let mut select = Statement::new(format!(
        "SELECT score, WRITETIME(score), WRITETIME(updated_at), ranked FROM {KEYSPACE}.scores_by_profile \
         WHERE profile_id IN ? AND leaderboard_id IN ?"
    ));
    select.set_tracing(true);
    let result = session
        .query_unpaged(select, (vec![profile], vec![leaderboard]))
        .await
        .expect("traced read");
    let id = result
        .tracing_id()
        .expect("a traced response has a tracing id");
    let every = Duration::from_millis(100);
    poll(
        "the trace naming the cells read",
        Duration::from_secs(10),
        every,
        || async {
            let trace = session
                .get_tracing_info(&id)
                .await
                .expect("the trace is stored");
            let counts: Vec<u64> = trace
                .events
                .iter()
                .filter_map(|e| e.activity.as_deref())
                .filter_map(|a| {
                    let (_, rest) = a.split_once(" live rows and ")?;
                    rest.split_whitespace().next()?.parse().ok()
                })
                .collect();
            if counts.is_empty() {
                Err(format!("{:?}", trace.events))
            } else {
                Ok(counts.iter().sum())
            }
        },
    )
    .await
}

/// Tombstone warnings the database attached to the worker's requests of kind `statement`.
fn tombstone_warnings(m: &Metrics, statement: &str) -> u64 {
    m.scylla_warnings
        .with_label_values(&[statement, "tombstones"])
        .get()
}

/// A worker that writes every event as a flush of its own (four in flight, racing on the same key).
fn one_key_per_flush(test: &str) -> Config {
    let mut config = base_config(test);
    config.batch.max_scores = 1;
    config.batch.linger = Duration::from_millis(1);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_changed_5000_times_meets_a_bounded_number_of_dead_cells() {
    ensure_schema().await;
    let _servers = shared().await;
    let config = one_key_per_flush("churn");
    let (_client, js, session) = nats_and_db(&config).await;
    let profile = Uuid::new_v4();
    let board = new_board("churn");
    let base = chrono::Utc::now().timestamp_micros() - 3_600_000_000;
    // Every change a new score, a millisecond after the one before.
    let events: Vec<Event> = (0..5000)
        .map(|i| {
            event(
                i,
                profile,
                &board,
                (i as i64 * 7919) % 100_000,
                base + i as i64 * 1000,
            )
        })
        .collect();
    publish_all(&js, &config, &events).await;

    let worker = Worker::start(config.clone()).await;
    wait_until("5,000 changes processed", Duration::from_secs(300), || {
        worker.processed() >= events.len() as u64
    })
    .await;
    let warned = tombstone_warnings(&worker.metrics, "read_back");
    worker.stop().await;

    let dead = dead_cells_read(&session, profile, &board).await;
    println!("a key changed 5,000 times: its read meets {dead} dead cells; read-backs warned {warned} times");
    assert!(
        dead <= DEAD_CELLS_BOUND,
        "a read of the key met {dead} dead cells (bound {DEAD_CELLS_BOUND})"
    );
    assert_eq!(
        warned, 0,
        "read-backs met tombstones past the server's warning threshold"
    );
    assert_final_state(&session, &events, config.scylla.leaderboard_buckets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_racing_on_a_key_with_thousands_of_changes_keep_it_once_at_its_newest() {
    let (_servers, mut config) = sharing("churnrace").await;
    config.batch.max_scores = 3; // many small flushes of the same keys in flight at once
    config.batch.linger = Duration::from_millis(2);
    let (_client, js, session) = nats_and_db(&config).await;
    let board = new_board("churnrace");
    let hot = Uuid::new_v4();
    let base = chrono::Utc::now().timestamp_micros() - 3_600_000_000;

    // History first: 3,000 changes of the hot key through the write protocol, 8 at once.
    let history: Vec<Event> = (0..3000)
        .map(|i| event(i, hot, &board, i as i64 % 977, base + i as i64 * 100))
        .collect();
    let store = Arc::new(
        ScyllaStore::new(
            Arc::new(session_for(&config).await),
            &config.scylla,
            Arc::new(Metrics::new()),
        )
        .await
        .expect("store"),
    );
    futures::stream::iter(history.iter().map(|e| {
        let store = store.clone();
        let u = update(e);
        async move {
            store
                .write(std::slice::from_ref(&u), std::slice::from_ref(&u), &[])
                .await
                .expect("history write")
        }
    }))
    .buffer_unordered(8)
    .collect::<Vec<()>>()
    .await;
    assert!(dead_cells_read(&session, hot, &board).await <= DEAD_CELLS_BOUND);

    // Then three workers race on it (and on two quieter keys): shuffled, same-microsecond ties,
    // negative scores, events older than the history's newest mixed with newer ones.
    let mut rng = rand::rng();
    let keys = [hot, hot, hot, Uuid::new_v4(), Uuid::new_v4()];
    let newest = base + 3000 * 100;
    let mut racing: Vec<Event> = (0..1500)
        .map(|i| {
            let profile = keys[rng.random_range(0..keys.len())];
            let at = newest - 20_000 + rng.random_range(0..400) * 100;
            event(10_000 + i, profile, &board, rng.random_range(-500..500), at)
        })
        .collect();
    racing.shuffle(&mut rng);
    let workers = replicas(&config, 3).await;
    publish_all(&js, &config, &racing).await;
    let total = racing.len() as u64;
    wait_until("the race processed", Duration::from_secs(180), || {
        workers.iter().map(Worker::processed).sum::<u64>() >= total
    })
    .await;
    let warned: u64 = workers
        .iter()
        .map(|w| tombstone_warnings(&w.metrics, "read_back"))
        .sum();
    for w in workers {
        w.stop().await;
    }
    let dead = dead_cells_read(&session, hot, &board).await;
    println!(
        "3 workers racing on a key with 3,000 changes: {dead} dead cells read, {warned} warnings"
    );
    assert!(dead <= DEAD_CELLS_BOUND, "{dead} dead cells");
    assert_eq!(warned, 0);
    let all: Vec<Event> = history.into_iter().chain(racing).collect();
    assert_final_state(&session, &all, config.scylla.leaderboard_buckets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_of_50_new_keys_is_a_handful_of_batched_requests() {
    let (_servers, mut config) = sharing("flushcost").await;
    // The flush closes on its 50th key, not on the linger.
    config.batch.linger = Duration::from_secs(5);
    let (_client, js, session) = nats_and_db(&config).await;
    let board = new_board("flushcost");
    let base = chrono::Utc::now().timestamp_micros() - 60_000_000;
    let events: Vec<Event> = (0..50)
        .map(|i| event(i, Uuid::new_v4(), &board, i as i64, base + i as i64))
        .collect();
    publish_all(&js, &config, &events).await;
    let worker = Worker::start(config.clone()).await;
    wait_until("the flush processed", Duration::from_secs(60), || {
        worker.processed() >= 50
    })
    .await;
    let m = worker.metrics.clone();
    worker.stop().await;

    assert_eq!(m.batch_size.get_sample_count(), 1, "one flush");
    assert_eq!(m.batch_size.get_sample_sum(), 50.0, "of 50 keys");
    let per_kind: Vec<(&str, u64)> = REQUESTS
        .iter()
        .map(|r| {
            (
                *r,
                m.scylla_query_duration
                    .with_label_values(&[r])
                    .get_sample_count(),
            )
        })
        .collect();
    let requests: u64 = per_kind.iter().map(|(_, n)| n).sum();
    let statements = m.scylla_statements.get_sample_sum() as u64;
    println!(
        "a 50-key flush: {requests} requests ({per_kind:?}), {statements} statements, {:.3} requests/event, {:.1} statements/request",
        requests as f64 / 50.0,
        statements as f64 / requests as f64
    );
    // 50 by-profile upserts, 50 leaderboard rows, 50 history rows, one read-back, 50 cache
    // invalidations (each event is its wallet's newest); nothing stale to delete or prune.
    assert_eq!(statements, 201, "{per_kind:?}");
    let count = |kind: &str| per_kind.iter().find(|(k, _)| *k == kind).unwrap().1;
    assert_eq!(
        count("read_back"),
        1,
        "one read for 50 keys of one board on one node"
    );
    assert_eq!(count("prune_ranked"), 0, "nothing stale in new keys");
    // Batched under the 4.5 KB limit: 12.5 KB of upserts, 19 KB of rows, 1.5 KB of invalidations.
    assert!(count("write_profiles") <= 4, "{per_kind:?}");
    assert!(count("write_rows") <= 6, "{per_kind:?}");
    assert!(count("cleanup") <= 1, "{per_kind:?}");
    assert!(
        requests <= 12,
        "{requests} requests for 50 events: {per_kind:?}"
    );
    assert_final_state(&session, &events, config.scylla.leaderboard_buckets).await;
}

/// Publishes every event (its own `Nats-Msg-Id`), 64 publish acks in flight.
async fn publish_all(js: &async_nats::jetstream::Context, config: &Config, events: &[Event]) {
    futures::stream::iter(events.iter().map(|e| publish(js, config, e, &e.event_id)))
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
}

async fn session_for(config: &Config) -> Session {
    score_worker::store::connect(&config.scylla)
        .await
        .expect("session")
}
