//! Gauges of *how long*: the age of the oldest of a set of things held now (flushes held, unsettled
//! deliveries), and the age of a timestamp (the oldest pending message). A histogram sees a message
//! only once it is settled; these see what is still waiting, and they are computed when scraped, so
//! an age grows between two events instead of jumping when the next one comes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::Gauge;
use tokio::time::Instant;

/// A set of things held now, each with the instant it started being held. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Ages {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    started: Mutex<BTreeSet<(Instant, u64)>>,
    next: AtomicU64,
}

/// One thing held, from [`Ages::start`] until this guard is dropped.
pub struct AgeGuard {
    inner: Arc<Inner>,
    key: (Instant, u64),
}

impl Ages {
    /// Starts holding one thing, now.
    pub fn start(&self) -> AgeGuard {
        let key = (
            Instant::now(),
            self.inner.next.fetch_add(1, Ordering::Relaxed),
        );
        self.inner.started.lock().expect("lock").insert(key);
        AgeGuard {
            inner: self.inner.clone(),
            key,
        }
    }

    /// How many things are held.
    pub fn len(&self) -> usize {
        self.inner.started.lock().expect("lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How long the oldest thing held has been held at `now` (zero when none is).
    pub fn oldest(&self, now: Instant) -> Duration {
        self.inner
            .started
            .lock()
            .expect("lock")
            .first()
            .map_or(Duration::ZERO, |(at, _)| now.saturating_duration_since(*at))
    }
}

impl Drop for AgeGuard {
    fn drop(&mut self) {
        self.inner.started.lock().expect("lock").remove(&self.key);
    }
}

/// A wall-clock time (Unix microseconds) or none, whose age is exported.
#[derive(Default)]
pub struct Since(AtomicI64);

impl Since {
    /// `Some(micros)`: the time to age from; `None`: nothing to age.
    pub fn set(&self, micros: Option<i64>) {
        self.0.store(micros.unwrap_or(0), Ordering::Relaxed);
    }

    /// Seconds from the time set to `now_micros` (zero when none is set, never negative: a clock
    /// behind the server's counts as no lag).
    pub fn age(&self, now_micros: i64) -> f64 {
        match self.0.load(Ordering::Relaxed) {
            0 => 0.0,
            at => (now_micros.saturating_sub(at)).max(0) as f64 / 1e6,
        }
    }
}

impl super::Metrics {
    /// The age gauges, set from [`Metrics::held_flushes`], [`Metrics::unsettled`] and
    /// [`Metrics::oldest_pending`] when scraped.
    pub(super) fn register_ages(&self) {
        let gauge = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("valid metric");
            self.registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        for (ages, count, oldest) in [
            (
                &self.held_flushes,
                (
                    "score_worker_flushes_held",
                    "Flushes held now because the database takes no writes (their messages kept alive, pulls paused).",
                ),
                (
                    "score_worker_flushes_held_oldest_age_seconds",
                    "How long the flush held longest has been held (0 when none is).",
                ),
            ),
            (
                &self.unsettled,
                (
                    "score_worker_unsettled_deliveries",
                    "Deliveries this process holds and has not settled yet (in the hand-off, a batch, a flush, a dead letter waiting).",
                ),
                (
                    "score_worker_unsettled_deliveries_oldest_age_seconds",
                    "Time since this process received the oldest delivery it has not settled yet (0 when none).",
                ),
            ),
        ] {
            let (count, oldest) = (gauge(count.0, count.1), gauge(oldest.0, oldest.1));
            let ages = ages.clone();
            self.on_scrape(move || {
                count.set(ages.len() as f64);
                oldest.set(ages.oldest(tokio::time::Instant::now()).as_secs_f64());
            });
        }
        let pending = gauge(
            "score_worker_consumer_oldest_pending_age_seconds",
            "Age of the oldest message in the stream the consumer has not had acknowledged (its stored time to now; 0 when none): the backlog in seconds.",
        );
        let since = self.oldest_pending.clone();
        self.on_scrape(move || pending.set(since.age(chrono::Utc::now().timestamp_micros())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_oldest_thing_held_ages_until_its_guard_is_dropped() {
        let ages = Ages::default();
        assert_eq!(ages.oldest(Instant::now()), Duration::ZERO);
        let first = ages.start();
        tokio::time::advance(Duration::from_secs(10)).await;
        let second = ages.clone().start();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(ages.len(), 2);
        assert_eq!(ages.oldest(Instant::now()), Duration::from_secs(15));
        drop(first);
        assert_eq!(ages.oldest(Instant::now()), Duration::from_secs(5));
        drop(second);
        assert!(ages.is_empty());
        assert_eq!(ages.oldest(Instant::now()), Duration::ZERO);
    }

    #[test]
    fn a_time_ages_from_when_it_was_set_and_never_below_zero() {
        let since = Since::default();
        assert_eq!(since.age(5_000_000), 0.0);
        since.set(Some(1_000_000));
        assert_eq!(since.age(3_500_000), 2.5);
        assert_eq!(since.age(500_000), 0.0, "a clock behind the server's");
        since.set(None);
        assert_eq!(since.age(3_500_000), 0.0);
    }
}
