//! `wasm`: a Proxy-Wasm filter (ABI 0.2.1 and 0.2.0, as Envoy runs them) on wasmtime. A module
//! built once with a Proxy-Wasm SDK runs in Envoy and here; docs/filters.md lists what of the
//! ABI is supported.
//!
//! ```yaml
//! filters:
//!   - wasm:
//!       module: filters/tenant.wasm
//!       root_id: tenant                   # which root context of the module
//!       configuration: {header: x-tenant} # handed to the plugin (a map goes as JSON)
//!       on_error: deny                    # deny (500) | allow
//!       max_memory: 16m
//!       call_timeout: 10ms
//!       max_body: 1m                      # the most of a body held for the guest
//! ```
//!
//! The request phase runs `proxy_on_request_headers` (a local response ends the request there;
//! header edits reach the peer), the body phases `proxy_on_request_body` and
//! `proxy_on_response_body` (a guest may hold a body back to see more, and rewrite it), the
//! response phase `proxy_on_response_headers`, and the end of the request `proxy_on_log`,
//! `proxy_on_done` and `proxy_on_delete`. Routing and auth judged
//! the request before: a guest cannot change its path, host or framing.

mod host;
mod stream;
mod vm;

use super::{Answer, BodyCx, Build, Exchange, Filter, Flow, Phases, Request};
use crate::config::schema::{Duration as ConfigDuration, Size};
use crate::metrics::METRICS;
use async_trait::async_trait;
use bytes::Bytes;
use log::warn;
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;
use stream::{Body, Call, Edit, Props, Stream};
use vm::{Failure, Plugin};

const DEFAULT_MAX_MEMORY: u64 = 16 << 20;
/// The most body bytes held for a guest (`max_body`'s default), as Envoy's default buffer
/// limit.
const DEFAULT_MAX_BODY: u64 = 1 << 20;
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(10);
/// An HTTP call's timeout when the guest gives none, and the longest it may give.
const DEFAULT_CALL_TIMEOUT_HTTP: Duration = Duration::from_secs(5);
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer to an HTTP call handed to a guest.
const MAX_CALL_BODY: usize = 1 << 20;
/// Rounds of HTTP calls one request may make (a guest that calls again from each answer).
const MAX_CALL_ROUNDS: usize = 8;
/// Wasm's page is 64 KiB: a module cannot be given less than one.
const MIN_MEMORY: u64 = 64 << 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    module: String,
    #[serde(default)]
    root_id: String,
    /// The plugin's name in logs, metrics and `plugin_name`; default the root_id, else the
    /// module's file name.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    configuration: Option<serde_yaml::Value>,
    #[serde(default)]
    vm_configuration: Option<serde_yaml::Value>,
    #[serde(default)]
    on_error: OnError,
    #[serde(default)]
    max_memory: Option<Size>,
    #[serde(default)]
    call_timeout: Option<ConfigDuration>,
    /// The most of a body held for the guest (it returned Pause to see more), or that it may
    /// make a body grow to.
    #[serde(default)]
    max_body: Option<Size>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum OnError {
    /// The request gets 500 and never reaches a peer.
    #[default]
    Deny,
    /// The request goes on as if the filter were not there.
    Allow,
}

/// A string is handed over as it is; anything else as JSON text.
fn bytes_of(value: Option<serde_yaml::Value>) -> Result<Vec<u8>, String> {
    match value {
        None | Some(serde_yaml::Value::Null) => Ok(Vec::new()),
        Some(serde_yaml::Value::String(s)) => Ok(s.into_bytes()),
        Some(v) => serde_json::to_vec(&v).map_err(|e| format!("cannot be written as JSON: {e}")),
    }
}

pub fn factory(settings: &serde_yaml::Value, build: &mut Build<'_>) -> Option<Arc<dyn Filter>> {
    let s: Settings = build.settings(settings)?;
    let configuration =
        bytes_of(s.configuration).map_err(|e| build.error(Some("configuration"), e));
    let vm_configuration =
        bytes_of(s.vm_configuration).map_err(|e| build.error(Some("vm_configuration"), e));
    let max_memory = s.max_memory.map_or(DEFAULT_MAX_MEMORY, |m| m.0);
    if max_memory < MIN_MEMORY {
        build.error(Some("max_memory"), "at least 64k (one Wasm page)");
    }
    let call_timeout = s.call_timeout.map_or(DEFAULT_CALL_TIMEOUT, |d| d.0);
    if call_timeout < vm::TICK {
        build.error(Some("call_timeout"), "at least 1ms");
    }
    let bytes = std::fs::read(&s.module).map_err(|e| {
        build.error(
            Some("module"),
            format!(
                "cannot read {}: {}",
                s.module,
                crate::config::os_message(&e)
            ),
        )
    });
    let (Ok(configuration), Ok(vm_configuration), Ok(bytes)) =
        (configuration, vm_configuration, bytes)
    else {
        return None;
    };
    if max_memory < MIN_MEMORY || call_timeout < vm::TICK {
        return None;
    }
    let module = match vm::compile(&bytes) {
        Ok(m) => m,
        Err(e) => {
            build.error(Some("module"), format!("{}: {e}", s.module));
            return None;
        }
    };
    let stem = std::path::Path::new(&s.module)
        .file_stem()
        .map_or_else(|| s.module.clone(), |f| f.to_string_lossy().into_owned());
    let name = s.name.unwrap_or_else(|| {
        if s.root_id.is_empty() {
            stem
        } else {
            s.root_id.clone()
        }
    });
    let info = host::PluginInfo {
        name: name.clone(),
        root_id: s.root_id,
        configuration,
        vm_configuration,
        max_body: s.max_body.map_or(DEFAULT_MAX_BODY, |m| m.0) as usize,
    };
    let plugin = match Plugin::new(&module, info, max_memory as usize, call_timeout) {
        Ok(p) => p,
        Err(errors) => {
            for e in errors {
                build.error(Some("module"), format!("{}: {e}", s.module));
            }
            return None;
        }
    };
    Some(Arc::new(Wasm {
        plugin: Arc::new(plugin),
        on_error: s.on_error,
        label: format!("wasm:{name}"),
        connector: TransportConnector::new(None),
        last_logged: AtomicU64::new(0),
        suppressed: AtomicU64::new(0),
    }))
}

pub struct Wasm {
    plugin: Arc<Plugin>,
    on_error: OnError,
    /// `filter` in `portico_filter_errors_total`.
    label: String,
    /// Connections for the guest's HTTP calls.
    connector: TransportConnector,
    /// Failures are logged once per second at most, with the count of those not logged.
    last_logged: AtomicU64,
    suppressed: AtomicU64,
}

/// The plugin's state for one request, kept in the request's extensions; when the request
/// ends (its context dropped) the guest's stream context ends too.
struct Entry {
    plugin: Arc<Plugin>,
    ctx: i32,
    thread: ThreadId,
    request_edits: Vec<Edit>,
    /// The request's fields as the guest left them, for its later callbacks to read.
    request: Arc<stream::Fields>,
    props: Arc<Props>,
    /// The response's status once it came (0 before).
    response_code: AtomicU16,
    /// What the guest held back of each body so far.
    held: Mutex<Held>,
}

/// Per body (request, response): what the guest held back (it returned Pause to see more),
/// whether any of it came (a message without a body gets no body callback, as in Envoy), and
/// whether its length is fixed (its Content-Length stays: the guest did not remove it).
#[derive(Default)]
struct Held {
    data: [Vec<u8>; 2],
    seen: [bool; 2],
    fixed: [bool; 2],
}

impl Drop for Entry {
    fn drop(&mut self) {
        // A VM is its thread's: a context made elsewhere is not this thread's to end.
        if std::thread::current().id() != self.thread {
            return;
        }
        let stream = || Box::new(self.later());
        let ctx = self.ctx;
        if let Err(e) = self
            .plugin
            .with_existing_vm(None, |vm, d| vm.finish(d, ctx, stream))
        {
            warn!(
                "wasm {}: at the end of a request: {e}",
                self.plugin.info.name
            );
        }
    }
}

impl Entry {
    /// The stream a callback after the request phase sees: the request's fields as the guest
    /// left them (read only), its properties and the response's status if it came.
    fn later(&self) -> Stream {
        let code = self.response_code.load(Ordering::Relaxed);
        Stream {
            request: Arc::clone(&self.request),
            response_code: (code != 0).then_some(code),
            ..Stream::bare(Arc::clone(&self.props))
        }
    }
}

/// Every Wasm filter's entries of one request.
#[derive(Clone, Default)]
struct Entries(Vec<Arc<Entry>>);

impl Entries {
    fn of<'a>(ext: &'a http::Extensions, plugin: &Plugin) -> Option<&'a Arc<Entry>> {
        ext.get::<Entries>()?
            .0
            .iter()
            .find(|e| e.plugin.id == plugin.id)
    }
}

impl Wasm {
    /// Counts and logs (once a second at most) a failure; the answer `on_error` gives.
    fn failed(&self, route: &str, phase: &str, e: &Failure) -> Flow {
        METRICS
            .filter_errors
            .with_label_values(&[route, self.label.as_str()])
            .inc();
        let now = vm::now_ms();
        let last = self.last_logged.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let more = self.suppressed.swap(0, Ordering::Relaxed);
            let more = match more {
                0 => String::new(),
                n => format!(" ({n} more failures not logged in the last second)"),
            };
            warn!(
                "wasm {} on route {route}: {phase} {e} ({}); on_error: {:?}{more}",
                self.plugin.info.name,
                e.kind(),
                self.on_error
            );
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        match self.on_error {
            OnError::Deny => Flow::Respond(Answer::new("filter_error", 500, "filter failed\n")),
            OnError::Allow => Flow::Continue,
        }
    }
}

fn props(req: &Request<'_>) -> Props {
    let mut path = req.view.path.clone();
    if let Some(q) = &req.view.query {
        path.push('?');
        path.push_str(q);
    }
    Props {
        path,
        method: req.head.method.as_str().to_owned(),
        host: req.view.host.clone().unwrap_or_default(),
        scheme: if req.client.tls { "https" } else { "http" },
        protocol: match req.head.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        id: req.vars.get("request_id").map(str::to_owned),
        source: Some(req.client.ip),
        route: req.route.to_owned(),
        upstream: req.upstream().unwrap_or_default().to_owned(),
    }
}

/// The guest's local response as portico's answer; a bad return when its status is not one.
fn answer((status, headers, body): stream::Local) -> Result<Answer, Failure> {
    let Some(status) = u16::try_from(status)
        .ok()
        .filter(|s| (200..=599).contains(s))
    else {
        return Err(Failure::BadReturn(format!(
            "a local response with status {status}"
        )));
    };
    let headers = headers
        .into_iter()
        .filter(|(k, _)| !k.starts_with(':'))
        .filter_map(|(k, v)| stream::field(k.as_bytes(), &v))
        .filter(|(k, _)| {
            *k != http::header::CONTENT_LENGTH && *k != http::header::TRANSFER_ENCODING
        })
        .collect();
    Ok(Answer {
        reason: "wasm",
        status,
        headers,
        body: Bytes::from(body),
        close: false,
    })
}

impl Wasm {
    /// `proxy_on_request_headers` in a new stream context: the context and the stream as the
    /// guest left it, or the flow `on_error` gives.
    fn start(&self, req: &Request<'_>) -> Result<(i32, Box<Stream>), Flow> {
        let stream = Box::new(Stream::new(req.head, Arc::new(props(req))));
        // No body follows the head (one pass over the few fields: cheaper than two lookups).
        let end = !req
            .head
            .headers
            .keys()
            .any(|k| k == http::header::CONTENT_LENGTH || k == http::header::TRANSFER_ENCODING);
        match self.plugin.with_vm(|vm, d| vm.request(d, stream, end)) {
            Ok(Some(started)) => Ok(started),
            Ok(None) => Err(Flow::Continue),
            Err(e) => Err(self.failed(req.route, "on request headers", &e)),
        }
    }

    /// Keeps the stream's context for the later phases, and answers with the guest's local
    /// response if it gave one.
    fn settle(&self, req: &mut Request<'_>, ctx: i32, stream: Box<Stream>) -> Flow {
        let fixed = stream
            .request
            .iter()
            .any(|(k, _)| k == http::header::CONTENT_LENGTH);
        let entry = Arc::new(Entry {
            plugin: Arc::clone(&self.plugin),
            ctx,
            thread: std::thread::current().id(),
            request_edits: stream.request_edits,
            request: stream.request,
            props: stream.props,
            response_code: AtomicU16::new(0),
            held: Mutex::new(Held {
                fixed: [fixed, false],
                ..Held::default()
            }),
        });
        match req.ext.get_mut::<Entries>() {
            Some(entries) => entries.0.push(entry),
            None => {
                req.ext.insert(Entries(vec![entry]));
            }
        }
        match stream.local.map(answer) {
            None => Flow::Continue,
            Some(Ok(a)) => Flow::Respond(a),
            Some(Err(e)) => self.failed(req.route, "on request headers", &e),
        }
    }

    /// Sends the HTTP calls the guest made and hands it each answer, until it makes no more
    /// (at most [`MAX_CALL_ROUNDS`] rounds) or answers the request itself.
    async fn calls(
        &self,
        req: &Request<'_>,
        ctx: i32,
        mut stream: Box<Stream>,
    ) -> Result<Box<Stream>, Flow> {
        let mut rounds = 0;
        while !stream.calls.is_empty() && stream.local.is_none() {
            rounds += 1;
            if rounds > MAX_CALL_ROUNDS {
                let e =
                    Failure::BadReturn(format!("more than {MAX_CALL_ROUNDS} rounds of HTTP calls"));
                return Err(self.failed(req.route, "on http call response", &e));
            }
            for call in std::mem::take(&mut stream.calls) {
                stream.call_response = self.send(&call, req).await;
                let token = call.token;
                let answered = self
                    .plugin
                    .with_vm(|vm, d| vm.http_call_response(d, ctx, token, stream));
                stream = match answered {
                    Ok(Some(Some(s))) => s,
                    // The guest has no handler, or its VM is gone: nothing more to wait for.
                    Ok(_) => return Err(Flow::Continue),
                    Err(e) => return Err(self.failed(req.route, "on http call response", &e)),
                };
                stream.call_response = None;
                if stream.local.is_some() {
                    break;
                }
            }
        }
        Ok(stream)
    }

    /// One HTTP call, to a peer of the upstream group it names; `None` (the guest sees no
    /// headers) when there is no such group, no peer, or no answer in time.
    async fn send(&self, call: &Call, req: &Request<'_>) -> Option<(stream::Headers, Vec<u8>)> {
        let group = req.groups.get(&call.upstream)?;
        let peer = group.select(&[], &[])?;
        let timeout = match call.timeout {
            t if t.is_zero() => DEFAULT_CALL_TIMEOUT_HTTP,
            t => t.min(MAX_CALL_TIMEOUT),
        };
        let mut target = peer.template.clone();
        target.options.connection_timeout = Some(timeout);
        target.options.read_timeout = Some(timeout);
        target.options.write_timeout = Some(timeout);
        let field = |name: &str| {
            call.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_slice())
        };
        let mut head = RequestHeader::build(field(":method")?, field(":path")?, None).ok()?;
        head.insert_header(http::header::HOST, field(":authority")?)
            .ok()?;
        for (k, v) in call.headers.iter().filter(|(k, _)| !k.starts_with(':')) {
            if !matches!(
                k.as_str(),
                "host" | "content-length" | "transfer-encoding" | "connection"
            ) {
                head.append_header(k.clone(), v.as_slice()).ok()?;
            }
        }
        if !call.body.is_empty() {
            head.insert_header(http::header::CONTENT_LENGTH, call.body.len())
                .ok()?;
        }
        let sent = super::subrequest::exchange(
            &self.connector,
            &target,
            head,
            Some(&call.body),
            MAX_CALL_BODY,
        );
        let reply = match tokio::time::timeout(timeout, sent).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                log::info!(
                    "wasm {}: http call to {}: {e}",
                    self.plugin.info.name,
                    call.upstream
                );
                return None;
            }
            Err(_) => {
                log::info!(
                    "wasm {}: http call to {} timed out",
                    self.plugin.info.name,
                    call.upstream
                );
                return None;
            }
        };
        let mut headers = vec![(
            ":status".to_owned(),
            reply.head.status.as_u16().to_string().into_bytes(),
        )];
        headers.extend(
            reply
                .head
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec())),
        );
        Some((headers, reply.body.to_vec()))
    }
}

#[async_trait]
impl Filter for Wasm {
    fn phases(&self) -> Phases {
        let request = match self.plugin.calls {
            true => Phases::REQUEST_ASYNC,
            false => Phases::REQUEST,
        };
        let p = &self.plugin;
        let mut phases = request | Phases::UPSTREAM_REQUEST;
        if p.response_headers || p.response_body {
            phases = phases | Phases::RESPONSE;
        }
        if p.request_body {
            phases = phases | Phases::REQUEST_BODY;
        }
        if p.response_body {
            phases = phases | Phases::RESPONSE_BODY;
        }
        phases
    }

    fn request(&self, req: &mut Request<'_>) -> Flow {
        match self.start(req) {
            Ok((ctx, stream)) => self.settle(req, ctx, stream),
            Err(flow) => flow,
        }
    }

    async fn request_async(&self, req: &mut Request<'_>) -> Flow {
        let (ctx, stream) = match self.start(req) {
            Ok(started) => started,
            Err(flow) => return flow,
        };
        match self.calls(req, ctx, stream).await {
            Ok(stream) => self.settle(req, ctx, stream),
            Err(flow) => flow,
        }
    }

    fn upstream_request(&self, req: &mut RequestHeader, cx: &Exchange<'_>) {
        if let Some(entry) = Entries::of(cx.ext, &self.plugin) {
            // A Content-Length the guest removed: Pingora frames the body chunked.
            stream::replay(&entry.request_edits, req);
        }
    }

    fn response(&self, resp: &mut ResponseHeader, cx: &Exchange<'_>) {
        let Some(entry) = Entries::of(cx.ext, &self.plugin) else {
            return;
        };
        if self.plugin.response_headers {
            self.response_headers(entry, resp, cx);
        }
        if self.plugin.response_body {
            // What the guest left of the length, for its body callbacks.
            let fixed = resp.headers.contains_key(http::header::CONTENT_LENGTH);
            entry.held.lock().unwrap_or_else(|p| p.into_inner()).fixed[1] = fixed;
        }
    }

    fn request_body(
        &self,
        chunk: &mut Bytes,
        end: bool,
        cx: &mut BodyCx<'_>,
    ) -> Result<(), Answer> {
        match self.body(Body::Request, chunk, end, cx) {
            Ok(()) => Ok(()),
            Err(Stop::Answer(a)) => Err(a),
            Err(Stop::TooLarge) => {
                Err(Answer::new("body_too_large", 413, "request body too large\n").closing())
            }
            Err(Stop::Failed(e)) => match self.failed(cx.route, "on request body", &e) {
                Flow::Respond(a) => Err(a),
                Flow::Continue => Ok(()),
            },
        }
    }

    fn response_body(
        &self,
        chunk: &mut Bytes,
        end: bool,
        cx: &mut BodyCx<'_>,
    ) -> Result<(), String> {
        match self.body(Body::Response, chunk, end, cx) {
            Ok(()) => Ok(()),
            Err(Stop::TooLarge) => Err(format!(
                "wasm {}: more than max_body held",
                self.plugin.info.name
            )),
            Err(Stop::Answer(_)) => {
                let e = Failure::BadReturn("a local response after the response began".into());
                self.body_failed(cx.route, &e)
            }
            Err(Stop::Failed(e)) => self.body_failed(cx.route, &e),
        }
    }
}

/// Why a body callback stopped the body.
enum Stop {
    /// The guest answered the request itself.
    Answer(Answer),
    /// It held back more than `max_body`.
    TooLarge,
    Failed(Failure),
}

impl Wasm {
    /// A body callback over what the guest held back and `chunk`: `chunk` becomes what goes
    /// on (empty while the guest holds it back).
    fn body(
        &self,
        which: Body,
        chunk: &mut Bytes,
        end: bool,
        cx: &mut BodyCx<'_>,
    ) -> Result<(), Stop> {
        let Some(entry) = Entries::of(cx.ext, &self.plugin) else {
            return Ok(());
        };
        if chunk.is_empty() && !end {
            return Ok(());
        }
        let mut state = entry.held.lock().unwrap_or_else(|p| p.into_inner());
        let i = which as usize;
        let first = !std::mem::replace(&mut state.seen[i], true);
        if chunk.is_empty() && first {
            return Ok(());
        }
        let fixed = state.fixed[i];
        let held = &mut state.data[i];
        let mut data = std::mem::take(held);
        data.extend_from_slice(chunk);
        // `on_error: allow` passes on what the guest was given, so keep it until it returns.
        let given = (self.on_error == OnError::Allow).then(|| data.clone());
        let mut slot = Some(Box::new(Stream {
            body: Some((which, data)),
            body_fixed: fixed,
            ..entry.later()
        }));
        let ran = self
            .plugin
            .with_vm(|vm, d| vm.body(d, entry.ctx, slot.take().expect("once"), end));
        let (stream, more) = match ran {
            Ok(Some(done)) => done,
            Ok(None) => (slot.take().expect("not taken"), false),
            Err(e) => {
                if let Some(given) = given {
                    *chunk = Bytes::from(given);
                }
                return Err(Stop::Failed(e));
            }
        };
        if !stream.calls.is_empty() {
            if let Some(given) = given {
                *chunk = Bytes::from(given);
            }
            let e = Failure::BadReturn("proxy_http_call from a body callback".into());
            return Err(Stop::Failed(e));
        }
        if let Some(local) = stream.local {
            return Err(answer(local).map_or_else(Stop::Failed, Stop::Answer));
        }
        let data = stream.body.map(|(_, d)| d).unwrap_or_default();
        if more && !end {
            // max_body bounds what is held, not a piece passing through.
            if data.len() > self.plugin.info.max_body {
                return Err(Stop::TooLarge);
            }
            *held = data;
            *chunk = Bytes::new();
        } else {
            *chunk = Bytes::from(data);
        }
        Ok(())
    }

    /// A response body's failure: counted and logged; `deny` cuts the response.
    fn body_failed(&self, route: &str, e: &Failure) -> Result<(), String> {
        match self.failed(route, "on response body", e) {
            Flow::Continue => Ok(()),
            Flow::Respond(_) => Err(format!("wasm {}: {e}", self.plugin.info.name)),
        }
    }
}

impl Wasm {
    /// `proxy_on_response_headers`, its edits replayed on `resp`.
    fn response_headers(&self, entry: &Entry, resp: &mut ResponseHeader, cx: &Exchange<'_>) {
        entry
            .response_code
            .store(resp.status.as_u16(), Ordering::Relaxed);
        let stream = Box::new(Stream {
            response: Some(Stream::response_from(resp)),
            ..entry.later()
        });
        match self
            .plugin
            .with_vm(|vm, d| vm.response(d, entry.ctx, stream))
        {
            Ok(Some(Some(stream))) => {
                let had_length = resp.headers.contains_key(http::header::CONTENT_LENGTH);
                stream::replay(&stream.response_edits, resp);
                // The guest removed the length to resize the body: portico frames it.
                if had_length && !resp.headers.contains_key(http::header::CONTENT_LENGTH) {
                    super::unframe(resp, cx.request);
                }
            }
            Ok(_) => {}
            // The response is on its way: a failure here leaves it as it is.
            Err(e) => {
                self.failed(cx.route, "on response headers", &e);
            }
        }
    }
}
