//! `ip_access`: CIDR allow and deny lists on the client IP (after `trusted_proxies`); 403 for a
//! client they refuse. `deny` is checked first, then `allow`; an empty or absent `allow` lets
//! every client not denied through (nginx's `deny`/`allow`, written most specific first).
//!
//! ```yaml
//! filters:
//!   - ip_access: {allow: [10.0.0.0/8], deny: [10.9.0.0/16]}
//! ```

use super::{Answer, Build, Filter, Flow, Phases, Request};
use crate::config::validate;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

pub struct IpAccess {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

pub fn factory(settings: &serde_yaml::Value, build: &mut Build<'_>) -> Option<Arc<dyn Filter>> {
    let s: Settings = build.settings(settings)?;
    if s.allow.is_empty() && s.deny.is_empty() {
        build.error(None, "needs an allow or a deny list");
        return None;
    }
    let mut nets = |key: &str, list: &[String]| -> Option<Vec<IpNet>> {
        let before = build.errs.0.len();
        let nets: Vec<IpNet> = list
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                validate::cidr(build.errs, &format!("{}.{key}[{i}]", build.path), c)
            })
            .collect();
        (build.errs.0.len() == before).then_some(nets)
    };
    let (allow, deny) = (nets("allow", &s.allow), nets("deny", &s.deny));
    Some(Arc::new(IpAccess {
        allow: allow?,
        deny: deny?,
    }))
}

impl IpAccess {
    fn admits(&self, ip: IpAddr) -> bool {
        // An IPv4 client on an IPv6 socket is judged by its IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

impl Filter for IpAccess {
    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    fn request(&self, req: &mut Request<'_>) -> Flow {
        match self.admits(req.client.ip) {
            true => Flow::Continue,
            false => Flow::Respond(Answer::new("ip_access", 403, "forbidden\n")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_first_then_allow() {
        let f = IpAccess {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny: vec!["10.9.0.0/16".parse().unwrap()],
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(f.admits(ip("10.1.2.3")));
        assert!(!f.admits(ip("10.9.2.3")));
        assert!(!f.admits(ip("192.168.1.1")));
        assert!(f.admits(ip("::ffff:10.1.2.3")));
        assert!(!f.admits(ip("::ffff:10.9.0.1")));
    }
}
