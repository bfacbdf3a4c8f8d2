//! Background duties of a leader: keeping the membership's node records right, and — on a
//! witness — handing leadership to a data node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{ChangeMembers, LogIdOptionExt, ServerState};
use tokio::sync::watch;

use super::node::RaftNode;
use super::{Node, NodeId};

/// How often the leader checks the membership's node records against what members announce.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// Sleeps `d` or returns true when the node is stopping.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// On the leader: records in the membership the hostname and witness flag each member
/// announces, so that every node (and `status`) knows them, including nodes that were listed in
/// `cluster.peers` at bootstrap with an address only. Only those fields change, never the
/// address (changing an address this way could split the cluster).
pub async fn reconcile_members(node: Arc<RaftNode>, mut stop: watch::Receiver<bool>) {
    while !sleep_or_stop(&mut stop, RECONCILE_EVERY).await {
        let m = node.metrics();
        if m.state != ServerState::Leader || m.membership_config != m.committed_membership_config {
            continue;
        }
        let mut fix = BTreeMap::new();
        for (id, n) in m.membership_config.membership().nodes() {
            let (hostname, witness) = if *id == node.settings.id {
                (
                    Some(node.settings.hostname.clone()),
                    Some(node.settings.witness),
                )
            } else {
                (node.peers.hostname(*id), node.peers.witness(*id))
            };
            let hostname = hostname.unwrap_or_else(|| n.hostname.clone());
            let witness = witness.unwrap_or(n.witness);
            if hostname != n.hostname || witness != n.witness {
                fix.insert(*id, Node::announced(&n.raft_addr, hostname, witness));
            }
        }
        if fix.is_empty() {
            continue;
        }
        let ids: Vec<NodeId> = fix.keys().copied().collect();
        let what = format!("recording how nodes {ids:?} announce themselves");
        match node.change(what, ChangeMembers::SetNodes(fix)).await {
            Ok(()) => tracing::info!(nodes = ?ids, "recorded member hostnames"),
            Err(e) => tracing::debug!("{e}"),
        }
    }
}

/// On a witness: while it leads, hand leadership to a data voter whose log has caught up with
/// ours. A witness only wins an election when no data node could (their logs were behind), so
/// this is the rare path; data nodes show `electing` meanwhile (a witness is never primary).
pub async fn witness_hands_off(node: Arc<RaftNode>, mut stop: watch::Receiver<bool>) {
    let timing = node.settings.timing;
    let mut last_try: Option<Instant> = None;
    while !sleep_or_stop(&mut stop, timing.publish_tick()).await {
        let m = node.metrics();
        if m.state != ServerState::Leader {
            continue;
        }
        // openraft gets one election timeout to complete a transfer before we ask again.
        if last_try.is_some_and(|t| t.elapsed() < timing.election_timeout_max) {
            continue;
        }
        let Some(replication) = m.replication.as_ref() else {
            continue;
        };
        let me = node.settings.id;
        let target = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != me && !node.is_witness(*id))
            .find(|id| {
                replication.get(id).and_then(|l| l.index()).is_some()
                    && replication.get(id).and_then(|l| l.index()) == m.last_log_index
            });
        let Some(target) = target else {
            continue;
        };
        tracing::info!(
            to = target,
            "this witness leads; handing leadership to a data node"
        );
        last_try = Some(Instant::now());
        if let Err(e) = node.raft.trigger().transfer_leader(target).await {
            tracing::warn!("leadership transfer to {target} failed: {e}");
        }
    }
}
