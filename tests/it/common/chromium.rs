//! Headless Chromium (Debian package `chromium`; `scripts/test` installs it) run from the
//! command line: `--dump-dom` prints the DOM after the page loaded (what a person's
//! browser would hold, scripts included had there been any), `--screenshot` writes a PNG.
//!
//! Each run gets a fresh temporary profile, is cut off from everything but loopback (no
//! background networking, component updates or sync; every host name but 127.0.0.1
//! resolves to nothing) and is killed — its whole
//! process group, by id — when it finishes or overruns.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one Chromium run may take (a cold start on a loaded 2-core box is seconds).
const DEADLINE: Duration = Duration::from_secs(90);

/// The browser binary: `VPSWATCH_TEST_CHROMIUM` or `chromium` on the PATH.
pub fn binary() -> String {
    std::env::var("VPSWATCH_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".to_string())
}

/// Runs Chromium headless with `extra` arguments on `url`; returns its stdout.
fn run(extra: &[String], url: &str) -> String {
    let profile = tempfile::Builder::new()
        .prefix("vpswatch-chromium-")
        .tempdir()
        .expect("profile dir");
    let mut cmd = Command::new(binary());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--disable-breakpad",
        "--metrics-recording-only",
        "--no-pings",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    // Its own process group, so its helpers (zygote, renderer) go with it.
    .process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start {} ({e}); install Debian package chromium (scripts/test does)",
            binary()
        )
    });
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().expect("stdout");
    // Read while it runs: a DOM larger than the pipe buffer would block it otherwise.
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let exit = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever is left of its process group goes now (by the group's id, never by name).
    // SAFETY: kill(2) with a negative pid signals that process group only.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let _ = child.wait();
    let out = reader.join().unwrap_or_default();
    match exit {
        None => panic!("chromium did not finish within {DEADLINE:?} on {url}"),
        Some(s) if !s.success() => panic!("chromium failed ({s}) on {url}"),
        Some(_) => out,
    }
}

/// Runs `run` off the async threads: the server under test may share the test's runtime.
async fn run_blocking(extra: Vec<String>, url: &str) -> String {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || run(&extra, &url))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The DOM of `url` after it loaded, serialised as HTML.
pub async fn dump_dom(url: &str) -> String {
    let dom = run_blocking(vec!["--dump-dom".to_string()], url).await;
    assert!(
        dom.contains("<html"),
        "chromium printed no DOM for {url}:\n{dom}"
    );
    dom
}

/// Writes a PNG of `url` at `width`×`height` CSS pixels to `path`.
pub async fn screenshot(url: &str, path: &Path, width: u32, height: u32) {
    let _ = std::fs::remove_file(path);
    run_blocking(
        vec![
            format!("--screenshot={}", path.display()),
            format!("--window-size={width},{height}"),
        ],
        url,
    )
    .await;
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("no screenshot at {path:?}: {e}"));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{path:?} is not a plausible PNG ({} bytes)",
        png.len()
    );
}
