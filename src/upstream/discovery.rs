//! DNS discovery (`resolve`): the host names among a group's peers are resolved again and
//! again (A and AAAA, with hickory-resolver), and the group's peers follow the answers.
//!
//! - Each round asks every name afresh (a new resolver, no cache), on the group's interval or
//!   sooner when an answer's TTL runs out first (never more often than once a second).
//! - A definite answer replaces the name's addresses: records, or none (NXDOMAIN, no data):
//!   a Service scaled to zero empties the group, which answers 503.
//! - A failed lookup (timeout, SERVFAIL, no server) keeps the name's last addresses: a DNS
//!   outage does not take peers away.
//! - Peers that stay keep their health and in-flight counts; a removed peer's open WebSockets
//!   run to their end (they hold the peer).

use super::schedule::Schedule;
use crate::config::schema::ResolveSection;
use crate::config::{validate, ConfigErrors};
use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, Resolver, TokioResolver};
use log::{info, warn};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The shortest time between two rounds that a short TTL can ask for.
const MIN_TTL_WAIT: Duration = Duration::from_secs(1);
/// Addresses kept per name: an answer is bounded, and so are the peers and metric labels.
const MAX_ADDRESSES: usize = 256;

/// A peer given by name: every address it resolves to is a peer on `port` with `weight`.
#[derive(Debug, Clone, PartialEq)]
pub struct Name {
    pub host: String,
    pub port: u16,
    pub weight: usize,
}

/// What a name resolved to last.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub addrs: Vec<IpAddr>,
    /// Why the last round could not resolve it (its addresses are then the ones before).
    pub error: Option<String>,
    /// When it was last resolved, successfully or to no address.
    pub resolved_at: Option<std::time::SystemTime>,
}

pub struct Discovery {
    pub names: Vec<Name>,
    /// The group's peers given as addresses: always members.
    fixed: Vec<(SocketAddr, usize)>,
    timeout: Duration,
    /// `None`: the system's resolvers.
    servers: Option<Vec<SocketAddr>>,
    pub schedule: Schedule,
    /// By index in `names`.
    answers: Mutex<Vec<Answer>>,
}

impl Discovery {
    pub fn build(
        section: &ResolveSection,
        names: Vec<Name>,
        fixed: Vec<(SocketAddr, usize)>,
        path: &str,
        errs: &mut ConfigErrors,
    ) -> Option<Self> {
        let before = errs.0.len();
        let interval = validate::nonzero(
            errs,
            &format!("{path}.interval"),
            section.interval.map_or(DEFAULT_INTERVAL, |d| d.0),
        );
        let timeout = validate::nonzero(
            errs,
            &format!("{path}.timeout"),
            section.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0),
        );
        let mut servers = Vec::new();
        for (i, s) in section.resolvers.iter().enumerate() {
            let parsed = s
                .parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            match parsed {
                Ok(a) => servers.push(a),
                Err(_) => errs.push(
                    format!("{path}.resolvers[{i}]"),
                    format!("invalid resolver {s:?}: expected IP or IP:port"),
                ),
            }
        }
        if errs.0.len() > before {
            return None;
        }
        Some(Discovery {
            answers: Mutex::new(vec![Answer::default(); names.len()]),
            names,
            fixed,
            timeout,
            servers: (!servers.is_empty()).then_some(servers),
            schedule: Schedule::new(interval),
        })
    }

    /// The group's peers by the answers held now: the fixed ones, then each name's addresses
    /// (sorted, so every instance lists them alike); an address met twice counts once.
    pub fn peers(&self) -> Vec<(SocketAddr, usize)> {
        let answers = self.answers();
        let mut peers = self.fixed.clone();
        for (name, answer) in self.names.iter().zip(answers.iter()) {
            for ip in &answer.addrs {
                let addr = SocketAddr::new(*ip, name.port);
                if !peers.iter().any(|(a, _)| *a == addr) {
                    peers.push((addr, name.weight));
                }
            }
        }
        peers
    }

    /// Each name with its last answer, for /status.
    pub fn answers(&self) -> Vec<Answer> {
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many peers come from DNS now.
    pub fn discovered(&self) -> usize {
        self.peers().len() - self.fixed.len()
    }

    /// Takes the answers a group it replaces (after a reload) held for the same names, so the
    /// new group starts with the live one's peers even if DNS does not answer at once.
    pub fn seed(&self, old: &Discovery) {
        let old_answers = old.answers();
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        for (name, answer) in self.names.iter().zip(answers.iter_mut()) {
            let same = old
                .names
                .iter()
                .position(|n| n.host.eq_ignore_ascii_case(&name.host));
            if let Some(i) = same {
                *answer = old_answers[i].clone();
            }
        }
    }

    /// One round: every name resolved at once. Returns when the shortest-lived answer
    /// expires (the next round is due then at the latest). `group` names the log lines.
    pub async fn resolve(&self, group: &str) -> Option<Instant> {
        let resolver = match self.resolver() {
            Ok(r) => r,
            Err(e) => {
                warn!("upstream {group}: cannot resolve its peers: {e}");
                self.record_all_failed(&e);
                return None;
            }
        };
        let lookups = self.names.iter().map(|n| lookup(&resolver, &n.host));
        let results = futures_util::future::join_all(lookups).await;
        let now = std::time::SystemTime::now();
        let mut expires: Option<Instant> = None;
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        for ((name, answer), result) in self.names.iter().zip(answers.iter_mut()).zip(results) {
            match result {
                Ok((mut addrs, until)) => {
                    addrs.sort();
                    addrs.dedup();
                    if addrs.len() > MAX_ADDRESSES {
                        warn!(
                            "upstream {group}: {} has {} addresses, the first {MAX_ADDRESSES} are used",
                            name.host,
                            addrs.len()
                        );
                        addrs.truncate(MAX_ADDRESSES);
                    }
                    if addrs.is_empty()
                        && (!answer.addrs.is_empty() || answer.resolved_at.is_none())
                    {
                        warn!(
                            "upstream {group}: {} has no address now; its peers answer 503 until it has",
                            name.host
                        );
                    } else if answer.error.is_some() {
                        info!("upstream {group}: {} resolves again", name.host);
                    }
                    answer.addrs = addrs;
                    answer.error = None;
                    answer.resolved_at = Some(now);
                    expires = expires.into_iter().chain(until).min();
                }
                Err(e) => {
                    if answer.error.as_deref() != Some(e.as_str()) {
                        warn!(
                            "upstream {group}: cannot resolve {}: {e}; keeping its {} known address(es)",
                            name.host,
                            answer.addrs.len()
                        );
                    }
                    answer.error = Some(e);
                }
            }
        }
        expires
    }

    fn record_all_failed(&self, e: &str) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        for answer in answers.iter_mut() {
            answer.error = Some(e.to_owned());
        }
    }

    /// When the next round is due after one that ended at `now`: the interval, or sooner for an
    /// answer that expires first, never sooner than a second (or the interval, when shorter).
    pub fn next_round(&self, now: Instant, expires: Option<Instant>) -> Instant {
        let interval = self.schedule.interval;
        let earliest = now + interval.min(MIN_TTL_WAIT);
        let latest = now + interval;
        expires.map_or(latest, |e| e.clamp(earliest, latest))
    }

    /// A resolver for one round: nothing is cached from one round to the next.
    fn resolver(&self) -> Result<TokioResolver, String> {
        let (config, mut options) = match &self.servers {
            Some(servers) => {
                let mut group = NameServerConfigGroup::new();
                for s in servers {
                    group.push(NameServerConfig::new(*s, Protocol::Udp));
                    group.push(NameServerConfig::new(*s, Protocol::Tcp));
                }
                let config = ResolverConfig::from_parts(None, vec![], group);
                (config, Default::default())
            }
            None => hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("the system's resolver configuration: {e}"))?,
        };
        options.timeout = self.timeout;
        options.attempts = 2;
        options.cache_size = 0;
        let builder = Resolver::builder_with_config(config, TokioConnectionProvider::default());
        Ok(builder.with_options(options).build())
    }
}

/// A name's A and AAAA records, and when the first of them expires. `Ok` with no address:
/// DNS says the name has none. `Err`: no answer could be had.
async fn lookup(
    resolver: &TokioResolver,
    host: &str,
) -> Result<(Vec<IpAddr>, Option<Instant>), String> {
    let (v4, v6) = tokio::join!(resolver.ipv4_lookup(host), resolver.ipv6_lookup(host));
    let mut addrs = Vec::new();
    let mut expires = None;
    match v4 {
        Ok(found) => {
            addrs.extend(found.iter().map(|a| IpAddr::V4(a.0)));
            expires = Some(found.valid_until());
        }
        Err(e) => none_or_err(e)?,
    }
    match v6 {
        Ok(found) => {
            addrs.extend(found.iter().map(|a| IpAddr::V6(a.0)));
            expires = expires.into_iter().chain([found.valid_until()]).min();
        }
        Err(e) => none_or_err(e)?,
    }
    Ok((addrs, expires))
}

/// A lookup error that is a definite "no such address" (NXDOMAIN, or NOERROR with no record)
/// is `Ok`; anything else (SERVFAIL, REFUSED, a timeout) is why it failed.
fn none_or_err(e: ResolveError) -> Result<(), String> {
    use hickory_resolver::proto::op::ResponseCode;
    use hickory_resolver::proto::ProtoErrorKind;
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => match *response_code {
            ResponseCode::NXDomain | ResponseCode::NoError => Ok(()),
            code => Err(format!("the server answered {code}")),
        },
        Some(ProtoErrorKind::Timeout) => Err("no answer in time".to_owned()),
        _ => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery(interval: Duration) -> Discovery {
        let section = ResolveSection {
            interval: Some(crate::config::schema::Duration(interval)),
            resolvers: vec!["127.0.0.1:5353".into()],
            timeout: None,
        };
        let names = vec![
            Name {
                host: "a.test".into(),
                port: 80,
                weight: 1,
            },
            Name {
                host: "b.test".into(),
                port: 81,
                weight: 3,
            },
        ];
        let fixed = vec![("10.0.0.1:80".parse().unwrap(), 2)];
        Discovery::build(
            &section,
            names,
            fixed,
            "resolve",
            &mut ConfigErrors::default(),
        )
        .unwrap()
    }

    #[test]
    fn a_short_ttl_brings_the_next_round_forward_but_not_below_a_second() {
        let d = discovery(Duration::from_secs(30));
        let now = Instant::now();
        assert_eq!(d.next_round(now, None), now + Duration::from_secs(30));
        let soon = now + Duration::from_secs(4);
        assert_eq!(d.next_round(now, Some(soon)), soon);
        assert_eq!(d.next_round(now, Some(now)), now + MIN_TTL_WAIT);
        let late = now + Duration::from_secs(300);
        assert_eq!(d.next_round(now, Some(late)), now + Duration::from_secs(30));
        // An interval under a second is kept: the TTL floor never slows a fast interval.
        let fast = discovery(Duration::from_millis(200));
        assert_eq!(
            fast.next_round(now, Some(now)),
            now + Duration::from_millis(200)
        );
    }

    #[test]
    fn peers_are_the_fixed_ones_then_each_names_addresses_once() {
        let d = discovery(Duration::from_secs(5));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        {
            let mut answers = d.answers.lock().unwrap();
            answers[0].addrs = vec![ip("10.0.0.1"), ip("10.0.0.2")];
            answers[1].addrs = vec![ip("10.0.0.2"), ip("::1")];
        }
        let peers: Vec<(String, usize)> =
            d.peers().iter().map(|(a, w)| (a.to_string(), *w)).collect();
        let want = [
            ("10.0.0.1:80", 2), // fixed, not again from a.test
            ("10.0.0.2:80", 1),
            ("10.0.0.2:81", 3), // the same address on b.test's port is another peer
            ("[::1]:81", 3),
        ];
        let want: Vec<(String, usize)> = want.iter().map(|(a, w)| (a.to_string(), *w)).collect();
        assert_eq!(peers, want);
        assert_eq!(d.discovered(), 3);
    }
}
