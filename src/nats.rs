//! NATS connection and JetStream topology: the `SCORES` stream, the `SCORES_DLQ` stream and the
//! shared durable pull consumer.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, stream};
use async_nats::{Client, ConnectOptions, Event};
use secrecy::ExposeSecret;

use crate::config::{NatsAuth, NatsConfig};
use crate::metrics::Metrics;

/// One of async-nats' many JetStream error types (each API call has its own).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A NATS or JetStream set-up failure.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot read NATS credentials file {path}: {source}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("JetStream stream `{stream}`: {source}")]
    Stream {
        stream: String,
        #[source]
        source: BoxError,
    },
    #[error("JetStream consumer `{consumer}`: {source}")]
    Consumer {
        consumer: String,
        #[source]
        source: BoxError,
    },
}

/// Connects with the configured auth and TLS. `metrics` (if given) tracks the connection state.
pub async fn connect(
    config: &NatsConfig,
    metrics: Option<Arc<Metrics>>,
) -> Result<Client, NatsError> {
    // aws-lc-rs is the one rustls crypto provider compiled in (the database driver enables it; ring is
    // not built). Installing it as the process default keeps async-nats' TLS from depending on
    // rustls' feature detection. Idempotent.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut options = match &config.auth {
        NatsAuth::CredentialsFile(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| NatsError::Credentials {
                path: path.display().to_string(),
                source,
            })?,
        NatsAuth::NKey(seed) => ConnectOptions::with_nkey(seed.expose_secret().to_owned()),
        NatsAuth::Token(token) => ConnectOptions::with_token(token.expose_secret().to_owned()),
        NatsAuth::UserPassword { user, password } => ConnectOptions::with_user_and_password(
            user.clone(),
            password.expose_secret().to_owned(),
        ),
        NatsAuth::None => ConnectOptions::new(),
    };
    options = options
        .name(&config.client_name)
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        .max_reconnects(None);
    let tls = &config.tls;
    if tls.enabled {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = tls.client_cert() {
            options = options.add_client_certificate(cert.to_path_buf(), key.to_path_buf());
        }
    }
    if let Some(metrics) = metrics {
        options = options.event_callback(move |event| {
            let metrics = metrics.clone();
            async move {
                match event {
                    Event::Connected => {
                        metrics.nats_connected.set(1);
                        tracing::info!("NATS connected");
                    }
                    Event::Disconnected => {
                        metrics.nats_connected.set(0);
                        tracing::warn!("NATS disconnected; reconnecting");
                    }
                    Event::Closed => metrics.nats_connected.set(0),
                    other => tracing::warn!(event = %other, "NATS event"),
                }
            }
        });
    }
    let client = options
        .connect(&config.url)
        .await
        .map_err(|source| NatsError::Connect {
            url: crate::config::redact_url(&config.url),
            source,
        })?;
    Ok(client)
}

/// A JetStream context bounded by `request_timeout`.
pub fn jetstream(client: Client, config: &NatsConfig) -> jetstream::Context {
    let mut js = jetstream::new(client);
    js.set_timeout(config.request_timeout);
    js
}

/// The score stream's configuration.
pub fn scores_stream_config(config: &NatsConfig) -> stream::Config {
    stream::Config {
        name: config.stream.clone(),
        subjects: config.subjects.clone(),
        storage: stream::StorageType::File,
        duplicate_window: config.duplicate_window,
        // Never delete unconsumed updates to make room: publishers get an error instead.
        discard: stream::DiscardPolicy::New,
        description: Some("Score updates from the gateway, consumed by score-worker".into()),
        ..Default::default()
    }
}

/// The dead-letter stream's configuration.
pub fn deadletter_stream_config(config: &NatsConfig) -> stream::Config {
    stream::Config {
        name: config.deadletter_stream.clone(),
        subjects: vec![format!("{}.>", config.deadletter_prefix)],
        storage: stream::StorageType::File,
        duplicate_window: config.duplicate_window,
        max_age: config.deadletter_max_age,
        description: Some("Score updates score-worker could not accept, by reason".into()),
        ..Default::default()
    }
}

/// The durable consumer's configuration.
pub fn consumer_config(config: &NatsConfig) -> pull::Config {
    pull::Config {
        durable_name: Some(config.consumer.clone()),
        description: Some("score-worker replicas; explicit ack after the database write".into()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_deliver: config.max_deliver,
        max_ack_pending: config.max_ack_pending,
        ..Default::default()
    }
}

/// Creates (or, when not managing, looks up) both streams and the consumer; returns the consumer.
pub async fn ensure_topology(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<jetstream::consumer::Consumer<pull::Config>, NatsError> {
    let stream_err = |name: &str, e: BoxError| NatsError::Stream {
        stream: name.to_string(),
        source: e,
    };
    let stream = if config.manage_jetstream {
        js.get_or_create_stream(scores_stream_config(config))
            .await
            .map_err(|e| stream_err(&config.stream, e.into()))?;
        js.get_or_create_stream(deadletter_stream_config(config))
            .await
            .map_err(|e| stream_err(&config.deadletter_stream, e.into()))?;
        js.get_stream(&config.stream)
            .await
            .map_err(|e| stream_err(&config.stream, e.into()))?
    } else {
        js.get_stream(&config.deadletter_stream)
            .await
            .map_err(|e| stream_err(&config.deadletter_stream, e.into()))?;
        js.get_stream(&config.stream)
            .await
            .map_err(|e| stream_err(&config.stream, e.into()))?
    };
    let consumer_err = |e: BoxError| NatsError::Consumer {
        consumer: config.consumer.clone(),
        source: e,
    };
    let consumer = if config.manage_jetstream {
        stream
            .get_or_create_consumer(&config.consumer, consumer_config(config))
            .await
            .map_err(|e| consumer_err(e.into()))?
    } else {
        stream
            .get_consumer(&config.consumer)
            .await
            .map_err(consumer_err)?
    };
    let actual = &consumer.cached_info().config;
    if actual.ack_wait != config.ack_wait || actual.max_deliver != config.max_deliver {
        tracing::warn!(
            consumer = %config.consumer,
            ack_wait = ?actual.ack_wait,
            max_deliver = actual.max_deliver,
            "the existing consumer's settings differ from the configuration; the server's settings apply"
        );
    }
    Ok(consumer)
}

/// Lifetime of one pull request: how long an idle worker waits for messages before asking again,
/// and the longest a shutdown waits for the request in flight to end.
pub const PULL_EXPIRES: Duration = Duration::from_secs(1);
