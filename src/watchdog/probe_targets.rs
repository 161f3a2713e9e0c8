//! The `[probes]` section: whether, how often and on which port VMs are TCP-probed, and
//! the per-VM targets (`[[probes.targets]]`): which port (and optionally which host) a
//! VM is probed on instead of its account's default, or that it is not probed at all.
//!
//! Only configured targets are probed and exported, so a VM that serves another port
//! never shows `vps_probe_success 0` for a port it does not listen on (which would fire
//! VpsProbeFailing falsely). The first entry whose `match` covers a VM decides.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::selector::{Selector, SelectorConfig, Target};
use vpswatch_model::account::ProviderKind;
use vpswatch_model::config_doc::KeyDoc;
use vpswatch_model::problem::Problem;

/// TCP liveness probes of running VMs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProbeConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub ports: ProbePorts,
    /// `[[probes.targets]]`: per-VM ports, hosts, exclusions.
    pub targets: Vec<ProbeTargetConfig>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(3),
            ports: ProbePorts::default(),
            targets: Vec::new(),
        }
    }
}

/// Default probe port per provider.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProbePorts {
    /// LNVPS VMs are Linux: SSH.
    pub lnvps: u16,
    /// StableVPS VMs are Windows: RDP.
    pub stablevps: u16,
}

impl Default for ProbePorts {
    fn default() -> Self {
        let port = |kind| vpswatch_providers::module(kind).default_probe_port();
        Self {
            lnvps: port(ProviderKind::Lnvps),
            stablevps: port(ProviderKind::Stablevps),
        }
    }
}

/// `[probes]`.
pub const SECTION_KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: r#"`probes.enabled`"#,
        default: r#"`true`"#,
        meaning: r#"TCP-probe every VM the provider reports running"#,
    },
    KeyDoc {
        key: r#"`probes.interval` / `probes.timeout`"#,
        default: r#"`30s` / `3s`"#,
        meaning: r#"probe round interval; connect timeout"#,
    },
    KeyDoc {
        key: r#"`probes.ports.lnvps` / `.stablevps`"#,
        default: r#"22 / 3389"#,
        meaning: r#"port probed per provider (SSH for Linux, RDP for Windows)"#,
    },
];

/// Checks `[probes]`: the timings, then the targets (see [`check`]).
pub fn check_section(
    section: &ProbeConfig,
    accounts: &[(ProviderKind, String)],
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) {
    for (key, d) in [
        ("probes.interval", section.interval),
        ("probes.timeout", section.timeout),
    ] {
        if d.is_zero() {
            problems.push(Problem {
                path: key.into(),
                message: "must be greater than zero".into(),
            });
        }
    }
    check(&section.targets, accounts, problems, warnings);
}

/// `[[probes.targets]]`.
pub const KEYS: &[KeyDoc] = &[KeyDoc {
    key: r#"`[[probes.targets]]` `match`, `port`, `host`, `exclude`"#,
    default: r#"—"#,
    meaning: r#"per-VM probe target: the VMs `match` selects (`provider`, `accounts`, `vms` ids, `names` patterns) are probed on `port` (and `host`, an IP address or DNS name, instead of the VM's IPv4), or not at all with `exclude = true`; the first matching entry wins. See [Probes](watchdog.md#probes)"#,
}];

/// One entry as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeTargetConfig {
    #[serde(rename = "match")]
    pub selector: SelectorConfig,
    pub port: Option<u16>,
    pub host: Option<String>,
    pub exclude: bool,
}

/// What a VM is probed on.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Not probed at all.
    Excluded,
    /// This port (else the account's) on this host (else the VM's IPv4).
    Probe {
        port: Option<u16>,
        host: Option<String>,
    },
}

/// The compiled entries.
#[derive(Debug, Clone, Default)]
pub struct ProbeTargets {
    entries: Vec<(Selector, Decision)>,
}

impl ProbeTargets {
    pub fn new(configs: &[ProbeTargetConfig]) -> ProbeTargets {
        ProbeTargets {
            entries: configs
                .iter()
                .map(|c| {
                    let d = if c.exclude {
                        Decision::Excluded
                    } else {
                        Decision::Probe {
                            port: c.port,
                            host: c.host.clone(),
                        }
                    };
                    (Selector::new(&c.selector), d)
                })
                .collect(),
        }
    }

    /// The first matching entry's decision; `None` = the account's default.
    pub fn decide(&self, vm: Target<'_>) -> Option<&Decision> {
        self.entries
            .iter()
            .find(|(s, _)| s.matches(vm))
            .map(|(_, d)| d)
    }
}

/// A DNS name as a host may be written: dot-separated labels of letters, digits and
/// hyphens (not at either end of a label), at most 253 characters.
fn is_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Checks `[[probes.targets]]`: bad ports and hosts are problems with their key path; a
/// selector that names no configured account is a warning (VMs come and go, accounts
/// are known).
pub fn check(
    targets: &[ProbeTargetConfig],
    accounts: &[(ProviderKind, String)],
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) {
    for (i, t) in targets.iter().enumerate() {
        let path = |k: &str| format!("probes.targets[{i}].{k}");
        if t.port == Some(0) {
            problems.push(Problem {
                path: path("port"),
                message: "must be a TCP port (1-65535)".into(),
            });
        }
        if let Some(h) = &t.host {
            if h.parse::<IpAddr>().is_err() && !is_hostname(h) {
                problems.push(Problem {
                    path: path("host"),
                    message: format!(
                        "{} is not an IP address or a DNS name (no port, no scheme)",
                        vpswatch_model::redact::value(h)
                    ),
                });
            }
        }
        if t.exclude && (t.port.is_some() || t.host.is_some()) {
            problems.push(Problem {
                path: path("exclude"),
                message: "an excluded VM is not probed: drop port and host, or exclude".into(),
            });
        }
        if !t.exclude && t.port.is_none() && t.host.is_none() {
            problems.push(Problem {
                path: format!("probes.targets[{i}]"),
                message: "sets nothing: give a port, a host, or exclude = true".into(),
            });
        }
        let sel = Selector::new(&t.selector);
        if !accounts.is_empty() && !accounts.iter().any(|(p, a)| sel.may_match_account(*p, a)) {
            warnings.push(Problem {
                path: path("match"),
                message: "matches none of the configured accounts".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm<'a>(id: &'a str, name: &'a str) -> Target<'a> {
        Target {
            provider: ProviderKind::Stablevps,
            account: "a",
            vm: Some(id),
            vm_name: Some(name),
        }
    }

    #[test]
    fn the_first_matching_entry_decides() {
        let t = ProbeTargets::new(&[
            ProbeTargetConfig {
                selector: SelectorConfig {
                    vms: vec!["1".into()],
                    ..Default::default()
                },
                exclude: true,
                ..Default::default()
            },
            ProbeTargetConfig {
                selector: SelectorConfig {
                    names: vec!["web-*".into()],
                    ..Default::default()
                },
                port: Some(443),
                ..Default::default()
            },
        ]);
        assert_eq!(t.decide(vm("1", "web-1")), Some(&Decision::Excluded));
        assert_eq!(
            t.decide(vm("2", "web-2")),
            Some(&Decision::Probe {
                port: Some(443),
                host: None
            })
        );
        assert_eq!(t.decide(vm("3", "db")), None);
    }

    #[test]
    fn bad_ports_and_hosts_are_named_by_key() {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let bad = [
            ProbeTargetConfig {
                port: Some(0),
                ..Default::default()
            },
            ProbeTargetConfig {
                host: Some("http://x:22".into()),
                ..Default::default()
            },
            ProbeTargetConfig {
                host: Some("db-1.internal".into()),
                selector: SelectorConfig {
                    accounts: vec!["nope".into()],
                    ..Default::default()
                },
                ..Default::default()
            },
        ];
        check(
            &bad,
            &[(ProviderKind::Lnvps, "main".into())],
            &mut problems,
            &mut warnings,
        );
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["probes.targets[0].port", "probes.targets[1].host"]);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].path, "probes.targets[2].match");
    }
}
