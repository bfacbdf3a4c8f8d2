//! The shim's core: plain methods that take kernel-shaped arguments and return `FsResult`.
//! The FUSE adapter (`adapter.rs`) only calls these and replies; unit tests call them directly.
//!
//! This file holds the namespace operations (lookup, attributes, create/remove/rename); file
//! data, locks, directories and xattrs are in `fs_io.rs`.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Instant, SystemTime};

use fuser::{FileAttr, FileType, INodeNo};

pub(crate) use crate::attr::attr_from_stat;
use crate::attr::timespec_of;
use crate::error::{FsError, FsResult};
use crate::handles::HandleTable;
use crate::inode::{Inode, InodeTable, LowerKey, ROOT_ID, View};
use crate::metrics::FuseMetrics;
use crate::sys::{self, FsIdGuard, with_name};
use crate::virtual_files::{StateHandle, VirtualFile};

/// How regular files reach the application (docs/architecture.md, "Data-path modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataPath {
    /// `Symlink` over LiteFS's own mount, `Passthrough` over any other lower dir.
    #[default]
    Auto,
    /// Every file is a shim file: data through kernel passthrough, locks forwarded.
    Passthrough,
    /// Regular files appear as symlinks into the lower dir, so SQLite's I/O and locks bypass
    /// the shim entirely; the shim serves lookups, listings and the virtual files.
    Symlink,
}

/// Whether kernel FUSE passthrough is in use for file data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PassthroughState {
    /// Not tried yet (decided by the first open).
    Untested = 0,
    Active = 1,
    /// The kernel or our privileges do not allow it: data goes through the shim, uncached.
    Unavailable = 2,
}

/// Who is asking: creations are done with the caller's fs uid/gid.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// The attribute changes of a SETATTR.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
    pub fh: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub enum TimeSpec {
    Now,
    At(SystemTime),
}

#[derive(Debug)]
pub struct ShimFs {
    pub(crate) inodes: InodeTable,
    pub(crate) handles: HandleTable,
    pub(crate) state: StateHandle,
    pub(crate) proc_self_fd: OwnedFd,
    pub(crate) lower_path: PathBuf,
    pub(crate) data_path: DataPath,
    passthrough: AtomicU8,
    shadow_warned: [AtomicBool; 3],
    /// The lower dir is LiteFS's own mount: its `.primary` is replaced by design (no warning),
    /// and it has no extended attributes, so xattr requests are answered ENOSYS without a lower
    /// call (`fs_io`, "extended attributes").
    pub(crate) lower_is_litefs: bool,
    pub(crate) waiters: crate::waiters::Waiters,
    pub(crate) started: SystemTime,
    metrics: Arc<FuseMetrics>,
    /// The shared state page this mount attached (closed when the shim goes away).
    page: Option<Arc<crate::state_page::StatePage>>,
    /// Symlink mode over LiteFS: the root's names are links (`name_links`).
    pub(crate) links: Option<crate::name_links::NameLinks>,
    /// The lower root's owner, for the attributes of the shim's own files.
    root_owner: (u32, u32),
}

impl Drop for ShimFs {
    fn drop(&mut self) {
        if let Some(page) = &self.page {
            self.state.detach_page(page);
        }
    }
}

impl ShimFs {
    /// Opens the lower dir and prepares the shim. Fails with a message naming the problem.
    pub fn new(lower: &Path, data_path: DataPath, state: StateHandle) -> io::Result<Self> {
        let lower_path = lower
            .canonicalize()
            .map_err(|e| io::Error::new(e.kind(), format!("lower dir {}: {e}", lower.display())))?;
        let c = CString::new(lower_path.as_os_str().as_bytes()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "lower dir path contains NUL")
        })?;
        let root_fd = sys::openat(
            std::fs::File::open("/")?.as_fd(),
            &c,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| {
            io::Error::new(e.kind(), format!("lower dir {}: {e}", lower_path.display()))
        })?;
        let root_st = sys::fstat(root_fd.as_fd())?;
        let proc_self_fd = sys::openat(
            std::fs::File::open("/")?.as_fd(),
            c"/proc/self/fd",
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| io::Error::new(e.kind(), format!("/proc/self/fd (is /proc mounted?): {e}")))?;
        let lower_is_litefs = crate::mountinfo::is_litefs_mount(&lower_path);
        let data_path = match data_path {
            DataPath::Auto if lower_is_litefs => DataPath::Symlink,
            DataPath::Auto => DataPath::Passthrough,
            chosen => chosen,
        };
        let links = (data_path == DataPath::Symlink && lower_is_litefs)
            .then(|| crate::name_links::NameLinks::new(&lower_path));
        tracing::info!(
            ?data_path,
            lower_is_litefs,
            name_links = links.is_some(),
            "data path chosen"
        );
        let fs = ShimFs {
            inodes: InodeTable::new(root_fd, &root_st),
            handles: HandleTable::default(),
            metrics: state.fuse_metrics(),
            state,
            proc_self_fd,
            lower_path,
            data_path,
            passthrough: AtomicU8::new(PassthroughState::Untested as u8),
            shadow_warned: Default::default(),
            lower_is_litefs,
            waiters: crate::waiters::Waiters::default(),
            started: SystemTime::now(),
            page: None,
            links,
            root_owner: (root_st.st_uid, root_st.st_gid),
        };
        let mut fs = fs;
        fs.page = fs.state.attach_page(&fs.lower_path);
        for f in VirtualFile::ALL {
            let root = fs.inodes.root();
            if with_name(OsStr::new(f.name()), |c| sys::stat_at(root.fd(), c)).is_ok() {
                fs.warn_shadowed(f);
            }
        }
        Ok(fs)
    }

    pub fn lower_path(&self) -> &Path {
        &self.lower_path
    }

    /// The data path in use (`Auto` resolved).
    pub fn data_path(&self) -> DataPath {
        self.data_path
    }

    pub fn state(&self) -> &StateHandle {
        &self.state
    }

    /// The counters of the FUSE requests served over this filesystem (its state handle's).
    pub fn metrics(&self) -> &Arc<FuseMetrics> {
        &self.metrics
    }

    pub fn passthrough_state(&self) -> PassthroughState {
        match self.passthrough.load(Ordering::Relaxed) {
            0 => PassthroughState::Untested,
            1 => PassthroughState::Active,
            _ => PassthroughState::Unavailable,
        }
    }

    pub fn set_passthrough_state(&self, s: PassthroughState, why: &str) {
        let prev = self.passthrough.swap(s as u8, Ordering::Relaxed);
        if prev != s as u8 {
            match s {
                PassthroughState::Active => {
                    tracing::info!("data path: kernel FUSE passthrough active")
                }
                PassthroughState::Unavailable => tracing::warn!(
                    reason = why,
                    "data path: kernel FUSE passthrough unavailable; the shim forwards reads and \
                     writes itself (direct I/O, no page cache)"
                ),
                PassthroughState::Untested => {}
            }
        }
    }

    /// A virtual file's name exists in the lower dir too: said once per file, at warn only
    /// when that is unexpected ([`VirtualFile::shadow_is_expected`]).
    pub(crate) fn warn_shadowed(&self, f: VirtualFile) {
        let i = f as usize;
        if self.shadow_warned[i].swap(true, Ordering::Relaxed) {
            return;
        }
        let (file, lower) = (f.name(), self.lower_path.display());
        if f.shadow_is_expected(self.lower_is_litefs) {
            tracing::debug!(file, %lower, "LiteFS's own {file} is shadowed by the shim's");
        } else {
            tracing::warn!(
                file,
                %lower,
                "the lower dir has its own {file}; the shim's answer shadows it"
            );
        }
    }

    /// Number of inodes and open handles (for leak tests and metrics).
    pub fn counts(&self) -> (usize, usize) {
        (self.inodes.len(), self.handles.len())
    }

    /// For inode `ino`: lock owners holding a lower lock fd, and idle pooled lock fds.
    pub fn lock_fd_counts(&self, ino: u64) -> FsResult<(usize, usize)> {
        Ok(self.inodes.get(ino)?.locks.counts())
    }

    // ----- virtual files -------------------------------------------------------------------

    /// A virtual file at the mount root, by name.
    pub(crate) fn virtual_at(&self, parent: u64, name: &OsStr) -> Option<VirtualFile> {
        if parent != ROOT_ID {
            return None;
        }
        VirtualFile::from_name(name.as_bytes())
    }

    pub(crate) fn virtual_attr(&self, f: VirtualFile) -> FsResult<FileAttr> {
        let snap = self.state.load();
        let contents = snap.contents(f, Instant::now()).ok_or(FsError::NotFound)?;
        let size = contents.len() as u64;
        Ok(self.own_attr(
            f.ino(),
            FileType::RegularFile,
            0o444,
            size,
            snap.published(),
        ))
    }

    /// The attributes of a file the shim makes up (a virtual file, a name link): owned by the
    /// lower root's owner as of the mount, so answering costs no lower call.
    pub(crate) fn own_attr(
        &self,
        ino: u64,
        kind: FileType,
        perm: u16,
        size: u64,
        changed: SystemTime,
    ) -> FileAttr {
        let (uid, gid) = self.root_owner;
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: 0,
            atime: self.started,
            mtime: changed,
            ctime: changed,
            crtime: self.started,
            kind,
            perm,
            nlink: 1,
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Refuses any change to a virtual name at the root (create, remove, rename onto).
    fn refuse_virtual_name(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        match self.virtual_at(parent, name) {
            Some(f) => Err(FsError::PinnedVirtual(f.name())),
            None => Ok(()),
        }
    }

    // ----- lookup and attributes -----------------------------------------------------------

    fn view_for(&self, st: &libc::stat) -> View {
        if self.data_path == DataPath::Symlink && st.st_mode & libc::S_IFMT == libc::S_IFREG {
            View::Symlink
        } else {
            View::Real
        }
    }

    /// Looks `name` up in the lower dir and counts a kernel reference to it.
    fn reference_child(
        &self,
        parent: &Inode,
        name: &OsStr,
        view: Option<View>,
    ) -> FsResult<(Arc<Inode>, libc::stat)> {
        with_name(name, |c| {
            let st = sys::stat_at(parent.fd(), c)?;
            let view = view.unwrap_or_else(|| self.view_for(&st));
            let mut fresh = None;
            let inode = self
                .inodes
                .reference(LowerKey::of(&st, view), || {
                    let fd = sys::open_path(parent.fd(), c)?;
                    let st = sys::fstat(fd.as_fd())?;
                    fresh = Some(st);
                    Ok((fd, st))
                })
                .map_err(|e| match e {
                    FsError::Lower(e) => e,
                    other => io::Error::other(other.to_string()),
                })?;
            Ok((inode, fresh.unwrap_or(st)))
        })
        .map_err(FsError::from)
    }

    pub(crate) fn attr_of(&self, inode: &Inode, st: &libc::stat) -> FsResult<FileAttr> {
        let mut attr = attr_from_stat(inode.id, st);
        if inode.is_symlink_view() {
            attr.kind = FileType::Symlink;
            attr.perm = 0o777;
            attr.size = self.symlink_target(inode)?.len() as u64;
            attr.blocks = 0;
        }
        Ok(attr)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<FileAttr> {
        if let Some(f) = self.virtual_at(parent, name) {
            return self.virtual_attr(f);
        }
        if let Some(attr) = self.link_lookup(parent, name) {
            return Ok(attr);
        }
        let parent = self.inodes.get(parent)?;
        if !parent.is_dir() {
            return Err(FsError::NotDirectory);
        }
        let (inode, st) = self.reference_child(&parent, name, None)?;
        self.attr_of(&inode, &st)
    }

    pub fn forget(&self, ino: u64, nlookup: u64) {
        if VirtualFile::from_ino(ino).is_some() {
            return;
        }
        if self.is_link(ino) {
            return self.link_forget(ino, nlookup);
        }
        // Dropping the last Arc closes the O_PATH fd and any idle lock fds.
        drop(self.inodes.forget(ino, nlookup));
    }

    pub fn getattr(&self, ino: u64) -> FsResult<FileAttr> {
        if let Some(f) = VirtualFile::from_ino(ino) {
            return self.virtual_attr(f);
        }
        if self.is_link(ino) {
            return self.link_getattr(ino);
        }
        let inode = self.inodes.get(ino)?;
        let st = sys::fstat(inode.fd())?;
        self.attr_of(&inode, &st)
    }

    pub fn setattr(&self, ino: u64, set: SetAttr) -> FsResult<FileAttr> {
        if let Some(f) = VirtualFile::from_ino(ino) {
            return Err(if set.size.is_some() {
                FsError::ReadOnlyVirtual(f.name())
            } else {
                FsError::PinnedVirtual(f.name())
            });
        }
        if self.is_link(ino) {
            // A link is the shim's, not LiteFS's: it has nothing to change.
            return Err(FsError::Lower(io::Error::from_raw_os_error(libc::EPERM)));
        }
        let inode = self.inodes.get(ino)?;
        if inode.is_symlink_view() {
            // The view is ours, not a lower symlink: changing it would change the target file.
            return Err(FsError::Lower(io::Error::from_raw_os_error(libc::EPERM)));
        }
        if let Some(mode) = set.mode {
            sys::chmod_fd(self.proc_self_fd.as_fd(), inode.fd(), mode & 0o7777)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::chown_fd(inode.fd(), set.uid, set.gid)?;
        }
        if let Some(size) = set.size {
            self.truncate(&inode, set.fh, size)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let times = [timespec_of(set.atime), timespec_of(set.mtime)];
            sys::utimens_fd(inode.fd(), &times)?;
        }
        let st = sys::fstat(inode.fd())?;
        self.attr_of(&inode, &st)
    }

    fn truncate(&self, inode: &Inode, fh: Option<u64>, size: u64) -> FsResult<()> {
        if let Some(fh) = fh
            && let Ok(handle) = self.handles.get(fh)
            && let Ok(fd) = handle.data_fd()
            && sys::ftruncate(fd, size).is_ok()
        {
            return Ok(());
        }
        let fd = sys::reopen(self.proc_self_fd.as_fd(), inode.fd(), libc::O_WRONLY)?;
        Ok(sys::ftruncate(fd.as_fd(), size)?)
    }

    /// The absolute lower path a symlink view points at.
    pub(crate) fn symlink_target(&self, inode: &Inode) -> FsResult<Vec<u8>> {
        let link = sys::FdName::new(std::os::fd::AsRawFd::as_raw_fd(&inode.fd())).proc_path();
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: valid path and writable buffer.
        let n =
            unsafe { libc::readlink(link.as_cstr().as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error().into());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        if self.is_link(ino) {
            return self.link_target(ino);
        }
        let inode = self.inodes.get(ino)?;
        if inode.is_symlink_view() {
            return self.symlink_target(&inode);
        }
        Ok(sys::readlink_fd(inode.fd())?)
    }

    // ----- creating and removing names -----------------------------------------------------

    /// Runs a creating syscall as the caller, then references the new entry.
    fn create_entry(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        make: impl FnOnce(&Inode, &std::ffi::CStr) -> io::Result<()>,
    ) -> FsResult<FileAttr> {
        self.refuse_virtual_name(parent, name)?;
        let parent = self.inodes.get(parent)?;
        with_name(name, |c| {
            let _ids = FsIdGuard::switch(caller.uid, caller.gid);
            make(&parent, c)
        })?;
        let (inode, st) = self.reference_child(&parent, name, None)?;
        self.attr_of(&inode, &st)
    }

    pub fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> FsResult<FileAttr> {
        self.create_entry(caller, parent, name, |p, c| {
            sys::mknodat(p.fd(), c, mode, rdev as u64)
        })
    }

    pub fn mkdir(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> FsResult<FileAttr> {
        self.create_entry(caller, parent, name, |p, c| sys::mkdirat(p.fd(), c, mode))
    }

    pub fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> FsResult<FileAttr> {
        let target =
            CString::new(target.as_os_str().as_bytes()).map_err(|_| FsError::InvalidArgument)?;
        self.create_entry(caller, parent, name, |p, c| {
            sys::symlinkat(&target, p.fd(), c)
        })
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> FsResult<FileAttr> {
        if let Some(f) = VirtualFile::from_ino(ino) {
            return Err(FsError::PinnedVirtual(f.name()));
        }
        self.refuse_virtual_name(newparent, newname)?;
        let inode = self.inodes.get(ino)?;
        let parent = self.inodes.get(newparent)?;
        with_name(newname, |c| {
            sys::link_fd(self.proc_self_fd.as_fd(), inode.fd(), parent.fd(), c)
        })?;
        let (inode, st) = self.reference_child(&parent, newname, Some(inode.key.view))?;
        self.attr_of(&inode, &st)
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.refuse_virtual_name(parent, name)?;
        let parent = self.inodes.get(parent)?;
        Ok(with_name(name, |c| sys::unlinkat(parent.fd(), c, 0))?)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.refuse_virtual_name(parent, name)?;
        let parent = self.inodes.get(parent)?;
        Ok(with_name(name, |c| {
            sys::unlinkat(parent.fd(), c, libc::AT_REMOVEDIR)
        })?)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        self.refuse_virtual_name(parent, name)?;
        self.refuse_virtual_name(newparent, newname)?;
        self.refuse_link_rename(parent, newparent)?;
        let from = self.inodes.get(parent)?;
        let to = self.inodes.get(newparent)?;
        Ok(with_name(name, |old| {
            with_name(newname, |new| {
                sys::renameat2(from.fd(), old, to.fd(), new, flags)
            })
        })?)
    }

    pub fn statfs(&self, ino: u64) -> FsResult<libc::statvfs> {
        let inode = if VirtualFile::from_ino(ino).is_some() {
            self.inodes.root()
        } else {
            self.inodes.get(ino)?
        };
        Ok(sys::fstatfs(inode.fd())?)
    }
}
