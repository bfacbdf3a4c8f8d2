//! POSIX byte-range locks, forwarded so that each client lock owner is its own owner below.
//!
//! The virtiofsd model: one lower fd per (inode, client lock owner), locked with OFD locks
//! (`F_OFD_SETLK`), so the lower filesystem — LiteFS — sees one owner per client process rather
//! than the shim's single process. The rules from LiteFS v0.5.14 (docs/architecture.md,
//! "Stacking on LiteFS") shape the rest:
//!
//! * LiteFS frees nothing when a lock fd is closed (its FLUSH unlocks by the *closing process*,
//!   RELEASE unlocks nothing), so every range an owner holds is unlocked explicitly before its
//!   fd is reused or closed.
//! * LiteFS never frees an owner's guard set, so lock fds are pooled per inode: an fd whose
//!   owner holds nothing goes back to the pool and serves the next owner. LiteFS then sees about
//!   as many owners as there are concurrent lock holders, not one per connection ever made.
//! * A multi-byte request that fails in LiteFS keeps the bytes it already took; the shim
//!   restores exactly what the owner held before (from its own record, a [`RangeSet`]).
//! * Blocking requests (`F_SETLKW`; on LiteFS only the halt lock) are waited for on their own
//!   thread, never on a FUSE worker, and an fd that ever took one is closed, not pooled, when
//!   its owner lets go: LiteFS ties the halt lock to the handle and frees it at the handle's flush.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::error::{FsError, FsResult};
use crate::rangeset::{EOF, RangeSet, UNLCK, normalise_end};
use crate::sys::{self, LockRange};

/// Idle lock fds kept per inode; beyond this they are closed (they hold no locks).
const POOL_CAP: usize = 64;

#[derive(Debug, Default)]
pub struct InodeLocks {
    owners: Mutex<FxHashMap<u64, Arc<OwnerLock>>>,
    pool: Mutex<Vec<OwnedFd>>,
}

#[derive(Debug, Default)]
struct OwnerLock {
    state: Mutex<OwnerState>,
}

#[derive(Debug, Default)]
struct OwnerState {
    fd: Option<Arc<OwnedFd>>,
    held: RangeSet,
    /// The fd took a blocking lock: close it when the owner lets go, never pool it.
    blocking: bool,
    /// The owner let go (flush) while a blocking wait was in flight.
    detached: bool,
}

impl Drop for OwnerState {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take()
            && !self.held.is_empty()
        {
            unlock_all(&fd, &self.held);
        }
    }
}

/// Unlocks everything `held` on `fd`: the whole range in one call, or range by range where the
/// lower file refuses that (LiteFS's lock file accepts single bytes only).
fn unlock_all(fd: &OwnedFd, held: &RangeSet) {
    let whole = LockRange {
        typ: UNLCK,
        start: 0,
        end: EOF,
    };
    if sys::ofd_setlk(fd.as_fd(), whole, false).is_ok() {
        return;
    }
    for seg in held.segments() {
        let r = LockRange {
            typ: UNLCK,
            start: seg.start,
            end: seg.end,
        };
        if let Err(e) = sys::ofd_setlk(fd.as_fd(), r, false) {
            tracing::warn!(error = %e, start = seg.start, end = seg.end, "could not unlock a lower lock range");
        }
    }
}

/// Whether a lock just granted by the lower filesystem may stand: the write gate's second look
/// (docs/architecture.md, "Data-path modes"). A request can pass the gate, then wait in LiteFS
/// across a freeze of the whole node; the grant it gets after the thaw is checked again.
pub type Recheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// A blocking request handed to a waiter thread.
pub struct PendingWait {
    owner: Arc<OwnerLock>,
    fd: Arc<OwnedFd>,
    range: LockRange,
    recheck: Option<Recheck>,
}

impl PendingWait {
    /// Checks the grant with `recheck` before it counts as held: a `false` gives the range back
    /// what the owner held before, and the request fails with [`FsError::NotPrimary`].
    pub fn with_recheck(mut self, recheck: Recheck) -> Self {
        self.recheck = Some(recheck);
        self
    }

    /// Blocks until the lock is granted, refused, or the wait is interrupted (EINTR).
    pub fn wait(self) -> FsResult<()> {
        let result = sys::ofd_setlk(self.fd.as_fd(), self.range, true);
        let mut st = self.owner.state.lock();
        match result {
            Ok(()) if st.detached => {
                // The owner closed the file while we waited: what we just got is nobody's.
                let mut just = RangeSet::default();
                just.apply(self.range.start, self.range.end, self.range.typ);
                unlock_all(&self.fd, &just);
                Ok(())
            }
            Ok(()) if self.recheck.as_ref().is_some_and(|keep| !keep()) => {
                restore(&self.fd, &st.held, self.range.start, self.range.end);
                Err(FsError::NotPrimary)
            }
            Ok(()) => {
                st.held
                    .apply(self.range.start, self.range.end, self.range.typ);
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Err(FsError::Interrupted),
            Err(e) => Err(e.into()),
        }
    }
}

impl InodeLocks {
    fn owner(&self, owner: u64) -> Arc<OwnerLock> {
        self.owners.lock().entry(owner).or_default().clone()
    }

    fn existing_owner(&self, owner: u64) -> Option<Arc<OwnerLock>> {
        self.owners.lock().get(&owner).cloned()
    }

    fn take_fd(&self, open: &dyn Fn() -> io::Result<OwnedFd>) -> io::Result<OwnedFd> {
        if let Some(fd) = self.pool.lock().pop() {
            return Ok(fd);
        }
        open()
    }

    fn give_back(&self, fd: OwnedFd) {
        let mut pool = self.pool.lock();
        if pool.len() < POOL_CAP {
            pool.push(fd);
        }
    }

    fn ensure_fd(
        &self,
        st: &mut OwnerState,
        open: &dyn Fn() -> io::Result<OwnedFd>,
    ) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = &st.fd {
            return Ok(fd.clone());
        }
        let fd = Arc::new(self.take_fd(open)?);
        st.fd = Some(fd.clone());
        Ok(fd)
    }

    /// A non-blocking lock or unlock (`F_SETLK`).
    pub fn setlk(
        &self,
        owner: u64,
        range: LockRange,
        open: &dyn Fn() -> io::Result<OwnedFd>,
    ) -> FsResult<()> {
        self.setlk_checked(owner, range, open, &|| true)
    }

    /// [`setlk`](Self::setlk), with the grant checked by `keep` before it counts as held (see
    /// [`Recheck`]): a `false` gives the range back what the owner held before and fails with
    /// [`FsError::NotPrimary`].
    pub fn setlk_checked(
        &self,
        owner: u64,
        range: LockRange,
        open: &dyn Fn() -> io::Result<OwnedFd>,
        keep: &dyn Fn() -> bool,
    ) -> FsResult<()> {
        let range = LockRange {
            end: normalise_end(range.end),
            ..range
        };
        let lock = if range.typ == UNLCK {
            match self.existing_owner(owner) {
                Some(lock) => lock,
                None => return Ok(()), // holds nothing here
            }
        } else {
            self.owner(owner)
        };
        let mut st = lock.state.lock();
        if range.typ == UNLCK && st.fd.is_none() {
            return Ok(());
        }
        let fd = self.ensure_fd(&mut st, open)?;
        let mut result = sys::ofd_setlk(fd.as_fd(), range, false).map_err(FsError::from);
        if result.is_ok() && range.typ != UNLCK && !keep() {
            restore(&fd, &st.held, range.start, range.end);
            result = Err(FsError::NotPrimary);
        }
        match &result {
            Ok(()) => st.held.apply(range.start, range.end, range.typ),
            Err(FsError::NotPrimary) => {}
            Err(_) if range.start != range.end => restore(&fd, &st.held, range.start, range.end),
            Err(_) => {}
        }
        drop(fd);
        self.maybe_return_fd(&mut st);
        result
    }

    /// An owner that holds nothing does not need its fd: pool it for the next owner.
    fn maybe_return_fd(&self, st: &mut OwnerState) {
        if st.held.is_empty()
            && !st.blocking
            && let Some(fd) = st.fd.take()
        {
            match Arc::try_unwrap(fd) {
                Ok(fd) => self.give_back(fd),
                Err(shared) => st.fd = Some(shared),
            }
        }
    }

    /// Prepares a blocking request (`F_SETLKW`) to run off the FUSE worker.
    pub fn prepare_wait(
        &self,
        owner: u64,
        range: LockRange,
        open: &dyn Fn() -> io::Result<OwnedFd>,
    ) -> FsResult<PendingWait> {
        let range = LockRange {
            end: normalise_end(range.end),
            ..range
        };
        let lock = self.owner(owner);
        let fd = {
            let mut st = lock.state.lock();
            st.blocking = true;
            self.ensure_fd(&mut st, open)?
        };
        Ok(PendingWait {
            owner: lock,
            fd,
            range,
            recheck: None,
        })
    }

    /// `F_GETLK`: the first lock held by *another* owner that conflicts with `range`.
    pub fn getlk(
        &self,
        owner: u64,
        range: LockRange,
        open: &dyn Fn() -> io::Result<OwnedFd>,
    ) -> FsResult<Option<LockRange>> {
        let range = LockRange {
            end: normalise_end(range.end),
            ..range
        };
        if let Some(lock) = self.existing_owner(owner) {
            let st = lock.state.lock();
            if let Some(fd) = &st.fd {
                return Ok(sys::ofd_getlk(fd.as_fd(), range)?);
            }
        }
        // The owner holds nothing, so any fd that holds nothing asks the same question.
        let fd = self.take_fd(open)?;
        let answer = sys::ofd_getlk(fd.as_fd(), range);
        self.give_back(fd);
        Ok(answer?)
    }

    /// The owner closed a file descriptor on this inode (FLUSH), or released its flock (RELEASE):
    /// POSIX says all its locks on the file go now.
    pub fn release_owner(&self, owner: u64) {
        let Some(lock) = self.owners.lock().remove(&owner) else {
            return;
        };
        let mut st = lock.state.lock();
        st.detached = true;
        let Some(fd) = st.fd.take() else {
            return;
        };
        if !st.held.is_empty() {
            unlock_all(&fd, &st.held);
            st.held = RangeSet::default();
        }
        if st.blocking {
            // Dropped here (or by a waiter still holding it): closing is what frees a
            // handle-tied lock such as LiteFS's halt lock.
            return;
        }
        if let Ok(fd) = Arc::try_unwrap(fd) {
            self.give_back(fd);
        }
    }

    /// How many owners currently hold an fd, and how many fds are idle (for tests and metrics).
    pub fn counts(&self) -> (usize, usize) {
        let owners = self.owners.lock();
        let with_fd = owners
            .values()
            .filter(|o| o.state.lock().fd.is_some())
            .count();
        (with_fd, self.pool.lock().len())
    }
}

/// After a failed multi-byte request: give every byte of `start..=end` back the type the owner
/// held before (a downgrade or a no-op, which cannot fail) and release the bytes it did not hold.
fn restore(fd: &OwnedFd, held: &RangeSet, start: u64, end: u64) {
    let before = held.held_within(start, end);
    let mut cursor = start;
    let mut ok = true;
    for seg in &before {
        if seg.start > cursor {
            let gap = LockRange {
                typ: UNLCK,
                start: cursor,
                end: seg.start - 1,
            };
            ok &= sys::ofd_setlk(fd.as_fd(), gap, false).is_ok();
        }
        let keep = LockRange {
            typ: seg.typ,
            start: seg.start,
            end: seg.end,
        };
        ok &= sys::ofd_setlk(fd.as_fd(), keep, false).is_ok();
        cursor = if seg.end == EOF { EOF } else { seg.end + 1 };
        if seg.end == EOF {
            break;
        }
    }
    let tail_done = before.last().is_some_and(|s| s.end == EOF);
    if !tail_done && cursor <= end {
        let gap = LockRange {
            typ: UNLCK,
            start: cursor,
            end,
        };
        ok &= sys::ofd_setlk(fd.as_fd(), gap, false).is_ok();
    }
    if !ok {
        tracing::warn!(
            start,
            end,
            "could not restore lock state after a failed lock request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rangeset::{RDLCK, WRLCK};
    use std::fs::File;
    use std::os::fd::OwnedFd;

    fn opener(path: std::path::PathBuf) -> impl Fn() -> io::Result<OwnedFd> {
        move || {
            Ok(OwnedFd::from(
                File::options().read(true).write(true).open(&path)?,
            ))
        }
    }

    fn r(typ: i32, start: u64, end: u64) -> LockRange {
        LockRange { typ, start, end }
    }

    #[test]
    fn owners_exclude_each_other_and_pool_fds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"x").unwrap();
        let open = opener(path);
        let locks = InodeLocks::default();

        locks.setlk(1, r(WRLCK, 100, 100), &open).unwrap();
        let err = locks.setlk(2, r(RDLCK, 100, 100), &open).unwrap_err();
        assert_eq!(err.errno(), fuser::Errno::EAGAIN);
        // Owner 2 holds nothing after its failure; its fd went back to the pool.
        assert_eq!(locks.counts(), (1, 1));
        let conflict = locks.getlk(2, r(RDLCK, 0, EOF), &open).unwrap().unwrap();
        assert_eq!(
            (conflict.typ, conflict.start, conflict.end),
            (WRLCK, 100, 100)
        );
        assert!(locks.getlk(1, r(WRLCK, 0, EOF), &open).unwrap().is_none());

        // Unlocking everything returns owner 1's fd to the pool too.
        locks.setlk(1, r(UNLCK, 0, i64::MAX as u64), &open).unwrap();
        assert_eq!(locks.counts(), (0, 2));
        locks.setlk(2, r(RDLCK, 100, 100), &open).unwrap();
        assert_eq!(locks.counts(), (1, 1));
    }

    #[test]
    fn release_owner_unlocks_before_pooling() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"x").unwrap();
        let open = opener(path);
        let locks = InodeLocks::default();
        locks.setlk(7, r(WRLCK, 0, 9), &open).unwrap();
        locks.release_owner(7);
        assert_eq!(locks.counts(), (0, 1));
        // The pooled fd must not still hold the lock: another owner can take it.
        locks.setlk(8, r(WRLCK, 0, 9), &open).unwrap();
        locks.setlk(9, r(WRLCK, 5, 5), &open).unwrap_err();
    }

    #[test]
    fn failed_multibyte_request_restores_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db-shm");
        std::fs::write(&path, b"x").unwrap();
        let open = opener(path);
        let locks = InodeLocks::default();
        // Owner 1 reads byte 123; owner 2 holds byte 125.
        locks.setlk(1, r(RDLCK, 123, 123), &open).unwrap();
        locks.setlk(2, r(RDLCK, 125, 125), &open).unwrap();
        // Owner 1 asks for 122..=127 exclusively and fails.
        locks.setlk(1, r(WRLCK, 122, 127), &open).unwrap_err();
        // It still holds 123 shared (owner 3 can share it but not write it) and nothing else.
        locks.setlk(3, r(WRLCK, 122, 122), &open).unwrap();
        locks.setlk(3, r(WRLCK, 124, 124), &open).unwrap();
        locks.setlk(3, r(WRLCK, 126, 127), &open).unwrap();
        locks.setlk(3, r(WRLCK, 123, 123), &open).unwrap_err();
        locks.setlk(3, r(RDLCK, 123, 123), &open).unwrap();
    }

    #[test]
    fn a_grant_the_recheck_refuses_is_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"x").unwrap();
        let open = opener(path);
        let locks = InodeLocks::default();
        // Owner 1 holds the SHARED byte; its upgrade to EXCLUSIVE is granted, then refused.
        locks
            .setlk(1, r(RDLCK, 0x4000_0002, 0x4000_0002), &open)
            .unwrap();
        let err = locks
            .setlk_checked(1, r(WRLCK, 0x4000_0001, 0x4000_0002), &open, &|| false)
            .unwrap_err();
        assert!(matches!(err, FsError::NotPrimary), "{err:?}");
        // Back to what it held: the SHARED byte shared, RESERVED free.
        locks
            .setlk(2, r(WRLCK, 0x4000_0001, 0x4000_0001), &open)
            .unwrap();
        locks
            .setlk(2, r(RDLCK, 0x4000_0002, 0x4000_0002), &open)
            .unwrap();
        locks
            .setlk(3, r(WRLCK, 0x4000_0002, 0x4000_0002), &open)
            .unwrap_err();
        // A blocking request checked the same way.
        locks.setlk(2, r(UNLCK, 0, EOF), &open).unwrap();
        let pending = locks
            .prepare_wait(4, r(WRLCK, 120, 120), &open)
            .unwrap()
            .with_recheck(Arc::new(|| false));
        assert!(matches!(pending.wait(), Err(FsError::NotPrimary)));
        locks.setlk(5, r(WRLCK, 120, 120), &open).unwrap();
        // Unlocks are never refused.
        locks
            .setlk_checked(5, r(UNLCK, 120, 120), &open, &|| false)
            .unwrap();
        locks.setlk(6, r(WRLCK, 120, 120), &open).unwrap();
    }

    #[test]
    fn blocking_wait_is_granted_when_the_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db-lock");
        std::fs::write(&path, b"").unwrap();
        let open = opener(path);
        let locks = Arc::new(InodeLocks::default());
        locks.setlk(1, r(WRLCK, 72, 72), &open).unwrap();
        let pending = locks.prepare_wait(2, r(WRLCK, 72, 72), &open).unwrap();
        let waiter = std::thread::spawn(move || pending.wait());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished());
        locks.release_owner(1);
        waiter.join().unwrap().unwrap();
        // Owner 2's fd took a blocking lock: released by closing, not pooled.
        locks.release_owner(2);
        assert_eq!(locks.counts().0, 0);
        locks.setlk(3, r(WRLCK, 72, 72), &open).unwrap();
    }
}
