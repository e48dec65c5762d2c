//! The commands for one server set: `up`, `down`, `status`, one server started or stopped
//! (`start-nats`, `stop-cassandra`, ...), a server's pid (`nats-pid`, for the tests that freeze it),
//! `nats-bin` and `bootstrap`. The commands that start or stop hold the set's lock.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use super::tools::{self, NatsChoice};
use super::{cassandra, log, nats, postgres, process, say, since, Error};
use crate::environments::Environment;

/// Stops `pid` (a server this tool started, its pid file `pidfile`) with SIGTERM, SIGKILL after the
/// timeout; without one, says whether something else answers there (`answers`) and leaves it.
pub fn stop_owned(
    name: &str,
    pid: Option<u32>,
    pidfile: &Path,
    answers: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let Some(pid) = pid else {
        let _ = std::fs::remove_file(pidfile);
        if answers {
            say!(out, "{name:<9} left running: it answers but was not started by this tool (no live pid file)");
        } else {
            say!(out, "{name:<9} not running");
        }
        return Ok(());
    };
    let s = process::stop(name, pid, libc::SIGTERM)?;
    let _ = std::fs::remove_file(pidfile);
    say!(
        out,
        "{name:<9} stopped (pid {}, {}, {:.1}s)",
        s.pid,
        s.how,
        s.took.as_secs_f64()
    );
    Ok(())
}

/// Stops a server this tool started, its lines to stderr: before it starts afresh, or after a start
/// that never became ready.
pub fn stop_to_stderr(name: &str, pid: u32, pidfile: &Path) -> Result<(), Error> {
    stop_owned(name, Some(pid), pidfile, false, &mut std::io::stderr())
}

/// The pid of the server this tool started (`owned`), or of the one `launch` starts now: a frozen
/// one is an error, one still starting is waited for.
pub fn running_or_launch(
    what: &str,
    owned: Option<u32>,
    launch: impl FnOnce() -> Result<u32, Error>,
) -> Result<u32, Error> {
    match unless_frozen(what, owned)? {
        Some(pid) => {
            log(&format!("{what} (pid {pid}) is starting; waiting for it"));
            Ok(pid)
        }
        None => launch(),
    }
}

/// `pid`, unless that process is SIGSTOPped ([`Error::Frozen`]: starting it again would wait forever).
pub fn unless_frozen(what: &str, pid: Option<u32>) -> Result<Option<u32>, Error> {
    match pid {
        Some(pid) if process::stopped(pid) => Err(Error::Frozen {
            what: what.into(),
            pid,
        }),
        pid => Ok(pid),
    }
}

/// After a start that failed: a server that never became ready is stopped, one that exited leaves
/// no pid file. `error` is passed on.
pub fn abandon(name: &str, pid: u32, pidfile: &Path, error: Error) -> Error {
    if matches!(error, Error::NotReady { .. }) {
        if let Err(e) = stop_to_stderr(name, pid, pidfile) {
            log(&format!("could not stop {name} (pid {pid}): {e}"));
        }
    } else {
        let _ = std::fs::remove_file(pidfile);
    }
    error
}

/// The status line of a server that does not answer: frozen, starting (or hung), or down.
pub fn status_not_answering(name: &str, pid: Option<u32>, out: &mut dyn Write) {
    match pid {
        Some(p) if process::stopped(p) => {
            say!(
                out,
                "{name:<9} frozen  pid {p} is SIGSTOPped (not answering)"
            )
        }
        Some(p) => say!(
            out,
            "{name:<9} not answering yet (pid {p} alive: starting or hung)"
        ),
        None => say!(out, "{name:<9} down"),
    }
}

fn lock(env: &Environment) -> Result<std::fs::File, Error> {
    process::lock(&env.state_dir.join(".services.lock"))
}

fn need_postgres(env: &Environment) -> Result<(), Error> {
    match env.postgres_port() {
        Some(_) => Ok(()),
        None => Err(Error::Failed(format!("set {} has no PostgreSQL", env.name))),
    }
}

/// The pid of a server of the set: the one this tool started, else whatever listens on its port.
fn pid(what: &str, owned: Option<u32>, port: u16, out: &mut dyn Write) -> Result<u8, Error> {
    let pid = owned
        .or_else(|| process::listener_pid(port))
        .ok_or(Error::NotRunning { what: what.into() })?;
    say!(out, "{pid}");
    Ok(0)
}

/// Runs one set command; 0, or 3 when `status` finds a server down.
pub fn run(env: &Environment, args: &[&str], out: &mut dyn Write) -> Result<u8, Error> {
    let (nats_port, cql_port) = (env.set.nats.port, env.set.cassandra.cql_port);
    match args {
        ["up"] => {
            let _lock = lock(env)?;
            nats::start(env, out)?;
            cassandra::start(env, out)?;
            if env.postgres_port().is_some() {
                postgres::start(env, out)?;
            }
        }
        ["down"] => {
            let _lock = lock(env)?;
            cassandra::stop(env, out)?;
            nats::stop(env, out)?;
            if env.postgres_port().is_some() {
                postgres::stop(env, out)?;
            }
        }
        ["status"] => {
            let mut up = nats::status(env, out);
            up &= cassandra::status(env, out);
            if env.postgres_port().is_some() {
                up &= postgres::status(env, out);
            }
            return Ok(if up { 0 } else { 3 });
        }
        ["start-nats"] => {
            let _lock = lock(env)?;
            nats::start(env, out)?;
        }
        ["stop-nats"] => {
            let _lock = lock(env)?;
            nats::stop(env, out)?;
        }
        ["start-cassandra"] => {
            let _lock = lock(env)?;
            cassandra::start(env, out)?;
        }
        ["stop-cassandra"] => {
            let _lock = lock(env)?;
            cassandra::stop(env, out)?;
        }
        ["start-postgres"] => {
            need_postgres(env)?;
            let _lock = lock(env)?;
            postgres::start(env, out)?;
        }
        ["stop-postgres"] => {
            let _lock = lock(env)?;
            postgres::stop(env, out)?;
        }
        ["nats-pid"] => return pid("nats", nats::owned_pid(env), nats_port, out),
        ["cassandra-pid"] => return pid("cassandra", cassandra::owned_pid(env), cql_port, out),
        ["nats-bin"] => {
            let (bin, _) = NatsChoice::parse(&env.set.nats.server)?.binary()?;
            say!(out, "{}", bin.display());
        }
        ["bootstrap"] => {
            let t0 = Instant::now();
            let java = tools::java()?;
            let lib = tools::cassandra_lib()?;
            let (bin, version) = NatsChoice::parse(&env.set.nats.server)?.binary()?;
            log(&format!("bootstrap of set {} took {}", env.name, since(t0)));
            say!(
                out,
                "bootstrap: {} (JDK 17), Cassandra {} jars in {}, nats-server v{version} at {}",
                java.display(),
                tools::cassandra_version(),
                lib.display(),
                bin.display()
            );
        }
        _ => return Err(Error::Usage(args.join(" "))),
    }
    Ok(0)
}
