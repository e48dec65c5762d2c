//! Typed settings, loaded in layers and validated before anything connects.
//!
//! Order (later wins): `config/default.toml` (compiled in, so the binary always has every key) → the
//! file given with `--config` → environment variables `SCORE_WORKER__<SECTION>__<KEY>`.
//! Unknown keys are errors, so a typo cannot silently fall back to a default. Values are typed as they
//! are read (durations, consistency, the NATS auth method, optional files); [`validate`] checks what
//! types cannot express, one section at a time and then across sections.

mod connection;
mod consistency;
mod duration;
mod list;
mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub use connection::{AuthMethodsError, NatsAuth, TlsFiles};
pub use consistency::{Consistency, ConsistencyError};
pub use duration::{parse_duration, DurationError};

use crate::score::Limits;
use connection::optional_string;
use duration::duration;

/// The defaults shipped with the binary; also the documentation of every key.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");
/// Prefix of the environment overrides.
pub const ENV_PREFIX: &str = "SCORE_WORKER__";
/// Keys that hold secrets: read from the environment as raw strings (an all-digit password stays a
/// string, leading zeros included), and never echoed in an error.
pub const SECRET_KEYS: &[&str] = &[
    "nats.auth.password",
    "nats.auth.token",
    "nats.auth.nkey_seed",
    "scylla.password",
];

/// The environment variable of a key, e.g. `nats.auth.password` → `SCORE_WORKER__NATS__AUTH__PASSWORD`.
pub fn env_var(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// A configuration problem, naming the key and what it expects.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or environment value could not be parsed into the expected type.
    #[error("invalid configuration")]
    Load(#[from] Box<figment::Error>),
    /// A value parsed but breaks a rule.
    #[error("invalid configuration: `{key}` {expected}")]
    Invalid { key: &'static str, expected: String },
}

pub(crate) fn invalid(key: &'static str, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        expected: expected.into(),
    }
}

/// A load error about a secret key names the key but not the value.
fn hide_secrets(error: figment::Error) -> ConfigError {
    for e in error.clone() {
        let path = e.path.join(".").to_ascii_lowercase();
        if let Some(key) = SECRET_KEYS.iter().find(|k| path.ends_with(*k)) {
            return invalid(key, "must be a string (value not shown)");
        }
    }
    ConfigError::Load(Box::new(error))
}

/// A duration in µs, saturating.
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// `nats://user:pass@host:4222,nats://host2` → `nats://***@host:4222,nats://host2`.
pub fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &url[..scheme + 3], &url[at..])
            }
            (None, Some(at)) => format!("***{}", &url[at..]),
            _ => url.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub nats: NatsConfig,
    pub scylla: ScyllaConfig,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub validation: ValidationConfig,
    pub http: HttpConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub url: String,
    pub client_name: String,
    #[serde(deserialize_with = "list::strings")]
    pub subjects: Vec<String>,
    pub stream: String,
    pub consumer: String,
    /// Create the streams and the consumer where missing (never change what exists: `nats apply` does).
    pub manage_jetstream: bool,
    #[serde(deserialize_with = "duration")]
    pub duplicate_window: Duration,
    /// What the score stream keeps (see [`Retention`]).
    pub retention: Retention,
    /// Safety limits of the score stream: age (0: none) and bytes (0: none; the server's storage bounds it).
    #[serde(deserialize_with = "duration")]
    pub max_age: Duration,
    pub max_bytes: u64,
    #[serde(deserialize_with = "duration")]
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub max_ack_pending: i64,
    pub pull_batch: usize,
    /// Wait for the server to confirm each acknowledgement (a request per message) instead of sending it
    /// and going on.
    pub confirm_acks: bool,
    pub deadletter_stream: String,
    pub deadletter_prefix: String,
    #[serde(deserialize_with = "duration")]
    pub deadletter_max_age: Duration,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    pub auth: NatsAuth,
    pub tls: TlsFiles,
}

/// What the score stream keeps: `work_queue` removes a message once it is acknowledged; `interest`
/// once every consumer acknowledged it (a message published while no consumer exists is dropped);
/// `limits` keeps it until `max_age` or `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retention {
    WorkQueue,
    Interest,
    Limits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScyllaConfig {
    #[serde(deserialize_with = "list::strings")]
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub consistency: Consistency,
    pub allow_weak_consistency: bool,
    #[serde(deserialize_with = "optional_string")]
    pub local_datacenter: Option<String>,
    /// Every process that writes the keyspace runs in `local_datacenter`: allows a `LOCAL_*`
    /// consistency on a keyspace replicated to several datacenters (see [`crate::schema::replication`]).
    pub single_writing_datacenter: bool,
    pub replication: String,
    pub leaderboard_buckets: i32,
    pub write_concurrency: usize,
    pub batch_max_bytes: usize,
    pub read_back: ReadBack,
    pub connections_per_shard: usize,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    pub user: String,
    pub password: SecretString,
    pub tls: TlsFiles,
}

impl ScyllaConfig {
    /// User and password, when a user is set.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        (!self.user.is_empty()).then(|| (self.user.as_str(), self.password.expose_secret()))
    }
}

/// How a flush reads its keys back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadBack {
    /// One multi-partition read per group of partitions that share their replicas.
    Grouped,
    /// One single-partition read per key, concurrently.
    PerKey,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub max_scores: usize,
    #[serde(deserialize_with = "duration")]
    pub linger: Duration,
    pub max_inflight: usize,
    pub newest_written_keys: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(deserialize_with = "duration")]
    pub initial_backoff: Duration,
    #[serde(deserialize_with = "duration")]
    pub max_backoff: Duration,
    pub max_attempts: usize,
    #[serde(deserialize_with = "duration")]
    pub total_budget: Duration,
    #[serde(deserialize_with = "duration")]
    pub nak_delay: Duration,
    #[serde(deserialize_with = "duration")]
    pub progress_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    pub max_payload_bytes: usize,
    #[serde(deserialize_with = "duration")]
    pub max_clock_skew: Duration,
    /// How far an event's time may be after its message's arrival at JetStream (and a repair's after
    /// the operator's clock) before it is written at that bound instead.
    #[serde(deserialize_with = "duration")]
    pub max_ahead_of_arrival: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// The pipeline's knobs, gathered from `batch`, `retry` and `nats`.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub max_scores: usize,
    pub linger: Duration,
    pub max_inflight: usize,
    /// Keys remembered with the newest event this process wrote for them (0: no skipping).
    pub newest_written_keys: usize,
    /// Deliveries before an unwritten message is dead-lettered instead of nak'd.
    pub max_deliver: i64,
    pub retry: RetryConfig,
}

impl Config {
    /// Loads defaults, then `file`, then the process environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let secrets: Vec<(&str, String)> = SECRET_KEYS
            .iter()
            .filter_map(|key| std::env::var(env_var(key)).ok().map(|value| (*key, value)))
            .collect();
        Self::load_from(
            file,
            Env::prefixed(ENV_PREFIX).split("__").ignore(SECRET_KEYS),
            &secrets,
        )
    }

    /// The built-in defaults alone (no file, no environment); tests start from here.
    pub fn defaults() -> Config {
        Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("the built-in defaults are valid")
    }

    /// Like [`Config::load`] with an explicit environment provider and raw secret values.
    pub fn load_from(
        file: Option<&Path>,
        env: Env,
        secrets: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = file {
            if !file.exists() {
                return Err(invalid(
                    "--config",
                    format!("names a missing file: {}", file.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(env);
        for (key, value) in secrets {
            figment = figment.merge(Serialized::global(key, value));
        }
        let config: Config = figment.extract().map_err(hide_secrets)?;
        config.validate()?;
        Ok(config)
    }

    /// The decoder's limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_payload_bytes: self.validation.max_payload_bytes,
            max_clock_skew_micros: micros(self.validation.max_clock_skew),
            max_ahead_of_arrival_micros: micros(self.validation.max_ahead_of_arrival),
        }
    }

    /// The pipeline's knobs.
    pub fn pipeline(&self) -> PipelineConfig {
        PipelineConfig {
            max_scores: self.batch.max_scores,
            linger: self.batch.linger,
            max_inflight: self.batch.max_inflight,
            newest_written_keys: self.batch.newest_written_keys,
            max_deliver: self.nats.max_deliver,
            retry: self.retry.clone(),
        }
    }

    /// A printable summary with every secret replaced by `***`.
    pub fn redacted(&self) -> String {
        let secret = |s: &SecretString| {
            if s.expose_secret().is_empty() {
                ""
            } else {
                "***"
            }
        };
        format!(
            "nats.url={} nats.stream={} nats.consumer={} nats.subjects={:?} {} nats.tls.enabled={} \
             scylla.nodes={:?} scylla.keyspace={} scylla.consistency={:?} scylla.user={} scylla.password={} \
             scylla.tls.enabled={} batch.max_scores={} batch.linger={:?} http.listen={}",
            redact_url(&self.nats.url),
            self.nats.stream,
            self.nats.consumer,
            self.nats.subjects,
            self.nats.auth.redacted(),
            self.nats.tls.enabled,
            self.scylla.nodes,
            self.scylla.keyspace,
            self.scylla.consistency,
            self.scylla.user,
            secret(&self.scylla.password),
            self.scylla.tls.enabled,
            self.batch.max_scores,
            self.batch.linger,
            self.http.listen,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment provider that sees no variables, so tests do not depend on the process environment.
    fn no_env() -> Env {
        Env::prefixed("SCORE_WORKER_TEST_UNSET__").split("__")
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load_from(None, no_env(), &[]).unwrap();
        assert_eq!(c.batch.max_scores, 50);
        assert_eq!(c.nats.subjects, vec!["scores.update.>".to_string()]);
        assert_eq!(c.nats.duplicate_window, Duration::from_secs(120));
        assert_eq!(c.scylla.consistency, Consistency::LocalQuorum);
        assert_eq!(c.validation.max_payload_bytes, 65_536);
        assert_eq!(c.validation.max_clock_skew, Duration::from_secs(300));
        assert_eq!(c.validation.max_ahead_of_arrival, Duration::from_secs(2));
        assert_eq!(c.http.listen.port(), 9102);
    }

    #[test]
    fn file_layer_overrides_and_bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[batch]\nmax_scores = 10\nlinger = \"20ms\"\n").unwrap();
        let c = Config::load_from(Some(&path), no_env(), &[]).unwrap();
        assert_eq!(c.batch.max_scores, 10);
        assert_eq!(c.batch.linger, Duration::from_millis(20));

        std::fs::write(&path, "[batch]\nmax_scores = \"many\"\n").unwrap();
        let err = Config::load_from(Some(&path), no_env(), &[]).unwrap_err();
        let err = crate::error_chain(&err).to_string();
        assert!(err.contains("max_scores"), "{err}");

        std::fs::write(&path, "[batch]\nlinger = \"soon\"\n").unwrap();
        let err = Config::load_from(Some(&path), no_env(), &[]).unwrap_err();
        let err = crate::error_chain(&err).to_string();
        assert!(err.contains("linger"), "{err}");

        std::fs::write(&path, "[batch]\nmax_scroes = 3\n").unwrap();
        let err = Config::load_from(Some(&path), no_env(), &[]).unwrap_err();
        let err = crate::error_chain(&err).to_string();
        assert!(err.contains("max_scroes"), "{err}");

        std::fs::write(&path, "[retry]\nprogress_interval = \"2m\"\n").unwrap();
        let err = Config::load_from(Some(&path), no_env(), &[]).unwrap_err();
        let err = crate::error_chain(&err).to_string();
        assert!(err.contains("retry.progress_interval"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature
    fn environment_overrides_files() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SCORE_WORKER__NATS__URL", "nats://example:4222");
            jail.set_env("SCORE_WORKER__SCYLLA__KEYSPACE", "other_ks");
            jail.set_env("SCORE_WORKER__NATS__AUTH__PASSWORD", "hunter2");
            jail.set_env("SCORE_WORKER__NATS__AUTH__USER", "svc");
            let c = Config::load(None).unwrap();
            assert_eq!(c.nats.url, "nats://example:4222");
            assert_eq!(c.scylla.keyspace, "other_ks");
            let shown = c.redacted();
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("nats.auth.password=***"), "{shown}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature
    fn list_settings_from_the_environment_take_commas_or_an_array() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "SCORE_WORKER__SCYLLA__NODES",
                "10.0.0.1:9042, 10.0.0.2:9042",
            );
            jail.set_env("SCORE_WORKER__NATS__SUBJECTS", r#"["a.>", "b.>"]"#);
            let c = Config::load(None).unwrap();
            assert_eq!(c.scylla.nodes, ["10.0.0.1:9042", "10.0.0.2:9042"]);
            assert_eq!(c.nats.subjects, ["a.>", "b.>"]);
            jail.set_env("SCORE_WORKER__SCYLLA__NODES", "10.0.0.1:9042,");
            let err = crate::error_chain(&Config::load(None).unwrap_err()).to_string();
            assert!(
                err.contains("empty item") && err.to_lowercase().contains("scylla.nodes"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn secrets_stay_strings_and_are_never_echoed() {
        let secrets = [
            ("scylla.password", "00123".to_string()),
            ("nats.auth.token", "true".to_string()),
        ];
        let c = Config::load_from(None, no_env(), &secrets).unwrap();
        assert_eq!(c.scylla.password.expose_secret(), "00123");
        assert!(
            matches!(&c.nats.auth, NatsAuth::Token(t) if t.expose_secret() == "true"),
            "{:?}",
            c.nats.auth
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[scylla]\npassword = 987654321\n").unwrap();
        let err = Config::load_from(Some(&path), no_env(), &[]).unwrap_err();
        let err = crate::error_chain(&err).to_string();
        assert!(
            err.contains("scylla.password") && !err.contains("987654321"),
            "{err}"
        );
    }

    #[test]
    fn urls_with_credentials_are_rejected_and_redacted() {
        assert_eq!(
            redact_url("nats://u:p@h:4222,tls://h2"),
            "nats://***@h:4222,tls://h2"
        );
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        let mut c = Config::defaults();
        c.nats.url = "nats://svc:hunter2@host:4222".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("nats.url") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn two_auth_methods_are_a_load_error_naming_the_section() {
        let secrets = [("nats.auth.token", "t0ken".to_string())];
        let env = Env::prefixed("SCORE_WORKER_TEST_UNSET__").split("__");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[nats.auth]\nuser = \"svc\"\npassword = \"pw\"\n").unwrap();
        let c = Config::load_from(Some(&path), no_env(), &[]).unwrap();
        assert!(matches!(c.nats.auth, NatsAuth::UserPassword { ref user, .. } if user == "svc"));
        let err = Config::load_from(Some(&path), env, &secrets).unwrap_err();
        let err = crate::error_chain(&err).to_string();
        assert!(
            err.contains("at most one method") && err.contains("nats.auth"),
            "{err}"
        );
        assert!(!err.contains("t0ken") && !err.contains("pw"), "{err}");
    }

    #[test]
    fn typed_values_from_strings() {
        assert_eq!(
            "LOCAL_QUORUM".parse::<Consistency>().unwrap(),
            Consistency::LocalQuorum
        );
        assert!("most".parse::<Consistency>().is_err());
        let c = Config::defaults();
        assert_eq!(c.nats.tls.ca_file, None);
        assert_eq!(c.scylla.local_datacenter, None);
        assert!(c.scylla.credentials().is_none());
    }

    /// The error of `config` after `tweak`, which must name `key`.
    fn rejects(key: &str, tweak: impl FnOnce(&mut Config)) -> String {
        let mut c = Config::defaults();
        tweak(&mut c);
        let err = c
            .validate()
            .expect_err(&format!("{key} should be refused"))
            .to_string();
        assert!(err.contains(key), "{key}: {err}");
        err
    }

    #[test]
    fn knobs_that_break_the_worker_are_refused_naming_the_key() {
        rejects("retry.progress_interval", |c| {
            c.retry.progress_interval = Duration::ZERO
        });
        rejects("retry.total_budget", |c| {
            c.retry.total_budget = Duration::ZERO
        });
        rejects("retry.initial_backoff", |c| {
            c.retry.initial_backoff = Duration::ZERO
        });
        rejects("nats.request_timeout", |c| {
            c.nats.request_timeout = Duration::ZERO
        });
        rejects("nats.connect_timeout", |c| {
            c.nats.connect_timeout = Duration::ZERO
        });
        rejects("scylla.request_timeout", |c| {
            c.scylla.request_timeout = Duration::ZERO
        });
        rejects("scylla.connect_timeout", |c| {
            c.scylla.connect_timeout = Duration::ZERO
        });
        rejects("shutdown.timeout", |c| c.shutdown.timeout = Duration::ZERO);
        let err = rejects("nats.ack_wait", |c| {
            c.nats.ack_wait = Duration::from_secs(30);
            c.retry.total_budget = Duration::from_secs(30);
        });
        assert!(err.contains("batch.linger + retry.total_budget"), "{err}");
        // linger and nak_delay may be zero.
        let mut c = Config::defaults();
        c.batch.linger = Duration::ZERO;
        c.retry.nak_delay = Duration::ZERO;
        c.validate().unwrap();
    }

    #[test]
    fn weak_consistency_needs_the_opt_in() {
        for weak in [
            Consistency::One,
            Consistency::Two,
            Consistency::Three,
            Consistency::LocalOne,
        ] {
            let err = rejects("scylla.consistency", |c| c.scylla.consistency = weak);
            assert!(err.contains("allow_weak_consistency"), "{err}");
            let mut c = Config::defaults();
            c.scylla.consistency = weak;
            c.scylla.allow_weak_consistency = true;
            c.validate().unwrap();
        }
        for strong in [
            Consistency::Quorum,
            Consistency::LocalQuorum,
            Consistency::EachQuorum,
            Consistency::All,
        ] {
            let mut c = Config::defaults();
            c.scylla.consistency = strong;
            c.validate().unwrap();
        }
    }

    #[test]
    fn the_single_writing_datacenter_promise_needs_its_datacenter() {
        assert!(!Config::defaults().scylla.single_writing_datacenter);
        let err = rejects("scylla.single_writing_datacenter", |c| {
            c.scylla.single_writing_datacenter = true
        });
        assert!(err.contains("scylla.local_datacenter"), "{err}");
        let mut c = Config::defaults();
        c.scylla.single_writing_datacenter = true;
        c.scylla.local_datacenter = Some("dc1".into());
        c.validate().unwrap();
    }

    #[test]
    fn an_overflowing_duration_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[retry]\ntotal_budget = \"999999999999999999d\"\n").unwrap();
        let err = Config::load_from(Some(&path), no_env(), &[]).unwrap_err();
        let err = crate::error_chain(&err).to_string();
        assert!(
            err.contains("total_budget") && err.contains("too large"),
            "{err}"
        );
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err =
            Config::load_from(Some(Path::new("/nonexistent/x.toml")), no_env(), &[]).unwrap_err();
        assert!(err.to_string().contains("--config"));
    }
}
