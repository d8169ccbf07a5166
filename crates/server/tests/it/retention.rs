//! Retention and the bound on held work, on a manual clock: old messages go (with their
//! deliveries and attempts), recent ones and those with an open delivery stay, a message's
//! own retention is honoured, and a backlog is taken into memory only `cluster.held_max`
//! at a time.

use crate::harness::*;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::Semaphore;

const DAY_MS: i64 = 24 * 3_600_000;

async fn wait_gone(gw: &Gateway, app: &str, msg: &str) {
    let (path, what) = (format!("/api/v1/app/{app}/msg/{msg}"), format!("message {msg} outlived its retention"));
    eventually(&what, async || {
        let (status, _) = gw.call("GET", &path, None).await;
        done_or(status == 404, format!("status {status}"))
    })
    .await;
}

#[tokio::test]
async fn messages_past_retention_go_and_recent_ones_stay() {
    let mut config = dev_config();
    config.retention.days = 30;
    config.retention.batch_max = 7;
    let gw = start_gateway(config).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url})).await;
    let mut old = Vec::new();
    for n in 0..20 {
        old.push(gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {"n": n}})).await);
    }
    for msg in &old {
        gw.wait_attempts(&app, msg, 1).await;
    }
    // As old, but its delivery is still open (scheduled for later than the retention).
    let later = hookline_server::wire::timestamp(T0 + 60 * DAY_MS);
    let scheduled = gw
        .publish(&app, json!({"eventType": "payment.succeeded", "payload": {"n": "later"}, "deliverAt": later}))
        .await;
    gw.advance(29 * DAY_MS);
    let recent = gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {"n": "recent"}})).await;
    let short = gw
        .publish(&app, json!({"eventType": "payment.succeeded", "payload": {"n": "short"}, "payloadRetentionHours": 1}))
        .await;
    gw.wait_attempts(&app, &recent, 1).await;
    gw.wait_attempts(&app, &short, 1).await;
    gw.advance(DAY_MS + 1);
    for msg in old.iter().chain([&short]) {
        wait_gone(&gw, &app, msg).await;
        let (status, _) = gw.call("GET", &format!("/api/v1/app/{app}/attempt/msg/{msg}"), None).await;
        assert_eq!(status, 404, "attempts go with their message");
    }
    let (status, _) = gw.call("GET", &format!("/api/v1/app/{app}/msg/{recent}"), None).await;
    assert_eq!(status, 200, "a message inside the window stays");
    assert_eq!(gw.attempts_of(&app, &recent).await.len(), 1, "with its attempts");
    let (status, _) = gw.call("GET", &format!("/api/v1/app/{app}/msg/{scheduled}"), None).await;
    assert_eq!(status, 200, "a message whose delivery is still open stays, whatever its age");
    // Publishing goes on while retention runs.
    gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {"n": "after"}})).await;
}

#[tokio::test]
async fn a_backlog_is_held_in_memory_only_held_max_at_a_time() {
    let mut config = dev_config();
    config.cluster.held_max = 40;
    config.cluster.claim_batch_max = 10;
    let gw = start_gateway(config).await;
    let gate = Arc::new(Semaphore::new(0));
    let rx = Receiver::start(Answer { gate: Some(gate.clone()), ..Answer::status(200) }).await;
    let app = gw.app("merchant").await;
    gw.endpoint(&app, json!({"url": rx.url})).await;
    // Scheduled an hour ahead: committed unclaimed, so the claimer takes them when due.
    let later = hookline_server::wire::timestamp(T0 + 3_600_000);
    for n in 0..200 {
        gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {"n": n}, "deliverAt": later})).await;
    }
    assert!(!rx.gets_within(300).await, "nothing before its time");
    gw.advance(3_600_000);
    for _ in 0..40 {
        rx.next().await;
    }
    assert!(!rx.gets_within(500).await, "more than held_max taken into memory");
    gate.add_permits(10_000);
    for _ in 40..200 {
        rx.next().await;
    }
}

/// Deleting an application answers at once; its messages, deliveries and attempts go after
/// the answer, a step at a time. A deletion whose walk was cut short (marked behind the
/// gateway's back here, as a crash just after the deletion's commit leaves it) is finished
/// by the retention pass.
#[tokio::test]
async fn a_deleted_applications_messages_go_after_it() {
    let mut config = dev_config();
    config.retention.interval_ms = 60_000;
    let gw = start_gateway(config).await;
    let rx = Receiver::start(Answer::status(200)).await;
    let left = async |app: &str| {
        let messages = gw.count("SELECT count(*) FROM messages WHERE app_id = $1", app).await;
        let attempts = gw.count("SELECT count(*) FROM attempts WHERE app_id = $1", app).await;
        let marked = gw.count("SELECT count(*) FROM app_deletions WHERE app_id = $1", app).await;
        (messages, attempts, marked)
    };
    let mut apps = Vec::new();
    for uid in ["deleted", "cut-short"] {
        let app = gw.app(uid).await;
        gw.endpoint(&app, json!({"url": rx.url})).await;
        for n in 0..3 {
            let msg = gw.publish(&app, json!({"eventType": "payment.succeeded", "payload": {"n": n}})).await;
            gw.wait_attempts(&app, &msg, 1).await;
        }
        assert_eq!(left(&app).await, (3, 3, 0));
        apps.push(app);
    }

    assert_eq!(gw.call("DELETE", &format!("/api/v1/app/{}", apps[0]), None).await.0, 204);
    eventually("the deleted application's rows go", async || {
        let now = left(&apps[0]).await;
        done_or(now == (0, 0, 0), format!("{now:?} messages, attempts, marks"))
    })
    .await;

    gw.behind_its_back("DELETE FROM apps WHERE id = $1", &apps[1]).await;
    gw.behind_its_back("INSERT INTO app_deletions (app_id) VALUES ($1)", &apps[1]).await;
    assert_eq!(left(&apps[1]).await, (3, 3, 1));
    // Finished by a pass that found it marked at the pass before too.
    eventually("the retention pass finishes the deletion", async || {
        gw.advance(60_000);
        let now = left(&apps[1]).await;
        done_or(now == (0, 0, 0), format!("{now:?} messages, attempts, marks"))
    })
    .await;
    gw.stop().await;
}
