//! Figures of one pass, their medians and spreads over the rounds, the ratios of the worker to the
//! others, and the markdown tables printed on the terminal.

use std::fmt::Write as _;

use crate::prom::Warnings;
use crate::slices::{self, Slice};
use crate::verify::Check;

/// Everything measured in one pass of one writer over the backlog.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Pass {
    pub variant: String,
    pub keyspace: String,
    /// Messages the figures are divided by (duplicates included).
    pub messages: usize,
    pub seconds: f64,
    pub events_per_s: f64,
    pub requests_per_event: f64,
    /// Statements (rows touched) per event, where the writer counts them.
    pub statements_per_event: Option<f64>,
    /// The worker process, or this process for a ceiling.
    pub writer_cpu_us_per_event: f64,
    pub db_cpu_us_per_event: f64,
    pub nats_cpu_us_per_event: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub paced: Option<Paced>,
    /// Ceilings: flushes or batches in flight.
    pub concurrency: Option<usize>,
    /// Protocol ceiling: duration of one flush write.
    pub flush_p50_ms: Option<f64>,
    pub flush_p99_ms: Option<f64>,
    /// Flush (or batch) writes that failed at least once and were retried.
    pub retried_writes: u64,
    /// The database's CPU in the second before the pass, in % of a core (other load on the machine).
    pub db_idle_cpu_pct: f64,
    pub load_avg: f64,
    pub check: Check,
    /// The drain in tenths (`slices.rs`).
    pub slices: Vec<Slice>,
    /// Warnings the database attached to the writer's responses during the drain (worker: its
    /// `/metrics`; protocol ceiling: its store's `Metrics`); `None` where not counted.
    pub warnings: Option<Warnings>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Paced {
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub messages: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// The `q` quantile (nearest rank) of `values`; sorts them. `NaN` if empty.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Median and min–max of one figure over the rounds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len().is_multiple_of(2) {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    fn ratio_cell(&self) -> String {
        let r = |x: f64| format!("{x:.2}");
        if r(self.min) == r(self.max) {
            format!("{}×", r(self.median))
        } else {
            format!("{}× ({}–{})", r(self.median), r(self.min), r(self.max))
        }
    }

    fn cell(&self) -> String {
        if num(self.min) == num(self.max) {
            num(self.median)
        } else {
            format!("{} ({}–{})", num(self.median), num(self.min), num(self.max))
        }
    }
}

/// One line per pass, printed as the run goes.
pub fn pass_line(round: usize, p: &Pass) -> String {
    let c = &p.check;
    format!(
        "round {round} {:<22} {:>9} events/s {:>7} req/event  DB {:>6} µs/event  writer {:>6} µs/event  \
         stale {} missing {} wrong {}  last/first slice {}{}  ({:.1} s, load {:.1}, DB idle {:.0} %{})",
        p.variant,
        num(p.events_per_s),
        num(p.requests_per_event),
        num(p.db_cpu_us_per_event),
        num(p.writer_cpu_us_per_event),
        c.stale_rows,
        c.missing_rows,
        c.wrong_by_profile,
        slices::slope(&p.slices).map_or("–".into(), num),
        p.warnings.as_ref().map_or(String::new(), |w| {
            let by: Vec<String> = w
                .tombstones_by_statement
                .iter()
                .map(|(s, n)| format!("{s} {}", num(*n)))
                .collect();
            format!(
                "  tombstone warnings {}{}, batch warnings {}",
                num(w.tombstones),
                if by.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", by.join(", "))
                },
                num(w.batch)
            )
        }),
        p.seconds,
        p.load_avg,
        p.db_idle_cpu_pct,
        match p.retried_writes {
            0 => String::new(),
            n => format!(", {n} writes retried"),
        }
    )
}

/// Three significant digits, thousands separated.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let decimals = match x.abs() {
        a if a >= 100.0 || a == 0.0 => 0,
        a if a >= 10.0 => 1,
        a if a >= 1.0 => 2,
        a if a >= 0.1 => 3,
        _ => 4,
    };
    let s = format!("{x:.decimals$}");
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// One figure: how to read it from a pass.
pub struct Figure {
    pub key: &'static str,
    pub label: &'static str,
    pub get: fn(&Pass) -> Option<f64>,
}

pub const FIGURES: &[Figure] = &[
    Figure {
        key: "events_per_s",
        label: "events/s",
        get: |p| Some(p.events_per_s),
    },
    Figure {
        key: "requests_per_event",
        label: "DB requests/event",
        get: |p| Some(p.requests_per_event),
    },
    Figure {
        key: "statements_per_event",
        label: "DB statements/event",
        get: |p| p.statements_per_event,
    },
    Figure {
        key: "db_cpu_us_per_event",
        label: "DB CPU µs/event",
        get: |p| Some(p.db_cpu_us_per_event),
    },
    Figure {
        key: "writer_cpu_us_per_event",
        label: "writer CPU µs/event",
        get: |p| Some(p.writer_cpu_us_per_event),
    },
    Figure {
        key: "nats_cpu_us_per_event",
        label: "NATS CPU µs/event",
        get: |p| p.nats_cpu_us_per_event,
    },
    Figure {
        key: "stale_rows",
        label: "stale rows",
        get: |p| Some(p.check.stale_rows as f64),
    },
    Figure {
        key: "missing_rows",
        label: "missing rows",
        get: |p| Some(p.check.missing_rows as f64),
    },
    Figure {
        key: "wrong_by_profile",
        label: "wrong by-profile",
        get: |p| Some(p.check.wrong_by_profile as f64),
    },
    Figure {
        key: "last_first_slice",
        label: "last ÷ first slice",
        get: |p| slices::slope(&p.slices),
    },
    Figure {
        key: "tombstone_warnings",
        label: "tombstone warnings",
        get: |p| p.warnings.as_ref().map(|w| w.tombstones),
    },
    Figure {
        key: "batch_warnings",
        label: "batch warnings",
        get: |p| p.warnings.as_ref().map(|w| w.batch),
    },
    Figure {
        key: "peak_rss_mib",
        label: "peak RSS MiB",
        get: |p| p.peak_rss_mib,
    },
    Figure {
        key: "paced_rate",
        label: "paced events/s",
        get: |p| p.paced.as_ref().map(|x| x.achieved_rate),
    },
    Figure {
        key: "p50_ms",
        label: "p50 ms",
        get: |p| p.paced.as_ref().map(|x| x.p50_ms),
    },
    Figure {
        key: "p95_ms",
        label: "p95 ms",
        get: |p| p.paced.as_ref().map(|x| x.p95_ms),
    },
    Figure {
        key: "p99_ms",
        label: "p99 ms",
        get: |p| p.paced.as_ref().map(|x| x.p99_ms),
    },
    Figure {
        key: "flush_p50_ms",
        label: "flush p50 ms",
        get: |p| p.flush_p50_ms,
    },
    Figure {
        key: "flush_p99_ms",
        label: "flush p99 ms",
        get: |p| p.flush_p99_ms,
    },
];

/// The first table's figures (cost and correctness); the rest go in the second.
const FIRST_TABLE: usize = 9;

/// A table row: one writer, one pass per round.
#[derive(Clone)]
pub struct Row {
    pub name: String,
    pub passes: Vec<Pass>,
}

impl Row {
    pub fn spread(&self, f: &Figure) -> Option<Spread> {
        let values: Vec<f64> = self.passes.iter().filter_map(f.get).collect();
        Spread::of(&values)
    }
}

fn table(rows: &[Row], figures: &[Figure]) -> String {
    let mut out = String::from("| writer |");
    for f in figures {
        let _ = write!(out, " {} |", f.label);
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(figures.len()));
    out.push('\n');
    for row in rows {
        let _ = write!(out, "| {} |", row.name);
        for f in figures {
            let _ = write!(out, " {} |", row.spread(f).map_or("–".into(), |s| s.cell()));
        }
        out.push('\n');
    }
    out
}

/// Both tables, markdown.
pub fn tables(rows: &[Row]) -> String {
    let (first, second) = FIGURES.split_at(FIRST_TABLE);
    format!("{}\n{}", table(rows, first), table(rows, second))
}

/// Per-round ratios `a / b` of every figure both rows have, as spreads.
pub fn ratios(a: &Row, b: &Row) -> Vec<(&'static Figure, Spread)> {
    FIGURES
        .iter()
        .filter_map(|f| {
            let per_round: Vec<f64> = a
                .passes
                .iter()
                .zip(&b.passes)
                .filter_map(|(x, y)| Some((f.get)(x)? / (f.get)(y)?))
                .collect();
            Some((f, Spread::of(&per_round)?))
        })
        .collect()
}

/// The ratio table: the worker against each row in `others`.
pub fn ratio_table(worker: &Row, others: &[&Row]) -> String {
    let mut out = String::from("| figure |");
    for o in others {
        let _ = write!(out, " {} ÷ {} |", worker.name, o.name);
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(others.len()));
    out.push('\n');
    let columns: Vec<Vec<(&Figure, Spread)>> = others.iter().map(|o| ratios(worker, o)).collect();
    // Counts that should be 0 and slopes make no useful ratio.
    for f in FIGURES.iter().filter(|f| {
        !matches!(
            f.key,
            "stale_rows"
                | "missing_rows"
                | "wrong_by_profile"
                | "last_first_slice"
                | "tombstone_warnings"
                | "batch_warnings"
        )
    }) {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| {
                c.iter()
                    .find(|(g, _)| g.key == f.key)
                    .map_or("–".into(), |(_, s)| s.ratio_cell())
            })
            .collect();
        if cells.iter().all(|c| c == "–") {
            continue;
        }
        let _ = writeln!(out, "| {} | {} |", f.label, cells.join(" | "));
    }
    out
}

/// The tombstone warnings by statement, median over rounds, of each writer that had any.
pub fn tombstones_by_statement(rows: &[Row]) -> Option<String> {
    let mut parts = Vec::new();
    for row in rows.iter().filter(|r| !r.name.starts_with("protocol c=")) {
        let warnings: Vec<&Warnings> = row
            .passes
            .iter()
            .filter_map(|p| p.warnings.as_ref())
            .collect();
        let mut statements: Vec<&String> = warnings
            .iter()
            .flat_map(|w| w.tombstones_by_statement.keys())
            .collect();
        statements.sort();
        statements.dedup();
        let cells: Vec<String> = statements
            .into_iter()
            .filter_map(|s| {
                let per_round: Vec<f64> = warnings
                    .iter()
                    .map(|w| w.tombstones_by_statement.get(s).copied().unwrap_or(0.0))
                    .collect();
                Some(format!("{s} {}", num(Spread::of(&per_round)?.median)))
            })
            .collect();
        if !cells.is_empty() {
            parts.push(format!("{}: {}", row.name, cells.join(", ")));
        }
    }
    (!parts.is_empty()).then(|| {
        format!(
            "bench: tombstone warnings by statement (median over rounds): {}",
            parts.join("; ")
        )
    })
}
