//! `litefs-py handoff`: moves raft leadership and the LiteFS primary together, with no
//! acknowledged write lost. Runs on the leader (any node forwards the request there):
//!
//! 1. Choose and check the target ([`plan::candidates`]): a data voter, caught up in raft,
//!    running LiteFS under `litefs-py run` (it answers
//!    [`REPORT_PATH`](crate::litefs::report::REPORT_PATH)) and not stopping itself.
//! 2. HALT every database on the local LiteFS (its write lock: commits stop, local writers wait,
//!    every commit acknowledged so far is in the position it answers with).
//! 3. Wait until the target's LiteFS has exactly those positions (`<db>-pos`): it has every
//!    acknowledged write. (Demoting first would be wrong: LiteFS cuts its replication streams
//!    the instant it stops being primary.)
//! 4. Fence the lease ([`crate::lease::LeaseService::fence`]): the local LiteFS's next renewal
//!    is 404 and it demotes; wait until it says `isPrimary: false`. LiteFS drops a HALT lock
//!    30 s after it was taken, so steps 2-4 must fit in that (with a margin), or the handoff is
//!    refused before the fence; after demotion the local positions are read again, and anything
//!    that committed after step 3 must be on the target too, or no record is written.
//! 5. Record through raft that this term ended with no primary
//!    ([`HandoffRecord`](crate::lease::records::HandoffRecord)), release the
//!    HALT locks (LiteFS is a replica now and must apply what the new primary sends).
//! 6. Transfer raft leadership to the target; its lease API may grant in the next term at once
//!    (the waiver, [`crate::lease::records`]), and its LiteFS becomes primary.
//!
//! The steps are in [`steps`], each a function named for what it does; what they took on this
//! node (the halts, the fence) is recorded in a [`rollback::Rollback`] and undone in one place.
//! See docs/architecture.md, "Handoff".
//!
//! Any failure before step 4 undoes the halts; before step 5 also the fence. From step 5 on the
//! fence stays: a lifted fence with a live record could let the next term skip its wait while
//! this node's LiteFS is primary again, and once the record write was attempted it may have
//! committed (even one that failed or timed out). So the fence is lifted only once a deletion of
//! the record is known committed. After `transfer_leader`, openraft refuses client writes from
//! this leader for the rest of its term: if leadership does not move, the deletion fails, this
//! node stays fenced (no primary) for term `t`, and the next election (due within the election
//! timeout) ends it.

pub mod plan;
mod rollback;
mod steps;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::ServerState;
use serde::{Deserialize, Serialize};

use self::plan::PlanError;
use crate::lease::LeaseService;
use crate::lease::raft_facts::NodeFacts;
use crate::litefs::LiteFsError;
use crate::litefs::api::LiteFsApi;
use crate::litefs::report::LocalReport;
use crate::raft::network::CallError;
use crate::raft::{NodeId, RaftNode, TransferError};

/// Where a non-leader forwards a handoff, on the leader's `node.raft-addr`.
pub const FORWARD_PATH: &str = "/raft/admin/handoff";
/// What a forwarded request may take in all.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(90);

/// The planned handoff on this node: forwarded to the leader, or run here when this node leads.
pub struct Handoff {
    raft: Arc<RaftNode>,
    local: Option<Local>,
}

/// Under `litefs-py run`: what a handoff run on this node needs of its LiteFS and lease API.
pub struct Local {
    litefs: LiteFsApi,
    lease: Arc<LeaseService<NodeFacts>>,
    /// A handoff is running on this node: a second one is refused.
    busy: AtomicBool,
    /// This node's `run` is stopping: its report says so, and no handoff picks it.
    stopping: AtomicBool,
}

impl Local {
    pub fn new(litefs: LiteFsApi, lease: Arc<LeaseService<NodeFacts>>) -> Local {
        Local {
            litefs,
            lease,
            busy: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    /// Marks a handoff as running here until the returned guard is dropped; `None` if one is.
    fn claim(&self) -> Option<Busy<'_>> {
        (!self.busy.swap(true, Ordering::AcqRel)).then_some(Busy(&self.busy))
    }
}

struct Busy<'a>(&'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HandoffRequest {
    /// The node to hand to; `None`: the fittest data voter.
    pub to: Option<NodeId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub what: String,
    pub ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandoffOutcome {
    pub message: String,
    pub from: NodeId,
    pub to: NodeId,
    /// Database -> position handed over (what the new primary starts from).
    pub positions: BTreeMap<String, String>,
    pub steps: Vec<Step>,
    pub elapsed_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("no leader is known right now; retry in a moment")]
    NoLeader,
    #[error("{0}")]
    Refused(String),
    #[error("LiteFS: {0}")]
    LiteFs(String),
    #[error("{0}")]
    Peer(String),
    #[error("{0}")]
    Internal(String),
    #[error("{what} did not happen within {timeout:?}{detail}")]
    Timeout {
        what: String,
        timeout: Duration,
        detail: String,
    },
}

impl From<LiteFsError> for HandoffError {
    fn from(e: LiteFsError) -> HandoffError {
        HandoffError::LiteFs(e.0)
    }
}

impl From<TransferError> for HandoffError {
    fn from(e: TransferError) -> HandoffError {
        match e {
            TransferError::Refused(why) => HandoffError::Refused(format!("raft: {why}")),
            TransferError::Timeout {
                what,
                timeout,
                detail,
            } => HandoffError::Timeout {
                what,
                timeout,
                detail,
            },
        }
    }
}

impl Handoff {
    /// `local`: this node's LiteFS and lease API under `litefs-py run`; `None` elsewhere (a
    /// handoff that reaches this node while it leads is refused; it is still forwarded).
    pub fn new(raft: Arc<RaftNode>, local: Option<Local>) -> Handoff {
        Handoff { raft, local }
    }

    /// This node's LiteFS report (the target side of step 3, and the freshest-node survey).
    pub async fn report(&self) -> LocalReport {
        match &self.local {
            Some(local) => LocalReport {
                stopping: local.stopping.load(Ordering::Acquire),
                ..local.litefs.report().await
            },
            None => LocalReport::none(),
        }
    }

    /// This node's `run` is stopping: from now on no handoff hands it the primary (a whole
    /// cluster stopped at once must not have its primary wait on a node that is going away).
    pub fn set_stopping(&self) {
        if let Some(local) = &self.local {
            local.stopping.store(true, Ordering::Release);
        }
    }

    /// The handoff a stopping primary runs on itself ([`crate::run`]): here, only if this node
    /// leads (its LiteFS holds the lease only then); never forwarded.
    pub async fn handoff_before_stop(self: &Arc<Self>) -> Result<HandoffOutcome, HandoffError> {
        if self.raft.metrics().state != ServerState::Leader {
            return Err(HandoffError::Refused(
                "this node is not the raft leader (any more)".into(),
            ));
        }
        self.run_here(HandoffRequest { to: None }).await
    }

    /// `handoff` on any node: here if this node leads, else forwarded to the leader.
    pub async fn handoff(
        self: &Arc<Self>,
        req: HandoffRequest,
    ) -> Result<HandoffOutcome, HandoffError> {
        let node = &self.raft;
        let m = node.metrics();
        let leader = m.current_leader.ok_or(HandoffError::NoLeader)?;
        if leader == node.settings.id && m.state == ServerState::Leader {
            return self.run_here(req).await;
        }
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.raft_addr.clone())
            .ok_or(HandoffError::NoLeader)?;
        node.transport
            .call(leader, &addr, FORWARD_PATH, Some(&req), FORWARD_TIMEOUT)
            .await
            .map_err(|e| match e {
                CallError::Http { status, body, .. } if status != 503 || !body.is_empty() => {
                    HandoffError::Peer(format!("the leader (node {leader}): {}", body.trim()))
                }
                other => {
                    HandoffError::Peer(format!("forwarding to the leader (node {leader}): {other}"))
                }
            })
    }

    /// A handoff forwarded by another node: only run if this node leads (no second forward, so
    /// two nodes with different ideas of the leader cannot loop).
    pub async fn forwarded(
        self: &Arc<Self>,
        req: HandoffRequest,
    ) -> Result<HandoffOutcome, HandoffError> {
        if self.raft.metrics().state != ServerState::Leader {
            return Err(HandoffError::Refused(
                "this node is no longer the leader; retry".into(),
            ));
        }
        self.run_here(req).await
    }

    async fn run_here(
        self: &Arc<Self>,
        req: HandoffRequest,
    ) -> Result<HandoffOutcome, HandoffError> {
        // On a task of its own: a client that goes away (Ctrl-C, its timeout) drops this
        // request's future, and a handoff stopped halfway would leave HALT locks or the fence.
        let this = self.clone();
        tokio::spawn(async move { steps::handoff_here(&this, req).await })
            .await
            .unwrap_or_else(|e| {
                Err(HandoffError::Internal(format!(
                    "the handoff task failed: {e}; see the leader's log and `litefs-py status`"
                )))
            })
    }
}
