//! A cluster of `litefs-py mount` (and `witness`) processes on loopback, each `mount` over its
//! own lower dir, raft data in its own dir, ports from one [`Block`].
//!
//! Every process is ours and signalled by its PID; a killed node's watchdog unmounts its
//! mountpoint (waited for, bounded), and a guard detaches whatever a node left. On drop (the
//! panic path) every node gets SIGTERM at once, the logs' tails are printed if the test failed,
//! and the temp dir is removed unless something is still mounted under it.
//! [`MountCluster::shutdown`] is the checked version (the benchmark's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use super::{Options, PrimaryView, create_dirs, primary_view, remove_dir};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::mount::{self, MountGuard};
use crate::ports::{Block, NodePorts};
use crate::process::{self, Proc};
use crate::wait;

/// How long a killed node's watchdog may take to unmount.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mount,
    Witness,
}

/// One node: what it runs, whether it bootstraps, the voters it knows (ids; the addresses come
/// from the ports), and its secret (`None`: the cluster's).
#[derive(Debug, Clone)]
pub struct Spec {
    pub id: u64,
    pub kind: Kind,
    pub bootstrap: bool,
    pub peers: Vec<u64>,
    pub secret: Option<String>,
}

impl Spec {
    /// A `mount` node; node 1 bootstraps.
    pub fn mount(id: u64, peers: &[u64]) -> Spec {
        Spec {
            id,
            kind: Kind::Mount,
            bootstrap: id == 1,
            peers: peers.to_vec(),
            secret: None,
        }
    }

    pub fn witness(id: u64, peers: &[u64]) -> Spec {
        Spec {
            kind: Kind::Witness,
            bootstrap: false,
            ..Spec::mount(id, peers)
        }
    }
}

/// One sweep over some nodes' shim files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// The primary they all agree on: exactly one says so itself, every other names it.
    pub agreed: Option<u64>,
    /// The nodes that said primary at once, when two or more did.
    pub double_primary: Option<Vec<u64>>,
}

/// A running node. Field order is drop order: the daemon is stopped first, then the guard
/// detaches what it left.
struct Running {
    proc: Proc,
    _mount: Option<MountGuard>,
}

struct Node {
    spec: Spec,
    ports: NodePorts,
    dir: PathBuf,
    mnt: PathBuf,
    config: Config,
    running: Option<Running>,
}

pub struct MountCluster {
    opts: Options,
    ports: Block,
    nodes: BTreeMap<u64, Node>,
    root: PathBuf,
    /// Last: removed after every node is stopped and unmounted (`None` once handled).
    dir: Option<tempfile::TempDir>,
}

impl MountCluster {
    pub fn new(opts: Options) -> Result<MountCluster> {
        let dir = opts.temp_dir("litefs-py-cluster-")?;
        let ports = Block::for_cluster().map_err(Error::io("reserving loopback ports"))?;
        Ok(MountCluster {
            opts,
            ports,
            nodes: BTreeMap::new(),
            root: dir.path().to_path_buf(),
            dir: Some(dir),
        })
    }

    /// `new`, then `add(Spec::mount(id, ids))` for every id in `ids`.
    pub fn of_mounts(opts: Options, ids: &[u64]) -> Result<MountCluster> {
        let mut c = MountCluster::new(opts)?;
        for id in ids {
            c.add(Spec::mount(*id, ids))?;
        }
        Ok(c)
    }

    pub fn hostname(&self, id: u64) -> String {
        self.opts.hostname(id)
    }

    /// Writes node `id`'s config, secret, lower dir and mountpoint.
    pub fn add(&mut self, spec: Spec) -> Result<()> {
        let id = spec.id;
        let dir = self.root.join(format!("n{id}"));
        create_dirs(&dir, &["lower", "mnt"])?;
        let mnt = dir
            .join("mnt")
            .canonicalize()
            .map_err(Error::io("resolving the mountpoint"))?;
        let secret = spec.secret.as_deref().unwrap_or(&self.opts.secret);
        let secret_file = dir.join("secret");
        // Mode 0600: litefs-py refuses a secret file others can read.
        litefs_py::config::write_private(&secret_file, format!("{secret}\n").as_bytes())
            .map_err(Error::io("writing the secret"))?;
        let ports = self.ports.node(id);
        let peers = spec
            .peers
            .iter()
            .map(|p| (*p, self.ports.node(*p).raft))
            .collect();
        let config = Config::node(
            id,
            &self.hostname(id),
            &ports.raft,
            &ports.http,
            &dir.join("raft"),
        )
        .bootstrap(spec.bootstrap)
        .peers(peers)
        .secret_file(Some(&secret_file))
        .mount(&mnt, &dir.join("lower"))
        .lease(&ports.lease, self.opts.lease_ttl.as_deref())
        .raft(self.opts.raft.clone());
        config.write(&dir.join("litefs-py.yml"))?;
        let node = Node {
            spec,
            ports,
            dir,
            mnt,
            config,
            running: None,
        };
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Sets `dotted` (e.g. `cluster.tls.ca-file`) in node `id`'s config and rewrites it; before
    /// the node starts.
    pub fn set_config(&mut self, id: u64, dotted: &str, value: &str) -> Result<()> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| Error::failed(format!("no node {id}")))?;
        node.config = node.config.clone().set(dotted, value);
        node.config.write(&node.dir.join("litefs-py.yml"))
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn mount_ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.spec.kind == Kind::Mount)
            .map(|n| n.spec.id)
            .collect()
    }

    pub fn ports(&self, id: u64) -> &NodePorts {
        &self.node(id).ports
    }

    /// The config node `id` was written with (to build a variant of it).
    pub fn config(&self, id: u64) -> &Config {
        &self.node(id).config
    }

    pub fn config_path(&self, id: u64) -> PathBuf {
        self.node(id).dir.join("litefs-py.yml")
    }

    pub fn mnt(&self, id: u64) -> PathBuf {
        self.node(id).mnt.clone()
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).dir.join("raft")
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.node(id).dir.join("log")
    }

    /// Node `id`'s log, every start of it.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        process::tail(&self.log(id), lines)
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).running.is_some()
    }

    /// Starts node `id` and waits until it serves (its mount is up, or its status answers).
    pub fn start(&mut self, id: u64) -> Result<()> {
        let opts = &self.opts;
        let log = self.root.join(format!("n{id}")).join("log");
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| Error::failed(format!("no node {id}")))?;
        if node.running.is_some() {
            return Err(Error::failed(format!("node {id} is already running")));
        }
        if mount::is_mounted(&node.mnt) {
            return Err(Error::failed(format!(
                "{} is still mounted",
                node.mnt.display()
            )));
        }
        let config = node.dir.join("litefs-py.yml");
        let mut cmd = opts.command();
        let guard = match node.spec.kind {
            Kind::Mount => {
                cmd.arg("mount").arg("--config").arg(&config).arg(&node.mnt);
                Some(MountGuard::new(&node.mnt))
            }
            Kind::Witness => {
                cmd.arg("witness").arg("--config").arg(&config);
                None
            }
        };
        let name = format!("litefs-py node {id}");
        let mut proc = Proc::spawn(&name, cmd, &log, opts.spawn_options())?;
        let (kind, mnt, http) = (node.spec.kind, node.mnt.clone(), node.ports.http.clone());
        let timeout = opts.start_timeout;
        wait::try_poll_until(
            timeout,
            Duration::from_millis(10),
            &format!("node {id} to start serving"),
            || {
                if let Some(status) = proc.exited() {
                    return Err(Error::failed(format!(
                        "node {id} exited with {status}:\n{}",
                        proc_log(&log)
                    )));
                }
                Ok(match kind {
                    Kind::Mount => mount::is_mounted(&mnt) && mnt.join(".role").exists(),
                    Kind::Witness => crate::http::get(&http, "/status").is_ok(),
                }
                .then_some(()))
            },
        )
        .map_err(|e| e.with_log(|| proc_log(&log)))?;
        node.running = Some(Running {
            proc,
            _mount: guard,
        });
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<()> {
        self.ids().into_iter().try_for_each(|id| self.start(id))
    }

    /// kill -9 of node `id`, by its PID; returns the instant right after the signal. The process
    /// stays unreaped (its PID ours) until [`Self::reap`].
    pub fn signal_kill(&mut self, id: u64) -> Result<Instant> {
        let r = self.node(id).running.as_ref();
        let r = r.ok_or_else(|| Error::failed(format!("node {id} is not running")))?;
        r.proc.kill();
        Ok(Instant::now())
    }

    /// After [`Self::signal_kill`]: reaps the process and waits until its watchdog has unmounted
    /// (so it can be started again). An error if the mount had to be detached by us (it is
    /// detached either way).
    pub fn reap(&mut self, id: u64) -> Result<()> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| Error::failed(format!("no node {id}")))?;
        let Some(mut r) = node.running.take() else {
            return Ok(());
        };
        r.proc.stop(STOP_TIMEOUT);
        if node.spec.kind == Kind::Witness {
            return Ok(());
        }
        let unmounted = mount::wait_unmounted(&node.mnt, UNMOUNT_TIMEOUT);
        drop(r); // the guard detaches what is left
        unmounted.map_err(|e| {
            Error::failed(format!(
                "node {id}: the watchdog did not unmount ({e}); detached"
            ))
        })
    }

    /// kill -9, then waits until its watchdog has unmounted.
    pub fn kill9(&mut self, id: u64) -> Result<()> {
        self.signal_kill(id)?;
        self.reap(id)
    }

    /// SIGTERM and a clean exit within 10 s.
    pub fn stop(&mut self, id: u64) -> Result<()> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| Error::failed(format!("no node {id}")))?;
        if let Some(mut r) = node.running.take()
            && r.proc.stop(STOP_TIMEOUT).killed
        {
            return Err(Error::failed(format!("node {id} ignored SIGTERM")));
        }
        Ok(())
    }

    pub fn role(&self, id: u64) -> Option<String> {
        super::role(&self.node(id).mnt)
    }

    /// `.primary`: `Ok(None)` when absent (this node is primary).
    pub fn primary_file(&self, id: u64) -> std::io::Result<Option<String>> {
        super::primary_file(&self.node(id).mnt)
    }

    pub fn primary_view(&self, id: u64, buf: &mut String) -> PrimaryView {
        primary_view(&self.node(id).mnt, buf)
    }

    /// One sweep over `ids`' shim files.
    pub fn sweep(&self, ids: &[u64], buf: &mut String) -> Sweep {
        let mut primaries = Vec::new();
        let mut named = Vec::new();
        let mut unsure = false;
        for id in ids {
            match self.primary_view(*id, buf) {
                PrimaryView::ThisNode => primaries.push(*id),
                PrimaryView::Other(h) => named.push(h),
                PrimaryView::Unknown | PrimaryView::Unreadable(_) => unsure = true,
            }
        }
        let agreed = match primaries[..] {
            [p] if !unsure && named.iter().all(|h| *h == self.hostname(p)) => Some(p),
            _ => None,
        };
        Sweep {
            agreed,
            double_primary: (primaries.len() > 1).then_some(primaries),
        }
    }

    /// The leader if the files of `ids` agree on it.
    pub fn agreement(&self, ids: &[u64]) -> Option<u64> {
        self.sweep(ids, &mut String::new()).agreed
    }

    /// Every node's view, for error messages.
    pub fn describe(&self, ids: &[u64]) -> String {
        let mut buf = String::new();
        let views: Vec<String> = ids
            .iter()
            .map(|id| format!("node {id}: {:?}", self.primary_view(*id, &mut buf)))
            .collect();
        views.join(", ")
    }

    pub fn wait_agreement(&self, ids: &[u64], timeout: Duration) -> Result<u64> {
        wait::try_poll_until(
            timeout,
            Duration::from_millis(10),
            &format!("nodes {ids:?} to agree on a primary"),
            || Ok(self.agreement(ids)),
        )
        .map_err(|e| e.with_log(|| self.describe(ids)))
    }

    /// `GET /status` of node `id`.
    pub fn status(&self, id: u64) -> Option<serde_json::Value> {
        super::status(&self.node(id).ports.http)
    }

    /// Test fault layer: drop raft RPCs between `id` and `blocked`, both ways.
    pub fn set_blocked(&self, id: u64, blocked: &[u64]) -> Result<()> {
        super::set_faults(
            &self.node(id).ports.http,
            &self.opts.secret,
            id,
            blocked,
            true,
        )
    }

    /// Runs `litefs-py ARGS` to completion (bounded: 90 s).
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        self.cli_within(args, Duration::from_secs(90))
    }

    /// Runs `litefs-py ARGS` (no test fault layer, no log level set), killing it if it outlives
    /// `timeout`.
    pub fn cli_within(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut cmd = self.opts.command();
        cmd.args(args)
            .env_remove("LITEFS_PY_TEST_FAULTS")
            .env_remove("LITEFS_PY_LOG");
        process::output_within(cmd, timeout)
    }

    /// `config check` of node 1: the effective `section:`.
    pub fn effective(&self, section: &str) -> Result<BTreeMap<String, String>> {
        super::effective_section(&self.opts.binary, &self.config_path(1), section)
    }

    /// Stops every node (SIGTERM, then SIGKILL), detaches any mount left, and checks that
    /// nothing is mounted under the temp dir; then removes it.
    pub fn shutdown(mut self) -> Result<()> {
        let mut problems = Vec::new();
        for (id, node) in &mut self.nodes {
            let Some(mut r) = node.running.take() else {
                continue;
            };
            if r.proc.stop(STOP_TIMEOUT).killed {
                problems.push(format!("node {id} ignored SIGTERM (killed)"));
            }
            if let Some(g) = &r._mount {
                match g.ensure_unmounted() {
                    Ok(false) => {}
                    Ok(true) => problems.push(format!("node {id} left its mount (detached)")),
                    Err(e) => problems.push(format!("node {id}: {e}")),
                }
            }
        }
        remove_dir(self.dir.take(), &self.root, problems)
    }
}

fn proc_log(log: &Path) -> String {
    process::tail(&std::fs::read_to_string(log).unwrap_or_default(), 40)
}

impl Drop for MountCluster {
    fn drop(&mut self) {
        // SIGTERM to every node at once so that their shutdowns overlap; each guard then waits
        // for its own (bounded), kills, and detaches what is left.
        for node in self.nodes.values() {
            if let Some(r) = &node.running {
                r.proc.terminate();
            }
        }
        for node in self.nodes.values_mut() {
            node.running.take();
        }
        if std::thread::panicking() {
            for id in self.ids() {
                eprintln!(
                    "---- node {id} log (last 40 lines) ----\n{}",
                    self.log_tail(id, 40)
                );
            }
        }
        if let Err(e) = remove_dir(self.dir.take(), &self.root, Vec::new()) {
            eprintln!("testkit: {e}");
        }
    }
}
