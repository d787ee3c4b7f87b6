//! Draining: when a graceful shutdown starts (SIGTERM, or SIGQUIT once the sockets are handed
//! over), open WebSockets may go on for `server.grace_period`; at its end each gets a 1001
//! close frame. And the process exits as soon as nothing is open, instead of sleeping out the
//! rest of the grace period as Pingora does.

use crate::metrics::METRICS;
use async_trait::async_trait;
use log::info;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

/// Set when a graceful shutdown starts; `/healthz` answers 503 from then on.
pub static DRAINING: AtomicBool = AtomicBool::new(false);

/// The drain deadline (the instant open tunnels are closed with 1001), and the wakers of the
/// tunnels waiting for it. A tunnel registers once, under the same lock that publishes the
/// deadline, so none can miss it; it then checks `DRAINING` on each poll without the lock.
/// An idle tunnel costs one slot here (a waker) instead of a watch future of its own.
struct Waiters {
    deadline: Option<Instant>,
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

static WAITERS: Mutex<Waiters> = Mutex::new(Waiters {
    deadline: None,
    wakers: Vec::new(),
    free: Vec::new(),
});

fn waiters() -> std::sync::MutexGuard<'static, Waiters> {
    WAITERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Publishes the deadline and wakes every registered tunnel.
fn start(deadline: Instant) {
    let wakers: Vec<Waker> = {
        let mut w = waiters();
        w.deadline = Some(deadline);
        DRAINING.store(true, Ordering::SeqCst);
        w.wakers.iter_mut().filter_map(Option::take).collect()
    };
    wakers.into_iter().for_each(Waker::wake);
}

/// A tunnel's registration: `None` until its first poll.
#[derive(Debug, Default)]
pub struct DrainWatch {
    slot: Option<usize>,
}

impl DrainWatch {
    /// The drain deadline once draining started; before that, makes sure this task is woken
    /// when it does. The task must be the tunnel's own (its waker never changes), which is
    /// why the waker is stored only once.
    pub fn poll(&mut self, cx: &Context<'_>) -> Option<Instant> {
        if self.slot.is_some() && !DRAINING.load(Ordering::Acquire) {
            return None;
        }
        let mut w = waiters();
        if let Some(deadline) = w.deadline {
            return Some(deadline);
        }
        let waker = Some(cx.waker().clone());
        self.slot = Some(match w.free.pop() {
            Some(i) => {
                w.wakers[i] = waker;
                i
            }
            None => {
                w.wakers.push(waker);
                w.wakers.len() - 1
            }
        });
        None
    }
}

impl Drop for DrainWatch {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut w = waiters();
            w.wakers[i] = None;
            w.free.push(i);
        }
    }
}

/// How long nothing may be in flight before the drained process exits on its own.
const QUIET: Duration = Duration::from_millis(1000);

pub struct DrainService {
    pub grace_period: Duration,
    /// Runs just before an early exit (the pid file).
    pub before_exit: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

#[async_trait]
impl BackgroundService for DrainService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        let deadline = Instant::now() + self.grace_period;
        start(deadline);
        info!("draining: open WebSockets get a 1001 close in {:?}; exiting as soon as nothing is open", self.grace_period);
        // Pingora would sleep out the whole grace period; leave as soon as nothing is open
        // (for a short quiet spell, so a connection accepted just before the listener closed
        // gets its request read and counted).
        let mut quiet_since: Option<Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if METRICS.requests_in_flight.get() > 0 {
                quiet_since = None;
                continue;
            }
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= QUIET {
                info!("drained: nothing open, exiting");
                if let Some(f) = self
                    .before_exit
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    f();
                }
                std::process::exit(0);
            }
        }
    }
}
