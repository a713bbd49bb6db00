//! Retry policy: which answers are retried, and how long to wait.
//!
//! A delivery is retried on connection errors, timeouts, `408`, `429` and
//! `5xx`; other `4xx` (and `3xx`: redirects are never followed) fail
//! without retry, and a recipient blocked by validation is never retried.
//! `410 Gone` also tells the subscriber store the subscription is gone.
//! `Retry-After` on `429` and `503` is honoured, up to
//! [`RetryPolicy::max_retry_after`].
//!
//! ```
//! use std::time::Duration;
//! use thorn_core::retry::{Backoff, RetryPolicy};
//!
//! let fixed = RetryPolicy::default();            // Thorn's: 10 retries, 60 s apart
//! assert_eq!(fixed.delay(3, None), Duration::from_secs(60));
//!
//! let exp = RetryPolicy { backoff: Backoff::exponential(Duration::from_secs(3600)), ..fixed.clone() };
//! assert!(exp.delay(3, None) <= Duration::from_secs(480));
//!
//! // The outbox's default: 7 retries over about a day, each ±20%.
//! let day = RetryPolicy::outbox_default();
//! assert_eq!(day.max_retries, 7);
//! assert!(day.delay(1, None) <= Duration::from_secs(6));
//! ```

use std::sync::Arc;
use std::time::Duration;

/// How the wait between retries grows.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Backoff {
    /// Always [`RetryPolicy::delay`] (Thorn's behaviour).
    Fixed,
    /// `delay * 2^(retry-1)`, capped at `max`, each wait drawn uniformly
    /// from its upper half when `jitter` is on.
    Exponential {
        /// The longest wait.
        max: Duration,
        /// Spread retries of many deliveries apart.
        jitter: bool,
    },
    /// Retry number `n` waits `delays[n - 1]` (the last one again past
    /// the end), each drawn from `± jitter` of it (`0.2`: ±20%).
    Schedule {
        /// The waits, in order.
        delays: Arc<[Duration]>,
        /// The spread, a fraction of each wait (0 to 1).
        jitter: f64,
    },
}

impl Backoff {
    /// Exponential backoff with jitter, capped at `max`.
    pub fn exponential(max: Duration) -> Self {
        Backoff::Exponential { max, jitter: true }
    }

    /// A schedule of waits, each spread by `± jitter` (a fraction).
    pub fn schedule(delays: impl Into<Arc<[Duration]>>, jitter: f64) -> Self {
        Backoff::Schedule {
            delays: delays.into(),
            jitter: jitter.clamp(0.0, 1.0),
        }
    }
}

/// The outbox's default waits: about a day in all.
const OUTBOX_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// Parses a schedule written `5s,5m,30m,2h,5h,10h,10h` (units `ms`, `s`,
/// `m`, `h`, `d`; a bare number is seconds). The error names the item.
pub fn parse_schedule(text: &str) -> std::result::Result<Vec<Duration>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let split = item
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(item.len());
            let (number, unit) = item.split_at(split);
            let n: f64 = number
                .parse()
                .map_err(|_| format!("`{item}` is not a duration like 30s, 5m or 2h"))?;
            let scale = match unit.trim() {
                "ms" => 0.001,
                "" | "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                other => return Err(format!("`{item}`: unknown unit `{other}` (ms, s, m, h, d)")),
            };
            Duration::try_from_secs_f64(n * scale)
                .map_err(|_| format!("`{item}` is not a non-negative duration"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .and_then(|d| {
            if d.is_empty() {
                Err("the schedule is empty".into())
            } else {
                Ok(d)
            }
        })
}

/// When and how often a failed delivery is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retry at all (`THORN_RETRY`).
    pub enabled: bool,
    /// Retries after the first attempt (`THORN_RETRY_MAX`).
    pub max_retries: u32,
    /// Base wait between attempts (`THORN_RETRY_DELAY`).
    pub retry_delay: Duration,
    /// How the wait grows.
    pub backoff: Backoff,
    /// Upper bound for a receiver's `Retry-After`.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            enabled: true,
            max_retries: 10,
            retry_delay: Duration::from_secs(60),
            backoff: Backoff::Fixed,
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn never() -> Self {
        RetryPolicy {
            enabled: false,
            ..RetryPolicy::default()
        }
    }

    /// The outbox's default: 7 retries 5 s, 5 min, 30 min, 2 h, 5 h, 10 h
    /// and 10 h after the failures before them (about a day), ±20%.
    pub fn outbox_default() -> Self {
        RetryPolicy::scheduled(OUTBOX_SCHEDULE.to_vec(), 0.2)
    }

    /// Retries after each of `delays` in turn (as many retries as
    /// delays), each spread by `± jitter` (a fraction).
    pub fn scheduled(delays: Vec<Duration>, jitter: f64) -> Self {
        RetryPolicy {
            max_retries: u32::try_from(delays.len()).unwrap_or(u32::MAX),
            retry_delay: delays.first().copied().unwrap_or_default(),
            backoff: Backoff::schedule(delays, jitter),
            ..RetryPolicy::default()
        }
    }

    /// True when retry number `retry` (1 for the first retry) is allowed.
    pub fn allows(&self, retry: u32) -> bool {
        self.enabled && retry <= self.max_retries
    }

    /// The wait before retry number `retry` (1-based); a receiver's
    /// `Retry-After` wins, bounded by `max_retry_after`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(asked) = retry_after {
            return asked.min(self.max_retry_after);
        }
        match &self.backoff {
            Backoff::Fixed => self.retry_delay,
            Backoff::Schedule { delays, jitter } => {
                let i = usize::try_from(retry.max(1) - 1).unwrap_or(usize::MAX);
                let base = delays
                    .get(i)
                    .or(delays.last())
                    .copied()
                    .unwrap_or(self.retry_delay);
                // Uniform in [base × (1 - jitter), base × (1 + jitter)].
                base.mul_f64((1.0 - jitter + 2.0 * jitter * random_unit()).max(0.0))
            }
            &Backoff::Exponential { max, jitter } => {
                let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(30));
                let full = self.retry_delay.saturating_mul(factor).min(max);
                if jitter {
                    // Uniform in [full/2, full].
                    let half = full / 2;
                    half + half.mul_f64(random_unit())
                } else {
                    full
                }
            }
        }
    }
}

fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn schedules_parse_and_spread_within_their_jitter() {
        let delays = parse_schedule("5s, 5m,30m,2h,500ms,1d,10").unwrap();
        let s = Duration::from_secs;
        assert_eq!(
            delays,
            [
                s(5),
                s(300),
                s(1800),
                s(7200),
                Duration::from_millis(500),
                s(86400),
                s(10)
            ]
        );
        assert!(parse_schedule("5x").unwrap_err().contains("unknown unit"));
        assert!(parse_schedule("soon").unwrap_err().contains("soon"));
        assert!(parse_schedule(" , ").is_err());
        let day = RetryPolicy::outbox_default();
        let total: Duration = (1..=7).map(|n| day.delay(n, None)).sum();
        assert!(total > Duration::from_secs(18 * 3600) && total < Duration::from_secs(40 * 3600));
        for _ in 0..100 {
            let d = day.delay(2, None);
            assert!(
                d >= Duration::from_secs(240) && d <= Duration::from_secs(360),
                "{d:?}"
            );
        }
        assert!(day.allows(7) && !day.allows(8));
        // Past the end, the last wait again; Retry-After still wins.
        let short = RetryPolicy::scheduled(vec![Duration::from_secs(1)], 0.0);
        assert_eq!(short.delay(5, None), Duration::from_secs(1));
        assert_eq!(
            short.delay(1, Some(Duration::from_secs(9))),
            Duration::from_secs(9)
        );
    }
}

/// What an attempt's result means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptVerdict {
    /// 2xx: delivered.
    Delivered,
    /// Try again (after `Retry-After` when the receiver sent one).
    Retry(Option<Duration>),
    /// Give up now.
    Fail,
    /// 410: give up and forget the subscription.
    Gone,
}

/// Classifies an HTTP status (see the module docs).
pub(crate) fn classify_status(status: u16, retry_after: Option<Duration>) -> AttemptVerdict {
    match status {
        200..=299 => AttemptVerdict::Delivered,
        410 => AttemptVerdict::Gone,
        429 | 503 => AttemptVerdict::Retry(retry_after),
        408 | 500..=599 => AttemptVerdict::Retry(None),
        _ => AttemptVerdict::Fail,
    }
}

/// Parses a `Retry-After` header: delay-seconds or an HTTP date.
pub(crate) fn parse_retry_after(
    value: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn statuses_are_classified_as_designed() {
        assert_eq!(classify_status(200, None), AttemptVerdict::Delivered);
        assert_eq!(classify_status(204, None), AttemptVerdict::Delivered);
        for s in [408, 500, 502, 504, 599] {
            assert_eq!(classify_status(s, None), AttemptVerdict::Retry(None), "{s}");
        }
        let after = Some(Duration::from_secs(2));
        assert_eq!(classify_status(429, after), AttemptVerdict::Retry(after));
        assert_eq!(classify_status(503, after), AttemptVerdict::Retry(after));
        assert_eq!(classify_status(500, after), AttemptVerdict::Retry(None));
        for s in [301, 302, 400, 401, 403, 404, 422] {
            assert_eq!(classify_status(s, None), AttemptVerdict::Fail, "{s}");
        }
        assert_eq!(classify_status(410, None), AttemptVerdict::Gone);
    }

    #[test]
    fn retry_after_in_seconds_or_http_date() {
        let now = chrono::Utc
            .with_ymd_and_hms(2015, 10, 21, 7, 28, 0)
            .unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn delays_fixed_exponential_and_bounded_retry_after() {
        let p = RetryPolicy {
            retry_delay: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(30),
            ..RetryPolicy::default()
        };
        assert_eq!(p.delay(5, None), Duration::from_secs(1));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(7200))),
            Duration::from_secs(30)
        );
        let e = RetryPolicy {
            backoff: Backoff::Exponential {
                max: Duration::from_secs(10),
                jitter: false,
            },
            ..p
        };
        let got: Vec<u64> = (1..=6).map(|n| e.delay(n, None).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        let j = RetryPolicy {
            backoff: Backoff::exponential(Duration::from_secs(10)),
            ..p
        };
        for n in 1..=6 {
            let full = e.delay(n, None);
            let d = j.delay(n, None);
            assert!(
                d >= full / 2 && d <= full,
                "retry {n}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
        assert!(p.allows(10) && !p.allows(11));
        assert!(!RetryPolicy::never().allows(1));
    }
}
