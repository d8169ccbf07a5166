//! `backlog`: a merchant down for days leaves its deliveries pending. This scenario loads
//! `count` (1,000,000) deliveries for a dead endpoint (due shortly after the load), kills
//! the gateway with `kill -9` and starts it again, then measures how soon it is healthy,
//! its memory, and the publish and delivery latency of another application while the dead
//! endpoint's retries run.

use super::*;

/// The endpoint of a merchant that is down: nothing listens on port 1.
const DEAD_URL: &str = "http://127.0.0.1:1/dead";

pub async fn backlog(options: &Options) -> anyhow::Result<Report> {
    let count = options.count(1_000_000);
    let (http, sink) = (client(), Sink::start().await?);
    let mut gw = options.gateway(&[]).await?;
    let dead = app_with_endpoints(&http, &gw, &[DEAD_URL.to_owned()]).await?;
    let live = app_with_endpoints(&http, &gw, &[sink.path(0, 200)]).await?;
    // Due a little after the load ends (it runs at several thousand per second), so the
    // restart finds them all pending and their first attempts run beside the measurement.
    let due_in = Duration::from_millis(count as u64 / 4 + options.delay_ms(10_000));
    let due_at = chrono::Utc::now() + due_in;
    let deliver_at = due_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let request: MakeRequest = Arc::new(move |n: usize| Request {
        body: format!(r#"{{"eventType":"payment.succeeded","deliverAt":"{deliver_at}","payload":{{"id":"pay_{n}"}}}}"#),
        headers: vec![("authorization".into(), format!("Bearer {TOKEN}"))],
    });
    let target = Target::one(format!("{}/api/v1/app/{dead}/msg", gw.url), 202, "id");
    let loaded = closed_loop(target, request, count, 64).await?;
    eprintln!("backlog: {count} pending in {:.1} s", loaded.elapsed.as_secs_f64());
    gw.restart().await?;
    let mut report = Report {
        scenario: "backlog".into(),
        idle_rss_mb: gw.rss_mb(),
        ready_ms: gw.ready_after.as_secs_f64() * 1000.0,
        ..Default::default()
    };
    let wait = (due_at - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(2);
    tokio::time::sleep(wait).await;
    let failed_before = failed_attempts(&http, &gw).await?;
    let published = publish(&gw, &live, options.count(5_000), 16).await?;
    wait_answered(&sink, published.sent_at.len(), Duration::from_secs(120)).await;
    let dead_attempts = failed_attempts(&http, &gw).await? - failed_before;
    deliveries(&mut report, &sink, &published, 1);
    report.total_s = published.started.elapsed().as_secs_f64();
    report.variant = format!("{count} pending to a dead endpoint; {dead_attempts:.0} of its retries ran meanwhile");
    let ready_ms = report.ready_ms;
    finish(&mut report, &gw);
    report.ready_ms = ready_ms;
    Ok(report)
}

/// Attempts that did not succeed so far (the dead endpoint's), from `/metrics`.
async fn failed_attempts(http: &reqwest::Client, gw: &Gateway) -> anyhow::Result<f64> {
    let text = http.get(format!("{}/metrics", gw.url)).bearer_auth(TOKEN).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with("hookline_delivery_attempts_total") && !line.contains("outcome=\"success\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}
