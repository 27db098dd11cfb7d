//! Shared health of providers and keys: a circuit breaker per provider, and a cooldown per key
//! (after a 429, or a 401/403). Plain atomics: no lock on the request path.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds on a monotonic clock that starts with the process (never 0 after start).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Opens after `threshold` consecutive failures; while open the provider is skipped, and once
/// the cooldown is over one request at a time probes it. A success closes it.
#[derive(Debug, Default)]
pub struct Breaker {
    failures: AtomicU32,
    open_until: AtomicU64,
}

impl Breaker {
    /// Whether a request may use the provider now (claiming the probe when half-open).
    pub fn allows(&self, now: u64, threshold: u32, cooldown: u64) -> bool {
        if self.failures.load(Ordering::Acquire) < threshold {
            return true;
        }
        let until = self.open_until.load(Ordering::Acquire);
        now >= until
            && self
                .open_until
                .compare_exchange(until, now + cooldown, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    pub fn success(&self) {
        if self.failures.swap(0, Ordering::AcqRel) != 0 {
            self.open_until.store(0, Ordering::Release);
        }
    }

    pub fn failure(&self, now: u64, threshold: u32, cooldown: u64) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= threshold {
            self.open_until.fetch_max(now + cooldown, Ordering::AcqRel);
        }
    }
}

/// A key left out until a moment on the `now_ms` clock.
#[derive(Debug, Default)]
pub struct Cooldown(AtomicU64);

impl Cooldown {
    pub fn until(&self, until: u64) {
        self.0.fetch_max(until, Ordering::AcqRel);
    }

    pub fn ready(&self, now: u64) -> bool {
        self.0.load(Ordering::Acquire) <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_then_lets_one_probe_through() {
        let b = Breaker::default();
        for _ in 0..2 {
            b.failure(1000, 3, 500);
            assert!(b.allows(1000, 3, 500));
        }
        b.failure(1000, 3, 500);
        assert!(!b.allows(1000, 3, 500), "open after 3 failures");
        assert!(!b.allows(1499, 3, 500));
        assert!(
            b.allows(1500, 3, 500),
            "the first request after the cooldown probes"
        );
        assert!(!b.allows(1501, 3, 500), "only one probe at a time");
        b.failure(1600, 3, 500);
        assert!(!b.allows(1700, 3, 500), "a failed probe keeps it open");
        assert!(b.allows(2100, 3, 500));
        b.success();
        assert!(
            b.allows(2101, 3, 500) && b.allows(2101, 3, 500),
            "closed again"
        );
    }

    #[test]
    fn cooldown_keeps_the_latest_deadline() {
        let c = Cooldown::default();
        assert!(c.ready(now_ms()));
        c.until(500);
        c.until(200);
        assert!(!c.ready(499));
        assert!(c.ready(500));
    }
}
