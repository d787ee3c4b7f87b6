//! The contract's header rules, as the origin receives them and as the client gets them back.

use crate::harness::*;
use crate::origins::HttpOrigin;

fn config(origin: &HttpOrigin, trusted: &str, route_extra: &str) -> String {
    format!(
        "trusted_proxies: {trusted}\nupstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - path_prefix: /\n    upstream: app\n{route_extra}",
        origin.addr
    )
}

/// A malicious client claims another address, scheme and host in forwarding headers.
#[tokio::test]
async fn untrusted_client_cannot_spoof_forwarding_headers() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start(&config(&origin, "[10.0.0.0/8]", "")).await;
    let r = get(
        proxy.addr,
        "/x",
        &[
            ("Host", "Example.COM:8443"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.test"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(r.upstream_header("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(r.upstream_header("x-forwarded-proto"), ["http"]);
    assert_eq!(r.upstream_header("x-forwarded-host"), ["Example.COM:8443"]);
    assert_eq!(
        r.upstream_header("host"),
        ["Example.COM:8443"],
        "Host passes unchanged"
    );
}

#[tokio::test]
async fn trusted_proxy_chain_is_extended_and_believed() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start(&config(&origin, "[127.0.0.1/32, 10.0.0.0/8]", "")).await;
    let r = get(
        proxy.addr,
        "/",
        &[
            ("X-Forwarded-For", "198.51.100.7, 10.1.2.3"),
            ("X-Forwarded-Proto", "https"),
        ],
    )
    .await;
    assert_eq!(
        r.upstream_header("x-forwarded-for"),
        ["198.51.100.7, 10.1.2.3, 127.0.0.1"]
    );
    assert_eq!(r.upstream_header("x-real-ip"), ["198.51.100.7"]);
    assert_eq!(
        r.upstream_header("x-forwarded-proto"),
        ["https"],
        "a trusted proxy's scheme is kept"
    );

    // Two X-Forwarded-For lines from a trusted hop are one chain, in order.
    let r = get(
        proxy.addr,
        "/",
        &[
            ("X-Forwarded-For", "203.0.113.1"),
            ("X-Forwarded-For", "10.9.9.9"),
        ],
    )
    .await;
    assert_eq!(
        r.upstream_header("x-forwarded-for"),
        ["203.0.113.1, 10.9.9.9, 127.0.0.1"]
    );
    assert_eq!(r.upstream_header("x-real-ip"), ["203.0.113.1"]);
}

#[tokio::test]
async fn credentials_and_cookies_pass_untouched() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start(&config(&origin, "[]", "")).await;
    let r = get(
        proxy.addr,
        "/set-cookie",
        &[
            ("Authorization", "Bearer abc.def"),
            ("Cookie", "sid=1; theme=dark"),
            ("Origin", "https://app.example.com"),
        ],
    )
    .await;
    assert_eq!(r.upstream_header("authorization"), ["Bearer abc.def"]);
    assert_eq!(r.upstream_header("cookie"), ["sid=1; theme=dark"]);
    assert_eq!(r.upstream_header("origin"), ["https://app.example.com"]);
    assert_eq!(
        r.headers_named("set-cookie"),
        ["a=1; Path=/", "b=2; HttpOnly"],
        "two Set-Cookie stay two"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start(&config(&origin, "[]", "")).await;
    let raw = "GET / HTTP/1.1\r\nHost: test.local\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n";
    let r = send(proxy.addr, None, raw).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for h in ["x-hop", "keep-alive", "te", "trailer", "proxy-connection"] {
        assert!(
            r.upstream_header(h).is_empty(),
            "{h} was forwarded: {}",
            r.text()
        );
    }
    assert_eq!(r.upstream_header("x-kept"), ["yes"]);
}

#[tokio::test]
async fn route_header_rules_set_add_remove() {
    let origin = HttpOrigin::start("a").await;
    let rules = "    request_headers:\n      set: {X-Env: prod}\n      add: {X-Trace: edge}\n      remove: [X-Debug]\n    response_headers:\n      set: {Strict-Transport-Security: max-age=31536000}\n      add: {X-Via: portico}\n      remove: [Server]\n";
    let proxy = Proxy::start(&config(&origin, "[]", rules)).await;
    let r = get(
        proxy.addr,
        "/",
        &[
            ("X-Env", "dev"),
            ("X-Env", "qa"),
            ("X-Trace", "client"),
            ("X-Debug", "1"),
        ],
    )
    .await;
    assert_eq!(
        r.upstream_header("x-env"),
        ["prod"],
        "set replaces every value"
    );
    assert_eq!(
        r.upstream_header("x-trace"),
        ["client", "edge"],
        "add appends"
    );
    assert!(r.upstream_header("x-debug").is_empty());
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(r.header("x-via"), Some("portico"));
    assert_eq!(r.header("server"), None, "removed from the response");
    assert_eq!(
        r.header("x-origin"),
        Some("a"),
        "other response headers pass"
    );
}
