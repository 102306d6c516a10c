//! Carries out what `lock` decides: takes, renews and lets go of cluster locks in the store,
//! parks waiting flock requests, answers them EINTR when their process has a signal to take,
//! and reacts to the store's events (a lock let go elsewhere, another server waiting).
//!
//! Order that matters: a server's unsent writes reach the store, under its lock's token,
//! before the store hears the lock is let go; a cluster lock is granted together with the
//! content check, so the holder reads what the previous holder wrote.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::error::err;
use super::{Fs, LEASE_TRUST, Lease, RECALL_SIGNAL_CHECK, Result};
use crate::keys::SessionName;
use crate::lock::{self, Cluster, FileLocks, Mode, Request, Todo};
use crate::store::{Acquired, Claim, Event, Fence, Loaded, Renewed, Store, Written, fresh_token};

fn epoch_or(e: Option<u64>) -> u64 {
    e.unwrap_or(u64::MAX)
}

/// How often waiting processes are checked for signals (fuse-facts.md 6).
const SIGNAL_CHECK: Duration = Duration::from_millis(50);
/// How long a waiter sleeps, at most, between tries when the store cannot be reached.
const OUTAGE_RETRY: Duration = Duration::from_millis(500);

/// The locks of the files open here, with the session each file's cluster lock is named after.
#[derive(Default)]
pub(super) struct LockTable {
    pub(super) files: HashMap<u64, (SessionName, FileLocks)>,
    /// Bumped when the store says a session's lock was let go: wakes every acquisition loop
    /// and every recall wait for it. A receiver taken before a store request sees a bump that
    /// arrives while the answer is on its way, so no release is missed.
    wakers: HashMap<SessionName, watch::Sender<u64>>,
    signal_checker: bool,
}

/// A subscription to a session's releases; the entry goes once nobody listens.
pub(super) struct Waker<'a> {
    table: &'a Mutex<LockTable>,
    name: SessionName,
    rx: Option<watch::Receiver<u64>>,
}

impl Waker<'_> {
    /// Until the next release (or a signal to look again).
    async fn changed(&mut self) {
        let heard = match self.rx.as_mut() {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        };
        // The sender cannot go while this receiver exists; should it, fall back to time.
        if !heard {
            tokio::time::sleep(RECALL_SIGNAL_CHECK).await;
        }
    }
}

impl Drop for Waker<'_> {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if t.wakers
            .get(&self.name)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            t.wakers.remove(&self.name);
        }
    }
}

/// How often, and how far apart, LOCK_NB asks again while this server's own release of the
/// session is on its way (at most half a second in all).
const AFTER_RELEASE_TRIES: u32 = 100;
const AFTER_RELEASE_PAUSE: Duration = Duration::from_millis(5);

/// How far `setlk_begin` got.
#[derive(Debug)]
pub enum LockStep {
    Done(Result<()>),
    /// Parked: the answer comes through the receiver.
    Wait {
        rx: tokio::sync::oneshot::Receiver<lock::Answer>,
        name: SessionName,
    },
    /// Non-blocking, while this server's own release of the session is on its way.
    AfterRelease {
        fh: u64,
        typ: i32,
        pid: u32,
    },
    /// Non-blocking, and only the store can tell.
    Try {
        ino: u64,
        name: SessionName,
        fh: u64,
        mode: Mode,
        /// This server's own holding's token, to convert it in place.
        holding: Option<u64>,
    },
}

/// A line of `sessfs status`.
#[derive(Debug, Clone)]
pub struct LockStatus {
    pub name: SessionName,
    pub cluster: String,
    pub held_for: Option<Duration>,
    pub holders: usize,
    pub waiters: Vec<(u32, Duration)>,
}

impl<S: Store> Fs<S> {
    fn locks(&self) -> std::sync::MutexGuard<'_, LockTable> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn claim(&self, token: u64, mode: Mode) -> Claim<'_> {
        Claim {
            owner: &self.owner,
            token,
            mode,
            lease: self.cfg.lock_lease,
            write_back: self.cfg.write_back,
        }
    }

    /// The token writes to `ino` are fenced with, when this server holds its cluster lock.
    pub(super) fn fence_token(&self, ino: u64) -> Option<u64> {
        self.locks()
            .files
            .get(&ino)
            .and_then(|(_, l)| l.fence_token())
    }

    /// Starts listening to the store's lock events for this server.
    pub async fn start(self: &Arc<Self>) -> Result<()> {
        let mut events = self
            .store
            .events(&self.owner)
            .await
            .map_err(|e| super::Error::store(&"subscribing to lock events", e))?;
        let fs = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let Some(fs) = fs.upgrade() else { return };
                fs.on_event(event);
            }
        });
        Ok(())
    }

    fn on_event(self: &Arc<Self>, event: Event) {
        tracing::debug!(?event, "lock event");
        match event {
            Event::Released(name) => self.wake(&name),
            Event::Resync => {
                for w in self.locks().wakers.values() {
                    w.send_modify(|n| *n = n.wrapping_add(1));
                }
                // Recalls may have been missed and Redis may have restarted empty (no lock is
                // held there any more): no content is served from memory until the next grant.
                let ended: Vec<(u64, Option<Instant>)> = {
                    let mut st = self.state();
                    st.inodes
                        .iter_mut()
                        .filter(|(_, i)| i.lease.is_some())
                        .map(|(ino, i)| {
                            i.lease = None;
                            (*ino, i.kernel_until.take())
                        })
                        .collect()
                };
                if !ended.is_empty() {
                    tracing::info!(
                        leases = ended.len(),
                        "lock events resynchronised; leases dropped"
                    );
                    let fs = self.clone();
                    tokio::spawn(async move {
                        for (ino, until) in ended {
                            fs.empty_kernel_cache(ino, until).await;
                        }
                    });
                }
            }
            Event::Flush(name) => {
                self.counters.read_recalls.fetch_add(1, Ordering::Relaxed);
                let inos = self.locked_inos(&name);
                if inos.is_empty() {
                    // Nothing held here any more: the reader may go ahead.
                    let fs = self.clone();
                    tokio::spawn(async move {
                        let _ = fs.store.flushed_for_readers(&name, &fs.owner).await;
                    });
                    return;
                }
                for ino in inos {
                    let fs = self.clone();
                    tokio::spawn(fs.flush_for_readers(ino, name.clone()));
                }
            }
            Event::Wanted(name) => {
                self.counters.recalls.fetch_add(1, Ordering::Relaxed);
                let inos = self.locked_inos(&name);
                for ino in inos {
                    self.wanted_here(ino);
                }
            }
        }
    }

    /// The files whose cluster lock is the session `name`'s (one, or more after an unlink).
    fn locked_inos(&self, name: &SessionName) -> Vec<u64> {
        self.locks()
            .files
            .iter()
            .filter(|(_, (n, _))| n == name)
            .map(|(ino, _)| *ino)
            .collect()
    }

    /// Another server waits for the session of `ino`: from now on nothing of it is served from
    /// memory or cached by the kernel (the other server may be about to change it), and the
    /// lock goes once local users are done.
    fn wanted_here(self: &Arc<Self>, ino: u64) {
        let todo = {
            let mut t = self.locks();
            match t.files.get_mut(&ino) {
                Some((_, l)) => l.wanted(),
                None => return,
            }
        };
        let cached = {
            let mut st = self.state();
            match st.inodes.get_mut(&ino) {
                Some(i) => {
                    if let Some(l) = i.lease.as_mut() {
                        l.recalled = true;
                    }
                    i.kernel_until.take()
                }
                None => None,
            }
        };
        if let Some(until) = cached
            && until > Instant::now()
            && !self.invalidate_now(ino)
        {
            // Left for the release to wait out.
            if let Some(i) = self.state().inodes.get_mut(&ino) {
                i.kernel_until = Some(i.kernel_until.map_or(until, |u| u.max(until)));
            }
        }
        self.run_todo(ino, todo);
    }

    /// Takes this server's place among a session's openers back (a recall wait given up).
    pub(super) async fn forget_opener(&self, name: &SessionName) {
        if let Err(e) = self.store.forget_opener(name, &self.owner).await {
            tracing::warn!(
                session = %name,
                "could not leave the queue of the session's lease holder ({e}); the place \
                 expires by itself within two lock leases"
            );
        }
    }

    fn wake(&self, name: &SessionName) {
        if let Some(w) = self.locks().wakers.get(name) {
            w.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    pub(super) fn waker(&self, name: &SessionName) -> Waker<'_> {
        let rx = self
            .locks()
            .wakers
            .entry(name.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Waker {
            table: &self.locks,
            name: name.clone(),
            rx: Some(rx),
        }
    }

    /// Waits after a `Recalled` answer: the first time only starts listening (the caller asks
    /// again at once, now sure to hear the release); then until the holder's release, or the
    /// time its lease would run out. EINTR when the waiting process gets a signal.
    pub(super) async fn wait_recall<'a>(
        &'a self,
        name: &SessionName,
        waker: &mut Option<Waker<'a>>,
        after: Duration,
        pid: Option<u32>,
    ) -> Result<()> {
        self.counters.recall_waits.fetch_add(1, Ordering::Relaxed);
        let Some(w) = waker.as_mut() else {
            *waker = Some(self.waker(name));
            return Ok(());
        };
        let deadline = Instant::now() + after.clamp(Duration::from_millis(5), self.cfg.lock_lease);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            tokio::select! {
                _ = w.changed() => return Ok(()),
                _ = tokio::time::sleep(left.min(RECALL_SIGNAL_CHECK)) => {}
            }
            if let Some(pid) = pid
                && lock::signal_pending(pid)
            {
                return Err(err!(
                    EINTR,
                    Debug,
                    "{name}: waiting for another server to let go of the session, interrupted \
                     by a signal"
                ));
            }
        }
    }

    /// The cluster lock was granted in `mode`, by a request sent at `sent`: exclusively held,
    /// it is a lease on the content too.
    fn grant_lease(&self, ino: u64, mode: Mode, sent: Instant, token: u64) {
        if !self.cfg.leases || mode != Mode::Exclusive {
            return;
        }
        let until = sent + self.cfg.lock_lease * LEASE_TRUST.0 / LEASE_TRUST.1;
        if let Some(inode) = self.state().inodes.get_mut(&ino) {
            inode.lease = Some(Lease {
                until,
                recalled: false,
                token,
            });
        }
    }

    fn extend_lease(&self, ino: u64, sent: Instant, token: u64) {
        let until = sent + self.cfg.lock_lease * LEASE_TRUST.0 / LEASE_TRUST.1;
        if let Some(l) = self
            .state()
            .inodes
            .get_mut(&ino)
            .and_then(|i| i.lease.as_mut())
            .filter(|l| l.token == token)
        {
            l.until = l.until.max(until);
        }
    }

    /// Ends the lease of `ino` if it is the holding `token`'s; returns until when the kernel
    /// may still hold the file's attributes.
    fn end_lease(&self, ino: u64, token: u64) -> Option<Instant> {
        let mut st = self.state();
        let inode = st.inodes.get_mut(&ino)?;
        if inode.lease.is_some_and(|l| l.token == token) {
            inode.lease = None;
        }
        inode.kernel_until.take()
    }

    /// Drops the kernel's cached attributes of `ino` now; false if that failed and they must be
    /// waited out. `KernelCache::invalidate` waits on no request, so this runs in place, from
    /// a task that holds no lock, never a request handler (fuse-facts.md 14).
    fn invalidate_now(&self, ino: u64) -> bool {
        let Some(k) = self.kernel.get() else {
            return false;
        };
        match k.invalidate(ino) {
            Ok(()) => true,
            // The kernel has no such inode, and no reply that could make one is on its way.
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT)
                    && self.state().inodes.get(&ino).is_none_or(|i| i.lookups == 0) =>
            {
                true
            }
            Err(e) => {
                tracing::warn!(
                    ino,
                    "invalidating the kernel's attributes: {e}; waiting for them to expire"
                );
                false
            }
        }
    }

    /// Empties the kernel's copy of the attributes before another server may change the file,
    /// or, if that fails, waits until it expires.
    async fn empty_kernel_cache(&self, ino: u64, until: Option<Instant>) {
        let Some(until) = until else { return };
        if until <= Instant::now() || self.invalidate_now(ino) {
            return;
        }
        tokio::time::sleep_until(until.into()).await;
    }

    /// Sends a touch batched under the lease, under the lock's token.
    async fn flush_touch(&self, ino: u64) {
        let (name, expect, meta) = {
            let st = self.state();
            match st.inodes.get(&ino) {
                Some(i) if i.touch_pending && !i.is_dirty() => match &i.name {
                    Some(n) => (n.clone(), i.incarnation, i.meta),
                    None => return,
                },
                _ => return,
            }
        };
        let Some(token) = self.fence_token(ino) else {
            return;
        };
        let fence = Some(Fence {
            owner: &self.owner,
            token,
        });
        let answer = self
            .store
            .update_meta(&name, expect, fence, &meta, self.asker())
            .await;
        let sent = match answer {
            Ok(Written::Done(_)) | Ok(Written::Gone) => true,
            Ok(other) => {
                tracing::warn!(session = %name, ?other, "a batched touch was refused");
                true
            }
            Err(e) => {
                tracing::warn!(session = %name, "sending a batched touch: {e}");
                false
            }
        };
        if sent
            && let Some(i) = self.state().inodes.get_mut(&ino)
            && i.meta == meta
        {
            i.touch_pending = false;
        }
    }

    /// flock(2) as FUSE delivers it: `typ` is F_RDLCK, F_WRLCK or F_UNLCK. A blocking request
    /// is answered only with success or EINTR, never another error (PHP would then run the
    /// request without its lock).
    pub async fn setlk(
        self: &Arc<Self>,
        fh: u64,
        typ: i32,
        blocking: bool,
        pid: u32,
    ) -> Result<()> {
        let step = self.setlk_begin(fh, typ, blocking, pid);
        self.setlk_finish(step).await
    }

    /// The part of flock that needs no waiting: a lock this server can grant (the cluster
    /// lock is held here, as under a lease), an unlock, a refusal. Answered by the caller
    /// without a hop to another thread. Must run inside the runtime's context (it may start
    /// lock tasks).
    pub fn setlk_begin(self: &Arc<Self>, fh: u64, typ: i32, blocking: bool, pid: u32) -> LockStep {
        let (ino, name) = {
            let st = self.state();
            let ino = match Self::handle_ino(&st, fh) {
                Ok(ino) => ino,
                Err(e) => return LockStep::Done(Err(e)),
            };
            match st.inodes.get(&ino) {
                Some(inode) => (ino, inode.lock_name.clone()),
                None => return LockStep::Done(Err(err!(EBADF, Error, "inode {ino} is gone"))),
            }
        };
        let mode = match typ {
            libc::F_RDLCK => Mode::Shared,
            libc::F_WRLCK => Mode::Exclusive,
            libc::F_UNLCK => {
                self.unlock_fh(ino, fh);
                return LockStep::Done(Ok(()));
            }
            other => {
                return LockStep::Done(Err(err!(
                    EINVAL,
                    Warn,
                    "{name}: unknown lock type {other}"
                )));
            }
        };
        let (req, todo) = {
            let mut t = self.locks();
            let keep = self.cfg.leases;
            let (_, l) = t
                .files
                .entry(ino)
                .or_insert_with(|| (name.clone(), FileLocks::new(keep)));
            l.request(fh, mode, blocking, pid)
        };
        tracing::debug!(session = %name, fh, ?mode, blocking, ?req, ?todo, "flock");
        self.run_todo(ino, todo);
        match req {
            Request::Granted => LockStep::Done(Ok(())),
            Request::WouldBlock => LockStep::Done(Err(err!(EWOULDBLOCK, Debug, "{name}: locked"))),
            Request::Wait(rx) => LockStep::Wait { rx, name },
            Request::AfterRelease => LockStep::AfterRelease { fh, typ, pid },
            Request::TryCluster(mode, holding) => LockStep::Try {
                ino,
                name,
                fh,
                mode,
                holding,
            },
        }
    }

    /// The waiting part of flock: a blocking request parked until granted or interrupted, or
    /// a non-blocking one's single try at the cluster lock.
    pub async fn setlk_finish(self: &Arc<Self>, step: LockStep) -> Result<()> {
        match step {
            LockStep::Done(r) => r,
            LockStep::Wait { rx, name } => {
                self.ensure_signal_checker();
                match rx.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(super::Error::new(
                        e,
                        super::error::Level::Debug,
                        format!("{name}: lock wait interrupted by a signal"),
                    )),
                    Err(_) => Err(err!(EINTR, Warn, "{name}: lock wait abandoned")),
                }
            }
            LockStep::Try {
                ino,
                name,
                fh,
                mode,
                holding,
            } => self.try_cluster(ino, &name, fh, mode, holding).await,
            LockStep::AfterRelease { fh, typ, pid } => {
                // A release is one or two round trips; past the bound, LOCK_NB's answer is
                // EWOULDBLOCK as for any lock not to be had at once.
                for _ in 0..AFTER_RELEASE_TRIES {
                    tokio::time::sleep(AFTER_RELEASE_PAUSE).await;
                    match self.setlk_begin(fh, typ, false, pid) {
                        LockStep::AfterRelease { .. } => continue,
                        LockStep::Done(r) => return r,
                        LockStep::Try {
                            ino,
                            name,
                            fh,
                            mode,
                            holding,
                        } => return self.try_cluster(ino, &name, fh, mode, holding).await,
                        LockStep::Wait { .. } => {
                            return Err(err!(EIO, Error, "a non-blocking flock was queued"));
                        }
                    }
                }
                Err(err!(
                    EWOULDBLOCK,
                    Debug,
                    "file handle {fh}: this server's release of the session is still on its way"
                ))
            }
        }
    }

    /// LOCK_NB when only the store can tell: one try, never queued.
    async fn try_cluster(
        self: &Arc<Self>,
        ino: u64,
        name: &SessionName,
        fh: u64,
        mode: Mode,
        holding: Option<u64>,
    ) -> Result<()> {
        let token = holding.unwrap_or_else(fresh_token);
        let known = self.known_version(ino);
        let epoch = self.epoch(ino);
        let sent = Instant::now();
        let acquired = self
            .store
            .lock_acquire(name, &self.claim(token, mode), false, known)
            .await
            .map_err(|e| {
                super::Error::new(
                    libc::ENOLCK,
                    super::error::Level::Error,
                    format!("{name}: cannot reach the store to lock: {e}"),
                )
            })?;
        match acquired {
            Acquired::Denied { .. } => Err(err!(EWOULDBLOCK, Debug, "{name}: locked elsewhere")),
            Acquired::Granted { loaded, .. } => {
                self.absorb_loaded(ino, epoch, loaded).await;
                // The entry may have been dropped as idle while the try was out.
                let outcome = {
                    let mut t = self.locks();
                    let keep = self.cfg.leases;
                    let (_, l) = t
                        .files
                        .entry(ino)
                        .or_insert_with(|| (name.clone(), FileLocks::new(keep)));
                    l.try_granted(fh, token, mode)
                };
                match outcome {
                    Ok((todo, fresh)) => {
                        self.grant_lease(ino, mode, sent, token);
                        // A converted holding keeps the renewal it has.
                        if fresh {
                            self.spawn_renewal(ino, name.clone(), token, mode);
                        }
                        self.run_todo(ino, todo);
                        Ok(())
                    }
                    Err(todo) => {
                        // A new claim this table cannot use goes back directly; a converted
                        // holding stays this server's.
                        if todo.release.is_some()
                            && let Err(e) = self.store.lock_release(name, &self.owner, token).await
                        {
                            tracing::warn!(session = %name, "returning a lock not used: {e}");
                        }
                        self.forget_idle_locks(ino);
                        Err(err!(EWOULDBLOCK, Debug, "{name}: locked"))
                    }
                }
            }
        }
    }

    /// The locks of `fh` go with it (close, or LOCK_UN).
    pub(super) fn unlock_fh(self: &Arc<Self>, ino: u64, fh: u64) {
        tracing::debug!(ino, fh, "unlock");
        let todo = {
            let mut t = self.locks();
            match t.files.get_mut(&ino) {
                Some((_, l)) => l.unlock(fh),
                None => return,
            }
        };
        self.run_todo(ino, todo);
    }

    fn known_version(&self, ino: u64) -> Option<u64> {
        let st = self.state();
        st.inodes
            .get(&ino)
            .filter(|i| i.data.is_some())
            .and_then(|i| i.version)
    }

    fn epoch(&self, ino: u64) -> Option<u64> {
        self.state().inodes.get(&ino).map(|i| i.epoch)
    }

    /// Takes in the content check that came with a cluster lock, if nothing changed here
    /// while it was on its way; otherwise checks again with a plain load (the lock is held,
    /// so that answer is final).
    async fn absorb_loaded(&self, ino: u64, epoch: Option<u64>, loaded: Loaded) {
        self.absorb_loaded_content(ino, epoch, loaded).await;
        // New content under open files: what the kernel cached of the old one goes before
        // the lock is granted (the files' readers read after it).
        let stale = self
            .state()
            .inodes
            .get(&ino)
            .is_some_and(|i| i.open > 0 && !i.pages_valid);
        if stale
            && let Some(k) = self.kernel.get()
            && let Err(e) = k.invalidate_pages(ino)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::error!(ino, "invalidating the kernel's cached pages: {e}");
        }
    }

    async fn absorb_loaded_content(&self, ino: u64, epoch: Option<u64>, mut loaded: Loaded) {
        for _ in 0..super::MAX_REVALIDATIONS {
            if self.apply_loaded(ino, epoch_or(epoch), loaded) {
                return;
            }
            let now = self.epoch(ino);
            let (name, known) = {
                let st = self.state();
                match st.inodes.get(&ino) {
                    Some(i) => (i.lock_name.clone(), i.version.filter(|_| i.data.is_some())),
                    None => return,
                }
            };
            match self.store.load(&name, known, self.asker(), false).await {
                // Nobody else holds the lock this server holds: no recall can come.
                Ok(Loaded::Recalled(_)) => {
                    tracing::error!(session = %name, "checking content after locking: recalled");
                    return;
                }
                Ok(l) => {
                    loaded = l;
                    if self.apply_loaded(ino, epoch_or(now), loaded.clone()) {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(session = %name, "checking content after locking: {e}");
                    return;
                }
            }
        }
    }

    fn apply_loaded(&self, ino: u64, epoch: u64, loaded: Loaded) -> bool {
        let mut st = self.state();
        let Some(inode) = st.inodes.get_mut(&ino) else {
            return true;
        };
        if inode.is_dirty() {
            return true;
        }
        if inode.epoch != epoch {
            return false;
        }
        match loaded {
            Loaded::Same(stat) => inode.absorb(&stat),
            Loaded::Changed(rec) => {
                inode.absorb(&rec.stat);
                if inode.open > 0 {
                    inode.data = Some(rec.data);
                }
                inode.pages_valid = false;
                inode.size = rec.stat.size;
                inode.epoch += 1;
            }
            // Deleted elsewhere: the open file keeps what it has, as an unlinked file would.
            // (Recalled: never the answer to a holder of the lock.)
            Loaded::Missing | Loaded::Recalled(_) => {}
        }
        true
    }

    pub(super) fn run_todo(self: &Arc<Self>, ino: u64, todo: Todo) {
        let name = {
            let t = self.locks();
            match t.files.get(&ino) {
                Some((n, _)) => n.clone(),
                None => return,
            }
        };
        if todo != Todo::default() {
            tracing::debug!(session = %name, ?todo, "cluster lock");
        }
        if let Some(mode) = todo.acquire {
            let fs = self.clone();
            let name = name.clone();
            tokio::spawn(async move { fs.acquire_loop(ino, name, mode).await });
        }
        if let Some(token) = todo.release {
            let fs = self.clone();
            tokio::spawn(async move { fs.release_cluster(ino, name, token, true).await });
        }
        self.forget_idle_locks(ino);
    }

    fn forget_idle_locks(&self, ino: u64) {
        let mut t = self.locks();
        if t.files.get(&ino).is_some_and(|(_, l)| l.is_idle()) {
            t.files.remove(&ino);
        }
    }

    /// Sends what is pending under the lock (writes, a batched touch), empties the kernel's
    /// cache of the file unless the mount is gone (`mounted`), then lets the lock go.
    async fn release_cluster(
        self: Arc<Self>,
        ino: u64,
        name: SessionName,
        token: u64,
        mounted: bool,
    ) {
        let kernel_until = self.end_lease(ino, token);
        // The lock goes only with what was written under it (a write-back's close was
        // acknowledged already): a failed send is tried again while the lock surely lasts
        // (renewed at most a third of a lease ago).
        let deadline = Instant::now() + self.cfg.lock_lease / 2;
        let mut pause = Duration::from_millis(50);
        while let Err(e) = self.persist(ino, None).await {
            let pending = self
                .state()
                .inodes
                .get(&ino)
                .is_some_and(|i| i.is_dirty() && i.name.is_some());
            if !pending || Instant::now() + pause > deadline {
                tracing::error!(
                    session = %name,
                    "before releasing the lock: {e}; this server's unsent changes are lost"
                );
                if let Some(i) = self.state().inodes.get_mut(&ino) {
                    i.flushed = i.dirty;
                }
                break;
            }
            tracing::warn!(session = %name, "before releasing the lock: {e}; again in {pause:?}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.cfg.lock_lease / 8);
        }
        self.flush_touch(ino).await;
        if mounted {
            self.empty_kernel_cache(ino, kernel_until).await;
        }
        tracing::debug!(session = %name, token, "lock release");
        if let Err(e) = self.store.lock_release(&name, &self.owner, token).await {
            tracing::warn!(
                session = %name,
                "could not release the cluster lock ({e}); it ends with its lease in {:?}",
                self.cfg.lock_lease
            );
        }
        self.state().drop_if_unused(ino);
        let todo = {
            let mut t = self.locks();
            match t.files.get_mut(&ino) {
                Some((_, l)) => l.cluster_released(token),
                None => return,
            }
        };
        self.run_todo(ino, todo);
    }

    fn still_waiting(&self, ino: u64) -> bool {
        self.locks()
            .files
            .get(&ino)
            .is_some_and(|(_, l)| l.has_waiters())
    }

    /// Queues this server for the session's lock until it is granted or nobody here waits.
    async fn acquire_loop(self: Arc<Self>, ino: u64, name: SessionName, mode: Mode) {
        let token = fresh_token();
        let mut waker = self.waker(&name);
        let mut outage_logged = false;
        let mut sent = Instant::now();
        let granted = loop {
            if !self.still_waiting(ino) {
                break None;
            }
            let known = self.known_version(ino);
            let epoch = self.epoch(ino);
            sent = Instant::now();
            let attempt = self
                .store
                .lock_acquire(&name, &self.claim(token, mode), true, known)
                .await;
            tracing::debug!(session = %name, token, ?attempt, "lock acquire");
            match attempt {
                Ok(Acquired::Granted { loaded, contended }) => {
                    if outage_logged {
                        tracing::info!(session = %name, "store reachable again; lock taken");
                    }
                    self.absorb_loaded(ino, epoch, loaded).await;
                    break Some(contended);
                }
                Ok(Acquired::Denied { retry_in }) => {
                    // Woken by the holder's release; the timer covers a holder that died and
                    // never releases (its lease runs out).
                    let limit = retry_in.clamp(Duration::from_millis(20), self.cfg.lock_lease);
                    tokio::select! {
                        _ = waker.changed() => {}
                        _ = tokio::time::sleep(limit) => {}
                    }
                }
                Err(e) => {
                    if !outage_logged {
                        tracing::warn!(
                            session = %name,
                            "waiting for the session lock; the store is unreachable: {e}"
                        );
                        outage_logged = true;
                    }
                    tokio::select! {
                        _ = waker.changed() => {}
                        _ = tokio::time::sleep(OUTAGE_RETRY) => {}
                    }
                }
            }
        };
        drop(waker);
        if let Some(contended) = granted {
            let todo = {
                let mut t = self.locks();
                t.files.get_mut(&ino).map(|(_, l)| {
                    if contended {
                        l.wanted();
                    }
                    l.cluster_granted(token, mode)
                })
            };
            match todo {
                Some(todo) => {
                    self.grant_lease(ino, mode, sent, token);
                    self.spawn_renewal(ino, name, token, mode);
                    self.run_todo(ino, todo);
                }
                None => {
                    let _ = self.store.lock_release(&name, &self.owner, token).await;
                }
            }
        } else {
            // Nobody waits any more: leave the queue.
            if let Err(e) = self.store.lock_release(&name, &self.owner, token).await {
                tracing::debug!(session = %name, "leaving the lock queue: {e}");
            }
            let todo = {
                let mut t = self.locks();
                t.files.get_mut(&ino).map(|(_, l)| l.acquisition_ended())
            };
            if let Some(todo) = todo {
                self.run_todo(ino, todo);
            }
        }
    }

    /// Keeps a held cluster lock's lease alive; reports it lost if the store says so.
    fn spawn_renewal(self: &Arc<Self>, ino: u64, name: SessionName, token: u64, mode: Mode) {
        let fs = Arc::downgrade(self);
        let every = self.cfg.lock_lease / 3;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(fs) = fs.upgrade() else { return };
                // A lock kept for nobody (a lease) goes after a renewal period unused.
                let (held, todo) = {
                    let mut t = fs.locks();
                    match t.files.get_mut(&ino) {
                        Some((_, l)) if matches!(l.cluster, Cluster::Held { token: t, .. } if t == token) =>
                        {
                            let todo = l.release_if_unused(every);
                            (todo.release.is_none(), todo)
                        }
                        _ => (false, Todo::default()),
                    }
                };
                if todo != Todo::default() {
                    fs.run_todo(ino, todo);
                }
                if !held {
                    return;
                }
                fs.flush_touch(ino).await;
                let sent = Instant::now();
                match fs.store.lock_renew(&name, &fs.claim(token, mode)).await {
                    Ok(Renewed::Held { wanted }) => {
                        fs.extend_lease(ino, sent, token);
                        // Another server waits and its pushed request may have been lost.
                        if wanted {
                            let held = fs.locks().files.get(&ino).is_some_and(|(_, l)| {
                                !l.wanted_elsewhere
                                    && matches!(l.cluster, Cluster::Held { token: t, .. } if t == token)
                            });
                            if held {
                                fs.wanted_here(ino);
                            }
                        }
                    }
                    Ok(Renewed::Lost) => {
                        // Redis no longer has the claim (its lease ran out, or Redis lost
                        // its data): another server may write now, so the kernel's copy goes.
                        let cached = fs.end_lease(ino, token);
                        fs.empty_kernel_cache(ino, cached).await;
                        tracing::error!(
                            session = %name,
                            "the session's cluster lock was lost (its lease of {:?} ran out); \
                             writes made under it are refused",
                            fs.cfg.lock_lease
                        );
                        let todo = {
                            let mut t = fs.locks();
                            t.files.get_mut(&ino).map(|(_, l)| l.cluster_lost(token))
                        };
                        if let Some(todo) = todo {
                            fs.run_todo(ino, todo);
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(session = %name, "could not renew the lock lease: {e}");
                    }
                }
            }
        });
    }

    /// Runs while any request waits: answers EINTR to those whose process has a signal to
    /// take, removing them from the queue in the same step.
    fn ensure_signal_checker(self: &Arc<Self>) {
        {
            let mut t = self.locks();
            if t.signal_checker {
                return;
            }
            t.signal_checker = true;
        }
        let fs = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SIGNAL_CHECK).await;
                let Some(fs) = fs.upgrade() else { return };
                let waiting: Vec<(u64, u64, u32)> = {
                    let mut t = fs.locks();
                    let w: Vec<_> = t
                        .files
                        .iter()
                        .flat_map(|(ino, (_, l))| {
                            l.waiting_pids()
                                .into_iter()
                                .map(|(fh, pid)| (*ino, fh, pid))
                        })
                        .collect();
                    if w.is_empty() {
                        t.signal_checker = false;
                        return;
                    }
                    w
                };
                for (ino, fh, pid) in waiting {
                    if !lock::signal_pending(pid) {
                        continue;
                    }
                    let todo = {
                        let mut t = fs.locks();
                        t.files.get_mut(&ino).map(|(_, l)| l.cancel(fh, pid))
                    };
                    if let Some((true, todo)) = todo {
                        tracing::debug!(pid, "lock wait interrupted by a signal");
                        fs.run_todo(ino, todo);
                        // Let the acquisition loop see that nobody waits any more.
                        let name = fs.locks().files.get(&ino).map(|(n, _)| n.clone());
                        if let Some(name) = name {
                            fs.wake(&name);
                        }
                    }
                }
            }
        });
    }

    /// Lets every cluster lock this server holds go, after sending pending writes (unmount).
    pub async fn release_all(self: &Arc<Self>) {
        let todos: Vec<(u64, SessionName, Todo)> = {
            let mut t = self.locks();
            t.files
                .iter_mut()
                .map(|(ino, (n, l))| (*ino, n.clone(), l.release_now()))
                .collect()
        };
        for (ino, name, todo) in todos {
            if let Some(token) = todo.release {
                self.clone().release_cluster(ino, name, token, false).await;
            }
        }
    }

    /// The locks this server holds and the requests waiting, for `sessfs status`.
    pub fn lock_status(&self) -> Vec<LockStatus> {
        let now = Instant::now();
        let t = self.locks();
        let mut out: Vec<LockStatus> = t
            .files
            .values()
            .map(|(name, l)| {
                let (cluster, held_for) = match l.cluster {
                    Cluster::None => ("none".to_string(), None),
                    Cluster::Acquiring(m) => (format!("waiting ({m:?})"), None),
                    Cluster::Held { mode, since, .. } => {
                        let kept = if l.unused_since.is_some() {
                            ", kept unused"
                        } else {
                            ""
                        };
                        (format!("held ({mode:?}{kept})"), Some(now - since))
                    }
                    Cluster::Lost { .. } => ("lost".to_string(), None),
                    Cluster::Releasing { .. } => ("releasing".to_string(), None),
                };
                LockStatus {
                    name: name.clone(),
                    cluster,
                    held_for,
                    holders: l.holders().len(),
                    waiters: l.waiters().map(|w| (w.pid, now - w.since)).collect(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}
