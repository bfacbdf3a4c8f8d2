//! Blocking lock requests (`F_SETLKW`, blocking `flock`), waited for on their own threads.
//!
//! A FUSE worker must never sit in a lock wait: with a few workers, a handful of waiting
//! clients would stall the whole mount. Each blocking request gets a short-lived thread.
//!
//! fuser 0.18 does not deliver FUSE_INTERRUPT, so the kernel cannot tell us when the waiting
//! client is signalled or killed — and a killed process would otherwise stay in D state until
//! the lock is granted. A monitor thread therefore polls each waiting client's pending signals
//! (`/proc/<tid>/status`) and, when one is pending and unblocked (or the client is gone),
//! interrupts the waiter thread with a signal, which makes its `fcntl` return EINTR; the client
//! then sees EINTR, exactly as a signal during `F_SETLKW` would give it.

use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use rustc_hash::FxHashMap;

use crate::error::{FsError, FsResult};
use crate::locks::PendingWait;

/// More waiting clients than this get ENOLCK rather than another thread.
const MAX_WAITERS: usize = 256;
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy)]
struct Waiter {
    thread: libc::pthread_t,
    requester_tid: u32,
}

#[derive(Debug, Default)]
struct Inner {
    active: Mutex<FxHashMap<u64, Waiter>>,
    wake: Condvar,
    next_id: AtomicU64,
}

#[derive(Debug)]
pub struct Waiters {
    inner: Arc<Inner>,
    monitor: Once,
}

impl Default for Waiters {
    fn default() -> Self {
        Waiters {
            inner: Arc::default(),
            monitor: Once::new(),
        }
    }
}

fn interrupt_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

extern "C" fn on_interrupt(_: libc::c_int) {}

fn install_handler() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: installs a handler that does nothing; without SA_RESTART, so that a blocked
        // fcntl returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_interrupt as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(interrupt_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// Whether the client thread has a deliverable signal pending, or is gone.
pub fn requester_interrupted(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = field("SigPnd:") | field("ShdPnd:");
    pending & !field("SigBlk:") != 0
}

impl Inner {
    fn monitor(self: Arc<Self>) {
        loop {
            let mut active = self.active.lock();
            while active.is_empty() {
                self.wake.wait(&mut active);
            }
            drop(active);
            std::thread::sleep(POLL);
            let active = self.active.lock();
            for w in active.values() {
                if requester_interrupted(w.requester_tid) {
                    // SAFETY: the thread is registered, so it has not exited (it deregisters
                    // under this lock before it ends).
                    unsafe { libc::pthread_kill(w.thread, interrupt_signal()) };
                }
            }
        }
    }
}

impl Waiters {
    /// Waits for `pending` on a new thread and calls `done` with the outcome there.
    pub fn spawn(
        &self,
        requester_tid: u32,
        pending: PendingWait,
        done: impl FnOnce(FsResult<()>) + Send + 'static,
    ) -> FsResult<()> {
        let n = self.inner.active.lock().len();
        if n >= MAX_WAITERS {
            return Err(FsError::TooManyWaiters(n));
        }
        install_handler();
        self.monitor.call_once(|| {
            let inner = self.inner.clone();
            std::thread::Builder::new()
                .name("lock-wait-monitor".into())
                .spawn(move || inner.monitor())
                .expect("spawn the lock wait monitor");
        });
        let inner = self.inner.clone();
        std::thread::Builder::new()
            .name("lock-wait".into())
            .spawn(move || {
                let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
                // SAFETY: pthread_self has no preconditions.
                let thread = unsafe { libc::pthread_self() };
                inner.active.lock().insert(
                    id,
                    Waiter {
                        thread,
                        requester_tid,
                    },
                );
                inner.wake.notify_one();
                let result = pending.wait();
                inner.active.lock().remove(&id);
                done(result);
            })
            .map_err(FsError::Lower)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_thread_is_not_interrupted() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        assert!(!requester_interrupted(tid));
        assert!(requester_interrupted(u32::MAX - 7));
    }
}
