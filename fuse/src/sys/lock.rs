//! Open file description (OFD) byte-range locks: owned by the fd, not by the process, so the
//! shim can hold one lower owner per client lock owner.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cvt;

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

#[cfg(test)]
mod tests {
    use super::*;

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
