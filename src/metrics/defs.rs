//! Every metric family vpswatch exports, declared once: name, type, labels and help.
//!
//! The encoder builds series only through these declarations, and docs/metrics.md's metric
//! reference is generated from this table (`vpswatch metrics-doc`); a test fails when the
//! two disagree.

/// The Prometheus type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family.
#[derive(Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const VM: &[&str] = &["provider", "account", "vm"];
const ACCOUNT: &[&str] = &["provider", "account"];
const RENEW_VM: &[&str] = &["provider", "account", "vm", "rule"];

macro_rules! metric {
    ($id:ident, $name:literal, $kind:ident, $labels:expr, $help:literal) => {
        pub const $id: MetricDef = MetricDef {
            name: $name,
            kind: Kind::$kind,
            labels: $labels,
            help: $help,
        };
    };
}

// Per VM. Values come from the last successful poll of the account.
metric!(
    VPS_INFO,
    "vps_info",
    Gauge,
    &["provider", "account", "vm", "name", "plan", "location", "image", "ipv4"],
    "Always 1; descriptive labels of the VM as of the last successful poll."
);
metric!(
    VPS_STATE,
    "vps_state",
    Gauge,
    &["provider", "account", "vm", "state"],
    "1 for the VM's current state, 0 for the provider's other known states (last poll)."
);
metric!(
    VPS_UP,
    "vps_up",
    Gauge,
    VM,
    "1 if the provider reports the VM running/active at the last poll, else 0."
);
metric!(
    VPS_EXPIRY,
    "vps_expiry_timestamp_seconds",
    Gauge,
    VM,
    "End of the paid period (Unix seconds); absent for a never-paid VM (last poll)."
);
metric!(
    VPS_DELETION,
    "vps_deletion_timestamp_seconds",
    Gauge,
    VM,
    "When the provider deletes the VM if it is not renewed (Unix seconds; last poll)."
);
metric!(
    VPS_AUTO_RENEWAL,
    "vps_auto_renewal_enabled",
    Gauge,
    VM,
    "1 if server-side automatic renewal is on for the VM (last poll)."
);
metric!(
    VPS_RENEWAL_PRICE,
    "vps_renewal_price",
    Gauge,
    &["provider", "account", "vm", "currency"],
    "List price of renewing the VM for one period, in major units (EUR, BTC; last poll)."
);
metric!(
    VPS_RENEWAL_PERIOD,
    "vps_renewal_period_seconds",
    Gauge,
    VM,
    "Length of the next billing period in seconds (last poll)."
);
metric!(
    VPS_CPUS,
    "vps_cpus",
    Gauge,
    VM,
    "vCPUs of the VM's plan (last poll)."
);
metric!(
    VPS_MEMORY,
    "vps_memory_bytes",
    Gauge,
    VM,
    "Memory of the VM's plan in bytes (last poll)."
);
metric!(
    VPS_DISK,
    "vps_disk_bytes",
    Gauge,
    VM,
    "Disk size of the VM's plan in bytes (last poll)."
);
metric!(
    VPS_CPU_USAGE,
    "vps_cpu_usage_ratio",
    Gauge,
    VM,
    "CPU use as a fraction of the allotted vCPUs, newest complete time-series point."
);
metric!(
    VPS_MEMORY_USAGE,
    "vps_memory_usage_bytes",
    Gauge,
    VM,
    "Memory in use in bytes, newest complete time-series point."
);
metric!(
    VPS_NET_RX,
    "vps_network_receive_bytes_per_second",
    Gauge,
    VM,
    "Network receive rate in bytes/s, newest complete time-series point."
);
metric!(
    VPS_NET_TX,
    "vps_network_transmit_bytes_per_second",
    Gauge,
    VM,
    "Network transmit rate in bytes/s, newest complete time-series point."
);
metric!(
    VPS_DISK_READ,
    "vps_disk_read_bytes_per_second",
    Gauge,
    VM,
    "Disk read rate in bytes/s, newest complete time-series point."
);
metric!(
    VPS_DISK_WRITE,
    "vps_disk_write_bytes_per_second",
    Gauge,
    VM,
    "Disk write rate in bytes/s, newest complete time-series point."
);
metric!(
    VPS_USAGE_TIMESTAMP,
    "vps_usage_timestamp_seconds",
    Gauge,
    VM,
    "Time of the time-series point the usage metrics come from (Unix seconds)."
);
metric!(
    VPS_UPTIME,
    "vps_uptime_seconds",
    Gauge,
    VM,
    "Uptime reported by the provider in seconds (0 where the host does not report it)."
);
metric!(
    VPS_STATUS_TIMESTAMP,
    "vps_status_timestamp_seconds",
    Gauge,
    VM,
    "When the provider last observed the VM's state (Unix seconds; 0 = never)."
);

metric!(
    VPS_PROBE_SUCCESS,
    "vps_probe_success",
    Gauge,
    &["provider", "account", "vm", "port"],
    "1 if the last TCP probe of a running VM's public IPv4 connected, else 0 (running VMs only)."
);
metric!(
    VPS_PROBE_DURATION,
    "vps_probe_duration_seconds",
    Gauge,
    &["provider", "account", "vm", "port"],
    "Time the last TCP probe took to connect or give up, in seconds."
);

// Per account.
metric!(
    VPS_ACCOUNT_EMAIL_VERIFIED,
    "vps_account_email_verified",
    Gauge,
    ACCOUNT,
    "1 if the account's email address is verified, 0 if not (absent when no email is set)."
);
metric!(
    VPS_ACCOUNT_PAYMENT_METHODS,
    "vps_account_payment_methods",
    Gauge,
    ACCOUNT,
    "Enabled saved payment methods (LNVPS auto-renewal needs at least one; last poll)."
);

metric!(
    VPS_WALLET_BALANCE,
    "vps_wallet_balance",
    Gauge,
    &["provider", "account", "currency"],
    "Prepaid wallet balance of the account in major units (EUR; last poll); for provider=\"nwc\" the Lightning renewal wallet's balance in satoshis (currency=\"sat\"; account is the renewal rule's name)."
);
metric!(
    VPS_WALLET_RUNWAY,
    "vps_wallet_runway_seconds",
    Gauge,
    ACCOUNT,
    "Seconds from the last poll until the first upcoming renewal the wallet cannot pay (0 = short now; capped at 5 years; absent when nothing renews)."
);
metric!(
    VPS_API_KEY_EXPIRY,
    "vps_api_key_expiry_timestamp_seconds",
    Gauge,
    ACCOUNT,
    "When the soonest-expiring API key vpswatch uses for the account expires (Unix seconds; absent when none expires; last poll)."
);
metric!(
    VPS_ACTIONS_ENABLED,
    "vps_actions_enabled",
    Gauge,
    ACCOUNT,
    "1 if vpswatch may send actions (start, stop, reboot) for the account; 0 when its key is read-only or a write was refused with 403."
);

// vpswatch itself.
metric!(
    BUILD_INFO,
    "vpswatch_build_info",
    Gauge,
    &["version", "revision"],
    "Always 1; the running vpswatch version and source revision."
);
metric!(
    PROVIDER_UP,
    "vpswatch_provider_up",
    Gauge,
    ACCOUNT,
    "1 if the latest poll of the account succeeded, 0 if it failed or none finished yet."
);
metric!(
    PROVIDER_LAST_SUCCESS,
    "vpswatch_provider_last_success_timestamp_seconds",
    Gauge,
    ACCOUNT,
    "Time of the last successful poll of the account (Unix seconds; 0 = never)."
);
metric!(
    PROVIDER_CONSECUTIVE_FAILURES,
    "vpswatch_provider_consecutive_failures",
    Gauge,
    ACCOUNT,
    "Polls of the account that failed in a row (0 after a success)."
);
metric!(PROVIDER_REQUESTS, "vpswatch_provider_requests_total", Counter,
    &["provider", "account", "endpoint", "code"],
    "Requests to provider APIs by endpoint and outcome (HTTP status, timeout, connect_error, invalid_response).");
metric!(
    PROVIDER_REQUEST_DURATION,
    "vpswatch_provider_request_duration_seconds",
    Histogram,
    &["provider", "account", "endpoint"],
    "Time of each request to a provider API, retries counted separately."
);
metric!(
    POLL_DURATION,
    "vpswatch_poll_duration_seconds",
    Gauge,
    ACCOUNT,
    "Duration of the account's latest poll in seconds."
);

// Watchdog.
const RULE_TARGET: &[&str] = &["rule", "provider", "account", "vm"];
metric!(
    RULE_FIRING,
    "vpswatch_rule_firing",
    Gauge,
    RULE_TARGET,
    "1 while the rule fires for the target (vm is empty for account-level rules), else 0."
);
metric!(
    RULE_UNKNOWN,
    "vpswatch_rule_unknown",
    Gauge,
    RULE_TARGET,
    "1 while the rule cannot judge the target (stale, missing or failed data), else 0; unknown never acts."
);
metric!(
    ACTIONS,
    "vpswatch_actions_total",
    Counter,
    &["rule", "provider", "account", "vm", "action", "result", "source"],
    "Watchdog action decisions by result: ok, failed, dry_run, gave_up, skipped_cooldown, skipped_cap, skipped_maintenance, skipped_silenced, skipped_guard, skipped_disabled, skipped_unknown, skipped_error; source says what asked for the action: rule (vpswatch's own [[rules]]) or alertmanager (the webhook)."
);
metric!(
    ACTION_OUTCOMES,
    "vpswatch_action_outcomes_total",
    Counter,
    &["rule", "provider", "account", "vm", "action", "outcome", "source"],
    "What followed an action: recovered (seen healthy within the rule's patience) or not_recovered; source as on vpswatch_actions_total (rule or alertmanager)."
);
metric!(
    LAST_ACTION,
    "vpswatch_last_action_timestamp_seconds",
    Gauge,
    &["provider", "account", "vm", "action"],
    "Unix time of the newest action sent (or dry-run) to the VM."
);
metric!(
    WATCHDOG_DRY_RUN,
    "vpswatch_watchdog_dry_run",
    Gauge,
    &[],
    "1 when the global dry-run is on: rules decide but no provider call is made."
);
metric!(
    WATCHDOG_LAST_EVALUATION,
    "vpswatch_watchdog_last_evaluation_timestamp_seconds",
    Gauge,
    &[],
    "Unix time of the watchdog's latest evaluation round."
);
metric!(
    WATCHDOG_ERRORS,
    "vpswatch_watchdog_errors_total",
    Counter,
    &["kind"],
    "Watchdog internal errors by kind (journal, silences); each means \"did not act\"."
);
metric!(
    ALERTS,
    "vpswatch_alerts_total",
    Counter,
    &["channel", "result"],
    "Alert notifications by channel and outcome: queued (entered the outbox), sent (the server accepted it), failed_attempt (a delivery attempt failed; retried later), rejected (the server refused the mail, or some of its recipients, for good: set aside, not retried), queue_error (could not be queued), held (the state store could not be written: kept in memory and queued once it can), dropped (lost: the in-memory hold was full), duplicate (replicas: another replica had already sent this alert's FIRING or RESOLVED mail; not sent again)."
);
metric!(
    ALERT_OUTBOX_MESSAGES,
    "vpswatch_alert_outbox_messages",
    Gauge,
    &[],
    "Notifications waiting in the on-disk outbox for the mail server to accept them."
);
metric!(
    ALERT_OUTBOX_OLDEST,
    "vpswatch_alert_outbox_oldest_timestamp_seconds",
    Gauge,
    &[],
    "When the oldest notification in the outbox was queued (Unix seconds; 0 = outbox empty)."
);
metric!(
    STATE_STORE_WRITABLE,
    "vpswatch_state_store_writable",
    Gauge,
    &[],
    "1 while the state database (watchdog and renewal journals, alert outbox) takes writes; 0 after an I/O error until it has been reopened: meanwhile the watchdog and renewals do not act."
);
metric!(
    STATE_STORE_ERRORS,
    "vpswatch_state_store_errors_total",
    Counter,
    &[],
    "I/O errors of the state database, including failed attempts to reopen it."
);
metric!(
    ALERT_OUTBOX_REJECTED,
    "vpswatch_alert_outbox_rejected_messages",
    Gauge,
    &[],
    "Notifications the mail server refused for good, kept aside in the state directory (not retried; the newest 1000 for 30 days)."
);
// --- web config reloads ---
metric!(
    WEB_CONFIG_RELOAD_SUCCESS,
    "vpswatch_web_config_last_reload_successful",
    Gauge,
    &[],
    "1 if the last load of --web.config.file succeeded, 0 if it failed (the last good configuration stays in force); absent without a web config file."
);
metric!(
    WEB_CONFIG_RELOAD_TIMESTAMP,
    "vpswatch_web_config_last_reload_success_timestamp_seconds",
    Gauge,
    &[],
    "When --web.config.file was last loaded successfully (Unix seconds)."
);

metric!(
    ALERTMANAGER_ALERTS,
    "vpswatch_alertmanager_alerts_total",
    Counter,
    &["result"],
    "Alerts received on the Alertmanager webhook by what came of them: acted, dry_run, skipped (a guard or gate held the action back; see vpswatch_actions_total), duplicate (its firing episode already acted), resolved (closed its episode), no_mapping (no [[alertmanager.actions]] entry matches), unknown_vm (its provider/account/vm labels name no watched VM), not_owner (with replicas: another replica owns the account and acts on it)."
);
metric!(
    ALERTMANAGER_REQUESTS,
    "vpswatch_alertmanager_requests_total",
    Counter,
    &["code"],
    "Requests to the Alertmanager webhook by the HTTP status answered: 200 handled (see vpswatch_alertmanager_alerts_total), 400 not a version-4 payload, 401 no or wrong credential (a misconfigured token or credentials_file shows here), 405 not a POST, 413 over alertmanager.max_body_bytes, 429 too many password checks, 500 journal not writable, 503 watchdog not running."
);

// Standard process metrics (as every Prometheus client library exports them).
metric!(
    PROCESS_CPU,
    "process_cpu_seconds_total",
    Counter,
    &[],
    "Total user and system CPU time spent in seconds."
);
metric!(
    PROCESS_RESIDENT_MEMORY,
    "process_resident_memory_bytes",
    Gauge,
    &[],
    "Resident memory size in bytes."
);
metric!(
    PROCESS_VIRTUAL_MEMORY,
    "process_virtual_memory_bytes",
    Gauge,
    &[],
    "Virtual memory size in bytes."
);
metric!(
    PROCESS_OPEN_FDS,
    "process_open_fds",
    Gauge,
    &[],
    "Number of open file descriptors."
);
metric!(
    PROCESS_MAX_FDS,
    "process_max_fds",
    Gauge,
    &[],
    "Maximum number of open file descriptors."
);
metric!(
    PROCESS_START_TIME,
    "process_start_time_seconds",
    Gauge,
    &[],
    "Start time of the process since unix epoch in seconds."
);

metric!(
    CLUSTER_MEMBERS,
    "vpswatch_cluster_members",
    Gauge,
    &[],
    "Replicas registered in etcd as this replica last saw them (cluster mode only)."
);
metric!(
    CLUSTER_ACCOUNTS,
    "vpswatch_cluster_accounts",
    Gauge,
    &[],
    "Accounts configured, which the replicas share (cluster mode only)."
);
metric!(
    CLUSTER_ACCOUNTS_OWNED,
    "vpswatch_cluster_accounts_owned",
    Gauge,
    &[],
    "Accounts this replica owns, and so polls, probes, acts and mails for (cluster mode only)."
);
metric!(
    CLUSTER_LEASE_UP,
    "vpswatch_cluster_lease_up",
    Gauge,
    &[],
    "1 while this replica holds a live etcd lease, 0 while it cannot reach etcd (cluster mode only)."
);
metric!(
    CLUSTER_ETCD_ERRORS,
    "vpswatch_cluster_etcd_errors_total",
    Counter,
    &[],
    "etcd requests that failed (cluster mode only)."
);
metric!(
    CLUSTER_OWNERSHIP_CHANGES,
    "vpswatch_cluster_ownership_changes_total",
    Counter,
    &[],
    "Accounts this replica took over or gave up (cluster mode only)."
);

/// Every family, in exposition order.
pub const ALL: &[&MetricDef] = &[
    &VPS_INFO,
    &VPS_STATE,
    &VPS_UP,
    &VPS_EXPIRY,
    &VPS_DELETION,
    &VPS_AUTO_RENEWAL,
    &VPS_RENEWAL_PRICE,
    &VPS_RENEWAL_PERIOD,
    &VPS_CPUS,
    &VPS_MEMORY,
    &VPS_DISK,
    &VPS_CPU_USAGE,
    &VPS_MEMORY_USAGE,
    &VPS_NET_RX,
    &VPS_NET_TX,
    &VPS_DISK_READ,
    &VPS_DISK_WRITE,
    &VPS_USAGE_TIMESTAMP,
    &VPS_UPTIME,
    &VPS_STATUS_TIMESTAMP,
    &VPS_PROBE_SUCCESS,
    &VPS_PROBE_DURATION,
    &VPS_ACCOUNT_EMAIL_VERIFIED,
    &VPS_ACCOUNT_PAYMENT_METHODS,
    &VPS_WALLET_BALANCE,
    &VPS_WALLET_RUNWAY,
    &VPS_API_KEY_EXPIRY,
    &VPS_ACTIONS_ENABLED,
    &BUILD_INFO,
    &PROVIDER_UP,
    &PROVIDER_LAST_SUCCESS,
    &PROVIDER_CONSECUTIVE_FAILURES,
    &PROVIDER_REQUESTS,
    &PROVIDER_REQUEST_DURATION,
    &POLL_DURATION,
    &RULE_FIRING,
    &RULE_UNKNOWN,
    &ACTIONS,
    &ACTION_OUTCOMES,
    &LAST_ACTION,
    &WATCHDOG_DRY_RUN,
    &WATCHDOG_LAST_EVALUATION,
    &WATCHDOG_ERRORS,
    &ALERTMANAGER_ALERTS,
    &ALERTMANAGER_REQUESTS,
    &RENEWALS,
    &RENEWAL_PAID_SATS,
    &VPS_RENEWAL_FAILING,
    &VPS_RENEWAL_GAVE_UP,
    &RENEWAL_ATTEMPTS,
    &ALERTS,
    &ALERT_OUTBOX_MESSAGES,
    &ALERT_OUTBOX_OLDEST,
    &STATE_STORE_WRITABLE,
    &STATE_STORE_ERRORS,
    &ALERT_OUTBOX_REJECTED,
    &WEB_CONFIG_RELOAD_SUCCESS,
    &WEB_CONFIG_RELOAD_TIMESTAMP,
    &PROCESS_CPU,
    &PROCESS_RESIDENT_MEMORY,
    &PROCESS_VIRTUAL_MEMORY,
    &PROCESS_OPEN_FDS,
    &PROCESS_MAX_FDS,
    &PROCESS_START_TIME,
    &CLUSTER_MEMBERS,
    &CLUSTER_ACCOUNTS,
    &CLUSTER_ACCOUNTS_OWNED,
    &CLUSTER_LEASE_UP,
    &CLUSTER_ETCD_ERRORS,
    &CLUSTER_OWNERSHIP_CHANGES,
];

// ---- Lightning renewal (src/renew) ----
metric!(
    RENEWALS,
    "vpswatch_renewals_total",
    Counter,
    &["provider", "account", "vm", "rule", "mode", "result"],
    "Renewal decisions and outcomes of each renewal rule for each VM it matches, by result (all zero from the first poll): paid, failed (a try that got no payable invoice or whose invoice expired unpaid), gave_up (tries for this expiry used up), blocked_budget, blocked_prepay, blocked_invoice (quote not in BTC), invoice_sent, dry_run, wallet_refused, wallet_no_answer, server_missed."
);
metric!(
    VPS_RENEWAL_FAILING,
    "vps_renewal_failing",
    Gauge,
    RENEW_VM,
    "1 while the last renewal try for the VM's current expiry failed (retrying with backoff, or given up); 0 otherwise, including after a renewal."
);
metric!(
    VPS_RENEWAL_GAVE_UP,
    "vps_renewal_gave_up",
    Gauge,
    RENEW_VM,
    "1 while vpswatch has used up the renewal tries (max_attempts) for the VM's current expiry and stopped; a new expiry or a clear through POST /api/v1/renewals/clear re-arms it."
);
metric!(
    RENEWAL_ATTEMPTS,
    "vpswatch_renewal_attempts",
    Gauge,
    RENEW_VM,
    "Renewal tries made for the VM's current expiry (each at most one invoice request; at most the rule's max_attempts)."
);
metric!(
    RENEWAL_PAID_SATS,
    "vpswatch_renewal_paid_sats_total",
    Counter,
    &["provider", "account", "vm"],
    "Satoshis paid for renewals that the provider confirmed (is_paid)."
);

/// The metric reference table of docs/metrics.md, generated from [`ALL`].
pub fn markdown_table() -> String {
    let mut out = String::from("| name | type | labels | meaning |\n|---|---|---|---|\n");
    for d in ALL {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            d.name,
            d.kind.as_str(),
            d.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", "),
            d.help
        ));
    }
    out
}
