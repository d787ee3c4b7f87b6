//! One HTTP/1.1 exchange with a service beside the request: forward_auth's auth service, a
//! Wasm filter's `proxy_http_call`. A pooled connection when there is one, the request head and
//! body, the answer read whole up to a bound, the connection kept for reuse when it may be.

use bytes::{Bytes, BytesMut};
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::HttpSession;
use pingora::upstreams::peer::{HttpPeer, Peer};
use std::time::Duration;

/// How long an idle connection to a service is kept.
const IDLE: Duration = Duration::from_secs(60);

/// A service's answer.
pub struct Reply {
    pub head: ResponseHeader,
    pub body: Bytes,
}

/// Sends `head` (and `body`, framed by the Content-Length the caller set) to `peer` and reads
/// the answer; a body over `max_body` bytes is an error.
pub async fn exchange(
    connector: &TransportConnector,
    peer: &HttpPeer,
    head: RequestHeader,
    body: Option<&[u8]>,
    max_body: usize,
) -> pingora::Result<Reply> {
    let stream = match connector.reused_stream(peer).await {
        Some(s) => s,
        None => connector.new_stream(peer).await?,
    };
    let mut session = HttpSession::new_with_options(stream, peer);
    session.write_request_header(Box::new(head)).await?;
    if let Some(body) = body.filter(|b| !b.is_empty()) {
        session.write_body(body).await?;
    }
    session.finish_body().await?;
    session.read_response().await?;
    let head = session.resp_header().expect("read").clone();
    let mut received = BytesMut::new();
    while let Some(chunk) = session.read_body_ref().await? {
        if received.len() + chunk.len() > max_body {
            return pingora::Error::e_explain(
                pingora::ErrorType::InvalidHTTPHeader,
                "the service's answer is too large",
            );
        }
        received.extend_from_slice(chunk);
    }
    session.respect_keepalive();
    if let Some(stream) = session.reuse().await {
        connector.release_stream(stream, peer.reuse_hash(), Some(IDLE));
    }
    Ok(Reply {
        head,
        body: received.freeze(),
    })
}
