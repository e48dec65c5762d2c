//! The deliveries this process holds and has not settled, wherever they wait: decoded in the hand-off
//! channel, in the open batch, in a closed flush queued for a write slot or in the flush being written.
//! Each is kept alive with `+WPI` so JetStream never gives it to another replica while it is held, and
//! a shutdown past its deadline hands them all back at once (`-NAK`: another replica takes them now,
//! not after `ack_wait`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Unsettled {
    /// Reply subject → when the server last heard of the delivery (its receipt or the last `+WPI`).
    held: Mutex<HashMap<String, Instant>>,
    pub(super) abandoned: CancellationToken,
}

impl Unsettled {
    pub(super) fn insert(&self, message: &jetstream::Message) {
        if let Some(reply) = &message.reply {
            self.lock().insert(reply.to_string(), Instant::now());
        }
    }

    pub(super) fn remove(&self, message: &jetstream::Message) {
        if let Some(reply) = &message.reply {
            self.lock().remove(reply.as_str());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.held.lock().expect("lock")
    }

    /// The deliveries the server last heard of `age` or longer before `now`, marked as heard of now.
    fn due(&self, now: Instant, age: Duration) -> Vec<String> {
        let mut held = self.lock();
        held.iter_mut()
            .filter(|(_, heard)| now.saturating_duration_since(**heard) >= age)
            .map(|(reply, heard)| {
                *heard = now;
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
    pub async fn abandon(&self, client: &async_nats::Client) -> usize {
        self.abandoned.cancel();
        let replies: Vec<String> = self.lock().drain().map(|(reply, _)| reply).collect();
        for reply in &replies {
            if let Err(e) = client.publish(reply.clone(), "-NAK".into()).await {
                tracing::warn!(error = %e, "cannot nak an unsettled delivery");
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
        u.lock()
            .extend(replies.iter().map(|(r, at)| (r.to_string(), *at)));
        u
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
