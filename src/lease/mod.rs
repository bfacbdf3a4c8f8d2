//! The Consul-compatible lease API LiteFS talks to (`lease.addr`, loopback only).
//!
//! LiteFS v0.5.14 elects its primary through a Consul lock (`lease.type: consul`). This node
//! serves the few Consul calls LiteFS makes (docs/architecture.md, "LiteFS's Consul client") and
//! answers them from raft, so the local LiteFS is primary exactly when raft says this node may
//! be. The pieces:
//! - [`consul`]: the wire formats (session bodies, KV pairs, Go durations, session ids).
//! - [`state`]: the rules, pure ([`state::LeaseState`]); the invariant is stated there.
//! - [`service`]: the rules over a [`RaftFacts`] source: the raft writes, the new-leader wait,
//!   the check that no reachable LiteFS is fresher before a term's first grant, the replicated
//!   holder record.
//! - [`server`]: the HTTP routes (axum).
//! - [`records`]: the holder record and the handoff record, replicated through raft.
//! - [`freshest`]: which reachable node's LiteFS has the newest data, asked before a term's
//!   first grant (docs/architecture.md, "Freshest node first").
//! - [`raft_facts`]: [`RaftFacts`] over the running [`RaftNode`](crate::raft::RaftNode).
//!
//! Sessions live in this process's memory only: LiteFS only talks to its own node's lease API,
//! and a restarted litefs-py must not honour a session it cannot vouch for (a renewal of an
//! unknown session is 404, and LiteFS demotes itself).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use self::freshest::Survey;
use crate::raft::{NodeId, Request, Response};

pub mod consul;
pub mod freshest;
pub mod raft_facts;
pub mod records;
pub mod server;
pub mod service;
pub mod state;

#[cfg(test)]
mod fresher_tests;
#[cfg(test)]
mod state_props;
#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use server::LeaseServer;
pub use service::LeaseService;
pub use state::{LeaseParams, RaftNow};

/// The key and lock delay are LiteFS's settings as much as ours: they are defined with the
/// litefs.yml they are written into.
pub use crate::litefs::yaml::{LEASE_KEY, LOCK_DELAY};

/// Added to a new leader's wait for scheduling: our answer reaching LiteFS (it restarts its
/// renewal clock when it *receives* it), LiteFS's timers and its 1 s sleep firing late, and its
/// failing renewal's own time. 200 ms is generous for a host that keeps up; a LiteFS (or a
/// daemon) stalled for longer is the fencer's, which kills it `ttl` after the decision, well
/// before the wait ends (docs/decisions.md, "Lease: a new leader waits from the old leader's
/// last possible grant").
pub const GRANT_MARGIN: Duration = Duration::from_millis(200);

/// The largest difference assumed between the rates of two hosts' monotonic clocks, in parts
/// per million (0.1 %): ten times a typical quartz oscillator's tolerance, and twice the most
/// NTP ever slews. The new-leader wait adds this share of every interval its argument adds up.
pub const DRIFT_PPM: u64 = 1000;

/// LiteFS v0.5.14's hard-wired renewal constants (`store.go`, `monitorLeaseAsPrimary`): after a
/// failed renewal it retries every second, and once the next attempt would come too late it
/// sleeps one `timeout` (1 s) before demoting. [`state::litefs_hold`] follows them.
pub const LITEFS_RENEW_RETRY: Duration = Duration::from_secs(1);
pub const LITEFS_RENEW_TIMEOUT: Duration = Duration::from_secs(1);

/// Sessions kept at once. LiteFS has one at a time (a follower's LiteFS creates and destroys
/// one per attempt, every second); the cap only bounds what a misbehaving client can pile up.
pub const MAX_SESSIONS: usize = 64;

/// How long a raft write of the lease path may take before the request is answered as failed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{0}")]
    BadRequest(String),
    #[error("too many sessions (at most {0}); destroy some first")]
    TooManySessions(usize),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error(
        "lease.addr {0} is not a loopback address: the lease API must not be reachable from other hosts"
    )]
    NotLoopback(SocketAddr),
    #[error("lease.addr {addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A raft write that did not commit (not leader, no quorum in time, raft stopped).
#[derive(Debug, Clone, thiserror::Error)]
#[error("raft write failed: {0}")]
pub struct WriteError(pub String);

/// What the lease rules need from raft. The implementation over the running node is
/// [`raft_facts::NodeFacts`]; tests use a fake they steer.
pub trait RaftFacts: Send + Sync + 'static {
    /// This node's raft id.
    fn node_id(&self) -> NodeId;
    /// What raft says right now: leader or not, with a fresh quorum ack or not, the term, and
    /// when this node's current leadership began.
    fn now(&self) -> RaftNow;
    /// A key of the replicated key/value map, as applied on this node.
    fn get(&self, key: &str) -> Option<String>;
    /// The replicated LiteFS cluster id.
    fn cluster_id(&self) -> Option<String>;
    /// The term of the last log entry applied to this node's state machine (see
    /// [`records::waives`]). `None`: unknown, and no handoff record is ever trusted.
    fn applied_term(&self) -> Option<u64> {
        None
    }
    /// Writes through raft; resolves once committed and applied here.
    fn write(&self, request: Request) -> impl Future<Output = Result<Response, WriteError>> + Send;
    /// Resolves when raft's state may have changed (the caller re-reads [`RaftFacts::now`]).
    fn changed(&self) -> impl Future<Output = ()> + Send;
    /// This node's LiteFS positions and the reachable data voters' ([`Survey`]), asked before
    /// the first grant of a term. `Ok(None)`: this node runs no LiteFS of its own (not
    /// `litefs-py run`), so there is nothing to compare.
    fn survey_litefs(&self) -> impl Future<Output = Result<Option<Survey>, String>> + Send {
        std::future::ready(Ok(None))
    }
    /// Starts moving raft leadership of `term` to node `to`; returns at once.
    fn transfer_leadership(&self, to: NodeId, term: u64) {
        let _ = (to, term);
    }
}
