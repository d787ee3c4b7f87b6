//! Checks for single values of the file (addresses, CIDRs, header names, host patterns), each
//! pushing an error with its YAML path and returning the parsed value when it is good.
//!
//! [`crate::snapshot::Snapshot::build`] calls these while it compiles, so validation and
//! compilation are one pass and can never disagree about what a value means.

use super::ConfigErrors;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// A listen address: a literal `IP:port` (a listener never does a DNS lookup).
pub fn listen_addr(errs: &mut ConfigErrors, path: &str, s: &str) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                path,
                format!("invalid address {s:?}: expected IP:port, e.g. 0.0.0.0:8080"),
            );
            None
        }
    }
}

/// A peer given by name, `host:port`, checked but not resolved (under `resolve` it is looked
/// up later, again and again): a DNS name of letters, digits, `-`, `_` and dots.
pub fn peer_name(errs: &mut ConfigErrors, path: &str, s: &str) -> Option<(String, u16)> {
    let parsed = s.rsplit_once(':').and_then(|(host, port)| {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        };
        let name = host.strip_suffix('.').unwrap_or(host);
        let valid = host.len() <= 253 && name.split('.').all(label_ok);
        Some((host.to_owned(), port.parse::<u16>().ok()?)).filter(|_| valid)
    });
    if parsed.is_none() {
        errs.push(
            path,
            format!("invalid peer address {s:?}: expected IP:port or host:port"),
        );
    }
    parsed
}

/// A peer address: `IP:port`, or `host:port` resolved once, now, to its first address
/// (as nginx does for a `server` line without `resolve`).
pub fn peer_addr(errs: &mut ConfigErrors, path: &str, s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let (_host, _) = peer_name(errs, path, s)?;
    // A fuzzer must not send DNS queries off this machine.
    #[cfg(fuzzing)]
    if !_host.eq_ignore_ascii_case("localhost") {
        errs.push(path, "host names are not resolved while fuzzing");
        return None;
    }
    match s.to_socket_addrs().map(|mut it| it.next()) {
        Ok(Some(a)) => Some(a),
        Ok(None) | Err(_) => {
            errs.push(path, format!("cannot resolve peer address {s:?}"));
            None
        }
    }
}

/// A cookie or query parameter name portico reads or sets: an RFC 9110 token (RFC 6265's
/// cookie-name), never empty. `what` names it in the error (`cookie name`).
pub fn token(errs: &mut ConfigErrors, path: &str, what: &str, name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        errs.push(
            path,
            format!("invalid {what} {name:?}: letters, digits and !#$%&'*+-.^_`|~"),
        );
        return None;
    }
    Some(name.to_owned())
}

/// A CIDR (`10.0.0.0/8`) or a single address (`127.0.0.1`, taken as /32 or /128).
pub fn cidr(errs: &mut ConfigErrors, path: &str, s: &str) -> Option<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    errs.push(
        path,
        format!("invalid CIDR {s:?}: expected e.g. 10.0.0.0/8 or 127.0.0.1"),
    );
    None
}

pub fn header_name(errs: &mut ConfigErrors, path: &str, s: &str) -> Option<HeaderName> {
    match HeaderName::from_bytes(s.as_bytes()) {
        Ok(n) => Some(n),
        Err(_) => {
            errs.push(path, format!("invalid header name {s:?}"));
            None
        }
    }
}

pub fn header_value(errs: &mut ConfigErrors, path: &str, s: &str) -> Option<HeaderValue> {
    match HeaderValue::from_str(s) {
        Ok(v) => Some(v),
        Err(_) => {
            errs.push(
                path,
                format!("invalid header value {s:?}: no control characters allowed"),
            );
            None
        }
    }
}

/// A route's `path_prefix`: starts with `/`, no query, no whitespace; canonical (`/%7Eu/` is
/// `/~u/`), no dot segments.
pub fn path_prefix(errs: &mut ConfigErrors, path: &str, s: &str) -> Option<String> {
    if !s.starts_with('/')
        || s.contains(['?', '#'])
        || s.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        errs.push(
            path,
            format!("invalid path_prefix {s:?}: must start with / and hold no query or spaces"),
        );
        return None;
    }
    // Requests are routed on their canonical path, so the prefix is written the same way.
    match crate::request::view::canonical_prefix(s) {
        Ok(p) => Some(p.into_owned()),
        Err(why) => {
            errs.push(path, format!("invalid path_prefix {s:?}: {why}"));
            None
        }
    }
}

/// A route's `host`: a DNS name, or `*.` followed by one. Lower-cased.
pub fn host_pattern(errs: &mut ConfigErrors, path: &str, s: &str) -> Option<String> {
    let lower = s.trim_end_matches('.').to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        errs.push(
            path,
            format!("invalid host {s:?}: expected a name such as example.com or *.example.com"),
        );
        return None;
    }
    Some(lower)
}

/// A count that must be at least 1.
pub fn at_least_one(errs: &mut ConfigErrors, path: &str, n: usize) -> usize {
    if n == 0 {
        errs.push(path, "must be at least 1");
    }
    n
}

/// A duration that must be longer than zero.
pub fn nonzero(errs: &mut ConfigErrors, path: &str, d: std::time::Duration) -> std::time::Duration {
    if d.is_zero() {
        errs.push(path, "must be longer than 0s");
    }
    d
}
