//! Fake upstream servers on loopback.
//!
//! The simulator is the only upstream the tests and the demo ever reach, so it has to
//! behave like the real provider down to status codes, content types and message texts.
//! Independent client implementations are tested against it.
//!
//! Layout:
//! - [`cli`]: `vpswatch simulate`, one fake provider served until stopped;
//! - [`demo`]: the world `vpswatch demo` runs against, and the daemon config for it;
//! - [`lnvps`]: the fake LNVPS API server, its handle and the `simulate` CLI entry point;
//! - [`stablevps`]: the fake StableVPS API server (scenario, wallet renewals, RDP listeners);
//! - [`scenario`]: the starting world and its timeline (TOML/JSON, built-ins);
//! - [`faults`]: injectable API faults (latency, 5xx, 429, broken bodies, hangs);
//! - [`power`]: what the watchdog meets, shared by both fakes: crashes, hangs, guests
//!   that stay dead or need a power cycle, failing actions, API blackouts, boot time;
//! - `world`: in-memory users, VMs and the lifecycle the real worker runs;
//! - `handlers`, `routes`, `wire`: the emulated endpoints, route table and JSON shapes;
//! - [`lightning`]: the node key that signs BOLT11 invoices, auto-renewal records;
//! - `nip98`: NIP-98 verification exactly as the real server enforces it;
//! - `ratelimit`: the real server's per-IP fixed-window limiter;
//! - `control`: what the two `/_sim/` control APIs share (each simulator's own
//!   endpoints sit beside it);
//! - `http`: hyper plumbing shared by the fake servers (bodies, replies, serving).

/// Why a simulator could not load its scenario or start. Messages name the scenario key
/// or the file, so `vpswatch simulate` prints them as they are.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A scenario the simulator cannot run; the message names the key.
    #[error("{0}")]
    Scenario(String),
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Other {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SimError {
    /// `source`, said to have happened while doing `what`.
    pub fn other(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> SimError {
        SimError::Other {
            what: what.into(),
            source: source.into(),
        }
    }

    /// For `map_err` on an I/O result: the error, said to have happened while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SimError {
        let what = what.into();
        move |source| SimError::Io { what, source }
    }

    /// This error, said to have happened while doing `what`.
    pub fn context(self, what: impl Into<String>) -> SimError {
        SimError::other(what, self)
    }
}

/// Returns a [`SimError::Scenario`] with a formatted message.
macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err($crate::SimError::Scenario(format!($($arg)*)))
    };
}

pub mod cli;
mod control;
pub mod demo;
pub mod faults;
mod handlers;
mod http;
pub mod lightning;
pub mod lnvps;
pub mod nip98;
pub mod nwc_wallet;
pub mod power;
mod ratelimit;
mod render;
pub mod renewal;
mod routes;
pub mod scenario;
pub mod stablevps;
mod vm_ports;
mod wire;
mod world;
