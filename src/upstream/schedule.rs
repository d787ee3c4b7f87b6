//! When a group's next background job (a health-check pass, a DNS resolution) is due, and
//! whether one is running. Owned by the group, so a reload that keeps the group keeps its
//! rhythm, and a new group's first job is due at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Schedule {
    pub interval: Duration,
    next_due: Mutex<Instant>,
    running: AtomicBool,
}

impl Schedule {
    pub fn new(interval: Duration) -> Self {
        Schedule {
            interval,
            next_due: Mutex::new(Instant::now()),
            running: AtomicBool::new(false),
        }
    }

    /// Whether a job is due at `now` and none is running; if so the caller runs one (and
    /// calls `release` when it ends) and the next is due an interval later.
    pub fn claim(&self, now: Instant) -> bool {
        let mut due = self.next_due.lock().unwrap_or_else(|p| p.into_inner());
        if *due <= now && !self.running.swap(true, Ordering::AcqRel) {
            *due = now + self.interval;
            return true;
        }
        false
    }

    /// How long from `now` until the next job is due.
    pub fn wait(&self, now: Instant) -> Duration {
        let due = self.next_due.lock().unwrap_or_else(|p| p.into_inner());
        due.saturating_duration_since(now)
    }

    /// Brings the next job forward to `at` (a DNS answer that expires sooner).
    pub fn due_by(&self, at: Instant) {
        let mut due = self.next_due.lock().unwrap_or_else(|p| p.into_inner());
        *due = (*due).min(at);
    }

    /// The job ended (done, or it panicked): the next may start.
    pub fn release(&self) {
        self.running.store(false, Ordering::Release);
    }
}
