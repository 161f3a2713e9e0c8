//! Simulator state → the real server's JSON shapes (see `wire`).

use chrono::{DateTime, Days, TimeZone, Utc};

use super::scenario::IntervalType;
use super::wire::{
    ApiCostPlan, ApiImage, ApiIpAssignment, ApiLineItem, ApiPrice, ApiRegion, ApiResource,
    ApiSshKey, ApiStatus, ApiSubscription, ApiSubscriptionPayment, ApiTemplate, ApiTimeSeriesPoint,
    ApiVmHistory, ApiVmPayment, ApiVmStatus,
};
use super::world::{grace_days, Catalogue, Image, SimPayment, SimVm, Template, World};

/// Points in the hourly series, one a minute.
const SERIES_POINTS: i64 = 60;

fn catalogue_epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

pub fn interval_type_str(t: IntervalType) -> &'static str {
    match t {
        IntervalType::Day => "day",
        IntervalType::Month => "month",
        IntervalType::Year => "year",
    }
}

pub fn template(catalogue: &Catalogue, t: &Template) -> ApiTemplate {
    ApiTemplate {
        id: t.id,
        name: t.name.clone(),
        created: catalogue_epoch(),
        cpu: t.cpu,
        memory: t.memory,
        disk_size: t.disk_size,
        disk_type: t.disk_type.clone(),
        disk_interface: t.disk_interface.clone(),
        cost_plan: ApiCostPlan {
            id: t.id,
            name: t.cost.name.clone(),
            currency: t.cost.currency.clone(),
            amount: t.cost.amount,
            other_price: Vec::new(),
            interval_amount: t.cost.interval_amount,
            interval_type: interval_type_str(t.cost.interval_type),
        },
        region: ApiRegion {
            id: catalogue.region_id(&t.region),
            name: t.region.clone(),
            company_id: 1,
        },
        ip4_count: 1,
        ip6_count: 1,
    }
}

pub fn image(i: &Image) -> ApiImage {
    ApiImage {
        id: i.id,
        distribution: i.distribution.clone(),
        flavour: i.flavour.clone(),
        version: i.version.clone(),
        release_date: i.release_date,
        cpu_arch: "x86_64".into(),
        default_username: i.default_username.clone(),
        popularity: 0.0,
    }
}

fn status(vm: &SimVm) -> ApiStatus {
    let s = vm.status();
    ApiStatus {
        timestamp: s.timestamp,
        state: s.state.as_str(),
        cpu_usage: s.cpu_usage,
        mem_usage: s.mem_usage,
        uptime: s.uptime,
        net_in: s.net_in,
        net_out: s.net_out,
        disk_write: s.disk_write,
        disk_read: s.disk_read,
    }
}

fn ip_assignments(vm: &SimVm) -> Vec<ApiIpAssignment> {
    if !vm.is_provisioned() {
        return Vec::new();
    }
    vec![
        ApiIpAssignment {
            id: vm.id.saturating_mul(2).saturating_sub(1),
            ip: format!("{}/8", vm.ipv4),
            gateway: "127.0.0.1/8".into(),
            forward_dns: None,
            reverse_dns: vm.reverse_dns.clone(),
        },
        ApiIpAssignment {
            id: vm.id.saturating_mul(2),
            ip: format!("fe80::be24:11ff:fe00:{:x}/64", vm.id & 0xffff),
            gateway: "fe80::1".into(),
            forward_dns: None,
            reverse_dns: None,
        },
    ]
}

/// `deleting_on` = expires + grace (by subscription age now).
pub fn deleting_on(world: &World, vm: &SimVm, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let grace = grace_days(vm.created, now, world.settings.delete_after_days);
    vm.expires?.checked_add_days(Days::new(u64::from(grace)))
}

pub fn vm_status(world: &World, vm: &SimVm, now: DateTime<Utc>) -> ApiVmStatus {
    let (key_id, key_created) = world
        .user(&vm.owner)
        .map_or((1, vm.created), |u| (u.id, u.created));
    ApiVmStatus {
        id: vm.id,
        created: vm.created,
        expires: vm.expires,
        mac_address: vm.mac_address(),
        image: image(&vm.image),
        template: template(&world.catalogue, &vm.template),
        ssh_key: ApiSshKey {
            id: key_id,
            name: "sim-key".into(),
            created: key_created,
            vms: Vec::new(),
        },
        ip_assignments: ip_assignments(vm),
        status: status(vm),
        auto_renewal_enabled: vm.auto_renewal_enabled,
        deleting_on: deleting_on(world, vm, now),
        subscription_id: (!vm.no_subscription).then_some(vm.id),
        max_prepay_days: world.settings.max_prepay_days,
        host_ssh_keys: Vec::new(),
    }
}

/// The hourly series: 60 one-minute points ending at the current minute.
pub fn time_series(vm: &SimVm, now: DateTime<Utc>) -> Vec<ApiTimeSeriesPoint> {
    let end = now.timestamp().div_euclid(60) * 60;
    let mem_size = vm.template.memory;
    (0..SERIES_POINTS)
        .map(|i| {
            let t = end - (SERIES_POINTS - 1 - i) * 60;
            let s = vm.usage_at(t);
            let memory = if vm.memory_as_fraction {
                s.memory
            } else {
                (s.memory * mem_size as f64).round()
            };
            ApiTimeSeriesPoint {
                timestamp: t,
                cpu: s.cpu as f32,
                memory: memory as f32,
                memory_size: mem_size,
                net_in: s.net_in as f32,
                net_out: s.net_out as f32,
                disk_write: s.disk_write as f32,
                disk_read: s.disk_read as f32,
            }
        })
        .collect()
}

pub fn subscription(vm: &SimVm) -> ApiSubscription {
    let price = |amount| ApiPrice {
        currency: vm.template.cost.currency.clone(),
        amount,
    };
    ApiSubscription {
        id: vm.id,
        name: format!("VM{} subscription", vm.id),
        description: None,
        created: vm.created,
        expires: vm.expires,
        is_active: vm.subscription_active,
        auto_renewal_enabled: vm.auto_renewal_enabled,
        company_id: 1,
        line_items: vec![ApiLineItem {
            id: vm.id,
            subscription_id: vm.id,
            name: format!("VM{} - {}", vm.id, vm.template.name),
            description: None,
            price: price(vm.template.cost.amount),
            setup_fee: price(0),
            configuration: None,
            resource: ApiResource {
                kind: "vps",
                vm_id: vm.id,
            },
        }],
    }
}

pub fn payment(vm: &SimVm, p: &SimPayment) -> ApiSubscriptionPayment {
    let zero = ApiPrice {
        currency: p.currency.clone(),
        amount: 0,
    };
    ApiSubscriptionPayment {
        id: p.id.clone(),
        subscription_id: vm.id,
        created: p.created,
        expires: p.expires,
        amount: ApiPrice {
            currency: p.currency.clone(),
            amount: p.amount,
        },
        payment_method: p.payment_method.clone(),
        payment_type: p.payment_type.clone(),
        is_paid: p.is_paid,
        paid_at: p.paid_at,
        tax: zero.clone(),
        processing_fee: zero,
        data: p.data.clone(),
    }
}

pub fn vm_payment(vm: &SimVm, p: &SimPayment) -> ApiVmPayment {
    ApiVmPayment {
        id: p.id.clone(),
        vm_id: vm.id,
        created: p.created,
        expires: p.expires,
        amount: p.amount,
        tax: 0,
        processing_fee: 0,
        currency: p.currency.clone(),
        is_paid: p.is_paid,
        paid_at: p.paid_at,
        data: p.data.clone(),
        time: p.time,
        is_upgrade: false,
        is_refund: false,
    }
}

/// History, newest first.
pub fn history(vm: &SimVm) -> Vec<ApiVmHistory> {
    let mut out: Vec<ApiVmHistory> = vm
        .history
        .iter()
        .map(|h| ApiVmHistory {
            id: h.id,
            vm_id: vm.id,
            action_type: h.action_type,
            timestamp: h.timestamp,
            initiated_by: h.initiated_by,
            previous_state: None,
            new_state: None,
            metadata: None,
            description: Some(h.description.clone()),
        })
        .collect();
    out.sort_by(|a, b| b.timestamp.cmp(&a.timestamp).then(b.id.cmp(&a.id)));
    out
}
