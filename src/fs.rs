//! The session directory's logic: names, inodes, open files, and when content moves between
//! this server and the store. No FUSE types here, so all of it runs in unit tests against
//! `store::memory`; `fuse` only translates.
//!
//! Invariants:
//! - Close-to-open: every `open` asks the store whether the content this server has is still
//!   current (one round trip that returns the content only when it changed), unless another
//!   open file on this server holds unwritten changes (then, as on a local filesystem, the
//!   processes of this server see each other's writes).
//! - Writes between open and close stay on this server and reach the store whole, in one
//!   round trip, at `flush` (inside `close()`), `fsync`, or at the latest at `release`. No
//!   reader anywhere sees a half-written session.
//! - A session deleted here or elsewhere is never brought back by a late write from a file that
//!   was open before the delete (the store checks the incarnation).
//! - No lock of this module is held across a store round trip.
//! - Leases: while this server holds a session's cluster lock exclusively (kept after the last
//!   close until another server asks, see `lock`), nobody else can change the session: the
//!   store recalls the lease before it lets another server load, write or delete it. Opens,
//!   lookups and stats are then answered from memory, touches are batched until the next lease
//!   renewal, and the kernel may cache attributes, for no longer than the lease is sure to
//!   last; before the lease is given up, the kernel's copy is invalidated (or waited out).

pub mod error;
pub mod locking;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cache::{Cached, ContentCache};
use crate::keys::{NameError, SessionName};
use crate::store::{
    Asker, Created, Fence, Loaded, Meta, Nanos, Recallable, Removed, Stat, Store, Written,
    now_nanos,
};
pub use error::Error;
use error::err;

pub type Result<T> = std::result::Result<T, Error>;

/// Runs a store operation until no other server's lease stands in its way: each `Recalled`
/// answer means the holder was asked to let go, and this waits for its release (killable by
/// the waiting process's signals) before asking again. `$op` is evaluated anew each time.
/// Evaluates to the `Result`.
macro_rules! recalling {
    // `$retry` is true in `$op` when it is asked again after a recall wait.
    ($fs:expr, $name:expr, $pid:expr, |$retry:ident| $op:expr) => {{
        let mut waker = None;
        let mut $retry = false;
        let result = loop {
            let answer = match $op.await {
                Ok(a) => a,
                Err(e) => break Err(Error::store($name, e)),
            };
            match Recallable::recalled(&answer) {
                None => break Ok(answer),
                Some(after) => {
                    if let Err(e) = $fs.wait_recall($name, &mut waker, after, $pid).await {
                        break Err(e);
                    }
                    $retry = true;
                }
            }
        };
        // A wait given up leaves this server among the openers the store makes every lock
        // claim wait for: take that place back.
        if result.is_err() && waker.is_some() {
            $fs.forget_opener($name).await;
        }
        drop(waker);
        result
    }};
    ($fs:expr, $name:expr, $pid:expr, $op:expr) => {
        recalling!($fs, $name, $pid, |_retry| $op)
    };
}

pub const ROOT_INO: u64 = 1;
/// `.sessfs-status`: what this server holds and waits for, read by `sessfs status`. A dot
/// name is never a session, so it cannot collide with one; readdir does not list it.
pub const STATUS_INO: u64 = 2;
pub const STATUS_NAME: &str = ".sessfs-status";

/// First pause before a failed write-back is sent again (doubling, up to a quarter lease).
const WRITE_BACK_RETRY: Duration = Duration::from_millis(50);

/// How often an open asks the store again when local changes keep overtaking the answer.
const MAX_REVALIDATIONS: usize = 20;

/// How long the stats fetched with a listing page answer lookups (`ls -l` stats every file
/// it lists): the bound on how old a listed size or time can be. Never used for an open.
const LISTED_VALIDITY: Duration = Duration::from_secs(1);
/// Listed stats kept at most; beyond, the oldest page is simply dropped.
const LISTED_MAX: usize = 200_000;

/// How long a lookup's answer may stand in for an open's check (both are one open(2)).
const LOOKUP_VALIDITY: Duration = Duration::from_millis(200);

/// Longest the kernel may cache a leased file's attributes. Short, so that a kernel cache the
/// daemon failed to invalidate heals by itself; capped further by the lease's own end.
const KERNEL_TTL: Duration = Duration::from_secs(1);

/// The part of `lock_lease` after the last grant or renewal (timed from when it was sent) for
/// which this server trusts its lease. The store ends it at the full lease; the rest is the
/// margin for the request's way there and for clock rates.
const LEASE_TRUST: (u32, u32) = (4, 5);

/// How often a process waiting for another server to give a session up is checked for signals
/// (fuse-facts.md 5 and 6: a request in the daemon cannot be killed otherwise).
const RECALL_SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// How long an unlink waits for another server to give the session up before deleting it
/// anyway. The kernel holds the directory's lock meanwhile, so lookups and creates of the
/// whole mount wait too; the holder was asked at once and serves nothing from memory once it
/// heard, and its later writes find the session gone.
const UNLINK_RECALL_BOUND: Duration = Duration::from_millis(200);

/// The kernel's caches of this mount, which the daemon must empty for a file before another
/// server may change it. `fuse` implements it on fuser's notifier; unit tests record calls.
/// Never called from a request handler or with a lock held (fuse-facts.md 14).
pub trait KernelCache: Send + Sync + 'static {
    /// Drops the kernel's cached attributes of inode `ino`. Must not wait for any request
    /// (attributes only: no page range, no directory entry), since it runs on the runtime.
    fn invalidate(&self, ino: u64) -> std::io::Result<()>;
    /// Drops the kernel's cached pages (and attributes) of inode `ino`. Waits for reads of
    /// those pages in flight, so it runs on the runtime with no lock a request handler needs.
    fn invalidate_pages(&self, ino: u64) -> std::io::Result<()>;
    /// Puts `data` into the kernel's page cache of inode `ino` as its whole content. Only
    /// while no file handle of it is open (no read of it can be in flight), from a task.
    fn store_pages(&self, ino: u64, data: &[u8]) -> std::io::Result<()>;
}

/// How the kernel may cache an open file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCache {
    /// Every read and write comes to the daemon (O_APPEND, whose offset the daemon decides;
    /// the status file, whose size changes between stats).
    Direct,
    /// The kernel drops what it cached of the file at this open and caches afresh.
    Fresh,
    /// The kernel keeps its cached pages: they are this server's content under its lease.
    Keep,
}

/// Counters for `sessfs status` and the benchmark.
#[derive(Debug, Default)]
struct Counters {
    fuse_requests: AtomicU64,
    opens: AtomicU64,
    /// Requests from other servers to give a leased session up.
    recalls: AtomicU64,
    /// Times this server had to wait for another server's lease.
    recall_waits: AtomicU64,
    /// close(2)s answered before their changes were sent (`write=back`).
    written_back: AtomicU64,
    /// Other servers' requests to send what was closed, so they can read (`write=back`).
    read_recalls: AtomicU64,
}

/// This server holds the session's cluster lock exclusively (see the module's invariants).
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Trusted until then (LEASE_TRUST); renewals move it.
    until: Instant,
    /// Another server asked for the session: nothing more is served from memory (it may be
    /// about to change it), and it goes as soon as local users are done.
    recalled: bool,
    /// The cluster lock's token: only that holding's end ends this lease.
    token: u64,
}

/// Who is asking: from the FUSE request header.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
}

/// What `stat` shows; `fuse` turns it into the kernel's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// How long the kernel may cache these attributes: zero unless the file is leased.
    pub cache_for: Duration,
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// Settings of the directory itself.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Largest session accepted (EFBIG beyond).
    pub max_size: u64,
    /// Bytes of validated content kept between opens.
    pub cache_size: usize,
    /// Mode, owner and group of the mount's root directory (Debian: 1733 root:root).
    pub dir_mode: u32,
    pub dir_uid: u32,
    pub dir_gid: u32,
    /// How long a cluster lock outlives a server that stopped renewing it.
    pub lock_lease: Duration,
    /// Keep a session (its lock and content) after the last local use until another server
    /// asks for it; off: every request asks the store.
    pub leases: bool,
    /// Under a lease, close(2) is answered at once and the changes are sent right after
    /// (coalesced); the lease is given up only once they have landed. Needs `leases`.
    pub write_back: bool,
    /// Batch touches under a lease (until the next renewal, a third of `lock_lease`). Only
    /// where the session lifetime is long against that delay (sessfs: ttl >= 60 s), or a
    /// touch could arrive after the session expired.
    pub batch_touches: bool,
}

/// A time set by `utimensat`.
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    Now,
    At(SystemTime),
}

/// The parts of `setattr` sessfs acts on.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// How far `setattr_begin` got.
#[derive(Debug)]
pub enum SetattrStep {
    /// Answered from memory.
    Done(Result<Attr>),
    /// The change is made here and must still be sent.
    Store(PendingMeta),
    /// Nothing done: the whole of setattr must run (it may need the store first).
    Full,
}

/// A metadata change made here that the store has yet to take.
#[derive(Debug)]
pub struct PendingMeta {
    name: SessionName,
    expect: Option<u64>,
    meta: Meta,
}

/// Open flags that matter here (from open(2)).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenFlags {
    pub create: bool,
    pub exclusive: bool,
    pub truncate: bool,
    pub append: bool,
}

impl OpenFlags {
    pub fn from_raw(flags: i32) -> OpenFlags {
        OpenFlags {
            create: flags & libc::O_CREAT != 0,
            exclusive: flags & libc::O_EXCL != 0,
            truncate: flags & libc::O_TRUNC != 0,
            append: flags & libc::O_APPEND != 0,
        }
    }
}

/// One directory entry for readdir; `offset` is what the kernel hands back to continue after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub offset: u64,
    pub kind: Kind,
    pub name: String,
}

/// A file as this server knows it. Content is held only while the file is open here
/// (`open > 0`); between opens it lives in the content cache.
#[derive(Debug)]
struct Inode {
    /// None once the name was unlinked here, or found replaced in the store.
    name: Option<SessionName>,
    /// The name the file was opened under: its cluster lock keeps that name after an unlink.
    lock_name: SessionName,
    /// The kernel's references (lookups minus forgets).
    lookups: u64,
    /// Open file handles on this server.
    open: u32,
    /// Content while open.
    data: Option<Arc<Vec<u8>>>,
    /// Metadata as this server would write it now.
    meta: Meta,
    /// Store version the content came from (None: never validated, or a foreign session).
    version: Option<u64>,
    /// Incarnation opened; a write must find it still there.
    incarnation: Option<u64>,
    /// Size the store reported when nothing is open here.
    size: u64,
    /// Changes made here and not yet in the store; bumped on every change, so a flush that
    /// raced with a write knows the write still needs sending.
    dirty: u64,
    flushed: u64,
    /// The store's answer to the last lookup of this name: when, for which process, and the
    /// version it reported. An open by the same process right after (the kernel looks a name up
    /// inside every open(2), the entry TTL being 0) needs no second round trip when the copy
    /// held here is that version.
    looked_up: Option<(std::time::Instant, u32, Option<u64>)>,
    /// Bumped on every change of content or version. A store answer is applied only if the
    /// epoch did not move while it was on its way: otherwise a newer local state (a write, a
    /// flush, a fresher answer) would be overwritten by an older one.
    epoch: u64,
    /// Set while this server holds the session's lease; the inode is kept as long.
    lease: Option<Lease>,
    /// A touch (times only) made under the lease and not yet sent.
    touch_pending: bool,
    /// Until when the kernel may hold attributes it was given with a TTL.
    kernel_until: Option<Instant>,
    /// A write-back task is sending this inode's closes (`write=back`): its content stays here
    /// after the last close until they have landed.
    write_back: bool,
    /// The state at the last close answered before it was sent (write-back), to be sent as it
    /// was then: later changes of a file open here again are not the other servers' to see
    /// before that file's own close.
    closed: Option<Closed>,
    /// Other servers' reads are being served (see `flush_for_readers`): closes meanwhile are
    /// written through.
    flushing: u32,
    /// The kernel's page cache of the file agrees with `data`: it was emptied at an open
    /// since, and the content changed only through the kernel (writes, truncations) after.
    /// Any other change (a load, a grant's content check, a refused write) clears it.
    pages_valid: bool,
    /// Bumped whenever `pages_valid` is decided anew: pages prepared for the kernel before
    /// must not be given after.
    pages_gen: u64,
    /// The content is being given to the kernel's page cache (`fill_pages_later`): an open
    /// meanwhile uses direct I/O.
    storing: bool,
    /// The kernel wrote into its pages since it last had the whole content: the last page
    /// may be partial (not up to date), so the next read would ask again.
    pages_written: bool,
    /// Held while changes are on their way to the store, so that two sends of one file
    /// never overtake each other (a write-back task, and a flush or release of the lock).
    sending: Arc<tokio::sync::Mutex<()>>,
}

impl Inode {
    fn new(name: SessionName, stat: &Stat) -> Inode {
        Inode {
            lock_name: name.clone(),
            name: Some(name),
            lookups: 0,
            open: 0,
            data: None,
            meta: stat.meta,
            version: stat.version,
            incarnation: stat.incarnation,
            size: stat.size,
            dirty: 0,
            flushed: 0,
            epoch: 0,
            looked_up: None,
            lease: None,
            touch_pending: false,
            kernel_until: None,
            write_back: false,
            closed: None,
            flushing: 0,
            pages_valid: false,
            pages_gen: 0,
            storing: false,
            pages_written: false,
            sending: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Whether the lease is still to be trusted now.
    fn leased(&self) -> bool {
        self.lease
            .is_some_and(|l| !l.recalled && l.until > Instant::now())
    }

    fn is_dirty(&self) -> bool {
        self.dirty != self.flushed
    }

    /// The kernel's pages of the file may differ from `data` from now on.
    fn distrust_pages(&mut self) {
        self.pages_valid = false;
        self.pages_gen += 1;
    }

    /// Changes made here are not in the store yet and their content is still here: an open
    /// sees them, as processes on one machine share a file's page cache. (Content stays after
    /// the last close only while a write-back is on its way.)
    fn has_unsent(&self) -> bool {
        self.data.is_some() && self.is_dirty()
    }

    fn mark_dirty(&mut self) {
        self.dirty += 1;
        self.epoch += 1;
    }

    fn current_size(&self) -> u64 {
        match &self.data {
            Some(d) => d.len() as u64,
            None => self.size,
        }
    }

    /// Takes in what the store reported, unless changes made here are newer.
    fn absorb(&mut self, stat: &Stat) {
        if self.is_dirty() {
            return;
        }
        self.epoch += 1;
        if self.version != stat.version || stat.version.is_none() {
            self.data = None;
            self.distrust_pages();
        }
        self.meta = stat.meta;
        self.version = stat.version;
        self.incarnation = stat.incarnation;
        self.size = stat.size;
    }
}

/// One state of a file's content and metadata, as sent to the store.
#[derive(Debug, Clone)]
struct Closed {
    data: Arc<Vec<u8>>,
    meta: Meta,
    /// `Inode::dirty` at that state.
    generation: u64,
    /// The cluster lock's token this state was made under, if it is to be sent under that
    /// holding only (a write-back): sent later under a newer holding of this server, it could
    /// overwrite what another server wrote in between.
    token: Option<u64>,
}

#[derive(Debug)]
struct Handle {
    ino: u64,
    append: bool,
    cache: PageCache,
}

/// An open directory: one page of names at a time, so listing a million sessions costs the
/// memory of one page.
#[derive(Debug, Default)]
struct DirHandle {
    /// Entries fetched and not yet passed beyond, with their offsets.
    page: Vec<(u64, SessionName)>,
    /// Offset of the last entry fetched (offsets count entries from 3 on: 1 and 2 are . and ..).
    last_offset: u64,
    /// Where the store's listing continues; None once it ended.
    cursor: Option<u64>,
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    by_name: HashMap<SessionName, u64>,
    handles: HashMap<u64, Handle>,
    dirs: HashMap<u64, DirHandle>,
    /// Open handles of the status file, each with the text as it was at open.
    status: HashMap<u64, Arc<Vec<u8>>>,
    next_fh: u64,
}

/// The inode number a name gets: a hash, so readdir can report the number lookup will give
/// without keeping a table of every session listed.
fn hash_ino(name: &SessionName) -> u64 {
    // FNV-1a, 64 bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h >> 1).max(STATUS_INO + 1)
}

impl State {
    fn fresh_fh(&mut self) -> u64 {
        self.next_fh += 1;
        self.next_fh
    }

    /// The inode bound to `name`, or a new one with a number no live inode has.
    fn bind(&mut self, name: &SessionName, stat: &Stat) -> u64 {
        if let Some(&ino) = self.by_name.get(name) {
            return ino;
        }
        let mut ino = hash_ino(name);
        // A collision, or an unlinked inode still open under the same name's number: probe.
        while ino <= STATUS_INO || self.inodes.contains_key(&ino) {
            ino = ino.wrapping_add(0x9E37_79B9) >> 1;
            ino = ino.max(STATUS_INO + 1);
        }
        self.inodes.insert(ino, Inode::new(name.clone(), stat));
        self.by_name.insert(name.clone(), ino);
        ino
    }

    /// Detaches the inode from its name: it lives on for its open handles, as an unlinked file.
    fn unbind(&mut self, name: &SessionName) {
        if let Some(ino) = self.by_name.remove(name) {
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.name = None;
            }
            self.drop_if_unused(ino);
        }
    }

    fn drop_if_unused(&mut self, ino: u64) {
        let unused = self.inodes.get(&ino).is_some_and(|i| {
            // Unsent changes keep it too: a release may still be sending them.
            i.lookups == 0 && i.open == 0 && i.lease.is_none() && !i.write_back && !i.is_dirty()
        });
        if unused
            && let Some(inode) = self.inodes.remove(&ino)
            && let Some(name) = inode.name
            && self.by_name.get(&name) == Some(&ino)
        {
            self.by_name.remove(&name);
        }
    }
}

fn to_system_time(ns: Nanos) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn to_nanos(t: SystemTime) -> Nanos {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as Nanos,
        Err(e) => -(e.duration().as_nanos() as Nanos),
    }
}

fn parse_name(name: &[u8]) -> std::result::Result<SessionName, NameError> {
    SessionName::parse(name)
}

fn shown(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

pub struct Fs<S: Store> {
    store: S,
    cfg: FsConfig,
    state: Mutex<State>,
    cache: Mutex<ContentCache>,
    locks: Mutex<locking::LockTable>,
    /// Stats fetched with the last listing pages, for the lookups `ls -l` makes right after.
    listed: Mutex<HashMap<SessionName, (std::time::Instant, u32, Stat)>>,
    /// This server in the store's lock records: random per mount, so a restarted daemon never
    /// mistakes an old claim for its own.
    owner: String,
    mounted_at: SystemTime,
    kernel: OnceLock<Arc<dyn KernelCache>>,
    counters: Counters,
}

impl<S: Store> Fs<S> {
    pub fn new(store: S, cfg: FsConfig) -> Fs<S> {
        let cache = ContentCache::new(cfg.cache_size);
        Fs {
            store,
            cfg,
            state: Mutex::new(State::default()),
            cache: Mutex::new(cache),
            locks: Mutex::new(locking::LockTable::default()),
            listed: Mutex::new(HashMap::new()),
            owner: format!("{:016x}", crate::store::fresh_token()),
            mounted_at: SystemTime::now(),
            kernel: OnceLock::new(),
            counters: Counters::default(),
        }
    }

    /// Lets the kernel cache leased files' attributes, now that they can be invalidated.
    pub fn set_kernel(&self, kernel: Arc<dyn KernelCache>) {
        let _ = self.kernel.set(kernel);
    }

    /// One request from the kernel (counted for `sessfs status`).
    pub fn count_request(&self) {
        self.counters.fuse_requests.fetch_add(1, Ordering::Relaxed);
    }

    fn asker(&self) -> Asker<'_> {
        Asker {
            owner: &self.owner,
            lease: self.cfg.lock_lease,
        }
    }

    /// How long the kernel may cache the attributes of `inode` now: under a lease nobody has
    /// recalled, never past the lease's trusted end.
    fn kernel_ttl(&self, inode: &Inode) -> Duration {
        if self.kernel.get().is_none() {
            return Duration::ZERO;
        }
        match inode.lease {
            Some(l) if inode.leased() => l
                .until
                .saturating_duration_since(Instant::now())
                .min(KERNEL_TTL),
            _ => Duration::ZERO,
        }
    }

    /// The attributes as the kernel is given them, noting how long it may keep them.
    fn kernel_attr(&self, ino: u64, inode: &mut Inode) -> Attr {
        let mut a = Self::attr_of(ino, inode);
        a.cache_for = self.kernel_ttl(inode);
        if !a.cache_for.is_zero() {
            let until = Instant::now() + a.cache_for;
            inode.kernel_until = Some(inode.kernel_until.map_or(until, |u| u.max(until)));
        }
        a
    }

    /// This server's name in the store's lock records.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (every change is a single assignment or
        // map operation), so a poisoned lock is taken over rather than taking the mount down.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache(&self) -> MutexGuard<'_, ContentCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn listed(&self) -> MutexGuard<'_, HashMap<SessionName, (std::time::Instant, u32, Stat)>> {
        self.listed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A change made here makes what a listing said about the session stale.
    fn forget_listed(&self, name: &SessionName) {
        self.listed().remove(name);
    }

    /// What the listing said of `name`, for the process that listed it (`ls -l` stats what
    /// it just read), within LISTED_VALIDITY. Any other process asks the store: a session
    /// deleted elsewhere must not seem to exist to it.
    fn listed_stat(&self, name: &SessionName, pid: u32) -> Option<Stat> {
        let listed = self.listed();
        let (when, by, stat) = listed.get(name)?;
        (*by == pid && when.elapsed() < LISTED_VALIDITY).then_some(*stat)
    }

    pub fn root_attr(&self) -> Attr {
        Attr {
            cache_for: Duration::ZERO,
            ino: ROOT_INO,
            kind: Kind::Directory,
            size: 0,
            mode: self.cfg.dir_mode & 0o7777,
            nlink: 2,
            uid: self.cfg.dir_uid,
            gid: self.cfg.dir_gid,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
        }
    }

    fn attr_of(ino: u64, inode: &Inode) -> Attr {
        Attr {
            cache_for: Duration::ZERO,
            ino,
            kind: Kind::File,
            size: inode.current_size(),
            mode: inode.meta.mode & 0o7777,
            nlink: u32::from(inode.name.is_some()),
            uid: inode.meta.uid,
            gid: inode.meta.gid,
            mtime: to_system_time(inode.meta.mtime),
            ctime: to_system_time(inode.meta.ctime),
        }
    }

    fn check_parent(parent: u64) -> Result<()> {
        if parent != ROOT_INO {
            return Err(err!(ENOENT, Debug, "no such directory (inode {parent})"));
        }
        Ok(())
    }

    /// Looks a name up: from this server's open file if there is one (its state is at least as
    /// new as the open that validated it), else from the store.
    /// The part of lookup this server can answer from memory (an open file, a name listed a
    /// moment ago, a name that cannot exist); None when only the store can tell. The FUSE
    /// edge calls it inline, sparing the hop to another thread.
    pub fn lookup_now(&self, parent: u64, name: &[u8], pid: u32) -> Option<Result<Attr>> {
        if let Err(e) = Self::check_parent(parent) {
            return Some(Err(e));
        }
        if name == STATUS_NAME.as_bytes() {
            return Some(Ok(self.status_attr(0)));
        }
        let name = match parse_name(name) {
            Ok(n) => n,
            Err(NameError::TooLong) => {
                return Some(Err(err!(
                    ENAMETOOLONG,
                    Debug,
                    "{}: name too long",
                    shown(name)
                )));
            }
            // A name the directory can never hold simply does not exist.
            Err(NameError::Invalid) => {
                return Some(Err(err!(
                    ENOENT,
                    Debug,
                    "{}: not a session name",
                    shown(name)
                )));
            }
        };
        let listed = self.listed_stat(&name, pid);
        let mut st = self.state();
        if let Some(&ino) = st.by_name.get(&name)
            && let Some(inode) = st.inodes.get_mut(&ino)
            && (inode.open > 0 || inode.leased())
        {
            inode.lookups += 1;
            return Some(Ok(self.kernel_attr(ino, inode)));
        }
        let stat = listed?;
        let ino = st.bind(&name, &stat);
        let inode = st.inodes.get_mut(&ino)?;
        if inode.open == 0 && !inode.is_dirty() {
            inode.absorb(&stat);
        }
        inode.lookups += 1;
        Some(Ok(self.kernel_attr(ino, inode)))
    }

    pub async fn lookup(&self, parent: u64, name: &[u8], pid: u32) -> Result<Attr> {
        if let Some(answer) = self.lookup_now(parent, name, pid) {
            return answer;
        }
        let name = parse_name(name)
            .map_err(|_| err!(ENOENT, Debug, "{}: not a session name", shown(name)))?;
        let before = self.epoch_of_name(&name);
        let listed = self.listed_stat(&name, pid);
        let stat = match listed {
            Some(stat) => Some(stat),
            None => self
                .store
                .stat(&name)
                .await
                .map_err(|e| Error::store(&name, e))?,
        };
        let Some(stat) = stat else {
            return Err(err!(ENOENT, Debug, "{name}: no such session"));
        };
        let mut st = self.state();
        let ino = st.bind(&name, &stat);
        let inode = st
            .inodes
            .get_mut(&ino)
            .ok_or_else(|| err!(EIO, Error, "{name}: inode vanished"))?;
        if inode.open == 0 && before.is_none_or(|e| e == inode.epoch) {
            inode.absorb(&stat);
            // A listed stat may be up to LISTED_VALIDITY old: it never stands in for an open's
            // check.
            if listed.is_none() {
                inode.looked_up = Some((std::time::Instant::now(), pid, stat.version));
            }
        }
        inode.lookups += 1;
        Ok(self.kernel_attr(ino, inode))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        let mut st = self.state();
        if let Some(inode) = st.inodes.get_mut(&ino) {
            inode.lookups = inode.lookups.saturating_sub(n);
        }
        st.drop_if_unused(ino);
    }

    /// getattr from memory: the root, an open file, a file listed a moment ago.
    pub fn getattr_now(&self, ino: u64, pid: u32) -> Option<Result<Attr>> {
        if ino == ROOT_INO {
            return Some(Ok(self.root_attr()));
        }
        if ino == STATUS_INO {
            return Some(Ok(self.status_attr(0)));
        }
        let name = {
            let mut st = self.state();
            let Some(inode) = st.inodes.get_mut(&ino) else {
                return Some(Err(err!(ENOENT, Debug, "inode {ino} is not known")));
            };
            match &inode.name {
                Some(name) if inode.open == 0 && !inode.leased() => name.clone(),
                _ => return Some(Ok(self.kernel_attr(ino, inode))),
            }
        };
        let stat = self.listed_stat(&name, pid)?;
        let mut st = self.state();
        let inode = st.inodes.get_mut(&ino)?;
        if inode.open == 0 && !inode.is_dirty() {
            inode.absorb(&stat);
        }
        Some(Ok(self.kernel_attr(ino, inode)))
    }

    pub async fn getattr(&self, ino: u64, pid: u32) -> Result<Attr> {
        if ino == ROOT_INO {
            return Ok(self.root_attr());
        }
        if ino == STATUS_INO {
            return Ok(self.status_attr(0));
        }
        let name = {
            let mut st = self.state();
            let inode = st
                .inodes
                .get_mut(&ino)
                .ok_or_else(|| err!(ENOENT, Debug, "inode {ino} is not known"))?;
            match &inode.name {
                Some(name) if inode.open == 0 && !inode.leased() => name.clone(),
                _ => return Ok(self.kernel_attr(ino, inode)),
            }
        };
        let before = self.epoch_of_name(&name);
        let stat = match self.listed_stat(&name, pid) {
            Some(stat) => Some(stat),
            None => self
                .store
                .stat(&name)
                .await
                .map_err(|e| Error::store(&name, e))?,
        };
        let mut st = self.state();
        let inode = st
            .inodes
            .get_mut(&ino)
            .ok_or_else(|| err!(ENOENT, Debug, "{name}: inode was forgotten"))?;
        match stat {
            Some(stat) => {
                if inode.open == 0 && before.is_none_or(|e| e == inode.epoch) {
                    inode.absorb(&stat);
                }
                Ok(self.kernel_attr(ino, inode))
            }
            None => Err(err!(ENOENT, Debug, "{name}: no such session")),
        }
    }

    /// The content this server holds for `name` and its version, if any.
    fn known_copy(&self, ino: u64, name: &SessionName) -> Option<Cached> {
        {
            let st = self.state();
            if let Some(inode) = st.inodes.get(&ino)
                && let (Some(data), Some(version)) = (&inode.data, inode.version)
            {
                return Some(Cached {
                    version,
                    data: data.clone(),
                });
            }
        }
        self.cache().get(name)
    }

    /// Installs a handle on an inode whose content is now in place.
    fn new_handle(st: &mut State, ino: u64, flags: OpenFlags) -> Result<u64> {
        let inode = st
            .inodes
            .get_mut(&ino)
            .ok_or_else(|| err!(ENOENT, Debug, "inode {ino} was forgotten during open"))?;
        if flags.truncate && inode.data.as_ref().is_some_and(|d| !d.is_empty()) {
            inode.data = Some(Arc::new(Vec::new()));
            let now = now_nanos();
            inode.meta.mtime = now;
            inode.meta.ctime = now;
            inode.mark_dirty();
            inode.distrust_pages();
        }
        let cache = if flags.append || inode.storing {
            // (storing: the kernel is being given pages this open's writes could race with.)
            inode.distrust_pages();
            PageCache::Direct
        } else if inode.pages_valid && inode.leased() {
            PageCache::Keep
        } else {
            // The kernel empties its cache of the file at this open: from here on what it
            // caches is read from `data`.
            inode.pages_valid = true;
            inode.pages_gen += 1;
            PageCache::Fresh
        };
        inode.open += 1;
        let fh = st.fresh_fh();
        st.handles.insert(
            fh,
            Handle {
                ino,
                append: flags.append,
                cache,
            },
        );
        Ok(fh)
    }

    pub async fn open(&self, ino: u64, flags: OpenFlags, caller: Caller) -> Result<u64> {
        self.counters.opens.fetch_add(1, Ordering::Relaxed);
        if ino == STATUS_INO {
            let text = Arc::new(self.status_text().into_bytes());
            let mut st = self.state();
            let fh = st.fresh_fh();
            st.status.insert(fh, text);
            return Ok(fh);
        }
        let name = {
            let mut st = self.state();
            let inode = st
                .inodes
                .get(&ino)
                .ok_or_else(|| err!(ENOENT, Debug, "inode {ino} is not known"))?;
            let Some(name) = inode.name.clone() else {
                return Err(err!(ENOENT, Debug, "inode {ino} was unlinked"));
            };
            // Another open file here has changes not yet sent: this open sees them, as
            // processes on one machine share a file's page cache.
            if inode.has_unsent() {
                return Self::new_handle(&mut st, ino, flags);
            }
            name
        };
        if let Some(fh) = self.open_from_lease(ino, &name, flags) {
            return Ok(fh);
        }
        if let Some(fh) = self.open_from_lookup(ino, &name, flags, caller.pid) {
            return Ok(fh);
        }
        // Validate, and apply the answer only if nothing newer arrived here meanwhile;
        // otherwise ask again (bounded: each retry follows a local change).
        for _ in 0..MAX_REVALIDATIONS {
            let epoch = self.epoch_of_ino(ino);
            let known = self.known_copy(ino, &name);
            let version = known.as_ref().map(|c| c.version);
            let loaded = recalling!(self, &name, Some(caller.pid), |retry| self.store.load(
                &name,
                version,
                self.asker(),
                retry
            ))?;
            let (stat, data) = match loaded {
                Loaded::Changed(rec) => (rec.stat, rec.data),
                Loaded::Same(stat) => match known {
                    Some(c) => (stat, c.data),
                    None => {
                        return Err(err!(EIO, Error, "{name}: store validated a copy not held"));
                    }
                },
                Loaded::Recalled(_) => {
                    return Err(err!(EIO, Error, "{name}: load kept being recalled"));
                }
                Loaded::Missing if flags.create => {
                    // The kernel still had the name (deleted elsewhere since): O_CREAT makes it
                    // anew.
                    return self
                        .create_named(name, 0o600, flags, caller)
                        .await
                        .map(|(_, fh)| fh);
                }
                Loaded::Missing => {
                    let mut st = self.state();
                    st.unbind(&name);
                    self.cache().remove(&name);
                    // ESTALE, not ENOENT: the kernel's entry for the name was stale (the
                    // session was deleted elsewhere), and the kernel then looks the name up
                    // afresh and, with O_CREAT (which it does not pass to open), creates it.
                    return Err(err!(
                        ESTALE,
                        Debug,
                        "{name}: deleted since it was looked up"
                    ));
                }
            };
            let mut st = self.state();
            let inode = st
                .inodes
                .get_mut(&ino)
                .ok_or_else(|| err!(ENOENT, Debug, "{name}: inode was forgotten during open"))?;
            if inode.has_unsent() {
                return Self::new_handle(&mut st, ino, flags);
            }
            if Some(inode.epoch) != epoch {
                continue;
            }
            inode.absorb(&stat);
            inode.data = Some(data);
            inode.size = stat.size;
            inode.distrust_pages();
            return Self::new_handle(&mut st, ino, flags);
        }
        Err(err!(
            EIO,
            Error,
            "{name}: content kept changing here while it was being validated"
        ))
    }

    /// open answered from memory (under a lease, or while another open file here has unsent
    /// changes), without a hop to another thread; None when the store must be asked.
    pub fn open_now(&self, ino: u64, flags: OpenFlags) -> Option<Result<u64>> {
        if ino == STATUS_INO {
            return None;
        }
        let name = {
            let mut st = self.state();
            let inode = st.inodes.get(&ino)?;
            let name = inode.name.clone()?;
            if inode.has_unsent() {
                self.counters.opens.fetch_add(1, Ordering::Relaxed);
                return Some(Self::new_handle(&mut st, ino, flags));
            }
            name
        };
        let fh = self.open_from_lease(ino, &name, flags)?;
        self.counters.opens.fetch_add(1, Ordering::Relaxed);
        Some(Ok(fh))
    }

    /// Opens from memory under a lease: nobody else can have changed the session, so the copy
    /// this server holds (open here, or cached at the last close) is the stored one.
    fn open_from_lease(&self, ino: u64, name: &SessionName, flags: OpenFlags) -> Option<u64> {
        let cached = self.cache().get(name);
        let mut st = self.state();
        let inode = st.inodes.get_mut(&ino)?;
        if !inode.leased() || inode.version.is_none() {
            return None;
        }
        if inode.data.is_none() {
            let c = cached.filter(|c| Some(c.version) == inode.version)?;
            inode.data = Some(c.data);
            inode.epoch += 1;
        }
        Self::new_handle(&mut st, ino, flags).ok()
    }

    /// Opens without a round trip when this process's lookup, a moment ago inside the same
    /// open(2), found the version of the copy cached here.
    fn open_from_lookup(
        &self,
        ino: u64,
        name: &SessionName,
        flags: OpenFlags,
        pid: u32,
    ) -> Option<u64> {
        let cached = self.cache().get(name)?;
        let mut st = self.state();
        let inode = st.inodes.get_mut(&ino)?;
        let (when, who, version) = inode.looked_up.take()?;
        let fresh = who == pid
            && when.elapsed() < LOOKUP_VALIDITY
            && version == Some(cached.version)
            && inode.open == 0
            && !inode.is_dirty();
        if !fresh {
            return None;
        }
        inode.data = Some(cached.data);
        inode.version = Some(cached.version);
        inode.epoch += 1;
        Self::new_handle(&mut st, ino, flags).ok()
    }

    fn epoch_of_ino(&self, ino: u64) -> Option<u64> {
        self.state().inodes.get(&ino).map(|i| i.epoch)
    }

    fn epoch_of_name(&self, name: &SessionName) -> Option<u64> {
        let st = self.state();
        st.by_name
            .get(name)
            .and_then(|ino| st.inodes.get(ino))
            .map(|i| i.epoch)
    }

    /// create(2) with O_CREAT on a name the kernel believes absent.
    pub async fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: OpenFlags,
        caller: Caller,
    ) -> Result<(Attr, u64)> {
        Self::check_parent(parent)?;
        let name = match parse_name(name) {
            Ok(n) => n,
            Err(NameError::TooLong) => {
                return Err(err!(ENAMETOOLONG, Warn, "{}: name too long", shown(name)));
            }
            Err(NameError::Invalid) => {
                return Err(err!(
                    EINVAL,
                    Warn,
                    "{:?}: not a session file name (sess_ followed by [A-Za-z0-9,-], or \
                     [A-Za-z0-9,._-] not starting with '.')",
                    shown(name)
                ));
            }
        };
        self.create_named(name, mode, flags, caller).await
    }

    async fn create_named(
        &self,
        name: SessionName,
        mode: u32,
        flags: OpenFlags,
        caller: Caller,
    ) -> Result<(Attr, u64)> {
        let now = now_nanos();
        let meta = Meta {
            mode: mode & 0o7777,
            uid: caller.uid,
            gid: caller.gid,
            mtime: now,
            ctime: now,
        };
        let created = recalling!(self, &name, Some(caller.pid), |retry| self.store.create(
            &name,
            &meta,
            flags.exclusive,
            self.asker(),
            retry
        ))?;
        self.forget_listed(&name);
        let (stat, data) = match created {
            Created::Created(stat) => (stat, Arc::new(Vec::new())),
            Created::Exists(rec) => (rec.stat, rec.data),
            Created::Recalled(_) => {
                return Err(err!(EIO, Error, "{name}: create kept being recalled"));
            }
            Created::ExistsExclusive => {
                return Err(err!(EEXIST, Debug, "{name}: exists"));
            }
        };
        let mut st = self.state();
        // A name bound to an older inode (the kernel forgot its dentry, we have not yet) is
        // taken over by the new file.
        if let Some(&old) = st.by_name.get(&name) {
            let busy = st
                .inodes
                .get(&old)
                .is_some_and(|i| i.open > 0 && i.incarnation != stat.incarnation);
            if busy {
                st.unbind(&name);
            }
        }
        let ino = st.bind(&name, &stat);
        let inode = st
            .inodes
            .get_mut(&ino)
            .ok_or_else(|| err!(EIO, Error, "{name}: inode vanished"))?;
        if !inode.has_unsent() {
            inode.absorb(&stat);
            inode.data = Some(data);
            inode.size = stat.size;
            inode.epoch += 1;
            inode.distrust_pages();
        }
        inode.lookups += 1;
        let fh = Self::new_handle(&mut st, ino, flags)?;
        let inode = st
            .inodes
            .get_mut(&ino)
            .ok_or_else(|| err!(EIO, Error, "{name}: inode vanished"))?;
        let attr = self.kernel_attr(ino, inode);
        Ok((attr, fh))
    }

    /// How the kernel may cache the content of the file opened as `fh`.
    pub fn page_cache(&self, fh: u64) -> PageCache {
        self.state()
            .handles
            .get(&fh)
            .map_or(PageCache::Direct, |h| h.cache)
    }

    fn handle_ino(st: &State, fh: u64) -> Result<u64> {
        st.handles
            .get(&fh)
            .map(|h| h.ino)
            .ok_or_else(|| err!(EBADF, Error, "file handle {fh} is not open"))
    }

    /// Attributes of an open file: this server's view, which includes its unsent writes.
    pub fn getattr_open(&self, fh: u64) -> Result<Attr> {
        let mut st = self.state();
        if let Some(text) = st.status.get(&fh) {
            return Ok(self.status_attr(text.len() as u64));
        }
        let ino = Self::handle_ino(&st, fh)?;
        let inode = st
            .inodes
            .get_mut(&ino)
            .ok_or_else(|| err!(EBADF, Error, "file handle {fh}: inode gone"))?;
        Ok(self.kernel_attr(ino, inode))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let st = self.state();
        let status = st.status.get(&fh);
        let ino = match status {
            Some(_) => STATUS_INO,
            None => Self::handle_ino(&st, fh)?,
        };
        let data = match status {
            Some(text) => Some(text),
            None => st.inodes[&ino].data.as_ref(),
        };
        let Some(data) = data else {
            return Err(err!(EIO, Error, "inode {ino}: open file has no content"));
        };
        let start = (offset.min(data.len() as u64)) as usize;
        let end = (offset
            .saturating_add(u64::from(size))
            .min(data.len() as u64)) as usize;
        Ok(data[start..end].to_vec())
    }

    pub fn write(&self, fh: u64, offset: u64, bytes: &[u8]) -> Result<u32> {
        let mut st = self.state();
        let ino = Self::handle_ino(&st, fh)?;
        let append = st.handles[&fh].append;
        let max = self.cfg.max_size;
        let inode = st
            .inodes
            .get_mut(&ino)
            .ok_or_else(|| err!(EBADF, Error, "file handle {fh}: inode gone"))?;
        let data = inode
            .data
            .as_mut()
            .ok_or_else(|| err!(EIO, Error, "inode {ino}: open file has no content"))?;
        let offset = if append { data.len() as u64 } else { offset };
        let end = offset.saturating_add(bytes.len() as u64);
        if end > max {
            let what = inode.name.as_ref().map_or("(unlinked)", |n| n.as_str());
            return Err(err!(
                EFBIG,
                Warn,
                "{what}: a write up to {end} bytes exceeds max_size={max}"
            ));
        }
        let buf = Arc::make_mut(data);
        let (offset, end) = (offset as usize, end as usize);
        if buf.len() < end {
            buf.resize(end, 0);
        }
        buf[offset..end].copy_from_slice(bytes);
        inode.pages_written = true;
        let now = now_nanos();
        inode.meta.mtime = now;
        inode.meta.ctime = now;
        inode.mark_dirty();
        Ok(bytes.len() as u32)
    }

    /// Sends this inode's unsent changes to the store; Ok if there were none. `pid`: the
    /// process whose close waits for it, if any (a wait for another server's lease is
    /// interrupted by its signals).
    async fn persist(&self, ino: u64, pid: Option<u32>) -> Result<()> {
        let sending = match self.state().inodes.get(&ino) {
            Some(i) if i.is_dirty() => i.sending.clone(),
            _ => return Ok(()),
        };
        let _sending = sending.lock().await;
        let snapshot = {
            let st = self.state();
            let Some(inode) = st.inodes.get(&ino) else {
                return Ok(());
            };
            if !inode.is_dirty() {
                return Ok(());
            }
            let Some(data) = inode.data.clone() else {
                return Ok(());
            };
            Closed {
                data,
                meta: inode.meta,
                generation: inode.dirty,
                token: None,
            }
        };
        self.send(ino, snapshot, pid).await
    }

    /// Sends one state of the file (`snapshot`); the caller holds the inode's `sending`.
    async fn send(&self, ino: u64, snapshot: Closed, pid: Option<u32>) -> Result<()> {
        let Closed {
            data,
            meta,
            generation,
            token: made_under,
        } = snapshot;
        let (name, expect) = {
            let st = self.state();
            let Some(inode) = st.inodes.get(&ino) else {
                return Ok(());
            };
            let Some(name) = inode.name.clone() else {
                // Unlinked here: its writes go nowhere, as on a local filesystem.
                return Ok(());
            };
            (name, inode.incarnation)
        };
        let token = made_under.or_else(|| self.fence_token(ino));
        let fence = token.map(|token| Fence {
            owner: &self.owner,
            token,
        });
        let written = recalling!(
            self,
            &name,
            pid,
            self.store
                .write(&name, expect, fence, &data, &meta, self.asker())
        );
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                // The write may or may not have landed: no copy here counts as the stored
                // one any more, under a lease or not.
                self.distrust(ino, &name);
                return Err(e);
            }
        };
        self.forget_listed(&name);
        if written == Written::Fenced {
            self.distrust(ino, &name);
        }
        let mut st = self.state();
        match written {
            Written::Recalled(_) => Err(err!(EIO, Error, "{name}: write kept being recalled")),
            Written::Fenced => {
                if let Some(inode) = st.inodes.get_mut(&ino) {
                    inode.flushed = inode.dirty;
                }
                Err(err!(
                    EIO,
                    Error,
                    "{name}: write refused: this server's lock on the session ran out (lease \
                     {:?}) and another server may have written since",
                    self.cfg.lock_lease
                ))
            }
            Written::Done(stat) => {
                if let Some(inode) = st.inodes.get_mut(&ino) {
                    inode.flushed = inode.flushed.max(generation);
                    // A close's state still to be written back is older than this one.
                    if inode
                        .closed
                        .as_ref()
                        .is_some_and(|c| c.generation <= generation)
                    {
                        inode.closed = None;
                    }
                    inode.epoch += 1;
                    // The write carried the times: no touch left to send.
                    inode.touch_pending = false;
                    if !inode.is_dirty() {
                        inode.version = stat.version;
                        inode.incarnation = stat.incarnation;
                        inode.size = stat.size;
                    }
                }
                Ok(())
            }
            Written::Gone => {
                tracing::info!(
                    session = %name,
                    "session was deleted or replaced by another server while open here; \
                     this server's last changes are dropped, as for a file unlinked while open"
                );
                if let Some(inode) = st.inodes.get_mut(&ino) {
                    inode.flushed = inode.dirty;
                }
                if st.by_name.get(&name) == Some(&ino) {
                    st.unbind(&name);
                }
                self.cache().remove(&name);
                Ok(())
            }
        }
    }

    /// flush answered inline: when there is nothing to send, or under a lease with
    /// `write=back` (the changes are handed to a write-back task); None when the store must
    /// be asked. Must run inside the runtime's context (it may start a task).
    pub fn flush_now(self: &Arc<Self>, fh: u64) -> Option<Result<()>> {
        let mut st = self.state();
        if st.status.contains_key(&fh) {
            return Some(Ok(()));
        }
        let ino = match Self::handle_ino(&st, fh) {
            Ok(ino) => ino,
            Err(e) => return Some(Err(e)),
        };
        let write_back = self.cfg.write_back;
        match st.inodes.get_mut(&ino) {
            Some(i) if i.is_dirty() && i.name.is_some() => {
                // Recalled, or another server's read being served: it waits for exactly
                // these changes, send them now.
                if !write_back || !i.leased() || i.flushing > 0 {
                    return None;
                }
                let data = i.data.clone()?;
                i.closed = Some(Closed {
                    data,
                    meta: i.meta,
                    generation: i.dirty,
                    token: i.lease.map(|l| l.token),
                });
                self.counters.written_back.fetch_add(1, Ordering::Relaxed);
                if !i.write_back {
                    i.write_back = true;
                    let fs = self.clone();
                    tokio::spawn(async move { fs.write_back(ino).await });
                }
                Some(Ok(()))
            }
            _ => Some(Ok(())),
        }
    }

    /// Sends a file's closes after close(2) returned (`write=back`). Closes made while a send
    /// is on its way go in the next one (the latest state only), so a burst of closes costs
    /// one write each round. A failed send is retried while the lease lasts: the lock stays
    /// held, so no other server can have read or changed the session meanwhile; past it, the
    /// changes are lost (logged).
    async fn write_back(self: Arc<Self>, ino: u64) {
        let mut pause = WRITE_BACK_RETRY;
        loop {
            let Some(sending) = self.state().inodes.get(&ino).map(|i| i.sending.clone()) else {
                return;
            };
            let guard = sending.lock().await;
            let snapshot = {
                let mut st = self.state();
                let Some(inode) = st.inodes.get_mut(&ino) else {
                    return;
                };
                match inode.closed.take() {
                    Some(c) if c.generation > inode.flushed => Some(c),
                    _ => {
                        inode.write_back = false;
                        // Still dirty: a send failed while the lease was being given up; the
                        // release sends the content, so it stays.
                        if inode.open == 0
                            && !inode.is_dirty()
                            && let Some((name, cached)) = Self::park(inode)
                        {
                            self.cache().put(name, cached);
                        }
                        st.drop_if_unused(ino);
                        None
                    }
                }
            };
            let Some(snapshot) = snapshot else { return };
            let sent = self.send(ino, snapshot.clone(), None).await;
            let Err(e) = sent else {
                drop(guard);
                pause = WRITE_BACK_RETRY;
                continue;
            };
            // Put back before another send may look (a reader's flush waits on `sending`).
            let retry = {
                let mut st = self.state();
                let Some(inode) = st.inodes.get_mut(&ino) else {
                    return;
                };
                let unsent = snapshot.generation > inode.flushed;
                let retry = unsent && inode.lease.is_some_and(|l| l.until > Instant::now());
                if retry {
                    // Unless a newer close came meanwhile, this one is sent again.
                    inode.closed.get_or_insert(snapshot.clone());
                }
                retry
            };
            // The lease is being given up (a recall): the release sends what is unsent, and
            // tries again itself. Lost only once the lock it was made under is gone.
            if !retry && self.fence_token(ino) != snapshot.token {
                tracing::error!(
                    "write-back: {e}; the changes this server acknowledged at close are lost"
                );
                if let Some(inode) = self.state().inodes.get_mut(&ino) {
                    inode.flushed = inode.flushed.max(snapshot.generation);
                }
            }
            drop(guard);
            if retry {
                tracing::warn!("write-back: {e}; trying again in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(self.cfg.lock_lease / 4);
            }
        }
    }

    /// Another server waits to read the session this server holds in write-back mode: sends
    /// every close answered so far, then tells the store those readers may go ahead. Closes
    /// answered meanwhile are written through, so none can be acknowledged and still missed.
    pub(super) async fn flush_for_readers(self: Arc<Self>, ino: u64, name: SessionName) {
        let sending = {
            let mut st = self.state();
            st.inodes.get_mut(&ino).map(|i| {
                i.flushing += 1;
                i.sending.clone()
            })
        };
        let guard = match &sending {
            Some(s) => Some(s.lock().await),
            None => None,
        };
        let snapshot = self
            .state()
            .inodes
            .get_mut(&ino)
            .and_then(|i| i.closed.take().filter(|c| c.generation > i.flushed));
        let mut answered = true;
        if let Some(snapshot) = snapshot
            && let Err(e) = self.send(ino, snapshot.clone(), None).await
        {
            // The readers must not go ahead without it: no answer, they ask again when their
            // wait ends, by when the write-back task has sent it again.
            answered = false;
            tracing::warn!("write-back for another server's read: {e}; sent again shortly");
            let spawn = match self.state().inodes.get_mut(&ino) {
                Some(i) if snapshot.generation > i.flushed => {
                    i.closed.get_or_insert(snapshot);
                    !std::mem::replace(&mut i.write_back, true)
                }
                _ => false,
            };
            if spawn {
                tokio::spawn(self.clone().write_back(ino));
            }
        }
        if answered && let Err(e) = self.store.flushed_for_readers(&name, &self.owner).await {
            tracing::warn!(
                session = %name,
                "could not tell the servers waiting to read the session that it is written \
                 ({e}); they go ahead when this server's lease ends"
            );
        }
        drop(guard);
        if let Some(i) = self.state().inodes.get_mut(&ino) {
            i.flushing = i.flushing.saturating_sub(1);
        }
    }

    /// After the last close under a lease: gives the kernel the whole content as cached pages
    /// (FUSE_NOTIFY_STORE), from a task, so that the next request's read is served by the
    /// kernel; a request that wrote leaves a partial page the kernel would read again. Safe
    /// only while nothing of the file is open (no read or write of its pages in flight): an
    /// open during the store gets direct I/O and leaves the pages untrusted.
    fn fill_pages_later(self: &Arc<Self>, ino: u64, inode: &Inode) {
        // Checked first: most closes (unchanged sessions) stop here.
        if !inode.pages_written || !inode.pages_valid || !inode.leased() {
            return;
        }
        let (Some(kernel), Some(data)) = (self.kernel.get(), inode.data.clone()) else {
            return;
        };
        if data.is_empty() {
            return;
        }
        let (kernel, pages_gen, dirty) = (kernel.clone(), inode.pages_gen, inode.dirty);
        let fs = self.clone();
        tokio::spawn(async move {
            {
                let mut st = fs.state();
                let Some(i) = st.inodes.get_mut(&ino) else {
                    return;
                };
                let same = i.open == 0
                    && i.pages_valid
                    && i.pages_gen == pages_gen
                    && i.dirty == dirty
                    && i.leased()
                    && !i.storing;
                if !same {
                    return;
                }
                i.storing = true;
            }
            let stored = kernel.store_pages(ino, &data);
            if let Err(e) = &stored {
                tracing::debug!(ino, "giving the kernel the file's pages: {e}");
            }
            if let Some(i) = fs.state().inodes.get_mut(&ino) {
                i.storing = false;
                if stored.is_ok() && i.pages_gen == pages_gen && i.dirty == dirty {
                    i.pages_written = false;
                }
            }
        });
    }

    /// After the last close: moves the content out of the inode, returning it for the cache
    /// if it is the stored version. Changes still unsent are lost now.
    fn park(inode: &mut Inode) -> Option<(SessionName, Cached)> {
        let data = inode.data.take();
        if let Some(d) = &data {
            inode.size = d.len() as u64;
        }
        let keep = match (&inode.name, inode.version, data) {
            (Some(name), Some(version), Some(data)) if !inode.is_dirty() => {
                Some((name.clone(), Cached { version, data }))
            }
            _ => None,
        };
        if inode.is_dirty() {
            inode.flushed = inode.dirty;
        }
        keep
    }

    /// Forgets which version this server's copy of `name` is, so that it is never served as
    /// the stored one again (a write whose outcome is unknown, or that was refused).
    fn distrust(&self, ino: u64, name: &SessionName) {
        if let Some(inode) = self.state().inodes.get_mut(&ino) {
            inode.version = None;
            inode.distrust_pages();
        }
        self.cache().remove(name);
    }

    /// close(2): the session reaches the store before close returns.
    pub async fn flush(&self, fh: u64, pid: u32) -> Result<()> {
        let ino = {
            let st = self.state();
            if st.status.contains_key(&fh) {
                return Ok(());
            }
            Self::handle_ino(&st, fh)?
        };
        self.persist(ino, Some(pid)).await
    }

    pub async fn fsync(&self, fh: u64, pid: u32) -> Result<()> {
        self.flush(fh, pid).await
    }

    /// The last close of a file: sends what a failed flush left, then moves the content to the
    /// cache.
    pub async fn release(self: &Arc<Self>, fh: u64) -> Result<()> {
        if self.state().status.remove(&fh).is_some() {
            return Ok(());
        }
        let ino = {
            let st = self.state();
            Self::handle_ino(&st, fh)?
        };
        let last = {
            let st = self.state();
            st.inodes.get(&ino).is_some_and(|i| i.open == 1)
        };
        let sent = if last {
            self.persist(ino, None).await
        } else {
            Ok(())
        };
        self.release_rest(ino, fh, sent)
    }

    /// release when nothing is left to send (the usual case: flush sent it), answered
    /// without a hop to another thread; None when the store must be asked. Must run inside
    /// the runtime's context (it may start lock tasks).
    pub fn release_now(self: &Arc<Self>, fh: u64) -> Option<Result<()>> {
        let ino = {
            let mut st = self.state();
            if st.status.remove(&fh).is_some() {
                return Some(Ok(()));
            }
            let ino = match Self::handle_ino(&st, fh) {
                Ok(ino) => ino,
                Err(e) => return Some(Err(e)),
            };
            let inode = st.inodes.get(&ino)?;
            if inode.open == 1 && inode.is_dirty() && !inode.write_back {
                return None;
            }
            ino
        };
        Some(self.release_rest(ino, fh, Ok(())))
    }

    /// What release does once the file's changes were sent (`sent` says how that went).
    fn release_rest(self: &Arc<Self>, ino: u64, fh: u64, sent: Result<()>) -> Result<()> {
        // The file's flock goes with it (PHP never unlocks: it closes), after its writes.
        self.unlock_fh(ino, fh);
        let mut st = self.state();
        st.handles.remove(&fh);
        if let Some(inode) = st.inodes.get_mut(&ino) {
            inode.open = inode.open.saturating_sub(1);
            if inode.open == 0 {
                self.fill_pages_later(ino, inode);
            }
            // With a write-back on its way the content stays until it has landed.
            if inode.open == 0 && !(inode.write_back && inode.is_dirty()) {
                // Changes that never reached the store are lost now; the error `sent` carries
                // is logged by the edge with the session's name.
                if let Some((name, cached)) = Self::park(inode) {
                    self.cache().put(name, cached);
                }
            }
        }
        st.drop_if_unused(ino);
        sent
    }

    pub async fn setattr(
        self: &Arc<Self>,
        ino: u64,
        fh: Option<u64>,
        set: SetAttr,
        caller: Caller,
    ) -> Result<Attr> {
        if ino == ROOT_INO {
            if set.size.is_some() {
                return Err(err!(
                    EISDIR,
                    Warn,
                    "the session directory cannot be truncated"
                ));
            }
            return Err(err!(
                EPERM,
                Warn,
                "the session directory's mode and owner are set by mount options"
            ));
        }
        // Truncating a file nobody has open here: load it like an open would.
        let opened_here = {
            let st = self.state();
            let inode = st
                .inodes
                .get(&ino)
                .ok_or_else(|| err!(ENOENT, Debug, "inode {ino} is not known"))?;
            inode.open > 0
        };
        let temp_fh = if set.size.is_some() && fh.is_none() && !opened_here {
            Some(self.open(ino, OpenFlags::default(), caller).await?)
        } else {
            None
        };
        let result = match self.setattr_local(ino, set, caller) {
            Ok(Ok(attr)) => Ok(attr),
            Ok(Err(pending)) => self.setattr_store(ino, pending, caller).await,
            Err(e) => Err(e),
        };
        if let Some(tfh) = temp_fh {
            // The truncation is sent for the caller, so a wait for another server's lease
            // stays killable; the temporary handle's release then has nothing left to send.
            let sent = self.persist(ino, Some(caller.pid)).await;
            self.release(tfh).await?;
            sent?;
        }
        result
    }

    /// setattr as far as this server's memory takes it, without a hop to another thread: the
    /// local change of an open file (truncation, times under a lease) is the whole of it.
    pub fn setattr_begin(
        &self,
        ino: u64,
        fh: Option<u64>,
        set: SetAttr,
        caller: Caller,
    ) -> SetattrStep {
        if ino == ROOT_INO {
            return SetattrStep::Full;
        }
        let opened_here = self.state().inodes.get(&ino).is_some_and(|i| i.open > 0);
        if set.size.is_some() && fh.is_none() && !opened_here {
            return SetattrStep::Full;
        }
        match self.setattr_local(ino, set, caller) {
            Ok(Ok(attr)) => SetattrStep::Done(Ok(attr)),
            Ok(Err(pending)) => SetattrStep::Store(pending),
            Err(e) => SetattrStep::Done(Err(e)),
        }
    }

    /// The rest of a setattr that `setattr_begin` could not finish.
    pub async fn setattr_finish(
        self: &Arc<Self>,
        ino: u64,
        fh: Option<u64>,
        set: SetAttr,
        caller: Caller,
        step: SetattrStep,
    ) -> Result<Attr> {
        match step {
            SetattrStep::Done(r) => r,
            SetattrStep::Store(pending) => self.setattr_store(ino, pending, caller).await,
            SetattrStep::Full => self.setattr(ino, fh, set, caller).await,
        }
    }

    /// Applies `set` to this server's copy. Ok(Err(pending)) when the change must still reach
    /// the store (`setattr_store`).
    fn setattr_local(
        &self,
        ino: u64,
        set: SetAttr,
        caller: Caller,
    ) -> Result<std::result::Result<Attr, PendingMeta>> {
        let now = now_nanos();
        let (name, expect, meta) = {
            let mut st = self.state();
            let max = self.cfg.max_size;
            let inode = st
                .inodes
                .get_mut(&ino)
                .ok_or_else(|| err!(ENOENT, Debug, "inode {ino} is not known"))?;
            let label = inode
                .name
                .as_ref()
                .map_or_else(|| format!("inode {ino} (unlinked)"), |n| n.to_string());
            let owner = caller.uid == 0 || caller.uid == inode.meta.uid;
            if let Some(mode) = set.mode {
                if !owner {
                    return Err(err!(EPERM, Warn, "{label}: only the owner may chmod"));
                }
                inode.meta.mode = mode & 0o7777;
                inode.meta.ctime = now;
            }
            if set.uid.is_some_and(|u| u != inode.meta.uid) && caller.uid != 0 {
                return Err(err!(EPERM, Warn, "{label}: only root may chown"));
            }
            if set.gid.is_some_and(|g| g != inode.meta.gid) && !owner {
                return Err(err!(EPERM, Warn, "{label}: only the owner may chgrp"));
            }
            if let Some(uid) = set.uid {
                inode.meta.uid = uid;
                inode.meta.ctime = now;
            }
            if let Some(gid) = set.gid {
                inode.meta.gid = gid;
                inode.meta.ctime = now;
            }
            if let Some(t) = set.mtime {
                inode.meta.mtime = match t {
                    SetTime::Now => now,
                    SetTime::At(t) => to_nanos(t),
                };
                inode.meta.ctime = now;
            } else if set.atime.is_some() {
                // atime is not kept (sessions are noatime); setting it still moves ctime.
                inode.meta.ctime = now;
            }
            if let Some(size) = set.size {
                if size > max {
                    return Err(err!(
                        EFBIG,
                        Warn,
                        "{label}: truncate to {size} bytes exceeds max_size={max}"
                    ));
                }
                let data = inode
                    .data
                    .as_mut()
                    .ok_or_else(|| err!(EIO, Error, "{label}: truncate without content"))?;
                if data.len() as u64 != size {
                    Arc::make_mut(data).resize(size as usize, 0);
                    inode.meta.mtime = now;
                    inode.meta.ctime = now;
                    inode.mark_dirty();
                } else if size == 0 && data.is_empty() {
                    // ftruncate(0) of an empty file changes nothing but still moves the times.
                    inode.meta.mtime = now;
                    inode.meta.ctime = now;
                }
            }
            // An open file with changes to send takes the metadata along at flush.
            if inode.is_dirty() {
                return Ok(Ok(self.kernel_attr(ino, inode)));
            }
            let Some(name) = inode.name.clone() else {
                return Ok(Ok(self.kernel_attr(ino, inode)));
            };
            // A touch under the lease (lazy_write's utime) waits for the next renewal or the
            // lease's end: the lifetime and ctime it refreshes are minutes long.
            let times_only =
                set.size.is_none() && set.mode.is_none() && set.uid.is_none() && set.gid.is_none();
            if times_only && self.cfg.batch_touches && inode.leased() && inode.version.is_some() {
                inode.touch_pending = true;
                return Ok(Ok(self.kernel_attr(ino, inode)));
            }
            (name, inode.incarnation, inode.meta)
        };
        Ok(Err(PendingMeta { name, expect, meta }))
    }

    /// Sends a metadata change `setattr_local` made.
    async fn setattr_store(&self, ino: u64, p: PendingMeta, caller: Caller) -> Result<Attr> {
        let PendingMeta { name, expect, meta } = p;
        {
            let token = self.fence_token(ino);
            let fence = token.map(|token| Fence {
                owner: &self.owner,
                token,
            });
            let written = recalling!(
                self,
                &name,
                Some(caller.pid),
                self.store
                    .update_meta(&name, expect, fence, &meta, self.asker())
            )?;
            self.forget_listed(&name);
            let mut st = self.state();
            match written {
                Written::Recalled(_) => {
                    return Err(err!(EIO, Error, "{name}: change kept being recalled"));
                }
                Written::Fenced => {
                    return Err(err!(
                        EIO,
                        Error,
                        "{name}: change refused: this server's lock on the session ran out"
                    ));
                }
                Written::Done(stat) => {
                    if let Some(inode) = st.inodes.get_mut(&ino)
                        && !inode.is_dirty()
                    {
                        inode.touch_pending = false;
                        inode.incarnation = stat.incarnation;
                        if inode.version != stat.version {
                            // The store assigned a version to a foreign session's content.
                            inode.version = stat.version.filter(|_| inode.data.is_none());
                        }
                    }
                }
                Written::Gone => {
                    st.unbind(&name);
                    self.cache().remove(&name);
                    return Err(err!(ENOENT, Debug, "{name}: no such session"));
                }
            }
        }
        let mut st = self.state();
        let inode = st
            .inodes
            .get_mut(&ino)
            .ok_or_else(|| err!(ENOENT, Debug, "{name}: inode was forgotten"))?;
        Ok(self.kernel_attr(ino, inode))
    }

    pub async fn unlink(&self, parent: u64, name: &[u8], pid: u32) -> Result<()> {
        Self::check_parent(parent)?;
        let name = parse_name(name)
            .map_err(|_| err!(ENOENT, Debug, "{}: not a session name", shown(name)))?;
        let removed = self.remove_recalling(&name, pid).await?;
        self.forget_listed(&name);
        let mut st = self.state();
        st.unbind(&name);
        self.cache().remove(&name);
        match removed {
            Removed::Removed => Ok(()),
            Removed::Missing => Err(err!(ENOENT, Debug, "{name}: no such session")),
            Removed::Recalled(_) => Err(err!(EIO, Error, "{name}: delete kept being recalled")),
        }
    }

    /// Deletes `name`, letting another server that holds it under a lease give it up first,
    /// but for no longer than UNLINK_RECALL_BOUND.
    async fn remove_recalling(&self, name: &SessionName, pid: u32) -> Result<Removed> {
        let started = Instant::now();
        let mut waker = None;
        loop {
            let force = started.elapsed() >= UNLINK_RECALL_BOUND;
            let answer = self
                .store
                .remove(name, self.asker(), force)
                .await
                .map_err(|e| Error::store(name, e));
            let after = match answer {
                Ok(Removed::Recalled(after)) => after,
                other => {
                    if other.is_err() && waker.is_some() {
                        self.forget_opener(name).await;
                    }
                    return other;
                }
            };
            if force {
                return Err(err!(EIO, Error, "{name}: delete kept being recalled"));
            }
            let left = UNLINK_RECALL_BOUND.saturating_sub(started.elapsed());
            if let Err(e) = self
                .wait_recall(name, &mut waker, after.min(left), Some(pid))
                .await
            {
                self.forget_opener(name).await;
                return Err(e);
            }
        }
    }

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        if ino != ROOT_INO {
            return Err(err!(ENOTDIR, Debug, "inode {ino} is not a directory"));
        }
        let mut st = self.state();
        let fh = st.fresh_fh();
        st.dirs.insert(
            fh,
            DirHandle {
                cursor: Some(0),
                last_offset: 2,
                ..DirHandle::default()
            },
        );
        Ok(fh)
    }

    pub fn releasedir(&self, fh: u64) {
        self.state().dirs.remove(&fh);
    }

    /// Entries after `offset`, at least one unless the listing ended. The caller passes back
    /// the offset of the last entry it used.
    pub async fn readdir(&self, fh: u64, offset: u64, pid: u32) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        if offset < 1 {
            out.push(DirEntry {
                ino: ROOT_INO,
                offset: 1,
                kind: Kind::Directory,
                name: ".".into(),
            });
        }
        if offset < 2 {
            out.push(DirEntry {
                ino: ROOT_INO,
                offset: 2,
                kind: Kind::Directory,
                name: "..".into(),
            });
        }
        loop {
            let cursor = {
                let mut st = self.state();
                let dir = st
                    .dirs
                    .get_mut(&fh)
                    .ok_or_else(|| err!(EBADF, Error, "directory handle {fh} is not open"))?;
                let first = dir.page.first().map_or(dir.last_offset + 1, |(o, _)| *o);
                if offset + 1 < first && offset >= 2 {
                    // A seek backwards (rare: telldir/seekdir): list again from the start.
                    *dir = DirHandle {
                        cursor: Some(0),
                        last_offset: 2,
                        ..DirHandle::default()
                    };
                } else if offset < 2 && dir.last_offset > 2 && first > 3 {
                    *dir = DirHandle {
                        cursor: Some(0),
                        last_offset: 2,
                        ..DirHandle::default()
                    };
                }
                dir.page.retain(|(o, _)| *o > offset);
                if !dir.page.is_empty() {
                    let page: Vec<(u64, SessionName)> = dir.page.clone();
                    for (o, name) in page {
                        let ino = st
                            .by_name
                            .get(&name)
                            .copied()
                            .unwrap_or_else(|| hash_ino(&name));
                        out.push(DirEntry {
                            ino,
                            offset: o,
                            kind: Kind::File,
                            name: name.as_str().to_string(),
                        });
                    }
                    return Ok(out);
                }
                match dir.cursor {
                    None => return Ok(out),
                    Some(c) => c,
                }
            };
            let (next, names) = self
                .store
                .list(cursor)
                .await
                .map_err(|e| Error::store(&"listing the session directory", e))?;
            // `ls -l` stats every name next: one round trip for the page instead of one each.
            match self.store.stat_many(&names).await {
                Ok(stats) => {
                    let now = std::time::Instant::now();
                    let mut listed = self.listed();
                    if listed.len() + names.len() > LISTED_MAX {
                        listed.clear();
                    }
                    for (name, stat) in names.iter().zip(stats) {
                        if let Some(stat) = stat {
                            listed.insert(name.clone(), (now, pid, stat));
                        }
                    }
                }
                Err(e) => tracing::debug!("stats of a listing page: {e}"),
            }
            let mut st = self.state();
            let dir = st
                .dirs
                .get_mut(&fh)
                .ok_or_else(|| err!(EBADF, Error, "directory handle {fh} is not open"))?;
            for name in names {
                dir.last_offset += 1;
                dir.page.push((dir.last_offset, name));
            }
            dir.cursor = (next != 0).then_some(next);
        }
    }

    fn status_attr(&self, size: u64) -> Attr {
        Attr {
            cache_for: Duration::ZERO,
            ino: STATUS_INO,
            kind: Kind::File,
            size,
            mode: 0o400,
            nlink: 1,
            uid: 0,
            gid: 0,
            mtime: SystemTime::now(),
            ctime: SystemTime::now(),
        }
    }

    /// The text of `.sessfs-status`.
    pub fn status_text(&self) -> String {
        use std::fmt::Write;
        let (inodes, open) = {
            let st = self.state();
            (st.inodes.len(), st.handles.len())
        };
        let (cached, cached_bytes) = {
            let c = self.cache();
            (c.entries(), c.bytes())
        };
        let locks = self.lock_status();
        let leases = self.state().inodes.values().filter(|i| i.leased()).count();
        let c = &self.counters;
        let mut out = String::new();
        let _ = writeln!(out, "server {}", self.owner);
        let _ = writeln!(
            out,
            "counters fuse_requests={} store_round_trips={} opens={} recalls={} recall_waits={} \
             written_back={} read_recalls={}",
            c.fuse_requests.load(Ordering::Relaxed),
            self.store.round_trips(),
            c.opens.load(Ordering::Relaxed),
            c.recalls.load(Ordering::Relaxed),
            c.recall_waits.load(Ordering::Relaxed),
            c.written_back.load(Ordering::Relaxed),
            c.read_recalls.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "leases {leases} (kept {})",
            if self.cfg.leases { "on" } else { "off" }
        );
        let _ = writeln!(
            out,
            "files known {inodes}, open {open}, cached {cached} ({cached_bytes} bytes)"
        );
        let _ = writeln!(out, "locks {}", locks.len());
        for l in &locks {
            let held = l
                .held_for
                .map(|d| format!(" for {:.3}s", d.as_secs_f64()))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} cluster {}{held}, local holders {}, waiting {}",
                l.name,
                l.cluster,
                l.holders,
                l.waiters.len()
            );
            for (pid, waited) in &l.waiters {
                let _ = writeln!(out, "    pid {pid} waiting {:.3}s", waited.as_secs_f64());
            }
        }
        out
    }

    /// Refusals for what a session directory does not hold, each logged by the edge.
    pub fn unsupported(&self, what: &str, name: &[u8]) -> Error {
        let errno = match what {
            "xattr" => libc::ENOTSUP,
            "rename" => libc::EXDEV,
            _ => libc::EPERM,
        };
        Error::new(
            errno,
            error::Level::Warn,
            format!(
                "{}: {what} is not supported in a session directory",
                shown(name)
            ),
        )
    }
}

#[cfg(test)]
mod tests;
