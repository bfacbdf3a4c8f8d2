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
        if !self.app_signalled {
            let signal = self.held_signal.take().unwrap_or(libc::SIGTERM);
            tracing::info!("stopping the app ({})", signal_name(signal));
            children::signal(pid, signal);
            self.app_signalled = true;
        }
        let grace = self.opts.grace;
        if self.wait(grace, |s| !s.app_running()) {
            return;
        }
        tracing::warn!("the app did not exit within {grace:?}: SIGKILL");
        children::signal(pid, libc::SIGKILL);
        if !self.wait(KILL_WAIT, |s| !s.app_running()) {
            tracing::error!(pid, "the app did not go away after SIGKILL");
        }
    }
}
