//! The two seams the pipeline is generic over, owned here so that neither the pipeline nor its test
//! fakes know the database driver or NATS: a [`Store`] that writes flushes, and a [`Receipt`] per
//! message that is settled once with an [`Outcome`], which [`super::settle::decide`] chose.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::score::{RejectReason, ScoreUpdate};

/// Whether a failed write may succeed if tried again. The store decides (in one place: its error
/// classifier); the pipeline only obeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Timeouts, unavailable or overloaded replicas, broken connections.
    Retryable,
    /// Will fail the same way again (schema mismatch, bad statement, authorisation).
    Permanent,
}

/// A store's error, which knows its [`Class`] and what it refused.
pub trait WriteError: std::error::Error + Send + Sync + 'static {
    fn class(&self) -> Class;
    /// True when the database refused the values a write carries (a key's own data, such as a
    /// timestamp past a guardrail), not a statement, a table or the attempt: the one failure that
    /// makes a key's event unwritable for good.
    fn refuses_values(&self) -> bool;
}

/// Where flushes are written. Implementations must be idempotent: a flush may be written again after
/// a timeout, a retry or a redelivery.
pub trait Store: Send + Sync + 'static {
    type Error: WriteError;

    /// Writes one flush: the newest update per key, a history row per event, and the removal of the
    /// leaderboard rows an earlier delivery of `earlier` (updates of this flush's keys, superseded in
    /// it) may have written.
    fn write(
        &self,
        latest: &[ScoreUpdate],
        events: &[ScoreUpdate],
        earlier: &[ScoreUpdate],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether the database takes this worker's writes at all, asked with statements on every table
    /// a flush touches that carry no event and change nothing anyone reads. `Ok`: a flush that fails
    /// fails for its own keys. An error: no flush can be written — the database is unreachable
    /// (retryable) or refuses this worker (permanent: a revoked grant, a dropped table).
    fn probe(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Settling a message with the broker failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} failed")]
pub struct SettleError {
    /// `ack`, `nak`, `dead-letter` or `term`.
    pub action: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// What becomes of a message (vector's delivered / errored / rejected; NATS `+ACK`, `-NAK`, `+TERM`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its writes are durable: acknowledge (confirmed by the server).
    Ack,
    /// Not written yet: ask for redelivery after `delay`.
    Retry { delay: Duration },
    /// Never to be written: publish to the dead-letter subject, then terminate.
    DeadLetter {
        reason: RejectReason,
        detail: String,
    },
}

/// A handle on one received message, settled exactly once by the pipeline.
pub trait Receipt: Send + Sync + 'static {
    /// When the worker received the message.
    fn received_at(&self) -> Instant;
    /// How many times the broker has delivered it (1 on first delivery).
    fn delivered(&self) -> i64;
    /// Carries out an outcome: acknowledge, ask for redelivery, or dead-letter and terminate.
    fn settle(&self, outcome: &Outcome) -> impl Future<Output = Result<(), SettleError>> + Send;
}
