//! One request's attempts at its upstream group: the peers tried, the in-flight guard on the
//! current one, and every retry decision. Pingora's loop (through the `upstream_peer`,
//! `fail_to_connect` and `error_while_proxy` hooks), portico's own loop and WebSocket upgrades
//! all ask this one type, so they retry alike.
//!
//! - A failed connect keeps that peer out for the group's `fail_timeout` and moves to a peer
//!   not tried yet, `retries` times.
//! - A pooled connection that fails before any answer (the peer had closed it: Pingora's
//!   `ReusedOnly` errors) is retried once, on the same peer with a new connection, for an
//!   idempotent method only (RFC 9110 9.2.2; Pingora's and nginx's default): a POST may have
//!   been acted on, so it gets the error (502).

use super::{InflightGuard, Peer, UpstreamGroup};
use crate::metrics::METRICS;
use pingora::{Error, ErrorType::HTTPStatus, Result};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

#[derive(Default)]
pub struct Attempts {
    tried: Vec<SocketAddr>,
    /// Counts this request (or tunnel) on its current peer until dropped.
    current: Option<InflightGuard>,
    /// The current peer's pooled connection failed: the next attempt is that peer again.
    again: bool,
    /// The one retry after a pooled connection failed was used.
    reused_retry_used: bool,
    /// What `balance: hash` hashes for this request (`None`: the client IP).
    key: Option<Box<[u8]>>,
    /// The peer a sticky cookie named, tried first while it is usable.
    pinned: Option<SocketAddr>,
}

impl Attempts {
    /// The peer for the next attempt: after a pooled connection failed, the same one; else a
    /// peer not tried yet, chosen by the group's balance for `client`. `Err`: 503 when no peer
    /// is healthy, 502 when every one was tried.
    pub fn next(&mut self, group: &UpstreamGroup, client: IpAddr) -> Result<Arc<Peer>> {
        if std::mem::take(&mut self.again) {
            if let Some(guard) = &self.current {
                return Ok(Arc::clone(guard.peer()));
            }
        }
        let pinned = self
            .pinned
            .filter(|addr| !self.tried.contains(addr))
            .and_then(|addr| group.usable(addr));
        let ip = IpKey::new(client);
        let key = self.key.as_deref().unwrap_or(ip.as_bytes());
        let Some(peer) = pinned.or_else(|| group.select(key, &self.tried)) else {
            let (code, why) = if self.tried.is_empty() {
                (503, "no healthy peer")
            } else {
                (502, "no peer left to retry")
            };
            return Error::e_explain(HTTPStatus(code), format!("upstream {}: {why}", group.name));
        };
        self.tried.push(peer.addr);
        self.current = Some(peer.track());
        Ok(peer)
    }

    /// Connecting to the current peer failed: it is kept out for `fail_timeout`. Whether the
    /// request may try another (counted as a retry).
    pub fn connect_failed(&self, group: &UpstreamGroup) -> bool {
        if let Some(guard) = &self.current {
            guard.peer().mark_failed(group.fail_timeout);
        }
        let retry = self.tried.len() <= group.retries;
        if retry {
            METRICS
                .retries
                .with_label_values(&[group.name.as_str()])
                .inc();
        }
        retry
    }

    /// A pooled connection to the current peer failed with `e` before an answer: whether to try
    /// the same peer again on a new connection (then `next` returns it). `idempotent`: the
    /// request's method allows a retry after it may have been sent.
    pub fn reused_failed(&mut self, e: &Error, reused: bool, idempotent: bool) -> bool {
        let mut retry = e.retry;
        retry.decide_reuse(reused);
        let again = idempotent && retry.retry() && !self.reused_retry_used;
        self.reused_retry_used |= again;
        self.again = again;
        again
    }

    /// What the group's balance looks at besides the client IP: the `balance: hash` key and
    /// the peer a sticky cookie names.
    pub fn steer(&mut self, key: Option<Box<[u8]>>, pinned: Option<SocketAddr>) {
        self.key = key;
        self.pinned = pinned;
    }

    /// The peer the sticky cookie named (whether or not it served).
    pub fn pinned(&self) -> Option<SocketAddr> {
        self.pinned
    }

    /// The current peer.
    pub fn peer(&self) -> Option<&Arc<Peer>> {
        self.current.as_ref().map(InflightGuard::peer)
    }

    /// The guard on the current peer, for a task that outlives the request (a tunnel).
    pub fn take_guard(&mut self) -> Option<InflightGuard> {
        self.current.take()
    }
}

/// The ip_hash key: the address's bytes, so a client hashes the same on every instance. On the
/// stack: it is built for every request.
struct IpKey([u8; 16], usize);

impl IpKey {
    fn new(ip: IpAddr) -> Self {
        let mut bytes = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => {
                bytes[..4].copy_from_slice(&v4.octets());
                IpKey(bytes, 4)
            }
            IpAddr::V6(v6) => IpKey(v6.octets(), 16),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.0[..self.1]
    }
}
