//! The embedded store's durability: counters (spend, limits) and admin-made customers, teams
//! and keys in SQLite. Counters are written by a background thread every flush interval, so a
//! crash loses at most one interval of spend; a clean stop writes the rest.

use super::store::{MemoryStore, Slot};
use rusqlite::{params, Connection};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct Db {
    conn: Mutex<Connection>,
}

fn lock(m: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Db {
    pub fn open(path: &Path) -> Result<Db, String> {
        let conn = Connection::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS counters (
                 name TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS entities (
                 kind TEXT NOT NULL, id TEXT NOT NULL, spec TEXT NOT NULL,
                 PRIMARY KEY (kind, id));",
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Db {
            conn: Mutex::new(conn),
        })
    }

    /// Puts the counters that have not expired back into `store`.
    pub fn restore(&self, store: &MemoryStore, now_ms: i64) -> Result<usize, String> {
        let conn = lock(&self.conn);
        let mut q = conn
            .prepare("SELECT name, value, expires_ms FROM counters WHERE expires_ms > ?1")
            .map_err(|e| e.to_string())?;
        let rows = q
            .query_map(params![now_ms], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| e.to_string())?;
        let mut n = 0;
        for row in rows {
            let (name, value, expires_ms) = row.map_err(|e| e.to_string())?;
            store.restore(
                name,
                Slot {
                    value,
                    expires_ms,
                    held: 0,
                },
            );
            n += 1;
        }
        conn.execute(
            "DELETE FROM counters WHERE expires_ms <= ?1",
            params![now_ms],
        )
        .map_err(|e| e.to_string())?;
        Ok(n)
    }

    /// Writes every counter changed since the last flush.
    pub fn flush(&self, store: &MemoryStore) -> Result<usize, String> {
        let dirty = store.take_dirty();
        if dirty.is_empty() {
            return Ok(0);
        }
        let mut conn = lock(&self.conn);
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        for (name, slot) in &dirty {
            let done = match slot {
                Some(s) => tx.execute(
                    "INSERT INTO counters (name, value, expires_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT(name) DO UPDATE SET value = ?2, expires_ms = ?3",
                    params![name, s.value, s.expires_ms],
                ),
                None => tx.execute("DELETE FROM counters WHERE name = ?1", params![name]),
            };
            done.map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())?;
        Ok(dirty.len())
    }

    pub fn entities(&self, kind: &str) -> Result<Vec<String>, String> {
        let conn = lock(&self.conn);
        let mut q = conn
            .prepare("SELECT spec FROM entities WHERE kind = ?1 ORDER BY id")
            .map_err(|e| e.to_string())?;
        let rows = q
            .query_map(params![kind], |r| r.get::<_, String>(0))
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    }

    pub fn put_entity(&self, kind: &str, id: &str, spec: &str) -> Result<(), String> {
        lock(&self.conn)
            .execute(
                "INSERT INTO entities (kind, id, spec) VALUES (?1, ?2, ?3)
                 ON CONFLICT(kind, id) DO UPDATE SET spec = ?3",
                params![kind, id, spec],
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub fn delete_entity(&self, kind: &str, id: &str) -> Result<bool, String> {
        lock(&self.conn)
            .execute(
                "DELETE FROM entities WHERE kind = ?1 AND id = ?2",
                params![kind, id],
            )
            .map(|n| n > 0)
            .map_err(|e| e.to_string())
    }
}

/// Flushes counters every `every` until stopped; the stop flushes once more.
pub struct Flusher {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub fn start(db: Arc<Db>, store: Arc<MemoryStore>, every: Duration) -> Flusher {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tollgate-flush".into())
            .spawn(move || loop {
                let last = !matches!(stopped.recv_timeout(every), Err(RecvTimeoutError::Timeout));
                let now = super::period::Clock::now_ms(&super::period::SystemClock);
                store.sweep(now);
                if let Err(e) = db.flush(&store) {
                    log::error!("cannot persist spend and limits: {e}");
                }
                if last {
                    break;
                }
            })
            .map_err(|e| log::error!("cannot start the spend flusher: {e}"))
            .ok();
        Flusher { stop, thread }
    }

    /// Flushes what is left and stops.
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::store::{Charge, Check, Store};

    #[test]
    fn counters_survive_a_reopen_and_expired_ones_do_not() {
        let dir = std::env::temp_dir().join(format!("tollgate-persist-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let db = Db::open(&dir).unwrap();
        let store = MemoryStore::default();
        let c = |name: &str, amount, expires_ms| Charge {
            counter: name.into(),
            amount,
            hold: 0,
            limit: 0,
            check: Check::None,
            expires_ms,
        };
        store
            .adjust(&[c("spend", 341_642_000, 10_000), c("old", 5, 100)], 0)
            .unwrap();
        assert_eq!(db.flush(&store).unwrap(), 2);
        assert_eq!(db.flush(&store).unwrap(), 0, "nothing changed since");
        store.reset("spend").unwrap();
        store.adjust(&[c("spend", 7, 10_000)], 0).unwrap();
        db.flush(&store).unwrap();
        drop(db);

        let db = Db::open(&dir).unwrap();
        let again = MemoryStore::default();
        assert_eq!(db.restore(&again, 500).unwrap(), 1);
        let got =
            futures_util::FutureExt::now_or_never(again.get(&["spend".into(), "old".into()], 500));
        assert_eq!(got.unwrap().unwrap(), vec![7, 0]);
        // A reservation in flight is not spend: it is not written.
        let held = Charge {
            hold: 5,
            ..c("spend", 5, 10_000)
        };
        again.adjust(&[held], 500).unwrap();
        db.flush(&again).unwrap();
        drop(db);
        let db = Db::open(&dir).unwrap();
        let third = MemoryStore::default();
        db.restore(&third, 500).unwrap();
        let got = futures_util::FutureExt::now_or_never(third.get(&["spend".into()], 500));
        assert_eq!(got.unwrap().unwrap(), vec![7]);
        db.put_entity("key", "a", "{}").unwrap();
        assert_eq!(db.entities("key").unwrap(), vec!["{}"]);
        assert!(db.delete_entity("key", "a").unwrap());
        let _ = std::fs::remove_file(&dir);
    }
}
