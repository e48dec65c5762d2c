//! The deliveries this process holds and has not settled, wherever they wait: decoded in the hand-off
//! channel, in the open batch, in a closed flush queued for a write slot or in the flush being written.
//! Each is kept alive with `+WPI` so JetStream never gives it to another replica while it is held, and
//! a shutdown past its deadline hands them all back at once (`-NAK`: another replica takes them now,
//! not after `ack_wait`).
//!
//! A delivery is held as long as a [`Held`] handle of it lives: its receipt's, and, while its dead
//! letter waits to be stored, the dead-letter queue's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{AgeGuard, Ages};
use crate::pipeline::{Attempt, Settler};

#[derive(Default)]
pub struct Unsettled {
    /// Reply subject → when the server last heard of the delivery (its receipt or the last `+WPI`),
    /// and how many [`Held`] handles keep it.
    held: Mutex<HashMap<String, Entry>>,
    pub(super) abandoned: CancellationToken,
    /// Since when each is held (`score_worker_unsettled_deliveries_oldest_age_seconds`).
    ages: Ages,
}

struct Entry {
    heard: Instant,
    holders: usize,
    _age: AgeGuard,
}

/// Keeps one delivery held; cloning adds a holder, the last one dropped lets it go.
pub struct Held {
    unsettled: Arc<Unsettled>,
    reply: Option<String>,
}

impl Clone for Held {
    fn clone(&self) -> Self {
        if let Some(reply) = &self.reply {
            if let Some(entry) = self.unsettled.lock().get_mut(reply) {
                entry.holders += 1;
            }
        }
        Held {
            unsettled: self.unsettled.clone(),
            reply: self.reply.clone(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(reply) = &self.reply {
            let mut held = self.unsettled.lock();
            if let Some(entry) = held.get_mut(reply) {
                entry.holders -= 1;
                if entry.holders == 0 {
                    held.remove(reply);
                }
            }
        }
    }
}

impl Unsettled {
    /// Deliveries counted and aged in `ages` while held.
    pub fn new(ages: Ages) -> Self {
        Self {
            ages,
            ..Self::default()
        }
    }

    /// Holds a delivery from now until the returned handle (and its clones) are dropped.
    pub(super) fn hold(self: &Arc<Self>, message: &jetstream::Message) -> Held {
        let reply = message.reply.as_ref().map(|r| r.to_string());
        if let Some(reply) = &reply {
            self.lock().insert(
                reply.clone(),
                Entry {
                    heard: Instant::now(),
                    holders: 1,
                    _age: self.ages.start(),
                },
            );
        }
        Held {
            unsettled: self.clone(),
            reply,
        }
    }

    /// Deliveries held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.held.lock().expect("lock")
    }

    /// The deliveries the server last heard of `age` or longer before `now`, marked as heard of now.
    fn due(&self, now: Instant, age: Duration) -> Vec<String> {
        let mut held = self.lock();
        held.iter_mut()
            .filter(|(_, entry)| now.saturating_duration_since(entry.heard) >= age)
            .map(|(reply, entry)| {
                entry.heard = now;
                reply.clone()
            })
            .collect()
    }

    /// Until `stop` fires: every `every / 2`, sends `+WPI` for each delivery held `every / 2` or longer
    /// since its receipt or its last `+WPI`, so none goes longer than `every` without one
    /// (`retry.progress_interval`, which validation keeps below `ack_wait`). A delivery settled within
    /// half the interval, the common case, costs nothing.
    pub async fn keep_alive(
        self: Arc<Self>,
        client: async_nats::Client,
        every: Duration,
        stop: CancellationToken,
    ) {
        let half = every / 2;
        let mut tick = tokio::time::interval_at(Instant::now() + half, half);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.abandoned.cancelled() => return,
                _ = tick.tick() => {}
            }
            let due = self.due(Instant::now(), half);
            let mut failed = 0usize;
            for reply in &due {
                if client.publish(reply.clone(), "+WPI".into()).await.is_err() {
                    failed += 1;
                }
            }
            if failed > 0 {
                tracing::warn!(
                    failed,
                    held = due.len(),
                    "cannot send progress for held deliveries"
                );
            }
        }
    }

    /// Naks every delivery held (publishes only; the caller flushes), and makes the pull loop nak
    /// whatever it still reads instead of handing it on. Returns how many were nak'd here.
    pub async fn abandon(&self, client: &async_nats::Client, settler: &Settler) -> usize {
        self.abandoned.cancel();
        let kind = super::receipt::ack_kind(&settler.decide(Attempt::HandedBack, 1));
        let replies: Vec<String> = self.lock().drain().map(|(reply, _)| reply).collect();
        for reply in &replies {
            if let Err(e) = client.publish(reply.clone(), kind.into()).await {
                tracing::warn!(error = %crate::error_chain(&e), "cannot nak an unsettled delivery");
            }
        }
        replies.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(replies: &[(&str, Instant)]) -> Unsettled {
        let u = Unsettled::default();
        u.lock().extend(replies.iter().map(|(r, at)| {
            (
                r.to_string(),
                Entry {
                    heard: *at,
                    holders: 1,
                    _age: u.ages.start(),
                },
            )
        }));
        u
    }

    fn handle(u: &Arc<Unsettled>, reply: &str) -> Held {
        u.lock().insert(
            reply.to_string(),
            Entry {
                heard: Instant::now(),
                holders: 1,
                _age: u.ages.start(),
            },
        );
        Held {
            unsettled: u.clone(),
            reply: Some(reply.to_string()),
        }
    }

    #[test]
    fn a_delivery_stays_held_and_aged_until_its_last_handle_is_dropped() {
        let ages = Ages::default();
        let u = Arc::new(Unsettled::new(ages.clone()));
        let receipt = handle(&u, "r1");
        let letter = receipt.clone();
        drop(receipt);
        assert_eq!(u.len(), 1, "the dead letter still holds it");
        assert_eq!(ages.len(), 1, "exported as unsettled");
        drop(letter);
        assert!(u.is_empty());
        assert!(ages.is_empty());
    }

    #[test]
    fn a_handle_dropped_after_the_hand_back_changes_nothing() {
        let u = Arc::new(Unsettled::default());
        let receipt = handle(&u, "r1");
        u.lock().drain();
        let clone = receipt.clone();
        drop(receipt);
        drop(clone);
        assert!(u.is_empty());
    }

    #[test]
    fn only_deliveries_quiet_for_the_age_are_due_and_then_they_are_fresh() {
        let t0 = Instant::now();
        let age = Duration::from_secs(1);
        let u = held(&[("old", t0), ("new", t0 + Duration::from_millis(600))]);
        let mut due = u.due(t0 + Duration::from_millis(1000), age);
        due.sort();
        assert_eq!(due, ["old"]);
        assert!(u.due(t0 + Duration::from_millis(1500), age).is_empty());
        let mut due = u.due(t0 + Duration::from_millis(2000), age);
        due.sort();
        assert_eq!(due, ["new", "old"]);
    }

    #[test]
    fn nothing_is_due_when_nothing_is_held() {
        assert!(Unsettled::default()
            .due(Instant::now(), Duration::ZERO)
            .is_empty());
    }
}
