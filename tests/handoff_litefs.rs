//! `litefs-py handoff` on three `litefs-py run` nodes with the real LiteFS (v0.5.14): under a
//! continuous write load through the primary's shim, the leadership and the LiteFS primary move
//! to another node, writes resume there, no two LiteFS are ever primary at once (a sampler of
//! every `/info`), and every acknowledged row ends up on every node. Also the command's errors.
//!
//! Needs root, /dev/fuse and a `litefs` binary (`$LITEFS`, else `litefs` on PATH, else
//! `~/go/bin/litefs`): locally the test says so and passes without one, with `CI=true` it fails.
//! Processes and mounts are handled by the test kit's `cluster::RunCluster` (every one ours, by PID, cleaned up
//! on panic). Every wait is bounded.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BIN, run_options, serial};
use litefs_py_testkit::cluster::RunCluster;
use litefs_py_testkit::wait::wait_for;
use litefs_py_testkit::{prereq, process};
use rusqlite::Connection;

/// First start: election, the new leader's wait, LiteFS's acquire, replicas catching up.
const START: Duration = Duration::from_secs(60);
const DB: &str = "app.db";

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(2))?;
    Ok(c)
}

fn ids(c: &RunCluster, id: u64) -> rusqlite::Result<BTreeSet<i64>> {
    let db = connect(&c.db(id, DB))?;
    let mut st = db.prepare("SELECT id FROM t")?;
    st.query_map([], |r| r.get(0))?.collect()
}

/// `litefs-py handoff ARGS --config <node id's config>`: (exit code, stdout, stderr).
fn handoff(c: &RunCluster, via: u64, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("handoff")
        .args(args)
        .arg("--config")
        .arg(c.node(via).config_path())
        .env_remove("LITEFS_PY_SECRET");
    let out = process::output_within(cmd, Duration::from_secs(90)).expect("litefs-py handoff");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One acknowledged write: the row id and the node whose shim acknowledged it.
type Acked = Arc<Mutex<Vec<(i64, u64)>>>;

/// Writes rows with increasing ids, one transaction each, through the shim of whichever node
/// accepts them (trying the last one that did first), until `stop`. Every id is tried once:
/// an error (a replica, a halted or demoting primary) moves on to the next id and node.
fn writer(c: &RunCluster, nodes: Vec<u64>, acked: Acked, stop: Arc<AtomicBool>) {
    let dbs: Vec<(u64, std::path::PathBuf)> = nodes.iter().map(|id| (*id, c.db(*id, DB))).collect();
    std::thread::spawn(move || {
        let mut next = 1_000i64;
        let mut current = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let (node, path) = &dbs[current];
            next += 1;
            let ok = connect(path)
                .and_then(|db| db.execute("INSERT INTO t(id, v) VALUES (?1, 'x')", [next]))
                .is_ok();
            if ok {
                acked.lock().unwrap().push((next, *node));
            } else {
                current = (current + 1) % dbs.len();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
}

fn acked_on(acked: &Acked, node: u64) -> usize {
    acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| *n == node)
        .count()
}

#[test]
fn a_handoff_under_write_load_moves_the_primary_and_loses_no_acknowledged_write() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut c = RunCluster::start(run_options(), &litefs, 3).unwrap();
    let all = c.ids();
    let old = c.wait_one_primary(&all, START).unwrap();
    {
        let db = connect(&c.db(old, DB)).unwrap();
        let mode: String = db
            .query_row("PRAGMA journal_mode=wal", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .unwrap();
    }
    let others: Vec<u64> = all.iter().copied().filter(|id| *id != old).collect();
    let (target, third) = (others[0], others[1]);

    // The command's errors, on a live cluster (nothing may change).
    let (code, _, err) = handoff(&c, third, &["--to", "99"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("node 99 is not a member"), "{err}");
    let (code, _, err) = handoff(&c, old, &["--to", &old.to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already the leader"), "{err}");
    assert_eq!(
        c.wait_one_primary(&all, Duration::from_secs(5)).unwrap(),
        old
    );

    let sampler = c.litefs_sampler();
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut order = vec![old];
    order.extend(&others);
    writer(&c, order, acked.clone(), stop.clone());
    wait_for(Duration::from_secs(20), "writes on the old primary", || {
        (acked_on(&acked, old) >= 50).then_some(())
    });

    // Asked through the third node: it forwards to the leader.
    let started = Instant::now();
    let (code, out, err) = handoff(&c, third, &["--to", &target.to_string()]);
    let took = started.elapsed();
    assert_eq!(code, 0, "handoff failed:\n{out}\n{err}");
    assert!(
        out.contains(&format!("node {target} (node-{target}) is the leader")),
        "{out}"
    );
    eprintln!("handoff: {took:?}\n{out}");

    // Writes resume on the new primary.
    wait_for(Duration::from_secs(20), "writes on the new primary", || {
        (acked_on(&acked, target) >= 50).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        c.wait_one_primary(&all, Duration::from_secs(10)).unwrap(),
        target
    );
    let (rounds, doubles) = sampler.finish();
    assert!(doubles.is_empty(), "two LiteFS primaries: {doubles:#?}");

    // Every acknowledged row on every node, read through each shim.
    let acked: Vec<(i64, u64)> = acked.lock().unwrap().clone();
    let want: BTreeSet<i64> = acked.iter().map(|(id, _)| *id).collect();
    for id in &all {
        let have = wait_for(Duration::from_secs(15), "replication of every row", || {
            ids(&c, *id).ok().filter(|h| h.is_superset(&want))
        });
        eprintln!(
            "node {id}: {} rows, all {} acknowledged ones present",
            have.len(),
            want.len()
        );
    }
    eprintln!(
        "acknowledged: {} on node {old} (before), {} on node {target} (after); sampler: {rounds} rounds, never two primaries",
        acked_on_vec(&acked, old),
        acked_on_vec(&acked, target),
    );
    // The handoff's own steps ran in seconds, not a lease wait.
    assert!(took < Duration::from_secs(15), "{took:?}");
}

fn acked_on_vec(acked: &[(i64, u64)], node: u64) -> usize {
    acked.iter().filter(|(_, n)| *n == node).count()
}
