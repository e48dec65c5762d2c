//! The process work behind `cargo xtask up|down|status`: the servers of a set (a nats-server with
//! JetStream, a Cassandra 5.0, optionally a PostgreSQL) and the 3-node clusters, started detached with
//! pid files in the set's state directory, health-checked, reused when they already answer, stopped.
//! Installs, Maven and Go stay in `scripts/bootstrap.sh` ([`tools`]).
//!
//! Layout: [`process`] (pid files, launch, signals, locks), [`probe`] (is it answering),
//! [`tools`] (the binaries), [`nats`], [`cassandra`] and [`postgres`] (one server kind each, single
//! and cluster node), [`set`] and [`cluster`] (the commands).
//!
//! The commands (`up`, `down`, `status`, `start-nats`, `cassandra-pid`, `cluster-up`,
//! `cluster-kill nats 2`, ...) are words, so a test drives the servers in-process with
//! [`Environment::services`] and reads the lines they print.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::environments::{ClusterEnvironment, Environment};

pub mod cassandra;
pub mod cluster;
pub mod nats;
pub mod postgres;
pub mod probe;
pub mod process;
pub mod set;
pub mod tls;
pub mod tools;

/// What can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot use {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Environments(#[from] crate::environments::Error),
    #[error("scripts/bootstrap.sh {what} failed ({status})")]
    Bootstrap {
        what: String,
        status: std::process::ExitStatus,
    },
    #[error("cannot read the nats-server version from {0}")]
    NoPin(PathBuf),
    #[error("{0} --version printed no version")]
    NoVersion(PathBuf),
    #[error("nats server '{given}': expected current (= {pinned}, pinned in deploy/nats-server/go.mod), {pinned}, debian or /path/to/nats-server")]
    NatsChoice { given: String, pinned: String },
    #[error("port {addr} ({what}) is taken by something this tool did not start (pid {pid})")]
    PortTaken {
        what: String,
        addr: String,
        pid: String,
    },
    #[error("{what} (pid {pid}) is SIGSTOPped; send it SIGCONT (kill -CONT {pid})")]
    Frozen { what: String, pid: u32 },
    #[error("{what} is not running (not started by this tool)")]
    NotRunning { what: String },
    #[error("{what} exited during startup (log: {log})")]
    Exited { what: String, log: PathBuf },
    #[error("{what} not ready within {secs}s: {why} (log: {log})")]
    NotReady {
        what: String,
        secs: u64,
        why: String,
        log: PathBuf,
    },
    #[error("{0}")]
    Failed(String),
    #[error("a server does not answer:\n{0}")]
    Down(String),
    #[error("unknown command '{0}' (see cargo xtask help)")]
    Usage(String),
}

/// An [`Error::Io`] for `path`, for `map_err`.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// A progress line, to stderr.
pub(crate) fn log(line: &str) {
    eprintln!("services: {line}");
}

/// Writes one summary line (a lost stdout loses a line, not the command).
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}
pub(crate) use say;

/// "12.3s".
pub(crate) fn since(t0: Instant) -> String {
    format!("{:.1}s", t0.elapsed().as_secs_f64())
}

/// A `SCORE_WORKER_*` switch is set to 1.
pub(crate) fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// A timeout in seconds from `SCORE_WORKER_*`, else `default`.
pub(crate) fn secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// Polls `ready` every `every` until it says yes (how long that took), the process `pid` exits
/// (its log's end to stderr, [`Error::Exited`]) or `timeout` passes ([`Error::NotReady`], with what
/// `ready` last said in `why`).
pub(crate) fn wait_ready(
    what: &str,
    pid: u32,
    log_file: &Path,
    timeout: Duration,
    every: Duration,
    mut ready: impl FnMut(&mut String) -> bool,
) -> Result<Duration, Error> {
    let t0 = Instant::now();
    let mut why = String::from("no answer");
    while t0.elapsed() < timeout {
        if ready(&mut why) {
            return Ok(t0.elapsed());
        }
        if !process::alive(pid) {
            process::show_tail(log_file);
            return Err(Error::Exited {
                what: what.to_owned(),
                log: log_file.to_owned(),
            });
        }
        std::thread::sleep(every);
    }
    process::show_tail(log_file);
    Err(Error::NotReady {
        what: what.to_owned(),
        secs: timeout.as_secs(),
        why,
        log: log_file.to_owned(),
    })
}

/// Fails with [`Error::PortTaken`] when something answers on one of `ports` of `host`.
pub(crate) fn ports_free(what: &str, host: &str, ports: &[u16]) -> Result<(), Error> {
    for &port in ports {
        if probe::tcp_open(host, port) {
            return Err(Error::PortTaken {
                what: what.to_owned(),
                addr: format!("{host}:{port}"),
                pid: process::listener_pid(port).map_or("?".into(), |p| p.to_string()),
            });
        }
    }
    Ok(())
}

/// Runs one command for the set `env` and the clusters `cluster`;
/// summary lines to `out`, progress to stderr. The exit code: 0, or 3 when a status finds a server down.
pub fn run(
    env: &Environment,
    cluster: &ClusterEnvironment,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<u8, Error> {
    match args {
        [cmd, rest @ ..] if cmd.starts_with("cluster-") => {
            cluster::run(cluster, &cmd["cluster-".len()..], rest, out)
        }
        _ => set::run(env, args, out),
    }
}

impl Environment {
    /// Runs one command ([`run`]) for this set and the clusters in their default layout; the lines
    /// it printed. A `status` that finds a server down is [`Error::Down`].
    pub fn services(&self, args: &[&str]) -> Result<String, Error> {
        let cluster = crate::environments::Environments::load()?.cluster(None)?;
        let mut out = Vec::new();
        let code = run(self, &cluster, args, &mut out)?;
        let text = String::from_utf8_lossy(&out).into_owned();
        match code {
            0 => Ok(text),
            _ => Err(Error::Down(text)),
        }
    }
}
