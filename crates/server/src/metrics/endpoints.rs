//! Each endpoint's delivery metrics, kept here rather than in the `metrics` recorder, which
//! keeps every series it has seen for the life of the process: with endpoints created and
//! deleted, its `/metrics` page and memory grew by about twenty series per endpoint ever
//! delivered to. A lane's series here go when its endpoint (or application) is deleted
//! ([`EndpointSeries::keep_of_app`]); they are rendered after the recorder's, in the same
//! text format, with the same names, labels and buckets.

use super::{escape, ATTEMPTS, ATTEMPT_SECONDS, BUCKETS_SECONDS, EXHAUSTED, FAILED, SUCCEEDED};
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The series of one lane (an endpoint, or an application's callback URLs).
pub struct LaneSeries {
    succeeded: AtomicU64,
    failed: AtomicU64,
    exhausted: AtomicU64,
    /// Attempts by outcome (`success` or an error class), in the order first seen.
    attempts: Mutex<Vec<(&'static str, u64)>>,
    /// Attempt durations: a count per bucket of `BUCKETS_SECONDS` (not cumulative), their
    /// sum in milliseconds, and how many.
    buckets: [AtomicU64; BUCKETS_SECONDS.len()],
    sum_ms: AtomicU64,
    count: AtomicU64,
    /// Recorded into since the last sweep of idle lanes ([`EndpointSeries::idle_apps`]).
    used: AtomicBool,
}

/// Which of a lane's counters an attempt's outcome adds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    Succeeded,
    Failed,
    Exhausted,
    /// Neither (a delivery skipped: its endpoint disabled).
    Neither,
}

impl LaneSeries {
    fn new() -> LaneSeries {
        LaneSeries {
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
            attempts: Mutex::default(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
            used: AtomicBool::new(true),
        }
    }

    /// Records one attempt: its outcome class, its duration if a request was sent, and
    /// what it settled.
    pub fn attempt(&self, outcome: &'static str, duration_ms: Option<u64>, settled: Settled) {
        self.used.store(true, Ordering::Relaxed);
        {
            let mut attempts = self.attempts.lock().expect("lane series lock");
            match attempts.iter_mut().find(|(o, _)| *o == outcome) {
                Some((_, n)) => *n += 1,
                None => attempts.push((outcome, 1)),
            }
        }
        if let Some(ms) = duration_ms {
            let seconds = ms as f64 / 1000.0;
            if let Some(bucket) = BUCKETS_SECONDS.iter().position(|bound| seconds <= *bound) {
                self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
            }
            self.sum_ms.fetch_add(ms, Ordering::Relaxed);
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        let counter = match settled {
            Settled::Succeeded => &self.succeeded,
            Settled::Failed => &self.failed,
            Settled::Exhausted => &self.exhausted,
            Settled::Neither => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every lane's series on this node, by lane, and the lanes of each application.
#[derive(Default)]
pub struct EndpointSeries {
    inner: Mutex<Lanes>,
}

#[derive(Default)]
struct Lanes {
    series: HashMap<String, Arc<LaneSeries>>,
    of_app: HashMap<String, HashSet<String>>,
}

impl EndpointSeries {
    /// The series of `lane` (of application `app_id`), made at its first attempt.
    pub fn lane(&self, lane: &str, app_id: &str) -> Arc<LaneSeries> {
        let mut lanes = self.inner.lock().expect("endpoint series lock");
        if let Some(series) = lanes.series.get(lane) {
            return series.clone();
        }
        let series = Arc::new(LaneSeries::new());
        lanes.series.insert(lane.to_owned(), series.clone());
        lanes.of_app.entry(app_id.to_owned()).or_default().insert(lane.to_owned());
        series
    }

    /// Whether any lane of `app_id` has series here.
    pub fn has_app(&self, app_id: &str) -> bool {
        self.inner.lock().expect("endpoint series lock").of_app.contains_key(app_id)
    }

    /// Drops the series of `app_id`'s lanes that `keep` does not keep (a deleted endpoint's;
    /// every lane of a deleted application).
    pub fn keep_of_app(&self, app_id: &str, keep: impl Fn(&str) -> bool) {
        let mut guard = self.inner.lock().expect("endpoint series lock");
        let Lanes { series, of_app } = &mut *guard;
        let Some(lanes) = of_app.get_mut(app_id) else { return };
        lanes.retain(|lane| {
            let kept = keep(lane);
            if !kept {
                series.remove(lane);
            }
            kept
        });
        if lanes.is_empty() {
            of_app.remove(app_id);
        }
    }

    /// The applications with a lane not recorded into since the last call: what a sweep
    /// looks at for endpoints deleted without this node hearing of it (or recorded into once
    /// more by an attempt that ended after the deletion).
    pub fn idle_apps(&self) -> Vec<String> {
        let lanes = self.inner.lock().expect("endpoint series lock");
        // Every lane is looked at (and marked unused for the next call), not only up to an
        // application's first idle one.
        let idle = |lanes_of_app: &HashSet<String>| {
            lanes_of_app.iter().filter(|l| !lanes.series[*l].used.swap(false, Ordering::Relaxed)).count() > 0
        };
        let mut apps: Vec<String> =
            lanes.of_app.iter().filter(|(_, lanes_of_app)| idle(lanes_of_app)).map(|(app, _)| app.clone()).collect();
        apps.sort();
        apps
    }

    /// The series in Prometheus' text format, one block per metric.
    pub fn render(&self, out: &mut String) {
        let mut lanes: Vec<(String, Arc<LaneSeries>)> = (self.inner.lock().expect("endpoint series lock").series)
            .iter()
            .map(|(l, s)| (l.clone(), s.clone()))
            .collect();
        if lanes.is_empty() {
            return;
        }
        lanes.sort_by(|a, b| a.0.cmp(&b.0));
        let lanes: Vec<(String, &LaneSeries)> = lanes.iter().map(|(l, s)| (escape(l), s.as_ref())).collect();
        for (name, value) in [
            (SUCCEEDED, (|s: &LaneSeries| &s.succeeded) as fn(&LaneSeries) -> &AtomicU64),
            (FAILED, |s| &s.failed),
            (EXHAUSTED, |s| &s.exhausted),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (lane, s) in &lanes {
                let _ = writeln!(out, "{name}{{endpoint=\"{lane}\"}} {}", value(s).load(Ordering::Relaxed));
            }
        }
        let _ = writeln!(out, "# TYPE {ATTEMPTS} counter");
        for (lane, s) in &lanes {
            for (outcome, n) in s.attempts.lock().expect("lane series lock").iter() {
                let _ = writeln!(out, "{ATTEMPTS}{{endpoint=\"{lane}\",outcome=\"{outcome}\"}} {n}");
            }
        }
        let _ = writeln!(out, "# TYPE {ATTEMPT_SECONDS} histogram");
        for (lane, s) in &lanes {
            let mut below = 0;
            for (bound, bucket) in BUCKETS_SECONDS.iter().zip(&s.buckets) {
                below += bucket.load(Ordering::Relaxed);
                let _ = writeln!(out, "{ATTEMPT_SECONDS}_bucket{{endpoint=\"{lane}\",le=\"{bound}\"}} {below}");
            }
            let count = s.count.load(Ordering::Relaxed);
            let sum = s.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
            let _ = writeln!(out, "{ATTEMPT_SECONDS}_bucket{{endpoint=\"{lane}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{ATTEMPT_SECONDS}_sum{{endpoint=\"{lane}\"}} {sum}");
            let _ = writeln!(out, "{ATTEMPT_SECONDS}_count{{endpoint=\"{lane}\"}} {count}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text a lane renders: every counter (zero too), attempts by outcome, and the
    /// histogram's cumulative buckets, sum and count; a deleted endpoint's lines go.
    #[test]
    fn a_lane_renders_its_series_until_its_endpoint_goes() {
        let series = EndpointSeries::default();
        let lane = series.lane("ep_1", "app_1");
        lane.attempt("http_status", Some(3), Settled::Failed);
        lane.attempt("success", Some(1_500), Settled::Succeeded);
        lane.attempt("connect", None, Settled::Failed);
        series.lane("callback:app_1", "app_1").attempt("success", Some(0), Settled::Succeeded);
        series.lane("ep_2", "app_2").attempt("success", Some(0), Settled::Succeeded);
        let mut text = String::new();
        series.render(&mut text);
        for line in [
            "# TYPE hookline_deliveries_succeeded_total counter",
            "hookline_deliveries_succeeded_total{endpoint=\"ep_1\"} 1",
            "hookline_deliveries_failed_total{endpoint=\"ep_1\"} 2",
            "hookline_deliveries_exhausted_total{endpoint=\"ep_1\"} 0",
            "hookline_delivery_attempts_total{endpoint=\"ep_1\",outcome=\"http_status\"} 1",
            "hookline_delivery_attempts_total{endpoint=\"ep_1\",outcome=\"connect\"} 1",
            "# TYPE hookline_delivery_attempt_duration_seconds histogram",
            "hookline_delivery_attempt_duration_seconds_bucket{endpoint=\"ep_1\",le=\"0.001\"} 0",
            "hookline_delivery_attempt_duration_seconds_bucket{endpoint=\"ep_1\",le=\"0.005\"} 1",
            "hookline_delivery_attempt_duration_seconds_bucket{endpoint=\"ep_1\",le=\"1\"} 1",
            "hookline_delivery_attempt_duration_seconds_bucket{endpoint=\"ep_1\",le=\"2.5\"} 2",
            "hookline_delivery_attempt_duration_seconds_bucket{endpoint=\"ep_1\",le=\"+Inf\"} 2",
            "hookline_delivery_attempt_duration_seconds_sum{endpoint=\"ep_1\"} 1.503",
            "hookline_delivery_attempt_duration_seconds_count{endpoint=\"ep_1\"} 2",
            "hookline_deliveries_succeeded_total{endpoint=\"callback:app_1\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(text.matches("# TYPE").count(), 5, "one block per metric:\n{text}");
        // ep_1 deleted: its lines go; app_1's callback lane and app_2's endpoint stay.
        series.keep_of_app("app_1", |lane| lane != "ep_1");
        let mut text = String::new();
        series.render(&mut text);
        assert!(!text.contains("\"ep_1\""), "{text}");
        assert!(text.contains("\"callback:app_1\"") && text.contains("\"ep_2\""), "{text}");
        // Idle since the last look: listed once, until recorded into again.
        assert!(series.idle_apps().is_empty(), "every lane was recorded into");
        assert_eq!(series.idle_apps(), ["app_1", "app_2"]);
        series.lane("ep_2", "app_2").attempt("success", None, Settled::Neither);
        assert_eq!(series.idle_apps(), ["app_1"]);
    }
}
