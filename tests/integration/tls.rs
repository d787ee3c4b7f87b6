//! TLS: certificates generated at test time (a CA and a leaf), HTTPS and wss:// through a TLS
//! listener, X-Forwarded-Proto, plain HTTP to a TLS port.

use crate::harness::*;
use crate::origins::{HttpOrigin, WsOrigin};
use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// A test CA and one leaf certificate for `names`, written as PEM files into `dir`.
pub struct TestPki {
    pub ca_der: CertificateDer<'static>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA certificate as PEM (for `upstreams.*.tls.ca`).
    pub ca_file: PathBuf,
    leaf_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl TestPki {
    pub fn new(dir: &Path, names: &[&str]) -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let (cert, key) = (dir.join("leaf.crt"), dir.join("leaf.key"));
        std::fs::write(&cert, leaf.pem()).unwrap();
        std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        TestPki {
            ca_der: ca.der().clone(),
            cert,
            key,
            ca_file,
            leaf_der: leaf.der().clone(),
            key_der: leaf_key.serialize_der(),
        }
    }

    /// A server config presenting the leaf: for TLS origins.
    pub fn server_config(&self) -> Arc<tokio_rustls::rustls::ServerConfig> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let key =
            tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf_der.clone()], key)
            .unwrap();
        Arc::new(config)
    }

    pub fn connector(&self) -> TlsConnector {
        self.connector_alpn(&[])
    }

    /// The same, offering these ALPN protocols (`b"h2"` for HTTP/2).
    pub fn connector_alpn(&self, alpn: &[&[u8]]) -> TlsConnector {
        client_trusting([self.ca_der.clone()], alpn)
    }
}

/// A TLS client that trusts these CA certificates only, offering these ALPN protocols.
pub fn client_trusting(
    cas: impl IntoIterator<Item = CertificateDer<'static>>,
    alpn: &[&[u8]],
) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

async fn tls_proxy(pki: &TestPki, upstreams_and_routes: &str) -> Proxy {
    tls_proxy_with(pki, "", upstreams_and_routes).await.0
}

/// portico with the harness's plain listener plus a TLS one (with `pki`'s certificate) and
/// these `server` keys, and the TLS listener's address once it accepts.
pub async fn tls_proxy_with(pki: &TestPki, server: &str, body: &str) -> (Proxy, SocketAddr) {
    let proxy = Proxy::start_with_server(
        server,
        &format!(
            "  - address: '{}'\n    tls: {{certificates: [{{cert: '{}', key: '{}'}}]}}\n{body}",
            proxy_addr(),
            pki.cert.display(),
            pki.key.display()
        ),
    )
    .await;
    let addr = tls_addr(&proxy);
    wait_listening(addr).await;
    (proxy, addr)
}

/// An HTTP/2 connection to `addr` (TLS with ALPN h2, for `localhost`) and its driver's task,
/// which ends when the connection does.
pub async fn h2_client(
    pki: &TestPki,
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = connect(addr, None).await;
    let tls = pki
        .connector_alpn(&[b"h2"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    (send, tokio::spawn(conn))
}

/// The address of the second (TLS) listener in the proxy's config.
pub fn tls_addr(proxy: &Proxy) -> std::net::SocketAddr {
    let conf = std::fs::read_to_string(&proxy.conf).unwrap();
    let line = conf
        .lines()
        .filter(|l| l.contains("- address:"))
        .nth(1)
        .unwrap();
    line.split('\'').nth(1).unwrap().parse().unwrap()
}

pub async fn wait_listening(addr: std::net::SocketAddr) {
    eventually("the TLS listener accepts", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn https_requests_are_terminated_and_marked_https() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), &["localhost", "example.com"]);
    let origin = HttpOrigin::start("a").await;
    let proxy = tls_proxy(&pki, &one_route(origin.addr)).await;
    let addr = tls_addr(&proxy);
    wait_listening(addr).await;
    let tcp = connect(addr, None).await;
    let mut tls = pki
        .connector()
        .connect(ServerName::try_from("example.com").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(b"GET /secure HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.unwrap();
    let r = parse_response(&out).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-forwarded-proto"), ["https"]);
    assert_eq!(r.json()["path"], "/secure");
    // The plain listener says http.
    assert_eq!(
        get(proxy.addr, "/", &[])
            .await
            .upstream_header("x-forwarded-proto"),
        ["http"]
    );
}

/// wss:// end to end: TLS to portico, the tunnel over the TLS stream, plain to the origin.
#[tokio::test]
async fn wss_passes_through_a_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), &["localhost"]);
    let origin = WsOrigin::start("echo").await;
    let proxy = tls_proxy(
        &pki,
        &format!(
            "upstreams:\n  echo: {{peers: ['{}']}}\nroutes:\n  - {{upstream: echo}}\n",
            origin.addr
        ),
    )
    .await;
    let addr = tls_addr(&proxy);
    wait_listening(addr).await;
    let tcp = connect(addr, None).await;
    let tls = pki
        .connector()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .expect("wss handshake");
    assert_eq!(resp.status(), 101);
    let big = vec![42u8; 256 * 1024];
    for m in [Message::text("over tls"), Message::binary(big)] {
        ws.send(m.clone()).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), m);
    }
    ws.send(Message::text("headers")).await.unwrap();
    let seen: Vec<(String, String)> =
        serde_json::from_str(&ws.next().await.unwrap().unwrap().into_text().unwrap()).unwrap();
    assert!(
        seen.iter()
            .any(|(k, v)| k == "x-forwarded-proto" && v == "https"),
        "{seen:?}"
    );
}

/// A client speaking plain HTTP to the TLS port, and one that stops mid-handshake: both fail
/// cleanly and the proxy goes on serving.
#[tokio::test]
async fn garbage_on_the_tls_port_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), &["localhost"]);
    let origin = HttpOrigin::start("a").await;
    let mut proxy = tls_proxy(&pki, &one_route(origin.addr)).await;
    let addr = tls_addr(&proxy);
    wait_listening(addr).await;
    let out = send_raw(addr, None, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        !String::from_utf8_lossy(&out).contains("200"),
        "plain HTTP got an answer on the TLS port"
    );
    let mut half = connect(addr, None).await;
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap(); // a truncated ClientHello
    drop(half);
    let tcp = connect(addr, None).await;
    let mut tls = pki
        .connector()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    tls.read_to_end(&mut resp).await.unwrap();
    assert_eq!(parse_response(&resp).unwrap().status, 200);
    assert!(proxy.is_running());
}

async fn handshake(pki: &TestPki, addr: std::net::SocketAddr, name: &str) -> Result<(), String> {
    let tcp = connect(addr, None).await;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    pki.connector()
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Each certificate answers for the names it holds (exact, then wildcard); others get the first.
#[tokio::test]
async fn certificates_are_chosen_by_sni() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestPki::new(da.path(), &["a.test"]);
    let b = TestPki::new(db.path(), &["*.b.test"]);
    let origin = HttpOrigin::start("o").await;
    let tls_at = proxy_addr();
    let proxy = Proxy::start(&format!(
        "  - address: '{tls_at}'\n    tls:\n      certificates:\n        - {{cert: '{}', key: '{}'}}\n        - {{cert: '{}', key: '{}'}}\nupstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{upstream: app}}\n",
        a.cert.display(), a.key.display(), b.cert.display(), b.key.display(), origin.addr
    ))
    .await;
    wait_listening(tls_at).await;
    assert_eq!(handshake(&a, tls_at, "a.test").await, Ok(()));
    assert_eq!(
        handshake(&b, tls_at, "x.b.test").await,
        Ok(()),
        "the wildcard certificate"
    );
    assert!(
        handshake(&b, tls_at, "a.test").await.is_err(),
        "a.test must get a's certificate"
    );
    assert!(
        handshake(&b, tls_at, "x.y.b.test").await.is_err(),
        "a wildcard covers one label"
    );
    // An unknown name gets the default (first) certificate: against a's CA only the name is
    // wrong; against b's the chain itself fails (it is not b's certificate).
    let with_a = handshake(&a, tls_at, "unknown.test").await.unwrap_err();
    assert!(with_a.contains("not valid for name"), "{with_a}");
    let with_b = handshake(&b, tls_at, "unknown.test").await.unwrap_err();
    assert!(!with_b.contains("not valid for name"), "{with_b}");
    assert_eq!(handshake(&a, tls_at, "a.test").await, Ok(()));
    drop(proxy);
}

/// Renewed certificate files take effect on SIGHUP, without a restart.
#[tokio::test]
async fn certificates_are_reread_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let old = TestPki::new(dir.path(), &["localhost"]);
    let origin = HttpOrigin::start("a").await;
    let proxy = tls_proxy(&old, &one_route(origin.addr)).await;
    let addr = tls_addr(&proxy);
    wait_listening(addr).await;
    assert_eq!(handshake(&old, addr, "localhost").await, Ok(()));
    let renewed = TestPki::new(dir.path(), &["localhost"]); // same files, a new CA and key
    proxy.signal("HUP");
    proxy.wait_for_log("configuration reloaded").await;
    assert_eq!(handshake(&renewed, addr, "localhost").await, Ok(()));
    assert!(
        handshake(&old, addr, "localhost").await.is_err(),
        "the old certificate is still served"
    );
}

#[test]
fn a_bad_certificate_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), &["localhost"]);
    let other = tempfile::tempdir().unwrap();
    let wrong_key = TestPki::new(other.path(), &["localhost"]).key;
    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let conf = dir.path().join("p.yaml");
    std::fs::write(
        &conf,
        format!(
            "listeners:\n  - address: 127.0.0.1:1\n    tls: {{certificates: [{{cert: '{}', key: '{}'}}]}}\n  - address: 127.0.0.1:2\n    tls: {{certificates: [{{cert: '{}', key: '{}'}}]}}\nupstreams:\n  app: {{peers: ['127.0.0.1:3']}}\nroutes:\n  - {{upstream: app}}\n",
            garbage.display(), pki.key.display(), pki.cert.display(), wrong_key.display()
        ),
    )
    .unwrap();
    let (code, _, err) = run_cli(&["-t", "-c", conf.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(&format!(
            "listeners[0].tls.certificates[0]: no certificate in {} or no private key",
            garbage.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("listeners[1].tls.certificates[0]:") && err.contains("does not belong to"),
        "{err}"
    );
}

/// An upstream behind TLS with a certificate from a private CA: `verify: false` connects
/// (wss:// to the peer, end to end), `verify: true` refuses with 502 against the system roots,
/// and connects with `ca:` naming the private CA, unless the SNI does not match.
#[tokio::test]
async fn tls_to_upstreams_with_and_without_verification() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), &["backend.test"]);
    let origin = WsOrigin::start_tls("wss-origin", pki.server_config()).await;
    let ca = pki.ca_file.display();
    let proxy = Proxy::start(&format!(
        "upstreams:\n  lax: {{peers: ['{a}'], tls: {{sni: backend.test, verify: false}}}}\n  strict: {{peers: ['{a}'], tls: {{sni: backend.test}}, retries: 0}}\n  private: {{peers: ['{a}'], tls: {{sni: backend.test, ca: '{ca}'}}}}\n  misnamed: {{peers: ['{a}'], tls: {{sni: other.test, ca: '{ca}'}}, retries: 0}}\nroutes:\n  - {{path_prefix: /lax/, upstream: lax}}\n  - {{path_prefix: /strict/, upstream: strict}}\n  - {{path_prefix: /private/, upstream: private}}\n  - {{path_prefix: /misnamed/, upstream: misnamed}}\n",
        a = origin.addr
    ))
    .await;
    for ok in ["/lax/", "/private/"] {
        let (mut ws, _) = ws_connect(proxy.addr, ok, &[])
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
        ws.send(Message::text("whoami")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("wss-origin"),
            "{ok}"
        );
    }
    for refused in ["/strict/", "/misnamed/"] {
        match ws_connect(proxy.addr, refused, &[]).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 502, "{refused}")
            }
            other => panic!(
                "{refused}: expected 502, got {:?}",
                other.map(|(_, r)| r.status())
            ),
        }
    }
}

/// Plain requests to an https:// upstream (a private CA, verified), by both forwarding loops:
/// a GET and a POST with a body.
#[tokio::test]
async fn plain_requests_reach_https_upstreams_by_both_loops() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), &["backend.test"]);
    let origin = HttpOrigin::start_tls("https-origin", pki.server_config()).await;
    let config = format!(
        "upstreams:\n  app: {{peers: ['{}'], tls: {{sni: backend.test, ca: '{}'}}}}\nroutes:\n  - {{upstream: app}}\n",
        origin.addr,
        pki.ca_file.display()
    );
    for server in ["fast_path: true", "fast_path: false"] {
        let proxy = Proxy::start_with_server(server, &config).await;
        for _ in 0..2 {
            let r = get(proxy.addr, "/over-tls", &[]).await;
            assert_eq!(r.status, 200, "{server}");
            assert_eq!(r.origin(), "https-origin");
            assert_eq!(r.json()["path"], "/over-tls");
        }
        let post = "POST /up HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        let r = send(proxy.addr, None, post).await;
        assert_eq!(
            (r.status, r.json()["body_len"].as_u64()),
            (200, Some(5)),
            "{server}"
        );
    }
}
