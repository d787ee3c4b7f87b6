//! A bare Pingora proxy, for `make bench` only: what a Pingora user gets from the framework's
//! own load-balancer example (one thread, Pingora's defaults otherwise), plus the forwarding
//! headers every proxy in the benchmark sets. It shows how much of portico's CPU per request is
//! the framework's floor and how much is portico's.
//!
//! usage: bare_pingora LISTEN HTTP_PEER WS_PEER   (paths under /ws/ go to WS_PEER)

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::prelude::*;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use std::sync::Arc;

struct Bare {
    http: Arc<LoadBalancer<RoundRobin>>,
    ws: Arc<LoadBalancer<RoundRobin>>,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let lb = match session.req_header().uri.path().starts_with("/ws/") {
            true => &self.ws,
            false => &self.http,
        };
        let peer = lb.select(b"", 256).expect("a static peer");
        Ok(Box::new(HttpPeer::new(peer, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or_else(String::new, |a| a.ip().to_string());
        let host = session.req_header().headers.get("host").cloned();
        req.insert_header("X-Forwarded-For", &client)?;
        req.insert_header("X-Real-IP", &client)?;
        req.insert_header("X-Forwarded-Proto", "http")?;
        if let Some(host) = host {
            req.insert_header("X-Forwarded-Host", host)?;
        }
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, http, ws] = args.as_slice() else {
        eprintln!("usage: bare_pingora LISTEN HTTP_PEER WS_PEER");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let lb = |peer: &str| Arc::new(LoadBalancer::try_from_iter([peer]).expect("a peer address"));
    let bare = Bare {
        http: lb(http),
        ws: lb(ws),
    };
    let mut proxy = http_proxy_service(&server.configuration, bare);
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
