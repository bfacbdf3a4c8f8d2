//! Mount queries (through the project's one mountinfo parser, `litefs_py_fuse::mountinfo`) and
//! a guard that detaches a mount its daemon left behind.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use litefs_py_fuse::mountinfo;

use crate::error::{Error, IoContext, Result};
use crate::wait;

/// Whether anything is mounted at exactly `path`.
pub fn is_mounted(path: &Path) -> bool {
    mountinfo::is_mount_point(path)
}

/// Every mount point at or under `root`.
pub fn mounted_under(root: &Path) -> Result<Vec<PathBuf>> {
    Ok(mountinfo::read()
        .context(|| "reading /proc/self/mountinfo".into())?
        .into_iter()
        .map(|m| m.point)
        .filter(|p| p.starts_with(root))
        .collect())
}

/// The type of the filesystem that holds `path` (its longest mount point prefix).
pub fn fstype_of(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    mountinfo::read()
        .ok()?
        .into_iter()
        .filter(|m| path.starts_with(&m.point))
        .max_by_key(|m| m.point.as_os_str().len())
        .map(|m| m.fstype)
}

/// Waits up to `timeout` until nothing is mounted at `path` (a daemon's own unmount, its
/// watchdog's after a kill -9).
pub fn wait_unmounted(path: &Path, timeout: Duration) -> Result<()> {
    let what = format!("{} to be unmounted", path.display());
    wait::poll_until(timeout, Duration::from_millis(5), &what, || {
        (!is_mounted(path)).then_some(())
    })
}

/// Lazily unmounts (MNT_DETACH) whatever is mounted at `path`, layer by layer (a dead LiteFS's
/// mount may have a dead shim over it), with `umount -l` as the fallback where the syscall is
/// refused. `Ok(true)` if there was anything to detach.
pub fn detach(path: &Path) -> Result<bool> {
    let mut detached = false;
    // Bounded: each round removes one layer, and nothing stacks more than a few.
    for _ in 0..8 {
        if !is_mounted(path) {
            return Ok(detached);
        }
        detach_once(path)?;
        detached = true;
    }
    Err(Error::failed(format!(
        "{} is still mounted after 8 detaches",
        path.display()
    )))
}

fn detach_once(path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::failed(format!("{} contains a NUL", path.display())))?;
    // SAFETY: a NUL-terminated path; MNT_DETACH needs nothing else and works on a dead FUSE mount.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let first = std::io::Error::last_os_error();
    let status = std::process::Command::new("umount")
        .arg("-l")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .status()
        .context(|| format!("running umount -l {} (umount2: {first})", path.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::failed(format!(
            "umount -l {} failed ({status}); umount2: {first}",
            path.display()
        )))
    }
}

/// A mount point that must not outlive the test: on drop, whatever is still mounted there is
/// detached (and said so). Made before the daemon starts, so a mount made by a failed start
/// goes too.
#[derive(Debug)]
pub struct MountGuard {
    path: PathBuf,
}

impl MountGuard {
    pub fn new(path: &Path) -> MountGuard {
        MountGuard {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Detaches what is left; `Ok(true)` if it had to.
    pub fn ensure_unmounted(&self) -> Result<bool> {
        detach(&self.path)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        match self.ensure_unmounted() {
            Ok(false) => {}
            Ok(true) => eprintln!(
                "testkit: {} was still mounted; detached it",
                self.path.display()
            ),
            Err(e) => eprintln!("testkit: could not unmount {}: {e}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_mounted_and_a_fresh_dir_is_not() {
        assert!(is_mounted(Path::new("/")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mounted(dir.path()));
        assert!(!detach(dir.path()).unwrap());
        assert!(mounted_under(dir.path()).unwrap().is_empty());
        assert!(fstype_of(dir.path()).is_some());
        wait_unmounted(dir.path(), Duration::from_millis(10)).unwrap();
    }
}
