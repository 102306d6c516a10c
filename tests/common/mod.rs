//! What acceptance tests start: a real redis-server on a free loopback port, real sessfs
//! mounts of it, real php. Each piece stops what it started when dropped, so tests run in
//! parallel and leave nothing behind. A missing tool is a failure with a clear message, never
//! a skip.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SESSFS: &str = env!("CARGO_BIN_EXE_sessfs");

/// Fails the test at once, naming the missing dependency and how to get it.
pub fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: `apt-get install -y {package}` (scripts/test does this)"
    );
}

pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the FUSE kernel module is needed (modprobe fuse)"
    );
    require("fusermount3", "fuse3");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Redis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    password: Option<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(None)
    }

    pub fn start_with(password: Option<&str>) -> Redis {
        require("redis-server", "redis-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = Redis {
            port: free_port(),
            dir,
            child: None,
            password: password.map(str::to_string),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        self.child = Some(cmd.spawn().expect("start redis-server"));
        let port = self.port;
        wait_until("redis-server to answer", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        wait_until("redis-server to load", Duration::from_secs(10), || {
            self.cli(&["PING"]).contains("PONG")
        });
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs redis-cli and returns its output (stdout and stderr).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(p) = &self.password {
            cmd.args(["--no-auth-warning", "-a", p]);
        }
        let out = cmd.args(args).output().expect("redis-cli");
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        s
    }

    /// Stops the server (SIGKILL, as a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: it saves nothing).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn is_mounted(dir: &Path) -> bool {
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines().any(|l| {
                l.split(' ').nth(4) == Some(canon.to_str().unwrap_or("")) && l.contains("fuse")
            })
        })
        .unwrap_or(false)
}

pub struct Mount {
    pub dir: PathBuf,
    pub log: PathBuf,
    _tmp: tempfile::TempDir,
    child: Option<Child>,
}

impl Mount {
    /// Mounts `url` in the foreground (-f) and waits until the mount is live.
    pub fn new(url: &str, opts: &str) -> Mount {
        require_fuse();
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("sessions");
        std::fs::create_dir(&dir).expect("mount point");
        let log = tmp.path().join("sessfs.log");
        let mut o = format!("log=debug,log_file={}", log.display());
        // scripts/test runs the acceptance tests again with SESSFS_TEST_OPTS=leases=off; a
        // test's own options come after, so they win.
        if let Ok(extra) = std::env::var("SESSFS_TEST_OPTS")
            && !extra.is_empty()
        {
            o.push(',');
            o.push_str(&extra);
        }
        if !opts.is_empty() {
            o.push(',');
            o.push_str(opts);
        }
        let child = Command::new(SESSFS)
            .arg(url)
            .arg(&dir)
            .args(["-o", &o, "-f"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sessfs");
        let mut m = Mount {
            dir,
            log,
            _tmp: tmp,
            child: Some(child),
        };
        let start = Instant::now();
        while !is_mounted(&m.dir) {
            if let Some(c) = m.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                m.child = None;
                panic!("sessfs exited ({status}) before mounting: {err}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "sessfs did not mount"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        m
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Waits for the daemon to exit by itself; returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(s)) = c.try_wait()
            {
                self.child = None;
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "sessfs did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.dir)
    }

    /// The daemon's `.sessfs-status` text (root only).
    pub fn status(&self) -> String {
        std::fs::read_to_string(self.path(".sessfs-status")).expect("read .sessfs-status")
    }

    /// One counter of the status's `counters` line.
    pub fn counter(&self, key: &str) -> u64 {
        let status = self.status();
        status
            .lines()
            .find_map(|l| l.strip_prefix("counters "))
            .and_then(|l| {
                l.split(' ')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no counter {key} in status:\n{status}"))
    }

    /// Waits until this server holds no session's lease (they go unused after a third of
    /// lock_lease), so that what a test then changes in Redis directly is seen.
    pub fn wait_no_leases(&self, limit: Duration) {
        wait_until("leases to be given up", limit, || {
            self.status().lines().any(|l| l.starts_with("leases 0 "))
        });
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.dir)
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs PHP code (without `<?php`) with the files handler on `save_path`.
pub fn php(save_path: &Path, code: &str) -> Output {
    php_with(save_path, &[], code)
}

pub fn php_with(save_path: &Path, ini: &[&str], code: &str) -> Output {
    require("php", "php-cli");
    let mut cmd = Command::new("php");
    cmd.args(["-d", "session.save_handler=files"])
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
        ]);
    for i in ini {
        cmd.args(["-d", i]);
    }
    let mut child = cmd
        .arg("--")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start php");
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("<?php\n{code}\n").as_bytes())
            .expect("php stdin");
    }
    child.wait_with_output().expect("php output")
}

/// Runs PHP and returns stdout, failing the test with PHP's stderr if it failed or warned.
pub fn php_ok(save_path: &Path, code: &str) -> String {
    let out = php(save_path, code);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "php failed ({}): {stderr}\nstdout: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// PHP extensions php -n does not load by itself.
pub fn php_extension_dir() -> String {
    let out = Command::new("php")
        .args(["-r", "echo ini_get('extension_dir');"])
        .output()
        .expect("php");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("sh")
}
