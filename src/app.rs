//! Wiring: [`App::build`] connects to NATS and the database, ensures the JetStream topology, prepares
//! statements and binds the HTTP listener; [`App::run_until_stopped`] runs the consumer, pipeline,
//! probes and HTTP server until the shutdown future resolves, then drains within `shutdown.timeout`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use scylla::client::session::Session;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::advisory;
use crate::config::Config;
use crate::consumer::{Consumer, Unsettled};
use crate::deadletter::DeadLetters;
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
        let consumer = nats::ensure_topology(&js, &config.nats).await?;
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
            session,
            store,
            listener,
        } = self;
        let cancel = CancellationToken::new();
        let http_cancel = CancellationToken::new();

        let deadletters = Arc::new(DeadLetters::new(
            js.clone(),
            &config.nats.deadletter_prefix,
            &config.nats.deadletter_stream,
            metrics.clone(),
        ));
        let (tx, rx) = mpsc::channel(crate::consumer::channel_capacity(config.nats.pull_batch));
        // The last delivery is the server's `max_deliver` (operators may own the consumer).
        let mut pipeline_config = config.pipeline();
        pipeline_config.max_deliver = nats::max_deliver(&consumer);
        let pipeline = Pipeline::new(store, pipeline_config, metrics.clone(), health.clone());
        let settler = pipeline.settler().clone();
        let mut pipeline_task = tokio::spawn(pipeline.run(rx));
        let unsettled = Arc::new(Unsettled::default());
        let mut consumer_task = tokio::spawn(
            Consumer {
                consumer: consumer.clone(),
                pull_batch: config.nats.pull_batch,
                limits: config.limits(),
                settler: settler.clone(),
                deadletters: deadletters.clone(),
                metrics: metrics.clone(),
                health: health.clone(),
                unsettled: unsettled.clone(),
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
        if let Ok(stream) = js.get_stream(&config.nats.stream).await {
            background.spawn(advisory::watch_max_deliveries(
                client.clone(),
                stream,
                config.nats.consumer.clone(),
                deadletters,
                settler.limits(),
                cancel.clone(),
            ));
        }
        background.spawn(health.clone().probe(
            client.clone(),
            consumer,
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
        let drain = async {
            let _ = (&mut consumer_task).await;
            let _ = (&mut pipeline_task).await;
        };
        let drained = tokio::time::timeout_at(deadline, drain).await.is_ok();
        // Past the deadline every step is bounded by SHUTDOWN_TAIL, whatever NATS or the database do.
        let tail = tokio::time::Instant::now() + SHUTDOWN_TAIL;
        held_done.cancel();
        keep_alive.abort();
        if !drained {
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
