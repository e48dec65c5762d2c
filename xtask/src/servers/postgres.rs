//! The source of `score-worker migrate-postgres` and its tests: Debian's `postgresql` package, a cluster
//! of the set's own in `<state>/postgres/data` on `host:port` (TCP only, trust authentication for user
//! postgres, fsync off: a test server), run as the `postgres` OS user when we are root (the server
//! refuses root). TLS is on with the set's test certificate ([`super::tls`]; the CA is copied beside
//! `ssl_cert_file` so a client that can `SHOW ssl_cert_file` finds it); plain-text clients are still
//! accepted. The TLS settings live in `score-worker.conf`, included by `postgresql.conf`, so
//! `ALTER SYSTEM SET ssl = off` + reload (a test of a server without TLS) overrides them.
//! One already answering on the port is reused and left alone by `down`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::{io, log, probe, process, say, secs, since, tls, tools, Error};
use crate::environments::Environment;

fn home(env: &Environment) -> PathBuf {
    env.state_dir.join("postgres")
}

fn data(env: &Environment) -> PathBuf {
    home(env).join("data")
}

fn port(env: &Environment) -> u16 {
    env.postgres_port().unwrap_or_default()
}

/// The newest `/usr/lib/postgresql/<major>/bin` with a `pg_ctl`.
fn bin() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((major, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, b)| b)
}

fn root_user() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program ARGS` as the postgres user (when root), holding none of our descriptors (the lock above all).
fn as_postgres(program: &Path) -> Command {
    let mut cmd = if root_user() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.stdin(Stdio::null());
    process::inherit_no_fds(&mut cmd);
    cmd
}

fn chown_postgres(path: &Path) -> Result<(), Error> {
    if !root_user() {
        return Ok(());
    }
    let ok = Command::new("chown")
        .args(["-R", "postgres:"])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "cannot chown {} to postgres",
            path.display()
        )))
    }
}

pub fn answers(env: &Environment) -> bool {
    match bin().map(|b| b.join("pg_isready")).filter(|p| p.exists()) {
        Some(isready) => Command::new(isready)
            .args([
                "-q",
                "-h",
                &env.set.host,
                "-p",
                &port(env).to_string(),
                "-t",
                "3",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        None => probe::tcp_open(&env.set.host, port(env)),
    }
}

/// The postmaster of the set's data directory, if it runs.
pub fn owned_pid(env: &Environment) -> Option<u32> {
    let text = fs::read_to_string(data(env).join("postmaster.pid")).ok()?;
    let pid = text.lines().next()?.trim().parse().ok()?;
    process::alive(pid).then_some(pid)
}

/// The test certificate as the postgres user's files (the server refuses a key others can read), and
/// `ssl = on` in the included file.
fn tls_files(env: &Environment) -> Result<PathBuf, Error> {
    let src = tls::files(&env.state_dir)?;
    let dir = home(env).join("tls");
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    for f in ["server.crt", "ca.pem", "server.key"] {
        fs::copy(src.join(f), dir.join(f)).map_err(io(&dir))?;
    }
    let key = dir.join("server.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).map_err(io(&key))?;
    chown_postgres(&dir)?;
    let conf = data(env).join("score-worker.conf");
    let text = format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
        dir.join("server.crt").display(),
        key.display()
    );
    fs::write(&conf, text).map_err(io(&conf))?;
    chown_postgres(&conf)?;
    let main = data(env).join("postgresql.conf");
    let include = "include_if_exists = 'score-worker.conf'";
    let mut text = fs::read_to_string(&main).map_err(io(&main))?;
    if !text.lines().any(|l| l == include) {
        text.push_str(&format!("{include}\n"));
        fs::write(&main, text).map_err(io(&main))?;
    }
    Ok(src.join("ca.pem"))
}

/// Starts the set's PostgreSQL (installed and initialised first), or reuses the one answering.
pub fn start(env: &Environment, out: &mut dyn Write) -> Result<(), Error> {
    let t0 = Instant::now();
    let (host, port) = (&env.set.host, port(env));
    if answers(env) {
        let ours = owned_pid(env).map_or(String::new(), |p| {
            format!(", pid {p}, started by this tool")
        });
        say!(
            out,
            "{:<9} reused  {host}:{port}  (already answering{ours})",
            "postgres"
        );
        return Ok(());
    }
    let bin = match bin() {
        Some(b) => b,
        None => {
            tools::apt(&["postgresql"])?;
            bin().ok_or(Error::Failed(
                "no PostgreSQL server binaries after installing postgresql".into(),
            ))?
        }
    };
    let home = home(env);
    fs::create_dir_all(&home).map_err(io(&home))?;
    chown_postgres(&home)?;
    let data = data(env);
    if !data.join("PG_VERSION").exists() {
        log(&format!("initdb {}", data.display()));
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .output()
            .map_err(io(&bin))?;
        if !out.status.success() {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            return Err(Error::Failed(format!("initdb {} failed", data.display())));
        }
    }
    let ca = tls_files(env)?;
    let server_log = home.join("server.log");
    // A postmaster.pid left by a killed server is removed by the server itself when its pid is gone.
    let started = as_postgres(&bin.join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&server_log)
        .args([
            "-w",
            "-t",
            &secs("SCORE_WORKER_PG_TIMEOUT", 60).as_secs().to_string(),
            "-s",
            "-o",
        ])
        .arg(format!(
            "-p {port} -c listen_addresses={host} -c unix_socket_directories='' -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off"
        ))
        .arg("start")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !started || !answers(env) {
        process::show_tail(&server_log);
        return Err(Error::Failed(format!(
            "PostgreSQL did not start on {host}:{port}"
        )));
    }
    let version = Command::new(bin.join("postgres"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).replace("postgres (PostgreSQL) ", "v"))
        .unwrap_or_default();
    say!(
        out,
        "{:<9} started {host}:{port}  (pid {}, {}, TLS on, CA {}, in {})",
        "postgres",
        owned_pid(env).map_or("?".into(), |p| p.to_string()),
        version.trim(),
        ca.display(),
        since(t0)
    );
    Ok(())
}

/// Stops the set's PostgreSQL if this tool started it.
pub fn stop(env: &Environment, out: &mut dyn Write) -> Result<(), Error> {
    let Some(pid) = owned_pid(env) else {
        let what = if answers(env) {
            "left running: it answers but was not started by this tool"
        } else {
            "not running"
        };
        say!(out, "{:<9} {what}", "postgres");
        return Ok(());
    };
    let t0 = Instant::now();
    let stopped = bin().is_some_and(|b| {
        as_postgres(&b.join("pg_ctl"))
            .arg("-D")
            .arg(data(env))
            .args(["-m", "fast", "-w", "-t"])
            .arg(process::STOP_TIMEOUT.as_secs().to_string())
            .args(["-s", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !stopped {
        process::stop("postgres", pid, libc::SIGKILL)?;
    }
    say!(out, "{:<9} stopped (pid {pid}, {})", "postgres", since(t0));
    Ok(())
}

/// One status line; whether it answers.
pub fn status(env: &Environment, out: &mut dyn Write) -> bool {
    let (host, port) = (&env.set.host, port(env));
    if !answers(env) {
        say!(out, "{:<9} down", "postgres");
        return false;
    }
    let how = match owned_pid(env) {
        Some(p) => format!("pid {p}, started by this tool, rss {}", process::rss(p)),
        None => "not started by this tool".into(),
    };
    say!(out, "{:<9} up      {host}:{port}  ({how})", "postgres");
    true
}
