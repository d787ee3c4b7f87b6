//! What a malicious client sends: each is answered with a clean 4xx (or, for a head that never
//! completes, a closed connection), never reaches the origin, and a normal request on another
//! connection succeeds right after.

use crate::harness::*;
use crate::origins::HttpOrigin;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn hostile_proxy(origin: &HttpOrigin) -> Proxy {
    Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /, upstream: app}}\n  - {{path_prefix: /small/, upstream: app, max_body_size: 1k}}\n",
        origin.addr
    ))
    .await
}

const H: &str = "Host: test.local\r\n";

#[tokio::test]
async fn smuggling_framings_are_refused() {
    let origin = HttpOrigin::start("a").await;
    let proxy = hostile_proxy(&origin).await;
    let cases = [
        (
            "two different Content-Lengths",
            format!("POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            400,
        ),
        (
            "a Content-Length list",
            format!("POST / HTTP/1.1\r\n{H}Content-Length: 5, 5\r\n\r\nhello"),
            400,
        ),
        (
            "the same Content-Length twice",
            format!("POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            400,
        ),
        (
            "Transfer-Encoding: chunked, identity",
            format!("POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
            400,
        ),
    ];
    for (what, raw, want) in &cases {
        let r = send(proxy.addr, None, raw).await;
        assert_eq!(r.status, *want, "{what}");
        assert_eq!(get(proxy.addr, "/", &[]).await.status, 200, "after {what}");
    }
    assert_eq!(
        origin.hits(),
        cases.len(),
        "only the normal requests reached the origin"
    );

    // Content-Length with Transfer-Encoding: Pingora removes the Content-Length and forwards
    // the chunked body, as RFC 9112 6.3 asks of an intermediary: the peer sees one framing.
    let both = format!("POST / HTTP/1.1\r\n{H}Content-Length: 100\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    let r = send(proxy.addr, None, &both).await;
    assert_eq!(r.status, 200);
    assert!(
        r.upstream_header("content-length").is_empty(),
        "{}",
        r.text()
    );
    assert_eq!(r.upstream_header("transfer-encoding"), ["chunked"]);
    assert_eq!(r.json()["body_len"], 5);
    // And, as RFC 9112 6.1 requires, the connection is closed after the response even though
    // the client asked to keep it: nothing more can be smuggled behind that body.
    let kept = format!("POST / HTTP/1.1\r\n{H}Content-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    let (r, mut s) = send_one(proxy.addr, &kept).await;
    assert_eq!(r.status, 200);
    assert!(
        time_to_close(&mut s, Duration::from_secs(5))
            .await
            .is_some(),
        "the connection stayed open after a request with two framings"
    );
}

#[tokio::test]
async fn malformed_heads_are_refused() {
    let origin = HttpOrigin::start("a").await;
    let proxy = hostile_proxy(&origin).await;
    let big = "a".repeat(64 * 1024);
    let many: String = (0..1000).map(|i| format!("X-{i}: v\r\n")).collect();
    let long_line = "a".repeat(100 * 1024);
    let cases = [
        (
            "obs-fold",
            format!("GET / HTTP/1.1\r\n{H}X-A: a\r\n b\r\n\r\n"),
            400,
        ),
        (
            "a bare LF in a value",
            format!("GET / HTTP/1.1\r\n{H}X-A: a\nb\r\n\r\n"),
            400,
        ),
        (
            "a 64 KiB header",
            format!("GET / HTTP/1.1\r\n{H}X-Big: {big}\r\n\r\n"),
            431,
        ),
        (
            "1,000 headers",
            format!("GET / HTTP/1.1\r\n{H}{many}\r\n"),
            400,
        ),
        (
            "a 100 KiB request line",
            format!("GET /{long_line} HTTP/1.1\r\n{H}\r\n"),
            400,
        ),
        (
            "HTTP/1.1 without Host",
            "GET / HTTP/1.1\r\n\r\n".to_owned(),
            400,
        ),
        (
            "two Hosts",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_owned(),
            400,
        ),
        (
            "CONNECT",
            format!("CONNECT evil.test:443 HTTP/1.1\r\n{H}\r\n"),
            400,
        ),
        (
            "absolute-form to another host",
            format!("GET http://evil.test/ HTTP/1.1\r\n{H}\r\n"),
            400,
        ),
    ];
    for (what, raw, want) in &cases {
        let out = send_raw(proxy.addr, None, raw.as_bytes()).await;
        let r = parse_response(&out).unwrap_or_else(|| {
            panic!(
                "{what}: no response (README promises {want}): {:?}",
                String::from_utf8_lossy(&out)
            )
        });
        assert_eq!(r.status, *want, "{what}");
        assert_eq!(get(proxy.addr, "/", &[]).await.status, 200, "after {what}");
    }
    assert_eq!(origin.hits(), cases.len());
}

/// `/public/../admin` must not be routed as `/public/` and served as `/admin` by the peer.
#[tokio::test]
async fn dot_segments_cannot_escape_a_route() {
    let origin = HttpOrigin::start("a").await;
    let proxy = hostile_proxy(&origin).await;
    for path in [
        "/small/../admin",
        "/a/./b",
        "/a/%2e%2e/b",
        "/a/%2E%2E",
        "/..",
    ] {
        let r = send(
            proxy.addr,
            None,
            &format!("GET {path} HTTP/1.1\r\n{H}Connection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, 400, "{path}");
    }
    assert_eq!(
        get(proxy.addr, "/a/b..c/.d", &[]).await.status,
        200,
        "dots inside names are fine"
    );
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let origin = HttpOrigin::start("a").await;
    let proxy = hostile_proxy(&origin).await;
    let body = "x".repeat(2048);
    let declared = send(
        proxy.addr,
        None,
        &format!(
            "POST /small/up HTTP/1.1\r\n{H}Content-Length: 2048\r\nConnection: close\r\n\r\n{body}"
        ),
    )
    .await;
    assert_eq!(declared.status, 413);
    let chunked = send(proxy.addr, None, &format!("POST /small/up HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n800\r\n{body}\r\n0\r\n\r\n")).await;
    assert_eq!(chunked.status, 413);
    let small = send(proxy.addr, None, &format!("POST /small/up HTTP/1.1\r\n{H}Content-Length: 10\r\nConnection: close\r\n\r\n0123456789")).await;
    assert_eq!(
        (small.status, small.json()["body_len"].as_u64()),
        (200, Some(10))
    );
    let unlimited = send(
        proxy.addr,
        None,
        &format!(
            "POST /big HTTP/1.1\r\n{H}Content-Length: 2048\r\nConnection: close\r\n\r\n{body}"
        ),
    )
    .await;
    assert_eq!(unlimited.status, 200, "other routes have no limit");
}

/// Waits for the server to close `s` (EOF or reset), up to `limit`: how long it took, or `None`
/// if it is still open. Panics if the server answers instead.
async fn time_to_close(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 512];
    match tokio::time::timeout(limit, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Some(started.elapsed()),
        Ok(Ok(n)) => panic!("answered: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(_) => None,
    }
}

/// Slowloris: a head trickled a byte every 100 ms (each read well inside Pingora's 60 s
/// per-read timeout) is cut at `server.header_timeout`, and never reaches the origin; everyone
/// else is served meanwhile.
#[tokio::test]
async fn slowloris_is_cut_at_the_header_timeout() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start_with_server("header_timeout: 1s", &one_route(origin.addr)).await;
    let mut s = connect(proxy.addr, None).await;
    let started = Instant::now();
    let head = format!("GET / HTTP/1.1\r\n{H}X-Slow: {}\r\n\r\n", "a".repeat(100));
    let mut cut = None;
    for (i, b) in head.bytes().enumerate() {
        if s.write_all(&[b]).await.is_err() {
            cut = Some(started.elapsed());
            break;
        }
        if i == 3 {
            assert_eq!(
                get(proxy.addr, "/", &[]).await.status,
                200,
                "while trickling"
            );
        }
        if time_to_close(&mut s, Duration::from_millis(100))
            .await
            .is_some()
        {
            cut = Some(started.elapsed());
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never cut");
    }
    let cut = cut.expect("the whole trickled head was accepted");
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_secs(3),
        "cut after {cut:?}, header_timeout is 1s"
    );
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
    assert_eq!(
        origin.hits(),
        2,
        "the trickled request never reached the origin"
    );
}

/// The deadline covers the head only: a head in pieces inside it, and then a body slower than
/// it, are served.
#[tokio::test]
async fn a_slow_body_after_a_timely_head_is_served() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start_with_server("header_timeout: 1s", &one_route(origin.addr)).await;
    let mut s = connect(proxy.addr, None).await;
    for part in [
        "POST / HTTP/1.1\r\n",
        H,
        "Connection: close\r\n",
        "Content-Length: 6\r\n\r\n",
    ] {
        s.write_all(part.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for b in b"hello!" {
        tokio::time::sleep(Duration::from_millis(300)).await; // 1.8 s of body
        s.write_all(&[*b]).await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("no response")
        .unwrap();
    let r = parse_response(&out).expect("a response");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 6);
}

/// A client opens 1,000 connections and sends nothing: another client is served at once, and
/// all 1,000 are closed at the header timeout instead of Pingora's 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_connections_are_closed_and_others_served() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start_with_server("header_timeout: 1s", &one_route(origin.addr)).await;
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(connect(proxy.addr, None).await);
    }
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
    let mut closed = 0;
    for s in &mut silent {
        let left = Duration::from_secs(6).saturating_sub(started.elapsed());
        if time_to_close(s, left).await.is_some() {
            closed += 1;
        }
    }
    assert_eq!(closed, 1000, "silent connections still open after 6 s");
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
}

/// Between requests the limit is `server.keepalive_timeout`, for the idle wait and the next
/// head together: an idle kept-alive connection is closed then, and so is one that trickles
/// its second head.
#[tokio::test]
async fn kept_alive_connections_get_the_keepalive_timeout() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start_with_server(
        "header_timeout: 1s, keepalive_timeout: 2s",
        &one_route(origin.addr),
    )
    .await;
    let req = format!("GET / HTTP/1.1\r\n{H}\r\n");
    let (r, mut idle) = send_one(proxy.addr, &req).await;
    assert_eq!(r.status, 200);
    let t = time_to_close(&mut idle, Duration::from_secs(6))
        .await
        .expect("an idle kept-alive connection stayed open");
    assert!(
        t >= Duration::from_millis(1800) && t < Duration::from_secs(4),
        "closed after {t:?}, keepalive_timeout is 2s"
    );

    let (r, mut slow) = send_one(proxy.addr, &req).await;
    assert_eq!(r.status, 200);
    let started = Instant::now();
    let mut cut = false;
    for b in req.bytes().chain(std::iter::repeat(b'x')) {
        if slow.write_all(&[b]).await.is_err()
            || time_to_close(&mut slow, Duration::from_millis(200))
                .await
                .is_some()
        {
            cut = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    assert!(cut, "a trickled second head was never cut");
    assert!(started.elapsed() < Duration::from_secs(4));
}
