//! The documentation against the code: README.md and docs/*.md must say what the code
//! does (the metric table, the examples) and every link between them must lead somewhere.

use crate::common::docs::{code_blocks, file_anchors, links, markdown_files, read, resolve, ROOT};

/// docs/metrics.md's metric reference must equal the table generated from the code.
#[test]
fn metric_table_in_docs_matches_the_code() {
    let doc = read("docs/metrics.md");
    let start = "<!-- metrics-table:start -->\n";
    let end = "<!-- metrics-table:end -->";
    let a = doc.find(start).expect("start marker") + start.len();
    let b = doc.find(end).expect("end marker");
    let in_doc = &doc[a..b];
    let generated = vpswatch::metrics::defs::markdown_table();
    assert_eq!(
        in_doc.trim(),
        generated.trim(),
        "docs/metrics.md's metric table is out of date: run `vpswatch metrics-doc` and paste \
         it between the markers"
    );
}

/// docs/configuration.md's reference table is the one the code declares (each section's
/// module owns its rows; `vpswatch config-doc` prints them).
#[test]
fn configuration_reference_in_docs_matches_the_code() {
    let doc = read("docs/configuration.md");
    let start = "<!-- config-reference:start -->\n";
    let end = "<!-- config-reference:end -->";
    let a = doc.find(start).expect("start marker") + start.len();
    let b = doc.find(end).expect("end marker");
    assert_eq!(
        doc[a..b].trim(),
        vpswatch::config::reference_table().trim(),
        "docs/configuration.md's reference table is out of date: run `vpswatch config-doc` \
         and paste it between the markers"
    );
}

#[test]
fn every_metric_name_follows_prometheus_conventions() {
    use vpswatch::metrics::defs::{Kind, ALL};
    let mut names = std::collections::HashSet::new();
    for d in ALL {
        assert!(names.insert(d.name), "{} declared twice", d.name);
        // process_* are the standard series every client library exports.
        assert!(
            d.name.starts_with("vps_")
                || d.name.starts_with("vpswatch_")
                || d.name.starts_with("process_"),
            "{}",
            d.name
        );
        assert_eq!(
            d.kind == Kind::Counter,
            d.name.ends_with("_total"),
            "{}",
            d.name
        );
        for bad in ["_count", "_sum", "_bucket"] {
            assert!(!d.name.ends_with(bad), "{} ends with {bad}", d.name);
        }
        assert!(!d.help.is_empty(), "{} has no help", d.name);
        assert!(d.labels.iter().all(|l| !l.is_empty()));
    }
}

/// The problems' key paths of a config text with no files or variables at hand.
fn problem_paths(text: &str, source: &str) -> Vec<String> {
    match vpswatch::config::parse(text, source, &|_| None) {
        Ok(_) => Vec::new(),
        Err(err) => {
            let mut paths: Vec<String> = err.problems.iter().map(|p| p.path.clone()).collect();
            paths.sort();
            paths
        }
    }
}

/// The README's minimal configuration, alone and with its watchdog rule, is valid as
/// written: the only problem here is the key file that does not exist on this machine.
#[test]
fn readme_minimal_config_is_valid() {
    let readme = read("README.md");
    let blocks = code_blocks(&readme, "toml");
    let account = blocks
        .iter()
        .find(|b| b.contains("[[accounts]]"))
        .expect("README has a minimal account");
    let rule = blocks
        .iter()
        .find(|b| b.contains("[[rules]]"))
        .expect("README has a watchdog rule");
    assert_eq!(
        problem_paths(account, "README"),
        ["accounts[0].nsec_file"],
        "README's minimal config:\n{account}"
    );
    let both = format!("{account}\n{rule}");
    assert_eq!(
        problem_paths(&both, "README"),
        ["accounts[0].nsec_file"],
        "README's minimal config with its rule:\n{both}"
    );
}

/// docs/configuration.md's examples are accepted as written, apart from their key files.
#[test]
fn configuration_examples_parse() {
    let doc = read("docs/configuration.md");
    let blocks = code_blocks(&doc, "toml");
    let config = blocks
        .iter()
        .find(|b| b.contains("provider = \"lnvps\""))
        .expect("an LNVPS config example");
    // The example names a key file that does not exist here: that must be the only
    // problem (everything else in the example is valid).
    assert_eq!(
        problem_paths(config, "docs/configuration.md"),
        ["accounts[0].nsec_file"]
    );

    // The StableVPS example: only its two key files are missing here.
    let stable = blocks
        .iter()
        .find(|b| b.contains("provider = \"stablevps\""))
        .expect("a StableVPS config example");
    assert_eq!(
        problem_paths(stable, "docs/configuration.md"),
        ["accounts[0].api_key_file", "accounts[0].write_api_key_file"]
    );
}

/// docs/development.md's simulator scenario and watchdog-steps scenario, and
/// docs/watchdog.md's maintenance windows, are accepted as written.
#[test]
fn simulator_and_maintenance_examples_parse() {
    let dev = read("docs/development.md");
    let blocks = code_blocks(&dev, "toml");
    let scenario = blocks
        .iter()
        .find(|b| b.contains("[[timeline]]"))
        .expect("a scenario example");
    vpswatch_sim::lnvps::Scenario::from_toml(scenario).expect("the scenario example parses");

    let steps = blocks
        .iter()
        .find(|b| b.contains("needs_power_cycle"))
        .expect("a watchdog-steps scenario example");
    let mut scenario =
        vpswatch_sim::lnvps::Scenario::from_toml(steps).expect("the steps scenario parses");
    let owner = "3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d";
    scenario.resolve_owners(Some(owner)).expect("owner");
    scenario.validate().expect("the steps scenario is valid");

    #[derive(serde::Deserialize)]
    struct Windows {
        maintenance: Vec<vpswatch::watchdog::maintenance::MaintenanceConfig>,
    }
    let watchdog = read("docs/watchdog.md");
    let windows = code_blocks(&watchdog, "toml")
        .into_iter()
        .find(|b| b.contains("[[maintenance]]"))
        .expect("a maintenance example");
    let w: Windows = toml::from_str(windows).expect("the maintenance example parses");
    let problems = vpswatch::watchdog::maintenance::validate(&w.maintenance);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(w.maintenance.len(), 2);
}

/// Every relative link in README.md and docs/*.md leads to a file of the repository and,
/// when it names an anchor in a Markdown file, to a heading of that file.
#[test]
fn relative_links_in_readme_and_docs_resolve() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        for link in links(&read(&file)) {
            let at = format!("{file}:{}: ({})", link.line, link.target);
            let (path, anchor) = match resolve(&file, &link.target) {
                Ok(Some(resolved)) => resolved,
                Ok(None) => continue,
                Err(e) => {
                    problems.push(format!("{at}: {e}"));
                    continue;
                }
            };
            checked += 1;
            if !std::path::Path::new(ROOT).join(&path).exists() {
                problems.push(format!("{at}: no file {path}"));
                continue;
            }
            if let Some(anchor) = anchor.filter(|_| path.ends_with(".md")) {
                if !file_anchors(&path).contains(&anchor) {
                    problems.push(format!("{at}: {path} has no heading #{anchor}"));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} relative links found: is the scan broken?"
    );
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

/// The link checker's own rules: GitHub's heading anchors, code that is not a link.
#[test]
fn link_checker_follows_github_rules() {
    use crate::common::docs::{anchors, slug};
    assert_eq!(slug("Scale: accounts × VMs"), "scale-accounts--vms");
    assert_eq!(
        slug("Web config: TLS, client certificates, basic auth, headers"),
        "web-config-tls-client-certificates-basic-auth-headers"
    );
    assert_eq!(slug("`vps_up` and snake_case"), "vps_up-and-snake_case");
    let a = anchors("# Top\n## Metrics\n```\n# not a heading\n```\n## Metrics\n#nospace\n");
    let mut a: Vec<_> = a.into_iter().collect();
    a.sort();
    assert_eq!(a, ["metrics", "metrics-1", "top"]);

    let l = links("see [a](x.md#b) and `[c](d.md)`, [`e`](#f)\n```\n[g](h.md)\n```\n");
    let targets: Vec<_> = l.iter().map(|l| l.target.as_str()).collect();
    assert_eq!(targets, ["x.md#b", "#f"]);

    assert_eq!(
        resolve("docs/a.md", "../README.md#x").unwrap(),
        Some(("README.md".into(), Some("x".into())))
    );
    assert_eq!(
        resolve("docs/a.md", "#y").unwrap(),
        Some(("docs/a.md".into(), Some("y".into())))
    );
    assert!(resolve("README.md", "../outside.md").is_err());
    assert_eq!(
        resolve("README.md", "https://example.com/a.md").unwrap(),
        None
    );
}
