//! Request and response header rewriting: the client IP through `trusted_proxies`, the
//! X-Forwarded-* and X-Real-IP headers, and per-route set/add/remove rules.

use crate::config::schema::HeaderRulesSection;
use crate::config::{validate, ConfigErrors};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The set of proxies whose X-Forwarded-For hops are believed.
#[derive(Debug, Default, Clone)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the connecting peer, unless it is trusted, in which case the
    /// X-Forwarded-For chain is walked from the right past trusted hops (nginx's
    /// `real_ip_recursive on`). A hop that does not parse ends the walk at the last good one,
    /// so garbage from a client never becomes the client IP.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        let values: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
        for value in values.iter().rev() {
            let Ok(text) = value.to_str() else {
                return client;
            };
            for hop in text.rsplit(',') {
                let Some(ip) = parse_hop(hop) else {
                    return client;
                };
                client = ip;
                if !self.contains(ip) {
                    return client;
                }
            }
        }
        client
    }
}

/// A hop as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| canonical(a.ip()))
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, from dual-stack sockets) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What the X-Forwarded-* headers of one upstream request should say.
pub struct Forwarded<'a> {
    /// The connecting peer (the previous hop).
    pub peer: IpAddr,
    pub peer_trusted: bool,
    pub client: IpAddr,
    pub tls: bool,
    pub host: Option<&'a HeaderValue>,
}

/// Sets X-Forwarded-For/Proto/Host and X-Real-IP on the upstream request.
///
/// From an untrusted peer every incoming value is replaced: a client cannot forge its address
/// or scheme. From a trusted one the chain is extended and its Proto/Host are kept.
/// Names go out as nginx and HAProxy spell them; the peer's address is formatted once.
pub fn apply_forwarded(req: &mut RequestHeader, f: &Forwarded) {
    drop_underscore_spellings(req);
    let peer = canonical(f.peer);
    let peer_value = ip_value(peer);
    let prior = || {
        let values = req.headers.get_all(&X_FORWARDED_FOR).iter();
        let chain: Vec<&str> = values.filter_map(|v| v.to_str().ok()).collect();
        (!chain.is_empty()).then(|| format!("{}, {peer}", chain.join(", ")))
    };
    let xff = match f.peer_trusted.then(prior).flatten() {
        // Hops of valid values joined by ", " and an address: still a valid value.
        Some(chain) => HeaderValue::try_from(chain).unwrap_or_else(|_| peer_value.clone()),
        None => peer_value.clone(),
    };
    let real_ip = match canonical(f.client) == peer {
        true => peer_value,
        false => ip_value(canonical(f.client)),
    };
    // Insert cannot fail: the names are valid and the values are HeaderValues already.
    let _ = req.insert_header("X-Forwarded-For", xff);
    let _ = req.insert_header("X-Real-IP", real_ip);
    if !(f.peer_trusted && req.headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = HeaderValue::from_static(if f.tls { "https" } else { "http" });
        let _ = req.insert_header("X-Forwarded-Proto", proto);
    }
    if !(f.peer_trusted && req.headers.contains_key(&X_FORWARDED_HOST)) {
        match f.host.cloned() {
            Some(h) => {
                let _ = req.insert_header("X-Forwarded-Host", h);
            }
            None => {
                req.remove_header(&X_FORWARDED_HOST);
            }
        }
    }
}

/// Drops fields whose names spell a forwarding header with `_` (`X_Forwarded_For`,
/// `X-Real_IP`): CGI and WSGI origins read both spellings as one variable (`HTTP_X_FORWARDED_FOR`),
/// so a client could set what portico's own field says. Costs a scan of the names only.
fn drop_underscore_spellings(req: &mut RequestHeader) {
    const FORWARDING: [&str; 6] = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-real-ip",
    ];
    let spoofs: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|n| {
            let n = n.as_str().as_bytes();
            n.contains(&b'_')
                && FORWARDING.iter().any(|f| {
                    f.len() == n.len()
                        && f.bytes()
                            .zip(n)
                            .all(|(f, c)| f == *c || (f == b'-' && *c == b'_'))
                })
        })
        .cloned()
        .collect();
    for name in &spoofs {
        req.remove_header(name);
    }
}

/// An address as a header value, formatted on the stack (no String grown digit by digit); an
/// IPv4 address digit by digit rather than through `fmt` (a fifth of the cost, once per request).
fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 45]; // the longest IPv6 text form
    let len = match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = match octet {
                    100.. => 0,
                    10.. => 1,
                    _ => 2,
                };
                for d in &digits[skip..] {
                    buf[len] = b'0' + d;
                    len += 1;
                }
            }
            len
        }
        IpAddr::V6(_) => {
            use std::io::Write;
            let mut rest = &mut buf[..];
            let _ = write!(rest, "{ip}");
            45 - rest.len()
        }
    };
    HeaderValue::from_bytes(&buf[..len]).expect("an address is a valid header value")
}

/// Headers whose presence sends a request through Pingora's full proxy loop: hop-by-hop fields
/// its upstream policy strips or checks (RFC 9110 7.6.1), and those that change framing.
/// (Names rather than strings: a lookup by string parses the name first.)
static NOT_PLAIN: [HeaderName; 9] = [
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Whether an HTTP/1 request head is plain enough for portico's own forwarding loop: an
/// origin-form target, exactly one Host, none of the `NOT_PLAIN` fields, and `Connection` naming
/// only `keep-alive` or `close` (both concern this hop alone, so the upstream request drops
/// `Connection` and needs no other policy). Anything else (Connection nominating other fields,
/// absolute-form targets, upgrades, several Host fields) takes Pingora's loop, whose upstream
/// request policy checks and strips it. The body is checked by the caller.
pub fn is_plain(req: &RequestHeader) -> bool {
    req.uri.authority().is_none()
        && origin_form_without_hop_fields(req)
        && req.headers.get_all(http::header::HOST).iter().count() == 1
        && tokens(&req.headers, http::header::CONNECTION)
            .all(|t| t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close"))
}

/// The same for an HTTP/2 request head: not CONNECT (nor extended CONNECT, which has a
/// `:path`), an origin-form `:path`, none of the `NOT_PLAIN` fields nor `Connection` (the h2
/// codec refuses most of them, but `TE: trailers` is allowed). `Host` comes from `:authority`
/// (`request::rewrite`).
pub fn is_plain_h2(req: &RequestHeader) -> bool {
    req.method != http::Method::CONNECT
        && origin_form_without_hop_fields(req)
        && !req.headers.contains_key(http::header::CONNECTION)
}

/// What both versions of a plain head have: an origin-form target and none of the `NOT_PLAIN`
/// fields.
fn origin_form_without_hop_fields(req: &RequestHeader) -> bool {
    req.raw_path().first() == Some(&b'/')
        && NOT_PLAIN.iter().all(|name| !req.headers.contains_key(name))
}

/// The comma-separated tokens of every `name` field, trimmed, empty ones skipped
/// (`Connection: keep-alive, Upgrade`), as bytes: a value need not be text.
pub fn tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The values of every cookie named `name` in the `Cookie` fields, in order (`a=1; srv=x`).
pub fn cookies<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
        })
}

/// A route's `request_headers` or `response_headers`, names and values parsed once.
/// Applied in the order remove, set, add.
#[derive(Debug, Default, Clone)]
pub struct HeaderRules {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderRules {
    pub fn build(
        section: Option<&HeaderRulesSection>,
        path: &str,
        errs: &mut ConfigErrors,
    ) -> Self {
        let Some(s) = section else {
            return HeaderRules::default();
        };
        let pairs = |map: &std::collections::BTreeMap<String, String>,
                     key: &str,
                     errs: &mut ConfigErrors| {
            map.iter()
                .filter_map(|(n, v)| {
                    let p = format!("{path}.{key}.{n}");
                    let name = validate::header_name(errs, &p, n);
                    let value = validate::header_value(errs, &p, v);
                    Some((name?, value?))
                })
                .collect::<Vec<_>>()
        };
        let set = pairs(&s.set, "set", errs);
        let add = pairs(&s.add, "add", errs);
        let remove = s
            .remove
            .iter()
            .enumerate()
            .filter_map(|(i, n)| validate::header_name(errs, &format!("{path}.remove[{i}]"), n))
            .collect();
        HeaderRules { remove, set, add }
    }

    /// Applies the rules to a request or response header: remove, then set (replacing every
    /// value), then add (appending).
    pub fn apply(&self, h: &mut impl HeaderEdit) {
        self.remove.iter().for_each(|n| h.remove(n));
        self.set.iter().for_each(|(n, v)| h.set(n, v));
        self.add.iter().for_each(|(n, v)| h.add(n, v));
    }
}

/// Pingora's request and response headers keep a case-preserving name map beside the
/// `HeaderMap`: edit them only through their own methods, which keep both in step.
pub trait HeaderEdit {
    fn remove(&mut self, name: &HeaderName);
    fn set(&mut self, name: &HeaderName, value: &HeaderValue);
    fn add(&mut self, name: &HeaderName, value: &HeaderValue);
}

macro_rules! header_edit {
    ($t:ty) => {
        impl HeaderEdit for $t {
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            // Names and values were validated when the config was compiled: these cannot fail.
            fn set(&mut self, name: &HeaderName, value: &HeaderValue) {
                let _ = self.insert_header(name.clone(), value.clone());
            }
            fn add(&mut self, name: &HeaderName, value: &HeaderValue) {
                let _ = self.append_header(name.clone(), value.clone());
            }
        }
    };
}
header_edit!(RequestHeader);
header_edit!(ResponseHeader);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_format_as_their_text_form() {
        let cases = [
            "0.0.0.0",
            "127.0.0.1",
            "9.10.99.100",
            "255.255.255.255",
            "203.0.113.9",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ];
        for text in cases {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_value(ip).to_str().unwrap(), ip.to_string(), "{text}");
        }
        for octet in 0..=255u8 {
            let ip = IpAddr::from([octet, 255 - octet, octet / 3, 7]);
            assert_eq!(ip_value(ip).to_str().unwrap(), ip.to_string());
        }
    }

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ])
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let ip = trusted().client_ip("203.0.113.9".parse().unwrap(), &xff(&["1.1.1.1"]));
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let h = xff(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        let ip = trusted().client_ip("127.0.0.1".parse().unwrap(), &h);
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_hop_stops_at_the_last_good_one() {
        let h = xff(&["6.6.6.6, not-an-ip, 10.2.2.2"]);
        let ip = trusted().client_ip("127.0.0.1".parse().unwrap(), &h);
        assert_eq!(ip, "10.2.2.2".parse::<IpAddr>().unwrap());
    }

    fn head(raw: &str) -> RequestHeader {
        let mut lines = raw.split("\r\n");
        let mut first = lines.next().unwrap().split(' ');
        let (method, target) = (first.next().unwrap(), first.next().unwrap());
        let mut req = RequestHeader::build(method, target.as_bytes(), None).unwrap();
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(": ").unwrap();
            req.append_header(name.to_owned(), value).unwrap();
        }
        req
    }

    #[test]
    fn plain_requests_are_the_common_shapes() {
        for raw in [
            "GET /a?b=c HTTP/1.1\r\nHost: x\r\n",
            "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n",
            "DELETE /r HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, close\r\nCookie: a=b\r\n",
        ] {
            assert!(is_plain(&head(raw)), "{raw:?}");
        }
    }

    /// What a client could smuggle past a policy-free path goes to Pingora's loop instead:
    /// Connection nominating X-Forwarded-For, an absolute-form target with another authority,
    /// a second Host, hop-by-hop fields, upgrades.
    #[test]
    fn anything_a_hop_policy_must_judge_is_not_plain() {
        for raw in [
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: x-forwarded-for\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, x-real-ip\r\n",
            "GET http://evil/ HTTP/1.1\r\nHost: x\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n",
            "GET / HTTP/1.0\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic eA==\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nKeep-Alive: timeout=5\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n",
        ] {
            assert!(!is_plain(&head(raw)), "{raw:?}");
        }
    }

    /// An HTTP/2 head as Pingora's h2 server builds it: from the request's parts.
    fn h2_head(method: &str, uri: &str, fields: &[(&str, &str)]) -> RequestHeader {
        let mut req = http::Request::builder().method(method).uri(uri);
        for (name, value) in fields {
            req = req.header(*name, *value);
        }
        RequestHeader::from(req.body(()).unwrap().into_parts().0)
    }

    #[test]
    fn plain_http2_requests_have_a_path_and_no_hop_fields() {
        assert!(is_plain_h2(&h2_head(
            "GET",
            "https://x/a?b=c",
            &[("cookie", "a=b")]
        )));
        assert!(is_plain_h2(&h2_head("HEAD", "https://x/", &[])));
        for req in [
            h2_head("CONNECT", "x:443", &[]),
            h2_head("CONNECT", "https://x/chat", &[]), // extended CONNECT has a :path
            h2_head("GET", "https://x/", &[("te", "trailers")]),
            h2_head("GET", "https://x/", &[("connection", "x-forwarded-for")]),
            h2_head(
                "GET",
                "https://x/",
                &[("proxy-authorization", "Basic eA==")],
            ),
            h2_head("GET", "*", &[]),
        ] {
            assert!(!is_plain_h2(&req), "{req:?}");
        }
    }

    #[test]
    fn mapped_ipv6_is_ipv4() {
        let ip = trusted().client_ip("::ffff:127.0.0.1".parse().unwrap(), &xff(&["192.0.2.1"]));
        assert_eq!(ip, "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
