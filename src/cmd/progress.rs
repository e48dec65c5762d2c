//! Progress of a long command a person may be watching (`dlq list|replay`, `publish-sample`,
//! `migrate-postgres`): a bar with
//! rate and ETA on a terminal, else an info log line every [`LOG_EVERY`].

use std::time::{Duration, Instant};

/// Without a terminal, a progress line this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    what: &'static str,
    unit: &'static str,
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    pub done: u64,
    logged: Instant,
}

impl Progress {
    /// `what` names the command, `unit` what it counts (`letters`, `events`); `bar`: draw one.
    pub fn new(what: &'static str, unit: &'static str, total: u64, bar: bool) -> Self {
        let bar = bar.then(|| {
            let style = indicatif::ProgressStyle::with_template(&format!(
                "{{msg}} {{wide_bar}} {{pos}}/{{len}} {unit}, {{per_sec}}, eta {{eta}}"
            ))
            .expect("a valid template");
            let bar = indicatif::ProgressBar::new(total).with_style(style);
            bar.set_message(what);
            bar
        });
        Self {
            what,
            unit,
            bar,
            total,
            done: 0,
            logged: Instant::now(),
        }
    }

    pub fn inc(&mut self) {
        self.inc_by(1);
    }

    pub fn inc_by(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.logged.elapsed() >= LOG_EVERY => {
                self.logged = Instant::now();
                tracing::info!(
                    command = self.what,
                    unit = self.unit,
                    done = self.done,
                    total = self.total,
                    "progress"
                );
            }
            None => {}
        }
    }

    /// Starts counting from `done` (a resumed run).
    pub fn set_position(&mut self, done: u64) {
        self.done = done;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
