//! Classifying what an endpoint answered, separate from the backoff policy.

use crate::UnixMs;

/// What happened when Hookline tried to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Response {
        status: u16,
        retry_after_ms: Option<u64>,
    },
    /// A queue destination's broker confirmed the message.
    Published,
    Timeout,
    Connect,
    /// The resolved address was refused by the address rules (SSRF protection).
    BlockedAddress,
    Other,
}

/// What to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    Retry {
        retry_after_ms: Option<u64>,
    },
    /// `410 Gone`: the merchant asked us to stop; the endpoint is disabled.
    DisableEndpoint,
}

pub fn classify(outcome: &Outcome) -> Verdict {
    match outcome {
        Outcome::Response { status, .. } if (200..300).contains(status) => Verdict::Delivered,
        Outcome::Published => Verdict::Delivered,
        Outcome::Response { status: 410, .. } => Verdict::DisableEndpoint,
        Outcome::Response { status: 429 | 503, retry_after_ms } => Verdict::Retry { retry_after_ms: *retry_after_ms },
        // 3xx is a failure: redirects are never followed.
        _ => Verdict::Retry { retry_after_ms: None },
    }
}

/// A short, stable name for the attempt log and metrics.
pub fn error_class(outcome: &Outcome) -> Option<&'static str> {
    match outcome {
        Outcome::Response { status, .. } if (200..300).contains(status) => None,
        Outcome::Published => None,
        Outcome::Response { .. } => Some("http_status"),
        Outcome::Timeout => Some("timeout"),
        Outcome::Connect => Some("connect"),
        Outcome::BlockedAddress => Some("blocked_address"),
        Outcome::Other => Some("other"),
    }
}

/// Consecutive attempts an endpoint may fail to be reached (nothing accepted the
/// connection) before its deliveries are paced: one at a time, a pause between them.
pub const PACE_AFTER_UNREACHABLE: u32 = 5;

/// True when the attempt never reached the endpoint: it is down, not erring.
pub fn unreachable(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Connect)
}

/// Parses `Retry-After` (delta seconds or an HTTP date) into milliseconds from `now`.
pub fn parse_retry_after(value: &str, now: UnixMs) -> Option<u64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.saturating_mul(1_000));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    Some((at_ms - now).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(outcome: Outcome, verdict: Verdict, class: Option<&str>) {
        assert_eq!(classify(&outcome), verdict, "{outcome:?}");
        assert_eq!(error_class(&outcome), class, "{outcome:?}");
    }

    #[test]
    fn classification_table() {
        let resp = |status| Outcome::Response { status, retry_after_ms: None };
        check(resp(200), Verdict::Delivered, None);
        check(resp(204), Verdict::Delivered, None);
        check(resp(299), Verdict::Delivered, None);
        check(resp(301), Verdict::Retry { retry_after_ms: None }, Some("http_status"));
        check(resp(400), Verdict::Retry { retry_after_ms: None }, Some("http_status"));
        check(resp(410), Verdict::DisableEndpoint, Some("http_status"));
        check(resp(500), Verdict::Retry { retry_after_ms: None }, Some("http_status"));
        check(
            Outcome::Response { status: 429, retry_after_ms: Some(7_000) },
            Verdict::Retry { retry_after_ms: Some(7_000) },
            Some("http_status"),
        );
        check(Outcome::Published, Verdict::Delivered, None);
        check(Outcome::Timeout, Verdict::Retry { retry_after_ms: None }, Some("timeout"));
        check(Outcome::Connect, Verdict::Retry { retry_after_ms: None }, Some("connect"));
        check(Outcome::BlockedAddress, Verdict::Retry { retry_after_ms: None }, Some("blocked_address"));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120", 0), Some(120_000));
        assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", 4_000), Some(6_000));
        assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", 99_000), Some(0));
        assert_eq!(parse_retry_after("soon", 0), None);
    }
}
