//! Affinity beyond the client IP: `balance: hash` on a header, cookie, query parameter or the
//! path (consistent across instances; one chat room on one peer), sticky cookies (kept across
//! requests and upgrades, moved and re-set when the peer fails, forged ids ignored), and a
//! peer that passes an active health check back in at once inside its fail_timeout.

use crate::harness::*;
use crate::origins::{HttpOrigin, WsOrigin};
use std::collections::{HashMap, HashSet};

fn group(balance: &str, peers: &[std::net::SocketAddr], extra: &str) -> String {
    let list: Vec<String> = peers.iter().map(|a| format!("'{a}'")).collect();
    format!(
        "upstreams:\n  app:\n    {balance}\n    peers: [{}]\n{extra}routes:\n  - {{path_prefix: /, upstream: app}}\n",
        list.join(", ")
    )
}

/// Which origin served a request with `headers` and `path`.
async fn served(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> String {
    let r = get(proxy.addr, path, headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.origin()
}

#[tokio::test]
async fn hash_keys_agree_across_instances_and_fall_back_to_the_client_ip() {
    let origins = [
        HttpOrigin::start("a").await,
        HttpOrigin::start("b").await,
        HttpOrigin::start("c").await,
    ];
    let addrs: Vec<_> = origins.iter().map(|o| o.addr).collect();
    for (key, send) in [
        ("{header: X-Tenant}", "header"),
        ("{cookie: session}", "cookie"),
        ("{query: room}", "query"),
        ("path", "path"),
    ] {
        let body = group("balance: hash", &addrs, &format!("    hash_key: {key}\n"));
        let (one, two) = (Proxy::start(&body).await, Proxy::start(&body).await);
        let mut picks = HashMap::new();
        for i in 0..30 {
            let k = format!("key-{i}");
            let (path, headers): (String, Vec<(&str, String)>) = match send {
                "header" => ("/".into(), vec![("X-Tenant", k.clone())]),
                "cookie" => ("/".into(), vec![("Cookie", format!("a=1; session={k}"))]),
                "query" => (format!("/x?room={k}&n=1"), vec![]),
                _ => (format!("/{k}"), vec![]),
            };
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let first = served(&one, &path, &headers).await;
            assert_eq!(
                first,
                served(&one, &path, &headers).await,
                "{send} {k} moved"
            );
            assert_eq!(
                first,
                served(&two, &path, &headers).await,
                "{send} {k}: the instances disagree"
            );
            picks.insert(k, first);
        }
        let used: HashSet<_> = picks.values().collect();
        assert_eq!(used.len(), 3, "{send}: 30 keys over 3 peers: {picks:?}");
    }
    // No key: the client IP decides (one client, one peer).
    let body = group(
        "balance: hash",
        &addrs,
        "    hash_key: {header: X-Tenant}\n",
    );
    let proxy = Proxy::start(&body).await;
    let src = "127.0.0.7".parse().unwrap();
    let first = get_from(src, proxy.addr, "/", &[]).await.origin();
    for _ in 0..5 {
        assert_eq!(get_from(src, proxy.addr, "/", &[]).await.origin(), first);
    }
}

/// A chat room on one backend: every participant of `?room=blue`, WebSocket or not, on the
/// same peer; other rooms spread.
#[tokio::test]
async fn one_room_one_peer_for_twenty_websockets() {
    let origins = [
        WsOrigin::start("w1").await,
        WsOrigin::start("w2").await,
        WsOrigin::start("w3").await,
    ];
    let addrs: Vec<_> = origins.iter().map(|o| o.addr).collect();
    let proxy = Proxy::start(&group(
        "balance: hash",
        &addrs,
        "    hash_key: {query: room}\n",
    ))
    .await;
    let mut blue = Vec::new();
    let mut peers = HashSet::new();
    for i in 0..20 {
        let (mut ws, _) = ws_connect(proxy.addr, &format!("/chat?room=blue&user={i}"), &[])
            .await
            .unwrap();
        peers.insert(whoami(&mut ws).await);
        blue.push(ws);
    }
    assert_eq!(peers.len(), 1, "room blue spread over {peers:?}");
    let mut others = HashSet::new();
    for room in 0..30 {
        let (mut ws, _) = ws_connect(proxy.addr, &format!("/chat?room=r{room}"), &[])
            .await
            .unwrap();
        others.insert(whoami(&mut ws).await);
    }
    assert_eq!(others.len(), 3, "30 rooms over 3 peers: {others:?}");
}

fn set_cookie(r: &Resp) -> Option<String> {
    r.header("set-cookie").map(str::to_owned)
}

/// The cookie's `name=value` from a `Set-Cookie`.
fn pair(set: &str) -> String {
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_sticky_cookie_keeps_its_peer_moves_when_it_fails_and_ignores_forgeries() {
    let mut origins = vec![
        WsOrigin::start("a").await,
        WsOrigin::start("b").await,
        WsOrigin::start("c").await,
    ];
    let addrs: Vec<_> = origins.iter().map(|o| o.addr).collect();
    let body = group(
        "balance: round_robin",
        &addrs,
        "    sticky: {cookie: srv, max_age: 1h, same_site: strict}\n",
    );
    let proxy = Proxy::start(&body).await;
    let second = Proxy::start(&body).await;
    // The first answer pins (the echo origins answer a plain GET with 426: still an answer).
    let r = get(proxy.addr, "/", &[]).await;
    let set = set_cookie(&r).expect("the first answer sets the cookie");
    assert!(
        set.contains("Max-Age=3600") && set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains("Secure"),
        "plain HTTP: no Secure with auto: {set}"
    );
    let cookie = pair(&set);
    assert!(
        !addrs
            .iter()
            .any(|a| cookie.contains(&a.to_string()) || cookie.contains(&a.port().to_string())),
        "the id is not the address: {cookie}"
    );
    // Requests and an upgrade with it: one peer, every time, on either instance; no new cookie.
    let mut seen = HashSet::new();
    for p in [&proxy, &second] {
        for _ in 0..6 {
            let r = get(p.addr, "/", &[("Cookie", &cookie)]).await;
            assert_eq!(set_cookie(&r), None);
        }
        let (mut ws, resp) = ws_connect(p.addr, "/", &[("Cookie", &cookie)])
            .await
            .unwrap();
        assert!(resp.headers().get("set-cookie").is_none());
        seen.insert(whoami(&mut ws).await);
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    let pinned = seen.into_iter().next().unwrap();
    // A forged or stale id is ignored: served, and given a real cookie.
    for forged in ["srv=0000000000000000", "srv=../../etc", "srv="] {
        let (mut ws, resp) = ws_connect(proxy.addr, "/", &[("Cookie", forged)])
            .await
            .unwrap();
        let set = resp
            .headers()
            .get("set-cookie")
            .expect("a 101 re-pins")
            .to_str()
            .unwrap()
            .to_owned();
        assert!(set.starts_with("srv=") && pair(&set) != forged, "{set}");
        let again = ws_connect(proxy.addr, "/", &[("Cookie", &pair(&set))])
            .await
            .unwrap();
        assert!(again.1.headers().get("set-cookie").is_none());
        drop(whoami(&mut ws).await);
    }
    // The pinned peer dies: the next request goes elsewhere and re-pins there, for good.
    let i = origins.iter().position(|o| o.name == pinned).unwrap();
    drop(origins.remove(i));
    let (mut ws, resp) = ws_connect(proxy.addr, "/", &[("Cookie", &cookie)])
        .await
        .unwrap();
    let moved = whoami(&mut ws).await;
    assert_ne!(moved, pinned);
    let set = resp
        .headers()
        .get("set-cookie")
        .expect("re-pinned")
        .to_str()
        .unwrap()
        .to_owned();
    for _ in 0..4 {
        let (mut ws, resp) = ws_connect(proxy.addr, "/", &[("Cookie", &pair(&set))])
            .await
            .unwrap();
        assert!(resp.headers().get("set-cookie").is_none());
        assert_eq!(whoami(&mut ws).await, moved);
    }
}

/// A peer whose connect failed is out for fail_timeout (1h here); once it passes an active
/// health check it serves again at once.
#[tokio::test]
async fn a_peer_that_passes_a_health_check_is_back_inside_its_fail_timeout() {
    let live = HttpOrigin::start("live").await;
    let back_addr = free_addr();
    let body = group(
        "balance: round_robin",
        &[live.addr, back_addr],
        "    fail_timeout: 1h
    health_check: {type: tcp, interval: 100ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 100}
",
    );
    let proxy = Proxy::start(&body).await;
    // Requests fail over from the dead peer, which is then kept out.
    for _ in 0..4 {
        assert_eq!(served(&proxy, "/", &[]).await, "live");
    }
    let back = HttpOrigin::start_on("back", back_addr).await;
    eventually("the restarted peer serves again", || async {
        served(&proxy, "/", &[]).await == "back"
    })
    .await;
    assert!(back.hits() >= 1);
}
