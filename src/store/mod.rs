//! The session store: what sessfs asks of Redis, as a trait.
//!
//! `fs` is generic over [`Store`] so the whole PHP contract can be tested against
//! [`memory::MemoryStore`] without a server; [`redis::RedisStore`] is the real thing, and later
//! Sentinel and Cluster stores implement the same trait. Every operation is one round trip and
//! atomic on the server (a Lua script in Redis), so no reader ever sees a session half written.
//!
//! Versions: every content write stores a fresh random `version`, and every creation a fresh
//! random `incarnation`. A cached copy is current when its version is still the stored one; a
//! write names the incarnation it opened, so a file deleted (and maybe recreated) by another
//! server is never resurrected by a late write, as on a local filesystem after unlink.
//! Writes by phpredis leave sessfs' metadata behind; such a session is "foreign" (detected
//! because the data key's expiry no longer matches the one sessfs recorded) and is always sent
//! whole, never validated from a cache.
//!
//! Leases: a server holding a session's cluster lock exclusively may serve it from memory
//! without asking (fs, lock). Its writes reach the store at every flush, so another server may
//! always read what the store has; but every operation that changes the session outside that
//! lock (a write or touch without a fence, a delete) is refused with `Recalled` while such a
//! lease stands: the store asks the holder to give the session up and queues the asker, who is
//! sent `Event::Released` once it has. Check and change are one atomic step, so no lease can
//! be taken between them.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::keys::SessionName;

/// Nanoseconds since the Unix epoch.
pub type Nanos = i64;

pub fn now_nanos() -> Nanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as Nanos)
        .unwrap_or(0)
}

/// What `stat` shows of a session besides its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Nanos,
    pub ctime: Nanos,
}

/// A session's state in the store, without its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub meta: Meta,
    /// None for a foreign session (last written by another handler): it never validates.
    pub version: Option<u64>,
    /// None for a session sessfs has never written.
    pub incarnation: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub stat: Stat,
    pub data: Arc<Vec<u8>>,
}

/// The answer to "is my copy of version V still current?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    Missing,
    /// The copy is current; here is the rest of the state.
    Same(Stat),
    Changed(Record),
    /// Another server holds the session in write-back mode and may have changes on their way:
    /// it was asked to send them and let go; ask again after its release (or this long).
    Recalled(Duration),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Created(Stat),
    /// The name was taken (by another server, or a moment ago): open that session instead.
    Exists(Record),
    /// The name was taken and the caller asked for O_EXCL.
    ExistsExclusive,
    /// The name was taken by a server holding it in write-back mode: as `Loaded::Recalled`.
    Recalled(Duration),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Done(Stat),
    /// The session was deleted, expired, or deleted and created anew since it was opened: the
    /// write is not applied, as a write to an unlinked file does not come back under its name.
    Gone,
    /// The write was made under a cluster lock this server no longer holds (its lease ran
    /// out): another server may have taken the lock and written since, so it is refused.
    Fenced,
    /// Another server holds the session under a lease and was asked to let go: try again on
    /// `Event::Released`, or after the duration (when its lease would run out).
    Recalled(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Removed,
    Missing,
    /// As `Written::Recalled`.
    Recalled(Duration),
}

/// The answer to a lock renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    /// Extended; `wanted`: other servers are queued for the session.
    Held { wanted: bool },
    /// The claim had already run out (or Redis lost it).
    Lost,
}

/// The answers that may say another server's lease stands in the way.
pub trait Recallable {
    fn recalled(&self) -> Option<Duration>;
}

impl Recallable for Written {
    fn recalled(&self) -> Option<Duration> {
        match self {
            Written::Recalled(d) => Some(*d),
            _ => None,
        }
    }
}

impl Recallable for Loaded {
    fn recalled(&self) -> Option<Duration> {
        match self {
            Loaded::Recalled(d) => Some(*d),
            _ => None,
        }
    }
}

impl Recallable for Created {
    fn recalled(&self) -> Option<Duration> {
        match self {
            Created::Recalled(d) => Some(*d),
            _ => None,
        }
    }
}

impl Recallable for Removed {
    fn recalled(&self) -> Option<Duration> {
        match self {
            Removed::Recalled(d) => Some(*d),
            _ => None,
        }
    }
}

/// Who asks, for the operations that recall another server's lease: that server's name in the
/// lock records (its own lease is no obstacle) and its lock lease, which bounds how long its
/// place in the queue lasts if it never comes back.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    pub owner: &'a str,
    pub lease: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// One server's claim on a session's cluster lock. A server holds at most one claim per
/// session; `token` names this holding, so a write or release under an older holding of the
/// same server is told apart.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// This server (mount) in the lock's records, and the channel it hears events on.
    pub owner: &'a str,
    pub token: u64,
    pub mode: LockMode,
    /// How long the claim lives unless renewed.
    pub lease: Duration,
    /// The holder answers close(2) before its writes land (`write=back`): another server's
    /// load or create must recall it first, or it could read what those writes replace.
    pub write_back: bool,
}

/// What a write carries when made under a cluster lock.
#[derive(Debug, Clone, Copy)]
pub struct Fence<'a> {
    pub owner: &'a str,
    pub token: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// Held; the content check of `load` came in the same round trip. `contended`: other
    /// servers are queued for the session, so it should be handed over after use.
    Granted { loaded: Loaded, contended: bool },
    /// Another server holds or waits first. This server is queued (unless it only tried) and
    /// is sent `Event::Released` when its turn may have come; `retry_in` is when the holder's
    /// lease runs out, should that holder be dead and never release.
    Denied { retry_in: Duration },
}

/// Pushed by the store to the server named in a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A holder let go of the session's lock: waiters try again.
    Released(SessionName),
    /// Another server waits for a lock this server holds.
    Wanted(SessionName),
    /// Another server waits to read a session this server holds in write-back mode: send
    /// what was closed, then `flushed_for_readers`.
    Flush(SessionName),
    /// Events may have been lost (reconnection): every waiter tries again.
    Resync,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("store unreachable: {0}")]
    Unavailable(String),
    #[error("unexpected data at key {key}: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("store refused the request: {0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Defaults for what a foreign session (no sessfs metadata) shows.
#[derive(Debug, Clone, Copy)]
pub struct ForeignDefaults {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Options every store implementation needs.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Session lifetime: the TTL set by every write and touch.
    pub ttl: Duration,
    pub foreign: ForeignDefaults,
}

/// The operations `fs` needs, each one round trip.
pub trait Store: Send + Sync + 'static {
    /// Size and metadata, without content.
    fn stat(&self, name: &SessionName) -> impl Future<Output = Result<Option<Stat>>> + Send;

    /// Sizes and metadata of many sessions in one round trip (a listing page); None for a
    /// session gone or unreadable (a lookup of it then asks again and reports why).
    fn stat_many(
        &self,
        names: &[SessionName],
    ) -> impl Future<Output = Result<Vec<Option<Stat>>>> + Send;

    /// The content unless `known` is still the stored version. `Recalled` while another
    /// server holds the session in write-back mode (see `Claim::write_back`). `retry`: asked
    /// again after this request's own `Recalled` wait, so the holder's answer since counts.
    fn load(
        &self,
        name: &SessionName,
        known: Option<u64>,
        asker: Asker<'_>,
        retry: bool,
    ) -> impl Future<Output = Result<Loaded>> + Send;

    /// Creates an empty session, or reports the one already there (`Recalled` as `load`).
    fn create(
        &self,
        name: &SessionName,
        meta: &Meta,
        exclusive: bool,
        asker: Asker<'_>,
        retry: bool,
    ) -> impl Future<Output = Result<Created>> + Send;

    /// Replaces the content and metadata and refreshes the TTL, if the session is still the
    /// incarnation `expect` (None: whatever is there, for sessions opened as foreign) and, when
    /// `fence` is given, that claim still holds the session's lock.
    fn write(
        &self,
        name: &SessionName,
        expect: Option<u64>,
        fence: Option<Fence<'_>>,
        data: &[u8],
        meta: &Meta,
        asker: Asker<'_>,
    ) -> impl Future<Output = Result<Written>> + Send;

    /// Replaces the metadata (times, mode, owner) and refreshes the TTL; content unchanged.
    fn update_meta(
        &self,
        name: &SessionName,
        expect: Option<u64>,
        fence: Option<Fence<'_>>,
        meta: &Meta,
        asker: Asker<'_>,
    ) -> impl Future<Output = Result<Written>> + Send;

    /// Takes (or converts) this server's claim on the session's lock, and checks the content
    /// like `load` in the same round trip. With `queue` false a denied claim is not queued.
    fn lock_acquire(
        &self,
        name: &SessionName,
        claim: &Claim<'_>,
        queue: bool,
        known: Option<u64>,
    ) -> impl Future<Output = Result<Acquired>> + Send;

    /// Extends the claim's lease, and says whether other servers wait for the session (so a
    /// holder learns it even if their pushed request was lost).
    fn lock_renew(
        &self,
        name: &SessionName,
        claim: &Claim<'_>,
    ) -> impl Future<Output = Result<Renewed>> + Send;

    /// Drops this server's claim with `token` and its place in the queue, and wakes the
    /// servers queued for the session.
    fn lock_release(
        &self,
        name: &SessionName,
        owner: &str,
        token: u64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Starts delivering the events addressed to `owner`.
    fn events(
        &self,
        owner: &str,
    ) -> impl Future<Output = Result<tokio::sync::mpsc::UnboundedReceiver<Event>>> + Send;

    /// Deletes the session. Refused (`Recalled`) while another server holds it under a lease,
    /// unless `force`: then deleted anyway (the holder was asked before; its writes under the
    /// lease then find the session gone).
    fn remove(
        &self,
        name: &SessionName,
        asker: Asker<'_>,
        force: bool,
    ) -> impl Future<Output = Result<Removed>> + Send;

    /// The holder `owner` has sent every close it acknowledged: the servers now waiting to
    /// read the session (its openers) may load it, and are woken.
    fn flushed_for_readers(
        &self,
        name: &SessionName,
        owner: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Drops the asker's place among the servers waiting for a lease holder to let go (a wait
    /// given up), and wakes the servers queued for the lock.
    fn forget_opener(
        &self,
        name: &SessionName,
        owner: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// One page of the listing. Cursor 0 starts; a returned cursor of 0 means the end.
    /// A name may be listed twice (Redis SCAN's guarantee); each live session at least once.
    fn list(&self, cursor: u64) -> impl Future<Output = Result<(u64, Vec<SessionName>)>> + Send;

    /// Checks that the store answers (at mount time).
    fn ping(&self) -> impl Future<Output = Result<()>> + Send;

    /// Round trips made so far (`sessfs status`, the benchmark).
    fn round_trips(&self) -> u64;
}

/// A fresh random 64-bit token for versions and incarnations. Never 0, so 0 can mean "none" on
/// the wire.
pub fn fresh_token() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    fn seed() -> u64 {
        let mut buf = [0u8; 8];
        // SAFETY: buf is a valid, writable 8-byte buffer for the duration of the call.
        let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        let random = if n == 8 { u64::from_ne_bytes(buf) } else { 0 };
        random ^ (now_nanos() as u64) ^ u64::from(std::process::id()).rotate_left(32)
    }
    STATE.with(|s| {
        // splitmix64: a full-period generator; seeded randomly per thread.
        let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let t = z ^ (z >> 31);
        if t == 0 { 1 } else { t }
    })
}

/// The stored form of a session's state as both stores produce it: the data key's length and
/// absolute expiry, and the metadata hash's fields (v, i, mode, uid, gid, mt, ct, x, n), each
/// possibly absent. `x` and `n` are the expiry and length sessfs last wrote: a phpredis write
/// changes the expiry (unless it lands in the same millisecond) or the length (unless equal),
/// so only a same-millisecond, same-length foreign write goes unnoticed. Decoding lives here once so both stores treat foreign sessions alike.
#[derive(Debug, Clone, Default)]
pub struct RawStat {
    pub size: u64,
    /// Absolute expiry of the data key in ms, -1 when it has none.
    pub expire_at_ms: i64,
    pub fields: [Option<Vec<u8>>; 9],
}

pub const META_FIELDS: [&str; 9] = ["v", "i", "mode", "uid", "gid", "mt", "ct", "x", "n"];

impl RawStat {
    pub fn decode(&self, key: &str, opts: &StoreOptions) -> Result<Stat> {
        let num = |idx: usize| -> Result<Option<i64>> {
            match &self.fields[idx] {
                None => Ok(None),
                Some(raw) => std::str::from_utf8(raw)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .map(Some)
                    .ok_or_else(|| StoreError::Corrupt {
                        key: key.to_string(),
                        detail: format!(
                            "metadata field {} is not a number: {:?}",
                            META_FIELDS[idx],
                            String::from_utf8_lossy(raw)
                        ),
                    }),
            }
        };
        let recorded_expiry = num(7)?;
        let recorded_len = num(8)?;
        let foreign = recorded_expiry != Some(self.expire_at_ms)
            || recorded_len != Some(self.size as i64)
            || self.expire_at_ms < 0;
        // A foreign write refreshed the TTL at write time: that is its mtime.
        let ttl_ms = opts.ttl.as_millis() as i64;
        let derived_mtime = if self.expire_at_ms > 0 {
            (self.expire_at_ms - ttl_ms).saturating_mul(1_000_000)
        } else {
            now_nanos()
        };
        let as_u32 = |v: Option<i64>, default: u32| -> u32 {
            v.and_then(|n| u32::try_from(n).ok()).unwrap_or(default)
        };
        let meta = Meta {
            mode: as_u32(num(2)?, opts.foreign.mode) & 0o7777,
            uid: as_u32(num(3)?, opts.foreign.uid),
            gid: as_u32(num(4)?, opts.foreign.gid),
            mtime: if foreign {
                derived_mtime
            } else {
                num(5)?.unwrap_or(derived_mtime)
            },
            ctime: if foreign {
                derived_mtime
            } else {
                num(6)?.unwrap_or(derived_mtime)
            },
        };
        let token = |v: Option<i64>| v.map(|n| n as u64).filter(|&n| n != 0);
        Ok(Stat {
            size: self.size,
            meta,
            version: if foreign { None } else { token(num(0)?) },
            incarnation: token(num(1)?),
        })
    }
}

/// Renders a token as Redis stores it (a decimal i64, so Lua's numbers never see it).
pub fn token_arg(t: Option<u64>) -> String {
    match t {
        Some(t) => (t as i64).to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> StoreOptions {
        StoreOptions {
            ttl: Duration::from_secs(100),
            foreign: ForeignDefaults {
                mode: 0o600,
                uid: 33,
                gid: 33,
            },
        }
    }

    fn field(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn own_metadata_is_used_when_expiry_matches() {
        let raw = RawStat {
            size: 3,
            expire_at_ms: 5_000_000,
            fields: [
                field("7"),
                field("9"),
                field("416"),
                field("0"),
                field("0"),
                field("11"),
                field("12"),
                field("5000000"),
                field("3"),
            ],
        };
        let st = raw.decode("k", &opts()).unwrap();
        assert_eq!(st.version, Some(7));
        assert_eq!(st.incarnation, Some(9));
        assert_eq!(st.meta.mode, 0o640);
        assert_eq!(st.meta.uid, 0);
        assert_eq!((st.meta.mtime, st.meta.ctime), (11, 12));
    }

    #[test]
    fn a_foreign_write_never_validates() {
        let mut raw = RawStat {
            size: 3,
            expire_at_ms: 6_000_000,
            fields: Default::default(),
        };
        raw.fields[0] = field("7");
        raw.fields[7] = field("5000000");
        raw.fields[8] = field("3");
        let st = raw.decode("k", &opts()).unwrap();
        assert_eq!(st.version, None);
        raw.expire_at_ms = 5_000_000;
        raw.size = 4;
        assert_eq!(
            raw.decode("k", &opts()).unwrap().version,
            None,
            "length differs"
        );
        assert_eq!(st.meta.mtime, (6_000_000 - 100_000) * 1_000_000);
        assert_eq!(st.meta.uid, 33);
    }

    #[test]
    fn garbage_metadata_is_an_error_naming_the_key() {
        let mut raw = RawStat::default();
        raw.fields[3] = field("root");
        let err = raw.decode("the:key", &opts()).unwrap_err();
        assert!(err.to_string().contains("the:key"), "{err}");
    }

    #[test]
    fn tokens_are_never_zero_and_differ() {
        let a = fresh_token();
        let b = fresh_token();
        assert_ne!(a, 0);
        assert_ne!(a, b);
    }
}
