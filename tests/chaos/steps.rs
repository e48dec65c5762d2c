//! The steps the scenarios share, each named once: the opening (a standard workload on the
//! scenario's seed, logged), a worker busy writing before the fault, freezing the database, the
//! verdict (verify and the summary line) and the worker's clean exit.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use std::sync::Arc;

use async_nats::jetstream;
use score_worker::config::Config;

use crate::harness::{publish, scaled, services, signal, PublishStats, Scenario, Thaw, WorkerProc};
use crate::verify::{verify, Outcome};
use crate::workload::{Spec, Workload};
use crate::{DRAIN_TIMEOUT, PUBLISH_TIMEOUT, START_TIMEOUT};

/// How a worker ended: its status and how long after the signal, or `None` if it did not exit.
pub type Exit = Option<(ExitStatus, Duration)>;

/// The timings of the scenarios that take the database away (frozen, stopped): statements time
/// out after 1 s and a flush gives up after `budget`, nak'd for redelivery after 500 ms; `ack_wait`
/// 10 s, kept alive every 2 s.
pub fn database_outage_timings(c: &mut Config, budget: Duration) {
    c.scylla.request_timeout = Duration::from_secs(1);
    c.retry.total_budget = budget;
    c.retry.nak_delay = Duration::from_millis(500);
    c.nats.ack_wait = Duration::from_secs(10);
    c.retry.progress_interval = Duration::from_secs(2);
}

impl Scenario {
    /// The opening: a standard workload of `events` (times `SCORE_WORKER_CHAOS_SCALE`) named
    /// `tag`, on the scenario's subject and seed, logged with the seed that replays it.
    pub fn standard_workload(&self, tag: &str, events: usize) -> Workload {
        let w = Workload::generate(
            tag,
            &self.config.nats.subjects[0],
            Spec::standard(scaled(events)),
            self.seed,
        );
        eprintln!("{}: seed {} — {}", self.name, self.seed, w.summary());
        w
    }

    /// A new worker, up and in the middle of a flush with at least `min_processed` messages
    /// behind it, before the fault named by `before`.
    pub async fn busy_worker(&mut self, min_processed: u64, before: &str) -> WorkerProc {
        let mut worker = self.spawn_worker();
        worker.wait_up(START_TIMEOUT).await;
        assert!(
            worker
                .wait_mid_flush(min_processed, Duration::from_secs(60))
                .await,
            "the worker writes before {before}\n{}",
            worker.log_tail(20)
        );
        worker
    }

    /// A new worker that finishes the work after the fault, begun at `since`: up, and the durable
    /// consumer drained (within `DRAIN_TIMEOUT`). The worker and the time since `since`.
    pub async fn finishing_worker(&mut self, since: Instant) -> (WorkerProc, Duration) {
        let mut worker = self.spawn_worker();
        worker.wait_up(START_TIMEOUT).await;
        self.wait_drained(std::slice::from_mut(&mut worker), DRAIN_TIMEOUT)
            .await;
        (worker, since.elapsed())
    }

    /// The verdict: the database and the dead-letter stream against `workloads`, printed as the
    /// scenario's summary line (`recover` and `extras`) and asserted clean.
    pub async fn verdict(
        &self,
        workloads: &[&Workload],
        recover: Duration,
        extras: &str,
    ) -> Outcome {
        self.verdict_with(&self.session, workloads, recover, extras)
            .await
    }

    /// [`Scenario::verdict`] read through `session`.
    pub async fn verdict_with(
        &self,
        session: &scylla::client::session::Session,
        workloads: &[&Workload],
        recover: Duration,
        extras: &str,
    ) -> Outcome {
        let outcome = verify(session, &self.js, &self.config, workloads).await;
        outcome.report(self.name, &crate::harness::secs(recover), extras);
        outcome
    }
}

/// SIGSTOPs the pair's Cassandra; it resumes when the returned guard is dropped.
pub async fn freeze_cassandra() -> Thaw {
    let pid: u32 = services("cassandra-pid")
        .await
        .parse()
        .expect("a Cassandra pid");
    assert!(signal(pid, "STOP"), "SIGSTOP Cassandra {pid}");
    Thaw(pid)
}

/// The worker exited 0 after SIGTERM.
pub fn assert_exited_zero(exit: &Exit, what: &str) {
    assert!(
        exit.is_some_and(|(status, _)| status.success()),
        "{what}: exit 0 on SIGTERM: {exit:?}"
    );
}

/// Publishes `range` of `w` in 40 steps, 200 ms apart (about 8 s), retrying what a fault refuses.
pub fn paced_publisher(
    js: &jetstream::Context,
    w: &Arc<Workload>,
    range: std::ops::Range<usize>,
) -> tokio::task::JoinHandle<PublishStats> {
    let (js, w) = (js.clone(), w.clone());
    tokio::spawn(async move {
        let mut stats = PublishStats::default();
        let step = range.len().div_ceil(40).max(1);
        for start in range.clone().step_by(step) {
            let part = start..(start + step).min(range.end);
            stats.add(publish(&js, &w, part, PUBLISH_TIMEOUT).await);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stats
    })
}
