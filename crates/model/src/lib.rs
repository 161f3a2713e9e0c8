//! The provider-neutral model of vpswatch: the types every other crate agrees on.
//!
//! It depends on no other vpswatch crate, so everything above it (the provider clients,
//! the simulator, the daemon) can share these types without depending on each other.

pub mod clock;
