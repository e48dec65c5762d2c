//! receive → batch → write with retries → settle receipts.
//!
//! Generic over the [`Store`] and the [`Receipt`] (both defined in [`ports`]), so its logic is
//! unit-tested with fakes; the real servers prove the integration in `tests/`. A flush is written
//! whole, retrying transient failures within `retry.total_budget`; a flush that still fails is held
//! while the database takes no writes at all, and otherwise split to find the keys that fail
//! (`failure`). Each message is then settled by [`settle::decide`]: written → acked; its key refused
//! for its values → dead-lettered as `write_rejected`; its key failing while the database takes other
//! writes → nak'd with `retry.nak_delay`, and dead-lettered as `write_failed` on the last delivery.
//! Whatever the pipeline holds, the consumer keeps alive with `+WPI` (`consumer::Unsettled`).

mod failure;
pub mod ports;
pub mod settle;
#[cfg(test)]
mod tests;
mod written;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

pub use crate::config::PipelineConfig;
pub use ports::{Class, Outcome, Receipt, SettleError, Store, WriteError};
pub use settle::{Attempt, Settler};

use crate::batcher::{Batcher, Flush};
use crate::breaker::Breaker;
use crate::metrics::Metrics;
use crate::retry;
use crate::score::ScoreUpdate;
use failure::{Failure, Written};
use written::NewestWritten;

pub struct Pipeline<S> {
    store: Arc<S>,
    config: PipelineConfig,
    written: NewestWritten,
    settler: Settler,
    metrics: Arc<Metrics>,
    /// Tripped when a write fails for a transient reason, closed when one lands, pinned open while
    /// the database takes no writes.
    breaker: Arc<Breaker>,
    /// Numbers the flushes of this process, for their log span.
    flushes: AtomicU64,
}

impl<S: Store> Pipeline<S> {
    pub fn new(
        store: Arc<S>,
        config: PipelineConfig,
        metrics: Arc<Metrics>,
        breaker: Arc<Breaker>,
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
            breaker,
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
        let outcomes = self.write(&flush, &attempts).await;
        drop(slot);
        m.inflight_batches.dec();
        self.account(&flush, &outcomes);
        futures::future::join_all(flush.receipts.iter().zip(&flush.receipt_keys).map(
            |(receipt, &key)| {
                let attempt = match &outcomes[key] {
                    Written::Yes => Attempt::Written,
                    Written::Rejected(detail) => Attempt::WriteRejected { detail },
                    Written::Failed(detail) => Attempt::WriteFailed { detail },
                };
                self.settler.settle(receipt, attempt)
            },
        ))
        .await;
    }

    /// Writes, retrying transient failures within `retry.total_budget` (which bounds the wall clock of
    /// all attempts: a write cut off by it may or may not have landed, which is fine, it is idempotent
    /// and its messages are never acked for it).
    async fn write_with_retries(
        &self,
        latest: &[ScoreUpdate],
        events: &[ScoreUpdate],
        earlier: &[ScoreUpdate],
        attempts: &AtomicU32,
    ) -> Result<(), Failure> {
        // The error of the last attempt that failed: a budget that runs out says what it was spent on.
        let mut last_error = None;
        let attempts = retry::run_with_retries(
            &self.config.retry,
            || self.store.write(latest, events, earlier),
            |e| e.class() == Class::Retryable,
            |e, delay| {
                // The span shows the attempt the next lines belong to.
                next_attempt(attempts);
                self.metrics.batch_retries.inc();
                let chain = crate::error_chain(e).to_string();
                self.breaker.open(&chain);
                tracing::warn!(error = %chain, retry_in = ?delay, scores = latest.len(), "flush write failed; retrying");
                last_error = Some(chain);
            },
        );
        let budget = self.config.retry.total_budget;
        match tokio::time::timeout(budget, attempts).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Failure::of(&error)),
            Err(_elapsed) => Err(Failure {
                detail: match last_error {
                    Some(e) => format!("retry budget of {budget:?} exhausted; last error: {e}"),
                    None => format!("retry budget of {budget:?} exhausted in the first attempt"),
                },
                refuses_values: false,
            }),
        }
    }

    /// The breaker and the newest-written hint after a flush: any key written shows that the
    /// database takes writes (the keys that failed were logged, with their key, as they were found).
    /// What becomes of each message is [`settle::decide`]'s alone.
    fn account<R>(&self, flush: &Flush<R>, outcomes: &[Written]) {
        let written = || {
            flush
                .latest
                .iter()
                .zip(outcomes)
                .filter(|(_, o)| matches!(o, Written::Yes))
                .map(|(u, _)| u)
        };
        if written().next().is_some() {
            self.breaker.close();
            self.written.record(written());
        }
    }
}

/// Records the next attempt in the flush's span.
fn next_attempt(attempts: &AtomicU32) {
    let next = attempts.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::Span::current().record("attempt", next);
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
        tracing::error!(error = %crate::error_chain(&e), "flush task panicked; its messages will be redelivered");
    }
}
