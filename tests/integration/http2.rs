//! HTTP/2 clients (TLS with ALPN h2) in front of HTTP/1 peers. A body-less plain request takes
//! portico's own loop, anything else Pingora's, as from HTTP/1 clients: every test runs against
//! both (`forwarding::LOOPS`), with scripted peers for what a well-behaved origin never shows.

use crate::forwarding::{origin_saw, LOOPS};
use crate::harness::*;
use crate::origins::HttpOrigin;
use crate::resources::BigOrigin;
use crate::tls::{h2_client, tls_proxy_with, TestPki};
use bytes::Bytes;
use h2::client::SendRequest;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A certificate for `localhost` (the directory holds its files).
fn localhost_pki() -> (tempfile::TempDir, TestPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), &["localhost"]);
    (dir, pki)
}

/// portico with these `server` keys on a TLS listener in front of `peer`, and an HTTP/2
/// connection to it.
async fn h2_through(pki: &TestPki, server: &str, peer: SocketAddr) -> (Proxy, SendRequest<Bytes>) {
    let (proxy, addr) = tls_proxy_with(pki, server, &one_route(peer)).await;
    let (send, _driver) = h2_client(pki, addr).await;
    (proxy, send)
}

/// An HTTP/2 exchange's answer: the response head and the whole body, or the stream's error
/// (a reset) if it did not end cleanly; within `IO_TIMEOUT`.
async fn exchange(
    send: &mut SendRequest<Bytes>,
    req: http::Request<()>,
    body: Option<&'static [u8]>,
) -> Result<(http::response::Parts, Vec<u8>), h2::Error> {
    let work = async {
        let (resp, mut stream) = send.send_request(req, body.is_none())?;
        if let Some(body) = body {
            stream.send_data(Bytes::from_static(body), true)?;
        }
        let (head, mut recv) = resp.await?.into_parts();
        let mut bytes = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk?;
            // Read: the sender may send that much more (flow control).
            recv.flow_control().release_capacity(chunk.len())?;
            bytes.extend_from_slice(&chunk);
        }
        Ok((head, bytes))
    };
    tokio::time::timeout(IO_TIMEOUT, work)
        .await
        .expect("the HTTP/2 exchange timed out")
}

fn get(path: &str) -> http::Request<()> {
    request("GET", path, &[])
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(()).unwrap()
}

/// The path and the headers (lower-cased, sorted) the origin saw, from its JSON answer.
fn seen(body: &[u8]) -> (String, Vec<(String, String)>) {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    (json["path"].as_str().unwrap().to_owned(), origin_saw(&json))
}

/// The peer gets the same request from either loop: `Host` from `:authority`, X-Forwarded-*
/// set, credentials untouched; the answer's repeated `Set-Cookie` arrive whole; a request with
/// a body gets there too. A malicious client adds a `Host` that names another host than
/// `:authority`, hoping the peer reads one while portico routes on the other: 400 (RFC 9113
/// 8.3.1), and the peer never sees it.
#[tokio::test]
async fn http2_clients_get_the_same_forwarding_from_both_loops() {
    let (_dir, pki) = localhost_pki();
    let origin = HttpOrigin::start("a").await;
    let mut heads = Vec::new();
    for server in LOOPS {
        let (_proxy, mut send) = h2_through(&pki, server, origin.addr).await;
        let common = [
            ("authorization", "Bearer t"),
            ("cookie", "a=1; b=2"),
            ("x-forwarded-for", "6.6.6.6"),
        ];
        let (head, body) = exchange(&mut send, request("GET", "/x?y=1", &common), None)
            .await
            .unwrap();
        assert_eq!(
            head.status,
            200,
            "{server}: {}",
            String::from_utf8_lossy(&body)
        );
        let (path, headers) = seen(&body);
        assert_eq!(path, "/x?y=1", "{server}");
        for expected in [
            ("host", "localhost"),
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "localhost"),
            ("authorization", "Bearer t"),
            ("cookie", "a=1; b=2"),
        ] {
            let expected = (expected.0.to_owned(), expected.1.to_owned());
            assert!(headers.contains(&expected), "{server}: {headers:?}");
        }
        assert_eq!(
            headers.iter().filter(|(n, _)| n == "host").count(),
            1,
            "{server}"
        );
        heads.push(headers);

        let hits = origin.hits();
        let evil = request("GET", "/x", &[("host", "evil.test")]);
        let (head, _) = exchange(&mut send, evil, None).await.unwrap();
        assert_eq!(
            (head.status.as_u16(), origin.hits()),
            (400, hits),
            "{server}"
        );

        let (head, _) = exchange(&mut send, get("/set-cookie"), None).await.unwrap();
        let cookies: Vec<_> = head.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2; HttpOnly"], "{server}");

        let post = request("POST", "/form", &[("content-length", "5")]);
        let (head, body) = exchange(&mut send, post, Some(b"hello")).await.unwrap();
        assert_eq!(head.status, 200, "{server}");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (json["method"].as_str(), json["body"].as_str()),
            (Some("POST"), Some("hello"))
        );
    }
    assert_eq!(heads[0], heads[1], "the two loops sent different heads");
}

/// A scripted HTTP/1 peer: `/close` ends its body by closing (HTTP/1.0 style), `/cut` closes
/// before its Content-Length is done, `/204` and `/304` and any HEAD end at the head (a HEAD
/// answer carries the Content-Length of the body it does not send; a 304 may too, RFC 9113
/// 8.1.1, but the h2 crate's client takes that for a short body and resets the stream).
async fn awkward(mut s: TcpStream) {
    while let Some(head) = read_head(&mut s).await {
        let head = String::from_utf8_lossy(&head).into_owned();
        let answer: &[u8] = match head.split(' ').take(2).collect::<Vec<_>>()[..] {
            ["HEAD", _] => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            [_, "/close"] => b"HTTP/1.0 200 OK\r\n\r\nall of it, then close",
            [_, "/cut"] => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nnot all",
            [_, "/204"] => b"HTTP/1.1 204 No Content\r\n\r\n",
            [_, "/304"] => b"HTTP/1.1 304 Not Modified\r\nETag: \"1\"\r\n\r\n",
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        };
        s.write_all(answer).await.unwrap();
        if answer.starts_with(b"HTTP/1.0") || answer.ends_with(b"not all") {
            return;
        }
    }
}

/// A body the peer ends by closing arrives whole, with a clean end of stream; one the peer
/// cuts short is reset (an HTTP/2 client must not take it for the whole); HEAD, 204 and 304 end
/// at the head. The HTTP/2 connection outlives both, on either loop.
#[tokio::test]
async fn http2_bodies_end_as_the_peer_ended_them() {
    let (_dir, pki) = localhost_pki();
    let (peer, _) = scripted(awkward).await;
    for server in LOOPS {
        let (_proxy, mut send) = h2_through(&pki, server, peer).await;
        let (head, body) = exchange(&mut send, get("/close"), None).await.unwrap();
        assert_eq!(head.status, 200, "{server}");
        assert_eq!(body, b"all of it, then close", "{server}");

        let cut = exchange(&mut send, get("/cut"), None).await;
        assert!(cut.is_err(), "{server}: a cut body ended cleanly: {cut:?}");

        for (req, status) in [
            (request("HEAD", "/x", &[]), 200),
            (get("/204"), 204),
            (get("/304"), 304),
        ] {
            let what = format!("{server}: {} {}", req.method(), req.uri());
            let (head, body) = exchange(&mut send, req, None).await.expect(&what);
            assert_eq!((head.status.as_u16(), body.len()), (status, 0), "{what}");
        }
        let (head, _) = exchange(&mut send, get("/close"), None).await.unwrap();
        assert_eq!(head.status, 200, "{server}: the connection was lost");
    }
}

/// An HTTP/2 client that cancels a request the peer is slow to answer (RST_STREAM, as a browser
/// does when the user navigates away): the peer's connection is closed then, not held until the
/// peer answers; the client's connection and its other streams go on.
#[tokio::test]
async fn an_http2_client_that_cancels_a_slow_request_frees_the_peer_connection() {
    let (events, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let (peer, _) = scripted(move |mut s| {
        let events = events.clone();
        async move {
            while let Some(head) = read_head(&mut s).await {
                if head.starts_with(b"GET /fast ") {
                    let ok = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    ok.await.unwrap();
                    continue;
                }
                let _ = events.send("request");
                // Never answers; reports when portico closes the connection.
                let mut byte = [0u8; 1];
                if let Ok(0) | Err(_) = s.read(&mut byte).await {
                    let _ = events.send("closed");
                }
                return;
            }
        }
    })
    .await;
    let (_dir, pki) = localhost_pki();
    type Event = Result<Option<&'static str>, tokio::time::error::Elapsed>;
    let within = |event: Event, what: &str| event.unwrap_or_else(|_| panic!("no {what} in time"));
    for server in LOOPS {
        let (proxy, mut send) = h2_through(&pki, server, peer).await;
        let (resp, stream) = send.send_request(get("/slow"), true).unwrap();
        let event = tokio::time::timeout(IO_TIMEOUT, seen.recv()).await;
        assert_eq!(within(event, "request"), Some("request"), "{server}");
        // Past the 100 ms after which the own loop watches the client.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop((resp, stream)); // h2 resets the stream: CANCEL
        let event = tokio::time::timeout(IO_TIMEOUT, seen.recv()).await;
        assert_eq!(within(event, "close"), Some("closed"), "{server}");
        let (head, body) = exchange(&mut send, get("/fast"), None).await.unwrap();
        assert_eq!(
            (head.status.as_u16(), &body[..]),
            (200, &b"ok"[..]),
            "{server}"
        );
        assert!(!proxy.logs().contains("panicked"), "{}", proxy.logs());
    }
}

/// A pooled connection the peer closed just as an HTTP/2 client's request went out on it is
/// retried on a new one, and the client never knows, on either loop.
#[tokio::test]
async fn http2_requests_on_a_dropped_pooled_connection_are_retried() {
    let (peer, accepted) = scripted(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            let ok = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            ok.await.unwrap();
            let _ = read_head(&mut s).await;
        }
    })
    .await;
    let (_dir, pki) = localhost_pki();
    for server in LOOPS {
        let (_proxy, mut send) = h2_through(&pki, server, peer).await;
        let before = accepted.load(Ordering::SeqCst);
        for _ in 0..3 {
            let (head, body) = exchange(&mut send, get("/"), None).await.unwrap();
            assert_eq!(
                (head.status.as_u16(), &body[..]),
                (200, &b"ok"[..]),
                "{server}"
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst) - before, 3, "{server}");
    }
}

/// A body far larger than HTTP/2's initial flow-control window (64 KiB) reaches the client
/// whole: the peer's bytes go out as the client's window opens, on either loop.
#[tokio::test]
async fn an_http2_client_gets_a_body_larger_than_its_window() {
    const SIZE: usize = 3 * 1024 * 1024;
    let (peer, _) = scripted(|mut s| async move {
        while read_head(&mut s).await.is_some() {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            let body: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
            s.write_all(&body).await.unwrap();
        }
    })
    .await;
    let (_dir, pki) = localhost_pki();
    for server in LOOPS {
        let (_proxy, mut send) = h2_through(&pki, server, peer).await;
        for _ in 0..2 {
            let (head, body) = exchange(&mut send, get("/big"), None).await.unwrap();
            assert_eq!((head.status.as_u16(), body.len()), (200, SIZE), "{server}");
            assert!(
                body.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
                "{server}"
            );
        }
    }
}

/// An HTTP/2 client that asks for a large answer and never reads it (its window stays shut)
/// holds the peer's connection no longer than `send_timeout`, on either loop, as an HTTP/1
/// client does (resources.rs).
#[tokio::test]
async fn an_http2_client_that_never_reads_frees_the_peer_at_the_send_timeout() {
    let (_dir, pki) = localhost_pki();
    for server in LOOPS {
        let origin = BigOrigin::start().await;
        let server = format!("send_timeout: 1s, {server}");
        let (_proxy, mut send) = h2_through(&pki, &server, origin.addr).await;
        let (resp, _stream) = send.send_request(get("/big"), true).unwrap();
        let started = std::time::Instant::now();
        eventually("the peer's connection is closed under it", || async {
            origin.cut.load(Ordering::SeqCst)
        })
        .await;
        assert!(!origin.finished.load(Ordering::SeqCst), "{server}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(8),
            "{server}"
        );
        drop(resp);
    }
}
