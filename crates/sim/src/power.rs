//! What the watchdog does to a simulated VM, and what can go wrong with it — shared by
//! both fake providers so the two behave alike:
//!
//! - [`boot`]: whether a guest answers after a start or restart. A `stays_dead` guest
//!   never does (the API still accepts every action); a `needs_power_cycle` guest ignores
//!   a restart (a reset of a wedged guest), but a start from powered-off fixes it. That
//!   is the escalation ladder reboot → stop+start the watchdog has to climb.
//! - [`ActionFailure`]: power actions answered with an error status, optionally only N
//!   times (a host that cannot reach the hypervisor, a provider-side outage).
//! - [`Blackout`]: the provider's whole API answers 503 while the VMs run on untouched.
//!   Connections are accepted and answered by the front proxy with 503, rather than
//!   refused: the providers sit behind reverse proxies that stay up when the API behind
//!   them does not (a refused connection would also take the `/_sim/` control API, which
//!   shares the port, down with it).
//! - [`BlackoutLength`], [`PowerAction`]: the small value types the scenario files,
//!   the control APIs and the handles share.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A power action a client asked for. StableVPS calls a restart `reboot`; both
/// spellings are accepted wherever one is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    Start,
    Stop,
    #[serde(alias = "reboot")]
    Restart,
}

impl PowerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::Start => "start",
            PowerAction::Stop => "stop",
            PowerAction::Restart => "restart",
        }
    }
}

/// Power actions answered with an error instead of being carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionFailure {
    /// Which actions fail; empty = every power action.
    pub actions: Vec<PowerAction>,
    /// The HTTP status answered (400–599), with the provider's own error body for it.
    pub status: u16,
    /// Failures left; `None` = until cleared.
    pub times: Option<u32>,
}

impl Default for ActionFailure {
    fn default() -> Self {
        Self {
            actions: Vec::new(),
            status: 500,
            times: None,
        }
    }
}

impl ActionFailure {
    /// Fails every power action with `status` until cleared.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    /// Only these actions fail.
    pub fn only(mut self, actions: &[PowerAction]) -> Self {
        self.actions = actions.to_vec();
        self
    }

    /// Fails `n` times, then actions work again.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// What is wrong with it, if anything (a status that is not an error).
    pub fn problem(&self) -> Option<String> {
        (!(400..=599).contains(&self.status)).then(|| {
            format!(
                "fail_actions.status {} is not an HTTP error status (400-599)",
                self.status
            )
        })
    }

    fn hits(&self, action: PowerAction) -> bool {
        self.actions.is_empty() || self.actions.contains(&action)
    }
}

/// Adds `failure` to a VM's list (a zero count adds nothing).
pub fn add_failure(list: &mut Vec<ActionFailure>, failure: ActionFailure) {
    if failure.times != Some(0) {
        list.push(failure);
    }
}

/// The status the first failure matching `action` answers with, counting one use of it.
pub fn take_failure(list: &mut Vec<ActionFailure>, action: PowerAction) -> Option<u16> {
    let idx = list.iter().position(|f| f.hits(action))?;
    let f = list.get_mut(idx)?;
    let status = f.status;
    if let Some(n) = f.times.as_mut() {
        *n = n.saturating_sub(1);
        if *n == 0 {
            list.remove(idx);
        }
    }
    Some(status)
}

/// Whether a guest that has just been (re)booted is hung afterwards. `cold` = it was
/// powered off before (a start, or a restart of a stopped VM); `needs_power_cycle` is
/// cleared by the cold boot that fixes it.
pub fn boot(cold: bool, stays_dead: bool, needs_power_cycle: &mut bool) -> bool {
    if stays_dead {
        return true;
    }
    if *needs_power_cycle {
        if !cold {
            return true;
        }
        *needs_power_cycle = false;
    }
    false
}

/// When a guest that boots at `now` answers again: `None` for a zero boot time.
pub fn boot_end(now: DateTime<Utc>, boot_time: Duration) -> Option<DateTime<Utc>> {
    if boot_time.is_zero() {
        return None;
    }
    let d = chrono::Duration::from_std(boot_time).unwrap_or(chrono::TimeDelta::MAX);
    Some(
        now.checked_add_signed(d)
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}

/// How long a blackout lasts: a duration (`"30s"`) or `"until_cleared"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlackoutLength {
    For(Duration),
    UntilCleared,
}

impl FromStr for BlackoutLength {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "until_cleared" {
            return Ok(BlackoutLength::UntilCleared);
        }
        humantime::parse_duration(s)
            .map(BlackoutLength::For)
            .map_err(|e| {
                format!(
                    "blackout `{s}` is neither a duration like \"30s\" nor \"until_cleared\": {e}"
                )
            })
    }
}

impl fmt::Display for BlackoutLength {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlackoutLength::For(d) => write!(f, "{}", humantime::format_duration(*d)),
            BlackoutLength::UntilCleared => f.write_str("until_cleared"),
        }
    }
}

impl Serialize for BlackoutLength {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BlackoutLength {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The API outage switch: off, on until a time, or on until cleared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Blackout {
    pub active: bool,
    /// When it ends by itself (simulator time); `None` while active = until cleared.
    pub until: Option<DateTime<Utc>>,
}

impl Blackout {
    pub fn start(&mut self, now: DateTime<Utc>, length: BlackoutLength) {
        self.active = true;
        self.until = match length {
            BlackoutLength::UntilCleared => None,
            BlackoutLength::For(d) => Some(
                chrono::Duration::from_std(d)
                    .ok()
                    .and_then(|d| now.checked_add_signed(d))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
            ),
        };
    }

    pub fn end(&mut self) {
        *self = Blackout::default();
    }

    /// Whether the API is out at `now`; a blackout whose time is up switches off.
    pub fn check(&mut self, now: DateTime<Utc>) -> bool {
        if self.active && self.until.is_some_and(|u| now >= u) {
            self.end();
        }
        self.active
    }
}

/// `POST /_sim/blackout` body (both control APIs): `{}` = until cleared.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlackoutRequest {
    pub duration: Option<BlackoutLength>,
}

impl BlackoutRequest {
    pub fn length(&self) -> BlackoutLength {
        self.duration.unwrap_or(BlackoutLength::UntilCleared)
    }
}

/// `POST /_sim/reboot-duration` body (both control APIs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebootDurationRequest {
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_down_and_match_actions() {
        let mut list = Vec::new();
        add_failure(
            &mut list,
            ActionFailure::status(502)
                .only(&[PowerAction::Restart])
                .times(2),
        );
        add_failure(&mut list, ActionFailure::status(500).times(0));
        assert_eq!(list.len(), 1, "a zero count adds nothing");
        assert_eq!(take_failure(&mut list, PowerAction::Start), None);
        assert_eq!(take_failure(&mut list, PowerAction::Restart), Some(502));
        assert_eq!(take_failure(&mut list, PowerAction::Restart), Some(502));
        assert_eq!(take_failure(&mut list, PowerAction::Restart), None);
        let f: ActionFailure =
            serde_json::from_str(r#"{"actions":["reboot","stop"],"status":503,"times":1}"#)
                .expect("json");
        assert_eq!(f.actions, [PowerAction::Restart, PowerAction::Stop]);
        assert!(ActionFailure::status(200).problem().is_some());
    }

    #[test]
    fn boot_outcomes() {
        let mut npc = false;
        assert!(!boot(false, false, &mut npc), "a healthy guest answers");
        assert!(boot(true, true, &mut npc), "stays dead through anything");
        npc = true;
        assert!(boot(false, false, &mut npc), "a warm reset does not help");
        assert!(npc);
        assert!(!boot(true, false, &mut npc), "a cold boot does");
        assert!(!npc, "and fixes it for good");
    }

    #[test]
    fn blackout_ends_by_itself_or_when_cleared() {
        let t = DateTime::<Utc>::UNIX_EPOCH;
        let mut b = Blackout::default();
        b.start(t, "30s".parse().expect("length"));
        assert!(b.check(t + chrono::Duration::seconds(29)));
        assert!(!b.check(t + chrono::Duration::seconds(30)));
        b.start(t, "until_cleared".parse().expect("length"));
        assert!(b.check(t + chrono::Duration::days(365)));
        b.end();
        assert!(!b.check(t));
        assert!("soon".parse::<BlackoutLength>().is_err());
    }
}
