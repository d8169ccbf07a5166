//! The benchmark harness, smoke-run at tiny sizes against the debug binary so it cannot rot.
//! It asserts what every run must show (nothing lost, nothing duplicated), not speed.

use hookline_bench::{run, Options, SCENARIOS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_loses_nothing() {
    let options =
        Options { binary: env!("CARGO_BIN_EXE_hookline").into(), scale: 0.01, delay_scale: 0.02, database_url: None };
    for name in SCENARIOS {
        let reports = run(name, &options).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!reports.is_empty(), "{name}");
        for r in &reports {
            assert_eq!((r.lost, r.duplicates), (0, 0), "{name} {}: {r:?}", r.variant);
            assert!(r.deliveries >= r.messages && r.messages > 0, "{name} {}: {r:?}", r.variant);
            assert!(r.peak_rss_mb > 0.0 && r.e2e_p99_ms > 0.0, "{name} {}: {r:?}", r.variant);
        }
    }
}
