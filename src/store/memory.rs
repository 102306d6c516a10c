//! An in-memory [`Store`] for unit tests: the same semantics as the Redis scripts (expiry,
//! versions, incarnations, foreign writes), plus switches a test needs: a clock it can move,
//! an outage it can start and end, and a phpredis-style write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{
    Created, Loaded, Meta, RawStat, Record, Result, Stat, Store, StoreError, StoreOptions, Written,
    fresh_token, now_nanos,
};
use crate::keys::SessionName;

#[derive(Debug, Clone)]
struct Entry {
    data: Arc<Vec<u8>>,
    expire_at_ms: i64,
    /// The metadata hash; None when only a foreign handler ever wrote the session.
    fields: Option<[Option<Vec<u8>>; 9]>,
}

#[derive(Debug, Default)]
struct Shared {
    entries: Mutex<BTreeMap<SessionName, Entry>>,
    skew_ms: AtomicI64,
    down: AtomicBool,
    round_trips: AtomicU64,
}

/// Clones share one store, as several mounts share one Redis.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    opts: StoreOptions,
}

fn field(n: impl ToString) -> Option<Vec<u8>> {
    Some(n.to_string().into_bytes())
}

impl MemoryStore {
    pub fn new(opts: StoreOptions) -> MemoryStore {
        MemoryStore {
            shared: Arc::default(),
            opts,
        }
    }

    fn now_ms(&self) -> i64 {
        now_nanos() / 1_000_000 + self.shared.skew_ms.load(Ordering::Relaxed)
    }

    /// Moves the store's clock forward, expiring what a real Redis would have expired.
    pub fn advance(&self, by: Duration) {
        self.shared
            .skew_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }

    /// Makes every request fail as if Redis were unreachable, until called with false.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::Relaxed);
    }

    /// Round trips served so far.
    pub fn round_trips(&self) -> u64 {
        self.shared.round_trips.load(Ordering::Relaxed)
    }

    /// What phpredis' `SETEX <key> <ttl> <data>` does: new content and TTL, metadata untouched.
    pub fn foreign_write(&self, name: &SessionName, data: &[u8]) {
        let expire_at_ms = self.now_ms() + self.opts.ttl.as_millis() as i64;
        let mut entries = self.lock();
        let fields = entries.get(name).and_then(|e| e.fields.clone());
        entries.insert(
            name.clone(),
            Entry {
                data: Arc::new(data.to_vec()),
                expire_at_ms,
                fields,
            },
        );
    }

    /// The raw content, as `GET` would return it.
    pub fn raw(&self, name: &SessionName) -> Option<Vec<u8>> {
        let now = self.now_ms();
        let entries = self.lock();
        entries
            .get(name)
            .filter(|e| e.expire_at_ms > now)
            .map(|e| e.data.to_vec())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<SessionName, Entry>> {
        // A panic in a test thread must not hide the state from the others.
        self.shared
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One round trip: fails while down, drops expired entries first.
    fn begin(&self) -> Result<(i64, MutexGuard<'_, BTreeMap<SessionName, Entry>>)> {
        self.shared.round_trips.fetch_add(1, Ordering::Relaxed);
        if self.shared.down.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(
                "memory store switched off by the test".into(),
            ));
        }
        let now = self.now_ms();
        let mut entries = self.lock();
        entries.retain(|_, e| e.expire_at_ms > now);
        Ok((now, entries))
    }

    fn stat_of(&self, name: &SessionName, e: &Entry) -> Result<Stat> {
        RawStat {
            size: e.data.len() as u64,
            expire_at_ms: e.expire_at_ms,
            fields: e.fields.clone().unwrap_or_default(),
        }
        .decode(name.as_str(), &self.opts)
    }

    fn fields_for(
        meta: &Meta,
        version: u64,
        incarnation: u64,
        x: i64,
        len: usize,
    ) -> [Option<Vec<u8>>; 9] {
        [
            field(version as i64),
            field(incarnation as i64),
            field(meta.mode),
            field(meta.uid),
            field(meta.gid),
            field(meta.mtime),
            field(meta.ctime),
            field(x),
            field(len),
        ]
    }

    fn incarnation_ok(e: &Entry, expect: Option<u64>) -> bool {
        let Some(expect) = expect else { return true };
        let stored = e
            .fields
            .as_ref()
            .and_then(|f| f[1].as_ref())
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
        stored == Some(expect as i64)
    }
}

impl Store for MemoryStore {
    async fn stat(&self, name: &SessionName) -> Result<Option<Stat>> {
        let (_, entries) = self.begin()?;
        entries.get(name).map(|e| self.stat_of(name, e)).transpose()
    }

    async fn load(&self, name: &SessionName, known: Option<u64>) -> Result<Loaded> {
        let (_, entries) = self.begin()?;
        let Some(e) = entries.get(name) else {
            return Ok(Loaded::Missing);
        };
        let stat = self.stat_of(name, e)?;
        if known.is_some() && stat.version == known {
            return Ok(Loaded::Same(stat));
        }
        Ok(Loaded::Changed(Record {
            stat,
            data: e.data.clone(),
        }))
    }

    async fn create(&self, name: &SessionName, meta: &Meta, exclusive: bool) -> Result<Created> {
        let (now, mut entries) = self.begin()?;
        if let Some(e) = entries.get(name) {
            if exclusive {
                return Ok(Created::ExistsExclusive);
            }
            return Ok(Created::Exists(Record {
                stat: self.stat_of(name, e)?,
                data: e.data.clone(),
            }));
        }
        let x = now + self.opts.ttl.as_millis() as i64;
        let e = Entry {
            data: Arc::new(Vec::new()),
            expire_at_ms: x,
            fields: Some(Self::fields_for(meta, fresh_token(), fresh_token(), x, 0)),
        };
        let stat = self.stat_of(name, &e)?;
        entries.insert(name.clone(), e);
        Ok(Created::Created(stat))
    }

    async fn write(
        &self,
        name: &SessionName,
        expect: Option<u64>,
        data: &[u8],
        meta: &Meta,
    ) -> Result<Written> {
        let (now, mut entries) = self.begin()?;
        let Some(e) = entries.get_mut(name) else {
            return Ok(Written::Gone);
        };
        if !Self::incarnation_ok(e, expect) {
            return Ok(Written::Gone);
        }
        let incarnation = match expect {
            Some(i) => i,
            None => fresh_token(),
        };
        let x = now + self.opts.ttl.as_millis() as i64;
        e.data = Arc::new(data.to_vec());
        e.expire_at_ms = x;
        e.fields = Some(Self::fields_for(
            meta,
            fresh_token(),
            incarnation,
            x,
            e.data.len(),
        ));
        let e = e.clone();
        Ok(Written::Done(self.stat_of(name, &e)?))
    }

    async fn update_meta(
        &self,
        name: &SessionName,
        expect: Option<u64>,
        meta: &Meta,
    ) -> Result<Written> {
        let (now, mut entries) = self.begin()?;
        let Some(e) = entries.get_mut(name) else {
            return Ok(Written::Gone);
        };
        if !Self::incarnation_ok(e, expect) {
            return Ok(Written::Gone);
        }
        let x = now + self.opts.ttl.as_millis() as i64;
        let was_foreign = self_stat_foreign(e);
        let (version, incarnation) = match &e.fields {
            Some(f) if !was_foreign => (parse_token(&f[0]), parse_token(&f[1])),
            Some(f) => (fresh_token(), parse_token(&f[1])),
            None => (fresh_token(), fresh_token()),
        };
        e.expire_at_ms = x;
        e.fields = Some(Self::fields_for(
            meta,
            version,
            incarnation,
            x,
            e.data.len(),
        ));
        let e = e.clone();
        Ok(Written::Done(self.stat_of(name, &e)?))
    }

    async fn remove(&self, name: &SessionName) -> Result<bool> {
        let (_, mut entries) = self.begin()?;
        Ok(entries.remove(name).is_some())
    }

    async fn list(&self, cursor: u64) -> Result<(u64, Vec<SessionName>)> {
        // Pages of 2 so tests exercise the cursor.
        let (_, entries) = self.begin()?;
        let page: Vec<SessionName> = entries
            .keys()
            .skip(cursor as usize)
            .take(2)
            .cloned()
            .collect();
        let next = cursor + page.len() as u64;
        let next = if next as usize >= entries.len() {
            0
        } else {
            next
        };
        Ok((next, page))
    }

    async fn ping(&self) -> Result<()> {
        self.begin().map(|_| ())
    }
}

fn parse_token(f: &Option<Vec<u8>>) -> u64 {
    f.as_ref()
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
        .map(|n| n as u64)
        .filter(|&n| n != 0)
        .unwrap_or_else(fresh_token)
}

fn self_stat_foreign(e: &Entry) -> bool {
    let recorded = |i: usize| {
        e.fields
            .as_ref()
            .and_then(|f| f[i].as_ref())
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
    };
    recorded(7) != Some(e.expire_at_ms) || recorded(8) != Some(e.data.len() as i64)
}
