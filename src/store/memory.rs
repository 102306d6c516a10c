//! An in-memory [`Store`] for unit tests: the same semantics as the Redis scripts (expiry,
//! versions, incarnations, foreign writes), plus switches a test needs: a clock it can move,
//! an outage it can start and end, and a phpredis-style write.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::{
    Acquired, Asker, Claim, Created, Event, Fence, Loaded, LockMode, Meta, RawStat, Record,
    Removed, Renewed, Result, Stat, Store, StoreError, StoreOptions, Written, fresh_token,
    now_nanos,
};
use crate::keys::SessionName;

#[derive(Debug, Clone)]
struct Entry {
    data: Arc<Vec<u8>>,
    expire_at_ms: i64,
    /// The metadata hash; None when only a foreign handler ever wrote the session.
    fields: Option<[Option<Vec<u8>>; 9]>,
}

/// One session's cluster lock, as the Redis lock hash holds it.
#[derive(Debug, Default, Clone)]
struct LockRecord {
    /// owner -> (mode, deadline_ms, token)
    holders: BTreeMap<String, (LockMode, i64, u64)>,
    /// owner -> (arrival, mode, deadline_ms)
    queued: BTreeMap<String, (u64, LockMode, i64)>,
    /// Servers waiting to open the session while another one holds it under a lease:
    /// owner -> (arrival, deadline_ms). They go before later lock claims, as shared ones.
    openers: BTreeMap<String, (u64, i64)>,
    /// Holders whose writes may lag behind their closes (the Redis scripts' `b:<owner>`).
    write_back: BTreeSet<String>,
    /// Openers a write-back holder has answered: they may read (the scripts' mode 'f').
    served: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Shared {
    entries: Mutex<BTreeMap<SessionName, Entry>>,
    locks: Mutex<BTreeMap<SessionName, LockRecord>>,
    listeners: Mutex<BTreeMap<String, UnboundedSender<Event>>>,
    arrivals: AtomicU64,
    skew_ms: AtomicI64,
    down: AtomicBool,
    round_trips: AtomicU64,
    /// How long every write takes to land, in ms (tests of what may overtake a write).
    write_delay_ms: AtomicU64,
    /// How many of the next content writes fail as if Redis timed out (not applied).
    failing_writes: AtomicU64,
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
    /// Makes every write (content or metadata) take `by` before it is applied.
    pub fn set_write_delay(&self, by: Duration) {
        self.shared
            .write_delay_ms
            .store(by.as_millis() as u64, Ordering::Relaxed);
    }

    /// Makes the next `n` content writes fail (not applied), everything else working.
    pub fn fail_writes(&self, n: u64) {
        self.shared.failing_writes.store(n, Ordering::Relaxed);
    }

    fn write_fails(&self) -> bool {
        self.shared
            .failing_writes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    async fn write_delay(&self) {
        let ms = self.shared.write_delay_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::Relaxed);
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

    fn locks(&self) -> MutexGuard<'_, BTreeMap<SessionName, LockRecord>> {
        self.shared
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, owner: &str, event: Event) {
        let listeners = self
            .shared
            .listeners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(tx) = listeners.get(owner) {
            let _ = tx.send(event);
        }
    }

    /// The lock check every fenced write makes.
    fn fenced(&self, name: &SessionName, fence: Option<Fence<'_>>, now: i64) -> bool {
        let Some(f) = fence else { return false };
        let locks = self.locks();
        let held = locks
            .get(name)
            .and_then(|r| r.holders.get(f.owner))
            .is_some_and(|&(_, deadline, token)| token == f.token && deadline >= now);
        !held
    }

    /// Drops every message to `owner`, as a lost pub/sub connection would.
    pub fn drop_listener(&self, owner: &str) {
        self.shared
            .listeners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(owner);
    }

    /// The lease check of the Redis scripts' `recall`: None when no other server holds the
    /// session exclusively; else asks the holders to let go, queues the asker as an opener, and
    /// says how long until the soonest lease runs out.
    fn recall(
        &self,
        name: &SessionName,
        asker: Asker<'_>,
        now: i64,
        only_write_back: bool,
        retry: bool,
    ) -> Option<Duration> {
        let mut locks = self.locks();
        let rec = locks.get_mut(name)?;
        if only_write_back && retry && rec.served.remove(asker.owner) {
            drop(locks);
            self.drop_opener(name, asker.owner);
            return None;
        }
        let holders: Vec<(String, i64)> = rec
            .holders
            .iter()
            .filter(|(who, h)| *who != asker.owner && h.0 == LockMode::Exclusive && h.1 >= now)
            .filter(|(who, _)| !only_write_back || rec.write_back.contains(*who))
            .map(|(who, h)| (who.clone(), h.1))
            .collect();
        let Some(until) = holders.iter().map(|h| h.1).min() else {
            drop(locks);
            self.drop_opener(name, asker.owner);
            return None;
        };
        let deadline = now + 2 * asker.lease.as_millis() as i64;
        // Queued afresh: an earlier request's answer is not this one's (the scripts rewrite
        // the entry as 's').
        rec.served.remove(asker.owner);
        let arrival = rec
            .openers
            .get(asker.owner)
            .map(|o| o.0)
            .unwrap_or_else(|| self.shared.arrivals.fetch_add(1, Ordering::Relaxed));
        rec.openers
            .insert(asker.owner.to_string(), (arrival, deadline));
        drop(locks);
        for (h, _) in holders {
            let ask = if only_write_back {
                Event::Flush(name.clone())
            } else {
                Event::Wanted(name.clone())
            };
            self.publish(&h, ask);
        }
        Some(Duration::from_millis((until - now).max(0) as u64))
    }

    /// The Redis scripts' `forget_opener`.
    fn drop_opener(&self, name: &SessionName, owner: &str) {
        let mut locks = self.locks();
        let Some(rec) = locks.get_mut(name) else {
            return;
        };
        rec.served.remove(owner);
        if rec.openers.remove(owner).is_none() {
            return;
        }
        let wake: Vec<String> = rec.queued.keys().cloned().collect();
        drop(locks);
        for w in wake {
            self.publish(&w, Event::Released(name.clone()));
        }
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
        let (now, entries) = self.begin()?;
        let held = self.locks().get(name).is_some_and(|r| {
            r.holders.iter().any(|(who, h)| {
                h.0 == LockMode::Exclusive && h.1 >= now && r.write_back.contains(who)
            })
        });
        let mut stat = entries
            .get(name)
            .map(|e| self.stat_of(name, e))
            .transpose()?;
        if held && let Some(st) = stat.as_mut() {
            st.version = None;
        }
        Ok(stat)
    }

    async fn stat_many(&self, names: &[SessionName]) -> Result<Vec<Option<Stat>>> {
        let (_, entries) = self.begin()?;
        Ok(names
            .iter()
            .map(|n| entries.get(n).and_then(|e| self.stat_of(n, e).ok()))
            .collect())
    }

    async fn load(
        &self,
        name: &SessionName,
        known: Option<u64>,
        asker: Asker<'_>,
        retry: bool,
    ) -> Result<Loaded> {
        let (now, entries) = self.begin()?;
        if let Some(after) = self.recall(name, asker, now, true, retry) {
            return Ok(Loaded::Recalled(after));
        }
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

    async fn create(
        &self,
        name: &SessionName,
        meta: &Meta,
        exclusive: bool,
        asker: Asker<'_>,
        retry: bool,
    ) -> Result<Created> {
        let (now, mut entries) = self.begin()?;
        if let Some(e) = entries.get(name) {
            if exclusive {
                return Ok(Created::ExistsExclusive);
            }
            if let Some(after) = self.recall(name, asker, now, true, retry) {
                return Ok(Created::Recalled(after));
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
        fence: Option<Fence<'_>>,
        data: &[u8],
        meta: &Meta,
        asker: Asker<'_>,
    ) -> Result<Written> {
        self.write_delay().await;
        if self.write_fails() {
            return Err(StoreError::Unavailable("write failed by the test".into()));
        }
        let (now, mut entries) = self.begin()?;
        if self.fenced(name, fence, now) {
            return Ok(Written::Fenced);
        }
        if fence.is_none()
            && let Some(after) = self.recall(name, asker, now, false, false)
        {
            return Ok(Written::Recalled(after));
        }
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
        fence: Option<Fence<'_>>,
        meta: &Meta,
        asker: Asker<'_>,
    ) -> Result<Written> {
        self.write_delay().await;
        let (now, mut entries) = self.begin()?;
        if self.fenced(name, fence, now) {
            return Ok(Written::Fenced);
        }
        if fence.is_none()
            && let Some(after) = self.recall(name, asker, now, false, false)
        {
            return Ok(Written::Recalled(after));
        }
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

    async fn remove(&self, name: &SessionName, asker: Asker<'_>, force: bool) -> Result<Removed> {
        let (now, mut entries) = self.begin()?;
        if let Some(after) = self.recall(name, asker, now, false, false) {
            if !force {
                return Ok(Removed::Recalled(after));
            }
            self.drop_opener(name, asker.owner);
        }
        Ok(match entries.remove(name) {
            Some(_) => Removed::Removed,
            None => Removed::Missing,
        })
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

    async fn flushed_for_readers(&self, name: &SessionName, owner: &str) -> Result<()> {
        let _ = self.begin()?;
        let mut locks = self.locks();
        let Some(rec) = locks.get_mut(name) else {
            return Ok(());
        };
        // Only the holder speaks for what is pending (the scripts' FLUSHED).
        if rec
            .holders
            .get(owner)
            .is_none_or(|h| h.0 != LockMode::Exclusive)
        {
            return Ok(());
        }
        let wake: Vec<String> = rec.openers.keys().cloned().collect();
        rec.served.extend(wake.iter().cloned());
        drop(locks);
        for w in wake {
            self.publish(&w, Event::Released(name.clone()));
        }
        Ok(())
    }

    async fn forget_opener(&self, name: &SessionName, owner: &str) -> Result<()> {
        let _ = self.begin()?;
        self.drop_opener(name, owner);
        Ok(())
    }

    fn round_trips(&self) -> u64 {
        self.shared.round_trips.load(Ordering::Relaxed)
    }

    async fn lock_acquire(
        &self,
        name: &SessionName,
        claim: &Claim<'_>,
        queue: bool,
        known: Option<u64>,
    ) -> Result<Acquired> {
        let (now, entries) = self.begin()?;
        let lease = claim.lease.as_millis() as i64;
        let mut locks = self.locks();
        let rec = locks.entry(name.clone()).or_default();
        rec.holders.retain(|_, h| h.1 >= now);
        rec.queued.retain(|_, q| q.2 >= now);
        rec.openers.retain(|_, o| o.1 >= now);
        let excl = |m: LockMode| m == LockMode::Exclusive;
        let mut conflict = false;
        let mut until = None::<i64>;
        let mut holders = Vec::new();
        for (who, &(mode, deadline, _)) in &rec.holders {
            if who != claim.owner {
                holders.push(who.clone());
                if excl(claim.mode) || excl(mode) {
                    conflict = true;
                    until = Some(until.map_or(deadline, |u| u.min(deadline)));
                }
            }
        }
        let mine = rec.queued.get(claim.owner).map(|q| q.0);
        if !conflict {
            conflict = rec.queued.iter().any(|(who, &(arrival, mode, _))| {
                who != claim.owner
                    && mine.is_none_or(|m| arrival < m)
                    && (excl(claim.mode) || excl(mode))
            }) || rec.openers.iter().any(|(who, &(arrival, _))| {
                who != claim.owner && mine.is_none_or(|m| arrival < m) && excl(claim.mode)
            });
        }
        if conflict {
            if queue {
                let arrival =
                    mine.unwrap_or_else(|| self.shared.arrivals.fetch_add(1, Ordering::Relaxed));
                rec.queued.insert(
                    claim.owner.to_string(),
                    (arrival, claim.mode, now + 2 * lease),
                );
                drop(locks);
                for h in holders {
                    self.publish(&h, Event::Wanted(name.clone()));
                }
            }
            let retry = until.unwrap_or(now + lease) - now;
            return Ok(Acquired::Denied {
                retry_in: Duration::from_millis(retry.max(0) as u64),
            });
        }
        rec.queued.remove(claim.owner);
        let contended = !rec.queued.is_empty() || !rec.openers.is_empty();
        rec.holders.insert(
            claim.owner.to_string(),
            (claim.mode, now + lease, claim.token),
        );
        if claim.write_back && claim.mode == LockMode::Exclusive {
            rec.write_back.insert(claim.owner.to_string());
        } else {
            rec.write_back.remove(claim.owner);
        }
        drop(locks);
        let loaded = match entries.get(name) {
            None => Loaded::Missing,
            Some(e) => {
                let stat = self.stat_of(name, e)?;
                if known.is_some() && stat.version == known {
                    Loaded::Same(stat)
                } else {
                    Loaded::Changed(Record {
                        stat,
                        data: e.data.clone(),
                    })
                }
            }
        };
        Ok(Acquired::Granted { loaded, contended })
    }

    async fn lock_renew(&self, name: &SessionName, claim: &Claim<'_>) -> Result<Renewed> {
        let (now, _entries) = self.begin()?;
        let mut locks = self.locks();
        let Some(rec) = locks.get_mut(name) else {
            return Ok(Renewed::Lost);
        };
        let wanted = rec
            .queued
            .iter()
            .any(|(who, q)| who != claim.owner && q.2 >= now)
            || rec
                .openers
                .iter()
                .any(|(who, o)| who != claim.owner && o.1 >= now && !rec.served.contains(who));
        match rec.holders.get_mut(claim.owner) {
            Some(h) if h.2 == claim.token && h.1 >= now => {
                h.1 = now + claim.lease.as_millis() as i64;
                Ok(Renewed::Held { wanted })
            }
            Some(h) if h.2 == claim.token => {
                rec.holders.remove(claim.owner);
                Ok(Renewed::Lost)
            }
            _ => Ok(Renewed::Lost),
        }
    }

    async fn lock_release(&self, name: &SessionName, owner: &str, token: u64) -> Result<()> {
        let (_, _entries) = self.begin()?;
        let mut locks = self.locks();
        let Some(rec) = locks.get_mut(name) else {
            return Ok(());
        };
        if rec.holders.get(owner).is_some_and(|h| h.2 == token) {
            rec.holders.remove(owner);
            rec.write_back.remove(owner);
        }
        rec.queued.remove(owner);
        let wake: Vec<String> = rec
            .queued
            .keys()
            .chain(rec.openers.keys())
            .cloned()
            .collect();
        if rec.holders.is_empty() && rec.queued.is_empty() && rec.openers.is_empty() {
            locks.remove(name);
        }
        drop(locks);
        for w in wake {
            self.publish(&w, Event::Released(name.clone()));
        }
        Ok(())
    }

    async fn events(&self, owner: &str) -> Result<UnboundedReceiver<Event>> {
        let (tx, rx) = unbounded_channel();
        self.shared
            .listeners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(owner.to_string(), tx);
        Ok(rx)
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
