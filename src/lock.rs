//! flock arbitration on this server, and what it asks of the cluster lock.
//!
//! The kernel hands every flock to the daemon (FUSE_FLOCK_LOCKS), so this module does what the
//! kernel's flock code would for a local file: holders and waiters per file, keyed by the
//! daemon's own file handle (never the kernel's reusable lock owner, fuse-facts.md 3), with
//! flock's conversion rule (the old lock goes first, even if the new one then fails). On top,
//! a server may grant a lock only while it holds the session's cluster lock in Redis in a mode
//! that covers it; [`FileLocks`] says when that lock must be taken, and when it may be let go.
//!
//! This module decides; it does no I/O. `fs::locking` carries the decisions out. Invariant: a
//! waiter leaves the queue exactly once, either granted or cancelled (EINTR), under the one
//! mutex that guards this state, so a process answered EINTR is never granted afterwards.

use std::collections::VecDeque;
use std::time::Instant;

use tokio::sync::oneshot;

pub use crate::store::LockMode as Mode;

/// What a waiting request learns.
pub type Answer = Result<(), i32>;

#[derive(Debug)]
pub struct Waiter {
    pub fh: u64,
    pub mode: Mode,
    pub pid: u32,
    pub since: Instant,
    tx: oneshot::Sender<Answer>,
}

/// The cluster lock as this server holds it for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    None,
    /// An acquisition loop runs for this mode.
    Acquiring(Mode),
    Held {
        token: u64,
        mode: Mode,
        since: Instant,
    },
    /// The lease ran out while held: writes under it are refused by the store; new local
    /// requests wait for a fresh acquisition once the holders are gone.
    Lost {
        token: u64,
    },
    /// Being let go (pending writes are sent first): grants nothing until it is gone.
    Releasing {
        token: u64,
    },
}

/// What the caller must do after a change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Todo {
    /// Start an acquisition loop for this mode.
    pub acquire: Option<Mode>,
    /// Let the cluster lock with this token go (after sending pending writes).
    pub release: Option<u64>,
}

/// The outcome of a lock request.
#[derive(Debug)]
pub enum Request {
    Granted,
    WouldBlock,
    /// Parked: the answer comes through the receiver.
    Wait(oneshot::Receiver<Answer>),
    /// Non-blocking, and only the cluster can tell: try once without queueing. With the token
    /// of this server's own (shared) holding, the try converts it in place.
    TryCluster(Mode, Option<u64>),
    /// Non-blocking, and this server is letting its own holding go: ask again once that
    /// release has landed (nobody else may hold the session at all).
    AfterRelease,
}

#[derive(Debug)]
pub struct FileLocks {
    holders: Vec<(u64, Mode)>,
    waiters: VecDeque<Waiter>,
    pub cluster: Cluster,
    /// Another server waits for this session: hand it over at the next chance instead of
    /// granting local waiters first.
    pub wanted_elsewhere: bool,
    /// When the last local holder or waiter left. A cluster lock nobody here uses is kept (a
    /// lease: the next request here needs no round trip to lock) until another server asks
    /// for it or it stays unused for a renewal period.
    pub unused_since: Option<Instant>,
    /// Whether a cluster lock nobody here uses is kept at all (the `leases` option).
    keep: bool,
}

impl Default for FileLocks {
    fn default() -> FileLocks {
        FileLocks::new(true)
    }
}

fn conflicts(a: Mode, b: Mode) -> bool {
    a == Mode::Exclusive || b == Mode::Exclusive
}

fn covers(held: Mode, wanted: Mode) -> bool {
    held == Mode::Exclusive || wanted == Mode::Shared
}

impl FileLocks {
    pub fn new(keep: bool) -> FileLocks {
        FileLocks {
            holders: Vec::new(),
            waiters: VecDeque::new(),
            cluster: Cluster::None,
            wanted_elsewhere: false,
            unused_since: None,
            keep,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty() && self.cluster == Cluster::None
    }

    pub fn holders(&self) -> &[(u64, Mode)] {
        &self.holders
    }

    pub fn waiters(&self) -> impl Iterator<Item = &Waiter> {
        self.waiters.iter()
    }

    pub fn has_waiters(&self) -> bool {
        !self.waiters.is_empty()
    }

    fn cluster_mode(&self) -> Option<Mode> {
        match self.cluster {
            Cluster::Held { mode, .. } => Some(mode),
            _ => None,
        }
    }

    fn local_conflict(&self, fh: u64, mode: Mode) -> bool {
        self.holders
            .iter()
            .any(|&(h, m)| h != fh && conflicts(m, mode))
    }

    /// flock(fd, LOCK_SH/LOCK_EX[|LOCK_NB]) from handle `fh`.
    pub fn request(&mut self, fh: u64, mode: Mode, blocking: bool, pid: u32) -> (Request, Todo) {
        if self.holders.contains(&(fh, mode)) {
            return (Request::Granted, Todo::default());
        }
        // flock conversion: the old lock is removed first, whatever happens next.
        self.holders.retain(|&(h, _)| h != fh);
        let cluster_ok = self.cluster_mode().is_some_and(|held| covers(held, mode));
        let queue_ahead = self.waiters.iter().any(|w| conflicts(w.mode, mode));
        if cluster_ok && !self.local_conflict(fh, mode) && !queue_ahead && !self.wanted_elsewhere {
            self.holders.push((fh, mode));
            return (Request::Granted, Todo::default());
        }
        if !blocking {
            if self.local_conflict(fh, mode) || queue_ahead || self.wanted_elsewhere {
                return (Request::WouldBlock, self.pump());
            }
            // Held here in a mode that does not cover the request (shared, wanted
            // exclusive), with no other local holder: converted in place, under its token, so
            // Redis never loses the holding. Being taken or let go: nothing to try yet.
            let request = match self.cluster {
                Cluster::None => Request::TryCluster(mode, None),
                Cluster::Held { token, .. } => Request::TryCluster(mode, Some(token)),
                Cluster::Releasing { .. } => Request::AfterRelease,
                _ => Request::WouldBlock,
            };
            return (request, self.pump());
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push_back(Waiter {
            fh,
            mode,
            pid,
            since: Instant::now(),
            tx,
        });
        (Request::Wait(rx), self.pump())
    }

    /// A non-blocking request's one try at the cluster succeeded. Ok says whether the holding
    /// is new (it then needs renewing) or this server's own, converted.
    pub fn try_granted(&mut self, fh: u64, token: u64, mode: Mode) -> Result<(Todo, bool), Todo> {
        if let Cluster::Held {
            token: t, since, ..
        } = self.cluster
            && t == token
        {
            // Redis now holds this server's claim in `mode`.
            self.cluster = Cluster::Held { token, mode, since };
            if self.local_conflict(fh, mode) {
                return Err(Todo::default());
            }
            self.holders.push((fh, mode));
            return Ok((self.pump(), false));
        }
        if self.cluster != Cluster::None || self.local_conflict(fh, mode) {
            // Things changed while the try was out: give the lock back, report EWOULDBLOCK.
            return Err(Todo {
                release: Some(token),
                ..Todo::default()
            });
        }
        self.cluster = Cluster::Held {
            token,
            mode,
            since: Instant::now(),
        };
        self.holders.push((fh, mode));
        Ok((self.pump(), true))
    }

    /// flock(fd, LOCK_UN), or the release of the file.
    pub fn unlock(&mut self, fh: u64) -> Todo {
        self.holders.retain(|&(h, _)| h != fh);
        self.pump()
    }

    /// Removes a waiter that is being answered EINTR. False if it was no longer waiting
    /// (granted a moment ago): then the grant stands.
    pub fn cancel(&mut self, fh: u64, pid: u32) -> (bool, Todo) {
        let before = self.waiters.len();
        let mut kept = VecDeque::with_capacity(before);
        let mut cancelled = None;
        for w in self.waiters.drain(..) {
            if cancelled.is_none() && w.fh == fh && w.pid == pid {
                cancelled = Some(w);
            } else {
                kept.push_back(w);
            }
        }
        self.waiters = kept;
        match cancelled {
            Some(w) => {
                let _ = w.tx.send(Err(libc::EINTR));
                (true, self.pump())
            }
            None => (false, Todo::default()),
        }
    }

    /// Waiters whose processes have a signal to take: answered EINTR by the caller.
    pub fn waiting_pids(&self) -> Vec<(u64, u32)> {
        self.waiters.iter().map(|w| (w.fh, w.pid)).collect()
    }

    pub fn cluster_granted(&mut self, token: u64, mode: Mode) -> Todo {
        self.cluster = Cluster::Held {
            token,
            mode,
            since: Instant::now(),
        };
        // A server that asked while this grant was on its way waits behind it: serve the
        // waiters the lock was taken for first, then hand it over.
        let wanted = std::mem::take(&mut self.wanted_elsewhere);
        let mut todo = self.pump();
        if wanted && matches!(self.cluster, Cluster::Held { .. }) {
            self.wanted_elsewhere = true;
            let more = self.pump();
            todo.release = todo.release.or(more.release);
            todo.acquire = todo.acquire.or(more.acquire);
        }
        todo
    }

    /// The acquisition loop gave up because nobody waits any more.
    pub fn acquisition_ended(&mut self) -> Todo {
        if matches!(self.cluster, Cluster::Acquiring(_)) {
            self.cluster = Cluster::None;
        }
        self.pump()
    }

    pub fn cluster_lost(&mut self, token: u64) -> Todo {
        if let Cluster::Held { token: t, .. } = self.cluster
            && t == token
        {
            self.cluster = Cluster::Lost { token };
        }
        self.pump()
    }

    /// The release of `token` was sent (or given up on).
    pub fn cluster_released(&mut self, token: u64) -> Todo {
        let current = match self.cluster {
            Cluster::Held { token: t, .. }
            | Cluster::Lost { token: t }
            | Cluster::Releasing { token: t } => Some(t),
            _ => None,
        };
        if current == Some(token) {
            self.cluster = Cluster::None;
        }
        self.pump()
    }

    /// Another server asked for the session.
    pub fn wanted(&mut self) -> Todo {
        // Also while acquiring: the request may have been queued behind this grant.
        if matches!(self.cluster, Cluster::Held { .. } | Cluster::Acquiring(_)) {
            self.wanted_elsewhere = true;
        }
        self.pump()
    }

    /// Grants what can be granted and says what the cluster lock needs next.
    fn pump(&mut self) -> Todo {
        let mut todo = Todo::default();
        // Grant waiters in order while the cluster lock covers them (not while another
        // server waits: it goes first).
        if !self.wanted_elsewhere {
            while let Some(w) = self.waiters.front() {
                let covered = self.cluster_mode().is_some_and(|held| covers(held, w.mode));
                if !covered || self.local_conflict(w.fh, w.mode) {
                    break;
                }
                let Some(w) = self.waiters.pop_front() else {
                    break;
                };
                // A closed receiver means the request task is gone: nobody to grant.
                if w.tx.send(Ok(())).is_ok() {
                    self.holders.push((w.fh, w.mode));
                }
            }
        }
        if !self.holders.is_empty() || !self.waiters.is_empty() {
            self.unused_since = None;
        }
        if !self.holders.is_empty() {
            return todo;
        }
        // No local holder: the cluster lock is needed only for waiters; one exclusive lock
        // serves them all, so one acquisition does.
        let needed = (!self.waiters.is_empty()).then(|| {
            if self.waiters.iter().any(|w| w.mode == Mode::Exclusive) {
                Mode::Exclusive
            } else {
                Mode::Shared
            }
        });
        match (self.cluster, needed) {
            (Cluster::Held { token, mode, .. }, Some(n))
                if (!covers(mode, n) || self.wanted_elsewhere) =>
            {
                todo.release = Some(token);
            }
            (Cluster::Held { token, .. }, None) => {
                if self.wanted_elsewhere || !self.keep {
                    todo.release = Some(token);
                } else if self.unused_since.is_none() {
                    self.unused_since = Some(Instant::now());
                }
            }
            (Cluster::Lost { token }, _) => {
                todo.release = Some(token);
            }
            (Cluster::None, Some(n)) => {
                self.cluster = Cluster::Acquiring(n);
                todo.acquire = Some(n);
            }
            _ => {}
        }
        if let Some(token) = todo.release {
            self.cluster = Cluster::Releasing { token };
            self.wanted_elsewhere = false;
        }
        todo
    }

    /// Lets a kept cluster lock go once nobody here used it for `idle` (called at renewal).
    pub fn release_if_unused(&mut self, idle: std::time::Duration) -> Todo {
        match (self.cluster, self.unused_since) {
            (Cluster::Held { token, .. }, Some(since))
                if since.elapsed() >= idle
                    && self.holders.is_empty()
                    && self.waiters.is_empty() =>
            {
                self.cluster = Cluster::Releasing { token };
                self.unused_since = None;
                Todo {
                    release: Some(token),
                    ..Todo::default()
                }
            }
            _ => Todo::default(),
        }
    }

    /// Lets the cluster lock go now (unmount), whatever holds it here.
    pub fn release_now(&mut self) -> Todo {
        match self.cluster {
            Cluster::Held { token, .. } | Cluster::Lost { token } => {
                self.cluster = Cluster::Releasing { token };
                Todo {
                    release: Some(token),
                    ..Todo::default()
                }
            }
            _ => Todo::default(),
        }
    }

    /// The token under which this server's writes to the file are made, if any.
    pub fn fence_token(&self) -> Option<u64> {
        match self.cluster {
            Cluster::Held { token, .. }
            | Cluster::Lost { token }
            | Cluster::Releasing { token } => Some(token),
            _ => None,
        }
    }
}

/// Whether the process (thread) `pid` has a signal it will act on, so that its waiting flock
/// must be answered EINTR now (fuse-facts.md 6): a pending, unblocked signal for the thread,
/// or for the process when it is single-threaded. A process that is gone counts as signalled.
pub fn signal_pending(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let mut sig_pnd = 0u64;
    let mut shd_pnd = 0u64;
    let mut sig_blk = 0u64;
    let mut threads = 1u64;
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let hex = || u64::from_str_radix(value, 16).unwrap_or(0);
        match key {
            "SigPnd" => sig_pnd = hex(),
            "ShdPnd" => shd_pnd = hex(),
            "SigBlk" => sig_blk = hex(),
            "Threads" => threads = value.parse().unwrap_or(1),
            _ => {}
        }
    }
    let pending = sig_pnd | if threads == 1 { shd_pnd } else { 0 };
    pending & !sig_blk != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const EX: Mode = Mode::Exclusive;
    const SH: Mode = Mode::Shared;

    /// This server holds the cluster lock with token 7 (as after a grant with holders).
    fn held(l: &mut FileLocks, mode: Mode) {
        l.cluster = Cluster::Held {
            token: 7,
            mode,
            since: Instant::now(),
        };
    }

    #[test]
    fn the_first_lock_takes_the_cluster_lock_then_is_granted() {
        let mut l = FileLocks::default();
        let (r, todo) = l.request(1, EX, true, 100);
        let Request::Wait(mut rx) = r else {
            panic!("{r:?}")
        };
        assert_eq!(todo.acquire, Some(EX));
        assert!(rx.try_recv().is_err());
        l.cluster_granted(7, EX);
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        // Unlocking the last holder keeps the cluster lock as a lease: the next request here
        // is granted without the store...
        assert_eq!(l.unlock(1), Todo::default());
        assert!(matches!(l.request(2, EX, true, 2).0, Request::Granted));
        l.unlock(2);
        // ... until another server asks for it.
        assert_eq!(l.wanted().release, Some(7));
    }

    #[test]
    fn with_leases_off_the_last_unlock_lets_the_cluster_lock_go() {
        let mut l = FileLocks::new(false);
        held(&mut l, EX);
        assert!(matches!(l.request(1, EX, true, 1).0, Request::Granted));
        assert_eq!(l.unlock(1).release, Some(7));
    }

    #[test]
    fn lock_nb_while_this_server_lets_the_session_go_asks_again_after_the_release() {
        let mut l = FileLocks::new(false);
        held(&mut l, SH);
        assert!(matches!(l.request(1, SH, true, 1).0, Request::Granted));
        assert_eq!(l.unlock(1).release, Some(7));
        // Not EWOULDBLOCK: nobody else may hold the session; the answer waits for the release.
        assert!(matches!(
            l.request(2, EX, false, 1).0,
            Request::AfterRelease
        ));
    }

    #[test]
    fn local_waiters_queue_behind_the_holder_and_get_it_in_order() {
        let mut l = FileLocks::default();
        held(&mut l, EX);
        assert!(matches!(l.request(1, EX, true, 1).0, Request::Granted));
        let Request::Wait(mut r2) = l.request(2, EX, true, 2).0 else {
            panic!()
        };
        let Request::Wait(mut r3) = l.request(3, EX, true, 3).0 else {
            panic!()
        };
        assert_eq!(l.unlock(1), Todo::default());
        assert_eq!(r2.try_recv(), Ok(Ok(())));
        assert!(r3.try_recv().is_err());
        l.unlock(2);
        assert_eq!(r3.try_recv(), Ok(Ok(())));
    }

    #[test]
    fn shared_locks_share_and_exclude_exclusive_ones() {
        let mut l = FileLocks::default();
        held(&mut l, EX);
        assert!(matches!(l.request(1, SH, true, 1).0, Request::Granted));
        assert!(matches!(l.request(2, SH, true, 2).0, Request::Granted));
        assert!(matches!(l.request(3, EX, false, 3).0, Request::WouldBlock));
        let Request::Wait(mut r) = l.request(3, EX, true, 3).0 else {
            panic!()
        };
        // A later shared request does not jump the queued exclusive one.
        assert!(matches!(l.request(4, SH, false, 4).0, Request::WouldBlock));
        l.unlock(1);
        assert!(r.try_recv().is_err());
        l.unlock(2);
        assert_eq!(r.try_recv(), Ok(Ok(())));
    }

    #[test]
    fn conversion_drops_the_old_lock_even_when_the_new_one_fails() {
        let mut l = FileLocks::default();
        held(&mut l, EX);
        assert!(matches!(l.request(1, SH, true, 1).0, Request::Granted));
        assert!(matches!(l.request(2, SH, true, 2).0, Request::Granted));
        // 1 upgrades without waiting: fails, and its shared lock is gone.
        assert!(matches!(l.request(1, EX, false, 1).0, Request::WouldBlock));
        assert_eq!(l.holders(), &[(2, SH)]);
    }

    #[test]
    fn a_cancelled_waiter_is_never_granted() {
        let mut l = FileLocks::default();
        held(&mut l, EX);
        assert!(matches!(l.request(1, EX, true, 1).0, Request::Granted));
        let Request::Wait(mut r) = l.request(2, EX, true, 2).0 else {
            panic!()
        };
        let (removed, _) = l.cancel(2, 2);
        assert!(removed);
        assert_eq!(r.try_recv(), Ok(Err(libc::EINTR)));
        // The release the kernel sends for the never-granted lock is harmless.
        assert_eq!(l.unlock(2), Todo::default());
        assert_eq!(l.unlock(1), Todo::default());
        assert!(!l.cancel(2, 2).0);
        // Unused for a renewal period, the kept lock goes.
        assert_eq!(
            l.release_if_unused(std::time::Duration::ZERO).release,
            Some(7)
        );
    }

    #[test]
    fn shared_cluster_lock_is_released_before_an_exclusive_one_is_taken() {
        let mut l = FileLocks::default();
        held(&mut l, SH);
        assert!(matches!(l.request(1, SH, true, 1).0, Request::Granted));
        let (r, todo) = l.request(2, EX, true, 2);
        assert!(matches!(r, Request::Wait(_)));
        assert_eq!(todo, Todo::default(), "waits for the local reader first");
        let todo = l.unlock(1);
        assert_eq!(todo.release, Some(7));
        let todo = l.cluster_released(7);
        assert_eq!(todo.acquire, Some(EX));
    }

    #[test]
    fn another_server_waiting_goes_before_local_waiters() {
        let mut l = FileLocks::default();
        held(&mut l, EX);
        assert!(matches!(l.request(1, EX, true, 1).0, Request::Granted));
        let Request::Wait(mut r) = l.request(2, EX, true, 2).0 else {
            panic!()
        };
        l.wanted();
        let todo = l.unlock(1);
        assert_eq!(todo.release, Some(7), "handed over, not granted locally");
        assert!(r.try_recv().is_err());
        let todo = l.cluster_released(7);
        assert_eq!(
            todo.acquire,
            Some(EX),
            "queues again behind the other server"
        );
    }

    #[test]
    fn a_request_for_the_lock_during_acquisition_is_honoured_after_one_grant() {
        let mut l = FileLocks::default();
        let (r, todo) = l.request(1, EX, true, 1);
        let Request::Wait(mut rx) = r else { panic!() };
        assert_eq!(todo.acquire, Some(EX));
        assert_eq!(l.wanted(), Todo::default());
        assert_eq!(l.cluster_granted(7, EX), Todo::default());
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        assert_eq!(l.unlock(1).release, Some(7), "handed over, not kept");
    }

    #[test]
    fn a_lost_lease_is_let_go_and_taken_again_for_new_waiters() {
        let mut l = FileLocks::default();
        held(&mut l, EX);
        assert!(matches!(l.request(1, EX, true, 1).0, Request::Granted));
        assert_eq!(l.cluster_lost(7), Todo::default());
        let Request::Wait(_r) = l.request(2, EX, true, 2).0 else {
            panic!()
        };
        let todo = l.unlock(1);
        assert_eq!(todo.release, Some(7));
        assert_eq!(l.cluster_released(7).acquire, Some(EX));
    }

    #[test]
    fn a_non_blocking_request_tries_the_cluster_once() {
        let mut l = FileLocks::default();
        let (r, _) = l.request(1, EX, false, 1);
        assert!(matches!(r, Request::TryCluster(EX, None)));
        assert!(matches!(l.try_granted(1, 9, EX), Ok((_, true))));
        assert_eq!(l.holders(), &[(1, EX)]);
    }

    #[test]
    fn a_non_blocking_upgrade_of_a_shared_holding_converts_it_in_place() {
        let mut l = FileLocks::default();
        held(&mut l, SH);
        assert!(matches!(l.request(1, SH, true, 1).0, Request::Granted));
        // Another local reader: EWOULDBLOCK, and the shared holding stays.
        assert!(matches!(l.request(2, SH, true, 2).0, Request::Granted));
        assert!(matches!(l.request(1, EX, false, 1).0, Request::WouldBlock));
        l.unlock(2);
        // Alone now: tried under the holding's own token, never a second claim.
        let (r, todo) = l.request(1, EX, false, 1);
        assert!(matches!(r, Request::TryCluster(EX, Some(7))), "{r:?}");
        assert_eq!(todo.release, None);
        assert!(matches!(l.try_granted(1, 7, EX), Ok((_, false))));
        assert!(matches!(
            l.cluster,
            Cluster::Held {
                token: 7,
                mode: EX,
                ..
            }
        ));
        assert_eq!(l.holders(), &[(1, EX)]);
    }

    #[test]
    fn signals_of_this_process_are_read_from_proc() {
        assert!(!signal_pending(std::process::id()));
        assert!(
            signal_pending(u32::MAX),
            "a process that is gone counts as signalled"
        );
    }
}
