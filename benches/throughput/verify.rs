//! What a writer left behind in its keyspace, read back after the drain: the leaderboard (`scores`)
//! against the by-profile rows (`scores_by_profile`), and both against the newest event per key.
//! Both tables are read in pieces sized so that no page meets enough tombstones to fail ([`check`]).

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use crate::workload::SCORES;

type Key = (String, Uuid);

/// Counts of what is wrong; all zero for a correct writer.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Check {
    /// Leaderboard rows whose score differs from the key's by-profile score, plus every second row of
    /// one key.
    pub stale_rows: u64,
    /// Keys with a by-profile row and no leaderboard row.
    pub missing_rows: u64,
    /// Keys whose by-profile score is not the newest event's (or that have no by-profile row).
    pub wrong_by_profile: u64,
    pub leaderboard_rows: u64,
}

impl Check {
    pub fn clean(&self) -> bool {
        self.stale_rows == 0 && self.missing_rows == 0 && self.wrong_by_profile == 0
    }
}

async fn scan<T>(session: &Session, cql: String) -> Vec<T>
where
    T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    session
        .query_iter(cql.clone(), ())
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"))
        .rows_stream::<T>()
        .unwrap_or_else(|e| panic!("{cql}: {e}"))
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"))
}

/// Tombstones one page may meet by construction: a tenth of Cassandra's `tombstone_failure_threshold`
/// (100,000 per read; a driver page is one read). Cassandra does not cut a page short at tombstones
/// (ScyllaDB does), so each read below is shaped so that no page can meet more.
const TOMBSTONE_BUDGET: usize = 10_000;
/// Rows per driver page at most.
const PAGE_ROWS: usize = 500;
/// Reads in flight.
const CONCURRENCY: usize = 16;
/// How often a failed read is split before the verifier gives up (a range 256 times narrower).
const MAX_SPLITS: u32 = 8;
/// Token ranges `scores_by_profile` is read in (each paged; more only means more in parallel).
const TOKEN_RANGES: i128 = 32;

/// What the reads must be sized for: the messages the writer was given and the most of them on one
/// key.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub messages: usize,
    pub max_changes_per_key: usize,
    pub buckets: i32,
}

/// `n` inclusive ranges covering `lo..=hi`, the first and last open to `i64::MIN` and `i64::MAX`.
fn ranges(lo: i64, hi: i64, n: i128) -> Vec<(i64, i64)> {
    let (lo, hi) = (i128::from(lo), i128::from(hi));
    let at = |k: i128| (lo + (hi - lo + 1) * k / n) as i64;
    (0..n)
        .map(|k| {
            let start = if k == 0 { i64::MIN } else { at(k) };
            let end = if k == n - 1 { i64::MAX } else { at(k + 1) - 1 };
            (start, end)
        })
        .collect()
}

/// Every row `statement` returns over `parts`: a part's values are `bind(part, lo, hi)` for an
/// inclusive range of its last restricted column (a score, or a token). Each read is driver-paged at
/// `page` rows. A read that fails anyway (a workload the bound of [`check`] does not hold for) is
/// read again in two halves, at most [`MAX_SPLITS`] times over.
async fn read_ranges<K, V, T>(
    session: &Session,
    statement: &PreparedStatement,
    page: usize,
    parts: Vec<(K, i64, i64)>,
    bind: impl Fn(&K, i64, i64) -> V,
) -> Vec<T>
where
    K: Clone,
    V: scylla::serialize::row::SerializeRow,
    T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    let mut statement = statement.clone();
    statement.set_page_size(page.clamp(1, PAGE_ROWS) as i32);
    let statement = &statement;
    let bind = &bind;
    let mut rows = Vec::new();
    let mut todo: Vec<(K, i64, i64, u32)> = parts
        .into_iter()
        .map(|(k, lo, hi)| (k, lo, hi, 0))
        .collect();
    while !todo.is_empty() {
        let results: Vec<_> = futures::stream::iter(std::mem::take(&mut todo))
            .map(|(part, lo, hi, splits)| async move {
                let read = async {
                    session
                        .execute_iter(statement.clone(), bind(&part, lo, hi))
                        .await
                        .map_err(|e| e.to_string())?
                        .rows_stream::<T>()
                        .unwrap_or_else(|e| panic!("{}: {e}", statement.get_statement()))
                        .try_collect::<Vec<T>>()
                        .await
                        .map_err(|e| e.to_string())
                };
                let result = read.await;
                (part, lo, hi, splits, result)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (part, lo, hi, splits, result) in results {
            match result {
                Ok(r) => rows.extend(r),
                Err(e) if lo < hi && splits < MAX_SPLITS => {
                    eprintln!(
                        "bench: verify: {} over {lo}..={hi} failed, read again in two halves: {e}",
                        statement.get_statement()
                    );
                    let mid = ((i128::from(lo) + i128::from(hi)).div_euclid(2)) as i64;
                    todo.push((part.clone(), lo, mid, splits + 1));
                    todo.push((part, mid + 1, hi, splits + 1));
                }
                Err(e) => panic!("{} over {lo}..={hi}: {e}", statement.get_statement()),
            }
        }
    }
    rows
}

/// Compares the keyspace `ks` with `expected` (newest score per key, from the events published).
///
/// Neither table is read whole (a churned `scores` has one row tombstone per score change, and a
/// read that meets 100,000 fails with READ_TOO_MANY_TOMBSTONES), so that no page can meet more than
/// [`TOMBSTONE_BUDGET`] dead cells:
/// - `scores` per (leaderboard, bucket) partition and slice of the score range: a page meets at most
///   the row tombstones in its slice of one partition, i.e. the changes whose superseded score fell in
///   that slice. Scores are uniform over `0..SCORES`, so with `messages / TOMBSTONE_BUDGET` slices a
///   slice gets about `TOMBSTONE_BUDGET` of them even if every change hit one partition.
/// - `scores_by_profile` by token ranges at `TOMBSTONE_BUDGET / max_changes_per_key` rows per page
///   (at most [`PAGE_ROWS`]): its rows are never deleted, and one row carries at most one dead cell per
///   change of its key (an element removed from `ranked`, as builds before 57eb178 do; an overwrite
///   of `ranked` leaves one), so a page meets at most rows × changes per key.
pub async fn check(
    session: &Session,
    ks: &str,
    expected: &HashMap<Key, i64>,
    sizes: Sizes,
) -> Check {
    let mut boards: Vec<&String> = expected.keys().map(|(lb, _)| lb).collect();
    boards.sort();
    boards.dedup();
    let slices = sizes.messages.div_ceil(TOMBSTONE_BUDGET).max(1) as i128;
    let parts: Vec<((String, i32), i64, i64)> = boards
        .iter()
        .flat_map(|lb| (0..sizes.buckets).map(move |b| ((*lb).clone(), b)))
        .flat_map(|part| {
            ranges(0, SCORES - 1, slices)
                .into_iter()
                .map(move |(lo, hi)| (part.clone(), lo, hi))
        })
        .collect();
    let prepare = |cql: String| async move {
        session
            .prepare(cql.clone())
            .await
            .unwrap_or_else(|e| panic!("{cql}: {e}"))
    };
    let board: Vec<(String, Uuid, i64)> = read_ranges(
        session,
        &prepare(format!(
            "SELECT leaderboard_id, profile_id, score FROM {ks}.scores \
             WHERE leaderboard_id = ? AND bucket = ? AND score >= ? AND score <= ?"
        ))
        .await,
        PAGE_ROWS,
        parts,
        |(lb, bucket), lo, hi| (lb.clone(), *bucket, lo, hi),
    )
    .await;
    let tokens = ranges(i64::MIN, i64::MAX, TOKEN_RANGES)
        .into_iter()
        .map(|(lo, hi)| ((), lo, hi))
        .collect();
    let by_profile: HashMap<Key, Option<i64>> = read_ranges::<_, _, (String, Uuid, Option<i64>)>(
        session,
        &prepare(format!(
            "SELECT leaderboard_id, profile_id, score FROM {ks}.scores_by_profile \
             WHERE token(profile_id) >= ? AND token(profile_id) <= ?"
        ))
        .await,
        TOMBSTONE_BUDGET / sizes.max_changes_per_key.max(1),
        tokens,
        |(), lo, hi| (lo, hi),
    )
    .await
    .into_iter()
    .map(|(lb, p, s)| ((lb, p), s))
    .collect();

    let mut rows: HashMap<Key, Vec<i64>> = HashMap::new();
    for (lb, p, s) in board {
        rows.entry((lb, p)).or_default().push(s);
    }
    let mut c = Check {
        leaderboard_rows: rows.values().map(|v| v.len() as u64).sum(),
        ..Check::default()
    };
    for (key, scores) in &rows {
        let current = by_profile.get(key).copied().flatten();
        let one_right = current.is_some_and(|s| scores.contains(&s));
        c.stale_rows += scores.len() as u64 - u64::from(one_right);
    }
    for (key, score) in &by_profile {
        if score.is_some() && !rows.contains_key(key) {
            c.missing_rows += 1;
        }
    }
    for (key, score) in expected {
        if by_profile.get(key).copied().flatten() != Some(*score) {
            c.wrong_by_profile += 1;
        }
    }
    c
}

/// Drops a keyspace the bench made.
pub async fn drop_keyspace(session: &Session, ks: &str) {
    assert!(ks.starts_with("bench_"), "only the bench's own keyspaces");
    // A schema change waits for agreement: longer than the session's default request timeout.
    let mut drop = scylla::statement::Statement::new(format!("DROP KEYSPACE IF EXISTS {ks}"));
    drop.set_request_timeout(Some(std::time::Duration::from_secs(60)));
    if let Err(e) = session.query_unpaged(drop, ()).await {
        eprintln!("bench: could not drop keyspace {ks}: {e}");
    }
}

/// Every keyspace a bench run made and did not drop (an interrupted run's).
pub async fn leftover_keyspaces(session: &Session) -> Vec<String> {
    scan::<(String,)>(
        session,
        "SELECT keyspace_name FROM system_schema.keyspaces".into(),
    )
    .await
    .into_iter()
    .map(|(ks,)| ks)
    .filter(|ks| ks.starts_with("bench_"))
    .collect()
}
