//! The standard `process_*` series every Prometheus exporter serves (CPU seconds, resident
//! and virtual memory, open and maximum file descriptors, start time), read from
//! `/proc/self` as the official client libraries do.
//!
//! The `prometheus` crate's process collector would pull in `procfs`; these six values are
//! a few lines of parsing. The exposition is cached (see `encoder`), so the values are
//! re-read on a short timer rather than per scrape; on a system without `/proc` the
//! families are simply absent.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::defs;
use super::families::FamilySet;
use super::source::FamilySource;

/// How often the values are refreshed on /metrics.
pub const REFRESH: Duration = Duration::from_secs(10);

/// One reading of the process' figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub start_time_seconds: f64,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
}

/// Parses `/proc/<pid>/stat` (fields after the command name) and `/proc/stat`'s `btime`.
pub fn parse_stat(stat: &str, proc_stat: &str, ticks: f64, page: f64) -> Option<Reading> {
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    // Field 3 (state) is f[0]: utime 14, stime 15, starttime 22, vsize 23, rss 24.
    let (utime, stime, start, vsize, rss) = (num(11)?, num(12)?, num(19)?, num(20)?, num(21)?);
    let btime = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())?;
    Some(Reading {
        cpu_seconds: (utime + stime) / ticks,
        resident_bytes: rss * page,
        virtual_bytes: vsize,
        start_time_seconds: btime + start / ticks,
        open_fds: None,
        max_fds: None,
    })
}

/// The soft limit on open files from `/proc/<pid>/limits`.
pub fn parse_max_fds(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(f64::INFINITY),
        n => n.parse().ok(),
    }
}

fn sysconf(name: libc::c_int) -> Option<f64> {
    // SAFETY: sysconf only reads a system constant; it has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as f64)
}

/// Reads this process' figures now.
pub fn read() -> Option<Reading> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let proc_stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks = sysconf(libc::_SC_CLK_TCK)?;
    let page = sysconf(libc::_SC_PAGESIZE)?;
    let mut r = parse_stat(&stat, &proc_stat, ticks, page)?;
    r.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    r.max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| parse_max_fds(&l));
    Some(r)
}

/// The process families as a source of the encoder, refreshed every [`REFRESH`].
pub struct ProcessMetrics {
    tick: watch::Sender<u64>,
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        Self {
            tick: watch::channel(0).0,
        }
    }
}

impl ProcessMetrics {
    /// Asks the encoder for a fresh rendering every [`REFRESH`] until cancelled.
    pub async fn run(self: std::sync::Arc<Self>, cancel: CancellationToken) {
        let mut t = tokio::time::interval(REFRESH);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = t.tick() => self.tick.send_modify(|g| *g += 1),
            }
        }
    }
}

impl FamilySource for ProcessMetrics {
    fn render(&self, set: &mut FamilySet) {
        let Some(r) = read() else { return };
        set.counter(&defs::PROCESS_CPU, &[], r.cpu_seconds);
        set.gauge(&defs::PROCESS_RESIDENT_MEMORY, &[], r.resident_bytes);
        set.gauge(&defs::PROCESS_VIRTUAL_MEMORY, &[], r.virtual_bytes);
        if let Some(n) = r.open_fds {
            set.gauge(&defs::PROCESS_OPEN_FDS, &[], n);
        }
        if let Some(n) = r.max_fds {
            set.gauge(&defs::PROCESS_MAX_FDS, &[], n);
        }
        set.gauge(&defs::PROCESS_START_TIME, &[], r.start_time_seconds);
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let stat = "4242 (vps watch) (x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 50 0 0 20 0 9 0 12345 104857600 2560 18446744073709551615";
        let r = parse_stat(stat, "cpu 1 2\nbtime 1700000000\n", 100.0, 4096.0).expect("parsed");
        assert_eq!(r.cpu_seconds, 3.0);
        assert_eq!(r.virtual_bytes, 104_857_600.0);
        assert_eq!(r.resident_bytes, 2560.0 * 4096.0);
        assert_eq!(r.start_time_seconds, 1_700_000_000.0 + 123.45);
    }

    #[test]
    fn max_fds_is_the_soft_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024.0));
    }

    #[test]
    fn this_process_can_be_read() {
        let r = read().expect("/proc is readable on Linux");
        assert!(r.resident_bytes > 0.0 && r.open_fds.unwrap_or(0.0) > 0.0);
    }
}
