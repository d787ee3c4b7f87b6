//! The canonical view of a request: the one host and one path that routing, auth, limits,
//! redirects and every later policy judge, computed once before routing, as the origin will
//! read them. What is forwarded is made to agree with it (`View::target`).
//!
//! - **Host**: from the absolute-form target's authority when there is one (RFC 9112 3.2.2),
//!   else from `Host`. A reg-name (letters, digits, `-`, `_`, `.`), an IPv4 address or a
//!   bracketed IPv6 literal, then an optional numeric port; anything else (`h:abc`, `h:80:80`,
//!   `h/admin/`, `h\`, `h#`, `h?`, userinfo) is 400, as nginx answers. Lower-cased, the port
//!   and one trailing dot removed. An empty `Host` (or none, in HTTP/1.0) names no host: such a
//!   request matches host-less routes only.
//! - **Path**: percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded, the hex of
//!   every other escape upper-cased, runs of `/` merged (nginx's `merge_slashes`). Refused with
//!   400: a `.` or `..` segment (raw or encoded, and also where `%2F` or `%5C` would split one
//!   out for an origin that decodes them), a raw `\` (not a URI character; some origins read it
//!   as `/`), `%00`, a `#`, a malformed escape, a control, space or non-ASCII byte. `%2F` and `%5C`
//!   stay encoded in the view; the router also refuses a request where reading them as `/`
//!   would pick another route ([`View::separated_path`]).

use http::{header, HeaderValue};
use pingora::http::authority::{is_http_family_scheme, raw_target_authority, RawTargetAuthority};
use pingora::http::RequestHeader;
use std::borrow::Cow;

/// Why a request is refused before routing: the status and a one-line body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub why: &'static str,
}

const fn bad(why: &'static str) -> Refusal {
    Refusal { status: 400, why }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Lower-case, without port or trailing dot; `None` when the request names no host.
    pub host: Option<String>,
    /// The authority as the client gave it (port kept): what `Host` and `X-Forwarded-Host` carry
    /// upstream. `None` with `host`.
    pub authority: Option<HeaderValue>,
    /// An HTTP/1 absolute-form target (`GET http://h/x`): forwarded in origin-form with its
    /// authority as `Host`.
    pub absolute_form: bool,
    /// The canonical path (no query). `*` for `OPTIONS *`.
    pub path: String,
    /// The query as received, without its `?`.
    pub query: Option<String>,
    /// `path` differs from the path the client sent: the forwarded request carries `path`.
    pub rewritten: bool,
}

impl View {
    /// The view of `req`, or why it must be refused.
    pub fn of(req: &RequestHeader) -> Result<View, Refusal> {
        let raw = req.raw_path();
        let (target_authority, pq) = match raw_target_authority(raw) {
            RawTargetAuthority::None => (None, raw),
            RawTargetAuthority::Absolute {
                scheme,
                authority,
                path_and_query,
            } if is_http_family_scheme(scheme) => (Some(authority), path_and_query),
            _ => return Err(bad("an ambiguous or non-HTTP request target\n")),
        };
        let (host, authority) = host_of(req, target_authority)?;
        if pq.contains(&b'#') {
            return Err(bad("a fragment (#) in the request target\n"));
        }
        let (raw_path, query) = match pq.iter().position(|b| *b == b'?') {
            Some(q) => (&pq[..q], Some(&pq[q + 1..])),
            None => (pq, None),
        };
        let query = match query {
            Some(q) => Some(
                std::str::from_utf8(q)
                    .map_err(|_| bad("a byte that is not allowed in the query\n"))?
                    .to_owned(),
            ),
            None => None,
        };
        let (path, rewritten) = match raw_path {
            b"*" if query.is_none() => ("*".to_owned(), false),
            // `http://h` and `http://h?q`: RFC 9112 3.2.2's empty path is `/`.
            b"" if target_authority.is_some() => ("/".to_owned(), true),
            _ => canonical_path(raw_path)?,
        };
        Ok(View {
            host,
            authority,
            absolute_form: target_authority.is_some(),
            path,
            query,
            rewritten,
        })
    }

    /// The path an origin that decodes `%2F` and `%5C` as separators would see, when that
    /// differs from `path`; routing on it must give the same route.
    pub fn separated_path(&self) -> Option<String> {
        separated(&self.path)
    }

    /// The request target to forward when it must differ from what the client sent (the path
    /// was canonicalized, a prefix stripped, or the target was absolute-form), `None` to forward
    /// the client's own. `strip`: the route's prefix when its `strip_prefix` is on.
    pub fn target(&self, strip: Option<&str>) -> Option<String> {
        if !(self.rewritten || self.absolute_form || strip.is_some()) {
            return None;
        }
        let path = match strip {
            Some(prefix) => crate::routing::strip_prefix(&self.path, prefix),
            None => self.path.clone(),
        };
        Some(match &self.query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        })
    }
}

/// The host named by `req` (canonical, and as given), or 400: an absolute-form target's
/// authority, else HTTP/2's `:authority`, else `Host`.
fn host_of(
    req: &RequestHeader,
    target_authority: Option<&[u8]>,
) -> Result<(Option<String>, Option<HeaderValue>), Refusal> {
    let mut hosts = req.headers.get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("more than one Host header\n"));
    }
    let authority = target_authority.or(req.uri.authority().map(|a| a.as_str().as_bytes()));
    let given = match authority {
        Some(a) => Some(HeaderValue::from_bytes(a).map_err(|_| bad("an invalid authority\n"))?),
        None => header.cloned(),
    };
    match given {
        None => Ok((None, None)),
        Some(v) if v.is_empty() => Ok((None, None)),
        Some(v) => {
            let host = canonical_host(v.as_bytes())?;
            Ok((Some(host), Some(v)))
        }
    }
}

/// `Example.COM.:8080` -> `example.com`; `[::1]:80` -> `[::1]`. 400 for anything that is not
/// a reg-name, IPv4 address or IPv6 literal with an optional numeric port.
pub fn canonical_host(raw: &[u8]) -> Result<String, Refusal> {
    const INVALID: Refusal = bad("an invalid Host\n");
    let (name, port) = if raw.first() == Some(&b'[') {
        let end = raw.iter().position(|b| *b == b']').ok_or(INVALID)?;
        let literal = std::str::from_utf8(&raw[1..end]).map_err(|_| INVALID)?;
        literal.parse::<std::net::Ipv6Addr>().map_err(|_| INVALID)?;
        let rest = &raw[end + 1..];
        let port = match rest.split_first() {
            None => None,
            Some((b':', port)) => Some(port),
            Some(_) => return Err(INVALID),
        };
        (&raw[..=end], port)
    } else {
        match raw.iter().position(|b| *b == b':') {
            Some(colon) => (&raw[..colon], Some(&raw[colon + 1..])),
            None => (raw, None),
        }
    };
    if let Some(port) = port {
        // RFC 3986 allows an empty port (`host:`); a number must fit in 16 bits.
        let digits = port.iter().all(u8::is_ascii_digit);
        let fits = port.is_empty()
            || std::str::from_utf8(port)
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .is_some();
        if !digits || !fits {
            return Err(INVALID);
        }
    }
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.first() != Some(&b'[') {
        let labels_ok = !name.is_empty()
            && name.len() <= 253
            && name.split(|b| *b == b'.').all(|label| {
                !label.is_empty()
                    && label
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            });
        if !labels_ok {
            return Err(INVALID);
        }
    }
    let text = std::str::from_utf8(name).map_err(|_| INVALID)?;
    Ok(text.to_ascii_lowercase())
}

/// The canonical form of a raw path (no query) and whether it differs from the raw one.
pub fn canonical_path(raw: &[u8]) -> Result<(String, bool), Refusal> {
    let mut out = String::with_capacity(raw.len());
    let mut changed = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let hex = |j: usize| raw.get(j).and_then(|c| (*c as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return Err(bad("a malformed %-escape in the path\n"));
                };
                let c = (hi * 16 + lo) as u8;
                if c == 0 {
                    // nginx refuses it too: C-string origins end the path there.
                    return Err(bad("an encoded NUL (%00) in the path\n"));
                }
                if is_unreserved(c) {
                    out.push(c as char);
                    changed = true;
                } else {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    let upper = [b'%', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]];
                    changed |= raw[i..i + 3] != upper;
                    out.extend(upper.iter().map(|b| *b as char));
                }
                i += 3;
                continue;
            }
            b'/' if out.ends_with('/') => changed = true,
            b'\\' => return Err(bad("a backslash in the path\n")),
            0x21..=0x7e => out.push(b as char),
            _ => return Err(bad("a byte that is not allowed in the path\n")),
        }
        i += 1;
    }
    if !out.starts_with('/') {
        return Err(bad("the path must start with /\n"));
    }
    if has_dot_segment(&out) {
        return Err(bad("the path holds . or .. segments\n"));
    }
    Ok((out, changed))
}

/// RFC 3986 2.3: decoding these never changes what a URI means.
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// A `.` or `..` segment in a canonical path, also where `%2F` or `%5C` would split one out:
/// `/public/../admin` and `/a/..%2Fb` are refused rather than routed by their first segment.
fn has_dot_segment(path: &str) -> bool {
    let dotted = |seg: &str| seg == "." || seg == "..";
    match separated(path) {
        Some(s) => s.split('/').any(dotted),
        None => path.split('/').any(dotted),
    }
}

/// `path` with `%2F` and `%5C` read as `/` and slashes merged, when it holds either.
fn separated(path: &str) -> Option<String> {
    if !path.contains("%2F") && !path.contains("%5C") {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for c in path.replace("%2F", "/").replace("%5C", "/").chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    Some(out)
}

/// The raw value of parameter `name` in a query string (`a=1&room=blue`), the first one.
pub fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The path a route prefix in the config stands for, in canonical form (a prefix written with
/// `%7E` or `//` would otherwise never match). `Err`: why it can never match a request.
pub fn canonical_prefix(prefix: &str) -> Result<Cow<'_, str>, &'static str> {
    match canonical_path(prefix.as_bytes()) {
        Ok((p, true)) => Ok(Cow::Owned(p)),
        Ok((_, false)) => Ok(Cow::Borrowed(prefix)),
        Err(r) => Err(r.why.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(target: &str, headers: &[(&str, &str)]) -> Result<View, Refusal> {
        // Pingora's own parser refuses some targets before any view is taken.
        let Ok(mut r) = RequestHeader::build("GET", target.as_bytes(), None) else {
            return Err(bad("unparsed"));
        };
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        View::of(&r)
    }

    #[test]
    fn plain_requests_are_their_own_view() {
        let v = view("/a/b.c?x=%zz", &[("Host", "Example.com:8080")]).unwrap();
        assert_eq!(v.host.as_deref(), Some("example.com"));
        assert_eq!(v.authority.unwrap(), "Example.com:8080");
        assert_eq!((v.path.as_str(), v.rewritten), ("/a/b.c", false));
        assert_eq!(v.query.as_deref(), Some("x=%zz"));
        assert!(!v.absolute_form);
        let v = view("/x", &[]).unwrap();
        assert_eq!((v.host, v.authority), (None, None));
        assert_eq!(view("/x", &[("Host", "")]).unwrap().host, None);
    }

    #[test]
    fn the_absolute_form_authority_is_the_host() {
        let v = view("http://Admin.test/x?q", &[]).unwrap();
        assert_eq!(v.host.as_deref(), Some("admin.test"));
        assert_eq!(v.authority.clone().unwrap(), "Admin.test");
        assert!(v.absolute_form);
        assert_eq!(v.target(None).as_deref(), Some("/x?q"));
        assert_eq!(view("http://admin.test", &[]).unwrap().path, "/");
    }

    #[test]
    fn encoded_unreserved_characters_and_double_slashes_are_canonicalized() {
        for (raw, want) in [
            ("/%61dmin/x", "/admin/x"),
            ("/ad%6Din/x", "/admin/x"),
            ("//admin//x", "/admin/x"),
            ("/%7euser/%2fa", "/~user/%2Fa"),
            ("/a%20b", "/a%20b"),
        ] {
            let v = view(raw, &[("Host", "h")]).unwrap();
            assert_eq!(v.path, want, "{raw}");
            assert_eq!(v.rewritten, raw != want, "{raw}");
        }
        let v = view("/%61/b?q=%61", &[("Host", "h")]).unwrap();
        assert_eq!(v.target(None).as_deref(), Some("/a/b?q=%61"));
        assert_eq!(v.target(Some("/a/")).as_deref(), Some("/b?q=%61"));
    }

    #[test]
    fn hostile_paths_are_refused() {
        for raw in [
            "/a/../b",
            "/..",
            "/a/./b",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/..%2fb",
            "/a/..%5Cb",
            "/a/.%2F",
            "/a\\b",
            "/a/%zz",
            "/a/%4",
            "/a%00",
            "/\u{e9}",
        ] {
            assert_eq!(
                view(raw, &[("Host", "h")]).unwrap_err().status,
                400,
                "{raw}"
            );
        }
    }

    #[test]
    fn hostile_hosts_are_refused() {
        for h in [
            "admin.test:abc",
            "admin.test:80:80",
            "h/admin/",
            "h\\",
            "h#",
            "h?",
            "user@h",
            "a..b",
            ".",
            "h:99999",
            "[::1",
            "[zz]",
            "[::1]x",
            "h h",
        ] {
            assert_eq!(view("/", &[("Host", h)]).unwrap_err().status, 400, "{h}");
        }
        assert!(view("/", &[("Host", "a"), ("Host", "a")]).is_err());
        for (h, want) in [
            ("h:", "h"),
            ("H.Test.", "h.test"),
            ("[::1]:80", "[::1]"),
            ("10.0.0.1:8080", "10.0.0.1"),
            ("under_score", "under_score"),
        ] {
            let v = view("/", &[("Host", h)]).unwrap();
            assert_eq!(v.host.as_deref(), Some(want), "{h}");
        }
    }

    #[test]
    fn encoded_separators_are_seen_both_ways() {
        let v = view("/api/a%2fb", &[("Host", "h")]).unwrap();
        assert_eq!(v.path, "/api/a%2Fb");
        assert_eq!(v.separated_path().as_deref(), Some("/api/a/b"));
        assert_eq!(
            view("/%2F%2Fx", &[("Host", "h")])
                .unwrap()
                .separated_path()
                .as_deref(),
            Some("/x")
        );
        assert_eq!(
            view("/a/b", &[("Host", "h")]).unwrap().separated_path(),
            None
        );
    }

    #[test]
    fn config_prefixes_are_canonicalized() {
        assert_eq!(canonical_prefix("/%7Euser/").unwrap(), "/~user/");
        assert_eq!(canonical_prefix("/api/").unwrap(), "/api/");
        assert!(canonical_prefix("/a/../b/").is_err());
    }
}
