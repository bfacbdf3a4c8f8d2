//! Child processes and mounts, each owned by a guard whose Drop stops or unmounts it, so that a
//! panic or an error anywhere still leaves no daemon and no mount behind.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::sys;

/// How long a child gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process, stopped by PID (SIGTERM, then SIGKILL) when dropped.
pub struct Child {
    name: String,
    child: std::process::Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Child {
    /// Starts `cmd` in its own process group (so a Ctrl-C reaches only us, and we stop the
    /// children in order) with stdout and stderr going to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Child> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe. If we die without running our Drops (SIGKILL),
        // the child still gets SIGTERM and unmounts itself.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGTERM as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Child {
            name: name.into(),
            child,
            log: log.into(),
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has exited (it stays unreaped until then, so its PID
    /// cannot be reused by another process while we may still signal it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// SIGKILL now, without waiting: the child stays unreaped (its PID reserved) until
    /// [`Self::stop`] or drop reaps it.
    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a PID of our own unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// SIGTERM, wait up to `timeout`, then SIGKILL. Returns how it ended and whether SIGKILL
    /// was needed.
    pub fn stop(&mut self, timeout: Duration) -> (Option<ExitStatus>, bool) {
        if let Some(s) = self.exited() {
            return (Some(s), false);
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                return (Some(s), false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal(libc::SIGKILL);
        self.status = self.child.wait().ok();
        (self.status, true)
    }

    /// The last lines of the child's output, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let (_, true) = self.stop(STOP_TIMEOUT) {
            eprintln!(
                "litefs-py-bench: {} (pid {}) ignored SIGTERM; killed",
                self.name,
                self.child.id()
            );
        }
    }
}

/// A mount point that must not outlive the benchmark: on drop, if it is still mounted
/// (per /proc/self/mountinfo), it is detached.
pub struct MountGuard {
    path: PathBuf,
}

impl MountGuard {
    pub fn new(path: &Path) -> MountGuard {
        MountGuard {
            path: path.to_path_buf(),
        }
    }

    /// Unmounts if still mounted; Ok(true) if it had to.
    pub fn ensure_unmounted(&self) -> Result<bool> {
        if !sys::is_mounted(&self.path) {
            return Ok(false);
        }
        sys::lazy_unmount(&self.path)?;
        Ok(true)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        match self.ensure_unmounted() {
            Ok(false) => {}
            Ok(true) => eprintln!(
                "litefs-py-bench: {} was still mounted; detached it",
                self.path.display()
            ),
            Err(e) => eprintln!(
                "litefs-py-bench: could not unmount {}: {e:#}",
                self.path.display()
            ),
        }
    }
}

/// Polls `ready` every 20 ms until it holds, the child exits, or `timeout` passes.
pub fn wait_ready(
    child: &mut Child,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = child.exited() {
            bail!(
                "{} exited during start-up ({status}):\n{}",
                child.name(),
                child.log_tail()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{} not ready after {timeout:?}:\n{}",
                child.name(),
                child.log_tail()
            );
        }
        crate::measure::check_stop()?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `litefs-py mount`. Field order is drop order: the daemon is asked to unmount
/// itself first, then the guard detaches whatever it left.
pub struct Shim {
    child: Child,
    mount: MountGuard,
    pub mountpoint: PathBuf,
}

pub struct ShimOptions<'a> {
    pub binary: &'a Path,
    pub lower: &'a Path,
    pub mountpoint: &'a Path,
    pub data_path: &'a str,
    pub threads: Option<u16>,
    pub log: &'a Path,
}

impl Shim {
    pub fn start(o: &ShimOptions<'_>) -> Result<Shim> {
        let mountpoint = o.mountpoint.canonicalize()?;
        if sys::is_mounted(&mountpoint) {
            bail!("{} is already a mount point", mountpoint.display());
        }
        let mut cmd = Command::new(o.binary);
        cmd.arg("mount")
            .arg("--lower")
            .arg(o.lower)
            .arg("--data-path")
            .arg(o.data_path);
        if let Some(n) = o.threads {
            cmd.arg("--threads").arg(n.to_string());
        }
        cmd.arg(&mountpoint).env("LITEFS_PY_LOG", "warn");
        // The guard exists before the child does, so a mount made during a failed start goes too.
        let mount = MountGuard::new(&mountpoint);
        let mut child = Child::spawn(&format!("litefs-py mount ({})", o.data_path), cmd, o.log)?;
        let role = mountpoint.join(".role");
        wait_ready(&mut child, Duration::from_secs(15), || {
            std::fs::read(&role).is_ok()
        })?;
        Ok(Shim {
            child,
            mount,
            mountpoint,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Stops the daemon and checks that it exited 0 and took its mount with it; anything else
    /// is reported as an error (after cleaning up).
    pub fn finish(mut self) -> Result<()> {
        let (status, killed) = self.child.stop(STOP_TIMEOUT);
        let leftover = self.mount.ensure_unmounted()?;
        let mut problems = Vec::new();
        if killed {
            problems.push(format!(
                "did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed)"
            ));
        } else if let Some(s) = status.filter(|s| !s.success()) {
            problems.push(format!("exited with {s} after SIGTERM"));
        }
        if leftover {
            problems.push("left its mount behind (detached by the benchmark)".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!(
                "{}: {}\n{}",
                self.child.name(),
                problems.join("; "),
                self.child.log_tail()
            )
        }
    }
}

/// The end of a cluster's clean-up, once every node is stopped: removes the cluster's temp dir
/// `dir` (at `root`) unless something is still mounted under it, and turns the `problems` met on
/// the way into one error.
pub fn finish_clean_up(
    dir: Option<tempfile::TempDir>,
    root: &Path,
    mut problems: Vec<String>,
) -> Result<()> {
    let left: Vec<PathBuf> = sys::mounts()?
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with(root))
        .collect();
    if let Some(dir) = dir {
        if left.is_empty() {
            dir.close()
                .with_context(|| format!("removing {}", root.display()))?;
        } else {
            // Never delete through a mount: leave the dir for a look.
            problems.push(format!(
                "still mounted: {left:?}; {} kept",
                dir.keep().display()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("clean-up: {}", problems.join("; "))
    }
}
