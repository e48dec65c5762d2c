//! Every metric the worker exports, in a registry of its own. Metric names are a contract with the
//! alert rules and dashboards in `deploy/`; they are defined here and nowhere else.
//!
//! Label values are bounded: reasons, statement names and error kinds come from fixed lists and are
//! pre-registered at zero, so `rate()` works from the first scrape. Ages (of the oldest held flush,
//! unsettled delivery, pending message) are computed when scraped ([`ages`]).

mod ages;
mod catalog;
mod labels;

use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Registry, TextEncoder,
};

pub use ages::{AgeGuard, Ages, Since};
pub use labels::*;

use catalog::*;

use crate::score::RejectReason;

/// The worker's metrics. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    pub messages_received: IntCounter,
    pub messages_processed: IntCounter,
    pub messages_failed: IntCounterVec,
    pub dead_letters: IntCounterVec,
    /// Events whose `occurred_at` was later than their arrival allows, by [`CLOCK_ACTIONS`].
    pub events_clock: IntCounterVec,
    /// Receipt → settlement, by `outcome` ([`OUTCOMES`]).
    pub processing_duration: HistogramVec,
    pub batch_size: Histogram,
    pub batch_retries: IntCounter,
    pub inflight_batches: IntGauge,
    pub consumer_pending: IntGauge,
    pub pull_errors: IntCounter,
    pub nats_connected: IntGauge,
    pub scylla_query_duration: HistogramVec,
    pub scylla_statements: Histogram,
    pub superseded_skips: IntCounter,
    pub scylla_errors: IntCounterVec,
    pub scylla_connection_failures: IntCounter,
    /// Warnings the database attached to its responses, by request and kind ([`SERVER_WARNINGS`]).
    pub scylla_warnings: IntCounterVec,
    pub ready: IntGauge,
    pub pulls_paused: IntGauge,
    /// One-hot: 1 for the pull breaker's current state ([`BREAKER_STATES`]).
    pub pull_breaker_state: IntGaugeVec,
    /// Dead letters waiting to be stored (queued, being published, or advised by the server).
    pub deadletters_pending: IntGauge,
    pub deadletter_failures: IntCounter,
    pub deadletters_deferred: IntCounter,
    pub deadletters_truncated: IntCounter,
    pub consumer_restores: IntCounter,
    /// Settings of the streams and the consumer on the server that differ from the configuration.
    pub jetstream_drift: IntGauge,
    /// Look-ups of the read side's eligibility cache (`crate::read`), by `result`.
    pub eligibility_cache_requests: IntCounterVec,
    /// Read API calls by `operation` ([`READ_OPERATIONS`]), errors included.
    pub read_duration: HistogramVec,
    /// Read API calls that failed, by `operation` and `kind` ([`ERROR_KINDS`] and [`ARGUMENT`]).
    pub read_errors: IntCounterVec,
    /// Flushes held now because the database takes no writes, each from its first hold until it is
    /// written or split.
    pub held_flushes: Ages,
    /// Deliveries this process holds and has not settled (`consumer::Unsettled`), from their receipt.
    pub unsettled: Ages,
    /// The stored time of the oldest message the consumer has not had acknowledged.
    pub oldest_pending: Arc<Since>,
    /// The score stream's `max_age` (0: none).
    pub stream_max_age: Gauge,
    /// Gauges set when scraped (ages), each by the part that knows them.
    on_scrape: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let d = Definer(&registry);
        let m = Metrics {
            messages_received: d.counter(&MESSAGES_RECEIVED),
            messages_processed: d.counter(&MESSAGES_PROCESSED),
            messages_failed: d.counter_vec(&MESSAGES_FAILED),
            dead_letters: d.counter_vec(&DEAD_LETTERS),
            events_clock: d.counter_vec(&EVENTS_CLOCK),
            processing_duration: d.histogram_vec(&PROCESSING_DURATION, PROCESSING_BUCKETS),
            batch_size: d.histogram(&BATCH_SIZE, BATCH_BUCKETS),
            batch_retries: d.counter(&BATCH_RETRIES),
            inflight_batches: d.gauge(&INFLIGHT_BATCHES),
            consumer_pending: d.gauge(&CONSUMER_PENDING),
            pull_errors: d.counter(&PULL_ERRORS),
            nats_connected: d.gauge(&NATS_CONNECTED),
            scylla_query_duration: d.histogram_vec(&SCYLLA_QUERY_DURATION, QUERY_BUCKETS),
            scylla_statements: d.histogram(&SCYLLA_STATEMENTS, STATEMENT_BUCKETS),
            superseded_skips: d.counter(&SUPERSEDED_SKIPS),
            scylla_errors: d.counter_vec(&SCYLLA_ERRORS),
            scylla_connection_failures: d.counter(&SCYLLA_CONNECTION_FAILURES),
            scylla_warnings: d.counter_vec(&SCYLLA_WARNINGS),
            ready: d.gauge(&READY),
            pulls_paused: d.gauge(&PULLS_PAUSED),
            pull_breaker_state: d.gauge_vec(&PULL_BREAKER_STATE),
            deadletters_pending: d.gauge(&DEADLETTERS_PENDING),
            deadletter_failures: d.counter(&DEADLETTER_FAILURES),
            deadletters_deferred: d.counter(&DEADLETTERS_DEFERRED),
            deadletters_truncated: d.counter(&DEADLETTERS_TRUNCATED),
            consumer_restores: d.counter(&CONSUMER_RESTORES),
            jetstream_drift: d.gauge(&JETSTREAM_DRIFT),
            eligibility_cache_requests: d.counter_vec(&ELIGIBILITY_CACHE_REQUESTS),
            read_duration: d.histogram_vec(&READ_DURATION, READ_BUCKETS),
            read_errors: d.counter_vec(&READ_ERRORS),
            held_flushes: Ages::default(),
            unsettled: Ages::default(),
            oldest_pending: Arc::default(),
            stream_max_age: d.float_gauge(&STREAM_MAX_AGE),
            on_scrape: Mutex::new(Vec::new()),
            registry,
        };
        m.register_ages();
        Definer(&m.registry)
            .gauge_vec(&BUILD_INFO)
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("SCORE_WORKER_REVISION")])
            .set(1);

        m.preinitialise();
        m
    }

    /// Every label value of the contract, at zero (the breaker's state: closed).
    fn preinitialise(&self) {
        for reason in RejectReason::ALL {
            self.messages_failed.with_label_values(&[reason.as_str()]);
            self.dead_letters.with_label_values(&[reason.as_str()]);
        }
        self.messages_failed.with_label_values(&[FAILED_WRITE]);
        for action in CLOCK_ACTIONS {
            self.events_clock.with_label_values(&[action]);
        }
        for statement in REQUESTS {
            self.scylla_query_duration.with_label_values(&[statement]);
        }
        for statement in REQUESTS.into_iter().chain([PROBE]) {
            for kind in ERROR_KINDS {
                self.scylla_errors.with_label_values(&[statement, kind]);
            }
        }
        for outcome in OUTCOMES {
            self.processing_duration.with_label_values(&[outcome]);
        }
        for operation in READ_OPERATIONS {
            self.read_duration.with_label_values(&[operation]);
            for kind in ERROR_KINDS.iter().chain(&[ARGUMENT]) {
                self.read_errors.with_label_values(&[operation, kind]);
            }
        }
        for statement in REQUESTS {
            for warning in SERVER_WARNINGS {
                self.scylla_warnings
                    .with_label_values(&[statement, warning]);
            }
        }
        for result in CACHE_RESULTS {
            self.eligibility_cache_requests.with_label_values(&[result]);
        }
        for state in BREAKER_STATES {
            self.pull_breaker_state
                .with_label_values(&[state])
                .set(i64::from(state == "closed"));
        }
    }

    /// Counts a dead-lettered message (called by the dead-letter publisher, which also logs it); a
    /// `future_timestamp` one is also an event the arrival rule refused.
    pub fn dead_lettered(&self, reason: RejectReason) {
        self.messages_failed
            .with_label_values(&[reason.as_str()])
            .inc();
        self.dead_letters
            .with_label_values(&[reason.as_str()])
            .inc();
        if reason == RejectReason::FutureTimestamp {
            self.events_clock.with_label_values(&["refused"]).inc();
        }
    }

    /// Counts one warning the database attached to a response to `statement`; the driver logs its
    /// text.
    pub fn server_warning(&self, statement: &str, text: &str) {
        let text = text.to_ascii_lowercase();
        let kind = if text.contains("tombstone") {
            "tombstones"
        } else if text.contains("batch") {
            "batch"
        } else {
            "other"
        };
        self.scylla_warnings
            .with_label_values(&[statement, kind])
            .inc();
    }

    /// Runs `refresh` before every scrape (to set a gauge only the caller can compute, such as an
    /// age).
    pub fn on_scrape(&self, refresh: impl Fn() + Send + Sync + 'static) {
        self.on_scrape.lock().expect("lock").push(Box::new(refresh));
    }

    /// The Prometheus text exposition (format 0.0.4), with every age as of now.
    pub fn encode(&self) -> String {
        for refresh in self.on_scrape.lock().expect("lock").iter() {
            refresh();
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("text encoding is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_every_contract_name_with_help_and_type() {
        let m = Metrics::new();
        m.processing_duration
            .with_label_values(&["ack"])
            .observe(0.3);
        let text = m.encode();
        for name in [
            "score_worker_messages_received_total",
            "score_worker_messages_processed_total",
            "score_worker_messages_failed_total",
            "score_worker_dead_letters_total",
            "score_worker_events_clock_total",
            "score_worker_processing_duration_seconds",
            "score_worker_batch_size",
            "score_worker_batch_retries_total",
            "score_worker_inflight_batches",
            "score_worker_consumer_pending",
            "score_worker_pull_errors_total",
            "score_worker_nats_connected",
            "score_worker_scylla_query_duration_seconds",
            "score_worker_scylla_errors_total",
            "score_worker_scylla_connection_failures_total",
            "score_worker_scylla_warnings_total",
            "score_worker_build_info",
            "score_worker_pulls_paused",
            "score_worker_pull_breaker_state",
            "score_worker_deadletters_pending",
            "score_worker_deadletter_failures_total",
            "score_worker_deadletters_deferred_total",
            "score_worker_deadletters_truncated_total",
            "score_worker_consumer_restores_total",
            "score_worker_jetstream_drift",
            "score_worker_eligibility_cache_requests_total",
            "score_worker_read_duration_seconds",
            "score_worker_read_errors_total",
            "score_worker_flushes_held",
            "score_worker_flushes_held_oldest_age_seconds",
            "score_worker_unsettled_deliveries",
            "score_worker_unsettled_deliveries_oldest_age_seconds",
            "score_worker_consumer_oldest_pending_age_seconds",
            "score_worker_stream_max_age_seconds",
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "missing HELP for {name}"
            );
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "missing TYPE for {name}"
            );
        }
        assert!(text.contains(
            "score_worker_processing_duration_seconds_bucket{outcome=\"ack\",le=\"2\"} 1"
        ));
        assert!(text.contains(
            "score_worker_processing_duration_seconds_bucket{outcome=\"retry\",le=\"2\"} 0"
        ));
        assert!(text.contains(
            "score_worker_scylla_errors_total{kind=\"server\",statement=\"read_back\"} 0"
        ));
        assert!(
            text.contains("score_worker_read_errors_total{kind=\"argument\",operation=\"rank\"} 0")
        );
        assert!(text.contains("score_worker_scylla_query_duration_seconds_bucket{statement=\"read_back\",le=\"0.1\"} 0"));
        assert!(text.contains("score_worker_dead_letters_total{reason=\"malformed_json\"} 0"));
        assert!(text.contains("score_worker_events_clock_total{action=\"clamped\"} 0"));
        assert!(text.contains(&format!(
            "score_worker_build_info{{revision=\"{}\",version=\"{}\"}} 1",
            env!("SCORE_WORKER_REVISION"),
            env!("CARGO_PKG_VERSION")
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn ages_are_as_of_the_scrape() {
        let m = Metrics::new();
        let gauge = |text: &str, name: &str| -> f64 {
            let line = text.lines().find(|l| l.starts_with(&format!("{name} ")));
            line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
                .unwrap_or_else(|| panic!("no {name}"))
        };
        let held = m.held_flushes.start();
        tokio::time::advance(std::time::Duration::from_secs(42)).await;
        let text = m.encode();
        assert_eq!(gauge(&text, "score_worker_flushes_held"), 1.0);
        assert_eq!(
            gauge(&text, "score_worker_flushes_held_oldest_age_seconds"),
            42.0
        );
        drop(held);
        let text = m.encode();
        assert_eq!(gauge(&text, "score_worker_flushes_held"), 0.0);
        assert_eq!(
            gauge(&text, "score_worker_flushes_held_oldest_age_seconds"),
            0.0
        );
        let ten_minutes_ago = chrono::Utc::now().timestamp_micros() - 600_000_000;
        m.oldest_pending.set(Some(ten_minutes_ago));
        let age = gauge(
            &m.encode(),
            "score_worker_consumer_oldest_pending_age_seconds",
        );
        assert!((600.0..610.0).contains(&age), "{age}");
    }

    #[test]
    fn registries_are_independent() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.messages_received.inc();
        assert!(b
            .encode()
            .contains("score_worker_messages_received_total 0"));
    }
}
