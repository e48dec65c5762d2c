//! The database really stopped (SIGTERM, its port closed: not frozen) under load: the live worker
//! says 503 on `/readyz` and why, counts `score_worker_scylla_connection_failures_total` up, says
//! `draining` on `/readyz` after its SIGTERM and still exits 0 within `shutdown.timeout` + 1 s; a new
//! worker finishes once the database is back.

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::steps::{assert_exited_zero, database_outage_timings};
use crate::support::poll;
use crate::workload::Workload;
use crate::{EXIT_MARGIN, PUBLISH_TIMEOUT};

/// Starts the chaos pair's Cassandra again when dropped, should the scenario panic while it is down.
struct StartAgain(bool);
impl Drop for StartAgain {
    fn drop(&mut self) {
        if self.0 {
            let _ = services_blocking("start-cassandra");
        }
    }
}

const FAILURES: &str = "score_worker_scylla_connection_failures_total";
const PENDING: &str = "score_worker_consumer_pending";

/// Polls `/readyz` until its status is `want` and its body has `needle`; the body and when.
async fn wait_readyz(
    worker: &mut WorkerProc,
    want: u16,
    needle: &str,
    timeout: Duration,
) -> (String, Duration) {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < timeout && worker.running() {
        last = worker.readyz().await;
        if let Some((status, body)) = &last {
            if *status == want && body.contains(needle) {
                return (body.trim().to_string(), started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "/readyz: want {want} with `{needle}` within {timeout:?}, last {last:?}\n{}",
        worker.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_stopped_fails_readiness_and_counts_connection_failures() {
    let mut s = Scenario::start("db-stopped", |c| {
        database_outage_timings(c, Duration::from_secs(3));
        c.shutdown.timeout = Duration::from_secs(5);
    })
    .await;
    let timeout = s.config.shutdown.timeout;
    let w = s.standard_workload("dbstopped", 3000);
    let half = w.items.len() / 2;
    publish(&s.js, &w, 0..half, PUBLISH_TIMEOUT).await;
    let mut worker = s.busy_worker(200, "the stop").await;
    let ready_before = worker.readyz().await.map(|(status, _)| status);

    let failures_at_stop = worker.metric(FAILURES).await as u64;
    let stopping = Instant::now();
    let mut again = StartAgain(true);
    let out = services("stop-cassandra").await;
    eprintln!("{out}");
    let stopped_in = stopping.elapsed();
    // Load keeps coming while the database is gone.
    publish(&s.js, &w, half..w.items.len(), PUBLISH_TIMEOUT).await;
    let (not_ready, not_ready_after) =
        wait_readyz(&mut worker, 503, "database", Duration::from_secs(60)).await;
    // The counter rises once the writes meet the closed port.
    let seen = wait_failures_rise(&worker, failures_at_stop).await;

    // Nothing is acked while the database is gone: the lag gauge must show the known backlog, what
    // was stored less what this worker acked (written or dead-lettered).
    let (pending, known) = wait_pending_is_the_backlog(&s, &worker, &w).await;

    // SIGTERM with the database still gone: `draining` while it hands back what it holds.
    let term = Instant::now();
    assert!(signal(worker.pid(), "TERM"), "SIGTERM the worker");
    let (draining, _) = wait_readyz(&mut worker, 503, "draining", timeout).await;
    let exit = worker.terminate(timeout * 3).await;
    let exit_s = term.elapsed();

    let starting = Instant::now();
    let out = services("start-cassandra").await;
    again.0 = false;
    eprintln!("{out}");
    let back_in = starting.elapsed();
    let (mut worker, recover) = s.finishing_worker(Instant::now()).await;
    let (ready_after, _) = wait_readyz(&mut worker, 200, "", Duration::from_secs(30)).await;
    let last_exit = worker.terminate(timeout * 3).await;

    // The suite's own session saw the node go away; its pool reconnects on the driver's schedule, which
    // may be later than the worker's. Verify through a session opened now, against the restarted node.
    let fresh = score_worker::store::connect(&s.config.scylla)
        .await
        .expect("a session to the restarted database");
    let extras = format!(
        "stop_s={} readyz=[{ready_before:?}, 503 after {}s: {not_ready:?}, 503 on SIGTERM: {draining:?}, then {ready_after:?}] \
         connection_failures={} consumer_pending={pending} known_backlog={known} exit={:?} exit_s={} start_s={} seed={}",
        secs(stopped_in),
        secs(not_ready_after),
        seen.iter().map(u64::to_string).collect::<Vec<_>>().join("->"),
        exit.map(|(status, _)| status.code()),
        secs(exit_s),
        secs(back_in),
        s.seed
    );
    s.verdict_with(&fresh, &[&w], recover, &extras).await;
    assert_eq!(ready_before, Some(200), "ready before the stop");
    let Some((status, _)) = exit else {
        panic!("no exit within {:?} of SIGTERM", timeout * 3);
    };
    assert!(status.success(), "exit 0 on SIGTERM: {status:?}");
    assert!(
        exit_s <= timeout + EXIT_MARGIN,
        "exited {exit_s:?} after SIGTERM with the database stopped; shutdown.timeout is {timeout:?}"
    );
    assert_exited_zero(&last_exit, "the finishing worker");
    s.cleanup().await;
}

/// Waits (at most 60 s) until the connection-failure counter rises above `failures_at_stop`; returns the
/// values seen.
async fn wait_failures_rise(worker: &WorkerProc, failures_at_stop: u64) -> Vec<u64> {
    let (timeout, every) = (Duration::from_secs(60), Duration::from_millis(200));
    let what = format!("{FAILURES} to rise after the stop");
    let risen = poll(&what, timeout, every, || async {
        let now = worker.metric(FAILURES).await as u64;
        if now > failures_at_stop {
            Ok(now)
        } else {
            Err(format!("still {now}\n{}", worker.log_tail(20)))
        }
    })
    .await;
    vec![failures_at_stop, risen]
}

/// Waits (at most 30 s) until the worker's pending gauge equals the known backlog: what was stored
/// less what the worker acked. Returns both.
async fn wait_pending_is_the_backlog(
    s: &Scenario,
    worker: &WorkerProc,
    w: &Workload,
) -> (i64, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = worker.metrics().await.unwrap_or_default();
        let acked: f64 = m
            .iter()
            .filter(|(k, _)| {
                k.starts_with("score_worker_dead_letters_total")
                    || k.as_str() == "score_worker_messages_processed_total"
            })
            .map(|(_, v)| v)
            .sum();
        let known = w.stored_messages() as u64 - acked as u64;
        let pending = m.get(PENDING).copied().unwrap_or(-1.0) as i64;
        if pending == known as i64 {
            return (pending, known);
        }
        assert!(
            Instant::now() < deadline,
            "{PENDING} is {pending}, the known backlog {known} (server: {:?})",
            s.consumer_info()
                .await
                .map(|i| (i.num_pending, i.num_ack_pending))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
