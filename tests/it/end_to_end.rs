//! N events end up exactly right in every table, with duplicates and reordering.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use uuid::Uuid;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_exactly_in_every_table_despite_duplicates_and_reordering() {
    let (_servers, config) = sharing("e2e").await;
    let (_client, js, session) = nats_and_db(&config).await;
    let mut rng = rand::rng();
    let boards = new_boards("e2e", 3);
    let profiles = new_profiles(40);

    // A cached eligibility entry for one wallet: the worker must invalidate it.
    let cached = profiles[0];
    session
        .query_unpaged(
            format!("INSERT INTO {KEYSPACE}.eligibility_cache (wallet_address, leaderboard_id, eligible) VALUES (?, ?, true)"),
            (wallet_of(cached), &boards[0]),
        )
        .await
        .unwrap();

    let mut events = events_on_boards(&boards, &profiles, cached);
    events.shuffle(&mut rng); // out of order
                              // 50 redeliveries-in-effect: the same event again under another NATS message id.
    let duplicates: Vec<Event> = events.iter().take(50).cloned().collect();

    let worker = Worker::start(config.clone()).await;
    publish_all(&js, &config, &events).await;
    for e in &duplicates {
        publish(&js, &config, e, &format!("{}-again", e.event_id)).await;
    }
    // The same message id twice: NATS drops the second copy itself.
    publish(&js, &config, &events[0], &events[0].event_id).await;

    let total = (events.len() + duplicates.len()) as u64;
    wait_until("all messages processed", Duration::from_secs(60), || {
        worker.processed() >= total
    })
    .await;
    assert_eq!(worker.processed(), total);
    worker.stop().await;

    assert_final_state(&session, &events, config.scylla.leaderboard_buckets).await;

    let mut history = history_event_ids(&session, &events).await;
    history.sort();
    let mut want: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    want.sort();
    assert_eq!(
        history, want,
        "one history row per event, duplicates collapsed"
    );

    assert_cache_invalidated(&session, cached).await;
}

/// 400 events over `boards` and `profiles`, the first three of `cached` on the first board.
fn events_on_boards(boards: &[String], profiles: &[Uuid], cached: Uuid) -> Vec<Event> {
    let mut rng = rand::rng();
    (0..400)
        .map(|i| {
            let profile = if i < 3 {
                cached
            } else {
                profiles[rng.random_range(0..profiles.len())]
            };
            Event {
                event_id: format!("evt-{i}-{}", Uuid::new_v4().simple()),
                profile,
                wallet: wallet_of(profile),
                leaderboard: boards[if i < 3 {
                    0
                } else {
                    rng.random_range(0..boards.len())
                }]
                .clone(),
                score: rng.random_range(-1000..1_000_000),
                at_micros: recent_micros(&mut rng),
            }
        })
        .collect()
}

/// The eligibility cache holds nothing for the wallet of `cached` any more.
async fn assert_cache_invalidated(session: &scylla::client::session::Session, cached: Uuid) {
    let cache = session
        .query_unpaged(
            format!(
                "SELECT leaderboard_id FROM {KEYSPACE}.eligibility_cache WHERE wallet_address = ?"
            ),
            (wallet_of(cached),),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    assert_eq!(
        cache.rows_num(),
        0,
        "eligibility cache of a changed wallet is invalidated"
    );
}
