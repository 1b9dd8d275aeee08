//! Static seeds (`host:port`, DNS names included), resolved by a task of their own, never in the
//! swarm's event loop: a slow resolver must not stall Raft, gossip and leases. A name is resolved
//! again every [`REFRESH`] (so it follows DNS changes; one name may give many addresses); a name
//! that does not resolve is retried with exponential backoff, reported in the status, and never
//! fatal (docs/architecture.md §3).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

/// How often a resolved seed is resolved again.
pub const REFRESH: Duration = Duration::from_secs(10);
/// The first retry after a failure; doubled per failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two tries of a name that does not resolve.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What is known of one seed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SeedStatus {
    /// The seed as configured.
    pub seed: String,
    /// The addresses it resolved to last (kept through a failed re-resolution).
    pub addrs: Vec<SocketAddr>,
    /// The last resolution error, while it fails.
    pub error: Option<String>,
    /// Failures in a row.
    pub failures: u32,
}

/// The wait before the next try after `failures` failures in a row (0: a success). Pure.
pub fn next_try(failures: u32) -> Duration {
    if failures == 0 {
        return REFRESH;
    }
    FIRST_BACKOFF.saturating_mul(1u32 << (failures - 1).min(16)).min(MAX_BACKOFF)
}

/// The seeds' shared state: written by the resolver task, read by the swarm loop.
#[derive(Clone, Default)]
pub struct Seeds(Arc<Mutex<BTreeMap<String, SeedStatus>>>);

impl Seeds {
    /// The addresses to dial now.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.0.lock().expect("seeds lock is never poisoned").values().flat_map(|s| s.addrs.clone()).collect()
    }

    /// Every seed's state.
    pub fn status(&self) -> Vec<SeedStatus> {
        self.0.lock().expect("seeds lock is never poisoned").values().cloned().collect()
    }

    fn record(&self, seed: &str, result: std::io::Result<Vec<SocketAddr>>) -> u32 {
        let mut all = self.0.lock().expect("seeds lock is never poisoned");
        let s = all
            .entry(seed.to_string())
            .or_insert_with(|| SeedStatus { seed: seed.to_string(), ..SeedStatus::default() });
        match result {
            Ok(addrs) if !addrs.is_empty() => {
                if s.failures > 0 || s.addrs != addrs {
                    info!(%seed, ?addrs, "seed resolved");
                }
                s.addrs = addrs;
                s.error = None;
                s.failures = 0;
            }
            other => {
                let error = match other {
                    Err(e) => e.to_string(),
                    Ok(_) => "resolves to no address".to_string(),
                };
                s.failures += 1;
                if s.error.as_deref() != Some(error.as_str()) {
                    warn!(%seed, %error, retry_in = ?next_try(s.failures), "cannot resolve seed; retrying with backoff");
                }
                s.error = Some(error);
            }
        }
        s.failures
    }
}

/// Resolves every seed in its own task until the returned state is dropped by everyone.
pub(crate) fn spawn(seeds: Vec<String>, arbiter: &actix::ArbiterHandle) -> Seeds {
    let state = Seeds::default();
    for seed in seeds {
        let pending = SeedStatus { seed: seed.clone(), ..SeedStatus::default() };
        state.0.lock().expect("seeds lock is never poisoned").insert(seed.clone(), pending);
        let weak = Arc::downgrade(&state.0);
        arbiter.spawn(async move {
            loop {
                // getaddrinfo runs on tokio's blocking pool: this task waits, nothing else does.
                let result = tokio::net::lookup_host(seed.as_str()).await.map(|r| r.collect::<Vec<_>>());
                let Some(inner) = weak.upgrade() else { return };
                let failures = Seeds(inner).record(&seed, result);
                tokio::time::sleep(next_try(failures)).await;
            }
        });
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_success_refreshes() {
        assert_eq!(next_try(0), REFRESH);
        assert_eq!(next_try(1), Duration::from_millis(500));
        assert_eq!(next_try(2), Duration::from_secs(1));
        assert_eq!(next_try(4), Duration::from_secs(4));
        assert_eq!(next_try(7), MAX_BACKOFF);
        assert_eq!(next_try(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_failure_keeps_the_last_addresses_and_is_reported() {
        let s = Seeds::default();
        let a: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(s.record("seed:7000", Ok(vec![a])), 0);
        assert_eq!(s.record("seed:7000", Err(std::io::Error::other("no such host"))), 1);
        assert_eq!(s.record("seed:7000", Ok(vec![])), 2);
        let st = &s.status()[0];
        assert_eq!(st.addrs, vec![a], "a failed re-resolution keeps what was known");
        assert_eq!(st.error.as_deref(), Some("resolves to no address"));
        assert_eq!(s.addrs(), vec![a]);
    }
}
