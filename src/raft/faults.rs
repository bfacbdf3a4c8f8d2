//! TEST-ONLY fault layer: a set of blocked peer ids whose raft RPCs are dropped both ways.
//!
//! It exists so that the integration tests can cut a node off from the others (a partition)
//! with real processes and real sockets. It is inert unless the daemon starts with
//! `LITEFS_PY_TEST_FAULTS=1`: only then is the control endpoint (`PUT /test/faults` on
//! `node.http-addr`, secret required) routed at all. Never set that variable in production.
//!
//! Dropping is done on both sides of each link: outgoing RPCs to a blocked peer fail at once as
//! "unreachable" without being sent, and incoming RPCs from a blocked peer are answered 503
//! without reaching raft. So blocking `{2, 3}` on node 1 alone isolates node 1 completely.
//!
//! It can also stop a node from running for leader on its own (`elect: false`), so that a test
//! decides which node wins the next election.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use super::NodeId;

/// The environment variable that enables the fault layer.
pub const FAULTS_ENV: &str = "LITEFS_PY_TEST_FAULTS";

/// Marks a 503 produced by the fault layer (so the sender counts it as `blocked`).
pub const FAULT_HEADER: &str = "x-litefs-py-fault";

#[derive(Debug, Clone, Default)]
pub struct Faults {
    enabled: bool,
    blocked: Arc<RwLock<BTreeSet<NodeId>>>,
    /// `false`: elections of this node's own are off (see [`Faults::set_elect`]).
    no_elect: Arc<AtomicBool>,
}

impl Faults {
    /// Enabled iff `LITEFS_PY_TEST_FAULTS=1` at startup.
    pub fn from_env() -> Faults {
        let enabled = std::env::var(FAULTS_ENV).is_ok_and(|v| v == "1");
        if enabled {
            tracing::warn!(
                "{FAULTS_ENV}=1: the test-only fault layer is enabled (PUT /test/faults can cut this node off)"
            );
        }
        Faults {
            enabled,
            blocked: Arc::default(),
            no_elect: Arc::default(),
        }
    }

    #[cfg(test)]
    pub fn enabled_for_tests() -> Faults {
        Faults {
            enabled: true,
            blocked: Arc::default(),
            no_elect: Arc::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn is_blocked(&self, peer: NodeId) -> bool {
        // The common case (disabled) costs one branch, no lock.
        self.enabled && self.blocked.read().contains(&peer)
    }

    /// Replaces the blocked set. Ignored when disabled.
    pub fn set_blocked(&self, peers: BTreeSet<NodeId>) {
        if self.enabled {
            tracing::warn!(?peers, "test fault layer: blocked peers set");
            *self.blocked.write() = peers;
        }
    }

    pub fn blocked(&self) -> BTreeSet<NodeId> {
        self.blocked.read().clone()
    }

    /// Records whether the node may run for leader on its own; `true` if the caller should
    /// apply it to raft (enabled layer). Ignored when disabled.
    pub fn set_elect(&self, elect: bool) -> bool {
        if self.enabled && self.no_elect.swap(!elect, Ordering::AcqRel) == elect {
            tracing::warn!(elect, "test fault layer: elections of this node's own");
        }
        self.enabled
    }

    pub fn elect(&self) -> bool {
        !self.no_elect.load(Ordering::Acquire)
    }
}
