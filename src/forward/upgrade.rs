//! A WebSocket upgrade, taken over from Pingora's loop: the handshake with a peer, then either
//! the tunnel (a real 101, on a task of its own, `tunnel`) or the peer's refusal relayed and
//! the connection closed.

use crate::accesslog::{account, Entry};
use crate::limits::ConnectionSlot;
use crate::metrics::METRICS;
use crate::request::ctx::{GaugeGuard, RequestCtx};
use crate::tunnel::Tunnel;
use crate::upstream::{InflightGuard, UpstreamGroup};
use crate::websocket;
use bytes::Bytes;
use http::header;
use pingora::connectors::TransportConnector;
use pingora::prelude::*;
use pingora::protocols::http::v1::server::HttpSession as HttpSessionV1Server;
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// A valid WebSocket upgrade, handled here rather than by Pingora's proxy loop (see
/// `tunnel`). Until the peer has answered, failures are ordinary errors that Pingora answers
/// (502/503); once the peer has answered, the client's connection is taken from Pingora and
/// either tunnelled (a real 101) or given the peer's refusal and closed. `Ok(true)`: done.
pub(crate) async fn websocket(
    connector: &TransportConnector,
    drain_limit: Duration,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<bool> {
    let snapshot = Arc::clone(&ctx.snapshot);
    let route = &snapshot.routes[ctx.route.expect("routed")];
    let group = &Arc::clone(ctx.group().expect("routed"));
    let request = websocket::upstream_request(session.req_header(), |req| {
        super::rewrite(session, req, ctx)
    })?;

    // An upgrade that never reached a peer's answer: counted, and an error for Pingora to
    // answer (`error_status`: 503 no peer, 504 when the peer timed out, else 502).
    let counted = |e: Box<Error>| {
        METRICS
            .websocket_upgrades
            .with_label_values(&[route.name.as_str(), "failed"])
            .inc();
        e
    };
    let failed = |why: String, etype: ErrorType, e: Box<dyn std::error::Error + Send + Sync>| {
        counted(Error::because(etype, why, e).into_up())
    };
    let (peer, mut upstream) = loop {
        let peer = super::next_peer(ctx, group).map_err(counted)?;
        match Box::pin(connector.new_stream(&peer.template)).await {
            Ok(stream) => {
                ctx.mark_connected();
                break (peer, stream);
            }
            Err(e) if ctx.attempts.connect_failed(group) => {
                log::warn!(
                    "websocket upgrade: connecting to {} failed, retrying elsewhere: {e}",
                    peer.addr
                );
            }
            Err(e) => {
                let etype = e.etype().clone();
                return Err(failed(format!("connecting to {}", peer.addr), etype, e));
            }
        }
    };
    let timeout = peer
        .template
        .options
        .read_timeout
        .unwrap_or(Duration::from_secs(60));
    let answer = match websocket::exchange(&mut upstream, &request, timeout).await {
        Ok(a) => a,
        Err(e) => {
            let etype = match e.kind() {
                std::io::ErrorKind::TimedOut => ReadTimedout,
                _ => ReadError,
            };
            let why = format!("websocket handshake with {}", peer.addr);
            return Err(failed(why, etype, Box::new(e)));
        }
    };

    // The peer has answered: take the client's connection out of Pingora's hands, leaving
    // it a closed stand-in to finish with.
    let stand_in = stand_in(session).await?;
    let taken = std::mem::replace(&mut *session.downstream_session, stand_in);
    let (mut client, pipelined) = match taken {
        ServerSession::H1(h1) => take_client(h1).await?,
        other => {
            *session.downstream_session = other;
            return Error::e_explain(InternalError, "websocket upgrade on a non-HTTP/1 session");
        }
    };
    if websocket::is_switch(&answer, session.req_header()) {
        METRICS
            .websocket_upgrades
            .with_label_values(&[route.name.as_str(), "upgraded"])
            .inc();
        let gauge = METRICS
            .websockets_open
            .with_label_values(&[route.name.as_str(), group.name.as_str()]);
        let ws_open = GaugeGuard::new(gauge);
        // The peer's 101 byte for byte; a sticky group's cookie is the one line added.
        let head = match super::sticky_cookie(ctx) {
            Some(cookie) => {
                std::borrow::Cow::Owned(with_header_line(&answer.raw_head, "Set-Cookie", &cookie))
            }
            None => std::borrow::Cow::Borrowed(&answer.raw_head[..]),
        };
        let sent = async {
            client.write_all(&head).await?;
            client.flush().await
        };
        if sent.await.is_err() {
            return Ok(true);
        }
        let client = for_tunnel(client, true);
        let upstream = for_tunnel(upstream, false);
        // The tunnel gets a task of its own and Pingora's request ends here: its per-request
        // state (tens of KiB) would otherwise live as long as the WebSocket.
        let req = session.req_header();
        let text = |name| {
            req.headers
                .get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
                .map(Box::<str>::from)
        };
        let job = TunnelJob {
            tunnel: Tunnel::new(
                client,
                upstream,
                (answer.rest, pipelined),
                route.websocket.idle_timeout,
                drain_limit,
            ),
            client_ip: ctx.client_ip,
            method: req.method.clone(),
            uri: req.uri.to_string().into(),
            version: req.version,
            referer: text(header::REFERER),
            user_agent: text(header::USER_AGENT),
            route: Arc::clone(&route.key),
            group: Arc::clone(group),
            started: ctx.started,
            loggers: route.chain.loggers().cloned(),
            vars: (!ctx.vars.is_empty()).then(|| Box::new(std::mem::take(&mut ctx.vars))),
            _held: (
                ctx.attempts.take_guard(),
                ws_open,
                ctx.connection_slot.take().map(Box::new),
                ctx.in_flight.take(),
                crate::conn::take_permit(),
                std::mem::take(&mut ctx.ext),
            ),
        };
        ctx.handed_off = true;
        tokio::spawn(job);
    } else {
        METRICS
            .websocket_upgrades
            .with_label_values(&[route.name.as_str(), "refused"])
            .inc();
        ctx.ws_status = Some(if answer.status == 101 {
            502
        } else {
            answer.status
        });
        // The client's pipelined bytes (if any) go with its connection: never to this peer.
        let mut sent = 0;
        let relayed = websocket::relay_refusal(
            &mut client,
            &mut upstream,
            answer,
            |head| {
                route
                    .chain
                    .response(head, &ctx.exchange(session.req_header()))
            },
            timeout,
            &mut sent,
        );
        if let Err(e) = relayed.await {
            log::debug!("relaying a refused upgrade from {}: {e}", peer.addr);
        }
        ctx.ws_bytes_sent = sent;
    }
    Ok(true)
}

/// The client's connection out of its HTTP/1 session, with what the client sent after its
/// handshake: a first frame in the same write as the upgrade (nginx passes it on after the
/// 101; nginx-tests "handshake pipelined"). Pingora keeps those bytes as the next request's
/// prefix, which its `reuse` hands over (with pipelining on, as `conn` sets). A client that
/// asked to close after this request has its connection taken as is.
async fn take_client(h1: HttpSessionV1Server) -> Result<(pingora::protocols::Stream, Bytes)> {
    if !h1.will_keepalive() {
        return Ok((h1.into_inner(), Bytes::new()));
    }
    match h1.reuse().await? {
        Some(reusable) => {
            let (stream, prefix) = reusable.into_parts();
            Ok((
                stream,
                prefix.map_or_else(Bytes::new, bytes::BytesMut::freeze),
            ))
        }
        None => Error::e_explain(ConnectionClosed, "the client's connection ended")
            .map_err(|e| e.into_down()),
    }
}

/// A connection readied for the tunnel. Its wait timing is off: Pingora times every read and
/// write that waits (two clock reads each: the start and the end of the wait), and a tunnel's
/// waits are only its idle time, so that is two clock reads per message per side for nothing.
/// With `unbuffer` (the client's connection, once the 101 is flushed), its buffers are freed
/// too: the write buffer is `server.downstream_write_buffer`, 1 KiB by default, which an idle
/// WebSocket would hold for its whole life, and the tunnel writes what it has at once. Under
/// TLS, this is the TCP connection under it (rustls keeps buffers of its own).
fn for_tunnel(stream: pingora::protocols::Stream, unbuffer: bool) -> pingora::protocols::Stream {
    use pingora::protocols::l4::stream::Stream as L4;
    use pingora::protocols::tls::TlsStream;
    let ready = |l4: &mut L4| {
        l4.set_pending_time_tracking(false);
        if unbuffer {
            l4.unbuffer();
        }
    };
    let any = stream.as_any();
    if !(any.is::<L4>() || any.is::<TlsStream<L4>>()) {
        return stream;
    }
    let any = stream.into_any();
    match any.downcast::<L4>() {
        Ok(mut l4) => {
            ready(&mut l4);
            l4
        }
        Err(any) => match any.downcast::<TlsStream<L4>>() {
            Ok(mut tls) => {
                if let Some(l4) = tls.transport_mut() {
                    ready(l4);
                }
                tls
            }
            Err(_) => unreachable!("checked to be one of the two"),
        },
    }
}

/// What Pingora keeps after the client's connection is taken: a session that has read the same
/// request head (Pingora reads it again for logging and clean-up; an unread one panics) from a
/// stream that then ends.
async fn stand_in(session: &Session) -> Result<ServerSession> {
    let raw = session.as_downstream().to_h1_raw();
    let (stream, mut feed) = tokio::io::duplex(raw.len() + 1);
    feed.write_all(&raw)
        .await
        .or_err(InternalError, "stand-in session")?;
    drop(feed);
    let mut stand_in = ServerSession::new_http1(Box::new(stream));
    stand_in.read_request().await?;
    Ok(stand_in)
}

pin_project_lite::pin_project! {
    /// An upgraded connection on its own task: the tunnel, what its access-log line needs, and
    /// the guards that count it (peer in-flight, open WebSockets, per-client slot, in flight,
    /// the connection's permit).
    /// A future by hand, so the task holds the tunnel once (an `async` block moving it into an
    /// `.await` keeps room for it twice).
    struct TunnelJob {
        #[pin]
        tunnel: Tunnel,
        client_ip: IpAddr,
        method: http::Method,
        uri: Box<str>,
        version: http::Version,
        referer: Option<Box<str>>,
        user_agent: Option<Box<str>>,
        route: Arc<str>,
        group: Arc<UpstreamGroup>,
        started: Instant,
        // The route's filters with a log phase, and what the filters left (boxed: most
        // routes have none, and a tunnel lives long).
        loggers: Option<Arc<[Arc<dyn crate::filters::Filter>]>>,
        vars: Option<Box<crate::filters::Vars>>,
        _held: (
            Option<InflightGuard>,
            GaugeGuard,
            // Boxed: most routes have no max_connections, and 32 bytes less per tunnel.
            Option<Box<ConnectionSlot>>,
            Option<GaugeGuard>,
            // The client connection's place under server.max_connections.
            Option<crate::conn::ConnectionPermit>,
            // Filters' per-request state, ended when the tunnel closes (a Wasm stream context:
            // its on_log runs then). Empty: no allocation.
            http::Extensions,
        ),
    }
}

impl Future for TunnelJob {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let outcome = ready!(this.tunnel.poll(cx));
        account(&Entry {
            client: *this.client_ip,
            method: this.method.as_str(),
            uri: this.uri,
            metrics: None,
            version: *this.version,
            status: 101,
            bytes_sent: outcome.peer_to_client as usize,
            bytes_received: outcome.client_to_peer as usize,
            duration: this.started.elapsed(),
            route: this.route,
            upstream: &this.group.name,
            peer: this._held.0.as_ref().map(|g| g.peer().addr),
            referer: this.referer.as_deref(),
            user_agent: this.user_agent.as_deref(),
            upgraded: true,
            end: Some(outcome.end.as_str()),
            error: None,
            vars: this.vars.as_deref(),
            loggers: this.loggers.as_deref(),
        });
        Poll::Ready(())
    }
}

/// A response head with one more header line before its end (`\r\n\r\n`, or a bare `\n\n`).
fn with_header_line(head: &[u8], name: &str, value: &str) -> Vec<u8> {
    let (body_end, eol): (usize, &[u8]) = if head.ends_with(b"\r\n\r\n") {
        (head.len() - 2, b"\r\n")
    } else if head.ends_with(b"\n\n") {
        (head.len() - 1, b"\n")
    } else {
        return head.to_vec();
    };
    let mut out = Vec::with_capacity(head.len() + name.len() + value.len() + 4);
    out.extend_from_slice(&head[..body_end]);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(eol);
    out.extend_from_slice(eol);
    out
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    /// An idle WebSocket's memory is a target (at most 3 KiB, docs/performance.md; 2.96 KiB
    /// measured), and what it holds lives in jemalloc size classes: a few bytes more can cost a
    /// whole class more per connection, which only `make bench` would show. Pingora's
    /// `l4::Stream` (two per tunnel, patched in vendor/) fills the 384-byte class exactly:
    /// 400 bytes once cost 128 more per idle WebSocket (2.93 -> 3.09 KiB). The tunnel's task
    /// is this job plus about 104 bytes of tokio's (header, scheduler, id, trailer) in a
    /// 128-aligned cell, in the 768-byte class up to a job of about 664 bytes.
    #[test]
    fn an_idle_websocket_stays_in_its_allocation_classes() {
        let stream = size_of::<pingora::protocols::l4::stream::Stream>();
        assert!(stream <= 384, "l4::Stream is {stream} bytes");
        let job = size_of::<super::TunnelJob>();
        assert!(job <= 600, "the tunnel's task future is {job} bytes");
    }
}
