//! The `vpswatch` command line: run | demo | check-config | simulate | metrics-doc.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use vpswatch::clock::SystemClock;
use vpswatch::logging::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "vpswatch",
    version,
    about = "Prometheus exporter and watchdog for LNVPS and StableVPS"
)]
struct Cli {
    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long = "log.level", global = true, default_value = "info")]
    log_level: String,
    /// Log line format.
    #[arg(long = "log.format", global = true, value_enum, default_value_t = LogFormat::Logfmt)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the exporter with a configuration file.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short = 'c', default_value = "/etc/vpswatch/vpswatch.toml")]
        config: PathBuf,
        /// Overrides `web.listen_address` from the file.
        #[arg(long = "web.listen-address")]
        listen_address: Option<SocketAddr>,
    },
    /// Run against built-in simulated providers; no configuration needed.
    Demo {
        /// Where to serve /metrics.
        #[arg(long = "web.listen-address", default_value = "127.0.0.1:10047")]
        listen_address: SocketAddr,
    },
    /// Validate a configuration file: every problem with its key path; exit 2 on error.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Serve a fake provider API on loopback (for tests and experiments).
    Simulate {
        /// Which API to serve.
        #[arg(long, value_enum, default_value_t = SimProvider::Lnvps)]
        provider: SimProvider,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Scenario file (TOML/JSON) or built-in name (LNVPS: demo, bench:N;
        /// StableVPS: demo, empty).
        #[arg(long, default_value = "demo")]
        scenario: String,
        /// Hex public key that owns the scenario's "default" VMs (LNVPS only).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Print the metric reference table (Markdown) the README embeds.
    MetricsDoc,
}

/// The simulators `vpswatch simulate` can serve.
#[derive(Clone, Copy, clap::ValueEnum)]
enum SimProvider {
    Lnvps,
    Stablevps,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(&cli.log_level, cli.log_format) {
        eprintln!("vpswatch: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vpswatch: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(cli.command))
}

async fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::CheckConfig { file } => match vpswatch::config::load(&file) {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    println!("warning: {}: {}: {}", file.display(), w.path, w.message);
                }
                println!(
                    "{}: OK ({} account{})",
                    file.display(),
                    cfg.accounts.len(),
                    if cfg.accounts.len() == 1 { "" } else { "s" }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run {
            config,
            listen_address,
        } => {
            let mut cfg = match vpswatch::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            for w in &cfg.warnings {
                tracing::warn!(key = %w.path, "{}", w.message);
            }
            if let Some(a) = listen_address {
                cfg.listen_address = a;
            }
            match vpswatch::daemon::Daemon::start(cfg, Arc::new(SystemClock)).await {
                Ok(d) => {
                    d.run_until_signal().await;
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vpswatch: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { listen_address } => match vpswatch::demo::run(listen_address).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vpswatch demo: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Simulate {
            provider,
            listen,
            scenario,
            owner,
        } => match match provider {
            SimProvider::Lnvps => vpswatch::sim::lnvps::run_cli(listen, &scenario, owner).await,
            SimProvider::Stablevps => {
                if owner.is_some() {
                    eprintln!("vpswatch simulate: --owner only applies to --provider lnvps");
                    return ExitCode::from(2);
                }
                vpswatch::sim::stablevps::run_cli(listen, &scenario).await
            }
        } {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vpswatch simulate: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::MetricsDoc => {
            print!("{}", vpswatch::metrics::defs::markdown_table());
            ExitCode::SUCCESS
        }
    }
}
