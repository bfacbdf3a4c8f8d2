//! [`RaftFacts`] over the running [`RaftNode`]: openraft's metrics read through the same rule
//! the virtual files use ([`crate::role`]), the state machine, and `client_write`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use litefs_py_fuse::Primary;
use openraft::async_runtime::WatchReceiver;
use parking_lot::Mutex;

use super::freshest::Survey;
use super::{RaftFacts, RaftNow, WriteError};
use crate::litefs::api::LiteFsApi;
use crate::raft::{NodeId, RaftNode, Request, Response};
use crate::role::{Identity, compute, observe};

pub struct NodeFacts {
    node: Arc<RaftNode>,
    /// Under `litefs-py run`: this node's LiteFS, for the freshest-node check.
    litefs: Option<LiteFsApi>,
    me: Identity,
    /// (term, first observed) of this node's current leadership. Reset when it is not leader,
    /// so a later leadership always starts a new wait.
    leadership: Mutex<Option<(u64, Instant)>>,
}

impl NodeFacts {
    pub fn new(node: Arc<RaftNode>, litefs: Option<LiteFsApi>) -> NodeFacts {
        let s = &node.settings;
        let me = Identity {
            id: s.id,
            hostname: s.hostname.clone(),
            witness: s.witness,
        };
        NodeFacts {
            node,
            litefs,
            me,
            leadership: Mutex::new(None),
        }
    }
}

impl RaftFacts for NodeFacts {
    fn node_id(&self) -> NodeId {
        self.me.id
    }

    fn now(&self) -> RaftNow {
        let m = self.node.metrics();
        let o = observe(&m, self.me.id, self.me.witness, &self.node.peers);
        let now = Instant::now();
        // The very rule `.role` says `primary` by: leader, a voter, not a witness, and a quorum
        // ack younger than the lease bound (a sole voter is its own quorum).
        let view = compute(&self.me, &self.node.settings.timing, &o, now);
        let fresh = o.is_leader && view.primary == Primary::ThisNode;
        let mut leadership = self.leadership.lock();
        let leader_since = if o.is_leader {
            match *leadership {
                Some((term, since)) if term == o.term => Some(since),
                _ => {
                    // This node's own vote counts in its election like any voter's, and after a
                    // restart openraft may campaign before a whole leader lease has passed since
                    // this process last heard the old leader: count the start from no earlier
                    // than a lease after this process started (RaftNode::vote_lease_until).
                    let since = now.max(self.node.vote_lease_until());
                    *leadership = Some((o.term, since));
                    Some(since)
                }
            }
        } else {
            *leadership = None;
            None
        };
        RaftNow {
            now,
            term: o.term,
            leader: o.leader,
            is_leader: o.is_leader,
            fresh,
            leader_since,
        }
    }

    fn get(&self, key: &str) -> Option<String> {
        self.node.state_machine.get(key)
    }

    fn cluster_id(&self) -> Option<String> {
        self.node.state_machine.cluster_id()
    }

    fn applied_term(&self) -> Option<u64> {
        self.node.metrics().last_applied.map(|l| l.leader_id.term)
    }

    async fn write(&self, request: Request) -> Result<Response, WriteError> {
        self.node
            .raft
            .client_write(request)
            .await
            .map(|r| r.data)
            .map_err(|e| WriteError(e.to_string()))
    }

    async fn survey_litefs(&self) -> Result<Option<Survey>, String> {
        super::freshest::survey(&self.node, self.litefs.as_ref()).await
    }

    fn transfer_leadership(&self, to: NodeId, term: u64) {
        let node = self.node.clone();
        tokio::spawn(async move {
            match node.transfer_leader(to, term).await {
                Ok(()) => tracing::info!("raft leadership moved to node {to}"),
                Err(e) => tracing::warn!(
                    "moving raft leadership to node {to}: {e}; the next election picks a leader again"
                ),
            }
        });
    }

    async fn changed(&self) {
        let mut metrics = self.node.raft.metrics();
        // A clone of openraft's receiver starts where the original is, which has never marked
        // a value seen: without this, `changed` would return at once, forever (a busy loop).
        let _ = metrics.borrow_and_update();
        if metrics.changed().await.is_err() {
            // Raft has stopped: nothing will change any more; do not spin.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::raft::NodeSettings;
    use crate::raft::faults::Faults;

    fn free_addr() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn facts_over_a_one_node_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let raft = free_addr();
        let settings = NodeSettings {
            id: 1,
            hostname: "node-a".into(),
            raft_addr: raft.clone(),
            http_addr: free_addr(),
            bootstrap: crate::config::Bootstrap::This,
            peers: [(1, raft)].into(),
            secret: None,
            data_dir: dir.path().join("raft"),
            timing: Default::default(),
            witness: false,
            tls: None,
            lease_ttl: None,
        };
        let node = RaftNode::start(settings, Faults::default()).await.unwrap();
        let facts = NodeFacts::new(node.clone(), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        let r = loop {
            let r = facts.now();
            if r.fresh {
                break r;
            }
            assert!(Instant::now() < deadline, "never a fresh leader: {r:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // A sole voter leads with a fresh ack; its leadership start stays put while it leads.
        assert!(r.is_leader && r.term >= 1 && r.leader == Some(1));
        assert_eq!(facts.now().leader_since, r.leader_since);
        // Elected within a leader lease of its start (a sole voter campaigns at once): the
        // leadership counts from the lease's end, as if this node had just heard an old leader.
        assert!(r.leader_since.unwrap() >= node.vote_lease_until());
        // Writes go through raft and are read back from the state machine.
        let req = Request::Set {
            key: "k".into(),
            value: "v".into(),
        };
        facts.write(req).await.unwrap();
        assert_eq!(facts.get("k").as_deref(), Some("v"));
        assert_eq!(facts.cluster_id(), None);
        // `changed` waits for a change: an idle node wakes its caller rarely, not in a loop.
        let mut wakes = 0;
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(()) = tokio::time::timeout_at(until.into(), facts.changed()).await {
            wakes += 1;
            assert!(wakes < 50, "changed() returns at once: a busy loop");
        }
        node.shutdown().await;
    }
}
