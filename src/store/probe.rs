//! The write probe: does the database take this worker's writes at all? When a flush fails, the
//! answer decides whose failure it is. The probe sends, one after another, a statement on every table
//! a flush writes (with the permission it needs: MODIFY, and SELECT for the read-back) that carries no
//! event and changes nothing anyone reads:
//!
//! - column deletes of a `scores_by_profile` row, a `scores` row and a `score_history` row whose keys
//!   no event can have (the leaderboard id `score-worker probe` has a space, which the wire contract
//!   forbids; the history row is at `occurred_at` 0, and events are after 1970), and the
//!   `eligibility_cache` partition of a wallet no event can have — each a tombstone at server time on a
//!   row that never exists, the same size every time;
//! - a read of that `scores_by_profile` row.
//!
//! Plain (unprepared) statements with literal values: the probe does not depend on the prepared
//! statements of the flushes, and a dropped table or a revoked grant answers with the server's own
//! error. It runs only after a flush failed, and while flushes are held.

use scylla::statement::unprepared::Statement;

use super::{ScyllaStore, StoreError};

/// A leaderboard id no event can have (`[A-Za-z0-9_.-]` only on the wire).
const BOARD: &str = "score-worker probe";
/// The nil profile: a real profile may be nil, but never with [`BOARD`].
const PROFILE: &str = "00000000-0000-0000-0000-000000000000";

/// The probe's statements, in the order they are sent, each with its name for errors.
pub(super) struct Probe {
    statements: Vec<(&'static str, Statement)>,
}

impl Probe {
    pub(super) fn new(ks: &str) -> Self {
        let statement = |name: &'static str, cql: String| {
            let mut statement = Statement::new(cql);
            statement.set_is_idempotent(true);
            (name, statement)
        };
        Self {
            statements: vec![
                statement(
                    "probe of scores_by_profile",
                    format!(
                        "DELETE ranked, score, wallet_address, updated_at FROM {ks}.scores_by_profile \
                         WHERE profile_id = {PROFILE} AND leaderboard_id = '{BOARD}'"
                    ),
                ),
                statement(
                    "probe of scores",
                    format!(
                        "DELETE wallet_address, updated_at FROM {ks}.scores WHERE leaderboard_id = \
                         '{BOARD}' AND bucket = 0 AND score = 0 AND profile_id = {PROFILE}"
                    ),
                ),
                statement(
                    "probe of score_history",
                    format!(
                        "DELETE leaderboard_id, score, wallet_address FROM {ks}.score_history WHERE \
                         profile_id = {PROFILE} AND day = '1970-01-01' AND occurred_at = 0 AND \
                         event_id = '{BOARD}'"
                    ),
                ),
                statement(
                    "probe of eligibility_cache",
                    format!("DELETE FROM {ks}.eligibility_cache WHERE wallet_address = '{BOARD}'"),
                ),
                statement(
                    "probe read of scores_by_profile",
                    format!(
                        "SELECT score, ranked FROM {ks}.scores_by_profile WHERE profile_id = \
                         {PROFILE} AND leaderboard_id = '{BOARD}'"
                    ),
                ),
            ],
        }
    }
}

impl ScyllaStore {
    /// Sends the probe's statements one after another; the first failure is the answer.
    pub(super) async fn probe_writes(&self) -> Result<(), StoreError> {
        for (name, statement) in &self.probe.statements {
            self.session
                .query_unpaged(statement.clone(), ())
                .await
                .map_err(|e| self.failed(StoreError::new(name, e)))?;
        }
        Ok(())
    }
}
