//! Admission: every decision about a request that needs no peer, in the documented order, as
//! one function of the request head, the snapshot and the client. Framing and size checks, the
//! canonical view and its route, then the request phase of the route's filter chain (its
//! redirect, body limit, WebSocket gate, rate limit, listed filters and auth: docs/filters.md),
//! and a malformed upgrade last. `proxy::request_filter` acts on the result; the `request` fuzz
//! target calls it as is.

use super::{route, Refusal, View};
use crate::checks;
pub use crate::filters::{Answer, Client};
use crate::filters::{Flow, Request, Vars};
use crate::limits::ConnectionSlot;
use crate::snapshot::{Route, Snapshot};
use crate::upstream::UpstreamGroup;
use crate::websocket::{self, Upgrade};
use http::header;
use pingora::http::RequestHeader;
use std::sync::Arc;

/// What admission found.
#[derive(Default)]
pub struct Admission {
    pub view: View,
    /// The route, when one matched (also for a refused request: its metrics are the route's).
    pub route: Option<usize>,
    pub upgrade: Upgrade,
    /// An upgrade's place under the route's per-client `max_connections`, held while it lives.
    pub slot: Option<ConnectionSlot>,
    /// The upstream group a filter chose instead of the route's.
    pub upstream: Option<Arc<UpstreamGroup>>,
    /// What the filters left for later phases and the access log.
    pub vars: Vars,
    /// What the filters keep for their own later phases.
    pub ext: http::Extensions,
    /// `Some`: answer this and stop; `None`: admitted, to be proxied.
    pub answer: Option<Answer>,
    /// The route's chain has a filter that waits: [`admit_deferred`] runs it.
    pub deferred: bool,
}

/// Admission up to the end, or, for a route with a filter that waits (`forward_auth`), up to
/// its chain: then `deferred` is set and [`admit_deferred`] finishes it. Synchronous, so the
/// common request carries no future for filters it does not have.
pub fn admit(req: &RequestHeader, snapshot: &Snapshot, client: Client) -> Admission {
    let mut a = Admission::default();
    a.answer = decide(req, snapshot, client, &mut a).err();
    a
}

/// The rest of an admission `admit` deferred: the route's chain, waiting where a filter waits,
/// then the upgrade check.
pub async fn admit_deferred(
    req: &RequestHeader,
    snapshot: &Snapshot,
    client: Client,
    a: &mut Admission,
) {
    a.deferred = false;
    let Some(route) = a.route.map(|i| &snapshot.routes[i]) else {
        return;
    };
    let mut request = request(req, snapshot, client, route, a);
    a.answer = match route.chain.request(&mut request).await {
        Flow::Respond(answer) => Some(answer),
        Flow::Continue => upgrade_check(a.upgrade).err(),
    };
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
    if route.chain.waits() {
        a.deferred = true;
        return Ok(());
    }
    if route.chain.has_request() {
        if let Flow::Respond(answer) = route
            .chain
            .request_now(&mut request(req, snapshot, client, route, a))
        {
            return Err(answer);
        }
    }
    upgrade_check(a.upgrade)
}

/// What the request phase of the chain sees.
fn request<'a>(
    req: &'a RequestHeader,
    snapshot: &'a Snapshot,
    client: Client,
    route: &'a Route,
    a: &'a mut Admission,
) -> Request<'a> {
    Request {
        head: req,
        view: &a.view,
        client,
        websocket: a.upgrade != Upgrade::No,
        valid_upgrade: a.upgrade == Upgrade::WebSocket,
        route: &route.name,
        vars: &mut a.vars,
        ext: &mut a.ext,
        groups: &snapshot.upstreams,
        upstream: &mut a.upstream,
        slot: &mut a.slot,
    }
}

/// A malformed upgrade, answered after the chain (its checks run for it too).
fn upgrade_check(upgrade: Upgrade) -> Result<(), Answer> {
    let Upgrade::Invalid { status, why } = upgrade else {
        return Ok(());
    };
    // A client that got the handshake wrong may have sent anything after it.
    let answer = Answer::new("bad_upgrade", status, why).closing();
    Err(match status {
        426 => answer.with_header(header::SEC_WEBSOCKET_VERSION, "13"),
        _ => answer,
    })
}
