//! The filter pipeline: every policy of a route is a [`Filter`], and a route's filters, in
//! order, are its [`Chain`]. The route's own keys (`redirect_https`, `max_body_size`,
//! `websocket.enabled: false`, `rate_limit`, `strip_prefix`, `request_headers`,
//! `response_headers`, `auth`) compile into filters of the same trait as the ones listed under
//! `routes[].filters` and the ones a program adds through [`crate::Builder`]; docs/filters.md
//! tells how to write one.
//!
//! A filter acts in the phases it declares ([`Phases`]); the chain keeps one list per phase, so
//! a phase a filter does not implement costs nothing, and a route without filters costs an
//! empty loop:
//! - `request`: before a peer is chosen. It sees the canonical view, the client and the
//!   request head, may write [`Vars`] for later filters and the access log, may pick another
//!   upstream group ([`Request::use_upstream`]), and may answer itself ([`Flow::Respond`]),
//!   which ends the chain. Synchronous, or `request_async` for a filter that must wait.
//! - `upstream_request`: edits the request head the peer gets (after the forwarding headers).
//! - `response`: edits the response head the client gets (portico's own answers included,
//!   WebSocket 101s excepted: those pass byte for byte).
//! - `request_body`: each piece of the request body on its way to the peer, which it may
//!   change or hold back (to see more of it first). A filter that resizes a body drops its
//!   `Content-Length` in the `upstream_request` phase (the body then goes chunked), or for a
//!   response calls [`unframe`] in the `response` phase.
//! - `response_body`: the same for the response body on its way to the client.
//! - `log`: observes the finished request (for a WebSocket, when it closes).
//!
//! Body phases do not run inside a WebSocket tunnel: after a 101 the bytes pass untouched.

pub mod auth;
pub mod canary;
pub mod cors;
pub mod forward_auth;
pub mod ip_access;
pub mod jwt;
pub mod max_body_size;
pub mod rate_limit;
pub mod redirect_https;
pub mod request_headers;
pub mod request_id;
pub mod response_headers;
pub mod strip_prefix;
pub(crate) mod subrequest;
pub mod wasm;
pub mod websocket;

use crate::config::ConfigErrors;
use crate::limits::ConnectionSlot;
use crate::request::View;
use crate::upstream::UpstreamGroup;
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// For a `response` phase whose filter will change the body's size: drops the response's
/// `Content-Length` and frames the body chunked to an HTTP/1.1 client (to HTTP/2 it simply has
/// no length; to HTTP/1.0 it ends with the connection). Nothing for a response without a body.
pub fn unframe(resp: &mut ResponseHeader, request: &RequestHeader) {
    let bodiless = request.method == http::Method::HEAD
        || resp.status.is_informational()
        || matches!(resp.status.as_u16(), 204 | 304);
    resp.remove_header(&http::header::CONTENT_LENGTH);
    if !bodiless && request.version == http::Version::HTTP_11 {
        let _ = resp.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
}

/// The phases a filter acts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Phases(u8);

impl Phases {
    pub const REQUEST: Phases = Phases(1);
    /// The request phase, through `request_async` (a filter that waits: a subrequest).
    pub const REQUEST_ASYNC: Phases = Phases(2);
    pub const UPSTREAM_REQUEST: Phases = Phases(4);
    pub const RESPONSE: Phases = Phases(8);
    pub const LOG: Phases = Phases(16);
    pub const REQUEST_BODY: Phases = Phases(32);
    pub const RESPONSE_BODY: Phases = Phases(64);

    pub fn contains(self, other: Phases) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Phases {
    type Output = Phases;
    fn bitor(self, rhs: Phases) -> Phases {
        Phases(self.0 | rhs.0)
    }
}

/// What the request phase of a filter decided.
#[derive(Debug)]
pub enum Flow {
    /// On to the next filter (and then to a peer).
    Continue,
    /// Answer the client with this and stop: no later filter runs, no peer is contacted.
    Respond(Answer),
}

/// An answer portico gives itself instead of proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Why, as `portico_rejections_total` labels it (a fixed word: never from the request).
    pub reason: &'static str,
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Sent as `text/plain` unless a `Content-Type` is among the headers.
    pub body: Bytes,
    /// Close the connection after it: what the client sent next cannot be trusted to be
    /// framed as it says.
    pub close: bool,
}

impl Answer {
    pub fn new(reason: &'static str, status: u16, body: &'static str) -> Self {
        Answer {
            reason,
            status,
            headers: Vec::new(),
            body: Bytes::from_static(body.as_bytes()),
            close: false,
        }
    }

    /// The same with one more header; a value that is not a valid header value is left out.
    pub fn with_header(mut self, name: HeaderName, value: impl AsRef<str>) -> Self {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

/// Who sent the request: the client address after `trusted_proxies`, and whether it came
/// over TLS.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub ip: IpAddr,
    pub tls: bool,
}

/// Values filters leave for later filters and the access log (`key=value` in a text line, a
/// field in a JSON one). Keys are fixed words of the filter's, never from the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars(Vec<(&'static str, String)>);

impl Vars {
    /// Sets `key`, replacing an earlier value.
    pub fn set(&mut self, key: &'static str, value: impl Into<String>) {
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str()))
    }
}

/// What the request phase sees and may change.
pub struct Request<'a> {
    /// The request head as the client sent it (read it through `view` for host and path).
    pub head: &'a RequestHeader,
    /// The canonical host, path and query every policy judges.
    pub view: &'a View,
    pub client: Client,
    /// The request asks for a WebSocket upgrade.
    pub websocket: bool,
    /// ... and its handshake is valid (an invalid one is answered 400/426 after the chain).
    pub(crate) valid_upgrade: bool,
    /// The route's name.
    pub route: &'a str,
    pub vars: &'a mut Vars,
    /// Typed values a filter keeps for its own later phases (keyed by the filter's own types).
    pub ext: &'a mut http::Extensions,
    pub(crate) groups: &'a HashMap<String, Arc<UpstreamGroup>>,
    pub(crate) upstream: &'a mut Option<Arc<UpstreamGroup>>,
    /// An upgrade's place under the route's per-client `max_connections`.
    pub(crate) slot: &'a mut Option<ConnectionSlot>,
}

impl Request<'_> {
    /// Sends this request to the upstream group `name` instead of the route's; false (and
    /// nothing changes) when there is no such group.
    pub fn use_upstream(&mut self, name: &str) -> bool {
        match self.groups.get(name) {
            Some(group) => {
                *self.upstream = Some(Arc::clone(group));
                true
            }
            None => false,
        }
    }

    /// The upstream group this request goes to so far, by name.
    pub fn upstream(&self) -> Option<&str> {
        self.upstream.as_ref().map(|g| g.name.as_str())
    }
}

/// What the `upstream_request` and `response` phases see besides the head they edit.
pub struct Exchange<'a> {
    /// The request head as the client sent it.
    pub request: &'a RequestHeader,
    pub view: &'a View,
    pub client: Client,
    pub route: &'a str,
    pub vars: &'a Vars,
    pub ext: &'a http::Extensions,
}

/// What the body phases see besides the piece of body they get.
pub struct BodyCx<'a> {
    pub route: &'a str,
    pub vars: &'a mut Vars,
    pub ext: &'a mut http::Extensions,
}

/// A finished request, for the `log` phase.
pub struct Done<'a> {
    pub route: &'a str,
    pub upstream: &'a str,
    pub client: IpAddr,
    /// The status the client got (0: none, the client left first).
    pub status: u16,
    pub duration: Duration,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// A WebSocket that was open (the tunnel has just closed).
    pub websocket: bool,
    pub vars: &'a Vars,
}

/// A policy of a route. Declare the phases it acts in; implement those methods.
#[async_trait]
pub trait Filter: Send + Sync + 'static {
    fn phases(&self) -> Phases;

    fn request(&self, _req: &mut Request<'_>) -> Flow {
        Flow::Continue
    }

    /// For [`Phases::REQUEST_ASYNC`]: the request phase of a filter that waits.
    async fn request_async(&self, req: &mut Request<'_>) -> Flow {
        self.request(req)
    }

    fn upstream_request(&self, _req: &mut RequestHeader, _cx: &Exchange<'_>) {}

    fn response(&self, _resp: &mut ResponseHeader, _cx: &Exchange<'_>) {}

    /// For [`Phases::REQUEST_BODY`]: `chunk` is the next piece of the request body (`end`: the
    /// last; it may be empty) and becomes what goes on to the next filter and the peer: a
    /// filter may replace it, or take it (leaving it empty) to give it back with a later one.
    /// `Err`: answer the client with this instead (the peer's exchange is cut).
    fn request_body(
        &self,
        _chunk: &mut Bytes,
        _end: bool,
        _cx: &mut BodyCx<'_>,
    ) -> Result<(), Answer> {
        Ok(())
    }

    /// For [`Phases::RESPONSE_BODY`]: the same for the response body. `Err(reason)`: the
    /// response is cut (its head has gone to the client already), the reason logged.
    fn response_body(
        &self,
        _chunk: &mut Bytes,
        _end: bool,
        _cx: &mut BodyCx<'_>,
    ) -> Result<(), String> {
        Ok(())
    }

    fn log(&self, _done: &Done<'_>) {}
}

/// A route's filters, one list per phase, each in the route's order.
#[derive(Clone, Default)]
pub struct Chain {
    request: Box<[(Arc<dyn Filter>, bool)]>,
    upstream_request: Box<[Arc<dyn Filter>]>,
    response: Box<[Arc<dyn Filter>]>,
    request_body: Box<[Arc<dyn Filter>]>,
    response_body: Box<[Arc<dyn Filter>]>,
    /// Shared with tunnels, which log when they close; `None` when no filter logs.
    log: Option<Arc<[Arc<dyn Filter>]>>,
}

impl Chain {
    pub fn new(filters: &[Arc<dyn Filter>]) -> Chain {
        let with = |p: Phases| {
            filters
                .iter()
                .filter(move |f| f.phases().contains(p))
                .cloned()
        };
        let request = filters
            .iter()
            .filter_map(|f| {
                let phases = f.phases();
                let waits = phases.contains(Phases::REQUEST_ASYNC);
                (waits || phases.contains(Phases::REQUEST)).then(|| (Arc::clone(f), waits))
            })
            .collect();
        let log: Vec<_> = with(Phases::LOG).collect();
        Chain {
            request,
            upstream_request: with(Phases::UPSTREAM_REQUEST).collect(),
            response: with(Phases::RESPONSE).collect(),
            request_body: with(Phases::REQUEST_BODY).collect(),
            response_body: with(Phases::RESPONSE_BODY).collect(),
            log: (!log.is_empty()).then(|| log.into()),
        }
    }

    /// Whether any filter acts in the request phase (a route without filters skips it).
    pub fn has_request(&self) -> bool {
        !self.request.is_empty()
    }

    /// Whether any filter acts on response heads.
    pub fn has_response(&self) -> bool {
        !self.response.is_empty()
    }

    /// Whether any filter acts on request bodies.
    pub fn has_request_body(&self) -> bool {
        !self.request_body.is_empty()
    }

    /// Whether any filter acts on response bodies.
    pub fn has_response_body(&self) -> bool {
        !self.response_body.is_empty()
    }

    /// Whether a filter of the request phase waits (then only [`Chain::request`] runs it).
    pub fn waits(&self) -> bool {
        self.request.iter().any(|(_, waits)| *waits)
    }

    /// The request phase of a chain whose filters do not wait.
    pub fn request_now(&self, req: &mut Request<'_>) -> Flow {
        for (filter, _) in self.request.iter() {
            if let Flow::Respond(answer) = filter.request(req) {
                return Flow::Respond(answer);
            }
        }
        Flow::Continue
    }

    /// The request phase, waiting where a filter waits.
    pub async fn request(&self, req: &mut Request<'_>) -> Flow {
        for (filter, waits) in self.request.iter() {
            let flow = match waits {
                false => filter.request(req),
                true => filter.request_async(req).await,
            };
            if let Flow::Respond(_) = flow {
                return flow;
            }
        }
        Flow::Continue
    }

    pub fn upstream_request(&self, req: &mut RequestHeader, cx: &Exchange<'_>) {
        self.upstream_request
            .iter()
            .for_each(|f| f.upstream_request(req, cx));
    }

    pub fn response(&self, resp: &mut ResponseHeader, cx: &Exchange<'_>) {
        self.response.iter().for_each(|f| f.response(resp, cx));
    }

    /// The request body phase: `chunk` through each filter in turn.
    pub fn request_body(
        &self,
        chunk: &mut Bytes,
        end: bool,
        cx: &mut BodyCx<'_>,
    ) -> Result<(), Answer> {
        self.request_body
            .iter()
            .try_for_each(|f| f.request_body(chunk, end, cx))
    }

    /// The response body phase: `chunk` through each filter in turn.
    pub fn response_body(
        &self,
        chunk: &mut Bytes,
        end: bool,
        cx: &mut BodyCx<'_>,
    ) -> Result<(), String> {
        self.response_body
            .iter()
            .try_for_each(|f| f.response_body(chunk, end, cx))
    }

    /// The filters with a log phase (shared with tunnels, which log when they close); the
    /// access log calls them through [`log_all`].
    pub fn loggers(&self) -> Option<&Arc<[Arc<dyn Filter>]>> {
        self.log.as_ref()
    }
}

/// The log phase: after the access-log line of a request, or of a tunnel when it closes.
pub fn log_all(loggers: Option<&[Arc<dyn Filter>]>, done: &Done<'_>) {
    for f in loggers.unwrap_or_default() {
        f.log(done);
    }
}

/// What a filter's factory gets to build it: its settings' YAML path for errors, and the
/// upstream groups of the file.
pub struct Build<'a> {
    /// `routes[2].filters[1].jwt`.
    pub path: String,
    pub(crate) errs: &'a mut ConfigErrors,
    pub(crate) groups: &'a BTreeMap<String, crate::config::schema::UpstreamSection>,
}

impl Build<'_> {
    /// The settings as `T` (a serde type: `#[serde(deny_unknown_fields)]` makes a typo an
    /// error), or `None` with every problem reported under the filter's path.
    pub fn settings<T: serde::de::DeserializeOwned>(
        &mut self,
        value: &serde_yaml::Value,
    ) -> Option<T> {
        let value = match value {
            // `- request_id:` with nothing after it: no settings.
            serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
            v => v.clone(),
        };
        match crate::config::collect::every_error_in::<T>(value) {
            (Some(t), errs) if errs.is_empty() => Some(t),
            (_, errs) => {
                for e in errs.0 {
                    let path = match e.path.is_empty() {
                        true => self.path.clone(),
                        false => format!("{}.{}", self.path, e.path),
                    };
                    self.errs.push(path, e.message);
                }
                None
            }
        }
    }

    /// An error about `key` of the settings (`None`: about the settings as a whole).
    pub fn error(&mut self, key: Option<&str>, message: impl Into<String>) {
        let path = match key {
            Some(k) => format!("{}.{k}", self.path),
            None => self.path.clone(),
        };
        self.errs.push(path, message);
    }

    /// `name` as a header name, or `None` with `invalid header name "..."` reported under
    /// `key` of the settings.
    pub fn header_name(&mut self, key: &str, name: &str) -> Option<HeaderName> {
        crate::config::validate::header_name(self.errs, &format!("{}.{key}", self.path), name)
    }

    /// The file has an upstream group of this name.
    pub fn has_upstream(&self, name: &str) -> bool {
        self.groups.contains_key(name)
    }
}

/// Builds a filter from its settings; `None` after reporting what is wrong through `build`.
pub type Factory =
    Arc<dyn Fn(&serde_yaml::Value, &mut Build<'_>) -> Option<Arc<dyn Filter>> + Send + Sync>;

/// The filters `routes[].filters` may name: the built-in ones and a program's own.
#[derive(Clone)]
pub struct Registry(BTreeMap<String, Factory>);

impl Registry {
    /// The built-in filters.
    pub fn builtin() -> Registry {
        let mut r = Registry(BTreeMap::new());
        r.add("request_id", request_id::factory);
        r.add("cors", cors::factory);
        r.add("ip_access", ip_access::factory);
        r.add("canary", canary::factory);
        r.add("jwt", jwt::factory);
        r.add("forward_auth", forward_auth::factory);
        r.add("wasm", wasm::factory);
        r
    }

    pub fn add<F>(&mut self, name: &str, factory: F)
    where
        F: Fn(&serde_yaml::Value, &mut Build<'_>) -> Option<Arc<dyn Filter>>
            + Send
            + Sync
            + 'static,
    {
        self.0.insert(name.to_owned(), Arc::new(factory));
    }

    pub fn get(&self, name: &str) -> Option<&Factory> {
        self.0.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// The registry every config is built with: the built-ins, plus what a program added before
/// it ran ([`crate::Builder`]).
pub fn registry() -> &'static Registry {
    REGISTRY.get_or_init(Registry::builtin)
}

/// Installs `registry` for this process; false if one was already in use.
pub fn install(registry: Registry) -> bool {
    REGISTRY.set(registry).is_ok()
}
