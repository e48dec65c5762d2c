//! The programs the servers are: a JDK 17 and the Cassandra jars, a nats-server of the version a set
//! asks for, Debian packages. What is missing is installed, fetched or built by `scripts/bootstrap.sh`
//! (apt, Maven, Go), once per machine; each answer is remembered for the life of this process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::{io, Error};
use crate::environments::root;

/// Runs `scripts/bootstrap.sh ARGS` (its log lines to stderr); the path it prints.
fn bootstrap(args: &[&str]) -> Result<String, Error> {
    let script = root().join("scripts/bootstrap.sh");
    let out = Command::new(&script)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(io(&script))?;
    if !out.status.success() {
        return Err(Error::Bootstrap {
            what: args.join(" "),
            status: out.status,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Installs Debian packages.
pub fn apt(packages: &[&str]) -> Result<(), Error> {
    let mut args = vec!["apt"];
    args.extend_from_slice(packages);
    bootstrap(&args).map(|_| ())
}

/// Installs `package` unless `program` is on the PATH.
pub fn need(program: &str, package: &str) -> Result<(), Error> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        Ok(())
    } else {
        apt(&[package])
    }
}

fn cached(cell: &'static OnceLock<PathBuf>, args: &[&str]) -> Result<PathBuf, Error> {
    static BUSY: Mutex<()> = Mutex::new(());
    if let Some(p) = cell.get() {
        return Ok(p.clone());
    }
    let _one_at_a_time = BUSY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cell.get() {
        return Ok(p.clone());
    }
    let path = PathBuf::from(bootstrap(args)?);
    Ok(cell.get_or_init(|| path).clone())
}

/// The `java` of a JDK 17.
pub fn java() -> Result<PathBuf, Error> {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    Ok(cached(&HOME, &["java17"])?.join("bin/java"))
}

/// The directory of the Cassandra jars (`deploy/cassandra/pom.xml`'s version).
pub fn cassandra_lib() -> Result<PathBuf, Error> {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    cached(&LIB, &["cassandra-jars"])
}

/// The Cassandra version `deploy/cassandra/pom.xml` pins.
pub fn cassandra_version() -> String {
    let pom = std::fs::read_to_string(root().join("deploy/cassandra/pom.xml")).unwrap_or_default();
    between(&pom, "<cassandra.version>", "</cassandra.version>").unwrap_or("?".into())
}

fn between(text: &str, open: &str, close: &str) -> Option<String> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(text[start..start + len].trim().to_owned())
}

/// The nats-server version `deploy/nats-server/go.mod` pins.
pub fn nats_pinned() -> Result<String, Error> {
    let path = root().join("deploy/nats-server/go.mod");
    let gomod = std::fs::read_to_string(&path).map_err(io(&path))?;
    gomod
        .lines()
        .filter_map(|l| l.trim().strip_prefix("github.com/nats-io/nats-server/v2 v"))
        .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
        .next()
        .ok_or(Error::NoPin(path))
}

/// Which nats-server a set's `nats.server` names.
pub enum NatsChoice {
    /// The release go.mod pins, built with Go.
    Pinned(String),
    /// Debian's package.
    Debian,
    /// A binary of one's own.
    Path(PathBuf),
}

const DEBIAN_NATS: &str = "/usr/sbin/nats-server";

impl NatsChoice {
    /// "current" (or the pinned version, or a prefix of it), "debian", or an absolute path.
    pub fn parse(server: &str) -> Result<Self, Error> {
        let pinned = nats_pinned()?;
        let v = server.trim_start_matches('v');
        Ok(match server {
            "current" | "latest" | "pinned" => NatsChoice::Pinned(pinned),
            "debian" | "apt" | "system" => NatsChoice::Debian,
            p if p.starts_with('/') => NatsChoice::Path(p.into()),
            _ if v == pinned || pinned.starts_with(&format!("{v}.")) => NatsChoice::Pinned(pinned),
            _ => {
                return Err(Error::NatsChoice {
                    given: server.to_owned(),
                    pinned,
                })
            }
        })
    }

    /// The binary (built or installed first) and the version it reports.
    pub fn binary(&self) -> Result<(PathBuf, String), Error> {
        static BUILT: OnceLock<PathBuf> = OnceLock::new();
        let bin = match self {
            NatsChoice::Pinned(_) => cached(&BUILT, &["nats-build"])?,
            NatsChoice::Debian => {
                if !Path::new(DEBIAN_NATS).exists() {
                    apt(&["nats-server"])?;
                }
                PathBuf::from(DEBIAN_NATS)
            }
            NatsChoice::Path(p) => p.clone(),
        };
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .map_err(io(&bin))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix('v'))
            .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
            .ok_or_else(|| Error::NoVersion(bin.clone()))?
            .to_owned();
        Ok((bin, version))
    }

    /// The version this choice runs (the pinned one without building it).
    pub fn wanted_version(&self) -> Result<String, Error> {
        match self {
            NatsChoice::Pinned(v) => Ok(v.clone()),
            _ => Ok(self.binary()?.1),
        }
    }
}
