//! Upstream groups: their peers, how one is picked, their active health checks, and the idle
//! connections kept to them.

pub mod attempts;
pub mod balancer;
pub mod discovery;
pub mod health;
pub mod peer;
pub mod pool;
pub mod schedule;

pub use balancer::UpstreamGroup;
pub use peer::{InflightGuard, Peer};
