//! Drift: the settings of a stream or the consumer on the server that differ from what the
//! configuration asks for, compared field by field as people read them, each with what bringing it
//! to the configuration would do. Field names are the JetStream API's (`score-worker nats apply`
//! patches exactly these keys of the server's configuration).

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
    /// What applying the configured value would destroy, if anything: stored messages deleted,
    /// publishes no longer stored, duplicates let in.
    pub effect: Option<&'static str>,
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
        self.field_with(field, configured, server, in_place, None);
    }

    /// A field whose change to the configured value would have `effect` (`None`: harmless).
    fn field_with<T: PartialEq + std::fmt::Debug>(
        &mut self,
        field: &'static str,
        configured: T,
        server: T,
        in_place: bool,
        effect: Option<&'static str>,
    ) {
        if configured != server {
            self.out.push(Drift {
                object: self.object.clone(),
                field,
                configured: format!("{configured:?}"),
                server: format!("{server:?}"),
                in_place,
                effect,
            });
        }
    }
}

/// `effect` if the configured limit is tighter than the server's (a limit ≤ 0 is none).
fn tighter(configured: i64, server: i64, effect: &'static str) -> Option<&'static str> {
    (configured > 0 && (server <= 0 || configured < server)).then_some(effect)
}

/// How the stream on the server differs from `want` in the settings the worker sets.
pub fn stream_drift(want: &stream::Config, have: &stream::Config) -> Vec<Drift> {
    let mut d = Differ::new(format!("stream {}", want.name));
    let sorted = |s: &[String]| {
        let mut s = s.to_vec();
        s.sort();
        s
    };
    let removed = have.subjects.iter().any(|s| !want.subjects.contains(s));
    d.field_with(
        "subjects",
        sorted(&want.subjects),
        sorted(&have.subjects),
        true,
        removed.then_some("publishes to the removed subjects are no longer stored"),
    );
    d.field("storage", want.storage, have.storage, false);
    // limits ↔ interest can change in place on NATS 2.10+, nothing else can: treat it as fixed.
    d.field("retention", want.retention, have.retention, false);
    let to_old = want.discard == stream::DiscardPolicy::Old;
    d.field_with(
        "discard",
        want.discard,
        have.discard,
        true,
        to_old.then_some("at a limit the oldest messages are deleted instead of publishes refused"),
    );
    d.field_with(
        "max_age",
        want.max_age,
        have.max_age,
        true,
        tighter(
            nanos(want.max_age),
            nanos(have.max_age),
            "stored messages older than the new max_age are deleted",
        ),
    );
    d.field_with(
        "max_bytes",
        want.max_bytes.max(-1),
        have.max_bytes.max(-1),
        true,
        tighter(
            want.max_bytes,
            have.max_bytes,
            "the oldest stored messages beyond the new max_bytes are deleted",
        ),
    );
    d.field_with(
        "duplicate_window",
        want.duplicate_window,
        have.duplicate_window,
        true,
        (want.duplicate_window < have.duplicate_window)
            .then_some("a message published again after the new window is stored twice"),
    );
    d.out
}

fn nanos(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The dead-letter stream's drift: only what [`super::deadletter_stream_config`] sets beyond the defaults.
pub(super) fn deadletter_drift(want: &stream::Config, have: &stream::Config) -> Vec<Drift> {
    let mut d = Differ::new(format!("stream {}", want.name));
    let removed = have.subjects.iter().any(|s| !want.subjects.contains(s));
    d.field_with(
        "subjects",
        &want.subjects,
        &have.subjects,
        true,
        removed.then_some("dead letters on the removed subjects are no longer stored"),
    );
    d.field("storage", want.storage, have.storage, false);
    d.field_with(
        "max_age",
        want.max_age,
        have.max_age,
        true,
        tighter(
            nanos(want.max_age),
            nanos(have.max_age),
            "stored dead letters older than the new max_age are deleted",
        ),
    );
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
    // The worker reads the whole stream; an operator's filter leaves the other subjects unread.
    d.field(
        "filter_subject",
        want.filter_subject.as_str(),
        have.filter_subject.as_str(),
        true,
    );
    d.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stream(max_age: u64, max_bytes: i64, subjects: &[&str]) -> stream::Config {
        stream::Config {
            name: "S".into(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            max_age: Duration::from_secs(max_age),
            max_bytes,
            ..Default::default()
        }
    }

    fn effects(want: &stream::Config, have: &stream::Config) -> Vec<(&'static str, bool)> {
        stream_drift(want, have)
            .iter()
            .map(|d| (d.field, d.effect.is_some()))
            .collect()
    }

    #[test]
    fn tighter_limits_and_removed_subjects_are_destructive_looser_ones_are_not() {
        let live = stream(3600, 1 << 20, &["a.>", "b.>"]);
        assert_eq!(
            effects(&stream(60, 1 << 10, &["a.>"]), &live),
            [("subjects", true), ("max_age", true), ("max_bytes", true)]
        );
        assert_eq!(
            effects(&stream(7200, -1, &["a.>", "b.>", "c.>"]), &live),
            [
                ("subjects", false),
                ("max_age", false),
                ("max_bytes", false)
            ]
        );
        // From no limit (0, -1) to one: destructive; to none: not.
        assert_eq!(
            effects(&stream(60, 1 << 10, &["a.>"]), &stream(0, -1, &["a.>"])),
            [("max_age", true), ("max_bytes", true)]
        );
        assert_eq!(
            effects(&stream(0, 0, &["a.>"]), &stream(60, 1 << 10, &["a.>"])),
            [("max_age", false), ("max_bytes", false)]
        );
    }
}
