//! `eligibility(wallet, leaderboard, min_score)` with a read-through cache in `eligibility_cache`.
//!
//! A wallet is eligible when its best score on the leaderboard (over every profile of the wallet) is
//! at least `min_score`. A fresh entry for the same threshold answers (a hit); otherwise the answer is
//! computed from `scores_by_profile` (the wallet index), written with its TTL, and returned (a miss).
//!
//! **Invalidation.** The worker deletes a wallet's entries when one of its scores changes (cleanup
//! phase, after the new score is written). A look-up that read the old score and writes its entry
//! after that delete would leave a stale entry for a whole TTL, so a miss reads the scores again after
//! writing: if they changed in between, it drops its own entry and answers with the new ones. Either
//! the second read sees the worker's score, or the worker's delete comes after the entry and removes
//! it. One extra index read per miss; a hit is one single-partition read.

use std::time::Duration;

use scylla::value::CqlTimestamp;

use super::{decode, failed, ReadError, Reader};
use crate::store::StoreError;

/// Which path answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheResult {
    Hit,
    Miss,
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
        }
    }
}

/// An eligibility answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Eligibility {
    pub eligible: bool,
    /// The wallet's best score on the leaderboard when the answer was computed; `None`: no score.
    pub score: Option<i64>,
    pub cache: CacheResult,
}

/// What a computation was based on: each (profile, score, write time) of the wallet on the board.
type Basis = Vec<(uuid::Uuid, i64, i64)>;

impl Reader {
    /// Is `wallet` eligible on `leaderboard` at `min_score`? See the module doc.
    pub async fn eligibility(
        &self,
        wallet: &str,
        leaderboard: &str,
        min_score: i64,
    ) -> Result<Eligibility, ReadError> {
        let answer = self.eligibility_of(wallet, leaderboard, min_score);
        self.observed("eligibility", answer).await
    }

    async fn eligibility_of(
        &self,
        wallet: &str,
        leaderboard: &str,
        min_score: i64,
    ) -> Result<Eligibility, ReadError> {
        let wallet = wallet.to_ascii_lowercase();
        let st = &self.statements;
        let cached = self
            .session
            .execute_unpaged(&st.cache_get, (wallet.as_str(), leaderboard))
            .await
            .map_err(failed("eligibility_cache"))?;
        let rows = cached
            .into_rows_result()
            .map_err(decode("eligibility_cache"))?;
        let row = rows
            .maybe_first_row::<(Option<bool>, Option<i64>, Option<i64>)>()
            .map_err(decode("eligibility_cache"))?;
        if let Some((Some(eligible), score, Some(threshold))) = row {
            if threshold == min_score {
                self.count_lookup(CacheResult::Hit);
                return Ok(Eligibility {
                    eligible,
                    score,
                    cache: CacheResult::Hit,
                });
            }
        }

        let basis = self.basis(&wallet, leaderboard).await?;
        let score = best(&basis);
        let eligible = score.is_some_and(|s| s >= min_score);
        let now = CqlTimestamp(chrono::Utc::now().timestamp_millis());
        let ttl = ttl_seconds(self.cache_ttl);
        let values = (
            wallet.as_str(),
            leaderboard,
            eligible,
            now,
            score,
            min_score,
            ttl,
        );
        self.session
            .execute_unpaged(&st.cache_put, values)
            .await
            .map_err(failed("eligibility_cache"))?;
        let again = self.basis(&wallet, leaderboard).await?;
        self.count_lookup(CacheResult::Miss);
        if again == basis {
            return Ok(Eligibility {
                eligible,
                score,
                cache: CacheResult::Miss,
            });
        }
        // A score changed while this entry was computed: it may already be stale.
        self.session
            .execute_unpaged(&st.cache_drop, (wallet.as_str(), leaderboard))
            .await
            .map_err(failed("eligibility_cache"))?;
        let score = best(&again);
        Ok(Eligibility {
            eligible: score.is_some_and(|s| s >= min_score),
            score,
            cache: CacheResult::Miss,
        })
    }

    async fn basis(&self, wallet: &str, leaderboard: &str) -> Result<Basis, StoreError> {
        let mut basis: Basis = self
            .wallet_scores(wallet)
            .await?
            .into_iter()
            .filter(|s| s.leaderboard_id == leaderboard)
            .map(|s| (s.profile_id, s.score, s.written_at_micros))
            .collect();
        basis.sort_unstable();
        Ok(basis)
    }

    fn count_lookup(&self, result: CacheResult) {
        self.metrics
            .eligibility_cache_requests
            .with_label_values(&[result.as_str()])
            .inc();
    }
}

fn best(basis: &Basis) -> Option<i64> {
    basis.iter().map(|&(_, score, _)| score).max()
}

/// A TTL in whole seconds, at least one (0 would mean "no TTL").
fn ttl_seconds(ttl: Duration) -> i32 {
    ttl.as_secs().clamp(1, i32::MAX as u64) as i32
}
