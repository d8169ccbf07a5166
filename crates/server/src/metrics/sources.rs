//! Each inbound source's request counts (`hookline_inbound_requests_total{source,outcome}`),
//! kept here for the reason `endpoints.rs` gives: a deleted source's series go
//! ([`SourceSeries::keep`]).

use super::{escape, INBOUND};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Requests answered per source and outcome (`accepted`, `duplicate`, `filtered`, or a
/// rejection code), in the order each outcome was first seen.
#[derive(Default)]
pub struct SourceSeries {
    sources: Mutex<HashMap<String, Vec<(&'static str, u64)>>>,
}

impl SourceSeries {
    pub fn count(&self, source_id: &str, outcome: &'static str) {
        let mut sources = self.sources.lock().expect("source series lock");
        let outcomes = match sources.get_mut(source_id) {
            Some(outcomes) => outcomes,
            None => sources.entry(source_id.to_owned()).or_default(),
        };
        match outcomes.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, n)) => *n += 1,
            None => outcomes.push((outcome, 1)),
        }
    }

    /// The sources with series here.
    pub fn ids(&self) -> Vec<String> {
        self.sources.lock().expect("source series lock").keys().cloned().collect()
    }

    /// Drops the series of the sources `keep` does not keep (deleted ones).
    pub fn keep(&self, keep: impl Fn(&str) -> bool) {
        self.sources.lock().expect("source series lock").retain(|id, _| keep(id));
    }

    /// The series in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        let sources = self.sources.lock().expect("source series lock");
        if sources.is_empty() {
            return;
        }
        let mut ids: Vec<&String> = sources.keys().collect();
        ids.sort();
        let _ = writeln!(out, "# TYPE {INBOUND} counter");
        for id in ids {
            let source = escape(id);
            for (outcome, n) in &sources[id] {
                let _ = writeln!(out, "{INBOUND}{{source=\"{source}\",outcome=\"{outcome}\"}} {n}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sources_counts_render_until_it_goes() {
        let series = SourceSeries::default();
        series.count("src_1", "accepted");
        series.count("src_1", "accepted");
        series.count("src_1", "invalid_signature");
        series.count("src_2", "duplicate");
        let mut text = String::new();
        series.render(&mut text);
        assert_eq!(
            text,
            "# TYPE hookline_inbound_requests_total counter\n\
             hookline_inbound_requests_total{source=\"src_1\",outcome=\"accepted\"} 2\n\
             hookline_inbound_requests_total{source=\"src_1\",outcome=\"invalid_signature\"} 1\n\
             hookline_inbound_requests_total{source=\"src_2\",outcome=\"duplicate\"} 1\n"
        );
        series.keep(|id| id != "src_1");
        assert_eq!(series.ids(), ["src_2"]);
    }
}
