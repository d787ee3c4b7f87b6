//! `forward_auth`: asks an auth service about each request before a peer is chosen (nginx's
//! `auth_request`, Traefik's ForwardAuth). The service gets a `GET` of its own URL with the
//! client's headers (no body) and `X-Forwarded-Method`, `-Proto`, `-Host`, `-Uri` and `-For`
//! describing the request. A 2xx lets the request on, with the headers named in
//! `copy_headers` copied from the service's answer to the peer's request (a client's own
//! headers of those names are always removed); any other answer is returned to the client as
//! the service gave it (a 401 with its challenge, a 302 to a login page). A service that is
//! down, too slow (`timeout`, default 5s) or answers garbage: 503, never let through.
//! Connections to the service are kept alive and reused. An `https://` service is verified
//! against the system's roots, or the CA certificates of the PEM file in `ca`.
//!
//! ```yaml
//! filters:
//!   - forward_auth: {url: http://127.0.0.1:9000/check, copy_headers: [X-User-Id], timeout: 1s}
//! ```

use super::{Answer, Build, Exchange, Filter, Flow, Phases, Request};
use crate::config::schema::Duration;
use crate::config::validate;
use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue};
use pingora::connectors::TransportConnector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::{HttpPeer, Peer};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    #[serde(default)]
    copy_headers: Vec<String>,
    #[serde(default)]
    timeout: Option<Duration>,
    /// For an https:// service: a PEM file of CA certificates to verify it with.
    #[serde(default)]
    ca: Option<String>,
}

/// The most of the service's answer body relayed to a refused client.
const MAX_BODY: usize = 64 * 1024;

pub struct ForwardAuth {
    peer: HttpPeer,
    authority: HeaderValue,
    path: String,
    copy: Vec<HeaderName>,
    timeout: std::time::Duration,
    connector: TransportConnector,
}

/// The headers to copy, from a 2xx, for the peer's request.
#[derive(Clone)]
struct Allowed(Vec<(HeaderName, HeaderValue)>);

pub fn factory(settings: &serde_yaml::Value, build: &mut Build<'_>) -> Option<Arc<dyn Filter>> {
    let s: Settings = build.settings(settings)?;
    let mut copy = Vec::new();
    for (i, name) in s.copy_headers.iter().enumerate() {
        if let Some(h) = build.header_name(&format!("copy_headers[{i}]"), name) {
            copy.push(h);
        }
    }
    let timeout = s.timeout.map_or(std::time::Duration::from_secs(5), |d| d.0);
    if timeout.is_zero() {
        build.error(Some("timeout"), "must be longer than 0s");
    }
    let uri: http::Uri = match s.url.parse() {
        Ok(u) => u,
        Err(_) => {
            build.error(Some("url"), format!("invalid URL {:?}", s.url));
            return None;
        }
    };
    let (Some(scheme @ ("http" | "https")), Some(authority)) = (uri.scheme_str(), uri.authority())
    else {
        build.error(
            Some("url"),
            format!(
                "{:?}: an http:// or https:// URL with a host, as http://127.0.0.1:9000/check",
                s.url
            ),
        );
        return None;
    };
    let tls = scheme == "https";
    if s.ca.is_some() && !tls {
        build.error(Some("ca"), "only for an https:// url");
        return None;
    }
    let host_port = match authority.port_u16() {
        Some(_) => authority.as_str().to_owned(),
        None => format!("{}:{}", authority.host(), if tls { 443 } else { 80 }),
    };
    let ca = match &s.ca {
        Some(file) => Some(crate::upstream::balancer::load_ca(
            file,
            &format!("{}.ca", build.path),
            build.errs,
        )?),
        None => None,
    };
    let addr = validate::peer_addr(build.errs, &format!("{}.url", build.path), &host_port)?;
    if copy.len() != s.copy_headers.len() || timeout.is_zero() {
        return None;
    }
    let sni = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let mut peer = HttpPeer::new(addr, tls, sni.to_owned());
    peer.options.ca = ca;
    peer.options.connection_timeout = Some(timeout);
    peer.options.read_timeout = Some(timeout);
    peer.options.write_timeout = Some(timeout);
    Some(Arc::new(ForwardAuth {
        peer,
        authority: HeaderValue::from_str(authority.as_str()).ok()?,
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        copy,
        timeout,
        connector: TransportConnector::new(None),
    }))
}

/// The service's answer.
struct Verdict {
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

/// Fields that describe one hop, never passed on to or from the auth service.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "host"
            | "expect"
    )
}

impl ForwardAuth {
    /// The subrequest: the client's headers, and the request it describes.
    fn subrequest(&self, req: &Request<'_>) -> pingora::Result<RequestHeader> {
        let mut sub = RequestHeader::build("GET", self.path.as_bytes(), None)?;
        for (name, value) in req.head.headers.iter() {
            if !hop_by_hop(name) && !name.as_str().starts_with("x-forwarded-") {
                sub.append_header(name.clone(), value.clone())?;
            }
        }
        sub.insert_header(header::HOST, self.authority.clone())?;
        sub.insert_header("x-forwarded-method", req.head.method.as_str())?;
        sub.insert_header(
            "x-forwarded-proto",
            if req.client.tls { "https" } else { "http" },
        )?;
        if let Some(host) = &req.view.authority {
            sub.insert_header("x-forwarded-host", host.clone())?;
        }
        let uri = match &req.view.query {
            Some(q) => format!("{}?{q}", req.view.path),
            None => req.view.path.clone(),
        };
        sub.insert_header("x-forwarded-uri", uri)?;
        sub.insert_header("x-forwarded-for", req.client.ip.to_string())?;
        Ok(sub)
    }

    async fn ask(&self, sub: RequestHeader) -> pingora::Result<Verdict> {
        let reply =
            super::subrequest::exchange(&self.connector, &self.peer, sub, None, MAX_BODY).await?;
        let headers = reply
            .head
            .headers
            .iter()
            .filter(|(n, _)| !hop_by_hop(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        Ok(Verdict {
            status: reply.head.status.as_u16(),
            headers,
            body: reply.body,
        })
    }
}

#[async_trait]
impl Filter for ForwardAuth {
    fn phases(&self) -> Phases {
        Phases::REQUEST_ASYNC | Phases::UPSTREAM_REQUEST
    }

    async fn request_async(&self, req: &mut Request<'_>) -> Flow {
        let unavailable = || {
            Flow::Respond(Answer::new(
                "forward_auth_unavailable",
                503,
                "authentication service unavailable\n",
            ))
        };
        let Ok(sub) = self.subrequest(req) else {
            return unavailable();
        };
        let verdict = match tokio::time::timeout(self.timeout, self.ask(sub)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                log::warn!("forward_auth: {}{}: {e}", self.peer.address(), self.path);
                return unavailable();
            }
            Err(_) => {
                log::warn!(
                    "forward_auth: {}{}: no answer within {:?}",
                    self.peer.address(),
                    self.path,
                    self.timeout
                );
                return unavailable();
            }
        };
        if verdict.status < 200 {
            return unavailable();
        }
        if (200..300).contains(&verdict.status) {
            let copied = verdict
                .headers
                .into_iter()
                .filter(|(n, _)| self.copy.contains(n))
                .collect();
            req.ext.insert(Allowed(copied));
            return Flow::Continue;
        }
        Flow::Respond(Answer {
            reason: "forward_auth",
            status: verdict.status,
            headers: verdict.headers,
            body: verdict.body,
            close: false,
        })
    }

    fn upstream_request(&self, req: &mut RequestHeader, cx: &Exchange<'_>) {
        for name in &self.copy {
            req.remove_header(name);
        }
        if let Some(Allowed(headers)) = cx.ext.get::<Allowed>() {
            for (name, value) in headers {
                let _ = req.append_header(name.clone(), value.clone());
            }
        }
    }
}
