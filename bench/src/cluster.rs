//! A 3-node cluster of real `litefs-py mount --config` processes on loopback, for the failover
//! benchmark: each node over its own temp lower dir, one shared secret file, ports from a free
//! block. Every process is one of ours, stopped by its PID (SIGTERM, then SIGKILL) by its guard;
//! every mount is detached by its guard if its daemon left it; [`Cluster::shutdown`] checks
//! /proc/self/mountinfo that nothing is left under the temp dir, which is then removed.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::measure::check_stop;
use crate::mounts::{Child, MountGuard, finish_clean_up, wait_ready};
use crate::sys;

pub const NODES: [u64; 3] = [1, 2, 3];
/// How long a started daemon may take to mount.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a killed daemon's watchdog may take to unmount.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn hostname(id: u64) -> String {
    format!("bench-node-{id}")
}

/// Overrides for the `raft:` section; `None` leaves litefs-py's default.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    pub heartbeat_ms: Option<u64>,
    pub election_min_ms: Option<u64>,
    pub election_max_ms: Option<u64>,
}

impl Timing {
    fn yaml(&self) -> String {
        let keys = [
            ("heartbeat-interval", self.heartbeat_ms),
            ("election-timeout-min", self.election_min_ms),
            ("election-timeout-max", self.election_max_ms),
        ];
        let lines: String = keys
            .iter()
            .filter_map(|(k, v)| v.map(|ms| format!("  {k}: {ms}ms\n")))
            .collect();
        if lines.is_empty() {
            lines
        } else {
            format!("raft:\n{lines}")
        }
    }
}

/// What a node's `.primary` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryFile {
    /// Absent, and `.role` says `primary`: this node is the primary.
    ThisNode,
    /// Present and empty: no primary known here.
    Unknown,
    /// The primary's hostname (without the newline).
    Other(String),
    /// Unreadable, or absent without the mount saying `primary` (a mount not up yet).
    Unreadable(String),
}

fn read_small(path: &Path, buf: &mut String) -> std::io::Result<()> {
    buf.clear();
    std::fs::File::open(path)?.read_to_string(buf).map(|_| ())
}

/// A running daemon. Field order is drop order: the daemon is stopped first, then the guard
/// detaches whatever mount it left.
struct Running {
    child: Child,
    mount: MountGuard,
}

struct Node {
    dir: PathBuf,
    mnt: PathBuf,
    running: Option<Running>,
    starts: u32,
}

pub struct Cluster {
    binary: PathBuf,
    nodes: BTreeMap<u64, Node>,
    /// Last: removed after every node is stopped and unmounted (`None` once handled).
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
}

/// Each node's lease API at base + this + id: nodes on one host cannot share `lease.addr`.
const LEASE_OFFSET: u16 = 5;

/// 9 free loopback ports in a block of 20: raft at base+id, http at base+10+id, the lease API at
/// base+[`LEASE_OFFSET`]+id. Starts from a PID-dependent block so that two benchmarks at once
/// probe different blocks first.
fn free_ports() -> Result<u16> {
    let blocks: u16 = 800;
    let first = (std::process::id() % u32::from(blocks)) as u16;
    for i in 0..blocks {
        let base = 44000 + ((first + i) % blocks) * 20;
        let free = NODES
            .iter()
            .flat_map(|id| {
                let id = *id as u16;
                [base + id, base + 10 + id, base + LEASE_OFFSET + id]
            })
            .all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return Ok(base);
        }
    }
    bail!("no free block of loopback ports in 44000..60000")
}

fn secret() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Cluster {
    /// Writes every node's config, lower dir and mountpoint under a new temp dir in `parent`.
    pub fn create(binary: &Path, parent: &Path, timing: &Timing) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("litefs-py-failover-")
            .tempdir_in(parent)
            .with_context(|| format!("creating a temp dir in {}", parent.display()))?;
        let base = free_ports()?;
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, secret()? + "\n")?;
        let raft = |id: u64| format!("127.0.0.1:{}", base + id as u16);
        let peers: String = NODES
            .iter()
            .map(|p| format!("    {p}: {}\n", raft(*p)))
            .collect();
        let mut nodes = BTreeMap::new();
        for id in NODES {
            let nd = dir.path().join(format!("n{id}"));
            for sub in ["lower", "mnt", "raft"] {
                std::fs::create_dir_all(nd.join(sub))?;
            }
            let mnt = nd.join("mnt").canonicalize()?;
            let yaml = format!(
                "node:\n  id: {id}\n  hostname: {}\n  raft-addr: {}\n  http-addr: 127.0.0.1:{}\n\
                 cluster:\n  bootstrap: {}\n  peers:\n{peers}  secret-file: {}\n  data-dir: {}\n\
                 mount:\n  dir: {}\n  lower: {}\nlease:\n  addr: 127.0.0.1:{}\n{}",
                hostname(id),
                raft(id),
                base + 10 + id as u16,
                id == 1,
                secret_file.display(),
                nd.join("raft").display(),
                mnt.display(),
                nd.join("lower").display(),
                base + LEASE_OFFSET + id as u16,
                timing.yaml(),
            );
            std::fs::write(nd.join("litefs-py.yml"), yaml)?;
            let node = Node {
                dir: nd,
                mnt,
                running: None,
                starts: 0,
            };
            nodes.insert(id, node);
        }
        Ok(Cluster {
            binary: binary.to_path_buf(),
            nodes,
            root: dir.path().to_path_buf(),
            dir: Some(dir),
        })
    }

    pub fn config_path(&self, id: u64) -> PathBuf {
        self.nodes[&id].dir.join("litefs-py.yml")
    }

    /// The `raft:` section as litefs-py resolves it (`config check`), as key -> value.
    pub fn effective_timing(&self) -> Result<BTreeMap<String, String>> {
        let out = Command::new(&self.binary)
            .args(["config", "check", "--config"])
            .arg(self.config_path(1))
            .output()
            .context("running litefs-py config check")?;
        if !out.status.success() {
            bail!(
                "litefs-py config check: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .skip_while(|l| *l != "raft:")
            .skip(1)
            .take_while(|l| l.starts_with(' '))
            .filter_map(|l| l.trim().split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// Spawns node `id` (a fresh log file per start) and waits until its mount answers.
    pub fn start(&mut self, id: u64) -> Result<()> {
        let config = self.config_path(id);
        let node = self.nodes.get_mut(&id).context("no such node")?;
        if node.running.is_some() {
            bail!("node {id} is already running");
        }
        if sys::is_mounted(&node.mnt) {
            bail!("{} is still mounted", node.mnt.display());
        }
        node.starts += 1;
        let log = node.dir.join(format!("log.{}", node.starts));
        let mut cmd = Command::new(&self.binary);
        cmd.arg("mount")
            .arg("--config")
            .arg(&config)
            .arg(&node.mnt)
            .env_remove("LITEFS_PY_SECRET")
            .env_remove("LITEFS_PY_TEST_FAULTS");
        // The guard exists before the child does, so a mount made during a failed start goes too.
        let mount = MountGuard::new(&node.mnt);
        let mut child = Child::spawn(&format!("litefs-py node {id}"), cmd, &log)?;
        let mnt = node.mnt.clone();
        wait_ready(&mut child, START_TIMEOUT, || {
            sys::is_mounted(&mnt) && mnt.join(".role").exists()
        })?;
        node.running = Some(Running { child, mount });
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<()> {
        NODES.iter().try_for_each(|id| self.start(*id))
    }

    /// kill -9 of node `id`; returns the instant right after the signal was sent. The process
    /// stays unreaped until [`Self::reap`].
    pub fn kill9(&mut self, id: u64) -> Result<Instant> {
        let r = self.nodes[&id]
            .running
            .as_ref()
            .with_context(|| format!("node {id} is not running"))?;
        r.child.kill();
        Ok(Instant::now())
    }

    /// After [`Self::kill9`]: reaps the process and waits for its watchdog to unmount.
    /// Returns an error if the mount had to be detached by us (it is detached either way).
    pub fn reap(&mut self, id: u64) -> Result<()> {
        let node = self.nodes.get_mut(&id).context("no such node")?;
        let Some(mut r) = node.running.take() else {
            return Ok(());
        };
        r.child.stop(STOP_TIMEOUT);
        let deadline = Instant::now() + UNMOUNT_TIMEOUT;
        while sys::is_mounted(&node.mnt) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if r.mount.ensure_unmounted()? {
            bail!(
                "node {id}: its watchdog did not unmount {} within {UNMOUNT_TIMEOUT:?} (detached)",
                node.mnt.display()
            );
        }
        Ok(())
    }

    /// The last lines of node `id`'s current log.
    pub fn log_tail(&self, id: u64) -> String {
        self.nodes[&id]
            .running
            .as_ref()
            .map(|r| r.child.log_tail())
            .unwrap_or_default()
    }

    /// Reads `.primary` (and `.role` when it is absent) of node `id`.
    pub fn primary(&self, id: u64, buf: &mut String) -> PrimaryFile {
        let mnt = &self.nodes[&id].mnt;
        match read_small(&mnt.join(".primary"), buf) {
            Ok(()) if buf.is_empty() => PrimaryFile::Unknown,
            Ok(()) => PrimaryFile::Other(buf.trim_end_matches('\n').to_string()),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // A mountpoint whose mount is not (or no longer) up has no `.primary` either.
                match read_small(&mnt.join(".role"), buf) {
                    Ok(()) if buf == "primary\n" => PrimaryFile::ThisNode,
                    Ok(()) => PrimaryFile::Unreadable(format!(
                        "no .primary but .role says {:?}",
                        buf.trim_end()
                    )),
                    Err(e) => PrimaryFile::Unreadable(format!("no .primary; .role: {e}")),
                }
            }
            Err(e) => PrimaryFile::Unreadable(e.to_string()),
        }
    }

    /// One sweep over `ids`: the primary they all agree on (exactly one without `.primary`,
    /// every other naming it), and whether two or more said primary at once.
    pub fn sweep(&self, ids: &[u64], buf: &mut String) -> Sweep {
        let mut primaries = Vec::new();
        let mut named = Vec::new();
        let mut unsure = false;
        for id in ids {
            match self.primary(*id, buf) {
                PrimaryFile::ThisNode => primaries.push(*id),
                PrimaryFile::Other(h) => named.push(h),
                PrimaryFile::Unknown | PrimaryFile::Unreadable(_) => unsure = true,
            }
        }
        let agreed = match primaries[..] {
            [p] if !unsure && named.iter().all(|h| *h == hostname(p)) => Some(p),
            _ => None,
        };
        Sweep {
            agreed,
            double_primary: (primaries.len() > 1).then_some(primaries),
        }
    }

    /// Every view, for error messages.
    pub fn describe(&self, ids: &[u64]) -> String {
        let mut buf = String::new();
        ids.iter()
            .map(|id| format!("node {id}: {:?}", self.primary(*id, &mut buf)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Polls `ids` every `poll` until they agree on a primary, or `timeout` passes. Counts
    /// double-primary sweeps into `doubles`.
    pub fn wait_agreement(
        &self,
        ids: &[u64],
        timeout: Duration,
        poll: Duration,
        doubles: &mut Vec<String>,
    ) -> Result<(u64, Instant)> {
        let started = Instant::now();
        let mut buf = String::new();
        loop {
            let s = self.sweep(ids, &mut buf);
            let now = Instant::now();
            if let Some(p) = s.double_primary {
                doubles.push(format!("nodes {p:?} all said primary"));
            }
            if let Some(p) = s.agreed {
                return Ok((p, now));
            }
            if now.duration_since(started) > timeout {
                bail!(
                    "nodes {ids:?} did not agree on a primary within {timeout:?}: {}",
                    self.describe(ids)
                );
            }
            check_stop()?;
            std::thread::sleep(poll);
        }
    }

    /// Stops every node (SIGTERM, then SIGKILL), detaches any mount left, and checks
    /// /proc/self/mountinfo that nothing is mounted under the temp dir; then removes it.
    pub fn shutdown(mut self) -> Result<()> {
        let mut problems = Vec::new();
        for (id, node) in &mut self.nodes {
            let Some(mut r) = node.running.take() else {
                continue;
            };
            if let (_, true) = r.child.stop(STOP_TIMEOUT) {
                problems.push(format!("node {id} ignored SIGTERM (killed)"));
            }
            match r.mount.ensure_unmounted() {
                Ok(false) => {}
                Ok(true) => problems.push(format!("node {id} left its mount (detached)")),
                Err(e) => problems.push(format!("node {id}: {e:#}")),
            }
        }
        finish_clean_up(self.dir.take(), &self.root, problems)
    }
}

pub struct Sweep {
    pub agreed: Option<u64>,
    pub double_primary: Option<Vec<u64>>,
}

impl Drop for Cluster {
    /// The error and panic path: stop and unmount everything (the guards), then the temp dir
    /// goes. [`Cluster::shutdown`] is the checked version.
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            node.running.take();
        }
    }
}
