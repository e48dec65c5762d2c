//! The metrics contract: every name, help text and label set the worker exports, in one table, and
//! the one way they are registered ([`Definer`]). Alert rules and dashboards in `deploy/` depend on
//! these names; `docs/metrics.md` documents them.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// One metric's name, help and label names.
pub(super) struct Def {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

/// Registers metrics of the contract in one registry.
pub(super) struct Definer<'a>(pub &'a Registry);

impl Definer<'_> {
    fn register<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        self.0
            .register(Box::new(metric.clone()))
            .expect("unique metric");
        metric
    }

    fn opts(def: &Def) -> Opts {
        Opts::new(def.name, def.help)
    }

    pub fn counter(&self, def: &Def) -> IntCounter {
        self.register(IntCounter::with_opts(Self::opts(def)).expect("valid metric"))
    }

    pub fn counter_vec(&self, def: &Def) -> IntCounterVec {
        self.register(IntCounterVec::new(Self::opts(def), def.labels).expect("valid metric"))
    }

    pub fn gauge(&self, def: &Def) -> IntGauge {
        self.register(IntGauge::with_opts(Self::opts(def)).expect("valid metric"))
    }

    pub fn gauge_vec(&self, def: &Def) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Self::opts(def), def.labels).expect("valid metric"))
    }

    pub fn float_gauge(&self, def: &Def) -> Gauge {
        self.register(Gauge::with_opts(Self::opts(def)).expect("valid metric"))
    }

    pub fn histogram(&self, def: &Def, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(def.name, def.help).buckets(buckets.to_vec());
        self.register(Histogram::with_opts(opts).expect("valid metric"))
    }

    pub fn histogram_vec(&self, def: &Def, buckets: &[f64]) -> HistogramVec {
        let opts = HistogramOpts::new(def.name, def.help).buckets(buckets.to_vec());
        self.register(HistogramVec::new(opts, def.labels).expect("valid metric"))
    }
}

pub(super) const MESSAGES_RECEIVED: Def = Def {
    name: "score_worker_messages_received_total",
    help: "Messages taken from NATS.",
    labels: &[],
};

pub(super) const MESSAGES_PROCESSED: Def = Def {
    name: "score_worker_messages_processed_total",
    help: "Messages whose writes succeeded and that were acknowledged.",
    labels: &[],
};

pub(super) const MESSAGES_FAILED: Def = Def {
    name: "score_worker_messages_failed_total",
    help: "Messages that failed, by reason (validation reasons, or `write` when the write did not succeed in time).",
    labels: &["reason"],
};

pub(super) const DEAD_LETTERS: Def = Def {
    name: "score_worker_dead_letters_total",
    help: "Messages published to the dead-letter subject, by reason.",
    labels: &["reason"],
};

pub(super) const EVENTS_CLOCK: Def = Def {
    name: "score_worker_events_clock_total",
    help: "Events whose occurred_at was later than their arrival at JetStream allows: clamped (a delivery written at arrival + validation.max_ahead_of_arrival) or refused (dead-lettered as future_timestamp).",
    labels: &["action"],
};

pub(super) const PROCESSING_DURATION: Def = Def {
    name: "score_worker_processing_duration_seconds",
    help: "Time from receiving a message to settling it, by outcome (ack, retry: nak'd for redelivery, dead_letter).",
    labels: &["outcome"],
};

pub(super) const BATCH_SIZE: Def = Def {
    name: "score_worker_batch_size",
    help: "Scores per flush after coalescing.",
    labels: &[],
};

pub(super) const BATCH_RETRIES: Def = Def {
    name: "score_worker_batch_retries_total",
    help: "Flush write attempts that were retried.",
    labels: &[],
};

pub(super) const INFLIGHT_BATCHES: Def = Def {
    name: "score_worker_inflight_batches",
    help: "Flushes being written now.",
    labels: &[],
};

pub(super) const CONSUMER_PENDING: Def = Def {
    name: "score_worker_consumer_pending",
    help: "Messages pending on the durable consumer plus those awaiting acknowledgement.",
    labels: &[],
};

pub(super) const PULL_ERRORS: Def = Def {
    name: "score_worker_pull_errors_total",
    help: "Pull requests to the durable consumer that failed (each is followed by a growing wait).",
    labels: &[],
};

pub(super) const NATS_CONNECTED: Def = Def {
    name: "score_worker_nats_connected",
    help: "1 while connected to NATS.",
    labels: &[],
};

pub(super) const SCYLLA_QUERY_DURATION: Def = Def {
    name: "score_worker_scylla_query_duration_seconds",
    help: "Duration of each database statement, by statement.",
    labels: &["statement"],
};

pub(super) const SCYLLA_STATEMENTS: Def = Def {
    name: "score_worker_scylla_statements_per_request",
    help: "Statements carried by each database request (1, or the size of an unlogged batch).",
    labels: &[],
};

pub(super) const SUPERSEDED_SKIPS: Def = Def {
    name: "score_worker_superseded_skips_total",
    help: "Keys whose leaderboard writes were skipped because this process had already written a newer event for them (history is still written).",
    labels: &[],
};

pub(super) const SCYLLA_ERRORS: Def = Def {
    name: "score_worker_scylla_errors_total",
    help: "Failed database requests of the write path, by statement and kind.",
    labels: &["statement", "kind"],
};

pub(super) const SCYLLA_CONNECTION_FAILURES: Def = Def {
    name: "score_worker_scylla_connection_failures_total",
    help: "Failed attempts to open or keep a database session.",
    labels: &[],
};

pub(super) const SCYLLA_WARNINGS: Def = Def {
    name: "score_worker_scylla_warnings_total",
    help: "Warnings the database attached to responses (tombstones met by a read, an oversized batch, other), by request.",
    labels: &["statement", "warning"],
};

pub(super) const READY: Def = Def {
    name: "score_worker_ready",
    help: "1 while /readyz reports ready.",
    labels: &[],
};

pub(super) const PULLS_PAUSED: Def = Def {
    name: "score_worker_pulls_paused",
    help: "1 while the pull breaker is open or half-open: flushes could not be written (the database unreachable, overloaded or refusing the worker).",
    labels: &[],
};

pub(super) const PULL_BREAKER_STATE: Def = Def {
    name: "score_worker_pull_breaker_state",
    help: "1 for the pull breaker's current state (closed, open, half_open), 0 for the others.",
    labels: &["state"],
};

pub(super) const DEADLETTERS_PENDING: Def = Def {
    name: "score_worker_deadletters_pending",
    help: "Dead letters waiting to be stored: queued, being published, or advised by the server; their originals are held until then.",
    labels: &[],
};

pub(super) const DEADLETTER_FAILURES: Def = Def {
    name: "score_worker_deadletter_failures_total",
    help: "Attempts to store a dead letter that failed (each is retried until the dead-letter stream takes it).",
    labels: &[],
};

pub(super) const DEADLETTERS_DEFERRED: Def = Def {
    name: "score_worker_deadletters_deferred_total",
    help: "Rejected messages given back (nak) because the dead-letter queue was full; they come back after retry.nak_delay.",
    labels: &[],
};

pub(super) const DEADLETTERS_TRUNCATED: Def = Def {
    name: "score_worker_deadletters_truncated_total",
    help: "Dead letters whose body keeps only the first bytes of the original payload.",
    labels: &[],
};

pub(super) const CONSUMER_RESTORES: Def = Def {
    name: "score_worker_consumer_restores_total",
    help: "Times the worker recreated a deleted stream or durable consumer while running.",
    labels: &[],
};

pub(super) const JETSTREAM_DRIFT: Def = Def {
    name: "score_worker_jetstream_drift",
    help: "Settings of the streams and the durable consumer on the server that differ from the configuration; the server's apply until `score-worker nats apply` changes them.",
    labels: &[],
};

pub(super) const ELIGIBILITY_CACHE_REQUESTS: Def = Def {
    name: "score_worker_eligibility_cache_requests_total",
    help: "Eligibility look-ups of the read API, by whether the cache answered (hit) or the score tables did (miss).",
    labels: &["result"],
};

pub(super) const READ_DURATION: Def = Def {
    name: "score_worker_read_duration_seconds",
    help:
        "Duration of each read API call (score_worker::read), failed ones included, by operation.",
    labels: &["operation"],
};

pub(super) const READ_ERRORS: Def = Def {
    name: "score_worker_read_errors_total",
    help: "Read API calls that failed, by operation and kind (database error kinds, or argument).",
    labels: &["operation", "kind"],
};

pub(super) const STREAM_MAX_AGE: Def = Def {
    name: "score_worker_stream_max_age_seconds",
    help: "The score stream's max_age: messages older than this are deleted unprocessed (0: no limit).",
    labels: &[],
};

pub(super) const BUILD_INFO: Def = Def {
    name: "score_worker_build_info",
    help: "Build information; always 1.",
    labels: &["version", "revision"],
};
