//! Property tests: signatures round-trip and break on any change; retry schedules move
//! forward, stay under their cap, end within their horizon, and always end.

use hookline_core::retry::{next_attempt, Preset, RetryPolicy};
use hookline_core::signature::{
    sign_headers, stripe_header, verify_standard, verify_stripe, Secret, SignatureScheme, VerifyError,
};
use proptest::prelude::*;

fn secret() -> impl Strategy<Value = Secret> {
    proptest::array::uniform24(any::<u8>()).prop_map(Secret::from_key)
}

proptest! {
    #[test]
    fn standard_signatures_round_trip_and_break_on_any_change(
        key in secret(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        id in "[a-zA-Z0-9_]{1,40}",
        ts in 0i64..4_000_000_000,
        flip in any::<prop::sample::Index>(),
    ) {
        let headers = sign_headers(&SignatureScheme::StandardWebhooks, &id, ts, &body, std::slice::from_ref(&key));
        let sig = headers.iter().find(|(k, _)| k == "webhook-signature").unwrap().1.clone();
        prop_assert_eq!(verify_standard(&id, &ts.to_string(), &sig, &body, std::slice::from_ref(&key), ts, 300), Ok(()));
        if !body.is_empty() {
            let mut tampered = body.clone();
            let i = flip.index(tampered.len());
            tampered[i] ^= 0x01;
            prop_assert_eq!(verify_standard(&id, &ts.to_string(), &sig, &tampered, &[key], ts, 300), Err(VerifyError::NoMatch));
        }
    }

    #[test]
    fn stripe_signatures_round_trip_with_any_of_several_secrets(
        secrets in proptest::collection::vec("whsec_[a-zA-Z0-9]{8,32}", 1..4),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        ts in 0i64..4_000_000_000,
        pick in any::<prop::sample::Index>(),
    ) {
        let texts: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let header = stripe_header(&texts, ts, &body);
        let holder = texts[pick.index(texts.len())];
        prop_assert_eq!(verify_stripe(&header, &body, &[holder], ts, 300), Ok(()));
        prop_assert_eq!(verify_stripe(&header, &body, &["whsec_someone_else"], ts, 300), Err(VerifyError::NoMatch));
    }

    #[test]
    fn retry_schedules_move_forward_stay_capped_and_end(
        policy in prop_oneof![
            Just(RetryPolicy::Preset(Preset::Default)),
            Just(RetryPolicy::Preset(Preset::Stripe)),
            Just(RetryPolicy::Preset(Preset::Recharge)),
            Just(RetryPolicy::Preset(Preset::Svix)),
            proptest::collection::vec(0u64..86_400_000, 1..50).prop_map(|delays_ms| RetryPolicy::Schedule { delays_ms }),
            (1u64..600_000, 1u64..10, 0u64..2_592_000_000).prop_map(|(first, factor, horizon)| RetryPolicy::Exponential {
                first_delay_ms: first,
                max_delay_ms: first * factor,
                horizon_ms: horizon,
            }),
        ],
        jitters in proptest::collection::vec(0.0f64..1.0, 200),
        retry_after in proptest::option::of(0u64..10_000_000),
    ) {
        prop_assert!(policy.validate().is_ok());
        let (first_attempt_at, mut now) = (1_000_000i64, 1_000_000i64);
        let mut attempts = 0u32;
        while let Some(at) = next_attempt(&policy, attempts + 1, first_attempt_at, now, retry_after, jitters[attempts as usize % jitters.len()]) {
            prop_assert!(at >= now, "never in the past");
            if let RetryPolicy::Exponential { max_delay_ms, horizon_ms, .. } = &policy {
                let cap = (*max_delay_ms).max(retry_after.unwrap_or(0).min(hookline_core::retry::RETRY_AFTER_MAX_MS));
                prop_assert!((at - now) as u64 <= cap, "capped");
                prop_assert!(at - first_attempt_at <= *horizon_ms as i64, "within the horizon");
            }
            now = at;
            attempts += 1;
            prop_assert!(attempts < 10_000, "a schedule always ends");
        }
    }
}
