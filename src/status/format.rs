//! Short human forms of durations and times for the status page.

use chrono::{DateTime, Utc};

/// A duration in seconds as its two largest units: `3d 4h`, `5h 12m`, `4m 10s`, `12s`.
/// Negative values are shown as their magnitude (callers say "ago").
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "∞".to_string();
    }
    let s = seconds.abs().round() as u64;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) if sec == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}

/// A countdown to `seconds` from now: `in 3d 4h`, or `2h 5m ago` once past.
pub fn countdown(seconds: f64) -> String {
    if seconds < 0.0 {
        format!("{} ago", duration(seconds))
    } else {
        format!("in {}", duration(seconds))
    }
}

/// A time as UTC, to the minute: `2025-06-01 14:05 UTC`.
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// Appends `text` to `out` with the five HTML-significant characters replaced by
/// entities, so the result is inert both as element text and inside a quoted attribute.
pub fn escape(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            _ => "&#39;",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// `escape` into a new string.
pub fn escaped(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    escape(&mut s, text);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_largest_units() {
        assert_eq!(duration(0.0), "0s");
        assert_eq!(duration(12.4), "12s");
        assert_eq!(duration(60.0), "1m");
        assert_eq!(duration(250.0), "4m 10s");
        assert_eq!(duration(3600.0), "1h");
        assert_eq!(duration(40.0 * 3600.0 + 59.0), "1d 16h");
        assert_eq!(duration(5.0 * 3600.0 + 12.0 * 60.0), "5h 12m");
        assert_eq!(duration(7.0 * 86_400.0 + 120.0), "7d");
        assert_eq!(duration(-90.0), "1m 30s");
        assert_eq!(duration(f64::INFINITY), "∞");
    }

    #[test]
    fn countdown_says_ago_once_past() {
        assert_eq!(countdown(90.0), "in 1m 30s");
        assert_eq!(countdown(-7200.0), "2h ago");
    }
}
