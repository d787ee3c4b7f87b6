//! The shipped examples serve as they say: conf/examples/edge.yaml (the headline deployment)
//! run as written, only its addresses swapped for loopback ones and the demo origins' (the
//! demo certificates and token file are the repository's).

use crate::harness::*;
use crate::origins::{HttpOrigin, WsOrigin};
use crate::tls::wait_listening;
use futures_util::{SinkExt, StreamExt};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

fn swap(text: &mut String, from: &str, to: &str) {
    assert!(text.contains(from), "the example no longer holds {from:?}");
    *text = text.replace(from, to);
}

/// The path of a built example binary (`make test` builds them first).
fn example(name: &str) -> std::path::PathBuf {
    let bin = Path::new(BIN).with_file_name("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: `make test` builds it (cargo build --examples)",
        bin.display()
    );
    bin
}

/// A client trusting the examples' demo CA only.
fn demo_ca_client() -> TlsConnector {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ca = CertificateDer::pem_file_iter(root.join("conf/examples/certs/ca.pem")).unwrap();
    crate::tls::client_trusting(ca.map(Result::unwrap), &[])
}

/// One request over TLS to `name` (SNI and Host): the handshake verifies that the certificate
/// chosen is the one for `name`.
async fn https(addr: std::net::SocketAddr, name: &str, path: &str, extra: &str) -> Resp {
    let tcp = connect(addr, None).await;
    let mut tls = demo_ca_client()
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake as {name}: {e}"));
    let head = format!("GET {path} HTTP/1.1\r\nHost: {name}\r\n{extra}\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Whole when its Content-Length is in; else at the close (with or without close_notify).
    loop {
        if let Some(r) = parse_response(&out) {
            let length = r.header("content-length").and_then(|v| v.parse().ok());
            if length == Some(r.body.len()) {
                return r;
            }
        }
        match tokio::time::timeout(IO_TIMEOUT, tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            Ok(_) if !out.is_empty() => return parse_response(&out).expect("a response"),
            other => panic!("{name}{path}: no response ({other:?})"),
        }
    }
}

#[tokio::test]
async fn the_headline_example_serves_as_it_says() {
    let app = HttpOrigin::start("app").await;
    let api = HttpOrigin::start("api").await;
    let realtime = WsOrigin::start("realtime").await;
    let tls_addr = proxy_addr();
    let admin = proxy_addr();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("conf/examples/edge.yaml")).unwrap();
    let proxy = Proxy::start_file(|dir, addr| {
        let mut text = example.clone();
        let d = dir.display();
        swap(&mut text, "0.0.0.0:80\n", &format!("'{addr}'\n"));
        swap(&mut text, "0.0.0.0:443\n", &format!("'{tls_addr}'\n"));
        swap(&mut text, "127.0.0.1:9900", &admin.to_string());
        swap(
            &mut text,
            "/run/portico/portico.pid",
            &format!("{d}/portico.pid"),
        );
        swap(
            &mut text,
            "/run/portico/upgrade.sock",
            &format!("{d}/upgrade.sock"),
        );
        swap(
            &mut text,
            "[10.0.0.11:3000, 10.0.0.12:3000]",
            &format!("['{}']", app.addr),
        );
        swap(
            &mut text,
            "[10.0.0.21:4000, 10.0.0.22:4000]",
            &format!("['{}']", realtime.addr),
        );
        swap(
            &mut text,
            "[10.0.0.31:8000, {address: 10.0.0.32:8000, weight: 2}]",
            &format!("['{}']", api.addr),
        );
        text
    })
    .await;
    wait_listening(tls_addr).await;

    // Plain HTTP: redirected to https before anything else, the WebSocket path too.
    for path in ["/", "/ws/room?x=1"] {
        let r = get(proxy.addr, path, &[("Host", "app.example.com")]).await;
        assert_eq!(r.status, 301, "{path}");
        assert_eq!(
            r.header("location"),
            Some(format!("https://app.example.com{path}").as_str())
        );
    }

    // Each host over TLS with its own certificate, to its own upstream, with its headers.
    let r = https(
        tls_addr,
        "app.example.com",
        "/page",
        "Connection: close\r\n",
    )
    .await;
    assert_eq!((r.status, r.origin()), (200, "app".to_owned()));
    assert_eq!(r.upstream_header("x-forwarded-proto"), ["https"]);
    assert!(r.header("strict-transport-security").is_some());
    let r = https(
        tls_addr,
        "api.example.com",
        "/v1/items",
        "Connection: close\r\n",
    )
    .await;
    assert_eq!((r.status, r.origin()), (200, "api".to_owned()));
    assert_eq!(r.header("server"), None);

    // The WebSocket service: a token is needed, and then messages echo.
    let r = https(tls_addr, "app.example.com", "/ws/room", "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n").await;
    assert_eq!(r.status, 401);
    assert!(
        realtime.last_path.lock().unwrap().is_empty(),
        "no upgrade reached the peer"
    );
    let tcp = connect(tls_addr, None).await;
    let tls = demo_ca_client()
        .connect(ServerName::try_from("app.example.com").unwrap(), tcp)
        .await
        .unwrap();
    let token = std::fs::read_to_string(root.join("conf/examples/tokens.txt")).unwrap();
    let token = token.lines().find(|l| !l.starts_with('#')).unwrap();
    let mut req = http::Request::builder()
        .uri("wss://app.example.com/ws/room")
        .header("Host", "app.example.com")
        .header("Authorization", format!("Bearer {token}"))
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Sec-WebSocket-Version", "13")
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket");
    req = req.method("GET");
    let (mut ws, resp) = tokio_tungstenite::client_async(req.body(()).unwrap(), tls)
        .await
        .expect("wss with the token");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello room")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("hello room")
    );

    // The admin listener answers.
    assert_eq!(get(admin, "/healthz", &[]).await.status, 200);
}

/// examples/custom_filter.rs, a binary of its own built on `portico::Builder`: its `tenant`
/// filter routes by header, configured in the same YAML, with its settings checked by `-t`.
#[tokio::test]
async fn the_custom_filter_example_is_portico_plus_its_own_filter() {
    let bin = example("custom_filter");
    let (shared, acme) = (
        HttpOrigin::start("shared").await,
        HttpOrigin::start("acme").await,
    );
    let acme_ws = WsOrigin::start("acme-ws").await;
    let body = format!(
        "upstreams:\n  shared: {{peers: ['{}']}}\n  tenant-acme: {{peers: ['{}']}}\n  tenant-acme-ws: {{peers: ['{}']}}\nroutes:\n  - path_prefix: /ws/\n    upstream: shared\n    filters: [tenant: {{header: X-Tenant}}]\n  - upstream: shared\n    filters:\n      - request_id\n      - tenant: {{header: X-Tenant}}\n",
        shared.addr, acme.addr, acme_ws.addr
    );
    let proxy = Proxy::start_with_binary(&bin, &body).await;
    let to = |tenant: Option<&'static str>| {
        let addr = proxy.addr;
        async move {
            let headers: Vec<(&str, &str)> = tenant.map(|t| ("X-Tenant", t)).into_iter().collect();
            get(addr, "/orders", &headers).await
        }
    };
    assert_eq!(to(Some("acme")).await.origin(), "acme");
    assert_eq!(to(None).await.origin(), "shared");
    // What a client tries: a tenant that does not exist, a name that would reach another group.
    for bad in ["globex", "../shared", "ACME", "acme x"] {
        let r = to(Some(bad)).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (404, "unknown tenant\n"),
            "{bad}"
        );
    }
    // The built-in filters are there too, and the tenant is in the access log.
    assert!(to(Some("acme")).await.header("x-request-id").is_some());
    proxy.wait_for_log("tenant=acme").await;
    // Its log phase: after each request, and for a WebSocket when it closes.
    proxy.wait_for_log("tenant acme: request, status 200").await;
    let (mut ws, _) = ws_connect(proxy.addr, "/ws/", &[("X-Tenant", "acme-ws")])
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    assert!(!proxy.logs().contains("tenant acme-ws: websocket closed"));
    ws.close(None).await.unwrap();
    proxy
        .wait_for_log("tenant acme-ws: websocket closed, status 101")
        .await;

    // Its settings are validated like any filter's, with their YAML path.
    let bad = proxy.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "listeners: [{{address: '127.0.0.1:1'}}]\nupstreams:\n  shared: {{peers: ['{}']}}\nroutes:\n  - upstream: shared\n    filters:\n      - tenant: {{heder: X-Tenant}}\n",
            shared.addr
        ),
    )
    .unwrap();
    let out = std::process::Command::new(&bin)
        .args(["-t", "-c", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains(
            "line 7: routes[0].filters[0].tenant.heder: unknown key; did you mean `header`?"
        ),
        "{err}"
    );
    // The portico binary does not know the filter.
    let (code, _, err) = run_cli(&["-t", "-c", proxy.conf.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(err.contains("unknown filter \"tenant\""), "{err}");
}

/// examples/pingora_floor.rs, `make bench`'s row for Pingora's session types alone: it must
/// forward what the proxies in the benchmark forward (the same request, the same four
/// forwarding headers), in both of its modes, or its figures compare nothing.
#[tokio::test]
async fn the_benchmark_floor_forwards_as_the_proxies_do() {
    let bin = example("pingora_floor");
    let origin = HttpOrigin::start("floor-origin").await;
    for mode in [None, Some("--proxy")] {
        let addr = proxy_addr();
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(mode)
            .arg(addr.to_string())
            .arg(origin.addr.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut floor = KillOnDrop(cmd.spawn().expect("spawn pingora_floor"));
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                floor.0.try_wait().unwrap().is_none(),
                "pingora_floor exited"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "pingora_floor not listening"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Twice: the second request rides the peer connection the first left idle.
        for _ in 0..2 {
            let r = get(addr, "/floor?q=1", &[("X-Forwarded-For", "1.2.3.4")]).await;
            assert_eq!(
                (r.status, r.origin()),
                (200, "floor-origin".into()),
                "{mode:?}"
            );
            assert_eq!(r.json()["path"], "/floor?q=1");
            // A client's own X-Forwarded-For is replaced, as the proxies do for an untrusted peer.
            assert_eq!(r.upstream_header("x-forwarded-for"), ["127.0.0.1"]);
            assert_eq!(r.upstream_header("x-real-ip"), ["127.0.0.1"]);
            assert_eq!(r.upstream_header("x-forwarded-proto"), ["http"]);
            assert_eq!(r.upstream_header("x-forwarded-host"), ["test.local"]);
            assert_eq!(r.upstream_header("host"), ["test.local"]);
        }
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
