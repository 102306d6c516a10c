//! Links fuser's callbacks to `fs`. No decision lives here: each callback converts its
//! arguments, calls `fs`, and replies; a failure is logged once, with the operation, the
//! request id and the cause `fs` gave, and answered with the errno `fs` chose.
//!
//! Calls that may wait for the store run as tasks on the tokio runtime with the reply moved
//! into them, so a slow store never holds up the fuser loop; calls served from this server's
//! memory (read, write, fstat) answer inline, because handing them to another thread costs
//! more than they do (fuse-facts.md 12).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags as FuseOpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::Instrument;

use crate::fs::error::Level;
use crate::fs::locking::LockStep;
use crate::fs::{
    Attr, Caller, Error, Fs, Kind, OpenFlags, PageCache, SetAttr, SetTime, SetattrStep,
};
use crate::store::Store;

/// Entries and attributes are cached by the kernel only as long as `fs` says
/// (`Attr::cache_for`: while this server holds the session's lease); new files' entries
/// (create, mknod) not at all. At the lease's end `fs` invalidates the attributes. Entries
/// are left to expire: an entry only maps the name to the inode, and every open and uncached
/// stat of that inode still comes here and is checked against the store, so a stale one is
/// harmless; invalidating one would take the directory's lock, which an unlink waiting for
/// another server holds (fuse-facts.md 14).
const ENTRY_TTL: Duration = Duration::ZERO;

/// `fs::KernelCache` on fuser's notifier: drops an inode's cached attributes (offset -1: no
/// page range, since files are opened with direct I/O and have no cached pages).
pub struct Kernel(fuser::Notifier);

impl Kernel {
    pub fn new(notifier: fuser::Notifier) -> Kernel {
        Kernel(notifier)
    }
}

impl crate::fs::KernelCache for Kernel {
    fn invalidate(&self, ino: u64) -> std::io::Result<()> {
        // ENOENT (the kernel knows no such inode) goes back as it is: `fs` decides whether a
        // reply on its way could still make one.
        self.0.inval_inode(INodeNo(ino), -1, 0)
    }

    fn invalidate_pages(&self, ino: u64) -> std::io::Result<()> {
        // Offset 0, length 0: the whole file's pages, and its attributes.
        self.0.inval_inode(INodeNo(ino), 0, 0)
    }

    fn store_pages(&self, ino: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.store(INodeNo(ino), 0, data)
    }
}

pub struct FuseFs<S: Store> {
    fs: Arc<Fs<S>>,
    rt: tokio::runtime::Handle,
}

impl<S: Store> FuseFs<S> {
    pub fn new(fs: Arc<Fs<S>>, rt: tokio::runtime::Handle) -> FuseFs<S> {
        FuseFs { fs, rt }
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let kind = match a.kind {
        Kind::Directory => FileType::Directory,
        Kind::File => FileType::RegularFile,
    };
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind,
        perm: a.mode as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Logs a failed request once, at the level its cause deserves.
fn report(op: &str, req: u64, e: &Error) -> Errno {
    match e.level {
        Level::Debug => tracing::debug!(op, req, "{e}"),
        Level::Warn => tracing::warn!(op, req, "{e}"),
        Level::Error => tracing::error!(op, req, "{e}"),
    }
    Errno::from_i32(e.errno)
}

/// How an open is answered: the kernel keeps its cached pages only where `fs` vouches for them
/// (under a lease, unchanged but through the kernel); otherwise it drops them at the open, so it
/// never serves a page another server has since replaced.
fn open_flags(cache: PageCache) -> FopenFlags {
    match cache {
        PageCache::Direct => FopenFlags::FOPEN_DIRECT_IO,
        PageCache::Fresh => FopenFlags::empty(),
        PageCache::Keep => FopenFlags::FOPEN_KEEP_CACHE,
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
    }
}

impl<S: Store> FuseFs<S> {
    fn spawn<F>(&self, op: &'static str, req: &Request, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let span = tracing::debug_span!("fuse", op, req = req.unique().0);
        self.rt.spawn(fut.instrument(span));
    }
}

impl<S: Store> Filesystem for FuseFs<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // O_TRUNC arrives with open instead of as a separate truncate: one store write at close
        // instead of two.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC) {
            tracing::debug!("kernel lacks {missing:?}; O_TRUNC becomes a truncate");
        }
        // flock comes to the daemon, which holds it across the cluster. POSIX (fcntl) locks
        // are not negotiated: the kernel keeps them, local to this server.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_FLOCK_LOCKS) {
            tracing::error!(
                "kernel lacks {missing:?}: flock stays local to this server, not cluster-wide"
            );
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.fs.count_request();
        let id = req.unique().0;
        match self.fs.lookup_now(parent.0, name.as_bytes(), req.pid()) {
            Some(Ok(a)) => {
                return reply.entry_with_ttls(
                    &a.cache_for,
                    &a.cache_for,
                    &file_attr(&a),
                    Generation(0),
                );
            }
            Some(Err(e)) => return reply.error(report("lookup", id, &e)),
            None => {}
        }
        let fs = self.fs.clone();
        let name = name.as_bytes().to_vec();
        let pid = req.pid();
        self.spawn("lookup", req, async move {
            match fs.lookup(parent.0, &name, pid).await {
                Ok(a) => {
                    reply.entry_with_ttls(&a.cache_for, &a.cache_for, &file_attr(&a), Generation(0))
                }
                Err(e) => reply.error(report("lookup", id, &e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.count_request();
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.fs.count_request();
        let id = req.unique().0;
        if let Some(fh) = fh {
            match self.fs.getattr_open(fh.0) {
                Ok(a) => reply.attr(&a.cache_for, &file_attr(&a)),
                Err(e) => reply.error(report("getattr", id, &e)),
            }
            return;
        }
        match self.fs.getattr_now(ino.0, req.pid()) {
            Some(Ok(a)) => return reply.attr(&a.cache_for, &file_attr(&a)),
            Some(Err(e)) => return reply.error(report("getattr", id, &e)),
            None => {}
        }
        let fs = self.fs.clone();
        let pid = req.pid();
        self.spawn("getattr", req, async move {
            match fs.getattr(ino.0, pid).await {
                Ok(a) => reply.attr(&a.cache_for, &file_attr(&a)),
                Err(e) => reply.error(report("getattr", id, &e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.fs.count_request();
        let set = SetAttr {
            size,
            mode,
            uid,
            gid,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        let who = caller(req);
        let id = req.unique().0;
        let fh = fh.map(|f| f.0);
        let step = match self.fs.setattr_begin(ino.0, fh, set, who) {
            SetattrStep::Done(Ok(a)) => return reply.attr(&a.cache_for, &file_attr(&a)),
            SetattrStep::Done(Err(e)) => return reply.error(report("setattr", id, &e)),
            step => step,
        };
        let fs = self.fs.clone();
        self.spawn("setattr", req, async move {
            match fs.setattr_finish(ino.0, fh, set, who, step).await {
                Ok(a) => reply.attr(&a.cache_for, &file_attr(&a)),
                Err(e) => reply.error(report("setattr", id, &e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.fs.count_request();
        let id = req.unique().0;
        if mode & libc::S_IFMT != libc::S_IFREG {
            let e = self
                .fs
                .unsupported("a device node, fifo or socket", name.as_bytes());
            reply.error(report("mknod", id, &e));
            return;
        }
        let fs = self.fs.clone();
        let name = name.as_bytes().to_vec();
        let who = caller(req);
        self.spawn("mknod", req, async move {
            let flags = OpenFlags {
                create: true,
                exclusive: true,
                ..OpenFlags::default()
            };
            match fs.create(parent.0, &name, mode & !umask, flags, who).await {
                Ok((a, fh)) => {
                    let released = fs.release(fh).await;
                    match released {
                        Ok(()) => reply.entry_with_ttls(
                            &a.cache_for,
                            &ENTRY_TTL,
                            &file_attr(&a),
                            Generation(0),
                        ),
                        Err(e) => reply.error(report("mknod", id, &e)),
                    }
                }
                Err(e) => reply.error(report("mknod", id, &e)),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.fs.count_request();
        let e = self.fs.unsupported("a subdirectory", name.as_bytes());
        reply.error(report("mkdir", req.unique().0, &e));
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.fs.count_request();
        let fs = self.fs.clone();
        let pid = req.pid();
        let name = name.as_bytes().to_vec();
        let id = req.unique().0;
        self.spawn("unlink", req, async move {
            match fs.unlink(parent.0, &name, pid).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(report("unlink", id, &e)),
            }
        });
    }

    fn rmdir(&self, req: &Request, _parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.fs.count_request();
        let e = self.fs.unsupported("a subdirectory", name.as_bytes());
        reply.error(report("rmdir", req.unique().0, &e));
    }

    fn symlink(
        &self,
        req: &Request,
        _parent: INodeNo,
        link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        self.fs.count_request();
        let e = self.fs.unsupported("a symbolic link", link_name.as_bytes());
        reply.error(report("symlink", req.unique().0, &e));
    }

    fn rename(
        &self,
        req: &Request,
        _parent: INodeNo,
        name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.count_request();
        // EXDEV makes mv(1) fall back to copy and unlink, which this directory supports.
        let e = self.fs.unsupported("rename", name.as_bytes());
        reply.error(report("rename", req.unique().0, &e));
    }

    fn link(
        &self,
        req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.fs.count_request();
        let e = self.fs.unsupported("a hard link", newname.as_bytes());
        reply.error(report("link", req.unique().0, &e));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: FuseOpenFlags, reply: ReplyOpen) {
        self.fs.count_request();
        let id = req.unique().0;
        let flags = OpenFlags::from_raw(flags.0);
        match self.fs.open_now(ino.0, flags) {
            Some(Ok(fh)) => {
                return reply.opened(FileHandle(fh), open_flags(self.fs.page_cache(fh)));
            }
            Some(Err(e)) => return reply.error(report("open", id, &e)),
            None => {}
        }
        let fs = self.fs.clone();
        let who = caller(req);
        self.spawn("open", req, async move {
            match fs.open(ino.0, flags, who).await {
                Ok(fh) => reply.opened(FileHandle(fh), open_flags(fs.page_cache(fh))),
                Err(e) => reply.error(report("open", id, &e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.fs.count_request();
        match self.fs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(report("read", req.unique().0, &e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.fs.count_request();
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(report("write", req.unique().0, &e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.fs.count_request();
        let id = req.unique().0;
        let answered = {
            // A write-back is handed to a task.
            let _rt = self.rt.enter();
            self.fs.flush_now(fh.0)
        };
        match answered {
            Some(Ok(())) => return reply.ok(),
            Some(Err(e)) => return reply.error(report("flush", id, &e)),
            None => {}
        }
        let fs = self.fs.clone();
        let pid = req.pid();
        self.spawn("flush", req, async move {
            match fs.flush(fh.0, pid).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(report("flush", id, &e)),
            }
        });
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.count_request();
        let id = req.unique().0;
        let answered = {
            // Letting a lock go may start tasks.
            let _rt = self.rt.enter();
            self.fs.release_now(fh.0)
        };
        match answered {
            Some(Ok(())) => return reply.ok(),
            Some(Err(e)) => return reply.error(report("release", id, &e)),
            None => {}
        }
        let fs = self.fs.clone();
        self.spawn("release", req, async move {
            match fs.release(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(report("release", id, &e)),
            }
        });
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.count_request();
        let fs = self.fs.clone();
        let id = req.unique().0;
        let pid = req.pid();
        self.spawn("fsync", req, async move {
            match fs.fsync(fh.0, pid).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(report("fsync", id, &e)),
            }
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: FuseOpenFlags, reply: ReplyOpen) {
        self.fs.count_request();
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(report("opendir", req.unique().0, &e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.fs.count_request();
        let fs = self.fs.clone();
        let id = req.unique().0;
        let pid = req.pid();
        self.spawn("readdir", req, async move {
            match fs.readdir(fh.0, offset, pid).await {
                Ok(entries) => {
                    for e in entries {
                        let kind = match e.kind {
                            Kind::Directory => FileType::Directory,
                            Kind::File => FileType::RegularFile,
                        };
                        if reply.add(INodeNo(e.ino), e.offset, kind, &e.name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(report("readdir", id, &e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: FuseOpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.count_request();
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.fs.count_request();
        // Redis has no fixed capacity to report; df shows an empty filesystem.
        reply.statfs(0, 0, 0, 0, 0, 4096, crate::keys::NAME_MAX as u32, 4096);
    }

    fn setxattr(
        &self,
        req: &Request,
        _ino: INodeNo,
        name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.fs.count_request();
        let e = self.fs.unsupported("xattr", name.as_bytes());
        reply.error(report("setxattr", req.unique().0, &e));
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        self.fs.count_request();
        // ENOSYS makes the kernel stop asking (it answers EOPNOTSUPP itself from then on):
        // `ls -l` asks for ACLs and SELinux labels on every file, two requests per file saved.
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        self.fs.count_request();
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn removexattr(&self, req: &Request, _ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.fs.count_request();
        let e = self.fs.unsupported("xattr", name.as_bytes());
        reply.error(report("removexattr", req.unique().0, &e));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        self.fs.count_request();
        // Permission checks are the kernel's (default_permissions) or not made at all.
        reply.ok();
    }

    fn setlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.count_request();
        // Keyed by the daemon's file handle, never by the kernel's reusable lock owner; the
        // waiting process is the request's pid, whose signals the daemon watches.
        let id = req.unique().0;
        let pid = req.pid();
        let step = {
            // Granting or letting go may start lock tasks.
            let _rt = self.rt.enter();
            self.fs.setlk_begin(fh.0, typ, sleep, pid)
        };
        let step = match step {
            LockStep::Done(Ok(())) => return reply.ok(),
            LockStep::Done(Err(e)) => return reply.error(report("setlk", id, &e)),
            step => step,
        };
        let fs = self.fs.clone();
        self.spawn("setlk", req, async move {
            match fs.setlk_finish(step).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(report("setlk", id, &e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.fs.count_request();
        let fs = self.fs.clone();
        let name = name.as_bytes().to_vec();
        let who = caller(req);
        let id = req.unique().0;
        let flags = OpenFlags::from_raw(flags);
        self.spawn("create", req, async move {
            match fs.create(parent.0, &name, mode & !umask, flags, who).await {
                Ok((a, fh)) => reply.created(
                    &ENTRY_TTL,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    open_flags(fs.page_cache(fh)),
                ),
                Err(e) => reply.error(report("create", id, &e)),
            }
        });
    }
}
