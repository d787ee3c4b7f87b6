//! Connection-level policy around Pingora's HTTP/1 loop: a deadline for a whole request head.
//!
//! Pingora reads a request head with a per-read timeout (60 s), so a client that trickles its
//! headers a byte at a time (slowloris) holds a connection forever, and a connection that sends
//! nothing holds it for 60 s. Pingora has no hook before that read, so portico wraps the proxy
//! app: each request's processing runs under a deadline that ends the moment the head has been
//! read (the proxy's `new_ctx`, which Pingora calls right after, marks it), and that closes the
//! connection if it passes first:
//! - the first request of a connection: `server.header_timeout` from accept (after TLS),
//! - a later one on a kept-alive connection: `server.keepalive_timeout` from the end of the
//!   previous response (idle wait and head together), which Pingora's own idle timeout also
//!   gets.
//!
//! A connection cut this way is closed without a response (as Pingora does on its own timeouts)
//! and counted in `portico_rejections_total{reason="header_timeout"}`. HTTP/2 (TLS with ALPN h2):
//! the first stream must open within `header_timeout` of the handshake, and a connection with no
//! stream open is closed after `keepalive_timeout` (Pingora's `h2_idle_timeout`). The TLS hello
//! itself must arrive within `header_timeout` ([`ClientHelloDeadline`]).
//!
//! Also here: every response is written under `server.send_timeout` (a client that reads
//! nothing is cut, and the peer's connection behind it freed), and open client connections are
//! capped at `server.max_connections` (each holds a [`ConnectionPermit`]; past the cap a new
//! connection is closed at once, counted as `reason="max_connections"` with route `-`).

use crate::config::schema::ServerSection;
use crate::metrics::METRICS;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::listeners::PreTlsProcess;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{SocketDigest, Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;

/// What bounds one client connection (the `server` keys, defaults applied).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: usize,
}

impl ConnLimits {
    pub fn new(s: &ServerSection) -> Self {
        ConnLimits {
            header_timeout: s.header_timeout.map_or(DEFAULT_HEADER_TIMEOUT, |d| d.0),
            keepalive_timeout: s
                .keepalive_timeout
                .map_or(DEFAULT_KEEPALIVE_TIMEOUT, |d| d.0),
            send_timeout: s.send_timeout.map_or(DEFAULT_SEND_TIMEOUT, |d| d.0),
            max_connections: s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        }
    }
}

/// Client connections open now (permits held), against `server.max_connections`.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// One open client connection, counted until dropped: by the connection's task, or by the
/// WebSocket tunnel that takes the connection over ([`take_permit`]).
#[derive(Debug)]
pub struct ConnectionPermit(());

impl ConnectionPermit {
    fn acquire(max: usize) -> Option<Self> {
        OPEN.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()?;
        METRICS.connections_open.inc();
        Some(ConnectionPermit(()))
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
        METRICS.connections_open.dec();
    }
}

/// Per connection, on its task: how many request heads were awaited, whether the current one
/// has been read, and the connection's permit.
struct ConnState {
    /// When the first request head must be complete: `header_timeout` from accept.
    first_deadline: tokio::time::Instant,
    requests: Cell<u32>,
    head_read: Cell<bool>,
    permit: Cell<Option<ConnectionPermit>>,
}

tokio::task_local! {
    static CONN: ConnState;
}

/// Counts a connection portico closed itself, by why: `portico_rejections_total` with route `-`
/// (no request was routed).
fn count_cut(reason: &'static str) {
    METRICS.rejections.with_label_values(&["-", reason]).inc();
}

/// Called by the proxy once a request head is read (the first thing Pingora does after).
pub fn head_read() {
    let _ = CONN.try_with(|c| c.head_read.set(true));
}

/// The current connection's permit, for a task that takes the connection over (a WebSocket
/// tunnel) and keeps it counted until it closes. `None` outside a connection's task.
pub fn take_permit() -> Option<ConnectionPermit> {
    CONN.try_with(|c| c.permit.take()).ok().flatten()
}

/// The service's app: scopes the per-connection state, then Pingora's own HTTP loop (TLS
/// ALPN, h2c, keep-alive reuse) over [`Guarded`].
pub struct Connections<A> {
    inner: Arc<Guarded<A>>,
}

/// The proxy, each request under the head deadline.
pub struct Guarded<A> {
    proxy: Arc<HttpProxy<A>>,
    limits: ConnLimits,
    /// Pingora's options with `h2_idle_timeout` set: an HTTP/2 connection with no stream open
    /// is closed after `server.keepalive_timeout` (Pingora's default: never, its issue 563).
    options: HttpServerOptions,
}

impl<A> Connections<A> {
    pub fn new(proxy: HttpProxy<A>, limits: ConnLimits) -> Self {
        let mut options = proxy.server_options.clone().unwrap_or_default();
        options.h2_idle_timeout = Some(limits.keepalive_timeout);
        Connections {
            inner: Arc::new(Guarded {
                proxy: Arc::new(proxy),
                limits,
                options,
            }),
        }
    }
}

#[async_trait]
impl<A> ServerApp for Connections<A>
where
    HttpProxy<A>: HttpServerApp + Send + Sync + 'static,
    A: Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(permit) = ConnectionPermit::acquire(self.inner.limits.max_connections) else {
            // Closed at once (the stream drops): the client may retry, and is served as soon
            // as others close.
            log::debug!("server.max_connections reached: connection closed");
            count_cut("max_connections");
            return None;
        };
        let first_deadline = tokio::time::Instant::now() + self.inner.limits.header_timeout;
        // A plain connection waits for its first byte here, holding a few hundred bytes,
        // before Pingora's session and request future (about 30 KiB) exist: a silent
        // connection costs that much less (docs/security.md).
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(first_deadline, stream.try_peek(&mut first)).await {
            Ok(Ok(_)) => {}
            // Closed (or failed) before sending anything: nothing to answer.
            Ok(Err(_)) => return None,
            Err(_) => {
                log::debug!("nothing sent within header_timeout: connection closed");
                count_cut("header_timeout");
                return None;
            }
        }
        let state = ConnState {
            first_deadline,
            requests: Cell::new(0),
            head_read: Cell::new(false),
            permit: Cell::new(Some(permit)),
        };
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let first_stream = match (h2, stream.get_socket_digest()) {
            (true, Some(digest)) => Some(FirstStream::expect(&digest)),
            _ => None,
        };
        let work = CONN.scope(state, self.inner.process_new(stream, shutdown));
        match first_stream {
            None => work.await,
            // HTTP/2: Pingora waits for the preface (and then for a first stream) with no limit
            // of its own; the first request head must come within header_timeout, as in HTTP/1.
            Some(first) => {
                let deadline = async {
                    tokio::time::sleep(self.inner.limits.header_timeout).await;
                    if first.arrived() {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    out = work => out,
                    () = deadline => {
                        log::debug!("no HTTP/2 request within header_timeout: connection closed");
                        count_cut("header_timeout");
                        None
                    }
                }
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.proxy.http_cleanup().await;
    }
}

#[async_trait]
impl<A> HttpServerApp for Guarded<A>
where
    HttpProxy<A>: HttpServerApp + Send + Sync + 'static,
    A: Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let limit = CONN.try_with(|c| {
            let n = c.requests.get();
            c.requests.set(n.saturating_add(1));
            c.head_read.set(false);
            if n == 0 {
                c.first_deadline
            } else {
                tokio::time::Instant::now() + self.limits.keepalive_timeout
            }
        });
        // Every write of the response (Pingora's loop and portico's own) waits at most this.
        session.set_write_timeout(Some(self.limits.send_timeout));
        if let ServerSession::H2(_) = &session {
            if let Some(digest) = session.digest().and_then(|d| d.socket_digest.as_ref()) {
                FirstStream::arrive(digest);
            }
        }
        // HTTP/1.1 pipelining (RFC 9112 9.3.2), served in order as nginx and HAProxy do; by
        // default Pingora answers the first request, closes, and drops the ones behind it.
        if let ServerSession::H1(h1) = &mut session {
            h1.set_pipelining_enabled(true);
        }
        if session.get_keepalive().is_some() {
            // Pingora's per-read idle timeout between requests (whole seconds; 0 would mean
            // "no keep-alive", so at least 1).
            session.set_keepalive(Some(self.limits.keepalive_timeout.as_secs().max(1)));
        }
        let work = self.proxy.process_new_http(session, shutdown);
        match limit {
            Ok(limit) => HeadDeadline {
                work,
                timer: tokio::time::sleep_until(limit),
            }
            .await
            .unwrap_or_else(|| {
                count_cut("header_timeout");
                None
            }),
            // An HTTP/2 stream's task: no connection state, no deadline.
            Err(_) => work.await,
        }
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.proxy.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }

    async fn http_cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

pin_project_lite::pin_project! {
    /// `work` until it ends; `None` if `timer` fires while the head is still unread.
    struct HeadDeadline<F> {
        #[pin]
        work: F,
        #[pin]
        timer: tokio::time::Sleep,
    }
}

impl<F: Future> Future for HeadDeadline<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.work.poll(cx) {
            return Poll::Ready(Some(out));
        }
        // Once the head is read the timer is never polled again (it may wake this task once,
        // harmlessly, if the request outlives it).
        let head_read = CONN.try_with(|c| c.head_read.get()).unwrap_or(true);
        if !head_read && this.timer.poll(cx).is_ready() {
            log::debug!("no complete request head in time: connection closed");
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

/// HTTP/2 connections that have not opened a stream yet, by their socket digest (shared by the
/// connection and every stream's session): stream tasks run apart from the connection's task,
/// so this is how the first one tells its connection it came.
static AWAITING_FIRST_STREAM: std::sync::LazyLock<Mutex<HashMap<usize, Arc<AtomicBool>>>> =
    std::sync::LazyLock::new(Default::default);

/// One HTTP/2 connection's wait for its first stream; unregisters itself when dropped.
struct FirstStream {
    key: usize,
    arrived: Arc<AtomicBool>,
}

impl FirstStream {
    fn expect(digest: &Arc<SocketDigest>) -> Self {
        let key = Arc::as_ptr(digest) as usize;
        let arrived = Arc::new(AtomicBool::new(false));
        lock(&AWAITING_FIRST_STREAM).insert(key, Arc::clone(&arrived));
        FirstStream { key, arrived }
    }

    /// A stream of the connection with this digest has a request head.
    fn arrive(digest: &Arc<SocketDigest>) {
        let key = Arc::as_ptr(digest) as usize;
        if let Some(flag) = lock(&AWAITING_FIRST_STREAM).remove(&key) {
            flag.store(true, Ordering::Release);
        }
    }

    fn arrived(&self) -> bool {
        self.arrived.load(Ordering::Acquire)
    }
}

impl Drop for FirstStream {
    fn drop(&mut self) {
        lock(&AWAITING_FIRST_STREAM).remove(&self.key);
    }
}

/// A poisoned lock still holds a usable map (a panic elsewhere cannot corrupt it).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The TLS ClientHello must arrive within `server.header_timeout` of accept: Pingora allows a
/// fixed 60 s for the whole handshake, so a connection that sends nothing (or trickles its
/// hello) would be held that long. Runs before Pingora's handshake on TLS listeners: reads the
/// first TLS record (the hello) under the deadline, then puts the bytes back for rustls.
pub struct ClientHelloDeadline {
    pub timeout: Duration,
}

/// The largest TLS record (RFC 8446 5.1: 2^14 plus expansion) and its header.
const TLS_RECORD_MAX: usize = 5 + (1 << 14) + 256;

#[async_trait]
impl PreTlsProcess for ClientHelloDeadline {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        use pingora::{Error, ErrorType};
        use tokio::io::AsyncReadExt;
        let mut hello = Vec::with_capacity(512);
        let read = async {
            loop {
                // A handshake record: type 22, then version and a 16-bit length.
                let want = match hello.get(3..5) {
                    Some(len) => 5 + usize::from(u16::from_be_bytes([len[0], len[1]])),
                    None => 5,
                };
                if hello.len() >= want || hello.first().is_some_and(|t| *t != 22) {
                    return Ok(());
                }
                let mut chunk = [0u8; 1024];
                let room = (want.min(TLS_RECORD_MAX) - hello.len()).min(chunk.len());
                match stream.read(&mut chunk[..room]).await {
                    Ok(0) => {
                        return Err(Error::explain(
                            ErrorType::ConnectionClosed,
                            "closed before its TLS hello",
                        ))
                    }
                    Ok(n) => hello.extend_from_slice(&chunk[..n]),
                    Err(e) => {
                        return Err(Error::because(
                            ErrorType::ReadError,
                            "reading the TLS hello",
                            e,
                        ))
                    }
                }
            }
        };
        let result = match tokio::time::timeout(self.timeout, read).await {
            Ok(r) => r,
            Err(_) => {
                count_cut("header_timeout");
                Err(Error::explain(
                    ErrorType::ReadTimedout,
                    "no TLS hello within server.header_timeout",
                ))
            }
        };
        // Whatever was read goes back: rustls reads the hello (or the garbage) itself.
        stream.rewind(&hello);
        result
    }
}
