//! The write gate and the `primary` expiry, on a real FUSE mount over a plain dir with real
//! SQLite: the test publishes the views a stalled or frozen primary would leave behind.
//! Needs root and /dev/fuse.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use litefs_py_fuse::state_page::{self, PageRead};
use litefs_py_fuse::{
    ClusterView, MountOptions, MountedShim, Primary, Role, StateHandle, boottime_ns, mount,
};
use rusqlite::{Connection, ErrorCode};

struct Mounted {
    _shim: MountedShim,
    mnt: PathBuf,
    state: StateHandle,
    _dir: tempfile::TempDir,
}

fn mounted(view: ClusterView) -> Mounted {
    let dir = tempfile::tempdir().unwrap();
    let (lower, mnt) = (dir.path().join("lower"), dir.path().join("mnt"));
    fs::create_dir(&lower).unwrap();
    fs::create_dir(&mnt).unwrap();
    let state = StateHandle::new(view);
    let mut opts = MountOptions::new(&lower, &mnt);
    opts.threads = 2;
    let shim = mount(&opts, state.clone()).expect("mount");
    Mounted {
        _shim: shim,
        mnt,
        state,
        _dir: dir,
    }
}

fn open(path: &Path, journal: &str) -> Connection {
    let c = Connection::open(path).unwrap();
    // No busy wait: a refused write lock shows at once.
    c.busy_timeout(Duration::ZERO).unwrap();
    c.pragma_update(None, "journal_mode", journal).unwrap();
    c
}

fn insert(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES ('x'); COMMIT;")
}

fn count(c: &Connection) -> i64 {
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

/// A primary whose answer ran out (published with a deadline that has passed, as a publisher
/// that stalled right after publishing leaves it).
fn expired_primary() -> ClusterView {
    let mut v = ClusterView::single_node("node-a");
    v.primary_until = Some(Instant::now());
    v
}

fn code(e: &rusqlite::Error) -> Option<ErrorCode> {
    e.sqlite_error_code()
}

#[test]
fn an_expired_primary_takes_no_write_lock_and_still_reads() {
    let m = mounted(ClusterView::single_node("node-a"));
    let (wal_db, rb_db) = (m.mnt.join("wal.db"), m.mnt.join("rollback.db"));
    for (db, journal) in [(&wal_db, "wal"), (&rb_db, "delete")] {
        let c = open(db, journal);
        c.execute_batch("CREATE TABLE t (v TEXT)").unwrap();
        insert(&c).unwrap();
    }
    assert_eq!(
        fs::read_to_string(m.mnt.join(".role")).unwrap(),
        "primary\n"
    );
    // A connection opened while primary, kept across the expiry (a long-lived app connection).
    let kept = open(&wal_db, "wal");

    m.state.publish(expired_primary());
    assert_eq!(
        fs::read_to_string(m.mnt.join(".role")).unwrap(),
        "electing\n"
    );
    assert_eq!(fs::read_to_string(m.mnt.join(".primary")).unwrap(), "");
    let health: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(m.mnt.join(".health")).unwrap()).unwrap();
    assert_eq!(health["role"], "electing");
    assert!(health["primary"].is_null());

    // WAL: the write lock on -shm byte 120 is refused; SQLite reports any WAL lock failure as
    // SQLITE_BUSY.
    let c = open(&wal_db, "wal");
    let e = insert(&c).unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::DatabaseBusy), "{e}");
    let e = insert(&kept).unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::DatabaseBusy), "{e}");
    c.execute_batch("ROLLBACK").ok();
    kept.execute_batch("ROLLBACK").ok();
    // Reads go on.
    assert_eq!(count(&c), 1);
    assert_eq!(count(&kept), 1);
    // Rollback journal: RESERVED is refused with EROFS, SQLITE_IOERR (at once, no busy wait).
    let r = open(&rb_db, "delete");
    let e = insert(&r).unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::SystemIoFailure), "{e}");
    r.execute_batch("ROLLBACK").ok();
    assert_eq!(count(&r), 1);

    // Nothing was written: the lower files hold one row each.
    drop((c, r));
    // Primary again (a fresh answer): writes pass, on the kept connection too.
    m.state.publish(ClusterView::single_node("node-a"));
    insert(&kept).unwrap();
    assert_eq!(count(&kept), 2);
}

#[test]
fn a_demoted_primary_is_gated_and_a_never_primary_node_is_left_to_litefs() {
    // A node that was never primary: its write locks go to the lower dir (LiteFS refuses a
    // replica's writes itself; a reader may need the WAL write lock for a recovery).
    let mut replica = ClusterView::single_node("node-b");
    replica.primary = Primary::Other {
        hostname: "node-a".into(),
    };
    let m = mounted(replica.clone());
    let db = m.mnt.join("r.db");
    let c = open(&db, "wal");
    c.execute_batch("CREATE TABLE t (v TEXT)").unwrap();
    insert(&c).unwrap();

    // Primary, then demoted to replica before its deadline: the gate closes (its LiteFS may
    // still believe it is primary for up to a lease TTL).
    let mut primary = ClusterView::single_node("node-b");
    primary.primary_until = Some(Instant::now() + Duration::from_secs(3600));
    m.state.publish(primary);
    insert(&c).unwrap();
    m.state.publish(replica);
    let e = insert(&c).unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::DatabaseBusy), "{e}");
    c.execute_batch("ROLLBACK").ok();
    assert_eq!(count(&c), 2);
    assert_eq!(m.state.load().role(), Role::Replica);
    assert!(!m.state.load().write_allowed());
}

#[test]
fn the_shared_page_mirrors_role_and_expires_with_it() {
    let m = mounted(ClusterView::single_node("node-a"));
    let health: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(m.mnt.join(".health")).unwrap()).unwrap();
    let path = PathBuf::from(health["state_page"].as_str().expect("a state page"));
    let file = fs::File::open(&path).unwrap();
    // SAFETY: a fresh read-only shared mapping of the page file.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            state_page::SIZE,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let at = |now: &dyn Fn() -> u64| {
        // SAFETY: `base` is the mapping made above, unmapped only at the end of the test.
        unsafe { state_page::read_at(base.cast(), now) }
    };
    let read = || at(&boottime_ns);
    assert_eq!(read(), PageRead::Role(Role::Primary));

    let mut replica = ClusterView::single_node("node-a");
    replica.primary = Primary::Other {
        hostname: "node-b".into(),
    };
    m.state.publish(replica);
    assert_eq!(read(), PageRead::Role(Role::Replica));
    // A primary that runs out with nobody publishing: the page says electing on its own.
    let mut short = ClusterView::single_node("node-a");
    short.primary_until = Some(Instant::now() + Duration::from_millis(50));
    m.state.publish(short);
    let until = m.state.load().primary_until_boot().unwrap();
    assert_eq!(at(&|| until - 1), PageRead::Role(Role::Primary));
    assert_eq!(at(&|| until), PageRead::Role(Role::Electing));

    // Unmounted: the page is marked closed (readers go back to the mount) and removed.
    drop(m);
    assert_eq!(read(), PageRead::AskTheMount);
    assert!(!path.exists());
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(base, state_page::SIZE) };
}
