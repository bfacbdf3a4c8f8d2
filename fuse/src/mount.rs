//! Mounting and unmounting the shim: checks with clear errors, a watchdog that unmounts if the
//! daemon dies (kill -9 leaves no stale mount), and an orderly unmount that also works while
//! clients still hold files open.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};

use crate::adapter::FuseAdapter;
use crate::fs::{DataPath, PassthroughState, ShimFs};
use crate::mountinfo;
use crate::virtual_files::StateHandle;

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
            data_path: DataPath::Passthrough,
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
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> MountError {
    move |source| MountError::Io {
        context: context.into(),
        source,
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

/// A forked child that unmounts the shim if this process dies first.
///
/// It holds no reference to the mount (an fd on it would make a plain `umount` fail with
/// EBUSY). When it wakes — the pipe's write end, held only by the daemon, closed by `stop()` or
/// by the daemon dying — it unmounts only if /proc/self/mountinfo still lists a mount with our
/// device number *at our path*: a newer mount at the same path has another device number and
/// is never touched.
struct Watchdog {
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
    fn start(mountpoint: &Path, dev: u64) -> Result<Watchdog, MountError> {
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

    fn stop(mut self) {
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
    unsafe {
        // Keep only the pipe and stdio: in particular not /dev/fuse (the connection must die
        // with the daemon) nor lock fds (their locks must go with it).
        let p = pipe_r as u32;
        if p > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, p - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, p + 1, u32::MAX, 0u32);
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
