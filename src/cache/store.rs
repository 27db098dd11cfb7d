//! Where exact entries live: in this process (quick_cache, bounded by bytes), or in Redis,
//! shared by every replica. With Redis, semantic vectors are also appended to a Redis stream that
//! each replica reads into its local index, from the start when it boots.

use super::entry::Entry;
use super::index::Index;
use async_trait::async_trait;
use quick_cache::sync::Cache as Quick;
use quick_cache::{OptionsBuilder, Weighter};
use std::sync::Arc;

#[async_trait]
pub trait Store: Send + Sync {
    /// The entry under `key` in `namespace`, if it is there and not expired.
    async fn get(&self, namespace: &str, key: u128, now_ms: u64) -> Option<Arc<Entry>>;
    /// Stores the entry, and its vector in `scope` for the semantic layer.
    async fn put(&self, key: u128, entry: Arc<Entry>, vector: Option<(u128, Vec<f32>)>);
    /// Removes one entry by key; true if it was there.
    async fn remove(&self, key: u128) -> Result<bool, String>;
    /// Removes every entry of `namespace`, or every entry; returns how many.
    async fn clear(&self, namespace: Option<&str>) -> Result<u64, String>;
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<u128, Arc<Entry>> for ByBytes {
    fn weight(&self, _key: &u128, e: &Arc<Entry>) -> u64 {
        e.weight()
    }
}

pub struct MemoryStore {
    entries: Quick<u128, Arc<Entry>, ByBytes>,
    index: Option<Arc<Index>>,
}

impl MemoryStore {
    /// `max_entry_bytes` sets the shard count: quick_cache splits `max_bytes` evenly across its
    /// shards and refuses an entry larger than most of one, so each shard holds at least two of
    /// the largest entries allowed.
    pub fn new(max_bytes: u64, max_entry_bytes: u64, index: Option<Arc<Index>>) -> MemoryStore {
        let items = (max_bytes / 4096).clamp(64, 1 << 22) as usize;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let fit = (max_bytes / max_entry_bytes.saturating_mul(2).max(1)).max(1) as usize;
        // A power of two, or quick_cache rounds it up.
        let shards = 1usize << fit.min(cpus * 4).ilog2();
        let entries = OptionsBuilder::new()
            .estimated_items_capacity(items)
            .weight_capacity(max_bytes)
            .shards(shards)
            .build()
            .map(|o| Quick::with_options(o, ByBytes, Default::default(), Default::default()))
            .unwrap_or_else(|_| Quick::with_weighter(items, max_bytes, ByBytes));
        MemoryStore { entries, index }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, _namespace: &str, key: u128, now_ms: u64) -> Option<Arc<Entry>> {
        let e = self.entries.get(&key)?;
        if e.expires_ms <= now_ms {
            self.entries.remove(&key);
            return None;
        }
        Some(e)
    }

    async fn put(&self, key: u128, entry: Arc<Entry>, vector: Option<(u128, Vec<f32>)>) {
        let expires_ms = entry.expires_ms;
        self.entries.insert(key, entry);
        if let (Some(index), Some((scope, v))) = (&self.index, vector) {
            index.insert(scope, key, &v, expires_ms);
        }
    }

    async fn remove(&self, key: u128) -> Result<bool, String> {
        Ok(self.entries.remove(&key).is_some())
    }

    async fn clear(&self, namespace: Option<&str>) -> Result<u64, String> {
        let before = self.entries.len();
        match namespace {
            Some(ns) => self.entries.retain(|_, e| e.namespace != ns),
            None => {
                self.entries.clear();
                if let Some(index) = &self.index {
                    index.clear();
                }
            }
        }
        Ok(before.saturating_sub(self.entries.len()) as u64)
    }
}

pub mod redis_store {
    //! Entries as `tollgate:cache:e:{namespace}:{key}` with a TTL; vectors in the stream
    //! `tollgate:cache:vectors`, capped near the index's size. Redis trouble never fails or
    //! stalls a request: every call has a short deadline, a failed call counts as a miss, and
    //! the connection is remade in the background.

    use super::*;
    use redis::aio::MultiplexedConnection;
    use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
    use redis::AsyncCommands;
    use std::future::Future;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    const STREAM: &str = "tollgate:cache:vectors";
    /// The longest a lookup waits for Redis before answering as a miss.
    const DEADLINE: Duration = Duration::from_millis(250);
    /// Admin calls (SCAN over many keys) may take longer.
    const ADMIN_DEADLINE: Duration = Duration::from_secs(30);
    const RECONNECT_EVERY_MS: u64 = 1000;
    /// The vector feed's blocking read, and how long it waits for any answer from Redis.
    const BLOCK_MS: usize = 1000;
    const FEED_DEADLINE: Duration = Duration::from_millis(BLOCK_MS as u64 + 2000);

    pub struct RedisStore {
        client: redis::Client,
        conn: Arc<Mutex<Option<MultiplexedConnection>>>,
        last_attempt_ms: AtomicU64,
        max_vectors: usize,
        /// Runs the connection and the stream reader, whatever runtime the caller is on.
        runtime: Option<tokio::runtime::Runtime>,
    }

    fn entry_key(namespace: &str, key: u128) -> String {
        format!("tollgate:cache:e:{namespace}:{key:032x}")
    }

    fn err(e: redis::RedisError) -> String {
        format!("redis: {e}")
    }

    impl RedisStore {
        /// Starts the store; Redis need not be up yet. With an index, a background task loads
        /// the vector stream from its start and then follows it.
        pub fn connect(url: &str, index: Option<Arc<Index>>) -> Result<RedisStore, String> {
            let client = redis::Client::open(url).map_err(|e| format!("cache.redis_url: {e}"))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("tollgate-cache-redis")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let max_vectors = index.as_ref().map_or(0, |i| i.max_entries());
            let first = runtime.block_on(async {
                tokio::time::timeout(DEADLINE * 4, client.get_multiplexed_async_connection()).await
            });
            let conn = match first {
                Ok(Ok(c)) => Some(c),
                _ => {
                    log::warn!(
                        "cache: redis at {url} is not reachable yet; caching resumes when it is"
                    );
                    None
                }
            };
            if let Some(index) = index {
                runtime.spawn(feed(client.clone(), index));
            }
            Ok(RedisStore {
                client,
                conn: Arc::new(Mutex::new(conn)),
                last_attempt_ms: AtomicU64::new(0),
                max_vectors,
                runtime: Some(runtime),
            })
        }

        /// The connection, or `None` (and a reconnect started, at most once a second).
        fn conn(&self) -> Option<MultiplexedConnection> {
            if let Some(c) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                return Some(c.clone());
            }
            let now = super::super::now_ms();
            let last = self.last_attempt_ms.load(Ordering::Relaxed);
            let due = now.saturating_sub(last) >= RECONNECT_EVERY_MS
                && self
                    .last_attempt_ms
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok();
            if let (true, Some(rt)) = (due, &self.runtime) {
                let (client, slot) = (self.client.clone(), self.conn.clone());
                rt.spawn(async move {
                    let c = tokio::time::timeout(
                        DEADLINE * 4,
                        client.get_multiplexed_async_connection(),
                    );
                    if let Ok(Ok(c)) = c.await {
                        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
                    }
                });
            }
            None
        }

        /// Runs `f` on the store's runtime within `deadline`; a broken connection is dropped so
        /// that the next call remakes it.
        async fn call<T, F, Fut>(&self, deadline: Duration, f: F) -> Result<T, String>
        where
            T: Send + 'static,
            F: FnOnce(MultiplexedConnection) -> Fut,
            Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
        {
            let conn = self.conn().ok_or("redis: not connected")?;
            let rt = self.runtime.as_ref().ok_or("redis: stopped")?;
            let fut = f(conn);
            let done = rt.spawn(async move { tokio::time::timeout(deadline, fut).await });
            match done.await {
                Ok(Ok(Ok(v))) => Ok(v),
                Ok(Ok(Err(e))) => {
                    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    }
                    Err(err(e))
                }
                Ok(Err(_)) => {
                    *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    Err("redis: timed out".into())
                }
                Err(e) => Err(e.to_string()),
            }
        }
    }

    impl Drop for RedisStore {
        fn drop(&mut self) {
            // Dropped from async code at shutdown: a runtime must not block there.
            if let Some(rt) = self.runtime.take() {
                rt.shutdown_background();
            }
        }
    }

    /// One stream record: scope, key, expiry and the vector's little-endian f32s.
    fn decode(
        fields: &std::collections::HashMap<String, redis::Value>,
    ) -> Option<(u128, u128, u64, Vec<f32>)> {
        let text = |k: &str| match fields.get(k)? {
            redis::Value::BulkString(b) => Some(b.clone()),
            _ => None,
        };
        let scope = u128::from_str_radix(std::str::from_utf8(&text("s")?).ok()?, 16).ok()?;
        let key = u128::from_str_radix(std::str::from_utf8(&text("k")?).ok()?, 16).ok()?;
        let exp = std::str::from_utf8(&text("x")?).ok()?.parse().ok()?;
        let raw = text("v")?;
        let v = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some((scope, key, exp, v))
    }

    /// Loads the vector stream into the index from its start, then follows it; reconnects
    /// (reading on from the last id) whenever Redis goes away.
    async fn feed(client: redis::Client, index: Arc<Index>) {
        let mut last = "0-0".to_string();
        let mut loaded = false;
        loop {
            let connect = client.get_multiplexed_async_connection();
            let mut conn = match tokio::time::timeout(DEADLINE * 4, connect).await {
                Ok(Ok(c)) => c,
                _ => {
                    tokio::time::sleep(Duration::from_millis(RECONNECT_EVERY_MS)).await;
                    continue;
                }
            };
            if !loaded {
                match load(&mut conn, &index, &mut last).await {
                    Ok(()) => loaded = true,
                    Err(e) => {
                        log::warn!("cache: loading the vector stream failed: {e}");
                        tokio::time::sleep(Duration::from_millis(RECONNECT_EVERY_MS)).await;
                        continue;
                    }
                }
            }
            let opts = StreamReadOptions::default().block(BLOCK_MS).count(500);
            loop {
                // A connection that goes silent (a dropped link, a stuck proxy) is replaced.
                let ids = [last.as_str()];
                let read = conn.xread_options(&[STREAM], &ids, &opts);
                let reply: Result<StreamReadReply, String> =
                    match tokio::time::timeout(FEED_DEADLINE, read).await {
                        Ok(r) => r.map_err(err),
                        Err(_) => Err("no answer in time".into()),
                    };
                match reply {
                    Ok(r) => {
                        for key in r.keys {
                            for id in key.ids {
                                if let Some((scope, k, exp, v)) = decode(&id.map) {
                                    index.insert(scope, k, &v, exp);
                                }
                                last = id.id;
                            }
                        }
                    }
                    Err(e) => {
                        log::warn!("cache: reading the vector stream failed: {e}");
                        tokio::time::sleep(Duration::from_millis(RECONNECT_EVERY_MS)).await;
                        break;
                    }
                }
            }
        }
    }

    async fn load(
        conn: &mut MultiplexedConnection,
        index: &Index,
        last: &mut String,
    ) -> Result<(), String> {
        let now = super::super::now_ms();
        loop {
            let start = format!("({last}");
            let from = if last == "0-0" { "-" } else { start.as_str() };
            let page: StreamRangeReply =
                tokio::time::timeout(FEED_DEADLINE, conn.xrange_count(STREAM, from, "+", 1000))
                    .await
                    .map_err(|_| "no answer in time".to_string())?
                    .map_err(err)?;
            if page.ids.is_empty() {
                return Ok(());
            }
            for id in &page.ids {
                if let Some((scope, key, exp, v)) = decode(&id.map) {
                    if exp > now {
                        index.insert(scope, key, &v, exp);
                    }
                }
                *last = id.id.clone();
            }
        }
    }

    #[async_trait]
    impl Store for RedisStore {
        async fn get(&self, namespace: &str, key: u128, now_ms: u64) -> Option<Arc<Entry>> {
            let name = entry_key(namespace, key);
            let got = self
                .call(DEADLINE, |mut c| async move {
                    c.get::<_, Option<String>>(name).await
                })
                .await;
            let text = match got {
                Ok(t) => t?,
                Err(e) => {
                    log::warn!("cache: redis read failed: {e}");
                    return None;
                }
            };
            let e: Entry = serde_json::from_str(&text).ok()?;
            (e.expires_ms > now_ms).then(|| Arc::new(e))
        }

        async fn put(&self, key: u128, entry: Arc<Entry>, vector: Option<(u128, Vec<f32>)>) {
            let name = entry_key(&entry.namespace, key);
            let ttl_ms = entry
                .expires_ms
                .saturating_sub(super::super::now_ms())
                .max(1);
            let Ok(text) = serde_json::to_string(&*entry) else {
                return;
            };
            let max = self.max_vectors;
            let expires = entry.expires_ms;
            let done = self
                .call(DEADLINE * 4, |mut c| async move {
                    let _: () = c.pset_ex(&name, text, ttl_ms).await?;
                    if let Some((scope, v)) = vector {
                        let raw: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                        let _: String = redis::cmd("XADD")
                            .arg(STREAM)
                            .arg("MAXLEN")
                            .arg("~")
                            .arg(max)
                            .arg("*")
                            .arg("s")
                            .arg(format!("{scope:032x}"))
                            .arg("k")
                            .arg(format!("{key:032x}"))
                            .arg("x")
                            .arg(expires)
                            .arg("v")
                            .arg(raw)
                            .query_async(&mut c)
                            .await?;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = done {
                log::warn!("cache: redis write failed: {e}");
            }
        }

        async fn remove(&self, key: u128) -> Result<bool, String> {
            let n = self
                .delete_matching(format!("tollgate:cache:e:*:{key:032x}"))
                .await?;
            Ok(n > 0)
        }

        async fn clear(&self, namespace: Option<&str>) -> Result<u64, String> {
            let pattern = match namespace {
                Some(ns) => format!("tollgate:cache:e:{ns}:*"),
                None => "tollgate:cache:e:*".to_string(),
            };
            let n = self.delete_matching(pattern).await?;
            if namespace.is_none() {
                self.call(ADMIN_DEADLINE, |mut c| async move {
                    c.del::<_, ()>(STREAM).await
                })
                .await?;
            }
            Ok(n)
        }
    }

    impl RedisStore {
        async fn delete_matching(&self, pattern: String) -> Result<u64, String> {
            self.call(ADMIN_DEADLINE, |mut conn| async move {
                let mut cursor: u64 = 0;
                let mut n = 0u64;
                loop {
                    let (next, names): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await?;
                    if !names.is_empty() {
                        n += conn.del::<_, u64>(names).await?;
                    }
                    if next == 0 {
                        return Ok(n);
                    }
                    cursor = next;
                }
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Usage;

    fn entry(ns: &str, body_len: usize, expires_ms: u64) -> Arc<Entry> {
        Arc::new(Entry {
            body: "x".repeat(body_len),
            provider: "p".into(),
            model: "m".into(),
            target: "p/m".into(),
            usage: Usage::default(),
            namespace: ns.into(),
            created_ms: 0,
            expires_ms,
        })
    }

    #[tokio::test]
    async fn entries_expire_and_bytes_bound_the_store() {
        let s = MemoryStore::new(100_000, 10_000, None);
        s.put(1, entry("a", 10, 1000), None).await;
        assert!(s.get("a", 1, 999).await.is_some());
        assert!(s.get("a", 1, 1000).await.is_none(), "expired");
        for k in 0..100u128 {
            s.put(k + 10, entry("a", 10_000, u64::MAX), None).await;
        }
        assert!(s.entries.weight() <= 100_000, "{}", s.entries.weight());
        assert!(s.entries.len() < 100);
    }

    #[tokio::test]
    async fn the_largest_entry_allowed_is_stored_whatever_the_cpu_count() {
        // By default quick_cache would cut 2 MiB into 4 × CPUs shards, too small for 600 KB.
        let s = MemoryStore::new(2 << 20, 1 << 20, None);
        s.put(1, entry("a", 600_000, u64::MAX), None).await;
        assert!(s.get("a", 1, 0).await.is_some());
        let s = MemoryStore::new(256 << 20, 4 << 20, None);
        s.put(2, entry("a", 4 << 20, u64::MAX), None).await;
        assert!(s.get("a", 2, 0).await.is_some());
    }

    #[tokio::test]
    async fn clearing_a_namespace_leaves_the_others() {
        let s = MemoryStore::new(1 << 20, 1 << 16, None);
        s.put(1, entry("a", 1, u64::MAX), None).await;
        s.put(2, entry("b", 1, u64::MAX), None).await;
        assert_eq!(s.clear(Some("a")).await.unwrap(), 1);
        assert!(s.get("a", 1, 0).await.is_none());
        assert!(s.get("b", 2, 0).await.is_some());
        assert!(s.remove(2).await.unwrap());
        assert!(!s.remove(2).await.unwrap());
    }
}
