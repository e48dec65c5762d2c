//! A message's fate, decided in one place. [`decide`] is a pure function from what happened to the
//! message ([`Attempt`]), how often it was delivered and the limits, to an [`Outcome`]; the flush
//! settlement, the consumer's reject path and the max-deliveries watcher all ask it. [`Settler`] carries
//! an outcome out on a [`Receipt`] and counts it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::ports::{Outcome, Receipt};
use prometheus::Histogram;

use crate::metrics::{Metrics, FAILED_WRITE, OUTCOMES};
use crate::score::{RejectReason, Rejection};

/// What happened to a message, as far as its fate is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Attempt<'a> {
    /// Its key was written.
    Written,
    /// Its key's write failed while the database took other writes (a read-back past the tombstone
    /// threshold, a timeout on one oversized partition): what went wrong, with the key.
    WriteFailed { detail: &'a str },
    /// It failed validation.
    Rejected(&'a Rejection),
    /// The database refused its rows permanently while its flush-mates were written.
    WriteRejected { detail: &'a str },
    /// The broker stopped delivering it after this many deliveries without a settlement.
    Abandoned { deliveries: i64 },
    /// Its dead letter could not be queued (the queue is full): it stays unwritten.
    LetterNotQueued,
    /// This process lets it go unsettled: a shutdown past its deadline, or a pull that brought more
    /// than there is room for.
    HandedBack,
}

/// The limits a decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deliveries after which the broker will not deliver a message again.
    pub max_deliver: i64,
    /// Redelivery delay of an unwritten message.
    pub nak_delay: Duration,
}

/// The one decision. `delivered` counts the delivery being settled (1 on the first).
pub fn decide(attempt: Attempt<'_>, delivered: i64, limits: Limits) -> Outcome {
    match attempt {
        Attempt::Written => Outcome::Ack,
        Attempt::Rejected(rejection) => Outcome::DeadLetter {
            reason: rejection.reason,
            detail: rejection.detail.clone(),
        },
        // Another round on another delivery (perhaps another replica), up to the last one. A
        // failure that is not the key's own (the database unreachable, or refusing every write) never
        // gets here: the pipeline holds such a flush until the database takes writes again.
        Attempt::WriteFailed { detail } if delivered >= limits.max_deliver => Outcome::DeadLetter {
            reason: RejectReason::WriteFailed,
            detail: format!("not written after {delivered} deliveries: {detail}"),
        },
        Attempt::WriteFailed { .. } => Outcome::Retry {
            delay: limits.nak_delay,
        },
        Attempt::WriteRejected { detail } => Outcome::DeadLetter {
            reason: RejectReason::WriteRejected,
            detail: detail.to_string(),
        },
        Attempt::Abandoned { deliveries } => Outcome::DeadLetter {
            reason: RejectReason::MaxDeliveries,
            detail: format!("NATS stopped delivering after {deliveries} deliveries"),
        },
        // Not stored as a letter, so not terminated either: redelivered after the usual delay (on
        // its last delivery the advisory watcher dead-letters it from the stream).
        Attempt::LetterNotQueued => Outcome::Retry {
            delay: limits.nak_delay,
        },
        // Another replica may take it at once: nothing about the message failed.
        Attempt::HandedBack => Outcome::Retry {
            delay: Duration::ZERO,
        },
    }
}

/// Indexes of [`OUTCOMES`] (the `outcome` label of `processing_duration`).
const ACK: usize = 0;
const RETRY: usize = 1;
const DEAD_LETTER: usize = 2;

/// Decides and carries out outcomes, and counts them. Dead letters are counted and logged by the
/// dead-letter publisher, the one place that knows one was stored.
#[derive(Clone)]
pub struct Settler {
    limits: Limits,
    /// The server's `max_deliver`, which an operator may change while the worker runs.
    max_deliver: Arc<AtomicI64>,
    metrics: Arc<Metrics>,
    /// `processing_duration` per outcome ([`OUTCOMES`]: ack, retry, dead letter), resolved once
    /// rather than looked up by label on every message.
    processing: [Histogram; 3],
}

impl Settler {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Self {
        let processing =
            OUTCOMES.map(|outcome| metrics.processing_duration.with_label_values(&[outcome]));
        Self {
            max_deliver: Arc::new(AtomicI64::new(limits.max_deliver)),
            limits,
            metrics,
            processing,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_deliver: self.max_deliver.load(Ordering::Relaxed),
            ..self.limits
        }
    }

    /// What becomes of a message on its `delivered`-th delivery after `attempt`, under the current
    /// limits.
    pub fn decide(&self, attempt: Attempt<'_>, delivered: i64) -> Outcome {
        decide(attempt, delivered, self.limits())
    }

    /// The consumer's `max_deliver` as the server has it now (every clone of this settler sees it);
    /// true if it changed.
    pub fn set_max_deliver(&self, max_deliver: i64) -> bool {
        self.max_deliver.swap(max_deliver, Ordering::Relaxed) != max_deliver
    }

    /// Settles one message. A failure to settle is logged, never fatal: an unsettled message comes
    /// back after `ack_wait`, and every write is idempotent.
    pub async fn settle<R: Receipt>(&self, receipt: &R, attempt: Attempt<'_>) {
        let limits = self.limits();
        let outcome = decide(attempt, receipt.delivered(), limits);
        let result = receipt.settle(&outcome).await;
        // Every settlement is timed, not only acks: a message nak'd after a long hold counts too.
        let settled = |outcome: usize| {
            self.processing[outcome].observe(receipt.received_at().elapsed().as_secs_f64());
        };
        match (&outcome, result) {
            (Outcome::Ack, Ok(())) => {
                self.metrics.messages_processed.inc();
                settled(ACK);
            }
            (Outcome::Retry { .. }, Ok(())) => settled(RETRY),
            (Outcome::DeadLetter { .. }, Ok(())) => settled(DEAD_LETTER),
            (Outcome::Ack, Err(e)) => {
                tracing::warn!(error = %crate::error_chain(&e), "ack failed after a successful write; NATS will redeliver")
            }
            (Outcome::Retry { .. }, Err(e)) => {
                tracing::warn!(error = %crate::error_chain(&e), "nak failed; NATS redelivers after ack_wait")
            }
            (Outcome::DeadLetter { .. }, Err(e)) => {
                tracing::error!(error = %crate::error_chain(&e), "cannot dead-letter a message; nak'ing it");
                let retry = decide(Attempt::LetterNotQueued, receipt.delivered(), limits);
                match receipt.settle(&retry).await {
                    Ok(()) => settled(RETRY),
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(&e), "nak failed; NATS redelivers after ack_wait")
                    }
                }
            }
        }
        if matches!(attempt, Attempt::WriteFailed { .. })
            && matches!(outcome, Outcome::Retry { .. })
        {
            self.metrics
                .messages_failed
                .with_label_values(&[FAILED_WRITE])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_deliver: 5,
        nak_delay: Duration::from_secs(15),
    };

    #[test]
    fn the_last_delivery_follows_the_servers_max_deliver_in_every_clone() {
        let settler = Settler::new(LIMITS, Arc::new(Metrics::new()));
        let watcher = settler.clone();
        assert!(!watcher.set_max_deliver(5), "unchanged");
        assert!(watcher.set_max_deliver(2));
        assert_eq!(settler.limits().max_deliver, 2);
        let failed = Attempt::WriteFailed {
            detail: "read-back failed",
        };
        assert!(matches!(
            decide(failed, 2, settler.limits()),
            Outcome::DeadLetter { .. }
        ));
    }

    #[test]
    fn the_decision_table() {
        let bad = Rejection {
            reason: RejectReason::MissingField,
            detail: "score is required".into(),
        };
        let retry = Outcome::Retry {
            delay: Duration::from_secs(15),
        };
        let detail = "leaderboard b, profile p: read_back failed (server): too many tombstones";
        let failed = Attempt::WriteFailed { detail };
        let settled = |delivered: i64| Outcome::DeadLetter {
            reason: RejectReason::WriteFailed,
            detail: format!("not written after {delivered} deliveries: {detail}"),
        };
        let mut cases: Vec<(Attempt<'_>, i64, Outcome)> = vec![
            (Attempt::Written, 1, Outcome::Ack),
            (Attempt::Written, 5, Outcome::Ack),
            (Attempt::Written, 99, Outcome::Ack),
            (failed, 1, retry.clone()),
            (failed, 4, retry.clone()),
            (failed, 5, settled(5)),
            (failed, 7, settled(7)),
            (
                Attempt::Rejected(&bad),
                1,
                Outcome::DeadLetter {
                    reason: RejectReason::MissingField,
                    detail: "score is required".into(),
                },
            ),
            (
                Attempt::Rejected(&bad),
                5,
                Outcome::DeadLetter {
                    reason: RejectReason::MissingField,
                    detail: "score is required".into(),
                },
            ),
            (
                Attempt::Abandoned { deliveries: 5 },
                5,
                Outcome::DeadLetter {
                    reason: RejectReason::MaxDeliveries,
                    detail: "NATS stopped delivering after 5 deliveries".into(),
                },
            ),
        ];
        for delivered in [1, 5] {
            cases.push((
                Attempt::WriteRejected {
                    detail: "insert_rows failed (permanent): Invalid",
                },
                delivered,
                Outcome::DeadLetter {
                    reason: RejectReason::WriteRejected,
                    detail: "insert_rows failed (permanent): Invalid".into(),
                },
            ));
        }
        for delivered in [1, 5] {
            cases.push((Attempt::LetterNotQueued, delivered, retry.clone()));
            cases.push((
                Attempt::HandedBack,
                delivered,
                Outcome::Retry {
                    delay: Duration::ZERO,
                },
            ));
        }
        assert_eq!(cases.len(), 16);
        for (attempt, delivered, want) in cases {
            assert_eq!(
                decide(attempt, delivered, LIMITS),
                want,
                "{attempt:?} on delivery {delivered}"
            );
        }
    }
}
