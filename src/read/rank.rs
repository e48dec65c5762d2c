//! A profile's rank on a leaderboard, within a budget of rows counted.
//!
//! The rank is the number of rows ahead of the profile plus one: every row with a higher score, and the
//! rows of its tie before it in the board's order ([`uuid_order`]). Each bucket's rows at or above the
//! profile's score (`score >= s`, keys only) are read in clustering order, a page per bucket at a
//! time, all buckets concurrently, and counted here. The reads stop once more than
//! [`Reader::with_rank_budget`] rows (default [`RANK_BUDGET`]) are counted: the answer is then
//! [`Rank::Beyond`], "more than N ahead", rather than a scan of the whole board (which, on a churned
//! board, also reads every tombstone on the way and can outlast the server's read timeout). Each round
//! asks every unfinished bucket for its share of what is left of the budget, so a rank reads at most
//! the budget plus one row per bucket.

use scylla::response::{PagingState, PagingStateResponse};
use uuid::Uuid;

use super::leaderboard::{paged, uuid_order};
use super::{decode, failed, ReadError, Reader};
use crate::store::StoreError;

/// Rows a rank counts at most by default (about a tenth of a second of reads on a fresh board).
pub const RANK_BUDGET: u64 = 100_000;

/// Where a profile stands on a leaderboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rank {
    /// Counted to the end.
    Exact(RankBand),
    /// The budget ran out first: more than `ahead` rows are ahead of the profile.
    Beyond {
        score: i64,
        /// Rows known to be ahead: its rank is at least `ahead + 1`.
        ahead: u64,
        /// Rows counted before stopping (the budget, plus at most one per bucket).
        rows_counted: u64,
        budget: u64,
    },
}

/// Where a profile stands, counted exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RankBand {
    pub score: i64,
    /// Its position (1 = first) in the board's order, ties broken by profile id.
    pub rank: u64,
    /// Profiles with the same score, itself included.
    pub tied: u64,
    /// The band its score shares: positions `best..=worst`.
    pub best: u64,
    pub worst: u64,
    /// Rows read to answer (the cost: every row above, and the tie).
    pub rows_counted: u64,
}

/// One bucket's count so far; `paging` is `None` once the bucket is read to its end.
#[derive(Debug)]
struct Counting {
    bucket: i32,
    paging: Option<PagingState>,
    above: u64,
    before: u64,
    tie: u64,
}

impl Counting {
    fn counted(&self) -> u64 {
        self.above + self.tie
    }
}

/// The next page size: each of `open` unfinished buckets gets its share of what is left of `budget`
/// (one more row than the budget proves it exceeded).
fn share(budget: u64, counted: u64, open: usize) -> usize {
    let left = (budget + 1).saturating_sub(counted).max(1);
    left.div_ceil(open.max(1) as u64)
        .min(super::leaderboard::MAX_PAGE as u64) as usize
}

impl Reader {
    /// The most rows [`Reader::rank`] counts before it answers [`Rank::Beyond`] (at least 1).
    pub fn with_rank_budget(mut self, rows: u64) -> Self {
        self.rank_budget = rows.max(1);
        self
    }

    /// Where `profile_id` stands on `leaderboard`, or `None` if it has no score there; see the
    /// module doc for the budget.
    pub async fn rank(
        &self,
        leaderboard: &str,
        profile_id: Uuid,
    ) -> Result<Option<Rank>, ReadError> {
        self.observed("rank", self.count_rank(leaderboard, profile_id))
            .await
    }

    async fn count_rank(
        &self,
        leaderboard: &str,
        profile_id: Uuid,
    ) -> Result<Option<Rank>, ReadError> {
        let Some(current) = self.profile_score(profile_id, leaderboard).await? else {
            return Ok(None);
        };
        let s = current.score;
        let budget = self.rank_budget;
        let mut buckets: Vec<Counting> = (0..self.buckets)
            .map(|bucket| Counting {
                bucket,
                paging: Some(PagingState::start()),
                above: 0,
                before: 0,
                tie: 0,
            })
            .collect();
        let total = |b: &[Counting]| b.iter().map(Counting::counted).sum::<u64>();
        loop {
            let counted = total(&buckets);
            let open: Vec<&mut Counting> =
                buckets.iter_mut().filter(|c| c.paging.is_some()).collect();
            if open.is_empty() || counted > budget {
                break;
            }
            let page = share(budget, counted, open.len());
            let reads = open
                .into_iter()
                .map(|c| self.count_page(leaderboard, s, profile_id, c, page));
            futures::future::try_join_all(reads).await?;
        }
        let sum = |f: fn(&Counting) -> u64| buckets.iter().map(f).sum::<u64>();
        let (above, before, tied) = (sum(|c| c.above), sum(|c| c.before), sum(|c| c.tie));
        let rows_counted = above + tied;
        if rows_counted > budget {
            return Ok(Some(Rank::Beyond {
                score: s,
                ahead: above + before,
                rows_counted,
                budget,
            }));
        }
        Ok(Some(Rank::Exact(RankBand {
            score: s,
            rank: above + before + 1,
            tied,
            best: above + 1,
            worst: above + tied.max(1),
            rows_counted,
        })))
    }

    /// Reads and counts the next page (at most `page` rows) of one bucket's rows at or above `s`.
    async fn count_page(
        &self,
        leaderboard: &str,
        s: i64,
        profile_id: Uuid,
        c: &mut Counting,
        page: usize,
    ) -> Result<(), StoreError> {
        let Some(paging) = c.paging.take() else {
            return Ok(());
        };
        let statement = paged(&self.statements.rank_rows, page);
        let (result, more) = self
            .session
            .execute_single_page(&statement, (leaderboard, c.bucket, s), paging)
            .await
            .map_err(failed("rank"))?;
        let rows = result.into_rows_result().map_err(decode("rank"))?;
        for row in rows.rows::<(i64, Uuid)>().map_err(decode("rank"))? {
            let (score, profile) = row.map_err(decode("rank"))?;
            if score > s {
                c.above += 1;
            } else {
                c.tie += 1;
                if uuid_order(profile, profile_id).is_lt() {
                    c.before += 1;
                }
            }
        }
        c.paging = match more {
            PagingStateResponse::HasMorePages { state } => Some(state),
            PagingStateResponse::NoMorePages => None,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_open_bucket_reads_its_share_of_what_is_left_plus_one() {
        assert_eq!(share(100, 0, 16), 7); // 101 rows over 16 buckets
        assert_eq!(share(100, 90, 4), 3);
        assert_eq!(share(100, 100, 3), 1);
        assert_eq!(
            share(100, 250, 3),
            1,
            "past the budget: the loop stops before"
        );
        assert_eq!(share(10_000_000, 0, 1), 5_000, "never more than a page");
        // Full pages from every open bucket always pass the budget: the reads end.
        for (budget, counted, open) in [(100u64, 0u64, 16usize), (7, 3, 5), (1, 0, 16)] {
            assert!(counted + (share(budget, counted, open) * open) as u64 > budget);
        }
    }
}
