//! Idle upstream connections kept for the requests portico forwards itself.
//!
//! Pingora's pool (pingora-pool) watches every idle connection with a task of its own, so each
//! request pays for a task spawned and woken, a mutex, an LRU entry, a oneshot channel and, on
//! reuse, a `getpeername` to check the descriptor. Here an idle connection is a `Stream` in a
//! list per peer, taken newest first (the least likely to have met the peer's own idle
//! timeout). One that the peer closed, or that holds bytes nobody asked for, has become
//! readable: taking it notices that without a syscall and drops it. Connections past their
//! idle timeout are dropped when their list is touched and by `sweep` (run by the health-check
//! service), so a quiet peer's sockets do not wait for the next request to be closed.

use pingora::protocols::Stream;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, ReadBuf};

/// The pool of the running process. Its size is `server.upstream_keepalive_pool_size`.
pub static IDLE: LazyLock<Pool> = LazyLock::new(|| Pool::new(DEFAULT_CAPACITY));

/// Pingora's default pool size, used for both pools unless the config says otherwise.
pub const DEFAULT_CAPACITY: usize = 128;

struct Idle {
    stream: Stream,
    /// When it was put: the oldest of all makes room in a full pool.
    since: Instant,
    until: Instant,
}

pub struct Pool {
    lists: Mutex<HashMap<u64, Vec<Idle>>>,
    /// Idle connections across all peers at most.
    capacity: AtomicUsize,
    len: AtomicUsize,
}

impl Pool {
    pub fn new(capacity: usize) -> Self {
        Pool {
            lists: Mutex::new(HashMap::new()),
            capacity: AtomicUsize::new(capacity),
            len: AtomicUsize::new(0),
        }
    }

    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    /// Idle connections held now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The newest idle connection to the peer `key` (Pingora's `reuse_hash`) still open and
    /// unused by the peer; the closed or expired ones met on the way are dropped.
    pub fn take(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        let list = lists.get_mut(&key)?;
        while let Some(mut idle) = list.pop() {
            self.len.fetch_sub(1, Ordering::Relaxed);
            if idle.until > now && quiet(&mut idle.stream) {
                return Some(idle.stream);
            }
        }
        None
    }

    /// Keeps a connection whose exchange ended cleanly, for `idle_timeout`. When the pool is
    /// full the least recently put connection, of any peer, makes room (as in Pingora's LRU
    /// pool): after a reload moves traffic to new peers, their connections replace the old
    /// peers' instead of being closed after every request.
    pub fn put(&self, key: u64, mut stream: Stream, idle_timeout: Duration) {
        if !quiet(&mut stream) {
            return;
        }
        let capacity = self.capacity.load(Ordering::Relaxed);
        if capacity == 0 {
            return;
        }
        let now = Instant::now();
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = lists.get_mut(&key) {
            let expired = list.iter().take_while(|i| i.until <= now).count();
            list.drain(..expired);
            self.len.fetch_sub(expired, Ordering::Relaxed);
        }
        if self.len.load(Ordering::Relaxed) >= capacity {
            // Each list is in the order its connections were put: the oldest is a first one.
            let oldest = lists
                .iter()
                .filter_map(|(k, list)| list.first().map(|i| (i.since, *k)))
                .min();
            if let Some((_, k)) = oldest {
                if let Some(list) = lists.get_mut(&k) {
                    list.remove(0);
                    self.len.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        lists.entry(key).or_default().push(Idle {
            stream,
            since: now,
            until: now + idle_timeout,
        });
        self.len.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes every connection past its idle timeout (lists are in the order they were put).
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        lists.retain(|_, list| {
            let expired = list.iter().take_while(|i| i.until <= now).count();
            list.drain(..expired);
            self.len.fetch_sub(expired, Ordering::Relaxed);
            !list.is_empty()
        });
    }
}

/// Whether the peer has sent nothing on an idle connection: no EOF, no error, no bytes. The
/// socket's readiness is already known to the reactor, so this costs no syscall when quiet.
fn quiet(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let read = std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, &mut buf));
    // Unconstrained: an exhausted task budget would answer Pending for a closed socket.
    let mut read = std::pin::pin!(tokio::task::unconstrained(read));
    let mut cx = Context::from_waker(Waker::noop());
    read.as_mut().poll(&mut cx).is_pending()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair on loopback: the pooled side (as Pingora's Stream) and the peer's side.
    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap());
        let (ours, theirs) = tokio::join!(ours, listener.accept());
        let ours = pingora::protocols::l4::stream::Stream::from(ours.unwrap());
        (Box::new(ours), theirs.unwrap().0)
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn the_newest_connection_is_taken_first_and_only_by_its_peer() {
        let pool = Pool::new(8);
        let (a, _pa) = pair().await;
        let (b, _pb) = pair().await;
        let b_port = b.get_socket_digest().and_then(|d| d.local_addr().cloned());
        pool.put(1, a, MINUTE);
        pool.put(1, b, MINUTE);
        assert!(pool.take(2).is_none());
        let taken = pool.take(1).unwrap();
        assert_eq!(
            taken
                .get_socket_digest()
                .and_then(|d| d.local_addr().cloned()),
            b_port
        );
        assert_eq!(pool.len(), 1);
    }

    /// Regression: a pool filled by peer 1 closed every connection to peer 2 after its request
    /// (five GETs to a new peer opened five connections). The oldest of any peer makes room.
    #[tokio::test]
    async fn a_full_pool_makes_room_with_the_oldest_connection_of_any_peer() {
        let pool = Pool::new(2);
        let mut peers = Vec::new();
        for key in [1, 1, 2, 2, 2] {
            let (s, p) = pair().await;
            peers.push(p);
            pool.put(key, s, MINUTE);
        }
        // 1, 1 fill it; each connection for 2 replaces the oldest (1's twice, then 2's first).
        assert_eq!(pool.len(), 2);
        assert!(pool.take(1).is_none());
        assert!(pool.take(2).is_some() && pool.take(2).is_some());
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn expired_connections_are_never_taken_and_are_swept() {
        let pool = Pool::new(8);
        let (a, _pa) = pair().await;
        let (b, _pb) = pair().await;
        pool.put(1, a, Duration::ZERO);
        pool.put(2, b, Duration::ZERO);
        assert!(pool.take(1).is_none());
        assert_eq!(pool.len(), 1);
        pool.sweep();
        assert!(pool.is_empty());
    }

    /// A peer that closed an idle connection, or wrote to it unasked: it is dropped when
    /// met, once the reactor has seen the event (a bounded number of turns, no sleep).
    #[tokio::test]
    async fn a_connection_the_peer_closed_or_wrote_on_is_dropped() {
        for wrote in [false, true] {
            let pool = Pool::new(8);
            let (a, mut peer) = pair().await;
            pool.put(1, a, MINUTE);
            if wrote {
                peer.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
                    .await
                    .unwrap();
            } else {
                drop(peer);
            }
            let mut dropped = false;
            for _ in 0..10_000 {
                tokio::task::yield_now().await;
                match pool.take(1) {
                    Some(s) => pool.put(1, s, MINUTE),
                    None => {
                        dropped = true;
                        break;
                    }
                }
            }
            assert!(dropped, "wrote: {wrote}");
        }
    }
}
