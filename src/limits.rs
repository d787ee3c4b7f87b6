//! Abuse limits per client IP (as resolved through `trusted_proxies`): a request rate with a
//! burst (GCRA, the `governor` crate) and a cap on concurrent upgraded connections.

use crate::config::schema::RateLimitSection;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

type KeyedLimiter = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>;

/// A route's limits, compiled.
pub struct Limits {
    rate: Option<KeyedLimiter>,
    pub max_connections: Option<u32>,
}

impl Limits {
    pub fn new(section: &RateLimitSection) -> Self {
        let rate = section
            .requests_per_second
            .and_then(NonZeroU32::new)
            .map(|rps| {
                let burst = section.burst.and_then(NonZeroU32::new).unwrap_or(rps);
                RateLimiter::keyed(Quota::per_second(rps).allow_burst(burst))
            });
        Limits {
            rate,
            max_connections: section.max_connections,
        }
    }

    /// `Ok` if `ip` may send one more request now; else how long until it may (Retry-After).
    pub fn check_rate(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.rate else {
            return Ok(());
        };
        limiter
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets clients whose bucket is full again: the memory of the limiter is the number of
    /// clients seen recently, not ever. Called by the health service's tick.
    pub fn forget_idle_clients(&self) {
        if let Some(limiter) = &self.rate {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Open upgraded connections by (route name, client IP). Keyed by name so a reload does not
/// forget connections opened under the previous config.
type SlotKey = (Arc<str>, IpAddr);

static OPEN: LazyLock<Mutex<HashMap<SlotKey, u32>>> = LazyLock::new(Default::default);

/// One open upgraded connection, counted until dropped.
pub struct ConnectionSlot {
    key: SlotKey,
}

/// Counts a new upgraded connection of `ip` on `route`, unless it already has `max` open.
pub fn acquire_connection(route: &Arc<str>, ip: IpAddr, max: u32) -> Option<ConnectionSlot> {
    let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
    let key = (Arc::clone(route), ip);
    let count = open.entry(key.clone()).or_insert(0);
    if *count >= max {
        return None;
    }
    *count += 1;
    Some(ConnectionSlot { key })
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limits = Limits::new(&RateLimitSection {
            requests_per_second: Some(1),
            burst: Some(3),
            max_connections: None,
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.check_rate(ip).is_ok());
        }
        let wait = limits.check_rate(ip).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(
            limits.check_rate("192.0.2.2".parse().unwrap()).is_ok(),
            "another client has its own bucket"
        );
    }

    #[test]
    fn connection_slots_are_released_on_drop() {
        let route: Arc<str> = Arc::from("test-slots");
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let a = acquire_connection(&route, ip, 2).unwrap();
        let _b = acquire_connection(&route, ip, 2).unwrap();
        assert!(acquire_connection(&route, ip, 2).is_none());
        drop(a);
        assert!(acquire_connection(&route, ip, 2).is_some());
    }
}
