//! What a flush that fails becomes. Whose failure it is decides, and the store's write probe
//! ([`Store::probe`]) tells:
//!
//! - **The database takes no writes** (the probe fails: unreachable, or refusing this worker — a
//!   revoked grant, a dropped table): nothing is the keys' fault. The flush is held — its messages
//!   kept alive by `+WPI`, pulls paused and `/readyz` naming the cause until the probe passes, which
//!   it is asked again every `retry.max_backoff` — then written again. An outage or a refusal of any
//!   length burns no delivery and dead-letters nothing, and costs one request per held flush and
//!   probe, not one per key.
//! - **The database takes writes, this flush fails**: it is split in halves until the keys that fail
//!   are found; the rest land. A key whose values the database refuses is dead-lettered as
//!   `write_rejected`; any other failing key (a read-back past the tombstone threshold, a timeout on
//!   one oversized partition) gets another round on each delivery up to `max_deliver`, then is
//!   dead-lettered as `write_failed` ([`super::settle::decide`]).

use std::sync::atomic::AtomicU32;

use super::next_attempt;
use super::ports::{Store, WriteError};
use crate::batcher::Flush;
use crate::breaker::Pin;
use crate::metrics::AgeGuard;
use crate::score::ScoreUpdate;

/// What happened to one key of a flush.
#[derive(Debug, Clone)]
pub(super) enum Written {
    Yes,
    /// The database refused this key's values, while it took other writes.
    Rejected(String),
    /// This key's write failed while the database took other writes.
    Failed(String),
}

/// A failed write, as far as the pipeline cares.
#[derive(Debug)]
pub(super) struct Failure {
    pub detail: String,
    /// The database refused the values written ([`WriteError::refuses_values`]).
    pub refuses_values: bool,
}

impl Failure {
    pub(super) fn of(error: &impl WriteError) -> Self {
        Self {
            detail: crate::error_chain(error).to_string(),
            refuses_values: error.refuses_values(),
        }
    }

    /// The outcome of the one key `u` this failure is known to be about.
    fn blame(self, u: &ScoreUpdate) -> Written {
        let detail = format!(
            "leaderboard {}, profile {}: {}",
            u.leaderboard_id, u.profile_id, self.detail
        );
        if self.refuses_values {
            tracing::warn!(leaderboard = %u.leaderboard_id, profile = %u.profile_id, error = %self.detail,
                "the database refused this key's values; its messages are dead-lettered");
            Written::Rejected(detail)
        } else {
            tracing::warn!(leaderboard = %u.leaderboard_id, profile = %u.profile_id, error = %self.detail,
                "this key's write failed while the database takes others; given back for another round");
            Written::Failed(detail)
        }
    }
}

impl<S: Store> super::Pipeline<S> {
    /// Writes a flush and says what became of each key (see the module doc).
    pub(super) async fn write<R>(&self, flush: &Flush<R>, attempts: &AtomicU32) -> Vec<Written> {
        let skipped: Vec<ScoreUpdate>;
        let latest = match self.unwritten(flush) {
            None => &flush.latest[..],
            Some(keys) => {
                self.metrics
                    .superseded_skips
                    .inc_by((flush.latest.len() - keys.len()) as u64);
                skipped = keys;
                &skipped[..]
            }
        };
        let mut result = self
            .write_with_retries(latest, &flush.events, &flush.earlier, attempts)
            .await;
        // Exported as held from its first hold until it is written or split.
        let mut held = None;
        let failure = loop {
            let Err(failure) = result else {
                return vec![Written::Yes; flush.latest.len()];
            };
            match self.store.probe().await {
                // The database takes writes: the failure is this flush's keys', not a reason to keep
                // the replica's pulls paused (the retries opened the breaker) until the health probe
                // next runs; one small pull at a time until a write lands.
                Ok(()) => {
                    self.breaker.half_open();
                    break failure;
                }
                Err(probe) => {
                    self.hold(&failure, probe, &mut held).await;
                    next_attempt(attempts);
                    result = self
                        .write_with_retries(latest, &flush.events, &flush.earlier, attempts)
                        .await;
                }
            }
        };
        let all: Vec<usize> = (0..flush.latest.len()).collect();
        let mut outcomes = vec![Written::Yes; all.len()];
        if let [only] = &flush.latest[..] {
            outcomes[0] = failure.blame(only);
            return outcomes;
        }
        tracing::warn!(error = %failure.detail, keys = all.len(),
            "flush failed while the database takes writes; splitting it to find the keys that fail");
        self.isolate(flush, &all, &mut outcomes).await;
        // A failing key is its own failure only while the database takes writes: if not one key
        // landed, the probe is asked again before any is blamed (it may have gone away meanwhile).
        while outcomes.iter().all(|o| !matches!(o, Written::Yes)) {
            let Err(probe) = self.store.probe().await else {
                break;
            };
            let failure = Failure {
                detail: format!("all {} keys of the flush failed", all.len()),
                refuses_values: false,
            };
            self.hold(&failure, probe, &mut held).await;
            next_attempt(attempts);
            outcomes = vec![Written::Yes; all.len()];
            self.isolate(flush, &all, &mut outcomes).await;
        }
        outcomes
    }

    /// Holds while the database takes no writes at all (the probe fails): pulls stay paused and
    /// readiness names the cause whatever the health probe says, until the write probe, asked every
    /// `retry.max_backoff`, passes. `held` keeps the flush counted as held
    /// (`score_worker_flushes_held`) from its first hold on.
    async fn hold(&self, failure: &Failure, mut probe: S::Error, held: &mut Option<AgeGuard>) {
        held.get_or_insert_with(|| self.metrics.held_flushes.start());
        tracing::warn!(error = %failure.detail, probe = %crate::error_chain(&probe),
            "flush not written and the database takes no writes; holding it until it does");
        loop {
            let cause = crate::error_chain(&probe).to_string();
            if self.breaker.pin(Pin::WritesHeld, &cause).as_deref() != Some(&cause) {
                tracing::error!(%cause, "the database takes no writes; flushes held and pulling paused until it does");
            }
            tokio::time::sleep(self.config.retry.max_backoff).await;
            match self.store.probe().await {
                Ok(()) => {
                    if self.breaker.unpin(Pin::WritesHeld).is_some() {
                        tracing::info!("the database takes writes again; held flushes are written");
                    }
                    // One small pull until a write lands.
                    self.breaker.half_open();
                    return;
                }
                Err(e) => probe = e,
            }
        }
    }

    /// Writes the keys `keys` of a flush in halves, and halves of halves, until each part lands or is
    /// one key that fails; records each failing key's outcome in `outcomes`. Each part is one attempt:
    /// the whole flush already had its retries.
    async fn isolate<R>(&self, flush: &Flush<R>, keys: &[usize], outcomes: &mut [Written]) {
        let mut parts: Vec<Vec<usize>> = match keys {
            [_] => vec![keys.to_vec()],
            _ => keys
                .chunks(keys.len().div_ceil(2))
                .map(<[_]>::to_vec)
                .collect(),
        };
        while let Some(part) = parts.pop() {
            let latest: Vec<ScoreUpdate> = part.iter().map(|&i| flush.latest[i].clone()).collect();
            let events: Vec<ScoreUpdate> = flush
                .events
                .iter()
                .filter(|e| latest.iter().any(|u| u.key() == e.key()))
                .cloned()
                .collect();
            let earlier: Vec<ScoreUpdate> = flush
                .earlier
                .iter()
                .filter(|e| latest.iter().any(|u| u.key() == e.key()))
                .cloned()
                .collect();
            match self.store.write(&latest, &events, &earlier).await {
                Ok(()) => {}
                Err(e) if part.len() == 1 => {
                    outcomes[part[0]] = Failure::of(&e).blame(&latest[0]);
                }
                Err(_) => parts.extend(part.chunks(part.len().div_ceil(2)).map(<[_]>::to_vec)),
            }
        }
    }
}
