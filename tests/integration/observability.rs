//! The admin listener and the access log: /metrics counters move as traffic says (parsed, not
//! grepped), /healthz turns 503 while draining, /status follows peer health.

use crate::harness::*;
use crate::origins::{HttpOrigin, WsOrigin};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// One scrape: `name{sorted labels}` -> value, from the text exposition format.
struct Scrape(HashMap<String, f64>);

impl Scrape {
    async fn take(admin: SocketAddr) -> Scrape {
        let r = get(admin, "/metrics", &[]).await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
        let mut map = HashMap::new();
        for line in r
            .text()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            map.insert(normalize(series), value);
        }
        Scrape(map)
    }

    /// The value of `name` with exactly these labels; 0 when the series does not exist yet.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        l.sort();
        let key = if l.is_empty() {
            name.to_owned()
        } else {
            format!("{name}{{{}}}", l.join(","))
        };
        self.0.get(&key).copied().unwrap_or(0.0)
    }
}

fn normalize(series: &str) -> String {
    match series.split_once('{') {
        None => series.to_owned(),
        Some((name, rest)) => {
            let inner = rest.trim_end_matches('}');
            let mut labels: Vec<&str> = if inner.is_empty() {
                vec![]
            } else {
                inner.split(',').collect()
            };
            labels.sort();
            format!("{name}{{{}}}", labels.join(","))
        }
    }
}

async fn observed_proxy(extra: &str, http: &HttpOrigin, ws: &WsOrigin) -> (Proxy, SocketAddr) {
    let admin = proxy_addr();
    let proxy = Proxy::start(&format!(
        "admin: {{address: '{admin}'}}\n{extra}upstreams:\n  app:\n    peers: ['{}']\n    health_check: {{path: /healthz, interval: 100ms, healthy_threshold: 1, unhealthy_threshold: 1}}\n  echo: {{peers: ['{}']}}\nroutes:\n  - {{name: web, path_prefix: /, upstream: app}}\n  - {{name: ws, path_prefix: /ws/, upstream: echo}}\n  - {{name: locked, path_prefix: /locked/, upstream: app, websocket: {{enabled: false}}}}\n",
        http.addr, ws.addr
    ))
    .await;
    (proxy, admin)
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let (http, ws) = (HttpOrigin::start("a").await, WsOrigin::start("echo").await);
    let (proxy, admin) = observed_proxy("", &http, &ws).await;
    let before = Scrape::take(admin).await;
    for _ in 0..5 {
        assert_eq!(get(proxy.addr, "/x", &[]).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(proxy.addr, "/status/503", &[]).await.status, 503);
    }
    let rejected = ws_connect(proxy.addr, "/locked/", &[]).await;
    assert!(rejected.is_err());
    let (mut sock, _) = ws_connect(proxy.addr, "/ws/", &[]).await.unwrap();
    sock.send(Message::text("12345")).await.unwrap();
    sock.next().await.unwrap().unwrap();
    let during = Scrape::take(admin).await;
    sock.close(None).await.unwrap();
    while let Some(Ok(_)) = sock.next().await {}
    eventually("the tunnel's request is logged", || async {
        Scrape::take(admin).await.get(
            "portico_websockets_open",
            &[("route", "ws"), ("upstream", "echo")],
        ) == 0.0
    })
    .await;
    let after = Scrape::take(admin).await;

    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(
        delta(
            "portico_requests_total",
            &[("route", "web"), ("upstream", "app"), ("class", "2xx")]
        ),
        5.0
    );
    assert_eq!(
        delta(
            "portico_requests_total",
            &[("route", "web"), ("upstream", "app"), ("class", "5xx")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "portico_request_duration_seconds_count",
            &[("route", "web")]
        ),
        7.0
    );
    assert_eq!(
        delta(
            "portico_rejections_total",
            &[("route", "locked"), ("reason", "websocket_disabled")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "portico_websocket_upgrades_total",
            &[("route", "locked"), ("outcome", "rejected")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "portico_websocket_upgrades_total",
            &[("route", "ws"), ("outcome", "upgraded")]
        ),
        1.0
    );
    assert_eq!(
        during.get(
            "portico_websockets_open",
            &[("route", "ws"), ("upstream", "echo")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "portico_requests_total",
            &[("route", "ws"), ("upstream", "echo"), ("class", "1xx")]
        ),
        1.0
    );
    assert!(delta("portico_downstream_sent_bytes_total", &[("route", "web")]) > 0.0);
    assert!(
        delta(
            "portico_downstream_received_bytes_total",
            &[("route", "ws")]
        ) >= 11.0,
        "a masked 5-byte text frame is 11 bytes"
    );
    assert!(
        delta(
            "portico_upstream_connect_duration_seconds_count",
            &[("upstream", "app")]
        ) >= 7.0
    );
    assert_eq!(
        after.get(
            "portico_peer_up",
            &[("upstream", "app"), ("peer", &http.addr.to_string())]
        ),
        1.0
    );
    assert!(
        after.get(
            "portico_health_checks_total",
            &[("upstream", "app"), ("result", "ok")]
        ) >= 1.0
    );
    assert_eq!(after.get("portico_requests_in_flight", &[]), 0.0);
}

#[tokio::test]
async fn reloads_are_counted() {
    let (http, ws) = (HttpOrigin::start("a").await, WsOrigin::start("echo").await);
    let (proxy, admin) = observed_proxy("", &http, &ws).await;
    proxy.signal("HUP");
    eventually("the reload is counted", || async {
        Scrape::take(admin)
            .await
            .get("portico_reloads_total", &[("outcome", "applied")])
            == 1.0
    })
    .await;
    std::fs::write(&proxy.conf, "not: [valid").unwrap();
    proxy.signal("HUP");
    eventually("the refusal is counted", || async {
        Scrape::take(admin)
            .await
            .get("portico_reloads_total", &[("outcome", "refused")])
            == 1.0
    })
    .await;
}

#[tokio::test]
async fn healthz_turns_503_while_draining() {
    let (http, ws) = (HttpOrigin::start("a").await, WsOrigin::start("echo").await);
    let (mut proxy, admin) = observed_proxy("", &http, &ws).await;
    let r = get(admin, "/healthz", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    proxy.signal("TERM");
    eventually("/healthz says draining", || async {
        get(admin, "/healthz", &[]).await.status == 503
    })
    .await;
    let status: serde_json::Value =
        serde_json::from_slice(&get(admin, "/status", &[]).await.body).unwrap();
    assert_eq!(status["draining"], true);
    proxy
        .wait_exit(std::time::Duration::from_secs(5))
        .await
        .expect("exits after the grace period");
}

#[tokio::test]
async fn status_shows_config_and_peer_health() {
    let (http, ws) = (HttpOrigin::start("a").await, WsOrigin::start("echo").await);
    let (proxy, admin) = observed_proxy("", &http, &ws).await;
    let status = || async {
        serde_json::from_slice::<serde_json::Value>(&get(admin, "/status", &[]).await.body).unwrap()
    };
    let s = status().await;
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(std::fs::read(&proxy.conf).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(s["config"]["sha256"], sha);
    assert_eq!(
        s["upstreams"]["app"]["peers"][0]["address"],
        http.addr.to_string()
    );
    assert_eq!(s["upstreams"]["app"]["peers"][0]["healthy"], true);
    // Balances as the file spells them, and what each route matches.
    assert_eq!(s["upstreams"]["app"]["balance"], "round_robin");
    assert_eq!(
        s["routes"][1],
        serde_json::json!({"name": "ws", "host": "*", "path_prefix": "/ws/", "upstream": "echo"})
    );
    // The admin listener's `/` lists its endpoints.
    let index = get(admin, "/", &[]).await;
    assert_eq!(index.status, 200);
    for endpoint in ["/metrics", "/healthz", "/status"] {
        assert!(index.text().contains(endpoint), "{}", index.text());
    }
    http.set_health(500);
    eventually("/status shows the peer down", || async {
        status().await["upstreams"]["app"]["peers"][0]["healthy"] == false
    })
    .await;
    let m = Scrape::take(admin).await;
    assert_eq!(
        m.get(
            "portico_peer_up",
            &[("upstream", "app"), ("peer", &http.addr.to_string())]
        ),
        0.0
    );
    assert!(
        m.get(
            "portico_health_checks_total",
            &[("upstream", "app"), ("result", "failed")]
        ) >= 1.0
    );
    assert_eq!(get(admin, "/nope", &[]).await.status, 404);
}

#[tokio::test]
async fn json_access_log_has_one_line_per_request_and_per_tunnel() {
    let (http, ws) = (HttpOrigin::start("a").await, WsOrigin::start("echo").await);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (proxy, _admin) = observed_proxy(
        &format!("access_log: {{format: json, path: '{}'}}\n", log.display()),
        &http,
        &ws,
    )
    .await;
    get(
        proxy.addr,
        "/page?q=1",
        &[("User-Agent", "tester/1"), ("X-Forwarded-For", "6.6.6.6")],
    )
    .await;
    let (mut sock, _) = ws_connect(proxy.addr, "/ws/", &[]).await.unwrap();
    sock.send(Message::text("hi")).await.unwrap();
    sock.next().await.unwrap().unwrap();
    sock.close(None).await.unwrap();
    while let Some(Ok(_)) = sock.next().await {}
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually("two access-log lines", || async {
        lines().lines().count() == 2
    })
    .await;
    let entries: Vec<serde_json::Value> = lines()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let page = &entries[0];
    assert_eq!(page["uri"], "/page?q=1");
    assert_eq!(page["status"], 200);
    assert_eq!(
        page["client"], "127.0.0.1",
        "the resolved client, not the spoofed header"
    );
    assert_eq!(page["route"], "web");
    assert_eq!(page["peer"], http.addr.to_string());
    assert_eq!(page["user_agent"], "tester/1");
    assert_eq!(page["upgraded"], false);
    let tunnel = &entries[1];
    assert_eq!(
        (tunnel["status"].as_u64(), tunnel["upgraded"].as_bool()),
        (Some(101), Some(true))
    );
    assert!(
        tunnel["bytes_received"].as_u64().unwrap() > 0
            && tunnel["bytes_sent"].as_u64().unwrap() > 0
    );
    assert_eq!(
        (&tunnel["method"], &tunnel["uri"], &tunnel["route"]),
        (&"GET".into(), &"/ws/".into(), &"ws".into())
    );
    assert_eq!(tunnel["upstream"], "echo");
    assert_eq!(tunnel["peer"], ws.addr.to_string());
    assert!(
        !proxy.logs().contains("/page?q=1"),
        "the access log went to its file only"
    );
}

/// `format: off` writes no line (nginx's `access_log off`); metrics still count.
#[tokio::test]
async fn access_log_off_writes_nothing() {
    let (http, ws) = (HttpOrigin::start("a").await, WsOrigin::start("echo").await);
    let (proxy, admin) = observed_proxy("access_log: {format: off}\n", &http, &ws).await;
    assert_eq!(get(proxy.addr, "/silent-page", &[]).await.status, 200);
    eventually("the request is counted", || async {
        Scrape::take(admin).await.get(
            "portico_requests_total",
            &[("route", "web"), ("upstream", "app"), ("class", "2xx")],
        ) >= 1.0
    })
    .await;
    // The writer drains every 10 ms: twenty times that and still no line.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!proxy.logs().contains("/silent-page"), "{}", proxy.logs());
}

#[tokio::test]
async fn retries_are_counted() {
    let live = HttpOrigin::start("live").await;
    let admin = proxy_addr();
    let proxy = Proxy::start(&format!(
        "admin: {{address: '{admin}'}}\nupstreams:\n  app: {{peers: ['{}', '{}'], retries: 1}}\nroutes:\n  - {{upstream: app}}\n",
        free_addr(),
        live.addr
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
    }
    // The first request finds the dead peer and retries; passive health then skips it.
    assert_eq!(
        Scrape::take(admin)
            .await
            .get("portico_retries_total", &[("upstream", "app")]),
        1.0
    );
}
