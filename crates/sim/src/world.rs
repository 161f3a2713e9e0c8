//! The simulator's in-memory world: users, VMs, catalogue, timeline and faults, plus
//! the lifecycle the real server's worker runs (docs/providers.md): expiry stops a VM once,
//! grace-period overrun soft-deletes it, unpaid VMs are purged after an hour, and the
//! status cache is refreshed on every pass unless a VM is flagged stale.
//!
//! Everything is advanced lazily by [`World::tick`] with the simulator's "now", so a
//! manual test clock drives the whole world.

use crate::SimError;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use chrono::{DateTime, Days, Months, TimeZone, Utc};
use serde::Serialize;

use super::faults::FaultSet;
pub use super::power::PowerAction;
use super::power::{self as pw, ActionFailure, Blackout};
use super::scenario::{
    after, before, normalize_pubkey, CostPlanSpec, ImageSpec, IntervalType, PaymentMethodSpec,
    Scenario, SimSettings, TemplateSpec, TimelineEvent, UsageProfile, UsageSample, VmSpec, VmState,
};

/// Run intervals remembered per VM for the time series (one hour needs few).
const MAX_RUN_INTERVALS: usize = 16;
/// History entries kept per VM.
const MAX_HISTORY: usize = 200;
/// Power-action requests kept in the simulator-wide log.
const MAX_ACTION_LOG: usize = 100_000;

/// A template as the catalogue holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Template {
    pub id: u64,
    pub name: String,
    pub cpu: u16,
    pub memory: u64,
    pub disk_size: u64,
    pub disk_type: String,
    pub disk_interface: String,
    pub region: String,
    pub cost: CostPlan,
}

/// A template's price per interval (BTC in millisats, fiat in cents).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostPlan {
    pub name: String,
    pub amount: u64,
    pub currency: String,
    pub interval_amount: u64,
    pub interval_type: IntervalType,
}

/// An OS image as the catalogue holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Image {
    pub id: u64,
    pub distribution: String,
    pub flavour: String,
    pub version: String,
    pub release_date: DateTime<Utc>,
    pub default_username: Option<String>,
}

/// A power-action request the API received from the VM's owner (or anyone, in the
/// simulator-wide log), whatever it answered — for tests and benchmarks to count and time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimAction {
    pub vm_id: u64,
    pub action: PowerAction,
    /// Simulator time, not truncated (the history keeps whole seconds).
    pub at: DateTime<Utc>,
    /// The status answered: 200, or an injected failure, 403, 404, 500 (not provisioned).
    pub status: u16,
}

/// One VM history entry (GET /vm/{id}/history).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    pub id: u64,
    pub action_type: &'static str,
    pub timestamp: DateTime<Utc>,
    pub initiated_by: &'static str,
    pub description: String,
}

/// The worker's cached view of a VM (the API's `status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ObservedStatus {
    pub timestamp: i64,
    pub state: VmState,
    pub cpu_usage: f32,
    pub mem_usage: f32,
    pub uptime: u64,
    pub net_in: u64,
    pub net_out: u64,
    pub disk_write: u64,
    pub disk_read: u64,
}

/// A subscription payment (filled by the renewal flow; listed by
/// `/subscriptions/{id}/payments`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimPayment {
    pub id: String,
    pub created: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    pub amount: u64,
    pub currency: String,
    pub payment_method: String,
    pub payment_type: String,
    pub is_paid: bool,
    pub paid_at: Option<DateTime<Utc>>,
    pub time: u64,
    pub data: serde_json::Value,
    /// The invoice's preimage (hex), revealed to whoever pays it.
    #[serde(skip)]
    pub preimage: String,
}

/// Invoice minting fails for the next `remaining` mints (`None` = until cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MintFailure {
    pub remaining: Option<u32>,
}

impl MintFailure {
    /// Counts one failed mint; false when the failure is used up (and no mint fails).
    pub fn take(&mut self) -> bool {
        match self.remaining.as_mut() {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }
}

/// One simulated VM. Its subscription shares its id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimVm {
    pub id: u64,
    pub owner: String,
    pub created: DateTime<Utc>,
    /// `None` = never paid.
    pub expires: Option<DateTime<Utc>>,
    pub state: VmState,
    pub template: Template,
    pub image: Image,
    pub ipv4: Ipv4Addr,
    pub reverse_dns: Option<String>,
    pub auto_renewal_enabled: bool,
    pub usage: UsageProfile,
    /// Freeze the status cache: its timestamp and values stop moving.
    pub status_stale: bool,
    /// The status cache entry lapsed (Redis TTL): status reads as unknown, timestamp 0.
    pub status_unavailable: bool,
    /// Time series answers 500 (libvirt hosts).
    pub timeseries_error: bool,
    /// Time series `memory` as a fraction (Dummy host) instead of bytes (Proxmox).
    pub memory_as_fraction: bool,
    /// Unpaid but an invoice is pending: not purged.
    pub pending_payment: bool,
    /// Its own listening port instead of `settings.vm_listen_port`.
    pub listen_port: Option<u16>,
    /// Soft-deleted: hidden from lists, GET answers 404 "VM not found".
    pub deleted: bool,
    /// Hung: the state stays as it is but the VM's port stops answering (a frozen
    /// guest). Cleared by a start or restart, as a reset would — unless one of the two
    /// flags below says otherwise.
    pub hung: bool,
    /// Dead through reboots: actions are accepted, but the guest never answers again.
    pub stays_dead: bool,
    /// A restart leaves the guest hung; a start from powered-off (stop, then start)
    /// fixes it, and clears this flag.
    pub needs_power_cycle: bool,
    /// Booting after a start/restart until then: running, but its port is closed.
    pub booting_until: Option<DateTime<Utc>>,
    /// Injected power-action failures, first match wins.
    pub action_failures: Vec<ActionFailure>,
    pub subscription_active: bool,
    /// Created before subscriptions existed: `subscription_id` is null and the
    /// subscription endpoints do not know it (only the VM endpoints renew it).
    pub no_subscription: bool,
    /// (boot, shutdown) pairs, newest last; `None` = still running.
    pub run_intervals: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)>,
    /// The `expires` value whose expiry was already handled.
    pub expired_handled: Option<DateTime<Utc>>,
    pub observed: Option<ObservedStatus>,
    pub actions: Vec<SimAction>,
    pub history: Vec<HistoryEntry>,
    pub payments: Vec<SimPayment>,
    /// The `expires` value the server-side auto-renewal already fired for.
    pub auto_renew_attempted: Option<DateTime<Utc>>,
}

impl SimVm {
    /// Paid at least once.
    pub fn is_paid(&self) -> bool {
        self.expires.is_some()
    }

    /// Provisioned on a host (has a MAC and IPs): paid and past "creating".
    pub fn is_provisioned(&self) -> bool {
        self.is_paid() && self.state != VmState::Creating
    }

    pub fn mac_address(&self) -> String {
        if !self.is_provisioned() {
            return "ff:ff:ff:ff:ff:ff".into();
        }
        let b = self.id.to_be_bytes();
        format!("bc:24:11:{:02x}:{:02x}:{:02x}", b[5], b[6], b[7])
    }

    /// Whether the VM was running at unix time `t`.
    pub fn running_at(&self, t: i64) -> bool {
        self.run_intervals
            .iter()
            .any(|(boot, stop)| boot.timestamp() <= t && stop.is_none_or(|s| t < s.timestamp()))
    }

    /// Usage at unix time `t` (zeros when not running then).
    pub fn usage_at(&self, t: i64) -> UsageSample {
        if !self.running_at(t) {
            return UsageSample::default();
        }
        let phase = (self.id as f64 * 0.618_033_988_75).fract();
        self.usage.sample(t, phase)
    }

    fn current_boot(&self) -> Option<DateTime<Utc>> {
        match self.run_intervals.last() {
            Some((boot, None)) => Some(*boot),
            _ => None,
        }
    }

    /// A running VM stops by itself, as a crashed guest does: the provider reports it
    /// stopped (Proxmox shows a dead QEMU process as `stopped`), with no history entry
    /// from its owner — which is how a watchdog tells a crash from a deliberate stop.
    pub fn crash(&mut self, now: DateTime<Utc>) {
        if self.state == VmState::Running {
            self.state = VmState::Stopped;
            self.power_off(whole_seconds(now));
            self.booting_until = None;
        }
    }

    /// Hangs (or un-hangs) the guest; the state is left as it is.
    pub fn set_hung(&mut self, hung: bool) {
        self.hung = hung;
    }

    /// `true` also hangs the guest now: it is dead, and reboots will not help.
    pub fn set_stays_dead(&mut self, v: bool) {
        self.stays_dead = v;
        if v {
            self.hung = true;
        }
    }

    /// `true` also hangs the guest now: only a stop followed by a start will fix it.
    pub fn set_needs_power_cycle(&mut self, v: bool) {
        self.needs_power_cycle = v;
        if v {
            self.hung = true;
        }
    }

    /// Whether the guest answers after a boot (see [`pw::boot`]).
    fn boot_guest(&mut self, cold: bool) {
        self.hung = pw::boot(cold, self.stays_dead, &mut self.needs_power_cycle);
    }

    fn power_on(&mut self, at: DateTime<Utc>) {
        self.power_off(at);
        self.run_intervals.push((at, None));
        if self.run_intervals.len() > MAX_RUN_INTERVALS {
            self.run_intervals.remove(0);
        }
    }

    fn power_off(&mut self, at: DateTime<Utc>) {
        if let Some((_, stop @ None)) = self.run_intervals.last_mut() {
            *stop = Some(at);
        }
    }

    /// Keeps run intervals in step with `state` after direct edits.
    fn sync_power(&mut self, now: DateTime<Utc>) {
        let running = self.current_boot().is_some();
        if self.state == VmState::Running && !running {
            // Started by other means than the API (a direct edit, the timeline): a
            // cold boot with no boot time.
            self.power_on(now);
            self.boot_guest(true);
        } else if self.state != VmState::Running && running {
            self.power_off(now);
        }
    }

    /// What the worker would cache now.
    fn observe(&self, now: DateTime<Utc>) -> ObservedStatus {
        if !self.is_paid() {
            return ObservedStatus::default();
        }
        match self.state {
            VmState::Creating => ObservedStatus {
                state: VmState::Creating,
                ..ObservedStatus::default()
            },
            VmState::Running => self.observe_running(now),
            state => ObservedStatus {
                timestamp: now.timestamp(),
                state,
                ..ObservedStatus::default()
            },
        }
    }

    fn observe_running(&self, now: DateTime<Utc>) -> ObservedStatus {
        let t = now.timestamp();
        let s = self.usage_at(t);
        let uptime = self
            .current_boot()
            .map_or(0, |b| (now - b).num_seconds().max(0) as u64);
        let since_boot = |rate: f64| (rate * uptime as f64) as u64;
        ObservedStatus {
            timestamp: t,
            state: VmState::Running,
            cpu_usage: s.cpu as f32,
            mem_usage: s.memory as f32,
            uptime,
            net_in: since_boot(s.net_in),
            net_out: since_boot(s.net_out),
            disk_write: since_boot(s.disk_write),
            disk_read: since_boot(s.disk_read),
        }
    }

    /// The status the API shows.
    pub fn status(&self) -> ObservedStatus {
        if self.status_unavailable {
            return ObservedStatus::default();
        }
        self.observed.clone().unwrap_or_default()
    }
}

/// A saved payment method.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SavedPaymentMethod {
    pub id: u64,
    pub provider: String,
    pub name: Option<String>,
    pub created: DateTime<Utc>,
    pub is_default: bool,
    pub enabled: bool,
}

/// An account (created by the first authenticated call).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimUser {
    pub id: u64,
    pub pubkey: String,
    pub created: DateTime<Utc>,
    pub payment_methods: Vec<SavedPaymentMethod>,
}

/// Templates and images known to the simulator.
#[derive(Debug, Default)]
pub struct Catalogue {
    pub templates: Vec<Template>,
    pub images: Vec<Image>,
    pub regions: Vec<String>,
}

fn gib(n: u64) -> u64 {
    n << 30
}

/// A template on the default region with a one-interval plan.
#[allow(clippy::too_many_arguments)]
fn template(
    name: &str,
    cpu: u16,
    mem_gib: u64,
    disk_gib: u64,
    disk_type: &str,
    plan: &str,
    amount: u64,
    currency: &str,
    interval_type: IntervalType,
) -> Template {
    Template {
        id: 0,
        name: name.to_string(),
        cpu,
        memory: gib(mem_gib),
        disk_size: gib(disk_gib),
        disk_type: disk_type.into(),
        disk_interface: if disk_type == "hdd" { "sata" } else { "pcie" }.into(),
        region: "Loopback".into(),
        cost: CostPlan {
            name: plan.into(),
            amount,
            currency: currency.into(),
            interval_amount: 1,
            interval_type,
        },
    }
}

fn builtin_template(name: &str) -> Option<Template> {
    use IntervalType::{Day, Month};
    Some(match name {
        "Tiny BTC" => template(
            name,
            1,
            1,
            20,
            "ssd",
            "btc_tiny_monthly",
            10_000_000,
            "BTC",
            Month,
        ),
        "Daily BTC" => template(name, 1, 1, 20, "ssd", "btc_daily", 500_000, "BTC", Day),
        "Small EUR" => template(
            name,
            2,
            2,
            40,
            "ssd",
            "eur_small_monthly",
            400,
            "EUR",
            Month,
        ),
        "Medium EUR" => template(
            name,
            4,
            8,
            160,
            "ssd",
            "eur_medium_monthly",
            1_500,
            "EUR",
            Month,
        ),
        "Large USD" => template(
            name,
            8,
            16,
            320,
            "hdd",
            "usd_large_monthly",
            3_000,
            "USD",
            Month,
        ),
        _ => return None,
    })
}

const BUILTIN_TEMPLATES: [&str; 5] = [
    "Tiny BTC",
    "Daily BTC",
    "Small EUR",
    "Medium EUR",
    "Large USD",
];

impl Catalogue {
    fn new() -> Self {
        let mut c = Catalogue::default();
        for name in BUILTIN_TEMPLATES {
            if let Some(t) = builtin_template(name) {
                c.intern_template(t);
            }
        }
        c.intern_image(image_from_spec(&ImageSpec::default()));
        c.intern_image(image_from_spec(&ImageSpec {
            distribution: "ubuntu".into(),
            version: "24.04".into(),
            ..ImageSpec::default()
        }));
        c
    }

    /// The catalogue entry equal to `t` (ignoring id), added if new.
    fn intern_template(&mut self, mut t: Template) -> Template {
        if let Some(found) = self.templates.iter().find(|x| {
            Template {
                id: x.id,
                ..t.clone()
            } == **x
        }) {
            return found.clone();
        }
        t.id = self.templates.len() as u64 + 1;
        self.intern_region(&t.region);
        self.templates.push(t.clone());
        t
    }

    fn intern_image(&mut self, mut i: Image) -> Image {
        if let Some(found) = self.images.iter().find(|x| {
            Image {
                id: x.id,
                ..i.clone()
            } == **x
        }) {
            return found.clone();
        }
        i.id = self.images.len() as u64 + 1;
        self.images.push(i.clone());
        i
    }

    fn intern_region(&mut self, name: &str) {
        if !self.regions.iter().any(|r| r == name) {
            self.regions.push(name.to_string());
        }
    }

    pub fn region_id(&self, name: &str) -> u64 {
        self.regions
            .iter()
            .position(|r| r == name)
            .map_or(1, |i| i as u64 + 1)
    }

    fn resolve_template(&mut self, spec: &TemplateSpec) -> Template {
        let mut t = builtin_template(&spec.name).unwrap_or_else(|| custom_template(&spec.name));
        if let Some(v) = spec.cpu {
            t.cpu = v;
        }
        if let Some(v) = spec.memory {
            t.memory = v;
        }
        if let Some(v) = spec.disk {
            t.disk_size = v;
        }
        if let Some(v) = &spec.disk_type {
            t.disk_type = v.clone();
        }
        if let Some(v) = &spec.disk_interface {
            t.disk_interface = v.clone();
        }
        if let Some(v) = &spec.region {
            t.region = v.clone();
        }
        if let Some(c) = &spec.cost {
            t.cost = cost_from_spec(c, &t.name);
        }
        self.intern_template(t)
    }
}

/// A template not in the catalogue: Tiny BTC's shape under another name.
fn custom_template(name: &str) -> Template {
    let name = if name.is_empty() { "Custom" } else { name };
    template(
        name,
        1,
        1,
        20,
        "ssd",
        "custom_monthly",
        10_000_000,
        "BTC",
        IntervalType::Month,
    )
}

fn cost_from_spec(c: &CostPlanSpec, template_name: &str) -> CostPlan {
    CostPlan {
        name: c.name.clone().unwrap_or_else(|| {
            format!(
                "{}_{}",
                template_name.to_lowercase().replace(' ', "_"),
                c.currency.to_lowercase()
            )
        }),
        amount: c.amount,
        currency: c.currency.to_uppercase(),
        interval_amount: c.interval_amount.max(1),
        interval_type: c.interval_type,
    }
}

fn image_from_spec(spec: &ImageSpec) -> Image {
    let known = |d: &str, v: &str| spec.distribution.eq_ignore_ascii_case(d) && spec.version == v;
    let release = if known("debian", "12") {
        (2023, 6, 10)
    } else if known("ubuntu", "24.04") {
        (2024, 4, 25)
    } else {
        (2024, 1, 1)
    };
    Image {
        id: 0,
        distribution: spec.distribution.to_lowercase(),
        flavour: spec.flavour.clone(),
        version: spec.version.clone(),
        release_date: Utc
            .with_ymd_and_hms(release.0, release.1, release.2, 0, 0, 0)
            .single()
            .unwrap_or_default(),
        default_username: spec
            .default_username
            .clone()
            .or_else(|| Some(spec.distribution.to_lowercase())),
    }
}

/// Owner keys are stored as lowercase hex; a string that is not a key is kept as
/// given (lowercased), which makes its VMs unreachable rather than failing.
pub fn owner_key(s: &str) -> String {
    normalize_pubkey(s).unwrap_or_else(|_| s.trim().to_lowercase())
}

/// Truncates to whole seconds (the real server's database precision).
pub fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// A distinct loopback address per VM id: 127.1.x.y.
pub fn default_ipv4(id: u64) -> Ipv4Addr {
    let n = id.saturating_sub(1);
    let third = ((n / 254) % 256) as u8;
    let fourth = (n % 254 + 1) as u8;
    Ipv4Addr::new(127, 1, third, fourth)
}

/// Grace days before deletion, by subscription age at `now` (the real server's table,
/// listed under "Lifecycle" in docs/providers.md).
pub fn grace_days(created: DateTime<Utc>, now: DateTime<Utc>, delete_after: u16) -> u16 {
    let age = (now - created).num_days().max(0);
    match age {
        0..=1 => 1,
        2..=7 => 2,
        8..=28 => 7,
        29..=180 => 14,
        _ => delete_after,
    }
}

/// The whole in-memory state.
pub struct World {
    pub start: DateTime<Utc>,
    pub settings: SimSettings,
    pub catalogue: Catalogue,
    pub faults: FaultSet,
    pub blackout: Blackout,
    /// Every power-action request, oldest first (bounded).
    action_log: std::collections::VecDeque<SimAction>,
    users: BTreeMap<String, SimUser>,
    vms: BTreeMap<u64, SimVm>,
    next_vm_id: u64,
    next_history_id: u64,
    next_payment_method_id: u64,
    timeline: Vec<TimelineEvent>,
    timeline_next: usize,
    /// Signs the renewal invoices (see `sim::renewal`).
    pub lightning: super::lightning::LightningNode,
    /// The users' saved wallet fails every payment (`?method=nwc`, auto-renewal).
    pub saved_wallet_fails: bool,
    /// Invoice minting fails (a server without a working Lightning node answers every
    /// renew that needs a new invoice with the sanitized 500); see [`MintFailure`].
    pub mint_failure: Option<MintFailure>,
    /// Every firing of the server-side auto-renewal, oldest first.
    pub auto_renew_log: Vec<super::lightning::AutoRenewAttempt>,
    /// The whole second the last worker pass ran for, while nothing has changed since
    /// (`None` after any change): a pass is idempotent for a given second, so another
    /// one in the same second is skipped. Without this every request walked every VM,
    /// and a 100,000-VM simulator answered a handful of requests per second.
    pass_valid_at: Option<DateTime<Utc>>,
    /// The earliest `booting_until` as of the last pass (kept exact in between: only a
    /// change, which invalidates the pass, can set one).
    earliest_boot_end: Option<DateTime<Utc>>,
}

impl World {
    pub fn new(scenario: Scenario, start: DateTime<Utc>) -> Result<World, SimError> {
        let start = whole_seconds(start);
        let mut timeline = scenario.timeline;
        timeline.sort_by_key(|e| e.at);
        let mut world = World {
            start,
            settings: scenario.settings,
            catalogue: Catalogue::new(),
            faults: FaultSet::default(),
            blackout: Blackout::default(),
            action_log: std::collections::VecDeque::new(),
            users: BTreeMap::new(),
            vms: BTreeMap::new(),
            next_vm_id: 1,
            next_history_id: 1,
            next_payment_method_id: 1,
            timeline,
            timeline_next: 0,
            lightning: super::lightning::LightningNode::generate(),
            saved_wallet_fails: false,
            mint_failure: None,
            auto_renew_log: Vec::new(),
            pass_valid_at: None,
            earliest_boot_end: None,
        };
        for user in scenario.users {
            world.set_payment_methods(&user.pubkey, &user.payment_methods, start);
        }
        for vm in scenario.vms {
            let owner = vm.owner.clone();
            world.add_vm(&owner, vm, start);
        }
        world.tick(start);
        Ok(world)
    }

    /// Replaces a user's saved payment methods (creating the user if needed).
    pub fn set_payment_methods(
        &mut self,
        pubkey: &str,
        methods: &[PaymentMethodSpec],
        now: DateTime<Utc>,
    ) {
        let pubkey = owner_key(pubkey);
        let now = whole_seconds(now);
        self.mark_changed();
        let first_id = self.next_payment_method_id;
        self.next_payment_method_id += methods.len() as u64;
        let saved = methods
            .iter()
            .zip(first_id..)
            .map(|(m, id)| SavedPaymentMethod {
                id,
                provider: m.provider.clone(),
                name: m.name.clone(),
                created: now,
                is_default: m.is_default,
                enabled: m.enabled,
            })
            .collect();
        self.upsert_user(&pubkey, now);
        if let Some(u) = self.users.get_mut(&pubkey) {
            u.payment_methods = saved;
        }
    }

    /// Creates the account on first sight (every authenticated call does this).
    pub fn upsert_user(&mut self, pubkey: &str, now: DateTime<Utc>) -> &SimUser {
        let next_id = self.users.len() as u64 + 1;
        self.users
            .entry(pubkey.to_string())
            .or_insert_with(|| SimUser {
                id: next_id,
                pubkey: pubkey.to_string(),
                created: whole_seconds(now),
                payment_methods: Vec::new(),
            })
    }

    pub fn user(&self, pubkey: &str) -> Option<&SimUser> {
        self.users.get(pubkey)
    }

    /// Adds a VM for `owner` (hex or npub); relative times count from `now`.
    pub fn add_vm(&mut self, owner: &str, spec: VmSpec, now: DateTime<Utc>) -> u64 {
        let owner = owner_key(owner);
        let now = whole_seconds(now);
        self.mark_changed();
        self.upsert_user(&owner, now);
        let id = self.next_vm_id;
        self.next_vm_id += 1;
        let created = whole_seconds(before(now, spec.age));
        let template = self.catalogue.resolve_template(&spec.template);
        let image = self.catalogue.intern_image(image_from_spec(&spec.image));
        let mut vm = SimVm {
            id,
            owner,
            created,
            expires: spec.expires.map(|r| whole_seconds(r.resolve(now))),
            state: spec.state,
            template,
            image,
            ipv4: spec.ipv4.unwrap_or_else(|| default_ipv4(id)),
            reverse_dns: None,
            auto_renewal_enabled: spec.auto_renewal_enabled,
            usage: spec.usage,
            status_stale: spec.status_stale,
            status_unavailable: false,
            timeseries_error: spec.timeseries_error,
            memory_as_fraction: spec.memory_as_fraction,
            pending_payment: spec.pending_payment,
            listen_port: spec.listen_port,
            deleted: false,
            hung: false,
            stays_dead: false,
            needs_power_cycle: false,
            booting_until: None,
            action_failures: Vec::new(),
            subscription_active: spec.expires.is_some(),
            no_subscription: spec.no_subscription,
            run_intervals: Vec::new(),
            expired_handled: None,
            observed: None,
            actions: Vec::new(),
            history: Vec::new(),
            payments: Vec::new(),
            auto_renew_attempted: None,
        };
        if vm.state == VmState::Running {
            let boot = before(now, spec.uptime);
            vm.power_on(whole_seconds(boot.max(created)));
        }
        self.vms.insert(id, vm);
        self.record(id, "created", "owner", created);
        id
    }

    /// Every VM, deleted ones included, by id.
    /// Where running VMs should be listening right now (see `SimSettings::vm_listen_port`).
    pub fn listen_addrs(&self) -> Vec<(u64, std::net::SocketAddr)> {
        let default = self.settings.vm_listen_port;
        self.vms
            .values()
            .filter(|v| {
                v.state == VmState::Running && !v.deleted && !v.hung && v.booting_until.is_none()
            })
            .filter_map(|v| {
                let port = v.listen_port.or(default)?;
                Some((v.id, std::net::SocketAddr::from((v.ipv4, port))))
            })
            .collect()
    }

    pub fn all_vms(&self) -> impl Iterator<Item = &SimVm> {
        self.vms.values()
    }

    pub fn vm(&self, id: u64) -> Option<&SimVm> {
        self.vms.get(&id)
    }

    /// A VM to change. (Within a worker pass the mark is harmless: the pass records
    /// itself as valid when it ends.)
    pub fn vm_mut(&mut self, id: u64) -> Option<&mut SimVm> {
        self.mark_changed();
        self.vms.get_mut(&id)
    }

    /// The user's VMs that are not deleted, by id.
    pub fn user_vms(&self, owner: &str) -> impl Iterator<Item = &SimVm> {
        let owner = owner.to_string();
        self.vms
            .values()
            .filter(move |v| v.owner == owner && !v.deleted)
    }

    /// The user's subscriptions (one per VM, deleted VMs included), by id.
    pub fn user_subscriptions(&self, owner: &str) -> impl Iterator<Item = &SimVm> {
        let owner = owner.to_string();
        self.vms
            .values()
            .filter(move |v| v.owner == owner && !v.no_subscription)
    }

    /// Appends a history entry.
    pub fn record(&mut self, id: u64, action: &'static str, by: &'static str, at: DateTime<Utc>) {
        let hid = self.next_history_id;
        self.next_history_id += 1;
        if let Some(vm) = self.vms.get_mut(&id) {
            vm.history.push(HistoryEntry {
                id: hid,
                action_type: action,
                timestamp: whole_seconds(at),
                initiated_by: by,
                description: format!("VM {id} was {action}"),
            });
            if vm.history.len() > MAX_HISTORY {
                vm.history.remove(0);
            }
        }
    }

    /// Applies a client's power action. A start or restart boots the guest: its port
    /// stays closed for `settings.reboot_duration`, and whether it answers afterwards
    /// depends on `stays_dead` / `needs_power_cycle` (a boot from stopped is cold).
    pub fn power(&mut self, id: u64, action: PowerAction, precise_now: DateTime<Utc>) {
        self.mark_changed();
        let now = whole_seconds(precise_now);
        let boot_time = self.settings.reboot_duration;
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        match action {
            PowerAction::Start | PowerAction::Restart => {
                let cold = vm.current_boot().is_none();
                vm.state = VmState::Running;
                vm.power_on(now);
                vm.boot_guest(cold);
                vm.booting_until = pw::boot_end(precise_now, boot_time);
            }
            PowerAction::Stop => {
                vm.state = VmState::Stopped;
                vm.power_off(now);
                vm.booting_until = None;
            }
        }
        let kind = match action {
            PowerAction::Start => "started",
            PowerAction::Stop => "stopped",
            PowerAction::Restart => "restarted",
        };
        self.record(id, kind, "owner", now);
    }

    /// Records a power-action request with its answer: in the simulator-wide log, and
    /// on the VM unless the caller was refused it (403/404: not the owner's request).
    pub fn record_action(
        &mut self,
        vm_id: u64,
        action: PowerAction,
        at: DateTime<Utc>,
        status: u16,
    ) {
        let entry = SimAction {
            vm_id,
            action,
            at,
            status,
        };
        if status != 403 && status != 404 {
            if let Some(vm) = self.vms.get_mut(&vm_id) {
                vm.actions.push(entry.clone());
            }
        }
        if self.action_log.len() >= MAX_ACTION_LOG {
            self.action_log.pop_front();
        }
        self.action_log.push_back(entry);
    }

    /// Every power-action request, oldest first.
    pub fn action_log(&self) -> Vec<SimAction> {
        self.action_log.iter().cloned().collect()
    }

    pub fn clear_action_log(&mut self) {
        self.action_log.clear();
    }

    /// The earliest moment a booting VM comes up.
    pub fn next_boot_end(&self) -> Option<DateTime<Utc>> {
        self.vms.values().filter_map(|v| v.booting_until).min()
    }

    /// Soft-deletes a VM (history "deleted", subscription inactive).
    pub fn remove_vm(&mut self, id: u64, now: DateTime<Utc>) {
        self.mark_changed();
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        if vm.deleted {
            return;
        }
        vm.deleted = true;
        vm.state = VmState::Stopped;
        vm.power_off(now);
        vm.subscription_active = false;
        vm.auto_renewal_enabled = false;
        self.record(id, "deleted", "system", now);
    }

    /// VMs, users or settings were changed from outside the worker pass: the next
    /// `tick` runs a full pass even within the same second.
    pub fn mark_changed(&mut self) {
        self.pass_valid_at = None;
    }

    /// Advances the world to `now`: ended boots, due timeline events, then one worker
    /// pass (skipped when one already ran for this second and nothing changed since).
    pub fn tick(&mut self, now: DateTime<Utc>) {
        // Boots end on the precise clock: whole seconds would stretch a 1 s boot to 2.
        if self.pass_valid_at.is_none() || self.earliest_boot_end.is_some_and(|t| t <= now) {
            let mut ended = false;
            for vm in self.vms.values_mut() {
                if vm.booting_until.is_some_and(|t| t <= now) {
                    vm.booting_until = None;
                    ended = true;
                }
            }
            if ended {
                self.mark_changed();
            }
        }
        let now = whole_seconds(now);
        if self.apply_timeline(now) {
            self.mark_changed();
        }
        if self.pass_valid_at == Some(now) {
            return;
        }
        let ids: Vec<u64> = self.vms.keys().copied().collect();
        for id in ids {
            self.lifecycle(id, now);
            self.auto_renew(id, now);
        }
        self.earliest_boot_end = self.next_boot_end();
        self.pass_valid_at = Some(now);
    }

    /// Applies the timeline events due by `now`; true if there were any.
    fn apply_timeline(&mut self, now: DateTime<Utc>) -> bool {
        let mut applied = false;
        while let Some(ev) = self.timeline.get(self.timeline_next).cloned() {
            let due = after(self.start, ev.at);
            if due > now {
                break;
            }
            self.timeline_next += 1;
            self.apply_event(&ev, due);
            applied = true;
        }
        applied
    }

    fn apply_event(&mut self, ev: &TimelineEvent, at: DateTime<Utc>) {
        if let Some(vm) = ev.vm.and_then(|id| self.vms.get_mut(&id)) {
            if let Some(state) = ev.set_state {
                vm.state = state;
                vm.sync_power(at);
            }
            if let Some(expires) = ev.set_expires {
                vm.expires = Some(whole_seconds(expires.resolve(at)));
                vm.subscription_active = true;
            }
            if let Some(v) = ev.set_stale {
                vm.status_stale = v;
            }
            if let Some(v) = ev.set_timeseries_error {
                vm.timeseries_error = v;
            }
            if let Some(v) = ev.set_status_unavailable {
                vm.status_unavailable = v;
            }
        }
        if let Some(vm) = ev.vm.and_then(|id| self.vms.get_mut(&id)) {
            if ev.crash {
                vm.crash(at);
            }
            if let Some(v) = ev.hang {
                vm.set_hung(v);
            }
            if let Some(v) = ev.stays_dead {
                vm.set_stays_dead(v);
            }
            if let Some(v) = ev.needs_power_cycle {
                vm.set_needs_power_cycle(v);
            }
            if ev.clear_action_failures {
                vm.action_failures.clear();
            }
            if let Some(f) = &ev.fail_actions {
                pw::add_failure(&mut vm.action_failures, f.clone());
            }
        }
        if ev.remove {
            if let Some(id) = ev.vm {
                self.remove_vm(id, at);
            }
        }
        if ev.clear_faults {
            self.faults.clear();
        }
        if let Some(f) = &ev.add_fault {
            self.faults.add(f.clone());
        }
        if ev.end_blackout {
            self.blackout.end();
        }
        if let Some(len) = ev.blackout {
            self.blackout.start(at, len);
        }
        if let Some(d) = ev.reboot_duration {
            self.settings.reboot_duration = d;
        }
    }

    /// One worker pass over one VM.
    fn lifecycle(&mut self, id: u64, now: DateTime<Utc>) {
        let purge_after = chrono::Duration::from_std(self.settings.unpaid_purge_after)
            .unwrap_or(chrono::TimeDelta::MAX);
        let delete_after = self.settings.delete_after_days;
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        vm.sync_power(now);
        if vm.deleted {
            return;
        }
        let Some(expires) = vm.expires else {
            if !vm.pending_payment && now - vm.created >= purge_after {
                self.vms.remove(&id);
            } else {
                vm.observed = Some(ObservedStatus::default());
            }
            return;
        };
        let mut events = Vec::new();
        if now > expires && vm.expired_handled != Some(expires) {
            vm.expired_handled = Some(expires);
            vm.state = VmState::Stopped;
            vm.power_off(now);
            events.push("expired");
        }
        let grace = grace_days(vm.created, now, delete_after);
        let deadline = expires.checked_add_days(Days::new(u64::from(grace)));
        if deadline.is_some_and(|d| now > d) {
            events.push("deleted");
        }
        if !vm.status_stale || vm.observed.is_none() {
            vm.observed = Some(vm.observe(now));
        }
        for ev in events {
            if ev == "deleted" {
                self.remove_vm(id, now);
            } else {
                self.record(id, ev, "system", now);
            }
        }
    }
}

/// Seconds one interval adds, counted from `base` (calendar months for monthly plans).
pub fn interval_seconds(base: DateTime<Utc>, plan: &CostPlan) -> u64 {
    let n = plan.interval_amount;
    let next = match plan.interval_type {
        IntervalType::Day => base.checked_add_days(Days::new(n)),
        IntervalType::Month => u32::try_from(n)
            .ok()
            .and_then(|m| base.checked_add_months(Months::new(m))),
        IntervalType::Year => n
            .checked_mul(12)
            .and_then(|m| u32::try_from(m).ok())
            .and_then(|m| base.checked_add_months(Months::new(m))),
    }
    .unwrap_or(base);
    (next - base).num_seconds().max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::RelTime;

    fn owner() -> String {
        nostr::Keys::generate().public_key().to_hex()
    }

    /// A world starting 2026-01-01 00:00 UTC, with a fresh owner key.
    fn new_year_world() -> (DateTime<Utc>, String, World) {
        let start = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("t");
        let world = World::new(Scenario::default(), start).expect("world");
        (start, owner(), world)
    }

    #[test]
    fn grace_table() {
        let c = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("t");
        let d = |n| c + chrono::Duration::days(n);
        assert_eq!(grace_days(c, d(1), 3), 1);
        assert_eq!(grace_days(c, d(5), 3), 2);
        assert_eq!(grace_days(c, d(20), 3), 7);
        assert_eq!(grace_days(c, d(100), 3), 14);
        assert_eq!(grace_days(c, d(400), 3), 3);
    }

    #[test]
    fn expiry_stops_then_deletes() {
        let (start, o, mut w) = new_year_world();
        let id = w.add_vm(
            &o,
            VmSpec {
                owner: o.clone(),
                expires: Some(RelTime::Offset(3600)),
                age: std::time::Duration::from_secs(3 * 86_400),
                ..VmSpec::default()
            },
            start,
        );
        w.tick(start + chrono::Duration::hours(2));
        let vm = w.vm(id).expect("vm");
        assert_eq!(vm.state, VmState::Stopped);
        assert!(vm.history.iter().any(|h| h.action_type == "expired"));
        w.tick(start + chrono::Duration::days(3));
        assert!(w.vm(id).expect("vm").deleted);
    }

    #[test]
    fn a_pass_per_second_unless_something_changed() {
        let (start, o, mut w) = new_year_world();
        let id = w.add_vm(&o, VmSpec::default(), start);
        // The add invalidated the pass: the same second's tick observes the new VM.
        assert_eq!(w.pass_valid_at, None);
        w.tick(start);
        assert_eq!(w.pass_valid_at, Some(start));
        assert_eq!(w.vm(id).expect("vm").status().state, VmState::Running);
        // A change within the same second is seen by the next tick of that second.
        if let Some(vm) = w.vm_mut(id) {
            vm.state = VmState::Stopped;
        }
        assert_eq!(w.pass_valid_at, None);
        w.tick(start);
        assert_eq!(w.vm(id).expect("vm").status().state, VmState::Stopped);
        // A new second runs a pass of its own.
        let later = start + chrono::Duration::seconds(1);
        w.tick(later);
        assert_eq!(w.pass_valid_at, Some(later));
    }

    #[test]
    fn ipv4_distinct() {
        assert_ne!(default_ipv4(1), default_ipv4(255));
        assert_eq!(default_ipv4(1), Ipv4Addr::new(127, 1, 0, 1));
    }
}
