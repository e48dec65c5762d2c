//! The prepared statements of the read side. Reads are idempotent, so the driver may retry them.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use crate::store::StoreError;

const ENTRY: &str = "score, profile_id, wallet_address, updated_at";
const HISTORY: &str = "occurred_at, event_id, leaderboard_id, score, wallet_address";
const PROFILE: &str =
    "profile_id, leaderboard_id, score, wallet_address, updated_at, WRITETIME(score)";

pub(super) struct Statements {
    /// A bucket from its head, in clustering order.
    pub head: PreparedStatement,
    /// A bucket's rows with one score after a profile id: the rest of a tie.
    pub tie_after: PreparedStatement,
    /// A bucket's rows below a score.
    pub below: PreparedStatement,
    /// A bucket's keys at or above a score: what a rank counts.
    pub rank_rows: PreparedStatement,
    pub profile: PreparedStatement,
    pub profile_on: PreparedStatement,
    pub by_wallet: PreparedStatement,
    pub history_range: PreparedStatement,
    pub history_tie_after: PreparedStatement,
    pub cache_get: PreparedStatement,
    pub cache_put: PreparedStatement,
    pub cache_drop: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        let prepare = |cql: String| async move {
            let mut prepared = session
                .prepare(cql)
                .await
                .map_err(|e| StoreError::new("prepare", e.into()))?;
            prepared.set_is_idempotent(true);
            Ok::<_, StoreError>(prepared)
        };
        let bucket = "leaderboard_id = ? AND bucket = ?";
        Ok(Self {
            head: prepare(format!("SELECT {ENTRY} FROM {ks}.scores WHERE {bucket}")).await?,
            tie_after: prepare(format!(
                "SELECT {ENTRY} FROM {ks}.scores WHERE {bucket} AND score = ? AND profile_id > ?"
            ))
            .await?,
            below: prepare(format!(
                "SELECT {ENTRY} FROM {ks}.scores WHERE {bucket} AND score < ?"
            ))
            .await?,
            rank_rows: prepare(format!(
                "SELECT score, profile_id FROM {ks}.scores WHERE {bucket} AND score >= ?"
            ))
            .await?,
            profile: prepare(format!(
                "SELECT {PROFILE} FROM {ks}.scores_by_profile WHERE profile_id = ?"
            ))
            .await?,
            profile_on: prepare(format!(
                "SELECT {PROFILE} FROM {ks}.scores_by_profile WHERE profile_id = ? AND leaderboard_id = ?"
            ))
            .await?,
            by_wallet: prepare(format!(
                "SELECT {PROFILE} FROM {ks}.scores_by_profile WHERE wallet_address = ?"
            ))
            .await?,
            history_range: prepare(format!(
                "SELECT {HISTORY} FROM {ks}.score_history WHERE profile_id = ? AND day = ? \
                 AND occurred_at >= ? AND occurred_at < ? LIMIT ?"
            ))
            .await?,
            history_tie_after: prepare(format!(
                "SELECT {HISTORY} FROM {ks}.score_history WHERE profile_id = ? AND day = ? \
                 AND occurred_at = ? AND event_id > ? LIMIT ?"
            ))
            .await?,
            cache_get: prepare(format!(
                "SELECT eligible, score, min_score FROM {ks}.eligibility_cache \
                 WHERE wallet_address = ? AND leaderboard_id = ?"
            ))
            .await?,
            cache_put: prepare(format!(
                "INSERT INTO {ks}.eligibility_cache (wallet_address, leaderboard_id, eligible, \
                 computed_at, score, min_score) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?"
            ))
            .await?,
            cache_drop: prepare(format!(
                "DELETE FROM {ks}.eligibility_cache WHERE wallet_address = ? AND leaderboard_id = ?"
            ))
            .await?,
        })
    }
}
