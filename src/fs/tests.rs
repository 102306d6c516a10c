//! The PHP files-handler contract against the in-memory store: two `Fs` sharing one store
//! stand in for two web servers.

use std::time::Duration;

use super::*;
use crate::store::memory::MemoryStore;
use crate::store::{ForeignDefaults, StoreOptions};

const ROOT: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 1,
};
const WWW: Caller = Caller {
    uid: 33,
    gid: 33,
    pid: 2,
};

fn store() -> MemoryStore {
    MemoryStore::new(StoreOptions {
        ttl: Duration::from_secs(100),
        foreign: ForeignDefaults {
            mode: 0o600,
            uid: 33,
            gid: 33,
        },
    })
}

fn mount(store: &MemoryStore) -> Arc<Fs<MemoryStore>> {
    mount_with(store, true, Duration::from_millis(600))
}

/// A mount with leases on or off; lock leases long enough that no renewal comes between the
/// steps of a test that counts round trips.
fn mount_leases(store: &MemoryStore, leases: bool) -> Arc<Fs<MemoryStore>> {
    mount_with(store, leases, Duration::from_millis(3000))
}

fn mount_with(store: &MemoryStore, leases: bool, lock_lease: Duration) -> Arc<Fs<MemoryStore>> {
    mount_opts(store, leases, false, lock_lease)
}

/// A mount with leases and `write=back`.
fn mount_write_back(store: &MemoryStore) -> Arc<Fs<MemoryStore>> {
    mount_opts(store, true, true, Duration::from_millis(3000))
}

fn mount_opts(
    store: &MemoryStore,
    leases: bool,
    write_back: bool,
    lock_lease: Duration,
) -> Arc<Fs<MemoryStore>> {
    Arc::new(Fs::new(
        store.clone(),
        FsConfig {
            max_size: 1000,
            cache_size: 1 << 20,
            dir_mode: 0o1733,
            dir_uid: 0,
            dir_gid: 0,
            lock_lease,
            leases,
            write_back,
            batch_touches: true,
        },
    ))
}

fn create_flags() -> OpenFlags {
    OpenFlags {
        create: true,
        ..OpenFlags::default()
    }
}

fn name(s: &str) -> SessionName {
    SessionName::parse(s.as_bytes()).unwrap()
}

/// What PHP's files handler does for one request that writes `data` (open O_CREAT, fstat,
/// read, ftruncate(0), pwrite, close); returns what it read.
async fn php_request(fs: &Arc<Fs<MemoryStore>>, id: &str, data: Option<&[u8]>) -> Vec<u8> {
    let (ino, fh) = match fs.lookup(ROOT_INO, id.as_bytes(), WWW.pid).await {
        Ok(a) => (a.ino, fs.open(a.ino, create_flags(), WWW).await.unwrap()),
        Err(e) => {
            assert_eq!(e.errno, libc::ENOENT);
            let (a, fh) = fs
                .create(ROOT_INO, id.as_bytes(), 0o600, create_flags(), WWW)
                .await
                .unwrap();
            (a.ino, fh)
        }
    };
    let attr = fs.getattr_open(fh).unwrap();
    assert_eq!(attr.ino, ino);
    let read = fs.read(fh, 0, attr.size as u32).unwrap();
    assert_eq!(read.len() as u64, attr.size);
    match data {
        Some(d) => {
            fs.setattr(
                ino,
                Some(fh),
                SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
                WWW,
            )
            .await
            .unwrap();
            assert_eq!(fs.write(fh, 0, d).unwrap() as usize, d.len());
        }
        None => {
            fs.setattr(
                ino,
                None,
                SetAttr {
                    atime: Some(SetTime::Now),
                    mtime: Some(SetTime::Now),
                    ..SetAttr::default()
                },
                WWW,
            )
            .await
            .unwrap();
        }
    }
    fs.flush(fh, WWW.pid).await.unwrap();
    fs.release(fh).await.unwrap();
    fs.forget(ino, 1);
    read
}

#[tokio::test]
async fn what_one_server_closed_the_other_reads_at_open() {
    let s = store();
    let (a, b) = (mount(&s), mount(&s));
    assert_eq!(php_request(&a, "sess_x", Some(b"n|i:1;")).await, b"");
    assert_eq!(php_request(&b, "sess_x", Some(b"n|i:2;")).await, b"n|i:1;");
    assert_eq!(php_request(&a, "sess_x", Some(b"n|i:3;")).await, b"n|i:2;");
    assert_eq!(php_request(&b, "sess_x", None).await, b"n|i:3;");
    assert_eq!(s.raw(&name("sess_x")).unwrap(), b"n|i:3;");
}

#[tokio::test]
async fn nothing_reaches_the_store_before_close() {
    let s = store();
    let a = mount(&s);
    let (attr, fh) = a
        .create(ROOT_INO, b"sess_y", 0o600, create_flags(), WWW)
        .await
        .unwrap();
    a.write(fh, 0, b"first").unwrap();
    a.setattr(
        attr.ino,
        Some(fh),
        SetAttr {
            size: Some(0),
            ..SetAttr::default()
        },
        WWW,
    )
    .await
    .unwrap();
    a.write(fh, 0, b"second").unwrap();
    assert_eq!(
        s.raw(&name("sess_y")).unwrap(),
        b"",
        "only the empty creation is visible"
    );
    a.flush(fh, WWW.pid).await.unwrap();
    assert_eq!(s.raw(&name("sess_y")).unwrap(), b"second");
    a.release(fh).await.unwrap();
}

#[tokio::test]
async fn an_unchanged_copy_is_validated_not_sent_again() {
    let s = store();
    let (a, b) = (mount(&s), mount(&s));
    php_request(&a, "sess_c", Some(&[b'z'; 500])).await;
    php_request(&b, "sess_c", None).await;
    let before = s.round_trips();
    // lookup + touch: two round trips. The open's check is the lookup's answer (same process,
    // same open(2)), and the content comes from b's cache.
    assert_eq!(php_request(&b, "sess_c", None).await, vec![b'z'; 500]);
    assert_eq!(s.round_trips() - before, 2);
    // A change elsewhere is seen, cache or not.
    php_request(&a, "sess_c", Some(b"new")).await;
    assert_eq!(php_request(&b, "sess_c", None).await, b"new");
}

#[tokio::test]
async fn a_phpredis_write_is_seen_despite_a_cached_copy() {
    let s = store();
    let a = mount(&s);
    php_request(&a, "sess_f", Some(b"mine")).await;
    // Same millisecond, other length.
    s.foreign_write(&name("sess_f"), b"theirs");
    assert_eq!(
        php_request(&a, "sess_f", Some(b"mine again")).await,
        b"theirs"
    );
    assert_eq!(s.raw(&name("sess_f")).unwrap(), b"mine again");
    // Same length, a later millisecond.
    s.advance(Duration::from_millis(5));
    s.foreign_write(&name("sess_f"), b"THEIRS AGAIN");
    assert_eq!(php_request(&a, "sess_f", None).await, b"THEIRS AGAIN");
}

#[tokio::test]
async fn a_session_only_phpredis_wrote_shows_the_default_owner() {
    let s = store();
    let a = mount(&s);
    s.foreign_write(&name("sess_p"), b"a|s:1:\"b\";");
    let attr = a.lookup(ROOT_INO, b"sess_p", 9).await.unwrap();
    assert_eq!((attr.uid, attr.mode, attr.size), (33, 0o600, 10));
    assert_eq!(php_request(&a, "sess_p", None).await, b"a|s:1:\"b\";");
}

#[tokio::test]
async fn touch_refreshes_the_lifetime() {
    let s = store();
    let a = mount(&s);
    php_request(&a, "sess_t", Some(b"data")).await;
    s.advance(Duration::from_secs(90));
    php_request(&a, "sess_t", None).await;
    s.advance(Duration::from_secs(90));
    assert_eq!(
        s.raw(&name("sess_t")).unwrap(),
        b"data",
        "touch kept it alive"
    );
    s.advance(Duration::from_secs(11));
    assert!(
        s.raw(&name("sess_t")).is_none(),
        "expired 100 s after the touch"
    );
    let e = a.lookup(ROOT_INO, b"sess_t", 9).await.unwrap_err();
    assert_eq!(e.errno, libc::ENOENT);
}

#[tokio::test]
async fn touch_moves_mtime_and_ctime() {
    let s = store();
    let (a, b) = (mount(&s), mount(&s));
    php_request(&a, "sess_m", Some(b"d")).await;
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let attr = a.lookup(ROOT_INO, b"sess_m", 9).await.unwrap();
    a.setattr(
        attr.ino,
        None,
        SetAttr {
            mtime: Some(SetTime::At(t)),
            atime: Some(SetTime::At(t)),
            ..SetAttr::default()
        },
        WWW,
    )
    .await
    .unwrap();
    let seen = b.lookup(ROOT_INO, b"sess_m", 9).await.unwrap();
    assert_eq!(seen.mtime, t);
    assert!(seen.ctime > t, "ctime is the time of the change");
}

#[tokio::test]
async fn exclusive_create_truncate_and_append() {
    let s = store();
    let a = mount(&s);
    php_request(&a, "sess_e", Some(b"12345")).await;
    let excl = OpenFlags {
        create: true,
        exclusive: true,
        ..OpenFlags::default()
    };
    let e = a
        .create(ROOT_INO, b"sess_e", 0o600, excl, WWW)
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EEXIST);

    let ino = a.lookup(ROOT_INO, b"sess_e", 9).await.unwrap().ino;
    let append = OpenFlags {
        append: true,
        ..OpenFlags::default()
    };
    let fh = a.open(ino, append, WWW).await.unwrap();
    a.write(fh, 0, b"67").unwrap();
    a.release(fh).await.unwrap();
    assert_eq!(s.raw(&name("sess_e")).unwrap(), b"1234567");

    let trunc = OpenFlags {
        truncate: true,
        ..OpenFlags::default()
    };
    let fh = a.open(ino, trunc, WWW).await.unwrap();
    assert_eq!(a.getattr_open(fh).unwrap().size, 0);
    a.flush(fh, WWW.pid).await.unwrap();
    a.release(fh).await.unwrap();
    assert_eq!(s.raw(&name("sess_e")).unwrap(), b"");
}

#[tokio::test]
async fn reads_past_the_end_and_sparse_writes() {
    let s = store();
    let a = mount(&s);
    let (_, fh) = a
        .create(ROOT_INO, b"sess_r", 0o600, create_flags(), WWW)
        .await
        .unwrap();
    a.write(fh, 4, b"x").unwrap();
    assert_eq!(a.read(fh, 0, 100).unwrap(), b"\0\0\0\0x");
    assert_eq!(a.read(fh, 5, 100).unwrap(), b"");
    assert_eq!(a.read(fh, 1000, 10).unwrap(), b"");
    a.release(fh).await.unwrap();
}

#[tokio::test]
async fn a_session_larger_than_max_size_is_refused_whole() {
    let s = store();
    let a = mount(&s);
    let (attr, fh) = a
        .create(ROOT_INO, b"sess_big", 0o600, create_flags(), WWW)
        .await
        .unwrap();
    a.write(fh, 0, b"ok").unwrap();
    let e = a.write(fh, 0, &[0u8; 1001]).unwrap_err();
    assert_eq!(e.errno, libc::EFBIG);
    assert!(e.message.contains("sess_big") && e.message.contains("max_size"));
    let e = a
        .setattr(
            attr.ino,
            Some(fh),
            SetAttr {
                size: Some(5000),
                ..SetAttr::default()
            },
            WWW,
        )
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EFBIG);
    a.flush(fh, WWW.pid).await.unwrap();
    a.release(fh).await.unwrap();
    assert_eq!(s.raw(&name("sess_big")).unwrap(), b"ok");
}

#[tokio::test]
async fn unlink_of_an_open_file_keeps_the_handle_and_the_name_gone() {
    let s = store();
    let a = mount(&s);
    php_request(&a, "sess_u", Some(b"old")).await;
    let ino = a.lookup(ROOT_INO, b"sess_u", 9).await.unwrap().ino;
    let fh = a.open(ino, OpenFlags::default(), WWW).await.unwrap();
    a.unlink(ROOT_INO, b"sess_u", WWW.pid).await.unwrap();
    assert_eq!(a.read(fh, 0, 10).unwrap(), b"old");
    a.write(fh, 0, b"ghost").unwrap();
    assert_eq!(a.getattr_open(fh).unwrap().nlink, 0);
    a.flush(fh, WWW.pid).await.unwrap();
    a.release(fh).await.unwrap();
    assert!(
        s.raw(&name("sess_u")).is_none(),
        "a write to an unlinked file stays gone"
    );
    let e = a.unlink(ROOT_INO, b"sess_u", WWW.pid).await.unwrap_err();
    assert_eq!(e.errno, libc::ENOENT);
}

#[tokio::test]
async fn a_delete_on_another_server_is_not_undone_by_a_late_write() {
    let s = store();
    let (a, b) = (mount(&s), mount(&s));
    php_request(&a, "sess_d", Some(b"logged in")).await;
    let ino = a.lookup(ROOT_INO, b"sess_d", 9).await.unwrap().ino;
    let fh = a.open(ino, OpenFlags::default(), WWW).await.unwrap();
    b.unlink(ROOT_INO, b"sess_d", WWW.pid).await.unwrap();
    a.write(fh, 0, b"still logged in").unwrap();
    a.flush(fh, WWW.pid).await.unwrap();
    a.release(fh).await.unwrap();
    assert!(s.raw(&name("sess_d")).is_none(), "logout on b holds");
    // ... and a new session under the same name is not overwritten by an old handle either.
    let fh = {
        php_request(&a, "sess_d", Some(b"v1")).await;
        let ino = a.lookup(ROOT_INO, b"sess_d", 9).await.unwrap().ino;
        a.open(ino, OpenFlags::default(), WWW).await.unwrap()
    };
    b.unlink(ROOT_INO, b"sess_d", WWW.pid).await.unwrap();
    php_request(&b, "sess_d", Some(b"fresh")).await;
    a.write(fh, 0, b"stale").unwrap();
    a.flush(fh, WWW.pid).await.unwrap();
    a.release(fh).await.unwrap();
    assert_eq!(s.raw(&name("sess_d")).unwrap(), b"fresh");
}

#[tokio::test]
async fn processes_of_one_server_see_each_others_writes() {
    let s = store();
    let a = mount(&s);
    php_request(&a, "sess_l", Some(b"v1")).await;
    let ino = a.lookup(ROOT_INO, b"sess_l", 9).await.unwrap().ino;
    let f1 = a.open(ino, OpenFlags::default(), WWW).await.unwrap();
    let f2 = a.open(ino, OpenFlags::default(), WWW).await.unwrap();
    a.write(f1, 0, b"v2").unwrap();
    assert_eq!(a.read(f2, 0, 10).unwrap(), b"v2");
    a.flush(f1, WWW.pid).await.unwrap();
    a.release(f1).await.unwrap();
    // A third open while f2 is still open validates against the store and sees v2.
    let f3 = a.open(ino, OpenFlags::default(), WWW).await.unwrap();
    assert_eq!(a.read(f3, 0, 10).unwrap(), b"v2");
    a.release(f2).await.unwrap();
    a.release(f3).await.unwrap();
}

#[tokio::test]
async fn store_outage_is_eio_then_recovers_without_losing_the_write() {
    let s = store();
    let a = mount(&s);
    php_request(&a, "sess_o", Some(b"before")).await;
    let ino = a.lookup(ROOT_INO, b"sess_o", 9).await.unwrap().ino;
    let fh = a.open(ino, OpenFlags::default(), WWW).await.unwrap();
    a.write(fh, 0, b"during").unwrap();
    s.set_down(true);
    let e = a.flush(fh, WWW.pid).await.unwrap_err();
    assert_eq!(e.errno, libc::EIO);
    assert!(e.message.contains("sess_o"), "{}", e.message);
    let e = a.lookup(ROOT_INO, b"sess_other", 9).await.unwrap_err();
    assert_eq!(e.errno, libc::EIO);
    s.set_down(false);
    // The release retries what the flush could not send.
    a.release(fh).await.unwrap();
    assert_eq!(s.raw(&name("sess_o")).unwrap(), b"during");
    assert_eq!(php_request(&a, "sess_o", None).await, b"during");
}

#[tokio::test]
async fn readdir_lists_every_session_once_across_pages() {
    let s = store();
    let a = mount(&s);
    let mut want = Vec::new();
    for i in 0..7 {
        let id = format!("sess_{i:03}");
        php_request(&a, &id, Some(b"x")).await;
        want.push(id);
    }
    php_request(&a, "laravelstyle", Some(b"x")).await;
    want.push("laravelstyle".into());
    want.sort();
    let fh = a.opendir(ROOT_INO).unwrap();
    let mut got = Vec::new();
    let mut offset = 0;
    loop {
        let page = a.readdir(fh, offset, 9).await.unwrap();
        let Some(last) = page.last() else { break };
        offset = last.offset;
        // Like the kernel, take only part of each answer sometimes.
        for e in page.into_iter().take(3) {
            offset = e.offset;
            got.push(e.name);
        }
    }
    a.releasedir(fh);
    assert_eq!(&got[..2], &[".".to_string(), "..".to_string()]);
    let mut files: Vec<String> = got[2..].to_vec();
    files.sort();
    assert_eq!(files, want);
    // The numbers readdir reports are the ones lookup gives.
    let fh = a.opendir(ROOT_INO).unwrap();
    let page = a.readdir(fh, 2, 9).await.unwrap();
    let first = &page[0];
    let attr = a.lookup(ROOT_INO, first.name.as_bytes(), 9).await.unwrap();
    assert_eq!(attr.ino, first.ino);
    // Rewinding lists from the start again.
    let again = a.readdir(fh, 0, 9).await.unwrap();
    assert_eq!(again[0].name, ".");
    a.releasedir(fh);
}

#[tokio::test]
async fn names_outside_the_charset_are_refused_clearly() {
    let s = store();
    let a = mount(&s);
    for bad in [&b"sess_a b"[..], b".hidden", b"sess_", "sess_é".as_bytes()] {
        let e = a
            .create(ROOT_INO, bad, 0o600, create_flags(), WWW)
            .await
            .unwrap_err();
        assert_eq!(e.errno, libc::EINVAL, "{}", String::from_utf8_lossy(bad));
        assert_eq!(
            a.lookup(ROOT_INO, bad, 9).await.unwrap_err().errno,
            libc::ENOENT
        );
    }
    let long = vec![b'a'; 256];
    let e = a
        .create(ROOT_INO, &long, 0o600, create_flags(), WWW)
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::ENAMETOOLONG);
}

#[tokio::test]
async fn owner_mode_and_permission_changes() {
    let s = store();
    let a = mount(&s);
    let (attr, fh) = a
        .create(ROOT_INO, b"sess_own", 0o644, create_flags(), WWW)
        .await
        .unwrap();
    assert_eq!((attr.uid, attr.gid, attr.mode), (33, 33, 0o644));
    a.release(fh).await.unwrap();
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    let other = Caller {
        uid: 1000,
        gid: 1000,
        pid: 3,
    };
    let e = a.setattr(attr.ino, None, chmod, other).await.unwrap_err();
    assert_eq!(e.errno, libc::EPERM);
    a.setattr(attr.ino, None, chmod, WWW).await.unwrap();
    let chown = SetAttr {
        uid: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(
        a.setattr(attr.ino, None, chown, WWW)
            .await
            .unwrap_err()
            .errno,
        libc::EPERM
    );
    a.setattr(attr.ino, None, chown, ROOT).await.unwrap();
    let b = mount(&s);
    let seen = b.lookup(ROOT_INO, b"sess_own", 9).await.unwrap();
    assert_eq!((seen.uid, seen.mode), (0, 0o600));
}

#[tokio::test]
async fn truncate_by_path_reaches_the_store_at_once() {
    let s = store();
    let a = mount(&s);
    php_request(&a, "sess_tp", Some(b"abcdef")).await;
    let ino = a.lookup(ROOT_INO, b"sess_tp", 9).await.unwrap().ino;
    let attr = a
        .setattr(
            ino,
            None,
            SetAttr {
                size: Some(2),
                ..SetAttr::default()
            },
            WWW,
        )
        .await
        .unwrap();
    assert_eq!(attr.size, 2);
    assert_eq!(s.raw(&name("sess_tp")).unwrap(), b"ab");
}

#[tokio::test]
async fn open_with_o_creat_of_a_name_deleted_elsewhere_creates_it() {
    let s = store();
    let (a, b) = (mount(&s), mount(&s));
    php_request(&a, "sess_z", Some(b"x")).await;
    let ino = a.lookup(ROOT_INO, b"sess_z", 9).await.unwrap().ino;
    b.unlink(ROOT_INO, b"sess_z", WWW.pid).await.unwrap();
    let fh = a.open(ino, create_flags(), WWW).await.unwrap();
    assert_eq!(a.getattr_open(fh).unwrap().size, 0);
    a.release(fh).await.unwrap();
    assert_eq!(s.raw(&name("sess_z")).unwrap(), b"");
    let e = a.open(ino, OpenFlags::default(), WWW).await;
    assert!(e.is_ok() || e.unwrap_err().errno == libc::ENOENT);
}

#[tokio::test]
async fn forgotten_inodes_leave_no_trace() {
    let s = store();
    let a = mount(&s);
    for i in 0..50 {
        php_request(&a, &format!("sess_{i}"), Some(b"x")).await;
    }
    let st = a.state();
    assert!(st.inodes.is_empty(), "{} inodes left", st.inodes.len());
    assert!(st.by_name.is_empty());
    assert!(st.handles.is_empty());
}

async fn open_existing(fs: &Arc<Fs<MemoryStore>>, id: &str) -> u64 {
    let ino = fs
        .lookup(ROOT_INO, id.as_bytes(), WWW.pid)
        .await
        .unwrap()
        .ino;
    fs.open(ino, OpenFlags::default(), WWW).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_lock_on_one_server_excludes_the_other_until_close() {
    let s = store();
    let (a, b) = (mount(&s), mount(&s));
    a.start().await.unwrap();
    b.start().await.unwrap();
    php_request(&a, "sess_lk", Some(b"0")).await;
    let fa = open_existing(&a, "sess_lk").await;
    a.setlk(fa, libc::F_WRLCK, true, std::process::id())
        .await
        .unwrap();
    let fb = open_existing(&b, "sess_lk").await;
    let e = b
        .setlk(fb, libc::F_WRLCK, false, std::process::id())
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EWOULDBLOCK);
    let b2 = b.clone();
    let waiting =
        tokio::spawn(async move { b2.setlk(fb, libc::F_WRLCK, true, std::process::id()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "B waits while A holds");
    a.write(fa, 0, b"1").unwrap();
    a.flush(fa, WWW.pid).await.unwrap();
    a.release(fa).await.unwrap();
    let granted = tokio::time::timeout(Duration::from_secs(2), waiting).await;
    assert!(matches!(granted, Ok(Ok(Ok(())))), "{granted:?}");
    // The lock came with A's last write.
    assert_eq!(b.read(fb, 0, 10).unwrap(), b"1");
    b.release(fb).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_under_a_lapsed_lease_is_refused() {
    let s = store();
    let (a, b) = (mount(&s), mount(&s));
    a.start().await.unwrap();
    b.start().await.unwrap();
    php_request(&a, "sess_fz", Some(b"old")).await;
    let fa = open_existing(&a, "sess_fz").await;
    a.setlk(fa, libc::F_WRLCK, true, std::process::id())
        .await
        .unwrap();
    a.write(fa, 0, b"stale").unwrap();
    // A stops renewing (as if frozen) and its lease runs out in the store's clock.
    s.advance(Duration::from_secs(5));
    let fb = open_existing(&b, "sess_fz").await;
    b.setlk(fb, libc::F_WRLCK, true, std::process::id())
        .await
        .unwrap();
    b.write(fb, 0, b"fresh").unwrap();
    b.flush(fb, WWW.pid).await.unwrap();
    b.release(fb).await.unwrap();
    let e = a.flush(fa, WWW.pid).await.unwrap_err();
    assert_eq!(e.errno, libc::EIO);
    assert!(e.message.contains("lock"), "{}", e.message);
    let _ = a.release(fa).await;
    assert_eq!(s.raw(&name("sess_fz")).unwrap(), b"fresh");
}

#[tokio::test]
async fn ls_l_stats_a_listing_page_in_one_round_trip_and_local_writes_stay_visible() {
    let s = store();
    let a = mount(&s);
    for i in 0..6 {
        php_request(&a, &format!("sess_ls{i}"), Some(b"12345")).await;
    }
    let fh = a.opendir(ROOT_INO).unwrap();
    let mut offset = 0;
    let mut names = Vec::new();
    while let Some(last) = a.readdir(fh, offset, 9).await.unwrap().last().cloned() {
        offset = last.offset;
        names.push(last.name);
    }
    a.releasedir(fh);
    let before = s.round_trips();
    for i in 0..6 {
        let attr = a
            .lookup(ROOT_INO, format!("sess_ls{i}").as_bytes(), 9)
            .await
            .unwrap();
        assert_eq!(attr.size, 5);
    }
    assert_eq!(
        s.round_trips(),
        before,
        "lookups after a listing ask the store nothing"
    );
    // Another process is not answered from the listing.
    a.lookup(ROOT_INO, b"sess_ls1", 10).await.unwrap();
    assert_eq!(s.round_trips(), before + 1);
    // A write made here is never hidden by what the listing saw.
    php_request(&a, "sess_ls0", Some(b"1234567")).await;
    let attr = a.lookup(ROOT_INO, b"sess_ls0", 9).await.unwrap();
    assert_eq!(attr.size, 7);
}

/// close(2) as the FUSE adapter answers it: flush and release inline when memory suffices.
async fn close(fs: &Arc<Fs<MemoryStore>>, fh: u64) {
    match fs.flush_now(fh) {
        Some(r) => r.unwrap(),
        None => fs.flush(fh, WWW.pid).await.unwrap(),
    }
    match fs.release_now(fh) {
        Some(r) => r.unwrap(),
        None => fs.release(fh).await.unwrap(),
    }
}

/// One PHP request as the files handler makes it, with its flock: open (creating), flock
/// LOCK_EX, fstat, read, then either ftruncate(0)+pwrite of `data` or lazy_write's touch by
/// path, close. Returns what it read.
async fn locked_request(fs: &Arc<Fs<MemoryStore>>, id: &str, data: Option<&[u8]>) -> Vec<u8> {
    let (ino, fh) = match fs.lookup(ROOT_INO, id.as_bytes(), WWW.pid).await {
        Ok(a) => (a.ino, fs.open(a.ino, create_flags(), WWW).await.unwrap()),
        Err(_) => {
            let (a, fh) = fs
                .create(ROOT_INO, id.as_bytes(), 0o600, create_flags(), WWW)
                .await
                .unwrap();
            (a.ino, fh)
        }
    };
    fs.setlk(fh, libc::F_WRLCK, true, std::process::id())
        .await
        .unwrap();
    let size = fs.getattr_open(fh).unwrap().size;
    let read = fs.read(fh, 0, size as u32).unwrap();
    let set = match data {
        Some(_) => SetAttr {
            size: Some(0),
            ..SetAttr::default()
        },
        None => SetAttr {
            atime: Some(SetTime::Now),
            mtime: Some(SetTime::Now),
            ..SetAttr::default()
        },
    };
    let by = if data.is_some() { Some(fh) } else { None };
    fs.setattr(ino, by, set, WWW).await.unwrap();
    if let Some(d) = data {
        fs.write(fh, 0, d).unwrap();
    }
    close(fs, fh).await;
    fs.forget(ino, 1);
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_requests_under_a_lease_cost_no_round_trip_but_the_write() {
    let s = store();
    let a = mount_leases(&s, true);
    a.start().await.unwrap();
    locked_request(&a, "sess_l", Some(b"v1")).await;
    let before = s.round_trips();
    assert_eq!(locked_request(&a, "sess_l", None).await, b"v1");
    assert_eq!(
        s.round_trips(),
        before,
        "an unchanged request under the lease"
    );
    assert_eq!(locked_request(&a, "sess_l", Some(b"v2")).await, b"v1");
    assert_eq!(s.round_trips(), before + 1, "a change is its write alone");
    assert_eq!(s.raw(&name("sess_l")).unwrap(), b"v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_leases_off_every_request_asks_the_store() {
    let s = store();
    let a = mount_leases(&s, false);
    a.start().await.unwrap();
    locked_request(&a, "sess_o", Some(b"v1")).await;
    let before = s.round_trips();
    assert_eq!(locked_request(&a, "sess_o", None).await, b"v1");
    assert!(s.round_trips() >= before + 3, "stat, lock, touch, release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_another_server_recalls_the_lease_first() {
    let s = store();
    let (a, b) = (mount_leases(&s, true), mount_leases(&s, true));
    a.start().await.unwrap();
    b.start().await.unwrap();
    locked_request(&a, "sess_r", Some(b"x")).await;
    tokio::time::timeout(
        Duration::from_secs(2),
        b.unlink(ROOT_INO, b"sess_r", WWW.pid),
    )
    .await
    .expect("the holder gave the session up at once")
    .unwrap();
    let e = a
        .lookup(ROOT_INO, b"sess_r", WWW.pid)
        .await
        .expect_err("the holder sees the delete");
    assert_eq!(e.errno, libc::ENOENT);
    assert!(a.counters.recalls.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlocked_write_on_another_server_is_read_by_the_lease_holder() {
    let s = store();
    let (a, b) = (mount_leases(&s, true), mount_leases(&s, true));
    a.start().await.unwrap();
    b.start().await.unwrap();
    locked_request(&a, "sess_w", Some(b"from a")).await;
    let fb = open_existing(&b, "sess_w").await;
    assert_eq!(b.read(fb, 0, 100).unwrap(), b"from a");
    b.write(fb, 0, b"FROM B").unwrap();
    tokio::time::timeout(Duration::from_secs(2), b.flush(fb, WWW.pid))
        .await
        .expect("the holder gave the session up at once")
        .unwrap();
    b.release(fb).await.unwrap();
    assert_eq!(locked_request(&a, "sess_w", None).await, b"FROM B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_touch_under_the_lease_reaches_the_store_before_the_session_is_handed_over() {
    let s = store();
    let (a, b) = (mount_leases(&s, true), mount_leases(&s, true));
    a.start().await.unwrap();
    b.start().await.unwrap();
    locked_request(&a, "sess_t", Some(b"t")).await;
    let n = name("sess_t");
    let before = s.stat(&n).await.unwrap().unwrap().meta.mtime;
    tokio::time::sleep(Duration::from_millis(5)).await;
    locked_request(&a, "sess_t", None).await;
    assert_eq!(
        s.stat(&n).await.unwrap().unwrap().meta.mtime,
        before,
        "the touch waits under the lease"
    );
    let fb = open_existing(&b, "sess_t").await;
    b.setlk(fb, libc::F_WRLCK, true, std::process::id())
        .await
        .unwrap();
    assert!(
        s.stat(&n).await.unwrap().unwrap().meta.mtime > before,
        "sent before the lock changed hands"
    );
    b.release(fb).await.unwrap();
}

/// What the daemon asked of the kernel's caches: invalidations (inode numbers) and pages
/// given (inode, content).
#[derive(Default)]
struct KernelLog(Mutex<Vec<u64>>, Mutex<Vec<(u64, Vec<u8>)>>);

impl KernelCache for KernelLog {
    fn invalidate(&self, ino: u64) -> std::io::Result<()> {
        self.0.lock().unwrap().push(ino);
        Ok(())
    }

    fn invalidate_pages(&self, ino: u64) -> std::io::Result<()> {
        self.0.lock().unwrap().push(ino);
        Ok(())
    }

    fn store_pages(&self, ino: u64, data: &[u8]) -> std::io::Result<()> {
        self.1.lock().unwrap().push((ino, data.to_vec()));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_caches_a_leased_file_until_another_server_takes_it() {
    let s = store();
    let (a, b) = (mount_leases(&s, true), mount_leases(&s, true));
    let kernel = Arc::new(KernelLog::default());
    a.set_kernel(kernel.clone());
    a.start().await.unwrap();
    b.start().await.unwrap();
    locked_request(&a, "sess_k", Some(b"k")).await;
    let attr = a.lookup(ROOT_INO, b"sess_k", WWW.pid).await.unwrap();
    assert!(!attr.cache_for.is_zero(), "cached while leased");
    assert!(attr.cache_for <= KERNEL_TTL);
    assert!(kernel.0.lock().unwrap().is_empty());
    let fb = open_existing(&b, "sess_k").await;
    b.setlk(fb, libc::F_WRLCK, true, std::process::id())
        .await
        .unwrap();
    assert_eq!(
        *kernel.0.lock().unwrap(),
        vec![attr.ino],
        "invalidated before the lock changed hands"
    );
    let again = a.getattr(attr.ino, WWW.pid).await.unwrap();
    assert!(
        again.cache_for.is_zero(),
        "not cached once the lease is gone"
    );
    b.release(fb).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_wait_for_a_lease_leaves_no_place_in_the_queue_behind() {
    let s = store();
    let (a, b) = (mount(&s), mount(&s));
    a.start().await.unwrap();
    b.start().await.unwrap();
    locked_request(&a, "sess_st", Some(b"x")).await;
    // A's PHP request holds the session.
    let fa = open_existing(&a, "sess_st").await;
    a.setlk(fa, libc::F_WRLCK, true, std::process::id())
        .await
        .unwrap();
    // B's unlink waits for A; its process is gone (counts as signalled): EINTR.
    let e = b.unlink(ROOT_INO, b"sess_st", u32::MAX).await.unwrap_err();
    assert_eq!(e.errno, libc::EINTR);
    a.release(fa).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // B's place among the openers is gone: A's next request is not held up by it (it would
    // wait for its expiry, two lock leases = 1.2 s).
    let t = Instant::now();
    tokio::time::timeout(
        Duration::from_millis(600),
        locked_request(&a, "sess_st", None),
    )
    .await
    .expect("A's next locked request was held up");
    assert!(t.elapsed() < Duration::from_millis(600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_is_never_served_as_the_stored_content() {
    for leases in [false, true] {
        let s = store();
        let a = mount_leases(&s, leases);
        a.start().await.unwrap();
        locked_request(&a, "sess_fc", Some(b"old")).await;
        let fa = open_existing(&a, "sess_fc").await;
        a.setlk(fa, libc::F_WRLCK, true, std::process::id())
            .await
            .unwrap();
        a.write(fa, 0, b"new").unwrap();
        // The store's clock passes the lock's lease: the write is fenced.
        s.advance(Duration::from_secs(5));
        let e = a.flush(fa, WWW.pid).await.unwrap_err();
        assert_eq!(e.errno, libc::EIO);
        let _ = a.release(fa).await;
        assert_eq!(s.raw(&name("sess_fc")).unwrap(), b"old");
        let fh = open_existing(&a, "sess_fc").await;
        let got = a.read(fh, 0, 100).unwrap();
        a.release(fh).await.unwrap();
        assert_eq!(got, b"old", "served the refused write (leases {leases})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlink_waits_a_bounded_time_for_a_busy_lease_holder() {
    let s = store();
    let (a, b) = (mount_leases(&s, true), mount_leases(&s, true));
    a.start().await.unwrap();
    b.start().await.unwrap();
    locked_request(&a, "sess_ub", Some(b"x")).await;
    let fa = open_existing(&a, "sess_ub").await;
    a.setlk(fa, libc::F_WRLCK, true, std::process::id())
        .await
        .unwrap();
    // A's request holds the session for as long as it likes; B's delete goes through after
    // UNLINK_RECALL_BOUND, and A then serves nothing of it from memory.
    let t = Instant::now();
    b.unlink(ROOT_INO, b"sess_ub", WWW.pid).await.unwrap();
    assert!(t.elapsed() >= UNLINK_RECALL_BOUND);
    assert!(t.elapsed() < UNLINK_RECALL_BOUND * 5);
    a.write(fa, 0, b"late").unwrap();
    a.flush(fa, WWW.pid).await.unwrap();
    a.release(fa).await.unwrap();
    assert!(
        s.raw(&name("sess_ub")).is_none(),
        "a late write does not bring it back"
    );
    let e = a
        .lookup(ROOT_INO, b"sess_ub", 4242)
        .await
        .expect_err("gone for A too");
    assert_eq!(e.errno, libc::ENOENT);
}

/// Waits until `fs` serves no other server's read and sends nothing in the background, so
/// that its next close under the lease is written back (not through).
async fn settled(fs: &Arc<Fs<MemoryStore>>) {
    let t = Instant::now();
    while fs
        .state()
        .inodes
        .values()
        .any(|i| i.flushing > 0 || i.write_back)
    {
        assert!(t.elapsed() < Duration::from_secs(3), "never settled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until a write-back brought `want` to the store.
async fn landed(s: &MemoryStore, id: &str, want: &[u8]) {
    let t = Instant::now();
    while s.raw(&name(id)).as_deref() != Some(want) {
        assert!(t.elapsed() < Duration::from_secs(3), "{id}: never landed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_back_another_server_reads_what_the_holder_closed_before_it_landed() {
    let s = store();
    let (a, b) = (mount_write_back(&s), mount_write_back(&s));
    a.start().await.unwrap();
    b.start().await.unwrap();
    locked_request(&a, "sess_wb", Some(b"v1")).await;
    landed(&s, "sess_wb", b"v1").await;
    settled(&a).await;
    // Every write now takes 300 ms to land: A's close does not wait for it, B's open must.
    s.set_write_delay(Duration::from_millis(300));
    let t = Instant::now();
    locked_request(&a, "sess_wb", Some(b"v2")).await;
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "close waited for the write"
    );
    assert_eq!(s.raw(&name("sess_wb")).unwrap(), b"v1", "not landed yet");
    let fb = open_existing(&b, "sess_wb").await;
    assert_eq!(b.read(fb, 0, 100).unwrap(), b"v2", "a stale read");
    b.release(fb).await.unwrap();
    assert!(a.status_text().contains("written_back=2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_back_closes_made_while_a_write_is_on_its_way_coalesce() {
    let s = store();
    let a = mount_write_back(&s);
    a.start().await.unwrap();
    locked_request(&a, "sess_co", Some(b"0")).await;
    landed(&s, "sess_co", b"0").await;
    settled(&a).await;
    // Long enough that the five requests (microseconds each) all come while the first write
    // is on its way, however loaded the machine running the tests.
    s.set_write_delay(Duration::from_millis(400));
    let before = s.round_trips();
    for i in 1..=5u8 {
        let v = [b'0' + i];
        assert_eq!(
            locked_request(&a, "sess_co", Some(&v)).await,
            [b'0' + i - 1],
            "the next request reads the last close, landed or not"
        );
    }
    landed(&s, "sess_co", b"5").await;
    // The first write, then one for the four closes made meanwhile (and at most one lock
    // renewal, which the store counts too); five without coalescing.
    let writes = s.round_trips() - before;
    assert!(writes <= 3, "{writes} round trips for 5 closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_back_the_lease_is_given_up_only_once_the_write_landed() {
    let s = store();
    let (a, b) = (mount_write_back(&s), mount_write_back(&s));
    a.start().await.unwrap();
    b.start().await.unwrap();
    locked_request(&a, "sess_wl", Some(b"a1")).await;
    landed(&s, "sess_wl", b"a1").await;
    settled(&a).await;
    s.set_write_delay(Duration::from_millis(300));
    locked_request(&a, "sess_wl", Some(b"a2")).await;
    // B locks without reading first (its lock carries the content check).
    assert_eq!(locked_request(&b, "sess_wl", Some(b"b1")).await, b"a2");
    s.set_write_delay(Duration::ZERO);
    assert_eq!(locked_request(&a, "sess_wl", None).await, b"b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_back_a_read_elsewhere_waits_for_the_closes_not_for_the_holders_request() {
    let s = store();
    let (a, b) = (mount_write_back(&s), mount_write_back(&s));
    a.start().await.unwrap();
    b.start().await.unwrap();
    locked_request(&a, "sess_rb", Some(b"v1")).await;
    landed(&s, "sess_rb", b"v1").await;
    settled(&a).await;
    s.set_write_delay(Duration::from_millis(200));
    locked_request(&a, "sess_rb", Some(b"v2")).await;
    // A's next request is under way: locked, truncated, half written, not closed.
    let ino = a.lookup(ROOT_INO, b"sess_rb", WWW.pid).await.unwrap().ino;
    let fa = a.open(ino, OpenFlags::default(), WWW).await.unwrap();
    a.setlk(fa, libc::F_WRLCK, true, std::process::id())
        .await
        .unwrap();
    let cut = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    a.setattr(ino, Some(fa), cut, WWW).await.unwrap();
    a.write(fa, 0, b"par").unwrap();
    let t = Instant::now();
    let fb = tokio::time::timeout(Duration::from_secs(2), open_existing(&b, "sess_rb"))
        .await
        .expect("B's open waited for A's request to end");
    assert_eq!(
        b.read(fb, 0, 100).unwrap(),
        b"v2",
        "B reads A's last close, not less, not its unclosed writes"
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    b.release(fb).await.unwrap();
    a.write(fa, 3, b"tial").unwrap();
    close(&a, fa).await;
    s.set_write_delay(Duration::ZERO);
    let fb = open_existing(&b, "sess_rb").await;
    assert_eq!(b.read(fb, 0, 100).unwrap(), b"partial");
    b.release(fb).await.unwrap();
    let status = a.status_text();
    let asked: u64 = status
        .split_once("read_recalls=")
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(asked >= 2, "each open on B asked A: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_keeps_cached_pages_only_under_the_lease_and_only_for_content_it_saw() {
    let s = store();
    let (a, b) = (mount_leases(&s, true), mount_leases(&s, true));
    let kernel = Arc::new(KernelLog::default());
    a.set_kernel(kernel.clone());
    a.start().await.unwrap();
    b.start().await.unwrap();
    locked_request(&a, "sess_pc", Some(b"one")).await;
    let ino = a.lookup(ROOT_INO, b"sess_pc", WWW.pid).await.unwrap().ino;
    // Under the lease, nothing but this server's own writes (through the kernel) changed it.
    let fh = a.open(ino, OpenFlags::default(), WWW).await.unwrap();
    assert_eq!(a.page_cache(fh), PageCache::Keep);
    a.release(fh).await.unwrap();
    let append = OpenFlags {
        append: true,
        ..OpenFlags::default()
    };
    let fh = a.open(ino, append, WWW).await.unwrap();
    assert_eq!(
        a.page_cache(fh),
        PageCache::Direct,
        "O_APPEND's offset is the daemon's"
    );
    a.release(fh).await.unwrap();
    let fh = a.open(ino, OpenFlags::default(), WWW).await.unwrap();
    assert_eq!(a.page_cache(fh), PageCache::Fresh, "after an append");
    a.release(fh).await.unwrap();
    // B takes the session and changes it; A's next open is not under a lease: fresh pages.
    locked_request(&b, "sess_pc", Some(b"two, longer")).await;
    let fh = a.open(ino, OpenFlags::default(), WWW).await.unwrap();
    assert_eq!(a.page_cache(fh), PageCache::Fresh);
    assert_eq!(a.read(fh, 0, 100).unwrap(), b"two, longer");
    a.release(fh).await.unwrap();
    // A opens, B changes the session meanwhile (unlocked), A's flock brings the new content:
    // the kernel's pages of the old one are dropped before the lock is granted.
    let fa = a.open(ino, OpenFlags::default(), WWW).await.unwrap();
    let fb = open_existing(&b, "sess_pc").await;
    b.write(fb, 0, b"THREE").unwrap();
    b.flush(fb, WWW.pid).await.unwrap();
    b.release(fb).await.unwrap();
    kernel.0.lock().unwrap().clear();
    a.setlk(fa, libc::F_WRLCK, true, std::process::id())
        .await
        .unwrap();
    assert!(
        kernel.0.lock().unwrap().contains(&ino),
        "pages dropped at the grant"
    );
    assert_eq!(a.read(fa, 0, 100).unwrap(), b"THREElonger");
    a.release(fa).await.unwrap();
}

/// The 'served' mark FLUSHED leaves for a reader is per server, not per open: an open on
/// that server that begins after the holder's next write-back close must still not read the
/// content from before that close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_back_a_served_mark_does_not_let_a_later_open_skip_the_holders_close() {
    let s = store();
    let (a, b) = (mount_write_back(&s), mount_write_back(&s));
    a.start().await.unwrap();
    b.start().await.unwrap();
    let n = name("sess_fm");
    locked_request(&a, "sess_fm", Some(b"v1")).await;
    landed(&s, "sess_fm", b"v1").await;
    settled(&a).await;
    // Process 1 on B begins an open: its LOAD finds A's write-back lease and asks A to send.
    let asker = Asker {
        owner: b.owner(),
        lease: Duration::from_millis(3000),
    };
    let first = s.load(&n, None, asker, false).await.unwrap();
    assert!(matches!(first, Loaded::Recalled(_)), "{first:?}");
    // A answers (nothing pending): B is marked served. Process 1's retry is still on its way.
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A's next request closes v2, acknowledged before it lands.
    s.set_write_delay(Duration::from_millis(300));
    locked_request(&a, "sess_fm", Some(b"v2")).await;
    // Process 2 on B opens after that close returned: it must read v2.
    let fb = open_existing(&b, "sess_fm").await;
    assert_eq!(
        b.read(fb, 0, 100).unwrap(),
        b"v2",
        "an open that began after A's close read what that close replaced"
    );
    b.release(fb).await.unwrap();
}

/// A write-back send that fails (a Redis timeout) while another server waits to read: the
/// reader must not be let go with the content from before the holder's acknowledged close,
/// and that close must still land (the lease lasts; write_back retries, flush_for_readers
/// must too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_back_a_failed_send_for_a_reader_neither_lets_it_read_stale_nor_loses_the_close()
{
    let s = store();
    let (a, b) = (mount_write_back(&s), mount_write_back(&s));
    a.start().await.unwrap();
    b.start().await.unwrap();
    locked_request(&a, "sess_ff", Some(b"v1")).await;
    landed(&s, "sess_ff", b"v1").await;
    settled(&a).await;
    s.set_write_delay(Duration::from_millis(200));
    // The next two content writes time out: the write-back task's and the one sent for B.
    s.fail_writes(2);
    locked_request(&a, "sess_ff", Some(b"v2")).await;
    let fb = tokio::time::timeout(Duration::from_secs(5), open_existing(&b, "sess_ff"))
        .await
        .unwrap();
    let read = b.read(fb, 0, 100).unwrap();
    b.release(fb).await.unwrap();
    s.set_write_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = s.raw(&name("sess_ff")).unwrap();
    assert!(
        read == b"v2" && stored == b"v2",
        "B read {:?}, the store holds {:?}: A's acknowledged close was {}",
        String::from_utf8_lossy(&read),
        String::from_utf8_lossy(&stored),
        if stored == b"v2" {
            "read stale"
        } else {
            "lost"
        }
    );
}

/// The lease is given up only once pending writes landed (README): a send that fails in
/// release_cluster's persist must not be followed by the lock's release, or the next holder
/// is granted the lock with the content from before the acknowledged close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_back_a_failed_send_at_release_does_not_hand_the_lock_over_without_the_close() {
    let s = store();
    let (a, b) = (mount_write_back(&s), mount_write_back(&s));
    a.start().await.unwrap();
    b.start().await.unwrap();
    locked_request(&a, "sess_fr", Some(b"v1")).await;
    landed(&s, "sess_fr", b"v1").await;
    // B opens now (reads v1: fine, nothing was closed after) and locks later.
    let fb = open_existing(&b, "sess_fr").await;
    settled(&a).await;
    s.set_write_delay(Duration::from_millis(200));
    // The write-back task's send and the release's persist both time out once.
    s.fail_writes(2);
    locked_request(&a, "sess_fr", Some(b"v2")).await;
    tokio::time::timeout(
        Duration::from_secs(5),
        b.setlk(fb, libc::F_WRLCK, true, std::process::id()),
    )
    .await
    .unwrap()
    .unwrap();
    let read = b.read(fb, 0, 100).unwrap();
    close(&b, fb).await;
    assert_eq!(
        String::from_utf8_lossy(&read),
        "v2",
        "B was granted the lock without A's acknowledged close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_last_close_under_a_lease_the_kernel_is_given_the_whole_content() {
    let s = store();
    let a = mount_leases(&s, true);
    let kernel = Arc::new(KernelLog::default());
    a.set_kernel(kernel.clone());
    a.start().await.unwrap();
    locked_request(&a, "sess_gp", Some(b"first")).await;
    locked_request(&a, "sess_gp", Some(b"second")).await;
    let ino = a.lookup(ROOT_INO, b"sess_gp", WWW.pid).await.unwrap().ino;
    let t = Instant::now();
    while !kernel
        .1
        .lock()
        .unwrap()
        .contains(&(ino, b"second".to_vec()))
    {
        assert!(t.elapsed() < Duration::from_secs(2), "pages never given");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // While pages are being given, an open must not race its writes with them.
    a.state().inodes.get_mut(&ino).unwrap().storing = true;
    let fh = a.open(ino, OpenFlags::default(), WWW).await.unwrap();
    assert_eq!(a.page_cache(fh), PageCache::Direct);
    a.release(fh).await.unwrap();
    a.state().inodes.get_mut(&ino).unwrap().storing = false;
    let fh = a.open(ino, OpenFlags::default(), WWW).await.unwrap();
    assert_eq!(
        a.page_cache(fh),
        PageCache::Fresh,
        "pages given during that open are not trusted"
    );
    a.release(fh).await.unwrap();
}
