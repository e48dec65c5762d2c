//! Writes the database refuses (issue 17, items 1 and 2), on the security pair: its Cassandra checks
//! permissions (`GRANT`/`REVOKE`) and aborts a read that meets `tombstone_failure_threshold` tombstones
//! (1000 there, `SCORE_WORKER_CASSANDRA_TOMBSTONE_FAILURE`).
//!
//! - A grant revoked on `scores` refuses every write: an outage, not the events' fault. Pulls pause,
//!   `/readyz` names the refusal, nothing is dead-lettered however many `max_deliver` cycles it lasts,
//!   and every event lands once the grant is back.
//! - A grant revoked on `eligibility_cache` (the clean-up's cache invalidation; a table another service
//!   owns) is the same: the events' rows were written, the refusal is the table's, never theirs.
//! - A key whose read-back meets more tombstones than the threshold fails however often it is tried
//!   while the database answers everything else: its flush-mates land, the worker keeps processing,
//!   and the key is dead-lettered as `write_failed` on its last delivery, with its key and the
//!   database's message.

use std::time::{Duration, Instant};

use uuid::Uuid;

use super::support::{assert_final_state, publish, read_stream, Event, KEYSPACE};
use super::*;

/// Deliveries of a message, so a refusal lasting "several `max_deliver` × `nak_delay`" is seconds long.
const MAX_DELIVER: i64 = 3;
const NAK_DELAY: Duration = Duration::from_millis(200);

/// A worker binary for one scenario: a nats-server of its own, `role` on the security Cassandra, the
/// schema migrated by the superuser, and short timings (`max_deliver` 3, `nak_delay` 200 ms, retry
/// budget 3 s, `ack_wait` 5 s). The budget is the integration suite's: with 1 s, a first attempt on a
/// loaded machine (the suites run side by side) could outlast it, and the dead letter then named the
/// budget instead of the refusal.
struct Scenario {
    worker: Running,
    config: Config,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    _server: NatsServer,
    _dir: tempfile::TempDir,
}

impl Scenario {
    async fn start(role: &CqlRole) -> Scenario {
        let nats_password = secret("nats");
        let (server, nats) = svc_with(&nats_password, &nats_password);
        let dir = tempfile::tempdir().unwrap();
        let (admin_env, _) = worker_setup(&nats, CQL_SUPERUSER.0, CQL_SUPERUSER.1);
        migrate_ok("refusals", &admin_env, dir.path()).await;

        let (mut env, mut config) = worker_setup(&nats, &role.user, &role.password);
        set(&mut env, "NATS__MAX_DELIVER", MAX_DELIVER.to_string());
        set(&mut env, "NATS__ACK_WAIT", "5s");
        set(&mut env, "RETRY__PROGRESS_INTERVAL", "1s");
        set(&mut env, "RETRY__TOTAL_BUDGET", "3s");
        set(&mut env, "RETRY__INITIAL_BACKOFF", "50ms");
        set(&mut env, "RETRY__MAX_BACKOFF", "500ms");
        set(
            &mut env,
            "RETRY__NAK_DELAY",
            format!("{}ms", NAK_DELAY.as_millis()),
        );
        set(&mut env, "SCYLLA__REQUEST_TIMEOUT", "2s");
        set(&mut env, "LOG__FORMAT", "text");
        config.nats.max_deliver = MAX_DELIVER;
        let mut worker = Running::spawn(&env, dir.path());
        worker.wait_ready(READY_TIMEOUT).await;
        let (client, js) = publisher(&config).await;
        Scenario {
            worker,
            config,
            client,
            js,
            _server: server,
            _dir: dir,
        }
    }

    async fn metrics(&self) -> String {
        http_get(self.worker.http, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    async fn publish(&self, events: &[Event]) {
        for e in events {
            publish(&self.js, &self.config, e, &e.event_id).await;
        }
        self.client.flush().await.unwrap();
    }

    /// Waits (at most `timeout`) until `done` holds for the worker's metrics; panics with them and
    /// the worker's log otherwise.
    async fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.metrics().await;
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}\n{}\n--- metrics ---\n{}\n--- worker log ---\n{}",
                progress(&text),
                text.lines()
                    .filter(|l| l.starts_with("score_worker_") && !l.contains("_bucket"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                tail(&self.worker.stderr(), 60)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn processed(text: &str) -> f64 {
    metric(text, "score_worker_messages_processed_total").unwrap_or(0.0)
}

/// Dead letters stored, every reason.
fn dead_letters(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("score_worker_dead_letters_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn dead_letters_of(text: &str, reason: &str) -> f64 {
    metric(
        text,
        &format!("score_worker_dead_letters_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

fn progress(text: &str) -> String {
    let by_reason: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("score_worker_dead_letters_total{reason=\""))
        .filter_map(|l| l.split_once("\"} "))
        .filter(|(_, n)| *n != "0")
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    format!(
        "processed {}, received {}, dead letters {} {by_reason:?}, pulls paused {}, permanent errors {}",
        processed(text),
        metric(text, "score_worker_messages_received_total").unwrap_or(0.0),
        dead_letters(text),
        metric(text, "score_worker_pulls_paused").unwrap_or(0.0),
        metric_sum(text, "score_worker_scylla_errors_total", "kind=\"permanent\""),
    )
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `n` events on one new board over `profiles` profiles, at recent times.
fn board_events(tag: &str, n: usize, profiles: usize) -> Vec<Event> {
    let board = format!("sec-{tag}-{}", &Uuid::new_v4().simple().to_string()[..8]);
    support::events_on(&board, tag, n, Profiles::Cycle(profiles), Timing::Random)
}

/// The worker's own role: reads the keyspace, writes each table the protocol writes, and nothing
/// else, so that a grant on one table can be revoked (a grant on the keyspace would still cover it).
async fn table_role() -> CqlRole {
    // The keyspace must exist before a grant on it: migrated by the superuser.
    ensure_secure_cassandra().await;
    {
        let _one_at_a_time = MIGRATE.lock().await;
        let mut config = Config::defaults();
        config.scylla.nodes = vec![cql_node()];
        config.scylla.keyspace = KEYSPACE.into();
        let admin = cql_session(CQL_SUPERUSER.0, CQL_SUPERUSER.1).await;
        score_worker::schema::migrate(&admin, &config.scylla, false)
            .await
            .expect("migrate as the superuser");
    }
    let mut grants = vec![format!("SELECT ON KEYSPACE {KEYSPACE}")];
    for table in [
        "scores",
        "scores_by_profile",
        "score_history",
        "eligibility_cache",
    ] {
        grants.push(format!("MODIFY ON TABLE {KEYSPACE}.{table}"));
    }
    let grants: Vec<&str> = grants.iter().map(String::as_str).collect();
    CqlRole::create_with(&grants).await
}

/// MODIFY on `table` revoked under load for several `max_deliver` × `nak_delay` (and longer than
/// `ack_wait`), then granted back: nothing dead-lettered, pulls paused and `/readyz` naming the
/// refusal meanwhile, every event in place afterwards.
async fn a_refused_table_is_an_outage(table: &str) {
    let role = table_role().await;
    let s = Scenario::start(&role).await;
    let events = board_events(&format!("revoke-{table}"), 600, 60);
    s.publish(&events[..100]).await;
    s.wait_for(
        "the first 100 events, before the revoke",
        Duration::from_secs(60),
        |t| processed(t) >= 100.0,
    )
    .await;

    let grant = format!("MODIFY ON TABLE {KEYSPACE}.{table}");
    role.revoke(&grant).await;
    let revoked = Instant::now();
    // Under load: the rest arrive while the grant is revoked.
    let load = {
        let (js, config, rest) = (s.js.clone(), s.config.clone(), events[100..500].to_vec());
        tokio::spawn(async move {
            for chunk in rest.chunks(20) {
                for e in chunk {
                    publish(&js, &config, e, &e.event_id).await;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    // Permissions are cached for up to 2 s (permissions_validity).
    let readyz = wait_for_the_named_refusal(&s, table, revoked).await;
    let window = (NAK_DELAY * MAX_DELIVER as u32 * 10).max(Duration::from_secs(15));
    let (paused_polls, errors) = watch_the_refusal(&s, table, revoked, window).await;
    load.await.unwrap();
    role.grant(&grant).await;
    s.publish(&events[500..]).await;
    let text = s
        .wait_for(
            "every event after the grant is back",
            Duration::from_secs(90),
            |t| processed(t) >= events.len() as f64,
        )
        .await;
    assert_eq!(dead_letters(&text), 0.0, "{}", progress(&text));
    assert!(
        read_stream(&s.js, &s.config.nats.deadletter_stream, 0)
            .await
            .is_empty(),
        "the dead-letter stream is empty"
    );
    // The refusal cleared: ready again, pulling again.
    wait_ready_again(&s).await;
    let session = cql_session(CQL_SUPERUSER.0, CQL_SUPERUSER.1).await;
    assert_final_state(&session, &events, s.config.scylla.leaderboard_buckets).await;
    eprintln!(
        "revoked MODIFY on {table} for {:?} (max_deliver {MAX_DELIVER}, nak_delay {NAK_DELAY:?}) under load: \
         0 dead letters, {} events in place; pulls paused in {}/{} polls; {errors} permanent errors \
         while refused; /readyz said: {}",
        window,
        events.len(),
        paused_polls.1,
        paused_polls.0,
        readyz.trim()
    );
    // A refusal is held, not bisected: a few failing requests per held flush and probe, not two per key.
    assert!(
        paused_polls.1 * 10 >= paused_polls.0 * 9,
        "pulls stay paused while the writes are refused (no flapping): {paused_polls:?}"
    );
    let stopped = s.worker.terminate(Duration::from_secs(30)).await;
    assert_eq!(stopped.code(), Some(0), "{stopped}");
    role.drop_role().await;
}

/// Polls `/readyz` until it answers 503 naming the refused `table`; nothing may be dead-lettered
/// meanwhile. Returns its body.
async fn wait_for_the_named_refusal(s: &Scenario, table: &str, revoked: Instant) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(s.worker.http, "/readyz").await.unwrap_or_default();
        let text = s.metrics().await;
        assert_eq!(
            dead_letters(&text),
            0.0,
            "{:?} into the refusal of {table}: {}",
            revoked.elapsed(),
            progress(&text)
        );
        if status == 503 && body.contains(table) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never named the refusal of {table}: {status} {body}\n{}\n{}",
            progress(&s.metrics().await),
            tail(&s.worker.stderr(), 60)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Watches the worker until `window` after the revoke: nothing may be dead-lettered. Returns the
/// polls made and those that saw pulls paused, and the permanent errors counted meanwhile.
async fn watch_the_refusal(
    s: &Scenario,
    table: &str,
    revoked: Instant,
    window: Duration,
) -> ((u32, u32), f64) {
    let errors_before = metric_sum(
        &s.metrics().await,
        "score_worker_scylla_errors_total",
        "kind=\"permanent\"",
    );
    let mut paused_polls = (0, 0);
    while revoked.elapsed() < window {
        let text = s.metrics().await;
        assert_eq!(
            dead_letters(&text),
            0.0,
            "{:?} into the refusal of {table}: {}\n{}",
            revoked.elapsed(),
            progress(&text),
            tail(&s.worker.stderr(), 60)
        );
        paused_polls.0 += 1;
        if metric(&text, "score_worker_pulls_paused") == Some(1.0) {
            paused_polls.1 += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let during = s.metrics().await;
    let errors = metric_sum(
        &during,
        "score_worker_scylla_errors_total",
        "kind=\"permanent\"",
    ) - errors_before;
    (paused_polls, errors)
}

/// Waits until `/readyz` answers 200 again.
async fn wait_ready_again(s: &Scenario) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(s.worker.http, "/readyz").await.map(|(s, _)| s) != Some(200) {
        assert!(Instant::now() < deadline, "not ready again after the grant");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_revoked_on_scores_dead_letters_nothing_and_every_event_lands_once_it_is_back() {
    a_refused_table_is_an_outage("scores").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_revoked_on_the_eligibility_cache_dead_letters_nothing() {
    a_refused_table_is_an_outage("eligibility_cache").await;
}

/// One key past the tombstone threshold (dead cells written with plain CQL, as an older version of
/// the protocol left them), mixed into a flush of good keys: they land, the worker keeps processing,
/// and the key is dead-lettered as `write_failed` after `max_deliver` deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_past_the_tombstone_threshold_is_dead_lettered_and_its_flush_mates_land() {
    let role = CqlRole::create().await;
    let admin = cql_session(CQL_SUPERUSER.0, CQL_SUPERUSER.1).await;
    let threshold = support::tombstone_failure_threshold(&admin)
        .await
        .unwrap_or(i64::MAX);
    assert!(
        threshold <= 10_000,
        "the security pair's Cassandra aborts reads only at {threshold} tombstones: start it with \
         SCORE_WORKER_CASSANDRA_TOMBSTONE_FAILURE=1000 (make security does)"
    );
    let s = Scenario::start(&role).await;

    let mut events = board_events("tombstones", 29, 29);
    // On a board of its own (flushes mix boards), so the good board can be checked whole.
    let mut bad = board_events("tombstones-bad", 1, 1).remove(0);
    // Outside the dead cells' range, so the key's own `ranked` entry is not among them.
    bad.score = 5_000_000;
    let key = (bad.profile, bad.leaderboard.as_str());
    support::write_dead_cells(&admin, KEYSPACE, key, 0, 0..threshold * 2).await;
    let read = admin
        .query_unpaged(
            format!(
                "SELECT ranked FROM {KEYSPACE}.scores_by_profile \
                 WHERE profile_id = ? AND leaderboard_id = ?"
            ),
            (bad.profile, bad.leaderboard.as_str()),
        )
        .await;
    let refused = read.expect_err("a read of the key meets more tombstones than the threshold");
    eprintln!("tombstones: a read of the bad key fails: {refused}");

    s.publish(&events[..10]).await;
    s.publish(std::slice::from_ref(&bad)).await;
    s.publish(&events[10..]).await;
    let text = s
        .wait_for(
            "29 good events written and the bad key dead-lettered",
            Duration::from_secs(90),
            |t| processed(t) >= 29.0 && dead_letters_of(t, "write_failed") >= 1.0,
        )
        .await;
    assert_eq!(processed(&text), 29.0, "{}", progress(&text));
    // The worker keeps processing.
    let more = board_events("tombstones-more", 20, 20);
    s.publish(&more).await;
    let text = s
        .wait_for("20 more events", Duration::from_secs(60), |t| {
            processed(t) >= 49.0
        })
        .await;
    assert_eq!(dead_letters(&text), 1.0, "{}", progress(&text));

    let error = the_dead_letter(&s.js, &s.config, "write_failed", &bad.event_id).await;
    for needle in [
        bad.profile.to_string(),
        bad.leaderboard.clone(),
        "read_back".to_string(),
        format!("after {MAX_DELIVER} deliveries"),
    ] {
        assert!(
            error.contains(&needle),
            "the error header names {needle:?}: {error}"
        );
    }
    eprintln!("tombstones: 49 events written, the bad key dead-lettered with: {error}");
    events.extend(more);
    let buckets = s.config.scylla.leaderboard_buckets;
    assert_final_state(&admin, &events, buckets).await;
    // The bad key's rows landed before its read-back failed: a `write_failed` event may be partly
    // written (a replay finishes it once the key can be read).
    let rows =
        support::leaderboard_rows(&admin, std::slice::from_ref(&bad.leaderboard), buckets).await;
    assert_eq!(
        rows.get(&(bad.leaderboard.clone(), bad.profile)),
        Some(&vec![bad.score])
    );
    let stopped = s.worker.terminate(Duration::from_secs(30)).await;
    assert_eq!(stopped.code(), Some(0), "{stopped}");
    role.drop_role().await;
}
