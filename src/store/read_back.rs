//! Phase 3 of the protocol: what the database holds for the keys of a flush after its rows are
//! written — the current score, its write time and `ranked` — reading exactly the flush's profiles
//! and leaderboards, one request per replica group (or one per key, `scylla.read_back = "per_key"`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::future::BoxFuture;
use futures::StreamExt;
use futures::TryStreamExt;
use uuid::Uuid;

use super::cleanup::{current, Current, ProfileRow};
use super::phase::{Placement, Request};
use super::{Placed, ScyllaStore, StoreError, READ_BACK};
use crate::config::ReadBack;
use crate::metrics::REQUESTS;
use crate::score::ScoreUpdate;

/// Partitions per multi-partition read-back request.
const READ_BACK_PARTITIONS: usize = 100;

impl ScyllaStore {
    /// Phase 3: what the database now holds for every key of the flush, reading only those
    /// (profile, leaderboard) rows.
    pub(super) async fn read_back(
        &self,
        latest: &[ScoreUpdate],
        placed: &[Placed],
    ) -> Result<HashMap<Key, Current>, StoreError> {
        let mut found = HashMap::with_capacity(latest.len());
        let reads: Vec<BoxFuture<'_, Result<Found, StoreError>>> = match self.read_back {
            ReadBack::Grouped => read_plan(latest, placed)
                .into_iter()
                .map(|(profiles, leaderboards)| {
                    let request = Request::Single(
                        self.statements.read_profiles.clone(),
                        Box::new((profiles, leaderboards)),
                    );
                    Box::pin(self.read_rows(request)) as _
                })
                .collect(),
            ReadBack::PerKey => latest
                .iter()
                .map(|u| {
                    let request = Request::Single(
                        self.statements.read_profile.clone(),
                        Box::new((u.profile_id, u.leaderboard_id.as_str())),
                    );
                    let key = (u.profile_id, u.leaderboard_id.clone());
                    Box::pin(async move {
                        let result = self.send(READ_BACK, request).await?;
                        let rows = result.into_rows_result().map_err(decode)?;
                        let row = rows.maybe_first_row::<ProfileRow>().map_err(decode)?;
                        Ok(row
                            .and_then(current)
                            .map(|c| (key, c))
                            .into_iter()
                            .collect())
                    }) as _
                })
                .collect(),
        };
        let results: Vec<Found> = futures::stream::iter(reads)
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;
        found.extend(results.into_iter().flatten());
        Ok(found)
    }

    /// Sends one grouped read-back request and decodes the keys it found.
    async fn read_rows(&self, request: Request<'_>) -> Result<Found, StoreError> {
        type Row = (
            Uuid,
            String,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<Vec<(i32, i64)>>,
        );
        let result = self.send(READ_BACK, request).await?;
        let rows = result
            .into_rows_result()
            .map_err(|e| self.failed(decode(e)))?;
        let mut found = Vec::new();
        for row in rows.rows::<Row>().map_err(|e| self.failed(decode(e)))? {
            let (pid, lb, score, written_at, touched_at, ranked) =
                row.map_err(|e| self.failed(decode(e)))?;
            if let Some(current) = current((score, written_at, touched_at, ranked)) {
                found.push(((pid, lb), current));
            }
        }
        Ok(found)
    }
}

/// A key of the protocol: (profile, leaderboard).
pub(super) type Key = (Uuid, String);

/// What a read-back found, per key.
type Found = Vec<(Key, Current)>;

/// The grouped read-back's requests, `(profiles, leaderboards)`: per place where profile partitions
/// live, at most [`READ_BACK_PARTITIONS`] profiles and the leaderboards their keys in the flush name, so
/// a read never touches a leaderboard outside the flush (a profile may have rows on many). The pairs of
/// the product that are not keys of the flush cost the server a clustering look-up in a partition it
/// reads anyway; one request per distinct set of leaderboards instead would cost requests (measured in
/// docs/performance.md, "Read-back": 0.269 against 0.218 requests per event in the default workload, the
/// same database CPU).
fn read_plan<'a>(
    latest: &'a [ScoreUpdate],
    placed: &'a [Placed],
) -> Vec<(Vec<Uuid>, Vec<&'a str>)> {
    let mut by_placement: HashMap<&Placement, BTreeMap<Uuid, BTreeSet<&'a str>>> = HashMap::new();
    for (u, at) in latest.iter().zip(placed) {
        by_placement
            .entry(&at.profile)
            .or_default()
            .entry(u.profile_id)
            .or_default()
            .insert(u.leaderboard_id.as_str());
    }
    let mut requests = Vec::new();
    for profiles in by_placement.into_values() {
        let profiles: Vec<(Uuid, BTreeSet<&'a str>)> = profiles.into_iter().collect();
        for chunk in profiles.chunks(READ_BACK_PARTITIONS) {
            let boards: BTreeSet<&str> =
                chunk.iter().flat_map(|(_, b)| b.iter().copied()).collect();
            let ids = chunk.iter().map(|(p, _)| *p).collect();
            requests.push((ids, boards.into_iter().collect()));
        }
    }
    requests
}

/// A read-back whose rows do not decode.
fn decode(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::decode(REQUESTS[READ_BACK], e)
}
