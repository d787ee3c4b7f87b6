//! The request as portico judges it: one canonical view of its host and path ([`view`]),
//! computed once before routing, which routing and every policy read; admission ([`admit`]):
//! every decision that needs no peer.

pub mod admit;
pub mod ctx;
pub mod view;

use crate::filters::Exchange;
use crate::headers::{self, Forwarded};
use crate::routing::Router;
use crate::snapshot::Route;
use pingora::http::RequestHeader;
use pingora::{ErrorType::InternalError, OrErr};
pub use view::{Refusal, View};

/// The route for `view`: `Ok(None)` when none matches. 400 when an origin that reads `%2F` or
/// `%5C` as a separator would see a path another route claims (`/api%2Fadmin/x` beside an
/// `/api/admin/` route): what portico judged and what the origin serves must be one route.
pub fn route(router: &Router, view: &View) -> Result<Option<usize>, Refusal> {
    let host = view.host.as_deref();
    let found = router.find(host, &view.path);
    if let Some(separated) = view.separated_path() {
        if router.find(host, &separated) != found {
            return Err(Refusal {
                status: 400,
                why: "an encoded slash in the path would reach another route\n",
            });
        }
    }
    Ok(found)
}

/// The request a peer gets, from the client's: X-Forwarded-*, the target the canonical view
/// stands for (origin-form with the authority as `Host` for an absolute-form one), then the
/// `upstream_request` phase of the route's filters (strip_prefix, the route's header rules, the
/// listed filters). The one rewrite for Pingora's loop, portico's own and WebSocket upgrades
/// (and the `request` fuzz target).
pub fn rewrite(
    req: &mut RequestHeader,
    route: &Route,
    exchange: &Exchange<'_>,
    forwarded: &Forwarded,
) -> pingora::Result<()> {
    headers::apply_forwarded(req, forwarded);
    let view = exchange.view;
    if let Some(target) = view.target(None) {
        req.set_raw_path(target.as_bytes())
            .or_err(InternalError, "the canonical request target")?;
    }
    // The host the request was judged on is the one the peer reads: an absolute-form target's
    // authority, or HTTP/2's `:authority`, replaces any `Host` (as Pingora's loop does for
    // HTTP/2, before this runs).
    let named_by_target = view.absolute_form || req.uri.authority().is_some();
    if let (true, Some(authority)) = (named_by_target, &view.authority) {
        req.insert_header(http::header::HOST, authority.clone())?;
    }
    route.chain.upstream_request(req, exchange);
    Ok(())
}
