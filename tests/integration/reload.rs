//! SIGHUP: the new file is swapped in atomically; a bad one keeps the old config serving.

use crate::harness::*;
use crate::origins::HttpOrigin;

fn routed_to(upstream: &str, a: &HttpOrigin, b: &HttpOrigin) -> String {
    format!(
        "upstreams:\n  one: {{peers: ['{}']}}\n  two: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /, upstream: {upstream}}}\n",
        a.addr, b.addr
    )
}

#[tokio::test]
async fn sighup_swaps_the_config_and_a_bad_file_keeps_the_old_one() {
    let a = HttpOrigin::start("a").await;
    let b = HttpOrigin::start("b").await;
    let mut proxy = Proxy::start(&routed_to("one", &a, &b)).await;
    assert_eq!(get(proxy.addr, "/", &[]).await.origin(), "a");

    proxy.rewrite(&routed_to("two", &a, &b));
    proxy.signal("HUP");
    eventually("the route moves to b", || async {
        get(proxy.addr, "/", &[]).await.origin() == "b"
    })
    .await;
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(std::fs::read(&proxy.conf).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    proxy
        .wait_for_log(&format!(
            "configuration reloaded from {} (sha256 {sha})",
            proxy.conf.display()
        ))
        .await;

    proxy.rewrite("upstreams: {}\nroutes:\n  - {upstream: nowhere}\n");
    proxy.signal("HUP");
    proxy
        .wait_for_log("routes[0].upstream: unknown upstream \"nowhere\"")
        .await;
    assert!(proxy.is_running());
    for _ in 0..10 {
        assert_eq!(
            get(proxy.addr, "/", &[]).await.origin(),
            "b",
            "the old config still serves"
        );
    }
}

#[tokio::test]
async fn a_listener_change_on_reload_is_refused() {
    let a = HttpOrigin::start("a").await;
    let b = HttpOrigin::start("b").await;
    let mut proxy = Proxy::start(&routed_to("one", &a, &b)).await;
    let conf = std::fs::read_to_string(&proxy.conf).unwrap();
    let moved = conf
        .replace(&proxy.addr.to_string(), &proxy_addr().to_string())
        .replace("upstream: one", "upstream: two");
    std::fs::write(&proxy.conf, moved).unwrap();
    proxy.signal("HUP");
    proxy
        .wait_for_log("listeners: cannot change on reload")
        .await;
    assert!(proxy.is_running());
    assert_eq!(
        get(proxy.addr, "/", &[]).await.origin(),
        "a",
        "nothing of the refused file applied"
    );
}

/// A group a reload adds is probed before the swap: its down peer never gets a request, even
/// with `retries: 0` and an hour between regular checks.
#[tokio::test]
async fn a_new_group_is_health_checked_before_it_serves() {
    let a = HttpOrigin::start("a").await;
    let good = HttpOrigin::start("good").await;
    let bad = HttpOrigin::start("bad").await;
    bad.set_health(503);
    let proxy = Proxy::start(&format!(
        "upstreams:\n  one: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /, upstream: one}}\n",
        a.addr
    ))
    .await;
    proxy.rewrite(&format!(
        "upstreams:\n  one: {{peers: ['{}']}}\n  fresh:\n    peers: ['{}', '{}']\n    retries: 0\n    health_check: {{path: /healthz, interval: 1h, unhealthy_threshold: 1}}\nroutes:\n  - {{path_prefix: /, upstream: fresh}}\n",
        a.addr, bad.addr, good.addr
    ));
    proxy.signal("HUP");
    eventually("the new group serves", || async {
        get(proxy.addr, "/", &[]).await.origin() != "a"
    })
    .await;
    for _ in 0..10 {
        assert_eq!(get(proxy.addr, "/", &[]).await.origin(), "good");
    }
    assert_eq!(bad.hits(), 0, "the down peer of the new group got requests");
}

/// A reload that leaves a group as it was keeps that group's health state: a peer found down
/// stays out at once after the reload, instead of starting healthy again and taking requests
/// until its checks fail anew (its checks run only hourly here).
#[tokio::test]
async fn a_reload_keeps_unchanged_groups_health() {
    let down = HttpOrigin::start("down").await;
    let up = HttpOrigin::start("up").await;
    let other = HttpOrigin::start("other").await;
    down.set_health(503);
    let group = format!(
        "  app:\n    peers: ['{}', '{}']\n    retries: 0\n    health_check: {{path: /healthz, interval: 1h, unhealthy_threshold: 1}}\n",
        down.addr, up.addr
    );
    let body = |extra: &str| {
        format!(
            "upstreams:\n{group}  side: {{peers: ['{}']{extra}}}\nroutes:\n  - {{path_prefix: /, upstream: app}}\n  - {{path_prefix: /side/, upstream: side}}\n",
            other.addr
        )
    };
    let proxy = Proxy::start(&body("")).await;
    // The first check (at start) finds `down` down: every request goes to `up`.
    eventually("the down peer is out", || async {
        let mut all_up = true;
        for _ in 0..4 {
            all_up &= get(proxy.addr, "/", &[]).await.origin() == "up";
        }
        all_up
    })
    .await;
    let hits = down.hits();
    // Only the other group changes.
    proxy.rewrite(&body(", retries: 2"));
    proxy.signal("HUP");
    proxy.wait_for_log("configuration reloaded").await;
    for _ in 0..10 {
        assert_eq!(get(proxy.addr, "/", &[]).await.origin(), "up");
    }
    assert_eq!(
        down.hits(),
        hits,
        "the down peer got requests after the reload"
    );
}
