//! portico: a programmable edge proxy on Pingora, for WebSocket services and the HTTP beside them.
//!
//! # Layout, in the order a request meets it
//! - [`cli`] and `main.rs`: the command line; `-t` validates, a bad file exits 64.
//! - [`config`]: the YAML file format ([`config::schema`]) and value checks with YAML paths.
//! - [`snapshot`]: the file compiled into immutable runtime state, published through one
//!   `ArcSwap`; [`reload`] builds a new one on SIGHUP and swaps it in.
//! - [`app`]: the Pingora server: listeners ([`tls`]: certificates by SNI), the proxy
//!   service, background services;
//!   [`handoff`]: `-u` finds the old process and signals it once ready for its sockets, SIGUSR2
//!   starts a successor; [`conn`]: each request head must arrive in time (slowloris).
//! - [`proxy`]: the `ProxyHttp` hooks. A request loads the snapshot once (`new_ctx`), then:
//!   1. `request_filter`: hostile framing and paths refused ([`checks`]), client IP through trusted proxies ([`headers`]), route by host and
//!      path ([`routing`]), answer 404 / 301 / 403 / 401 / 429 itself ([`auth`], [`limits`]); a valid WebSocket
//!      upgrade is taken over here ([`websocket`]): handshake with a peer, then [`tunnel`];
//!   2. `upstream_peer`: pick a healthy, untried peer of the route's group ([`upstream`]);
//!      `fail_to_connect` retries another peer;
//!   3. `upstream_request_filter`: X-Forwarded-*, strip_prefix, the route's header rules;
//!   4. `response_filter`: the route's response header rules;
//!   5. `logging`: one access-log line (for an upgrade, when the tunnel closes).
//! - [`upstream::health`]: one background service running every group's active checks.
//! - [`admin`]: `/metrics` ([`metrics`]), `/healthz`, `/status`; [`accesslog`]: the access log
//!   on a writer thread of its own; [`drain`]: 1001 closes at the end of the grace period,
//!   exit as soon as nothing is open.

pub mod accesslog;
pub mod admin;
pub mod app;
pub mod auth;
pub mod checks;
pub mod cli;
pub mod config;
pub mod conn;
pub mod drain;
pub mod handoff;
pub mod headers;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod request;
pub mod routing;
pub mod snapshot;
pub mod supervise;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod websocket;
