//! `cargo xtask`: the server sets of `environments.toml`, brought up, down, checked and described.
//! The process work (installs, configs, detached servers with pid files, health waits) is done by
//! `scripts/services.sh`, which gets every value from here.

use std::process::{Command, ExitCode, Stdio};

use xtask::cql;
use xtask::environments::{ClusterEnvironment, Environment, Environments};

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
  services SET COMMAND...       any other scripts/services.sh command with the set's environment
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
    match words.as_slice() {
        ["up", name, kind @ ..] => match target(&envs, name)? {
            Target::Set(env) => services(env.services(&["up"])?),
            Target::Cluster(c) => services(c.services(&with(&["cluster-up"], kind))),
        },
        ["down", "--all"] => {
            let mut rc = 0;
            for name in envs.sets.keys() {
                rc = rc.max(services(envs.environment(name)?.services(&["down"])?)?);
            }
            Ok(rc.max(services(envs.cluster(None)?.services(&["cluster-down"]))?))
        }
        ["down", name, kind @ ..] => match target(&envs, name)? {
            Target::Set(env) => services(env.services(&["down"])?),
            Target::Cluster(c) => services(c.services(&with(&["cluster-down"], kind))),
        },
        ["status", name, kind @ ..] => match target(&envs, name)? {
            Target::Set(env) => status(&env),
            Target::Cluster(c) => services(c.services(&with(&["cluster-status"], kind))),
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
            Ok(0)
        }
        ["sets"] => {
            for (name, set) in &envs.sets {
                println!("{name:<16} {}", set.description);
            }
            for variant in envs.cluster.variants.keys() {
                println!("cluster:{variant:<8} {}", envs.cluster.description);
            }
            Ok(0)
        }
        ["cluster", verb @ ("kill" | "stop" | "start" | "pid"), kind, n] => {
            let c = envs.cluster(None)?;
            services(c.services(&[&format!("cluster-{verb}"), kind, n]))
        }
        ["nodetool", n, rest @ ..] => {
            let c = envs.cluster(None)?;
            services(c.services(&with(&["cluster-nodetool", n], rest)))
        }
        [verb @ ("nats-bin" | "bootstrap")] => {
            services(envs.environment("dev")?.services(&[verb])?)
        }
        [verb @ ("nats-bin" | "bootstrap"), name] => {
            services(envs.environment(name)?.services(&[verb])?)
        }
        ["services", name, rest @ ..] if !rest.is_empty() => {
            services(envs.environment(name)?.services(rest)?)
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(2)
        }
    }
}

fn with<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(tail).copied().collect()
}

/// Runs scripts/services.sh (inheriting stdout/stderr); its exit code.
fn services(mut cmd: Command) -> Result<u8> {
    // The script's CQL checks call back into this binary rather than `cargo run`.
    cmd.env("SCORE_WORKER_XTASK", std::env::current_exe()?);
    let status = cmd.stdin(Stdio::null()).status()?;
    Ok(status.code().unwrap_or(1).clamp(0, 255) as u8)
}

/// `services.sh status`, and the version the set pins, if it pins one, checked against the status line.
fn status(env: &Environment) -> Result<u8> {
    let mut cmd = env.services(&["status"])?;
    cmd.env("SCORE_WORKER_XTASK", std::env::current_exe()?);
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    let rc = out.status.code().unwrap_or(1).clamp(0, 255) as u8;
    if let Some(version) = &env.set.nats.version {
        let nats = text.lines().find(|l| l.starts_with("nats")).unwrap_or("");
        if !nats.contains(&format!("v{version},")) {
            eprintln!(
                "xtask: the nats-server of set {} ({}) is not v{version}: {nats}",
                env.name,
                env.nats_url()
            );
            return Ok(1);
        }
    }
    Ok(rc)
}
