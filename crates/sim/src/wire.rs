//! The real server's JSON shapes, field for field and in its field order (clients and
//! tests compare against captured samples, some byte for byte).

use chrono::{DateTime, Utc};
use serde::Serialize;

/// `{"data":T}`.
#[derive(Serialize)]
pub struct Data<T: Serialize> {
    pub data: T,
}

/// `{"data":[..],"total","limit","offset"}`.
#[derive(Serialize)]
pub struct Paginated<T: Serialize> {
    pub data: Vec<T>,
    pub total: u64,
    pub limit: u64,
    pub offset: u64,
}

/// `{"error":"msg"}`.
#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'a str,
}

#[derive(Serialize, Clone)]
pub struct ApiVmStatus {
    pub id: u64,
    pub created: DateTime<Utc>,
    pub expires: Option<DateTime<Utc>>,
    pub mac_address: String,
    pub image: ApiImage,
    pub template: ApiTemplate,
    pub ssh_key: ApiSshKey,
    pub ip_assignments: Vec<ApiIpAssignment>,
    pub status: ApiStatus,
    pub auto_renewal_enabled: bool,
    pub deleting_on: Option<DateTime<Utc>>,
    pub subscription_id: Option<u64>,
    pub max_prepay_days: u32,
    pub host_ssh_keys: Vec<ApiHostSshKey>,
}

#[derive(Serialize, Clone)]
pub struct ApiHostSshKey {
    pub key_type: String,
    pub public_key: String,
    pub fingerprint_sha256: String,
}

#[derive(Serialize, Clone)]
pub struct ApiImage {
    pub id: u64,
    pub distribution: String,
    pub flavour: String,
    pub version: String,
    pub release_date: DateTime<Utc>,
    pub cpu_arch: String,
    pub default_username: Option<String>,
    pub popularity: f32,
}

#[derive(Serialize, Clone)]
pub struct ApiTemplate {
    pub id: u64,
    pub name: String,
    pub created: DateTime<Utc>,
    pub cpu: u16,
    pub memory: u64,
    pub disk_size: u64,
    pub disk_type: String,
    pub disk_interface: String,
    pub cost_plan: ApiCostPlan,
    pub region: ApiRegion,
    pub ip4_count: u32,
    pub ip6_count: u32,
}

#[derive(Serialize, Clone)]
pub struct ApiCostPlan {
    pub id: u64,
    pub name: String,
    pub currency: String,
    pub amount: u64,
    pub other_price: Vec<ApiPrice>,
    pub interval_amount: u64,
    pub interval_type: &'static str,
}

#[derive(Serialize, Clone)]
pub struct ApiRegion {
    pub id: u64,
    pub name: String,
    pub company_id: u64,
}

#[derive(Serialize, Clone)]
pub struct ApiSshKey {
    pub id: u64,
    pub name: String,
    pub created: DateTime<Utc>,
    pub vms: Vec<u64>,
}

#[derive(Serialize, Clone)]
pub struct ApiIpAssignment {
    pub id: u64,
    pub ip: String,
    pub gateway: String,
    pub forward_dns: Option<String>,
    pub reverse_dns: Option<String>,
}

#[derive(Serialize, Clone, Default)]
pub struct ApiStatus {
    pub timestamp: i64,
    pub state: &'static str,
    pub cpu_usage: f32,
    pub mem_usage: f32,
    pub uptime: u64,
    pub net_in: u64,
    pub net_out: u64,
    pub disk_write: u64,
    pub disk_read: u64,
}

#[derive(Serialize, Clone)]
pub struct ApiTimeSeriesPoint {
    pub timestamp: i64,
    pub cpu: f32,
    pub memory: f32,
    pub memory_size: u64,
    pub net_in: f32,
    pub net_out: f32,
    pub disk_write: f32,
    pub disk_read: f32,
}

#[derive(Serialize)]
pub struct ApiAccount {
    pub account_type: &'static str,
    pub contact_nip17: bool,
    pub contact_email: bool,
    pub contact_telegram: bool,
    pub telegram_linked: bool,
    pub contact_whatsapp: bool,
    pub whatsapp_verified: bool,
    pub country_code: Option<String>,
    pub name: Option<String>,
    pub address_1: Option<String>,
    pub address_2: Option<String>,
    pub state: Option<String>,
    pub city: Option<String>,
    pub postcode: Option<String>,
    pub tax_id: Option<String>,
    pub tax: Vec<ApiTaxInfo>,
}

#[derive(Serialize)]
pub struct ApiTaxInfo {
    pub company_id: u64,
    pub company_name: &'static str,
    pub rate: f64,
    pub treatment: &'static str,
}

#[derive(Serialize)]
pub struct ApiPaymentMethod {
    pub id: u64,
    pub provider: String,
    pub name: Option<String>,
    pub created: DateTime<Utc>,
    pub card_brand: Option<String>,
    pub card_last_four: Option<String>,
    pub exp_month: Option<u16>,
    pub exp_year: Option<u16>,
    pub is_default: bool,
    pub enabled: bool,
}

#[derive(Serialize)]
pub struct ApiSubscription {
    pub id: u64,
    pub name: String,
    pub description: Option<String>,
    pub created: DateTime<Utc>,
    pub expires: Option<DateTime<Utc>>,
    pub is_active: bool,
    pub auto_renewal_enabled: bool,
    pub company_id: u64,
    pub line_items: Vec<ApiLineItem>,
}

#[derive(Serialize)]
pub struct ApiLineItem {
    pub id: u64,
    pub subscription_id: u64,
    pub name: String,
    pub description: Option<String>,
    pub price: ApiPrice,
    pub setup_fee: ApiPrice,
    pub configuration: Option<serde_json::Value>,
    pub resource: ApiResource,
}

#[derive(Serialize, Clone)]
pub struct ApiPrice {
    pub currency: String,
    pub amount: u64,
}

#[derive(Serialize)]
pub struct ApiResource {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub vm_id: u64,
}

/// One subscription payment (`/subscriptions/{id}/payments`).
#[derive(Serialize, Clone)]
pub struct ApiSubscriptionPayment {
    pub id: String,
    pub subscription_id: u64,
    pub created: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    pub amount: ApiPrice,
    pub payment_method: String,
    pub payment_type: String,
    pub is_paid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<DateTime<Utc>>,
    pub tax: ApiPrice,
    pub processing_fee: ApiPrice,
    pub data: serde_json::Value,
}

/// A VM payment (`/vm/{id}/renew`, `/payment/{id}`).
#[derive(Serialize, Clone)]
pub struct ApiVmPayment {
    pub id: String,
    pub vm_id: u64,
    pub created: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    pub amount: u64,
    pub tax: u64,
    pub processing_fee: u64,
    pub currency: String,
    pub is_paid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<DateTime<Utc>>,
    pub data: serde_json::Value,
    pub time: u64,
    pub is_upgrade: bool,
    pub is_refund: bool,
}

#[derive(Serialize)]
pub struct ApiRenewalQuote {
    pub amount: u64,
    pub tax: u64,
    pub processing_fee: u64,
    pub currency: String,
    pub time: u64,
}

#[derive(Serialize, Clone)]
pub struct ApiVmHistory {
    pub id: u64,
    pub vm_id: u64,
    pub action_type: &'static str,
    pub timestamp: DateTime<Utc>,
    pub initiated_by: &'static str,
    pub previous_state: Option<String>,
    pub new_state: Option<String>,
    pub metadata: Option<String>,
    pub description: Option<String>,
}

#[derive(Serialize)]
pub struct ApiTemplates {
    pub templates: Vec<ApiTemplate>,
}

#[derive(Serialize)]
pub struct ApiPaymentInfo {
    pub name: &'static str,
    pub currencies: Vec<&'static str>,
}

#[derive(Serialize)]
pub struct ApiExchangeRates {
    pub updated: DateTime<Utc>,
    pub base: String,
    pub rates: std::collections::BTreeMap<String, f64>,
}
