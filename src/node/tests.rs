//! In-process cluster tests: three nodes on loopback in one runtime, real HTTP between them.
//! (Process-level tests with real mounts and kill -9 are in `tests/cluster.rs`.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use litefs_py_fuse::Primary;

use super::MemberLiteFs;
use super::status::StatusReport;
use super::{Parts, Services};
use crate::config::RaftTiming;
use crate::raft::faults::Faults;
use crate::raft::membership::{AddRequest, RemoveRequest};
use crate::raft::network::Secret;
use crate::raft::{NodeSettings, RaftNode};

/// A node as these tests drive it: its raft node, its view, its /status.
struct TestNode(Services);

impl std::ops::Deref for TestNode {
    type Target = RaftNode;

    fn deref(&self) -> &RaftNode {
        &self.0.raft
    }
}

impl TestNode {
    fn status(&self) -> StatusReport {
        super::status::status(&self.0.raft, &self.0.state)
    }

    async fn shutdown(&self) {
        self.0.shutdown().await
    }
}

/// Ports of this file's tests: 27100.. (each test its own block of 20).
fn settings(base: u16, id: u64, voters: &[u64], dir: &std::path::Path) -> NodeSettings {
    let raft = |i: u64| format!("127.0.0.1:{}", base + i as u16);
    NodeSettings {
        id,
        hostname: format!("host-{id}"),
        raft_addr: raft(id),
        http_addr: format!("127.0.0.1:{}", base + 10 + id as u16),
        bootstrap: if id == 1 {
            crate::config::Bootstrap::This
        } else {
            crate::config::Bootstrap::Never
        },
        peers: voters.iter().map(|i| (*i, raft(*i))).collect(),
        secret: Some(Secret::new("test-secret")),
        data_dir: dir.join(format!("n{id}")),
        timing: RaftTiming::default(),
        witness: false,
        tls: None,
        lease_ttl: Some(Duration::from_secs(2)),
    }
}

/// A node without a lease API (no LiteFS here), as `mount` runs it when `lease.addr` is taken.
async fn start(settings: NodeSettings, faults: Faults) -> Arc<TestNode> {
    let parts = Parts {
        settings,
        faults,
        lease: None,
        run: None,
    };
    Arc::new(TestNode(Services::start(parts).await.expect("start")))
}

fn primary(n: &TestNode) -> Primary {
    n.0.state.load().view().primary.clone()
}

/// Waits until exactly one node says ThisNode and every other names it; returns its index.
async fn settled(nodes: &[&Arc<TestNode>], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let views: Vec<Primary> = nodes.iter().map(|n| primary(n)).collect();
        let leaders: Vec<usize> = (0..nodes.len())
            .filter(|i| views[*i] == Primary::ThisNode)
            .collect();
        if let [l] = leaders[..] {
            let name = nodes[l].settings.hostname.clone();
            let agree = views.iter().enumerate().all(|(i, v)| {
                i == l
                    || *v
                        == Primary::Other {
                            hostname: name.clone(),
                        }
            });
            if agree {
                return l;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no agreement within {timeout:?}: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_publish_partition_and_change_membership() {
    let dir = tempfile::tempdir().unwrap();
    let base = 27100;
    let voters = [1, 2, 3];
    let faults: Vec<Faults> = (0..4).map(|_| Faults::enabled_for_tests()).collect();
    let mut nodes = Vec::new();
    for id in voters {
        nodes.push(
            start(
                settings(base, id, &voters, dir.path()),
                faults[id as usize - 1].clone(),
            )
            .await,
        );
    }
    let all: Vec<&Arc<TestNode>> = nodes.iter().collect();
    let l = settled(&all, Duration::from_secs(10)).await;

    // Hostnames get recorded in the membership by the leader.
    let deadline = Instant::now() + Duration::from_secs(5);
    while nodes[l]
        .status()
        .members
        .iter()
        .any(|m| m.hostname.is_empty())
    {
        assert!(Instant::now() < deadline, "hostnames not recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Cut the leader off: it must stop saying primary within the lease bound (+ tick, slack).
    let old = nodes[l].settings.id;
    let cut = Instant::now();
    faults[old as usize - 1].set_blocked(voters.iter().copied().filter(|i| *i != old).collect());
    while primary(&nodes[l]) == Primary::ThisNode {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let demoted_after = cut.elapsed();
    eprintln!("cut-off leader said electing after {demoted_after:?}");
    let bound = RaftTiming::default().lease_bound();
    assert!(
        demoted_after <= bound + Duration::from_millis(100),
        "cut-off leader kept saying primary for {demoted_after:?} (bound {bound:?})"
    );
    // Its status with LiteFS positions: the peers it cannot reach are unknown, with why; no
    // node here runs LiteFS, so none has positions, and no lag is known.
    let s =
        super::status::status_with_litefs(&nodes[l].0.raft, &nodes[l].0.state, &nodes[l].0.handoff)
            .await;
    for m in &s.members {
        let want = if m.id == old {
            MemberLiteFs::None
        } else {
            MemberLiteFs::Unknown {
                reason: "blocked by the test fault layer".into(),
            }
        };
        assert_eq!(m.litefs.as_ref(), Some(&want), "node {}", m.id);
    }
    let summary = s.litefs.expect("the LiteFS summary");
    assert_eq!(summary.primary, None);
    assert!(
        summary
            .lag_unknown
            .as_deref()
            .is_some_and(|w| w.contains("blocked")),
        "{summary:?}"
    );
    let rest: Vec<&Arc<TestNode>> = nodes.iter().filter(|n| n.settings.id != old).collect();
    settled(&rest, Duration::from_secs(10)).await;
    faults[old as usize - 1].set_blocked(BTreeSet::new());
    let l = settled(&all, Duration::from_secs(10)).await;
    assert_ne!(
        nodes[l].settings.id, old,
        "pre-vote: the returning node must not depose the new leader"
    );

    // Membership: add node 4 through a follower (forwarded to the leader), then remove node 4.
    let n4 = start(
        NodeSettings {
            bootstrap: crate::config::Bootstrap::Never,
            ..settings(base, 4, &[4], dir.path())
        },
        faults[3].clone(),
    )
    .await;
    let follower = nodes
        .iter()
        .find(|n| n.settings.id != nodes[l].settings.id)
        .unwrap();
    let out = follower
        .add_node(AddRequest {
            id: 4,
            raft_addr: n4.settings.raft_addr.clone(),
        })
        .await
        .expect("add node 4");
    assert_eq!(out.voters, vec![1, 2, 3, 4], "{out:?}");
    let mut four: Vec<&Arc<TestNode>> = all.clone();
    four.push(&n4);
    settled(&four, Duration::from_secs(10)).await;
    let out = nodes[l]
        .remove_node(RemoveRequest { id: 4 })
        .await
        .expect("remove");
    assert_eq!(out.voters, vec![1, 2, 3]);
    assert!(out.learners.is_empty());
    // Adding an address that is another node's is refused before anything is written.
    let err = nodes[l]
        .add_node(AddRequest {
            id: 5,
            raft_addr: nodes[0].settings.raft_addr.clone(),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not node 5"), "{err}");
    let members: BTreeMap<u64, String> = nodes[l]
        .status()
        .members
        .into_iter()
        .map(|m| (m.id, m.role))
        .collect();
    assert_eq!(members.len(), 3, "{members:?}");

    n4.shutdown().await;
    for n in &nodes {
        n.shutdown().await;
    }
}

/// Two data nodes and a witness; data node 2 misses an entry that the witness has, then the
/// leader dies: only the witness can win the election, and it must hand leadership to node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_with_the_only_complete_log_hands_leadership_to_a_data_node() {
    let dir = tempfile::tempdir().unwrap();
    let base = 27140;
    let voters = [1, 2, 3];
    let faults: Vec<Faults> = (0..3).map(|_| Faults::enabled_for_tests()).collect();
    let mut nodes = Vec::new();
    for id in voters {
        let s = NodeSettings {
            witness: id == 3,
            lease_ttl: (id != 3).then_some(Duration::from_secs(2)),
            ..settings(base, id, &voters, dir.path())
        };
        nodes.push(start(s, faults[id as usize - 1].clone()).await);
    }
    let data: Vec<&Arc<TestNode>> = nodes[..2].iter().collect();
    let l = settled(&data, Duration::from_secs(10)).await;
    assert_eq!(l, 0, "node 1 bootstraps and leads");
    // Node 2 cut off from node 1; an entry commits on node 1 + the witness only.
    faults[1].set_blocked(BTreeSet::from([1]));
    let write = crate::raft::Request::Set {
        key: "k".into(),
        value: "v".into(),
    };
    nodes[0].raft.client_write(write).await.expect("write");
    nodes[0].shutdown().await;
    faults[1].set_blocked(BTreeSet::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while primary(&nodes[1]) != Primary::ThisNode {
        assert_ne!(
            primary(&nodes[2]),
            Primary::ThisNode,
            "a witness is never primary"
        );
        assert!(Instant::now() < deadline, "node 2 never became primary");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(nodes[1].state_machine.get("k").as_deref(), Some("v"));
    for n in &nodes[1..] {
        n.shutdown().await;
    }
}

/// Node 3 runs with another `lease.ttl`: the others see it on its RPCs (and it on theirs) and
/// say so in their peer records (`status`), while the cluster keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_other_timing_settings_is_reported_by_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    let base = 27160;
    let voters = [1, 2, 3];
    let mut nodes = Vec::new();
    for id in voters {
        let s = NodeSettings {
            lease_ttl: Some(Duration::from_secs(if id == 3 { 10 } else { 2 })),
            ..settings(base, id, &voters, dir.path())
        };
        nodes.push(start(s, Faults::default()).await);
    }
    let all: Vec<&Arc<TestNode>> = nodes.iter().collect();
    settled(&all, Duration::from_secs(10)).await;
    let mismatch = |n: usize, peer: u64| nodes[n].peers.get(peer).and_then(|p| p.timing_mismatch);
    let deadline = Instant::now() + Duration::from_secs(5);
    while mismatch(0, 3).is_none() || mismatch(2, 1).is_none() {
        assert!(Instant::now() < deadline, "no mismatch seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        mismatch(0, 3).as_deref(),
        Some("lease.ttl 2s here, 10s there")
    );
    assert_eq!(
        mismatch(2, 1).as_deref(),
        Some("lease.ttl 10s here, 2s there")
    );
    assert_eq!(mismatch(0, 2), None, "nodes 1 and 2 agree");
    let status = nodes[0].status();
    let m3 = status.members.iter().find(|m| m.id == 3).unwrap();
    assert_eq!(
        m3.timing_mismatch.as_deref(),
        Some("lease.ttl 2s here, 10s there")
    );
    for n in &nodes {
        n.shutdown().await;
    }
}
