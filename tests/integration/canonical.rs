//! Routing and policies judge the request the origin acts on (the canonical view): what an
//! attacker sends to reach a protected origin through a different spelling of its host or path.
//! Each case: the bytes sent, what the client got, what the origin received (nothing for the
//! refused ones), and a normal request served right after.

use crate::harness::*;
use crate::origins::{HttpOrigin, WsOrigin};
use std::net::SocketAddr;

/// The README's shape: a host route with auth, a `/admin/` route with auth, a catch-all, all
/// to one group; and `/api/` public beside `/api/admin/` with auth.
async fn protected(origin: SocketAddr) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, "s3cret\n").unwrap();
    let auth = format!("auth: {{bearer_tokens_file: '{}'}}", tokens.display());
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{origin}']}}\nroutes:\n  - {{host: admin.test, upstream: app, {auth}}}\n  - {{path_prefix: /admin/, upstream: app, {auth}}}\n  - {{path_prefix: /api/admin/, upstream: app, {auth}}}\n  - {{path_prefix: /api/, upstream: app}}\n  - {{path_prefix: /, upstream: app}}\n"
    ))
    .await;
    std::mem::forget(dir);
    proxy
}

const TOKEN: &str = "Authorization: Bearer s3cret\r\n";

/// `GET http://admin.test/x HTTP/1.0` with no Host was routed to the catch-all, then Pingora
/// wrote `Host: admin.test` from the target: an admin.test request reached the origin with no
/// token. The authority is the host (RFC 9112 3.2.2), so auth applies.
#[tokio::test]
async fn absolute_form_without_host_is_routed_by_its_authority() {
    let origin = HttpOrigin::start("a").await;
    let proxy = protected(origin.addr).await;
    for raw in [
        "GET http://admin.test/x HTTP/1.0\r\n\r\n",
        "GET http://ADMIN.test./x HTTP/1.0\r\n\r\n",
        "GET http://admin.test:80/x HTTP/1.0\r\n\r\n",
        "POST http://admin.test/x HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        let r = send(proxy.addr, None, raw).await;
        assert_eq!(r.status, 401, "{raw:?}");
    }
    assert_eq!(origin.hits(), 0, "a refused request reached the origin");

    // With the token it is forwarded in origin-form, its authority as Host.
    let r = send(
        proxy.addr,
        None,
        &format!("GET http://admin.test/x?q=1 HTTP/1.0\r\n{TOKEN}\r\n"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/x?q=1");
    assert_eq!(r.upstream_header("host"), ["admin.test"]);
    assert_eq!(r.upstream_header("x-forwarded-host"), ["admin.test"]);

    // An absolute-form target whose authority differs from Host: Pingora refuses it (400),
    // stricter than RFC 9112's "replace Host"; either way no request reaches the origin under
    // the other name.
    let r = send(
        proxy.addr,
        None,
        "GET http://admin.test/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(origin.hits(), 1);
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
}

/// `/%61dmin/x` did not match `/admin/`, went to the catch-all, and the origin (which decodes
/// `%61` to `a`, as aiohttp, nginx, Express and Go do) served `/admin/x` without a token.
#[tokio::test]
async fn encoded_and_doubled_paths_route_as_the_origin_reads_them() {
    let origin = HttpOrigin::start("a").await;
    let proxy = protected(origin.addr).await;
    for path in [
        "/%61dmin/x",
        "/ad%6Din/x",
        "/ADMIN/../admin/x",
        "//admin/x",
        "/admin//x",
        "/%2561dmin/../admin/x",
        "/api/%61dmin/x",
        "/api//admin/x",
    ] {
        let r = send(
            proxy.addr,
            None,
            &format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(r.status == 401 || r.status == 400, "{path}: {}", r.status);
    }
    assert_eq!(origin.hits(), 0, "a refused request reached the origin");

    // With the token the origin gets the path the route was chosen by.
    for (sent, received) in [
        ("/%61dmin/x?a=%61", "/admin/x?a=%61"),
        ("//admin//x", "/admin/x"),
        ("/admin/%7euser/a%2fb", "/admin/~user/a%2Fb"),
    ] {
        let r = send(
            proxy.addr,
            None,
            &format!("GET {sent} HTTP/1.1\r\nHost: test.local\r\n{TOKEN}Connection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, 200, "{sent}");
        assert_eq!(r.json()["path"], received, "{sent}");
    }
    // A plain path is forwarded byte for byte, as before.
    let r = get(proxy.addr, "/plain/a-b_c.d~e?x=%zz&y=/", &[]).await;
    assert_eq!(r.json()["path"], "/plain/a-b_c.d~e?x=%zz&y=/");
}

/// `%2F` and `%5C` stay encoded, but an origin that decodes them must not land on a route
/// portico did not judge (`/api/admin%2Fx` is `/api/admin/x` to Go's net/http), and they must
/// not smuggle a dot segment (`/a/..%2Fadmin`).
#[tokio::test]
async fn encoded_slashes_cannot_reach_another_route() {
    let origin = HttpOrigin::start("a").await;
    let proxy = protected(origin.addr).await;
    for path in [
        "/api/admin%2Fx",
        "/api%2Fadmin/x",
        "/api/admin%5cx",
        "/public/..%2Fadmin/x",
        "/public/..%5Cadmin/x",
        "/public/%2e%2e%2fadmin/x",
        "/public\\..\\admin/x",
        "/public/x%00",
        "/public/%zz",
    ] {
        let r = send(
            proxy.addr,
            None,
            &format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, 400, "{path}");
    }
    assert_eq!(origin.hits(), 0);
    // Where every reading gives the same route, an encoded slash is served (kept encoded).
    let r = get(proxy.addr, "/api/files/a%2fb", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/api/files/a%2Fb");
}

/// Host values nginx answers 400 to; none reaches the origin.
#[tokio::test]
async fn malformed_hosts_are_refused() {
    let origin = HttpOrigin::start("a").await;
    let proxy = protected(origin.addr).await;
    for host in [
        "admin.test:abc",
        "admin.test:80:80",
        "h/admin/",
        "h\\",
        "h#",
        "h?",
        "user@admin.test",
        "admin..test",
        "[::1",
        "admin.test:99999",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let out = send_raw(proxy.addr, None, raw.as_bytes()).await;
        let r = parse_response(&out).unwrap_or_else(|| panic!("{host}: no response"));
        assert_eq!(r.status, 400, "{host}");
    }
    assert_eq!(origin.hits(), 0);
    // Case, a trailing dot and a port do not change which route a host gets.
    for host in ["ADMIN.TEST", "admin.test.", "admin.test:8080"] {
        let r = get(proxy.addr, "/", &[("Host", host)]).await;
        assert_eq!(r.status, 401, "{host}");
    }
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
}

/// HTTP/1.0 without Host names no host: only host-less routes can take it.
#[tokio::test]
async fn http10_without_host_gets_host_less_routes_only() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{host: only.test, upstream: app}}\n",
        origin.addr
    ))
    .await;
    let r = send(proxy.addr, None, "GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 404);
    let r = send(
        proxy.addr,
        None,
        "GET / HTTP/1.0\r\nHost: only.test\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.hits(), 1);
}

/// CGI and WSGI origins read `X_Forwarded_For` as `HTTP_X_FORWARDED_FOR`, the variable the real
/// header sets: a client must not be able to add a value to it.
#[tokio::test]
async fn underscore_spellings_of_forwarding_headers_are_dropped() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start(&one_route(origin.addr)).await;
    let spoofs = [
        ("X_Forwarded_For", "6.6.6.6"),
        ("X-Forwarded_For", "6.6.6.6"),
        ("X_Real_IP", "6.6.6.6"),
        ("X-Real_IP", "6.6.6.6"),
        ("X_Forwarded_Proto", "https"),
        ("X_Forwarded_Host", "evil.test"),
    ];
    let mut headers = spoofs.to_vec();
    headers.push(("X_Other_Header", "kept"));
    let r = get(proxy.addr, "/", &headers).await;
    assert_eq!(r.status, 200);
    for (name, _) in spoofs {
        assert!(
            r.upstream_header(name).is_empty(),
            "{name} reached the origin"
        );
    }
    assert_eq!(r.upstream_header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(r.upstream_header("x_other_header"), ["kept"]);

    let ws = WsOrigin::start("echo").await;
    let proxy = Proxy::start(&one_route(ws.addr)).await;
    let (_ws, resp) = ws_connect(proxy.addr, "/", &[("X_Forwarded_For", "6.6.6.6")])
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    let seen = ws.last_request.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|(k, _)| k.contains('_')),
        "an underscore spelling reached the WebSocket origin: {seen:?}"
    );
}

/// `Connection: Upgrade, X-Forwarded-For` would have the proxy strip the forwarding header it
/// sets; refused like a plain request that does so.
#[tokio::test]
async fn connection_naming_a_forwarding_header_is_refused() {
    let ws = WsOrigin::start("echo").await;
    let proxy = Proxy::start(&one_route(ws.addr)).await;
    let upgrade = |connection: &str| {
        format!("GET / HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\nConnection: {connection}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    };
    for connection in [
        "Upgrade, X-Forwarded-For",
        "Upgrade, Host",
        "Upgrade, X-Real-IP",
        "Upgrade, x-forwarded-proto",
    ] {
        let r = send(proxy.addr, None, &upgrade(connection)).await;
        assert_eq!(r.status, 400, "{connection}");
        let plain = format!(
            "GET / HTTP/1.1\r\nHost: test.local\r\nConnection: {}\r\n\r\n",
            connection.replace("Upgrade, ", "close, ")
        );
        assert_eq!(
            send(proxy.addr, None, &plain).await.status,
            400,
            "{connection}"
        );
    }
    assert!(ws.last_request.lock().unwrap().is_empty());
    let (_ws, resp) = ws_connect(proxy.addr, "/%63hat", &[]).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(
        *ws.last_path.lock().unwrap(),
        "/chat",
        "canonical path upstream"
    );
}

/// 3,000 token guesses on a rate-limited route all got 401 and never 429: auth ran first.
#[tokio::test]
async fn rate_limits_count_requests_auth_refuses() {
    let origin = HttpOrigin::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("t");
    std::fs::write(&tokens, "s3cret\n").unwrap();
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{upstream: app, auth: {{bearer_tokens_file: '{}'}}, rate_limit: {{requests_per_second: 1, burst: 3}}}}\n",
        origin.addr,
        tokens.display()
    ))
    .await;
    let mut statuses = Vec::new();
    for i in 0..20 {
        let guess = format!("Bearer guess{i}");
        statuses.push(
            get(proxy.addr, "/", &[("Authorization", guess.as_str())])
                .await
                .status,
        );
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        limited >= 15,
        "token guesses were not rate limited: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(origin.hits(), 0);
}
