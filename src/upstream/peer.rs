//! One peer of an upstream group: its address, the connection template, its in-flight count.

use pingora::lb::Backend;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// A peer as the request path sees it. The `template` is compiled once per config (timeouts,
/// TLS, SNI), so picking a peer costs one clone and no parsing.
#[derive(Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub weight: usize,
    pub template: HttpPeer,
    /// The same peer as the load balancer knows it (health is keyed by it).
    pub backend: Backend,
    /// An opaque id, the same on every instance with the same file and not the address: a
    /// sticky cookie holds it (a digest of the group's name and the address).
    pub id: Box<str>,
    /// Requests in flight plus open upgraded connections: least_conn reads it, /status shows it.
    inflight: AtomicUsize,
    /// Passive health: until when (ms on [`clock_ms`]) a failed connect keeps this peer out.
    failed_until: AtomicU64,
}

/// Milliseconds since the first call: a cheap monotonic clock for passive health.
fn clock_ms() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64
}

impl Peer {
    pub fn new(group: &str, addr: SocketAddr, weight: usize, template: HttpPeer) -> Self {
        use sha2::Digest;
        let mut backend = Backend::new(&addr.to_string()).expect("a SocketAddr formats as one");
        backend.weight = weight;
        let digest = sha2::Sha256::digest(format!("portico sticky\0{group}\0{addr}"));
        let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Peer {
            addr,
            weight,
            template,
            backend,
            id: id.into(),
            inflight: AtomicUsize::new(0),
            failed_until: AtomicU64::new(0),
        }
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// A connect to this peer failed: keep it out of selection for `fail_timeout` (nginx's
    /// `max_fails=1 fail_timeout=...`), so a dead peer costs one failed attempt, not one per request.
    pub fn mark_failed(&self, fail_timeout: Duration) {
        let until = clock_ms() + fail_timeout.as_millis() as u64;
        self.failed_until.fetch_max(until, Ordering::Relaxed);
    }

    /// An active health check passed: a failed connect no longer keeps this peer out.
    pub fn clear_failed(&self) {
        self.failed_until.store(0, Ordering::Relaxed);
    }

    pub fn recently_failed(&self) -> bool {
        // Most peers never failed: no clock read for them.
        let until = self.failed_until.load(Ordering::Relaxed);
        until != 0 && clock_ms() < until
    }

    /// Counts one request (or upgraded connection) on this peer until the guard drops.
    pub fn track(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(Arc::clone(self))
    }
}

/// Held in the request context: it drops when the request (or the WebSocket tunnel) ends,
/// whichever way it ends, which is why the count is not decremented in `logging()`.
#[derive(Debug)]
pub struct InflightGuard(Arc<Peer>);

impl InflightGuard {
    pub fn peer(&self) -> &Arc<Peer> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}
