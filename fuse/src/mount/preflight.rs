//! What can be checked before mounting, with one clear error each.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use crate::mount::MountOptions;
use crate::mountinfo;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("lower dir {0} does not exist")]
    LowerMissing(PathBuf),
    #[error("lower dir {0} is not a directory")]
    LowerNotDir(PathBuf),
    #[error("mountpoint {0} does not exist (create it first)")]
    MountpointMissing(PathBuf),
    #[error("mountpoint {0} is not a directory")]
    MountpointNotDir(PathBuf),
    #[error("mountpoint {path} is already a mount point ({fstype}); unmount it first")]
    AlreadyMounted { path: PathBuf, fstype: String },
    #[error(
        "mountpoint {0} is a stale FUSE mount (transport endpoint is not connected); clean it up with `umount -l {0}`"
    )]
    StaleMount(PathBuf),
    #[error(
        "mountpoint {mountpoint} is inside the lower dir {lower} (or is it): use a separate directory"
    )]
    MountpointInsideLower { mountpoint: PathBuf, lower: PathBuf },
    #[error(
        "/dev/fuse is missing: load the fuse module (`modprobe fuse`) or, in a container, pass --device /dev/fuse"
    )]
    NoFuseDevice,
    #[error("permission denied opening /dev/fuse: run as root or with CAP_SYS_ADMIN")]
    FuseDevicePermission,
    #[error(
        "permission denied mounting on {0}: run as root (or install fusermount3 for user mounts)"
    )]
    MountPermission(PathBuf),
    /// The cause is in the message, not in `source()`: printed as a chain it would repeat.
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
}

pub(super) fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> MountError {
    move |error| MountError::Io {
        context: context.into(),
        error,
    }
}

/// Checks everything that can be checked before mounting, with one clear error each.
pub fn preflight(opts: &MountOptions) -> Result<(PathBuf, PathBuf), MountError> {
    let lower = match std::fs::metadata(&opts.lower) {
        Ok(m) if m.is_dir() => opts
            .lower
            .canonicalize()
            .map_err(io_ctx(format!("lower dir {}", opts.lower.display())))?,
        Ok(_) => return Err(MountError::LowerNotDir(opts.lower.clone())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountError::LowerMissing(opts.lower.clone()));
        }
        Err(e) => return Err(io_ctx(format!("lower dir {}", opts.lower.display()))(e)),
    };
    let mountpoint = match std::fs::metadata(&opts.mountpoint) {
        Ok(m) if m.is_dir() => opts
            .mountpoint
            .canonicalize()
            .map_err(io_ctx(format!("mountpoint {}", opts.mountpoint.display())))?,
        Ok(_) => return Err(MountError::MountpointNotDir(opts.mountpoint.clone())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(MountError::MountpointMissing(opts.mountpoint.clone()));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(MountError::StaleMount(opts.mountpoint.clone()));
        }
        Err(e) => {
            return Err(io_ctx(format!("mountpoint {}", opts.mountpoint.display()))(
                e,
            ));
        }
    };
    if let Some(m) = mountinfo::at(&mountpoint)
        .map_err(io_ctx("reading /proc/self/mountinfo"))?
        .pop()
    {
        return Err(MountError::AlreadyMounted {
            path: mountpoint,
            fstype: m.fstype,
        });
    }
    // Equal paths too: mounted over the lower dir, the shim would hide it (and LiteFS could
    // no longer unmount its own mount).
    if mountpoint.starts_with(&lower) {
        return Err(MountError::MountpointInsideLower { mountpoint, lower });
    }
    match File::options().read(true).write(true).open("/dev/fuse") {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(MountError::NoFuseDevice),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(MountError::FuseDevicePermission);
        }
        Err(e) => return Err(io_ctx("/dev/fuse")(e)),
    }
    Ok((lower, mountpoint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::MountOptions;

    #[test]
    fn preflight_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = preflight(&MountOptions::new(&missing, dir.path())).unwrap_err();
        assert!(matches!(err, MountError::LowerMissing(_)), "{err}");
        let err = preflight(&MountOptions::new(dir.path(), &missing)).unwrap_err();
        assert!(matches!(err, MountError::MountpointMissing(_)), "{err}");
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let err = preflight(&MountOptions::new(&file, dir.path())).unwrap_err();
        assert!(matches!(err, MountError::LowerNotDir(_)), "{err}");
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        let err = preflight(&MountOptions::new(dir.path(), &inner)).unwrap_err();
        assert!(
            matches!(err, MountError::MountpointInsideLower { .. }),
            "{err}"
        );
        let err = preflight(&MountOptions::new(dir.path(), dir.path())).unwrap_err();
        assert!(
            matches!(err, MountError::MountpointInsideLower { .. }),
            "{err}"
        );
        let err = preflight(&MountOptions::new(dir.path(), "/proc")).unwrap_err();
        assert!(matches!(err, MountError::AlreadyMounted { .. }), "{err}");
    }
}
