//! Every downstream resource is bounded: what a client that holds connections open without
//! doing its part tries (never reading, never sending a TLS hello, an idle HTTP/2 connection,
//! more connections than the cap), and that the proxy serves a normal request right after.

use crate::harness::*;
use crate::origins::{HttpOrigin, WsOrigin};
use crate::tls::{h2_client, tls_proxy_with, TestPki};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::ServerName;

/// An origin that answers any request with a 64 MiB body and records when a write of it
/// failed (the proxy dropped the connection) and whether it ever finished.
pub struct BigOrigin {
    pub addr: SocketAddr,
    pub cut: Arc<AtomicBool>,
    pub finished: Arc<AtomicBool>,
}

impl BigOrigin {
    pub async fn start() -> BigOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, finished) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (c, f) = (Arc::clone(&cut), Arc::clone(&finished));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (c, f) = (Arc::clone(&c), Arc::clone(&f));
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let size = 64 << 20;
                    let chunk = vec![b'x'; 1 << 20];
                    let mut sent = s
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").as_bytes(),
                        )
                        .await;
                    for _ in 0..64 {
                        if sent.is_err() {
                            break;
                        }
                        sent = s.write_all(&chunk).await;
                    }
                    match sent {
                        Ok(()) => f.store(true, Ordering::SeqCst),
                        Err(_) => c.store(true, Ordering::SeqCst),
                    }
                });
            }
        });
        BigOrigin {
            addr,
            cut,
            finished,
        }
    }
}

/// 20 clients that never read a 64 MiB response held 20 origin connections for minutes. With
/// `send_timeout: 1s` the client is cut and the origin's connection closed.
#[tokio::test]
async fn a_client_that_never_reads_is_cut_at_the_send_timeout() {
    let origin = BigOrigin::start().await;
    let proxy = Proxy::start_with_server("send_timeout: 1s", &one_route(origin.addr)).await;
    let mut client = connect(proxy.addr, None).await;
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    eventually("the origin's connection is closed under it", || async {
        origin.cut.load(Ordering::SeqCst)
    })
    .await;
    assert!(!origin.finished.load(Ordering::SeqCst));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut after {:?}",
        started.elapsed()
    );
    // The client's connection ends too: what was buffered, then EOF (or a reset).
    let mut sink = Vec::new();
    let end = tokio::time::timeout(IO_TIMEOUT, client.read_to_end(&mut sink)).await;
    assert!(end.is_ok(), "the client connection stayed open");
    assert!(sink.len() < 64 << 20);
    proxy.wait_for_log("server.send_timeout").await;
}

/// Past `max_connections` a new connection is closed at once; one closing frees a slot. A
/// WebSocket holds its client connection's place as long as it is open.
#[tokio::test]
async fn connections_past_the_cap_are_refused_until_others_close() {
    let origin = HttpOrigin::start("a").await;
    let ws_origin = WsOrigin::start("echo").await;
    let proxy = Proxy::start_with_server(
        "max_connections: 3",
        &format!(
            "upstreams:\n  app: {{peers: ['{}']}}\n  echo: {{peers: ['{}']}}\nroutes:\n  - {{upstream: app}}\n  - {{path_prefix: /ws/, upstream: echo}}\n",
            origin.addr, ws_origin.addr
        ),
    )
    .await;
    // Two kept-alive connections that have been served, and one open WebSocket.
    let keep = "GET / HTTP/1.1\r\nHost: test.local\r\n\r\n";
    let (r1, held1) = send_one(proxy.addr, keep).await;
    let (r2, held2) = send_one(proxy.addr, keep).await;
    assert_eq!((r1.status, r2.status), (200, 200));
    let (ws, _) = ws_connect(proxy.addr, "/ws/", &[]).await.unwrap();

    // A fourth: closed without an answer.
    let out = send_raw(proxy.addr, None, keep.as_bytes()).await;
    assert!(
        out.is_empty(),
        "a fourth connection was served: {:?}",
        String::from_utf8_lossy(&out)
    );

    // Closing the WebSocket frees its place: a new client is served again.
    drop(ws);
    eventually("a slot frees up", || async {
        !send_raw(proxy.addr, None, request_text("GET", "/", &[]).as_bytes())
            .await
            .is_empty()
    })
    .await;
    drop((held1, held2));
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
    }
}

/// From a shell with a soft limit of 1,024 open files portico held ~500 WebSockets, then
/// failed every accept with EMFILE. It raises the soft limit to the hard one at start.
#[tokio::test]
async fn the_open_files_limit_is_raised_at_start() {
    let origin = HttpOrigin::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy_addr();
    let conf = dir.path().join("p.yaml");
    std::fs::write(
        &conf,
        format!(
            "server: {{threads: 1, pid_file: '{d}/p.pid', upgrade_sock: '{d}/u.sock', max_connections: 100000000}}\nlisteners: [{{address: '{addr}'}}]\n{}",
            one_route(origin.addr),
            d = dir.path().display()
        ),
    )
    .unwrap();
    let log = dir.path().join("log");
    let mut child = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 1024 && exec {BIN} -c {}",
            conf.display()
        ))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
        .spawn()
        .unwrap();
    eventually("portico listens", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(fields[3], fields[4], "soft limit not raised: {line}");
    assert_ne!(fields[3], "1024", "{line}");
    let err = std::fs::read_to_string(dir.path().join("err")).unwrap();
    assert!(
        err.contains("cannot hold server.max_connections"),
        "no warning for a limit too small: {err}"
    );
}

/// How long until the server closes `s` (reads until EOF or an error), at most `limit`.
async fn closed_within<S: AsyncReadExt + Unpin>(s: &mut S, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_all)
        .await
        .ok()
        .map(|()| started.elapsed())
}

/// A TCP connection that never sends a ClientHello was held for Pingora's fixed 60 s; one that
/// trickles it too. Both are closed within `header_timeout`.
#[tokio::test]
async fn a_tls_hello_must_arrive_within_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), &["localhost"]);
    let origin = HttpOrigin::start("a").await;
    let (_proxy, addr) = tls_proxy_with(&pki, "header_timeout: 1s", &one_route(origin.addr)).await;

    let mut silent = connect(addr, None).await;
    let mut trickle = connect(addr, None).await;
    // A handshake record header that promises 512 bytes, then nothing.
    trickle.write_all(&[22, 3, 1, 2, 0, 1]).await.unwrap();
    for s in [&mut silent, &mut trickle] {
        let took = closed_within(s, Duration::from_secs(8)).await;
        assert!(took.is_some(), "still open after 8 s");
    }
    // A real client is served.
    let tcp = connect(addr, None).await;
    let mut tls = pki
        .connector()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.unwrap();
    assert_eq!(parse_response(&out).unwrap().status, 200);
}

/// `GET uri` on an HTTP/2 connection; the response head, within `IO_TIMEOUT`.
async fn h2_get(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    uri: &str,
) -> http::Response<h2::RecvStream> {
    let req = http::Request::get(uri).body(()).unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    tokio::time::timeout(IO_TIMEOUT, resp)
        .await
        .unwrap()
        .unwrap()
}

/// An HTTP/2 connection that sent its preface and SETTINGS and then nothing was never closed
/// (Pingora issue 563). It is closed after `keepalive_timeout` with no stream open; one with a
/// request in flight is not; and HTTP/2 clients reach HTTP/1 peers.
#[tokio::test]
async fn idle_http2_connections_are_closed_after_the_keepalive_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), &["localhost"]);
    let origin = HttpOrigin::start("a").await;
    let (_proxy, addr) = tls_proxy_with(
        &pki,
        "header_timeout: 1s, keepalive_timeout: 1s",
        &one_route(origin.addr),
    )
    .await;
    // A request over HTTP/2 reaches the HTTP/1 origin.
    let (mut send, driver) = h2_client(&pki, addr).await;
    let resp = h2_get(&mut send, "https://localhost/h2?x=1").await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["path"], "/h2?x=1");
    // Then idle: the server closes the connection.
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(8), driver).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(500));

    // Preface and SETTINGS only, never a request.
    let (_send, driver) = h2_client(&pki, addr).await;
    let ended = tokio::time::timeout(Duration::from_secs(8), driver).await;
    assert!(ended.is_ok(), "a silent HTTP/2 connection stayed open");

    // TLS with ALPN h2, then not even the preface.
    let tcp = connect(addr, None).await;
    let mut tls = pki
        .connector_alpn(&[b"h2"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let took = closed_within(&mut tls, Duration::from_secs(8)).await;
    assert!(
        took.is_some(),
        "a connection without the h2 preface stayed open"
    );

    // A slow request (2 s, beyond the 1 s idle timeout) is not cut.
    let (mut send, _driver) = h2_client(&pki, addr).await;
    let resp = h2_get(&mut send, "https://localhost/slow/2000").await;
    assert_eq!(resp.status(), 200);
}
