//! Thin, allocation-free wrappers over the Linux syscalls the shim forwards to the lower dir,
//! one file per family: `path` (open, stat, create, link, remove, rename by name), `attr`
//! (owner, mode, times, size, statfs, xattrs), `data` (file data and listings), `lock` (OFD
//! byte-range locks). This file holds what they share, and the fs uid/gid switch.
//!
//! Every inode is held as an `O_PATH` descriptor; operations address it either with
//! `AT_EMPTY_PATH` or through `/proc/self/fd/N` (the virtiofsd / passthrough_ll technique), so
//! the shim never needs to know a file's path. Names coming from the kernel are copied into a
//! stack buffer to get their NUL terminator: no heap allocation on the metadata hot path.

use std::cell::Cell;
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

mod attr;
mod data;
mod lock;
mod path;

pub use attr::{
    chmod_fd, chown_fd, fstatfs, ftruncate, getxattr, listxattr, removexattr, setxattr, utimens_fd,
};
pub use data::{copy_file_range, fallocate, fsync, getdents64, lseek, pread, pwrite};
pub use lock::{LockRange, ofd_getlk, ofd_setlk};
pub use path::{
    fstat, link_fd, mkdirat, mknodat, open_path, openat, readlink_fd, renameat2, reopen, stat_at,
    symlinkat, unlinkat,
};

/// `NAME_MAX` + 1: a file name and its terminator.
const NAME_BUF: usize = 256;

thread_local! {
    /// Syscalls this thread made on the lower dir since the last [`take_lower_calls`].
    static LOWER_CALLS: Cell<u32> = const { Cell::new(0) };
}

/// Counts one syscall on the lower dir. Over LiteFS each is at least one request to LiteFS's
/// own FUSE server (a round trip into its Go daemon), which is what issue 10 counts; the
/// request that caused it takes the count ([`take_lower_calls`]) when it is recorded.
#[inline]
pub(super) fn note_lower_call() {
    LOWER_CALLS.with(|c| c.set(c.get().wrapping_add(1)));
}

/// The syscalls on the lower dir this thread made since the last call, and resets the count.
/// Closing a descriptor is not counted (it happens in `Drop`s all over the shim).
#[inline]
pub fn take_lower_calls() -> u32 {
    LOWER_CALLS.with(|c| c.replace(0))
}

// Every wrapper below passes its syscall's result through `cvt` or `cvt_size`: that is where
// the lower calls are counted.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    note_lower_call();
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    note_lower_call();
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
}
