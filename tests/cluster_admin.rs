//! Membership changes while serving, the shared secret, and errors at the edges (a damaged raft
//! data dir, an invalid config, a port in use, no daemon): each is one clear line and exit 1.
//!
//! Needs root and /dev/fuse (the nodes are real `litefs-py mount` processes).

mod common;

use std::fs;
use std::time::Duration;

use common::{Cluster, Sampler, Spec, run_cli, serial, stderr_lines};

const AGREE: Duration = Duration::from_secs(15);

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit status 1 and exactly one line on stderr, starting `litefs-py: `; returns it.
fn one_line_failure(out: &std::process::Output, what: &str) -> String {
    let lines = stderr_lines(out);
    assert_eq!(out.status.code(), Some(1), "{what}: {lines:?}");
    assert_eq!(lines.len(), 1, "{what}: expected one line, got {lines:#?}");
    assert!(lines[0].starts_with("litefs-py: "), "{what}: {lines:?}");
    lines[0].clone()
}

fn voters(c: &Cluster, id: u64) -> Vec<u64> {
    let s = c.status(id).expect("status");
    let mut v: Vec<u64> = s["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["role"] == "voter")
        .filter_map(|m| m["id"].as_u64())
        .collect();
    v.sort();
    v
}

fn config_arg(c: &Cluster, id: u64) -> String {
    c.config(id).to_string_lossy().into_owned()
}

#[test]
fn membership_add_and_remove_while_serving() {
    let _serial = serial();
    let mut c = Cluster::new(5);
    for id in 1..=3 {
        c.add(Spec::mount(id, &[1, 2, 3]));
    }
    // Node 4 knows only itself and does not bootstrap: it waits to be added.
    c.add(Spec {
        bootstrap: false,
        ..Spec::mount(4, &[4])
    });
    c.start_all();
    let sampler = Sampler::start(
        c.mount_ids()
            .into_iter()
            .map(|id| (id, c.mnt(id)))
            .collect(),
    );
    let leader = c.wait_agreement(&[1, 2, 3], AGREE);
    assert_eq!(c.role(4).as_deref(), Some("electing"));
    assert_eq!(c.primary_file(4).unwrap().as_deref(), Some(""));

    // Asked through a follower: forwarded to the leader. Learner, caught up, promoted.
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let raft4 = c.ports.raft(4);
    let out = c.cli(&[
        "cluster",
        "add",
        "4",
        &raft4,
        "--config",
        &config_arg(&c, follower),
    ]);
    let text = ok(&out, "cluster add 4");
    assert!(text.contains("node 4 (host-4) added as a voter"), "{text}");
    assert_eq!(voters(&c, leader), vec![1, 2, 3, 4]);
    let leader = c.wait_agreement(&[1, 2, 3, 4], AGREE);
    // Adding it again is a no-op that says so.
    let out = c.cli(&[
        "cluster",
        "add",
        "4",
        &raft4,
        "--config",
        &config_arg(&c, 4),
    ]);
    assert!(ok(&out, "cluster add 4 again").contains("already a voter"));

    // `status` as a table and as JSON.
    let table = ok(
        &c.cli(&["status", "--config", &config_arg(&c, 4)]),
        "status",
    );
    assert!(
        table.contains("host-4") && table.contains("voter"),
        "{table}"
    );
    let json = ok(
        &c.cli(&["status", "--json", "--config", &config_arg(&c, 4)]),
        "status --json",
    );
    let v: serde_json::Value = serde_json::from_str(&json).expect("status JSON");
    assert_eq!(v["node_id"], 4);
    assert_eq!(v["members"].as_array().map(Vec::len), Some(4));

    // Remove a follower that is not the leader, then stop it: the rest keeps serving.
    let gone = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let out = c.cli(&[
        "cluster",
        "remove",
        &gone.to_string(),
        "--config",
        &config_arg(&c, 4),
    ]);
    assert!(ok(&out, "cluster remove").contains(&format!("node {gone} removed")));
    c.stop(gone);
    let rest: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != gone).collect();
    assert_eq!(voters(&c, leader), rest);
    assert_eq!(c.wait_agreement(&rest, AGREE), leader);
    // Three voters left: losing the leader still fails over.
    c.kill9(leader);
    let survivors: Vec<u64> = rest.iter().copied().filter(|id| *id != leader).collect();
    let new = c.wait_agreement(&survivors, AGREE);
    assert_ne!(new, leader);

    // Unknown node: refused, one line.
    let out = c.cli(&["cluster", "remove", "9", "--config", &config_arg(&c, new)]);
    let line = one_line_failure(&out, "remove an unknown node");
    assert!(line.contains("node 9 is not a member"), "{line}");
    let (_, violations) = sampler.finish();
    assert!(
        violations.is_empty(),
        "two primaries at once: {violations:#?}"
    );
}

#[test]
fn a_wrong_secret_is_rejected_and_the_node_does_not_join() {
    let _serial = serial();
    let mut c = Cluster::new(6);
    for id in 1..=3 {
        c.add(Spec::mount(id, &[1, 2, 3]));
    }
    c.add(Spec {
        bootstrap: false,
        secret: "not-the-cluster-secret".into(),
        ..Spec::mount(4, &[4])
    });
    c.start_all();
    let leader = c.wait_agreement(&[1, 2, 3], AGREE);
    let raft4 = c.ports.raft(4);
    let out = c.cli(&[
        "cluster",
        "add",
        "4",
        &raft4,
        "--config",
        &config_arg(&c, leader),
    ]);
    let line = one_line_failure(&out, "cluster add with a wrong secret");
    assert!(line.contains("401") && line.contains("secret"), "{line}");
    // Node 4 logged the rejected request with the caller's address.
    let log = c.log(4);
    assert!(
        log.lines()
            .any(|l| l.contains("rejected a raft request from 127.0.0.1:") && l.contains("(401)")),
        "node 4's log has no 401 line:\n{log}"
    );
    assert_eq!(voters(&c, leader), vec![1, 2, 3]);
    assert_eq!(c.role(4).as_deref(), Some("electing"));

    // The management API wants the secret too; the /metrics counter sees the rejections.
    let r = common::http(
        &c.ports.http(leader),
        "POST",
        "/cluster/remove",
        Some("nope"),
        r#"{"id":2}"#,
    );
    assert_eq!(r.map(|r| r.0), Some(401));
    assert_eq!(voters(&c, leader), vec![1, 2, 3]);
    let (_, metrics) = common::http(&c.ports.http(leader), "GET", "/metrics", None, "").unwrap();
    assert!(
        metrics.contains("litefs_py_rpc_rejected_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("litefs_py_role{role=\"primary\"} 1"),
        "{metrics}"
    );
    assert_eq!(c.agreement(&[1, 2, 3]), Some(leader));
}

#[test]
fn bad_data_dir_config_or_port_is_one_clear_line() {
    let _serial = serial();
    let mut c = Cluster::new(7);
    c.add(Spec::mount(1, &[1, 2, 3]));
    c.add(Spec::mount(2, &[1, 2, 3]));
    c.add(Spec::mount(3, &[3, 4]));
    let cfg = config_arg(&c, 1);
    let mnt = c.mnt(1).to_string_lossy().into_owned();
    let long = Duration::from_secs(30);

    // A damaged raft data file: named, exit 1, no panic, nothing left mounted.
    fs::create_dir_all(c.data_dir(1)).unwrap();
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(c.data_dir(1).join("raft.redb"), garbage).unwrap();
    let line = one_line_failure(
        &run_cli(&["mount", "--config", &cfg, &mnt], long),
        "damaged data file",
    );
    assert!(line.contains("raft.redb"), "{line}");
    assert!(!common::is_mounted(&c.mnt(1)));
    fs::remove_dir_all(c.data_dir(1)).unwrap();
    // Same for a witness (node 2's config: a witness cannot be the bootstrap node).
    let cfg2 = config_arg(&c, 2);
    fs::create_dir_all(c.data_dir(2)).unwrap();
    fs::write(c.data_dir(2).join("raft.redb"), b"not a database at all").unwrap();
    let line = one_line_failure(
        &run_cli(&["witness", "--config", &cfg2], long),
        "damaged data file (witness)",
    );
    assert!(line.contains("raft.redb"), "{line}");
    fs::remove_dir_all(c.data_dir(2)).unwrap();
    let line = one_line_failure(
        &run_cli(&["witness", "--config", &cfg], long),
        "bootstrap witness",
    );
    assert!(line.contains("cluster.bootstrap"), "{line}");

    // An invalid config: the key at fault.
    let good = fs::read_to_string(c.config(1)).unwrap();
    for (bad, key) in [
        (
            format!("{good}raft:\n  election-timeout-min: 150ms\n"),
            "raft.election-timeout-min",
        ),
        (
            format!("{good}raft:\n  heartbeat: 1s\n"),
            "unknown field `heartbeat`",
        ),
        (good.replace("id: 1\n", "id: 0\n"), "node.id"),
    ] {
        fs::write(c.config(1), bad).unwrap();
        let line = one_line_failure(&run_cli(&["mount", "--config", &cfg, &mnt], long), key);
        assert!(line.contains(key), "{line}");
    }
    fs::write(c.config(1), &good).unwrap();

    // The raft port taken by someone else.
    let taken = std::net::TcpListener::bind(c.ports.raft(1)).unwrap();
    let line = one_line_failure(
        &run_cli(&["mount", "--config", &cfg, &mnt], long),
        "port in use",
    );
    assert!(
        line.contains("node.raft-addr") && line.contains(&c.ports.raft(1)),
        "{line}"
    );
    drop(taken);

    // No daemon to ask.
    let line = one_line_failure(
        &run_cli(&["status", "--config", &cfg], long),
        "status, no daemon",
    );
    assert!(line.contains("cannot reach the litefs-py daemon"), "{line}");

    // Two voters and no witness: it starts, and says it cannot fail over.
    c.start(3);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !c.log(3).contains("two voters cannot fail over") {
        assert!(
            std::time::Instant::now() < deadline,
            "no two-voter warning:\n{}",
            c.log(3)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
