//! The cgroups the nemesis freezes and throttles nodes in: a directory of its own
//! (`litefs-nemesis-<pid>`) with one child per node under fault, on cgroup v1 (the `freezer` and
//! `blkio` hierarchies) where they are mounted, else on cgroup v2 (`cgroup.freeze`, `io.max`).
//! A node's processes are moved in for the fault and back to where they were after it; the
//! directories are removed on thaw or restore and on drop, also when the harness fails.
//!
//! `LITEFS_NEMESIS_CGROUP2=<mount>` uses the v2 hierarchy at `<mount>` even where v1 is mounted
//! (a hybrid host's `/sys/fs/cgroup/unified`): how the v2 freezer is tried on a v1 machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Where a controller lives.
#[derive(Debug, Clone)]
enum Hierarchy {
    /// A v1 hierarchy mounted at the path, for the controller named.
    V1(PathBuf, &'static str),
    /// The v2 hierarchy mounted at the path.
    V2(PathBuf),
}

impl Hierarchy {
    /// `v1`: the v1 controller's name (`freezer`, `blkio`); `v2`: the v2 controller needed
    /// (`None`: a core feature such as `cgroup.freeze`).
    fn detect(v1: &'static str, v2: Option<&str>) -> Result<Hierarchy> {
        let forced = std::env::var_os("LITEFS_NEMESIS_CGROUP2").map(PathBuf::from);
        let v1_dir = Path::new("/sys/fs/cgroup").join(v1);
        let h = match forced {
            Some(m) => Hierarchy::V2(m),
            None if v1_dir.join("cgroup.procs").exists() => return Ok(Hierarchy::V1(v1_dir, v1)),
            None => Hierarchy::V2(PathBuf::from("/sys/fs/cgroup")),
        };
        let Hierarchy::V2(root) = &h else {
            unreachable!()
        };
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
            .with_context(|| format!("no cgroup v1 {v1} and no cgroup v2 at {}", root.display()))?;
        if let Some(c) = v2 {
            let enabled =
                std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
            if !controllers.split_whitespace().any(|x| x == c)
                || !enabled.split_whitespace().any(|x| x == c)
            {
                bail!(
                    "cgroup v2 at {}: the {c} controller is not enabled for children \
                     (cgroup.subtree_control), and there is no cgroup v1 {v1}",
                    root.display()
                );
            }
        }
        Ok(h)
    }

    fn root(&self) -> &Path {
        match self {
            Hierarchy::V1(p, _) | Hierarchy::V2(p) => p,
        }
    }

    /// The cgroup `pid` is in, in this hierarchy.
    fn cgroup_of(&self, pid: i32) -> PathBuf {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let rel = text
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (num, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
                let ours = match self {
                    Hierarchy::V1(_, name) => ctrl.split(',').any(|c| c == *name),
                    Hierarchy::V2(_) => num == "0" && ctrl.is_empty(),
                };
                ours.then_some(path)
            })
            .next()
            .unwrap_or("/")
            .trim_start_matches('/')
            .to_string();
        self.root().join(rel)
    }
}

/// One node's cgroup, with the processes moved into it and where they came from.
struct Group {
    dir: PathBuf,
    moved: Vec<(i32, PathBuf)>,
}

/// Our directory in one hierarchy, and the nodes' groups in it.
struct Groups {
    hier: Hierarchy,
    root: PathBuf,
    groups: BTreeMap<u64, Group>,
}

impl Groups {
    fn new(hier: Hierarchy, v2_controller: Option<&str>) -> Result<Groups> {
        let root = hier
            .root()
            .join(format!("litefs-nemesis-{}", std::process::id()));
        std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
        if let (Hierarchy::V2(_), Some(c)) = (&hier, v2_controller) {
            // Our own directory hands the controller to the nodes' groups under it.
            std::fs::write(root.join("cgroup.subtree_control"), format!("+{c}"))
                .with_context(|| format!("enabling {c} in {}", root.display()))?;
        }
        Ok(Groups {
            hier,
            root,
            groups: BTreeMap::new(),
        })
    }

    /// Creates node `id`'s group, lets `set_up` write its limits, then moves `pids` in.
    fn enter(
        &mut self,
        id: u64,
        pids: &[i32],
        set_up: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<&Path> {
        let dir = self.root.join(format!("n{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        self.groups.insert(
            id,
            Group {
                dir: dir.clone(),
                moved: Vec::new(),
            },
        );
        set_up(&dir)?;
        let g = self.groups.get_mut(&id).expect("just inserted");
        for &pid in pids {
            let from = self.hier.cgroup_of(pid);
            if std::fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok() {
                g.moved.push((pid, from));
            }
        }
        Ok(&g.dir)
    }

    fn dir(&self, id: u64) -> Option<&Path> {
        self.groups.get(&id).map(|g| g.dir.as_path())
    }

    /// Lets `undo` lift node `id`'s limits, moves its processes back and removes its group.
    fn leave(&mut self, id: u64, undo: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let Some(g) = self.groups.remove(&id) else {
            return Ok(());
        };
        let undone = undo(&g.dir);
        for (pid, from) in g.moved {
            // A process that exited meanwhile is simply gone.
            let _ = std::fs::write(from.join("cgroup.procs"), pid.to_string());
        }
        empty_and_remove(&g.dir, self.hier.root())?;
        undone
    }

    fn ids(&self) -> Vec<u64> {
        self.groups.keys().copied().collect()
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.root) {
            eprintln!("nemesis: removing {}: {e}", self.root.display());
        }
    }
}

/// Removes the cgroup `dir` after moving to the hierarchy's root what is still in it: processes
/// the node forked after it was moved in. Retried, since such a fork can race the move.
fn empty_and_remove(dir: &Path, root: &Path) -> Result<()> {
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
    let left = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    Err(last.expect("tried")).with_context(|| {
        format!(
            "removing {} (processes left: {})",
            dir.display(),
            left.split_whitespace().collect::<Vec<_>>().join(" ")
        )
    })
}

/// Whole-node freezes: v1 `freezer.state`, v2 `cgroup.freeze`.
pub struct Freezer(Groups);

impl Freezer {
    /// Fails, saying why, where freezes are impossible.
    pub fn check() -> Result<()> {
        Hierarchy::detect("freezer", None).map(|_| ())
    }

    pub fn new() -> Result<Freezer> {
        Ok(Freezer(Groups::new(
            Hierarchy::detect("freezer", None)?,
            None,
        )?))
    }

    /// Freezes `pids` (a node's tree) as node `id`. Returns whether the kernel said frozen
    /// within 5 s: on v1 a task in an uninterruptible wait (a FUSE request to a server that is
    /// being frozen too) keeps the cgroup FREEZING, which is a finding, not a harness error.
    pub fn freeze(&mut self, id: u64, pids: &[i32]) -> Result<bool> {
        let v1 = matches!(self.0.hier, Hierarchy::V1(..));
        let dir = self.0.enter(id, pids, |_| Ok(()))?.to_path_buf();
        let (file, value) = if v1 {
            ("freezer.state", "FROZEN")
        } else {
            ("cgroup.freeze", "1")
        };
        std::fs::write(dir.join(file), value).with_context(|| format!("writing {file}"))?;
        for _ in 0..500 {
            let frozen = if v1 {
                std::fs::read_to_string(dir.join("freezer.state"))
                    .unwrap_or_default()
                    .trim()
                    == "FROZEN"
            } else {
                std::fs::read_to_string(dir.join("cgroup.events"))
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l == "frozen 1")
            };
            if frozen {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(false)
    }

    /// Thaws node `id`, moves its processes back and removes its cgroup.
    pub fn thaw(&mut self, id: u64) -> Result<()> {
        let v1 = matches!(self.0.hier, Hierarchy::V1(..));
        self.0.leave(id, |dir| {
            let (file, value) = if v1 {
                ("freezer.state", "THAWED")
            } else {
                ("cgroup.freeze", "0")
            };
            std::fs::write(dir.join(file), value).with_context(|| format!("writing {file}"))
        })
    }

    /// `freezer v1` or `cgroup v2`, for the start-up line.
    pub fn describe(&self) -> String {
        match &self.0.hier {
            Hierarchy::V1(p, _) => format!("cgroup v1 at {}", p.display()),
            Hierarchy::V2(p) => format!("cgroup v2 at {}", p.display()),
        }
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        for id in self.0.ids() {
            if let Err(e) = self.thaw(id) {
                eprintln!("nemesis: thawing node {id}: {e:#}");
            }
        }
    }
}

/// Slow disks: a device's reads and writes a second, for a node's processes; v1
/// `blkio.throttle.{read,write}_iops_device`, v2 `io.max`.
pub struct Throttle {
    groups: Groups,
    /// Node -> the throttled device (`major:minor`).
    devs: BTreeMap<u64, String>,
}

const V1_FILES: [&str; 2] = [
    "blkio.throttle.write_iops_device",
    "blkio.throttle.read_iops_device",
];

impl Throttle {
    /// Fails, saying why, where throttles are impossible.
    pub fn check() -> Result<()> {
        Hierarchy::detect("blkio", Some("io")).map(|_| ())
    }

    pub fn new() -> Result<Throttle> {
        let hier = Hierarchy::detect("blkio", Some("io"))?;
        Ok(Throttle {
            groups: Groups::new(hier, Some("io"))?,
            devs: BTreeMap::new(),
        })
    }

    fn set(hier: &Hierarchy, dir: &Path, dev: &str, iops: Option<u64>) -> Result<()> {
        match hier {
            Hierarchy::V1(..) => {
                for file in V1_FILES {
                    // 0: no limit.
                    std::fs::write(dir.join(file), format!("{dev} {}", iops.unwrap_or(0)))
                        .with_context(|| format!("writing {file}"))?;
                }
            }
            Hierarchy::V2(_) => {
                let v = iops.map_or("max".to_string(), |n| n.to_string());
                std::fs::write(dir.join("io.max"), format!("{dev} riops={v} wiops={v}"))
                    .context("writing io.max")?;
            }
        }
        Ok(())
    }

    /// Throttles device `dev` (`major:minor`) to `iops` reads and `iops` writes a second for
    /// the processes `pids` (a node's tree).
    pub fn slow(&mut self, id: u64, dev: &str, pids: &[i32], iops: u64) -> Result<()> {
        let hier = self.groups.hier.clone();
        self.devs.insert(id, dev.to_string());
        self.groups
            .enter(id, pids, |dir| Throttle::set(&hier, dir, dev, Some(iops)))?;
        Ok(())
    }

    /// Lifts node `id`'s throttle first (what is queued goes at once), then moves its processes
    /// back and removes its cgroup.
    pub fn restore(&mut self, id: u64) -> Result<()> {
        let hier = self.groups.hier.clone();
        let Some(dev) = self.devs.remove(&id) else {
            return Ok(());
        };
        if self.groups.dir(id).is_none() {
            return Ok(());
        }
        self.groups
            .leave(id, |dir| Throttle::set(&hier, dir, &dev, None))
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        for id in self.groups.ids() {
            if let Err(e) = self.restore(id) {
                eprintln!("nemesis: restoring node {id}'s disk: {e:#}");
            }
        }
    }
}
