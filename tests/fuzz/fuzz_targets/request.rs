//! Any bytes as a request head, through what portico does with one before a peer sees it:
//! the client IP through trusted proxies, admission (hostile-framing checks, the canonical view
//! and routing on it, the request phase of the route's filters, the WebSocket upgrade check:
//! `request::admit`, as the proxy calls it), then the one rewrite for the peer
//! (`request::rewrite`: X-Forwarded-*, the canonical target, the upstream_request phase:
//! strip_prefix, header rules, request IDs), the upgrade request written for a peer, and the
//! response phase (CORS, request IDs) on a response head. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "head.rs"]
mod head;
use pingora::http::RequestHeader;
use portico::config::{self, Loaded};
use portico::headers::Forwarded;
use portico::snapshot::Snapshot;
use pingora::http::ResponseHeader;
use portico::request::admit::{admit, Client};
use portico::request;
use portico::websocket;
use std::net::IpAddr;
use std::sync::LazyLock;

const CONFIG: &str = r#"
listeners: [{address: 127.0.0.1:8080}]
trusted_proxies: [127.0.0.0/8, "::1"]
upstreams:
  app: {peers: [127.0.0.1:3000]}
  v2: {peers: [127.0.0.1:3001]}
routes:
  - {host: api.example.com, path_prefix: /v1/, upstream: app, strip_prefix: true,
     request_headers: {set: {X-Api: "1"}, add: {Via: portico}, remove: [Cookie]},
     filters: [{request_id: {}}, {cors: {allow_origins: [https://app.example.com], allow_credentials: true, max_age: 10m}}]}
  - {host: "*.example.com", path_prefix: /ws/, upstream: app,
     filters: [{ip_access: {allow: [127.0.0.0/8, 203.0.113.0/24], deny: [203.0.113.7]}}, {canary: {upstream: v2, weight: 50, cookie: canary, header: X-Canary}}]}
  - {path_prefix: /, upstream: app, request_headers: {remove: [X-Debug]}, filters: [{cors: {allow_origins: ["*"]}}]}
"#;

static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(|| {
    let loaded = Loaded::from_config(config::parse(CONFIG).expect("the fuzz config parses"));
    Snapshot::build(&loaded, None).expect("the fuzz config builds")
});

fuzz_target!(|input: (u8, &[u8])| {
    let (peer_byte, data) = input;
    let Some(req) = head::request_head(data) else {
        return;
    };
    let snapshot = &*SNAPSHOT;
    let peer = IpAddr::from([127, 0, 0, peer_byte]);
    let peer = if peer_byte % 2 == 0 {
        peer
    } else {
        IpAddr::from([203, 0, 113, peer_byte])
    };
    let client = Client {
        ip: snapshot.trusted.client_ip(peer, &req.headers),
        tls: peer_byte & 4 != 0,
    };
    // What the proxy decides before any peer (proxy::request_filter calls the same).
    let admission = admit(&req, snapshot, client);
    assert!(!admission.deferred, "no filter of this config waits");
    if admission.answer.is_some() {
        return;
    }
    let (view, upgrade, vars) = (&admission.view, admission.upgrade, &admission.vars);
    let route = &snapshot.routes[admission.route.expect("an admitted request has a route")];
    let exchange = portico::filters::Exchange {
        request: &req,
        view,
        client,
        route: &route.name,
        vars,
        ext: &admission.ext,
    };
    let forwarded = Forwarded {
        peer,
        peer_trusted: snapshot.trusted.contains(peer),
        client: client.ip,
        tls: client.tls,
        host: view.authority.as_ref(),
    };
    let rewrite = |up: &mut RequestHeader| request::rewrite(up, route, &exchange, &forwarded);
    if matches!(upgrade, websocket::Upgrade::WebSocket) {
        let _ = websocket::upstream_request(&req, rewrite);
    } else {
        let mut upstream = req.clone();
        rewrite(&mut upstream).expect("a canonical target is a valid target");
    }
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.append_header("access-control-allow-origin", "https://evil.example").unwrap();
    route.chain.response(&mut resp, &exchange);
    // On the routes with `cors` (route0, route2), a peer's reflection of another origin never
    // gets through.
    if route.name != "route1" {
        if let Some(v) = resp.headers.get("access-control-allow-origin") {
            assert_ne!(v, "https://evil.example");
        }
    }
});
