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
//!    multi-partition reads of exactly the flush's rows (or one read per key,
//!    `scylla.read_back = "per_key"`);
//! 4. `cleanup`: delete every `ranked` row other than `(bucket, s*)` from the leaderboard at `t*`, and the
//!    writer's own row if it is superseded; invalidate the eligibility cache of each wallet whose event
//!    is the newest, once per wallet;
//! 5. `prune_ranked`: the writer of the current score overwrites `ranked` with the current entry, only
//!    once the rows it drops are gone (one collection tombstone instead of a dead cell per entry).
//!
//! Every write carries `USING TIMESTAMP` (event time or `t*`) or is a delete that is safe to repeat,
//! so all of it is idempotent and safe to retry or redeliver. When a flush fails, the `probe` module tells
//! whether the database takes this worker's writes at all; [`error`] classifies every failure.

pub mod error;
mod phase;
mod probe;
pub mod rebuild;
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
pub use session::{connect, consistency, datacenters, ConnectError, TlsError};

use crate::config::{ReadBack, ScyllaConfig};
use crate::metrics::{Metrics, REQUESTS};
use crate::pipeline::Store;
use crate::score::{tie_rank, ScoreUpdate};
use phase::{Phase, Placement, Placer, Request};
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
    keyspace: String,
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
    /// Prepares every statement against `config.keyspace`, after checking that this writer may write
    /// it (schema window, bucket count, consistency on the keyspace's datacenters).
    pub async fn new(
        session: Arc<Session>,
        config: &ScyllaConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConnectError> {
        let statements = Statements::prepare(&session, &config.keyspace).await?;
        // Every writer (the worker, repairs, rebuild-scores) refuses a keyspace it may not write.
        let schema = |e| ConnectError::Schema(Box::new(e));
        crate::schema::check_writer(&session, config)
            .await
            .map_err(schema)?;
        crate::schema::replication::check(&session, config)
            .await
            .map_err(schema)?;
        let latency = REQUESTS.map(|r| metrics.scylla_query_duration.with_label_values(&[r]));
        Ok(Self {
            session,
            metrics,
            keyspace: config.keyspace.clone(),
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
        latest: &[ScoreUpdate],
        placed: &[Placed],
    ) -> Result<HashMap<Key, Current>, StoreError> {
        let mut found = HashMap::with_capacity(latest.len());
        let reads: Vec<BoxFuture<'_, Result<Found, StoreError>>> = match self.read_back {
            ReadBack::Grouped => read_plan(latest, placed)
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

/// The grouped read-back's requests, `(profiles, leaderboards)`: per place where profile partitions
/// live, at most [`READ_BACK_PARTITIONS`] profiles and the leaderboards their keys in the flush name, so
/// a read never touches a leaderboard outside the flush (a profile may have rows on many). The pairs of
/// the product that are not keys of the flush cost the server a clustering look-up in a partition it
/// reads anyway; one request per distinct set of leaderboards instead would cost requests (measured in
/// docs/performance.md, "Read-back": 0.269 against 0.218 requests per event in the default workload, the
/// same database CPU).
fn read_plan<'a>(
    latest: &'a [ScoreUpdate],
    placed: &'a [Placed],
) -> Vec<(Vec<Uuid>, Vec<&'a str>)> {
    let mut by_placement: HashMap<&Placement, BTreeMap<Uuid, BTreeSet<&'a str>>> = HashMap::new();
    for (u, at) in latest.iter().zip(placed) {
        by_placement
            .entry(&at.profile)
            .or_default()
            .entry(u.profile_id)
            .or_default()
            .insert(u.leaderboard_id.as_str());
    }
    let mut requests = Vec::new();
    for profiles in by_placement.into_values() {
        let profiles: Vec<(Uuid, BTreeSet<&'a str>)> = profiles.into_iter().collect();
        for chunk in profiles.chunks(READ_BACK_PARTITIONS) {
            let boards: BTreeSet<&str> =
                chunk.iter().flat_map(|(_, b)| b.iter().copied()).collect();
            let ids = chunk.iter().map(|(p, _)| *p).collect();
            requests.push((ids, boards.into_iter().collect()));
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
    /// key). `None` unless this writer's own write is the current one and `ranked` held something stale.
    overwrite: Option<(i64, Vec<(i32, i64)>)>,
}

/// The write a clean-up follows: an event's, which wrote the leaderboard row `(bucket, score)` at
/// `at`, or an operator's delete at `at` (`score: None`), which wrote no row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Own {
    score: Option<i64>,
    at: i64,
}

/// The clean-up of a key whose read-back found `current`, after the write `own`.
///
/// - Every `ranked` entry other than the current row is deleted from the leaderboard at `t*`, where a
///   tombstone wins the tie with a row written at `t*`; or at `t* − 1` for an entry that would beat the
///   current score in a same-timestamp tie (a write still in flight at exactly `t*` must survive; such
///   an entry was written before `t*`, so `t* − 1` still removes it). A deleted key owns no row: every
///   entry goes at the delete's `t*`, which wins a tie with an event at the same time.
/// - The writer's own row goes too, by the same rule, when it is not the current one, even if `ranked`
///   no longer lists it: an overwrite may have erased its entry before this read. So do the rows of
///   `earlier` scores: updates of the key superseded in this flush whose messages were delivered
///   before, whose earlier delivery may have written a row and then stopped before its clean-up.
/// - Only the writer whose own write is current (`s* = s`, `t* = t`: its write completed before this
///   read, which the argument in docs/design.md needs) overwrites `ranked`, and only if it held
///   anything stale: at `t*`, with the current entry. The overwrite's collection tombstone (at
///   `t* − 1`) shadows every older entry at once and leaves no dead cell per removed entry.
fn cleanup(bucket: i32, own: Own, earlier: &[i64], current: &Current) -> Cleanup {
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
    let is_current = current.score == own.score && current.written_at == own.at;
    let overwrite = (is_current && !deletes.is_empty()).then(|| {
        let entry = current.score.map(|s| (bucket, s));
        (current.written_at, entry.into_iter().collect())
    });
    let own_rows = own.score.iter().chain(earlier);
    for &score in own_rows.filter(|&&s| current.score != Some(s)) {
        if !deletes.iter().any(|&(entry, _)| entry == (bucket, score)) {
            deletes.push(((bucket, score), at(score)));
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
        earlier: &[ScoreUpdate],
    ) -> Result<(), StoreError> {
        let st = &self.statements;
        let mut placer = self.placer();
        let placed = self.place(&mut placer, latest);
        let bucket = |u: &ScoreUpdate| bucket_of(u.profile_id, self.buckets);
        let updated_at = |u: &ScoreUpdate| CqlTimestamp(u.occurred_at_micros.div_euclid(1000));

        let mut profiles = Phase::default();
        for (u, at) in latest.iter().zip(&placed) {
            let values = (
                u.occurred_at_micros,
                vec![(bucket(u), u.score)],
                u.score,
                u.wallet_address.as_str(),
                updated_at(u),
                u.profile_id,
                u.leaderboard_id.as_str(),
            );
            profiles.push(&at.profile, &st.upsert_profile, values, bytes::profile(u));
        }
        self.run(WRITE_PROFILES, profiles).await?;

        let mut rows = Phase::default();
        for (u, at) in latest.iter().zip(&placed) {
            let values = (
                u.leaderboard_id.as_str(),
                bucket(u),
                u.score,
                u.profile_id,
                u.wallet_address.as_str(),
                updated_at(u),
                u.occurred_at_micros,
            );
            rows.push(
                &at.board,
                &st.insert_leaderboard,
                values,
                bytes::leaderboard(u),
            );
        }
        let mut history: HashMap<(Uuid, chrono::NaiveDate), Placement> = HashMap::new();
        for e in events {
            let day = day_of(e.occurred_at_micros);
            let at = history
                .entry((e.profile_id, day))
                .or_insert_with(|| placer.place("score_history", &(e.profile_id, day)));
            let values = (
                e.profile_id,
                day,
                updated_at(e),
                e.event_id.as_str(),
                e.leaderboard_id.as_str(),
                e.score,
                e.wallet_address.as_str(),
            );
            rows.push(at, &st.insert_history, values, bytes::history(e));
        }
        self.run(WRITE_ROWS, rows).await?;

        self.settle_keys(&mut placer, latest, &placed, Some(earlier))
            .await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.probe_writes().await
    }
}

/// Where the partitions of one key live: its `scores_by_profile` partition and its leaderboard bucket.
pub(super) struct Placed {
    profile: Placement,
    board: Placement,
}

impl ScyllaStore {
    /// A placer on the driver's current cluster map.
    fn placer(&self) -> Placer {
        Placer::new(self.session.get_cluster_state(), &self.keyspace)
    }

    /// Places each key's partitions once for the whole flush (a profile's partition once for all its
    /// leaderboards).
    fn place(&self, placer: &mut Placer, latest: &[ScoreUpdate]) -> Vec<Placed> {
        let mut profiles: HashMap<Uuid, Placement> = HashMap::new();
        latest
            .iter()
            .map(|u| Placed {
                profile: profiles
                    .entry(u.profile_id)
                    .or_insert_with(|| placer.place("scores_by_profile", &(u.profile_id,)))
                    .clone(),
                board: placer.place(
                    "scores",
                    &(
                        u.leaderboard_id.as_str(),
                        bucket_of(u.profile_id, self.buckets),
                    ),
                ),
            })
            .collect()
    }

    /// Phases 3-5 for the keys of `latest` once their rows are written (`wrote`: with the updates
    /// whose earlier delivery may have written rows too; `None` for an operator's delete, which writes
    /// none): read back what is current, delete every other leaderboard row a key owns or its writers
    /// wrote, invalidate the eligibility cache of each wallet whose event is the newest, and overwrite
    /// `ranked` where it held stale entries.
    ///
    /// A key the read-back does not find at all, though its row was just written at quorum, was
    /// deleted after the write by a statement that left no `updated_at` (plain CQL, at server time;
    /// docs/design.md, "Repairs"): it is deleted as of some time at or after the event's `t`, so the
    /// event is superseded and only its own leaderboard row goes, at `t`. Below quorum the row may just
    /// not have reached the replica read: `not_visible`, retryable.
    async fn settle_keys(
        &self,
        placer: &mut Placer,
        latest: &[ScoreUpdate],
        placed: &[Placed],
        wrote: Option<&[ScoreUpdate]>,
    ) -> Result<(), StoreError> {
        let st = &self.statements;
        let found = self.read_back(latest, placed).await?;
        let mut deletes = Phase::default();
        let mut overwrites = Phase::default();
        let mut wallets = HashSet::new();
        for (u, at) in latest.iter().zip(placed) {
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
            let own = Own {
                score: wrote.is_some().then_some(u.score),
                at: u.occurred_at_micros,
            };
            let earlier: Vec<i64> = wrote
                .unwrap_or_default()
                .iter()
                .filter(|e| e.key() == u.key())
                .map(|e| e.score)
                .collect();
            let plan = cleanup(
                bucket_of(u.profile_id, self.buckets),
                own,
                &earlier,
                current,
            );
            for ((b, s), t) in plan.deletes {
                let values = (t, lb, b, s, u.profile_id);
                deletes.push(&at.board, &st.delete_row, values, bytes::delete(u));
            }
            if let Some((t, entries)) = plan.overwrite {
                let values = (t, entries, u.profile_id, lb);
                overwrites.push(
                    &at.profile,
                    &st.overwrite_ranked,
                    values,
                    bytes::overwrite(u),
                );
            }
            if current.score == Some(u.score) && current.written_at == u.occurred_at_micros {
                wallets.insert(u.wallet_address.as_str());
            }
        }
        for wallet in wallets {
            let at = placer.place("eligibility_cache", &(wallet,));
            deletes.push(
                &at,
                &st.invalidate_cache,
                (wallet,),
                bytes::invalidate(wallet),
            );
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

    fn event(score: i64, at: i64) -> Own {
        Own {
            score: Some(score),
            at,
        }
    }

    #[test]
    fn cleanup_spares_the_current_row_and_respects_ties() {
        // Nothing else owned, and the writer's row is the current one: nothing to do.
        let plan = cleanup(3, event(10, 100), &[], &current(10, 100, &[(3, 10)]));
        assert_eq!(
            plan,
            Cleanup {
                deletes: vec![],
                overwrite: None
            }
        );
        // An older score and the same score in another bucket go at t*; the current writer
        // overwrites `ranked` at t* with the current entry alone.
        let c = current(10, 100, &[(3, 10), (3, 5), (7, 10)]);
        let plan = cleanup(3, event(10, 100), &[], &c);
        assert_eq!(plan.deletes, vec![((3, 5), 100), ((7, 10), 100)]);
        assert_eq!(plan.overwrite, Some((100, vec![(3, 10)])));
        // A score that beats the current one in a same-time tie (a larger u64: 11, or a negative
        // score) goes at t* - 1, so a write in flight at exactly t* survives.
        let c = current(10, 100, &[(3, 11), (3, -1), (3, 9)]);
        assert_eq!(
            cleanup(3, event(10, 100), &[], &c).deletes,
            vec![((3, 11), 99), ((3, -1), 99), ((3, 9), 100)]
        );
        // A deleted key: everything goes, at the delete's time, and the delete empties `ranked`.
        let deleted = Current {
            score: None,
            written_at: 100,
            ranked: vec![(3, 10), (3, -1)],
        };
        let plan = cleanup(
            3,
            Own {
                score: None,
                at: 100,
            },
            &[],
            &deleted,
        );
        assert_eq!(plan.deletes, vec![((3, 10), 100), ((3, -1), 100)]);
        assert_eq!(plan.overwrite, Some((100, vec![])));
    }

    #[test]
    fn rows_an_earlier_delivery_may_have_written_go_too() {
        // A redelivered update (score 4) was superseded in this flush by the current one (10); its
        // earlier delivery wrote row 4 and crashed, and an overwrite erased its entry: it goes at t*.
        // The current writer still overwrites: `ranked` held a stale entry (5).
        let c = current(10, 100, &[(3, 10), (3, 5)]);
        let plan = cleanup(3, event(10, 100), &[4, 5, 10], &c);
        assert_eq!(plan.deletes, vec![((3, 5), 100), ((3, 4), 100)]);
        assert_eq!(plan.overwrite, Some((100, vec![(3, 10)])));
    }

    #[test]
    fn only_the_current_writer_overwrites_and_a_superseded_one_deletes_its_own_row() {
        // Superseded, and another writer's overwrite erased this writer's entry (7) before its
        // read-back: the row it wrote goes all the same; `ranked` is left to the current writer.
        let plan = cleanup(3, event(7, 90), &[], &current(10, 100, &[(3, 10)]));
        assert_eq!(
            plan,
            Cleanup {
                deletes: vec![((3, 7), 100)],
                overwrite: None
            }
        );
        // Listed and superseded: deleted once, stale entries deleted too, no overwrite.
        let plan = cleanup(
            3,
            event(7, 90),
            &[],
            &current(10, 100, &[(3, 10), (3, 7), (3, 2)]),
        );
        assert_eq!(plan.deletes, vec![((3, 7), 100), ((3, 2), 100)]);
        assert_eq!(plan.overwrite, None);
        // A same-time tie the writer lost, with a score that would rank first had its cell won
        // (-1 ranks above 10): t* - 1, like any entry of that kind.
        let plan = cleanup(3, event(-1, 100), &[], &current(10, 100, &[(3, 10)]));
        assert_eq!(plan.deletes, vec![((3, -1), 99)]);
        // The writer's score is current but written by a later event: same row, kept; not current.
        let plan = cleanup(3, event(10, 50), &[], &current(10, 250, &[(3, 10), (3, 4)]));
        assert_eq!(plan.deletes, vec![((3, 4), 250)]);
        assert_eq!(plan.overwrite, None);
        // Deleted at t* after this writer's event: its row goes at t*.
        let deleted = Current {
            score: None,
            written_at: 100,
            ranked: vec![],
        };
        let plan = cleanup(3, event(4, 90), &[], &deleted);
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
