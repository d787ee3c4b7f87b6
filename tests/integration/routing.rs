//! Route precedence (exact host > *.wildcard > any, then longest prefix), strip_prefix, 404.

use crate::harness::*;
use crate::origins::HttpOrigin;

#[tokio::test]
async fn host_then_longest_prefix_decides() {
    let names = ["exact-ws", "exact", "wild", "any-api", "any"];
    let mut origins = Vec::new();
    for n in names {
        origins.push(HttpOrigin::start(n).await);
    }
    let mut body = String::from("upstreams:\n");
    for o in &origins {
        body.push_str(&format!("  {}: {{peers: ['{}']}}\n", o.name, o.addr));
    }
    body.push_str(
        "routes:\n\
         - {path_prefix: /, upstream: any}\n\
         - {path_prefix: /api/, upstream: any-api}\n\
         - {host: '*.example.com', upstream: wild}\n\
         - {host: example.com, upstream: exact}\n\
         - {host: example.com, path_prefix: /ws/, upstream: exact-ws}\n",
    );
    let proxy = Proxy::start(&body).await;
    let cases = [
        ("example.com", "/ws/chat", "exact-ws"),
        ("EXAMPLE.com:8080", "/ws/chat", "exact-ws"),
        ("example.com", "/other", "exact"),
        ("a.example.com", "/ws/chat", "wild"),
        ("a.b.example.com", "/", "wild"),
        ("other.org", "/api/v1", "any-api"),
        ("other.org", "/apix", "any"),
        ("example.org", "/", "any"),
    ];
    for (host, path, want) in cases {
        let r = get(proxy.addr, path, &[("Host", host)]).await;
        assert_eq!(r.origin(), want, "{host}{path}");
    }
}

#[tokio::test]
async fn no_matching_route_is_404_with_a_short_body() {
    let origin = HttpOrigin::start("a").await;
    let body = format!("upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{host: example.com, upstream: app}}\n  - {{path_prefix: /api/, upstream: app}}\n", origin.addr);
    let proxy = Proxy::start(&body).await;
    let r = get(proxy.addr, "/", &[("Host", "other.org")]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "no route for this request\n");
    assert_eq!(origin.hits(), 0, "the origin never saw it");
    // A request with no Host at all (HTTP/1.0) is routed by path only.
    let r = send(proxy.addr, None, "GET /api/x HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn strip_prefix_removes_the_matched_prefix() {
    let origin = HttpOrigin::start("a").await;
    let body = format!("upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /ws/, upstream: app, strip_prefix: true}}\n  - {{path_prefix: /keep/, upstream: app}}\n", origin.addr);
    let proxy = Proxy::start(&body).await;
    assert_eq!(
        get(proxy.addr, "/ws/chat?room=1", &[]).await.json()["path"],
        "/chat?room=1"
    );
    assert_eq!(get(proxy.addr, "/ws/", &[]).await.json()["path"], "/");
    assert_eq!(
        get(proxy.addr, "/keep/x", &[]).await.json()["path"],
        "/keep/x"
    );
}
