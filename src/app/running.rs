//! A started worker and its bounded stop: no more pulls, then what is buffered is written and settled
//! within `shutdown.timeout`; whatever is not settled by then is handed back ([`Attempt::HandedBack`]:
//! `-NAK`, so NATS redelivers it to another replica at once — the writes are idempotent). The process
//! exits at most [`SHUTDOWN_TAIL`] after the deadline, even with NATS or the database unreachable.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::consumer::Unsettled;
use crate::health::Health;
use crate::pipeline::Settler;

/// After the drain deadline: the longest the hand-back of unsettled deliveries, the probes, the NATS
/// flush and the HTTP server may take, so the process exits within `shutdown.timeout` + 1 s.
const SHUTDOWN_TAIL: Duration = Duration::from_millis(500);

/// The tasks of a started worker ([`super::App::start`]).
pub struct Running {
    pub(super) timeout: Duration,
    pub(super) health: Arc<Health>,
    pub(super) client: async_nats::Client,
    pub(super) settler: Settler,
    pub(super) unsettled: Arc<Unsettled>,
    /// Stops pulls, watchers and probes.
    pub(super) cancel: CancellationToken,
    pub(super) consumer_task: JoinHandle<()>,
    pub(super) pipeline_task: JoinHandle<()>,
    pub(super) deadletter_task: JoinHandle<()>,
    /// Ends the keep-alive of held deliveries.
    pub(super) held_done: CancellationToken,
    pub(super) keep_alive: JoinHandle<()>,
    pub(super) background: JoinSet<()>,
    pub(super) http_task: JoinHandle<()>,
    pub(super) http_cancel: CancellationToken,
}

impl Running {
    /// Stops: readiness fails (draining), pulls end, the pipeline writes and settles what it holds,
    /// the dead-letter queue stores its letters — all by `shutdown.timeout`; then the tail.
    pub async fn stop(mut self) {
        let deadline = Instant::now() + self.timeout;
        tracing::info!(timeout = ?self.timeout, "shutting down: no more pulls; writing what is buffered");
        self.health.set_draining();
        self.cancel.cancel();
        let drained = self.drain(deadline).await;
        // Past the deadline every step is bounded by SHUTDOWN_TAIL, whatever NATS or the database do.
        let tail = Instant::now() + SHUTDOWN_TAIL;
        self.held_done.cancel();
        self.keep_alive.abort();
        if !drained {
            self.hand_back(tail).await;
        }
        let background = &mut self.background;
        let _ = tokio::time::timeout_at(tail, async {
            while background.join_next().await.is_some() {}
        })
        .await;
        background.abort_all();
        match tokio::time::timeout_at(tail, self.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::error_chain(&e), "NATS flush on shutdown failed")
            }
            Err(_) => tracing::warn!("NATS flush on shutdown timed out"),
        }
        self.http_cancel.cancel();
        let _ = tokio::time::timeout_at(tail, self.http_task).await;
        tracing::info!("score-worker stopped");
    }

    /// Waits for the consumer, then the pipeline, then the letters of what they dead-lettered (the
    /// queue ends once its last handle — the advisory watcher's, ended by `cancel`, and the settled
    /// receipts' — is gone). False if `deadline` came first.
    async fn drain(&mut self, deadline: Instant) -> bool {
        let drain = async {
            let _ = (&mut self.consumer_task).await;
            let _ = (&mut self.pipeline_task).await;
            let _ = (&mut self.deadletter_task).await;
        };
        tokio::time::timeout_at(deadline, drain).await.is_ok()
    }

    /// Past the deadline: letters not stored by now are not stored, and every delivery still held is
    /// handed back, by `tail`.
    async fn hand_back(&mut self, tail: Instant) {
        self.deadletter_task.abort();
        let consumer_task = &mut self.consumer_task;
        let naked = tokio::time::timeout_at(tail, async {
            let naked = self.unsettled.abandon(&self.client, &self.settler).await;
            if !consumer_task.is_finished() {
                let _ = consumer_task.await;
            }
            naked
        })
        .await;
        tracing::warn!(
            naked = ?naked.ok(),
            "drain deadline passed; unsettled deliveries handed back for redelivery"
        );
    }
}
