//! Getting a request to a peer and the answer back, where portico does it itself rather than
//! Pingora's proxy loop: plain requests ([`plain`], the own loop) and WebSocket upgrades
//! ([`upgrade`]). Both call the proxy's hooks and ask [`Attempts`] about every retry, as
//! Pingora's loop does, so the paths behave alike; [`rewrite`] is the one request rewrite.

pub mod upgrade;

use crate::headers::{self, Forwarded};
use crate::request;
use crate::request::ctx::{peer_ip, RequestCtx};
use crate::upstream::{pool, Peer, UpstreamGroup};
use http::header;
use pingora::connectors::TransportConnector;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as HttpSessionV1;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::Peer as _;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The proxy whose hooks the own loop calls (the same methods Pingora's loop calls).
pub trait Hooks: ProxyHttp<CTX = RequestCtx> + Sync {}
impl<P: ProxyHttp<CTX = RequestCtx> + Sync> Hooks for P {}

/// How long an idle upstream connection is kept when the peer sets no `idle_timeout`.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long portico's own loop waits for the peer's answer before it also watches the client.
/// A client that gives up on a slow request (a long poll) then frees the peer's connection at
/// once, as in Pingora's loop; an answer sooner costs no extra read of the client's socket.
const WATCH_CLIENT_AFTER: Duration = Duration::from_millis(100);

/// The request a peer gets (`request::rewrite`, with this connection's forwarding facts): what
/// the `upstream_request_filter` hook does for Pingora's loop, the own loop and upgrades.
pub(crate) fn rewrite(session: &Session, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    let peer = peer_ip(session);
    let exchange = ctx.exchange(session.req_header());
    let forwarded = Forwarded {
        peer,
        peer_trusted: ctx.snapshot.trusted.contains(peer),
        client: ctx.client_ip,
        tls: ctx.tls,
        host: ctx.view.authority.as_ref(),
    };
    request::rewrite(req, ctx.route().expect("routed"), &exchange, &forwarded)?;
    if !req.headers.contains_key(header::HOST) {
        // HTTP/1.0 allows a request without Host, and a route may remove it; the HTTP/1.1 a
        // peer gets must have one (RFC 9112 3.2). The name portico connects to, as nginx sends
        // its `proxy_pass` host: the peer's TLS name, else its address. (An HTTP/1.1 request
        // that came without Host never gets here: Pingora answers it 400.)
        if let Some(peer) = ctx.attempts.peer() {
            let host = match peer.template.sni.as_str() {
                "" => peer.addr.to_string(),
                sni => sni.to_owned(),
            };
            req.insert_header(header::HOST, host)?;
        }
    }
    Ok(())
}

/// A request portico forwards with its own loop ([`plain`]): no body, and a plain head
/// (`headers::is_plain` from an HTTP/1 client, `headers::is_plain_h2` from an HTTP/2 one).
pub(crate) fn is_plain(session: &mut Session) -> bool {
    let req = session.req_header();
    let plain = match session.as_downstream().is_http2() {
        true => headers::is_plain_h2(req),
        false => headers::is_plain(req),
    };
    plain && session.as_downstream_mut().is_body_empty()
}

/// The request head for the peer, through the same hook Pingora's loop calls.
async fn upstream_head<P: Hooks>(
    proxy: &P,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Box<RequestHeader>> {
    let mut req = Box::new(session.req_header().clone());
    req.set_version(http::Version::HTTP_11);
    req.remove_header(&header::CONNECTION);
    proxy
        .upstream_request_filter(session, &mut req, ctx)
        .await?;
    Ok(req)
}

/// A plain request (`is_plain`), forwarded by one sequential exchange: Pingora's connector
/// and HTTP/1 client session (the parsing, framing and keep-alive rules are Pingora's),
/// portico's idle pool (`pool::IDLE`), without Pingora's general proxy loop (two halves
/// joined by channels, cache and module hooks, retry buffering, a task per idle
/// connection), which costs 22% more user-space instructions per request (docs/behaviour.md: Two
/// forwarding loops).
/// It calls the same hooks Pingora's loop calls (`connected_to_upstream`,
/// `upstream_request_filter`, `upstream_response_filter`, `response_filter`, for interim
/// answers too), asks the same [`Attempts`] about every retry, and times each read and write
/// by the peer's timeouts as Pingora does. A close-delimited body is re-framed as chunked so
/// an HTTP/1 client keeps its connection (an HTTP/2 client's DATA frames need no framing);
/// errors are answered by Pingora (`error_status` before the response started; a cut
/// connection or a reset stream after). tests/integration/forwarding.rs and http2.rs run
/// every case against both loops.
pub(crate) async fn plain<P: Hooks>(
    proxy: &P,
    connector: &TransportConnector,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<bool> {
    let group = Arc::clone(ctx.group().expect("routed"));
    let group = &group;
    // The peer first, as in Pingora's loop: the head may name it (`rewrite`).
    let mut peer = next_peer(ctx, group)?;
    let mut req = Some(upstream_head(proxy, session, ctx).await?);
    let mut fresh = false; // a pooled connection failed: the next one is new
    let mut upstream = loop {
        let pooled = match fresh {
            false => pool::IDLE.take(peer.template.reuse_hash()),
            true => None,
        };
        let got = match pooled {
            Some(stream) => Ok((stream, true)),
            // Boxed: connecting is Pingora's largest future (~9 KiB) and rare with a warm
            // pool; inline it would size every request's future for it.
            None => Box::pin(connector.new_stream(&peer.template))
                .await
                .map(|s| (s, false)),
        };
        let (stream, reused) = match got {
            Ok(s) => s,
            Err(e) => {
                if !ctx.attempts.connect_failed(group) {
                    return Err(e.into_up());
                }
                log::warn!(
                    "connecting to {} failed, retrying elsewhere: {e}",
                    peer.addr
                );
                peer = next_peer(ctx, group)?;
                fresh = false;
                continue;
            }
        };
        let fd = stream.id() as std::os::unix::io::RawFd;
        proxy
            .connected_to_upstream(session, reused, &peer.template, fd, None, ctx)
            .await?;
        let mut upstream = HttpSessionV1::new_with_options(stream, &peer.template);
        // Per read and per write, as Pingora's loop sets them.
        upstream.read_timeout = peer.template.options.read_timeout;
        upstream.write_timeout = peer.template.options.write_timeout;
        let head = match req.take() {
            Some(head) => head,
            // Built again in the rare case a pooled connection failed under it, rather
            // than copied for every request in case it does.
            None => upstream_head(proxy, session, ctx).await?,
        };
        let sent = async {
            upstream.write_request_header(head).await?;
            upstream.read_response().await
        };
        match await_peer(session, sent).await? {
            Ok(_) => break upstream,
            Err(e) => {
                let idempotent = session.req_header().method.is_idempotent();
                if ctx.attempts.reused_failed(&e, reused, idempotent) {
                    log::debug!(
                        "pooled connection to {} was closed, retrying on a new one: {e}",
                        peer.addr
                    );
                    peer = next_peer(ctx, group)?;
                    fresh = true;
                    continue;
                }
                return Err(e.into_up());
            }
        }
    };

    loop {
        let head = upstream.resp_header().expect("a response head was read");
        if !head.status.is_informational() {
            break;
        }
        // Interim answers (103 Early Hints) through the same response hooks as the final
        // one, as Pingora's loop does.
        let mut interim = Box::new(head.clone());
        proxy
            .upstream_response_filter(session, &mut interim, ctx)
            .await?;
        proxy.response_filter(session, &mut interim, ctx).await?;
        session
            .write_response_header(interim, false)
            .await
            .map_err(|e| e.into_down())?;
        let answer = async { upstream.read_response().await.map_err(|e| e.into_up()) };
        await_peer(session, answer).await??;
    }
    let mut resp = Box::new(upstream.resp_header().expect("read").clone());
    proxy
        .upstream_response_filter(session, &mut resp, ctx)
        .await?;
    let end = upstream.is_body_done();
    let bodiless = session.req_header().method == http::Method::HEAD
        || matches!(resp.status.as_u16(), 204 | 304);
    if !end
        && !bodiless
        && !resp.headers.contains_key(header::TRANSFER_ENCODING)
        && !resp.headers.contains_key(header::CONTENT_LENGTH)
    {
        resp.set_version(http::Version::HTTP_11);
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    proxy.response_filter(session, &mut resp, ctx).await?;
    session
        .write_response_header(resp, end)
        .await
        .map_err(|e| e.into_down())?;
    // Each piece through the response body hook (the route's `response_body` filters), as in
    // Pingora's loop: the last one flagged (`None` when the end showed only after it).
    let filters = ctx.route().is_some_and(|r| r.chain.has_response_body());
    let mut done = end;
    while !done {
        let mut body = upstream.read_body_bytes().await.map_err(|e| e.into_up())?;
        done = body.is_none() || upstream.is_body_done();
        if filters {
            proxy.response_body_filter(session, &mut body, done, ctx)?;
        }
        if let Some(body) = body.filter(|b| !b.is_empty()) {
            session
                .write_response_body(Some(body), false)
                .await
                .map_err(|e| e.into_down())?;
        }
    }
    session.finish_body().await.map_err(|e| e.into_down())?;
    upstream.respect_keepalive();
    if let Some(stream) = upstream.reuse().await {
        let template = &peer.template;
        let idle = template.idle_timeout().unwrap_or(DEFAULT_IDLE_TIMEOUT);
        pool::IDLE.put(template.reuse_hash(), stream, idle);
    }
    Ok(true)
}

/// Waits for `work` (an exchange with the peer up to its response head, each read under the
/// peer's `read_timeout`), unless the client closes its connection (or, against HTTP/1's
/// order, sends more) first: then `Err` with the client's error, and `work` and the peer's
/// connection are dropped. The client is watched only after `WATCH_CLIENT_AFTER`, the way
/// Pingora's loop watches it (`read_body_or_idle`), so a prompt answer costs one timer and no
/// read of the client's socket.
async fn await_peer<T>(session: &mut Session, work: impl Future<Output = T>) -> Result<T> {
    let gone = async {
        pingora::time::sleep(WATCH_CLIENT_AFTER).await;
        match session.read_body_or_idle(true).await {
            Err(e) => e.into_down(),
            // With no body expected it answers only with an error, or never.
            Ok(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        done = work => Ok(done),
        e = gone => Err(e),
    }
}

/// The `Set-Cookie` that pins the client to the peer that served it, when the group is sticky
/// and the request's cookie named another peer, or none, or one that does not exist.
pub(crate) fn sticky_cookie(ctx: &RequestCtx) -> Option<String> {
    let sticky = ctx.group()?.sticky.as_ref()?;
    let served = ctx.attempts.peer()?;
    (ctx.attempts.pinned() != Some(served.addr)).then(|| sticky.set_cookie(served, ctx.tls))
}

/// The next peer of `group` for this request ([`Attempts::next`]), its connect timed from now.
pub(crate) fn next_peer(ctx: &mut RequestCtx, group: &UpstreamGroup) -> Result<Arc<Peer>> {
    let peer = ctx.attempts.next(group, ctx.client_ip)?;
    ctx.connect_started = Some(Instant::now());
    Ok(peer)
}
