//! nats-server with JetStream: the single server of a set, and the nodes of the 3-node cluster.
//! Each server version has a store of its own (`nats-<version>/`), so a store is never opened by an
//! older server; a server this tool started with another version than the set wants is restarted.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::tools::NatsChoice;
use super::{flag, io, log, probe, process, say, secs, since, wait_ready, Error};
use crate::environments::{ClusterEnvironment, Environment};

fn timeout() -> Duration {
    secs("SCORE_WORKER_NATS_TIMEOUT", 30)
}

fn pidfile(env: &Environment) -> PathBuf {
    env.state_dir.join("nats.pid")
}

/// The set's nats-server, if this tool started it and it runs.
pub fn owned_pid(env: &Environment) -> Option<u32> {
    process::pidfile_pid(&pidfile(env), "nats-server")
}

/// The set's server answers.
pub fn answers(env: &Environment) -> bool {
    probe::nats_ping(&env.set.host, env.set.nats.port)
}

fn summary(env: &Environment, verb: &str, detail: &str, out: &mut dyn Write) {
    let (h, n) = (&env.set.host, &env.set.nats);
    say!(
        out,
        "{:<9} {verb:<7} nats://{h}:{}  monitor http://{h}:{}  {detail}",
        "nats",
        n.port,
        n.monitor_port
    );
}

/// Starts the set's nats-server (or reuses the one answering), waits until `/healthz` is ok.
pub fn start(env: &Environment, out: &mut dyn Write) -> Result<(), Error> {
    let (host, port, mon) = (&env.set.host, env.set.nats.port, env.set.nats.monitor_port);
    let choice = NatsChoice::parse(&env.set.nats.server)?;
    let want = choice.wanted_version()?;
    let verfile = env.state_dir.join("nats.version");
    let fresh = flag("SCORE_WORKER_FRESH_NATS");
    if let Some(pid) = owned_pid(env) {
        let running = probe::nats_version(host, port)
            .or_else(|| {
                fs::read_to_string(&verfile)
                    .ok()
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_else(|| "?".into());
        if fresh || running != want {
            if running != want {
                log(&format!(
                    "restarting our nats-server (pid {pid}): version {running} -> {want}"
                ));
            }
            super::set::stop_to_stderr("nats", pid, &pidfile(env))?;
        }
    }
    if answers(env) {
        let running = probe::nats_version(host, port).unwrap_or_else(|| "?".into());
        let detail = match owned_pid(env) {
            Some(pid) => format!("v{running}, already running (pid {pid}, started by this tool)"),
            None => {
                if running != want {
                    log(&format!("WARNING: the nats-server on {host}:{port} is v{running}, not v{want}, and was not started by this tool: using it as it is"));
                }
                format!(
                    "v{running}, already answering; not started by this tool (down will leave it)"
                )
            }
        };
        summary(env, "reused", &detail, out);
        return Ok(());
    }
    let pid = super::set::running_or_launch("nats-server", owned_pid(env), || {
        let (bin, version) = choice.binary()?;
        super::ports_free("nats", host, &[port, mon])?;
        let store = env.state_dir.join(format!("nats-{version}"));
        if fresh {
            let _ = fs::remove_dir_all(&store);
        }
        fs::create_dir_all(&store).map_err(io(&store))?;
        fs::write(&verfile, format!("{version}\n")).map_err(io(&verfile))?;
        let mut cmd = Command::new(bin);
        cmd.args(["-js", "-a", host, "-p", &port.to_string()])
            .args(["-m", &mon.to_string(), "-sd"])
            .arg(&store)
            .current_dir(&env.state_dir);
        process::launch(cmd, &env.state_dir.join("nats.log"), &pidfile(env))
    })?;
    let log_file = env.state_dir.join("nats.log");
    let took = wait_ready(
        "nats-server",
        pid,
        &log_file,
        timeout(),
        Duration::from_millis(100),
        |_| probe::nats_ping(host, port) && probe::nats_healthz(host, mon),
    );
    match took {
        Ok(took) => {
            let v = fs::read_to_string(&verfile).unwrap_or_default();
            let v = v.trim();
            let state = env.state_dir.display();
            summary(
                env,
                "up",
                &format!(
                    "v{v}, pid {pid}, JetStream in {state}/nats-{v}, ready in {:.1}s",
                    took.as_secs_f64()
                ),
                out,
            );
            Ok(())
        }
        Err(e) => Err(super::set::abandon("nats", pid, &pidfile(env), e)),
    }
}

/// Stops the set's nats-server if this tool started it.
pub fn stop(env: &Environment, out: &mut dyn Write) -> Result<(), Error> {
    super::set::stop_owned("nats", owned_pid(env), &pidfile(env), answers(env), out)
}

/// One status line; whether it answers.
pub fn status(env: &Environment, out: &mut dyn Write) -> bool {
    let pid = owned_pid(env);
    if answers(env) {
        let version = probe::nats_version(&env.set.host, env.set.nats.port).unwrap_or("?".into());
        let how = match pid {
            Some(p) => format!("pid {p}, started by this tool, rss {}", process::rss(p)),
            None => "not started by this tool".into(),
        };
        say!(
            out,
            "{:<9} up      {}  (v{version}, {how})",
            "nats",
            env.nats_url()
        );
        return true;
    }
    super::set::status_not_answering("nats", pid, out);
    false
}

// ---- the cluster's nodes

fn node_file(c: &ClusterEnvironment, n: usize, ext: &str) -> PathBuf {
    c.state_dir.join(format!("nats/n{n}.{ext}"))
}

/// Node `n`'s pid, if this tool started it and it runs.
pub fn node_pid(c: &ClusterEnvironment, n: usize) -> Option<u32> {
    let conf = node_file(c, n, "conf");
    process::pidfile_pid(&node_file(c, n, "pid"), &conf.to_string_lossy())
}

pub fn node_answers(c: &ClusterEnvironment, n: usize) -> bool {
    probe::nats_ping(&c.cluster.host, c.cluster.nodes[n - 1].nats_port)
}

fn node_where(c: &ClusterEnvironment, n: usize) -> String {
    format!(
        "nats://{}:{}",
        c.cluster.host,
        c.cluster.nodes[n - 1].nats_port
    )
}

/// The JetStream meta leader as node `n` sees it.
pub fn leader(c: &ClusterEnvironment, n: usize) -> Option<String> {
    probe::nats_meta_leader(&c.cluster.host, c.cluster.nodes[n - 1].monitor_port)
}

/// Starts node `n` (not running): its config, its store for this version; does not wait.
pub fn node_launch(c: &ClusterEnvironment, n: usize) -> Result<(), Error> {
    let host = &c.cluster.host;
    let node = &c.cluster.nodes[n - 1];
    let (bin, version) = NatsChoice::parse(&c.cluster.nats.server)?.binary()?;
    let what = format!("nats n{n}");
    super::ports_free(
        &what,
        host,
        &[node.nats_port, node.route_port, node.monitor_port],
    )?;
    let store = c.state_dir.join(format!("nats/{version}/n{n}"));
    fs::create_dir_all(&store).map_err(io(&store))?;
    let routes: String = c
        .cluster
        .nodes
        .iter()
        .map(|r| format!("    nats-route://{host}:{}\n", r.route_port))
        .collect();
    let conf = format!(
        "# Generated by cargo xtask: node n{n} of the loopback NATS cluster.\n\
         server_name: n{n}\nlisten: {host}:{}\nhttp: {host}:{}\n\
         jetstream {{\n  store_dir: \"{}\"\n}}\n\
         cluster {{\n  name: {}\n  listen: {host}:{}\n  routes: [\n{routes}  ]\n}}\n",
        node.nats_port,
        node.monitor_port,
        store.display(),
        c.cluster.nats.name,
        node.route_port
    );
    let conf_file = node_file(c, n, "conf");
    fs::write(&conf_file, conf).map_err(io(&conf_file))?;
    let verfile = node_file(c, n, "version");
    fs::write(&verfile, format!("{version}\n")).map_err(io(&verfile))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&conf_file).current_dir(&c.state_dir);
    process::launch(cmd, &node_file(c, n, "log"), &node_file(c, n, "pid"))?;
    Ok(())
}

/// Waits until node `n`'s `/healthz` is ok (JetStream current with the meta leader and its streams).
pub fn node_wait(
    c: &ClusterEnvironment,
    n: usize,
    t0: Instant,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let what = format!("nats n{n}");
    let pid = node_pid(c, n).ok_or(Error::NotRunning { what: what.clone() })?;
    let node = &c.cluster.nodes[n - 1];
    let host = &c.cluster.host;
    // Each failed /healthz is a WRN line in the node's log: every 200 ms, not faster.
    wait_ready(
        &what,
        pid,
        &node_file(c, n, "log"),
        timeout() * 2,
        Duration::from_millis(200),
        |_| probe::nats_ping(host, node.nats_port) && probe::nats_healthz(host, node.monitor_port),
    )?;
    let v = fs::read_to_string(node_file(c, n, "version")).unwrap_or_default();
    say!(
        out,
        "{:<9} n{n}  up  {}  v{}, pid {pid}, healthy in {}, rss {}",
        "nats",
        node_where(c, n),
        v.trim(),
        since(t0),
        process::rss(pid)
    );
    Ok(())
}

/// The whole NATS cluster up: a cluster of another version stopped first (each version has its own
/// store); all three launched at once (JetStream needs a quorum before any node reports healthy).
pub fn cluster_up(c: &ClusterEnvironment, out: &mut dyn Write) -> Result<(), Error> {
    let dir = c.state_dir.join("nats");
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let want = NatsChoice::parse(&c.cluster.nats.server)?.wanted_version()?;
    let nodes: Vec<usize> = (1..=c.cluster.nodes.len()).collect();
    let stale = nodes.iter().any(|&n| {
        node_pid(c, n).is_some()
            && fs::read_to_string(node_file(c, n, "version"))
                .unwrap_or_default()
                .trim()
                != want
    });
    if stale {
        log(&format!("the NATS cluster runs another version than v{want}: stopping it (each version has its own store)"));
        super::cluster::stop_nodes(c, "nats", libc::SIGTERM, &nodes, &mut std::io::stderr())?;
    }
    if flag("SCORE_WORKER_FRESH_CLUSTER") {
        super::cluster::stop_nodes(c, "nats", libc::SIGTERM, &nodes, &mut std::io::stderr())?;
        log(&format!(
            "SCORE_WORKER_FRESH_CLUSTER=1: wiping {}",
            dir.display()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
    }
    let t0 = Instant::now();
    for &n in &nodes {
        if super::set::unless_frozen(&format!("nats n{n}"), node_pid(c, n))?.is_none() {
            node_launch(c, n)?;
        }
    }
    for &n in &nodes {
        node_wait(c, n, t0, out)?;
    }
    say!(
        out,
        "{:<9} cluster {}: {} nodes, JetStream meta leader {}, up in {}",
        "nats",
        c.cluster.nats.name,
        nodes.len(),
        leader(c, 1).unwrap_or("?".into()),
        since(t0)
    );
    Ok(())
}

/// One status line for node `n`; whether it answers.
pub fn node_status(c: &ClusterEnvironment, n: usize, out: &mut dyn Write) -> bool {
    let pid = node_pid(c, n);
    let node = &c.cluster.nodes[n - 1];
    if node_answers(c, n) {
        let host = &c.cluster.host;
        let how = match pid {
            Some(p) => format!("pid {p}, rss {}", process::rss(p)),
            None => "not started by this tool".into(),
        };
        let health = if probe::nats_healthz(host, node.monitor_port) {
            "healthy"
        } else {
            "not healthy"
        };
        say!(
            out,
            "{:<9} n{n}  up      {}  (v{}, {how}, {health}, meta leader {})",
            "nats",
            node_where(c, n),
            probe::nats_version(host, node.nats_port).unwrap_or("?".into()),
            leader(c, n).unwrap_or("none".into())
        );
        return true;
    }
    super::cluster::status_not_answering("nats", n, &node_where(c, n), pid, out);
    false
}
