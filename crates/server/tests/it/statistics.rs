//! Statistics kept by Hookline: attempts per endpoint and per minute, read back as Svix's
//! endpoint stats and as time series; an inbound source's requests and forwarding.

use crate::harness::*;
use crate::inbound::{post_in, source, stripe_request};
use serde_json::{json, Value};

const MINUTE: i64 = 60_000;

fn sum(series: &Value, field: &str) -> u64 {
    series["data"][field].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum()
}

/// Indexes of the points with any count in `field`.
fn busy_points(series: &Value, field: &str) -> Vec<usize> {
    let points = series["data"][field].as_array().unwrap();
    points.iter().enumerate().filter(|(_, n)| n.as_u64() != Some(0)).map(|(i, _)| i).collect()
}

#[tokio::test]
async fn attempts_are_counted_per_endpoint_and_read_as_stats_and_series() {
    let gw = start_gateway(dev_config()).await;
    let good_rx = Receiver::start(Answer::status(200)).await;
    let bad_rx = Receiver::start(Answer::status(500)).await;
    let app = gw.app("merchant").await;
    let good = gw.endpoint(&app, json!({"url": good_rx.url, "uid": "good"})).await["id"].as_str().unwrap().to_owned();
    let policy = json!({"delaysMs": [3_600_000]});
    let bad =
        gw.endpoint(&app, json!({"url": bad_rx.url, "retryPolicy": policy})).await["id"].as_str().unwrap().to_owned();

    // Three messages now, two more ten minutes later: each reaches both endpoints once.
    let mut messages = Vec::new();
    for n in 0..5 {
        if n == 3 {
            gw.advance(10 * MINUTE);
        }
        let msg = gw.publish(&app, json!({"eventType": "charge.succeeded", "payload": {"n": n}})).await;
        good_rx.next().await;
        bad_rx.next().await;
        gw.wait_attempts(&app, &msg, 2).await;
        messages.push(msg);
    }

    let attempt_stats = |ep: &str| format!("/api/v1/app/{app}/endpoint/{ep}/attempt-stats");
    let good_stats = gw.ok("GET", &attempt_stats("good"), None).await;
    assert_eq!((good_stats["success"].as_u64(), good_stats["fail"].as_u64()), (Some(5), Some(0)), "{good_stats}");
    let p50 = good_stats["latencyP50Ms"].as_u64().expect("latency with attempts");
    assert!([50, 100, 250, 500, 1000, 2500, 10000].contains(&p50), "a histogram bound: {p50}");
    assert!(good_stats["latencyP99Ms"].as_u64().unwrap() >= p50);
    let bad_stats = gw.ok("GET", &attempt_stats(&bad), None).await;
    assert_eq!((bad_stats["success"].as_u64(), bad_stats["fail"].as_u64()), (Some(0), Some(5)), "{bad_stats}");

    // Svix's delivery counts: the failing endpoint's deliveries wait for their retry.
    let stats = |ep: &str| format!("/api/v1/app/{app}/endpoint/{ep}/stats");
    let good_counts = gw.ok("GET", &stats(&good), None).await;
    assert_eq!(good_counts, json!({"success": 5, "pending": 0, "sending": 0, "fail": 0, "canceled": 0, "skipped": 0}));
    let bad_counts = gw.ok("GET", &stats(&bad), None).await;
    assert_eq!((bad_counts["pending"].as_u64(), bad_counts["success"].as_u64()), (Some(5), Some(0)), "{bad_counts}");
    let later = gw.ok("GET", &format!("{}?since=2026-01-01T00:05:00Z", stats(&bad)), None).await;
    assert_eq!(later["pending"].as_u64(), Some(2), "only messages created in the range: {later}");

    // The application's series in five-minute points over the first half hour: the first
    // three messages in point 0, the last two in point 2 (ten minutes later).
    let series_path = "/api/v1/stats/app/merchant/attempt?period=FiveMinutes\
                       &startDate=2026-01-01T00:00:00Z&endDate=2026-01-01T00:29:59Z";
    let series = gw.ok("GET", series_path, None).await;
    assert_eq!(series["period"], "FiveMinutes");
    assert_eq!(series["startDate"], "2026-01-01T00:00:00.000Z");
    assert_eq!(series["endDate"], "2026-01-01T00:30:00.000Z");
    assert_eq!(series["data"]["successCount"].as_array().unwrap().len(), 6);
    assert_eq!((sum(&series, "successCount"), sum(&series, "failureCount")), (5, 5));
    assert_eq!(busy_points(&series, "successCount"), vec![0, 2]);
    assert_eq!(series["data"]["successCount"][0], 3);
    assert_eq!(series["data"]["latencyP50Ms"][1], Value::Null, "no attempts, no latency");
    assert!(series["data"]["latencyP50Ms"][0].is_u64());
    let only_bad = gw.ok("GET", &format!("{series_path}&endpointId={bad}"), None).await;
    assert_eq!((sum(&only_bad, "successCount"), sum(&only_bad, "failureCount")), (0, 5));
    let daily = gw.ok("GET", "/api/v1/stats/app/merchant/attempt?period=OneDay", None).await;
    assert_eq!((sum(&daily, "successCount"), sum(&daily, "failureCount")), (5, 5), "{daily}");

    // An application's token reads its own statistics, and only those.
    let token = gw.ok("POST", &format!("/api/v1/app/{app}/token"), None).await["token"].as_str().unwrap().to_owned();
    let other = gw.app("other").await;
    let as_app = |path: String| gw.http.get(format!("{}{path}", gw.url)).bearer_auth(&token).send();
    assert_eq!(as_app("/api/v1/stats/app/merchant/attempt".into()).await.unwrap().status(), 200);
    assert_eq!(as_app(format!("/api/v1/stats/app/{other}/attempt")).await.unwrap().status(), 404);

    // A range longer than 2016 points keeps its last 2016; one ending before it starts is
    // empty; an unknown period or a time that is not one is refused with a JSON error.
    let long = "/api/v1/stats/app/merchant/attempt?period=FiveMinutes&startDate=2025-01-01T00:00:00Z";
    let long = gw.ok("GET", long, None).await;
    assert_eq!(long["data"]["successCount"].as_array().unwrap().len(), 2016);
    assert_eq!((sum(&long, "successCount"), long["endDate"].as_str()), (5, Some("2026-01-01T00:15:00.000Z")));
    let backwards = "startDate=2026-01-02T00:00:00Z&endDate=2026-01-01T00:00:00Z";
    let empty = gw.ok("GET", &format!("/api/v1/stats/app/merchant/attempt?{backwards}"), None).await;
    assert_eq!(empty["data"]["successCount"], json!([]));
    let stats_backwards = format!("{}?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", stats(&good));
    assert_eq!(gw.ok("GET", &stats_backwards, None).await["success"], 0);
    for query in ["period=Weekly", "startDate=yesterday"] {
        let (status, error) = gw.call("GET", &format!("/api/v1/stats/app/merchant/attempt?{query}"), None).await;
        assert_eq!((status, error["code"].as_str()), (400, Some("bad_request")), "{query}: {error}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn counts_outlive_the_process_and_the_minute_detail() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let clock = std::sync::Arc::new(hookline_server::clock::ManualClock::new(T0));
    let mut config = dev_config();
    config.retention.interval_ms = 60_000;
    let gw = start_gateway_in(config.clone(), dir.clone(), clock.clone()).await;
    let rx = Receiver::start(Answer::status(204)).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url})).await;
    gw.advance(30 * MINUTE);
    let msg = gw.publish(&app, json!({"eventType": "charge.succeeded", "payload": {}})).await;
    rx.next().await;
    gw.wait_attempts(&app, &msg, 1).await;
    // Counts written at shutdown are read after a restart, in the minute they happened.
    gw.stop().await;
    let gw = start_gateway_in(config, dir, clock).await;
    let fine = "/api/v1/stats/app/merchant/attempt?period=FiveMinutes&startDate=2026-01-01T00:00:00Z\
                &endDate=2026-01-01T00:59:59Z";
    let series = gw.ok("GET", fine, None).await;
    assert_eq!((sum(&series, "successCount"), busy_points(&series, "successCount")), (1, vec![6]));
    // Two days on, the leader rolls the minute up into its hour: the count stays, at the
    // hour's start.
    gw.advance(2 * 86_400_000);
    eventually("the minute was never rolled up into its hour", async || {
        let series = gw.ok("GET", fine, None).await;
        assert_eq!(sum(&series, "successCount"), 1, "{series}");
        done_or(busy_points(&series, "successCount") == vec![0], &series)
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn a_source_counts_requests_accepted_refused_and_duplicate() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url})).await;
    let src = source(&gw, &app, "stripe", json!(["whsec_live"]), json!({})).await;
    let src_id = src["id"].as_str().unwrap();
    let path = format!("/in/{src_id}");
    let body = r#"{"id":"evt_1","type":"charge.succeeded"}"#;
    let signed = stripe_request("whsec_live", body, T0 / 1000);
    assert_eq!(post_in(&gw, &path, &signed, body).await.1["status"], "accepted");
    assert_eq!(post_in(&gw, &path, &signed, body).await.1["status"], "duplicate");
    let forged = stripe_request("whsec_wrong", body, T0 / 1000);
    assert_eq!(post_in(&gw, &path, &forged, body).await.0, 401);
    rx.next().await;
    let events = gw.ok("GET", &format!("/api/v1/source/{src_id}/event"), None).await;
    let msg = events["data"][0]["id"].as_str().unwrap().to_owned();
    gw.wait_attempts(&app, &msg, 1).await;

    let series = gw.ok("GET", &format!("/api/v1/stats/source/{src_id}?period=OneDay"), None).await;
    let total =
        |field: &str| series["data"][field].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum::<u64>();
    assert_eq!((total("accepted"), total("duplicate"), total("refused")), (1, 1, 1), "{series}");
    let forwarded = json!({"data": series["data"]["forwarded"]});
    assert_eq!((sum(&forwarded, "successCount"), sum(&forwarded, "failureCount")), (1, 0), "{series}");
    gw.stop().await;
}

/// Deliveries behind an earlier message of their ordering key count as pending in the
/// endpoint's stats (they were in no field: a failing ordered endpoint with a queue showed
/// one pending delivery).
#[tokio::test]
async fn deliveries_waiting_behind_their_ordering_key_count_as_pending() {
    let gw = start_gateway(dev_config()).await;
    let rx = Receiver::start(Answer::status(500)).await;
    let app = gw.app("merchant").await;
    let policy = json!({"delaysMs": [3_600_000]});
    let ep = gw.endpoint(&app, json!({"url": rx.url, "ordering": "fifo", "retryPolicy": policy})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = gw.publish(&app, json!({"eventType": "charge.succeeded", "orderingKey": "pay_1", "payload": {}})).await;
    rx.next().await;
    gw.wait_attempts(&app, &first, 1).await;
    for n in 0..2 {
        gw.publish(&app, json!({"eventType": "charge.succeeded", "orderingKey": "pay_1", "payload": {"n": n}})).await;
    }
    let counts = gw.ok("GET", &format!("/api/v1/app/{app}/endpoint/{ep}/stats"), None).await;
    assert_eq!(counts, json!({"success": 0, "pending": 3, "sending": 0, "fail": 0, "canceled": 0, "skipped": 0}));
    gw.stop().await;
}
