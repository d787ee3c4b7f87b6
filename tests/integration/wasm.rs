//! Proxy-Wasm filters (`wasm`): guests written in WebAssembly text (tests/fixtures/wasm), run by
//! the real binary. What a guest does to a request, what it answers itself, and what a broken
//! or malicious guest (a trap, an endless loop, a module portico cannot host) costs: one
//! request's `on_error` answer, never the process or another request.

use crate::harness::*;
use crate::origins::{HttpOrigin, WsOrigin};
use futures_util::{SinkExt, StreamExt};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/wasm")
        .join(name)
}

fn wasm(module: &Path, extra: &str) -> String {
    format!("{{wasm: {{module: '{}'{extra}}}}}", module.display())
}

async fn scrape(admin: std::net::SocketAddr) -> String {
    get(admin, "/metrics", &[]).await.text()
}

#[tokio::test]
async fn a_guest_edits_request_and_response_headers_and_reads_properties() {
    let origin = HttpOrigin::start("a").await;
    let guest = fixture("guest.wat");
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{name: web, path_prefix: /, upstream: app, filters: [{}]}}\n",
        origin.addr,
        wasm(&guest, ", root_id: tenant")
    ))
    .await;
    let r = get(
        proxy.addr,
        "/some//path?q=1",
        &[
            ("X-Replace", "old"),
            ("X-Remove", "gone"),
            ("Authorization", "Bearer t"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_header("x-wasm"), ["added"]);
    assert_eq!(r.upstream_header("x-replace"), ["new"]);
    assert!(r.upstream_header("x-remove").is_empty());
    // Properties: the canonical path (what routing judged) and the plugin's root_id.
    assert_eq!(r.upstream_header("x-path"), ["/some/path?q=1"]);
    assert_eq!(r.upstream_header("x-root"), ["tenant"]);
    // Untouched: what the guest did not edit.
    assert_eq!(r.upstream_header("authorization"), ["Bearer t"]);
    assert_eq!(r.header("x-wasm-response"), Some("yes"));
    assert!(proxy.logs().contains("wasm tenant: configured"));
}

/// A guest's own answer (403 with a body and a header) ends the request: the origin never sees
/// it. The same guest lets a request with its token through, WebSocket upgrades included.
#[tokio::test]
async fn a_local_response_never_reaches_the_origin_and_a_guest_authorises_an_upgrade() {
    let origin = HttpOrigin::start("a").await;
    let echo = WsOrigin::start("echo").await;
    let deny = wasm(&fixture("guest.wat"), ", configuration: deny");
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\n  echo: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /ws/, upstream: echo, filters: [{deny}]}}\n  - {{path_prefix: /, upstream: app, filters: [{deny}]}}\n",
        origin.addr, echo.addr
    ))
    .await;
    let r = get(proxy.addr, "/x", &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "denied by wasm\n");
    assert_eq!(r.header("x-denied"), Some("yes"));
    assert_eq!(origin.hits(), 0);
    let r = get(proxy.addr, "/x", &[("X-Token", "t")]).await;
    assert_eq!((r.status, r.origin().as_str()), (200, "a"));

    let refused = ws_connect(proxy.addr, "/ws/", &[]).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|(_, r)| r.status())),
    }
    let logged = || proxy.logs().matches("stream logged").count();
    // Each of the three requests so far ends its stream (on_log) just after its answer is
    // sent: wait for the last one's line, else it could land after `before` is read.
    eventually("on_log of the three answered requests", || async {
        logged() == 3
    })
    .await;
    let before = logged();
    let (mut ws, resp) = ws_connect(proxy.addr, "/ws/", &[("X-Token", "t")])
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap(), "hi");
    // The guest's stream ends when the WebSocket does, not at its 101.
    assert_eq!(logged(), before);
    ws.close(None).await.unwrap();
    eventually("on_log when the WebSocket closes", || async {
        logged() == before + 1
    })
    .await;
}

/// A guest that traps, one that never returns (stopped by call_timeout) and one that asks for
/// more memory than max_memory: each such request gets its route's on_error answer (deny: 500 before any peer; allow: on to the peer as if
/// the filter were not there), every other request is served, and the failures are counted.
#[tokio::test]
async fn a_trap_and_an_endless_loop_get_on_error_while_others_are_served() {
    let origin = HttpOrigin::start("a").await;
    let guest = fixture("guest.wat");
    let admin = proxy_addr();
    let proxy = Proxy::start(&format!(
        "admin: {{address: '{admin}'}}\nupstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{name: open, path_prefix: /open/, upstream: app, filters: [{}]}}\n  - {{name: closed, path_prefix: /, upstream: app, filters: [{}]}}\n",
        origin.addr,
        wasm(&guest, ", on_error: allow, call_timeout: 20ms"),
        wasm(&guest, ", call_timeout: 20ms, name: strict"),
    ))
    .await;
    for bad in ["X-Trap", "X-Loop", "X-Grow"] {
        let hits = origin.hits();
        let r = get(proxy.addr, "/x", &[(bad, "1")]).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (500, "filter failed\n"),
            "{bad}"
        );
        assert_eq!(
            origin.hits(),
            hits,
            "{bad}: a denied request reached the origin"
        );
        let r = get(proxy.addr, "/open/x", &[(bad, "1")]).await;
        assert_eq!(r.status, 200, "{bad}");
        // Allowed through untouched: the guest's edits of a failed call are not applied.
        assert!(r.upstream_header("x-wasm").is_empty(), "{bad}");
        // The next request on the same route gets a fresh instance that works.
        let r = get(proxy.addr, "/x", &[]).await;
        assert_eq!(r.upstream_header("x-wasm"), ["added"], "{bad}");
    }
    // Many at once, good and bad mixed: the good ones all pass.
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let addr = proxy.addr;
            tokio::spawn(async move {
                let headers: &[(&str, &str)] = if i % 4 == 0 { &[("X-Loop", "1")] } else { &[] };
                (i, get(addr, "/x", headers).await.status)
            })
        })
        .collect();
    for t in tasks {
        let (i, status) = t.await.unwrap();
        assert_eq!(status, if i % 4 == 0 { 500 } else { 200 }, "request {i}");
    }
    let m = scrape(admin).await;
    assert!(
        m.contains("portico_filter_errors_total{filter=\"wasm:strict\",route=\"closed\"} 13"),
        "{m}"
    );
    assert!(m.contains("portico_filter_errors_total{filter=\"wasm:guest\",route=\"open\"} 3"));
    // Logged once a second at most per filter: the first failure of each.
    let logs = proxy.logs();
    assert!(
        logs.contains("wasm strict on route closed: on request headers trapped"),
        "{logs}"
    );
    assert!(
        logs.contains("wasm guest on route open: on request headers trapped"),
        "{logs}"
    );
}

/// `call_timeout` is each call's own: a guest looping for ever on one worker is cut at its 20 ms
/// while a guest on the other worker that takes 100 ms of its 1 s runs to its end (the
/// watchdog's interrupt for the first is not the second's), and an idle portico is not woken
/// a thousand times a second to enforce it.
#[tokio::test]
async fn call_timeout_cuts_only_the_call_past_its_own() {
    let origin = HttpOrigin::start("a").await;
    let guest = fixture("guest.wat");
    let routes = format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{name: slow, path_prefix: /patient/, upstream: app, filters: [{}]}}\n  - {{name: fast, path_prefix: /, upstream: app, filters: [{}]}}\n",
        origin.addr,
        wasm(&guest, ", call_timeout: 1s, name: patient"),
        wasm(&guest, ", call_timeout: 20ms, name: strict"),
    );
    let proxy = Proxy::start_file(|dir, addr| {
        format!(
            "server: {{threads: 2, pid_file: '{d}/portico.pid', upgrade_sock: '{d}/upgrade.sock'}}\nlisteners:\n  - address: '{addr}'\n{routes}",
            d = dir.display()
        )
    })
    .await;
    for round in 0..3 {
        // Both at once: each worker takes one connection in turn, so with a few of each, spins
        // and loops run side by side on both workers.
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let addr = proxy.addr;
                tokio::spawn(async move {
                    let (path, header) = match i % 2 {
                        0 => ("/patient/x", "X-Spin"),
                        _ => ("/x", "X-Loop"),
                    };
                    let started = std::time::Instant::now();
                    let r = get(addr, path, &[(header, "1")]).await;
                    (i, r, started.elapsed())
                })
            })
            .collect();
        for t in tasks {
            let (i, r, took) = t.await.unwrap();
            if i % 2 == 0 {
                assert_eq!(r.status, 200, "round {round}, spin {i}: {}", r.text());
                assert_eq!(r.upstream_header("x-wasm"), ["added"]);
                assert!(took >= std::time::Duration::from_millis(100), "{took:?}");
            } else {
                assert_eq!(r.status, 500, "round {round}, loop {i}");
            }
        }
    }
    assert!(
        proxy
            .logs()
            .contains("wasm strict on route fast: on request headers ran past call_timeout"),
        "{}",
        proxy.logs()
    );
    // Idle, the watchdog looks every 20 ms (the shortest call_timeout), not every millisecond:
    // its thread wakes about 25 times in half a second, not 500.
    let wakes = || {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", proxy.pid())).unwrap();
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
            .find(|s| s.starts_with("Name:\tportico-wasm-wa"))
            .and_then(|s| {
                let line = s
                    .lines()
                    .find(|l| l.starts_with("voluntary_ctxt_switches:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .expect("the watchdog thread")
    };
    let before = wakes();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let woken = wakes() - before;
    assert!(
        (5..100).contains(&woken),
        "the watchdog woke {woken} times in 500 ms"
    );
}

/// SIGHUP with a changed module swaps it under load: no request fails, and requests after the
/// swap see the new module's edits.
#[tokio::test]
async fn a_reload_swaps_the_module_under_load_with_no_failed_request() {
    let origin = HttpOrigin::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("edge.wat");
    let v1 = std::fs::read_to_string(fixture("guest.wat")).unwrap();
    std::fs::write(&module, &v1).unwrap();
    let body = format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /, upstream: app, filters: [{}]}}\n",
        origin.addr,
        // call_timeout is wall-clock time: on a loaded CI machine a callback preempted for
        // 10 ms would fail (on_error), which is not what this test is about.
        wasm(&module, ", call_timeout: 1s")
    );
    let proxy = Proxy::start(&body).await;
    assert_eq!(
        get(proxy.addr, "/", &[]).await.upstream_header("x-wasm"),
        ["added"]
    );
    let load = Load::start(proxy.addr, 4, "/");
    std::fs::write(&module, v1.replace("\"added\"", "\"again\"")).unwrap();
    proxy.signal("HUP");
    proxy.wait_for_log("configuration reloaded").await;
    eventually("the new module serves", || async {
        get(proxy.addr, "/", &[]).await.upstream_header("x-wasm") == ["again"]
    })
    .await;
    assert_no_failures(&load.stop().await);

    // A module that no longer loads keeps the running one.
    std::fs::write(&module, "(module)").unwrap();
    proxy.signal("HUP");
    proxy.wait_for_log("reload of").await;
    assert!(proxy.logs().contains("exports no proxy_abi_version_0_2_1"));
    assert_eq!(
        get(proxy.addr, "/", &[]).await.upstream_header("x-wasm"),
        ["again"]
    );
}

/// `-t` refuses a module portico cannot host, each reason under the filter's YAML path.
#[test]
fn a_module_with_a_missing_export_or_an_unknown_import_is_refused_by_t() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("portico.yaml");
    std::fs::write(
        &conf,
        format!(
            "listeners: [{{address: '127.0.0.1:8080'}}]\nupstreams:\n  app: {{peers: ['127.0.0.1:3000']}}\nroutes:\n  - path_prefix: /\n    upstream: app\n    filters:\n      - {}\n      - {}\n      - {}\n      - {}\n",
            wasm(&fixture("no_allocator.wat"), ""),
            wasm(&fixture("unknown_import.wat"), ""),
            wasm(&fixture("guest.wat"), ", configuration: refuse"),
            wasm(&fixture("guest.wat"), ", max_memory: 1k, call_timeout: 0s"),
        ),
    )
    .unwrap();
    let (code, _, err) = run_cli(&["-t", "-c", conf.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    for want in [
        "line 8: routes[0].filters[0].wasm.module: ",
        "exports no proxy_on_memory_allocate (or malloc)",
        "line 9: routes[0].filters[1].wasm.module: ",
        "imports env.proxy_frobnicate, which portico does not provide",
        "line 10: routes[0].filters[2].wasm.module: ",
        "proxy_on_configure returned false",
        "routes[0].filters[3].wasm.max_memory: at least 64k",
        "routes[0].filters[3].wasm.call_timeout: at least 1ms",
    ] {
        assert!(err.contains(want), "no {want:?} in:\n{err}");
    }
}

/// A filter built with a real Proxy-Wasm SDK (AssemblyScript, `make wasm-guests`): ABI 0.2.0,
/// its root context picked by `root_id`, its configuration read, WASI imported.
#[tokio::test]
async fn a_guest_built_with_the_assemblyscript_sdk_runs() {
    let origin = HttpOrigin::start("a").await;
    let module = fixture("assemblyscript/build/tenant.wasm");
    assert!(
        module.exists(),
        "{} is built by `make wasm-guests`",
        module.display()
    );
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /, upstream: app, filters: [{}]}}\n",
        origin.addr,
        wasm(&module, ", root_id: tenant, configuration: x-tenant")
    ))
    .await;
    let r = get(proxy.addr, "/", &[("X-Tenant", "acme")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_header("x-tenant-checked"), ["acme"]);
    assert_eq!(r.header("x-served-by"), Some("assemblyscript"));
    let r = get(proxy.addr, "/", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (403, "no tenant\n"));
    assert_eq!(origin.hits(), 1);

    // The SDK finds its root context by root_id: another one is refused when it starts.
    let (code, _, err) = {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("p.yaml");
        std::fs::write(
            &conf,
            format!(
                "listeners: [{{address: '127.0.0.1:8080'}}]\nupstreams:\n  app: {{peers: ['127.0.0.1:3000']}}\nroutes:\n  - {{path_prefix: /, upstream: app, filters: [{}]}}\n",
                wasm(&module, ", root_id: nobody")
            ),
        )
        .unwrap();
        run_cli(&["-t", "-c", conf.to_str().unwrap()])
    };
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("routes[0].filters[0].wasm.module"), "{err}");
}

/// A guest pauses a request for an HTTP call to another upstream group (an auth check) and
/// decides on its answer: resumed with a header added, or refused. No answer is the guest's to
/// judge too (here: refused).
#[tokio::test]
async fn a_guest_pauses_a_request_for_an_http_call_and_decides_on_its_answer() {
    let origin = HttpOrigin::start("a").await;
    let auth = HttpOrigin::start("auth").await;
    let caller = fixture("caller.wat");
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\n  auth: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /yes/, upstream: app, filters: [{}]}}\n  - {{path_prefix: /no/, upstream: app, filters: [{}]}}\n",
        origin.addr,
        auth.addr,
        wasm(&caller, ""),
        wasm(&caller, ", configuration: no"),
    ))
    .await;
    let r = get(proxy.addr, "/yes/x", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_header("x-auth"), ["ok"]);
    assert_eq!(auth.hits(), 1);
    let r = get(proxy.addr, "/no/x", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (401, "refused"));
    assert_eq!((auth.hits(), origin.hits()), (2, 1));
    // An auth service that does not answer: the guest gets no headers, and refuses.
    let down = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\n  auth: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /, upstream: app, filters: [{}]}}\n",
        origin.addr,
        free_addr(),
        wasm(&caller, ""),
    ))
    .await;
    let r = get(down.addr, "/yes/x", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (401, "refused"));
    assert_eq!(origin.hits(), 1);
}

/// A root context's timer: `proxy_set_tick_period_milliseconds` at start, then `proxy_on_tick`
/// on each worker thread's VM, its effect seen by requests (through shared data).
#[tokio::test]
async fn a_guest_gets_its_ticks() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /, upstream: app, filters: [{}]}}\n",
        origin.addr,
        wasm(&fixture("ticker.wat"), "")
    ))
    .await;
    // The first request starts the thread's VM, and with it its ticks.
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
    eventually("ticks counted", || async {
        let seen = get(proxy.addr, "/", &[]).await.upstream_header("x-ticks");
        seen.first().is_some_and(|n| n.as_str() >= "3")
    })
    .await;
}

/// `POST path` with `body` (Content-Length framing, `Connection: close`): written from its own
/// task, errors ignored (a proxy that answers early may close before reading it all).
async fn post(addr: std::net::SocketAddr, path: &str, body: Vec<u8>) -> Resp {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = connect(addr, None).await;
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test.local\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&body).await;
        wr
    });
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), rd.read_to_end(&mut out))
        .await
        .expect("response timed out")
        .ok();
    drop(writer.await);
    parse_response(&out)
        .unwrap_or_else(|| panic!("no HTTP response in {:?}", String::from_utf8_lossy(&out)))
}

/// Bodies: a guest that holds each body to its end (Pause) sees it whole and, having removed
/// Content-Length (as in Envoy), changes its size; the peer and the client get it re-framed
/// (chunked), never a stale Content-Length. A request without a body gets no body callback. A malicious client's body past max_body
/// while held is 413 and never reaches the peer; the guest's own refusal from the body (403)
/// likewise.
#[tokio::test]
async fn a_guest_holds_and_rewrites_bodies_and_answers_from_the_request_body() {
    let origin = HttpOrigin::start("o").await;
    let guest = fixture("body.wat");
    // Both forwarding loops (the bodiless GET takes portico's own unless fast_path is off).
    for server in crate::forwarding::LOOPS {
        let proxy = Proxy::start_with_server(server, &format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /, upstream: app, filters: [{}]}}\n",
        origin.addr,
        wasm(&guest, ", max_body: 64k"),
    ))
    .await;

        let r = post(proxy.addr, "/p", b"hello".to_vec()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-length"), None);
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert_eq!(r.header("x-set-buffer"), Some("0"));
        let text = r.text();
        let json = text
            .strip_prefix("wasm:")
            .unwrap_or_else(|| panic!("{text}"));
        let seen: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(seen["body"], "hello+wasm");
        let sent = |name: &str| {
            seen["headers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
                .map(|h| h[1].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(sent("transfer-encoding"), ["chunked"]);
        assert!(sent("content-length").is_empty());

        // No body: no body callback, the request goes as it came. The response callback reads
        // the request's headers.
        let r = get(proxy.addr, "/g", &[("X-Echo", "hi")]).await;
        assert_eq!(r.header("x-echo"), Some("hi"));
        // All pairs read and set back (host, content-length and pseudo-headers among them):
        // OK, and the request goes on as it came.
        assert_eq!(r.header("x-set-pairs"), Some("0"));
        let text = r.text();
        let json = text
            .strip_prefix("wasm:")
            .unwrap_or_else(|| panic!("{text}"));
        let seen: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            (seen["method"].as_str(), seen["body_len"].as_u64()),
            (Some("GET"), Some(0))
        );
        let host: Vec<_> = seen["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case("host"))
            .map(|h| h[1].as_str().unwrap())
            .collect();
        assert_eq!(host, ["test.local"]);

        // The guest's answer from the body: 403 with its body, and the peer never gets the request.
        let hits = origin.hits();
        let r = post(proxy.addr, "/p", b"Xevil".to_vec()).await;
        assert_eq!((r.status, r.text().as_str()), (403, "blocked by wasm body"));
        // A client sending more than max_body while the guest holds it: 413.
        let r = post(proxy.addr, "/p", vec![b'a'; 100_000]).await;
        assert_eq!(r.status, 413);
        assert_eq!(origin.hits(), hits);
        // Still serving.
        assert_eq!(post(proxy.addr, "/p", b"ok".to_vec()).await.status, 200);
    }
}

/// A guest that streams (Continue on each piece) changes bodies piece by piece without holding
/// them: a body far past max_body goes through, rewritten, even in pieces larger than max_body
/// (which bounds what is held: such pieces were refused with 413). It kept Content-Length, so it may
/// not resize: its attempt to append is refused (BadArgument) and the framing stays exact.
#[tokio::test]
async fn a_streaming_guest_rewrites_each_piece_of_a_large_body() {
    let origin = HttpOrigin::start("o").await;
    let guest = fixture("body.wat");
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /, upstream: app, filters: [{}]}}\n",
        origin.addr,
        wasm(&guest, ", max_body: 16k, configuration: s"),
    ))
    .await;
    let r = post(proxy.addr, "/p", vec![b'a'; 300_000]).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    // The origin got 300,000 `b`s and echoed them; the guest turned the answer's `a`s to `b`s.
    assert!(!text.contains('a'), "{}", &text[..200]);
    assert!(text.matches('b').count() >= 300_000);
    assert!(text.contains("\"body_len\":300000"), "{}", &text[..200]);
    let seen = text.to_ascii_lowercase();
    assert!(
        seen.contains("[\"content-length\",\"300000\"]"),
        "{}",
        &text[..300]
    );
    assert!(!seen.contains("transfer-encoding"));
    assert_eq!(
        r.header("content-length"),
        Some(text.len().to_string().as_str())
    );
    assert_eq!(r.header("x-set-buffer"), Some("2"));
}

/// Metrics a guest defines (counter, gauge, histogram) are one series each per plugin and name,
/// shared by the guest's VMs on every thread, in /metrics; the guest reads its counter back. A
/// metric type the ABI does not have is BadArgument.
#[tokio::test]
async fn a_guests_metrics_are_in_prometheus() {
    let origin = HttpOrigin::start("o").await;
    let admin = proxy_addr();
    let proxy = Proxy::start(&format!(
        "admin: {{address: '{admin}'}}\nupstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /, upstream: app, filters: [{}]}}\n",
        origin.addr,
        wasm(&fixture("metrics.wat"), ""),
    ))
    .await;
    for n in 1..=3 {
        let r = get(proxy.addr, "/", &[]).await;
        assert_eq!(r.upstream_header("x-requests"), [n.to_string()]);
        assert_eq!(r.upstream_header("x-bad-kind"), ["2"]);
    }
    let text = scrape(admin).await;
    let series = |prefix: &str, name: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(prefix)
                    && l.contains(&format!("name=\"{name}\""))
                    && l.contains("plugin=\"metrics\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no {prefix} {name} in\n{text}"))
            .to_owned()
    };
    assert_eq!(series("portico_wasm_counter_total{", "requests"), "3");
    assert_eq!(series("portico_wasm_gauge{", "level"), "7");
    assert_eq!(series("portico_wasm_histogram_count{", "sizes"), "3");
    assert_eq!(series("portico_wasm_histogram_sum{", "sizes"), "900");
}
