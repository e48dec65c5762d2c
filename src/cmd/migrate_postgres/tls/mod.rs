//! TLS to PostgreSQL with libpq's `sslmode` and `sslrootcert`, on the project's one rustls provider
//! (aws-lc-rs), through `tokio-postgres-rustls`.
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` | when the server offers it; plain text otherwise, with a warning | not verified |
//! | `require` | always: a server without TLS is refused | chain verified when `sslrootcert` is given, else not (libpq's rule) |
//! | `verify-ca` | always | chain verified against `sslrootcert` (or the system's roots) |
//! | `verify-full` | always | chain and host name verified |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the system's roots. Both come from
//! the connection string (`key=value` or the URL's query) or from `--sslmode` / `--sslrootcert`
//! (`PGSSLMODE`, `PGSSLROOTCERT`); tokio-postgres itself knows neither `verify-*` nor `sslrootcert`,
//! so they are taken out of the string here.
//!
//! - `conninfo`: `sslmode`/`sslrootcert` out of the connection string ([`split`]);
//! - `verify`: the rustls configuration each mode verifies with ([`client_config`]).
//!
//! **Default** ([`default_mode`]): `verify-full` when a CA is given; otherwise `require` unless every
//! host is loopback or a Unix socket, where libpq's `prefer` stays. A copy of scores over a network is
//! never silently in plain text.

mod conninfo;
mod verify;

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::config::{Host, SslMode as WireMode};

pub use conninfo::{split, Split};
pub use verify::client_config;

/// `sslmode`, as libpq names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, TlsError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq's `allow` tries plain text first: not offered, a copy should not prefer it.
            other => return Err(TlsError::Mode(other.to_string())),
        })
    }
}

/// `sslrootcert`: a PEM file, or `system`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    System,
}

impl RootCert {
    fn parse(text: &str) -> RootCert {
        match text {
            "system" => RootCert::System,
            path => RootCert::File(path.into()),
        }
    }
}

/// The TLS settings of a connection string that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslmode `{0}` is not one of disable, prefer, require, verify-ca, verify-full")]
    Mode(String),
    #[error("{key} is given twice, `{first}` and `{second}`: give it once")]
    Twice {
        key: &'static str,
        first: String,
        second: String,
    },
    #[error("sslmode={0} needs sslrootcert (a CA file, or `system`) to verify the server against")]
    NoRoots(&'static str),
    #[error("sslrootcert {}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("sslrootcert {}: no certificate in it", .0.display())]
    Empty(PathBuf),
    #[error("TLS set-up")]
    Rustls(#[from] rustls::Error),
}

/// One value from the string or the flag: the same from both is fine, two different ones are not.
pub fn one_of(
    key: &'static str,
    in_string: Option<String>,
    flag: Option<String>,
) -> Result<Option<String>, TlsError> {
    match (in_string, flag) {
        (Some(a), Some(b)) if a != b => Err(TlsError::Twice {
            key,
            first: a,
            second: b,
        }),
        (a, b) => Ok(a.or(b)),
    }
}

/// Does every connection go to this machine (a loopback `hostaddr` or host, `localhost`, a Unix
/// socket)? A name is not resolved: any other name counts as the network.
pub fn all_loopback(config: &tokio_postgres::Config) -> bool {
    let (hosts, addrs) = (config.get_hosts(), config.get_hostaddrs());
    let n = hosts.len().max(addrs.len());
    n > 0
        && (0..n).all(|i| match (addrs.get(i), hosts.get(i)) {
            (Some(addr), _) => addr.is_loopback(),
            (None, Some(Host::Unix(_))) => true,
            (None, Some(Host::Tcp(name))) => {
                name.eq_ignore_ascii_case("localhost")
                    || name
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            (None, None) => false,
        })
}

/// The mode when none is given: see the module doc.
pub fn default_mode(root: Option<&RootCert>, loopback: bool) -> SslMode {
    match (root, loopback) {
        (Some(_), _) => SslMode::VerifyFull,
        (None, false) => SslMode::Require,
        (None, true) => SslMode::Prefer,
    }
}

/// What tokio-postgres is asked for: it knows only disable / prefer / require.
pub fn wire_mode(mode: SslMode) -> WireMode {
    match mode {
        SslMode::Disable => WireMode::Disable,
        SslMode::Prefer => WireMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
    }
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// What `mode` with `root` verifies (libpq: `require` with a CA verifies the chain).
pub fn check_of(mode: SslMode, root: Option<&RootCert>) -> Result<Check, TlsError> {
    Ok(match (mode, root.is_some()) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, false) => Check::Nothing,
        (SslMode::Require | SslMode::VerifyCa, true) => Check::Chain,
        (SslMode::VerifyFull, true) => Check::ChainAndName,
        (SslMode::VerifyCa | SslMode::VerifyFull, false) => {
            return Err(TlsError::NoRoots(mode.as_str()))
        }
    })
}

/// Whether a connection's bytes were encrypted, and how far the server was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    pub mode: SslMode,
    pub check: Check,
    /// The server's answer (`pg_stat_ssl`): was this connection TLS?
    pub tls: bool,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = self.mode.as_str();
        match (self.tls, self.check) {
            (false, _) => write!(f, "plain text (sslmode={mode})"),
            (true, Check::Nothing) => write!(f, "TLS, server not verified (sslmode={mode})"),
            (true, Check::Chain) => write!(f, "TLS, certificate chain verified (sslmode={mode})"),
            (true, Check::ChainAndName) => {
                write!(
                    f,
                    "TLS, certificate and host name verified (sslmode={mode})"
                )
            }
        }
    }
}

/// The connection's TLS settings, from the string and the flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: tokio_postgres::Config,
    pub mode: SslMode,
    pub root: Option<RootCert>,
}

impl Settings {
    /// Reads `conn` (see [`split`]) with `--sslmode` / `--sslrootcert` as fallbacks.
    pub fn new(
        conn: &str,
        mode_flag: Option<String>,
        root_flag: Option<String>,
    ) -> Result<Settings, super::MigrateError> {
        let parts = split(conn);
        let mut config = tokio_postgres::Config::from_str(&parts.rest)?;
        let root = one_of("sslrootcert", parts.root, root_flag)?.map(|r| RootCert::parse(&r));
        let mode = match one_of("sslmode", parts.mode, mode_flag)? {
            Some(m) => m.parse()?,
            None => default_mode(root.as_ref(), all_loopback(&config)),
        };
        config.ssl_mode(wire_mode(mode));
        Ok(Settings { config, mode, root })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_required_by_default_outside_loopback_and_verified_with_a_ca() {
        let loopback = |s: &str| all_loopback(&tokio_postgres::Config::from_str(s).unwrap());
        assert!(loopback("host=127.0.0.1 user=x"));
        assert!(loopback("host=localhost,::1 user=x"));
        assert!(loopback("host=/run/postgresql user=x"));
        assert!(loopback("host=db.example hostaddr=127.0.0.1 user=x"));
        assert!(!loopback("host=db.example user=x"));
        assert!(!loopback("host=127.0.0.1,10.0.0.2 user=x"));
        assert!(!loopback("postgresql://10.1.2.3/db"));
        assert!(!loopback("host=localhost hostaddr=10.0.0.5 user=x"));
        let ca = RootCert::File("/ca.pem".into());
        assert_eq!(default_mode(None, false), SslMode::Require);
        assert_eq!(default_mode(None, true), SslMode::Prefer);
        assert_eq!(default_mode(Some(&ca), false), SslMode::VerifyFull);
        assert_eq!(default_mode(Some(&ca), true), SslMode::VerifyFull);
        let settings = Settings::new("host=db.example user=x", None, None).unwrap();
        assert_eq!(settings.mode, SslMode::Require);
        assert_eq!(settings.config.get_ssl_mode(), WireMode::Require);
    }

    #[test]
    fn modes_verify_what_libpq_verifies() {
        let ca = RootCert::File("/ca.pem".into());
        assert_eq!(check_of(SslMode::Require, None).unwrap(), Check::Nothing);
        assert_eq!(check_of(SslMode::Require, Some(&ca)).unwrap(), Check::Chain);
        assert_eq!(
            check_of(SslMode::VerifyCa, Some(&ca)).unwrap(),
            Check::Chain
        );
        assert_eq!(
            check_of(SslMode::VerifyFull, Some(&ca)).unwrap(),
            Check::ChainAndName
        );
        assert!(matches!(
            check_of(SslMode::VerifyFull, None),
            Err(TlsError::NoRoots("verify-full"))
        ));
        assert!(matches!("allow".parse::<SslMode>(), Err(TlsError::Mode(_))));
        assert!(matches!(
            one_of("sslmode", Some("require".into()), Some("disable".into())),
            Err(TlsError::Twice { .. })
        ));
        assert_eq!(
            one_of("sslmode", Some("require".into()), Some("require".into())).unwrap(),
            Some("require".into())
        );
    }
}
