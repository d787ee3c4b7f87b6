//! The test harness: runs the real portico binary on a free port with a generated config,
//! waits until it accepts connections, and talks to it with raw HTTP/1.1 and WebSocket clients.
#![allow(dead_code)]

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_portico");
/// Every network wait in a test is bounded by this, so a bug shows as a failure, not a hang.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A running portico process. Dropping it kills that process (by its pid, nothing else).
pub struct Proxy {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    log: PathBuf,
    child: Child,
    /// The `server` keys (flow style) this proxy was started with.
    server: String,
}

impl Proxy {
    /// Starts portico with `body` (upstreams, routes, ...) below a generated `server:` and one
    /// plain listener on a free loopback port. Panics with the process log if it never listens.
    pub async fn start(body: &str) -> Proxy {
        Self::start_with_grace("1s", body).await
    }

    /// The same with another `server.grace_period`.
    pub async fn start_with_grace(grace: &str, body: &str) -> Proxy {
        Self::start_with_server(&format!("grace_period: {grace}"), body).await
    }

    /// The same with `server` keys of its own (flow style, e.g. `header_timeout: 1s`); the
    /// grace period is 1s unless they say otherwise.
    pub async fn start_with_server(server: &str, body: &str) -> Proxy {
        let server = if server.contains("grace_period") {
            server.to_owned()
        } else {
            format!("grace_period: 1s, {server}")
        };
        let server = server.trim_end_matches([',', ' ']);
        Self::start_made(server, |dir, addr| config_text(dir, addr, server, body)).await
    }

    /// Starts portico on a whole file, `make(dir, addr)`: its first listener must be `addr`
    /// (free, on loopback); `dir` is the proxy's own directory (pid file, sockets).
    pub async fn start_file(make: impl Fn(&Path, SocketAddr) -> String) -> Proxy {
        Self::start_made("", make).await
    }

    /// [`Proxy::start`] with another binary built on portico (examples/custom_filter.rs).
    pub async fn start_with_binary(bin: &Path, body: &str) -> Proxy {
        Self::start_as(bin, "", |dir, addr| {
            config_text(dir, addr, "grace_period: 1s", body)
        })
        .await
    }

    /// `server`: the file's `server` keys in flow style, for [`Proxy::rewrite`].
    async fn start_made(server: &str, make: impl Fn(&Path, SocketAddr) -> String) -> Proxy {
        Self::start_as(Path::new(BIN), server, make).await
    }

    async fn start_as(
        bin: &Path,
        server: &str,
        make: impl Fn(&Path, SocketAddr) -> String,
    ) -> Proxy {
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let addr = proxy_addr();
            let conf = dir.path().join("portico.yaml");
            std::fs::write(&conf, make(dir.path(), addr)).unwrap();
            match Self::spawn(bin, dir, conf, addr, server).await {
                Ok(p) => return p,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("portico did not start:\n{log}"),
            }
        }
        panic!("no free port after 3 tries");
    }

    async fn spawn(
        bin: &Path,
        dir: tempfile::TempDir,
        conf: PathBuf,
        addr: SocketAddr,
        server: &str,
    ) -> Result<Proxy, String> {
        let log = dir.path().join("portico.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn portico");
        let mut proxy = Proxy {
            addr,
            dir,
            conf,
            log,
            child,
            server: server.to_owned(),
        };
        let deadline = Instant::now() + IO_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = proxy.child.try_wait().unwrap() {
                return Err(format!("exited with {status}\n{}", proxy.logs()));
            }
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(proxy);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!(
            "not listening on {addr} after {IO_TIMEOUT:?}\n{}",
            proxy.logs()
        ))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` (e.g. "HUP") to this process only.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} {}", self.pid());
    }

    /// Rewrites the config file with a new body (same server and listener sections).
    pub fn rewrite(&self, body: &str) {
        std::fs::write(
            &self.conf,
            config_text(self.dir.path(), self.addr, &self.server, body),
        )
        .unwrap();
    }

    /// Polls until the log contains `needle`, up to `IO_TIMEOUT`.
    pub async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + IO_TIMEOUT;
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("log never said {needle:?}:\n{}", self.logs());
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit, up to `limit`; `None` if it is still running then.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Binary upgrade: starts `portico -u` on the same config, which takes the listening
    /// sockets over and signals this process; returns the old process once it has exited.
    pub async fn upgrade(&mut self) -> std::process::ExitStatus {
        let log = self.dir.path().join("portico-upgraded.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .arg("-u")
            .arg("-c")
            .arg(&self.conf)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn portico -u");
        let mut old = std::mem::replace(&mut self.child, child);
        self.log = log;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = old.try_wait().unwrap() {
                return status;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let _ = old.kill();
                let _ = old.wait();
                panic!("the new process exited with {status}:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = old.kill();
        let _ = old.wait();
        panic!(
            "the old process did not exit within 30s of the upgrade:\n{}",
            self.logs()
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The config body most tests need: one upstream group `app` of one peer, one route to it.
pub fn one_route(peer: SocketAddr) -> String {
    format!("upstreams:\n  app: {{peers: ['{peer}']}}\nroutes:\n  - {{upstream: app}}\n")
}

/// `server` is extra keys in flow style (`grace_period: 1s, header_timeout: 1s`).
fn config_text(dir: &Path, addr: SocketAddr, server: &str, body: &str) -> String {
    format!(
        "server: {{threads: 1, pid_file: '{d}/portico.pid', upgrade_sock: '{d}/upgrade.sock', graceful_shutdown_timeout: 1s, {server}}}\nlisteners:\n  - address: '{addr}'\n{body}",
        d = dir.display()
    )
}

/// A port for a proxy listener, from 20000-32767: below Linux's ephemeral range (32768+), where
/// every origin and client socket of the tests lives, so an origin bound to port 0 can never
/// take a proxy's port between our check and the proxy's bind. A counter keeps the tests of
/// this process apart; the bind check skips ports in use by anything else.
pub fn proxy_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id() * 7919;
    loop {
        let port = 20000 + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % 12767;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// A loopback address nothing listens on right now (a dead peer).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Runs `portico ARGS` to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run portico");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An HTTP response as received.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as its framing delimits it (Content-Length, chunked, else up to the close).
    pub body: Vec<u8>,
    /// Bytes after the body's end: another response, or something smuggled behind it.
    pub trailing: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The name of the origin that answered (from its JSON body).
    pub fn origin(&self) -> String {
        self.json()["origin"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The values of header `name` as the origin received it, in order.
    pub fn upstream_header(&self, name: &str) -> Vec<String> {
        self.json()["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|h| h[1].as_str().unwrap().to_owned())
            .collect()
    }
}

/// `GET path` with `Host: test.local` (unless given) and `Connection: close`.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(addr, None, &request_text("GET", path, headers)).await
}

/// The same from a chosen loopback source address (127.0.0.2, ...), as a different client.
pub async fn get_from(src: IpAddr, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(addr, Some(src), &request_text("GET", path, headers)).await
}

pub fn request_text(method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        text.push_str("Host: test.local\r\n");
    }
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("Connection: close\r\n\r\n");
    text
}

/// Writes raw bytes, reads until the server closes, parses one response.
pub async fn send(addr: SocketAddr, src: Option<IpAddr>, raw: &str) -> Resp {
    let bytes = send_raw(addr, src, raw.as_bytes()).await;
    parse_response(&bytes)
        .unwrap_or_else(|| panic!("no HTTP response in {:?}", String::from_utf8_lossy(&bytes)))
}

pub async fn connect(addr: SocketAddr, src: Option<IpAddr>) -> TcpStream {
    let fut = async {
        match src {
            None => TcpStream::connect(addr).await,
            Some(ip) => {
                let sock = TcpSocket::new_v4()?;
                sock.bind(SocketAddr::new(ip, 0))?;
                sock.connect(addr).await
            }
        }
    };
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .expect("connect timed out")
        .expect("connect")
}

pub async fn send_raw(addr: SocketAddr, src: Option<IpAddr>, raw: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr, src).await;
    stream.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut out))
        .await
        .expect("response timed out")
        .ok();
    out
}

/// Writes raw bytes and reads exactly one response (by its Content-Length), leaving the
/// connection as the server left it; returns the response and the stream.
pub async fn send_one(addr: SocketAddr, raw: &str) -> (Resp, TcpStream) {
    let mut stream = connect(addr, None).await;
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    loop {
        if let Some(r) = parse_response(&buf) {
            let want: usize = r
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if r.body.len() >= want {
                return (r, stream);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("response timed out")
            .unwrap();
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One `GET` that reports failure instead of panicking (for load loops).
pub async fn try_get(addr: SocketAddr, path: &str) -> Result<Resp, String> {
    let fut = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(request_text("GET", path, &[]).as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        stream
            .read_to_end(&mut out)
            .await
            .map_err(|e| format!("read: {e}"))?;
        parse_response(&out).ok_or_else(|| format!("no response in {} bytes", out.len()))
    };
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// One request of a load run: when it was sent, when it ended, which origin answered (or why
/// it failed, or the status if not 200).
#[derive(Debug, Clone)]
pub struct Sample {
    pub start: Instant,
    pub end: Instant,
    pub outcome: Result<String, String>,
}

/// Continuous load: `workers` tasks, each sending one request per connection in a loop until
/// stopped, bounded by `MAX_PER_WORKER` requests.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

const MAX_PER_WORKER: usize = 50_000;

impl Load {
    pub fn start(addr: SocketAddr, workers: usize, path: &'static str) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed)
                        && samples.len() < MAX_PER_WORKER
                    {
                        let start = Instant::now();
                        let outcome = match try_get(addr, path).await {
                            Ok(r) if r.status == 200 => Ok(r.origin()),
                            Ok(r) => Err(format!("status {}: {}", r.status, r.text())),
                            Err(e) => Err(e),
                        };
                        samples.push(Sample {
                            start,
                            end: Instant::now(),
                            outcome,
                        });
                    }
                    samples
                })
            })
            .collect();
        Load { stop, tasks }
    }

    pub async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_by_key(|s| s.start);
        all
    }
}

/// For a binary upgrade: no failure but, at most, one connection dropped at the hand-off
/// instant. Pingora 0.9.1 drops a connection it accepted but has not read a request from yet
/// when its shutdown starts (`handle_new_request` races `read_request` with shutdown); a
/// client whose request was still on its way when the old process stopped sees a reset, or a
/// close with no response. The
/// fix is TCP_DEFER_ACCEPT on the listener, which Pingora's socket options do not offer yet.
pub fn assert_handoff_failures(samples: &[Sample]) -> usize {
    let failed: Vec<_> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().err())
        .collect();
    // The dropped connection shows as a reset when the request had reached the socket, and as
    // a close with nothing read when it had not: the same race either way.
    let resets = failed
        .iter()
        .filter(|e| e.contains("reset by peer") || e.as_str() == "no response in 0 bytes")
        .count();
    assert!(
        failed.len() == resets && resets <= 1,
        "{} of {} requests failed: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(10)]
    );
    resets
}

/// Panics listing the failures, if any.
pub fn assert_no_failures(samples: &[Sample]) {
    let failed: Vec<_> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(10)]
    );
}

pub fn parse_response(bytes: &[u8]) -> Option<Resp> {
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hdrs);
    let httparse::Status::Complete(len) = resp.parse(bytes).ok()? else {
        return None;
    };
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let rest = &bytes[len..];
    let status = resp.code?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length = header("content-length").and_then(|v| v.trim().parse::<usize>().ok());
    let bodiless = status < 200 || status == 204 || status == 304;
    let (body, trailing) = if bodiless {
        // An interim answer: what follows is the next response, kept whole in `trailing`.
        (Vec::new(), rest.to_vec())
    } else if chunked {
        dechunk(rest)
    } else if let Some(n) = length {
        let n = n.min(rest.len());
        (rest[..n].to_vec(), rest[n..].to_vec())
    } else {
        (rest.to_vec(), Vec::new())
    };
    Some(Resp {
        status,
        headers,
        body,
        trailing,
    })
}

/// A chunked body and the bytes after its last chunk.
fn dechunk(mut rest: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut body = Vec::new();
    while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..i]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            let end = rest[i..].windows(4).position(|w| w == b"\r\n\r\n");
            let after = end.map_or(rest.len(), |e| i + e + 4);
            return (body, rest[after..].to_vec());
        }
        body.extend_from_slice(&rest[i + 2..i + 2 + size]);
        rest = &rest[i + 2 + size + 2..];
    }
    (body, Vec::new())
}

pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Opens a WebSocket through `addr` to `path` with extra request headers.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://test.local{path}")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let stream = connect(addr, None).await;
    tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::client_async(req, stream))
        .await
        .expect("ws handshake timed out")
}

/// Repeats `probe` until it returns true, up to `IO_TIMEOUT` (a readiness poll, not a sleep).
pub async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + IO_TIMEOUT;
    while Instant::now() < deadline {
        if probe().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// An origin that runs `script` on each accepted connection; returns its address and the
/// count of connections accepted.
pub async fn scripted<F, Fut>(script: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(script(stream));
        }
    });
    (addr, accepted)
}

/// Reads up to the end of a head (`\r\n\r\n`); `None` if the peer closed first. Requests here
/// have no body and are never pipelined, so nothing after the head is lost.
pub async fn read_head(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(IO_TIMEOUT, s.read(&mut byte)).await;
        match read.expect("head timed out") {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(head)
}

/// The name of the echo origin (`origins::WsOrigin`) behind a WebSocket.
pub async fn whoami(ws: &mut Ws) -> String {
    use futures_util::{SinkExt, StreamExt};
    let ask = tokio_tungstenite::tungstenite::Message::text("whoami");
    ws.send(ask).await.unwrap();
    ws.next()
        .await
        .unwrap()
        .unwrap()
        .into_text()
        .unwrap()
        .to_string()
}
