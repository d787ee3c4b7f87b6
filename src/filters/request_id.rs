//! `request_id`: every request gets an ID, sent to the peer, returned in the response and
//! written in the access log (`request_id=...`). A valid incoming one (1-128 characters of
//! letters, digits and `-_.:`, as a load balancer in front sets it) is kept, so one ID follows
//! a request through every hop; anything else is replaced by a new UUID.
//!
//! ```yaml
//! filters:
//!   - request_id: {}                         # X-Request-Id
//!   - request_id: {header: X-Correlation-Id}
//! ```

use super::{Build, Exchange, Filter, Flow, Phases, Request};
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    header: Option<String>,
}

pub struct RequestId {
    header: HeaderName,
}

pub fn factory(settings: &serde_yaml::Value, build: &mut Build<'_>) -> Option<Arc<dyn Filter>> {
    let s: Settings = build.settings(settings)?;
    let name = s.header.as_deref().unwrap_or("x-request-id");
    let header = build.header_name("header", name)?;
    Some(Arc::new(RequestId { header }))
}

/// What an incoming ID may be: short, and nothing a log line or a peer could misread.
fn valid(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

impl Filter for RequestId {
    fn phases(&self) -> Phases {
        Phases::REQUEST | Phases::UPSTREAM_REQUEST | Phases::RESPONSE
    }

    fn request(&self, req: &mut Request<'_>) -> Flow {
        let mut given = req.head.headers.get_all(&self.header).iter();
        let id = match (given.next(), given.next()) {
            (Some(v), None) if valid(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
            _ => uuid::Uuid::new_v4().to_string(),
        };
        req.vars.set("request_id", id);
        Flow::Continue
    }

    fn upstream_request(&self, req: &mut RequestHeader, cx: &Exchange<'_>) {
        if let Some(id) = cx.vars.get("request_id") {
            let _ = req.insert_header(self.header.clone(), id);
        }
    }

    fn response(&self, resp: &mut ResponseHeader, cx: &Exchange<'_>) {
        if let Some(id) = cx.vars.get("request_id") {
            let _ = resp.insert_header(self.header.clone(), id);
        }
    }
}
