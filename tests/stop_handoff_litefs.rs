//! A graceful stop (SIGTERM) of the primary's `litefs-py run`, on three nodes with the real
//! LiteFS (v0.5.14), under a continuous writer that writes through whichever node's shim takes
//! the write:
//!
//! - by default the stopping primary hands off first: another node becomes primary, the
//!   stopped run exits 0, every acknowledged row is on the new primary, never two primaries;
//! - with `run.handoff-on-stop: false` it stops at once, and the others fail over;
//! - the primary's app exiting on its own (a crash) hands off the same way before the run
//!   stops with the app's status.
//!
//! Both print the longest stretch without an acknowledged write (no timing assertion beyond a
//! generous bound: this 2-core machine is shared). Needs root, /dev/fuse and `litefs`, as
//! tests/handoff_litefs.rs; processes and mounts are the test kit's (`cluster::RunCluster`).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{run_options, serial};
use litefs_py_testkit::cluster::RunCluster;
use litefs_py_testkit::prereq;
use litefs_py_testkit::wait::wait_for;
use rusqlite::{Connection, OpenFlags};

const START: Duration = Duration::from_secs(60);
const DB: &str = "app.db";
/// The app: exits 0 on SIGTERM/SIGINT (so the run's exit status is 0 on a clean stop), and 3 on
/// a SIGUSR1 sent to it alone (the test's app crash).
const APP: &str = "trap 'kill $! 2>/dev/null; exit 0' TERM INT; \
                   trap 'kill $! 2>/dev/null; exit 3' USR1; sleep 100000 & wait";
/// Far above a handoff (about a second) and a failover (about five); only a hang fails it.
const GAP_BOUND: Duration = Duration::from_secs(30);

/// Opens an existing database only: a shim that has gone leaves a plain directory, where a
/// new empty file must not be created.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(Duration::from_secs(2))?;
    Ok(c)
}

/// One acknowledged write: row id, the node whose shim took it, when.
type Acked = Arc<Mutex<Vec<(i64, u64, Instant)>>>;

/// Writes rows, one transaction each, through the shim of whichever node takes them (the last
/// one that did first), until `stop`. An error moves on to the next id and node.
fn writer(dbs: Vec<(u64, PathBuf)>, acked: Acked, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut next, mut current) = (1_000i64, 0usize);
        while !stop.load(Ordering::Relaxed) {
            let (node, path) = &dbs[current];
            next += 1;
            let ok = connect(path)
                .and_then(|db| db.execute("INSERT INTO t(id, v) VALUES (?1, 'x')", [next]))
                .is_ok();
            if ok {
                acked.lock().unwrap().push((next, *node, Instant::now()));
            } else {
                current = (current + 1) % dbs.len();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    })
}

fn acked_on(acked: &Acked, node: u64) -> usize {
    let a = acked.lock().unwrap();
    a.iter().filter(|(_, n, _)| *n == node).count()
}

/// The longest time between two acknowledged writes.
fn longest_gap(acked: &[(i64, u64, Instant)]) -> Duration {
    acked
        .windows(2)
        .map(|w| w[1].2.duration_since(w[0].2))
        .max()
        .unwrap_or_default()
}

/// Three nodes running [`APP`], each config edited by `edit`; the first primary, with table
/// `t` created on it.
fn cluster(
    litefs: &Path,
    edit: impl Fn(u64, litefs_py_testkit::config::Config) -> litefs_py_testkit::config::Config,
) -> (RunCluster, u64) {
    let mut c = RunCluster::create_with(run_options(), litefs, 3, edit).unwrap();
    for node in c.nodes.values_mut() {
        node.start(APP).unwrap();
    }
    let primary = c.wait_one_primary(&c.ids(), START).unwrap();
    let db = Connection::open(c.db(primary, DB)).unwrap();
    let mode: String = db
        .query_row("PRAGMA journal_mode=wal", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .unwrap();
    (c, primary)
}

struct Outcome {
    new_primary: u64,
    gap: Duration,
    acked: Vec<(i64, u64, Instant)>,
}

/// How the primary's run is made to stop.
#[derive(Clone, Copy)]
enum Stop {
    /// SIGTERM to `litefs-py run`: exits 0 (the app's status).
    Sigterm,
    /// SIGUSR1 to the app alone, which exits 3: the run stops with 3.
    AppExits,
}

/// Writes through the cluster, stops `old`'s run as `how` says, checks its exit status and that
/// writes resume on another primary (never two at once); every acknowledged row is on the new
/// primary.
fn stop_primary_under_writes(c: &mut RunCluster, old: u64, how: Stop) -> Outcome {
    let all = c.ids();
    let others: Vec<u64> = all.iter().copied().filter(|id| *id != old).collect();
    let mut order = vec![old];
    order.extend(&others);
    let dbs = order.iter().map(|id| (*id, c.db(*id, DB))).collect();
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = c.litefs_sampler();
    let w = writer(dbs, acked.clone(), stop.clone());
    wait_for(Duration::from_secs(20), "writes on the primary", || {
        (acked_on(&acked, old) >= 50).then_some(())
    });

    let sent = Instant::now();
    let want = match how {
        Stop::Sigterm => {
            c.node(old).sigterm();
            0
        }
        Stop::AppExits => {
            let app = c.node(old).app_pid().expect("the primary's app runs");
            // SAFETY: the app our run started (its LITEFS_DIR checked by app_pid).
            unsafe { libc::kill(app, libc::SIGUSR1) };
            3
        }
    };
    let status = c.node_mut(old).wait_exit(Duration::from_secs(60)).unwrap();
    eprintln!(
        "node {old}'s run exited {status} {:?} after the stop",
        sent.elapsed()
    );
    assert_eq!(status.code(), Some(want), "{}", c.node(old).log_tail(60));
    let new_primary = c.wait_one_primary(&others, START).unwrap();
    wait_for(Duration::from_secs(30), "writes on the new primary", || {
        (acked_on(&acked, new_primary) >= 50).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    let (rounds, doubles) = sampler.finish();
    assert!(doubles.is_empty(), "two LiteFS primaries: {doubles:#?}");

    let acked: Vec<(i64, u64, Instant)> = acked.lock().unwrap().clone();
    let want: BTreeSet<i64> = acked.iter().map(|(id, _, _)| *id).collect();
    let db = connect(&c.db(new_primary, DB)).unwrap();
    let have: BTreeSet<i64> = db
        .prepare("SELECT id FROM t")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let missing: Vec<&i64> = want.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "acknowledged rows missing on node {new_primary}: {missing:?}"
    );
    let gap = longest_gap(&acked);
    eprintln!(
        "node {old} -> node {new_primary}: {} acknowledged rows, all on the new primary; longest stretch without an acknowledged write {gap:?} (under load); sampler: {rounds} rounds, never two primaries",
        want.len()
    );
    Outcome {
        new_primary,
        gap,
        acked,
    }
}

#[test]
fn sigterm_to_the_primary_hands_off_first() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let (mut c, old) = cluster(&litefs, |_, cfg| cfg);
    let out = stop_primary_under_writes(&mut c, old, Stop::Sigterm);
    let log = c.node(old).log();
    assert!(
        log.contains("handing it off before stopping")
            && log.contains(&format!(
                "handed off before stopping: node {} ",
                out.new_primary
            )),
        "no handoff in the stopped node's log:\n{}",
        c.node(old).log_tail(60)
    );
    // The app got the signal after the handoff, not before.
    assert!(
        c.node(old).log_pos("handed off before stopping") < c.node(old).log_pos("stopping the app"),
        "{}",
        c.node(old).log_tail(60)
    );
    assert!(out.gap < GAP_BOUND, "{:?}", out.gap);
    assert!(acked_before_and_after(&out, old));
    c.shutdown().unwrap();
}

#[test]
fn with_handoff_on_stop_off_sigterm_stops_at_once() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let (mut c, old) = cluster(&litefs, |_, cfg| cfg.set("run.handoff-on-stop", false));
    let out = stop_primary_under_writes(&mut c, old, Stop::Sigterm);
    let log = c.node(old).log();
    assert!(
        !log.contains("handing it off") && !log.contains("handed off"),
        "a handoff despite run.handoff-on-stop: false:\n{}",
        c.node(old).log_tail(60)
    );
    assert!(out.gap < GAP_BOUND, "{:?}", out.gap);
    assert!(acked_before_and_after(&out, old));
    c.shutdown().unwrap();
}

#[test]
fn the_primarys_app_exiting_hands_off_before_the_run_stops() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let (mut c, old) = cluster(&litefs, |_, cfg| cfg);
    let out = stop_primary_under_writes(&mut c, old, Stop::AppExits);
    let node = c.node(old);
    assert!(
        node.log().contains(&format!(
            "handed off before stopping: node {} ",
            out.new_primary
        )),
        "no handoff in the stopped node's log:\n{}",
        node.log_tail(60)
    );
    // The app's exit came first, then the handoff, then the shim went.
    let exited = node.log_pos("the app exited with status 3");
    let handing = node.log_pos("the app exited; this node is the primary: handing it off");
    assert!(
        exited < handing && handing < node.log_pos("unmounted mountpoint"),
        "{}",
        node.log_tail(60)
    );
    assert!(out.gap < GAP_BOUND, "{:?}", out.gap);
    assert!(acked_before_and_after(&out, old));
    c.shutdown().unwrap();
}

fn acked_before_and_after(out: &Outcome, old: u64) -> bool {
    let on = |n| out.acked.iter().filter(|(_, id, _)| *id == n).count();
    on(old) >= 50 && on(out.new_primary) >= 50
}
