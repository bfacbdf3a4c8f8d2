//! The FUSE adapter: each handler calls the core ([`ShimFs`]) and replies, or maps the error.
//! No filesystem logic lives here.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};

use crate::error::FsError;
use crate::fs::{Caller, PassthroughState, SetAttr, ShimFs, TimeSpec};
use crate::fs_io::{Opened, XattrReply};
use crate::rangeset::{EOF, UNLCK};
use crate::sys::LockRange;

/// Lower files change under us (LiteFS applies replicated pages and rewrites `-shm` itself), so
/// the kernel must not cache their entries or attributes: every TTL is zero.
const TTL: Duration = Duration::ZERO;
const GENERATION: Generation = Generation(0);

pub struct FuseAdapter {
    fs: Arc<ShimFs>,
}

impl FuseAdapter {
    pub fn new(fs: Arc<ShimFs>) -> Self {
        FuseAdapter { fs }
    }
}

fn fail(op: &'static str, e: &FsError) -> Errno {
    if e.is_expected() {
        tracing::trace!(op, error = %e);
    } else {
        tracing::warn!(op, error = %e, "request failed");
    }
    e.errno()
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn time_spec(t: Option<TimeOrNow>) -> Option<TimeSpec> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSpec::Now,
        TimeOrNow::SpecificTime(t) => TimeSpec::At(t),
    })
}

/// The kernel refuses a lock reply whose end is past `OFFSET_MAX`.
fn lock_end(end: u64) -> u64 {
    if end == EOF { i64::MAX as u64 } else { end }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Without FUSE_POSIX_LOCKS the kernel keeps locks to itself: SQLite would still work
        // through the mount, and LiteFS would never see a lock. Refuse to run like that.
        config
            .add_capabilities(InitFlags::FUSE_POSIX_LOCKS)
            .map_err(|_| {
                io::Error::other(
                    "the kernel does not offer FUSE_POSIX_LOCKS: locks could not reach LiteFS",
                )
            })?;
        let caps = config.capabilities();
        for optional in [
            InitFlags::FUSE_FLOCK_LOCKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
        ] {
            if caps.contains(optional) {
                let _ = config.add_capabilities(optional);
            }
        }
        if self.fs.passthrough_state() == PassthroughState::Unavailable {
            // Turned off by the mount options: do not ask the kernel for it either.
        } else if caps.contains(InitFlags::FUSE_PASSTHROUGH) {
            let _ = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH);
            // 2 allows a lower dir that is itself stacked once (LiteFS's FUSE, or overlayfs).
            let _ = config.set_max_stack_depth(2);
        } else {
            self.fs.set_passthrough_state(
                PassthroughState::Unavailable,
                "the kernel does not offer FUSE_PASSTHROUGH (needs Linux >= 6.9)",
            );
        }
        if !caps.contains(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            && !caps.contains(InitFlags::FUSE_PASSTHROUGH)
        {
            tracing::warn!(
                "the kernel offers neither passthrough nor mmap on direct I/O: SQLite WAL mode will fail"
            );
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, GENERATION),
            Err(e) => reply.error(fail("lookup", &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(fail("getattr", &e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_spec(atime),
            mtime: time_spec(mtime),
            fh: fh.map(|f| f.0),
        };
        match self.fs.setattr(ino.0, set) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(fail("setattr", &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(fail("readlink", &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self.fs.mknod(caller(req), parent.0, name, mode, rdev) {
            Ok(attr) => reply.entry(&TTL, &attr, GENERATION),
            Err(e) => reply.error(fail("mknod", &e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.fs.mkdir(caller(req), parent.0, name, mode) {
            Ok(attr) => reply.entry(&TTL, &attr, GENERATION),
            Err(e) => reply.error(fail("mkdir", &e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("unlink", &e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("rmdir", &e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self.fs.symlink(caller(req), parent.0, link_name, target) {
            Ok(attr) => reply.entry(&TTL, &attr, GENERATION),
            Err(e) => reply.error(fail("symlink", &e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .fs
            .rename(parent.0, name, newparent.0, newname, flags.bits())
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("rename", &e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.fs.link(ino.0, newparent.0, newname) {
            Ok(attr) => reply.entry(&TTL, &attr, GENERATION),
            Err(e) => reply.error(fail("link", &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let backer = |fd: std::os::fd::BorrowedFd<'_>| reply.open_backing(fd);
        match self.fs.open(ino.0, flags.0, Some(&backer)) {
            Ok(Opened::Passthrough { fh, backing }) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing.id)
            }
            Ok(Opened::DirectIo { fh }) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
            ),
            Err(e) => reply.error(fail("open", &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.fs.read(fh.0, offset, size, |r| match r {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(fail("read", &e)),
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fail("write", &e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.fs.flush(ino.0, lock_owner.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("flush", &e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.release(ino.0, fh.0, lock_owner.map(|o| o.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("release", &e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("fsync", &e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(fail("opendir", &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.fs.readdir(fh.0, offset) {
            Ok(entries) => entries,
            Err(e) => return reply.error(fail("readdir", &e)),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(e.ino),
                i as u64 + 1,
                e.kind,
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.fs.readdir(fh.0, offset) {
            Ok(entries) => entries,
            Err(e) => return reply.error(fail("readdirplus", &e)),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            // An entry removed since the snapshot is skipped, as a fresh listing would.
            let Ok(attr) = self.fs.listing_attr(ino.0, e) else {
                continue;
            };
            if reply.add(
                INodeNo(attr.ino.0),
                i as u64 + 1,
                OsStr::from_bytes(&e.name),
                &TTL,
                &attr,
                GENERATION,
            ) {
                // Not sent: the kernel will not count this reference, so neither do we.
                if !e.is_dot_or_dotdot() {
                    self.fs.forget(attr.ino.0, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.fsyncdir(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("fsyncdir", &e)),
        }
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs(ino.0) {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(fail("statfs", &e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.fs.setxattr(ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("setxattr", &e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name, size) {
            Ok(XattrReply::Size(n)) => reply.size(n),
            Ok(XattrReply::Data(d)) => reply.data(&d),
            Err(e) => reply.error(fail("getxattr", &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0, size) {
            Ok(XattrReply::Size(n)) => reply.size(n),
            Ok(XattrReply::Data(d)) => reply.data(&d),
            Err(e) => reply.error(fail("listxattr", &e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("removexattr", &e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.fs.access(ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("access", &e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let backer = |fd: std::os::fd::BorrowedFd<'_>| reply.open_backing(fd);
        match self
            .fs
            .create(caller(req), parent.0, name, mode, flags, Some(&backer))
        {
            Ok((attr, Opened::Passthrough { fh, backing })) => reply.created_passthrough(
                &TTL,
                &attr,
                GENERATION,
                FileHandle(fh),
                FopenFlags::empty(),
                &backing.id,
            ),
            Ok((attr, Opened::DirectIo { fh })) => reply.created(
                &TTL,
                &attr,
                GENERATION,
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
            ),
            Err(e) => reply.error(fail("create", &e)),
        }
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        match self
            .fs
            .getlk(ino.0, lock_owner.0, LockRange { typ, start, end })
        {
            Ok(Some(c)) => reply.locked(c.start, lock_end(c.end), c.typ, 0),
            Ok(None) => reply.locked(start, end, UNLCK, 0),
            Err(e) => reply.error(fail("getlk", &e)),
        }
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let range = LockRange { typ, start, end };
        if !sleep || typ == UNLCK {
            return match self.fs.setlk(ino.0, lock_owner.0, range) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fail("setlk", &e)),
            };
        }
        let pending = match self.fs.prepare_wait(ino.0, lock_owner.0, range) {
            Ok(p) => p,
            Err(e) => return reply.error(fail("setlkw", &e)),
        };
        // The reply travels with the waiter thread; on a spawn failure it comes back unused.
        let slot = Arc::new(parking_lot::Mutex::new(Some(reply)));
        let for_thread = slot.clone();
        let spawned = self.fs.waiters.spawn(req.pid(), pending, move |r| {
            if let Some(reply) = for_thread.lock().take() {
                match r {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(fail("setlkw", &e)),
                }
            }
        });
        if let Err(e) = spawned
            && let Some(reply) = slot.lock().take()
        {
            reply.error(fail("setlkw", &e));
        }
    }

    /// No ioctl is forwarded: the lower file's ioctls are not the shim's to expose, and
    /// libraries probe with some (Python's `open` asks TCGETS to see if it is a terminal).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.fs.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("fallocate", &e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(fail("lseek", &e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self.fs.copy_file_range(
            fh_in.0,
            offset_in,
            fh_out.0,
            offset_out,
            len,
            flags.bits() as u32,
        ) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fail("copy_file_range", &e)),
        }
    }
}
