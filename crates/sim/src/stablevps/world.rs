//! The simulated StableVPS world: accounts with wallets and keys, VPS services, the
//! provisioning → active transition, wallet-charged renewals at period end, the
//! per-VPS RDP listeners that make liveness probes real TCP, and the scripted trouble a
//! watchdog meets (timeline, crashes, hangs, boot time; see `sim::power`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use chrono::{DateTime, Months, Utc};
use rand::distr::{Alphanumeric, SampleString};
use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle as Runtime;
use tokio_util::sync::CancellationToken;

use super::scenario::{
    Crash, KeyScope, RenewalFailure, StableScenario, StableTimelineEvent, VpsSpec,
};
use crate::faults::FaultSet;
use crate::power::{self as pw, ActionFailure, Blackout, PowerAction};
use crate::scenario::after;

/// Plan prices in EUR: (monthly, yearly). None = unknown plan (never renews).
pub fn plan_price(plan_id: &str, billing_cycle: &str) -> Option<f64> {
    let (monthly, yearly) = match plan_id {
        "basic" => (12.49, 124.90),
        "prime" => (19.49, 194.90),
        "pro" => (34.49, 344.90),
        _ => return None,
    };
    match billing_cycle {
        "monthly" => Some(monthly),
        "yearly" => Some(yearly),
        _ => None,
    }
}

/// `t` moved on by one billing cycle (calendar month/year).
fn next_period(t: DateTime<Utc>, billing_cycle: &str) -> Option<DateTime<Utc>> {
    match billing_cycle {
        "monthly" => t.checked_add_months(Months::new(1)),
        "yearly" => t.checked_add_months(Months::new(12)),
        _ => None,
    }
}

fn prev_period(t: DateTime<Utc>, billing_cycle: &str) -> DateTime<Utc> {
    let back = match billing_cycle {
        "yearly" => t.checked_sub_months(Months::new(12)),
        _ => t.checked_sub_months(Months::new(1)),
    };
    back.unwrap_or(t)
}

/// Cents-exact EUR arithmetic on f64 major units.
pub fn round_eur(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// An account and its wallet.
#[derive(Debug, Clone, Serialize)]
pub struct SimAccount {
    pub id: String,
    pub balance: f64,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub referral_code: String,
    pub created_at: DateTime<Utc>,
}

/// An API key (the raw key is the map key in [`World`]).
#[derive(Debug, Clone)]
pub struct SimKey {
    pub id: String,
    pub account_id: String,
    pub raw: String,
    pub name: String,
    pub scope: KeyScope,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// One VPS service as the simulator holds it. Tests may change any field through
/// [`super::StableVpsSimHandle::update_vps`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimVps {
    /// Service id, 24 hex chars.
    pub id: String,
    pub account_id: String,
    /// Upstream server id (`vpsId` in action answers).
    pub server_id: String,
    pub plan_id: String,
    pub billing_cycle: String,
    pub status: String,
    pub vps_status: String,
    pub location: String,
    pub ip_address: Ipv4Addr,
    pub hostname: String,
    pub rdp_username: String,
    /// Random per VPS; served only by GET /api/v1/vps/:id.
    pub rdp_password: String,
    pub listen_rdp: bool,
    /// 0 until an ephemeral port has been bound.
    pub rdp_port: u16,
    pub hang: bool,
    /// Dead through reboots: actions are accepted, the machine never answers again.
    pub stays_dead: bool,
    /// A reboot leaves the machine hung; a start from stopped fixes it (and clears
    /// this flag).
    pub needs_power_cycle: bool,
    /// Booting after a start/reboot until then: its RDP port is closed meanwhile.
    pub booting_until: Option<DateTime<Utc>>,
    /// Injected power-action failures, first match wins.
    pub action_failures: Vec<ActionFailure>,
    /// When a `provisioning` machine becomes active.
    pub provisioning_until: Option<DateTime<Utc>>,
    pub current_period_start: DateTime<Utc>,
    pub current_period_end: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub deleted: bool,
    /// Fields `GET /api/v1/vps` leaves out of this VPS's entry (the per-VPS answer
    /// still has them): the list's completeness is an open question.
    pub list_omits: Vec<String>,
    /// Why the RDP listener could not be opened, if it could not.
    pub rdp_error: Option<String>,
}

impl SimVps {
    /// Where the RDP listener is (port 0 = not bound yet).
    pub fn rdp_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip_address, self.rdp_port))
    }

    fn wants_rdp(&self) -> bool {
        self.listen_rdp
            && !self.deleted
            && !self.hang
            && self.booting_until.is_none()
            && self.vps_status == "active"
    }

    /// Running, or on its way up.
    fn is_up(&self) -> bool {
        self.vps_status == "active" || self.booting_until.is_some()
    }

    /// The machine goes down by itself and the API reports `vps_status` (StableVPS
    /// documents no value for it; the simulator's default is `stopped`, what a stop
    /// shows, so — as with the real API — a crash cannot be told from a stop by state).
    pub fn crash(&mut self, vps_status: &str) {
        self.vps_status = vps_status.to_string();
        self.booting_until = None;
    }

    /// Hangs (or un-hangs) the machine; `vpsStatus` is left as it is.
    pub fn set_hang(&mut self, hang: bool) {
        self.hang = hang;
    }

    /// `true` also hangs the machine now: it is dead, and reboots will not help.
    pub fn set_stays_dead(&mut self, v: bool) {
        self.stays_dead = v;
        if v {
            self.hang = true;
        }
    }

    /// `true` also hangs the machine now: only a stop followed by a start fixes it.
    pub fn set_needs_power_cycle(&mut self, v: bool) {
        self.needs_power_cycle = v;
        if v {
            self.hang = true;
        }
    }

    /// Carries out an accepted power action. A start or reboot boots the machine: its
    /// port stays closed for `boot_time` (with `vpsStatus` = `booting_status`, if the
    /// scenario sets one), and whether it answers afterwards depends on `stays_dead` /
    /// `needs_power_cycle` (a boot from a machine that was down is cold).
    pub fn power(
        &mut self,
        action: PowerAction,
        now: DateTime<Utc>,
        boot_time: std::time::Duration,
        booting_status: Option<&str>,
    ) {
        match action {
            PowerAction::Stop => {
                self.vps_status = "stopped".into();
                self.booting_until = None;
            }
            PowerAction::Start | PowerAction::Restart => {
                let cold = !self.is_up();
                self.hang = pw::boot(cold, self.stays_dead, &mut self.needs_power_cycle);
                self.booting_until = pw::boot_end(now, boot_time);
                self.vps_status = match (self.booting_until, booting_status) {
                    (Some(_), Some(s)) => s.to_string(),
                    _ => "active".into(),
                };
            }
        }
    }
}

/// A write the API received (after authentication), for tests to assert on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimAction {
    pub at: DateTime<Utc>,
    pub account_id: String,
    /// None for a create that failed before a VPS existed.
    pub vps_id: Option<String>,
    /// `start`, `stop`, `reboot`, `delete`, `create`, or the bad action as sent.
    pub action: String,
    /// The status code answered.
    pub status: u16,
}

/// Everything behind the simulator's mutex.
pub struct World {
    pub accounts: Vec<SimAccount>,
    pub keys: Vec<SimKey>,
    pub vps: Vec<SimVps>,
    pub faults: FaultSet,
    pub actions: Vec<SimAction>,
    pub renewal_failure: RenewalFailure,
    pub blackout: Blackout,
    /// Boot time of starts and reboots.
    pub reboot_duration: std::time::Duration,
    /// `vpsStatus` while booting; `None` = stays `active`.
    pub booting_vps_status: Option<String>,
    start: DateTime<Utc>,
    timeline: Vec<StableTimelineEvent>,
    timeline_next: usize,
    /// Service ids of the scenario's VPSes, in file order (timeline targets).
    scenario_ids: Vec<String>,
    provisioning_delay: std::time::Duration,
    rdp_port: u16,
    seq: u64,
    listeners: HashMap<String, CancellationToken>,
    runtime: Runtime,
    shutdown: CancellationToken,
}

impl World {
    pub fn new(
        scenario: StableScenario,
        now: DateTime<Utc>,
        runtime: Runtime,
        shutdown: CancellationToken,
    ) -> World {
        let mut w = World {
            accounts: Vec::new(),
            keys: Vec::new(),
            vps: Vec::new(),
            faults: FaultSet::default(),
            actions: Vec::new(),
            renewal_failure: scenario.renewal_on_insufficient_balance,
            blackout: Blackout::default(),
            reboot_duration: scenario.reboot_duration,
            booting_vps_status: scenario.booting_vps_status,
            start: now,
            timeline: {
                let mut t = scenario.timeline;
                t.sort_by_key(|e| e.at);
                t
            },
            timeline_next: 0,
            scenario_ids: Vec::new(),
            provisioning_delay: scenario.provisioning_delay,
            rdp_port: scenario.rdp_port,
            seq: 0,
            listeners: HashMap::new(),
            runtime,
            shutdown,
        };
        for f in scenario.faults {
            w.faults.add(f);
        }
        for (i, a) in scenario.accounts.into_iter().enumerate() {
            let id = a.id.unwrap_or_else(|| format!("6630{:020x}", i + 1));
            for (k, key) in a.keys.into_iter().enumerate() {
                let key_id = w.next_id("664a");
                w.keys.push(SimKey {
                    id: key_id,
                    account_id: id.clone(),
                    raw: key.key,
                    name: key.name.unwrap_or_else(|| format!("Key {}", k + 1)),
                    scope: key.scope,
                    expires_at: key.expires_at.map(|t| t.resolve(now)),
                    last_used_at: None,
                    created_at: now,
                });
            }
            w.accounts.push(SimAccount {
                referral_code: format!("{}{}", a.first_name.to_uppercase(), 2026 + i),
                email: a
                    .email
                    .unwrap_or_else(|| format!("user{}@example.com", i + 1)),
                id,
                balance: round_eur(a.balance),
                first_name: a.first_name,
                last_name: a.last_name,
                created_at: now,
            });
        }
        for spec in scenario.vps {
            let account = spec.account.clone();
            let id = w.add_vps(&account, spec, now);
            w.scenario_ids.push(id);
        }
        w
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}{:020x}", self.seq)
    }

    /// The account id `account` names: an id, one of its keys, or an index.
    pub fn resolve_account(&self, account: &str) -> Option<String> {
        if let Some(a) = self.accounts.iter().find(|a| a.id == account) {
            return Some(a.id.clone());
        }
        if let Some(k) = self.keys.iter().find(|k| k.raw == account) {
            return Some(k.account_id.clone());
        }
        let i: usize = account.parse().ok()?;
        self.accounts.get(i).map(|a| a.id.clone())
    }

    pub fn account(&self, id: &str) -> Option<&SimAccount> {
        self.accounts.iter().find(|a| a.id == id)
    }

    pub fn account_mut(&mut self, id: &str) -> Option<&mut SimAccount> {
        self.accounts.iter_mut().find(|a| a.id == id)
    }

    /// Adds a VPS; an account that resolves to nothing is used as a literal account id
    /// (the VPS is then visible to no key). Returns the service id.
    pub fn add_vps(&mut self, account: &str, spec: VpsSpec, now: DateTime<Utc>) -> String {
        let account_id = self
            .resolve_account(account)
            .unwrap_or_else(|| account.to_string());
        let id = self.next_id("6641");
        let n = self.seq;
        let end = spec.current_period_end.resolve(now);
        let start = spec
            .current_period_start
            .map(|t| t.resolve(now))
            .unwrap_or_else(|| prev_period(end, &spec.billing_cycle));
        let created_at = spec.created_at.map(|t| t.resolve(now)).unwrap_or(start);
        let provisioning_until = (spec.vps_status == "provisioning").then(|| {
            after(
                now,
                spec.provisioning_for.unwrap_or(self.provisioning_delay),
            )
        });
        let first = self
            .account(&account_id)
            .map(|a| a.first_name.to_lowercase())
            .unwrap_or_else(|| "user".into());
        let vps = SimVps {
            server_id: format!("zomro-{}", 12_344 + n),
            hostname: format!("vps-{first}-{}", created_at.timestamp_millis()),
            rdp_password: Alphanumeric.sample_string(&mut rand::rng(), 16),
            ip_address: spec.ip_address.unwrap_or_else(|| default_ip(n)),
            rdp_port: spec.rdp_port.unwrap_or(self.rdp_port),
            id: id.clone(),
            account_id,
            plan_id: spec.plan_id,
            billing_cycle: spec.billing_cycle,
            status: spec.status,
            vps_status: spec.vps_status,
            location: spec.location,
            rdp_username: "Administrator".into(),
            listen_rdp: spec.listen_rdp,
            hang: spec.hang,
            stays_dead: false,
            needs_power_cycle: false,
            booting_until: None,
            action_failures: Vec::new(),
            provisioning_until,
            current_period_start: start,
            current_period_end: end,
            created_at,
            deleted: false,
            list_omits: spec.list_omits,
            rdp_error: None,
        };
        self.vps.push(vps);
        self.tick(now);
        id
    }

    pub fn vps(&self, id: &str) -> Option<&SimVps> {
        self.vps.iter().find(|v| v.id == id)
    }

    pub fn vps_mut(&mut self, id: &str) -> Option<&mut SimVps> {
        self.vps.iter_mut().find(|v| v.id == id)
    }

    /// A live VPS of `account_id` (404 otherwise).
    pub fn owned_vps_mut(&mut self, account_id: &str, id: &str) -> Option<&mut SimVps> {
        self.vps
            .iter_mut()
            .find(|v| v.id == id && v.account_id == account_id && !v.deleted)
    }

    /// Advances the world to `now`: timeline events, ended boots, provisioning,
    /// renewals, then the RDP listeners.
    pub fn tick(&mut self, now: DateTime<Utc>) {
        self.apply_timeline(now);
        let booting_status = self.booting_vps_status.as_deref();
        for v in &mut self.vps {
            if v.booting_until.is_some_and(|t| t <= now) {
                v.booting_until = None;
                if booting_status.is_some_and(|s| v.vps_status == s) {
                    v.vps_status = "active".into();
                }
            }
            finish_provisioning(v, now);
        }
        self.renew_due(now);
        self.reconcile_listeners();
    }

    /// The earliest moment a booting machine comes up.
    pub fn next_boot_end(&self) -> Option<DateTime<Utc>> {
        self.vps.iter().filter_map(|v| v.booting_until).min()
    }

    fn apply_timeline(&mut self, now: DateTime<Utc>) {
        while let Some(ev) = self.timeline.get(self.timeline_next).cloned() {
            let due = after(self.start, ev.at);
            if due > now {
                break;
            }
            self.timeline_next += 1;
            self.apply_event(&ev, due);
        }
    }

    /// Applies one timeline event, in the order its fields are declared.
    fn apply_event(&mut self, ev: &StableTimelineEvent, at: DateTime<Utc>) {
        let id = ev.vps.and_then(|i| self.scenario_ids.get(i).cloned());
        if let Some(v) = id.as_deref().and_then(|id| self.vps_mut(id)) {
            if let Some(s) = &ev.set_status {
                v.status = s.clone();
            }
            if let Some(s) = &ev.set_vps_status {
                v.vps_status = s.clone();
            }
            if let Some(s) = ev.crash.as_ref().and_then(Crash::vps_status) {
                v.crash(s);
            }
            if let Some(b) = ev.hang {
                v.set_hang(b);
            }
            if let Some(b) = ev.stays_dead {
                v.set_stays_dead(b);
            }
            if let Some(b) = ev.needs_power_cycle {
                v.set_needs_power_cycle(b);
            }
            if ev.clear_action_failures {
                v.action_failures.clear();
            }
            if let Some(f) = &ev.fail_actions {
                pw::add_failure(&mut v.action_failures, f.clone());
            }
            if ev.remove {
                v.deleted = true;
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
            self.reboot_duration = d;
        }
    }

    /// Charges every period that ended by `now`, across all services in due order (a
    /// clock jump over several renewals must charge them as a real wallet would have,
    /// earliest first); an unpaid one applies the scenario's failure state and stops
    /// renewing (only `active` services renew).
    fn renew_due(&mut self, now: DateTime<Utc>) {
        // Services whose renewal failed in this pass: a scripted failure state may keep
        // them "active", and they must not be charged again and again.
        let mut failed = std::collections::HashSet::new();
        // Bounded: a clock jump of centuries must not spin.
        for _ in 0..100_000 {
            let due = self
                .vps
                .iter()
                .enumerate()
                .filter(|(i, v)| {
                    !failed.contains(i)
                        && !v.deleted
                        && v.status == "active"
                        && v.current_period_end <= now
                        && plan_price(&v.plan_id, &v.billing_cycle).is_some()
                        && next_period(v.current_period_end, &v.billing_cycle).is_some()
                })
                .min_by_key(|(i, v)| (v.current_period_end, *i))
                .map(|(i, _)| i);
            match due {
                Some(i) => {
                    if !self.renew_once(i) {
                        failed.insert(i);
                    }
                }
                None => return,
            }
        }
    }

    /// Charges one period of service `i` (true), or applies the scenario's failure
    /// state when the wallet cannot pay (false).
    fn renew_once(&mut self, i: usize) -> bool {
        let Some(v) = self.vps.get(i) else {
            return false;
        };
        let (Some(price), Some(next)) = (
            plan_price(&v.plan_id, &v.billing_cycle),
            next_period(v.current_period_end, &v.billing_cycle),
        ) else {
            return false;
        };
        let account_id = v.account_id.clone();
        let failure = self.renewal_failure.clone();
        let paid = match self.account_mut(&account_id) {
            Some(a) if a.balance + 1e-9 >= price => {
                a.balance = round_eur(a.balance - price);
                true
            }
            _ => false,
        };
        let Some(v) = self.vps.get_mut(i) else {
            return false;
        };
        if paid {
            v.current_period_start = v.current_period_end;
            v.current_period_end = next;
        } else {
            v.status = failure.status;
            v.vps_status = failure.vps_status;
        }
        paid
    }

    /// Opens listeners for machines that should answer RDP and closes the rest.
    pub fn reconcile_listeners(&mut self) {
        let mut open = Vec::new();
        for v in &self.vps {
            let has = self.listeners.contains_key(&v.id);
            if v.wants_rdp() && !has {
                open.push(v.id.clone());
            } else if !v.wants_rdp() && has {
                if let Some(t) = self.listeners.remove(&v.id) {
                    t.cancel();
                }
            }
        }
        for id in open {
            self.open_listener(&id);
        }
    }

    fn open_listener(&mut self, id: &str) {
        let token = self.shutdown.child_token();
        let Some(v) = self.vps.iter_mut().find(|v| v.id == id) else {
            return;
        };
        let _guard = self.runtime.enter();
        let addr = v.rdp_addr();
        match bind_rdp(addr) {
            Ok(listener) => {
                if let Ok(local) = listener.local_addr() {
                    v.rdp_port = local.port();
                }
                v.rdp_error = None;
                self.runtime
                    .spawn(accept_loop(Some(listener), addr, token.clone()));
            }
            // A known port still held by the previous listener (closing
            // asynchronously): retry in the background.
            Err(_) if addr.port() != 0 => {
                self.runtime.spawn(accept_loop(None, addr, token.clone()));
            }
            Err(e) => {
                v.rdp_error = Some(format!("cannot listen on {addr}: {e}"));
                return;
            }
        }
        self.listeners.insert(id.to_string(), token);
    }

    /// Closes every RDP listener (shutdown).
    pub fn close_listeners(&mut self) {
        for (_, t) in self.listeners.drain() {
            t.cancel();
        }
    }
}

fn finish_provisioning(v: &mut SimVps, now: DateTime<Utc>) {
    if v.vps_status != "provisioning" {
        v.provisioning_until = None;
        return;
    }
    if v.provisioning_until.is_some_and(|t| t <= now) {
        v.vps_status = "active".into();
        if v.status == "provisioning" {
            v.status = "active".into();
        }
        v.provisioning_until = None;
    }
}

/// 127.2.x.y, distinct for every VPS number `n` (y never 0 or 255).
fn default_ip(n: u64) -> Ipv4Addr {
    let n = n.saturating_sub(1);
    let x = ((n / 254) % 256) as u8;
    let y = (n % 254) as u8 + 1;
    Ipv4Addr::new(127, 2, x, y)
}

fn bind_rdp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// Accepts and immediately drops connections until `token` is cancelled: a probe sees
/// a completed TCP handshake, nothing more.
async fn accept_loop(listener: Option<TcpListener>, addr: SocketAddr, token: CancellationToken) {
    let listener = match listener {
        Some(l) => l,
        None => match rebind(addr, &token).await {
            Some(l) => l,
            None => return,
        },
    };
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            r = listener.accept() => if r.is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            },
        }
    }
}

async fn rebind(addr: SocketAddr, token: &CancellationToken) -> Option<TcpListener> {
    for _ in 0..500 {
        if token.is_cancelled() {
            return None;
        }
        if let Ok(l) = bind_rdp(addr) {
            return Some(l);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tracing::warn!(%addr, "simulated RDP listener could not be reopened");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_and_periods() {
        assert_eq!(plan_price("prime", "monthly"), Some(19.49));
        assert_eq!(plan_price("pro", "yearly"), Some(344.90));
        assert_eq!(plan_price("mega", "monthly"), None);
        let t = DateTime::parse_from_rfc3339("2026-01-31T09:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let n = next_period(t, "monthly").expect("next");
        assert_eq!(n.to_rfc3339(), "2026-02-28T09:00:00+00:00");
        assert_eq!(default_ip(1), Ipv4Addr::new(127, 2, 0, 1));
        assert_eq!(default_ip(255), Ipv4Addr::new(127, 2, 1, 1));
        assert_eq!(round_eur(30.0 - 12.49), 17.51);
    }
}
