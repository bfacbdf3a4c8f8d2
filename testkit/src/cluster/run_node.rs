//! One `litefs-py run` node with the real LiteFS, in a directory of its own: its config,
//! `raft/`, `lower/` (LiteFS's mount), `mnt/` (the shim), `litefs-data/`, `app/` (the app's
//! records), `run.log` (every start appended).
//!
//! Every process is ours and only ever signalled by its PID: the `litefs-py run` (a child of
//! ours), and the LiteFS it started, whose PID comes from the run's log and is checked against
//! its command line (this node's generated litefs.yml) before every signal. On drop: SIGTERM
//! (bounded), SIGKILL of what is left, the mounts detached, the log's tail printed if the test
//! failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use super::{Options, create_dirs};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::litefs::{self, Info};
use crate::mount::{self, MountGuard};
use crate::ports::{Block, NodePorts};
use crate::process::{self, Proc};
use crate::wait;

/// The app a cluster's node runs: nothing but a long sleep (the tests use SQLite themselves).
pub const SLEEPING_APP: &str = "exec sleep 100000";

/// How long a node gets after SIGTERM on drop (LiteFS's and the app's grace included).
const DROP_GRACE: Duration = Duration::from_secs(20);

pub struct RunNode {
    pub id: u64,
    root: PathBuf,
    pub ports: NodePorts,
    /// The config it was written with.
    pub config: Config,
    opts: Options,
    /// Extra environment for `litefs-py run`.
    pub env: Vec<(String, String)>,
    proc: Option<Proc>,
    /// Filesystems the caller mounted inside this node's dir (a disk of its own under `raft/`),
    /// detached once the node is stopped, before its dir is removed.
    data_mounts: Vec<PathBuf>,
    /// After the process: what a killed node left mounted is detached on drop.
    _guards: [MountGuard; 2],
    /// Removed after everything stopped (a single node's own temp dir).
    _tmp: Option<tempfile::TempDir>,
}

impl RunNode {
    /// Node `id` of a cluster whose raft addresses are `peers`, in `root`, on `ports`;
    /// `secret`: the cluster's secret file. `edit` may change the config before it is written.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        opts: &Options,
        litefs: &Path,
        root: PathBuf,
        id: u64,
        ports: NodePorts,
        peers: BTreeMap<u64, String>,
        secret: Option<&Path>,
        edit: impl FnOnce(Config) -> Config,
    ) -> Result<RunNode> {
        create_dirs(&root, &["app", "lower", "mnt"])?;
        let root = root
            .canonicalize()
            .map_err(Error::io("resolving a node dir"))?;
        let config = Config::node(
            id,
            &opts.hostname(id),
            &ports.raft,
            &ports.http,
            &root.join("raft"),
        )
        .bootstrap(id == 1)
        .peers(peers)
        .secret_file(secret)
        .mount(&root.join("mnt"), &root.join("lower"))
        .data_path(opts.data_path.as_deref())
        .lease(&ports.lease, opts.lease_ttl.as_deref())
        .litefs(litefs, &root.join("litefs-data"), &ports.litefs)
        .run_grace("5s")
        .raft(opts.raft.clone());
        let config = edit(config);
        config.write(&root.join("litefs-py.yml"))?;
        Ok(RunNode {
            id,
            _guards: [
                MountGuard::new(&root.join("mnt")),
                MountGuard::new(&root.join("lower")),
            ],
            root,
            ports,
            config,
            opts: opts.clone(),
            env: Vec::new(),
            proc: None,
            data_mounts: Vec::new(),
            _tmp: None,
        })
    }

    /// A one-node cluster in a temp dir of its own, with `lease.ttl` pinned to 3 s (the tests'
    /// timings assume it) unless `edit` says otherwise.
    pub fn single(
        opts: &Options,
        litefs: &Path,
        edit: impl FnOnce(Config) -> Config,
    ) -> Result<RunNode> {
        let tmp = opts.temp_dir("litefs-py-run-")?;
        let block = Block::for_cluster().map_err(Error::io("reserving loopback ports"))?;
        let ports = block.node(1);
        let peers = [(1, ports.raft.clone())].into();
        let opts = Options {
            lease_ttl: Some(opts.lease_ttl.clone().unwrap_or_else(|| "3s".into())),
            ..opts.clone()
        };
        let mut node = RunNode::new(
            &opts,
            litefs,
            tmp.path().to_path_buf(),
            1,
            ports,
            peers,
            None,
            edit,
        )?;
        node._tmp = Some(tmp);
        Ok(node)
    }

    /// Says that the caller mounted a filesystem at `path` (inside this node's dir): it is
    /// detached when the node is dropped, after its processes stopped.
    pub fn data_mount(&mut self, path: &Path) {
        self.data_mounts.push(path.to_path_buf());
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The litefs.yml `run` generates: inside `cluster.data-dir` (this node's `raft/`).
    pub fn litefs_yml(&self) -> PathBuf {
        self.path("raft").join("litefs.yml")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("litefs-py.yml")
    }

    pub fn mnt(&self) -> PathBuf {
        self.path("mnt")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("run.log")).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        process::tail(&self.log(), lines)
    }

    /// Position of the first log line containing `needle`.
    #[track_caller]
    pub fn log_pos(&self, needle: &str) -> usize {
        let log = self.log();
        log.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{log}"))
    }

    /// `litefs-py run --config ... -- sh -c SCRIPT sh <app dir>`; returns at once.
    pub fn start(&mut self, script: &str) -> Result<()> {
        if self.pid().is_some() {
            return Err(Error::failed(format!(
                "node {} is already running",
                self.id
            )));
        }
        let mut cmd = self.opts.command();
        cmd.arg("run")
            .arg("--config")
            .arg(self.config_path())
            .args(["--", "sh", "-c", script, "sh"])
            .arg(self.path("app"))
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(net) = self.opts.nets.get(&self.id) {
            process::join_netns(&mut cmd, &net.netns)?;
        }
        let name = format!("litefs-py run node {}", self.id);
        let log = self.path("run.log");
        self.proc = Some(Proc::spawn(&name, cmd, &log, self.opts.spawn_options())?);
        Ok(())
    }

    /// Waits until its shim answers (LiteFS is mounted and serving by then).
    pub fn wait_started(&mut self, timeout: Duration) -> Result<()> {
        let (mnt, id) = (self.mnt(), self.id);
        wait::try_poll_until(
            timeout,
            Duration::from_millis(20),
            &format!("node {id}'s shim to answer"),
            || {
                if let Some(status) = self.exited() {
                    return Err(Error::failed(format!(
                        "node {id}'s litefs-py run exited during start-up ({status}):\n{}",
                        self.log_tail(40)
                    )));
                }
                Ok(
                    (mount::is_mounted(&mnt) && std::fs::read(mnt.join(".role")).is_ok())
                        .then_some(()),
                )
            },
        )
        .map_err(|e| e.with_log(|| self.log_tail(40)))
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.proc.as_mut()?.exited()
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let p = self.proc.as_mut();
        p.ok_or_else(|| Error::failed("never started"))?
            .wait_exit(timeout)
    }

    /// The PID of `litefs-py run` while it is ours and not reaped.
    pub fn pid(&mut self) -> Option<i32> {
        self.exited()
            .is_none()
            .then(|| self.proc.as_ref().map(|p| p.pid() as i32))?
    }

    /// kill -9 of `litefs-py run` without reaping it. What it started keeps running.
    pub fn signal_kill(&self) {
        if let Some(p) = &self.proc {
            p.kill();
        }
    }

    /// kill -9 of `litefs-py run` (by its PID), reaped. What it started keeps running.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill_and_reap();
        }
    }

    pub fn sigterm(&self) {
        if let Some(p) = &self.proc {
            p.terminate();
        }
    }

    /// Reaps a `litefs-py run` that was killed.
    fn reap(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(20));
        }
    }

    pub fn app_file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.path("app").join(name)).ok()
    }

    /// The app's PID, from the run's log, if that process still runs with this node's
    /// `LITEFS_DIR` (what `run` gives the app).
    pub fn app_pid(&self) -> Option<i32> {
        let pid = process::pid_in_log(&self.log(), "the app started")?;
        let entry = format!("LITEFS_DIR={}", self.mnt().display());
        process::environ_contains(pid, &entry).then_some(pid)
    }

    /// LiteFS's PID, from the run's log, if that process still runs LiteFS with our config.
    pub fn litefs_pid(&self) -> Option<i32> {
        litefs::pid_from_run_log(&self.log(), &self.litefs_yml())
    }

    /// The lease API token this run gave its LiteFS, read from LiteFS's environment
    /// (`/proc/<pid>/environ`: the run hands it to nobody else).
    pub fn lease_token(&self) -> Option<String> {
        let pid = self.litefs_pid()?;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        environ.split(|b| *b == 0).find_map(|kv| {
            let v = kv.strip_prefix(b"CONSUL_HTTP_TOKEN=")?;
            String::from_utf8(v.to_vec()).ok()
        })
    }

    /// What this node's LiteFS says on `/info`.
    pub fn info(&self) -> Option<Info> {
        litefs::info(&self.ports.litefs)
    }

    pub fn role(&self) -> Option<String> {
        super::role(&self.mnt())
    }

    pub fn primary_file(&self) -> std::io::Result<Option<String>> {
        super::primary_file(&self.mnt())
    }

    /// kill -9 of LiteFS and of `litefs-py run`: the caller reaps with [`Self::reap_killed`].
    pub(super) fn signal_kill_all(&self) -> Result<()> {
        let litefs = self
            .litefs_pid()
            .ok_or_else(|| Error::failed(format!("node {}: no LiteFS process of ours", self.id)))?;
        self.signal_kill();
        // SAFETY: the LiteFS this node's run started (its command line names our litefs.yml,
        // read just now by `litefs_pid`).
        unsafe { libc::kill(litefs, libc::SIGKILL) };
        Ok(())
    }

    /// After a kill -9 of both: reaps the run, waits for the shim's watchdog to unmount `mnt/`
    /// and for LiteFS to die, then detaches LiteFS's dead mount at `lower/`.
    pub(super) fn reap_killed(&mut self) -> Result<()> {
        let litefs = self.litefs_pid();
        self.reap();
        let id = self.id;
        let unmounted = mount::wait_unmounted(&self.mnt(), Duration::from_secs(10));
        if let Some(pid) = litefs {
            wait::poll_until(
                Duration::from_secs(10),
                Duration::from_millis(10),
                "LiteFS to die",
                || (!process::is_live(pid)).then_some(()),
            )?;
        }
        mount::detach(&self.path("lower"))?;
        unmounted.map_err(|e| {
            mount::detach(&self.mnt()).ok();
            Error::failed(format!(
                "node {id}: the shim's watchdog did not unmount ({e}); detached"
            ))
        })
    }

    /// What is left of this node that should not be, once its run has exited: mounts, LiteFS,
    /// an API that still answers. Empty when nothing is.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for d in ["mnt", "lower"] {
            if mount::is_mounted(&self.path(d)) {
                left.push(format!("{d} is still mounted"));
            }
        }
        if let Some(pid) = self.litefs_pid() {
            left.push(format!("LiteFS still runs (pid {pid})"));
        }
        if crate::http::get(&self.ports.litefs, "/info").is_ok() {
            left.push("LiteFS's API still answers".into());
        }
        if crate::http::get(&self.ports.lease, "/litefs-py/lease").is_ok() {
            left.push("the lease API still answers".into());
        }
        left
    }

    /// Panics with what is left (see [`Self::leftovers`]) and the log.
    #[track_caller]
    pub fn assert_nothing_left(&self) {
        let left = self.leftovers();
        assert!(left.is_empty(), "{left:?}:\n{}", self.log());
    }
}

impl Drop for RunNode {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(DROP_GRACE);
        }
        if let Some(pid) = self.litefs_pid() {
            // SAFETY: LiteFS as our run started it (checked by its command line just now).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = wait::poll_until(
                Duration::from_secs(5),
                Duration::from_millis(10),
                "LiteFS",
                || (!process::is_live(pid)).then_some(()),
            );
        }
        if std::thread::panicking() {
            // The tail: with several nodes, whole logs would bury the failure.
            eprintln!(
                "---- litefs-py run log ({}), last 150 lines ----\n{}",
                self.root.display(),
                self.log_tail(150)
            );
        }
        for m in &self.data_mounts {
            if let Err(e) = mount::detach(m) {
                eprintln!("testkit: unmounting {}: {e}", m.display());
            }
        }
        // The mount guards go next (fields drop after this), then the temp dir.
    }
}
