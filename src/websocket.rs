//! WebSocket upgrades: the per-route policy and the timeouts that make an upgraded connection
//! live by `websocket.idle_timeout` instead of the plain-HTTP read timeouts.

use crate::snapshot::WebSocketPolicy;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;

/// Pingora's downstream read timeout (60 s by default) also applies to the upgraded bytes, so an
/// idle WebSocket would be cut at 60 s: replace it with the route's idle timeout.
pub fn prepare_downstream(session: &mut Session, policy: &WebSocketPolicy) {
    session.set_read_timeout(Some(policy.idle_timeout));
}

/// The peer's `read_timeout` is the plain-HTTP one (per read); on the tunnel it would cut a
/// quiet peer, so an upgrade reads with the idle timeout instead.
///
/// Both are per-direction timers: a connection is closed when either side has sent nothing
/// for `idle_timeout` (peers that ping keep both directions alive).
pub fn prepare_upstream(peer: &mut HttpPeer, policy: &WebSocketPolicy) {
    peer.options.read_timeout = Some(policy.idle_timeout);
    peer.options.write_timeout = None;
}
