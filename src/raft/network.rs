//! Raft RPC between peers over HTTP/1.1 + JSON: the client half (openraft's `RaftNetworkV2`) and
//! what both halves share (paths, headers, the secret).
//!
//! Every request carries `Authorization: Bearer <cluster secret>`, the sender's node id and
//! hostname, and the id of the node it is meant for; every answer carries the answering node's
//! id and hostname. Every RPC has a timeout: openraft's `RPCOption::soft_ttl()` (3/4 of the
//! heartbeat interval for AppendEntries), so a silent peer costs one heartbeat slot, not a hang.
//! The server half is `server.rs`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::OptionalSend;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::faults::{FAULT_HEADER, Faults};
use super::peers::{Peers, RpcErrorKind};
use super::timing_check::{HEADER_TIMING, TimingStamp};
use super::{Node, NodeId, Snapshot, SnapshotMeta, StateMachineData, TypeConfig, Vote};

/// Request paths on `node.raft-addr`.
pub mod paths {
    pub const APPEND: &str = "/raft/append";
    pub const VOTE: &str = "/raft/vote";
    pub const PRE_VOTE: &str = "/raft/pre-vote";
    pub const SNAPSHOT: &str = "/raft/snapshot";
    pub const TRANSFER_LEADER: &str = "/raft/transfer-leader";
    /// Who are you? Used before adding a node, to check its id and our shared secret.
    pub const HELLO: &str = "/raft/hello";
    /// Membership changes forwarded by a non-leader to the leader.
    pub const ADMIN_ADD: &str = "/raft/admin/add";
    pub const ADMIN_REMOVE: &str = "/raft/admin/remove";
}

/// The sender's node id (requests) or the answering node's id (answers).
pub const HEADER_FROM: &str = "x-litefs-py-from";
/// The node id a request is meant for: an address now used by another node answers 421.
pub const HEADER_TO: &str = "x-litefs-py-to";
/// The sender's / answerer's `node.hostname`.
pub const HEADER_HOSTNAME: &str = "x-litefs-py-hostname";
/// `1` if the sender / answerer is a witness (it may lead briefly but is never primary).
pub const HEADER_WITNESS: &str = "x-litefs-py-witness";

/// Reads [`HEADER_WITNESS`].
pub fn witness_header(value: Option<&str>) -> Option<bool> {
    value.map(|v| v == "1")
}

/// The cluster's shared secret. Never printed.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(s: impl Into<Arc<str>>) -> Secret {
        Secret(s.into())
    }

    /// Compares in constant time for equal lengths (the length itself is not hidden).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }

    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The body of a full-snapshot RPC. The state machine is small, so it travels whole, as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotBody {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub snapshot: StateMachineData,
}

/// `GET /raft/hello`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub id: NodeId,
    pub hostname: String,
    pub witness: bool,
    /// Whether it belongs to a cluster (`None` from a version that does not say).
    #[serde(default)]
    pub initialized: Option<bool>,
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("blocked by the test fault layer")]
    Blocked,
    #[error("cannot reach {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr} rejected our cluster secret (401): the secrets differ")]
    Auth { addr: String },
    #[error("{addr} is not node {expected} (it answered 421: {body})")]
    WrongNode {
        addr: String,
        expected: NodeId,
        body: String,
    },
    #[error("{addr} answered {status}: {body}")]
    Http {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("{addr}: bad answer: {detail}")]
    Decode { addr: String, detail: String },
    #[error("no cluster secret is configured (cluster.secret-file or $LITEFS_PY_SECRET)")]
    NoSecret,
}

impl CallError {
    pub fn kind(&self) -> RpcErrorKind {
        match self {
            CallError::Blocked => RpcErrorKind::Blocked,
            CallError::Unreachable { .. } | CallError::NoSecret => RpcErrorKind::Unreachable,
            CallError::Timeout { .. } => RpcErrorKind::Timeout,
            CallError::Auth { .. } => RpcErrorKind::Auth,
            CallError::WrongNode { .. } | CallError::Http { .. } => RpcErrorKind::Http,
            CallError::Decode { .. } => RpcErrorKind::Decode,
        }
    }

    /// openraft backs off from an `Unreachable` peer and retries a `Network` error at once:
    /// a peer that is down, cut off or misconfigured gets the backoff.
    fn into_rpc(self) -> RPCError<TypeConfig> {
        match self {
            CallError::Timeout { .. } | CallError::Decode { .. } | CallError::Http { .. } => {
                RPCError::Network(NetworkError::new(&self))
            }
            _ => RPCError::Unreachable(Unreachable::new(&self)),
        }
    }
}

/// Logs a repeated event once per key and interval, so that a peer with the wrong secret
/// retrying every heartbeat does not flood the log.
#[derive(Debug, Default)]
pub struct LogLimiter {
    last: Mutex<HashMap<String, Instant>>,
}

impl LogLimiter {
    const EVERY: Duration = Duration::from_secs(10);

    pub fn should_log(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock();
        match last.get(key) {
            Some(t) if now.duration_since(*t) < Self::EVERY => false,
            _ => {
                last.insert(key.to_string(), now);
                true
            }
        }
    }
}

/// This node's side of the transport, shared by every peer client and the server.
#[derive(Debug)]
pub struct Transport {
    pub me: NodeId,
    pub hostname: String,
    pub witness: bool,
    pub secret: Option<Secret>,
    pub faults: Faults,
    pub peers: Arc<Peers>,
    /// This node's timing settings, sent on every RPC and compared with every peer's.
    pub timing: TimingStamp,
    timing_header: String,
    /// `https` with `cluster.tls`, else `http`.
    scheme: &'static str,
    client: reqwest::Client,
    warnings: LogLimiter,
    /// Peers that do not answer: quiet while they start ([`super::silence`]).
    silence: super::silence::Silence,
}

impl Transport {
    #[allow(clippy::too_many_arguments)] // Each is a separate setting of the node.
    pub fn new(
        me: NodeId,
        hostname: String,
        witness: bool,
        secret: Option<Secret>,
        tls: Option<Arc<rustls::ClientConfig>>,
        faults: Faults,
        peers: Arc<Peers>,
        timing: TimingStamp,
    ) -> Result<Arc<Transport>, reqwest::Error> {
        let mut builder = crate::config::client_builder()
            // Peers are on the LAN; an HTTP(S)_PROXY meant for the app must not catch them.
            .no_proxy()
            .tcp_nodelay(true)
            // Below the servers' idle timeout (`serve::Limits::PEERS`): the pool drops a
            // connection before the peer does.
            .pool_idle_timeout(Duration::from_secs(15));
        let scheme = match tls {
            Some(tls) => {
                // Our cluster CA and client certificate (`cluster.tls`), nothing from the system.
                builder = builder.tls_backend_preconfigured(rustls::ClientConfig::clone(&tls));
                "https"
            }
            None => "http",
        };
        let client = builder.build()?;
        Ok(Arc::new(Transport {
            me,
            hostname,
            witness,
            secret,
            faults,
            peers,
            timing,
            timing_header: timing.header(),
            scheme,
            client,
            warnings: LogLimiter::default(),
            silence: Default::default(),
        }))
    }

    pub fn timing_header(&self) -> &str {
        &self.timing_header
    }

    /// Compares `peer`'s timing settings (its [`HEADER_TIMING`], if it sent one) with ours:
    /// records the difference for `status` and logs it (at most every 10 s per peer).
    pub fn check_timing(&self, peer: NodeId, header: Option<&str>) {
        let Some(theirs) = header.and_then(TimingStamp::parse) else {
            return;
        };
        let differences = self.timing.differences(&theirs);
        let mismatch = (!differences.is_empty()).then(|| differences.join("; "));
        if let Some(m) = &mismatch
            && self.warnings.should_log(&format!("timing of node {peer}"))
        {
            tracing::error!(
                peer,
                "node {peer} runs with other timing settings ({m}): give every node the same raft: section and lease.ttl, else a new leader may grant the LiteFS lease before the old primary has demoted"
            );
        }
        self.peers.set_timing_mismatch(peer, mismatch);
    }

    /// One RPC to node `target` at `addr`: `POST path` with a JSON body (or `GET` without one),
    /// answered with JSON. Records the contact or the error in [`Peers`].
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        body: Option<&Req>,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let result = self.call_inner(target, addr, path, body, timeout).await;
        let e = match &result {
            Ok(_) => {
                self.silence.answered(target);
                return result;
            }
            Err(e) => e,
        };
        let kind = e.kind();
        self.peers.rpc_error(target, kind);
        match e {
            CallError::Blocked | CallError::Http { .. } => {}
            // Not up (yet), or gone for a restart: normal for a while, then one warning.
            CallError::Unreachable { .. } | CallError::Timeout { .. } => {
                match self.silence.failed(target, Instant::now()) {
                    None => tracing::debug!(peer = target, "{e}"),
                    Some(silent) => tracing::warn!(
                        peer = target,
                        "node {target} at {addr} has not answered for {}s ({e}): check that litefs-py runs there, that {addr} is its node.raft-addr (this node's cluster.peers), and that the port is open between the nodes",
                        silent.as_secs()
                    ),
                }
            }
            // A misconfigured peer fails every heartbeat: say so at once, once per interval.
            _ => {
                if self
                    .warnings
                    .should_log(&format!("{addr} {}", kind.as_str()))
                {
                    tracing::warn!(peer = target, "{e}");
                }
            }
        }
        result
    }

    async fn call_inner<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        body: Option<&Req>,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        if self.faults.is_blocked(target) {
            return Err(CallError::Blocked);
        }
        let secret = self.secret.as_ref().ok_or(CallError::NoSecret)?;
        let url = format!("{}://{addr}{path}", self.scheme);
        let request = match body {
            Some(body) => self.client.post(&url).json(body),
            None => self.client.get(&url),
        };
        let sent = request
            .header(reqwest::header::AUTHORIZATION, secret.bearer())
            .header(HEADER_FROM, self.me.to_string())
            .header(HEADER_TO, target.to_string())
            .header(HEADER_HOSTNAME, &self.hostname)
            .header(HEADER_WITNESS, if self.witness { "1" } else { "0" })
            .header(HEADER_TIMING, &self.timing_header)
            .timeout(timeout)
            .send();
        let addr_s = || addr.to_string();
        let transport_err = |e: reqwest::Error| {
            if e.is_timeout() {
                CallError::Timeout {
                    addr: addr_s(),
                    timeout,
                }
            } else {
                CallError::Unreachable {
                    addr: addr_s(),
                    detail: error_chain(&e),
                }
            }
        };
        let response = sent.await.map_err(transport_err)?;
        let status = response.status();
        let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
        let hostname = header(HEADER_HOSTNAME).map(str::to_string);
        let witness = witness_header(header(HEADER_WITNESS));
        self.check_timing(target, header(HEADER_TIMING));
        if !status.is_success() {
            let blocked = response.headers().contains_key(FAULT_HEADER);
            let text = response.text().await.unwrap_or_default();
            let body: String = text.chars().take(200).collect();
            return Err(match status.as_u16() {
                _ if blocked => CallError::Blocked,
                401 => CallError::Auth { addr: addr_s() },
                421 => CallError::WrongNode {
                    addr: addr_s(),
                    expected: target,
                    body,
                },
                code => CallError::Http {
                    addr: addr_s(),
                    status: code,
                    body,
                },
            });
        }
        let bytes = response.bytes().await.map_err(transport_err)?;
        let value = serde_json::from_slice(&bytes).map_err(|e| CallError::Decode {
            addr: addr_s(),
            detail: e.to_string(),
        })?;
        self.peers
            .contact(target, hostname.as_deref(), witness, Instant::now());
        Ok(value)
    }
}

/// reqwest's Display hides the cause ("error sending request"); the chain says what happened.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// openraft's factory: one [`PeerClient`] per target node.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    transport: Arc<Transport>,
}

impl NetworkFactory {
    pub fn new(transport: Arc<Transport>) -> NetworkFactory {
        NetworkFactory { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        // No connection here: reqwest connects (and pools) on first use.
        PeerClient {
            transport: self.transport.clone(),
            target,
            addr: node.raft_addr.clone(),
        }
    }
}

/// Sends raft RPCs to one peer.
#[derive(Debug)]
pub struct PeerClient {
    transport: Arc<Transport>,
    target: NodeId,
    addr: String,
}

impl PeerClient {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        self.transport
            .call(self.target, &self.addr, path, Some(req), option.soft_ttl())
            .await
            .map_err(CallError::into_rpc)
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = StateMachineData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(paths::APPEND, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(paths::VOTE, &rpc, &option).await
    }

    /// Implemented for real: openraft's default answers "granted" without asking, which would
    /// let a node that cannot win bump its term and depose a healthy leader when it reconnects.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(paths::PRE_VOTE, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let body = SnapshotBody {
            vote,
            meta: snapshot.meta,
            snapshot: snapshot.snapshot,
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = self.rpc(paths::SNAPSHOT, &body, &option) => Ok(res?),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(paths::TRANSFER_LEADER, &req, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_matches_only_itself_and_never_prints() {
        let s = Secret::new("s3cret");
        assert!(s.matches(b"s3cret"));
        assert!(!s.matches(b"s3creT"));
        assert!(!s.matches(b"s3cret-and-more"));
        assert!(!s.matches(b""));
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }

    #[test]
    fn log_limiter_says_once_per_key() {
        let l = LogLimiter::default();
        assert!(l.should_log("a"));
        assert!(!l.should_log("a"));
        assert!(l.should_log("b"));
    }
}
