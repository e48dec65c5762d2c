//! The command line an operator and a container runtime use, run as the real binary against the real
//! servers: `--version` and the build-info revision, `health`, `check` and `dlq list` as JSON,
//! completions, and list settings given as a comma-separated environment variable.

use std::process::{Command, Output};
use std::time::Duration;

use crate::support::*;

fn run(config: &score_worker::config::Config, args: &[&str], env: &[(&str, &str)]) -> Output {
    worker_command(config, 0)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the worker binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that `score <verb> --at` four minutes ahead failed; its stderr.
fn assert_refused(refused: &Output, verb: &str) -> String {
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    eprintln!("score {verb} --at +4 min: {:?} {stderr}", refused.status);
    assert!(
        !refused.status.success(),
        "{verb} 4 minutes ahead: {}",
        stdout(refused)
    );
    stderr
}

fn git_revision() -> String {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(xtask::environments::root())
        .output()
        .expect("git runs");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_health_json_output_completions_and_comma_lists() {
    let (_servers, config) = sharing("cli").await;
    let revision = git_revision();

    let version = stdout(&run(&config, &["--version"], &[]));
    assert_eq!(
        version.trim(),
        format!(
            "score-worker {} (revision {revision})",
            env!("CARGO_PKG_VERSION")
        ),
        "--version names the crate version and the git revision"
    );

    let bash = stdout(&run(&config, &["completions", "bash"], &[]));
    assert!(
        bash.contains("complete -F _score__worker") && bash.contains("publish-sample"),
        "a bash completion script for every subcommand"
    );

    // Nothing listens yet: `health` fails, naming what it asked.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [("SCORE_WORKER__HTTP__LISTEN", listen.as_str())];
    let down = run(&config, &["health"], &env);
    assert_eq!(down.status.code(), Some(1), "health with no worker");
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("/readyz"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );

    // `check` and the worker itself with the database nodes as one comma-separated string.
    let node = config.scylla.nodes[0].clone();
    let nodes = format!("{node}, {node}");
    assert_check_reads_two_nodes(&config, &node, &nodes);

    let mut child = worker_command(&config, port)
        .env("SCORE_WORKER__SCYLLA__NODES", &nodes)
        .arg("run")
        .spawn()
        .expect("the worker starts");
    wait_healthy(&config, &mut child, &env).await;
    assert!(run(&config, &["health", "--live"], &env).status.success());
    let (_, metrics) = http_get(listen.parse().unwrap(), "/metrics").await;
    assert!(
        metrics.contains(&format!("revision=\"{revision}\"")),
        "score_worker_build_info carries the revision"
    );

    // A dead letter, listed as one JSON object per line.
    let (_client, js) = jetstream(&config).await;
    publish_raw(&js, &config, "cli", b"{not json".to_vec(), "cli-bad-1").await;
    let letters = listed_letters(&config).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["reason"], "malformed_json");
    assert_eq!(letters[0]["payload"], "{not json");
    assert_eq!(letters[0]["payload_bytes"], 9);

    signal_term(&mut child);
}

/// `check --output json` with `nodes` (`node` twice, comma separated): a JSON report of at least
/// five checks, failing (the stream does not exist before the first `run`) with exit code 1, and
/// the nodes read as two.
fn assert_check_reads_two_nodes(config: &score_worker::config::Config, node: &str, nodes: &str) {
    let check = run(
        config,
        &["check", "--output", "json"],
        &[("SCORE_WORKER__SCYLLA__NODES", nodes)],
    );
    let report: serde_json::Value =
        serde_json::from_slice(&check.stdout).expect("check prints JSON");
    let checks = report["checks"].as_array().expect("a list of checks");
    assert!(checks.len() >= 5, "{report}");
    assert!(
        checks
            .iter()
            .all(|c| c["ok"].is_boolean() && c["detail"].is_string()),
        "{report}"
    );
    // The stream does not exist before the first `run`: the report says so and the exit code agrees.
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(check.status.code(), Some(1));
    assert!(
        checks[0]["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("scylla.nodes=[\"{node}\", \"{node}\"]")),
        "the comma-separated nodes were read as two: {}",
        checks[0]["detail"]
    );
}

/// Waits (at most 60 s) until `health` passes against `child`; panics if it exits.
async fn wait_healthy(
    config: &score_worker::config::Config,
    child: &mut std::process::Child,
    env: &[(&str, &str)],
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the worker exited: {status:?}");
        }
        if run(config, &["health"], env).status.success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The dead letters `dlq list --output json` lists (one JSON object per line), once there is one
/// (at most 30 s).
async fn listed_letters(config: &score_worker::config::Config) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = stdout(&run(config, &["dlq", "list", "--output", "json"], &[]));
        let letters: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is a JSON object"))
            .collect();
        if !letters.is_empty() {
            return letters;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letter listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn signal_term(child: &mut std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// `score set|delete --at` (issue 18, item 1): a repair arrives when the operator runs it, so its time
/// may be at most `validation.max_ahead_of_arrival` ahead of the operator's clock — a delete included,
/// which had no limit at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_ahead_of_the_operators_clock_is_refused() {
    let (_servers, config) = sharing("repair_clock").await;
    let profile = uuid::Uuid::new_v4().to_string();
    let board = format!("repair-clock-{}", &profile[..8]);
    let ahead = |seconds: i64| {
        (chrono::Utc::now() + chrono::Duration::seconds(seconds))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let key = [
        "--profile",
        profile.as_str(),
        "--leaderboard",
        board.as_str(),
    ];
    let wallet = wallet_of(profile.parse().unwrap());
    let set = |at: &str, score: &str| {
        let mut args = vec!["score", "set"];
        args.extend(key);
        args.extend(["--wallet", wallet.as_str(), "--score", score, "--at", at]);
        run(&config, &args, &[])
    };
    let get = || {
        let mut args = vec!["score", "get"];
        args.extend(key);
        stdout(&run(&config, &args, &[]))
    };

    let four_minutes = ahead(240);
    let stderr = assert_refused(&set(&four_minutes, "999"), "set");
    assert!(
        stderr.contains("ahead of this machine's clock; a repair may be at most 2.000s ahead"),
        "{stderr}"
    );
    assert!(get().starts_with("no score"), "nothing written: {}", get());

    let written = set(&ahead(-1), "7");
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let mut delete = vec!["score", "delete"];
    delete.extend(key);
    delete.extend(["--at", four_minutes.as_str()]);
    let stderr = assert_refused(&run(&config, &delete, &[]), "delete");
    assert!(stderr.contains("a repair may be at most"), "{stderr}");
    assert!(get().starts_with("score 7 "), "the score stays: {}", get());
}
