//! `request_headers`: the route's rules for the request a peer gets, in the order remove, set
//! (replacing every value), add (appending), after the forwarding headers.

use super::{Exchange, Filter, Phases};
use crate::headers::HeaderRules;
use pingora::http::RequestHeader;

pub struct RequestHeaders(pub HeaderRules);

impl Filter for RequestHeaders {
    fn phases(&self) -> Phases {
        Phases::UPSTREAM_REQUEST
    }

    fn upstream_request(&self, req: &mut RequestHeader, _cx: &Exchange<'_>) {
        self.0.apply(req);
    }
}
