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
//! - Churn (off by default). `changes`: the backlog is `events` messages over `events / changes` keys
//!   (rounded up), each changed `changes` times with a new score each time. `hot_keys`, `hot_changes`:
//!   a hot set of that many keys, each changed `hot_changes` times; the rest of the backlog is the
//!   default workload (or, with `changes` too, churned as above). A churned key's events
//!   are spread evenly through the backlog: the hot events take every (`events` ÷ hot events)-th
//!   position, and the keys of a churned part take turns in cycles, each key once per cycle in a
//!   shuffled order, so the `i`-th change of every key falls in the `i`-th cycle. Churned events are
//!   always new and in order (times rising with publish order); `duplicates` and `out_of_order` apply
//!   to the default part only. Key `k` of `changes` is profile `k mod profiles` on leaderboard
//!   `(k mod profiles + k div profiles) mod leaderboards`: as many distinct profiles as keys (up to
//!   `profiles`), spread evenly over the leaderboards. The hot keys have profiles of their own (not
//!   among the default part's), hot key `h` on leaderboard `h mod leaderboards`.
//!
//! Generation is seeded, so every variant and ceiling of a run gets exactly the same messages.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
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
    /// Churn: changes per key of the (non-hot part of the) backlog.
    pub changes: Option<usize>,
    /// Hot set: keys, each changed `hot_changes` times, mixed into the rest.
    pub hot_keys: usize,
    pub hot_changes: usize,
}

/// Scores are drawn uniformly from `0..SCORES` (the verifier slices this range).
pub const SCORES: i64 = 1_000_000;

impl Spec {
    /// Messages of the hot set.
    pub fn hot_events(&self) -> usize {
        self.hot_keys * self.hot_changes
    }

    /// Keys of the `changes` part: the rest of the backlog over `changes` changes each.
    pub fn churned_keys(&self) -> usize {
        self.changes
            .map_or(0, |c| (self.events - self.hot_events()).div_ceil(c.max(1)))
    }

    pub fn churned(&self) -> bool {
        self.changes.is_some() || self.hot_keys > 0
    }

    /// The churn in words, for the shape line and the title; `None` without churn.
    pub fn churn(&self) -> Option<String> {
        // Whole numbers, thousands separated (`num` gives small ones three significant digits).
        let n = |x: usize| match x {
            0..100 => x.to_string(),
            _ => crate::report::num(x as f64),
        };
        let rest = self.events - self.hot_events();
        let part = |c: usize| {
            format!(
                "{} keys × {} changes",
                n(self.churned_keys()),
                n(c.min(rest))
            )
        };
        match (self.hot_keys, self.changes) {
            (0, None) => None,
            (0, Some(c)) => Some(format!("churn: {}", part(c))),
            (h, rest_changes) => Some(format!(
                "hot set: {} keys × {} changes ({} messages), the other {}: {}",
                n(h),
                n(self.hot_changes),
                n(self.hot_events()),
                n(rest),
                rest_changes.map_or("default workload".into(), part)
            )),
        }
    }
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
    churn: Option<Churn>,
}

const RECENT: usize = 1000;

/// Which message positions belong to churned keys, and which key each takes.
#[derive(Clone)]
struct Churn {
    /// An RNG of its own, so that the default part draws exactly what it draws without churn.
    rng: StdRng,
    hot: Option<Turns>,
    /// Hot messages per `total` positions.
    hot_events: u64,
    total: u64,
    /// The keys of `changes`, for the positions outside the hot set.
    rest: Option<Turns>,
    /// Messages generated so far.
    position: u64,
    /// The current score of each churned key, so that each change is a new score.
    scores: HashMap<(usize, usize), i64>,
}

/// Keys taking turns: each once per cycle, in an order shuffled per cycle.
#[derive(Clone)]
struct Turns {
    keys: Vec<(usize, usize)>,
    order: Vec<usize>,
    at: usize,
}

impl Turns {
    fn new(keys: Vec<(usize, usize)>) -> Turns {
        let order = (0..keys.len()).collect::<Vec<_>>();
        Turns {
            at: order.len(),
            keys,
            order,
        }
    }

    fn next(&mut self, rng: &mut StdRng) -> (usize, usize) {
        if self.at == self.order.len() {
            self.order.shuffle(rng);
            self.at = 0;
        }
        self.at += 1;
        self.keys[self.order[self.at - 1]]
    }
}

impl Churn {
    /// The churned key of the next message, or `None` for a message of the default part.
    fn key(&mut self) -> Option<(usize, usize)> {
        let p = self.position;
        self.position += 1;
        let hot = self.hot_events > 0
            && (p + 1) * self.hot_events / self.total > p * self.hot_events / self.total;
        match (hot, &mut self.hot, &mut self.rest) {
            (true, Some(turns), _) | (false, _, Some(turns)) => Some(turns.next(&mut self.rng)),
            _ => None,
        }
    }

    fn score(&mut self, key: (usize, usize)) -> i64 {
        let previous = self.scores.get(&key).copied();
        let score = loop {
            let s = self.rng.random_range(0..SCORES);
            if Some(s) != previous {
                break s;
            }
        };
        self.scores.insert(key, score);
        score
    }
}

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
        let mut profiles = profiles;
        let churn = spec.churned().then(|| {
            let mut rng = StdRng::seed_from_u64(spec.seed.wrapping_add(0x9e37_79b9_7f4a_7c15));
            let (p, l) = (spec.profiles, spec.leaderboards);
            let hot_keys: Vec<(usize, usize)> = (0..spec.hot_keys)
                .map(|h| {
                    profiles.push(uuid::Builder::from_random_bytes(rng.random()).into_uuid());
                    (p + h, h % l)
                })
                .collect();
            let rest: Vec<(usize, usize)> = (0..spec.churned_keys())
                .map(|k| (k % p, (k % p + k / p) % l))
                .collect();
            Churn {
                rng,
                hot: (!hot_keys.is_empty()).then(|| Turns::new(hot_keys)),
                hot_events: spec.hot_events() as u64,
                total: spec.events.max(1) as u64,
                rest: (!rest.is_empty()).then(|| Turns::new(rest)),
                position: 0,
                scores: HashMap::new(),
            }
        });
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
            churn,
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
                .min(self.spec.profiles - 1)
        } else {
            // The default part's profiles only: hot keys' profiles follow them.
            self.rng.random_range(0..self.spec.profiles)
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
            score: self.rng.random_range(0..SCORES),
            at_micros: at,
        }
    }

    /// A change of churned key `(p, b)`: a new score, the next time.
    fn churned_event(&mut self, (p, b): (usize, usize)) -> Event {
        let churn = self.churn.as_mut().expect("churned");
        let score = churn.score((p, b));
        self.clock += self.step;
        let slot = self.newest.entry((p, b)).or_insert(self.clock);
        *slot = (*slot).max(self.clock);
        self.next += 1;
        let profile = self.profiles[p];
        Event {
            event_id: format!("bench-{}-{}", self.spec.seed, self.next),
            profile,
            wallet: wallet_of(profile),
            leaderboard: self.boards[b].clone(),
            score,
            at_micros: self.clock,
        }
    }

    /// The next `n` messages.
    pub fn take(&mut self, n: usize) -> Vec<Message> {
        (0..n)
            .map(|i| {
                if let Some(key) = self.churn.as_mut().and_then(Churn::key) {
                    let event = self.churned_event(key);
                    return Message {
                        msg_id: event.event_id.clone(),
                        event,
                    };
                }
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
