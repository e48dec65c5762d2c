//! The nodes of the 3-node Cassandra cluster: one token each, every node a seed, hinted handoff on;
//! started one after another, each waited for until every running node gossips it NORMAL.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::jvm::{daemon, deploy, jvm_opts, Instance, Yaml};
use super::timeout;
use crate::environments::ClusterEnvironment;
use crate::servers::{flag, io, log, probe, process, say, since, tools, wait_ready, Error};

/// Murmur3 tokens -2^63 + k * 2^64/3: one token per node, each node primary for a third of the ring.
const TOKENS: [&str; 3] = [
    "-9223372036854775808",
    "-3074457345618258603",
    "3074457345618258602",
];

fn node_file(c: &ClusterEnvironment, n: usize, name: &str) -> PathBuf {
    c.state_dir.join(format!("cassandra/n{n}{name}"))
}

fn addr(c: &ClusterEnvironment, n: usize) -> &str {
    &c.cluster.nodes[n - 1].address
}

fn node_where(c: &ClusterEnvironment, n: usize) -> String {
    format!("{}:{}", addr(c, n), c.cluster.cassandra.cql_port)
}

/// Node `n`'s pid, if this tool started it and it runs.
pub fn node_pid(c: &ClusterEnvironment, n: usize) -> Option<u32> {
    let yaml = node_file(c, n, ".yaml");
    process::pidfile_pid(&node_file(c, n, ".pid"), &yaml.to_string_lossy())
}

pub fn node_answers(c: &ClusterEnvironment, n: usize) -> bool {
    probe::cql_ping(addr(c, n), c.cluster.cassandra.cql_port)
}

/// The layout the cluster's data was created with: each node's datacenter, or none (SimpleSnitch, one
/// datacenter; also when nothing is recorded).
fn recorded_layout(c: &ClusterEnvironment) -> Vec<String> {
    fs::read_to_string(c.state_dir.join("cassandra/datacenters"))
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn record_layout(c: &ClusterEnvironment) -> Result<(), Error> {
    let path = c.state_dir.join("cassandra/datacenters");
    fs::write(&path, c.datacenters.join(" ") + "\n").map_err(io(&path))
}

/// Node `n`'s yaml: the cluster's name, the node's token, address and ports, every node a seed,
/// hinted handoff on (as on Scylla: a node back from an outage gets the writes it missed).
fn node_yaml(c: &ClusterEnvironment, n: usize, datacenter: Option<&str>) -> Result<PathBuf, Error> {
    let cass = &c.cluster.cassandra;
    let seeds: Vec<String> = c
        .cluster
        .nodes
        .iter()
        .map(|r| format!("{}:{}", r.address, cass.storage_port))
        .collect();
    let mut yaml = Yaml::template()?;
    yaml.key("cluster_name", &cass.name)?
        .key(
            "num_tokens",
            &format!("1\ninitial_token: {}", TOKENS[n - 1]),
        )?
        .set("- seeds:", &format!("- seeds: \"{}\"", seeds.join(",")))?
        .key("listen_address", addr(c, n))?
        .key("rpc_address", addr(c, n))?
        .key("storage_port", &cass.storage_port.to_string())?
        .key("native_transport_port", &cass.cql_port.to_string())?
        .key("hinted_handoff_enabled", "true")?
        // Before serving CQL a node waits for its known peers; on a warm start of n1 none is up yet.
        .append("\n# Cluster only.\nblock_for_peers_timeout_in_secs: 2\n");
    if datacenter.is_some() {
        yaml.key("endpoint_snitch", "GossipingPropertyFileSnitch")?;
    }
    let path = node_file(c, n, ".yaml");
    yaml.write(&path)?;
    Ok(path)
}

/// Starts node `n` (not running) in the recorded layout; does not wait.
fn node_launch(c: &ClusterEnvironment, n: usize) -> Result<(), Error> {
    let cass = &c.cluster.cassandra;
    let what = format!("cassandra n{n}");
    let jmx = c.cluster.nodes[n - 1].jmx_port;
    crate::servers::ports_free(&what, addr(c, n), &[cass.cql_port, cass.storage_port])?;
    crate::servers::ports_free(&format!("JMX of {what}"), &c.cluster.host, &[jmx])?;
    let (java, lib) = (tools::java()?, tools::cassandra_lib()?);
    let layout = recorded_layout(c);
    let datacenter = layout.get(n - 1).map(String::as_str);
    if !layout.is_empty() && datacenter.is_none() {
        return Err(Error::Failed(format!(
            "the recorded layout names no datacenter for n{n}"
        )));
    }
    let yaml = node_yaml(c, n, datacenter)?;
    // JMX for nodetool, on loopback only. ring_delay 5 s, not 30: the first node's shadow gossip round
    // waits that long for the other seeds, not yet started (n1 took 40 s to CQL instead of ~12 s).
    let mut extra = vec![
        format!("-Dcassandra.jmx.local.port={jmx}"),
        "-Dcassandra.ring_delay_ms=5000".into(),
    ];
    if let Some(dc) = datacenter {
        let rackdc = node_file(c, n, "-rackdc.properties");
        fs::write(&rackdc, format!("dc={dc}\nrack=rack1\n")).map_err(io(&rackdc))?;
        extra.push(format!(
            "-Dcassandra-rackdc.properties=file://{}",
            rackdc.display()
        ));
    }
    let instance = Instance {
        heap: &cass.heap,
        yaml: &yaml,
        data: &node_file(c, n, ""),
        tmp: &node_file(c, n, "-tmp"),
        extra,
    };
    let mut cmd = daemon(&java, &lib, &instance)?;
    cmd.current_dir(&c.state_dir);
    process::launch(cmd, &node_file(c, n, ".log"), &node_file(c, n, ".pid"))?;
    Ok(())
}

/// Every running node answers CQL and gossips every other running node as NORMAL, at the generation
/// that node reports for itself (a restarted node has been seen again), with one schema version: a
/// CQL-only "nodetool status says UN everywhere". Err: why not yet.
fn converged(c: &ClusterEnvironment) -> Result<(), String> {
    let up: Vec<usize> = (1..=c.cluster.nodes.len())
        .filter(|&n| node_pid(c, n).is_some())
        .collect();
    if up.is_empty() {
        return Err("no node is running".into());
    }
    // views[j]: address -> (generation, status, schema) as node j's gossip has them.
    let mut views = Vec::new();
    for &j in &up {
        if !node_answers(c, j) {
            return Err(format!("n{j} does not answer CQL yet"));
        }
        let rows = crate::cql::rows(
            &node_where(c, j),
            "SELECT address, generation, status_with_port, \"schema\" FROM system_views.gossip_info",
        )
        .map_err(|e| format!("n{j}: gossip_info query failed: {e}"))?;
        views.push((j, rows));
    }
    let seen = |j: usize, k: usize| -> Option<&Vec<String>> {
        let rows = &views.iter().find(|(v, _)| *v == j)?.1;
        rows.iter()
            .find(|r| r.first().map(String::as_str) == Some(addr(c, k)))
    };
    let mut schema: Option<&str> = None;
    for &j in &up {
        for &k in &up {
            let own = seen(k, k).and_then(|r| r.get(1)).map(String::as_str);
            let row = seen(j, k);
            let field = |i: usize| row.and_then(|r| r.get(i)).map(String::as_str);
            if field(1).is_none() || field(1) != own {
                return Err(format!(
                    "n{j} has not seen n{k} (generation {}, n{k} says {})",
                    field(1).unwrap_or("none"),
                    own.unwrap_or("?")
                ));
            }
            if !field(2).unwrap_or("").starts_with("NORMAL") {
                return Err(format!("n{j} sees n{k} as '{}'", field(2).unwrap_or("?")));
            }
            let s = field(3).unwrap_or("");
            if *schema.get_or_insert(s) != s {
                return Err(format!("schema versions differ (n{j} sees n{k} at {s})"));
            }
        }
    }
    Ok(())
}

/// Waits until node `n` answers CQL and the running nodes have converged.
fn node_wait(
    c: &ClusterEnvironment,
    n: usize,
    t0: Instant,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let what = format!("cassandra n{n}");
    let pid = node_pid(c, n).ok_or(Error::NotRunning { what: what.clone() })?;
    let mut cql_at = None;
    let log_file = node_file(c, n, ".log");
    let waited = wait_ready(
        &what,
        pid,
        &log_file,
        timeout(),
        Duration::from_millis(250),
        |why| {
            if cql_at.is_none() && node_answers(c, n) {
                cql_at = Some(since(t0));
            }
            if cql_at.is_none() {
                *why = "no CQL".into();
                return false;
            }
            converged(c).map_err(|w| *why = w).is_ok()
        },
    );
    if let Err(e @ Error::Exited { .. }) = waited {
        let _ = fs::remove_file(node_file(c, n, ".pid"));
        return Err(e);
    }
    waited?;
    say!(
        out,
        "{:<9} n{n}  up  {}  pid {pid}, CQL in {}, UN (gossip) in {}, rss {}",
        "cassandra",
        node_where(c, n),
        cql_at.unwrap_or_default(),
        since(t0),
        process::rss(pid)
    );
    Ok(())
}

/// Starts node `n` unless it runs, waits until the cluster has converged.
pub fn node_start(c: &ClusterEnvironment, n: usize, out: &mut dyn Write) -> Result<(), Error> {
    let mut t0 = Instant::now();
    match crate::servers::set::unless_frozen(&format!("cassandra n{n}"), node_pid(c, n))? {
        Some(_) => {}
        None if node_answers(c, n) => {
            return Err(Error::Failed(format!(
                "{} answers CQL but is not a node this tool started",
                node_where(c, n)
            )))
        }
        None => {
            tools::java()?;
            tools::cassandra_lib()?;
            t0 = Instant::now(); // JVM start -> ready; installs are logged on their own
            node_launch(c, n)?;
        }
    }
    node_wait(c, n, t0, out)
}

/// The Cassandra cluster up in the environment's layout, one node after another (each joins the ring
/// before the next starts). A node cannot change datacenter: another layout is stopped and wiped first.
pub fn cluster_up(c: &ClusterEnvironment, out: &mut dyn Write) -> Result<(), Error> {
    let dir = c.state_dir.join("cassandra");
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let nodes: Vec<usize> = (1..=c.cluster.nodes.len()).collect();
    // The data is deleted next, so nothing is gained by a clean shutdown (a drain and flush of every
    // node, ~4 s each): SIGKILL.
    let wipe = |why: &str| -> Result<(), Error> {
        crate::servers::cluster::stop_nodes(
            c,
            "cassandra",
            libc::SIGKILL,
            &nodes,
            &mut std::io::stderr(),
        )?;
        log(&format!("{why}: wiping {}", dir.display()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(io(&dir))
    };
    if recorded_layout(c) != c.datacenters {
        wipe(&format!(
            "the Cassandra cluster's layout is not {}",
            c.variant
        ))?;
    }
    if flag("SCORE_WORKER_FRESH_CLUSTER") {
        wipe("SCORE_WORKER_FRESH_CLUSTER=1")?;
    }
    record_layout(c)?;
    tools::java()?;
    tools::cassandra_lib()?;
    let t0 = Instant::now();
    for &n in &nodes {
        node_start(c, n, out)?;
    }
    let layout = if c.datacenters.is_empty() {
        "one datacenter".to_owned()
    } else {
        format!("datacenters {}", c.datacenters.join(" "))
    };
    let cass = &c.cluster.cassandra;
    say!(
        out,
        "{:<9} cluster {}: {} nodes, CQL port {} on {}, heap {} each, {layout}, up in {}",
        "cassandra",
        cass.name,
        nodes.len(),
        cass.cql_port,
        nodes
            .iter()
            .map(|&n| addr(c, n))
            .collect::<Vec<_>>()
            .join(" "),
        cass.heap,
        since(t0)
    );
    Ok(())
}

/// "n1=NORMAL n2=NORMAL ..." as node `n`'s gossip has them.
fn gossip(c: &ClusterEnvironment, n: usize) -> String {
    let rows = crate::cql::rows(
        &node_where(c, n),
        "SELECT address, status_with_port FROM system_views.gossip_info",
    )
    .unwrap_or_default();
    let mut seen: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let a = r.first()?;
            let who = (1..=c.cluster.nodes.len())
                .find(|&k| addr(c, k) == a)
                .map_or_else(|| a.clone(), |k| format!("n{k}"));
            let status: String = r
                .get(1)?
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            Some(format!("{who}={status}"))
        })
        .collect();
    seen.sort();
    seen.join(" ")
}

/// One status line for node `n`; whether it answers.
pub fn node_status(c: &ClusterEnvironment, n: usize, out: &mut dyn Write) -> bool {
    let pid = node_pid(c, n);
    if node_answers(c, n) {
        let how = match pid {
            Some(p) => format!("pid {p}, rss {}", process::rss(p)),
            None => "not started by this tool".into(),
        };
        say!(
            out,
            "{:<9} n{n}  up      {}  ({how}, gossip: {})",
            "cassandra",
            node_where(c, n),
            gossip(c, n)
        );
        return true;
    }
    crate::servers::cluster::status_not_answering("cassandra", n, &node_where(c, n), pid, out);
    false
}

/// Cassandra's nodetool against node `n` (JMX on loopback); its output to `out`, its exit code.
pub fn nodetool(
    c: &ClusterEnvironment,
    n: usize,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<u8, Error> {
    let java = tools::java()?;
    let lib = tools::cassandra_lib()?;
    let output = Command::new(&java)
        .args(jvm_opts(&java)?)
        .args(["-Xmx128m", "-Djava.net.preferIPv4Stack=true"])
        .arg(format!(
            "-Dlogback.configurationFile={}",
            deploy().join("logback.xml").display()
        ))
        .arg("-cp")
        .arg(format!("{}/*", lib.display()))
        .arg("org.apache.cassandra.tools.NodeTool")
        .args(["-h", &c.cluster.host, "-p"])
        .arg(c.cluster.nodes[n - 1].jmx_port.to_string())
        .args(args)
        .output()
        .map_err(io(&java))?;
    let _ = out.write_all(&output.stdout);
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    Ok(output.status.code().unwrap_or(1).clamp(0, 255) as u8)
}
