//! Discovery: where possible members are. Static seeds (`host:port`, DNS names included) and
//! any other [`Discovery`] (a service registry, a cloud API) are run the same way: each by a
//! task of its own, never in the swarm's event loop, so a slow resolver cannot stall Raft,
//! gossip and leases. A source is asked again every [`Discovery::refresh`] (a DNS name every
//! [`REFRESH`], so it follows DNS changes; one name may give many addresses); one that fails,
//! panics or does not answer within [`ANSWER_WITHIN`] is retried with exponential backoff,
//! reported in the status, and never fatal (docs/architecture.md §3). mDNS is the one way in
//! that is not a source here: it is a libp2p behaviour of the swarm (non-blocking multicast, no
//! resolver), on with `mdns`.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use serde::Serialize;
use tracing::{info, warn};

/// How often a resolved seed is resolved again.
pub const REFRESH: Duration = Duration::from_secs(10);
/// The first retry after a failure; doubled per failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two tries of a name that does not resolve.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one [`Discovery::discover`] call may take before it counts as failed.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// What [`Discovery::discover`] returns: the addresses found, or why none could be.
pub type Discovered<'a> = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// A way to find where possible members are (docs/discovery.md). Whatever it finds is only
/// dialed: whether a peer is of this cluster is decided by the handshake (cluster key,
/// environment, secret), never by how it was found.
///
/// Each source runs in a task of its own: [`discover`](Discovery::discover) may wait on the
/// network. An error, a panic, or no answer within [`ANSWER_WITHIN`] is retried with backoff
/// (0.5 s doubling to 30 s) and shown in the node's status; the addresses found last are kept
/// meanwhile.
pub trait Discovery: Send + Sync + 'static {
    /// Names the source in the status and logs (`shop-nodes:7000`, `registry shop/production`).
    fn name(&self) -> String;
    /// The addresses of possible members now (an empty list counts as a failure).
    fn discover(&self) -> Discovered<'_>;
    /// How long to wait after a success before asking again. Default [`REFRESH`].
    fn refresh(&self) -> Duration {
        REFRESH
    }
}

/// A seed `host:port`: an address, or a DNS name resolved (A and AAAA records, through the
/// system's resolver) again every [`REFRESH`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed(pub String);

impl Discovery for Seed {
    fn name(&self) -> String {
        self.0.clone()
    }

    fn discover(&self) -> Discovered<'_> {
        // getaddrinfo runs on tokio's blocking pool: this task waits, nothing else does.
        Box::pin(async move { Ok(tokio::net::lookup_host(self.0.as_str()).await?.collect()) })
    }
}

/// The discovery sources of a node or client beside its seeds (cheap to clone).
#[derive(Clone, Default)]
pub struct Sources(pub Vec<Arc<dyn Discovery>>);

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|d| d.name())).finish()
    }
}

impl Sources {
    /// The seeds as sources, then these.
    pub fn with_seeds(&self, seeds: &[String]) -> Vec<Arc<dyn Discovery>> {
        let mut all: Vec<Arc<dyn Discovery>> =
            seeds.iter().map(|s| Arc::new(Seed(s.clone())) as Arc<dyn Discovery>).collect();
        all.extend(self.0.iter().cloned());
        all
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

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

/// The wait before the next try after `failures` failures in a row (0: a success, then
/// `refresh`). Pure.
pub fn next_try(failures: u32, refresh: Duration) -> Duration {
    if failures == 0 {
        return refresh;
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
                    warn!(%seed, %error, retry_in = ?next_try(s.failures, REFRESH), "cannot discover through this source (a seed that does not resolve, a registry that fails); retrying with backoff");
                }
                s.error = Some(error);
            }
        }
        s.failures
    }
}

/// Runs every source in its own task until the returned state is dropped by everyone. Two
/// sources of one name are told apart in the status (`name #2`).
pub(crate) fn spawn(sources: Vec<Arc<dyn Discovery>>, arbiter: &actix::ArbiterHandle) -> Seeds {
    let state = Seeds::default();
    for source in sources {
        let seed = {
            let mut all = state.0.lock().expect("seeds lock is never poisoned");
            let base = source.name();
            let name = (1..)
                .map(|n| if n == 1 { base.clone() } else { format!("{base} #{n}") })
                .find(|n| !all.contains_key(n));
            let name = name.expect("an unused name");
            all.insert(name.clone(), SeedStatus { seed: name.clone(), ..SeedStatus::default() });
            name
        };
        let weak = Arc::downgrade(&state.0);
        arbiter.spawn(async move {
            loop {
                let result = ask(source.as_ref()).await;
                let Some(inner) = weak.upgrade() else { return };
                let failures = Seeds(inner).record(&seed, result);
                tokio::time::sleep(next_try(failures, source.refresh())).await;
            }
        });
    }
    state
}

/// One answer of `source`: a panic or no answer within [`ANSWER_WITHIN`] is an error like any.
async fn ask(source: &dyn Discovery) -> std::io::Result<Vec<SocketAddr>> {
    match tokio::time::timeout(ANSWER_WITHIN, std::panic::AssertUnwindSafe(source.discover()).catch_unwind()).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(std::io::Error::other("the discovery panicked")),
        Err(_) => Err(std::io::Error::other(format!("no answer within {ANSWER_WITHIN:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_success_refreshes() {
        assert_eq!(next_try(0, REFRESH), REFRESH);
        assert_eq!(next_try(0, Duration::from_secs(3)), Duration::from_secs(3));
        assert_eq!(next_try(1, REFRESH), Duration::from_millis(500));
        assert_eq!(next_try(2, REFRESH), Duration::from_secs(1));
        assert_eq!(next_try(4, REFRESH), Duration::from_secs(4));
        assert_eq!(next_try(7, REFRESH), MAX_BACKOFF);
        assert_eq!(next_try(u32::MAX, REFRESH), MAX_BACKOFF);
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

    struct Hostile(u32);

    impl Discovery for Hostile {
        fn name(&self) -> String {
            "hostile".into()
        }

        fn discover(&self) -> Discovered<'_> {
            Box::pin(async move {
                match self.0 {
                    0 => panic!("a bug in someone's discovery"),
                    1 => std::future::pending().await,
                    _ => Ok(vec![]),
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_or_silent_discovery_is_an_error_not_a_crash() {
        let panicked = ask(&Hostile(0)).await.unwrap_err();
        assert_eq!(panicked.to_string(), "the discovery panicked");
        let silent = ask(&Hostile(1)).await.unwrap_err();
        assert_eq!(silent.to_string(), "no answer within 10s");
        let s = Seeds::default();
        assert_eq!(s.record("hostile", ask(&Hostile(2)).await), 1, "no addresses is a failure");
        assert_eq!(s.status()[0].error.as_deref(), Some("resolves to no address"));
    }
}
