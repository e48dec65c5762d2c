//! Reading the worker's `/metrics` text: counters, sums over labelled series, histogram quantiles.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The counter behind "database requests": one observation per CQL request, whatever the label.
pub const REQUESTS: &str = "score_worker_scylla_query_duration_seconds_count";
/// Statements per request, summed: the statements sent (exported by builds that batch).
pub const STATEMENTS: &str = "score_worker_scylla_statements_per_request_sum";
pub const PROCESSED: &str = "score_worker_messages_processed_total";
pub const RETRIES: &str = "score_worker_batch_retries_total";
pub const LATENCY: &str = "score_worker_processing_duration_seconds_bucket";
/// Warnings the database attached to responses, by `statement` and `warning`.
pub const WARNINGS: &str = "score_worker_scylla_warnings_total";

/// `GET /metrics`, or `None` while nothing answers.
pub async fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Like [`sum`], or `None` when the text has no such metric (an older build).
pub fn sum_if_exported(text: &str, name: &str) -> Option<f64> {
    text.contains(name).then(|| sum(text, name))
}

/// The sum of every series of metric `name` (any labels, or none).
pub fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.split_once("} ")?.1
            } else {
                rest.strip_prefix(' ')?
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// Every series of metric `name`: its labels and its value.
fn series<'a>(text: &'a str, name: &str) -> Vec<(Vec<(&'a str, &'a str)>, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let labels = labels
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// What `score_worker_scylla_warnings_total` counted: warnings the database attached to responses.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Warnings {
    /// Reads that met more dead cells than the server's `tombstone_warn_threshold`.
    pub tombstones: f64,
    /// Batches over the server's batch size threshold (or spanning too many partitions).
    pub batch: f64,
    pub other: f64,
    /// The tombstone warnings by `statement` label (only those with any).
    pub tombstones_by_statement: BTreeMap<String, f64>,
}

impl Warnings {
    /// The counters in `text`, or `None` if it has none (a build before the metric).
    pub fn of(text: &str) -> Option<Warnings> {
        if !text.contains(WARNINGS) {
            return None;
        }
        let mut w = Warnings::default();
        for (labels, value) in series(text, WARNINGS) {
            let label = |name: &str| labels.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            match label("warning") {
                Some("tombstones") => {
                    w.tombstones += value;
                    *w.tombstones_by_statement
                        .entry(label("statement").unwrap_or("?").to_string())
                        .or_default() += value;
                }
                Some("batch") => w.batch += value,
                _ => w.other += value,
            }
        }
        Some(w)
    }

    /// The warnings counted since `before`.
    pub fn since(&self, before: &Warnings) -> Warnings {
        let mut by_statement = self.tombstones_by_statement.clone();
        for (statement, n) in &before.tombstones_by_statement {
            *by_statement.entry(statement.clone()).or_default() -= n;
        }
        by_statement.retain(|_, n| *n != 0.0);
        Warnings {
            tombstones: self.tombstones - before.tombstones,
            batch: self.batch - before.batch,
            other: self.other - before.other,
            tombstones_by_statement: by_statement,
        }
    }
}

/// Cumulative bucket counts `(le, count)` of a histogram's `_bucket` series, summed over its other
/// labels (builds from 0.1 label the processing time by `outcome`; older ones do not).
pub fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for (labels, count) in series(text, name) {
        let Some((_, le)) = labels.iter().find(|(k, _)| *k == "le") else {
            continue;
        };
        let le = if *le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(le) => le,
                Err(_) => continue,
            }
        };
        by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += count;
    }
    let mut out: Vec<(f64, f64)> = by_le.into_values().collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Quantile of the difference of two cumulative histograms, interpolated linearly within a bucket
/// (as Prometheus' `histogram_quantile` does); `NaN` without observations.
pub fn quantile(q: f64, before: &[(f64, f64)], after: &[(f64, f64)]) -> f64 {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, b)| *b);
            (*le, c - b)
        })
        .collect();
    let total = delta.last().map_or(0.0, |(_, c)| *c);
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (le, c) in &delta {
        if *c >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            return prev.0 + (le - prev.0) * (rank - prev.1) / (c - prev.1).max(1e-9);
        }
        prev = (*le, *c);
    }
    prev.0
}
