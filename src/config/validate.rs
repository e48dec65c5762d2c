//! The rules types cannot express, one section at a time, then the rules that tie sections together.
//! Each failure names the key and the expected form.

use std::time::Duration;

use super::{
    invalid, BatchConfig, Config, ConfigError, NatsConfig, RetryConfig, ScyllaConfig, TlsFiles,
    ValidationConfig,
};

impl Config {
    /// Checks every section, then the rules that span sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        self.scylla.validate()?;
        self.batch.validate()?;
        self.retry.validate()?;
        self.validation.validate()?;
        self.shutdown.validate()?;
        // A flush must settle (or send progress) before NATS gives its messages to another replica.
        let window = self.batch.linger.saturating_add(self.retry.total_budget);
        if self.nats.ack_wait <= window {
            return Err(invalid(
                "nats.ack_wait",
                format!(
                    "must exceed batch.linger + retry.total_budget ({window:?}), or NATS redelivers a \
                     flush that is still being written"
                ),
            ));
        }
        if self.retry.progress_interval >= self.nats.ack_wait {
            return Err(invalid(
                "retry.progress_interval",
                "must be shorter than nats.ack_wait",
            ));
        }
        if self.batch.linger >= self.nats.ack_wait {
            return Err(invalid(
                "batch.linger",
                "must be shorter than nats.ack_wait",
            ));
        }
        Ok(())
    }
}

/// Durations that must not be zero, with their keys.
fn positive(durations: &[(&'static str, Duration)]) -> Result<(), ConfigError> {
    for &(key, d) in durations {
        if d.is_zero() {
            return Err(invalid(
                key,
                "must be longer than 0 (a duration such as \"5s\")",
            ));
        }
    }
    Ok(())
}

impl NatsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(&[
            ("nats.ack_wait", self.ack_wait),
            ("nats.connect_timeout", self.connect_timeout),
            ("nats.request_timeout", self.request_timeout),
            ("nats.duplicate_window", self.duplicate_window),
            ("nats.deadletter_max_age", self.deadletter_max_age),
        ])?;
        if self.url.contains('@') {
            return Err(invalid(
                "nats.url",
                "must not carry credentials; use nats.auth.user/password or nats.auth.token",
            ));
        }
        if self.subjects.is_empty() || self.subjects.iter().any(|s| s.trim().is_empty()) {
            return Err(invalid(
                "nats.subjects",
                "must list at least one non-empty subject",
            ));
        }
        for (key, name) in [
            ("nats.stream", &self.stream),
            ("nats.consumer", &self.consumer),
            ("nats.deadletter_stream", &self.deadletter_stream),
        ] {
            if name.is_empty() || name.contains(['.', '*', '>', ' ']) {
                return Err(invalid(
                    key,
                    "must be a non-empty name without '.', '*', '>' or spaces",
                ));
            }
        }
        if self.deadletter_prefix.is_empty() || self.deadletter_prefix.contains(['*', '>', ' ']) {
            return Err(invalid(
                "nats.deadletter_prefix",
                "must be a literal subject prefix",
            ));
        }
        if self.max_deliver < 2 {
            return Err(invalid("nats.max_deliver", "must be at least 2"));
        }
        if self.max_ack_pending < 1 || self.pull_batch == 0 {
            return Err(invalid(
                "nats.max_ack_pending/nats.pull_batch",
                "must be positive",
            ));
        }
        self.tls.validate("nats.tls")
    }
}

impl ScyllaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(&[
            ("scylla.connect_timeout", self.connect_timeout),
            ("scylla.request_timeout", self.request_timeout),
        ])?;
        if !self.consistency.is_quorum() && !self.allow_weak_consistency {
            return Err(invalid(
                "scylla.consistency",
                format!(
                    "is {:?}, which does not make every read overlap the last write (the leaderboard \
                     invariant needs quorum, local_quorum, each_quorum or all); set \
                     scylla.allow_weak_consistency = true to run with it anyway",
                    self.consistency
                ),
            ));
        }
        if self.single_writing_datacenter && self.local_datacenter.is_none() {
            return Err(invalid(
                "scylla.single_writing_datacenter",
                "needs scylla.local_datacenter: the one datacenter every writer runs in",
            ));
        }
        if self.nodes.is_empty() {
            return Err(invalid("scylla.nodes", "must list at least one host:port"));
        }
        if self.keyspace.is_empty()
            || self.keyspace.len() > 48
            || !self
                .keyspace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(invalid(
                "scylla.keyspace",
                "must be 1-48 characters of [A-Za-z0-9_]",
            ));
        }
        if !self.replication.trim_start().starts_with('{') {
            return Err(invalid(
                "scylla.replication",
                "must be a CQL map such as {'class': 'NetworkTopologyStrategy', 'dc1': 3}",
            ));
        }
        if self.leaderboard_buckets < 1 {
            return Err(invalid("scylla.leaderboard_buckets", "must be at least 1"));
        }
        if self.write_concurrency == 0 {
            return Err(invalid("scylla.write_concurrency", "must be positive"));
        }
        if !(1..=64).contains(&self.connections_per_shard) {
            return Err(invalid(
                "scylla.connections_per_shard",
                "must be between 1 and 64",
            ));
        }
        self.tls.validate("scylla.tls")
    }
}

impl TlsFiles {
    fn validate(&self, section: &'static str) -> Result<(), ConfigError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid(
                section,
                "cert_file and key_file must be set together (a client certificate and its key)",
            ));
        }
        Ok(())
    }
}

impl BatchConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_scores == 0 || self.max_scores > 1000 {
            return Err(invalid("batch.max_scores", "must be between 1 and 1000"));
        }
        if self.max_inflight == 0 {
            return Err(invalid("batch.max_inflight", "must be positive"));
        }
        Ok(())
    }
}

impl RetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(&[
            ("retry.initial_backoff", self.initial_backoff),
            ("retry.max_backoff", self.max_backoff),
            ("retry.total_budget", self.total_budget),
            ("retry.progress_interval", self.progress_interval),
        ])?;
        if self.max_attempts == 0 {
            return Err(invalid("retry.max_attempts", "must be at least 1"));
        }
        if self.initial_backoff > self.max_backoff {
            return Err(invalid(
                "retry.initial_backoff",
                "must not exceed retry.max_backoff",
            ));
        }
        Ok(())
    }
}

impl ValidationConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_payload_bytes == 0 {
            return Err(invalid("validation.max_payload_bytes", "must be positive"));
        }
        // Between the two, an event is written at arrival + max_ahead_of_arrival; beyond, refused.
        if self.max_ahead_of_arrival > self.max_clock_skew {
            return Err(invalid(
                "validation.max_ahead_of_arrival",
                "must not exceed validation.max_clock_skew",
            ));
        }
        Ok(())
    }
}

impl super::ShutdownConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        positive(&[("shutdown.timeout", self.timeout)])
    }
}
