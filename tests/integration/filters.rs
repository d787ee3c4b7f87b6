//! The filter pipeline against the real binary: each built-in listed filter (`request_id`,
//! `cors`, `ip_access`, `canary`) with real origins, the chain's order around the route's own
//! keys, bad filter settings refused with their YAML paths, and filter settings reloaded under
//! load.

use crate::harness::*;
use crate::origins::HttpOrigin;
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn request_id_is_kept_or_made_and_seen_by_peer_client_and_log() {
    let origin = HttpOrigin::start("app").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{upstream: app, filters: [request_id: {{}}]}}\n",
        origin.addr
    ))
    .await;
    // None sent: one is made (a UUID), the same for the peer, the client and the log line.
    let r = get(proxy.addr, "/made", &[]).await;
    let id = r
        .header("x-request-id")
        .expect("an id in the response")
        .to_owned();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(r.upstream_header("x-request-id"), std::slice::from_ref(&id));
    proxy.wait_for_log(&format!("request_id={id}")).await;
    // A valid one is kept through every hop.
    let r = get(proxy.addr, "/", &[("X-Request-Id", "lb-7f3a:01")]).await;
    assert_eq!(r.header("x-request-id"), Some("lb-7f3a:01"));
    assert_eq!(r.upstream_header("x-request-id"), ["lb-7f3a:01"]);
    // What a malicious client tries: a log-line injection, an overlong one, two of them.
    for sent in [
        vec![("X-Request-Id", "x\" status=200 forged")],
        vec![("X-Request-Id", &*"a".repeat(200))],
        vec![("X-Request-Id", "one"), ("X-Request-Id", "two")],
    ] {
        let r = get(proxy.addr, "/", &sent).await;
        let id = r.header("x-request-id").unwrap();
        assert_eq!(id.len(), 36, "{sent:?} gave {id}");
        assert_eq!(r.upstream_header("x-request-id"), [id.to_owned()]);
    }
    assert!(!proxy.logs().contains("forged"));
}

fn cors_proxy_body(peer: std::net::SocketAddr, tokens: &std::path::Path) -> String {
    format!(
        "upstreams:\n  app: {{peers: ['{peer}']}}\nroutes:\n  - upstream: app\n    auth: {{bearer_tokens_file: '{}'}}\n    filters:\n      - cors: {{allow_origins: [https://app.example.com], allow_credentials: true, max_age: 10m, expose_headers: [X-Total]}}\n",
        tokens.display()
    )
}

#[tokio::test]
async fn cors_answers_preflights_itself_and_never_reflects_another_origin() {
    // The peer reflects any Origin it gets, as careless apps do.
    let (peer, hits) = scripted(|mut s| async move {
        let Some(head) = read_head(&mut s).await else { return };
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let origin = head
            .lines()
            .find_map(|l| l.strip_prefix("origin: "))
            .unwrap_or("none")
            .trim()
            .to_owned();
        let resp = format!("HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: {origin}\r\nAccess-Control-Allow-Credentials: true\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        let _ = s.write_all(resp.as_bytes()).await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, "s3cret\n").unwrap();
    let proxy = Proxy::start(&cors_proxy_body(peer, &tokens)).await;
    let preflight = |origin: &'static str| {
        request_text(
            "OPTIONS",
            "/api/items",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "PUT"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type",
                ),
            ],
        )
    };
    // An allowed origin's preflight: answered here (no token needed: it carries none).
    let r = send(proxy.addr, None, &preflight("https://app.example.com")).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    // Another origin's preflight: refused, nothing allowed.
    let r = send(proxy.addr, None, &preflight("https://evil.example")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no preflight reached the peer"
    );

    // Real requests: the allowed origin gets the headers, the peer's reflection of another
    // origin never reaches the browser.
    let auth = ("Authorization", "Bearer s3cret");
    let r = get(
        proxy.addr,
        "/api/items",
        &[("Origin", "https://app.example.com"), auth],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-expose-headers"), Some("X-Total"));
    assert!(r.headers_named("vary").iter().any(|v| v.contains("Origin")));
    let r = get(
        proxy.addr,
        "/api/items",
        &[("Origin", "https://evil.example"), auth],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("access-control-allow-credentials"), None);
    // Without the token: 401, readable by the allowed origin's page.
    let r = get(
        proxy.addr,
        "/api/items",
        &[("Origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
}

#[tokio::test]
async fn ip_access_judges_the_client_after_trusted_proxies() {
    let origin = HttpOrigin::start("app").await;
    let proxy = Proxy::start(&format!(
        "trusted_proxies: [127.0.0.1]\nupstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - upstream: app\n    filters:\n      - ip_access: {{allow: [127.0.0.0/8, 10.0.0.0/8], deny: [127.0.0.9, 10.9.0.0/16]}}\n",
        origin.addr
    ))
    .await;
    assert_eq!(
        get_from(ip("127.0.0.2"), proxy.addr, "/", &[]).await.status,
        200
    );
    let r = get_from(ip("127.0.0.9"), proxy.addr, "/", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (403, "forbidden\n"));
    // What a denied client tries: naming another address in X-Forwarded-For. It is not a
    // trusted proxy, so its header does not count.
    let xff = [("X-Forwarded-For", "127.0.0.2")];
    assert_eq!(
        get_from(ip("127.0.0.9"), proxy.addr, "/", &xff)
            .await
            .status,
        403
    );
    // Through the trusted proxy, the client it names is judged.
    let through = |c: &'static str| [("X-Forwarded-For", c)];
    assert_eq!(
        get_from(ip("127.0.0.1"), proxy.addr, "/", &through("10.1.2.3"))
            .await
            .status,
        200
    );
    assert_eq!(
        get_from(ip("127.0.0.1"), proxy.addr, "/", &through("10.9.2.3"))
            .await
            .status,
        403
    );
    assert_eq!(
        get_from(ip("127.0.0.1"), proxy.addr, "/", &through("192.0.2.1"))
            .await
            .status,
        403
    );
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn canary_sends_a_sticky_share_of_clients_or_whom_a_cookie_or_header_names() {
    let (stable, v2) = (
        HttpOrigin::start("stable").await,
        HttpOrigin::start("v2").await,
    );
    let body = |weight: u8| {
        format!(
            "upstreams:\n  app: {{peers: ['{}']}}\n  app-v2: {{peers: ['{}']}}\nroutes:\n  - upstream: app\n    filters:\n      - canary: {{upstream: app-v2, weight: {weight}, cookie: canary, header: X-Canary}}\n",
            stable.addr, v2.addr
        )
    };
    let proxy = Proxy::start(&body(30)).await;
    let mut sides = std::collections::HashMap::new();
    for i in 1..=60u8 {
        let client = ip(&format!("127.0.1.{i}"));
        let first = get_from(client, proxy.addr, "/", &[]).await.origin();
        let again = get_from(client, proxy.addr, "/", &[]).await.origin();
        assert_eq!(first, again, "client {client} moved");
        *sides.entry(first).or_insert(0) += 1;
    }
    let on_v2 = sides.get("v2").copied().unwrap_or(0);
    assert!(
        (5..=35).contains(&on_v2),
        "30% of 60 clients, got {sides:?}"
    );
    // Forced either way, whatever the client's share.
    for i in 1..=10u8 {
        let (client, addr) = (ip(&format!("127.0.1.{i}")), proxy.addr);
        let to = |h: (&'static str, &'static str)| async move {
            get_from(client, addr, "/", &[h]).await.origin()
        };
        assert_eq!(to(("X-Canary", "always")).await, "v2");
        assert_eq!(to(("X-Canary", "never")).await, "stable");
        assert_eq!(to(("Cookie", "a=1; canary=always")).await, "v2");
        assert_eq!(to(("Cookie", "canary=never")).await, "stable");
    }
    // The access log names the group that served.
    proxy.wait_for_log("upstream=app-v2").await;
}

/// Filter settings are rebuilt on SIGHUP while requests flow; a bad one refuses the reload
/// and the old chain serves on.
#[tokio::test]
async fn filter_settings_reload_under_load_and_a_bad_one_is_refused() {
    let origin = HttpOrigin::start("app").await;
    let body = |header: &str| {
        format!(
            "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - upstream: app\n    filters:\n      - request_id: {{header: {header}}}\n      - ip_access: {{deny: [10.0.0.0/8]}}\n",
            origin.addr
        )
    };
    let proxy = Proxy::start(&body("X-Trace-A")).await;
    let load = Load::start(proxy.addr, 4, "/");
    for header in ["X-Trace-B", "X-Trace-A", "X-Trace-C"] {
        proxy.rewrite(&body(header));
        proxy.signal("HUP");
        let lower = header.to_ascii_lowercase();
        eventually("the new filter settings serve", || {
            let lower = lower.clone();
            async move { get(proxy.addr, "/", &[]).await.header(&lower).is_some() }
        })
        .await;
    }
    proxy.rewrite(&body("Not A Header"));
    proxy.signal("HUP");
    proxy
        .wait_for_log("routes[0].filters[0].request_id.header: invalid header name")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await; // let the load run on after it
    let samples = load.stop().await;
    assert_no_failures(&samples);
    assert!(samples.len() > 20, "{} requests", samples.len());
    assert!(get(proxy.addr, "/", &[])
        .await
        .header("x-trace-c")
        .is_some());
}
