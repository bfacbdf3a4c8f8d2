//! One raft node: storage, openraft, the two HTTP listeners, the publisher, bootstrap and
//! membership changes.
//!
//! Start-up order matters for clear errors: both listeners are bound and the data file is opened
//! (and checked) before raft starts, so a port in use or a damaged file is one error naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use litefs_py_fuse::StateHandle;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{InitializeError, RaftError};
use openraft::{ChangeMembers, RaftMetrics, ServerState};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::faults::Faults;
use super::network::{CallError, Hello, NetworkFactory, Secret, Transport, paths};
use super::peers::Peers;
use super::timing_check::TimingStamp;
use super::{Node, NodeId, Raft, StateMachineStore, StoreError, TypeConfig, open_storage};
use crate::config::{Config, ConfigError, RaftTiming};
use crate::litefs_state::LiteFsState;

/// How long a new learner may take to catch up before `cluster add` gives up promoting it.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one membership log entry may take to commit.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The "who are you" probe before adding a node.
const HELLO_TIMEOUT: Duration = Duration::from_secs(3);

/// What a node needs from litefs-py.yml, plus the role the command gives it.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub id: NodeId,
    pub hostname: String,
    pub raft_addr: String,
    pub http_addr: String,
    pub bootstrap: bool,
    /// Voters at bootstrap: id -> raft address (this node included).
    pub peers: BTreeMap<NodeId, String>,
    pub secret: Option<Secret>,
    pub data_dir: PathBuf,
    pub timing: RaftTiming,
    /// A witness votes but never runs for leader and has no LiteFS.
    pub witness: bool,
    /// `lease.ttl` on a data node (compared across nodes, see `timing_check`); `None` on a
    /// witness.
    pub lease_ttl: Option<std::time::Duration>,
}

impl NodeSettings {
    /// `hostname` overrides `node.hostname` (`mount --hostname`).
    pub fn from_config(
        config: &Config,
        hostname: Option<String>,
        witness: bool,
    ) -> Result<NodeSettings, ConfigError> {
        let secret = config.secret()?.map(Secret::new);
        if witness && config.cluster.bootstrap {
            return Err(ConfigError::Invalid {
                key: "cluster.bootstrap",
                message: "a witness cannot bootstrap the cluster (it never becomes leader): set \
                          bootstrap on a data node"
                    .into(),
            });
        }
        Ok(NodeSettings {
            id: config.node.id,
            hostname: hostname.unwrap_or_else(|| config.node.hostname.clone()),
            raft_addr: config.node.raft_addr.clone(),
            http_addr: config.node.http_addr.clone(),
            bootstrap: config.cluster.bootstrap,
            peers: config.cluster.peers.clone(),
            secret,
            data_dir: config.cluster.data_dir.clone(),
            timing: config.raft,
            witness,
            lease_ttl: (!witness).then_some(config.lease.ttl),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error("{key} {addr}: cannot listen: {source}")]
    Bind {
        key: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("raft settings: {0}")]
    RaftConfig(#[from] openraft::ConfigError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
    #[error("no leader is known right now; retry in a moment")]
    NoLeader,
    #[error(transparent)]
    Peer(#[from] CallError),
    #[error("the leader refused: {0}")]
    Remote(String),
    #[error("{what} did not finish within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("http client: {0}")]
    Client(#[from] reqwest::Error),
}

impl NodeError {
    fn status(&self) -> StatusCode {
        match self {
            NodeError::Invalid(_) => StatusCode::BAD_REQUEST,
            NodeError::Refused(_) => StatusCode::CONFLICT,
            NodeError::NoLeader => StatusCode::SERVICE_UNAVAILABLE,
            NodeError::Peer(_) | NodeError::Remote(_) => StatusCode::BAD_GATEWAY,
            NodeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        (self.status(), format!("{self}\n")).into_response()
    }
}

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

impl IntoResponse for MembershipOutcome {
    fn into_response(self) -> Response {
        axum::Json(self).into_response()
    }
}

/// A running node. Shared (`Arc`) by its servers and tasks.
pub struct RaftNode {
    pub raft: Raft,
    pub settings: NodeSettings,
    pub transport: Arc<Transport>,
    pub peers: Arc<Peers>,
    pub state_machine: StateMachineStore,
    /// What the virtual files show (also the `role` of /status).
    pub state: StateHandle,
    /// Under `litefs-py run`: the local LiteFS's lease and health, which the view takes into
    /// account (see `view`). `None` under `mount` and `witness`.
    pub litefs: Option<LiteFsState>,
    /// Under `litefs-py run`: what a planned handoff needs of this node's LiteFS and lease API
    /// (installed by the daemon once the lease API runs).
    pub handoff: std::sync::OnceLock<Arc<crate::handoff::Local>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

async fn bind(key: &'static str, addr: &str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind {
            key,
            addr: addr.to_string(),
            source,
        })
}

/// openraft's settings from ours.
pub fn raft_config(timing: &RaftTiming) -> Result<openraft::Config, NodeError> {
    let ms = |d: Duration| d.as_millis() as u64;
    let config = openraft::Config {
        cluster_name: "litefs-py".into(),
        heartbeat_interval: ms(timing.heartbeat_interval),
        // openraft 0.10 makes `election_timeout_max` the lease a follower grants its leader (no
        // vote for anyone else until it has passed since the last heartbeat; not configurable
        // on its own), and a follower campaigns only once that lease *plus* a random
        // `[min, max)` has passed. So failover takes max + [min, max) after the last heartbeat,
        // and RaftTiming::lease_bound relies on the lease being `max`.
        election_timeout_min: ms(timing.election_timeout_min),
        election_timeout_max: ms(timing.election_timeout_max),
        // No heartbeat suppression after replication traffic: the lease arithmetic
        // (RaftTiming::lease_bound) assumes a healthy leader's quorum ack is never older than
        // about one heartbeat interval.
        heartbeat_min_interval: Some(0),
        // A node that cannot win (cut off, stale log) must not bump the term and depose a
        // healthy leader when it comes back.
        enable_pre_vote: Some(true),
        // Every new leadership goes through an election, which is what makes the previous
        // leader's lease run out before a successor exists.
        enable_leader_restore: Some(false),
        // `enable_elect` stays on, for a witness too: when its log is the only complete one left
        // (a data node restarted and had not caught up when the leader died), nobody else can
        // win. It hands leadership on at once (tasks::witness_hands_off), never primary.
        ..Default::default()
    };
    Ok(config.validate()?)
}

impl RaftNode {
    /// Binds, opens storage, starts raft and every task of the node. `state` receives the
    /// cluster view as it changes.
    pub async fn start(
        settings: NodeSettings,
        faults: Faults,
        state: StateHandle,
    ) -> Result<Arc<RaftNode>, NodeError> {
        RaftNode::start_with(settings, faults, state, None).await
    }

    /// [`RaftNode::start`] for `litefs-py run`: the view also follows `litefs`.
    pub async fn start_with(
        settings: NodeSettings,
        faults: Faults,
        state: StateHandle,
        litefs: Option<LiteFsState>,
    ) -> Result<Arc<RaftNode>, NodeError> {
        let raft_listener = bind("node.raft-addr", &settings.raft_addr).await?;
        let http_listener = bind("node.http-addr", &settings.http_addr).await?;
        let dir = settings.data_dir.clone();
        let id = settings.id;
        let (log, sm) = tokio::task::spawn_blocking(move || open_storage(&dir, id))
            .await
            .map_err(|e| NodeError::Raft(format!("opening storage: {e}")))??;
        let config = Arc::new(raft_config(&settings.timing)?);
        let peers = Arc::new(Peers::default());
        let transport = Transport::new(
            id,
            settings.hostname.clone(),
            settings.witness,
            settings.secret.clone(),
            faults,
            peers.clone(),
            TimingStamp::new(&settings.timing, settings.lease_ttl),
        )?;
        let raft = Raft::new(
            id,
            config,
            NetworkFactory::new(transport.clone()),
            log,
            sm.clone(),
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let (stop, _) = watch::channel(false);
        let node = Arc::new(RaftNode {
            raft,
            settings,
            transport,
            peers,
            state_machine: sm,
            state,
            litefs,
            handoff: std::sync::OnceLock::new(),
            stop,
            tasks: Mutex::new(Vec::new()),
        });
        let rpc = super::server::router(node.clone());
        let api = super::api::router(node.clone());
        node.spawn(serve(raft_listener, rpc, node.stop.subscribe()));
        node.spawn(serve(http_listener, api, node.stop.subscribe()));
        node.spawn(super::view::publish(node.clone(), node.stop.subscribe()));
        node.spawn(super::tasks::reconcile_members(
            node.clone(),
            node.stop.subscribe(),
        ));
        if node.settings.witness {
            node.spawn(super::tasks::witness_hands_off(
                node.clone(),
                node.stop.subscribe(),
            ));
        }
        let n = node.clone();
        node.spawn(async move { n.bootstrap().await });
        tracing::info!(
            id = node.settings.id,
            raft = %node.settings.raft_addr,
            http = %node.settings.http_addr,
            witness = node.settings.witness,
            "raft node started"
        );
        Ok(node)
    }

    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.tasks.lock().push(tokio::spawn(fut));
    }

    /// Stops the servers and tasks, then raft. Bounded: a stuck task is abandoned.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(2), self.raft.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("raft did not stop within 2s");
        }
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        for t in tasks {
            if tokio::time::timeout(Duration::from_secs(1), t)
                .await
                .is_err()
            {
                tracing::debug!("a node task did not stop within 1s");
            }
        }
    }

    pub fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// First start of the bootstrap node: make every configured peer a voter. Every other node
    /// waits for the leader to reach it.
    async fn bootstrap(&self) {
        let initialized = match self.raft.is_initialized().await {
            Ok(i) => i,
            Err(e) => return tracing::error!("raft stopped before bootstrap: {e}"),
        };
        if initialized {
            return;
        }
        if !self.settings.bootstrap {
            tracing::info!(
                "not initialized and cluster.bootstrap is false: waiting for the leader to add this node"
            );
            return;
        }
        let s = &self.settings;
        let mut members: BTreeMap<NodeId, Node> = s
            .peers
            .iter()
            .map(|(id, addr)| (*id, Node::new(addr.clone())))
            .collect();
        // Our own hostname now; the others' are filled in once they answer (reconcile_members).
        members.insert(s.id, Node::announced(&s.raft_addr, &s.hostname, s.witness));
        let ids: Vec<NodeId> = members.keys().copied().collect();
        match self.raft.initialize(members).await {
            Ok(()) => tracing::info!(voters = ?ids, "bootstrapped the cluster"),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                tracing::info!("already initialized; bootstrap skipped")
            }
            Err(e) => tracing::error!("bootstrap failed: {e}"),
        }
    }

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

async fn serve(listener: TcpListener, router: axum::Router, mut stop: watch::Receiver<bool>) {
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let result = axum::serve(listener, service)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!("http server stopped: {e}");
    }
}
