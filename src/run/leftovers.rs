//! What a dead earlier `litefs-py run` left behind, cleared before a new one starts: its dead
//! FUSE mounts at `mount.dir` (the shim) and `mount.lower` (LiteFS).
//!
//! A run killed with its whole process group (kill -9, systemd, Kubernetes) takes the shim's
//! watchdog and LiteFS with it; the kernel keeps both mounts, and every access to them fails
//! with ENOTCONN ("transport endpoint is not connected"). `create_dir_all` then fails with
//! EEXIST, and the shim cannot mount over them. A plain restart must recover, so each mount is
//! detached here, but only after checking that it is ours (the filesystem type and source in
//! mountinfo) and dead (`statfs` says ENOTCONN): a mount that still answers belongs to a
//! process that still runs, and anything else is not ours to touch. Each refusal says what to
//! do.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use litefs_py_fuse::mountinfo::{self, Mount};

use crate::litefs::process::statfs;

/// How long a `statfs` of a FUSE mount left by an earlier run may take at start-up.
const STAT_TIMEOUT: Duration = Duration::from_secs(2);

/// Stacked dead mounts (several killed runs in a row) go one by one, bounded all the same.
const MAX_DETACH: usize = 16;

/// Whose mount a path is meant to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// `mount.dir`: the shim (`fuse.litefs-py`, source `litefs-py`).
    Shim,
    /// `mount.lower`: LiteFS (`fuse`, source `litefs`: LiteFS's FUSE library sets no subtype).
    LiteFs,
}

impl Owner {
    fn key(self) -> &'static str {
        match self {
            Owner::Shim => "mount.dir",
            Owner::LiteFs => "mount.lower",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Owner::Shim => "the shim of an earlier litefs-py run",
            Owner::LiteFs => "the LiteFS of an earlier litefs-py run",
        }
    }

    /// Whether mountinfo's line is this owner's kind of mount.
    pub fn owns(self, m: &Mount) -> bool {
        match self {
            Owner::Shim => {
                m.fstype == format!("fuse.{}", litefs_py_fuse::FSNAME)
                    && m.source == litefs_py_fuse::FSNAME
            }
            Owner::LiteFs => m.is_litefs(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LeftoverError(String);

/// Detaches the dead mounts of `owner` at `path` that an earlier run left; refuses (with what to
/// do) a mount there that answers, that is not ours, or that cannot be checked.
pub fn clear(path: &Path, owner: Owner) -> Result<(), LeftoverError> {
    let (key, shown) = (owner.key(), path.display());
    for _ in 0..MAX_DETACH {
        // The mount the path shows is the last one at it.
        let Some(top) = mountinfo::at(path).ok().and_then(|mut m| m.pop()) else {
            return Ok(());
        };
        if !owner.owns(&top) {
            return Err(LeftoverError(format!(
                "{key} {shown} is already a mount point ({} from {:?}), not one litefs-py left: \
                 unmount it, or choose another {key}",
                top.fstype, top.source
            )));
        }
        match statfs_within(path, STAT_TIMEOUT) {
            Some(Err(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
            Some(Ok(())) => {
                return Err(LeftoverError(format!(
                    "{key} {shown} is mounted by {} that still runs: stop it first \
                     (two on one node must not run)",
                    owner.what()
                )));
            }
            Some(Err(e)) => {
                return Err(LeftoverError(format!(
                    "{key} {shown} is a FUSE mount left by an earlier run that cannot be checked \
                     ({e}): `umount -l {shown}`, then start again"
                )));
            }
            None => {
                return Err(LeftoverError(format!(
                    "{key} {shown} is a FUSE mount that does not answer within {STAT_TIMEOUT:?} \
                     (its process is stopped or hung?): stop that process, or `umount -l {shown}`"
                )));
            }
        }
        detach(path).map_err(|e| {
            LeftoverError(format!(
                "detaching the dead mount left at {key} {shown} by {}: {e} \
                 (`umount -l {shown}` as root)",
                owner.what()
            ))
        })?;
        tracing::warn!(
            path = %shown,
            "detached a dead FUSE mount left at {key} by {} (it was killed)",
            owner.what()
        );
    }
    Err(LeftoverError(format!(
        "{key} {shown}: dead FUSE mounts keep appearing there"
    )))
}

/// `umount2(path, MNT_DETACH)`: works on a dead FUSE mount, busy or not.
fn detach(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `statfs` on a thread of its own: a hung FUSE daemon can block it forever. `None`: no answer
/// in time (the thread is left behind; it ends when the call returns, or with the process).
/// `statfs`, not `stat`: the kernel answers `stat` of a FUSE root from cached attributes (for
/// up to a minute after the daemon died), while every `statfs` goes to the daemon.
fn statfs_within(path: &Path, timeout: Duration) -> Option<std::io::Result<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("leftover-statfs".into())
        .spawn(move || {
            let _ = tx.send(statfs(&path));
        })
        .ok()?;
    rx.recv_timeout(timeout).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(fstype: &str, source: &str) -> Mount {
        mountinfo::parse_line(&format!(
            "52 27 0:48 / /tmp/m rw,nosuid - {fstype} {source} rw"
        ))
        .unwrap()
    }

    #[test]
    fn only_our_own_kind_of_mount_is_ours() {
        assert!(Owner::Shim.owns(&line("fuse.litefs-py", "litefs-py")));
        assert!(!Owner::Shim.owns(&line("fuse", "litefs")));
        assert!(Owner::LiteFs.owns(&line("fuse", "litefs")));
        assert!(!Owner::LiteFs.owns(&line("fuse.litefs-py", "litefs-py")));
        assert!(!Owner::LiteFs.owns(&line("fuse.sshfs", "host:/x")));
        assert!(!Owner::Shim.owns(&line("ext4", "/dev/vda1")));
    }

    #[test]
    fn a_plain_dir_needs_nothing_and_a_foreign_mount_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        clear(dir.path(), Owner::Shim).unwrap();
        clear(&dir.path().join("missing"), Owner::LiteFs).unwrap();
        assert_eq!(
            statfs_within(dir.path(), Duration::from_secs(5)).map(|r| r.is_ok()),
            Some(true)
        );
        let e = clear(Path::new("/proc"), Owner::Shim)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("mount.dir /proc is already a mount point (proc from \"proc\"), not one litefs-py left"),
            "{e}"
        );
    }
}
