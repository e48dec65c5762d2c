//! How the worker reaches its servers securely: the NATS auth method and TLS files, typed so that
//! an impossible combination cannot be represented.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// How the worker authenticates to NATS: at most one method, by construction.
///
/// The file keeps one key per method (`nats.auth.user` + `password`, `token`, `nkey_seed`,
/// `credentials_file`; empty means unset); setting keys of two methods is a load error.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "RawNatsAuth")]
pub enum NatsAuth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: SecretString,
    },
    Token(SecretString),
    NKey(SecretString),
    CredentialsFile(PathBuf),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNatsAuth {
    user: String,
    password: SecretString,
    token: SecretString,
    nkey_seed: SecretString,
    credentials_file: String,
}

/// More than one NATS auth method is set.
#[derive(Debug, thiserror::Error)]
#[error(
    "nats.auth takes at most one method: user (+password), token, nkey_seed or credentials_file"
)]
pub struct AuthMethodsError;

impl TryFrom<RawNatsAuth> for NatsAuth {
    type Error = AuthMethodsError;

    fn try_from(raw: RawNatsAuth) -> Result<Self, Self::Error> {
        let set = |s: &SecretString| !s.expose_secret().is_empty();
        let mut methods = Vec::new();
        if !raw.user.is_empty() {
            methods.push(NatsAuth::UserPassword {
                user: raw.user,
                password: raw.password,
            });
        }
        if set(&raw.token) {
            methods.push(NatsAuth::Token(raw.token));
        }
        if set(&raw.nkey_seed) {
            methods.push(NatsAuth::NKey(raw.nkey_seed));
        }
        if !raw.credentials_file.is_empty() {
            methods.push(NatsAuth::CredentialsFile(raw.credentials_file.into()));
        }
        match methods.len() {
            0 => Ok(NatsAuth::None),
            1 => Ok(methods.remove(0)),
            _ => Err(AuthMethodsError),
        }
    }
}

impl NatsAuth {
    /// `key=value` pairs for a summary, secrets as `***`.
    pub(super) fn redacted(&self) -> String {
        match self {
            NatsAuth::None => "nats.auth=none".into(),
            NatsAuth::UserPassword { user, .. } => {
                format!("nats.auth.user={user} nats.auth.password=***")
            }
            NatsAuth::Token(_) => "nats.auth.token=***".into(),
            NatsAuth::NKey(_) => "nats.auth.nkey_seed=***".into(),
            NatsAuth::CredentialsFile(path) => {
                format!("nats.auth.credentials_file={}", path.display())
            }
        }
    }
}

/// TLS to a server: off, or on with optional CA and client certificate files (empty means unset).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub enabled: bool,
    #[serde(deserialize_with = "optional_path")]
    pub ca_file: Option<PathBuf>,
    #[serde(deserialize_with = "optional_path")]
    pub cert_file: Option<PathBuf>,
    #[serde(deserialize_with = "optional_path")]
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    /// The client certificate and its key, when both are set (validation refuses one without the other).
    pub fn client_cert(&self) -> Option<(&Path, &Path)> {
        Some((self.cert_file.as_deref()?, self.key_file.as_deref()?))
    }
}

/// An empty string means "not set".
pub(super) fn optional_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.trim().is_empty()).then_some(s))
}

fn optional_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(optional_string(d)?.map(PathBuf::from))
}
