//! Checks on a request's framing and size before it is routed: what a hostile client sends
//! that Pingora would forward (host and path are judged by `request::view`). Each answer is a
//! clean 4xx; the connection is then closed.

use http::{header, Version};
use pingora::http::RequestHeader;

/// The most header bytes (request line and fields) a request may carry: nginx's default
/// (4 buffers of 8 KiB); Pingora alone accepts about 1 MiB.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// `Err((status, why))` for a request that must not be forwarded.
pub fn check(req: &RequestHeader) -> Result<(), (u16, &'static str)> {
    let h = &req.headers;
    if req.version == Version::HTTP_11
        && !h.contains_key(header::HOST)
        && req.uri.authority().is_none()
    {
        return Err((400, "an HTTP/1.1 request needs a Host header\n"));
    }
    // Two framings, or a Content-Length that is not one plain number, is how requests are
    // smuggled past a proxy that reads the body one way to a server that reads it another.
    let lengths: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().collect();
    // (Pingora's HTTP/1 reader already drops the length in that case and closes the connection
    // after the response; this catches any other way a request arrives with both.)
    if !lengths.is_empty() && h.contains_key(header::TRANSFER_ENCODING) {
        return Err((400, "Content-Length and Transfer-Encoding together\n"));
    }
    if lengths.len() > 1
        || lengths
            .iter()
            .any(|v| v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit))
    {
        return Err((400, "Content-Length must be one number\n"));
    }
    let size = req.method.as_str().len()
        + req.uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + h.iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if size > MAX_HEADER_BYTES {
        return Err((431, "request header fields too large\n"));
    }
    connection_nominations(req)?;
    Ok(())
}

/// The most fields a `Connection` header may nominate (Pingora's own limit).
const MAX_NOMINATIONS: usize = 10;

/// `Connection` may name hop-by-hop fields for this hop to drop, but not the fields portico
/// sets for the peer (`Connection: X-Forwarded-For` would have a proxy strip the client
/// address it just wrote), nor malformed or too many tokens: 400, for plain requests and
/// WebSocket upgrades alike (Pingora's upstream policy refuses the same for its own loop).
fn connection_nominations(req: &RequestHeader) -> Result<(), (u16, &'static str)> {
    const PROTECTED: [&str; 6] = [
        "host",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "forwarded",
    ];
    let tokens = crate::headers::tokens(&req.headers, header::CONNECTION);
    for (n, token) in tokens.enumerate() {
        if n + 1 >= MAX_NOMINATIONS {
            return Err((400, "too many Connection options\n"));
        }
        if !token.iter().all(|b| is_tchar(*b)) {
            return Err((400, "an invalid Connection option\n"));
        }
        if PROTECTED
            .iter()
            .any(|p| token.eq_ignore_ascii_case(p.as_bytes()))
        {
            return Err((400, "Connection names a header the proxy sets\n"));
        }
    }
    Ok(())
}

/// RFC 9110 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(line: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let (method, path) = line.split_once(' ').unwrap();
        let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn well_formed_requests_pass() {
        assert!(check(&req("GET /a/b.c/..d", &[("Host", "x")])).is_ok());
        assert!(check(&req("POST /", &[("Host", "x"), ("Content-Length", "5")])).is_ok());
    }

    #[test]
    fn hostile_requests_are_refused() {
        let status = |r: RequestHeader| check(&r).unwrap_err().0;
        assert_eq!(status(req("GET /", &[])), 400);
        assert_eq!(
            status(req(
                "POST /",
                &[
                    ("Host", "x"),
                    ("Content-Length", "5"),
                    ("Transfer-Encoding", "chunked")
                ]
            )),
            400
        );
        assert_eq!(
            status(req("POST /", &[("Host", "x"), ("Content-Length", "5, 5")])),
            400
        );
        assert_eq!(
            status(req(
                "POST /",
                &[
                    ("Host", "x"),
                    ("Content-Length", "5"),
                    ("Content-Length", "5")
                ]
            )),
            400
        );
        assert_eq!(
            status(req("POST /", &[("Host", "x"), ("Content-Length", "+5")])),
            400
        );
        assert_eq!(
            status(req(
                "GET /",
                &[("Host", "x"), ("X-Big", &"a".repeat(MAX_HEADER_BYTES))]
            )),
            431
        );
        for c in [
            "Upgrade, X-Forwarded-For",
            "upgrade, Host",
            "x-real-ip",
            "Forwarded",
            "\"x-forwarded-proto\"",
            "a, b, c, d, e, f, g, h, i, j, k",
        ] {
            assert_eq!(
                status(req("GET /", &[("Host", "x"), ("Connection", c)])),
                400,
                "{c}"
            );
        }
        assert!(check(&req(
            "GET /",
            &[("Host", "x"), ("Connection", "keep-alive, Upgrade, X-Foo")]
        ))
        .is_ok());
    }
}
