//! Acceptance tests of the core: real redis-server, real FUSE mounts, real php.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, SystemTime};

use common::*;

#[test]
fn php_session_lifecycle_through_the_mount() {
    let redis = Redis::start();
    let m = Mount::new(&redis.url(), "");
    let out = php_ok(
        &m.dir,
        r#"
        ob_start(); // as a web request: output does not stop session_regenerate_id
        session_id('lifecycle1');
        session_start();
        echo count($_SESSION), "\n";
        $_SESSION['user'] = 'alice';
        session_write_close();

        session_id('lifecycle1');
        session_start();
        echo $_SESSION['user'], "\n";
        session_regenerate_id(true);
        $new = session_id();
        $_SESSION['n'] = 1;
        session_write_close();
        echo file_exists(session_save_path() . '/sess_lifecycle1') ? "old kept\n" : "old gone\n";
        echo file_exists(session_save_path() . "/sess_$new") ? "new there\n" : "new missing\n";

        session_id($new);
        session_start();
        echo $_SESSION['user'], $_SESSION['n'], "\n";
        session_destroy();
        clearstatcache();
        echo file_exists(session_save_path() . "/sess_$new") ? "destroyed kept\n" : "destroyed gone\n";
    "#,
    );
    assert_eq!(
        out,
        "0\nalice\nold gone\nnew there\nalice1\ndestroyed gone\n"
    );
}

#[test]
fn strict_mode_rejects_unknown_ids_and_keeps_known_ones() {
    let redis = Redis::start();
    let m = Mount::new(&redis.url(), "");
    let out = php_ok(
        &m.dir,
        r#"
        ini_set('session.use_strict_mode', '1');
        session_id('knownid1');
        session_start();           // unknown: PHP makes a new id
        echo session_id() === 'knownid1' ? "kept\n" : "new\n";
        $_SESSION['x'] = 1;
        $id = session_id();
        session_write_close();
        session_id($id);
        session_start();           // known now: kept
        echo session_id() === $id ? "kept\n" : "new\n";
        echo $_SESSION['x'], "\n";
        session_write_close();
    "#,
    );
    assert_eq!(out, "new\nkept\n1\n");
}

#[test]
fn a_thousand_alternations_between_two_mounts_never_read_stale() {
    let redis = Redis::start();
    let a = Mount::new(&redis.url(), "");
    let b = Mount::new(&redis.url(), "");
    let code = format!(
        r#"
        $dirs = ['{}', '{}'];
        $stale = 0;
        for ($i = 0; $i < 1000; $i++) {{
            session_save_path($dirs[$i % 2]);
            session_id('alternate1');
            session_start();
            $seen = $_SESSION['n'] ?? 0;
            if ($seen !== $i) {{ $stale++; }}
            $_SESSION['n'] = $i + 1;
            $_SESSION['pad'] = str_repeat('x', 2000);
            session_write_close();
        }}
        echo "stale=$stale\n";
    "#,
        a.dir.display(),
        b.dir.display()
    );
    let out = php_ok(&a.dir, &code);
    assert_eq!(out, "stale=0\n");
    // And each reads the other's final write.
    let n = php_ok(
        &b.dir,
        "session_id('alternate1'); session_start(); echo $_SESSION['n'];",
    );
    assert_eq!(n, "1000");
    // With leases, every request takes the session from the other server: a recall each.
    let (ra, rb) = (a.counter("recalls"), b.counter("recalls"));
    let leases = a.status().contains("(kept on)");
    eprintln!("1,000 alternations: recalls a={ra} b={rb} (leases {leases})");
    if leases {
        assert!(ra + rb >= 999, "recalls a={ra} b={rb}");
    }
}

#[test]
fn ls_shows_live_sessions_with_exact_size_mode_owner_and_times() {
    let redis = Redis::start();
    let a = Mount::new(&redis.url(), "");
    let b = Mount::new(&redis.url(), "");
    let before = SystemTime::now() - Duration::from_secs(2);
    for id in ["lsone1", "lstwo2", "lsthree3"] {
        php_ok(
            &a.dir,
            &format!("session_id('{id}'); session_start(); $_SESSION['id'] = '{id}';"),
        );
    }
    let out = sh(&format!("ls -l {}", b.dir.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let mut names: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| {
            assert!(l.starts_with("-rw------- 1 root root"), "{l}");
            l.rsplit(' ').next().unwrap_or("")
        })
        .collect();
    names.sort();
    assert_eq!(names, ["sess_lsone1", "sess_lsthree3", "sess_lstwo2"]);
    let md = fs::metadata(b.path("sess_lstwo2")).unwrap();
    assert_eq!(md.len(), "id|s:6:\"lstwo2\";".len() as u64);
    assert_eq!(md.mode() & 0o7777, 0o600);
    assert_eq!(md.uid(), 0);
    let mtime = md.modified().unwrap();
    assert!(mtime > before && mtime < SystemTime::now() + Duration::from_secs(2));
    assert!(
        md.ctime()
            >= before
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
    );
    // The directory itself follows Debian's convention.
    let dmd = fs::metadata(&b.dir).unwrap();
    assert_eq!(dmd.permissions().mode() & 0o7777, 0o1733);
    assert_eq!((dmd.uid(), dmd.gid()), (0, 0));
}

#[test]
fn sessions_belong_to_their_writer_and_others_cannot_list_them() {
    require("setpriv", "util-linux");
    let redis = Redis::start();
    let m = Mount::new(&redis.url(), "allow_other,default_permissions");
    let save = m.dir.display().to_string();
    let php_as_www = |code: &str| {
        sh(&format!(
            "setpriv --reuid=33 --regid=33 --clear-groups php -d session.save_path={save} \
             -d session.use_cookies=0 -d session.cache_limiter= -r \"{code}\""
        ))
    };
    let out = php_as_www(
        "session_id('wwwowned1'); session_start(); \\$_SESSION['a']=1; session_write_close(); session_id('wwwowned1'); session_start(); echo \\$_SESSION['a'];",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = fs::metadata(m.path("sess_wwwowned1")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (33, 33, 0o600));
    // 1733: www-data may create but not list.
    let out = sh(&format!(
        "setpriv --reuid=33 --regid=33 --clear-groups ls {save}"
    ));
    assert!(
        !out.status.success(),
        "www-data listed the session directory"
    );
}

#[test]
fn php_gc_and_debian_sessionclean_remove_expired_sessions_only() {
    let redis = Redis::start();
    let m = Mount::new(&redis.url(), "lock_lease=1");
    for id in ["gcold1", "gcnew1", "cleanold1", "cleannew1"] {
        php_ok(
            &m.dir,
            &format!("session_id('{id}'); session_start(); $_SESSION['v']=1;"),
        );
    }
    // PHP's gc compares mtime: age one session by setting its mtime through the mount.
    let out = sh(&format!(
        "touch -m -d '2 hours ago' {}",
        m.path("sess_gcold1").display()
    ));
    assert!(out.status.success());
    let gc = php_ok(
        &m.dir,
        "ini_set('session.gc_maxlifetime', 1440); session_id('gcrunner1'); session_start(); \
         echo session_gc();",
    );
    assert_eq!(gc, "1", "exactly one session was old");
    assert!(!m.path("sess_gcold1").exists());
    assert!(m.path("sess_gcnew1").exists());
    // sessionclean compares ctime, which no user can set: age it in the metadata, once no
    // lease keeps the mount from seeing what is changed in Redis behind it.
    m.wait_no_leases(Duration::from_secs(10));
    let ct = (SystemTime::now() - Duration::from_secs(7200))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string();
    redis.cli(&["HSET", "{PHPREDIS_SESSION:cleanold1}:meta", "ct", &ct]);
    let out = sh(&format!(
        "find {}/ -ignore_readdir_race -depth -mindepth 1 -name 'sess_*' -type f -cmin +24 -delete",
        m.dir.display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!m.path("sess_cleanold1").exists());
    assert!(m.path("sess_cleannew1").exists());
    assert!(m.path("sess_gcnew1").exists());
    assert_eq!(
        redis.cli(&["EXISTS", "PHPREDIS_SESSION:cleanold1"]).trim(),
        "0"
    );
}

#[test]
fn sessions_expire_by_ttl_and_a_touch_refreshes_it() {
    let redis = Redis::start();
    let m = Mount::new(&redis.url(), "ttl=3");
    php_ok(
        &m.dir,
        "session_id('ttlone1'); session_start(); $_SESSION['a']=1;",
    );
    php_ok(
        &m.dir,
        "session_id('ttltwo2'); session_start(); $_SESSION['a']=1;",
    );
    let ttl: i64 = redis
        .cli(&["PTTL", "PHPREDIS_SESSION:ttlone1"])
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 2000 && ttl <= 3000, "pttl {ttl}");
    std::thread::sleep(Duration::from_millis(2000));
    // Read unchanged: lazy_write touches the file, which refreshes the TTL.
    let v = php_ok(
        &m.dir,
        "session_id('ttltwo2'); session_start(); echo $_SESSION['a'];",
    );
    assert_eq!(v, "1");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!m.path("sess_ttlone1").exists(), "expired");
    assert!(
        m.path("sess_ttltwo2").exists(),
        "touched 1.5 s ago, ttl 3 s"
    );
    let fresh = php_ok(
        &m.dir,
        "session_id('ttlone1'); session_start(); echo count($_SESSION);",
    );
    assert_eq!(fresh, "0");
}

#[test]
fn file_semantics_excl_trunc_append_unlink_open_and_read_past_end() {
    let redis = Redis::start();
    let m = Mount::new(&redis.url(), "");
    let out = php_ok(
        &m.dir,
        r#"
        $d = session_save_path();
        $f = fopen("$d/sess_filesem1", 'x'); fwrite($f, "hello"); fclose($f);
        echo @fopen("$d/sess_filesem1", 'x') === false ? "excl ok\n" : "excl broken\n";
        $f = fopen("$d/sess_filesem1", 'a'); fwrite($f, " world"); fclose($f);
        echo file_get_contents("$d/sess_filesem1"), "\n";
        $f = fopen("$d/sess_filesem1", 'r');
        fseek($f, 100); echo var_export(fread($f, 10), true), "\n"; fclose($f);
        $f = fopen("$d/sess_filesem1", 'w'); fclose($f);
        clearstatcache(); echo filesize("$d/sess_filesem1"), "\n";
        $f = fopen("$d/sess_filesem1", 'r+'); fwrite($f, "abc");
        unlink("$d/sess_filesem1");
        clearstatcache(); echo file_exists("$d/sess_filesem1") ? "still\n" : "unlinked\n";
        fwrite($f, "def"); rewind($f); echo fread($f, 10), "\n"; fclose($f);
        clearstatcache(); echo file_exists("$d/sess_filesem1") ? "back\n" : "stays gone\n";
    "#,
    );
    assert_eq!(
        out,
        "excl ok\nhello world\n''\n0\nunlinked\nabcdef\nstays gone\n"
    );
    assert_eq!(
        redis.cli(&["EXISTS", "PHPREDIS_SESSION:filesem1"]).trim(),
        "0"
    );
}

#[test]
fn what_the_directory_does_not_hold_fails_with_the_proper_errno() {
    let redis = Redis::start();
    let m = Mount::new(&redis.url(), "");
    fs::write(m.path("sess_target1"), b"x").unwrap();
    let errno = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(errno(fs::create_dir(m.path("sub"))), Some(libc::EPERM));
    assert_eq!(
        errno(std::os::unix::fs::symlink(
            "sess_target1",
            m.path("sess_link1")
        )),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno(fs::hard_link(m.path("sess_target1"), m.path("sess_hard1"))),
        Some(libc::EPERM)
    );
    let fifo = std::ffi::CString::new(m.path("sess_fifo1").to_str().unwrap()).unwrap();
    // SAFETY: a valid C path.
    let rc = unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
    let path = std::ffi::CString::new(m.path("sess_target1").to_str().unwrap()).unwrap();
    // SAFETY: valid C strings and buffer.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.x".as_ptr(),
            b"1".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTSUP)
    );
    // mv falls back to copy and unlink.
    let out = sh(&format!(
        "mv {} {}",
        m.path("sess_target1").display(),
        m.path("sess_moved1").display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(m.path("sess_moved1")).unwrap(), b"x");
    assert!(!m.path("sess_target1").exists());
    let log = m.log_text();
    assert!(
        log.contains("sess_link1: a symbolic link is not supported"),
        "{log}"
    );
    assert!(
        log.contains("sub: a subdirectory is not supported"),
        "{log}"
    );
}

#[test]
fn bad_names_and_oversized_sessions_get_clear_errors() {
    let redis = Redis::start();
    let m = Mount::new(&redis.url(), "max_size=1K");
    let e = fs::write(m.path("sess_bad name"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let e = fs::write(m.path(".hidden"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let long = format!("sess_{}", "a".repeat(251));
    let e = fs::write(m.path(&long), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
    let out = php(
        &m.dir,
        "session_id('toobig1'); session_start(); $_SESSION['x'] = str_repeat('y', 2000); \
         session_write_close();",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Failed to write session data"), "{err}");
    let log = m.log_text();
    assert!(
        log.contains("\"sess_bad name\": not a session file name"),
        "{log}"
    );
    assert!(log.contains("sess_toobig1: a write up to"), "{log}");
    assert!(log.contains("max_size=1024"), "{log}");
}

#[test]
fn garbage_in_redis_is_eio_with_a_log_line_naming_the_key() {
    let redis = Redis::start();
    let m = Mount::new(&redis.url(), "");
    redis.cli(&["RPUSH", "PHPREDIS_SESSION:listkey1", "a"]);
    redis.cli(&["SET", "PHPREDIS_SESSION:badmeta1", "x", "EX", "100"]);
    redis.cli(&["HSET", "{PHPREDIS_SESSION:badmeta1}:meta", "uid", "root"]);
    redis.cli(&["SET", "PHPREDIS_SESSION:strmeta1", "x", "EX", "100"]);
    redis.cli(&["SET", "{PHPREDIS_SESSION:strmeta1}:meta", "junk"]);
    for id in ["listkey1", "badmeta1", "strmeta1"] {
        let e = fs::read(m.path(&format!("sess_{id}"))).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{id}");
    }
    let log = m.log_text();
    assert!(log.contains("PHPREDIS_SESSION:listkey1"), "{log}");
    assert!(log.contains("wrong Redis type"), "{log}");
    assert!(log.contains("metadata field uid is not a number"), "{log}");
    assert!(log.contains("PHPREDIS_SESSION:strmeta1"), "{log}");
    // The rest of the directory is unharmed.
    php_ok(
        &m.dir,
        "session_id('healthy1'); session_start(); $_SESSION['a']=1;",
    );
    assert_eq!(
        redis.cli(&["EXISTS", "PHPREDIS_SESSION:listkey1"]).trim(),
        "1"
    );
}

fn phpredis(redis: &Redis, code: &str) -> String {
    let out = php_with(
        std::path::Path::new("/nonexistent"),
        &[
            "session.save_handler=redis",
            &format!("session.save_path=tcp://127.0.0.1:{}", redis.port),
        ],
        code,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "phpredis: {err}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn phpredis_and_the_mount_share_sessions_both_ways() {
    require("php", "php-redis");
    let redis = Redis::start();
    // phpredis does not honour sessfs' leases: a mixed fleet mounts with leases off (README).
    let m = Mount::new(&redis.url(), "leases=off,write=through");
    php_ok(
        &m.dir,
        "session_id('shared1'); session_start(); $_SESSION['from']='sessfs'; $_SESSION['n']=1;",
    );
    let out = phpredis(
        &redis,
        "session_id('shared1'); session_start(); echo $_SESSION['from'], $_SESSION['n']; \
         $_SESSION['from']='phpredis'; $_SESSION['n']=2; session_write_close();",
    );
    assert_eq!(out, "sessfs1");
    let out = php_ok(
        &m.dir,
        "session_id('shared1'); session_start(); echo $_SESSION['from'], $_SESSION['n'];",
    );
    assert_eq!(out, "phpredis2");
    // A session only phpredis ever wrote is a file on the mount.
    phpredis(
        &redis,
        "session_id('onlyredis1'); session_start(); $_SESSION['z']=9;",
    );
    let md = fs::metadata(m.path("sess_onlyredis1")).unwrap();
    assert_eq!(md.len(), "z|i:9;".len() as u64);
    let out = php_ok(
        &m.dir,
        "session_id('onlyredis1'); session_start(); echo $_SESSION['z'];",
    );
    assert_eq!(out, "9");
}

#[test]
fn redis_killed_and_restarted_under_a_mount() {
    let mut redis = Redis::start();
    let m = Mount::new(&redis.url(), "timeout=1,lock_lease=1");
    php_ok(
        &m.dir,
        "session_id('outage1'); session_start(); $_SESSION['a']=1;",
    );
    redis.kill();
    // A session leased here is served from memory for at most 0.8 x lock_lease after the
    // last renewal; then, as without a lease, opening it needs Redis and fails.
    let mut err = String::new();
    wait_until("requests to fail with EIO", Duration::from_secs(5), || {
        let out = php(
            &m.dir,
            "session_id('outage1'); session_start(); echo 'ran';",
        );
        err = String::from_utf8_lossy(&out.stderr).into_owned();
        err.contains("Input/output error")
    });
    redis.restart();
    // Recovers without a remount (the restarted Redis is empty: a new session).
    let mut last = String::new();
    wait_until("the mount to reconnect", Duration::from_secs(10), || {
        let out = php(
            &m.dir,
            "session_id('outage1'); session_start(); $_SESSION['b']=2; echo 'ok';",
        );
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        String::from_utf8_lossy(&out.stdout) == "ok" && last.trim().is_empty()
    });
    assert_eq!(
        redis.cli(&["EXISTS", "PHPREDIS_SESSION:outage1"]).trim(),
        "1"
    );
    let log = m.log_text();
    assert!(log.contains("sess_outage1: store unreachable"), "{log}");
}

#[test]
fn sigterm_unmounts_and_exits_cleanly() {
    let redis = Redis::start();
    let mut m = Mount::new(&redis.url(), "");
    php_ok(
        &m.dir,
        "session_id('term1'); session_start(); $_SESSION['a']=1;",
    );
    m.signal(libc::SIGTERM);
    let status = m.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(!m.is_mounted());
    assert!(m.log_text().contains("SIGTERM: unmounting"));
}

#[test]
fn a_session_deleted_elsewhere_right_after_a_listing_is_gone_for_other_processes() {
    let redis = Redis::start();
    let a = Mount::new(&redis.url(), "");
    let b = Mount::new(&redis.url(), "");
    php_ok(
        &a.dir,
        "session_id('listdel1'); session_start(); $_SESSION['a']=1;",
    );
    let out = sh(&format!("ls -l {} >/dev/null", a.dir.display()));
    assert!(out.status.success());
    std::fs::remove_file(b.path("sess_listdel1")).unwrap();
    // At once, from another process on A (as PHP's strict mode would stat it).
    assert!(
        !a.path("sess_listdel1").exists(),
        "a listed stat stood in for the store"
    );
}
