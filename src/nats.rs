//! NATS connection and JetStream topology: the `SCORES` stream, the `SCORES_DLQ` stream and the
//! shared durable pull consumer, as the configuration describes them.
//!
//! - `topology`: what `run` does — create what is missing, change nothing, report drift;
//! - [`apply`]: `score-worker nats apply` — bring what exists to the configuration, said first;
//! - `drift`: how the server's settings differ from the configuration.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, stream};
use async_nats::{Client, ConnectOptions, Event};
use secrecy::ExposeSecret;

use crate::config::{NatsAuth, NatsConfig, Retention};

pub mod apply;
mod drift;
mod topology;

use crate::metrics::Metrics;
use drift::deadletter_drift;
pub use drift::{consumer_drift, stream_drift, Drift};
pub use topology::{drift, ensure_topology, retention_of, streams_drift, warn_drift, Topology};

/// One of async-nats' many JetStream error types (each API call has its own).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A NATS or JetStream set-up failure.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot read NATS credentials file {path}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("JetStream stream `{stream}`")]
    Stream {
        stream: String,
        #[source]
        source: BoxError,
    },
    #[error("JetStream consumer `{consumer}`")]
    Consumer {
        consumer: String,
        #[source]
        source: BoxError,
    },
    /// The server cannot change these settings of an existing stream or consumer in place
    /// (`nats apply` changes nothing then).
    #[error("{}; NATS cannot change this in place: recreate it (docs/runbooks/nats-jetstream-storage-near-limit.md) or align the configuration", list(drift))]
    Drift { drift: Vec<Drift> },
    /// The server refused to bring a stream or consumer to the configuration.
    #[error("updating {}", list(drift))]
    Update {
        drift: Vec<Drift>,
        #[source]
        source: BoxError,
    },
}

fn list(drift: &[Drift]) -> String {
    drift
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
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
        .connect(server_urls(&config.url))
        .await
        .map_err(|source| NatsError::Connect {
            url: crate::config::redact_url(&config.url),
            source,
        })?;
    Ok(client)
}

/// The servers of `nats.url`, comma separated (async-nats parses a string as one URL).
fn server_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
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
        // What the consumer acknowledged is deleted (work queue); the limits are a safety net.
        retention: retention(config.retention),
        max_age: config.max_age,
        max_bytes: byte_limit(config.max_bytes),
        // Never delete unconsumed updates to make room: publishers get an error instead.
        discard: stream::DiscardPolicy::New,
        description: Some("Score updates from the gateway, consumed by score-worker".into()),
        ..Default::default()
    }
}

fn retention(r: Retention) -> stream::RetentionPolicy {
    match r {
        Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
        Retention::Interest => stream::RetentionPolicy::Interest,
        Retention::Limits => stream::RetentionPolicy::Limits,
    }
}

/// `0` (none) is the server's `-1`.
fn byte_limit(bytes: u64) -> i64 {
    if bytes == 0 {
        -1
    } else {
        i64::try_from(bytes).unwrap_or(i64::MAX)
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

/// The delivery after which the server delivers a message no more: the consumer's `max_deliver`
/// as the server has it (unlimited, -1, is `i64::MAX`).
pub fn max_deliver(consumer: &jetstream::consumer::Consumer<pull::Config>) -> i64 {
    max_deliver_of(&consumer.cached_info().config)
}

/// [`max_deliver`] of a consumer's configuration as the server reports it.
pub fn max_deliver_of(config: &jetstream::consumer::Config) -> i64 {
    match config.max_deliver {
        n if n > 0 => n,
        _ => i64::MAX,
    }
}

/// Lifetime of one pull request: how long an idle worker waits for messages before asking again,
/// and the longest a shutdown waits for the request in flight to end.
pub const PULL_EXPIRES: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_of_a_comma_separated_url_is_a_seed() {
        assert_eq!(
            server_urls("nats://127.0.0.1:4501, nats://127.0.0.1:4502,,nats://127.0.0.1:4503"),
            [
                "nats://127.0.0.1:4501",
                "nats://127.0.0.1:4502",
                "nats://127.0.0.1:4503"
            ]
        );
        assert_eq!(server_urls("tls://h:4222"), ["tls://h:4222"]);
    }
}
