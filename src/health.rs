//! Readiness: NATS connected, the durable consumer readable, database session up, schema at the
//! expected version or ahead within this build's window (`schema::compat`; `/readyz` says which), the database taking writes, dead letters being stored, the pull breaker not
//! open, not draining. A probe task refreshes NATS and the database every few seconds (a probe in
//! progress ends on shutdown); the consumer's watcher reports the consumer (`consumer::watch`), the
//! dead-letter queue its stream.
//!
//! Health reads the pull [`Breaker`] (shared with the pipeline, which trips, closes and pins it, and
//! the consumer, which obeys it) and half-opens it once the database answers, unless it is pinned:
//! while the database takes no writes at all the pipeline pins it ([`Pin::WritesHeld`], whose cause
//! readiness names), and while the keyspace refuses this build the schema check here does
//! ([`Pin::SchemaRefuses`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scylla::client::session::Session;
use tokio_util::sync::CancellationToken;

use crate::breaker::{Breaker, Pin, State};
use crate::config::ScyllaConfig;
use crate::metrics::Metrics;
use crate::schema;

/// Shared readiness state.
pub struct Health {
    metrics: Arc<Metrics>,
    nats: AtomicBool,
    consumer: Mutex<Option<String>>,
    database: AtomicBool,
    schema: Mutex<Option<String>>,
    /// How the schema stands when that is worth saying while ready (ahead, compatible).
    schema_note: Mutex<Option<String>>,
    deadletters: Mutex<Option<String>>,
    draining: AtomicBool,
    breaker: Arc<Breaker>,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>, breaker: Arc<Breaker>) -> Self {
        Self {
            nats: AtomicBool::new(false),
            consumer: Mutex::new(None),
            database: AtomicBool::new(false),
            schema: Mutex::new(Some("schema not checked yet".into())),
            schema_note: Mutex::new(None),
            deadletters: Mutex::new(None),
            draining: AtomicBool::new(false),
            breaker,
            metrics,
        }
    }

    /// The pull breaker readiness reads.
    pub fn breaker(&self) -> Arc<Breaker> {
        self.breaker.clone()
    }

    /// Dead letters cannot be stored (`Some(why)`), or they can again (`None`); logs each change.
    pub fn deadletters_state(&self, problem: Option<String>) {
        let mut slot = self.deadletters.lock().expect("lock");
        if slot.is_some() != problem.is_some() {
            match &problem {
                Some(p) => {
                    tracing::error!(problem = %p, "dead letters cannot be stored; held and retried")
                }
                None => tracing::info!("dead letters are stored again"),
            }
        }
        *slot = problem;
    }

    /// `Ok` when ready, else the reasons it is not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if self.draining.load(Ordering::Relaxed) {
            reasons.push("draining".to_string());
        }
        if !self.nats.load(Ordering::Relaxed) {
            reasons.push("NATS not connected".to_string());
        } else if let Some(problem) = self.consumer.lock().expect("lock").clone() {
            reasons.push(problem);
        }
        if !self.database.load(Ordering::Relaxed) {
            reasons.push("database unreachable".to_string());
        }
        if let Some(problem) = self.schema.lock().expect("lock").clone() {
            reasons.push(problem);
        }
        if let Some(cause) = self.breaker.pinned(Pin::WritesHeld) {
            reasons.push(format!("database takes no writes: {cause}"));
        }
        if let Some(problem) = self.deadletters.lock().expect("lock").clone() {
            reasons.push(format!("dead-letter stream unavailable: {problem}"));
        }
        // Half-open is ready: the database answers and the worker consumes, one probe at a time.
        if self.breaker.state() == State::Open && self.breaker.pinned(Pin::SchemaRefuses).is_none()
        {
            reasons.push("database writes failing: pulling paused".to_string());
        }
        self.metrics.ready.set(i64::from(reasons.is_empty()));
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// What readiness has to say beyond "ready" (a schema ahead of this build, within its window).
    pub fn notes(&self) -> Vec<String> {
        self.schema_note
            .lock()
            .expect("lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Records what the schema check found: `Ok(state)` may be written (ready when current or ahead
    /// within the window); `Err(refusal)` may not, and keeps the breaker open until it may again.
    fn schema_checked(&self, checked: Result<schema::SchemaState, String>) {
        let (problem, note, refuses) = match checked {
            Ok(state @ schema::SchemaState::AheadCompatible { .. }) => {
                (None, Some(state.to_string()), false)
            }
            Ok(state) if state.ready() => (None, None, false),
            Ok(state) => (Some(state.to_string()), None, false),
            Err(refusal) => (Some(refusal), None, true),
        };
        *self.schema_note.lock().expect("lock") = note;
        let mut slot = self.schema.lock().expect("lock");
        if refuses && *slot != problem {
            tracing::error!(problem = ?problem, "the keyspace refuses this build; pulling paused");
        }
        *slot = problem.clone();
        drop(slot);
        match problem.as_deref() {
            Some(refusal) if refuses => {
                self.breaker.pin(Pin::SchemaRefuses, refusal);
            }
            _ => {
                if self.breaker.unpin(Pin::SchemaRefuses).is_some() {
                    tracing::info!("the keyspace accepts this build again");
                }
            }
        }
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.readiness().ok();
    }

    /// Refreshes readiness every `interval` until cancelled.
    pub async fn probe(
        self: Arc<Self>,
        client: async_nats::Client,
        session: Arc<Session>,
        scylla: ScyllaConfig,
        interval: Duration,
        cancel: CancellationToken,
    ) {
        loop {
            // A query or consumer read in progress (up to its timeout) must not delay a shutdown.
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.probe_once(&client, &session, &scylla) => {}
            }
            let _ = self.readiness();
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    async fn probe_once(
        &self,
        client: &async_nats::Client,
        session: &Session,
        scylla: &ScyllaConfig,
    ) {
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        self.nats.store(connected, Ordering::Relaxed);
        self.metrics.nats_connected.set(i64::from(connected));

        let checked = match schema::check_writer(session, scylla).await {
            Ok(state) => Ok(Ok(state)),
            Err(e @ schema::SchemaError::Statement { .. }) => Err(e),
            Err(refusal) => Ok(Err(crate::error_chain(&refusal).to_string())),
        };
        match checked {
            Ok(checked) => {
                self.database.store(true, Ordering::Relaxed);
                self.schema_checked(checked);
                // The database answers: probe with a small pull, unless the breaker is pinned (the
                // database takes no writes, or the keyspace refuses this build).
                self.breaker.half_open();
            }
            Err(e) => {
                if self.database.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %crate::error_chain(&e), "database probe failed");
                }
            }
        }
    }

    /// Records whether the consumer can be read (`consumer::watch`); logs each change. A deleted
    /// consumer or a revoked permission fails pulls too, so the worker does nothing meanwhile.
    pub fn consumer_state(&self, problem: Option<String>) {
        let mut slot = self.consumer.lock().expect("lock");
        if *slot != problem {
            match &problem {
                Some(p) => tracing::error!(problem = %p, "not ready: the consumer cannot be read"),
                None => tracing::info!("the consumer can be read again"),
            }
            *slot = problem;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        let metrics = Arc::new(Metrics::new());
        Health::new(metrics.clone(), Arc::new(Breaker::new(metrics)))
    }

    fn paused(h: &Health) -> bool {
        h.breaker.state() != State::Closed
    }

    #[test]
    fn not_ready_until_probed_and_held_writes_fail_readiness_until_taken() {
        let h = health();
        assert!(h.readiness().is_err());
        h.nats.store(true, Ordering::Relaxed);
        h.database.store(true, Ordering::Relaxed);
        *h.schema.lock().unwrap() = None;
        assert!(h.readiness().is_ok());
        h.breaker.pin(
            Pin::WritesHeld,
            "probe of scores failed (permanent): no MODIFY permission",
        );
        let reasons = h.readiness().unwrap_err();
        assert!(
            reasons[0].contains("takes no writes: probe of scores"),
            "{reasons:?}"
        );
        assert!(paused(&h));
        h.breaker.close();
        assert!(
            paused(&h),
            "neither the probe nor a written flush resumes a hold"
        );
        h.breaker.unpin(Pin::WritesHeld);
        h.breaker.half_open();
        assert_eq!(
            h.breaker.state(),
            State::HalfOpen { probing: false },
            "the write probe passed: one small pull until a write lands"
        );
        h.breaker.close();
        assert!(!paused(&h));
        assert!(h.readiness().is_ok());
        h.consumer_state(Some("JetStream consumer cannot be read: not found".into()));
        assert_eq!(
            h.readiness().unwrap_err(),
            vec!["JetStream consumer cannot be read: not found".to_string()]
        );
        h.consumer_state(None);
        assert!(h.readiness().is_ok());
        h.breaker.open("db down");
        assert!(h.readiness().unwrap_err()[0].contains("pulling paused"));
        h.breaker.close();
        assert!(h.readiness().is_ok());
        h.set_draining();
        assert_eq!(h.readiness().unwrap_err(), vec!["draining".to_string()]);
    }

    #[test]
    fn a_half_open_breaker_is_ready_and_dead_letters_that_cannot_be_stored_are_not() {
        let h = health();
        h.nats.store(true, Ordering::Relaxed);
        h.database.store(true, Ordering::Relaxed);
        *h.schema.lock().unwrap() = None;
        h.breaker.open("db down");
        assert!(h.readiness().is_err());
        h.breaker.half_open();
        assert!(
            h.readiness().is_ok(),
            "the database answers: consuming, one probe at a time"
        );
        assert!(paused(&h), "but not at full speed");
        h.deadletters_state(Some("no responders".into()));
        assert_eq!(
            h.readiness().unwrap_err(),
            vec!["dead-letter stream unavailable: no responders".to_string()]
        );
        h.deadletters_state(None);
        assert!(h.readiness().is_ok());
    }

    #[test]
    fn a_schema_ahead_within_the_window_is_ready_and_outside_it_pauses_pulls() {
        let h = health();
        h.nats.store(true, Ordering::Relaxed);
        h.database.store(true, Ordering::Relaxed);
        let ahead = schema::SchemaState::AheadCompatible {
            at: 4,
            expected: 3,
            oldest_writer: 3,
        };
        h.schema_checked(Ok(ahead));
        assert!(h.readiness().is_ok());
        assert!(
            h.notes()[0].contains("ahead and compatible"),
            "{:?}",
            h.notes()
        );
        h.schema_checked(Err("schema ahead and not compatible".into()));
        assert!(h.readiness().unwrap_err()[0].contains("not compatible"));
        assert!(paused(&h));
        h.breaker.close();
        assert!(
            paused(&h),
            "a written flush does not resume a refused schema"
        );
        h.schema_checked(Ok(schema::SchemaState::Current { version: 3 }));
        h.breaker.close();
        assert!(!paused(&h));
        assert!(h.readiness().is_ok() && h.notes().is_empty());
    }
}
