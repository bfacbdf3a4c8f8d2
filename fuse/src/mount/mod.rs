//! Mounting and unmounting the shim: checks with clear errors (`preflight`), a watchdog that
//! unmounts if the daemon dies (`watchdog`: kill -9 leaves no stale mount), and an orderly
//! unmount that also works while clients still hold files open (here).

mod preflight;
mod watchdog;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};

use crate::adapter::FuseAdapter;
use crate::fs::{DataPath, PassthroughState, ShimFs};
use crate::metrics::FuseMetrics;
use crate::virtual_files::StateHandle;
use preflight::io_ctx;
pub use preflight::{MountError, preflight};
use watchdog::Watchdog;

pub const FSNAME: &str = "litefs-py";

#[derive(Debug, Clone)]
pub struct MountOptions {
    pub lower: PathBuf,
    pub mountpoint: PathBuf,
    pub data_path: DataPath,
    /// Let users other than the mounting one use the mount (FUSE `allow_other`).
    pub allow_other: bool,
    /// FUSE worker threads, each with its own cloned /dev/fuse fd.
    pub threads: usize,
    /// Fork a watchdog that unmounts if this process dies without unmounting.
    pub auto_unmount: bool,
    /// Use kernel FUSE passthrough for file data when the kernel allows it. Off: the shim
    /// serves reads and writes itself (direct I/O), as on kernels older than 6.9.
    pub kernel_passthrough: bool,
}

impl MountOptions {
    pub fn new(lower: impl Into<PathBuf>, mountpoint: impl Into<PathBuf>) -> Self {
        MountOptions {
            lower: lower.into(),
            mountpoint: mountpoint.into(),
            data_path: DataPath::Auto,
            allow_other: false,
            threads: default_threads(),
            auto_unmount: true,
            kernel_passthrough: true,
        }
    }
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
}

/// Every inode the kernel holds costs the shim one `O_PATH` fd, and the kernel keeps inodes
/// cached until memory pressure: under the common soft limit of 1024 fds, a directory with
/// a thousand touched files would make the shim fail with EMFILE. Raise the soft limit to the
/// hard one (Go programs such as LiteFS do the same at start-up).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur >= lim.rlim_max
    {
        return;
    }
    let wanted = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: valid pointer; raising the soft limit up to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } != 0 {
        tracing::warn!(soft = lim.rlim_cur, "could not raise the open-file limit");
    } else if lim.rlim_max < 65536 {
        tracing::warn!(
            limit = lim.rlim_max,
            "the open-file limit is low: the shim holds one fd per file the kernel has cached"
        );
    }
}

/// A mounted shim. Unmounts on [`MountedShim::unmount`] or on drop.
pub struct MountedShim {
    fs: Arc<ShimFs>,
    mountpoint: PathBuf,
    dev: u64,
    done: Option<mpsc::Receiver<io::Result<()>>>,
    /// The session's result, once it ended on its own.
    ended: Option<io::Result<()>>,
    watchdog: Option<Watchdog>,
}

impl std::fmt::Debug for MountedShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountedShim")
            .field("mountpoint", &self.mountpoint)
            .field("dev", &self.dev)
            .finish()
    }
}

/// Mounts the shim over `opts.lower` at `opts.mountpoint` and serves it on background threads.
pub fn mount(opts: &MountOptions, state: StateHandle) -> Result<MountedShim, MountError> {
    let (lower, mountpoint) = preflight(opts)?;
    // Modes come from the kernel with the caller's umask applied; ours must not mask again.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0) };
    raise_fd_limit();
    let fs = Arc::new(
        ShimFs::new(&lower, opts.data_path, state).map_err(io_ctx("opening the lower dir"))?,
    );
    if !opts.kernel_passthrough {
        fs.set_passthrough_state(
            PassthroughState::Unavailable,
            "turned off by the mount options",
        );
    }
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(FSNAME.into()),
        MountOption::CUSTOM(format!("subtype={FSNAME}")),
        MountOption::DefaultPermissions,
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let session =
        Session::new(FuseAdapter::new(fs.clone()), &mountpoint, &config).map_err(|e| {
            if e.kind() == io::ErrorKind::PermissionDenied {
                MountError::MountPermission(mountpoint.clone())
            } else {
                io_ctx(format!("mounting on {}", mountpoint.display()))(e)
            }
        })?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let _ = tx.send(session.run());
        })
        .map_err(io_ctx("starting the FUSE session"))?;
    // From here on the mount is served, so it can be looked at.
    let mut shim = MountedShim {
        fs,
        mountpoint: mountpoint.clone(),
        dev: 0,
        done: Some(rx),
        ended: None,
        watchdog: None,
    };
    shim.dev = std::fs::metadata(&mountpoint)
        .map_err(io_ctx("stat of the new mount"))?
        .dev();
    if opts.auto_unmount {
        shim.watchdog = Some(Watchdog::start(&mountpoint, shim.dev)?);
    }
    tracing::info!(
        mountpoint = %mountpoint.display(),
        lower = %lower.display(),
        data_path = ?opts.data_path,
        threads = opts.threads,
        "mounted"
    );
    Ok(shim)
}

impl MountedShim {
    pub fn fs(&self) -> &Arc<ShimFs> {
        &self.fs
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The counters of the FUSE requests this mount serves (its state handle's: the same as
    /// [`StateHandle::fuse_metrics`]).
    pub fn metrics(&self) -> Arc<FuseMetrics> {
        self.fs.metrics().clone()
    }

    /// Whether the FUSE session ended on its own (someone unmounted it).
    pub fn session_ended(&mut self) -> bool {
        if self.ended.is_none()
            && let Some(rx) = &self.done
        {
            match rx.try_recv() {
                Ok(r) => self.ended = Some(r),
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.ended = Some(Err(io::Error::other("the FUSE session thread died")))
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
        }
        self.ended.is_some() || self.done.is_none()
    }

    /// Detaches the mount, gives open files `grace` to close, then aborts the connection so
    /// that nothing waits on this process any more.
    pub fn unmount_with_grace(mut self, grace: Duration) -> io::Result<()> {
        self.shutdown(grace)
    }

    pub fn unmount(self) -> io::Result<()> {
        self.unmount_with_grace(Duration::from_millis(500))
    }

    fn shutdown(&mut self, grace: Duration) -> io::Result<()> {
        let Some(done) = self.done.take() else {
            return Ok(());
        };
        if let Some(result) = self.ended.take() {
            if let Some(w) = self.watchdog.take() {
                w.stop();
            }
            return result;
        }
        let still_ours = std::fs::metadata(&self.mountpoint)
            .map(|m| m.dev() == self.dev)
            .unwrap_or(false);
        if still_ours {
            let c =
                CString::new(self.mountpoint.as_os_str().as_bytes()).map_err(io::Error::other)?;
            // SAFETY: valid path. MNT_DETACH: open files keep working until closed.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                let e = io::Error::last_os_error();
                tracing::warn!(error = %e, "unmount failed");
            }
        }
        let result = match done.recv_timeout(grace) {
            Ok(r) => r,
            Err(_) => {
                tracing::info!(
                    "files still open on the detached mount; aborting the FUSE connection"
                );
                abort_connection(self.dev);
                done.recv_timeout(Duration::from_secs(5))
                    .unwrap_or_else(|_| {
                        Err(io::Error::other(
                            "the FUSE session did not end after the connection was aborted",
                        ))
                    })
            }
        };
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
        tracing::info!(mountpoint = %self.mountpoint.display(), "unmounted");
        result
    }
}

impl Drop for MountedShim {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown(Duration::from_millis(200)) {
            tracing::warn!(error = %e, "unmount on drop");
        }
    }
}

/// Aborts a FUSE connection through fusectl (mounting fusectl if needed), so that the session
/// threads return and clients get ENOTCONN instead of waiting.
fn abort_connection(dev: u64) {
    let conns = Path::new("/sys/fs/fuse/connections");
    let id = (libc::major(dev) << 20) | libc::minor(dev);
    let abort = conns.join(id.to_string()).join("abort");
    if !abort.exists() {
        let src = c"fusectl";
        let target = c"/sys/fs/fuse/connections";
        // SAFETY: valid strings; fails harmlessly if not permitted or already mounted.
        unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
    }
    if let Err(e) = std::fs::write(&abort, b"1") {
        tracing::warn!(error = %e, path = %abort.display(), "could not abort the FUSE connection");
    }
}
