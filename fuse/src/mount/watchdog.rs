//! The watchdog: a forked child, in a session of its own, that unmounts the shim if the daemon
//! dies without unmounting.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::preflight::{MountError, io_ctx};
use crate::mountinfo;

/// A forked child that unmounts the shim if this process dies first.
///
/// It holds no reference to the mount (an fd on it would make a plain `umount` fail with
/// EBUSY). When it wakes — the pipe's write end, held only by the daemon, closed by `stop()` or
/// by the daemon dying — it unmounts only if /proc/self/mountinfo still lists a mount with our
/// device number *at our path*: a newer mount at the same path has another device number and
/// is never touched.
pub(super) struct Watchdog {
    pid: libc::pid_t,
    pipe_w: Option<OwnedFd>,
}

/// What the watchdog looks for, prepared before `fork` (the child must not allocate).
struct WatchdogTarget {
    path: CString,
    /// `major:minor` as mountinfo's third field shows it.
    dev_field: Vec<u8>,
    /// The mount point as mountinfo's fifth field shows it (escaped).
    path_field: Vec<u8>,
}

impl Watchdog {
    pub(super) fn start(mountpoint: &Path, dev: u64) -> Result<Watchdog, MountError> {
        let bytes = mountpoint.as_os_str().as_bytes();
        let target = WatchdogTarget {
            path: CString::new(bytes).map_err(|e| io_ctx("mountpoint")(io::Error::other(e)))?,
            dev_field: format!("{}:{}", libc::major(dev), libc::minor(dev)).into_bytes(),
            path_field: mountinfo::escape(bytes),
        };
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io_ctx("pipe")(io::Error::last_os_error()));
        }
        // SAFETY: both fds were just created.
        let (pipe_r, pipe_w) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the child only makes async-signal-safe syscalls, then _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io_ctx("fork")(io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: in the child: async-signal-safe calls only.
            unsafe { watchdog_child(pipe_r.as_raw_fd(), &target) }
        }
        drop(pipe_r);
        Ok(Watchdog {
            pid,
            pipe_w: Some(pipe_w),
        })
    }

    pub(super) fn stop(mut self) {
        self.pipe_w.take();
        let mut status = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if self.pipe_w.take().is_some() {
            let mut status = 0;
            // SAFETY: our own child.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
        }
    }
}

/// Whether one mountinfo line has `dev` as its third field and `path` as its fifth.
fn mountinfo_line_matches(line: &[u8], dev: &[u8], path: &[u8]) -> bool {
    let mut fields = line.split(|&b| b == b' ');
    fields.nth(2) == Some(dev) && fields.nth(1) == Some(path)
}

/// Scans /proc/self/mountinfo with a stack buffer (no allocation: this runs after `fork`).
unsafe fn mount_still_there(t: &WatchdogTarget) -> bool {
    // SAFETY: only async-signal-safe calls (open, read, close) on a stack buffer and a
    // NUL-terminated literal; the caller is the single-threaded child after `fork`.
    unsafe {
        let fd = libc::open(
            c"/proc/self/mountinfo".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return false;
        }
        let mut buf = [0u8; 16384];
        let mut filled = 0usize;
        let mut found = false;
        loop {
            let n = libc::read(fd, buf[filled..].as_mut_ptr().cast(), buf.len() - filled);
            if n <= 0 {
                // The last line may lack its newline.
                found |= filled > 0
                    && mountinfo_line_matches(&buf[..filled], &t.dev_field, &t.path_field);
                break;
            }
            filled += n as usize;
            let mut start = 0;
            while let Some(nl) = buf[start..filled].iter().position(|&b| b == b'\n') {
                found |=
                    mountinfo_line_matches(&buf[start..start + nl], &t.dev_field, &t.path_field);
                start += nl + 1;
            }
            buf.copy_within(start..filled, 0);
            filled -= start;
            if filled == buf.len() {
                filled = 0; // a line longer than the buffer cannot be ours
            }
        }
        libc::close(fd);
        found
    }
}

/// The watchdog's body. Never returns.
unsafe fn watchdog_child(pipe_r: RawFd, target: &WatchdogTarget) -> ! {
    // SAFETY: runs in the child right after `fork`: only async-signal-safe syscalls on fds and
    // C strings prepared before the fork (`target`), no allocation, and it ends in `_exit`.
    unsafe {
        // Keep only the pipe and stdio: in particular not /dev/fuse (the connection must die
        // with the daemon) nor lock fds (their locks must go with it).
        let p = pipe_r as u32;
        if p > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, p - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, p + 1, u32::MAX, 0u32);
        // A session (and process group) of its own: a kill of the daemon's whole group (what
        // systemd's and Kubernetes' stop does, or `kill -9 -PGID`) must not take the watchdog
        // with it, or the dead mount stays. Killing a whole cgroup still takes it: a restart
        // then detaches the dead mount itself (`litefs-py run`'s start-up).
        libc::setsid();
        // Ctrl-C reaches the whole process group; the daemon handles it, the watchdog waits.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::prctl(
            libc::PR_SET_NAME,
            c"litefs-py-wd".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        let mut byte = [0u8; 1];
        loop {
            let n = libc::read(pipe_r, byte.as_mut_ptr().cast(), 1);
            if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                break;
            }
        }
        if mount_still_there(target) {
            libc::umount2(target.path.as_ptr(), libc::MNT_DETACH);
        }
        libc::_exit(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let line = b"52 27 0:48 / /tmp/a\\040b rw,nosuid - fuse.litefs-py litefs-py rw";
        let esc = mountinfo::escape(b"/tmp/a b");
        assert_eq!(esc, b"/tmp/a\\040b");
        assert!(mountinfo_line_matches(line, b"0:48", &esc));
        assert!(!mountinfo_line_matches(line, b"0:49", &esc));
        assert!(!mountinfo_line_matches(line, b"0:48", b"/tmp/a"));
    }
}
