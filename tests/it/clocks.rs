//! Event time against the time JetStream stored the message (issue 18, item 1): a producer whose
//! clock runs fast cannot hold a key beyond `validation.max_ahead_of_arrival`.

use std::time::Duration;

use uuid::Uuid;

use crate::support::*;

fn event(board: &str, profile: Uuid, score: i64, at_micros: i64) -> Event {
    Event::new(
        format!("clock-{score}-{}", Uuid::new_v4().simple()),
        profile,
        board,
        score,
        at_micros,
    )
}

/// A producer four minutes fast, then correct events for the same key: the correct later ones win,
/// the fast one is written at its arrival + the allowance and counted; one ten minutes ahead (past
/// `max_clock_skew` after its arrival) is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_four_minutes_fast_does_not_freeze_the_key() {
    let (_servers, config) = sharing("clocks").await;
    let allowance = config.validation.max_ahead_of_arrival;
    let (_client, js, session) = nats_and_db(&config).await;
    let board = new_board("clocks");
    let profile = Uuid::new_v4();
    let worker = Worker::start(config.clone()).await;

    let now = || chrono::Utc::now().timestamp_micros();
    let fast = event(&board, profile, 999, now() + 240_000_000);
    worker
        .publish_and_wait((&js, &config), &fast, 1, "the fast event written")
        .await;
    // The correct producer's next events happen after the fast one's arrival + the allowance.
    tokio::time::sleep(allowance + Duration::from_millis(500)).await;
    let mut correct = Vec::new();
    for score in 1..=3 {
        let e = event(&board, profile, score, now());
        publish(&js, &config, &e, &e.event_id).await;
        correct.push(e);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = Uuid::new_v4();
    let far = event(&board, other, 5, now() + 600_000_000);
    publish(&js, &config, &far, &far.event_id).await;
    wait_until("every event settled", Duration::from_secs(30), || {
        worker.processed() >= 4 && dead_lettered(&worker.metrics) >= 1
    })
    .await;

    let key = (board.clone(), profile);
    let by_profile = profile_scores(&session, [key.clone()].into_iter()).await;
    let rows = leaderboard_rows(
        &session,
        std::slice::from_ref(&board),
        config.scylla.leaderboard_buckets,
    )
    .await;
    let clamped = worker
        .metrics
        .events_clock
        .with_label_values(&["clamped"])
        .get();
    let refused = worker
        .metrics
        .events_clock
        .with_label_values(&["refused"])
        .get();
    eprintln!(
        "fast producer (+4 min) then 3 correct events: by-profile {:?}, leaderboard {:?}; clamped {clamped}, refused {refused}",
        by_profile[&key],
        rows.get(&key)
    );
    assert_eq!(
        by_profile[&key],
        (Some(3), Some(wallet_of(profile))),
        "the last correct score is current"
    );
    assert_eq!(rows.get(&key), Some(&vec![3]), "once on the leaderboard");
    assert_eq!(
        rows.get(&(board.clone(), other)),
        None,
        "the refused one is not"
    );
    assert_eq!(clamped, 1, "the fast event is counted");
    assert_eq!(refused, 1, "the one past max_clock_skew is counted");
    assert_eq!(dead_letters_for(&worker.metrics, "future_timestamp"), 1);
    worker.stop().await;
}
