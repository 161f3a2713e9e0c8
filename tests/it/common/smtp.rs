//! A real SMTP server for tests: aiosmtpd (`tests/smtp/server.py`, run with Debian's
//! Python) writing each accepted message to a directory, and a reader for those mails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long to wait for the server to start and for mails to arrive.
pub const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// The SMTP server process
// ---------------------------------------------------------------------------------------

pub fn python() -> String {
    std::env::var("VPSWATCH_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

#[derive(Default, Clone)]
pub struct ServerOpts {
    pub mode: &'static str,
    pub cert: Option<(PathBuf, PathBuf)>,
    pub auth: Option<(String, String)>,
    /// More arguments for `server.py`, e.g. `--reject-rcpt bad@localhost`.
    pub args: Vec<String>,
}

/// One aiosmtpd process; killed on drop.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
}

impl SmtpServer {
    pub fn start(maildir: &Path, port: u16, opts: &ServerOpts) -> SmtpServer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp/server.py");
        let mut cmd = Command::new(python());
        cmd.arg(script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--maildir")
            .arg(maildir)
            .arg("--mode")
            .arg(if opts.mode.is_empty() {
                "none"
            } else {
                opts.mode
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((cert, key)) = &opts.cert {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        if let Some((user, pass)) = &opts.auth {
            cmd.arg("--user").arg(user).env("SMTP_TEST_PASSWORD", pass);
        }
        cmd.args(&opts.args);
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} (aiosmtpd: Debian package python3-aiosmtpd; scripts/test installs it): {e}",
                python()
            )
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(p) = line.strip_prefix("LISTENING ") {
                    let _ = tx.send(p.trim().parse::<u16>().unwrap_or(0));
                }
            }
        });
        let mut server = SmtpServer { child, port: 0 };
        server.port = rx
            .recv_timeout(WAIT)
            .expect("the SMTP server announced its port");
        assert_ne!(server.port, 0);
        server
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nobody listens on right now (bound, then released).
// ---------------------------------------------------------------------------------------
// Delivered mails
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Mail {
    pub rcpt_tos: Vec<String>,
    pub data: String,
}

impl Mail {
    /// A header's value, unfolded and with RFC 2047 encoded words decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or("");
        let mut lines: Vec<String> = Vec::new();
        for l in head.split("\r\n") {
            if l.starts_with(' ') || l.starts_with('\t') {
                if let Some(last) = lines.last_mut() {
                    last.push_str(l);
                }
            } else {
                lines.push(l.to_string());
            }
        }
        lines.iter().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| decode_words(v.trim()))
        })
    }

    pub fn subject(&self) -> String {
        self.header("Subject").unwrap_or_default()
    }

    pub fn message_id(&self) -> String {
        self.header("Message-ID").unwrap_or_default()
    }

    /// The `text/plain` part as a reader sees it: its transfer encoding (7bit,
    /// quoted-printable or base64) undone.
    pub fn text_body(&self) -> String {
        use base64::Engine;
        let Some(at) = self.data.find("Content-Type: text/plain") else {
            return String::new();
        };
        let part = &self.data[at..];
        let (head, rest) = part.split_once("\r\n\r\n").unwrap_or((part, ""));
        let body = rest.split("\r\n--").next().unwrap_or("");
        let encoding = head
            .split("\r\n")
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("Content-Transfer-Encoding")
                    .then(|| v.trim().to_ascii_lowercase())
            })
            .unwrap_or_default();
        let bytes = match encoding.as_str() {
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(body.replace("\r\n", ""))
                .unwrap_or_default(),
            "quoted-printable" => {
                let joined = body.replace("=\r\n", "");
                let b = joined.as_bytes();
                let mut out = Vec::with_capacity(b.len());
                let mut i = 0;
                while i < b.len() {
                    let hex = b
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok());
                    match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                        (b'=', Some(byte)) => {
                            out.push(byte);
                            i += 3;
                        }
                        (c, _) => {
                            out.push(c);
                            i += 1;
                        }
                    }
                }
                out
            }
            _ => body.as_bytes().to_vec(),
        };
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Decodes `=?utf-8?b?…?=` / `=?utf-8?q?…?=` words; whitespace between two words goes.
fn decode_words(v: &str) -> String {
    use base64::Engine;
    let mut out = String::new();
    let mut rest = v;
    let mut last_was_word = false;
    while !rest.is_empty() {
        if let Some(start) = rest.find("=?") {
            let between = &rest[..start];
            let after = &rest[start + 2..];
            let parts: Vec<&str> = after.splitn(3, '?').collect();
            if parts.len() == 3 {
                if let Some(end) = parts[2].find("?=") {
                    if !(last_was_word && between.trim().is_empty()) {
                        out.push_str(between);
                    }
                    let text = &parts[2][..end];
                    let bytes = if parts[1].eq_ignore_ascii_case("b") {
                        base64::engine::general_purpose::STANDARD
                            .decode(text)
                            .unwrap_or_default()
                    } else {
                        q_decode(text)
                    };
                    out.push_str(&String::from_utf8_lossy(&bytes));
                    last_was_word = true;
                    let consumed = start + 2 + parts[0].len() + parts[1].len() + 2 + end + 2;
                    rest = &rest[consumed..];
                    continue;
                }
            }
        }
        out.push_str(rest);
        break;
    }
    out
}

fn q_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'_' => out.push(b' '),
            b'=' if i + 2 < b.len() + 1 && i + 2 <= b.len() - 1 + 1 => {
                let hex = std::str::from_utf8(&b[i + 1..(i + 3).min(b.len())]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

pub fn read_mails(dir: &Path) -> Vec<Mail> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    // Files are named pid-counter; the modification time orders across restarts.
    names.sort_by_key(|p| {
        (
            std::fs::metadata(p).and_then(|m| m.modified()).ok(),
            p.clone(),
        )
    });
    names
        .iter()
        .map(|p| {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).expect("mail file"))
                    .expect("mail json");
            Mail {
                rcpt_tos: v["rcpt_tos"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
                data: v["data"].as_str().unwrap_or_default().to_string(),
            }
        })
        .collect()
}

/// One refusal the server answered (`--reject-*`, `--defer-*`): stage `RCPT` or `DATA`,
/// the reply, and the recipient or the Message-ID.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub stage: String,
    pub reply: String,
    pub rcpt: String,
    pub message_id: String,
}

pub fn read_refusals(dir: &Path) -> Vec<Refusal> {
    let text = std::fs::read_to_string(dir.join("refusals.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            Refusal {
                stage: s("stage"),
                reply: s("reply"),
                rcpt: s("rcpt"),
                message_id: s("message_id"),
            }
        })
        .collect()
}

/// Waits until at least `n` mails arrived, then returns them all.
pub async fn wait_mails(dir: &Path, n: usize) -> Vec<Mail> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mails = read_mails(dir);
        if mails.len() >= n {
            return mails;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} mails, got {}: {:?}",
            mails.len(),
            mails.iter().map(Mail::subject).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
