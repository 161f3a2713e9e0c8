//! The TOML configuration parser: any text gives a config or a list of problems, never
//! a panic. Secrets are read from the files the text names; paths into /dev, /proc and
//! /sys are skipped (those files are the operator's, not an attacker's input).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    match vpswatch::config::parse(text, "fuzz.toml", &|_| None) {
        Ok(c) => assert!(!c.accounts.is_empty()),
        Err(e) => assert!(!e.problems.is_empty()),
    }
});
