//! The watchdog: liveness probes now; rules, guarded actions and the journal build on
//! them (see the open watchdog issue).

pub mod probe;
pub mod selector;
