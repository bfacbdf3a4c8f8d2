//! Stalls and crashes of a node, for the pause, freeze and crash-restart tests: the processes a
//! `litefs-py run` started (found by parent PID, never by name alone), SIGSTOP/SIGCONT and
//! group kills by PID, and a cgroup v1 freezer of the test's own that is thawed, emptied and
//! removed on drop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{IoContext, Result};
use crate::wait;

/// The cgroup v1 freezer hierarchy.
pub const FREEZER_ROOT: &str = "/sys/fs/cgroup/freezer";

/// A process: its PID and its name (`comm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    pub comm: String,
}

/// `(ppid, comm)` of `pid` from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(i32, String)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses: the last ')' ends it.
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let mut rest = s[close + 1..].split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((ppid, comm))
}

/// The children of `pid` (by parent PID, as `/proc` says now).
pub fn children(pid: i32) -> Vec<Process> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| {
            let (ppid, comm) = stat(p)?;
            (ppid == pid).then_some(Process { pid: p, comm })
        })
        .collect()
}

/// `pid` and all its descendants, parents first.
pub fn tree(pid: i32) -> Vec<Process> {
    let mut out = Vec::new();
    if let Some((_, comm)) = stat(pid) {
        out.push(Process { pid, comm });
    }
    let mut i = 0;
    while i < out.len() {
        let kids = children(out[i].pid);
        out.extend(kids);
        i += 1;
    }
    out
}

/// Sends `sig` to `pid` (a process of ours).
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: plain syscall; callers pass PIDs of processes their test started.
    unsafe { libc::kill(pid, sig) };
}

/// Sends `sig` to the whole process group `pgid` (`kill -SIG -PGID`).
pub fn signal_group(pgid: i32, sig: i32) {
    // SAFETY: as above, on a group led by a process of ours.
    unsafe { libc::kill(-pgid, sig) };
}

/// Whether the cgroup v1 freezer is available here (and writable: root).
pub fn freezer_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    Path::new(FREEZER_ROOT).join("cgroup.procs").exists() && unsafe { libc::geteuid() } == 0
}

/// A freezer cgroup of the test's own. Dropped: thawed, its processes moved back to the root
/// freezer cgroup, removed.
pub struct Freezer {
    dir: PathBuf,
}

impl Freezer {
    /// Creates `/sys/fs/cgroup/freezer/<name>-<our pid>`.
    pub fn create(name: &str) -> Result<Freezer> {
        let dir = Path::new(FREEZER_ROOT).join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).context(|| format!("creating {}", dir.display()))?;
        Ok(Freezer { dir })
    }

    /// Moves `pid` (the whole process) into this cgroup.
    pub fn add(&self, pid: i32) -> Result<()> {
        let f = self.dir.join("cgroup.procs");
        std::fs::write(&f, pid.to_string()).context(|| format!("adding {pid} to {}", f.display()))
    }

    fn set(&self, state: &str) -> Result<()> {
        let f = self.dir.join("freezer.state");
        std::fs::write(&f, state).context(|| format!("writing {state} to {}", f.display()))
    }

    fn state(&self) -> String {
        std::fs::read_to_string(self.dir.join("freezer.state"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Freezes every process in it; waits (up to 2 s) until the kernel says FROZEN, and
    /// returns what it says then. `FREEZING` stays when a task sleeps in a FUSE request whose
    /// server is frozen too (the v1 freezer cannot freeze it there): that task cannot go on
    /// either, so the group is stopped all the same.
    pub fn freeze(&self) -> Result<String> {
        self.set("FROZEN")?;
        let state = wait::poll_until(
            Duration::from_secs(2),
            Duration::from_millis(5),
            "the cgroup to freeze",
            || (self.state() == "FROZEN").then_some(()),
        );
        Ok(if state.is_ok() {
            "FROZEN".into()
        } else {
            self.state()
        })
    }

    pub fn thaw(&self) -> Result<()> {
        self.set("THAWED")
    }

    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let _ = self.thaw();
        let root = Path::new(FREEZER_ROOT).join("cgroup.procs");
        // Processes in it may still fork (a writer's next sqlite3) while they are moved out:
        // a few rounds, bounded.
        let mut last = None;
        for _ in 0..50 {
            for pid in self.pids() {
                let _ = std::fs::write(&root, pid.to_string());
            }
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(e) = last {
            eprintln!("testkit: removing {}: {e}", self.dir.display());
        }
    }
}

/// An error unless `pid` is gone within `timeout` (reaped by someone, or a zombie of ours).
pub fn wait_dead(pid: i32, timeout: Duration) -> Result<()> {
    wait::poll_until(
        timeout,
        Duration::from_millis(5),
        &format!("process {pid} to die"),
        || (!crate::process::is_live(pid)).then_some(()),
    )
}
