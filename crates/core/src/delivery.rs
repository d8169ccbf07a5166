//! Delivery states. The numbers are Svix's `MessageStatus` codes, so the API can show
//! them unchanged: `Pending → Sending → Delivered | Pending(next_at) | Exhausted`; `Skipped`
//! (5) is ours: published to a disabled endpoint (or skipped by an operator), kept until a
//! recover sends it; so is `Waiting` (6): behind an earlier delivery with the same ordering
//! key, made `Pending` when that one is done.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    Delivered = 0,
    Pending = 1,
    /// Retries are used up (or the endpoint is disabled); kept forever and resendable.
    Exhausted = 2,
    Sending = 3,
    Canceled = 4,
    /// Published while its endpoint was disabled, or skipped by an operator: not attempted
    /// (again) unless a recover sends it.
    Skipped = 5,
    /// Behind the open delivery of its ordering key to the same endpoint.
    Waiting = 6,
}

impl DeliveryState {
    pub fn code(self) -> i64 {
        self as i64
    }

    pub fn from_code(code: i64) -> Option<DeliveryState> {
        Some(match code {
            0 => DeliveryState::Delivered,
            1 => DeliveryState::Pending,
            2 => DeliveryState::Exhausted,
            3 => DeliveryState::Sending,
            4 => DeliveryState::Canceled,
            5 => DeliveryState::Skipped,
            6 => DeliveryState::Waiting,
            _ => return None,
        })
    }

    /// Svix's `statusText`.
    pub fn text(self) -> &'static str {
        match self {
            DeliveryState::Delivered => "success",
            DeliveryState::Pending => "pending",
            DeliveryState::Exhausted => "fail",
            DeliveryState::Sending => "sending",
            DeliveryState::Canceled => "canceled",
            DeliveryState::Skipped => "skipped",
            DeliveryState::Waiting => "waiting",
        }
    }

    /// True for states no scheduler acts on.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeliveryState::Delivered | DeliveryState::Exhausted | DeliveryState::Canceled | DeliveryState::Skipped
        )
    }
}

const DAY_MS: i64 = 86_400_000;

/// Whether an endpoint whose attempts have all failed since `fail_since` has failed long
/// enough at `now` to be disabled: for `disable_after_ms` (0 never), and on at least two
/// separate days (UTC), so that one bad night is not enough with a short setting.
pub fn failing_too_long(fail_since: i64, now: i64, disable_after_ms: u64) -> bool {
    disable_after_ms > 0
        && now.saturating_sub(fail_since) >= disable_after_ms as i64
        && fail_since.div_euclid(DAY_MS) != now.div_euclid(DAY_MS)
}

/// Why an attempt was made: on schedule, or because someone asked (resend, recover).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Scheduled = 0,
    Manual = 1,
}

impl Trigger {
    pub fn from_code(code: i64) -> Trigger {
        if code == 1 {
            Trigger::Manual
        } else {
            Trigger::Scheduled
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in 0..=5 {
            let state = DeliveryState::from_code(code).unwrap();
            assert_eq!(state.code(), code);
        }
        assert_eq!(DeliveryState::from_code(9), None);
        assert_eq!(DeliveryState::Exhausted.text(), "fail");
    }

    #[test]
    fn failing_too_long_needs_the_time_and_two_days() {
        let day = DAY_MS;
        assert!(!failing_too_long(0, 10 * day, 0), "0 turns it off");
        assert!(!failing_too_long(day, 2 * day - 1, 1000), "same day");
        assert!(failing_too_long(day, 2 * day, 1000));
        assert!(!failing_too_long(day, 5 * day, 5 * day as u64));
        assert!(failing_too_long(day, 6 * day, 5 * day as u64));
    }
}
