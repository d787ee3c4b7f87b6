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
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// `Some(deadline)` once draining: the instant open tunnels are closed with 1001.
static DRAIN_AT: LazyLock<watch::Sender<Option<Instant>>> =
    LazyLock::new(|| watch::channel(None).0);

/// Set when a graceful shutdown starts; `/healthz` answers 503 from then on.
pub static DRAINING: AtomicBool = AtomicBool::new(false);

/// What a tunnel watches to learn when to close.
pub fn watch() -> watch::Receiver<Option<Instant>> {
    DRAIN_AT.subscribe()
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
        DRAINING.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + self.grace_period;
        DRAIN_AT.send_replace(Some(deadline));
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
