//! What this node has seen of its peers: hostnames, last contact, RPC errors; and the counters
//! /metrics exports.
//!
//! openraft reports a follower's view of the leader only as an id (`current_leader`), which it
//! keeps after the leader has gone silent. The time of the leader's last AppendEntries is what
//! tells a live leader from a remembered one, so the RPC server records it here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use super::NodeId;

/// Why an outgoing RPC failed, as a /metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RpcErrorKind {
    /// No connection (refused, reset, unresolvable).
    Unreachable,
    /// No answer within the RPC's timeout.
    Timeout,
    /// The peer answered 401: its secret differs from ours.
    Auth,
    /// The test fault layer dropped it.
    Blocked,
    /// Any other HTTP status, e.g. the address now belongs to another node.
    Http,
    /// The answer was not what the protocol says.
    Decode,
}

impl RpcErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RpcErrorKind::Unreachable => "unreachable",
            RpcErrorKind::Timeout => "timeout",
            RpcErrorKind::Auth => "auth",
            RpcErrorKind::Blocked => "blocked",
            RpcErrorKind::Http => "http",
            RpcErrorKind::Decode => "decode",
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct PeerSeen {
    /// The hostname the peer announces in its RPC headers.
    pub hostname: Option<String>,
    /// Whether it announces itself as a witness.
    pub witness: Option<bool>,
    /// Last RPC exchanged with it in either direction (a request from it, or its answer).
    pub last_contact: Option<Instant>,
    /// Last AppendEntries it sent us as an established leader that we did not reject.
    pub last_leader_append: Option<Instant>,
    pub errors: BTreeMap<RpcErrorKind, u64>,
    /// How its timing settings differ from this node's, as of its last RPC.
    pub timing_mismatch: Option<String>,
}

/// Shared by the RPC client, the RPC server, the publisher and /status.
#[derive(Debug, Default)]
pub struct Peers {
    seen: Mutex<BTreeMap<NodeId, PeerSeen>>,
    leader_changes: AtomicU64,
    rejected_requests: AtomicU64,
}

impl Peers {
    /// A successful exchange with `id`; `hostname` and `witness` as it announced itself, if it
    /// did.
    pub fn contact(&self, id: NodeId, hostname: Option<&str>, witness: Option<bool>, at: Instant) {
        let mut seen = self.seen.lock();
        let peer = seen.entry(id).or_default();
        peer.last_contact = Some(peer.last_contact.map_or(at, |t| t.max(at)));
        if witness.is_some() {
            peer.witness = witness;
        }
        if let Some(h) = hostname.filter(|h| !h.is_empty())
            && peer.hostname.as_deref() != Some(h)
        {
            peer.hostname = Some(h.to_string());
        }
    }

    /// `id` sent us an AppendEntries as leader and we accepted its authority.
    pub fn set_timing_mismatch(&self, id: NodeId, mismatch: Option<String>) {
        let mut seen = self.seen.lock();
        seen.entry(id).or_default().timing_mismatch = mismatch;
    }

    pub fn leader_append(&self, id: NodeId, at: Instant) {
        let mut seen = self.seen.lock();
        let peer = seen.entry(id).or_default();
        peer.last_leader_append = Some(peer.last_leader_append.map_or(at, |t| t.max(at)));
    }

    pub fn rpc_error(&self, id: NodeId, kind: RpcErrorKind) {
        *self
            .seen
            .lock()
            .entry(id)
            .or_default()
            .errors
            .entry(kind)
            .or_default() += 1;
    }

    pub fn get(&self, id: NodeId) -> Option<PeerSeen> {
        self.seen.lock().get(&id).cloned()
    }

    pub fn hostname(&self, id: NodeId) -> Option<String> {
        self.seen.lock().get(&id).and_then(|p| p.hostname.clone())
    }

    pub fn witness(&self, id: NodeId) -> Option<bool> {
        self.seen.lock().get(&id).and_then(|p| p.witness)
    }

    pub fn all(&self) -> BTreeMap<NodeId, PeerSeen> {
        self.seen.lock().clone()
    }

    pub fn count_leader_change(&self) {
        self.leader_changes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.load(Ordering::Relaxed)
    }

    /// An incoming request without the right secret.
    pub fn count_rejected(&self) {
        self.rejected_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected_requests(&self) -> u64 {
        self.rejected_requests.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn contact_keeps_the_latest_and_the_announced_name() {
        let peers = Peers::default();
        let t0 = Instant::now();
        peers.contact(2, Some("node-b"), Some(true), t0 + Duration::from_millis(5));
        // An older answer arriving late does not move the time back; no name keeps the name.
        peers.contact(2, None, None, t0);
        assert_eq!(peers.witness(2), Some(true));
        let p = peers.get(2).unwrap();
        assert_eq!(p.last_contact, Some(t0 + Duration::from_millis(5)));
        assert_eq!(p.hostname.as_deref(), Some("node-b"));
        peers.rpc_error(2, RpcErrorKind::Timeout);
        peers.rpc_error(2, RpcErrorKind::Timeout);
        assert_eq!(peers.get(2).unwrap().errors[&RpcErrorKind::Timeout], 2);
        assert!(peers.get(3).is_none());
    }
}
