//! The least any proxy built on Pingora's HTTP session types does per request, for
//! `make bench` only: Pingora's keep-alive loop and server session read the request, a clone
//! of its head with the four forwarding headers goes to the peer over Pingora's HTTP/1 client
//! session (a connection from a per-thread idle list), and the answer's head and body go back.
//! No routing, no checks, no proxy hooks, no metrics, no timers, no error answers: a floor, not
//! a proxy (any failure just closes the client's connection). Its CPU per request is what
//! Pingora's session types cost before any proxy logic; portico's over it is what portico and
//! pingora-proxy add.
//!
//! With TLS_LISTEN, CERT and KEY it also terminates TLS there (rustls, HTTP/2 by ALPN: the same
//! exchange runs per HTTP/2 stream). With `--proxy`, the exchange runs from a
//! `ProxyHttp::request_filter` under pingora-proxy's loop instead (as portico's own loop does),
//! which shows what pingora-proxy's wrapper costs apart.
//!
//! usage: pingora_floor [--proxy] LISTEN HTTP_PEER [TLS_LISTEN CERT KEY]

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::connectors::TransportConnector;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as ClientSession;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::{http_proxy, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;
use std::cell::RefCell;
use std::sync::Arc;

// As portico's binary: the allocator is part of what a request costs.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

thread_local! {
    static IDLE: RefCell<Vec<Stream>> = const { RefCell::new(Vec::new()) };
}

struct Floor {
    connector: TransportConnector,
    peer: HttpPeer,
}

impl Floor {
    /// One request and its answer; `None` on any failure (the client's connection closes).
    async fn exchange(&self, session: &mut ServerSession) -> Option<()> {
        let req = session.req_header();
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or_else(String::new, |a| a.ip().to_string());
        let mut head = Box::new(req.clone());
        // An HTTP/2 client's request goes to the peer as HTTP/1.1, its `:authority` as Host.
        head.set_version(http::Version::HTTP_11);
        let host = req.headers.get("host").cloned();
        let host = host.or_else(|| req.uri.authority()?.as_str().parse().ok())?;
        if !head.headers.contains_key("host") {
            head.insert_header("Host", &host).ok()?;
        }
        head.insert_header("X-Forwarded-Host", host).ok()?;
        head.insert_header("X-Forwarded-For", &client).ok()?;
        head.insert_header("X-Real-IP", &client).ok()?;
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let proto = if tls { "https" } else { "http" };
        head.insert_header("X-Forwarded-Proto", proto).ok()?;
        let stream = match IDLE.with(|idle| idle.borrow_mut().pop()) {
            Some(stream) => stream,
            None => Box::pin(self.connector.new_stream(&self.peer)).await.ok()?,
        };
        let mut upstream = ClientSession::new(stream);
        upstream.write_request_header(head).await.ok()?;
        upstream.read_response().await.ok()?;
        let resp = Box::new(upstream.resp_header()?.clone());
        let mut done = upstream.is_body_done();
        session.write_response_header(resp).await.ok()?;
        while !done {
            let body = upstream.read_body_bytes().await.ok()?;
            done = body.is_none() || upstream.is_body_done();
            if let Some(body) = body {
                session.write_response_body(body, false).await.ok()?;
            }
        }
        upstream.respect_keepalive();
        if let Some(stream) = upstream.reuse().await {
            IDLE.with(|idle| idle.borrow_mut().push(stream));
        }
        Some(())
    }
}

#[async_trait]
impl HttpServerApp for Floor {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.read_request().await.ok()? {
            return None;
        }
        self.exchange(&mut session).await?;
        let settings = HttpPersistentSettings::for_session(&session);
        let stream = session.finish().await.ok()??;
        Some(ReusedHttpStream::from_reusable_stream(stream, settings))
    }
}

/// The same exchange as a pingora-proxy `request_filter` that answers the request itself.
struct ProxyFloor(Floor);

#[async_trait]
impl ProxyHttp for ProxyFloor {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.0.peer.clone()))
    }

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        match self.0.exchange(session).await {
            Some(()) => Ok(true),
            None => Error::e_explain(ErrorType::InternalError, "exchange failed"),
        }
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let proxy = args.first().is_some_and(|a| a == "--proxy");
    if proxy {
        args.remove(0);
    }
    let (listen, http, tls) = match args.as_slice() {
        [listen, http] => (listen, http, None),
        [listen, http, tls, cert, key] => (listen, http, Some((tls, cert, key))),
        _ => {
            eprintln!("usage: pingora_floor [--proxy] LISTEN HTTP_PEER [TLS_LISTEN CERT KEY]");
            std::process::exit(2);
        }
    };
    // portico's runtime: one worker thread, no work stealing.
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let floor = Floor {
        connector: TransportConnector::new(None),
        peer: HttpPeer::new(http.as_str(), false, String::new()),
    };
    // portico's listener settings: no read buffer, a 1 KiB write buffer.
    let mut listeners =
        vec![ListenerConfig::tcp(listen.as_str()).l4_buffer(L4BufferSettings::new(0, 1024))];
    if let Some((addr, cert, key)) = tls {
        let mut settings = TlsSettings::intermediate(cert, key).expect("a certificate and key");
        settings.enable_h2();
        listeners.push(
            ListenerConfig::tcp(addr.as_str())
                .l4_buffer(L4BufferSettings::new(0, 1024))
                .tls(settings),
        );
    }
    if proxy {
        let app = http_proxy(&server.configuration, ProxyFloor(floor));
        let mut service = Service::new("floor".to_owned(), app);
        listeners.into_iter().for_each(|l| service.add_listener(l));
        server.add_service(service);
    } else {
        let mut service = Service::new("floor".to_owned(), floor);
        listeners.into_iter().for_each(|l| service.add_listener(l));
        server.add_service(service);
    }
    server.run_forever();
}
