//! Ordering: messages with one `orderingKey` reach an endpoint strictly in publish order,
//! each waiting until the one before it succeeded, was exhausted or was skipped; other
//! keys never wait. FIFO endpoints order everything sent to them.

use crate::harness::*;
use axum::body::Bytes;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What an ordered receiver saw, per key: the successes in arrival order, and every
/// attempt that came out of order (none, if ordering holds).
#[derive(Default)]
struct Seen {
    delivered: HashMap<String, Vec<u64>>,
    out_of_order: Vec<String>,
    requests: u64,
}

/// An endpoint that fails a share of requests at random (seeded), and checks that each
/// request for a key is for the event right after the last one it accepted.
async fn ordered_receiver(fail_share: f64, seed: u64) -> (String, Arc<Mutex<Seen>>) {
    use rand::{Rng, SeedableRng};
    let seen = Arc::new(Mutex::new(Seen::default()));
    let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)));
    let handler_seen = seen.clone();
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let (seen, rng) = (handler_seen.clone(), rng.clone());
        async move {
            let event: Value = serde_json::from_slice(&body).unwrap();
            let (key, n) = (event["key"].as_str().unwrap().to_owned(), event["n"].as_u64().unwrap());
            let fail = rng.lock().unwrap().random::<f64>() < fail_share;
            let mut seen = seen.lock().unwrap();
            seen.requests += 1;
            let next = seen.delivered.get(&key).map_or(0, |d| d.len() as u64);
            if n != next {
                seen.out_of_order.push(format!("{key}: got {n}, expected {next}"));
            }
            if fail {
                return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
            }
            seen.delivered.entry(key).or_default().push(n);
            axum::http::StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// Moves the clock a second at a time (retries are a second apart) until `done`.
async fn advance_until(gw: &Gateway, seen: &Mutex<Seen>, done: impl Fn(&Seen) -> bool) {
    let deadline = tokio::time::Instant::now() + 6 * PATIENCE;
    while !done(&seen.lock().unwrap()) {
        assert!(tokio::time::Instant::now() < deadline, "not everything arrived in time");
        gw.advance(1_000);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Publishes event `n` of every key, 50 requests at a time, and waits for every answer.
async fn publish_round(gw: &Gateway, app: &str, keys: impl Iterator<Item = String>, n: u64) {
    let keys: Vec<String> = keys.collect();
    for chunk in keys.chunks(50) {
        let mut requests = tokio::task::JoinSet::new();
        for key in chunk {
            let body = json!({"eventType": "payment.updated", "orderingKey": key, "payload": {"key": key, "n": n}});
            let request = gw.http.post(format!("{}/api/v1/app/{app}/msg", gw.url)).bearer_auth(TOKEN).json(&body);
            requests.spawn(async move { request.send().await.unwrap().status().as_u16() });
        }
        while let Some(status) = requests.join_next().await {
            assert_eq!(status.unwrap(), 202);
        }
    }
}

const RETRIES: &str = r#"{"delaysMs": [1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000,
    1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000]}"#;

#[tokio::test]
async fn every_key_arrives_in_order_through_random_failures() {
    const KEYS: u64 = 1_000;
    const EVENTS: u64 = 10;
    let gw = start_gateway(dev_config()).await;
    let (url, seen) = ordered_receiver(0.3, 42).await;
    let app = gw.app("merchant").await;
    let policy: Value = serde_json::from_str(RETRIES).unwrap();
    gw.endpoint(&app, json!({"url": url, "retryPolicy": policy})).await;
    // Event n of every key, then n + 1: the keys interleave as a busy platform's would.
    // Each round is acknowledged whole before the next starts, so each key's events are
    // published in order; within a round, the keys go 50 at a time.
    for n in 0..EVENTS {
        publish_round(&gw, &app, (0..KEYS).map(|k| format!("pay_{k}")), n).await;
    }
    advance_until(&gw, &seen, |s| s.delivered.values().map(Vec::len).sum::<usize>() as u64 == KEYS * EVENTS).await;
    {
        let seen = seen.lock().unwrap();
        let shown = &seen.out_of_order[..seen.out_of_order.len().min(10)];
        assert!(seen.out_of_order.is_empty(), "out of order: {shown:?}");
        assert_eq!(seen.delivered.len() as u64, KEYS);
        for (key, got) in &seen.delivered {
            assert_eq!(got, &(0..EVENTS).collect::<Vec<_>>(), "{key}");
        }
        assert!(seen.requests > KEYS * EVENTS, "some attempts failed and were retried: {}", seen.requests);
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_blocked_key_is_visible_and_skipping_its_head_lets_the_rest_go() {
    let (gw, rx, app, ep) = failing_endpoint(json!({})).await;
    assert_eq!(ep["ordering"], "none");
    let publish = |n: u64| {
        let body = json!({"eventType": "payment.updated", "orderingKey": "pay_7", "payload": {"key": "pay_7", "n": n}});
        gw.publish(&app, body)
    };
    let first = publish(0).await;
    let second = publish(1).await;
    let third = publish(2).await;
    let free = gw.publish(&app, json!({"eventType": "payment.updated", "payload": {"key": "none", "n": 0}})).await;
    let message = gw.ok("GET", &format!("/api/v1/app/{app}/msg/{first}"), None).await;
    assert_eq!(message["orderingKey"], "pay_7");
    // The head fails; the unordered message does not wait for it.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let got = rx.next().await;
        seen.push(serde_json::from_slice::<Value>(&got.body).unwrap()["key"].as_str().unwrap().to_owned());
    }
    seen.sort();
    assert_eq!(seen, vec!["none", "pay_7"]);
    gw.wait_attempts(&app, &first, 1).await;
    let lanes = gw.ok("GET", &format!("/api/v1/app/{app}/endpoint/main/ordering"), None).await;
    let lane = &lanes["data"][0];
    assert_eq!((lane["key"].as_str(), lane["waiting"].as_u64()), (Some("pay_7"), Some(2)), "{lanes}");
    assert_eq!((lane["head"]["msgId"].as_str(), lane["head"]["attempts"].as_u64()), (Some(first.as_str()), Some(1)));
    assert_eq!(lane["head"]["statusText"], "pending");
    let (status, _) = gw.destination(&app, &second).await;
    assert_eq!(status, 6, "waiting behind the head");
    assert!(!rx.gets_within(300).await, "nothing behind a failing head is attempted");

    // The operator skips the failing head: the next goes at once, and so on in order.
    rx.set_fallback(Answer::status(204));
    let skipped = gw.ok("POST", &format!("/api/v1/app/{app}/msg/{first}/endpoint/main/skip"), None).await;
    assert_eq!(skipped, json!({"status": 5, "statusText": "skipped"}));
    arrive_in_order(&rx, 1..=2).await;
    gw.wait_attempts(&app, &third, 1).await;
    let (status, error) = gw.call("POST", &format!("/api/v1/app/{app}/msg/{second}/endpoint/main/skip"), None).await;
    assert_eq!((status, error["code"].as_str()), (409, Some("conflict")), "{error}");
    let lanes = gw.ok("GET", &format!("/api/v1/app/{app}/endpoint/main/ordering"), None).await;
    assert_eq!(lanes["data"], json!([]), "nothing waits any more");
    let _ = free;

    // Bad keys are refused.
    for key in [json!(""), json!("pay 7"), json!("x".repeat(257))] {
        let body = json!({"eventType": "payment.updated", "orderingKey": key, "payload": {}});
        let (status, error) = gw.call("POST", &format!("/api/v1/app/{app}/msg"), Some(body)).await;
        assert_eq!((status, error["code"].as_str()), (422, Some("validation")), "{key}: {error}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_fifo_endpoint_orders_everything_sent_to_it() {
    let gw = start_gateway(dev_config()).await;
    let (url, seen) = ordered_receiver(0.3, 7).await;
    let app = gw.app("merchant").await;
    let policy: Value = serde_json::from_str(RETRIES).unwrap();
    let ep = gw.endpoint(&app, json!({"url": url, "ordering": "fifo", "retryPolicy": policy})).await;
    assert_eq!(ep["ordering"], "fifo");
    // No keys at all: the endpoint's one lane orders them; the receiver sees one "key".
    for n in 0..40 {
        gw.publish(&app, json!({"eventType": "payment.updated", "payload": {"key": "all", "n": n}})).await;
    }
    advance_until(&gw, &seen, |s| s.delivered.get("all").map_or(0, Vec::len) == 40).await;
    {
        let seen = seen.lock().unwrap();
        assert!(seen.out_of_order.is_empty(), "{:?}", seen.out_of_order);
        assert_eq!(seen.delivered["all"], (0..40).collect::<Vec<u64>>());
    }
    let patched = gw
        .ok(
            "PATCH",
            &format!("/api/v1/app/{app}/endpoint/{}", ep["id"].as_str().unwrap()),
            Some(json!({"ordering": "none"})),
        )
        .await;
    assert_eq!(patched["ordering"], "none");
    gw.stop().await;
}

#[tokio::test]
async fn a_lane_keeps_its_order_across_a_restart() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let clock = Arc::new(hookline_server::clock::ManualClock::new(T0));
    let gw = start_gateway_in(dev_config(), dir.clone(), clock.clone()).await;
    let rx = Receiver::start(Answer::status(500)).await;
    let app = gw.app("merchant").await;
    let policy: Value = serde_json::from_str(RETRIES).unwrap();
    gw.endpoint(&app, json!({"url": rx.url, "retryPolicy": policy})).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let body = json!({"eventType": "payment.updated", "orderingKey": "pay_1", "payload": {"n": n}});
        ids.push(gw.publish(&app, body).await);
    }
    rx.next().await;
    gw.wait_attempts(&app, &ids[0], 1).await;
    gw.stop().await;

    // After the restart the head is retried first (a second on), then the others in order.
    rx.set_fallback(Answer::status(204));
    let gw = start_gateway_in(dev_config(), dir, clock).await;
    gw.advance(1_000);
    arrive_in_order(&rx, 0..3).await;
    gw.stop().await;
}

/// Checks that the receiver's next requests carry `n` = each of `ns`, in order.
async fn arrive_in_order(rx: &Receiver, ns: impl Iterator<Item = u64>) {
    for n in ns {
        let got: Value = serde_json::from_slice(&rx.next().await.body).unwrap();
        assert_eq!(got["n"], n);
    }
}

/// A gateway with an application and its endpoint `main` (with `settings` added), whose
/// receiver answers 500 and which retries every second: the gateway, the receiver, the
/// application's id and the endpoint.
async fn failing_endpoint(settings: Value) -> (Gateway, Receiver, String, Value) {
    endpoint_answering(500, settings).await
}

/// As [`failing_endpoint`], with a receiver answering `status`.
async fn endpoint_answering(status: u16, settings: Value) -> (Gateway, Receiver, String, Value) {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(status)).await;
    let app = gw.app("merchant").await;
    let mut body =
        json!({"url": rx.url, "uid": "main", "retryPolicy": serde_json::from_str::<Value>(RETRIES).unwrap()});
    body.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
    let ep = gw.endpoint(&app, body).await;
    (gw, rx, app, ep)
}

/// A message published with `deliverAt` is not sent before then, ordered or not, and the
/// later messages of its key wait behind it (it was sent at once: promotion made any lane
/// head due now).
#[tokio::test]
async fn a_scheduled_message_holds_its_lane_until_its_time() {
    let (gw, rx, app, _) = endpoint_answering(204, json!({})).await;
    let later = hookline_server::wire::timestamp(T0 + 60_000);
    let scheduled =
        json!({"eventType": "payment.updated", "orderingKey": "pay_1", "deliverAt": later, "payload": {"n": 0}});
    let first = gw.publish(&app, scheduled).await;
    let second =
        gw.publish(&app, json!({"eventType": "payment.updated", "orderingKey": "pay_1", "payload": {"n": 1}})).await;
    assert_eq!(gw.destination(&app, &first).await, (1, Some(later.clone())), "due at its deliverAt");
    assert_eq!(gw.destination(&app, &second).await, (6, None), "waiting, with no time of its own");
    assert!(!rx.gets_within(500).await, "nothing before deliverAt");
    gw.advance(60_000);
    arrive_in_order(&rx, 0..2).await;
    gw.stop().await;
}

/// A message published while its endpoint is disabled keeps its place in its lane: after
/// a re-enable the lane goes on in publish order (it was skipped at once, leaving a hole:
/// the head, then the next message, and this one only by a recover, after both).
#[tokio::test]
async fn a_message_published_to_a_disabled_endpoint_keeps_its_place() {
    let (gw, rx, app, _) = failing_endpoint(json!({})).await;
    let publish = |n: u64| {
        let body = json!({"eventType": "payment.updated", "orderingKey": "pay_1", "payload": {"n": n}});
        gw.publish(&app, body)
    };
    let first = publish(0).await;
    rx.next().await;
    gw.wait_attempts(&app, &first, 1).await;
    let endpoint = format!("/api/v1/app/{app}/endpoint/main");
    gw.ok("PATCH", &endpoint, Some(json!({"disabled": true}))).await;
    let second = publish(1).await;
    assert_eq!(gw.destination(&app, &second).await.0, 6, "waiting behind the head, not skipped");
    gw.ok("PATCH", &endpoint, Some(json!({"disabled": false}))).await;
    rx.set_fallback(Answer::status(204));
    publish(2).await;
    gw.advance(1_000);
    arrive_in_order(&rx, 0..3).await;
    gw.stop().await;
}

/// A resend of an ordered delivery still open in its lane is refused (409): it would be
/// sent beside the copy under way, and the lane's next after whichever finished first. Once
/// it is done it can be resent, and waits its turn. A PUT that leaves `ordering` out (as
/// Svix's SDKs do) keeps the endpoint FIFO.
#[tokio::test]
async fn an_open_ordered_delivery_is_not_resent() {
    let (gw, rx, app, ep) = failing_endpoint(json!({"ordering": "fifo"})).await;
    let replaced =
        gw.ok("PUT", "/api/v1/app/merchant/endpoint/main", Some(json!({"url": rx.url, "uid": "main"}))).await;
    assert_eq!((replaced["ordering"].as_str(), &replaced["retryPolicy"]), (Some("fifo"), &ep["retryPolicy"]));
    let first = gw.publish(&app, json!({"eventType": "payment.updated", "payload": {"n": 0}})).await;
    let second = gw.publish(&app, json!({"eventType": "payment.updated", "payload": {"n": 1}})).await;
    rx.next().await;
    gw.wait_attempts(&app, &first, 1).await;
    for msg in [&first, &second] {
        let path = format!("/api/v1/app/{app}/msg/{msg}/endpoint/main/resend");
        let (status, error) = gw.call("POST", &path, None).await;
        assert_eq!((status, error["code"].as_str()), (409, Some("conflict")), "{error}");
    }
    rx.set_fallback(Answer::status(204));
    gw.advance(1_000);
    arrive_in_order(&rx, 0..2).await;
    gw.wait_attempts(&app, &second, 1).await;
    let (status, _) = gw.call("POST", &format!("/api/v1/app/{app}/msg/{first}/endpoint/main/resend"), None).await;
    assert_eq!(status, 202, "done: it can be resent");
    let got: Value = serde_json::from_slice(&rx.next().await.body).unwrap();
    assert_eq!(got["n"], 0);
    gw.stop().await;
}

/// A head skipped while this node kept it for a retry, then sent again and kept again for
/// its next retry, goes out once at that retry: the node held two copies of it, both
/// claimed under its token, and both were sent beside each other.
#[tokio::test]
async fn a_head_skipped_and_sent_again_while_held_goes_out_once() {
    // Claims reach two seconds ahead, so a retry a second on is kept in memory.
    let mut config = dev_config();
    config.cluster.poll_ms = 1_000;
    let gw = start_gateway(config).await;
    let rx = Receiver::start(Answer::status(500)).await;
    let app = gw.app("merchant").await;
    let policy: Value = serde_json::from_str(RETRIES).unwrap();
    gw.endpoint(&app, json!({"url": rx.url, "uid": "main", "retryPolicy": policy, "ordering": "fifo"})).await;
    let first = gw.publish(&app, json!({"eventType": "payment.updated", "payload": {"n": 0}})).await;
    rx.next().await;
    gw.wait_attempts(&app, &first, 1).await;
    // Kept in memory for its retry a second on; the next waits behind it.
    let second = gw.publish(&app, json!({"eventType": "payment.updated", "payload": {"n": 1}})).await;
    rx.then(Answer::status(204));
    gw.ok("POST", &format!("/api/v1/app/{app}/msg/{first}/endpoint/main/skip"), None).await;
    arrive_in_order(&rx, 1..2).await;
    gw.wait_attempts(&app, &second, 1).await;
    // Sent again: its lane is free, so it goes at once, fails, and is kept for a retry.
    let (status, _) = gw.call("POST", &format!("/api/v1/app/{app}/msg/{first}/endpoint/main/resend"), None).await;
    assert_eq!(status, 202);
    arrive_in_order(&rx, 0..1).await;
    gw.wait_attempts(&app, &first, 2).await;
    rx.set_fallback(Answer::status(204));
    gw.advance(1_000);
    arrive_in_order(&rx, 0..1).await;
    assert!(!rx.gets_within(500).await, "the head went out twice");
    gw.wait_attempts(&app, &first, 3).await;
    assert_eq!(gw.destination(&app, &first).await.0, 0, "delivered");
    gw.stop().await;
}

/// A lane whose head's message is gone (on PostgreSQL, a resend committed beside the
/// retention pass that deleted the message) moves on: the head is closed when the engine
/// finds it (it was dropped unrecorded, claimed again for ever, and held the lane).
#[tokio::test]
async fn a_lane_whose_head_lost_its_message_moves_on() {
    let (gw, rx, app, _) = failing_endpoint(json!({"ordering": "fifo"})).await;
    let first = gw.publish(&app, json!({"eventType": "payment.updated", "payload": {"n": 0}})).await;
    let second = gw.publish(&app, json!({"eventType": "payment.updated", "payload": {"n": 1}})).await;
    rx.next().await;
    gw.wait_attempts(&app, &first, 1).await;
    gw.forget("messages", &first).await;
    rx.set_fallback(Answer::status(204));
    gw.advance(1_000);
    arrive_in_order(&rx, 1..2).await;
    gw.wait_attempts(&app, &second, 1).await;
    let (status, _) = gw.call("GET", &format!("/api/v1/app/{app}/msg/{first}/endpoint"), None).await;
    assert_eq!(status, 404);
    gw.stop().await;
}

/// On PostgreSQL, a lane whose head was never made due (its node died between the commit
/// that ended the head before and that step) moves on as soon as another node sees a node
/// gone, not at the leader's next retention pass (minutes away when the leader is the one
/// gone). SQLite runs one node.
#[tokio::test]
async fn a_lane_a_gone_node_left_stalled_moves_on_when_it_is_seen_gone() {
    if std::env::var("HOOKLINE_TEST_BACKEND").as_deref() != Ok("postgres") {
        return;
    }
    let gw = start_gateway(dev_config()).await;
    let rx = stall_a_lane(&gw).await;
    rx.set_fallback(Answer::status(200));
    let other = gw.another_node().await;
    let gone = other
        .register_node("gone", hookline_server::clock::Clock::now_ms(gw.clock.as_ref()), 1_000_000)
        .await
        .unwrap()
        .token;
    // Counted alive at this node's next renewal (a third of a lease on), then gone.
    gw.advance(11_000);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    other.retire_node(gone).await.unwrap();
    gw.advance(11_000);
    let got = rx.next().await;
    assert_eq!(serde_json::from_slice::<Value>(&got.body).unwrap()["n"], 2);
    gw.stop().await;
}

/// A lane a crash left stalled (between the commit that ended its head and making the next
/// due) moves on when a node starts, not only once the crashed node's leader lease has run
/// out for the leader's sweep (up to three retention intervals on).
#[tokio::test]
async fn a_lane_a_crash_left_stalled_moves_on_at_the_next_start() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let clock = Arc::new(hookline_server::clock::ManualClock::new(T0));
    let gw = start_gateway_in(dev_config(), dir.clone(), clock.clone()).await;
    let rx = stall_a_lane(&gw).await;
    let other = gw.another_node().await;
    gw.stop().await;
    // The node that crashed holds the leader lease still.
    let now = hookline_server::clock::Clock::now_ms(clock.as_ref());
    let crashed = other.register_node("crashed", now, 30_000).await.unwrap().token;
    assert!(other.lead(crashed, now, 180_000).await.unwrap());
    rx.set_fallback(Answer::status(200));
    let gw = start_gateway_in(dev_config(), dir, clock).await;
    let got = rx.next().await;
    assert_eq!(serde_json::from_slice::<Value>(&got.body).unwrap()["n"], 2);
    gw.stop().await;
}

/// A lane as a node that died between two steps leaves it: its first message ended (here
/// behind the gateway's back, as delivered) and the second still waiting, none due. The
/// receiver answers 500 until told otherwise; the second's payload is `{"n": 2}`.
async fn stall_a_lane(gw: &Gateway) -> Receiver {
    let rx = Receiver::start(Answer::status(500)).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url, "retryPolicy": {"delaysMs": [3_600_000]}})).await;
    let first = gw.publish(&app, json!({"eventType": "a", "orderingKey": "pay_1", "payload": {"n": 1}})).await;
    rx.next().await;
    gw.wait_attempts(&app, &first, 1).await;
    let second = gw.publish(&app, json!({"eventType": "a", "orderingKey": "pay_1", "payload": {"n": 2}})).await;
    assert_eq!(gw.destination(&app, &second).await.0, 6, "waiting behind the first");
    gw.behind_its_back("UPDATE deliveries SET state = 0, next_at = NULL WHERE msg_id = $1", &first).await;
    rx
}
