//! The `vpswatch` command line: run | demo | check-config | test-email | outbox-send |
//! simulate | metrics-doc | config-doc.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use vpswatch::logging::{self, LogFormat};
use vpswatch::notify::email::settings::EmailSettings;
use vpswatch::notify::email::EmailNotifier;
#[cfg(feature = "sim")]
use vpswatch::signal::wait_for_signal;
use vpswatch::store::StateStore;
use vpswatch_model::clock::SystemClock;
use vpswatch_model::redact;

// The demo runs the simulator, so it lives in the binary: the daemon library never
// depends on the simulator.
#[cfg(feature = "sim")]
mod demo;

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
        /// Watchdog dry-run: rules decide and journal, no provider call is made.
        #[arg(long = "dry-run")]
        dry_run: bool,
        /// TLS, basic auth and headers for the HTTP endpoints (exporter-toolkit YAML);
        /// overrides `web.config_file`. Reloaded when it changes or on SIGHUP.
        #[arg(long = "web.config.file")]
        web_config_file: Option<PathBuf>,
    },
    /// Run against built-in simulated providers; no configuration needed.
    #[cfg(feature = "sim")]
    Demo {
        /// Where to serve /metrics.
        #[arg(long = "web.listen-address", default_value = "127.0.0.1:10047")]
        listen_address: SocketAddr,
        /// Mail the demo's alerts to this SMTP server (HOST:PORT, plain SMTP, e.g. a local
        /// `python3 -m aiosmtpd -n`); without it alerts go to the log.
        #[arg(long)]
        smtp: Option<String>,
        /// TLS, basic auth and headers for the demo's endpoints (exporter-toolkit YAML).
        #[arg(long = "web.config.file")]
        web_config_file: Option<PathBuf>,
    },
    /// Send one test message with the configured [email] settings (directly, not through
    /// the outbox) and print the server's answer; exit 1 with the precise reason if not.
    TestEmail {
        /// Configuration file (TOML).
        #[arg(long, short = 'c', default_value = "/etc/vpswatch/vpswatch.toml")]
        config: PathBuf,
        /// Queue the message in the state directory's outbox and deliver from there.
        #[arg(long, hide = true)]
        via_outbox: bool,
    },
    /// Deliver what waits in the alert outbox now, ignoring backoff, then exit (1 if mail
    /// remains). Not while the daemon runs: it holds the state directory.
    #[command(hide = true)]
    OutboxSend {
        /// Configuration file (TOML).
        #[arg(long, short = 'c', default_value = "/etc/vpswatch/vpswatch.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file: every problem with its key path; exit 2 on error.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
        /// Also check this web config file (default: `web.config_file` from FILE).
        #[arg(long = "web.config.file")]
        web_config_file: Option<PathBuf>,
    },
    /// Serve a fake LNVPS or StableVPS API on loopback (for tests and experiments).
    #[cfg(feature = "sim")]
    Simulate {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Which provider to fake.
        #[arg(long, value_enum, default_value_t = SimProvider::Lnvps)]
        provider: SimProvider,
        /// Scenario file (TOML/JSON) or built-in name (LNVPS: demo, bench:N, bench:AxN, empty;
        /// StableVPS: demo, empty).
        #[arg(long, default_value = "demo")]
        scenario: String,
        /// Hex public key that owns the scenario's "default" VMs (LNVPS only).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Print the metric reference table (Markdown) docs/metrics.md embeds.
    MetricsDoc,
    /// Print the configuration reference table (Markdown) docs/configuration.md embeds.
    ConfigDoc,
}

/// The fake provider `simulate` serves.
#[cfg(feature = "sim")]
#[derive(Clone, Copy, clap::ValueEnum)]
enum SimProvider {
    Lnvps,
    Stablevps,
}

fn main() -> ExitCode {
    vpswatch::alloc_tuning::keep_large_buffers_out_of_the_heap();
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
        Command::CheckConfig {
            file,
            web_config_file,
        } => check_config(&file, web_config_file.as_deref()),
        Command::Run {
            config,
            listen_address,
            dry_run,
            web_config_file,
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
            cfg.watchdog.dry_run |= dry_run;
            if web_config_file.is_some() {
                cfg.web.config_file = web_config_file;
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
        Command::TestEmail { config, via_outbox } => test_email(&config, via_outbox).await,
        Command::OutboxSend { config } => outbox_send(&config).await,
        #[cfg(feature = "sim")]
        Command::Demo {
            listen_address,
            smtp,
            web_config_file,
        } => match demo::run(listen_address, smtp.as_deref(), web_config_file).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vpswatch demo: {e:#}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "sim")]
        Command::Simulate {
            listen,
            provider,
            scenario,
            owner,
        } => {
            let result = match provider {
                SimProvider::Lnvps => {
                    vpswatch_sim::cli::serve_lnvps(listen, &scenario, owner, wait_for_signal())
                        .await
                }
                SimProvider::Stablevps if owner.is_some() => Err(vpswatch_sim::SimError::Scenario(
                    "--owner is for LNVPS scenarios; StableVPS scenarios name their API keys"
                        .into(),
                )),
                SimProvider::Stablevps => {
                    vpswatch_sim::cli::serve_stablevps(listen, &scenario, wait_for_signal()).await
                }
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vpswatch simulate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::ConfigDoc => {
            print!("{}", vpswatch::config::reference_table());
            ExitCode::SUCCESS
        }
        Command::MetricsDoc => {
            print!("{}", vpswatch::metrics::defs::markdown_table());
            ExitCode::SUCCESS
        }
    }
}

/// `check-config`: the TOML file and the web config file it names (or `--web.config.file`),
/// every problem of both listed; exit 2 when there is any.
fn check_config(file: &std::path::Path, web_flag: Option<&std::path::Path>) -> ExitCode {
    let cfg = vpswatch::config::load(file);
    if let Err(e) = &cfg {
        eprintln!("{e}");
    }
    // From the flag, else from the TOML — read raw when the TOML has other problems, so
    // both files' problems are listed in one go.
    let web_file = web_flag
        .map(std::path::Path::to_path_buf)
        .or_else(|| match &cfg {
            Ok(c) => c.web.config_file.clone(),
            Err(_) => {
                vpswatch_model::bounded_file::read_text(file, vpswatch_model::bounded_file::CONFIG)
                    .ok()
                    .and_then(|t| t.parse::<toml::Table>().ok())
                    .and_then(|t| {
                        t.get("web")?
                            .get("config_file")?
                            .as_str()
                            .map(std::path::PathBuf::from)
                    })
            }
        });
    let web = web_file.as_ref().map(|w| vpswatch::web_config::load(w));
    if let Some(Err(e)) = &web {
        for line in e.to_string().lines() {
            eprintln!("{}", redact::message(line));
        }
    }
    let (Ok(cfg), None | Some(Ok(_))) = (&cfg, &web) else {
        return ExitCode::from(2);
    };
    let shown = redact::path(file);
    for w in &cfg.warnings {
        println!("warning: {shown}: {}: {}", w.path, w.message);
    }
    println!(
        "{shown}: OK ({} account{}, {} rule{}{})",
        cfg.accounts.len(),
        if cfg.accounts.len() == 1 { "" } else { "s" },
        cfg.watchdog.rules.len(),
        if cfg.watchdog.rules.len() == 1 {
            ""
        } else {
            "s"
        },
        match &cfg.email {
            Some(e) => format!("; email via {}", redact::value(&e.server())),
            None => String::new(),
        }
    );
    // Lightning renewal rules, reported apart from the watchdog's.
    for r in &cfg.renew_rules {
        println!(
            "  renewal rule {}: mode {}, within {}, {} interval(s){}",
            r.name,
            r.mode.as_str(),
            humantime::format_duration(r.within),
            r.intervals,
            if r.dry_run { ", dry run" } else { "" }
        );
    }
    if let (Some(path), Some(Ok(w))) = (&web_file, &web) {
        println!(
            "{}: OK ({})",
            redact::path(path),
            redact::message(&w.summary())
        );
    }
    ExitCode::SUCCESS
}

/// Loads the configuration and its `[email]` section, or says why not (exit 2).
fn email_config(
    file: &std::path::Path,
) -> Result<(vpswatch::config::Config, EmailSettings), ExitCode> {
    let cfg = vpswatch::config::load(file).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })?;
    match cfg.email.clone() {
        Some(s) => Ok((cfg, s)),
        None => {
            eprintln!("{}: no [email] section configured", redact::path(file));
            Err(ExitCode::from(2))
        }
    }
}

fn open_email(
    cfg: &vpswatch::config::Config,
    settings: EmailSettings,
) -> Result<Arc<EmailNotifier>, ExitCode> {
    let store = StateStore::open(&cfg.state_dir).map_err(|e| {
        eprintln!("vpswatch: {e}");
        ExitCode::FAILURE
    })?;
    EmailNotifier::open(
        settings,
        store,
        Arc::new(SystemClock),
        vpswatch::metrics::SelfMetrics::new(),
    )
    .map_err(|e| {
        eprintln!("vpswatch: {e}");
        ExitCode::FAILURE
    })
}

async fn test_email(file: &std::path::Path, via_outbox: bool) -> ExitCode {
    let (cfg, settings) = match email_config(file) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let server = settings.server();
    if via_outbox {
        let email = match open_email(&cfg, settings) {
            Ok(e) => e,
            Err(code) => return code,
        };
        if let Err(e) = email.queue_test() {
            eprintln!("vpswatch test-email: cannot queue: {e}");
            return ExitCode::FAILURE;
        }
        return print_report(&server, &email.deliver(true).await);
    }
    match vpswatch::notify::email::send_test(&settings, chrono::Utc::now()).await {
        Ok(reply) => {
            println!("test message accepted by {server}: {reply}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vpswatch test-email: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn outbox_send(file: &std::path::Path) -> ExitCode {
    let (cfg, settings) = match email_config(file) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let server = settings.server();
    let email = match open_email(&cfg, settings) {
        Ok(e) => e,
        Err(code) => return code,
    };
    print_report(&server, &email.deliver(true).await)
}

fn print_report(server: &str, r: &vpswatch::notify::email::DeliveryReport) -> ExitCode {
    for (id, reply) in &r.accepted {
        println!("{id} accepted by {server}: {reply}");
    }
    println!(
        "delivered {}, failed {}, {} left in the outbox",
        r.delivered, r.failed, r.remaining
    );
    if r.rejected > 0 {
        println!(
            "{} refused for good by the server and set aside (not retried; see the log)",
            r.rejected
        );
    }
    if let Some(e) = &r.error {
        eprintln!("vpswatch: {e}");
    }
    if r.remaining > 0 || r.error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
