//! CPU time and peak memory of processes, from `/proc`, and the pids of the servers.

use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on every Linux we run on).
const TICKS: f64 = 100.0;

/// User + system CPU seconds a process has used so far; `NaN` if it cannot be read.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (field(11), field(12)) {
        (Some(user), Some(system)) => (user + system) / TICKS,
        _ => f64::NAN,
    }
}

/// Peak resident set size (VmHWM) in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The servers whose CPU each pass is charged with.
#[derive(Debug, Clone, Copy)]
pub struct Servers {
    pub cassandra: Option<u32>,
    pub nats: Option<u32>,
}

impl Servers {
    /// Asks the xtask library (`cassandra-pid`, `nats-pid`) for the dev set (SCORE_WORKER_LOCAL and the
    /// port variables move it; it finds servers it did not start by their listening port).
    pub fn find() -> Servers {
        let pid = |kind: &str| {
            let dev = xtask::environments::Environment::load("dev").ok()?;
            let out = dev.services(&[&format!("{kind}-pid")]).ok()?;
            out.trim().parse().ok()
        };
        let servers = Servers {
            cassandra: pid("cassandra"),
            nats: pid("nats"),
        };
        if servers.cassandra.is_none() || servers.nats.is_none() {
            eprintln!(
                "bench: warning: server pids not found ({servers:?}); their CPU reads as NaN"
            );
        }
        servers
    }

    pub fn sample(&self) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            cassandra: self.cassandra.map_or(f64::NAN, cpu_seconds),
            nats: self.nats.map_or(f64::NAN, cpu_seconds),
            bench: cpu_seconds(std::process::id()),
        }
    }

    /// The database's CPU use while nothing of ours runs, in % of one core over `period`.
    pub async fn idle_db_cpu_pct(&self, period: Duration) -> f64 {
        let before = self.sample();
        tokio::time::sleep(period).await;
        let after = self.sample();
        (after.cassandra - before.cassandra) / period.as_secs_f64() * 100.0
    }
}

/// CPU seconds of the servers and of this process at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    pub at: Instant,
    pub cassandra: f64,
    pub nats: f64,
    pub bench: f64,
}
