//! `jwt`: a request (or WebSocket upgrade) must carry a JSON Web Token signed by a key of the
//! JWKS file (HS256/384/512 `oct` keys, RS256/384/512 and PS256/384/512 RSA keys, ES256/384
//! EC keys), not expired (`exp`, required), not early (`nbf`), from the `issuer` and for the
//! `audience` when they are set; else 401 before any peer is contacted. The token is read from
//! `Authorization: Bearer`, or, for browser WebSockets that cannot set headers, from the query
//! parameter `query_param` (which the peer never sees). Claims named in `claims_to_headers` are
//! sent to the peer as headers; a client's own headers of those names are always removed, so
//! they cannot be forged. The JWKS file is read when the configuration loads (and on SIGHUP).
//!
//! ```yaml
//! filters:
//!   - jwt: {jwks_file: conf/jwks.json, issuer: https://id.example.com, audience: chat,
//!           query_param: access_token, claims_to_headers: {sub: X-User-Id}}
//! ```

use super::{Answer, Build, Exchange, Filter, Flow, Phases, Request};
use crate::config::schema::Duration;
use crate::request::view::query_value;
use http::{header, HeaderName, HeaderValue};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora::http::RequestHeader;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    jwks_file: String,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    query_param: Option<String>,
    #[serde(default)]
    claims_to_headers: BTreeMap<String, String>,
    /// Clock skew allowed on `exp` and `nbf`; default 60s.
    #[serde(default)]
    leeway: Option<Duration>,
}

/// One key of the set for one algorithm, with its validation rules built once.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

pub struct Jwt {
    keys: Vec<Key>,
    query_param: Option<String>,
    claims: Vec<(String, HeaderName)>,
    leeway: u64,
    /// Tokens verified lately, until their `exp` (+ leeway): a client's repeated token costs a
    /// lookup instead of a signature check and two JSON parses (Envoy's jwt_cache_config). The
    /// key is the whole token, signature included, so only the exact bytes verified hit.
    cache: std::sync::Mutex<HashMap<Box<str>, Cached>>,
}

/// What a verified token gave, kept until it expires.
#[derive(Clone)]
struct Cached {
    /// Seconds since the epoch after which the token is refused.
    until: u64,
    headers: Vec<(HeaderName, HeaderValue)>,
    sub: Option<String>,
}

/// The most tokens a jwt filter remembers; when full, it starts over (a flood of distinct
/// valid tokens costs verification, never memory).
const CACHE_MAX: usize = 10_000;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the request phase leaves for the peer's request.
#[derive(Clone)]
struct Verified {
    headers: Vec<(HeaderName, HeaderValue)>,
    from_query: bool,
}

pub fn factory(settings: &serde_yaml::Value, build: &mut Build<'_>) -> Option<Arc<dyn Filter>> {
    let s: Settings = build.settings(settings)?;
    let mut ok = true;
    let mut claims = Vec::new();
    for (claim, name) in &s.claims_to_headers {
        match build.header_name(&format!("claims_to_headers.{claim}"), name) {
            Some(h) => claims.push((claim.clone(), h)),
            None => ok = false,
        }
    }
    if let Some(q) = &s.query_param {
        if q.is_empty() || q.contains(['&', '=', '?', '#', ' ']) {
            build.error(Some("query_param"), format!("invalid parameter name {q:?}"));
            ok = false;
        }
    }
    let leeway = s.leeway.map_or(60, |d| d.0.as_secs());
    let keys = match load_keys(&s.jwks_file) {
        Ok(set) => set,
        Err(why) => {
            build.error(Some("jwks_file"), why);
            return None;
        }
    };
    let keys = keys
        .into_iter()
        .map(|(kid, alg, key)| {
            let mut validation = Validation::new(alg);
            validation.leeway = leeway;
            validation.validate_nbf = true;
            if let Some(iss) = &s.issuer {
                validation.set_issuer(&[iss]);
            }
            match &s.audience {
                Some(aud) => validation.set_audience(&[aud]),
                None => validation.validate_aud = false,
            }
            Key {
                kid,
                alg,
                key,
                validation,
            }
        })
        .collect();
    ok.then(|| {
        Arc::new(Jwt {
            keys,
            query_param: s.query_param,
            claims,
            leeway,
            cache: Default::default(),
        }) as Arc<dyn Filter>
    })
}

/// The keys of a JWKS file, each with the algorithms it may verify.
fn load_keys(file: &str) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {file}: {}", crate::config::os_message(&e)))?;
    let set: JwkSet =
        serde_json::from_str(&text).map_err(|e| format!("{file} is not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("{file}: key {i} cannot verify signatures: {e}"))?;
        let family: &[Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::OctetKey(_) => {
                &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
            }
            AlgorithmParameters::RSA(_) => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => &[Algorithm::ES256],
                EllipticCurve::P384 => &[Algorithm::ES384],
                _ => return Err(format!("{file}: key {i}: only the P-256 and P-384 curves")),
            },
            _ => return Err(format!("{file}: key {i}: an oct, RSA or EC key is needed")),
        };
        // A key that names its algorithm is used for that one only (no algorithm confusion).
        let named = jwk
            .common
            .key_algorithm
            .and_then(|a| Algorithm::from_str(&a.to_string()).ok());
        let algs: Vec<Algorithm> = match named {
            Some(a) if family.contains(&a) => vec![a],
            Some(a) => {
                return Err(format!(
                    "{file}: key {i}: {a:?} does not fit the key's type"
                ))
            }
            None => family.to_vec(),
        };
        for alg in algs {
            keys.push((jwk.common.key_id.clone(), alg, key.clone()));
        }
    }
    if keys.is_empty() {
        return Err(format!("{file} holds no key"));
    }
    Ok(keys)
}

fn unauthorized(error: Option<&str>) -> Flow {
    let challenge = match error {
        Some(e) => format!("Bearer realm=\"portico\", error=\"{e}\""),
        None => "Bearer realm=\"portico\"".to_owned(),
    };
    Flow::Respond(
        Answer::new("jwt", 401, "missing or invalid token\n")
            .with_header(header::WWW_AUTHENTICATE, challenge),
    )
}

/// The request target without the `name` parameter.
fn without_param(target: &str, name: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split('=').next() != Some(name))
        .collect();
    match kept.is_empty() {
        true => path.to_owned(),
        false => format!("{path}?{}", kept.join("&")),
    }
}

impl Jwt {
    /// The headers and `sub` of verified claims, remembered until the token expires.
    fn remember(&self, token: &str, claims: &serde_json::Map<String, serde_json::Value>) -> Cached {
        let mut headers = Vec::new();
        for (claim, name) in &self.claims {
            let text = match claims.get(claim) {
                None | Some(serde_json::Value::Null) => continue,
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            // A claim that is no header value is left out, never sent half.
            if let Ok(v) = HeaderValue::from_str(&text) {
                headers.push((name.clone(), v));
            }
        }
        let sub = match claims.get("sub") {
            Some(serde_json::Value::String(sub)) => Some(sub.clone()),
            _ => None,
        };
        let exp = claims.get("exp").and_then(serde_json::Value::as_u64);
        let entry = Cached {
            until: exp.map_or(0, |e| e.saturating_add(self.leeway)),
            headers,
            sub,
        };
        if exp.is_some() {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(token.into(), entry.clone());
        }
        entry
    }

    fn verify(&self, token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
        let head = jsonwebtoken::decode_header(token).ok()?;
        self.keys
            .iter()
            .filter(|k| k.alg == head.alg)
            .filter(|k| head.kid.is_none() || k.kid.is_none() || k.kid == head.kid)
            .find_map(|k| jsonwebtoken::decode(token, &k.key, &k.validation).ok())
            .map(|data| data.claims)
    }
}

impl Filter for Jwt {
    fn phases(&self) -> Phases {
        Phases::REQUEST | Phases::UPSTREAM_REQUEST
    }

    fn request(&self, req: &mut Request<'_>) -> Flow {
        let bearer = req
            .head
            .headers
            .get(header::AUTHORIZATION)
            .and_then(super::auth::bearer)
            .and_then(|token| std::str::from_utf8(token).ok());
        let from_query = match (&self.query_param, &req.view.query) {
            (Some(name), Some(query)) => query_value(query, name),
            _ => None,
        };
        let Some(token) = bearer.or(from_query) else {
            return unauthorized(None);
        };
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.get(token).cloned()
        };
        let now = now_secs();
        let verified = match cached {
            Some(c) if now <= c.until => c,
            _ => match self.verify(token) {
                Some(claims) => self.remember(token, &claims),
                None => return unauthorized(Some("invalid_token")),
            },
        };
        if let Some(sub) = verified.sub {
            req.vars.set("jwt_sub", sub);
        }
        req.ext.insert(Verified {
            headers: verified.headers,
            // Whichever was used, the peer never sees a token in the query.
            from_query: from_query.is_some(),
        });
        Flow::Continue
    }

    fn upstream_request(&self, req: &mut RequestHeader, cx: &Exchange<'_>) {
        for (_, name) in &self.claims {
            req.remove_header(name);
        }
        let Some(verified) = cx.ext.get::<Verified>() else {
            return;
        };
        for (name, value) in &verified.headers {
            let _ = req.insert_header(name.clone(), value.clone());
        }
        if let (true, Some(name)) = (verified.from_query, &self.query_param) {
            let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let stripped = without_param(target, name);
            let _ = req.set_raw_path(stripped.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_parameter_is_taken_out_of_the_query() {
        let t = "access_token";
        assert_eq!(without_param("/ws/?access_token=abc", t), "/ws/");
        assert_eq!(
            without_param("/ws/?a=1&access_token=abc&b=2", t),
            "/ws/?a=1&b=2"
        );
        assert_eq!(
            without_param("/ws/?access_token_x=1", t),
            "/ws/?access_token_x=1"
        );
        assert_eq!(without_param("/ws/", t), "/ws/");
        assert_eq!(query_value("a=1&access_token=abc", t), Some("abc"));
        assert_eq!(query_value("xaccess_token=abc", t), None);
    }
}
