//! Hookline's benchmark harness. Everything runs on 127.0.0.1: a sink, the gateway from a
//! given binary with a fresh data dir, and a closed-loop load generator with keep-alive
//! connections. Scenarios: `e2e`, `fanout`, `slow`, `isolation`, `inbound`, `ingest-redis`,
//! `backlog`, and on
//! PostgreSQL `cluster` (see `bench/README.md`).

mod backlog;
mod cluster;
pub mod gateway;
mod ingest;
mod load;
pub mod sink;

use gateway::{Gateway, TOKEN};
use serde::Serialize;
use serde_json::{json, Value};
use sink::Sink;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SCENARIOS: &[&str] = &["e2e", "fanout", "slow", "isolation", "inbound", "ingest-redis", "backlog"];
/// Scenarios that need `--database-url` (several nodes on one database); not in `all`.
pub const POSTGRES_SCENARIOS: &[&str] = &["cluster"];

/// How big and how slow: `scale` multiplies message counts, `delay_scale` the sink's delays
/// (the tests smoke-run with both small).
#[derive(Clone, Debug)]
pub struct Options {
    pub binary: PathBuf,
    pub scale: f64,
    pub delay_scale: f64,
    /// A PostgreSQL server (URL of any database on it): each gateway gets a fresh database
    /// there. `None`: SQLite in a fresh data dir.
    pub database_url: Option<String>,
}

impl Options {
    fn count(&self, n: usize) -> usize {
        ((n as f64 * self.scale).round() as usize).max(1)
    }

    fn delay_ms(&self, ms: u64) -> u64 {
        ((ms as f64 * self.delay_scale).round() as u64).max(1)
    }

    /// A gateway on this run's backend, with `env` added.
    async fn gateway(&self, env: &[(&str, String)]) -> anyhow::Result<Gateway> {
        let database = match &self.database_url {
            Some(server) => Some(hookline_store::postgres::scratch::fresh_database_on(server).await?),
            None => None,
        };
        Gateway::start(&self.binary, database.as_deref(), env).await
    }
}

/// One measured run of one scenario variant. Times in milliseconds, rates per second.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub variant: String,
    pub messages: usize,
    pub deliveries: usize,
    pub publish_per_s: f64,
    pub publish_p50_ms: f64,
    pub publish_p99_ms: f64,
    pub deliveries_per_s: f64,
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
    pub e2e_max_ms: f64,
    pub duplicates: usize,
    pub lost: usize,
    pub total_s: f64,
    pub sink_in_flight_max: usize,
    pub peak_rss_mb: f64,
    pub idle_rss_mb: f64,
    pub cpu_s: f64,
    pub ready_ms: f64,
    /// The load generator straight against the sink in the same run: the loopback ceiling.
    pub ceiling_per_s: f64,
    /// `cluster` with a kill: from the kill until every acknowledged message had arrived.
    pub takeover_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(1024).build().expect("client builds")
}

async fn api(http: &reqwest::Client, gw: &Gateway, path: &str, body: Value) -> anyhow::Result<Value> {
    let r = http.post(format!("{}{path}", gw.url)).bearer_auth(TOKEN).json(&body).send().await?;
    anyhow::ensure!(r.status().is_success(), "POST {path}: {}", r.status());
    Ok(r.json().await?)
}

async fn app_with_endpoints(http: &reqwest::Client, gw: &Gateway, urls: &[String]) -> anyhow::Result<String> {
    let app = api(http, gw, "/api/v1/app", json!({"name": "bench"})).await?;
    let app_id = app["id"].as_str().unwrap_or_default().to_owned();
    for url in urls {
        api(http, gw, &format!("/api/v1/app/{app_id}/endpoint"), json!({"url": url})).await?;
    }
    Ok(app_id)
}

/// What a closed-loop publish produced: when each message was sent, and each ack latency.
struct Published {
    sent_at: HashMap<String, Instant>,
    latencies_ms: Vec<f64>,
    started: Instant,
    elapsed: Duration,
}

/// Publishes `count` messages with `concurrency` workers, each waiting for its answer
/// before sending the next (closed loop).
async fn publish(gw: &Gateway, app_id: &str, count: usize, concurrency: usize) -> anyhow::Result<Published> {
    publish_keyed(gw, app_id, count, concurrency, None).await
}

/// Publishes as `publish` does; with `keys`, message `n` carries the ordering key
/// `pay_{n % keys}`, so each key's messages wait for each other at the endpoint.
async fn publish_keyed(
    gw: &Gateway,
    app_id: &str,
    count: usize,
    concurrency: usize,
    keys: Option<usize>,
) -> anyhow::Result<Published> {
    let request: MakeRequest = Arc::new(move |n: usize| Request {
        body: match keys {
            None => format!(
                r#"{{"eventType":"payment.succeeded","payload":{{"id":"pay_{n}","amount":1000,"currency":"EUR"}}}}"#
            ),
            Some(keys) => format!(
                r#"{{"eventType":"payment.succeeded","orderingKey":"pay_{}","payload":{{"id":"pay_{n}","amount":1000,"currency":"EUR"}}}}"#,
                n % keys
            ),
        },
        headers: vec![("authorization".into(), format!("Bearer {TOKEN}"))],
    });
    let target = Target::one(format!("{}/api/v1/app/{app_id}/msg", gw.url), 202, "id");
    closed_loop(target, request, count, concurrency).await
}

/// One request of a closed loop.
pub struct Request {
    body: String,
    headers: Vec<(String, String)>,
}

/// Where a closed loop sends (request `n` to `urls[n % len]`), what it expects back, and
/// where the answer names the message.
struct Target {
    urls: Vec<String>,
    status: u16,
    id_field: &'static str,
    /// Requests that fail or get another answer are left out instead of ending the run
    /// (a node is killed on purpose).
    tolerate_failures: bool,
}

impl Target {
    fn one(url: String, status: u16, id_field: &'static str) -> Target {
        Target { urls: vec![url], status, id_field, tolerate_failures: false }
    }
}

type MakeRequest = Arc<dyn Fn(usize) -> Request + Send + Sync>;

/// Sends `count` requests made by `request(n)` with `concurrency` workers, each waiting
/// for its answer before sending the next.
async fn closed_loop(
    target: Target,
    request: MakeRequest,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Published> {
    let next = Arc::new(AtomicUsize::new(0));
    let sent_at = Arc::new(Mutex::new(HashMap::with_capacity(count)));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let urls = target.urls.iter().map(|url| load::Url::parse(url)).collect::<anyhow::Result<Vec<_>>>()?;
    let target = Arc::new(target);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, sent_at, latencies) = (next.clone(), sent_at.clone(), latencies.clone());
        let (target, request) = (target.clone(), request.clone());
        let mut conns: Vec<load::Conn> = urls.iter().cloned().map(load::Conn::new).collect();
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= count {
                    return Ok::<(), anyhow::Error>(());
                }
                let Request { body, headers } = request(n);
                let start = Instant::now();
                let url = n % conns.len();
                let answer = match conns[url].post(&headers, body.into()).await {
                    Ok((status, body)) if status == target.status => {
                        serde_json::from_slice::<Value>(&body).map_err(Into::into)
                    }
                    Ok((status, _)) => Err(anyhow::anyhow!("{} answered {status}", target.urls[url])),
                    Err(e) => Err(e),
                };
                let out = match answer {
                    Ok(out) => out,
                    Err(_) if target.tolerate_failures => continue,
                    Err(e) => return Err(e),
                };
                latencies.lock().unwrap().push(start.elapsed().as_secs_f64() * 1000.0);
                sent_at.lock().unwrap().insert(out[target.id_field].as_str().unwrap_or_default().to_owned(), start);
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let elapsed = started.elapsed();
    let sent_at = std::mem::take(&mut *sent_at.lock().unwrap());
    let latencies_ms = std::mem::take(&mut *latencies.lock().unwrap());
    Ok(Published { sent_at, latencies_ms, started, elapsed })
}

/// Waits until the sink has answered `expected` requests or `limit` passes.
async fn wait_answered(sink: &Sink, expected: usize, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    while sink.arrivals.count() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Instant::now()
}

/// Fills in delivery figures from the sink's arrivals of `published`'s messages.
fn deliveries(report: &mut Report, sink: &Sink, published: &Published, per_message: usize) {
    let arrivals = sink.arrivals.by_id.lock().unwrap();
    let mut e2e = Vec::with_capacity(published.sent_at.len() * per_message);
    let mut last = published.started;
    let mut delivered = 0;
    for (id, sent) in &published.sent_at {
        let Some(times) = arrivals.get(id) else { continue };
        delivered += times.len().min(per_message);
        report.duplicates += times.len().saturating_sub(per_message);
        for t in times.iter().take(per_message) {
            e2e.push(t.duration_since(*sent).as_secs_f64() * 1000.0);
            last = last.max(*t);
        }
    }
    report.lost = published.sent_at.len() * per_message - delivered;
    report.deliveries = delivered;
    let e2e = sorted(e2e);
    report.e2e_p50_ms = percentile(&e2e, 50.0);
    report.e2e_p99_ms = percentile(&e2e, 99.0);
    report.e2e_max_ms = e2e.last().copied().unwrap_or(0.0);
    let span = last.duration_since(published.started).as_secs_f64();
    report.deliveries_per_s = if span > 0.0 { delivered as f64 / span } else { 0.0 };
    let lat = sorted(published.latencies_ms.clone());
    report.publish_p50_ms = percentile(&lat, 50.0);
    report.publish_p99_ms = percentile(&lat, 99.0);
    report.messages = published.sent_at.len();
    report.publish_per_s = published.sent_at.len() as f64 / published.elapsed.as_secs_f64();
}

/// The load generator straight against the sink: the loopback ceiling of this machine.
async fn ceiling(sink: &Sink, count: usize, concurrency: usize) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let url = load::Url::parse(&sink.path(0, 200))?;
    let headers = vec![("webhook-id".to_owned(), "ceiling".to_owned())];
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, mut conn, headers) = (next.clone(), load::Conn::new(url.clone()), headers.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < count {
                let body = bytes::Bytes::from_static(br#"{"id":"pay_0","amount":1000,"currency":"EUR"}"#);
                conn.post(&headers, body).await?;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    sink.arrivals.clear();
    Ok(rate)
}

fn finish(report: &mut Report, gw: &Gateway) {
    report.peak_rss_mb = gw.peak_rss_mb();
    report.cpu_s = gw.cpu_seconds();
    report.ready_ms = gw.ready_after.as_secs_f64() * 1000.0;
}

/// `e2e`: one endpoint, closed-loop publishing at the given concurrency; with `keys`,
/// the messages spread over that many ordering keys.
pub async fn e2e(options: &Options, concurrency: usize, keys: Option<usize>) -> anyhow::Result<Report> {
    let count = options.count(20_000);
    let (http, sink) = (client(), Sink::start().await?);
    let variant = match keys {
        None => format!("c{concurrency}"),
        Some(keys) => format!("c{concurrency}, {keys} ordering keys"),
    };
    let mut report = Report { scenario: "e2e".into(), variant, ..Default::default() };
    report.ceiling_per_s = ceiling(&sink, count, concurrency).await?;
    let gw = options.gateway(&[]).await?;
    report.idle_rss_mb = gw.rss_mb();
    let app = app_with_endpoints(&http, &gw, &[sink.path(0, 200)]).await?;
    let published = publish_keyed(&gw, &app, count, concurrency, keys).await?;
    wait_answered(&sink, count, Duration::from_secs(120)).await;
    deliveries(&mut report, &sink, &published, 1);
    report.total_s = published.started.elapsed().as_secs_f64();
    finish(&mut report, &gw);
    Ok(report)
}

/// `fanout`: an application with 100 endpoints; each message becomes 100 deliveries.
pub async fn fanout(options: &Options) -> anyhow::Result<Report> {
    let (count, endpoints) = (options.count(200), 100);
    let (http, sink) = (client(), Sink::start().await?);
    let mut report = Report { scenario: "fanout".into(), variant: "100 endpoints, c16".into(), ..Default::default() };
    report.ceiling_per_s = ceiling(&sink, count * endpoints, 16).await?;
    let gw = options.gateway(&[]).await?;
    report.idle_rss_mb = gw.rss_mb();
    let urls: Vec<String> = (0..endpoints).map(|_| sink.path(0, 200)).collect();
    let app = app_with_endpoints(&http, &gw, &urls).await?;
    let published = publish(&gw, &app, count, 16).await?;
    wait_answered(&sink, count * endpoints, Duration::from_secs(120)).await;
    deliveries(&mut report, &sink, &published, endpoints);
    report.total_s = published.started.elapsed().as_secs_f64();
    finish(&mut report, &gw);
    Ok(report)
}

/// `slow`: endpoints that answer after a delay; `endpoints` share the messages.
pub async fn slow(options: &Options, messages: usize, delay_ms: u64, endpoints: usize) -> anyhow::Result<Report> {
    let (count, delay) = (options.count(messages), options.delay_ms(delay_ms));
    let (http, sink) = (client(), Sink::start().await?);
    let variant = format!("{count} msgs, {delay} ms answers, {endpoints} endpoints");
    let mut report = Report { scenario: "slow".into(), variant, ..Default::default() };
    let gw = options.gateway(&[]).await?;
    report.idle_rss_mb = gw.rss_mb();
    let mut published_all = Published {
        sent_at: HashMap::new(),
        latencies_ms: Vec::new(),
        started: Instant::now(),
        elapsed: Duration::ZERO,
    };
    let per_endpoint = count.div_ceil(endpoints);
    for n in 0..endpoints {
        let app = app_with_endpoints(&http, &gw, &[sink.path(delay, 200)]).await?;
        let batch = per_endpoint.min(count - n * per_endpoint);
        let published = publish(&gw, &app, batch, 64).await?;
        published_all.sent_at.extend(published.sent_at);
        published_all.latencies_ms.extend(published.latencies_ms);
    }
    published_all.elapsed = published_all.started.elapsed();
    let done = wait_answered(&sink, count, Duration::from_millis(delay * 4 + 120_000)).await;
    deliveries(&mut report, &sink, &published_all, 1);
    report.total_s = done.duration_since(published_all.started).as_secs_f64();
    report.sink_in_flight_max = sink.arrivals.in_flight_max.load(Ordering::SeqCst);
    finish(&mut report, &gw);
    Ok(report)
}

/// `isolation`: a fast endpoint's latency alone, then beside a slow endpoint holding
/// `stuck` deliveries in flight. Returns (alone, beside).
pub async fn isolation(options: &Options) -> anyhow::Result<(Report, Report)> {
    let count = options.count(5_000);
    let stuck = options.count(1_000);
    let delay = options.delay_ms(15_000);
    let (http, sink) = (client(), Sink::start().await?);
    let gw = options.gateway(&[]).await?;
    let fast_app = app_with_endpoints(&http, &gw, &[sink.path(0, 200)]).await?;
    let slow_app = app_with_endpoints(&http, &gw, &[sink.path(delay, 200)]).await?;
    let mut alone =
        Report { scenario: "isolation".into(), variant: "fast endpoint alone".into(), ..Default::default() };
    let published = publish(&gw, &fast_app, count, 16).await?;
    wait_answered(&sink, count, Duration::from_secs(120)).await;
    deliveries(&mut alone, &sink, &published, 1);
    finish(&mut alone, &gw);
    sink.arrivals.clear();
    publish(&gw, &slow_app, stuck, 64).await?;
    // Stuck means in flight: the fast endpoint is measured once the sink holds them all, not
    // while their connections are still being opened (a burst of 1,000 connects takes tens
    // of milliseconds of both cores here, which every delivery then waits behind).
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.arrivals.in_flight_max.load(Ordering::SeqCst) < stuck && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut beside = Report {
        scenario: "isolation".into(),
        variant: format!("beside {stuck} stuck {delay} ms deliveries"),
        ..Default::default()
    };
    let published = publish(&gw, &fast_app, count, 16).await?;
    let fast_ids: Vec<String> = published.sent_at.keys().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let arrived = {
            let arrivals = sink.arrivals.by_id.lock().unwrap();
            fast_ids.iter().filter(|id| arrivals.contains_key(*id)).count()
        };
        if arrived == fast_ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    deliveries(&mut beside, &sink, &published, 1);
    beside.sink_in_flight_max = sink.arrivals.in_flight_max.load(Ordering::SeqCst);
    finish(&mut beside, &gw);
    Ok((alone, beside))
}

/// `inbound`: Stripe-signed requests to an inbound source, forwarded to one endpoint, from
/// `concurrency` connections (a provider sends many at once). Acknowledgements are the
/// `publish` figures; forwarding is the delivery figures.
pub async fn inbound(options: &Options, concurrency: usize) -> anyhow::Result<Report> {
    const SECRET: &str = "whsec_bench_inbound_secret";
    let count = options.count(20_000);
    let (http, sink) = (client(), Sink::start().await?);
    let variant = format!("stripe, c{concurrency}");
    let mut report = Report { scenario: "inbound".into(), variant, ..Default::default() };
    report.ceiling_per_s = ceiling(&sink, count, concurrency).await?;
    let gw = options.gateway(&[]).await?;
    report.idle_rss_mb = gw.rss_mb();
    let app = app_with_endpoints(&http, &gw, &[sink.path(0, 200)]).await?;
    let body = json!({"name": "stripe", "preset": "stripe", "secrets": [SECRET], "appId": app});
    let source = api(&http, &gw, "/api/v1/source", body).await?;
    let url = format!("{}/in/{}", gw.url, source["id"].as_str().unwrap_or_default());
    let request: MakeRequest = Arc::new(|n: usize| {
        let body = format!(r#"{{"id":"evt_{n}","object":"event","type":"payment_intent.succeeded"}}"#);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let signature = hookline_core::signature::stripe_header(&[SECRET], now, body.as_bytes());
        Request { body, headers: vec![("stripe-signature".into(), signature)] }
    });
    let target = Target::one(url, 200, "messageId");
    let published = closed_loop(target, request, count, concurrency).await?;
    wait_answered(&sink, count, Duration::from_secs(120)).await;
    deliveries(&mut report, &sink, &published, 1);
    report.total_s = published.started.elapsed().as_secs_f64();
    finish(&mut report, &gw);
    Ok(report)
}

/// Runs one scenario by name, returning one report per variant.
pub async fn run(name: &str, options: &Options) -> anyhow::Result<Vec<Report>> {
    Ok(match name {
        "e2e" => vec![
            e2e(options, 16, None).await?,
            e2e(options, 64, None).await?,
            e2e(options, 16, Some(options.count(10_000))).await?,
        ],
        "fanout" => vec![fanout(options).await?],
        "slow" => vec![slow(options, 2_000, 2_000, 1).await?, slow(options, 10_000, 15_000, 10).await?],
        "isolation" => {
            let (alone, beside) = isolation(options).await?;
            vec![alone, beside]
        }
        "inbound" => vec![inbound(options, 16).await?, inbound(options, 32).await?, inbound(options, 64).await?],
        "ingest-redis" => vec![ingest::at_rate(options).await?, ingest::drain(options).await?],
        "backlog" => vec![backlog::backlog(options).await?],
        "cluster" => cluster::cluster(options).await?,
        other => anyhow::bail!("unknown scenario {other}; known: {}", SCENARIOS.join(", ")),
    })
}

/// The median of each figure over several runs of the same variants; for losses and
/// duplicates, the worst run.
pub fn median(runs: &[Vec<Report>]) -> Vec<Report> {
    let Some(first) = runs.first() else { return Vec::new() };
    (0..first.len())
        .map(|i| {
            let column = |f: fn(&Report) -> f64| {
                let values = sorted(runs.iter().filter_map(|r| r.get(i)).map(f).collect());
                values[values.len() / 2]
            };
            // Losses and duplicates are never averaged away: the worst run counts.
            let worst = |f: fn(&Report) -> usize| runs.iter().filter_map(|r| r.get(i)).map(f).max().unwrap_or(0);
            Report {
                scenario: first[i].scenario.clone(),
                variant: first[i].variant.clone(),
                messages: column(|r| r.messages as f64) as usize,
                deliveries: column(|r| r.deliveries as f64) as usize,
                publish_per_s: column(|r| r.publish_per_s),
                publish_p50_ms: column(|r| r.publish_p50_ms),
                publish_p99_ms: column(|r| r.publish_p99_ms),
                deliveries_per_s: column(|r| r.deliveries_per_s),
                e2e_p50_ms: column(|r| r.e2e_p50_ms),
                e2e_p99_ms: column(|r| r.e2e_p99_ms),
                e2e_max_ms: column(|r| r.e2e_max_ms),
                duplicates: worst(|r| r.duplicates),
                lost: worst(|r| r.lost),
                total_s: column(|r| r.total_s),
                sink_in_flight_max: column(|r| r.sink_in_flight_max as f64) as usize,
                peak_rss_mb: column(|r| r.peak_rss_mb),
                idle_rss_mb: column(|r| r.idle_rss_mb),
                cpu_s: column(|r| r.cpu_s),
                ready_ms: column(|r| r.ready_ms),
                ceiling_per_s: column(|r| r.ceiling_per_s),
                takeover_s: column(|r| r.takeover_s),
            }
        })
        .collect()
}

/// A plain-text table of reports.
pub fn table(reports: &[Report]) -> String {
    let mut out = String::from(
        "scenario   variant                                   msgs  deliv/s  e2e p50  e2e p99  e2e max  pub/s    pub p99  dup  lost  total s  inflight  RSS MB  CPU s  ceiling/s  ready ms  takeover s\n",
    );
    for r in reports {
        out.push_str(&format!(
            "{:<10} {:<40} {:>5} {:>8.0} {:>8.1} {:>8.1} {:>8.1} {:>8.0} {:>8.1} {:>4} {:>5} {:>8.2} {:>9} {:>7.1} {:>6.1} {:>10.0} {:>9.0} {:>11.1}\n",
            r.scenario,
            r.variant,
            r.messages,
            r.deliveries_per_s,
            r.e2e_p50_ms,
            r.e2e_p99_ms,
            r.e2e_max_ms,
            r.publish_per_s,
            r.publish_p99_ms,
            r.duplicates,
            r.lost,
            r.total_s,
            r.sink_in_flight_max,
            r.peak_rss_mb,
            r.cpu_s,
            r.ceiling_per_s,
            r.ready_ms,
            r.takeover_s
        ));
    }
    out
}
