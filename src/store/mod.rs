//! The database side: session, prepared statements, and the write protocol that keeps the leaderboard
//! invariant (each (leaderboard, profile) exactly once, at its newest score) without locks, across any
//! number of replicas. The argument for why it holds is in `docs/design.md`; in short, per key:
//!
//! 1. `add_ranked`: add `(bucket, score)` to the key's `ranked` set at the event time `t`;
//! 2. `insert_leaderboard`: insert the leaderboard row at `t`;
//! 3. `update_profile`: set score, wallet and `updated_at` at `t` (older events lose to newer cells);
//! 4. `read_profile`: read back the current score `s*`, its write time `t*` and `ranked`;
//! 5. `delete_stale`: delete every other `ranked` row from the leaderboard, and from the set, at `t*`;
//! 6. `invalidate_cache`: if this event is the newest, drop the wallet's eligibility cache entries.
//!
//! Every write carries `USING TIMESTAMP` (event time or `t*`), so all of it is idempotent and safe to
//! retry or redeliver.

pub mod error;
mod session;

use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use prometheus::Histogram;
use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use uuid::Uuid;

pub use error::{Kind, StoreError};
pub use session::{connect, ConnectError, TlsError};

use crate::config::ScyllaConfig;
use crate::metrics::Metrics;
use crate::pipeline::Store;
use crate::score::{tie_rank, ScoreUpdate};

/// A prepared statement with its name (metric label) and its latency histogram.
struct Stmt {
    name: &'static str,
    prepared: PreparedStatement,
    latency: Histogram,
}

/// The real store.
pub struct ScyllaStore {
    session: Arc<Session>,
    metrics: Arc<Metrics>,
    buckets: i32,
    concurrency: usize,
    add_ranked: Stmt,
    insert_leaderboard: Stmt,
    update_profile: Stmt,
    read_profile: Stmt,
    delete_row: Stmt,
    prune_ranked: Stmt,
    insert_history: Stmt,
    invalidate_cache: Stmt,
}

impl ScyllaStore {
    /// Prepares every statement against `config.keyspace`.
    pub async fn new(
        session: Arc<Session>,
        config: &ScyllaConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConnectError> {
        let ks = &config.keyspace;
        let prepare = |name: &'static str, cql: String| {
            let session = session.clone();
            let metrics = metrics.clone();
            async move {
                let mut prepared = session
                    .prepare(cql)
                    .await
                    .map_err(|e| ConnectError::Prepare(StoreError::new(name, e.into())))?;
                prepared.set_is_idempotent(true);
                Ok::<_, ConnectError>(Stmt {
                    name,
                    prepared,
                    latency: metrics.scylla_query_duration.with_label_values(&[name]),
                })
            }
        };
        Ok(Self {
            add_ranked: prepare(
                "add_ranked",
                format!("UPDATE {ks}.scores_by_profile USING TIMESTAMP ? SET ranked = ranked + ? WHERE profile_id = ? AND leaderboard_id = ?"),
            )
            .await?,
            insert_leaderboard: prepare(
                "insert_leaderboard",
                format!("INSERT INTO {ks}.scores (leaderboard_id, bucket, score, profile_id, wallet_address, updated_at) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"),
            )
            .await?,
            update_profile: prepare(
                "update_profile",
                format!("UPDATE {ks}.scores_by_profile USING TIMESTAMP ? SET score = ?, wallet_address = ?, updated_at = ? WHERE profile_id = ? AND leaderboard_id = ?"),
            )
            .await?,
            read_profile: prepare(
                "read_profile",
                format!("SELECT score, WRITETIME(score), ranked FROM {ks}.scores_by_profile WHERE profile_id = ? AND leaderboard_id = ?"),
            )
            .await?,
            delete_row: prepare(
                "delete_stale",
                format!("DELETE FROM {ks}.scores USING TIMESTAMP ? WHERE leaderboard_id = ? AND bucket = ? AND score = ? AND profile_id = ?"),
            )
            .await?,
            prune_ranked: prepare(
                "delete_stale",
                format!("UPDATE {ks}.scores_by_profile USING TIMESTAMP ? SET ranked = ranked - ? WHERE profile_id = ? AND leaderboard_id = ?"),
            )
            .await?,
            insert_history: prepare(
                "insert_history",
                format!("INSERT INTO {ks}.score_history (profile_id, day, occurred_at, event_id, leaderboard_id, score, wallet_address) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"),
            )
            .await?,
            invalidate_cache: prepare(
                "invalidate_cache",
                format!("DELETE FROM {ks}.eligibility_cache WHERE wallet_address = ?"),
            )
            .await?,
            session,
            metrics,
            buckets: config.leaderboard_buckets,
            concurrency: config.write_concurrency,
        })
    }

    async fn exec(
        &self,
        stmt: &Stmt,
        values: impl SerializeRow,
    ) -> Result<QueryResult, StoreError> {
        let start = Instant::now();
        let result = self.session.execute_unpaged(&stmt.prepared, values).await;
        stmt.latency.observe(start.elapsed().as_secs_f64());
        result.map_err(|e| {
            let e = StoreError::new(stmt.name, e);
            self.metrics
                .scylla_errors
                .with_label_values(&[e.kind.as_str()])
                .inc();
            if e.kind == Kind::Connection {
                self.metrics.scylla_connection_failures.inc();
            }
            e
        })
    }

    /// Steps 1–6 of the module doc for one key.
    async fn apply_latest(&self, u: &ScoreUpdate) -> Result<(), StoreError> {
        let bucket = bucket_of(u.profile_id, self.buckets);
        let t = u.occurred_at_micros;
        let updated_at = CqlTimestamp(t.div_euclid(1000));
        let (lb, pid) = (u.leaderboard_id.as_str(), u.profile_id);

        self.exec(&self.add_ranked, (t, vec![(bucket, u.score)], pid, lb))
            .await?;
        self.exec(
            &self.insert_leaderboard,
            (
                lb,
                bucket,
                u.score,
                pid,
                u.wallet_address.as_str(),
                updated_at,
                t,
            ),
        )
        .await?;
        self.exec(
            &self.update_profile,
            (t, u.score, u.wallet_address.as_str(), updated_at, pid, lb),
        )
        .await?;

        let read = self.exec(&self.read_profile, (pid, lb)).await?;
        let row = read.into_rows_result().ok().and_then(|rows| {
            rows.maybe_first_row::<(Option<i64>, Option<i64>, Option<Vec<(i32, i64)>>)>()
                .ok()
                .flatten()
        });
        let Some((Some(current), Some(written_at), ranked)) = row else {
            // Not visible yet at this consistency (cannot happen with quorum reads after quorum writes);
            // the next write of this key cleans up.
            return Ok(());
        };
        let stale: Vec<(i32, i64)> = ranked
            .unwrap_or_default()
            .into_iter()
            .filter(|entry| *entry != (bucket, current))
            .collect();
        if !stale.is_empty() {
            // A stale entry that would beat `current` in a same-timestamp tie may be a write still in
            // flight at exactly `written_at`: delete it one microsecond earlier so that write survives.
            // Every other stale entry is deleted at `written_at`, where a tombstone wins the tie.
            let delete_at = |score: i64| {
                if tie_rank(score) > tie_rank(current) {
                    written_at - 1
                } else {
                    written_at
                }
            };
            futures::future::try_join_all(
                stale
                    .iter()
                    .map(|&(b, s)| self.exec(&self.delete_row, (delete_at(s), lb, b, s, pid))),
            )
            .await?;
            for entry in stale {
                self.exec(
                    &self.prune_ranked,
                    (delete_at(entry.1), vec![entry], pid, lb),
                )
                .await?;
            }
        }
        if current == u.score && written_at == t {
            self.exec(&self.invalidate_cache, (u.wallet_address.as_str(),))
                .await?;
        }
        Ok(())
    }

    async fn insert_history(&self, e: &ScoreUpdate) -> Result<(), StoreError> {
        let at = CqlTimestamp(e.occurred_at_micros.div_euclid(1000));
        self.exec(
            &self.insert_history,
            (
                e.profile_id,
                day_of(e.occurred_at_micros),
                at,
                e.event_id.as_str(),
                e.leaderboard_id.as_str(),
                e.score,
                e.wallet_address.as_str(),
                e.occurred_at_micros,
            ),
        )
        .await
        .map(drop)
    }
}

impl Store for ScyllaStore {
    type Error = StoreError;

    async fn write(
        &self,
        latest: &[ScoreUpdate],
        events: &[ScoreUpdate],
    ) -> Result<(), StoreError> {
        // Boxed rather than mapped through a closure: a closure over borrowed updates makes the
        // future's `Send` bound unprovable for the compiler (higher-ranked lifetimes).
        let mut jobs: Vec<futures::future::BoxFuture<'_, Result<(), StoreError>>> =
            Vec::with_capacity(latest.len() + events.len());
        jobs.extend(latest.iter().map(|u| Box::pin(self.apply_latest(u)) as _));
        jobs.extend(events.iter().map(|e| Box::pin(self.insert_history(e)) as _));
        futures::stream::iter(jobs)
            .buffer_unordered(self.concurrency)
            .try_collect::<()>()
            .await
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

    #[test]
    fn day_is_utc() {
        // 2026-05-28T23:30:00-02:00 is 2026-05-29 in UTC.
        let t = chrono::DateTime::parse_from_rfc3339("2026-05-28T23:30:00-02:00").unwrap();
        assert_eq!(day_of(t.timestamp_micros()).to_string(), "2026-05-29");
    }
}
