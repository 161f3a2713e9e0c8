//! The web config (exporter-toolkit YAML) parser: a config or problems with key paths,
//! never a panic. File names resolve against an empty directory; /dev, /proc and /sys
//! paths are skipped (reads are size-limited anyway, but a FIFO would block).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    let mut deps = Vec::new();
    if let Err(problems) =
        vpswatch::web_config::parse(text, std::path::Path::new("/nonexistent"), &mut deps)
    {
        assert!(!problems.is_empty());
    }
});
