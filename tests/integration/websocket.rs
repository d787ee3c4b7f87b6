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

/// RFC 7692 message compression, as both ends do it: raw deflate, sync flush, the final
/// 00 00 ff ff dropped (and put back to inflate).
fn deflate(text: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(text.len() + 64);
    c.compress_vec(text, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = flate2::Decompress::new(false);
    let input = [data, &[0, 0, 0xff, 0xff]].concat();
    let mut out = Vec::with_capacity(1024);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .unwrap();
    out
}

async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.expect("a head"));
    }
    String::from_utf8(head).unwrap()
}

/// One frame with a payload under 126 bytes: its first byte and its unmasked payload.
async fn read_frame(s: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let b0 = s.read_u8().await.unwrap();
    let b1 = s.read_u8().await.unwrap();
    let mut key = [0u8; 4];
    if b1 & 0x80 != 0 {
        s.read_exact(&mut key).await.unwrap();
    }
    let mut payload = vec![0u8; usize::from(b1 & 0x7f)];
    s.read_exact(&mut payload).await.unwrap();
    payload
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b ^= key[i % 4]);
    (b0, payload)
}

/// permessage-deflate negotiated end to end: the offer reaches the peer, its answer reaches the
/// client untouched, and compressed frames (RSV1 set, deflated payloads) cross both ways
/// unchanged and inflate to the sent text. The origin is a raw one that deflates, since the
/// test client library does not.
#[tokio::test]
async fn permessage_deflate_is_negotiated_end_to_end() {
    use tokio::io::AsyncWriteExt;
    const ANSWER: &str = "permessage-deflate; server_no_context_takeover";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = listener.local_addr().unwrap();
    let origin = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let head = read_head(&mut s).await;
        let offer = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("sec-websocket-extensions: ")
                    .or_else(|| l.strip_prefix("Sec-WebSocket-Extensions: "))
            })
            .map(str::to_owned);
        let key = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(": ")?;
                k.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.to_owned())
            })
            .expect("a key");
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        s.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: {ANSWER}\r\n\r\n").as_bytes()).await.unwrap();
        let got = read_frame(&mut s).await;
        let reply = deflate(b"deflated reply from the origin");
        let mut frame = vec![0xc1, reply.len() as u8];
        frame.extend_from_slice(&reply);
        s.write_all(&frame).await.unwrap();
        (offer, got)
    });
    let proxy = Proxy::start(&format!(
        "upstreams:\n  z: {{peers: ['{origin_addr}']}}\nroutes:\n  - {{path_prefix: /ws/, upstream: z}}\n"
    ))
    .await;
    let mut c = connect(proxy.addr, None).await;
    c.write_all(b"GET /ws/ HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n").await.unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains(&format!("Sec-WebSocket-Extensions: {ANSWER}\r\n"))
            || head.contains(&format!("sec-websocket-extensions: {ANSWER}\r\n")),
        "{head}"
    );
    let text = b"hello hello hello hello, compressed";
    let payload = deflate(text);
    let key = [9u8, 8, 7, 6];
    let mut frame = vec![0xc1, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    c.write_all(&frame).await.unwrap();
    let (b0, reply) = tokio::time::timeout(IO_TIMEOUT, read_frame(&mut c))
        .await
        .expect("no reply");
    assert_eq!(b0, 0xc1, "RSV1 (compressed) and FIN, text");
    assert_eq!(inflate(&reply), b"deflated reply from the origin");
    let (offer, (ob0, opayload)) = origin.await.unwrap();
    assert_eq!(
        offer.as_deref(),
        Some("permessage-deflate; client_max_window_bits")
    );
    assert_eq!(ob0, 0xc1);
    assert_eq!(inflate(&opayload), text);
}

/// `curl localhost:8080/ws/` on the demo: the echo origin answers a plain GET with 426 and a
/// line saying what it is (it dropped the connection, and the client saw an empty 502).
#[tokio::test]
async fn a_plain_get_to_the_echo_origin_is_told_to_upgrade() {
    let origin = WsOrigin::start("echo").await;
    let proxy = Proxy::start(&one_route(origin.addr)).await;
    let r = get(proxy.addr, "/ws/", &[]).await;
    assert_eq!(r.status, 426);
    assert!(r.text().contains("WebSocket echo origin"), "{}", r.text());
    assert!(!proxy.logs().contains("ERROR"), "{}", proxy.logs());
}
