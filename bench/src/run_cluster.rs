//! A 3-node cluster of real `litefs-py run` processes on loopback, each starting its own real
//! LiteFS, for the LiteFS failover benchmark (`litefs-failover.rs`).
//!
//! Every process signalled is one of ours: the `litefs-py run` children (stopped by PID through
//! their [`Child`] guard), and the LiteFS each of them started, whose PID comes from the run's
//! log line and is checked against its command line (our generated litefs.yml) before it is
//! ever signalled. Mounts (the shim at `mnt/`, LiteFS at `lower/`) are detached by their guards
//! if a killed node left them; [`RunCluster::shutdown`] checks that nothing is left mounted
//! under the temp dir before removing it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::mounts::{Child, MountGuard, finish_clean_up, wait_ready};
use crate::sys;

pub const NODES: [u64; 3] = [1, 2, 3];
/// `litefs-py run` waits up to 30 s for LiteFS; the shim is mounted right after.
const START_TIMEOUT: Duration = Duration::from_secs(40);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Connect and read timeout of one call to LiteFS's HTTP API.
const HTTP_TIMEOUT: Duration = Duration::from_millis(500);

pub fn hostname(id: u64) -> String {
    format!("node-{id}")
}

/// A running node. Field order is drop order: the run is stopped first (it stops its LiteFS),
/// then the guards detach what a killed node left.
struct Running {
    child: Child,
    shim: MountGuard,
    lower: MountGuard,
}

struct Node {
    dir: PathBuf,
    litefs_http: String,
    running: Option<Running>,
    starts: u32,
}

pub struct RunCluster {
    binary: PathBuf,
    nodes: BTreeMap<u64, Node>,
    /// Removed after every node is stopped and unmounted (`None` once handled).
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
}

/// A loopback port free right now and not handed out before by this process: the listener is
/// dropped at once and nodes bind later, so the kernel could offer one port twice in a cluster.
fn free_port() -> Result<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return Ok(port);
        }
    }
}

fn secret() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `GET path` on `addr` with HTTP/1.0 (the server closes after the answer): the body, or `None`
/// if it did not answer 200 in time.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let sock = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sock, HTTP_TIMEOUT).ok()?;
    s.set_read_timeout(Some(HTTP_TIMEOUT)).ok()?;
    s.set_write_timeout(Some(HTTP_TIMEOUT)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.take(256 * 1024).read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}

impl RunCluster {
    /// Writes every node's config under a new temp dir in `parent`. `lease_ttl` overrides
    /// `lease.ttl` (Go/humantime syntax, e.g. `10s`).
    pub fn create(
        binary: &Path,
        litefs: &Path,
        parent: &Path,
        lease_ttl: Option<&str>,
    ) -> Result<RunCluster> {
        let dir = tempfile::Builder::new()
            .prefix("litefs-py-lfailover-")
            .tempdir_in(parent)
            .with_context(|| format!("creating a temp dir in {}", parent.display()))?;
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, secret()? + "\n")?;
        let mut raft = BTreeMap::new();
        for id in NODES {
            raft.insert(id, format!("127.0.0.1:{}", free_port()?));
        }
        let peers: String = raft
            .iter()
            .map(|(id, addr)| format!("    {id}: {addr}\n"))
            .collect();
        let ttl = lease_ttl.map_or(String::new(), |t| format!("  ttl: {t}\n"));
        let mut nodes = BTreeMap::new();
        for id in NODES {
            let nd = dir.path().join(format!("n{id}"));
            for sub in ["lower", "mnt", "raft", "litefs-data"] {
                std::fs::create_dir_all(nd.join(sub))?;
            }
            let nd = nd.canonicalize()?;
            let d = nd.display();
            let litefs_http = format!("127.0.0.1:{}", free_port()?);
            let yaml = format!(
                "node:\n  id: {id}\n  hostname: {host}\n  raft-addr: {raft}\n  http-addr: 127.0.0.1:{http}\n\
                 cluster:\n  bootstrap: {bootstrap}\n  peers:\n{peers}  secret-file: {secret}\n  data-dir: {d}/raft\n\
                 mount:\n  dir: {d}/mnt\n  lower: {d}/lower\n\
                 lease:\n  addr: 127.0.0.1:{lease}\n{ttl}\
                 litefs:\n  binary: {bin}\n  data-dir: {d}/litefs-data\n  http-addr: {litefs_http}\n  \
                 advertise-url: http://{litefs_http}\n\
                 run:\n  grace: 5s\n",
                host = hostname(id),
                raft = raft[&id],
                http = free_port()?,
                bootstrap = id == 1,
                secret = secret_file.display(),
                lease = free_port()?,
                bin = litefs.display(),
            );
            std::fs::write(nd.join("litefs-py.yml"), yaml)?;
            nodes.insert(
                id,
                Node {
                    dir: nd,
                    litefs_http,
                    running: None,
                    starts: 0,
                },
            );
        }
        Ok(RunCluster {
            binary: binary.to_path_buf(),
            nodes,
            root: dir.path().to_path_buf(),
            dir: Some(dir),
        })
    }

    pub fn config_path(&self, id: u64) -> PathBuf {
        self.nodes[&id].dir.join("litefs-py.yml")
    }

    /// The shim's mount of node `id`: where the app (and the benchmark) reads and writes.
    pub fn mnt(&self, id: u64) -> PathBuf {
        self.nodes[&id].dir.join("mnt")
    }

    /// `litefs-py config check` of node 1: the effective `lease:` section, as key -> value.
    pub fn effective(&self, section: &str) -> Result<BTreeMap<String, String>> {
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
        let header = format!("{section}:");
        Ok(text
            .lines()
            .skip_while(|l| *l != header)
            .skip(1)
            .take_while(|l| l.starts_with(' '))
            .filter_map(|l| l.trim().split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// Spawns node `id` (`litefs-py run ... -- sleep infinity`, a fresh log per start) and
    /// waits until its shim answers (LiteFS is mounted and serving by then).
    pub fn start(&mut self, id: u64) -> Result<()> {
        let config = self.config_path(id);
        let node = self.nodes.get_mut(&id).context("no such node")?;
        if node.running.is_some() {
            bail!("node {id} is already running");
        }
        let (mnt, lower) = (node.dir.join("mnt"), node.dir.join("lower"));
        for m in [&mnt, &lower] {
            if sys::is_mounted(m) {
                bail!("{} is still mounted", m.display());
            }
        }
        node.starts += 1;
        let log = node.dir.join(format!("log.{}", node.starts));
        let mut cmd = Command::new(&self.binary);
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--", "sleep", "infinity"])
            .env_remove("LITEFS_PY_SECRET")
            .env_remove("LITEFS_PY_TEST_FAULTS")
            .env("LITEFS_PY_LOG", "info");
        // The guards exist before the child does, so mounts made during a failed start go too.
        let shim = MountGuard::new(&mnt);
        let lower_guard = MountGuard::new(&lower);
        let mut child = Child::spawn(&format!("litefs-py run node {id}"), cmd, &log)?;
        let role = mnt.join(".role");
        wait_ready(&mut child, START_TIMEOUT, || {
            sys::is_mounted(&mnt) && std::fs::read(&role).is_ok()
        })?;
        node.running = Some(Running {
            child,
            shim,
            lower: lower_guard,
        });
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<()> {
        NODES.iter().try_for_each(|id| self.start(*id))
    }

    /// The PID of the LiteFS that node `id`'s current run started, from the run's log line,
    /// if that process still runs LiteFS with this node's generated config.
    pub fn litefs_pid(&self, id: u64) -> Option<i32> {
        let node = &self.nodes[&id];
        let log = std::fs::read_to_string(node.dir.join(format!("log.{}", node.starts))).ok()?;
        let line = log.lines().rev().find(|l| l.contains("LiteFS started"))?;
        let pid: i32 = line
            .split("pid=")
            .nth(1)?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = node.dir.join("litefs.yml");
        String::from_utf8_lossy(&cmdline)
            .contains(ours.to_str()?)
            .then_some(pid)
    }

    /// kill -9 of node `id`'s `litefs-py run` and of its LiteFS, back to back; returns the
    /// instant right after both signals were sent. The run stays unreaped until [`Self::reap`].
    pub fn kill9(&mut self, id: u64) -> Result<Instant> {
        let litefs = self
            .litefs_pid(id)
            .with_context(|| format!("node {id}: no LiteFS process of ours found"))?;
        let r = self.nodes[&id]
            .running
            .as_ref()
            .with_context(|| format!("node {id} is not running"))?;
        r.child.kill();
        // SAFETY: checked above to be the LiteFS our run started, with our config.
        unsafe { libc::kill(litefs, libc::SIGKILL) };
        Ok(Instant::now())
    }

    /// After [`Self::kill9`]: reaps the run, waits for its LiteFS to be gone, detaches the
    /// mounts the two left (a killed FUSE daemon leaves its mount behind).
    pub fn reap(&mut self, id: u64) -> Result<()> {
        let litefs = self.litefs_pid(id);
        let node = self.nodes.get_mut(&id).context("no such node")?;
        let Some(mut r) = node.running.take() else {
            return Ok(());
        };
        r.child.stop(STOP_TIMEOUT);
        if let Some(pid) = litefs {
            // Orphaned by the run's death: init reaps it; wait until it is no longer LiteFS.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && is_live_process(pid) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        r.shim.ensure_unmounted()?;
        r.lower.ensure_unmounted()?;
        Ok(())
    }

    /// Whether node `id`'s LiteFS says `isPrimary: true` on `/info`; `None`: no answer.
    pub fn litefs_is_primary(&self, id: u64) -> Option<bool> {
        let body = http_get(&self.nodes[&id].litefs_http, "/info")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["isPrimary"].as_bool()
    }

    /// The primary's hostname node `id`'s LiteFS names on `/info` (itself included).
    pub fn litefs_primary(&self, id: u64) -> Option<String> {
        let body = http_get(&self.nodes[&id].litefs_http, "/info")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["primary"]["hostname"].as_str().map(str::to_string)
    }

    /// The last lines of node `id`'s current log.
    pub fn log_tail(&self, id: u64) -> String {
        self.nodes[&id]
            .running
            .as_ref()
            .map(|r| r.child.log_tail())
            .unwrap_or_default()
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
            for (what, m) in [("shim", &r.shim), ("LiteFS", &r.lower)] {
                match m.ensure_unmounted() {
                    Ok(false) => {}
                    Ok(true) => {
                        problems.push(format!("node {id} left its {what} mount (detached)"))
                    }
                    Err(e) => problems.push(format!("node {id}: {e:#}")),
                }
            }
        }
        finish_clean_up(self.dir.take(), &self.root, problems)
    }
}

/// Whether `pid` exists and is not a zombie.
fn is_live_process(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z'),
        Err(_) => false,
    }
}

impl Drop for RunCluster {
    /// The error and panic path: stop and unmount everything (the guards), then the temp dir
    /// goes. [`RunCluster::shutdown`] is the checked version.
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            node.running.take();
        }
    }
}
