//! Bakes the source revision into the binary for `vpswatch_build_info`.
use std::process::Command;

fn main() {
    let revision = std::env::var("VPSWATCH_REVISION")
        .ok()
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=VPSWATCH_REVISION={revision}");
    println!("cargo:rerun-if-env-changed=VPSWATCH_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
