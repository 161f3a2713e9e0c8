//! The configuration reference, declared by the modules that own each section and
//! rendered as one Markdown table (`vpswatch config-doc`, docs/configuration.md).

/// One documented configuration key (or a pointer to a section documented elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDoc {
    /// The key path as written in the table, in Markdown (e.g. `` `web.idle_timeout` ``).
    pub key: &'static str,
    /// Its default, in Markdown (`—` when there is none).
    pub default: &'static str,
    pub meaning: &'static str,
}

/// The reference table of `sections`, in order.
pub fn markdown_table(sections: &[&[KeyDoc]]) -> String {
    let mut out = String::from("## Reference\n\n| key | default | meaning |\n|---|---|---|\n");
    for key in sections.iter().flat_map(|s| s.iter()) {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            key.key, key.default, key.meaning
        ));
    }
    out
}
