//! `litefs-py run --migrate` / `run.migrate` on `run` nodes with the real LiteFS (v0.5.14) on
//! loopback: the primary runs the command, replicas start their app only once its result has
//! replicated, a node promoted while the primary was migrating migrates itself, and a failing
//! command stops `run` with its status and its output in the log.
//!
//! Needs root, /dev/fuse and a `litefs` binary (see tests/cluster_litefs.rs). Every wait is
//! bounded; the kit's guards stop every process and detach every mount, also on failure.

mod common;

use std::time::Duration;

use common::{run_options, serial};
use litefs_py_testkit::cluster::RunCluster;
use litefs_py_testkit::prereq;
use litefs_py_testkit::wait::wait_for;

const START: Duration = Duration::from_secs(90);

/// The migration: creates a table (slowly, so that replicas have to wait for it).
const MIGRATE: &str = "sleep 1; sqlite3 \"$LITEFS_DIR/app.db\" \
    'PRAGMA journal_mode=wal; CREATE TABLE IF NOT EXISTS migrated(x); INSERT INTO migrated VALUES (1);' \
    >/dev/null && echo \"migrate-ran-on-$LITEFS_PY_TEST_NODE\"";

/// The app: says whether the migrated table was there when it started, then sleeps. The answer
/// file appears whole (a rename): the test read an empty one once, between `>` and the write.
const APP: &str = "mkdir -p \"$1\"; \
    if sqlite3 \"$LITEFS_DIR/app.db\" \"SELECT name FROM sqlite_master WHERE name='migrated'\" \
       2>/dev/null | grep -q migrated; then s=yes; else s=no; fi; \
    echo $s > \"$1/schema.new\" && mv \"$1/schema.new\" \"$1/schema\"; \
    exec sleep 100000";

#[test]
fn the_primary_migrates_and_replicas_start_once_the_schema_is_there() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut c = RunCluster::create_with(run_options(), &litefs, 3, |_, cfg| {
        // litefs-py.yml expands `$VAR`: `$$` is a literal `$`.
        cfg.run_migrate(&MIGRATE.replace('$', "$$"))
    })
    .unwrap();
    for id in c.ids() {
        let node = c.node_mut(id);
        node.env
            .push(("LITEFS_PY_TEST_NODE".into(), id.to_string()));
        node.start(APP).unwrap();
    }
    let all = c.ids();
    for &id in &all {
        let schema = wait_for(START, &format!("node {id}'s app to start"), || {
            c.node(id).app_file("schema")
        });
        assert_eq!(
            schema.trim(),
            "yes",
            "node {id}'s app started before the table was there:\n{}",
            c.node(id).log_tail(60)
        );
    }
    let primary = c.wait_one_primary(&all, START).unwrap();
    let ran: Vec<u64> = all
        .iter()
        .copied()
        .filter(|&id| c.node(id).log().contains(&format!("migrate-ran-on-{id}")))
        .collect();
    // The command ran on the primary (and nowhere else, unless the primary moved meanwhile).
    assert!(
        ran.contains(&primary),
        "the migrate command did not run on the primary {primary} (ran on {ran:?})"
    );
    for &id in all.iter().filter(|&&id| !ran.contains(&id)) {
        let log = c.node(id).log();
        assert!(
            log.contains("the app waits for the schema"),
            "replica {id} did not wait for the schema:\n{}",
            c.node(id).log_tail(60)
        );
    }
    eprintln!("primary {primary}; the command ran on {ran:?}; every app saw the table");
    c.shutdown().unwrap();
}

#[test]
fn a_failing_migrate_command_stops_run_with_its_status_and_output() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut c = RunCluster::create_with(run_options(), &litefs, 1, |_, cfg| {
        cfg.run_migrate("echo 'migration-boom: no such column' >&2; exit 3")
    })
    .unwrap();
    c.node_mut(1)
        .start("mkdir -p \"$1\"; echo started > \"$1/started\"; exec sleep 100000")
        .unwrap();
    let status = c.node_mut(1).wait_exit(START).unwrap();
    let log = c.node(1).log();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("migration-boom: no such column"), "{log}");
    assert!(log.contains("the migrate command exited with"), "{log}");
    assert_eq!(
        c.node(1).app_file("started"),
        None,
        "the app started: {log}"
    );
    c.node(1).assert_nothing_left();
    c.shutdown().unwrap();
}

/// A migration that says when it starts, then takes long enough to be cut short.
const SLOW_MIGRATE: &str = "echo \"migrate-started-on-$LITEFS_PY_TEST_NODE\"; sleep 15; \
    sqlite3 \"$LITEFS_DIR/app.db\" \
    'PRAGMA journal_mode=wal; CREATE TABLE IF NOT EXISTS migrated(x); INSERT INTO migrated VALUES (1);' \
    >/dev/null && echo \"migrate-ran-on-$LITEFS_PY_TEST_NODE\"";

/// The primary dies (kill -9) in the middle of its migration: the node promoted after it runs
/// the command itself, every surviving app starts with the schema there, and the killed node,
/// restarted, starts its app as a replica with the schema there too.
#[test]
fn a_promotion_in_the_middle_of_a_migration_migrates_on_the_new_primary() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let mut c = RunCluster::create_with(run_options(), &litefs, 3, |_, cfg| {
        cfg.run_migrate(&SLOW_MIGRATE.replace('$', "$$"))
    })
    .unwrap();
    for id in c.ids() {
        let node = c.node_mut(id);
        node.env
            .push(("LITEFS_PY_TEST_NODE".into(), id.to_string()));
        node.start(APP).unwrap();
    }
    let all = c.ids();
    let first = wait_for(START, "a primary to start migrating", || {
        all.iter().copied().find(|&id| {
            c.node(id)
                .log()
                .contains(&format!("migrate-started-on-{id}"))
        })
    });
    // The other two must follow the primary's LiteFS by then: a LiteFS that never reached a
    // primary has no cluster id and refuses to become primary (LiteFS's rule), so a cluster
    // whose primary dies before any replica attached has no node that can take over. And they
    // must be voters, or no quorum is left after the kill.
    wait_for(START, "both replicas' LiteFS to follow the primary", || {
        all.iter()
            .filter(|&&id| id != first)
            .all(|&id| {
                c.info(id)
                    .is_some_and(|i| i.cluster_id.is_some() && i.primary.is_some())
            })
            .then_some(())
    });
    wait_for(START, "three voters in the membership", || {
        let r = litefs_py_testkit::http::get(&c.node(first).ports.http, "/status").ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        let voters = v["members"]
            .as_array()?
            .iter()
            .filter(|m| m["role"] == "voter")
            .count();
        (voters == 3).then_some(())
    });
    c.kill9(first).unwrap();
    assert!(
        !c.node(first)
            .log()
            .contains(&format!("migrate-ran-on-{first}")),
        "node {first} finished its migration before the kill: nothing was cut short"
    );
    let survivors: Vec<u64> = all.iter().copied().filter(|&id| id != first).collect();
    for &id in &survivors {
        let schema = wait_for(START, &format!("node {id}'s app to start"), || {
            c.node(id).app_file("schema")
        });
        assert_eq!(
            schema.trim(),
            "yes",
            "node {id}'s app started before the table was there:\n{}",
            c.node(id).log_tail(60)
        );
    }
    let new_primary = c.wait_one_primary(&survivors, START).unwrap();
    assert!(
        c.node(new_primary)
            .log()
            .contains(&format!("migrate-ran-on-{new_primary}")),
        "the new primary {new_primary} did not run the migration:\n{}",
        c.node(new_primary).log_tail(60)
    );
    // The killed node comes back as a replica; its app starts once the schema is there.
    c.node_mut(first).start(APP).unwrap();
    let schema = wait_for(START, "the restarted node's app to start", || {
        c.node(first).app_file("schema")
    });
    assert_eq!(schema.trim(), "yes", "{}", c.node(first).log_tail(60));
    eprintln!(
        "node {first} killed while migrating; node {new_primary} migrated; every app saw the table"
    );
    c.shutdown().unwrap();
}
