//! The `ProxyHttp` implementation: each hook a few lines that delegate to routing, headers,
//! upstream selection and the WebSocket policy, and record what happened for the metrics and
//! the access log.

use crate::accesslog::{account, Entry};
use crate::filters::{BodyCx, Chain};
use crate::forward;
use crate::metrics::METRICS;
use crate::request::admit::{admit, admit_deferred, Answer, Client};
use crate::request::ctx::{peer_ip, RequestCtx};
use crate::snapshot::SharedSnapshot;
use crate::websocket::Upgrade;
use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::connectors::TransportConnector;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::ErrorSource;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Portico {
    pub snapshot: SharedSnapshot,
    /// Connects to peers for what portico forwards itself: plain requests (whose idle
    /// connections wait in `pool::IDLE`) and WebSocket upgrades. Pingora's loop has its own.
    pub connector: TransportConnector,
    /// The longest a draining tunnel waits for a frame in flight before its 1001 close.
    pub drain_limit: Duration,
}

#[async_trait]
impl ProxyHttp for Portico {
    type CTX = RequestCtx;

    /// No modules: Pingora's default adds a (disabled) response-compression module, whose
    /// context would be built and called for every request for nothing.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        crate::conn::head_read();
        RequestCtx::new(self.snapshot.load_full())
    }

    /// Routing and every check that answers without a peer: 404, redirect, 403, 401.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let peer_ip = peer_ip(session);
        ctx.client_ip = ctx
            .snapshot
            .trusted
            .client_ip(peer_ip, &session.req_header().headers);
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let client = Client {
            ip: ctx.client_ip,
            tls: ctx.tls,
        };
        let snapshot = Arc::clone(&ctx.snapshot);
        let mut admission = admit(session.req_header(), &snapshot, client);
        if admission.deferred {
            // Boxed: only routes with a filter that waits carry its future.
            Box::pin(admit_deferred(
                session.req_header(),
                &snapshot,
                client,
                &mut admission,
            ))
            .await;
        }
        (ctx.view, ctx.route) = (admission.view, admission.route);
        ctx.upgrade = admission.upgrade != Upgrade::No;
        ctx.connection_slot = admission.slot;
        (ctx.upstream, ctx.vars, ctx.ext) = (admission.upstream, admission.vars, admission.ext);
        if let Some(answer) = admission.answer {
            if answer.close {
                session.set_keepalive(None);
            }
            return reject(session, ctx, &answer).await;
        }
        // What `balance: hash` hashes and the peer a sticky cookie names, for a request that
        // goes to a peer.
        if let Some(group) = ctx
            .group()
            .filter(|g| g.hash_key.is_some() || g.sticky.is_some())
        {
            let req = session.req_header();
            let key = group.request_key(req, &ctx.view);
            let pinned = group.pinned(req);
            ctx.attempts.steer(key, pinned);
        }
        match admission.upgrade {
            Upgrade::WebSocket => {
                forward::upgrade::websocket(&self.connector, self.drain_limit, session, ctx).await
            }
            _ if ctx.snapshot.fast_path && forward::is_plain(session) => {
                forward::plain(self, &self.connector, session, ctx).await
            }
            _ => Ok(false),
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let group = Arc::clone(
            ctx.group()
                .expect("request_filter answered every unrouted request"),
        );
        let peer = forward::next_peer(ctx, &group)?;
        let http_peer = Box::new(peer.template.clone());
        ctx.connect_started = Some(Instant::now());
        Ok(http_peer)
    }

    /// Connect failures are retried on another peer, `retries` times per request.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(group) = ctx.group().cloned() {
            if ctx.attempts.connect_failed(&group) {
                e.set_retry(true);
            }
        }
        e
    }

    /// An error after a connection to the peer was made or reused: [`Attempts::reused_failed`]
    /// decides the retry (the same peer on a new connection, idempotent requests only), as in
    /// portico's own loop.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let idempotent = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        let again = ctx.attempts.reused_failed(&e, client_reused, idempotent);
        e.set_retry(again);
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.mark_connected();
        Ok(())
    }

    /// Bodies without a Content-Length are counted as they stream against `max_body_size`;
    /// then the route's `request_body` filters.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(max) = ctx.route().and_then(|r| r.max_body_size) {
            ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
            if ctx.body_bytes > max {
                session.set_keepalive(None);
                return Error::e_explain(HTTPStatus(413), format!("request body over {max} bytes"));
            }
        }
        let ran = body_phase(ctx, Chain::has_request_body, |chain, cx| {
            let mut chunk = body.take().unwrap_or_default();
            let ran = chain.request_body(&mut chunk, end, cx);
            // Empty and not the end: nothing is sent (Pingora reads `None` as the end).
            *body = (!chunk.is_empty() || !end).then_some(chunk);
            ran
        });
        if let Some(Err(answer)) = ran {
            session.set_keepalive(None);
            let status = answer.status;
            ctx.body_answer = Some(answer);
            return Error::e_explain(HTTPStatus(status), "answered by a request body filter");
        }
        Ok(())
    }

    /// The route's `response_body` filters (for the own loop too).
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        let ran = body_phase(ctx, Chain::has_response_body, |chain, cx| {
            let mut chunk = body.take().unwrap_or_default();
            let ran = chain.response_body(&mut chunk, end, cx);
            *body = (!chunk.is_empty()).then_some(chunk);
            ran
        });
        if let Some(Err(why)) = ran {
            return Error::e_explain(InternalError, format!("response body filter: {why}"));
        }
        Ok(None)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forward::rewrite(session, req, ctx)
    }

    /// A 101 to a request that asked for no upgrade is the peer's error (502), never relayed:
    /// what followed it would reach the client as a raw tunnel.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Error::e_explain(HTTPStatus(502), "101 from the peer without an upgrade");
        }
        ctx.mark_answered();
        Ok(())
    }

    /// The `response` phase of the route's filters (its response rules, CORS, request IDs).
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(route) = ctx.route().filter(|r| r.chain.has_response()) {
            route
                .chain
                .response(resp, &ctx.exchange(session.req_header()));
        }
        if resp.status.as_u16() >= 200 {
            if let Some(cookie) = forward::sticky_cookie(ctx) {
                resp.append_header(header::SET_COOKIE, cookie)?;
            }
        }
        Ok(())
    }

    /// Pingora's answer to a request that failed (`error_status`).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = error_status(e);
        // A request body filter's own answer, unless the peer's has begun already.
        if let Some(answer) = ctx.body_answer.take() {
            let final_sent = session
                .response_written()
                .is_some_and(|r| !r.status.is_informational() || r.status == 101);
            if !final_sent {
                if let Err(e) = reject(session, ctx, &answer).await {
                    log::info!("failed to send a body filter's answer: {e}");
                }
                return FailToProxy {
                    error_code: answer.status,
                    can_reuse_downstream: false,
                };
            }
        }
        if code > 0 {
            if let Err(e) = session.respond_error(code).await {
                log::error!("failed to send the error response: {e}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// One log line per failed request, the same from both loops (Pingora would say "Fail to
    /// filter request" for the own loop's, which runs inside `request_filter`). A client that
    /// went away is not the proxy's error: info, as nginx logs it.
    fn suppress_error_log(&self, session: &Session, ctx: &RequestCtx, e: &Error) -> bool {
        let summary = self.request_summary(session, ctx);
        if e.etype() == &WriteTimedout && e.esource() == &ErrorSource::Downstream {
            METRICS
                .rejections
                .with_label_values(&[ctx.route_name(), "send_timeout"])
                .inc();
            log::info!("client read nothing for server.send_timeout: cut, {summary}");
            return true;
        }
        match error_status(e) {
            0 => log::info!("client went away: {e}, {summary}"),
            code => log::error!("Fail to proxy: {e}, status: {code}, {summary}"),
        }
        true
    }

    /// Metrics and one access-log line per request; for an upgrade, when the tunnel closes.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.handed_off {
            return;
        }
        let status = ctx
            .ws_status
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        let req = session.req_header();
        let text = |name| {
            req.headers
                .get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
        };
        account(&Entry {
            client: ctx.client_ip,
            method: req.method.as_str(),
            uri: &req.uri,
            metrics: ctx.route_metrics(),
            version: req.version,
            status,
            bytes_sent: match ctx.ws_status {
                Some(_) => ctx.ws_bytes_sent as usize,
                None => session.body_bytes_sent(),
            },
            bytes_received: session.body_bytes_read(),
            duration: ctx.started.elapsed(),
            route: ctx.route_name(),
            upstream: ctx.group().map_or("-", |g| g.name.as_str()),
            peer: ctx.attempts.peer().map(|p| p.addr),
            referer: text(header::REFERER),
            user_agent: text(header::USER_AGENT),
            upgraded: false,
            end: None,
            error: e.map(|e| e.etype().as_str()),
            vars: Some(&ctx.vars),
            loggers: ctx.route().and_then(|r| r.chain.loggers()).map(|l| &**l),
        });
    }
}

/// `f` over the route's chain and what its body phases see, when `wanted` says the chain has
/// filters for that phase; `None` (and no work) otherwise.
fn body_phase<T>(
    ctx: &mut RequestCtx,
    wanted: fn(&Chain) -> bool,
    f: impl FnOnce(&Chain, &mut BodyCx<'_>) -> T,
) -> Option<T> {
    let i = ctx
        .route
        .filter(|&i| wanted(&ctx.snapshot.routes[i].chain))?;
    let snapshot = Arc::clone(&ctx.snapshot);
    let route = &snapshot.routes[i];
    let mut cx = BodyCx {
        route: &route.name,
        vars: &mut ctx.vars,
        ext: &mut ctx.ext,
    };
    Some(f(&route.chain, &mut cx))
}

/// The status portico answers a failed request with: Pingora's mapping, but a peer that timed
/// out (connecting or answering) is 504 Gateway Timeout, as nginx and HAProxy answer, not 502.
/// 0: the client's connection is gone, nothing to answer.
fn error_status(e: &Error) -> u16 {
    match (e.etype(), e.esource()) {
        (HTTPStatus(code), _) => *code,
        (ConnectTimedout | ReadTimedout, ErrorSource::Upstream) => 504,
        (_, ErrorSource::Upstream) => 502,
        (WriteError | WriteTimedout | ReadError | ConnectionClosed, ErrorSource::Downstream) => 0,
        (_, ErrorSource::Downstream) => 400,
        _ => 500,
    }
}

/// Answers the request ourselves (an admission `Answer`: a short text body, maybe a header)
/// and counts why; `Ok(true)` tells Pingora the response is sent.
async fn reject(session: &mut Session, ctx: &RequestCtx, answer: &Answer) -> Result<bool> {
    let route = ctx.route_name();
    METRICS
        .rejections
        .with_label_values(&[route, answer.reason])
        .inc();
    if ctx.upgrade {
        METRICS
            .websocket_upgrades
            .with_label_values(&[route, "rejected"])
            .inc();
    }
    let mut resp = ResponseHeader::build(answer.status, Some(4 + answer.headers.len()))?;
    for (name, value) in &answer.headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    if !answer.body.is_empty() && !resp.headers.contains_key(header::CONTENT_TYPE) {
        resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    }
    resp.insert_header(header::CONTENT_LENGTH, answer.body.len().to_string())?;
    // The route's response phase sees portico's own answers too (its header rules, CORS).
    if let Some(route) = ctx.route() {
        route
            .chain
            .response(&mut resp, &ctx.exchange(session.req_header()));
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(answer.body.clone()), true)
        .await?;
    Ok(true)
}
