//! The one polling loop of the kit: every wait has a deadline, and a run can be interrupted
//! (the benchmark's Ctrl-C) through one flag that every wait checks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::Error;

/// The default pause between two polls of a test's wait.
pub const INTERVAL: Duration = Duration::from_millis(10);

static ABORT: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Makes every wait of the kit return [`Error::Interrupted`] once `flag` is set (the benchmark
/// passes its SIGINT flag). Only the first call counts.
pub fn abort_on(flag: Arc<AtomicBool>) {
    let _ = ABORT.set(flag);
}

/// Whether the run was asked to stop.
pub fn interrupted() -> bool {
    ABORT.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// Calls `f` every `interval` until it returns `Ok(Some(_))` or an error, or `timeout` passes
/// ([`Error::TimedOut`], saying `what`; see [`Error::with_log`] to add a log to it).
pub fn try_poll_until<T>(
    timeout: Duration,
    interval: Duration,
    what: &str,
    mut f: impl FnMut() -> crate::Result<Option<T>>,
) -> crate::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(Error::TimedOut {
                what: what.to_string(),
                after: timeout,
            });
        }
        if interrupted() {
            return Err(Error::Interrupted);
        }
        std::thread::sleep(interval);
    }
}

/// [`try_poll_until`] for a check that cannot fail.
pub fn poll_until<T>(
    timeout: Duration,
    interval: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> crate::Result<T> {
    try_poll_until(timeout, interval, what, || Ok(f()))
}

/// A test's wait: polls `f` every 10 ms until it returns `Some`, or panics with `what`.
#[track_caller]
pub fn wait_for<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    match poll_until(timeout, INTERVAL, what, f) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value() {
        let mut n = 0;
        let v = poll_until(
            Duration::from_secs(1),
            Duration::from_millis(1),
            "n",
            || {
                n += 1;
                (n == 3).then_some(n)
            },
        );
        assert_eq!(v.unwrap(), 3);
    }

    #[test]
    fn times_out_within_its_bound() {
        let t = Instant::now();
        let e = poll_until::<()>(
            Duration::from_millis(30),
            Duration::from_millis(5),
            "never",
            || None,
        )
        .unwrap_err();
        assert!(matches!(e, Error::TimedOut { .. }), "{e}");
        assert!(e.to_string().contains("never"));
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn an_error_ends_the_wait() {
        let e = try_poll_until::<()>(
            Duration::from_secs(5),
            Duration::from_millis(1),
            "x",
            || Err(Error::failed("boom")),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "boom");
    }
}
