//! The shapes of the adapter's answers: cache lifetimes, open flags, directory listings,
//! conversions of kernel arguments, and failures (logged, counted, turned into an errno).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::LazyLock;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FopenFlags, Generation, INodeNo, ReplyCreate, ReplyDirectory,
    ReplyDirectoryPlus, ReplyOpen, ReplyStatfs, ReplyXattr, Request, TimeOrNow,
};

use crate::dir::DirEntry;
use crate::error::FsError;
use crate::fs::{Caller, ShimFs, TimeSpec};
use crate::fs_io::{Opened, XattrReply};
use crate::metrics::{InFlight, Op};
use crate::rangeset::EOF;
use crate::repeats::{Repeats, Verdict};

/// Lower files change under us (LiteFS applies replicated pages and rewrites `-shm` itself), so
/// the kernel must not cache their entries or attributes: their TTL is zero (the shim's own
/// stable name links have theirs, `ShimFs::cache_ttl`).
pub(super) const TTL: Duration = Duration::ZERO;
pub(super) const GENERATION: Generation = Generation(0);

/// Files the shim serves itself (no passthrough): no page cache, since a lower file can change
/// under the kernel, and concurrent writes to one file (SQLite's WAL) stay parallel.
const DIRECT_IO: FopenFlags =
    FopenFlags::FOPEN_DIRECT_IO.union(FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES);

pub(super) fn opened(reply: ReplyOpen, opened: Opened) {
    match opened {
        Opened::Passthrough { fh, backing } => {
            reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing.id)
        }
        Opened::DirectIo { fh } => reply.opened(FileHandle(fh), DIRECT_IO),
    }
}

pub(super) fn created(reply: ReplyCreate, attr: &FileAttr, opened: Opened) {
    match opened {
        Opened::Passthrough { fh, backing } => reply.created_passthrough(
            &TTL,
            attr,
            GENERATION,
            FileHandle(fh),
            FopenFlags::empty(),
            &backing.id,
        ),
        Opened::DirectIo { fh } => reply.created(&TTL, attr, GENERATION, FileHandle(fh), DIRECT_IO),
    }
}

pub(super) fn statfs(reply: ReplyStatfs, st: &libc::statvfs) {
    reply.statfs(
        st.f_blocks,
        st.f_bfree,
        st.f_bavail,
        st.f_files,
        st.f_ffree,
        st.f_bsize as u32,
        st.f_namemax as u32,
        st.f_frsize as u32,
    );
}

pub(super) fn xattr(reply: ReplyXattr, x: XattrReply) {
    match x {
        XattrReply::Size(n) => reply.size(n),
        XattrReply::Data(d) => reply.data(&d),
    }
}

/// Logs a failed request, counts it as an error, and returns the errno to answer with.
pub(super) fn fail(t: &mut InFlight<'_>, e: &FsError) -> Errno {
    t.fail();
    log_failure(t.op(), e)
}

/// Logs a failed request: at debug when the error is an ordinary answer (a missing file, a
/// lock held elsewhere), at warn when it points at a problem in the shim, or below it; a warning
/// that repeats (every request fails once LiteFS is gone) is logged once per interval with a
/// count ([`crate::repeats`]).
pub(super) fn log_failure(op: Op, e: &FsError) -> Errno {
    static REPEATS: LazyLock<Repeats> = LazyLock::new(Repeats::default);
    let errno = e.errno();
    let (op, code) = (op.name(), i32::from(errno));
    if e.is_expected() {
        tracing::debug!(op, errno = code, error = %e, "request failed");
        return errno;
    }
    match REPEATS.check(op, code, std::time::Instant::now()) {
        Verdict::Log { suppressed: 0 } => {
            tracing::warn!(op, errno = code, error = %e, "request failed")
        }
        Verdict::Log { suppressed } => tracing::warn!(
            op,
            errno = code,
            error = %e,
            suppressed,
            "request failed (and {suppressed} more like it since the last one logged)"
        ),
        Verdict::Quiet => tracing::debug!(op, errno = code, error = %e, "request failed"),
    }
    errno
}

pub(super) fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

pub(super) fn time_spec(t: Option<TimeOrNow>) -> Option<TimeSpec> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSpec::Now,
        TimeOrNow::SpecificTime(t) => TimeSpec::At(t),
    })
}

/// The kernel refuses a lock reply whose end is past `OFFSET_MAX`.
pub(super) fn lock_end(end: u64) -> u64 {
    if end == EOF { i64::MAX as u64 } else { end }
}

/// Adds the listing's entries from `offset` on until the reply is full.
pub(super) fn fill_dir(entries: &[DirEntry], offset: u64, reply: &mut ReplyDirectory) {
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
}

/// As [`fill_dir`], with each entry's attributes: every entry sent is a lookup the kernel will
/// count (and later forget), like a LOOKUP's answer.
pub(super) fn fill_dir_plus(
    fs: &ShimFs,
    dir_ino: u64,
    entries: &[DirEntry],
    offset: u64,
    reply: &mut ReplyDirectoryPlus,
) {
    for (i, e) in entries.iter().enumerate().skip(offset as usize) {
        // An entry removed since the snapshot is skipped, as a fresh listing would.
        let Ok(attr) = fs.listing_attr(dir_ino, e) else {
            continue;
        };
        if reply.add(
            INodeNo(attr.ino.0),
            i as u64 + 1,
            OsStr::from_bytes(&e.name),
            &fs.cache_ttl(attr.ino.0),
            &attr,
            GENERATION,
        ) {
            // Not sent: the kernel will not count this reference, so neither do we.
            if !e.is_dot_or_dotdot() {
                fs.forget(attr.ino.0, 1);
            }
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_ends_stay_within_offset_max() {
        assert_eq!(lock_end(EOF), i64::MAX as u64);
        assert_eq!(lock_end(99), 99);
    }

    #[test]
    fn direct_io_flags() {
        assert!(DIRECT_IO.contains(FopenFlags::FOPEN_DIRECT_IO));
        assert!(DIRECT_IO.contains(FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES));
    }

    #[test]
    fn a_failure_is_counted_and_answered_with_its_errno() {
        let m = crate::metrics::FuseMetrics::new();
        {
            let mut t = m.start(Op::Unlink);
            assert_eq!(fail(&mut t, &FsError::PinnedVirtual(".role")), Errno::EPERM);
        }
        let s = m.stats(Op::Unlink);
        assert_eq!((s.requests, s.errors), (1, 1));
    }
}
