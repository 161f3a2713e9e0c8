//! Money in major units (EUR 19.49, BTC 0.0001), as prices and balances are exported.

use serde::{Deserialize, Serialize};

/// An amount of money in major units (EUR 19.49, BTC 0.0001).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Money {
    pub amount: f64,
    pub currency: String,
}
