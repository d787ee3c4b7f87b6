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
//! and counted in `portico_rejections_total{reason="header_timeout"}`. HTTP/2 streams run on
//! tasks of their own and are not covered (h2 has its own flow control; TLS with ALPN h2 only).

use crate::metrics::METRICS;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Per connection, on its task: how many request heads were awaited, and whether the current
/// one has been read.
struct ConnState {
    requests: Cell<u32>,
    head_read: Cell<bool>,
}

tokio::task_local! {
    static CONN: ConnState;
}

/// Called by the proxy once a request head is read (the first thing Pingora does after).
pub fn head_read() {
    let _ = CONN.try_with(|c| c.head_read.set(true));
}

/// The service's app: scopes the per-connection state, then Pingora's own HTTP loop (TLS
/// ALPN, h2c, keep-alive reuse) over [`Guarded`].
pub struct Connections<A> {
    inner: Arc<Guarded<A>>,
}

/// The proxy, each request under the head deadline.
pub struct Guarded<A> {
    proxy: Arc<HttpProxy<A>>,
    header_timeout: Duration,
    keepalive_timeout: Duration,
}

impl<A> Connections<A> {
    pub fn new(proxy: HttpProxy<A>, header_timeout: Duration, keepalive_timeout: Duration) -> Self {
        Connections {
            inner: Arc::new(Guarded {
                proxy: Arc::new(proxy),
                header_timeout,
                keepalive_timeout,
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
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let state = ConnState {
            requests: Cell::new(0),
            head_read: Cell::new(false),
        };
        CONN.scope(state, self.inner.process_new(stream, shutdown))
            .await
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
                self.header_timeout
            } else {
                self.keepalive_timeout
            }
        });
        // HTTP/1.1 pipelining (RFC 9112 9.3.2), served in order as nginx and HAProxy do; by
        // default Pingora answers the first request, closes, and drops the ones behind it.
        if let ServerSession::H1(h1) = &mut session {
            h1.set_pipelining_enabled(true);
        }
        if session.get_keepalive().is_some() {
            // Pingora's per-read idle timeout between requests (whole seconds; 0 would mean
            // "no keep-alive", so at least 1).
            session.set_keepalive(Some(self.keepalive_timeout.as_secs().max(1)));
        }
        let work = self.proxy.process_new_http(session, shutdown);
        match limit {
            Ok(limit) => HeadDeadline {
                work,
                timer: tokio::time::sleep(limit),
            }
            .await
            .unwrap_or_else(|| {
                METRICS
                    .rejections
                    .with_label_values(&["", "header_timeout"])
                    .inc();
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
        self.proxy.server_options()
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
