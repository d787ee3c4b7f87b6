//! Background services that restart after a panic instead of vanishing: one service's bug must
//! not silently stop the health checks, the pool sweep and the limiter clean-up it also runs.

use async_trait::async_trait;
use futures_util::FutureExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

/// How long a failed service waits before it starts again (a panic at every start would
/// otherwise spin).
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Runs `inner`; when its `start` panics, logs it and starts it again after `RESTART_DELAY`,
/// until shutdown. A `start` that returns ends the service, as it would unsupervised.
pub struct Supervised<S> {
    pub name: &'static str,
    pub inner: S,
}

#[async_trait]
impl<S: BackgroundService + Send + Sync> BackgroundService for Supervised<S> {
    async fn start(&self, shutdown: ShutdownWatch) {
        loop {
            let run = AssertUnwindSafe(self.inner.start(shutdown.clone())).catch_unwind();
            let Err(panic) = run.await else {
                return;
            };
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            log::error!("{} failed ({why}); restarting it", self.name);
            tokio::time::sleep(RESTART_DELAY).await;
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Panics on its first two starts, then returns.
    struct Flaky(AtomicUsize);

    #[async_trait]
    impl BackgroundService for Flaky {
        async fn start(&self, _shutdown: ShutdownWatch) {
            if self.0.fetch_add(1, Ordering::SeqCst) < 2 {
                panic!("flaky");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_service_is_started_again() {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let s = Supervised {
            name: "flaky",
            inner: Flaky(AtomicUsize::new(0)),
        };
        s.start(rx).await;
        assert_eq!(s.inner.0.load(Ordering::SeqCst), 3);
    }
}
