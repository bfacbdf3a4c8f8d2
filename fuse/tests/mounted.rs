//! Real FUSE mounts over temporary directories, in-process, so the tests can publish cluster
//! state and look inside the filesystem. Each mount is unmounted by `MountedShim`'s drop, also
//! when a test fails. Needs root and /dev/fuse.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use litefs_py_fuse::{
    ClusterView, DataPath, MountOptions, MountedShim, Op, Primary, StateHandle, mount,
};

struct Fixture {
    shim: Option<MountedShim>,
    lower: PathBuf,
    mnt: PathBuf,
    state: StateHandle,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(data_path: DataPath) -> Self {
        Self::with(data_path, true)
    }

    fn with(data_path: DataPath, kernel_passthrough: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&lower).unwrap();
        fs::create_dir(&mnt).unwrap();
        let state = StateHandle::new(ClusterView::single_node("node-a"));
        let mut opts = MountOptions::new(&lower, &mnt);
        opts.data_path = data_path;
        opts.threads = 2;
        opts.kernel_passthrough = kernel_passthrough;
        let shim = mount(&opts, state.clone()).expect("mount");
        Fixture {
            shim: Some(shim),
            lower,
            mnt,
            state,
            _dir: dir,
        }
    }

    fn shim(&self) -> &MountedShim {
        self.shim.as_ref().unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(shim) = self.shim.take() {
            let _ = shim.unmount();
        }
    }
}

fn read_whole(path: &Path, chunk: usize) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

fn drop_kernel_caches() {
    // Evicting dentries and inodes makes the kernel send FORGET for everything it held.
    let _ = fs::write("/proc/sys/vm/drop_caches", "2");
}

#[test]
fn virtual_files_are_whole_renderings_while_the_state_flips() {
    let fx = Fixture::new(DataPath::Passthrough);
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let state = fx.state.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut flips = 0u64;
            let mut view = ClusterView::single_node("node-a");
            while !stop.load(Ordering::Relaxed) {
                view.primary = match flips % 3 {
                    0 => Primary::ThisNode,
                    1 => Primary::Other {
                        hostname: "node-b".into(),
                    },
                    _ => Primary::Unknown,
                };
                view.term = flips;
                state.publish(view.clone());
                flips += 1;
                std::thread::sleep(Duration::from_micros(50));
            }
            flips
        })
    };
    let readers: Vec<_> = (0..8)
        .map(|t| {
            let mnt = fx.mnt.clone();
            std::thread::spawn(move || {
                let mut seen = [0usize; 3];
                for i in 0..1000 {
                    // Small chunks too: a reader that reads piecewise still gets one rendering.
                    let chunk = if (i + t) % 2 == 0 { 4096 } else { 3 };
                    let role = read_whole(&mnt.join(".role"), chunk).unwrap();
                    match &role[..] {
                        b"primary\n" => seen[0] += 1,
                        b"replica\n" => seen[1] += 1,
                        b"electing\n" => seen[2] += 1,
                        other => panic!("torn .role: {:?}", String::from_utf8_lossy(other)),
                    }
                    match read_whole(&mnt.join(".primary"), chunk) {
                        Ok(p) => assert!(p == b"node-b\n" || p.is_empty(), "torn .primary: {p:?}"),
                        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound),
                    }
                    let health = read_whole(&mnt.join(".health"), chunk).unwrap();
                    assert_eq!(health.last(), Some(&b'\n'));
                    let v: serde_json::Value = serde_json::from_slice(&health).expect("valid JSON");
                    let consistent = match v["role"].as_str().unwrap() {
                        "primary" => v["primary"] == "node-a",
                        "replica" => v["primary"] == "node-b",
                        "electing" => v["primary"].is_null(),
                        other => panic!("role {other}"),
                    };
                    assert!(consistent, "inconsistent .health: {v}");
                }
                seen
            })
        })
        .collect();
    let mut totals = [0usize; 3];
    for r in readers {
        let seen = r.join().expect("reader");
        for i in 0..3 {
            totals[i] += seen[i];
        }
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    assert!(flips > 100, "the state flipped only {flips} times");
    assert_eq!(totals.iter().sum::<usize>(), 8000);
    assert!(
        totals.iter().all(|&n| n > 0),
        "every role was observed: {totals:?}"
    );
}

#[test]
fn virtual_files_are_read_only_and_never_reach_the_lower_dir() {
    let fx = Fixture::new(DataPath::Passthrough);
    let errno = |e: std::io::Error| e.raw_os_error().unwrap();
    assert_eq!(
        errno(
            File::options()
                .write(true)
                .open(fx.path(".role"))
                .unwrap_err()
        ),
        libc::EACCES
    );
    assert_eq!(
        errno(
            File::options()
                .append(true)
                .open(fx.path(".health"))
                .unwrap_err()
        ),
        libc::EACCES
    );
    assert_eq!(
        errno(fs::remove_file(fx.path(".role")).unwrap_err()),
        libc::EPERM
    );
    assert_eq!(
        errno(fs::rename(fx.path(".role"), fx.path("x")).unwrap_err()),
        libc::EPERM
    );
    fs::write(fx.path("x"), b"1").unwrap();
    assert_eq!(
        errno(fs::rename(fx.path("x"), fx.path(".health")).unwrap_err()),
        libc::EPERM
    );
    let chmod = fs::set_permissions(
        fx.path(".role"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    );
    assert_eq!(errno(chmod.unwrap_err()), libc::EPERM);
    // On the primary `.primary` does not exist, and cannot be created either.
    assert_eq!(
        errno(File::open(fx.path(".primary")).unwrap_err()),
        libc::ENOENT
    );
    assert_eq!(
        errno(File::create(fx.path(".primary")).unwrap_err()),
        libc::EPERM
    );
    let c = std::ffi::CString::new(fx.path(".role").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 0) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EACCES)
    );
    let lower: Vec<_> = fs::read_dir(&fx.lower)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(lower, vec![std::ffi::OsString::from("x")]);
    let listed: Vec<_> = fs::read_dir(&fx.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(listed.contains(&".role".to_string()) && listed.contains(&".health".to_string()));
    assert!(!listed.contains(&".primary".to_string()));
}

#[test]
fn lookups_and_forgets_leak_neither_inodes_nor_fds() {
    let fx = Fixture::new(DataPath::Passthrough);
    let files = 1000;
    for i in 0..files {
        fs::write(fx.lower.join(format!("f{i}")), b"x").unwrap();
    }
    drop_kernel_caches();
    let fds_before = open_fds();
    let (inodes_before, _) = fx.shim().fs().counts();
    // 1M lookups: entry TTLs are zero, so every stat is a LOOKUP (or GETATTR) round trip.
    let start = Instant::now();
    let mut n = 0u64;
    while n < 1_000_000 {
        for i in 0..files {
            let md = fs::symlink_metadata(fx.mnt.join(format!("f{}", i))).unwrap();
            assert_eq!(md.len(), 1);
            n += 1;
        }
    }
    let (inodes_during, _) = fx.shim().fs().counts();
    assert!(
        inodes_during >= files,
        "inodes while referenced: {inodes_during}"
    );
    eprintln!("{n} lookups in {:?}", start.elapsed());
    drop_kernel_caches();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (inodes, handles) = fx.shim().fs().counts();
        if inodes <= inodes_before + 1 && handles == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "inodes not forgotten: {inodes} (before {inodes_before}), handles {handles}"
        );
        std::thread::sleep(Duration::from_millis(50));
        drop_kernel_caches();
    }
    assert!(
        open_fds() <= fds_before + 2,
        "fds: {} before {}",
        open_fds(),
        fds_before
    );
}

#[test]
fn inode_numbers_are_stable_and_match_the_lower_dir() {
    let fx = Fixture::new(DataPath::Passthrough);
    fs::write(fx.lower.join("a"), b"1").unwrap();
    let lower_ino = fs::metadata(fx.lower.join("a")).unwrap().ino();
    let first = fs::metadata(fx.path("a")).unwrap().ino();
    drop_kernel_caches();
    let again = fs::metadata(fx.path("a")).unwrap().ino();
    assert_eq!(first, lower_ino);
    assert_eq!(first, again);
    fs::rename(fx.path("a"), fx.path("b")).unwrap();
    assert_eq!(fs::metadata(fx.path("b")).unwrap().ino(), lower_ino);
}

fn setlk(f: &File, typ: i32, start: i64, len: i64) -> std::io::Result<()> {
    // SAFETY: flock is plain data.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: valid fd and struct.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Lock fds are pooled: many owners that lock one after another reuse a bounded set of lower
/// fds (what LiteFS sees as owners), and an owner's close releases its locks below.
#[test]
fn lock_fds_are_pooled_and_released_on_close() {
    let fx = Fixture::new(DataPath::Passthrough);
    fs::write(fx.path("db"), b"data").unwrap();
    let ino = fs::metadata(fx.path("db")).unwrap().ino();
    // One process, many sequential "connections": each opens, locks, unlocks, closes.
    for _ in 0..200 {
        let f = File::options()
            .read(true)
            .write(true)
            .open(fx.path("db"))
            .unwrap();
        setlk(&f, libc::F_WRLCK, 0x4000_0000, 1).unwrap();
        setlk(&f, libc::F_UNLCK, 0, 0).unwrap();
    }
    let (owners, pooled) = fx.shim().fs().lock_fd_counts(ino).unwrap();
    assert_eq!(owners, 0);
    assert_eq!(pooled, 1, "one lower lock fd served all 200 connections");

    // A lock held through the mount is visible on the lower file, and a close drops it.
    let held = File::options()
        .read(true)
        .write(true)
        .open(fx.path("db"))
        .unwrap();
    setlk(&held, libc::F_WRLCK, 100, 1).unwrap();
    let lower = File::options()
        .read(true)
        .write(true)
        .open(fx.lower.join("db"))
        .unwrap();
    assert!(
        setlk(&lower, libc::F_WRLCK, 100, 1).is_err(),
        "the lock reached the lower file"
    );
    let other = File::open(fx.path("db")).unwrap();
    drop(other); // POSIX: closing any fd of the file releases the process's locks on it
    setlk(&lower, libc::F_WRLCK, 100, 1).expect("released by close");
    drop(held);
}

/// A client blocked in F_SETLKW must not hold a FUSE worker (one worker here, and the mount
/// keeps answering), is woken when the holder lets go, and can be interrupted by a signal or
/// killed while it waits (fuser does not deliver FUSE_INTERRUPT; the shim polls for signals).
#[test]
fn blocking_locks_wait_off_the_workers_and_can_be_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let (lower, mnt) = (dir.path().join("lower"), dir.path().join("mnt"));
    fs::create_dir(&lower).unwrap();
    fs::create_dir(&mnt).unwrap();
    let mut opts = MountOptions::new(&lower, &mnt);
    opts.threads = 1;
    let shim = mount(&opts, StateHandle::new(ClusterView::single_node("n"))).unwrap();
    let file = mnt.join("locked");
    fs::write(&file, b"x").unwrap();
    let holder = File::options().read(true).write(true).open(&file).unwrap();
    setlk(&holder, libc::F_WRLCK, 0, 0).unwrap();

    let waiter = |script: &str| {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&file)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3")
    };
    let wait_exit = |child: &mut std::process::Child, within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // 1. Granted when the holder unlocks; meanwhile the single worker still serves requests.
    let mut granted = waiter(
        "import fcntl,sys; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX); print('got it')",
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        granted.try_wait().unwrap().is_none(),
        "the waiter must block while the lock is held"
    );
    let t = Instant::now();
    for _ in 0..50 {
        fs::metadata(&file).unwrap();
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the mount stalled while a client waited for a lock"
    );
    setlk(&holder, libc::F_UNLCK, 0, 0).unwrap();
    let status = wait_exit(&mut granted, Duration::from_secs(5)).expect("granted after unlock");
    assert!(status.success());
    setlk(&holder, libc::F_WRLCK, 0, 0).expect("the waiter's lock went with its close");

    // 2. A signal whose handler raises interrupts the wait (EINTR below Python's retry).
    let mut alarmed = waiter(
        "import fcntl,signal,sys\n\
         def h(*a): raise TimeoutError\n\
         signal.signal(signal.SIGALRM, h); signal.alarm(1)\n\
         f=open(sys.argv[1],'r+')\n\
         try:\n    fcntl.lockf(f, fcntl.LOCK_EX); sys.exit(3)\n\
         except TimeoutError: sys.exit(7)",
    );
    let status = wait_exit(&mut alarmed, Duration::from_secs(5)).expect("interrupted by SIGALRM");
    assert_eq!(status.code(), Some(7));
    // The interrupted wait was answered by its waiter thread, and counted as a failed SETLKW.
    let setlkw = shim.metrics().stats(Op::Setlkw);
    assert!(setlkw.requests >= 1 && setlkw.errors >= 1, "{setlkw:?}");

    // 3. A killed waiter dies instead of hanging in D state.
    let mut killed =
        waiter("import fcntl,sys; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX)");
    std::thread::sleep(Duration::from_millis(300));
    killed.kill().unwrap();
    assert!(
        wait_exit(&mut killed, Duration::from_secs(5)).is_some(),
        "killed waiter did not exit"
    );

    // The holder still holds; after it lets go, anyone can lock.
    let other = File::options()
        .read(true)
        .write(true)
        .open(lower.join("locked"))
        .unwrap();
    assert!(setlk(&other, libc::F_WRLCK, 0, 0).is_err());
    drop(holder);
    setlk(&other, libc::F_WRLCK, 0, 0).unwrap();
    drop(other);
    shim.unmount().unwrap();
}

/// Without kernel passthrough (kernels older than 6.9, or no CAP_SYS_ADMIN) the shim serves
/// data itself with direct I/O: no page cache of its own, and mmap still works (SQLite's WAL
/// index), so WAL mode runs; a change made on the lower file is seen at once.
#[test]
fn direct_io_fallback_runs_sqlite_wal_without_caching() {
    let fx = Fixture::with(DataPath::Passthrough, false);
    let db = fx.path("wal.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.pragma_update(None, "journal_mode", "wal").unwrap();
        c.execute("create table t(id integer primary key, w int, i int)", [])
            .unwrap();
    }
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                let c = rusqlite::Connection::open(&db).unwrap();
                c.busy_timeout(Duration::from_secs(10)).unwrap();
                for i in 0..200 {
                    c.execute("insert into t(w, i) values (?1, ?2)", (w, i))
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let c = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = c
        .query_row("select count(*) from t", [], |r| r.get(0))
        .unwrap();
    let ok: String = c
        .query_row("pragma integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!((n, ok.as_str()), (800, "ok"));
    assert_eq!(
        fx.shim().fs().passthrough_state(),
        litefs_py_fuse::PassthroughState::Unavailable
    );

    fs::write(fx.path("plain"), b"through the mount").unwrap();
    assert_eq!(
        fs::read(fx.lower.join("plain")).unwrap(),
        b"through the mount"
    );
    let mut held = File::open(fx.path("plain")).unwrap();
    fs::write(fx.lower.join("plain"), b"changed below!!!!").unwrap();
    let mut seen = Vec::new();
    held.read_to_end(&mut seen).unwrap();
    assert_eq!(
        seen, b"changed below!!!!",
        "no stale page cache in the shim"
    );
}
