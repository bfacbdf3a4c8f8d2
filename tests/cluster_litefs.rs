//! Three `litefs-py run` nodes with the real LiteFS (v0.5.14) on loopback: replication through
//! the shim, failover after kill -9 of the primary's daemon and its LiteFS, writes refused on a
//! replica, a partition of the primary with a sampler of every LiteFS's `/info`, and what
//! `litefs-py status` says of every node's LiteFS position and lag (`cluster_litefs/status.rs`).
//!
//! Needs root, /dev/fuse and a `litefs` binary (`$LITEFS`, else `litefs` on PATH, else
//! `~/go/bin/litefs`): locally the tests say so and pass without one, with `CI=true` they fail.
//! Every process is ours and only signalled by its PID (see the test kit's `cluster::RunCluster`); the guards
//! stop them and detach every mount, also when a test fails. Every wait is bounded. Timings are
//! printed (run with `--nocapture` to see them).

mod common;
#[path = "cluster_litefs/status.rs"]
mod status;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{run_options, serial};
use litefs_py_testkit::cluster::{RunCluster, SLEEPING_APP, Sampler};
use litefs_py_testkit::wait::wait_for;
use litefs_py_testkit::{mount, prereq};
use rusqlite::{Connection, ErrorCode};

/// Nodes 1..=3, each a `litefs-py run` with the test fault layer, started (not waited for).
/// The shipped `lease.ttl` default, not the 3 s the one-node tests pin: failover timings
/// measured here are what users get.
fn start(litefs: &Path) -> RunCluster {
    RunCluster::start(run_options(), litefs, 3).unwrap()
}

/// First start: raft elects, the leader waits out a possible previous lease (≈1.5 s with the
/// default `lease.ttl` of 1 s), LiteFS retries its acquire, the replicas connect and catch up.
const START: Duration = Duration::from_secs(60);
/// From the kill (or cut) of the primary to the first write a new primary accepts: raft
/// failover (< 1 s), the new leader's wait (≈1.5 s, an early acquire held until it ends): ~2.3 s.
const FAILOVER: Duration = Duration::from_secs(15);
/// A committed write on the primary is readable on every connected replica within this.
const REPLICATION: Duration = Duration::from_secs(10);

const DB: &str = "app.db";

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(2))?;
    Ok(c)
}

/// Creates the table on the primary (WAL, as Django and the examples use).
fn create(c: &RunCluster, primary: u64) -> rusqlite::Result<()> {
    let db = connect(&c.db(primary, DB))?;
    let mode: String = db.query_row("PRAGMA journal_mode=wal", [], |r| r.get(0))?;
    assert_eq!(mode, "wal");
    db.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
}

/// Inserts rows `ids` on node `id`, one transaction each; an error ends it.
fn insert(c: &RunCluster, id: u64, ids: impl IntoIterator<Item = i64>) -> rusqlite::Result<()> {
    let db = connect(&c.db(id, DB))?;
    for i in ids {
        db.execute(
            "INSERT INTO t(id, v) VALUES (?1, ?2)",
            (i, format!("row {i}")),
        )?;
    }
    Ok(())
}

/// The ids in table `t` on node `id`, read through its shim.
fn ids(c: &RunCluster, id: u64) -> rusqlite::Result<Vec<i64>> {
    let db = connect(&c.db(id, DB))?;
    let mut st = db.prepare("SELECT id FROM t ORDER BY id")?;
    st.query_map([], |r| r.get(0))?.collect()
}

/// Waits for the one primary, creates the table there, inserts rows 1..=n and waits until every
/// node has them: the primary's id and the rows.
///
/// Right after start-up the first primary can lose its lease for a moment (a renewal refused
/// while the followers' acknowledgements are not fresh yet, seen under CI load): a seed write
/// refused then is retried, on whichever node is primary once the cluster has settled. Seeding
/// is idempotent (`INSERT OR IGNORE`); the tests' own writes are never retried.
fn seed(c: &mut RunCluster, n: i64) -> (u64, Vec<i64>) {
    let all = c.ids();
    let deadline = Instant::now() + START;
    let primary = loop {
        let primary = c.wait_one_primary(&all, START).unwrap();
        let seeded = create(c, primary).and_then(|()| {
            let db = connect(&c.db(primary, DB))?;
            for i in 1..=n {
                db.execute(
                    "INSERT OR IGNORE INTO t(id, v) VALUES (?1, ?2)",
                    (i, format!("row {i}")),
                )?;
            }
            Ok(())
        });
        match seeded {
            Ok(()) => break primary,
            Err(e) if Instant::now() < deadline => {
                eprintln!("seeding on node {primary} refused ({e}); again once a primary holds");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("seeding failed until {START:?} after start: {e}"),
        }
    };
    let rows: Vec<i64> = (1..=n).collect();
    for id in &all {
        wait_rows(c, *id, &rows, REPLICATION);
    }
    (primary, rows)
}

/// Every node in `nodes` ends up with exactly `rows`, in a database that passes
/// `integrity_check`.
fn assert_rows_everywhere(c: &RunCluster, nodes: &[u64], rows: &[i64]) {
    for id in nodes {
        wait_rows(c, *id, rows, REPLICATION);
        assert_eq!(integrity(c, *id), "ok", "node {id}");
    }
}

/// Waits until node `id` has exactly `want`; returns how long it took.
fn wait_rows(c: &RunCluster, id: u64, want: &[i64], timeout: Duration) -> Duration {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let last = match ids(c, id) {
            Ok(got) if got == want => return started.elapsed(),
            other => other,
        };
        assert!(
            Instant::now() < deadline,
            "node {id} does not have rows {want:?} within {timeout:?}: last read {last:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn integrity(c: &RunCluster, id: u64) -> String {
    let db = connect(&c.db(id, DB)).unwrap();
    db.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Tries one insert on each of `ids` in turn until one is accepted; returns (that node, the
/// time from `since`).
fn first_accepted_write(c: &RunCluster, ids: &[u64], row: i64, since: Instant) -> (u64, Duration) {
    wait_for(FAILOVER, "a new primary to accept a write", || {
        ids.iter()
            .find_map(|id| insert(c, *id, [row]).ok().map(|()| (*id, since.elapsed())))
    })
}

fn sampler(c: &RunCluster) -> Sampler {
    c.litefs_sampler()
}

/// The shim's side of the invariant: `.role` on every node, every few ms.
fn role_sampler(c: &RunCluster) -> Sampler {
    c.role_sampler()
}

fn assert_never_two_roles_primary(s: Sampler) -> u64 {
    let (samples, violations) = s.finish();
    assert!(
        violations.is_empty(),
        "two shims said primary at once: {violations:#?}"
    );
    assert!(samples > 100, "the .role sampler barely ran ({samples})");
    samples
}

/// Stops the `/info` sampler; fails the test if it ever saw two LiteFS primaries.
fn assert_never_two_primaries(s: Sampler) {
    let (rounds, violations) = s.finish();
    assert!(
        violations.is_empty(),
        "two LiteFS primaries at once: {violations:#?}"
    );
    assert!(rounds > 100, "the sampler barely ran ({rounds} rounds)");
    eprintln!("sampler: {rounds} rounds of /info on every node, never two primaries");
}

#[test]
fn a_write_on_the_primary_is_readable_on_both_replicas() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let mut c = start(&litefs);
    let all = c.ids();
    let primary = c.wait_one_primary(&all, START).unwrap();
    eprintln!(
        "cluster up: node {primary} primary after {:?}",
        started.elapsed()
    );
    create(&c, primary).unwrap();
    let mut lags = Vec::new();
    for batch in 0..5i64 {
        let rows: Vec<i64> = (batch * 10 + 1..=batch * 10 + 10).collect();
        insert(&c, primary, rows.iter().copied()).unwrap();
        let want: Vec<i64> = (1..=batch * 10 + 10).collect();
        assert_eq!(ids(&c, primary).unwrap(), want);
        for r in all.iter().filter(|id| **id != primary) {
            lags.push(wait_rows(&c, *r, &want, REPLICATION));
        }
    }
    lags.sort();
    eprintln!(
        "replication (commit on the primary -> visible through a replica's shim): n={} min={:?} median={:?} max={:?}",
        lags.len(),
        lags[0],
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
    // Steady state: on every node, at every look for 2 s, the shim's `.primary` says what
    // LiteFS's `/info` says.
    let steady = Instant::now();
    let mut looks = 0;
    while steady.elapsed() < Duration::from_secs(2) {
        for id in &all {
            let named = c.shim_agrees_with_litefs(*id);
            let want = (*id != primary).then(|| c.hostname(primary));
            assert_eq!(named, Ok(want), "node {id}, look {looks}");
        }
        looks += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    for id in &all {
        assert_eq!(integrity(&c, *id), "ok", "node {id}");
    }
    // `litefs-py status` on a replica: every node's TXID and lag, and a stopped node unknown.
    let replicas: Vec<u64> = all.iter().copied().filter(|id| *id != primary).collect();
    status::every_node_at_the_primarys_txid(&c, primary, replicas[0], DB);
    status::a_stopped_node_is_unknown_with_the_reason(&mut c, replicas[0], replicas[1]);
}

#[test]
fn after_kill_9_of_the_primary_a_new_one_takes_writes_and_nothing_acknowledged_is_lost() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut c = start(&litefs);
    let all = c.ids();
    let sampler = sampler(&c);
    // Acknowledged by the primary and replicated to both replicas: must survive.
    let (old, _) = seed(&mut c, 20);
    let survivors: Vec<u64> = all.iter().copied().filter(|id| *id != old).collect();

    let killed = Instant::now();
    c.kill9(old).unwrap();
    let (new, write_after) = first_accepted_write(&c, &survivors, 21, killed);
    eprintln!(
        "kill -9 of primary node {old} -> first write accepted by node {new}: {write_after:?}"
    );
    // LiteFS and the shim agree on every surviving node: the new primary, and a replica of it.
    assert_eq!(
        c.wait_one_primary(&survivors, Duration::from_secs(10))
            .unwrap(),
        new
    );
    let all_rows: Vec<i64> = (1..=21).collect();
    assert_rows_everywhere(&c, &survivors, &all_rows);
    for id in &survivors {
        let named = c.shim_agrees_with_litefs(*id).unwrap();
        assert_eq!(named, (*id != new).then(|| c.hostname(new)), "node {id}");
    }

    // The old primary comes back (same data dirs) as a replica of the new one, with every row.
    let restarted = Instant::now();
    c.node_mut(old).start(SLEEPING_APP).unwrap();
    assert_eq!(c.wait_one_primary(&all, START).unwrap(), new);
    wait_rows(&c, old, &all_rows, REPLICATION);
    eprintln!(
        "old primary restarted -> replica of node {new} with every row: {:?}",
        restarted.elapsed()
    );
    insert(&c, new, [22]).unwrap();
    let all_rows: Vec<i64> = (1..=22).collect();
    for id in &all {
        wait_rows(&c, *id, &all_rows, REPLICATION);
    }
    assert_never_two_primaries(sampler);
}

#[test]
fn a_write_through_a_replica_fails_read_only_and_changes_nothing() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut c = start(&litefs);
    let all = c.ids();
    let primary = c.wait_one_primary(&all, START).unwrap();
    let replicas: Vec<u64> = all.iter().copied().filter(|id| *id != primary).collect();
    create(&c, primary).unwrap();
    insert(&c, primary, 1..=10).unwrap();
    // A second database in rollback-journal mode.
    let journal = {
        let db = connect(&c.db(primary, "journal.db")).unwrap();
        db.execute_batch(
            "PRAGMA journal_mode=delete; CREATE TABLE j(x); INSERT INTO j VALUES (1);",
        )
        .unwrap();
        |c: &RunCluster, id: u64| -> rusqlite::Result<i64> {
            connect(&c.db(id, "journal.db"))?.query_row("SELECT count(*) FROM j", [], |r| r.get(0))
        }
    };
    let rows: Vec<i64> = (1..=10).collect();
    for r in &replicas {
        wait_rows(&c, *r, &rows, REPLICATION);
        wait_for(REPLICATION, "journal.db on the replica", || {
            journal(&c, *r).ok().filter(|n| *n == 1)
        });
    }
    for r in &replicas {
        // Rollback journal: LiteFS refuses to create the journal on a replica; SQLite says
        // read-only.
        let db = connect(&c.db(*r, "journal.db")).unwrap();
        let e = db.execute("INSERT INTO j VALUES (2)", []).unwrap_err();
        assert_eq!(
            e.sqlite_error_code(),
            Some(ErrorCode::ReadOnly),
            "node {r}: {e}"
        );
        assert!(e.to_string().contains("readonly database"), "node {r}: {e}");
        drop(db);
        // WAL: LiteFS refuses the write to the WAL ("read only replica"); SQLite can only
        // report that as an I/O error on the write (it has no read-only code for it).
        let db = connect(&c.db(*r, DB)).unwrap();
        let e = db
            .execute("INSERT INTO t(id, v) VALUES (99, 'no')", [])
            .unwrap_err();
        assert_eq!(
            e.sqlite_error_code(),
            Some(ErrorCode::SystemIoFailure),
            "node {r}: {e}"
        );
        assert!(
            c.node(*r).log().contains("read only replica"),
            "node {r}: LiteFS did not say why"
        );
        drop(db);
        // Nothing changed, nothing is damaged.
        assert_eq!(ids(&c, *r).unwrap(), rows, "node {r}");
        assert_eq!(journal(&c, *r).unwrap(), 1);
        assert_eq!(integrity(&c, *r), "ok", "node {r}");
    }
    assert_eq!(integrity(&c, primary), "ok");
    // The failed writes left no lock behind: replication goes on.
    insert(&c, primary, 11..=20).unwrap();
    let rows: Vec<i64> = (1..=20).collect();
    for id in &all {
        wait_rows(&c, *id, &rows, REPLICATION);
    }
}

#[test]
fn a_partitioned_primary_demotes_before_a_new_one_is_elected_and_rejoins_as_replica() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut c = start(&litefs);
    let all = c.ids();
    // For the whole test: never two LiteFS primaries at once, nor two shims saying `primary`.
    let sampler = sampler(&c);
    let roles = role_sampler(&c);
    let mut primary = c.wait_one_primary(&all, START).unwrap();
    create(&c, primary).unwrap();
    let mut rows: Vec<i64> = Vec::new();
    let mut next = 1i64;
    for round in 0..2 {
        insert(&c, primary, next..next + 10).unwrap();
        rows.extend(next..next + 10);
        next += 10;
        for id in &all {
            wait_rows(&c, *id, &rows, REPLICATION);
        }
        let old = primary;
        let others: Vec<u64> = all.iter().copied().filter(|id| *id != old).collect();
        c.set_blocked(old, &others).unwrap();
        let cut = Instant::now();
        // Its raft leadership goes stale at once, its next renewal is refused: LiteFS demotes.
        let demoted = wait_for(FAILOVER, "the cut-off primary's LiteFS to demote", || {
            c.info(old)
                .is_some_and(|i| !i.is_primary)
                .then(|| cut.elapsed())
        });
        assert_ne!(c.role(old).as_deref(), Some("primary"), "round {round}");
        let (new, write_after) = first_accepted_write(&c, &others, next, cut);
        rows.push(next);
        next += 1;
        assert_eq!(
            c.wait_one_primary(&others, Duration::from_secs(10))
                .unwrap(),
            new,
            "round {round}"
        );
        // The cut-off node takes no write meanwhile (LiteFS is not primary there).
        assert!(
            insert(&c, old, [1000 + round]).is_err(),
            "round {round}: the cut-off node accepted a write"
        );
        eprintln!(
            "round {round}: cut primary node {old}: its LiteFS demoted after {demoted:?}; node {new} took a write after {write_after:?}"
        );
        // Heal: it rejoins as a replica of the new primary and catches up.
        c.set_blocked(old, &[]).unwrap();
        let healed = Instant::now();
        assert_eq!(
            c.wait_one_primary(&all, START).unwrap(),
            new,
            "round {round}"
        );
        wait_rows(&c, old, &rows, REPLICATION);
        eprintln!(
            "round {round}: healed -> node {old} a replica of node {new} with every row after {:?}",
            healed.elapsed()
        );
        primary = new;
    }
    for id in &all {
        assert_eq!(integrity(&c, *id), "ok", "node {id}");
    }
    assert_never_two_primaries(sampler);
    let samples = assert_never_two_roles_primary(roles);
    eprintln!("sampler: {samples} rounds of .role on every node, never two primaries");
}

/// Waits until `pid` (the process, if it still runs as the node's) is gone, at most 1 s after
/// `killed`; returns when it went. Past the second it is killed here and the test fails.
fn gone_within_1s(killed: Instant, what: &str, pid: impl Fn() -> Option<i32>) -> Duration {
    while let Some(p) = pid() {
        if killed.elapsed() > Duration::from_secs(1) {
            // SAFETY: the node's process, checked against its command line or environment by
            // `pid` just now.
            unsafe { libc::kill(p, libc::SIGKILL) };
            panic!("the killed node's {what} outlived its litefs-py run by 1 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    killed.elapsed()
}

#[test]
fn after_kill_9_of_the_primarys_daemon_alone_the_node_restarts_over_its_dead_litefs_mount() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut c = start(&litefs);
    let all = c.ids();
    let sampler = sampler(&c);
    let (old, _) = seed(&mut c, 10);
    // Only `litefs-py run` dies: its LiteFS dies with it (PDEATHSIG), before anyone else is
    // granted the lease (the sampler), and so does its app (SIGTERM).
    let app = c.node(old).app_pid().expect("the node's app runs");
    let killed = Instant::now();
    c.node_mut(old).kill9();
    let run = c.node(old);
    // The kernel signals at once (a few ms); an orphan without PDEATHSIG lived on: LiteFS until
    // its next log line, up to a renewal interval (1 s) later, the app for ever.
    let litefs_gone = gone_within_1s(killed, "LiteFS", || run.litefs_pid());
    eprintln!("node {old}'s LiteFS died with its run after {litefs_gone:?}");
    let app_gone = gone_within_1s(killed, "app", || run.app_pid().filter(|p| *p == app));
    eprintln!("node {old}'s app died with its run after {app_gone:?}");
    let others: Vec<u64> = all.iter().copied().filter(|id| *id != old).collect();
    let (new, write_after) = first_accepted_write(&c, &others, 11, killed);
    eprintln!(
        "kill -9 of node {old}'s litefs-py run alone -> node {new} took a write after {write_after:?}"
    );
    // What it leaves: a dead FUSE mount at mount.lower (the shim's own watchdog unmounted mnt/).
    assert!(
        mount::is_mounted(&run.path("lower")),
        "no dead LiteFS mount left to test with"
    );
    // The node restarts over it and rejoins as a replica with every row.
    let restarted = Instant::now();
    c.node_mut(old).start(SLEEPING_APP).unwrap();
    assert_eq!(c.wait_one_primary(&all, START).unwrap(), new);
    let rows: Vec<i64> = (1..=11).collect();
    wait_rows(&c, old, &rows, REPLICATION);
    eprintln!(
        "restarted over the dead mount -> replica with every row after {:?}",
        restarted.elapsed()
    );
    assert!(
        c.node(old)
            .log()
            .contains("detached a dead FUSE mount left at mount.lower"),
        "{}",
        c.node(old).log()
    );
    assert_never_two_primaries(sampler);
}

/// A double failure: a replica down, a write that only the other replica gets, the primary
/// down. The last node must never be primary alone; when the first replica comes back it wins
/// raft's election (raft compares raft logs, and LiteFS's data is not in them), and its lease
/// API must see that the other node's LiteFS is fresher and hand leadership there, so that the
/// write survives.
#[test]
fn after_a_double_failure_the_node_with_the_newest_data_becomes_primary() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut c = start(&litefs);
    let all = c.ids();
    let sampler = sampler(&c);
    let first = c.wait_one_primary(&all, START).unwrap();
    let replicas: Vec<u64> = all.iter().copied().filter(|id| *id != first).collect();
    let (down, alone) = (replicas[0], replicas[1]);
    // `alone` never runs for leader on its own (it still votes): the behind node wins below.
    c.set_faults(alone, &[], false).unwrap();
    create(&c, first).unwrap();
    insert(&c, first, 1..=5).unwrap();
    // One replica down: two of three still make a quorum, the primary keeps taking writes.
    c.kill9(down).unwrap();
    insert(&c, first, [6]).unwrap();
    let rows: Vec<i64> = (1..=6).collect();
    wait_rows(&c, alone, &rows, REPLICATION);
    assert_eq!(
        c.wait_one_primary(&[first, alone], Duration::from_secs(5))
            .unwrap(),
        first
    );
    // The primary down too: the last node has no quorum and must never be primary.
    c.kill9(first).unwrap();
    let lost = Instant::now();
    while lost.elapsed() < FAILOVER {
        c.assert_running(&[alone]).unwrap();
        let info = c.info(alone);
        assert!(
            !info.as_ref().is_some_and(|i| i.is_primary),
            "node {alone} became primary without a quorum: {info:?}"
        );
        assert_ne!(c.role(alone).as_deref(), Some("primary"));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(insert(&c, alone, [7]).is_err(), "a write without a quorum");
    // `down` back, without row 6: a quorum again. It leads first, then hands over.
    let back = Instant::now();
    c.node_mut(down).start(SLEEPING_APP).unwrap();
    let (new, write_after) = first_accepted_write(&c, &[alone, down], 7, back);
    eprintln!(
        "quorum back (node {down} restarted) -> node {new} took a write after {write_after:?}"
    );
    assert_eq!(
        new, alone,
        "node {new}, whose LiteFS lacks row 6, became primary"
    );
    let moved = format!("moving raft leadership to node {alone} instead of becoming primary");
    assert!(
        c.node(down).log().contains(&moved),
        "node {down} never led, or never handed over (the test did not exercise the check):\n{}",
        c.node(down).log()
    );
    c.set_faults(alone, &[], true).unwrap();
    c.node_mut(first).start(SLEEPING_APP).unwrap();
    assert_eq!(c.wait_one_primary(&all, START).unwrap(), alone);
    // Every row, row 6 included, on every node, in an intact database.
    let rows: Vec<i64> = (1..=7).collect();
    assert_rows_everywhere(&c, &all, &rows);
    assert_never_two_primaries(sampler);
}

#[test]
fn the_whole_cluster_stops_cleanly_and_restarts_with_every_row() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut c = start(&litefs);
    let all = c.ids();
    let (_, rows) = seed(&mut c, 10);
    // SIGTERM to all three at once, as an orchestrator stopping a deployment does.
    let stopping = Instant::now();
    for id in &all {
        c.node(*id).sigterm();
    }
    for id in &all {
        let run = c.node_mut(*id);
        let status = run.wait_exit(Duration::from_secs(40)).unwrap();
        // The app (`sleep`) dies of the SIGTERM passed on: 128 + 15.
        assert_eq!(status.code(), Some(143), "node {id}:\n{}", run.log());
        run.assert_nothing_left();
    }
    eprintln!("all three stopped after {:?}", stopping.elapsed());
    let restarted = Instant::now();
    for id in &all {
        c.node_mut(*id).start(SLEEPING_APP).unwrap();
    }
    let new = c.wait_one_primary(&all, START).unwrap();
    eprintln!(
        "restarted: node {new} primary after {:?}",
        restarted.elapsed()
    );
    for id in &all {
        wait_rows(&c, *id, &rows, REPLICATION);
    }
    insert(&c, new, [11]).unwrap();
    let rows: Vec<i64> = (1..=11).collect();
    assert_rows_everywhere(&c, &all, &rows);
}
