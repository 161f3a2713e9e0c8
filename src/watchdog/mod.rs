//! The watchdog: rules evaluated on probes and polls, guarded actions, a journal that
//! survives restarts, maintenance windows and Alertmanager silences.
//!
//! `rules` (config) → `evaluate` (true/false/unknown per target) → `state` (hysteresis,
//! ladder, patience) → `engine` (guards in `action`, gates from `maintenance` and
//! `silences`, `journal` before and after every provider call) → `report` (/metrics).

pub mod action;
pub mod engine;
pub mod evaluate;
pub mod gates;
pub mod journal;
pub mod maintenance;
pub mod probe;
pub mod probe_targets;
pub mod report;
pub mod rules;
pub mod selector;
pub mod silences;
pub mod state;
pub mod webhook;
