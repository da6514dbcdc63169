//! `dnslens-load`: a DNS load generator that speaks like a pod — whole lookups as glibc,
//! musl and Go resolvers make them (search walk, A and AAAA together, their own retries) —
//! and measures what a pod feels: lookup latency and failed lookups.
//!
//! ```text
//! dnslens-load --server ADDR:PORT --model glibc|musl|go|plain [--name NAME]... [--names FILE]
//!              [--population 1000 --zipf 1.0] [--search "a b c"] [--ndots 5]
//!              (--rate LOOKUPS_PER_S | --concurrency N) [--duration 10s] [--timeout 5s]
//!              [--lookups N] [--attempts 2] [--json FILE] [--allow-remote]
//! dnslens-load plot RESULTS.json [--out DIR]
//! ```
//!
//! Open loop (`--rate`): lookups start on a fixed schedule whatever the answers do, and
//! latency counts from each lookup's *scheduled* start — no coordinated omission: a stall
//! shows as the queue behind it, not as fewer samples. Closed loop (`--concurrency`): that
//! many lookups at all times (saturation). Bounded in time (`--duration`, at most 1 h) and
//! in lookups waiting (`--max-inflight`); loopback servers only unless `--allow-remote`.

#![forbid(unsafe_code)]

mod model;
mod names;
mod plot;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use model::{Model, Resolver};
use names::Zipf;
use report::{RunInfo, Stats};

#[derive(Parser)]
#[command(
    version,
    about = "DNS load as pods make it: whole lookups, lookup latency"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Pictures of a comparison (loadtest/compare.sh's results JSON): lookup-latency CDF
    /// per model, CPU per query and RSS per target, as SVG and PNG.
    Plot {
        results: PathBuf,
        /// Where the pictures go [the results file's folder].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The DNS server, ADDR:PORT.
    #[arg(long)]
    server: Option<SocketAddr>,
    #[arg(long, value_enum, default_value = "glibc")]
    model: Model,
    /// A name to look up (repeatable); none: the built-in Kubernetes mix.
    #[arg(long = "name")]
    names: Vec<String>,
    /// A file of names, one per line.
    #[arg(long = "names")]
    names_file: Option<PathBuf>,
    /// Names in the built-in mix.
    #[arg(long, default_value_t = 1000)]
    population: usize,
    /// Zipf exponent of the draw over the names (0: uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// The search list (a pod's resolv.conf `search`).
    #[arg(
        long,
        default_value = "default.svc.cluster.local svc.cluster.local cluster.local"
    )]
    search: String,
    #[arg(long, default_value_t = 5)]
    ndots: usize,
    /// Open loop: lookups started per second.
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Closed loop: lookups in progress at all times.
    #[arg(long)]
    concurrency: Option<usize>,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many lookups (or at --duration, whichever comes first).
    #[arg(long)]
    lookups: Option<u64>,
    /// The resolver's timeout (resolv.conf `timeout`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The resolver's attempts (resolv.conf `attempts`).
    #[arg(long, default_value_t = 2)]
    attempts: u32,
    /// Open loop: lookups waiting at most; beyond, a lookup is not started (counted).
    #[arg(long, default_value_t = 10_000)]
    max_inflight: usize,
    /// Writes the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Allow a server that is not on loopback.
    #[arg(long)]
    allow_remote: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Plot { results, out }) => plot::plot(&results, out.as_deref()),
        None => {
            let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
            runtime.block_on(run(cli.run))
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let Some(server) = args.server else {
        bail!("--server ADDR:PORT is needed");
    };
    if !server.ip().is_loopback() && !args.allow_remote {
        bail!("{server} is not a loopback address: pass --allow-remote to load a remote server");
    }
    if args.duration > Duration::from_secs(3600) {
        bail!("--duration is at most 1h");
    }
    let (rate, concurrency) = match (args.rate, args.concurrency) {
        (Some(r), None) if r > 0.0 && r <= 1e6 => (Some(r), None),
        (None, Some(n)) if (1..=100_000).contains(&n) => (None, Some(n)),
        _ => bail!("give --rate LOOKUPS_PER_S (0..1e6] or --concurrency N (1..100000)"),
    };
    let mut names = args.names.clone();
    if let Some(file) = &args.names_file {
        let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
        names.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    if names.is_empty() {
        names = names::builtin(args.population);
    }
    let names = Arc::new(names);
    let zipf = Arc::new(Zipf::new(names.len(), args.zipf));
    let resolver = Arc::new(Resolver {
        model: args.model,
        server,
        search: args.search.split_whitespace().map(String::from).collect(),
        ndots: args.ndots,
        timeout: args.timeout,
        attempts: args.attempts,
    });
    let stats = Arc::new(Mutex::new(Stats::new()));
    let progress = progress_line(args.quiet, stats.clone());
    let started = Instant::now();
    let deadline = started + args.duration;
    let pick = {
        let names = names.clone();
        move || names[zipf.sample(&mut rand::rng())].clone()
    };
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(rate) = rate {
        let inflight = Arc::new(AtomicUsize::new(0));
        let every = Duration::from_secs_f64(1.0 / rate);
        for n in 0u64..args.lookups.unwrap_or(u64::MAX) {
            let scheduled = started + every.mul_f64(n as f64);
            if scheduled >= deadline {
                break;
            }
            tokio::time::sleep_until(scheduled.into()).await;
            if inflight.load(Ordering::Relaxed) >= args.max_inflight {
                lock(&stats).dropped += 1;
                continue;
            }
            inflight.fetch_add(1, Ordering::Relaxed);
            let (resolver, stats, inflight, name) =
                (resolver.clone(), stats.clone(), inflight.clone(), pick());
            tasks.spawn(async move {
                if let Ok(lookup) = resolver.lookup(&name).await {
                    lock(&stats).record(&lookup, scheduled.elapsed());
                }
                inflight.fetch_sub(1, Ordering::Relaxed);
            });
            while tasks.try_join_next().is_some() {}
        }
    } else if let Some(n) = concurrency {
        let budget = Arc::new(std::sync::atomic::AtomicU64::new(
            args.lookups.unwrap_or(u64::MAX),
        ));
        for _ in 0..n {
            let (resolver, stats, pick) = (resolver.clone(), stats.clone(), pick.clone());
            let budget = budget.clone();
            let take = move || {
                budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                        left.checked_sub(1)
                    })
                    .is_ok()
            };
            tasks.spawn(async move {
                while Instant::now() < deadline && take() {
                    let start = Instant::now();
                    if let Ok(lookup) = resolver.lookup(&pick()).await {
                        lock(&stats).record(&lookup, start.elapsed());
                    }
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let report = lock(&stats).report(RunInfo {
        model: format!("{:?}", args.model).to_lowercase(),
        server: server.to_string(),
        mode: if rate.is_some() { "open" } else { "closed" }.into(),
        rate,
        concurrency,
        duration_s: args.duration.as_secs_f64(),
    });
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

/// A progress line on stderr (hidden when it is not a terminal), updated 4 times a second.
fn progress_line(quiet: bool, stats: Arc<Mutex<Stats>>) -> Option<indicatif::ProgressBar> {
    if quiet {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    let shown = bar.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if shown.is_finished() {
                return;
            }
            let s = lock(&stats);
            shown.set_message(format!(
                "{} lookups, {} failed, lookup p99 {} µs",
                s.lookups,
                s.failed(),
                s.lookup_latency.value_at_quantile(0.99)
            ));
            shown.tick();
        }
    });
    Some(bar)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
