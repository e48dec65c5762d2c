//! A pure accumulator that turns a stream of updates into flushes.
//!
//! A flush closes when it holds `max_scores` distinct (leaderboard, profile) keys, or
//! `max_events` events (bounds a flush made of one hot key), or when its linger deadline — set by its
//! *first* event — passes, or when input ends. Within a flush, events for the same key collapse to the
//! newest ([`ScoreUpdate::supersedes`]); every event is kept for its history row and its receipt.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::score::ScoreUpdate;

/// One coalesced write unit: what a flush hands to the store.
#[derive(Debug, Default)]
pub struct Flush<R> {
    /// Newest update per key, in order of first appearance.
    pub latest: Vec<ScoreUpdate>,
    /// Per key of `latest`: every message for it in this flush is a first delivery (no earlier
    /// delivery of any of them can have written part of its rows).
    pub first_delivery: Vec<bool>,
    /// Every event of the flush (for history rows); duplicates by `event_id` are removed.
    pub events: Vec<ScoreUpdate>,
    /// Updates of redelivered messages that are not their key's newest in this flush (another row):
    /// an earlier delivery may have written their leaderboard row, which this flush's clean-up must
    /// remove since no later writer may find it (docs/design.md, "Crashes").
    pub earlier: Vec<ScoreUpdate>,
    /// One receipt per message, settled after the write.
    pub receipts: Vec<R>,
    /// Per receipt, the index in `latest` of its key.
    pub receipt_keys: Vec<usize>,
    /// When the first message of the flush was received.
    pub opened_at: Option<Instant>,
}

impl<R> Flush<R> {
    /// Number of distinct scores (keys) in the flush.
    pub fn scores(&self) -> usize {
        self.latest.len()
    }
}

/// Accumulates updates; see the module doc for when a flush closes.
pub struct Batcher<R> {
    max_scores: usize,
    max_events: usize,
    linger: Duration,
    current: Flush<R>,
    index: HashMap<(String, Uuid), usize>,
    deadline: Option<Instant>,
}

impl<R> Batcher<R> {
    pub fn new(max_scores: usize, linger: Duration) -> Self {
        Self {
            max_scores,
            max_events: max_scores.saturating_mul(4),
            linger,
            current: Flush {
                latest: Vec::new(),
                first_delivery: Vec::new(),
                events: Vec::new(),
                earlier: Vec::new(),
                receipts: Vec::new(),
                receipt_keys: Vec::new(),
                opened_at: None,
            },
            index: HashMap::new(),
            deadline: None,
        }
    }

    /// Adds one message (`first_delivery`: the broker delivers it for the first time); returns a full
    /// flush if this one closed it.
    pub fn push(
        &mut self,
        update: ScoreUpdate,
        receipt: R,
        first_delivery: bool,
        now: Instant,
    ) -> Option<Flush<R>> {
        if self.current.opened_at.is_none() {
            self.current.opened_at = Some(now);
            self.deadline = Some(now + self.linger);
        }
        self.current.receipts.push(receipt);
        if !first_delivery {
            self.current.earlier.push(update.clone());
        }
        let key = (update.leaderboard_id.clone(), update.profile_id);
        match self.index.get(&key) {
            Some(&i) => {
                self.current.receipt_keys.push(i);
                self.current.first_delivery[i] &= first_delivery;
                if update.supersedes(&self.current.latest[i]) {
                    self.current.latest[i] = update.clone();
                }
                // A redelivered duplicate is one history row (the write would be the same anyway).
                if !self
                    .current
                    .events
                    .iter()
                    .any(|e| e.event_id == update.event_id && e.key() == update.key())
                {
                    self.current.events.push(update);
                }
            }
            None => {
                self.current.receipt_keys.push(self.current.latest.len());
                self.index.insert(key, self.current.latest.len());
                self.current.latest.push(update.clone());
                self.current.first_delivery.push(first_delivery);
                self.current.events.push(update);
            }
        }
        let full = self.current.latest.len() >= self.max_scores
            || self.current.receipts.len() >= self.max_events;
        full.then(|| self.take())
    }

    /// When the open flush must be written, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn is_empty(&self) -> bool {
        self.current.receipts.is_empty()
    }

    /// Closes the open flush (possibly empty).
    pub fn take(&mut self) -> Flush<R> {
        self.deadline = None;
        let mut flush = std::mem::replace(
            &mut self.current,
            Flush {
                latest: Vec::with_capacity(self.max_scores),
                first_delivery: Vec::with_capacity(self.max_scores),
                events: Vec::with_capacity(self.max_scores),
                earlier: Vec::new(),
                receipts: Vec::with_capacity(self.max_scores),
                receipt_keys: Vec::with_capacity(self.max_scores),
                opened_at: None,
            },
        );
        // Only rows other than the newest's: the newest row is this flush's own.
        let index = std::mem::take(&mut self.index);
        let latest = &flush.latest;
        flush.earlier.retain(|u| {
            let newest = &latest[index[&(u.leaderboard_id.clone(), u.profile_id)]];
            u.score != newest.score
        });
        flush
            .earlier
            .dedup_by(|a, b| a.key() == b.key() && a.score == b.score);
        flush
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(lb: &str, profile: u128, score: i64, at: i64, id: &str) -> ScoreUpdate {
        ScoreUpdate {
            event_id: id.into(),
            profile_id: Uuid::from_u128(profile),
            wallet_address: format!("0x{:040x}", profile),
            leaderboard_id: lb.into(),
            score,
            occurred_at_micros: at,
        }
    }

    #[test]
    fn redelivered_updates_superseded_in_the_flush_are_kept_as_earlier() {
        let mut b = Batcher::new(50, Duration::from_millis(100));
        let now = Instant::now();
        // Key 1: a redelivered update (score 4), then a newer first delivery (10): 4 is earlier.
        b.push(update("lb", 1, 4, 1, "a"), 0, false, now);
        b.push(update("lb", 1, 10, 2, "b"), 1, true, now);
        // Key 2: a first delivery superseded by a redelivered one: nothing earlier (no row was
        // written for the first delivery, and the redelivered one is the newest).
        b.push(update("lb", 2, 3, 1, "c"), 2, true, now);
        b.push(update("lb", 2, 6, 2, "d"), 3, false, now);
        // Key 3: redelivered with the newest's score: the same row, not earlier.
        b.push(update("lb", 3, 7, 1, "e"), 4, false, now);
        b.push(update("lb", 3, 7, 2, "f"), 5, true, now);
        let f = b.take();
        let earlier: Vec<(u128, i64)> = f
            .earlier
            .iter()
            .map(|u| (u.profile_id.as_u128(), u.score))
            .collect();
        assert_eq!(earlier, vec![(1, 4)]);
        assert_eq!(f.first_delivery, vec![false, false, false]);
        assert!(b.take().earlier.is_empty(), "a new flush starts empty");
    }

    #[test]
    fn hundred_distinct_scores_make_exactly_two_flushes_of_fifty() {
        let mut b = Batcher::new(50, Duration::from_millis(100));
        let now = Instant::now();
        let mut flushes = vec![];
        for i in 0..100u128 {
            if let Some(f) = b.push(update("lb", i, 1, 1, &format!("e{i}")), i, true, now) {
                flushes.push(f);
            }
        }
        assert!(b.is_empty());
        assert_eq!(flushes.len(), 2);
        assert!(flushes
            .iter()
            .all(|f| f.scores() == 50 && f.receipts.len() == 50));
    }

    #[test]
    fn same_key_collapses_to_newest_but_keeps_history_and_receipts() {
        let mut b = Batcher::new(50, Duration::from_millis(100));
        let now = Instant::now();
        assert!(b.push(update("lb", 1, 30, 3, "c"), 1, true, now).is_none());
        assert!(b.push(update("lb", 1, 10, 1, "a"), 2, true, now).is_none());
        assert!(b.push(update("lb", 1, 20, 2, "b"), 3, true, now).is_none());
        assert!(b
            .push(update("other", 1, 5, 1, "d"), 4, true, now)
            .is_none());
        let f = b.take();
        assert_eq!(f.scores(), 2);
        assert_eq!(f.latest[0].score, 30);
        assert_eq!(f.events.len(), 4);
        assert_eq!(f.receipts, vec![1, 2, 3, 4]);
        assert_eq!(f.receipt_keys, vec![0, 0, 0, 1]);
    }

    #[test]
    fn duplicate_event_is_one_history_row_but_both_receipts() {
        let mut b = Batcher::new(50, Duration::from_millis(100));
        let now = Instant::now();
        b.push(update("lb", 1, 30, 3, "dup"), 1, true, now);
        b.push(update("lb", 1, 30, 3, "dup"), 2, true, now);
        let f = b.take();
        assert_eq!(f.events.len(), 1);
        assert_eq!(f.receipts.len(), 2);
    }

    #[test]
    fn equal_time_tie_keeps_the_larger_score() {
        let mut b = Batcher::new(50, Duration::from_millis(100));
        let now = Instant::now();
        b.push(update("lb", 1, 7, 5, "x"), 1, true, now);
        b.push(update("lb", 1, 3, 5, "y"), 2, true, now);
        assert_eq!(b.take().latest[0].score, 7);
    }

    #[test]
    fn a_key_is_first_delivery_only_if_all_its_messages_are() {
        let mut b = Batcher::new(50, Duration::from_millis(100));
        let now = Instant::now();
        b.push(update("lb", 1, 1, 1, "a"), 1, true, now);
        b.push(update("lb", 1, 2, 2, "b"), 2, false, now);
        b.push(update("lb", 2, 1, 1, "c"), 3, true, now);
        b.push(update("lb", 3, 1, 1, "d"), 4, false, now);
        let f = b.take();
        assert_eq!(f.first_delivery, vec![false, true, false]);
    }

    #[test]
    fn linger_starts_at_first_event() {
        let mut b = Batcher::new(50, Duration::from_millis(100));
        let t0 = Instant::now();
        assert_eq!(b.deadline(), None);
        b.push(update("lb", 1, 1, 1, "a"), 1, true, t0);
        b.push(
            update("lb", 2, 1, 1, "b"),
            2,
            true,
            t0 + Duration::from_millis(90),
        );
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(100)));
        b.take();
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn a_hot_key_alone_is_bounded_by_max_events() {
        let mut b = Batcher::new(50, Duration::from_millis(100));
        let now = Instant::now();
        let closed = (0..200)
            .filter_map(|i| b.push(update("lb", 1, i, i, &format!("e{i}")), i, true, now))
            .count();
        assert_eq!(closed, 1);
        assert!(b.is_empty());
    }
}
