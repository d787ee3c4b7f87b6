//! WebSocket upgrades as a hostile client and a misbehaving origin try them, idle connections
//! over long periods, and the drain: 1001 close frames both ways, exit once nothing is open.

use crate::harness::*;
use crate::origins::{HttpOrigin, WsOrigin};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade_request(path: &str, extra: &[(&str, &str)]) -> String {
    let mut headers = vec![
        ("Host", "test.local"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ];
    for (k, v) in extra {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
        if !v.is_empty() {
            headers.push((k, v));
        }
    }
    let mut text = format!("GET {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    text
}

/// A client that gets the handshake wrong: each is answered by portico, no peer is contacted.
#[tokio::test]
async fn malformed_upgrades_are_refused_before_any_peer() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start(&one_route(origin.addr)).await;
    let cases: Vec<(String, u16)> = vec![
        (upgrade_request("/", &[("Sec-WebSocket-Key", "")]), 400),
        (
            upgrade_request("/", &[("Sec-WebSocket-Key", "c2hvcnQ=")]),
            400,
        ),
        (upgrade_request("/", &[("Connection", "keep-alive")]), 400),
        (upgrade_request("/", &[("Sec-WebSocket-Version", "8")]), 426),
        (upgrade_request("/", &[("Sec-WebSocket-Version", "")]), 426),
        (
            upgrade_request("/", &[("Content-Length", "5")]).replace("\r\n\r\n", "\r\n\r\nhello"),
            400,
        ),
        (upgrade_request("/", &[]).replacen("GET", "POST", 1), 400),
    ];
    for (raw, want) in cases {
        let (r, _) = send_one(proxy.addr, &raw).await;
        assert_eq!(r.status, want, "{raw}");
        if want == 426 {
            assert_eq!(r.header("sec-websocket-version"), Some("13"));
        }
    }
    assert_eq!(origin.hits(), 0, "a malformed upgrade reached the origin");
    // And the proxy serves on.
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
}

/// A known bypass in another Pingora proxy: `Upgrade: x` skipped authentication.
#[tokio::test]
async fn any_upgrade_value_meets_the_routes_auth() {
    let origin = HttpOrigin::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "t0k3n\n").unwrap();
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{upstream: app, auth: {{bearer_tokens_file: '{}'}}}}\n",
        origin.addr,
        tokens.display()
    ))
    .await;
    for upgrade in ["x", "h2c", "websocket, x", "WebSocket"] {
        let (r, _) = send_one(proxy.addr, &upgrade_request("/", &[("Upgrade", upgrade)])).await;
        assert_eq!(r.status, 401, "Upgrade: {upgrade}");
    }
    assert_eq!(origin.hits(), 0);
}

/// WebSocket smuggling: the origin answers 200 to an upgrade and the client pipelines a second
/// request behind it, hoping for a raw tunnel past the routing and auth of `/admin/`.
#[tokio::test]
async fn a_refused_upgrade_is_never_a_tunnel() {
    let origin = HttpOrigin::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "t0k3n\n").unwrap();
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /, upstream: app}}\n  - {{path_prefix: /admin/, upstream: app, auth: {{bearer_tokens_file: '{}'}}}}\n",
        origin.addr,
        tokens.display()
    ))
    .await;
    let mut stream = connect(proxy.addr, None).await;
    stream
        .write_all(upgrade_request("/ws", &[]).as_bytes())
        .await
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut first))
        .await
        .unwrap()
        .unwrap();
    // The second request goes out after the 200 arrived, as an attacker with a raw socket would.
    let _ = stream
        .write_all(b"GET /admin/secret HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut rest))
        .await
        .expect("the connection was left open");
    let mut all = first[..n].to_vec();
    all.extend_from_slice(&rest);
    let r = parse_response(&all).unwrap();
    assert_eq!(r.status, 200, "the origin's answer is relayed");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.json()["path"], "/ws");
    let body_len: usize = r.header("content-length").unwrap().parse().unwrap();
    assert_eq!(r.body.len(), body_len);
    assert!(
        r.trailing.is_empty(),
        "something follows the response on that connection: {:?}",
        String::from_utf8_lossy(&r.trailing)
    );
    assert_eq!(origin.hits(), 1, "the smuggled request reached the origin");
}

#[tokio::test]
async fn subprotocol_and_extension_offers_reach_the_peer_untouched() {
    let origin = WsOrigin::start("echo").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  echo: {{peers: ['{}']}}\nroutes:\n  - {{upstream: echo}}\n",
        origin.addr
    ))
    .await;
    let ext = "permessage-deflate; client_max_window_bits";
    let (mut ws, resp) = ws_connect(
        proxy.addr,
        "/",
        &[
            ("Sec-WebSocket-Extensions", ext),
            ("Sec-WebSocket-Protocol", "v2.chat, v1.chat"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "v2.chat");
    ws.send(Message::text("headers")).await.unwrap();
    let seen: Vec<(String, String)> =
        serde_json::from_str(&ws.next().await.unwrap().unwrap().into_text().unwrap()).unwrap();
    let get = |k: &str| {
        seen.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("sec-websocket-extensions").as_deref(), Some(ext));
    assert_eq!(
        get("sec-websocket-protocol").as_deref(),
        Some("v2.chat, v1.chat")
    );
}

/// Only `websocket.idle_timeout` ends a quiet tunnel: none of the HTTP timers (the peer's
/// read_timeout, header, keep-alive and send timeouts, all 1 s here) nor Pingora's 60 s
/// downstream read timeout (the tunnel runs outside Pingora's session) applies. Four seconds
/// idle is four of every such timer.
#[tokio::test]
async fn an_idle_websocket_outlives_every_timer_but_its_own() {
    let origin = WsOrigin::start("echo").await;
    let proxy = Proxy::start_with_server(
        "header_timeout: 1s, keepalive_timeout: 1s, send_timeout: 1s",
        &format!(
            "upstreams:\n  echo: {{peers: ['{}'], read_timeout: 1s, connect_timeout: 1s}}\nroutes:\n  - {{upstream: echo, websocket: {{idle_timeout: 30s}}}}\n",
            origin.addr
        ),
    )
    .await;
    let (mut ws, _) = ws_connect(proxy.addr, "/", &[]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await; // the idle period under test
    ws.send(Message::text("after 4 s")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("after 4 s")
    );
}

/// The idle timeout means no byte either way: a peer that talks keeps a silent client's
/// connection open, and the connection closes once both are quiet.
#[tokio::test]
async fn idle_timeout_counts_traffic_in_either_direction() {
    let origin = WsOrigin::start("echo").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  echo: {{peers: ['{}']}}\nroutes:\n  - {{upstream: echo, websocket: {{idle_timeout: 1s}}}}\n",
        origin.addr
    ))
    .await;
    let (mut ws, _) = ws_connect(proxy.addr, "/", &[]).await.unwrap();
    ws.send(Message::text("tick:8:300")).await.unwrap(); // 2.4 s of server-only traffic
    for i in 0..8 {
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("tick {i}"))
        );
    }
    let quiet = Instant::now();
    let end = tokio::time::timeout(IO_TIMEOUT, ws.next())
        .await
        .expect("never closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "closed {:?} after the last byte",
        quiet.elapsed()
    );
}

/// At the end of the grace period both sides get a 1001 close, so both know to reconnect.
#[tokio::test]
async fn draining_closes_websockets_with_1001_both_ways() {
    let origin = WsOrigin::start("echo").await;
    let mut proxy = Proxy::start_with_grace(
        "2s",
        &format!(
            "upstreams:\n  echo: {{peers: ['{}']}}\nroutes:\n  - {{upstream: echo}}\n",
            origin.addr
        ),
    )
    .await;
    let (mut ws, _) = ws_connect(proxy.addr, "/", &[]).await.unwrap();
    proxy.signal("TERM");
    let signalled = Instant::now();
    ws.send(Message::text("during the grace period"))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("during the grace period")
    );
    let msg = tokio::time::timeout(IO_TIMEOUT, ws.next())
        .await
        .expect("no close frame")
        .unwrap()
        .unwrap();
    match msg {
        Message::Close(Some(f)) => {
            assert_eq!((f.code, f.reason.as_str()), (CloseCode::Away, "going away"))
        }
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    let waited = signalled.elapsed();
    assert!(
        waited >= Duration::from_millis(1200) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    eventually("the peer got a 1001 close", || async {
        origin
            .closes
            .lock()
            .unwrap()
            .contains(&(1001, "going away".to_owned()))
    })
    .await;
    proxy
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits after draining");
}

/// Pingora sleeps out the whole grace period; portico exits once the last connection is gone.
#[tokio::test]
async fn a_drained_process_exits_when_its_last_websocket_closes() {
    let origin = WsOrigin::start("echo").await;
    let mut proxy = Proxy::start_with_grace(
        "60s",
        &format!(
            "upstreams:\n  echo: {{peers: ['{}']}}\nroutes:\n  - {{upstream: echo}}\n",
            origin.addr
        ),
    )
    .await;
    let (mut ws, _) = ws_connect(proxy.addr, "/", &[]).await.unwrap();
    proxy.signal("TERM");
    proxy.wait_for_log("draining").await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // longer than the quiet spell
    assert!(proxy.is_running(), "exited with a WebSocket still open");
    ws.send(Message::text("still served")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still served")
    );
    ws.close(None).await.unwrap();
    let closed = Instant::now();
    proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("still running after its last connection closed");
    assert!(
        closed.elapsed() < Duration::from_secs(5),
        "took {:?} of a 60 s grace period",
        closed.elapsed()
    );
}

/// The `Sec-WebSocket-Accept` a peer must answer `KEY` with (RFC 6455 4.2.2).
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A peer that answers 101 without proving it read the handshake is not speaking WebSocket
/// (HAProxy's websocket.vtc expects 502): no accept, or a wrong one, is 502 and no tunnel.
#[tokio::test]
async fn a_101_without_the_right_accept_is_a_bad_gateway() {
    for accept in [None, Some("d3JvbmcgYWNjZXB0IGtleQ=="), Some(ACCEPT)] {
        let (addr, _) = scripted(move |mut s| async move {
            if read_head(&mut s).await.is_none() {
                return;
            }
            let line = accept.map_or(String::new(), |a| format!("Sec-WebSocket-Accept: {a}\r\n"));
            let _ = s
                .write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{line}\r\nraw bytes").as_bytes())
                .await;
            let mut sink = [0u8; 64];
            let _ = s.read(&mut sink).await;
        })
        .await;
        let proxy = Proxy::start(&one_route(addr)).await;
        let mut stream = connect(proxy.addr, None).await;
        stream
            .write_all(upgrade_request("/", &[]).as_bytes())
            .await
            .unwrap();
        let mut out = vec![0u8; 4096];
        let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut out))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&out[..n]).into_owned();
        match accept {
            Some(ACCEPT) => assert!(head.starts_with("HTTP/1.1 101"), "{head}"),
            _ => {
                assert!(head.starts_with("HTTP/1.1 502"), "{accept:?}: {head}");
                assert!(!head.contains("raw bytes"), "tunnelled: {head}");
            }
        }
    }
}

/// A client that sends its first frame in the same write as the handshake (nginx-tests
/// proxy_websocket.t, "handshake pipelined"): the frame reaches the peer after its 101.
#[tokio::test]
async fn a_frame_pipelined_behind_the_handshake_reaches_the_peer() {
    let origin = WsOrigin::start("echo").await;
    let proxy = Proxy::start(&one_route(origin.addr)).await;
    let mut stream = connect(proxy.addr, None).await;
    // A masked text frame "hi" right behind the request head.
    let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    let mut bytes = upgrade_request("/", &[]).into_bytes();
    bytes.extend_from_slice(&frame);
    stream.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"\x81\x02hi") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("the pipelined frame was never echoed")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"));
}

/// A peer that refuses an upgrade and then stalls its body held the client and the peer
/// connection forever: each read is bounded by the group's read_timeout. The access log
/// counts the body bytes relayed (it said 0).
#[tokio::test]
async fn a_stalled_refusal_is_cut_at_the_read_timeout() {
    let (addr, _) = scripted(|mut s| async move {
        if read_head(&mut s).await.is_none() {
            return;
        }
        let _ = s
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\n0123456789")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{addr}'], read_timeout: 1s}}\nroutes:\n  - {{upstream: app}}\n"
    ))
    .await;
    let mut stream = connect(proxy.addr, None).await;
    stream
        .write_all(upgrade_request("/", &[]).as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut out))
        .await
        .expect("the refusal was never cut")
        .ok();
    assert!(started.elapsed() < Duration::from_secs(8));
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.ends_with("0123456789"), "{text}");
    proxy.wait_for_log("\" 403 10 ").await;
}
