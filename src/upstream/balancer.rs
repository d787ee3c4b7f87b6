//! An upstream group compiled from its section: one Pingora `LoadBalancer` and one `select()`
//! over round robin, ip_hash, hash, random and least_conn, skipping unhealthy and
//! already-tried peers. Its members are fixed by the file, or follow DNS (`resolve`).

use super::discovery::{Discovery, Name};
use super::health;
use super::peer::Peer;
use super::schedule::Schedule;
use crate::config::schema::{Balance, HashKey, SameSite, SecureFlag, UpstreamSection};
use crate::config::{validate, ConfigErrors};
use crate::headers::cookies;
use crate::metrics::METRICS;
use crate::request::view::{query_value, View};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures_util::FutureExt;
use http::HeaderName;
use log::info;
use pingora::http::RequestHeader;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::selection::{BackendIter, BackendSelection, Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::upstreams::peer::{HttpPeer, PeerOptions};
use pingora::utils::tls::{parse_x509, WrappedX509};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How far a selector walks looking for an acceptable peer (Ketama walks the ring).
const MAX_ITERATIONS: usize = 256;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_RETRIES: usize = 1;
const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    /// ip_hash, and hash (on its key, else the client IP).
    IpHash(LoadBalancer<Consistent>),
    Random(LoadBalancer<Random>),
    /// least_conn walks every peer itself; the load balancer keeps membership and health.
    LeastConn(LoadBalancer<RoundRobin>, AtomicUsize),
}

/// The peers a group has now: replaced as a whole when DNS answers change.
pub struct Members {
    peers: HashMap<SocketAddr, Arc<Peer>>,
    /// Config order (a name's addresses in its place, sorted), for least_conn and /status.
    order: Vec<SocketAddr>,
    /// Sticky ids.
    by_id: HashMap<Box<str>, SocketAddr>,
}

impl Members {
    fn new(peers: Vec<Arc<Peer>>) -> Self {
        Members {
            order: peers.iter().map(|p| p.addr).collect(),
            by_id: peers.iter().map(|p| (p.id.clone(), p.addr)).collect(),
            peers: peers.into_iter().map(|p| (p.addr, p)).collect(),
        }
    }

    pub fn get(&self, addr: &SocketAddr) -> Option<&Arc<Peer>> {
        self.peers.get(addr)
    }
}

/// Pingora's service discovery over a group's members: changing them is one `update()`, which
/// keeps the health of the backends that stay.
struct Membership(Arc<ArcSwap<Members>>);

#[async_trait]
impl ServiceDiscovery for Membership {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let members = self.0.load();
        let backends = members.peers.values().map(|p| p.backend.clone()).collect();
        Ok((backends, HashMap::new()))
    }
}

/// What every peer of a group connects with (compiled once: picking a peer parses nothing).
struct Template {
    tls: bool,
    sni: String,
    options: PeerOptions,
}

impl Template {
    fn peer(&self, group: &str, addr: SocketAddr, weight: usize) -> Arc<Peer> {
        let mut template = HttpPeer::new(addr, self.tls, self.sni.clone());
        template.options = self.options.clone();
        Arc::new(Peer::new(group, addr, weight, template))
    }
}

/// A compiled upstream group. Immutable but for its members (under `resolve`), health and
/// in-flight counts, so a reload can keep an unchanged group (and its state) by sharing the `Arc`.
pub struct UpstreamGroup {
    pub name: String,
    /// The section it was built from: a reload reuses this group when the new one is equal.
    pub source: UpstreamSection,
    pub balance: Balance,
    pub retries: usize,
    /// How long a peer whose connect failed is skipped (0: never).
    pub fail_timeout: Duration,
    pub health: Option<Schedule>,
    /// What `balance: hash` hashes.
    pub hash_key: Option<KeySource>,
    pub sticky: Option<Sticky>,
    /// The names re-resolved under `resolve`.
    pub discovery: Option<Discovery>,
    balancer: Balancer,
    members: Arc<ArcSwap<Members>>,
    template: Template,
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
        let ca = tls
            .and_then(|t| t.ca.as_deref())
            .and_then(|file| load_ca(file, &format!("{path}.tls.ca"), errs));
        let mut options = HttpPeer::new("0.0.0.0:0", false, String::new()).options;
        options.connection_timeout = Some(connect_timeout);
        options.read_timeout = Some(read_timeout);
        options.idle_timeout = Some(Duration::from_secs(60));
        if let Some(t) = tls {
            options.verify_cert = t.verify;
            options.verify_hostname = t.verify;
            options.ca = ca;
        }
        let template = Template {
            tls: tls.is_some(),
            sni: tls.and_then(|t| t.sni.clone()).unwrap_or_default(),
            options,
        };

        // Under `resolve` a host name is looked up later, again and again; else now, once.
        let mut fixed: Vec<(SocketAddr, usize)> = Vec::new();
        let mut names = Vec::new();
        for (i, spec) in section.peers.iter().enumerate() {
            let ppath = format!("{path}.peers[{i}]");
            let weight =
                validate::at_least_one(errs, &format!("{ppath}.weight"), spec.weight.unwrap_or(1));
            if section.resolve.is_some() && spec.address.parse::<SocketAddr>().is_err() {
                if let Some((host, port)) = validate::peer_name(errs, &ppath, &spec.address) {
                    names.push(Name { host, port, weight });
                }
                continue;
            }
            let Some(addr) = validate::peer_addr(errs, &ppath, &spec.address) else {
                continue;
            };
            if fixed.iter().any(|(a, _)| *a == addr) {
                errs.push(ppath, format!("duplicate peer {addr}"));
                continue;
            }
            fixed.push((addr, weight));
        }
        let discovery = section.resolve.as_ref().and_then(|r| {
            Discovery::build(r, names, fixed.clone(), &format!("{path}.resolve"), errs)
        });
        let peers = fixed
            .iter()
            .map(|&(addr, weight)| template.peer(name, addr, weight))
            .collect();
        let members = Arc::new(ArcSwap::from_pointee(Members::new(peers)));
        let hash_key = hash_key(section, path, errs);
        let sticky = section
            .sticky
            .as_ref()
            .and_then(|s| Sticky::build(s, &format!("{path}.sticky"), errs));
        let health = section.health_check.as_ref().and_then(|hc| {
            health::build(
                name,
                &members,
                hc,
                tls.is_some(),
                &format!("{path}.health_check"),
                errs,
            )
        });
        if errs.0.len() > before {
            return None;
        }

        let mut view = Backends::new(Box::new(Membership(Arc::clone(&members))));
        let schedule = health.map(|(check, schedule)| {
            view.set_health_check(check);
            schedule
        });
        let balancer = match section.balance {
            Balance::RoundRobin => Balancer::RoundRobin(load_balancer(view)),
            Balance::IpHash | Balance::Hash => Balancer::IpHash(load_balancer(view)),
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
            hash_key,
            sticky,
            discovery,
            balancer,
            members,
            template,
        })
    }

    /// `addr` when it is a peer of this group that is healthy and not kept out after a failed
    /// connect: where a sticky cookie may send a request.
    pub fn usable(&self, addr: SocketAddr) -> Option<Arc<Peer>> {
        let members = self.members.load();
        let peer = members.get(&addr)?;
        (open_to(peer, &[], true) && self.is_healthy(peer)).then(|| Arc::clone(peer))
    }

    /// The peer the request's sticky cookie names, if it names one of this group's (a forged or
    /// stale id names none).
    pub fn pinned(&self, req: &RequestHeader) -> Option<SocketAddr> {
        let sticky = self.sticky.as_ref()?;
        let id = std::str::from_utf8(cookies(&req.headers, &sticky.cookie).next()?).ok()?;
        self.members.load().by_id.get(id).copied()
    }

    /// The bytes `balance: hash` hashes for this request; `None`: the client IP's.
    pub fn request_key(&self, req: &RequestHeader, view: &View) -> Option<Box<[u8]>> {
        let value: &[u8] = match self.hash_key.as_ref()? {
            KeySource::Header(name) => req.headers.get(name)?.as_bytes(),
            KeySource::Cookie(name) => cookies(&req.headers, name).next()?,
            KeySource::Query(name) => query_value(view.query.as_deref()?, name)?.as_bytes(),
            KeySource::Path => view.path.as_bytes(),
            KeySource::Ip => return None,
        };
        (!value.is_empty()).then(|| value.into())
    }

    /// Picks a healthy peer not in `exclude` (peers this request already failed to reach).
    /// `key` is the client IP's bytes, used by ip_hash only. Peers whose connect failed within
    /// `fail_timeout` are skipped unless nothing else is left. `None`: no eligible peer.
    pub fn select(&self, key: &[u8], exclude: &[SocketAddr]) -> Option<Arc<Peer>> {
        let members = self.members.load();
        self.select_pass(&members, key, exclude, true)
            .or_else(|| self.select_pass(&members, key, exclude, false))
            .cloned()
    }

    fn select_pass<'m>(
        &self,
        members: &'m Members,
        key: &[u8],
        exclude: &[SocketAddr],
        skip_failed: bool,
    ) -> Option<&'m Arc<Peer>> {
        let eligible = |peer: &Peer| open_to(peer, exclude, skip_failed);
        // A backend the selector still holds but the members no longer do (DNS just removed
        // it) is not accepted: the walk goes on.
        let accept = |b: &Backend, healthy: bool| {
            healthy
                && b.addr
                    .as_inet()
                    .and_then(|a| members.get(a))
                    .is_some_and(|p| eligible(p))
        };
        let backend = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_ITERATIONS, accept),
            Balancer::IpHash(lb) => lb.select_with(key, MAX_ITERATIONS, accept),
            Balancer::Random(lb) => lb.select_with(key, MAX_ITERATIONS, accept),
            Balancer::LeastConn(_, cursor) => return self.least_conn(members, cursor, eligible),
        }?;
        members.get(backend.addr.as_inet()?)
    }

    /// The eligible peer with the fewest in-flight requests per unit of weight; ties go round
    /// robin from a moving start so equal peers share the load.
    fn least_conn<'m>(
        &self,
        members: &'m Members,
        cursor: &AtomicUsize,
        eligible: impl Fn(&Peer) -> bool,
    ) -> Option<&'m Arc<Peer>> {
        let n = members.order.len();
        let start = cursor.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<&Arc<Peer>> = None;
        for i in 0..n {
            let peer = &members.peers[&members.order[(start + i) % n]];
            if !eligible(peer) || !self.is_healthy(peer) {
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

    fn is_healthy(&self, peer: &Peer) -> bool {
        self.backends().ready(&peer.backend)
    }

    fn backends(&self) -> &Backends {
        match &self.balancer {
            Balancer::RoundRobin(lb) | Balancer::LeastConn(lb, _) => lb.backends(),
            Balancer::IpHash(lb) => lb.backends(),
            Balancer::Random(lb) => lb.backends(),
        }
    }

    /// Peers in order with their current health.
    pub fn peers(&self) -> Vec<(Arc<Peer>, bool)> {
        let members = self.members.load();
        members
            .order
            .iter()
            .map(|a| {
                let p = &members.peers[a];
                (Arc::clone(p), self.is_healthy(p))
            })
            .collect()
    }

    /// One active health-check pass over this group's peers (all in parallel).
    pub async fn run_health_check(&self) {
        self.backends().run_health_check(true).await;
    }

    /// One DNS round under `resolve`: every name looked up, the members made to follow, the
    /// next round scheduled (sooner when an answer expires first).
    pub async fn rediscover(&self) {
        let Some(d) = &self.discovery else {
            return;
        };
        let expires = d.resolve(&self.name).await;
        self.follow(d);
        d.schedule.due_by(d.next_round(Instant::now(), expires));
    }

    /// The first DNS round of a group under `resolve`, before it serves (at start, or before a
    /// reload swaps it in). A group that replaces `old` starts from the addresses `old` resolved
    /// for the same names, so it serves them even if DNS does not answer now.
    pub async fn prime(&self, old: Option<&UpstreamGroup>) {
        let Some(d) = &self.discovery else {
            return;
        };
        if let Some(old) = old.and_then(|o| o.discovery.as_ref()) {
            d.seed(old);
            self.follow(d);
        }
        if d.schedule.claim(Instant::now()) {
            self.rediscover().await;
            d.schedule.release();
        }
    }

    /// Makes the members what `d`'s answers say: peers that stay are kept as they are (health,
    /// in-flight counts, passive failures), new ones added, the others removed.
    fn follow(&self, d: &Discovery) {
        let old = self.members.load_full();
        let mut peers = Vec::new();
        for (addr, weight) in d.peers() {
            let kept = old.get(&addr).filter(|p| p.weight == weight);
            peers.push(
                kept.map_or_else(|| self.template.peer(&self.name, addr, weight), Arc::clone),
            );
        }
        let added: Vec<SocketAddr> = peers
            .iter()
            .map(|p| p.addr)
            .filter(|a| old.get(a).is_none())
            .collect();
        let new = Members::new(peers);
        let removed: Vec<SocketAddr> = old
            .order
            .iter()
            .copied()
            .filter(|a| new.get(a).is_none())
            .collect();
        if added.is_empty() && removed.is_empty() {
            return;
        }
        self.members.store(Arc::new(new));
        self.update_balancer();
        for (change, addrs) in [("added", &added), ("removed", &removed)] {
            if addrs.is_empty() {
                continue;
            }
            let list: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
            info!(
                "upstream {}: DNS {change} peer(s) {}",
                self.name,
                list.join(", ")
            );
            METRICS
                .peer_changes
                .with_label_values(&[self.name.as_str(), change])
                .inc_by(addrs.len() as u64);
        }
    }

    /// Rebuilds the selector from the members (the discovery above is ready at once).
    fn update_balancer(&self) {
        let updated = match &self.balancer {
            Balancer::RoundRobin(lb) | Balancer::LeastConn(lb, _) => lb.update().now_or_never(),
            Balancer::IpHash(lb) => lb.update().now_or_never(),
            Balancer::Random(lb) => lb.update().now_or_never(),
        };
        debug_assert!(matches!(updated, Some(Ok(()))));
    }
}

/// Whether a request may go to `peer`, health aside: not tried by it yet (`exclude`) and, while
/// `skip_failed`, not kept out after a failed connect.
fn open_to(peer: &Peer, exclude: &[SocketAddr], skip_failed: bool) -> bool {
    let kept_out = skip_failed && peer.recently_failed();
    !(kept_out || exclude.contains(&peer.addr))
}

/// The CA certificates of a PEM file, as Pingora's connector takes them.
pub(crate) fn load_ca(
    file: &str,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<Arc<[WrappedX509]>> {
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
    // Membership never waits or fails, so the first update completes in this poll.
    lb.update()
        .now_or_never()
        .expect("membership is ready at once")
        .expect("membership does not fail");
    lb
}

/// Where `balance: hash` finds its key.
#[derive(Debug)]
pub enum KeySource {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    Path,
    Ip,
}

fn hash_key(section: &UpstreamSection, path: &str, errs: &mut ConfigErrors) -> Option<KeySource> {
    let at = format!("{path}.hash_key");
    let key = match (&section.hash_key, section.balance) {
        (None, Balance::Hash) => {
            errs.push(at, "balance: hash needs a hash_key: {header: NAME}, {cookie: NAME}, {query: NAME}, path or ip");
            return None;
        }
        (None, _) => return None,
        (Some(_), b) if b != Balance::Hash => {
            errs.push(
                at,
                format!("only with balance: hash (this group's is {})", b.as_str()),
            );
            return None;
        }
        (Some(k), _) => k,
    };
    Some(match key {
        HashKey::Header(name) => KeySource::Header(validate::header_name(errs, &at, name)?),
        HashKey::Cookie(name) => {
            KeySource::Cookie(validate::token(errs, &at, "cookie name", name)?)
        }
        HashKey::Query(name) => {
            KeySource::Query(validate::token(errs, &at, "query parameter name", name)?)
        }
        HashKey::Path => KeySource::Path,
        HashKey::Ip => KeySource::Ip,
    })
}

/// Sticky sessions: the cookie and its attributes (each peer's opaque id is the peer's).
#[derive(Debug)]
pub struct Sticky {
    pub cookie: String,
    /// `; Path=/; Max-Age=...; HttpOnly; SameSite=...` (Secure added per request).
    attributes: String,
    secure: SecureFlag,
}

impl Sticky {
    fn build(
        s: &crate::config::schema::StickySection,
        path: &str,
        errs: &mut ConfigErrors,
    ) -> Option<Sticky> {
        let cookie = validate::token(errs, &format!("{path}.cookie"), "cookie name", &s.cookie)?;
        if s.same_site == SameSite::None && s.secure == SecureFlag::Always(false) {
            errs.push(
                format!("{path}.same_site"),
                "none needs secure: true or auto (browsers refuse it without Secure)",
            );
            return None;
        }
        let mut attributes = String::from("; Path=/");
        if let Some(age) = s.max_age {
            attributes.push_str(&format!("; Max-Age={}", age.0.as_secs()));
        }
        if s.http_only {
            attributes.push_str("; HttpOnly");
        }
        attributes.push_str(match s.same_site {
            SameSite::Lax => "; SameSite=Lax",
            SameSite::Strict => "; SameSite=Strict",
            SameSite::None => "; SameSite=None",
        });
        Some(Sticky {
            cookie,
            attributes,
            secure: s.secure,
        })
    }

    /// The `Set-Cookie` value pinning a client to `peer`.
    pub fn set_cookie(&self, peer: &Peer, tls: bool) -> String {
        let secure = match self.secure {
            SecureFlag::Auto => tls,
            SecureFlag::Always(s) => s,
        };
        format!(
            "{}={}{}{}",
            self.cookie,
            peer.id,
            self.attributes,
            if secure { "; Secure" } else { "" }
        )
    }
}
