//! Maintenance windows: times, in a named time zone, when the watchdog must not act on
//! the VMs a window selects (docs/watchdog.md). The engine asks
//! [`Maintenance::active_for`] before every action and counts and logs a skip.
//!
//! Two ways to write a window, exactly one per window:
//! - `days` + `start` + `end`: local wall-clock times (`"02:00"`, `end` may be `"24:00"`).
//!   `end` before `start` spans midnight (23:00–01:00); `days` names the day the window
//!   *starts* on (empty = every day).
//! - `cron` + `duration`: a five-field cron schedule (minute hour day-of-month month
//!   day-of-week; names like `SAT` allowed) for the start, and how long it lasts.
//!
//! Time zones come from the IANA database embedded by `chrono-tz` (no system files), so
//! a window means the same on every host. Daylight saving time, for the `start`/`end`
//! form: a start or end that falls into a skipped hour (02:30 on a spring-forward night
//! in Europe/Berlin) moves to the end of the gap, the moment the clocks jump — a window
//! wholly inside the gap does not happen that night. In a repeated hour a start takes
//! the first pass and an end the second, so the window covers the whole repeated hour
//! instead of ending early or happening twice. Either way a maintenance window is never
//! shortened by a clock change beyond the hour that does not exist. The cron form follows
//! cron's (and `croner`'s) rules: a start time in a skipped hour fires when the gap
//! ends; in a repeated hour it fires once, on the first pass.
//!
//! Validation returns every problem with its key path (`maintenance[0].timezone`), as
//! the config loader reports them; evaluation never fails: a cron search that errors at
//! run time (validation rules that out) counts as *in maintenance*, the fail-safe side.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::Deserialize;

use super::selector::{Selector, SelectorConfig, Target};
use vpswatch_model::problem::Problem;

/// One `[[maintenance]]` table as written in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Reported when a skip is logged and counted.
    pub name: String,
    /// `mon` … `sun` (or full names), the day the window starts; empty = every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// Local start time, `HH:MM`.
    #[serde(default)]
    pub start: Option<String>,
    /// Local end time, `HH:MM` or `24:00`; before `start` = the next day.
    #[serde(default)]
    pub end: Option<String>,
    /// Five-field cron schedule of the start (instead of days/start/end).
    #[serde(default)]
    pub cron: Option<String>,
    /// How long a cron-started window lasts (`"2h"`, `"90m"`).
    #[serde(default)]
    pub duration: Option<String>,
    /// IANA time zone name.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Which VMs the window covers; empty = all.
    #[serde(default, rename = "match")]
    pub selector: SelectorConfig,
}

fn default_timezone() -> String {
    "UTC".into()
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            days: Vec::new(),
            start: None,
            end: None,
            cron: None,
            duration: None,
            timezone: default_timezone(),
            selector: SelectorConfig::default(),
        }
    }
}

/// Every problem in a list of windows, keys as `maintenance[i].field`; names must be
/// unique, since skips are reported by name.
pub fn validate(windows: &[MaintenanceConfig]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, w) in windows.iter().enumerate() {
        let path = format!("maintenance[{i}]");
        problems.extend(w.validate(&path));
        if w.name.is_empty() {
            continue;
        }
        if let Some(first) = seen.insert(w.name.as_str(), i) {
            problems.push(problem(
                &path,
                "name",
                format!(
                    "{:?} is already the name of maintenance[{first}]; names must be unique",
                    w.name
                ),
            ));
        }
    }
    problems
}

fn problem(path: &str, key: &str, message: impl Into<String>) -> Problem {
    Problem {
        path: if key.is_empty() {
            path.to_string()
        } else {
            format!("{path}.{key}")
        },
        message: message.into(),
    }
}

impl MaintenanceConfig {
    /// Every problem with this window, keys under `path` (e.g. `maintenance[0]`).
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        self.compile(path).err().unwrap_or_default()
    }

    /// The window, ready to evaluate, or every problem with it.
    pub fn compile(&self, path: &str) -> Result<MaintenanceWindow, Vec<Problem>> {
        let mut problems = Vec::new();
        if self.name.trim().is_empty() {
            problems.push(problem(path, "name", "a window needs a name"));
        }
        let tz = match Tz::from_str(&self.timezone) {
            Ok(tz) => Some(tz),
            Err(_) => {
                problems.push(problem(
                    path,
                    "timezone",
                    format!("{:?} is not a known time zone", self.timezone),
                ));
                None
            }
        };
        let clock_form = !self.days.is_empty() || self.start.is_some() || self.end.is_some();
        let cron_form = self.cron.is_some() || self.duration.is_some();
        let schedule = match (clock_form, cron_form) {
            (true, true) => {
                problems.push(problem(
                    path,
                    "",
                    "give either days/start/end or cron/duration, not both",
                ));
                None
            }
            (false, false) => {
                problems.push(problem(
                    path,
                    "",
                    "no schedule: give start and end (local times like \"02:00\"), or cron and duration",
                ));
                None
            }
            (true, false) => self.clock_schedule(path, &mut problems),
            (false, true) => self.cron_schedule(path, tz, &mut problems),
        };
        match (problems.is_empty(), tz, schedule) {
            (true, Some(tz), Some(schedule)) => Ok(MaintenanceWindow {
                name: self.name.clone(),
                tz,
                schedule,
                selector: Selector::new(&self.selector),
            }),
            _ => Err(problems),
        }
    }

    fn clock_schedule(&self, path: &str, problems: &mut Vec<Problem>) -> Option<Schedule> {
        let mut days = [false; 7];
        for (i, d) in self.days.iter().enumerate() {
            match Weekday::from_str(d.trim()) {
                Ok(w) => days[w.num_days_from_monday() as usize] = true,
                Err(_) => problems.push(problem(
                    path,
                    &format!("days[{i}]"),
                    format!("{d:?} is not a day of the week (mon, tue, wed, thu, fri, sat, sun)"),
                )),
            }
        }
        if self.days.is_empty() {
            days = [true; 7];
        }
        let mut time = |key: &str, value: &Option<String>, allow_24: bool| match value {
            None => {
                problems.push(problem(
                    path,
                    key,
                    format!("missing: give the local {key} time (HH:MM)"),
                ));
                None
            }
            Some(v) => match parse_minutes(v, allow_24) {
                Some(m) => Some(m),
                None => {
                    problems.push(problem(
                        path,
                        key,
                        format!(
                            "{v:?} is not a time of day like \"02:00\" (24-hour HH:MM{})",
                            if allow_24 { ", or 24:00" } else { "" }
                        ),
                    ));
                    None
                }
            },
        };
        let start = time("start", &self.start, false);
        let end = time("end", &self.end, true);
        let (start, end) = (start?, end?);
        if start == end {
            problems.push(problem(
                path,
                "end",
                "equals start: a window needs a length (00:00 to 24:00 for a whole day)",
            ));
            return None;
        }
        Some(Schedule::Clock { days, start, end })
    }

    fn cron_schedule(
        &self,
        path: &str,
        tz: Option<Tz>,
        problems: &mut Vec<Problem>,
    ) -> Option<Schedule> {
        let duration = match &self.duration {
            None => {
                problems.push(problem(
                    path,
                    "duration",
                    "missing: a cron window needs a duration (e.g. \"2h\")",
                ));
                None
            }
            Some(d) => match humantime::parse_duration(d.trim()) {
                Ok(v) if v.is_zero() => {
                    problems.push(problem(path, "duration", "must be longer than 0"));
                    None
                }
                Ok(v) => match chrono::Duration::from_std(v) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        problems.push(problem(path, "duration", format!("{d:?} is too long")));
                        None
                    }
                },
                Err(e) => {
                    problems.push(problem(
                        path,
                        "duration",
                        format!("{d:?} is not a duration like \"2h\" or \"90m\": {e}"),
                    ));
                    None
                }
            },
        };
        let cron = match &self.cron {
            None => {
                problems.push(problem(
                    path,
                    "cron",
                    "missing: a duration needs a cron schedule of the start (e.g. \"0 2 * * SAT\")",
                ));
                None
            }
            Some(c) => match cron_parser().parse(c.trim()) {
                Ok(cron) => Some(cron),
                Err(e) => {
                    problems.push(problem(
                        path,
                        "cron",
                        format!("{c:?} is not a five-field cron schedule (minute hour day-of-month month day-of-week): {e}"),
                    ));
                    None
                }
            },
        };
        let (cron, duration) = (cron?, duration?);
        // A pattern that parses but never fires (31 February) would make every
        // evaluation error; reject it here instead.
        if let Some(tz) = tz {
            let probe = tz.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).earliest();
            if probe.is_some_and(|p| cron.find_next_occurrence(&p, true).is_err()) {
                problems.push(problem(
                    path,
                    "cron",
                    format!("{:?} never fires", self.cron.as_deref().unwrap_or("")),
                ));
                return None;
            }
        }
        Some(Schedule::Cron {
            cron: Box::new(cron),
            duration,
        })
    }
}

/// Standard cron: minute granularity, no seconds or years field.
fn cron_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
}

/// `HH:MM` → minutes after midnight; `24:00` only when `allow_24`.
fn parse_minutes(s: &str, allow_24: bool) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let digits = |x: &str, max_len| {
        !x.is_empty() && x.len() <= max_len && x.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 2) || !digits(m, 2) || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) if allow_24 => Some(24 * 60),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

#[derive(Debug, Clone)]
enum Schedule {
    /// `days` indexed Monday = 0; minutes after local midnight, `end` up to 1440.
    Clock {
        days: [bool; 7],
        start: u32,
        end: u32,
    },
    Cron {
        // Boxed: a parsed pattern is far larger than the clock form.
        cron: Box<Cron>,
        duration: chrono::Duration,
    },
}

/// Which side of a window a wall-clock time is resolved for.
#[derive(Clone, Copy)]
enum Edge {
    Start,
    End,
}

/// The instant `date` + `minutes` (may exceed a day) means in `tz`, by the module's
/// DST rules: repeated → first pass for a start, second for an end; skipped → the
/// moment the gap ends.
fn local_instant(tz: &Tz, date: NaiveDate, minutes: u32, edge: Edge) -> Option<DateTime<Utc>> {
    let date = date.checked_add_days(chrono::Days::new(u64::from(minutes / 1440)))?;
    let minutes = minutes % 1440;
    let naive = date.and_hms_opt(minutes / 60, minutes % 60, 0)?;
    let instant = match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t,
        LocalResult::Ambiguous(first, second) => match edge {
            Edge::Start => first,
            Edge::End => second,
        },
        // The first wall-clock minute after the gap is the instant the clocks jump.
        LocalResult::None => (1..=24 * 60).find_map(|k| {
            tz.from_local_datetime(&(naive + chrono::Duration::minutes(k)))
                .earliest()
        })?,
    };
    Some(instant.with_timezone(&Utc))
}

/// A compiled maintenance window.
#[derive(Debug, Clone)]
pub struct MaintenanceWindow {
    name: String,
    tz: Tz,
    schedule: Schedule,
    selector: Selector,
}

impl MaintenanceWindow {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the window is open at `t` (for any VM: see [`applies_to`](Self::applies_to)).
    pub fn active_at(&self, t: DateTime<Utc>) -> bool {
        match &self.schedule {
            Schedule::Clock { days, start, end } => {
                let today = t.with_timezone(&self.tz).date_naive();
                // A window that started yesterday may still be open (it spans midnight).
                let end = if end <= start { end + 1440 } else { *end };
                [today.pred_opt(), Some(today)]
                    .into_iter()
                    .flatten()
                    .filter(|d| days[d.weekday().num_days_from_monday() as usize])
                    .any(|d| {
                        let s = local_instant(&self.tz, d, *start, Edge::Start);
                        let e = local_instant(&self.tz, d, end, Edge::End);
                        matches!((s, e), (Some(s), Some(e)) if s <= t && t < e)
                    })
            }
            Schedule::Cron { cron, duration } => {
                // The latest start at or before t; an earlier one ends no later.
                let local = t.with_timezone(&self.tz);
                match cron.find_previous_occurrence(&local, true) {
                    Ok(start) => t < start.with_timezone(&Utc) + *duration,
                    Err(e) => {
                        tracing::warn!(window = %self.name, error = %e, "maintenance cron could not be evaluated; treating the window as open");
                        true
                    }
                }
            }
        }
    }

    /// Whether the window covers `target` (its `match` selector).
    pub fn applies_to(&self, target: Target<'_>) -> bool {
        self.selector.matches(target)
    }
}

/// Every configured window.
#[derive(Debug, Clone, Default)]
pub struct Maintenance {
    windows: Vec<MaintenanceWindow>,
}

impl Maintenance {
    /// Compiles the config's windows, or returns every problem (see [`validate`]).
    pub fn new(windows: &[MaintenanceConfig]) -> Result<Maintenance, Vec<Problem>> {
        let problems = validate(windows);
        if !problems.is_empty() {
            return Err(problems);
        }
        let windows = windows
            .iter()
            .enumerate()
            .map(|(i, w)| w.compile(&format!("maintenance[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Maintenance { windows })
    }

    pub fn windows(&self) -> &[MaintenanceWindow] {
        &self.windows
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The name of the first window that covers `target` and is open at `t`.
    pub fn active_for(&self, target: Target<'_>, t: DateTime<Utc>) -> Option<&str> {
        self.windows
            .iter()
            .find(|w| w.applies_to(target) && w.active_at(t))
            .map(MaintenanceWindow::name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpswatch_model::account::ProviderKind;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn window(toml_text: &str) -> MaintenanceWindow {
        let c: MaintenanceConfig = toml::from_str(toml_text).expect("toml");
        c.compile("maintenance[0]")
            .unwrap_or_else(|p| panic!("{p:?}"))
    }

    /// (instant, expected) rows against one window.
    fn check(w: &MaintenanceWindow, rows: &[(&str, bool)]) {
        for (t, want) in rows {
            assert_eq!(w.active_at(utc(t)), *want, "{} at {t}", w.name());
        }
    }

    #[test]
    fn spans_midnight_and_belongs_to_its_start_day() {
        let w = window("name = \"night\"\ndays = [\"fri\"]\nstart = \"23:00\"\nend = \"01:00\"\n");
        // 2026-06-05 is a Friday.
        check(
            &w,
            &[
                ("2026-06-05T22:59:59Z", false),
                ("2026-06-05T23:00:00Z", true),
                ("2026-06-06T00:30:00Z", true),
                ("2026-06-06T01:00:00Z", false),
                ("2026-06-06T23:30:00Z", false),
                ("2026-06-04T23:30:00Z", false),
            ],
        );
        let every_day = window("name = \"n\"\nstart = \"22:00\"\nend = \"00:30\"\n");
        check(
            &every_day,
            &[
                ("2026-06-02T00:10:00Z", true),
                ("2026-06-02T21:59:00Z", false),
            ],
        );
        let whole_day =
            window("name = \"d\"\ndays = [\"Sunday\"]\nstart = \"00:00\"\nend = \"24:00\"\n");
        check(
            &whole_day,
            &[
                ("2026-06-07T00:00:00Z", true),
                ("2026-06-07T23:59:59Z", true),
                ("2026-06-08T00:00:00Z", false),
            ],
        );
    }

    #[test]
    fn weekdays_are_local_days() {
        let w = window(
            "name = \"sat\"\ndays = [\"sat\"]\nstart = \"00:00\"\nend = \"02:00\"\ntimezone = \"Europe/Berlin\"\n",
        );
        check(
            &w,
            &[
                // Winter, UTC+1: Saturday 00:30 local is Friday 23:30 UTC.
                ("2026-01-09T23:30:00Z", true),
                ("2026-01-09T22:59:00Z", false),
                ("2026-01-10T00:59:00Z", true),
                ("2026-01-10T01:00:00Z", false),
                // Sunday 00:30 local.
                ("2026-01-10T23:30:00Z", false),
                // Summer, UTC+2.
                ("2026-06-05T22:30:00Z", true),
                ("2026-06-05T21:59:00Z", false),
                ("2026-06-06T00:00:00Z", false),
            ],
        );
        let tokyo = window(
            "name = \"mon\"\ndays = [\"mon\"]\nstart = \"09:00\"\nend = \"10:00\"\ntimezone = \"Asia/Tokyo\"\n",
        );
        // Monday 09:30 in Tokyo is Monday 00:30 UTC; Sunday 00:30 UTC is not Monday there.
        check(
            &tokyo,
            &[
                ("2026-06-08T00:30:00Z", true),
                ("2026-06-07T00:30:00Z", false),
            ],
        );
    }

    #[test]
    fn spring_forward_moves_starts_out_of_the_gap() {
        // Europe/Berlin skips 02:00–03:00 on 2026-03-29 (01:00 UTC).
        let w = window(
            "name = \"patch\"\nstart = \"02:00\"\nend = \"04:30\"\ntimezone = \"Europe/Berlin\"\n",
        );
        check(
            &w,
            &[
                ("2026-03-29T00:59:00Z", false), // 01:59 CET
                ("2026-03-29T01:00:00Z", true),  // 03:00 CEST
                ("2026-03-29T02:29:00Z", true),  // 04:29 CEST
                ("2026-03-29T02:30:00Z", false),
                ("2026-03-28T01:00:00Z", true), // the day before: 02:00 CET
                ("2026-03-30T00:00:00Z", true), // the day after: 02:00 CEST
            ],
        );
        let inside = window(
            "name = \"gap\"\nstart = \"02:15\"\nend = \"02:45\"\ntimezone = \"Europe/Berlin\"\n",
        );
        let night = utc("2026-03-28T23:00:00Z");
        assert!(
            (0..240).all(|m| !inside.active_at(night + chrono::Duration::minutes(m))),
            "a window wholly inside the skipped hour does not happen that night"
        );
        check(&inside, &[("2026-03-30T00:20:00Z", true)]);
    }

    #[test]
    fn fall_back_covers_the_whole_repeated_hour() {
        // Europe/Berlin repeats 02:00–03:00 on 2026-10-25 (00:00–01:00 UTC CEST, then
        // 01:00–02:00 UTC CET).
        let w = window(
            "name = \"rep\"\nstart = \"02:10\"\nend = \"02:50\"\ntimezone = \"Europe/Berlin\"\n",
        );
        check(
            &w,
            &[
                ("2026-10-25T00:09:00Z", false),
                ("2026-10-25T00:10:00Z", true), // 02:10 CEST, first pass
                ("2026-10-25T00:55:00Z", true), // 02:55 CEST, between the passes
                ("2026-10-25T01:20:00Z", true), // 02:20 CET, second pass
                ("2026-10-25T01:49:00Z", true),
                ("2026-10-25T01:50:00Z", false), // 02:50 CET
            ],
        );
        let over = window(
            "name = \"o\"\nstart = \"01:00\"\nend = \"04:00\"\ntimezone = \"Europe/Berlin\"\n",
        );
        // 01:00 CEST = 23:00 UTC the day before; 04:00 CET = 03:00 UTC: four real hours.
        check(
            &over,
            &[
                ("2026-10-24T22:59:00Z", false),
                ("2026-10-24T23:00:00Z", true),
                ("2026-10-25T02:59:00Z", true),
                ("2026-10-25T03:00:00Z", false),
            ],
        );
    }

    #[test]
    fn cron_windows() {
        let w = window(
            "name = \"c\"\ncron = \"0 2 * * SAT\"\nduration = \"2h\"\ntimezone = \"Europe/Berlin\"\n",
        );
        check(
            &w,
            &[
                ("2026-06-06T00:00:00Z", true), // Saturday 02:00 CEST
                ("2026-06-06T01:59:59Z", true),
                ("2026-06-06T02:00:00Z", false),
                ("2026-06-05T23:59:00Z", false),
                ("2026-06-07T00:30:00Z", false), // Sunday
            ],
        );
        let late = window("name = \"l\"\ncron = \"30 23 * * *\"\nduration = \"1h\"\n");
        check(
            &late,
            &[
                ("2026-06-07T00:15:00Z", true),
                ("2026-06-07T00:30:00Z", false),
            ],
        );
        // A start in the skipped hour fires when the gap ends (03:00 CEST = 01:00 UTC).
        let gap = window(
            "name = \"g\"\ncron = \"30 2 * * *\"\nduration = \"1h\"\ntimezone = \"Europe/Berlin\"\n",
        );
        check(
            &gap,
            &[
                ("2026-03-29T00:59:00Z", false),
                ("2026-03-29T01:00:00Z", true),
                ("2026-03-29T01:59:00Z", true),
                ("2026-03-29T02:00:00Z", false),
            ],
        );
        // In the repeated hour it fires once, on the first pass.
        check(
            &gap,
            &[
                ("2026-10-25T00:30:00Z", true),  // 02:30 CEST
                ("2026-10-25T01:29:00Z", true),  // an hour later: 02:29 CET
                ("2026-10-25T01:30:00Z", false), // 02:30 CET: no second start
            ],
        );
    }

    #[test]
    fn selector_and_set_name_the_open_window() {
        let configs: Vec<MaintenanceConfig> =
            toml::from_str::<HashMap<String, Vec<MaintenanceConfig>>>(
                r#"
            [[maintenance]]
            name = "weekly-patching"
            days = ["sat", "sun"]
            start = "02:00"
            end = "04:30"
            timezone = "Europe/Berlin"
            [maintenance.match]
            accounts = ["main"]
            names = ["db-*"]
            [[maintenance]]
            name = "lnvps-nightly"
            start = "03:00"
            end = "03:30"
            [maintenance.match]
            provider = "lnvps"
            "#,
            )
            .expect("toml")
            .remove("maintenance")
            .expect("list");
        let m = Maintenance::new(&configs).expect("valid");
        let vm = |provider, account, name| Target {
            provider,
            account,
            vm: Some("1"),
            vm_name: Some(name),
        };
        let sat = utc("2026-06-06T00:30:00Z"); // Saturday 02:30 CEST
        let db = vm(ProviderKind::Stablevps, "main", "db-1");
        assert_eq!(m.active_for(db, sat), Some("weekly-patching"));
        assert_eq!(
            m.active_for(vm(ProviderKind::Stablevps, "main", "web-1"), sat),
            None
        );
        assert_eq!(
            m.active_for(vm(ProviderKind::Stablevps, "other", "db-1"), sat),
            None
        );
        assert_eq!(
            m.active_for(db, utc("2026-06-08T00:30:00Z")),
            None,
            "Monday"
        );
        let three = utc("2026-06-08T03:10:00Z");
        assert_eq!(
            m.active_for(vm(ProviderKind::Lnvps, "x", "web"), three),
            Some("lnvps-nightly")
        );
        assert_eq!(
            m.active_for(vm(ProviderKind::Stablevps, "x", "web"), three),
            None
        );
        assert!(m.windows()[0].applies_to(db));
        assert!(!m.windows()[1].applies_to(db));
    }

    fn problems_of(toml_text: &str) -> Vec<String> {
        let c: MaintenanceConfig = toml::from_str(toml_text).expect("toml");
        validate(&[c])
            .into_iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect()
    }

    #[test]
    fn invalid_inputs_name_the_key() {
        let rows: &[(&str, &[&str])] = &[
            (
                "name = \"a\"\nstart = \"02:00\"\nend = \"04:00\"\ntimezone = \"Europe/Berln\"\n",
                &["maintenance[0].timezone: \"Europe/Berln\" is not a known time zone"],
            ),
            (
                "name = \"a\"\ndays = [\"sat\", \"sunnday\"]\nstart = \"2pm\"\nend = \"24:30\"\n",
                &[
                    "maintenance[0].days[1]: \"sunnday\" is not a day of the week (mon, tue, wed, thu, fri, sat, sun)",
                    "maintenance[0].start: \"2pm\" is not a time of day like \"02:00\" (24-hour HH:MM)",
                    "maintenance[0].end: \"24:30\" is not a time of day like \"02:00\" (24-hour HH:MM, or 24:00)",
                ],
            ),
            (
                "name = \"a\"\nstart = \"24:00\"\nend = \"01:00\"\n",
                &["maintenance[0].start: \"24:00\" is not a time of day like \"02:00\" (24-hour HH:MM)"],
            ),
            (
                "name = \"a\"\nstart = \"02:00\"\n",
                &["maintenance[0].end: missing: give the local end time (HH:MM)"],
            ),
            (
                "name = \"a\"\nstart = \"02:00\"\nend = \"2:00\"\n",
                &["maintenance[0].end: equals start: a window needs a length (00:00 to 24:00 for a whole day)"],
            ),
            (
                "name = \"\"\n",
                &[
                    "maintenance[0].name: a window needs a name",
                    "maintenance[0]: no schedule: give start and end (local times like \"02:00\"), or cron and duration",
                ],
            ),
            (
                "name = \"a\"\ndays = [\"sat\"]\ncron = \"0 2 * * *\"\nduration = \"1h\"\n",
                &["maintenance[0]: give either days/start/end or cron/duration, not both"],
            ),
            (
                "name = \"a\"\ncron = \"0 2 * * *\"\n",
                &[
                    "maintenance[0].duration: missing: a cron window needs a duration (e.g. \"2h\")",
                ],
            ),
            (
                "name = \"a\"\nduration = \"0s\"\n",
                &[
                    "maintenance[0].duration: must be longer than 0",
                    "maintenance[0].cron: missing: a duration needs a cron schedule of the start (e.g. \"0 2 * * SAT\")",
                ],
            ),
            (
                "name = \"a\"\ncron = \"0 0 31 2 *\"\nduration = \"1h\"\n",
                &["maintenance[0].cron: \"0 0 31 2 *\" never fires"],
            ),
        ];
        for (input, want) in rows {
            let got = problems_of(input);
            assert_eq!(&got, want, "for:\n{input}");
        }
        // A bad cron pattern is reported with the parser's reason.
        let got = problems_of("name = \"a\"\ncron = \"0 2 * *\"\nduration = \"1h\"\n");
        assert_eq!(got.len(), 1);
        assert!(
            got[0]
                .starts_with("maintenance[0].cron: \"0 2 * *\" is not a five-field cron schedule"),
            "{got:?}"
        );
        let got = problems_of("name = \"a\"\ncron = \"0 2 * * *\"\nduration = \"soon\"\n");
        assert!(
            got[0].starts_with("maintenance[0].duration: \"soon\" is not a duration"),
            "{got:?}"
        );
        let a: MaintenanceConfig =
            toml::from_str("name = \"x\"\nstart = \"01:00\"\nend = \"02:00\"\n").expect("toml");
        let got: Vec<String> = validate(&[a.clone(), a])
            .into_iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        assert_eq!(
            got,
            ["maintenance[1].name: \"x\" is already the name of maintenance[0]; names must be unique"]
        );
        assert!(
            toml::from_str::<MaintenanceConfig>("name = \"x\"\nstrat = \"01:00\"\n").is_err(),
            "unknown keys are rejected"
        );
        assert!(Maintenance::new(&[]).expect("empty").is_empty());
    }
}
