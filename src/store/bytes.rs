//! Each statement's share of a batch's size as Cassandra counts it against
//! `batch_size_warn_threshold` (the mutations' data size: cells, clustering, timestamps; the partition
//! key is not counted). Calibrated against the sizes a Cassandra 5.0 server reported for batches of
//! 50 statements, and for history-only batches in the benchmark (docs/performance.md, "Cost model").

use crate::score::ScoreUpdate;

pub fn profile(u: &ScoreUpdate) -> usize {
    178 + u.leaderboard_id.len() + u.wallet_address.len()
}
pub fn leaderboard(u: &ScoreUpdate) -> usize {
    120 + u.wallet_address.len()
}
pub fn history(e: &ScoreUpdate) -> usize {
    145 + e.event_id.len() + e.leaderboard_id.len() + e.wallet_address.len()
}
pub fn delete(_: &ScoreUpdate) -> usize {
    60
}
pub fn overwrite(u: &ScoreUpdate) -> usize {
    90 + u.leaderboard_id.len()
}
pub fn invalidate(_wallet: &str) -> usize {
    30
}
