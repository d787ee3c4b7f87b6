//! The `ProxyHttp` implementation: each hook a few lines that delegate to routing, headers,
//! upstream selection and the WebSocket policy, and record what happened for the metrics and
//! the access log.

use crate::accesslog::{self, Entry};
use crate::headers::{self, Forwarded};
use crate::limits::ConnectionSlot;
use crate::metrics::{status_class, METRICS};
use crate::request::admit::{admit, Answer, Client};
use crate::request::{self, View};
use crate::snapshot::{Route, SharedSnapshot, Snapshot};
use crate::tunnel::Tunnel;
use crate::upstream::attempts::Attempts;
use crate::upstream::{pool, InflightGuard, Peer, UpstreamGroup};
use crate::websocket::{self, Upgrade};
use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::connectors::TransportConnector;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as HttpSessionV1;
use pingora::protocols::http::v1::server::HttpSession as HttpSessionV1Server;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::Peer as _;
use pingora::ErrorSource;
use prometheus::IntGauge;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// How long an idle upstream connection is kept when the peer sets no `idle_timeout`.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long portico's own loop waits for the peer's answer before it also watches the client.
/// A client that gives up on a slow request (a long poll) then frees the peer's connection at
/// once, as in Pingora's loop; an answer sooner costs no extra read of the client's socket.
const WATCH_CLIENT_AFTER: Duration = Duration::from_millis(100);

pub struct Portico {
    pub snapshot: SharedSnapshot,
    /// Connects to peers for what portico forwards itself: plain requests (whose idle
    /// connections wait in `pool::IDLE`) and WebSocket upgrades. Pingora's loop has its own.
    pub connector: TransportConnector,
    /// The longest a draining tunnel waits for a frame in flight before its 1001 close.
    pub drain_limit: Duration,
}

/// Per-request state. The snapshot is loaded once, when the request starts, so one request
/// never mixes two config versions even if a reload lands mid-way.
pub struct RequestCtx {
    snapshot: Arc<Snapshot>,
    route: Option<usize>,
    client_ip: IpAddr,
    tls: bool,
    upgrade: bool,
    /// The peers tried, the current one counted, and every retry decision.
    attempts: Attempts,
    /// Counts this request as in flight; a tunnel takes it along to its own task.
    in_flight: Option<GaugeGuard>,
    /// A 101 was relayed and the tunnel runs in its own task, which accounts for it at the end.
    handed_off: bool,
    started: Instant,
    connect_started: Option<Instant>,
    connected: Option<Instant>,
    /// A WebSocket upgrade portico answered itself: the status sent and, after a 101, how
    /// the tunnel went.
    ws_status: Option<u16>,
    /// Body bytes of a refused upgrade's response, relayed by portico itself.
    ws_bytes_sent: u64,
    /// Request body bytes seen so far (for `max_body_size`).
    body_bytes: u64,
    /// Counts this upgrade against the route's `max_connections` for its client.
    connection_slot: Option<ConnectionSlot>,
    /// The canonical host and path every policy judges (set before routing).
    view: View,
}

impl RequestCtx {
    /// A connection to the peer is ready (new or pooled): the connect time is observed.
    fn mark_connected(&mut self) {
        let now = Instant::now();
        if let (Some(route), Some(started)) = (self.route(), self.connect_started) {
            route
                .metrics
                .upstream_connect
                .observe(now.duration_since(started).as_secs_f64());
        }
        self.connected = Some(now);
    }

    /// The peer's response head arrived: the time since connecting is observed.
    fn mark_answered(&self) {
        if let (Some(route), Some(connected)) = (self.route(), self.connected) {
            route
                .metrics
                .upstream_response
                .observe(connected.elapsed().as_secs_f64());
        }
    }

    fn route(&self) -> Option<&Route> {
        self.route.map(|i| &self.snapshot.routes[i])
    }

    fn route_name(&self) -> &str {
        self.route().map_or("-", |r| r.name.as_str())
    }
}

/// Increments a gauge now and decrements it on drop, however the request ends (Pingora does
/// not call `logging()` for tunnels cut at shutdown; drops always happen).
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    fn new(g: IntGauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[async_trait]
impl ProxyHttp for Portico {
    type CTX = RequestCtx;

    /// No modules: Pingora's default adds a (disabled) response-compression module, whose
    /// context would be built and called for every request for nothing.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        crate::conn::head_read();
        RequestCtx {
            snapshot: self.snapshot.load_full(),
            route: None,
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            tls: false,
            upgrade: false,
            attempts: Attempts::default(),
            in_flight: Some(GaugeGuard::new(METRICS.requests_in_flight.clone())),
            handed_off: false,
            started: Instant::now(),
            connect_started: None,
            connected: None,
            ws_status: None,
            body_bytes: 0,
            ws_bytes_sent: 0,
            connection_slot: None,
            view: View::default(),
        }
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
        let admission = admit(session.req_header(), &ctx.snapshot, client);
        (ctx.view, ctx.route) = (admission.view, admission.route);
        ctx.upgrade = admission.upgrade != Upgrade::No;
        ctx.connection_slot = admission.slot;
        if let Some(answer) = admission.answer {
            if answer.close {
                session.set_keepalive(None);
            }
            return reject(session, ctx, &answer).await;
        }
        match admission.upgrade {
            Upgrade::WebSocket => self.websocket(session, ctx).await,
            _ if ctx.snapshot.fast_path && is_plain(session) => self.forward(session, ctx).await,
            _ => Ok(false),
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let snapshot = Arc::clone(&ctx.snapshot);
        let route = &snapshot.routes[ctx
            .route
            .expect("request_filter answered every unrouted request")];
        let peer = next_peer(ctx, &route.upstream)?;
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
        if let Some(route) = ctx.route() {
            if ctx.attempts.connect_failed(&route.upstream) {
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

    /// Bodies without a Content-Length are counted as they stream against `max_body_size`.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(max) = ctx.route().and_then(|r| r.max_body_size) else {
            return Ok(());
        };
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_bytes > max {
            session.set_keepalive(None);
            return Error::e_explain(HTTPStatus(413), format!("request body over {max} bytes"));
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        rewrite_upstream_request(session, req, ctx)
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

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(route) = ctx.route() {
            route.response_headers.apply(resp);
        }
        Ok(())
    }

    /// Pingora's answer to a request that failed (`error_status`).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = error_status(e);
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
            metrics: ctx.route().map(|r| &r.metrics),
            version: req.version,
            status,
            bytes_sent: match ctx.ws_status {
                Some(_) => ctx.ws_bytes_sent as usize,
                None => session.body_bytes_sent(),
            },
            bytes_received: session.body_bytes_read(),
            duration: ctx.started.elapsed(),
            route: ctx.route_name(),
            upstream: ctx.route().map_or("-", |r| r.upstream.name.as_str()),
            peer: ctx.attempts.peer().map(|p| p.addr),
            referer: text(header::REFERER),
            user_agent: text(header::USER_AGENT),
            upgraded: false,
            end: None,
            error: e.map(|e| e.etype().as_str()),
        });
    }
}

impl Portico {
    /// The request head for the peer, through the same hook Pingora's loop calls.
    async fn upstream_head(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<RequestHeader>> {
        let mut req = Box::new(session.req_header().clone());
        req.set_version(http::Version::HTTP_11);
        req.remove_header(&header::CONNECTION);
        self.upstream_request_filter(session, &mut req, ctx).await?;
        Ok(req)
    }

    /// A plain request (`is_plain`), forwarded by one sequential exchange: Pingora's connector
    /// and HTTP/1 client session (the parsing, framing and keep-alive rules are Pingora's),
    /// portico's idle pool (`pool::IDLE`), without Pingora's general proxy loop (two halves
    /// joined by channels, cache and module hooks, retry buffering, a task per idle
    /// connection), which costs 22% more user-space instructions per request (README: Two forwarding loops).
    /// It calls the same hooks Pingora's loop calls (`connected_to_upstream`,
    /// `upstream_request_filter`, `upstream_response_filter`, `response_filter`, for interim
    /// answers too), asks the same [`Attempts`] about every retry, and times each read and write
    /// by the peer's timeouts as Pingora does. A close-delimited body is re-framed as chunked so
    /// the client keeps its connection; errors are answered by Pingora (`error_status` before the
    /// response started; a cut connection after). tests/integration/forwarding.rs runs every
    /// case against both loops.
    async fn forward(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snapshot = Arc::clone(&ctx.snapshot);
        let route = &snapshot.routes[ctx.route.expect("routed")];
        let group = &route.upstream;
        let mut req = Some(self.upstream_head(session, ctx).await?);

        let mut peer = next_peer(ctx, group)?;
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
                None => Box::pin(self.connector.new_stream(&peer.template))
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
            self.connected_to_upstream(session, reused, &peer.template, fd, None, ctx)
                .await?;
            let mut upstream = HttpSessionV1::new_with_options(stream, &peer.template);
            // Per read and per write, as Pingora's loop sets them.
            upstream.read_timeout = peer.template.options.read_timeout;
            upstream.write_timeout = peer.template.options.write_timeout;
            let head = match req.take() {
                Some(head) => head,
                // Built again in the rare case a pooled connection failed under it, rather
                // than copied for every request in case it does.
                None => self.upstream_head(session, ctx).await?,
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
            self.upstream_response_filter(session, &mut interim, ctx)
                .await?;
            self.response_filter(session, &mut interim, ctx).await?;
            session
                .write_response_header(interim, false)
                .await
                .map_err(|e| e.into_down())?;
            let answer = async { upstream.read_response().await.map_err(|e| e.into_up()) };
            await_peer(session, answer).await??;
        }
        let mut resp = Box::new(upstream.resp_header().expect("read").clone());
        self.upstream_response_filter(session, &mut resp, ctx)
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
        self.response_filter(session, &mut resp, ctx).await?;
        session
            .write_response_header(resp, end)
            .await
            .map_err(|e| e.into_down())?;
        while let Some(body) = upstream.read_body_bytes().await.map_err(|e| e.into_up())? {
            session
                .write_response_body(Some(body), false)
                .await
                .map_err(|e| e.into_down())?;
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

    /// A valid WebSocket upgrade, handled here rather than by Pingora's proxy loop (see
    /// `tunnel`). Until the peer has answered, failures are ordinary errors that Pingora answers
    /// (502/503); once the peer has answered, the client's connection is taken from Pingora and
    /// either tunnelled (a real 101) or given the peer's refusal and closed. `Ok(true)`: done.
    async fn websocket(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snapshot = Arc::clone(&ctx.snapshot);
        let route = &snapshot.routes[ctx.route.expect("routed")];
        let group = &route.upstream;
        let request = websocket::upstream_request(session.req_header(), |req| {
            rewrite_upstream_request(session, req, ctx)
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
        let failed =
            |why: String, etype: ErrorType, e: Box<dyn std::error::Error + Send + Sync>| {
                counted(Error::because(etype, why, e).into_up())
            };
        let (peer, mut upstream) = loop {
            let peer = next_peer(ctx, group).map_err(counted)?;
            match Box::pin(self.connector.new_stream(&peer.template)).await {
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
                return Error::e_explain(
                    InternalError,
                    "websocket upgrade on a non-HTTP/1 session",
                );
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
            let sent = async {
                client.write_all(&answer.raw_head).await?;
                client.flush().await
            };
            if sent.await.is_err() {
                return Ok(true);
            }
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
                    self.drain_limit,
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
                _held: (
                    ctx.attempts.take_guard(),
                    ws_open,
                    ctx.connection_slot.take().map(Box::new),
                    ctx.in_flight.take(),
                    crate::conn::take_permit(),
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
            let relayed = websocket::relay_refusal(
                &mut client,
                &mut upstream,
                answer,
                &route.response_headers,
                timeout,
                &mut ctx.ws_bytes_sent,
            );
            if let Err(e) = relayed.await {
                log::debug!("relaying a refused upgrade from {}: {e}", peer.addr);
            }
        }
        Ok(true)
    }
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

/// The upstream request: X-Forwarded-*, the target the canonical view stands for (with the
/// route's strip_prefix; origin-form with the authority as `Host` for an absolute-form one),
/// the route's header rules. The same for Pingora's loop, portico's own and upgrades.
fn rewrite_upstream_request(
    session: &Session,
    req: &mut RequestHeader,
    ctx: &RequestCtx,
) -> Result<()> {
    let peer = peer_ip(session);
    let forwarded = Forwarded {
        peer,
        peer_trusted: ctx.snapshot.trusted.contains(peer),
        client: ctx.client_ip,
        tls: ctx.tls,
        host: ctx.view.authority.as_ref(),
    };
    request::rewrite(req, &ctx.view, ctx.route().expect("routed"), &forwarded)
}

/// A request portico forwards with its own loop (`Portico::forward`): HTTP/1 from the client,
/// no body, and a plain head (`headers::is_plain`).
fn is_plain(session: &mut Session) -> bool {
    !session.as_downstream().is_http2()
        && headers::is_plain(session.req_header())
        && session.as_downstream_mut().is_body_empty()
}

/// The next peer of `group` for this request ([`Attempts::next`]), its connect timed from now.
fn next_peer(ctx: &mut RequestCtx, group: &UpstreamGroup) -> Result<Arc<Peer>> {
    let peer = ctx.attempts.next(group, ctx.client_ip)?;
    ctx.connect_started = Some(Instant::now());
    Ok(peer)
}

/// Counts a finished request (or tunnel) in the metrics and writes its access-log line.
fn account(e: &Entry) {
    match e.metrics {
        Some(m) => {
            m.requests(e.status).inc();
            m.bytes_sent.inc_by(e.bytes_sent as u64);
            m.bytes_received.inc_by(e.bytes_received as u64);
            if !e.upgraded {
                m.duration.observe(e.duration.as_secs_f64());
            }
        }
        // No route (404, refused before routing): the series are looked up.
        None => {
            let m = &*METRICS;
            m.requests
                .with_label_values(&[e.route, e.upstream, status_class(e.status)])
                .inc();
            m.bytes_sent
                .with_label_values(&[e.route])
                .inc_by(e.bytes_sent as u64);
            m.bytes_received
                .with_label_values(&[e.route])
                .inc_by(e.bytes_received as u64);
            if !e.upgraded {
                m.request_duration
                    .with_label_values(&[e.route])
                    .observe(e.duration.as_secs_f64());
            }
        }
    }
    accesslog::write(e);
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
        _held: (
            Option<InflightGuard>,
            GaugeGuard,
            // Boxed: most routes have no max_connections, and 32 bytes less per tunnel.
            Option<Box<ConnectionSlot>>,
            Option<GaugeGuard>,
            // The client connection's place under server.max_connections.
            Option<crate::conn::ConnectionPermit>,
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
        });
        Poll::Ready(())
    }
}

fn peer_ip(session: &Session) -> IpAddr {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
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
    let mut resp = ResponseHeader::build(answer.status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, answer.body.len().to_string())?;
    if let Some((name, value)) = &answer.header {
        resp.insert_header(name.clone(), value.as_str())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(answer.body.as_bytes())), true)
        .await?;
    Ok(true)
}
