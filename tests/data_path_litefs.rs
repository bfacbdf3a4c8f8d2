//! The data path over the real LiteFS (v0.5.14): by default (`mount.data-path: auto`) every
//! name at the shim's root is a link to LiteFS's file of that name (docs/architecture.md,
//! "Data-path modes"), so an app's connections, reads, writes and locks go to LiteFS without a
//! round trip into the shim, even for a database created through the mount.
//!
//! Needs root, /dev/fuse and a `litefs` binary (see tests/run_litefs.rs). The `RunNode` guard
//! stops everything and detaches any mount left, also when a test fails. Every wait is bounded;
//! the request counts come from the shim's `/metrics`, never from timing.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use common::{run_options, serial};
use litefs_py_testkit::cluster::{Options, RunNode};
use litefs_py_testkit::http;
use litefs_py_testkit::prereq;
use litefs_py_testkit::wait::wait_for;

/// The app: says it is ready, then waits (the test does the I/O).
const APP: &str = r#"
touch "$1/ready"
trap 'exit 0' TERM
while :; do sleep 0.05; done
"#;

/// FUSE requests the shim has served, by operation, from its `/metrics`.
fn served(r: &RunNode) -> BTreeMap<String, u64> {
    let metrics = http::get(&r.ports.http, "/metrics").unwrap().body;
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("litefs_py_fuse_requests_total{op=\""))
        .filter_map(|l| {
            let (op, n) = l.split_once("\"} ")?;
            Some((op.to_string(), n.parse().ok()?))
        })
        .collect()
}

fn since(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(op, n)| (op.clone(), n - before.get(op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn root_names_are_links_into_litefs_and_connections_cost_the_shim_nothing() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let opts = Options {
        test_faults: false,
        ..run_options()
    };
    let mut r = RunNode::single(&opts, &litefs, |c| c).unwrap();
    r.start(APP).unwrap();
    let (mnt, lower) = (r.path("mnt"), r.path("lower"));
    wait_for(Duration::from_secs(60), "the app", || {
        assert!(r.exited().is_none(), "litefs-py run exited:\n{}", r.log());
        r.app_file("ready")
    });
    assert_eq!(fs::read_to_string(mnt.join(".role")).unwrap(), "primary\n");

    // A database created through the mount: the name was a dangling link into LiteFS, so
    // SQLite created it on LiteFS's mount and the shim served no create.
    let before = served(&r);
    let db = rusqlite::Connection::open(mnt.join("app.db")).unwrap();
    db.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(db);
    let created = since(&before, &served(&r));
    assert!(!created.contains_key("create"), "{created:?}");
    assert!(lower.join("app.db").is_file(), "not on LiteFS's mount");
    let link = fs::read_link(mnt.join("app.db")).unwrap();
    assert_eq!(link, lower.canonicalize().unwrap().join("app.db"));
    // Any other name is a link too (dangling: nothing of that name in LiteFS).
    assert!(
        fs::symlink_metadata(mnt.join("other.db"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(
        fs::metadata(mnt.join("other.db")).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // The steady state: a new connection per request, two reads, one write transaction. Once
    // the kernel knows the link, none of it reaches the shim (LiteFS serves all of it).
    let before = served(&r);
    for i in 0..50 {
        let c = rusqlite::Connection::open(mnt.join("app.db")).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |x| x.get(0))
            .unwrap();
        assert_eq!(n, 1 + i);
        c.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2); COMMIT;")
            .unwrap();
    }
    let steady = since(&before, &served(&r));
    let total: u64 = steady.values().sum();
    assert!(
        total <= 3,
        "50 connections sent {total} requests to the shim: {steady:?}"
    );
    let rows: i64 = rusqlite::Connection::open(lower.join("app.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |x| x.get(0))
        .unwrap();
    assert_eq!(rows, 51, "the rows are in LiteFS");

    // The virtual files are still the shim's; a rename at the root is refused (a cached link
    // would keep its old target; LiteFS has no rename either); an exclusive create of any name
    // finds the link (documented in docs/limits.md).
    assert!(mnt.join(".health").is_file());
    assert!(fs::rename(mnt.join("app.db"), mnt.join("moved.db")).is_err());
    assert!(lower.join("app.db").is_file());
    let excl = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(mnt.join("fresh.db"))
        .unwrap_err();
    assert_eq!(excl.kind(), ErrorKind::AlreadyExists);
    // A listing shows LiteFS's files as links, and the virtual files.
    let names: BTreeMap<String, bool> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                e.file_type().unwrap().is_symlink(),
            )
        })
        .collect();
    assert_eq!(names.get("app.db"), Some(&true), "{names:?}");
    assert_eq!(names.get(".role"), Some(&false), "{names:?}");

    r.sigterm();
    let status = r.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", r.log());
    r.assert_nothing_left();
}
