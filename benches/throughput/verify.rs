//! What a writer left behind in its keyspace, read back after the drain: the leaderboard (`scores`)
//! against the by-profile rows (`scores_by_profile`), and both against the newest event per key.

use std::collections::HashMap;

use futures::TryStreamExt;
use scylla::client::session::Session;
use uuid::Uuid;

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

/// Compares the keyspace `ks` with `expected` (newest score per key, from the events published).
pub async fn check(session: &Session, ks: &str, expected: &HashMap<Key, i64>) -> Check {
    let board: Vec<(String, Uuid, i64)> = scan(
        session,
        format!("SELECT leaderboard_id, profile_id, score FROM {ks}.scores"),
    )
    .await;
    let by_profile: HashMap<Key, Option<i64>> = scan::<(String, Uuid, Option<i64>)>(
        session,
        format!("SELECT leaderboard_id, profile_id, score FROM {ks}.scores_by_profile"),
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
