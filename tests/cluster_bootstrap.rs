//! `cluster.bootstrap: auto` with real processes: three nodes with the same bootstrap setting
//! form one cluster, and a node re-created with an empty data dir joins it again instead of
//! starting a second one (docs/configuration.md, "One file for every node").
//!
//! Needs root and /dev/fuse.

mod common;

use std::time::Duration;

use common::{mount_options, serial};
use litefs_py_testkit::cluster::{MountCluster, Spec};
use litefs_py_testkit::wait::wait_for;

const AGREE: Duration = Duration::from_secs(20);

fn auto_cluster() -> MountCluster {
    let mut c = MountCluster::new(mount_options()).unwrap();
    for id in [1, 2, 3] {
        c.add(Spec {
            bootstrap: false,
            ..Spec::mount(id, &[1, 2, 3])
        })
        .unwrap();
        // The same bootstrap setting on every node: the cluster picks its creator.
        let config = c.config(id).clone().set("cluster.bootstrap", "auto");
        config.write(&c.config_path(id)).unwrap();
    }
    c
}

fn status_u64(c: &MountCluster, id: u64, key: &str) -> Option<u64> {
    c.status(id)?.get(key)?.as_u64()
}

#[test]
fn auto_bootstrap_forms_one_cluster_and_a_recreated_node_rejoins_it() {
    let _serial = serial();
    let mut c = auto_cluster();
    // Started in reverse order: the nodes that may not create the cluster come up first and
    // must wait for node 1.
    for id in [3, 2, 1] {
        c.start(id).unwrap();
    }
    let first = c.wait_agreement(&[1, 2, 3], AGREE).unwrap();
    assert!(
        c.log(1).contains("bootstrapped the cluster"),
        "node 1 (lowest id) creates it:\n{}",
        c.log_tail(1, 30)
    );
    for id in [2, 3] {
        assert!(
            !c.log(id).contains("bootstrapped the cluster"),
            "node {id} must not create a cluster:\n{}",
            c.log_tail(id, 30)
        );
    }

    // Node 1 loses its volume and comes back empty: it must hear of the cluster and join it.
    c.stop(1).unwrap();
    let term_before = status_u64(&c, 2, "term").unwrap_or(0);
    let old_log = c.log(1);
    std::fs::remove_dir_all(c.data_dir(1)).unwrap();
    std::fs::create_dir_all(c.data_dir(1)).unwrap();
    c.start(1).unwrap();
    let again = c.wait_agreement(&[1, 2, 3], AGREE).unwrap();
    let new_log = c.log(1)[old_log.len()..].to_string();
    assert!(
        !new_log.contains("bootstrapped the cluster"),
        "a re-created node started a second cluster:\n{new_log}"
    );
    assert!(
        new_log.contains("already belongs to a cluster"),
        "the re-created node says why it joins:\n{new_log}"
    );
    // It follows the existing cluster: same term as the others, the full membership, and the
    // log entries written before it was re-created.
    wait_for(AGREE, "node 1 to catch up with the cluster", || {
        let s = c.status(1)?;
        let voters = s.get("members")?.as_array()?.len();
        let applied = s.get("last_applied")?.as_u64()?;
        (voters == 3 && applied >= 1 && status_u64(&c, 1, "term") == status_u64(&c, 2, "term"))
            .then_some(())
    });
    assert!(status_u64(&c, 1, "term").unwrap() >= term_before);
    println!("primary before: node {first}, after: node {again}");
    c.shutdown().unwrap();
}
