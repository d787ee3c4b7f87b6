//! Any request head: routing on the canonical view and routing on the request as forwarded
//! agree. The forwarded target, read again as the origin receives it, has the same view (it is
//! already canonical) and the same route; and an origin that decodes every escape (`%2F` and
//! `%5C` as separators too) lands on that route as well. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "head.rs"]
mod head;
use pingora::http::RequestHeader;
use portico::config::{self, Loaded};
use portico::request::{self, View};
use portico::snapshot::Snapshot;
use std::sync::LazyLock;

const CONFIG: &str = r#"
listeners: [{address: 127.0.0.1:8080}]
upstreams:
  app: {peers: [127.0.0.1:3000]}
routes:
  - {host: admin.test, upstream: app}
  - {host: "*.example.com", path_prefix: /ws/, upstream: app}
  - {path_prefix: /admin/, upstream: app}
  - {path_prefix: /api/, upstream: app}
  - {path_prefix: /api/admin/, upstream: app}
  - {path_prefix: /a, upstream: app}
  - {path_prefix: /, upstream: app}
"#;

static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(|| {
    let loaded = Loaded::from_config(config::parse(CONFIG).expect("the fuzz config parses"));
    Snapshot::build(&loaded, None).expect("the fuzz config builds")
});

fuzz_target!(|data: &[u8]| {
    let Some(req) = head::request_head(data) else {
        return;
    };
    let router = &SNAPSHOT.router;
    let Ok(view) = View::of(&req) else {
        return;
    };
    let Ok(route) = request::route(router, &view) else {
        return;
    };
    if view.path == "*" {
        return;
    }

    // What the origin receives: the forwarded target, the authority as Host.
    let target = view
        .target(None)
        .unwrap_or_else(|| String::from_utf8_lossy(req.raw_path()).into_owned());
    let mut forwarded =
        RequestHeader::build(req.method.as_str(), target.as_bytes(), None).expect("the target forwarded parses");
    if let Some(authority) = &view.authority {
        forwarded.insert_header(http::header::HOST, authority.clone()).unwrap();
    }
    let again = View::of(&forwarded).expect("the forwarded request is valid");
    assert_eq!(again.path, view.path, "forwarded {target:?}");
    assert!(!again.rewritten, "forwarded {target:?} is not canonical");
    assert_eq!(again.host, view.host);
    assert_eq!(request::route(router, &again), Ok(route), "forwarded {target:?}");

    // An origin that decodes every escape and reads `\` as `/`.
    let decoded = decode_all(&view.path);
    assert_eq!(
        router.find(view.host.as_deref(), &decoded),
        route,
        "{:?} decoded as {decoded:?}",
        view.path
    );
});

fn decode_all(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let text = String::from_utf8_lossy(&out).replace('\\', "/");
    let mut merged = String::with_capacity(text.len());
    for c in text.chars() {
        if !(c == '/' && merged.ends_with('/')) {
            merged.push(c);
        }
    }
    merged
}
