//! `ingest-redis`: messages put on a Redis stream by the load generator, consumed by the
//! gateway (a consumer group), stored durably and delivered to the sink. Two variants:
//! an open loop at a fixed rate (10,000/s), where the latency from `XADD` to delivery is
//! measured, and a drain of a stream filled before the gateway starts, which measures how
//! many messages per second it can ingest and deliver at most.

use super::*;

/// Where the generator puts messages: the machine's Redis unless `HOOKLINE_BENCH_REDIS_URL`.
fn redis_url() -> String {
    std::env::var("HOOKLINE_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The rate of the open-loop variant, messages per second.
const RATE_PER_S: f64 = 10_000.0;

/// A stream of the run's own, and the gateway setting that consumes it.
fn stream_and_consumer() -> (String, (&'static str, String)) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let stream = format!("hookline-bench-{}-{nanos}", std::process::id());
    let table = format!(r#"[{{url = "{}", stream = "{stream}", group = "hookline"}}]"#, redis_url());
    (stream, ("HOOKLINE_INGEST_REDIS", table))
}

fn message(app: &str, n: usize) -> String {
    format!(
        r#"{{"app":"{app}","eventType":"payment.succeeded","payload":{{"id":"pay_{n}","amount":1000,"currency":"EUR"}}}}"#
    )
}

/// XADDs messages `range` in one pipeline.
async fn put(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    app: &str,
    range: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    let mut pipe = redis::pipe();
    for n in range {
        pipe.cmd("XADD").arg(stream).arg("*").arg("message").arg(message(app, n)).ignore();
    }
    let _: () = pipe.query_async(conn).await?;
    Ok(())
}

async fn forget(conn: &mut redis::aio::MultiplexedConnection, stream: &str) {
    let _: Result<(), _> = redis::cmd("DEL").arg(stream).query_async(conn).await;
}

/// The open loop: `count` messages at `RATE_PER_S`, put in small pipelines as their time
/// comes. `publish` figures are the generator's `XADD`s; `e2e` is `XADD` to delivery.
pub async fn at_rate(options: &Options) -> anyhow::Result<Report> {
    let count = options.count(20_000);
    let (http, sink) = (client(), Sink::start().await?);
    let mut report =
        Report { scenario: "ingest-redis".into(), variant: "open loop, 10,000/s".into(), ..Default::default() };
    let (stream, consumer) = stream_and_consumer();
    let gw = options.gateway(&[consumer]).await?;
    report.idle_rss_mb = gw.rss_mb();
    let app = app_with_endpoints(&http, &gw, &[sink.payload_path(0, 200)]).await?;
    let mut conn = redis::Client::open(redis_url())?.get_multiplexed_async_connection().await?;
    let mut sent_at = HashMap::with_capacity(count);
    let mut latencies_ms = Vec::new();
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        let due = ((started.elapsed().as_secs_f64() * RATE_PER_S) as usize).min(count);
        if due == sent {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        let at = Instant::now();
        put(&mut conn, &stream, &app, sent..due).await?;
        latencies_ms.push(at.elapsed().as_secs_f64() * 1000.0);
        sent_at.extend((sent..due).map(|n| (format!("pay_{n}"), at)));
        sent = due;
    }
    let published = Published { sent_at, latencies_ms, started, elapsed: started.elapsed() };
    wait_answered(&sink, count, Duration::from_secs(120)).await;
    deliveries(&mut report, &sink, &published, 1);
    report.total_s = published.started.elapsed().as_secs_f64();
    finish(&mut report, &gw);
    drop(gw);
    forget(&mut conn, &stream).await;
    Ok(report)
}

/// The drain: `count` messages on the stream before the gateway starts; the delivery rate
/// from its start to the last arrival is the most it ingests per second (and `e2e`, from
/// its start to each arrival, is how long messages waited).
pub async fn drain(options: &Options) -> anyhow::Result<Report> {
    let count = options.count(50_000);
    let (http, sink) = (client(), Sink::start().await?);
    let mut report =
        Report { scenario: "ingest-redis".into(), variant: "drain of a filled stream".into(), ..Default::default() };
    // The application must exist before the messages name it: a first gateway creates it
    // on its own database, which the measured gateway then opens.
    let (stream, consumer) = stream_and_consumer();
    let mut gw = options.gateway(&[]).await?;
    let app = app_with_endpoints(&http, &gw, &[sink.payload_path(0, 200)]).await?;
    let mut conn = redis::Client::open(redis_url())?.get_multiplexed_async_connection().await?;
    for start in (0..count).step_by(1_000) {
        put(&mut conn, &stream, &app, start..(start + 1_000).min(count)).await?;
    }
    gw.restart_with(&[consumer]).await?;
    let started = Instant::now();
    let sent_at = (0..count).map(|n| (format!("pay_{n}"), started)).collect();
    let published = Published { sent_at, latencies_ms: Vec::new(), started, elapsed: Duration::ZERO };
    wait_answered(&sink, count, Duration::from_secs(300)).await;
    deliveries(&mut report, &sink, &published, 1);
    // `e2e` here counts from the gateway's start: the time messages waited in the stream.
    report.total_s = started.elapsed().as_secs_f64();
    finish(&mut report, &gw);
    // Stopped first: a consumer blocked on a deleted stream would create it again.
    drop(gw);
    forget(&mut conn, &stream).await;
    Ok(report)
}
