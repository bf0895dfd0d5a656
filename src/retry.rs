//! Backoff with jitter and a cap, shared by the source and the sink.
//!
//! Delay n is `b * (1 + u)` where `b = min(initial * 2^n, cap / 2)` and `u` is uniform in [0, 1):
//! it doubles, never exceeds the cap, and two instances that lost the same server do not come back
//! in lockstep. The sequence itself comes from `backon`.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::error::{Error, Result, Retry};
use crate::shutdown::Shutdown;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        let half_cap = self.cap / 2;
        ExponentialBuilder::default()
            .with_min_delay(self.initial.min(half_cap))
            .with_max_delay(half_cap)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// The most attempts this policy can make in `window`, first attempt included: every delay is
    /// at least its un-jittered base, so summing bases gives an upper bound. Used by tests that
    /// count connection attempts during an outage.
    pub fn max_attempts_within(&self, window: Duration) -> usize {
        let half_cap = self.cap / 2;
        let mut base = self.initial.min(half_cap);
        let mut elapsed = Duration::ZERO;
        let mut attempts = 1;
        while elapsed + base <= window {
            elapsed += base;
            attempts += 1;
            base = (base * 2).min(half_cap);
        }
        attempts
    }
}

/// Runs `op` until it succeeds, gives up on a non-transient error, or shutdown is requested.
/// Each wait is logged with what it waits for. An attempt still under way when shutdown comes
/// gets the shutdown grace period, then is abandoned.
pub async fn retry<T, F, Fut>(policy: &RetryPolicy, shutdown: &Shutdown, what: &'static str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delays = policy.delays();
    let mut attempt: u32 = 1;
    loop {
        match shutdown.bounded(op()).await {
            Ok(v) => {
                if attempt > 1 {
                    tracing::info!(operation = what, attempts = attempt, "recovered");
                    crate::telemetry::recovered();
                }
                return Ok(v);
            }
            Err(Error::Shutdown) => return Err(Error::Shutdown),
            Err(e) => {
                let Retry::WaitFor(service) = e.retry() else { return Err(e) };
                let delay = delays.next().unwrap_or(policy.cap);
                tracing::warn!(
                    waiting_for = %service,
                    operation = what,
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    error = %e,
                    "{service} unavailable, retrying"
                );
                crate::telemetry::waiting(&service.to_string(), what, &e.to_string(), delay);
                if shutdown.sleep(delay).await {
                    return Err(Error::Shutdown);
                }
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let p = RetryPolicy { initial: Duration::from_millis(100), cap: Duration::from_secs(4) };
        let d: Vec<Duration> = p.delays().take(20).collect();
        for (i, delay) in d.iter().enumerate() {
            let base = (Duration::from_millis(100) * 2u32.saturating_pow(i as u32)).min(Duration::from_secs(2));
            assert!(*delay >= base && *delay < base * 2, "delay {i}: {delay:?} base {base:?}");
            assert!(*delay < p.cap);
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let p = RetryPolicy { initial: Duration::from_millis(100), cap: Duration::from_secs(4) };
        let firsts: std::collections::BTreeSet<Duration> = (0..20).map(|_| p.delays().next().unwrap()).collect();
        assert!(firsts.len() > 10, "{firsts:?}");
    }

    #[test]
    fn attempt_bound_matches_the_schedule() {
        let p = RetryPolicy { initial: Duration::from_millis(200), cap: Duration::from_secs(30) };
        // bases 0.2 0.4 0.8 1.6 3.2 6.4 12.8 ... : 0.2+0.4+0.8+1.6+3.2+6.4 = 12.6 <= 20 < 25.4
        assert_eq!(p.max_attempts_within(Duration::from_secs(20)), 7);
        assert_eq!(p.max_attempts_within(Duration::ZERO), 1);
    }

    #[tokio::test]
    async fn gives_up_at_once_on_permanent_errors() {
        let p = RetryPolicy { initial: Duration::from_millis(1), cap: Duration::from_millis(4) };
        let (_trigger, shutdown) = Shutdown::new();
        let mut calls = 0;
        let r: Result<()> = retry(&p, &shutdown, "test", || {
            calls += 1;
            async { Err(Error::Config("bad".into())) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn retries_transient_errors_until_success() {
        let p = RetryPolicy { initial: Duration::from_millis(1), cap: Duration::from_millis(4) };
        let (_trigger, shutdown) = Shutdown::new();
        let mut calls = 0;
        let r = retry(&p, &shutdown, "test", || {
            calls += 1;
            let n = calls;
            async move {
                if n < 4 {
                    Err(Error::ElasticsearchStatus { context: "t", status: 503, body: String::new() })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 4);
    }
}
