//! What a mail says: subject, plain-text and HTML bodies (everything escaped), and the
//! headers that make a firing, its reminders, its events and its resolution one thread.
//!
//! Mails are rendered once, when they enter the outbox, and stored as the exact bytes
//! sent: a retry after an outage or a restart sends the same Message-ID, Date and body,
//! so a receiver that de-duplicates by Message-ID sees one message.

use std::fmt::Write as _;
use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::Message;
use sha2::{Digest, Sha256};

use super::settings::EmailSettings;
use crate::notify::{AlertKey, EventKind, Facts};

/// Which kind of mail, for the subject, the Message-ID and the wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailKind {
    Firing,
    /// The n-th reminder (1-based) of a still-firing alert.
    Reminder(u32),
    Resolved,
    Event(EventKind),
    Test,
}

/// A rendered mail, ready for the outbox.
#[derive(Debug, Clone)]
pub struct Composed {
    /// With angle brackets, as in the header.
    pub message_id: String,
    pub subject: String,
    /// The envelope sender and recipients (bare addresses).
    pub env_from: String,
    pub env_to: Vec<String>,
    /// The whole RFC 5322 message.
    pub raw: Vec<u8>,
}

/// One alert inside a mail (a digest holds several).
#[derive(Debug, Clone)]
pub struct AlertBlock<'a> {
    pub key: &'a AlertKey,
    pub facts: &'a Facts,
    /// When the alert started firing.
    pub since: DateTime<Utc>,
    /// Resolved while it waited for the digest.
    pub resolved_at: Option<DateTime<Utc>>,
}

/// A stable Message-ID: the same inputs always give the same id, so re-rendering after a
/// restart cannot fork a thread. `installation` (random, kept in the state directory)
/// makes it unique across installations: two vpswatch instances see the same event ids
/// (`action-1-ok`), and a mail client that de-duplicates by Message-ID would otherwise
/// hide one of the two mails.
pub fn message_id(settings: &EmailSettings, installation: &str, tag: &str, seed: &str) -> String {
    let mut h = Sha256::new();
    h.update(installation.as_bytes());
    h.update([0x1f]);
    h.update(seed.as_bytes());
    let domain = settings.from.email.domain();
    format!(
        "<vpswatch.{tag}.{}@{domain}>",
        &hex::encode(h.finalize())[..32]
    )
}

/// The part of a seed that names an alert.
pub fn key_seed(key: &AlertKey) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}",
        key.rule, key.provider, key.account, key.vm
    )
}

fn kind_label(kind: MailKind) -> &'static str {
    match kind {
        MailKind::Firing | MailKind::Reminder(_) => "FIRING",
        MailKind::Resolved => "RESOLVED",
        MailKind::Test => "TEST",
        MailKind::Event(e) => match e {
            EventKind::ActionTaken => "ACTION TAKEN",
            EventKind::ActionFailed => "ACTION FAILED",
            EventKind::ActionNotRecovered => "NOT RECOVERED",
            EventKind::GaveUp => "GAVE UP",
            EventKind::RenewalPaid => "RENEWAL PAID",
            EventKind::RenewalFailed => "RENEWAL FAILED",
            EventKind::RenewalBlocked => "RENEWAL BLOCKED",
            EventKind::InvoiceSent => "INVOICE TO PAY",
        },
    }
}

fn vm_display(key: &AlertKey, facts: &Facts) -> String {
    if key.vm.is_empty() {
        String::new()
    } else if facts.vm_name.is_empty() || facts.vm_name == key.vm {
        key.vm.clone()
    } else {
        facts.vm_name.clone()
    }
}

/// `[FIRING] probe-ssh · lnvps/main · web-1`
pub fn subject(kind: MailKind, key: &AlertKey, facts: &Facts) -> String {
    let mut s = format!(
        "[{}] {} · {}/{}",
        kind_label(kind),
        key.rule,
        key.provider,
        key.account
    );
    let vm = vm_display(key, facts);
    if !vm.is_empty() {
        let _ = write!(s, " · {vm}");
    }
    if let MailKind::Reminder(n) = kind {
        let _ = write!(s, " (reminder {n})");
    }
    one_line(&s)
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// HTML-escapes text (element content and attribute values alike).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A body as sections of label/value rows, rendered to text and HTML from one model so
/// the two never disagree.
struct Body {
    headline: String,
    sections: Vec<(String, Vec<(String, String)>)>,
    paragraphs: Vec<String>,
}

impl Body {
    fn text(&self) -> String {
        let mut t = format!("{}\n", self.headline);
        for p in &self.paragraphs {
            let _ = write!(t, "\n{p}\n");
        }
        for (title, rows) in &self.sections {
            let _ = write!(t, "\n{title}\n");
            let width = rows
                .iter()
                .map(|(k, _)| k.chars().count())
                .max()
                .unwrap_or(0);
            for (k, v) in rows {
                let pad = width - k.chars().count();
                let _ = writeln!(t, "  {k}:{} {v}", " ".repeat(pad));
            }
        }
        let _ = write!(
            t,
            "\n-- \nvpswatch {}: replies to this thread are not read.\n",
            env!("CARGO_PKG_VERSION")
        );
        t
    }

    fn html(&self) -> String {
        let mut h = String::from(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>\
             <body style=\"font-family:sans-serif\">\n",
        );
        let _ = writeln!(h, "<h2>{}</h2>", escape_html(&self.headline));
        for p in &self.paragraphs {
            let _ = writeln!(h, "<p>{}</p>", escape_html(p));
        }
        for (title, rows) in &self.sections {
            let _ = writeln!(h, "<h3>{}</h3>\n<table>", escape_html(title));
            for (k, v) in rows {
                let _ = writeln!(
                    h,
                    "<tr><th align=\"left\" valign=\"top\">{}</th><td>{}</td></tr>",
                    escape_html(k),
                    escape_html(v)
                );
            }
            h.push_str("</table>\n");
        }
        let _ = writeln!(
            h,
            "<hr><p style=\"color:#666\">vpswatch {}: replies to this thread are not read.</p>\n</body></html>",
            escape_html(env!("CARGO_PKG_VERSION"))
        );
        h
    }
}

fn alert_rows(block: &AlertBlock<'_>) -> Vec<(String, String)> {
    let k = block.key;
    let mut rows = vec![
        ("rule".to_string(), k.rule.clone()),
        ("provider".to_string(), k.provider.to_string()),
        ("account".to_string(), k.account.clone()),
    ];
    if !k.vm.is_empty() {
        let vm = vm_display(k, block.facts);
        let shown = if vm == k.vm {
            vm
        } else {
            format!("{vm} (id {})", k.vm)
        };
        rows.push(("VM".to_string(), shown));
    }
    rows.push(("firing since".to_string(), time(block.since)));
    if let Some(r) = block.resolved_at {
        rows.push(("resolved at".to_string(), time(r)));
    }
    if let Some(j) = block.facts.journal_id {
        rows.push(("journal entry".to_string(), format!("#{j}")));
    }
    rows
}

fn facts_sections(facts: &Facts, out: &mut Vec<(String, Vec<(String, String)>)>) {
    if !facts.details.is_empty() {
        out.push(("Details".to_string(), facts.details.clone()));
    }
    if !facts.next_step.is_empty() {
        out.push((
            "What vpswatch did and will do next".to_string(),
            vec![("next".to_string(), facts.next_step.clone())],
        ));
    }
}

/// Renders a mail about one alert or event.
pub fn alert_mail(
    settings: &EmailSettings,
    kind: MailKind,
    block: &AlertBlock<'_>,
    at: DateTime<Utc>,
    message_id: &str,
    thread_root: Option<&str>,
) -> Result<Composed, String> {
    let key = block.key;
    let facts = block.facts;
    let headline = match kind {
        MailKind::Firing => format!("{} is firing", key.rule),
        MailKind::Reminder(n) => format!("{} is still firing (reminder {n})", key.rule),
        MailKind::Resolved => format!("{} is resolved", key.rule),
        MailKind::Event(e) => format!("{}: {}", kind_label(MailKind::Event(e)), key.rule),
        MailKind::Test => "vpswatch test message".to_string(),
    };
    let mut sections = vec![("Alert".to_string(), alert_rows(block))];
    facts_sections(facts, &mut sections);
    let mut paragraphs = Vec::new();
    if !facts.summary.is_empty() {
        paragraphs.push(facts.summary.clone());
    }
    let body = Body {
        headline,
        sections,
        paragraphs,
    };
    build(
        settings,
        settings.recipients(&key.rule),
        subject(kind, key, facts),
        &body,
        at,
        message_id,
        thread_root,
    )
}

/// Renders one mail for several alerts of one account that started firing together.
pub fn digest_mail(
    settings: &EmailSettings,
    blocks: &[AlertBlock<'_>],
    recipients: &[Mailbox],
    at: DateTime<Utc>,
    message_id: &str,
) -> Result<Composed, String> {
    let Some(first) = blocks.first() else {
        return Err("a digest needs at least one alert".into());
    };
    let (provider, account) = (&first.key.provider, &first.key.account);
    let mut rules: Vec<&str> = blocks.iter().map(|b| b.key.rule.as_str()).collect();
    rules.dedup();
    let subject = one_line(&format!(
        "[FIRING] {} alerts · {provider}/{account} · {}",
        blocks.len(),
        rules.join(", ")
    ));
    let mut sections = Vec::new();
    let mut paragraphs = vec![format!(
        "{} alerts of account {provider}/{account} started firing within the digest window.",
        blocks.len()
    )];
    for (i, b) in blocks.iter().enumerate() {
        let vm = vm_display(b.key, b.facts);
        let title = if vm.is_empty() {
            format!("{}. {}", i + 1, b.key.rule)
        } else {
            format!("{}. {} · {vm}", i + 1, b.key.rule)
        };
        let mut rows = alert_rows(b);
        if !b.facts.summary.is_empty() {
            rows.insert(0, ("summary".to_string(), b.facts.summary.clone()));
        }
        rows.extend(b.facts.details.iter().cloned());
        if !b.facts.next_step.is_empty() {
            rows.push(("next".to_string(), b.facts.next_step.clone()));
        }
        sections.push((title, rows));
    }
    paragraphs.push("Reminders and resolutions follow per alert, in this thread.".to_string());
    let body = Body {
        headline: format!("{} alerts firing on {provider}/{account}", blocks.len()),
        sections,
        paragraphs,
    };
    build(settings, recipients, subject, &body, at, message_id, None)
}

/// The message `vpswatch test-email` sends.
pub fn test_mail(
    settings: &EmailSettings,
    installation: &str,
    at: DateTime<Utc>,
) -> Result<Composed, String> {
    let stamp = at.timestamp_nanos_opt().unwrap_or_default().to_string();
    let id = message_id(settings, installation, "test", &stamp);
    let body = Body {
        headline: "vpswatch test message".into(),
        paragraphs: vec![
            "If you can read this, vpswatch can deliver its alerts with the configured \
             [email] settings."
                .into(),
        ],
        sections: vec![(
            "Settings".into(),
            vec![
                ("server".into(), settings.server()),
                ("security".into(), settings.security.as_str().into()),
                ("sent at".into(), time(at)),
            ],
        )],
    };
    build(
        settings,
        &settings.to,
        "[TEST] vpswatch email settings work".into(),
        &body,
        at,
        &id,
        None,
    )
}

fn build(
    settings: &EmailSettings,
    recipients: &[Mailbox],
    subject: String,
    body: &Body,
    at: DateTime<Utc>,
    message_id: &str,
    thread_root: Option<&str>,
) -> Result<Composed, String> {
    let mut b = Message::builder()
        .from(settings.from.clone())
        .subject(subject.clone())
        .date(SystemTime::from(at))
        .message_id(Some(message_id.to_string()))
        // RFC 3834: keeps vacation responders from answering alerts.
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".into(),
        ));
    for r in recipients {
        b = b.to(r.clone());
    }
    if let Some(root) = thread_root {
        b = b.in_reply_to(root.to_string()).references(root.to_string());
    }
    let message = b
        .multipart(MultiPart::alternative_plain_html(body.text(), body.html()))
        .map_err(|e| format!("cannot build the message: {e}"))?;
    let env = message.envelope();
    Ok(Composed {
        message_id: message_id.to_string(),
        subject,
        env_from: env.from().map(ToString::to_string).unwrap_or_default(),
        env_to: env.to().iter().map(ToString::to_string).collect(),
        raw: message.formatted(),
    })
}
