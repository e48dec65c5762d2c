//! Rebuilding `scores` for another bucket count (`score-worker rebuild-scores`): every key of
//! `scores_by_profile` is written again, through the write protocol, as the event that is already its
//! current one — its score `s*` at its own write time `t*` — with this store's bucket count.
//!
//! Phase 1 adds `(b_new, s*)` to `ranked` and rewrites the score, wallet and `updated_at` cells with
//! the values they hold at the timestamp they hold (no cell changes); phase 2 writes the leaderboard
//! row in the new bucket at `t*`; the read-back and clean-up then delete every other entry of `ranked`
//! — the row in the old bucket among them — and the overwrite leaves `ranked = {(b_new, s*)}`. No history
//! row is written: this is not an event. The rebuild is one more writer of an event that loses or ties
//! every other, so the argument of docs/design.md holds with live workers — as long as every writer
//! uses the new count (docs/design.md, "Changing the bucket count").

use futures::StreamExt;
use scylla::response::{PagingState, PagingStateResponse};
use uuid::Uuid;

use super::{decode_as, ScyllaStore, StoreError};
use crate::pipeline::Store;
use crate::score::ScoreUpdate;

/// Requests a rebuild keeps in flight at once, each a flush of at most [`FLUSH`] keys.
const IN_FLIGHT: usize = 4;
/// Keys per rewrite, as in a worker's flush.
const FLUSH: usize = 50;

/// How far a rebuild got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Rows of `scores_by_profile` read.
    pub keys: u64,
    /// Keys written again with the new bucket.
    pub rewritten: u64,
    /// Keys without a score (deleted): nothing to place.
    pub without_score: u64,
}

/// `profile_id`, `leaderboard_id`, `score`, `WRITETIME(score)`, `wallet_address`.
type ScanRow = (Uuid, String, Option<i64>, Option<i64>, Option<String>);

impl ScyllaStore {
    /// Writes every key of `scores_by_profile` again at its current score and write time with this
    /// store's bucket count (module doc), `page_size` rows at a time; calls `progress` after each page.
    pub async fn rebuild_scores(
        &self,
        page_size: i32,
        mut progress: impl FnMut(Progress),
    ) -> Result<Progress, StoreError> {
        let scan = format!(
            "SELECT profile_id, leaderboard_id, score, WRITETIME(score), wallet_address FROM {}.scores_by_profile",
            self.keyspace
        );
        let mut scan = self
            .session
            .prepare(scan)
            .await
            .map_err(|e| StoreError::new("rebuild_scan", e.into()))?;
        scan.set_page_size(page_size.max(1));
        scan.set_is_idempotent(true);

        let mut done = Progress::default();
        let mut paging = PagingState::start();
        loop {
            let (result, next) = self
                .session
                .execute_single_page(&scan, (), paging)
                .await
                .map_err(|e| StoreError::new("rebuild_scan", e))?;
            let rows = result
                .into_rows_result()
                .map_err(decode_as("rebuild_scan"))?;
            let mut keys = Vec::new();
            for row in rows.rows::<ScanRow>().map_err(decode_as("rebuild_scan"))? {
                let (profile_id, leaderboard_id, score, written_at, wallet) =
                    row.map_err(decode_as("rebuild_scan"))?;
                done.keys += 1;
                let (Some(score), Some(written_at)) = (score, written_at) else {
                    done.without_score += 1;
                    continue;
                };
                keys.push(ScoreUpdate {
                    event_id: "rebuild-scores".into(),
                    profile_id,
                    wallet_address: wallet.unwrap_or_default(),
                    leaderboard_id,
                    score,
                    occurred_at_micros: written_at,
                });
            }
            let written = keys.len() as u64;
            futures::stream::iter(keys.chunks(FLUSH).map(|flush| self.write(flush, &[], &[])))
                .buffer_unordered(IN_FLIGHT)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<()>, StoreError>>()?;
            done.rewritten += written;
            progress(done);
            match next {
                PagingStateResponse::HasMorePages { state } => paging = state,
                PagingStateResponse::NoMorePages => return Ok(done),
            }
        }
    }
}
