//! The status page as HTML: one self-contained document (inline stylesheet and SVG, no
//! script, no external resource) that works under the strict Content-Security-Policy
//! [`content_security_policy`] sends with it.
//!
//! Every string that reaches the page from outside the code (VM names, plans, locations,
//! provider error messages, rule and account names) goes through [`format::escape`]; the markup
//! around them is fixed text. Rendering only formats a [`Status`] already built, and is
//! bounded: problems first (at most [`MAX_PROBLEM_ROWS`]), healthy VMs collapsed and
//! paged by [`PAGE_SIZE`].

use std::fmt::Write;
use std::sync::OnceLock;

use base64::Engine;
use sha2::{Digest, Sha256};

use super::format::{self, escape};
use super::{AccountStatus, Finding, Severity, Status, VmStatus};
use vpswatch_model::money::Money;

/// Healthy VMs per page.
pub const PAGE_SIZE: usize = 100;
/// Problem rows shown (the JSON twin lists them all).
pub const MAX_PROBLEM_ROWS: usize = 200;
/// Seconds between automatic reloads of the page.
pub const REFRESH_SECONDS: u32 = 30;
/// Up to this many healthy VMs are listed open; more start collapsed.
const OPEN_HEALTHY: usize = 20;

/// The page's only stylesheet; its hash is the only style the CSP allows.
const STYLE: &str = "\
:root{color-scheme:light;font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1b1f24;background:#f6f7f9}\
body{margin:0 auto;max-width:1200px;padding:12px 20px 40px}\
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:6px 16px}\
h1{font-size:22px;margin:0}h2{font-size:16px;margin:22px 0 8px}\
nav a{margin-right:12px}a{color:#0b57d0}.muted{color:#5f6670}\
.banner{padding:10px 14px;border-radius:6px;font-size:16px;font-weight:600;margin:12px 0}\
.banner.critical{background:#fde2e1;color:#8a1111}.banner.warning{background:#fff1cc;color:#6b4a00}\
.banner.ok,.banner.notice{background:#dcf3e3;color:#13532b}\
ul.problems{list-style:none;padding:0;margin:0}\
ul.problems li{background:#fff;border-left:5px solid #d93025;padding:6px 10px;margin:4px 0;border-radius:3px}\
ul.problems li.warning{border-left-color:#e8a500}\
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}\
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e3e5e8;vertical-align:top}\
th{background:#eef0f3;font-weight:600}\
.sev{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:4px}\
.sev.ok{background:#1e8e3e}.sev.notice{background:#7aa7e0}.sev.warning{background:#e8a500}.sev.critical{background:#d93025}\
.bad{color:#b3261e;font-weight:600}.warn{color:#8a5a00;font-weight:600}.good{color:#13732e}\
.small{font-size:12px}.find{font-size:12px;color:#5f6670}\
details{margin-top:8px}summary{cursor:pointer;font-weight:600}\
svg{background:#fff;border:1px solid #e3e5e8;border-radius:4px;width:100%;height:auto}\
footer{margin-top:28px;font-size:12px;color:#5f6670}";

/// The Content-Security-Policy sent with the page: nothing may load or run; the one
/// inline stylesheet is allowed by its hash.
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE));
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; img-src 'none'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    })
}

fn money(out: &mut String, m: &Money) {
    let digits = match m.currency.as_str() {
        "BTC" => 8,
        "sat" | "msat" => 0,
        _ => 2,
    };
    let _ = write!(out, "{:.*} ", digits, m.amount);
    escape(out, &m.currency);
}

fn dot(out: &mut String, s: Severity) {
    let _ = write!(
        out,
        "<span class=\"sev {0}\" title=\"{0}\"></span>",
        s.as_str()
    );
}

fn findings(out: &mut String, list: &[Finding]) {
    for (i, f) in list.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        escape(out, &f.text);
    }
}

/// Renders the page; `page` (1-based) selects which healthy VMs are listed.
pub fn render(status: &Status, page: usize) -> String {
    let mut out = String::with_capacity(16_384 + status.vms.len().min(PAGE_SIZE * 2) * 700);
    head(&mut out, status);
    out.push_str("<body><header><h1>vpswatch</h1><span class=\"muted\">");
    escape(&mut out, status.version);
    out.push_str(
        "</span><nav><a href=\"metrics\">/metrics</a><a href=\"api/v1/status\">status JSON</a>\
         <a href=\"api/v1/actions\">watchdog journal</a><a href=\"-/ready\">/-/ready</a>\
         <a href=\"-/healthy\">/-/healthy</a></nav></header>",
    );
    banner(&mut out, status);
    out.push_str("<section id=\"timeline\"><h2>Next 30 days</h2>");
    super::timeline::render(&mut out, status);
    out.push_str("</section>");
    problems(&mut out, status);
    accounts(&mut out, status);
    vms(&mut out, status, page);
    out.push_str(
        "<footer>Built from the data vpswatch already holds (the latest poll of each \
         account, probe round and rule states); it never calls a provider. Times are UTC. \
         What each column means: docs/status.md in the vpswatch source; alerts and what to \
         do about them: docs/alerts.md.</footer></body></html>\n",
    );
    out
}

fn head(out: &mut String, status: &Status) {
    let title = match status.summary.problems {
        0 => "all good".to_string(),
        1 => "1 problem".to_string(),
        n => format!("{n} problems"),
    };
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>vpswatch: {title}</title><style>{STYLE}</style></head>"
    );
}

fn banner(out: &mut String, status: &Status) {
    let s = &status.summary;
    let _ = write!(
        out,
        "<p class=\"banner {}\" id=\"summary\">",
        s.severity.as_str()
    );
    match s.problems {
        0 => out.push_str("Nothing needs attention"),
        1 => out.push_str("1 problem"),
        n => {
            let _ = write!(out, "{n} problems");
        }
    }
    let _ = write!(
        out,
        " · {} of {} accounts up · {} VMs{}</p>",
        s.accounts_up,
        s.accounts,
        s.vms,
        if status.dry_run {
            " · watchdog in dry-run"
        } else {
            ""
        }
    );
    let _ = write!(
        out,
        "<p class=\"muted small\">As of {}; reloads every {REFRESH_SECONDS} s.{}</p>",
        format::time(status.generated_at),
        if status.watchdog {
            ""
        } else {
            " No watchdog rules are configured."
        }
    );
}

fn vm_label(out: &mut String, v: &VmStatus) {
    out.push_str("<b>");
    escape(out, &v.name);
    out.push_str("</b> <span class=\"muted small\">");
    escape(out, v.provider.as_str());
    out.push('/');
    escape(out, &v.account);
    out.push_str(" · id ");
    escape(out, &v.id);
    out.push_str("</span>");
}

fn problems(out: &mut String, status: &Status) {
    out.push_str("<section id=\"problems\"><h2>Problems</h2>");
    let accounts = status.accounts.iter().filter(|a| a.severity.is_problem());
    let vms = status.vms.iter().filter(|v| v.severity.is_problem());
    let total = status.summary.problems;
    if total == 0 {
        out.push_str("<p class=\"good\">None: every account answers, every VM runs and answers, nothing expires unrenewed.</p></section>");
        return;
    }
    out.push_str("<ul class=\"problems\">");
    let mut shown = 0;
    for a in accounts {
        if shown == MAX_PROBLEM_ROWS {
            break;
        }
        shown += 1;
        let _ = write!(out, "<li class=\"{}\">Account <b>", a.severity.as_str());
        escape(out, &a.account);
        out.push_str("</b> <span class=\"muted small\">");
        escape(out, a.provider.as_str());
        out.push_str("</span>: ");
        findings(out, &a.findings);
        out.push_str("</li>");
    }
    for v in vms {
        if shown == MAX_PROBLEM_ROWS {
            break;
        }
        shown += 1;
        let _ = write!(out, "<li class=\"{}\">", v.severity.as_str());
        vm_label(out, v);
        out.push_str(": ");
        let problems: Vec<Finding> = v
            .findings
            .iter()
            .filter(|f| f.severity.is_problem())
            .cloned()
            .collect();
        findings(out, &problems);
        out.push_str("</li>");
    }
    out.push_str("</ul>");
    if total > shown {
        let _ = write!(
            out,
            "<p class=\"muted\">… and {} more; <a href=\"api/v1/status\">the JSON</a> lists all.</p>",
            total - shown
        );
    }
    out.push_str("</section>");
}

fn accounts(out: &mut String, status: &Status) {
    out.push_str(
        "<section id=\"accounts\"><h2>Accounts</h2><table><thead><tr><th></th><th>Account</th>\
         <th>Provider</th><th>Data age</th><th>VMs</th><th>Wallet</th><th>Runway</th>\
         <th>API key expires</th><th>Rules</th></tr></thead><tbody>",
    );
    for a in &status.accounts {
        account_row(out, a);
    }
    out.push_str("</tbody></table>");
    if !status.nwc_wallets.is_empty() {
        out.push_str("<p class=\"small\">Lightning (NWC) wallets: ");
        for (i, w) in status.nwc_wallets.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            escape(out, &w.rule);
            let _ = write!(out, " {:.0} sat", w.balance_sats);
        }
        out.push_str("</p>");
    }
    out.push_str("</section>");
}

fn account_row(out: &mut String, a: &AccountStatus) {
    out.push_str("<tr><td>");
    dot(out, a.severity);
    out.push_str("</td><td><b>");
    escape(out, &a.account);
    out.push_str("</b>");
    if !a.findings.is_empty() {
        out.push_str("<div class=\"find\">");
        findings(out, &a.findings);
        out.push_str("</div>");
    }
    out.push_str("</td><td>");
    escape(out, a.provider.as_str());
    out.push_str(if a.up {
        " <span class=\"good\">up</span>"
    } else if a.polled {
        " <span class=\"bad\">down</span>"
    } else {
        " <span class=\"muted\">not polled yet</span>"
    });
    out.push_str("</td><td>");
    match a.data_age_seconds {
        Some(s) => {
            let _ = write!(out, "{} ago", format::duration(s));
        }
        None => out.push('—'),
    }
    let _ = write!(out, "</td><td>{}</td><td>", a.vms);
    match &a.wallet {
        Some(m) => money(out, m),
        None => out.push('—'),
    }
    out.push_str("</td><td class=\"runway\">");
    match a.runway_seconds {
        Some(s) => {
            let class = if s < super::secs(super::CRITICAL_WITHIN) {
                "bad"
            } else if s < super::secs(super::RUNWAY_WARNING) {
                "warn"
            } else {
                "good"
            };
            let _ = write!(
                out,
                "<span class=\"{class}\">{}</span>",
                format::duration(s)
            );
        }
        None => out.push('—'),
    }
    out.push_str("</td><td>");
    match a.api_key_expires_in_seconds {
        Some(s) => out.push_str(&format::countdown(s)),
        None => out.push('—'),
    }
    out.push_str("</td><td>");
    rules(out, &a.rules);
    out.push_str("</td></tr>");
}

/// Firing and unknown rules by name; the quiet ones as a count.
fn rules(out: &mut String, list: &[super::RuleState]) {
    if list.is_empty() {
        out.push('—');
        return;
    }
    let mut first = true;
    for r in list.iter().filter(|r| r.firing || r.unknown) {
        if !first {
            out.push_str("<br>");
        }
        first = false;
        escape(out, &r.rule);
        out.push_str(if r.firing {
            ": <span class=\"bad\">firing</span>"
        } else {
            ": <span class=\"muted\">no data</span>"
        });
    }
    let quiet = list.iter().filter(|r| !r.firing && !r.unknown).count();
    if quiet > 0 {
        if !first {
            out.push_str("<br>");
        }
        let _ = write!(
            out,
            "<span class=\"good\">{quiet} {} ok</span>",
            if quiet == 1 { "rule" } else { "rules" }
        );
    }
}

const VM_HEADER: &str = "<table><thead><tr><th></th><th>VM</th><th>Plan</th><th>State</th>\
    <th>Probe</th><th>Expires</th><th>Renewal</th><th>Rules</th><th>Last action</th></tr>\
    </thead><tbody>";

fn vms(out: &mut String, status: &Status, page: usize) {
    out.push_str("<section id=\"vms\"><h2>VMs</h2>");
    let (bad, healthy): (Vec<&VmStatus>, Vec<&VmStatus>) =
        status.vms.iter().partition(|v| v.severity.is_problem());
    if !bad.is_empty() {
        out.push_str("<div id=\"problem-vms\">");
        out.push_str(VM_HEADER);
        for v in bad.iter().take(MAX_PROBLEM_ROWS) {
            vm_row(out, v);
        }
        out.push_str("</tbody></table></div>");
    }
    if healthy.is_empty() {
        out.push_str("</section>");
        return;
    }
    let pages = healthy.len().div_ceil(PAGE_SIZE);
    let page = page.clamp(1, pages);
    let open = healthy.len() <= OPEN_HEALTHY || page > 1;
    let _ = write!(
        out,
        "<details id=\"healthy-vms\"{}><summary>{} VMs without problems</summary>",
        if open { " open" } else { "" },
        healthy.len()
    );
    out.push_str(VM_HEADER);
    for v in healthy.iter().skip((page - 1) * PAGE_SIZE).take(PAGE_SIZE) {
        vm_row(out, v);
    }
    out.push_str("</tbody></table>");
    if pages > 1 {
        out.push_str("<p class=\"small\">Page ");
        for p in 1..=pages {
            if p == page {
                let _ = write!(out, "<b>{p}</b> ");
            } else {
                let _ = write!(out, "<a href=\"?page={p}\">{p}</a> ");
            }
        }
        out.push_str("</p>");
    }
    out.push_str("</details></section>");
}

fn vm_row(out: &mut String, v: &VmStatus) {
    let _ = write!(out, "<tr class=\"vm {}\"><td>", v.severity.as_str());
    dot(out, v.severity);
    out.push_str("</td><td>");
    vm_label(out, v);
    if !v.findings.is_empty() {
        out.push_str("<div class=\"find\">");
        findings(out, &v.findings);
        out.push_str("</div>");
    }
    out.push_str("</td><td>");
    escape(out, &v.plan);
    if !v.location.is_empty() {
        out.push_str("<div class=\"muted small\">");
        escape(out, &v.location);
        out.push_str("</div>");
    }
    out.push_str("</td><td>");
    let class = match v.state.as_str() {
        "running" => "good",
        "creating" => "muted",
        _ => "bad",
    };
    let _ = write!(out, "<span class=\"{class}\">");
    escape(out, &v.state);
    out.push_str("</span></td><td>");
    if v.probes.is_empty() {
        out.push('—');
    }
    for (i, p) in v.probes.iter().enumerate() {
        if i > 0 {
            out.push_str("<br>");
        }
        let _ = write!(
            out,
            "{} <span class=\"{}\">{}</span>",
            p.port,
            if p.success { "good" } else { "bad" },
            if p.success { "answers" } else { "no answer" }
        );
    }
    out.push_str("</td><td class=\"expires\">");
    match (v.expires_in_seconds, v.expires) {
        (Some(s), Some(t)) => {
            let covered = v.renewal.covered_by.is_some();
            let class = if covered || s >= v.renewal.window_seconds {
                ""
            } else if s < super::secs(super::CRITICAL_WITHIN) {
                "bad"
            } else {
                "warn"
            };
            let _ = write!(
                out,
                "<span class=\"{class}\">{}</span><div class=\"muted small\">{}</div>",
                format::countdown(s),
                format::time(t)
            );
        }
        _ => out.push_str("never paid"),
    }
    out.push_str("</td><td class=\"small\">");
    out.push_str(match v.auto_renewal {
        Some(true) => "auto-renewal on<br>",
        Some(false) => "auto-renewal off<br>",
        None => "",
    });
    if let (Some(rule), Some(mode)) = (&v.renewal.rule, &v.renewal.mode) {
        out.push_str("rule ");
        escape(out, rule);
        out.push_str(" (");
        escape(out, mode);
        out.push_str(")<br>");
    }
    out.push_str(match v.renewal.covered_by.as_deref() {
        Some("auto_renewal") => "<span class=\"good\">paid by auto-renewal</span>",
        Some("rule") => "<span class=\"good\">paid by vpswatch</span>",
        Some(_) => "<span class=\"good\">paid from the wallet</span>",
        None => "<span class=\"muted\">nothing pays it</span>",
    });
    for c in &v.renewal.results {
        out.push_str("<br>");
        escape(out, &c.result.replace('_', " "));
        let _ = write!(out, " ×{}", c.count);
    }
    out.push_str("</td><td class=\"small\">");
    rules(out, &v.rules);
    out.push_str("</td><td class=\"small\">");
    match &v.last_action {
        None => out.push('—'),
        Some(a) => {
            escape(out, &a.action.replace('_', " "));
            out.push_str(" · ");
            let class = match a.status.as_str() {
                "ok" | "dry_run" => "good",
                "failed" => "bad",
                _ => "muted",
            };
            let _ = write!(out, "<span class=\"{class}\">");
            escape(out, &a.status.replace('_', " "));
            out.push_str("</span>");
            if let Some(o) = &a.outcome {
                let class = if o == "recovered" { "good" } else { "bad" };
                let _ = write!(out, " → <span class=\"{class}\">");
                escape(out, &o.replace('_', " "));
                out.push_str("</span>");
            }
            let _ = write!(out, "<div class=\"muted\">{} · rule ", format::time(a.at));
            escape(out, &a.rule);
            out.push_str("</div>");
            if let Some(e) = &a.error {
                out.push_str("<div class=\"bad\">");
                escape(out, e);
                out.push_str("</div>");
            }
        }
    }
    out.push_str("</td></tr>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::format::escaped;

    #[test]
    fn escape_makes_markup_inert_in_text_and_attributes() {
        assert_eq!(
            escaped("<img src=x onerror=alert(1)>"),
            "&lt;img src=x onerror=alert(1)&gt;"
        );
        assert_eq!(
            escaped("a\"b'c&d"),
            "a&quot;b&#39;c&amp;d",
            "quotes and ampersands"
        );
        assert_eq!(escaped("&amp;"), "&amp;amp;", "entities are escaped again");
        assert_eq!(escaped("plain é ✓"), "plain é ✓", "other text unchanged");
        assert_eq!(escaped(""), "");
        assert_eq!(escaped("<<>>"), "&lt;&lt;&gt;&gt;");
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_stylesheet() {
        let csp = content_security_policy();
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE));
        assert!(csp.contains(&format!("style-src 'sha256-{hash}'")), "{csp}");
        assert!(csp.starts_with("default-src 'none'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(
            !STYLE.contains("</"),
            "the stylesheet cannot close its element"
        );
    }
}
