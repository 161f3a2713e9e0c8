//! vpswatch: Prometheus exporter and watchdog for VPS rented from LNVPS and StableVPS.
//!
//! Data flows one way: config → poller (provider clients, shared rate budget) →
//! immutable per-account snapshots → metrics encoder (cached bytes) → web server.
//! Clients know nothing of metrics; the web layer only reads.

pub mod alloc_tuning;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod poll;
pub mod renew;
pub mod signal;
pub mod status;
pub mod store;
pub mod tls;
pub mod watchdog;
pub mod web;
pub mod web_body;
pub mod web_config;
