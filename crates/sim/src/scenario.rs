//! Scenarios: the simulator's starting world and its script.
//!
//! A scenario lists users, their VMs (state, expiry, template, usage profile, …), rate
//! limit settings and a timeline of events (state changes, expiry changes, removals,
//! faults, and the watchdog's trouble: crash, hang, dead through reboots, fixed only by
//! stop+start, failing actions, API blackout, boot time). It deserializes from TOML or JSON, so tests, the demo and `vpswatch simulate`
//! share one format; `demo` and `bench:N` are built in.
//!
//! Relative times ("3d", "-2h") count from the moment the VM is added (for scenario VMs:
//! the simulator's start) or from the moment a timeline event fires; absolute RFC 3339
//! timestamps are accepted too.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use crate::SimError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::faults::Fault;
use super::power::{ActionFailure, BlackoutLength};

/// Placeholder owner that [`Scenario::load`] replaces with the given owner pubkey.
pub const DEFAULT_OWNER: &str = "default";

/// The whole simulated world at start plus its script.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    pub rate_limit: RateLimitSettings,
    pub settings: SimSettings,
    pub users: Vec<UserSpec>,
    pub vms: Vec<VmSpec>,
    pub timeline: Vec<TimelineEvent>,
}

/// The real server's per-IP limiter (docs/providers.md), made tunable for tests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// General bucket: requests per window per client IP.
    pub per_minute: u32,
    /// Strict bucket (OAuth, verification, contact, LNURL paths).
    pub strict_per_minute: u32,
    /// Fixed window length.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            per_minute: 600,
            strict_per_minute: 10,
            window: Duration::from_secs(60),
        }
    }
}

/// Server-side settings that shape lifecycle and pricing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimSettings {
    /// Grace days for subscriptions older than 180 days (`delete-after`).
    pub delete_after_days: u16,
    /// `max_prepay_days` reported on every VM.
    pub max_prepay_days: u32,
    /// Unpaid VMs are hard-deleted this long after creation.
    #[serde(with = "humantime_serde")]
    pub unpaid_purge_after: Duration,
    /// Fiat per BTC, used when a fiat plan is quoted for Lightning (and back).
    pub btc_eur: f64,
    pub btc_usd: f64,
    /// When set, every running VM listens on `<its ipv4>:<port>` (its "SSH port") so
    /// liveness probes are real TCP; a stopped, deleted or `hung` VM does not.
    pub vm_listen_port: Option<u16>,
    /// How long a guest takes to boot after a start or restart through the API: its
    /// port stays closed meanwhile (the state already says running, as Proxmox does
    /// during a reset). 0 = it answers at once.
    #[serde(with = "humantime_serde")]
    pub reboot_duration: Duration,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            delete_after_days: 3,
            max_prepay_days: 365,
            unpaid_purge_after: Duration::from_secs(3600),
            btc_eur: 90_000.0,
            btc_usd: 100_000.0,
            vm_listen_port: None,
            reboot_duration: Duration::from_secs(1),
        }
    }
}

/// A user with saved payment methods (GET /api/v1/payment-methods).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserSpec {
    /// Hex pubkey, npub, or "default".
    pub pubkey: String,
    pub payment_methods: Vec<PaymentMethodSpec>,
}

/// A saved payment method (NWC wallet or Revolut card).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentMethodSpec {
    /// `nwc` or `revolut`.
    pub provider: String,
    pub name: Option<String>,
    pub is_default: bool,
    pub enabled: bool,
}

impl Default for PaymentMethodSpec {
    fn default() -> Self {
        Self {
            provider: "nwc".into(),
            name: None,
            is_default: true,
            enabled: true,
        }
    }
}

/// VM power state as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    #[default]
    Unknown,
    Running,
    Stopped,
    Creating,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Unknown => "unknown",
            VmState::Running => "running",
            VmState::Stopped => "stopped",
            VmState::Creating => "creating",
        }
    }
}

/// One VM in a scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmSpec {
    /// Owner pubkey (hex or npub), or "default".
    pub owner: String,
    pub state: VmState,
    /// Absent = never paid (expires null, status unknown, purged after an hour).
    pub expires: Option<RelTime>,
    /// How long before being added the VM (and its subscription) was created; drives
    /// the grace period before deletion.
    #[serde(with = "humantime_serde")]
    pub age: Duration,
    /// For a running VM: how long it has been up when added.
    #[serde(with = "humantime_serde")]
    pub uptime: Duration,
    #[serde(deserialize_with = "string_or_table")]
    pub template: TemplateSpec,
    #[serde(deserialize_with = "string_or_table")]
    pub image: ImageSpec,
    /// Default: a distinct 127.x.y.z address derived from the VM id.
    pub ipv4: Option<Ipv4Addr>,
    pub auto_renewal_enabled: bool,
    pub usage: UsageProfile,
    /// Freeze the status snapshot (its timestamp stops moving).
    pub status_stale: bool,
    /// Answer time-series with 500, like libvirt hosts.
    pub timeseries_error: bool,
    /// Emit time-series `memory` as a fraction (Dummy host) instead of bytes (Proxmox).
    pub memory_as_fraction: bool,
    /// Unpaid VM with an unexpired invoice pending: not purged.
    pub pending_payment: bool,
    /// The port this VM listens on while running, instead of `settings.vm_listen_port`
    /// (VMs serving different services).
    pub listen_port: Option<u16>,
    /// A VM without a subscription id (null in the VM, absent from `/subscriptions`).
    pub no_subscription: bool,
}

impl Default for VmSpec {
    fn default() -> Self {
        Self {
            owner: DEFAULT_OWNER.into(),
            state: VmState::Running,
            expires: Some(RelTime::Offset(30 * 86_400)),
            age: Duration::from_secs(30 * 86_400),
            uptime: Duration::from_secs(6 * 3600),
            template: TemplateSpec::named("Tiny BTC"),
            image: ImageSpec::default(),
            ipv4: None,
            auto_renewal_enabled: true,
            usage: UsageProfile::default(),
            status_stale: false,
            timeseries_error: false,
            memory_as_fraction: false,
            pending_payment: false,
            listen_port: None,
            no_subscription: false,
        }
    }
}

/// A template: a built-in name ("Tiny BTC", "Daily BTC", "Small EUR", "Medium EUR",
/// "Large USD") or a table; fields left out come from the built-in of that name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemplateSpec {
    pub name: String,
    pub cpu: Option<u16>,
    /// Bytes.
    pub memory: Option<u64>,
    /// Bytes.
    pub disk: Option<u64>,
    pub disk_type: Option<String>,
    pub disk_interface: Option<String>,
    pub region: Option<String>,
    pub cost: Option<CostPlanSpec>,
}

impl TemplateSpec {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
}

impl FromStr for TemplateSpec {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::named(s))
    }
}

/// Price of one interval, in the real server's units: BTC in millisats, fiat in cents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CostPlanSpec {
    pub name: Option<String>,
    pub amount: u64,
    pub currency: String,
    pub interval_amount: u64,
    pub interval_type: IntervalType,
}

impl Default for CostPlanSpec {
    fn default() -> Self {
        Self {
            name: None,
            amount: 10_000_000,
            currency: "BTC".into(),
            interval_amount: 1,
            interval_type: IntervalType::Month,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntervalType {
    Day,
    #[default]
    Month,
    Year,
}

/// An OS image: "debian 12" or a table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageSpec {
    pub distribution: String,
    pub version: String,
    pub flavour: String,
    pub default_username: Option<String>,
}

impl Default for ImageSpec {
    fn default() -> Self {
        Self {
            distribution: "debian".into(),
            version: "12".into(),
            flavour: "Server".into(),
            default_username: None,
        }
    }
}

impl FromStr for ImageSpec {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split([' ', ':', '-']).filter(|p| !p.is_empty());
        let distribution = parts.next().unwrap_or("debian").to_lowercase();
        let version = parts.next().unwrap_or("").to_string();
        Ok(Self {
            distribution,
            version,
            ..Self::default()
        })
    }
}

/// Usage a running VM shows. Rates are bytes/s; cpu and memory are fractions. With
/// `variation` > 0 each value follows `base·(1 + variation·sin(2π·t/period + phase))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageProfile {
    pub cpu: f64,
    pub memory: f64,
    pub net_in: f64,
    pub net_out: f64,
    pub disk_read: f64,
    pub disk_write: f64,
    pub variation: f64,
    #[serde(with = "humantime_serde")]
    pub period: Duration,
}

impl Default for UsageProfile {
    fn default() -> Self {
        Self {
            cpu: 0.1,
            memory: 0.3,
            net_in: 2_000.0,
            net_out: 1_000.0,
            disk_read: 50_000.0,
            disk_write: 20_000.0,
            variation: 0.0,
            period: Duration::from_secs(600),
        }
    }
}

/// One usage sample at a point in time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UsageSample {
    pub cpu: f64,
    pub memory: f64,
    pub net_in: f64,
    pub net_out: f64,
    pub disk_read: f64,
    pub disk_write: f64,
}

impl UsageProfile {
    /// The profile's values at unix time `t`; `phase` (0..1) desynchronises VMs.
    pub fn sample(&self, t: i64, phase: f64) -> UsageSample {
        let factor = if self.variation > 0.0 {
            let period = self.period.as_secs_f64().max(1.0);
            let angle = std::f64::consts::TAU * (t as f64 / period + phase);
            1.0 + self.variation * angle.sin()
        } else {
            1.0
        };
        let rate = |base: f64| (base * factor).max(0.0);
        UsageSample {
            cpu: rate(self.cpu).min(1.0),
            memory: rate(self.memory).min(1.0),
            net_in: rate(self.net_in),
            net_out: rate(self.net_out),
            disk_read: rate(self.disk_read),
            disk_write: rate(self.disk_write),
        }
    }
}

/// A scripted change at `at` after the simulator started. Several actions may be set on
/// one event; they apply in field order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimelineEvent {
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// Target VM id (scenario VMs are numbered from 1 in file order).
    pub vm: Option<u64>,
    pub set_state: Option<VmState>,
    /// New expiry, relative to the moment the event fires.
    pub set_expires: Option<RelTime>,
    pub set_stale: Option<bool>,
    pub set_timeseries_error: Option<bool>,
    pub set_status_unavailable: Option<bool>,
    /// The running VM stops by itself (state `stopped`, port closed).
    pub crash: bool,
    /// Hang (true) or un-hang (false) the guest: state unchanged, port closed.
    pub hang: Option<bool>,
    /// Dead through reboots: actions succeed but the guest stays hung (true also hangs
    /// it now).
    pub stays_dead: Option<bool>,
    /// Only stop+start fixes the guest, a restart does not (true also hangs it now).
    pub needs_power_cycle: Option<bool>,
    /// Drop the VM's injected action failures (applied before `fail_actions`).
    pub clear_action_failures: bool,
    /// The VM's power actions fail with an error status (optionally N times).
    pub fail_actions: Option<ActionFailure>,
    /// Soft-delete the VM.
    pub remove: bool,
    pub clear_faults: bool,
    pub add_fault: Option<Fault>,
    /// End an API blackout (applied before `blackout`).
    pub end_blackout: bool,
    /// Every API endpoint answers 503 for this long (`"30s"`) or `"until_cleared"`.
    pub blackout: Option<BlackoutLength>,
    /// New boot time for starts and restarts from now on.
    #[serde(with = "humantime_serde")]
    pub reboot_duration: Option<Duration>,
}

impl TimelineEvent {
    fn targets_vm(&self) -> bool {
        self.set_state.is_some()
            || self.set_expires.is_some()
            || self.set_stale.is_some()
            || self.set_timeseries_error.is_some()
            || self.set_status_unavailable.is_some()
            || self.crash
            || self.hang.is_some()
            || self.stays_dead.is_some()
            || self.needs_power_cycle.is_some()
            || self.clear_action_failures
            || self.fail_actions.is_some()
            || self.remove
    }

    fn validate(&self, index: usize, vm_count: usize) -> Result<(), SimError> {
        let global = self.clear_faults
            || self.add_fault.is_some()
            || self.end_blackout
            || self.blackout.is_some()
            || self.reboot_duration.is_some();
        if !self.targets_vm() && !global {
            refuse!("timeline[{index}]: no action (set_state, set_expires, set_stale, set_timeseries_error, set_status_unavailable, crash, hang, stays_dead, needs_power_cycle, clear_action_failures, fail_actions, remove, clear_faults, add_fault, end_blackout, blackout or reboot_duration)");
        }
        if let Some(problem) = self.fail_actions.as_ref().and_then(ActionFailure::problem) {
            refuse!("timeline[{index}].{problem}");
        }
        if self.targets_vm() {
            match self.vm {
                None => refuse!("timeline[{index}]: a VM action needs `vm`"),
                Some(id) if id == 0 || id as usize > vm_count => {
                    refuse!("timeline[{index}]: vm {id} is not in the scenario (1..={vm_count})")
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// A time relative to some base ("3d", "-90m", "0s") or absolute (RFC 3339).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelTime {
    /// Seconds after the base (negative = before).
    Offset(i64),
    At(DateTime<Utc>),
}

impl RelTime {
    pub fn resolve(self, base: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            RelTime::Offset(secs) => shift(base, secs),
            RelTime::At(t) => t,
        }
    }
}

impl FromStr for RelTime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(RelTime::At(t.with_timezone(&Utc)));
        }
        let (negative, rest) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let d = humantime::parse_duration(rest.trim()).map_err(|e| {
            format!("`{s}` is neither a duration like \"3d\"/\"-2h\" nor an RFC 3339 time: {e}")
        })?;
        let secs = i64::try_from(d.as_secs()).map_err(|_| format!("`{s}` is too large"))?;
        Ok(RelTime::Offset(if negative { -secs } else { secs }))
    }
}

impl fmt::Display for RelTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelTime::Offset(secs) if *secs < 0 => write!(
                f,
                "-{}",
                humantime::format_duration(Duration::from_secs(secs.unsigned_abs()))
            ),
            RelTime::Offset(secs) => write!(
                f,
                "{}",
                humantime::format_duration(Duration::from_secs(*secs as u64))
            ),
            RelTime::At(t) => write!(f, "{}", t.to_rfc3339()),
        }
    }
}

impl Serialize for RelTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RelTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `base` moved by `secs` (negative = back), saturating instead of overflowing.
pub fn shift(base: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    chrono::Duration::try_seconds(secs)
        .and_then(|d| base.checked_add_signed(d))
        .unwrap_or(if secs < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
}

/// `base` moved back by a std duration, saturating.
pub fn before(base: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    shift(base, -i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `base` moved forward by a std duration, saturating.
pub fn after(base: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    shift(base, i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Accepts either a string (parsed with `FromStr`) or a table/object.
fn string_or_table<'de, T, D>(d: D) -> Result<T, D::Error>
where
    T: Deserialize<'de> + FromStr<Err = std::convert::Infallible>,
    D: Deserializer<'de>,
{
    struct Visitor<T>(std::marker::PhantomData<T>);
    impl<'de, T> serde::de::Visitor<'de> for Visitor<T>
    where
        T: Deserialize<'de> + FromStr<Err = std::convert::Infallible>,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a name or a table")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            match T::from_str(v) {
                Ok(t) => Ok(t),
                Err(never) => match never {},
            }
        }
        fn visit_map<M: serde::de::MapAccess<'de>>(self, m: M) -> Result<T, M::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(m))
        }
    }
    d.deserialize_any(Visitor(std::marker::PhantomData))
}

impl Scenario {
    /// Loads a built-in by name (`demo`, `bench`, `bench:N`, `empty`) or a TOML/JSON
    /// file, then replaces the owner placeholder "default" with `owner_pubkey`.
    pub fn load(path_or_name: &str, owner_pubkey: Option<&str>) -> Result<Scenario, SimError> {
        let mut scenario = match Self::builtin(path_or_name)? {
            Some(s) => s,
            None => Self::from_file(path_or_name)?,
        };
        scenario.resolve_owners(owner_pubkey)?;
        scenario.validate()?;
        Ok(scenario)
    }

    fn builtin(name: &str) -> Result<Option<Scenario>, SimError> {
        Ok(match name {
            "demo" => Some(Self::demo(DEFAULT_OWNER)),
            "empty" => Some(Scenario::default()),
            "bench" => Some(Self::bench(1000, DEFAULT_OWNER)),
            _ => match name.strip_prefix("bench:") {
                Some(spec) if spec.contains('x') => {
                    let (a, n) = spec.split_once('x').unwrap_or_default();
                    let (Ok(a), Ok(n)) = (a.parse::<usize>(), n.parse::<usize>()) else {
                        refuse!("scenario `{name}`: `bench:AxN` needs an account and a VM count");
                    };
                    Some(Self::bench_accounts(a, n)?)
                }
                Some(n) => {
                    let n: usize = n.parse().map_err(|e| {
                        SimError::other(format!("scenario `{name}`: `bench:N` needs a VM count"), e)
                    })?;
                    Some(Self::bench(n, DEFAULT_OWNER))
                }
                None => None,
            },
        })
    }

    fn from_file(path: &str) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path).map_err(SimError::io(format!(
            "scenario `{path}` is neither a built-in (demo, bench, bench:N, empty) nor a readable file (or bench:AxN)"
        )))?;
        if path.ends_with(".json") {
            Self::from_json(&text).map_err(|e| e.context(format!("scenario file {path}")))
        } else {
            Self::from_toml(&text).map_err(|e| e.context(format!("scenario file {path}")))
        }
    }

    pub fn from_toml(text: &str) -> Result<Scenario, SimError> {
        Ok(toml::from_str(text)?)
    }

    pub fn from_json(text: &str) -> Result<Scenario, SimError> {
        Ok(serde_json::from_str(text)?)
    }

    /// Replaces "default" owners with `owner` (hex or npub), and normalises every
    /// owner to lowercase hex.
    pub fn resolve_owners(&mut self, owner: Option<&str>) -> Result<(), SimError> {
        let default = owner.map(normalize_pubkey).transpose()?;
        let resolve = |o: &mut String| -> Result<(), SimError> {
            if o == DEFAULT_OWNER {
                match &default {
                    Some(d) => *o = d.clone(),
                    None => {
                        refuse!("the scenario uses owner \"default\" but no owner pubkey was given")
                    }
                }
            } else {
                *o = normalize_pubkey(o)?;
            }
            Ok(())
        };
        for vm in &mut self.vms {
            resolve(&mut vm.owner)?;
        }
        for user in &mut self.users {
            resolve(&mut user.pubkey)?;
        }
        Ok(())
    }

    /// Checks what serde cannot: timeline targets and actions.
    pub fn validate(&self) -> Result<(), SimError> {
        for (i, ev) in self.timeline.iter().enumerate() {
            ev.validate(i, self.vms.len())?;
        }
        if self.rate_limit.window.is_zero() {
            refuse!("rate_limit.window must be positive");
        }
        Ok(())
    }

    /// Five VMs with lively usage: three running (one expiring within ~2 days), one
    /// stopped, one creating that comes up after two minutes; BTC and EUR plans.
    pub fn demo(owner: &str) -> Scenario {
        let vm = |state, expires: i64, template: &str, usage: UsageProfile| VmSpec {
            owner: owner.into(),
            state,
            expires: Some(RelTime::Offset(expires)),
            template: TemplateSpec::named(template),
            usage,
            ..VmSpec::default()
        };
        let lively = |cpu, memory, net, variation, period_s| UsageProfile {
            cpu,
            memory,
            net_in: net,
            net_out: net / 3.0,
            disk_read: net * 4.0,
            disk_write: net * 2.0,
            variation,
            period: Duration::from_secs(period_s),
        };
        let day = 86_400;
        let mut db = vm(
            VmState::Running,
            40 * day,
            "Small EUR",
            lively(0.45, 0.7, 250_000.0, 0.5, 300),
        );
        db.image = ImageSpec {
            distribution: "ubuntu".into(),
            version: "24.04".into(),
            ..ImageSpec::default()
        };
        db.age = Duration::from_secs(200 * 86_400);
        let mut creating = vm(
            VmState::Creating,
            30 * day,
            "Medium EUR",
            UsageProfile::default(),
        );
        creating.age = Duration::from_secs(60);
        creating.uptime = Duration::ZERO;
        Scenario {
            vms: vec![
                vm(
                    VmState::Running,
                    25 * day,
                    "Tiny BTC",
                    lively(0.2, 0.35, 40_000.0, 0.6, 240),
                ),
                db,
                vm(
                    VmState::Stopped,
                    12 * day,
                    "Tiny BTC",
                    UsageProfile::default(),
                ),
                vm(
                    VmState::Running,
                    40 * 3600,
                    "Daily BTC",
                    lively(0.08, 0.5, 5_000.0, 0.3, 600),
                ),
                creating,
            ],
            timeline: vec![TimelineEvent {
                at: Duration::from_secs(120),
                vm: Some(5),
                set_state: Some(VmState::Running),
                ..TimelineEvent::default()
            }],
            ..Scenario::default()
        }
    }

    /// `n` VMs for benchmarks: mostly running, every tenth stopped, mixed templates and
    /// expiries between 1 and 60 days.
    pub fn bench(n: usize, owner: &str) -> Scenario {
        const TEMPLATES: [&str; 4] = ["Tiny BTC", "Small EUR", "Daily BTC", "Medium EUR"];
        let vms = (0..n)
            .map(|i| {
                let state = if i % 10 == 9 {
                    VmState::Stopped
                } else {
                    VmState::Running
                };
                let f = (i % 17) as f64 / 17.0;
                VmSpec {
                    owner: owner.into(),
                    state,
                    expires: Some(RelTime::Offset(((i % 60) as i64 + 1) * 86_400)),
                    template: TemplateSpec::named(TEMPLATES[i % TEMPLATES.len()]),
                    usage: UsageProfile {
                        cpu: 0.05 + 0.6 * f,
                        memory: 0.2 + 0.5 * f,
                        variation: 0.3,
                        period: Duration::from_secs(300 + (i % 7) as u64 * 60),
                        ..UsageProfile::default()
                    },
                    ..VmSpec::default()
                }
            })
            .collect();
        Scenario {
            vms,
            ..Scenario::default()
        }
    }
}

impl Scenario {
    /// `accounts` users, each owning `per_account` VMs shaped like [`Scenario::bench`]
    /// (`bench:AxN`). Owner `i`'s secret key is [`bench_account_secret`]`(i)`, so a
    /// benchmark can sign as every owner without being told the keys.
    pub fn bench_accounts(accounts: usize, per_account: usize) -> Result<Scenario, SimError> {
        let mut scenario = Scenario::default();
        for i in 0..accounts {
            let owner = nostr::Keys::parse(&bench_account_secret(i))
                .map_err(|e| SimError::other(format!("bench account {i}'s key"), e))?
                .public_key()
                .to_hex();
            scenario.users.push(UserSpec {
                pubkey: owner.clone(),
                ..UserSpec::default()
            });
            scenario.vms.extend(Self::bench(per_account, &owner).vms);
        }
        Ok(scenario)
    }
}

/// Secret key (hex) of benchmark owner `i` in `bench:AxN`: SHA-256 of a fixed text, a
/// public test key, never a real one.
pub fn bench_account_secret(i: usize) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("vpswatch bench account {i}")))
}

/// Hex or npub → lowercase hex, validating the key.
pub fn normalize_pubkey(s: &str) -> Result<String, SimError> {
    let pk = nostr::PublicKey::parse(s.trim()).map_err(|e| {
        SimError::Scenario(format!(
            "`{s}` is not a Nostr public key (hex or npub): {e}"
        ))
    })?;
    Ok(pk.to_hex())
}
