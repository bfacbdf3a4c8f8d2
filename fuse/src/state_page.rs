//! The shared state page: `.role` as a read-only page of memory that other processes map, so
//! that `litefs.is_primary()` costs a few loads instead of a FUSE open/read/release
//! (docs/architecture.md, "Virtual files").
//!
//! One 4 KiB file in `/dev/shm` per lower dir (`litefs-py.<hash>.state`, mode 0644, owned by
//! the daemon's user), found through the `state_page` field of `.health`: one FUSE read per
//! process, not per call. A restarted daemon over the same lower dir reuses the file, so a
//! reader's mapping follows it. A clean shutdown marks the page closed and unlinks it.
//!
//! Layout (little endian, naturally aligned; readers check `MAGIC` and `VERSION`):
//!
//! | offset | type | field |
//! |---|---|---|
//! | 0 | u64 | `MAGIC` |
//! | 8 | u64 | seqlock counter: odd while the writer is between its stores |
//! | 16 | u32 | `VERSION` |
//! | 20 | u32 | flags: bit 0 = closed (the daemon stopped: ask the mount) |
//! | 24 | u32 | role: 0 primary, 1 replica, 2 electing, 3 witness |
//! | 32 | u64 | `primary` valid until, CLOCK_BOOTTIME ns (0: no bound) |
//! | 40 | u32 | length of the `.health` mirror (flag bit 1 set: it is there) |
//! | 48 | bytes | the `.health` mirror: JSON, the fields of `.health` that do not depend on the
//! instant of reading, plus `quorum_ack_boot_ns` and `leader_contact_boot_ns` (CLOCK_BOOTTIME
//! stamps the reader turns into the `ms_since_*` ages; `role`, `primary_valid_ms` and, for an
//! expired `primary`, `primary` come from the fields above) |
//!
//! A reader reads the counter (acquire), the fields, then the counter again, and retries if it
//! was odd or changed. A `primary` whose deadline has passed reads as `electing`: the page
//! carries the same expiry as `.role`, so a stalled daemon cannot leave `primary` up in it.
//! The mirror lets `litefs.state()` answer without a FUSE round trip too: `.health` renders
//! its ages from the same published stamps, so both say the same thing at the same instant.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, fence};

use parking_lot::Mutex;

use crate::virtual_files::Role;

pub const MAGIC: u64 = u64::from_le_bytes(*b"LFPYROLE");
pub const VERSION: u32 = 1;
pub const SIZE: usize = 4096;
pub const FLAG_CLOSED: u32 = 1;
pub const FLAG_HEALTH: u32 = 2;

const OFF_SEQ: usize = 8;
const OFF_VERSION: usize = 16;
const OFF_FLAGS: usize = 20;
const OFF_ROLE: usize = 24;
const OFF_UNTIL: usize = 32;
const OFF_HEALTH_LEN: usize = 40;
const OFF_HEALTH: usize = 48;
/// The longest `.health` mirror the page holds (a longer one is left out: readers use the mount).
pub const HEALTH_MAX: usize = SIZE - OFF_HEALTH;

pub fn role_code(r: Role) -> u32 {
    match r {
        Role::Primary => 0,
        Role::Replica => 1,
        Role::Electing => 2,
        Role::Witness => 3,
    }
}

/// Where the page of the shim over `lower` lives.
pub fn path_for(lower: &Path) -> PathBuf {
    let canonical = lower.canonicalize().unwrap_or_else(|_| lower.to_path_buf());
    // FNV-1a: a stable short name; two lower dirs colliding only share a file name, and the
    // second daemon to start takes it over (it is rewritten at every publish).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    PathBuf::from(format!("/dev/shm/litefs-py.{h:016x}.state"))
}

/// The writer's side: the page mapped read-write in the daemon.
pub struct StatePage {
    path: PathBuf,
    base: *mut u8,
    /// One writer at a time (publishes and the close), or the seqlock breaks.
    write: Mutex<()>,
    _fd: OwnedFd,
}

// SAFETY: the mapping is only accessed through atomics, and writes are serialised by `write`.
unsafe impl Send for StatePage {}
// SAFETY: as above.
unsafe impl Sync for StatePage {}

impl std::fmt::Debug for StatePage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatePage")
            .field("path", &self.path)
            .finish()
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl StatePage {
    /// Creates (or takes over) the page at `path`, mapped read-write. A file there that another
    /// user owns, or that others may write, is replaced: readers trust what the page says.
    pub fn create(path: &Path) -> io::Result<StatePage> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let open = |extra: libc::c_int| {
            // SAFETY: a NUL-terminated path; the fd is owned at once.
            cvt(unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC | extra,
                    0o644 as libc::c_uint,
                )
            })
            // SAFETY: `fd` was just returned by a successful open.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let mut fd = open(0)?;
        let st = fstat(&fd)?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if st.st_uid != me || st.st_mode & 0o022 != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG
        {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::unlink(c.as_ptr()) };
            fd = open(libc::O_EXCL)?;
        }
        // The umask may have taken bits off; readers check for exactly "not writable by others".
        // SAFETY: a valid fd.
        cvt(unsafe { libc::fchmod(fd.as_raw_fd(), 0o644) })?;
        // SAFETY: a valid fd.
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), SIZE as libc::off_t) })?;
        // SAFETY: a fresh shared mapping of a file of SIZE bytes.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page = StatePage {
            path: path.to_path_buf(),
            base: base.cast(),
            write: Mutex::new(()),
            _fd: fd,
        };
        page.u64_at(0).store(MAGIC, Ordering::Relaxed);
        page.u32_at(OFF_VERSION).store(VERSION, Ordering::Relaxed);
        Ok(page)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        // SAFETY: `off` is 8-aligned and inside the mapping, which lives as long as `self`.
        unsafe { &*self.base.add(off).cast::<AtomicU64>() }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: `off` is 4-aligned and inside the mapping, which lives as long as `self`.
        unsafe { &*self.base.add(off).cast::<AtomicU32>() }
    }

    /// Writes one state: the role, for a primary its deadline (CLOCK_BOOTTIME ns), and the
    /// `.health` mirror (left out if longer than [`HEALTH_MAX`]).
    pub fn write(&self, role: Role, primary_until_boot: Option<u64>, closed: bool, health: &[u8]) {
        let _w = self.write.lock();
        let seq = self.u64_at(OFF_SEQ);
        let s = seq.load(Ordering::Relaxed) | 1;
        seq.store(s, Ordering::Relaxed);
        fence(Ordering::Release);
        self.u32_at(OFF_ROLE)
            .store(role_code(role), Ordering::Relaxed);
        self.u64_at(OFF_UNTIL)
            .store(primary_until_boot.unwrap_or(0), Ordering::Relaxed);
        let mut flags = if closed { FLAG_CLOSED } else { 0 };
        if !health.is_empty() && health.len() <= HEALTH_MAX {
            for (i, b) in health.iter().enumerate() {
                self.u8_at(OFF_HEALTH + i).store(*b, Ordering::Relaxed);
            }
            self.u32_at(OFF_HEALTH_LEN)
                .store(health.len() as u32, Ordering::Relaxed);
            flags |= FLAG_HEALTH;
        }
        self.u32_at(OFF_FLAGS).store(flags, Ordering::Relaxed);
        seq.store(s.wrapping_add(1), Ordering::Release);
    }

    fn u8_at(&self, off: usize) -> &AtomicU8 {
        assert!(off < SIZE);
        // SAFETY: `off` is inside the mapping, which lives as long as `self`.
        unsafe { &*self.base.add(off).cast::<AtomicU8>() }
    }

    /// Marks the page closed (readers go back to the mount) and removes its name.
    pub fn close(&self) {
        self.write(Role::Electing, None, true, &[]);
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for StatePage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `create`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), SIZE) };
    }
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid fd and out-pointer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised by the successful call.
    Ok(unsafe { st.assume_init() })
}

/// What a reader found in a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageRead {
    /// The role as of now (an expired `primary` is already `electing`).
    Role(Role),
    /// Not a page of this version, closed, or never stable: ask the mount instead.
    AskTheMount,
}

/// Reads a page mapped at `base` (at least [`SIZE`] bytes, 8-aligned), with `now_boot` the
/// CLOCK_BOOTTIME of the reader. Shared by the shim's tests and the Python extension.
///
/// # Safety
/// `base` must point to a live mapping of at least `SIZE` bytes, aligned to 8.
pub unsafe fn read_at(base: *const u8, now_boot: impl Fn() -> u64) -> PageRead {
    // SAFETY: the caller guarantees the mapping; every offset used is aligned and inside it.
    let u64_at = |off: usize| unsafe { &*base.add(off).cast::<AtomicU64>() };
    // SAFETY: as above.
    let u32_at = |off: usize| unsafe { &*base.add(off).cast::<AtomicU32>() };
    if u64_at(0).load(Ordering::Relaxed) != MAGIC
        || u32_at(OFF_VERSION).load(Ordering::Relaxed) != VERSION
    {
        return PageRead::AskTheMount;
    }
    // A writer holds the counter odd for a few stores; a bounded number of tries.
    for _ in 0..10_000 {
        let s1 = u64_at(OFF_SEQ).load(Ordering::Acquire);
        if s1 & 1 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let role = u32_at(OFF_ROLE).load(Ordering::Relaxed);
        let until = u64_at(OFF_UNTIL).load(Ordering::Relaxed);
        let flags = u32_at(OFF_FLAGS).load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if u64_at(OFF_SEQ).load(Ordering::Relaxed) != s1 {
            continue;
        }
        if flags & FLAG_CLOSED != 0 {
            return PageRead::AskTheMount;
        }
        return match role {
            0 if until != 0 && now_boot() >= until => PageRead::Role(Role::Electing),
            0 => PageRead::Role(Role::Primary),
            1 => PageRead::Role(Role::Replica),
            2 => PageRead::Role(Role::Electing),
            3 => PageRead::Role(Role::Witness),
            _ => PageRead::AskTheMount,
        };
    }
    PageRead::AskTheMount
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(base: *const u8, now: impl Fn() -> u64) -> PageRead {
        // SAFETY: `base` is the live mapping of a page the test holds.
        unsafe { read_at(base, now) }
    }

    #[test]
    fn written_states_read_back_and_a_primary_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("page");
        let page = StatePage::create(&path).unwrap();
        let base = page.base.cast_const();
        page.write(Role::Replica, None, false, b"{}");
        assert_eq!(read(base, || 5), PageRead::Role(Role::Replica));
        page.write(Role::Primary, Some(100), false, &[]);
        assert_eq!(read(base, || 99), PageRead::Role(Role::Primary));
        assert_eq!(read(base, || 100), PageRead::Role(Role::Electing));
        page.write(Role::Primary, None, false, &[b'x'; HEALTH_MAX + 1]);
        assert_eq!(read(base, || u64::MAX), PageRead::Role(Role::Primary));
        let mode = std::fs::metadata(&path).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o644
        );
        page.close();
        assert_eq!(read(base, || 0), PageRead::AskTheMount);
        assert!(!path.exists());
    }

    #[test]
    fn the_health_mirror_is_written_when_it_fits() {
        let dir = tempfile::tempdir().unwrap();
        let page = StatePage::create(&dir.path().join("page")).unwrap();
        page.write(Role::Replica, None, false, br#"{"term":3}"#);
        assert_eq!(page.u32_at(OFF_FLAGS).load(Ordering::Relaxed), FLAG_HEALTH);
        let len = page.u32_at(OFF_HEALTH_LEN).load(Ordering::Relaxed) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|i| page.u8_at(OFF_HEALTH + i).load(Ordering::Relaxed))
            .collect();
        assert_eq!(bytes, br#"{"term":3}"#);
        // Too long for the page: left out, and readers ask the mount for `.health`.
        page.write(Role::Replica, None, false, &[b' '; HEALTH_MAX + 1]);
        assert_eq!(page.u32_at(OFF_FLAGS).load(Ordering::Relaxed), 0);
        page.close();
        assert_eq!(page.u32_at(OFF_FLAGS).load(Ordering::Relaxed), FLAG_CLOSED);
    }

    #[test]
    fn a_file_others_may_write_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("page");
        std::fs::write(&path, b"primary").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .unwrap();
        let page = StatePage::create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o644
        );
        assert_eq!(meta.len(), SIZE as u64);
        drop(page);
    }
}
