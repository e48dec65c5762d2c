//! Keeps the durable consumer there while the worker runs: every few seconds, and at once when a pull
//! finds it gone, it reads the consumer and
//! - managed (`nats.manage_jetstream`): recreates it (and its streams) when an operator deleted it
//!   (`score_worker_consumer_restores_total`); the pull loop then pulls again at once;
//! - always: follows its `max_deliver`, so the last delivery is the server's, and reports how the
//!   streams and the consumer differ from the configuration (`score_worker_jetstream_drift`, a
//!   warning when that changes) without changing them: `score-worker nats apply` does;
//!
//! and feeds readiness ("JetStream consumer cannot be read: …") and the lag gauges: in messages
//! (`score_worker_consumer_pending`) and in seconds (`score_worker_consumer_oldest_pending_age_seconds`:
//! the stored time of the first message past the consumer's ack floor — by definition not acknowledged
//! — aged when scraped; beside it the stream's `max_age`, past which that message is deleted).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self, consumer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::NatsConfig;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::nats;
use crate::pipeline::Settler;

/// Between the pull loop and the watcher.
#[derive(Default)]
pub struct Signals {
    /// A pull found the consumer gone: look now.
    pub check: Notify,
    /// The consumer was restored: pull now.
    pub restored: Notify,
}

/// The watcher's parts.
pub struct Watch {
    pub js: jetstream::Context,
    pub config: NatsConfig,
    pub health: Arc<Health>,
    pub settler: Settler,
    pub metrics: Arc<Metrics>,
    pub signals: Arc<Signals>,
    pub interval: Duration,
    /// The drift last reported (a warning is logged when it changes).
    pub reported: Vec<nats::Drift>,
}

impl Watch {
    /// Checks every `interval` (or when a pull asks) until cancelled; a check in progress (up to
    /// `nats.request_timeout`) does not delay a shutdown.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.check() => {}
            }
            let _ = self.health.readiness();
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
                () = self.signals.check.notified() => {}
            }
        }
    }

    async fn check(&mut self) {
        let c = &self.config;
        // No stream request here: a stream that is gone shows as the consumer's `StreamNotFound`.
        let stream = self.js.get_stream_no_info(&c.stream).await;
        let info = match &stream {
            Ok(stream) => stream.consumer_info(&c.consumer).await,
            Err(e) => {
                self.health.consumer_state(Some(format!(
                    "JetStream consumer cannot be read: {}",
                    crate::error_chain(e)
                )));
                return;
            }
        };
        match info {
            Ok(info) => {
                let pending = info.num_pending as i64 + info.num_ack_pending as i64;
                self.metrics.consumer_pending.set(pending);
                if let Ok(stream) = &stream {
                    self.lag(stream, &info).await;
                }
                self.health.consumer_state(None);
                let max_deliver = nats::max_deliver_of(&info.config);
                if self.settler.set_max_deliver(max_deliver) {
                    tracing::warn!(
                        max_deliver,
                        "the consumer's max_deliver changed on the server; the last delivery follows it"
                    );
                }
                self.report_drift(&info.config).await;
            }
            Err(e)
                if c.manage_jetstream
                    && matches!(
                        e.kind(),
                        ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
                    ) =>
            {
                let why = crate::error_chain(&e).to_string();
                self.restore(&why).await;
            }
            Err(e) => self.health.consumer_state(Some(format!(
                "JetStream consumer cannot be read: {}",
                crate::error_chain(&e)
            ))),
        }
    }

    /// The backlog in seconds and the stream's `max_age` it is measured against; a stream that cannot
    /// be read keeps the last values.
    async fn lag(&self, stream: &jetstream::stream::Stream<()>, info: &consumer::Info) {
        if let Ok(stream_info) = stream.get_info().await {
            let max_age = stream_info.config.max_age;
            self.metrics.stream_max_age.set(max_age.as_secs_f64());
        }
        self.oldest_pending(stream, info).await;
    }

    /// Records the stored time of the oldest message the consumer has not had acknowledged: the first
    /// message at or after its ack floor + 1 on its filter subject (none pending: no age). A failure
    /// keeps the last time known.
    async fn oldest_pending(&self, stream: &jetstream::stream::Stream<()>, info: &consumer::Info) {
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            self.metrics.oldest_pending.set(None);
            return;
        }
        let from = info.ack_floor.stream_sequence + 1;
        let subject = match info.config.filter_subject.as_str() {
            "" => ">",
            subject => subject,
        };
        match stream.get_first_raw_message_by_subject(subject, from).await {
            Ok(message) => {
                let at = message.time.timestamp_micros();
                self.metrics.oldest_pending.set(Some(at));
            }
            // Settled or deleted since the consumer was read: the next check sees the next one.
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {}
            Err(e) => {
                tracing::debug!(error = %e, subject, "cannot read the oldest pending message")
            }
        }
    }

    /// Sets the drift gauge, and logs the drift when it changed (a stream that cannot be read shows
    /// elsewhere: pulls fail, readiness says so).
    async fn report_drift(&mut self, consumer: &jetstream::consumer::Config) {
        let Ok(mut drift) = nats::streams_drift(&self.js, &self.config).await else {
            return;
        };
        drift.extend(nats::consumer_drift(
            &nats::consumer_config(&self.config),
            consumer,
        ));
        self.metrics
            .jetstream_drift
            .set(i64::try_from(drift.len()).unwrap_or(i64::MAX));
        if drift != self.reported {
            nats::warn_drift(&drift);
            if drift.is_empty() {
                tracing::info!("the streams and the consumer match the configuration again");
            }
            self.reported = drift;
        }
    }

    /// Creates the streams and the consumer where missing (what exists is not changed).
    async fn restore(&mut self, why: &str) {
        match nats::ensure_topology(&self.js, &self.config).await {
            Ok(topology) => {
                self.metrics.consumer_restores.inc();
                tracing::warn!(
                    why,
                    stream = %self.config.stream,
                    consumer = %self.config.consumer,
                    "recreated what was missing of the stream and consumer"
                );
                self.settler
                    .set_max_deliver(nats::max_deliver(&topology.consumer));
                self.reported = topology.drift;
                self.health.consumer_state(None);
                self.signals.restored.notify_waiters();
            }
            Err(e) => self.health.consumer_state(Some(format!(
                "JetStream consumer cannot be read: {why}; restoring it failed: {}",
                crate::error_chain(&e)
            ))),
        }
    }
}
