//! The faults the nemesis injects, each on processes it started itself (by PID, never by name):
//! kill -9 of a node's whole `litefs-py run` process group, SIGSTOP of the daemon alone, a
//! whole-node freeze (cgroup.rs), planned handoffs, partitions (netns.rs) and a slow raft disk
//! (disk.rs, cgroup.rs). Guards undo what a fault left (SIGCONT, thaw, cgroup removal, heal)
//! even when the harness stops half-way.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
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
