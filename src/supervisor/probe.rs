//! The LiteFS health probe of `litefs-py run`: every [`EVERY`], on threads of its own, whether
//! LiteFS's FUSE mount answers (a `stat` of `mount.lower`), whether its HTTP API answers
//! (`GET /info`, and whether it says `isPrimary`), and its lag (its `.lag` file). The result
//! goes into the shared [`LiteFsState`], from which the view publisher renders `.health`.
//!
//! Nothing here can make a virtual-file read wait: readers only ever see the last published
//! snapshot. The probe itself must not pile up either: a hung LiteFS can block a `stat` on its
//! mount indefinitely, so file-system checks run on one worker thread, are given
//! [`FS_TIMEOUT`], and no new check is sent while one is still stuck (the mount counts as not
//! answering meanwhile). HTTP calls have connect and read timeouts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::litefs_state::{LiteFsProbe, LiteFsState};

/// How often LiteFS is looked at.
pub const EVERY: Duration = Duration::from_millis(500);
/// How long a `stat` or a `.lag` read may take before the mount counts as not answering.
const FS_TIMEOUT: Duration = Duration::from_secs(1);
/// Connect and read timeouts of `GET /info`.
const HTTP_TIMEOUT: Duration = Duration::from_secs(1);
/// `/info` is a few hundred bytes; anything longer is not LiteFS.
const MAX_RESPONSE: u64 = 64 * 1024;

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

/// Where to reach LiteFS's API from here: its `http.addr` with an empty or wildcard host
/// replaced by loopback (`:20202` listens on every interface).
pub fn local_http_addr(http_addr: &str) -> Option<SocketAddr> {
    let (host, port) = http_addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = match host {
        "" | "0.0.0.0" => format!("127.0.0.1:{port}"),
        "::" => format!("[::1]:{port}"),
        h if h.contains(':') => format!("[{h}]:{port}"),
        h => format!("{h}:{port}"),
    };
    addr.to_socket_addrs().ok()?.next()
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
            is_primary: info.is_some_and(|i| i.is_primary),
            primary_known: info.is_some_and(|i| i.primary_known),
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
        && super::litefs::statfs(lower).is_ok();
    let lag_ms = mounted
        .then(|| std::fs::read_to_string(lower.join(".lag")).ok())
        .flatten()
        .and_then(|s| parse_lag(&s));
    FsLook { mounted, lag_ms }
}

/// LiteFS's `.lag`: `%+010d\n`, milliseconds.
pub fn parse_lag(s: &str) -> Option<i64> {
    s.trim().parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Info {
    is_primary: bool,
    primary_known: bool,
}

/// `GET /info` on LiteFS's API, with timeouts; `None` if it does not answer 200 with JSON.
fn get_info(addr: SocketAddr) -> Option<Info> {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).ok()?;
    s.set_read_timeout(Some(HTTP_TIMEOUT)).ok()?;
    s.set_write_timeout(Some(HTTP_TIMEOUT)).ok()?;
    let req = format!("GET /info HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.take(MAX_RESPONSE).read_to_end(&mut out).ok()?;
    parse_info_response(&String::from_utf8_lossy(&out))
}

fn parse_info_response(response: &str) -> Option<Info> {
    let (head, body) = response.split_once("\r\n\r\n")?;
    if head.split(' ').nth(1)? != "200" {
        return None;
    }
    // Go's server sends a short body with a Content-Length; take the JSON object whatever the
    // framing.
    // (Whatever answers there sends it: "} {" must not panic.)
    let (start, end) = (body.find('{')?, body.rfind('}')?);
    let body = body.get(start..=end).filter(|_| start < end)?;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let is_primary = v.get("isPrimary")?.as_bool()?;
    let primary_known = is_primary
        || v.get("primary")
            .and_then(|p| p.get("hostname"))
            .and_then(|h| h.as_str())
            .is_some_and(|h| !h.is_empty());
    Some(Info {
        is_primary,
        primary_known,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            local_http_addr(":20202"),
            Some("127.0.0.1:20202".parse().unwrap())
        );
        assert_eq!(
            local_http_addr("0.0.0.0:1"),
            Some("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(local_http_addr("[::]:2"), Some("[::1]:2".parse().unwrap()));
        assert_eq!(
            local_http_addr("127.0.0.2:3"),
            Some("127.0.0.2:3".parse().unwrap())
        );
        assert_eq!(local_http_addr("nonsense"), None);
    }

    #[test]
    fn lag_and_info() {
        assert_eq!(parse_lag("+0000000000\n"), Some(0));
        assert_eq!(parse_lag("+2147483647\n"), Some(i64::from(i32::MAX)));
        assert_eq!(parse_lag("-0000000012\n"), Some(-12));
        assert_eq!(parse_lag("x"), None);
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 80\r\n\r\n{\n  \"clusterID\": \"LFSC1\",\n  \"isPrimary\": false,\n  \"primary\": {\n    \"hostname\": \"node-a\"\n  }\n}";
        assert_eq!(
            parse_info_response(ok),
            Some(Info {
                is_primary: false,
                primary_known: true
            })
        );
        let alone = ok.replace("node-a", "");
        assert_eq!(
            parse_info_response(&alone).map(|i| i.primary_known),
            Some(false)
        );
        let primary = ok.replace("false", "true").replace("node-a", "");
        assert_eq!(
            parse_info_response(&primary),
            Some(Info {
                is_primary: true,
                primary_known: true
            })
        );
        assert_eq!(parse_info_response("HTTP/1.1 500 Oops\r\n\r\n{}"), None);
    }

    #[test]
    fn a_plain_directory_is_not_a_mount() {
        let dir = tempfile::tempdir().unwrap();
        let look = look_at_fs(dir.path());
        assert!(!look.mounted);
        assert_eq!(look.lag_ms, None);
        assert!(look_at_fs(Path::new("/proc")).mounted);
    }

    #[test]
    fn a_closing_brace_before_the_opening_one_is_no_answer() {
        for body in ["} {", "}{", "}", "{", "x } y { z"] {
            let response = format!("HTTP/1.1 200 OK\r\n\r\n{body}");
            assert!(parse_info_response(&response).is_none(), "{body:?}");
        }
    }
}
