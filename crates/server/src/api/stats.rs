//! Statistics: Svix's endpoint stats (`…/endpoint/{ep}/stats`, `…/attempt-stats`), the
//! time series of an application's attempts (`/api/v1/stats/app/{app}/attempt`, Svix's
//! hosted shape, plus latency), and an inbound source's series. Read from the counters
//! `crate::stats` writes per minute (hours after a day).

use super::apps::find as find_app;
use super::endpoints::find_in as find_endpoint;
use super::route::{tagged, QueryParam, Route};
use super::sources::find as find_source;
use super::{query_time as time, AppState, PathParams, QueryParams, Shared};
use crate::error::{ApiError, ApiResult};
use crate::wire::*;
use axum::Json;
use hookline_core::delivery::DeliveryState;
use hookline_core::UnixMs;
use hookline_store::{StatCounts, StatRow, StatScope};
use serde::Deserialize;
use serde_json::json;

/// The most points a series has (a week of five minutes); a longer range keeps its last.
const BUCKETS_MAX: i64 = 2_016;
const DAY_MS: i64 = 86_400_000;

pub fn routes() -> Vec<Route> {
    let range = [SINCE, UNTIL];
    let series = [PERIOD, START_DATE, END_DATE];
    tagged(
        "Statistics",
        vec![
            Route::get("/api/v1/app/{app_id}/endpoint/{endpoint_id}/stats", endpoint_stats)
                .doc(
                    "getEndpointStats",
                    "Deliveries to the endpoint of messages created in a range (default: the last 28 days), \
                     by status.",
                )
                .query(&range)
                .answers::<EndpointStatsOut>(200, "The counts."),
            Route::get("/api/v1/app/{app_id}/endpoint/{endpoint_id}/attempt-stats", attempt_stats)
                .doc(
                    "getEndpointAttemptStats",
                    "Attempts to the endpoint in a range (default: the last 28 days), by outcome, with latency.",
                )
                .query(&range)
                .answers::<EndpointAttemptStatsOut>(200, "The counts."),
            Route::get("/api/v1/stats/app/{app_id}/attempt", app_attempts)
                .doc(
                    "getAppAttemptStats",
                    "Attempts to the application's endpoints (or one of them) per period: successes, failures \
                     and latency. Minute detail is kept for a day, hours for 90 days.",
                )
                .query(&series)
                .query(&[ENDPOINT_ID])
                .answers::<AttemptSeriesOut>(200, "The series."),
            Route::get("/api/v1/stats/attempt", all_attempts)
                .doc(
                    "getAttemptStats",
                    "Attempts to every application's endpoints per period: successes, failures and latency \
                     (admin token).",
                )
                .query(&series)
                .answers::<AttemptSeriesOut>(200, "The series."),
            Route::get("/api/v1/stats/queue", queue)
                .doc(
                    "getQueueStats",
                    "Deliveries waiting or being attempted across the cluster, and in flight on the node that \
                     answers (admin token).",
                )
                .answers::<QueueStatsOut>(200, "The counts."),
            Route::get("/api/v1/stats/failing-endpoint", failing)
                .doc(
                    "listFailingEndpoints",
                    "Endpoints whose every attempt failed since some time, of every application, longest failing \
                     first (admin token).",
                )
                .query(&[super::query::LIMIT])
                .answers::<ListResponse<FailingEndpointOut>>(200, "One page, the worst first."),
            Route::get("/api/v1/stats/source/{source_id}", source_series)
                .doc(
                    "getSourceStats",
                    "An inbound source per period: requests accepted, refused and duplicate, and the attempts \
                     forwarding its events.",
                )
                .query(&series)
                .answers::<SourceSeriesOut>(200, "The series."),
        ],
    )
}

const SINCE: QueryParam = QueryParam::date_time("since", "Start of the range (RFC 3339).");
const UNTIL: QueryParam = QueryParam::date_time("until", "End of the range (RFC 3339, default now).");
const PERIOD: QueryParam = QueryParam {
    name: "period",
    description: "The width of each point: `OneMinute`, `FiveMinutes`, `OneHour` (default) or `OneDay`.",
    schema: || json!({"type": "string", "enum": ["OneMinute", "FiveMinutes", "OneHour", "OneDay"]}),
};

const START_DATE: QueryParam = QueryParam::date_time(
    "startDate",
    "Start of the series (RFC 3339, rounded down to the period; default a day before endDate).",
);
const END_DATE: QueryParam = QueryParam::date_time(
    "endDate",
    "End of the series (RFC 3339, default now). At most 2016 points: a longer range keeps its last 2016.",
);
const ENDPOINT_ID: QueryParam = QueryParam::string("endpointId", "Only this endpoint (id or uid).");

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsQuery {
    since: Option<String>,
    until: Option<String>,
    period: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
    endpoint_id: Option<String>,
    limit: Option<usize>,
}

/// `[since, until)`, by default the last 28 days; empty when `since` is after `until`.
fn range(state: &AppState, query: &StatsQuery) -> ApiResult<(UnixMs, UnixMs)> {
    let until = time("until", &query.until)?.unwrap_or_else(|| state.now() + 1);
    let since = time("since", &query.since)?.unwrap_or(until - 28 * DAY_MS);
    Ok((since.min(until), until))
}

/// The series' period, its first bucket and its number of buckets.
fn buckets(state: &AppState, query: &StatsQuery) -> ApiResult<(&'static str, i64, UnixMs, usize)> {
    let (name, period_ms) = match query.period.as_deref() {
        Some("OneMinute") => ("OneMinute", 60_000),
        Some("FiveMinutes") => ("FiveMinutes", 300_000),
        None | Some("OneHour") => ("OneHour", 3_600_000),
        Some("OneDay") => ("OneDay", DAY_MS),
        Some(other) => {
            let detail = format!("period must be OneMinute, FiveMinutes, OneHour or OneDay, not `{other}`");
            return Err(ApiError::BadRequest(detail));
        }
    };
    let end = time("endDate", &query.end_date)?.unwrap_or_else(|| state.now());
    let start = time("startDate", &query.start_date)?.unwrap_or(end - DAY_MS);
    // The last point is the one `end` falls in; a longer range keeps its last points, and
    // one that ends before it starts has none.
    let last = end - end.rem_euclid(period_ms);
    let start = start.max(last - (BUCKETS_MAX - 1) * period_ms);
    let start = start - start.rem_euclid(period_ms);
    let count = if start > last { 0 } else { (last - start) / period_ms + 1 };
    Ok((name, period_ms, start, count as usize))
}

/// Sums each row into the bucket its start falls in.
fn series(rows: &[StatRow], start: UnixMs, period_ms: i64, count: usize) -> Vec<StatCounts> {
    let mut points = vec![StatCounts::default(); count];
    for row in rows {
        let index = (row.bucket - start).div_euclid(period_ms);
        if let Some(point) = usize::try_from(index).ok().and_then(|i| points.get_mut(i)) {
            point.add(&row.counts);
        }
    }
    points
}

fn attempts_series(points: &[StatCounts]) -> AttemptSeries {
    AttemptSeries {
        success_count: points.iter().map(|p| p.succeeded).collect(),
        failure_count: points.iter().map(|p| p.failed).collect(),
        latency_p50_ms: points.iter().map(|p| p.latency_quantile_ms(0.5)).collect(),
        latency_p99_ms: points.iter().map(|p| p.latency_quantile_ms(0.99)).collect(),
    }
}

async fn endpoint_stats(
    state: Shared,
    PathParams((app_key, endpoint_key)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<StatsQuery>,
) -> ApiResult<Json<EndpointStatsOut>> {
    let app = find_app(&state, &app_key).await?;
    let endpoint = find_endpoint(&state, &app, &endpoint_key).await?;
    let (since, until) = range(&state, &query)?;
    let counts =
        state.store.delivery_counts(&endpoint.id, since, until).await.map_err(ApiError::from_store("endpoint"))?;
    let of = |wanted: DeliveryState| counts.iter().filter(|(s, _)| *s == wanted).map(|(_, n)| n).sum();
    Ok(Json(EndpointStatsOut {
        success: of(DeliveryState::Delivered),
        // Behind an earlier message of their ordering key, they wait for their first attempt.
        pending: of(DeliveryState::Pending) + of(DeliveryState::Waiting),
        sending: of(DeliveryState::Sending),
        fail: of(DeliveryState::Exhausted),
        canceled: of(DeliveryState::Canceled),
        skipped: of(DeliveryState::Skipped),
    }))
}

async fn attempt_stats(
    state: Shared,
    PathParams((app_key, endpoint_key)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<StatsQuery>,
) -> ApiResult<Json<EndpointAttemptStatsOut>> {
    let app = find_app(&state, &app_key).await?;
    let endpoint = find_endpoint(&state, &app, &endpoint_key).await?;
    let (since, until) = range(&state, &query)?;
    state.engine.stats.flush(&state.store).await;
    let rows = state
        .store
        .stats_of(StatScope::One(&endpoint.id), since, until)
        .await
        .map_err(ApiError::from_store("endpoint"))?;
    let mut total = StatCounts::default();
    rows.iter().for_each(|r| total.add(&r.counts));
    Ok(Json(EndpointAttemptStatsOut {
        success: total.succeeded,
        fail: total.failed,
        canceled: 0,
        latency_p50_ms: total.latency_quantile_ms(0.5),
        latency_p99_ms: total.latency_quantile_ms(0.99),
    }))
}

async fn app_attempts(
    state: Shared,
    PathParams(app_key): PathParams<String>,
    QueryParams(query): QueryParams<StatsQuery>,
) -> ApiResult<Json<AttemptSeriesOut>> {
    let app = find_app(&state, &app_key).await?;
    let endpoint = match &query.endpoint_id {
        Some(key) => Some(find_endpoint(&state, &app, key).await?),
        None => None,
    };
    let scope = match &endpoint {
        Some(e) => StatScope::One(&e.id),
        None => StatScope::EndpointsOf(&app.id),
    };
    attempt_series_of(&state, scope, &query).await.map(Json)
}

async fn all_attempts(state: Shared, QueryParams(query): QueryParams<StatsQuery>) -> ApiResult<Json<AttemptSeriesOut>> {
    attempt_series_of(&state, StatScope::Endpoints, &query).await.map(Json)
}

/// The attempts of `scope` per period of the query's series.
async fn attempt_series_of(state: &AppState, scope: StatScope<'_>, query: &StatsQuery) -> ApiResult<AttemptSeriesOut> {
    let (period, period_ms, start, count) = buckets(state, query)?;
    let end = start + period_ms * count as i64;
    state.engine.stats.flush(&state.store).await;
    let rows = state.store.stats_of(scope, start, end).await.map_err(ApiError::from_store("statistics"))?;
    let points = series(&rows, start, period_ms, count);
    Ok(AttemptSeriesOut {
        data: attempts_series(&points),
        period,
        start_date: timestamp(start),
        end_date: timestamp(end),
    })
}

async fn queue(state: Shared) -> ApiResult<Json<QueueStatsOut>> {
    let open = state.store.count_open_deliveries().await.map_err(ApiError::from_store("deliveries"))?;
    Ok(Json(QueueStatsOut { open, in_flight: state.engine.in_flight() as u64 }))
}

async fn failing(
    state: Shared,
    QueryParams(query): QueryParams<StatsQuery>,
) -> ApiResult<Json<ListResponse<FailingEndpointOut>>> {
    let limit = query.limit.unwrap_or(super::LIST_LIMIT_DEFAULT).clamp(1, super::LIST_LIMIT_MAX);
    let found = state.store.failing_endpoints(limit).await.map_err(ApiError::from_store("endpoints"))?;
    let data = found
        .into_iter()
        .map(|e| FailingEndpointOut { app_id: e.app_id.clone(), endpoint: super::views::endpoint(e) })
        .collect();
    Ok(Json(ListResponse { data, iterator: None, prev_iterator: None, done: true }))
}

async fn source_series(
    state: Shared,
    PathParams(source_key): PathParams<String>,
    QueryParams(query): QueryParams<StatsQuery>,
) -> ApiResult<Json<SourceSeriesOut>> {
    let source = find_source(&state, &source_key).await?;
    let (period, period_ms, start, count) = buckets(&state, &query)?;
    let end = start + period_ms * count as i64;
    state.engine.stats.flush(&state.store).await;
    let rows =
        state.store.stats_of(StatScope::One(&source.id), start, end).await.map_err(ApiError::from_store("source"))?;
    let points = series(&rows, start, period_ms, count);
    Ok(Json(SourceSeriesOut {
        data: SourceSeries {
            accepted: points.iter().map(|p| p.accepted).collect(),
            refused: points.iter().map(|p| p.refused).collect(),
            duplicate: points.iter().map(|p| p.duplicate).collect(),
            forwarded: attempts_series(&points),
        },
        period,
        start_date: timestamp(start),
        end_date: timestamp(end),
    }))
}
