//! Real origins on 127.0.0.1 for tests and the `make run` demo: an HTTP origin that answers
//! with what it received as JSON and names itself, and a WebSocket echo origin.
//! Shared by `tests/integration` and `examples/demo_origins.rs` (one copy of the code).
#![allow(dead_code)]
// tungstenite's handshake callback fixes its (large) error type.
#![allow(clippy::result_large_err)]

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const MAX_HEAD: usize = 64 * 1024;

/// What a test origin records for the test to read.
type Shared<T> = Arc<Mutex<T>>;
/// A WebSocket origin's last upgrade request: its headers and its target.
type Recorded = (Shared<Vec<(String, String)>>, Shared<String>);

/// An HTTP/1.1 origin. `GET /healthz` answers the status set by [`HttpOrigin::set_health`];
/// `/set-cookie` adds two Set-Cookie headers; `/status/NNN` answers NNN; `/slow/MS` answers
/// after MS milliseconds; anything else 200.
/// Every answer's body is JSON: origin name, method, path, headers (in order, repeats kept),
/// body length and the body (as text, lossy).
pub struct HttpOrigin {
    pub addr: SocketAddr,
    pub name: String,
    health: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl HttpOrigin {
    pub async fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> Self {
        Self::start_with(name, addr, None).await
    }

    /// An `https://` origin: TLS with `config`, then the same behaviour.
    pub async fn start_tls(name: &str, config: Arc<tokio_rustls::rustls::ServerConfig>) -> Self {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        Self::start_with(name, "127.0.0.1:0".parse().unwrap(), Some(acceptor)).await
    }

    async fn start_with(
        name: &str,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(AtomicU16::new(200));
        let hits = Arc::new(AtomicUsize::new(0));
        let (n, h, c) = (name.to_owned(), Arc::clone(&health), Arc::clone(&hits));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (n, h, c, tls) = (n.clone(), Arc::clone(&h), Arc::clone(&c), tls.clone());
                tokio::spawn(async move {
                    let _ = match tls {
                        None => serve_http(stream, &n, &h, &c).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls_stream) => serve_http(tls_stream, &n, &h, &c).await,
                            Err(e) => Err(e),
                        },
                    };
                });
            }
        });
        HttpOrigin {
            addr,
            name: name.to_owned(),
            health,
            hits,
            task,
        }
    }

    pub fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }

    /// Requests answered, health probes excluded.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for HttpOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_http<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    name: &str,
    health: &AtomicU16,
    hits: &AtomicUsize,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        // Read one request head.
        let (head_len, method, path, headers) = loop {
            let mut hdrs = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut hdrs);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let headers: Vec<(String, String)> = req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    break (
                        len,
                        req.method.unwrap_or("").to_owned(),
                        req.path.unwrap_or("").to_owned(),
                        headers,
                    );
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                    let mut chunk = [0u8; 4096];
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                _ => return Ok(()),
            }
        };
        buf.drain(..head_len);
        let header = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let mut received = Vec::new();
        let body_len =
            if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
                read_chunked(&mut stream, &mut buf, &mut received).await?
            } else {
                let len: usize = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < len {
                    let mut chunk = [0u8; 8192];
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                received.extend(buf.drain(..len));
                len
            };
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));

        let mut status = 200;
        let mut extra = String::new();
        if path == "/healthz" {
            status = health.load(Ordering::SeqCst);
        } else {
            hits.fetch_add(1, Ordering::SeqCst);
            if path.starts_with("/set-cookie") {
                extra.push_str("Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; HttpOnly\r\n");
            } else if let Some(code) = path.strip_prefix("/status/") {
                status = code.parse().unwrap_or(500);
            } else if let Some(ms) = path.strip_prefix("/slow/") {
                tokio::time::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0))).await;
            }
        }
        let body = serde_json::json!({
            "origin": name,
            "method": method,
            "path": path,
            "headers": headers,
            "body_len": body_len,
            "body": String::from_utf8_lossy(&received),
        })
        .to_string();
        let response = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nServer: origin\r\nX-Origin: {name}\r\n{extra}{}\r\n{body}",
            http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Unknown"),
            body.len(),
            if close { "Connection: close\r\n" } else { "" },
        );
        stream.write_all(response.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

async fn read_chunked<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    received: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        let need = line_end + 2 + size + 2;
        while buf.len() < need {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        received.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
        buf.drain(..need);
        total += size;
        if size == 0 {
            return Ok(total);
        }
    }
}

/// A WebSocket echo origin (tokio-tungstenite). Echoes text and binary messages; answers the
/// text `whoami` with its name and `headers` with the upgrade request's headers as JSON;
/// `close:CODE:REASON` makes it close with that code and reason; `tick:N:MS` makes it send N
/// messages MS ms apart. Close frames it receives are recorded.
pub struct WsOrigin {
    pub addr: SocketAddr,
    pub name: String,
    /// The headers of the last upgrade request received.
    pub last_request: Arc<Mutex<Vec<(String, String)>>>,
    /// The request target of the last upgrade request received.
    pub last_path: Arc<Mutex<String>>,
    /// The close frames received from clients, in order.
    pub closes: Arc<Mutex<Vec<(u16, String)>>>,
    task: JoinHandle<()>,
}

impl WsOrigin {
    pub async fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> Self {
        Self::start_with(name, addr, None).await
    }

    /// A `wss://` origin: TLS with `config`, then the same echo behaviour.
    pub async fn start_tls(name: &str, config: Arc<tokio_rustls::rustls::ServerConfig>) -> Self {
        Self::start_with(
            name,
            "127.0.0.1:0".parse().unwrap(),
            Some(tokio_rustls::TlsAcceptor::from(config)),
        )
        .await
    }

    async fn start_with(
        name: &str,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind ws origin");
        let addr = listener.local_addr().unwrap();
        let last_request = Arc::new(Mutex::new(Vec::new()));
        let closes = Arc::new(Mutex::new(Vec::new()));
        let last_path = Arc::new(Mutex::new(String::new()));
        let (n, last, cl) = (
            name.to_owned(),
            (Arc::clone(&last_request), Arc::clone(&last_path)),
            Arc::clone(&closes),
        );
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (n, last, cl, tls) = (n.clone(), last.clone(), Arc::clone(&cl), tls.clone());
                tokio::spawn(async move {
                    let _ = match tls {
                        None if !asks_for_upgrade(&stream).await => answer_426(stream).await,
                        None => serve_ws(stream, &n, &last, &cl).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls_stream) => serve_ws(tls_stream, &n, &last, &cl).await,
                            Err(e) => Err(e.into()),
                        },
                    };
                });
            }
        });
        WsOrigin {
            addr,
            name: name.to_owned(),
            last_request,
            last_path,
            closes,
            task,
        }
    }
}

impl Drop for WsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether the request waiting on `stream` asks for a WebSocket upgrade (its head is peeked,
/// not read). A browser or curl pointed at the echo origin sends a plain GET.
async fn asks_for_upgrade(stream: &TcpStream) -> bool {
    let mut buf = vec![0u8; MAX_HEAD];
    for _ in 0..100 {
        let Ok(n) = stream.peek(&mut buf).await else {
            return false;
        };
        let head = &buf[..n];
        if n == 0 {
            return false;
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
            return String::from_utf8_lossy(head)
                .to_ascii_lowercase()
                .contains("upgrade: websocket");
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// The echo origin's answer to a plain request: what it is and how to talk to it.
async fn answer_426(mut stream: TcpStream) -> Result<(), Box<dyn std::error::Error>> {
    let body = "this is a WebSocket echo origin: connect with a WebSocket client\n";
    let response = format!(
        "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    Ok(())
}

async fn serve_ws<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    name: &str,
    (last, last_path): &Recorded,
    closes: &Mutex<Vec<(u16, String)>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut seen = Vec::new();
    let mut path = String::new();
    let callback = |req: &Request, mut resp: Response| {
        // Like a real server, accept the first subprotocol the client offers.
        if let Some(first) = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
        {
            resp.headers_mut()
                .insert("sec-websocket-protocol", first.trim().parse().unwrap());
        }
        path = req.uri().to_string();
        seen = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        Ok(resp)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(stream, callback).await?;
    *last.lock().unwrap() = seen.clone();
    *last_path.lock().unwrap() = path;
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(t) if t.as_str() == "whoami" => ws.send(Message::text(name)).await?,
            Message::Text(t) if t.as_str() == "headers" => {
                ws.send(Message::text(serde_json::to_string(&seen)?))
                    .await?
            }
            Message::Text(t) if t.as_str().starts_with("close:") => {
                let mut parts = t.as_str().splitn(3, ':').skip(1);
                let code: u16 = parts.next().unwrap_or("1000").parse()?;
                let reason = parts.next().unwrap_or("").to_owned();
                ws.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                })))
                .await?;
            }
            Message::Text(t) if t.as_str().starts_with("tick:") => {
                // tick:N:MS sends N messages MS milliseconds apart, the client silent.
                let mut parts = t.as_str().split(':').skip(1);
                let n: u32 = parts.next().unwrap_or("1").parse()?;
                let ms: u64 = parts.next().unwrap_or("100").parse()?;
                for i in 0..n {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    ws.send(Message::text(format!("tick {i}"))).await?;
                }
            }
            Message::Close(Some(f)) => closes
                .lock()
                .unwrap()
                .push((u16::from(f.code), f.reason.to_string())),
            m @ (Message::Text(_) | Message::Binary(_)) => ws.send(m).await?,
            _ => {}
        }
    }
    Ok(())
}
