//! The commands for the 3-node clusters: `up`, `down` and `status` of both kinds or one
//! (`nats`, `cassandra`), one node killed, stopped, started or its pid printed (the chaos suite's
//! cluster scenarios), `nodetool`. The commands that start or stop hold the clusters' lock.

use std::io::Write;
use std::time::Instant;

use super::{cassandra, nats, process, say, since, Error};
use crate::environments::ClusterEnvironment;

/// nats or cassandra.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Nats,
    Cassandra,
}

impl Kind {
    fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "nats" => Ok(Kind::Nats),
            "cassandra" => Ok(Kind::Cassandra),
            _ => Err(Error::Usage(format!(
                "cluster kind '{s}' (nats or cassandra)"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Nats => "nats",
            Kind::Cassandra => "cassandra",
        }
    }

    fn pid(self, c: &ClusterEnvironment, n: usize) -> Option<u32> {
        match self {
            Kind::Nats => nats::node_pid(c, n),
            Kind::Cassandra => cassandra::node_pid(c, n),
        }
    }

    fn answers(self, c: &ClusterEnvironment, n: usize) -> bool {
        match self {
            Kind::Nats => nats::node_answers(c, n),
            Kind::Cassandra => cassandra::node_answers(c, n),
        }
    }
}

/// The kinds a command applies to: the one named, or both.
fn kinds(arg: Option<&&str>) -> Result<Vec<Kind>, Error> {
    match arg {
        Some(k) => Ok(vec![Kind::parse(k)?]),
        None => Ok(vec![Kind::Nats, Kind::Cassandra]),
    }
}

/// "2" or "n2" -> 2.
fn node(c: &ClusterEnvironment, arg: &str) -> Result<usize, Error> {
    arg.trim_start_matches('n')
        .parse()
        .ok()
        .filter(|n| (1..=c.cluster.nodes.len()).contains(n))
        .ok_or_else(|| Error::Usage(format!("node '{arg}' (1-{})", c.cluster.nodes.len())))
}

fn pidfile(c: &ClusterEnvironment, kind: &str, n: usize) -> std::path::PathBuf {
    c.state_dir.join(format!("{kind}/n{n}.pid"))
}

/// Signals the given nodes of `kind` at once (SIGTERM: clean, SIGKILL: killed) and waits until all are
/// gone (SIGKILL after the timeout); one line per node.
pub fn stop_nodes(
    c: &ClusterEnvironment,
    kind: &str,
    sig: i32,
    nodes: &[usize],
    out: &mut dyn Write,
) -> Result<(), Error> {
    let k = Kind::parse(kind)?;
    let t0 = Instant::now();
    let mut running = Vec::new();
    for &n in nodes {
        match k.pid(c, n) {
            Some(pid) => {
                process::signal(pid, sig);
                if sig != libc::SIGKILL {
                    process::signal(pid, libc::SIGCONT);
                }
                running.push((n, pid));
            }
            None => {
                let _ = std::fs::remove_file(pidfile(c, kind, n));
                if k.answers(c, n) {
                    say!(
                        out,
                        "{kind:<9} n{n}  left running: it answers but was not started by this tool"
                    );
                } else {
                    say!(out, "{kind:<9} n{n}  not running");
                }
            }
        }
    }
    let signame = if sig == libc::SIGKILL {
        "SIGKILL"
    } else {
        "SIGTERM"
    };
    // Each node's own exit time: wait for them one by one (the others keep exiting meanwhile).
    for (n, pid) in running {
        let how = if sig == libc::SIGKILL {
            "killed"
        } else {
            "stopped"
        };
        let left = process::wait_gone(&[pid], process::STOP_TIMEOUT.saturating_sub(t0.elapsed()));
        if left.is_empty() {
            say!(
                out,
                "{kind:<9} n{n}  {how} (pid {pid}, {signame}, {})",
                since(t0)
            );
        } else {
            let s = process::stop(&format!("{kind} n{n}"), pid, libc::SIGKILL)?;
            say!(
                out,
                "{kind:<9} n{n}  stopped (pid {pid}, SIGKILL after {signame}, {:.1}s)",
                (t0.elapsed() + s.took).as_secs_f64()
            );
        }
        let _ = std::fs::remove_file(pidfile(c, kind, n));
    }
    Ok(())
}

/// The status line of a node that does not answer: frozen, starting, or down.
pub fn status_not_answering(kind: &str, n: usize, at: &str, pid: Option<u32>, out: &mut dyn Write) {
    match pid {
        Some(p) if process::stopped(p) => {
            say!(out, "{kind:<9} n{n}  frozen  {at}  (pid {p} is SIGSTOPped)")
        }
        Some(p) => say!(
            out,
            "{kind:<9} n{n}  starting {at}  (pid {p} alive, not answering)"
        ),
        None => say!(out, "{kind:<9} n{n}  down    {at}"),
    }
}

fn lock(c: &ClusterEnvironment) -> Result<std::fs::File, Error> {
    process::lock(&c.state_dir.join(".lock"))
}

/// Runs one cluster command (`up`, `down`, `status`, `kill`, `stop`, `start`, `pid`, `nodetool`);
/// 0, or 3 when `status` finds a node down.
pub fn run(
    c: &ClusterEnvironment,
    verb: &str,
    args: &[&str],
    out: &mut dyn Write,
) -> Result<u8, Error> {
    let all: Vec<usize> = (1..=c.cluster.nodes.len()).collect();
    match (verb, args) {
        ("up", [] | [_]) => {
            let _lock = lock(c)?;
            for kind in kinds(args.first())? {
                match kind {
                    Kind::Nats => nats::cluster_up(c, out)?,
                    Kind::Cassandra => cassandra::cluster_up(c, out)?,
                }
            }
        }
        ("down", [] | [_]) => {
            let _lock = lock(c)?;
            for kind in kinds(args.first())? {
                stop_nodes(c, kind.name(), libc::SIGTERM, &all, out)?;
            }
        }
        ("status", [] | [_]) => {
            let mut up = true;
            for kind in kinds(args.first())? {
                for &n in &all {
                    up &= match kind {
                        Kind::Nats => nats::node_status(c, n, out),
                        Kind::Cassandra => cassandra::node_status(c, n, out),
                    };
                }
            }
            return Ok(if up { 0 } else { 3 });
        }
        ("kill" | "stop", [kind, n]) => {
            let (kind, n) = (Kind::parse(kind)?, node(c, n)?);
            let _lock = lock(c)?;
            if kind.pid(c, n).is_none() {
                return Err(Error::NotRunning {
                    what: format!("{} n{n}", kind.name()),
                });
            }
            let sig = if verb == "kill" {
                libc::SIGKILL
            } else {
                libc::SIGTERM
            };
            stop_nodes(c, kind.name(), sig, &[n], out)?;
        }
        ("start", [kind, n]) => {
            let (kind, n) = (Kind::parse(kind)?, node(c, n)?);
            let _lock = lock(c)?;
            match kind {
                Kind::Nats => {
                    if nats::node_pid(c, n).is_none() {
                        nats::node_launch(c, n)?;
                    }
                    nats::node_wait(c, n, Instant::now(), out)?;
                }
                Kind::Cassandra => cassandra::node_start(c, n, out)?,
            }
        }
        ("pid", [kind, n]) => {
            let (kind, n) = (Kind::parse(kind)?, node(c, n)?);
            let pid = kind.pid(c, n).ok_or(Error::NotRunning {
                what: format!("{} n{n}", kind.name()),
            })?;
            say!(out, "{pid}");
        }
        ("nodetool", [n, rest @ ..]) => return cassandra::nodetool(c, node(c, n)?, rest, out),
        _ => return Err(Error::Usage(format!("cluster-{verb} {}", args.join(" ")))),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::environments::Environments;

    #[test]
    fn nodes_and_kinds_are_checked() {
        let c = Environments::load().unwrap().cluster(None).unwrap();
        assert_eq!(node(&c, "2").unwrap(), 2);
        assert_eq!(node(&c, "n3").unwrap(), 3);
        for bad in ["0", "4", "x", ""] {
            assert!(matches!(node(&c, bad), Err(Error::Usage(_))), "{bad}");
        }
        assert!(Kind::parse("nats").is_ok() && Kind::parse("cassandra").is_ok());
        assert!(matches!(Kind::parse("postgres"), Err(Error::Usage(_))));
        assert_eq!(kinds(None).unwrap().len(), 2);
    }
}
