//! The watchdog: liveness probes now; rules, guarded actions and the journal build on
//! them (see the open watchdog issue). Maintenance windows and Alertmanager silences
//! say when it must not act.

pub mod maintenance;
pub mod probe;
pub mod selector;
pub mod silences;
