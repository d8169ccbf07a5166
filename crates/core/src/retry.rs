//! Retry policies and the pure `next_attempt` function that turns a failed attempt
//! into the time of the next one, or into "give up".

use crate::UnixMs;
use serde::{Deserialize, Serialize};

const SECOND_MS: u64 = 1_000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// The longest a `Retry-After` answer may push a retry out.
pub const RETRY_AFTER_MAX_MS: u64 = HOUR_MS;
/// Bounds that keep a user-given policy sane.
pub const SCHEDULE_STEPS_MAX: usize = 50;
pub const DELAY_MS_MAX: u64 = 7 * DAY_MS;
pub const HORIZON_MS_MAX: u64 = 30 * DAY_MS;
/// Attempts one delivery may make, whatever its policy says.
pub const ATTEMPTS_MAX: u32 = 1_000;

/// A named preset, as accepted in config and in the API (`"retryPolicy": "stripe"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Exponential with jitter: first retry after about 5 s, interval capped at 1 h, 3 days.
    Default,
    /// Stripe's promise: exponential from about 1 min, capped at 1 h, for 3 days.
    Stripe,
    /// Recharge's: the first attempt plus 19 retries within 48 hours.
    Recharge,
    /// Svix's: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h after the first attempt.
    Svix,
}

/// How a failed delivery is retried. Serialized as a preset name, a list of delays,
/// or exponential parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum RetryPolicy {
    Preset(Preset),
    /// The delay before each retry, in order; the delivery is given up after the last.
    Schedule {
        #[serde(rename = "delaysMs", deserialize_with = "crate::exact::integers")]
        #[schemars(length(min = 1, max = SCHEDULE_STEPS_MAX), inner(range(max = DELAY_MS_MAX)))]
        delays_ms: Vec<u64>,
    },
    /// Doubling delays from `firstDelayMs`, each at most `maxDelayMs` (a first delay above it
    /// is that maximum), ±20% jitter, given up `horizonMs` after the first attempt.
    Exponential {
        #[serde(rename = "firstDelayMs", deserialize_with = "crate::exact::integer")]
        #[schemars(range(min = 1, max = DELAY_MS_MAX))]
        first_delay_ms: u64,
        #[serde(rename = "maxDelayMs", deserialize_with = "crate::exact::integer")]
        #[schemars(range(min = 1, max = DELAY_MS_MAX))]
        max_delay_ms: u64,
        #[serde(rename = "horizonMs", deserialize_with = "crate::exact::integer")]
        #[schemars(range(max = HORIZON_MS_MAX))]
        horizon_ms: u64,
    },
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::Preset(Preset::Default)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RetryPolicyError {
    #[error("a retry schedule needs 1 to {SCHEDULE_STEPS_MAX} delays")]
    ScheduleLength,
    #[error("each retry delay must be at most 7 days")]
    DelayTooLong,
    #[error("exponential backoff needs firstDelayMs and maxDelayMs of 1 ms to 7 days and horizonMs up to 30 days")]
    BadExponential,
}

/// The concrete shape a policy resolves to.
enum Shape<'a> {
    Exponential { first_ms: u64, max_ms: u64, horizon_ms: u64 },
    Schedule(&'a [u64]),
}

const RECHARGE_DELAYS_MS: [u64; 19] = [
    10 * SECOND_MS,
    30 * SECOND_MS,
    MINUTE_MS,
    2 * MINUTE_MS,
    5 * MINUTE_MS,
    10 * MINUTE_MS,
    20 * MINUTE_MS,
    30 * MINUTE_MS,
    HOUR_MS,
    HOUR_MS,
    2 * HOUR_MS,
    2 * HOUR_MS,
    3 * HOUR_MS,
    3 * HOUR_MS,
    4 * HOUR_MS,
    4 * HOUR_MS,
    5 * HOUR_MS,
    6 * HOUR_MS,
    8 * HOUR_MS,
];
const SVIX_DELAYS_MS: [u64; 7] =
    [5 * SECOND_MS, 5 * MINUTE_MS, 30 * MINUTE_MS, 2 * HOUR_MS, 5 * HOUR_MS, 10 * HOUR_MS, 10 * HOUR_MS];

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), RetryPolicyError> {
        match self {
            RetryPolicy::Preset(_) => Ok(()),
            RetryPolicy::Schedule { delays_ms } => {
                if delays_ms.is_empty() || delays_ms.len() > SCHEDULE_STEPS_MAX {
                    return Err(RetryPolicyError::ScheduleLength);
                }
                if delays_ms.iter().any(|d| *d > DELAY_MS_MAX) {
                    return Err(RetryPolicyError::DelayTooLong);
                }
                Ok(())
            }
            RetryPolicy::Exponential { first_delay_ms, max_delay_ms, horizon_ms } => {
                let delay = 1..=DELAY_MS_MAX;
                let ok =
                    delay.contains(first_delay_ms) && delay.contains(max_delay_ms) && *horizon_ms <= HORIZON_MS_MAX;
                ok.then_some(()).ok_or(RetryPolicyError::BadExponential)
            }
        }
    }

    fn shape(&self) -> Shape<'_> {
        match self {
            RetryPolicy::Preset(Preset::Default) => {
                Shape::Exponential { first_ms: 5 * SECOND_MS, max_ms: HOUR_MS, horizon_ms: 3 * DAY_MS }
            }
            RetryPolicy::Preset(Preset::Stripe) => {
                Shape::Exponential { first_ms: MINUTE_MS, max_ms: HOUR_MS, horizon_ms: 3 * DAY_MS }
            }
            RetryPolicy::Preset(Preset::Recharge) => Shape::Schedule(&RECHARGE_DELAYS_MS),
            RetryPolicy::Preset(Preset::Svix) => Shape::Schedule(&SVIX_DELAYS_MS),
            RetryPolicy::Schedule { delays_ms } => Shape::Schedule(delays_ms),
            RetryPolicy::Exponential { first_delay_ms, max_delay_ms, horizon_ms } => {
                Shape::Exponential { first_ms: *first_delay_ms, max_ms: *max_delay_ms, horizon_ms: *horizon_ms }
            }
        }
    }
}

/// When to try again after attempt number `attempts_made` (1 = the first attempt) failed,
/// or `None` to give up. `jitter_unit` in `[0, 1)` spreads exponential delays by ±20%;
/// `retry_after_ms` (already parsed from a 429/503) is honoured as a minimum, clamped
/// to [`RETRY_AFTER_MAX_MS`].
pub fn next_attempt(
    policy: &RetryPolicy,
    attempts_made: u32,
    first_attempt_at: UnixMs,
    now: UnixMs,
    retry_after_ms: Option<u64>,
    jitter_unit: f64,
) -> Option<UnixMs> {
    if attempts_made >= ATTEMPTS_MAX {
        return None;
    }
    let step = attempts_made.max(1) - 1;
    let delay_ms = match policy.shape() {
        Shape::Schedule(delays) => *delays.get(step as usize)?,
        Shape::Exponential { first_ms, max_ms, horizon_ms } => {
            let base = first_ms.saturating_mul(1u64 << step.min(40)).min(max_ms);
            let factor = 0.8 + 0.4 * jitter_unit.clamp(0.0, 1.0);
            // At least 1 ms: a delay rounded down to 0 would retry at the same instant forever.
            let delay = ((base as f64 * factor) as u64).clamp(1, max_ms);
            let delay = honour_retry_after(delay, retry_after_ms);
            let at = now.saturating_add(delay as i64);
            return (at - first_attempt_at <= horizon_ms as i64).then_some(at);
        }
    };
    Some(now.saturating_add(honour_retry_after(delay_ms, retry_after_ms) as i64))
}

fn honour_retry_after(delay_ms: u64, retry_after_ms: Option<u64>) -> u64 {
    match retry_after_ms {
        Some(asked) => delay_ms.max(asked.min(RETRY_AFTER_MAX_MS)),
        None => delay_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a policy to exhaustion with fixed jitter and failing attempts taking no time;
    /// returns the delays between attempts.
    fn delays(policy: &RetryPolicy, jitter: f64) -> Vec<u64> {
        let mut now = 0;
        let mut out = Vec::new();
        let mut n = 1;
        while let Some(at) = next_attempt(policy, n, 0, now, None, jitter) {
            out.push((at - now) as u64);
            now = at;
            n += 1;
            assert!(n <= ATTEMPTS_MAX, "policy never ends");
        }
        out
    }

    #[test]
    fn default_policy_starts_near_5s_caps_at_1h_and_ends_within_3_days() {
        let d = delays(&RetryPolicy::default(), 0.5);
        assert_eq!(d[0], 5_000);
        assert_eq!(d[1], 10_000);
        assert!(d.iter().all(|x| *x <= HOUR_MS));
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "monotone without jitter variation");
        let total: u64 = d.iter().sum();
        assert!(total <= 3 * DAY_MS && total > 3 * DAY_MS - HOUR_MS, "{total}");
    }

    #[test]
    fn jitter_spreads_within_20_percent() {
        assert_eq!(delays(&RetryPolicy::default(), 0.0)[0], 4_000);
        assert_eq!(delays(&RetryPolicy::default(), 0.999_999)[0], 5_999);
    }

    #[test]
    fn presets_table() {
        let svix = delays(&RetryPolicy::Preset(Preset::Svix), 0.5);
        assert_eq!(svix, SVIX_DELAYS_MS.to_vec());
        let recharge = delays(&RetryPolicy::Preset(Preset::Recharge), 0.5);
        assert_eq!(recharge.len(), 19, "first attempt plus 19 retries");
        assert!(recharge.iter().sum::<u64>() <= 48 * HOUR_MS);
        let stripe = delays(&RetryPolicy::Preset(Preset::Stripe), 0.5);
        assert_eq!(stripe[0], MINUTE_MS);
        assert!(stripe.iter().sum::<u64>() <= 3 * DAY_MS);
        let explicit = delays(&RetryPolicy::Schedule { delays_ms: vec![1, 2, 3] }, 0.5);
        assert_eq!(explicit, vec![1, 2, 3]);
    }

    #[test]
    fn tiny_delays_still_move_forward_and_attempts_are_capped() {
        let tiny = RetryPolicy::Exponential { first_delay_ms: 1, max_delay_ms: 1, horizon_ms: HORIZON_MS_MAX };
        assert_eq!(next_attempt(&tiny, 1, 0, 0, None, 0.0), Some(1), "rounded down to 0 it would never advance");
        assert_eq!(delays(&tiny, 0.0).len(), ATTEMPTS_MAX as usize - 1);
    }

    #[test]
    fn retry_after_is_a_clamped_minimum() {
        let p = RetryPolicy::default();
        assert_eq!(next_attempt(&p, 1, 0, 0, Some(60_000), 0.5), Some(60_000));
        assert_eq!(next_attempt(&p, 1, 0, 0, Some(1), 0.5), Some(5_000));
        assert_eq!(next_attempt(&p, 1, 0, 0, Some(10 * DAY_MS), 0.5), Some(HOUR_MS as i64));
        let s = RetryPolicy::Preset(Preset::Svix);
        assert_eq!(next_attempt(&s, 8, 0, 0, Some(1_000), 0.5), None, "exhausted stays exhausted");
    }

    #[test]
    fn wire_forms_parse() {
        let cases = [
            (r#""stripe""#, RetryPolicy::Preset(Preset::Stripe)),
            (r#"{"delaysMs":[5000,60000]}"#, RetryPolicy::Schedule { delays_ms: vec![5000, 60000] }),
            (
                r#"{"firstDelayMs":1,"maxDelayMs":2,"horizonMs":3}"#,
                RetryPolicy::Exponential { first_delay_ms: 1, max_delay_ms: 2, horizon_ms: 3 },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(serde_json::from_str::<RetryPolicy>(text).unwrap(), expected, "{text}");
        }
        assert!(serde_json::from_str::<RetryPolicy>(r#""weekly""#).is_err());
    }

    #[test]
    fn validation_table() {
        assert_eq!(RetryPolicy::Schedule { delays_ms: vec![] }.validate(), Err(RetryPolicyError::ScheduleLength));
        assert_eq!(
            RetryPolicy::Schedule { delays_ms: vec![DELAY_MS_MAX + 1] }.validate(),
            Err(RetryPolicyError::DelayTooLong)
        );
        let bad = RetryPolicy::Exponential { first_delay_ms: 0, max_delay_ms: 5, horizon_ms: 1 };
        assert_eq!(bad.validate(), Err(RetryPolicyError::BadExponential));
        let capped = RetryPolicy::Exponential { first_delay_ms: 10, max_delay_ms: 5, horizon_ms: 100 };
        assert_eq!(capped.validate(), Ok(()), "a first delay above the maximum is the maximum");
        assert_eq!(next_attempt(&capped, 1, 0, 0, None, 0.5), Some(5));
        assert_eq!(RetryPolicy::default().validate(), Ok(()));
    }
}
