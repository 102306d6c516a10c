//! Cluster-wide flock: several mounts of one Redis stand in for several web servers.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A background process, killed and reaped on drop.
struct Bg(Child);
impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn php_script(dir: &std::path::Path, name: &str, code: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("<?php\n{code}\n")).unwrap();
    p
}

/// Starts `flock FILE -c 'sleep N'` and waits until it holds the lock, as seen from `probe`
/// (a path to the same session through another mount).
fn hold(file: &std::path::Path, probe: &std::path::Path, secs: u32) -> Bg {
    require("flock", "util-linux");
    // -o: the command does not inherit the locked file, so killing flock itself releases it.
    let child = Command::new("flock")
        .arg("-o")
        .arg(file)
        .args(["-c", &format!("sleep {secs}")])
        .spawn()
        .unwrap();
    let bg = Bg(child);
    wait_until(
        "the holder to hold the lock",
        Duration::from_secs(5),
        || {
            !Command::new("flock")
                .arg("-n")
                .arg(probe)
                .arg("true")
                .status()
                .unwrap()
                .success()
        },
    );
    bg
}

const INCREMENT: &str = r#"
ini_set('session.use_cookies', 0);
ini_set('session.cache_limiter', '');
session_save_path($argv[1]);
for ($i = 0; $i < (int)$argv[3]; $i++) {
    session_id($argv[2]);
    session_start();
    $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
    session_write_close();
}
"#;

fn read_counter(dir: &std::path::Path, id: &str) -> String {
    php_ok(
        dir,
        &format!("session_id('{id}'); session_start(); echo $_SESSION['n'] ?? 'none';"),
    )
}

#[test]
fn twelve_php_processes_on_three_mounts_lose_no_update_five_runs_in_a_row() {
    require("php", "php-cli");
    let redis = Redis::start();
    let mounts: Vec<Mount> = (0..3).map(|_| Mount::new(&redis.url(), "")).collect();
    let tmp = tempfile::tempdir().unwrap();
    let script = php_script(tmp.path(), "inc.php", INCREMENT);
    for run in 0..5 {
        let id = format!("counter{run}");
        let start = Instant::now();
        let procs: Vec<Child> = mounts
            .iter()
            .flat_map(|m| std::iter::repeat_n(m, 4))
            .map(|m| {
                Command::new("php")
                    .arg(&script)
                    .arg(&m.dir)
                    .arg(&id)
                    .arg("200")
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for p in procs {
            let out = p.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.stderr.is_empty(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!("run {run}: 2400 locked increments in {:?}", start.elapsed());
        assert_eq!(read_counter(&mounts[run % 3].dir, &id), "2400", "run {run}");
    }
}

#[test]
fn flock_from_a_shell_with_shared_readers_mixed_in() {
    require("flock", "util-linux");
    let redis = Redis::start();
    let a = Mount::new(&redis.url(), "");
    let b = Mount::new(&redis.url(), "");
    std::fs::write(a.path("sess_shell1"), b"0").unwrap();
    // Writers take LOCK_EX and rewrite the number; readers take LOCK_SH and must always see a
    // whole number, never an empty or torn file.
    let writer = |dir: &std::path::Path| {
        let f = dir.join("sess_shell1");
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for i in $(seq 60); do flock -x {f} -c 'n=$(cat {f}); printf %s $((n+1)) > {f}' || exit 1; done",
                f = f.display()
            ))
            .spawn()
            .unwrap()
    };
    let reader = |dir: &std::path::Path| {
        let f = dir.join("sess_shell1");
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for i in $(seq 60); do flock -s {f} -c 'n=$(cat {f}); case $n in (\"\"|*[!0-9]*) echo torn:$n; exit 1;; esac' || exit 1; done",
                f = f.display()
            ))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let procs = vec![
        writer(&a.dir),
        writer(&b.dir),
        writer(&a.dir),
        reader(&a.dir),
        reader(&b.dir),
    ];
    for p in procs {
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(
        std::fs::read_to_string(b.path("sess_shell1")).unwrap(),
        "180"
    );
}

#[test]
fn lock_nb_across_mounts_is_ewouldblock_and_a_killed_holder_releases_at_once() {
    let redis = Redis::start();
    let a = Mount::new(&redis.url(), "");
    let b = Mount::new(&redis.url(), "");
    std::fs::write(a.path("sess_nb1"), b"x").unwrap();
    let mut holder = hold(&a.path("sess_nb1"), &b.path("sess_nb1"), 30);
    // LOCK_NB from the other server: EWOULDBLOCK (flock -n exits 1, -E picks the code).
    let status = Command::new("flock")
        .args(["-n", "-E", "42"])
        .arg(b.path("sess_nb1"))
        .arg("true")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(42), "LOCK_NB on B while A holds");
    // And a shared request conflicts with the exclusive holder too.
    let status = Command::new("flock")
        .args(["-s", "-n", "-E", "42"])
        .arg(b.path("sess_nb1"))
        .arg("true")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(42));
    // kill -9 the holder: its file is released by the kernel, and the lock with it.
    let start = Instant::now();
    holder.0.kill().unwrap();
    let _ = holder.0.wait();
    let status = Command::new("flock")
        .args(["-w", "5"])
        .arg(b.path("sess_nb1"))
        .arg("true")
        .status()
        .unwrap();
    assert!(status.success());
    let took = start.elapsed();
    eprintln!("lock passed to the other server {took:?} after kill -9 of the holder");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn a_daemon_killed_with_sigkill_loses_its_locks_after_the_lease() {
    let redis = Redis::start();
    let mut a = Mount::new(&redis.url(), "lock_lease=1");
    let b = Mount::new(&redis.url(), "lock_lease=1");
    std::fs::write(a.path("sess_dead1"), b"x").unwrap();
    let _holder = hold(&a.path("sess_dead1"), &b.path("sess_dead1"), 60);
    let start = Instant::now();
    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(5));
    let status = Command::new("flock")
        .args(["-w", "10"])
        .arg(b.path("sess_dead1"))
        .arg("true")
        .status()
        .unwrap();
    assert!(status.success());
    let took = start.elapsed();
    eprintln!("lock of a killed daemon passed on after {took:?} (lease 1 s)");
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[test]
fn a_stale_holder_cannot_overwrite_what_the_next_holder_wrote() {
    let redis = Redis::start();
    let a = Mount::new(&redis.url(), "lock_lease=1");
    let b = Mount::new(&redis.url(), "lock_lease=1");
    std::fs::write(a.path("sess_fence1"), b"original").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("written");
    // On A: lock, write (kept on A until close), say so, then close a little later.
    let script = php_script(
        tmp.path(),
        "stale.php",
        &format!(
            r#"
            $f = fopen('{file}', 'r+');
            flock($f, LOCK_EX);
            ftruncate($f, 0);
            fwrite($f, 'stale write from A');
            touch('{marker}');
            usleep(500000);
            $ok = fclose($f);
            echo $ok ? "closed" : "close failed";
            "#,
            file = a.path("sess_fence1").display(),
            marker = marker.display()
        ),
    );
    let stale = Command::new("php")
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        "A's writer to hold the lock and write",
        Duration::from_secs(5),
        || marker.exists(),
    );
    // A's daemon stops past its lease: A's process is stuck in close (flush).
    a.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(b.path("sess_fence1"), b"new content from B").unwrap();
    let status = Command::new("flock")
        .args(["-w", "5"])
        .arg(b.path("sess_fence1"))
        .args([
            "-c",
            &format!(
                "printf 'locked write from B' > {}",
                b.path("sess_fence1").display()
            ),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "B took the lock after A's lease ran out");
    a.signal(libc::SIGCONT);
    let out = stale.wait_with_output().unwrap();
    eprintln!("A's writer: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        redis.cli(&["GET", "PHPREDIS_SESSION:~sess_fence1"]).trim(),
        "",
        "bare-name key unused"
    );
    assert_eq!(
        std::fs::read_to_string(b.path("sess_fence1")).unwrap(),
        "locked write from B",
        "the stale holder's write must not land"
    );
    wait_until("A to log the refused write", Duration::from_secs(5), || {
        a.log_text().contains("write refused")
    });
}

#[test]
fn a_held_session_does_not_slow_other_sessions_on_the_same_mount() {
    let redis = Redis::start();
    let a = Mount::new(&redis.url(), "");
    let b = Mount::new(&redis.url(), "");
    let tmp = tempfile::tempdir().unwrap();
    let script = php_script(tmp.path(), "inc.php", INCREMENT);
    let run = |id: &str| {
        let start = Instant::now();
        let out = Command::new("php")
            .arg(&script)
            .arg(&a.dir)
            .arg(id)
            .arg("300")
            .output()
            .unwrap();
        assert!(out.status.success());
        start.elapsed()
    };
    let quiet = run("otherquiet1");
    std::fs::write(a.path("sess_heldx1"), b"x").unwrap();
    let _holder = hold(&a.path("sess_heldx1"), &b.path("sess_heldx1"), 30);
    // A PHP request waits on the held session through the same mount meanwhile.
    let waiter = Bg(Command::new("php")
        .arg(&script)
        .arg(&a.dir)
        .arg("heldx1")
        .arg("1")
        .spawn()
        .unwrap());
    let mut shown = String::new();
    wait_until("status to show the waiter", Duration::from_secs(5), || {
        let out = Command::new(SESSFS)
            .arg("status")
            .arg(&a.dir)
            .output()
            .unwrap();
        shown = String::from_utf8_lossy(&out.stdout).into_owned();
        shown.contains("pid ")
    });
    eprintln!("sessfs status:\n{shown}");
    assert!(
        shown.contains("sess_heldx1 cluster held (Exclusive)"),
        "{shown}"
    );
    assert!(shown.contains("local holders 1, waiting 1"), "{shown}");
    let busy = run("otherbusy1");
    eprintln!(
        "300 requests on another session: {:?} with nothing held, {:?} while a session is held \
         and waited for on the same mount",
        quiet, busy
    );
    assert_eq!(read_counter(&a.dir, "otherbusy1"), "300");
    drop(waiter);
}

#[test]
fn a_non_blocking_lock_on_a_free_session_is_granted_and_leaves_nothing_behind() {
    let redis = Redis::start();
    let a = Mount::new(&redis.url(), "");
    std::fs::write(a.path("sess_nbfree1"), b"x").unwrap();
    let status = Command::new("flock")
        .arg("-n")
        .arg(a.path("sess_nbfree1"))
        .arg("true")
        .status()
        .unwrap();
    assert!(status.success(), "LOCK_NB on a free session");
    // The lock is kept by this server for its next request, or released: never leaked to a
    // claim nobody renews. Another mount gets it at once.
    let b = Mount::new(&redis.url(), "");
    let start = Instant::now();
    let status = Command::new("flock")
        .args(["-w", "5"])
        .arg(b.path("sess_nbfree1"))
        .arg("true")
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_non_blocking_exclusive_lock_after_a_shared_reader_is_granted_and_excludes_other_mounts() {
    require("flock", "util-linux");
    let redis = Redis::start();
    let a = Mount::new(&redis.url(), "");
    let b = Mount::new(&redis.url(), "");
    let file = a.path("sess_upgrade1");
    std::fs::write(&file, b"x").unwrap();
    // A reader through A (its shared cluster lock may be kept by A afterwards).
    let reader = Command::new("flock")
        .arg("-s")
        .arg(&file)
        .arg("true")
        .status();
    assert!(reader.unwrap().success());
    // LOCK_EX|LOCK_NB through A: nobody else holds the session, so it is granted (A's kept
    // shared holding is converted, never lost), and held for a while.
    let mut holder = Bg(Command::new("flock")
        .args(["-n", "-x"])
        .arg(&file)
        .args(["sleep", "3"])
        .spawn()
        .unwrap());
    wait_until(
        "A to hold the session exclusively",
        Duration::from_secs(5),
        || {
            if let Ok(Some(status)) = holder.0.try_wait() {
                panic!("flock -n -x through A gave up: {status}");
            }
            a.status().contains("sess_upgrade1 cluster held (Exclusive")
        },
    );
    let other = Command::new("flock")
        .args(["-n", "-s"])
        .arg(b.path("sess_upgrade1"))
        .arg("true")
        .status()
        .unwrap();
    assert!(
        !other.success(),
        "a reader on B got the session A holds exclusively"
    );
    let done = holder.0.wait().unwrap();
    assert!(done.success(), "the exclusive holder through A: {done}");
}
