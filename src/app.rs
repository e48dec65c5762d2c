//! Wiring: [`App::build`] connects to NATS and the database, creates what is missing of the JetStream
//! topology (reporting, never changing, what differs from the configuration), prepares
//! statements and binds the HTTP listener; [`App::run_until_stopped`] runs the consumer, pipeline,
//! dead-letter queue, watchers, probes and HTTP server until the shutdown future resolves, then
//! drains within `shutdown.timeout`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use scylla::client::session::Session;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::advisory;
use crate::config::Config;
use crate::consumer::{self, watch, Consumer, Unsettled};
use crate::deadletter::{self, DeadLetterQueue, DeadLetters};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::nats::{self, NatsError};
use crate::pipeline::Pipeline;
use crate::store::{self, ConnectError, ScyllaStore};

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Database(Box<ConnectError>),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl From<ConnectError> for AppError {
    fn from(e: ConnectError) -> Self {
        AppError::Database(Box::new(e))
    }
}

/// A connected, ready-to-run worker.
pub struct App {
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    consumer:
        async_nats::jetstream::consumer::Consumer<async_nats::jetstream::consumer::pull::Config>,
    /// How the live streams and consumer differed from the configuration at start-up.
    drift: Vec<nats::Drift>,
    /// The score stream removes what is acknowledged (work queue): an advised message is deleted
    /// once dead-lettered.
    work_queue: bool,
    session: Arc<Session>,
    store: Arc<ScyllaStore>,
    listener: tokio::net::TcpListener,
}

/// How often readiness and consumer lag are refreshed.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// After the drain deadline: the longest the hand-back (nak) of unsettled deliveries, the probes, the
/// NATS flush and the HTTP server may take, so the process exits within `shutdown.timeout` + 1 s.
const SHUTDOWN_TAIL: Duration = Duration::from_millis(500);

impl App {
    pub async fn build(config: Config) -> Result<App, AppError> {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new(metrics.clone()));
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| AppError::Listen {
                addr: config.http.listen,
                source,
            })?;
        let client = nats::connect(&config.nats, Some(metrics.clone())).await?;
        metrics.nats_connected.set(1);
        let js = nats::jetstream(client.clone(), &config.nats);
        // Creates what is missing; what exists stays as the server has it (drift is reported).
        let topology = nats::ensure_topology(&js, &config.nats).await?;
        metrics
            .jetstream_drift
            .set(i64::try_from(topology.drift.len()).unwrap_or(i64::MAX));
        let (consumer, drift) = (topology.consumer, topology.drift);
        let work_queue = nats::retention_of(&js, &config.nats.stream).await?
            == async_nats::jetstream::stream::RetentionPolicy::WorkQueue;
        let session = match store::connect(&config.scylla).await {
            Ok(session) => Arc::new(session),
            Err(e) => {
                metrics.scylla_connection_failures.inc();
                return Err(e.into());
            }
        };
        let store =
            Arc::new(ScyllaStore::new(session.clone(), &config.scylla, metrics.clone()).await?);
        Ok(App {
            config,
            metrics,
            health,
            client,
            js,
            consumer,
            drift,
            work_queue,
            session,
            store,
            listener,
        })
    }

    /// The bound HTTP address (useful with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Readiness and the pull breaker (tests trip the breaker through it).
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Runs until `shutdown` resolves, then stops pulling, writes and settles what it holds (bounded by
    /// `shutdown.timeout`), and closes the connections. Whatever is not settled by the deadline is
    /// nak'd, so NATS redelivers it to another replica at once (the writes are idempotent); the
    /// process exits at most [`SHUTDOWN_TAIL`] after the deadline, even with NATS unreachable.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        let App {
            config,
            metrics,
            health,
            client,
            js,
            consumer,
            drift,
            work_queue,
            session,
            store,
            listener,
        } = self;
        let cancel = CancellationToken::new();
        let http_cancel = CancellationToken::new();

        // A letter keeps at most the validation limit of its payload, and always fits the server.
        let keep = deadletter::payload_kept(
            config.validation.max_payload_bytes,
            client.server_info().max_payload,
        );
        let deadletters = Arc::new(DeadLetters::new(
            js.clone(),
            &config.nats.deadletter_prefix,
            &config.nats.deadletter_stream,
            keep,
            metrics.clone(),
        ));
        let (deadletter_queue, deadletter_runner) = DeadLetterQueue::new(
            deadletters,
            deadletter::Source {
                js: js.clone(),
                stream: config.nats.stream.clone(),
                delete: work_queue,
                limits: config.limits(),
            },
            config.nats.pull_batch,
            health.clone(),
            metrics.clone(),
        );
        let mut deadletter_task = tokio::spawn(deadletter_runner.run());
        let (tx, rx) = mpsc::channel(crate::consumer::channel_capacity(config.nats.pull_batch));
        // The last delivery is the server's `max_deliver` (operators may own the consumer).
        let mut pipeline_config = config.pipeline();
        pipeline_config.max_deliver = nats::max_deliver(&consumer);
        let pipeline = Pipeline::new(store, pipeline_config, metrics.clone(), health.clone());
        let settler = pipeline.settler().clone();
        let mut pipeline_task = tokio::spawn(pipeline.run(rx));
        let unsettled = Arc::new(Unsettled::new(metrics.unsettled.clone()));
        let signals = Arc::new(watch::Signals::default());
        // An operator-owned consumer may cap the bytes of a pull request.
        let pull_max_bytes = match consumer.cached_info().config.max_bytes {
            cap if cap > 0 => usize::try_from(cap).unwrap_or(usize::MAX),
            _ => usize::MAX,
        }
        .min(consumer::pull_max_bytes(
            config.nats.pull_batch,
            config.validation.max_payload_bytes,
        ));
        let mut consumer_task = tokio::spawn(
            Consumer {
                consumer: consumer.clone(),
                context: js.clone(),
                pull_batch: config.nats.pull_batch,
                pull_max_bytes,
                limits: config.limits(),
                settler: settler.clone(),
                deadletters: deadletter_queue.clone(),
                confirm_acks: config.nats.confirm_acks,
                metrics: metrics.clone(),
                breaker: health.breaker(),
                unsettled: unsettled.clone(),
                signals: signals.clone(),
            }
            .run(tx, cancel.clone()),
        );
        // Every delivery held, wherever it waits, gets `+WPI` until it is settled or handed back.
        let held_done = CancellationToken::new();
        let keep_alive = tokio::spawn(unsettled.clone().keep_alive(
            client.clone(),
            config.retry.progress_interval,
            held_done.clone(),
        ));
        let mut background = tokio::task::JoinSet::new();
        background.spawn(advisory::watch_max_deliveries(
            client.clone(),
            config.nats.stream.clone(),
            config.nats.consumer.clone(),
            deadletter_queue,
            settler.clone(),
            cancel.clone(),
        ));
        background.spawn(
            watch::Watch {
                js: js.clone(),
                config: config.nats.clone(),
                health: health.clone(),
                settler,
                metrics: metrics.clone(),
                signals,
                interval: PROBE_INTERVAL,
                reported: drift,
            }
            .run(cancel.clone()),
        );
        background.spawn(health.clone().probe(
            client.clone(),
            session,
            config.scylla.clone(),
            PROBE_INTERVAL,
            cancel.clone(),
        ));
        let router = crate::http::router(metrics, health.clone());
        let http_stop = http_cancel.clone();
        let http_task = tokio::spawn(async move {
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(async move { http_stop.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        tracing::info!(stream = %config.nats.stream, consumer = %config.nats.consumer, "score-worker running");

        shutdown.await;
        let deadline = tokio::time::Instant::now() + config.shutdown.timeout;
        tracing::info!(timeout = ?config.shutdown.timeout, "shutting down: no more pulls; writing what is buffered");
        health.set_draining();
        cancel.cancel();
        // Then the letters of what they dead-lettered: the queue ends once its last handle (the
        // advisory watcher's, ended by `cancel`, and the settled receipts') is gone.
        let drain = async {
            let _ = (&mut consumer_task).await;
            let _ = (&mut pipeline_task).await;
            let _ = (&mut deadletter_task).await;
        };
        let drained = tokio::time::timeout_at(deadline, drain).await.is_ok();
        // Past the deadline every step is bounded by SHUTDOWN_TAIL, whatever NATS or the database do.
        let tail = tokio::time::Instant::now() + SHUTDOWN_TAIL;
        held_done.cancel();
        keep_alive.abort();
        if !drained {
            // Letters not stored by now are not stored: their originals are handed back below.
            deadletter_task.abort();
            let naked = tokio::time::timeout_at(tail, async {
                let naked = unsettled.abandon(&client).await;
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
        let _ = tokio::time::timeout_at(tail, async {
            while background.join_next().await.is_some() {}
        })
        .await;
        background.abort_all();
        match tokio::time::timeout_at(tail, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "NATS flush on shutdown failed"),
            Err(_) => tracing::warn!("NATS flush on shutdown timed out"),
        }
        http_cancel.cancel();
        let _ = tokio::time::timeout_at(tail, http_task).await;
        tracing::info!("score-worker stopped");
    }
}
