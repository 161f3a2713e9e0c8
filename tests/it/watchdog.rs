//! The watchdog end to end: a simulated LNVPS account whose VMs listen on loopback
//! addresses, real TCP probes, real provider calls, and the journal on disk. Each test
//! checks one guarantee of docs/watchdog.md. Time is scaled (probes every 100 ms, `for` under
//! a second) instead of slept through.

use crate::common::free_port;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{Exposition, Harness, RecordingNotifier};
use vpswatch::notify::{AlertStatus, Notify};
use vpswatch_model::clock::{Clock, ManualClock, SharedClock, SystemClock};
use vpswatch_sim::lnvps::{EndpointMatch, Fault, FaultKind, Scenario, VmSpec, VmState};

const T: Duration = Duration::from_secs(20);

/// A daemon with rules, its state directory and the simulator's VM port.
struct Wd {
    h: Harness,
    /// The config's global lines (state_dir, probes, rules), for a restart.
    globals: String,
    dir: tempfile::TempDir,
}

/// Rule text for a probe rule that reboots after two failed probes held 300 ms.
fn probe_rule(extra: &str) -> String {
    format!(
        r#"
[[rules]]
name = "ssh-dead"
condition = "probe_failing"
for = "300ms"
failures = 2
recoveries = 2
action = "reboot"
cooldown = "1h"
patience = "10s"
{extra}
"#
    )
}

impl Wd {
    /// `vms` VMs in the given states on 127.5.<subnet>.<n>, listening when running.
    async fn start(subnet: u8, states: &[VmState], rules: &str) -> Wd {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(
            dir,
            subnet,
            states,
            rules,
            Arc::new(SystemClock),
            Arc::new(RecordingNotifier::default()),
        )
        .await
    }

    /// Starts with a given state directory, clock and notifier.
    async fn start_in(
        dir: tempfile::TempDir,
        subnet: u8,
        states: &[VmState],
        rules: &str,
        clock: SharedClock,
        notifier: Arc<dyn Notify>,
    ) -> Wd {
        let port = free_port();
        let globals = format!(
            "state_dir = {:?}\n[probes]\ninterval = \"100ms\"\ntimeout = \"300ms\"\n[probes.ports]\nlnvps = {port}\n{rules}\n",
            dir.path().display().to_string()
        );
        let states = states.to_vec();
        let h = Harness::start_notifying(
            move |owner| {
                let vms = states
                    .iter()
                    .enumerate()
                    .map(|(i, state)| VmSpec {
                        owner: owner.to_string(),
                        state: *state,
                        ipv4: Some(Ipv4Addr::new(127, 5, subnet, i as u8 + 1)),
                        ..VmSpec::default()
                    })
                    .collect();
                let mut s = Scenario {
                    vms,
                    ..Scenario::default()
                };
                s.settings.vm_listen_port = Some(port);
                s
            },
            &globals,
            clock,
            notifier,
        )
        .await;
        Wd { h, globals, dir }
    }

    /// One running VM on 127.5.<subnet>.1, a fresh state directory, the real clock;
    /// returns once the VM answers its probe.
    async fn one_vm(subnet: u8, rules: &str, notifier: Arc<dyn Notify>) -> Wd {
        let wd = Self::start_in(
            tempfile::tempdir().expect("tempdir"),
            subnet,
            &[VmState::Running],
            rules,
            Arc::new(SystemClock),
            notifier,
        )
        .await;
        wd.h.wait_metrics("VM answers", T, |e| {
            e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
        })
        .await;
        wd
    }

    /// Power actions the simulator received for a VM (`restart`, `start`, `stop`).
    fn calls(&self, vm: u64, verb: &str) -> usize {
        self.h
            .sim
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.vm_id == Some(vm) && r.path.ends_with(verb))
            .count()
    }

    /// Waits until the watchdog has evaluated again well after `since` (proof that it
    /// looked and decided, for "nothing happened" assertions).
    async fn evaluated_after(&self, since: f64) -> Exposition {
        self.h
            .wait_metrics("a later watchdog evaluation", T, |e| {
                e.get("vpswatch_watchdog_last_evaluation_timestamp_seconds", &[])
                    .is_some_and(|t| t > since)
            })
            .await
    }

    /// Hangs VM 1's guest and waits until one action on it failed and a later one
    /// brought it back.
    async fn hang_until_failed_once_then_recovered(&self) -> Exposition {
        self.h.sim.set_hung(1, true);
        self.h
            .wait_metrics("failed once, then rebooted and recovered", T, |e| {
                actions(e, "1", "failed") == 1.0
                    && e.get(
                        "vpswatch_action_outcomes_total",
                        &[("vm", "1"), ("outcome", "recovered")],
                    ) == Some(1.0)
            })
            .await
    }

    fn now() -> f64 {
        vpswatch_model::clock::unix_seconds(chrono::Utc::now())
    }
}

fn actions(e: &Exposition, vm: &str, result: &str) -> f64 {
    e.samples
        .iter()
        .filter(|(n, l, _)| {
            n == "vpswatch_actions_total"
                && l.iter().any(|(k, v)| k == "vm" && v == vm)
                && l.iter().any(|(k, v)| k == "result" && v == result)
        })
        .map(|s| s.2)
        .sum()
}

#[tokio::test]
async fn hung_vm_is_rebooted_exactly_once_and_recovery_is_observed() {
    let wd = Wd::start(1, &[VmState::Running, VmState::Running], &probe_rule("")).await;
    wd.h.wait_metrics("both VMs answer", T, |e| {
        e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
            && e.get("vps_probe_success", &[("vm", "2")]) == Some(1.0)
    })
    .await;
    assert_eq!(wd.calls(1, "/restart"), 0);

    wd.h.sim.update_vm(1, |v| v.hung = true);
    let exp =
        wd.h.wait_metrics("reboot sent and recovery observed", T, |e| {
            e.get(
                "vpswatch_action_outcomes_total",
                &[("vm", "1"), ("outcome", "recovered")],
            ) == Some(1.0)
        })
        .await;
    assert_eq!(actions(&exp, "1", "ok"), 1.0);
    assert_eq!(
        exp.get("vpswatch_rule_firing", &[("rule", "ssh-dead"), ("vm", "1")]),
        Some(0.0),
        "resolved after recovery"
    );
    assert!(exp.has(
        "vpswatch_last_action_timestamp_seconds",
        &[("vm", "1"), ("action", "reboot")]
    ));

    // Well after the recovery: still exactly one restart, none for the healthy VM.
    let later = wd.evaluated_after(Wd::now() + 1.0).await;
    assert_eq!(wd.calls(1, "/restart"), 1, "exactly one reboot");
    assert_eq!(wd.calls(2, "/restart"), 0);
    assert_eq!(actions(&later, "2", "ok"), 0.0);
    assert_eq!(later.get("vpswatch_rule_firing", &[("vm", "1")]), Some(0.0));

    // The journal says the same, with the outcome.
    let text =
        wd.h.http
            .get(wd.h.url("/api/v1/actions"))
            .send()
            .await
            .expect("api")
            .text()
            .await
            .expect("body");
    let body: serde_json::Value = serde_json::from_str(&text).expect("json");
    let list = body["actions"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["vm"], "1");
    assert_eq!(list[0]["action"], "reboot");
    assert_eq!(list[0]["status"], "ok");
    assert_eq!(list[0]["outcome"], "recovered");
    assert_eq!(list[0]["dry_run"], false);
    wd.h.shutdown().await;
}

#[tokio::test]
async fn counters_reset_after_recovery_so_a_second_hang_is_handled_afresh() {
    // Short cooldown: a second, separate hang later gets its own single reboot.
    let wd = Wd::start(
        2,
        &[VmState::Running],
        &probe_rule("").replace("cooldown = \"1h\"", "cooldown = \"1s\""),
    )
    .await;
    wd.h.wait_metrics("VM answers", T, |e| {
        e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
    })
    .await;
    for round in 1..=2u32 {
        wd.h.sim.update_vm(1, |v| v.hung = true);
        wd.h.wait_metrics("recovered", T, |e| {
            e.get(
                "vpswatch_action_outcomes_total",
                &[("vm", "1"), ("outcome", "recovered")],
            ) == Some(f64::from(round))
        })
        .await;
        assert_eq!(wd.calls(1, "/restart"), round as usize);
        // Let the cooldown pass before the next hang.
        let t = Wd::now() + 1.2;
        wd.evaluated_after(t).await;
    }
    wd.h.shutdown().await;
}

#[tokio::test]
async fn provisioning_expired_and_owner_stopped_vms_are_never_rebooted() {
    let rules = r#"
[[rules]]
name = "ssh-dead"
condition = "probe_failing"
failures = 1
action = "reboot"
cooldown = "1s"
patience = "1s"
[[rules]]
name = "down"
condition = "vm_not_running"
failures = 1
"#;
    let wd = Wd::start(
        3,
        &[VmState::Creating, VmState::Running, VmState::Stopped],
        rules,
    )
    .await;
    // VM 2 is running but expired (a renewal problem; the provider's worker has not
    // stopped it yet) and its port is dead too.
    wd.h.sim.update_vm(2, |v| {
        let expired = chrono::Utc::now() - chrono::Duration::hours(1);
        v.hung = true;
        v.expires = Some(expired);
        v.expired_handled = Some(expired);
    });
    let exp =
        wd.h.wait_metrics("the expired VM's reboot is refused by the guard", T, |e| {
            actions(e, "2", "skipped_guard") >= 2.0
        })
        .await;
    // The owner-stopped VM fires the alert-only rule, and nothing acts on it.
    let exp2 =
        wd.h.wait_metrics("stopped VM alert fires", T, |e| {
            e.get("vpswatch_rule_firing", &[("rule", "down"), ("vm", "3")]) == Some(1.0)
        })
        .await;
    for vm in [1, 2, 3] {
        for verb in ["/restart", "/start", "/stop"] {
            assert_eq!(wd.calls(vm, verb), 0, "vm {vm} {verb}");
        }
    }
    assert_eq!(actions(&exp, "2", "ok"), 0.0);
    // The VM being provisioned is not even probed, so the probe rule cannot judge it.
    assert_eq!(
        exp2.get(
            "vpswatch_rule_unknown",
            &[("rule", "ssh-dead"), ("vm", "1")]
        ),
        Some(1.0)
    );
    wd.h.shutdown().await;
}

#[tokio::test]
async fn provider_blackout_with_every_probe_failing_acts_never_and_alerts_once() {
    // Ten minutes of scenario time on a clock the test moves.
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let notes = Arc::new(RecordingNotifier::default());
    let rules = format!(
        "staleness = 0\n{}\n[[rules]]\nname = \"api-down\"\ncondition = \"provider_unreachable\"\nfailures = 1\n",
        probe_rule("").replace("for = \"300ms\"", "for = \"30s\"")
    )
    .replace("staleness = 0\n", "");
    let wd = Wd::start_in(
        tempfile::tempdir().expect("tempdir"),
        4,
        &[VmState::Running, VmState::Running, VmState::Running],
        &rules,
        clock.clone(),
        notes.clone(),
    )
    .await;
    wd.h.wait_metrics("all VMs answer", T, |e| {
        (1..=3).all(|vm| e.get("vps_probe_success", &[("vm", &vm.to_string())]) == Some(1.0))
    })
    .await;

    // The provider's API goes dark, then every VM stops answering too.
    wd.h.sim
        .inject_fault(Fault::new(EndpointMatch::Any, FaultKind::Status(503)));
    wd.h.wait_metrics("polls failing", T, |e| {
        e.get("vpswatch_provider_up", &[]) == Some(0.0)
    })
    .await;
    for vm in 1..=3 {
        wd.h.sim.update_vm(vm, |v| v.hung = true);
    }
    wd.h.wait_metrics("probes failing", T, |e| {
        (1..=3).all(|vm| e.get("vps_probe_success", &[("vm", &vm.to_string())]) == Some(0.0))
    })
    .await;
    // 10 minutes in 10-second steps, each step seen by probes and polls.
    for _ in 0..60 {
        clock.advance(chrono::Duration::seconds(10));
        let at = vpswatch_model::clock::unix_seconds(clock.now());
        wd.evaluated_after(at - 0.001).await;
    }
    let exp =
        wd.h.wait_metrics("provider-down alert firing", T, |e| {
            e.get("vpswatch_rule_firing", &[("rule", "api-down")]) == Some(1.0)
        })
        .await;
    for vm in 1..=3u64 {
        assert_eq!(
            exp.get(
                "vpswatch_rule_unknown",
                &[("rule", "ssh-dead"), ("vm", &vm.to_string())]
            ),
            Some(1.0),
            "vm {vm} must be unknown, not failing"
        );
        for verb in ["/restart", "/start", "/stop"] {
            assert_eq!(wd.calls(vm, verb), 0, "vm {vm} {verb} during the blackout");
        }
    }
    // The API comes back with the VMs healthy again.
    for vm in 1..=3 {
        wd.h.sim.update_vm(vm, |v| v.hung = false);
    }
    wd.h.sim.clear_faults();
    // Scenario time goes on while the recovery is confirmed (two good polls).
    let mut resolved = false;
    for _ in 0..100 {
        clock.advance(chrono::Duration::seconds(5));
        let at = vpswatch_model::clock::unix_seconds(clock.now());
        let e = wd.evaluated_after(at - 0.001).await;
        if e.get("vpswatch_rule_firing", &[("rule", "api-down")]) == Some(0.0) {
            resolved = true;
            break;
        }
    }
    assert!(
        resolved,
        "provider-down alert resolves once the API answers"
    );
    let log = notes.alert_log();
    let api: Vec<_> = log.iter().filter(|(r, _, _)| r == "api-down").collect();
    assert_eq!(
        api.iter().map(|(_, _, s)| *s).collect::<Vec<_>>(),
        vec![AlertStatus::Firing, AlertStatus::Resolved],
        "one provider-down alert, then its resolution: {log:?}"
    );
    assert!(
        log.iter().all(|(r, _, _)| r != "ssh-dead"),
        "no per-VM alert storm: {log:?}"
    );
    assert!(notes.event_kinds().is_empty(), "{:?}", notes.event_kinds());
    for vm in 1..=3u64 {
        assert_eq!(wd.calls(vm, "/restart"), 0);
    }
    wd.h.shutdown().await;
}

#[tokio::test]
async fn dry_run_writes_the_journal_but_never_calls_the_provider() {
    let rules = format!(
        "[watchdog]\ndry_run = true\n{}",
        probe_rule("").replace("patience = \"10s\"", "patience = \"1h\"")
    );
    let notes = Arc::new(RecordingNotifier::default());
    let wd = Wd::one_vm(5, &rules, notes.clone()).await;
    wd.h.sim.update_vm(1, |v| v.hung = true);
    let exp =
        wd.h.wait_metrics("dry-run action counted", T, |e| {
            actions(e, "1", "dry_run") == 1.0
        })
        .await;
    assert_eq!(exp.get("vpswatch_watchdog_dry_run", &[]), Some(1.0));
    assert_eq!(actions(&exp, "1", "ok"), 0.0);
    // Still hung (nothing was sent), and the rule keeps waiting out its patience.
    wd.evaluated_after(Wd::now() + 0.5).await;
    let writes =
        wd.h.sim
            .requests()
            .iter()
            .filter(|r| r.method != "GET")
            .count();
    assert_eq!(writes, 0, "no provider write in dry-run");
    let text =
        wd.h.http
            .get(wd.h.url("/api/v1/actions"))
            .send()
            .await
            .expect("api")
            .text()
            .await
            .expect("body");
    let body: serde_json::Value = serde_json::from_str(&text).expect("json");
    let list = body["actions"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "{body}");
    assert_eq!(list[0]["status"], "dry_run");
    assert_eq!(list[0]["dry_run"], true);
    assert_eq!(list[0]["action"], "reboot");
    assert_eq!(list[0]["rule"], "ssh-dead");
    assert_eq!(list[0]["vm"], "1");
    assert!(
        notes
            .event_kinds()
            .contains(&("1".to_string(), "action_taken")),
        "the dry-run action is reported"
    );
    wd.h.shutdown().await;
}

#[tokio::test]
async fn a_restart_mid_cooldown_sends_no_extra_action() {
    let dir = tempfile::tempdir().expect("tempdir");
    // After the reboot the VM hangs again; the next rung (stop+start) is due after a short
    // patience but the one-hour cooldown holds it back, across the restart too.
    let rules = probe_rule("escalate = [\"stop_start\"]")
        .replace("patience = \"10s\"", "patience = \"500ms\"");
    let wd = Wd::start_in(
        dir,
        6,
        &[VmState::Running],
        &rules,
        Arc::new(SystemClock),
        Arc::new(RecordingNotifier::default()),
    )
    .await;
    wd.h.wait_metrics("VM answers", T, |e| {
        e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
    })
    .await;
    wd.h.sim.update_vm(1, |v| v.hung = true);
    crate::common::wait_for("the reboot", T, || async { wd.calls(1, "/restart") == 1 }).await;
    wd.h.sim.update_vm(1, |v| v.hung = true);
    wd.h.wait_metrics("next rung held back by the cooldown", T, |e| {
        actions(e, "1", "skipped_cooldown") >= 1.0
    })
    .await;

    // Restart the daemon on the same state directory (the simulator stays).
    let Wd { h, globals, dir } = wd;
    let sim = h.sim.clone();
    h.daemon.shutdown().await;
    let secret = h.keys.secret_key().to_secret_hex();
    let config = vpswatch::config::parse(
        &crate::common::config_text(&sim.base_url(), &globals),
        "test",
        &|n| (n == "TEST_NSEC").then(|| secret.clone()),
    )
    .expect("config valid");
    let daemon = vpswatch::daemon::Daemon::start(config, Arc::new(SystemClock))
        .await
        .expect("daemon restarts");
    let h2 = Harness {
        sim: sim.clone(),
        daemon,
        keys: h.keys.clone(),
        http: reqwest::Client::new(),
    };
    h2.wait_metrics("restored: firing, and the cooldown still holds", T, |e| {
        e.get("vpswatch_rule_firing", &[("vm", "1")]) == Some(1.0)
            && actions(e, "1", "skipped_cooldown") >= 2.0
    })
    .await;
    assert_eq!(sim.vm(1).map(|v| v.hung), Some(true), "still dead");
    let total: usize = ["/restart", "/stop", "/start"]
        .iter()
        .map(|v| {
            sim.requests()
                .iter()
                .filter(|r| r.method == "PATCH" && r.vm_id == Some(1) && r.path.ends_with(v))
                .count()
        })
        .sum();
    assert_eq!(total, 1, "no extra action after the restart");
    h2.shutdown().await;
    drop(dir);
}

#[tokio::test]
async fn a_vm_dead_through_reboots_climbs_the_ladder_then_gives_up_without_looping() {
    let notes = Arc::new(RecordingNotifier::default());
    let rules = probe_rule("escalate = [\"stop_start\"]\nmax_actions = 5")
        .replace("cooldown = \"1h\"", "cooldown = \"300ms\"")
        .replace("patience = \"10s\"", "patience = \"1500ms\"");
    let wd = Wd::one_vm(7, &rules, notes.clone()).await;
    // Hung, and no reboot or power cycle brings it back.
    wd.h.sim.set_stays_dead(1, true);
    wd.h.sim.set_hung(1, true);
    let exp =
        wd.h.wait_metrics("ladder exhausted: gave up", Duration::from_secs(40), |e| {
            actions(e, "1", "gave_up") == 1.0
        })
        .await;
    assert_eq!(actions(&exp, "1", "ok"), 2.0, "reboot, then stop+start");
    assert_eq!(wd.calls(1, "/restart"), 1);
    assert_eq!(wd.calls(1, "/stop"), 1);
    assert_eq!(wd.calls(1, "/start"), 1);
    assert_eq!(
        exp.get(
            "vpswatch_action_outcomes_total",
            &[
                ("vm", "1"),
                ("action", "reboot"),
                ("outcome", "not_recovered")
            ]
        ),
        Some(1.0)
    );
    // Well past cooldown and patience: still nothing more, still firing.
    let later = wd.evaluated_after(Wd::now() + 3.0).await;
    assert_eq!(
        wd.calls(1, "/restart") + wd.calls(1, "/stop") + wd.calls(1, "/start"),
        3
    );
    assert_eq!(actions(&later, "1", "gave_up"), 1.0, "gave up once");
    assert_eq!(later.get("vpswatch_rule_firing", &[("vm", "1")]), Some(1.0));
    let kinds = notes.event_kinds();
    assert_eq!(
        kinds.iter().filter(|(_, k)| *k == "gave_up").count(),
        1,
        "a human is told once: {kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|(_, k)| *k == "action_taken").count(),
        2
    );

    // Once it is seen healthy again the rule resolves and the ladder starts afresh.
    wd.h.sim.set_stays_dead(1, false);
    wd.h.sim.set_hung(1, false);
    wd.h.wait_metrics("recovered by hand", T, |e| {
        e.get("vpswatch_rule_firing", &[("vm", "1")]) == Some(0.0)
    })
    .await;
    wd.h.shutdown().await;
}

#[tokio::test]
async fn the_cap_stops_actions_and_escalates() {
    let notes = Arc::new(RecordingNotifier::default());
    // A long ladder of reboots, but at most two per window.
    let rules = probe_rule("escalate = [\"reboot\", \"reboot\", \"reboot\"]\nmax_actions = 2")
        .replace("cooldown = \"1h\"", "cooldown = \"300ms\"")
        .replace("patience = \"10s\"", "patience = \"1s\"");
    let wd = Wd::one_vm(8, &rules, notes.clone()).await;
    wd.h.sim.set_stays_dead(1, true);
    wd.h.sim.set_hung(1, true);
    let exp =
        wd.h.wait_metrics("cap reached", Duration::from_secs(40), |e| {
            actions(e, "1", "skipped_cap") >= 1.0 && actions(e, "1", "gave_up") == 1.0
        })
        .await;
    assert_eq!(actions(&exp, "1", "ok"), 2.0);
    wd.evaluated_after(Wd::now() + 2.0).await;
    assert_eq!(wd.calls(1, "/restart"), 2, "never more than the cap");
    assert!(notes.event_kinds().contains(&("1".to_string(), "gave_up")));
    wd.h.shutdown().await;
}

#[tokio::test]
async fn a_maintenance_window_holds_actions_back_and_counts_the_skip() {
    // A window open all day, every day, for VMs named vm-1 only.
    let rules = format!(
        "{}\n[[maintenance]]\nname = \"patching\"\nstart = \"00:00\"\nend = \"24:00\"\ntimezone = \"Europe/Berlin\"\n[maintenance.match]\nnames = [\"vm-1\"]\n",
        probe_rule("").replace("cooldown = \"1h\"", "cooldown = \"1s\"")
    );
    let wd = Wd::start(9, &[VmState::Running, VmState::Running], &rules).await;
    wd.h.wait_metrics("VMs answer", T, |e| {
        e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
            && e.get("vps_probe_success", &[("vm", "2")]) == Some(1.0)
    })
    .await;
    wd.h.sim.set_hung(1, true);
    wd.h.sim.set_hung(2, true);
    let exp =
        wd.h.wait_metrics("vm 1 skipped, vm 2 healed", T, |e| {
            actions(e, "1", "skipped_maintenance") >= 2.0 && actions(e, "2", "ok") == 1.0
        })
        .await;
    assert_eq!(actions(&exp, "1", "ok"), 0.0);
    assert_eq!(wd.calls(1, "/restart"), 0, "inside the window: no action");
    assert_eq!(wd.calls(2, "/restart"), 1, "outside the window: healed");
    wd.h.shutdown().await;
}

#[tokio::test]
async fn a_matching_alertmanager_silence_holds_actions_back_until_it_ends() {
    let am = crate::common::alertmanager::Alertmanager::start().await;
    let rules = format!(
        "[watchdog]\nalertmanager_url = \"{}\"\nsilence_refresh = \"100ms\"\n{}",
        am.url,
        probe_rule("").replace("cooldown = \"1h\"", "cooldown = \"1s\"")
    );
    let wd = Wd::start(10, &[VmState::Running], &rules).await;
    wd.h.wait_metrics("VM answers", T, |e| {
        e.get("vps_probe_success", &[("vm", "1")]) == Some(1.0)
    })
    .await;
    let now = chrono::Utc::now();
    let eq = |n: &str, v: &str| serde_json::json!({"name": n, "value": v, "isRegex": false, "isEqual": true});
    let id = am
        .silence(
            serde_json::json!([
                eq("provider", "lnvps"),
                eq("account", "main"),
                eq("vm", "1")
            ]),
            now - chrono::Duration::minutes(1),
            now + chrono::Duration::hours(1),
            "kernel upgrade on vm 1",
        )
        .await;
    wd.h.sim.set_hung(1, true);
    let exp =
        wd.h.wait_metrics("the silence holds the reboot", T, |e| {
            actions(e, "1", "skipped_silenced") >= 2.0
        })
        .await;
    assert_eq!(actions(&exp, "1", "ok"), 0.0);
    assert_eq!(wd.calls(1, "/restart"), 0);
    // The operator ends the silence: the watchdog acts.
    am.expire(&id).await;
    wd.h.wait_metrics("rebooted once the silence ended", T, |e| {
        actions(e, "1", "ok") == 1.0
    })
    .await;
    assert_eq!(wd.calls(1, "/restart"), 1);
    wd.h.shutdown().await;
}

#[tokio::test]
async fn a_rule_can_probe_its_own_port() {
    // The account's default probe port (1) never answers; the rule watches the port the
    // VM's service really listens on, and only that one decides.
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let globals = format!(
        "state_dir = {:?}\n[probes]\ninterval = \"100ms\"\ntimeout = \"300ms\"\n[probes.ports]\nlnvps = 1\n{}",
        dir.path().display().to_string(),
        probe_rule(&format!("port = {port}"))
    );
    let h = Harness::start_with(
        move |owner| {
            let mut s = Scenario {
                vms: vec![VmSpec {
                    owner: owner.to_string(),
                    ipv4: Some(Ipv4Addr::new(127, 5, 11, 1)),
                    ..VmSpec::default()
                }],
                ..Scenario::default()
            };
            s.settings.vm_listen_port = Some(port);
            s
        },
        &globals,
        Arc::new(SystemClock),
    )
    .await;
    let p = port.to_string();
    h.wait_metrics("both ports probed", T, |e| {
        e.get("vps_probe_success", &[("vm", "1"), ("port", "1")]) == Some(0.0)
            && e.get("vps_probe_success", &[("vm", "1"), ("port", &p)]) == Some(1.0)
    })
    .await;
    let wd = Wd {
        h,
        globals: String::new(),
        dir,
    };
    let quiet = wd.evaluated_after(Wd::now() + 0.5).await;
    assert_eq!(
        actions(&quiet, "1", "ok"),
        0.0,
        "the failing default port is not this rule's"
    );
    wd.h.sim.set_hung(1, true);
    wd.h.wait_metrics("rebooted when the rule's port stops answering", T, |e| {
        actions(e, "1", "ok") == 1.0
    })
    .await;
    assert_eq!(wd.calls(1, "/restart"), 1);
    wd.h.shutdown().await;
}

#[tokio::test]
async fn a_failed_restart_call_is_journaled_and_retried_after_the_cooldown() {
    let notes = Arc::new(RecordingNotifier::default());
    let rules = probe_rule("").replace("cooldown = \"1h\"", "cooldown = \"500ms\"");
    let wd = Wd::one_vm(12, &rules, notes.clone()).await;
    // The provider answers the first restart with its 500 error.
    wd.h.sim
        .fail_actions(1, vpswatch_sim::lnvps::ActionFailure::status(500).times(1));
    let exp = wd.hang_until_failed_once_then_recovered().await;
    assert_eq!(actions(&exp, "1", "ok"), 1.0);
    assert_eq!(wd.calls(1, "/restart"), 2, "the failed call and the retry");
    let text =
        wd.h.http
            .get(wd.h.url("/api/v1/actions"))
            .send()
            .await
            .expect("api")
            .text()
            .await
            .expect("body");
    let body: serde_json::Value = serde_json::from_str(&text).expect("json");
    let list = body["actions"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 2, "{body}");
    // Newest first: the retry succeeded, the first call failed with the provider's words.
    assert_eq!(list[0]["status"], "ok");
    assert_eq!(list[1]["status"], "failed");
    assert!(
        list[1]["error"].as_str().is_some_and(|e| e.contains("500")),
        "{body}"
    );
    let kinds = notes.event_kinds();
    assert!(
        kinds.contains(&("1".to_string(), "action_failed")),
        "{kinds:?}"
    );
    wd.h.shutdown().await;
}

/// A provider that takes longer than the rule's `patience` to answer a restart: the
/// ladder does not judge an action whose call is still under way. Here the call times
/// out (failed, nothing to wait for), so the same rung is tried again after the
/// cooldown instead of being counted as "not recovered" and given up.
#[tokio::test]
async fn patience_waits_for_the_provider_to_answer() {
    let notes = Arc::new(RecordingNotifier::default());
    let rules = probe_rule("")
        .replace("cooldown = \"1h\"", "cooldown = \"500ms\"")
        .replace("recoveries = 2", "recoveries = 1")
        .replace("patience = \"10s\"", "patience = \"500ms\"");
    let wd = Wd::one_vm(13, &rules, notes.clone()).await;
    // The first restart hangs until the client's 1 s request timeout; the retry's
    // guest is back at once, well inside the patience.
    wd.h.sim.set_reboot_duration(Duration::ZERO);
    wd.h.sim.inject_fault(
        Fault::new(
            EndpointMatch::vm("/api/v1/vm/{id}/restart", 1),
            FaultKind::Hang,
        )
        .times(1),
    );
    let exp = wd.hang_until_failed_once_then_recovered().await;
    assert_eq!(
        exp.get(
            "vpswatch_action_outcomes_total",
            &[("vm", "1"), ("outcome", "not_recovered")],
        )
        .unwrap_or(0.0),
        0.0,
        "the hanging call was not judged before it ended"
    );
    assert_eq!(actions(&exp, "1", "ok"), 1.0);
    assert_eq!(wd.calls(1, "/restart"), 2, "the hanging call and the retry");
    let kinds = notes.event_kinds();
    assert!(
        !kinds
            .iter()
            .any(|(_, k)| *k == "action_not_recovered" || *k == "gave_up"),
        "{kinds:?}"
    );
    wd.h.shutdown().await;
}
