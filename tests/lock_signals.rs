//! Acceptance tests of signals reaching processes that wait for a session lock held on
//! another server (fuse-facts.md 5-7): a waiter can be killed, a signal with an SA_RESTART
//! handler keeps it waiting until it really gets the lock, and php-fpm's
//! request_terminate_timeout ends a worker stuck behind a held session. Real redis-server,
//! two real sessfs mounts of it, real flock(1), php and php-fpm.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A process this test started. Dropping it kills it (by its pid) if it still runs, so a
/// failing assertion leaves nothing behind. Its output is collected once it has exited.
struct Proc {
    what: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
}

impl Proc {
    fn new(what: impl Into<String>, child: Child) -> Proc {
        Proc {
            what: what.into(),
            child: Some(child),
            status: None,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    fn signal(&self, sig: i32) {
        if self.status.is_none() && self.pid() > 0 {
            // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
            unsafe { libc::kill(self.pid(), sig) };
        }
    }

    /// Its exit status, if it has exited (reaps it).
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(c) = self.child.as_mut()
            && let Ok(Some(s)) = c.try_wait()
        {
            self.status = Some(s);
        }
        self.status
    }

    /// Waits at most `limit` for it to exit.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// stdout and stderr, once it has exited.
    fn output(&mut self) -> (String, String) {
        assert!(self.exited().is_some(), "{} still runs", self.what);
        let mut out = String::new();
        let mut err = String::new();
        if let Some(c) = self.child.as_mut() {
            if let Some(mut o) = c.stdout.take() {
                let _ = o.read_to_string(&mut out);
            }
            if let Some(mut e) = c.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
        }
        (out, err)
    }

    /// The system call it is blocked in, from /proc/<pid>/syscall.
    fn in_syscall(&self) -> Option<i64> {
        let s = fs::read_to_string(format!("/proc/{}/syscall", self.pid())).ok()?;
        s.split(' ').next()?.trim().parse().ok()
    }

    fn blocked_in_flock(&self) -> bool {
        self.in_syscall() == Some(libc::SYS_flock)
    }

    /// Waits until it sits in flock(2), i.e. waits for a lock; fails if it exits first.
    fn wait_blocked_in_flock(&mut self, limit: Duration) {
        let start = Instant::now();
        while !self.blocked_in_flock() {
            if let Some(s) = self.exited() {
                let (out, err) = self.output();
                panic!(
                    "{} exited ({s}) instead of waiting for the lock\nstdout: {out}\nstderr: {err}",
                    self.what
                );
            }
            assert!(
                start.elapsed() < limit,
                "{} did not block in flock(2) within {limit:?}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        self.signal(libc::SIGKILL);
        // Bounded: a process stuck in a FUSE request dies only once the mount goes away.
        let _ = self.wait_exit(Duration::from_secs(5));
    }
}

/// A process that takes an exclusive flock on `path` and then holds it for `secs` seconds:
/// `flock -F` locks and then becomes `sleep` (no fork), so it is one process whose death
/// lets the lock go and leaves nothing running.
fn hold(path: &Path, secs: &str) -> Proc {
    require("flock", "util-linux");
    let child = Command::new("flock")
        .arg("-F")
        .arg(path)
        .args(["sleep", secs])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the flock holder");
    Proc::new(format!("the holder of {}", path.display()), child)
}

/// Waits until `holder` holds its lock: it has become `sleep` (flock -F execs only once it
/// has the lock) and, seen from another mount, `flock -n` fails. Returns when it held.
fn wait_held(holder: &mut Proc, seen_from: &Path) -> Instant {
    let start = Instant::now();
    let comm = format!("/proc/{}/comm", holder.pid());
    loop {
        if let Some(s) = holder.exited() {
            let (_, err) = holder.output();
            panic!("{} exited ({s}) before holding: {err}", holder.what);
        }
        if fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{} did not get the free lock within 5 s (still in syscall {:?})",
            holder.what,
            holder.in_syscall()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let held_at = Instant::now();
    let out = Command::new("flock")
        .arg("-n")
        .arg(seen_from)
        .args(["-c", "true"])
        .output()
        .expect("flock -n");
    assert_eq!(
        out.status.code(),
        Some(1),
        "flock -n {} on the other mount should fail (locked) while {} holds it: {}",
        seen_from.display(),
        holder.what,
        String::from_utf8_lossy(&out.stderr)
    );
    held_at
}

/// Starts php (CLI) with the files handler on `save_path`, as `common::php_with` does,
/// without waiting for it.
fn spawn_php(what: &str, save_path: &Path, code: &str) -> Proc {
    require("php", "php-cli");
    let mut child = Command::new("php")
        .args(["-d", "session.save_handler=files"])
        .arg("-d")
        .arg(format!("session.save_path={}", save_path.display()))
        .args([
            "-d",
            "session.use_cookies=0",
            "-d",
            "session.cache_limiter=",
            "-d",
            "session.gc_probability=0",
            "-d",
            "display_errors=stderr",
            "-d",
            "error_reporting=-1",
            "--",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start php");
    let mut stdin = child.stdin.take().expect("php stdin");
    stdin
        .write_all(format!("<?php\n{code}\n").as_bytes())
        .expect("php stdin");
    drop(stdin);
    Proc::new(what, child)
}

fn log_tail(m: &Mount) -> String {
    let log = m.log_text();
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!(
        "last lines of {}:\n{}",
        m.log.display(),
        lines[from..].join("\n")
    )
}

/// Starts a PHP waiter for `sess_<id>` on `m`, checks it waits for the held lock for
/// ~300 ms, sends `sig` and checks it is gone within 1 s, killed by that signal.
fn waiter_dies_of(m: &Mount, id: &str, sig: i32, name: &str) {
    let mut php = spawn_php(
        &format!("php waiting for sess_{id} ({name} case)"),
        &m.dir,
        &format!("session_id('{id}'); session_start(); echo 'got';"),
    );
    php.wait_blocked_in_flock(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        php.exited().is_none() && php.blocked_in_flock(),
        "php should still wait for the held lock of sess_{id} after 300 ms"
    );
    let sent = Instant::now();
    php.signal(sig);
    let status = php.wait_exit(Duration::from_secs(1));
    let took = sent.elapsed();
    assert!(
        status.is_some(),
        "php waiting for a lock held on another server was not gone 1 s after {name} \
         (still in syscall {:?}); fuse-facts.md 5-6\n{}",
        php.in_syscall(),
        log_tail(m)
    );
    let status = status.unwrap();
    let (out, err) = php.output();
    assert_eq!(
        status.signal(),
        Some(sig),
        "php should have died of {name}, it ended {status} after {took:?}\nstdout: {out}\nstderr: {err}"
    );
    assert!(
        !out.contains("got"),
        "the killed php got the session while another server held it: {out}"
    );
}

#[test]
fn a_php_process_waiting_for_a_held_session_is_killable() {
    let redis = Redis::start();
    let a = Mount::new(&redis.url(), "");
    let b = Mount::new(&redis.url(), "");
    let mut holder = hold(&a.path("sess_held1"), "30");
    wait_held(&mut holder, &b.path("sess_held1"));

    waiter_dies_of(&b, "held1", libc::SIGKILL, "SIGKILL");
    waiter_dies_of(&b, "held1", libc::SIGTERM, "SIGTERM");

    // The queue is not left stuck by the two waiters that went away: the next waiter gets
    // the session as soon as the holder lets go.
    let mut php = spawn_php(
        "the third php waiting for sess_held1",
        &b.dir,
        "session_id('held1'); session_start(); $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1; \
         echo 'got ', $_SESSION['n'];",
    );
    php.wait_blocked_in_flock(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        php.exited().is_none(),
        "the third php got sess_held1 while mount A still held it"
    );
    let released = Instant::now();
    holder.signal(libc::SIGKILL);
    assert!(
        holder.wait_exit(Duration::from_secs(2)).is_some(),
        "the holder did not die"
    );
    let status = php.wait_exit(Duration::from_secs(2));
    assert!(
        status.is_some(),
        "the next waiter did not get sess_held1 within 2 s of the holder's death \
         (still in syscall {:?})\nmount B {}\nmount A {}",
        php.in_syscall(),
        log_tail(&b),
        log_tail(&a)
    );
    let took = released.elapsed();
    let (out, err) = php.output();
    assert!(
        status.unwrap().success() && err.trim().is_empty() && out == "got 1",
        "the next waiter should get the session (took {took:?}): {}\nstdout: {out}\nstderr: {err}",
        status.unwrap()
    );
    // And the session is free again for anybody, on either mount.
    let again = php_ok(
        &a.dir,
        "session_id('held1'); session_start(); echo $_SESSION['n'];",
    );
    assert_eq!(again, "1", "mount A should read what the third php wrote");
}

fn require_pcntl() {
    require("php", "php-cli");
    let out = Command::new("php").arg("-m").output().expect("php -m");
    let modules = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        modules.lines().any(|l| l.trim() == "pcntl"),
        "php has no pcntl extension (php -m does not list it): this test needs \
         pcntl_signal() to install an SA_RESTART handler; install a php-cli built with pcntl \
         (Debian's php8.2-cli has it)"
    );
}

#[test]
fn an_sa_restart_signal_keeps_the_waiter_waiting_and_it_gets_the_lock() {
    require_pcntl();
    let redis = Redis::start();
    let a = Mount::new(&redis.url(), "");
    let b = Mount::new(&redis.url(), "");
    let mut holder = hold(&a.path("sess_restart1"), "1.5");
    let held_at = wait_held(&mut holder, &b.path("sess_restart1"));

    // errno is read right after flock() through FFI when PHP has it (PHP itself does not
    // report flock's errno); it is reset first so a stale value is not reported.
    let code = format!(
        r#"
        $n = 0;
        pcntl_signal(SIGUSR1, function () use (&$n) {{ $n++; }}, true); // SA_RESTART
        $ffi = extension_loaded('ffi') ? FFI::cdef('int *__errno_location(void);') : null;
        $f = fopen('{path}', 'c');
        if ($ffi) {{ $p = $ffi->__errno_location(); $p[0] = 0; }}
        $t = microtime(true);
        $r = flock($f, LOCK_EX);
        $waited = microtime(true) - $t;
        $e = 'n/a';
        if ($ffi) {{ $p = $ffi->__errno_location(); $e = $p[0]; }}
        pcntl_signal_dispatch();
        printf("locked %s errno=%s waited=%.3f handled=%d\n", var_export($r, true), $e, $waited, $n);
        "#,
        path = b.path("sess_restart1").display()
    );
    let mut php = spawn_php("php flocking sess_restart1 on mount B", &b.dir, &code);
    php.wait_blocked_in_flock(Duration::from_secs(5));

    for i in 1..=2 {
        std::thread::sleep(Duration::from_millis(200));
        // Back in flock(2) after the previous signal: it was restarted, not failed.
        php.wait_blocked_in_flock(Duration::from_secs(1));
        assert!(
            holder.exited().is_none(),
            "the holder let go ({:?} after it held) before SIGUSR1 #{i} was sent: the \
             machine is too slow for this test's timing",
            held_at.elapsed()
        );
        php.signal(libc::SIGUSR1);
    }

    let status = php.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some(),
        "php did not get sess_restart1 within 5 s (the holder held it for 1.5 s; still in \
         syscall {:?})\n{}",
        php.in_syscall(),
        log_tail(&b)
    );
    let status = status.unwrap();
    let (out, err) = php.output();
    assert!(
        status.success() && err.trim().is_empty(),
        "php failed ({status})\nstdout: {out}\nstderr: {err}"
    );
    assert!(
        holder.wait_exit(Duration::from_millis(500)).is_some(),
        "php got the lock while the holder on mount A still ran: two holders\nstdout: {out}"
    );
    let line = out.trim();
    assert!(
        line.starts_with("locked true "),
        "flock(LOCK_EX) interrupted by SIGUSR1 with an SA_RESTART handler must be restarted \
         and end with the lock, never fail (errno 512 is ERESTARTSYS leaking out, fuse-facts.md \
         6-7): {line}\n{}",
        log_tail(&b)
    );
    assert!(
        !line.contains("errno=512"),
        "errno 512 leaked to user space: {line}"
    );
    let field = |k: &str| -> String {
        line.split(' ')
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        field("handled="),
        "2",
        "both SIGUSR1 should have reached php's handler while it waited: {line}"
    );
    let waited: f64 = field("waited=").parse().expect("waited=");
    assert!(
        waited > 0.5,
        "php held the lock after {waited} s although mount A held it for 1.5 s: {line}"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// php-fpm started by this test. Dropping it stops it with SIGTERM to the master's pid and,
/// should the master not be gone within 5 s, SIGKILL to the master and its workers by pid.
struct Fpm {
    master: Proc,
    dir: tempfile::TempDir,
    port: u16,
}

impl Fpm {
    fn start(save_path: &Path) -> Fpm {
        require("php-fpm8.2", "php8.2-fpm");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "[global]\n\
             pid = {d}/fpm.pid\n\
             error_log = {d}/fpm.log\n\
             log_level = notice\n\
             daemonize = no\n\
             process_control_timeout = 2s\n\
             \n\
             [t]\n\
             user = root\n\
             group = root\n\
             listen = 127.0.0.1:{port}\n\
             pm = static\n\
             pm.max_children = 2\n\
             request_terminate_timeout = 2s\n\
             catch_workers_output = yes\n\
             php_admin_value[session.save_handler] = files\n\
             php_admin_value[session.save_path] = {save}\n\
             php_admin_value[session.use_cookies] = 0\n\
             php_admin_value[session.gc_probability] = 0\n\
             php_admin_value[error_log] = {d}/php.log\n\
             php_admin_flag[log_errors] = on\n",
            save = save_path.display()
        );
        fs::write(dir.path().join("fpm.conf"), conf).expect("fpm.conf");
        fs::write(
            dir.path().join("s.php"),
            "<?php session_id('fpm1'); session_start(); echo 'got';\n",
        )
        .expect("s.php");
        let stderr = fs::File::create(dir.path().join("fpm.stderr")).expect("fpm.stderr");
        let child = Command::new("php-fpm8.2")
            .arg("-R")
            .arg("-y")
            .arg(dir.path().join("fpm.conf"))
            .arg("-F")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start php-fpm8.2");
        let mut fpm = Fpm {
            master: Proc::new("php-fpm8.2", child),
            dir,
            port,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(s) = fpm.master.exited() {
                panic!("php-fpm8.2 exited ({s}) at start\n{}", fpm.logs());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "php-fpm8.2 did not listen on port {port} within 10 s\n{}",
                fpm.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        fpm
    }

    fn script(&self) -> PathBuf {
        self.dir.path().join("s.php")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("fpm.log")).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let read = |n: &str| fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "fpm.log:\n{}\nfpm.stderr:\n{}\nphp.log:\n{}",
            read("fpm.log"),
            read("fpm.stderr"),
            read("php.log")
        )
    }

    /// The pids of the master's children (its workers), from /proc.
    fn workers(&self) -> Vec<i32> {
        let pid = self.master.pid();
        let mut out = Vec::new();
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let children = fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    children
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
        out
    }
}

impl Drop for Fpm {
    fn drop(&mut self) {
        if self.master.exited().is_some() {
            return;
        }
        let workers = self.workers();
        self.master.signal(libc::SIGTERM);
        if self.master.wait_exit(Duration::from_secs(5)).is_none() {
            for w in workers {
                // SAFETY: kill(2) on a worker pid of the php-fpm master this test started,
                // which has not been reaped (the master still runs), so it was not reused.
                unsafe { libc::kill(w, libc::SIGKILL) };
            }
            // Proc's drop kills the master.
        }
    }
}

/// What a FastCGI request got back.
#[derive(Debug)]
struct FcgiReply {
    stdout: String,
    stderr: String,
    /// An END_REQUEST record came (the worker finished the request).
    ended: bool,
    /// The connection was closed (or reset) before END_REQUEST.
    closed: bool,
    took: Duration,
}

fn fcgi_record(typ: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len() as u16;
    let mut r = vec![1, typ, 0, 1, (len >> 8) as u8, len as u8, 0, 0];
    r.extend_from_slice(content);
    r
}

fn fcgi_len(out: &mut Vec<u8>, n: usize) {
    if n < 128 {
        out.push(n as u8);
    } else {
        out.extend_from_slice(&((n as u32) | 0x8000_0000).to_be_bytes());
    }
}

/// One FastCGI request (GET `script`) to 127.0.0.1:`port`, read until END_REQUEST, a closed
/// connection or `limit`.
fn fcgi_get(port: u16, script: &Path, limit: Duration) -> FcgiReply {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to php-fpm");
    let mut msg = fcgi_record(1, &[0, 1, 0, 0, 0, 0, 0, 0]); // BEGIN_REQUEST, RESPONDER
    let mut params = Vec::new();
    let script = script.display().to_string();
    for (k, v) in [
        ("SCRIPT_FILENAME", script.as_str()),
        ("SCRIPT_NAME", "/s.php"),
        ("REQUEST_URI", "/s.php"),
        ("REQUEST_METHOD", "GET"),
        ("QUERY_STRING", ""),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("REMOTE_ADDR", "127.0.0.1"),
    ] {
        fcgi_len(&mut params, k.len());
        fcgi_len(&mut params, v.len());
        params.extend_from_slice(k.as_bytes());
        params.extend_from_slice(v.as_bytes());
    }
    msg.extend(fcgi_record(4, &params));
    msg.extend(fcgi_record(4, &[]));
    msg.extend(fcgi_record(5, &[]));
    s.write_all(&msg).expect("send the FastCGI request");

    let mut buf = Vec::new();
    let mut reply = FcgiReply {
        stdout: String::new(),
        stderr: String::new(),
        ended: false,
        closed: false,
        took: Duration::ZERO,
    };
    let mut chunk = [0u8; 4096];
    loop {
        // Parse whole records.
        while buf.len() >= 8 {
            let len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
            let total = 8 + len + buf[6] as usize;
            if buf.len() < total {
                break;
            }
            let content = String::from_utf8_lossy(&buf[8..8 + len]).into_owned();
            match buf[1] {
                3 => reply.ended = true,
                6 => reply.stdout.push_str(&content),
                7 => reply.stderr.push_str(&content),
                _ => {}
            }
            buf.drain(..total);
        }
        if reply.ended {
            break;
        }
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut chunk) {
            Ok(0) => {
                reply.closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(_) => {
                reply.closed = true;
                break;
            }
        }
    }
    reply.took = start.elapsed();
    reply
}

#[test]
fn php_fpm_request_terminate_timeout_ends_a_worker_stuck_behind_a_held_session() {
    require("php-fpm8.2", "php8.2-fpm");
    let redis = Redis::start();
    let a = Mount::new(&redis.url(), "");
    let b = Mount::new(&redis.url(), "");
    let mut holder = hold(&a.path("sess_fpm1"), "30");
    wait_held(&mut holder, &b.path("sess_fpm1"));
    let fpm = Fpm::start(&b.dir);

    let reply = fcgi_get(fpm.port, &fpm.script(), Duration::from_secs(6));
    assert!(
        !reply.stdout.contains("got"),
        "the fpm worker got sess_fpm1 while mount A held it: {reply:?}"
    );
    assert!(
        reply.closed || reply.ended,
        "the request stuck behind the held session was not ended by \
         request_terminate_timeout=2s within 6 s (fuse-facts.md 5-6): {reply:?}\n{}\n{}",
        fpm.logs(),
        log_tail(&b)
    );
    assert!(
        reply.took < Duration::from_secs(4),
        "request_terminate_timeout=2s should end the stuck worker within 4 s of the request, \
         it took {:?}: {reply:?}\n{}",
        reply.took,
        fpm.logs()
    );
    wait_until(
        "php-fpm's error_log to report the terminate timeout",
        Duration::from_secs(2),
        || {
            let log = fpm.log();
            log.contains("execution timed out") && log.contains("terminating")
        },
    );

    // With the holder gone the session works again through fpm (a fresh or the other worker).
    holder.signal(libc::SIGKILL);
    assert!(
        holder.wait_exit(Duration::from_secs(2)).is_some(),
        "the holder did not die"
    );
    let reply = fcgi_get(fpm.port, &fpm.script(), Duration::from_secs(5));
    assert!(
        reply.ended && reply.stdout.ends_with("got"),
        "once the holder died, fpm should serve sess_fpm1: {reply:?}\n{}",
        fpm.logs()
    );
    assert!(
        reply.took < Duration::from_secs(2),
        "fpm took {:?} to get the free session",
        reply.took
    );
    drop(fpm);
}
