//! Counters behind budgets, rate limits and concurrency, in one trait with two stores: memory
//! (the embedded default, persisted to SQLite by [`super::persist`]) and Redis (shared by
//! replicas). A counter's name carries its window, so a new window starts at zero.

use async_trait::async_trait;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

/// How a reservation is checked against its counter's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The counter after adding must not pass the limit (rate limits, concurrency).
    Fits,
    /// The counter before adding must be below the limit (budgets: a request is refused once
    /// the budget is used up, counting what requests in flight have reserved).
    Below,
    /// Counted, never refused.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub counter: String,
    pub amount: i64,
    /// How much of `amount` is a reservation still in flight (negative when one is settled).
    /// Reservations are not spend: they are not persisted, and a reset keeps them.
    pub hold: i64,
    pub limit: i64,
    pub check: Check,
    /// When the counter may be forgotten (its window's end), Unix ms.
    pub expires_ms: i64,
}

impl Charge {
    fn passes(&self, current: i64) -> bool {
        match self.check {
            Check::Fits => current.saturating_add(self.amount) <= self.limit,
            Check::Below => current < self.limit,
            Check::None => true,
        }
    }
}

#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a reservation found: the counters' values after it, or the first charge refused and
/// the values it saw.
pub type Reserved = Result<Vec<i64>, (usize, Vec<i64>)>;

#[async_trait]
pub trait Store: Send + Sync {
    /// All or nothing: adds every amount unless one charge fails its check.
    async fn reserve(&self, charges: &[Charge], now_ms: i64) -> Result<Reserved, StoreError>;
    /// Adds the amounts unchecked (settling, giving back); runs off the request path.
    fn adjust(&self, charges: &[Charge], now_ms: i64) -> Result<Vec<i64>, StoreError>;
    /// Current values (0 for a counter never charged or expired).
    async fn get(&self, counters: &[String], now_ms: i64) -> Result<Vec<i64>, StoreError>;
    /// Drops every counter whose name starts with `prefix`.
    fn reset(&self, prefix: &str) -> Result<usize, StoreError>;
    /// True the first time `name` is marked in its window (alerts fire once).
    fn first_time(&self, name: &str, expires_ms: i64, now_ms: i64) -> Result<bool, StoreError>;
    /// In this process's memory: calls never wait on I/O.
    fn local(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub value: i64,
    pub expires_ms: i64,
    /// The part of `value` held by requests in flight.
    pub held: i64,
}

const SHARDS: usize = 64;

/// Counters in memory, in shards each behind its own lock: a reservation locks only the shards
/// its counters live in, always in shard order, for a few microseconds.
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    slots: HashMap<String, Slot>,
    /// Counters changed since the last [`MemoryStore::take_dirty`].
    dirty: Vec<String>,
}

impl Shard {
    fn value(&mut self, name: &str, now_ms: i64) -> i64 {
        match self.slots.get(name) {
            Some(s) if s.expires_ms > now_ms => s.value,
            Some(_) => {
                self.slots.remove(name);
                0
            }
            None => 0,
        }
    }

    fn add(&mut self, c: &Charge, now_ms: i64) -> i64 {
        let held = match self.slots.get(&c.counter) {
            Some(s) if s.expires_ms > now_ms => s.held,
            _ => 0,
        };
        let held = held.saturating_add(c.hold).max(0);
        // Settling never takes a counter below what is still held (after a reset, say).
        let v = self
            .value(&c.counter, now_ms)
            .saturating_add(c.amount)
            .max(held);
        let slot = Slot {
            value: v,
            expires_ms: c.expires_ms,
            held,
        };
        match self.slots.entry(c.counter.clone()) {
            Entry::Occupied(mut e) => {
                e.insert(slot);
            }
            Entry::Vacant(e) => {
                e.insert(slot);
            }
        }
        self.dirty.push(c.counter.clone());
        v
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl MemoryStore {
    fn shard_of(&self, name: &str) -> usize {
        (self.hasher.hash_one(name) as usize) % SHARDS
    }

    /// Locks the shards the counters live in, in order; returns the guards and each counter's
    /// index into them.
    fn lock_for<'a>(
        &'a self,
        names: impl Iterator<Item = &'a str>,
    ) -> (Vec<MutexGuard<'a, Shard>>, Vec<usize>) {
        let shard_ids: Vec<usize> = names.map(|n| self.shard_of(n)).collect();
        let mut order = shard_ids.clone();
        order.sort_unstable();
        order.dedup();
        let guards = order.iter().map(|&i| lock(&self.shards[i])).collect();
        let at = shard_ids
            .iter()
            .map(|s| order.binary_search(s).unwrap_or(0))
            .collect();
        (guards, at)
    }

    fn reserve_now(&self, charges: &[Charge], now_ms: i64) -> Reserved {
        let (mut guards, at) = self.lock_for(charges.iter().map(|c| c.counter.as_str()));
        let seen: Vec<i64> = charges
            .iter()
            .zip(&at)
            .map(|(c, &g)| guards[g].value(&c.counter, now_ms))
            .collect();
        // Two charges on one counter (levels that share a name cannot, but be safe): check the sum.
        for (i, c) in charges.iter().enumerate() {
            let before: i64 = charges[..i]
                .iter()
                .filter(|o| o.counter == c.counter)
                .map(|o| o.amount)
                .sum();
            if !c.passes(seen[i].saturating_add(before)) {
                return Err((i, seen));
            }
        }
        Ok(charges
            .iter()
            .zip(&at)
            .map(|(c, &g)| guards[g].add(c, now_ms))
            .collect())
    }

    /// Every counter changed since the last call, with its settled value now (less what is
    /// held in flight; `None` once expired or reset to nothing); for persistence.
    pub fn take_dirty(&self) -> Vec<(String, Option<Slot>)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut s = lock(shard);
            let names = std::mem::take(&mut s.dirty);
            for name in names {
                let slot = s.slots.get(&name).map(|v| Slot {
                    value: v.value - v.held,
                    expires_ms: v.expires_ms,
                    held: 0,
                });
                out.push((name, slot.filter(|v| v.value != 0)));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    /// Puts back counters read from storage at start (settled values, nothing held).
    pub fn restore(&self, name: String, slot: Slot) {
        let i = self.shard_of(&name);
        lock(&self.shards[i]).slots.insert(name, slot);
    }

    /// Forgets expired counters.
    pub fn sweep(&self, now_ms: i64) {
        for shard in &self.shards {
            let mut s = lock(shard);
            let expired: Vec<String> = s
                .slots
                .iter()
                .filter(|(_, v)| v.expires_ms <= now_ms)
                .map(|(k, _)| k.clone())
                .collect();
            for k in expired {
                s.slots.remove(&k);
                s.dirty.push(k);
            }
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn local(&self) -> bool {
        true
    }

    async fn reserve(&self, charges: &[Charge], now_ms: i64) -> Result<Reserved, StoreError> {
        Ok(self.reserve_now(charges, now_ms))
    }

    fn adjust(&self, charges: &[Charge], now_ms: i64) -> Result<Vec<i64>, StoreError> {
        let (mut guards, at) = self.lock_for(charges.iter().map(|c| c.counter.as_str()));
        Ok(charges
            .iter()
            .zip(&at)
            .map(|(c, &g)| guards[g].add(c, now_ms))
            .collect())
    }

    async fn get(&self, counters: &[String], now_ms: i64) -> Result<Vec<i64>, StoreError> {
        let (mut guards, at) = self.lock_for(counters.iter().map(String::as_str));
        Ok(counters
            .iter()
            .zip(&at)
            .map(|(c, &g)| guards[g].value(c, now_ms))
            .collect())
    }

    fn reset(&self, prefix: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for shard in &self.shards {
            let mut s = lock(shard);
            let mut touched = Vec::new();
            for (k, v) in s.slots.iter_mut().filter(|(k, _)| k.starts_with(prefix)) {
                // What requests in flight hold stays until they settle.
                v.value = v.held;
                touched.push(k.clone());
            }
            n += touched.len();
            s.dirty.extend(touched);
        }
        Ok(n)
    }

    fn first_time(&self, name: &str, expires_ms: i64, now_ms: i64) -> Result<bool, StoreError> {
        let i = self.shard_of(name);
        let mut s = lock(&self.shards[i]);
        if s.value(name, now_ms) > 0 {
            return Ok(false);
        }
        let c = Charge {
            counter: name.to_string(),
            amount: 1,
            hold: 0,
            limit: 0,
            check: Check::None,
            expires_ms,
        };
        s.add(&c, now_ms);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn charge(counter: &str, amount: i64, limit: i64, check: Check) -> Charge {
        Charge {
            counter: counter.into(),
            amount,
            hold: 0,
            limit,
            check,
            expires_ms: 1_000,
        }
    }

    #[tokio::test]
    async fn a_refused_reservation_charges_nothing() {
        let s = MemoryStore::default();
        let ok = [
            charge("a", 3, 5, Check::Fits),
            charge("b", 1, 10, Check::Fits),
        ];
        assert_eq!(s.reserve(&ok, 0).await.unwrap(), Ok(vec![3, 1]));
        let over = [
            charge("b", 1, 10, Check::Fits),
            charge("a", 3, 5, Check::Fits),
        ];
        assert_eq!(s.reserve(&over, 0).await.unwrap(), Err((1, vec![1, 3])));
        let names = ["a".to_string(), "b".to_string()];
        assert_eq!(s.get(&names, 0).await.unwrap(), vec![3, 1]);
    }

    #[tokio::test]
    async fn below_admits_until_the_limit_is_reached() {
        let s = MemoryStore::default();
        let c = [charge("usd", 40, 100, Check::Below)];
        let mut admitted = 0;
        for _ in 0..4 {
            if s.reserve(&c, 0).await.unwrap().is_ok() {
                admitted += 1;
            }
        }
        // 0, 40 and 80 are below 100; 120 is not.
        assert_eq!(admitted, 3);
    }

    #[tokio::test]
    async fn counters_expire_with_their_window_and_can_be_reset() {
        let s = MemoryStore::default();
        s.adjust(&[charge("k:x", 7, 0, Check::None)], 0).unwrap();
        assert_eq!(s.get(&["k:x".into()], 999).await.unwrap(), vec![7]);
        assert_eq!(s.get(&["k:x".into()], 1_000).await.unwrap(), vec![0]);
        s.adjust(&[charge("k:y", 7, 0, Check::None)], 0).unwrap();
        assert_eq!(s.reset("k:").unwrap(), 1);
        assert_eq!(s.get(&["k:y".into()], 0).await.unwrap(), vec![0]);
        assert!(s.first_time("alert", 1_000, 0).unwrap());
        assert!(!s.first_time("alert", 1_000, 10).unwrap());
        assert!(s.first_time("alert", 2_000, 1_000).unwrap());
    }

    #[test]
    fn concurrent_reservations_never_pass_the_limit() {
        let s = Arc::new(MemoryStore::default());
        let admitted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (s, admitted) = (s.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        // Each charge touches counters in a different order.
                        let mut c = vec![
                            charge("team", 1, 1_000, Check::Fits),
                            charge(&format!("key{}", (t + i) % 5), 1, 1_000_000, Check::Fits),
                            charge("customer", 1, 1_000_000, Check::Fits),
                        ];
                        if i % 2 == 0 {
                            c.reverse();
                        }
                        if s.reserve_now(&c, 0).is_ok() {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(std::sync::atomic::Ordering::Relaxed), 1_000);
    }
}
