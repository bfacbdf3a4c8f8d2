//! LiteFS as a child of `litefs-py run`: started with the generated litefs.yml in a process
//! group of its own, its output passed through to ours (prefixed) and its last lines kept for
//! error messages, and its FUSE mount at `mount.lower` told apart from anything mounted there
//! before it started.

use crate::config::{CONSUL_TOKEN_ENV, LeaseToken, SECRET_ENV};
use crate::die_with_parent::die_with_parent;
use std::collections::{BTreeSet, VecDeque};
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;

use litefs_py_fuse::mountinfo;
use parking_lot::Mutex;

/// Why LiteFS could not be found, started, or its mount point cleared.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("litefs.binary {}: {why}", binary.display())]
    Binary { binary: PathBuf, why: String },
    #[error(
        "the LiteFS bundled with the Python package, {}, {why}: reinstall the wheel, or set litefs.binary",
        binary.display()
    )]
    Bundled { binary: PathBuf, why: String },
    /// The cause is in the message and not exposed as `source()`: printed as a chain, it would
    /// repeat itself.
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
}

/// Lines of LiteFS's output kept for error messages.
const KEEP_LINES: usize = 40;

/// The LiteFS child.
pub struct LiteFs {
    pub pid: i32,
    /// Set by the supervisor's reaper.
    pub exited: Option<ExitStatus>,
    lower: PathBuf,
    /// Mount ids at `lower` before LiteFS started: not LiteFS's.
    mounts_before: BTreeSet<u64>,
    lines: Arc<Mutex<VecDeque<String>>>,
}

/// Finds `binary` as `execvp` would: a path with a `/` as is, else the first executable file of
/// that name on `$PATH`.
pub fn resolve_binary(binary: &Path) -> Result<PathBuf, ProcessError> {
    let not_found = |why: String| ProcessError::Binary {
        binary: binary.to_path_buf(),
        why,
    };
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        })
    };
    if binary.as_os_str().as_bytes().contains(&b'/') {
        return if executable(binary) {
            Ok(binary.to_path_buf())
        } else if binary.exists() {
            Err(not_found("not an executable file".into()))
        } else {
            Err(not_found("no such file".into()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| executable(p))
        .ok_or_else(|| {
            not_found("not found on $PATH (install LiteFS v0.5.14, or set litefs.binary)".into())
        })
}

/// The environment variable through which the Python package's `litefs-py` names the LiteFS
/// its wheel bundles (`litefs/_bin/litefs`). Set by `litefs._cli`, never by users.
pub const BUNDLED_ENV: &str = "LITEFS_PY_BUNDLED_LITEFS";

/// The LiteFS to run: `litefs.binary` if set; else the wheel's own LiteFS when `litefs-py`
/// runs from the Python package; else `litefs` on `$PATH` (a `cargo install` of the binary
/// alone).
pub fn litefs_binary(configured: Option<&Path>) -> Result<PathBuf, ProcessError> {
    choose_binary(configured, std::env::var_os(BUNDLED_ENV))
}

fn choose_binary(
    configured: Option<&Path>,
    bundled: Option<std::ffi::OsString>,
) -> Result<PathBuf, ProcessError> {
    if let Some(binary) = configured {
        return resolve_binary(binary);
    }
    if let Some(bundled) = bundled.filter(|v| !v.is_empty()) {
        return resolve_binary(Path::new(&bundled)).map_err(|e| match e {
            ProcessError::Binary { binary, why } => ProcessError::Bundled { binary, why },
            other => other,
        });
    }
    resolve_binary(Path::new("litefs"))
}

/// What `<binary> version` prints (LiteFS v0.5.14 says `LiteFS v0.5.14, commit=…`), for
/// `litefs-py version`; `None` if it cannot be run.
pub fn litefs_version(binary: &Path) -> Option<String> {
    let out = Command::new(binary)
        .arg("version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (out.status.success() && !line.is_empty()).then(|| line.to_string())
}

impl LiteFs {
    /// Starts `binary mount -config config`, with the lease API's `token` in its environment
    /// (the only place it is given: LiteFS's Consul client sends it with every call) and
    /// without the cluster secret, which LiteFS has no use for.
    pub fn spawn(
        binary: &Path,
        config: &Path,
        lower: &Path,
        token: &LeaseToken,
    ) -> Result<LiteFs, ProcessError> {
        let mounts_before = mount_ids_at(lower);
        let mut cmd = Command::new(binary);
        cmd.env_remove(SECRET_ENV)
            .env(CONSUL_TOKEN_ENV, token.as_str())
            .arg("mount")
            .arg("-config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C reaches the app (our group) but not
            // LiteFS, which must outlive the app and be stopped after the shim.
            .process_group(0);
        // If `run` itself is killed (-9, OOM), LiteFS goes with it: an orphan could renew
        // nothing and would only hold the data dir and its mount until its next log line. What
        // it leaves, a dead FUSE mount at `mount.lower`, the next start detaches.
        die_with_parent(&mut cmd, libc::SIGKILL);
        let mut child = cmd.spawn().map_err(|error| ProcessError::Io {
            what: format!("starting {}", binary.display()),
            error,
        })?;
        let pid = child.id() as i32;
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        // The Child handle is dropped without waiting: the supervisor reaps every child itself.
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            if let Err(error) = std::thread::Builder::new()
                .name("litefs-log".into())
                .spawn(move || pass_through(stream, &lines))
            {
                // LiteFS runs already and nothing else would stop it: kill and reap it here.
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProcessError::Io {
                    what: "starting a thread to read LiteFS's output (LiteFS was stopped)".into(),
                    error,
                });
            }
        }
        tracing::info!(pid, config = %config.display(), "LiteFS started");
        Ok(LiteFs {
            pid,
            exited: None,
            lower: lower.to_path_buf(),
            mounts_before,
            lines,
        })
    }

    /// Whether a mount appeared at `mount.lower` since LiteFS started: its FUSE mount.
    pub fn mount_appeared(&self) -> bool {
        mount_ids_at(&self.lower)
            .iter()
            .any(|id| !self.mounts_before.contains(id))
    }

    /// The device (`major:minor`, mountinfo's third field) of LiteFS's mount, once it is up.
    pub fn mount_dev(&self) -> Option<String> {
        mountinfo::at(&self.lower)
            .ok()?
            .into_iter()
            .rev()
            .find(|m| !self.mounts_before.contains(&m.id))
            .map(|m| m.dev)
    }

    /// Detaches LiteFS's mount if one is left (LiteFS killed: the kernel keeps the mount, and
    /// every access fails with ENOTCONN). Only mounts that appeared after LiteFS started.
    pub fn detach_leftover_mount(&self) {
        while self.mount_appeared() {
            let Ok(c) = CString::new(self.lower.as_os_str().as_bytes()) else {
                return;
            };
            // SAFETY: a valid path. MNT_DETACH: works on a dead FUSE mount, busy or not.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                tracing::warn!(
                    lower = %self.lower.display(),
                    "could not detach LiteFS's mount: {}",
                    std::io::Error::last_os_error()
                );
                return;
            }
            tracing::info!(lower = %self.lower.display(), "detached LiteFS's leftover mount");
        }
    }

    /// The last `n` lines LiteFS printed.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock();
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The last few lines, joined on one line for an error message.
    pub fn tail_for_error(&self) -> String {
        let lines = self.last_lines(3);
        if lines.is_empty() {
            "it printed nothing".into()
        } else {
            format!("its last lines: {}", lines.join(" | "))
        }
    }
}

/// Copies LiteFS's output to our stderr, line by line and prefixed, keeping the last lines.
fn pass_through(stream: Box<dyn Read + Send>, lines: &Mutex<VecDeque<String>>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
        if line.is_empty() {
            continue;
        }
        // Not `eprintln!`, which panics when stderr is gone (EPIPE: a closed pipe or terminal);
        // the line is still kept for error messages.
        let _ = writeln!(std::io::stderr().lock(), "litefs: {line}");
        let mut kept = lines.lock();
        if kept.len() == KEEP_LINES {
            kept.pop_front();
        }
        kept.push_back(line);
    }
}

/// Mount ids of the mounts at exactly `path`.
pub fn mount_ids_at(path: &Path) -> BTreeSet<u64> {
    mountinfo::at(path)
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.id)
        .collect()
}

pub use mountinfo::is_mount_point;

/// `statfs(path)`: on a FUSE mount, always a request to its daemon (see above). Blocks while
/// the daemon does not answer.
pub fn statfs(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    statfs_c(&c)
}

fn statfs_c(c: &CString) -> std::io::Result<()> {
    // SAFETY: a valid path and a zeroed out-buffer of the right type.
    let rc = unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut buf)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statfs_answers_for_a_dir_and_fails_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        statfs(dir.path()).unwrap();
        assert!(statfs(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn the_configured_binary_wins_then_the_bundled_one_then_path() {
        let sh = Some(std::ffi::OsString::from("/bin/sh"));
        let pick = |c: Option<&str>, b: Option<std::ffi::OsString>| {
            choose_binary(c.map(Path::new), b).map_err(|e| e.to_string())
        };
        assert_eq!(pick(Some("/bin/true"), sh.clone()), Ok("/bin/true".into()));
        assert_eq!(pick(None, sh), Ok("/bin/sh".into()));
        let e = pick(None, Some("/nonexistent/_bin/litefs".into())).unwrap_err();
        assert_eq!(
            e,
            "the LiteFS bundled with the Python package, /nonexistent/_bin/litefs, no such file: \
             reinstall the wheel, or set litefs.binary"
        );
        // Neither: `litefs` on PATH, as `execvp` would find it (or the error naming PATH).
        match pick(None, Some("".into())) {
            Ok(p) => assert!(p.ends_with("litefs"), "{p:?}"),
            Err(e) => assert!(e.contains("not found on $PATH"), "{e}"),
        }
    }

    #[test]
    fn binaries_are_resolved_like_execvp() {
        let e = resolve_binary(Path::new("/nonexistent/litefs")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "litefs.binary /nonexistent/litefs: no such file"
        );
        let e = resolve_binary(Path::new("litefs-py-no-such-binary")).unwrap_err();
        assert!(e.to_string().contains("not found on $PATH"), "{e}");
        assert_eq!(
            resolve_binary(Path::new("/bin/sh")).unwrap(),
            PathBuf::from("/bin/sh")
        );
    }
}
