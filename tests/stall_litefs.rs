//! Stalls and crashes of a whole `litefs-py run` node, with the real LiteFS (v0.5.14), three
//! nodes on loopback (docs/architecture.md, "The lease invariant"; docs/decisions.md, "A fencer
//! outside the daemon's runtime"):
//! - the pause: SIGSTOP of the primary's `litefs-py` process alone (its LiteFS runs on): a new
//!   primary within the failover bound, the stalled node's LiteFS fenced (no direct write on its
//!   own mount after its lease ran out), never two primaries; SIGCONT: `run` exits with
//!   status 73 and a plain restart rejoins;
//! - the freeze: the primary's whole process tree frozen (cgroup v1 freezer), another node
//!   becomes primary, thawed: the thawed node's LiteFS accepts no write;
//! - the crash: kill -9 of the run's whole process group, and of its watchdog and fencer too
//!   (as a cgroup kill does): a plain restart detaches the dead mounts and rejoins.
//!
//! Needs root, /dev/fuse and a `litefs` binary (see tests/cluster_litefs.rs). Run with
//! `--nocapture` for the timings.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{run_options, serial};
use litefs_py_testkit::cluster::{Options, RunCluster, SLEEPING_APP, Sampler};
use litefs_py_testkit::stall::{self, Freezer};
use litefs_py_testkit::wait::wait_for;
use litefs_py_testkit::{mount, prereq, process};
use rusqlite::Connection;

const START: Duration = Duration::from_secs(60);
/// The normal failover bound the other cluster tests use (kill -9 of the primary to the first
/// write a new primary accepts, ~4.3 s measured): a stall must not take longer.
const FAILOVER: Duration = Duration::from_secs(15);
const DB: &str = "app.db";
/// `lease.ttl` by default: the fencer fences at the latest this long after the last renewal.
const TTL: Duration = Duration::from_secs(2);

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_millis(500))?;
    Ok(c)
}

fn insert_at(path: &Path, row: i64) -> rusqlite::Result<()> {
    connect(path)?.execute(
        "INSERT INTO t(id, v) VALUES (?1, ?2)",
        (row, format!("row {row}")),
    )?;
    Ok(())
}

/// The one primary, with table `t` created there (WAL) and visible on every node.
fn seed(c: &mut RunCluster) -> u64 {
    let all = c.ids();
    let p = c.wait_one_primary(&all, START).unwrap();
    let db = connect(&c.db(p, DB)).unwrap();
    let mode: String = db
        .query_row("PRAGMA journal_mode=wal", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    db.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .unwrap();
    insert_at(&c.db(p, DB), 1).unwrap();
    for id in &all {
        wait_for(Duration::from_secs(10), "the seed row everywhere", || {
            connect(&c.db(*id, DB))
                .ok()?
                .query_row("SELECT count(*) FROM t WHERE id = 1", [], |r| {
                    r.get::<_, i64>(0)
                })
                .ok()
                .filter(|n| *n == 1)
        });
    }
    p
}

/// One insert on each of `ids` in turn until one is accepted: (that node, time since `since`).
fn first_accepted_write(c: &RunCluster, ids: &[u64], row: i64, since: Instant) -> (u64, Duration) {
    wait_for(FAILOVER, "a new primary to accept a write", || {
        ids.iter()
            .find(|id| insert_at(&c.db(**id, DB), row).is_ok())
            .map(|id| (*id, since.elapsed()))
    })
}

fn assert_never_two_primaries(s: Sampler) {
    let (rounds, violations) = s.finish();
    assert!(
        violations.is_empty(),
        "two LiteFS primaries at once: {violations:#?}"
    );
    assert!(rounds > 50, "the sampler barely ran ({rounds} rounds)");
    eprintln!("sampler: {rounds} rounds of /info on every node, never two primaries");
}

/// LiteFS's own mount of node `id` (`mount.lower`), where the shim does not stand in between.
fn lower_db(c: &RunCluster, id: u64) -> std::path::PathBuf {
    c.node(id).path("lower").join(DB)
}

#[test]
fn a_stalled_daemon_is_replaced_and_its_litefs_fenced() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let opts = Options {
        data_path: Some("passthrough".into()),
        ..run_options()
    };
    let mut c = RunCluster::start(opts, &litefs, 3).unwrap();
    let p = seed(&mut c);
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != p).collect();
    let run_pid = c.node_mut(p).pid().unwrap();
    let litefs_pid = c.node(p).litefs_pid().unwrap();
    let sampler = c.litefs_sampler();

    stall::signal(run_pid, libc::SIGSTOP);
    let stopped = Instant::now();
    // LiteFS itself runs on, and is still primary: a direct write on its own mount works.
    insert_at(&lower_db(&c, p), 2).expect("the stalled node's LiteFS is primary until fenced");

    // The fencer kills it within the TTL of its last renewal (at most one renewal interval,
    // TTL/2, before the stop).
    stall::wait_dead(litefs_pid, TTL + Duration::from_secs(2)).unwrap();
    let fenced_after = stopped.elapsed();
    assert!(
        fenced_after <= TTL + Duration::from_millis(500),
        "LiteFS was fenced only {fenced_after:?} after the stall"
    );
    let refused = insert_at(&lower_db(&c, p), 3);
    assert!(
        refused.is_err(),
        "the fenced LiteFS's own mount accepted a write"
    );

    let (new_primary, failover) = first_accepted_write(&c, &others, 4, stopped);
    eprintln!(
        "stall of node {p}'s daemon: LiteFS fenced after {fenced_after:?}, node {new_primary} \
         accepted a write after {failover:?} (direct write after the fence: {refused:?})"
    );
    assert!(failover <= FAILOVER);
    std::thread::sleep(Duration::from_millis(500));
    assert_never_two_primaries(sampler);

    // SIGCONT: `run` sees LiteFS fenced, says so, stops everything with status 73.
    stall::signal(run_pid, libc::SIGCONT);
    let status = c.node_mut(p).wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(73), "{}", c.node(p).log_tail(30));
    assert!(c.node(p).log().contains("LiteFS was fenced"));
    assert!(
        c.node(p)
            .log()
            .contains("litefs-py fencer: LiteFS's lease runs out")
    );
    c.node(p).assert_nothing_left();

    // A plain restart rejoins as a replica of the new primary and gets its write.
    c.start_node(p).unwrap();
    let all = c.ids();
    assert_eq!(c.wait_one_primary(&all, START).unwrap(), new_primary);
    wait_for(
        Duration::from_secs(10),
        "row 4 on the restarted node",
        || {
            connect(&c.db(p, DB))
                .ok()?
                .query_row("SELECT count(*) FROM t WHERE id = 4", [], |r| {
                    r.get::<_, i64>(0)
                })
                .ok()
                .filter(|n| *n == 1)
        },
    );
    c.shutdown().unwrap();
}

/// kill -9 of `run`'s whole process group leaves the watchdog (own session) to unmount the
/// shim; kill -9 of everything (a cgroup kill) leaves dead mounts that a plain restart
/// detaches. Either way the node rejoins.
#[test]
fn a_plain_restart_recovers_from_any_kill_9() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut opts = run_options();
    opts.spawn.own_group = true;
    let mut c = RunCluster::start(opts, &litefs, 3).unwrap();
    let p = seed(&mut c);
    let all = c.ids();
    let replica = *all.iter().find(|id| **id != p).unwrap();

    // 1. The group only: the watchdog and the fencer are in sessions of their own.
    let pid = c.node_mut(replica).pid().unwrap();
    let helpers: Vec<_> = stall::children(pid)
        .into_iter()
        .filter(|k| k.comm.starts_with("litefs-py-"))
        .collect();
    assert_eq!(helpers.len(), 2, "the watchdog and the fencer: {helpers:?}");
    stall::signal_group(pid, libc::SIGKILL);
    c.node_mut(replica)
        .wait_exit(Duration::from_secs(10))
        .unwrap();
    mount::wait_unmounted(&c.mnt(replica), Duration::from_secs(10))
        .expect("the watchdog survived the group kill and unmounted the shim");
    for h in &helpers {
        stall::wait_dead(h.pid, Duration::from_secs(10)).unwrap();
    }
    c.start_node(replica).unwrap();
    c.wait_one_primary(&all, START).unwrap();

    // 2. Everything, the watchdog and the fencer too: both mounts stay, dead.
    let pid = c.node_mut(replica).pid().unwrap();
    let tree = stall::tree(pid);
    // All stopped first, then all killed, as a cgroup kill is: killed one by one, the watchdog
    // could see the daemon die and unmount before its own kill reached it.
    for proc in &tree {
        stall::signal(proc.pid, libc::SIGSTOP);
    }
    for proc in &tree {
        stall::signal(proc.pid, libc::SIGKILL);
    }
    c.node_mut(replica)
        .wait_exit(Duration::from_secs(10))
        .unwrap();
    for proc in &tree {
        stall::wait_dead(proc.pid, Duration::from_secs(10)).unwrap();
    }
    assert!(
        mount::is_mounted(&c.mnt(replica)),
        "the dead shim mount stays"
    );
    let restarted = Instant::now();
    // `start_node` refuses a mounted mnt/: started as a user would, over the dead mounts.
    c.node_mut(replica).start(SLEEPING_APP).unwrap();
    c.node_mut(replica)
        .wait_started(Duration::from_secs(40))
        .unwrap();
    assert_eq!(c.wait_one_primary(&all, START).unwrap(), p);
    let log = c.node(replica).log();
    assert!(
        log.contains("detached a dead FUSE mount left at mount.dir"),
        "{}",
        c.node(replica).log_tail(40)
    );
    eprintln!(
        "kill -9 of everything: restarted and rejoined in {:?}",
        restarted.elapsed()
    );
    insert_at(&c.db(p, DB), 5).unwrap();
    wait_for(
        Duration::from_secs(10),
        "row 5 on the restarted node",
        || {
            connect(&c.db(replica, DB))
                .ok()?
                .query_row("SELECT count(*) FROM t WHERE id = 5", [], |r| {
                    r.get::<_, i64>(0)
                })
                .ok()
                .filter(|n| *n == 1)
        },
    );
    assert!(process::is_live(c.node_mut(replica).pid().unwrap()));
    c.shutdown().unwrap();
}

/// A writer on the node, in its frozen cgroup: `sqlite3` inserting rows from `first` on, one
/// process per insert, printing `try <row> <wall clock ns>` before each attempt and `ok <row>`
/// for each acknowledged one.
fn writer(c: &RunCluster, id: u64, db: &Path, first: i64, name: &str) -> process::Proc {
    let script = format!(
        "i={first}; while :; do echo try $i $(date +%s%N); \
           if sqlite3 -cmd '.timeout 200' {db} \"INSERT INTO t(id, v) VALUES ($i, 'w')\" 2>/dev/null; \
           then echo ok $i; fi; i=$((i+1)); sleep 0.02; done",
        db = db.display()
    );
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", &script]);
    let log = c.node(id).path(&format!("{name}.log"));
    process::Proc::spawn(name, cmd, &log, process::Options::default()).unwrap()
}

/// When the writer began its attempt at `row` (wall clock, ns since the epoch).
fn attempt_started(w: &process::Proc, row: i64) -> Option<u128> {
    w.log().lines().find_map(|l| {
        let mut f = l.strip_prefix("try ")?.split_whitespace();
        (f.next()?.parse::<i64>().ok()? == row).then_some(())?;
        f.next()?.parse().ok()
    })
}

fn epoch_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The rows of `t` that a frozen node's LiteFS had committed: its data dir's `database` and
/// `wal` copied while every process of the node is frozen, and opened as a plain SQLite file
/// (SQLite's WAL recovery keeps exactly the transactions whose commit frame was written).
fn committed_while_frozen(c: &RunCluster, id: u64) -> std::collections::BTreeSet<i64> {
    let src = c.node(id).path("litefs-data").join("dbs").join(DB);
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("snap.db");
    std::fs::copy(src.join("database"), &copy).unwrap();
    if src.join("wal").exists() {
        std::fs::copy(src.join("wal"), dir.path().join("snap.db-wal")).unwrap();
    }
    let db = Connection::open(&copy).unwrap();
    let mut q = db.prepare("SELECT id FROM t").unwrap();
    q.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn acknowledged(w: &process::Proc) -> usize {
    acknowledged_rows(w).len()
}

fn acknowledged_rows(w: &process::Proc) -> Vec<i64> {
    w.log()
        .lines()
        .filter_map(|l| l.strip_prefix("ok ")?.trim().parse().ok())
        .collect()
}

/// Whether row `row` is in node `id`'s table.
fn has_row(c: &RunCluster, id: u64, row: i64) -> bool {
    connect(&c.db(id, DB))
        .and_then(|db| {
            db.query_row("SELECT count(*) FROM t WHERE id = ?1", [row], |r| {
                r.get::<_, i64>(0)
            })
        })
        .is_ok_and(|n| n == 1)
}

/// The primary's whole node frozen (its run, LiteFS, the fencer, the watchdog, the app and two
/// writers) for longer than a failover takes, then thawed: the thawed LiteFS is fenced at once
/// (the fencer wakes after its deadline and does not ask), its own mount accepts no write, and
/// another node became primary while it was frozen, within the failover bound. LiteFS's replica
/// reads have no deadline and the frozen kernel keeps the connection up, so the replicas' LiteFS
/// would stay attached to the frozen primary's stream and none would ask for the lease; their
/// `run` cuts that stream (docs/architecture.md, "A silent primary").
///
/// Each write acknowledged after the thaw that the cluster lost is judged by when it happened
/// (docs/decisions.md, "A fencer outside the daemon's runtime"):
/// - committed before the freeze (in the frozen node's LiteFS files, not yet streamed): the
///   loss that asynchronous replication allows; reported;
/// - an attempt begun before the freeze and committed after the thaw, or any write on LiteFS's
///   own mount: it races the fencer's kill (LiteFS checks no lease before a write); reported;
/// - an attempt through the shim begun after the thaw: the write gate refuses it by
///   construction; one acknowledged and lost fails the test.
///
/// The shim's gate sees SQLite's locks in `data-path: passthrough` only (the default over LiteFS
/// sends them straight to LiteFS; there the Django backend gates, tested in
/// pybridge/tests/test_django.py), so the nodes run in passthrough.
#[test]
fn a_frozen_and_thawed_node_accepts_no_write() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    if !stall::freezer_available() {
        eprintln!("skipped: no cgroup v1 freezer at {}", stall::FREEZER_ROOT);
        return;
    }
    let _serial = serial();
    let opts = Options {
        data_path: Some("passthrough".into()),
        ..run_options()
    };
    let mut c = RunCluster::start(opts, &litefs, 3).unwrap();
    let p = seed(&mut c);
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != p).collect();
    let run_pid = c.node_mut(p).pid().unwrap();
    let litefs_pid = c.node(p).litefs_pid().unwrap();
    let direct = writer(&c, p, &lower_db(&c, p), 10_000, "writer-lower");
    let shim = writer(&c, p, &c.db(p, DB), 20_000, "writer-shim");
    wait_for(Duration::from_secs(10), "both writers to write", || {
        (acknowledged(&direct) > 0 && acknowledged(&shim) > 0).then_some(())
    });
    let sampler = c.litefs_sampler();
    let freezer = Freezer::create("litefs-py-test-freeze").unwrap();
    let tree = stall::tree(run_pid);
    for proc in &tree {
        freezer.add(proc.pid).unwrap();
    }
    freezer.add(direct.pid() as i32).unwrap();
    freezer.add(shim.pid() as i32).unwrap();
    let frozen_at = Instant::now();
    let frozen = freezer.freeze().unwrap();
    let before = (acknowledged(&direct), acknowledged(&shim));
    let in_files = committed_while_frozen(&c, p);
    // Raft elects another leader within ~1 s, the replicas cut their streams from the frozen
    // node, and the new leader's wait (TTL + 1 s + 0.5 s) ends: another node takes writes.
    let (new_primary, failover) = first_accepted_write(&c, &others, 6, frozen_at);
    // Frozen a while longer: past the fencer's deadline, the thawed LiteFS must be fenced.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(frozen_at.elapsed()));
    let thawed_ns = epoch_ns();
    freezer.thaw().unwrap();
    let thawed = Instant::now();
    stall::wait_dead(litefs_pid, Duration::from_secs(5)).unwrap();
    let fenced_after = thawed.elapsed();
    let refused = insert_at(&lower_db(&c, p), 7);
    assert!(
        refused.is_err(),
        "the thawed LiteFS's own mount accepted a write"
    );
    // A write acknowledged after the thaw that the new primary does not have, by writer.
    std::thread::sleep(Duration::from_secs(1));
    let lost = |w: &process::Proc, n: usize| -> Vec<(i64, Option<u128>)> {
        acknowledged_rows(w)
            .into_iter()
            .skip(n)
            .filter(|r| !has_row(&c, new_primary, *r))
            .map(|r| (r, attempt_started(w, r)))
            .collect()
    };
    let (lost_direct, lost_shim) = (lost(&direct, before.0), lost(&shim, before.1));
    drop(direct);
    drop(shim);
    drop(freezer);
    let after_thaw = |l: &[(i64, Option<u128>)]| -> Vec<i64> {
        l.iter()
            .filter(|(r, t)| !in_files.contains(r) && t.is_some_and(|t| t > thawed_ns))
            .map(|(r, _)| *r)
            .collect()
    };
    let async_window: Vec<i64> = lost_direct
        .iter()
        .chain(&lost_shim)
        .map(|(r, _)| *r)
        .filter(|r| in_files.contains(r))
        .collect();
    eprintln!(
        "freeze of node {p} ({} processes, {frozen}) for 6 s: after the thaw its LiteFS was \
         gone in {fenced_after:?}; node {new_primary} had accepted a write {failover:?} after \
         the freeze began; \
         acknowledged after the thaw and lost: on LiteFS's mount {:?}, through the shim {:?} \
         (of these, committed before the freeze: {async_window:?}; begun after the thaw: on \
         LiteFS's mount {:?}, through the shim {:?})",
        tree.len() + 2,
        lost_direct.iter().map(|(r, _)| r).collect::<Vec<_>>(),
        lost_shim.iter().map(|(r, _)| r).collect::<Vec<_>>(),
        after_thaw(&lost_direct),
        after_thaw(&lost_shim),
    );
    assert!(failover <= FAILOVER);
    assert_never_two_primaries(sampler);
    let status = c.node_mut(p).wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(73), "{}", c.node(p).log_tail(30));
    assert!(
        c.node(p)
            .log()
            .contains("after LiteFS's lease ran out (this host or process was stalled)"),
        "{}",
        c.node(p).log_tail(30)
    );
    assert!(
        after_thaw(&lost_shim).is_empty(),
        "the write gate let a transaction begun after the thaw through the shim, and the \
         cluster lost it: {:?}",
        after_thaw(&lost_shim)
    );
    c.shutdown().unwrap();
}
