//! The fencer's body, in the forked child: async-signal-safe calls only (the parent has many
//! threads), on what [`Plan`] prepared before the fork, with stack buffers. See [`super`].

use std::os::fd::RawFd;
use std::time::Duration;

use super::info_check::{Answer, Request};
use super::{RECORD, REPORT_FENCED, TAG_CONNECTION, TAG_DEADLINE, boottime_ns};

/// Everything the child needs, prepared before `fork`.
pub struct Plan {
    feed: RawFd,
    report: RawFd,
    pidfd: RawFd,
    litefs_pid: i32,
    info: Option<Request>,
    lead_ns: u64,
}

impl Plan {
    pub fn new(
        feed: RawFd,
        report: RawFd,
        pidfd: RawFd,
        litefs_pid: i32,
        info: Option<Request>,
        lead: Duration,
    ) -> Plan {
        Plan {
            feed,
            report,
            pidfd,
            litefs_pid,
            info,
            lead_ns: lead.as_nanos() as u64,
        }
    }
}

/// A line for stderr, built without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn new() -> Line {
        let mut l = Line {
            buf: [0; 256],
            len: 0,
        };
        l.put(b"litefs-py fencer: ");
        l
    }

    fn put(&mut self, s: &[u8]) -> &mut Line {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self
    }

    fn num(&mut self, mut v: u64) -> &mut Line {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&digits[i..])
    }

    fn emit(&mut self) {
        self.put(b"\n");
        // SAFETY: a valid buffer; stderr may be gone, which changes nothing.
        unsafe { libc::write(2, self.buf.as_ptr().cast(), self.len) };
    }
}

struct State {
    /// The BOOTTIME deadline of the last grant (ns); meaningful while `armed`.
    deadline: u64,
    armed: bool,
    /// LiteFS's FUSE connection id, once told.
    connection: Option<u64>,
    timer: RawFd,
}

/// Closes every fd from `from` up to `to` inclusive (nothing if empty).
unsafe fn close_between(from: u32, to: u32) {
    if from <= to {
        // SAFETY: closing descriptors the child does not use.
        unsafe { libc::syscall(libc::SYS_close_range, from, to, 0u32) };
    }
}

/// The fencer. Never returns.
///
/// # Safety
/// Call only in the child right after `fork`.
pub unsafe fn run(plan: &Plan) -> ! {
    // SAFETY: async-signal-safe syscalls only, on the plan's descriptors and stack buffers.
    unsafe {
        // Keep stdio, the feed, the report pipe and the pidfd; close the rest (the parent's
        // listeners, /dev/fuse, lock fds: they must go with the parent).
        let mut keep = [plan.feed as u32, plan.report as u32, plan.pidfd as u32];
        keep.sort_unstable();
        let mut from = 3u32;
        for k in keep {
            if k >= from {
                close_between(from, k - 1);
                from = k + 1;
            }
        }
        close_between(from, u32::MAX);
        // Its own session: a stop or kill of `run`'s process group does not reach it.
        libc::setsid();
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::prctl(
            libc::PR_SET_NAME,
            c"litefs-py-fence".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        let timer = libc::timerfd_create(libc::CLOCK_BOOTTIME, libc::TFD_CLOEXEC);
        if timer < 0 {
            Line::new()
                .put(b"cannot create a CLOCK_BOOTTIME timer: LiteFS killed")
                .emit();
            fence(plan, None);
            libc::_exit(1);
        }
        let mut st = State {
            deadline: 0,
            armed: false,
            connection: None,
            timer,
        };
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: plan.feed,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: timer,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if libc::poll(fds.as_mut_ptr(), 2, -1) < 0 {
                continue; // EINTR
            }
            if fds[0].revents != 0 && !read_feed(plan, &mut st) {
                // `run` is gone or stopped us: LiteFS must not outlive it (its parent-death
                // signal says the same). By pidfd: never another process.
                kill(plan);
                libc::_exit(0);
            }
            if fds[1].revents != 0 {
                let mut expirations = [0u8; 8];
                libc::read(timer, expirations.as_mut_ptr().cast(), 8);
                check(plan, &mut st);
            }
        }
    }
}

/// Reads what the feed has (one read); `false` at EOF.
unsafe fn read_feed(plan: &Plan, st: &mut State) -> bool {
    let mut buf = [0u8; RECORD * 64];
    // SAFETY: a valid buffer; the feed is readable (polled).
    let n = unsafe { libc::read(plan.feed, buf.as_mut_ptr().cast(), buf.len()) };
    if n == 0 {
        return false;
    }
    if n < 0 {
        return true; // EINTR: the next round
    }
    // Writes are whole records (atomic, under PIPE_BUF) and the buffer holds whole records.
    for rec in buf[..n as usize].chunks_exact(RECORD) {
        let tag = u64::from_ne_bytes(rec[..8].try_into().expect("8 bytes"));
        let value = u64::from_ne_bytes(rec[8..].try_into().expect("8 bytes"));
        match tag {
            TAG_DEADLINE => {
                st.deadline = value;
                st.armed = true;
                // SAFETY: our timer fd and plain data.
                unsafe { set_timer(st.timer, value.saturating_sub(plan.lead_ns).max(1)) };
            }
            TAG_CONNECTION => st.connection = Some(value),
            _ => {}
        }
    }
    true
}

/// Reads whatever the feed has without waiting; `false` at EOF.
unsafe fn drain_feed(plan: &Plan, st: &mut State) -> bool {
    loop {
        let mut p = libc::pollfd {
            fd: plan.feed,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; no wait.
        if unsafe { libc::poll(&mut p, 1, 0) } <= 0 || p.revents == 0 {
            return true;
        }
        // SAFETY: as in `read_feed`.
        if !unsafe { read_feed(plan, st) } {
            return false;
        }
    }
}

/// The timer: `lead` before the deadline (or later, if the fencer did not run then).
unsafe fn check(plan: &Plan, st: &mut State) {
    // SAFETY: (all below) async-signal-safe calls on the plan's descriptors.
    unsafe {
        if !drain_feed(plan, st) {
            kill(plan);
            libc::_exit(0);
        }
        if !st.armed {
            return;
        }
        let now = boottime_ns();
        if now < st.deadline.saturating_sub(plan.lead_ns) {
            return; // a newer deadline arrived meanwhile; its timer is set
        }
        if !alive(plan) {
            // LiteFS exited (`run` is stopping it, or it died): nothing to fence.
            st.armed = false;
            return;
        }
        if now >= st.deadline {
            // Woken after the deadline: this process did not run in time (frozen, suspended):
            // no time left to ask.
            Line::new()
                .put(b"woke ")
                .num((now - st.deadline) / 1_000_000)
                .put(b" ms after LiteFS's lease ran out (this host or process was stalled): fencing LiteFS")
                .emit();
            fence(plan, st.connection);
            st.armed = false;
            return;
        }
        let deadline = st.deadline;
        // Decided by `lead / 2` before the deadline at the latest.
        let budget_ms = ((deadline - now).saturating_sub(plan.lead_ns / 2) / 1_000_000).max(1);
        let answer = match &plan.info {
            Some(req) => req.ask(budget_ms.min(i32::MAX as u64) as i32),
            None => Answer::Unknown,
        };
        if !drain_feed(plan, st) {
            kill(plan);
            libc::_exit(0);
        }
        if st.deadline != deadline {
            return; // a grant came in while we asked: its deadline rules
        }
        match answer {
            Answer::NotPrimary => {
                // Demoted (a 404 on its renewal, a release): nothing to fence until it is
                // granted the lease again, which feeds a new deadline first.
                st.armed = false;
            }
            Answer::Primary | Answer::Unknown => {
                Line::new()
                    .put(b"LiteFS's lease runs out in ")
                    .num(deadline.saturating_sub(boottime_ns()) / 1_000_000)
                    .put(b" ms with no renewal granted, and LiteFS ")
                    .put(if answer == Answer::Primary {
                        b"still says it is primary"
                    } else {
                        b"does not answer GET /info"
                    })
                    .put(b": fencing LiteFS (the litefs-py daemon is stalled?)")
                    .emit();
                fence(plan, st.connection);
                st.armed = false;
            }
        }
    }
}

/// Aborts LiteFS's FUSE connection (while LiteFS lives, the id is its own), then SIGKILL;
/// tells `run`.
unsafe fn fence(plan: &Plan, connection: Option<u64>) {
    // SAFETY: async-signal-safe calls on the plan's descriptors and stack buffers.
    unsafe {
        let alive = alive(plan);
        // Told first: `run` may reap LiteFS the instant it dies, and must know why.
        let b = [REPORT_FENCED];
        libc::write(plan.report, b.as_ptr().cast(), 1);
        if alive && let Some(id) = connection {
            abort_connection(id);
        }
        kill(plan);
        Line::new()
            .put(b"LiteFS (pid ")
            .num(plan.litefs_pid as u64)
            .put(if alive {
                b") killed, its FUSE connection aborted"
            } else {
                b") was already gone"
            })
            .emit();
    }
}

/// Whether LiteFS still runs (signal 0 by pidfd). Once `run` has reaped it (within ~100 ms of its
/// exit) this is false; an unreaped zombie still counts, which costs only a needless kill.
unsafe fn alive(plan: &Plan) -> bool {
    // SAFETY: a syscall on our pidfd; signal 0 only checks.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            plan.pidfd,
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        ) == 0
    }
}

/// SIGKILL to LiteFS by pidfd: a process that is gone (or reaped) is never confused with
/// another that got its PID.
unsafe fn kill(plan: &Plan) {
    // SAFETY: a syscall on our pidfd.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            plan.pidfd,
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
}

/// Writes `1` to `/sys/fs/fuse/connections/<id>/abort` (mounting fusectl there if needed):
/// every pending and later request on that FUSE connection fails at once.
unsafe fn abort_connection(id: u64) {
    let mut path = Line {
        buf: [0; 256],
        len: 0,
    };
    path.put(b"/sys/fs/fuse/connections/")
        .num(id)
        .put(b"/abort\0");
    // SAFETY: NUL-terminated paths and literals; plain syscalls.
    unsafe {
        let mut fd = libc::open(path.buf.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            libc::mount(
                c"fusectl".as_ptr(),
                c"/sys/fs/fuse/connections".as_ptr(),
                c"fusectl".as_ptr(),
                0,
                std::ptr::null(),
            );
            fd = libc::open(path.buf.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
        }
        if fd >= 0 {
            libc::write(fd, b"1".as_ptr().cast(), 1);
            libc::close(fd);
        }
    }
}

/// Arms `timer` to fire at `at` (CLOCK_BOOTTIME ns), absolute.
unsafe fn set_timer(timer: RawFd, at: u64) {
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: (at / 1_000_000_000) as libc::time_t,
            tv_nsec: (at % 1_000_000_000) as libc::c_long,
        },
    };
    // SAFETY: our timer fd and a valid itimerspec.
    unsafe { libc::timerfd_settime(timer, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
}
