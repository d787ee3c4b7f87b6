//! Upstream groups: their peers, how one is picked, and their active health checks.

pub mod balancer;
pub mod health;
pub mod peer;

pub use balancer::UpstreamGroup;
pub use peer::{InflightGuard, Peer};
