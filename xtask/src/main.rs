//! `cargo xtask`: the server sets of `environments.toml`, brought up, down, checked and described.
//! The process work (configs, detached servers with pid files, health waits) is [`xtask::servers`];
//! installs are `scripts/bootstrap.sh`.

use std::process::ExitCode;

use xtask::cql;
use xtask::environments::{ClusterEnvironment, Environment, Environments};
use xtask::servers;

const USAGE: &str = "\
usage: cargo xtask COMMAND
  up SET [nats|cassandra]       start a server set (or the clusters, or one kind of them), wait until healthy
  down SET|--all [nats|cassandra]  stop a set (every set and the clusters with --all)
  status SET                    one line per server; exit 3 if one does not answer, 1 if a pinned version differs
  env [--worker] SET...         shell `export` lines for the sets (--worker: the worker's SCORE_WORKER__ settings too)
  sets                          the sets environments.toml declares
  cluster kill|stop|start|pid nats|cassandra N   control node N (1-3) of a cluster
  nodetool N ARGS...            Cassandra's nodetool against cluster node N
  nats-bin [SET]                the path of the nats-server binary the set uses (built or installed first)
  bootstrap [SET]               install/fetch/build what the set needs (JDK 17, Cassandra jars, nats-server), start nothing
  services SET COMMAND...       one server of a set: start-nats, stop-cassandra, nats-pid, cassandra-pid, ...
  cql [-c CONSISTENCY] HOST:PORT QUERY   one CQL query against one node, rows tab-separated
SET: dev, chaos, secure, oldest, cluster, cluster:one-dc, cluster:two-dc (environments.toml)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("xtask: {}", report(&*e));
            ExitCode::from(1)
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// An error with its causes, one after another.
fn report(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

/// What a SET argument names.
enum Target {
    Set(Box<Environment>),
    Cluster(Box<ClusterEnvironment>),
}

fn target(envs: &Environments, name: &str) -> Result<Target> {
    Ok(match name.split_once(':') {
        None if name == "cluster" => Target::Cluster(Box::new(envs.cluster(None)?)),
        Some(("cluster", variant)) => Target::Cluster(Box::new(envs.cluster(Some(variant))?)),
        _ => Target::Set(Box::new(envs.environment(name)?)),
    })
}

fn run(args: &[String]) -> Result<u8> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    if let ["cql", rest @ ..] = words.as_slice() {
        let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
        return Ok(match cql::run(&rest) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("cql: {}", report(&e));
                e.exit_code() as u8
            }
        });
    }
    let envs = Environments::load()?;
    let cluster = envs.cluster(None)?;
    let out = &mut std::io::stdout();
    let code = match words.as_slice() {
        ["up", name, kind @ ..] => match target(&envs, name)? {
            Target::Set(env) => servers::run(&env, &cluster, &["up"], out)?,
            Target::Cluster(c) => servers::cluster::run(&c, "up", kind, out)?,
        },
        ["down", "--all"] => {
            for name in envs.sets.keys() {
                servers::set::run(&envs.environment(name)?, &["down"], out)?;
            }
            servers::cluster::run(&cluster, "down", &[], out)?
        }
        ["down", name, kind @ ..] => match target(&envs, name)? {
            Target::Set(env) => servers::set::run(&env, &["down"], out)?,
            Target::Cluster(c) => servers::cluster::run(&c, "down", kind, out)?,
        },
        ["status", name, kind @ ..] => match target(&envs, name)? {
            Target::Set(env) => status(&env, &cluster)?,
            Target::Cluster(c) => servers::cluster::run(&c, "status", kind, out)?,
        },
        ["env", rest @ ..] => {
            let (worker, names) = match rest {
                ["--worker", names @ ..] => (true, names),
                names => (false, names),
            };
            if names.is_empty() {
                return Err(USAGE.into());
            }
            for name in names {
                let vars = match target(&envs, name)? {
                    Target::Set(e) if worker => e.worker_env(),
                    Target::Set(e) => e.services_env(),
                    Target::Cluster(c) if worker => c.worker_env(),
                    Target::Cluster(c) => c.services_env(),
                };
                for (k, v) in vars {
                    println!("export {k}='{}'", v.replace('\'', r"'\''"));
                }
            }
            0
        }
        ["sets"] => {
            for (name, set) in &envs.sets {
                println!("{name:<16} {}", set.description);
            }
            for variant in envs.cluster.variants.keys() {
                println!("cluster:{variant:<8} {}", envs.cluster.description);
            }
            0
        }
        ["cluster", verb @ ("kill" | "stop" | "start" | "pid"), kind, n] => {
            servers::cluster::run(&cluster, verb, &[kind, n], out)?
        }
        ["nodetool", rest @ ..] => servers::cluster::run(&cluster, "nodetool", rest, out)?,
        [verb @ ("nats-bin" | "bootstrap")] => {
            servers::set::run(&envs.environment("dev")?, &[verb], out)?
        }
        [verb @ ("nats-bin" | "bootstrap"), name] => {
            servers::set::run(&envs.environment(name)?, &[verb], out)?
        }
        ["services", name, rest @ ..] if !rest.is_empty() => {
            servers::run(&envs.environment(name)?, &cluster, rest, out)?
        }
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    Ok(code)
}

/// The set's status lines, and the version the set pins, if it pins one, checked against the nats line.
fn status(env: &Environment, cluster: &ClusterEnvironment) -> Result<u8> {
    let mut text = Vec::new();
    let code = servers::run(env, cluster, &["status"], &mut text)?;
    let text = String::from_utf8_lossy(&text);
    print!("{text}");
    if let Some(version) = &env.set.nats.version {
        let nats = text.lines().find(|l| l.starts_with("nats")).unwrap_or("");
        if !nats.contains(&format!("(v{version},")) {
            eprintln!(
                "xtask: the nats-server of set {} ({}) is not v{version}: {nats}",
                env.name,
                env.nats_url()
            );
            return Ok(1);
        }
    }
    Ok(code)
}
