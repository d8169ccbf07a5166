//! The dashboard's HTML: the page shell, tables, forms, and the charts, drawn as SVG here
//! on the server. Everything shown is escaped by maud; no page has inline script or style
//! (the Content-Security-Policy allows neither).

use super::{Failure, Visitor};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

const STYLESHEET: &str = include_str!("assets/dashboard.css");
const SCRIPT: &str = include_str!("assets/dashboard.js");

pub async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")], STYLESHEET)
        .into_response()
}

pub async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")], SCRIPT)
        .into_response()
}

/// The page shell: navigation for who is signed in, the body, the refresh interval.
pub fn page(title: &str, visitor: Option<&Visitor>, refresh_ms: u64, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Hookline" }
                link rel="stylesheet" href="/dashboard/assets/dashboard.css";
                script src="/dashboard/assets/dashboard.js" defer {}
            }
            body data-refresh-ms=(refresh_ms) {
                header.top {
                    a.brand href="/dashboard" { "Hookline" }
                    @if let Some(visitor) = visitor {
                        nav {
                            @match visitor.app_id() {
                                None => {
                                    a href="/dashboard" { "Overview" }
                                    a href="/dashboard/app" { "Applications" }
                                    a href="/dashboard/source" { "Inbound" }
                                    a href="/dashboard/operational" { "Operational webhooks" }
                                }
                                Some(app_id) => {
                                    a href={ "/dashboard/app/" (super::segment(app_id)) } { "Endpoints" }
                                    a href={ "/dashboard/app/" (super::segment(app_id)) "/msg" } { "Messages" }
                                }
                            }
                        }
                        form.sign-out method="post" action="/dashboard/sign-out" {
                            (csrf(visitor))
                            span.who { @if visitor.is_admin() { "Operator" } @else { "Portal" } }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub fn csrf(visitor: &Visitor) -> Markup {
    html! { input type="hidden" name="csrf" value=(visitor.csrf); }
}

/// A page as a response.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

pub fn sign_in(problem: Option<&str>) -> Response {
    let body = html! {
        section.card.narrow {
            h1 { "Sign in" }
            p { "Paste the admin token, or an application token for that application's portal." }
            @if let Some(problem) = problem { p.error role="alert" { (problem) } }
            form method="post" action="/dashboard/sign-in" {
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        }
    };
    respond(StatusCode::OK, page("Sign in", None, 0, body))
}

pub fn portal(code: &str) -> Response {
    let body = html! {
        section.card.narrow {
            h1 { "Webhook portal" }
            p { "This link signs you in once. Continue to see your endpoints and deliveries." }
            form method="post" action="/dashboard/portal" {
                input type="hidden" name="code" value=(code);
                button type="submit" { "Continue to the portal" }
            }
        }
    };
    respond(StatusCode::OK, page("Portal", None, 0, body))
}

/// A refusal or an error, as a page.
pub fn refused(status: StatusCode, detail: &str) -> Response {
    let body = html! {
        section.card.narrow {
            h1 { (status.canonical_reason().unwrap_or("Error")) }
            p.error role="alert" { (detail) }
            p { a href="/dashboard" { "Back to the dashboard" } }
        }
    };
    let mut response = respond(status, page("Error", None, 0, body));
    // As the API says when to come back: a second for a token's budget, five for storage.
    let retry_after = match status {
        StatusCode::TOO_MANY_REQUESTS => Some("1"),
        StatusCode::SERVICE_UNAVAILABLE => Some("5"),
        _ => None,
    };
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static(seconds));
    }
    response
}

pub fn not_found() -> Response {
    refused(StatusCode::NOT_FOUND, "There is no such page, or it is not yours to see.")
}

/// What the API refused, as the page's answer (another application's data is "not found").
pub fn failure(failure: &Failure) -> Response {
    match failure.status {
        StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => not_found(),
        StatusCode::UNAUTHORIZED => axum::response::Redirect::to("/dashboard/sign-in").into_response(),
        status => refused(status, &format!("{} ({})", failure.detail, failure.code)),
    }
}

/// A flash line after an action (`?done=…`).
pub fn notice(done: Option<&str>) -> Markup {
    html! {
        @if let Some(done) = done {
            p.notice role="status" { (done) }
        }
    }
}

/// A string field of an API object ("" when absent).
pub fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

pub fn number(value: &Value, key: &str) -> u64 {
    value.get(key).and_then(Value::as_u64).unwrap_or_default()
}

/// The items of a list answer.
pub fn items(list: &Value) -> &[Value] {
    list.get("data").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// An RFC 3339 time, to the second, as people read it.
pub fn when(time: &str) -> String {
    time.get(..19).map_or_else(|| time.to_owned(), |t| t.replace('T', " "))
}

/// A delivery status (Svix's codes, and ours) as a labelled badge: words, not colour alone.
pub fn status_badge(text: &str) -> Markup {
    let class = match text {
        "success" | "delivered" => "ok",
        "fail" | "failed" | "exhausted" => "bad",
        "pending" | "sending" | "waiting" => "wait",
        _ => "muted",
    };
    html! { span class={ "badge " (class) } { (text) } }
}

pub fn health_badge(endpoint: &Value) -> Markup {
    let health = endpoint.get("health");
    let status = health.map_or("healthy", |h| text(h, "status"));
    let class = match status {
        "healthy" => "ok",
        "failing" => "bad",
        _ => "muted",
    };
    let since = health.map(|h| text(h, "failSince")).filter(|s| !s.is_empty());
    html! {
        span class={ "badge " (class) } data-health=(status) {
            (status)
            @if let Some(since) = since { " since " (when(since)) }
        }
    }
}

/// A series of attempts per period as stacked bars: succeeded below, failed above. Each
/// bar has a tooltip with its figures; the caption says the totals in words.
pub fn attempts_chart(id: &str, series: &Value, period_label: &str) -> Markup {
    let data = series.get("data").cloned().unwrap_or(Value::Null);
    let column = |key: &str| -> Vec<u64> {
        data.get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
            .unwrap_or_default()
    };
    let (ok, failed) = (column("successCount"), column("failureCount"));
    let (total_ok, total_failed): (u64, u64) = (ok.iter().sum(), failed.iter().sum());
    let start = crate::wire::parse_timestamp(text(series, "startDate")).unwrap_or(0);
    let period_ms = match text(series, "period") {
        "OneMinute" => 60_000,
        "FiveMinutes" => 300_000,
        "OneDay" => 86_400_000,
        _ => 3_600_000,
    };
    let count = ok.len().max(1);
    let peak = ok.iter().zip(&failed).map(|(a, b)| a + b).max().unwrap_or(0).max(1);
    let (width, height, left, bottom) = (720.0_f64, 180.0_f64, 44.0_f64, 20.0_f64);
    let slot = (width - left) / count as f64;
    let scale = (height - bottom - 8.0) / peak as f64;
    let rate = match total_ok + total_failed {
        0 => "no attempts".to_owned(),
        n => format!("{:.1}% succeeded", total_ok as f64 * 100.0 / n as f64),
    };
    html! {
        figure.chart #(id) data-live data-succeeded=(total_ok) data-failed=(total_failed) {
            svg viewBox={ "0 0 " (width) " " (height) } role="img" aria-label={ "Attempts " (period_label) ": " (total_ok) " succeeded, " (total_failed) " failed" } {
                line.axis x1=(left) y1=(height - bottom) x2=(width) y2=(height - bottom) {}
                text.tick x="0" y="14" { (peak) }
                text.tick x="0" y=(height - bottom) { "0" }
                @for (i, (s, f)) in ok.iter().zip(&failed).enumerate() {
                    @let x = left + i as f64 * slot;
                    @let (hs, hf) = (*s as f64 * scale, *f as f64 * scale);
                    g {
                        title { (crate::wire::timestamp(start + i as i64 * period_ms)) ": " (s) " succeeded, " (f) " failed" }
                        rect.ok x=(x) y=(height - bottom - hs) width=((slot - 1.0).max(1.0)) height=(hs) {}
                        rect.fail x=(x) y=(height - bottom - hs - hf) width=((slot - 1.0).max(1.0)) height=(hf) {}
                    }
                }
                text.tick x=(left) y=(height - 4.0) { (when(text(series, "startDate"))) }
                text.tick.end x=(width) y=(height - 4.0) { (when(text(series, "endDate"))) }
            }
            figcaption {
                span.key.ok { "■ succeeded " strong.figure data-figure="succeeded" { (total_ok) } }
                " "
                span.key.fail { "▲ failed " strong.figure data-figure="failed" { (total_failed) } }
                " · " (rate) " · " (period_label)
            }
        }
    }
}

/// The latency of a series' attempts per period: p99 as a solid line, p50 dashed (so the
/// two read apart without colour), in milliseconds as the histogram bound each falls under;
/// a period without attempts leaves a gap.
pub fn latency_chart(id: &str, series: &Value, period_label: &str) -> Markup {
    let column = |key: &str| -> Vec<Option<u64>> {
        series["data"][key].as_array().map(|a| a.iter().map(Value::as_u64).collect()).unwrap_or_default()
    };
    let (p50, p99) = (column("latencyP50Ms"), column("latencyP99Ms"));
    let (width, height, left, bottom) = (720.0_f64, 120.0_f64, 44.0_f64, 6.0_f64);
    let count = p99.len().max(1);
    let slot = (width - left) / count as f64;
    let peak = p99.iter().chain(&p50).flatten().copied().max().unwrap_or(0);
    let scale = (height - bottom - 8.0) / peak.max(1) as f64;
    // Runs of consecutive points with a value, as polyline point lists.
    let runs = |values: &[Option<u64>]| -> Vec<String> {
        let mut runs: Vec<String> = Vec::new();
        let mut current = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match v {
                Some(v) => {
                    let (x, y) = (left + (i as f64 + 0.5) * slot, height - bottom - *v as f64 * scale);
                    current.push(format!("{x:.1},{y:.1}"));
                }
                None if !current.is_empty() => runs.push(std::mem::take(&mut current).join(" ")),
                None => {}
            }
        }
        if !current.is_empty() {
            runs.push(current.join(" "));
        }
        runs
    };
    let worst = p99.iter().flatten().max();
    html! {
        figure.chart #(id) data-live data-p99-max=[worst] {
            svg viewBox={ "0 0 " (width) " " (height) } role="img" aria-label={ "Latency " (period_label) ": p99 up to " (worst.map_or("–".to_owned(), |w| format!("{w} ms"))) } {
                line.axis x1=(left) y1=(height - bottom) x2=(width) y2=(height - bottom) {}
                text.tick x="0" y="14" { (peak) " ms" }
                @for points in runs(&p99) { polyline.p99 points=(points) {} }
                @for points in runs(&p50) { polyline.p50 points=(points) {} }
                // A mark on every point, so a lone minute with attempts shows too.
                @for (i, v) in p99.iter().enumerate() {
                    @if let Some(v) = v {
                        circle.p99 cx=(format!("{:.1}", left + (i as f64 + 0.5) * slot)) cy=(format!("{:.1}", height - bottom - *v as f64 * scale)) r="3" {
                            title { "p99 " (v) " ms, p50 " (p50.get(i).copied().flatten().unwrap_or(0)) " ms" }
                        }
                    }
                }
            }
            figcaption {
                span.key.p99 { "━ p99" } " " span.key.p50 { "┅ p50" }
                " · latency in ms (the histogram bound each falls under) · " (period_label)
                @if let Some(worst) = worst { " · worst p99 " strong { (worst) " ms" } }
            }
        }
    }
}

/// The last attempts as a strip, oldest on the left: a tall cell for a success, a short
/// one for a failure (so it reads without colour), each with its time and answer.
pub fn attempt_strip(attempts: &[Value]) -> Markup {
    let ok_count = attempts.iter().filter(|a| number(a, "status") == 0).count();
    html! {
        figure.strip #attempt-strip data-live {
            svg viewBox="0 0 500 24" role="img" aria-label={ "Last " (attempts.len()) " attempts: " (ok_count) " succeeded" } {
                @for (i, a) in attempts.iter().rev().enumerate() {
                    @let ok = number(a, "status") == 0;
                    g {
                        title { (when(text(a, "timestamp"))) ": " (if ok { "succeeded" } else { "failed" }) ", HTTP " (number(a, "responseStatusCode")) }
                        @if ok { rect.ok x=(i * 5) y="0" width="4" height="24" {} }
                        @else { rect.fail x=(i * 5) y="12" width="4" height="12" {} }
                    }
                }
            }
            figcaption { "Last " (attempts.len()) " attempts, oldest first: " (ok_count) " succeeded, " (attempts.len() - ok_count) " failed (short cells)." }
        }
    }
}

/// A button posting a form with the CSRF token and `fields`.
pub fn action(visitor: &Visitor, path: &str, label: &str, fields: &[(&str, &str)]) -> Markup {
    html! {
        form.inline method="post" action=(path) {
            (csrf(visitor))
            @for (name, value) in fields { input type="hidden" name=(name) value=(value); }
            button type="submit" { (label) }
        }
    }
}

/// The exact bytes of a payload, shown as text.
pub fn payload(raw: &str) -> Markup {
    html! { pre.payload #payload { (raw) } }
}
