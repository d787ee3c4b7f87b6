//! DNS discovery (`resolve`): peers given by name follow a DNS server on loopback whose answers
//! the tests change. Origins listen on one port at 127.0.0.2, .3, .4 (all loopback), as the pods
//! behind one headless Service do.

use crate::dns::DnsServer;
use crate::harness::*;
use crate::origins::{HttpOrigin, WsOrigin};
use std::net::{IpAddr, SocketAddr};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A port free on 127.0.0.2, .3 and .4 (the origins' addresses).
fn shared_port() -> u16 {
    for _ in 0..20 {
        let probe = std::net::TcpListener::bind((ip(2), 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        let free = [3, 4]
            .iter()
            .all(|last| std::net::TcpListener::bind((ip(*last), port)).is_ok());
        if free {
            return port;
        }
    }
    panic!("no port free on 127.0.0.2-4");
}

/// HTTP origins named `a`, `b`, ... on 127.0.0.2, .3, ... and one port.
async fn origins(n: u8) -> (Vec<HttpOrigin>, u16) {
    let port = shared_port();
    let mut all = Vec::new();
    for i in 0..n {
        let name = ((b'a' + i) as char).to_string();
        all.push(HttpOrigin::start_on(&name, SocketAddr::new(ip(2 + i), port)).await);
    }
    (all, port)
}

/// One group `app` of the name `app.test` under `resolve`, `extra` keys in it, and an admin
/// listener.
async fn proxy(dns: &DnsServer, port: u16, resolve: &str, extra: &str) -> (Proxy, SocketAddr) {
    let admin = proxy_addr();
    let proxy = Proxy::start(&group_text(dns, port, resolve, extra, admin)).await;
    (proxy, admin)
}

fn group_text(dns: &DnsServer, port: u16, resolve: &str, extra: &str, admin: SocketAddr) -> String {
    format!(
        "admin: {{address: '{admin}'}}\nupstreams:\n  app:\n    peers: ['app.test:{port}']\n    resolve: {{{resolve}resolvers: ['{}']}}\n{extra}routes:\n  - {{path_prefix: /, upstream: app}}\n",
        dns.addr
    )
}

async fn status(admin: SocketAddr) -> serde_json::Value {
    get(admin, "/status", &[]).await.json()
}

/// The group's peer addresses as /status lists them.
async fn listed(admin: SocketAddr) -> Vec<String> {
    let s = status(admin).await;
    s["upstreams"]["app"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["address"].as_str().unwrap().to_owned())
        .collect()
}

fn addrs(port: u16, lasts: &[u8]) -> Vec<String> {
    lasts
        .iter()
        .map(|l| SocketAddr::new(ip(*l), port).to_string())
        .collect()
}

#[tokio::test]
async fn peers_follow_dns_answers_under_load_with_no_failed_request() {
    let dns = DnsServer::start().await;
    let (mut origins, port) = origins(3).await;
    dns.set("app.test", &[ip(2)], 300);
    let (proxy, admin) = proxy(&dns, port, "interval: 200ms, ", "").await;
    // Resolved before it served: the first request already has its peer.
    assert_eq!(get(proxy.addr, "/", &[]).await.origin(), "a");
    assert_eq!(listed(admin).await, addrs(port, &[2]));

    let load = Load::start(proxy.addr, 4, "/");
    dns.set("app.test", &[ip(2), ip(3), ip(4)], 300);
    eventually("DNS adds b and c", || async {
        listed(admin).await == addrs(port, &[2, 3, 4])
    })
    .await;
    eventually("b and c serve", || async {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..12 {
            seen.insert(get(proxy.addr, "/", &[]).await.origin());
        }
        seen.len() == 3
    })
    .await;
    // a leaves DNS, then its process stops (a pod removed, then terminated): nothing fails.
    dns.set("app.test", &[ip(3), ip(4)], 300);
    eventually("DNS removes a", || async {
        listed(admin).await == addrs(port, &[3, 4])
    })
    .await;
    let removed_at = std::time::Instant::now();
    let a_hits = origins[0].hits();
    drop(origins.remove(0));
    for _ in 0..20 {
        assert_ne!(get(proxy.addr, "/", &[]).await.origin(), "a");
    }
    let samples = load.stop().await;
    assert_no_failures(&samples);
    assert!(samples
        .iter()
        .filter(|s| s.start > removed_at)
        .all(|s| s.outcome.as_deref() != Ok("a")));
    assert!(a_hits > 0, "a served before it left");

    let metrics = get(admin, "/metrics", &[]).await.text();
    assert!(
        metrics.contains("portico_peers_discovered{upstream=\"app\"} 2"),
        "{metrics}"
    );
    // a at start, then b and c.
    assert!(metrics.contains("portico_peer_changes_total{change=\"added\",upstream=\"app\"} 3"));
    assert!(metrics.contains("portico_peer_changes_total{change=\"removed\",upstream=\"app\"} 1"));
    assert!(proxy.logs().contains("DNS removed peer(s) 127.0.0.2:"));
    let s = status(admin).await;
    assert_eq!(
        s["upstreams"]["app"]["resolve"]["names"][0]["name"],
        "app.test"
    );
    assert_eq!(
        s["upstreams"]["app"]["resolve"]["names"][0]["addresses"],
        serde_json::json!(["127.0.0.3", "127.0.0.4"])
    );
}

/// The shipped Kubernetes case: the Service does not exist yet when portico starts. It starts
/// anyway (a warning, 503 meanwhile) and serves once the name resolves; `-t` passes.
#[tokio::test]
async fn a_name_that_does_not_resolve_yet_is_an_empty_group_until_it_does() {
    let dns = DnsServer::start().await;
    let (origins, port) = origins(1).await;
    let (proxy, admin) = proxy(&dns, port, "interval: 100ms, ", "").await;
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 503);
    assert!(proxy.logs().contains("app.test has no address now"));
    let (code, _, err) = run_cli(&["-t", "-c", proxy.conf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    dns.set("app.test", &[ip(2)], 300);
    eventually("the name resolves and serves", || async {
        get(proxy.addr, "/", &[]).await.status == 200
    })
    .await;
    assert_eq!(get(proxy.addr, "/", &[]).await.origin(), "a");
    assert_eq!(origins[0].name, "a");
    // And back to nothing (the Service scaled to zero): 503 again.
    dns.set("app.test", &[], 300);
    eventually("no address: 503", || async {
        get(proxy.addr, "/", &[]).await.status == 503
    })
    .await;
    assert!(listed(admin).await.is_empty());
}

/// A TTL shorter than the interval brings the next round forward; a DNS server that fails
/// (SERVFAIL) takes no peer away, and /status says why.
#[tokio::test]
async fn a_short_ttl_is_honoured_and_a_failing_dns_server_keeps_the_peers() {
    let dns = DnsServer::start().await;
    let (_origins, port) = origins(2).await;
    dns.set("app.test", &[ip(2)], 1);
    let (proxy, admin) = proxy(&dns, port, "interval: 1h, ", "").await;
    assert_eq!(get(proxy.addr, "/", &[]).await.origin(), "a");
    dns.set("app.test", &[ip(3)], 1);
    eventually("a 1s TTL, not the 1h interval, brings b", || async {
        get(proxy.addr, "/", &[]).await.origin() == "b"
    })
    .await;

    let before = dns.queries();
    dns.servfail(true);
    eventually("a round meets SERVFAIL", || async {
        status(admin).await["upstreams"]["app"]["resolve"]["names"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("SERVFAIL") || e.contains("Server Failure"))
    })
    .await;
    assert!(dns.queries() > before);
    assert_eq!(listed(admin).await, addrs(port, &[3]));
    assert_eq!(get(proxy.addr, "/", &[]).await.origin(), "b");
    assert!(proxy.logs().contains("keeping its 1 known address(es)"));
}

/// Membership changes keep what portico knows of the peers that stay: a peer an active health
/// check marked down stays down when DNS adds another (a new peer does not reset it).
#[tokio::test]
async fn health_is_kept_for_peers_that_stay() {
    let dns = DnsServer::start().await;
    let (origins, port) = origins(2).await;
    dns.set("app.test", &[ip(2)], 300);
    let check =
        "    health_check: {path: /healthz, interval: 100ms, healthy_threshold: 1, unhealthy_threshold: 1}\n";
    let (proxy, admin) = proxy(&dns, port, "interval: 100ms, ", check).await;
    origins[0].set_health(500);
    eventually("a is marked down", || async {
        status(admin).await["upstreams"]["app"]["peers"][0]["healthy"] == false
    })
    .await;
    dns.set("app.test", &[ip(2), ip(3)], 300);
    eventually("DNS adds b", || async { listed(admin).await.len() == 2 }).await;
    let s = status(admin).await;
    assert_eq!(s["upstreams"]["app"]["peers"][0]["healthy"], false);
    assert_eq!(s["upstreams"]["app"]["peers"][1]["healthy"], true);
    for _ in 0..10 {
        assert_eq!(get(proxy.addr, "/", &[]).await.origin(), "b");
    }
}

/// A WebSocket open on a peer DNS removes runs on to its end; new ones go to the peers left.
#[tokio::test]
async fn an_open_websocket_on_a_removed_peer_runs_on() {
    let dns = DnsServer::start().await;
    let port = shared_port();
    let _a = WsOrigin::start_on("a", SocketAddr::new(ip(2), port)).await;
    let _b = WsOrigin::start_on("b", SocketAddr::new(ip(3), port)).await;
    dns.set("app.test", &[ip(2)], 300);
    let (proxy, admin) = proxy(&dns, port, "interval: 100ms, ", "").await;
    let (mut on_a, _) = ws_connect(proxy.addr, "/", &[]).await.unwrap();
    assert_eq!(whoami(&mut on_a).await, "a");
    dns.set("app.test", &[ip(3)], 300);
    eventually("DNS moves to b", || async {
        listed(admin).await == addrs(port, &[3])
    })
    .await;
    assert_eq!(whoami(&mut on_a).await, "a");
    let (mut on_b, _) = ws_connect(proxy.addr, "/", &[]).await.unwrap();
    assert_eq!(whoami(&mut on_b).await, "b");
    assert_eq!(whoami(&mut on_a).await, "a");
}

/// A reload that changes the group while DNS is failing: the new group starts with the
/// addresses the live one resolved, so the reload costs no peer.
#[tokio::test]
async fn a_reload_during_a_dns_outage_keeps_the_resolved_peers() {
    let dns = DnsServer::start().await;
    let (_origins, port) = origins(1).await;
    dns.set("app.test", &[ip(2)], 300);
    let admin = proxy_addr();
    let proxy = Proxy::start(&group_text(&dns, port, "interval: 100ms, ", "", admin)).await;
    assert_eq!(get(proxy.addr, "/", &[]).await.origin(), "a");
    dns.servfail(true);
    proxy.rewrite(&group_text(
        &dns,
        port,
        "interval: 100ms, ",
        "    retries: 2\n",
        admin,
    ));
    proxy.signal("HUP");
    proxy.wait_for_log("configuration reloaded").await;
    assert_eq!(get(proxy.addr, "/", &[]).await.origin(), "a");
    assert_eq!(listed(admin).await, addrs(port, &[2]));
}
