//! `litefs-py run` with the real LiteFS (v0.5.14) and an app: start-up order, the `.role` gate
//! on LiteFS holding the lease, `.health`, shutdown order and exit codes, LiteFS dying, an app
//! that ignores SIGTERM, start-up failures.
//!
//! Needs root, /dev/fuse and a `litefs` binary (`$LITEFS`, else `litefs` on PATH, else
//! `~/go/bin/litefs`; without one the test says so and passes, unless `CI=true`: then it fails).
//! Every process is ours: the
//! `litefs-py run` we start, and the LiteFS it starts (its PID from its log line, checked against
//! its command line before it is ever signalled). The `RunNode` guard stops them and detaches any
//! mount left, also when a test fails. Every wait is bounded.

mod common;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::{run_options, serial};
use litefs_py_testkit::cluster::{Options, RunNode};
use litefs_py_testkit::config::Config;
use litefs_py_testkit::mount::is_mounted;
use litefs_py_testkit::wait::wait_for;
use litefs_py_testkit::{http, prereq};

/// The app the tests run: records its environment, writes a row through $LITEFS_DIR with
/// Python's sqlite3, then waits; on SIGTERM it records whether the shim was still there and
/// exits 42. `$1` is a directory for its records.
const APP: &str = r#"
echo "$LITEFS_DIR" > "$1/litefs_dir"
python3 - "$LITEFS_DIR/app.db" <<'PY' > "$1/write" 2>&1
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=10)
c.execute("pragma journal_mode=wal")
c.execute("create table if not exists t(x)")
c.execute("insert into t values (7)")
c.commit()
print("ok", c.execute("select count(*) from t").fetchone()[0])
PY
trap 'cat "$LITEFS_DIR/.role" > "$1/role_at_term" 2>&1; echo term > "$1/term"; exit 42' TERM
touch "$1/ready"
while :; do sleep 0.05; done
"#;

/// A one-node `litefs-py run` (lease TTL 3 s) in a temp dir of its own, without the test fault
/// layer; `edit` may change its config.
fn single(litefs: &Path, edit: impl FnOnce(Config) -> Config) -> RunNode {
    let opts = Options {
        test_faults: false,
        ..run_options()
    };
    RunNode::single(&opts, litefs, edit).unwrap()
}

fn health(mnt: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&fs::read_to_string(mnt.join(".health")).ok()?).ok()
}

#[test]
fn run_starts_litefs_shim_and_app_in_order_and_stops_them_in_reverse() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut r = single(&litefs, |c| c);
    r.start(APP).unwrap();
    let mnt = r.path("mnt");
    // The shim is mounted before LiteFS holds the lease; until then the raft leader (with its
    // fresh quorum: a sole voter) says `electing`.
    wait_for(Duration::from_secs(20), "the shim's mount", || {
        assert!(r.exited().is_none(), "litefs-py run exited:\n{}", r.log());
        (is_mounted(&mnt) && mnt.join(".role").exists()).then_some(())
    });
    let mut saw_gate = false;
    wait_for(Duration::from_secs(30), ".role primary", || {
        assert!(r.exited().is_none(), "litefs-py run exited:\n{}", r.log());
        let h = health(&mnt)?;
        if h["role"] == "primary" {
            // Primary only once LiteFS holds the lease: the lease API names a holder.
            let token = r.lease_token().expect("LiteFS runs with a lease token");
            let lease = http::request(
                "GET",
                &r.ports.lease,
                "/litefs-py/lease",
                Some(&token),
                None,
            )
            .unwrap()
            .body;
            let lease: serde_json::Value = serde_json::from_str(&lease).unwrap();
            assert_eq!(lease["held"], true, "primary without a holder: {lease}");
            return Some(());
        }
        saw_gate |= h["role"] == "electing" && h["quorum_ok"] == true && h["leader_id"] == 1;
        None
    });
    assert!(
        saw_gate,
        "never saw the leader wait for LiteFS's lease:\n{}",
        r.log()
    );
    // The app starts after LiteFS is ready, sees LITEFS_DIR and writes through the shim.
    wait_for(Duration::from_secs(20), "the app", || {
        assert!(r.exited().is_none(), "litefs-py run exited:\n{}", r.log());
        r.app_file("ready")
    });
    assert_eq!(
        r.app_file("litefs_dir").unwrap().trim(),
        mnt.to_str().unwrap()
    );
    assert_eq!(r.app_file("write").unwrap().trim(), "ok 1", "{}", r.log());
    // The row is in LiteFS (read through LiteFS's own mount).
    let lower_db = rusqlite::Connection::open_with_flags(
        r.path("lower").join("app.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let x: i64 = lower_db
        .query_row("SELECT x FROM t", [], |row| row.get(0))
        .unwrap();
    assert_eq!(x, 7);
    drop(lower_db);
    // `.health` shows LiteFS mounted and serving, lag 0 (a primary's `.lag`).
    let h = wait_for(Duration::from_secs(5), "LiteFS in .health", || {
        health(&mnt).filter(|h| h["litefs"]["mounted"] == true && h["litefs"]["serving"] == true)
    });
    assert_eq!(h["lag_ms"], 0, "{h}");
    assert_eq!(h["role"], "primary", "{h}");
    assert!(r.log().find("the app started") > r.log().find("mounted mountpoint"));
    // Over LiteFS (no xattrs) the shim answers the first xattr request ENOSYS, and the kernel
    // sends no more: writes cost no `security.capability` lookup (docs/decisions.md).
    let db = rusqlite::Connection::open(mnt.join("app.db")).unwrap();
    for v in 0..5 {
        db.execute("INSERT INTO t VALUES (?1)", [v]).unwrap();
    }
    drop(db);
    let name =
        std::ffi::CString::new(mnt.join("app.db").into_os_string().into_encoded_bytes()).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and a buffer of the size passed.
    let n = unsafe {
        libc::getxattr(
            name.as_ptr(),
            c"user.test".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EOPNOTSUPP)
    );
    let metrics = http::get(&r.ports.http, "/metrics").unwrap().body;
    let getxattr: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("litefs_py_fuse_requests_total{op=\"getxattr\"} "))
        .unwrap_or_else(|| panic!("no getxattr count in /metrics:\n{metrics}"))
        .parse()
        .unwrap();
    assert!(
        getxattr <= 1,
        "{getxattr} getxattr requests reached the shim"
    );

    // SIGTERM: the app first (the shim still there when it stops), then the shim, then LiteFS
    // (which releases the lease), then raft; the app's exit status.
    r.sigterm();
    let status = r.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(42), "{}", r.log());
    assert_eq!(r.app_file("term").as_deref(), Some("term\n"));
    assert_eq!(r.app_file("role_at_term").as_deref(), Some("primary\n"));
    let app = r.log_pos("the app exited with status 42");
    let shim = r.log_pos("unmounted mountpoint");
    let lease = r.log_pos("primary lease released");
    let litefs = r.log_pos("litefs exited with status 0");
    let stopped = r.log_pos("INFO stopped");
    assert!(
        app < shim && shim < lease && lease < litefs && litefs < stopped,
        "{}",
        r.log()
    );
    r.assert_nothing_left();
}

#[test]
fn the_app_exiting_stops_everything_with_its_status() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut r = single(&litefs, |c| c);
    r.start(r#"test -n "$LITEFS_DIR" && cat "$LITEFS_DIR/.role" > "$1/role"; exit 3"#)
        .unwrap();
    let status = r.wait_exit(Duration::from_secs(60)).unwrap();
    assert_eq!(status.code(), Some(3), "{}", r.log());
    // The app ran on a primary (LiteFS ready before it started).
    assert_eq!(r.app_file("role").as_deref(), Some("primary\n"));
    // One node: no one to hand the primary to, so no handoff is tried.
    assert!(!r.log().contains("handing it off"), "{}", r.log());
    let app = r.log_pos("the app exited with status 3");
    let shim = r.log_pos("unmounted mountpoint");
    let litefs = r.log_pos("litefs exited with status 0");
    assert!(app < shim && shim < litefs, "{}", r.log());
    r.assert_nothing_left();
}

#[test]
fn litefs_dying_stops_the_app_and_the_shim_and_says_so() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut r = single(&litefs, |c| c);
    r.start(APP).unwrap();
    wait_for(Duration::from_secs(40), "the app", || {
        assert!(r.exited().is_none(), "litefs-py run exited:\n{}", r.log());
        r.app_file("ready")
    });
    let pid = r.litefs_pid().expect("LiteFS's pid");
    // SAFETY: LiteFS as our run started it (checked by its command line).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let status = r.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(70), "{}", r.log());
    let log = r.log();
    assert!(
        log.contains("litefs exited with signal 9 (SIGKILL): stopping"),
        "{log}"
    );
    // The app was stopped (SIGTERM) before the shim went.
    assert_eq!(r.app_file("term").as_deref(), Some("term\n"));
    assert!(r.log_pos("the app exited") < r.log_pos("unmounted mountpoint"));
    r.assert_nothing_left();
}

#[test]
fn an_app_ignoring_sigterm_is_killed_after_the_grace() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut r = single(&litefs, |c| c.run_grace("1s"));
    r.start(r#"trap '' TERM; touch "$1/ready"; while :; do sleep 0.05; done"#)
        .unwrap();
    wait_for(Duration::from_secs(40), "the app", || {
        assert!(r.exited().is_none(), "litefs-py run exited:\n{}", r.log());
        r.app_file("ready")
    });
    r.sigterm();
    let status = r.wait_exit(Duration::from_secs(30)).unwrap();
    // The app's own status, as a shell gives it: killed by signal 9.
    assert_eq!(status.code(), Some(137), "{}", r.log());
    let killed = r.log_pos("the app did not exit within 1s: SIGKILL");
    assert!(killed < r.log_pos("unmounted mountpoint"), "{}", r.log());
    r.assert_nothing_left();
}

/// Runs `litefs-py run` that must fail at start-up; returns its stderr lines.
fn failing_run(r: &mut RunNode) -> Vec<String> {
    r.start("exit 0").unwrap();
    let status = r.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(1), "{}", r.log());
    r.log().lines().map(str::to_string).collect()
}

#[test]
fn start_up_failures_are_one_line_and_leave_nothing_running() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    // An unknown key.
    let mut r = single(&litefs, |c| c.set("run.bogus", 1));
    let lines = failing_run(&mut r);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("litefs-py: ") && lines[0].contains("unknown field `bogus`"),
        "{lines:?}"
    );
    r.assert_nothing_left();
    // No LiteFS binary.
    let mut r = single(&litefs, |c| c.set("litefs.binary", "/nonexistent/litefs"));
    let lines = failing_run(&mut r);
    assert_eq!(
        lines,
        ["litefs-py: litefs.binary /nonexistent/litefs: no such file"]
    );
    assert!(!r.litefs_yml().exists(), "started anyway");
    r.assert_nothing_left();
    // The lease API cannot listen: nothing runs without it.
    let mut r = single(&litefs, |c| c);
    let taken = TcpListener::bind(&r.ports.lease).unwrap();
    let lines = failing_run(&mut r);
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("litefs-py: lease.addr ") && last.contains("cannot listen"),
        "{lines:?}"
    );
    assert!(r.litefs_pid().is_none(), "LiteFS was started");
    drop(taken);
    r.assert_nothing_left();
}
