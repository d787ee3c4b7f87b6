//! The filter pipeline against the real binary: each built-in listed filter (`request_id`,
//! `cors`, `ip_access`, `canary`) with real origins, the chain's order around the route's own
//! keys, bad filter settings refused with their YAML paths, and filter settings reloaded under
//! load.

use crate::harness::*;
use crate::origins::HttpOrigin;
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn request_id_is_kept_or_made_and_seen_by_peer_client_and_log() {
    let origin = HttpOrigin::start("app").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - {{upstream: app, filters: [request_id: {{}}]}}\n",
        origin.addr
    ))
    .await;
    // None sent: one is made (a UUID), the same for the peer, the client and the log line.
    let r = get(proxy.addr, "/made", &[]).await;
    let id = r
        .header("x-request-id")
        .expect("an id in the response")
        .to_owned();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(r.upstream_header("x-request-id"), std::slice::from_ref(&id));
    proxy.wait_for_log(&format!("request_id={id}")).await;
    // A valid one is kept through every hop.
    let r = get(proxy.addr, "/", &[("X-Request-Id", "lb-7f3a:01")]).await;
    assert_eq!(r.header("x-request-id"), Some("lb-7f3a:01"));
    assert_eq!(r.upstream_header("x-request-id"), ["lb-7f3a:01"]);
    // What a malicious client tries: a log-line injection, an overlong one, two of them.
    for sent in [
        vec![("X-Request-Id", "x\" status=200 forged")],
        vec![("X-Request-Id", &*"a".repeat(200))],
        vec![("X-Request-Id", "one"), ("X-Request-Id", "two")],
    ] {
        let r = get(proxy.addr, "/", &sent).await;
        let id = r.header("x-request-id").unwrap();
        assert_eq!(id.len(), 36, "{sent:?} gave {id}");
        assert_eq!(r.upstream_header("x-request-id"), [id.to_owned()]);
    }
    assert!(!proxy.logs().contains("forged"));
}

fn cors_proxy_body(peer: std::net::SocketAddr, tokens: &std::path::Path) -> String {
    format!(
        "upstreams:\n  app: {{peers: ['{peer}']}}\nroutes:\n  - upstream: app\n    auth: {{bearer_tokens_file: '{}'}}\n    filters:\n      - cors: {{allow_origins: [https://app.example.com], allow_credentials: true, max_age: 10m, expose_headers: [X-Total]}}\n",
        tokens.display()
    )
}

#[tokio::test]
async fn cors_answers_preflights_itself_and_never_reflects_another_origin() {
    // The peer reflects any Origin it gets, as careless apps do.
    let (peer, hits) = scripted(|mut s| async move {
        let Some(head) = read_head(&mut s).await else { return };
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let origin = head
            .lines()
            .find_map(|l| l.strip_prefix("origin: "))
            .unwrap_or("none")
            .trim()
            .to_owned();
        let resp = format!("HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: {origin}\r\nAccess-Control-Allow-Credentials: true\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        let _ = s.write_all(resp.as_bytes()).await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, "s3cret\n").unwrap();
    let proxy = Proxy::start(&cors_proxy_body(peer, &tokens)).await;
    let preflight = |origin: &'static str| {
        request_text(
            "OPTIONS",
            "/api/items",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "PUT"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type",
                ),
            ],
        )
    };
    // An allowed origin's preflight: answered here (no token needed: it carries none).
    let r = send(proxy.addr, None, &preflight("https://app.example.com")).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    // Another origin's preflight: refused, nothing allowed.
    let r = send(proxy.addr, None, &preflight("https://evil.example")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no preflight reached the peer"
    );

    // Real requests: the allowed origin gets the headers, the peer's reflection of another
    // origin never reaches the browser.
    let auth = ("Authorization", "Bearer s3cret");
    let r = get(
        proxy.addr,
        "/api/items",
        &[("Origin", "https://app.example.com"), auth],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-expose-headers"), Some("X-Total"));
    assert!(r.headers_named("vary").iter().any(|v| v.contains("Origin")));
    let r = get(
        proxy.addr,
        "/api/items",
        &[("Origin", "https://evil.example"), auth],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("access-control-allow-credentials"), None);
    // Without the token: 401, readable by the allowed origin's page.
    let r = get(
        proxy.addr,
        "/api/items",
        &[("Origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
}

#[tokio::test]
async fn ip_access_judges_the_client_after_trusted_proxies() {
    let origin = HttpOrigin::start("app").await;
    let proxy = Proxy::start(&format!(
        "trusted_proxies: [127.0.0.1]\nupstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - upstream: app\n    filters:\n      - ip_access: {{allow: [127.0.0.0/8, 10.0.0.0/8], deny: [127.0.0.9, 10.9.0.0/16]}}\n",
        origin.addr
    ))
    .await;
    assert_eq!(
        get_from(ip("127.0.0.2"), proxy.addr, "/", &[]).await.status,
        200
    );
    let r = get_from(ip("127.0.0.9"), proxy.addr, "/", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (403, "forbidden\n"));
    // What a denied client tries: naming another address in X-Forwarded-For. It is not a
    // trusted proxy, so its header does not count.
    let xff = [("X-Forwarded-For", "127.0.0.2")];
    assert_eq!(
        get_from(ip("127.0.0.9"), proxy.addr, "/", &xff)
            .await
            .status,
        403
    );
    // Through the trusted proxy, the client it names is judged.
    let through = |c: &'static str| [("X-Forwarded-For", c)];
    assert_eq!(
        get_from(ip("127.0.0.1"), proxy.addr, "/", &through("10.1.2.3"))
            .await
            .status,
        200
    );
    assert_eq!(
        get_from(ip("127.0.0.1"), proxy.addr, "/", &through("10.9.2.3"))
            .await
            .status,
        403
    );
    assert_eq!(
        get_from(ip("127.0.0.1"), proxy.addr, "/", &through("192.0.2.1"))
            .await
            .status,
        403
    );
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn canary_sends_a_sticky_share_of_clients_or_whom_a_cookie_or_header_names() {
    let (stable, v2) = (
        HttpOrigin::start("stable").await,
        HttpOrigin::start("v2").await,
    );
    let admin = proxy_addr();
    let body = |weight: u8| {
        format!(
            "admin: {{address: '{admin}'}}\nupstreams:\n  app: {{peers: ['{}']}}\n  app-v2: {{peers: ['{}']}}\nroutes:\n  - upstream: app\n    filters:\n      - canary: {{upstream: app-v2, weight: {weight}, cookie: canary, header: X-Canary}}\n",
            stable.addr, v2.addr
        )
    };
    let proxy = Proxy::start(&body(30)).await;
    let mut sides = std::collections::HashMap::new();
    for i in 1..=60u8 {
        let client = ip(&format!("127.0.1.{i}"));
        let first = get_from(client, proxy.addr, "/", &[]).await.origin();
        let again = get_from(client, proxy.addr, "/", &[]).await.origin();
        assert_eq!(first, again, "client {client} moved");
        *sides.entry(first).or_insert(0) += 1;
    }
    let on_v2 = sides.get("v2").copied().unwrap_or(0);
    assert!(
        (5..=35).contains(&on_v2),
        "30% of 60 clients, got {sides:?}"
    );
    // Forced either way, whatever the client's share.
    for i in 1..=10u8 {
        let (client, addr) = (ip(&format!("127.0.1.{i}")), proxy.addr);
        let to = |h: (&'static str, &'static str)| async move {
            get_from(client, addr, "/", &[h]).await.origin()
        };
        assert_eq!(to(("X-Canary", "always")).await, "v2");
        assert_eq!(to(("X-Canary", "never")).await, "stable");
        assert_eq!(to(("Cookie", "a=1; canary=always")).await, "v2");
        assert_eq!(to(("Cookie", "canary=never")).await, "stable");
    }
    // The access log and the metrics name the group that served.
    proxy.wait_for_log("upstream=app-v2").await;
    let metrics = get(admin, "/metrics", &[]).await.text();
    for group in ["app", "app-v2"] {
        let series = format!(
            "portico_requests_total{{class=\"2xx\",route=\"route0\",upstream=\"{group}\"}} "
        );
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
            .parse()
            .unwrap();
        assert!(n >= 20, "{series}{n}");
    }
}

/// Filter settings are rebuilt on SIGHUP while requests flow; a bad one refuses the reload
/// and the old chain serves on.
#[tokio::test]
async fn filter_settings_reload_under_load_and_a_bad_one_is_refused() {
    let origin = HttpOrigin::start("app").await;
    let body = |header: &str| {
        format!(
            "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - upstream: app\n    filters:\n      - request_id: {{header: {header}}}\n      - ip_access: {{deny: [10.0.0.0/8]}}\n",
            origin.addr
        )
    };
    let proxy = Proxy::start(&body("X-Trace-A")).await;
    let load = Load::start(proxy.addr, 4, "/");
    for header in ["X-Trace-B", "X-Trace-A", "X-Trace-C"] {
        proxy.rewrite(&body(header));
        proxy.signal("HUP");
        let lower = header.to_ascii_lowercase();
        eventually("the new filter settings serve", || {
            let lower = lower.clone();
            async move { get(proxy.addr, "/", &[]).await.header(&lower).is_some() }
        })
        .await;
    }
    proxy.rewrite(&body("Not A Header"));
    proxy.signal("HUP");
    proxy
        .wait_for_log("routes[0].filters[0].request_id.header: invalid header name")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await; // let the load run on after it
    let samples = load.stop().await;
    assert_no_failures(&samples);
    assert!(samples.len() > 20, "{} requests", samples.len());
    assert!(get(proxy.addr, "/", &[])
        .await
        .header("x-trace-c")
        .is_some());
}

mod jwt {
    use super::*;
    use crate::origins::WsOrigin;
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::json;

    /// The three kinds of key the issue names, a JWKS of their public halves, and tokens.
    struct Keys {
        hs: EncodingKey,
        rs: EncodingKey,
        es: EncodingKey,
        jwks: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    fn keys() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let hs = EncodingKey::from_secret(b"a shared secret of thirty-two b!").unwrap();
        let rs_pem = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/jwt/rsa-test-key.pem"),
        )
        .unwrap();
        let rs = EncodingKey::from_rsa_pem(&rs_pem).unwrap();
        let ec = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
        let es = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap();
        let mut set = JwkSet { keys: Vec::new() };
        for (kid, key, alg) in [
            ("hs", &hs, Algorithm::HS256),
            ("rs", &rs, Algorithm::RS256),
            ("es", &es, Algorithm::ES256),
        ] {
            let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
            jwk.common.key_id = Some(kid.into());
            set.keys.push(jwk);
        }
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, serde_json::to_string(&set).unwrap()).unwrap();
        Keys {
            hs,
            rs,
            es,
            jwks,
            _dir: dir,
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(key: &EncodingKey, alg: Algorithm, kid: &str, claims: serde_json::Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        encode(&header, &claims, key).unwrap()
    }

    /// `{"alg":"none"}`: a token without a signature.
    fn unsigned(claims: serde_json::Value) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","kid":"hs"}"#),
            b64.encode(claims.to_string())
        )
    }

    fn good(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({"iss": "https://id.example.com", "aud": "chat", "sub": "user-42", "exp": now() + 600});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    #[tokio::test]
    async fn jwt_checks_signature_time_issuer_audience_before_any_peer() {
        let k = keys();
        let origin = HttpOrigin::start("app").await;
        let ws = WsOrigin::start("ws").await;
        let proxy = Proxy::start(&format!(
            "upstreams:\n  app: {{peers: ['{}']}}\n  ws: {{peers: ['{}']}}\nroutes:\n  - path_prefix: /ws/\n    upstream: ws\n    filters: [{{jwt: {{jwks_file: '{jwks}', issuer: https://id.example.com, audience: chat, query_param: access_token, claims_to_headers: {{sub: X-User-Id}}}}}}]\n  - upstream: app\n    filters: [{{jwt: {{jwks_file: '{jwks}', issuer: https://id.example.com, audience: chat, claims_to_headers: {{sub: X-User-Id, role: X-Role}}}}}}]\n",
            origin.addr,
            ws.addr,
            jwks = k.jwks.display()
        ))
        .await;
        let bearer = |t: &str| format!("Bearer {t}");
        // Each kind of key, its claims copied to the peer; a forged X-User-Id is dropped.
        for (key, alg, kid) in [
            (&k.hs, Algorithm::HS256, "hs"),
            (&k.rs, Algorithm::RS256, "rs"),
            (&k.es, Algorithm::ES256, "es"),
        ] {
            let t = token(key, alg, kid, good(json!({"role": "admin"})));
            let r = get(
                proxy.addr,
                "/",
                &[("Authorization", &bearer(&t)), ("X-User-Id", "root")],
            )
            .await;
            assert_eq!(r.status, 200, "{kid}: {}", r.text());
            assert_eq!(r.upstream_header("x-user-id"), ["user-42"], "{kid}");
            assert_eq!(r.upstream_header("x-role"), ["admin"]);
        }
        proxy.wait_for_log("jwt_sub=user-42").await;
        // What a client tries; each is 401 and reaches no peer.
        let hits = origin.hits();
        let past = now() - 3600;
        let forged_hs = EncodingKey::from_secret(b"not the secret at all, attacker!").unwrap();
        let cases: Vec<(&str, Option<String>)> = vec![
            ("no token", None),
            (
                "expired",
                Some(token(
                    &k.es,
                    Algorithm::ES256,
                    "es",
                    good(json!({"exp": past})),
                )),
            ),
            (
                "not yet valid",
                Some(token(
                    &k.es,
                    Algorithm::ES256,
                    "es",
                    good(json!({"nbf": now() + 3600})),
                )),
            ),
            (
                "no exp",
                Some(token(
                    &k.es,
                    Algorithm::ES256,
                    "es",
                    json!({"iss": "https://id.example.com", "aud": "chat"}),
                )),
            ),
            (
                "other issuer",
                Some(token(
                    &k.rs,
                    Algorithm::RS256,
                    "rs",
                    good(json!({"iss": "https://evil.example"})),
                )),
            ),
            (
                "other audience",
                Some(token(
                    &k.rs,
                    Algorithm::RS256,
                    "rs",
                    good(json!({"aud": "billing"})),
                )),
            ),
            (
                "wrong secret",
                Some(token(&forged_hs, Algorithm::HS256, "hs", good(json!({})))),
            ),
            // The RSA public key used as an HMAC secret (algorithm confusion).
            (
                "alg confusion",
                Some(token(
                    &EncodingKey::from_secret(&std::fs::read(&k.jwks).unwrap()).unwrap(),
                    Algorithm::HS256,
                    "rs",
                    good(json!({})),
                )),
            ),
            ("alg none", Some(unsigned(good(json!({}))))),
            (
                "signature cut",
                Some(format!(
                    "{}.",
                    token(&k.hs, Algorithm::HS256, "hs", good(json!({})))
                        .rsplit_once('.')
                        .unwrap()
                        .0
                )),
            ),
            ("garbage", Some("not.a.jwt".into())),
        ];
        for (what, t) in &cases {
            let headers: Vec<(&str, String)> =
                t.iter().map(|t| ("Authorization", bearer(t))).collect();
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = get(proxy.addr, "/", &headers).await;
            assert_eq!(r.status, 401, "{what}");
            assert!(
                r.header("www-authenticate").unwrap().starts_with("Bearer"),
                "{what}"
            );
        }
        assert_eq!(origin.hits(), hits, "a refused token reached the peer");

        // A browser WebSocket: the token in the query, never seen by the peer.
        let t = token(&k.es, Algorithm::ES256, "es", good(json!({})));
        let (mut socket, resp) =
            ws_connect(proxy.addr, &format!("/ws/room?x=1&access_token={t}"), &[])
                .await
                .expect("upgrade with the token");
        assert_eq!(resp.status(), 101);
        use futures_util::{SinkExt, StreamExt};
        socket
            .send(tokio_tungstenite::tungstenite::Message::text("hi"))
            .await
            .unwrap();
        assert_eq!(
            socket.next().await.unwrap().unwrap().into_text().unwrap(),
            "hi"
        );
        assert_eq!(*ws.last_path.lock().unwrap(), "/ws/room?x=1");
        let seen = ws.last_request.lock().unwrap().clone();
        assert!(
            seen.iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("x-user-id") && v == "user-42"),
            "{seen:?}"
        );
        // Without it, or with a bad one: 401 before the peer.
        *ws.last_path.lock().unwrap() = String::new();
        for path in ["/ws/room", "/ws/room?access_token=nope"] {
            let e = ws_connect(proxy.addr, path, &[])
                .await
                .expect_err("refused");
            match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => {
                    assert_eq!(r.status(), 401, "{path}")
                }
                other => panic!("{path}: {other}"),
            }
        }
        assert!(
            ws.last_path.lock().unwrap().is_empty(),
            "a refused upgrade reached the peer"
        );
    }

    /// Verified tokens are remembered (a repeated token skips the signature check), but never
    /// past their `exp`.
    #[tokio::test]
    async fn a_remembered_token_still_expires() {
        let k = keys();
        let origin = HttpOrigin::start("app").await;
        let proxy = Proxy::start(&format!(
            "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - upstream: app\n    filters: [{{jwt: {{jwks_file: '{}', leeway: 0s}}}}]\n",
            origin.addr,
            k.jwks.display()
        ))
        .await;
        let t = token(
            &k.es,
            Algorithm::ES256,
            "es",
            json!({"sub": "u", "exp": now() + 2}),
        );
        let auth = format!("Bearer {t}");
        for _ in 0..3 {
            assert_eq!(
                get(proxy.addr, "/", &[("Authorization", &auth)])
                    .await
                    .status,
                200
            );
        }
        eventually("the remembered token expires", || async {
            get(proxy.addr, "/", &[("Authorization", &auth)])
                .await
                .status
                == 401
        })
        .await;
        // A token that differs in one byte of its signature is not the remembered one.
        let t = token(
            &k.es,
            Algorithm::ES256,
            "es",
            json!({"sub": "u", "exp": now() + 600}),
        );
        let good = format!("Bearer {t}");
        assert_eq!(
            get(proxy.addr, "/", &[("Authorization", &good)])
                .await
                .status,
            200
        );
        let mut forged = good.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(
            get(proxy.addr, "/", &[("Authorization", &forged)])
                .await
                .status,
            401
        );
    }

    #[test]
    fn a_bad_jwks_file_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, "{\"keys\": 5}").unwrap();
        let conf = dir.path().join("p.yaml");
        std::fs::write(
            &conf,
            format!(
                "listeners: [{{address: '127.0.0.1:1'}}]\nupstreams:\n  app: {{peers: ['127.0.0.1:2']}}\nroutes:\n  - upstream: app\n    filters:\n      - jwt: {{jwks_file: '{}'}}\n      - jwt: {{jwks_file: /nonexistent/jwks.json, claims_to_headers: {{sub: 'Bad Header'}}}}\n",
                jwks.display()
            ),
        )
        .unwrap();
        let (code, _, err) = run_cli(&["-t", "-c", conf.to_str().unwrap()]);
        assert_eq!(code, 64, "{err}");
        assert!(
            err.contains("routes[0].filters[0].jwt.jwks_file: ") && err.contains("is not a JWKS"),
            "{err}"
        );
        assert!(
            err.contains("routes[0].filters[1].jwt.claims_to_headers.sub: invalid header name"),
            "{err}"
        );
        assert!(err.contains("routes[0].filters[1].jwt.jwks_file: cannot read /nonexistent/jwks.json: No such file or directory"), "{err}");
    }
}

mod forward_auth {
    use super::*;
    use crate::origins::WsOrigin;
    use std::sync::{Arc, Mutex};

    /// An auth service on loopback: it answers by the request's `Authorization` (`ok`: 200
    /// with `X-User-Id: alice`; `login`: 302; `slow`: after 3 s; else 401), keeps connections
    /// alive, and records what it was asked.
    async fn auth_service() -> (
        std::net::SocketAddr,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<Mutex<Vec<String>>>,
    ) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&asked);
        let (addr, accepted) = scripted(move |mut s| {
            let log = Arc::clone(&log);
            async move {
                while let Some(head) = read_head(&mut s).await {
                    let head = String::from_utf8_lossy(&head).into_owned();
                    log.lock().unwrap().push(head.clone());
                    let lower = head.to_ascii_lowercase();
                    let auth = lower
                        .lines()
                        .find_map(|l| l.strip_prefix("authorization: bearer "))
                        .unwrap_or("")
                        .trim()
                        .to_owned();
                    let resp = match auth.as_str() {
                        "ok" => "HTTP/1.1 200 OK\r\nX-User-Id: alice\r\nX-Other: no\r\nContent-Length: 0\r\n\r\n".to_owned(),
                        "login" => "HTTP/1.1 302 Found\r\nLocation: https://login.example/\r\nContent-Length: 0\r\n\r\n".to_owned(),
                        "slow" => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_owned()
                        }
                        _ => "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"auth\"\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\ndenied\n".to_owned(),
                    };
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await;
        (addr, accepted, asked)
    }

    #[tokio::test]
    async fn forward_auth_lets_2xx_on_returns_the_rest_and_fails_closed() {
        let (auth, accepted, asked) = auth_service().await;
        let origin = HttpOrigin::start("app").await;
        let ws = WsOrigin::start("ws").await;
        let dead = free_addr();
        let proxy = Proxy::start(&format!(
            "upstreams:\n  app: {{peers: ['{}']}}\n  ws: {{peers: ['{}']}}\nroutes:\n  - path_prefix: /dead/\n    upstream: app\n    filters: [{{forward_auth: {{url: 'http://{dead}/check'}}}}]\n  - path_prefix: /ws/\n    upstream: ws\n    filters: [{{forward_auth: {{url: 'http://{auth}/check', copy_headers: [X-User-Id]}}}}]\n  - upstream: app\n    filters: [{{forward_auth: {{url: 'http://{auth}/check?app=1', copy_headers: [X-User-Id], timeout: 1s}}}}]\n",
            origin.addr, ws.addr
        ))
        .await;
        let with = |token: &'static str| [("Authorization", token), ("X-User-Id", "root")];
        // 2xx: on to the peer, with the service's X-User-Id only (the client's is dropped).
        for _ in 0..5 {
            let r = get(proxy.addr, "/orders?id=7", &with("Bearer ok")).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.upstream_header("x-user-id"), ["alice"]);
            assert!(r.upstream_header("x-other").is_empty());
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the connection to the service is reused"
        );
        let first = asked.lock().unwrap()[0].to_ascii_lowercase();
        for want in [
            "get /check?app=1 http/1.1",
            "x-forwarded-method: get",
            "x-forwarded-uri: /orders?id=7",
            "x-forwarded-for: 127.0.0.1",
            "authorization: bearer ok",
        ] {
            assert!(first.contains(want), "{want} not in:\n{first}");
        }
        let hits = origin.hits();
        // Anything else is the client's answer, as the service gave it.
        let r = get(proxy.addr, "/orders", &with("Bearer bad")).await;
        assert_eq!((r.status, r.text().as_str()), (401, "denied\n"));
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"auth\""));
        let r = get(proxy.addr, "/orders", &with("Bearer login")).await;
        assert_eq!(
            (r.status, r.header("location")),
            (302, Some("https://login.example/"))
        );
        // Too slow, or dead: 503, never let through.
        let r = get(proxy.addr, "/orders", &with("Bearer slow")).await;
        assert_eq!(r.status, 503);
        let r = get(proxy.addr, "/dead/x", &with("Bearer ok")).await;
        assert_eq!(r.status, 503);
        assert_eq!(origin.hits(), hits, "a refused request reached the peer");
        // An upgrade is asked about before any peer.
        let e = ws_connect(proxy.addr, "/ws/", &[("Authorization", "Bearer bad")])
            .await
            .expect_err("refused");
        assert!(
            matches!(e, tokio_tungstenite::tungstenite::Error::Http(ref r) if r.status() == 401),
            "{e}"
        );
        assert!(ws.last_path.lock().unwrap().is_empty());
        let (_socket, resp) = ws_connect(proxy.addr, "/ws/", &[("Authorization", "Bearer ok")])
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        let seen = ws.last_request.lock().unwrap().clone();
        assert!(
            seen.iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("x-user-id") && v == "alice"),
            "{seen:?}"
        );
    }
}

/// An https:// auth service, verified against the `ca` given; without it (system roots) the
/// test's certificate is not trusted: 503, never let through.
#[tokio::test]
async fn forward_auth_speaks_tls_to_an_https_service() {
    use crate::tls::TestPki;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), &["127.0.0.1"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let auth = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                while let Some(head) = read_head(&mut s).await {
                    let ok = String::from_utf8_lossy(&head)
                        .to_ascii_lowercase()
                        .contains("authorization: bearer ok");
                    let resp = match ok {
                        true => "HTTP/1.1 200 OK\r\nX-User-Id: alice\r\nContent-Length: 0\r\n\r\n",
                        false => "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
                    };
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let origin = HttpOrigin::start("app").await;
    let proxy = Proxy::start(&format!(
        "upstreams:\n  app: {{peers: ['{}']}}\nroutes:\n  - path_prefix: /untrusted/\n    upstream: app\n    filters: [{{forward_auth: {{url: 'https://{auth}/check'}}}}]\n  - upstream: app\n    filters: [{{forward_auth: {{url: 'https://{auth}/check', ca: '{}', copy_headers: [X-User-Id]}}}}]\n",
        origin.addr,
        pki.ca_file.display()
    ))
    .await;
    let r = get(proxy.addr, "/", &[("Authorization", "Bearer ok")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_header("x-user-id"), ["alice"]);
    assert_eq!(
        get(proxy.addr, "/", &[("Authorization", "Bearer no")])
            .await
            .status,
        401
    );
    let hits = origin.hits();
    let r = get(proxy.addr, "/untrusted/", &[("Authorization", "Bearer ok")]).await;
    assert_eq!(r.status, 503, "an unverified service is not trusted");
    assert_eq!(origin.hits(), hits);
}
