//! Per-client limits: a request rate with a burst (429 + Retry-After), and a cap on open
//! WebSockets; both per client IP after trusted proxies, both before any peer is contacted.

use crate::harness::*;
use crate::origins::{HttpOrigin, WsOrigin};
use futures_util::StreamExt;
use std::net::{IpAddr, Ipv4Addr};

fn client(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))
}

/// A client floods; it gets its burst, then 429 with Retry-After; another client is unaffected.
#[tokio::test]
async fn request_rate_is_limited_per_client() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{upstream: app, rate_limit: {{requests_per_second: 1, burst: 3}}}}\n",
        origin.addr
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get_from(client(2), proxy.addr, "/", &[]).await);
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status).collect();
    assert_eq!(codes, [200, 200, 200, 429, 429, 429]);
    assert_eq!(statuses[3].header("retry-after"), Some("1"));
    assert_eq!(
        origin.hits(),
        3,
        "rejected requests never reached the origin"
    );
    assert_eq!(
        get_from(client(3), proxy.addr, "/", &[]).await.status,
        200,
        "another client has its own budget"
    );
}

/// Behind a trusted proxy the limit is per real client, not per proxy.
#[tokio::test]
async fn request_rate_follows_the_client_behind_trusted_proxies() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start(&format!(
        "trusted_proxies: [127.0.0.1]\nupstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{upstream: app, rate_limit: {{requests_per_second: 1, burst: 1}}}}\n",
        origin.addr
    ))
    .await;
    for i in 1..=5 {
        let xff = format!("198.51.100.{i}");
        assert_eq!(
            get(proxy.addr, "/", &[("X-Forwarded-For", &xff)])
                .await
                .status,
            200
        );
    }
    assert_eq!(
        get(proxy.addr, "/", &[("X-Forwarded-For", "198.51.100.1")])
            .await
            .status,
        429
    );
}

/// A client opens WebSockets until the cap; the next one is 429 before the peer sees it.
#[tokio::test]
async fn open_websockets_are_capped_per_client() {
    let origin = WsOrigin::start("echo").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  echo: {{peers: ['{}']}}\nroutes:\n  - {{upstream: echo, rate_limit: {{max_connections: 2}}}}\n",
        origin.addr
    ))
    .await;
    let (mut first, _) = ws_connect(proxy.addr, "/", &[]).await.unwrap();
    let (_second, _) = ws_connect(proxy.addr, "/", &[]).await.unwrap();
    match ws_connect(proxy.addr, "/", &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("expected 429, got {:?}", other.map(|(_, r)| r.status())),
    }
    first.close(None).await.unwrap();
    while let Some(Ok(_)) = first.next().await {}
    eventually("the closed connection frees its slot", || async {
        ws_connect(proxy.addr, "/", &[]).await.is_ok()
    })
    .await;
}
