//! The conformance suite every `Store` backend must pass. Backends call
//! [`run_all`] from their own tests with a fresh, empty store.

use crate::*;
use hookline_core::delivery::{DeliveryState, Trigger};
use hookline_core::id::{new_id, prefix};
use std::sync::atomic::{AtomicU8, Ordering};

static SEQ: AtomicU8 = AtomicU8::new(0);

fn id(kind: &str, now: UnixMs) -> String {
    new_id(kind, now, [SEQ.fetch_add(1, Ordering::Relaxed); 10])
}

pub fn app(now: UnixMs, uid: Option<&str>) -> App {
    App {
        id: id(prefix::APP, now),
        uid: uid.map(str::to_owned),
        name: "Merchant".into(),
        throttle_rate: None,
        metadata: Default::default(),
        retry_policy: None,
        secret: "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        created_at: now,
        updated_at: now,
        alert_email: None,
        previous_secrets: Vec::new(),
    }
}

pub fn endpoint(app_id: &str, now: UnixMs) -> Endpoint {
    Endpoint {
        id: id(prefix::ENDPOINT, now),
        app_id: app_id.into(),
        uid: None,
        url: "https://merchant.example/hooks".into(),
        description: String::new(),
        disabled: false,
        event_types: None,
        channels: None,
        throttle_rate: None,
        metadata: Default::default(),
        headers: Default::default(),
        secrets: vec![StoredSecret { text: "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(), expires_at: None }],
        signature_scheme: Default::default(),
        retry_policy: None,
        created_at: now,
        updated_at: now,
        fail_since: None,
        fifo: false,
    }
}

/// When and how `failed_attempt` asks for a retry.
pub struct Retry {
    pub claim: i64,
    pub keep_claim: bool,
    pub at: UnixMs,
    pub next_at: UnixMs,
}

/// A 503 answered to the first delivery of `p` (to an endpoint at `url`), to be retried.
pub fn failed_attempt(p: &Publish, url: &str, retry: Retry) -> AttemptRecord {
    let delivery = &p.deliveries[0];
    AttemptRecord {
        attempt: Attempt {
            id: id(prefix::ATTEMPT, retry.at),
            msg_id: p.message.id.clone(),
            app_id: p.message.app_id.clone(),
            delivery_id: delivery.id.clone(),
            endpoint_id: delivery.endpoint_id.clone(),
            url: url.into(),
            status_code: 503,
            response: String::new(),
            duration_ms: 3,
            error_class: Some("http_status".into()),
            state: DeliveryState::Pending,
            trigger: Trigger::Scheduled,
            created_at: retry.at,
        },
        state: DeliveryState::Pending,
        next_at: Some(retry.next_at),
        first_attempt_at: retry.at,
        disable_endpoint: false,
        disable_after_ms: 0,
        claim: retry.claim,
        keep_claim: retry.keep_claim,
    }
}

pub fn publish(app_id: &str, endpoint_ids: &[&str], event_id: Option<&str>, now: UnixMs) -> Publish {
    let msg_id = id(prefix::MESSAGE, now);
    let message = Message {
        id: msg_id,
        app_id: app_id.into(),
        event_id: event_id.map(str::to_owned),
        event_type: "payment.succeeded".into(),
        payload: Bytes::from_static(b"{\"amount\": 1000,  \"currency\":\"EUR\"}"),
        channels: None,
        tags: None,
        callback_url: None,
        deliver_at: None,
        source_id: None,
        headers: None,
        retain_until: None,
        ordering_key: None,
        created_at: now,
    };
    let deliveries = endpoint_ids
        .iter()
        .map(|ep| Delivery::pending(id(prefix::DELIVERY, now), &message, Some((*ep).into()), now, now))
        .collect();
    Publish {
        message: std::sync::Arc::new(message),
        deliveries,
        idempotency: None,
        dedupe: None,
        claim: None,
        unclaimed: Vec::new(),
    }
}

pub fn first_page(limit: usize) -> Page {
    Page { limit, ..Default::default() }
}

/// A lease long enough for every check but the lease checks themselves.
const LONG_LEASE_MS: u64 = 1_000_000_000_000;

/// Runs every check against `store`, which must start empty.
pub async fn run_all(store: &dyn Store) {
    store.ping().await.unwrap();
    apps_crud_and_uid_lookup(store).await;
    pagination_walks_every_item_once(store).await;
    endpoints_belong_to_their_app(store).await;
    let node = store.register_node("conformance", 1, LONG_LEASE_MS).await.unwrap().token;
    publish_commits_message_and_deliveries(store, node).await;
    attempts_move_deliveries_through_states(store, node).await;
    resend_and_recover_restart_deliveries(store, node).await;
    a_recover_walks_the_endpoint_in_steps(store).await;
    endpoint_health_and_automatic_disabling(store, node).await;
    attempts_recorded_together_keep_the_failure_clock(store, node).await;
    statistics_add_up_roll_up_and_expire(store).await;
    ordering_lanes_hold_later_deliveries_back(store, node).await;
    the_lane_sweep_walks_the_lanes_in_steps(store, node).await;
    idempotent_answers_expire(store).await;
    deleting_an_app_removes_everything(store, node).await;
    sources_and_inbound_dedupe(store).await;
    tokens_belong_to_an_app_or_to_the_admin(store).await;
    dashboard_sessions_links_and_failing_endpoints(store).await;
    retention_deletes_old_messages_in_batches(store).await;
    a_write_failing_halfway_leaves_nothing_and_spares_its_batch(store).await;
    claims_are_leased_fenced_and_taken_over(store).await;
    a_fan_out_is_read_attempted_and_taken_over_delivery_by_delivery(store).await;
    a_lane_behind_defers_its_due_work(store).await;
    stray_claims_are_listed_and_freed(store).await;
    alert_emails_wait_durably_one_per_endpoint_state(store).await;
    alert_digests_add_up_to_one_summary_per_window(store).await;
}

/// Every open delivery claimable now (claims them for `node`).
async fn claim_all(store: &dyn Store, node: i64, now: UnixMs) -> Vec<Delivery> {
    claim(store, node, UnixMs::MAX / 2, now, 100_000).await
}

/// The deliveries a claim with no lane behind takes.
async fn claim(store: &dyn Store, node: i64, horizon: UnixMs, now: UnixMs, limit: usize) -> Vec<Delivery> {
    let claim = ClaimDue { token: node, horizon, now, window: limit, limit, behind: Vec::new() };
    let claimed = store.claim_due(claim).await.unwrap();
    assert_eq!(claimed.deferred, 0, "nothing is deferred when no lane is behind");
    claimed.deliveries
}

async fn claims_are_leased_fenced_and_taken_over(store: &dyn Store) {
    let a = store.create_app(app(20_000, None)).await.unwrap();
    let ep = store.create_endpoint(endpoint(&a.id, 20_000)).await.unwrap();
    let node = store.register_node("node-a", 20_000, 30_000).await.unwrap();
    assert_eq!(node.lease_until, 50_000);
    // Open deliveries the earlier checks left (free again on a single-node store, where a
    // registration voids the earlier ones) are swept up first.
    claim_all(store, node.token, 20_000).await;
    let open = store.count_open_deliveries().await.unwrap();
    // In an app of their own, so the claim checks below see only their own deliveries.
    let other = store.create_app(app(20_000, None)).await.unwrap();
    let other_ep = store.create_endpoint(endpoint(&other.id, 20_000)).await.unwrap();
    let counted = publish(&other.id, &[&other_ep.id, &other_ep.id], None, 20_000);
    store.publish(counted).await.unwrap();
    assert_eq!(store.count_open_deliveries().await.unwrap(), open + 2, "open deliveries are counted, claimed or not");
    claim_all(store, node.token, 20_000).await;
    let now_due = publish(&a.id, &[&ep.id], None, 20_000);
    let mut later = publish(&a.id, &[&ep.id], None, 20_000);
    later.deliveries[0].next_at = Some(45_000);
    let mut held = publish(&a.id, &[&ep.id], None, 20_000);
    held.claim = Some(node.token);
    // Claimed at commit but for one endpoint and the callback URL (their lanes are full at
    // the node): those deliveries are deferred in the store, and are no due work for any
    // claim. On SQLite they must not go into a fan-out row.
    let full = store.create_endpoint(endpoint(&a.id, 20_000)).await.unwrap();
    let mut split = publish(&a.id, &[&ep.id, &full.id], None, 20_000);
    split.deliveries.push(Delivery::pending(id(prefix::DELIVERY, 20_000), &split.message, None, 20_000, 20_000));
    split.claim = Some(node.token);
    split.unclaimed = vec![Some(full.id.clone()), None];
    for p in [&now_due, &later, &held, &split] {
        store.publish(p.clone()).await.unwrap();
    }
    let ids = |found: &[Delivery]| {
        let mut ids: Vec<String> = found.iter().filter(|d| d.app_id == a.id).map(|d| d.id.clone()).collect();
        ids.sort();
        ids
    };
    let claimed = claim(store, node.token, 30_000, 20_000, 10).await;
    assert_eq!(ids(&claimed), vec![now_due.deliveries[0].id.clone()], "due within the horizon, not yet held");
    assert!(claim(store, node.token, 30_000, 20_000, 10).await.is_empty(), "a claim holds");
    let mut lanes: Vec<DeferredLane> =
        store.deferred_lanes(None, 1_000).await.unwrap().into_iter().filter(|l| l.app_id == a.id).collect();
    lanes.sort_by(|x, y| x.endpoint_id.cmp(&y.endpoint_id));
    let lane = |endpoint_id: Option<&String>| DeferredLane { app_id: a.id.clone(), endpoint_id: endpoint_id.cloned() };
    assert_eq!(lanes, vec![lane(None), lane(Some(&full.id))], "the split publish's deferred lanes");
    let all = store.deferred_lanes(None, 1_000).await.unwrap();
    let mut walked: Vec<DeferredLane> = Vec::new();
    while let Some(next) = store.deferred_lanes(walked.last().cloned(), 1).await.unwrap().pop() {
        walked.push(next);
    }
    assert_eq!(walked, all, "a walk one lane at a time finds every lane, in order");

    let record = |claim: i64, keep_claim: bool, next_at: i64| {
        failed_attempt(&now_due, &ep.url, Retry { claim, keep_claim, at: 20_001, next_at })
    };
    assert!(
        !store.record_attempt(record(node.token + 1_000, false, 21_000)).await.unwrap().applied,
        "fenced: not its claim"
    );
    let d = store.get_delivery(&now_due.message.id, &now_due.deliveries[0].id).await.unwrap();
    assert_eq!((d.attempts, d.next_at), (0, Some(20_000)), "a fenced write leaves the delivery as it was");
    assert!(store.record_attempt(record(node.token, true, 21_000)).await.unwrap().applied);
    assert!(claim(store, node.token, 30_000, 20_001, 10).await.is_empty(), "kept claims stay held");
    assert!(store.record_attempt(record(node.token, false, 22_000)).await.unwrap().applied);
    let again = claim(store, node.token, 30_000, 20_002, 10).await;
    assert_eq!(ids(&again), vec![now_due.deliveries[0].id.clone()], "a released retry is claimable when due");

    assert!(store.renew_node(node.token, 40_000, 30_000).await.unwrap());
    assert!(!store.renew_node(node.token, 70_001, 30_000).await.unwrap(), "an expired lease is not renewed");
    assert!(claim(store, node.token, 100_000, 70_001, 10).await.is_empty(), "no claims on a dead lease");
    let dead = store.claim_deferred(node.token, lane(Some(&full.id)), 70_001, 10).await.unwrap();
    assert!(dead.is_empty(), "no claims of deferred deliveries on a dead lease");
    let next = store.register_node("node-b", 70_001, 30_000).await.unwrap();
    assert_ne!(next.token, node.token, "every registration has its own token");
    let taken = ids(&claim(store, next.token, 100_000, 70_001, 100).await);
    let mut expected: Vec<String> =
        [&now_due, &later, &held].iter().flat_map(|p| &p.deliveries).map(|d| d.id.clone()).collect();
    expected.push(split.deliveries[0].id.clone());
    expected.sort();
    assert_eq!(taken, expected, "the claims of an expired lease are taken over");
    // A deferred delivery is nobody's claim: the next node takes it from its lane.
    for (endpoint_id, delivery) in [(Some(&full.id), &split.deliveries[1]), (None, &split.deliveries[2])] {
        let taken = store.claim_deferred(next.token, lane(endpoint_id), 70_001, 10).await.unwrap();
        assert_eq!(ids(&taken), vec![delivery.id.clone()], "the lane's deferred delivery");
        assert_eq!(taken[0].state, DeliveryState::Pending);
    }
    assert!(store.deferred_lanes(None, 1_000).await.unwrap().iter().all(|l| l.app_id != a.id), "no deferred lane left");
    store.retire_node(next.token).await.unwrap();
    let last = store.register_node("node-c", 70_002, 30_000).await.unwrap();
    assert_eq!(ids(&claim_all(store, last.token, 70_002).await).len(), 6, "a retired node's claims are free at once");

    assert!(store.lead(last.token, 70_002, 10_000).await.unwrap());
    assert!(store.lead(last.token, 75_000, 10_000).await.unwrap(), "the leader keeps its lease");
    let rival = store.register_node("node-d", 75_000, 30_000).await.unwrap();
    assert!(!store.lead(rival.token, 75_001, 10_000).await.unwrap(), "one leader while its lease lasts");
    assert!(store.lead(rival.token, 85_001, 10_000).await.unwrap(), "an expired leader is replaced");
    // Live nodes share rate limits. A single-node store counts only its latest registration.
    let live = store.live_nodes(85_001).await.unwrap();
    assert!(live >= 1, "the rival is live");
    store.retire_node(rival.token).await.unwrap();
    assert_eq!(store.live_nodes(85_001).await.unwrap(), live - 1, "a retired node is not live");
    assert_eq!(store.live_nodes(UnixMs::MAX / 2).await.unwrap(), 0, "leases expire");
    delete_app(store, &a.id).await.unwrap();
}

/// A node's claims on deliveries it no longer holds in memory can be listed (its open
/// claims overdue, earliest first) and freed; nobody else's, and no closed delivery.
async fn stray_claims_are_listed_and_freed(store: &dyn Store) {
    const AT: UnixMs = 90_000_000;
    let a = store.create_app(app(AT, None)).await.unwrap();
    let ep = store.create_endpoint(endpoint(&a.id, AT)).await.unwrap();
    // Another node, gone since (its lease retired): its claims are anybody's.
    let someone_else = store.register_node("gone", AT, LONG_LEASE_MS).await.unwrap().token;
    let node = store.register_node("strays", AT, LONG_LEASE_MS).await.unwrap().token;
    store.retire_node(someone_else).await.unwrap();
    // One delivery each (a fan-out row on SQLite is no delivery row yet), claimed under
    // `claim` and due at `next_at`.
    let publish_at = |next_at: UnixMs, claim: Option<i64>| {
        let mut p = publish(&a.id, &[&ep.id], None, AT);
        p.deliveries[0].next_at = Some(next_at);
        p.claim = claim;
        p
    };
    let earliest = publish_at(0, Some(node));
    let second = publish_at(AT + 2, Some(node));
    let third = publish_at(AT + 3, Some(node));
    let others = publish_at(AT + 1, Some(someone_else));
    let unclaimed = publish_at(AT + 4, None);
    let done = publish_at(AT + 5, Some(node));
    let not_due = publish_at(AT + 20, Some(node));
    for p in [&earliest, &second, &third, &others, &unclaimed, &done, &not_due] {
        store.publish(p.clone()).await.unwrap();
    }
    assert!(finish(store, node, &done, DeliveryState::Delivered, AT + 6).await.applied);
    let key = |p: &Publish| DeliveryKey { msg_id: p.message.id.clone(), id: p.deliveries[0].id.clone() };
    let overdue = |token: i64, window: usize| store.overdue_claims(token, AT + 10, window);
    assert_eq!(
        overdue(node, 100_000).await.unwrap(),
        vec![key(&earliest), key(&second), key(&third)],
        "open, claimed by the node, due before the time given, earliest first"
    );
    assert_eq!(overdue(node, 1).await.unwrap(), vec![key(&earliest)], "only within the window of earliest due");
    assert_eq!(overdue(someone_else, 100_000).await.unwrap(), vec![key(&others)]);

    let asked = vec![key(&earliest), key(&second), key(&others), key(&unclaimed), key(&done)];
    assert_eq!(store.free_claims(node, asked).await.unwrap(), 2, "only the node's own open claims are freed");
    assert_eq!(overdue(node, 100_000).await.unwrap(), vec![key(&third)]);
    assert_eq!(overdue(someone_else, 100_000).await.unwrap(), vec![key(&others)], "another node's claim stays");
    let claimed = claim(store, node, AT + 10, AT + 10, 100_000).await;
    let mut taken: Vec<&str> = claimed.iter().filter(|d| d.app_id == a.id).map(|d| d.id.as_str()).collect();
    taken.sort();
    let mut freed = vec![earliest.deliveries[0].id.as_str(), second.deliveries[0].id.as_str()];
    freed.extend([&unclaimed, &others].iter().map(|p| p.deliveries[0].id.as_str()));
    freed.sort();
    assert_eq!(taken, freed, "freed claims are due work again (and a retired node's claim is free)");
    delete_app(store, &a.id).await.unwrap();
}

/// Writes are committed in shared batches on both backends; one that fails halfway (here
/// a publish whose second delivery repeats the first's id, after its message and first
/// delivery were written) must leave nothing behind, and every other write of its batch
/// must still land.
async fn a_write_failing_halfway_leaves_nothing_and_spares_its_batch(store: &dyn Store) {
    let app = store.create_app(app(40_000, None)).await.unwrap();
    let ep = store.create_endpoint(endpoint(&app.id, 40_000)).await.unwrap();
    let publishes: Vec<(bool, Publish)> = (0..300)
        .map(|n| {
            let mut publish = publish(&app.id, &[&ep.id], Some(&format!("evt_batch_{n}")), 40_010 + n);
            let broken = n % 50 == 7;
            if broken {
                let again = publish.deliveries[0].clone();
                publish.deliveries.push(again);
            }
            (broken, publish)
        })
        .collect();
    let outcomes = futures_util::future::join_all(publishes.iter().map(|(_, p)| store.publish(p.clone()))).await;
    let mut kept = 0;
    for ((broken, publish), outcome) in publishes.iter().zip(outcomes) {
        if *broken {
            assert!(matches!(outcome, Err(StoreError::Conflict(_))), "{outcome:?}");
            let found = store.message_by_id(&publish.message.id).await;
            assert_eq!(found, Err(StoreError::NotFound), "no half-written message");
        } else {
            assert!(matches!(outcome, Ok(PublishOutcome::Created)), "{outcome:?}");
            store.message_by_id(&publish.message.id).await.unwrap();
            kept += 1;
        }
    }
    assert_eq!(kept, 294);
    let listed = store.deliveries_of_endpoint(&app.id, &ep.id, ListFilter::default(), first_page(1_000)).await.unwrap();
    assert_eq!(listed.items.len(), 294, "no stray delivery of a failed publish");
    delete_app(store, &app.id).await.unwrap();
}

async fn retention_deletes_old_messages_in_batches(store: &dyn Store) {
    let a = store.create_app(app(30_000, None)).await.unwrap();
    let ep = store.create_endpoint(endpoint(&a.id, 30_000)).await.unwrap();
    let other = store.create_endpoint(endpoint(&a.id, 30_000)).await.unwrap();
    let in_state = |mut p: Publish, state: DeliveryState| {
        p.deliveries.iter_mut().for_each(|d| d.state = state);
        p
    };
    // Closed: delivered, exhausted, skipped, canceled.
    let closed = [DeliveryState::Delivered, DeliveryState::Exhausted, DeliveryState::Skipped, DeliveryState::Canceled];
    let old: Vec<Publish> =
        (0..5).map(|n| in_state(publish(&a.id, &[&ep.id], None, 30_000 + n), closed[n as usize % 4])).collect();
    let mut short = in_state(publish(&a.id, &[&ep.id], None, 40_000), DeliveryState::Delivered);
    std::sync::Arc::make_mut(&mut short.message).retain_until = Some(41_000);
    let recent = publish(&a.id, &[&ep.id], None, 40_000);
    // Open, however old: pending (alone, and as a fan-out), sending, waiting, and one
    // delivery of two still pending; and one past its own retention, still pending.
    let held = [
        publish(&a.id, &[&ep.id], None, 30_010),
        publish(&a.id, &[&ep.id, &other.id], None, 30_011),
        in_state(publish(&a.id, &[&ep.id], None, 30_012), DeliveryState::Sending),
        in_state(publish(&a.id, &[&ep.id], None, 30_013), DeliveryState::Waiting),
    ];
    let mut half_open = in_state(publish(&a.id, &[&ep.id, &other.id], None, 30_014), DeliveryState::Delivered);
    half_open.deliveries[1].state = DeliveryState::Pending;
    let mut short_held = publish(&a.id, &[&ep.id], None, 40_001);
    std::sync::Arc::make_mut(&mut short_held.message).retain_until = Some(41_000);
    for p in old.iter().chain([&short, &recent, &half_open, &short_held]).chain(&held) {
        store.publish(p.clone()).await.unwrap();
    }
    let mut deleted = 0;
    loop {
        let n = store.purge_messages(35_000, 42_000, 2).await.unwrap();
        assert!(n <= 2, "batches are bounded");
        deleted += n;
        if n < 2 {
            break;
        }
    }
    assert!(deleted >= 6, "the five old messages and the one past its own retention");
    for p in old.iter().chain([&short]) {
        assert_eq!(store.message_by_id(&p.message.id).await, Err(StoreError::NotFound));
        assert_eq!(store.get_delivery(&p.message.id, &p.deliveries[0].id).await, Err(StoreError::NotFound));
    }
    for p in held.iter().chain([&half_open, &short_held]) {
        store.message_by_id(&p.message.id).await.expect("a message with an open delivery is kept");
        let open = p.deliveries.iter().find(|d| d.state != DeliveryState::Delivered).unwrap();
        store.get_delivery(&p.message.id, &open.id).await.expect("and its open delivery");
    }
    store.message_by_id(&recent.message.id).await.unwrap();
    store.get_delivery(&recent.message.id, &recent.deliveries[0].id).await.unwrap();
    delete_app(store, &a.id).await.unwrap();
}

async fn tokens_belong_to_an_app_or_to_the_admin(store: &dyn Store) {
    let a = store.create_app(app(9_000, None)).await.unwrap();
    let admin = Token { id: id(prefix::TOKEN, 9_000), hash: [1; 32], app_id: None, created_at: 9_000 };
    let scoped = Token { id: id(prefix::TOKEN, 9_001), hash: [2; 32], app_id: Some(a.id.clone()), created_at: 9_001 };
    store.add_token(admin.clone()).await.unwrap();
    store.add_token(scoped.clone()).await.unwrap();
    let all = store.tokens().await.unwrap();
    assert!(all.contains(&admin) && all.contains(&scoped));
    assert!(matches!(
        store.add_token(Token { id: id(prefix::TOKEN, 9_002), ..scoped.clone() }).await,
        Err(StoreError::Conflict(_))
    ));
    delete_app(store, &a.id).await.unwrap();
    assert!(!store.tokens().await.unwrap().contains(&scoped), "an app's tokens go with it");
    store.delete_token(&admin.id).await.unwrap();
    assert_eq!(store.delete_token(&admin.id).await, Err(StoreError::NotFound));
}

async fn dashboard_sessions_links_and_failing_endpoints(store: &dyn Store) {
    let a = store.create_app(app(30_000, None)).await.unwrap();
    let session = DashboardSession {
        id: [7; 32],
        link: false,
        token_id: "tok_x".into(),
        app_id: Some(a.id.clone()),
        created_at: 30_000,
        expires_at: 40_000,
    };
    let link = DashboardSession { id: [8; 32], link: true, expires_at: 31_000, ..session.clone() };
    store.add_session(session.clone()).await.unwrap();
    store.add_session(link.clone()).await.unwrap();
    assert_eq!(store.session([7; 32], 39_999).await.unwrap(), Some(session.clone()));
    assert_eq!(store.session([7; 32], 40_000).await.unwrap(), None, "expired");
    assert_eq!(store.session([8; 32], 30_000).await.unwrap(), None, "a link is not a session");
    // What a link becomes: a session of its application, with the id, token and times given.
    let from_link = |id: [u8; 32], at: UnixMs| DashboardSession {
        id,
        link: false,
        token_id: "portal_x".into(),
        app_id: None,
        created_at: at,
        expires_at: at + 10_000,
    };
    assert_eq!(store.use_link([7; 32], from_link([20; 32], 30_000)).await.unwrap(), None, "a session is not a link");
    let used = DashboardSession { app_id: Some(a.id.clone()), ..from_link([21; 32], 30_500) };
    assert_eq!(store.use_link([8; 32], from_link([21; 32], 30_500)).await.unwrap(), Some(used.clone()));
    assert_eq!(store.session([21; 32], 40_499).await.unwrap(), Some(used), "signed in");
    assert_eq!(store.use_link([8; 32], from_link([22; 32], 30_500)).await.unwrap(), None, "a link signs in once");
    assert_eq!(store.session([8; 32], 30_500).await.unwrap(), None, "the link's id opens nothing");
    let expired = DashboardSession { id: [9; 32], ..link.clone() };
    store.add_session(expired).await.unwrap();
    let late = from_link([23; 32], 31_000);
    assert_eq!(store.use_link([9; 32], late).await.unwrap(), None, "an expired link signs no one in");
    store.add_session(DashboardSession { id: [10; 32], expires_at: 35_000, ..session.clone() }).await.unwrap();
    assert_eq!(store.purge_sessions(35_000).await.unwrap(), 2, "that one and the expired link");
    assert!(store.session([7; 32], 30_000).await.unwrap().is_some(), "a live session stays");
    store.delete_session([7; 32]).await.unwrap();
    store.delete_session([7; 32]).await.unwrap();
    assert_eq!(store.session([7; 32], 30_000).await.unwrap(), None, "signed out");

    // Expiring an application's sessions ends them at the time given, its unused links at
    // once, and nothing of another application's.
    let b = store.create_app(app(30_000, None)).await.unwrap();
    let (soon, late, link, other) = ([11; 32], [12; 32], [13; 32], [14; 32]);
    store.add_session(DashboardSession { id: soon, expires_at: 32_000, ..session.clone() }).await.unwrap();
    store.add_session(DashboardSession { id: late, expires_at: 90_000, ..session.clone() }).await.unwrap();
    store.add_session(DashboardSession { id: link, link: true, expires_at: 90_000, ..session.clone() }).await.unwrap();
    let theirs = DashboardSession { id: other, app_id: Some(b.id.clone()), expires_at: 90_000, ..session.clone() };
    store.add_session(theirs).await.unwrap();
    let ended = store.expire_sessions(&a.id, 31_500, 33_000).await.unwrap();
    assert_eq!(ended, 3, "the late session, the one a link became, and the link");
    assert_eq!(store.session(late, 32_999).await.unwrap().map(|s| s.expires_at), Some(33_000));
    assert_eq!(store.session(late, 33_000).await.unwrap(), None, "ended at the time given");
    assert_eq!(store.session(soon, 31_999).await.unwrap().map(|s| s.expires_at), Some(32_000), "sooner kept");
    assert_eq!(store.use_link(link, from_link([24; 32], 31_500)).await.unwrap(), None, "the link ended at once");
    let earlier_clock = from_link([24; 32], 31_000);
    assert_eq!(store.use_link(link, earlier_clock).await.unwrap(), None, "whatever the clock of its sign-in");
    assert_eq!(store.session([21; 32], 31_500).await.unwrap().map(|s| s.expires_at), Some(33_000), "ended too");
    assert!(store.session(other, 80_000).await.unwrap().is_some(), "another application's session stays");

    // Failing endpoints, longest failing first; healthy ones and operational ones are not listed.
    let before: Vec<String> = store.failing_endpoints(1_000).await.unwrap().into_iter().map(|e| e.id).collect();
    let since = |at| Endpoint { fail_since: Some(at), ..endpoint(&a.id, 30_000) };
    let (late, early) = (since(2), since(1));
    store.create_endpoint(late.clone()).await.unwrap();
    store.create_endpoint(early.clone()).await.unwrap();
    store.create_endpoint(endpoint(&a.id, 30_000)).await.unwrap();
    let op = Endpoint { fail_since: Some(0), ..endpoint(OPERATIONAL_APP_ID, 30_000) };
    // (The operational application was made by `pagination_walks_every_item_once`.)
    store.create_endpoint(op).await.unwrap();
    let failing = store.failing_endpoints(1_000).await.unwrap();
    let ids: Vec<&str> = failing.iter().map(|e| e.id.as_str()).filter(|id| !before.iter().any(|b| b == id)).collect();
    assert_eq!(ids, [early.id.as_str(), late.id.as_str()]);
    assert_eq!(failing.iter().find(|e| e.id == late.id).unwrap().secrets, late.secrets, "secrets come back open");
    assert_eq!(store.failing_endpoints(1).await.unwrap().len(), 1);
    delete_app(store, &a.id).await.unwrap();
}

async fn sources_and_inbound_dedupe(store: &dyn Store) {
    use hookline_core::inbound::{Preset, SourceConfig};
    let a = store.create_app(app(8_000, None)).await.unwrap();
    let source = Source {
        id: id(prefix::SOURCE, 8_000),
        uid: Some("stripe-live".into()),
        name: "Stripe".into(),
        app_id: a.id.clone(),
        preset: Preset::Stripe,
        secrets: vec![SourceSecret { value: "whsec_x".into(), expires_at: None }],
        event_types: Some(vec!["charge.succeeded".into()]),
        config: SourceConfig { tolerance_seconds: Some(600), ..Default::default() },
        created_at: 8_000,
        updated_at: 8_000,
        api_key: Some("rk_live_reads_events".into()),
    };
    store.create_source(source.clone()).await.unwrap();
    assert_eq!(store.get_source("stripe-live").await.unwrap(), source, "the API key is opened again on reading");
    // A uid that is another source's id names the source whose id it is first.
    let shadow = Source { id: id(prefix::SOURCE, 8_001), uid: Some(source.id.clone()), ..source.clone() };
    store.create_source(shadow.clone()).await.unwrap();
    assert_eq!(store.get_source(&source.id).await.unwrap().id, source.id);
    assert_eq!(store.get_source(&shadow.id).await.unwrap().id, shadow.id);
    store.delete_source(&shadow.id).await.unwrap();
    // Reconciliation runs: newest first, gone with their source.
    for (at, run) in [(8_010, r#"{"n":1}"#), (8_020, r#"{"n":2}"#)] {
        store.save_reconcile_run(&source.id, at, run.into()).await.unwrap();
    }
    assert_eq!(store.reconcile_runs(&source.id, 10).await.unwrap(), vec![r#"{"n":2}"#, r#"{"n":1}"#]);
    // Only the newest are kept: the first two go as the later ones come.
    for n in 0..crate::RECONCILE_RUNS_KEPT as i64 {
        store.save_reconcile_run(&source.id, 8_100 + n, format!(r#"{{"later":{n}}}"#)).await.unwrap();
    }
    let kept = store.reconcile_runs(&source.id, 1_000).await.unwrap();
    assert_eq!(kept.len(), crate::RECONCILE_RUNS_KEPT);
    assert_eq!(kept.last().map(String::as_str), Some(r#"{"later":0}"#), "the oldest kept is the first later one");
    let mut orphan = source.clone();
    orphan.id = id(prefix::SOURCE, 8_000);
    orphan.uid = None;
    orphan.app_id = "app_missing".into();
    assert_eq!(store.create_source(orphan).await, Err(StoreError::NotFound), "a source needs its app");
    // Source uids are unique across applications: an update taking one is a conflict, even
    // from another application, and changes neither source.
    let b = store.create_app(app(8_000, None)).await.unwrap();
    let other =
        Source { id: id(prefix::SOURCE, 8_000), uid: Some("other".into()), app_id: b.id.clone(), ..source.clone() };
    store.create_source(other.clone()).await.unwrap();
    let taking = Source { uid: Some("stripe-live".into()), name: "Taking".into(), ..other.clone() };
    let clash = store.update_source(taking).await;
    assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
    assert_eq!(store.get_source(&source.id).await.unwrap(), source, "the source with that uid is still there");
    assert_eq!(store.get_source(&other.id).await.unwrap(), other, "the update was not applied");
    store.delete_source(&other.id).await.unwrap();

    let mut first = publish(&a.id, &[], None, 8_001);
    std::sync::Arc::make_mut(&mut first.message).source_id = Some(source.id.clone());
    first.dedupe = Some((source.id.clone(), "evt_1".into()));
    assert!(matches!(store.publish(first.clone()).await.unwrap(), PublishOutcome::Created));
    let mut retry = publish(&a.id, &[], None, 8_002);
    retry.dedupe = Some((source.id.clone(), "evt_1".into()));
    match store.publish(retry.clone()).await.unwrap() {
        PublishOutcome::Duplicate(existing) => assert_eq!(existing.id, first.message.id),
        other => panic!("a provider retry must be a duplicate, got {other:?}"),
    }
    assert_eq!(store.get_message(&a.id, &retry.message.id).await, Err(StoreError::NotFound), "nothing written");
    let received = store.list_source_messages(&source.id, first_page(10)).await.unwrap();
    assert_eq!(received.items.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), vec![first.message.id.clone()]);
    // Retention may delete the message while its key is in the dedupe window: the event was
    // taken all the same, and a retry of it is still a duplicate, never taken again.
    assert!(store.purge_messages(8_002, 8_002, 1_000).await.unwrap() >= 1);
    assert_eq!(store.message_by_id(&first.message.id).await, Err(StoreError::NotFound));
    match store.publish(retry.clone()).await.unwrap() {
        PublishOutcome::DuplicateOfPurged(msg_id) => assert_eq!(msg_id, first.message.id),
        other => panic!("a retry of an event whose message is purged is a duplicate, got {other:?}"),
    }
    assert_eq!(store.get_message(&a.id, &retry.message.id).await, Err(StoreError::NotFound), "nothing written");
    assert_eq!(store.purge_inbound_keys(8_002, 1).await.unwrap(), 1);
    assert!(matches!(store.publish(retry).await.unwrap(), PublishOutcome::Created), "outside the window it is new");
    store.delete_source(&source.id).await.unwrap();
    assert!(store.reconcile_runs(&source.id, 10).await.unwrap().is_empty());
    assert_eq!(store.get_source(&source.id).await, Err(StoreError::NotFound));
}

async fn apps_crud_and_uid_lookup(store: &dyn Store) {
    let created = store.create_app(app(1_000, Some("merchant-1"))).await.unwrap();
    assert_eq!(store.get_app(&created.id).await.unwrap(), created);
    assert_eq!(store.get_app("merchant-1").await.unwrap().id, created.id);
    let clash = store.create_app(app(1_001, Some("merchant-1"))).await;
    assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
    let mut renamed = created.clone();
    renamed.name = "Renamed".into();
    renamed.alert_email = Some("ops@merchant.example".into());
    store.update_app(renamed.clone()).await.unwrap();
    assert_eq!(store.get_app(&created.id).await.unwrap(), renamed);
    // A rotation writes the secrets only over the application as it was read.
    let mut rotated = renamed.clone();
    rotated.secret = "whsec_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB".into();
    rotated.previous_secrets = vec![StoredSecret { text: renamed.secret.clone(), expires_at: Some(90_000) }];
    rotated.updated_at = 2_000;
    assert!(store.set_app_secrets(rotated.clone(), &renamed).await.unwrap());
    assert_eq!(store.get_app(&created.id).await.unwrap(), rotated, "secrets come back open");
    let mut stale = rotated.clone();
    stale.secret = "whsec_CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC".into();
    stale.updated_at = renamed.updated_at;
    assert!(!store.set_app_secrets(stale, &renamed).await.unwrap(), "read before the rotation: not written");
    assert_eq!(store.get_app(&created.id).await.unwrap(), rotated);
    let mut gone = rotated.clone();
    gone.id = "app_missing".into();
    assert_eq!(store.set_app_secrets(gone, &rotated).await, Err(StoreError::NotFound));
    assert_eq!(store.get_app("app_missing").await, Err(StoreError::NotFound));
    assert_eq!(store.get_app("app_\0").await, Err(StoreError::NotFound), "a key no backend can hold names nothing");
    assert_eq!(store.delete_app("app_\0").await, Err(StoreError::NotFound));
    // A uid that is another application's id (kept from before the API refused that form)
    // does not take the id over: a key names the application whose id it is first.
    let shadow = store.create_app(app(1_002, Some(&created.id))).await.unwrap();
    assert_eq!(store.get_app(&created.id).await.unwrap().id, created.id);
    assert_eq!(store.get_app(&shadow.id).await.unwrap().id, shadow.id);
}

async fn pagination_walks_every_item_once(store: &dyn Store) {
    for n in 0..5 {
        store.create_app(app(2_000 + n, None)).await.unwrap();
    }
    let internal = App { id: OPERATIONAL_APP_ID.into(), ..app(2_000, None) };
    store.create_app(internal).await.unwrap();
    assert_eq!(store.get_app(OPERATIONAL_APP_ID).await.unwrap().id, OPERATIONAL_APP_ID);
    let mut seen = Vec::new();
    let mut page = first_page(2);
    loop {
        let listed = store.list_apps(page.clone()).await.unwrap();
        seen.extend(listed.items.iter().map(|a| a.id.clone()));
        if listed.done {
            break;
        }
        page.iterator = listed.items.last().map(|a| a.id.clone());
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "ascending, no repeats");
    assert!(seen.len() >= 5);
    assert!(!seen.iter().any(|id| id == OPERATIONAL_APP_ID), "the operational application is never listed");
}

async fn endpoints_belong_to_their_app(store: &dyn Store) {
    let a = store.create_app(app(3_000, None)).await.unwrap();
    let b = store.create_app(app(3_000, None)).await.unwrap();
    let ep = store.create_endpoint(endpoint(&a.id, 3_001)).await.unwrap();
    assert_eq!(store.get_endpoint(&a.id, &ep.id).await.unwrap(), ep);
    assert_eq!(store.get_endpoint(&b.id, &ep.id).await, Err(StoreError::NotFound), "no cross-tenant lookups");
    assert_eq!(store.delete_endpoint(&b.id, &ep.id).await, Err(StoreError::NotFound));
    assert_eq!(store.create_endpoint(endpoint("app_missing", 3_002)).await, Err(StoreError::NotFound));
    assert_eq!(store.app_endpoints(&a.id).await.unwrap().len(), 1);

    // An update that takes a sibling's uid is a conflict and changes neither.
    let named = |uid: &str, now| Endpoint { uid: Some(uid.into()), ..endpoint(&a.id, now) };
    let first = store.create_endpoint(named("first", 3_003)).await.unwrap();
    let second = store.create_endpoint(named("second", 3_004)).await.unwrap();
    let taking = Endpoint { uid: Some("second".into()), url: "https://taking.example/".into(), ..first.clone() };
    let clash = store.update_endpoint(taking, &first).await;
    assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
    assert_eq!(store.get_endpoint(&a.id, &second.id).await.unwrap(), second, "the sibling is still there");
    assert_eq!(store.get_endpoint(&a.id, &first.id).await.unwrap(), first, "the update was not applied");
    assert_eq!(store.app_endpoints(&a.id).await.unwrap().len(), 3);
    // A uid that is a sibling's id (kept from before the API refused that form) does not take
    // the id over: a key names the endpoint whose id it is first.
    let shadow = store.create_endpoint(named(&second.id, 3_004)).await.unwrap();
    assert_eq!(store.get_endpoint(&a.id, &second.id).await.unwrap(), second);
    assert_eq!(store.get_endpoint(&a.id, &shadow.id).await.unwrap(), shadow);
    store.delete_endpoint(&a.id, &shadow.id).await.unwrap();

    // An update is written only over the endpoint as it was read: one made from an older
    // read (another request saved in between) writes nothing.
    let renamed = Endpoint { description: "renamed".into(), updated_at: 3_005, ..first.clone() };
    assert_eq!(store.update_endpoint(renamed.clone(), &first).await.unwrap(), Some(renamed.clone()));
    let stale = Endpoint { url: "https://stale.example/".into(), updated_at: 3_006, ..first.clone() };
    assert_eq!(store.update_endpoint(stale, &first).await.unwrap(), None, "read before the rename");
    assert_eq!(store.get_endpoint(&a.id, &first.id).await.unwrap(), renamed);
    let missing = Endpoint { id: "ep_missing".into(), ..first.clone() };
    assert_eq!(store.update_endpoint(missing.clone(), &missing).await, Err(StoreError::NotFound));

    // Deleting an endpoint closes its ordered deliveries, those waiting behind the open one
    // included (left waiting, one would become its lane's head and be claimed for nothing).
    let ordered = |now| {
        let mut p = publish(&a.id, &[&first.id], None, now);
        std::sync::Arc::make_mut(&mut p.message).ordering_key = Some("pay_1".into());
        for d in &mut p.deliveries {
            (d.order_key, d.state, d.next_at) = (Some("pay_1".into()), DeliveryState::Waiting, None);
        }
        p
    };
    let (head, behind) = (ordered(3_010), ordered(3_011));
    store.publish(head.clone()).await.unwrap();
    store.publish(behind.clone()).await.unwrap();
    let states = async || {
        let mut states = Vec::new();
        for p in [&head, &behind] {
            states.push(store.get_delivery(&p.message.id, &p.deliveries[0].id).await.unwrap().state);
        }
        states
    };
    assert_eq!(states().await, [DeliveryState::Pending, DeliveryState::Waiting]);
    // And its other open deliveries, a step at a time (one a step here); a delivered one,
    // and another endpoint's, stay as they are.
    let mut plain = Vec::new();
    for n in 0..3 {
        let mut p = publish(&a.id, &[&first.id, &second.id], None, 3_020 + n);
        if n == 1 {
            p.deliveries[0].state = DeliveryState::Delivered;
        }
        store.publish(p.clone()).await.unwrap();
        plain.push(p);
    }
    store.delete_endpoint(&a.id, &first.id).await.unwrap();
    let (mut after, mut steps) = (String::new(), 0);
    while let Some(next) = store.close_deleted_endpoint_step(&first.id, &after, 1).await.unwrap() {
        (after, steps) = (next, steps + 1);
    }
    assert_eq!(steps, 5, "one of its five deliveries a step, then a step that finds none after the last");
    assert_eq!(states().await, [DeliveryState::Canceled, DeliveryState::Canceled]);
    for (n, p) in plain.iter().enumerate() {
        let state = async |d: usize| store.get_delivery(&p.message.id, &p.deliveries[d].id).await.unwrap().state;
        let closed = if n == 1 { DeliveryState::Delivered } else { DeliveryState::Canceled };
        assert_eq!((state(0).await, state(1).await), (closed, DeliveryState::Pending), "message {n}");
    }
}

async fn publish_commits_message_and_deliveries(store: &dyn Store, node: i64) {
    let a = store.create_app(app(4_000, None)).await.unwrap();
    let e1 = store.create_endpoint(endpoint(&a.id, 4_000)).await.unwrap();
    let e2 = store.create_endpoint(endpoint(&a.id, 4_000)).await.unwrap();
    let p = publish(&a.id, &[&e1.id, &e2.id], Some("evt_1"), 4_001);
    assert!(matches!(store.publish(p.clone()).await.unwrap(), PublishOutcome::Created));
    let stored = store.get_message(&a.id, &p.message.id).await.unwrap();
    assert_eq!(stored.payload, p.message.payload, "payload bytes kept exactly");
    assert_eq!(store.get_message(&a.id, "evt_1").await.unwrap().id, p.message.id);
    let again = publish(&a.id, &[&e1.id], Some("evt_1"), 4_002);
    match store.publish(again).await.unwrap() {
        PublishOutcome::Duplicate(existing) => assert_eq!(existing.id, p.message.id),
        other => panic!("expected duplicate, got {other:?}"),
    }
    let pending = claim_all(store, node, 4_002).await;
    let ours: Vec<_> = pending.iter().filter(|d| d.msg_id == p.message.id).collect();
    assert_eq!(ours.len(), 2);
    // An `eventId` that is another message's id: a lookup by that key is the message of
    // that id, and a publish under that `eventId` again finds the one that holds it (on
    // PostgreSQL both matched, and the publish failed for good).
    let named = publish(&a.id, &[&e1.id], Some(&p.message.id), 4_003);
    assert!(matches!(store.publish(named.clone()).await.unwrap(), PublishOutcome::Created));
    assert_eq!(store.get_message(&a.id, &p.message.id).await.unwrap().id, p.message.id, "by id first");
    match store.publish(publish(&a.id, &[&e1.id], Some(&p.message.id), 4_004)).await.unwrap() {
        PublishOutcome::Duplicate(existing) => assert_eq!(existing.id, named.message.id),
        other => panic!("expected a duplicate of the message holding the eventId, got {other:?}"),
    }
}

async fn attempts_move_deliveries_through_states(store: &dyn Store, node: i64) {
    let a = store.create_app(app(5_000, None)).await.unwrap();
    let ep = store.create_endpoint(endpoint(&a.id, 5_000)).await.unwrap();
    let mut p = publish(&a.id, &[&ep.id], None, 5_001);
    p.claim = Some(node);
    store.publish(p.clone()).await.unwrap();
    let delivery = &p.deliveries[0];
    let attempt = |state, status: u16, at| Attempt {
        id: id(prefix::ATTEMPT, at),
        msg_id: delivery.msg_id.clone(),
        app_id: a.id.clone(),
        delivery_id: delivery.id.clone(),
        endpoint_id: Some(ep.id.clone()),
        url: ep.url.clone(),
        status_code: status,
        response: "busy".into(),
        duration_ms: 12,
        error_class: None,
        state,
        trigger: Trigger::Scheduled,
        created_at: at,
    };
    let failed = AttemptRecord {
        attempt: attempt(DeliveryState::Pending, 500, 5_002),
        state: DeliveryState::Pending,
        next_at: Some(10_000),
        first_attempt_at: 5_002,
        disable_endpoint: false,
        disable_after_ms: 0,
        claim: node,
        keep_claim: true,
    };
    assert!(store.record_attempt(failed).await.unwrap().applied);
    let d = store.get_delivery(&delivery.msg_id, &delivery.id).await.unwrap();
    assert_eq!(
        (d.state, d.attempts, d.next_at, d.first_attempt_at),
        (DeliveryState::Pending, 1, Some(10_000), Some(5_002))
    );
    let gone = AttemptRecord {
        attempt: attempt(DeliveryState::Exhausted, 410, 10_001),
        state: DeliveryState::Exhausted,
        next_at: None,
        first_attempt_at: 10_001,
        disable_endpoint: true,
        disable_after_ms: 0,
        claim: node,
        keep_claim: false,
    };
    assert!(store.record_attempt(gone).await.unwrap().applied);
    let d = store.get_delivery(&delivery.msg_id, &delivery.id).await.unwrap();
    assert_eq!((d.state, d.attempts, d.first_attempt_at), (DeliveryState::Exhausted, 2, Some(5_002)));
    assert!(store.get_endpoint(&a.id, &ep.id).await.unwrap().disabled, "410 disables the endpoint");
    let listed = store
        .list_attempts(
            &a.id,
            AttemptScope::Message(&delivery.msg_id),
            ListFilter::default(),
            Page { limit: 10, descending: true, ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(listed.items.iter().map(|a| a.status_code).collect::<Vec<_>>(), vec![410, 500], "newest first");
    // Svix's attempt filters: by status class (`0` for no answer) and by endpoint.
    let (app_id, msg_id) = (&a.id, &delivery.msg_id);
    let codes = async |filter: ListFilter| {
        let page = Page { limit: 10, descending: true, ..Default::default() };
        let listed = store.list_attempts(app_id, AttemptScope::Message(msg_id), filter, page).await.unwrap();
        listed.items.iter().map(|a| a.status_code).collect::<Vec<_>>()
    };
    assert_eq!(codes(ListFilter { status_code_class: Some(400), ..Default::default() }).await, vec![410]);
    assert_eq!(codes(ListFilter { status_code_class: Some(500), ..Default::default() }).await, vec![500]);
    assert!(codes(ListFilter { status_code_class: Some(0), ..Default::default() }).await.is_empty());
    assert_eq!(codes(ListFilter { endpoint_id: Some(ep.id.clone()), ..Default::default() }).await, vec![410, 500]);
    assert!(codes(ListFilter { endpoint_id: Some("ep_other".into()), ..Default::default() }).await.is_empty());
    assert!(!claim_all(store, node, 10_002).await.iter().any(|p| p.id == delivery.id), "exhausted is not open");
}

async fn resend_and_recover_restart_deliveries(store: &dyn Store, node: i64) {
    let a = store.create_app(app(6_000, None)).await.unwrap();
    let ep = store.create_endpoint(endpoint(&a.id, 6_000)).await.unwrap();
    let other = store.create_endpoint(endpoint(&a.id, 6_000)).await.unwrap();
    let mut p = publish(&a.id, &[&ep.id], None, 6_001);
    p.claim = Some(node);
    store.publish(p.clone()).await.unwrap();
    let exhausted = AttemptRecord {
        attempt: Attempt {
            id: id(prefix::ATTEMPT, 6_002),
            msg_id: p.message.id.clone(),
            app_id: a.id.clone(),
            delivery_id: p.deliveries[0].id.clone(),
            endpoint_id: Some(ep.id.clone()),
            url: ep.url.clone(),
            status_code: 0,
            response: String::new(),
            duration_ms: 30_000,
            error_class: Some("timeout".into()),
            state: DeliveryState::Exhausted,
            trigger: Trigger::Scheduled,
            created_at: 6_002,
        },
        state: DeliveryState::Exhausted,
        next_at: None,
        first_attempt_at: 6_002,
        disable_endpoint: false,
        disable_after_ms: 0,
        claim: node,
        keep_claim: false,
    };
    assert!(store.record_attempt(exhausted).await.unwrap().applied);
    assert_eq!(recover(store, &a.id, &ep.id, 6_000, 7_000, 8_000).await, 1);
    let recovered = store.get_delivery(&p.message.id, &p.deliveries[0].id).await.unwrap();
    assert_eq!(
        (recovered.state, recovered.next_at, recovered.trigger),
        (DeliveryState::Pending, Some(8_000), Trigger::Manual)
    );
    assert_eq!(recover(store, &a.id, &ep.id, 7_000, 9_000, 9_000).await, 0, "window excludes the message");
    let claimable = claim_all(store, node, 8_000).await;
    assert!(claimable.iter().any(|d| d.id == p.deliveries[0].id), "recovered deliveries are left for any node");
    let fresh = store.resend(&a.id, &p.message.id, &other.id, id(prefix::DELIVERY, 9_000), 9_000, node).await.unwrap();
    assert_eq!((fresh.endpoint_id.as_deref(), fresh.state), (Some(other.id.as_str()), DeliveryState::Pending));
    assert!(!claim_all(store, node, 9_000).await.iter().any(|d| d.id == fresh.id), "a resend is claimed by its node");
    let b = store.create_app(app(6_000, None)).await.unwrap();
    let cross = store.resend(&b.id, &p.message.id, &ep.id, id(prefix::DELIVERY, 9_000), 9_000, node).await;
    assert_eq!(cross, Err(StoreError::NotFound), "no resend across applications");
}

/// A recover walks the endpoint's deliveries a step at a time: what is in the window and
/// exhausted or skipped restarts whatever step it falls in (a message whose id was made a
/// moment before its `created_at` too); what is outside the window, delivered, or another
/// endpoint's stays. A lane reopened across steps goes in publish order, not id order.
async fn a_recover_walks_the_endpoint_in_steps(store: &dyn Store) {
    use DeliveryState::{Delivered, Exhausted, Pending, Skipped, Waiting};
    let t = 70_000_000;
    let a = store.create_app(app(t, None)).await.unwrap();
    let ep = store.create_endpoint(endpoint(&a.id, t)).await.unwrap();
    let other = store.create_endpoint(endpoint(&a.id, t)).await.unwrap();
    let closed = |p: Publish, state: DeliveryState| {
        let mut p = p;
        p.deliveries[0].state = state;
        p.deliveries[0].next_at = None;
        p
    };
    // The message created at `created_at` with id `msg_id`.
    let made = |mut p: Publish, msg_id: String, created_at: UnixMs| {
        let message = std::sync::Arc::make_mut(&mut p.message);
        (message.id, message.created_at) = (msg_id.clone(), created_at);
        p.deliveries[0].msg_id = msg_id;
        p
    };
    let mut restarts = Vec::new();
    for i in 0..9 {
        let state = if i % 3 == 0 { Skipped } else { Exhausted };
        restarts.push(closed(publish(&a.id, &[&ep.id], None, t + 10 + i), state));
    }
    let early_id = made(closed(publish(&a.id, &[&ep.id], None, t), Exhausted), id(prefix::MESSAGE, t - 30_000), t + 20);
    restarts.push(early_id);
    let stays = [
        closed(publish(&a.id, &[&ep.id], None, t + 11), Delivered),
        closed(publish(&a.id, &[&ep.id], None, t + 9), Exhausted),
        closed(publish(&a.id, &[&ep.id], None, t + 100), Exhausted),
        closed(publish(&a.id, &[&other.id], None, t + 12), Exhausted),
        made(closed(publish(&a.id, &[&ep.id], None, t), Exhausted), id(prefix::MESSAGE, t + 30), t + 100),
    ];
    for p in restarts.iter().chain(&stays) {
        store.publish(p.clone()).await.unwrap();
    }
    // A lane of two, the first published with the larger id.
    let lane = |byte: u8| {
        let p = closed(ordered(&a.id, &ep.id, "pay_9", t + 50), Exhausted);
        made(p, new_id(prefix::MESSAGE, t + 50, [byte; 10]), t + 50)
    };
    let (first, second) = (lane(200), lane(100));
    store.publish(first.clone()).await.unwrap();
    store.publish(second.clone()).await.unwrap();

    let recovery =
        Recovery { app_id: a.id.clone(), endpoint_id: ep.id.clone(), since: t + 10, until: t + 60, now: t + 70 };
    assert_eq!(crate::recover_endpoint(store, &recovery, 1).await.unwrap(), restarts.len() + 2);
    for p in &restarts {
        let d = store.get_delivery(&p.message.id, &p.deliveries[0].id).await.unwrap();
        assert_eq!((d.state, d.next_at, d.trigger), (Pending, Some(t + 70), Trigger::Manual));
    }
    let states = futures_util::future::join_all(stays.iter().map(|p| state_of(store, p))).await;
    assert_eq!(states, [Delivered, Exhausted, Exhausted, Exhausted, Exhausted]);
    assert_eq!([state_of(store, &first).await, state_of(store, &second).await], [Pending, Waiting]);
    assert_eq!(crate::recover_endpoint(store, &recovery, 3).await.unwrap(), 0, "nothing is left to restart");
}

/// A failure starts `fail_since`, a success clears it; failing too long disables the endpoint
/// once (reported by the write that did it); skipped deliveries leave health alone and are
/// sent again by a recover.
/// Attempts recorded at once (one batch on PostgreSQL) move an endpoint's failure clock as
/// one after the other would: a success then a failure restarts it at the failure (it was
/// kept from before the success, and the endpoint disabled as it recovered), and of two
/// failures the first starts it.
async fn attempts_recorded_together_keep_the_failure_clock(store: &dyn Store, node: i64) {
    let (a, ep) = health_app(store).await;
    let record = |p: &Publish, state: DeliveryState, at: i64| health_record(p, state, at, node);
    let mut published = Vec::new();
    for n in 0..5 {
        let mut p = publish(&a.id, &[&ep.id], None, DAY + n);
        p.claim = Some(node);
        store.publish(p.clone()).await.unwrap();
        published.push(p);
    }
    store.record_attempt(record(&published[0], DeliveryState::Pending, DAY)).await.unwrap();
    let (ok, failed) = tokio::join!(
        store.record_attempt(record(&published[1], DeliveryState::Delivered, 4 * DAY + 10)),
        store.record_attempt(record(&published[2], DeliveryState::Pending, 4 * DAY + 20)),
    );
    assert_eq!((ok.unwrap().disabled, failed.unwrap().disabled), (None, None), "it recovered: not disabled");
    let e = store.get_endpoint(&a.id, &ep.id).await.unwrap();
    assert_eq!((e.disabled, e.fail_since), (false, Some(4 * DAY + 20)), "the clock restarts at the failure");

    store.record_attempt(record(&published[2], DeliveryState::Delivered, 5 * DAY)).await.unwrap();
    let (first, second) = tokio::join!(
        store.record_attempt(record(&published[3], DeliveryState::Pending, 5 * DAY + 10)),
        store.record_attempt(record(&published[4], DeliveryState::Pending, 5 * DAY + 20)),
    );
    first.unwrap();
    second.unwrap();
    assert_eq!(store.get_endpoint(&a.id, &ep.id).await.unwrap().fail_since, Some(5 * DAY + 10), "the first failure");
    delete_app(store, &a.id).await.unwrap();
}

const DAY: i64 = 86_400_000;

/// An application with one endpoint, for the endpoint health tests.
async fn health_app(store: &dyn Store) -> (App, Endpoint) {
    let a = store.create_app(app(DAY, None)).await.unwrap();
    let ep = store.create_endpoint(endpoint(&a.id, DAY)).await.unwrap();
    (a, ep)
}

/// An attempt of `p` on `node` ending in `state` at `at`, disabling after two days failing.
fn health_record(p: &Publish, state: DeliveryState, at: i64, node: i64) -> AttemptRecord {
    AttemptRecord { disable_after_ms: 2 * DAY as u64, keep_claim: true, ..attempt_record(p, state, at, node) }
}

async fn endpoint_health_and_automatic_disabling(store: &dyn Store, node: i64) {
    let (a, ep) = health_app(store).await;
    let record = |p: &Publish, state: DeliveryState, at: i64| health_record(p, state, at, node);
    let mut p = publish(&a.id, &[&ep.id], None, DAY);
    p.claim = Some(node);
    store.publish(p.clone()).await.unwrap();
    let first = store.record_attempt(record(&p, DeliveryState::Pending, DAY + 10)).await.unwrap();
    assert_eq!(first, Recorded { applied: true, disabled: None });
    assert_eq!(
        store.get_endpoint(&a.id, &ep.id).await.unwrap().fail_since,
        Some(DAY + 10),
        "the first failure starts the clock"
    );
    store.record_attempt(record(&p, DeliveryState::Pending, DAY + 20)).await.unwrap();
    assert_eq!(store.get_endpoint(&a.id, &ep.id).await.unwrap().fail_since, Some(DAY + 10), "later failures keep it");
    store.record_attempt(record(&p, DeliveryState::Delivered, DAY + 30)).await.unwrap();
    assert_eq!(store.get_endpoint(&a.id, &ep.id).await.unwrap().fail_since, None, "a success resets it");

    let mut q = publish(&a.id, &[&ep.id], None, 2 * DAY);
    q.claim = Some(node);
    store.publish(q.clone()).await.unwrap();
    store.record_attempt(record(&q, DeliveryState::Pending, 2 * DAY)).await.unwrap();
    let early = store.record_attempt(record(&q, DeliveryState::Pending, 4 * DAY - 1)).await.unwrap();
    assert_eq!(early.disabled, None, "not failing long enough yet");
    let skipped = record(&q, DeliveryState::Skipped, 4 * DAY);
    assert_eq!(store.record_attempt(skipped).await.unwrap().disabled, None, "a skip is not a failure");
    assert!(!store.get_endpoint(&a.id, &ep.id).await.unwrap().disabled);
    let mut r = publish(&a.id, &[&ep.id], None, 4 * DAY);
    r.claim = Some(node);
    store.publish(r.clone()).await.unwrap();
    let late = store.record_attempt(record(&r, DeliveryState::Exhausted, 4 * DAY + 1)).await.unwrap();
    assert_eq!(late, Recorded { applied: true, disabled: Some(2 * DAY) }, "two days of failures disable it");
    let e = store.get_endpoint(&a.id, &ep.id).await.unwrap();
    assert!(e.disabled);
    assert_eq!(e.updated_at, 4 * DAY + 1);
    let again = store.record_attempt(record(&r, DeliveryState::Exhausted, 4 * DAY + 2)).await.unwrap();
    assert_eq!(again.disabled, None, "disabling is reported once");
    // A request that read the endpoint before the automatic disable does not undo it, and
    // an update never writes the endpoint's health back from its copy.
    let before = Endpoint { disabled: false, updated_at: e.updated_at, ..e.clone() };
    let undo = Endpoint { description: "stale".into(), updated_at: 4 * DAY + 3, ..before.clone() };
    assert_eq!(store.update_endpoint(undo, &before).await.unwrap(), None, "read before the disable");
    let described =
        Endpoint { description: "still off".into(), fail_since: None, updated_at: 4 * DAY + 3, ..e.clone() };
    let written = store.update_endpoint(described, &e).await.unwrap().unwrap();
    assert_eq!((written.disabled, written.fail_since), (true, Some(2 * DAY)), "the failure clock is kept");
    let enabled = Endpoint { disabled: false, updated_at: 4 * DAY + 4, ..written.clone() };
    let written = store.update_endpoint(enabled, &written).await.unwrap().unwrap();
    assert_eq!((written.disabled, written.fail_since), (false, None), "enabling restarts it");
    assert_eq!(store.get_endpoint(&a.id, &ep.id).await.unwrap(), written);

    // Published while disabled: recorded as skipped, never claimed, sent by a recover.
    let mut s = publish(&a.id, &[&ep.id], None, 5 * DAY);
    s.deliveries[0].state = DeliveryState::Skipped;
    s.deliveries[0].next_at = None;
    store.publish(s.clone()).await.unwrap();
    assert!(!claim_all(store, node, 5 * DAY).await.iter().any(|d| d.id == s.deliveries[0].id), "skipped is not due");
    let d = store.get_delivery(&s.message.id, &s.deliveries[0].id).await.unwrap();
    assert_eq!((d.state, d.next_at), (DeliveryState::Skipped, None));
    assert_eq!(recover(store, &a.id, &ep.id, 5 * DAY, 5 * DAY + 1, 6 * DAY).await, 1);
    assert_eq!(state_of(store, &s).await, DeliveryState::Pending);
    delete_app(store, &a.id).await.unwrap();
}

async fn idempotent_answers_expire(store: &dyn Store) {
    let answer = |key: &str, fingerprint: u8, created_at: UnixMs| IdempotentResponse {
        key: key.into(),
        fingerprint: [fingerprint; 32],
        status: 202,
        body: Bytes::from_static(b"{}"),
        created_at,
    };
    store.save_idempotent_response(answer("k1", 7, 100)).await.unwrap();
    assert_eq!(store.idempotent_response("k1", 50).await.unwrap(), Some(answer("k1", 7, 100)));
    assert_eq!(store.idempotent_response("k1", 150).await.unwrap(), None);
    assert_eq!(store.purge_idempotent_responses(101, 1_000).await.unwrap(), 1);
    assert_eq!(store.idempotent_response("k1", 0).await.unwrap(), None);
    // Walked a chunk of keys at a time: the expired ones go in every chunk, the rest stay.
    for (n, key) in ["ka", "kb", "kc", "kd", "ke", "kf", "kg"].into_iter().enumerate() {
        let created_at = if n % 2 == 0 { 110 } else { 130 };
        store.save_idempotent_response(answer(key, 1, created_at)).await.unwrap();
    }
    assert_eq!(store.purge_idempotent_responses(120, 2).await.unwrap(), 4);
    for (n, key) in ["ka", "kb", "kc", "kd", "ke", "kf", "kg"].into_iter().enumerate() {
        let kept = store.idempotent_response(key, 0).await.unwrap().is_some();
        assert_eq!(kept, n % 2 == 1, "{key}");
    }
    assert_eq!(store.purge_idempotent_responses(140, 3).await.unwrap(), 3);

    // An answer stored by a publish, in the publish's commit, keeps its fingerprint too.
    let a = store.create_app(app(200, None)).await.unwrap();
    let mut keyed = publish(&a.id, &[], None, 200);
    keyed.idempotency = Some(answer("k2", 9, 200));
    store.publish(keyed).await.unwrap();
    assert_eq!(store.idempotent_response("k2", 150).await.unwrap(), Some(answer("k2", 9, 200)));
    delete_app(store, &a.id).await.unwrap();

    // Reservations: one request holds a key until it answers, gives it up, or is abandoned;
    // each is named by its token, and only that token releases it.
    let (one, two) = ([1; 32], [2; 32]);
    let (first, other, retry, late) = ([1; 16], [2; 16], [3; 16], [4; 16]);
    let reserve = |fingerprint, token, now, since, stale_before| {
        store.reserve_idempotency_key("k3", fingerprint, token, now, since, stale_before)
    };
    assert_eq!(reserve(one, first, 1_000, 0, 0).await.unwrap(), Reservation::Taken);
    assert_eq!(reserve(one, retry, 1_001, 0, 0).await.unwrap(), Reservation::Running { fingerprint: one });
    assert_eq!(reserve(two, other, 1_001, 0, 0).await.unwrap(), Reservation::Running { fingerprint: one });
    assert_eq!(store.idempotent_response("k3", 0).await.unwrap(), None, "a reservation is no answer");
    for not_holding in [other, retry] {
        store.release_idempotency_key("k3", not_holding).await.unwrap();
    }
    let still = reserve(two, other, 1_002, 0, 0).await.unwrap();
    assert_eq!(still, Reservation::Running { fingerprint: one }, "released by its own token only");
    store.release_idempotency_key("k3", first).await.unwrap();
    assert_eq!(reserve(two, other, 1_003, 0, 0).await.unwrap(), Reservation::Taken, "given up: free");
    assert_eq!(reserve(one, late, 2_000, 0, 1_003).await.unwrap(), Reservation::Running { fingerprint: two });
    assert_eq!(reserve(one, late, 2_000, 0, 1_004).await.unwrap(), Reservation::Taken, "abandoned: taken over");
    // Late releases by the abandoned holder, or by an earlier holder of the same request,
    // free nothing now.
    store.release_idempotency_key("k3", other).await.unwrap();
    store.release_idempotency_key("k3", first).await.unwrap();
    let kept = reserve(two, other, 2_001, 0, 1_004).await.unwrap();
    assert_eq!(kept, Reservation::Running { fingerprint: one }, "the abandoned one's release frees nothing now");
    store.save_idempotent_response(answer("k3", 1, 3_000)).await.unwrap();
    let answered = reserve(two, other, 3_001, 2_500, 2_000).await.unwrap();
    assert_eq!(answered, Reservation::Answered(answer("k3", 1, 3_000)));
    store.release_idempotency_key("k3", late).await.unwrap();
    assert_eq!(store.idempotent_response("k3", 0).await.unwrap(), Some(answer("k3", 1, 3_000)), "an answer stays");
    assert_eq!(reserve(two, other, 4_000, 3_500, 2_000).await.unwrap(), Reservation::Taken, "an expired answer: free");
    // A publish's answer replaces its own reservation in the publish's commit.
    assert_eq!(store.reserve_idempotency_key("k4", [9; 32], [9; 16], 200, 0, 0).await.unwrap(), Reservation::Taken);
    let a = store.create_app(app(200, None)).await.unwrap();
    let mut keyed = publish(&a.id, &[], None, 200);
    keyed.idempotency = Some(answer("k4", 9, 200));
    store.publish(keyed).await.unwrap();
    assert_eq!(
        store.reserve_idempotency_key("k4", [9; 32], [8; 16], 201, 0, 0).await.unwrap(),
        Reservation::Answered(answer("k4", 9, 200))
    );
    delete_app(store, &a.id).await.unwrap();
}

/// The application and its configuration go in one commit; its messages, deliveries,
/// attempts and statistics in steps after it, whoever takes the walk up (here a step of one
/// row at a time); another application's stay.
async fn deleting_an_app_removes_everything(store: &dyn Store, node: i64) {
    let a = store.create_app(app(7_000, None)).await.unwrap();
    let kept = store.create_app(app(7_000, None)).await.unwrap();
    let ep = store.create_endpoint(endpoint(&a.id, 7_000)).await.unwrap();
    let kept_ep = store.create_endpoint(endpoint(&kept.id, 7_000)).await.unwrap();
    let published: Vec<Publish> = (0..3).map(|i| publish(&a.id, &[&ep.id], None, 7_001 + i)).collect();
    for p in &published {
        store.publish(p.clone()).await.unwrap();
    }
    finish(store, node, &published[0], DeliveryState::Pending, 7_005).await;
    // A lane: its head due, one waiting behind it.
    let lane = [ordered(&a.id, &ep.id, "pay_gone", 7_006), ordered(&a.id, &ep.id, "pay_gone", 7_007)];
    for p in &lane {
        store.publish(p.clone()).await.unwrap();
    }
    assert_eq!(
        [state_of(store, &lane[0]).await, state_of(store, &lane[1]).await],
        [DeliveryState::Pending, DeliveryState::Waiting]
    );
    let other = publish(&kept.id, &[&kept_ep.id], None, 7_001);
    store.publish(other.clone()).await.unwrap();
    let rows = [stat(&ep.id, &a.id, 0, 1, 0, 10), stat(&ep.id, &a.id, 60_000, 1, 0, 10)];
    store.add_stats(rows.to_vec()).await.unwrap();

    store.delete_app(&a.id).await.unwrap();
    assert_eq!(store.get_app(&a.id).await, Err(StoreError::NotFound));
    assert_eq!(store.get_endpoint(&a.id, &ep.id).await, Err(StoreError::NotFound));
    assert_eq!(store.deleted_apps().await.unwrap(), vec![(a.id.clone(), 0)], "marked for its walk");
    assert_eq!(store.delete_app(&a.id).await, Err(StoreError::NotFound));
    // Its due deliveries are closed by the next claim, not claimed, and leave the due work.
    let claim = || ClaimDue {
        token: node,
        horizon: UnixMs::MAX / 2,
        now: 10_000_000,
        window: 1_000,
        limit: 1_000,
        behind: Vec::new(),
    };
    let claimed = store.claim_due(claim()).await.unwrap();
    assert!(!claimed.deliveries.iter().any(|d| d.app_id == a.id), "not claimed");
    assert_eq!((claimed.closed, claimed.taken()), (4, 4 + claimed.deliveries.len()), "closed, and counted as taken");
    assert_eq!(state_of(store, &published[1]).await, DeliveryState::Canceled);
    assert_eq!(store.claim_due(claim()).await.unwrap().closed, 0, "closed once");
    assert_eq!(
        crate::sweep_stalled_lanes(store, 10_000_001, 2).await.unwrap(),
        0,
        "its lanes are not moved on to be closed again"
    );
    let mut steps = 0;
    while store.purge_deleted_app(&a.id, 1).await.unwrap() {
        steps += 1;
        assert_eq!(store.deleted_apps().await.unwrap(), vec![(a.id.clone(), steps)], "each step counts itself");
    }
    assert_eq!(steps, 7, "five messages and two statistics rows, one a step");
    assert!(store.deleted_apps().await.unwrap().is_empty());
    for p in published.iter().chain(&lane) {
        assert_eq!(store.get_message(&a.id, &p.message.id).await, Err(StoreError::NotFound));
        assert_eq!(store.get_delivery(&p.message.id, &p.deliveries[0].id).await, Err(StoreError::NotFound));
    }
    assert!(!claim_all(store, node, 10_000_000).await.iter().any(|d| d.app_id == a.id));
    assert!(store.stats_of(StatScope::EndpointsOf(&a.id), 0, 120_000).await.unwrap().is_empty());
    assert_eq!(store.get_message(&kept.id, &other.message.id).await.unwrap().id, other.message.id);
    delete_app(store, &kept.id).await.unwrap();
    assert!(store.deleted_apps().await.unwrap().is_empty(), "nothing left to walk");
}

fn stat(scope: &str, app_id: &str, bucket: UnixMs, succeeded: u64, failed: u64, slow_ms: u64) -> StatRow {
    let mut counts = StatCounts::default();
    (0..succeeded).for_each(|_| counts.record_attempt(true, 40));
    (0..failed).for_each(|_| counts.record_attempt(false, slow_ms));
    StatRow { scope: scope.into(), app_id: app_id.into(), width_ms: MINUTE_MS, bucket, counts }
}

async fn statistics_add_up_roll_up_and_expire(store: &dyn Store) {
    const DAY: UnixMs = 24 * HOUR_MS;
    let t0 = 400 * DAY;
    let a = store.create_app(app(t0, None)).await.unwrap();
    let e1 = store.create_endpoint(endpoint(&a.id, t0)).await.unwrap();
    let e2 = store.create_endpoint(endpoint(&a.id, t0)).await.unwrap();
    let source = "src_0000000000000000000000";
    store
        .add_stats(vec![
            stat(&e1.id, &a.id, t0, 3, 1, 2_000),
            stat(&e1.id, &a.id, t0 + MINUTE_MS, 0, 2, 20_000),
            stat(&e2.id, &a.id, t0, 5, 0, 0),
            stat(source, &a.id, t0, 1, 0, 0),
            stat(&e1.id, &a.id, t0 - 100 * DAY, 7, 0, 0),
        ])
        .await
        .unwrap();
    // Adding to an existing bucket sums into it.
    store.add_stats(vec![stat(&e1.id, &a.id, t0, 1, 1, 60)]).await.unwrap();
    let e1_rows = store.stats_of(StatScope::One(&e1.id), t0, t0 + HOUR_MS).await.unwrap();
    assert_eq!(e1_rows.len(), 2);
    assert_eq!((e1_rows[0].bucket, e1_rows[0].counts.succeeded, e1_rows[0].counts.failed), (t0, 4, 2));
    assert_eq!(e1_rows[0].counts.latency, [4, 1, 0, 0, 0, 1, 0, 0], "40 ms ×4, 60 ms, 2 s");
    assert_eq!(e1_rows[1].counts.latency[7], 2, "over 10 s lands in the last bucket");
    let app_rows = store.stats_of(StatScope::EndpointsOf(&a.id), t0, t0 + HOUR_MS).await.unwrap();
    let mut scopes: Vec<&str> = app_rows.iter().map(|r| r.scope.as_str()).collect();
    scopes.sort();
    let mut expected = vec![e1.id.as_str(), e1.id.as_str(), e2.id.as_str()];
    expected.sort();
    assert_eq!(scopes, expected, "an application's series holds its endpoints, not its sources");
    assert_eq!(store.stats_of(StatScope::One(source), t0, t0 + 1).await.unwrap()[0].counts.succeeded, 1);
    // Every application's endpoints, but not the operational application's nor sources.
    store.add_stats(vec![stat("ep_00000000000000operational", OPERATIONAL_APP_ID, t0, 9, 9, 0)]).await.unwrap();
    let all_rows = store.stats_of(StatScope::Endpoints, t0, t0 + HOUR_MS).await.unwrap();
    let mut scopes: Vec<&str> = all_rows.iter().map(|r| r.scope.as_str()).collect();
    scopes.sort();
    assert_eq!(scopes, expected, "every endpoint's series, without sources and operational endpoints");

    // Minutes older than the cut roll up into their hours, a few rows at a time; rows older
    // than the retention go.
    let mut handled = 0;
    loop {
        let n = store.roll_up_stats(t0 + HOUR_MS, t0 - 90 * DAY, 2).await.unwrap();
        if n == 0 {
            break;
        }
        handled += n;
    }
    assert_eq!(handled, 6 + 1, "six minute rows rolled up, one old hour row dropped");
    let hours = store.stats_of(StatScope::One(&e1.id), 0, t0 + HOUR_MS).await.unwrap();
    assert_eq!(hours.len(), 1, "{hours:?}");
    let hour = &hours[0];
    assert_eq!((hour.width_ms, hour.bucket, hour.counts.succeeded, hour.counts.failed), (HOUR_MS, t0, 4, 4));
    assert_eq!(hour.counts.latency, [4, 1, 0, 0, 0, 1, 0, 2]);
    assert_eq!(hour.app_id, a.id);
    let e2_hour = store.stats_of(StatScope::One(&e2.id), t0, t0 + HOUR_MS).await.unwrap();
    assert_eq!((e2_hour.len(), e2_hour[0].width_ms, e2_hour[0].counts.succeeded), (1, HOUR_MS, 5));

    // Deliveries by state, for messages created in the range.
    let p = publish(&a.id, &[&e1.id], None, t0 + 5);
    store.publish(p).await.unwrap();
    let counts = store.delivery_counts(&e1.id, t0, t0 + 10).await.unwrap();
    assert_eq!(counts, vec![(DeliveryState::Pending, 1)]);
    assert!(store.delivery_counts(&e1.id, t0 + 10, t0 + 20).await.unwrap().is_empty());
    assert!(store.delivery_counts(&e2.id, t0, t0 + 10).await.unwrap().is_empty());

    // An application's statistics go with it.
    delete_app(store, &a.id).await.unwrap();
    assert!(store.stats_of(StatScope::EndpointsOf(&a.id), 0, UnixMs::MAX).await.unwrap().is_empty());
    assert!(store.stats_of(StatScope::One(source), 0, UnixMs::MAX).await.unwrap().is_empty());
}

/// A delivery left with nowhere to go is closed and frees its ordering lane. A backend's
/// own test passes `forget`, which deletes a row (`table`, `id`) behind the store's back,
/// as a retention pass or deletion on another node that raced the write opening the
/// delivery leaves it (only PostgreSQL can; SQLite's single writer cannot).
pub async fn stranded_deliveries_are_closed<F: AsyncFn(&'static str, &str)>(store: &dyn Store, forget: F) {
    use DeliveryState::{Canceled, Pending, Waiting};
    let t = 80_000_000;
    let node = store.register_node("stranded", t, LONG_LEASE_MS).await.unwrap().token;
    let a = store.create_app(app(t, None)).await.unwrap();
    let ep = store.create_endpoint(endpoint(&a.id, t)).await.unwrap();
    let (head, next) = (ordered(&a.id, &ep.id, "pay_1", t + 1), ordered(&a.id, &ep.id, "pay_1", t + 2));
    for p in [&head, &next] {
        store.publish(p.clone()).await.unwrap();
    }
    assert!(claim_all(store, node, t + 3).await.iter().any(|d| d.msg_id == head.message.id));
    let close = async |p: &Publish, now| store.close_stranded(&p.message.id, &p.deliveries[0].id, now).await.unwrap();
    assert!(!close(&head, t + 4).await, "a delivery with its message, app and endpoint is not stranded");
    assert!(!store.close_stranded(&head.message.id, "dlv_unknown", t + 4).await.unwrap());
    assert_eq!([state_of(store, &head).await, state_of(store, &next).await], [Pending, Waiting]);

    // The head's message is gone: the head goes, and the next in the lane is due. Until
    // then a listing of the endpoint's deliveries shows it without its message (as when
    // retention deletes a message between the listing's statements; it was a 404 for the
    // endpoint), so the page's cursor still moves past it.
    forget("messages", &head.message.id).await;
    let listed = store.deliveries_of_endpoint(&a.id, &ep.id, ListFilter::default(), first_page(10)).await.unwrap();
    let shown: Vec<_> = listed.items.iter().map(|v| (v.delivery.msg_id.clone(), v.message.is_some())).collect();
    let mut expected = vec![(head.message.id.clone(), false), (next.message.id.clone(), true)];
    expected.sort();
    let mut shown_sorted = shown.clone();
    shown_sorted.sort();
    assert_eq!(shown_sorted, expected, "{shown:?}");
    assert!(close(&head, t + 5).await);
    let gone = store.get_delivery(&head.message.id, &head.deliveries[0].id).await;
    assert!(matches!(gone, Err(StoreError::NotFound)), "{gone:?}");
    let next_now = store.get_delivery(&next.message.id, &next.deliveries[0].id).await.unwrap();
    assert_eq!((next_now.state, next_now.next_at), (Pending, Some(t + 5)));
    assert!(!close(&head, t + 6).await, "closed once");

    // An endpoint deleted while a publish to it committed: its delivery is canceled, as
    // the deletion would have made it.
    let doomed = store.create_endpoint(endpoint(&a.id, t)).await.unwrap();
    let to_doomed = publish(&a.id, &[&doomed.id], None, t + 7);
    store.publish(to_doomed.clone()).await.unwrap();
    forget("endpoints", &doomed.id).await;
    assert!(close(&to_doomed, t + 8).await);
    assert_eq!(state_of(store, &to_doomed).await, Canceled);

    // An application deleted the same way: its delivery goes.
    let other = store.create_app(app(t, None)).await.unwrap();
    let other_ep = store.create_endpoint(endpoint(&other.id, t)).await.unwrap();
    let orphan = publish(&other.id, &[&other_ep.id], None, t + 9);
    store.publish(orphan.clone()).await.unwrap();
    forget("apps", &other.id).await;
    assert!(close(&orphan, t + 10).await);
    assert!(store.get_delivery(&orphan.message.id, &orphan.deliveries[0].id).await.is_err());
}

/// A publish to `ep` in the lane `key` (as the engine routes it: waiting).
pub fn ordered(app_id: &str, ep: &str, key: &str, now: UnixMs) -> Publish {
    let mut p = publish(app_id, &[ep], None, now);
    std::sync::Arc::get_mut(&mut p.message).unwrap().ordering_key = Some(key.into());
    for d in &mut p.deliveries {
        d.order_key = Some(key.into());
        d.state = DeliveryState::Waiting;
        d.next_at = None;
    }
    p
}

/// Deletes the application and walks its rows away.
async fn delete_app(store: &dyn Store, app_id: &str) -> StoreResult<()> {
    store.delete_app(app_id).await?;
    crate::purge_deleted_app(store, app_id).await
}

/// A recover of the window, walked two deliveries a step (so that tests cross steps).
async fn recover(
    store: &dyn Store,
    app_id: &str,
    endpoint_id: &str,
    since: UnixMs,
    until: UnixMs,
    now: UnixMs,
) -> usize {
    let recovery = Recovery { app_id: app_id.into(), endpoint_id: endpoint_id.into(), since, until, now };
    crate::recover_endpoint(store, &recovery, 2).await.unwrap()
}

async fn state_of(store: &dyn Store, p: &Publish) -> DeliveryState {
    store.get_delivery(&p.message.id, &p.deliveries[0].id).await.unwrap().state
}

/// The record of an attempt of a publish's first delivery, claimed by `node`, ending in
/// `state` (a retry a second later when `Pending`).
pub fn attempt_record(p: &Publish, state: DeliveryState, at: UnixMs, node: i64) -> AttemptRecord {
    let d = &p.deliveries[0];
    let delivered = state == DeliveryState::Delivered;
    AttemptRecord {
        attempt: Attempt {
            id: id(prefix::ATTEMPT, at),
            msg_id: d.msg_id.clone(),
            app_id: d.app_id.clone(),
            delivery_id: d.id.clone(),
            endpoint_id: d.endpoint_id.clone(),
            url: "https://merchant.example/hooks".into(),
            status_code: if delivered { 200 } else { 500 },
            response: String::new(),
            duration_ms: 5,
            error_class: None,
            state: if delivered { state } else { DeliveryState::Exhausted },
            trigger: Trigger::Scheduled,
            created_at: at,
        },
        state,
        next_at: (state == DeliveryState::Pending).then_some(at + 1_000),
        first_attempt_at: at,
        disable_endpoint: false,
        disable_after_ms: 0,
        claim: node,
        keep_claim: false,
    }
}

/// Ends a claimed delivery's attempt in `state`.
async fn finish(store: &dyn Store, node: i64, p: &Publish, state: DeliveryState, now: UnixMs) -> Recorded {
    store.record_attempt(attempt_record(p, state, now, node)).await.unwrap()
}

/// The sweep of stalled lanes reads `chunk` lanes a statement, each lane one seek however
/// many deliveries wait in it, and makes the heads of the stalled ones due.
async fn the_lane_sweep_walks_the_lanes_in_steps(store: &dyn Store, node: i64) {
    use DeliveryState::{Delivered, Pending, Waiting};
    let t = 60_000_000;
    let a = store.create_app(app(t, None)).await.unwrap();
    let ep = store.create_endpoint(endpoint(&a.id, t)).await.unwrap();
    let mut lanes = Vec::new();
    for (n, key) in ["k0", "k1", "k2", "k3", "k4"].into_iter().enumerate() {
        let lane: Vec<Publish> = (0..3).map(|i| ordered(&a.id, &ep.id, key, t + 10 * n as i64 + i)).collect();
        for p in &lane {
            store.publish(p.clone()).await.unwrap();
        }
        lanes.push(lane);
    }
    let heads: Vec<String> = lanes.iter().map(|lane| lane[0].message.id.clone()).collect();
    let claimed = claim_all(store, node, t + 100).await;
    assert_eq!(claimed.iter().filter(|d| heads.contains(&d.msg_id)).count(), 5, "each lane's head is due");
    // Three heads done with nobody moving their lanes on (a node died in between).
    for n in [1, 3, 4] {
        finish(store, node, &lanes[n][0], Delivered, t + 101).await;
    }
    let first = store.waiting_lanes((String::new(), String::new()), 2).await.unwrap();
    let mine = |lanes: &[(String, String, bool)]| -> Vec<(String, bool)> {
        lanes.iter().filter(|(e, _, _)| *e == ep.id).map(|(_, k, stalled)| (k.clone(), *stalled)).collect()
    };
    let rest = store.waiting_lanes((ep.id.clone(), "k1".into()), 10).await.unwrap();
    assert_eq!(mine(&rest), [("k2".into(), false), ("k3".into(), true), ("k4".into(), true)]);
    assert!(first.len() == 2 && first.iter().all(|(e, _, _)| e.as_str() <= ep.id.as_str()), "{first:?}");
    assert_eq!(crate::sweep_stalled_lanes(store, t + 102, 1).await.unwrap(), 3, "a lane a step");
    for (n, lane) in lanes.iter().enumerate() {
        let expected = if [1, 3, 4].contains(&n) { [Pending, Waiting] } else { [Waiting, Waiting] };
        assert_eq!([state_of(store, &lane[1]).await, state_of(store, &lane[2]).await], expected, "lane {n}");
    }
    assert_eq!(crate::sweep_stalled_lanes(store, t + 103, 2).await.unwrap(), 0, "none stalled now");
    delete_app(store, &a.id).await.unwrap();
}

async fn ordering_lanes_hold_later_deliveries_back(store: &dyn Store, node: i64) {
    use DeliveryState::{Delivered, Exhausted, Pending, Skipped, Waiting};
    let t = 50_000_000;
    let a = store.create_app(app(t, None)).await.unwrap();
    let ep = store.create_endpoint(endpoint(&a.id, t)).await.unwrap();
    let fifo = store.create_endpoint(Endpoint { fifo: true, ..endpoint(&a.id, t) }).await.unwrap();
    assert!(store.get_endpoint(&a.id, &fifo.id).await.unwrap().fifo);
    let p1 = ordered(&a.id, &ep.id, "pay_1", t + 1);
    let p2 = ordered(&a.id, &ep.id, "pay_1", t + 2);
    let p3 = ordered(&a.id, &ep.id, "pay_1", t + 3);
    let other = ordered(&a.id, &ep.id, "pay_2", t + 4);
    let free = publish(&a.id, &[&ep.id], None, t + 5);
    for p in [&p1, &p2, &p3, &other, &free] {
        assert!(matches!(store.publish(p.clone()).await.unwrap(), PublishOutcome::Created));
    }
    let stored = store.get_message(&a.id, &p1.message.id).await.unwrap();
    assert_eq!(stored.ordering_key.as_deref(), Some("pay_1"));
    // Each lane's first delivery is due; the rest of a lane waits; other lanes and
    // messages without a key never wait.
    assert_eq!(
        [state_of(store, &p1).await, state_of(store, &p2).await, state_of(store, &p3).await],
        [Pending, Waiting, Waiting]
    );
    assert_eq!(state_of(store, &other).await, Pending);
    let claimed: Vec<String> =
        claim_all(store, node, t + 10).await.into_iter().filter(|d| d.app_id == a.id).map(|d| d.msg_id).collect();
    let mut expected = vec![p1.message.id.clone(), other.message.id.clone(), free.message.id.clone()];
    expected.sort();
    let mut claimed_sorted = claimed.clone();
    claimed_sorted.sort();
    assert_eq!(claimed_sorted, expected, "only the heads and the unordered message are claimed");
    let lanes = store.ordering_lanes(&ep.id, None, 10).await.unwrap();
    assert_eq!(lanes.len(), 1, "only pay_1 has deliveries waiting: {lanes:?}");
    assert_eq!((lanes[0].key.as_str(), lanes[0].waiting), ("pay_1", 2));
    assert_eq!(lanes[0].head.as_ref().map(|d| d.msg_id.as_str()), Some(p1.message.id.as_str()));

    // A failed attempt with a retry to come keeps the lane; a success moves it on.
    finish(store, node, &p1, Pending, t + 11).await;
    assert_eq!(store.promote_lanes(vec![(ep.id.clone(), "pay_1".into())], t + 12).await.unwrap(), 0);
    assert_eq!(state_of(store, &p2).await, Waiting);
    let retry = claim_all(store, node, t + 2_000_000).await;
    assert!(retry.iter().any(|d| d.msg_id == p1.message.id), "the head is retried");
    finish(store, node, &p1, Delivered, t + 13).await;
    assert_eq!(store.promote_lanes(vec![(ep.id.clone(), "pay_1".into())], t + 14).await.unwrap(), 1);
    let p2_now = store.get_delivery(&p2.message.id, &p2.deliveries[0].id).await.unwrap();
    assert_eq!((p2_now.state, p2_now.next_at), (Pending, Some(t + 14)));
    assert_eq!(state_of(store, &p3).await, Waiting);
    // Promoting again does nothing: the lane has its open delivery.
    assert_eq!(crate::sweep_stalled_lanes(store, t + 15, 2).await.unwrap(), 0);

    // An exhausted head lets the next go, too.
    let still_claimed =
        async |p: &Publish, claim: i64| store.still_claimed(&p.message.id, &p.deliveries[0].id, claim).await.unwrap();
    assert!(!still_claimed(&p2, node).await, "promoted, not yet claimed");
    assert!(claim_all(store, node, t + 20).await.iter().any(|d| d.msg_id == p2.message.id));
    assert!(still_claimed(&p2, node).await);
    assert!(!still_claimed(&p2, node + 1).await, "under another claim");
    finish(store, node, &p2, Exhausted, t + 21).await;
    assert!(!still_claimed(&p2, node).await, "closed");
    assert_eq!(crate::sweep_stalled_lanes(store, t + 22, 2).await.unwrap(), 1, "the sweep finds the lane");
    assert_eq!(state_of(store, &p3).await, Pending);

    // An operator skips the head: the one behind it goes ahead.
    let p4 = ordered(&a.id, &ep.id, "pay_1", t + 30);
    store.publish(p4.clone()).await.unwrap();
    assert_eq!(state_of(store, &p4).await, Waiting);
    let skipped = store.skip_delivery(&a.id, &p3.message.id, &ep.id, t + 31).await.unwrap();
    assert_eq!(skipped.state, Skipped);
    assert_eq!(state_of(store, &p4).await, Pending, "skipping the head moves the lane on");
    let done = store.skip_delivery(&a.id, &p1.message.id, &ep.id, t + 32).await.unwrap();
    let elsewhere = store.skip_delivery("app_other", &p4.message.id, &ep.id, t + 32).await;
    assert_eq!(elsewhere, Err(StoreError::NotFound), "no skip across applications");
    assert_eq!(state_of(store, &p4).await, Pending);
    assert_eq!(done.state, Delivered, "a delivery already done is left as it is");

    // Recovering the exhausted and the skipped ones puts them back in the lane at their
    // places: they wait behind the open head, then go before the later ones.
    assert_eq!(recover(store, &a.id, &ep.id, t, t + 100, t + 40).await, 2);
    assert_eq!([state_of(store, &p2).await, state_of(store, &p3).await], [Waiting, Waiting]);
    let lane = store.ordering_lanes(&ep.id, Some("pay_1"), 10).await.unwrap();
    assert_eq!(lane[0].waiting, 2);
    assert_eq!(lane[0].head.as_ref().map(|d| d.msg_id.as_str()), Some(p4.message.id.as_str()));
    assert!(claim_all(store, node, t + 41).await.iter().any(|d| d.msg_id == p4.message.id));
    finish(store, node, &p4, Delivered, t + 42).await;
    crate::sweep_stalled_lanes(store, t + 43, 2).await.unwrap();
    assert_eq!([state_of(store, &p2).await, state_of(store, &p3).await], [Pending, Waiting], "p2 was published first");

    // A resend of a delivered message waits in its lane too.
    let resent = store.resend(&a.id, &p1.message.id, &ep.id, id(prefix::DELIVERY, t), t + 44, node).await.unwrap();
    assert_eq!((resent.state, resent.order_key.as_deref()), (Waiting, Some("pay_1")));
    // One still open in its lane (the head, or one waiting) is not restarted: it would be
    // sent beside the copy under way, or out of its turn.
    for open in [&p2, &p3] {
        let again = store.resend(&a.id, &open.message.id, &ep.id, id(prefix::DELIVERY, t), t + 45, node).await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    }
    assert_eq!([state_of(store, &p2).await, state_of(store, &p3).await], [Pending, Waiting]);

    // A head scheduled for later (`deliverAt`) is made due then, not at its promotion.
    let mut scheduled = ordered(&a.id, &ep.id, "pay_3", t + 46);
    scheduled.deliveries[0].next_at = Some(t + 5_000);
    store.publish(scheduled.clone()).await.unwrap();
    let head = store.get_delivery(&scheduled.message.id, &scheduled.deliveries[0].id).await.unwrap();
    assert_eq!((head.state, head.next_at), (Pending, Some(t + 5_000)));
    let soon = claim(store, node, t + 100, t + 47, 100).await;
    assert!(!soon.iter().any(|d| d.msg_id == scheduled.message.id), "not due before its time");

    // A FIFO endpoint orders every message, keyed or not, in one lane.
    let f1 = publish(&a.id, &[&fifo.id], None, t + 50);
    let f2 = publish(&a.id, &[&fifo.id], None, t + 51);
    for p in [&f1, &f2] {
        let mut p = p.clone();
        for d in &mut p.deliveries {
            d.order_key = Some(String::new());
            d.state = Waiting;
            d.next_at = None;
        }
        store.publish(p).await.unwrap();
    }
    assert_eq!([state_of(store, &f1).await, state_of(store, &f2).await], [Pending, Waiting]);
    let fifo_lane = store.ordering_lanes(&fifo.id, Some(""), 10).await.unwrap();
    assert_eq!((fifo_lane[0].key.as_str(), fifo_lane[0].waiting), ("", 1));
}

/// A publish to many endpoints, claimed by the node that commits it (the SQLite backend
/// keeps it as one row until its deliveries are attempted or read): each delivery is
/// attempted, fenced, read, counted, resent, closed with its endpoint, deleted with its
/// application and taken over when its node dies, exactly as a delivery of its own row.
async fn a_fan_out_is_read_attempted_and_taken_over_delivery_by_delivery(store: &dyn Store) {
    use DeliveryState::*;
    let a = store.create_app(app(90_000, None)).await.unwrap();
    let mut eps = Vec::new();
    for _ in 0..6 {
        eps.push(store.create_endpoint(endpoint(&a.id, 90_000)).await.unwrap());
    }
    let all: Vec<&str> = eps.iter().map(|e| e.id.as_str()).collect();
    let node = store.register_node("fan-out-a", 90_000, 30_000).await.unwrap().token;
    let open_before = store.count_open_deliveries().await.unwrap();
    let fan_out = |endpoints: &[&str], at: UnixMs| {
        let mut p = publish(&a.id, endpoints, None, at);
        p.claim = Some(node);
        p
    };
    let p = fan_out(&all, 90_001);
    store.publish(p.clone()).await.unwrap();
    // `finish` acts on a publish's first delivery.
    let nth = |n: usize| Publish { deliveries: vec![p.deliveries[n].clone()], ..p.clone() };
    let get = |n: usize| store.get_delivery(&p.message.id, &p.deliveries[n].id);

    // Attempts recorded before anything read the deliveries.
    assert!(finish(store, node, &nth(0), Delivered, 90_010).await.applied);
    assert!(finish(store, node, &nth(1), Pending, 90_011).await.applied, "a retry, given back to the store");
    assert!(!finish(store, node + 1_000, &nth(2), Delivered, 90_012).await.applied, "fenced: not its claim");
    assert!(!finish(store, node, &nth(1), Delivered, 90_013).await.applied, "given back: not held any more");
    // Counted and listed first (the lookups below would write the fan-out out on SQLite).
    assert_eq!(store.count_open_deliveries().await.unwrap(), open_before + 5);
    let d = get(0).await.unwrap();
    assert_eq!((d.state, d.attempts, d.first_attempt_at), (Delivered, 1, Some(90_010)));
    let d = get(1).await.unwrap();
    assert_eq!((d.state, d.attempts, d.next_at), (Pending, 1, Some(91_011)));
    let d = get(2).await.unwrap();
    assert_eq!((d.state, d.attempts, d.next_at), (Pending, 0, Some(90_001)), "a fenced write changes nothing");
    let listed = store.deliveries_of_message(&a.id, &p.message.id, first_page(50)).await.unwrap();
    let mut listed: Vec<(String, DeliveryState)> =
        listed.items.into_iter().map(|v| (v.delivery.id, v.delivery.state)).collect();
    listed.sort_by(|x, y| x.0.cmp(&y.0));
    let mut expected: Vec<(String, DeliveryState)> = p
        .deliveries
        .iter()
        .enumerate()
        .map(|(n, d)| (d.id.clone(), if n == 0 { Delivered } else { Pending }))
        .collect();
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(listed, expected, "every delivery listed, in its state");

    // A later fan-out: its endpoint's deletion closes its delivery; a resend restarts one.
    let q = fan_out(&all, 90_100);
    store.publish(q.clone()).await.unwrap();
    crate::delete_endpoint(store, &a.id, &eps[3].id, crate::WALK_CHUNK).await.unwrap();
    let closed = store.get_delivery(&q.message.id, &q.deliveries[3].id).await.unwrap();
    assert_eq!(closed.state, Canceled, "open deliveries to a deleted endpoint are closed");
    let r = fan_out(&all, 90_200);
    store.publish(r.clone()).await.unwrap();
    let resent = store.resend(&a.id, &r.message.id, &eps[4].id, id(prefix::DELIVERY, 90_300), 90_300, node).await;
    let resent = resent.unwrap();
    assert_eq!((resent.id.as_str(), resent.trigger), (r.deliveries[4].id.as_str(), Trigger::Manual));
    let u = fan_out(&all, 90_300);
    store.publish(u.clone()).await.unwrap();
    let skipped = store.skip_delivery(&a.id, &u.message.id, &eps[0].id, 90_301).await.unwrap();
    assert_eq!((skipped.id.as_str(), skipped.state), (u.deliveries[0].id.as_str(), Skipped), "an operator's skip");

    // A fan-out nothing has read or attempted yet, published (late, from a node that does
    // not know its lease has ended) less than two seconds before the other node claims:
    // that node takes over every open delivery of the dead node's fan-outs.
    let s = fan_out(&all, 129_500);
    store.publish(s.clone()).await.unwrap();
    let next = store.register_node("fan-out-b", 130_001, 30_000).await.unwrap().token;
    let mut taken: Vec<String> =
        claim_all(store, next, 130_001).await.into_iter().filter(|d| d.app_id == a.id).map(|d| d.id).collect();
    taken.sort();
    let open_to_a_live_endpoint = |d: &&Delivery| d.endpoint_id.as_deref() != Some(eps[3].id.as_str());
    let mut expected: Vec<String> = p.deliveries[1..]
        .iter()
        .chain(q.deliveries.iter())
        .filter(open_to_a_live_endpoint)
        .chain(r.deliveries.iter())
        .chain(u.deliveries[1..].iter())
        .chain(s.deliveries.iter())
        .map(|d| d.id.clone())
        .collect();
    expected.sort();
    assert_eq!(taken, expected, "every open delivery of the dead node's fan-outs is claimed");

    // An application deleted with a fan-out nothing has touched leaves nothing behind.
    let t = Publish { claim: Some(next), ..fan_out(&all, 130_100) };
    store.publish(t.clone()).await.unwrap();
    delete_app(store, &a.id).await.unwrap();
    assert_eq!(store.get_delivery(&t.message.id, &t.deliveries[0].id).await, Err(StoreError::NotFound));
    assert!(!claim_all(store, next, 130_200).await.iter().any(|d| d.app_id == a.id));
}

/// A claim defers the due work of a lane the node reports behind (unordered deliveries
/// only), so the next batch reaches other endpoints' work; deferred deliveries read as
/// pending, count as open, are listed and counted as pending, come back by their lane in
/// due order, and are skipped and canceled like pending ones.
async fn a_lane_behind_defers_its_due_work(store: &dyn Store) {
    let now = 90_000;
    let a = store.create_app(app(now, None)).await.unwrap();
    let slow = store.create_endpoint(endpoint(&a.id, now)).await.unwrap();
    let quick = store.create_endpoint(endpoint(&a.id, now)).await.unwrap();
    let node = store.register_node("node-d", now, LONG_LEASE_MS).await.unwrap().token;
    claim_all(store, node, now).await;
    let open = store.count_open_deliveries().await.unwrap();
    let to_slow: Vec<Publish> = (0..3).map(|n| publish(&a.id, &[&slow.id], None, now + n)).collect();
    let mut ordered = publish(&a.id, &[&slow.id], None, now + 3);
    ordered.deliveries[0].order_key = Some("pay_1".into());
    ordered.deliveries[0].state = DeliveryState::Waiting;
    ordered.deliveries[0].next_at = None;
    let to_quick = publish(&a.id, &[&quick.id], None, now + 4);
    for p in to_slow.iter().chain([&ordered, &to_quick]) {
        store.publish(p.clone()).await.unwrap();
    }
    let id_of = |p: &Publish| p.deliveries[0].id.clone();
    let ids = |found: &[Delivery]| found.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
    let lane = DeferredLane { app_id: a.id.clone(), endpoint_id: Some(slow.id.clone()) };
    let behind = |window, limit| ClaimDue {
        token: node,
        horizon: now + 100,
        now: now + 10,
        window,
        limit,
        behind: vec![slow.id.clone()],
    };
    let first = store.claim_due(behind(2, 2)).await.unwrap();
    assert_eq!((first.deliveries.len(), first.deferred), (0, 2), "the two earliest, both the slow endpoint's");
    assert_eq!(first.deferred_lanes, vec![lane.clone()]);
    let second = store.claim_due(behind(3, 1)).await.unwrap();
    let claimed = (ids(&second.deliveries), second.deferred);
    assert_eq!(claimed, (vec![id_of(&ordered)], 1), "an ordered head is claimed, not deferred; one claimed at most");
    let third = claim(store, node, now + 100, now + 10, 10).await;
    assert_eq!(ids(&third), vec![id_of(&to_quick)], "left for the limit, claimed by the next claim");
    assert_eq!(store.count_open_deliveries().await.unwrap(), open + 5, "deferred deliveries are open");
    let deferred = store.get_delivery(&to_slow[2].message.id, &id_of(&to_slow[2])).await.unwrap();
    assert_eq!((deferred.state, deferred.next_at), (DeliveryState::Pending, Some(now + 2)));
    let counts = store.delivery_counts(&slow.id, 0, now + 1_000).await.unwrap();
    let pending: u64 = counts.iter().filter(|(s, _)| *s == DeliveryState::Pending).map(|(_, n)| n).sum();
    assert_eq!(pending, 4, "three deferred and the ordered head read as pending");
    let filter = ListFilter { status: Some(DeliveryState::Pending), ..Default::default() };
    let listed = store.deliveries_of_endpoint(&a.id, &slow.id, filter, first_page(10)).await.unwrap();
    assert_eq!(listed.items.len(), 4, "deferred deliveries are listed as pending");

    assert!(store.deferred_lanes(None, 1_000).await.unwrap().contains(&lane));
    let after = store.deferred_lanes(Some(lane.clone()), 1_000).await.unwrap();
    assert!(!after.contains(&lane), "a walk goes on after the lane it was given: {after:?}");
    let back = store.claim_deferred(node, lane.clone(), now + 20, 2).await.unwrap();
    assert_eq!(ids(&back), vec![id_of(&to_slow[0]), id_of(&to_slow[1])], "in due order");
    assert!(claim(store, node, now + 100, now + 20, 10).await.is_empty(), "claimed again by their lane only");
    let skipped = store.skip_delivery(&a.id, &to_slow[2].message.id, &slow.id, now + 30).await.unwrap();
    assert_eq!(skipped.state, DeliveryState::Skipped, "a deferred delivery can be skipped");
    assert!(!store.deferred_lanes(None, 1_000).await.unwrap().contains(&lane));

    let last = publish(&a.id, &[&slow.id], None, now + 40);
    store.publish(last.clone()).await.unwrap();
    let taken = store.claim_due(ClaimDue { now: now + 40, ..behind(10, 10) }).await.unwrap();
    assert_eq!((taken.deliveries.len(), taken.deferred), (0, 1));
    crate::delete_endpoint(store, &a.id, &slow.id, crate::WALK_CHUNK).await.unwrap();
    let canceled = store.get_delivery(&last.message.id, &id_of(&last)).await.unwrap();
    assert_eq!(canceled.state, DeliveryState::Canceled, "a deleted endpoint's deferred delivery is canceled");
    assert!(store.claim_deferred(node, lane, now + 50, 10).await.unwrap().is_empty());
}

/// The alert outbox: an endpoint flapping fills no queue (its newest state waits alone);
/// one application's burst never pushes out another's; a taken email is held from other
/// takers, and comes back when its try fails or its taker is gone.
async fn alert_emails_wait_durably_one_per_endpoint_state(store: &dyn Store) {
    let t = 90_000_000;
    let email = |app: &str, about: Option<&str>, subject: &str, now: UnixMs| AlertEmail {
        id: id("eml", now),
        app_id: app.into(),
        about: about.map(str::to_owned),
        to: "ops@merchant.example".into(),
        subject: subject.into(),
        body: "body".into(),
        tries: 0,
        not_before: now,
    };
    let subjects = |emails: &[AlertEmail]| emails.iter().map(|e| e.subject.clone()).collect::<Vec<_>>();
    assert_eq!(store.queue_alert_email(email("app_b", Some("ep_b"), "b disabled", t), 3, 10).await.unwrap(), 0);
    for n in 0..5 {
        let state = if n % 2 == 0 { "disabled" } else { "enabled" };
        let queued = email("app_a", Some("ep_a"), &format!("a {state} {n}"), t + 1 + n);
        assert_eq!(store.queue_alert_email(queued, 3, 10).await.unwrap(), 0, "a replaced one is not pushed out");
    }
    // Taken, oldest first, and held from the next take.
    let taken = store.take_alert_emails(t + 10, 60_000, 10).await.unwrap();
    assert_eq!(subjects(&taken), ["b disabled", "a disabled 4"], "the newest state of each endpoint");
    assert!(store.take_alert_emails(t + 11, 60_000, 10).await.unwrap().is_empty(), "held while being sent");
    // Put again (the answer to its queueing was lost): still held, not due again at once.
    let again = AlertEmail { tries: 0, not_before: t + 5, ..taken[1].clone() };
    store.queue_alert_email(again, 3, 10).await.unwrap();
    assert!(store.take_alert_emails(t + 12, 60_000, 10).await.unwrap().is_empty(), "still held");
    // Sent: gone. Failed: back at its time, with its tries.
    store.alert_email_tried(&taken[0].id, None).await.unwrap();
    store.alert_email_tried(&taken[1].id, Some((1, t + 1_000))).await.unwrap();
    assert!(store.take_alert_emails(t + 999, 60_000, 10).await.unwrap().is_empty());
    let again = store.take_alert_emails(t + 1_000, 60_000, 10).await.unwrap();
    assert_eq!((subjects(&again), again[0].tries), (vec!["a disabled 4".to_owned()], 1));
    // A newer state queued while one is being sent replaces it: the try that failed puts
    // nothing back.
    store.queue_alert_email(email("app_a", Some("ep_a"), "a enabled 5", t + 1_001), 3, 10).await.unwrap();
    store.alert_email_tried(&again[0].id, Some((2, t + 3_000))).await.unwrap();
    let newest = store.take_alert_emails(t + 1_002, 60_000, 10).await.unwrap();
    assert_eq!(subjects(&newest), ["a enabled 5"]);
    // Its taker gone without a word, it is due again when the hold ends.
    assert_eq!(subjects(&store.take_alert_emails(t + 61_002, 60_000, 10).await.unwrap()), ["a enabled 5"]);
    store.alert_email_tried(&newest[0].id, None).await.unwrap();

    // Past its share an application's summaries go before its email about an endpoint's
    // state (summaries piled up while SMTP was down, and pushed out the email saying an
    // endpoint was disabled), oldest first.
    store.queue_alert_email(email("app_a", Some("ep_x"), "a x disabled", t + 1_999), 3, 10).await.unwrap();
    let digest = email("app_b", None, "b digest", t + 2_000);
    store.queue_alert_email(digest.clone(), 3, 10).await.unwrap();
    store.queue_alert_email(digest, 3, 10).await.unwrap(); // put again: its answer was lost
    let mut pushed = 0;
    for n in 0..5 {
        pushed += store
            .queue_alert_email(email("app_a", None, &format!("a digest {n}"), t + 2_001 + n), 3, 10)
            .await
            .unwrap();
    }
    assert_eq!(pushed, 3);
    let waiting = store.take_alert_emails(t + 200_000, 60_000, 100).await.unwrap();
    assert_eq!(subjects(&waiting), ["a x disabled", "b digest", "a digest 3", "a digest 4"]);
    // Past the whole outbox's, the deepest of the applications with most waiting go: three
    // more tenants at their share push out the third of each of theirs and of app_a's, not
    // app_b's one summary or the state email.
    pushed = 0;
    for (n, app) in ["app_c", "app_d", "app_e"].iter().enumerate() {
        for k in 0..3 {
            let queued = email(app, None, &format!("{app} {k}"), t + 3_000 + 10 * n as i64 + k);
            pushed += store.queue_alert_email(queued, 3, 10).await.unwrap();
        }
    }
    assert_eq!(pushed, 3);
    let waiting = store.take_alert_emails(t + 300_000, 60_000, 100).await.unwrap();
    let mut kept = subjects(&waiting);
    kept.sort();
    let expected = ["a digest 4", "a x disabled", "app_c 1", "app_c 2", "app_d 1", "app_d 2", "app_e 0", "app_e 1"];
    assert_eq!(kept, [&expected[..], &["app_e 2", "b digest"]].concat(), "the whole outbox holds at most its size");
    for e in &waiting {
        store.alert_email_tried(&e.id, None).await.unwrap();
    }
    // An application's emails about endpoints' states go before another's only summary
    // when the first has more waiting.
    for n in 0..3 {
        store.queue_alert_email(email("app_a", Some(&format!("ep_{n}")), "state", t + 4_000 + n), 3, 4).await.unwrap();
    }
    store.queue_alert_email(email("app_b", None, "b alone", t + 4_010), 3, 4).await.unwrap();
    pushed = store.queue_alert_email(email("app_c", None, "c alone", t + 4_011), 3, 4).await.unwrap();
    assert_eq!(pushed, 1);
    let waiting = store.take_alert_emails(t + 400_000, 60_000, 100).await.unwrap();
    assert_eq!(subjects(&waiting), ["state", "state", "b alone", "c alone"], "app_a's oldest state went");
    for e in waiting {
        store.alert_email_tried(&e.id, None).await.unwrap();
    }
}

/// Failure digests: every node's counts of an endpoint add up in one digest, which becomes
/// one summary email when due (its gathering pause after the first failure, and a whole
/// window after the last summary), then starts over; a digest quiet for a window is
/// forgotten.
async fn alert_digests_add_up_to_one_summary_per_window(store: &dyn Store) {
    let t = 95_000_000;
    let app_id = store.create_app(app(t, None)).await.unwrap().id;
    let counts = |failing: u64, exhausted: u64, since: UnixMs| AlertDigest {
        endpoint_id: "ep_digest".into(),
        app_id: app_id.clone(),
        to: "ops@merchant.example".into(),
        app: "Acme".into(),
        endpoint: "main".into(),
        url: format!("https://merchant.example/{since}"),
        failing,
        exhausted,
        since: Some(since),
        sent_at: Some(1), // not read
    };
    let take = |now: UnixMs| {
        let render = std::sync::Arc::new(move |d: &AlertDigest| AlertEmail {
            id: id("eml", now),
            app_id: d.app_id.clone(),
            about: None,
            to: d.to.clone(),
            subject: format!("{} failing {} exhausted {}", d.endpoint, d.failing, d.exhausted),
            body: format!("since {} at {}", d.since.unwrap_or(0) - t, d.url),
            tries: 0,
            not_before: now,
        });
        let rules = DigestRules { now, gather_ms: 1_000, digest_ms: 10_000, app_max: 100, all_max: 1_000, render };
        async move { store.take_alert_digests(rules).await.unwrap() }
    };
    let sent = |now: UnixMs| async move {
        let emails = store.take_alert_emails(now, 60_000, 10).await.unwrap();
        for e in &emails {
            store.alert_email_tried(&e.id, None).await.unwrap();
        }
        emails.into_iter().map(|e| (e.subject, e.body)).collect::<Vec<_>>()
    };
    assert_eq!(take(t).await, DigestsTaken::default(), "nothing counted, nothing due");
    // Two nodes' counts add up; the earliest failure stays, the newest names.
    store.count_alert_failures(vec![counts(3, 0, t + 5)]).await.unwrap();
    store.count_alert_failures(vec![counts(2, 1, t + 2)]).await.unwrap();
    let waiting = take(t + 1_001).await;
    assert_eq!((waiting.queued, waiting.next_due), (0, Some(t + 1_002)), "due a gathering pause after the first");
    assert_eq!(take(t + 1_002).await.queued, 1);
    let summary = ("main failing 5 exhausted 1".to_owned(), format!("since 2 at https://merchant.example/{}", t + 2));
    assert_eq!(sent(t + 1_002).await, [summary]);
    // Counted after a summary: the next one waits for the window to end.
    store.count_alert_failures(vec![counts(1, 0, t + 1_500)]).await.unwrap();
    let waiting = take(t + 2_600).await;
    assert_eq!((waiting.queued, waiting.next_due), (0, Some(t + 11_002)), "one summary a window");
    assert_eq!(take(t + 11_002).await.queued, 1);
    assert_eq!(sent(t + 11_002).await.len(), 1);
    assert_eq!(take(t + 11_003).await, DigestsTaken::default(), "started over: nothing to tell");
    // Quiet for a whole window: forgotten, so the next failure is told after the pause.
    assert_eq!(take(t + 21_002).await.next_due, None);
    store.count_alert_failures(vec![counts(0, 4, t + 21_100)]).await.unwrap();
    assert_eq!(take(t + 22_100).await.queued, 1);
    assert_eq!(sent(t + 22_100).await[0].0, "main failing 0 exhausted 4");
    // Deleting the application deletes its digest (an application made again under its id
    // has nothing to tell).
    store.count_alert_failures(vec![counts(3, 0, t + 22_500)]).await.unwrap();
    delete_app(store, &app_id).await.unwrap();
    store.create_app(App { id: app_id.clone(), ..app(t, None) }).await.unwrap();
    assert_eq!(take(t + 40_000).await, DigestsTaken::default(), "deleted with its application");
    // Counts that came after their application was deleted: never told, forgotten.
    delete_app(store, &app_id).await.unwrap();
    store.count_alert_failures(vec![counts(2, 0, t + 41_000)]).await.unwrap();
    assert_eq!(take(t + 60_000).await, DigestsTaken::default(), "nothing told about a deleted application");
    store.create_app(App { id: app_id.clone(), ..app(t, None) }).await.unwrap();
    assert_eq!(take(t + 60_001).await, DigestsTaken::default(), "and forgotten");
    delete_app(store, &app_id).await.unwrap();
}
