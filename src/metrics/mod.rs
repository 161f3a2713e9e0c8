//! Prometheus exposition: metric declarations, snapshot → families, and the encoder that
//! renders the whole exposition once per change so a scrape only copies cached bytes.

pub mod chunked;
pub mod defs;
pub mod encoder;
pub mod families;
pub mod process;
pub mod self_metrics;
pub mod source;

pub use chunked::Exposition;
pub use encoder::{Encoded, MetricsCache};
pub use self_metrics::SelfMetrics;
pub use source::FamilySource;
