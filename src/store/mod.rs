//! The database side: session, prepared statements, and the write protocol that keeps the leaderboard
//! invariant (each (leaderboard, profile) exactly once, at its newest score) without locks, across any
//! number of replicas. The argument for why it holds is in `docs/design.md`. A flush is written in five
//! phases; each finishes before the next starts, and each is sent as a handful of unlogged batches of
//! statements that share their replicas ([`phase`]):
//!
//! 1. `write_profiles`: per key, one statement on the `scores_by_profile` row at event time `t`: add
//!    `(bucket, score)` to `ranked`, set score, wallet and `updated_at` (older events lose cell by cell);
//! 2. `write_rows`: per key the leaderboard row at `t`; per event its history row;
//! 3. `read_back`: the current score `s*`, its write time `t*` and `ranked` of every key, a few
//!    multi-partition reads (or one read per key, `scylla.read_back = "per_key"`);
//! 4. `cleanup`: delete every `ranked` row other than `(bucket, s*)` from the leaderboard at `t*`, and
//!    invalidate the eligibility cache of each wallet whose event is the newest, once per wallet;
//! 5. `prune_ranked`: remove the deleted entries from `ranked`, only once their rows are gone.
//!
//! Every write carries `USING TIMESTAMP` (event time or `t*`) or is a delete that is safe to repeat,
//! so all of it is idempotent and safe to retry or redeliver. When a flush fails, the `probe` module tells
//! whether the database takes this worker's writes at all; [`error`] classifies every failure.

pub mod error;
mod phase;
mod probe;
pub mod repair;
mod session;
mod statements;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use prometheus::Histogram;
use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::value::CqlTimestamp;
use uuid::Uuid;

pub use error::{Cause, Kind, StoreError};
pub use session::{connect, consistency, ConnectError, TlsError};

use crate::config::{ReadBack, ScyllaConfig};
use crate::metrics::{Metrics, REQUESTS};
use crate::pipeline::Store;
use crate::score::{tie_rank, ScoreUpdate};
use phase::{Phase, Placement, Placer, ReplicaMap, Request};
use statements::Statements;

// Indexes into `REQUESTS`, the request kinds in the order a flush sends them.
const WRITE_PROFILES: usize = 0;
const WRITE_ROWS: usize = 1;
const READ_BACK: usize = 2;
const CLEANUP: usize = 3;
const PRUNE_RANKED: usize = 4;

/// Partitions per multi-partition read-back request.
const READ_BACK_PARTITIONS: usize = 100;

/// What the read-back found for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Current {
    /// The current score; `None` when an operator deleted the key at `written_at` and nothing newer
    /// was written since ([`repair`]).
    score: Option<i64>,
    written_at: i64,
    ranked: Vec<(i32, i64)>,
}

/// `score`, `WRITETIME(score)`, `WRITETIME(updated_at)`, `ranked`.
type ProfileRow = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Vec<(i32, i64)>>,
);

/// The real store.
pub struct ScyllaStore {
    session: Arc<Session>,
    metrics: Arc<Metrics>,
    buckets: i32,
    concurrency: usize,
    batch_max_bytes: usize,
    read_back: ReadBack,
    statements: Statements,
    probe: probe::Probe,
    /// At a quorum consistency a key the read-back does not find was deleted after its write (see
    /// [`ScyllaStore::settle_keys`]); below it, it may be a replica behind.
    missing_is_deleted: bool,
    latency: [Histogram; 5],
}

impl ScyllaStore {
    /// Prepares every statement against `config.keyspace`.
    pub async fn new(
        session: Arc<Session>,
        config: &ScyllaConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConnectError> {
        let statements = Statements::prepare(&session, &config.keyspace).await?;
        crate::schema::check_buckets(&session, config)
            .await
            .map_err(|e| ConnectError::Buckets(Box::new(e)))?;
        let latency = REQUESTS.map(|r| metrics.scylla_query_duration.with_label_values(&[r]));
        Ok(Self {
            session,
            metrics,
            buckets: config.leaderboard_buckets,
            concurrency: config.write_concurrency,
            batch_max_bytes: config.batch_max_bytes,
            read_back: config.read_back,
            statements,
            probe: probe::Probe::new(&config.keyspace),
            missing_is_deleted: config.consistency.is_quorum(),
            latency,
        })
    }

    /// Counts a failed request by its kind.
    fn failed(&self, e: StoreError) -> StoreError {
        self.metrics
            .scylla_errors
            .with_label_values(&[e.kind.as_str()])
            .inc();
        if e.kind == Kind::Connection {
            self.metrics.scylla_connection_failures.inc();
        }
        e
    }

    /// Sends one request, timing and counting it under its kind.
    async fn send(&self, kind: usize, request: Request<'_>) -> Result<QueryResult, StoreError> {
        let start = Instant::now();
        let result = match &request {
            Request::Single(statement, values) => {
                self.session.execute_unpaged(statement, values).await
            }
            Request::Batch(batch, values) => self.session.batch(batch, values).await,
        };
        self.latency[kind].observe(start.elapsed().as_secs_f64());
        self.metrics
            .scylla_statements
            .observe(request.statements() as f64);
        if let Ok(result) = &result {
            for warning in result.warnings() {
                self.metrics.server_warning(REQUESTS[kind], warning);
            }
        }
        result.map_err(|e| self.failed(StoreError::new(REQUESTS[kind], e)))
    }

    /// Sends a phase's requests at once (at most `write_concurrency` in flight) and waits for all.
    async fn run(&self, kind: usize, phase: Phase<'_>) -> Result<(), StoreError> {
        if phase.is_empty() {
            return Ok(());
        }
        // Boxed: a closure over borrowed values makes the future's `Send` bound unprovable for the
        // compiler (higher-ranked lifetimes).
        let sends: Vec<BoxFuture<'_, Result<QueryResult, StoreError>>> = phase
            .requests(self.batch_max_bytes)
            .into_iter()
            .map(|r| Box::pin(self.send(kind, r)) as _)
            .collect();
        futures::stream::iter(sends)
            .buffer_unordered(self.concurrency)
            .try_for_each(|_| async { Ok(()) })
            .await
    }

    /// Phase 3: what the database now holds for every key of the flush, reading only those
    /// (profile, leaderboard) rows.
    async fn read_back(
        &self,
        map: Arc<dyn ReplicaMap>,
        latest: &[ScoreUpdate],
    ) -> Result<HashMap<Key, Current>, StoreError> {
        let mut found = HashMap::with_capacity(latest.len());
        let reads: Vec<BoxFuture<'_, Result<Found, StoreError>>> = match self.read_back {
            ReadBack::Grouped => read_plan(&mut Placer::new(map), &self.statements, latest)
                .into_iter()
                .map(|(profiles, leaderboards)| {
                    let request = Request::Single(
                        self.statements.read_profiles.clone(),
                        Box::new((profiles, leaderboards)),
                    );
                    Box::pin(self.read_rows(request)) as _
                })
                .collect(),
            ReadBack::PerKey => latest
                .iter()
                .map(|u| {
                    let request = Request::Single(
                        self.statements.read_profile.clone(),
                        Box::new((u.profile_id, u.leaderboard_id.as_str())),
                    );
                    let key = (u.profile_id, u.leaderboard_id.clone());
                    Box::pin(async move {
                        let result = self.send(READ_BACK, request).await?;
                        let rows = result.into_rows_result().map_err(decode)?;
                        let row = rows.maybe_first_row::<ProfileRow>().map_err(decode)?;
                        Ok(row
                            .and_then(current)
                            .map(|c| (key, c))
                            .into_iter()
                            .collect())
                    }) as _
                })
                .collect(),
        };
        let results: Vec<Found> = futures::stream::iter(reads)
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;
        found.extend(results.into_iter().flatten());
        Ok(found)
    }

    /// Sends one grouped read-back request and decodes the keys it found.
    async fn read_rows(&self, request: Request<'_>) -> Result<Found, StoreError> {
        type Row = (
            Uuid,
            String,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<Vec<(i32, i64)>>,
        );
        let result = self.send(READ_BACK, request).await?;
        let rows = result.into_rows_result().map_err(decode)?;
        let mut found = Vec::new();
        for row in rows.rows::<Row>().map_err(decode)? {
            let (pid, lb, score, written_at, touched_at, ranked) = row.map_err(decode)?;
            if let Some(current) = current((score, written_at, touched_at, ranked)) {
                found.push(((pid, lb), current));
            }
        }
        Ok(found)
    }
}

/// A key of the protocol: (profile, leaderboard).
type Key = (Uuid, String);

/// What a read-back found, per key.
type Found = Vec<(Key, Current)>;

/// The grouped read-back's requests: `(profiles, leaderboards)` whose every pair is a key of the flush
/// (so only the flush's rows are read), grouped by where the profile's partition lives, at most
/// [`READ_BACK_PARTITIONS`] profiles each. Profiles with the same leaderboards in the flush share a
/// request.
fn read_plan<'a>(
    placer: &mut Placer,
    statements: &Statements,
    latest: &'a [ScoreUpdate],
) -> Vec<(Vec<Uuid>, Vec<&'a str>)> {
    let mut by_placement: HashMap<Placement, BTreeMap<Uuid, BTreeSet<&'a str>>> = HashMap::new();
    for u in latest {
        let values = (u.profile_id, u.leaderboard_id.as_str());
        let placement = placer.place(&statements.read_profile, &values);
        by_placement
            .entry(placement)
            .or_default()
            .entry(u.profile_id)
            .or_default()
            .insert(u.leaderboard_id.as_str());
    }
    let mut requests = Vec::new();
    for profiles in by_placement.into_values() {
        let mut by_boards: BTreeMap<BTreeSet<&'a str>, Vec<Uuid>> = BTreeMap::new();
        for (profile, boards) in profiles {
            by_boards.entry(boards).or_default().push(profile);
        }
        for (boards, profiles) in by_boards {
            let boards: Vec<&str> = boards.into_iter().collect();
            for chunk in profiles.chunks(READ_BACK_PARTITIONS) {
                requests.push((chunk.to_vec(), boards.clone()));
            }
        }
    }
    requests
}

/// A read-back whose rows do not decode.
fn decode(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::decode(REQUESTS[READ_BACK], e)
}

/// Rows of `statement` that do not decode.
pub(crate) fn decode_as<E: std::error::Error + Send + Sync + 'static>(
    statement: &'static str,
) -> impl Fn(E) -> StoreError {
    move |e| StoreError::decode(statement, e)
}

/// A key with a score is current at the score's write time; a key without one but with an
/// `updated_at` was deleted at that cell's write time (a delete clears the score and rewrites
/// `updated_at` at its own timestamp); a key with neither was never written (or not visible yet).
fn current((score, written_at, touched_at, ranked): ProfileRow) -> Option<Current> {
    let written_at = match score {
        Some(_) => written_at?,
        None => touched_at?,
    };
    Some(Current {
        score,
        written_at,
        ranked: ranked.unwrap_or_default(),
    })
}

/// What one key's clean-up writes, decided from its read-back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cleanup {
    /// Leaderboard rows `(bucket, score)` to delete, each at its timestamp.
    deletes: Vec<((i32, i64), i64)>,
    /// `ranked` rewritten as `(timestamp, entries)`: the current row's entry alone (none for a deleted
    /// key). `None` when `ranked` holds nothing stale.
    overwrite: Option<(i64, Vec<(i32, i64)>)>,
}

/// The clean-up of a key whose read-back found `current`, by a writer that wrote the leaderboard row
/// `(bucket, own)` (`own` is `None` for an operator's delete, which writes no row).
///
/// - Every `ranked` entry other than the current row is deleted from the leaderboard at `t*`, where a
///   tombstone wins the tie with a row written at `t*`; or at `t* − 1` for an entry that would beat the
///   current score in a same-timestamp tie (a write still in flight at exactly `t*` must survive; such
///   an entry was written before `t*`, so `t* − 1` still removes it). A deleted key owns no row: every
///   entry goes at the delete's `t*`, which wins a tie with an event at the same time.
/// - The writer's own row goes too, by the same rule, when it is not the current one, even if `ranked`
///   no longer lists it: another writer's overwrite may have erased its entry before this read.
/// - If anything in `ranked` was stale, `ranked` is overwritten at `t*` with the current entry: the
///   overwrite's collection tombstone (at `t* − 1`) removes every older entry at once, seen or not, and
///   leaves one dead marker per row instead of one dead cell per removed entry.
fn cleanup(bucket: i32, own: Option<i64>, current: &Current) -> Cleanup {
    let at = |s: i64| match current.score {
        Some(score) if tie_rank(s) > tie_rank(score) => current.written_at - 1,
        _ => current.written_at,
    };
    let mut deletes: Vec<((i32, i64), i64)> = current
        .ranked
        .iter()
        .filter(|&&(b, s)| current.score != Some(s) || b != bucket)
        .map(|&(b, s)| ((b, s), at(s)))
        .collect();
    let overwrite = (!deletes.is_empty()).then(|| {
        let entry = current.score.map(|s| (bucket, s));
        (current.written_at, entry.into_iter().collect())
    });
    if let Some(own) = own.filter(|&s| current.score != Some(s)) {
        if !deletes.iter().any(|&(entry, _)| entry == (bucket, own)) {
            deletes.push(((bucket, own), at(own)));
        }
    }
    Cleanup { deletes, overwrite }
}

/// Each statement's share of a batch's size as Cassandra counts it against
/// `batch_size_warn_threshold` (the mutations' data size: cells, clustering, timestamps; the partition
/// key is not counted). Calibrated against the sizes a Cassandra 5.0 server reported for batches of
/// 50 statements, and for history-only batches in the benchmark (docs/performance.md, "Cost model").
mod bytes {
    use crate::score::ScoreUpdate;

    pub fn profile(u: &ScoreUpdate) -> usize {
        178 + u.leaderboard_id.len() + u.wallet_address.len()
    }
    pub fn leaderboard(u: &ScoreUpdate) -> usize {
        120 + u.wallet_address.len()
    }
    pub fn history(e: &ScoreUpdate) -> usize {
        145 + e.event_id.len() + e.leaderboard_id.len() + e.wallet_address.len()
    }
    pub fn delete(_: &ScoreUpdate) -> usize {
        60
    }
    pub fn overwrite(u: &ScoreUpdate) -> usize {
        90 + u.leaderboard_id.len()
    }
    pub fn invalidate(_wallet: &str) -> usize {
        30
    }
}

impl Store for ScyllaStore {
    type Error = StoreError;

    async fn write(
        &self,
        latest: &[ScoreUpdate],
        events: &[ScoreUpdate],
    ) -> Result<(), StoreError> {
        let cluster = self.session.get_cluster_state();
        let st = &self.statements;
        let bucket = |u: &ScoreUpdate| bucket_of(u.profile_id, self.buckets);
        let updated_at = |u: &ScoreUpdate| CqlTimestamp(u.occurred_at_micros.div_euclid(1000));

        let mut profiles = Phase::new(cluster.clone());
        for u in latest {
            let values = (
                u.occurred_at_micros,
                vec![(bucket(u), u.score)],
                u.score,
                u.wallet_address.as_str(),
                updated_at(u),
                u.profile_id,
                u.leaderboard_id.as_str(),
            );
            profiles.push(&st.upsert_profile, values, bytes::profile(u));
        }
        self.run(WRITE_PROFILES, profiles).await?;

        let mut rows = Phase::new(cluster.clone());
        for u in latest {
            let values = (
                u.leaderboard_id.as_str(),
                bucket(u),
                u.score,
                u.profile_id,
                u.wallet_address.as_str(),
                updated_at(u),
                u.occurred_at_micros,
            );
            rows.push(&st.insert_leaderboard, values, bytes::leaderboard(u));
        }
        for e in events {
            let values = (
                e.profile_id,
                day_of(e.occurred_at_micros),
                updated_at(e),
                e.event_id.as_str(),
                e.leaderboard_id.as_str(),
                e.score,
                e.wallet_address.as_str(),
            );
            rows.push(&st.insert_history, values, bytes::history(e));
        }
        self.run(WRITE_ROWS, rows).await?;

        self.settle_keys(cluster, latest, true).await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.probe_writes().await
    }
}

impl ScyllaStore {
    /// Phases 3-5 for the keys of `latest` once their rows are written (`wrote_rows`; an operator's
    /// delete writes none): read back what is current, delete every other leaderboard row a key owns
    /// or wrote, invalidate the eligibility cache of each wallet whose event is the newest, and
    /// overwrite `ranked` where it held stale entries.
    ///
    /// A key the read-back does not find at all, though its row was just written at quorum, was
    /// deleted after the write by a statement that left no `updated_at` (plain CQL, at server time;
    /// docs/design.md, "Repairs"): it is deleted as of some time at or after the event's `t`, so the
    /// event is superseded and only its own leaderboard row goes, at `t`. Below quorum the row may just
    /// not have reached the replica read: `not_visible`, retryable.
    async fn settle_keys(
        &self,
        map: Arc<dyn ReplicaMap>,
        latest: &[ScoreUpdate],
        wrote_rows: bool,
    ) -> Result<(), StoreError> {
        let st = &self.statements;
        let found = self.read_back(map.clone(), latest).await?;
        let mut deletes = Phase::new(map.clone());
        let mut overwrites = Phase::new(map);
        let mut wallets = HashSet::new();
        for u in latest {
            let lb = u.leaderboard_id.as_str();
            let deleted;
            let current = match found.get(&(u.profile_id, u.leaderboard_id.clone())) {
                Some(current) => current,
                None if self.missing_is_deleted => {
                    tracing::warn!(
                        profile = %u.profile_id,
                        leaderboard = lb,
                        event_id = %u.event_id,
                        "key deleted after this event by a delete that left no updated_at (plain CQL?): event superseded, its own leaderboard row removed"
                    );
                    deleted = Current {
                        score: None,
                        written_at: u.occurred_at_micros,
                        ranked: Vec::new(),
                    };
                    &deleted
                }
                None => {
                    return Err(StoreError::not_visible(
                        REQUESTS[READ_BACK],
                        u.profile_id,
                        lb,
                    ))
                }
            };
            let own = wrote_rows.then_some(u.score);
            let plan = cleanup(bucket_of(u.profile_id, self.buckets), own, current);
            for ((b, s), at) in plan.deletes {
                let values = (at, lb, b, s, u.profile_id);
                deletes.push(&st.delete_row, values, bytes::delete(u));
            }
            if let Some((at, entries)) = plan.overwrite {
                let size = bytes::overwrite(u);
                overwrites.push(&st.overwrite_ranked, (at, entries, u.profile_id, lb), size);
            }
            if current.score == Some(u.score) && current.written_at == u.occurred_at_micros {
                wallets.insert(u.wallet_address.as_str());
            }
        }
        for wallet in wallets {
            deletes.push(&st.invalidate_cache, (wallet,), bytes::invalidate(wallet));
        }
        self.run(CLEANUP, deletes).await?;
        self.run(PRUNE_RANKED, overwrites).await
    }
}

/// A profile's leaderboard bucket: a stable FNV-1a hash of its id, so every replica agrees.
pub fn bucket_of(profile_id: Uuid, buckets: i32) -> i32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in profile_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % buckets.max(1) as u64) as i32
}

/// The UTC day of an event, the history partition.
pub fn day_of(micros: i64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.date_naive())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_in_range() {
        let id = Uuid::from_u128(0x6f1c2b1e_8c3a_4f7e_9a51_0c2d3e4f5a6b);
        assert_eq!(bucket_of(id, 16), bucket_of(id, 16));
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000u128 {
            let b = bucket_of(Uuid::from_u128(i * 7919), 16);
            assert!((0..16).contains(&b));
            seen.insert(b);
        }
        assert_eq!(seen.len(), 16, "all buckets used");
        assert_eq!(bucket_of(id, 1), 0);
    }

    fn current(score: i64, written_at: i64, ranked: &[(i32, i64)]) -> Current {
        Current {
            score: Some(score),
            written_at,
            ranked: ranked.to_vec(),
        }
    }

    fn deletes(plan: &Cleanup) -> Vec<((i32, i64), i64)> {
        plan.deletes.clone()
    }

    #[test]
    fn cleanup_spares_the_current_row_and_respects_ties() {
        // Nothing else owned, and the writer's row is the current one: nothing to do.
        let plan = cleanup(3, Some(10), &current(10, 100, &[(3, 10)]));
        assert_eq!(
            plan,
            Cleanup {
                deletes: vec![],
                overwrite: None
            }
        );
        // An older score and the same score in another bucket go at t*; `ranked` is overwritten at t*
        // with the current entry alone.
        let c = current(10, 100, &[(3, 10), (3, 5), (7, 10)]);
        let plan = cleanup(3, Some(10), &c);
        assert_eq!(deletes(&plan), vec![((3, 5), 100), ((7, 10), 100)]);
        assert_eq!(plan.overwrite, Some((100, vec![(3, 10)])));
        // A score that beats the current one in a same-time tie (a larger u64: 11, or a negative
        // score) goes at t* - 1, so a write in flight at exactly t* survives.
        let c = current(10, 100, &[(3, 11), (3, -1), (3, 9)]);
        assert_eq!(
            deletes(&cleanup(3, Some(10), &c)),
            vec![((3, 11), 99), ((3, -1), 99), ((3, 9), 100)]
        );
        // A deleted key: everything goes, at the delete's time, and `ranked` is emptied.
        let deleted = Current {
            score: None,
            written_at: 100,
            ranked: vec![(3, 10), (3, -1)],
        };
        let plan = cleanup(3, None, &deleted);
        assert_eq!(deletes(&plan), vec![((3, 10), 100), ((3, -1), 100)]);
        assert_eq!(plan.overwrite, Some((100, vec![])));
    }

    #[test]
    fn a_superseded_writer_deletes_its_own_row_even_when_ranked_lost_it() {
        // Another writer's overwrite erased this writer's entry (7) before its read-back: the row it
        // wrote goes all the same, and `ranked` holds nothing stale, so it is not rewritten.
        let plan = cleanup(3, Some(7), &current(10, 100, &[(3, 10)]));
        assert_eq!(
            plan,
            Cleanup {
                deletes: vec![((3, 7), 100)],
                overwrite: None
            }
        );
        // Listed and superseded: deleted once.
        let plan = cleanup(3, Some(7), &current(10, 100, &[(3, 10), (3, 7)]));
        assert_eq!(deletes(&plan), vec![((3, 7), 100)]);
        // A same-time tie the writer lost, with a score that would have won it had it been written
        // first (-1 ranks above 10): t* - 1, like any entry of that kind.
        let plan = cleanup(3, Some(-1), &current(10, 100, &[(3, 10)]));
        assert_eq!(deletes(&plan), vec![((3, -1), 99)]);
        // The writer's score is current, written by another event (earlier or later): same row, kept.
        let plan = cleanup(3, Some(10), &current(10, 250, &[(3, 10)]));
        assert!(plan.deletes.is_empty());
        // Deleted at t* after this writer's event: its row goes at t*.
        let deleted = Current {
            score: None,
            written_at: 100,
            ranked: vec![],
        };
        let plan = cleanup(3, Some(4), &deleted);
        assert_eq!(
            plan,
            Cleanup {
                deletes: vec![((3, 4), 100)],
                overwrite: None
            }
        );
    }

    #[test]
    fn day_is_utc() {
        // 2026-05-28T23:30:00-02:00 is 2026-05-29 in UTC.
        let t = chrono::DateTime::parse_from_rfc3339("2026-05-28T23:30:00-02:00").unwrap();
        assert_eq!(day_of(t.timestamp_micros()).to_string(), "2026-05-29");
    }
}
