//! Host and path matching: pure functions from (host, path) to a route index.
//!
//! Precedence: routes for the exact host, then for the longest matching `*.wildcard`, then
//! routes without a host; within each, the longest matching `path_prefix`. If no route of the
//! exact host matches the path, the wildcard and host-less routes are tried next (HAProxy's
//! fall-through to `default_backend`, rather than nginx's per-server 404).

use std::collections::HashMap;

/// Routes with one host pattern, longest prefix first.
#[derive(Debug, Default, Clone)]
struct PathTable(Vec<(String, usize)>);

impl PathTable {
    fn insert(&mut self, prefix: String, index: usize) {
        self.0.push((prefix, index));
        // Stable: equal-length prefixes keep file order (they cannot both match anyway
        // unless equal, which validation refuses).
        self.0.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    }

    fn find(&self, path: &str) -> Option<usize> {
        self.0
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, i)| *i)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Router {
    exact: HashMap<String, PathTable>,
    /// `(suffix with its leading dot, table)`, longest suffix first.
    wildcard: Vec<(String, PathTable)>,
    any: PathTable,
}

impl Router {
    /// Adds route `index`; `host` is lower-case, `None` for any host, `*.x` for a wildcard.
    pub fn add(&mut self, host: Option<&str>, prefix: &str, index: usize) {
        let table = match host {
            None => &mut self.any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => {
                    let pos = self.wildcard.iter().position(|(s, _)| s == suffix);
                    let pos = pos.unwrap_or_else(|| {
                        self.wildcard
                            .push((suffix.to_owned(), PathTable::default()));
                        self.wildcard
                            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
                        self.wildcard
                            .iter()
                            .position(|(s, _)| s == suffix)
                            .expect("just pushed")
                    });
                    &mut self.wildcard[pos].1
                }
                None => self.exact.entry(h.to_owned()).or_default(),
            },
        };
        table.insert(prefix.to_owned(), index);
    }

    /// The route for a request. `host` is the request's host without port, any case;
    /// `path` the path of the request target (no query needed, a query is harmless).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        if let Some(host) = host {
            let host = normalize_host(host);
            let host = host.as_ref();
            if let Some(i) = self.exact.get(host).and_then(|t| t.find(path)) {
                return Some(i);
            }
            for (suffix, table) in &self.wildcard {
                if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                    if let Some(i) = table.find(path) {
                        return Some(i);
                    }
                }
            }
        }
        self.any.find(path)
    }
}

/// Lower-cases and drops a trailing dot, borrowing when the host is already normal.
fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// `strip_prefix`: `/ws/chat` under `/ws/` reaches the peer as `/chat`; the query is kept and
/// the result always starts with `/`.
pub fn strip_prefix(path_and_query: &str, prefix: &str) -> String {
    let rest = path_and_query
        .strip_prefix(prefix)
        .unwrap_or(path_and_query);
    if rest.starts_with('/') {
        rest.to_owned()
    } else {
        format!("/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let mut r = Router::default();
        r.add(Some("example.com"), "/ws/", 0);
        r.add(Some("example.com"), "/", 1);
        r.add(Some("*.example.com"), "/", 2);
        r.add(Some("*.eu.example.com"), "/", 3);
        r.add(None, "/api/", 4);
        r.add(None, "/", 5);
        r.add(Some("only.test"), "/x/", 6);
        r
    }

    #[test]
    fn exact_beats_wildcard_beats_any() {
        let r = router();
        assert_eq!(r.find(Some("example.com"), "/ws/chat"), Some(0));
        assert_eq!(r.find(Some("EXAMPLE.com."), "/other"), Some(1));
        assert_eq!(r.find(Some("a.example.com"), "/ws/chat"), Some(2));
        assert_eq!(r.find(Some("a.eu.example.com"), "/"), Some(3));
        assert_eq!(r.find(Some("other.org"), "/api/v1"), Some(4));
        assert_eq!(r.find(None, "/"), Some(5));
    }

    #[test]
    fn wildcard_does_not_match_the_bare_domain() {
        let mut r = Router::default();
        r.add(Some("*.example.com"), "/", 0);
        assert_eq!(r.find(Some("example.com"), "/"), None);
        assert_eq!(r.find(Some("xexample.com"), "/"), None);
    }

    #[test]
    fn host_routes_fall_through_to_host_less_ones() {
        let r = router();
        assert_eq!(r.find(Some("only.test"), "/x/1"), Some(6));
        assert_eq!(r.find(Some("only.test"), "/y"), Some(5));
    }

    #[test]
    fn longest_prefix_wins_regardless_of_order() {
        let mut r = Router::default();
        r.add(None, "/", 0);
        r.add(None, "/a/", 1);
        r.add(None, "/a/b/", 2);
        assert_eq!(r.find(None, "/a/b/c"), Some(2));
        assert_eq!(r.find(None, "/a/x"), Some(1));
        assert_eq!(r.find(None, "/z"), Some(0));
        let mut none = Router::default();
        none.add(None, "/only/", 0);
        assert_eq!(none.find(None, "/"), None);
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash_and_the_query() {
        assert_eq!(strip_prefix("/ws/chat?x=1", "/ws/"), "/chat?x=1");
        assert_eq!(strip_prefix("/ws/chat", "/ws"), "/chat");
        assert_eq!(strip_prefix("/ws", "/ws"), "/");
        assert_eq!(strip_prefix("/ws?a", "/ws"), "/?a");
    }
}
