//! The published stream of a scenario and the state it must leave behind, computed from the stream
//! alone (never from the worker's code).
//!
//! A workload has many profiles and leaderboards, a few hot (leaderboard, profile) keys updated
//! hundreds of times (with same-microsecond ties and negative scores), events in random time order,
//! duplicates (the same message re-published under the same `Nats-Msg-Id`, which the stream drops, and
//! under a new one, which the worker sees twice) and a few bad payloads, each with the dead-letter
//! reason it must get.

use std::collections::HashMap;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use score_worker::cmd::sample;
use uuid::Uuid;

/// Shape of a workload.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Ordinary events, spread uniformly over profiles × leaderboards.
    pub events: usize,
    pub profiles: usize,
    pub leaderboards: usize,
    /// Hot (leaderboard, profile) keys, each updated `hot_updates` times on top of `events`.
    pub hot_keys: usize,
    pub hot_updates: usize,
    /// Per mille of events published a second time with the same `Nats-Msg-Id` (deduplicated by
    /// the stream) and with a new one (stored twice, written twice by the worker).
    pub dup_same_id_permille: u32,
    pub dup_new_id_permille: u32,
}

impl Spec {
    /// A mid-sized mix for the fault scenarios.
    pub fn standard(events: usize) -> Spec {
        Spec {
            events,
            profiles: (events / 8).max(20),
            leaderboards: 4,
            hot_keys: 3,
            hot_updates: 300,
            dup_same_id_permille: 20,
            dup_new_id_permille: 20,
        }
    }
}

/// One good event, compactly: indices into the workload's profiles and leaderboards.
#[derive(Debug, Clone, Copy)]
pub struct Ev {
    pub profile: u32,
    pub board: u16,
    pub score: i64,
    pub at_micros: i64,
}

/// What goes on the wire, in publish order.
#[derive(Debug, Clone, Copy)]
pub enum Item {
    /// Event `idx`; `copy` 0 is the original, 1 a same-id re-publish, 2 a new-id duplicate.
    Event {
        idx: u32,
        copy: u8,
    },
    Bad(u16),
}

/// A payload the worker must dead-letter with `reason`.
#[derive(Debug, Clone)]
pub struct Bad {
    pub msg_id: String,
    pub reason: &'static str,
    pub payload: Bytes,
}

/// One message to publish.
pub struct Message {
    pub subject: String,
    pub msg_id: String,
    pub payload: Bytes,
}

pub struct Workload {
    /// Unique per workload; prefixes event ids.
    pub run: String,
    pub pattern: String,
    pub profiles: Vec<Uuid>,
    /// The wallet each profile publishes (mixed case for some) and the one stored (lower case).
    pub wallets_sent: Vec<String>,
    pub wallets: Vec<String>,
    pub boards: Vec<String>,
    pub events: Vec<Ev>,
    pub items: Vec<Item>,
    pub bad: Vec<Bad>,
}

impl Workload {
    /// Builds a workload for the stream whose subject pattern is `pattern`. Scores, times, order,
    /// duplicates and the positions of the bad payloads are deterministic in `seed`.
    pub fn generate(tag: &str, pattern: &str, spec: Spec, seed: u64) -> Workload {
        let mut rng = StdRng::seed_from_u64(seed);
        // Names are fresh every time, so that a replayed seed never meets the rows of an earlier
        // run; the seed decides everything else.
        let run = format!("{tag}-{:08x}", rand::random::<u32>());
        let profiles: Vec<Uuid> = (0..spec.profiles.max(1)).map(|_| Uuid::new_v4()).collect();
        let wallets: Vec<String> = profiles
            .iter()
            .map(|_| {
                let hex: String = (0..20)
                    .map(|_| format!("{:02x}", rng.random::<u8>()))
                    .collect();
                format!("0x{hex}")
            })
            .collect();
        // Every third profile sends its wallet in upper case; the worker stores it lower case.
        let wallets_sent = wallets
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i % 3 == 0 {
                    format!("0x{}", w[2..].to_ascii_uppercase())
                } else {
                    w.clone()
                }
            })
            .collect();
        let boards: Vec<String> = (0..spec.leaderboards.max(1))
            .map(|i| format!("{run}.lb-{i}"))
            .collect();

        let now = chrono::Utc::now().timestamp_micros();
        // Event times: the last hour (in random order), ending a minute ago.
        let window = 3_600_000_000i64;
        let start = now - 60_000_000 - window;
        let mut events = Vec::with_capacity(spec.events + spec.hot_keys * spec.hot_updates);
        for _ in 0..spec.events {
            let score = if rng.random_ratio(1, 10) {
                rng.random_range(-1_000_000..0)
            } else {
                rng.random_range(0..10_000_000)
            };
            events.push(Ev {
                profile: rng.random_range(0..profiles.len() as u32),
                board: rng.random_range(0..boards.len() as u16),
                score,
                at_micros: start + rng.random_range(0..window),
            });
        }
        // Hot keys: profile i on leaderboard i % L, updated hundreds of times over ten seconds, so
        // one flush holds several of its events and same-microsecond ties (1 in 10) happen.
        for k in 0..spec.hot_keys.min(profiles.len()) {
            let first = events.len();
            let base = start + rng.random_range(0..window - 10_000_000);
            for u in 0..spec.hot_updates {
                let at = if u > 0 && rng.random_ratio(1, 10) {
                    events[rng.random_range(first..events.len())].at_micros
                } else {
                    base + rng.random_range(0..10_000_000)
                };
                events.push(Ev {
                    profile: k as u32,
                    board: (k % boards.len()) as u16,
                    score: rng.random_range(-500..500),
                    at_micros: at,
                });
            }
        }

        let mut items: Vec<Item> = (0..events.len() as u32)
            .map(|idx| Item::Event { idx, copy: 0 })
            .collect();
        for idx in 0..events.len() as u32 {
            if rng.random_ratio(spec.dup_same_id_permille, 1000) {
                items.push(Item::Event { idx, copy: 1 });
            }
            if rng.random_ratio(spec.dup_new_id_permille, 1000) {
                items.push(Item::Event { idx, copy: 2 });
            }
        }
        items.shuffle(&mut rng);
        // A same-id copy is byte-for-byte the original: whichever of the two the stream stores first,
        // it drops the other (within its duplicate window).
        let mut workload = Workload {
            run,
            pattern: pattern.to_string(),
            profiles,
            wallets_sent,
            wallets,
            boards,
            events,
            items,
            bad: Vec::new(),
        };
        workload.bad = workload.bad_payloads();
        let n = workload.items.len();
        for b in 0..workload.bad.len() as u16 {
            let at = rng.random_range(0..=n);
            workload.items.insert(at, Item::Bad(b));
        }
        workload
    }

    /// The event id of event `idx`.
    pub fn event_id(&self, idx: u32) -> String {
        format!("{}-{idx}", self.run)
    }

    pub fn message(&self, item: Item) -> Message {
        match item {
            Item::Event { idx, copy } => {
                let e = self.events[idx as usize];
                let event_id = self.event_id(idx);
                let board = &self.boards[e.board as usize];
                let payload = sample::event_json(
                    &event_id,
                    self.profiles[e.profile as usize],
                    &self.wallets_sent[e.profile as usize],
                    board,
                    e.score,
                    chrono::DateTime::from_timestamp_micros(e.at_micros).expect("valid time"),
                );
                let msg_id = if copy == 2 {
                    format!("{event_id}-again")
                } else {
                    event_id
                };
                Message {
                    subject: sample::subject_for(&self.pattern, board),
                    msg_id,
                    payload,
                }
            }
            Item::Bad(b) => {
                let bad = &self.bad[b as usize];
                Message {
                    subject: sample::subject_for(&self.pattern, &self.boards[0]),
                    msg_id: bad.msg_id.clone(),
                    payload: bad.payload.clone(),
                }
            }
        }
    }

    /// Messages the stream stores (distinct `Nats-Msg-Id`s).
    pub fn stored_messages(&self) -> usize {
        self.items
            .iter()
            .filter(|i| !matches!(i, Item::Event { copy: 1, .. }))
            .count()
    }

    /// Bad payloads about profile 0 on leaderboard 0, so that if one were written by mistake it
    /// would show up in the partitions the verification reads.
    fn bad_payloads(&self) -> Vec<Bad> {
        let profile = self.profiles[0];
        let good = |id: &str| -> serde_json::Value {
            serde_json::from_slice(&sample::event_json(
                id,
                profile,
                &self.wallets[0],
                &self.boards[0],
                7,
                chrono::Utc::now() - chrono::Duration::minutes(5),
            ))
            .expect("sample JSON")
        };
        let id = |n: &str| format!("{}-bad-{n}", self.run);
        let mut bad = Vec::new();
        let mut push = |name: &str, reason: &'static str, payload: Vec<u8>| {
            bad.push(Bad {
                msg_id: id(name),
                reason,
                payload: payload.into(),
            })
        };
        let truncated = serde_json::to_vec(&good(&id("truncated"))).unwrap();
        push(
            "truncated",
            "malformed_json",
            truncated[..truncated.len() / 2].to_vec(),
        );
        let mut v = good(&id("no-profile"));
        v.as_object_mut().unwrap().remove("profile_id");
        push(
            "no-profile",
            "missing_field",
            serde_json::to_vec(&v).unwrap(),
        );
        let mut v = good(&id("future"));
        v["occurred_at"] = (chrono::Utc::now() + chrono::Duration::days(1))
            .to_rfc3339()
            .into();
        push(
            "future",
            "future_timestamp",
            serde_json::to_vec(&v).unwrap(),
        );
        let mut v = good(&id("float-score"));
        v["score"] = serde_json::json!(1.5);
        push(
            "float-score",
            "invalid_value",
            serde_json::to_vec(&v).unwrap(),
        );
        let mut v = good(&id("short-wallet"));
        v["wallet_address"] = "0x1234".into();
        push(
            "short-wallet",
            "invalid_value",
            serde_json::to_vec(&v).unwrap(),
        );
        let mut v = good(&id("huge"));
        v["padding"] = "x".repeat(70_000).into();
        push("huge", "too_large", serde_json::to_vec(&v).unwrap());
        bad
    }

    /// The newest event per (leaderboard, profile): later `occurred_at` wins; on a tie, the score the
    /// database keeps when two cells carry the same timestamp — the larger value compared as
    /// unsigned big-endian bytes, i.e. the larger `score as u64`.
    pub fn expected(&self) -> HashMap<(u16, u32), i64> {
        let mut newest: HashMap<(u16, u32), (i64, u64, i64)> = HashMap::new();
        for e in &self.events {
            let rank = (e.at_micros, e.score as u64, e.score);
            let slot = newest.entry((e.board, e.profile)).or_insert(rank);
            if (rank.0, rank.1) > (slot.0, slot.1) {
                *slot = rank;
            }
        }
        newest.into_iter().map(|(k, v)| (k, v.2)).collect()
    }

    /// One line describing the workload.
    pub fn summary(&self) -> String {
        format!(
            "{} events, {} keys, {} messages stored, {} bad",
            self.events.len(),
            self.expected().len(),
            self.stored_messages(),
            self.bad.len()
        )
    }
}
