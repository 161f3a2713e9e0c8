//! The real `vpswatch` binary as a child process (for `kill -9` tests), killed on drop.

use std::process::{Child, Command, Stdio};

/// A child process killed (and reaped) when dropped, so no daemon outlives its test.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nobody listens on right now.
/// `vpswatch run --config <config>` with the Nostr key in env var `nsec_var`.
pub fn spawn_run(config: &std::path::Path, nsec_var: &str, nsec: &str) -> KillOnDrop {
    let child = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .args(["--log.level", "warn", "run", "--config"])
        .arg(config)
        .env(nsec_var, nsec)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vpswatch");
    KillOnDrop(child)
}

/// `vpswatch run --config <config>`, its log (warnings and up) in `log`.
pub fn spawn_logged(config: &std::path::Path, log: &std::path::Path) -> KillOnDrop {
    let log = std::fs::File::create(log).expect("daemon log");
    let child = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .args(["--log.level", "info", "run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start vpswatch");
    KillOnDrop(child)
}
