//! Configuration errors: each kind of bad config gives its precise message (key path and
//! reason), `check-config` exits 2 listing every problem, and secrets are never echoed.

use std::io::Write;
use std::process::Command;

use vpswatch::config::{self};
use vpswatch_model::problem::ConfigError;

const HEX_KEY: &str = "6b911fd37cdf5c81d4c0adb1ab7fa822ed253ab0ad9aa18d77257c88b29b718e";

fn env_with_key(name: &str) -> Option<String> {
    (name == "LNVPS_KEY").then(|| HEX_KEY.to_string())
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn errors(text: &str, env: &dyn Fn(&str) -> Option<String>) -> ConfigError {
    match config::parse(text, "test.toml", env) {
        Ok(_) => panic!("config should have been rejected:\n{text}"),
        Err(e) => e,
    }
}

fn assert_problem(e: &ConfigError, path: &str, needle: &str) {
    assert!(
        e.problems
            .iter()
            .any(|p| p.path == path && p.message.contains(needle)),
        "expected a problem at {path:?} containing {needle:?}, got:\n{e}"
    );
}

const GOOD: &str = r#"
poll_interval = "30s"
[web]
listen_address = "127.0.0.1:0"
[[accounts]]
name = "main"
provider = "lnvps"
base_url = "http://127.0.0.1:1"
nsec_env = "LNVPS_KEY"
"#;

#[test]
fn good_config_loads_with_defaults() {
    let c = config::parse(GOOD, "test.toml", &env_with_key).expect("valid");
    assert_eq!(c.accounts.len(), 1);
    assert_eq!(c.accounts[0].poll_interval.as_secs(), 30);
    assert_eq!(c.request_timeout.as_secs(), 10);
    assert_eq!(
        c.limits(vpswatch_model::account::ProviderKind::Lnvps)
            .requests_per_minute,
        600
    );
}

#[test]
fn unknown_fields_are_named_with_their_path() {
    let text =
        GOOD.replace("poll_interval = \"30s\"", "poll_intervall = \"30s\"") + "colour = \"blue\"\n";
    let e = errors(&text, &env_with_key);
    assert_problem(&e, "poll_intervall", "unknown key");
    assert_problem(&e, "accounts[0].colour", "unknown key");
}

#[test]
fn wrong_types_and_bad_durations() {
    let text = GOOD.replace("\"30s\"", "\"30 parsecs\"");
    let e = errors(&text, &env_with_key);
    assert_problem(&e, "poll_interval", "expected a duration");

    let text = GOOD.replace("name = \"main\"", "name = 5");
    let e = errors(&text, &env_with_key);
    assert_problem(&e, "accounts[0].name", "invalid type");

    let text = GOOD.replace("provider = \"lnvps\"", "provider = \"hetzner\"");
    let e = errors(&text, &env_with_key);
    assert_problem(&e, "accounts[0].provider", "unknown variant");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
request_timeout = "0s"
[web]
listen_address = "nowhere"
[[accounts]]
name = "a b"
provider = "lnvps"
base_url = "http://example.com"
nsec_env = "MISSING"
[[accounts]]
name = "x"
provider = "lnvps"
nsec_file = "/definitely/not/here"
nsec_env = "ALSO"
"#;
    let e = errors(text, &no_env);
    assert_problem(&e, "request_timeout", "greater than zero");
    assert_problem(&e, "web.listen_address", "not an address:port");
    assert_problem(&e, "accounts[0].name", "1-64 characters");
    assert_problem(
        &e,
        "accounts[0].base_url",
        "plain http is only allowed to loopback",
    );
    assert_problem(&e, "accounts[0].nsec_env", "MISSING is not set");
    assert_problem(&e, "accounts[1].nsec_file", "not both");
    assert!(e.problems.len() >= 6, "{e}");
}

#[test]
fn key_problems_are_precise_and_never_echo_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.nsec");
    let text = GOOD.replace(
        "nsec_env = \"LNVPS_KEY\"",
        &format!("nsec_file = {:?}", missing.display().to_string()),
    );
    let e = errors(&text, &no_env);
    assert_problem(&e, "accounts[0].nsec_file", "cannot read");

    // A public key where the secret key belongs.
    let npub_file = dir.path().join("npub.txt");
    let npub = "npub1sn0wdenkukak0d9dfczzeacvhkrgz92ak56egt7vdgzn8pv2wfqqhrjdv9";
    std::fs::write(&npub_file, npub).expect("write");
    let text = GOOD.replace(
        "nsec_env = \"LNVPS_KEY\"",
        &format!("nsec_file = {:?}", npub_file.display().to_string()),
    );
    let e = errors(&text, &no_env);
    assert_problem(&e, "accounts[0].nsec_file", "public key");

    // Garbage: the message must not contain the file's content.
    let junk = "nsec1thisisnotavalidkeyatallbutlookssecret";
    let junk_file = dir.path().join("junk.nsec");
    std::fs::write(&junk_file, junk).expect("write");
    let text = GOOD.replace(
        "nsec_env = \"LNVPS_KEY\"",
        &format!("nsec_file = {:?}", junk_file.display().to_string()),
    );
    let e = errors(&text, &no_env);
    assert_problem(&e, "accounts[0].nsec_file", "not a valid Nostr secret key");
    assert!(!e.to_string().contains(junk), "secret echoed: {e}");
}

#[test]
fn nsec_and_hex_keys_both_load_from_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = nostr::Keys::generate();
    use nostr::ToBech32;
    for (i, form) in [
        keys.secret_key().to_bech32().expect("nsec"),
        keys.secret_key().to_secret_hex(),
    ]
    .into_iter()
    .enumerate()
    {
        let f = dir.path().join(format!("k{i}"));
        std::fs::write(&f, format!("{form}\n")).expect("write");
        let text = GOOD.replace(
            "nsec_env = \"LNVPS_KEY\"",
            &format!("nsec_file = {:?}", f.display().to_string()),
        );
        config::parse(&text, "test.toml", &no_env).expect("key loads");
    }
}

#[test]
fn syntax_errors_name_the_file() {
    let e = errors("[[accounts]\nname=", &no_env);
    assert!(
        e.to_string().starts_with("test.toml: not valid TOML"),
        "{e}"
    );
}

#[test]
fn check_config_command_exits_2_and_lists_problems() {
    let mut f = tempfile::NamedTempFile::new().expect("tmp");
    writeln!(
        f,
        "{}",
        GOOD.replace(
            "nsec_env = \"LNVPS_KEY\"",
            "nsec_env = \"VPSWATCH_TEST_UNSET_VAR\""
        ) + "[bogus]\n"
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .args(["check-config"])
        .arg(f.path())
        .env_remove("VPSWATCH_TEST_UNSET_VAR")
        .output()
        .expect("run vpswatch");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("accounts[0].nsec_env"), "{stderr}");
    assert!(stderr.contains("bogus: unknown key"), "{stderr}");

    let mut ok = tempfile::NamedTempFile::new().expect("tmp");
    write!(ok, "{GOOD}").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .args(["check-config"])
        .arg(ok.path())
        .env("LNVPS_KEY", HEX_KEY)
        .output()
        .expect("run vpswatch");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- StableVPS accounts ------------------------------------------------------------

const READ_KEY: &str = "svps_live_4ead00000000000000000000000000000001";
const FULL_KEY: &str = "svps_live_f01100000000000000000000000000000002";

fn stable_env(name: &str) -> Option<String> {
    match name {
        "SVPS_READ" => Some(READ_KEY.to_string()),
        "SVPS_FULL" => Some(FULL_KEY.to_string()),
        "LNVPS_KEY" => Some(HEX_KEY.to_string()),
        _ => None,
    }
}

const STABLE: &str = r#"
[web]
listen_address = "127.0.0.1:0"
[[accounts]]
name = "svps"
provider = "stablevps"
base_url = "http://127.0.0.1:1"
api_key_env = "SVPS_READ"
"#;

#[test]
fn stablevps_account_with_read_and_write_keys() {
    use vpswatch_providers::stablevps::ApiKeyHeader;
    use vpswatch_providers::Credentials;
    let c = config::parse(STABLE, "test.toml", &stable_env).expect("valid");
    match &c.accounts[0].credentials {
        Credentials::ApiKey {
            read,
            write,
            header,
        } => {
            assert_eq!(read.expose(), READ_KEY);
            assert!(write.is_none());
            assert_eq!(*header, ApiKeyHeader::Bearer, "bearer is the default");
        }
        other => panic!("wrong credentials: {other:?}"),
    }
    let text =
        STABLE.to_string() + "write_api_key_env = \"SVPS_FULL\"\nauth_header = \"x-api-key\"\n";
    let c = config::parse(&text, "test.toml", &stable_env).expect("valid");
    match &c.accounts[0].credentials {
        Credentials::ApiKey { write, header, .. } => {
            assert_eq!(write.as_ref().map(|k| k.expose().as_str()), Some(FULL_KEY));
            assert_eq!(*header, ApiKeyHeader::XApiKey);
        }
        other => panic!("wrong credentials: {other:?}"),
    }
    // Neither key shows up when the configuration is printed.
    let printed = format!("{c:?}");
    assert!(
        !printed.contains(READ_KEY) && !printed.contains(FULL_KEY),
        "{printed}"
    );
    // The default base URL is the provider's.
    let text = STABLE.replace("base_url = \"http://127.0.0.1:1\"\n", "");
    let c = config::parse(&text, "test.toml", &stable_env).expect("valid");
    assert_eq!(c.accounts[0].base_url.as_str(), "https://stablevps.com/");
}

#[test]
fn stablevps_key_problems_name_their_key() {
    // Nostr keys on a StableVPS account, and no API key.
    let text = STABLE.replace("api_key_env = \"SVPS_READ\"", "nsec_env = \"LNVPS_KEY\"");
    let e = errors(&text, &stable_env);
    assert_problem(&e, "accounts[0].nsec_env", "not used by stablevps accounts");
    assert_problem(&e, "accounts[0].api_key_file", "missing");
    // API key settings on an LNVPS account.
    let text = GOOD.to_string() + "api_key_env = \"SVPS_READ\"\nauth_header = \"bearer\"\n";
    let e = errors(&text, &stable_env);
    assert_problem(&e, "accounts[0].api_key_env", "only applies to stablevps");
    assert_problem(&e, "accounts[0].auth_header", "only applies to stablevps");
    // Both sources, an unset write variable, a bad header style, a BTC unit.
    let text = STABLE.to_string()
        + "api_key_file = \"/x\"\nwrite_api_key_env = \"UNSET\"\nbtc_amount_unit = \"sat\"\n";
    let e = errors(&text, &stable_env);
    assert_problem(&e, "accounts[0].api_key_file", "not both");
    assert_problem(&e, "accounts[0].write_api_key_env", "UNSET is not set");
    assert_problem(&e, "accounts[0].btc_amount_unit", "only applies to lnvps");
    let text = STABLE.to_string() + "auth_header = \"basic\"\n";
    let e = errors(&text, &stable_env);
    assert_problem(&e, "accounts[0].auth_header", "unknown variant");
}

#[test]
fn stablevps_key_files_are_checked_and_never_echoed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.key");
    let secret = "svps_live_secret with a space";
    std::fs::write(&bad, secret).expect("write");
    let text = STABLE.replace(
        "api_key_env = \"SVPS_READ\"",
        &format!("api_key_file = {:?}", bad.display().to_string()),
    );
    let e = errors(&text, &stable_env);
    assert_problem(&e, "accounts[0].api_key_file", "contains spaces");
    assert!(!e.to_string().contains("secret with"), "key echoed: {e}");
    let nostr = dir.path().join("nostr.key");
    std::fs::write(&nostr, "nsec1abcdefghij").expect("write");
    let text = STABLE.replace(
        "api_key_env = \"SVPS_READ\"",
        &format!(
            "write_api_key_file = {:?}\napi_key_env = \"SVPS_READ\"",
            nostr.display().to_string()
        ),
    );
    let e = errors(&text, &stable_env);
    assert_problem(&e, "accounts[0].write_api_key_file", "holds a Nostr key");
    // A key from a file, with a trailing newline, loads.
    let good = dir.path().join("good.key");
    std::fs::write(&good, format!("{FULL_KEY}\n")).expect("write");
    let text = STABLE.replace(
        "api_key_env = \"SVPS_READ\"",
        &format!("api_key_file = {:?}", good.display().to_string()),
    );
    config::parse(&text, "test.toml", &stable_env).expect("key file loads");
}

#[test]
fn stablevps_plan_table_overrides() {
    use vpswatch_providers::runway::BillingPeriod;
    let text = STABLE.to_string()
        + r#"
[providers.stablevps]
requests_per_minute = 120
[providers.stablevps.plans.prime]
cpus = 3
cycles = { monthly = { price = 21.0 } }
[providers.stablevps.plans.mega]
memory_bytes = 17179869184
cycles = { quarterly = { price = 90.0, period = "3 months" }, weekly = { price = 5, period = "7d" } }
"#;
    // The [providers…] tables come after [[accounts]] in this text; TOML puts them at
    // the top level all the same.
    let c = config::parse(&text, "test.toml", &stable_env).expect("valid");
    let prime = &c.stablevps_plans["prime"];
    assert_eq!(prime.cpus, Some(3.0));
    assert_eq!(prime.cycles["monthly"].price, 21.0);
    assert_eq!(prime.cycles["monthly"].period, BillingPeriod::Months(1));
    assert_eq!(
        prime.cycles["yearly"].price, 194.90,
        "untouched built-in value"
    );
    assert_eq!(prime.memory_bytes, Some(4.0 * 1024.0 * 1024.0 * 1024.0));
    let mega = &c.stablevps_plans["mega"];
    assert_eq!(mega.cycles["quarterly"].period, BillingPeriod::Months(3));
    assert_eq!(
        mega.cycles["weekly"].period,
        BillingPeriod::Seconds(7 * 86_400)
    );
    assert_eq!(
        c.limits(vpswatch_model::account::ProviderKind::Stablevps)
            .requests_per_minute,
        120
    );

    let text = STABLE.to_string()
        + r#"
[providers.stablevps.plans.mega]
colour = "red"
cpus = -1
cycles = { quarterly = { price = 90.0 }, monthly = { period = "30 minutes" }, yearly = { price = "cheap" } }
"#;
    let e = errors(&text, &stable_env);
    assert_problem(&e, "providers.stablevps.plans.mega.colour", "unknown key");
    assert_problem(
        &e,
        "providers.stablevps.plans.mega.cycles.yearly.price",
        "invalid type",
    );
    let text = STABLE.to_string()
        + r#"
[providers.stablevps.plans.mega]
cpus = -1
cycles = { quarterly = { price = 90.0 }, monthly = { period = "30 minutes" } }
"#;
    let e = errors(&text, &stable_env);
    assert_problem(&e, "providers.stablevps.plans.mega.cpus", "at least 0");
    assert_problem(
        &e,
        "providers.stablevps.plans.mega.cycles.quarterly.period",
        "only monthly and yearly have a default",
    );
    assert_problem(
        &e,
        "providers.stablevps.plans.mega.cycles.monthly.period",
        "shorter than one hour",
    );
    assert_problem(
        &e,
        "providers.stablevps.plans.mega.cycles.monthly.price",
        "needs a price",
    );
}

#[test]
fn watchdog_rules_are_validated_with_key_paths() {
    let text = format!(
        r#"{GOOD}
[watchdog]
alertmanager_url = "ftp://am.example"
[[rules]]
name = "typo"
condition = "probe_failng"
[[rules]]
name = "cpu"
condition = "cpu_above"
threshold = 1.5
[[rules]]
name = "api"
condition = "provider_unreachable"
action = "reboot"
[[rules]]
name = "restart-stopped"
condition = "vm_not_running"
action = "start"
[[rules]]
name = "reboot-stopped"
condition = "vm_not_running"
action = "reboot"
keep_running = true
[[rules]]
name = "cpu"
condition = "memory_above"
threshold = 0.9
escalate = ["stop_start"]
[[rules]]
name = "ok"
condition = "probe_failing"
action = "reboot"
max_actions = 0
patience = "0s"
colour = "red"
[[maintenance]]
name = "weekly"
days = ["sun"]
start = "02:00"
end = "04:00"
timezone = "Europe/Berln"
"#
    );
    let e = errors(&text, &env_with_key);
    assert_problem(&e, "watchdog.alertmanager_url", "not http or https");
    assert_problem(
        &e,
        "rules[0].condition",
        "\"probe_failng\" is not a condition",
    );
    assert_problem(&e, "rules[1].threshold", "1.5 is not a ratio");
    assert_problem(&e, "rules[2].action", "whole account");
    assert_problem(&e, "rules[3].keep_running", "cannot tell a crash");
    assert_problem(&e, "rules[4].action", "can only be started");
    assert_problem(&e, "rules[5].escalate", "need a first `action`");
    assert_problem(&e, "rules[6].max_actions", "at least 1");
    assert_problem(&e, "rules[6].patience", "greater than zero");
    assert_problem(&e, "rules[6].colour", "unknown key");
    assert_problem(&e, "maintenance[0].timezone", "Europe/Berln");

    // Through the binary: exit 2, every problem listed.
    let mut f = tempfile::NamedTempFile::new().expect("temp");
    f.write_all(text.as_bytes()).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .arg("check-config")
        .arg(f.path())
        .env("LNVPS_KEY", HEX_KEY)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rules[3].keep_running"), "{stderr}");
    assert!(stderr.contains("maintenance[0].timezone"), "{stderr}");
}

#[test]
fn a_sound_rule_set_loads_and_duplicate_names_are_refused() {
    let good = format!(
        r#"{GOOD}
[[rules]]
name = "ssh"
condition = "probe_failing"
for = "2m"
action = "reboot"
escalate = ["stop_start"]
[[rules]]
name = "down"
condition = "vm_not_running"
action = "start"
keep_running = true
[rules.match]
names = ["web-*"]
[[rules]]
name = "key"
condition = "api_key_expiring"
within = "14d"
"#
    );
    let c = config::parse(&good, "test.toml", &env_with_key).expect("valid");
    assert_eq!(c.watchdog.rules.len(), 3);
    assert_eq!(c.watchdog.rules[0].ladder.len(), 2);
    assert_eq!(c.watchdog.rules[0].failures, 3, "default N");
    assert_eq!(c.watchdog.rules[0].recoveries, 2, "default M");
    let dup = format!("{good}[[rules]]\nname = \"ssh\"\ncondition = \"vm_not_running\"\n");
    let e = errors(&dup, &env_with_key);
    assert_problem(&e, "rules[3].name", "already used by rules[0]");
}

#[test]
fn journal_size_is_configurable_and_must_be_positive() {
    let c = config::parse(GOOD, "test.toml", &env_with_key).expect("valid");
    assert_eq!(c.watchdog.journal_entries, 10_000);
    let text = format!("{GOOD}[watchdog]\njournal_entries = 250\n");
    let c = config::parse(&text, "test.toml", &env_with_key).expect("valid");
    assert_eq!(c.watchdog.journal_entries, 250);
    let text = format!("{GOOD}[watchdog]\njournal_entries = 0\n");
    assert_problem(
        &errors(&text, &env_with_key),
        "watchdog.journal_entries",
        "at least 1",
    );
}

// ---- Bounded reads of the configuration and the files it names ---------------------

/// Peak resident memory a refused file may cost the binary; far above what `check-config`
/// needs (~15 MiB), far below what reading /dev/zero reaches in a second.
const MAX_PEAK_KIB: u64 = 128 * 1024;

/// How the binary ended: exit code, stderr, and the highest VmHWM seen while it ran.
struct Watched {
    code: Option<i32>,
    stderr: String,
    peak_kib: u64,
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the real binary and watches it: it must exit within a generous deadline and
/// stay under [`MAX_PEAK_KIB`]; past either it is killed (so a regression cannot take the
/// test host's memory) and the test fails.
fn run_watched(args: &[&std::ffi::OsStr]) -> Watched {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let mut child = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run vpswatch");
    let mut pipe = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);
    let mut peak_kib = 0;
    let status = loop {
        if let Some(kib) = vm_hwm_kib(child.id()) {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if peak_kib > MAX_PEAK_KIB || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vpswatch {args:?} killed after {:?}: still running, peak RSS {peak_kib} KiB \
                 (limit {MAX_PEAK_KIB} KiB)",
                start.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Watched {
        code: status.code(),
        stderr: reader.join().expect("stderr reader"),
        peak_kib,
    }
}

fn make_fifo(path: &std::path::Path) {
    let made = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
}

/// `check-config` and `run` given /dev/zero, a FIFO with no writer, a directory and a
/// 2 MiB file as the configuration: each refused at once (exit 2) with the file and the
/// limit named, without reading it into memory or blocking on it.
#[test]
fn oversized_and_special_config_files_are_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("config.fifo");
    make_fifo(&fifo);
    let big = dir.path().join("big.toml");
    // Valid TOML all along (a comment), so only the size can be the problem.
    std::fs::write(&big, format!("# {}\n", "x".repeat(2 * 1024 * 1024))).expect("write");
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
    for (file, why) in [
        (std::path::Path::new("/dev/zero"), "character device"),
        (link.as_path(), "character device"),
        (fifo.as_path(), "FIFO"),
        (dir.path(), "directory"),
        (big.as_path(), "larger than 1 MiB"),
    ] {
        for command in [
            vec!["check-config".as_ref(), file.as_os_str()],
            vec!["run".as_ref(), "--config".as_ref(), file.as_os_str()],
        ] {
            let w = run_watched(&command);
            assert_eq!(w.code, Some(2), "{command:?}: {}", w.stderr);
            let shown = file.display().to_string();
            assert!(
                w.stderr.contains(&shown) && w.stderr.contains(why),
                "{command:?}: {}",
                w.stderr
            );
            assert!(
                w.stderr.contains("1 MiB"),
                "the limit is named: {}",
                w.stderr
            );
            assert!(w.peak_kib < MAX_PEAK_KIB, "{command:?}: {} KiB", w.peak_kib);
        }
    }
}

/// Every `*_file` key pointing at /dev/zero, then at a 100 KiB file: exit 2 at once,
/// each problem under its key path with the limit (secret files 64 KiB; `ca_file`, a
/// certificate bundle, 1 MiB, so it gets a 2 MiB file).
#[test]
fn secret_and_certificate_files_are_read_with_a_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |secret: &std::path::Path, ca: &std::path::Path| {
        format!(
            r#"
[[accounts]]
name = "ln"
provider = "lnvps"
base_url = "http://127.0.0.1:1"
nsec_file = {secret:?}

[[accounts]]
name = "sv"
provider = "stablevps"
base_url = "http://127.0.0.1:1"
api_key_file = {secret:?}
write_api_key_file = {secret:?}

[[rules]]
name = "renew"
condition = "expires_within"
within = "3d"
action = "renew"
[rules.match]
provider = "lnvps"
[rules.renew]
mode = "nwc"
nwc_uri_file = {secret:?}
max_per_renewal_sats = 1000
max_per_month_sats = 3000

[email]
smtp_host = "127.0.0.1"
username = "u"
password_file = {secret:?}
ca_file = {ca:?}
from = "vpswatch@example.test"
to = ["ops@example.test"]
"#
        )
    };
    let keys = [
        "accounts[0].nsec_file",
        "accounts[1].api_key_file",
        "accounts[1].write_api_key_file",
        "rules[0].renew.nwc_uri_file",
        "email.password_file",
        "email.ca_file",
    ];
    // A 100 KiB key file: a key line padded with spaces, so the old code would have
    // read it and complained about the content rather than the size.
    let big_secret = dir.path().join("big.key");
    std::fs::write(
        &big_secret,
        format!("{HEX_KEY}{}", " ".repeat(100 * 1024 - HEX_KEY.len())),
    )
    .expect("write");
    let big_ca = dir.path().join("big.pem");
    std::fs::write(&big_ca, " ".repeat(2 * 1024 * 1024)).expect("write");
    let zero = std::path::Path::new("/dev/zero");
    for (secret, ca, why) in [
        (zero, zero, "character device"),
        (big_secret.as_path(), big_ca.as_path(), "larger than"),
    ] {
        let file = dir.path().join("vpswatch.toml");
        std::fs::write(&file, config(secret, ca)).expect("write");
        for command in [
            vec!["check-config".as_ref(), file.as_os_str()],
            vec!["run".as_ref(), "--config".as_ref(), file.as_os_str()],
        ] {
            let w = run_watched(&command);
            assert_eq!(w.code, Some(2), "{command:?}: {}", w.stderr);
            assert!(w.peak_kib < MAX_PEAK_KIB, "{command:?}: {} KiB", w.peak_kib);
            for key in keys {
                let limit = if key == "email.ca_file" {
                    "1 MiB"
                } else {
                    "64 KiB"
                };
                assert!(
                    w.stderr
                        .lines()
                        .any(|l| l.contains(&format!("{key}: cannot read"))
                            && l.contains(why)
                            && l.contains(limit)),
                    "{command:?}: no {why:?} / {limit} problem at {key}:\n{}",
                    w.stderr
                );
            }
        }
    }
    // A symlink to a regular key file is fine.
    let key = dir.path().join("real.key");
    std::fs::write(&key, HEX_KEY).expect("write");
    let link = dir.path().join("link.key");
    std::os::unix::fs::symlink(&key, &link).expect("symlink");
    let text = GOOD.replace(
        "nsec_env = \"LNVPS_KEY\"",
        &format!("nsec_file = {:?}", link.display().to_string()),
    );
    config::parse(&text, "test.toml", &no_env).expect("a link to a key file loads");
}

/// `[cluster]` through `check-config`: every problem with its key path, the etcd
/// password never echoed; a good section passes.
#[cfg(feature = "cluster")]
#[test]
fn check_config_checks_the_cluster_section() {
    let dir = tempfile::tempdir().expect("tmp");
    let password = dir.path().join("etcd.password");
    std::fs::write(&password, "hunter2-etcd-secret\n").expect("password");
    let bad = format!(
        "{GOOD}[cluster]\nendpoints = [\"etcd:2379\"]\nmember = \"a b\"\nlease_ttl = \"1s\"\n\
         user = \"vpswatch\"\npassword_file = \"{}\"\ncert_file = \"/nonexistent/client.pem\"\n\
         sorce_address = \"127.0.0.2\"\n",
        password.display()
    );
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, bad).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .args(["check-config"])
        .arg(&path)
        .env("LNVPS_KEY", HEX_KEY)
        .output()
        .expect("run vpswatch");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "cluster.endpoints[0]",
        "cluster.member",
        "cluster.lease_ttl",
        "cluster.key_file",
        "cluster.sorce_address: unknown key",
    ] {
        assert!(stderr.contains(key), "{key} missing:\n{stderr}");
    }
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let good = format!(
        "{GOOD}[cluster]\nendpoints = [\"http://127.0.0.1:2379\"]\nmember = \"a\"\n\
         user = \"vpswatch\"\npassword_file = \"{}\"\nsource_address = \"127.0.0.2\"\n",
        password.display()
    );
    let path = dir.path().join("good.toml");
    std::fs::write(&path, good).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_vpswatch"))
        .args(["check-config"])
        .arg(&path)
        .env("LNVPS_KEY", HEX_KEY)
        .output()
        .expect("run vpswatch");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
