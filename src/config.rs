//! Typed settings, loaded in layers and validated before anything connects.
//!
//! Order (later wins): `config/default.toml` (compiled in, so the binary always has every key) → the
//! file given with `--config` → environment variables `SCORE_WORKER__<SECTION>__<KEY>`.
//! Unknown keys are errors, so a typo cannot silently fall back to a default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// The defaults shipped with the binary; also the documentation of every key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
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
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value parsed but breaks a rule.
    #[error("invalid configuration: `{key}` {expected}")]
    Invalid { key: &'static str, expected: String },
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

fn invalid(key: &'static str, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        expected: expected.into(),
    }
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
    pub subjects: Vec<String>,
    pub stream: String,
    pub consumer: String,
    pub manage_jetstream: bool,
    #[serde(deserialize_with = "duration")]
    pub duplicate_window: Duration,
    #[serde(deserialize_with = "duration")]
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub max_ack_pending: i64,
    pub pull_batch: usize,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsAuth {
    pub user: String,
    pub password: SecretString,
    pub token: SecretString,
    pub nkey_seed: SecretString,
    pub credentials_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub enabled: bool,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScyllaConfig {
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub consistency: String,
    pub local_datacenter: String,
    pub replication: String,
    pub leaderboard_buckets: i32,
    pub write_concurrency: usize,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    pub user: String,
    pub password: SecretString,
    pub tls: TlsFiles,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub max_scores: usize,
    #[serde(deserialize_with = "duration")]
    pub linger: Duration,
    pub max_inflight: usize,
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

    /// Checks rules that span keys or that types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = &self.nats;
        if n.url.contains('@') {
            return Err(invalid(
                "nats.url",
                "must not carry credentials; use nats.auth.user/password or nats.auth.token",
            ));
        }
        if n.subjects.is_empty() || n.subjects.iter().any(|s| s.trim().is_empty()) {
            return Err(invalid(
                "nats.subjects",
                "must list at least one non-empty subject",
            ));
        }
        for (key, name) in [
            ("nats.stream", &n.stream),
            ("nats.consumer", &n.consumer),
            ("nats.deadletter_stream", &n.deadletter_stream),
        ] {
            if name.is_empty() || name.contains(['.', '*', '>', ' ']) {
                return Err(invalid(
                    key,
                    "must be a non-empty name without '.', '*', '>' or spaces",
                ));
            }
        }
        if n.deadletter_prefix.is_empty() || n.deadletter_prefix.contains(['*', '>', ' ']) {
            return Err(invalid(
                "nats.deadletter_prefix",
                "must be a literal subject prefix",
            ));
        }
        if n.max_deliver < 2 {
            return Err(invalid("nats.max_deliver", "must be at least 2"));
        }
        if n.max_ack_pending < 1 || n.pull_batch == 0 {
            return Err(invalid(
                "nats.max_ack_pending/nats.pull_batch",
                "must be positive",
            ));
        }
        let auth_methods = [
            !n.auth.user.is_empty(),
            !n.auth.token.expose_secret().is_empty(),
            !n.auth.nkey_seed.expose_secret().is_empty(),
            !n.auth.credentials_file.is_empty(),
        ];
        if auth_methods.iter().filter(|m| **m).count() > 1 {
            return Err(invalid(
                "nats.auth",
                "takes at most one method: user, token, nkey_seed or credentials_file",
            ));
        }
        let s = &self.scylla;
        if s.nodes.is_empty() {
            return Err(invalid("scylla.nodes", "must list at least one host:port"));
        }
        if s.keyspace.is_empty()
            || s.keyspace.len() > 48
            || !s
                .keyspace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(invalid(
                "scylla.keyspace",
                "must be 1-48 characters of [A-Za-z0-9_]",
            ));
        }
        crate::store::parse_consistency(&s.consistency).ok_or_else(|| {
            invalid(
                "scylla.consistency",
                "must be one of one, two, three, quorum, all, local_quorum, each_quorum, local_one",
            )
        })?;
        if !s.replication.trim_start().starts_with('{') {
            return Err(invalid(
                "scylla.replication",
                "must be a CQL map such as {'class': 'NetworkTopologyStrategy', 'dc1': 3}",
            ));
        }
        if s.leaderboard_buckets < 1 {
            return Err(invalid("scylla.leaderboard_buckets", "must be at least 1"));
        }
        if s.write_concurrency == 0 {
            return Err(invalid("scylla.write_concurrency", "must be positive"));
        }
        let b = &self.batch;
        if b.max_scores == 0 || b.max_scores > 1000 {
            return Err(invalid("batch.max_scores", "must be between 1 and 1000"));
        }
        if b.max_inflight == 0 {
            return Err(invalid("batch.max_inflight", "must be positive"));
        }
        let r = &self.retry;
        if r.max_attempts == 0 {
            return Err(invalid("retry.max_attempts", "must be at least 1"));
        }
        if r.initial_backoff > r.max_backoff {
            return Err(invalid(
                "retry.initial_backoff",
                "must not exceed retry.max_backoff",
            ));
        }
        // A flush must settle (or send progress) before NATS gives its messages to another replica.
        if r.progress_interval >= n.ack_wait {
            return Err(invalid(
                "retry.progress_interval",
                "must be shorter than nats.ack_wait",
            ));
        }
        if b.linger >= n.ack_wait {
            return Err(invalid(
                "batch.linger",
                "must be shorter than nats.ack_wait",
            ));
        }
        if self.validation.max_payload_bytes == 0 {
            return Err(invalid("validation.max_payload_bytes", "must be positive"));
        }
        Ok(())
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
            "nats.url={} nats.stream={} nats.consumer={} nats.subjects={:?} nats.auth.user={} nats.auth.password={} \
             nats.auth.token={} nats.auth.nkey_seed={} nats.tls.enabled={} scylla.nodes={:?} scylla.keyspace={} \
             scylla.consistency={} scylla.user={} scylla.password={} scylla.tls.enabled={} batch.max_scores={} \
             batch.linger={:?} http.listen={}",
            redact_url(&self.nats.url),
            self.nats.stream,
            self.nats.consumer,
            self.nats.subjects,
            self.nats.auth.user,
            secret(&self.nats.auth.password),
            secret(&self.nats.auth.token),
            secret(&self.nats.auth.nkey_seed),
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

impl TlsFiles {
    /// The CA file, if one is set.
    pub fn ca(&self) -> Option<PathBuf> {
        (!self.ca_file.is_empty()).then(|| PathBuf::from(&self.ca_file))
    }
}

/// Parses "250ms", "5s", "2m", "1h", "30d" (and combinations like "1m30s").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("`{text}` is not a duration like 250ms, 5s, 2m, 1h"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value * 60),
            "h" => Duration::from_secs(value * 3600),
            "d" => Duration::from_secs(value * 86_400),
            _ => return Err(format!("`{text}`: unit must be ms, s, m, h or d")),
        };
        total += part;
    }
    Ok(total)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as \"250ms\", \"5s\" or \"2m\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V)
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
        assert_eq!(c.scylla.consistency, "local_quorum");
        assert_eq!(c.validation.max_payload_bytes, 65_536);
        assert_eq!(c.validation.max_clock_skew, Duration::from_secs(300));
        assert_eq!(c.http.listen.port(), 9102);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5w").is_err());
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
        let err = Config::load_from(Some(&path), no_env(), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_scores"), "{err}");

        std::fs::write(&path, "[batch]\nlinger = \"soon\"\n").unwrap();
        let err = Config::load_from(Some(&path), no_env(), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("linger"), "{err}");

        std::fs::write(&path, "[batch]\nmax_scroes = 3\n").unwrap();
        let err = Config::load_from(Some(&path), no_env(), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_scroes"), "{err}");

        std::fs::write(&path, "[retry]\nprogress_interval = \"2m\"\n").unwrap();
        let err = Config::load_from(Some(&path), no_env(), &[])
            .unwrap_err()
            .to_string();
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
    fn secrets_stay_strings_and_are_never_echoed() {
        let secrets = [
            ("scylla.password", "00123".to_string()),
            ("nats.auth.token", "true".to_string()),
        ];
        let c = Config::load_from(None, no_env(), &secrets).unwrap();
        assert_eq!(c.scylla.password.expose_secret(), "00123");
        assert_eq!(c.nats.auth.token.expose_secret(), "true");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[scylla]\npassword = 987654321\n").unwrap();
        let err = Config::load_from(Some(&path), no_env(), &[])
            .unwrap_err()
            .to_string();
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
    fn missing_config_file_is_an_error() {
        let err =
            Config::load_from(Some(Path::new("/nonexistent/x.toml")), no_env(), &[]).unwrap_err();
        assert!(err.to_string().contains("--config"));
    }
}
