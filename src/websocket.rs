//! WebSocket upgrades, handled by portico end to end: validate the request, hand it to a peer,
//! read the peer's answer, then either tunnel (101) or relay the refusal with HTTP semantics
//! and close, so an origin that answers 200 can never open a raw channel ("smuggling").

use crate::headers::tokens;
use bytes::{BufMut, Bytes, BytesMut};
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Stream;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest response head a peer may send to an upgrade.
const MAX_HEAD: usize = 64 * 1024;

/// What a request's `Upgrade` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Upgrade {
    /// No upgrade, or an upgrade to something other than WebSocket: plain HTTP (Pingora does
    /// not forward other upgrades), with every route rule applied as to any request.
    #[default]
    No,
    /// A well-formed RFC 6455 opening handshake.
    WebSocket,
    /// A WebSocket upgrade that is malformed: answer `status` with `why`.
    Invalid { status: u16, why: &'static str },
}

/// RFC 6455 section 4.2.1, checked before anything reaches a peer.
pub fn check(req: &RequestHeader) -> Upgrade {
    if !tokens(&req.headers, header::UPGRADE).any(|t| t.eq_ignore_ascii_case(b"websocket")) {
        return Upgrade::No;
    }
    let invalid = |why| Upgrade::Invalid { status: 400, why };
    if req.method != http::Method::GET {
        return invalid("a websocket upgrade must be a GET\n");
    }
    if req.version != http::Version::HTTP_11 {
        return invalid("a websocket upgrade needs HTTP/1.1\n");
    }
    if !tokens(&req.headers, header::CONNECTION).any(|t| t.eq_ignore_ascii_case(b"upgrade")) {
        return invalid("Connection must contain upgrade\n");
    }
    // A body on an upgrade request would be tunnelled as if the client had sent frames.
    if req.headers.contains_key(header::TRANSFER_ENCODING)
        || req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
    {
        return invalid("a websocket upgrade has no body\n");
    }
    let keys: Vec<_> = req
        .headers
        .get_all(header::SEC_WEBSOCKET_KEY)
        .iter()
        .collect();
    if keys.len() != 1 || !is_websocket_key(keys[0].as_bytes()) {
        return invalid("Sec-WebSocket-Key must be 16 bytes in base64\n");
    }
    let version = req
        .headers
        .get_all(header::SEC_WEBSOCKET_VERSION)
        .iter()
        .collect::<Vec<_>>();
    if version.len() != 1 || version[0].as_bytes() != b"13" {
        return Upgrade::Invalid {
            status: 426,
            why: "unsupported Sec-WebSocket-Version; this server speaks 13\n",
        };
    }
    Upgrade::WebSocket
}

/// 16 bytes in base64: 22 characters of the alphabet, then `==`.
fn is_websocket_key(k: &[u8]) -> bool {
    let k = k.trim_ascii();
    k.len() == 24
        && k.ends_with(b"==")
        && k[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// The upgrade request as the peer gets it: hop-by-hop headers removed but for `Upgrade` and
/// `Connection: Upgrade`, then `rewrite` (the forwarding headers, the canonical target with
/// strip_prefix, the route's rules: the proxy's one rewrite for every request).
pub fn upstream_request(
    original: &RequestHeader,
    rewrite: impl FnOnce(&mut RequestHeader) -> pingora::Result<()>,
) -> pingora::Result<Vec<u8>> {
    let mut req = original.clone();
    let nominated: Vec<String> = tokens(&original.headers, header::CONNECTION)
        .filter(|t| !t.eq_ignore_ascii_case(b"upgrade"))
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    for name in &nominated {
        req.remove_header(name.as_str());
    }
    for name in [
        "keep-alive",
        "te",
        "trailer",
        "proxy-connection",
        "transfer-encoding",
        "content-length",
    ] {
        req.remove_header(name);
    }
    req.insert_header(header::CONNECTION, "Upgrade")?;
    rewrite(&mut req)?;
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut buf = BytesMut::with_capacity(1024);
    buf.put_slice(format!("GET {target} HTTP/1.1\r\n").as_bytes());
    req.header_to_h1_wire(&mut buf);
    buf.put_slice(b"\r\n");
    Ok(buf.to_vec())
}

/// The peer's answer to an upgrade.
pub struct Answer {
    pub status: u16,
    /// The response head exactly as the peer sent it.
    pub raw_head: Bytes,
    pub head: ResponseHeader,
    /// Bytes the peer sent after its head (tunnel data after a 101, or body).
    pub rest: Bytes,
}

/// Sends `request` and reads the response head, within `timeout`.
pub async fn exchange(peer: &mut Stream, request: &[u8], timeout: Duration) -> io::Result<Answer> {
    peer.write_all(request).await?;
    peer.flush().await?;
    let mut buf = BytesMut::with_capacity(2048);
    let read_head = async {
        loop {
            if peer.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed before answering the upgrade",
                ));
            }
            let mut hdrs = [httparse::EMPTY_HEADER; 128];
            let mut resp = httparse::Response::new(&mut hdrs);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    let mut head = ResponseHeader::build(status, Some(resp.headers.len()))
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                    for h in resp.headers.iter() {
                        let _ = head.append_header(h.name.to_owned(), h.value);
                    }
                    let raw_head = buf.split_to(len).freeze();
                    return Ok(Answer {
                        status,
                        raw_head,
                        head,
                        rest: buf.split().freeze(),
                    });
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
                Ok(httparse::Status::Partial) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "response head too large",
                    ))
                }
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad response head: {e}"),
                    ))
                }
            }
        }
    };
    tokio::time::timeout(timeout, read_head)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer did not answer the upgrade in time",
            )
        })?
}

/// A 101 that really switches to WebSocket (RFC 6455 4.2.2). Anything else is relayed as a
/// plain response and never tunnelled.
/// The peer must prove it read this handshake: `Sec-WebSocket-Accept` is base64(SHA-1(the
/// client's key + the RFC 6455 GUID)); a 101 without it is not WebSocket (HAProxy's
/// websocket.vtc answers it 502 too).
pub fn is_switch(answer: &Answer, request: &RequestHeader) -> bool {
    let h = &answer.head.headers;
    let has = |name, token: &str| tokens(h, name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()));
    let accepted = match (
        request.headers.get(header::SEC_WEBSOCKET_KEY),
        h.get(header::SEC_WEBSOCKET_ACCEPT),
    ) {
        (Some(key), Some(accept)) => {
            accept.as_bytes().trim_ascii() == accept_key(key.as_bytes().trim_ascii()).as_bytes()
        }
        _ => false,
    };
    answer.status == 101
        && has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
        && accepted
}

/// RFC 6455 4.2.2: the `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::Digest;
    let mut sha = sha1::Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Relays a refused upgrade to the client as an HTTP response framed exactly as the peer
/// framed it, with `Connection: close`; bytes after the response's end are never forwarded.
/// Each read of the peer waits at most `read_timeout` (then the client's connection is
/// closed). `relayed` counts the body bytes sent, however it ends.
pub async fn relay_refusal(
    client: &mut Stream,
    peer: &mut Stream,
    answer: Answer,
    edit: impl FnOnce(&mut ResponseHeader),
    read_timeout: Duration,
    relayed: &mut u64,
) -> io::Result<()> {
    let Answer {
        status,
        mut head,
        rest,
        ..
    } = answer;
    let chunked = head
        .headers
        .get(header::TRANSFER_ENCODING)
        .is_some_and(|v| {
            v.to_str()
                .map(|s| s.to_ascii_lowercase().contains("chunked"))
                .unwrap_or(false)
        });
    let length: Option<u64> = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok());
    let mut framing =
        if status == 101 || status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked(Chunked::default())
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
    ] {
        head.remove_header(name);
    }
    if status == 101 {
        // A 101 that is not a WebSocket switch: refuse it as a bad gateway answer.
        head.set_status(502)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let _ = head.insert_header(header::CONTENT_LENGTH, "0");
    }
    let _ = head.insert_header(header::CONNECTION, "close");
    edit(&mut head);
    let mut out = BytesMut::with_capacity(1024);
    let reason = head.status.canonical_reason().unwrap_or("");
    out.put_slice(format!("HTTP/1.1 {} {reason}\r\n", head.status.as_u16()).as_bytes());
    head.header_to_h1_wire(&mut out);
    out.put_slice(b"\r\n");
    client.write_all(&out).await?;

    let mut pending = rest;
    let mut buf = vec![0u8; 8192];
    loop {
        if !pending.is_empty() {
            let take = framing.take(&pending);
            client.write_all(&pending[..take]).await?;
            *relayed += take as u64;
        }
        if framing.done() {
            break;
        }
        let n = tokio::time::timeout(read_timeout, peer.read(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the peer's refusal stalled"))??;
        if n == 0 {
            break;
        }
        pending = Bytes::copy_from_slice(&buf[..n]);
    }
    client.flush().await?;
    client.shutdown().await?;
    Ok(())
}

/// How a relayed response's body ends.
enum Framing {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

impl Framing {
    /// How many of `data`'s bytes belong to the body.
    fn take(&mut self, data: &[u8]) -> usize {
        match self {
            Framing::Length(n) => {
                let take = (*n).min(data.len() as u64);
                *n -= take;
                take as usize
            }
            Framing::Chunked(c) => c.feed(data),
            Framing::UntilClose => data.len(),
        }
    }

    fn done(&self) -> bool {
        match self {
            Framing::Length(n) => *n == 0,
            Framing::Chunked(c) => c.state == ChunkState::Done,
            Framing::UntilClose => false,
        }
    }
}

#[derive(Default, Debug, PartialEq, Eq, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    /// Chunk extensions, up to the end of the size line.
    SizeLine,
    Data,
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk; `line_len` counts the current line.
    Trailer,
    Done,
}

/// Finds where a chunked body ends, byte stream in, without buffering it.
#[derive(Default, Debug)]
struct Chunked {
    state: ChunkState,
    size: u64,
    line_len: usize,
}

impl Chunked {
    /// Consumes `data` up to the end of the body; returns how many bytes belong to it.
    fn feed(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() && self.state != ChunkState::Done {
            let b = data[i];
            match self.state {
                ChunkState::Size => match (b as char).to_digit(16) {
                    Some(d) => {
                        self.size = self.size.saturating_mul(16).saturating_add(u64::from(d))
                    }
                    None if b == b'\n' => self.end_size_line(),
                    None => self.state = ChunkState::SizeLine,
                },
                ChunkState::SizeLine => {
                    if b == b'\n' {
                        self.end_size_line();
                    }
                }
                ChunkState::Data => {
                    let take = (self.size).min((data.len() - i) as u64) as usize;
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                    continue;
                }
                ChunkState::DataEnd => {
                    if b == b'\n' {
                        self.state = ChunkState::Size;
                    }
                }
                ChunkState::Trailer => {
                    if b == b'\n' {
                        if self.line_len == 0 {
                            self.state = ChunkState::Done;
                        }
                        self.line_len = 0;
                    } else if b != b'\r' {
                        self.line_len += 1;
                    }
                }
                ChunkState::Done => {}
            }
            i += 1;
        }
        i
    }

    fn end_size_line(&mut self) {
        if self.size == 0 {
            self.state = ChunkState::Trailer;
            self.line_len = 0;
        } else {
            self.state = ChunkState::Data;
        }
    }
}

/// For the fuzz target `streams`: where a chunked body ends must not depend on how its bytes
/// were cut into reads.
#[cfg(fuzzing)]
pub fn fuzz_chunked(data: &[u8], cuts: &[usize]) {
    let mut whole = Chunked::default();
    let n_whole = whole.feed(data);
    assert!(n_whole <= data.len());
    let mut pieces = Chunked::default();
    let (mut at, mut n_pieces) = (0usize, 0usize);
    for &cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
        let end = at.saturating_add(cut).min(data.len());
        n_pieces += pieces.feed(&data[at..end]);
        at = end;
    }
    assert_eq!(
        whole.state == ChunkState::Done,
        pieces.state == ChunkState::Done
    );
    if whole.state == ChunkState::Done {
        assert_eq!(n_whole, n_pieces);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(extra: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/ws", None).unwrap();
        for (k, v) in [
            ("Host", "x"),
            ("Upgrade", "websocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ] {
            if !extra.iter().any(|(n, _)| n.eq_ignore_ascii_case(k)) {
                r.insert_header(k.to_owned(), v).unwrap();
            }
        }
        for (k, v) in extra {
            if !v.is_empty() {
                r.insert_header(k.to_string(), *v).unwrap();
            }
        }
        r
    }

    #[test]
    fn a_valid_handshake_passes() {
        assert_eq!(check(&req(&[])), Upgrade::WebSocket);
        assert_eq!(check(&req(&[("Upgrade", "WebSocket")])), Upgrade::WebSocket);
    }

    #[test]
    fn other_upgrades_are_plain_http() {
        assert_eq!(check(&req(&[("Upgrade", "h2c")])), Upgrade::No);
    }

    #[test]
    fn malformed_handshakes_are_refused() {
        let status = |extra: &[(&str, &str)]| match check(&req(extra)) {
            Upgrade::Invalid { status, .. } => status,
            other => panic!("{extra:?}: {other:?}"),
        };
        assert_eq!(status(&[("Connection", "keep-alive")]), 400);
        assert_eq!(status(&[("Sec-WebSocket-Key", "")]), 400);
        assert_eq!(status(&[("Sec-WebSocket-Key", "c2hvcnQ=")]), 400);
        assert_eq!(
            status(&[("Sec-WebSocket-Key", "not base64 at all !!!!!==")]),
            400
        );
        assert_eq!(status(&[("Sec-WebSocket-Version", "8")]), 426);
        assert_eq!(status(&[("Sec-WebSocket-Version", "")]), 426);
        assert_eq!(status(&[("Content-Length", "5")]), 400);
        assert_eq!(status(&[("Transfer-Encoding", "chunked")]), 400);
        let mut post = req(&[]);
        post.set_method(http::Method::POST);
        assert!(matches!(check(&post), Upgrade::Invalid { status: 400, .. }));
    }

    #[test]
    fn chunked_end_is_found_and_nothing_after_it_is_taken() {
        let body =
            b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n";
        let end = body.len() - b"GET /smuggled HTTP/1.1\r\n\r\n".len();
        for split in [1, 2, 5, body.len()] {
            let mut c = Chunked::default();
            let mut taken = 0;
            for chunk in body.chunks(split) {
                taken += c.feed(chunk);
                if c.state == ChunkState::Done {
                    break;
                }
            }
            assert_eq!(taken, end, "split {split}");
        }
    }
}
