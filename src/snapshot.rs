//! The compiled, immutable runtime state built from one config file: routes, upstream groups,
//! trusted proxies, listeners. Request code reads only this, through one `ArcSwap`.

use crate::config::schema::{AccessLogSection, ServerSection};
use crate::config::{validate, ConfigErrors, Loaded};
use crate::filters::Chain;
use crate::headers::{HeaderRules, TrustedProxies};
use crate::limits::Limits;
use crate::metrics::RouteMetrics;
use crate::routing::Router;
use crate::tls::Certs;
use crate::upstream::UpstreamGroup;
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The one place the live snapshot is published; a reload stores a new one.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// An upgraded connection with no traffic is closed after this unless the route says otherwise.
pub const DEFAULT_WS_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

pub struct Snapshot {
    pub routes: Vec<Route>,
    pub router: Router,
    pub upstreams: HashMap<String, Arc<UpstreamGroup>>,
    pub trusted: TrustedProxies,
    pub listeners: Vec<Listener>,
    pub admin: Option<SocketAddr>,
    pub server: ServerSection,
    /// `server.fast_path` (default true): plain requests take portico's own loop.
    pub fast_path: bool,
    pub access_log: AccessLogSection,
    /// SHA-256 of the file this snapshot was built from.
    pub sha256: String,
    pub loaded_at: std::time::SystemTime,
}

/// `(cert, key)` file pairs as the config lists them.
pub type CertPaths = Vec<(String, String)>;

#[derive(Debug)]
pub struct Listener {
    pub addr: SocketAddr,
    /// `(cert, key)` paths (the first pair is the default certificate) and what they hold,
    /// read when this snapshot was built.
    pub tls: Option<(CertPaths, Arc<Certs>)>,
}

impl PartialEq for Listener {
    /// The same address and certificate files: certificate contents may change on reload.
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
            && self.tls.as_ref().map(|t| &t.0) == other.tls.as_ref().map(|t| &t.0)
    }
}

pub struct Route {
    pub name: String,
    /// The host it matches (lower-case, `*.` for a wildcard); `None`: any host.
    pub host: Option<String>,
    pub path_prefix: String,
    pub upstream: Arc<UpstreamGroup>,
    pub websocket: WebSocketPolicy,
    /// Every policy of the route, in order (filters/).
    pub chain: Chain,
    /// The name as a shared key (connection counts survive reloads by name).
    pub key: Arc<str>,
    /// The `rate_limit` filter's state, for the periodic forgetting of idle clients.
    pub limits: Option<Arc<Limits>>,
    /// Request bodies above this many bytes get 413 (the `max_body_size` filter checks a
    /// declared length; a streamed body is counted against this).
    pub max_body_size: Option<u64>,
    pub metrics: RouteMetrics,
}

#[derive(Debug, Clone, Copy)]
pub struct WebSocketPolicy {
    pub enabled: bool,
    pub idle_timeout: Duration,
}

impl Snapshot {
    /// Compiles the file, collecting every error with its YAML path. `previous` is the live
    /// snapshot on a reload: an upstream group whose section is unchanged is shared with it,
    /// keeping its health state, schedule and in-flight counts.
    pub fn build(loaded: &Loaded, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigErrors> {
        let cfg = &loaded.config;
        let mut errs = ConfigErrors::default();

        let mut listeners = Vec::new();
        let mut seen = HashSet::new();
        if cfg.listeners.is_empty() {
            errs.push("listeners", "needs at least one listener");
        }
        for (i, l) in cfg.listeners.iter().enumerate() {
            let path = format!("listeners[{i}]");
            let Some(addr) =
                validate::listen_addr(&mut errs, &format!("{path}.address"), &l.address)
            else {
                continue;
            };
            if !seen.insert(addr) {
                errs.push(
                    format!("{path}.address"),
                    format!("duplicate listener {addr}"),
                );
            }
            let tls = l.tls.as_ref().and_then(|t| {
                let at = format!("{path}.tls");
                if t.certificates.is_empty() {
                    errs.push(
                        format!("{at}.certificates"),
                        "needs at least one certificate",
                    );
                    return None;
                }
                let pairs: Vec<(String, String)> = t
                    .certificates
                    .iter()
                    .map(|c| (c.cert.clone(), c.key.clone()))
                    .collect();
                let certs = Certs::load(&pairs, &at, &mut errs)?;
                Some((pairs, Arc::new(certs)))
            });
            listeners.push(Listener { addr, tls });
        }
        let admin = cfg.admin.as_ref().and_then(|a| {
            let addr = validate::listen_addr(&mut errs, "admin.address", &a.address)?;
            if seen.contains(&addr) {
                errs.push("admin.address", format!("{addr} is also a proxy listener"));
            }
            Some(addr)
        });
        if let Some(0) = cfg.server.threads {
            errs.push("server.threads", "must be at least 1");
        }
        if let Some(0) = cfg.server.max_connections {
            errs.push("server.max_connections", "must be at least 1");
        }
        for (key, d) in [
            ("header_timeout", cfg.server.header_timeout),
            ("keepalive_timeout", cfg.server.keepalive_timeout),
            ("send_timeout", cfg.server.send_timeout),
        ] {
            if let Some(d) = d {
                validate::nonzero(&mut errs, &format!("server.{key}"), d.0);
            }
        }

        let trusted = TrustedProxies::new(
            cfg.trusted_proxies
                .iter()
                .enumerate()
                .filter_map(|(i, s)| validate::cidr(&mut errs, &format!("trusted_proxies[{i}]"), s))
                .collect(),
        );

        let mut upstreams = HashMap::new();
        for (name, section) in &cfg.upstreams {
            let reused = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|g| g.source == *section)
                .cloned();
            let group = reused.or_else(|| {
                UpstreamGroup::build(name, section, &format!("upstreams.{name}"), &mut errs)
                    .map(Arc::new)
            });
            if let Some(g) = group {
                upstreams.insert(name.clone(), g);
            }
        }

        let mut routes = Vec::new();
        let mut router = Router::default();
        let mut keys = HashSet::new();
        let mut names = HashSet::new();
        for (i, r) in cfg.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            let before = errs.0.len();
            let host = r
                .host
                .as_deref()
                .and_then(|h| validate::host_pattern(&mut errs, &format!("{path}.host"), h));
            let prefix = validate::path_prefix(
                &mut errs,
                &format!("{path}.path_prefix"),
                r.path_prefix.as_deref().unwrap_or("/"),
            );
            let upstream = upstreams.get(&r.upstream).cloned();
            if upstream.is_none() && !cfg.upstreams.contains_key(&r.upstream) {
                errs.push(
                    format!("{path}.upstream"),
                    format!("unknown upstream {:?}", r.upstream),
                );
            }
            let name = r.name.clone().unwrap_or_else(|| format!("route{i}"));
            if !names.insert(name.clone()) {
                errs.push(
                    format!("{path}.name"),
                    format!("duplicate route name {name:?}"),
                );
            }
            let ws = r.websocket.as_ref();
            let idle_timeout = ws
                .and_then(|w| w.idle_timeout)
                .map_or(DEFAULT_WS_IDLE_TIMEOUT, |d| d.0);
            validate::nonzero(
                &mut errs,
                &format!("{path}.websocket.idle_timeout"),
                idle_timeout,
            );
            let websocket = WebSocketPolicy {
                enabled: ws.is_none_or(|w| w.enabled),
                idle_timeout,
            };
            if let Some(rl) = &r.rate_limit {
                let p = format!("{path}.rate_limit");
                for (key, v) in [
                    ("requests_per_second", rl.requests_per_second),
                    ("burst", rl.burst),
                    ("max_connections", rl.max_connections),
                ] {
                    if v == Some(0) {
                        errs.push(format!("{p}.{key}"), "must be at least 1");
                    }
                }
            }
            let key: Arc<str> = Arc::from(name.as_str());
            let limits = r.rate_limit.as_ref().map(|rl| Arc::new(Limits::new(rl)));
            let chain = route_chain(
                r,
                &path,
                (&key, limits.as_ref()),
                prefix.as_deref(),
                &websocket,
                &cfg.upstreams,
                &mut errs,
            );
            if errs.0.len() > before {
                continue;
            }
            let (Some(prefix), Some(upstream)) = (prefix, upstream) else {
                continue;
            };
            if !keys.insert((host.clone(), prefix.clone())) {
                errs.push(
                    path,
                    format!(
                        "duplicate route: another route has host {:?} and path_prefix {prefix:?}",
                        host.as_deref().unwrap_or("*")
                    ),
                );
                continue;
            }
            router.add(host.as_deref(), &prefix, routes.len());
            routes.push(Route {
                metrics: RouteMetrics::new(&name, &upstream.name),
                key,
                limits,
                name,
                host,
                path_prefix: prefix,
                upstream,
                websocket,
                chain,
                max_body_size: r.max_body_size.map(|s| s.0),
            });
        }

        // What did not parse comes first; a semantic error about a value that was taken out (or
        // stood in for) is only its echo.
        let mut all = loaded.errors.clone();
        let echoes = |path: &str| {
            loaded.errors.0.iter().any(|p| {
                path.strip_prefix(p.path.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            })
        };
        all.0
            .extend(errs.0.into_iter().filter(|e| !echoes(&e.path)));
        if !all.is_empty() {
            all.locate(&loaded.text);
        }
        all.into_result(Snapshot {
            routes,
            router,
            upstreams,
            trusted,
            listeners,
            admin,
            server: cfg.server.clone(),
            fast_path: cfg.server.fast_path.unwrap_or(true),
            access_log: cfg.access_log.clone(),
            sha256: loaded.sha256.clone(),
            loaded_at: std::time::SystemTime::now(),
        })
    }
}

impl Snapshot {
    /// Listeners and process settings are fixed once Pingora runs: changing them needs a
    /// binary upgrade (`-u`), so a reload that changes them is refused as a whole.
    pub fn check_reloadable(&self, live: &Snapshot) -> Result<(), ConfigErrors> {
        let mut errs = ConfigErrors::default();
        if self.listeners != live.listeners {
            errs.push(
                "listeners",
                "cannot change on reload; use a binary upgrade (portico -u)",
            );
        }
        if self.admin != live.admin {
            errs.push(
                "admin",
                "cannot change on reload; use a binary upgrade (portico -u)",
            );
        }
        if self.access_log != live.access_log {
            errs.push(
                "access_log",
                "cannot change on reload; use a binary upgrade (portico -u)",
            );
        }
        if self.server != live.server {
            errs.push(
                "server",
                "cannot change on reload; use a binary upgrade (portico -u)",
            );
        }
        errs.into_result(())
    }
}

impl Snapshot {
    /// Upstream groups built for this snapshot rather than shared with `live`: the ones a
    /// reload must health-check before they serve.
    pub fn new_groups<'a>(
        &'a self,
        live: &'a Snapshot,
    ) -> impl Iterator<Item = &'a Arc<UpstreamGroup>> + 'a {
        self.upstreams
            .iter()
            .filter(move |(name, g)| {
                live.upstreams
                    .get(*name)
                    .is_none_or(|old| !Arc::ptr_eq(old, g))
            })
            .map(|(_, g)| g)
    }
}

/// A route's filters in the documented order (docs/filters.md): in the request phase
/// `redirect_https`, `max_body_size`, the WebSocket gate, `rate_limit`, the listed `filters`,
/// `auth`; for the peer's request `strip_prefix`, `request_headers`, then the listed filters';
/// for the response `response_headers`, then the listed filters'.
fn route_chain(
    r: &crate::config::schema::RouteSection,
    path: &str,
    (key, limits): (&Arc<str>, Option<&Arc<Limits>>),
    prefix: Option<&str>,
    websocket: &WebSocketPolicy,
    groups: &BTreeMap<String, crate::config::schema::UpstreamSection>,
    errs: &mut ConfigErrors,
) -> Chain {
    use crate::filters::*;
    let mut chain: Vec<Arc<dyn Filter>> = Vec::new();
    if r.redirect_https {
        chain.push(Arc::new(redirect_https::RedirectHttps));
    }
    if let Some(max) = r.max_body_size {
        chain.push(Arc::new(max_body_size::MaxBodySize(max.0)));
    }
    if !websocket.enabled {
        chain.push(Arc::new(websocket::WebSocketGate));
    }
    if let Some(limits) = limits {
        chain.push(Arc::new(rate_limit::RateLimit {
            limits: Arc::clone(limits),
            key: Arc::clone(key),
        }));
    }
    if let (true, Some(prefix)) = (r.strip_prefix, prefix) {
        chain.push(Arc::new(strip_prefix::StripPrefix(prefix.to_owned())));
    }
    if r.request_headers.is_some() {
        let at = format!("{path}.request_headers");
        let rules = HeaderRules::build(r.request_headers.as_ref(), &at, errs);
        chain.push(Arc::new(request_headers::RequestHeaders(rules)));
    }
    if r.response_headers.is_some() {
        let at = format!("{path}.response_headers");
        let rules = HeaderRules::build(r.response_headers.as_ref(), &at, errs);
        chain.push(Arc::new(response_headers::ResponseHeaders(rules)));
    }
    let registry = registry();
    for (j, entry) in r.filters.iter().enumerate() {
        let at = format!("{path}.filters[{j}].{}", entry.name);
        if entry.name.is_empty() {
            errs.push(
                format!("{path}.filters[{j}]"),
                "a filter is its name, or a map of one key, the name to its settings: `- cors: {...}`",
            );
            continue;
        }
        let Some(factory) = registry.get(&entry.name) else {
            let known: Vec<&str> = registry.names().collect();
            errs.push(
                format!("{path}.filters[{j}]"),
                format!(
                    "unknown filter {:?}; the filters are: {}",
                    entry.name,
                    known.join(", ")
                ),
            );
            continue;
        };
        let mut build = Build {
            path: at,
            errs: &mut *errs,
            groups,
        };
        if let Some(filter) = factory(&entry.settings, &mut build) {
            chain.push(filter);
        }
    }
    if let Some(a) = &r.auth {
        let at = format!("{path}.auth.bearer_tokens_file");
        if let Some(tokens) = auth::BearerTokens::load(&a.bearer_tokens_file, &at, errs) {
            chain.push(Arc::new(tokens));
        }
    }
    Chain::new(&chain)
}
