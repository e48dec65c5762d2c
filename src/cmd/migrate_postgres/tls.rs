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
//! **Default** ([`default_mode`]): `verify-full` when a CA is given; otherwise `require` unless every
//! host is loopback or a Unix socket, where libpq's `prefer` stays. A copy of scores over a network is
//! never silently in plain text.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{Host, SslMode as WireMode};

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
    #[error("sslrootcert {}: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("sslrootcert {}: no certificate in it", .0.display())]
    Empty(PathBuf),
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The connection string without `sslmode`/`sslrootcert`, and those two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub rest: String,
    pub mode: Option<String>,
    pub root: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a `key=value` string or a `postgres[ql]://` URL. A string
/// this cannot read is returned whole, for tokio-postgres to report.
pub fn split(conn: &str) -> Split {
    let parsed = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        split_url(conn)
    } else {
        split_key_values(conn)
    };
    parsed.unwrap_or_else(|| Split {
        rest: conn.to_string(),
        mode: None,
        root: None,
    })
}

fn split_url(conn: &str) -> Option<Split> {
    let Some((base, query)) = conn.split_once('?') else {
        return Some(Split {
            rest: conn.to_string(),
            mode: None,
            root: None,
        });
    };
    let (mut mode, mut root, mut kept) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => mode = Some(percent_decode(value)?),
            "sslrootcert" => root = Some(percent_decode(value)?),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Some(Split { rest, mode, root })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// libpq's `key = value` syntax: white space between pairs and around `=`, a value single-quoted
/// (with `\'` and `\\`) or bare up to white space.
fn split_key_values(conn: &str) -> Option<Split> {
    let (mut mode, mut root, mut kept) = (None, None, Vec::new());
    let mut chars = conn.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        chars.next_if(|(_, c)| *c == '=')?;
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next()?.1 {
                    '\'' => break,
                    '\\' => value.push(chars.next()?.1),
                    c => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                value.push(if c == '\\' { chars.next()?.1 } else { c });
            }
        }
        let end = chars.peek().map_or(conn.len(), |(i, _)| *i);
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => kept.push(conn[start..end].trim_end()),
        }
    }
    Some(Split {
        rest: kept.join(" "),
        mode,
        root,
    })
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

/// The rustls client configuration for `check` against `root`.
pub fn client_config(
    check: Check,
    root: Option<&RootCert>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let roots = root.map(roots).transpose()?.map(Arc::new);
    let config = match (check, roots) {
        (Check::ChainAndName, Some(roots)) => builder.with_root_certificates(roots),
        (Check::Chain, Some(roots)) => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Verifier {
                    roots: Some(roots),
                    provider,
                }))
        }
        (_, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                roots: None,
                provider,
            })),
    };
    Ok(config.with_no_client_auth())
}

fn roots(root: &RootCert) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::System => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = store.add(cert);
            }
        }
        RootCert::File(path) => {
            let pem = |source| TlsError::Pem {
                path: path.clone(),
                source,
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(pem)? {
                store.add(cert.map_err(pem)?)?;
            }
            if store.is_empty() {
                return Err(TlsError::Empty(path.clone()));
            }
        }
    }
    Ok(store)
}

/// libpq's `require` and `verify-ca`: the handshake's signatures are always verified; the
/// certificate's chain against `roots` when there are roots (never its name), and not at all without.
#[derive(Debug)]
struct Verifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
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
    fn ssl_keys_are_taken_out_of_key_value_strings() {
        let s = split("host=db.example port=5432 sslmode=verify-full user=me sslrootcert='/etc/ca dir/ca.pem' dbname = 'a \\' b'");
        assert_eq!(s.mode.as_deref(), Some("verify-full"));
        assert_eq!(s.root.as_deref(), Some("/etc/ca dir/ca.pem"));
        assert_eq!(
            s.rest,
            "host=db.example port=5432 user=me dbname = 'a \\' b'"
        );
        let parsed = tokio_postgres::Config::from_str(&s.rest).unwrap();
        assert_eq!(parsed.get_dbname(), Some("a ' b"));
        let none = split("host=127.0.0.1 user=postgres");
        assert_eq!((none.mode, none.root), (None, None));
        assert_eq!(none.rest, "host=127.0.0.1 user=postgres");
    }

    #[test]
    fn ssl_keys_are_taken_out_of_urls() {
        let s = split("postgresql://me@db.example:5432/scores?sslmode=require&application_name=x&sslrootcert=%2Fetc%2Fca.pem");
        assert_eq!(s.mode.as_deref(), Some("require"));
        assert_eq!(s.root.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            s.rest,
            "postgresql://me@db.example:5432/scores?application_name=x"
        );
        assert_eq!(
            split("postgres://h/db?sslmode=disable").rest,
            "postgres://h/db"
        );
    }

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
