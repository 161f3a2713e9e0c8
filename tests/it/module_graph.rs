//! The crates' top-level modules must form a DAG, as the crates themselves do (Cargo
//! refuses crate cycles; nothing refuses a module cycle inside a crate). This test reads
//! every `crate::` path in each library crate of the workspace, draws an edge from the
//! top-level module that holds the file to the top-level module it names, and fails with
//! the cycle spelled out, file by file, when the edges close a loop.
//!
//! It also holds the one rule Cargo cannot: the daemon library never names the
//! simulator (only the binary's `demo` glue and the tests may).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A library crate: its `src` directory and the files that belong to other targets.
struct CrateDir {
    name: &'static str,
    src: &'static str,
    /// Files under `src` that are not part of the library (the binary and its modules).
    not_lib: &'static [&'static str],
}

const CRATES: &[CrateDir] = &[
    CrateDir {
        name: "vpswatch (daemon)",
        src: "src",
        not_lib: &["main.rs", "demo.rs"],
    },
    CrateDir {
        name: "vpswatch-model",
        src: "crates/model/src",
        not_lib: &[],
    },
    CrateDir {
        name: "vpswatch-providers",
        src: "crates/providers/src",
        not_lib: &[],
    },
    CrateDir {
        name: "vpswatch-sim",
        src: "crates/sim/src",
        not_lib: &[],
    },
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `src/watchdog/engine.rs` → `watchdog`.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_string())
}

/// Source text without `//` comments, so a doc link is not taken for an import.
fn code_only(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rewrites the `super::` chains that reach the crate root as `crate::`: one `super` in
/// `x.rs` or `x/mod.rs`, two in `x/y.rs`, and so on.
fn to_crate_paths(code: &str, rel: &Path) -> String {
    let parts: Vec<_> = rel.components().collect();
    let is_mod = rel.file_name().is_some_and(|n| n == "mod.rs");
    let depth = parts.len() - usize::from(is_mod);
    if depth == 0 {
        return code.to_string();
    }
    code.replace(&"super::".repeat(depth), "crate::")
}

/// The top-level modules named by `crate::x` paths and `use crate::{x, y::z}` groups.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `vpswatch_crate::` or the like, not this crate's root.
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: split on commas at brace depth 0.
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.insert(ident(group[start..j].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(group[start..j].trim()));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

type Edges = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Edges between top-level modules, each with the files that make it.
fn module_edges(krate: &CrateDir) -> Edges {
    let src = Path::new(ROOT).join(krate.src);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: Edges = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap_or(&file);
        if krate.not_lib.iter().any(|n| rel == Path::new(n)) {
            continue;
        }
        let Some(from) = top_module(&src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("source file");
        for to in named_modules(&to_crate_paths(&code_only(&text), rel)) {
            if to != from {
                edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    edges
}

/// One cycle among the edges, if there is any (depth-first search with colours).
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &Edges,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flat_map(|m| m.keys()) {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(node, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn describe(cycle: &[String], edges: &Edges) -> String {
    cycle
        .windows(2)
        .map(|w| {
            let files = &edges[&w[0]][&w[1]];
            format!(
                "  {} -> {} (in {})",
                w[0],
                w[1],
                files.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn top_level_modules_of_every_crate_form_a_dag() {
    let mut failures = Vec::new();
    for krate in CRATES {
        let edges = module_edges(krate);
        assert!(
            !edges.is_empty() || krate.src.contains("model"),
            "{}: no module edges found; is {} still the crate's source?",
            krate.name,
            krate.src
        );
        if let Some(cycle) = find_cycle(&edges) {
            failures.push(format!(
                "{}: the top-level modules {} import each other in a circle:\n{}",
                krate.name,
                cycle.join(" -> "),
                describe(&cycle, &edges)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_checker_sees_a_cycle_when_there_is_one() {
    let mut edges: Edges = BTreeMap::new();
    for (a, b) in [
        ("config", "watchdog"),
        ("watchdog", "store"),
        ("watchdog", "config"),
    ] {
        edges
            .entry(a.into())
            .or_default()
            .entry(b.into())
            .or_default()
            .insert(format!("{a}.rs"));
    }
    let cycle = find_cycle(&edges).expect("config <-> watchdog is a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&"config".to_string()) && cycle.contains(&"watchdog".to_string()));
    assert_eq!(
        to_crate_paths("use super::super::x;", Path::new("a/b.rs")),
        "use crate::x;"
    );
    assert_eq!(
        named_modules("use crate::{config::Problem, store};\nlet x = crate::clock::now();"),
        ["clock", "config", "store"].map(String::from).into()
    );
}

#[test]
fn the_daemon_library_never_names_the_simulator() {
    let src = Path::new(ROOT).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| {
            let rel = f.strip_prefix(&src).unwrap_or(f);
            !CRATES[0].not_lib.iter().any(|n| rel == Path::new(n))
        })
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            // The library's own unit tests may use the simulator (a dev-dependency).
            let product = text.split("#[cfg(test)]").next().unwrap_or("");
            code_only(product).contains("vpswatch_sim")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "the daemon library must not depend on the simulator, but these files name vpswatch_sim: {offenders:?}"
    );
}
