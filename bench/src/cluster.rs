//! `cluster` (PostgreSQL only): three gateways on one database, publishes spread over them
//! round-robin (`e2e` at concurrency 16), then the same with one node killed (`kill -9`)
//! halfway: how long until everything acknowledged before the kill has arrived.

use super::*;

const NODES: usize = 3;

pub async fn cluster(options: &Options) -> anyhow::Result<Vec<Report>> {
    let Some(server) = &options.database_url else {
        anyhow::bail!("the cluster scenario needs --database-url");
    };
    Ok(vec![run_nodes(options, server, false).await?, run_nodes(options, server, true).await?])
}

async fn run_nodes(options: &Options, server: &str, kill_one: bool) -> anyhow::Result<Report> {
    let count = options.count(20_000);
    let (http, sink) = (client(), Sink::start().await?);
    let database = hookline_store::postgres::scratch::fresh_database_on(server).await?;
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(Gateway::start(&options.binary, Some(&database), &[]).await?);
    }
    let app = app_with_endpoints(&http, &nodes[0], &[sink.path(0, 200)]).await?;
    let variant = if kill_one { "3 nodes, c16, kill -9 of one halfway" } else { "3 nodes, c16" };
    let mut report = Report { scenario: "cluster".into(), variant: variant.into(), ..Default::default() };
    let request: MakeRequest = Arc::new(move |n: usize| Request {
        body: format!(r#"{{"eventType":"payment.succeeded","payload":{{"id":"pay_{n}","amount":1000}}}}"#),
        headers: vec![("authorization".into(), format!("Bearer {TOKEN}"))],
    });
    let urls = nodes.iter().map(|gw| format!("{}/api/v1/app/{app}/msg", gw.url)).collect();
    let target = Target { urls, status: 202, id_field: "id", tolerate_failures: kill_one };
    let killer = async {
        if kill_one {
            while sink.arrivals.count() < count / 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            nodes[1].kill();
        }
        Instant::now()
    };
    let (published, killed_at) = tokio::join!(closed_loop(target, request, count, 16), killer);
    let published = published?;
    // Every acknowledged message, not a count of arrivals (a duplicate would make up for a
    // missing one).
    let done = wait_all_arrived(&sink, &published, Duration::from_secs(180)).await;
    deliveries(&mut report, &sink, &published, 1);
    report.total_s = published.started.elapsed().as_secs_f64();
    if kill_one {
        // The time the others took to deliver what the dead node held.
        report.takeover_s = done.duration_since(killed_at).as_secs_f64();
    }
    report.peak_rss_mb = nodes.iter().map(Gateway::peak_rss_mb).fold(0.0, f64::max);
    report.cpu_s = nodes.iter().map(Gateway::cpu_seconds).sum();
    Ok(report)
}

/// Waits until every message of `published` has arrived at the sink, or `limit` passes.
async fn wait_all_arrived(sink: &Sink, published: &Published, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let missing = {
            let arrivals = sink.arrivals.by_id.lock().unwrap();
            published.sent_at.keys().filter(|id| !arrivals.contains_key(*id)).count()
        };
        if missing == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Instant::now()
}
