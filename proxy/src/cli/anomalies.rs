//! `dnslens anomalies`: the abnormal lookups of a window as a table (or JSON) — from one
//! running dnslens's journal (`--addr`), or from every dnslens in the cluster through the
//! tracing backend they export to (`--backend jaeger=URL`, see `cluster`).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;

use super::{http_get, journal_table, EXIT_CONFIG};
use crate::anomaly::journal::{Entry, EntryFilter, Hint, Window};
use crate::cluster::{BackendConfig, ClusterView};
use crate::record::Kind;

#[derive(Debug, Args)]
pub struct AnomaliesArgs {
    /// How far back, e.g. 10m, 1h.
    #[arg(long, default_value = "10m")]
    since: String,
    /// The window's start instead (RFC 3339, e.g. 2026-11-30T04:00:00Z, or unix seconds).
    #[arg(long)]
    from: Option<String>,
    /// The window's end (with --from or --since; default now).
    #[arg(long)]
    to: Option<String>,
    /// The tuning hints instead: names that walked the whole search list, most queries first
    /// (one instance's journal only).
    #[arg(long, conflicts_with = "backend")]
    hints: bool,
    /// Only this kind (empty_noerror_search, empty_noerror_no_soa, parallel_race,
    /// client_retry, upstream_timeout, upstream_error).
    #[arg(long)]
    kind: Option<String>,
    /// Only clients of this namespace (node-local pod identity).
    #[arg(long)]
    namespace: Option<String>,
    /// Only clients of this workload (node-local pod identity).
    #[arg(long)]
    workload: Option<String>,
    /// Only lookups of this name (as the client asked it, before the search list).
    #[arg(long)]
    name: Option<String>,
    /// One dnslens's metrics address: its journal.
    #[arg(long, default_value = "127.0.0.1:9253", env = "DNSLENS_METRICS_LISTEN")]
    addr: SocketAddr,
    /// Every dnslens of the cluster instead, from the tracing backend: jaeger=URL.
    #[arg(long, env = "DNSLENS_UI_BACKEND")]
    backend: Option<BackendConfig>,
    /// With --backend: the service.name the instances export under.
    #[arg(long, default_value = crate::cluster::DEFAULT_SERVICE)]
    service: String,
    /// Print JSON (the journal's entries; from a backend each with its instance).
    #[arg(long)]
    json: bool,
}

pub fn run(args: AnomaliesArgs) -> ExitCode {
    let window = match Window::parse(Some(&args.since), args.from.as_deref(), args.to.as_deref()) {
        Ok(window) => window,
        Err(e) => {
            eprintln!("dnslens: --{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let kind = match args.kind.as_deref().map(str::parse::<Kind>).transpose() {
        Ok(kind) => kind,
        Err(e) => {
            eprintln!("dnslens: --kind: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let filter = EntryFilter {
        kind,
        namespace: args.namespace.clone(),
        workload: args.workload.clone(),
        name: args.name.clone(),
    };
    let entries = match &args.backend {
        Some(backend) => from_backend(backend, &args.service, &window, &filter),
        None if args.hints => return local_hints(args.addr, args.json),
        None => from_journal(&args, &filter),
    };
    let entries = match entries {
        Ok(entries) => entries,
        Err(code) => return code,
    };
    if args.json {
        match serde_json::to_string(&entries) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("dnslens: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", journal_table::render(&entries));
    }
    ExitCode::SUCCESS
}

/// The cluster's window, read from the backend.
fn from_backend(
    backend: &BackendConfig,
    service: &str,
    window: &Window,
    filter: &EntryFilter,
) -> Result<Vec<Entry>, ExitCode> {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("dnslens: {e}");
        ExitCode::FAILURE
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(&e))?;
    let found = runtime
        .block_on(async {
            let view = ClusterView::build(backend, service)?;
            view.anomalies(window, filter).await
        })
        .map_err(|e| fail(&e))?;
    if found.skipped > 0 {
        eprintln!(
            "dnslens: {} traces matched but are not dnslens lookups (skipped)",
            found.skipped
        );
    }
    Ok(found.entries)
}

/// One instance's journal, read from its admin endpoint.
fn from_journal(args: &AnomaliesArgs, filter: &EntryFilter) -> Result<Vec<Entry>, ExitCode> {
    let mut path = format!("/debug/anomalies?since={}", args.since);
    let params = [("from", &args.from), ("to", &args.to), ("kind", &args.kind)];
    for (key, value) in params {
        if let Some(value) = value {
            path.push_str(&format!("&{key}={value}"));
        }
    }
    let body = http_get(args.addr, &path).map_err(|e| {
        eprintln!(
            "dnslens: cannot read the journal from http://{}{path}: {e}",
            args.addr
        );
        ExitCode::FAILURE
    })?;
    let mut entries: Vec<Entry> = serde_json::from_str(&body).map_err(|e| {
        eprintln!(
            "dnslens: the journal at {} is not what this version reads: {e}",
            args.addr
        );
        ExitCode::FAILURE
    })?;
    // The identity and name filters, applied here: older instances do not know them.
    entries.retain(|e| filter.matches(e));
    Ok(entries)
}

fn local_hints(addr: SocketAddr, json: bool) -> ExitCode {
    let body = match http_get(addr, "/debug/anomalies?hints=1") {
        Ok(body) => body,
        Err(e) => {
            eprintln!("dnslens: cannot read the hints from http://{addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    match serde_json::from_str::<Vec<Hint>>(&body) {
        Ok(hints) => {
            print!("{}", journal_table::render_hints(&hints));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dnslens: the hints at {addr} are not what this version reads: {e}");
            ExitCode::FAILURE
        }
    }
}
