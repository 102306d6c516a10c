//! Running as a mount helper: going to the background only once the mount is live, logging
//! where a daemon's lines belong, and leaving cleanly on SIGTERM or umount.
//!
//! Without `-f`, the command re-executes itself in the foreground mode as a child in its own
//! session and waits on a pipe until the child says the mount is live (or why it is not), so
//! `mount -a` and scripts can use the directory as soon as the command returns, and every
//! error reaches the terminal with a non-zero exit. A tokio runtime cannot survive fork(),
//! hence exec rather than fork. A password written in the URL reaches the child through a
//! second pipe, never its command line.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{Cli, MountFlag, Options, StoreUrl, read_password_file, redact};
use crate::fs::{Fs, FsConfig};
use crate::fuse::FuseFs;
use crate::keys::Keys;
use crate::store::redis::{RedisSettings, RedisStore};
use crate::store::{ForeignDefaults, StoreOptions};

/// Exit codes, as sessfs(8) documents them.
pub mod exit {
    pub const USAGE: u8 = 1;
    pub const STORE: u8 = 2;
    pub const MOUNT: u8 = 3;
    pub const RUNTIME: u8 = 4;
}

/// Why the daemon could not start: its exit code and a one-line message.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: redact(&message.into()),
        }
    }
}

const READY_FD: RawFd = 3;
const SECRET_FD: RawFd = 4;
const READY_ENV: &str = "SESSFS_READY_FD";
const SECRET_ENV: &str = "SESSFS_SECRET_FD";

/// Parent side: starts the foreground daemon and waits for its word.
pub fn spawn_background(url: &StoreUrl) -> Result<(), Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::new(exit::RUNTIME, format!("cannot find own executable: {e}")))?;
    let (ready_r, ready_w) = pipe()?;
    let (secret_r, secret_w) = pipe()?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // The child's command line carries the URL without its password.
    for a in args.iter_mut() {
        if a == url.secret() {
            *a = url.shown().to_string();
        }
    }
    args.push("-f".into());
    let mut cmd = Command::new(exe);
    cmd.args(&args)
        .env(READY_ENV, READY_FD.to_string())
        .env(SECRET_ENV, SECRET_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (setsid, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0
                || libc::dup2(ready_w, READY_FD) < 0
                || libc::dup2(secret_r, SECRET_FD) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Failure::new(exit::RUNTIME, format!("cannot start the daemon: {e}")));
    // SAFETY: these descriptors came from pipe() above and are owned here alone.
    unsafe {
        libc::close(ready_w);
        libc::close(secret_r);
    }
    let mut secret = unsafe { std::fs::File::from_raw_fd(secret_w) };
    let mut ready = unsafe { std::fs::File::from_raw_fd(ready_r) };
    let _child = child?;
    // A write error means the child is gone; its report (or silence) below says why.
    let _ = secret.write_all(url.secret().as_bytes());
    drop(secret);
    let mut word = String::new();
    let _ = ready.read_to_string(&mut word);
    let word = word.trim();
    if word == "OK" {
        return Ok(());
    }
    if let Some(rest) = word.strip_prefix("ERR ") {
        let (code, msg) = rest.split_once(' ').unwrap_or((rest, ""));
        return Err(Failure::new(code.parse().unwrap_or(exit::RUNTIME), msg));
    }
    Err(Failure::new(
        exit::RUNTIME,
        "the daemon exited before the mount was live (see the system log)",
    ))
}

fn pipe() -> Result<(RawFd, RawFd), Failure> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(Failure::new(
            exit::RUNTIME,
            format!("pipe: {}", std::io::Error::last_os_error()),
        ));
    }
    // Move both ends above the numbers the child will use, so dup2 cannot clobber one.
    let mut out = [0 as RawFd; 2];
    for (i, fd) in fds.iter().enumerate() {
        // SAFETY: fd is open; F_DUPFD_CLOEXEC returns a new descriptor or -1.
        let high = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10) };
        unsafe { libc::close(*fd) };
        if high < 0 {
            return Err(Failure::new(
                exit::RUNTIME,
                format!("fcntl: {}", std::io::Error::last_os_error()),
            ));
        }
        out[i] = high;
    }
    Ok((out[0], out[1]))
}

/// Child side: how to tell the waiting parent, if there is one.
pub struct Notify {
    ready: Option<std::fs::File>,
}

impl Notify {
    /// Picks up the pipes the parent left (and the full URL it sent), if started by it.
    pub fn from_env() -> (Notify, Option<String>) {
        let fd_of = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<RawFd>().ok())
        };
        let ready = fd_of(READY_ENV).map(|fd| {
            // SAFETY: the parent passed this descriptor open for us alone.
            unsafe { std::fs::File::from_raw_fd(fd) }
        });
        let secret = fd_of(SECRET_ENV).and_then(|fd| {
            // SAFETY: as above.
            let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
            let mut s = String::new();
            f.read_to_string(&mut s).ok().map(|_| s)
        });
        // SAFETY: no other thread runs yet; the variables must not reach processes we start.
        unsafe {
            std::env::remove_var(READY_ENV);
            std::env::remove_var(SECRET_ENV);
        }
        (Notify { ready }, secret.filter(|s| !s.is_empty()))
    }

    pub fn is_background(&self) -> bool {
        self.ready.is_some()
    }

    pub fn ready(&mut self) {
        if let Some(mut f) = self.ready.take() {
            let _ = f.write_all(b"OK\n");
        }
    }

    pub fn failed(&mut self, f: &Failure) {
        if let Some(mut w) = self.ready.take() {
            let _ = writeln!(w, "ERR {} {}", f.code, f.message);
        }
    }
}

/// A log line sink that removes any password from each line before it leaves the process.
#[derive(Clone)]
enum Sink {
    Stderr,
    File(Arc<std::sync::Mutex<std::fs::File>>),
    Syslog,
}

pub struct LineWriter {
    sink: Sink,
    level: tracing::Level,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = redact(&String::from_utf8_lossy(&self.buf));
        match &self.sink {
            Sink::Stderr => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
            Sink::File(f) => {
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                let _ = f.write_all(line.as_bytes());
            }
            Sink::Syslog => {
                let prio = match self.level {
                    tracing::Level::ERROR => libc::LOG_ERR,
                    tracing::Level::WARN => libc::LOG_WARNING,
                    tracing::Level::INFO => libc::LOG_INFO,
                    _ => libc::LOG_DEBUG,
                };
                let text = line.trim_end().replace('\0', " ");
                if let Ok(c) = std::ffi::CString::new(text) {
                    // SAFETY: "%s" with one valid C string.
                    unsafe { libc::syslog(prio, c"%s".as_ptr(), c.as_ptr()) };
                }
            }
        }
    }
}

pub struct Logs {
    sink: Sink,
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            sink: self.sink.clone(),
            level: tracing::Level::INFO,
            buf: Vec::new(),
        }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        LineWriter {
            sink: self.sink.clone(),
            level: *meta.level(),
            buf: Vec::new(),
        }
    }
}

pub fn init_logging(opts: &Options, background: bool) -> Result<(), Failure> {
    let sink = if let Some(path) = &opts.log_file {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Failure::new(exit::USAGE, format!("log_file {}: {e}", path.display())))?;
        Sink::File(Arc::new(std::sync::Mutex::new(f)))
    } else if background {
        // SAFETY: a static C string identifier, as openlog requires.
        unsafe { libc::openlog(c"sessfs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        Sink::Syslog
    } else {
        Sink::Stderr
    };
    let filter = EnvFilter::new(format!("sessfs={},fuser=warn,redis=warn", opts.log));
    let ansi = matches!(sink, Sink::Stderr) && std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Logs { sink })
        .with_ansi(ansi)
        .with_target(false)
        .try_init()
        .map_err(|e| Failure::new(exit::RUNTIME, format!("logging: {e}")))
}

fn check_mountpoint(cli: &Cli) -> Result<(), Failure> {
    let p = &cli.mountpoint;
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Failure::new(
            exit::MOUNT,
            format!("mount point {}: not a directory", p.display()),
        )),
        Err(e) => Err(Failure::new(
            exit::MOUNT,
            format!("mount point {}: {e}", p.display()),
        )),
    }
}

/// Runs the daemon in this process until SIGTERM, SIGINT or umount.
pub fn run(cli: &Cli, opts: &Options, url: &StoreUrl, notify: &mut Notify) -> Result<(), Failure> {
    check_mountpoint(cli)?;
    let password = match &opts.password_file {
        Some(p) => Some(read_password_file(p).map_err(|e| Failure::new(exit::USAGE, e))?),
        None => None,
    };
    let info = url
        .connection_info(password.as_deref())
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    let keys = Keys::new(&opts.prefix).map_err(|e| Failure::new(exit::USAGE, e))?;
    // One worker: the daemon's tasks only wait on Redis and hold short locks, and every hop
    // between threads wakes a CPU, which costs tens of µs here (fuse-facts.md 12). Measured
    // with scripts/bench: one PHP process 1,206 -> 1,748 requests/s.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("sessfs")
        .build()
        .map_err(|e| Failure::new(exit::RUNTIME, format!("tokio runtime: {e}")))?;
    let store_opts = StoreOptions {
        ttl: opts.ttl,
        foreign: ForeignDefaults {
            mode: 0o600,
            uid: opts.uid,
            gid: opts.gid,
        },
    };
    let settings = RedisSettings {
        timeout: opts.timeout,
        scan_count: 1000,
    };
    let store = rt.block_on(async {
        let store = tokio::time::timeout(
            opts.timeout,
            RedisStore::connect(info, keys, store_opts, settings),
        )
        .await
        .map_err(|_| format!("no answer within {:?}", opts.timeout))?
        .map_err(|e| e.to_string())?;
        tokio::time::timeout(opts.timeout, crate::store::Store::ping(&store))
            .await
            .map_err(|_| format!("no answer within {:?}", opts.timeout))?
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(store)
    });
    let store = store.map_err(|e| {
        Failure::new(
            exit::STORE,
            format!("cannot use the store at {}: {e}", url.shown()),
        )
    })?;
    let fs = Arc::new(Fs::new(
        store,
        FsConfig {
            max_size: opts.max_size,
            cache_size: opts.cache_size,
            dir_mode: opts.dir_mode,
            dir_uid: opts.uid,
            dir_gid: opts.gid,
            lock_lease: opts.lock_lease,
            leases: opts.leases,
            write_back: opts.write_back,
            batch_touches: opts.ttl >= Duration::from_secs(60),
        },
    ));
    rt.block_on(fs.start()).map_err(|e| {
        Failure::new(
            exit::STORE,
            format!("cannot use the store at {}: {e}", url.shown()),
        )
    })?;
    let mut config = fuser::Config::default();
    config.mount_options = mount_options(opts, url);
    config.acl = if opts.allow_other {
        fuser::SessionACL::All
    } else if opts.allow_root {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    let session = fuser::spawn_mount(
        FuseFs::new(fs.clone(), rt.handle().clone()),
        &cli.mountpoint,
        &config,
    )
    .map_err(|e| {
        Failure::new(
            exit::MOUNT,
            format!("cannot mount on {}: {e}", cli.mountpoint.display()),
        )
    })?;
    fs.set_kernel(Arc::new(crate::fuse::Kernel::new(session.notifier())));
    tracing::info!(
        store = url.shown(),
        mountpoint = %cli.mountpoint.display(),
        prefix = opts.prefix,
        ttl = opts.ttl.as_secs(),
        leases = opts.leases,
        write_back = opts.write_back,
        "mounted"
    );
    notify.ready();
    let reason = rt.block_on(wait_for_end(&session));
    let ended = if reason == "unmounted" {
        session.join()
    } else {
        tracing::info!("{reason}: unmounting");
        session.umount_and_join()
    };
    if let Err(e) = ended {
        tracing::warn!("unmount: {e}");
    }
    // Locks kept for requests that will not come to this server any more.
    rt.block_on(fs.release_all());
    rt.shutdown_timeout(Duration::from_secs(2));
    tracing::info!("stopped");
    Ok(())
}

fn mount_options(opts: &Options, url: &StoreUrl) -> Vec<fuser::MountOption> {
    use fuser::MountOption as M;
    let mut mo = vec![
        M::FSName(url.shown().to_string()),
        M::Subtype("sessfs".into()),
        M::NoSuid,
        M::NoDev,
        M::NoExec,
    ];
    if opts.default_permissions {
        mo.push(M::DefaultPermissions);
    }
    for f in &opts.flags {
        let m = match f {
            MountFlag::Ro => M::RO,
            MountFlag::NoAtime => M::NoAtime,
            // Always set above: a session directory holds no programs or devices.
            MountFlag::NoSuid | MountFlag::NoDev | MountFlag::NoExec => continue,
        };
        mo.push(m);
    }
    mo
}

/// Waits for a signal to stop, or for the kernel to end the session (umount).
async fn wait_for_end(session: &fuser::BackgroundSession) -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return "no signal handlers";
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM",
            _ = int.recv() => return "SIGINT",
            _ = hup.recv() => tracing::info!("SIGHUP ignored: options are read at mount time"),
            _ = tick.tick() => {
                if session.guard.is_finished() {
                    return "unmounted";
                }
            }
        }
    }
}
