//! Compares the database and the dead-letter stream with the state a workload must leave, counting
//! rather than asserting, so every scenario can print its numbers before it asserts them.
//!
//! - **verified**: good events whose history row is present and right and whose (leaderboard,
//!   profile) holds the expected newest score in `scores_by_profile` (with the stored wallet) and
//!   exactly one row, at that score, in `scores`;
//! - **lost**: what should be in the database and is not: an event's history row, a key's by-profile
//!   row or its leaderboard row;
//! - **wrong**: what is there but should not be, or not like that: a wrong score or wallet, a second
//!   leaderboard row of a key, a row of a key or event nobody published, a history row with other
//!   values; plus dead-letter mismatches (a bad message missing or with the wrong reason, anything
//!   else in the dead-letter stream).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use score_worker::deadletter;
use scylla::client::session::Session;
use uuid::Uuid;

use crate::support::{paged_rows, KEYSPACE};
use score_worker::config::Config;

use crate::workload::{Bad, Workload};

/// Database queries in flight at once.
const CONCURRENCY: usize = 32;

#[derive(Debug, Default)]
pub struct Outcome {
    pub published: usize,
    pub verified: usize,
    pub lost: usize,
    pub wrong: usize,
    pub dead_lettered: usize,
    /// The first problems found, for the failure message.
    pub problems: Vec<String>,
}

impl Outcome {
    fn problem(&mut self, text: String) {
        if self.problems.len() < 20 {
            self.problems.push(text);
        }
    }

    /// The scenario's one summary line.
    pub fn line(&self, scenario: &str, recover_s: &str, extra: &str) -> String {
        format!(
            "chaos {scenario}: published={} verified={} lost={} wrong={} dead_lettered={} recover_s={recover_s}{}{extra}",
            self.published,
            self.verified,
            self.lost,
            self.wrong,
            self.dead_lettered,
            if extra.is_empty() { "" } else { " " },
        )
    }

    /// Prints the summary line, then asserts nothing was lost or wrong.
    pub fn report(&self, scenario: &str, recover_s: &str, extra: &str) {
        println!("{}", self.line(scenario, recover_s, extra));
        assert!(
            self.lost == 0 && self.wrong == 0 && self.verified == self.published,
            "chaos {scenario}: lost={} wrong={} verified={}/{}; first problems: {:#?}",
            self.lost,
            self.wrong,
            self.verified,
            self.published,
            self.problems
        );
    }
}

async fn run_all<T, F, Fut>(inputs: Vec<T>, f: F) -> Vec<Fut::Output>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future,
{
    futures::stream::iter(inputs.into_iter().map(f))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// Checks every table and the dead-letter stream against `workloads` (all published to the
/// scenario's stream).
pub async fn verify(
    session: &Session,
    js: &jetstream::Context,
    config: &Config,
    workloads: &[&Workload],
) -> Outcome {
    let mut out = Outcome::default();
    for workload in workloads {
        let db = verify_db(session, config, workload).await;
        out.published += db.published;
        out.verified += db.verified;
        out.lost += db.lost;
        out.wrong += db.wrong;
        for p in db.problems {
            out.problem(p);
        }
    }
    verify_dead_letters(js, config, workloads, &mut out).await;
    out
}

/// The database against one workload.
async fn verify_db(session: &Session, config: &Config, workload: &Workload) -> Outcome {
    let mut out = Outcome {
        published: workload.events.len(),
        ..Default::default()
    };
    let want = workload.expected();
    let buckets = config.scylla.leaderboard_buckets;
    let profile_index: HashMap<Uuid, u32> = workload
        .profiles
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, i as u32))
        .collect();
    let board_index: HashMap<&str, u16> = workload
        .boards
        .iter()
        .enumerate()
        .map(|(i, b)| (b.as_str(), i as u16))
        .collect();

    // Keys: by-profile rows, one partition per profile.
    let by_profile = session
        .prepare(format!(
            "SELECT leaderboard_id, score, wallet_address FROM {KEYSPACE}.scores_by_profile WHERE profile_id = ?"
        ))
        .await
        .expect("prepare");
    let rows = run_all((0..workload.profiles.len() as u32).collect(), |p| {
        let by_profile = &by_profile;
        let profile = workload.profiles[p as usize];
        async move {
            let result = session
                .execute_unpaged(by_profile, (profile,))
                .await
                .expect("read scores_by_profile")
                .into_rows_result()
                .expect("rows");
            let rows: Vec<(String, Option<i64>, Option<String>)> = result
                .rows::<(String, Option<i64>, Option<String>)>()
                .expect("typed rows")
                .map(|r| r.expect("row"))
                .collect();
            (p, rows)
        }
    })
    .await;
    let mut key_ok: HashSet<(u16, u32)> = HashSet::new();
    let mut seen_profile_keys = HashSet::new();
    for (p, rows) in rows {
        for (board, score, wallet) in rows {
            let Some(&b) = board_index.get(board.as_str()) else {
                out.wrong += 1;
                out.problem(format!(
                    "by-profile row of an unknown leaderboard {board} for profile {p}"
                ));
                continue;
            };
            let key = (b, p);
            seen_profile_keys.insert(key);
            match want.get(&key) {
                None => {
                    out.wrong += 1;
                    out.problem(format!(
                        "by-profile row {key:?} nobody published (score {score:?})"
                    ));
                }
                Some(expected) => {
                    let wallet_ok =
                        wallet.as_deref() == Some(workload.wallets[p as usize].as_str());
                    if score == Some(*expected) && wallet_ok {
                        key_ok.insert(key);
                    } else {
                        out.wrong += 1;
                        out.problem(format!(
                            "by-profile {key:?}: want {expected} / {}, got {score:?} / {wallet:?}",
                            workload.wallets[p as usize]
                        ));
                    }
                }
            }
        }
    }
    for key in want.keys() {
        if !seen_profile_keys.contains(key) {
            out.lost += 1;
            out.problem(format!("by-profile row {key:?} missing"));
        }
    }

    // Leaderboard rows: every bucket of every leaderboard, page by page (a bucket holds a row
    // tombstone per score change).
    let cql = format!(
        "SELECT score, profile_id FROM {KEYSPACE}.scores WHERE leaderboard_id = ? AND bucket = ?"
    );
    let partitions: Vec<(u16, i32)> = (0..workload.boards.len() as u16)
        .flat_map(|b| (0..buckets).map(move |k| (b, k)))
        .collect();
    let rows = run_all(partitions, |(b, bucket)| {
        let cql = &cql;
        let board = workload.boards[b as usize].as_str();
        async move {
            let rows: Vec<(i64, Uuid)> = paged_rows(session, cql, (board, bucket)).await;
            (b, rows)
        }
    })
    .await;
    let mut board_rows: HashMap<(u16, u32), Vec<i64>> = HashMap::new();
    for (b, rows) in rows {
        for (score, profile) in rows {
            match profile_index.get(&profile) {
                Some(&p) => board_rows.entry((b, p)).or_default().push(score),
                None => {
                    out.wrong += 1;
                    out.problem(format!(
                        "leaderboard row of an unknown profile {profile} on board {b}"
                    ));
                }
            }
        }
    }
    for (key, scores) in &board_rows {
        match want.get(key) {
            None => {
                out.wrong += scores.len();
                out.problem(format!(
                    "leaderboard rows {key:?} nobody published: {scores:?}"
                ));
            }
            Some(expected) if scores == &vec![*expected] => {}
            Some(expected) => {
                out.wrong += 1;
                key_ok.remove(key);
                out.problem(format!(
                    "leaderboard {key:?}: want exactly [{expected}], got {scores:?}"
                ));
            }
        }
    }
    for key in want.keys() {
        if !board_rows.contains_key(key) {
            out.lost += 1;
            key_ok.remove(key);
            out.problem(format!("leaderboard row {key:?} missing"));
        }
    }

    // History: every (profile, day) partition the events fall on.
    let history = session
        .prepare(format!(
            "SELECT event_id, leaderboard_id, score FROM {KEYSPACE}.score_history WHERE profile_id = ? AND day = ?"
        ))
        .await
        .expect("prepare");
    let mut by_id: HashMap<String, u32> = HashMap::with_capacity(workload.events.len());
    let mut partitions: HashSet<(u32, chrono::NaiveDate)> = HashSet::new();
    for (i, e) in workload.events.iter().enumerate() {
        by_id.insert(workload.event_id(i as u32), i as u32);
        partitions.insert((e.profile, day_of(e.at_micros)));
    }
    let rows = run_all(partitions.into_iter().collect(), |(p, day)| {
        let history = &history;
        let profile = workload.profiles[p as usize];
        async move {
            let result = session
                .execute_unpaged(history, (profile, day))
                .await
                .expect("read score_history")
                .into_rows_result()
                .expect("rows");
            let rows: Vec<(String, String, i64)> = result
                .rows::<(String, String, i64)>()
                .expect("typed rows")
                .map(|r| r.expect("row"))
                .collect();
            (p, rows)
        }
    })
    .await;
    let mut history_ok = vec![false; workload.events.len()];
    let mut history_seen = vec![false; workload.events.len()];
    for (p, rows) in rows {
        for (event_id, board, score) in rows {
            let Some(&i) = by_id.get(&event_id) else {
                out.wrong += 1;
                out.problem(format!(
                    "history row {event_id} of profile {p} nobody published"
                ));
                continue;
            };
            let e = workload.events[i as usize];
            if history_seen[i as usize] {
                out.wrong += 1;
                out.problem(format!("history row {event_id} twice"));
                continue;
            }
            history_seen[i as usize] = true;
            if e.profile == p && board == workload.boards[e.board as usize] && score == e.score {
                history_ok[i as usize] = true;
            } else {
                out.wrong += 1;
                out.problem(format!(
                    "history row {event_id}: want profile {} {} {}, got profile {p} {board} {score}",
                    e.profile, workload.boards[e.board as usize], e.score
                ));
            }
        }
    }
    for (i, e) in workload.events.iter().enumerate() {
        if !history_seen[i] {
            out.lost += 1;
            out.problem(format!(
                "history row {} missing",
                workload.event_id(i as u32)
            ));
        }
        if history_ok[i] && key_ok.contains(&(e.board, e.profile)) {
            out.verified += 1;
        }
    }

    out
}

/// Dead letters: exactly the bad messages of `workloads`, each with its reason, and nothing else.
async fn verify_dead_letters(
    js: &jetstream::Context,
    config: &Config,
    workloads: &[&Workload],
    out: &mut Outcome,
) {
    let letters = read_all(js, &config.nats.deadletter_stream).await;
    out.dead_lettered = letters.len();
    let mut expected_bad: HashMap<&str, &Bad> = workloads
        .iter()
        .flat_map(|w| w.bad.iter())
        .map(|b| (b.msg_id.as_str(), b))
        .collect();
    for letter in &letters {
        let header = |name: &str| header(letter, name);
        let reason = header(deadletter::REASON);
        let msg_id = header(deadletter::ORIGINAL_MSG_ID);
        match expected_bad.remove(msg_id.as_str()) {
            None => {
                out.wrong += 1;
                out.problem(format!(
                    "unexpected dead letter {msg_id} ({reason}): {}",
                    header(deadletter::ERROR)
                ));
            }
            Some(bad) => {
                let subject = format!("{}.{}", config.nats.deadletter_prefix, bad.reason);
                // A letter keeps at most validation.max_payload_bytes of the payload, and says how
                // long the original was when it keeps less.
                let kept = bad.payload.len().min(config.validation.max_payload_bytes);
                let truncated = header(deadletter::PAYLOAD_TRUNCATED);
                let want_truncated = if kept < bad.payload.len() {
                    bad.payload.len().to_string()
                } else {
                    String::new()
                };
                if reason != bad.reason
                    || letter.subject.as_str() != subject
                    || letter.payload != bad.payload[..kept]
                    || truncated != want_truncated
                {
                    out.wrong += 1;
                    out.problem(format!(
                        "dead letter {msg_id}: want {} on {subject}, got {reason} on {} (payload {} bytes, want {})",
                        bad.reason,
                        letter.subject,
                        letter.payload.len(),
                        bad.payload.len()
                    ));
                }
            }
        }
    }
    for msg_id in expected_bad.keys() {
        out.wrong += 1;
        out.problem(format!("bad message {msg_id} not dead-lettered"));
    }
}

/// A header of a message, empty if absent.
pub fn header(message: &jetstream::Message, name: &str) -> String {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

fn day_of(micros: i64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp_micros(micros)
        .expect("valid time")
        .date_naive()
}

/// Every message of a stream, through an ephemeral consumer, bounded by the stream's message
/// count and a deadline.
pub async fn read_all(js: &jetstream::Context, stream: &str) -> Vec<jetstream::Message> {
    let mut stream = js.get_stream(stream).await.expect("dead-letter stream");
    let count = stream.info().await.expect("stream info").state.messages as usize;
    if count == 0 {
        return Vec::new();
    }
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("ephemeral consumer");
    let mut out = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < count && tokio::time::Instant::now() < deadline {
        let mut batch = consumer
            .fetch()
            .max_messages(count - out.len())
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .expect("fetch");
        while let Some(Ok(m)) = batch.next().await {
            out.push(m);
        }
    }
    out
}
