//! The daemon's raft side as the commands run it: a tokio runtime of its own with the raft node
//! and its HTTP servers, next to whatever the command runs on its own threads (the FUSE session).

use std::sync::Arc;
use std::time::Duration;

use litefs_py_fuse::StateHandle;

use crate::config::Config;
use crate::raft::faults::Faults;
use crate::raft::view::{Identity, initial};
use crate::raft::{NodeSettings, RaftNode};

/// A running raft node and the runtime it runs on. Dropping it without [`Daemon::shutdown`]
/// stops the runtime abruptly (fine on the error paths that do it).
pub struct Daemon {
    rt: tokio::runtime::Runtime,
    node: Arc<RaftNode>,
}

impl Daemon {
    /// Starts the node described by `config`. `hostname` overrides `node.hostname`. The view
    /// is published into the node's `state`, which the FUSE shim serves.
    pub fn start(
        config: &Config,
        hostname: Option<String>,
        witness: bool,
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
        let node = rt.block_on(RaftNode::start(settings, Faults::from_env(), state))?;
        Ok(Daemon { rt, node })
    }

    pub fn node(&self) -> &Arc<RaftNode> {
        &self.node
    }

    /// Stops raft and the servers, bounded in time.
    pub fn shutdown(self) {
        self.rt.block_on(self.node.shutdown());
        self.rt.shutdown_timeout(Duration::from_secs(1));
    }
}

/// What the virtual files say before raft has spoken: no primary known.
pub fn initial_view(settings: &NodeSettings) -> litefs_py_fuse::ClusterView {
    initial(&Identity {
        id: settings.id,
        hostname: settings.hostname.clone(),
        witness: settings.witness,
    })
}
