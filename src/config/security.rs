//! Secrets on disk and in the environment: the cluster secret's checks, the lease API's token,
//! and files only the owner may read (docs/operations.md, "Security").

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use super::{ConfigError, invalid};

/// The shortest cluster secret accepted: 16 characters (128 bits as hex, which
/// `openssl rand -hex 16` gives). A shorter one is guessable from outside by brute force.
pub const MIN_SECRET_LEN: usize = 16;

/// The environment variable LiteFS's Consul client (hashicorp/consul/api's `DefaultConfig`)
/// reads its ACL token from; it sends it as `X-Consul-Token` on every call.
pub const CONSUL_TOKEN_ENV: &str = "CONSUL_HTTP_TOKEN";

/// Checks a secret's length and characters (it travels in an HTTP header).
pub fn check_secret(key: &'static str, from: &str, secret: &str) -> Result<(), ConfigError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(invalid(
            key,
            format!(
                "{from}: the secret is {} characters; use at least {MIN_SECRET_LEN} (e.g. `openssl rand -hex 32`)",
                secret.len()
            ),
        ));
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            key,
            format!("{from}: the secret must be printable ASCII without spaces"),
        ));
    }
    Ok(())
}

/// Refuses a file that its group or others may read or write: a secret there is no secret.
pub fn check_private(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    let meta =
        std::fs::metadata(path).map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(invalid(
            key,
            format!(
                "{} is readable or writable by its group or others (mode {mode:03o}): run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Writes `contents` to `path` through a temporary file created with mode 0600 (never wider,
/// whatever the umask, not even for an instant), then renamed over `path`: a reader never sees
/// half a file.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    // A leftover of a crash may have other modes: start from nothing.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// The lease API's token: LiteFS sends it as `X-Consul-Token`, every other caller is refused
/// (docs/architecture.md, "LiteFS's Consul client"). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// A new random token: 32 bytes, hex.
    pub fn generate() -> std::io::Result<LeaseToken> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| std::io::Error::other(format!("random token: {e}")))?;
        Ok(LeaseToken(b.iter().map(|x| format!("{x:02x}")).collect()))
    }

    /// A token given as text (a test's, or one read from a file).
    pub fn new(s: impl Into<String>) -> LeaseToken {
        LeaseToken(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `lease.token-file` for `litefs-py mount`: the token in it (the file must be private),
    /// or, if there is none, a new one written there with mode 0600. Kept across restarts, so
    /// that a LiteFS started by hand with it keeps working.
    pub fn load_or_create(path: &Path) -> Result<LeaseToken, ConfigError> {
        const KEY: &str = "lease.token-file";
        match std::fs::read_to_string(path) {
            Ok(text) => {
                check_private(KEY, path)?;
                let token = text.trim();
                check_secret(KEY, &path.display().to_string(), token)?;
                Ok(LeaseToken(token.to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = LeaseToken::generate()
                    .map_err(|e| invalid(KEY, format!("{}: {e}", path.display())))?;
                if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| invalid(KEY, format!("{}: {e}", dir.display())))?;
                }
                write_private(path, format!("{}\n", token.0).as_bytes())
                    .map_err(|e| invalid(KEY, format!("writing {}: {e}", path.display())))?;
                tracing::debug!(path = %path.display(), "wrote a new lease API token");
                Ok(token)
            }
            Err(e) => Err(invalid(KEY, format!("{}: {e}", path.display()))),
        }
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeaseToken(..)")
    }
}

/// Refuses a hostname with control characters or spaces: it is written into litefs.yml, sent
/// in HTTP headers and printed in logs and virtual files, where a newline or an escape
/// sequence would forge lines.
pub fn check_hostname(key: &'static str, hostname: &str) -> Result<(), ConfigError> {
    if let Some(c) = hostname
        .chars()
        .find(|c| c.is_control() || c.is_whitespace())
    {
        return Err(invalid(
            key,
            format!("{hostname:?} contains {c:?}: a hostname has no control characters or spaces"),
        ));
    }
    if hostname.len() > 253 {
        return Err(invalid(key, "longer than 253 characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_need_length_and_printable_characters() {
        assert!(check_secret("k", "f", "0123456789abcdef").is_ok());
        let short = check_secret("k", "f", "short").unwrap_err().to_string();
        assert!(short.contains("at least 16"), "{short}");
        let spaced = check_secret("k", "f", "0123456789 abcdef").unwrap_err();
        assert!(spaced.to_string().contains("printable"), "{spaced}");
    }

    #[test]
    fn private_files_are_created_0600_and_wider_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        // Under the widest umask the mode is still 0600: it is set at creation.
        // SAFETY: umask has no preconditions; restored at once.
        let old = unsafe { libc::umask(0) };
        let written = write_private(&f, b"x");
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        written.unwrap();
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        check_private("k", &f).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = check_private("k", &f).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(e.starts_with("k: "), "{e}");
    }

    #[test]
    fn tokens_are_created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub/lease.token");
        let t = LeaseToken::load_or_create(&f).unwrap();
        assert_eq!(t.as_str().len(), 64);
        assert_eq!(LeaseToken::load_or_create(&f).unwrap(), t);
        assert_ne!(LeaseToken::generate().unwrap(), t);
        assert_eq!(format!("{t:?}"), "LeaseToken(..)");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(LeaseToken::load_or_create(&f).is_err());
    }

    #[test]
    fn hostnames_without_control_characters() {
        check_hostname("node.hostname", "node-a.example").unwrap();
        for bad in ["a\nb", "a\u{1b}[31m", "a b", "a\tb", "x\u{7f}"] {
            let e = check_hostname("node.hostname", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("node.hostname:"), "{e}");
        }
    }
}
