//! A per-process hint: for each key, the newest event this process has durably written (with its
//! cleanup). A first delivery of an event that is not newer than that needs only its history row: its
//! leaderboard writes would lose cell by cell, and its clean-up would remove exactly what it added.
//! The hint can only *skip* work, never create rows; why that is safe with many replicas is in
//! `docs/design.md` ("Skipping superseded events"). Bounded: two generations of at most half the
//! capacity each; the older one is dropped when the newer fills.

use std::collections::HashMap;
use std::sync::Mutex;

use uuid::Uuid;

use crate::score::{tie_rank, ScoreUpdate};

/// Per profile, the leaderboards written and the newest (time, tie rank) written for each.
type Generation = HashMap<Uuid, Vec<(Box<str>, (i64, u64))>>;

pub struct NewestWritten {
    capacity: usize,
    inner: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: Generation,
    current_keys: usize,
    previous: Generation,
}

fn order(u: &ScoreUpdate) -> (i64, u64) {
    (u.occurred_at_micros, tie_rank(u.score))
}

fn lookup(generation: &Generation, u: &ScoreUpdate) -> Option<(i64, u64)> {
    generation
        .get(&u.profile_id)?
        .iter()
        .find(|(lb, _)| **lb == *u.leaderboard_id)
        .map(|(_, at)| *at)
}

impl NewestWritten {
    /// Remembers up to `capacity` keys; 0 remembers nothing.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::default(),
        }
    }

    /// True if this process has written an event for `u`'s key that `u` does not supersede.
    pub fn covers(&self, u: &ScoreUpdate) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let g = self.inner.lock().expect("lock");
        let written = lookup(&g.current, u).max(lookup(&g.previous, u));
        written.is_some_and(|w| w >= order(u))
    }

    /// Records a flush's newest events once their writes are durable.
    pub fn record<'a>(&self, written: impl IntoIterator<Item = &'a ScoreUpdate>) {
        if self.capacity == 0 {
            return;
        }
        let mut g = self.inner.lock().expect("lock");
        for u in written {
            if g.current_keys >= self.capacity.div_ceil(2) {
                g.previous = std::mem::take(&mut g.current);
                g.current_keys = 0;
            }
            let at = order(u).max(lookup(&g.previous, u).unwrap_or((i64::MIN, 0)));
            let boards = g.current.entry(u.profile_id).or_default();
            match boards.iter_mut().find(|(lb, _)| **lb == *u.leaderboard_id) {
                Some((_, newest)) => *newest = (*newest).max(at),
                None => {
                    boards.push((u.leaderboard_id.as_str().into(), at));
                    g.current_keys += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(profile: u128, lb: &str, score: i64, at: i64) -> ScoreUpdate {
        ScoreUpdate {
            event_id: format!("{profile}-{lb}-{at}"),
            profile_id: Uuid::from_u128(profile),
            wallet_address: format!("0x{profile:040x}"),
            leaderboard_id: lb.into(),
            score,
            occurred_at_micros: at,
        }
    }

    #[test]
    fn covers_only_what_is_not_newer_than_what_was_written() {
        let w = NewestWritten::new(100);
        assert!(!w.covers(&update(1, "a", 5, 10)), "nothing written yet");
        w.record(&[update(1, "a", 5, 10)]);
        assert!(w.covers(&update(1, "a", 5, 10)), "the same event again");
        assert!(w.covers(&update(1, "a", 99, 9)), "older");
        assert!(w.covers(&update(1, "a", 4, 10)), "same time, loses the tie");
        assert!(!w.covers(&update(1, "a", 6, 10)), "same time, wins the tie");
        assert!(
            !w.covers(&update(1, "a", -1, 10)),
            "negative scores win ties"
        );
        assert!(!w.covers(&update(1, "a", 0, 11)), "newer");
        assert!(!w.covers(&update(1, "b", 0, 1)), "another leaderboard");
        assert!(!w.covers(&update(2, "a", 0, 1)), "another profile");
        w.record(&[update(1, "a", 1, 3)]);
        assert!(
            w.covers(&update(1, "a", 5, 10)),
            "an older record never lowers it"
        );
    }

    #[test]
    fn bounded_and_off_at_zero() {
        let w = NewestWritten::new(10);
        for p in 0..1000u128 {
            w.record(&[update(p, "a", 1, 1)]);
        }
        let g = w.inner.lock().unwrap();
        assert!(g.current_keys <= 5);
        assert!(g.current.len() + g.previous.len() <= 10);
        drop(g);
        assert!(w.covers(&update(999, "a", 1, 1)));
        assert!(!w.covers(&update(0, "a", 1, 1)), "evicted");
        let off = NewestWritten::new(0);
        off.record(&[update(1, "a", 1, 1)]);
        assert!(!off.covers(&update(1, "a", 1, 1)));
    }
}
