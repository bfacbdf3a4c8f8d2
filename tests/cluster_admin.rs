//! Membership changes while serving, the shared secret, and errors at the edges (a damaged raft
//! data dir, an invalid config, a port in use, no daemon): each is one clear line and exit 1.
//!
//! Needs root and /dev/fuse (the nodes are real `litefs-py mount` processes).

mod common;

use std::fs;
use std::process::Output;
use std::time::Duration;

use common::{mount_options, serial};
use litefs_py_testkit::cluster::{MountCluster, Sampler, Spec};
use litefs_py_testkit::process::stderr_lines;
use litefs_py_testkit::{http, mount};

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

fn cli(c: &MountCluster, args: &[&str]) -> Output {
    c.cli(args).unwrap()
}

fn voters(c: &MountCluster, id: u64) -> Vec<u64> {
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

fn config_arg(c: &MountCluster, id: u64) -> String {
    c.config_path(id).to_string_lossy().into_owned()
}

#[test]
fn membership_add_and_remove_while_serving() {
    let _serial = serial();
    let mut c = MountCluster::new(mount_options()).unwrap();
    for id in 1..=3 {
        c.add(Spec::mount(id, &[1, 2, 3])).unwrap();
    }
    // Node 4 knows only itself and does not bootstrap: it waits to be added.
    c.add(Spec {
        bootstrap: false,
        ..Spec::mount(4, &[4])
    })
    .unwrap();
    c.start_all().unwrap();
    let sampler = Sampler::roles(
        c.mount_ids()
            .into_iter()
            .map(|id| (id, c.mnt(id)))
            .collect(),
    );
    let leader = c.wait_agreement(&[1, 2, 3], AGREE).unwrap();
    assert_eq!(c.role(4).as_deref(), Some("electing"));
    assert_eq!(c.primary_file(4).unwrap().as_deref(), Some(""));

    // Asked through a follower: forwarded to the leader. Learner, caught up, promoted.
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let raft4 = c.ports(4).raft.clone();
    let out = cli(
        &c,
        &[
            "cluster",
            "add",
            "4",
            &raft4,
            "--config",
            &config_arg(&c, follower),
        ],
    );
    let text = ok(&out, "cluster add 4");
    assert!(text.contains("node 4 (host-4) added as a voter"), "{text}");
    assert_eq!(voters(&c, leader), vec![1, 2, 3, 4]);
    let leader = c.wait_agreement(&[1, 2, 3, 4], AGREE).unwrap();
    // Adding it again is a no-op that says so.
    let out = cli(
        &c,
        &[
            "cluster",
            "add",
            "4",
            &raft4,
            "--config",
            &config_arg(&c, 4),
        ],
    );
    assert!(ok(&out, "cluster add 4 again").contains("already a voter"));

    // `status` as a table and as JSON.
    let table = ok(
        &cli(&c, &["status", "--config", &config_arg(&c, 4)]),
        "status",
    );
    assert!(
        table.contains("host-4") && table.contains("voter"),
        "{table}"
    );
    let json = ok(
        &cli(&c, &["status", "--json", "--config", &config_arg(&c, 4)]),
        "status --json",
    );
    let v: serde_json::Value = serde_json::from_str(&json).expect("status JSON");
    assert_eq!(v["node_id"], 4);
    assert_eq!(v["members"].as_array().map(Vec::len), Some(4));

    // Remove a follower that is not the leader, then stop it: the rest keeps serving.
    let gone = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let out = cli(
        &c,
        &[
            "cluster",
            "remove",
            &gone.to_string(),
            "--config",
            &config_arg(&c, 4),
        ],
    );
    assert!(ok(&out, "cluster remove").contains(&format!("node {gone} removed")));
    c.stop(gone).unwrap();
    let rest: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != gone).collect();
    assert_eq!(voters(&c, leader), rest);
    assert_eq!(c.wait_agreement(&rest, AGREE).unwrap(), leader);
    // Three voters left: losing the leader still fails over.
    c.kill9(leader).unwrap();
    let survivors: Vec<u64> = rest.iter().copied().filter(|id| *id != leader).collect();
    let new = c.wait_agreement(&survivors, AGREE).unwrap();
    assert_ne!(new, leader);

    // Unknown node: refused, one line.
    let out = cli(
        &c,
        &["cluster", "remove", "9", "--config", &config_arg(&c, new)],
    );
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
    let mut c = MountCluster::new(mount_options()).unwrap();
    for id in 1..=3 {
        c.add(Spec::mount(id, &[1, 2, 3])).unwrap();
    }
    c.add(Spec {
        bootstrap: false,
        secret: Some("not-the-cluster-secret".into()),
        ..Spec::mount(4, &[4])
    })
    .unwrap();
    c.start_all().unwrap();
    let leader = c.wait_agreement(&[1, 2, 3], AGREE).unwrap();
    let raft4 = c.ports(4).raft.clone();
    let out = cli(
        &c,
        &[
            "cluster",
            "add",
            "4",
            &raft4,
            "--config",
            &config_arg(&c, leader),
        ],
    );
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
    let r = http::request(
        "POST",
        &c.ports(leader).http,
        "/cluster/remove",
        Some("nope"),
        Some(r#"{"id":2}"#),
    );
    assert_eq!(r.map(|r| r.status).ok(), Some(401));
    assert_eq!(voters(&c, leader), vec![1, 2, 3]);
    let metrics = http::get(&c.ports(leader).http, "/metrics").unwrap().body;
    assert!(
        metrics.contains("litefs_py_rpc_rejected_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("litefs_py_role{role=\"primary\"} 1"),
        "{metrics}"
    );
    // The shim's requests by opcode: `.role` has been opened and read through the mount (the
    // samplers and `c.role`), so those counters have moved.
    let count = |op: &str| -> u64 {
        let prefix = format!("litefs_py_fuse_requests_total{{op=\"{op}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} line in /metrics:\n{metrics}"))
    };
    assert!(count("open") > 0 && count("read") > 0, "{metrics}");
    assert_eq!(count("mknod"), 0, "nothing made a device node");
    assert_eq!(c.agreement(&[1, 2, 3]), Some(leader));
}

#[test]
fn bad_data_dir_config_or_port_is_one_clear_line() {
    let _serial = serial();
    let mut c = MountCluster::new(mount_options()).unwrap();
    c.add(Spec::mount(1, &[1, 2, 3])).unwrap();
    c.add(Spec::mount(2, &[1, 2, 3])).unwrap();
    c.add(Spec::mount(3, &[3, 4])).unwrap();
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
        &c.cli_within(&["mount", "--config", &cfg, &mnt], long)
            .unwrap(),
        "damaged data file",
    );
    assert!(line.contains("raft.redb"), "{line}");
    assert!(!mount::is_mounted(&c.mnt(1)));
    fs::remove_dir_all(c.data_dir(1)).unwrap();
    // Same for a witness (node 2's config: a witness cannot be the bootstrap node).
    let cfg2 = config_arg(&c, 2);
    fs::create_dir_all(c.data_dir(2)).unwrap();
    fs::write(c.data_dir(2).join("raft.redb"), b"not a database at all").unwrap();
    let line = one_line_failure(
        &c.cli_within(&["witness", "--config", &cfg2], long).unwrap(),
        "damaged data file (witness)",
    );
    assert!(line.contains("raft.redb"), "{line}");
    fs::remove_dir_all(c.data_dir(2)).unwrap();
    let line = one_line_failure(
        &c.cli_within(&["witness", "--config", &cfg], long).unwrap(),
        "bootstrap witness",
    );
    assert!(line.contains("cluster.bootstrap"), "{line}");

    // An invalid config: the key at fault.
    let good = c.config(1).clone();
    for (bad, key) in [
        (
            good.clone().set("raft.election-timeout-min", "150ms"),
            "raft.election-timeout-min",
        ),
        (
            good.clone().set("raft.heartbeat", "1s"),
            "unknown field `heartbeat`",
        ),
        (good.clone().set("node.id", 0), "node.id"),
    ] {
        bad.write(&c.config_path(1)).unwrap();
        let line = one_line_failure(
            &c.cli_within(&["mount", "--config", &cfg, &mnt], long)
                .unwrap(),
            key,
        );
        assert!(line.contains(key), "{line}");
    }
    good.write(&c.config_path(1)).unwrap();

    // The raft port taken by someone else.
    let taken = std::net::TcpListener::bind(&c.ports(1).raft).unwrap();
    let line = one_line_failure(
        &c.cli_within(&["mount", "--config", &cfg, &mnt], long)
            .unwrap(),
        "port in use",
    );
    assert!(
        line.contains("node.raft-addr") && line.contains(&c.ports(1).raft),
        "{line}"
    );
    drop(taken);

    // No daemon to ask.
    let line = one_line_failure(
        &c.cli_within(&["status", "--config", &cfg], long).unwrap(),
        "status, no daemon",
    );
    assert!(line.contains("cannot reach the litefs-py daemon"), "{line}");

    // Two voters and no witness: it starts, and says it cannot fail over.
    c.start(3).unwrap();
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
