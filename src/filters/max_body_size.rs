//! `max_body_size`: a request declaring a larger body gets 413 before any peer is contacted;
//! a body without a declared length is counted as it streams (`proxy::request_body_filter`)
//! and cut with 413 as soon as it passes the limit.

use super::{Answer, Filter, Flow, Phases, Request};
use http::header;

pub struct MaxBodySize(pub u64);

impl Filter for MaxBodySize {
    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    fn request(&self, req: &mut Request<'_>) -> Flow {
        let declared = req
            .head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        match declared {
            Some(n) if n > self.0 => Flow::Respond(
                Answer::new("body_too_large", 413, "request body too large\n").closing(),
            ),
            _ => Flow::Continue,
        }
    }
}
