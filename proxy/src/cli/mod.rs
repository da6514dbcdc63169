//! The command line: `serve`, `check-config`, `anomalies`, `demo`, `inject`, `webhook`.
//! Flags override `DNSLENS_*` environment variables (clap reads both), which override the
//! YAML file.

mod anomalies;
mod journal_table;
mod probe;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, Overrides, UpstreamAddr};

#[derive(Debug, Parser)]
#[command(
    name = "dnslens",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DNSLENS_REVISION"), ")"),
    about = "A DNS forwarder for Kubernetes that makes DNS visible"
)]
pub struct Cli {
    /// Log lines as `text` (colour only on a terminal) or `json` (one object per line).
    #[arg(
        long,
        global = true,
        env = "DNSLENS_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Forward DNS until SIGTERM/SIGINT.
    Serve(ServeArgs),
    /// Validate a configuration file and exit (0 valid, 2 invalid).
    CheckConfig {
        #[arg(long, env = "DNSLENS_CONFIG")]
        config: PathBuf,
    },
    /// What was abnormal lately: the anomaly journal of a running dnslens, or with
    /// --backend of every dnslens in the cluster, newest first.
    Anomalies(anomalies::AnomaliesArgs),
    /// Serve the timeline page of the cluster's abnormal lookups, read from a tracing
    /// backend (e.g. on a workstation: `dnslens ui --backend jaeger=http://localhost:16686`).
    Ui {
        /// Where the cluster's traces are: jaeger=URL (Jaeger's query service).
        #[arg(long, env = "DNSLENS_UI_BACKEND")]
        backend: crate::cluster::BackendConfig,
        /// The service.name the instances export under.
        #[arg(long, default_value = crate::cluster::DEFAULT_SERVICE)]
        service: String,
        /// Where to serve the page (loopback: it shows query names and client addresses).
        #[arg(long, default_value = "127.0.0.1:9254")]
        listen: SocketAddr,
        /// The link to a lookup's trace, `{trace_id}` replaced (e.g. the Jaeger UI's
        /// `http://localhost:16686/trace/{trace_id}`).
        #[arg(long)]
        trace_url: Option<String>,
    },
    /// Ask this pod's dnslens whether it is ready (or live) over its probe socket
    /// (`admin.probe_socket`): exit 0 when it answers 200, else 1. An exec probe's command.
    Probe {
        #[arg(value_enum)]
        check: probe::ProbeCheck,
        #[arg(long)]
        socket: PathBuf,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Run the proxy in front of an embedded Kubernetes-like upstream (no network needed).
    Demo {
        #[arg(long, default_value = "127.0.0.1:5353")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9253")]
        metrics_listen: SocketAddr,
    },
    /// Add the dnslens sidecar to Kubernetes YAML (Pods and workloads' pod templates), as
    /// `linkerd inject` does; what became of each object goes to stderr.
    Inject {
        /// The YAML to read, `-` for stdin.
        #[arg(short = 'f', long = "filename", default_value = "-")]
        file: PathBuf,
        /// Namespace of objects that do not name one.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        settings: InjectArgs,
    },
    /// Serve the mutating admission webhook that injects the sidecar (HTTPS).
    Webhook {
        #[arg(long, env = "DNSLENS_TLS_CERT")]
        tls_cert: PathBuf,
        #[arg(long, env = "DNSLENS_TLS_KEY")]
        tls_key: PathBuf,
        #[arg(long, default_value = "0.0.0.0:8443", env = "DNSLENS_WEBHOOK_LISTEN")]
        listen: SocketAddr,
        #[command(flatten)]
        settings: InjectArgs,
    },
    /// Node-local on the link-local address: the interface, addresses and NOTRACK rules
    /// (`up`), their removal unless another DNS server answers there (`down`), or `up`
    /// until SIGTERM and then `down` (`hold`). Needs `ip` and `iptables` on PATH.
    NodeSetup {
        #[arg(value_enum)]
        action: NodeSetupAction,
        /// An address to hold (repeatable): the link-local address, and the kube-dns IP
        /// when intercepting.
        #[arg(long = "address", required = true)]
        addresses: Vec<std::net::IpAddr>,
        /// The interface to put them on (created as a dummy interface when missing).
        #[arg(long, default_value = "nodelocaldns")]
        interface: String,
        #[arg(long, default_value_t = 53)]
        port: u16,
        /// With `hold`: a file written once the node is set up (a startup probe's).
        #[arg(long, value_name = "FILE")]
        ready_file: Option<PathBuf>,
        /// With `hold`: how often the setup is checked and repaired (node-cache: 60 s).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        check_every: Duration,
        /// With `hold`: where the repairs are counted (read by the node-local dnslens,
        /// `admin.node_setup_status`).
        #[arg(long, value_name = "FILE")]
        status_file: Option<PathBuf>,
    },
    /// Copies this binary to FILE: the chart's init container hands it to the setup image,
    /// which has `ip` and `iptables` (dnslens's own image has no shell and no `cp`).
    #[command(hide = true)]
    InstallBinary { file: PathBuf },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum NodeSetupAction {
    Up,
    Down,
    Hold,
}

/// Injection settings: a YAML file, then flags on top.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Injection settings (YAML: image, upstreams, cluster_domain, kube_version,
    /// tracing_endpoint, sample_ratio, cache, musl_shield, autopath, resources, ...).
    #[arg(long, env = "DNSLENS_INJECT_CONFIG")]
    pub config: Option<PathBuf>,
    /// The sidecar image.
    #[arg(long)]
    pub image: Option<String>,
    /// The cluster DNS service IP, the sidecar's upstream (repeatable).
    #[arg(long = "upstream", value_delimiter = ',')]
    pub upstreams: Vec<String>,
    #[arg(long)]
    pub cluster_domain: Option<String>,
    /// The target cluster's Kubernetes version: 1.29 or newer (native sidecars); older
    /// ones are refused.
    #[arg(long)]
    pub kube_version: Option<String>,
    /// OTLP endpoint for the sidecar's traces.
    #[arg(long)]
    pub tracing_endpoint: Option<String>,
    #[arg(long)]
    pub sample_ratio: Option<f64>,
    #[arg(long)]
    pub cache: Option<bool>,
    #[arg(long)]
    pub musl_shield: Option<bool>,
    #[arg(long)]
    pub autopath: Option<bool>,
}

impl InjectArgs {
    /// The injection config; with no upstream anywhere, the nameservers of
    /// `upstreams_from` (the webhook's own resolv.conf: the cluster DNS, as its pod runs
    /// with `ClusterFirst`), else an error saying how to find the address.
    pub fn load(
        &self,
        upstreams_from: Option<&Path>,
    ) -> anyhow::Result<crate::inject::InjectConfig> {
        use anyhow::Context;
        let mut config: crate::inject::InjectConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("injection config {}", path.display()))?;
                crate::yaml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("injection config {}: {e}", path.display()))?
            }
            None => Default::default(),
        };
        if let Some(v) = &self.image {
            config.image = v.clone();
        }
        if !self.upstreams.is_empty() {
            config.upstreams = self.upstreams.clone();
        }
        if let Some(v) = &self.cluster_domain {
            config.cluster_domain = v.clone();
        }
        if let Some(v) = &self.kube_version {
            config.kube_version = v.clone();
        }
        if let Some(v) = &self.tracing_endpoint {
            config.tracing_endpoint = Some(v.clone());
        }
        if let Some(v) = self.sample_ratio {
            config.sample_ratio = Some(v);
        }
        for (flag, value) in [
            (self.cache, &mut config.cache),
            (self.musl_shield, &mut config.musl_shield),
            (self.autopath, &mut config.autopath),
        ] {
            if let Some(flag) = flag {
                *value = flag;
            }
        }
        config.check_kube_version()?;
        if config.upstreams.is_empty() {
            let Some(path) = upstreams_from else {
                anyhow::bail!(
                    "upstream: none given: pass --upstream with the cluster DNS Service's IP \
                     (kubectl -n kube-system get service kube-dns -o jsonpath='{{.spec.clusterIP}}')"
                );
            };
            config.upstreams = crate::config::upstreams_from_resolv_conf(path, &[])?
                .iter()
                .map(|u| u.0.ip().to_string())
                .collect();
        }
        for upstream in &config.upstreams {
            upstream
                .parse::<UpstreamAddr>()
                .map_err(|e| anyhow::anyhow!("upstream: {e}"))?;
        }
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// YAML configuration file.
    #[arg(long, env = "DNSLENS_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
}

impl ServeArgs {
    /// The effective configuration: file, then environment and flags, then defaults.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply(self.overrides.clone());
        config.finish()
    }
}

/// Exit status for configuration errors (and command-line errors, as clap does).
pub const EXIT_CONFIG: u8 = 2;

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    init_logging(cli.log_format);
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Serve(args) => {
            // Checked before the runtime starts: a bad config exits 2 with its one line.
            if let Err(e) = args.load() {
                return config_error(&e);
            }
            let watch = args.config.clone();
            run_async(async move {
                crate::serve_until_signal(|| args.load(), watch)
                    .await
                    .map_err(anyhow::Error::from)
            })
        }
        Command::Anomalies(args) => anomalies::run(args),
        Command::Probe {
            check,
            socket,
            timeout,
        } => probe::run(check, &socket, timeout),
        Command::Ui {
            backend,
            service,
            listen,
            trace_url,
        } => {
            let config = crate::admin::UiConfig {
                trace_url,
                backend: Some(backend),
                backend_service: Some(service),
            };
            run_async(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
                eprintln!(
                    "dnslens: the cluster's abnormal lookups at http://{}/ui/",
                    listener.local_addr()?
                );
                let stop = tokio_util::sync::CancellationToken::new();
                tokio::spawn({
                    let stop = stop.clone();
                    async move {
                        crate::wait_for_signal().await;
                        stop.cancel();
                    }
                });
                let loopback = crate::admin::AdminConfig::default().debug_access();
                crate::admin::serve_cluster_page(listener, &config, loopback, stop).await
            })
        }
        Command::Demo {
            listen,
            metrics_listen,
        } => {
            let mut config = Config {
                listen: vec![listen],
                ..Config::default()
            };
            config.admin.listen = metrics_listen;
            run_async(crate::demo::run(config, journal_table::render))
        }
        Command::Inject {
            file,
            namespace,
            settings,
        } => inject(&file, &namespace, &settings),
        Command::NodeSetup {
            action,
            addresses,
            interface,
            port,
            ready_file,
            check_every,
            status_file,
        } => node_setup(
            action,
            crate::node_setup::NodeSetup {
                interface,
                addresses,
                port,
            },
            HoldOptions {
                ready_file,
                check_every,
                status_file,
            },
        ),
        Command::InstallBinary { file } => {
            match std::env::current_exe().and_then(|me| std::fs::copy(me, &file)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("dnslens: cannot copy the binary to {}: {e}", file.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Webhook {
            tls_cert,
            tls_key,
            listen,
            settings,
        } => {
            let config = match settings.load(Some(Path::new("/etc/resolv.conf"))) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("dnslens: config error: {e:#}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let settings = crate::inject::webhook::WebhookSettings {
                listen,
                tls_cert,
                tls_key,
                cert_check_every: crate::inject::webhook::CERT_CHECK_EVERY,
            };
            run_async(crate::inject::webhook::serve(
                settings,
                config,
                None,
                crate::wait_for_signal(),
            ))
        }
    }
}

/// What `node-setup hold` does besides holding.
struct HoldOptions {
    ready_file: Option<PathBuf>,
    check_every: Duration,
    status_file: Option<PathBuf>,
}

fn node_setup(
    action: NodeSetupAction,
    setup: crate::node_setup::NodeSetup,
    hold: HoldOptions,
) -> ExitCode {
    let result = match action {
        NodeSetupAction::Up => setup.up().map(|_| "set up"),
        NodeSetupAction::Down => setup
            .down()
            .map(|done| if done { "removed" } else { "left in place: another DNS server answers there" }),
        NodeSetupAction::Hold => setup.up().and_then(|_| {
            tracing::info!(addresses = ?setup.addresses, interface = %setup.interface, check_every = ?hold.check_every, "node set up; holding until SIGTERM");
            if let Some(file) = &hold.ready_file {
                if let Err(e) = std::fs::write(file, "ready\n") {
                    tracing::warn!(file = %file.display(), error = %e, "cannot write the ready file");
                }
            }
            let _ = run_async(keep_set_up(&setup, &hold));
            setup
                .down()
                .map(|done| if done { "removed" } else { "left in place: another DNS server answers there" })
        }),
    };
    match result {
        Ok(what) => {
            eprintln!("dnslens: node setup on {}: {what}", setup.interface);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dnslens: node setup failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Until SIGTERM: the setup checked every `check_every` and what went missing put back, the
/// repairs counted in the status file.
async fn keep_set_up(
    setup: &crate::node_setup::NodeSetup,
    hold: &HoldOptions,
) -> anyhow::Result<()> {
    let mut status = crate::node_setup::Status::default();
    status.write(hold.status_file.as_deref());
    let signal = crate::wait_for_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => return Ok(()),
            _ = tokio::time::sleep(hold.check_every) => {}
        }
        match setup.up() {
            Ok(0) => {}
            Ok(added) => {
                status.repairs += added as u64;
                tracing::warn!(
                    added,
                    "node setup repaired: pieces had gone missing (a firewall reload or flush?)"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "node setup check failed; retrying at the next check")
            }
        }
        status.checked = std::time::SystemTime::now();
        status.write(hold.status_file.as_deref());
    }
}

fn inject(file: &Path, namespace: &str, settings: &InjectArgs) -> ExitCode {
    use std::io::Read;
    let config = match settings.load(None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dnslens: config error: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut text = String::new();
    let read = if file == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(file).map(|t| text = t)
    };
    if let Err(e) = read {
        eprintln!("dnslens: cannot read {}: {e}", file.display());
        return ExitCode::from(EXIT_CONFIG);
    }
    match crate::inject::inject_yaml(&text, namespace, &config) {
        Ok((out, report)) => {
            print!("{out}");
            for line in report {
                eprintln!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dnslens: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn check_config(path: &Path) -> ExitCode {
    match Config::from_file(path).and_then(|c| c.check_values()) {
        Ok(()) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => config_error(&e),
    }
}

/// A plain HTTP/1.0 GET with a timeout; the body of a 200 answer.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let timeout = Duration::from_secs(5);
    let stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let response = crate::http1::get_blocking(stream, path, &addr.to_string(), 64 << 20)?;
    let answer = crate::http1::parse(&response).ok_or_else(|| anyhow::anyhow!("no HTTP answer"))?;
    let body = String::from_utf8_lossy(answer.body);
    if answer.status != 200 {
        anyhow::bail!("HTTP {}: {}", answer.status, body.trim());
    }
    Ok(body.into_owned())
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("dnslens: config error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn run_async<F>(future: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dnslens: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dnslens: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        // Colour only on a terminal: a cluster's log pipeline gets plain lines.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}
