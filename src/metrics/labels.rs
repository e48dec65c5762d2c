//! The closed sets the worker's label values come from, and the histograms' buckets: part of the
//! metrics contract (docs/metrics.md), each pre-registered at zero by [`super::Metrics::new`].

/// Receipt → settlement; boundaries at the 2 s alert threshold and past 10 s.
pub const PROCESSING_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];
/// One statement; resolves the 100 ms alert threshold.
pub const QUERY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Scores per flush.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0];

/// Failure reason for a message whose write did not succeed in time (it is nak'd, not lost).
pub const FAILED_WRITE: &str = "write";

/// The requests the store sends (label `statement`), one per phase of a flush, in order; each is a
/// single statement or an unlogged batch.
pub const REQUESTS: [&str; 5] = [
    "write_profiles",
    "write_rows",
    "read_back",
    "cleanup",
    "prune_ranked",
];
/// Statements per request.
pub const STATEMENT_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0];

/// Label `statement` of `score_worker_scylla_errors_total` for the write probe's statements.
pub const PROBE: &str = "probe";

/// How a message was settled (label `outcome` of `score_worker_processing_duration_seconds`).
pub const OUTCOMES: [&str; 3] = ["ack", "retry", "dead_letter"];

/// The read API's operations (label `operation`; see `crate::read`).
pub const READ_OPERATIONS: [&str; 8] = [
    "top",
    "page",
    "rank",
    "profile",
    "wallet",
    "score_on",
    "history",
    "eligibility",
];
/// Error kind of a read refused before any request: a bad argument, or too many rows asked.
pub const ARGUMENT: &str = "argument";
/// One read API call; resolves the 250 ms alert threshold.
pub const READ_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Kinds of warning a database server attaches to a response (label `warning`): a read that met more
/// dead cells than `tombstone_warn_threshold`, a batch over the size threshold or spanning too many
/// partitions, anything else.
pub const SERVER_WARNINGS: [&str; 3] = ["tombstones", "batch", "other"];

/// Database error kinds (label `kind`); see `store::error`.
pub const ERROR_KINDS: &[&str] = &[
    "timeout",
    "unavailable",
    "overloaded",
    "connection",
    "server",
    "permanent",
];

/// Eligibility cache look-up results (label `result`).
pub const CACHE_RESULTS: [&str; 2] = ["hit", "miss"];

/// States of the pull breaker (label `state`; see `crate::breaker`).
pub const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];

/// What the arrival rule did to an event's time (label `action` of `score_worker_events_clock_total`;
/// see `score::clock`): written at arrival + `validation.max_ahead_of_arrival`, or dead-lettered as
/// `future_timestamp`.
pub const CLOCK_ACTIONS: [&str; 2] = ["clamped", "refused"];
