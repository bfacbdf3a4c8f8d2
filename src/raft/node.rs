//! One raft node: storage, openraft, the peer book and the background duties of a leader,
//! and bootstrap. Membership changes are in [`super::membership`]; raft RPC is served by
//! [`super::server`] on a listener the caller binds (the node layer binds both of its
//! listeners before calling [`RaftNode::start`], so that a port in use or a damaged data file
//! is one error naming it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::error::{InitializeError, RaftError};
use openraft::{RaftMetrics, ServerState};
use tokio::sync::watch;

use super::bootstrap::{Answer, Decision};
use super::faults::Faults;
use super::network::{CallError, Hello, NetworkFactory, Secret, Transport, paths};
use super::peers::Peers;
use super::timing_check::TimingStamp;
use super::{Node, NodeId, Raft, StateMachineStore, StoreError, TypeConfig, open_storage};
use crate::config::{Bootstrap, Config, ConfigError, RaftTiming};
use crate::poll::poll_until;
use crate::task_set::TaskSet;

/// How long a leadership transfer may take (one retry halfway).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(6);
const TRANSFER_POLL: Duration = Duration::from_millis(20);
/// How often a node that may create the cluster asks its peers again, and how long it waits
/// for each answer.
const BOOTSTRAP_RETRY: Duration = Duration::from_millis(500);
const BOOTSTRAP_ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// What a node needs from litefs-py.yml, plus the role the command gives it.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub id: NodeId,
    pub hostname: String,
    pub raft_addr: String,
    pub http_addr: String,
    pub bootstrap: Bootstrap,
    /// Voters at bootstrap: id -> raft address (this node included).
    pub peers: BTreeMap<NodeId, String>,
    pub secret: Option<Secret>,
    pub data_dir: PathBuf,
    pub timing: RaftTiming,
    /// A witness votes, is never primary (it hands on any leadership it wins) and has no LiteFS.
    pub witness: bool,
    /// `cluster.tls`, loaded: raft and admin traffic over mutual TLS.
    pub tls: Option<crate::config::Tls>,
    /// `lease.ttl` on a data node (compared across nodes, see `timing_check`); `None` on a
    /// witness. Not read from the config here: the node layer sets it from the lease API's
    /// parameters, so that the TTL reaches everyone one way.
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
        if let Some(h) = &hostname {
            crate::config::check_hostname("--hostname", h)?;
        }
        if witness && config.cluster.bootstrap == Bootstrap::This {
            return Err(ConfigError::Invalid {
                key: "cluster.bootstrap",
                message: "a witness cannot bootstrap the cluster (it hands leadership on and is never primary): set \
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
            tls: config.tls()?,
            // Set by the node builder, from the lease API's parameters (one route for lease.ttl).
            lease_ttl: None,
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

/// A leadership transfer that did not happen ([`RaftNode::transfer_leader`]).
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("raft: {0}")]
    Refused(String),
    #[error("{what} did not happen within {timeout:?}{detail}")]
    Timeout {
        what: String,
        timeout: Duration,
        detail: String,
    },
}

/// A running node. Shared (`Arc`) by its servers and tasks.
pub struct RaftNode {
    pub raft: Raft,
    pub settings: NodeSettings,
    /// Taken before openraft starts: every contact this process had with a leader is later,
    /// every contact an earlier process of this node had is earlier. openraft forgets its
    /// leader lease across a restart, so the lease rules count one from here
    /// ([`RaftNode::vote_lease_until`]).
    pub started: Instant,
    pub transport: Arc<Transport>,
    pub peers: Arc<Peers>,
    pub state_machine: StateMachineStore,
    stop: watch::Sender<bool>,
    tasks: TaskSet,
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
    /// Opens storage, starts raft and the leader's background duties. Raft RPC reaches it once
    /// the caller serves [`super::server::router`] on `node.raft-addr`.
    pub async fn start(settings: NodeSettings, faults: Faults) -> Result<Arc<RaftNode>, NodeError> {
        let started = Instant::now();
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
            settings.tls.as_ref().map(|t| t.client.clone()),
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
            started,
            transport,
            peers,
            state_machine: sm,
            stop,
            tasks: TaskSet::default(),
        });
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
            witness = node.settings.witness,
            "raft node started"
        );
        Ok(node)
    }

    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(fut);
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
        self.tasks
            .join_within(Duration::from_secs(1), "raft node")
            .await;
    }

    /// Until when this process must grant no vote, and not count itself as a leader's voter:
    /// `election-timeout-max` after it started. openraft grants no vote for that long after
    /// the last heartbeat it accepted (its leader lease), but it starts with the lease expired,
    /// so a node restarted right after acknowledging a leader could otherwise vote for a
    /// successor at once; the new-leader wait of the lease API relies on that vote coming at
    /// least `election-timeout-max` after the voter's last contact with the old leader
    /// (docs/architecture.md, "The lease invariant").
    pub fn vote_lease_until(&self) -> Instant {
        self.started + self.settings.timing.election_timeout_max
    }

    pub fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Asks openraft to hand leadership to `to` and waits until `to` leads a term later than
    /// `term` (asking once more halfway if this node still leads).
    pub async fn transfer_leader(&self, to: NodeId, term: u64) -> Result<(), TransferError> {
        let deadline = Instant::now() + TRANSFER_TIMEOUT;
        let mut retried = false;
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| TransferError::Refused(e.to_string()))?;
        let moved = poll_until(deadline, TRANSFER_POLL, || {
            let m = self.metrics();
            let left = deadline.saturating_duration_since(Instant::now());
            let retry = !retried && left < TRANSFER_TIMEOUT / 2 && m.state == ServerState::Leader;
            retried |= retry;
            async move {
                if m.current_leader == Some(to) && m.current_term > term {
                    return Ok(());
                }
                if retry {
                    let _ = self.raft.trigger().transfer_leader(to).await;
                }
                Err(m.current_leader)
            }
        })
        .await;
        moved.map_err(|leader| TransferError::Timeout {
            what: format!("raft leadership moving to node {to}"),
            timeout: TRANSFER_TIMEOUT,
            detail: format!(
                " (leader now: {})",
                leader.map_or("none".into(), |l| format!("node {l}"))
            ),
        })
    }

    /// First start: creates the cluster when this node may (see [`super::bootstrap`]), after
    /// asking every configured peer whether it already belongs to one. Every other node waits
    /// for the leader to reach it.
    async fn bootstrap(&self) {
        let s = &self.settings;
        let mut stop = self.stop.subscribe();
        let mut said = String::new();
        loop {
            match self.raft.is_initialized().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => return tracing::error!("raft stopped before bootstrap: {e}"),
            }
            if !s.bootstrap.is_enabled() {
                return tracing::info!(
                    "not initialized and cluster.bootstrap is false: waiting for the leader to add this node"
                );
            }
            let answers = self.ask_peers().await;
            match super::bootstrap::decide(s.id, s.witness, s.bootstrap, &answers) {
                Decision::Initialize => break,
                Decision::Join(why) => return tracing::info!("not initialized: {why}"),
                Decision::Wait(why) => {
                    // Peers start in any order: this is normal at first start, said once.
                    if why != said {
                        tracing::info!("not creating the cluster yet: {why}");
                        said = why;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(BOOTSTRAP_RETRY) => {}
                _ = stop.changed() => return,
            }
        }
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

    /// Every configured peer's `hello`, asked at once; no answer in time is [`Answer::Unknown`].
    async fn ask_peers(&self) -> BTreeMap<NodeId, Answer> {
        let asks = self
            .settings
            .peers
            .iter()
            .filter(|(id, _)| **id != self.settings.id)
            .map(|(id, addr)| async move {
                let hello = self
                    .transport
                    .call::<(), Hello>(*id, addr, paths::HELLO, None, BOOTSTRAP_ASK_TIMEOUT)
                    .await;
                let answer = match hello {
                    Ok(h) if h.id == *id => match h.initialized {
                        Some(true) => Answer::Initialized,
                        Some(false) => Answer::Uninitialized { witness: h.witness },
                        None => Answer::Unknown,
                    },
                    _ => Answer::Unknown,
                };
                (*id, answer)
            });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .collect()
    }
}
