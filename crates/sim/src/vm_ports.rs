//! Real TCP ports for simulated VMs: each running VM listens on its own loopback address
//! so the watchdog's liveness probes make real connections. The set of listeners is
//! reconciled with the world after every change: a VM that stops, hangs or disappears
//! closes its port; one that comes back opens it again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::task::JoinHandle;

/// Open listeners by VM id.
#[derive(Default)]
pub struct VmPorts {
    open: Mutex<HashMap<u64, (SocketAddr, JoinHandle<()>)>>,
}

impl VmPorts {
    /// Opens and closes listeners so exactly `desired` are open.
    pub fn reconcile(&self, desired: &[(u64, SocketAddr)]) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|id, (addr, task)| {
            let keep = desired.iter().any(|(d, a)| d == id && a == addr);
            if !keep {
                task.abort();
            }
            keep
        });
        if open.len() == desired.len() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for (id, addr) in desired {
            if open.contains_key(id) {
                continue;
            }
            match bind(*addr) {
                Ok(listener) => {
                    let _guard = runtime.enter();
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => {
                            let task = runtime.spawn(accept_and_drop(l));
                            open.insert(*id, (*addr, task));
                        }
                        Err(e) => tracing::warn!(vm = id, %addr, error = %e, "VM port not opened"),
                    }
                }
                // Another simulator may hold the same address: the VM then simply has
                // no port, which a probe reports as down.
                Err(e) => tracing::debug!(vm = id, %addr, error = %e, "VM port not opened"),
            }
        }
    }

    /// Closes every listener.
    pub fn close_all(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for (_, (_, task)) in open.drain() {
            task.abort();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Completes handshakes and hangs up, like an SSH server a probe never talks to.
async fn accept_and_drop(listener: tokio::net::TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        drop(stream);
    }
}
