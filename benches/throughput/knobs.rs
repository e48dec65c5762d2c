//! The run's settings, all from `SCORE_WORKER_BENCH_*` environment variables (see the crate doc for
//! the list). A value that does not parse stops the run: a typo must not silently bench the default.

use std::path::PathBuf;
use std::str::FromStr;

use crate::workload::Spec;

pub struct Knobs {
    pub spec: Spec,
    pub rounds: usize,
    /// Paced phase rate in events/s; `None`: half of the variant's backlog rate in the same round.
    pub rate: Option<f64>,
    /// Length of the paced phase; 0 skips it.
    pub paced_seconds: f64,
    /// Another build of the binary: (label, path).
    pub baseline: Option<(String, PathBuf)>,
    pub flush1: bool,
    /// More worker variants of this build with other settings (ablation):
    /// `SCORE_WORKER_BENCH_VARIANTS="inflight16:BATCH__MAX_INFLIGHT=16;nobatch:SCYLLA__BATCH_MAX_BYTES=0,X=Y"`.
    pub variants: Vec<(String, Vec<(String, String)>)>,
    pub ceilings: bool,
    /// Flushes in flight tried by the protocol ceiling; the best is reported.
    pub protocol_concurrency: Vec<usize>,
    /// Distinct keys per flush of the protocol ceiling (the worker's `batch.max_scores`).
    pub protocol_flush: usize,
    /// Batches in flight of the naive ceiling.
    pub naive_concurrency: usize,
    /// Events per naive batch (one batch per table).
    pub naive_batch: usize,
    /// Keep the keyspaces after the run (they are dropped by default).
    pub keep: bool,
    /// Only drop what interrupted runs left behind, then exit.
    pub cleanup: bool,
    /// Where the SVG goes; `None` (SCORE_WORKER_BENCH_SVG=0) writes none.
    pub svg: Option<PathBuf>,
    /// Where the JSON goes.
    pub out_dir: PathBuf,
}

fn var(name: &str) -> Option<String> {
    std::env::var(format!("SCORE_WORKER_BENCH_{name}"))
        .ok()
        .filter(|v| !v.trim().is_empty())
}

fn num<T: FromStr>(name: &str, default: T) -> T {
    match var(name) {
        None => default,
        Some(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SCORE_WORKER_BENCH_{name}={v:?} is not a valid number")),
    }
}

fn flag(name: &str, default: bool) -> bool {
    var(name).map_or(default, |v| !matches!(v.trim(), "0" | "false" | "no"))
}

fn fraction(name: &str, default: f64) -> f64 {
    let f = num(name, default);
    assert!(
        (0.0..=1.0).contains(&f),
        "SCORE_WORKER_BENCH_{name} must be a fraction in 0..=1, got {f}"
    );
    f
}

impl Knobs {
    pub fn from_env() -> Knobs {
        let root = xtask::environments::root().to_path_buf();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let spec = Spec {
            events: num("EVENTS", 30_000),
            profiles: num("PROFILES", 20_000usize).max(1),
            leaderboards: num("LEADERBOARDS", 3usize).max(1),
            hot: fraction("HOT", 0.30),
            skew: num("SKEW", 1.16),
            duplicates: fraction("DUPLICATES", 0.0),
            out_of_order: fraction("OUT_OF_ORDER", 0.0),
            seed: num("SEED", 1),
            changes: var("CHANGES").map(|_| num("CHANGES", 0usize)),
            hot_keys: num("HOT_KEYS", 0usize),
            hot_changes: num("HOT_CHANGES", 0usize),
        };
        assert!(spec.skew > 0.0, "SCORE_WORKER_BENCH_SKEW must be > 0");
        assert!(
            spec.changes != Some(0),
            "SCORE_WORKER_BENCH_CHANGES must be at least 1"
        );
        assert!(
            (spec.hot_keys == 0) == (spec.hot_changes == 0),
            "SCORE_WORKER_BENCH_HOT_KEYS and SCORE_WORKER_BENCH_HOT_CHANGES go together, both at least 1"
        );
        assert!(
            spec.hot_events() <= spec.events,
            "SCORE_WORKER_BENCH_HOT_KEYS × HOT_CHANGES = {} is more than EVENTS = {}",
            spec.hot_events(),
            spec.events
        );
        assert!(
            spec.churned_keys() <= spec.profiles * spec.leaderboards,
            "SCORE_WORKER_BENCH_CHANGES: {} keys do not fit in PROFILES × LEADERBOARDS = {}",
            spec.churned_keys(),
            spec.profiles * spec.leaderboards
        );
        let baseline = var("BASELINE").map(|path| {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "SCORE_WORKER_BENCH_BASELINE={} is not a file",
                path.display()
            );
            let label = var("BASELINE_LABEL").unwrap_or_else(|| "baseline".into());
            (label, path)
        });
        let protocol_concurrency = var("PROTOCOL_CONCURRENCY")
            .unwrap_or_else(|| "1,4,16,64".into())
            .split(',')
            .map(|c| {
                c.trim().parse::<usize>().ok().filter(|c| *c > 0).unwrap_or_else(|| {
                    panic!("SCORE_WORKER_BENCH_PROTOCOL_CONCURRENCY: {c:?} is not a positive number")
                })
            })
            .collect();
        Knobs {
            spec,
            rounds: num("ROUNDS", 2usize).max(1),
            rate: Some(num("RATE", 0.0)).filter(|r| *r > 0.0),
            paced_seconds: num("SECONDS", 10.0),
            baseline,
            flush1: flag("FLUSH1", false),
            variants: var("VARIANTS").map(|v| variants(&v)).unwrap_or_default(),
            ceilings: flag("CEILINGS", true),
            protocol_concurrency,
            protocol_flush: num("PROTOCOL_FLUSH", 50usize).max(1),
            naive_concurrency: num("NAIVE_CONCURRENCY", 32usize).max(1),
            naive_batch: num("NAIVE_BATCH", 50usize).max(1),
            keep: flag("KEEP", false),
            cleanup: flag("CLEANUP", false),
            svg: match var("SVG") {
                Some(v) if v == "0" => None,
                Some(v) => Some(PathBuf::from(v)),
                None => Some(root.join("docs/performance.svg")),
            },
            out_dir: var("OUT").map_or_else(|| target.join("bench"), PathBuf::from),
        }
    }
}

/// `name:KEY=VALUE,KEY=VALUE;name2:...`
fn variants(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    text.split(';')
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            let (name, settings) = v.split_once(':').unwrap_or_else(|| {
                panic!("SCORE_WORKER_BENCH_VARIANTS: `{v}` is not name:KEY=VALUE,...")
            });
            let settings = settings
                .split(',')
                .map(|kv| {
                    let (k, val) = kv.split_once('=').unwrap_or_else(|| {
                        panic!("SCORE_WORKER_BENCH_VARIANTS: `{kv}` is not KEY=VALUE")
                    });
                    (k.trim().to_string(), val.trim().to_string())
                })
                .collect();
            (name.trim().to_string(), settings)
        })
        .collect()
}
