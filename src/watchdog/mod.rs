//! The watchdog: liveness probes now; rules, guarded actions and the journal build on
//! them (see the open watchdog issue).

pub mod action;
pub mod engine;
pub mod evaluate;
pub mod journal;
pub mod probe;
pub mod report;
pub mod rules;
pub mod selector;
pub mod state;
