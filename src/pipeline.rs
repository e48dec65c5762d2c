//! receive → batch → write with retries → settle receipts.
//!
//! Generic over the [`Store`] and the [`Receipt`] so its logic is unit-tested with fakes; the real
//! servers prove the integration in `tests/`.
//!
//! Settlement of a flush's messages, decided once per flush:
//! - written → every message acked (a confirmed, double ack);
//! - not written within the retry budget → nak with `retry.nak_delay` (JetStream redelivers), or, for a
//!   message already delivered `max_deliver` times, dead-lettered as `max_deliveries`;
//! - while the write is pending, `+WPI` progress keeps JetStream from redelivering.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::batcher::{Batcher, Flush};
use crate::config::RetryConfig;
use crate::health::Health;
use crate::metrics::{Metrics, FAILED_WRITE};
use crate::retry;
use crate::score::{RejectReason, ScoreUpdate};
use crate::store::Store;

/// Settling a message with NATS failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} failed: {message}")]
pub struct SettleError {
    pub action: &'static str,
    pub message: String,
}

/// A handle on one received message, settled exactly once by the pipeline.
pub trait Receipt: Send + Sync + 'static {
    /// When the worker received the message.
    fn received_at(&self) -> Instant;
    /// How many times NATS has delivered it (1 on first delivery).
    fn delivered(&self) -> i64;
    /// Acknowledge, waiting for the server's confirmation.
    fn ack(&self) -> impl Future<Output = Result<(), SettleError>> + Send;
    /// Ask for redelivery after `delay`.
    fn nak(&self, delay: Duration) -> impl Future<Output = Result<(), SettleError>> + Send;
    /// Tell NATS the message is still being worked on.
    fn progress(&self) -> impl Future<Output = Result<(), SettleError>> + Send;
    /// Publish to the dead-letter subject, then acknowledge.
    fn dead_letter(
        &self,
        reason: RejectReason,
        detail: &str,
    ) -> impl Future<Output = Result<(), SettleError>> + Send;
}

/// The pipeline's knobs, taken from [`crate::config::Config`].
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub max_scores: usize,
    pub linger: Duration,
    pub max_inflight: usize,
    pub max_deliver: i64,
    pub retry: RetryConfig,
}

pub struct Pipeline<S> {
    store: Arc<S>,
    config: PipelineConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl<S: Store> Pipeline<S> {
    pub fn new(
        store: Arc<S>,
        config: PipelineConfig,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Self {
            store,
            config,
            metrics,
            health,
        }
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
                        if let Some(flush) = batcher.push(update, receipt, Instant::now()) {
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
        let this = self.clone();
        tasks.spawn(async move {
            this.write_flush(flush).await;
            drop(permit);
        });
    }

    async fn write_flush<R: Receipt>(&self, flush: Flush<R>) {
        let m = &self.metrics;
        m.inflight_batches.inc();
        m.batch_size.observe(flush.scores() as f64);
        // `retry.total_budget` bounds the wall clock of all attempts; a write cut off by it may or may
        // not have landed, which is fine: it is idempotent and its messages are nak'd, never acked.
        let write = tokio::time::timeout(
            self.config.retry.total_budget,
            retry::run_with_retries(
                &self.config.retry,
                || self.store.write(&flush.latest, &flush.events),
                |e| e.is_retryable(),
                |e, delay| {
                    m.batch_retries.inc();
                    tracing::warn!(error = %e, retry_in = ?delay, scores = flush.scores(), "flush write failed; retrying");
                },
            ),
        );
        tokio::pin!(write);
        let mut progress = tokio::time::interval_at(
            Instant::now() + self.config.retry.progress_interval,
            self.config.retry.progress_interval,
        );
        let result = loop {
            tokio::select! {
                result = &mut write => break result,
                _ = progress.tick() => {
                    futures::future::join_all(flush.receipts.iter().map(|r| r.progress())).await;
                }
            }
        };
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(error)) if !error.is_retryable() => {
                self.health.permanent_failure(&error.to_string());
                Some(error.to_string())
            }
            Ok(Err(error)) => Some(error.to_string()),
            Err(_elapsed) => Some(format!(
                "retry budget of {:?} exhausted",
                self.config.retry.total_budget
            )),
        };
        match failure {
            None => {
                self.health.write_succeeded();
                let acks = futures::future::join_all(flush.receipts.iter().map(|r| r.ack())).await;
                for (receipt, ack) in flush.receipts.iter().zip(acks) {
                    match ack {
                        Ok(()) => {
                            m.messages_processed.inc();
                            m.processing_duration
                                .observe(receipt.received_at().elapsed().as_secs_f64());
                        }
                        // The write is durable and idempotent: a redelivery changes nothing.
                        Err(e) => {
                            tracing::warn!(error = %e, "ack failed after a successful write; NATS will redeliver")
                        }
                    }
                }
            }
            Some(detail) => {
                tracing::warn!(%detail, messages = flush.receipts.len(), "flush not written; giving its messages back");
                futures::future::join_all(
                    flush.receipts.iter().map(|r| self.give_back(r, &detail)),
                )
                .await;
            }
        }
        m.inflight_batches.dec();
    }

    /// Returns an unwritten message to NATS, or dead-letters it when NATS will not deliver it again.
    async fn give_back<R: Receipt>(&self, receipt: &R, detail: &str) {
        let outcome = if receipt.delivered() >= self.config.max_deliver {
            let reason = RejectReason::MaxDeliveries;
            let detail = format!(
                "not written after {} deliveries: {detail}",
                receipt.delivered()
            );
            let result = receipt.dead_letter(reason, &detail).await;
            if result.is_ok() {
                self.metrics.dead_lettered(reason);
                tracing::error!(reason = reason.as_str(), %detail, "message dead-lettered");
            }
            result
        } else {
            self.metrics
                .messages_failed
                .with_label_values(&[FAILED_WRITE])
                .inc();
            receipt.nak(self.config.retry.nak_delay).await
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "could not settle an unwritten message; NATS redelivers it after ack_wait");
        }
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
    use crate::store::StoreError;
    use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
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
        progress: Arc<AtomicUsize>,
    }

    impl Receipt for FakeReceipt {
        fn received_at(&self) -> Instant {
            Instant::now()
        }
        fn delivered(&self) -> i64 {
            self.delivered
        }
        async fn ack(&self) -> Result<(), SettleError> {
            self.log.lock().unwrap().push((self.id, Settled::Ack));
            Ok(())
        }
        async fn nak(&self, _delay: Duration) -> Result<(), SettleError> {
            self.log.lock().unwrap().push((self.id, Settled::Nak));
            Ok(())
        }
        async fn progress(&self) -> Result<(), SettleError> {
            self.progress.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn dead_letter(
            &self,
            reason: RejectReason,
            _detail: &str,
        ) -> Result<(), SettleError> {
            self.log
                .lock()
                .unwrap()
                .push((self.id, Settled::Dead(reason)));
            Ok(())
        }
    }

    /// Fails the first `failures` writes with `error`, records successful flushes.
    struct FakeStore {
        failures: AtomicUsize,
        permanent: bool,
        write_delay: Duration,
        flushes: Mutex<Vec<(usize, usize)>>,
    }

    impl FakeStore {
        fn new(failures: usize, permanent: bool) -> Self {
            Self {
                failures: AtomicUsize::new(failures),
                permanent,
                write_delay: Duration::ZERO,
                flushes: Mutex::new(vec![]),
            }
        }
    }

    impl Store for FakeStore {
        async fn write(
            &self,
            latest: &[ScoreUpdate],
            events: &[ScoreUpdate],
        ) -> Result<(), StoreError> {
            tokio::time::sleep(self.write_delay).await;
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                let db = if self.permanent {
                    DbError::Invalid
                } else {
                    DbError::Overloaded
                };
                let e = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                    db,
                    "fake".into(),
                ));
                return Err(StoreError::new("insert_leaderboard", e));
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
    ) -> (Arc<FakeStore>, Vec<(usize, Settled)>, usize) {
        let store = Arc::new(store);
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new(metrics.clone()));
        let pipeline = Pipeline::new(store.clone(), config, metrics, health);
        let (tx, rx) = mpsc::channel(8);
        let log = Arc::new(Mutex::new(vec![]));
        let progress = Arc::new(AtomicUsize::new(0));
        let handle = tokio::spawn(pipeline.run(rx));
        for i in 0..n {
            let receipt = FakeReceipt {
                id: i,
                delivered,
                log: log.clone(),
                progress: progress.clone(),
            };
            tx.send((update(i), receipt)).await.unwrap();
        }
        drop(tx);
        handle.await.unwrap();
        let settled = log.lock().unwrap().clone();
        (store, settled, progress.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn every_message_is_acked_after_its_flush_is_written() {
        let (store, settled, _) = run(FakeStore::new(0, false), 120, 1, config()).await;
        let flushes = store.flushes.lock().unwrap().clone();
        assert_eq!(flushes, vec![(50, 50), (50, 50), (20, 20)]);
        assert_eq!(settled.len(), 120);
        assert!(settled.iter().all(|(_, s)| *s == Settled::Ack));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_then_acked() {
        let (store, settled, _) = run(FakeStore::new(3, false), 10, 1, config()).await;
        assert_eq!(store.flushes.lock().unwrap().len(), 1);
        assert!(settled.iter().all(|(_, s)| *s == Settled::Ack));
        assert_eq!(settled.len(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_budget_naks_and_never_acks() {
        let (store, settled, _) = run(FakeStore::new(100, false), 10, 1, config()).await;
        assert!(store.flushes.lock().unwrap().is_empty());
        assert_eq!(settled.len(), 10);
        assert!(settled.iter().all(|(_, s)| *s == Settled::Nak));
    }

    #[tokio::test(start_paused = true)]
    async fn last_delivery_is_dead_lettered_instead_of_dropped() {
        let (_, settled, _) = run(FakeStore::new(100, false), 3, 5, config()).await;
        assert!(settled
            .iter()
            .all(|(_, s)| *s == Settled::Dead(RejectReason::MaxDeliveries)));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried() {
        let store = FakeStore::new(1, true);
        let (store, settled, _) = run(store, 5, 1, config()).await;
        // One failed attempt (not retried), nak'd; the store would have accepted a second attempt.
        assert!(store.flushes.lock().unwrap().is_empty());
        assert!(settled.iter().all(|(_, s)| *s == Settled::Nak));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_writes_send_progress() {
        let mut store = FakeStore::new(0, false);
        store.write_delay = Duration::from_secs(1);
        let (_, settled, progress) = run(store, 5, 1, config()).await;
        assert!(progress >= 5 * 3, "progress sent {progress} times");
        assert!(settled.iter().all(|(_, s)| *s == Settled::Ack));
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_the_wall_clock_of_a_hanging_write() {
        let mut store = FakeStore::new(0, false);
        store.write_delay = Duration::from_secs(600);
        let (store, settled, _) = run(store, 3, 1, config()).await;
        assert!(store.flushes.lock().unwrap().is_empty());
        assert!(settled.iter().all(|(_, s)| *s == Settled::Nak));
    }
}
