//! The FUSE adapter: each handler calls the core ([`ShimFs`]) and replies, or maps the error.
//! No filesystem logic lives here.
//!
//! Every handler opens a debug-level span named for the operation, with the fields that
//! identify the request (`req`, `ino` or `parent`, `fh`, `name`), and counts the request in
//! [`FuseMetrics`]. A disabled span costs one level check: its fields are neither evaluated nor
//! formatted, and nothing is allocated. The count is two clock reads (start, end) and up to
//! three relaxed adds.

/// Starts serving one request of `Op::$op`: enters its span (named for the operation, with
/// the request id and the given fields) and starts its count. Evaluates to
/// `(span guard, InFlight)`; bind both (`let (_span, mut t) = …`) so they live to the end.
macro_rules! serve {
    ($self:ident, $op:ident, $req:expr $(, $($field:tt)+)?) => {{
        const OP: Op = Op::$op;
        (
            tracing::debug_span!(OP.name(), req = $req.unique().0 $(, $($field)+)?).entered(),
            $self.metrics.start(OP),
        )
    }};
}

mod init;
mod lock_wait;
mod reply;

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags,
    INodeNo, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::fs::{SetAttr, ShimFs};
use crate::metrics::{FuseMetrics, Op};
use crate::rangeset::UNLCK;
use crate::sys::LockRange;
use reply::{GENERATION, caller, fail, fill_dir, fill_dir_plus, lock_end, time_spec};

pub struct FuseAdapter {
    fs: Arc<ShimFs>,
    metrics: Arc<FuseMetrics>,
}

impl FuseAdapter {
    pub fn new(fs: Arc<ShimFs>) -> Self {
        let metrics = fs.metrics().clone();
        FuseAdapter { fs, metrics }
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        init::negotiate(&self.fs, config)
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (_span, mut t) = serve!(self, Lookup, req, parent = parent.0, name = ?name);
        match self.fs.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&self.fs.cache_ttl(attr.ino.0), &attr, GENERATION),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        let (_span, _t) = serve!(self, Forget, req, ino = ino.0, nlookup);
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let (_span, mut t) = serve!(self, Getattr, req, ino = ino.0, fh = fh.map(|f| f.0));
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&self.fs.cache_ttl(attr.ino.0), &attr),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
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
        let (_span, mut t) = serve!(self, Setattr, req, ino = ino.0, fh = fh.map(|f| f.0));
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
            Ok(attr) => reply.attr(&self.fs.cache_ttl(attr.ino.0), &attr),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let (_span, mut t) = serve!(self, Readlink, req, ino = ino.0);
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(fail(&mut t, &e)),
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
        let (_span, mut t) = serve!(self, Mknod, req, parent = parent.0, name = ?name);
        match self.fs.mknod(caller(req), parent.0, name, mode, rdev) {
            Ok(attr) => reply.entry(&self.fs.cache_ttl(attr.ino.0), &attr, GENERATION),
            Err(e) => reply.error(fail(&mut t, &e)),
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
        let (_span, mut t) = serve!(self, Mkdir, req, parent = parent.0, name = ?name);
        match self.fs.mkdir(caller(req), parent.0, name, mode) {
            Ok(attr) => reply.entry(&self.fs.cache_ttl(attr.ino.0), &attr, GENERATION),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (_span, mut t) = serve!(self, Unlink, req, parent = parent.0, name = ?name);
        match self.fs.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (_span, mut t) = serve!(self, Rmdir, req, parent = parent.0, name = ?name);
        match self.fs.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(&mut t, &e)),
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
        let (_span, mut t) = serve!(self, Symlink, req, parent = parent.0, name = ?link_name);
        match self.fs.symlink(caller(req), parent.0, link_name, target) {
            Ok(attr) => reply.entry(&self.fs.cache_ttl(attr.ino.0), &attr, GENERATION),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (_span, mut t) = serve!(
            self, Rename, req, parent = parent.0, name = ?name, newparent = newparent.0,
            newname = ?newname
        );
        match self
            .fs
            .rename(parent.0, name, newparent.0, newname, flags.bits())
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (_span, mut t) = serve!(
            self, Link, req, ino = ino.0, newparent = newparent.0, newname = ?newname
        );
        match self.fs.link(ino.0, newparent.0, newname) {
            Ok(attr) => reply.entry(&self.fs.cache_ttl(attr.ino.0), &attr, GENERATION),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (_span, mut t) = serve!(self, Open, req, ino = ino.0);
        let backer = |fd: std::os::fd::BorrowedFd<'_>| reply.open_backing(fd);
        match self.fs.open(ino.0, flags.0, Some(&backer)) {
            Ok(opened) => reply::opened(reply, opened),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (_span, mut t) = serve!(self, Read, req, ino = ino.0, fh = fh.0, offset, size);
        self.fs.read(fh.0, offset, size, |r| match r {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(fail(&mut t, &e)),
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (_span, mut t) = serve!(
            self,
            Write,
            req,
            ino = ino.0,
            fh = fh.0,
            offset,
            size = data.len()
        );
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let (_span, mut t) = serve!(self, Flush, req, ino = ino.0, fh = fh.0);
        match self.fs.flush(ino.0, lock_owner.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let (_span, mut t) = serve!(self, Release, req, ino = ino.0, fh = fh.0);
        match self.fs.release(ino.0, fh.0, lock_owner.map(|o| o.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let (_span, mut t) = serve!(self, Fsync, req, ino = ino.0, fh = fh.0, datasync);
        match self.fs.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (_span, mut t) = serve!(self, Opendir, req, ino = ino.0);
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (_span, mut t) = serve!(self, Readdir, req, ino = ino.0, fh = fh.0, offset);
        match self.fs.readdir(fh.0, offset) {
            Ok(entries) => {
                fill_dir(&entries, offset, &mut reply);
                reply.ok();
            }
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (_span, mut t) = serve!(self, Readdirplus, req, ino = ino.0, fh = fh.0, offset);
        match self.fs.readdir(fh.0, offset) {
            Ok(entries) => {
                fill_dir_plus(&self.fs, ino.0, &entries, offset, &mut reply);
                reply.ok();
            }
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let (_span, _t) = serve!(self, Releasedir, req, ino = ino.0, fh = fh.0);
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let (_span, mut t) = serve!(self, Fsyncdir, req, ino = ino.0, fh = fh.0, datasync);
        match self.fs.fsyncdir(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let (_span, mut t) = serve!(self, Statfs, req, ino = ino.0);
        match self.fs.statfs(ino.0) {
            Ok(st) => reply::statfs(reply, &st),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (_span, mut t) = serve!(self, Setxattr, req, ino = ino.0, name = ?name);
        match self.fs.setxattr(ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let (_span, mut t) = serve!(self, Getxattr, req, ino = ino.0, name = ?name);
        match self.fs.getxattr(ino.0, name, size) {
            Ok(x) => reply::xattr(reply, x),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (_span, mut t) = serve!(self, Listxattr, req, ino = ino.0);
        match self.fs.listxattr(ino.0, size) {
            Ok(x) => reply::xattr(reply, x),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (_span, mut t) = serve!(self, Removexattr, req, ino = ino.0, name = ?name);
        match self.fs.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let (_span, mut t) = serve!(self, Access, req, ino = ino.0);
        match self.fs.access(ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(&mut t, &e)),
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
        let (_span, mut t) = serve!(self, Create, req, parent = parent.0, name = ?name);
        let backer = |fd: std::os::fd::BorrowedFd<'_>| reply.open_backing(fd);
        match self
            .fs
            .create(caller(req), parent.0, name, mode, flags, Some(&backer))
        {
            Ok((attr, opened)) => reply::created(reply, &attr, opened),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn getlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        let (_span, mut t) = serve!(self, Getlk, req, ino = ino.0, fh = fh.0);
        match self
            .fs
            .getlk(ino.0, lock_owner.0, LockRange { typ, start, end })
        {
            Ok(Some(c)) => reply.locked(c.start, lock_end(c.end), c.typ, 0),
            Ok(None) => reply.locked(start, end, UNLCK, 0),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
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
            let (_span, mut t) = serve!(self, Setlk, req, ino = ino.0, fh = fh.0, typ);
            return match self.fs.setlk(ino.0, lock_owner.0, range) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(fail(&mut t, &e)),
            };
        }
        let (span, mut t) = serve!(self, Setlkw, req, ino = ino.0, fh = fh.0, typ);
        match self.fs.prepare_wait(ino.0, lock_owner.0, range) {
            Ok(pending) => lock_wait::answer_when_granted(
                &self.fs,
                &self.metrics,
                req.pid(),
                pending,
                reply,
                (span.exit(), t),
            ),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    /// No ioctl is forwarded: the lower file's ioctls are not the shim's to expose, and
    /// libraries probe with some (Python's `open` asks TCGETS to see if it is a terminal).
    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let (_span, mut t) = serve!(self, Ioctl, req, ino = ino.0, fh = fh.0, cmd);
        t.fail();
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let (_span, mut t) = serve!(self, Fallocate, req, ino = ino.0, fh = fh.0, offset, length);
        match self.fs.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let (_span, mut t) = serve!(self, Lseek, req, ino = ino.0, fh = fh.0, offset, whence);
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let (_span, mut t) = serve!(
            self,
            CopyFileRange,
            req,
            ino = ino_in.0,
            fh = fh_in.0,
            ino_out = ino_out.0,
            fh_out = fh_out.0,
            len
        );
        match self.fs.copy_file_range(
            fh_in.0,
            offset_in,
            fh_out.0,
            offset_out,
            len,
            flags.bits() as u32,
        ) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fail(&mut t, &e)),
        }
    }
}
