//! The shim under measurement: one `litefs-py mount` child over a lower dir, started with the
//! test kit's guards (its process stopped by PID, its mount detached if it left it), so that a
//! panic or an error anywhere still leaves no daemon and no mount behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use litefs_py_testkit::mount::{MountGuard, is_mounted};
use litefs_py_testkit::process::Proc;
use litefs_py_testkit::wait;

/// How long the daemon gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How the benchmark spawns every daemon: in its own process group (a Ctrl-C reaches only us,
/// and we stop the children in order), and with SIGTERM as its parent-death signal (if we die
/// without running our guards, the child still unmounts itself).
pub fn spawn_options() -> litefs_py_testkit::process::Options {
    litefs_py_testkit::process::Options {
        append: false,
        own_group: true,
        parent_death_signal: true,
    }
}

/// A running `litefs-py mount`. Field order is drop order: the daemon is asked to unmount
/// itself first, then the guard detaches whatever it left.
pub struct Shim {
    child: Proc,
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
        if is_mounted(&mountpoint) {
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
        let name = format!("litefs-py mount ({})", o.data_path);
        let mut child = Proc::spawn(&name, cmd, o.log, spawn_options())?;
        let role = mountpoint.join(".role");
        wait::try_poll_until(
            Duration::from_secs(15),
            Duration::from_millis(20),
            &format!("{name} to answer"),
            || match child.exited() {
                Some(status) => Err(litefs_py_testkit::Error::failed(format!(
                    "{name} exited during start-up ({status}):\n{}",
                    child.log_tail(15)
                ))),
                None => Ok(std::fs::read(&role).is_ok().then_some(())),
            },
        )
        .map_err(|e| e.with_log(|| child.log_tail(15)))?;
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
        let stopped = self.child.stop(STOP_TIMEOUT);
        let (status, killed) = (stopped.status, stopped.killed);
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
                self.child.log_tail(15)
            )
        }
    }
}
