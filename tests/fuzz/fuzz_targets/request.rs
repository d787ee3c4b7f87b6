//! Any bytes as a request head, through what portico does with one before a peer sees it:
//! hostile-framing checks, the WebSocket upgrade check, routing by host and path, the client
//! IP through trusted proxies, X-Forwarded-*, the route's header rules, strip_prefix, and the
//! upgrade request written for a peer. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pingora::http::RequestHeader;
use portico::config::{self, Loaded};
use portico::headers::{apply_forwarded, Forwarded};
use portico::snapshot::Snapshot;
use portico::{checks, routing, websocket};
use std::net::IpAddr;
use std::sync::LazyLock;

const CONFIG: &str = r#"
listeners: [{address: 127.0.0.1:8080}]
trusted_proxies: [127.0.0.0/8, "::1"]
upstreams:
  app: {peers: [127.0.0.1:3000]}
routes:
  - {host: api.example.com, path_prefix: /v1/, upstream: app, strip_prefix: true,
     request_headers: {set: {X-Api: "1"}, add: {Via: portico}, remove: [Cookie]}}
  - {host: "*.example.com", path_prefix: /ws/, upstream: app}
  - {path_prefix: /, upstream: app, request_headers: {remove: [X-Debug]}}
"#;

static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(|| {
    let loaded = Loaded {
        config: config::parse(CONFIG).expect("the fuzz config parses"),
        sha256: String::new(),
    };
    Snapshot::build(&loaded, None).expect("the fuzz config builds")
});

fuzz_target!(|input: (u8, &[u8])| {
    let (peer_byte, data) = input;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(data) else {
        return;
    };
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return;
    };
    let Ok(mut req) = RequestHeader::build(method, path.as_bytes(), None) else {
        return;
    };
    for h in parsed.headers.iter() {
        if req.append_header(h.name.to_owned(), h.value).is_err() {
            return;
        }
    }
    if checks::check(&req).is_err() {
        return;
    }
    let upgrade = websocket::check(&req);
    let snapshot = &*SNAPSHOT;
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(routing::host_without_port);
    let path = req.uri.path().to_owned();
    let Some(i) = snapshot.router.find(host, &path) else {
        return;
    };
    let route = &snapshot.routes[i];
    let peer = IpAddr::from([127, 0, 0, peer_byte]);
    let peer = if peer_byte % 2 == 0 {
        peer
    } else {
        IpAddr::from([203, 0, 113, peer_byte])
    };
    let client = snapshot.trusted.client_ip(peer, &req.headers);
    let host_value = req.headers.get(http::header::HOST).cloned();
    let forwarded = Forwarded {
        peer,
        peer_trusted: snapshot.trusted.contains(peer),
        client,
        tls: peer_byte & 4 != 0,
        host: host_value.as_ref(),
    };
    let original = req.clone();
    apply_forwarded(&mut req, &forwarded);
    route.request_headers.apply(&mut req);
    if route.strip_prefix {
        let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let _ = routing::strip_prefix(pq, &route.path_prefix);
    }
    if matches!(upgrade, websocket::Upgrade::WebSocket) {
        let strip = route.strip_prefix.then_some(route.path_prefix.as_str());
        let _ = websocket::upstream_request(&original, &forwarded, &route.request_headers, strip);
    }
});
