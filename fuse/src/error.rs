//! The filesystem's one error type, and its mapping to errno — in one place.
//!
//! The `match` in [`FsError::errno`] lists every variant, so a new variant does not compile
//! until someone decides which errno the kernel should see for it.

use std::io;

use fuser::Errno;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The lower filesystem answered with an error: passed through unchanged.
    #[error("lower filesystem: {0}")]
    Lower(#[from] io::Error),
    #[error("unknown inode {0}")]
    UnknownInode(u64),
    #[error("unknown file handle {0}")]
    UnknownHandle(u64),
    #[error("{0} is answered by litefs-py and is read-only")]
    ReadOnlyVirtual(&'static str),
    #[error("{0} cannot be removed or renamed: it is answered by litefs-py")]
    PinnedVirtual(&'static str),
    #[error("no such file")]
    NotFound,
    #[error("not a directory")]
    NotDirectory,
    #[error("is a directory")]
    IsDirectory,
    #[error("operation not supported on this file")]
    NotSupported,
    #[error("too many blocking lock requests waiting ({0})")]
    TooManyWaiters(usize),
    #[error("interrupted")]
    Interrupted,
    #[error("write lock refused: this node is not the primary")]
    NotPrimary,
    #[error("invalid argument")]
    InvalidArgument,
    /// The lower filesystem has no extended attributes at all (LiteFS answers every xattr
    /// request with ENOSYS).
    #[error("extended attributes are not supported here")]
    NoXattrs,
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    pub fn errno(&self) -> Errno {
        match self {
            FsError::Lower(e) => Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO)),
            // The kernel only sends ids we handed out; an unknown one means it raced a forget.
            FsError::UnknownInode(_) => Errno::ENOENT,
            FsError::UnknownHandle(_) => Errno::EBADF,
            FsError::ReadOnlyVirtual(_) => Errno::EACCES,
            FsError::PinnedVirtual(_) => Errno::EPERM,
            FsError::NotFound => Errno::ENOENT,
            FsError::NotDirectory => Errno::ENOTDIR,
            FsError::IsDirectory => Errno::EISDIR,
            FsError::NotSupported => Errno::EOPNOTSUPP,
            FsError::TooManyWaiters(_) => Errno::ENOLCK,
            FsError::Interrupted => Errno::EINTR,
            FsError::InvalidArgument => Errno::EINVAL,
            // ENOSYS, as LiteFS answers: the kernel then sends no more requests of that xattr
            // operation on this mount (it answers EOPNOTSUPP itself, as it does on LiteFS's own
            // mount), which removes the `security.capability` lookup before every write.
            FsError::NoXattrs => Errno::ENOSYS,
            // SQLite maps a failed WAL lock to SQLITE_BUSY whatever the errno; in rollback mode
            // EROFS becomes SQLITE_IOERR_LOCK at once rather than a busy wait (EACCES/EAGAIN).
            FsError::NotPrimary => Errno::EROFS,
        }
    }

    /// Errors that are an ordinary answer (a missing file, a lock held elsewhere), not worth a
    /// log line at warn level.
    pub fn is_expected(&self) -> bool {
        match self {
            FsError::Lower(e) => matches!(
                e.raw_os_error(),
                Some(
                    libc::ENOENT
                        | libc::EEXIST
                        | libc::EAGAIN
                        | libc::EACCES
                        | libc::EPERM
                        | libc::ENOTEMPTY
                        | libc::ENODATA
                        | libc::ERANGE
                        | libc::ENOTDIR
                        | libc::EISDIR
                        | libc::EINVAL
                        | libc::ENAMETOOLONG
                        | libc::ELOOP
                        | libc::EXDEV
                        | libc::EOPNOTSUPP
                        | libc::ENOSYS
                        | libc::ENOTTY
                        | libc::EMLINK
                        | libc::EFBIG
                        | libc::ENOSPC
                )
            ),
            FsError::NotFound
            | FsError::ReadOnlyVirtual(_)
            | FsError::PinnedVirtual(_)
            | FsError::NotDirectory
            | FsError::IsDirectory
            | FsError::NotSupported
            | FsError::Interrupted
            | FsError::NotPrimary
            | FsError::InvalidArgument
            | FsError::NoXattrs => true,
            FsError::UnknownInode(_) | FsError::UnknownHandle(_) | FsError::TooManyWaiters(_) => {
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_errors_pass_through() {
        let e = FsError::from(io::Error::from_raw_os_error(libc::EAGAIN));
        assert_eq!(e.errno(), Errno::EAGAIN);
        let e = FsError::from(io::Error::other("no errno"));
        assert_eq!(e.errno(), Errno::EIO);
        assert_eq!(FsError::ReadOnlyVirtual(".role").errno(), Errno::EACCES);
    }
}
