//! The drain in tenths, so that a cost growing with the keys' history shows as a slope: each writer
//! records points of its progress (messages processed for a worker, polled every 50 ms; events of
//! the flushes or batches completed for a ceiling, sampled as each tenth is reached), each with the
//! database's CPU and the tombstone warnings so far. A slice runs from the first point at or past one
//! tenth of the drain to the first at or past the next, so its messages are the ones actually
//! counted between two points (not exactly a tenth); a slice that no point ends is empty (`NaN`).
//! The first tenth starts at the last point before progress began.

use std::fmt::Write as _;

use crate::procfs::CpuSample;
use crate::report::{num, Row, Spread};

/// Tenths.
pub const SLICES: usize = 10;

/// One tenth of a drain.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Slice {
    pub messages: f64,
    pub seconds: f64,
    pub events_per_s: f64,
    /// Cassandra's CPU (procfs) in the slice ÷ its messages.
    pub db_cpu_us_per_event: f64,
    /// Warnings of reads that met more tombstones than the server warns at; `None` where the writer
    /// does not count them.
    pub tombstone_warnings: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    done: f64,
    sample: CpuSample,
    tombstones: Option<f64>,
}

/// The points of one drain.
pub struct Slicer {
    start: f64,
    total: f64,
    points: Vec<Point>,
}

impl Slicer {
    /// A drain of `total` messages from progress `start`, its first point `sample`.
    pub fn new(start: f64, total: f64, sample: CpuSample, tombstones: Option<f64>) -> Slicer {
        Slicer {
            start,
            total,
            points: vec![Point {
                done: start,
                sample,
                tombstones,
            }],
        }
    }

    fn boundary(&self, k: usize) -> f64 {
        self.start + self.total * k as f64 / SLICES as f64
    }

    /// The progress at which the next tenth ends (for a writer that records a point only there).
    pub fn next_boundary(&self) -> f64 {
        let done = self.points.last().map_or(self.start, |p| p.done);
        (1..=SLICES)
            .map(|k| self.boundary(k))
            .find(|b| *b > done)
            .unwrap_or(f64::INFINITY)
    }

    pub fn record(&mut self, done: f64, sample: CpuSample, tombstones: Option<f64>) {
        self.points.push(Point {
            done,
            sample,
            tombstones,
        });
    }

    pub fn slices(&self) -> Vec<Slice> {
        let first_at = |target: f64| {
            self.points
                .iter()
                .find(|p| p.done >= target - 1e-6)
                .or(self.points.last())
                .copied()
                .expect("at least the first point")
        };
        // From the last point before progress began: a worker's start-up is in its pass's time but
        // not in its first tenth, where it would flatter the slope.
        let mut from = *self
            .points
            .iter()
            .take_while(|p| p.done <= self.start)
            .last()
            .unwrap_or(&self.points[0]);
        (1..=SLICES)
            .map(|k| {
                let to = first_at(self.boundary(k));
                let messages = to.done - from.done;
                let seconds = to.sample.at.duration_since(from.sample.at).as_secs_f64();
                let per = |x: f64| {
                    if messages > 0.0 {
                        x / messages
                    } else {
                        f64::NAN
                    }
                };
                let slice = Slice {
                    messages,
                    seconds,
                    events_per_s: if seconds > 0.0 {
                        messages / seconds
                    } else {
                        f64::NAN
                    },
                    db_cpu_us_per_event: per((to.sample.cassandra - from.sample.cassandra) * 1e6),
                    tombstone_warnings: to.tombstones.zip(from.tombstones).map(|(b, a)| b - a),
                };
                from = to;
                slice
            })
            .collect()
    }
}

/// Last ÷ first slice's events/s of one pass.
pub fn slope(slices: &[Slice]) -> Option<f64> {
    Some(slices.last()?.events_per_s / slices.first()?.events_per_s)
}

/// The per-slice tables (median over rounds of each tenth), one row per writer that has slices:
/// events/s, database CPU µs/event, and tombstone warnings where a writer counts them.
pub fn tables(rows: &[Row]) -> String {
    type Get = fn(&Slice) -> Option<f64>;
    let figures: [(&str, Get); 3] = [
        ("events/s", |s| Some(s.events_per_s)),
        ("DB CPU µs/event", |s| Some(s.db_cpu_us_per_event)),
        ("tombstone warnings", |s| s.tombstone_warnings),
    ];
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.passes.iter().any(|p| !p.slices.is_empty()))
        .collect();
    let mut out = String::new();
    for (label, get) in figures {
        let cells: Vec<Vec<Option<Spread>>> = rows
            .iter()
            .map(|r| {
                (0..SLICES)
                    .map(|k| {
                        let values: Vec<f64> = r
                            .passes
                            .iter()
                            .filter_map(|p| p.slices.get(k).and_then(get))
                            .collect();
                        Spread::of(&values)
                    })
                    .collect()
            })
            .collect();
        if cells.iter().flatten().all(Option::is_none) {
            continue;
        }
        let _ = write!(
            out,
            "\nDrain by tenths, {label} (median over rounds):\n\n| writer |"
        );
        for k in 1..=SLICES {
            let _ = write!(out, " {k} |");
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(SLICES));
        out.push('\n');
        for (row, cells) in rows.iter().zip(&cells) {
            if cells.iter().all(Option::is_none) {
                continue;
            }
            let _ = write!(out, "| {} |", row.name);
            for cell in cells {
                let _ = write!(out, " {} |", cell.map_or("–".into(), |s| num(s.median)));
            }
            out.push('\n');
        }
    }
    out
}
