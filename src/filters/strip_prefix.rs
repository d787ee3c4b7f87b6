//! `strip_prefix: true`: the peer gets the canonical path without the route's prefix
//! (`/ws/chat?x=1` under `/ws/` is sent as `/chat?x=1`).

use super::{Exchange, Filter, Phases};
use pingora::http::RequestHeader;

pub struct StripPrefix(pub String);

impl Filter for StripPrefix {
    fn phases(&self) -> Phases {
        Phases::UPSTREAM_REQUEST
    }

    fn upstream_request(&self, req: &mut RequestHeader, cx: &Exchange<'_>) {
        if let Some(target) = cx.view.target(Some(&self.0)) {
            // The canonical path is valid in a request target; so is a part of it.
            let _ = req.set_raw_path(target.as_bytes());
        }
    }
}
