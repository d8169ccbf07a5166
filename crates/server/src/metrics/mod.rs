//! Metric names (`hookline_<thing>_<unit>[_total]`) and the Prometheus recorder. Labels
//! are endpoint ids and outcome classes, never URLs.

pub mod endpoints;
pub mod sources;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

pub const PUBLISHED: &str = "hookline_messages_published_total";
pub const ATTEMPTS: &str = "hookline_delivery_attempts_total";
pub const SUCCEEDED: &str = "hookline_deliveries_succeeded_total";
pub const FAILED: &str = "hookline_deliveries_failed_total";
pub const EXHAUSTED: &str = "hookline_deliveries_exhausted_total";
pub const ATTEMPT_SECONDS: &str = "hookline_delivery_attempt_duration_seconds";
pub const END_TO_END_SECONDS: &str = "hookline_delivery_latency_seconds";
pub const QUEUE_DEPTH: &str = "hookline_queue_depth";
pub const IN_FLIGHT: &str = "hookline_deliveries_in_flight";
/// Deliveries this node holds in memory: queued, waiting for their endpoint or in flight.
pub const HELD: &str = "hookline_deliveries_held";
/// Claims this node held in the store on deliveries it no longer held in memory, freed by
/// its sweep (each is a defect: it would have kept a delivery from being sent).
pub const STRAY_CLAIMS_FREED: &str = "hookline_stray_claims_freed_total";
/// Inbound requests by source and outcome: accepted, duplicate, filtered, or a rejection code.
pub const INBOUND: &str = "hookline_inbound_requests_total";
/// Operational events stored, by type (only those some operational endpoint takes).
pub const OPERATIONAL_EVENTS: &str = "hookline_operational_events_total";
/// Operational events that could not be stored (the store refused them for good, or
/// shutdown came while it was down).
pub const OPERATIONAL_EVENTS_LOST: &str = "hookline_operational_events_lost_total";
/// Operational endpoints Hookline disabled after failing (`disable_after_ms`, or a `410`):
/// they make no events about themselves, so this count (and an error in the log) is how
/// their owners hear that their alert channel stopped.
pub const OPERATIONAL_ENDPOINTS_DISABLED: &str = "hookline_operational_endpoints_disabled_total";
/// Alert emails by outcome: `sent`, `failed` (a try that failed; it is tried again),
/// `dropped` (an unusable address or one the server refuses for good, an email about an
/// endpoint's state replaced by a newer one, an application over its share of the outbox,
/// or the outbox full).
pub const ALERT_EMAILS: &str = "hookline_alert_emails_total";

const BUCKETS_SECONDS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// How often the samples recorded into histograms are counted into their buckets. The
/// recorder keeps each sample (up to two per delivery attempt) until then or until a
/// scrape, so a gateway nobody scrapes would otherwise grow by them without end.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Upkeep passes run so far (tests wait on it).
static UPKEEPS: AtomicU64 = AtomicU64::new(0);

/// A label value as the text format writes it.
fn escape(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// The process-wide recorder, installed on first use (a process has one recorder).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS_SECONDS)
                .expect("buckets are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program's); then
            // ours still renders what it saw, which is nothing, rather than failing.
            let _ = metrics::set_global_recorder(recorder);
            let upkept = handle.clone();
            let upkeep = move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkept.run_upkeep();
                UPKEEPS.fetch_add(1, Ordering::Relaxed);
            };
            if let Err(e) = std::thread::Builder::new().name("hookline-metrics".into()).spawn(upkeep) {
                tracing::error!(error = %e, "could not start the metrics upkeep; histograms grow until scraped");
            }
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upkeep thread runs without a scrape (what each pass does is the exporter's
    /// `run_upkeep`: histogram samples counted into their buckets).
    #[test]
    fn the_upkeep_runs_without_a_scrape() {
        let _ = handle();
        let before = UPKEEPS.load(Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while UPKEEPS.load(Ordering::Relaxed) < before + 2 {
            assert!(std::time::Instant::now() < deadline, "no upkeep ran in 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
