//! The leaderboard invariant under concurrent replicas: several workers on one durable consumer,
//! many out-of-order updates (with same-microsecond ties and negative scores) to a few profiles.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_keep_each_profile_once_at_its_newest_score() {
    let (_servers, mut config) = sharing("inv").await;
    config.batch.max_scores = 5; // many small flushes in flight at once
    config.batch.linger = Duration::from_millis(5);
    let (_client, js, session) = nats_and_db(&config).await;
    let mut rng = rand::rng();
    let boards = new_boards("inv", 2);
    let profiles = new_profiles(5);
    let base = chrono::Utc::now().timestamp_micros() - 60_000_000;
    let mut events: Vec<Event> = (0..1500)
        .map(|i| {
            let profile = profiles[rng.random_range(0..profiles.len())];
            let board = &boards[rng.random_range(0..boards.len())];
            // 400 distinct microseconds for ~150 events per key: ties are common.
            let at_micros = base + rng.random_range(0..400);
            Event::new(
                format!("inv-{i}"),
                profile,
                board,
                rng.random_range(-50..50),
                at_micros,
            )
        })
        .collect();
    events.shuffle(&mut rng);

    let workers = replicas(&config, 3).await;
    for e in &events {
        publish(&js, &config, e, &e.event_id).await;
    }
    let total = events.len() as u64;
    wait_until("all messages processed", Duration::from_secs(120), || {
        workers.iter().map(Worker::processed).sum::<u64>() >= total
    })
    .await;
    let shares: Vec<u64> = workers.iter().map(Worker::processed).collect();
    assert!(
        shares.iter().filter(|n| **n > 0).count() >= 2,
        "work was shared: {shares:?}"
    );
    for w in workers {
        w.stop().await;
    }
    assert_final_state(&session, &events, config.scylla.leaderboard_buckets).await;
}
