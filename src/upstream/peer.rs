//! One peer of an upstream group: its address, the connection template, its in-flight count.

use pingora::lb::Backend;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A peer as the request path sees it. The `template` is compiled once per config (timeouts,
/// TLS, SNI), so picking a peer costs one clone and no parsing.
#[derive(Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub weight: usize,
    pub template: HttpPeer,
    /// The same peer as the load balancer knows it (health is keyed by it).
    pub backend: Backend,
    /// Requests in flight plus open upgraded connections: least_conn reads it, /status shows it.
    inflight: AtomicUsize,
}

impl Peer {
    pub fn new(addr: SocketAddr, weight: usize, template: HttpPeer) -> Self {
        let mut backend = Backend::new(&addr.to_string()).expect("a SocketAddr formats as one");
        backend.weight = weight;
        Peer {
            addr,
            weight,
            template,
            backend,
            inflight: AtomicUsize::new(0),
        }
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
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
