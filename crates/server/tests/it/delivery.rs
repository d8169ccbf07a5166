//! Delivery semantics on a manual clock: schedules, classification, isolation, restarts.

use crate::harness::*;
use hookline_core::retry::{next_attempt, RetryPolicy};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::Semaphore;

fn iso_ms(text: &str) -> i64 {
    hookline_server::wire::parse_timestamp(text).unwrap()
}

/// A delivery that waited for a slot (every one taken) goes where its endpoint points when
/// it gets one: re-pointed during the wait, it went to the old URL.
#[tokio::test]
async fn a_delivery_waiting_for_a_slot_goes_where_its_endpoint_points_then() {
    let mut config = dev_config();
    config.delivery.max_in_flight = 1;
    let gw = start_gateway(config).await;
    let gate = Arc::new(Semaphore::new(0));
    let slow = Receiver::start(Answer { status: 200, headers: vec![], gate: Some(gate.clone()) }).await;
    let (old, new) = (Receiver::start(Answer::status(200)).await, Receiver::start(Answer::status(200)).await);
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": slow.url, "filterTypes": ["payment.slow"]})).await;
    let ep = gw.endpoint(&app, json!({"url": old.url, "filterTypes": ["payment.succeeded"]})).await;
    let ep = ep["id"].as_str().unwrap().to_owned();
    gw.publish(&app, json!({"eventType": "payment.slow", "payload": {}})).await;
    slow.next().await;
    // The only slot is taken: this delivery reads its endpoint, then waits.
    let msg = gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {}})).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    gw.ok("PATCH", &format!("/api/v1/app/{app}/endpoint/{ep}"), Some(json!({"url": new.url}))).await;
    gate.add_permits(1);
    let got = new.next().await;
    assert_eq!(got.header("webhook-id"), msg.as_str(), "sent where the endpoint points now");
    assert!(!old.gets_within(200).await, "nothing went to the old URL");
    gw.stop().await;
}

#[tokio::test]
async fn explicit_schedule_retries_exactly_on_time() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(200)).await;
    rx.then(Answer::status(500));
    rx.then(Answer::status(503));
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url, "retryPolicy": {"delaysMs": [1000, 60000]}})).await;
    let msg = gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {"id": "pay_1"}})).await;
    rx.next().await;
    gw.wait_attempts(&app, &msg, 1).await;
    gw.advance(999);
    assert!(!rx.gets_within(200).await, "no retry before its time");
    gw.advance(1);
    rx.next().await;
    gw.wait_attempts(&app, &msg, 2).await;
    gw.advance(59_999);
    assert!(!rx.gets_within(200).await, "no retry before its time");
    gw.advance(1);
    rx.next().await;
    let attempts = gw.wait_attempts(&app, &msg, 3).await;
    let codes: Vec<i64> = attempts.iter().map(|a| a["responseStatusCode"].as_i64().unwrap()).collect();
    assert_eq!(codes, vec![500, 503, 200]);
    assert_eq!(gw.destination(&app, &msg).await.0, 0, "delivered");
    let metrics = gw.metrics().await;
    let endpoint = attempts[0]["endpointId"].as_str().unwrap();
    for series in [
        "hookline_messages_published_total ".to_owned(),
        format!("hookline_delivery_attempts_total{{endpoint=\"{endpoint}\",outcome=\"http_status\"}} 2"),
        format!("hookline_delivery_attempts_total{{endpoint=\"{endpoint}\",outcome=\"success\"}} 1"),
        format!("hookline_deliveries_succeeded_total{{endpoint=\"{endpoint}\"}} 1"),
        format!("hookline_deliveries_failed_total{{endpoint=\"{endpoint}\"}} 2"),
        format!("hookline_delivery_attempt_duration_seconds_count{{endpoint=\"{endpoint}\"}} 3"),
        "hookline_delivery_latency_seconds_bucket".to_owned(),
        "hookline_queue_depth ".to_owned(),
        "hookline_deliveries_in_flight ".to_owned(),
    ] {
        assert!(metrics.contains(&series), "/metrics lacks {series}");
    }
    gw.stop().await;
}

/// A deleted endpoint's metric series leave `/metrics` (they stayed for the life of the
/// process: about twenty lines per endpoint ever delivered to), and a deleted
/// application's with it; other endpoints' stay.
#[tokio::test]
async fn a_deleted_endpoints_series_leave_the_metrics() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("merchant").await;
    let first = gw.endpoint(&app, json!({"url": rx.url})).await["id"].as_str().unwrap().to_owned();
    let second = gw.endpoint(&app, json!({"url": rx.url})).await["id"].as_str().unwrap().to_owned();
    let msg = gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {}})).await;
    gw.wait_attempts(&app, &msg, 2).await;
    let series = |endpoint: &str| format!("hookline_deliveries_succeeded_total{{endpoint=\"{endpoint}\"}} 1");
    let metrics = gw.metrics().await;
    assert!(metrics.contains(&series(&first)) && metrics.contains(&series(&second)), "{metrics}");
    gw.ok("DELETE", &format!("/api/v1/app/{app}/endpoint/{first}"), None).await;
    let metrics = gw.metrics().await;
    assert!(!metrics.contains(&format!("\"{first}\"")), "a deleted endpoint's series stay:\n{metrics}");
    assert!(metrics.contains(&series(&second)), "{metrics}");
    gw.ok("DELETE", &format!("/api/v1/app/{app}"), None).await;
    let metrics = gw.metrics().await;
    assert!(!metrics.contains(&format!("\"{second}\"")), "a deleted application's series stay:\n{metrics}");
    gw.stop().await;
}

/// On PostgreSQL, an endpoint deleted through one node leaves the metrics of another node
/// that delivered to it (told by the store's change notifications). SQLite runs one node.
#[tokio::test]
async fn an_endpoint_deleted_through_another_node_leaves_this_nodes_metrics() {
    if std::env::var("HOOKLINE_TEST_BACKEND").as_deref() != Ok("postgres") {
        return;
    }
    let (dir, clock) = (Arc::new(tempfile::tempdir().unwrap()), Arc::new(hookline_server::clock::ManualClock::new(T0)));
    let a = start_gateway_in(dev_config(), dir.clone(), clock.clone()).await;
    let b = start_gateway_in(dev_config(), dir, clock).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = a.app("merchant").await;
    let endpoint = a.endpoint(&app, json!({"url": rx.url})).await["id"].as_str().unwrap().to_owned();
    let label = format!("endpoint=\"{endpoint}\"");
    // Published through b, so b claims and sends it (and b's cache may not know the endpoint yet).
    let msg = eventually("b takes the publish", async || {
        let (status, body) =
            b.call("POST", &format!("/api/v1/app/{app}/msg"), Some(json!({"eventType": "x", "payload": {}}))).await;
        done_or(status == 202, status).map(|_| body["id"].as_str().unwrap().to_owned())
    })
    .await;
    b.wait_attempts(&app, &msg, 1).await;
    assert!(b.metrics().await.contains(&label), "b delivered it");
    a.ok("DELETE", &format!("/api/v1/app/{app}/endpoint/{endpoint}"), None).await;
    eventually("b drops the deleted endpoint's series", async || {
        let metrics = b.metrics().await;
        done_or(!metrics.contains(&label), "still in b's metrics")
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn default_policy_backs_off_exponentially_and_gives_up_after_three_days() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(500)).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url})).await;
    let msg = gw.publish(&app, json!({"eventType": "charge.failed", "payload": {}})).await;
    let mut now = T0;
    let mut delays = Vec::new();
    for n in 1.. {
        gw.wait_attempts(&app, &msg, n).await;
        let (status, next) = gw.destination(&app, &msg).await;
        let Some(next) = next else {
            assert_eq!(status, 2, "exhausted when no next attempt");
            break;
        };
        let next = iso_ms(&next);
        delays.push(next - now);
        gw.advance(next - now);
        now = next;
        assert!(n < 100, "never gave up");
    }
    assert!((4_000..=6_000).contains(&delays[0]), "first retry after about 5 s: {delays:?}");
    assert!(delays.iter().all(|d| *d <= 3_600_000), "capped at 1 h: {delays:?}");
    assert!(delays[1] > delays[0] && delays[2] > delays[1], "grows: {delays:?}");
    let total: i64 = delays.iter().sum();
    assert!(total <= 3 * 86_400_000 && total > 3 * 86_400_000 - 3_600_000, "ends near the 3-day horizon: {total}");
    // Exhausted deliveries are kept and can be resent.
    let endpoint =
        gw.ok("GET", &format!("/api/v1/app/{app}/endpoint"), None).await["data"][0]["id"].as_str().unwrap().to_owned();
    gw.ok("POST", &format!("/api/v1/app/{app}/msg/{msg}/endpoint/{endpoint}/resend"), None).await;
    gw.wait_attempts(&app, &msg, delays.len() + 2).await;
    gw.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_and_410_disables_the_endpoint() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(410)).await;
    rx.then(Answer { status: 429, headers: vec![("retry-after".into(), "120".into())], gate: None });
    let app = gw.app("merchant").await;
    let ep = gw.endpoint(&app, json!({"url": rx.url})).await;
    let msg = gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {}})).await;
    rx.next().await;
    gw.wait_attempts(&app, &msg, 1).await;
    let (_, next) = gw.destination(&app, &msg).await;
    assert_eq!(iso_ms(&next.unwrap()) - T0, 120_000, "Retry-After: 120 beats the 5 s backoff");
    gw.advance(120_000);
    rx.next().await;
    gw.wait_attempts(&app, &msg, 2).await;
    let endpoint = gw.ok("GET", &format!("/api/v1/app/{app}/endpoint/{}", ep["id"].as_str().unwrap()), None).await;
    assert_eq!(endpoint["disabled"], true);
    assert_eq!(gw.destination(&app, &msg).await.0, 2);
    // A disabled endpoint gets no new deliveries.
    gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {}})).await;
    assert!(!rx.gets_within(300).await);
    gw.stop().await;
}

#[tokio::test]
async fn routing_follows_event_types_channels_and_deliver_at() {
    let gw = start_gateway(dev_config()).await;
    let paid = Receiver::start(Answer::status(200)).await;
    let eu = Receiver::start(Answer::status(200)).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": paid.url, "filterTypes": ["payment.succeeded"]})).await;
    gw.endpoint(&app, json!({"url": eu.url, "channels": ["eu"]})).await;
    gw.publish_raw(&app, r#"{"eventType": "charge.failed", "payload": {"n": 1}}"#).await;
    gw.publish_raw(&app, r#"{"eventType": "payment.succeeded", "payload": {"n": 2}, "channels": ["eu"]}"#).await;
    assert_eq!(&paid.next().await.body[..], br#"{"n": 2}"#);
    assert_eq!(&eu.next().await.body[..], br#"{"n": 2}"#);
    assert!(!paid.gets_within(200).await && !eu.gets_within(1).await);
    let later = hookline_server::wire::timestamp(T0 + 3_600_000);
    gw.publish_raw(
        &app,
        &format!(r#"{{"eventType": "payment.succeeded", "payload": {{"n": 3}}, "deliverAt": "{later}"}}"#),
    )
    .await;
    assert!(!paid.gets_within(300).await, "not before deliverAt");
    gw.advance(3_600_000);
    assert_eq!(&paid.next().await.body[..], br#"{"n": 3}"#);
    gw.stop().await;
}

#[tokio::test]
async fn a_stuck_endpoint_does_not_delay_another() {
    let mut config = dev_config();
    config.delivery.endpoint_max_in_flight = 4;
    let gw = start_gateway(config).await;
    let gate = Arc::new(Semaphore::new(0));
    let stuck = Receiver::start(Answer { status: 200, headers: vec![], gate: Some(gate.clone()) }).await;
    let fast = Receiver::start(Answer::status(200)).await;
    let slow_app = gw.app("slow-merchant").await;
    let fast_app = gw.app("fast-merchant").await;
    gw.endpoint(&slow_app, json!({"url": stuck.url})).await;
    gw.endpoint(&fast_app, json!({"url": fast.url})).await;
    for n in 0..20 {
        gw.publish(&slow_app, json!({"eventType": "payment.succeeded", "payload": {"n": n}})).await;
    }
    for _ in 0..4 {
        stuck.next().await;
    }
    for n in 0..20 {
        let msg = gw.publish(&fast_app, json!({"eventType": "payment.succeeded", "payload": {"n": n}})).await;
        fast.next().await;
        gw.wait_attempts(&fast_app, &msg, 1).await;
    }
    assert!(!stuck.gets_within(100).await, "the stuck endpoint holds at most its own 4 slots");
    gate.add_permits(1000);
    for _ in 4..20 {
        stuck.next().await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn open_deliveries_survive_a_restart() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let clock = Arc::new(hookline_server::clock::ManualClock::new(T0));
    let rx = Receiver::start(Answer::status(200)).await;
    rx.then(Answer::status(500));
    let gw = start_gateway_in(dev_config(), dir.clone(), clock.clone()).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url, "retryPolicy": {"delaysMs": [60000]}})).await;
    let msg = gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {}})).await;
    rx.next().await;
    gw.wait_attempts(&app, &msg, 1).await;
    gw.stop().await;
    let gw = start_gateway_in(dev_config(), dir, clock).await;
    assert!(!rx.gets_within(200).await, "the schedule continues where it was: not early");
    gw.advance(60_000);
    rx.next().await;
    let attempts = gw.wait_attempts(&app, &msg, 2).await;
    assert_eq!(attempts[1]["responseStatusCode"], 200);
    gw.stop().await;
}

#[tokio::test]
async fn recover_resends_what_failed_since_a_time() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(500)).await;
    let app = gw.app("merchant").await;
    let ep = gw.endpoint(&app, json!({"url": rx.url, "retryPolicy": {"delaysMs": [1000]}})).await;
    let ep = ep["id"].as_str().unwrap();
    let msg = gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {}})).await;
    rx.next().await;
    gw.wait_attempts(&app, &msg, 1).await;
    gw.advance(1000);
    rx.next().await;
    gw.wait_attempts(&app, &msg, 2).await;
    assert_eq!(gw.destination(&app, &msg).await.0, 2, "exhausted");
    rx.then(Answer::status(200));
    let since = hookline_server::wire::timestamp(T0 - 1000);
    let out = gw.ok("POST", &format!("/api/v1/app/{app}/endpoint/{ep}/recover"), Some(json!({"since": since}))).await;
    assert_eq!(out["recovered"], 1);
    rx.next().await;
    let attempts = gw.wait_attempts(&app, &msg, 3).await;
    assert_eq!((attempts[2]["responseStatusCode"].as_i64(), attempts[2]["triggerType"].as_i64()), (Some(200), Some(1)));
    gw.stop().await;
}

#[test]
fn the_engine_and_core_agree_on_the_default_first_delay() {
    // The engine passes attempts_made = 1 after the first failure; core's table says ~5 s.
    let at = next_attempt(&RetryPolicy::default(), 1, 0, 0, None, 0.5).unwrap();
    assert_eq!(at, 5_000);
}

#[tokio::test]
async fn a_day_long_outage_follows_the_schedule_and_then_delivers_everything() {
    let mut config = dev_config();
    config.delivery.request_timeout_ms = 300;
    // The schedule itself, to the millisecond: pacing an unreachable endpoint (which moves
    // attempts by up to a pause each) is tested on its own.
    config.delivery.unreachable_pause_ms = 0;
    let gw = start_gateway(config).await;
    let gate = Arc::new(Semaphore::new(0));
    let rx = Receiver::start(Answer::status(200)).await;
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let app = gw.app("merchant").await;
    let ep = gw.endpoint(&app, json!({"url": format!("http://{refused}/down")})).await;
    let ep = ep["id"].as_str().unwrap().to_owned();
    let msgs: Vec<String> = futures_publish(&gw, &app, 3).await;
    // The first attempt runs at once, on no advance of the clock: recorded between the
    // loop's count of attempts and its read of the next one, it was counted as the next
    // (a failure seen on PostgreSQL, whose attempt records are written in batches).
    gw.wait_attempts(&app, &msgs[0], 1).await;
    let hour = 3_600_000;
    let (mut now, mut phase) = (T0, 0);
    let mut classes = Vec::new();
    loop {
        // Phases of the outage by elapsed time: refused, then 500s, then timeouts, then back.
        let elapsed = now - T0;
        let wanted = match elapsed {
            e if e < 6 * hour => 0,
            e if e < 12 * hour => 1,
            e if e < 24 * hour => 2,
            _ => 3,
        };
        if wanted != phase {
            phase = wanted;
            let answer = match phase {
                1 => Answer::status(500),
                2 => Answer { status: 200, headers: vec![], gate: Some(gate.clone()) },
                _ => Answer::status(200),
            };
            rx.set_fallback(answer);
            if phase == 1 {
                gw.ok("PATCH", &format!("/api/v1/app/{app}/endpoint/{ep}"), Some(json!({"url": rx.url}))).await;
            }
        }
        let before = gw.attempts_of(&app, &msgs[0]).await.len();
        let (status, next) = gw.destination(&app, &msgs[0]).await;
        if status == 0 {
            break;
        }
        let next = iso_ms(&next.expect("pending deliveries have a next attempt"));
        assert!(next >= now, "attempts are never scheduled in the past");
        gw.advance(next - now);
        now = next;
        let attempts = gw.wait_attempts(&app, &msgs[0], before + 1).await;
        let last = attempts.last().unwrap();
        assert_eq!(iso_ms(last["timestamp"].as_str().unwrap()), now, "each attempt runs at its scheduled time");
        classes.push(last["errorClass"].as_str().unwrap_or("success").to_owned());
        assert!(now - T0 < 3 * 24 * hour, "still failing after the retry horizon");
    }
    for class in ["connect", "http_status", "timeout", "success"] {
        assert!(classes.iter().any(|c| c == class), "the outage showed {class}: {classes:?}");
    }
    assert!(now - T0 >= 24 * hour, "delivered only after the day-long outage");
    // The other messages keep their own (jittered) schedules: let one more interval pass.
    gw.advance(hour + 1);
    for msg in &msgs {
        let what = format!("{msg} never delivered");
        eventually(&what, async || {
            let (status, _) = gw.destination(&app, msg).await;
            done_or(status == 0, format!("status {status}"))
        })
        .await;
    }
    gate.add_permits(1000);
    gw.stop().await;
}

async fn futures_publish(gw: &Gateway, app: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(gw.publish(app, json!({"eventType": "payment.succeeded", "payload": {"i": i}})).await);
    }
    ids
}

/// An endpoint nobody listens on: after a few attempts that cannot reach it, its deliveries
/// are paced (one at a time, a pause between, on the engine's clock) instead of hammering
/// it and the store; when it listens again, what waited goes through at once, side by side
/// (it went on one at a time, each delivery handing on only its own turn), and the
/// attempts that failed follow on their schedule.
#[tokio::test]
async fn an_unreachable_endpoint_is_paced_and_drains_when_it_returns() {
    let mut config = dev_config();
    // A request held is held until the test lets it go, not ended by its timeout.
    config.delivery.request_timeout_ms = 600_000;
    let gw = start_gateway(config).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let app = gw.app("merchant").await;
    let url = format!("http://127.0.0.1:{port}/hook");
    gw.endpoint(&app, json!({"url": url, "retryPolicy": {"delaysMs": [3_600_000]}})).await;
    let mut messages = Vec::new();
    for n in 0..40 {
        messages.push(gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {"n": n}})).await);
    }
    let paced_after = hookline_core::classify::PACE_AFTER_UNREACHABLE as usize;
    let attempted = || async {
        let mut attempted = 0;
        for msg in &messages {
            attempted += usize::from(!gw.attempts_of(&app, msg).await.is_empty());
        }
        attempted
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // Attempts already started when the fifth failure came in may fail too.
    let failed = attempted().await;
    assert!((paced_after..=paced_after + 8).contains(&failed), "{failed} of 40 attempted while time stands still");
    gw.advance(999);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(attempted().await, failed, "none before the pause is over");
    // Answered at once for the probe, then held: what waited is in flight together.
    let gate = Arc::new(Semaphore::new(0));
    let held = Answer { status: 200, headers: vec![], gate: Some(gate.clone()) };
    let rx = Receiver::start_at(held, &format!("127.0.0.1:{port}")).await;
    rx.then(Answer::status(200));
    gw.advance(1);
    // The probe gets through; everything that waited follows at once.
    for _ in failed..40 {
        rx.next().await;
    }
    gate.add_permits(1_000);
    gw.advance(3_600_000);
    for _ in 0..failed {
        rx.next().await;
    }
}

/// An endpoint's `throttleRate` is a ceiling: its deliveries start 1/rate apart on the
/// engine's clock, so no second sees more than the rate; nothing is dropped or counted as a
/// failure; and a neighbour without a limit is not slowed. An application's rate is the
/// default of its endpoints.
#[tokio::test]
async fn a_throttled_endpoint_gets_at_most_its_rate_and_its_neighbour_is_not_slowed() {
    let gw = start_gateway(dev_config()).await;
    let (limited_rx, free_rx) =
        (Receiver::start(Answer::status(200)).await, Receiver::start(Answer::status(200)).await);
    let limited = gw.ok("POST", "/api/v1/app", Some(json!({"name": "limited", "throttleRate": 50}))).await;
    let limited = limited["id"].as_str().unwrap().to_owned();
    let free = gw.app("free").await;
    gw.endpoint(&limited, json!({"url": format!("{}/hook", limited_rx.url)})).await;
    gw.endpoint(&free, json!({"url": format!("{}/hook", free_rx.url)})).await;
    for n in 0..200 {
        gw.publish(&limited, json!({"eventType": "payment.succeeded", "payload": {"n": n}})).await;
    }
    for n in 0..20 {
        gw.publish(&free, json!({"eventType": "payment.succeeded", "payload": {"n": n}})).await;
    }
    // While the engine's clock stands still: the neighbour gets everything, the throttled
    // endpoint its first delivery only.
    for _ in 0..20 {
        free_rx.next().await;
    }
    limited_rx.next().await;
    assert!(!limited_rx.gets_within(300).await, "a second delivery before its time");
    // 50 per second: one start each 20 ms of the engine's clock, never more. (A jump of the
    // clock is a stalled node to the limiter: it starts one, then spaces the rest again.)
    for step in 1..=50 {
        gw.advance(20);
        limited_rx.next().await;
        assert!(!limited_rx.gets_within(50).await, "more than one start in the 20 ms step {step}");
    }
    for _ in 51..200 {
        gw.advance(20);
        limited_rx.next().await;
    }
    let listed = gw.ok("GET", &format!("/api/v1/app/{limited}/msg?limit=250"), None).await;
    for msg in listed["data"].as_array().unwrap() {
        let attempts = gw.wait_attempts(&limited, msg["id"].as_str().unwrap(), 1).await;
        assert_eq!(attempts.len(), 1, "one attempt each: waiting is not failing");
        assert_eq!(attempts[0]["status"], 0);
    }
    gw.stop().await;
}

/// An engine of its own on a store of its own (in the directory returned), and an
/// application with no endpoint yet: for tests that hand the engine work directly.
struct BareEngine {
    engine: Arc<hookline_server::dispatch::Engine>,
    store: Arc<dyn hookline_store::Store>,
    app: hookline_store::App,
    clock: Arc<hookline_server::clock::ManualClock>,
    _dir: tempfile::TempDir,
}

async fn bare_engine() -> BareEngine {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let config = dev_config();
    let clock = Arc::new(hookline_server::clock::ManualClock::new(T0));
    let engine = hookline_server::dispatch::Engine::start(
        store.clone(),
        clock.clone(),
        config.delivery.clone(),
        config.cluster.clone(),
        config.address_policy(),
        Some(7),
        None,
    )
    .await
    .unwrap();
    let app = store.create_app(hookline_store::conformance::app(T0, None)).await.unwrap();
    BareEngine { engine, store, app, clock, _dir: dir }
}

/// A publisher that stops waiting while its commit runs (a client gone, a broker connection
/// lost) strands nothing: the commit claims the deliveries for this node, and the hand-off
/// to its scheduler finishes without the caller, so the delivery is sent.
#[tokio::test]
async fn a_publish_whose_caller_stops_waiting_is_still_delivered() {
    let BareEngine { engine, store, app, _dir, .. } = bare_engine().await;
    let rx = Receiver::start(Answer::status(204)).await;
    let endpoint =
        hookline_store::Endpoint { url: rx.url.clone(), ..hookline_store::conformance::endpoint(&app.id, T0) };
    let endpoint = Arc::new(store.create_endpoint(endpoint).await.unwrap());
    let message = hookline_store::conformance::publish(&app.id, &[], None, T0).message;
    let deliveries = engine.route(&[endpoint], &message, T0);
    assert_eq!(deliveries.len(), 1);

    let mut commit = Box::pin(engine.commit(&message, deliveries, None, None));
    let first_poll = futures_util::poll!(commit.as_mut());
    assert!(first_poll.is_pending(), "the commit waits for the store");
    drop(commit);
    let received = rx.next().await;
    assert_eq!(received.header("webhook-id"), message.id);
    engine.shutdown().await;
}

/// A delivery to an endpoint this node's cache has not heard of yet (created after the
/// cache took the application's endpoints, its change not heard: a notification missed
/// while reconnecting) is sent, not dropped while claimed by this node.
#[tokio::test]
async fn a_delivery_to_an_endpoint_the_cache_has_not_heard_of_is_sent() {
    let BareEngine { engine, store, app, _dir, .. } = bare_engine().await;
    assert!(engine.catalog.endpoints(&app.id).await.unwrap().is_empty(), "cached without the endpoint");
    let rx = Receiver::start(Answer::status(204)).await;
    let endpoint =
        hookline_store::Endpoint { url: rx.url.clone(), ..hookline_store::conformance::endpoint(&app.id, T0) };
    let endpoint = store.create_endpoint(endpoint).await.unwrap();
    let message = hookline_store::conformance::publish(&app.id, &[], None, T0).message;
    let delivery = engine.delivery_to(&endpoint, &message, T0, T0);
    engine.commit(&message, vec![delivery], None, None).await.unwrap();
    let received = rx.next().await;
    assert_eq!(received.header("webhook-id"), message.id);
    engine.shutdown().await;
}

/// A claim this node holds in the store on a delivery it does not hold in memory (left by a
/// path that drops work while claimed; none is known) is freed by the sweep of stray claims
/// at its second look, a lease after the first, and the delivery is sent. A delivery in
/// memory, as overdue (in flight, its endpoint slow to answer), keeps its claim.
#[tokio::test]
async fn a_claim_this_node_lost_track_of_is_freed_and_sent() {
    let BareEngine { engine, store, app, clock, _dir } = bare_engine().await;
    let endpoint_at =
        |url: &str| hookline_store::Endpoint { url: url.into(), ..hookline_store::conformance::endpoint(&app.id, T0) };
    let rx = Receiver::start(Answer::status(204)).await;
    let stray_endpoint = store.create_endpoint(endpoint_at(&rx.url)).await.unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let slow_rx = Receiver::start(Answer { gate: Some(gate.clone()), ..Answer::status(204) }).await;
    let slow_endpoint = store.create_endpoint(endpoint_at(&slow_rx.url)).await.unwrap();
    let held = hookline_store::conformance::publish(&app.id, &[], None, T0).message;
    let delivery = engine.delivery_to(&slow_endpoint, &held, T0, T0);
    let held_key = hookline_store::DeliveryKey { msg_id: held.id.clone(), id: delivery.id.clone() };
    engine.commit(&held, vec![delivery], None, None).await.unwrap();
    slow_rx.next().await;
    // Claimed under this node's token in the store, never handed to its scheduler.
    let mut stray = hookline_store::conformance::publish(&app.id, &[&stray_endpoint.id], None, T0);
    stray.claim = Some(engine.token());
    store.publish(stray.clone()).await.unwrap();
    assert!(!rx.gets_within(300).await, "work claimed by a live node is no other claim's due work");

    // Sweeps run a lease apart from the engine's start; the stray claim is overdue (due a
    // lease ago) at the second and freed at the third. A sixth of a lease at a time, so
    // that the lease is renewed on the way.
    let lease = dev_config().cluster.lease_ms as i64;
    for _ in 0..20 {
        clock.advance(lease / 6);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let received = rx.next().await;
    assert_eq!(received.header("webhook-id"), stray.message.id);
    let now = hookline_server::clock::Clock::now_ms(clock.as_ref());
    let overdue = store.overdue_claims(engine.token(), now - lease, 1_000).await.unwrap();
    assert_eq!(overdue, vec![held_key], "the delivery in flight keeps its claim");
    gate.add_permits(1);
    assert!(!slow_rx.gets_within(500).await, "sent once");
    engine.shutdown().await;
}

/// A stand-in for Redis, counting connections and `XADD`s: it answers every `XADD` with an
/// entry id, or with `READONLY` as a replica after a failover does (anything else with
/// `OK`), each connection's first answer after `first_answer_after`.
async fn fake_redis(
    read_only: bool,
    first_answer_after: std::time::Duration,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, xadds) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (counted_accepts, counted_xadds) = (accepted.clone(), xadds.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted_accepts.fetch_add(1, Ordering::SeqCst);
            let xadds = counted_xadds.clone();
            tokio::spawn(async move {
                let (reader, mut writer) = stream.into_split();
                let mut reader = BufReader::new(reader);
                let mut line = String::new();
                let mut first = true;
                // Each command is an array of bulk strings: `*<n>`, then `$<len>` and the bytes.
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let count: usize = line.trim().trim_start_matches('*').parse().unwrap();
                    let mut name = Vec::new();
                    for n in 0..count {
                        line.clear();
                        reader.read_line(&mut line).await.unwrap();
                        let len: usize = line.trim().trim_start_matches('$').parse().unwrap();
                        let mut arg = vec![0; len + 2];
                        reader.read_exact(&mut arg).await.unwrap();
                        if n == 0 {
                            name = arg[..len].to_ascii_uppercase();
                        }
                    }
                    if std::mem::take(&mut first) {
                        tokio::time::sleep(first_answer_after).await;
                    }
                    let answer: &[u8] = match (name == b"XADD", read_only) {
                        (true, true) => b"-READONLY You can't write against a read only replica.\r\n",
                        (true, false) => b"$3\r\n1-0\r\n",
                        (false, _) => b"+OK\r\n",
                    };
                    if name == b"XADD" {
                        xadds.fetch_add(1, Ordering::SeqCst);
                    }
                    if writer.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted, xadds)
}

/// A Redis link the server refused a write on is not used again: after a failover the old
/// primary, now a replica, answers `READONLY` on that connection for ever, and only a new
/// connection finds the new primary (the first version kept the link: one connection for
/// every attempt, each refused, until a restart).
#[tokio::test]
async fn a_redis_link_refused_a_write_is_not_used_again() {
    use std::sync::atomic::Ordering;
    let gw = start_gateway(dev_config()).await;
    let (port, accepted, xadds) = fake_redis(true, std::time::Duration::ZERO).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": format!("redis://127.0.0.1:{port}/payments")})).await;
    for n in 1..=3 {
        gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {"n": n}})).await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while xadds.load(Ordering::SeqCst) < n {
            assert!(tokio::time::Instant::now() < deadline, "attempt {n} never reached the broker");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "a connection for each attempt after a refused write");
    gw.stop().await;
}

/// Deliveries that find no link to a broker wait for the one connecting: ten at once to a
/// new Redis open one connection (the first version opened one each, and a RabbitMQ
/// connection is a thread of its own).
#[tokio::test]
async fn deliveries_to_a_new_broker_share_one_connect() {
    use std::sync::atomic::Ordering;
    let gw = start_gateway(dev_config()).await;
    let (port, accepted, xadds) = fake_redis(false, std::time::Duration::from_millis(500)).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": format!("redis://127.0.0.1:{port}/payments")})).await;
    for n in 0..10 {
        gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {"n": n}})).await;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while xadds.load(Ordering::SeqCst) < 10 {
        assert!(tokio::time::Instant::now() < deadline, "{} of 10 reached the broker", xadds.load(Ordering::SeqCst));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for the ten");
    gw.stop().await;
}

/// A delivery sent again while its copy is in flight is the resend's: the older copy's
/// request is kept as an attempt, but its outcome is not recorded over the delivery, nor is
/// the older copy sent again at its retry (it was recorded as a retry an hour on, kept by
/// this node, and sent again then, after the resend had delivered it).
#[tokio::test]
async fn a_copy_overtaken_by_a_resend_neither_records_nor_retries() {
    let mut config = dev_config();
    config.delivery.endpoint_max_in_flight = 1;
    let gw = start_gateway(config).await;
    let gate = Arc::new(Semaphore::new(0));
    let rx = Receiver::start(Answer::status(200)).await;
    rx.then(Answer { status: 500, headers: vec![], gate: Some(gate.clone()) });
    let app = gw.app("merchant").await;
    let policy = json!({"delaysMs": [3_600_000]});
    let ep = gw.endpoint(&app, json!({"url": rx.url, "retryPolicy": policy})).await["id"].as_str().unwrap().to_owned();
    let msg = gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {}})).await;
    rx.next().await;
    // In flight, and held there: the operator sends it again, which waits for the turn.
    gw.ok("POST", &format!("/api/v1/app/{app}/msg/{msg}/endpoint/{ep}/resend"), None).await;
    gate.add_permits(1);
    rx.next().await;
    let attempts = gw.wait_attempts(&app, &msg, 2).await;
    let mut codes: Vec<_> = attempts.iter().map(|a| a["responseStatusCode"].as_u64()).collect();
    codes.sort();
    assert_eq!(codes, [Some(200), Some(500)], "both requests are attempts");
    let counts = gw.ok("GET", &format!("/api/v1/app/{app}/endpoint/{ep}/stats"), None).await;
    assert_eq!((counts["success"].as_u64(), counts["pending"].as_u64()), (Some(1), Some(0)), "{counts}");
    gw.advance(2 * 3_600_000);
    assert!(!rx.gets_within(500).await, "the older copy was not sent again");
    gw.stop().await;
}
