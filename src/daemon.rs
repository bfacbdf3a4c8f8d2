//! The daemon's raft side as the commands run it: a tokio runtime of its own with the raft node,
//! its HTTP servers and (on a data node) the lease API LiteFS follows, next to whatever the
//! command runs on its own threads (the FUSE session).

use std::sync::Arc;
use std::time::Duration;

use litefs_py_fuse::StateHandle;

use crate::config::Config;
use crate::lease::{LeaseError, LeaseServer, raft_facts};
use crate::litefs_state::LiteFsState;
use crate::raft::faults::Faults;
use crate::raft::view::{Identity, initial};
use crate::raft::{NodeSettings, RaftNode};

/// Whether the node serves the lease API (`lease.addr`) for its LiteFS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseApi {
    /// A witness: no LiteFS, no lease API.
    Off,
    /// Served if `lease.addr` can be bound; if the port is taken, an error is logged and the
    /// node runs without it (several `mount` nodes on one test host share the default port).
    BestEffort,
    /// Served, or the daemon does not start (`run`, which starts LiteFS against it).
    Required,
}

/// A running raft node and the runtime it runs on. Dropping it without [`Daemon::shutdown`]
/// stops the runtime abruptly (fine on the error paths that do it).
pub struct Daemon {
    rt: tokio::runtime::Runtime,
    node: Arc<RaftNode>,
    lease: Option<LeaseServer>,
}

impl Daemon {
    /// Starts the node described by `config`. `hostname` overrides `node.hostname`. The view
    /// is published into the node's `state`, which the FUSE shim serves. A data node also
    /// serves the lease API, best effort (see [`LeaseApi`]).
    pub fn start(
        config: &Config,
        hostname: Option<String>,
        witness: bool,
    ) -> anyhow::Result<Daemon> {
        let lease = if witness {
            LeaseApi::Off
        } else {
            LeaseApi::BestEffort
        };
        Daemon::start_with(config, hostname, witness, lease)
    }

    /// [`Daemon::start`] with the lease API as `lease` says.
    pub fn start_with(
        config: &Config,
        hostname: Option<String>,
        witness: bool,
        lease: LeaseApi,
    ) -> anyhow::Result<Daemon> {
        Daemon::start_inner(config, hostname, witness, lease, None)
    }

    /// The data node of `litefs-py run`: the lease API is required, and `.role` says `primary`
    /// only while the local LiteFS holds the lease (the lease API reports it into `litefs`,
    /// the supervisor's probe reports LiteFS's health there too).
    pub fn start_for_run(config: &Config, litefs: LiteFsState) -> anyhow::Result<Daemon> {
        Daemon::start_inner(config, None, false, LeaseApi::Required, Some(litefs))
    }

    fn start_inner(
        config: &Config,
        hostname: Option<String>,
        witness: bool,
        lease: LeaseApi,
        litefs: Option<LiteFsState>,
    ) -> anyhow::Result<Daemon> {
        let settings = NodeSettings::from_config(config, hostname, witness)?;
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let state = StateHandle::new(initial_view(&settings));
        // Two workers: raft's core, replication and the servers are small and mostly waiting on
        // the network; the FUSE session has its own threads.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("litefs-py-raft")
            .enable_all()
            .build()?;
        let node = rt.block_on(RaftNode::start_with(
            settings,
            Faults::from_env(),
            state,
            litefs,
        ))?;
        let lease = match lease {
            LeaseApi::Off => None,
            mode => match rt.block_on(raft_facts::start_for_node(node.clone(), config)) {
                Ok((server, service)) => {
                    if node.litefs.is_some() {
                        install_handoff(&node, config, &service)?;
                    }
                    Some(server)
                }
                Err(e @ LeaseError::Bind { .. }) if mode == LeaseApi::BestEffort => {
                    tracing::error!(
                        "{e}: the lease API is not served, so a LiteFS on this node cannot follow the cluster"
                    );
                    None
                }
                Err(e) => {
                    rt.block_on(node.shutdown());
                    return Err(e.into());
                }
            },
        };
        Ok(Daemon { rt, node, lease })
    }

    pub fn node(&self) -> &Arc<RaftNode> {
        &self.node
    }

    /// Where the lease API listens, if it is served.
    pub fn lease_addr(&self) -> Option<std::net::SocketAddr> {
        self.lease.as_ref().map(|l| l.addr)
    }

    /// Why this node can no longer do its part, if so: raft stopped (openraft's fatal error) or
    /// the lease API's server or loop ended.
    pub fn failure(&self) -> Option<String> {
        if let Err(e) = &self.node.metrics().running_state {
            return Some(format!("raft stopped: {e}"));
        }
        if self.lease.as_ref().is_some_and(LeaseServer::ended) {
            return Some("the lease API stopped".into());
        }
        None
    }

    /// Stops the lease API, then raft and the servers, bounded in time.
    pub fn shutdown(self) {
        if let Some(lease) = self.lease {
            self.rt.block_on(lease.shutdown());
        }
        self.rt.block_on(self.node.shutdown());
        self.rt.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Under `run`: what a planned handoff needs of this node's LiteFS and lease API.
fn install_handoff(
    node: &Arc<RaftNode>,
    config: &Config,
    service: &Arc<crate::lease::LeaseService<raft_facts::NodeFacts>>,
) -> anyhow::Result<()> {
    let http = crate::supervisor::litefs_http_addr(&config.litefs.http_addr).ok_or_else(|| {
        anyhow::anyhow!(
            "litefs.http-addr {:?} is not host:port",
            config.litefs.http_addr
        )
    })?;
    let local = crate::handoff::Local {
        litefs: crate::handoff::litefs_api::LiteFsApi::new(config.mount.lower.clone(), http)?,
        lease: Arc::downgrade(service),
        ttl: config.lease.ttl,
        busy: Default::default(),
    };
    let _ = node.handoff.set(Arc::new(local));
    Ok(())
}

/// What the virtual files say before raft has spoken: no primary known.
pub fn initial_view(settings: &NodeSettings) -> litefs_py_fuse::ClusterView {
    initial(&Identity {
        id: settings.id,
        hostname: settings.hostname.clone(),
        witness: settings.witness,
    })
}
