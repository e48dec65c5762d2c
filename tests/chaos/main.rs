//! Fault injection (issue #4): the real worker binary as child processes against a real
//! nats-server and Cassandra on loopback — a pair of the suite's own (the `chaos` set of
//! environments.toml), started by the xtask library if `make chaos` has not already — so freezing or
//! restarting them never disturbs the default pair other tests use.
//!
//! Each scenario publishes a known stream (many profiles and leaderboards, hot keys updated hundreds
//! of times, ties, duplicates, events out of order, six bad payloads), injects its fault, lets the
//! system recover, then compares the database and the dead-letter stream with the final state
//! computed from the published stream alone ([`verify`]) and prints one line:
//!
//! `chaos <scenario>: published=N verified=N lost=0 wrong=0 dead_lettered=6 recover_s=S <extras>`
//!
//! `published` counts the distinct good events (duplicates and the bad payloads are further
//! messages); `verified`, `lost` and `wrong` are defined in [`verify`]; `dead_lettered` is what the
//! dead-letter stream holds. `recover_s` is the time from the end of the (last) fault until the durable consumer had nothing
//! pending and nothing unacknowledged; for the backlog scenario, the time to drain the backlog.
//!
//! Scenarios on the same servers run one at a time (a lock per pair and clusters enforces it); a pair
//! scenario and a cluster scenario may run side by side. Run: `make chaos`, or
//! `cargo test --test chaos -- --test-threads=6 --nocapture`. Knobs (soak mode raises them):
//! `SCORE_WORKER_CHAOS_SCALE` (multiplies event counts), `SCORE_WORKER_CHAOS_BACKLOG` (scenario 5's
//! backlog, default 100000), `SCORE_WORKER_CHAOS_KILLS` (scenario 1, default 10),
//! `SCORE_WORKER_CHAOS_SEED` (replays a workload), `SCORE_WORKER_CHAOS_LOG` (the workers' RUST_LOG).
//! Worker logs: `target/tmp/chaos/<scenario>/worker-N.log`.

#[path = "../it/support.rs"]
#[allow(dead_code)]
mod support;

mod advisory;
mod cluster;
mod datacenters;
mod harness;
mod steps;
mod stopped;
mod verify;
mod workload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use harness::*;
use steps::{assert_exited_zero, database_outage_timings, freeze_cassandra, paced_publisher, Exit};
use workload::{Spec, Workload};

const DRAIN_TIMEOUT: Duration = Duration::from_secs(240);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(300);
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Process teardown after the drain deadline (closing connections, exiting): SIGTERM must end the
/// process within `shutdown.timeout` plus this.
const EXIT_MARGIN: Duration = Duration::from_secs(1);

fn all(w: &Workload) -> std::ops::Range<usize> {
    0..w.items.len()
}

/// Scenario 1: SIGKILL of the worker in the middle of flushes, ten times in one run, restarted
/// each time. Deliveries the dead process held come back after `ack_wait` (5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flush_repeatedly() {
    let mut s = Scenario::start("sigkill", |_| {}).await;
    let mut rng = StdRng::seed_from_u64(s.seed);
    let w = s.standard_workload("sigkill", 8000);
    publish(&s.js, &w, all(&w), PUBLISH_TIMEOUT).await;

    let kills = env_usize("SCORE_WORKER_CHAOS_KILLS", 10);
    let mut done = 0;
    let mut worker = s.spawn_worker();
    for _ in 0..kills {
        worker.wait_up(START_TIMEOUT).await;
        let min = rng.random_range(1..250);
        if !worker.wait_mid_flush(min, Duration::from_secs(30)).await {
            break;
        }
        worker.kill();
        done += 1;
        worker = s.spawn_worker();
    }
    let last_fault = Instant::now();
    worker.wait_up(START_TIMEOUT).await;
    s.wait_drained(std::slice::from_mut(&mut worker), DRAIN_TIMEOUT)
        .await;
    let recover = last_fault.elapsed();
    let redelivered = s.consumer_info().await.map(|i| i.num_redelivered);
    let exit = worker.terminate(Duration::from_secs(30)).await;

    let extras = format!(
        "kills={done} messages={} seed={}",
        w.stored_messages(),
        s.seed
    );
    s.verdict(&[&w], recover, &extras).await;
    assert_eq!(done, kills, "every kill landed during a flush");
    assert_exited_zero(
        &exit,
        &format!("the last worker (redelivered {redelivered:?})"),
    );
    s.cleanup().await;
}

/// Scenario 2: the database frozen (SIGSTOP) for four times the retry budget, then resumed.
/// Flushes retry, exhaust the budget, are nak'd and redelivered; nothing is dead-lettered
/// (`max_deliver` 50 covers the outage) and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_frozen_past_the_retry_budget() {
    let budget = Duration::from_secs(3);
    let mut s = Scenario::start("db-freeze", |c| database_outage_timings(c, budget)).await;
    let w = s.standard_workload("dbfreeze", 4000);
    let third = w.items.len() / 3;
    publish(&s.js, &w, 0..third, PUBLISH_TIMEOUT).await;
    let mut worker = s.busy_worker(200, "the freeze").await;

    let thaw = freeze_cassandra().await;
    let frozen = Instant::now();
    let freeze_for = budget * 4;
    // Load keeps coming while the database is frozen.
    publish(&s.js, &w, third..w.items.len(), PUBLISH_TIMEOUT).await;
    tokio::time::sleep(freeze_for.saturating_sub(frozen.elapsed())).await;
    let during = worker.metrics().await.unwrap_or_default();
    drop(thaw);
    let frozen_s = frozen.elapsed();
    let resumed = Instant::now();

    s.wait_drained(std::slice::from_mut(&mut worker), DRAIN_TIMEOUT)
        .await;
    let recover = resumed.elapsed();
    let get = |k: &str| during.get(k).copied().unwrap_or(0.0) as u64;
    let retries = get("score_worker_batch_retries_total");
    let naks = get("score_worker_messages_failed_total{reason=\"write\"}");
    let paused = get("score_worker_pulls_paused");
    let exit = worker.terminate(Duration::from_secs(30)).await;

    let extras = format!(
        "frozen_s={} retries={retries} nakd={naks} paused_during={paused} seed={}",
        secs(frozen_s),
        s.seed
    );
    s.verdict(&[&w], recover, &extras).await;
    assert!(retries > 0, "flush writes were retried during the freeze");
    // Past the retry budget, flushes are held (not nak'd) and pulling pauses until the database
    // answers: no delivery is burnt by the outage.
    assert_eq!(naks, 0, "no flush was given back during the freeze");
    assert_eq!(paused, 1, "pulling was paused during the freeze");
    assert_exited_zero(&exit, "the worker");
    s.cleanup().await;
}

/// Scenario 3: nats-server stopped and started again during load (its JetStream file store
/// survives). The worker reconnects by itself; the publisher retries what the outage refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarted_during_load() {
    let mut s = Scenario::start("nats-restart", |c| {
        // The publisher's ack timeout: short, so messages refused during the outage are retried soon.
        c.nats.request_timeout = Duration::from_secs(3);
    })
    .await;
    let w = Arc::new(s.standard_workload("natsrestart", 6000));
    let half = w.items.len() / 2;
    publish(&s.js, &w, 0..half, PUBLISH_TIMEOUT).await;
    let mut worker = s.busy_worker(300, "the restart").await;
    // The second half is published over ~8 s while the server goes away and comes back.
    let publisher = paced_publisher(&s.js, &w, half..w.items.len());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outage = restart_nats().await;
    let restarted = Instant::now();
    let stats = publisher.await.expect("publisher task");

    s.wait_drained(std::slice::from_mut(&mut worker), DRAIN_TIMEOUT)
        .await;
    let recover = restarted.elapsed();
    assert!(
        worker.running(),
        "the worker survives the restart\n{}",
        worker.log_tail(30)
    );
    let disconnects = worker.log_count("NATS disconnected");
    let exit = worker.terminate(Duration::from_secs(30)).await;

    let extras = format!(
        "outage_s={} disconnects={disconnects} publish_retries={} seed={}",
        secs(outage),
        stats.retried,
        s.seed
    );
    s.verdict(&[&w], recover, &extras).await;
    assert!(disconnects >= 1, "the worker saw the server go away");
    assert_exited_zero(&exit, "the worker");
    s.cleanup().await;
}

/// Stops nats-server for 3 s and starts it again (its file store survives); returns the outage.
async fn restart_nats() -> Duration {
    let stopped = Instant::now();
    let mut restart = Restart(true);
    services("stop-nats").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    services("start-nats").await;
    restart.0 = false;
    stopped.elapsed()
}

/// Scenario 4: `n` workers on one durable consumer; one is SIGKILLed mid-flush and restarted
/// while the others keep going.
async fn replicas(name: &'static str, n: usize) {
    let mut s = Scenario::start(name, |c| {
        c.batch.max_scores = 20; // more, smaller flushes racing on the same keys
    })
    .await;
    let w = s.standard_workload(name, 8000);
    publish(&s.js, &w, all(&w), PUBLISH_TIMEOUT).await;
    let mut workers: Vec<WorkerProc> = (0..n).map(|_| s.spawn_worker()).collect();
    for worker in &mut workers {
        worker.wait_up(START_TIMEOUT).await;
    }
    // Kill the first one in the middle of a flush, after every replica has written something.
    wait_every_replica_busy(&workers).await;
    let victim_share = kill_and_replace_first(&mut s, &mut workers).await;
    let restarted = Instant::now();

    s.wait_drained(&mut workers, DRAIN_TIMEOUT).await;
    let recover = restarted.elapsed();
    let mut shares = vec![victim_share];
    for worker in &workers {
        shares.push(worker.processed().await);
    }
    let mut exits = Vec::new();
    for worker in &mut workers {
        exits.push(worker.terminate(Duration::from_secs(30)).await);
    }

    let extras = format!(
        "workers={n} acked_by=[killed:{}, {}] seed={}",
        shares[0],
        shares[1..]
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        s.seed
    );
    s.verdict(&[&w], recover, &extras).await;
    assert!(
        exits.iter().all(|e| e.is_some_and(|(st, _)| st.success())),
        "every replica exits 0 on SIGTERM: {exits:?}"
    );
    s.cleanup().await;
}

/// Waits (at most 60 s) until every replica has processed something.
async fn wait_every_replica_busy(workers: &[WorkerProc]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all_busy = true;
        for worker in workers {
            all_busy &= worker.processed().await > 0;
        }
        if all_busy {
            return;
        }
        assert!(Instant::now() < deadline, "every replica gets work");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGKILLs the first replica mid-flush and starts another in its place; returns what the victim
/// had processed.
async fn kill_and_replace_first(s: &mut Scenario, workers: &mut [WorkerProc]) -> u64 {
    assert!(
        workers[0]
            .wait_mid_flush(300, Duration::from_secs(60))
            .await,
        "the victim is mid-flush"
    );
    let victim_share = workers[0].processed().await;
    workers[0].kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    workers[0] = s.spawn_worker();
    workers[0].wait_up(START_TIMEOUT).await;
    victim_share
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_killed_and_restarted() {
    replicas("replicas-2", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_killed_and_restarted() {
    replicas("replicas-3", 3).await;
}

/// Bounds for a backlog of `messages`: at least 200 stored / drained per second.
fn backlog_timeout(messages: usize) -> Duration {
    PUBLISH_TIMEOUT + Duration::from_secs(messages as u64 / 200)
}

/// Drains everything pending with one fresh worker; returns its peak RSS (KiB) and the drain time.
async fn drain_backlog(s: &mut Scenario, messages: usize) -> (u64, Duration) {
    let mut worker = s.spawn_worker();
    let started = Instant::now();
    worker.wait_up(START_TIMEOUT).await;
    s.wait_drained(std::slice::from_mut(&mut worker), backlog_timeout(messages))
        .await;
    let took = started.elapsed();
    let peak = worker.peak_rss_kib().expect("VmHWM of the worker");
    let exit = worker.terminate(Duration::from_secs(30)).await;
    assert_exited_zero(&exit, "the draining worker");
    (peak, took)
}

/// Scenario 5: a backlog far larger than the worker may buffer, drained twice by a fresh worker:
/// first `SCORE_WORKER_CHAOS_BACKLOG / 5` messages (at most 100,000), then
/// `SCORE_WORKER_CHAOS_BACKLOG` (default 100,000; 1,000,000 in soak mode).
///
/// The bound: the worker may hold at most `max_ack_pending` (2,000) deliveries, whatever the
/// backlog, so its peak RSS (`VmHWM` of the child) must not depend on the backlog. A buffered
/// message costs at least ~0.5 KiB (payload ~260 B, subject, reply subject, headers, the decoded
/// update), so buffering the second backlog would add at least 40 MiB over the first at the CI
/// sizes (and 400 MiB at 1,000,000). Asserted: the second peak is within 16 MiB of the first
/// (observed: within 2 MiB) and below 128 MiB absolute (observed: ~40 MiB for a debug build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_backlog_drains_with_bounded_memory() {
    let big = env_usize("SCORE_WORKER_CHAOS_BACKLOG", 100_000).max(5000);
    let small = (big / 5).min(100_000);
    let mut s = Scenario::start("backlog", |c| {
        c.nats.ack_wait = Duration::from_secs(30);
        c.retry.progress_interval = Duration::from_secs(5);
        c.nats.request_timeout = Duration::from_secs(20);
    })
    .await;
    let (a, b) = backlog_workloads(&s, small, big);

    let t = Instant::now();
    publish(&s.js, &a, all(&a), backlog_timeout(a.items.len())).await;
    let (peak_a, took_a) = drain_backlog(&mut s, a.items.len()).await;
    let t_pub = Instant::now();
    publish(&s.js, &b, all(&b), backlog_timeout(b.items.len())).await;
    let published_in = t_pub.elapsed();
    let pending = s.consumer_info().await.map(|i| i.num_pending).unwrap_or(0);
    let stored = s
        .stream_messages(&s.config.nats.stream)
        .await
        .expect("stream info");
    let (peak_b, took_b) = drain_backlog(&mut s, b.items.len()).await;
    eprintln!(
        "backlog: {stored} messages in the stream, phases took {:?}",
        t.elapsed()
    );

    let extras = format!(
        "backlog={pending} publish_s={} drain_msgs_per_s={:.0} peak_rss_mib={:.1} (backlog {}: {:.1} MiB, drained in {}s) seed={}",
        secs(published_in),
        b.stored_messages() as f64 / took_b.as_secs_f64(),
        mib(peak_b),
        a.stored_messages(),
        mib(peak_a),
        secs(took_a),
        s.seed
    );
    s.verdict(&[&a, &b], took_b, &extras).await;
    assert!(
        pending as usize >= b.stored_messages() - 10,
        "the backlog was pending when the worker started: {pending}"
    );
    assert_memory_bounded((peak_a, &a), (peak_b, &b));
    s.cleanup().await;
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The peak RSS (KiB) of the second, larger backlog's drain is within 16 MiB of the first's, and
/// both are below 128 MiB.
fn assert_memory_bounded((peak_a, a): (u64, &Workload), (peak_b, b): (u64, &Workload)) {
    assert!(
        peak_b <= peak_a + 16 * 1024,
        "peak RSS grew with the backlog: {:.1} MiB at {} messages, {:.1} MiB at {}",
        mib(peak_a),
        a.stored_messages(),
        mib(peak_b),
        b.stored_messages()
    );
    assert!(
        peak_a.max(peak_b) <= 128 * 1024,
        "peak RSS {:.1} / {:.1} MiB",
        mib(peak_a),
        mib(peak_b)
    );
}

/// The backlog scenario's two workloads, of `small` then `big` events: nine events in ten go to 16
/// hot keys (so a flush coalesces up to 200 events and the backlog drains in CI time), one in ten
/// to a wide spread of profiles and leaderboards. The first has no bad payloads.
fn backlog_workloads(s: &Scenario, small: usize, big: usize) -> (Workload, Workload) {
    let spec = |events: usize| Spec {
        events: events / 10,
        profiles: (events / 50).clamp(100, 20_000),
        leaderboards: 8,
        hot_keys: 16,
        hot_updates: events * 9 / 10 / 16,
        dup_same_id_permille: 5,
        dup_new_id_permille: 5,
    };
    let mut a = Workload::generate("backlog-a", &s.config.nats.subjects[0], spec(small), s.seed);
    a.bad.clear();
    a.items.retain(|i| !matches!(i, workload::Item::Bad(_)));
    let b = Workload::generate(
        "backlog-b",
        &s.config.nats.subjects[0],
        spec(big),
        s.seed.wrapping_add(1),
    );
    eprintln!(
        "backlog: seed {} — A: {} — B: {}",
        s.seed,
        a.summary(),
        b.summary()
    );
    (a, b)
}

/// Scenario 6: SIGTERM during load, three times: each worker exits 0 within `shutdown.timeout`
/// (10 s) + 1 s, leaving nothing unacknowledged; a new worker finishes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_exits_zero_and_a_new_worker_finishes() {
    let mut s = Scenario::start("sigterm", |_| {}).await;
    let mut rng = StdRng::seed_from_u64(s.seed);
    let timeout = s.config.shutdown.timeout;
    let w = s.standard_workload("sigterm", 6000);
    publish(&s.js, &w, all(&w), PUBLISH_TIMEOUT).await;
    let mut exits = Vec::new();
    let mut left = Vec::new();
    for _ in 0..3 {
        let (took, unacked) = sigterm_during_load(&mut s, rng.random_range(50..500)).await;
        exits.push(took);
        left.push(unacked);
    }
    let (mut worker, recover) = s.finishing_worker(Instant::now()).await;
    let exit = worker.terminate(timeout * 3).await;

    let extras = format!(
        "sigterms={} exit_s=[{}] unacked_after_exit={left:?} seed={}",
        exits.len(),
        exits
            .iter()
            .map(|d| secs(*d))
            .collect::<Vec<_>>()
            .join(", "),
        s.seed
    );
    s.verdict(&[&w], recover, &extras).await;
    assert!(
        exit.is_some_and(|(status, took)| status.success() && took <= timeout + EXIT_MARGIN),
        "the finishing worker exits 0 within {timeout:?}: {exit:?}"
    );
    s.cleanup().await;
}

/// A new worker, SIGTERMed once it is mid-flush with `min` messages processed: it exits 0 within
/// `shutdown.timeout` + 1 s leaving nothing unacknowledged. Returns how long it took to exit and
/// the deliveries left unacknowledged (0).
async fn sigterm_during_load(s: &mut Scenario, min: u64) -> (Duration, i64) {
    let timeout = s.config.shutdown.timeout;
    let mut worker = s.spawn_worker();
    worker.wait_up(START_TIMEOUT).await;
    assert!(
        worker.wait_mid_flush(min, Duration::from_secs(60)).await,
        "SIGTERM lands during load\n{}",
        worker.log_tail(20)
    );
    // Generous wait, so a slow exit is measured rather than cut off.
    let exit = worker.terminate(timeout * 3).await;
    let Some((status, took)) = exit else {
        panic!(
            "the worker did not exit within {:?} of SIGTERM\n{}",
            timeout * 3,
            worker.log_tail(30)
        );
    };
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        worker.log_tail(30)
    );
    assert!(
        took <= timeout + EXIT_MARGIN,
        "exited {took:?} after SIGTERM; shutdown.timeout is {timeout:?}\n{}",
        worker.log_tail(30)
    );
    // Deliveries the stopped worker left unacknowledged would wait ack_wait for the next worker:
    // a drain within shutdown.timeout settles everything it took.
    let unacked = s
        .consumer_info()
        .await
        .map_or(-1, |i| i.num_ack_pending as i64);
    assert_eq!(
        unacked,
        0,
        "deliveries left unacknowledged after a drained exit\n{}",
        worker.log_tail(30)
    );
    (took, unacked)
}

/// Scenario 7 (a combination the list above does not name): SIGTERM while the database is frozen,
/// as in a rolling restart during a database incident. The worker's timings keep the default
/// proportions (`retry.total_budget` 10 s, longer than `shutdown.timeout` 7 s; statements time out
/// after 5 s): it must still exit 0 within `shutdown.timeout` + 1 s, nak'ing what it could not write
/// so it is deliverable at once; a new worker finishes once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_database_is_frozen() {
    let mut s = Scenario::start("sigterm-db-frozen", |c| {
        c.nats.ack_wait = Duration::from_secs(15);
        c.retry.progress_interval = Duration::from_secs(3);
        c.retry.total_budget = Duration::from_secs(10);
        c.retry.nak_delay = Duration::from_secs(1);
        c.scylla.request_timeout = Duration::from_secs(5);
        c.shutdown.timeout = Duration::from_secs(7);
    })
    .await;
    let timeout = s.config.shutdown.timeout;
    let w = s.standard_workload("sigtermfrozen", 3000);
    publish(&s.js, &w, all(&w), PUBLISH_TIMEOUT).await;
    let mut worker = s.busy_worker(200, "the freeze").await;
    let thaw = freeze_cassandra().await;
    // Let the flushes in flight hang on the frozen database, then ask the worker to stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let exit = worker.terminate(timeout * 4).await;
    // What it held unsettled at the deadline was nak'd: deliverable now, not after ack_wait (15 s).
    let (deliverable, pending, awaiting) = support::deliverable_now(&s.js, &s.config).await;
    drop(thaw);
    let resumed = Instant::now();
    let log = worker.log_tail(40);

    let (mut worker, recover) = s.finishing_worker(resumed).await;
    let last_exit = worker.terminate(timeout * 4).await;

    let extras = format!(
        "exit={:?} exit_s={} shutdown_timeout_s={} unacked_after_exit={awaiting} deliverable_at_once={deliverable}/{} seed={}",
        exit.map(|(status, _)| status.code()),
        exit.map_or("none".into(), |(_, took)| secs(took)),
        secs(timeout),
        pending + awaiting,
        s.seed
    );
    s.verdict(&[&w], recover, &extras).await;
    assert_exited_in_time(&exit, timeout, &log);
    assert_eq!(
        deliverable as u64,
        pending + awaiting,
        "every delivery left unsettled at the deadline was nak'd ({awaiting} awaiting ack)\n{log}"
    );
    // Nothing waited for ack_wait before the next worker could take it (it used to: recover_s 15.1).
    let ack_wait = s.config.nats.ack_wait;
    assert!(
        recover < ack_wait,
        "recovered in {recover:?}, not faster than ack_wait {ack_wait:?}: deliveries were left unsettled"
    );
    assert_exited_zero(&last_exit, "the finishing worker");
    s.cleanup().await;
}

/// The worker exited 0 within `shutdown.timeout` + 1 s of SIGTERM (`log`: its last lines).
fn assert_exited_in_time(exit: &Exit, timeout: Duration, log: &str) {
    let Some((status, took)) = exit else {
        panic!("no exit within {:?} of SIGTERM\n{log}", timeout * 4);
    };
    assert!(status.success(), "exit status {status:?}\n{log}");
    // The drain may use all of shutdown.timeout; closing connections and exiting may add a little.
    assert!(
        *took <= timeout + EXIT_MARGIN,
        "exited {took:?} after SIGTERM with the database frozen; shutdown.timeout is {timeout:?}\n{log}"
    );
}

/// The checker itself: a database holding a known set of defects must be counted exactly, so a
/// clean summary line means something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_counts_lost_and_wrong_rows() {
    let s = Scenario::start("checker", |_| {}).await;
    let spec = Spec {
        events: 60,
        profiles: 12,
        leaderboards: 2,
        hot_keys: 1,
        hot_updates: 20,
        dup_same_id_permille: 0,
        dup_new_id_permille: 0,
    };
    let w = Workload::generate("checker", &s.config.nats.subjects[0], spec, s.seed);
    let want = w.expected();
    let buckets = s.config.scylla.leaderboard_buckets;
    let mut keys: Vec<(u16, u32)> = want.keys().copied().collect();
    keys.sort();
    assert!(keys.len() >= 6, "enough keys: {}", keys.len());
    // Defects: key 0 never written (lost twice: by-profile and leaderboard); key 1 with a second,
    // stale leaderboard row (wrong); key 2 with a wrong by-profile score (wrong); the history rows
    // of one event of key 3 and one of key 4 missing (lost twice).
    let (missing, stale, bad_score) = (keys[0], keys[1], keys[2]);
    let history_gaps: Vec<usize> = [keys[3], keys[4]]
        .iter()
        .map(|k| {
            w.events
                .iter()
                .position(|e| (e.board, e.profile) == *k)
                .expect("an event of the key")
        })
        .collect();
    let defects = Defects {
        missing,
        stale,
        bad_score,
        history_gaps: &history_gaps,
    };
    write_with_defects(&s.session, &w, buckets, &defects).await;

    let outcome = verify::verify(&s.session, &s.js, &s.config, &[&w]).await;
    let spoiled = w
        .events
        .iter()
        .enumerate()
        .filter(|(i, e)| {
            let key = (e.board, e.profile);
            key == missing || key == stale || key == bad_score || history_gaps.contains(i)
        })
        .count();
    assert_eq!(outcome.lost, 2 + 2, "{:#?}", outcome.problems);
    // Two wrong rows, and the six bad payloads that were never published, so never dead-lettered.
    assert_eq!(outcome.wrong, 2 + w.bad.len(), "{:#?}", outcome.problems);
    assert_eq!(outcome.verified, w.events.len() - spoiled);
    assert_eq!(outcome.dead_lettered, 0);
    s.cleanup().await;
}

/// What [`write_with_defects`] spoils: a key never written, a key with a second, stale leaderboard
/// row, a key with a wrong by-profile score, and events whose history row is left out.
struct Defects<'a> {
    missing: (u16, u32),
    stale: (u16, u32),
    bad_score: (u16, u32),
    history_gaps: &'a [usize],
}

/// Writes the final state of `w` as the worker would, but for `defects`.
async fn write_with_defects(
    session: &scylla::client::session::Session,
    w: &Workload,
    buckets: i32,
    defects: &Defects<'_>,
) {
    use score_worker::store::bucket_of;
    use support::KEYSPACE;

    let Defects {
        missing,
        stale,
        bad_score,
        history_gaps,
    } = *defects;
    let want = w.expected();
    for (&(b, p), &score) in &want {
        if (b, p) == missing {
            continue;
        }
        let (board, profile) = (&w.boards[b as usize], w.profiles[p as usize]);
        let stored = if (b, p) == bad_score {
            score + 1
        } else {
            score
        };
        session
            .query_unpaged(
                format!("INSERT INTO {KEYSPACE}.scores_by_profile (profile_id, leaderboard_id, score, wallet_address) VALUES (?, ?, ?, ?)"),
                (profile, board, stored, &w.wallets[p as usize]),
            )
            .await
            .expect("insert");
        let mut rows = vec![score];
        if (b, p) == stale {
            rows.push(score - 1);
        }
        for row in rows {
            session
                .query_unpaged(
                    format!("INSERT INTO {KEYSPACE}.scores (leaderboard_id, bucket, score, profile_id) VALUES (?, ?, ?, ?)"),
                    (board, bucket_of(profile, buckets), row, profile),
                )
                .await
                .expect("insert");
        }
    }
    for (i, e) in w.events.iter().enumerate() {
        if history_gaps.contains(&i) {
            continue;
        }
        let day = chrono::DateTime::from_timestamp_micros(e.at_micros)
            .unwrap()
            .date_naive();
        let at = scylla::value::CqlTimestamp(e.at_micros.div_euclid(1000));
        session
            .query_unpaged(
                format!("INSERT INTO {KEYSPACE}.score_history (profile_id, day, occurred_at, event_id, leaderboard_id, score) VALUES (?, ?, ?, ?, ?, ?)"),
                (w.profiles[e.profile as usize], day, at, w.event_id(i as u32), &w.boards[e.board as usize], e.score),
            )
            .await
            .expect("insert");
    }
}
