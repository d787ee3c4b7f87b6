//! One request as a Wasm filter sees it: its headers (a copy the guest reads and edits), the
//! edits to replay on the real heads, its properties, a local response the guest asked for.
//!
//! The guest cannot change what routing and auth judged, nor frame a body itself: edits to
//! pseudo-headers (`:path`, `:authority`, ...), `host`, `content-length` and
//! `transfer-encoding` are refused (`BadArgument`), except removing `content-length`, which
//! a guest does (as in Envoy) before it changes a body's size: portico then frames that body
//! itself (chunked).

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

/// Header pairs as the guest gives them (a local response's, an HTTP call's).
pub type Headers = Vec<(String, Vec<u8>)>;

/// A local response the guest asked for: status, headers, body.
pub type Local = (u32, Headers, Vec<u8>);

/// A head's fields as the guest sees and edits them: copied from the head by reference
/// counts, not bytes (the pseudo-headers come from the request's properties and `status`).
pub type Fields = Vec<(HeaderName, HeaderValue)>;

/// A field the guest gives (the name in any case), as http types; `None` when not valid.
pub fn field(k: &[u8], v: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_bytes(k).ok()?,
        HeaderValue::from_bytes(v).ok()?,
    ))
}

/// A head's fields, by reference counts.
fn fields_of(map: &http::HeaderMap) -> Fields {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Fields as the guest reads them.
fn fields(f: &[(HeaderName, HeaderValue)]) -> impl Iterator<Item = (&str, &[u8])> {
    f.iter().map(|(k, v)| (k.as_str(), v.as_bytes()))
}

/// A header map of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Map {
    Request,
    Response,
    CallResponse,
}

#[derive(Debug, Clone)]
pub enum Edit {
    Add(HeaderName, HeaderValue),
    Replace(HeaderName, HeaderValue),
    Remove(HeaderName),
    /// Every field replaced by these (pseudo-headers and the framing fields kept).
    SetAll(Fields),
}

/// A request's facts, for `proxy_get_property`: made once, shared by its callbacks.
#[derive(Debug, Default)]
pub struct Props {
    pub path: String,
    pub method: String,
    pub host: String,
    pub scheme: &'static str,
    pub protocol: &'static str,
    pub id: Option<String>,
    pub source: Option<std::net::IpAddr>,
    pub route: String,
    pub upstream: String,
}

pub struct Stream {
    /// The request's fields (after the guest's edits), shared with the later callbacks.
    pub request: Arc<Fields>,
    /// The request's head is still to be sent: its fields may change.
    pub request_open: bool,
    /// Set while the response callback runs: its status and fields.
    pub response: Option<(http::StatusCode, Fields)>,
    pub request_edits: Vec<Edit>,
    pub response_edits: Vec<Edit>,
    pub props: Arc<Props>,
    /// The response's status, once it came.
    pub response_code: Option<u16>,
    /// `proxy_send_local_response`: status, headers, body.
    pub local: Option<Local>,
    /// `proxy_http_call`s made in the last callback, to be sent.
    pub calls: Vec<Call>,
    /// The answer to the call whose `proxy_on_http_call_response` runs now: its headers
    /// (`:status` first; none when the call failed) and body.
    pub call_response: Option<(Headers, Vec<u8>)>,
    /// The body the running body callback sees (what it held back before, then this piece),
    /// which it may change (`proxy_set_buffer_bytes`).
    pub body: Option<(Body, Vec<u8>)>,
    /// That body's length is fixed (its `Content-Length` stays): the guest may rewrite it
    /// but not resize it.
    pub body_fixed: bool,
}

/// Which body a body callback sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Request,
    Response,
}

/// An HTTP call a guest asked for: to an upstream group of the file, by name.
#[derive(Debug, Clone)]
pub struct Call {
    pub token: u32,
    pub upstream: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub timeout: std::time::Duration,
}

/// Fields a guest may not set or remove: what routing judged (`host`) and the framing.
fn protected(name: &HeaderName) -> bool {
    use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
    name == HOST || name == CONTENT_LENGTH || name == TRANSFER_ENCODING
}

/// Applies `e` to a copy of a head's fields; false (and nothing changes) when it is refused.
/// Removing `content-length` is allowed: the body is then framed by portico.
fn apply(fields: &mut Fields, e: &Edit) -> bool {
    match e {
        Edit::Add(k, _) | Edit::Replace(k, _) if protected(k) => false,
        Edit::Remove(k) if protected(k) && k != http::header::CONTENT_LENGTH => false,
        Edit::Add(k, v) => {
            fields.push((k.clone(), v.clone()));
            true
        }
        Edit::Replace(k, v) => {
            fields.retain(|(n, _)| n != k);
            fields.push((k.clone(), v.clone()));
            true
        }
        Edit::Remove(k) => {
            fields.retain(|(n, _)| n != k);
            true
        }
        Edit::SetAll(pairs) => {
            // `host` and the framing fields stay as they are, whatever the pairs say of them.
            fields.retain(|(n, _)| protected(n));
            fields.extend(pairs.iter().filter(|(k, _)| !protected(k)).cloned());
            true
        }
    }
}

impl Stream {
    /// A stream with no headers (the end of a request).
    pub fn bare(props: Arc<Props>) -> Stream {
        Stream {
            request: Arc::default(),
            request_open: false,
            response: None,
            request_edits: Vec::new(),
            response_edits: Vec::new(),
            props,
            response_code: None,
            local: None,
            calls: Vec::new(),
            call_response: None,
            body: None,
            body_fixed: false,
        }
    }

    /// The request phase's stream: the head's fields, open to edits.
    pub fn new(head: &RequestHeader, props: Arc<Props>) -> Stream {
        Stream {
            request: Arc::new(fields_of(&head.headers)),
            request_open: true,
            ..Stream::bare(props)
        }
    }

    /// The response's status and fields, for its callback.
    pub fn response_from(resp: &ResponseHeader) -> (http::StatusCode, Fields) {
        (resp.status, fields_of(&resp.headers))
    }

    /// The pairs of `map` as the guest reads them, pseudo-headers first; `None` when the
    /// running callback has no such map.
    pub fn pairs(&self, map: Map) -> Option<Vec<(&str, &[u8])>> {
        match map {
            Map::Request => {
                let p = &self.props;
                let mut pairs = Vec::with_capacity(4 + self.request.len());
                pairs.extend([
                    (":method", p.method.as_bytes()),
                    (":path", p.path.as_bytes()),
                    (":authority", p.host.as_bytes()),
                    (":scheme", p.scheme.as_bytes()),
                ]);
                pairs.extend(fields(&self.request));
                Some(pairs)
            }
            Map::Response => {
                let (status, f) = self.response.as_ref()?;
                let mut pairs = Vec::with_capacity(1 + f.len());
                pairs.push((":status", status.as_str().as_bytes()));
                pairs.extend(fields(f));
                Some(pairs)
            }
            Map::CallResponse => {
                let (h, _) = self.call_response.as_ref()?;
                Some(h.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect())
            }
        }
    }

    pub fn edit_request(&mut self, e: Edit) -> bool {
        let ok = self.request_open && apply(Arc::make_mut(&mut self.request), &e);
        if ok {
            self.request_edits.push(e);
        }
        ok
    }

    pub fn edit_response(&mut self, e: Edit) -> bool {
        let ok = self.response.as_mut().is_some_and(|(_, f)| apply(f, &e));
        if ok {
            self.response_edits.push(e);
        }
        ok
    }

    pub fn property(&self, path: &[&[u8]]) -> Option<Vec<u8>> {
        let p = &self.props;
        let text = |s: &str| Some(s.as_bytes().to_vec());
        match path {
            [b"request", b"path"] => text(&p.path),
            [b"request", b"url_path"] => text(p.path.split('?').next().unwrap_or_default()),
            [b"request", b"query"] => text(p.path.split_once('?').map_or("", |(_, q)| q)),
            [b"request", b"method"] => text(&p.method),
            [b"request", b"host"] => text(&p.host),
            [b"request", b"scheme"] => text(p.scheme),
            [b"request", b"protocol"] => text(p.protocol),
            [b"request", b"id"] => p.id.as_deref().and_then(text),
            [b"request", b"headers"] => Some(super::host::encode_pairs(&self.pairs(Map::Request)?)),
            [b"source", b"address"] => p.source.map(|ip| ip.to_string().into_bytes()),
            [b"route_name"] => text(&p.route),
            [b"cluster_name"] => text(&p.upstream),
            [b"response", b"code"] => self
                .response_code
                .map(|c| i64::from(c).to_le_bytes().to_vec()),
            _ => None,
        }
    }
}

/// A head edits are replayed on: the request the peer gets, or the response the client gets.
pub trait Head {
    fn append(&mut self, name: &HeaderName, value: &HeaderValue);
    fn insert(&mut self, name: &HeaderName, value: &HeaderValue);
    fn remove(&mut self, name: &HeaderName);
    fn names(&self) -> Vec<HeaderName>;
}

macro_rules! head {
    ($t:ty) => {
        impl Head for $t {
            fn append(&mut self, name: &HeaderName, value: &HeaderValue) {
                let _ = self.append_header(name.clone(), value.clone());
            }
            fn insert(&mut self, name: &HeaderName, value: &HeaderValue) {
                let _ = self.insert_header(name.clone(), value.clone());
            }
            fn remove(&mut self, name: &HeaderName) {
                let _ = self.remove_header(name);
            }
            fn names(&self) -> Vec<HeaderName> {
                self.headers.keys().cloned().collect()
            }
        }
    };
}
head!(RequestHeader);
head!(ResponseHeader);

/// Replays the edits a callback made on the real head.
pub fn replay(edits: &[Edit], head: &mut impl Head) {
    for e in edits {
        match e {
            Edit::Add(k, v) => head.append(k, v),
            Edit::Replace(k, v) => head.insert(k, v),
            Edit::Remove(k) => head.remove(k),
            Edit::SetAll(pairs) => {
                for n in head.names().iter().filter(|n| !protected(n)) {
                    head.remove(n);
                }
                for (k, v) in pairs.iter().filter(|(k, _)| !protected(k)) {
                    head.append(k, v);
                }
            }
        }
    }
}
