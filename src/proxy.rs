//! The `ProxyHttp` implementation: each hook a few lines that delegate to routing, headers,
//! upstream selection and the WebSocket policy.

use crate::headers::{self, Forwarded};
use crate::routing;
use crate::snapshot::{Route, SharedSnapshot, Snapshot};
use crate::upstream::InflightGuard;
use crate::websocket;
use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use log::info;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

pub struct Portico {
    pub snapshot: SharedSnapshot,
}

/// Per-request state. The snapshot is loaded once, when the request starts, so one request
/// never mixes two config versions even if a reload lands mid-way.
pub struct RequestCtx {
    snapshot: Arc<Snapshot>,
    route: Option<usize>,
    client_ip: IpAddr,
    tls: bool,
    upgrade: bool,
    /// Peers this request already tried (a retry goes elsewhere).
    tried: Vec<SocketAddr>,
    /// Counts this request (or tunnel) on its peer until the context drops.
    inflight: Option<InflightGuard>,
    started: Instant,
}

impl RequestCtx {
    fn route(&self) -> Option<&Route> {
        self.route.map(|i| &self.snapshot.routes[i])
    }
}

#[async_trait]
impl ProxyHttp for Portico {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snapshot: self.snapshot.load_full(),
            route: None,
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            tls: false,
            upgrade: false,
            tried: Vec::new(),
            inflight: None,
            started: Instant::now(),
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
        ctx.upgrade = session.is_upgrade_req();

        let req = session.req_header();
        let host = request_host(req).map(routing::host_without_port);
        ctx.route = ctx.snapshot.router.find(host, req.uri.path());
        let Some(route) = ctx.route() else {
            return respond(session, 404, "no route for this request\n", None).await;
        };
        if route.redirect_https && !ctx.tls {
            let location = https_location(host, req);
            return respond(
                session,
                301,
                "moved to https\n",
                Some((header::LOCATION, location)),
            )
            .await;
        }
        if ctx.upgrade && !route.websocket.enabled {
            return respond(
                session,
                403,
                "websocket upgrades are not allowed here\n",
                None,
            )
            .await;
        }
        if let Some(tokens) = &route.auth {
            if !tokens.allows(session.req_header().headers.get(header::AUTHORIZATION)) {
                let challenge = (
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"portico\"".to_owned(),
                );
                return respond(
                    session,
                    401,
                    "missing or invalid bearer token\n",
                    Some(challenge),
                )
                .await;
            }
        }
        if ctx.upgrade {
            websocket::prepare_downstream(session, &route.websocket);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route()
            .expect("request_filter answered every unrouted request");
        let group = &route.upstream;
        let key = ip_key(ctx.client_ip);
        let Some(peer) = group.select(key.as_ref(), &ctx.tried) else {
            let (code, why) = if ctx.tried.is_empty() {
                (503, "no healthy peer")
            } else {
                (502, "no peer left to retry")
            };
            return Error::e_explain(HTTPStatus(code), format!("upstream {}: {why}", group.name));
        };
        let mut http_peer = Box::new(peer.template.clone());
        if ctx.upgrade {
            websocket::prepare_upstream(&mut http_peer, &route.websocket);
        }
        let peer = Arc::clone(peer);
        ctx.tried.push(peer.addr);
        ctx.inflight = Some(peer.track());
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
            if ctx.tried.len() <= route.upstream.retries {
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let peer = peer_ip(session);
        let forwarded = Forwarded {
            peer,
            peer_trusted: ctx.snapshot.trusted.contains(peer),
            client: ctx.client_ip,
            tls: ctx.tls,
            host: session.req_header().headers.get(header::HOST),
        };
        headers::apply_forwarded(req, &forwarded);
        let route = ctx.route().expect("routed");
        if route.strip_prefix {
            let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let stripped = routing::strip_prefix(pq, &route.path_prefix);
            req.set_uri(
                stripped
                    .parse()
                    .or_err(InternalError, "path after strip_prefix")?,
            );
        }
        route.request_headers.apply(req);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = ctx.route() else {
            return Ok(());
        };
        route.response_headers.apply(resp);
        Ok(())
    }

    /// One access-log line per request; for an upgrade, when the tunnel closes.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let req = session.req_header();
        let route = ctx.route().map_or("-", |r| r.name.as_str());
        let upstream = ctx.route().map_or("-", |r| r.upstream.name.as_str());
        let peer = ctx.inflight.as_ref().map(|g| g.peer().addr.to_string());
        info!(
            target: "access",
            "{} \"{} {} {:?}\" {} {} {}ms route={} upstream={} peer={}{}{}",
            ctx.client_ip,
            req.method,
            req.uri,
            req.version,
            status,
            session.body_bytes_sent(),
            ctx.started.elapsed().as_millis(),
            route,
            upstream,
            peer.as_deref().unwrap_or("-"),
            if ctx.upgrade { " upgrade" } else { "" },
            e.map(|e| format!(" error=\"{}\"", e.etype().as_str())).unwrap_or_default(),
        );
    }
}

fn peer_ip(session: &Session) -> IpAddr {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
}

/// The Host header, or the authority of an absolute-form / HTTP/2 request.
fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

fn https_location(host: Option<&str>, req: &RequestHeader) -> String {
    let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    format!("https://{}{pq}", host.unwrap_or("localhost"))
}

/// The ip_hash key: the address's bytes, so a client hashes the same on every instance.
fn ip_key(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Answers the request ourselves with a short text body; `Ok(true)` tells Pingora it is done.
async fn respond(
    session: &mut Session,
    status: u16,
    body: &'static str,
    extra: Option<(header::HeaderName, String)>,
) -> Result<bool> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    if let Some((name, value)) = extra {
        resp.insert_header(name, value)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await?;
    Ok(true)
}
