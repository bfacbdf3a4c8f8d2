//! Signals and child processes for the supervisor: one thread turns signals (with their origin)
//! into events, and the supervisor's own thread reaps every child with `waitpid(-1)`.
//!
//! Reaping is done in one place, on one thread, because as PID 1 the supervisor must also reap
//! orphans it never started (the app's children, re-parented to init), and `waitpid(-1)` takes
//! whichever child is ready: a second reaper (`Child::wait`) could lose its child's status to
//! it. The same thread sends every signal, so a PID is only ever signalled while it is known
//! unreaped: it cannot have been reused by another process.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::time::Duration;

use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::low_level::siginfo::Cause;

use crate::config::{CONSUL_TOKEN_ENV, SECRET_ENV};

/// Given to the app when `proxy:` is set: the URL of this node's proxy from this host.
pub const PROXY_ENV: &str = "LITEFS_PY_PROXY";

/// The app's environment: ours without the cluster secret (`$LITEFS_PY_SECRET`, if litefs-py
/// read it from there) and without a lease token: the app needs neither, and anything it runs
/// would inherit them. LiteFS gets the token alone ([`crate::litefs::process::LiteFs::spawn`]).
pub fn app_env(cmd: &mut Command) -> &mut Command {
    cmd.env_remove(SECRET_ENV).env_remove(CONSUL_TOKEN_ENV)
}

/// Signals passed on to the app as they come. SIGTERM and SIGINT also stop everything.
pub const FORWARDED: [i32; 5] = [SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2];

/// Something the supervisor must look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Signal {
        signal: i32,
        /// Sent by the kernel: a terminal's Ctrl-C or hang-up, which the kernel delivers to the
        /// whole foreground process group — the app (which shares ours) already has it.
        from_kernel: bool,
    },
    /// A child changed state (reap).
    Child,
}

/// The signal thread's events.
pub struct Events {
    pub rx: mpsc::Receiver<Event>,
    handle: signal_hook::iterator::Handle,
}

impl Events {
    /// Installs the handlers. Call before starting any child, so that no signal is lost.
    pub fn start() -> std::io::Result<Events> {
        let mut signals = SignalsInfo::<WithOrigin>::new(FORWARDED.iter().chain(&[SIGCHLD]))?;
        let handle = signals.handle();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for origin in signals.forever() {
                    let event = if origin.signal == SIGCHLD {
                        Event::Child
                    } else {
                        Event::Signal {
                            signal: origin.signal,
                            from_kernel: origin.cause == Cause::Kernel,
                        }
                    };
                    if tx.send(event).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Events { rx, handle })
    }

    /// Waits up to `timeout` for an event, then takes whatever else is queued.
    pub fn next_batch(&self, timeout: Duration) -> Vec<Event> {
        let mut out = Vec::new();
        match self.rx.recv_timeout(timeout) {
            Ok(e) => out.push(e),
            Err(_) => return out,
        }
        out.extend(self.rx.try_iter());
        out
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.handle.close();
    }
}

/// Reaps every child that has exited, without waiting: our own and, as PID 1, orphans.
pub fn reap_all() -> BTreeMap<i32, ExitStatus> {
    let mut out = BTreeMap::new();
    loop {
        let mut status = 0;
        // SAFETY: plain syscall; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            // 0: children left, none exited; -1 ECHILD: none left (EINTR: the next round).
            break;
        }
        out.insert(pid, ExitStatus::from_raw(status));
    }
    out
}

/// Sends `signal` to `pid`, which must be a child of ours not reaped yet (see the module doc).
pub fn signal(pid: i32, signal: i32) {
    // SAFETY: plain syscall on a PID we own.
    if unsafe { libc::kill(pid, signal) } != 0 {
        tracing::debug!(pid, signal, "kill: {}", std::io::Error::last_os_error());
    }
}

/// The exit code a shell would report: the code, or 128 + the signal that killed it.
pub fn shell_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// "status 3", "signal 9 (SIGKILL)".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(s)) => format!("signal {s} ({})", signal_name(s)),
        _ => "an unknown status".into(),
    }
}

pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_gets_no_secret_and_no_token() {
        let mut cmd = Command::new("true");
        cmd.env(SECRET_ENV, "s")
            .env(CONSUL_TOKEN_ENV, "t")
            .env("KEEP", "1");
        app_env(&mut cmd);
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&(SECRET_ENV.as_ref(), None)), "{envs:?}");
        assert!(
            envs.contains(&(CONSUL_TOKEN_ENV.as_ref(), None)),
            "{envs:?}"
        );
        assert!(
            envs.contains(&("KEEP".as_ref(), Some("1".as_ref()))),
            "{envs:?}"
        );
    }

    #[test]
    fn codes_and_descriptions() {
        let exited = ExitStatus::from_raw(3 << 8);
        assert_eq!(shell_code(exited), 3);
        assert_eq!(describe(exited), "status 3");
        let killed = ExitStatus::from_raw(libc::SIGKILL);
        assert_eq!(shell_code(killed), 137);
        assert_eq!(describe(killed), "signal 9 (SIGKILL)");
    }
}
