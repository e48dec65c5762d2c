//! Every call the bench makes into score-worker's library (apart from `tests/it/support.rs`), in one
//! file: when the write path's API moves, this is the only place to adapt. The worker variants run the binary and
//! need none of it; the protocol ceiling uses [`ProtocolStore`] and [`flushes`], everything else only
//! sessions, the schema and the bucket function.

use std::sync::Arc;
use std::time::Duration;

use score_worker::batcher::Batcher;
use score_worker::config::ScyllaConfig;
use score_worker::metrics::Metrics;
use score_worker::pipeline::Store;
use score_worker::score::ScoreUpdate;
use score_worker::store::ScyllaStore;
use scylla::client::session::Session;
use uuid::Uuid;

use crate::prom;
use crate::support::Event;

/// The library's decoded event, built from a generated one (what the worker's decoder would make).
pub fn update(e: &Event) -> ScoreUpdate {
    ScoreUpdate {
        event_id: e.event_id.clone(),
        profile_id: e.profile,
        wallet_address: e.wallet.clone(),
        leaderboard_id: e.leaderboard.clone(),
        score: e.score,
        occurred_at_micros: e.at_micros,
    }
}

/// A session configured as the worker configures its own.
pub async fn connect(config: &ScyllaConfig) -> Arc<Session> {
    Arc::new(
        score_worker::store::connect(config)
            .await
            .expect("Cassandra must be running (cargo xtask up dev)"),
    )
}

/// Applies this build's schema to `config.keyspace`.
pub async fn migrate(session: &Session, config: &ScyllaConfig) {
    score_worker::schema::migrate(session, config, false)
        .await
        .expect("migrate");
}

/// The leaderboard bucket of a profile, as the worker computes it.
pub fn bucket_of(profile: Uuid, buckets: i32) -> i32 {
    score_worker::store::bucket_of(profile, buckets)
}

/// One flush as the worker's batcher closes it: (newest update per key, every event).
pub type FlushRows = (Vec<ScoreUpdate>, Vec<ScoreUpdate>);

/// The flushes the worker's batcher makes of `events` arriving back to back (a backlog), each a first
/// delivery: each closes at `max_scores` distinct keys (or the batcher's event bound), the last one
/// when input ends.
pub fn flushes(events: &[Event], max_scores: usize) -> Vec<FlushRows> {
    let mut batcher = Batcher::new(max_scores, Duration::from_secs(3600));
    let now = tokio::time::Instant::now();
    let mut out: Vec<FlushRows> = events
        .iter()
        .filter_map(|e| batcher.push(update(e), (), true, now))
        .map(|f| (f.latest, f.events))
        .collect();
    if !batcher.is_empty() {
        let f = batcher.take();
        out.push((f.latest, f.events));
    }
    out
}

/// The worker's own store (statements, protocol, metrics) on one keyspace.
pub struct ProtocolStore {
    store: ScyllaStore,
    metrics: Arc<Metrics>,
}

impl ProtocolStore {
    pub async fn open(session: Arc<Session>, config: &ScyllaConfig) -> ProtocolStore {
        let metrics = Arc::new(Metrics::new());
        let store = ScyllaStore::new(session, config, metrics.clone())
            .await
            .expect("prepare the store's statements");
        ProtocolStore { store, metrics }
    }

    /// Writes one flush as the pipeline does, without its retries and without its per-process skip of
    /// superseded first deliveries (that hint lives in the pipeline, not in the store).
    pub async fn write(&self, flush: &FlushRows) -> Result<(), String> {
        Store::write(&self.store, &flush.0, &flush.1, &[])
            .await
            .map_err(|e| e.to_string())
    }

    /// CQL requests sent so far (the same counter the worker exports).
    pub fn requests(&self) -> f64 {
        prom::sum(&self.metrics.encode(), prom::REQUESTS)
    }

    /// Warnings the database attached to the store's responses so far.
    pub fn warnings(&self) -> Option<prom::Warnings> {
        prom::Warnings::of(&self.metrics.encode())
    }

    /// Statements sent so far, if the store counts them.
    pub fn statements(&self) -> Option<f64> {
        prom::sum_if_exported(&self.metrics.encode(), prom::STATEMENTS)
    }
}
