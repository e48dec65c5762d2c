//! Apache Cassandra 5.0 on JDK 17, the ScyllaDB stand-in: the single server of a set, in the mode the
//! set declares (password authentication and permissions, optional TLS on the CQL port, a low tombstone
//! failure threshold), and the nodes of the 3-node cluster. Every instance runs a copy of
//! `deploy/cassandra/cassandra.yaml` with its own addresses and ports, in the JVM that file's
//! `jvm17-server.options` describes.
//!
//! [`jvm`]: the yaml and the JVM command line; this file: the single server; [`node`]: the cluster's.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::{flag, io, log, probe, process, say, secs, tls, tools, wait_ready, Error};
use crate::environments::Environment;
use jvm::{daemon, Instance, Yaml, DAEMON};

mod jvm;
mod node;
pub use node::{cluster_up, node_answers, node_pid, node_start, node_status, nodetool};

fn timeout() -> Duration {
    secs("SCORE_WORKER_CASSANDRA_TIMEOUT", 180)
}

fn file(env: &Environment, name: &str) -> PathBuf {
    env.state_dir.join(name)
}

/// The set's Cassandra, if this tool started it and it runs.
pub fn owned_pid(env: &Environment) -> Option<u32> {
    process::pidfile_pid(&file(env, "cassandra.pid"), DAEMON)
}

pub fn answers(env: &Environment) -> bool {
    probe::cql_ping(&env.set.host, env.set.cassandra.cql_port)
}

/// "noauth", "auth+authz", with "+tls" and "+tombstonesN" as the set declares.
fn mode(env: &Environment) -> String {
    let c = &env.set.cassandra;
    let mut m = String::from(if c.auth { "auth+authz" } else { "noauth" });
    if c.tls {
        m.push_str("+tls");
    }
    if let Some(n) = c.tombstone_failure_threshold {
        m.push_str(&format!("+tombstones{n}"));
    }
    m
}

fn running_mode(env: &Environment) -> String {
    fs::read_to_string(file(env, "cassandra.mode"))
        .map(|m| m.trim().to_owned())
        .unwrap_or_else(|_| "noauth".into())
}

/// The set's copy of the yaml (its ports, its mode) and the properties its mode adds.
fn single_yaml(env: &Environment) -> Result<(PathBuf, Vec<String>), Error> {
    let (host, c) = (&env.set.host, &env.set.cassandra);
    let mut yaml = Yaml::template()?;
    yaml.set(
        "- seeds:",
        &format!("- seeds: \"{host}:{}\"", c.storage_port),
    )?
    .key("storage_port", &c.storage_port.to_string())?
    .key("listen_address", host)?
    .key("rpc_address", host)?
    .key("native_transport_port", &c.cql_port.to_string())?;
    // No fsync of system tables: a faster start. Not for the cluster's nodes, which get SIGKILLed: a
    // node killed after a schema change can come back without the table.
    let mut extra = vec!["-Dcassandra.unsafesystem=true".to_owned()];
    if c.tls {
        // Optional: plaintext clients (the other tests of the set) still connect.
        let pem = tls::files(&env.state_dir)?.join("server.pem");
        yaml.append(&format!(
            "\nclient_encryption_options:\n  enabled: true\n  optional: true\n  require_client_auth: false\n  \
             keystore: {}\n  ssl_context_factory:\n    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory\n",
            pem.display()
        ));
    }
    if c.auth {
        // Passwords, and permissions GRANT and REVOKE change (tests/security/refusals.rs).
        yaml.key("authenticator", "PasswordAuthenticator")?
            .key("authorizer", "CassandraAuthorizer")?;
        extra.push("-Dcassandra.superuser_setup_delay_ms=0".into());
    }
    if let Some(n) = c.tombstone_failure_threshold {
        yaml.append(&format!(
            "\n# the set's tombstone_failure_threshold\ntombstone_warn_threshold: {}\ntombstone_failure_threshold: {n}\n",
            (n / 2).max(1)
        ));
    }
    let path = file(env, "cassandra.yaml");
    yaml.write(&path)?;
    Ok((path, extra))
}

fn summary(env: &Environment, verb: &str, detail: &str, out: &mut dyn Write) {
    let c = &env.set.cassandra;
    say!(
        out,
        "{:<9} {verb:<7} {}  (CQL; storage port {})  {detail}",
        "cassandra",
        env.cql_node(),
        c.storage_port
    );
}

/// Starts the set's Cassandra in the set's mode (or reuses the one answering), waits until CQL answers.
pub fn start(env: &Environment, out: &mut dyn Write) -> Result<(), Error> {
    let (host, c) = (&env.set.host, &env.set.cassandra);
    let (mode, fresh) = (mode(env), flag("SCORE_WORKER_FRESH_DB"));
    let pidfile = file(env, "cassandra.pid");
    if let Some(pid) = owned_pid(env) {
        let running = running_mode(env);
        if fresh || running != mode {
            let why = if fresh {
                "SCORE_WORKER_FRESH_DB=1".to_owned()
            } else {
                format!("mode {running} -> {mode}")
            };
            log(&format!("restarting our Cassandra (pid {pid}): {why}"));
            super::set::stop_to_stderr("cassandra", pid, &pidfile)?;
        }
    }
    if answers(env) {
        let detail = match owned_pid(env) {
            Some(pid) => format!(
                "already running (pid {pid}, started by this tool, {}, rss {})",
                running_mode(env),
                process::rss(pid)
            ),
            None => {
                if fresh {
                    log(&format!("WARNING: SCORE_WORKER_FRESH_DB=1 ignored: the Cassandra on {} was not started by this tool", env.cql_node()));
                }
                "already answering; not started by this tool (down will leave it)".into()
            }
        };
        summary(env, "reused", &detail, out);
        return Ok(());
    }
    let pid = super::set::running_or_launch("Cassandra", owned_pid(env), || {
        super::ports_free("cassandra", host, &[c.cql_port, c.storage_port])?;
        let (java, lib) = (tools::java()?, tools::cassandra_lib()?);
        let data = file(env, "cassandra");
        if fresh {
            log(&format!(
                "SCORE_WORKER_FRESH_DB=1: wiping {}",
                data.display()
            ));
            let _ = fs::remove_dir_all(&data);
        }
        let (yaml, extra) = single_yaml(env)?;
        let instance = Instance {
            heap: &c.heap,
            yaml: &yaml,
            data: &data,
            tmp: &file(env, "cassandra-tmp"),
            extra,
        };
        let mut cmd = daemon(&java, &lib, &instance)?;
        cmd.current_dir(&env.state_dir);
        let modefile = file(env, "cassandra.mode");
        fs::write(&modefile, format!("{mode}\n")).map_err(io(&modefile))?;
        process::launch(cmd, &file(env, "cassandra.log"), &pidfile)
    })?;
    let log_file = file(env, "cassandra.log");
    let every = Duration::from_millis(250);
    match wait_ready("Cassandra", pid, &log_file, timeout(), every, |_| {
        probe::cql_ping(host, c.cql_port)
    }) {
        Ok(took) => {
            let detail = format!(
                "pid {pid}, JDK 17, Cassandra {}, {mode}, data {}, ready in {:.1}s, rss {}",
                tools::cassandra_version(),
                file(env, "cassandra").display(),
                took.as_secs_f64(),
                process::rss(pid)
            );
            summary(env, "up", &detail, out);
            Ok(())
        }
        Err(e) => Err(super::set::abandon("cassandra", pid, &pidfile, e)),
    }
}

/// Stops the set's Cassandra if this tool started it.
pub fn stop(env: &Environment, out: &mut dyn Write) -> Result<(), Error> {
    let pidfile = file(env, "cassandra.pid");
    super::set::stop_owned("cassandra", owned_pid(env), &pidfile, answers(env), out)
}

/// One status line; whether it answers.
pub fn status(env: &Environment, out: &mut dyn Write) -> bool {
    let pid = owned_pid(env);
    if answers(env) {
        let how = match pid {
            Some(p) => format!(
                "pid {p}, started by this tool, {}, rss {}",
                running_mode(env),
                process::rss(p)
            ),
            None => "not started by this tool".into(),
        };
        say!(
            out,
            "{:<9} up      {}  ({how})",
            "cassandra",
            env.cql_node()
        );
        return true;
    }
    super::set::status_not_answering("cassandra", pid, out);
    false
}
