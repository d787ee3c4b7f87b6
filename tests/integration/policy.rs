//! Route policies answered before any peer is contacted: bearer auth, the HTTPS redirect.

use crate::harness::*;
use crate::origins::{HttpOrigin, WsOrigin};

async fn auth_proxy(origin_addr: std::net::SocketAddr) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, "# staff\ns3cret-token\n\nother-token\n").unwrap();
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{origin_addr}']}}\nroutes:\n  - path_prefix: /\n    upstream: app\n    auth: {{bearer_tokens_file: '{}'}}\n",
        tokens.display()
    ))
    .await;
    // The file was read at start; the proxy keeps the tempdir's path only for reloads.
    std::mem::forget(dir);
    proxy
}

/// A client without a token, with a wrong one, a prefix of a right one, or another scheme.
#[tokio::test]
async fn bearer_auth_rejects_before_the_peer_is_contacted() {
    let origin = HttpOrigin::start("a").await;
    let proxy = auth_proxy(origin.addr).await;
    for bad in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret"),
        Some("Basic s3cret-token"),
        Some("Bearer "),
    ] {
        let headers: Vec<(&str, &str)> = bad.map(|v| ("Authorization", v)).into_iter().collect();
        let r = get(proxy.addr, "/", &headers).await;
        assert_eq!(r.status, 401, "{bad:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"portico\"")
        );
    }
    assert_eq!(origin.hits(), 0, "no rejected request reached the origin");
    let r = get(proxy.addr, "/", &[("Authorization", "Bearer other-token")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("authorization"),
        ["Bearer other-token"],
        "passes untouched"
    );
    // The access-log writer drains every 10 ms: its line for that request first, then the
    // check that nothing in the log holds the token.
    proxy.wait_for_log("\"GET / HTTP/1.1\" 200").await;
    assert!(!proxy.logs().contains("other-token"), "a token was logged");
}

#[tokio::test]
async fn bearer_auth_is_checked_before_the_upgrade() {
    let origin = WsOrigin::start("echo").await;
    let proxy = auth_proxy(origin.addr).await;
    match ws_connect(proxy.addr, "/", &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert!(origin.last_request.lock().unwrap().is_empty());
    let (_ws, resp) = ws_connect(proxy.addr, "/", &[("Authorization", "Bearer s3cret-token")])
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
}

#[tokio::test]
async fn redirect_https_keeps_host_path_and_query() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /secure/, upstream: app, redirect_https: true}}\n  - {{path_prefix: /, upstream: app}}\n",
        origin.addr
    ))
    .await;
    let r = get(
        proxy.addr,
        "/secure/page?a=1&b=2",
        &[("Host", "example.com:8080")],
    )
    .await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://example.com/secure/page?a=1&b=2")
    );
    assert_eq!(get(proxy.addr, "/plain", &[]).await.status, 200);
    assert_eq!(origin.hits(), 1);
}
