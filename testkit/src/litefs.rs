//! LiteFS, as the tests and the benchmark see it: where its binary is, what its `/info` says,
//! which PID a `litefs-py run` gave it, and a one-node static-lease LiteFS (the benchmark's
//! baseline). All knowledge of `/info`'s JSON is in this file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{IoContext, Result};
use crate::mount::{MountGuard, is_mounted};
use crate::process::{self, Options, Proc};
use crate::{config, ports, wait};

/// The bound of one `/info` call: a LiteFS that does not answer in it counts as not answering
/// (a dead or restarting node is not primary).
pub const INFO_TIMEOUT: Duration = Duration::from_millis(1000);

/// What LiteFS's `GET /info` says: the product's own type and client
/// (`litefs_py::litefs::info`), so the tests read `/info` exactly as the daemon does.
pub use litefs_py::litefs::info::Info;

/// `GET /info` on LiteFS's HTTP address: `None` if it does not answer 200 with its JSON.
/// One runtime and client per thread (the samplers call this every few ms).
pub fn info(addr: &str) -> Option<Info> {
    use litefs_py::litefs::info;
    thread_local! {
        static CLIENT: Option<(tokio::runtime::Runtime, reqwest::Client)> = {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            let client = info::client(INFO_TIMEOUT).ok()?;
            Some((rt, client))
        };
    }
    CLIENT.with(|c| {
        let (rt, client) = c.as_ref()?;
        rt.block_on(info::get(client, addr)).ok()
    })
}

/// Whether the LiteFS at `addr` says it is primary; `None`: no answer.
pub fn is_primary(addr: &str) -> Option<bool> {
    info(addr).map(|i| i.is_primary)
}

/// The primary's hostname that the LiteFS at `addr` names (itself included).
pub fn primary_hostname(addr: &str) -> Option<String> {
    info(addr)?.primary_hostname().map(str::to_string)
}

/// Waits until the LiteFS at `addr` says it is primary; returns what it said.
pub fn wait_primary(addr: &str, timeout: Duration) -> Result<Info> {
    let what = format!("LiteFS at {addr} to be primary");
    wait::poll_until(timeout, Duration::from_millis(20), &what, || {
        info(addr).filter(|i| i.is_primary)
    })
}

/// The LiteFS binary: `explicit` if given, else `$LITEFS`, else `litefs` on PATH, else
/// `~/go/bin/litefs`. `Err` says why there is none.
pub fn find_binary(explicit: Option<&Path>) -> std::result::Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--litefs {} is not a file", p.display()))
        };
    }
    if let Some(p) = std::env::var_os("LITEFS") {
        return Ok(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("litefs"))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| {
            let p = PathBuf::from(std::env::var_os("HOME")?).join("go/bin/litefs");
            p.is_file().then_some(p)
        })
        .ok_or_else(|| {
            "no `litefs` binary ($LITEFS, PATH, ~/go/bin; install LiteFS v0.5.14 or pass --litefs PATH)"
                .to_string()
        })
}

/// The PID of the LiteFS a `litefs-py run` started, from the last `LiteFS started ... pid=N`
/// line of its log, if that process still runs LiteFS with `config` (the litefs.yml that run
/// generated): only then may it be signalled.
pub fn pid_from_run_log(log: &str, config: &Path) -> Option<i32> {
    let pid = process::pid_in_log(log, "LiteFS started")?;
    process::cmdline_contains(pid, config.to_str()?).then_some(pid)
}

/// A one-node LiteFS with a static lease (always primary) in `base`: the filesystem the shim is
/// built for, as the benchmark's baseline. Field order is drop order: LiteFS is stopped, then
/// its mount detached if it left it.
pub struct StaticLiteFs {
    proc: Proc,
    mount: MountGuard,
    pub fuse_dir: PathBuf,
}

impl StaticLiteFs {
    pub fn start(binary: &Path, base: &Path, opts: Options) -> Result<StaticLiteFs> {
        let fuse_dir = base.join("fuse");
        let data_dir = base.join("data");
        for d in [&fuse_dir, &data_dir] {
            std::fs::create_dir_all(d).context(|| format!("creating {}", d.display()))?;
        }
        let fuse_dir = fuse_dir
            .canonicalize()
            .context(|| format!("resolving {}", fuse_dir.display()))?;
        let addr = ports::free_addr().context(|| "a free port for LiteFS".into())?;
        let cfg = base.join("litefs.yml");
        let yaml = config::litefs_static(&fuse_dir, &data_dir, &addr, "litefs-py-bench");
        std::fs::write(&cfg, yaml).context(|| format!("writing {}", cfg.display()))?;
        let mut cmd = Command::new(binary);
        cmd.arg("mount").arg("-config").arg(&cfg);
        let mount = MountGuard::new(&fuse_dir);
        let mut proc = Proc::spawn("litefs mount", cmd, &base.join("litefs.log"), opts)?;
        wait::try_poll_until(
            Duration::from_secs(30),
            Duration::from_millis(20),
            "LiteFS to mount and be primary",
            || {
                if let Some(status) = proc.exited() {
                    return Err(crate::Error::failed(format!(
                        "litefs mount exited during start-up ({status}):\n{}",
                        proc.log_tail(15)
                    )));
                }
                Ok((is_mounted(&fuse_dir) && is_primary(&addr) == Some(true)).then_some(()))
            },
        )
        .map_err(|e| e.with_log(|| proc.log_tail(15)))?;
        Ok(StaticLiteFs {
            proc,
            mount,
            fuse_dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Stops LiteFS; a forced kill or a mount left behind is an error (after cleaning up).
    pub fn finish(mut self) -> Result<()> {
        let stopped = self.proc.stop(Duration::from_secs(10));
        let leftover = self.mount.ensure_unmounted()?;
        if stopped.killed || leftover {
            return Err(crate::Error::failed(format!(
                "LiteFS shutdown: killed={} leftover mount={leftover} status={:?}\n{}",
                stopped.killed,
                stopped.status,
                self.proc.log_tail(15)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_litefs_answering_is_none_within_the_bound() {
        // The JSON itself is tested with the client, in litefs_py::litefs::info.
        let addr = ports::free_addr().unwrap();
        let start = std::time::Instant::now();
        assert_eq!(info(&addr), None);
        assert_eq!(is_primary(&addr), None);
        assert!(start.elapsed() < INFO_TIMEOUT * 3, "{:?}", start.elapsed());
    }

    #[test]
    fn a_pid_from_a_log_is_only_taken_if_it_still_runs_that_config() {
        let me = std::process::id();
        let log = format!("x\nINFO LiteFS started pid={me} config=/x\n");
        // This test process does not run LiteFS with that config.
        assert_eq!(
            pid_from_run_log(&log, Path::new("/nonexistent/litefs.yml")),
            None
        );
        assert_eq!(pid_from_run_log("nothing here", Path::new("/x")), None);
    }

    #[test]
    fn nothing_listening_is_no_answer() {
        let addr = ports::free_addr().unwrap();
        assert_eq!(info(&addr), None);
        assert_eq!(is_primary(&addr), None);
    }
}
