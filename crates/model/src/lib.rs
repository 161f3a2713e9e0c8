//! The provider-neutral model of vpswatch: the types every other crate agrees on.
//!
//! It depends on no other vpswatch crate, so everything above it (the provider clients,
//! the simulator, the daemon) can share these types without depending on each other.

pub mod account;
pub mod bounded_file;
pub mod clock;
pub mod config_doc;
pub mod money;
pub mod problem;
pub mod redact;
pub mod secret;
pub mod snapshot;
pub mod vm;
