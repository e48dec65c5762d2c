//! receive → batch → write with retries → settle receipts.
//!
//! Generic over the [`Store`] and the [`Receipt`] (both defined in [`ports`]), so its logic is
//! unit-tested with fakes; the real servers prove the integration in `tests/`. A flush's messages are
//! settled together by [`settle::decide`]: written → acked; not written within `retry.total_budget` →
//! nak'd with `retry.nak_delay`, or dead-lettered as `max_deliveries` on the last delivery. Whatever
//! the pipeline holds, the consumer keeps alive with `+WPI` (`consumer::Unsettled`).

pub mod ports;
pub mod settle;
mod written;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

pub use crate::config::PipelineConfig;
pub use ports::{Class, Receipt, SettleError, Store, WriteError};
pub use settle::{Attempt, Outcome, Settler};

use crate::batcher::{Batcher, Flush};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::retry;
use crate::score::ScoreUpdate;
use written::NewestWritten;

pub struct Pipeline<S> {
    store: Arc<S>,
    config: PipelineConfig,
    written: NewestWritten,
    settler: Settler,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Numbers the flushes of this process, for their log span.
    flushes: AtomicU64,
}

impl<S: Store> Pipeline<S> {
    pub fn new(
        store: Arc<S>,
        config: PipelineConfig,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        let settler = Settler::new(
            settle::Limits {
                max_deliver: config.max_deliver,
                nak_delay: config.retry.nak_delay,
            },
            metrics.clone(),
        );
        Self {
            store,
            written: NewestWritten::new(config.newest_written_keys),
            config,
            settler,
            metrics,
            health,
            flushes: AtomicU64::new(0),
        }
    }

    /// The settler the pipeline settles with; the consumer and the advisory watcher share it.
    pub fn settler(&self) -> &Settler {
        &self.settler
    }

    /// Runs until `input` closes, then writes what is buffered and waits for every flush to settle.
    pub async fn run<R: Receipt>(self, mut input: mpsc::Receiver<(ScoreUpdate, R)>) {
        let this = Arc::new(self);
        let mut batcher = Batcher::new(this.config.max_scores, this.config.linger);
        let permits = Arc::new(Semaphore::new(this.config.max_inflight));
        let mut tasks = JoinSet::new();
        loop {
            let linger = async {
                match batcher.deadline() {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let closed = tokio::select! {
                item = input.recv() => match item {
                    Some((update, receipt)) => {
                        let first_delivery = receipt.delivered() <= 1;
                        if let Some(flush) = batcher.push(update, receipt, first_delivery, Instant::now()) {
                            this.dispatch(flush, &permits, &mut tasks).await;
                        }
                        false
                    }
                    None => true,
                },
                () = linger => {
                    let flush = batcher.take();
                    this.dispatch(flush, &permits, &mut tasks).await;
                    false
                }
            };
            while let Some(done) = tasks.try_join_next() {
                log_join(done);
            }
            if closed {
                break;
            }
        }
        if !batcher.is_empty() {
            let flush = batcher.take();
            this.dispatch(flush, &permits, &mut tasks).await;
        }
        while let Some(done) = tasks.join_next().await {
            log_join(done);
        }
    }

    /// Waits for a free slot (this is the backpressure: no slot, no more pulling), then writes.
    async fn dispatch<R: Receipt>(
        self: &Arc<Self>,
        flush: Flush<R>,
        permits: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
    ) {
        if flush.receipts.is_empty() {
            return;
        }
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let span = tracing::info_span!(
            "flush",
            id = self.flushes.fetch_add(1, Ordering::Relaxed) + 1,
            scores = flush.scores(),
            events = flush.events.len(),
            attempt = 1u32,
        );
        let this = self.clone();
        tasks.spawn(async move { this.write_flush(flush, permit).await }.instrument(span));
    }

    /// Writes a flush holding a write slot, frees the slot, then settles its messages (acks need no
    /// database, so the next flush need not wait for them).
    async fn write_flush<R: Receipt>(&self, flush: Flush<R>, slot: OwnedSemaphorePermit) {
        let m = &self.metrics;
        let attempts = AtomicU32::new(1);
        m.inflight_batches.inc();
        m.batch_size.observe(flush.scores() as f64);
        let write = async {
            let skipped: Vec<ScoreUpdate>;
            let latest = match self.unwritten(&flush) {
                None => &flush.latest[..],
                Some(keys) => {
                    m.superseded_skips
                        .inc_by((flush.latest.len() - keys.len()) as u64);
                    skipped = keys;
                    &skipped[..]
                }
            };
            let mut result = self
                .write_with_retries(latest, &flush.events, &attempts)
                .await;
            // While the database cannot be reached, hold the flush (its messages kept alive by +WPI)
            // instead of giving it back: a nak would burn a delivery per cycle, and an outage longer
            // than max_deliver cycles would dead-letter good traffic. Pulling is paused meanwhile.
            while let Err(Written::No(Class::Retryable, detail)) = &result {
                self.health.pause_pulls(detail);
                self.health.resumed().await;
                let next = attempts.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::Span::current().record("attempt", next);
                result = self
                    .write_with_retries(latest, &flush.events, &attempts)
                    .await;
            }
            match result {
                Ok(()) => vec![Written::Yes; flush.latest.len()],
                Err(Written::No(Class::Permanent, _)) if flush.latest.len() > 1 => {
                    self.isolate(&flush).await
                }
                Err(failure) => vec![failure; flush.latest.len()],
            }
        };
        let mut outcomes = write.await;
        drop(slot);
        m.inflight_batches.dec();
        self.account(&flush, &mut outcomes);
        futures::future::join_all(flush.receipts.iter().zip(&flush.receipt_keys).map(
            |(receipt, &key)| {
                let attempt = match &outcomes[key] {
                    Written::Yes => Attempt::Written,
                    Written::Rejected(detail) => Attempt::WriteRejected { detail },
                    Written::No(class, detail) => Attempt::NotWritten {
                        class: *class,
                        detail,
                    },
                };
                self.settler.settle(receipt, attempt)
            },
        ))
        .await;
    }

    /// Writes, retrying transient failures within `retry.total_budget` (which bounds the wall clock of
    /// all attempts: a write cut off by it may or may not have landed, which is fine, it is idempotent
    /// and its messages are given back, never acked).
    async fn write_with_retries(
        &self,
        latest: &[ScoreUpdate],
        events: &[ScoreUpdate],
        attempts: &AtomicU32,
    ) -> Result<(), Written> {
        let attempts = retry::run_with_retries(
            &self.config.retry,
            || self.store.write(latest, events),
            |e| e.class() == Class::Retryable,
            |e, delay| {
                // The span shows the attempt the next lines belong to.
                let next = attempts.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::Span::current().record("attempt", next);
                self.metrics.batch_retries.inc();
                self.health.pause_pulls(&e.to_string());
                tracing::warn!(error = %e, retry_in = ?delay, scores = latest.len(), "flush write failed; retrying");
            },
        );
        match tokio::time::timeout(self.config.retry.total_budget, attempts).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Written::No(error.class(), error.to_string())),
            Err(_elapsed) => {
                let detail = format!(
                    "retry budget of {:?} exhausted",
                    self.config.retry.total_budget
                );
                self.health.pause_pulls(&detail);
                Err(Written::No(Class::Retryable, detail))
            }
        }
    }

    /// A flush that failed permanently, split in halves until the keys the database refuses are found;
    /// the rest are written. Each part is one attempt (a transient failure gives that part back).
    async fn isolate<R>(&self, flush: &Flush<R>) -> Vec<Written> {
        let mut outcomes = vec![Written::Yes; flush.latest.len()];
        let all: Vec<usize> = (0..flush.latest.len()).collect();
        let mut parts: Vec<Vec<usize>> = all
            .chunks(all.len().div_ceil(2))
            .map(<[_]>::to_vec)
            .collect();
        while let Some(part) = parts.pop() {
            let latest: Vec<ScoreUpdate> = part.iter().map(|&i| flush.latest[i].clone()).collect();
            let events: Vec<ScoreUpdate> = flush
                .events
                .iter()
                .filter(|e| latest.iter().any(|u| u.key() == e.key()))
                .cloned()
                .collect();
            let failure = match self.store.write(&latest, &events).await {
                Ok(()) => continue,
                Err(e) => (e.class(), e.to_string()),
            };
            match failure {
                (Class::Permanent, detail) if part.len() == 1 => {
                    outcomes[part[0]] = Written::Rejected(detail);
                }
                (Class::Permanent, _) => {
                    parts.extend(part.chunks(part.len().div_ceil(2)).map(<[_]>::to_vec));
                }
                (class, detail) => {
                    for &i in &part {
                        outcomes[i] = Written::No(class, detail.clone());
                    }
                }
            }
        }
        outcomes
    }

    /// Health, the hint and the log for a flush's outcomes. A refusal counts as the key's own only if
    /// some flush-mate was written; if none was, the cause is not in the rows (a missing table, a
    /// revoked grant): nothing is dead-lettered, the messages are given back and readiness fails until
    /// an operator fixes it.
    fn account<R>(&self, flush: &Flush<R>, outcomes: &mut [Written]) {
        if !outcomes.iter().any(|o| matches!(o, Written::Yes)) {
            for o in outcomes.iter_mut() {
                if let Written::Rejected(detail) = o {
                    *o = Written::No(Class::Permanent, std::mem::take(detail));
                }
            }
        }
        let written = || {
            flush
                .latest
                .iter()
                .zip(outcomes.iter())
                .filter(|(_, o)| matches!(o, Written::Yes))
                .map(|(u, _)| u)
        };
        if written().next().is_some() {
            self.health.write_succeeded();
            self.health.resume_pulls();
            self.written.record(written());
        } else if let Some(Written::No(Class::Retryable, detail)) = outcomes.first() {
            self.health.pause_pulls(detail);
        }
        for o in outcomes.iter() {
            match o {
                Written::No(Class::Permanent, detail) => {
                    self.health.permanent_failure(detail);
                    break;
                }
                Written::Rejected(detail) => {
                    tracing::warn!(%detail, "the database refused one key's rows; its messages are dead-lettered, its flush-mates written");
                }
                Written::Yes | Written::No(..) => {}
            }
        }
        if let Some(Written::No(_, detail)) = outcomes.iter().find(|o| matches!(o, Written::No(..)))
        {
            tracing::warn!(%detail, messages = flush.receipts.len(), "flush not written; giving its messages back");
        }
    }
}

/// What happened to one key of a flush.
#[derive(Debug, Clone)]
enum Written {
    Yes,
    /// Refused permanently by the database while flush-mates were written.
    Rejected(String),
    /// Not written: the class of the last failure, and what it was.
    No(Class, String),
}

impl<S> Pipeline<S> {
    /// The keys of a flush that still need their leaderboard writes, when the newest-written hint
    /// covers some (`None`: all of them). Only keys whose messages are all first deliveries may be
    /// skipped: an earlier delivery may have written part of its rows, which the full protocol cleans.
    fn unwritten<R>(&self, flush: &Flush<R>) -> Option<Vec<ScoreUpdate>> {
        let covered = |(u, first): (&ScoreUpdate, &bool)| *first && self.written.covers(u);
        if !flush.latest.iter().zip(&flush.first_delivery).any(covered) {
            return None;
        }
        Some(
            flush
                .latest
                .iter()
                .zip(&flush.first_delivery)
                .filter(|&pair| !covered(pair))
                .map(|(u, _)| u.clone())
                .collect(),
        )
    }
}

fn log_join(result: Result<(), tokio::task::JoinError>) {
    if let Err(e) = result {
        tracing::error!(error = %e, "flush task panicked; its messages will be redelivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryConfig;
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

    /// The fake store's failure, of the class it was told to be.
    #[derive(Debug, thiserror::Error)]
    #[error("fake failure ({0:?})")]
    struct FakeError(Class);

    impl WriteError for FakeError {
        fn class(&self) -> Class {
            self.0
        }
    }

    /// Fails the first `failures` writes with `error`, records successful flushes.
    struct FakeStore {
        failures: AtomicUsize,
        permanent: bool,
        write_delay: Duration,
        /// How many writes wait `write_delay` (all of them unless set).
        hangs: AtomicUsize,
        /// Scores the database refuses permanently, in any write that holds them.
        poison: Vec<i64>,
        flushes: Mutex<Vec<(usize, usize)>>,
    }

    impl FakeStore {
        fn new(failures: usize, permanent: bool) -> Self {
            Self {
                failures: AtomicUsize::new(failures),
                permanent,
                write_delay: Duration::ZERO,
                hangs: AtomicUsize::new(usize::MAX),
                poison: vec![],
                flushes: Mutex::new(vec![]),
            }
        }
    }

    impl Store for FakeStore {
        type Error = FakeError;

        async fn write(
            &self,
            latest: &[ScoreUpdate],
            events: &[ScoreUpdate],
        ) -> Result<(), FakeError> {
            if self
                .hangs
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                tokio::time::sleep(self.write_delay).await;
            }
            if latest.iter().any(|u| self.poison.contains(&u.score)) {
                return Err(FakeError(Class::Permanent));
            }
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                let class = if self.permanent {
                    Class::Permanent
                } else {
                    Class::Retryable
                };
                return Err(FakeError(class));
            }
            self.flushes
                .lock()
                .unwrap()
                .push((latest.len(), events.len()));
            Ok(())
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

    async fn run(
        store: FakeStore,
        n: usize,
        delivered: i64,
        config: PipelineConfig,
    ) -> (Arc<FakeStore>, Vec<(usize, Settled)>) {
        let store = Arc::new(store);
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new(metrics.clone()));
        let pipeline = Pipeline::new(store.clone(), config, metrics, health.clone());
        let (tx, rx) = mpsc::channel(8);
        let log = Arc::new(Mutex::new(vec![]));
        // The health probe's stand-in: the "database answers" every second.
        let probe = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                health.resume_pulls();
            }
        });
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
        handle.await.unwrap();
        probe.abort();
        let settled = log.lock().unwrap().clone();
        (store, settled)
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

    #[tokio::test(start_paused = true)]
    async fn every_message_is_acked_after_its_flush_is_written() {
        let (store, settled) = run(FakeStore::new(0, false), 120, 1, config()).await;
        let flushes = store.flushes.lock().unwrap().clone();
        assert_eq!(flushes, vec![(50, 50), (50, 50), (20, 20)]);
        assert_all(&settled, 120, Settled::Ack);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_then_acked() {
        let (store, settled) = run(FakeStore::new(3, false), 10, 1, config()).await;
        assert_eq!(store.flushes.lock().unwrap().len(), 1);
        assert_all(&settled, 10, Settled::Ack);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_database_holds_the_flush_until_it_answers_never_naking() {
        // 100 failures: 25 rounds of 4 attempts, each round ending paused and held until the probe
        // says the database answers; then the write lands. Nothing is given back, nothing is acked early.
        let started = Instant::now();
        let (store, settled) = run(FakeStore::new(100, false), 10, 1, config()).await;
        assert_eq!(store.flushes.lock().unwrap().len(), 1);
        assert_all(&settled, 10, Settled::Ack);
        assert!(
            started.elapsed() >= Duration::from_secs(25),
            "held across rounds"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn last_delivery_is_dead_lettered_instead_of_dropped() {
        // A permanent failure of every key (not a poison row) on the last delivery.
        let (_, settled) = run(FakeStore::new(100, true), 3, 5, config()).await;
        assert_all(&settled, 3, Settled::Dead(RejectReason::MaxDeliveries));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried() {
        // A flush of one key: nothing to isolate.
        let store = FakeStore::new(1, true);
        let (store, settled) = run(store, 1, 1, config()).await;
        // One failed attempt (not retried), nak'd; the store would have accepted a second attempt.
        assert!(store.flushes.lock().unwrap().is_empty());
        assert_all(&settled, 1, Settled::Nak);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_of_a_larger_flush_is_tried_again_in_halves_without_backoff() {
        // The first attempt fails permanently; the halves are written at once, not after a backoff.
        let store = FakeStore::new(1, true);
        let started = Instant::now();
        let (store, settled) = run(store, 6, 1, config()).await;
        assert_all(&settled, 6, Settled::Ack);
        assert_eq!(store.flushes.lock().unwrap().len(), 2, "two halves");
        assert!(started.elapsed() < Duration::from_millis(200), "no backoff");
    }

    #[tokio::test(start_paused = true)]
    async fn a_poison_key_is_isolated_and_dead_lettered_while_its_flush_mates_land() {
        let mut store = FakeStore::new(0, false);
        store.poison = vec![3, 17];
        let (store, settled) = run(store, 20, 1, config()).await;
        let dead: Vec<usize> = settled
            .iter()
            .filter(|(_, s)| *s == Settled::Dead(RejectReason::WriteRejected))
            .map(|(id, _)| *id)
            .collect();
        let mut dead = dead;
        dead.sort_unstable();
        assert_eq!(dead, vec![3, 17], "{settled:?}");
        let acked = settled.iter().filter(|(_, s)| *s == Settled::Ack).count();
        assert_eq!(acked, 18, "{settled:?}");
        assert_eq!(settled.len(), 20);
        let written: usize = store.flushes.lock().unwrap().iter().map(|(l, _)| l).sum();
        assert_eq!(written, 18, "every good key written once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_the_database_refuses_entirely_is_given_back_not_dead_lettered() {
        let mut store = FakeStore::new(0, false);
        store.poison = (0..10).collect();
        let (_, settled) = run(store, 10, 1, config()).await;
        assert_all(&settled, 10, Settled::Nak);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_the_wall_clock_of_a_hanging_write() {
        // The first write hangs for 600 s: the 60 s budget cuts it off, the flush is held, the next
        // write (once the database answers) lands.
        let mut store = FakeStore::new(0, false);
        store.write_delay = Duration::from_secs(600);
        store.hangs = AtomicUsize::new(1);
        let started = Instant::now();
        let (store, settled) = run(store, 3, 1, config()).await;
        assert_eq!(store.flushes.lock().unwrap().len(), 1);
        assert_all(&settled, 3, Settled::Ack);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(60) && took < Duration::from_secs(120),
            "{took:?}"
        );
    }
}
