//! One request as a Wasm filter sees it: its headers (a copy the guest reads and edits), the
//! edits to replay on the real heads, its properties, a local response the guest asked for.
//!
//! The guest cannot change what routing and auth judged, nor frame a body itself: edits to
//! pseudo-headers (`:path`, `:authority`, ...), `host`, `content-length` and
//! `transfer-encoding` are refused (`BadArgument`), except removing `content-length`, which
//! a guest does (as in Envoy) before it changes a body's size: portico then frames that body
//! itself (chunked).

use pingora::http::{RequestHeader, ResponseHeader};

pub type Headers = Vec<(String, Vec<u8>)>;

#[derive(Debug, Clone)]
pub enum Edit {
    Add(String, Vec<u8>),
    Replace(String, Vec<u8>),
    Remove(String),
    SetAll(Headers),
}

/// A request's facts, for `proxy_get_property`.
#[derive(Debug, Clone, Default)]
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
    pub response_code: Option<u16>,
}

pub struct Stream {
    pub request: Headers,
    /// Set while the response callback runs.
    pub response: Option<Headers>,
    pub request_edits: Vec<Edit>,
    pub response_edits: Vec<Edit>,
    pub props: Props,
    /// `proxy_send_local_response`: status, headers, body.
    pub local: Option<(u32, Headers, Vec<u8>)>,
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

fn protected(name: &str) -> bool {
    name.starts_with(':')
        || matches!(name, "host" | "content-length" | "transfer-encoding")
        || http::HeaderName::from_bytes(name.as_bytes()).is_err()
}

fn valid_value(v: &[u8]) -> bool {
    http::HeaderValue::from_bytes(v).is_ok()
}

/// Applies `e` to a copy of a head's fields; false (and nothing changes) when it is refused.
fn apply(headers: &mut Headers, e: &Edit) -> bool {
    match e {
        Edit::Add(k, v) | Edit::Replace(k, v) if protected(k) || !valid_value(v) => false,
        Edit::Remove(k) if protected(k) && k != "content-length" => false,
        Edit::SetAll(pairs)
            if pairs
                .iter()
                .any(|(k, v)| (protected(k) && !k.starts_with(':')) || !valid_value(v)) =>
        {
            false
        }
        Edit::Add(k, v) => {
            headers.push((k.clone(), v.clone()));
            true
        }
        Edit::Replace(k, v) => {
            headers.retain(|(n, _)| n != k);
            headers.push((k.clone(), v.clone()));
            true
        }
        Edit::Remove(k) => {
            headers.retain(|(n, _)| n != k);
            true
        }
        Edit::SetAll(pairs) => {
            // Pseudo-headers and the framing fields stay as they are; the rest is replaced.
            headers.retain(|(n, _)| protected(n));
            headers.extend(pairs.iter().filter(|(k, _)| !protected(k)).cloned());
            true
        }
    }
}

impl Stream {
    /// A stream with no headers (the end of a request).
    pub fn bare(props: Props) -> Stream {
        Stream {
            request: Vec::new(),
            response: None,
            request_edits: Vec::new(),
            response_edits: Vec::new(),
            props,
            local: None,
            calls: Vec::new(),
            call_response: None,
            body: None,
            body_fixed: false,
        }
    }

    pub fn new(head: &RequestHeader, props: Props) -> Stream {
        let mut request: Headers = vec![
            (":method".into(), props.method.clone().into_bytes()),
            (":path".into(), props.path.clone().into_bytes()),
            (":authority".into(), props.host.clone().into_bytes()),
            (":scheme".into(), props.scheme.as_bytes().to_vec()),
        ];
        request.extend(
            head.headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec())),
        );
        Stream {
            request,
            ..Stream::bare(props)
        }
    }

    /// The response's fields for its callback (`:status` first).
    pub fn response_from(resp: &ResponseHeader) -> Headers {
        let mut headers: Headers = vec![(
            ":status".into(),
            resp.status.as_u16().to_string().into_bytes(),
        )];
        headers.extend(
            resp.headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec())),
        );
        headers
    }

    pub fn edit_request(&mut self, e: Edit) -> bool {
        let ok = apply(&mut self.request, &e);
        if ok {
            self.request_edits.push(e);
        }
        ok
    }

    pub fn edit_response(&mut self, e: Edit) -> bool {
        let ok = self.response.as_mut().is_some_and(|h| apply(h, &e));
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
            [b"request", b"headers"] => Some(super::host::encode_pairs(&self.request)),
            [b"source", b"address"] => p.source.map(|ip| ip.to_string().into_bytes()),
            [b"route_name"] => text(&p.route),
            [b"cluster_name"] => text(&p.upstream),
            [b"response", b"code"] => p.response_code.map(|c| i64::from(c).to_le_bytes().to_vec()),
            _ => None,
        }
    }
}

/// A head edits are replayed on: the request the peer gets, or the response the client gets.
pub trait Head {
    fn append(&mut self, name: String, value: &[u8]);
    fn insert(&mut self, name: String, value: &[u8]);
    fn remove(&mut self, name: &str);
    fn names(&self) -> Vec<String>;
}

macro_rules! head {
    ($t:ty) => {
        impl Head for $t {
            fn append(&mut self, name: String, value: &[u8]) {
                let _ = self.append_header(name, value);
            }
            fn insert(&mut self, name: String, value: &[u8]) {
                let _ = self.insert_header(name, value);
            }
            fn remove(&mut self, name: &str) {
                let _ = self.remove_header(name);
            }
            fn names(&self) -> Vec<String> {
                self.headers.keys().map(|k| k.as_str().to_owned()).collect()
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
            Edit::Add(k, v) => head.append(k.clone(), v),
            Edit::Replace(k, v) => head.insert(k.clone(), v),
            Edit::Remove(k) => head.remove(k),
            Edit::SetAll(pairs) => {
                for n in head.names().into_iter().filter(|n| !protected(n)) {
                    head.remove(&n);
                }
                for (k, v) in pairs.iter().filter(|(k, _)| !protected(k)) {
                    head.append(k.clone(), v);
                }
            }
        }
    }
}
