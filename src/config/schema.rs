//! The file format of portico.yaml, exactly as written (docs/configuration.md); no runtime types here.
//!
//! Every struct denies unknown keys, so a typo is an error rather than a silently ignored
//! setting. `PartialEq` lets a reload tell an unchanged upstream group from a changed one.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub listeners: Vec<ListenerSection>,
    #[serde(default)]
    pub admin: Option<AdminSection>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSection>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    /// Added key: where and how the access log is written (default: text on standard output).
    #[serde(default)]
    pub access_log: AccessLogSection,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    #[serde(default)]
    pub format: AccessLogFormat,
    /// A file to append to; default standard output.
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// Combined-like: `client - - [time] "request" status bytes "referer" "agent" key=value...`
    #[default]
    Text,
    Json,
    /// No access log (nginx's `access_log off`); metrics still count every request.
    Off,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Worker threads; default: the number of CPUs.
    pub threads: Option<usize>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub grace_period: Option<Duration>,
    pub graceful_shutdown_timeout: Option<Duration>,
    /// Idle upstream connections kept for reuse, across all peers; the size of Pingora's pool
    /// and of portico's own (for the requests it forwards itself) each. Default 128.
    pub upstream_keepalive_pool_size: Option<usize>,
    /// Added key: bytes of write buffering per client connection. The default (1024) saves CPU
    /// on small HTTP responses; freed when the connection becomes a WebSocket tunnel.
    pub downstream_write_buffer: Option<Size>,
    /// Added key: a client must send a whole request head within this time of connecting, or
    /// the connection is closed (slowloris). Default 10s.
    pub header_timeout: Option<Duration>,
    /// Added key: a kept-alive connection must send the next request head within this time of
    /// the previous response, or it is closed. Default 60s.
    pub keepalive_timeout: Option<Duration>,
    /// A client that reads nothing of a response for this long is cut, and the peer's
    /// connection behind it freed (nginx's `send_timeout`). Default 60s.
    pub send_timeout: Option<Duration>,
    /// Open client connections, all listeners together (WebSockets included); past it a new
    /// connection is closed at once until others close. Default 65536.
    pub max_connections: Option<usize>,
    /// Added key: let worker threads steal each other's tasks (tokio's scheduler). Default
    /// false: a connection stays on the thread that accepted it, which costs less per request.
    pub work_stealing: Option<bool>,
    /// Added key: plain requests (HTTP/1 or 2, no body, no hop-by-hop fields) take portico's own
    /// forwarding loop; false sends every request through Pingora's. Default true.
    pub fast_path: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub address: String,
    #[serde(default)]
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub certificates: Vec<CertificatePair>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatePair {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub address: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Ketama consistent hashing on the client IP.
    IpHash,
    /// Weighted random.
    Random,
    /// Fewest in-flight requests and open upgraded connections, relative to weight.
    LeastConn,
    /// Ketama consistent hashing on `hash_key` (a header, cookie, query parameter, the path or
    /// the client IP); a request without the key is hashed on its client IP.
    Hash,
}

impl Balance {
    /// The name as the file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::IpHash => "ip_hash",
            Balance::Random => "random",
            Balance::LeastConn => "least_conn",
            Balance::Hash => "hash",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    #[serde(default)]
    pub balance: Balance,
    pub peers: Vec<PeerSpec>,
    #[serde(default)]
    pub health_check: Option<HealthCheckSection>,
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    #[serde(default)]
    pub retries: Option<usize>,
    /// Added key: how long a peer whose connect failed is skipped (nginx's `fail_timeout`,
    /// with `max_fails=1`); `0s` turns passive health off. Default 10s.
    pub fail_timeout: Option<Duration>,
    /// What `balance: hash` hashes.
    #[serde(default)]
    pub hash_key: Option<HashKey>,
    /// Sticky sessions: a cookie pins a client to the peer that first served it.
    #[serde(default)]
    pub sticky: Option<StickySection>,
    /// Peers given by host name follow DNS: re-resolved on an interval, added and removed live.
    #[serde(default)]
    pub resolve: Option<ResolveSection>,
}

/// `resolve: {interval: 5s, resolvers: [10.96.0.10:53]}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveSection {
    /// How often every name is resolved again (sooner when a record's TTL is shorter).
    /// Default 5s.
    #[serde(default)]
    pub interval: Option<Duration>,
    /// DNS servers, `IP` or `IP:port`; default: the system's (`/etc/resolv.conf`).
    #[serde(default)]
    pub resolvers: Vec<String>,
    /// How long one query waits for an answer. Default 2s.
    #[serde(default)]
    pub timeout: Option<Duration>,
}

/// `hash_key`: `{header: NAME}`, `{cookie: NAME}`, `{query: NAME}`, `path` or `ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(String),
    Cookie(String),
    Query(String),
    Path,
    Ip,
}

impl<'de> Deserialize<'de> for HashKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = HashKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("{header: NAME}, {cookie: NAME}, {query: NAME}, path or ip")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HashKey, E> {
                match v {
                    "path" => Ok(HashKey::Path),
                    "ip" => Ok(HashKey::Ip),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<HashKey, M::Error> {
                let Some((kind, name)) = map.next_entry::<String, String>()? else {
                    return Err(de::Error::invalid_length(0, &self));
                };
                if map.next_key::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(2, &self));
                }
                match kind.as_str() {
                    "header" => Ok(HashKey::Header(name)),
                    "cookie" => Ok(HashKey::Cookie(name)),
                    "query" => Ok(HashKey::Query(name)),
                    _ => Err(de::Error::custom(format!(
                        "{kind:?} is no hash key: expected {{header: NAME}}, {{cookie: NAME}}, {{query: NAME}}, path or ip"
                    ))),
                }
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickySection {
    /// The cookie's name.
    pub cookie: String,
    /// How long the browser keeps it; default: the browser session.
    #[serde(default)]
    pub max_age: Option<Duration>,
    #[serde(default = "yes")]
    pub http_only: bool,
    /// `auto` (default): `Secure` on requests that came over TLS; `true`; `false`.
    #[serde(default)]
    pub secure: SecureFlag,
    #[serde(default)]
    pub same_site: SameSite,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SecureFlag {
    /// `Secure` when the request came over TLS.
    #[default]
    Auto,
    Always(bool),
}

impl<'de> Deserialize<'de> for SecureFlag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FlagVisitor;
        impl Visitor<'_> for FlagVisitor {
            type Value = SecureFlag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("auto, true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SecureFlag, E> {
                Ok(SecureFlag::Always(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecureFlag, E> {
                match v {
                    "auto" => Ok(SecureFlag::Auto),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(FlagVisitor)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    #[default]
    Lax,
    Strict,
    None,
}

/// A peer: `10.0.0.11:3000` or `{ address: 10.0.0.12:3000, weight: 2 }`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSpec {
    pub address: String,
    pub weight: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerLong {
    address: String,
    #[serde(default)]
    weight: Option<usize>,
}

impl<'de> Deserialize<'de> for PeerSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PeerVisitor;
        impl<'de> Visitor<'de> for PeerVisitor {
            type Value = PeerSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a peer address such as 10.0.0.11:3000 or {address, weight}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PeerSpec, E> {
                Ok(PeerSpec {
                    address: v.to_owned(),
                    weight: None,
                })
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<PeerSpec, M::Error> {
                let long = PeerLong::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(PeerSpec {
                    address: long.address,
                    weight: long.weight,
                })
            }
        }
        d.deserialize_any(PeerVisitor)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckType {
    #[default]
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    #[serde(default, rename = "type")]
    pub kind: HealthCheckType,
    pub path: Option<String>,
    pub host: Option<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub healthy_threshold: Option<usize>,
    pub unhealthy_threshold: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default = "yes")]
    pub verify: bool,
    /// Added key: a PEM file of CA certificates to verify peers with, instead of the system
    /// roots (for peers with certificates from a private CA).
    #[serde(default)]
    pub ca: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Optional name for logs and metrics; default `route<N>`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    pub upstream: String,
    #[serde(default)]
    pub websocket: Option<WebSocketSection>,
    #[serde(default)]
    pub request_headers: Option<HeaderRulesSection>,
    #[serde(default)]
    pub response_headers: Option<HeaderRulesSection>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitSection>,
    #[serde(default)]
    pub auth: Option<AuthSection>,
    /// Added key: the largest request body accepted (413 above it), e.g. `10m`, `512k`, `1g`
    /// or a number of bytes; default: no limit.
    #[serde(default)]
    pub max_body_size: Option<Size>,
    #[serde(default)]
    pub redirect_https: bool,
    #[serde(default)]
    pub strip_prefix: bool,
    /// The route's own filters, in order, each a one-key map: the filter's name to its
    /// settings (docs/filters.md).
    #[serde(default)]
    pub filters: Vec<FilterEntry>,
}

/// One item of `routes[].filters`: `- cors: {allow_origins: [...]}`, or just the name for a
/// filter without settings (`- request_id`). Anything else keeps an empty name, for the
/// compiler to report with its path (so one bad item does not hide the file's other errors).
#[derive(Debug, Clone, PartialEq)]
pub struct FilterEntry {
    pub name: String,
    pub settings: serde_yaml::Value,
}

impl<'de> Deserialize<'de> for FilterEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde_yaml::Value;
        let entry = match Value::deserialize(d)? {
            Value::String(name) => FilterEntry {
                name,
                settings: Value::Null,
            },
            Value::Mapping(map) if map.len() == 1 => {
                let (key, settings) = map.into_iter().next().expect("one key");
                match key {
                    Value::String(name) => FilterEntry { name, settings },
                    other => FilterEntry {
                        name: String::new(),
                        settings: other,
                    },
                }
            }
            other => FilterEntry {
                name: String::new(),
                settings: other,
            },
        };
        Ok(entry)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesSection {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub requests_per_second: Option<u32>,
    pub burst: Option<u32>,
    pub max_connections: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub bearer_tokens_file: String,
}

/// A duration written with a unit: `250ms`, `5s`, `10m`, `1h`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

/// The longest duration any key takes.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration with a unit, such as 250ms, 5s, 10m, 1h or 7d")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration(v)
                    .map(Duration)
                    .map_err(|why| E::custom(format!("invalid duration {v:?}: {why}")))
            }
        }
        d.deserialize_any(DurationVisitor)
    }
}

/// The documented form and nothing else: numbers each followed by a unit, `ms`, `s`, `m`, `h`
/// or `d`, with no spaces (`250ms`, `5s`, `1h30m`); at most 365 days, since every timer and
/// deadline adds a duration to the clock (no sum of them can overflow, and no setting a person
/// means is longer).
pub fn parse_duration(v: &str) -> Result<std::time::Duration, &'static str> {
    const FORM: &str = "write a number and a unit: 250ms, 5s, 10m, 1h or 7d (or combined: 1h30m)";
    const TOO_LONG: &str = "at most 365d";
    let mut rest = v.trim();
    if rest.is_empty() {
        return Err(FORM);
    }
    let mut millis: u128 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(FORM);
        }
        let n: u128 = rest[..digits].parse().map_err(|_| TOO_LONG)?;
        rest = &rest[digits..];
        let (unit, len) = match rest.as_bytes() {
            [b'm', b's', ..] => (1, 2),
            [b's', ..] => (1_000, 1),
            [b'm', ..] => (60_000, 1),
            [b'h', ..] => (3_600_000, 1),
            [b'd', ..] => (86_400_000, 1),
            _ => return Err(FORM),
        };
        rest = &rest[len..];
        millis = millis.saturating_add(n.saturating_mul(unit));
    }
    if millis > MAX_DURATION.as_millis() {
        return Err(TOO_LONG);
    }
    Ok(std::time::Duration::from_millis(millis as u64))
}

/// A size in bytes, written as a number or with a binary unit: `512k`, `10m`, `1g`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 512k, 10m, 1g or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                let t = v.trim().to_ascii_lowercase();
                let (num, unit) =
                    t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
                let mult: u64 = match unit.trim() {
                    "" | "b" => 1,
                    "k" | "kb" | "kib" => 1 << 10,
                    "m" | "mb" | "mib" => 1 << 20,
                    "g" | "gb" | "gib" => 1 << 30,
                    _ => {
                        return Err(E::custom(format!(
                            "invalid size {v:?}: write e.g. 512k, 10m, 1g"
                        )))
                    }
                };
                num.parse::<u64>()
                    .ok()
                    .and_then(|n| n.checked_mul(mult))
                    .map(Size)
                    .ok_or_else(|| {
                        E::custom(format!("invalid size {v:?}: write e.g. 512k, 10m, 1g"))
                    })
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_in_the_documented_form_only() {
        let ms = |v| parse_duration(v).map(|d| d.as_millis());
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("5s"), Ok(5_000));
        assert_eq!(ms("10m"), Ok(600_000));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms(" 7d "), Ok(604_800_000));
        assert_eq!(ms("365d"), Ok(MAX_DURATION.as_millis()));
        for bad in [
            "2 secs",
            "5 seconds",
            "1hour",
            "2 minutes",
            "5",
            "s",
            "1.5s",
            "-1s",
            "",
            "5S",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        for long in [
            "366d",
            "500000000000d",
            "99999999999999999999999999999999999999999h",
        ] {
            assert_eq!(parse_duration(long), Err("at most 365d"), "{long}");
        }
    }
}
