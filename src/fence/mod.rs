//! The fencer: a small forked process that SIGKILLs this node's LiteFS (and aborts its FUSE
//! connection) once the lease the daemon last granted it has run out without a newer grant.
//! It depends on nothing of the daemon's runtime, so a stalled `litefs-py` (SIGSTOP, a wedged
//! runtime, a disk stall) cannot keep its LiteFS primary: docs/architecture.md, "The lease
//! invariant" and "LiteFS's Consul client" (a renewal sent to a stalled lease API hangs, and
//! while it hangs LiteFS neither renews nor demotes).
//!
//! What it is told ([`Feed`]): "this node's LiteFS may be primary until D", D = the instant the
//! lease API decided the last grant or renewal (before answering it) + the session's TTL, on
//! this host's CLOCK_BOOTTIME. The feed is written synchronously by the lease API before it
//! answers LiteFS (through [`LiteFsState::set_hold_observer`]), so a grant LiteFS acts on is
//! always known to the fencer first; a feed that is lost or late only makes D earlier.
//!
//! What it does ([`child`]): at `D - lead` it asks LiteFS's `GET /info` (bounded by `lead / 2`):
//! a LiteFS that says it is not primary (it demoted on a 404, or released the lease) is left
//! alone until the next grant; one that says it is primary, or does not answer, is fenced:
//! its FUSE connection is aborted (every pending and later request fails at once) and it gets
//! SIGKILL (by pidfd, so never another process). If the fencer itself wakes after D (it was
//! frozen, or the host was suspended), it fences at once without asking. CLOCK_BOOTTIME, not
//! CLOCK_MONOTONIC: the latter stops while the host is suspended, and so do LiteFS's own
//! timers, so after a resume both would believe a long-expired lease still valid; BOOTTIME
//! counts the suspension, and a `timerfd` on it fires at resume.
//!
//! It runs in a session of its own (a Ctrl-Z or a SIGSTOP/SIGKILL of `run`'s process group does
//! not take it), ignores the terminal's signals, and ends when its feed pipe closes: `run`
//! stopped it, or died (then it kills LiteFS first, as LiteFS's parent-death signal does too).
//! docs/decisions.md, "A fencer outside the daemon's runtime", gives the argument.

mod child;
mod info_check;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::litefs::state::{LiteFsState, LocalHold};

/// One record on the feed pipe: a tag and a value, 16 bytes (well under `PIPE_BUF`, so every
/// write is atomic).
const RECORD: usize = 16;
/// The value is a CLOCK_BOOTTIME deadline in nanoseconds.
const TAG_DEADLINE: u64 = 1;
/// The value is LiteFS's FUSE connection id (its mount's device number, as fusectl names it).
const TAG_CONNECTION: u64 = 2;
/// The byte the fencer writes on its report pipe after it fenced LiteFS.
const REPORT_FENCED: u8 = b'F';

/// The fencer asks LiteFS this long before D, and must have decided by `lead / 2` before it.
pub fn lead(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(50), Duration::from_millis(250))
}

/// CLOCK_BOOTTIME now, in nanoseconds.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_BOOTTIME exists on every Linux this runs on (2.6.39+).
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The BOOTTIME deadline of `hold`: its `until` (a monotonic instant) moved onto BOOTTIME.
/// BOOTTIME is read before the monotonic clock, so the result is never later than the truth.
pub fn boottime_deadline(hold: &LocalHold) -> u64 {
    let boot = boottime_ns();
    let left = hold.until.saturating_duration_since(Instant::now());
    boot.saturating_add(left.as_nanos().min(u128::from(u64::MAX)) as u64)
}

fn pipe(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), flags | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn write_record(fd: RawFd, tag: u64, value: u64) {
    let mut rec = [0u8; RECORD];
    rec[..8].copy_from_slice(&tag.to_ne_bytes());
    rec[8..].copy_from_slice(&value.to_ne_bytes());
    // SAFETY: a valid buffer of RECORD bytes. Non-blocking: a full pipe (the fencer is not
    // reading) drops the record, which leaves the fencer with an earlier deadline: safe.
    unsafe { libc::write(fd, rec.as_ptr().cast(), RECORD) };
}

/// The feed's write end, shared by the lease API's observer and the supervisor; closed (the
/// fencer then ends) by [`Fencer::stop`].
#[derive(Clone)]
struct Writer(Arc<Mutex<Option<OwnedFd>>>);

impl Writer {
    fn send(&self, tag: u64, value: u64) {
        if let Some(fd) = self.0.lock().as_ref() {
            write_record(fd.as_raw_fd(), tag, value);
        }
    }
}

/// The feed pipe, created (and hooked to the lease API's decisions) before LiteFS starts, so no
/// grant can be made that the fencer does not hear of.
pub struct Feed {
    read: OwnedFd,
    writer: Writer,
}

impl Feed {
    /// Creates the pipe and makes every grant or renewal the lease API decides for the local
    /// LiteFS write its deadline into it before the answer goes out.
    pub fn hook(state: &LiteFsState) -> io::Result<Feed> {
        let (read, write) = pipe(0)?;
        // SAFETY: fcntl on a descriptor we own. The write end must never block the lease API.
        unsafe {
            let fl = libc::fcntl(write.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(write.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        let writer = Writer(Arc::new(Mutex::new(Some(write))));
        let w = writer.clone();
        state.set_hold_observer(Box::new(move |hold| {
            if let Some(h) = hold {
                w.send(TAG_DEADLINE, boottime_deadline(&h));
            }
        }));
        Ok(Feed { read, writer })
    }
}

/// Where the fencer finds LiteFS.
#[derive(Debug, Clone)]
pub struct Target {
    /// LiteFS's PID (a child of ours, not reaped yet: the pidfd is opened from it).
    pub pid: i32,
    /// LiteFS's HTTP API (`litefs.http-addr`, as a local address).
    pub http: Option<SocketAddr>,
    /// `lease.ttl`: sets the lead (see [`lead`]).
    pub ttl: Duration,
}

/// The running fencer, as `run` sees it.
pub struct Fencer {
    pid: i32,
    writer: Writer,
    report: OwnedFd,
    fenced: bool,
}

impl Fencer {
    /// Forks the fencer for `target`, reading `feed`.
    pub fn start(feed: Feed, target: &Target) -> io::Result<Fencer> {
        // SAFETY: pidfd_open on an unreaped child of ours: it names exactly that process.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, target.pid, 0) };
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created, owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
        let (report_r, report_w) = pipe(libc::O_NONBLOCK)?;
        let lead = lead(target.ttl);
        let plan = child::Plan::new(
            feed.read.as_raw_fd(),
            report_w.as_raw_fd(),
            pidfd.as_raw_fd(),
            target.pid,
            target.http.map(info_check::Request::new),
            lead,
        );
        // SAFETY: the child only makes async-signal-safe calls on what `plan` prepared, then
        // `_exit` (see `child::run`).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: in the child right after fork.
            unsafe { child::run(&plan) }
        }
        drop((feed.read, report_w, pidfd));
        tracing::info!(pid, litefs = target.pid, ?lead, "the fencer started");
        Ok(Fencer {
            pid,
            writer: feed.writer,
            report: report_r,
            fenced: false,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Tells the fencer LiteFS's FUSE connection (from its mount's `major:minor`), so that a
    /// fence also aborts it.
    pub fn set_connection(&self, dev: &str) {
        if let Some(id) = connection_id(dev) {
            self.writer.send(TAG_CONNECTION, id);
        }
    }

    /// Whether the fencer has fenced LiteFS (it says so on its report pipe).
    pub fn fenced(&mut self) -> bool {
        if !self.fenced {
            let mut b = [0u8; 1];
            // SAFETY: a one-byte buffer; the read end is non-blocking.
            let n = unsafe { libc::read(self.report.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
            self.fenced = n == 1 && b[0] == REPORT_FENCED;
        }
        self.fenced
    }

    /// Closes the feed: the fencer makes sure LiteFS is gone and exits. Call once LiteFS is
    /// stopped. The supervisor reaps it.
    pub fn stop(&self) {
        self.writer.0.lock().take();
    }
}

/// fusectl's name for the connection of a mount whose device is `major:minor` (mountinfo's
/// third field): the kernel's `dev_t`, `major << 20 | minor`.
fn connection_id(dev: &str) -> Option<u64> {
    let (major, minor) = dev.split_once(':')?;
    let (major, minor): (u64, u64) = (major.parse().ok()?, minor.parse().ok()?);
    Some((major << 20) | minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_the_kernels_dev_t() {
        assert_eq!(connection_id("0:48"), Some(48));
        assert_eq!(connection_id("1:2"), Some((1 << 20) | 2));
        assert_eq!(connection_id("x"), None);
    }

    #[test]
    fn the_lead_scales_with_the_ttl_within_bounds() {
        assert_eq!(lead(Duration::from_secs(2)), Duration::from_millis(250));
        assert_eq!(lead(Duration::from_millis(500)), Duration::from_millis(125));
        assert_eq!(lead(Duration::from_millis(100)), Duration::from_millis(50));
    }

    #[test]
    fn a_deadline_is_never_later_than_the_hold() {
        let before = boottime_ns();
        let d = boottime_deadline(&LocalHold {
            term: 1,
            until: Instant::now() + Duration::from_secs(2),
        });
        let after = boottime_ns();
        // Never later than the hold (read from the clocks around it); earlier only by the time
        // the conversion took.
        assert!(
            d > before && d <= after + 2_000_000_000,
            "{before} {d} {after}"
        );
        // Already past: now.
        let d = boottime_deadline(&LocalHold {
            term: 1,
            until: Instant::now(),
        });
        assert!(d <= boottime_ns());
    }
}
