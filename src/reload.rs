//! SIGHUP: re-read the file, build a new snapshot next to the live one, swap it in atomically.
//! Any error keeps the old snapshot serving and is logged with every problem found.

use crate::config;
use crate::metrics::METRICS;
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::tls::CertStore;
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
    /// Each TLS listener's certificate resolver, by listener index: a reload renews them.
    pub cert_stores: Vec<(usize, Arc<CertStore>)>,
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
            let loaded = config::load(&path)?;
            let next = Snapshot::build(&loaded, Some(&live))?;
            next.check_reloadable(&live)?;
            Ok::<_, config::ConfigErrors>((next, live))
        })
        .await;
        match built {
            Ok(Ok((next, live))) => {
                // A new or changed group resolves its names and probes its peers once before it
                // serves, so it starts with its peers and a peer that is down does not get the
                // first requests after the swap.
                let rounds = next
                    .new_groups(&live)
                    .map(|g| g.prime(live.upstreams.get(&g.name).map(|o| &**o)));
                futures_util::future::join_all(rounds).await;
                let probes = next
                    .new_groups(&live)
                    .filter(|g| g.health.is_some())
                    .map(|g| g.run_health_check());
                futures_util::future::join_all(probes).await;
                let sha256 = next.sha256.clone();
                for (i, store) in &self.cert_stores {
                    if let Some((_, certs)) = &next.listeners[*i].tls {
                        store.store(Arc::clone(certs));
                    }
                }
                self.snapshot.store(Arc::new(next));
                METRICS.reloads.with_label_values(&["applied"]).inc();
                info!(
                    "configuration reloaded from {} (sha256 {sha256})",
                    self.path.display()
                );
            }
            Ok(Err(errs)) => {
                METRICS.reloads.with_label_values(&["refused"]).inc();
                error!(
                    "reload of {} refused, the old configuration keeps serving:",
                    self.path.display()
                );
                for e in &errs.0 {
                    error!("  {e}");
                }
            }
            Err(e) => {
                METRICS.reloads.with_label_values(&["refused"]).inc();
                error!("reload of {} failed: {e}", self.path.display());
            }
        }
    }
}
