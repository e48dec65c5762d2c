//! Readiness: NATS connected, the durable consumer readable, database session up, schema at the
//! expected version or ahead within this build's window (`schema::compat`; `/readyz` says which), the
//! database taking writes, not draining. A probe task refreshes the
//! first four (and the consumer lag gauge) every few seconds; a probe in progress ends on shutdown.
//!
//! Also the pull breaker: when a write fails for a transient reason (the database is down or
//! overloaded), the pipeline pauses pulling; the probe (or any write that succeeds) resumes it once
//! the database answers again. While the database takes no writes at all (the store's write probe
//! fails: unreachable, or refusing this worker), the pipeline holds the flushes it cannot write
//! (their messages kept alive by `+WPI`) and pulls stay paused until that probe passes
//! ([`Health::writes_held`]), so an outage or a refusal of any length burns no delivery and
//! dead-letters nothing. A keyspace this build may not write (a newer schema outside its window,
//! another bucket count) keeps pulls paused too, until it may again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use scylla::client::session::Session;
use tokio_util::sync::CancellationToken;

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
    /// The keyspace refuses this build: pulls stay paused.
    schema_refuses: AtomicBool,
    /// Why the database takes no writes, while it takes none.
    held: Mutex<Option<String>>,
    draining: AtomicBool,
    paused: tokio::sync::watch::Sender<bool>,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            nats: AtomicBool::new(false),
            consumer: Mutex::new(None),
            database: AtomicBool::new(false),
            schema: Mutex::new(Some("schema not checked yet".into())),
            schema_note: Mutex::new(None),
            schema_refuses: AtomicBool::new(false),
            held: Mutex::new(None),
            draining: AtomicBool::new(false),
            paused: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Flushes fail for transient reasons: stop pulling until the database answers again.
    pub fn pause_pulls(&self, cause: &str) {
        if !self.paused.send_replace(true) {
            tracing::warn!(%cause, "database writes failing; pulling paused until it answers again");
            self.metrics.pulls_paused.set(1);
        }
    }

    /// The database answers (a probe) or a flush was written: pull again, unless the database takes
    /// no writes ([`Health::writes_held`]).
    pub fn resume_pulls(&self) {
        if self.held.lock().expect("lock").is_some() || self.schema_refuses.load(Ordering::Relaxed)
        {
            return;
        }
        if self.paused.send_replace(false) {
            tracing::info!("database answers again; pulling resumed");
            self.metrics.pulls_paused.set(0);
        }
    }

    pub fn pulls_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Resolves once pulling is not paused.
    pub async fn resumed(&self) {
        let _ = self.paused.subscribe().wait_for(|p| !*p).await;
    }

    /// Waits while pulling is paused; false if `cancel` fired first.
    pub async fn wait_resumed(&self, cancel: &CancellationToken) -> bool {
        let mut paused = self.paused.subscribe();
        tokio::select! {
            () = cancel.cancelled() => false,
            resumed = paused.wait_for(|p| !*p) => resumed.is_ok(),
        }
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
        if let Some(cause) = self.held.lock().expect("lock").clone() {
            reasons.push(format!("database takes no writes: {cause}"));
        }
        if *self.paused.borrow() && !self.schema_refuses.load(Ordering::Relaxed) {
            reasons.push("database writes failing: pulling paused".to_string());
        }
        self.metrics.ready.set(i64::from(reasons.is_empty()));
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// The database takes no writes of this worker's (its write probe fails: unreachable, a revoked
    /// grant, a dropped table) and flushes are held: pulls stay paused and readiness names `cause`
    /// until [`Health::writes_taken`]; neither the probe below nor a written flush resumes them
    /// meanwhile. Logs each distinct cause once.
    pub fn writes_held(&self, cause: &str) {
        let mut slot = self.held.lock().expect("lock");
        if slot.as_deref() != Some(cause) {
            tracing::error!(%cause, "the database takes no writes; flushes held and pulling paused until it does");
            *slot = Some(cause.to_string());
        }
        if !self.paused.send_replace(true) {
            self.metrics.pulls_paused.set(1);
        }
    }

    /// The write probe passes again: held flushes are written, pulling resumes.
    pub fn writes_taken(&self) {
        if self.held.lock().expect("lock").take().is_some() {
            tracing::info!("the database takes writes again; held flushes are written");
        }
        self.resume_pulls();
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
    /// within the window); `Err(refusal)` may not, and pauses pulls until it may again.
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
        *slot = problem;
        drop(slot);
        if self.schema_refuses.swap(refuses, Ordering::Relaxed) != refuses && !refuses {
            tracing::info!("the keyspace accepts this build again");
        }
        if refuses {
            if !self.paused.send_replace(true) {
                self.metrics.pulls_paused.set(1);
            }
        } else {
            self.resume_pulls();
        }
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.readiness().ok();
    }

    /// Refreshes readiness and the consumer lag gauge every `interval` until cancelled.
    pub async fn probe(
        self: Arc<Self>,
        client: async_nats::Client,
        mut consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
        session: Arc<Session>,
        scylla: ScyllaConfig,
        interval: Duration,
        cancel: CancellationToken,
    ) {
        loop {
            // A query or consumer read in progress (up to its timeout) must not delay a shutdown.
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.probe_once(&client, &mut consumer, &session, &scylla) => {}
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
        consumer: &mut jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
        session: &Session,
        scylla: &ScyllaConfig,
    ) {
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        self.nats.store(connected, Ordering::Relaxed);
        self.metrics.nats_connected.set(i64::from(connected));

        let checked = match schema::check_writer(session, scylla).await {
            Ok(state) => Ok(Ok(state)),
            Err(e @ schema::SchemaError::Statement { .. }) => Err(e),
            Err(refusal) => Ok(Err(refusal.to_string())),
        };
        match checked {
            Ok(checked) => {
                self.database.store(true, Ordering::Relaxed);
                self.schema_checked(checked);
                self.resume_pulls();
            }
            Err(e) => {
                if self.database.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "database probe failed");
                }
            }
        }
        if connected {
            // A deleted consumer or a revoked permission: pulls fail too, so the worker does nothing.
            let problem = match consumer.info().await {
                Ok(info) => {
                    let pending = info.num_pending as i64 + info.num_ack_pending as i64;
                    self.metrics.consumer_pending.set(pending);
                    None
                }
                Err(e) => Some(format!("JetStream consumer cannot be read: {e}")),
            };
            self.consumer_state(problem);
        }
    }

    /// Records whether the consumer can be read; logs each change.
    fn consumer_state(&self, problem: Option<String>) {
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

    #[test]
    fn not_ready_until_probed_and_held_writes_fail_readiness_until_taken() {
        let h = Health::new(Arc::new(Metrics::new()));
        assert!(h.readiness().is_err());
        h.nats.store(true, Ordering::Relaxed);
        h.database.store(true, Ordering::Relaxed);
        *h.schema.lock().unwrap() = None;
        assert!(h.readiness().is_ok());
        h.writes_held("probe of scores failed (permanent): no MODIFY permission");
        let reasons = h.readiness().unwrap_err();
        assert!(
            reasons[0].contains("takes no writes: probe of scores"),
            "{reasons:?}"
        );
        assert!(h.pulls_paused());
        h.resume_pulls();
        assert!(
            h.pulls_paused(),
            "neither the probe nor a written flush resumes a hold"
        );
        h.writes_taken();
        assert!(!h.pulls_paused());
        assert!(h.readiness().is_ok());
        h.consumer_state(Some("JetStream consumer cannot be read: not found".into()));
        assert_eq!(
            h.readiness().unwrap_err(),
            vec!["JetStream consumer cannot be read: not found".to_string()]
        );
        h.consumer_state(None);
        assert!(h.readiness().is_ok());
        h.pause_pulls("db down");
        assert!(h.readiness().unwrap_err()[0].contains("pulling paused"));
        h.resume_pulls();
        assert!(h.readiness().is_ok());
        h.set_draining();
        assert_eq!(h.readiness().unwrap_err(), vec!["draining".to_string()]);
    }

    #[test]
    fn a_schema_ahead_within_the_window_is_ready_and_outside_it_pauses_pulls() {
        let h = Health::new(Arc::new(Metrics::new()));
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
        assert!(h.pulls_paused());
        h.resume_pulls();
        assert!(
            h.pulls_paused(),
            "a written flush does not resume a refused schema"
        );
        h.schema_checked(Ok(schema::SchemaState::Current { version: 3 }));
        assert!(!h.pulls_paused());
        assert!(h.readiness().is_ok() && h.notes().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn pulls_wait_while_paused_and_go_on_when_resumed_or_cancelled() {
        let h = Arc::new(Health::new(Arc::new(Metrics::new())));
        let cancel = CancellationToken::new();
        assert!(h.wait_resumed(&cancel).await, "not paused: no wait");
        h.pause_pulls("db down");
        let waiter = tokio::spawn({
            let (h, cancel) = (h.clone(), cancel.clone());
            async move { h.wait_resumed(&cancel).await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished(), "waits while paused");
        h.resume_pulls();
        assert!(waiter.await.unwrap());
        h.pause_pulls("again");
        cancel.cancel();
        assert!(!h.wait_resumed(&cancel).await, "cancelled");
    }
}
