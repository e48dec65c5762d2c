//! What `run` and `publish-sample` do to the JetStream topology: create what is missing (when
//! `nats.manage_jetstream`), never change what exists. Every setting of an existing stream or consumer
//! that differs from the configuration is reported — a warning, the `score_worker_jetstream_drift`
//! gauge, a `check` line — and the server's value applies; `score-worker nats apply` ([`super::apply`])
//! is the one way the worker changes it. A smaller `max_age` or `max_bytes` deletes stored messages,
//! so no process started with the production configuration may make it as a side effect.

use async_nats::jetstream::{self, consumer::pull, stream};

use super::{
    consumer_config, consumer_drift, deadletter_drift, deadletter_stream_config,
    scores_stream_config, stream_drift, BoxError, Drift, NatsError,
};
use crate::config::NatsConfig;

/// The consumer the worker pulls from, and how the live topology differs from the configuration.
pub struct Topology {
    pub consumer: jetstream::consumer::Consumer<pull::Config>,
    /// Settings on the server that differ from the configuration; the server's values apply.
    pub drift: Vec<Drift>,
}

/// Creates the streams and the consumer where missing (managed) or looks them up (operator-owned,
/// `nats.manage_jetstream = false`), changes nothing that exists, and logs each drift as a warning.
/// The last delivery comes from [`super::max_deliver`] of the returned consumer: the server's.
pub async fn ensure_topology(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<Topology, NatsError> {
    let create = config.manage_jetstream;
    let scores = stream(js, scores_stream_config(config), create).await?;
    let dlq = stream(js, deadletter_stream_config(config), create).await?;
    let want = consumer_config(config);
    let consumer: jetstream::consumer::Consumer<pull::Config> = if create {
        scores
            .get_or_create_consumer(&config.consumer, want.clone())
            .await
            .map_err(|e| consumer_error(config, e.into()))?
    } else {
        scores
            .get_consumer(&config.consumer)
            .await
            .map_err(|e| consumer_error(config, e))?
    };
    let drift: Vec<Drift> =
        stream_drift(&scores_stream_config(config), &scores.cached_info().config)
            .into_iter()
            .chain(deadletter_drift(
                &deadletter_stream_config(config),
                &dlq.cached_info().config,
            ))
            .chain(consumer_drift(&want, &consumer.cached_info().config))
            .collect();
    warn_drift(&drift);
    Ok(Topology { consumer, drift })
}

/// One warning per setting whose server value applies instead of the configuration's.
pub fn warn_drift(drift: &[Drift]) {
    for d in drift {
        tracing::warn!(object = %d.object, field = d.field, server = %d.server, configured = %d.configured,
            destructive = d.effect.unwrap_or(""),
            "the server's setting differs from the configuration and applies; `score-worker nats apply` changes it");
    }
}

/// The stream `want` names: created as `want` if missing and `create`, never changed.
async fn stream(
    js: &jetstream::Context,
    want: stream::Config,
    create: bool,
) -> Result<stream::Stream, NatsError> {
    if !create {
        return get_stream(js, &want.name).await;
    }
    let name = want.name.clone();
    js.get_or_create_stream(want)
        .await
        .map_err(|e| NatsError::Stream {
            stream: name,
            source: e.into(),
        })
}

/// How both streams on the server differ from the configuration.
pub async fn streams_drift(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<Vec<Drift>, NatsError> {
    let scores = get_stream(js, &config.stream).await?;
    let dlq = get_stream(js, &config.deadletter_stream).await?;
    let mut out = stream_drift(&scores_stream_config(config), &scores.cached_info().config);
    out.extend(deadletter_drift(
        &deadletter_stream_config(config),
        &dlq.cached_info().config,
    ));
    Ok(out)
}

/// Every drift between the configuration and the server's streams and consumer (for `check`).
pub async fn drift(js: &jetstream::Context, config: &NatsConfig) -> Result<Vec<Drift>, NatsError> {
    let mut out = streams_drift(js, config).await?;
    let consumer = js
        .get_stream_no_info(&config.stream)
        .await
        .map_err(|e| NatsError::Stream {
            stream: config.stream.clone(),
            source: e.into(),
        })?
        .consumer_info(&config.consumer)
        .await
        .map_err(|e| consumer_error(config, e.into()))?;
    out.extend(consumer_drift(&consumer_config(config), &consumer.config));
    Ok(out)
}

/// What a stream keeps, as the server has it.
pub async fn retention_of(
    js: &jetstream::Context,
    name: &str,
) -> Result<stream::RetentionPolicy, NatsError> {
    Ok(get_stream(js, name).await?.cached_info().config.retention)
}

pub(super) async fn get_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<stream::Stream, NatsError> {
    js.get_stream(name).await.map_err(|e| NatsError::Stream {
        stream: name.to_string(),
        source: e.into(),
    })
}

pub(super) fn consumer_error(config: &NatsConfig, source: BoxError) -> NatsError {
    NatsError::Consumer {
        consumer: config.consumer.clone(),
        source,
    }
}
