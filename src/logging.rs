//! Log setup (`--log.level`, `--log.format=logfmt|json`), on stderr.

use tracing_subscriber::EnvFilter;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Logfmt,
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("--log.level {level:?}: {source}")]
    Level {
        level: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot set up logging: {0}")]
    Install(String),
}

/// Installs the global subscriber. `level` is a tracing filter (`info`,
/// `vpswatch=debug,hyper=info`, …).
pub fn init(level: &str, format: LogFormat) -> Result<(), LogError> {
    let filter = EnvFilter::try_new(level).map_err(|source| LogError::Level {
        level: level.to_string(),
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Logfmt => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| LogError::Install(e.to_string()))
}
