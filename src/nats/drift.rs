//! Drift: the settings of a stream or the consumer on the server that differ from what the
//! configuration asks for, compared field by field as people read them.

use async_nats::jetstream::{self, consumer::pull, stream};

/// One setting of a stream or the consumer whose value on the server differs from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// `stream SCORES`, `consumer score-worker`.
    pub object: String,
    pub field: &'static str,
    pub configured: String,
    pub server: String,
    /// NATS can change it on an existing stream or consumer.
    pub in_place: bool,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} is {} on the server, {} in the configuration",
            self.object, self.field, self.server, self.configured
        )
    }
}

/// Collects the fields that differ, formatted for people.
struct Differ {
    object: String,
    out: Vec<Drift>,
}

impl Differ {
    fn new(object: String) -> Self {
        Self {
            object,
            out: Vec::new(),
        }
    }

    fn field<T: PartialEq + std::fmt::Debug>(
        &mut self,
        field: &'static str,
        configured: T,
        server: T,
        in_place: bool,
    ) {
        if configured != server {
            self.out.push(Drift {
                object: self.object.clone(),
                field,
                configured: format!("{configured:?}"),
                server: format!("{server:?}"),
                in_place,
            });
        }
    }
}

/// How the stream on the server differs from `want` in the settings the worker sets.
pub fn stream_drift(want: &stream::Config, have: &stream::Config) -> Vec<Drift> {
    let mut d = Differ::new(format!("stream {}", want.name));
    let sorted = |s: &[String]| {
        let mut s = s.to_vec();
        s.sort();
        s
    };
    d.field(
        "subjects",
        sorted(&want.subjects),
        sorted(&have.subjects),
        true,
    );
    d.field("storage", want.storage, have.storage, false);
    // limits ↔ interest can change in place on NATS 2.10+, nothing else can: treat it as fixed.
    d.field("retention", want.retention, have.retention, false);
    d.field("discard", want.discard, have.discard, true);
    d.field("max_age", want.max_age, have.max_age, true);
    d.field(
        "max_bytes",
        want.max_bytes.max(-1),
        have.max_bytes.max(-1),
        true,
    );
    d.field(
        "duplicate_window",
        want.duplicate_window,
        have.duplicate_window,
        true,
    );
    d.out
}

/// The dead-letter stream's drift: only what [`super::deadletter_stream_config`] sets beyond the defaults.
pub(super) fn deadletter_drift(want: &stream::Config, have: &stream::Config) -> Vec<Drift> {
    let mut d = Differ::new(format!("stream {}", want.name));
    d.field("subjects", &want.subjects, &have.subjects, true);
    d.field("storage", want.storage, have.storage, false);
    d.field("max_age", want.max_age, have.max_age, true);
    d.out
}

/// How the consumer on the server differs from `want`.
pub fn consumer_drift(want: &pull::Config, have: &jetstream::consumer::Config) -> Vec<Drift> {
    let name = want.durable_name.clone().unwrap_or_default();
    let mut d = Differ::new(format!("consumer {name}"));
    d.field("ack_policy", want.ack_policy, have.ack_policy, false);
    d.field("ack_wait", want.ack_wait, have.ack_wait, true);
    d.field("max_deliver", want.max_deliver, have.max_deliver, true);
    d.field(
        "max_ack_pending",
        want.max_ack_pending,
        have.max_ack_pending,
        true,
    );
    d.out
}
