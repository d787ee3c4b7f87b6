//! SIGHUP: re-read the file, build a new snapshot next to the live one, swap it in atomically.
//! Any error keeps the old snapshot serving and is logged with every problem found.

use crate::config;
use crate::snapshot::{SharedSnapshot, Snapshot};
use async_trait::async_trait;
use log::{error, info};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

pub struct ReloadService {
    pub path: PathBuf,
    pub snapshot: SharedSnapshot,
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                error!("cannot listen for SIGHUP, reload disabled: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => self.reload().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl ReloadService {
    async fn reload(&self) {
        let path = self.path.clone();
        let live = self.snapshot.load_full();
        // Building resolves peer host names and reads files: keep it off the async workers.
        let built = tokio::task::spawn_blocking(move || {
            let cfg = config::load(&path)?;
            let next = Snapshot::build(&cfg, Some(&live))?;
            next.check_reloadable(&live)?;
            Ok::<_, config::ConfigErrors>(next)
        })
        .await;
        match built {
            Ok(Ok(next)) => {
                self.snapshot.store(Arc::new(next));
                info!("configuration reloaded from {}", self.path.display());
            }
            Ok(Err(errs)) => {
                error!(
                    "reload of {} refused, the old configuration keeps serving:",
                    self.path.display()
                );
                for e in &errs.0 {
                    error!("  {e}");
                }
            }
            Err(e) => error!("reload of {} failed: {e}", self.path.display()),
        }
    }
}
