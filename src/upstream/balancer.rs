//! An upstream group compiled from its section: one Pingora `LoadBalancer` and one `select()`
//! over round robin, ip_hash, random and least_conn, skipping unhealthy and already-tried peers.

use super::health::{self, HealthSchedule};
use super::peer::Peer;
use crate::config::schema::{Balance, HashKey, SameSite, SecureFlag, UpstreamSection};
use crate::config::{validate, ConfigErrors};
use crate::headers::cookies;
use crate::request::view::{query_value, View};
use futures_util::FutureExt;
use http::HeaderName;
use pingora::http::RequestHeader;
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
    /// ip_hash, and hash (on its key, else the client IP).
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
    /// What `balance: hash` hashes.
    pub hash_key: Option<KeySource>,
    pub sticky: Option<Sticky>,
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
        let hash_key = hash_key(section, path, errs);
        let sticky = section
            .sticky
            .as_ref()
            .and_then(|s| Sticky::build(s, name, &order, &format!("{path}.sticky"), errs));
        let health = section.health_check.as_ref().and_then(|hc| {
            health::build(
                name,
                &peers,
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
            balancer,
            peers,
            order,
        })
    }

    /// `addr` when it is a peer of this group that is healthy and not kept out after a failed
    /// connect: where a sticky cookie may send a request.
    pub fn usable(&self, addr: SocketAddr) -> Option<&Arc<Peer>> {
        let peer = self.peers.get(&addr)?;
        (!peer.recently_failed() && self.is_healthy_in(self.backends(), peer)).then_some(peer)
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
    // Static discovery never waits, so the first update completes in this poll.
    lb.update()
        .now_or_never()
        .expect("static discovery is ready at once")
        .expect("static discovery does not fail");
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
    let token = |name: &str| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}&".contains(&b))
    };
    Some(match key {
        HashKey::Header(name) => KeySource::Header(validate::header_name(errs, &at, name)?),
        HashKey::Cookie(name) | HashKey::Query(name) if !token(name) => {
            errs.push(at, format!("invalid name {name:?}"));
            return None;
        }
        HashKey::Cookie(name) => KeySource::Cookie(name.clone()),
        HashKey::Query(name) => KeySource::Query(name.clone()),
        HashKey::Path => KeySource::Path,
        HashKey::Ip => KeySource::Ip,
    })
}

/// Sticky sessions: the cookie, its attributes, and each peer's opaque id (a digest of the
/// group's name and the peer's address: the same on every instance with the same file, and
/// not the address).
#[derive(Debug)]
pub struct Sticky {
    pub cookie: String,
    /// `; Path=/; Max-Age=...; HttpOnly; SameSite=...` (Secure added per request).
    attributes: String,
    secure: SecureFlag,
    by_id: HashMap<String, SocketAddr>,
    ids: HashMap<SocketAddr, String>,
}

impl Sticky {
    fn build(
        s: &crate::config::schema::StickySection,
        group: &str,
        peers: &[SocketAddr],
        path: &str,
        errs: &mut ConfigErrors,
    ) -> Option<Sticky> {
        let valid = !s.cookie.is_empty()
            && s.cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            errs.push(
                format!("{path}.cookie"),
                format!("invalid cookie name {:?}: letters, digits, -_.", s.cookie),
            );
            return None;
        }
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
        let ids: HashMap<SocketAddr, String> = peers
            .iter()
            .map(|addr| {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(format!("portico sticky\0{group}\0{addr}"));
                let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                (*addr, id)
            })
            .collect();
        Some(Sticky {
            cookie: s.cookie.clone(),
            attributes,
            secure: s.secure,
            by_id: ids.iter().map(|(a, id)| (id.clone(), *a)).collect(),
            ids,
        })
    }

    /// The peer the request's cookie names, if it names one of this group's (a forged or stale
    /// id names none).
    pub fn pinned(&self, req: &RequestHeader) -> Option<SocketAddr> {
        let id = std::str::from_utf8(cookies(&req.headers, &self.cookie).next()?).ok()?;
        self.by_id.get(id).copied()
    }

    /// The `Set-Cookie` value pinning a client to `peer`.
    pub fn set_cookie(&self, peer: SocketAddr, tls: bool) -> Option<String> {
        let id = self.ids.get(&peer)?;
        let secure = match self.secure {
            SecureFlag::Auto => tls,
            SecureFlag::Always(s) => s,
        };
        Some(format!(
            "{}={id}{}{}",
            self.cookie,
            self.attributes,
            if secure { "; Secure" } else { "" }
        ))
    }
}
