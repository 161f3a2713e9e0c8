//! The `[providers]` section: the limits all accounts of one provider share and the
//! StableVPS plan table overrides. Read here, beside the clients they configure, so the
//! file that assembles the configuration knows no provider's keys.

use std::collections::BTreeMap;

use serde::Deserialize;
use vpswatch_model::account::ProviderKind;
use vpswatch_model::problem::Problem;

use crate::account::ProviderLimits;
use crate::runway::BillingPeriod;
use crate::stablevps::{self, Plan, PlanCycle, PlanTable};

/// `[providers]` as written; [`check`] validates it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawProviders {
    lnvps: ProviderLimits,
    stablevps: RawStablevps,
}

/// `[providers.stablevps]`: the shared limits plus the plan table overrides. Spelled out
/// rather than flattened so unknown keys are still reported with their path.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawStablevps {
    requests_per_minute: u32,
    concurrency: usize,
    max_attempts: u32,
    plans: BTreeMap<String, RawPlan>,
}

impl Default for RawStablevps {
    fn default() -> Self {
        let d = ProviderLimits::default();
        Self {
            requests_per_minute: d.requests_per_minute,
            concurrency: d.concurrency,
            max_attempts: d.max_attempts,
            plans: BTreeMap::new(),
        }
    }
}

impl RawStablevps {
    fn limits(&self) -> ProviderLimits {
        ProviderLimits {
            requests_per_minute: self.requests_per_minute,
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
        }
    }
}

/// `[providers.stablevps.plans.<planId>]`: every field overrides the built-in value.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawPlan {
    name: Option<String>,
    cpus: Option<f64>,
    memory_bytes: Option<f64>,
    disk_bytes: Option<f64>,
    image: Option<String>,
    cycles: BTreeMap<String, RawCycle>,
}

/// `[providers.stablevps.plans.<planId>.cycles.<billingCycle>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawCycle {
    price: Option<f64>,
    period: Option<String>,
}

/// Checks the section: each provider's limits (every one at least 1) and the StableVPS
/// plan table with its overrides applied. Problems carry their key paths.
pub fn check(
    mut raw: RawProviders,
    problems: &mut Vec<Problem>,
) -> (BTreeMap<ProviderKind, ProviderLimits>, PlanTable) {
    let stablevps_limits = raw.stablevps.limits();
    for (key, limits) in [
        ("providers.lnvps", &raw.lnvps),
        ("providers.stablevps", &stablevps_limits),
    ] {
        if limits.requests_per_minute == 0 {
            problems.push(Problem {
                path: format!("{key}.requests_per_minute"),
                message: "must be at least 1".into(),
            });
        }
        if limits.concurrency == 0 {
            problems.push(Problem {
                path: format!("{key}.concurrency"),
                message: "must be at least 1".into(),
            });
        }
        if limits.max_attempts == 0 {
            problems.push(Problem {
                path: format!("{key}.max_attempts"),
                message: "must be at least 1".into(),
            });
        }
    }

    let plans = merge_plans(std::mem::take(&mut raw.stablevps.plans), problems);
    let limits = BTreeMap::from([
        (ProviderKind::Lnvps, raw.lnvps),
        (ProviderKind::Stablevps, stablevps_limits),
    ]);
    (limits, plans)
}

/// The built-in StableVPS plan table with `[providers.stablevps.plans]` applied: a known
/// plan's fields are overridden one by one, an unknown plan id is added. A billing cycle
/// other than monthly/yearly needs an explicit `period`; a new cycle needs a `price`.
fn merge_plans(raw: BTreeMap<String, RawPlan>, problems: &mut Vec<Problem>) -> PlanTable {
    let mut plans = stablevps::builtin_plans();
    for (id, rp) in raw {
        let path = format!("providers.stablevps.plans.{id}");
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                path: format!("{path}.{key}"),
                message,
            })
        };
        let plan = plans.entry(id.clone()).or_insert_with(|| Plan {
            name: id.clone(),
            ..Plan::default()
        });
        if let Some(n) = rp.name {
            plan.name = n;
        }
        if let Some(i) = rp.image {
            plan.image = i;
        }
        for (key, value, slot) in [
            ("cpus", rp.cpus, &mut plan.cpus),
            ("memory_bytes", rp.memory_bytes, &mut plan.memory_bytes),
            ("disk_bytes", rp.disk_bytes, &mut plan.disk_bytes),
        ] {
            match value {
                Some(v) if v.is_finite() && v >= 0.0 => *slot = Some(v),
                Some(_) => problem(key, "must be a number of at least 0".into()),
                None => {}
            }
        }
        for (cycle, rc) in rp.cycles {
            let key = |field: &str| format!("cycles.{cycle}.{field}");
            let existing = plan.cycles.get(&cycle).cloned();
            let period = match rc.period.as_deref() {
                Some(text) => match BillingPeriod::parse(text) {
                    Ok(p) => Some(p),
                    Err(why) => {
                        problem(&key("period"), why.to_string());
                        None
                    }
                },
                None => match existing.as_ref().map(|c| c.period) {
                    Some(p) => Some(p),
                    None => match stablevps::default_period(&cycle) {
                        Some(p) => Some(p),
                        None => {
                            problem(
                                &key("period"),
                                format!(
                                    "missing: only monthly and yearly have a default period; \
                                     set e.g. period = \"3 months\" or \"90d\" for {cycle:?}"
                                ),
                            );
                            None
                        }
                    },
                },
            };
            let price = match rc.price.or(existing.as_ref().map(|c| c.price)) {
                Some(p) if p.is_finite() && p >= 0.0 => Some(p),
                Some(_) => {
                    problem(&key("price"), "must be a number of at least 0 (EUR)".into());
                    None
                }
                None => {
                    problem(
                        &key("price"),
                        "missing: a billing cycle the built-in table does not know needs a price (EUR)"
                            .into(),
                    );
                    None
                }
            };
            if let (Some(price), Some(period)) = (price, period) {
                plan.cycles.insert(cycle, PlanCycle { price, period });
            }
        }
    }
    plans
}
