//! Active health checks: the Pingora check built from a group's `health_check` section, and the
//! one background service that runs every group's checks and DNS rounds at their intervals.

use super::balancer::Members;
use super::schedule::Schedule;
use super::UpstreamGroup;
use crate::config::schema::{HealthCheckSection, HealthCheckType};
use crate::config::{validate, ConfigErrors};
use crate::metrics::METRICS;
use crate::snapshot::SharedSnapshot;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use log::debug;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use pingora::prelude::*;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_HEALTHY: usize = 2;
const DEFAULT_UNHEALTHY: usize = 3;
/// The longest the service sleeps before looking at the (possibly reloaded) config again.
const MAX_TICK: Duration = Duration::from_millis(500);

/// Compiles a `health_check` section into a Pingora check (counted in the metrics under
/// `upstream`) and its schedule.
pub fn build(
    upstream: &str,
    members: &Arc<ArcSwap<Members>>,
    hc: &HealthCheckSection,
    tls: bool,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<(Box<dyn HealthCheck + Send + Sync>, Schedule)> {
    let before = errs.0.len();
    let interval = validate::nonzero(
        errs,
        &format!("{path}.interval"),
        hc.interval.map_or(DEFAULT_INTERVAL, |d| d.0),
    );
    let timeout = validate::nonzero(
        errs,
        &format!("{path}.timeout"),
        hc.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0),
    );
    let healthy = validate::at_least_one(
        errs,
        &format!("{path}.healthy_threshold"),
        hc.healthy_threshold.unwrap_or(DEFAULT_HEALTHY),
    );
    let unhealthy = validate::at_least_one(
        errs,
        &format!("{path}.unhealthy_threshold"),
        hc.unhealthy_threshold.unwrap_or(DEFAULT_UNHEALTHY),
    );
    let check: Box<dyn HealthCheck + Send + Sync> = match hc.kind {
        HealthCheckType::Tcp => {
            if hc.path.is_some() {
                errs.push(format!("{path}.path"), "only for type: http");
            }
            let mut c = TcpHealthCheck::new();
            c.consecutive_success = healthy;
            c.consecutive_failure = unhealthy;
            c.peer_template.options.connection_timeout = Some(timeout);
            c
        }
        HealthCheckType::Http => {
            let probe_path = hc.path.as_deref().unwrap_or("/");
            validate::path_prefix(errs, &format!("{path}.path"), probe_path);
            let host = hc.host.as_deref().unwrap_or("localhost");
            validate::header_value(errs, &format!("{path}.host"), host);
            if errs.0.len() > before {
                return None;
            }
            let mut c = HttpHealthCheck::new(host, tls);
            c.consecutive_success = healthy;
            c.consecutive_failure = unhealthy;
            c.peer_template.options.connection_timeout = Some(timeout);
            c.peer_template.options.read_timeout = Some(timeout);
            c.req.set_uri(probe_path.parse().ok()?);
            // Healthy on any 2xx, not only 200 as Pingora's default validator says.
            c.validator = Some(Box::new(|resp| {
                if resp.status.is_success() {
                    Ok(())
                } else {
                    Error::e_explain(
                        ErrorType::CustomCode("non-2xx health check", resp.status.as_u16()),
                        "during http health check",
                    )
                }
            }));
            Box::new(c)
        }
    };
    if errs.0.len() > before {
        return None;
    }
    let counted = Counted {
        inner: check,
        upstream: upstream.to_owned(),
        members: Arc::clone(members),
    };
    Some((Box::new(counted), Schedule::new(interval)))
}

/// A check that counts its probes by result for `portico_health_checks_total`, and lets a
/// peer that passes one back in at once, even inside its `fail_timeout` after a failed connect
/// (Envoy un-ejects the same way): a restarted peer serves as soon as it answers.
struct Counted {
    inner: Box<dyn HealthCheck + Send + Sync>,
    upstream: String,
    members: Arc<ArcSwap<Members>>,
}

#[async_trait]
impl HealthCheck for Counted {
    async fn check(&self, target: &Backend) -> Result<()> {
        let result = self.inner.check(target).await;
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        if let (Ok(()), Some(addr)) = (&result, target.addr.as_inet()) {
            if let Some(peer) = self.members.load().get(addr) {
                peer.clear_failed();
            }
        }
        METRICS
            .health_checks
            .with_label_values(&[self.upstream.as_str(), outcome])
            .inc();
        result
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.inner.health_status_change(target, healthy).await;
    }

    fn backend_summary(&self, target: &Backend) -> String {
        self.inner.backend_summary(target)
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}

/// Runs the health checks and DNS rounds of whichever groups the current snapshot holds (and,
/// on the same tick, lets the rate limiters forget clients that went quiet); groups come and go
/// with reloads, so it reads the snapshot on every tick instead of owning a fixed list.
pub struct HealthService {
    pub snapshot: SharedSnapshot,
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            super::pool::IDLE.sweep();
            let wait = self.tick();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// A group's background jobs.
#[derive(Clone, Copy)]
enum Job {
    HealthCheck,
    Resolve,
}

impl Job {
    fn schedule(self, group: &UpstreamGroup) -> Option<&Schedule> {
        match self {
            Job::HealthCheck => group.health.as_ref(),
            Job::Resolve => group.discovery.as_ref().map(|d| &d.schedule),
        }
    }
}

/// One group's job in flight; dropping it (done, or a panic) lets the next one start, so one
/// failed pass cannot stop the group's checks or rounds for good.
struct Running(Arc<UpstreamGroup>, Job);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.1.schedule(&self.0) {
            s.release();
        }
    }
}

impl HealthService {
    /// Starts the jobs that are due and returns how long to sleep until the next one.
    fn tick(&self) -> Duration {
        let snapshot = self.snapshot.load_full();
        let now = Instant::now();
        for limits in snapshot.routes.iter().filter_map(|r| r.limits.as_ref()) {
            limits.forget_idle_clients();
        }
        let mut wait = MAX_TICK;
        for group in snapshot.upstreams.values() {
            for job in [Job::Resolve, Job::HealthCheck] {
                let Some(schedule) = job.schedule(group) else {
                    continue;
                };
                if schedule.claim(now) {
                    let running = Running(Arc::clone(group), job);
                    tokio::spawn(async move {
                        let group = &running.0;
                        match running.1 {
                            Job::HealthCheck => {
                                debug!("health check pass for upstream {}", group.name);
                                group.run_health_check().await;
                            }
                            Job::Resolve => group.rediscover().await,
                        }
                    });
                }
                wait = wait.min(schedule.wait(now));
            }
        }
        wait.max(Duration::from_millis(10))
    }
}
