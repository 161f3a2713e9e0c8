//! Built without the `cluster` feature (no etcd client, so no `protoc` at build time):
//! the config check refuses a `[cluster]` section and the daemon refuses a config that
//! carries one, so no replica can exist. This stand-in has no values; it keeps the
//! daemon's code one shape, and the compiler proves none of it runs.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::ClusterConfig;
use super::{ActionGuard, FenceError, LastAction, SharedPut, StateError, Versioned, View};
use crate::metrics::families::FamilySet;
use crate::metrics::FamilySource;

/// No replica: a type without values.
pub enum Cluster {}

impl Cluster {
    /// No replica in this build ([`crate::daemon::Daemon::start`] refuses `[cluster]`
    /// before it gets here).
    pub fn create(_config: ClusterConfig, _accounts: Vec<String>) -> Option<Arc<Cluster>> {
        None
    }

    pub fn subscribe(&self) -> watch::Receiver<View> {
        match *self {}
    }

    pub fn lease_ttl(&self) -> std::time::Duration {
        match *self {}
    }

    pub fn view(&self) -> View {
        match *self {}
    }

    pub async fn run(self: Arc<Self>, _cancel: CancellationToken) {
        match *self {}
    }

    pub async fn fence(&self, _idx: usize, _intent: &str) -> Result<(), FenceError> {
        match *self {}
    }

    pub async fn fence_action(
        &self,
        _idx: usize,
        _intent: &str,
        _guard: ActionGuard,
    ) -> Result<(), FenceError> {
        match *self {}
    }

    pub fn member(&self) -> &str {
        match *self {}
    }

    pub async fn read(&self, _key: &str) -> Result<Versioned, StateError> {
        match *self {}
    }

    pub async fn read_prefix(&self, _prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        match *self {}
    }

    pub async fn write(
        &self,
        _fence: Option<usize>,
        _puts: Vec<SharedPut>,
    ) -> Result<(), StateError> {
        match *self {}
    }

    pub async fn last_action(
        &self,
        _idx: usize,
        _vm: &str,
    ) -> Result<Option<LastAction>, StateError> {
        match *self {}
    }

    pub fn index_of(&self, _provider: &str, _account: &str) -> Option<usize> {
        match *self {}
    }
}

impl FamilySource for Cluster {
    fn render(&self, _set: &mut FamilySet) {
        match *self {}
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        match *self {}
    }
}
