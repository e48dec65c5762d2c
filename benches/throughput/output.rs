//! The run's record: every pass of every round, the medians, the ratios, the knobs and the workload's
//! shape as JSON (`target/bench/<UTC timestamp>.json` and `latest.json`), and the plot as SVG.

use std::fmt::Write as _;

use crate::knobs::Knobs;
use crate::report::{num, ratios, Pass, Row, Spread, FIGURES};
use crate::workload::Shape;

/// What the outputs say about the run besides its passes.
pub struct Run<'a> {
    pub knobs: &'a Knobs,
    pub shape: &'a Shape,
    pub build: &'a str,
    pub servers: &'a str,
    pub title: &'a str,
    pub started: chrono::DateTime<chrono::Utc>,
    pub seconds: f64,
}

/// Writes `<out>/<UTC timestamp>.json`, `<out>/latest.json` and the SVG.
pub fn write(run: &Run, rows: &[Row], rounds: &[Vec<&Pass>]) {
    let Run {
        knobs,
        shape,
        build,
        servers,
        title,
        started,
        seconds: elapsed,
    } = *run;
    let summary: serde_json::Map<String, serde_json::Value> = rows
        .iter()
        .map(|r| {
            let figures: serde_json::Map<String, serde_json::Value> = FIGURES
                .iter()
                .filter_map(|f| Some((f.key.to_string(), serde_json::to_value(r.spread(f)?).ok()?)))
                .collect();
            (r.name.clone(), figures.into())
        })
        .collect();
    let ratios: serde_json::Map<String, serde_json::Value> = rows[1..]
        .iter()
        .map(|o| {
            let figures: serde_json::Map<String, serde_json::Value> = ratios(&rows[0], o)
                .into_iter()
                .map(|(f, s)| (f.key.to_string(), serde_json::to_value(s).unwrap()))
                .collect();
            (format!("{} / {}", rows[0].name, o.name), figures.into())
        })
        .collect();
    let json = serde_json::json!({
        "title": title,
        "started": started.to_rfc3339(),
        "seconds": elapsed,
        "build": build,
        "servers": servers,
        "baseline": knobs.baseline.as_ref().map(|(label, path)| serde_json::json!({"label": label, "path": path})),
        "workload": knobs.spec,
        "shape": shape,
        "knobs": {
            "rounds": knobs.rounds,
            "rate": knobs.rate,
            "paced_seconds": knobs.paced_seconds,
            "protocol_concurrency": knobs.protocol_concurrency,
            "protocol_flush": knobs.protocol_flush,
            "naive_concurrency": knobs.naive_concurrency,
            "naive_batch": knobs.naive_batch,
        },
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "rounds": rounds,
        "summary": summary,
        "ratios": ratios,
    });
    let text = serde_json::to_string_pretty(&json).expect("serialisable");
    std::fs::create_dir_all(&knobs.out_dir).expect("create the output directory");
    let file = knobs
        .out_dir
        .join(format!("{}.json", started.format("%Y%m%dT%H%M%SZ")));
    std::fs::write(&file, &text).expect("write the JSON");
    std::fs::write(knobs.out_dir.join("latest.json"), &text).expect("write latest.json");
    println!("bench: wrote {} and latest.json", file.display());
    if let Some(path) = &knobs.svg {
        let main: Vec<Row> = rows
            .iter()
            .filter(|r| !r.name.starts_with("protocol c="))
            .cloned()
            .collect();
        std::fs::write(path, svg(&main, title)).expect("write the SVG");
        println!("bench: wrote {}", path.display());
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Horizontal bars with min–max whiskers, one panel per figure, one bar per row.
pub fn svg(rows: &[Row], title: &str) -> String {
    const COLOURS: &[&str] = &[
        "#1f77b4", "#7f7f7f", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let panels = ["events_per_s", "requests_per_event", "db_cpu_us_per_event"];
    let (width, label_w, bar_w, row_h, head) = (860.0, 190.0, 560.0, 24.0, 30.0);
    let panel_h = head + row_h * rows.len() as f64 + 16.0;
    let height = 40.0 + panel_h * panels.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        escape(title)
    );
    for (i, key) in panels.iter().enumerate() {
        let f = FIGURES
            .iter()
            .find(|f| f.key == *key)
            .expect("a known figure");
        let top = 40.0 + panel_h * i as f64;
        let spreads: Vec<Option<Spread>> = rows.iter().map(|r| r.spread(f)).collect();
        let max = spreads
            .iter()
            .flatten()
            .map(|s| s.max)
            .fold(0.0, f64::max)
            .max(1e-9);
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{}\" font-weight=\"bold\">{} (median of rounds, whisker: min–max)</text>",
            top + 18.0,
            escape(f.label)
        );
        for (j, (row, spread)) in rows.iter().zip(&spreads).enumerate() {
            let y = top + head + row_h * j as f64;
            let _ = writeln!(
                s,
                "<text x=\"10\" y=\"{}\">{}</text>",
                y + 15.0,
                escape(&row.name)
            );
            let Some(sp) = spread else { continue };
            let x = |v: f64| label_w + bar_w * v / max;
            let colour = COLOURS[j % COLOURS.len()];
            let _ = writeln!(
                s,
                "<rect x=\"{label_w}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"{colour}\"/>",
                y + 3.0,
                x(sp.median) - label_w,
                row_h - 6.0
            );
            let _ = writeln!(
                s,
                "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>",
                x(sp.min),
                x(sp.max),
                y + row_h / 2.0,
                y + row_h / 2.0
            );
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{}\">{}</text>",
                x(sp.max) + 6.0,
                y + 15.0,
                num(sp.median)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
