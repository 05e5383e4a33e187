//! The `pieskieo` command: run the proxy, check a configuration, or start a demo cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pieskieo::config::{Config, LogFormat};
use pieskieo::demo::{self, DemoOptions};

#[derive(Parser)]
#[command(
    name = "pieskieo",
    version,
    about = "PostgreSQL sharding proxy with two-phase commit"
)]
struct Cli {
    /// Configuration file (same as `pieskieo run --config FILE`).
    #[arg(long, global = false)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Start local PostgreSQL shards and the proxy over them.
    Demo {
        /// Number of shards.
        #[arg(long, default_value_t = 3)]
        shards: u32,
        /// Port the (first) proxy listens on; further proxies, then the
        /// shards, use the next ports.
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// Number of proxies over the same shards (any of them can finish
        /// any transaction).
        #[arg(long, default_value_t = 1)]
        proxies: u16,
        /// Where shard data and the generated config live (reused by the next run).
        #[arg(long, default_value = "pieskieo-demo")]
        data_dir: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("pieskieo: {e}");
        ExitCode::from(2)
    })
}

/// The runtime serving clients: `workers` threads, or one per core when 0.
/// One worker is tokio's current-thread scheduler: the same single thread
/// without the work-stealing scheduler's bookkeeping (its poll-time
/// averages and clock reads per batch of tasks), which on the simple-query
/// path cost about 900 instructions per query (`bench/compare-binaries`).
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        b.worker_threads(workers);
    }
    b.enable_all().build().expect("tokio runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cmd = match (cli.command, cli.config) {
        (Some(c), _) => c,
        (None, Some(config)) => Cmd::Run { config },
        (None, None) => {
            eprintln!("pieskieo: give --config FILE, or a command (run, check, demo); see --help");
            return ExitCode::from(2);
        }
    };
    match cmd {
        Cmd::Check { config } => match load(&config) {
            Ok(cfg) => {
                // The certificate and key as the listener will load them.
                if let Some(Err(e)) = cfg.tls.as_ref().map(pieskieo::frontend::tls::acceptor) {
                    eprintln!("pieskieo: {}: field `tls`: {e}", config.display());
                    return ExitCode::from(2);
                }
                if let Some(users) = cfg.exposed_trust_users() {
                    eprintln!(
                        "pieskieo: warning: trust users ({}) log in without a password and `listen` ({}) is not loopback",
                        users.join(", "),
                        cfg.listen
                    );
                }
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Run { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(cfg.log_format);
            let grace_ms = cfg.limits.shutdown_timeout_ms;
            runtime(cfg.workers).block_on(async {
                let proxy = match pieskieo::serve(cfg).await {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("pieskieo: cannot listen: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                // SIGHUP re-reads the configuration file.
                let shared = proxy.reloader();
                tokio::spawn(async move {
                    use tokio::signal::unix::{signal, SignalKind};
                    let Ok(mut hup) = signal(SignalKind::hangup()) else {
                        return;
                    };
                    while hup.recv().await.is_some() {
                        if let Err(e) = shared.reload() {
                            tracing::warn!(error = %e, "reload refused");
                        }
                    }
                });
                demo::wait_for_signal().await;
                let grace = std::time::Duration::from_millis(grace_ms);
                tokio::select! {
                    _ = proxy.shutdown(grace) => ExitCode::SUCCESS,
                    // A second signal: exit at once. Whatever was prepared is
                    // decided on its decision shard by any proxy's recovery.
                    _ = demo::wait_for_signal() => ExitCode::from(1),
                }
            })
        }
        Cmd::Demo {
            shards,
            port,
            proxies,
            data_dir,
        } => {
            init_logging(LogFormat::Text);
            if shards == 0 || proxies == 0 {
                eprintln!("pieskieo demo: --shards and --proxies must be at least 1");
                return ExitCode::from(2);
            }
            match runtime(0).block_on(demo::run(DemoOptions {
                shards,
                port,
                proxies,
                data_dir,
            })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pieskieo demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
