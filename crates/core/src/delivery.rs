//! Delivery states. The numbers are Svix's `MessageStatus` codes, so the API can show
//! them unchanged: `Pending → Sending → Delivered | Pending(next_at) | Exhausted`.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    Delivered = 0,
    Pending = 1,
    /// Retries are used up (or the endpoint is disabled); kept forever and resendable.
    Exhausted = 2,
    Sending = 3,
    Canceled = 4,
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
        }
    }

    /// True for states no scheduler acts on.
    pub fn is_final(self) -> bool {
        matches!(self, DeliveryState::Delivered | DeliveryState::Exhausted | DeliveryState::Canceled)
    }
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
        for code in 0..=4 {
            let state = DeliveryState::from_code(code).unwrap();
            assert_eq!(state.code(), code);
        }
        assert_eq!(DeliveryState::from_code(9), None);
        assert_eq!(DeliveryState::Exhausted.text(), "fail");
    }
}
