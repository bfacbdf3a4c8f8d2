//! Membership changes: `cluster add` (a learner first, a voter once caught up) and `cluster
//! remove`, on the leader or forwarded to it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::RaftError;
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};

use super::network::{CallError, Hello, paths};
use super::node::{NodeError, RaftNode};
use super::{Node, NodeId};

/// How long a new learner may take to catch up before `cluster add` gives up promoting it.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one membership log entry may take to commit.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The "who are you" probe before adding a node.
const HELLO_TIMEOUT: Duration = Duration::from_secs(3);

/// `cluster add` as it travels to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddRequest {
    pub id: NodeId,
    pub raft_addr: String,
}

/// `cluster remove` as it travels to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub id: NodeId,
}

/// The answer to a membership change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipOutcome {
    pub message: String,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl RaftNode {
    fn members(&self) -> (BTreeSet<NodeId>, BTreeMap<NodeId, Node>) {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters = membership.voter_ids().collect();
        let nodes = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        (voters, nodes)
    }

    fn outcome(&self, message: String) -> MembershipOutcome {
        let (voters, nodes) = self.members();
        MembershipOutcome {
            message,
            learners: nodes
                .keys()
                .filter(|id| !voters.contains(id))
                .copied()
                .collect(),
            voters: voters.into_iter().collect(),
        }
    }

    /// Where membership changes go: here if we lead, else the leader's raft address.
    fn leader_target(&self) -> Result<Option<(NodeId, String)>, NodeError> {
        let m = self.metrics();
        let leader = m.current_leader.ok_or(NodeError::NoLeader)?;
        if leader == self.settings.id && m.state == ServerState::Leader {
            return Ok(None);
        }
        let node = m
            .membership_config
            .membership()
            .get_node(&leader)
            .ok_or(NodeError::NoLeader)?;
        Ok(Some((leader, node.raft_addr.clone())))
    }

    async fn forward<Req: Serialize>(
        &self,
        leader: NodeId,
        addr: &str,
        path: &str,
        req: &Req,
    ) -> Result<MembershipOutcome, NodeError> {
        let timeout = CATCH_UP_TIMEOUT + CHANGE_TIMEOUT * 2 + HELLO_TIMEOUT;
        self.transport
            .call(leader, addr, path, Some(req), timeout)
            .await
            .map_err(|e| match e {
                CallError::Http { body, .. } => NodeError::Remote(body.trim().to_string()),
                other => NodeError::Peer(other),
            })
    }

    /// `cluster add`: as a learner first, promoted to voter once caught up. Any node may be
    /// asked; a non-leader forwards to the leader.
    pub async fn add_node(&self, req: AddRequest) -> Result<MembershipOutcome, NodeError> {
        match self.leader_target()? {
            None => self.add_node_here(req).await,
            Some((leader, addr)) => self.forward(leader, &addr, paths::ADMIN_ADD, &req).await,
        }
    }

    /// `cluster remove`, forwarded like [`Self::add_node`].
    pub async fn remove_node(&self, req: RemoveRequest) -> Result<MembershipOutcome, NodeError> {
        match self.leader_target()? {
            None => self.remove_node_here(req).await,
            Some((leader, addr)) => self.forward(leader, &addr, paths::ADMIN_REMOVE, &req).await,
        }
    }

    /// Whether `id` is a witness, as the membership records it or as it announces itself.
    pub fn is_witness(&self, id: NodeId) -> bool {
        if id == self.settings.id {
            return self.settings.witness;
        }
        let m = self.metrics();
        let recorded = m
            .membership_config
            .membership()
            .get_node(&id)
            .is_some_and(|n| n.witness);
        recorded || self.peers.witness(id) == Some(true)
    }

    pub(crate) async fn change(
        &self,
        what: String,
        change: ChangeMembers<NodeId, Node>,
    ) -> Result<(), NodeError> {
        match tokio::time::timeout(CHANGE_TIMEOUT, self.raft.change_membership(change, false)).await
        {
            Err(_) => Err(NodeError::Timeout {
                what,
                timeout: CHANGE_TIMEOUT,
            }),
            Ok(Err(RaftError::APIError(e))) => Err(NodeError::Refused(format!("{what}: {e}"))),
            Ok(Err(e)) => Err(NodeError::Raft(e.to_string())),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// `cluster add` on the leader.
    pub async fn add_node_here(&self, req: AddRequest) -> Result<MembershipOutcome, NodeError> {
        let AddRequest { id, raft_addr } = req;
        if id == 0 {
            return Err(NodeError::Invalid("node id must be > 0".into()));
        }
        if !raft_addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
        {
            return Err(NodeError::Invalid(format!(
                "{raft_addr:?} is not host:port"
            )));
        }
        if self.leader_target()?.is_some() {
            return Err(NodeError::Refused(
                "this node is no longer the leader; retry".into(),
            ));
        }
        let (voters, nodes) = self.members();
        if let Some(existing) = nodes.get(&id) {
            if existing.raft_addr != raft_addr {
                return Err(NodeError::Refused(format!(
                    "node {id} is already a member at {}; remove it first (a node id must never move to other data)",
                    existing.raft_addr
                )));
            }
            if voters.contains(&id) {
                return Ok(self.outcome(format!("node {id} is already a voter")));
            }
        }
        // Checks the address, the id and the shared secret before anything is written.
        let hello: Hello = self
            .transport
            .call::<(), Hello>(id, &raft_addr, paths::HELLO, None, HELLO_TIMEOUT)
            .await?;
        if hello.id != id {
            return Err(NodeError::Refused(format!(
                "{raft_addr} is node {}, not node {id}",
                hello.id
            )));
        }
        let node = Node::announced(&raft_addr, &hello.hostname, hello.witness);
        tracing::info!(id, %raft_addr, hostname = %hello.hostname, "adding a learner");
        // blocking=true: returns once the leader sees the learner's log caught up.
        match tokio::time::timeout(CATCH_UP_TIMEOUT, self.raft.add_learner(id, node, true)).await {
            Err(_) => {
                return Err(NodeError::Timeout {
                    what: format!(
                        "node {id} was added as a learner but catching up (it was not promoted; run `cluster add` again to promote it)"
                    ),
                    timeout: CATCH_UP_TIMEOUT,
                });
            }
            Ok(Err(RaftError::APIError(e))) => {
                return Err(NodeError::Refused(format!("adding learner {id}: {e}")));
            }
            Ok(Err(e)) => return Err(NodeError::Raft(e.to_string())),
            Ok(Ok(_)) => {}
        }
        tracing::info!(id, "learner caught up; promoting it to voter");
        self.change(
            format!("promoting node {id} to voter"),
            ChangeMembers::AddVoterIds(BTreeSet::from([id])),
        )
        .await?;
        Ok(self.outcome(format!("node {id} ({}) added as a voter", hello.hostname)))
    }

    /// `cluster remove` on the leader.
    pub async fn remove_node_here(
        &self,
        req: RemoveRequest,
    ) -> Result<MembershipOutcome, NodeError> {
        let id = req.id;
        if self.leader_target()?.is_some() {
            return Err(NodeError::Refused(
                "this node is no longer the leader; retry".into(),
            ));
        }
        let (voters, nodes) = self.members();
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(NodeError::Refused(format!(
                    "node {id} is the only voter; a cluster cannot remove its last voter"
                )));
            }
            // retain=false: the removed voter leaves the membership entirely.
            self.change(
                format!("removing voter {id}"),
                ChangeMembers::RemoveVoters(BTreeSet::from([id])),
            )
            .await?;
        } else if nodes.contains_key(&id) {
            self.change(
                format!("removing learner {id}"),
                ChangeMembers::RemoveNodes(BTreeSet::from([id])),
            )
            .await?;
        } else {
            return Err(NodeError::Refused(format!("node {id} is not a member")));
        }
        tracing::info!(id, "removed from the cluster");
        Ok(self.outcome(format!("node {id} removed")))
    }
}
