//! Reconciliation: catching up on events a provider gave up sending. For a Stripe source
//! with an API key, Hookline lists the provider's events (`GET /v1/events?created[gte]=…`,
//! of the source's event types, page by page, as the `stripe` library's `Event.list`
//! asks) and stores every event it
//! never received, deduplicated against what it has by the same key its webhooks use (the
//! source's event id settings, else the event id). A run reads at most
//! `inbound.reconcile_pages_max` pages; one stopped there is gone on with by the next run.
//! Runs on the leader every `inbound.reconcile_interval_ms`, and on demand through
//! `POST /api/v1/source/{src}/reconcile`.

use crate::api::sources::accept;
use crate::api::AppState;
use crate::wire::{timestamp, ReconcileRunOut};
use hookline_core::inbound::{stripe_event_identity, Preset};
use hookline_store::{Bytes, PublishOutcome, Source};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::time::Duration;

/// Events per page (Stripe's most).
const PAGE_LIMIT: u32 = 100;
/// Pause between pages: 10 requests a second, well under Stripe's limits (25/s in test
/// mode, 100/s live), which the same key may be spending elsewhere.
const PAGE_PAUSE_MS: u64 = 100;
/// A page refused with `429` is asked again after `Retry-After` (or a second), this often.
const RATE_LIMITED_RETRIES: u32 = 5;
/// Event types Stripe's events list filters by at most (`types[]`).
const STRIPE_TYPES_MAX: usize = 20;
/// Events newer than this are left to their webhooks, which are on their way: taken from
/// the API, an event is the API's copy (rendered in the API version it was created with,
/// not the webhook endpoint's), and its webhook a duplicate.
const IN_FLIGHT_MS: i64 = 5 * 60 * 1000;

#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
    has_more: bool,
}

#[derive(Deserialize)]
struct EventHead {
    id: String,
    #[serde(rename = "type")]
    kind: String,
}

/// Where the last run stopped at its page limit, if it did: this run goes on from there.
async fn resume_point(state: &AppState, source: &Source) -> Option<String> {
    let last = state.store.reconcile_runs(&source.id, 1).await.ok()?.into_iter().next()?;
    serde_json::from_str::<ReconcileRunOut>(&last).ok()?.resume_after
}

/// Whether a source can be reconciled: Stripe, with an API key.
pub fn reconcilable(source: &Source) -> bool {
    source.preset == Preset::Stripe && source.api_key.is_some()
}

/// Reconciles one source and keeps the run's result in the store.
pub async fn run(state: &AppState, source: &Source) -> ReconcileRunOut {
    let started = state.now();
    let since = started - state.config.inbound.reconcile_window_ms as i64;
    let mut out = ReconcileRunOut { started_at: timestamp(started), since: timestamp(since), ..Default::default() };
    out.resumed_after = resume_point(state, source).await;
    if let Err(e) = list_and_ingest(state, source, (since, started), &mut out).await {
        tracing::warn!(source = %source.id, error = %e, "reconciliation stopped");
        out.errors.push(e);
        // The next run goes on after the last event this one handled; one that handled
        // none starts over, so a point that fails every time holds no run up for good.
        if out.resume_after == out.resumed_after {
            out.resume_after = None;
        }
    }
    out.finished_at = timestamp(state.now());
    let text = serde_json::to_string(&out).expect("runs serialize");
    if let Err(e) = state.store.save_reconcile_run(&source.id, started, text).await {
        tracing::warn!(source = %source.id, error = %e, "could not keep a reconciliation's result");
    }
    tracing::info!(source = %source.id, found = out.found, ingested = out.ingested, "reconciled");
    out
}

async fn list_and_ingest(
    state: &AppState,
    source: &Source,
    (since, started): (i64, i64),
    out: &mut ReconcileRunOut,
) -> Result<(), String> {
    let key = source.api_key.as_deref().ok_or("the source has no API key")?;
    // `{body}` keys an event by the hash of its webhook's bytes, which an event listed by
    // the API (laid out otherwise) never has: every event would be taken again.
    if source.config.event_id_templates.iter().flatten().any(|t| t.contains("{body}")) {
        return Err("the source's eventIdTemplates use {body}: an event listed by the events API is not the bytes \
             its webhook was, so it cannot be matched with the webhooks' events"
            .into());
    }
    // Nor does an event of the API have headers: settings that read one in every form
    // find no id in any event, and the run would read every page to take nothing.
    let config = &source.config;
    // Nor may a template reading a header come before one that reads none: a webhook is
    // keyed by the first, an API event by the later one, and the two never match.
    let header_only = match &config.event_id_templates {
        Some(templates) => {
            let reads_header = |t: &String| t.contains("{header:");
            let last_without = templates.iter().rposition(|t| !reads_header(t));
            templates.iter().position(reads_header).is_some_and(|header| last_without.is_none_or(|w| header < w))
        }
        None => config.event_id_header.is_some(),
    };
    if header_only {
        return Err("the source's event id settings read a header (in every template, or in one before a template \
             that reads none), which an event listed by the events API has not, so its events cannot be matched \
             with the webhooks' events"
            .into());
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let url = format!("{}/v1/events", state.config.inbound.stripe_api_base.trim_end_matches('/'));
    // `out.resume_after` follows the last event handled: where the next run goes on if this
    // one stops (a failed page cost every page before it, the next run starting over).
    let mut after = out.resumed_after.clone();
    for page in 0..state.config.inbound.reconcile_pages_max {
        if page > 0 {
            tokio::time::sleep(Duration::from_millis(PAGE_PAUSE_MS)).await;
        }
        let query_until = (started - IN_FLIGHT_MS).div_euclid(1000);
        let mut query: Vec<(String, String)> = vec![
            ("created[gte]".into(), since.div_euclid(1000).to_string()),
            ("created[lte]".into(), query_until.to_string()),
            ("limit".into(), PAGE_LIMIT.to_string()),
        ];
        // Only the types the source takes, when Stripe can filter by them: the account's
        // every event type was read, and forwarded when the source takes any. (Not
        // `delivery_success=false`: an event created after Stripe disabled a failing
        // endpoint is attempted to no endpoint, and an outage is what this is for.)
        // Numbered, as the `stripe` library writes a list.
        query.extend(stripe_types(source).into_iter().enumerate().map(|(n, kind)| (format!("types[{n}]"), kind)));
        if let Some(last) = &after {
            query.push(("starting_after".into(), last.clone()));
        }
        let body = fetch(&client, &url, key, &query).await?;
        let page: Page = serde_json::from_slice(&body).map_err(|e| format!("the events list does not parse: {e}"))?;
        for event in &page.data {
            // Every event before this one is handled.
            out.resume_after = after.clone();
            let head: EventHead =
                serde_json::from_str(event.get()).map_err(|e| format!("an event does not parse: {e}"))?;
            out.found += 1;
            after = Some(head.id.clone());
            // Keyed as its webhook was (the source's event id settings, if any), or every
            // event the webhooks brought would be taken again.
            let identity = stripe_event_identity(&source.config, event.get().as_bytes());
            let kind = identity.event_type.unwrap_or(head.kind);
            if source.event_types.as_ref().is_some_and(|accepted| !accepted.contains(&kind)) {
                out.filtered += 1;
                continue;
            }
            let Some(event_id) = identity.event_id else {
                // Skipped, not the run's end: a run stopped here would stop here every time,
                // and never reach the events after it.
                out.without_id += 1;
                if out.without_id == 1 {
                    out.errors.push(format!(
                        "the source's event id settings find no id in event {} of the events API (a setting \
                         that reads a header never does), so it cannot be matched with the webhooks' events \
                         and was not taken; withoutId counts every such event",
                        head.id
                    ));
                }
                continue;
            };
            let headers = BTreeMap::from([
                ("content-type".to_owned(), "application/json".to_owned()),
                ("x-hookline-reconciled".to_owned(), "true".to_owned()),
            ]);
            let payload = Bytes::copy_from_slice(event.get().as_bytes());
            match accept(state, source, payload, kind, Some(event_id), headers).await {
                Ok((_, PublishOutcome::Created)) => out.ingested += 1,
                Ok((_, PublishOutcome::Duplicate(_) | PublishOutcome::DuplicateOfPurged(_))) => out.already_had += 1,
                Err(e) => return Err(format!("could not store an event: {e:?}")),
            }
        }
        out.resume_after = after.clone();
        if !page.has_more || page.data.is_empty() {
            out.resume_after = None;
            return Ok(());
        }
    }
    Ok(())
}

/// The event types to ask Stripe for: the source's `eventTypes`, at most the 20 Stripe
/// takes, when the type is Stripe's own (no setting reads it from elsewhere); else none,
/// and every type is listed and filtered here.
fn stripe_types(source: &Source) -> Vec<String> {
    let own_type = source.config.event_type_pointer.is_none() && source.config.event_type_header.is_none();
    match &source.event_types {
        Some(types) if own_type && (1..=STRIPE_TYPES_MAX).contains(&types.len()) => types.clone(),
        _ => Vec::new(),
    }
}

/// One page, asked again after `Retry-After` when rate limited.
async fn fetch(client: &reqwest::Client, url: &str, key: &str, query: &[(String, String)]) -> Result<Bytes, String> {
    for _ in 0..=RATE_LIMITED_RETRIES {
        let response = client
            .get(url)
            .query(query)
            .bearer_auth(key)
            .send()
            .await
            .map_err(|e| format!("the events API cannot be reached: {e}"))?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1)
                .min(60);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            continue;
        }
        let body = response.bytes().await.map_err(|e| format!("the events API broke off: {e}"))?;
        if !status.is_success() {
            let excerpt: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(format!("the events API answered {status}: {excerpt}"));
        }
        return Ok(body);
    }
    Err("the events API kept answering 429".into())
}

/// Reconciles every source that can be, one after another (the leader's duty).
pub async fn all(state: &AppState) {
    let mut page = hookline_store::Page { limit: 250, ..Default::default() };
    loop {
        let listed = match state.store.list_sources(page.clone()).await {
            Ok(listed) => listed,
            Err(e) => return tracing::warn!(error = %e, "could not list sources to reconcile"),
        };
        for source in listed.items.iter().filter(|s| reconcilable(s)) {
            run(state, source).await;
        }
        match (listed.done, listed.items.last()) {
            (false, Some(last)) => page.iterator = Some(last.id.clone()),
            _ => return,
        }
    }
}
