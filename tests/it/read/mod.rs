//! The read side against the real database: top N and pages against an independent sort, paging
//! under racing updates, the eligibility cache with the real worker's invalidation, and repairs racing
//! a live worker. The bounds on what a caller can ask: [`limits`].

mod history;
mod limits;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use score_worker::metrics::Metrics;
use score_worker::pipeline::Store;
use score_worker::read::{CacheResult, Cursor, Rank, Reader};
use score_worker::score::ScoreUpdate;
use score_worker::store::ScyllaStore;
use uuid::Uuid;

use crate::support::*;

async fn open(config: &score_worker::config::Config) -> (Arc<ScyllaStore>, Reader, Arc<Metrics>) {
    let session = Arc::new(session().await);
    let metrics = Arc::new(Metrics::new());
    let store = ScyllaStore::new(session.clone(), &config.scylla, metrics.clone())
        .await
        .expect("store");
    let reader = Reader::new(session, &config.scylla, metrics.clone())
        .await
        .expect("reader");
    (Arc::new(store), reader, metrics)
}

fn update(board: &str, profile: Uuid, score: i64, at: i64) -> ScoreUpdate {
    ScoreUpdate {
        event_id: format!("read-{}", Uuid::new_v4()),
        profile_id: profile,
        wallet_address: wallet_of(profile),
        leaderboard_id: board.to_string(),
        score,
        occurred_at_micros: at,
    }
}

/// Writes through the worker's store, 50 keys per flush (history included).
async fn write_all(store: &ScyllaStore, updates: &[ScoreUpdate]) {
    for chunk in updates.chunks(50) {
        store.write(chunk, chunk, &[]).await.expect("write");
    }
}

/// The board in order, sorted here by score descending then profile bytes (random ids, version 4).
fn sorted(scores: &HashMap<Uuid, i64>) -> Vec<(i64, Uuid)> {
    let mut v: Vec<(i64, Uuid)> = scores.iter().map(|(p, s)| (*s, *p)).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.as_bytes().cmp(b.1.as_bytes())));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_n_pages_and_ranks_equal_an_independent_sort_across_buckets() {
    let (_servers, config) = sharing("read_top").await;
    let (store, reader, _) = open(&config).await;
    let board = new_board("read-top");
    let mut rng = rand::rng();
    let base = chrono::Utc::now().timestamp_micros() - 3_600_000_000;
    // 700 profiles, scores in -30..30: many ties within and across buckets, negatives.
    let profiles = new_profiles(700);
    let first: Vec<ScoreUpdate> = profiles
        .iter()
        .map(|p| update(&board, *p, rng.random_range(-30..30), base))
        .collect();
    write_all(&store, &first).await;
    // A second, newer score for a third of them: the old rows must be gone from every read.
    let second: Vec<ScoreUpdate> = profiles
        .iter()
        .step_by(3)
        .map(|p| update(&board, *p, rng.random_range(-30..30), base + 1_000))
        .collect();
    write_all(&store, &second).await;
    let mut want: HashMap<Uuid, i64> = HashMap::new();
    for u in first.iter().chain(&second) {
        want.insert(u.profile_id, u.score);
    }
    let want = sorted(&want);

    for n in [1, 7, 100, 699, 700, 1000] {
        let page = reader.top(&board, n).await.expect("top");
        let got: Vec<(i64, Uuid)> = page
            .entries
            .iter()
            .map(|e| (e.score, e.profile_id))
            .collect();
        assert_eq!(got, want[..n.min(want.len())], "top {n}");
        assert_eq!(page.next.is_some(), n <= want.len(), "next of top {n}");
    }
    let top = reader.top(&board, 3).await.unwrap();
    assert_eq!(
        top.entries[0].wallet_address,
        wallet_of(top.entries[0].profile_id)
    );

    assert_pages_add_up(&reader, &board, &want).await;

    assert_ranks(&reader, &board, &want).await;

    // A profile's scores and the wallet look-up.
    let other = format!("{board}-b");
    let p = profiles[0];
    write_all(&store, &[update(&other, p, -7, base)]).await;
    let mine = reader.scores(p).await.unwrap();
    let boards: HashSet<&str> = mine.iter().map(|s| s.leaderboard_id.as_str()).collect();
    assert_eq!(boards, HashSet::from([board.as_str(), other.as_str()]));
    let by_wallet = reader
        .by_wallet(&wallet_of(p).to_uppercase().replace("0X", "0x"))
        .await
        .unwrap();
    assert_eq!(by_wallet.len(), 2, "{by_wallet:?}");
    assert!(by_wallet.iter().all(|s| s.profile_id == p));
}

/// Pages of 37 from the top, each after the previous page's last row, add up to the board (`want`,
/// best first); a cursor that is not a row of the board gives everything below it.
async fn assert_pages_add_up(reader: &Reader, board: &str, want: &[(i64, Uuid)]) {
    // Pages of 37 from the top, each after the previous page's last row, add up to the board.
    let mut walked = Vec::new();
    let mut page = reader.top(board, 37).await.unwrap();
    loop {
        walked.extend(page.entries.iter().map(|e| (e.score, e.profile_id)));
        match page.next {
            Some(after) => page = reader.page_after(board, after, 37).await.unwrap(),
            None => break,
        }
    }
    assert_eq!(walked, want, "pages after pages");
    // A cursor that is not a row of the board: everything below it.
    let after = Cursor {
        score: 0,
        profile_id: Uuid::nil(),
    };
    let below = reader.page_after(board, after, 1000).await.unwrap();
    let expect_below: Vec<(i64, Uuid)> = want
        .iter()
        .copied()
        .filter(|(s, p)| *s < 0 || (*s == 0 && p.as_bytes() > Uuid::nil().as_bytes()))
        .collect();
    let got: Vec<(i64, Uuid)> = below
        .entries
        .iter()
        .map(|e| (e.score, e.profile_id))
        .collect();
    assert_eq!(got, expect_below);
}

/// Ranks: the position in the independent sort `want`; the band is the run of equal scores; a
/// profile not on the board has none.
async fn assert_ranks(reader: &Reader, board: &str, want: &[(i64, Uuid)]) {
    for i in [0, 1, 350, 699] {
        let (score, profile) = want[i];
        let Some(Rank::Exact(rank)) = reader.rank(board, profile).await.unwrap() else {
            panic!("#{i} not ranked exactly within the default budget");
        };
        let best = want.iter().position(|(s, _)| *s == score).unwrap() as u64 + 1;
        let tied = want.iter().filter(|(s, _)| *s == score).count() as u64;
        assert_eq!(
            (rank.rank, rank.score),
            (i as u64 + 1, score),
            "rank of #{i}"
        );
        assert_eq!(
            (rank.best, rank.worst, rank.tied),
            (best, best + tied - 1, tied)
        );
    }
    assert_eq!(reader.rank(board, Uuid::new_v4()).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_skips_and_repeats_nothing_while_updates_race_it() {
    let (_servers, config) = sharing("read_race").await;
    let (store, reader, _) = open(&config).await;
    let board = new_board("read-race");
    let mut rng = rand::rng();
    let base = chrono::Utc::now().timestamp_micros() - 3_600_000_000;
    // Stable profiles are never updated during the walk; hot ones change score all the time, moving
    // across the cursor (and deleting rows before it) while the pages are read.
    let stable: Vec<ScoreUpdate> = (0..400)
        .map(|_| update(&board, Uuid::new_v4(), rng.random_range(-100..100), base))
        .collect();
    let hot = new_profiles(40);
    let hot_first: Vec<ScoreUpdate> = hot
        .iter()
        .map(|p| update(&board, *p, rng.random_range(-100..100), base))
        .collect();
    write_all(&store, &stable).await;
    write_all(&store, &hot_first).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let (store, stop, board, hot) = (store.clone(), stop.clone(), board.clone(), hot.clone());
        tokio::spawn(async move {
            let mut rounds = 0u64;
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rounds += 1;
                let batch: Vec<ScoreUpdate> = hot
                    .iter()
                    .map(|p| {
                        update(
                            &board,
                            *p,
                            rng.random_range(-100..100),
                            base + rounds as i64,
                        )
                    })
                    .collect();
                store.write(&batch, &[], &[]).await.expect("racing write");
            }
            rounds
        })
    };
    let mut seen: Vec<(i64, Uuid)> = Vec::new();
    let mut page = reader.top(&board, 20).await.unwrap();
    loop {
        seen.extend(page.entries.iter().map(|e| (e.score, e.profile_id)));
        match page.next {
            Some(after) => page = reader.page_after(&board, after, 20).await.unwrap(),
            None => break,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = racer.await.unwrap();
    assert!(rounds >= 3, "the updates raced the walk ({rounds} rounds)");

    // The walk is in strict board order (so no row twice), and every stable row is in it once.
    for w in seen.windows(2) {
        let ahead = w[0].0 > w[1].0 || (w[0].0 == w[1].0 && w[0].1.as_bytes() < w[1].1.as_bytes());
        assert!(ahead, "out of order: {:?} then {:?}", w[0], w[1]);
    }
    let stable_seen: Vec<(i64, Uuid)> = seen
        .iter()
        .copied()
        .filter(|(_, p)| !hot.contains(p))
        .collect();
    let mut want: HashMap<Uuid, i64> = HashMap::new();
    for u in &stable {
        want.insert(u.profile_id, u.score);
    }
    assert_eq!(
        stable_seen,
        sorted(&want),
        "stable rows: no gap, no duplicate"
    );
}

/// Polls the by-profile score until it is `score`.
async fn wait_for_score(reader: &Reader, profile: Uuid, board: &str, score: i64) {
    let what = format!("score {score}");
    poll(
        &what,
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let now = reader.scores(profile).await.unwrap();
            let arrived = now
                .iter()
                .any(|s| s.leaderboard_id == board && s.score == score);
            arrived.then_some(()).ok_or_else(|| format!("{now:?}"))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eligibility_cache_misses_hits_is_invalidated_by_the_worker_and_expires() {
    let (_servers, config) = sharing("read_cache").await;
    let (_client, js) = jetstream(&config).await;
    let worker = Worker::start(config.clone()).await;
    let ttl = Duration::from_secs(3);
    let (_, reader, metrics) = open(&config).await;
    let reader = reader.with_cache_ttl(ttl);
    let board = new_board("read-cache");
    let profile = Uuid::new_v4();
    let wallet = wallet_of(profile);
    let at = chrono::Utc::now().timestamp_micros() - 10_000_000;
    let event = |score: i64, at_micros: i64| Event {
        event_id: format!("cache-{}", Uuid::new_v4()),
        profile,
        wallet: wallet.clone(),
        leaderboard: board.clone(),
        score,
        at_micros,
    };
    let first = event(10, at);
    worker
        .publish_and_wait((&js, &config), &first, 1, "first event processed")
        .await;
    wait_for_score(&reader, profile, &board, 10).await;
    let count = |result: &str| {
        metrics
            .eligibility_cache_requests
            .with_label_values(&[result])
            .get()
    };

    let a = reader.eligibility(&wallet, &board, 5).await.unwrap();
    assert_eq!(
        (a.cache, a.eligible, a.score),
        (CacheResult::Miss, true, Some(10))
    );
    let b = reader.eligibility(&wallet, &board, 5).await.unwrap();
    assert_eq!(
        (b.cache, b.eligible, b.score),
        (CacheResult::Hit, true, Some(10))
    );
    assert_eq!((count("hit"), count("miss")), (1, 1));
    // Another threshold is another question: a miss.
    let c = reader.eligibility(&wallet, &board, 11).await.unwrap();
    assert_eq!((c.cache, c.eligible), (CacheResult::Miss, false));

    // A newer score through NATS and the real worker: its clean-up drops the wallet's entries.
    let newer = event(3, at + 1_000_000);
    worker
        .publish_and_wait((&js, &config), &newer, 2, "newer event processed")
        .await;
    let d = reader.eligibility(&wallet, &board, 5).await.unwrap();
    assert_eq!(
        (d.cache, d.eligible, d.score),
        (CacheResult::Miss, false, Some(3))
    );
    let written = tokio::time::Instant::now();
    let e = reader.eligibility(&wallet, &board, 5).await.unwrap();
    assert_eq!((e.cache, e.score), (CacheResult::Hit, Some(3)));

    // After the TTL: a miss again (hits until then).
    let deadline = written + Duration::from_secs(20);
    loop {
        let r = reader.eligibility(&wallet, &board, 5).await.unwrap();
        if r.cache == CacheResult::Miss {
            assert_eq!(r.score, Some(3));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the entry never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lived = written.elapsed();
    // TTLs count whole seconds on the server: an entry may go up to a second early.
    assert!(
        lived >= ttl - Duration::from_millis(1_100),
        "expired after {lived:?}, TTL {ttl:?}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairs_keep_the_invariant_under_a_concurrent_worker() {
    let (_servers, mut config) = sharing("read_crud").await;
    config.batch.max_scores = 5;
    config.batch.linger = Duration::from_millis(5);
    let (_client, js) = jetstream(&config).await;
    let (store, reader, _) = open(&config).await;
    let board = new_board("read-crud");
    let profiles = new_profiles(6);
    let base = chrono::Utc::now().timestamp_micros() - 60_000_000;
    let (events, upserts, deletes) = events_and_repairs(&board, &profiles, base);

    run_with_repairs(&config, &js, &store, &board, (&events, &upserts, &deletes)).await;

    let session = session().await;
    let rows = leaderboard_rows(
        &session,
        std::slice::from_ref(&board),
        config.scylla.leaderboard_buckets,
    )
    .await;
    let problems = invariant_problems(
        &store,
        &board,
        &profiles,
        &rows,
        (&events, &upserts, &deletes),
    )
    .await;
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(
        store.get(profiles[0], &board).await.unwrap(),
        None,
        "deleted last"
    );
    assert_eq!(
        store
            .get(profiles[2], &board)
            .await
            .unwrap()
            .map(|s| s.key.score),
        Some(77)
    );
    // The read API agrees with the tables.
    let top = reader.top(&board, 100).await.unwrap();
    assert_eq!(top.entries.len(), rows.len());

    // The CLI does the same: a set, a JSON top, a delete.
    cli_sets_shows_and_deletes_a_score(&config, &format!("{board}-cli"));
}

/// The repairs test's traffic on `board`: 600 events and 60 upserts at even microseconds after
/// `base` (ties among them), 40 deletes at odd ones, on `profiles`; the last word for two keys is a
/// delete (after every event), for one an upsert (score 77).
fn events_and_repairs(
    board: &str,
    profiles: &[Uuid],
    base: i64,
) -> (Vec<Event>, Vec<Event>, Vec<(Uuid, i64)>) {
    let mut rng = rand::rng();
    // Events at even microseconds (ties among them), deletes at odd ones: the newest of all wins.
    let mut random_events = |prefix: &str, n: usize| -> Vec<Event> {
        (0..n)
            .map(|i| {
                let profile = profiles[rng.random_range(0..profiles.len())];
                Event::new(
                    format!("{prefix}-{i}"),
                    profile,
                    board,
                    rng.random_range(-40..40),
                    base + 2 * rng.random_range(0..300),
                )
            })
            .collect()
    };
    let events = random_events("crud", 600);
    let upserts = random_events("repair", 60);
    let deletes: Vec<(Uuid, i64)> = (0..40)
        .map(|_| {
            let profile = profiles[rng.random_range(0..profiles.len())];
            (profile, base + 2 * rng.random_range(0..300) + 1)
        })
        .collect();
    // The last word for two keys is a delete (after every event), for one an upsert.
    let deletes: Vec<(Uuid, i64)> = deletes
        .into_iter()
        .chain([(profiles[0], base + 1_001), (profiles[1], base + 1_001)])
        .collect();
    let upserts: Vec<Event> = upserts
        .into_iter()
        .chain([Event::new(
            "repair-last",
            profiles[2],
            board,
            77,
            base + 1_002,
        )])
        .collect();
    (events, upserts, deletes)
}

/// Two workers take `events` from the live stream while the upserts and deletes run as repairs,
/// several at once; returns once every event is processed and the workers are stopped.
async fn run_with_repairs(
    config: &score_worker::config::Config,
    js: &async_nats::jetstream::Context,
    store: &Arc<ScyllaStore>,
    board: &str,
    (events, upserts, deletes): (&[Event], &[Event], &[(Uuid, i64)]),
) {
    let workers = replicas(config, 2).await;
    let publisher = {
        let (js, config, events) = (js.clone(), config.clone(), events.to_vec());
        tokio::spawn(async move {
            for e in &events {
                publish(&js, &config, e, &e.event_id).await;
            }
        })
    };
    // Repairs interleaved with the live stream, several at once.
    let mut repairs = Vec::new();
    for u in upserts {
        let update = update(board, u.profile, u.score, u.at_micros);
        let store = store.clone();
        repairs.push(tokio::spawn(async move {
            store.upsert(&update).await.expect("upsert")
        }));
    }
    for &(profile, at) in deletes {
        let (store, board) = (store.clone(), board.to_string());
        repairs.push(tokio::spawn(async move {
            store.delete(profile, &board, at).await.expect("delete");
        }));
    }
    for r in repairs {
        r.await.unwrap();
    }
    publisher.await.unwrap();
    let total = events.len() as u64;
    wait_until("all events processed", Duration::from_secs(120), || {
        workers.iter().map(Worker::processed).sum::<u64>() >= total
    })
    .await;
    for w in workers {
        w.stop().await;
    }
}

/// Keys whose leaderboard rows or by-profile score differ from the newest of their events, upserts
/// and deletes (a delete wins a tie, but there is none).
async fn invariant_problems(
    store: &ScyllaStore,
    board: &str,
    profiles: &[Uuid],
    rows: &HashMap<(String, Uuid), Vec<i64>>,
    (events, upserts, deletes): (&[Event], &[Event], &[(Uuid, i64)]),
) -> Vec<String> {
    // The newest of events, upserts and deletes per key (a delete wins a tie, but there is none).
    let all: Vec<Event> = events.iter().chain(upserts).cloned().collect();
    let newest_event = expected(&all);
    let mut newest_at: HashMap<Uuid, i64> = HashMap::new();
    for e in &all {
        let t = newest_at.entry(e.profile).or_insert(e.at_micros);
        *t = (*t).max(e.at_micros);
    }
    let mut problems = Vec::new();
    for p in profiles {
        let deleted_at = deletes
            .iter()
            .filter(|(q, _)| q == p)
            .map(|(_, t)| *t)
            .max();
        let event_at = newest_at.get(p).copied();
        let want = match (event_at, deleted_at) {
            (Some(e), Some(d)) if d > e => None,
            (Some(_), _) => newest_event.get(&(board.to_string(), *p)).copied(),
            (None, _) => None,
        };
        let got = rows
            .get(&(board.to_string(), *p))
            .cloned()
            .unwrap_or_default();
        let current = store.get(*p, board).await.unwrap().map(|s| s.key.score);
        if got != want.into_iter().collect::<Vec<_>>() || current != want {
            problems.push(format!(
                "{p}: want {want:?}, leaderboard rows {got:?}, by profile {current:?}"
            ));
        }
    }
    problems
}

/// `score set`, `query top --json` and `score delete` on `board`.
fn cli_sets_shows_and_deletes_a_score(config: &score_worker::config::Config, board: &str) {
    let p = Uuid::new_v4();
    let out = cli(
        config,
        &[
            "score",
            "set",
            "--profile",
            &p.to_string(),
            "--leaderboard",
            board,
            "--wallet",
            &wallet_of(p),
            "--score",
            "-12",
        ],
    );
    assert!(out.starts_with("written"), "{out}");
    let json = cli(config, &["query", "top", "--leaderboard", board, "--json"]);
    let page: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(page["entries"][0]["score"], -12, "{json}");
    assert_eq!(page["entries"][0]["profile_id"], p.to_string());
    cli(
        config,
        &[
            "score",
            "delete",
            "--profile",
            &p.to_string(),
            "--leaderboard",
            board,
        ],
    );
    let json = cli(config, &["query", "top", "--leaderboard", board, "--json"]);
    assert!(json.contains("\"entries\": []"), "{json}");
}
