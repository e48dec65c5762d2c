//! A profile's side of the tables: its score on every leaderboard (`scores_by_profile`, one
//! partition), the profiles of a wallet (the `wallet_address` index), and its history
//! (`score_history`, one partition per UTC day, newest first).

use chrono::{DateTime, Duration, Utc};
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use super::leaderboard::timestamp;
use super::{decode, failed, ReadError, Reader};
pub use crate::store::repair::ProfileScore;
use crate::store::{day_of, StoreError};

/// One accepted event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryEvent {
    pub occurred_at: DateTime<Utc>,
    pub event_id: String,
    pub leaderboard_id: String,
    pub score: i64,
    pub wallet_address: String,
}

/// Where a history page ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryCursor {
    pub occurred_at: DateTime<Utc>,
    pub event_id: String,
}

/// Events newest first; `next` is set when more may follow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryPage {
    pub events: Vec<HistoryEvent>,
    pub next: Option<HistoryCursor>,
}

/// How far back history is kept (the table's TTL): a range is cut to it.
pub const HISTORY_DAYS: i64 = 90;

type ProfileRow = (
    Uuid,
    String,
    Option<i64>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<i64>,
);
type HistoryRow = (
    CqlTimestamp,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
);

impl Reader {
    /// `profile_id`'s scores on every leaderboard, by leaderboard id.
    pub async fn scores(&self, profile_id: Uuid) -> Result<Vec<ProfileScore>, ReadError> {
        let rows = self.profile_rows("scores", &self.statements.profile, (profile_id,));
        Ok(self.observed("profile", rows).await?)
    }

    /// Every profile's score of `wallet` (any case; stored lower-case), by profile and leaderboard.
    pub async fn by_wallet(&self, wallet: &str) -> Result<Vec<ProfileScore>, ReadError> {
        let wallet = wallet.to_ascii_lowercase();
        Ok(self.observed("wallet", self.wallet_scores(&wallet)).await?)
    }

    pub(super) async fn wallet_scores(
        &self,
        wallet: &str,
    ) -> Result<Vec<ProfileScore>, StoreError> {
        let mut rows = self
            .profile_rows("by_wallet", &self.statements.by_wallet, (wallet,))
            .await?;
        rows.sort_by(|a, b| {
            (a.profile_id, &a.leaderboard_id).cmp(&(b.profile_id, &b.leaderboard_id))
        });
        Ok(rows)
    }

    /// `profile_id`'s score on `leaderboard`.
    pub async fn score_on(
        &self,
        profile_id: Uuid,
        leaderboard: &str,
    ) -> Result<Option<ProfileScore>, StoreError> {
        let score = self.profile_score(profile_id, leaderboard);
        self.observed("score_on", score).await
    }

    /// [`Reader::score_on`], not counted as a call of its own (a rank reads it).
    pub(super) async fn profile_score(
        &self,
        profile_id: Uuid,
        leaderboard: &str,
    ) -> Result<Option<ProfileScore>, StoreError> {
        let rows = self
            .profile_rows(
                "score",
                &self.statements.profile_on,
                (profile_id, leaderboard),
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Rows of `scores_by_profile`; a deleted key (no score) is skipped.
    async fn profile_rows(
        &self,
        statement: &'static str,
        prepared: &scylla::statement::prepared::PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<ProfileScore>, StoreError> {
        let result = self
            .session
            .execute_unpaged(prepared, values)
            .await
            .map_err(failed(statement))?;
        let rows = result.into_rows_result().map_err(decode(statement))?;
        let mut out = Vec::new();
        for row in rows.rows::<ProfileRow>().map_err(decode(statement))? {
            let (profile_id, leaderboard_id, score, wallet, updated_at, written) =
                row.map_err(decode(statement))?;
            let (Some(score), Some(written_at_micros)) = (score, written) else {
                continue;
            };
            out.push(ProfileScore {
                profile_id,
                leaderboard_id,
                score,
                wallet_address: wallet.unwrap_or_default(),
                updated_at: timestamp(updated_at),
                written_at_micros,
            });
        }
        Ok(out)
    }

    /// `profile_id`'s events with `from <= occurred_at < to`, newest first, at most `limit`, after
    /// `after` (the previous page's `next`). The range is cut to the last [`HISTORY_DAYS`] before
    /// `to`; one request per day read.
    pub async fn history(
        &self,
        profile_id: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
        after: Option<&HistoryCursor>,
    ) -> Result<HistoryPage, ReadError> {
        let page = self.history_page(profile_id, from, to, limit, after);
        self.observed("history", page).await
    }

    async fn history_page(
        &self,
        profile_id: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
        after: Option<&HistoryCursor>,
    ) -> Result<HistoryPage, ReadError> {
        let limit = super::rows_wanted("a page of history", limit)?;
        if from >= to {
            return Err(ReadError::Argument("history needs from < to".into()));
        }
        let from = from.max(to - Duration::days(HISTORY_DAYS + 1));
        let millis = |t: DateTime<Utc>| CqlTimestamp(t.timestamp_millis());
        // Newest first: the end of the range, or the cursor.
        let (mut day, mut upper) = match after {
            Some(c) => (day_of(c.occurred_at.timestamp_micros()), c.occurred_at),
            None => (
                day_of((to - Duration::milliseconds(1)).timestamp_micros()),
                to,
            ),
        };
        let first_day = day_of(from.timestamp_micros());
        let mut events = Vec::with_capacity(limit);
        if let Some(c) = after {
            let values = (
                profile_id,
                day,
                millis(c.occurred_at),
                c.event_id.as_str(),
                limit as i32,
            );
            self.history_rows(&self.statements.history_tie_after, values, &mut events)
                .await?;
        }
        while events.len() < limit && day >= first_day {
            let values = (
                profile_id,
                day,
                millis(from),
                millis(upper),
                (limit - events.len()) as i32,
            );
            self.history_rows(&self.statements.history_range, values, &mut events)
                .await?;
            upper = to.min(upper);
            match day.pred_opt() {
                Some(d) => day = d,
                None => break,
            }
        }
        let next = (events.len() == limit)
            .then(|| {
                events.last().map(|e| HistoryCursor {
                    occurred_at: e.occurred_at,
                    event_id: e.event_id.clone(),
                })
            })
            .flatten();
        Ok(HistoryPage { events, next })
    }

    async fn history_rows(
        &self,
        prepared: &scylla::statement::prepared::PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        out: &mut Vec<HistoryEvent>,
    ) -> Result<(), StoreError> {
        let result = self
            .session
            .execute_unpaged(prepared, values)
            .await
            .map_err(failed("history"))?;
        let rows = result.into_rows_result().map_err(decode("history"))?;
        for row in rows.rows::<HistoryRow>().map_err(decode("history"))? {
            let (occurred_at, event_id, leaderboard_id, score, wallet) =
                row.map_err(decode("history"))?;
            out.push(HistoryEvent {
                occurred_at: timestamp(Some(occurred_at)),
                event_id,
                leaderboard_id: leaderboard_id.unwrap_or_default(),
                score: score.unwrap_or_default(),
                wallet_address: wallet.unwrap_or_default(),
            });
        }
        Ok(())
    }
}
