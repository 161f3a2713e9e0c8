//! Renewal rules as configured: a `[[rules]]` entry with `condition = "expires_within"`
//! and `action = "renew"`, settings in `[rules.renew]`. Such rules are taken out of the
//! watchdog engine's list and run by [`crate::renew::run`].
//!
//! ```toml
//! [[rules]]
//! name = "renew-lnvps"
//! condition = "expires_within"
//! within = "3d"
//! action = "renew"
//! [rules.match]
//! provider = "lnvps"
//! [rules.renew]
//! mode = "nwc"                    # nwc | server | email
//! intervals = 1
//! nwc_uri_file = "/etc/vpswatch/nwc.uri"   # or nwc_uri_env = "VPSWATCH_NWC_URI"
//! max_per_renewal_sats = 20000
//! max_per_month_sats = 60000
//! max_attempts = 3                # tries per expiry, then an alert and a stop
//! backoff = "10m"                 # doubled after each failed try, up to backoff_max
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::watchdog::selector::{Selector, SelectorConfig};
use vpswatch_model::account::ProviderKind;
use vpswatch_model::problem::{read_section, Problem};
use vpswatch_model::secret::{load_one, Secret};

/// Default wait after the first failed renewal try.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(10 * 60);
/// Default longest wait between tries.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);

/// How a renewal is paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenewMode {
    /// vpswatch pays the invoice from a Nostr Wallet Connect wallet.
    Nwc,
    /// The provider's own auto-renewal pays; vpswatch only alerts when it did not.
    Server,
    /// vpswatch mints the invoice and mails it (bolt11, amount, expiry) to a human.
    Email,
}

impl RenewMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RenewMode::Nwc => "nwc",
            RenewMode::Server => "server",
            RenewMode::Email => "email",
        }
    }
}

/// A checked renewal rule.
#[derive(Debug, Clone)]
pub struct RenewRule {
    pub name: String,
    /// Renew when the VM expires within this.
    pub within: Duration,
    pub mode: RenewMode,
    pub intervals: u32,
    /// The NWC connection URI (mode nwc). A secret.
    pub nwc_uri: Option<Secret<String>>,
    pub max_per_renewal_sats: u64,
    pub max_per_month_sats: u64,
    /// Renewal tries (each one invoice request at most) per VM and renewal window
    /// (one expiry) before giving up.
    pub max_attempts: u32,
    /// Wait after the wallet refused before asking it again (same invoice).
    pub retry_interval: Duration,
    /// Wait after the first failed try; doubled after each further failure.
    pub backoff: Duration,
    /// Longest wait between two tries; also how often a blocked renewal (budget,
    /// prepay limit, dry run) is quoted again.
    pub backoff_max: Duration,
    /// How long one wallet call may take.
    pub wallet_timeout: Duration,
    pub dry_run: bool,
    pub selector: Selector,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRenewRule {
    name: String,
    condition: String,
    #[serde(default, with = "humantime_serde")]
    within: Option<Duration>,
    action: String,
    #[serde(default)]
    dry_run: bool,
    #[serde(default, rename = "match")]
    selector: SelectorConfig,
    renew: Option<RawRenew>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRenew {
    mode: RenewMode,
    #[serde(default)]
    intervals: Option<u32>,
    nwc_uri_file: Option<PathBuf>,
    nwc_uri_env: Option<String>,
    max_per_renewal_sats: Option<u64>,
    max_per_month_sats: Option<u64>,
    max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    retry_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    wallet_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    backoff_max: Option<Duration>,
}

/// Whether this `[[rules]]` entry is a renewal rule (its action is `renew` or its
/// condition `expires_within`).
pub fn is_renew_rule(item: &toml::Value) -> bool {
    let s = |k: &str| item.get(k).and_then(|v| v.as_str());
    s("action") == Some("renew") || s("condition") == Some("expires_within")
}

/// Checks one renewal rule; `None` when it has problems (all recorded).
pub fn read_rule(
    item: toml::Value,
    prefix: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Option<RenewRule> {
    let raw: RawRenewRule = read_section(item, prefix, problems)?;
    let before = problems.len();
    let mut problem = vpswatch_model::problem::under(prefix, problems);
    if let Err(why) = vpswatch_model::problem::check_label_name(&raw.name) {
        problem("name", why.to_string());
    }
    if raw.condition != "expires_within" {
        problem(
            "condition",
            format!(
                "action \"renew\" needs condition = \"expires_within\", not {:?}",
                raw.condition
            ),
        );
    }
    if raw.action != "renew" {
        problem(
            "action",
            format!(
                "expires_within rules renew: set action = \"renew\" (not {:?}); mode = \"server\" \
                 or \"email\" in [rules.renew] only alert or mail",
                raw.action
            ),
        );
    }
    let within = raw.within.filter(|d| !d.is_zero());
    if within.is_none() {
        problem(
            "within",
            "expires_within needs `within`, a duration such as \"3d\"".into(),
        );
    }
    if raw
        .selector
        .provider
        .is_some_and(|p| p != ProviderKind::Lnvps)
    {
        problem(
            "match.provider",
            "Lightning renewal only exists for LNVPS accounts".into(),
        );
    }
    let Some(r) = raw.renew else {
        problem(
            "renew",
            "missing [rules.renew] (mode = \"nwc\" | \"server\" | \"email\", budgets, wallet)"
                .into(),
        );
        return None;
    };
    let intervals = r.intervals.unwrap_or(1);
    if !(1..=120).contains(&intervals) {
        problem(
            "renew.intervals",
            format!("{intervals} is not between 1 and 120 (the server's limit)"),
        );
    }
    let mut nwc_uri = None;
    let pays = matches!(r.mode, RenewMode::Nwc | RenewMode::Email);
    if r.mode == RenewMode::Nwc {
        match load_one(
            r.nwc_uri_file.as_deref(),
            r.nwc_uri_env.as_deref(),
            "renew.nwc_uri_file",
            "renew.nwc_uri_env",
            env,
        ) {
            Ok((text, source, warning)) => {
                let secret = Secret::new(text);
                match super::nwc::parse_uri(&secret) {
                    Ok(_) => nwc_uri = Some(secret),
                    Err(msg) => problem(source.key(), format!("{}: {msg}", source.describe())),
                }
                if let Some(w) = warning {
                    warnings.push(Problem {
                        path: format!("{prefix}.{}", source.key()),
                        message: w,
                    });
                }
            }
            Err((key, msg)) => problem(key, msg),
        }
    } else if r.nwc_uri_file.is_some() || r.nwc_uri_env.is_some() {
        problem(
            "renew.mode",
            format!(
                "a wallet is configured but mode is {:?}; use mode = \"nwc\" to pay with it",
                r.mode.as_str()
            ),
        );
    }
    if r.mode == RenewMode::Nwc {
        for (key, v) in [
            ("renew.max_per_renewal_sats", r.max_per_renewal_sats),
            ("renew.max_per_month_sats", r.max_per_month_sats),
        ] {
            match v {
                None => problem(
                    key,
                    "required when vpswatch pays (a budget in satoshis)".into(),
                ),
                Some(0) => problem(key, "must be greater than zero".into()),
                Some(_) => {}
            }
        }
    }
    let max_attempts = r.max_attempts.unwrap_or(3);
    if max_attempts == 0 {
        problem("renew.max_attempts", "must be at least 1".into());
    }
    let retry_interval = r.retry_interval.unwrap_or(Duration::from_secs(60));
    let wallet_timeout = r.wallet_timeout.unwrap_or(Duration::from_secs(30));
    let backoff = r.backoff.unwrap_or(DEFAULT_BACKOFF);
    let backoff_max = r.backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX.max(backoff));
    if backoff.is_zero() {
        problem("renew.backoff", "must be greater than zero".into());
    }
    if backoff_max < backoff {
        problem(
            "renew.backoff_max",
            format!(
                "{} is shorter than renew.backoff ({})",
                humantime::format_duration(backoff_max),
                humantime::format_duration(backoff)
            ),
        );
    }
    if wallet_timeout.is_zero() {
        problem("renew.wallet_timeout", "must be greater than zero".into());
    }
    // Done recording under this prefix: `problems` itself is read next.
    drop(problem);
    if problems.len() > before {
        return None;
    }
    Some(RenewRule {
        name: raw.name,
        within: within?,
        mode: r.mode,
        intervals,
        nwc_uri,
        max_per_renewal_sats: if pays {
            r.max_per_renewal_sats.unwrap_or(u64::MAX)
        } else {
            0
        },
        max_per_month_sats: if pays {
            r.max_per_month_sats.unwrap_or(u64::MAX)
        } else {
            0
        },
        max_attempts,
        retry_interval,
        backoff,
        backoff_max,
        wallet_timeout,
        dry_run: raw.dry_run,
        selector: Selector::new(&raw.selector),
    })
}
