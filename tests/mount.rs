//! The command as an operator uses it: background start, fstab, umount, bad input, secrets.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn mounts_text() -> String {
    std::fs::read_to_string("/proc/mounts").unwrap_or_default()
}

fn mounted(dir: &std::path::Path) -> bool {
    let d = dir.canonicalize().unwrap();
    mounts_text()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(d.to_str().unwrap()))
}

/// Unmounts on drop, for mounts made without a `Mount` guard.
struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        if mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// The daemon's pid for a mount point, from the process table.
fn daemon_pid(dir: &std::path::Path) -> Option<u32> {
    // The brackets keep the pattern from matching the shell that runs pgrep.
    let out = sh(&format!(
        "pgrep -f -- 'sessfs redis[:]//.* {} -o'",
        dir.display()
    ));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
}

fn wait_gone(pid: u32) {
    wait_until("the daemon to exit", Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
}

#[test]
fn without_f_the_command_returns_once_the_mount_is_live_and_umount_stops_it() {
    require_fuse();
    let redis = Redis::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    std::fs::create_dir(&dir).unwrap();
    let _guard = Unmount(dir.clone());
    let status = Command::new(SESSFS)
        .arg(redis.url())
        .arg(&dir)
        .args(["-o", "ttl=60"])
        .status()
        .unwrap();
    assert!(status.success());
    // Live at once, no waiting.
    assert!(mounted(&dir), "not mounted when the command returned");
    std::fs::write(dir.join("sess_bg1"), b"x").unwrap();
    assert_eq!(redis.cli(&["GET", "PHPREDIS_SESSION:bg1"]).trim(), "x");
    let pid = daemon_pid(&dir).expect("daemon running");
    let status = Command::new("umount").arg(&dir).status().unwrap();
    assert!(status.success());
    wait_gone(pid);
    assert!(!mounted(&dir));
}

#[test]
fn an_fstab_line_mounts_and_umount_unmounts() {
    require_fuse();
    require("mount.fuse3", "fuse3");
    require("unshare", "util-linux");
    let redis = Redis::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sessions");
    std::fs::create_dir(&dir).unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(SESSFS, bin.join("sessfs")).unwrap();
    let fstab = tmp.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "{} {} fuse.sessfs allow_other,default_permissions,ttl=600,_netdev,nofail,\
             x-systemd.requires=redis-server.service 0 0\n",
            redis.url(),
            dir.display()
        ),
    )
    .unwrap();
    // mount(8) runs mount.fuse3 with a fixed PATH, so the binary must be where an operator
    // installs it: /usr/local/bin, bind-mounted here in a private mount namespace so the test
    // changes nothing outside itself.
    let script = format!(
        r#"set -e
        mount --bind {bin} /usr/local/bin
        mount -T {fstab} {dir}
        grep " {dir} fuse" /proc/mounts
        php -d session.save_path={dir} -d session.use_cookies=0 -d session.cache_limiter= \
            -r 'session_id("fstab1"); session_start(); $_SESSION["a"] = 1;'
        pid=$(pgrep -f -- "sessfs redis[:]//.* {dir} -o")
        umount {dir}
        for i in $(seq 100); do [ -d /proc/$pid ] || break; sleep 0.05; done
        [ ! -d /proc/$pid ] && echo daemon-exited
        grep -c " {dir} " /proc/mounts || true
        "#,
        bin = bin.display(),
        fstab = fstab.display(),
        dir = dir.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    let mount_line = lines.next().unwrap_or_default();
    assert!(mount_line.starts_with(&redis.url()), "{text}");
    assert!(mount_line.contains("allow_other"), "{text}");
    assert_eq!(lines.next(), Some("daemon-exited"), "{text}");
    assert_eq!(lines.next(), Some("0"), "still mounted: {text}");
    assert!(
        redis
            .cli(&["EXISTS", "PHPREDIS_SESSION:fstab1"])
            .contains('1')
    );
}

fn run_sessfs(args: &[&str]) -> (i32, String, Duration) {
    let start = Instant::now();
    let out = Command::new(SESSFS).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text, start.elapsed())
}

#[test]
fn bad_input_is_a_one_line_error_and_no_mount() {
    require_fuse();
    let redis = Redis::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.to_str().unwrap();
    let url = redis.url();

    let (code, text, _) = run_sessfs(&[&url, d, "-o", "ttl=60,tll=5"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("unknown option \"tll\""), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "{text}");

    let (code, text, _) = run_sessfs(&["http://127.0.0.1:1", d]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("unknown scheme"), "{text}");

    // Nothing listens on the port: a refusal, quickly.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (code, text, took) = run_sessfs(&[&format!("redis://127.0.0.1:{closed}/0"), d]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("cannot use the store"), "{text}");
    assert!(took < Duration::from_secs(10), "took {took:?}");

    let missing = tmp.path().join("missing");
    let (code, text, _) = run_sessfs(&[&url, missing.to_str().unwrap()]);
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains("mount point") && text.contains("missing"),
        "{text}"
    );

    let file = tmp.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let (code, text, _) = run_sessfs(&[&url, file.to_str().unwrap()]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("not a directory"), "{text}");

    assert!(!mounted(&dir), "a failed start left a mount");
}

#[test]
fn a_password_from_password_file_shows_nowhere() {
    require_fuse();
    let secret = "pw-file-s3cret";
    let redis = Redis::start_with(Some(secret));
    let tmp = tempfile::tempdir().unwrap();
    let pwfile = tmp.path().join("pw");
    std::fs::write(&pwfile, format!("{secret}\n")).unwrap();
    let m = Mount::new(&redis.url(), &format!("password_file={}", pwfile.display()));
    php_ok(
        &m.dir,
        "session_id('pw1'); session_start(); $_SESSION['a']=1;",
    );
    assert!(redis.cli(&["EXISTS", "PHPREDIS_SESSION:pw1"]).contains('1'));
    assert!(!mounts_text().contains(secret));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", m.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(secret));
    assert!(!m.log_text().contains(secret));

    // A wrong password is a clear error.
    std::fs::write(&pwfile, "wrong\n").unwrap();
    let dir2 = tmp.path().join("d2");
    std::fs::create_dir(&dir2).unwrap();
    let (code, text, _) = run_sessfs(&[
        &redis.url(),
        dir2.to_str().unwrap(),
        "-o",
        &format!("password_file={}", pwfile.display()),
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(!mounted(&dir2));
}

#[test]
fn a_password_in_the_url_is_removed_from_mounts_processes_and_logs() {
    require_fuse();
    let secret = "url-s3cret";
    let redis = Redis::start_with(Some(secret));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    std::fs::create_dir(&dir).unwrap();
    let _guard = Unmount(dir.clone());
    let log = tmp.path().join("log");
    let url = format!("redis://:{secret}@127.0.0.1:{}/0", redis.port);
    let (code, text, _) = run_sessfs(&[
        &url,
        dir.to_str().unwrap(),
        "-o",
        &format!("log=debug,log_file={}", log.display()),
    ]);
    assert_eq!(code, 0, "{text}");
    std::fs::write(dir.join("sess_urlpw1"), b"x").unwrap();
    assert!(mounted(&dir));
    assert!(!mounts_text().contains(secret), "{}", mounts_text());
    let pid = daemon_pid(&dir).expect("daemon");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(secret));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("mounted"), "{logged}");
    assert!(!logged.contains(secret), "{logged}");
    let _ = Command::new("umount").arg(&dir).status();
    wait_gone(pid);
}

#[test]
fn the_manual_page_documents_every_option_the_binary_accepts() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/sessfs.8"))
        .expect("man/sessfs.8 exists");
    // The option entries: the line after each .TP in the OPTIONS section, as `.B name` or
    // `.BI name= VALUE`.
    let mut in_options = false;
    let mut after_tp = false;
    let mut documented = Vec::new();
    for l in page.lines() {
        if l.starts_with(".SH") {
            in_options = l.contains("OPTIONS");
            continue;
        }
        if !in_options {
            continue;
        }
        if l.starts_with(".TP") {
            after_tp = true;
            continue;
        }
        if after_tp {
            after_tp = false;
            if let Some(w) = l.split_whitespace().nth(1) {
                let w = w.trim_matches('"').trim_end_matches('=');
                if !w.starts_with('\\') {
                    documented.push(w.to_string());
                }
            }
        }
    }
    for opt in sessfs::config::OWN_OPTIONS {
        assert!(
            documented.iter().any(|d| d == opt),
            "man/sessfs.8 does not document option {opt} (found {documented:?})"
        );
        // And the binary accepts it (with a value where it needs one).
        let sample = match *opt {
            "ttl" | "timeout" | "lock_lease" => format!("{opt}=5"),
            "prefix" => "prefix=x:".into(),
            "cache_size" | "max_size" => format!("{opt}=1M"),
            "password_file" | "log_file" => format!("{opt}=/dev/null"),
            "log" => "log=warn".into(),
            "dir_mode" => "dir_mode=1733".into(),
            "uid" | "gid" => format!("{opt}=33"),
            "leases" => "leases=off".into(),
            "write" => "write=back".into(),
            other => other.to_string(),
        };
        sessfs::config::Options::parse(&[sample.as_str()])
            .unwrap_or_else(|e| panic!("documented option {opt} is refused: {e}"));
    }
    for d in &documented {
        assert!(
            sessfs::config::OWN_OPTIONS.contains(&d.as_str()),
            "man page documents option {d}, which the binary does not accept"
        );
    }
}
