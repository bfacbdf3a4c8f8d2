//! The optional baseline: a single-node LiteFS (static lease, this node the primary) in a temp
//! dir, so the shim can be measured over the filesystem it is built for.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::mounts::{Child, MountGuard, wait_ready};
use crate::sys;

/// Finds the LiteFS binary: `--litefs`, else `litefs` on PATH. Err is the reason to skip.
pub fn find(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--litefs {} is not a file", p.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("litefs"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "no `litefs` on PATH (install LiteFS v0.5.14 or pass --litefs PATH)".to_string()
        })
}

/// The first line `litefs version` prints (development builds do not name a version).
pub fn version(binary: &Path) -> String {
    crate::first_line_of(binary, "version")
}

/// A running LiteFS. Field order is drop order: stop the daemon, then detach its mount if it
/// left it.
pub struct LiteFs {
    child: Child,
    mount: MountGuard,
    pub fuse_dir: PathBuf,
}

/// A port that was free a moment ago; LiteFS binds it right after, so a clash is unlikely and
/// shows as a start-up error, not a wrong measurement.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn config(fuse_dir: &Path, data_dir: &Path, port: u16) -> String {
    // No `exec`: LiteFS serves until we stop it. No backup, no proxy.
    format!(
        "fuse:\n  dir: \"{fuse}\"\ndata:\n  dir: \"{data}\"\nhttp:\n  addr: \"127.0.0.1:{port}\"\n\
         lease:\n  type: static\n  candidate: true\n  hostname: litefs-py-bench\n  \
         advertise-url: \"http://127.0.0.1:{port}\"\n",
        fuse = fuse_dir.display(),
        data = data_dir.display(),
    )
}

/// Whether LiteFS's HTTP API says this node is the primary (then writes are accepted).
fn is_primary(port: u16) -> bool {
    let ask = || -> std::io::Result<String> {
        let mut s =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"GET /info HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    };
    let Ok(text) = ask() else { return false };
    let Some((_, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(body)
        .is_ok_and(|v| v["isPrimary"] == serde_json::Value::Bool(true))
}

impl LiteFs {
    pub fn start(binary: &Path, base: &Path) -> Result<LiteFs> {
        let fuse_dir = base.join("fuse");
        let data_dir = base.join("data");
        std::fs::create_dir_all(&fuse_dir)?;
        std::fs::create_dir_all(&data_dir)?;
        let fuse_dir = fuse_dir.canonicalize()?;
        let port = free_port()?;
        let cfg = base.join("litefs.yml");
        std::fs::write(&cfg, config(&fuse_dir, &data_dir, port)).context("writing litefs.yml")?;
        let mut cmd = Command::new(binary);
        cmd.arg("mount").arg("-config").arg(&cfg);
        let mount = MountGuard::new(&fuse_dir);
        let mut child = Child::spawn("litefs mount", cmd, &base.join("litefs.log"))?;
        wait_ready(&mut child, Duration::from_secs(30), || {
            sys::is_mounted(&fuse_dir) && is_primary(port)
        })?;
        Ok(LiteFs {
            child,
            mount,
            fuse_dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Stops LiteFS; reports a leftover mount or a forced kill as an error after cleaning up.
    pub fn finish(mut self) -> Result<()> {
        let (status, killed) = self.child.stop(Duration::from_secs(10));
        let leftover = self.mount.ensure_unmounted()?;
        anyhow::ensure!(
            !killed && !leftover,
            "LiteFS shutdown: killed={killed} leftover mount={leftover} status={status:?}\n{}",
            self.child.log_tail()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_static_primary_on_loopback() {
        let c = config(Path::new("/t/fuse"), Path::new("/t/data"), 4321);
        assert!(c.contains("type: static") && c.contains("candidate: true"));
        assert!(c.contains("addr: \"127.0.0.1:4321\""));
        assert!(!c.contains("exec"));
    }
}
