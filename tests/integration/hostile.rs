//! What a malicious client sends: each is answered with a clean 4xx (or a closed connection),
//! never reaches the origin, and a normal request on another connection succeeds right after.

use crate::harness::*;
use crate::origins::HttpOrigin;

async fn hostile_proxy(origin: &HttpOrigin) -> Proxy {
    Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /, upstream: app}}\n  - {{path_prefix: /small/, upstream: app, max_body_size: 1k}}\n",
        origin.addr
    ))
    .await
}

const H: &str = "Host: test.local\r\n";

#[tokio::test]
async fn smuggling_framings_are_refused() {
    let origin = HttpOrigin::start("a").await;
    let proxy = hostile_proxy(&origin).await;
    let cases = [
        (
            "two different Content-Lengths",
            format!("POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            400,
        ),
        (
            "a Content-Length list",
            format!("POST / HTTP/1.1\r\n{H}Content-Length: 5, 5\r\n\r\nhello"),
            400,
        ),
        (
            "the same Content-Length twice",
            format!("POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            400,
        ),
        (
            "Transfer-Encoding: chunked, identity",
            format!("POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
            400,
        ),
    ];
    for (what, raw, want) in &cases {
        let r = send(proxy.addr, None, raw).await;
        assert_eq!(r.status, *want, "{what}");
        assert_eq!(get(proxy.addr, "/", &[]).await.status, 200, "after {what}");
    }
    assert_eq!(
        origin.hits(),
        cases.len(),
        "only the normal requests reached the origin"
    );

    // Content-Length with Transfer-Encoding: Pingora removes the Content-Length and forwards
    // the chunked body, as RFC 9112 6.3 asks of an intermediary: the peer sees one framing.
    let both = format!("POST / HTTP/1.1\r\n{H}Content-Length: 100\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    let r = send(proxy.addr, None, &both).await;
    assert_eq!(r.status, 200);
    assert!(
        r.upstream_header("content-length").is_empty(),
        "{}",
        r.text()
    );
    assert_eq!(r.upstream_header("transfer-encoding"), ["chunked"]);
    assert_eq!(r.json()["body_len"], 5);
}

#[tokio::test]
async fn malformed_heads_are_refused() {
    let origin = HttpOrigin::start("a").await;
    let proxy = hostile_proxy(&origin).await;
    let big = "a".repeat(64 * 1024);
    let many: String = (0..1000).map(|i| format!("X-{i}: v\r\n")).collect();
    let long_line = "a".repeat(100 * 1024);
    let cases = [
        (
            "obs-fold",
            format!("GET / HTTP/1.1\r\n{H}X-A: a\r\n b\r\n\r\n"),
            400,
        ),
        (
            "a bare LF in a value",
            format!("GET / HTTP/1.1\r\n{H}X-A: a\nb\r\n\r\n"),
            400,
        ),
        (
            "a 64 KiB header",
            format!("GET / HTTP/1.1\r\n{H}X-Big: {big}\r\n\r\n"),
            431,
        ),
        (
            "1,000 headers",
            format!("GET / HTTP/1.1\r\n{H}{many}\r\n"),
            400,
        ),
        (
            "a 100 KiB request line",
            format!("GET /{long_line} HTTP/1.1\r\n{H}\r\n"),
            400,
        ),
        (
            "HTTP/1.1 without Host",
            "GET / HTTP/1.1\r\n\r\n".to_owned(),
            400,
        ),
        (
            "two Hosts",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_owned(),
            400,
        ),
        (
            "CONNECT",
            format!("CONNECT evil.test:443 HTTP/1.1\r\n{H}\r\n"),
            400,
        ),
        (
            "absolute-form to another host",
            format!("GET http://evil.test/ HTTP/1.1\r\n{H}\r\n"),
            400,
        ),
    ];
    for (what, raw, want) in &cases {
        let out = send_raw(proxy.addr, None, raw.as_bytes()).await;
        match parse_response(&out) {
            Some(r) => assert_eq!(r.status, *want, "{what}"),
            None => assert!(
                out.is_empty(),
                "{what}: neither a response nor a close: {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
        assert_eq!(get(proxy.addr, "/", &[]).await.status, 200, "after {what}");
    }
    assert_eq!(origin.hits(), cases.len());
}

/// `/public/../admin` must not be routed as `/public/` and served as `/admin` by the peer.
#[tokio::test]
async fn dot_segments_cannot_escape_a_route() {
    let origin = HttpOrigin::start("a").await;
    let proxy = hostile_proxy(&origin).await;
    for path in [
        "/small/../admin",
        "/a/./b",
        "/a/%2e%2e/b",
        "/a/%2E%2E",
        "/..",
    ] {
        let r = send(
            proxy.addr,
            None,
            &format!("GET {path} HTTP/1.1\r\n{H}Connection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, 400, "{path}");
    }
    assert_eq!(
        get(proxy.addr, "/a/b..c/.d", &[]).await.status,
        200,
        "dots inside names are fine"
    );
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let origin = HttpOrigin::start("a").await;
    let proxy = hostile_proxy(&origin).await;
    let body = "x".repeat(2048);
    let declared = send(
        proxy.addr,
        None,
        &format!(
            "POST /small/up HTTP/1.1\r\n{H}Content-Length: 2048\r\nConnection: close\r\n\r\n{body}"
        ),
    )
    .await;
    assert_eq!(declared.status, 413);
    let chunked = send(proxy.addr, None, &format!("POST /small/up HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n800\r\n{body}\r\n0\r\n\r\n")).await;
    assert_eq!(chunked.status, 413);
    let small = send(proxy.addr, None, &format!("POST /small/up HTTP/1.1\r\n{H}Content-Length: 10\r\nConnection: close\r\n\r\n0123456789")).await;
    assert_eq!(
        (small.status, small.json()["body_len"].as_u64()),
        (200, Some(10))
    );
    let unlimited = send(
        proxy.addr,
        None,
        &format!(
            "POST /big HTTP/1.1\r\n{H}Content-Length: 2048\r\nConnection: close\r\n\r\n{body}"
        ),
    )
    .await;
    assert_eq!(unlimited.status, 200, "other routes have no limit");
}
