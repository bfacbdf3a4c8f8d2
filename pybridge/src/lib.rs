//! `litefs._native`: the Rust half of the `litefs` Python package.
//!
//! Private: the public API is the plain Python around it (`pybridge/python/litefs/`), typed by
//! `_native.pyi`. What lives here is what must be the same code as the `litefs-py` command
//! (config validation, litefs.yml generation, the command line itself) and the hot path (reading
//! the shim's virtual files with the GIL released).

use std::ffi::OsString;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use litefs_py::config::Config;
use pyo3::prelude::*;

mod error;
use error::BridgeError;

/// Enough for `.role` and `.health` (about 250 bytes) in one read.
const READ_CHUNK: usize = 4096;

/// Reads `<mount>/<name>`: `Ok(None)` if that file does not exist in a directory that does.
///
/// open, read, close and nothing else: every extra call is a round trip to the FUSE daemon
/// (`read_to_end` would add an `fstat` and a second read for the end of file). The shim answers
/// a virtual file in one read; a longer file is read on until a read comes back short.
fn read_virtual(mount: &Path, name: &str) -> Result<Option<Vec<u8>>, BridgeError> {
    let path = mount.join(name);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return if mount.is_dir() {
                Ok(None)
            } else {
                Err(BridgeError::NotMounted {
                    path: mount.to_path_buf(),
                    reason: "no such directory".into(),
                })
            };
        }
        Err(e) => return Err(classify(mount, path, e)),
    };
    let mut buf = vec![0u8; READ_CHUNK];
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len < buf.len() {
                    break;
                }
                buf.resize(buf.len() * 2, 0);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(classify(mount, path, e)),
        }
    }
    buf.truncate(len);
    Ok(Some(buf))
}

/// An I/O error on a virtual file: a mount whose daemon is gone (ENOTCONN) or a path that is no
/// directory is "not mounted"; anything else is reported with its path.
fn classify(mount: &Path, path: PathBuf, e: std::io::Error) -> BridgeError {
    match e.raw_os_error() {
        Some(libc::ENOTCONN) => BridgeError::NotMounted {
            path: mount.to_path_buf(),
            reason: "the litefs-py mount is not connected (its daemon exited): unmount it \
                     (umount -l) and start litefs-py again"
                .into(),
        },
        Some(libc::ENOTDIR) => BridgeError::NotMounted {
            path: mount.to_path_buf(),
            reason: "not a directory".into(),
        },
        _ => BridgeError::Io { path, source: e },
    }
}

/// A file every litefs-py mount has: its absence means no shim answers at `mount`.
fn read_required(mount: &Path, name: &str) -> Result<Vec<u8>, BridgeError> {
    read_virtual(mount, name)?.ok_or_else(|| BridgeError::NotMounted {
        path: mount.to_path_buf(),
        reason: format!(
            "not a litefs-py mount: no {name} there (is `litefs-py mount` or `run` running?)"
        ),
    })
}

fn utf8(mount: &Path, name: &str, bytes: Vec<u8>) -> Result<String, BridgeError> {
    String::from_utf8(bytes).map_err(|_| BridgeError::BadContent {
        path: mount.join(name),
        detail: "not UTF-8".into(),
    })
}

/// `.role` without its newline: `primary`, `replica`, `electing` or `witness`.
#[pyfunction]
fn read_role(py: Python<'_>, mount: PathBuf) -> PyResult<String> {
    let text = py.detach(|| {
        let bytes = read_required(&mount, ".role")?;
        utf8(&mount, ".role", bytes)
    })?;
    let role = text.trim_end_matches('\n');
    if role.is_empty() || role.contains(char::is_whitespace) {
        return Err(BridgeError::BadContent {
            path: mount.join(".role"),
            detail: format!("{text:?}"),
        }
        .into());
    }
    Ok(role.to_string())
}

/// `.health`: one JSON object (the text; the caller parses it).
#[pyfunction]
fn read_health(py: Python<'_>, mount: PathBuf) -> PyResult<String> {
    Ok(py.detach(|| {
        let bytes = read_required(&mount, ".health")?;
        utf8(&mount, ".health", bytes)
    })?)
}

/// `.primary`: `None` if the file does not exist (this node is primary), else its text without
/// the newline (empty: no primary known).
#[pyfunction]
fn read_primary(py: Python<'_>, mount: PathBuf) -> PyResult<Option<String>> {
    let text = py.detach(|| match read_virtual(&mount, ".primary")? {
        None => Ok(None),
        Some(bytes) => utf8(&mount, ".primary", bytes).map(Some),
    })?;
    Ok(text.map(|t| t.trim_end_matches('\n').to_string()))
}

/// Parses and validates litefs-py.yml text; the effective config (defaults filled in) as JSON.
#[pyfunction]
fn validate(text: &str) -> PyResult<String> {
    let config = Config::parse(text).map_err(BridgeError::from)?;
    Ok(serde_json::to_string(&config).expect("a config always serialises"))
}

/// The effective litefs-py.yml (defaults filled in), as `litefs-py config check` prints it.
#[pyfunction]
fn effective_yaml(text: &str) -> PyResult<String> {
    let config = Config::parse(text).map_err(BridgeError::from)?;
    Ok(config.to_yaml())
}

/// What `litefs-py config check` warns about (allowed, but the operator should know).
#[pyfunction]
fn warnings(text: &str) -> PyResult<Vec<String>> {
    let config = Config::parse(text).map_err(BridgeError::from)?;
    Ok(config.warnings())
}

/// The litefs.yml for this node, as `litefs-py config litefs` prints it.
#[pyfunction]
fn render_litefs_yml(text: &str) -> PyResult<String> {
    let config = Config::parse(text).map_err(BridgeError::from)?;
    Ok(litefs_py::litefs::yaml::generate(&config).map_err(BridgeError::from)?)
}

/// Runs the `litefs-py` command line (`argv[0]` is the program name) with the GIL released, and
/// returns its exit status.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<OsString>) -> i32 {
    py.detach(|| litefs_py::cli_main(argv))
}

#[pymodule]
mod _native {
    #[pymodule_export]
    use super::{
        cli_main, effective_yaml, read_health, read_primary, read_role, render_litefs_yml,
        validate, warnings,
    };

    /// The version of the Rust crates this module was built from (the `litefs-py` version).
    #[pymodule_export]
    const VERSION: &str = env!("CARGO_PKG_VERSION");
}
