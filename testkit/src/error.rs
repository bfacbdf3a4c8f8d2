//! The kit's one error type. Its `Debug` is its `Display`, so that a test's `.unwrap()` prints
//! the message with the node's log tail, not a struct dump.

use std::time::Duration;

#[derive(thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {after:?}: {what}")]
    TimedOut { what: String, after: Duration },
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Failed(String),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    pub fn failed(msg: impl Into<String>) -> Error {
        Error::Failed(msg.into())
    }

    /// A timeout's message with `log` (a process's log tail) after it; other errors unchanged.
    pub fn with_log(self, log: impl FnOnce() -> String) -> Error {
        match self {
            Error::TimedOut { what, after } => Error::TimedOut {
                what: format!("{what}:\n{}", log()),
                after,
            },
            other => other,
        }
    }
}

/// Adds context to an io::Result, in the kit's error.
pub trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}
