//! Faults with real processes: the database frozen longer than the retry budget, SIGTERM of the
//! real binary during load, with the database frozen and with NATS down, and an operator-owned
//! consumer whose `max_deliver` differs from the configuration.

use std::process::Command;
use std::time::Duration;

use uuid::Uuid;

use crate::support::*;

/// A server command of the xtask library for the set whose database the tests that run alone use
/// ([`alone_set`], else the dev set); what it printed.
fn services(arg: &str) -> String {
    let set = alone_set().unwrap_or_else(|| {
        xtask::environments::Environment::load("dev").expect("environments.toml")
    });
    let out = set.services(&[arg]);
    out.unwrap_or_else(|e| panic!("cargo xtask services {} {arg}: {e}", set.name))
        .trim()
        .to_owned()
}

fn signal(pid: &str, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Resumes the database even if the test panics.
pub(crate) struct Thaw(String);
impl Drop for Thaw {
    fn drop(&mut self) {
        signal(&self.0, "CONT");
    }
}

/// Freezes the database (SIGSTOP) until the returned guard is dropped; returns once every thread of
/// it is stopped ([`xtask::servers::process::freeze`]).
#[must_use]
pub(crate) fn freeze_database() -> Thaw {
    let thaw = Thaw(services("cassandra-pid"));
    let pid = thaw.0.parse().expect("cassandra-pid prints a pid");
    assert!(
        xtask::servers::process::freeze(pid, Duration::from_secs(10)),
        "the database (pid {pid}) is not stopped 10 s after SIGSTOP"
    );
    thaw
}

/// `score_worker_messages_processed_total` of a worker binary serving HTTP on `port` (0 if unreachable).
fn processed_at(port: u16) -> u64 {
    counter_at(port, "score_worker_messages_processed_total")
}

/// Starts the real binary for `config` and waits until it has acked something; panics if it exits.
async fn spawn_processing(config: &score_worker::config::Config) -> (std::process::Child, u16) {
    let port = free_port();
    let mut child = worker_command(config, port)
        .arg("run")
        .spawn()
        .expect("the worker binary starts");
    wait_until(
        "the binary processes something",
        Duration::from_secs(60),
        || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the worker exited early: {status:?}");
            }
            processed_at(port) > 0
        },
    )
    .await;
    (child, port)
}

/// SIGTERM, then the exit status and how long the exit took; panics after `limit`.
async fn terminate(
    child: &mut std::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, Duration) {
    signal(&child.id().to_string(), "TERM");
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the worker did not exit within {limit:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Process teardown after the drain deadline: SIGTERM must end the process within
/// `shutdown.timeout` plus this, whatever NATS and the database do.
const EXIT_MARGIN: Duration = Duration::from_secs(1);

/// The process exited 0 within `shutdown.timeout` (`timeout`) + [`EXIT_MARGIN`] of SIGTERM.
fn assert_exited_in_time(
    what: &str,
    status: std::process::ExitStatus,
    took: Duration,
    timeout: Duration,
) {
    assert!(status.success(), "{what}exit status {status:?}");
    assert!(
        took <= timeout + EXIT_MARGIN,
        "{what}exited {took:?} after SIGTERM; shutdown.timeout is {timeout:?}"
    );
}

/// A worker on `config` that has written the first `first` of `events` (published here).
async fn worker_past_the_first(
    config: &score_worker::config::Config,
    js: &async_nats::jetstream::Context,
    events: &[Event],
    first: usize,
) -> Worker {
    let worker = Worker::start(config.clone()).await;
    publish_all(js, config, &events[..first]).await;
    wait_until("first events written", Duration::from_secs(60), || {
        worker.processed() >= first as u64
    })
    .await;
    worker
}

/// Freezes the database, then publishes `events`: the worker receives what it cannot write.
pub(crate) async fn freeze_then_publish(
    config: &score_worker::config::Config,
    js: &async_nats::jetstream::Context,
    events: &[Event],
) -> Thaw {
    let thaw = freeze_database();
    publish_all(js, config, events).await;
    thaw
}

/// Resumes the database and waits (at most 90 s) until `worker` has processed `n` messages.
pub(crate) async fn thaw_and_catch_up(thaw: Thaw, worker: &Worker, n: usize) {
    drop(thaw);
    wait_until(
        "every event written after the database came back",
        Duration::from_secs(90),
        || worker.processed() >= n as u64,
    )
    .await;
}

/// A new worker takes the rest; afterwards the consumer has nothing pending and every event is in
/// place.
async fn finish_with_a_new_worker(
    config: &score_worker::config::Config,
    js: &async_nats::jetstream::Context,
    events: &[Event],
) -> scylla::client::session::Session {
    let worker = Worker::start(config.clone()).await;
    wait_drained(js, config, Duration::from_secs(90)).await;
    worker.stop().await;
    let session = session_on(config).await;
    assert_final_state(&session, events, config.scylla.leaderboard_buckets).await;
    session
}

fn events_for(tag: &str, n: usize, profiles: usize) -> Vec<Event> {
    let board = new_board(tag);
    events_on(&board, tag, n, Profiles::Random(profiles), Timing::Random)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_frozen_past_the_retry_budget_loses_nothing() {
    // Freezing the shared database would stall the other tests' queries: run alone.
    let (_alone, mut config) = alone("outage").await;
    // Statements time out within the 3 s budget, so a frozen database shows both retries and naks.
    config.scylla.request_timeout = Duration::from_secs(1);
    let (_client, js, session) = nats_and_db(&config).await;
    let events = events_for("outage", 300, 60);
    let worker = worker_past_the_first(&config, &js, &events, 100).await;

    let thaw = freeze_then_publish(&config, &js, &events[100..]).await;
    // Three times retry.total_budget (3 s): flushes are retried, then held until the database answers.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(
        worker.processed() < events.len() as u64,
        "nothing can be acked while the database is frozen"
    );
    thaw_and_catch_up(thaw, &worker, events.len()).await;
    assert!(
        worker.metrics.batch_retries.get() > 0,
        "writes were retried"
    );
    // Past the budget the flushes were held, not given back: no delivery burnt by the outage.
    assert_eq!(
        failed_writes(&worker.metrics),
        0,
        "flushes past the retry budget are held while the database is down, not nak'd"
    );
    worker.stop().await;
    assert_final_state(&session, &events, config.scylla.leaderboard_buckets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_drains_and_exits_zero_then_another_worker_finishes() {
    let (_servers, config) = sharing("sigterm").await;
    let (_client, js) = jetstream(&config).await;
    let events = events_for("sigterm", 1500, 300);
    publish_all(&js, &config, &events).await;

    let mut config = config;
    config.batch.max_inflight = 2;
    config.shutdown.timeout = Duration::from_secs(10);
    // Let it get going, then SIGTERM while flushes are in flight.
    let (mut child, port) = spawn_processing(&config).await;
    let before = processed_at(port);
    let (status, took) = terminate(&mut child, config.shutdown.timeout * 3).await;
    assert_exited_in_time("", status, took, config.shutdown.timeout);
    assert!(
        before < events.len() as u64,
        "SIGTERM arrived during load ({before} already processed)"
    );
    // The drain settled everything it held: nothing waits for ack_wait.
    let (_, _, awaiting) = deliverable_now(&js, &config).await;
    assert_eq!(awaiting, 0, "deliveries left unsettled by a drained worker");
    eprintln!(
        "sigterm during load: exit 0 after {took:?} (timeout {:?}), unacked after exit {awaiting}",
        config.shutdown.timeout
    );

    // A new worker takes the rest; afterwards the consumer has nothing pending.
    let session = finish_with_a_new_worker(&config, &js, &events).await;
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
    let (_alone, mut config) = alone("breaker").await;
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
    let (_client, js, session) = nats_and_db(&config).await;
    let events = events_for("breaker", 200, 80);
    let worker = worker_past_the_first(&config, &js, &events, 50).await;

    let started = std::time::Instant::now();
    let thaw = freeze_then_publish(&config, &js, &events[50..]).await;
    wait_until("pulling paused", Duration::from_secs(30), || {
        worker.metrics.pulls_paused.get() == 1
    })
    .await;
    tokio::time::sleep(outage.saturating_sub(started.elapsed())).await;
    assert_eq!(
        dead_lettered(&worker.metrics),
        0,
        "nothing dead-lettered during the outage"
    );
    assert_eq!(worker.metrics.pulls_paused.get(), 1, "still paused");
    drop(thaw);

    let written = "every event written after the database came back";
    let n = events.len() as u64;
    wait_processed_or_report(&worker, n, Duration::from_secs(90), written).await;
    assert_eq!(worker.metrics.pulls_paused.get(), 0, "pulling resumed");
    assert_eq!(
        dead_lettered(&worker.metrics),
        0,
        "nothing dead-lettered at all"
    );
    let failed = failed_writes(&worker.metrics);
    eprintln!(
        "breaker: outage {outage:?} (max_deliver {}), {failed} messages given back once, 0 dead letters, {} events in place",
        config.nats.max_deliver,
        events.len()
    );
    worker.stop().await;
    assert_final_state(&session, &events, config.scylla.leaderboard_buckets).await;
}

/// Every delivery the worker holds is kept alive with `+WPI` wherever it waits — in a flush being
/// written, in a closed flush queued for a write slot, in the open batch or in the hand-off channel —
/// so a backlog held longer than `ack_wait` (here 4 × `ack_wait`, the database frozen) is never
/// redelivered to another replica: the two replicas together receive each message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_held_longer_than_ack_wait_are_not_redelivered_to_another_replica() {
    let (_alone, mut config) = alone("heldlong").await;
    config.nats.ack_wait = Duration::from_secs(2);
    config.nats.max_deliver = 3;
    config.retry.progress_interval = Duration::from_millis(500);
    config.retry.total_budget = Duration::from_secs(1);
    config.retry.nak_delay = Duration::from_millis(200);
    config.scylla.request_timeout = Duration::from_millis(500);
    // One write slot: one flush is written, the next ones wait closed, and more wait behind them.
    config.batch.max_inflight = 1;
    let (_client, js, session) = nats_and_db(&config).await;
    let events = events_for("heldlong", 600, 200);
    let first = worker_past_the_first(&config, &js, &events, 50).await;
    // A second replica on the same consumer takes whatever the server hands out again (or anew).
    let second = Worker::start(config.clone()).await;

    let received =
        || first.metrics.messages_received.get() + second.metrics.messages_received.get();
    let thaw = freeze_then_publish(&config, &js, &events[50..]).await;
    wait_until(
        "both replicas paused pulling",
        Duration::from_secs(30),
        || first.metrics.pulls_paused.get() == 1 && second.metrics.pulls_paused.get() == 1,
    )
    .await;
    let held = received() - first.processed() - second.processed();
    tokio::time::sleep(config.nats.ack_wait * 4).await;
    drop(thaw);

    wait_until("every event written", Duration::from_secs(90), || {
        first.processed() + second.processed() >= events.len() as u64
    })
    .await;
    wait_drained(&js, &config, Duration::from_secs(30)).await;
    eprintln!(
        "held past ack_wait: two replicas held {held} deliveries for 4 x ack_wait ({:?}); received {} + {} = {} for {} messages",
        config.nats.ack_wait,
        first.metrics.messages_received.get(),
        second.metrics.messages_received.get(),
        received(),
        events.len()
    );
    assert!(
        held > (config.batch.max_scores * 4) as u64,
        "the replicas held more than a flush being written and one queued each ({held})"
    );
    assert_eq!(
        received(),
        events.len() as u64,
        "each message delivered exactly once: nothing held was redelivered"
    );
    first.stop().await;
    second.stop().await;
    assert_final_state(&session, &events, config.scylla.leaderboard_buckets).await;
}

/// SIGTERM while the database is frozen: the drain cannot finish, so at the deadline the worker naks
/// what it holds (written nowhere yet) and exits within `shutdown.timeout` + 1 s; every delivery it
/// had is deliverable again at once, not after `ack_wait` (60 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_database_frozen_hands_back_every_unsettled_delivery() {
    let (_alone, mut config) = alone("handback").await;
    config.nats.ack_wait = Duration::from_secs(60);
    config.retry.total_budget = Duration::from_secs(30);
    config.retry.progress_interval = Duration::from_secs(5);
    config.scylla.request_timeout = Duration::from_secs(5);
    config.shutdown.timeout = Duration::from_secs(3);
    let (_client, js) = jetstream(&config).await;
    let events = events_for("handback", 1500, 300);
    publish_all(&js, &config, &events[..100]).await;
    let (mut child, port) = spawn_processing(&config).await;

    // Freeze first, then publish the rest, so the worker holds deliveries it cannot write (a fast
    // write path would otherwise drain a whole backlog before the freeze takes hold).
    let thaw = freeze_then_publish(&config, &js, &events[100..]).await;
    wait_until(
        "the worker holds deliveries it cannot write",
        Duration::from_secs(30),
        || counter_at(port, "score_worker_messages_received_total") >= processed_at(port) + 100,
    )
    .await;
    let (status, took) = terminate(&mut child, config.shutdown.timeout * 5).await;
    let (deliverable, pending, awaiting) = deliverable_now(&js, &config).await;
    drop(thaw);
    eprintln!(
        "sigterm, database frozen: exit {:?} after {took:?} (timeout {:?}); after exit: {awaiting} awaiting ack, {pending} pending, {deliverable} deliverable at once",
        status.code(),
        config.shutdown.timeout
    );
    assert_exited_in_time("", status, took, config.shutdown.timeout);
    assert!(
        awaiting > 0,
        "the frozen database left deliveries unsettled"
    );
    assert_eq!(
        deliverable as u64,
        pending + awaiting,
        "every unsettled delivery was nak'd (else it waits ack_wait)"
    );
    finish_with_a_new_worker(&config, &js, &events).await;
}

/// SIGTERM with NATS gone (killed) and with NATS hung (SIGSTOP, connections open but silent): acks,
/// probes and the final flush cannot complete, and the worker still exits 0 within
/// `shutdown.timeout` + 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nats_down_exits_within_the_timeout() {
    ensure_schema().await;
    let _servers = shared().await;
    let mut figures = Vec::new();
    for fault in ["KILL", "STOP"] {
        let mut nats = OwnNats::start();
        let mut config = base_config("natsdown");
        config.nats.url = nats.url.clone();
        config.shutdown.timeout = Duration::from_secs(3);
        let (_client, js) = jetstream(&config).await;
        let events = events_for("natsdown", 1500, 300);
        publish_all(&js, &config, &events).await;
        let (mut child, _port) = spawn_processing(&config).await;
        nats.signal(fault);
        let (status, took) = terminate(&mut child, config.shutdown.timeout * 10).await;
        figures.push(format!("{fault}: exit {:?} after {took:?}", status.code()));
        assert_exited_in_time(
            &format!("NATS {fault}: "),
            status,
            took,
            config.shutdown.timeout,
        );
    }
    eprintln!("sigterm with NATS down (shutdown.timeout 3s): {figures:?}");
}

/// Operators own the topology and their consumer's `max_deliver` (2) differs from the configuration
/// (20): `check` reports it, and the worker dead-letters on the server's last delivery itself (with
/// the write error), rather than naking it and leaving it to the max-deliveries advisory. The key
/// fails on every delivery while the database takes other writes: its `scores_by_profile` row holds
/// more dead cells than `tombstone_failure_threshold` (written with plain CQL, in a keyspace of the
/// test's own), so every read-back of it fails. A frozen database or a dropped table would only hold
/// the flushes now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_owned_consumer_decides_the_last_delivery() {
    let _servers = shared().await;
    let mut config = base_config("owned");
    let admin = keyspace_of_its_own(&mut config, "it_owned").await;
    config.nats.max_deliver = 2;
    config.nats.ack_wait = Duration::from_secs(5);
    let (_client, js) = jetstream(&config).await; // the operators' topology
    config.nats.manage_jetstream = false;
    config.nats.max_deliver = 20;
    config.retry.progress_interval = Duration::from_secs(1);
    // Two attempts, each a read of the whole tombstone row (slow on a loaded machine): the letter names
    // the read-back's own failure, not a budget cut short (which must stay under ack_wait).
    config.retry.max_attempts = 2;
    config.retry.total_budget = Duration::from_secs(4);
    config.retry.nak_delay = Duration::from_millis(200);
    let drift = assert_check_reports_the_drift(&config);

    // Ten events of one key, whose row the database cannot read back.
    let events = events_for("owned", 10, 1);
    let threshold = tombstone_failure_threshold(&admin)
        .await
        .expect("tombstone_failure_threshold");
    let key = (events[0].profile, events[0].leaderboard.as_str());
    write_dead_cells(&admin, &config.scylla.keyspace, key, -1, 0..threshold + 1).await;
    let worker = Worker::start(config.clone()).await;
    publish_all(&js, &config, &events).await;
    wait_until(
        "every message dead-lettered",
        Duration::from_secs(60),
        || dead_letters_for(&worker.metrics, "write_failed") >= events.len() as u64,
    )
    .await;
    worker.stop().await;
    let letters = read_stream(&js, &config.nats.deadletter_stream, events.len()).await;
    let _ = drop_keyspace(&admin, &config.scylla.keyspace).await;
    assert_eq!(letters.len(), events.len());
    for error in dead_letter_errors(&letters) {
        assert!(
            error.starts_with("not written after 2 deliveries")
                && error.contains("read_back failed"),
            "dead-lettered by the worker on the server's last delivery: {error}"
        );
    }
    eprintln!(
        "operator-owned consumer: check reported `{drift}`; {} letters `not written after 2 deliveries`",
        letters.len()
    );
}

/// A keyspace of the test's own, named `prefix` and a random suffix, migrated: `config` points at
/// it. Returns the session that made it.
pub(crate) async fn keyspace_of_its_own(
    config: &mut score_worker::config::Config,
    prefix: &str,
) -> scylla::client::session::Session {
    config.scylla.keyspace = format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..8]);
    let admin = session().await;
    score_worker::schema::migrate(&admin, &config.scylla, false)
        .await
        .expect("migrate the test's keyspace");
    admin
}

/// `check` with a consumer whose `max_deliver` on the server (2) differs from `config`'s (20):
/// it fails and names the drift. Returns the line.
fn assert_check_reports_the_drift(config: &score_worker::config::Config) -> String {
    let check = worker_command(config, 0).arg("check").output().unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    let drift = format!(
        "[FAIL] consumer {}: max_deliver is 2 on the server, 20 in the configuration; the server's value applies",
        config.nats.consumer
    );
    assert!(report.contains(&drift), "{report}");
    assert!(
        !check.status.success(),
        "check fails on drift it cannot fix"
    );
    drift
}
