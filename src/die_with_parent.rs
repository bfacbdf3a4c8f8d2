//! A child that the kernel signals when `litefs-py run` dies, even by kill -9 or the OOM killer:
//! LiteFS (SIGKILL: an orphan could renew nothing and would only hold the data dir and its mount)
//! and the app and the migrate command (SIGTERM: without the shim under it, an orphaned app can
//! only fail its requests, and it would hold the app's port against the next `run`).
//!
//! PDEATHSIG fires when the spawning *thread* ends, not the process: `run` spawns its children
//! from the thread that runs its supervisor to the end (docs/architecture.md, "The picture").

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Asks the kernel to send `signal` to the child `cmd` starts when the calling thread (the
/// parent) dies; the child refuses to start if the parent died before it could ask.
pub fn die_with_parent(cmd: &mut Command, signal: libc::c_int) -> &mut Command {
    let parent = std::process::id();
    // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl: nobody would send the signal.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("litefs-py run exited"));
            }
            Ok(())
        })
    }
}
