//! `hookline-bench`: runs the named scenarios against a Hookline binary on 127.0.0.1 and
//! prints a table (and writes JSON) of the median of several runs.

use clap::Parser;
use hookline_bench::{median, run, table, Options, SCENARIOS};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Benchmark Hookline on loopback")]
struct Args {
    /// Scenarios to run: e2e, fanout, slow, isolation, inbound, ingest-redis, backlog, or all
    /// (and cluster, on PostgreSQL).
    #[arg(long, default_value = "all", value_delimiter = ',')]
    scenario: Vec<String>,
    /// Runs of each scenario; figures are medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Multiplies message counts (1.0 = the documented sizes).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Multiplies the sink's delays (1.0 = 2 s and 15 s).
    #[arg(long, default_value_t = 1.0)]
    delay_scale: f64,
    /// The hookline binary to measure.
    #[arg(long, default_value = "target/release/hookline")]
    binary: PathBuf,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run on PostgreSQL: an URL to any database of the server (each gateway gets a fresh
    /// database there), e.g. postgres://postgres@127.0.0.1:5432/postgres.
    #[arg(long)]
    database_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.binary.exists(), "{} not found: build it with `cargo build --release`", args.binary.display());
    let options = Options {
        binary: args.binary,
        scale: args.scale,
        delay_scale: args.delay_scale,
        database_url: args.database_url,
    };
    let names: Vec<String> = if args.scenario.iter().any(|s| s == "all") {
        SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenario
    };
    let mut all = Vec::new();
    for name in &names {
        let mut runs = Vec::new();
        for n in 0..args.runs {
            eprintln!("== {name}, run {}/{}", n + 1, args.runs);
            let reports = run(name, &options).await?;
            eprint!("{}", table(&reports));
            runs.push(reports);
        }
        all.extend(median(&runs));
    }
    println!("Median of {} run(s):\n{}", args.runs, table(&all));
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&all)?)?;
    }
    Ok(())
}
