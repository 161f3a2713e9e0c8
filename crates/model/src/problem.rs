//! Configuration problems and the helpers every config section uses to report them:
//! each problem names its key path, so `check-config` can list them all at once.
//!
//! It lives in the model so that each module that owns a config section (providers,
//! watchdog, renewal, email, web) checks its own keys without depending on the file
//! that assembles them.

use std::fmt;

use serde::de::DeserializeOwned;

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `accounts[0].poll_interval`; empty for whole-file problems.
    pub path: String,
    pub message: String,
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.path.is_empty() {
                write!(f, "{}: {}", self.file, p.message)?;
            } else {
                write!(f, "{}: {}: {}", self.file, p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Deserializes one section, recording unknown keys and the first type error with their
/// full key paths.
pub fn read_section<T: DeserializeOwned>(
    value: toml::Value,
    prefix: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let join = |p: &str| match (prefix.is_empty(), p.is_empty() || p == ".") {
        (_, true) => prefix.to_string(),
        (true, false) => p.to_string(),
        (false, false) => format!("{prefix}.{p}"),
    };
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let result = {
        let mut on_unknown = |path: serde_ignored::Path| unknown.push(path.to_string());
        let ignored = serde_ignored::Deserializer::new(value, &mut on_unknown);
        let de = serde_path_to_error::Deserializer::new(ignored, &mut track);
        T::deserialize(de)
    };
    for key in unknown {
        problems.push(Problem {
            path: join(&key),
            message: "unknown key (check the spelling; see docs/configuration.md)".into(),
        });
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(Problem {
                path: join(&track.path().to_string()),
                message: one_line(&e.to_string()),
            });
            None
        }
    }
}

pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Records problems under one key path prefix: `accounts[0]` and `name` make
/// `accounts[0].name`.
pub fn under<'a>(prefix: &'a str, problems: &'a mut Vec<Problem>) -> impl FnMut(&str, String) + 'a {
    move |key, message| {
        problems.push(Problem {
            path: format!("{prefix}.{key}"),
            message,
        })
    }
}

/// A name that cannot become a metric label value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} must be 1-64 characters of A-Z a-z 0-9 _ - . (it becomes a metric label)")]
pub struct BadLabelName {
    pub name: String,
}

/// Names that become metric label values (accounts, rules): 1–64 characters of
/// A-Z a-z 0-9 _ - . so they read well in PromQL and never need escaping.
pub fn check_label_name(name: &str) -> Result<(), BadLabelName> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(BadLabelName {
            name: name.to_string(),
        })
    }
}
