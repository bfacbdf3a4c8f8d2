//! The LiteFS health probe of `litefs-py run`: every [`EVERY`], on threads of its own, whether
//! LiteFS's FUSE mount answers (a `stat` of `mount.lower`), whether its HTTP API answers
//! (`GET /info` through [`super::info`], and whether it says `isPrimary`), and its lag (its `.lag` file). The result
//! goes into the shared [`LiteFsState`], from which the view publisher renders `.health`.
//!
//! Nothing here can make a virtual-file read wait: readers only ever see the last published
//! snapshot. The probe itself must not pile up either: a hung LiteFS can block a `stat` on its
//! mount indefinitely, so file-system checks run on one worker thread, are given
//! [`FS_TIMEOUT`], and no new check is sent while one is still stuck (the mount counts as not
//! answering meanwhile). HTTP calls have connect and read timeouts.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::info::{self, Info};
use super::state::{LiteFsProbe, LiteFsState};

/// How often LiteFS is looked at.
pub const EVERY: Duration = Duration::from_millis(500);
/// How long a `stat` or a `.lag` read may take before the mount counts as not answering.
const FS_TIMEOUT: Duration = Duration::from_secs(1);
/// Connect and read timeouts of `GET /info`.
const HTTP_TIMEOUT: Duration = Duration::from_secs(1);

/// The running probe. Stopped (and its thread joined, bounded by one round) on drop.
pub struct Probe {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Probe {
    /// Starts probing LiteFS's mount at `lower` and its API at `http` (LiteFS's `http.addr`).
    pub fn start(state: LiteFsState, lower: PathBuf, http: Option<SocketAddr>) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("litefs-probe".into())
            .spawn(move || run(&state, &lower, http, &s))
            .map_err(|e| tracing::error!("cannot start the LiteFS probe: {e}"))
            .ok();
        Probe { stop, handle }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What the file-system worker found.
#[derive(Debug, Clone, Copy)]
struct FsLook {
    mounted: bool,
    lag_ms: Option<i64>,
}

fn run(state: &LiteFsState, lower: &Path, http: Option<SocketAddr>, stop: &AtomicBool) {
    let (req_tx, req_rx) = mpsc::channel::<()>();
    let (res_tx, res_rx) = mpsc::channel::<FsLook>();
    let dir = lower.to_path_buf();
    // Detached on purpose: if it is stuck in a FUSE call, nobody can unstick it; it ends with
    // the process (or when the request returns, once its channel is gone).
    let worker = std::thread::Builder::new()
        .name("litefs-probe-fs".into())
        .spawn(move || {
            while req_rx.recv().is_ok() {
                if res_tx.send(look_at_fs(&dir)).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = worker {
        tracing::error!("cannot start the LiteFS probe: {e}");
        return;
    }
    // One runtime and client for the probe's life: `/info` every round, on this thread.
    let http_client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| {
            Ok((
                rt,
                info::client(HTTP_TIMEOUT).map_err(std::io::Error::other)?,
            ))
        });
    let http_client = match http_client {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot start the LiteFS probe: {e}");
            return;
        }
    };
    let get_info = |addr: SocketAddr| -> Option<Info> {
        let (rt, client) = &http_client;
        rt.block_on(info::get(client, &addr.to_string())).ok()
    };
    let mut outstanding = false;
    let mut last_fs = FsLook {
        mounted: false,
        lag_ms: None,
    };
    while !stop.load(Ordering::Relaxed) {
        if !outstanding {
            outstanding = req_tx.send(()).is_ok();
        }
        if outstanding {
            match res_rx.recv_timeout(FS_TIMEOUT) {
                Ok(look) => {
                    outstanding = false;
                    last_fs = look;
                }
                Err(_) => {
                    // Still stuck: the mount does not answer; ask again once it did.
                    last_fs = FsLook {
                        mounted: false,
                        lag_ms: None,
                    };
                }
            }
        }
        let info = http.and_then(get_info);
        let probe = LiteFsProbe {
            mounted: last_fs.mounted,
            serving: info.is_some(),
            is_primary: info.as_ref().is_some_and(|i| i.is_primary),
            primary_known: info.as_ref().is_some_and(Info::primary_known),
            has_cluster_id: info
                .as_ref()
                .and_then(|i| i.cluster_id.as_deref())
                .is_some_and(|id| !id.is_empty()),
            lag_ms: last_fs.lag_ms,
        };
        if state.probe() != Some(probe) {
            tracing::debug!(?probe, "LiteFS probe");
        }
        state.set_probe(probe);
        sleep_unless_stopped(stop, EVERY);
    }
}

fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}

/// The mount root must be a mount (another device than its parent) that answers a `statfs`,
/// and LiteFS's `.lag`. `statfs`, not `stat`, for "answers": the kernel serves `stat` of a FUSE
/// root from cached attributes, even for a while after its daemon died.
fn look_at_fs(lower: &Path) -> FsLook {
    let parent_dev = lower
        .parent()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.dev());
    let mounted = std::fs::metadata(lower).is_ok_and(|m| Some(m.dev()) != parent_dev)
        && super::process::statfs(lower).is_ok();
    let lag_ms = mounted
        .then(|| std::fs::read_to_string(lower.join(".lag")).ok())
        .flatten()
        .and_then(|s| parse_lag(&s));
    FsLook { mounted, lag_ms }
}

/// LiteFS's `.lag`: `%+010d\n`, milliseconds. LiteFS writes `i32::MAX` when it does not know
/// (a replica before its first contact with a primary, or cut off from it): that is `None`
/// here, so that `.health` says `null` rather than a lag of 2147483647 ms.
pub fn parse_lag(s: &str) -> Option<i64> {
    s.trim()
        .parse()
        .ok()
        .filter(|&ms: &i64| ms != i64::from(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag() {
        assert_eq!(parse_lag("+0000000000\n"), Some(0));
        assert_eq!(parse_lag("+2147483647\n"), None, "LiteFS's 'unknown'");
        assert_eq!(parse_lag("-0000000012\n"), Some(-12));
        assert_eq!(parse_lag("x"), None);
    }

    #[test]
    fn a_plain_directory_is_not_a_mount() {
        let dir = tempfile::tempdir().unwrap();
        let look = look_at_fs(dir.path());
        assert!(!look.mounted);
        assert_eq!(look.lag_ms, None);
        assert!(look_at_fs(Path::new("/proc")).mounted);
    }
}
