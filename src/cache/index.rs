//! The vector index of the semantic layer. Entries are grouped by scope (tenant, namespace,
//! model, parameters and conversation), and a search only looks inside one scope. A scope is
//! searched exactly (a flat scan) while it is small and through an HNSW graph (usearch) once it
//! grows past `hnsw_from`; BENCHMARKS.md has the figures behind the switch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use usearch::{IndexOptions, MetricKind, ScalarKind};

const SHARDS: usize = 32;

pub struct Index {
    dims: usize,
    hnsw_from: usize,
    max_entries: usize,
    total: AtomicUsize,
    shards: Vec<Mutex<HashMap<u128, Arc<RwLock<Scope>>>>>,
}

#[derive(Default)]
struct Scope {
    /// The entry key in each slot; `None` once removed.
    slots: Vec<Option<u128>>,
    by_key: HashMap<u128, usize>,
    /// When each slot's entry expires, in ms since the epoch.
    expires: Vec<u64>,
    /// Slot-major vectors, while the scope is flat.
    flat: Vec<f32>,
    hnsw: Option<usearch::Index>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four lanes let the compiler vectorize the sum.
    let mut acc = [0f32; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl Index {
    pub fn new(dims: usize, hnsw_from: usize, max_entries: usize) -> Index {
        Index {
            dims,
            hnsw_from,
            max_entries,
            total: AtomicUsize::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    pub fn len(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, scope: u128) -> &Mutex<HashMap<u128, Arc<RwLock<Scope>>>> {
        &self.shards[(scope as usize) % SHARDS]
    }

    /// The `k` nearest entries of `scope` to `query`, most similar first, as (key, cosine).
    pub fn search(&self, scope: u128, query: &[f32], k: usize) -> Vec<(u128, f32)> {
        let Some(s) = lock(self.shard(scope)).get(&scope).cloned() else {
            return Vec::new();
        };
        let s = s.read().unwrap_or_else(|e| e.into_inner());
        if query.len() != self.dims {
            return Vec::new();
        }
        if let Some(h) = &s.hnsw {
            let Ok(m) = h.search(query, k) else {
                return Vec::new();
            };
            return m
                .keys
                .iter()
                .zip(&m.distances)
                .filter_map(|(&slot, &d)| Some((s.slots.get(slot as usize).copied()??, 1.0 - d)))
                .collect();
        }
        let mut best: Vec<(u128, f32)> = Vec::with_capacity(k + 1);
        for (slot, v) in s.flat.chunks_exact(self.dims).enumerate() {
            let Some(key) = s.slots[slot] else { continue };
            let cos = dot(query, v);
            if best.len() < k || cos > best[best.len() - 1].1 {
                let at = best.partition_point(|b| b.1 >= cos);
                best.insert(at, (key, cos));
                best.truncate(k);
            }
        }
        best
    }

    /// Adds `key` to `scope`; false if it was there already or the index is full.
    pub fn insert(&self, scope: u128, key: u128, v: &[f32], expires_ms: u64) -> bool {
        if v.len() != self.dims {
            return false;
        }
        let s = lock(self.shard(scope)).entry(scope).or_default().clone();
        let mut s = s.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&slot) = s.by_key.get(&key) {
            // Stored again (it had expired): the entry's new lifetime holds.
            s.expires[slot] = s.expires[slot].max(expires_ms);
            return false;
        }
        if self.len() >= self.max_entries {
            return false;
        }
        let slot = s.slots.len();
        s.slots.push(Some(key));
        s.expires.push(expires_ms);
        s.by_key.insert(key, slot);
        match &s.hnsw {
            Some(h) => {
                if h.size() + 1 > h.capacity() {
                    let _ = h.reserve((h.capacity() * 2).max(1024));
                }
                if h.add(slot as u64, v).is_err() {
                    s.slots[slot] = None;
                    s.by_key.remove(&key);
                    return false;
                }
            }
            None => s.flat.extend_from_slice(v),
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        if s.hnsw.is_none() && s.by_key.len() >= self.hnsw_from {
            if let Some(h) = self.build_hnsw(&s) {
                s.hnsw = Some(h);
                s.flat = Vec::new();
            }
        }
        true
    }

    fn build_hnsw(&self, s: &Scope) -> Option<usearch::Index> {
        let h = usearch::Index::new(&IndexOptions {
            dimensions: self.dims,
            metric: MetricKind::Cos,
            quantization: ScalarKind::F32,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            multi: false,
        })
        .ok()?;
        h.reserve((s.slots.len() * 2).max(1024)).ok()?;
        for (slot, v) in s.flat.chunks_exact(self.dims).enumerate() {
            if s.slots[slot].is_some() {
                h.add(slot as u64, v).ok()?;
            }
        }
        Some(h)
    }

    pub fn remove(&self, scope: u128, key: u128) -> bool {
        let Some(s) = lock(self.shard(scope)).get(&scope).cloned() else {
            return false;
        };
        let mut s = s.write().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = s.by_key.remove(&key) else {
            return false;
        };
        s.slots[slot] = None;
        if let Some(h) = &s.hnsw {
            let _ = h.remove(slot as u64);
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Removes the entries expired by `now_ms`; returns how many went.
    pub fn expire(&self, now_ms: u64) -> usize {
        self.retain(|_, expires| expires > now_ms)
    }

    /// Removes every entry for which `keep(key, expires_ms)` is false; returns how many went.
    pub fn retain(&self, keep: impl Fn(u128, u64) -> bool) -> usize {
        let mut gone = Vec::new();
        for shard in &self.shards {
            let scopes: Vec<(u128, Arc<RwLock<Scope>>)> =
                lock(shard).iter().map(|(k, v)| (*k, v.clone())).collect();
            for (scope, s) in scopes {
                let s = s.read().unwrap_or_else(|e| e.into_inner());
                gone.extend(
                    s.by_key
                        .iter()
                        .filter(|(k, slot)| !keep(**k, s.expires[**slot]))
                        .map(|(k, _)| (scope, *k)),
                );
            }
        }
        gone.into_iter()
            .filter(|(s, k)| self.remove(*s, *k))
            .count()
    }

    pub fn clear(&self) {
        for shard in &self.shards {
            lock(shard).clear();
        }
        self.total.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dims: usize) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut v: Vec<f32> = (0..dims)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        let n = dot(&v, &v).sqrt();
        v.iter_mut().for_each(|a| *a /= n);
        v
    }

    #[test]
    fn flat_and_hnsw_find_the_same_nearest_entry() {
        for hnsw_from in [usize::MAX, 1] {
            let index = Index::new(32, hnsw_from, 10_000);
            for i in 0..2000u64 {
                assert!(index.insert(7, i as u128, &unit(i, 32), u64::MAX));
            }
            for i in [0u64, 999, 1999] {
                let found = index.search(7, &unit(i, 32), 3);
                assert_eq!(found[0].0, i as u128, "hnsw_from {hnsw_from}");
                assert!((found[0].1 - 1.0).abs() < 1e-4);
                assert!(found[1].1 <= found[0].1);
            }
            assert!(
                index.search(8, &unit(0, 32), 3).is_empty(),
                "other scopes are apart"
            );
        }
    }

    #[test]
    fn removed_entries_are_not_found_and_the_bound_holds() {
        let index = Index::new(8, usize::MAX, 3);
        for i in 0..3u64 {
            assert!(index.insert(1, i as u128, &unit(i, 8), 100 + i));
        }
        assert!(!index.insert(1, 9, &unit(9, 8), 200), "full");
        assert!(!index.insert(1, 0, &unit(0, 8), 500), "no duplicates");
        assert_eq!(index.retain(|k, _| k != 1), 1);
        assert_ne!(index.search(1, &unit(1, 8), 1)[0].0, 1);
        assert_eq!(index.len(), 2);
        assert!(index.insert(1, 9, &unit(9, 8), 200), "room again");
        assert_eq!(
            index.expire(103),
            1,
            "entry 2 (102) goes; entry 0 was stored again until 500"
        );
        assert_eq!(index.len(), 2);
    }
}
