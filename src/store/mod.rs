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

mod bytes;
mod cleanup;
pub mod error;
mod may_write;
mod partition;
mod phase;
mod probe;
mod read_back;
pub mod rebuild;
pub mod repair;
mod session;
mod statements;

use std::collections::{HashMap, HashSet};
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
pub use partition::{bucket_of, day_of};
pub use session::{connect, consistency, datacenters, ConnectError, TlsError};

use crate::config::{ReadBack, ScyllaConfig};
use crate::metrics::{Metrics, PROBE, REQUESTS};
use crate::pipeline::Store;
use crate::score::ScoreUpdate;
use cleanup::{cleanup, Current, Own};
use may_write::check_may_write;
use phase::{Phase, Placement, Placer, Request};
use statements::Statements;

// Indexes into `REQUESTS`, the request kinds in the order a flush sends them.
const WRITE_PROFILES: usize = 0;
const WRITE_ROWS: usize = 1;
const READ_BACK: usize = 2;
const CLEANUP: usize = 3;
const PRUNE_RANKED: usize = 4;

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
        check_may_write(&session, config).await?;
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

    /// Counts a failed request by its statement and kind (the write probe's statements as one,
    /// `probe`).
    fn failed(&self, e: StoreError) -> StoreError {
        let statement = match REQUESTS.contains(&e.statement) {
            true => e.statement,
            false => PROBE,
        };
        self.metrics
            .scylla_errors
            .with_label_values(&[statement, e.kind.as_str()])
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
}

/// Rows of `statement` that do not decode.
pub(crate) fn decode_as<E: std::error::Error + Send + Sync + 'static>(
    statement: &'static str,
) -> impl Fn(E) -> StoreError {
    move |e| StoreError::decode(statement, e)
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
    /// A key the read-back does not find is handled by [`ScyllaStore::current_of`].
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
            let current = self.current_of(&found, u).ok_or_else(|| {
                self.failed(StoreError::not_visible(
                    REQUESTS[READ_BACK],
                    u.profile_id,
                    lb,
                ))
            })?;
            let current = current.as_ref();
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

    /// What the read-back found for `u`'s key. A key it does not find at all, though its row was just
    /// written at quorum, was deleted after the write by a statement that left no `updated_at`
    /// (plain CQL, at server time; docs/design.md, "Repairs"): it is deleted as of some time at or
    /// after the event's `t`, so the event is superseded and only its own leaderboard row goes, at
    /// `t`. Below quorum the row may just not have reached the replica read: `None` (`not_visible`).
    fn current_of<'f>(
        &self,
        found: &'f HashMap<read_back::Key, Current>,
        u: &ScoreUpdate,
    ) -> Option<std::borrow::Cow<'f, Current>> {
        let lb = u.leaderboard_id.as_str();
        if let Some(current) = found.get(&(u.profile_id, u.leaderboard_id.clone())) {
            return Some(std::borrow::Cow::Borrowed(current));
        }
        if !self.missing_is_deleted {
            return None;
        }
        tracing::warn!(
            profile = %u.profile_id,
            leaderboard = lb,
            event_id = %u.event_id,
            "key deleted after this event by a delete that left no updated_at (plain CQL?): event superseded, its own leaderboard row removed"
        );
        Some(std::borrow::Cow::Owned(Current {
            score: None,
            written_at: u.occurred_at_micros,
            ranked: Vec::new(),
        }))
    }
}
