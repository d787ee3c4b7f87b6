//! Plain requests (HTTP/1, no body, no hop-by-hop fields) take portico's own forwarding loop;
//! everything else takes Pingora's. These tests hold the own loop to what Pingora's does, with
//! scripted origins for the cases a well-behaved origin never shows: a pooled connection
//! dropped under a request, close-delimited and cut bodies, interim 1xx, a 101 out of nowhere.

use crate::harness::*;
use crate::origins::HttpOrigin;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads from the client's connection until `end` has arrived.
async fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while !out.ends_with(end) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(IO_TIMEOUT, s.read(&mut chunk))
            .await
            .expect("response timed out")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&chunk[..n]);
    }
    out
}

const KEEP_ALIVE: &[u8] = b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n";

/// The headers an `HttpOrigin` says it got (its JSON answer), names lower-cased, sorted.
pub fn origin_saw(json: &serde_json::Value) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = json["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let name = h[0].as_str().unwrap().to_ascii_lowercase();
            (name, h[1].as_str().unwrap().to_owned())
        })
        .collect();
    headers.sort();
    headers
}

/// Every test here runs against both forwarding loops: portico's own (plain requests) and
/// Pingora's (`server.fast_path: false` sends every request through it).
pub const LOOPS: [&str; 2] = ["fast_path: true", "fast_path: false"];

/// A peer that answers the first request on a connection and drops the next one unanswered
/// (its idle timeout fired just as it arrived).
async fn answers_once(mut s: TcpStream) {
    if read_head(&mut s).await.is_some() {
        let ok = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        ok.await.unwrap();
        let _ = read_head(&mut s).await;
    }
}

/// A peer that closes a kept-alive connection just as a request arrives on it (its idle
/// timeout fired): the request is sent again on a new connection, and the client never knows.
#[tokio::test]
async fn a_pooled_connection_the_peer_dropped_is_retried_on_a_new_one() {
    let (addr, accepted) = scripted(answers_once).await;
    for server in LOOPS {
        let proxy = Proxy::start_with_server(server, &one_route(addr)).await;
        let before = accepted.load(Ordering::SeqCst);
        for _ in 0..3 {
            let r = get(proxy.addr, "/", &[]).await;
            assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{server}");
        }
        // A GET that takes Pingora's loop even with fast_path (Connection names a field):
        // retried on the same peer too (it was a 502, every peer being "tried").
        let pingoras = "GET / HTTP/1.1\r\nHost: test.local\r\nConnection: X-Private, close\r\nX-Private: 1\r\n\r\n";
        let r = send(proxy.addr, None, pingoras).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{server}");
        assert_eq!(
            accepted.load(Ordering::SeqCst) - before,
            4,
            "{server}: one new connection per retry"
        );
    }
}

/// The same dropped pooled connection under a POST: it may have been acted on, so it is not
/// sent again (RFC 9110 9.2.2; Pingora's and nginx's default), by either loop: 502.
#[tokio::test]
async fn a_post_on_a_dropped_pooled_connection_is_not_sent_again() {
    let (addr, accepted) = scripted(answers_once).await;
    for server in LOOPS {
        let proxy = Proxy::start_with_server(server, &one_route(addr)).await;
        // Each POST after a GET that leaves a pooled connection in the pool its loop uses: a
        // plain GET before the body-less POST, a GET that takes Pingora's loop before the other.
        let plain = "GET / HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n";
        let pingoras = "GET / HTTP/1.1\r\nHost: test.local\r\nConnection: X-Private, close\r\n\r\n";
        for (prime, post) in [
            (plain, "POST / HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n"),
            (pingoras, "POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"),
        ] {
            assert_eq!(send(proxy.addr, None, prime).await.status, 200, "{server}");
            let before = accepted.load(Ordering::SeqCst);
            let r = send(proxy.addr, None, post).await;
            assert_eq!(r.status, 502, "{server}: {post:?}");
            assert_eq!(accepted.load(Ordering::SeqCst), before, "{server}: sent again");
        }
    }
}

/// An HTTP/1.0 origin ends its body by closing: the client gets it chunked and keeps its
/// connection for the next request.
#[tokio::test]
async fn a_close_delimited_body_is_chunked_and_the_client_keeps_its_connection() {
    let (addr, _) = scripted(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
                .await;
        }
    })
    .await;
    for server in LOOPS {
        let proxy = Proxy::start_with_server(server, &one_route(addr)).await;
        let mut client = connect(proxy.addr, None).await;
        for _ in 0..2 {
            client.write_all(KEEP_ALIVE).await.unwrap();
            let raw = read_until(&mut client, b"0\r\n\r\n").await;
            let r = parse_response(&raw).unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.header("transfer-encoding"), Some("chunked"));
            assert_eq!(r.text(), "until the end");
        }
    }
}

/// 103 Early Hints before the response is passed on, then the response itself.
#[tokio::test]
async fn interim_responses_are_passed_on() {
    let (addr, _) = scripted(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\nServer: origin\r\n\r\nHTTP/1.1 200 OK\r\nServer: origin\r\nContent-Length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    // The route's response rules apply to the 103 as to the final answer, on both loops (the
    // own loop wrote interim answers unfiltered).
    let config = format!(
        "upstreams:\n  app: {{peers: ['{addr}']}}\nroutes:\n  - {{upstream: app, response_headers: {{set: {{X-Edge: '1'}}, remove: [Server]}}}}\n"
    );
    for server in LOOPS {
        let proxy = Proxy::start_with_server(server, &config).await;
        let raw = send_raw(proxy.addr, None, request_text("GET", "/", &[]).as_bytes()).await;
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 103"), "{server}: {text}");
        let final_at = text.find("HTTP/1.1 200").expect("the final response");
        let (interim, last) = text.split_at(final_at);
        assert!(interim.contains("Link: </app.css>; rel=preload"), "{text}");
        for part in [interim, last] {
            assert!(
                part.to_ascii_lowercase().contains("x-edge: 1"),
                "{server}: {part}"
            );
            assert!(!part.contains("Server: origin"), "{server}: {part}");
        }
        assert!(text.ends_with("ok"), "{text}");
    }
}

/// HEAD and 304 answers carry no body whatever their Content-Length says: the client's
/// connection goes on to the next request instead of waiting for bytes that never come.
#[tokio::test]
async fn head_and_304_end_at_the_head() {
    let (addr, _) = scripted(|mut s| async move {
        while let Some(head) = read_head(&mut s).await {
            let answer: &[u8] = if head.starts_with(b"HEAD") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
            } else {
                b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"
            };
            if s.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    for server in LOOPS {
        let proxy = Proxy::start_with_server(server, &one_route(addr)).await;
        let mut client = connect(proxy.addr, None).await;
        for (request, status) in [
            (&b"HEAD / HTTP/1.1\r\nHost: test.local\r\n\r\n"[..], 200),
            (KEEP_ALIVE, 304),
            (&b"HEAD / HTTP/1.1\r\nHost: test.local\r\n\r\n"[..], 200),
        ] {
            client.write_all(request).await.unwrap();
            let raw = read_until(&mut client, b"\r\n\r\n").await;
            let r = parse_response(&raw).unwrap();
            assert_eq!(r.status, status);
            assert!(r.body.is_empty());
        }
    }
}

/// A peer that dies mid-body: the client gets what was sent and then a closed connection
/// (no hang, no second response); the next request is served on a new peer connection.
#[tokio::test]
async fn a_body_cut_by_the_peer_cuts_the_client() {
    let (addr, _) = scripted(|mut s| async move {
        if let Some(head) = read_head(&mut s).await {
            let answer: &[u8] = if head.starts_with(b"GET /cut") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            };
            let _ = s.write_all(answer).await;
        }
    })
    .await;
    for server in LOOPS {
        let proxy = Proxy::start_with_server(server, &one_route(addr)).await;
        let mut client = connect(proxy.addr, None).await;
        client
            .write_all(b"GET /cut HTTP/1.1\r\nHost: test.local\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(IO_TIMEOUT, client.read_to_end(&mut raw))
            .await
            .expect("the client's connection must be closed, not left hanging")
            .ok();
        let r = parse_response(&raw).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "0123456789"));
        assert_eq!(get(proxy.addr, "/", &[]).await.text(), "ok");
    }
}

/// A 101 to a request that asked for no upgrade is the peer's error: 502, nothing tunnelled.
#[tokio::test]
async fn a_101_nobody_asked_for_is_a_502() {
    let (addr, _) = scripted(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw bytes")
                .await;
        }
    })
    .await;
    for server in LOOPS {
        let proxy = Proxy::start_with_server(server, &one_route(addr)).await;
        let r = get(proxy.addr, "/", &[]).await;
        assert_eq!(r.status, 502);
        assert!(!r.text().contains("raw bytes"));
    }
}

/// The two loops send the peer the same head: a plain request, and the same request made
/// non-plain by a hop-by-hop field (which then takes Pingora's loop). Only that field differs.
/// Hop-by-hop fields never reach the peer on either: `Connection: close` from the client must
/// not close the pooled connection, and a field it nominates is dropped.
#[tokio::test]
async fn both_loops_send_the_same_head() {
    let origin = HttpOrigin::start("a").await;
    for server in LOOPS {
        let proxy = Proxy::start_with_server(server, &one_route(origin.addr)).await;
        let common = [
            ("Authorization", "Bearer t"),
            ("Cookie", "a=1; b=2"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("Accept", "*/*"),
        ];
        let seen = |r: Resp| origin_saw(&r.json());
        let plain = seen(get(proxy.addr, "/x?y=1", &common).await);
        let mut raw = String::from("GET /x?y=1 HTTP/1.1\r\nHost: test.local\r\n");
        for (name, value) in common {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        raw.push_str("Connection: X-Private, close\r\nX-Private: secret\r\n\r\n");
        let pingora = seen(send(proxy.addr, None, &raw).await);
        assert_eq!(plain, pingora);
        for (name, _) in &plain {
            assert!(!["connection", "x-private", "keep-alive", "te"].contains(&name.as_str()));
        }
        assert!(plain.contains(&("x-forwarded-for".into(), "127.0.0.1".into())));
        assert!(plain.contains(&("authorization".into(), "Bearer t".into())));
    }
}

/// A client that gives up on a request the peer is slow to answer (a long poll): the peer's
/// connection is closed then, not held until the peer answers (nginx and Pingora's loop do the
/// same). Without the watch, the origin here would wait forever for its connection to end.
#[tokio::test]
async fn a_client_that_leaves_a_slow_request_frees_the_peer_connection() {
    let (events, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let (addr, _) = scripted(move |mut s| {
        let events = events.clone();
        async move {
            if read_head(&mut s).await.is_some() {
                let _ = events.send("request");
                // Never answers; reports when portico closes the connection.
                let mut byte = [0u8; 1];
                if let Ok(0) | Err(_) = s.read(&mut byte).await {
                    let _ = events.send("closed");
                }
            }
        }
    })
    .await;
    for server in LOOPS {
        let proxy = Proxy::start_with_server(server, &one_route(addr)).await;
        let mut client = connect(proxy.addr, None).await;
        client.write_all(KEEP_ALIVE).await.unwrap();
        type Event = Result<Option<&'static str>, tokio::time::error::Elapsed>;
        let within =
            |event: Event, what: &str| event.unwrap_or_else(|_| panic!("no {what} in time"));
        let event = tokio::time::timeout(IO_TIMEOUT, seen.recv()).await;
        assert_eq!(within(event, "request"), Some("request"));
        // After portico has started watching (100 ms), and before: both must end the same way.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(client);
        let event = tokio::time::timeout(IO_TIMEOUT, seen.recv()).await;
        assert_eq!(within(event, "close"), Some("closed"));
        // Not the proxy's error: logged as the client's doing, at info.
        proxy.wait_for_log("client went away").await;
        assert!(!proxy.logs().contains("Fail to"), "{}", proxy.logs());
    }
}

/// The other side of that watch: an answer that comes after portico started watching the
/// client still reaches it, and its connection (and the peer's) is kept for the next request.
#[tokio::test]
async fn a_slow_answer_still_arrives_and_both_connections_are_kept() {
    let (addr, accepted) = scripted(|mut s| async move {
        while read_head(&mut s).await.is_some() {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let ok = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow");
            if ok.await.is_err() {
                return;
            }
        }
    })
    .await;
    for server in LOOPS {
        let proxy = Proxy::start_with_server(server, &one_route(addr)).await;
        let before = accepted.load(Ordering::SeqCst);
        let mut client = connect(proxy.addr, None).await;
        for _ in 0..2 {
            client.write_all(KEEP_ALIVE).await.unwrap();
            let raw = read_until(&mut client, b"slow").await;
            assert_eq!(parse_response(&raw).unwrap().status, 200);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst) - before,
            1,
            "{server}: the peer connection was reused"
        );
    }
}

/// A peer that takes the request and never answers: after the upstream's `read_timeout` the
/// client gets 504 Gateway Timeout (nginx's and HAProxy's answer), from either loop: a plain
/// GET (portico's loop), a POST with a body (Pingora's), and a WebSocket upgrade (portico's
/// handshake).
#[tokio::test]
async fn a_peer_that_never_answers_is_a_504_after_read_timeout() {
    let (addr, _) = scripted(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            // Holds the connection, silent, until portico gives up on it.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        }
    })
    .await;
    let config = format!(
        "upstreams:\n  app: {{peers: ['{addr}'], read_timeout: 1s}}\nroutes:\n  - {{upstream: app}}\n"
    );
    for server in LOOPS {
        let proxy = Proxy::start_with_server(server, &config).await;
        let post = "POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2\r\n\r\nhi";
        let upgrade = "GET /ws HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let cases = [
            ("own loop", KEEP_ALIVE_CLOSE),
            ("Pingora's loop", post),
            ("upgrade", upgrade),
        ];
        for (how, raw) in cases {
            let started = std::time::Instant::now();
            let r = send(proxy.addr, None, raw).await;
            assert_eq!(r.status, 504, "{how}");
            let waited = started.elapsed();
            assert!(
                waited >= std::time::Duration::from_millis(900),
                "{how}: {waited:?}"
            );
        }
        // Both failures logged alike, as what they are.
        proxy.wait_for_log("status: 504, GET /").await;
        proxy.wait_for_log("status: 504, POST /").await;
        proxy.wait_for_log("status: 504, GET /ws").await;
        let logs = proxy.logs();
        assert_eq!(logs.matches("Fail to proxy: ").count(), 3, "{logs}");
        assert!(!logs.contains("Fail to filter request"), "{logs}");
    }
}

const KEEP_ALIVE_CLOSE: &str = "GET / HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n";

/// Reads `n` responses (each with a Content-Length, as the test origin sends) from `s`.
async fn read_responses(s: &mut TcpStream, n: usize) -> Vec<Resp> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < n {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
            let length = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| {
                    std::str::from_utf8(h.value)
                        .unwrap()
                        .parse::<usize>()
                        .unwrap()
                })
                .expect("a Content-Length");
            if buf.len() >= head + length {
                out.push(parse_response(&buf[..head + length]).unwrap());
                buf.drain(..head + length);
                continue;
            }
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(IO_TIMEOUT, s.read(&mut chunk)).await;
        let got = read.expect("responses timed out").unwrap();
        assert!(got > 0, "closed after {} of {n} responses", out.len());
        buf.extend_from_slice(&chunk[..got]);
    }
    out
}

/// HTTP/1.1 pipelining (RFC 9112 9.3.2), as nginx and HAProxy serve it: requests sent before
/// the previous answer arrived are answered in order on the same connection, by either loop,
/// whether they come in one write or while the previous one is still at the peer (after portico
/// started watching the client for a disconnect). Pingora's default would answer the first,
/// close, and drop the rest.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let origin = HttpOrigin::start("a").await;
    for server in LOOPS {
        let proxy = Proxy::start_with_server(server, &one_route(origin.addr)).await;
        let mut client = connect(proxy.addr, None).await;
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n");
        let post = "POST /post HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2\r\n\r\nhi";
        let paths = |rs: &[Resp]| -> Vec<String> {
            let path = |r: &Resp| r.json()["path"].as_str().unwrap().to_owned();
            rs.iter().map(path).collect()
        };
        // A plain GET (portico's loop), a POST (Pingora's), a GET: in one write.
        let together = format!("{}{post}{}", get("/one"), get("/two"));
        client.write_all(together.as_bytes()).await.unwrap();
        let rs = read_responses(&mut client, 3).await;
        assert_eq!(paths(&rs), ["/one", "/post", "/two"]);
        // The next request while the slow one is still at the peer, past the 100 ms watch.
        client.write_all(get("/slow/400").as_bytes()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        client.write_all(get("/three").as_bytes()).await.unwrap();
        let rs = read_responses(&mut client, 2).await;
        assert_eq!(paths(&rs), ["/slow/400", "/three"]);
    }
}

/// A peer that never completes the TCP handshake (its accept queue is full, so its SYNs are
/// dropped): after the group's `connect_timeout` the client gets 504, from either loop.
#[tokio::test]
async fn a_peer_that_never_accepts_is_a_504_after_connect_timeout() {
    // A listener with a backlog of one that never accepts, its queue filled by two clients.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..2 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fillers.push(s);
    }
    // Wait until a further connect really stalls (the queue is full), or give up on the case.
    let stalled = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        TcpStream::connect(addr),
    )
    .await
    .is_err();
    assert!(stalled, "the peer's accept queue did not fill");
    let config = format!(
        "upstreams:\n  app: {{peers: ['{addr}'], connect_timeout: 500ms, retries: 0}}\nroutes:\n  - {{upstream: app}}\n"
    );
    for server in LOOPS {
        let proxy = Proxy::start_with_server(server, &config).await;
        let started = std::time::Instant::now();
        let r = get(proxy.addr, "/", &[]).await;
        assert_eq!(r.status, 504, "{server}");
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(450)
                && waited < std::time::Duration::from_secs(5),
            "{server}: {waited:?}"
        );
    }
    drop(socket);
}

/// An origin as strict as nginx about Host: an HTTP/1.1 request without exactly one Host field
/// is a 400 (RFC 9112 3.2); else 200 with the request line and the Host it got as the body.
async fn strict_about_host(mut s: TcpStream) {
    while let Some(head) = read_head(&mut s).await {
        let head = String::from_utf8_lossy(&head).into_owned();
        let line = head.lines().next().unwrap_or_default().to_owned();
        let hosts: Vec<&str> = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(name, _)| name.eq_ignore_ascii_case("host"))
            .map(|(_, value)| value.trim())
            .collect();
        let answer = match (line.ends_with("HTTP/1.1"), hosts.as_slice()) {
            (true, [host]) => format!("{line} {host}"),
            (true, _) => {
                let bad = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
                bad.await.unwrap();
                continue;
            }
            (false, _) => format!("{line} -"),
        };
        let ok = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        s.write_all(ok.as_bytes()).await.unwrap();
    }
}

/// HTTP/1.0 allows a request without Host; HTTP/1.1, which portico speaks to its peers, does
/// not, and strict origins (nginx) refuse one without it. A malicious or ancient client sends
/// `GET / HTTP/1.0` with no Host: the peer gets its own address as Host, the name portico
/// connected to (as nginx sends its `proxy_pass` host), by both loops. An HTTP/1.1 request
/// without Host is the client's error: 400 from portico, and the peer never sees it.
#[tokio::test]
async fn an_http10_request_without_host_reaches_the_peer_with_one() {
    let (addr, accepted) = scripted(strict_about_host).await;
    for server in LOOPS {
        let proxy = Proxy::start_with_server(server, &one_route(addr)).await;
        for raw in [
            "GET /x HTTP/1.0\r\n\r\n",
            "GET /x HTTP/1.0\r\nUser-Agent: old\r\n\r\n",
            // Not plain (a hop-by-hop field): Pingora's loop under either setting.
            "GET /x HTTP/1.0\r\nConnection: X-Private\r\nX-Private: 1\r\n\r\n",
        ] {
            let r = send(proxy.addr, None, raw).await;
            assert_eq!(
                (r.status, r.text()),
                (200, format!("GET /x HTTP/1.1 {addr}")),
                "{server}: {raw:?}"
            );
        }
        // With a Host, it is the client's.
        let r = send(proxy.addr, None, "GET /x HTTP/1.0\r\nHost: a.test\r\n\r\n").await;
        assert_eq!(r.text(), "GET /x HTTP/1.1 a.test", "{server}");
        let before = accepted.load(Ordering::SeqCst);
        let r = send(proxy.addr, None, "GET /x HTTP/1.1\r\n\r\n").await;
        assert_eq!(r.status, 400, "{server}");
        assert_eq!(accepted.load(Ordering::SeqCst), before, "{server}");
    }
    // A route that removes Host: the peer still gets one (a plain request: both loops).
    let routes = format!(
        "upstreams:\n  app: {{peers: ['{addr}']}}\nroutes:\n  - {{upstream: app, request_headers: {{remove: [Host]}}}}\n"
    );
    for server in LOOPS {
        let proxy = Proxy::start_with_server(server, &routes).await;
        let r = send(
            proxy.addr,
            None,
            "GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(r.text(), format!("GET /x HTTP/1.1 {addr}"), "{server}");
    }
}
