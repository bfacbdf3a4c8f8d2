//! A guard for each process a test starts: its output goes to a log file, it is signalled by
//! its own PID only (never by name), and it is stopped on drop (SIGTERM, then SIGKILL after a
//! bound), so a failing test leaves nothing running.

use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::wait;

/// How long a dropped guard's process gets after SIGTERM before SIGKILL.
pub const STOP_BOUND: Duration = Duration::from_secs(10);

/// How a process is started.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Append to the log (one log across restarts) instead of truncating it.
    pub append: bool,
    /// Its own process group, so that a terminal's Ctrl-C reaches only us and we stop the
    /// children in order (the benchmark).
    pub own_group: bool,
    /// SIGTERM when the thread that started it dies without running the guards (a SIGKILLed
    /// benchmark): the child still unmounts itself. Only for processes started on a thread that
    /// outlives them.
    pub parent_death_signal: bool,
}

/// Makes `cmd` start in the network namespace at `netns` (e.g. `/run/netns/<name>`): the file
/// is opened now, and the child joins it between fork and exec, so its own children (LiteFS,
/// the app) are in it too. Only the network namespace: mounts stay shared with us (`ip netns
/// exec` would give the child a mount namespace of its own, hiding its FUSE mounts from us).
pub fn join_netns(cmd: &mut Command, netns: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let file = File::open(netns).context(|| format!("opening {}", netns.display()))?;
    // SAFETY: setns is async-signal-safe; the fd stays open until the closure (which owns the
    // file) is dropped with the command, after the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// A child process of ours. Until it is reaped its PID cannot be reused, so signalling it by
/// PID is safe for the guard's whole life.
pub struct Proc {
    name: String,
    child: std::process::Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

/// How [`Proc::stop`] ended.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    pub status: Option<ExitStatus>,
    /// SIGTERM was not enough within the bound.
    pub killed: bool,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout and stderr into `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, opts: Options) -> Result<Proc> {
        let out = OpenOptions::new()
            .create(true)
            .write(true)
            .append(opts.append)
            .truncate(!opts.append)
            .open(log)
            .context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context(|| "duplicating a log fd".into())?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        if opts.own_group {
            cmd.process_group(0);
        }
        if opts.parent_death_signal {
            // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
            unsafe {
                cmd.pre_exec(|| {
                    let sig = libc::SIGTERM as libc::c_ulong;
                    if libc::prctl(libc::PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            status: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status once it has exited (reaped then, and remembered).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends `sig` if it has not been reaped (so the PID is still ours).
    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            // SAFETY: the PID of our own child, not reaped yet.
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        }
    }

    /// kill -9 without waiting: the process stays unreaped until [`Proc::stop`] or drop.
    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let what = format!("{} to exit", self.name);
        wait::poll_until(timeout, Duration::from_millis(10), &what, || self.exited())
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; reaped either way.
    pub fn stop(&mut self, grace: Duration) -> Stopped {
        if let Some(status) = self.exited() {
            return Stopped {
                status: Some(status),
                killed: false,
            };
        }
        self.terminate();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Stopped {
                    status: Some(status),
                    killed: false,
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        self.status = self.child.wait().ok();
        Stopped {
            status: self.status,
            killed: true,
        }
    }

    /// kill -9 and reap.
    pub fn kill_and_reap(&mut self) {
        if self.exited().is_none() {
            self.kill();
            self.status = self.child.wait().ok();
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.stop(STOP_BOUND).killed {
            eprintln!(
                "testkit: {} (pid {}) ignored SIGTERM for {STOP_BOUND:?}; killed",
                self.name,
                self.child.id()
            );
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` to completion with its output captured, killing it (by PID) if it outlives
/// `timeout`.
pub fn output_within(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(|| format!("starting {:?}", cmd.get_program()))?;
    let deadline = Instant::now() + timeout;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::TimedOut {
                what: format!("{cmd:?} to finish"),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child
        .wait_with_output()
        .context(|| format!("reading the output of {:?}", cmd.get_program()))
}

/// The lines of stderr that are not blank.
pub fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether `pid` exists and is not a zombie.
pub fn is_live(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z'),
        Err(_) => false,
    }
}

/// Whether process `pid`'s command line contains `needle` (how a PID read from a log is checked
/// to still be the process we mean before it is signalled).
pub fn cmdline_contains(pid: i32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
}

/// Whether process `pid`'s environment holds `entry` (`NAME=value`) whole.
pub fn environ_contains(pid: i32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|e| e.split(|b| *b == 0).any(|kv| kv == entry.as_bytes()))
}

/// The `pid=<n>` of the last line of `log` that contains `marker` (a `litefs-py run` log).
pub fn pid_in_log(log: &str, marker: &str) -> Option<i32> {
    let line = log.lines().rev().find(|l| l.contains(marker))?;
    line.split("pid=")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Creates an empty file, for a log that a process appends to.
pub fn touch(path: &Path) -> Result<()> {
    File::create(path)
        .map(drop)
        .context(|| format!("creating {}", path.display()))
}

/// The first line `<binary> version` prints (`litefs-py` and `litefs` both answer it; a LiteFS
/// built without ldflags says "development build"), or `unknown`.
pub fn version_line(binary: &Path) -> String {
    Command::new(binary)
        .arg("version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_terminates_and_the_log_is_captured() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello; exec sleep 30"]);
        let mut p =
            Proc::spawn("sleeper", cmd, &dir.path().join("log"), Options::default()).unwrap();
        wait::wait_for(Duration::from_secs(5), "the echo", || {
            p.log().contains("hello").then_some(())
        });
        assert!(is_live(p.pid() as i32));
        let s = p.stop(Duration::from_secs(5));
        assert!(!s.killed);
        assert!(s.status.is_some());
        assert_eq!(p.log_tail(1), "hello");
    }

    #[test]
    fn a_process_that_ignores_sigterm_is_killed_after_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.05; done",
        ]);
        let mut p =
            Proc::spawn("stubborn", cmd, &dir.path().join("log"), Options::default()).unwrap();
        wait::wait_for(Duration::from_secs(5), "the trap", || {
            p.log().contains("ready").then_some(())
        });
        let t = Instant::now();
        let s = p.stop(Duration::from_millis(200));
        assert!(s.killed);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn output_within_kills_what_outlives_its_bound() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let e = output_within(cmd, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, Error::TimedOut { .. }), "{e}");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo oops >&2; exit 3"]);
        let out = output_within(cmd, Duration::from_secs(5)).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(stderr_lines(&out), ["oops"]);
    }
}
