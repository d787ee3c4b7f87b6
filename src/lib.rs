//! portico: a programmable edge proxy on Pingora, for WebSocket services and the HTTP beside them.
//!
//! # Layout, in the order a request meets it
//! - [`builder`] (`portico::Builder`) and `main.rs`: the binary as a library, with a program's
//!   own filters; [`cli`]: the command line; `-t` validates, a bad file exits 64.
//! - [`config`]: the YAML file format ([`config::schema`]) and value checks with YAML paths.
//! - [`snapshot`]: the file compiled into immutable runtime state, published through one
//!   `ArcSwap`; [`reload`] builds a new one on SIGHUP and swaps it in.
//! - [`app`]: the Pingora server: listeners ([`tls`]: certificates by SNI), the proxy
//!   service, background services;
//!   [`handoff`]: `-u` finds the old process and signals it once ready for its sockets, SIGUSR2
//!   starts a successor; [`conn`]: per connection, the TLS hello and each request head in
//!   time (slowloris), responses written under `send_timeout`, the `max_connections` cap.
//! - [`proxy`]: the `ProxyHttp` hooks. A request loads the snapshot once (`new_ctx`), then:
//!   1. `request_filter`: the client IP through trusted proxies ([`headers`]), then
//!      [`request::admit`], every decision that needs no peer: hostile framing ([`checks`]),
//!      the canonical view of host and path ([`request::view`]) and its route ([`routing`]),
//!      the request phase of the route's [`filters`] chain (its redirect, body limit,
//!      WebSocket gate, rate limit ([`limits`]), listed filters and auth, each a
//!      [`filters::Filter`]), answered by portico itself; a plain request is then forwarded by portico's
//!      own loop ([`forward::plain`]), a valid WebSocket upgrade taken over ([`forward::upgrade`],
//!      [`websocket`]:
//!      handshake with a peer, then [`tunnel`]), anything else left to Pingora's loop;
//!   2. `upstream_peer`: the next peer ([`upstream::attempts`]: tried peers, in-flight guard,
//!      every retry decision, for both loops and upgrades); `fail_to_connect` and
//!      `error_while_proxy` ask it whether to retry;
//!   3. `upstream_request_filter`: [`request::rewrite`], the one rewrite for every path
//!      (X-Forwarded-*, the canonical target, then the chain's `upstream_request` phase:
//!      strip_prefix, the route's header rules, the listed filters');
//!   4. `upstream_response_filter` (a 101 nobody asked for is a 502), `response_filter` (the
//!      chain's `response` phase, interim answers and portico's own answers too);
//!   5. `logging`: one access-log line, then the chain's `log` phase (for an upgrade, when the
//!      tunnel closes).
//! - [`upstream::health`]: one background service running every group's active checks.
//! - [`admin`]: `/metrics` ([`metrics`]), `/healthz`, `/status`; [`accesslog`]: the access log
//!   on a writer thread of its own; [`drain`]: 1001 closes at the end of the grace period,
//!   exit as soon as nothing is open; [`supervise`]: background services restart after a
//!   panic.

pub mod accesslog;
pub mod admin;
pub mod app;
pub mod builder;
pub mod checks;
pub mod cli;
pub mod config;
pub mod conn;
pub mod drain;
pub mod filters;
pub mod forward;
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
pub use builder::Builder;
