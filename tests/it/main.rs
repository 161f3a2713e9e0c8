//! vpswatch's integration tests, in one binary so they share one build and one helper
//! kit (`common`): simulators, child daemons, free ports, SMTP, Alertmanager, Prometheus.
//!
//! Each module is one area; `cargo test --test it <module>::` runs one of them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failed assertion"
)]

mod alertmanager_webhook;
#[cfg(feature = "cluster")]
mod cluster;
#[cfg(feature = "cluster")]
mod cluster_state;
mod common;
mod config;
mod demo;
mod demo_wallet;
mod deploy;
#[cfg(feature = "cluster")]
mod deploy_ha;
mod e2e_lnvps;
mod e2e_stablevps;
mod email;
mod email_daemon;
mod fault_matrix;
mod hostile_responses;
mod module_graph;
mod parsers_proptest;
mod probes;
mod readme;
mod renewal;
mod renewal_crash;
mod secret_hygiene;
mod silences;
mod sim_lnvps;
mod sim_renewal;
mod sim_stablevps;
mod stablevps_secrets;
mod state_store;
mod status_page;
mod watchdog;
mod watchdog_crash;
mod watchdog_email;
mod watchdog_stablevps;
mod web_config;
mod web_limits;
mod web_metrics_body;
