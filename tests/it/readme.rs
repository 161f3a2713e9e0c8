//! The README's metric reference must equal the table generated from the code.

#[test]
fn readme_metric_table_matches_the_code() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = "<!-- metrics-table:start -->\n";
    let end = "<!-- metrics-table:end -->";
    let a = readme.find(start).expect("start marker") + start.len();
    let b = readme.find(end).expect("end marker");
    let in_readme = &readme[a..b];
    let generated = vpswatch::metrics::defs::markdown_table();
    assert_eq!(
        in_readme.trim(),
        generated.trim(),
        "README metric table is out of date: run `vpswatch metrics-doc` and paste it between the markers"
    );
}

#[test]
fn every_metric_name_follows_prometheus_conventions() {
    use vpswatch::metrics::defs::{Kind, ALL};
    let mut names = std::collections::HashSet::new();
    for d in ALL {
        assert!(names.insert(d.name), "{} declared twice", d.name);
        assert!(
            d.name.starts_with("vps_") || d.name.starts_with("vpswatch_"),
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

/// The README's example scenario and example configuration must be accepted as written.
#[test]
fn readme_examples_parse() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    let scenario = blocks
        .iter()
        .find(|b| b.contains("[[timeline]]"))
        .expect("a scenario example");
    vpswatch_sim::lnvps::Scenario::from_toml(scenario).expect("README scenario parses");

    let config = blocks
        .iter()
        .find(|b| b.contains("[[accounts]]"))
        .expect("a config example");
    // The example names a key file that does not exist here: that must be the only
    // problem (everything else in the example is valid).
    let err = vpswatch::config::parse(config, "README", &|_| None).expect_err("no key file here");
    assert!(
        err.problems.len() == 1 && err.problems[0].path == "accounts[0].nsec_file",
        "{err}"
    );

    // The StableVPS example: only its two key files are missing here.
    let stable = blocks
        .iter()
        .find(|b| b.contains("provider = \"stablevps\""))
        .expect("a StableVPS config example");
    let err = vpswatch::config::parse(stable, "README", &|_| None).expect_err("no key files here");
    let mut paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        ["accounts[0].api_key_file", "accounts[0].write_api_key_file"],
        "{err}"
    );
}

/// The README's watchdog-steps scenario and maintenance windows are accepted as written.
#[test]
fn readme_watchdog_examples_parse() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    let steps = blocks
        .iter()
        .find(|b| b.contains("needs_power_cycle"))
        .expect("a watchdog-steps scenario example");
    let mut scenario =
        vpswatch_sim::lnvps::Scenario::from_toml(steps).expect("README steps scenario parses");
    let owner = "3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d";
    scenario.resolve_owners(Some(owner)).expect("owner");
    scenario.validate().expect("README steps scenario is valid");

    #[derive(serde::Deserialize)]
    struct Windows {
        maintenance: Vec<vpswatch::watchdog::maintenance::MaintenanceConfig>,
    }
    let windows = blocks
        .iter()
        .find(|b| b.contains("[[maintenance]]"))
        .expect("a maintenance example");
    let w: Windows = toml::from_str(windows).expect("README maintenance parses");
    let problems = vpswatch::watchdog::maintenance::validate(&w.maintenance);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(w.maintenance.len(), 2);
}
