//! Admission: every decision about a request that needs no peer, in the documented order, as
//! one function of the request head, the snapshot and the client. Framing and size checks, the
//! canonical view and its route, then the route's policies: `redirect_https`, `max_body_size`,
//! the WebSocket gate, `rate_limit` (before auth: refused guesses count), `auth`, and a
//! malformed upgrade. `proxy::request_filter` acts on the result; the `request` fuzz target
//! calls it as is.

use super::{route, Refusal, View};
use crate::checks;
use crate::limits::{self, ConnectionSlot};
use crate::snapshot::Snapshot;
use crate::websocket::{self, Upgrade};
use http::header::{self, HeaderName};
use pingora::http::RequestHeader;
use std::net::IpAddr;

/// Who sent the request: the client address after `trusted_proxies`, and whether it came
/// over TLS.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub ip: IpAddr,
    pub tls: bool,
}

/// An answer portico gives itself instead of proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Why, as `portico_rejections_total` labels it.
    pub reason: &'static str,
    pub status: u16,
    pub body: &'static str,
    pub header: Option<(HeaderName, String)>,
    /// Close the connection after it: what the client sent next cannot be trusted to be
    /// framed as it says.
    pub close: bool,
}

impl Answer {
    fn new(reason: &'static str, status: u16, body: &'static str) -> Self {
        Answer {
            reason,
            status,
            body,
            header: None,
            close: false,
        }
    }

    fn with_header(mut self, name: HeaderName, value: String) -> Self {
        self.header = Some((name, value));
        self
    }

    fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

/// What admission found.
pub struct Admission {
    pub view: View,
    /// The route, when one matched (also for a refused request: its metrics are the route's).
    pub route: Option<usize>,
    pub upgrade: Upgrade,
    /// An upgrade's place under the route's per-client `max_connections`, held while it lives.
    pub slot: Option<ConnectionSlot>,
    /// `Some`: answer this and stop; `None`: admitted, to be proxied.
    pub answer: Option<Answer>,
}

pub fn admit(req: &RequestHeader, snapshot: &Snapshot, client: Client) -> Admission {
    let mut a = Admission {
        view: View::default(),
        route: None,
        upgrade: Upgrade::No,
        slot: None,
        answer: None,
    };
    a.answer = decide(req, snapshot, client, &mut a).err();
    a
}

/// The checks in order; `Err` is the first that refuses.
fn decide(
    req: &RequestHeader,
    snapshot: &Snapshot,
    client: Client,
    a: &mut Admission,
) -> Result<(), Answer> {
    let bad = |status, why| Answer::new("bad_request", status, why).closing();
    checks::check(req).map_err(|(status, why)| bad(status, why))?;
    // Everything from here on judges the canonical view, never the raw head.
    a.view = View::of(req).map_err(|Refusal { status, why }| bad(status, why))?;
    a.route =
        route(&snapshot.router, &a.view).map_err(|Refusal { status, why }| bad(status, why))?;
    a.upgrade = websocket::check(req);
    let Some(route) = a.route.map(|i| &snapshot.routes[i]) else {
        return Err(Answer::new("no_route", 404, "no route for this request\n"));
    };
    if route.redirect_https && !client.tls {
        return Err(Answer::new("redirect_https", 301, "moved to https\n")
            .with_header(header::LOCATION, https_location(&a.view)));
    }
    if let Some(max) = route.max_body_size {
        let declared = req
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(Answer::new("body_too_large", 413, "request body too large\n").closing());
        }
    }
    if a.upgrade != Upgrade::No && !route.websocket.enabled {
        return Err(Answer::new(
            "websocket_disabled",
            403,
            "websocket upgrades are not allowed here\n",
        ));
    }
    // Limits before auth, as nginx's limit_req runs before its access phase: a client
    // guessing tokens is limited like any other.
    if let Some(limits) = &route.limits {
        if let Err(wait) = limits.check_rate(client.ip) {
            let retry_after = wait.as_secs().max(1).to_string();
            return Err(Answer::new("rate_limit", 429, "too many requests\n")
                .with_header(header::RETRY_AFTER, retry_after));
        }
        if let (Upgrade::WebSocket, Some(max)) = (a.upgrade, limits.max_connections) {
            match limits::acquire_connection(&route.key, client.ip, max) {
                Some(slot) => a.slot = Some(slot),
                None => {
                    return Err(Answer::new(
                        "max_connections",
                        429,
                        "too many open connections\n",
                    ))
                }
            }
        }
    }
    if let Some(tokens) = &route.auth {
        if !tokens.allows(req.headers.get(header::AUTHORIZATION)) {
            return Err(
                Answer::new("auth", 401, "missing or invalid bearer token\n").with_header(
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"portico\"".to_owned(),
                ),
            );
        }
    }
    if let Upgrade::Invalid { status, why } = a.upgrade {
        // A client that got the handshake wrong may have sent anything after it.
        let answer = Answer::new("bad_upgrade", status, why).closing();
        return Err(match status {
            426 => answer.with_header(header::SEC_WEBSOCKET_VERSION, "13".to_owned()),
            _ => answer,
        });
    }
    Ok(())
}

/// `https://` + the canonical host (without its port: the https listener's is the default)
/// and path; the query as received.
fn https_location(view: &View) -> String {
    let host = view.host.as_deref().unwrap_or("localhost");
    match &view.query {
        Some(q) => format!("https://{host}{}?{q}", view.path),
        None => format!("https://{host}{}", view.path),
    }
}
