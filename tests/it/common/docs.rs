//! Reading the repository's Markdown the way GitHub renders it: fenced code blocks, the
//! anchors its headings get, and the relative links between the files.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A file of the repository, by its path from the root.
pub fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// README.md, every docs/*.md and deploy/*/README.md, as paths from the repository
/// root, sorted.
pub fn markdown_files() -> Vec<String> {
    let mut files = vec!["README.md".to_string()];
    let dir = Path::new(ROOT).join("docs");
    let mut docs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".md").then(|| format!("docs/{name}"))
        })
        .collect();
    docs.sort();
    files.extend(docs);
    let deploy = Path::new(ROOT).join("deploy");
    let mut readmes: Vec<String> = std::fs::read_dir(&deploy)
        .unwrap_or_else(|e| panic!("{}: {e}", deploy.display()))
        .flatten()
        .filter(|e| e.path().join("README.md").is_file())
        .map(|e| format!("deploy/{}/README.md", e.file_name().to_string_lossy()))
        .collect();
    readmes.sort();
    files.extend(readmes);
    files
}

/// The lines of a Markdown text outside fenced code blocks, with their 1-based numbers.
pub fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        match fence {
            Some(f) if t.starts_with(f) => fence = None,
            Some(_) => {}
            None if t.starts_with("```") => fence = Some("```"),
            None if t.starts_with("~~~") => fence = Some("~~~"),
            None => out.push((i + 1, line)),
        }
    }
    out
}

/// The bodies of the fenced code blocks of one language (` ```toml `), in order.
pub fn code_blocks<'a>(text: &'a str, lang: &str) -> Vec<&'a str> {
    let open = format!("```{lang}\n");
    text.split(open.as_str())
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect()
}

/// GitHub's anchor for a heading: lower case; letters, digits, `-` and `_` kept; each
/// space becomes `-`; everything else (punctuation, backticks, symbols) is dropped.
pub fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown text's headings; a repeated heading gets `-1`, `-2`, … as
/// on GitHub.
pub fn anchors(text: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        let Some(title) = line.get(hashes..) else {
            continue;
        };
        if !(1..=6).contains(&hashes) || !(title.is_empty() || title.starts_with(' ')) {
            continue;
        }
        let base = slug(title.trim().trim_end_matches('#'));
        let mut anchor = base.clone();
        let mut n = 0;
        while !out.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
    }
    out
}

/// The anchors of a repository file's headings.
pub fn file_anchors(rel: &str) -> HashSet<String> {
    anchors(&read(rel))
}

/// A Markdown link in prose: the line it is on and its target as written.
pub struct Link {
    pub line: usize,
    pub target: String,
}

/// The inline links (`[text](target)`) of a Markdown text, outside code blocks and code
/// spans.
pub fn links(text: &str) -> Vec<Link> {
    let mut out = Vec::new();
    for (n, line) in prose_lines(text) {
        // Code spans are not links, but link texts may hold code spans: drop the spans'
        // contents and keep the rest of the line.
        let mut prose = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                prose.push_str(part);
            }
        }
        let mut rest = prose.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            out.push(Link {
                line: n,
                target: rest[..end].trim().to_string(),
            });
            rest = &rest[end..];
        }
    }
    out
}

/// Resolves a link target written in the file `from` (a path from the repository root) to
/// a path from the root and an anchor. `None` for links that leave the repository: a URL
/// with a scheme, or a path climbing above the root (which is reported as a problem).
pub fn resolve(from: &str, target: &str) -> Result<Option<(String, Option<String>)>, String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return Ok(None);
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a.to_string())),
        None => (target, None),
    };
    if path.is_empty() {
        return Ok(Some((from.to_string(), anchor)));
    }
    let base = Path::new(from).parent().unwrap_or(Path::new(""));
    let mut out = PathBuf::new();
    for c in base.join(path).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(format!("{target} leaves the repository"));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{target} is an absolute path"));
            }
        }
    }
    Ok(Some((out.to_string_lossy().into_owned(), anchor)))
}
