//! Where exact entries live: in this process (quick_cache, bounded by bytes), or in Redis,
//! shared by every replica. With Redis, semantic vectors are also appended to a Redis stream that
//! each replica reads into its local index, from the start when it boots.

use super::entry::Entry;
use super::index::Index;
use async_trait::async_trait;
use quick_cache::sync::Cache as Quick;
use quick_cache::Weighter;
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
    pub fn new(max_bytes: u64, index: Option<Arc<Index>>) -> MemoryStore {
        let items = (max_bytes / 4096).clamp(64, 1 << 22) as usize;
        MemoryStore {
            entries: Quick::with_weighter(items, max_bytes, ByBytes),
            index,
        }
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
    //! `tollgate:cache:vectors`, capped near the index's size.

    use super::*;
    use redis::aio::MultiplexedConnection;
    use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
    use redis::AsyncCommands;

    const STREAM: &str = "tollgate:cache:vectors";

    pub struct RedisStore {
        conn: MultiplexedConnection,
        max_vectors: usize,
        /// Runs the connection and the stream reader, whatever runtime the caller is on.
        runtime: tokio::runtime::Runtime,
    }

    fn entry_key(namespace: &str, key: u128) -> String {
        format!("tollgate:cache:e:{namespace}:{key:032x}")
    }

    fn err(e: redis::RedisError) -> String {
        format!("redis: {e}")
    }

    impl RedisStore {
        /// Connects, and with an index, starts feeding it from the stream (from its start).
        pub fn connect(url: &str, index: Option<Arc<Index>>) -> Result<RedisStore, String> {
            let client = redis::Client::open(url).map_err(|e| format!("cache.redis_url: {e}"))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("tollgate-cache-redis")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let conn = runtime
                .block_on(client.get_multiplexed_async_connection())
                .map_err(|e| format!("cannot connect to redis at {url}: {e}"))?;
            let max_vectors = index.as_ref().map_or(0, |i| i.max_entries());
            if let Some(index) = index {
                let conn = runtime
                    .block_on(client.get_multiplexed_async_connection())
                    .map_err(|e| format!("cannot connect to redis at {url}: {e}"))?;
                let last = runtime.block_on(load(conn.clone(), &index))?;
                runtime.spawn(follow(conn, index, last));
            }
            Ok(RedisStore {
                conn,
                max_vectors,
                runtime,
            })
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

    /// Reads the whole stream into the index; returns the last id read.
    async fn load(mut conn: MultiplexedConnection, index: &Index) -> Result<String, String> {
        let now = super::super::now_ms();
        let mut last = "0-0".to_string();
        loop {
            let start = format!("({last}");
            let page: StreamRangeReply = conn
                .xrange_count(
                    STREAM,
                    if last == "0-0" { "-" } else { start.as_str() },
                    "+",
                    1000,
                )
                .await
                .map_err(err)?;
            if page.ids.is_empty() {
                return Ok(last);
            }
            for id in &page.ids {
                if let Some((scope, key, exp, v)) = decode(&id.map) {
                    if exp > now {
                        index.insert(scope, key, &v, exp);
                    }
                }
                last = id.id.clone();
            }
        }
    }

    /// Follows the stream for vectors other replicas (and this one) add.
    async fn follow(mut conn: MultiplexedConnection, index: Arc<Index>, mut last: String) {
        let opts = StreamReadOptions::default().block(1000).count(500);
        loop {
            let reply: Result<StreamReadReply, _> =
                conn.xread_options(&[STREAM], &[last.as_str()], &opts).await;
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
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    #[async_trait]
    impl Store for RedisStore {
        async fn get(&self, namespace: &str, key: u128, now_ms: u64) -> Option<Arc<Entry>> {
            let mut conn = self.conn.clone();
            let name = entry_key(namespace, key);
            let got = self
                .runtime
                .spawn(async move { conn.get::<_, Option<String>>(name).await })
                .await;
            let text = match got {
                Ok(Ok(t)) => t?,
                Ok(Err(e)) => {
                    log::warn!("cache: redis read failed: {e}");
                    return None;
                }
                Err(_) => return None,
            };
            let e: Entry = serde_json::from_str(&text).ok()?;
            (e.expires_ms > now_ms).then(|| Arc::new(e))
        }

        async fn put(&self, key: u128, entry: Arc<Entry>, vector: Option<(u128, Vec<f32>)>) {
            let mut conn = self.conn.clone();
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
                .runtime
                .spawn(async move {
                    let _: () = conn.pset_ex(&name, text, ttl_ms).await?;
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
                            .query_async(&mut conn)
                            .await?;
                    }
                    Ok::<(), redis::RedisError>(())
                })
                .await;
            if let Ok(Err(e)) = done {
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
                let mut conn = self.conn.clone();
                let _: Result<(), String> = self
                    .runtime
                    .spawn(async move { conn.del::<_, ()>(STREAM).await.map_err(err) })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
            }
            Ok(n)
        }
    }

    impl RedisStore {
        async fn delete_matching(&self, pattern: String) -> Result<u64, String> {
            let mut conn = self.conn.clone();
            self.runtime
                .spawn(async move {
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
                            .await
                            .map_err(err)?;
                        if !names.is_empty() {
                            n += conn.del::<_, u64>(names).await.map_err(err)?;
                        }
                        if next == 0 {
                            return Ok(n);
                        }
                        cursor = next;
                    }
                })
                .await
                .map_err(|e| e.to_string())?
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
            usage: Usage::default(),
            namespace: ns.into(),
            created_ms: 0,
            expires_ms,
        })
    }

    #[tokio::test]
    async fn entries_expire_and_bytes_bound_the_store() {
        let s = MemoryStore::new(100_000, None);
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
    async fn clearing_a_namespace_leaves_the_others() {
        let s = MemoryStore::new(1 << 20, None);
        s.put(1, entry("a", 1, u64::MAX), None).await;
        s.put(2, entry("b", 1, u64::MAX), None).await;
        assert_eq!(s.clear(Some("a")).await.unwrap(), 1);
        assert!(s.get("a", 1, 0).await.is_none());
        assert!(s.get("b", 2, 0).await.is_some());
        assert!(s.remove(2).await.unwrap());
        assert!(!s.remove(2).await.unwrap());
    }
}
