//! The backoff schedule for transient database failures: exponential with jitter, bounded by a number
//! of attempts and a wall-clock budget. Whether an error is worth retrying is decided elsewhere
//! (`store::error`); this module only knows *when* to try again. Also the unbounded schedule of
//! what is retried until it works ([`growing_wait`]: pulls, dead letters).

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::config::RetryConfig;

/// Retries `op` while `is_retryable` says so and the schedule allows; `on_retry` sees each error
/// that will be retried and the delay before the next attempt.
pub async fn run_with_retries<T, E, Fut, Op>(
    config: &RetryConfig,
    op: Op,
    is_retryable: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E, Duration),
) -> Result<T, E>
where
    Op: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    op.retry(schedule(config))
        .sleep(tokio::time::sleep)
        .when(is_retryable)
        .notify(|e, d| on_retry(e, d))
        .await
}

/// The wait after the `failures`-th failure in a row of something retried until it works (a pull, a
/// dead letter): 250 ms, doubling, at most 10 s. A deleted consumer, a revoked permission or a
/// missing dead-letter stream fails every attempt; this keeps the worker from hammering the server
/// while readiness reports why.
pub fn growing_wait(failures: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(10);
    FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX)
}

/// The schedule as a `backon` builder (attempts after the first = `max_attempts - 1`).
pub fn schedule(config: &RetryConfig) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(config.initial_backoff)
        .with_max_delay(config.max_backoff)
        .with_factor(2.0)
        .with_max_times(config.max_attempts.saturating_sub(1))
        .with_total_delay(Some(config.total_budget))
        .with_jitter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn failures_back_off_from_250ms_to_10s() {
        let waits: Vec<u64> = (1..=8)
            .map(|n| growing_wait(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000]);
        assert_eq!(growing_wait(u32::MAX), Duration::from_secs(10));
    }

    fn config(max_attempts: usize) -> RetryConfig {
        RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_attempts,
            total_budget: Duration::from_secs(30),
            nak_delay: Duration::from_secs(5),
            progress_interval: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_until_success() {
        let calls = AtomicUsize::new(0);
        let mut delays = vec![];
        let out: Result<u32, &str> = run_with_retries(
            &config(8),
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err("transient")
                } else {
                    Ok(7)
                }
            },
            |_| true,
            |_, d| delays.push(d),
        )
        .await;
        assert_eq!(out, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(delays.len(), 3);
        // Jittered exponential: each delay is at least the un-jittered value and at most twice it.
        for (i, d) in delays.iter().enumerate() {
            let base = Duration::from_millis(100 * (1 << i));
            assert!(*d >= base && *d <= base * 2, "delay {i} = {d:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicUsize::new(0);
        let out: Result<(), &str> = run_with_retries(
            &config(8),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("permanent")
            },
            |_| false,
            |_, _| {},
        )
        .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded() {
        let calls = AtomicUsize::new(0);
        let out: Result<(), &str> = run_with_retries(
            &config(3),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("transient")
            },
            |_| true,
            |_, _| {},
        )
        .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
