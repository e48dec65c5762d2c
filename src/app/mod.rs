//! Wiring: [`App::build`] connects to NATS and the database, creates what is missing of the JetStream
//! topology (reporting, never changing, what differs from the configuration), prepares
//! statements and binds the HTTP listener; [`App::start`] starts the consumer, pipeline, dead-letter
//! queue, watchers, probes and HTTP server and returns a [`Running`] handle, whose [`Running::stop`]
//! drains within `shutdown.timeout` ([`running`]).

mod running;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use scylla::client::session::Session;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::advisory;
use crate::breaker::Breaker;
use crate::config::Config;
use crate::consumer::{self, watch, Consumer, Unsettled};
use crate::deadletter::{self, DeadLetterQueue, DeadLetters};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::nats::{self, NatsError};
use crate::pipeline::{Pipeline, Settler};
use crate::store::{self, ConnectError, ScyllaStore};
pub use running::Running;

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Database(Box<ConnectError>),
    #[error("cannot listen on {addr}")]
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
    /// The pull breaker: the pipeline trips it, the consumer obeys it, readiness reads it.
    breaker: Arc<Breaker>,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    consumer: JsConsumer,
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

type JsConsumer =
    async_nats::jetstream::consumer::Consumer<async_nats::jetstream::consumer::pull::Config>;

impl App {
    pub async fn build(config: Config) -> Result<App, AppError> {
        let metrics = Arc::new(Metrics::new());
        let breaker = Arc::new(Breaker::new(metrics.clone()));
        let health = Arc::new(Health::new(metrics.clone(), breaker.clone()));
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
            breaker,
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

    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Runs until `shutdown` resolves, then [`Running::stop`]s.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        let running = self.start();
        shutdown.await;
        running.stop().await;
    }

    /// Starts the dead-letter queue, the pipeline, the consumer, the keep-alive of held deliveries,
    /// the watchers, the probes and the HTTP server; returns the handle that stops them.
    pub fn start(self) -> Running {
        let App {
            config,
            metrics,
            health,
            breaker,
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
        let (deadletter_queue, deadletter_task) =
            start_deadletters(&config, &client, &js, work_queue, &health, &metrics);
        let (tx, rx) = mpsc::channel(crate::consumer::channel_capacity(config.nats.pull_batch));
        // The last delivery is the server's `max_deliver` (operators may own the consumer).
        let mut pipeline_config = config.pipeline();
        pipeline_config.max_deliver = nats::max_deliver(&consumer);
        let pipeline = Pipeline::new(store, pipeline_config, metrics.clone(), breaker.clone());
        let settler = pipeline.settler().clone();
        let pipeline_task = tokio::spawn(pipeline.run(rx));
        let unsettled = Arc::new(Unsettled::new(metrics.unsettled.clone()));
        let signals = Arc::new(watch::Signals::default());
        let consumer_task = tokio::spawn(
            Consumer {
                pull_max_bytes: pull_max_bytes(&consumer, &config),
                consumer,
                context: js.clone(),
                pull_batch: config.nats.pull_batch,
                limits: config.limits(),
                settler: settler.clone(),
                deadletters: deadletter_queue.clone(),
                confirm_acks: config.nats.confirm_acks,
                metrics: metrics.clone(),
                breaker,
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
        let watchers = Watchers {
            config: &config,
            client: &client,
            health: &health,
            settler: &settler,
            cancel: &cancel,
        };
        let mut background = watchers.nats(js, deadletter_queue, &metrics, signals, drift);
        background.spawn(watchers.database(session));
        let (http_task, http_cancel) = serve_http(listener, metrics, health.clone());
        tracing::info!(stream = %config.nats.stream, consumer = %config.nats.consumer, "score-worker running");
        Running {
            timeout: config.shutdown.timeout,
            health,
            client,
            settler,
            unsettled,
            cancel,
            consumer_task,
            pipeline_task,
            deadletter_task,
            held_done,
            keep_alive,
            background,
            http_task,
            http_cancel,
        }
    }
}

/// What the background watchers share; each ends when `cancel` fires.
struct Watchers<'a> {
    config: &'a Config,
    client: &'a async_nats::Client,
    health: &'a Arc<Health>,
    settler: &'a Settler,
    cancel: &'a CancellationToken,
}

impl Watchers<'_> {
    /// The max-deliveries advisories (dead-lettered from the stream) and the consumer's watcher (its
    /// settings, lag, drift and readability).
    fn nats(
        &self,
        js: async_nats::jetstream::Context,
        deadletters: DeadLetterQueue,
        metrics: &Arc<Metrics>,
        signals: Arc<watch::Signals>,
        drift: Vec<nats::Drift>,
    ) -> JoinSet<()> {
        let mut set = JoinSet::new();
        set.spawn(advisory::watch_max_deliveries(
            self.client.clone(),
            self.config.nats.stream.clone(),
            self.config.nats.consumer.clone(),
            deadletters,
            self.settler.clone(),
            self.cancel.clone(),
        ));
        set.spawn(
            watch::Watch {
                js,
                config: self.config.nats.clone(),
                health: self.health.clone(),
                settler: self.settler.clone(),
                metrics: metrics.clone(),
                signals,
                interval: PROBE_INTERVAL,
                reported: drift,
            }
            .run(self.cancel.clone()),
        );
        set
    }

    /// Readiness: NATS, the database and the schema, every [`PROBE_INTERVAL`].
    fn database(&self, session: Arc<Session>) -> impl Future<Output = ()> + Send + 'static {
        self.health.clone().probe(
            self.client.clone(),
            session,
            self.config.scylla.clone(),
            PROBE_INTERVAL,
            self.cancel.clone(),
        )
    }
}

/// The dead-letter queue and the task that stores its letters. A letter keeps at most the validation
/// limit of its payload, and always fits the server.
fn start_deadletters(
    config: &Config,
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    work_queue: bool,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> (DeadLetterQueue, JoinHandle<()>) {
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
    let (queue, runner) = DeadLetterQueue::new(
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
    (queue, tokio::spawn(runner.run()))
}

/// The bytes one pull may ask for: a full batch of the largest accepted messages, or less if an
/// operator-owned consumer caps it.
fn pull_max_bytes(consumer: &JsConsumer, config: &Config) -> usize {
    let cap = match consumer.cached_info().config.max_bytes {
        cap if cap > 0 => usize::try_from(cap).unwrap_or(usize::MAX),
        _ => usize::MAX,
    };
    cap.min(consumer::pull_max_bytes(
        config.nats.pull_batch,
        config.validation.max_payload_bytes,
    ))
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the returned token is cancelled.
fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> (JoinHandle<()>, CancellationToken) {
    let router = crate::http::router(metrics, health);
    let stop = CancellationToken::new();
    let cancelled = stop.clone();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, router)
            .with_graceful_shutdown(async move { cancelled.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %crate::error_chain(&e), "HTTP server failed");
        }
    });
    (task, stop)
}
