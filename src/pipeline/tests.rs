//! The pipeline's logic against a fake store and fake receipts, on a paused clock.

use super::*;
use crate::breaker::State;
use crate::config::RetryConfig;
use crate::health::Health;
use crate::score::RejectReason;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
enum Settled {
    Ack,
    Nak,
    Dead(RejectReason),
}

#[derive(Clone)]
struct FakeReceipt {
    id: usize,
    delivered: i64,
    log: Arc<Mutex<Vec<(usize, Settled)>>>,
}

impl Receipt for FakeReceipt {
    fn received_at(&self) -> Instant {
        Instant::now()
    }
    fn delivered(&self) -> i64 {
        self.delivered
    }
    async fn settle(&self, outcome: &Outcome) -> Result<(), SettleError> {
        let settled = match outcome {
            Outcome::Ack => Settled::Ack,
            Outcome::Retry { .. } => Settled::Nak,
            Outcome::DeadLetter { reason, .. } => Settled::Dead(*reason),
        };
        self.log.lock().unwrap().push((self.id, settled));
        Ok(())
    }
}

/// The fake store's failure: its class, and whether it refuses the values written.
#[derive(Debug, thiserror::Error)]
#[error("fake failure ({class:?}, values refused: {values})")]
struct FakeError {
    class: Class,
    values: bool,
}

impl WriteError for FakeError {
    fn class(&self) -> Class {
        self.class
    }
    fn refuses_values(&self) -> bool {
        self.values
    }
}

const DOWN: FakeError = FakeError {
    class: Class::Retryable,
    values: false,
};
const REFUSED: FakeError = FakeError {
    class: Class::Permanent,
    values: false,
};
const POISON: FakeError = FakeError {
    class: Class::Permanent,
    values: true,
};

/// One call of the fake store: how many of its kind came before, how long after the start, and the
/// keys written (none for a probe).
struct Call<'a> {
    n: usize,
    at: Duration,
    latest: &'a [ScoreUpdate],
}

/// When a call of the fake store fails, and how.
type Rule = Box<dyn Fn(&Call) -> Option<FakeError> + Send + Sync>;

/// Writes and probes answered by rules; records the writes that succeed.
struct FakeStore {
    start: Instant,
    write_rule: Rule,
    probe_rule: Rule,
    write_delay: Duration,
    /// How many writes wait `write_delay`.
    hangs: AtomicUsize,
    writes: AtomicUsize,
    probes: AtomicUsize,
    flushes: Mutex<Vec<(usize, usize)>>,
}

impl FakeStore {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            write_rule: Box::new(|_| None),
            probe_rule: Box::new(|_| None),
            write_delay: Duration::ZERO,
            hangs: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
            probes: AtomicUsize::new(0),
            flushes: Mutex::new(vec![]),
        }
    }

    /// The first `n` writes fail with `error`'s class.
    fn failing_first(n: usize, class: Class) -> Self {
        let mut store = Self::new();
        store.write_rule = Box::new(move |c| {
            (c.n < n).then_some(FakeError {
                class,
                values: false,
            })
        });
        store
    }

    /// Every write holding one of `scores` fails with `error`.
    fn failing_scores(scores: Vec<i64>, error: FakeError) -> Self {
        let mut store = Self::new();
        let (class, values) = (error.class, error.values);
        store.write_rule = Box::new(move |c| {
            c.latest
                .iter()
                .any(|u| scores.contains(&u.score))
                .then_some(FakeError { class, values })
        });
        store
    }

    /// Every write and every probe fails with `error` for the first `length` of the run.
    fn out_for(length: Duration, error: FakeError) -> Self {
        let mut store = Self::new();
        let (class, values) = (error.class, error.values);
        let rule = move |c: &Call| (c.at < length).then_some(FakeError { class, values });
        store.write_rule = Box::new(rule);
        store.probe_rule = Box::new(rule);
        store
    }

    fn succeeded(&self) -> usize {
        self.flushes.lock().unwrap().iter().map(|(l, _)| l).sum()
    }
}

impl Store for FakeStore {
    type Error = FakeError;

    async fn write(
        &self,
        latest: &[ScoreUpdate],
        events: &[ScoreUpdate],
        _earlier: &[ScoreUpdate],
    ) -> Result<(), FakeError> {
        if self
            .hangs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            tokio::time::sleep(self.write_delay).await;
        }
        let call = Call {
            n: self.writes.fetch_add(1, Ordering::SeqCst),
            at: self.start.elapsed(),
            latest,
        };
        if let Some(e) = (self.write_rule)(&call) {
            return Err(e);
        }
        self.flushes
            .lock()
            .unwrap()
            .push((latest.len(), events.len()));
        Ok(())
    }

    async fn probe(&self) -> Result<(), FakeError> {
        let call = Call {
            n: self.probes.fetch_add(1, Ordering::SeqCst),
            at: self.start.elapsed(),
            latest: &[],
        };
        match (self.probe_rule)(&call) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn config() -> PipelineConfig {
    PipelineConfig {
        max_scores: 50,
        linger: Duration::from_millis(100),
        max_inflight: 2,
        newest_written_keys: 1000,
        max_deliver: 5,
        retry: RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_attempts: 4,
            total_budget: Duration::from_secs(60),
            nak_delay: Duration::from_secs(5),
            progress_interval: Duration::from_millis(250),
        },
    }
}

fn update(i: usize) -> ScoreUpdate {
    ScoreUpdate {
        event_id: format!("e{i}"),
        profile_id: Uuid::from_u128(i as u128),
        wallet_address: format!("0x{:040x}", i),
        leaderboard_id: "lb".into(),
        score: i as i64,
        occurred_at_micros: 1_000_000 + i as i64,
    }
}

/// A pipeline fed `n` messages (`update(i)` for message `i`), each on its `delivered`-th delivery.
struct Run {
    store: Arc<FakeStore>,
    breaker: Arc<Breaker>,
    health: Arc<Health>,
    log: Arc<Mutex<Vec<(usize, Settled)>>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Run {
    async fn start(store: FakeStore, n: usize, delivered: i64) -> Run {
        let store = Arc::new(store);
        let metrics = Arc::new(Metrics::new());
        let breaker = Arc::new(Breaker::new(metrics.clone()));
        let health = Arc::new(Health::new(metrics.clone(), breaker.clone()));
        let pipeline = Pipeline::new(store.clone(), config(), metrics, breaker.clone());
        let (tx, rx) = mpsc::channel(8);
        let log = Arc::new(Mutex::new(vec![]));
        let handle = tokio::spawn(pipeline.run(rx));
        for i in 0..n {
            let receipt = FakeReceipt {
                id: i,
                delivered,
                log: log.clone(),
            };
            tx.send((update(i), receipt)).await.unwrap();
        }
        drop(tx);
        Run {
            store,
            breaker,
            health,
            log,
            handle,
        }
    }

    fn settled(&self) -> Vec<(usize, Settled)> {
        self.log.lock().unwrap().clone()
    }

    async fn finish(self) -> (Arc<FakeStore>, Vec<(usize, Settled)>) {
        self.handle.await.unwrap();
        let settled = self.log.lock().unwrap().clone();
        (self.store, settled)
    }
}

async fn run(
    store: FakeStore,
    n: usize,
    delivered: i64,
) -> (Arc<FakeStore>, Vec<(usize, Settled)>) {
    Run::start(store, n, delivered).await.finish().await
}

/// Exactly `n` messages, each settled once, all as `want`.
fn assert_all(settled: &[(usize, Settled)], n: usize, want: Settled) {
    assert_eq!(settled.len(), n, "{settled:?}");
    let mut ids: Vec<usize> = settled.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "a message was settled twice: {settled:?}");
    assert!(settled.iter().all(|(_, s)| *s == want), "{settled:?}");
}

/// The ids settled as `want`, sorted.
fn settled_as(settled: &[(usize, Settled)], want: &Settled) -> Vec<usize> {
    let mut ids: Vec<usize> = settled
        .iter()
        .filter(|(_, s)| s == want)
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(start_paused = true)]
async fn every_message_is_acked_after_its_flush_is_written() {
    let (store, settled) = run(FakeStore::new(), 120, 1).await;
    let flushes = store.flushes.lock().unwrap().clone();
    assert_eq!(flushes, vec![(50, 50), (50, 50), (20, 20)]);
    assert_all(&settled, 120, Settled::Ack);
    assert_eq!(
        store.probes.load(Ordering::SeqCst),
        0,
        "no probe without a failure"
    );
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_then_acked() {
    let (store, settled) = run(FakeStore::failing_first(3, Class::Retryable), 10, 1).await;
    assert_eq!(store.flushes.lock().unwrap().len(), 1);
    assert_all(&settled, 10, Settled::Ack);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_database_holds_the_flush_until_it_answers_never_naking() {
    // Down for ten minutes, ten times the retry budget: the flush is held (probed every second),
    // never given back, never split; written once the database answers.
    let started = Instant::now();
    let (store, settled) = run(FakeStore::out_for(Duration::from_secs(600), DOWN), 10, 1).await;
    assert_all(&settled, 10, Settled::Ack);
    assert_eq!(store.flushes.lock().unwrap().clone(), vec![(10, 10)]);
    assert!(
        started.elapsed() >= Duration::from_secs(600),
        "held across the outage"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_of_every_write_is_held_like_an_outage_not_split_nor_dead_lettered() {
    // A revoked grant for five minutes, on the last delivery: nothing is dead-lettered, pulls stay
    // paused and readiness names the cause meanwhile, and the flush is not split into 19 failing
    // writes: one failed write, then the probe until it passes, then the write that lands.
    let run = Run::start(FakeStore::out_for(Duration::from_secs(300), REFUSED), 10, 5).await;
    tokio::time::sleep(Duration::from_secs(150)).await;
    assert!(run.settled().is_empty(), "held, not settled");
    let breaker = run.health.breaker();
    assert_eq!(breaker.state(), State::Open);
    breaker.close();
    breaker.half_open();
    assert_eq!(
        breaker.state(),
        State::Open,
        "neither a written flush nor the health probe resumes pulls while writes are held"
    );
    let reasons = run.health.readiness().unwrap_err();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("takes no writes: fake failure (Permanent")),
        "{reasons:?}"
    );
    let (store, settled) = run.finish().await;
    assert_all(&settled, 10, Settled::Ack);
    assert_eq!(store.writes.load(Ordering::SeqCst), 2, "no bisection");
    let probes = store.probes.load(Ordering::SeqCst);
    assert!(
        (290..=310).contains(&probes),
        "one probe a second: {probes}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_that_fails_while_the_database_answers_is_isolated_and_given_back_its_mates_land() {
    // A key whose read-back always fails (a retryable error) while everything else is written: its
    // flush-mates land after one budget of retries, it is nak'd for another round.
    let store = FakeStore::failing_scores(vec![7], DOWN);
    let (store, settled) = run(store, 20, 1).await;
    assert_eq!(settled_as(&settled, &Settled::Nak), vec![7]);
    assert_eq!(settled_as(&settled, &Settled::Ack).len(), 19);
    assert_eq!(store.succeeded(), 19, "every other key written once");
}

#[tokio::test(start_paused = true)]
async fn a_key_that_fails_on_its_last_delivery_is_dead_lettered_as_write_failed() {
    let store = FakeStore::failing_scores(vec![3, 11], DOWN);
    let (store, settled) = run(store, 20, 5).await;
    assert_eq!(
        settled_as(&settled, &Settled::Dead(RejectReason::WriteFailed)),
        vec![3, 11]
    );
    assert_eq!(settled_as(&settled, &Settled::Ack).len(), 18);
    assert_eq!(store.succeeded(), 18);
}

#[tokio::test(start_paused = true)]
async fn a_lone_failing_key_is_its_own_when_the_probe_passes() {
    // A flush of one key: nothing to split; the probe tells that the database takes writes.
    let run = Run::start(FakeStore::failing_scores(vec![0], DOWN), 1, 5).await;
    let breaker = run.breaker.clone();
    let (store, settled) = run.finish().await;
    assert_all(&settled, 1, Settled::Dead(RejectReason::WriteFailed));
    assert_eq!(
        store.writes.load(Ordering::SeqCst),
        4,
        "one budget of retries, no more"
    );
    // The retries paused pulls; the write probe that passed lets the next message be tried at once,
    // so a key that keeps failing does not pause its replica until the health probe next runs.
    assert_eq!(breaker.state(), State::HalfOpen { probing: false });
}

#[tokio::test(start_paused = true)]
async fn values_refused_are_not_retried_and_dead_lettered_at_once() {
    // A flush of one key whose values the database refuses: one write, no retry, dead-lettered
    // on its first delivery (the probe says the database takes other writes).
    let (store, settled) = run(FakeStore::failing_scores(vec![0], POISON), 1, 1).await;
    assert_all(&settled, 1, Settled::Dead(RejectReason::WriteRejected));
    assert_eq!(store.writes.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_of_a_larger_flush_is_tried_again_in_halves_without_backoff() {
    // The first attempt fails permanently; the halves are written at once, not after a backoff.
    let started = Instant::now();
    let (store, settled) = run(FakeStore::failing_first(1, Class::Permanent), 6, 1).await;
    assert_all(&settled, 6, Settled::Ack);
    assert_eq!(store.flushes.lock().unwrap().len(), 2, "two halves");
    assert!(started.elapsed() < Duration::from_millis(200), "no backoff");
}

#[tokio::test(start_paused = true)]
async fn a_poison_key_is_isolated_and_dead_lettered_while_its_flush_mates_land() {
    let (store, settled) = run(FakeStore::failing_scores(vec![3, 17], POISON), 20, 1).await;
    assert_eq!(
        settled_as(&settled, &Settled::Dead(RejectReason::WriteRejected)),
        vec![3, 17]
    );
    assert_eq!(settled_as(&settled, &Settled::Ack).len(), 18);
    assert_eq!(settled.len(), 20);
    assert_eq!(store.succeeded(), 18, "every good key written once");
}

#[tokio::test(start_paused = true)]
async fn keys_that_all_fail_while_the_database_goes_away_are_held_then_written() {
    // The flush fails, the probe passes, every part fails — because the database went away meanwhile
    // (the second probe fails): the keys are not blamed, they are held and written once it is back.
    let mut store = FakeStore::new();
    store.write_rule = Box::new(|c| (c.at < Duration::from_secs(120)).then_some(DOWN));
    store.probe_rule = Box::new(|c| (c.n >= 1 && c.at < Duration::from_secs(120)).then_some(DOWN));
    let (store, settled) = run(store, 4, 5).await;
    assert_all(&settled, 4, Settled::Ack);
    assert_eq!(store.succeeded(), 4);
}

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_the_wall_clock_of_a_hanging_write() {
    // The first write hangs for 600 s: the 60 s budget cuts it off; the database answers the probe,
    // so the flush is written in halves at once.
    let mut store = FakeStore::new();
    store.write_delay = Duration::from_secs(600);
    store.hangs = AtomicUsize::new(1);
    let started = Instant::now();
    let (store, settled) = run(store, 3, 1).await;
    assert_all(&settled, 3, Settled::Ack);
    assert_eq!(store.succeeded(), 3);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(60) && took < Duration::from_secs(120),
        "{took:?}"
    );
}
