//! `cors`: Cross-Origin Resource Sharing for browsers. A preflight (`OPTIONS` with `Origin`
//! and `Access-Control-Request-Method`) is answered here, never sent to a peer: 204 with the
//! allowed methods and headers for an allowed origin, 403 for another. Other requests from an
//! allowed origin get `Access-Control-Allow-Origin` (the origin itself, never `*` with
//! credentials) and the rest on their response; a peer's own `Access-Control-*` response
//! headers are replaced, so an origin not allowed is never reflected.
//!
//! ```yaml
//! filters:
//!   - cors: {allow_origins: [https://app.example.com], allow_credentials: true, max_age: 10m}
//! ```

use super::{Answer, Build, Exchange, Filter, Flow, Phases, Request};
use crate::config::schema::Duration;
use http::{header, HeaderName, HeaderValue, Method};
use pingora::http::ResponseHeader;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    allow_origins: Vec<String>,
    #[serde(default)]
    allow_methods: Option<Vec<String>>,
    /// Default: the headers the preflight asks for.
    #[serde(default)]
    allow_headers: Option<Vec<String>>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    allow_credentials: bool,
    #[serde(default)]
    max_age: Option<Duration>,
}

pub struct Cors {
    /// Exact origins (`https://app.example.com`, lower-case), or any when `None`.
    origins: Option<Vec<String>>,
    methods: HeaderValue,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

const DEFAULT_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";

pub fn factory(settings: &serde_yaml::Value, build: &mut Build<'_>) -> Option<Arc<dyn Filter>> {
    let s: Settings = build.settings(settings)?;
    let mut ok = true;
    let any = s.allow_origins.iter().any(|o| o == "*");
    if s.allow_origins.is_empty() {
        build.error(
            Some("allow_origins"),
            "needs at least one origin (or \"*\")",
        );
        ok = false;
    }
    if any && s.allow_credentials {
        build.error(
            Some("allow_credentials"),
            "cannot be true with the origin \"*\": browsers refuse credentials for any origin",
        );
        ok = false;
    }
    for (i, o) in s.allow_origins.iter().enumerate() {
        let well_formed = o == "*"
            || ((o.starts_with("https://") || o.starts_with("http://"))
                && !o.ends_with('/')
                && o.split_once("://").is_some_and(|(_, host)| {
                    !host.is_empty() && !host.contains(['/', '?', '#', ' ', '*'])
                }));
        if !well_formed {
            build.error(
                Some(&format!("allow_origins[{i}]")),
                format!("{o:?} is not an origin: scheme://host[:port], as https://app.example.com"),
            );
            ok = false;
        }
    }
    let list = |build: &mut Build<'_>, key: &str, items: &[String], method: bool| {
        for (i, item) in items.iter().enumerate() {
            let valid = match method {
                true => Method::from_bytes(item.as_bytes()).is_ok(),
                false => HeaderName::from_bytes(item.as_bytes()).is_ok(),
            };
            if !valid {
                build.error(Some(&format!("{key}[{i}]")), format!("invalid: {item:?}"));
                return None;
            }
        }
        HeaderValue::from_str(&items.join(", ")).ok()
    };
    let methods = match &s.allow_methods {
        Some(m) => list(build, "allow_methods", m, true),
        None => Some(HeaderValue::from_static(DEFAULT_METHODS)),
    };
    let headers = s
        .allow_headers
        .as_ref()
        .map(|h| list(build, "allow_headers", h, false));
    let expose = match s.expose_headers.is_empty() {
        true => Some(None),
        false => list(build, "expose_headers", &s.expose_headers, false).map(Some),
    };
    let (Some(methods), Some(expose), true) = (methods, expose, ok) else {
        return None;
    };
    let headers = match headers {
        Some(None) => return None,
        Some(h) => h,
        None => None,
    };
    Some(Arc::new(Cors {
        origins: (!any).then(|| {
            s.allow_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect()
        }),
        methods,
        headers,
        expose,
        credentials: s.allow_credentials,
        max_age: s.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
    }))
}

impl Cors {
    /// The request's `Origin` when it is allowed.
    fn allowed<'h>(&self, origin: Option<&'h HeaderValue>) -> Option<&'h HeaderValue> {
        let origin = origin?;
        match &self.origins {
            None => Some(origin),
            Some(list) => {
                let o = origin.to_str().ok()?;
                list.iter()
                    .any(|a| a.eq_ignore_ascii_case(o))
                    .then_some(origin)
            }
        }
    }

    /// The value of `Access-Control-Allow-Origin` for an allowed origin.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        match (&self.origins, self.credentials) {
            (None, false) => HeaderValue::from_static("*"),
            _ => origin.clone(),
        }
    }
}

impl Filter for Cors {
    fn phases(&self) -> Phases {
        Phases::REQUEST | Phases::RESPONSE
    }

    fn request(&self, req: &mut Request<'_>) -> Flow {
        let h = &req.head.headers;
        let preflight = req.head.method == Method::OPTIONS
            && h.contains_key(header::ORIGIN)
            && h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if !preflight {
            return Flow::Continue;
        }
        // The answer below is whole: the response phase leaves it as it is.
        req.vars.set("cors", "preflight");
        let Some(origin) = self.allowed(h.get(header::ORIGIN)) else {
            return Flow::Respond(
                Answer::new("cors", 403, "origin not allowed\n")
                    .with_header(header::VARY, "Origin"),
            );
        };
        let mut answer = Answer::new("cors_preflight", 204, "");
        let mut add = |name, value: HeaderValue| answer.headers.push((name, value));
        add(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        add(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
        let asked = h.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        if let Some(allowed) = self.headers.as_ref().or(asked) {
            add(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed.clone());
        }
        if self.credentials {
            add(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(age) = &self.max_age {
            add(header::ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        add(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        Flow::Respond(answer)
    }

    fn response(&self, resp: &mut ResponseHeader, cx: &Exchange<'_>) {
        if cx.vars.get("cors") == Some("preflight") {
            return;
        }
        // A peer's own CORS headers are replaced (most responses have none: one look).
        let peer_cors = resp
            .headers
            .keys()
            .any(|n| n.as_str().starts_with("access-control-"));
        if peer_cors {
            for name in [
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                header::ACCESS_CONTROL_ALLOW_METHODS,
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                header::ACCESS_CONTROL_MAX_AGE,
            ] {
                resp.remove_header(&name);
            }
        }
        if self.origins.is_some() || self.credentials {
            let _ = resp.append_header(header::VARY, "Origin");
        }
        let Some(origin) = self.allowed(cx.request.headers.get(header::ORIGIN)) else {
            return;
        };
        let _ = resp.insert_header(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        if self.credentials {
            let _ = resp.insert_header(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
        }
        if let Some(expose) = &self.expose {
            let _ = resp.insert_header(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}
