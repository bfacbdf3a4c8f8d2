//! Thin, allocation-free wrappers over the Linux syscalls the shim forwards to the lower dir.
//!
//! Every inode is held as an `O_PATH` descriptor; operations address it either with
//! `AT_EMPTY_PATH` or through `/proc/self/fd/N` (the virtiofsd / passthrough_ll technique), so
//! the shim never needs to know a file's path. Names coming from the kernel are copied into a
//! stack buffer to get their NUL terminator: no heap allocation on the metadata hot path.

use std::ffi::{CStr, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// `NAME_MAX` + 1: a file name and its terminator.
const NAME_BUF: usize = 256;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

fn errno(code: libc::c_int) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Calls `f` with `name` as a C string built on the stack.
pub fn with_name<R>(name: &OsStr, f: impl FnOnce(&CStr) -> io::Result<R>) -> io::Result<R> {
    let bytes = name.as_bytes();
    if bytes.len() >= NAME_BUF {
        return Err(errno(libc::ENAMETOOLONG));
    }
    let mut buf = [0u8; NAME_BUF];
    buf[..bytes.len()].copy_from_slice(bytes);
    let cstr = CStr::from_bytes_until_nul(&buf[..=bytes.len()]).map_err(|_| errno(libc::EINVAL))?;
    if cstr.to_bytes().len() != bytes.len() {
        // An embedded NUL: the kernel never sends one, but do not silently truncate.
        return Err(errno(libc::EINVAL));
    }
    f(cstr)
}

/// The decimal form of an fd number, for `openat(/proc/self/fd, "N")`.
pub struct FdName {
    buf: [u8; 24],
}

impl FdName {
    pub fn new(fd: RawFd) -> Self {
        let mut buf = [0u8; 24];
        let mut digits = [0u8; 20];
        let mut n = fd as u32;
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            buf[i] = digits[len - 1 - i];
        }
        FdName { buf }
    }

    pub fn as_cstr(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.buf).expect("FdName always holds a NUL")
    }

    /// `/proc/self/fd/N` as an absolute path, for the path-based xattr calls.
    pub fn proc_path(&self) -> ProcPath {
        let mut buf = [0u8; 40];
        let prefix = b"/proc/self/fd/";
        buf[..prefix.len()].copy_from_slice(prefix);
        let digits = self.as_cstr().to_bytes();
        buf[prefix.len()..prefix.len() + digits.len()].copy_from_slice(digits);
        ProcPath { buf }
    }
}

pub struct ProcPath {
    buf: [u8; 40],
}

impl ProcPath {
    pub fn as_cstr(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.buf).expect("ProcPath always holds a NUL")
    }
}

const EMPTY: &CStr = c"";

fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful syscall that creates a new descriptor.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `openat(dir, name, flags, mode)` with `O_CLOEXEC`.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: valid fd and NUL-terminated path.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    Ok(owned(fd))
}

/// An `O_PATH` handle on `dir/name`, not following a final symlink.
pub fn open_path(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// Opens the file an `O_PATH` descriptor refers to, through `/proc/self/fd`.
pub fn reopen(proc_self_fd: BorrowedFd<'_>, fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let name = FdName::new(fd.as_raw_fd());
    // The magic link is followed on purpose: it resolves to the inode itself.
    openat(proc_self_fd, name.as_cstr(), flags & !libc::O_NOFOLLOW, 0)
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer; an empty path with AT_EMPTY_PATH stats the fd.
    cvt(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: initialised by the successful call above.
    Ok(unsafe { st.assume_init() })
}

pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: as in `fstat`.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: initialised by the successful call above.
    Ok(unsafe { st.assume_init() })
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd and path.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: valid fd and path.
    cvt(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            name.as_ptr(),
            mode as libc::mode_t,
            rdev as libc::dev_t,
        )
    })
    .map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid fd and paths.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// Hard-links the inode behind an `O_PATH` fd (needs CAP_DAC_READ_SEARCH, which the daemon has
/// as root; otherwise the `/proc/self/fd` form is used).
pub fn link_fd(
    proc_self_fd: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &CStr,
) -> io::Result<()> {
    // SAFETY: valid fds and paths.
    let r = cvt(unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    });
    match r {
        Err(e)
            if e.raw_os_error() == Some(libc::ENOENT) || e.raw_os_error() == Some(libc::EPERM) =>
        {
            let n = FdName::new(fd.as_raw_fd());
            // SAFETY: valid fds and paths.
            cvt(unsafe {
                libc::linkat(
                    proc_self_fd.as_raw_fd(),
                    n.as_cstr().as_ptr(),
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            })
            .map(drop)
        }
        other => other.map(drop),
    }
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: valid fd and path.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: valid fds and paths.
    cvt(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// The target of the symlink behind an `O_PATH` fd.
pub fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buf` is writable for its length.
    let n = cvt_size(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

pub fn chown_fd(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let uid = uid.unwrap_or(u32::MAX);
    let gid = gid.unwrap_or(u32::MAX);
    // SAFETY: valid fd; -1 (u32::MAX) leaves an id unchanged.
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn chmod_fd(proc_self_fd: BorrowedFd<'_>, fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let n = FdName::new(fd.as_raw_fd());
    // SAFETY: valid fd and path; the magic link resolves to the inode.
    cvt(unsafe {
        libc::fchmodat(
            proc_self_fd.as_raw_fd(),
            n.as_cstr().as_ptr(),
            mode as libc::mode_t,
            0,
        )
    })
    .map(drop)
}

pub fn utimens_fd(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: valid fd, `times` points at two timespecs.
    cvt(unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) }).map(drop)
}

pub fn fstatfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid fd and out-pointer.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised by the successful call.
    Ok(unsafe { st.assume_init() })
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: valid fd.
    cvt(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
    .map(drop)
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: valid fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: u64,
    flags: u32,
) -> io::Result<usize> {
    let mut off_in = off_in as libc::loff_t;
    let mut off_out = off_out as libc::loff_t;
    // SAFETY: valid fds and offset pointers.
    cvt_size(unsafe {
        libc::copy_file_range(
            fd_in.as_raw_fd(),
            &mut off_in,
            fd_out.as_raw_fd(),
            &mut off_out,
            len as usize,
            flags,
        )
    })
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    cvt_size(unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    })
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
    // SAFETY: `buf` is readable for its length.
    cvt_size(unsafe {
        libc::pwrite(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    })
}

/// Reads raw `linux_dirent64` records into `buf`; 0 means the end of the directory.
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

// Extended attributes. `f*xattr` refuses O_PATH fds, so these go through the
// `/proc/self/fd/N` path, which the kernel resolves to the inode itself.

pub fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: valid paths; `buf` is writable for its length (a zero length only asks for the size).
    cvt_size(unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

pub fn setxattr(path: &CStr, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    // SAFETY: valid paths and value slice.
    cvt(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

pub fn listxattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: valid path; `buf` writable for its length.
    cvt_size(unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn removexattr(path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: valid paths.
    cvt(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

/// An open file description (OFD) byte-range lock request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRange {
    /// `F_RDLCK`, `F_WRLCK` or `F_UNLCK`.
    pub typ: i32,
    pub start: u64,
    /// Inclusive, as FUSE sends it; `u64::MAX` (or `i64::MAX`) means "to the end of the file".
    pub end: u64,
}

impl LockRange {
    fn to_flock(self) -> libc::flock {
        // SAFETY: flock is plain data; zero is a valid bit pattern (and l_pid must be 0 for OFD locks).
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = self.typ as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = self.start.min(i64::MAX as u64) as libc::off_t;
        fl.l_len = if self.end >= i64::MAX as u64 {
            0
        } else {
            (self.end - self.start + 1) as libc::off_t
        };
        fl
    }
}

/// `F_OFD_SETLK` (or `F_OFD_SETLKW` when `wait`).
pub fn ofd_setlk(fd: BorrowedFd<'_>, range: LockRange, wait: bool) -> io::Result<()> {
    let fl = range.to_flock();
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    // SAFETY: valid fd and flock struct.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &fl) }).map(drop)
}

/// `F_OFD_GETLK`: the first conflicting lock, or `None`.
pub fn ofd_getlk(fd: BorrowedFd<'_>, range: LockRange) -> io::Result<Option<LockRange>> {
    let mut fl = range.to_flock();
    // SAFETY: valid fd and flock struct.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) })?;
    if fl.l_type as i32 == libc::F_UNLCK {
        return Ok(None);
    }
    let start = fl.l_start as u64;
    let end = if fl.l_len == 0 {
        i64::MAX as u64
    } else {
        start + fl.l_len as u64 - 1
    };
    Ok(Some(LockRange {
        typ: fl.l_type as i32,
        start,
        end,
    }))
}

/// Switches the calling thread's filesystem uid/gid (per-thread on Linux) and restores root's
/// on drop, so that files are created with the requesting user's ownership.
pub struct FsIdGuard {
    active: bool,
}

impl FsIdGuard {
    pub fn switch(uid: u32, gid: u32) -> FsIdGuard {
        // SAFETY: getuid has no preconditions.
        if uid == 0 && gid == 0 || unsafe { libc::geteuid() } != 0 {
            return FsIdGuard { active: false };
        }
        // setfsuid/setfsgid are raw per-thread syscalls (glibc does not broadcast them).
        // SAFETY: plain syscalls; they cannot fail in a way that leaves memory unsafe.
        unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
        FsIdGuard { active: true }
    }
}

impl Drop for FsIdGuard {
    fn drop(&mut self) {
        if self.active {
            // SAFETY: as above; back to root.
            unsafe {
                libc::setfsuid(0);
                libc::setfsgid(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_names() {
        assert_eq!(FdName::new(0).as_cstr(), c"0");
        assert_eq!(FdName::new(7).as_cstr(), c"7");
        assert_eq!(FdName::new(1234567).as_cstr(), c"1234567");
        assert_eq!(FdName::new(42).proc_path().as_cstr(), c"/proc/self/fd/42");
    }

    #[test]
    fn names_are_checked() {
        let long = "x".repeat(300);
        let err = with_name(OsStr::new(&long), |_| Ok(())).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
        let err = with_name(OsStr::from_bytes(b"a\0b"), |_| Ok(())).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        with_name(OsStr::new("db.sqlite"), |c| {
            assert_eq!(c, c"db.sqlite");
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn lock_range_to_flock() {
        let fl = LockRange {
            typ: libc::F_WRLCK,
            start: 10,
            end: 19,
        }
        .to_flock();
        assert_eq!((fl.l_start, fl.l_len), (10, 10));
        let fl = LockRange {
            typ: libc::F_RDLCK,
            start: 5,
            end: u64::MAX,
        }
        .to_flock();
        assert_eq!((fl.l_start, fl.l_len), (5, 0));
        let fl = LockRange {
            typ: libc::F_RDLCK,
            start: 5,
            end: i64::MAX as u64,
        }
        .to_flock();
        assert_eq!((fl.l_start, fl.l_len), (5, 0));
    }
}
