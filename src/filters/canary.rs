//! `canary`: sends `weight` percent of clients to another upstream group, each client always
//! to the same side (by a hash of its IP, after `trusted_proxies`); a request can force its
//! side with the cookie or header named, `always` (the canary) or `never` (the route's group),
//! as nginx-ingress's canary annotations read them.
//!
//! ```yaml
//! filters:
//!   - canary: {upstream: app-v2, weight: 10, cookie: canary, header: X-Canary}
//! ```

use super::{Build, Filter, Flow, Phases, Request};
use crate::headers::cookies;
use http::HeaderName;
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    upstream: String,
    #[serde(default)]
    weight: u8,
    #[serde(default)]
    cookie: Option<String>,
    #[serde(default)]
    header: Option<String>,
}

pub struct Canary {
    upstream: String,
    weight: u8,
    cookie: Option<String>,
    header: Option<HeaderName>,
}

pub fn factory(settings: &serde_yaml::Value, build: &mut Build<'_>) -> Option<Arc<dyn Filter>> {
    let s: Settings = build.settings(settings)?;
    let mut ok = true;
    if !build.has_upstream(&s.upstream) {
        build.error(
            Some("upstream"),
            format!("unknown upstream {:?}", s.upstream),
        );
        ok = false;
    }
    if s.weight > 100 {
        build.error(Some("weight"), "a percentage: 0 to 100");
        ok = false;
    }
    let header = match s.header.as_deref() {
        Some(h) => {
            let name = build.header_name("header", h);
            ok &= name.is_some();
            name
        }
        None => None,
    };
    ok.then(|| {
        Arc::new(Canary {
            upstream: s.upstream,
            weight: s.weight,
            cookie: s.cookie,
            header,
        }) as Arc<dyn Filter>
    })
}

/// The client's place in 0..100, the same in every portico with this file (FNV-1a).
fn bucket(ip: IpAddr) -> u8 {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % 100) as u8
}

impl Canary {
    /// `Some(true)`: forced to the canary; `Some(false)`: forced away from it.
    fn forced(&self, req: &Request<'_>) -> Option<bool> {
        let word = |v: &[u8]| match v {
            b"always" => Some(true),
            b"never" => Some(false),
            _ => None,
        };
        if let Some(name) = &self.header {
            if let Some(f) = req.head.headers.get(name).and_then(|v| word(v.as_bytes())) {
                return Some(f);
            }
        }
        let name = self.cookie.as_deref()?;
        cookies(&req.head.headers, name).find_map(word)
    }
}

impl Filter for Canary {
    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    fn request(&self, req: &mut Request<'_>) -> Flow {
        let canary = self
            .forced(req)
            .unwrap_or_else(|| bucket(req.client.ip) < self.weight);
        if canary && req.use_upstream(&self.upstream) {
            req.vars.set("canary", "1");
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_spread_and_stay() {
        let ips: Vec<IpAddr> = (0..1000u32)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i * 7919)))
            .collect();
        let under_10 = ips.iter().filter(|ip| bucket(**ip) < 10).count();
        assert!(
            (50..=150).contains(&under_10),
            "{under_10} of 1000 under 10%"
        );
        assert_eq!(bucket(ips[3]), bucket(ips[3]));
    }
}
