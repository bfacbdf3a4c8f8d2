//! The raft layer: openraft's type configuration and its durable storage.
//!
//! One redb file (`<cluster.data-dir>/raft.redb`) holds everything that must survive a crash:
//! the log, the vote, the committed log id, the last purged log id and the latest state-machine
//! snapshot. The state machine itself lives in memory and is rebuilt at start from that snapshot
//! plus the committed log entries after it (openraft re-applies them; see [`open_storage`]).
//!
//! - [`store`]: the redb file, its tables, [`StoreError`].
//! - [`log_store`]: [`LogStore`], openraft's `RaftLogStorage` + `RaftLogReader`.
//! - [`state_machine`]: [`StateMachineStore`], openraft's `RaftStateMachine`.
//!
//! The running node:
//! - [`network`] / [`server`]: raft RPC between peers over HTTP with the shared secret.
//! - [`node`]: [`RaftNode`] — start-up, bootstrap, leadership transfer; [`membership`]:
//!   membership changes; [`tasks`]: the leader's background duties.
//! - [`peers`]: what this node has seen of its peers; [`faults`]: the test-only fault layer;
//!   [`timing_check`]: the check that every node runs with the same timing settings.
//!
//! Consensus only: this layer knows nothing of LiteFS, the lease or the handoff (see
//! docs/architecture.md, "Layers and the dependency rule"). It replicates a small key/value
//! map; what the keys mean is the upper layers' business.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod bootstrap;
pub mod faults;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod node;
pub mod peers;
pub mod serve;
pub mod server;
pub mod silence;
pub mod state_machine;
pub mod store;
pub mod tasks;
pub mod timing_check;

#[cfg(test)]
mod tests;

pub use log_store::LogStore;
pub use node::{NodeError, NodeSettings, RaftNode, TransferError};
pub use state_machine::{StateMachineData, StateMachineStore};
pub use store::StoreError;

/// Raft node ids are `node.id` from litefs-py.yml (unique, > 0, never reused: a removed node's
/// id given to a fresh node would look like a node whose log went backwards).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft type configuration of litefs-py. Everything not listed keeps openraft's
    /// default (u64 terms, the default leader id and vote, tokio runtime).
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Node,
);

/// The `Raft` handle type the daemon runs.
pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;

// Shorthands for openraft's types under our configuration.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot as openraft moves it around: metadata plus the state machine's data, typed (the
/// network layer serialises it when it sends one to a lagging follower).
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, StateMachineData>;

/// What the cluster membership records about a node (it is stored in membership log entries and
/// snapshots, so every field must stay decodable forever).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
// A field added later (hostname, LiteFS advertise URL) must still decode entries written before it
// existed: missing fields take their default.
#[serde(default, rename_all = "kebab-case")]
pub struct Node {
    /// `host:port` of the node's raft RPC endpoint (`node.raft-addr`).
    pub raft_addr: String,
    /// `node.hostname`: what `.primary` shows on the other nodes while this node leads. Empty in
    /// entries written before it existed, and until the leader has heard the node's own answer
    /// (the leader fills it in; see `node::reconcile_hostnames`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// A witness votes and may lead for a moment (when its log is the most complete one), but
    /// hands leadership to a data node at once and is never primary.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub witness: bool,
}

impl Node {
    pub fn new(raft_addr: impl Into<String>) -> Node {
        Node {
            raft_addr: raft_addr.into(),
            hostname: String::new(),
            witness: false,
        }
    }

    /// A node as it announces itself.
    pub fn announced(
        raft_addr: impl Into<String>,
        hostname: impl Into<String>,
        witness: bool,
    ) -> Node {
        Node {
            raft_addr: raft_addr.into(),
            hostname: hostname.into(),
            witness,
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raft_addr)
    }
}

/// A command written to the raft log and applied to the state machine on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "op",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum Request {
    /// Sets the cluster id if none is set yet; a later, different id is ignored. LiteFS keeps it
    /// next to the lease (its `clusterid` key) and refuses to join a cluster whose id differs
    /// from the one in its data directory, so once chosen it must never change.
    SetClusterId { cluster_id: String },
    /// Sets a key of the small key/value map.
    Set { key: String, value: String },
    /// Removes a key of the small key/value map.
    Delete { key: String },
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::SetClusterId { cluster_id } => write!(f, "set-cluster-id {cluster_id:?}"),
            Request::Set { key, value } => write!(f, "set {key:?}={value:?}"),
            Request::Delete { key } => write!(f, "delete {key:?}"),
        }
    }
}

/// The result of applying a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Response {
    /// `SetClusterId`: the cluster id in force after the request (the earlier one if there was
    /// one). `Set` and `Delete`: the key's previous value. Blank and membership entries: `None`.
    pub value: Option<String>,
}

/// Opens (creating if needed) the raft data file in `data_dir` for node `node_id` and returns the
/// two openraft storage halves sharing it.
///
/// Blocking: it opens the file, checks it whole (redb's integrity check) and loads the latest
/// snapshot into the state machine. Call it before starting raft (in `spawn_blocking` if inside
/// the runtime). openraft's `Raft::new` then re-applies the committed log entries after the
/// snapshot, so the state machine is back where it was when the process stopped.
pub fn open_storage(
    data_dir: &Path,
    node_id: NodeId,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    let db = store::RaftDb::open(data_dir, node_id)?;
    let state_machine = StateMachineStore::load(db.clone())?;
    Ok((LogStore::new(db), state_machine))
}
