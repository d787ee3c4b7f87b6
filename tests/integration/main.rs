//! portico's integration tests: the real binary, real origins and WebSocket echo servers on
//! 127.0.0.1, real signals. One test binary; `harness` starts things, `origins` serves.

mod dns;
mod harness;
mod origins;

mod affinity;
mod balancing;
mod canonical;
mod config_check;
mod discovery;
mod examples;
mod filters;
mod forwarding;
mod headers;
mod hostile;
mod http2;
mod lifecycle;
mod limits;
mod observability;
mod policy;
mod reload;
mod resources;
mod routing;
mod tls;
mod upgrades;
mod wasm;
mod websocket;
