//! A cluster of `litefs-py run` nodes with the real LiteFS, on loopback: nodes 1..=n (node 1
//! bootstraps), each a [`RunNode`] in its own directory with its own ports (one [`Block`]), its
//! own lease API and LiteFS HTTP address, one secret file for all.
//!
//! On drop (the panic path) every node gets SIGTERM at once, then each node's guard stops what
//! is left and detaches its mounts; [`RunCluster::shutdown`] is the checked version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Options, RunNode, SLEEPING_APP, Sampler, remove_dir};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::litefs::Info;
use crate::ports::Block;
use crate::wait;

pub struct RunCluster {
    pub nodes: BTreeMap<u64, RunNode>,
    opts: Options,
    root: PathBuf,
    /// Removed last (after `Drop::drop` stopped every node); `None` once handled.
    dir: Option<tempfile::TempDir>,
}

impl RunCluster {
    /// Writes the configs of nodes 1..=n; starts nothing.
    pub fn create(opts: Options, litefs: &Path, n: u64) -> Result<RunCluster> {
        RunCluster::create_with(opts, litefs, n, |_, c| c)
    }

    /// [`Self::create`], with `edit(id, config)` applied to each node's config before it is
    /// written (e.g. a `proxy:` section).
    pub fn create_with(
        opts: Options,
        litefs: &Path,
        n: u64,
        edit: impl Fn(u64, Config) -> Config,
    ) -> Result<RunCluster> {
        let dir = opts.temp_dir("litefs-py-runs-")?;
        let root = dir
            .path()
            .canonicalize()
            .map_err(Error::io("resolving the temp dir"))?;
        let secret = root.join("secret");
        // Mode 0600: litefs-py refuses a secret file others can read.
        litefs_py::config::write_private(&secret, format!("{}\n", opts.secret).as_bytes())
            .map_err(Error::io("writing the secret"))?;
        let block = Block::for_cluster().map_err(Error::io("reserving loopback ports"))?;
        let ports = |id: u64| match opts.nets.get(&id) {
            Some(net) => block.node(id).on_ip(&net.ip),
            None => block.node(id),
        };
        let peers: BTreeMap<u64, String> = (1..=n).map(|id| (id, ports(id).raft)).collect();
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let node_root = root.join(format!("n{id}"));
            let node = RunNode::new(
                &opts,
                litefs,
                node_root,
                id,
                ports(id),
                peers.clone(),
                Some(&secret),
                |c| edit(id, c),
            )?;
            nodes.insert(id, node);
        }
        Ok(RunCluster {
            nodes,
            opts,
            root,
            dir: Some(dir),
        })
    }

    /// The tests' cluster: [`Self::create`], then every node started with an app that only
    /// sleeps; returns at once (see [`Self::wait_one_primary`]).
    pub fn start(opts: Options, litefs: &Path, n: u64) -> Result<RunCluster> {
        let mut c = RunCluster::create(opts, litefs, n)?;
        for node in c.nodes.values_mut() {
            node.start(SLEEPING_APP)?;
        }
        Ok(c)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn hostname(&self, id: u64) -> String {
        self.opts.hostname(id)
    }

    #[track_caller]
    pub fn node(&self, id: u64) -> &RunNode {
        &self.nodes[&id]
    }

    #[track_caller]
    pub fn node_mut(&mut self, id: u64) -> &mut RunNode {
        self.nodes.get_mut(&id).expect("a node of this cluster")
    }

    pub fn mnt(&self, id: u64) -> PathBuf {
        self.node(id).mnt()
    }

    pub fn db(&self, id: u64, name: &str) -> PathBuf {
        self.mnt(id).join(name)
    }

    /// (Re)starts node `id` with the sleeping app and waits until its shim answers.
    pub fn start_node(&mut self, id: u64) -> Result<()> {
        let timeout = self.opts.start_timeout;
        let node = self.node_mut(id);
        if crate::mount::is_mounted(&node.mnt()) {
            return Err(Error::failed(format!(
                "{} is still mounted",
                node.mnt().display()
            )));
        }
        node.start(SLEEPING_APP)?;
        node.wait_started(timeout)
    }

    pub fn info(&self, id: u64) -> Option<Info> {
        self.node(id).info()
    }

    pub fn role(&self, id: u64) -> Option<String> {
        self.node(id).role()
    }

    /// The shim's `.primary`: `Ok(None)` when absent (this node's LiteFS is primary).
    pub fn primary_file(&self, id: u64) -> std::io::Result<Option<String>> {
        self.node(id).primary_file()
    }

    /// Whether node `id`'s LiteFS says `isPrimary` on `/info`; `None`: no answer.
    pub fn litefs_is_primary(&self, id: u64) -> Option<bool> {
        crate::litefs::is_primary(&self.node(id).ports.litefs)
    }

    /// The primary's hostname node `id`'s LiteFS names on `/info` (itself included).
    pub fn litefs_primary(&self, id: u64) -> Option<String> {
        crate::litefs::primary_hostname(&self.node(id).ports.litefs)
    }

    /// An error with the node's log if its `litefs-py run` exited.
    pub fn assert_running(&mut self, ids: &[u64]) -> Result<()> {
        for id in ids {
            if let Some(status) = self.node_mut(*id).exited() {
                return Err(Error::failed(format!(
                    "node {id}'s litefs-py run exited with {status}"
                )));
            }
        }
        Ok(())
    }

    /// Whether node `id`'s shim and its LiteFS say the same: on the primary `.primary` is
    /// absent and `/info` says `isPrimary`; elsewhere `.primary` names the primary `/info`
    /// names. `Ok(None)`: this one is primary; `Ok(Some(name))`: a replica of `name`; `Err`
    /// says how they differ.
    pub fn shim_agrees_with_litefs(&self, id: u64) -> Result<Option<String>, String> {
        let info = self.info(id).ok_or("LiteFS's /info does not answer")?;
        let file = self
            .primary_file(id)
            .map_err(|e| format!("reading .primary: {e}"))?;
        let role = self.role(id);
        match (info.is_primary, &file) {
            (true, None) if role.as_deref() == Some("primary") => Ok(None),
            (false, Some(f)) => {
                let named = f.trim_end();
                if named.is_empty() || info.primary_hostname() != Some(named) {
                    return Err(format!(".primary {f:?}, /info {info:?}, .role {role:?}"));
                }
                Ok(Some(named.to_string()))
            }
            _ => Err(format!(".primary {file:?}, /info {info:?}, .role {role:?}")),
        }
    }

    fn one_primary(&self, ids: &[u64]) -> Option<u64> {
        let mut primary = None;
        for id in ids {
            match self.shim_agrees_with_litefs(*id).ok()? {
                None if primary.is_none() => primary = Some(*id),
                None => return None,
                Some(_) => {}
            }
        }
        let primary = primary?;
        let name = self.hostname(primary);
        ids.iter()
            .filter(|id| **id != primary)
            .all(|id| {
                self.role(*id).as_deref() == Some("replica")
                    && self.shim_agrees_with_litefs(*id).ok().flatten().as_deref()
                        == Some(name.as_str())
            })
            .then_some(primary)
    }

    /// Waits until exactly one of `ids` is primary, by LiteFS (`/info`) and by the shim
    /// (`.role`, `.primary`), and every other one is a replica of it by both; returns it.
    pub fn wait_one_primary(&mut self, ids: &[u64], timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running(ids)?;
            if let Some(p) = self.one_primary(ids) {
                return Ok(p);
            }
            if Instant::now() > deadline {
                let views: Vec<String> = ids
                    .iter()
                    .map(|id| {
                        format!(
                            "{id}: .role {:?} .primary {:?} /info {:?}",
                            self.role(*id),
                            self.primary_file(*id),
                            self.info(*id)
                        )
                    })
                    .collect();
                return Err(Error::TimedOut {
                    what: format!("nodes {ids:?}: a single primary: {views:#?}"),
                    after: timeout,
                });
            }
            if wait::interrupted() {
                return Err(Error::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9 of node `id`'s `litefs-py run` and of its LiteFS, back to back, both by PID;
    /// returns the instant right after both signals. Reap with [`Self::reap`].
    pub fn signal_kill(&mut self, id: u64) -> Result<Instant> {
        self.node(id).signal_kill_all()?;
        Ok(Instant::now())
    }

    /// After [`Self::signal_kill`]: reaps the run, waits for the shim's watchdog to unmount and
    /// for LiteFS to die, detaches LiteFS's dead mount.
    pub fn reap(&mut self, id: u64) -> Result<()> {
        self.node_mut(id).reap_killed()
    }

    /// kill -9 of node `id` (its run and its LiteFS), and everything they leave cleaned up.
    pub fn kill9(&mut self, id: u64) -> Result<()> {
        self.signal_kill(id)?;
        self.reap(id)
    }

    /// Test fault layer on node `id`: cut off from `blocked` (both ways); elections stay on.
    pub fn set_blocked(&self, id: u64, blocked: &[u64]) -> Result<()> {
        self.set_faults(id, blocked, true)
    }

    /// Test fault layer on node `id`: cut off from `blocked`; `elect: false` keeps it from
    /// running for leader on its own (it still votes, and still takes a leadership transfer).
    pub fn set_faults(&self, id: u64, blocked: &[u64], elect: bool) -> Result<()> {
        super::set_faults(
            &self.node(id).ports.http,
            &self.opts.secret,
            id,
            blocked,
            elect,
        )
    }

    /// The `/info` double-primary sampler over every node.
    pub fn litefs_sampler(&self) -> Sampler {
        Sampler::litefs(
            self.nodes
                .values()
                .map(|n| (n.id, n.ports.litefs.clone()))
                .collect(),
        )
    }

    /// The `.role` double-primary sampler over every node.
    pub fn role_sampler(&self) -> Sampler {
        Sampler::roles(self.nodes.values().map(|n| (n.id, n.mnt())).collect())
    }

    /// `config check` of node 1: the effective `section:`.
    pub fn effective(&self, section: &str) -> Result<BTreeMap<String, String>> {
        super::effective_section(&self.opts.binary, &self.node(1).config_path(), section)
    }

    /// Stops every node (SIGTERM at once, then each waited for), detaches any mount left, and
    /// checks that nothing is mounted under the temp dir; then removes it.
    pub fn shutdown(mut self) -> Result<()> {
        for node in self.nodes.values() {
            node.sigterm();
        }
        let mut problems = Vec::new();
        for (id, mut node) in std::mem::take(&mut self.nodes) {
            if node.pid().is_some() && node.wait_exit(Duration::from_secs(20)).is_err() {
                problems.push(format!("node {id} ignored SIGTERM (killed)"));
            }
            for (what, d) in [("shim", "mnt"), ("LiteFS", "lower")] {
                match crate::mount::detach(&node.path(d)) {
                    Ok(false) => {}
                    Ok(true) => {
                        problems.push(format!("node {id} left its {what} mount (detached)"))
                    }
                    Err(e) => problems.push(format!("node {id}: {e}")),
                }
            }
        }
        remove_dir(self.dir.take(), &self.root, problems)
    }
}

impl Drop for RunCluster {
    fn drop(&mut self) {
        // SIGTERM to every node at once, so that their shutdowns overlap; each node's guard then
        // waits for its own (bounded) and kills and detaches what is left.
        for node in self.nodes.values() {
            node.sigterm();
        }
        self.nodes.clear();
        if let Err(e) = remove_dir(self.dir.take(), &self.root, Vec::new()) {
            eprintln!("testkit: {e}");
        }
    }
}
