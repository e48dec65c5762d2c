//! What a write does when one key's rows are not what the protocol left (issue 17, item 1): a key
//! an operator deleted with plain CQL, at server time, after the events still in flight for it.
//! (A key past the tombstone threshold and refused grants need a specially configured Cassandra:
//! `tests/security/refusals.rs`.)

use std::time::Duration;

use rand::Rng;
use score_worker::store;
use uuid::Uuid;

use crate::support::*;

/// An operator removes a profile from a board with plain CQL (its `scores_by_profile` row and its
/// leaderboard row), at server time. An event of that key older than the delete then arrives, in a
/// flush with other keys: its rows lose to the delete, its read-back finds no row. The key is
/// superseded by the delete — acked, its own new leaderboard row removed — not failed, and the
/// flush-mates land. An event newer than the delete brings the key back, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_with_plain_cql_after_its_event_is_superseded_not_held() {
    let (_servers, config) = sharing("oob_delete").await;
    let buckets = config.scylla.leaderboard_buckets;
    let (_client, js, session) = nats_and_db(&config).await;
    let worker = Worker::start(config.clone()).await;
    let board = new_board("oob");
    let profile = Uuid::new_v4();
    let now = chrono::Utc::now().timestamp_micros();
    let event = |tag: &str, profile: Uuid, score: i64, at_micros: i64| {
        Event::new(
            format!("oob-{tag}-{}", Uuid::new_v4().simple()),
            profile,
            &board,
            score,
            at_micros,
        )
    };

    let first = event("first", profile, 100, now - 60_000_000);
    worker
        .publish_and_wait((&js, &config), &first, 1, "the first event written")
        .await;
    delete_with_plain_cql(
        &session,
        &board,
        profile,
        store::bucket_of(profile, buckets),
    )
    .await;

    // Older than the delete (newer than the first event), in one flush with 20 other keys.
    let late = event("late", profile, 200, now - 30_000_000);
    let mut rng = rand::rng();
    let others: Vec<Event> = (0..20)
        .map(|i| {
            let score = rng.random_range(0..1_000_000);
            event(
                &format!("other{i}"),
                Uuid::new_v4(),
                score,
                now - 20_000_000,
            )
        })
        .collect();
    publish_all(&js, &config, &others[..10]).await;
    publish(&js, &config, &late, &late.event_id).await;
    publish_all(&js, &config, &others[10..]).await;
    let settled = "the flush with the deleted key settled";
    wait_processed_or_report(&worker, 22, Duration::from_secs(60), settled).await;
    assert_eq!(dead_lettered(&worker.metrics), 0, "nothing dead-lettered");
    let key = (board.clone(), profile);
    let rows = leaderboard_rows(&session, std::slice::from_ref(&board), buckets).await;
    assert_eq!(
        rows.get(&key),
        None,
        "the deleted key has no leaderboard row: the late event's own row was removed"
    );
    let profiles = profile_scores(&session, std::iter::once(key.clone())).await;
    assert_eq!(profiles[&key], (None, None), "and no score");
    assert_final_state(&session, &others, buckets).await;

    // An event after the delete brings the key back, exactly once.
    let back = event("back", profile, 300, chrono::Utc::now().timestamp_micros());
    worker
        .publish_and_wait((&js, &config), &back, 23, "the key brought back")
        .await;
    worker.stop().await;
    let mut all = others.clone();
    all.push(back);
    assert_final_state(&session, &all, buckets).await;
    eprintln!(
        "out-of-band delete: the late event acked as superseded (no row, no score), 20 flush-mates and the later event in place"
    );
}

/// Deletes the key's `scores_by_profile` row and its leaderboard row (score 100 in `bucket`) with
/// plain CQL, as an operator would.
async fn delete_with_plain_cql(
    session: &scylla::client::session::Session,
    board: &str,
    profile: Uuid,
    bucket: i32,
) {
    for cql in [
        format!("DELETE FROM {KEYSPACE}.scores_by_profile WHERE profile_id = {profile}"),
        format!(
            "DELETE FROM {KEYSPACE}.scores WHERE leaderboard_id = '{board}' AND bucket = {} \
             AND score = 100 AND profile_id = {profile}",
            bucket
        ),
    ] {
        session.query_unpaged(cql, ()).await.unwrap();
    }
}
