//! The dashboard's pages and actions. Each reads and acts through the API as the signed-in
//! person (`visitor.api`), so its authorization is the API's.

use super::render::{self, action, health_badge, items, number, status_badge, text, when};
use super::{query_value as q, segment, DashForm, DashState, Failure, Visitor};
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

const DAY_MS: i64 = 86_400_000;

/// Every query parameter a page reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PageQuery {
    range: Option<String>,
    done: Option<String>,
    q: Option<String>,
    iterator: Option<String>,
    reveal: Option<String>,
    event_type: Option<String>,
    event_id: Option<String>,
    status: Option<String>,
    endpoint: Option<String>,
    before: Option<String>,
    after: Option<String>,
}

/// A chart's range: the API's period, how far back, and how to say it.
struct Range {
    name: &'static str,
    period: &'static str,
    span_ms: i64,
    label: &'static str,
}

const RANGES: [Range; 3] = [
    Range { name: "hour", period: "OneMinute", span_ms: 3_600_000, label: "per minute, last hour" },
    Range { name: "day", period: "FiveMinutes", span_ms: DAY_MS, label: "per 5 minutes, last day" },
    Range { name: "week", period: "OneHour", span_ms: 7 * DAY_MS, label: "per hour, last week" },
];

fn range(query: &PageQuery) -> &'static Range {
    RANGES.iter().find(|r| Some(r.name) == query.range.as_deref()).unwrap_or(&RANGES[0])
}

/// The series query for `range`, ending now.
fn series_query(dash: &super::Dash, range: &Range) -> String {
    let start = crate::wire::timestamp(dash.state.now() - range.span_ms + 1);
    format!("period={}&startDate={}", range.period, q(&start))
}

fn range_links(base: &str, current: &Range) -> Markup {
    html! {
        p.actions {
            "Range: "
            @for r in &RANGES {
                @if r.name == current.name { strong { (r.name) } } @else { a href={ (base) "?range=" (r.name) } { (r.name) } }
                " "
            }
        }
    }
}

fn show(result: Result<Response, Failure>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

fn page(dash: &super::Dash, title: &str, visitor: &Visitor, body: Markup) -> Response {
    render::respond(StatusCode::OK, render::page(title, Some(visitor), dash.state.config.dashboard.refresh_ms, body))
}

fn app_base(app: &str) -> String {
    format!("/dashboard/app/{}", segment(app))
}

/// What an action did, said on the page it returns to (`?done=<code>`): a fixed set, so a
/// link cannot make a page say anything else.
#[derive(Clone, Copy)]
pub enum Done {
    Enabled,
    Disabled,
    Rotated,
    Tested,
    Recovered,
    Resent,
    ResentAll,
    Replayed,
    Expired,
}

impl Done {
    const ALL: [Done; 9] = [
        Done::Enabled,
        Done::Disabled,
        Done::Rotated,
        Done::Tested,
        Done::Recovered,
        Done::Resent,
        Done::ResentAll,
        Done::Replayed,
        Done::Expired,
    ];

    fn code(self) -> &'static str {
        match self {
            Done::Enabled => "enabled",
            Done::Disabled => "disabled",
            Done::Rotated => "rotated",
            Done::Tested => "tested",
            Done::Recovered => "recovered",
            Done::Resent => "resent",
            Done::ResentAll => "resent-all",
            Done::Replayed => "replayed",
            Done::Expired => "expired",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Done::Enabled => "Enabled.",
            Done::Disabled => "Disabled.",
            Done::Rotated => "Secret rotated; the previous one keeps signing for 24 hours.",
            Done::Tested => "Test message sent to this endpoint; its attempt appears below.",
            Done::Recovered => "Recovery started: failed and skipped deliveries are due again.",
            Done::Resent => "Resent; the new attempt appears below.",
            Done::ResentAll => "Resent to every endpoint.",
            Done::Replayed => "Replayed: the event is due again at the application's endpoints.",
            Done::Expired => {
                "Every dashboard session of this application, and every portal link not yet used, has ended."
            }
        }
    }

    /// The line for a `?done=` code; nothing for an unknown one.
    pub fn line(code: Option<&str>) -> Option<&'static str> {
        Done::ALL.iter().find(|d| Some(d.code()) == code).map(|d| d.text())
    }
}

/// After an action: back to `to`, saying what was done.
fn done(to: &str, what: Done) -> Response {
    let join = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{join}done={}", what.code())).into_response()
}

#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    endpoint: String,
    /// The page the form was on, to go back to.
    #[serde(default)]
    back: String,
    #[serde(default, rename = "eventType")]
    event_type: String,
}

impl ActionForm {
    /// `back` when it is a dashboard page of this server (never another site), else `default`.
    fn back_or(&self, default: String) -> String {
        let safe = |c: char| c.is_ascii_alphanumeric() || "/-_.~%".contains(c);
        let local = self.back.starts_with("/dashboard/") && !self.back.contains("//") && self.back.chars().all(safe);
        if local {
            self.back.clone()
        } else {
            default
        }
    }
}

pub async fn overview(dash: DashState, visitor: Visitor, Query(query): Query<PageQuery>) -> Response {
    if let Some(app_id) = visitor.app_id() {
        return Redirect::to(&app_base(app_id)).into_response();
    }
    show(overview_page(&dash, &visitor, &query).await)
}

async fn overview_page(dash: &super::Dash, visitor: &Visitor, query: &PageQuery) -> Result<Response, Failure> {
    let api = visitor.api(dash);
    let range = range(query);
    let series = api.get(&format!("/api/v1/stats/attempt?{}", series_query(dash, range))).await?;
    let queue = api.get("/api/v1/stats/queue").await?;
    let failing = api.get("/api/v1/stats/failing-endpoint?limit=20").await?;
    let sources = api.get("/api/v1/source?limit=50").await?;
    let day_ago = q(&crate::wire::timestamp(dash.state.now() - DAY_MS + 1));
    let mut inbound = Vec::new();
    for source in items(&sources) {
        let path = format!("/api/v1/stats/source/{}?period=OneDay&startDate={day_ago}", segment(text(source, "id")));
        let stats = api.get(&path).await?;
        let sum = |key: &str| -> u64 {
            stats["data"][key].as_array().map_or(0, |a| a.iter().filter_map(Value::as_u64).sum())
        };
        inbound.push((source.clone(), sum("accepted"), sum("refused"), sum("duplicate")));
    }
    let sum =
        |key: &str| -> u64 { series["data"][key].as_array().map_or(0, |a| a.iter().filter_map(Value::as_u64).sum()) };
    let (ok, failed) = (sum("successCount"), sum("failureCount"));
    let rate = match ok + failed {
        0 => "–".to_owned(),
        n => format!("{:.1}%", ok as f64 * 100.0 / n as f64),
    };
    let body = html! {
        h1 { "Overview" }
        (range_links("/dashboard", range))
        div.grid #figures data-live {
            div.stat { span.label { "Succeeded (" (range.name) ")" } span.value data-figure="succeeded" { (ok) } }
            div.stat { span.label { "Failed (" (range.name) ")" } span.value data-figure="failed" { (failed) } }
            div.stat { span.label { "Success rate" } span.value { (rate) } }
            div.stat { span.label { "Open deliveries (queue)" } span.value data-figure="open" { (number(&queue, "open")) } }
            div.stat { span.label { "In flight on this node" } span.value { (number(&queue, "inFlight")) } }
        }
        h2 { "Attempts" }
        (render::attempts_chart("chart-attempts", &series, range.label))
        h2 { "Failing now, worst first" }
        div.scroll #failing data-live {
            @if items(&failing).is_empty() { p { "No endpoint is failing." } }
            @else {
                table {
                    thead { tr { th { "Endpoint" } th { "Application" } th { "Health" } th.hide-small { "State" } } }
                    tbody {
                        @for f in items(&failing) {
                            @let e = &f["endpoint"];
                            @let app = text(f, "appId");
                            tr {
                                td.wrap { a href={ (app_base(app)) "/endpoint/" (segment(text(e, "id"))) } { (text(e, "url")) } }
                                td { a href=(app_base(app)) { (app) } }
                                td { (health_badge(e)) }
                                td.hide-small { @if e["disabled"].as_bool() == Some(true) { "disabled" } @else { "enabled" } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Inbound, last 24 hours" }
        div.scroll #inbound data-live {
            @if inbound.is_empty() { p { "No inbound sources. " a href="/dashboard/source" { "Inbound" } } }
            @else {
                table {
                    thead { tr { th { "Source" } th { "Accepted" } th { "Refused" } th { "Duplicates" } } }
                    tbody {
                        @for (source, accepted, refused, duplicate) in &inbound {
                            tr {
                                td { a href={ "/dashboard/source/" (segment(text(source, "id"))) } { (text(source, "name")) } }
                                td { (accepted) } td { (refused) } td { (duplicate) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(dash, "Overview", visitor, body))
}

pub async fn apps(dash: DashState, visitor: Visitor, Query(query): Query<PageQuery>) -> Response {
    if let Some(app_id) = visitor.app_id() {
        return Redirect::to(&app_base(app_id)).into_response();
    }
    show(apps_page(&dash, &visitor, &query).await)
}

/// Pages of 100 applications a name search reads at most for one page of results.
const SEARCH_PAGES: usize = 20;

async fn apps_page(dash: &super::Dash, visitor: &Visitor, query: &PageQuery) -> Result<Response, Failure> {
    let api = visitor.api(dash);
    let wanted = query.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    // An id or uid goes straight to its application.
    if let Some(key) = wanted {
        if let Ok(app) = api.get(&format!("/api/v1/app/{}", segment(key))).await {
            return Ok(Redirect::to(&app_base(text(&app, "id"))).into_response());
        }
    }
    // The API lists applications but does not search their names: a search reads pages of
    // them until it has a page of matches or has read `SEARCH_PAGES`, and its next page
    // goes on from there with the same words.
    let needle = wanted.map(str::to_lowercase);
    let (mut shown, mut searched, mut next) = (Vec::new(), 0, query.iterator.clone());
    for _ in 0..if needle.is_some() { SEARCH_PAGES } else { 1 } {
        let mut path = "/api/v1/app?limit=100".to_owned();
        if let Some(iterator) = &next {
            path.push_str(&format!("&iterator={}", q(iterator)));
        }
        let list = api.get(&path).await?;
        searched += items(&list).len();
        let matching = |a: &&Value| needle.as_ref().is_none_or(|n| text(a, "name").to_lowercase().contains(n.as_str()));
        shown.extend(items(&list).iter().filter(matching).cloned());
        next = (list["done"].as_bool() == Some(false)).then(|| text(&list, "iterator").to_owned());
        if next.is_none() || shown.len() >= 100 {
            break;
        }
    }
    let next_page = next.map(|iterator| match wanted {
        Some(words) => format!("/dashboard/app?iterator={}&q={}", q(&iterator), q(words)),
        None => format!("/dashboard/app?iterator={}", q(&iterator)),
    });
    let body = html! {
        h1 { "Applications" }
        form.search method="get" action="/dashboard/app" {
            label { "Name, id or uid " input type="search" name="q" value=(wanted.unwrap_or_default()); }
            button type="submit" { "Search" }
        }
        div.scroll {
            table {
                thead { tr { th { "Name" } th { "Id" } th.hide-small { "Uid" } th.hide-small { "Created" } } }
                tbody {
                    @for a in &shown {
                        tr {
                            td { a href=(app_base(text(a, "id"))) { (text(a, "name")) } }
                            td.wrap { code { (text(a, "id")) } }
                            td.hide-small { (text(a, "uid")) }
                            td.hide-small { (when(text(a, "createdAt"))) }
                        }
                    }
                }
            }
        }
        @if needle.is_some() {
            p { (shown.len()) " of " (searched) " applications searched match"
                @if next_page.is_some() { "; more to search" } "." }
        } @else if shown.is_empty() { p { "No applications yet." } }
        @if let Some(next_page) = &next_page {
            p { a href=(next_page) { "Next page" } }
        }
    };
    Ok(page(dash, "Applications", visitor, body))
}

pub async fn app(
    dash: DashState,
    visitor: Visitor,
    Path(app_key): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    show(app_page(&dash, &visitor, &app_key, &query).await)
}

async fn app_page(dash: &super::Dash, visitor: &Visitor, key: &str, query: &PageQuery) -> Result<Response, Failure> {
    let api = visitor.api(dash);
    let app = api.get(&format!("/api/v1/app/{}", segment(key))).await?;
    let id = text(&app, "id");
    let base = app_base(id);
    let range = range(query);
    let endpoints = api.get_all(&format!("/api/v1/app/{}/endpoint?limit=250", segment(id))).await?;
    let series = api.get(&format!("/api/v1/stats/app/{}/attempt?{}", segment(id), series_query(dash, range))).await?;
    let body = html! {
        (render::notice(Done::line(query.done.as_deref())))
        h1 { (text(&app, "name")) }
        p { code { (id) } @if !text(&app, "uid").is_empty() { " · uid " code { (text(&app, "uid")) } } }
        p.actions {
            a href={ (base) "/msg" } { "Messages" }
            @if visitor.is_admin() {
                " · "
                (action(visitor, &format!("{base}/portal-link"), "Make a portal link", &[]))
                " · "
                (action(visitor, &format!("{base}/expire-sessions"), "End portal sessions", &[]))
            }
        }
        @if let Some(email) = app["alertEmail"].as_str() { p { "Alert emails go to " (email) "." } }
        (range_links(&base, range))
        (render::attempts_chart("chart-attempts", &series, range.label))
        h2 { "Endpoints" }
        div.scroll #endpoints data-live {
            table {
                thead { tr { th { "URL" } th { "Health" } th.hide-small { "Event types" } th.hide-small { "Description" } } }
                tbody {
                    @for e in &endpoints {
                        tr {
                            td.wrap { a href={ (base) "/endpoint/" (segment(text(e, "id"))) } { (text(e, "url")) } }
                            td { (health_badge(e)) }
                            td.hide-small { (event_types(e)) }
                            td.hide-small { (text(e, "description")) }
                        }
                    }
                }
            }
            @if endpoints.is_empty() { p { "No endpoints yet." } }
        }
    };
    Ok(page(dash, text(&app, "name"), visitor, body))
}

fn event_types(endpoint: &Value) -> String {
    match endpoint["filterTypes"].as_array() {
        Some(types) => types.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
        None => "all".to_owned(),
    }
}

/// An admin's action on an application: a portal link (shown on a page of its own), or
/// the end of its portal sessions and unused links (the API's expire-all).
pub async fn app_action(
    dash: DashState,
    visitor: Visitor,
    Path((app_key, act)): Path<(String, String)>,
    DashForm(form): DashForm<ActionForm>,
) -> Response {
    if let Some(refused) = visitor.refuse_without_csrf(&form.csrf) {
        return refused;
    }
    let api = visitor.api(&dash);
    let app = segment(&app_key);
    match act.as_str() {
        "portal-link" => match api.post(&format!("/api/v1/auth/app-portal-access/{app}"), None).await {
            Ok(link) => portal_link_page(&dash, &visitor, &app_key, &link),
            Err(failure) => failure.into_response(),
        },
        "expire-sessions" => show(
            api.post(&format!("/api/v1/auth/app/{app}/expire-all"), None)
                .await
                .map(|_| done(&app_base(&app_key), Done::Expired)),
        ),
        _ => render::not_found(),
    }
}

fn portal_link_page(dash: &super::Dash, visitor: &Visitor, app_key: &str, link: &Value) -> Response {
    let minutes = dash.state.config.dashboard.link_ttl_ms / 60_000;
    let body = html! {
        h1 { "Portal link" }
        p { "Send this link to the merchant. It signs in once, to this application only, and must be opened within "
            (minutes) " minutes." }
        p { span.secret #portal-link { (text(link, "url")) } }
        p { a href=(app_base(app_key)) { "Back to the application" } }
    };
    page(dash, "Portal link", visitor, body)
}

pub async fn endpoint(
    dash: DashState,
    visitor: Visitor,
    Path((app_key, endpoint_key)): Path<(String, String)>,
    Query(query): Query<PageQuery>,
) -> Response {
    show(endpoint_page(&dash, &visitor, &app_key, &endpoint_key, &query).await)
}

async fn endpoint_page(
    dash: &super::Dash,
    visitor: &Visitor,
    app_key: &str,
    endpoint_key: &str,
    query: &PageQuery,
) -> Result<Response, Failure> {
    let api = visitor.api(dash);
    let (app_seg, ep_seg) = (segment(app_key), segment(endpoint_key));
    let e = api.get(&format!("/api/v1/app/{app_seg}/endpoint/{ep_seg}")).await?;
    let range = range(query);
    let series = api
        .get(&format!("/api/v1/stats/app/{app_seg}/attempt?{}&endpointId={ep_seg}", series_query(dash, range)))
        .await?;
    let attempts = api.get(&format!("/api/v1/app/{app_seg}/attempt/endpoint/{ep_seg}?limit=100")).await?;
    let secret = match query.reveal.is_some() {
        true => Some(api.get(&format!("/api/v1/app/{app_seg}/endpoint/{ep_seg}/secret")).await?),
        false => None,
    };
    let base = format!("{}/endpoint/{ep_seg}", app_base(app_key));
    let disabled = e["disabled"].as_bool() == Some(true);
    let body = html! {
        (render::notice(Done::line(query.done.as_deref())))
        p { a href=(app_base(app_key)) { "← Application" } }
        h1.wrap { (text(&e, "url")) }
        p #health data-live { (health_badge(&e)) " " @if disabled { span.badge.muted { "disabled" } } }
        div.actions {
            @if disabled { (action(visitor, &format!("{base}/enable"), "Enable", &[])) }
            @else { (action(visitor, &format!("{base}/disable"), "Disable", &[])) }
            (action(visitor, &format!("{base}/rotate"), "Rotate secret", &[]))
            @if secret.is_none() {
                form.inline method="get" action=(base) {
                    input type="hidden" name="reveal" value="1";
                    button type="submit" { "Reveal secret" }
                }
            }
        }
        @if let Some(secret) = &secret { p { "Signing secret: " span.secret #secret { (text(secret, "key")) } } }
        form.search method="post" action={ (base) "/test" } {
            (render::csrf(visitor))
            label { "Test event type " input type="text" name="eventType" value="hookline.test" required; }
            button type="submit" { "Send test event" }
        }
        form.search method="post" action={ (base) "/recover" } {
            (render::csrf(visitor))
            label { "Resend failed and skipped deliveries since (UTC) "
                input type="datetime-local" name="since" required; }
            button type="submit" { "Recover" }
        }
        (range_links(&base, range))
        (render::attempts_chart("chart-attempts", &series, range.label))
        (render::latency_chart("chart-latency", &series, range.label))
        (render::attempt_strip(items(&attempts)))
        h2 { "Settings" }
        dl.settings {
            dt { "Id" } dd { code { (text(&e, "id")) } }
            dt { "Description" } dd { (text(&e, "description")) }
            dt { "Event types" } dd { (event_types(&e)) }
            dt { "Rate limit" } dd { @match e["rateLimit"].as_u64() { Some(n) => { (n) " per second" } None => { "none" } } }
            dt { "Ordered delivery" } dd { @if e["ordering"] == "fifo" { "every message in publish order (fifo)" } @else { "by orderingKey only" } }
            dt { "Created" } dd { (when(text(&e, "createdAt"))) }
        }
        h2 { "Recent attempts" }
        div.scroll #attempts data-live {
            table {
                thead { tr { th { "Time" } th { "Outcome" } th { "HTTP" } th.hide-small { "ms" } th.hide-small { "Error" } th { "Response" } th { "Message" } } }
                tbody {
                    @for a in items(&attempts) {
                        tr data-attempt=(text(a, "id")) {
                            td { (when(text(a, "timestamp"))) }
                            td { (status_badge(if number(a, "status") == 0 { "success" } else { "failed" })) }
                            td { (number(a, "responseStatusCode")) }
                            td.hide-small { (number(a, "responseDurationMs")) }
                            td.hide-small { (text(a, "errorClass")) }
                            td.wrap { code { (excerpt(text(a, "response"))) } }
                            td {
                                a href={ (app_base(app_key)) "/msg/" (segment(text(a, "msgId"))) } { "view" }
                                " "
                                (action(visitor, &format!("{}/msg/{}/resend", app_base(app_key), segment(text(a, "msgId"))), "Resend", &[("endpoint", text(&e, "id")), ("back", &base)]))
                            }
                        }
                    }
                }
            }
            @if items(&attempts).is_empty() { p { "No attempts yet." } }
        }
    };
    Ok(page(dash, "Endpoint", visitor, body))
}

/// The first 200 characters of a response body.
fn excerpt(body: &str) -> String {
    match body.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.to_owned(),
    }
}

pub async fn endpoint_action(
    dash: DashState,
    visitor: Visitor,
    Path((app_key, endpoint_key, act)): Path<(String, String, String)>,
    DashForm(form): DashForm<ActionForm>,
) -> Response {
    if let Some(refused) = visitor.refuse_without_csrf(&form.csrf) {
        return refused;
    }
    let api = visitor.api(&dash);
    let path = format!("/api/v1/app/{}/endpoint/{}", segment(&app_key), segment(&endpoint_key));
    let back = format!("{}/endpoint/{}", app_base(&app_key), segment(&endpoint_key));
    let result = match act.as_str() {
        "enable" => api.patch(&path, json!({"disabled": false})).await.map(|_| done(&back, Done::Enabled)),
        "disable" => api.patch(&path, json!({"disabled": true})).await.map(|_| done(&back, Done::Disabled)),
        "rotate" => api
            .post(&format!("{path}/secret/rotate"), None)
            .await
            .map(|_| done(&format!("{back}?reveal=1"), Done::Rotated)),
        "test" => api
            .post(&format!("{path}/send-example"), Some(json!({ "eventType": form.event_type })))
            .await
            .map(|_| done(&back, Done::Tested)),
        "recover" => api
            .post(&format!("{path}/recover"), Some(json!({ "since": utc(&form.since) })))
            .await
            .map(|_| done(&back, Done::Recovered)),
        _ => return render::not_found(),
    };
    show(result)
}

pub async fn messages(
    dash: DashState,
    visitor: Visitor,
    Path(app_key): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    show(messages_page(&dash, &visitor, &app_key, &query).await)
}

fn filled(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A `datetime-local` value (minutes, no zone; the forms say UTC) as RFC 3339.
fn utc(value: &str) -> String {
    if value.len() == 16 {
        format!("{value}:00Z")
    } else {
        value.to_owned()
    }
}

async fn messages_page(
    dash: &super::Dash,
    visitor: &Visitor,
    app_key: &str,
    query: &PageQuery,
) -> Result<Response, Failure> {
    let api = visitor.api(dash);
    let app_seg = segment(app_key);
    let base = app_base(app_key);
    if let Some(event_id) = filled(&query.event_id) {
        let found = api.get(&format!("/api/v1/app/{app_seg}/msg/{}", segment(event_id))).await?;
        return Ok(Redirect::to(&format!("{base}/msg/{}", segment(text(&found, "id")))).into_response());
    }
    let endpoints = api.get_all(&format!("/api/v1/app/{app_seg}/endpoint?limit=250")).await?;
    let mut params = vec!["limit=50".to_owned()];
    if let Some(t) = filled(&query.event_type) {
        params.push(format!("event_types={}", q(t)));
    }
    for (name, value) in [("before", &query.before), ("after", &query.after)] {
        if let Some(v) = filled(value) {
            params.push(format!("{name}={}", q(&utc(v))));
        }
    }
    let endpoint = filled(&query.endpoint);
    let status = filled(&query.status).and_then(|s| s.parse::<i64>().ok());
    // The next page is the same search from where this one ends.
    let mut next_page = format!("{base}/msg?");
    for (name, value) in [
        ("eventType", &query.event_type),
        ("endpoint", &query.endpoint),
        ("status", &query.status),
        ("after", &query.after),
        ("before", &query.before),
    ] {
        if let Some(v) = filled(value) {
            next_page.push_str(&format!("{name}={}&", q(v)));
        }
    }
    if let Some(iterator) = filled(&query.iterator) {
        params.push(format!("iterator={}", q(iterator)));
    }
    let (rows, list): (Vec<(Value, Option<String>)>, Value) = match endpoint {
        Some(ep) => {
            if let Some(s) = status {
                params.push(format!("status={s}"));
            }
            let path = format!("/api/v1/app/{app_seg}/endpoint/{}/msg?{}", segment(ep), params.join("&"));
            let list = api.get(&path).await?;
            // Each item is the message with its delivery's status beside its fields.
            (items(&list).iter().map(|m| (m.clone(), Some(text(m, "statusText").to_owned()))).collect(), list)
        }
        None => {
            let list = api.get(&format!("/api/v1/app/{app_seg}/msg?{}", params.join("&"))).await?;
            (items(&list).iter().map(|m| (m.clone(), None)).collect(), list)
        }
    };
    let next_page =
        (list["done"].as_bool() == Some(false)).then(|| format!("{next_page}iterator={}", q(text(&list, "iterator"))));
    let statuses = [
        ("", "any"),
        ("0", "delivered"),
        ("1", "pending"),
        ("2", "exhausted"),
        ("3", "sending"),
        ("5", "skipped"),
        ("6", "waiting"),
    ];
    let body = html! {
        p { a href=(base) { "← Application" } }
        h1 { "Messages" }
        form.search method="get" action={ (base) "/msg" } {
            label { "Event type " input type="text" name="eventType" value=(filled(&query.event_type).unwrap_or_default()); }
            label { "Event id " input type="text" name="eventId"; }
            label { "Endpoint "
                select name="endpoint" {
                    option value="" { "all" }
                    @for e in &endpoints {
                        option value=(text(e, "id")) selected[endpoint == Some(text(e, "id"))] { (text(e, "url")) }
                    }
                }
            }
            label { "Status (with an endpoint) "
                select name="status" {
                    @for (code, name) in statuses {
                        option value=(code) selected[status.map(|s| s.to_string()).as_deref() == Some(code)] { (name) }
                    }
                }
            }
            label { "After (UTC) " input type="datetime-local" name="after" value=(filled(&query.after).unwrap_or_default()); }
            label { "Before (UTC) " input type="datetime-local" name="before" value=(filled(&query.before).unwrap_or_default()); }
            button type="submit" { "Search" }
        }
        div.scroll #messages data-live {
            table {
                thead { tr { th { "Time" } th { "Event type" } th { "Message" } th.hide-small { "Event id" } @if endpoint.is_some() { th { "Status" } } } }
                tbody {
                    @for (m, status) in &rows {
                        tr {
                            td { (when(text(m, "timestamp"))) }
                            td { (text(m, "eventType")) }
                            td.wrap { a href={ (base) "/msg/" (segment(text(m, "id"))) } { (text(m, "id")) } }
                            td.hide-small.wrap { (text(m, "eventId")) }
                            @if let Some(status) = status { td { (status_badge(status)) } }
                        }
                    }
                }
            }
            @if rows.is_empty() { p { "No message matches." } }
        }
        @if let Some(next_page) = &next_page {
            p { a href=(next_page) { "Older messages" } }
        }
    };
    Ok(page(dash, "Messages", visitor, body))
}

pub async fn message(
    dash: DashState,
    visitor: Visitor,
    Path((app_key, msg_key)): Path<(String, String)>,
    Query(query): Query<PageQuery>,
) -> Response {
    show(message_page(&dash, &visitor, &app_key, &msg_key, &query).await)
}

/// The message as the API sent it, and its payload's exact bytes.
#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow)]
    payload: &'a serde_json::value::RawValue,
}

async fn message_page(
    dash: &super::Dash,
    visitor: &Visitor,
    app_key: &str,
    msg_key: &str,
    query: &PageQuery,
) -> Result<Response, Failure> {
    let api = visitor.api(dash);
    let (app_seg, msg_seg) = (segment(app_key), segment(msg_key));
    let raw = api.get_raw(&format!("/api/v1/app/{app_seg}/msg/{msg_seg}")).await?;
    let m: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let payload = serde_json::from_slice::<RawMessage>(&raw).map(|r| r.payload.get().to_owned()).unwrap_or_default();
    let id = text(&m, "id");
    let deliveries = api.get(&format!("/api/v1/app/{app_seg}/msg/{}/endpoint?limit=250", segment(id))).await?;
    let attempts = api.get(&format!("/api/v1/app/{app_seg}/attempt/msg/{}?limit=250", segment(id))).await?;
    // The custom headers of the destinations the attempts shown went to, the first
    // `HEADERS_READ_MAX` of them: a page costs its merchant one request of its token's
    // budget, and one read per destination made it 250 reads for a message to 250 endpoints.
    // (An attempt to a callback URL names its delivery, one to a deleted endpoint an
    // endpoint gone: neither is a destination.) A read that fails shows no headers.
    let mut custom: Vec<(String, Value)> = Vec::new();
    for a in items(&attempts) {
        let endpoint_id = text(a, "endpointId");
        let destination = items(&deliveries).iter().any(|e| text(e, "id") == endpoint_id);
        if !destination || custom.len() == HEADERS_READ_MAX || custom.iter().any(|(id, _)| id == endpoint_id) {
            continue;
        }
        let path = format!("/api/v1/app/{app_seg}/endpoint/{}/headers", segment(endpoint_id));
        if let Ok(headers) = api.get(&path).await {
            custom.push((endpoint_id.to_owned(), headers));
        }
    }
    let base = app_base(app_key);
    let resend = format!("{base}/msg/{}/resend", segment(id));
    let body = html! {
        (render::notice(Done::line(query.done.as_deref())))
        p { a href={ (base) "/msg" } { "← Messages" } }
        h1.wrap { (text(&m, "eventType")) }
        dl.settings {
            dt { "Message" } dd { code { (id) } }
            dt { "Event id" } dd { (text(&m, "eventId")) }
            dt { "Created" } dd { (when(text(&m, "timestamp"))) }
            @if let Some(key) = m["orderingKey"].as_str() { dt { "Ordering key" } dd { (key) } }
        }
        h2 { "Payload (exact bytes)" }
        (render::payload(&payload))
        h2 { "Deliveries" }
        div.actions { (action(visitor, &resend, "Resend to every endpoint", &[("endpoint", "all")])) }
        div.scroll #deliveries data-live {
            table {
                thead { tr { th { "Endpoint" } th { "Status" } th.hide-small { "Next attempt" } th { "" } } }
                tbody {
                    // Each item is the endpoint with the delivery's status beside its fields.
                    @for e in items(&deliveries) {
                        tr {
                            td.wrap { a href={ (base) "/endpoint/" (segment(text(e, "id"))) } { (text(e, "url")) } }
                            td { (status_badge(text(e, "statusText"))) }
                            td.hide-small { (when(text(e, "nextAttempt"))) }
                            td { (action(visitor, &resend, "Resend", &[("endpoint", text(e, "id"))])) }
                        }
                    }
                }
            }
        }
        h2 { "Attempts" }
        div.scroll #attempts data-live {
            table {
                thead { tr { th { "Time" } th { "Outcome" } th { "HTTP" } th.hide-small { "ms" } th.hide-small { "Error" } th { "Response" } } }
                tbody {
                    @for a in items(&attempts) {
                        tr data-attempt=(text(a, "id")) {
                            td { (when(text(a, "timestamp"))) }
                            td { (status_badge(if number(a, "status") == 0 { "success" } else { "failed" })) }
                            td { (number(a, "responseStatusCode")) }
                            td.hide-small { (number(a, "responseDurationMs")) }
                            td.hide-small { (text(a, "errorClass")) }
                            td.wrap {
                                code { (excerpt(text(a, "response"))) }
                                @if let Some(sent) = request_headers(a, id, &deliveries, &custom) {
                                    details {
                                        summary { "Request headers" }
                                        pre.headers { @for (name, value) in &sent { (name) ": " (value) "\n" } }
                                        small { "Signatures masked; custom headers as the endpoint has them now." }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if items(&attempts).is_empty() { p { "No attempts yet." } }
        }
    };
    Ok(page(dash, "Message", visitor, body))
}

/// Endpoints whose custom headers one message page reads.
const HEADERS_READ_MAX: usize = 25;

/// The headers an attempt was sent with: the signing headers of the endpoint's scheme (the
/// timestamp is the attempt's start; signatures masked), the content type, and the
/// endpoint's custom headers (`custom`: per endpoint id, the API's headers answer, where
/// sensitive values are never shown); `None` for an endpoint whose headers were not read.
fn request_headers(
    attempt: &Value,
    msg_id: &str,
    deliveries: &Value,
    custom: &[(String, Value)],
) -> Option<Vec<(String, String)>> {
    use hookline_core::signature::{sign_headers, Secret, SignatureScheme, SECRET_BYTES_GENERATED};
    const MASKED: &str = "•••••• (masked)";
    let endpoint_id = text(attempt, "endpointId");
    let endpoint = items(deliveries).iter().find(|e| text(e, "id") == endpoint_id)?;
    let (_, set) = custom.iter().find(|(id, _)| id == endpoint_id)?;
    let scheme: SignatureScheme = serde_json::from_value(endpoint["signatureScheme"].clone()).unwrap_or_default();
    let sent_at =
        crate::wire::parse_timestamp(text(attempt, "timestamp"))? - number(attempt, "responseDurationMs") as i64;
    let any_secret = Secret::from_key([0; SECRET_BYTES_GENERATED]);
    let mut headers: Vec<(String, String)> = sign_headers(&scheme, msg_id, sent_at / 1000, b"", &[any_secret])
        .into_iter()
        .map(|(name, value)| match name.as_str() {
            "webhook-id" | "webhook-timestamp" => (name, value),
            _ => (name, MASKED.to_owned()),
        })
        .collect();
    headers.push(("content-type".into(), "application/json".into()));
    if let Some(shown) = set["headers"].as_object() {
        headers.extend(shown.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())));
    }
    for name in set["sensitive"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        headers.push((name.to_owned(), MASKED.to_owned()));
    }
    Some(headers)
}

pub async fn resend(
    dash: DashState,
    visitor: Visitor,
    Path((app_key, msg_key)): Path<(String, String)>,
    DashForm(form): DashForm<ActionForm>,
) -> Response {
    if let Some(refused) = visitor.refuse_without_csrf(&form.csrf) {
        return refused;
    }
    let api = visitor.api(&dash);
    let (app_seg, msg_seg) = (segment(&app_key), segment(&msg_key));
    let back = form.back_or(format!("{}/msg/{msg_seg}", app_base(&app_key)));
    if form.endpoint != "all" {
        let path = format!("/api/v1/app/{app_seg}/msg/{msg_seg}/endpoint/{}/resend", segment(&form.endpoint));
        return match api.post(&path, None).await {
            Ok(_) => done(&back, Done::Resent),
            Err(failure) => failure.into_response(),
        };
    }
    // To every endpoint: one refused (disabled, deleted meanwhile) does not keep the others
    // from theirs; the rate limit, a failing store or a lost session end the round. Either
    // way the page says which were resent and which not.
    let endpoints: Vec<String> =
        match api.get_all(&format!("/api/v1/app/{app_seg}/msg/{msg_seg}/endpoint?limit=250")).await {
            Ok(list) => list.iter().map(|d| text(d, "id").to_owned()).collect(),
            Err(failure) => return failure.into_response(),
        };
    let (mut resent, mut refused, mut stopped) = (0, Vec::new(), None);
    for endpoint in &endpoints {
        let path = format!("/api/v1/app/{app_seg}/msg/{msg_seg}/endpoint/{}/resend", segment(endpoint));
        match api.post(&path, None).await {
            Ok(_) => resent += 1,
            Err(failure) if ends_a_round(failure.status) => {
                stopped = Some((endpoint, failure));
                break;
            }
            Err(failure) => refused.push((endpoint, failure)),
        }
    }
    if refused.is_empty() && stopped.is_none() {
        return done(&back, Done::ResentAll);
    }
    let mut detail = format!("Resent to {resent} of {} endpoints.", endpoints.len());
    for (endpoint, failure) in &refused {
        detail.push_str(&format!(" Not to {endpoint}: {}", failure.detail));
    }
    let last = match stopped {
        Some((endpoint, failure)) => {
            let untried = endpoints.len() - resent - refused.len() - 1;
            detail.push_str(&format!(" Stopped at {endpoint}: {} ({untried} not tried).", failure.detail));
            failure
        }
        None => refused.pop().map(|(_, failure)| failure).expect("a refusal"),
    };
    Failure { detail, ..last }.into_response()
}

/// Whether an action's refusal ends a round of them: what the next would meet too.
fn ends_a_round(status: StatusCode) -> bool {
    matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS)
        || status.is_server_error()
}

pub async fn sources(dash: DashState, visitor: Visitor) -> Response {
    show(sources_page(&dash, &visitor).await)
}

async fn sources_page(dash: &super::Dash, visitor: &Visitor) -> Result<Response, Failure> {
    let list = visitor.api(dash).get("/api/v1/source?limit=250").await?;
    let body = html! {
        h1 { "Inbound sources" }
        div.scroll {
            table {
                thead { tr { th { "Name" } th { "Provider" } th { "Application" } th.hide-small { "Ingest URL" } } }
                tbody {
                    @for s in items(&list) {
                        tr {
                            td { a href={ "/dashboard/source/" (segment(text(s, "id"))) } { (text(s, "name")) } }
                            td { (s["preset"].as_str().unwrap_or_default()) }
                            td { a href=(app_base(text(s, "appId"))) { (text(s, "appId")) } }
                            td.hide-small.wrap { code { (text(s, "ingestUrl")) } }
                        }
                    }
                }
            }
            @if items(&list).is_empty() { p { "No inbound sources. Create one with POST /api/v1/source." } }
        }
    };
    Ok(page(dash, "Inbound", visitor, body))
}

pub async fn source(
    dash: DashState,
    visitor: Visitor,
    Path(source_key): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    show(source_page(&dash, &visitor, &source_key, &query).await)
}

async fn source_page(dash: &super::Dash, visitor: &Visitor, key: &str, query: &PageQuery) -> Result<Response, Failure> {
    let api = visitor.api(dash);
    let seg = segment(key);
    let s = api.get(&format!("/api/v1/source/{seg}")).await?;
    let events = api.get(&format!("/api/v1/source/{seg}/event?limit=50")).await?;
    let rejections = api.get(&format!("/api/v1/source/{seg}/rejection")).await?;
    let base = format!("/dashboard/source/{seg}");
    let body = html! {
        (render::notice(Done::line(query.done.as_deref())))
        p { a href="/dashboard/source" { "← Inbound" } }
        h1 { (text(&s, "name")) }
        dl.settings {
            dt { "Provider" } dd { (s["preset"].as_str().unwrap_or_default()) }
            dt { "Ingest URL" } dd { code { (text(&s, "ingestUrl")) } }
            dt { "Application" } dd { a href=(app_base(text(&s, "appId"))) { (text(&s, "appId")) } }
        }
        h2 { "Received events" }
        div.scroll #events data-live {
            table {
                thead { tr { th { "Time" } th { "Event type" } th.hide-small { "Provider's id" } th { "" } } }
                tbody {
                    @for m in items(&events) {
                        tr {
                            td { (when(text(m, "timestamp"))) }
                            td { a href={ (app_base(text(&s, "appId"))) "/msg/" (segment(text(m, "id"))) } { (text(m, "eventType")) } }
                            td.hide-small.wrap { (text(m, "eventId")) }
                            td { (action(visitor, &format!("{base}/event/{}/replay", segment(text(m, "id"))), "Replay", &[])) }
                        }
                    }
                }
            }
            @if items(&events).is_empty() { p { "No events received yet." } }
        }
        h2 { "Refused requests (recent, this node)" }
        div.scroll #rejections data-live {
            table {
                thead { tr { th { "Time" } th { "Reason" } th { "Detail" } th.hide-small { "Bytes" } } }
                tbody {
                    @for r in rejections.as_array().map(Vec::as_slice).unwrap_or_default() {
                        tr {
                            td { (when(text(r, "timestamp"))) }
                            td { code { (text(r, "code")) } }
                            td.wrap { (text(r, "detail")) }
                            td.hide-small { (number(r, "bodyBytes")) }
                        }
                    }
                }
            }
            @if rejections.as_array().is_none_or(Vec::is_empty) { p { "No refused requests." } }
        }
    };
    Ok(page(dash, text(&s, "name"), visitor, body))
}

pub async fn replay(
    dash: DashState,
    visitor: Visitor,
    Path((source_key, msg_key)): Path<(String, String)>,
    DashForm(form): DashForm<ActionForm>,
) -> Response {
    if let Some(refused) = visitor.refuse_without_csrf(&form.csrf) {
        return refused;
    }
    let (src, msg) = (segment(&source_key), segment(&msg_key));
    match visitor.api(&dash).post(&format!("/api/v1/source/{src}/event/{msg}/replay"), None).await {
        Ok(_) => done(&format!("/dashboard/source/{src}"), Done::Replayed),
        Err(failure) => failure.into_response(),
    }
}

pub async fn operational(dash: DashState, visitor: Visitor) -> Response {
    show(operational_page(&dash, &visitor).await)
}

async fn operational_page(dash: &super::Dash, visitor: &Visitor) -> Result<Response, Failure> {
    let list = visitor.api(dash).get("/api/v1/operational-webhook/endpoint?limit=250").await?;
    let alerts = &dash.state.config.alerts;
    let body = html! {
        h1 { "Operational webhooks" }
        p { "Endpoints told about endpoint changes and failing deliveries (manage them with "
            code { "/api/v1/operational-webhook/endpoint" } ")." }
        div.scroll {
            table {
                thead { tr { th { "URL" } th { "Event types" } th { "State" } th.hide-small { "Description" } } }
                tbody {
                    @for e in items(&list) {
                        tr {
                            td.wrap { (text(e, "url")) }
                            td { (event_types(e)) }
                            td { @if e["disabled"] == true { span.badge.muted { "disabled" } } @else { span.badge.ok { "enabled" } } }
                            td.hide-small { (text(e, "description")) }
                        }
                    }
                }
            }
            @if items(&list).is_empty() { p { "No operational webhook endpoints." } }
        }
        h2 { "Alert emails" }
        p {
            @if alerts.smtp_url.is_some() { "Alert emails are on: each application's " code { "alertEmail" } " is told when its endpoints keep failing." }
            @else { "Alert emails are off (no " code { "alerts.smtp_url" } " configured)." }
        }
    };
    Ok(page(dash, "Operational webhooks", visitor, body))
}
