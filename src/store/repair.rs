//! Operators' repairs of one score — get, upsert, delete — through the worker's own write protocol,
//! so a repair racing live updates keeps the leaderboard invariant (docs/design.md, "Repairs").
//!
//! - An upsert is a flush of one event: the same five phases, at the event's timestamp, so it loses
//!   to a newer live update and beats an older one, cell by cell.
//! - A delete at time `t` clears the key's score and wallet at `t` and rewrites its `updated_at` at
//!   `t`; the read-back of every later writer of the key (this delete included) then sees "deleted at
//!   `t`" and removes every leaderboard row the key owns at `t`. A live update newer than `t` wins and
//!   brings the key back; any write at or before `t` (a late event, a redelivery, a migrated row) stays
//!   deleted. History rows are an audit log and are kept.

use chrono::{DateTime, Utc};
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use super::phase::Phase;
use super::{bytes, decode_as, ScyllaStore, StoreError, CLEANUP, WRITE_PROFILES};
use crate::pipeline::Store;
use crate::score::ScoreUpdate;

/// A profile's score on one leaderboard, as `scores_by_profile` holds it (the read side's answer too).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProfileScore {
    pub profile_id: Uuid,
    pub leaderboard_id: String,
    pub score: i64,
    pub wallet_address: String,
    pub updated_at: DateTime<Utc>,
    /// The write timestamp of the score: the event time (µs) of the update that set it.
    pub written_at_micros: i64,
}

/// One key as a repair sees it: its score and the leaderboard rows it may own.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredScore {
    #[serde(flatten)]
    pub key: ProfileScore,
    /// The (bucket, score) leaderboard rows the key may own; one entry once its writers finished.
    pub ranked: Vec<(i32, i64)>,
}

type GetRow = (
    Option<i64>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<i64>,
    Option<Vec<(i32, i64)>>,
);

impl ScyllaStore {
    /// The current score of one key, or `None` if it has none (never written, or deleted).
    pub async fn get(
        &self,
        profile_id: Uuid,
        leaderboard_id: &str,
    ) -> Result<Option<StoredScore>, StoreError> {
        let result = self
            .session
            .execute_unpaged(&self.statements.get_profile, (profile_id, leaderboard_id))
            .await
            .map_err(|e| StoreError::new("get", e))?;
        let rows = result.into_rows_result().map_err(decode_as("get"))?;
        let Some((score, wallet, updated_at, written_at, ranked)) =
            rows.maybe_first_row::<GetRow>().map_err(decode_as("get"))?
        else {
            return Ok(None);
        };
        let (Some(score), Some(written_at)) = (score, written_at) else {
            return Ok(None);
        };
        Ok(Some(StoredScore {
            key: ProfileScore {
                profile_id,
                leaderboard_id: leaderboard_id.to_string(),
                score,
                wallet_address: wallet.unwrap_or_default(),
                updated_at: updated_at
                    .and_then(|t| DateTime::from_timestamp_millis(t.0))
                    .unwrap_or_default(),
                written_at_micros: written_at,
            },
            ranked: ranked.unwrap_or_default(),
        }))
    }

    /// Writes one validated update (see [`crate::score::validate`]) as the worker would: its key,
    /// leaderboard row and history row at the update's timestamp.
    pub async fn upsert(&self, update: &ScoreUpdate) -> Result<(), StoreError> {
        let one = std::slice::from_ref(update);
        self.write(one, one, &[]).await
    }

    /// Deletes one key at `at_micros` (see the module doc); returns what it held before.
    pub async fn delete(
        &self,
        profile_id: Uuid,
        leaderboard_id: &str,
        at_micros: i64,
    ) -> Result<Option<StoredScore>, StoreError> {
        let before = self.get(profile_id, leaderboard_id).await?;
        let key = ScoreUpdate {
            event_id: String::new(),
            profile_id,
            wallet_address: String::new(),
            leaderboard_id: leaderboard_id.to_string(),
            score: 0,
            occurred_at_micros: at_micros,
        };
        let keys = std::slice::from_ref(&key);
        let mut placer = self.placer();
        let placed = self.place(&mut placer, keys);
        let mut clear = Phase::default();
        let values = (
            at_micros,
            CqlTimestamp(at_micros.div_euclid(1000)),
            profile_id,
            leaderboard_id,
        );
        let statement = &self.statements.delete_profile;
        clear.push(&placed[0].profile, statement, values, bytes::profile(&key));
        self.run(WRITE_PROFILES, clear).await?;
        self.settle_keys(&mut placer, keys, &placed, None).await?;
        if let Some(wallet) = before.as_ref().map(|b| b.key.wallet_address.as_str()) {
            let mut invalidate = Phase::default();
            let at = placer.place("eligibility_cache", &(wallet,));
            let statement = &self.statements.invalidate_cache;
            invalidate.push(&at, statement, (wallet,), bytes::invalidate(wallet));
            self.run(CLEANUP, invalidate).await?;
        }
        Ok(before)
    }
}
