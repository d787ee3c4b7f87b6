//! `auth.bearer_tokens_file`: a request or upgrade without `Authorization: Bearer <listed
//! token>` gets 401 with `WWW-Authenticate: Bearer`, before any peer is contacted. The tokens
//! are compared in constant time and never logged. It runs after the listed filters (a CORS
//! preflight carries no credentials).

use super::{Answer, Filter, Flow, Phases, Request};
use crate::config::ConfigErrors;
use http::{header, HeaderValue};

/// The tokens of one `auth.bearer_tokens_file`: one token a line, `#` comments and blank
/// lines ignored. Tokens are never logged.
#[derive(Clone)]
pub struct BearerTokens(Vec<Vec<u8>>);

impl std::fmt::Debug for BearerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerTokens({} tokens)", self.0.len())
    }
}

impl BearerTokens {
    pub fn load(file: &str, path: &str, errs: &mut ConfigErrors) -> Option<Self> {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                errs.push(
                    path,
                    format!("cannot read {file}: {}", crate::config::os_message(&e)),
                );
                return None;
            }
        };
        let tokens: Vec<Vec<u8>> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.as_bytes().to_vec())
            .collect();
        if tokens.is_empty() {
            errs.push(path, format!("{file} holds no token"));
            return None;
        }
        Some(BearerTokens(tokens))
    }

    /// True when `authorization` is `Bearer <token>` with a listed token. Every listed token is
    /// compared in full, so the time taken does not tell how much of a guess was right.
    pub fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(presented) = authorization.and_then(bearer) else {
            return false;
        };
        self.0
            .iter()
            .fold(false, |found, t| found | constant_time_eq(t, presented))
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case), trimmed.
pub fn bearer(authorization: &HeaderValue) -> Option<&[u8]> {
    let bytes = authorization.as_bytes();
    let scheme = bytes.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| bytes[7..].trim_ascii())
}

impl Filter for BearerTokens {
    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    fn request(&self, req: &mut Request<'_>) -> Flow {
        match self.allows(req.head.headers.get(header::AUTHORIZATION)) {
            true => Flow::Continue,
            false => Flow::Respond(
                Answer::new("auth", 401, "missing or invalid bearer token\n")
                    .with_header(header::WWW_AUTHENTICATE, "Bearer realm=\"portico\""),
            ),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_tokens_pass() {
        let t = BearerTokens(vec![b"s3cret".to_vec(), b"other".to_vec()]);
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(t.allows(Some(&h("Bearer s3cret"))));
        assert!(t.allows(Some(&h("bearer other"))));
        assert!(!t.allows(Some(&h("Bearer s3cre"))));
        assert!(!t.allows(Some(&h("Bearer s3cret2"))));
        assert!(!t.allows(Some(&h("Basic s3cret"))));
        assert!(!t.allows(Some(&h("Bearer "))));
        assert!(!t.allows(None));
    }
}
