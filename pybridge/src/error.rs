//! The one error type of the bridge, and its translation into Python exceptions, done once, at
//! the boundary (`From<BridgeError> for PyErr`). The exception classes are defined in Python
//! (`litefs/_errors.py`) so that they can be documented, pickled and subclassed there.

use std::io;
use std::path::PathBuf;

use litefs_py::config::ConfigError as RustConfigError;
use litefs_py::litefs::yaml::LiteFsConfigError;
use pyo3::PyErr;

mod py {
    pyo3::import_exception!(litefs._errors, LiteFSError);
    pyo3::import_exception!(litefs._errors, NotMounted);
    pyo3::import_exception!(litefs._errors, ConfigError);
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// No litefs-py mount answers at this path (missing dir, plain dir, or a dead daemon).
    #[error("{path}: {reason}")]
    NotMounted { path: PathBuf, reason: String },
    /// Any other failure reading a virtual file.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// `.role`/`.health` did not hold what the shim writes.
    #[error("{path}: unexpected content: {detail}")]
    BadContent { path: PathBuf, detail: String },
    #[error(transparent)]
    Config(#[from] RustConfigError),
    #[error(transparent)]
    LiteFsConfig(#[from] LiteFsConfigError),
}

impl BridgeError {
    /// The config key the error is about, when there is one.
    fn config_key(&self) -> Option<String> {
        match self {
            BridgeError::Config(RustConfigError::Invalid { key, .. }) => Some((*key).to_string()),
            BridgeError::LiteFsConfig(LiteFsConfigError::Dollar { key, .. }) => {
                Some((*key).to_string())
            }
            // serde_yaml puts the path of the offending key first: "cluster: unknown field ...".
            BridgeError::Config(RustConfigError::Parse { message, .. }) => message
                .split_once(": ")
                .map(|(head, _)| head)
                .filter(|head| {
                    !head.is_empty()
                        && head
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.[]".contains(c))
                })
                .map(str::to_string),
            _ => None,
        }
    }

    fn message(&self) -> String {
        match self {
            // Text given to the bridge has no file name: say what it is instead of "<config>".
            BridgeError::Config(RustConfigError::Parse { message, .. }) => {
                format!("litefs-py.yml: {message}")
            }
            other => other.to_string(),
        }
    }
}

impl From<BridgeError> for PyErr {
    fn from(e: BridgeError) -> PyErr {
        let message = e.message();
        match &e {
            BridgeError::NotMounted { .. } => py::NotMounted::new_err(message),
            BridgeError::Io { source, .. } => {
                py::LiteFSError::new_err((message, source.raw_os_error()))
            }
            BridgeError::BadContent { .. } => py::LiteFSError::new_err(message),
            BridgeError::Config(_) | BridgeError::LiteFsConfig(_) => {
                py::ConfigError::new_err((message, e.config_key()))
            }
        }
    }
}
