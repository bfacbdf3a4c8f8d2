//! The faults the nemesis injects, each on processes it started itself (by PID, never by name):
//! kill -9 of a node's whole `litefs-py run` process group, SIGSTOP of the daemon alone, a
//! whole-node freeze in a cgroup v1 freezer child of our own, planned handoffs, partitions
//! (netns.rs) and a slow raft disk (disk.rs). Guards undo what a fault left (SIGCONT, thaw,
//! cgroup removal, heal) even when the harness stops half-way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use litefs_py_testkit::process;

/// The fault kinds, in the table's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// kill -9 of the node's `run` process group (run, shim watchdog, app; LiteFS follows by
    /// its parent-death signal), then a plain restart.
    Kill,
    /// SIGSTOP of the node's `litefs-py run` process alone; LiteFS keeps running.
    StopDaemon,
    /// Every process of the node (run, LiteFS, app) frozen in a cgroup, thawed later.
    Freeze,
    /// `litefs-py handoff` through a live node.
    Handoff,
    /// The node cut off from the other nodes (both ways) in its network namespace, healed later.
    Partition,
    /// The node's raft disk throttled to a few operations a second, restored later.
    SlowDisk,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Kill,
        Kind::StopDaemon,
        Kind::Freeze,
        Kind::Handoff,
        Kind::Partition,
        Kind::SlowDisk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill -9 (run group)",
            Kind::StopDaemon => "SIGSTOP daemon",
            Kind::Freeze => "freeze node (cgroup)",
            Kind::Handoff => "planned handoff",
            Kind::Partition => "partition (netns)",
            Kind::SlowDisk => "slow raft disk",
        }
    }

    pub fn flag(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::StopDaemon => "stop",
            Kind::Freeze => "freeze",
            Kind::Handoff => "handoff",
            Kind::Partition => "partition",
            Kind::SlowDisk => "slowdisk",
        }
    }

    pub fn parse(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.flag() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Kind::ALL.iter().map(|k| k.flag()).collect();
                format!("unknown fault {s:?}: one of {}", all.join(", "))
            })
    }
}

/// `pid` and every live descendant of it, from /proc.
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut parent_of = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            // Field 4 of stat, after the command in parentheses (which may hold spaces).
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat"))
                && let Some((_, rest)) = stat.rsplit_once(')')
                && let Some(ppid) = rest.split_whitespace().nth(1)
                && let Ok(ppid) = ppid.parse::<i32>()
            {
                parent_of.insert(p, ppid);
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| **pp == p)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    tree
}

/// SIGSTOPped daemons, continued on drop.
#[derive(Default)]
pub struct Stopped {
    pids: Vec<i32>,
}

impl Stopped {
    pub fn stop(&mut self, pid: i32) {
        // SAFETY: `pid` is the unreaped `litefs-py run` child of ours the caller just read.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        self.pids.push(pid);
    }

    pub fn cont_all(&mut self) {
        for pid in self.pids.drain(..) {
            // SAFETY: as in `stop`; a SIGCONT to a process that died meanwhile is harmless
            // because it is our unreaped child until the cluster's guard reaps it.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.cont_all();
    }
}

/// A cgroup v1 freezer directory of our own (`/sys/fs/cgroup/freezer/litefs-nemesis-<pid>`),
/// with one child per frozen node; every process is moved back and the directories removed on
/// thaw and on drop.
pub struct Freezer {
    root: PathBuf,
    /// Node -> (its cgroup, the processes moved into it with the cgroup they came from).
    frozen: BTreeMap<u64, (PathBuf, Vec<(i32, PathBuf)>)>,
}

const FREEZER: &str = "/sys/fs/cgroup/freezer";

impl Freezer {
    /// `None` when the cgroup v1 freezer is not mounted (freezes are then left out).
    pub fn new() -> Result<Option<Freezer>> {
        if !Path::new(FREEZER).join("cgroup.procs").exists() {
            return Ok(None);
        }
        let root = Path::new(FREEZER).join(format!("litefs-nemesis-{}", std::process::id()));
        std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
        Ok(Some(Freezer {
            root,
            frozen: BTreeMap::new(),
        }))
    }

    fn cgroup_of(pid: i32) -> PathBuf {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let rel = text
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2).map(|p| (l, p)))
            .find(|(l, _)| l.split(':').nth(1) == Some("freezer"))
            .map(|(_, p)| p.trim_start_matches('/').to_string())
            .unwrap_or_default();
        Path::new(FREEZER).join(rel)
    }

    /// Freezes `pids` (a node's process tree) as node `id`. Returns whether the kernel said
    /// FROZEN within 5 s: a task in an uninterruptible wait (a FUSE request to a server that is
    /// being frozen too) keeps the cgroup FREEZING, which is a finding, not a harness error.
    pub fn freeze(&mut self, id: u64, pids: &[i32]) -> Result<bool> {
        let dir = self.root.join(format!("n{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut moved = Vec::new();
        for &pid in pids {
            let from = Freezer::cgroup_of(pid);
            if std::fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok() {
                moved.push((pid, from));
            }
        }
        self.frozen.insert(id, (dir.clone(), moved));
        std::fs::write(dir.join("freezer.state"), "FROZEN").context("writing FROZEN")?;
        for _ in 0..500 {
            let state = std::fs::read_to_string(dir.join("freezer.state")).unwrap_or_default();
            if state.trim() == "FROZEN" {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(false)
    }

    /// Thaws node `id`, moves its processes back and removes its cgroup.
    pub fn thaw(&mut self, id: u64) -> Result<()> {
        let Some((dir, moved)) = self.frozen.remove(&id) else {
            return Ok(());
        };
        std::fs::write(dir.join("freezer.state"), "THAWED").context("writing THAWED")?;
        for (pid, from) in moved {
            // A process that exited meanwhile is simply gone.
            let _ = std::fs::write(from.join("cgroup.procs"), pid.to_string());
        }
        empty_and_remove(&dir, Path::new(FREEZER))
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.frozen.keys().copied().collect();
        for id in ids {
            if let Err(e) = self.thaw(id) {
                eprintln!("nemesis: thawing node {id}: {e:#}");
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.root) {
            eprintln!("nemesis: removing {}: {e}", self.root.display());
        }
    }
}

/// Removes the cgroup `dir` of a hierarchy whose root is `root`, after moving to the root what
/// is still in it: processes the node forked after it was moved in (while thawing, a child of a
/// process moved in lands here). Retried a few times, since such a fork can race the move.
pub fn empty_and_remove(dir: &Path, root: &Path) -> Result<()> {
    let mut last = None;
    for _ in 0..50 {
        if let Ok(left) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in left.lines() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = std::fs::read_to_string(dir.join("tasks")).unwrap_or_default();
    Err(last.expect("tried")).with_context(|| {
        format!(
            "removing {} (tasks left: {})",
            dir.display(),
            left.split_whitespace().collect::<Vec<_>>().join(" ")
        )
    })
}

/// `litefs-py handoff --config <via's config>`, bounded: Ok(()) or what it said.
pub fn handoff(binary: &Path, config: &Path) -> Result<(), String> {
    let mut cmd = Command::new(binary);
    cmd.arg("handoff")
        .arg("--config")
        .arg(config)
        .env_remove("LITEFS_PY_SECRET");
    match process::output_within(cmd, Duration::from_secs(90)) {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(e.to_string()),
    }
}
