//! Peer selection: weighted round robin, ip_hash stickiness and minimal remap, least_conn,
//! health checks taking peers out and back, retries, 502/503 when nothing can answer.

use crate::harness::*;
use crate::origins::{HttpOrigin, WsOrigin};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

fn one_route(upstream: &str) -> String {
    format!("upstreams:\n  app:\n{upstream}routes:\n  - {{path_prefix: /, upstream: app}}\n")
}

const FAST_HEALTH: &str = "    health_check: {type: http, path: /healthz, interval: 100ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 1}\n";

#[tokio::test]
async fn weighted_round_robin_follows_weights() {
    let a = HttpOrigin::start("a").await;
    let b = HttpOrigin::start("b").await;
    let up = format!("    balance: round_robin\n    peers:\n      - '{}'\n      - {{address: '{}', weight: 3}}\n", a.addr, b.addr);
    let proxy = Proxy::start(&one_route(&up)).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        *counts
            .entry(get(proxy.addr, "/", &[]).await.origin())
            .or_default() += 1;
    }
    let (ca, cb) = (counts["a"], counts["b"]);
    assert_eq!(ca + cb, 400);
    assert!(
        (90..=110).contains(&ca) && (290..=310).contains(&cb),
        "a={ca} b={cb}, want 100/300"
    );
}

#[tokio::test]
async fn random_spreads_by_weight() {
    let a = HttpOrigin::start("a").await;
    let b = HttpOrigin::start("b").await;
    let up = format!(
        "    balance: random\n    peers: ['{}', {{address: '{}', weight: 4}}]\n",
        a.addr, b.addr
    );
    let proxy = Proxy::start(&one_route(&up)).await;
    let mut b_count = 0;
    for _ in 0..300 {
        b_count += usize::from(get(proxy.addr, "/", &[]).await.origin() == "b");
    }
    // Expected 240 of 300; 180..=285 is more than 6 standard deviations wide.
    assert!(
        (180..=285).contains(&b_count),
        "b got {b_count} of 300, want about 240"
    );
    assert!(a.hits() > 0);
}

/// The statuses of `n` requests in a row.
async fn statuses(proxy: &Proxy, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get(proxy.addr, "/", &[]).await.status);
    }
    out
}

fn client(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))
}

async fn mapping(proxy: &Proxy, clients: std::ops::RangeInclusive<u8>) -> HashMap<u8, String> {
    let mut m = HashMap::new();
    for i in clients {
        m.insert(i, get_from(client(i), proxy.addr, "/", &[]).await.origin());
    }
    m
}

#[tokio::test]
async fn ip_hash_is_sticky_and_moves_only_the_clients_of_a_failed_peer() {
    let peers = [
        HttpOrigin::start("a").await,
        HttpOrigin::start("b").await,
        HttpOrigin::start("c").await,
    ];
    let up = format!(
        "    balance: ip_hash\n    peers: ['{}', '{}', '{}']\n{FAST_HEALTH}",
        peers[0].addr, peers[1].addr, peers[2].addr
    );
    let proxy = Proxy::start(&one_route(&up)).await;
    let before = mapping(&proxy, 2..=41).await;
    assert_eq!(
        mapping(&proxy, 2..=41).await,
        before,
        "every client keeps its peer"
    );
    let used: std::collections::HashSet<_> = before.values().collect();
    assert_eq!(
        used.len(),
        3,
        "40 clients spread over all 3 peers: {before:?}"
    );

    peers[2].set_health(503);
    let moved_client = *before.iter().find(|(_, p)| *p == "c").unwrap().0;
    eventually("c is marked down", || async {
        get_from(client(moved_client), proxy.addr, "/", &[])
            .await
            .origin()
            != "c"
    })
    .await;
    let after = mapping(&proxy, 2..=41).await;
    for (i, peer) in &before {
        if peer == "c" {
            assert_ne!(after[i], "c", "client {i} still sent to the down peer");
        } else {
            assert_eq!(
                &after[i], peer,
                "client {i} moved although its peer is healthy"
            );
        }
    }

    peers[2].set_health(200);
    eventually("c is back", || async {
        get_from(client(moved_client), proxy.addr, "/", &[])
            .await
            .origin()
            == "c"
    })
    .await;
    assert_eq!(
        mapping(&proxy, 2..=41).await,
        before,
        "the original mapping returns"
    );
}

/// X-Forwarded-For from a trusted proxy decides the hash: the client, not the proxy, is sticky.
#[tokio::test]
async fn ip_hash_uses_the_client_ip_behind_trusted_proxies() {
    let peers = [HttpOrigin::start("a").await, HttpOrigin::start("b").await];
    let up = format!(
        "    balance: ip_hash\n    peers: ['{}', '{}']\n",
        peers[0].addr, peers[1].addr
    );
    let proxy = Proxy::start(&format!("trusted_proxies: [127.0.0.1]\n{}", one_route(&up))).await;
    let mut seen = std::collections::HashSet::new();
    for i in 1..=40 {
        let xff = format!("198.51.100.{i}");
        let first = get(proxy.addr, "/", &[("X-Forwarded-For", &xff)])
            .await
            .origin();
        assert_eq!(
            get(proxy.addr, "/", &[("X-Forwarded-For", &xff)])
                .await
                .origin(),
            first
        );
        seen.insert(first);
    }
    assert_eq!(
        seen.len(),
        2,
        "different clients behind one proxy spread over peers"
    );
}

#[tokio::test]
async fn health_check_takes_a_peer_out_and_back() {
    let a = HttpOrigin::start("a").await;
    let b = HttpOrigin::start("b").await;
    let up = format!("    peers: ['{}', '{}']\n{FAST_HEALTH}", a.addr, b.addr);
    let proxy = Proxy::start(&one_route(&up)).await;
    b.set_health(500);
    eventually("b marked down", || async {
        let hits = b.hits();
        for _ in 0..4 {
            get(proxy.addr, "/", &[]).await;
        }
        b.hits() == hits
    })
    .await;
    for _ in 0..20 {
        assert_eq!(get(proxy.addr, "/", &[]).await.origin(), "a");
    }
    proxy.wait_for_log("becomes unhealthy").await;
    b.set_health(204); // any 2xx is healthy
    eventually("b back up", || async {
        get(proxy.addr, "/", &[]).await.origin() == "b"
    })
    .await;
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_peer() {
    let live = HttpOrigin::start("live").await;
    let dead = free_addr();
    let up = format!(
        "    peers: ['{dead}', '{}']\n    retries: 1\n    connect_timeout: 1s\n",
        live.addr
    );
    let proxy = Proxy::start(&one_route(&up)).await;
    for _ in 0..20 {
        let r = get(proxy.addr, "/", &[]).await;
        assert_eq!((r.status, r.origin()), (200, "live".to_owned()));
    }
}

/// Passive health (nginx's max_fails=1 fail_timeout=10s): without retries, one request pays
/// for the dead peer, then it is skipped.
#[tokio::test]
async fn without_retries_only_the_first_request_to_a_dead_peer_fails() {
    let live = HttpOrigin::start("live").await;
    let up = format!(
        "    peers: ['{}', '{}']\n    retries: 0\n",
        free_addr(),
        live.addr
    );
    let proxy = Proxy::start(&one_route(&up)).await;
    let statuses = statuses(&proxy, 10).await;
    // Which peer comes first depends on their addresses (Pingora orders backends), so the one
    // failure is the first or the second request, never later.
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses[2..].iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test]
async fn fail_timeout_zero_turns_passive_health_off() {
    let live = HttpOrigin::start("live").await;
    let up = format!(
        "    peers: ['{}', '{}']\n    retries: 0\n    fail_timeout: 0s\n",
        free_addr(),
        live.addr
    );
    let proxy = Proxy::start(&one_route(&up)).await;
    let statuses = statuses(&proxy, 10).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        5,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn passively_failed_peers_are_still_tried_when_nothing_else_is_left() {
    let a = HttpOrigin::start("a").await;
    let dead = free_addr();
    // The only peer fails once, then comes back: it must be used again at once, not in 10s.
    let up = format!("    peers: ['{dead}']\n    retries: 0\n");
    let proxy = Proxy::start(&one_route(&up)).await;
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 502);
    drop(a);
    let back = HttpOrigin::start_on("back", dead).await;
    assert_eq!(get(proxy.addr, "/", &[]).await.origin(), "back");
    assert_eq!(back.hits(), 1);
}

#[tokio::test]
async fn all_peers_dead_is_502_at_once() {
    let up = format!(
        "    peers: ['{}', '{}']\n    retries: 1\n",
        free_addr(),
        free_addr()
    );
    let proxy = Proxy::start(&one_route(&up)).await;
    let started = Instant::now();
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 502);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn all_peers_unhealthy_is_503_at_once() {
    let a = HttpOrigin::start("a").await;
    a.set_health(500);
    let up = format!("    peers: ['{}']\n{FAST_HEALTH}", a.addr);
    let proxy = Proxy::start(&one_route(&up)).await;
    eventually("a marked down", || async {
        get(proxy.addr, "/", &[]).await.status == 503
    })
    .await;
    let started = Instant::now();
    let r = get(proxy.addr, "/", &[]).await;
    assert_eq!(r.status, 503);
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// least_conn counts open upgraded connections: once x's two close, the next two new
/// connections both go to x (round robin would split them).
#[tokio::test]
async fn least_conn_sends_new_connections_to_the_least_busy_peer() {
    let x = WsOrigin::start("x").await;
    let y = WsOrigin::start("y").await;
    let up = format!(
        "    balance: least_conn\n    peers: ['{}', '{}']\n",
        x.addr, y.addr
    );
    let proxy = Proxy::start(&one_route(&up)).await;
    let mut held: HashMap<String, Vec<Ws>> = HashMap::new();
    for _ in 0..4 {
        let (mut ws, _) = ws_connect(proxy.addr, "/", &[]).await.unwrap();
        held.entry(whoami(&mut ws).await).or_default().push(ws);
    }
    assert_eq!((held["x"].len(), held["y"].len()), (2, 2));
    for mut ws in held.remove("x").unwrap() {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    let closed_on_x = format!("peer={} ", x.addr);
    let closed = || {
        proxy
            .logs()
            .lines()
            .filter(|l| l.contains(&closed_on_x) && l.contains(" upgraded"))
            .count()
    };
    eventually("x's tunnels are closed", || async { closed() == 2 }).await;
    for _ in 0..2 {
        let (mut ws, _) = ws_connect(proxy.addr, "/", &[]).await.unwrap();
        assert_eq!(whoami(&mut ws).await, "x");
        held.entry("x".into()).or_default().push(ws);
    }
}

#[tokio::test]
async fn tcp_health_check_notices_a_closed_port() {
    let a = HttpOrigin::start("a").await;
    let b = HttpOrigin::start("b").await;
    let up = format!(
        "    peers: ['{}', '{}']\n    retries: 0\n    health_check: {{type: tcp, interval: 100ms, timeout: 500ms, unhealthy_threshold: 1}}\n",
        a.addr, b.addr
    );
    let proxy = Proxy::start(&one_route(&up)).await;
    drop(b); // its listener closes: connects are refused from now on
    proxy.wait_for_log("becomes unhealthy").await;
    for _ in 0..20 {
        let r = get(proxy.addr, "/", &[]).await;
        assert_eq!(
            (r.status, r.origin()),
            (200, "a".to_owned()),
            "with retries: 0 only health keeps b out"
        );
    }
}

/// Scale-out: two instances with the same config (behind an L4 balancer, say) send each client
/// to the same peer, so stickiness survives a client landing on the other instance.
#[tokio::test]
async fn ip_hash_agrees_across_instances() {
    let peers = [
        HttpOrigin::start("a").await,
        HttpOrigin::start("b").await,
        HttpOrigin::start("c").await,
    ];
    let up = format!(
        "    balance: ip_hash\n    peers: ['{}', '{}', '{}']\n",
        peers[0].addr, peers[1].addr, peers[2].addr
    );
    let first = Proxy::start(&one_route(&up)).await;
    let second = Proxy::start(&one_route(&up)).await;
    let on_first = mapping(&first, 2..=41).await;
    let on_second = mapping(&second, 2..=41).await;
    assert_eq!(on_first, on_second);
    assert_eq!(
        on_first
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3
    );
}
