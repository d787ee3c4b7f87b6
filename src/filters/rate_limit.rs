//! `rate_limit`: per client IP, `requests_per_second` with `burst` (429 with `Retry-After`),
//! and `max_connections` open WebSockets (the next upgrade gets 429). It runs before `auth`
//! and the listed filters' checks, as nginx's `limit_req` runs before its access phase: a
//! client guessing tokens is limited like any other.

use super::{Answer, Filter, Flow, Phases, Request};
use crate::limits::{self, Limits};
use http::header;
use std::sync::Arc;

pub struct RateLimit {
    /// Shared with the route, whose housekeeping forgets idle clients.
    pub limits: Arc<Limits>,
    /// The route's name as the key of its connection counts (kept across reloads).
    pub key: Arc<str>,
}

impl Filter for RateLimit {
    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    fn request(&self, req: &mut Request<'_>) -> Flow {
        if let Err(wait) = self.limits.check_rate(req.client.ip) {
            let retry_after = wait.as_secs().max(1).to_string();
            return Flow::Respond(
                Answer::new("rate_limit", 429, "too many requests\n")
                    .with_header(header::RETRY_AFTER, retry_after),
            );
        }
        if let (true, Some(max)) = (req.valid_upgrade, self.limits.max_connections) {
            match limits::acquire_connection(&self.key, req.client.ip, max) {
                Some(slot) => *req.slot = Some(slot),
                None => {
                    return Flow::Respond(Answer::new(
                        "max_connections",
                        429,
                        "too many open connections\n",
                    ))
                }
            }
        }
        Flow::Continue
    }
}
