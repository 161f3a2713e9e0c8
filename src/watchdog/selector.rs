//! Which VMs a rule or a maintenance window applies to.
//!
//! Every field narrows the selection; an empty field matches everything. VM names match
//! shell-style patterns (`web-*`, `db-?`), so a rule can follow VMs that come and go.

use serde::Deserialize;
use wildmatch::WildMatch;

use vpswatch_model::account::ProviderKind;

/// As written in the config (`[rules.match]`, `[maintenance.match]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SelectorConfig {
    pub provider: Option<ProviderKind>,
    /// Account names.
    pub accounts: Vec<String>,
    /// VM ids (exact).
    pub vms: Vec<String>,
    /// VM name patterns (`*` any run of characters, `?` one character).
    pub names: Vec<String>,
}

/// A compiled selector.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    provider: Option<ProviderKind>,
    accounts: Vec<String>,
    vms: Vec<String>,
    names: Vec<WildMatch>,
}

/// What a selector is matched against.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub provider: ProviderKind,
    pub account: &'a str,
    /// VM id; `None` for account-level targets.
    pub vm: Option<&'a str>,
    pub vm_name: Option<&'a str>,
}

impl Selector {
    pub fn new(c: &SelectorConfig) -> Selector {
        Selector {
            provider: c.provider,
            accounts: c.accounts.clone(),
            vms: c.vms.clone(),
            names: c.names.iter().map(|p| WildMatch::new(p)).collect(),
        }
    }

    /// True when the selector names VMs (by id or name), so it cannot apply to an
    /// account-level target.
    pub fn names_vms(&self) -> bool {
        !self.vms.is_empty() || !self.names.is_empty()
    }

    /// Whether some VM (or the account itself) of this account could match.
    pub fn may_match_account(&self, provider: ProviderKind, account: &str) -> bool {
        self.provider.is_none_or(|p| p == provider)
            && (self.accounts.is_empty() || self.accounts.iter().any(|a| a == account))
    }

    pub fn matches(&self, t: Target<'_>) -> bool {
        if self.provider.is_some_and(|p| p != t.provider) {
            return false;
        }
        if !self.accounts.is_empty() && !self.accounts.iter().any(|a| a == t.account) {
            return false;
        }
        if !self.vms.is_empty() && !t.vm.is_some_and(|id| self.vms.iter().any(|v| v == id)) {
            return false;
        }
        if !self.names.is_empty()
            && !t
                .vm_name
                .is_some_and(|n| self.names.iter().any(|p| p.matches(n)))
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm<'a>(account: &'a str, id: &'a str, name: &'a str) -> Target<'a> {
        Target {
            provider: ProviderKind::Lnvps,
            account,
            vm: Some(id),
            vm_name: Some(name),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::new(&SelectorConfig::default());
        assert!(s.matches(vm("a", "1", "web-1")));
    }

    #[test]
    fn every_field_narrows() {
        let s = Selector::new(&SelectorConfig {
            provider: Some(ProviderKind::Lnvps),
            accounts: vec!["a".into()],
            vms: vec![],
            names: vec!["web-*".into()],
        });
        assert!(s.matches(vm("a", "1", "web-1")));
        assert!(!s.matches(vm("b", "1", "web-1")));
        assert!(!s.matches(vm("a", "1", "db-1")));
        let mut stable = vm("a", "1", "web-1");
        stable.provider = ProviderKind::Stablevps;
        assert!(!s.matches(stable));
        let account_level = Target {
            provider: ProviderKind::Lnvps,
            account: "a",
            vm: None,
            vm_name: None,
        };
        assert!(!s.matches(account_level));
    }
}
