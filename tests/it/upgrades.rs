//! Upgrades while running (issue 18, item 2), each in a keyspace of its own:
//! - `migrate` of a newer, additive version (a test-only version appended to the product's list with
//!   `schema::migrate_with`) while a worker writes: the worker stays ready and keeps writing, and a
//!   worker started afterwards — an older build against a newer, compatible schema — is ready;
//! - a newer version outside the window: the running worker turns unready and stops pulling, a new one
//!   refuses to start, `check` says why;
//! - `rebuild-scores --buckets N` against live traffic of workers with the new count: every key ends
//!   exactly once, at its newest score, in its new bucket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use score_worker::config::Config;
use score_worker::schema::{self, Migration, MIGRATIONS};
use score_worker::store;
use scylla::client::session::Session;
use uuid::Uuid;

use crate::support::*;

/// Schema changes wait for the nodes' agreement: slower than a write on a loaded machine.
const SCHEMA_TIMEOUT: Duration = Duration::from_secs(60);

/// The test's own keyspace, migrated with the product's versions.
async fn own_keyspace(tag: &str, buckets: i32) -> (Config, Session) {
    let mut config = base_config(tag);
    config.scylla.keyspace = format!("it_{tag}_{}", &Uuid::new_v4().simple().to_string()[..8]);
    config.scylla.leaderboard_buckets = buckets;
    let mut admin = config.scylla.clone();
    admin.request_timeout = SCHEMA_TIMEOUT;
    let session = store::connect(&admin).await.expect("session");
    schema::migrate(&session, &admin, false)
        .await
        .expect("migrate");
    (config, session)
}

/// `migrate` of a newer build: the product's versions and version 4 (test only) accepting writers
/// from `oldest_writer`.
async fn migrate_to_v4(session: &Session, config: &Config, oldest_writer: i32) -> Vec<String> {
    let mut migrations: Vec<Migration> = MIGRATIONS
        .iter()
        .map(|m| Migration {
            version: m.version,
            name: m.name,
            cql: m.cql,
            oldest_writer: m.oldest_writer,
        })
        .collect();
    migrations.push(Migration {
        version: 4,
        name: "0004_test_only",
        cql: "CREATE TABLE IF NOT EXISTS upgrade_test_only (id int PRIMARY KEY, note text);",
        oldest_writer,
    });
    let mut admin = config.scylla.clone();
    admin.request_timeout = SCHEMA_TIMEOUT;
    schema::migrate_with(session, &admin, &migrations, false)
        .await
        .expect("migrate to version 4")
}

fn events(n: usize, boards: &[String], profiles: &[Uuid]) -> Vec<Event> {
    let mut rng = rand::rng();
    (0..n)
        .map(|i| {
            let profile = profiles[rng.random_range(0..profiles.len())];
            Event::new(
                format!("up-{i}-{}", Uuid::new_v4().simple()),
                profile,
                &boards[rng.random_range(0..boards.len())],
                rng.random_range(-1000..1_000_000),
                recent_micros(&mut rng),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stays_ready_and_writing_while_migrate_applies_an_additive_version() {
    let _servers = shared().await;
    let (config, admin) = own_keyspace("upgrade", 16).await;
    let ks = config.scylla.keyspace.clone();
    let (_client, js) = jetstream(&config).await;
    let boards = new_boards("up", 2);
    let profiles = new_profiles(60);
    let before = events(300, &boards, &profiles);
    let after = events(300, &boards, &profiles);

    let worker = Worker::start(config.clone()).await;
    let addr = worker.addr;
    readyz_until(addr, 200, "ready").await;
    // Every answer of /readyz from here on, until the end of the test.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn({
        let watching = watching.clone();
        async move {
            let mut unready = Vec::new();
            while watching.load(Ordering::Relaxed) {
                let (status, body) = http_get(addr, "/readyz").await;
                if status != 200 {
                    unready.push(body);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            unready
        }
    });

    for e in &before {
        publish(&js, &config, e, &e.event_id).await;
    }
    let plan = migrate_to_v4(&admin, &config, 3).await;
    assert!(
        plan.iter()
            .any(|l| l == "record version 4 (0004_test_only), writers from version 3"),
        "{plan:?}"
    );
    let written_at_migrate = worker.processed();
    let body = readyz_until(addr, 200, "ahead and compatible").await;
    for e in &after {
        publish(&js, &config, e, &e.event_id).await;
    }
    wait_drained(&js, &config, Duration::from_secs(60)).await;
    let total = (before.len() + after.len()) as u64;
    wait_until("every event written", Duration::from_secs(30), || {
        worker.processed() >= total
    })
    .await;
    watching.store(false, Ordering::Relaxed);
    let unready = watcher.await.unwrap();
    assert!(
        unready.is_empty(),
        "unready while the schema moved to a compatible version 4: {:?}",
        &unready[..unready.len().min(3)]
    );
    let all: Vec<Event> = before.iter().chain(&after).cloned().collect();
    assert_final_state_in(&admin, &ks, &all, config.scylla.leaderboard_buckets).await;

    // An older build (this one, expecting 3) started against the newer schema: ready, and says why.
    let older = Worker::start(config.clone()).await;
    let older_body = readyz_until(older.addr, 200, "ahead and compatible").await;
    older.stop().await;
    let out = worker_command(&config, 0).arg("check").output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("[ok]   keyspace") && report.contains("ahead and compatible"),
        "{report}"
    );
    worker.stop().await;
    eprintln!(
        "upgrade: {written_at_migrate} of {total} written when version 4 (writers from 3) was applied, \
         never unready; /readyz `{}`; a new worker: `{}`",
        body.trim(),
        older_body.trim()
    );
    let _ = drop_keyspace(&admin, &ks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_outside_the_window_stops_the_worker_and_says_why() {
    let _servers = shared().await;
    let (config, admin) = own_keyspace("narrow", 16).await;
    let ks = config.scylla.keyspace.clone();
    let (_client, _js) = jetstream(&config).await;
    let worker = Worker::start(config.clone()).await;
    readyz_until(worker.addr, 200, "ready").await;

    migrate_to_v4(&admin, &config, 4).await;
    let body = readyz_until(worker.addr, 503, "ahead and not compatible").await;
    assert!(
        body.contains("version 4 accepts writers from version 4"),
        "{body}"
    );
    assert_eq!(worker.metrics.pulls_paused.get(), 1, "pulls paused");

    let refused = match score_worker::app::App::build(config.clone()).await {
        Ok(_) => panic!("a worker started against a schema outside its window"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("not compatible"), "{refused}");
    let out = worker_command(&config, 0).arg("check").output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("[FAIL] keyspace"), "{report}");
    worker.stop().await;
    eprintln!(
        "outside the window: /readyz `{}`; start refused: {refused}",
        body.trim()
    );
    let _ = drop_keyspace(&admin, &ks).await;
}

/// Every leaderboard row of `boards` with its bucket: (leaderboard, profile) → [(bucket, score)].
async fn rows_with_buckets(
    session: &Session,
    keyspace: &str,
    boards: &[String],
    buckets: i32,
) -> std::collections::HashMap<(String, Uuid), Vec<(i32, i64)>> {
    let mut rows: std::collections::HashMap<(String, Uuid), Vec<(i32, i64)>> = Default::default();
    let cql = format!(
        "SELECT score, profile_id FROM {keyspace}.scores WHERE leaderboard_id = ? AND bucket = ?"
    );
    for lb in boards {
        for bucket in 0..buckets {
            for (score, profile) in paged_rows::<(i64, Uuid)>(session, &cql, (lb, bucket)).await {
                rows.entry((lb.clone(), profile))
                    .or_default()
                    .push((bucket, score));
            }
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_scores_against_live_traffic_leaves_every_key_once_in_its_new_bucket() {
    let _servers = shared().await;
    let (old, admin) = own_keyspace("rebuild", 4).await;
    let ks = old.scylla.keyspace.clone();
    let (_client, js) = jetstream(&old).await;
    let boards = new_boards("rb", 2);
    let profiles = new_profiles(400);
    let first = events(1200, &boards, &profiles);
    // Live traffic during the rebuild: the same keys (newer and older events) and new profiles.
    let newcomers = new_profiles(40);
    let all_profiles: Vec<Uuid> = profiles.iter().chain(&newcomers).copied().collect();
    let second = events(1200, &boards, &all_profiles);

    let worker = Worker::start(old.clone()).await;
    for e in &first {
        publish(&js, &old, e, &e.event_id).await;
    }
    wait_drained(&js, &old, Duration::from_secs(120)).await;
    worker.stop().await;

    // Small pages: the walk takes many round trips, while the new workers write.
    let rebuild = worker_command(&old, 0)
        .args(["rebuild-scores", "--buckets", "8", "--page-size", "25"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while schema::stored_buckets(&admin, &ks)
        .await
        .unwrap()
        .as_deref()
        != Some("8")
    {
        assert!(tokio::time::Instant::now() < deadline, "8 never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut new = old.clone();
    new.scylla.leaderboard_buckets = 8;
    let worker = Worker::start(new.clone()).await;
    for e in &second {
        publish(&js, &new, e, &e.event_id).await;
    }
    let during = tokio::task::spawn_blocking(move || rebuild.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let out = String::from_utf8_lossy(&during.stdout).to_string();
    assert!(
        during.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&during.stderr)
    );
    let written_while_rebuilding = worker.processed();
    wait_drained(&js, &new, Duration::from_secs(120)).await;
    worker.stop().await;

    let all: Vec<Event> = first.iter().chain(&second).cloned().collect();
    assert_final_state_in(&admin, &ks, &all, 8).await;
    // Each row in its new bucket (a row left in its old one would pass the count above when the
    // new one is missing).
    let rows = rows_with_buckets(&admin, &ks, &boards, 8).await;
    let misplaced: Vec<_> = rows
        .iter()
        .filter(|((_, p), r)| r.iter().any(|(b, _)| *b != store::bucket_of(*p, 8)))
        .collect();
    assert!(
        misplaced.is_empty(),
        "{} keys in another bucket, e.g. {:?}",
        misplaced.len(),
        misplaced.first()
    );
    // The old count now refuses to start.
    assert!(score_worker::app::App::build(old.clone()).await.is_err());
    eprintln!(
        "rebuild-scores 4 -> 8: {} keys exact in their new buckets; {written_while_rebuilding} of {} live \
         events written by the time the rebuild ended; rebuild said: {}",
        rows.len(),
        second.len(),
        out.lines().last().unwrap_or("")
    );
    let _ = drop_keyspace(&admin, &ks).await;
}
