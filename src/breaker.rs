//! The pull breaker: when writes fail for a transient reason (the database is down or overloaded),
//! pulling stops and the flushes in hand are held, so an outage of any length burns no delivery.
//!
//! Three states, like any circuit breaker:
//! - **closed**: pull at full speed;
//! - **open**: a write failed for a transient reason; pull nothing (held flushes wait);
//! - **half-open**: the database answered a probe; held flushes try again and the consumer takes one
//!   small pull ([`PROBE_MESSAGES`]) at a time until a write lands (closed) or fails (open again). A
//!   database that answers a read but still fails writes costs a probe's worth of messages per round,
//!   not two full pulls.
//!
//! Two conditions **pin** it open whatever writes or probes say, for as long as they last ([`Pin`]):
//! the database takes no writes of this worker's (the pipeline holds its flushes), and the keyspace
//! refuses this build (the health probe's schema check).
//!
//! A small type of its own, made by the application and shared: the pipeline trips, closes and pins
//! it, the health probe half-opens it, the consumer obeys it, readiness reads it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, BREAKER_STATES};

/// Messages one half-open pull asks for.
pub const PROBE_MESSAGES: usize = 1;

/// How long a probe's outcome is awaited before another probe may go (its message was dead-lettered,
/// or its write failed permanently: no write lands or fails for the breaker).
pub const PROBE_WAIT: Duration = Duration::from_secs(5);

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    /// `probing`: a probe pull was handed out and its outcome is awaited.
    HalfOpen {
        probing: bool,
    },
}

impl State {
    /// The `state` label of `score_worker_pull_breaker_state`.
    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }
}

/// What the consumer may pull now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    /// A full batch, and the next one while it is read.
    Full,
    /// One pull of [`PROBE_MESSAGES`]; report what it handed on with [`Breaker::probed`].
    Probe,
}

/// What keeps the breaker open until it clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// The database takes no writes of this worker's (its write probe fails).
    WritesHeld,
    /// The keyspace refuses this build (schema window, bucket count).
    SchemaRefuses,
}

/// The shared breaker.
pub struct Breaker {
    state: watch::Sender<State>,
    /// Why it is pinned open, per [`Pin`] (`[WritesHeld, SchemaRefuses]`).
    pins: Mutex<[Option<String>; 2]>,
    metrics: Arc<Metrics>,
}

impl Breaker {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let breaker = Self {
            state: watch::Sender::new(State::Closed),
            pins: Mutex::new([None, None]),
            metrics,
        };
        breaker.export(State::Closed);
        breaker
    }

    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// A write failed for a transient reason: stop pulling.
    pub fn open(&self, cause: &str) {
        let before = self.state.send_replace(State::Open);
        if before != State::Open {
            tracing::warn!(%cause, from = before.label(), "database writes failing; pulling paused until it answers again");
            self.export(State::Open);
        }
    }

    /// Opens the breaker and keeps it open until [`Breaker::unpin`]; returns the cause it replaced
    /// (`None` when newly pinned, or pinned for another cause before).
    pub fn pin(&self, pin: Pin, cause: &str) -> Option<String> {
        let before = self.pins.lock().expect("lock")[pin as usize].replace(cause.to_string());
        self.open(cause);
        before
    }

    /// `pin` no longer holds; returns the cause it had. The breaker stays open until a probe
    /// half-opens it.
    pub fn unpin(&self, pin: Pin) -> Option<String> {
        self.pins.lock().expect("lock")[pin as usize].take()
    }

    /// Why `pin` keeps the breaker open, if it does.
    pub fn pinned(&self, pin: Pin) -> Option<String> {
        self.pins.lock().expect("lock")[pin as usize].clone()
    }

    fn is_pinned(&self) -> bool {
        self.pins.lock().expect("lock").iter().any(Option::is_some)
    }

    /// The database answered a probe: held flushes may try again, the consumer may probe (not while
    /// pinned).
    pub fn half_open(&self) {
        if self.is_pinned() {
            return;
        }
        let changed = self.state.send_if_modified(|s| {
            let open = *s == State::Open;
            if open {
                *s = State::HalfOpen { probing: false };
            }
            open
        });
        if changed {
            tracing::info!("database answers again; one small pull until a write lands");
            self.export(State::HalfOpen { probing: false });
        }
    }

    /// A write landed (or a probe found nothing to write): pull at full speed (not while pinned).
    pub fn close(&self) {
        if self.is_pinned() {
            return;
        }
        let before = self.state.send_replace(State::Closed);
        if before != State::Closed {
            tracing::info!(from = before.label(), "pulling resumed at full speed");
            self.export(State::Closed);
        }
    }

    /// What the probe pull brought. Nothing at all: no traffic, nothing to protect: close. Only
    /// messages that were dead-lettered: probe again at once. Messages to write: wait for their
    /// write (the pipeline closes or opens the breaker).
    pub fn probed(&self, delivered: usize, handed_on: usize) {
        if !matches!(self.state(), State::HalfOpen { .. }) {
            return;
        }
        if delivered == 0 {
            self.close();
        } else if handed_on == 0 {
            self.probe_again();
        }
    }

    /// The probe pull tested nothing (it failed, or brought only messages that were dead-lettered):
    /// another may go at once.
    pub fn probe_again(&self) {
        self.state.send_if_modified(|s| {
            let probing = *s == State::HalfOpen { probing: true };
            if probing {
                *s = State::HalfOpen { probing: false };
            }
            probing
        });
    }

    /// Resolves once writes may be tried (closed or half-open).
    pub async fn writable(&self) {
        let _ = self.state.subscribe().wait_for(|s| *s != State::Open).await;
    }

    /// Waits until the consumer may pull; `None` once `cancel` fires. A probe handed out and not
    /// settled within `probe_wait` (its message was dead-lettered, or its write failed permanently)
    /// allows another.
    pub async fn wait_pullable(
        &self,
        cancel: &CancellationToken,
        probe_wait: Duration,
    ) -> Option<Pull> {
        let mut rx = self.state.subscribe();
        loop {
            let state = *rx.borrow_and_update();
            match state {
                State::Closed => return Some(Pull::Full),
                State::HalfOpen { probing: false } => {
                    let taken = self.state.send_if_modified(|s| {
                        let free = *s == State::HalfOpen { probing: false };
                        if free {
                            *s = State::HalfOpen { probing: true };
                        }
                        free
                    });
                    if taken {
                        return Some(Pull::Probe);
                    }
                }
                State::HalfOpen { probing: true } => {
                    tokio::select! {
                        () = cancel.cancelled() => return None,
                        changed = rx.changed() => if changed.is_err() { return None },
                        () = tokio::time::sleep(probe_wait) => {
                            self.state.send_if_modified(|s| {
                                let stale = *s == State::HalfOpen { probing: true };
                                if stale {
                                    *s = State::HalfOpen { probing: false };
                                }
                                stale
                            });
                        }
                    }
                    continue;
                }
                State::Open => {}
            }
            tokio::select! {
                () = cancel.cancelled() => return None,
                changed = rx.changed() => if changed.is_err() { return None },
            }
        }
    }

    fn export(&self, state: State) {
        self.metrics
            .pulls_paused
            .set(i64::from(state != State::Closed));
        for label in BREAKER_STATES {
            self.metrics
                .pull_breaker_state
                .with_label_values(&[label])
                .set(i64::from(label == state.label()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Arc<Breaker> {
        Arc::new(Breaker::new(Arc::new(Metrics::new())))
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn a_pin_keeps_it_open_through_writes_and_probes_until_every_pin_clears() {
        let b = breaker();
        assert_eq!(b.pin(Pin::WritesHeld, "probe failed: unauthorized"), None);
        assert_eq!(
            b.pin(Pin::WritesHeld, "probe failed: unauthorized")
                .as_deref(),
            Some("probe failed: unauthorized"),
            "the same cause again: the caller logs it once"
        );
        b.pin(
            Pin::SchemaRefuses,
            "schema version 9 is outside this build's window",
        );
        for _ in 0..2 {
            b.close();
            b.half_open();
            assert_eq!(
                b.state(),
                State::Open,
                "a written flush or a probe moves nothing"
            );
        }
        assert!(b.unpin(Pin::WritesHeld).is_some());
        b.half_open();
        assert_eq!(b.state(), State::Open, "still refused by the schema");
        assert_eq!(
            b.pinned(Pin::SchemaRefuses).as_deref(),
            Some("schema version 9 is outside this build's window")
        );
        assert!(b.unpin(Pin::SchemaRefuses).is_some());
        assert_eq!(b.unpin(Pin::SchemaRefuses), None);
        b.half_open();
        assert_eq!(b.state(), State::HalfOpen { probing: false });
        b.close();
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn open_pulls_nothing_half_open_hands_out_one_probe_and_a_landed_write_closes() {
        let b = breaker();
        let cancel = CancellationToken::new();
        assert_eq!(b.wait_pullable(&cancel, WAIT).await, Some(Pull::Full));
        b.open("db down");
        let waiter = tokio::spawn({
            let (b, cancel) = (b.clone(), cancel.clone());
            async move { b.wait_pullable(&cancel, WAIT).await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished(), "open: no pull");
        b.half_open();
        assert_eq!(waiter.await.unwrap(), Some(Pull::Probe));
        // The probe is out: no second one until its outcome (or the probe wait).
        let second = tokio::spawn({
            let (b, cancel) = (b.clone(), cancel.clone());
            async move { b.wait_pullable(&cancel, WAIT).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!second.is_finished(), "one probe at a time");
        b.close();
        assert_eq!(second.await.unwrap(), Some(Pull::Full));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again_and_an_unanswered_one_allows_another() {
        let b = breaker();
        let cancel = CancellationToken::new();
        b.open("db down");
        b.half_open();
        assert_eq!(b.wait_pullable(&cancel, WAIT).await, Some(Pull::Probe));
        b.open("still down");
        assert_eq!(b.state(), State::Open);
        b.half_open();
        assert_eq!(b.wait_pullable(&cancel, WAIT).await, Some(Pull::Probe));
        // No outcome within the probe wait: another probe.
        let started = tokio::time::Instant::now();
        assert_eq!(b.wait_pullable(&cancel, WAIT).await, Some(Pull::Probe));
        assert!(started.elapsed() >= WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_with_nothing_to_write_closes_and_cancel_ends_the_wait() {
        let b = breaker();
        let cancel = CancellationToken::new();
        b.open("db down");
        b.half_open();
        assert_eq!(b.wait_pullable(&cancel, WAIT).await, Some(Pull::Probe));
        b.probed(1, 0);
        assert_eq!(
            b.state(),
            State::HalfOpen { probing: false },
            "only a bad message: probe again"
        );
        assert_eq!(b.wait_pullable(&cancel, WAIT).await, Some(Pull::Probe));
        b.probed(0, 0);
        assert_eq!(b.state(), State::Closed);
        b.open("again");
        cancel.cancel();
        assert_eq!(b.wait_pullable(&cancel, WAIT).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_wait_while_open_only() {
        let b = breaker();
        b.open("db down");
        let writer = tokio::spawn({
            let b = b.clone();
            async move { b.writable().await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!writer.is_finished());
        b.half_open();
        writer.await.unwrap();
    }

    #[test]
    fn the_gauges_follow_the_state() {
        let m = Arc::new(Metrics::new());
        let b = Breaker::new(m.clone());
        let state = |label: &str| m.pull_breaker_state.with_label_values(&[label]).get();
        assert_eq!((state("closed"), m.pulls_paused.get()), (1, 0));
        b.open("x");
        assert_eq!(
            (state("open"), state("closed"), m.pulls_paused.get()),
            (1, 0, 1)
        );
        b.half_open();
        assert_eq!(
            (state("half_open"), state("open"), m.pulls_paused.get()),
            (1, 0, 1)
        );
        b.close();
        assert_eq!(
            (state("closed"), state("half_open"), m.pulls_paused.get()),
            (1, 0, 0)
        );
    }
}
