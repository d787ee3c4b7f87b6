//! Shared by the fuzz targets: fuzz bytes as a request head, the way Pingora's HTTP/1 reader
//! builds one (httparse, then a `RequestHeader`); `None` for bytes that are not a whole head.

use pingora::http::RequestHeader;

pub fn request_head(data: &[u8]) -> Option<RequestHeader> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(data) else {
        return None;
    };
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return None;
    };
    let mut req = RequestHeader::build(method, path.as_bytes(), None).ok()?;
    for h in parsed.headers.iter() {
        req.append_header(h.name.to_owned(), h.value).ok()?;
    }
    Some(req)
}
