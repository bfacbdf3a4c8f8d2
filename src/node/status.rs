//! `GET /status` (JSON) and `GET /metrics` (Prometheus text): the cluster as this node sees it.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use litefs_py_fuse::{Primary, Role};
use openraft::LogIdOptionExt;
use serde::{Deserialize, Serialize};

use litefs_py_fuse::StateHandle;

use super::litefs_status::{LiteFsSummary, MemberLiteFs};
use crate::raft::{NodeId, RaftNode};

/// One member of the cluster in /status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub raft_addr: String,
    pub hostname: String,
    /// `voter` or `learner`.
    pub role: String,
    /// A witness: votes, never primary.
    pub witness: bool,
    pub this_node: bool,
    /// Time since the last RPC exchanged with it (either direction); `None` for this node or a
    /// peer not heard from since this process started.
    pub ms_since_contact: Option<u64>,
    /// On the leader: the last log index known to be on that node.
    pub matched_index: Option<u64>,
    /// How its timing settings (`raft:`, `lease.ttl`) differ from this node's, as of its last
    /// RPC; they must be the same on every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing_mismatch: Option<String>,
    /// Its LiteFS positions and lag (`GET /status?litefs=true` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub litefs: Option<MemberLiteFs>,
}

/// The body of `GET /status`. Field names are an interface: `litefs-py status --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub node_id: NodeId,
    pub hostname: String,
    pub witness: bool,
    /// As `.role` says it: primary, replica, electing or witness.
    pub role: String,
    /// The primary's hostname as `.primary` says it (None: unknown).
    pub primary: Option<String>,
    /// openraft's server state: Leader, Follower, Candidate, Learner, Shutdown.
    pub raft_state: String,
    pub initialized: bool,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    pub commit_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub last_log_index: Option<u64>,
    pub quorum_ok: bool,
    pub ms_since_quorum_ack: Option<u64>,
    pub ms_since_leader_contact: Option<u64>,
    /// How long after its last quorum ack a leader keeps saying `primary`.
    pub lease_bound_ms: u64,
    pub members: Vec<MemberStatus>,
    /// Whose LiteFS positions the members' lags count from (`GET /status?litefs=true` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub litefs: Option<LiteFsSummary>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// This node's `/status`: raft's metrics, its peer book, and the view `state` publishes.
pub fn status(node: &RaftNode, state: &StateHandle) -> StatusReport {
    let now = Instant::now();
    let m = node.metrics();
    let snapshot = state.load();
    let view = snapshot.view();
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let seen = node.peers.all();
    let members = membership
        .nodes()
        .map(|(id, member)| {
            let this_node = *id == node.settings.id;
            let hostname = if this_node {
                node.settings.hostname.clone()
            } else if member.hostname.is_empty() {
                seen.get(id)
                    .and_then(|p| p.hostname.clone())
                    .unwrap_or_default()
            } else {
                member.hostname.clone()
            };
            MemberStatus {
                id: *id,
                raft_addr: member.raft_addr.clone(),
                hostname,
                role: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .into(),
                witness: node.is_witness(*id),
                this_node,
                ms_since_contact: seen
                    .get(id)
                    .and_then(|p| p.last_contact)
                    .filter(|_| !this_node)
                    .map(|t| ms(now.saturating_duration_since(t))),
                matched_index: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .and_then(|l| l.index()),
                timing_mismatch: seen
                    .get(id)
                    .filter(|_| !this_node)
                    .and_then(|p| p.timing_mismatch.clone()),
                litefs: None,
            }
        })
        .collect();
    let age = |t: Option<Instant>| t.map(|t| ms(now.saturating_duration_since(t)));
    StatusReport {
        node_id: node.settings.id,
        hostname: node.settings.hostname.clone(),
        witness: node.settings.witness,
        role: view.role().as_str().into(),
        primary: match &view.primary {
            Primary::ThisNode => Some(node.settings.hostname.clone()),
            Primary::Other { hostname } => Some(hostname.clone()),
            Primary::Unknown => None,
        },
        raft_state: format!("{:?}", m.state),
        initialized: m.membership_config.log_id().is_some(),
        term: m.current_term,
        leader_id: m.current_leader,
        commit_index: m.local_committed.index(),
        last_applied: m.last_applied.index(),
        last_log_index: m.last_log_index,
        quorum_ok: view.quorum_ok,
        ms_since_quorum_ack: age(view.last_quorum_ack),
        ms_since_leader_contact: age(view.last_leader_contact),
        lease_bound_ms: ms(node.settings.timing.lease_bound()),
        members,
        litefs: None,
    }
}

/// [`status`], with every member's LiteFS positions and lag (each member asked within
/// [`super::litefs_status::ASK_WITHIN`]).
pub async fn status_with_litefs(
    node: &RaftNode,
    state: &StateHandle,
    handoff: &crate::handoff::Handoff,
) -> StatusReport {
    let asked = super::litefs_status::gather(node, handoff).await;
    let mut report = status(node, state);
    let (summary, mut members) = super::litefs_status::assemble(asked);
    for m in &mut report.members {
        // A member added between the two looks has not been asked: it stays without.
        m.litefs = members.remove(&m.id);
    }
    report.litefs = Some(summary);
    report
}

/// `/metrics`: Prometheus text exposition format 0.0.4.
pub fn prometheus(node: &RaftNode, state: &StateHandle) -> String {
    let now = Instant::now();
    let status = status(node, state);
    let peers = node.peers.all();
    let mut p = Prom::default();
    p.family(
        "litefs_py_role",
        "gauge",
        "1 for the role this node shows in .role, 0 for the others.",
        [Role::Primary, Role::Replica, Role::Electing, Role::Witness].map(|r| {
            let v = u8::from(status.role == r.as_str());
            (format!("role=\"{}\"", r.as_str()), v.to_string())
        }),
    );
    p.single(
        "litefs_py_raft_term",
        "gauge",
        "Current raft term.",
        status.term,
    );
    p.single(
        "litefs_py_raft_leader_id",
        "gauge",
        "Node id of the raft leader this node knows (0: none).",
        status.leader_id.unwrap_or(0),
    );
    p.single(
        "litefs_py_raft_leader_changes_total",
        "counter",
        "Times this node saw the raft leader change since it started.",
        node.peers.leader_changes(),
    );
    p.single(
        "litefs_py_raft_quorum_ok",
        "gauge",
        "1 if this node has a fresh quorum ack (leader) or recent leader contact (follower).",
        u8::from(status.quorum_ok),
    );
    p.single(
        "litefs_py_raft_commit_index",
        "gauge",
        "Last committed log index.",
        status.commit_index.unwrap_or(0),
    );
    p.single(
        "litefs_py_raft_last_applied",
        "gauge",
        "Last applied log index.",
        status.last_applied.unwrap_or(0),
    );
    p.family(
        "litefs_py_peer_last_contact_seconds",
        "gauge",
        "Seconds since the last RPC exchanged with each peer.",
        peers.iter().filter_map(|(id, seen)| {
            let t = seen.last_contact?;
            let secs = now.saturating_duration_since(t).as_secs_f64();
            Some((format!("peer=\"{id}\""), format!("{secs:.3}")))
        }),
    );
    p.family(
        "litefs_py_rpc_errors_total",
        "counter",
        "Failed outgoing raft RPCs, by peer and kind.",
        peers.iter().flat_map(|(id, seen)| {
            seen.errors.iter().map(move |(kind, n)| {
                (
                    format!("peer=\"{id}\",kind=\"{}\"", kind.as_str()),
                    n.to_string(),
                )
            })
        }),
    );
    p.single(
        "litefs_py_rpc_rejected_total",
        "counter",
        "Incoming requests rejected for a wrong or missing cluster secret.",
        node.peers.rejected_requests(),
    );
    // The shim's requests by FUSE opcode (a witness mounts nothing: no such families).
    if status.role != Role::Witness.as_str() {
        state.fuse_metrics().render_prometheus(&mut p.0);
    }
    p.0
}

/// A Prometheus text body under construction: each family's HELP and TYPE, then its samples.
#[derive(Default)]
struct Prom(String);

impl Prom {
    fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (String, String)>,
    ) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        let _ = writeln!(
            self.0,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}
