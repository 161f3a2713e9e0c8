//! The page's picture: an inline SVG of the next 30 days, one lane per account, with a
//! dot at each VM's expiry (coloured by the VM's state of health) and a bar for how long
//! the account's wallet pays renewals. Drawn by the server from the [`Status`]; presentation
//! attributes only (no `style`), so the page's CSP needs nothing for it.

use std::fmt::Write;

use super::format::escape;
use super::{format, Severity, Status};

const DAYS: f64 = 30.0;
const WIDTH: f64 = 960.0;
const X0: f64 = 220.0;
const X1: f64 = 940.0;
const TOP: f64 = 26.0;
const LANE: f64 = 52.0;
/// Lanes drawn; further accounts are counted below the picture.
const MAX_LANES: usize = 12;
/// Expiry dots per lane (the soonest).
const MAX_DOTS: usize = 200;
/// A generous width of one character of an 11 px label, to keep labels apart.
const CHAR_WIDTH: f64 = 6.6;

fn colour(s: Severity) -> &'static str {
    match s {
        Severity::Ok => "#1e8e3e",
        Severity::Notice => "#7aa7e0",
        Severity::Warning => "#e8a500",
        Severity::Critical => "#d93025",
    }
}

fn x_of(seconds: f64) -> f64 {
    let days = (seconds / 86_400.0).clamp(0.0, DAYS);
    X0 + (X1 - X0) * days / DAYS
}

/// At most `n` characters of `s`, with an ellipsis when cut.
fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

pub fn render(out: &mut String, status: &Status) {
    let lanes = status.accounts.len().clamp(1, MAX_LANES);
    let height = TOP + LANE * lanes as f64 + 30.0;
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {height}\" \
         width=\"{WIDTH}\" height=\"{height}\" role=\"img\" aria-label=\"Expiries and wallet \
         runway over the next 30 days\" font-family=\"system-ui,sans-serif\" font-size=\"12\">"
    );
    // Week lines.
    for day in [0.0, 7.0, 14.0, 21.0, 28.0] {
        let x = x_of(day * 86_400.0);
        let label = if day == 0.0 {
            "now".to_string()
        } else {
            format!("+{day}d")
        };
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#d5d8dc\"/>\
             <text x=\"{x:.1}\" y=\"16\" text-anchor=\"middle\" fill=\"#5f6670\">{label}</text>",
            TOP - 4.0,
            height - 26.0
        );
    }
    if status.accounts.is_empty() {
        let _ = write!(
            out,
            "<text x=\"{X0}\" y=\"{}\" fill=\"#5f6670\">No accounts configured.</text>",
            TOP + 26.0
        );
    }
    for (i, a) in status.accounts.iter().take(MAX_LANES).enumerate() {
        let y = TOP + LANE * i as f64;
        let mid = y + LANE / 2.0;
        if i % 2 == 1 {
            let _ = write!(
                out,
                "<rect x=\"0\" y=\"{y:.1}\" width=\"{WIDTH}\" height=\"{LANE}\" fill=\"#f6f7f9\"/>"
            );
        }
        let _ = write!(
            out,
            "<text x=\"10\" y=\"{:.1}\" font-weight=\"600\">",
            mid - 6.0
        );
        escape(out, &short(&a.account, 24));
        let _ = write!(
            out,
            "</text><text x=\"10\" y=\"{:.1}\" fill=\"#5f6670\" font-size=\"11\">{}",
            mid + 9.0,
            a.provider.as_str()
        );
        // The wallet's runway: a band from now to the first renewal it cannot pay,
        // behind the expiry dots (a dot inside the band is paid for).
        let mut band = None;
        if let Some(r) = a.runway_seconds {
            let sev = if r < super::secs(super::CRITICAL_WITHIN) {
                Severity::Critical
            } else if r < super::secs(super::RUNWAY_WARNING) {
                Severity::Warning
            } else {
                Severity::Ok
            };
            let label = if r >= DAYS * 86_400.0 {
                "wallet: over 30 days".to_string()
            } else {
                format!("wallet: {}", format::duration(r))
            };
            let _ = write!(out, " · <tspan class=\"runway\">{label}</tspan>");
            band = Some((x_of(r).max(X0 + 4.0), colour(sev), label));
        }
        out.push_str("</text>");
        let _ = write!(
            out,
            "<line x1=\"{X0}\" y1=\"{mid:.1}\" x2=\"{X1}\" y2=\"{mid:.1}\" stroke=\"#c4c8cd\"/>"
        );
        if let Some((end, fill, label)) = band {
            let _ = write!(
                out,
                "<rect x=\"{X0}\" y=\"{:.1}\" width=\"{:.1}\" height=\"10\" rx=\"4\" \
                 fill=\"{fill}\" opacity=\"0.35\"><title>{label}</title></rect>",
                mid - 5.0,
                end - X0,
            );
        }
        // Expiry dots, soonest first; labels alternate above and below the line.
        let mut due: Vec<(f64, &super::VmStatus)> = status
            .vms
            .iter()
            .filter(|v| v.provider == a.provider && v.account == a.account)
            .filter_map(|v| {
                v.expires_in_seconds
                    .filter(|s| *s <= DAYS * 86_400.0)
                    .map(|s| (s, v))
            })
            .collect();
        due.sort_by(|x, y| x.0.total_cmp(&y.0));
        // Where the last label of each row (above, below the line) ends.
        let mut label_end = [f64::NEG_INFINITY; 2];
        for (s, v) in due.into_iter().take(MAX_DOTS) {
            let x = x_of(s);
            let _ = write!(
                out,
                "<circle cx=\"{x:.1}\" cy=\"{mid:.1}\" r=\"5\" fill=\"{}\" stroke=\"#fff\"><title>",
                colour(v.severity)
            );
            escape(out, &v.name);
            let _ = write!(out, ": expires {}</title></circle>", format::countdown(s));
            let name = short(&v.name, 18);
            let text_len = name.chars().count() + 3 + format::duration(s.max(0.0)).len();
            let width = text_len as f64 * CHAR_WIDTH;
            // Near the right edge the label ends at its dot instead of starting there.
            let (start, anchor) = if x + width > WIDTH - 8.0 {
                (x + 4.0 - width, "end")
            } else {
                ((x - 4.0).max(X0), "start")
            };
            let Some(row) = (0..2).find(|r| start >= label_end[*r] + 8.0) else {
                continue;
            };
            label_end[row] = start + width;
            let ty = if row == 0 { mid - 9.0 } else { mid + 17.0 };
            let tx = if anchor == "end" { x + 4.0 } else { start };
            let _ = write!(
                out,
                "<text x=\"{tx:.1}\" y=\"{ty:.1}\" text-anchor=\"{anchor}\" font-size=\"11\">"
            );
            escape(out, &name);
            let _ = write!(out, " · {}</text>", format::duration(s.max(0.0)));
        }
    }
    let legend_y = height - 8.0;
    let _ = write!(
        out,
        "<circle cx=\"{X0}\" cy=\"{:.1}\" r=\"5\" fill=\"#1e8e3e\"/>\
         <text x=\"{:.1}\" y=\"{legend_y:.1}\" fill=\"#5f6670\" font-size=\"11\">VM expiry \
         (colour: the VM's worst finding)</text>\
         <rect x=\"{:.1}\" y=\"{:.1}\" width=\"24\" height=\"10\" rx=\"4\" fill=\"#1e8e3e\" opacity=\"0.35\"/>\
         <text x=\"{:.1}\" y=\"{legend_y:.1}\" fill=\"#5f6670\" font-size=\"11\">wallet runway: \
         renewals the balance pays</text>",
        legend_y - 4.0,
        X0 + 10.0,
        X0 + 260.0,
        legend_y - 10.0,
        X0 + 290.0,
    );
    if status.accounts.len() > MAX_LANES {
        let _ = write!(
            out,
            "<text x=\"{X1}\" y=\"{legend_y:.1}\" text-anchor=\"end\" fill=\"#5f6670\" \
             font-size=\"11\">+{} more accounts (see the table)</text>",
            status.accounts.len() - MAX_LANES
        );
    }
    out.push_str("</svg>");
}
