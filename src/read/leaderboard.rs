//! Leaderboard reads over the bucket partitions of `scores` (`(leaderboard_id, bucket)`, rows in
//! clustering order `score DESC, profile_id ASC`).
//!
//! **Order.** Highest score first; a tie is broken by the profile id in the database's own order for
//! `uuid` ([`uuid_order`]), so a board reads the same way every time and a page boundary is exact.
//!
//! **Top N and pages** merge the buckets: every bucket's head is read (a first page of about twice
//! its share of `n`), the heads are merged, and a bucket is read further only when the merge has
//! taken all it had and still needs rows, until `n` rows are out. A page after a (score, profile)
//! reads, per bucket, the rest of that tie (`score = s AND profile_id > p`) and then everything below
//! (`score < s`). Each read is driver-paged, so a page the server cuts short (a tombstone-heavy
//! stretch) is continued, never mistaken for the end.
//!
//! A read returns at most [`super::MAX_ROWS`] rows: a caller asking for more gets
//! [`ReadError::TooMany`], not an allocation of that size. A profile's rank: [`super::rank`].

use std::cmp::Ordering;
use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use super::{decode, failed, ReadError, Reader};
use crate::store::StoreError;

/// One row of a leaderboard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub score: i64,
    pub profile_id: Uuid,
    pub wallet_address: String,
    pub updated_at: DateTime<Utc>,
}

impl Entry {
    /// Where this row is: a page after it starts with the next one.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            score: self.score,
            profile_id: self.profile_id,
        }
    }
}

/// A position on a leaderboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    pub score: i64,
    pub profile_id: Uuid,
}

/// Rows of a leaderboard in order; `next` is set when more may follow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub next: Option<Cursor>,
}

/// The database's order of `uuid` values: by version, time-based (version 1) ids by their
/// timestamp, then by their bytes unsigned (for random, version 4, ids: by bytes).
pub fn uuid_order(a: Uuid, b: Uuid) -> Ordering {
    let (va, vb) = (a.get_version_num(), b.get_version_num());
    va.cmp(&vb)
        .then_with(|| {
            if va != 1 {
                return Ordering::Equal;
            }
            let ticks = |u: Uuid| u.get_timestamp().map(|t| t.to_gregorian().0);
            ticks(a).cmp(&ticks(b))
        })
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// The board's order: highest score first, then [`uuid_order`].
pub fn order(a: &Entry, b: &Entry) -> Ordering {
    b.score
        .cmp(&a.score)
        .then_with(|| uuid_order(a.profile_id, b.profile_id))
}

/// One read of a bucket, in clustering order.
#[derive(Debug, Clone, Copy)]
enum Segment {
    Head,
    TieAfter(i64, Uuid),
    Below(i64),
}

/// A bucket being merged: what is read and not yet taken, and what is left to read.
struct Source {
    bucket: i32,
    segments: VecDeque<Segment>,
    paging: Option<PagingState>,
    buffer: VecDeque<Entry>,
}

impl Source {
    fn needs_rows(&self) -> bool {
        self.buffer.is_empty() && !self.segments.is_empty()
    }
}

type EntryRow = (i64, Uuid, Option<String>, Option<CqlTimestamp>);

/// Largest page asked of one bucket.
pub(super) const MAX_PAGE: usize = 5_000;

impl Reader {
    /// The first `n` rows of `leaderboard`.
    pub async fn top(&self, leaderboard: &str, n: usize) -> Result<Page, ReadError> {
        let top = self.merge(leaderboard, |_| vec![Segment::Head], n);
        self.observed("top", top).await
    }

    /// The `n` rows that follow `after` on `leaderboard` (`after` itself excluded; it need not exist).
    pub async fn page_after(
        &self,
        leaderboard: &str,
        after: Cursor,
        n: usize,
    ) -> Result<Page, ReadError> {
        let segments = |_| {
            vec![
                Segment::TieAfter(after.score, after.profile_id),
                Segment::Below(after.score),
            ]
        };
        self.observed("page", self.merge(leaderboard, segments, n))
            .await
    }

    /// Merges the buckets' reads (`segments` per bucket) until `n` rows are out.
    async fn merge(
        &self,
        leaderboard: &str,
        segments: impl Fn(i32) -> Vec<Segment>,
        n: usize,
    ) -> Result<Page, ReadError> {
        let n = super::rows_wanted("a page", n)?;
        let mut sources: Vec<Source> = (0..self.buckets)
            .map(|bucket| Source {
                bucket,
                segments: segments(bucket).into(),
                paging: None,
                buffer: VecDeque::new(),
            })
            .collect();
        // About twice a bucket's share of `n` first: most merges then need no second read.
        let share = n.div_ceil(self.buckets as usize);
        let mut page = (2 * share + 8).min(n).min(MAX_PAGE);
        let mut entries = Vec::with_capacity(n);
        'merge: loop {
            let refills = sources
                .iter_mut()
                .filter(|s| s.needs_rows())
                .map(|s| self.fill(leaderboard, s, page));
            futures::future::try_join_all(refills).await?;
            while entries.len() < n {
                if sources.iter().any(Source::needs_rows) {
                    page = (n - entries.len()).clamp(1, MAX_PAGE);
                    continue 'merge;
                }
                let best = sources
                    .iter_mut()
                    .filter(|s| !s.buffer.is_empty())
                    .min_by(|a, b| order(&a.buffer[0], &b.buffer[0]));
                match best.and_then(|s| s.buffer.pop_front()) {
                    Some(entry) => entries.push(entry),
                    None => break 'merge,
                }
            }
            break;
        }
        let next = (entries.len() == n)
            .then(|| entries.last().map(Entry::cursor))
            .flatten();
        Ok(Page { entries, next })
    }

    /// Reads the next rows of a bucket: pages until one has rows or the bucket's reads are done.
    async fn fill(
        &self,
        leaderboard: &str,
        source: &mut Source,
        page: usize,
    ) -> Result<(), StoreError> {
        let st = &self.statements;
        while source.buffer.is_empty() {
            let Some(&segment) = source.segments.front() else {
                return Ok(());
            };
            let paging = source.paging.take().unwrap_or_else(PagingState::start);
            let b = source.bucket;
            let (statement, result) = match segment {
                Segment::Head => {
                    let s = paged(&st.head, page);
                    let r = self
                        .session
                        .execute_single_page(&s, (leaderboard, b), paging);
                    ("top", r.await)
                }
                Segment::TieAfter(score, profile) => {
                    let s = paged(&st.tie_after, page);
                    let values = (leaderboard, b, score, profile);
                    let r = self.session.execute_single_page(&s, values, paging);
                    ("page", r.await)
                }
                Segment::Below(score) => {
                    let s = paged(&st.below, page);
                    let r = self
                        .session
                        .execute_single_page(&s, (leaderboard, b, score), paging);
                    ("page", r.await)
                }
            };
            let (result, more) = result.map_err(failed(statement))?;
            let rows = result.into_rows_result().map_err(decode(statement))?;
            for row in rows.rows::<EntryRow>().map_err(decode(statement))? {
                let (score, profile_id, wallet, updated_at) = row.map_err(decode(statement))?;
                source.buffer.push_back(Entry {
                    score,
                    profile_id,
                    wallet_address: wallet.unwrap_or_default(),
                    updated_at: timestamp(updated_at),
                });
            }
            match more {
                PagingStateResponse::HasMorePages { state } => source.paging = Some(state),
                PagingStateResponse::NoMorePages => {
                    source.segments.pop_front();
                }
            }
        }
        Ok(())
    }
}

pub(super) fn paged(statement: &PreparedStatement, page: usize) -> PreparedStatement {
    let mut s = statement.clone();
    s.set_page_size(page.clamp(1, MAX_PAGE) as i32);
    s
}

/// A CQL `timestamp` (milliseconds) as a UTC time; absent or out of range: the epoch.
pub(super) fn timestamp(t: Option<CqlTimestamp>) -> DateTime<Utc> {
    t.and_then(|t| DateTime::from_timestamp_millis(t.0))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(score: i64, id: u128) -> Entry {
        Entry {
            score,
            profile_id: Uuid::from_u128(id),
            wallet_address: String::new(),
            updated_at: DateTime::default(),
        }
    }

    #[test]
    fn higher_scores_first_then_profile_bytes() {
        let mut v = [
            entry(1, 2),
            entry(5, 9),
            entry(-3, 1),
            entry(5, 3),
            entry(1, 1),
        ];
        v.sort_by(order);
        let got: Vec<(i64, u128)> = v
            .iter()
            .map(|e| (e.score, e.profile_id.as_u128()))
            .collect();
        assert_eq!(got, vec![(5, 3), (5, 9), (1, 1), (1, 2), (-3, 1)]);
    }

    #[test]
    fn uuid_order_is_by_version_then_bytes() {
        let v4 = Uuid::parse_str("00000000-0000-4000-8000-000000000000").unwrap();
        let v4_high = Uuid::parse_str("ff000000-0000-4000-8000-000000000000").unwrap();
        let v1 = Uuid::parse_str("ff000000-0000-1000-8000-000000000000").unwrap();
        assert_eq!(uuid_order(v4, v4_high), Ordering::Less);
        assert_eq!(uuid_order(v1, v4), Ordering::Less, "version first");
    }
}
