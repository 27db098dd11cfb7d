//! Counters in Redis, shared by every gateway replica: a reservation is one Lua script that
//! checks every counter and then adds to all of them, so it is atomic across replicas.
//! Admission uses a multiplexed async connection; settling and admin calls use a blocking one
//! from their own threads. Names are prefixed `tollgate:`. Redis Cluster is not supported (a
//! reservation's counters would need one hash slot).

use super::store::{Charge, Check, Reserved, Store, StoreError};
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{Client, Script};
use std::sync::Mutex;

const PREFIX: &str = "tollgate:";

const RESERVE: &str = r"
local seen = {}
for i = 1, #KEYS do seen[i] = tonumber(redis.call('GET', KEYS[i]) or '0') end
for i = 1, #KEYS do
  local b = (i - 1) * 4
  local amount = tonumber(ARGV[b + 1])
  local limit = tonumber(ARGV[b + 2])
  local check = ARGV[b + 3]
  local cur = seen[i]
  for j = 1, i - 1 do
    if KEYS[j] == KEYS[i] then cur = cur + tonumber(ARGV[(j - 1) * 4 + 1]) end
  end
  if (check == 'f' and cur + amount > limit) or (check == 'b' and cur >= limit) then
    local out = {0, i - 1}
    for k = 1, #KEYS do out[#out + 1] = seen[k] end
    return out
  end
end
local out = {1, 0}
for i = 1, #KEYS do
  local b = (i - 1) * 4
  out[#out + 1] = redis.call('INCRBY', KEYS[i], ARGV[b + 1])
  redis.call('PEXPIREAT', KEYS[i], ARGV[b + 4])
end
return out
";

pub struct RedisStore {
    client: Client,
    conn: MultiplexedConnection,
    blocking: Mutex<Option<redis::Connection>>,
    reserve: Script,
    adjust: Script,
    /// Drives the async connection, whichever runtime the caller is on.
    _runtime: tokio::runtime::Runtime,
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError(format!("redis: {e}"))
}

fn name(counter: &str) -> String {
    format!("{PREFIX}{counter}")
}

impl RedisStore {
    pub fn connect(url: &str) -> Result<RedisStore, String> {
        let client = Client::open(url).map_err(|e| format!("governance.redis_url: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tollgate-redis")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let conn = runtime
            .block_on(client.get_multiplexed_async_connection())
            .map_err(|e| format!("cannot connect to redis at {url}: {e}"))?;
        Ok(RedisStore {
            client,
            conn,
            blocking: Mutex::new(None),
            reserve: Script::new(RESERVE),
            adjust: Script::new(ADJUST),
            _runtime: runtime,
        })
    }

    /// Runs `f` on the blocking connection, reconnecting once if it broke.
    fn with_blocking<T>(
        &self,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut slot = self.blocking.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..2 {
            if slot.is_none() {
                *slot = Some(self.client.get_connection().map_err(err)?);
            }
            let Some(c) = slot.as_mut() else { continue };
            match f(c) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_io_error() || e.is_connection_dropped() => *slot = None,
                Err(e) => return Err(err(e)),
            }
        }
        Err(StoreError("redis: connection lost".into()))
    }
}

/// Adds to each counter, never taking one below zero (a reset while requests were in flight).
const ADJUST: &str = r"
local out = {}
for i = 1, #KEYS do
  local v = redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
  if v < 0 then
    redis.call('SET', KEYS[i], 0)
    v = 0
  end
  redis.call('PEXPIREAT', KEYS[i], ARGV[2 * i])
  out[i] = v
end
return out
";

#[async_trait]
impl Store for RedisStore {
    async fn reserve(&self, charges: &[Charge], _now_ms: i64) -> Result<Reserved, StoreError> {
        if charges.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let mut inv = self.reserve.prepare_invoke();
        for c in charges {
            let check = match c.check {
                Check::Fits => "f",
                Check::Below => "b",
                Check::None => "n",
            };
            inv.key(name(&c.counter))
                .arg(c.amount)
                .arg(c.limit)
                .arg(check)
                .arg(c.expires_ms);
        }
        let mut conn = self.conn.clone();
        let out: Vec<i64> = inv.invoke_async(&mut conn).await.map_err(err)?;
        let (ok, at, values) = match out.as_slice() {
            [ok, at, rest @ ..] => (*ok == 1, *at, rest.to_vec()),
            _ => {
                return Err(StoreError(
                    "redis: short reply from the reserve script".into(),
                ))
            }
        };
        Ok(if ok {
            Ok(values)
        } else {
            Err((usize::try_from(at).unwrap_or(0), values))
        })
    }

    fn adjust(&self, charges: &[Charge], _now_ms: i64) -> Result<Vec<i64>, StoreError> {
        if charges.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.adjust.prepare_invoke();
        for c in charges {
            inv.key(name(&c.counter)).arg(c.amount).arg(c.expires_ms);
        }
        self.with_blocking(|c| inv.invoke::<Vec<i64>>(c))
    }

    async fn get(&self, counters: &[String], _now_ms: i64) -> Result<Vec<i64>, StoreError> {
        if counters.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = counters.iter().map(|c| name(c)).collect();
        let mut conn = self.conn.clone();
        let got: Vec<Option<i64>> = redis::cmd("MGET")
            .arg(&names)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(got.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn reset(&self, prefix: &str) -> Result<usize, StoreError> {
        // Ids hold no glob characters (see `keys::valid_id`).
        let pattern = format!("{}*", name(prefix));
        self.with_blocking(|c| {
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(c)?;
            // Requests in flight keep their slots.
            let keys: Vec<String> = keys
                .into_iter()
                .filter(|k| !k.ends_with("|inflight"))
                .collect();
            if keys.is_empty() {
                return Ok(0);
            }
            redis::cmd("DEL").arg(&keys).query::<usize>(c)
        })
    }

    fn first_time(&self, counter: &str, expires_ms: i64, _now_ms: i64) -> Result<bool, StoreError> {
        let n = name(counter);
        self.with_blocking(|c| {
            let set: Option<String> = redis::cmd("SET")
                .arg(&n)
                .arg(1)
                .arg("NX")
                .arg("PXAT")
                .arg(expires_ms)
                .query(c)?;
            Ok(set.is_some())
        })
    }
}
