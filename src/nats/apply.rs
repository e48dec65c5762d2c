//! `score-worker nats apply [--dry-run]`: the one way the worker changes an existing stream or
//! consumer. [`plan`] reads them and lists every change — a missing one created, each drifted setting
//! brought to the configuration, with what it destroys — and [`Plan::apply`] makes exactly those:
//! it patches the named keys of the server's own configuration (so replicas, compression, metadata
//! and every setting the worker does not manage stay as they are) and refuses everything when one
//! change cannot be made in place.

use async_nats::jetstream::{self, consumer::IntoConsumerConfig, response::Response, stream};
use serde_json::Value;

use super::{
    consumer_config, consumer_drift, deadletter_drift, deadletter_stream_config,
    scores_stream_config, stream_drift, topology::get_stream, Drift, NatsError,
};
use crate::config::NatsConfig;

/// One change `nats apply` makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A stream or the consumer is missing: created as configured.
    Create(String),
    /// A setting of an existing one brought to the configuration.
    Set(Drift),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Create(object) => write!(f, "create {object} as configured"),
            Change::Set(d) => {
                write!(f, "{d}")?;
                match (d.in_place, d.effect) {
                    (false, _) => write!(f, " (NATS cannot change this in place)"),
                    (true, Some(effect)) => write!(f, " (destructive: {effect})"),
                    (true, None) => Ok(()),
                }
            }
        }
    }
}

/// One stream or the consumer: its configuration as the server returned it (`None`: missing) and
/// how it differs from the configuration.
struct Object {
    live: Option<Value>,
    drift: Vec<Drift>,
}

/// What `nats apply` would change.
pub struct Plan {
    scores: Object,
    dlq: Object,
    consumer: Object,
    pub changes: Vec<Change>,
}

impl Plan {
    /// The changes NATS cannot make in place: while there is one, [`Plan::apply`] changes nothing.
    pub fn blocked(&self) -> Vec<Drift> {
        self.changes
            .iter()
            .filter_map(|c| match c {
                Change::Set(d) if !d.in_place => Some(d.clone()),
                _ => None,
            })
            .collect()
    }

    /// Makes the planned changes: streams first, then the consumer.
    pub async fn apply(
        self,
        js: &jetstream::Context,
        config: &NatsConfig,
    ) -> Result<(), NatsError> {
        let blocked = self.blocked();
        if !blocked.is_empty() {
            return Err(NatsError::Drift { drift: blocked });
        }
        for (object, want) in [
            (&self.scores, scores_stream_config(config)),
            (&self.dlq, deadletter_stream_config(config)),
        ] {
            apply_stream(js, object, want).await?;
        }
        let want = consumer_config(config);
        match &self.consumer.live {
            None => {
                get_stream(js, &config.stream)
                    .await?
                    .create_consumer(want)
                    .await
                    .map_err(|e| super::topology::consumer_error(config, e.into()))?;
            }
            Some(_) if self.consumer.drift.is_empty() => {}
            Some(live) => {
                let patched = patch(
                    live,
                    &json(want.into_consumer_config()),
                    &self.consumer.drift,
                );
                let filter = match patched["filter_subject"].as_str() {
                    Some(f) if !f.is_empty() => format!(".{f}"),
                    _ => String::new(),
                };
                let subject = format!(
                    "CONSUMER.CREATE.{}.{}{filter}",
                    config.stream, config.consumer
                );
                let body = serde_json::json!({ "stream_name": config.stream, "config": patched });
                request(js, subject, &body, &self.consumer.drift).await?;
            }
        }
        Ok(())
    }
}

/// Reads both streams and the consumer and lists what [`Plan::apply`] would change.
pub async fn plan(js: &jetstream::Context, config: &NatsConfig) -> Result<Plan, NatsError> {
    let scores = read_stream(js, scores_stream_config(config), stream_drift).await?;
    let dlq = read_stream(js, deadletter_stream_config(config), deadletter_drift).await?;
    let want = consumer_config(config);
    let consumer = match scores.live {
        None => None,
        Some(_) => {
            read(
                js,
                format!("CONSUMER.INFO.{}.{}", config.stream, config.consumer),
                |e| super::topology::consumer_error(config, e),
            )
            .await?
        }
    };
    let consumer = match consumer {
        None => Object {
            live: None,
            drift: Vec::new(),
        },
        Some(live) => Object {
            drift: consumer_drift(
                &want,
                &typed(&live, |e| super::topology::consumer_error(config, e))?,
            ),
            live: Some(live),
        },
    };
    let mut changes = Vec::new();
    for (object, name) in [
        (&scores, format!("stream {}", config.stream)),
        (&dlq, format!("stream {}", config.deadletter_stream)),
        (&consumer, format!("consumer {}", config.consumer)),
    ] {
        if object.live.is_none() {
            changes.push(Change::Create(name));
        }
        changes.extend(object.drift.iter().cloned().map(Change::Set));
    }
    Ok(Plan {
        scores,
        dlq,
        consumer,
        changes,
    })
}

async fn read_stream(
    js: &jetstream::Context,
    want: stream::Config,
    drift_of: fn(&stream::Config, &stream::Config) -> Vec<Drift>,
) -> Result<Object, NatsError> {
    let error = |source| NatsError::Stream {
        stream: want.name.clone(),
        source,
    };
    let live = read(js, format!("STREAM.INFO.{}", want.name), &error).await?;
    let drift = match &live {
        Some(live) => drift_of(&want, &typed(live, error)?),
        None => Vec::new(),
    };
    Ok(Object { live, drift })
}

async fn apply_stream(
    js: &jetstream::Context,
    object: &Object,
    want: stream::Config,
) -> Result<(), NatsError> {
    match &object.live {
        None => {
            let name = want.name.clone();
            js.create_stream(want)
                .await
                .map_err(|e| NatsError::Stream {
                    stream: name,
                    source: e.into(),
                })?;
        }
        Some(_) if object.drift.is_empty() => {}
        Some(live) => {
            let patched = patch(live, &json(&want), &object.drift);
            request(
                js,
                format!("STREAM.UPDATE.{}", want.name),
                &patched,
                &object.drift,
            )
            .await?;
        }
    }
    Ok(())
}

/// The `config` object of a JetStream info request's answer; `None` when the server has no such
/// stream or consumer (404).
async fn read(
    js: &jetstream::Context,
    subject: String,
    error: impl Fn(super::BoxError) -> NatsError,
) -> Result<Option<Value>, NatsError> {
    let response: Response<Value> = js
        .request(subject, &serde_json::json!({}))
        .await
        .map_err(|e| error(Box::new(e)))?;
    match response {
        Response::Ok(mut info) => Ok(Some(info["config"].take())),
        Response::Err { error: e } if e.code() == 404 => Ok(None),
        Response::Err { error: e } => Err(error(Box::new(e))),
    }
}

/// A configuration as the client types it, to compare with the configuration.
fn typed<T: serde::de::DeserializeOwned>(
    live: &Value,
    error: impl Fn(super::BoxError) -> NatsError,
) -> Result<T, NatsError> {
    T::deserialize(live).map_err(|e| error(Box::new(e)))
}

/// An update request; the server's refusal names the drift it was to apply.
async fn request(
    js: &jetstream::Context,
    subject: String,
    body: &Value,
    drift: &[Drift],
) -> Result<(), NatsError> {
    let failed = |source: super::BoxError| NatsError::Update {
        drift: drift.to_vec(),
        source,
    };
    let response: Response<Value> = js
        .request(subject, body)
        .await
        .map_err(|e| failed(Box::new(e)))?;
    match response {
        Response::Ok(_) => Ok(()),
        Response::Err { error } => Err(failed(Box::new(error))),
    }
}

fn json(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("a JetStream configuration serializes")
}

/// The server's configuration `live` with the drifted keys taken from `want` (a key `want` leaves
/// out is its default: removed).
fn patch(live: &Value, want: &Value, drift: &[Drift]) -> Value {
    let mut out = live.clone();
    if let Some(fields) = out.as_object_mut() {
        for d in drift {
            match want.get(d.field) {
                Some(v) => fields.insert(d.field.to_string(), v.clone()),
                None => fields.remove(d.field),
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drift(field: &'static str) -> Drift {
        Drift {
            object: "stream S".into(),
            field,
            configured: String::new(),
            server: String::new(),
            in_place: true,
            effect: None,
        }
    }

    #[test]
    fn a_patch_changes_the_drifted_keys_and_keeps_everything_else_the_server_has() {
        let live = serde_json::json!({
            "name": "S", "max_age": 3_600_000_000_000u64, "num_replicas": 3, "compression": "s2",
            "metadata": {"owner": "ops"}, "duplicate_window": 120_000_000_000u64, "max_bytes": -1,
        });
        let want = json(stream::Config {
            name: "S".into(),
            max_age: std::time::Duration::from_secs(2),
            max_bytes: 1024,
            ..Default::default()
        });
        let patched = patch(
            &live,
            &want,
            &[
                drift("max_age"),
                drift("max_bytes"),
                drift("duplicate_window"),
            ],
        );
        assert_eq!(
            patched,
            serde_json::json!({
                "name": "S", "max_age": 2_000_000_000u64, "num_replicas": 3, "compression": "s2",
                "metadata": {"owner": "ops"}, "max_bytes": 1024,
            })
        );
    }
}
