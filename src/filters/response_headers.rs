//! `response_headers`: the route's rules for every response head the client gets (interim
//! answers, refused upgrades and portico's own answers too), remove, set, add.

use super::{Exchange, Filter, Phases};
use crate::headers::HeaderRules;
use pingora::http::ResponseHeader;

pub struct ResponseHeaders(pub HeaderRules);

impl Filter for ResponseHeaders {
    fn phases(&self) -> Phases {
        Phases::RESPONSE
    }

    fn response(&self, resp: &mut ResponseHeader, _cx: &Exchange<'_>) {
        self.0.apply(resp);
    }
}
