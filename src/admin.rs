//! The admin listener: `GET /metrics` (Prometheus text), `/healthz` (200 serving, 503 draining),
//! `/status` (JSON: config checksum and load time, every upstream group and peer).
//!
//! Not a Pingora listening service on purpose: those stop accepting the moment a graceful
//! shutdown starts, and a load balancer must be able to read `503 draining` during the grace
//! period. The socket is bound with SO_REUSEPORT so the new process of a binary upgrade binds
//! it while the old one still answers.

use crate::drain::DRAINING;
use crate::metrics::METRICS;
use crate::snapshot::SharedSnapshot;
use async_trait::async_trait;
use log::{debug, error};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_REQUEST: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the admin address now, at start, so a busy port is an error before anything runs.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

pub struct AdminService {
    pub listener: std::net::TcpListener,
    pub snapshot: SharedSnapshot,
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // A clone of the bound socket each start, so a restart (supervise) serves it again.
        let listener = match self
            .listener
            .try_clone()
            .and_then(tokio::net::TcpListener::from_std)
        {
            Ok(l) => l,
            Err(e) => {
                error!("admin listener: {e}");
                return;
            }
        };
        // Serves on through a drain (the drain service sets DRAINING); the runtime ends this
        // task at the very end.
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let snapshot = Arc::clone(&self.snapshot);
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, &snapshot).await {
                            debug!("admin connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors (EMFILE) fails every accept at once: wait for some to
                    // close rather than spin.
                    error!("admin accept: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

/// What `/` answers: the endpoints.
const INDEX: &str = "portico admin\n\
/metrics  Prometheus text: requests, latencies, upstream health, WebSockets, rejections\n\
/healthz  200 ok, or 503 while draining (for load balancers)\n\
/status   JSON: the configuration's checksum, routes and what they match, upstream groups and their peers' health\n";

/// How long the admin listener waits after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

async fn serve(mut stream: TcpStream, snapshot: &SharedSnapshot) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let (method, path) = loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk)).await??;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_owned(),
                    req.path.unwrap_or("").to_owned(),
                )
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => continue,
            _ => {
                return respond(
                    &mut stream,
                    400,
                    "text/plain",
                    b"bad request\n".to_vec(),
                    false,
                )
                .await
            }
        }
    };
    let head = method == "HEAD";
    if method != "GET" && !head {
        return respond(
            &mut stream,
            405,
            "text/plain",
            b"only GET\n".to_vec(),
            false,
        )
        .await;
    }
    let path = path.split('?').next().unwrap_or_default();
    let (status, kind, body) = match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            METRICS.render(&snapshot.load()),
        ),
        "/healthz" if DRAINING.load(Ordering::SeqCst) => {
            (503, "text/plain", b"draining\n".to_vec())
        }
        "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
        "/status" => (200, "application/json", status_json(snapshot)),
        "/" => (200, "text/plain", INDEX.as_bytes().to_vec()),
        _ => (404, "text/plain", b"not found\n".to_vec()),
    };
    respond(&mut stream, status, kind, body, head).await
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    kind: &str,
    body: Vec<u8>,
    head: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let header = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if !head {
        stream.write_all(&body).await?;
    }
    stream.shutdown().await
}

fn status_json(snapshot: &SharedSnapshot) -> Vec<u8> {
    let s = snapshot.load();
    let mut upstreams = serde_json::Map::new();
    let mut names: Vec<&String> = s.upstreams.keys().collect();
    names.sort();
    for name in names {
        let g = &s.upstreams[name];
        let peers: Vec<_> = g
            .peers()
            .into_iter()
            .map(|(p, healthy)| {
                serde_json::json!({
                    "address": p.addr.to_string(),
                    "weight": p.weight,
                    "healthy": healthy,
                    "in_flight": p.inflight(),
                })
            })
            .collect();
        let mut group = serde_json::json!({
            "balance": g.balance.as_str(),
            "health_check": g.health.is_some(),
            "peers": peers,
        });
        if let Some(d) = &g.discovery {
            let names: Vec<_> = d
                .names
                .iter()
                .zip(d.answers())
                .map(|(n, a)| {
                    serde_json::json!({
                        "name": n.host,
                        "port": n.port,
                        "addresses": a.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "resolved_at": a.resolved_at
                            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                        "error": a.error,
                    })
                })
                .collect();
            group["resolve"] = serde_json::json!({
                "interval": humantime::format_duration(d.schedule.interval).to_string(),
                "names": names,
            });
        }
        upstreams.insert(name.clone(), group);
    }
    serde_json::to_vec_pretty(&serde_json::json!({
        "config": {
            "sha256": s.sha256,
            "loaded_at": humantime::format_rfc3339_seconds(s.loaded_at).to_string(),
        },
        "draining": DRAINING.load(Ordering::SeqCst),
        "routes": s.routes.iter().map(|r| serde_json::json!({
            "name": r.name,
            "host": r.host.as_deref().unwrap_or("*"),
            "path_prefix": r.path_prefix,
            "upstream": r.upstream.name,
        })).collect::<Vec<_>>(),
        "upstreams": upstreams,
    }))
    .unwrap_or_default()
}
