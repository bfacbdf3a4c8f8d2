//! The node: the one module that knows every layer (the "App" of openraft's examples). It
//! builds a node from litefs-py.yml with [`Node::builder`] — raft, the lease API its LiteFS
//! follows, the planned handoff, the view the FUSE shim serves — owns the HTTP routers of
//! `node.raft-addr` and `node.http-addr`, and maps domain errors to HTTP statuses ([`http`]).
//! See docs/architecture.md, "Layers and the dependency rule".
//!
//! A [`Node`] runs on a tokio runtime of its own, next to whatever the command runs on its own
//! threads (the FUSE session).

mod api;
mod http;
mod litefs_status;
mod rpc;
mod status;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use litefs_py_fuse::{ClusterView, Primary, StateHandle};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub(crate) use self::api::paths;
pub(crate) use self::litefs_status::MemberLiteFs;
pub(crate) use self::status::StatusReport;
use crate::config::{Config, LeaseToken};
use crate::handoff::{self, Handoff};
use crate::lease::raft_facts::NodeFacts;
use crate::lease::records::HolderRecord;
use crate::lease::{LEASE_KEY, LeaseError, LeaseParams, LeaseServer, LeaseService, server};
use crate::litefs::api::LiteFsApi;
use crate::litefs::state::LiteFsState;
use crate::litefs::stream::Primaryship;
use crate::raft::faults::Faults;
use crate::raft::{NodeError, NodeSettings, RaftNode};
use crate::role::{self, Identity, RunInputs};
use crate::task_set::TaskSet;

/// Whether the node serves the lease API (`lease.addr`) for its LiteFS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseApi {
    /// A witness: no LiteFS, no lease API.
    Off,
    /// Served if `lease.addr` can be bound; if the port is taken, an error is logged and the
    /// node runs without it (several `mount` nodes on one test host share the default port).
    BestEffort,
    /// Served, or the node does not start (`run`, which starts LiteFS against it).
    Required,
}

/// How to start a node: [`Node::builder`], then what differs from a data node under
/// `litefs-py mount`, then [`NodeBuilder::start`].
pub struct NodeBuilder<'a> {
    config: &'a Config,
    hostname: Option<String>,
    witness: bool,
    litefs: Option<LiteFsState>,
    lease_token: Option<LeaseToken>,
}

impl NodeBuilder<'_> {
    /// The lease API's token (`run`: a new one per run, which it gives its LiteFS). Without
    /// it, the one in `lease.token-file` (created if missing), for a LiteFS started by hand.
    pub fn lease_token(mut self, token: LeaseToken) -> Self {
        self.lease_token = Some(token);
        self
    }

    /// Overrides `node.hostname` (`mount --hostname`).
    pub fn hostname(mut self, hostname: Option<String>) -> Self {
        self.hostname = hostname;
        self
    }

    /// A witness: a raft voter only, no lease API, never primary.
    pub fn witness(mut self) -> Self {
        self.witness = true;
        self
    }

    /// The data node of `litefs-py run`: the lease API is required, a planned handoff can run
    /// here, and `.role` says `primary` only while the local LiteFS holds the lease (the lease
    /// API reports it into `litefs`; the supervisor's probe reports LiteFS's health there too).
    pub fn litefs(mut self, litefs: LiteFsState) -> Self {
        self.litefs = Some(litefs);
        self
    }

    /// What the started parts need, read from the config once: `lease.ttl` reaches the lease
    /// API, the timing check and the handoff through [`LeaseParams`] only.
    fn parts(self) -> anyhow::Result<Parts> {
        let config = self.config;
        let mut settings = NodeSettings::from_config(config, self.hostname, self.witness)?;
        let token = match (self.witness, self.lease_token) {
            (true, _) => None,
            (false, Some(t)) => Some(t),
            (false, None) => Some(LeaseToken::load_or_create(&config.lease_token_file())?),
        };
        let params = LeaseParams::new(config.lease.ttl, &config.raft);
        settings.lease_ttl = (!self.witness).then_some(params.ttl);
        let lease = match (self.witness, self.litefs.is_some()) {
            (true, _) => LeaseApi::Off,
            (false, false) => LeaseApi::BestEffort,
            (false, true) => LeaseApi::Required,
        };
        let run = match self.litefs {
            Some(state) => {
                let http =
                    crate::litefs::local_http_addr(&config.litefs.http_addr).ok_or_else(|| {
                        anyhow::anyhow!(
                            "litefs.http-addr {:?} is not host:port",
                            config.litefs.http_addr
                        )
                    })?;
                let api = LiteFsApi::new(config.mount.lower.clone(), http)?;
                Some(RunParts { state, api })
            }
            None => None,
        };
        Ok(Parts {
            settings,
            // The test fault layer, as `LITEFS_PY_TEST_FAULTS` says.
            faults: Faults::from_env(),
            lease: token
                .filter(|_| lease != LeaseApi::Off)
                .map(|token| LeaseParts {
                    params,
                    addr: config.lease.addr,
                    required: lease == LeaseApi::Required,
                    // What the generated litefs.yml tells LiteFS to advertise.
                    advertise_url: config.litefs_advertise_url(),
                    token,
                }),
            run,
        })
    }

    /// Starts the node on a runtime of its own. The view is published into
    /// [`Node::state`], which the FUSE shim serves.
    pub fn start(self) -> anyhow::Result<Node> {
        for warning in self.config.warnings() {
            tracing::warn!("{warning}");
        }
        let parts = self.parts()?;
        // Two workers: raft's core, replication and the servers are small and mostly waiting on
        // the network; the FUSE session has its own threads.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("litefs-py-raft")
            .enable_all()
            .build()?;
        let services = rt.block_on(Services::start(parts))?;
        Ok(Node { rt, services })
    }
}

struct LeaseParts {
    params: LeaseParams,
    addr: SocketAddr,
    required: bool,
    advertise_url: String,
    token: LeaseToken,
}

/// Under `litefs-py run`: the local LiteFS.
struct RunParts {
    state: LiteFsState,
    api: LiteFsApi,
}

struct Parts {
    settings: NodeSettings,
    faults: Faults,
    lease: Option<LeaseParts>,
    run: Option<RunParts>,
}

/// A running node and the runtime it runs on. Dropping it without [`Node::shutdown`] stops
/// the runtime abruptly (fine on the error paths that do it).
pub struct Node {
    rt: tokio::runtime::Runtime,
    services: Services,
}

impl Node {
    /// A data node as `litefs-py mount` runs it: the lease API served best effort.
    pub fn builder(config: &Config) -> NodeBuilder<'_> {
        NodeBuilder {
            config,
            hostname: None,
            witness: false,
            litefs: None,
            lease_token: None,
        }
    }

    /// What the virtual files say, as the view publisher keeps it.
    pub fn state(&self) -> &StateHandle {
        &self.services.state
    }

    /// The node's raft handle (the proxy reads and writes its records in raft's key/value map).
    pub(crate) fn raft(&self) -> Arc<RaftNode> {
        self.services.raft.clone()
    }

    /// What the LiteFS stream watch ([`crate::litefs::stream`]) reads on its thread: where the
    /// replicated holder record says the last primary's LiteFS is, and whether this node's view
    /// names that holder the primary now. It never blocks.
    pub fn primaryship(&self) -> impl Fn() -> Primaryship + Send + 'static {
        let sm = self.services.raft.state_machine.clone();
        let state = self.services.state.clone();
        move || {
            let snapshot = state.load();
            let view = snapshot.view();
            let record = sm.get(LEASE_KEY).and_then(|s| HolderRecord::parse(&s));
            // Under `run` the view names another node primary only once the holder record
            // says that node's LiteFS holds the lease.
            let holder_is_primary = matches!(view.primary, Primary::Other { .. })
                && record
                    .as_ref()
                    .is_some_and(|r| view.leader_id == Some(r.node_id));
            Primaryship {
                holder_url: record.as_ref().and_then(HolderRecord::advertise_url),
                holder_is_primary,
                this_node_primary: view.primary == Primary::ThisNode,
            }
        }
    }

    /// This node's raft id and the raft term it is in.
    pub fn raft_id_and_term(&self) -> (u64, u64) {
        let m = self.services.raft.metrics();
        (m.id, m.current_term)
    }

    /// A key of raft's key/value map, as this node's state machine has it.
    pub fn kv_get(&self, key: &str) -> Option<String> {
        self.services.raft.state_machine.get(key)
    }

    /// Sets a key of raft's key/value map; only the leader can (anywhere else: an error),
    /// within `timeout`, and only while still leader in `term` (checked before the write: a
    /// leader of a later term has its own idea).
    pub fn kv_set_as_leader(
        &self,
        term: u64,
        key: &str,
        value: String,
        timeout: Duration,
    ) -> Result<(), String> {
        let raft = &self.services.raft;
        let m = raft.metrics();
        if m.state != openraft::ServerState::Leader || m.current_term != term {
            return Err(format!(
                "this node is no longer the raft leader of term {term} (now term {})",
                m.current_term
            ));
        }
        let write = raft.raft.client_write(crate::raft::Request::Set {
            key: key.into(),
            value,
        });
        // The timer is made inside the runtime (it needs its reactor).
        match self
            .rt
            .block_on(async { tokio::time::timeout(timeout, write).await })
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("the raft write did not commit within {timeout:?}")),
        }
    }

    /// Why this node can no longer do its part, if so: raft stopped (openraft's fatal error) or
    /// the lease API's server or loop ended.
    pub fn failure(&self) -> Option<String> {
        self.services.failure()
    }

    /// Whether `.role` says `primary`: under `run`, this node leads and its LiteFS holds the
    /// lease.
    pub fn is_primary(&self) -> bool {
        self.services.state.load().view().role() == litefs_py_fuse::Role::Primary
    }

    /// Whether raft's membership has a data voter (not a witness) besides this node: without
    /// one there is no one to hand the primary to.
    pub fn has_other_data_voters(&self) -> bool {
        let raft = &self.services.raft;
        let me = raft.settings.id;
        let m = raft.metrics();
        m.membership_config
            .membership()
            .voter_ids()
            .any(|id| id != me && !raft.is_witness(id))
    }

    /// This node is stopping: no handoff hands it the primary from now on.
    pub fn set_stopping(&self) {
        self.services.handoff.set_stopping();
    }

    /// Starts the handoff of a primary that is stopping ([`Handoff::handoff_before_stop`]) on
    /// the node's runtime; its outcome (the handoff's message, or why it failed) arrives on the
    /// receiver. Not waited for here: the caller bounds the wait, and keeps handling signals and
    /// children meanwhile.
    pub fn start_stop_handoff(&self) -> std::sync::mpsc::Receiver<Result<String, String>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let h = self.services.handoff.clone();
        self.rt.spawn(async move {
            let outcome = h.handoff_before_stop().await;
            let _ = tx.send(outcome.map(|o| o.message).map_err(|e| e.to_string()));
        });
        rx
    }

    /// Stops the lease API, then raft and the servers, bounded in time.
    pub fn shutdown(self) {
        self.rt.block_on(self.services.shutdown());
        self.rt.shutdown_timeout(Duration::from_secs(1));
    }
}

/// The running parts, on whatever runtime started them (the node's own, or a test's).
struct Services {
    raft: Arc<RaftNode>,
    state: StateHandle,
    handoff: Arc<Handoff>,
    lease: Mutex<Option<LeaseServer>>,
    stop: watch::Sender<bool>,
    tasks: TaskSet,
}

/// How long a listen address whose host name does not resolve yet is retried: in Kubernetes a
/// pod's own DNS name (a headless Service's record) appears a few seconds after the pod starts.
const RESOLVE_WAIT: Duration = Duration::from_secs(30);

async fn bind(key: &'static str, addr: &str) -> Result<TcpListener, NodeError> {
    let deadline = tokio::time::Instant::now() + RESOLVE_WAIT;
    let mut said = false;
    loop {
        // Resolved here, not by `bind`, so that "no such host yet" is told from a port in use.
        let resolved = tokio::net::lookup_host(addr).await.map(|mut a| a.next());
        let source = match resolved {
            Ok(Some(sock)) => match TcpListener::bind(sock).await {
                Ok(l) => return Ok(l),
                Err(source) => source,
            },
            Ok(None) | Err(_) if tokio::time::Instant::now() < deadline => {
                if !said {
                    tracing::info!(
                        key,
                        addr,
                        "the host name does not resolve yet; retrying for up to 30 s"
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Ok(None) => std::io::Error::other("the host name resolves to no address"),
            Err(source) => source,
        };
        return Err(NodeError::Bind {
            key,
            addr: addr.to_string(),
            source,
        });
    }
}

impl Services {
    /// Binds both listeners and opens storage before raft starts (one clear error for a port in
    /// use or a damaged data file), then the lease API, then serves.
    async fn start(parts: Parts) -> anyhow::Result<Services> {
        let Parts {
            settings,
            faults,
            lease,
            run,
        } = parts;
        let state = StateHandle::new(initial_view(&settings));
        let tls = settings.tls.as_ref().map(|t| t.server.clone());
        let raft_listener = bind("node.raft-addr", &settings.raft_addr).await?;
        let http_listener = bind("node.http-addr", &settings.http_addr).await?;
        let raft = RaftNode::start(settings, faults).await?;
        let service = match lease {
            None => None,
            Some(l) => {
                let facts = NodeFacts::new(raft.clone(), run.as_ref().map(|r| r.api.clone()));
                let service = LeaseService::new(facts, l.params, l.advertise_url)
                    .with_litefs_state(run.as_ref().map(|r| r.state.clone()));
                match server::start_service(service, l.addr, &l.token).await {
                    Ok(started) => Some(started),
                    Err(e @ LeaseError::Bind { .. }) if !l.required => {
                        tracing::error!(
                            "{e}: the lease API is not served, so a LiteFS on this node cannot follow the cluster"
                        );
                        None
                    }
                    Err(e) => {
                        raft.shutdown().await;
                        return Err(e.into());
                    }
                }
            }
        };
        let (lease_server, service) = service.unzip();
        let local = match (&run, service) {
            (Some(r), Some(service)) => Some(handoff::Local::new(r.api.clone(), service)),
            _ => None,
        };
        let handoff = Arc::new(Handoff::new(raft.clone(), local));
        let (stop, _) = watch::channel(false);
        let services = Services {
            raft: raft.clone(),
            state: state.clone(),
            handoff: handoff.clone(),
            lease: Mutex::new(lease_server),
            stop,
            tasks: TaskSet::default(),
        };
        let rpc =
            crate::raft::server::router(raft.clone(), rpc::router(raft.clone(), handoff.clone()));
        let api = api::router(raft.clone(), state.clone(), handoff);
        services.spawn(http::serve(
            raft_listener,
            rpc,
            tls.clone(),
            "node.raft-addr",
            services.stop.subscribe(),
        ));
        services.spawn(http::serve(
            http_listener,
            api,
            tls,
            "node.http-addr",
            services.stop.subscribe(),
        ));
        let inputs = run.map(|r| {
            let sm = raft.state_machine.clone();
            RunInputs {
                litefs: r.state,
                holder: Box::new(move || {
                    let record = HolderRecord::parse(&sm.get(LEASE_KEY)?)?;
                    Some(record.holder())
                }),
            }
        });
        services.spawn(role::publish(
            raft,
            state,
            inputs,
            services.stop.subscribe(),
        ));
        Ok(services)
    }

    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(fut);
    }

    fn failure(&self) -> Option<String> {
        if let Err(e) = &self.raft.metrics().running_state {
            return Some(format!("raft stopped: {e}"));
        }
        if self.lease.lock().as_ref().is_some_and(LeaseServer::ended) {
            return Some("the lease API stopped".into());
        }
        None
    }

    /// The lease API first, then the servers and the publisher, raft, and their tasks
    /// (bounded: a stuck task is abandoned).
    async fn shutdown(&self) {
        let lease = self.lease.lock().take();
        if let Some(lease) = lease {
            lease.shutdown().await;
        }
        let _ = self.stop.send(true);
        self.raft.shutdown().await;
        self.tasks.join_within(Duration::from_secs(1), "node").await;
    }
}

/// What the virtual files say before raft has spoken: no primary known.
fn initial_view(settings: &NodeSettings) -> ClusterView {
    role::initial(&Identity {
        id: settings.id,
        hostname: settings.hostname.clone(),
        witness: settings.witness,
    })
}
