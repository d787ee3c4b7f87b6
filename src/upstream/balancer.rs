//! An upstream group compiled from its section: one Pingora `LoadBalancer` and one `select()`
//! over round robin, ip_hash, random and least_conn, skipping unhealthy and already-tried peers.

use super::health::{self, HealthSchedule};
use super::peer::Peer;
use crate::config::schema::{Balance, UpstreamSection};
use crate::config::{validate, ConfigErrors};
use futures_util::FutureExt;
use pingora::lb::discovery::Static;
use pingora::lb::selection::{BackendIter, BackendSelection, Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, WrappedX509};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How far a selector walks looking for an acceptable peer (Ketama walks the ring).
const MAX_ITERATIONS: usize = 256;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_RETRIES: usize = 1;
const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    IpHash(LoadBalancer<Consistent>),
    Random(LoadBalancer<Random>),
    /// least_conn walks every peer itself; the load balancer keeps membership and health.
    LeastConn(LoadBalancer<RoundRobin>, AtomicUsize),
}

/// A compiled upstream group. Immutable but for health and in-flight counts, so a reload can
/// keep an unchanged group (and its health state) by sharing the `Arc`.
pub struct UpstreamGroup {
    pub name: String,
    /// The section it was built from: a reload reuses this group when the new one is equal.
    pub source: UpstreamSection,
    pub balance: Balance,
    pub retries: usize,
    /// How long a peer whose connect failed is skipped (0: never).
    pub fail_timeout: Duration,
    pub health: Option<HealthSchedule>,
    balancer: Balancer,
    peers: HashMap<SocketAddr, Arc<Peer>>,
    /// Peers in config order, for /status and tests.
    order: Vec<SocketAddr>,
}

impl UpstreamGroup {
    /// Compiles `section`, pushing every problem under `path` (`upstreams.NAME`).
    pub fn build(
        name: &str,
        section: &UpstreamSection,
        path: &str,
        errs: &mut ConfigErrors,
    ) -> Option<Self> {
        let before = errs.0.len();
        if section.peers.is_empty() {
            errs.push(format!("{path}.peers"), "needs at least one peer");
        }
        let connect_timeout = section
            .connect_timeout
            .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0);
        validate::nonzero(errs, &format!("{path}.connect_timeout"), connect_timeout);
        let read_timeout = section.read_timeout.map_or(DEFAULT_READ_TIMEOUT, |d| d.0);
        validate::nonzero(errs, &format!("{path}.read_timeout"), read_timeout);
        let tls = section.tls.as_ref();
        let sni = tls.and_then(|t| t.sni.clone()).unwrap_or_default();
        let ca = tls
            .and_then(|t| t.ca.as_deref())
            .and_then(|file| load_ca(file, &format!("{path}.tls.ca"), errs));

        let mut backends = BTreeSet::new();
        let mut peers = HashMap::new();
        let mut order = Vec::new();
        for (i, spec) in section.peers.iter().enumerate() {
            let ppath = format!("{path}.peers[{i}]");
            let weight =
                validate::at_least_one(errs, &format!("{ppath}.weight"), spec.weight.unwrap_or(1));
            let Some(addr) = validate::peer_addr(errs, &ppath, &spec.address) else {
                continue;
            };
            if peers.contains_key(&addr) {
                errs.push(ppath, format!("duplicate peer {addr}"));
                continue;
            }
            let mut template = HttpPeer::new(addr, tls.is_some(), sni.clone());
            template.options.connection_timeout = Some(connect_timeout);
            template.options.read_timeout = Some(read_timeout);
            template.options.idle_timeout = Some(Duration::from_secs(60));
            if let Some(t) = tls {
                template.options.verify_cert = t.verify;
                template.options.verify_hostname = t.verify;
                template.options.ca = ca.clone();
            }
            let peer = Peer::new(addr, weight.max(1), template);
            backends.insert(peer.backend.clone());
            peers.insert(addr, Arc::new(peer));
            order.push(addr);
        }
        let health = section.health_check.as_ref().and_then(|hc| {
            health::build(
                name,
                hc,
                tls.is_some(),
                &format!("{path}.health_check"),
                errs,
            )
        });
        if errs.0.len() > before {
            return None;
        }

        let mut view = Backends::new(Static::new(backends));
        let schedule = health.map(|(check, schedule)| {
            view.set_health_check(check);
            schedule
        });
        let balancer = match section.balance {
            Balance::RoundRobin => Balancer::RoundRobin(load_balancer(view)),
            Balance::IpHash => Balancer::IpHash(load_balancer(view)),
            Balance::Random => Balancer::Random(load_balancer(view)),
            Balance::LeastConn => Balancer::LeastConn(load_balancer(view), AtomicUsize::new(0)),
        };
        Some(UpstreamGroup {
            name: name.to_owned(),
            source: section.clone(),
            balance: section.balance,
            retries: section.retries.unwrap_or(DEFAULT_RETRIES),
            fail_timeout: section.fail_timeout.map_or(DEFAULT_FAIL_TIMEOUT, |d| d.0),
            health: schedule,
            balancer,
            peers,
            order,
        })
    }

    /// Picks a healthy peer not in `exclude` (peers this request already failed to reach).
    /// `key` is the client IP's bytes, used by ip_hash only. Peers whose connect failed within
    /// `fail_timeout` are skipped unless nothing else is left. `None`: no eligible peer.
    pub fn select(&self, key: &[u8], exclude: &[SocketAddr]) -> Option<&Arc<Peer>> {
        self.select_pass(key, exclude, true)
            .or_else(|| self.select_pass(key, exclude, false))
    }

    fn select_pass(
        &self,
        key: &[u8],
        exclude: &[SocketAddr],
        skip_failed: bool,
    ) -> Option<&Arc<Peer>> {
        let eligible = |peer: &Peer| {
            let out = exclude.contains(&peer.addr) || (skip_failed && peer.recently_failed());
            !out
        };
        let accept = |b: &Backend, healthy: bool| {
            healthy
                && b.addr
                    .as_inet()
                    .and_then(|a| self.peers.get(a))
                    .is_some_and(|p| eligible(p))
        };
        let backend = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_ITERATIONS, accept),
            Balancer::IpHash(lb) => lb.select_with(key, MAX_ITERATIONS, accept),
            Balancer::Random(lb) => lb.select_with(key, MAX_ITERATIONS, accept),
            Balancer::LeastConn(lb, cursor) => return self.least_conn(lb, cursor, eligible),
        }?;
        self.peers.get(backend.addr.as_inet()?)
    }

    /// The eligible peer with the fewest in-flight requests per unit of weight; ties go round
    /// robin from a moving start so equal peers share the load.
    fn least_conn(
        &self,
        lb: &LoadBalancer<RoundRobin>,
        cursor: &AtomicUsize,
        eligible: impl Fn(&Peer) -> bool,
    ) -> Option<&Arc<Peer>> {
        let n = self.order.len();
        let start = cursor.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<&Arc<Peer>> = None;
        for i in 0..n {
            let peer = &self.peers[&self.order[(start + i) % n]];
            if !eligible(peer) || !self.is_healthy_in(lb.backends(), peer) {
                continue;
            }
            // a/wa < b/wb  <=>  a*wb < b*wa, without division.
            let better =
                best.is_none_or(|b| peer.inflight() * b.weight < b.inflight() * peer.weight);
            if better {
                best = Some(peer);
            }
        }
        best
    }

    fn is_healthy_in(&self, view: &Backends, peer: &Peer) -> bool {
        view.ready(&peer.backend)
    }

    fn backends(&self) -> &Backends {
        match &self.balancer {
            Balancer::RoundRobin(lb) | Balancer::LeastConn(lb, _) => lb.backends(),
            Balancer::IpHash(lb) => lb.backends(),
            Balancer::Random(lb) => lb.backends(),
        }
    }

    /// Peers in config order with their current health.
    pub fn peers(&self) -> impl Iterator<Item = (&Arc<Peer>, bool)> + '_ {
        let view = self.backends();
        self.order.iter().map(move |a| {
            let p = &self.peers[a];
            (p, self.is_healthy_in(view, p))
        })
    }

    /// One active health-check pass over this group's peers (all in parallel).
    pub async fn run_health_check(&self) {
        self.backends().run_health_check(true).await;
    }
}

/// The CA certificates of a PEM file, as Pingora's connector takes them.
fn load_ca(file: &str, path: &str, errs: &mut ConfigErrors) -> Option<Arc<[WrappedX509]>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let certs: Result<Vec<CertificateDer>, _> = match CertificateDer::pem_file_iter(file) {
        Ok(iter) => iter.collect(),
        Err(e) => {
            errs.push(
                path,
                format!("cannot read {file}: {}", crate::config::os_message(&e)),
            );
            return None;
        }
    };
    let certs = match certs {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => {
            errs.push(path, format!("{file} holds no certificate"));
            return None;
        }
        Err(e) => {
            errs.push(path, format!("{file}: {e}"));
            return None;
        }
    };
    let mut wrapped = Vec::with_capacity(certs.len());
    for der in certs {
        if x509_parser::parse_x509_certificate(der.as_ref()).is_err() {
            errs.push(
                path,
                format!("{file} holds a certificate that does not parse"),
            );
            return None;
        }
        wrapped.push(WrappedX509::new(der.to_vec(), parse_x509));
    }
    Some(Arc::from(wrapped.into_boxed_slice()))
}

fn load_balancer<S>(view: Backends) -> LoadBalancer<S>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let lb = LoadBalancer::from_backends(view);
    // Static discovery never waits, so the first update completes in this poll.
    lb.update()
        .now_or_never()
        .expect("static discovery is ready at once")
        .expect("static discovery does not fail");
    lb
}
