//! The shim's core, continued: opening files (kernel passthrough or direct I/O), data, locks,
//! directory listings and extended attributes.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Instant;

use fuser::{BackingId, FileAttr, FileType};

use crate::dir::{self, DirEntry};
use crate::error::{FsError, FsResult};
use crate::fs::{Caller, DataPath, PassthroughState, ShimFs, attr_from_stat};
use crate::handles::{Backing, Handle, HandleKind};
use crate::inode::{Inode, LowerKey, ROOT_ID, View};
use crate::locks::PendingWait;
use crate::sys::{self, FdName, FsIdGuard, LockRange, with_name};
use crate::virtual_files::VirtualFile;

/// Registers a lower fd with the kernel for passthrough (`ReplyOpen::open_backing`).
pub type BackingOpener<'a> = &'a dyn Fn(BorrowedFd<'_>) -> io::Result<BackingId>;

/// How an open file is served.
#[derive(Debug)]
pub enum Opened {
    /// Reads, writes and mmap go straight to `backing` in the kernel.
    Passthrough { fh: u64, backing: Arc<Backing> },
    /// The shim serves reads and writes itself, with the page cache bypassed.
    DirectIo { fh: u64 },
}

enum BackingError {
    /// The lower file could not be opened: the open fails with this error.
    Lower(io::Error),
    /// The kernel refused passthrough: fall back to direct I/O.
    Kernel(io::Error),
}

fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}

/// Flags the shim must not pass to a reopen of an existing file.
const CREATE_ONLY_FLAGS: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY;

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl ShimFs {
    fn reopen(&self, inode: &Inode, flags: i32) -> io::Result<OwnedFd> {
        sys::reopen(self.proc_self_fd.as_fd(), inode.fd(), flags)
    }

    /// A fresh read-write (else read-only) fd on the inode, for locks and backing files.
    fn reopen_rw(&self, inode: &Inode) -> io::Result<(OwnedFd, bool)> {
        match self.reopen(inode, libc::O_RDWR) {
            Ok(fd) => Ok((fd, false)),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EACCES | libc::EROFS | libc::EPERM | libc::ETXTBSY)
                ) =>
            {
                Ok((self.reopen(inode, libc::O_RDONLY)?, true))
            }
            Err(e) => Err(e),
        }
    }

    fn backing_for(
        &self,
        inode: &Inode,
        backer: BackingOpener<'_>,
    ) -> Result<Arc<Backing>, BackingError> {
        let mut st = inode.open.lock();
        if let Some(b) = st.backing.upgrade() {
            return Ok(b);
        }
        let (file, read_only) = self.reopen_rw(inode).map_err(BackingError::Lower)?;
        let id = backer(file.as_fd()).map_err(BackingError::Kernel)?;
        let b = Arc::new(Backing {
            file,
            id,
            read_only,
        });
        st.backing = Arc::downgrade(&b);
        Ok(b)
    }

    /// Tries passthrough for `inode`; `None` means "use direct I/O".
    fn try_passthrough(
        &self,
        inode: &Arc<Inode>,
        flags: i32,
        backer: Option<BackingOpener<'_>>,
    ) -> FsResult<Option<Opened>> {
        let Some(backer) = backer else {
            return Ok(None);
        };
        if self.passthrough_state() == PassthroughState::Unavailable {
            return Ok(None);
        }
        match self.backing_for(inode, backer) {
            Ok(backing) if backing.read_only && wants_write(flags) => Ok(None),
            Ok(backing) => {
                self.set_passthrough_state(PassthroughState::Active, "");
                let fh = self.handles.insert(Handle {
                    inode: Some(inode.clone()),
                    kind: HandleKind::Passthrough(backing.clone()),
                });
                Ok(Some(Opened::Passthrough { fh, backing }))
            }
            Err(BackingError::Kernel(e)) => {
                self.set_passthrough_state(PassthroughState::Unavailable, &e.to_string());
                Ok(None)
            }
            Err(BackingError::Lower(e)) => Err(e.into()),
        }
    }

    fn open_virtual(&self, f: VirtualFile, flags: i32) -> FsResult<Opened> {
        if wants_write(flags) || flags & libc::O_TRUNC != 0 {
            return Err(FsError::ReadOnlyVirtual(f.name()));
        }
        self.metrics().virtual_open(f);
        let contents = self
            .state
            .load()
            .contents(f, Instant::now())
            .ok_or(FsError::NotFound)?;
        let fh = self.handles.insert(Handle {
            inode: None,
            kind: HandleKind::Virtual(contents),
        });
        Ok(Opened::DirectIo { fh })
    }

    pub fn open(
        &self,
        ino: u64,
        flags: i32,
        backer: Option<BackingOpener<'_>>,
    ) -> FsResult<Opened> {
        if let Some(f) = VirtualFile::from_ino(ino) {
            return self.open_virtual(f, flags);
        }
        let inode = self.inodes.get(ino)?;
        if inode.is_dir() {
            return Err(FsError::IsDirectory);
        }
        if let Some(opened) = self.try_passthrough(&inode, flags, backer)? {
            return Ok(opened);
        }
        let fd = self.reopen(&inode, flags & !CREATE_ONLY_FLAGS)?;
        let fh = self.handles.insert(Handle {
            inode: Some(inode),
            kind: HandleKind::Direct(fd),
        });
        Ok(Opened::DirectIo { fh })
    }

    /// Creates and opens a regular file. In symlink data-path mode the returned entry is still a
    /// real file, so this first connection runs through the shim until it closes; later lookups
    /// of the name show the symlink view.
    pub fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        backer: Option<BackingOpener<'_>>,
    ) -> FsResult<(FileAttr, Opened)> {
        if let Some(f) = self.virtual_at(parent, name) {
            return Err(FsError::PinnedVirtual(f.name()));
        }
        let parent = self.inodes.get(parent)?;
        let created = with_name(name, |c| {
            let _ids = FsIdGuard::switch(caller.uid, caller.gid);
            sys::openat(parent.fd(), c, flags | libc::O_CREAT, mode)
        })?;
        let st = sys::fstat(created.as_fd())?;
        let inode = self.inodes.reference(LowerKey::of(&st, View::Real), || {
            Ok((
                sys::reopen(self.proc_self_fd.as_fd(), created.as_fd(), libc::O_PATH)?,
                st,
            ))
        })?;
        let attr = attr_from_stat(inode.id, &st);
        let opened = match self.try_passthrough(&inode, flags, backer) {
            Ok(Some(opened)) => opened,
            Ok(None) => {
                let fh = self.handles.insert(Handle {
                    inode: Some(inode.clone()),
                    kind: HandleKind::Direct(created),
                });
                Opened::DirectIo { fh }
            }
            Err(e) => {
                self.forget(inode.id, 1);
                return Err(e);
            }
        };
        Ok((attr, opened))
    }

    /// Calls `f` with the bytes read (only reached without passthrough, or for virtual files).
    pub fn read(&self, fh: u64, offset: u64, size: u32, f: impl FnOnce(FsResult<&[u8]>)) {
        let handle = match self.handles.get(fh) {
            Ok(h) => h,
            Err(e) => return f(Err(e)),
        };
        if let HandleKind::Virtual(contents) = &handle.kind {
            let start = (offset as usize).min(contents.len());
            let end = start.saturating_add(size as usize).min(contents.len());
            return f(Ok(&contents[start..end]));
        }
        let fd = match handle.data_fd() {
            Ok(fd) => fd,
            Err(e) => return f(Err(e)),
        };
        READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            match sys::pread(fd, &mut buf[..size as usize], offset) {
                Ok(n) => f(Ok(&buf[..n])),
                Err(e) => f(Err(e.into())),
            }
        })
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let handle = self.handles.get(fh)?;
        if let HandleKind::Virtual(_) = handle.kind {
            return Err(FsError::ReadOnlyVirtual("virtual file"));
        }
        Ok(sys::pwrite(handle.data_fd()?, data, offset)? as u32)
    }

    /// A process closed a descriptor for this file: its POSIX locks on the file go.
    pub fn flush(&self, ino: u64, owner: u64) -> FsResult<()> {
        if VirtualFile::from_ino(ino).is_some() {
            return Ok(());
        }
        self.inodes.get(ino)?.locks.release_owner(owner);
        Ok(())
    }

    pub fn release(&self, ino: u64, fh: u64, flock_owner: Option<u64>) -> FsResult<()> {
        let handle = self.handles.remove(fh);
        if let (Some(owner), Some(inode)) =
            (flock_owner, handle.as_ref().and_then(|h| h.inode.as_ref()))
        {
            inode.locks.release_owner(owner);
        }
        if handle.is_none() && VirtualFile::from_ino(ino).is_none() {
            return Err(FsError::UnknownHandle(fh));
        }
        Ok(())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let handle = self.handles.get(fh)?;
        if let HandleKind::Virtual(_) = handle.kind {
            return Ok(());
        }
        Ok(sys::fsync(handle.data_fd()?, datasync)?)
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        let handle = self.handles.get(fh)?;
        Ok(sys::fallocate(handle.data_fd()?, mode, offset, length)?)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        let handle = self.handles.get(fh)?;
        if let HandleKind::Virtual(contents) = &handle.kind {
            return match whence {
                libc::SEEK_DATA if (offset as usize) < contents.len() => Ok(offset),
                libc::SEEK_HOLE if (offset as usize) <= contents.len() => Ok(contents.len() as i64),
                _ => Err(FsError::Lower(io::Error::from_raw_os_error(libc::ENXIO))),
            };
        }
        Ok(sys::lseek(handle.data_fd()?, offset, whence)?)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        flags: u32,
    ) -> FsResult<u32> {
        let src = self.handles.get(fh_in)?;
        let dst = self.handles.get(fh_out)?;
        let len = len.min(u32::MAX as u64 & !0xfff);
        Ok(
            sys::copy_file_range(src.data_fd()?, off_in, dst.data_fd()?, off_out, len, flags)?
                as u32,
        )
    }

    // ----- locks -----------------------------------------------------------------------------

    fn lock_inode(&self, ino: u64) -> FsResult<Arc<Inode>> {
        if VirtualFile::from_ino(ino).is_some() {
            return Err(FsError::NotSupported);
        }
        self.inodes.get(ino)
    }

    fn lock_opener<'a>(&'a self, inode: &'a Inode) -> impl Fn() -> io::Result<OwnedFd> + 'a {
        move || self.reopen_rw(inode).map(|(fd, _)| fd)
    }

    pub fn getlk(&self, ino: u64, owner: u64, range: LockRange) -> FsResult<Option<LockRange>> {
        let inode = self.lock_inode(ino)?;
        inode.locks.getlk(owner, range, &self.lock_opener(&inode))
    }

    pub fn setlk(&self, ino: u64, owner: u64, range: LockRange) -> FsResult<()> {
        let inode = self.lock_inode(ino)?;
        if !self.write_gate(range)? {
            return inode.locks.setlk(owner, range, &self.lock_opener(&inode));
        }
        inode
            .locks
            .setlk_checked(owner, range, &self.lock_opener(&inode), &|| {
                self.state.load().write_allowed()
            })
    }

    /// The write gate (docs/architecture.md, "Data-path modes"): SQLite's write locks pass
    /// through the shim in passthrough mode, so the shim refuses them while this node's
    /// `primary` answer does not hold and its LiteFS may not have demoted yet (up to
    /// [`GATE_WINDOW`](crate::virtual_files::GATE_WINDOW_NS) after that answer ended). A node
    /// frozen and thawed after another became primary then starts no write transaction through
    /// the mount, whatever its LiteFS still believes: nothing races a kill. A node that was
    /// never primary (or not for a long time) is left to LiteFS, which refuses a replica's
    /// writes itself, so its readers can still take the WAL write lock for a recovery.
    ///
    /// The locks: the WAL write lock (byte 120 of `-shm`) and, in rollback mode, RESERVED
    /// (0x40000001) and EXCLUSIVE (the SHARED range from 0x40000002) of the database.
    ///
    /// `Ok(true)`: a gated lock that may go on to LiteFS; the caller checks the gate again once
    /// LiteFS has granted it (a request can pass here, then wait in LiteFS across a freeze).
    fn write_gate(&self, range: LockRange) -> FsResult<bool> {
        const WAL_WRITE: u64 = 120;
        const RESERVED: u64 = 0x4000_0001;
        const SHARED_FIRST: u64 = 0x4000_0002;
        if range.typ != libc::F_WRLCK {
            return Ok(false);
        }
        let covers = |b: u64| range.start <= b && b <= range.end;
        let gated =
            (covers(WAL_WRITE) && range.end < 128) || covers(RESERVED) || covers(SHARED_FIRST);
        if !gated {
            return Ok(false);
        }
        let snapshot = self.state.load();
        if snapshot.write_allowed() {
            return Ok(true);
        }
        tracing::debug!(
            role = snapshot.role().as_str(),
            start = range.start,
            "write lock refused: this node's primary answer ended and its LiteFS may not have \
             demoted yet; the app must write on the primary"
        );
        Err(FsError::NotPrimary)
    }

    /// A blocking lock request, to be waited for off the FUSE worker (see `waiters.rs`).
    pub fn prepare_wait(&self, ino: u64, owner: u64, range: LockRange) -> FsResult<PendingWait> {
        let inode = self.lock_inode(ino)?;
        let gated = self.write_gate(range)?;
        let pending = inode
            .locks
            .prepare_wait(owner, range, &self.lock_opener(&inode))?;
        if !gated {
            return Ok(pending);
        }
        let state = self.state.clone();
        Ok(pending.with_recheck(Arc::new(move || state.load().write_allowed())))
    }

    // ----- directories -----------------------------------------------------------------------

    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        if VirtualFile::from_ino(ino).is_some() {
            return Err(FsError::NotDirectory);
        }
        let inode = self.inodes.get(ino)?;
        if !inode.is_dir() {
            return Err(FsError::NotDirectory);
        }
        let fd = self.reopen(&inode, libc::O_RDONLY | libc::O_DIRECTORY)?;
        Ok(self.handles.insert(Handle {
            inode: Some(inode),
            kind: HandleKind::Dir {
                fd,
                entries: Default::default(),
            },
        }))
    }

    /// The listing for a READDIR at `offset` (an index into the snapshot). Offset 0 takes a new
    /// snapshot, so `rewinddir` sees changes.
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Arc<[DirEntry]>> {
        let handle = self.handles.get(fh)?;
        let HandleKind::Dir { fd, entries } = &handle.kind else {
            return Err(FsError::NotDirectory);
        };
        let mut entries = entries.lock();
        if offset == 0 || entries.is_none() {
            let inode = handle.inode.as_ref().ok_or(FsError::NotDirectory)?;
            *entries = Some(self.snapshot_dir(inode, fd.as_fd())?);
        }
        Ok(entries.clone().expect("set above"))
    }

    fn snapshot_dir(&self, dir: &Inode, fd: BorrowedFd<'_>) -> FsResult<Arc<[DirEntry]>> {
        let mut list = dir::read_all(fd)?;
        let dev = dir.key.dev;
        let symlink_mode = self.data_path == DataPath::Symlink;
        list.retain_mut(|e| {
            if dir.id == ROOT_ID
                && let Some(f) = VirtualFile::from_name(&e.name)
            {
                self.warn_shadowed(f);
                return false;
            }
            if dir.id == ROOT_ID
                && e.kind != FileType::Directory
                && let Some(id) = self.link_listed(&e.name)
            {
                e.kind = FileType::Symlink;
                e.ino = id;
                return true;
            }
            let view = if symlink_mode && e.kind == FileType::RegularFile {
                e.kind = FileType::Symlink;
                View::Symlink
            } else {
                View::Real
            };
            e.ino = self.inodes.id_for(LowerKey {
                dev,
                ino: e.ino,
                view,
            });
            true
        });
        if dir.id == ROOT_ID {
            let snap = self.state.load();
            for f in VirtualFile::ALL {
                if snap.exists(f) {
                    list.push(DirEntry {
                        ino: f.ino(),
                        kind: FileType::RegularFile,
                        name: f.name().as_bytes().into(),
                    });
                }
            }
        }
        Ok(list.into())
    }

    /// READDIRPLUS: the attributes of a listed entry, counting a kernel reference to it
    /// (except for "." and "..", which the kernel does not count).
    pub fn listing_attr(&self, dir_ino: u64, entry: &DirEntry) -> FsResult<FileAttr> {
        if entry.is_dot_or_dotdot() {
            let mut attr = self.getattr(dir_ino)?;
            attr.ino = fuser::INodeNo(entry.ino);
            return Ok(attr);
        }
        self.lookup(dir_ino, OsStr::from_bytes(&entry.name))
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.remove(fh);
    }

    pub fn fsyncdir(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let handle = self.handles.get(fh)?;
        Ok(sys::fsync(handle.data_fd()?, datasync)?)
    }

    // ----- extended attributes ---------------------------------------------------------------

    /// Over LiteFS every xattr request fails with [`FsError::NoXattrs`] before a lower call:
    /// LiteFS answers them all with ENOSYS (v0.5.14's FUSE nodes), and the ENOSYS passed on
    /// makes the kernel stop asking the shim too. Without it the kernel asked for
    /// `security.capability` before every write to the database, 7–14 times per Django request
    /// (docs/decisions.md, "No xattr requests over LiteFS").
    fn xattr_inode(&self, ino: u64) -> FsResult<Option<Arc<Inode>>> {
        if self.lower_is_litefs {
            return Err(FsError::NoXattrs);
        }
        if VirtualFile::from_ino(ino).is_some() {
            return Ok(None);
        }
        let inode = self.inodes.get(ino)?;
        if inode.is_symlink_view() {
            return Err(FsError::NotSupported);
        }
        Ok(Some(inode))
    }

    /// `size == 0` asks for the value's size. Returns the value, or its size.
    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> FsResult<XattrReply> {
        let Some(inode) = self.xattr_inode(ino)? else {
            return Err(FsError::Lower(io::Error::from_raw_os_error(libc::ENODATA)));
        };
        let path = FdName::new(inode.fd().as_raw_fd()).proc_path();
        let mut buf = vec![0u8; size as usize];
        let n = with_name(name, |c| sys::getxattr(path.as_cstr(), c, &mut buf))?;
        Ok(if size == 0 {
            XattrReply::Size(n as u32)
        } else {
            buf.truncate(n);
            XattrReply::Data(buf)
        })
    }

    pub fn listxattr(&self, ino: u64, size: u32) -> FsResult<XattrReply> {
        let Some(inode) = self.xattr_inode(ino)? else {
            return Ok(if size == 0 {
                XattrReply::Size(0)
            } else {
                XattrReply::Data(Vec::new())
            });
        };
        let path = FdName::new(inode.fd().as_raw_fd()).proc_path();
        let mut buf = vec![0u8; size as usize];
        let n = sys::listxattr(path.as_cstr(), &mut buf)?;
        Ok(if size == 0 {
            XattrReply::Size(n as u32)
        } else {
            buf.truncate(n);
            XattrReply::Data(buf)
        })
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        let Some(inode) = self.xattr_inode(ino)? else {
            return Err(FsError::PinnedVirtual("virtual file"));
        };
        let path = FdName::new(inode.fd().as_raw_fd()).proc_path();
        Ok(with_name(name, |c| {
            sys::setxattr(path.as_cstr(), c, value, flags)
        })?)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        let Some(inode) = self.xattr_inode(ino)? else {
            return Err(FsError::PinnedVirtual("virtual file"));
        };
        let path = FdName::new(inode.fd().as_raw_fd()).proc_path();
        Ok(with_name(name, |c| sys::removexattr(path.as_cstr(), c))?)
    }

    /// ACCESS is only sent without `default_permissions`; the kernel checks modes otherwise.
    pub fn access(&self, ino: u64, mask: i32) -> FsResult<()> {
        if let Some(f) = VirtualFile::from_ino(ino) {
            if mask & libc::W_OK != 0 {
                return Err(FsError::ReadOnlyVirtual(f.name()));
            }
            return Ok(());
        }
        self.inodes.get(ino).map(drop)
    }
}

#[derive(Debug)]
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}
