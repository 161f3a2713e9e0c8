//! Guards that stand between a firing rule and a provider call, and the calls themselves.
//!
//! The guards encode what must never be rebooted: a VM being provisioned, an expired VM
//! (a renewal problem), and a VM its owner may have stopped
//! (only `start` with `keep_running` touches a stopped VM). Nothing here ever deletes.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::rules::{Remedy, Rule};
use vpswatch_model::vm::{Vm, VmAction, VmState};
use vpswatch_providers::{Provider, ProviderError};

/// Why an action that was due was not sent. Each maps to an `actions_total` result.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// No write credential, or a read-only key.
    Disabled,
    /// The VM's state forbids the action.
    Guard(String),
    Cooldown {
        until: DateTime<Utc>,
    },
    Cap {
        count: usize,
    },
    Maintenance(String),
    Silenced(String),
    /// Deciding failed (journal, silence lookup): do nothing and tell someone.
    Error(String),
}

impl Skip {
    pub fn result(&self) -> &'static str {
        match self {
            Skip::Disabled => "skipped_disabled",
            Skip::Guard(_) => "skipped_guard",
            Skip::Cooldown { .. } => "skipped_cooldown",
            Skip::Cap { .. } => "skipped_cap",
            Skip::Maintenance(_) => "skipped_maintenance",
            Skip::Silenced(_) => "skipped_silenced",
            Skip::Error(_) => "skipped_error",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Skip::Disabled => "actions are disabled for this account (read-only credential)".into(),
            Skip::Guard(why) => why.clone(),
            Skip::Cooldown { until } => format!("cooling down until {}", until.to_rfc3339()),
            Skip::Cap { count } => format!("cap reached: {count} actions in the rule's window"),
            Skip::Maintenance(w) => format!("maintenance window {w:?} is active"),
            Skip::Silenced(s) => format!("silenced in Alertmanager ({s})"),
            Skip::Error(e) => format!("could not decide safely: {e}"),
        }
    }
}

/// Whether the VM's own state allows `remedy` under `rule`.
pub fn vm_guard(rule: &Rule, remedy: Remedy, vm: &Vm, now: DateTime<Utc>) -> Result<(), String> {
    if vm.state == VmState::Creating {
        return Err("the VM is being provisioned".into());
    }
    if let Some(expires) = vm.expires.filter(|e| *e <= now) {
        return Err(format!(
            "the VM expired at {} (a renewal problem, not a reboot problem)",
            expires.to_rfc3339()
        ));
    }
    // `deleting_on` is always set on LNVPS (expiry + grace): only a date already reached
    // means anything, and that implies expiry, handled above.
    match remedy {
        Remedy::Reboot | Remedy::StopStart if !vm.state.is_running() => Err(format!(
            "the VM is {}, not running: it may have been stopped by its owner",
            vm.state.label()
        )),
        Remedy::Start if vm.state != VmState::Stopped => {
            Err(format!("the VM is {}, not stopped", vm.state.label()))
        }
        Remedy::Start if !rule.keep_running => {
            Err("the rule does not say keep_running: the owner may have stopped it".into())
        }
        _ => Ok(()),
    }
}

/// How long a stop+start keeps retrying the start while the host finishes stopping.
const START_AFTER_STOP_ATTEMPTS: u32 = 6;
const START_AFTER_STOP_FIRST_DELAY: Duration = Duration::from_secs(2);

/// Sends the remedy. A stop+start retries the start with backoff, because providers
/// reject a start while the stop is still in progress.
pub async fn execute(
    provider: &dyn Provider,
    vm: &str,
    remedy: Remedy,
) -> Result<(), ProviderError> {
    match remedy {
        Remedy::Reboot => provider.act(vm, VmAction::Reboot).await,
        Remedy::Start => provider.act(vm, VmAction::Start).await,
        Remedy::StopStart => {
            provider.act(vm, VmAction::Stop).await?;
            let mut delay = START_AFTER_STOP_FIRST_DELAY;
            let mut attempt = 1;
            loop {
                tokio::time::sleep(delay).await;
                match provider.act(vm, VmAction::Start).await {
                    Ok(()) => return Ok(()),
                    Err(e) if attempt >= START_AFTER_STOP_ATTEMPTS => return Err(e),
                    Err(e) => {
                        tracing::info!(vm, error = %e, attempt, "start after stop refused; retrying");
                        attempt += 1;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
    }
}
