//! A binary of your own: portico plus a filter of yours, configured in the same YAML file
//! (docs/filters.md). This one routes by tenant: a request with `X-Tenant: acme` goes to the
//! upstream group `tenant-acme`; an unknown tenant gets 404 before any peer is contacted; a
//! request without the header stays on the route's group. Each tenant's finished requests
//! (and WebSockets, when they close) are logged.
//!
//! ```yaml
//! upstreams:
//!   shared: {peers: [127.0.0.1:3001]}
//!   tenant-acme: {peers: [127.0.0.1:3002]}
//! routes:
//!   - upstream: shared
//!     filters:
//!       - tenant: {header: X-Tenant}
//! ```
//!
//!     cargo run --example custom_filter -- -c my.yaml      # every portico flag works

use portico::filters::{Answer, Build, Done, Filter, Flow, Phases, Request};
use serde::Deserialize;
use std::sync::Arc;

/// The filter's settings, as `- tenant: {...}` gives them; serde reports a typo with its
/// YAML path (`routes[0].filters[0].tenant.heder: unknown key`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_header")]
    header: String,
}

fn default_header() -> String {
    "X-Tenant".into()
}

struct Tenant {
    header: http::HeaderName,
}

impl Filter for Tenant {
    fn phases(&self) -> Phases {
        Phases::REQUEST | Phases::LOG
    }

    fn request(&self, req: &mut Request<'_>) -> Flow {
        let Some(value) = req.head.headers.get(&self.header) else {
            return Flow::Continue;
        };
        // A tenant name is a short lower-case word: nothing else is looked up.
        let name = value.to_str().unwrap_or_default();
        let word = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !word || !req.use_upstream(&format!("tenant-{name}")) {
            return Flow::Respond(Answer::new("unknown_tenant", 404, "unknown tenant\n"));
        }
        req.vars.set("tenant", name);
        Flow::Continue
    }

    fn log(&self, done: &Done<'_>) {
        let Some(tenant) = done.vars.get("tenant") else {
            return;
        };
        let what = match done.websocket {
            true => "websocket closed",
            false => "request",
        };
        log::info!(
            "tenant {tenant}: {what}, status {}, {} bytes out, {} ms",
            done.status,
            done.bytes_sent,
            done.duration.as_millis()
        );
    }
}

fn tenant(settings: &serde_yaml::Value, build: &mut Build<'_>) -> Option<Arc<dyn Filter>> {
    let s: Settings = build.settings(settings)?;
    let header = build.header_name("header", &s.header)?;
    Some(Arc::new(Tenant { header }))
}

fn main() {
    portico::Builder::new().filter("tenant", tenant).run()
}
