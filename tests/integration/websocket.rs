//! WebSocket passthrough: 101, then every frame both ways unchanged, and the route's policy.

use crate::harness::*;
use crate::origins::WsOrigin;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};

async fn ws_proxy(origin: &WsOrigin, upstream_extra: &str, ws_section: &str) -> Proxy {
    Proxy::start(&format!(
        "trusted_proxies: []\nupstreams:\n  echo:\n    peers: ['{}']\n{upstream_extra}routes:\n  - path_prefix: /ws/\n    upstream: echo\n{ws_section}",
        origin.addr
    ))
    .await
}

async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(IO_TIMEOUT, ws.next())
        .await
        .expect("no message in time")
        .expect("stream ended")
        .expect("ws error")
}

#[tokio::test]
async fn messages_of_every_kind_echo_unchanged() {
    let origin = WsOrigin::start("echo").await;
    let proxy = ws_proxy(&origin, "", "").await;
    let (mut ws, resp) = ws_connect(proxy.addr, "/ws/chat", &[]).await.unwrap();
    assert_eq!(resp.status(), 101);

    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let cases = [
        Message::text("hello"),
        Message::text(""),
        Message::text("üñïçødé ✓"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::binary(Vec::new()),
        Message::binary(big),
    ];
    for m in cases {
        ws.send(m.clone()).await.unwrap();
        assert_eq!(next(&mut ws).await, m);
    }
}

#[tokio::test]
async fn fragmented_message_and_interleaved_ping_pass_through() {
    let origin = WsOrigin::start("echo").await;
    let proxy = ws_proxy(&origin, "", "").await;
    let (mut ws, _) = ws_connect(proxy.addr, "/ws/", &[]).await.unwrap();
    // "frag" "men" "ted" in three frames, with a ping between the first two.
    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"frag"),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Ping(Bytes::from_static(b"p1")))
        .await
        .unwrap();
    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"men"),
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"ted"),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(next(&mut ws).await);
    }
    assert!(
        got.contains(&Message::Pong(Bytes::from_static(b"p1"))),
        "{got:?}"
    );
    assert!(got.contains(&Message::text("fragmented")), "{got:?}");
}

#[tokio::test]
async fn close_codes_and_reasons_cross_both_ways() {
    let origin = WsOrigin::start("echo").await;
    let proxy = ws_proxy(&origin, "", "").await;

    // Server-initiated: the client sees the server's code and reason.
    let (mut ws, _) = ws_connect(proxy.addr, "/ws/", &[]).await.unwrap();
    ws.send(Message::text("close:4001:server going"))
        .await
        .unwrap();
    match next(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(
            (f.code, f.reason.as_str()),
            (CloseCode::from(4001), "server going")
        ),
        m => panic!("expected close, got {m:?}"),
    }

    // Client-initiated: the server answers with the same code, as RFC 6455 says.
    let (mut ws, _) = ws_connect(proxy.addr, "/ws/", &[]).await.unwrap();
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    match next(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!((f.code, f.reason.as_str()), (CloseCode::from(4000), "bye"))
        }
        m => panic!("expected close, got {m:?}"),
    }
}

#[tokio::test]
async fn upgrade_carries_forwarding_headers_and_keeps_websocket_headers() {
    let origin = WsOrigin::start("echo").await;
    let proxy = ws_proxy(&origin, "", "").await;
    let (mut ws, resp) = ws_connect(
        proxy.addr,
        "/ws/",
        &[
            ("Origin", "https://app.example.com"),
            ("Cookie", "sid=9"),
            ("Sec-WebSocket-Protocol", "chat, superchat"),
            ("X-Forwarded-For", "6.6.6.6"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "chat",
        "the 101's headers come back"
    );
    ws.send(Message::text("headers")).await.unwrap();
    let text = next(&mut ws).await.into_text().unwrap().to_string();
    let headers: Vec<(String, String)> = serde_json::from_str(&text).unwrap();
    let get = |k: &str| {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(get("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(get("x-forwarded-proto"), ["http"]);
    assert_eq!(get("origin"), ["https://app.example.com"]);
    assert_eq!(get("cookie"), ["sid=9"]);
    assert_eq!(get("sec-websocket-protocol"), ["chat, superchat"]);
    assert_eq!(get("sec-websocket-version"), ["13"]);
    assert_eq!(get("sec-websocket-key").len(), 1);
    assert_eq!(get("upgrade"), ["websocket"]);
}

#[tokio::test]
async fn disabled_websocket_route_answers_403() {
    let origin = WsOrigin::start("echo").await;
    let proxy = ws_proxy(&origin, "", "    websocket: {enabled: false}\n").await;
    match ws_connect(proxy.addr, "/ws/", &[]).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert!(
        origin.last_request.lock().unwrap().is_empty(),
        "the origin never saw the upgrade"
    );
}

/// The plain-HTTP read timeout (1s here) must not cut a quiet upgraded connection.
#[tokio::test]
async fn quiet_websocket_outlives_the_plain_read_timeout() {
    let origin = WsOrigin::start("echo").await;
    let proxy = ws_proxy(
        &origin,
        "    read_timeout: 1s\n",
        "    websocket: {idle_timeout: 1h}\n",
    )
    .await;
    let (mut ws, _) = ws_connect(proxy.addr, "/ws/", &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await; // the idle period under test
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("still here"));
}

#[tokio::test]
async fn idle_timeout_closes_a_silent_websocket() {
    let origin = WsOrigin::start("echo").await;
    let proxy = ws_proxy(&origin, "", "    websocket: {idle_timeout: 1s}\n").await;
    let (mut ws, _) = ws_connect(proxy.addr, "/ws/", &[]).await.unwrap();
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("one"));
    let started = Instant::now();
    let end = tokio::time::timeout(IO_TIMEOUT, ws.next())
        .await
        .expect("idle connection was never closed");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{end:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

/// Messages far larger than any buffer: both directions stall on the peer and must resume
/// without losing or reordering a byte (the tunnel's pending-write path).
#[tokio::test]
async fn sixteen_mebibyte_messages_survive_backpressure() {
    let origin = WsOrigin::start("echo").await;
    let proxy = ws_proxy(&origin, "", "").await;
    let (ws, _) = ws_connect(proxy.addr, "/ws/", &[]).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let big: Vec<u8> = (0..16 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let expected = big.clone();
    // Send while receiving, so neither side's buffers need to hold a whole message.
    let sender = tokio::spawn(async move {
        for _ in 0..2 {
            tx.send(Message::binary(big.clone())).await.unwrap();
        }
        tx
    });
    for _ in 0..2 {
        let got = tokio::time::timeout(IO_TIMEOUT * 3, rx.next())
            .await
            .expect("echo in time")
            .unwrap()
            .unwrap();
        assert!(
            got.into_data() == expected,
            "a 16 MiB message came back changed"
        );
    }
    let _tx = sender.await.unwrap();
}

#[tokio::test]
async fn close_codes_1000_and_1001_cross_both_ways() {
    let origin = WsOrigin::start("echo").await;
    let proxy = ws_proxy(&origin, "", "").await;
    for code in [1000u16, 1001, 4000] {
        let (mut ws, _) = ws_connect(proxy.addr, "/ws/", &[]).await.unwrap();
        ws.send(Message::text(format!("close:{code}:server says {code}")))
            .await
            .unwrap();
        match next(&mut ws).await {
            Message::Close(Some(f)) => assert_eq!(
                (u16::from(f.code), f.reason.to_string()),
                (code, format!("server says {code}"))
            ),
            m => panic!("expected close {code}, got {m:?}"),
        }
        let (mut ws, _) = ws_connect(proxy.addr, "/ws/", &[]).await.unwrap();
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: format!("client says {code}").into(),
        })))
        .await
        .unwrap();
        match next(&mut ws).await {
            Message::Close(Some(f)) => assert_eq!(u16::from(f.code), code),
            m => panic!("expected close {code} back, got {m:?}"),
        }
        eventually("the origin saw the client's close", || async {
            origin
                .closes
                .lock()
                .unwrap()
                .contains(&(code, format!("client says {code}")))
        })
        .await;
    }
}

/// 1,000 connections open at once, each echoing its own messages: no crosstalk, no loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_websockets_each_echo_their_own() {
    let origin = WsOrigin::start("echo").await;
    let proxy = ws_proxy(&origin, "", "").await;
    let mut sockets = Vec::new();
    for _ in 0..1000 {
        sockets.push(ws_connect(proxy.addr, "/ws/", &[]).await.unwrap().0);
    }
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                for j in 0..3 {
                    let text = format!("conn {i} msg {j}");
                    ws.send(Message::text(text.clone())).await.unwrap();
                    assert_eq!(next(&mut ws).await, Message::text(text));
                }
                ws.close(None).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}
