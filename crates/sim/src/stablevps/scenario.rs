//! StableVPS scenarios: accounts (wallet, API keys), their VPSes, the simulator's
//! knobs (provisioning delay, RDP port, what an unpaid renewal does, initial faults,
//! boot time) and a timeline of scripted changes (the watchdog's trouble included).
//!
//! Deserializes from TOML or JSON; `demo` is built in. Relative times ("5d", "-2h")
//! count from the simulator's start (or, for [`super::StableVpsSimHandle::add_vps`],
//! from the moment the VPS is added); RFC 3339 timestamps are accepted too.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::SimError;
use serde::{Deserialize, Serialize};

use crate::faults::Fault;
use crate::power::{ActionFailure, BlackoutLength};
use crate::scenario::RelTime;

/// The starting world of a StableVPS simulator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StableScenario {
    pub accounts: Vec<AccountSpec>,
    pub vps: Vec<VpsSpec>,
    /// How long a `provisioning` VPS takes to become `active` (per-VPS override:
    /// [`VpsSpec::provisioning_for`]).
    #[serde(with = "humantime_serde")]
    pub provisioning_delay: Duration,
    /// RDP port every VPS listens on; 0 = an ephemeral port per VPS (recorded on it).
    pub rdp_port: u16,
    /// What a renewal the wallet cannot pay does to the service.
    pub renewal_on_insufficient_balance: RenewalFailure,
    /// Faults active from the start.
    pub faults: Vec<Fault>,
    /// How long a machine takes to boot after a start or reboot: its RDP port stays
    /// closed meanwhile. 0 = it answers at once.
    #[serde(with = "humantime_serde")]
    pub reboot_duration: Duration,
    /// `vpsStatus` while a machine boots. The API page documents none, so by default it
    /// stays `active` (port closed); set e.g. "rebooting" to produce one.
    pub booting_vps_status: Option<String>,
    /// Scripted changes after the start.
    pub timeline: Vec<StableTimelineEvent>,
}

/// A scripted change at `at` after the simulator started. Several actions may be set on
/// one event; they apply in field order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StableTimelineEvent {
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// Target VPS: its index in the scenario's `vps` list (0-based, like `account`).
    pub vps: Option<usize>,
    pub set_status: Option<String>,
    pub set_vps_status: Option<String>,
    /// The machine goes down by itself: `true` (reported `stopped`) or the `vpsStatus`
    /// to report (e.g. "error").
    pub crash: Option<Crash>,
    /// Hang (true) or un-hang (false): `vpsStatus` unchanged, RDP port closed.
    pub hang: Option<bool>,
    /// Dead through reboots: actions succeed but the machine stays hung (true also
    /// hangs it now).
    pub stays_dead: Option<bool>,
    /// Only stop+start fixes the machine, a reboot does not (true also hangs it now).
    pub needs_power_cycle: Option<bool>,
    /// Drop the VPS's injected action failures (applied before `fail_actions`).
    pub clear_action_failures: bool,
    /// The VPS's actions fail with an error status (optionally N times).
    pub fail_actions: Option<ActionFailure>,
    /// Delete the VPS (gone from lists, 404).
    pub remove: bool,
    pub clear_faults: bool,
    pub add_fault: Option<Fault>,
    /// End an API blackout (applied before `blackout`).
    pub end_blackout: bool,
    /// Every API endpoint answers 503 for this long (`"30s"`) or `"until_cleared"`.
    pub blackout: Option<BlackoutLength>,
    /// New boot time for starts and reboots from now on.
    #[serde(with = "humantime_serde")]
    pub reboot_duration: Option<Duration>,
}

impl StableTimelineEvent {
    fn targets_vps(&self) -> bool {
        self.set_status.is_some()
            || self.set_vps_status.is_some()
            || self.crash.is_some()
            || self.hang.is_some()
            || self.stays_dead.is_some()
            || self.needs_power_cycle.is_some()
            || self.clear_action_failures
            || self.fail_actions.is_some()
            || self.remove
    }

    fn validate(&self, index: usize, vps_count: usize) -> Result<(), SimError> {
        let global = self.clear_faults
            || self.add_fault.is_some()
            || self.end_blackout
            || self.blackout.is_some()
            || self.reboot_duration.is_some();
        if !self.targets_vps() && !global {
            refuse!("timeline[{index}]: no action (set_status, set_vps_status, crash, hang, stays_dead, needs_power_cycle, clear_action_failures, fail_actions, remove, clear_faults, add_fault, end_blackout, blackout or reboot_duration)");
        }
        if self.targets_vps() {
            match self.vps {
                None => refuse!("timeline[{index}]: a VPS action needs `vps`"),
                Some(i) if i >= vps_count => {
                    refuse!("timeline[{index}]: vps {i} is not in the scenario (0..{vps_count})")
                }
                Some(_) => {}
            }
        }
        if let Some(problem) = self.fail_actions.as_ref().and_then(ActionFailure::problem) {
            refuse!("timeline[{index}].{problem}");
        }
        Ok(())
    }
}

/// A crash: `true` (reported `stopped`), `false` (nothing), or the `vpsStatus` to
/// report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Crash {
    Flag(bool),
    Status(String),
}

impl Crash {
    /// The `vpsStatus` a crashed machine reports, if this is a crash at all.
    pub fn vps_status(&self) -> Option<&str> {
        match self {
            Crash::Flag(true) => Some("stopped"),
            Crash::Flag(false) => None,
            Crash::Status(s) => Some(s),
        }
    }
}

impl Default for StableScenario {
    fn default() -> Self {
        Self {
            accounts: Vec::new(),
            vps: Vec::new(),
            provisioning_delay: Duration::from_secs(120),
            rdp_port: 0,
            renewal_on_insufficient_balance: RenewalFailure::default(),
            faults: Vec::new(),
            reboot_duration: Duration::from_secs(1),
            booting_vps_status: None,
            timeline: Vec::new(),
        }
    }
}

/// The state an unpaid renewal leaves the service in. The default (`suspended` /
/// `stopped`) is a simulator choice: the real behaviour is undocumented. Any strings
/// are allowed, so unknown values can be produced too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RenewalFailure {
    pub status: String,
    pub vps_status: String,
}

impl Default for RenewalFailure {
    fn default() -> Self {
        Self {
            status: "suspended".into(),
            vps_status: "stopped".into(),
        }
    }
}

/// One customer account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountSpec {
    /// 24 hex chars; generated when absent.
    pub id: Option<String>,
    /// Wallet balance, EUR.
    pub balance: f64,
    pub first_name: String,
    pub last_name: String,
    /// Generated (`user<N>@example.com`) when absent.
    pub email: Option<String>,
    pub keys: Vec<KeySpec>,
}

impl Default for AccountSpec {
    fn default() -> Self {
        Self {
            id: None,
            balance: 100.0,
            first_name: "John".into(),
            last_name: "Doe".into(),
            email: None,
            keys: Vec::new(),
        }
    }
}

/// One API key of an account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeySpec {
    /// The raw key, `svps_live_` + hex.
    pub key: String,
    /// Label; "Key N" when absent.
    pub name: Option<String>,
    pub scope: KeyScope,
    /// None = never expires.
    pub expires_at: Option<RelTime>,
}

impl Default for KeySpec {
    fn default() -> Self {
        Self {
            key: String::new(),
            name: None,
            scope: KeyScope::Full,
            expires_at: None,
        }
    }
}

/// API key permission scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyScope {
    /// Read and write.
    Full,
    /// List/view only; writes answer 403.
    Read,
}

impl KeyScope {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyScope::Full => "full",
            KeyScope::Read => "read",
        }
    }
}

/// One VPS service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VpsSpec {
    /// The owning account: its `id`, one of its keys, or its index ("0").
    pub account: String,
    /// `basic`, `prime`, `pro` (anything else is served as is and never renews).
    pub plan_id: String,
    /// `monthly` or `yearly` (anything else never renews).
    pub billing_cycle: String,
    /// Service/billing status; any string.
    pub status: String,
    /// Machine status; any string. `provisioning` becomes `active` after the delay.
    pub vps_status: String,
    pub location: String,
    pub current_period_end: RelTime,
    /// Default: one billing cycle before the period end.
    pub current_period_start: Option<RelTime>,
    /// Default: the period start.
    pub created_at: Option<RelTime>,
    /// Default: a distinct 127.2.x.y.
    pub ip_address: Option<Ipv4Addr>,
    /// Open a TCP listener at `ip_address:rdp_port` while the machine is up.
    pub listen_rdp: bool,
    /// Overrides the scenario's `rdp_port`.
    pub rdp_port: Option<u16>,
    /// Machine "hung": reported active, but the RDP port is closed.
    pub hang: bool,
    /// Overrides the scenario's `provisioning_delay`.
    #[serde(with = "humantime_serde")]
    pub provisioning_for: Option<Duration>,
    /// Fields the list leaves out of this VPS's entry (e.g. `["ipAddress"]`).
    pub list_omits: Vec<String>,
}

impl Default for VpsSpec {
    fn default() -> Self {
        Self {
            account: "0".into(),
            plan_id: "prime".into(),
            billing_cycle: "monthly".into(),
            status: "active".into(),
            vps_status: "active".into(),
            location: "amsterdam".into(),
            current_period_end: RelTime::Offset(30 * 86_400),
            current_period_start: None,
            created_at: None,
            ip_address: None,
            listen_rdp: true,
            rdp_port: None,
            hang: false,
            provisioning_for: None,
            list_omits: Vec::new(),
        }
    }
}

/// Raw key of the demo's full-scope key (a simulator secret, not a real one).
pub const DEMO_FULL_KEY: &str = "svps_live_f011de30c3e5500112233445566778899aabbccdd";
/// Raw key of the demo's read-only key.
/// (Distinct `keyPrefix`es, as a real account's keys almost always have.)
pub const DEMO_READ_KEY: &str = "svps_live_4eadde30c3e5500112233445566778899aabbccdd";

/// API key of benchmark account `i` in `bench:AxN` (a simulator secret, not a real one).
pub fn bench_key(i: usize) -> String {
    format!("svps_live_{:040x}", 0xbe4c_0000_u64 + i as u64)
}

impl StableScenario {
    /// One account (wallet 20 EUR, a full key and a read key expiring in 10 days) with
    /// three VPSes, lively on a real clock: a `basic` renewing in one minute (paid: 7.51
    /// EUR left), a `prime` renewing in three minutes that the wallet can no longer pay
    /// (suspended then), and a `pro` still provisioning for another minute.
    pub fn demo() -> StableScenario {
        let day = 86_400;
        StableScenario {
            accounts: vec![AccountSpec {
                balance: 20.0,
                keys: vec![
                    KeySpec {
                        key: DEMO_FULL_KEY.into(),
                        name: Some("vpswatch".into()),
                        ..KeySpec::default()
                    },
                    KeySpec {
                        key: DEMO_READ_KEY.into(),
                        name: Some("vpswatch read-only".into()),
                        scope: KeyScope::Read,
                        expires_at: Some(RelTime::Offset(10 * day)),
                    },
                ],
                ..AccountSpec::default()
            }],
            vps: vec![
                VpsSpec {
                    current_period_end: RelTime::Offset(180),
                    ..VpsSpec::default()
                },
                VpsSpec {
                    plan_id: "basic".into(),
                    location: "london".into(),
                    current_period_end: RelTime::Offset(60),
                    ..VpsSpec::default()
                },
                VpsSpec {
                    plan_id: "pro".into(),
                    billing_cycle: "yearly".into(),
                    vps_status: "provisioning".into(),
                    location: "frankfurt".into(),
                    current_period_end: RelTime::Offset(365 * day),
                    provisioning_for: Some(Duration::from_secs(60)),
                    ..VpsSpec::default()
                },
            ],
            ..StableScenario::default()
        }
    }

    /// `accounts` accounts (`bench:AxN`), each with one full key
    /// ([`bench_key`]`(i)`) and `per_account` VPSes: mixed plans, cycles and period
    /// ends, every tenth stopped; no RDP listeners (a benchmark polls, it does not probe).
    pub fn bench(accounts: usize, per_account: usize) -> StableScenario {
        const PLANS: [&str; 3] = ["basic", "prime", "pro"];
        let mut s = StableScenario::default();
        for a in 0..accounts {
            s.accounts.push(AccountSpec {
                balance: 1000.0,
                keys: vec![KeySpec {
                    key: bench_key(a),
                    ..KeySpec::default()
                }],
                ..AccountSpec::default()
            });
            for i in 0..per_account {
                s.vps.push(VpsSpec {
                    account: a.to_string(),
                    plan_id: PLANS[i % PLANS.len()].into(),
                    billing_cycle: if i % 5 == 4 { "yearly" } else { "monthly" }.into(),
                    vps_status: if i % 10 == 9 { "stopped" } else { "active" }.into(),
                    current_period_end: RelTime::Offset(((i % 28) as i64 + 1) * 86_400),
                    ip_address: Some(Ipv4Addr::from(0x7f40_0000 + (a * per_account + i) as u32)),
                    listen_rdp: false,
                    ..VpsSpec::default()
                });
            }
        }
        s
    }

    /// A built-in by name (`demo`, `empty`, `bench:AxN`) or a TOML/JSON file (by extension).
    pub fn load(path_or_name: &str) -> Result<StableScenario, SimError> {
        let scenario = match path_or_name {
            "demo" => Self::demo(),
            "empty" => Self::default(),
            name if name.starts_with("bench:") => {
                let spec = &name["bench:".len()..];
                let (a, n) = spec.split_once('x').unwrap_or(("1", spec));
                let (Ok(a), Ok(n)) = (a.parse::<usize>(), n.parse::<usize>()) else {
                    refuse!("scenario `{name}`: `bench:AxN` needs an account and a VPS count");
                };
                Self::bench(a, n)
            }
            path => {
                let text = std::fs::read_to_string(path).map_err(SimError::io(format!(
                    "scenario `{path}` is neither a built-in (demo, empty) nor a readable file"
                )))?;
                if path.ends_with(".json") {
                    Self::from_json(&text)
                } else {
                    Self::from_toml(&text)
                }
                .map_err(|e| e.context(format!("scenario file {path}")))?
            }
        };
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn from_toml(text: &str) -> Result<StableScenario, SimError> {
        Ok(toml::from_str(text)?)
    }

    pub fn from_json(text: &str) -> Result<StableScenario, SimError> {
        Ok(serde_json::from_str(text)?)
    }

    /// Checks what serde cannot: key format and uniqueness, balances, VPS owners.
    pub fn validate(&self) -> Result<(), SimError> {
        let mut seen = std::collections::HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            if !a.balance.is_finite() {
                refuse!("accounts[{i}].balance must be a finite number");
            }
            if let Some(id) = &a.id {
                if id.is_empty() {
                    refuse!("accounts[{i}].id must not be empty");
                }
            }
            for k in &a.keys {
                if !k.key.starts_with("svps_live_") || k.key.len() <= "svps_live_".len() {
                    refuse!(
                        "accounts[{i}]: key `{}` must look like svps_live_<hex>",
                        k.key
                    );
                }
                if !seen.insert(k.key.as_str()) {
                    refuse!("accounts[{i}]: key `{}` is used twice", k.key);
                }
            }
        }
        for (i, v) in self.vps.iter().enumerate() {
            if self.account_index(&v.account).is_none() {
                refuse!("vps[{i}].account `{}` names no account", v.account);
            }
        }
        for (i, ev) in self.timeline.iter().enumerate() {
            ev.validate(i, self.vps.len())?;
        }
        Ok(())
    }

    fn account_index(&self, account: &str) -> Option<usize> {
        if let Ok(i) = account.parse::<usize>() {
            return (i < self.accounts.len()).then_some(i);
        }
        self.accounts.iter().position(|a| {
            a.id.as_deref() == Some(account) || a.keys.iter().any(|k| k.key == account)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_example_parses() {
        let s = StableScenario::from_toml(
            r#"
            rdp_port = 0
            provisioning_delay = "30s"
            renewal_on_insufficient_balance = { status = "expired", vps_status = "stopped" }
            [[accounts]]
            balance = 5.0
            keys = [{ key = "svps_live_abcd", scope = "read", expires_at = "3d" }]
            [[vps]]
            account = "0"
            plan_id = "basic"
            status = "weird"
            current_period_end = "5d"
            ip_address = "127.2.9.9"
            listen_rdp = false
            "#,
        )
        .expect("toml");
        s.validate().expect("valid");
        assert_eq!(s.accounts[0].keys[0].scope, KeyScope::Read);
        assert_eq!(s.vps[0].current_period_end, RelTime::Offset(5 * 86_400));
        assert_eq!(s.renewal_on_insufficient_balance.status, "expired");
    }

    #[test]
    fn rejects_bad_keys_and_owners() {
        let mut s = StableScenario::demo();
        s.validate().expect("demo is valid");
        s.vps[0].account = "7".into();
        assert!(s.validate().is_err());
        let mut s = StableScenario::demo();
        s.accounts[0].keys[0].key = "nope".into();
        assert!(s.validate().is_err());
    }
}
