//! The prepared statements of the write protocol, one per kind of row it touches, all idempotent.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{ConnectError, StoreError};

/// The prepared statements, one per kind of row the protocol touches.
pub(super) struct Statements {
    pub upsert_profile: PreparedStatement,
    pub insert_leaderboard: PreparedStatement,
    pub insert_history: PreparedStatement,
    pub read_profiles: PreparedStatement,
    pub read_profile: PreparedStatement,
    pub delete_row: PreparedStatement,
    pub overwrite_ranked: PreparedStatement,
    pub invalidate_cache: PreparedStatement,
    pub delete_profile: PreparedStatement,
    pub get_profile: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> Result<Self, ConnectError> {
        let prepare = |cql: String| async move {
            let mut prepared = session
                .prepare(cql)
                .await
                .map_err(|e| ConnectError::Prepare(StoreError::new("prepare", e.into())))?;
            prepared.set_is_idempotent(true);
            Ok::<_, ConnectError>(prepared)
        };
        Ok(Self {
            upsert_profile: prepare(format!(
                "UPDATE {ks}.scores_by_profile USING TIMESTAMP ? SET ranked = ranked + ?, score = ?, \
                 wallet_address = ?, updated_at = ? WHERE profile_id = ? AND leaderboard_id = ?"
            ))
            .await?,
            insert_leaderboard: prepare(format!(
                "INSERT INTO {ks}.scores (leaderboard_id, bucket, score, profile_id, wallet_address, \
                 updated_at) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            // No `USING TIMESTAMP`: history rows are idempotent by key, and write time is what the
            // table's time-window compaction buckets by (see docs/design.md).
            insert_history: prepare(format!(
                "INSERT INTO {ks}.score_history (profile_id, day, occurred_at, event_id, \
                 leaderboard_id, score, wallet_address) VALUES (?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            read_profiles: prepare(format!(
                "SELECT profile_id, leaderboard_id, score, WRITETIME(score), WRITETIME(updated_at), \
                 ranked FROM {ks}.scores_by_profile WHERE profile_id IN ? AND leaderboard_id IN ?"
            ))
            .await?,
            read_profile: prepare(format!(
                "SELECT score, WRITETIME(score), WRITETIME(updated_at), ranked \
                 FROM {ks}.scores_by_profile WHERE profile_id = ? AND leaderboard_id = ?"
            ))
            .await?,
            delete_row: prepare(format!(
                "DELETE FROM {ks}.scores USING TIMESTAMP ? WHERE leaderboard_id = ? AND bucket = ? \
                 AND score = ? AND profile_id = ?"
            ))
            .await?,
            // An overwrite, not an element removal: it leaves one collection tombstone (at the
            // timestamp - 1), which shadows every older entry and its successor supersedes, instead of
            // one dead cell per removed entry that every later read-back of the row would meet.
            overwrite_ranked: prepare(format!(
                "UPDATE {ks}.scores_by_profile USING TIMESTAMP ? SET ranked = ? \
                 WHERE profile_id = ? AND leaderboard_id = ?"
            ))
            .await?,
            invalidate_cache: prepare(format!(
                "DELETE FROM {ks}.eligibility_cache WHERE wallet_address = ?"
            ))
            .await?,
            // An operator's delete (store::repair): the score and wallet cleared and `updated_at`
            // rewritten at the delete's timestamp, which the read-back then takes as the key's `t*`.
            delete_profile: prepare(format!(
                "UPDATE {ks}.scores_by_profile USING TIMESTAMP ? SET score = null, \
                 wallet_address = null, updated_at = ? WHERE profile_id = ? AND leaderboard_id = ?"
            ))
            .await?,
            get_profile: prepare(format!(
                "SELECT score, wallet_address, updated_at, WRITETIME(score), ranked \
                 FROM {ks}.scores_by_profile WHERE profile_id = ? AND leaderboard_id = ?"
            ))
            .await?,
        })
    }
}
