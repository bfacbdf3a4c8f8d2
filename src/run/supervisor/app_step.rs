//! The app and the migrate command as children of the supervisor: their command (environment,
//! umask, the signal if `run` dies), the app's start, and its stop after the proxy's.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::super::children::{self, signal_name};
use super::super::exit;
use super::{App, KILL_WAIT, Supervisor};
use crate::die_with_parent::die_with_parent;

impl Supervisor {
    /// The app's (or the migrate command's) command: the app's environment, `LITEFS_DIR`,
    /// `LITEFS_PY_PROXY` with a proxy, the umask `run` started with.
    pub(super) fn child_command(&self, program: &OsStr, args: &[std::ffi::OsString]) -> Command {
        let umask = self.umask;
        let mut cmd = Command::new(program);
        super::children::app_env(&mut cmd)
            .args(args)
            .env("LITEFS_DIR", &self.opts.config.mount.dir);
        if let Some(proxy) = &self.opts.config.proxy {
            // Where the app reaches its node's proxy (`litefs.django.wait_replicated()`).
            cmd.env(super::children::PROXY_ENV, proxy.local_url());
        }
        // SAFETY: umask is async-signal-safe and touches nothing of the parent.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(umask);
                Ok(())
            });
        }
        // If `run` is killed (-9, OOM), the app gets SIGTERM: it lost its database's mount and
        // would hold its port against the next `run`.
        die_with_parent(&mut cmd, libc::SIGTERM);
        cmd
    }

    /// Stops the child `what` (`pid`): `signal` (none: it was sent already), `grace` for `gone`,
    /// then SIGKILL and [`KILL_WAIT`] more. The app and the migrate command stop alike.
    pub(super) fn stop_child(
        &mut self,
        what: &str,
        pid: i32,
        signal: Option<i32>,
        gone: fn(&Supervisor) -> bool,
    ) {
        if let Some(signal) = signal {
            tracing::info!("stopping {what} ({})", signal_name(signal));
            children::signal(pid, signal);
        }
        let grace = self.opts.grace;
        if self.wait(grace, gone) {
            return;
        }
        tracing::warn!("{what} did not exit within {grace:?}: SIGKILL");
        children::signal(pid, libc::SIGKILL);
        if !self.wait(KILL_WAIT, gone) {
            tracing::error!(pid, "{what} did not go away after SIGKILL");
        }
    }

    /// Starts the app; on failure, the exit status saying why.
    pub(super) fn spawn_app(&mut self) -> Result<(), i32> {
        let (program, args) = self.opts.command.split_first().expect("checked in run");
        let mut cmd = self.child_command(program, args);
        match cmd.spawn() {
            Ok(child) => {
                let pid = child.id() as i32;
                // Dropped without waiting: the supervisor reaps it.
                drop(child);
                tracing::info!(pid, command = ?self.opts.command, "the app started");
                self.app = Some(App { pid, exited: None });
                Ok(())
            }
            Err(e) => {
                let code = if e.kind() == std::io::ErrorKind::NotFound {
                    exit::APP_NOT_FOUND
                } else {
                    exit::APP_NOT_EXECUTABLE
                };
                tracing::error!("cannot start the app {}: {e}", program.to_string_lossy());
                Err(code)
            }
        }
    }

    /// Stops the proxy first, if any (it stops accepting and lets requests in flight finish),
    /// then the app if it runs: SIGTERM (unless a stop signal reached it already), `grace`,
    /// then SIGKILL.
    pub(super) fn stop_app(&mut self) {
        super::super::proxy::stop(self.proxy.take());
        let Some(pid) = self
            .app
            .as_ref()
            .filter(|a| a.exited.is_none())
            .map(|a| a.pid)
        else {
            return;
        };
        // A stop signal forwarded to the app already counts as its SIGTERM.
        let signal = if self.app_signalled {
            None
        } else {
            self.app_signalled = true;
            Some(self.held_signal.take().unwrap_or(libc::SIGTERM))
        };
        self.stop_child("the app", pid, signal, |s| !s.app_running());
    }
}
