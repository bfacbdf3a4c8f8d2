//! `litefs-py status` on a replica of the three `run` nodes of `cluster_litefs.rs`: every
//! node's LiteFS TXID of the database and its lag against the primary, and a stopped node shown
//! as unknown, with the reason, within the status call's bound.

use std::process::Command;
use std::time::{Duration, Instant};

use litefs_py_testkit::cluster::RunCluster;
use litefs_py_testkit::wait::wait_for;
use litefs_py_testkit::{process, stall};
use serde_json::Value;

use crate::common::BIN;

/// `litefs-py status [--json]` may take 3 s at most (its client's timeout); this only stops a
/// hung command from hanging the test.
const COMMAND_BOUND: Duration = Duration::from_secs(30);

/// `litefs-py status ARGS --config <node via's config>`: its stdout, and how long it took.
/// Fails the test if it does not exit 0.
fn status(c: &RunCluster, via: u64, args: &[&str]) -> (String, Duration) {
    let mut cmd = Command::new(BIN);
    cmd.arg("status")
        .args(args)
        .arg("--config")
        .arg(c.node(via).config_path());
    let started = Instant::now();
    let out = process::output_within(cmd, COMMAND_BOUND).expect("litefs-py status");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "litefs-py status {args:?} via node {via}: {:?}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, took)
}

fn status_json(c: &RunCluster, via: u64) -> Value {
    let (out, _) = status(c, via, &["--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}\n{out}"))
}

/// Member `id` of a `status --json`.
fn member(v: &Value, id: u64) -> &Value {
    v["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"] == id))
        .unwrap_or_else(|| panic!("no member {id} in {v:#}"))
}

/// The TXID of `db` in the primary's LiteFS, from its `<db>-pos` file (`%016x/%016x`).
fn primary_txid(c: &RunCluster, primary: u64, db: &str) -> u64 {
    let pos = c.node(primary).path("lower").join(format!("{db}-pos"));
    let text = std::fs::read_to_string(&pos).unwrap_or_else(|e| panic!("{pos:?}: {e}"));
    let (txid, _) = text.trim().split_once('/').expect("TXID/checksum");
    u64::from_str_radix(txid, 16).expect("hex TXID")
}

/// With writes done on `primary`: `status` on replica `via` reports, for every node, `db` at
/// the primary's TXID (read from its `<db>-pos` file) with lag 0, once replicated (a bounded
/// wait), and the table says the same.
pub fn every_node_at_the_primarys_txid(c: &RunCluster, primary: u64, via: u64, db: &str) {
    let want = primary_txid(c, primary, db);
    assert!(want > 0);
    let ids = c.ids();
    let caught_up = |v: &Value| {
        ids.iter().all(|id| {
            let d = &member(v, *id)["litefs"]["databases"][db];
            d["txid"] == want && d["lag"] == 0
        })
    };
    let v = wait_for(
        Duration::from_secs(10),
        "status on a replica to show every node at the primary's TXID, lag 0",
        || Some(status_json(c, via)).filter(caught_up),
    );
    assert_eq!(v["litefs"]["primary"], primary, "{v:#}");
    for id in &ids {
        let m = &member(&v, *id)["litefs"];
        assert_eq!(m["state"], "known", "node {id}: {v:#}");
        assert_eq!(m["is_primary"], *id == primary, "node {id}: {v:#}");
    }
    let (table, took) = status(c, via, &[]);
    eprintln!("status on node {via} ({took:?}, under load):\n{table}");
    for id in &ids {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")) || l.starts_with(&format!("{id}* ")))
            .unwrap_or_else(|| panic!("no row for node {id}:\n{table}"));
        let cell = if *id == primary {
            format!("primary  {db} {want}")
        } else {
            format!("replica  {db} {want} lag 0")
        };
        assert!(row.ends_with(&cell), "node {id}: want {cell:?} in\n{table}");
    }
}

/// Sends SIGCONT to a stopped `run` when dropped, so a failing check leaves it running (its
/// guard can stop it then).
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        stall::signal(self.0, libc::SIGCONT);
    }
}

/// With `stopped`'s `litefs-py run` stopped (SIGSTOP): `status` on `via` still answers, shows
/// that node's LiteFS as unknown with the reason, and the others as known. Resumed after.
pub fn a_stopped_node_is_unknown_with_the_reason(c: &mut RunCluster, via: u64, stopped: u64) {
    let pid = c.node_mut(stopped).pid().expect("run of the node to stop");
    let raft_addr = c.node(stopped).ports.raft.clone();
    stall::signal(pid, libc::SIGSTOP);
    let resume = Resume(pid);
    let started = Instant::now();
    let v = status_json(c, via);
    eprintln!(
        "status with node {stopped} stopped answered after {:?} (under load)",
        started.elapsed()
    );
    let m = &member(&v, stopped)["litefs"];
    assert_eq!(m["state"], "unknown", "{v:#}");
    let reason = m["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&raft_addr) && reason.contains("did not answer within"),
        "node {stopped}: {reason:?}"
    );
    for id in c.ids().into_iter().filter(|id| *id != stopped) {
        assert_eq!(
            member(&v, id)["litefs"]["state"],
            "known",
            "node {id}: {v:#}"
        );
    }
    let (table, took) = status(c, via, &[]);
    eprintln!("status on node {via} with node {stopped} stopped ({took:?}, under load):\n{table}");
    let note = format!("node {stopped}: LiteFS position unknown: {raft_addr} ");
    assert!(table.contains(&note), "want {note:?} in\n{table}");
    drop(resume);
}
