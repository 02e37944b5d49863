//! What a transport says about one attempt ([`Outcome`], with [`Item`]s
//! for peers that judge records one by one), and when to try again
//! ([`retry_delay`]: the peer's `Retry-After` up to `retry_max_ms`, else
//! [`backoff`] with jitter). The transport classifies its peer's answers
//! into this vocabulary; the engine alone decides what follows (send
//! again, split, dead-letter, spool), so every sink on the engine handles
//! an answer the same way.

use std::time::Duration;

/// What the peer did with one record of a request it judged record by
/// record (an Elasticsearch `_bulk` item, a HEC invalid event, a Kafka
/// partition's answer, the records an OTLP `partial_success` rejected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Taken.
    Done,
    /// Not taken this time (429, 5xx, a partition without a leader): send
    /// it again.
    Retry,
    /// Refused for good: dead-lettered with the peer's reason.
    Rejected {
        /// The record's status (HTTP status, Kafka error code).
        status: u16,
        /// The peer's error for it (its start).
        error: String,
    },
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every record delivered.
    Delivered,
    /// The peer judged the records one by one and not all were taken.
    Partial {
        /// One entry per record of the request, in order.
        items: Vec<Item>,
        /// A summary for the log.
        reason: String,
    },
    /// Try again later; `after` is the peer's `Retry-After`, if given.
    Retry {
        /// Why (status or error), for the log.
        reason: String,
        /// The peer asked to wait this long.
        after: Option<Duration>,
    },
    /// The request is too large for the peer (HTTP 413): split it.
    TooLarge,
    /// The whole request is refused for good (a 4xx): dead-letter it.
    Poison {
        /// The status code.
        status: u16,
        /// The start of the answer.
        body: String,
    },
}

/// The delay before retry number `attempt` (0-based): the peer's
/// `Retry-After` when it gave one, but never more than `max` (a collector
/// asking for an hour must not park records for an hour when it may answer
/// again at once), else [`backoff`]. True when a `Retry-After` was cut down.
pub fn retry_delay(after: Option<Duration>, attempt: u32, initial: Duration, max: Duration) -> (Duration, bool) {
    let max = max.max(Duration::from_millis(1));
    match after {
        Some(a) if a > max => (max, true),
        Some(a) => (a, false),
        None => (backoff(attempt, initial, max), false),
    }
}

/// The delay before retry number `attempt` (0-based): exponential from
/// `initial`, capped at `max`, with "equal jitter" (half fixed, half
/// random) so that many bridges do not retry in lockstep.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let exp = ms(initial).saturating_mul(1u64 << attempt.min(32)).min(ms(max)).max(1);
    let half = exp / 2;
    Duration::from_millis(half + rand::random_range(0..=exp - half))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_capped_by_retry_max() {
        assert_eq!(
            retry_delay(Some(Duration::from_secs(3600)), 0, Duration::from_millis(100), Duration::from_millis(5_000)),
            (Duration::from_secs(5), true)
        );
        assert_eq!(
            retry_delay(Some(Duration::from_secs(2)), 0, Duration::from_millis(100), Duration::from_millis(5_000)),
            (Duration::from_secs(2), false)
        );
        let (d, capped) = retry_delay(None, 0, Duration::from_millis(100), Duration::from_millis(5_000));
        assert!(!capped && d <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        for a in 0..40 {
            let d = backoff(a, Duration::from_millis(100), Duration::from_millis(10_000)).as_millis() as u64;
            let exp = (100u64 << a.min(32)).min(10_000);
            assert!(d >= exp / 2 && d <= exp, "attempt {a}: {d}");
        }
    }
}
