//! The workload: which profile scores on which leaderboard when, and which messages repeat.
//!
//! - Each profile has an activity weight drawn from a Pareto distribution of shape `skew` (1.16 is the
//!   "80/20" shape). A fraction `hot` of the events picks its profile in proportion to that weight (the
//!   hot, Pareto-distributed part); the rest picks a profile uniformly. The leaderboard is uniform.
//! - Event times increase with publish order, except for a fraction `out_of_order` whose time is up to
//!   30 s older than the newest event already published for the same key.
//! - A fraction `duplicates` of the messages re-publishes one of the last 1,000 events unchanged (same
//!   `event_id`) under a new `Nats-Msg-Id`, as a publisher retry or a redelivery does: NATS stores it
//!   again and the worker sees it twice.
//!
//! Generation is seeded, so every variant and ceiling of a run gets exactly the same messages.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::support::{wallet_of, Event};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Spec {
    /// Messages in the backlog (duplicates included).
    pub events: usize,
    pub profiles: usize,
    pub leaderboards: usize,
    pub hot: f64,
    pub skew: f64,
    pub duplicates: f64,
    pub out_of_order: f64,
    pub seed: u64,
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Message {
    pub event: Event,
    pub msg_id: String,
}

/// Continues the same workload on each call to [`Generator::take`]; clone it to replay.
#[derive(Clone)]
pub struct Generator {
    spec: Spec,
    rng: StdRng,
    profiles: Vec<Uuid>,
    /// Running sum of the profiles' Pareto weights, for weighted picks by binary search.
    cumulative: Vec<f64>,
    boards: Vec<String>,
    newest: HashMap<(usize, usize), i64>,
    recent: Vec<Event>,
    clock: i64,
    step: i64,
    next: u64,
}

const RECENT: usize = 1000;

impl Generator {
    /// Event times start at `start_micros` and advance by `step_micros` per new event.
    pub fn new(spec: &Spec, start_micros: i64, step_micros: i64) -> Generator {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let profiles: Vec<Uuid> = (0..spec.profiles)
            .map(|_| uuid::Builder::from_random_bytes(rng.random()).into_uuid())
            .collect();
        let mut sum = 0.0;
        let cumulative = (0..spec.profiles)
            .map(|_| {
                // Inverse CDF of Pareto(x_m = 1, alpha = skew).
                let u: f64 = rng.random();
                sum += (1.0 - u).powf(-1.0 / spec.skew);
                sum
            })
            .collect();
        Generator {
            spec: spec.clone(),
            rng,
            profiles,
            cumulative,
            boards: (0..spec.leaderboards)
                .map(|i| format!("bench-lb-{i}"))
                .collect(),
            newest: HashMap::new(),
            recent: Vec::with_capacity(RECENT),
            clock: start_micros,
            step: step_micros.max(1),
            next: 0,
        }
    }

    /// Moves the clock (the next new event is at `start_micros`).
    pub fn set_clock(&mut self, start_micros: i64, step_micros: i64) {
        self.clock = self.clock.max(start_micros);
        self.step = step_micros.max(1);
    }

    fn profile(&mut self) -> usize {
        if self.rng.random_bool(self.spec.hot) {
            let total = *self.cumulative.last().expect("at least one profile");
            let x = self.rng.random::<f64>() * total;
            self.cumulative
                .partition_point(|c| *c < x)
                .min(self.profiles.len() - 1)
        } else {
            self.rng.random_range(0..self.profiles.len())
        }
    }

    fn new_event(&mut self) -> Event {
        let (p, b) = (self.profile(), self.rng.random_range(0..self.boards.len()));
        let at = match self.newest.get(&(p, b)) {
            Some(&newest) if self.rng.random_bool(self.spec.out_of_order) => {
                newest - self.rng.random_range(1..=30_000_000)
            }
            _ => {
                self.clock += self.step;
                self.clock
            }
        };
        let slot = self.newest.entry((p, b)).or_insert(at);
        *slot = (*slot).max(at);
        self.next += 1;
        let profile = self.profiles[p];
        Event {
            event_id: format!("bench-{}-{}", self.spec.seed, self.next),
            profile,
            wallet: wallet_of(profile),
            leaderboard: self.boards[b].clone(),
            score: self.rng.random_range(0..1_000_000),
            at_micros: at,
        }
    }

    /// The next `n` messages.
    pub fn take(&mut self, n: usize) -> Vec<Message> {
        (0..n)
            .map(|i| {
                if !self.recent.is_empty() && self.rng.random_bool(self.spec.duplicates) {
                    let event = self.recent[self.rng.random_range(0..self.recent.len())].clone();
                    let msg_id = format!("{}-again-{}-{i}", event.event_id, self.next);
                    return Message { event, msg_id };
                }
                let event = self.new_event();
                if self.recent.len() == RECENT {
                    self.recent.swap_remove(self.rng.random_range(0..RECENT));
                }
                self.recent.push(event.clone());
                Message {
                    msg_id: event.event_id.clone(),
                    event,
                }
            })
            .collect()
    }
}

/// Shape of a set of messages, printed with the results so a reader sees what was measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shape {
    pub messages: usize,
    pub distinct_events: usize,
    pub keys: usize,
    pub max_events_per_key: usize,
    /// Share of the messages on the busiest 1 % of keys.
    pub top1pct_key_share: f64,
    /// Messages whose event is older than an earlier message's event for the same key.
    pub out_of_order: usize,
}

pub fn shape(messages: &[Message]) -> Shape {
    let mut per_key: HashMap<(&str, Uuid), usize> = HashMap::new();
    let mut newest: HashMap<(&str, Uuid), i64> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    let mut out_of_order = 0;
    for m in messages {
        let key = (m.event.leaderboard.as_str(), m.event.profile);
        *per_key.entry(key).or_default() += 1;
        ids.insert(m.event.event_id.as_str());
        let slot = newest.entry(key).or_insert(m.event.at_micros);
        if m.event.at_micros < *slot {
            out_of_order += 1;
        }
        *slot = (*slot).max(m.event.at_micros);
    }
    let mut counts: Vec<usize> = per_key.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let top = counts.len().div_ceil(100);
    Shape {
        messages: messages.len(),
        distinct_events: ids.len(),
        keys: counts.len(),
        max_events_per_key: counts.first().copied().unwrap_or(0),
        top1pct_key_share: counts[..top].iter().sum::<usize>() as f64
            / messages.len().max(1) as f64,
        out_of_order,
    }
}
