//! The primary check of the plain-request workload, done the way an app does it once per
//! request: over the shim, the way `litefs.is_primary()` reads the role (the shared state page,
//! else `.role`; docs/architecture.md, "Virtual files"); on LiteFS alone, LiteFS's own
//! convention (no `.primary` file: this node is the primary).
//!
//! The page is read with the fuse crate's own reader (`state_page::read_at`, as the Python
//! extension's is); what is here is how a process finds, trusts and maps the page.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use litefs_py_fuse::boottime_ns;
use litefs_py_fuse::state_page::{PageRead, SIZE, read_at};

/// How a worker decides that its node is the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum How {
    /// LiteFS alone: `<mount>/.primary` absent means this node is the primary.
    LitefsPrimaryFile,
    /// The shim: its shared state page (found through `.health`), else `<mount>/.role`.
    ShimRole,
}

impl How {
    pub fn describe(self) -> &'static str {
        match self {
            How::LitefsPrimaryFile => "LiteFS's .primary absent (stat)",
            How::ShimRole => "is_primary(): the shim's state page, else .role",
        }
    }
}

/// What the checks read, for the report: a check that silently fell back to `.role` would
/// measure something else than `is_primary()` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Role answered from the shared page.
    pub page: u64,
    /// Role read through the mount's `.role`.
    pub role_file: u64,
    /// `.health` reads to find (or re-validate) the page.
    pub health: u64,
    /// `stat` of LiteFS's `.primary`.
    pub primary_file: u64,
}

impl Counts {
    pub fn since(self, before: Counts) -> Counts {
        Counts {
            page: self.page - before.page,
            role_file: self.role_file - before.role_file,
            health: self.health - before.health,
            primary_file: self.primary_file - before.primary_file,
        }
    }

    pub fn add(&mut self, o: Counts) {
        self.page += o.page;
        self.role_file += o.role_file;
        self.health += o.health;
        self.primary_file += o.primary_file;
    }
}

/// As `litefs.is_primary()`: a process checks through `.health` at most this often that its
/// page is still the mount's.
const RECHECK: Duration = Duration::from_secs(1);

/// One process's primary check on one mount.
pub struct PrimaryCheck {
    mount: PathBuf,
    how: How,
    page: Option<Page>,
    checked: Option<Instant>,
    pub counts: Counts,
}

impl PrimaryCheck {
    pub fn new(mount: &Path, how: How) -> Self {
        PrimaryCheck {
            mount: mount.to_path_buf(),
            how,
            page: None,
            checked: None,
            counts: Counts::default(),
        }
    }

    pub fn is_primary(&mut self) -> Result<bool> {
        match self.how {
            How::LitefsPrimaryFile => {
                self.counts.primary_file += 1;
                let path = self.mount.join(".primary");
                match std::fs::symlink_metadata(&path) {
                    Ok(_) => Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
                    Err(e) => Err(e).with_context(|| format!("stat {}", path.display())),
                }
            }
            How::ShimRole => Ok(self.role()? == "primary"),
        }
    }

    /// The role, the way `litefs._state.read_role` gets it.
    pub fn role(&mut self) -> Result<String> {
        if self.checked.is_none_or(|t| t.elapsed() > RECHECK) {
            self.counts.health += 1;
            self.page = Page::from_health(&self.mount);
            self.checked = Some(Instant::now());
        }
        if let Some(page) = &self.page {
            if let Some(role) = page.role() {
                self.counts.page += 1;
                return Ok(role.to_string());
            }
            // Closed or foreign: ask the mount now, and look for a page again at the next call.
            self.page = None;
            self.checked = None;
        }
        self.counts.role_file += 1;
        let path = self.mount.join(".role");
        // One open, one read, one close, as the package's native reader does.
        let mut buf = [0u8; 64];
        let n = std::fs::File::open(&path)
            .and_then(|mut f| f.read(&mut buf))
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
    }
}

/// The shim's shared state page, mapped read-only.
pub struct Page {
    base: NonNull<u8>,
}

impl Page {
    /// The page `<mount>/.health` names, if it is one a reader can trust (as `_open_page`).
    fn from_health(mount: &Path) -> Option<Page> {
        let mut text = String::new();
        std::fs::File::open(mount.join(".health"))
            .and_then(|mut f| f.read_to_string(&mut text))
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Page::open(Path::new(v.get("state_page")?.as_str()?))
    }

    /// Maps `path` if it is a regular file of at least a page, owned by root or by us, and
    /// writable by nobody else: readers trust what it says.
    pub fn open(path: &Path) -> Option<Page> {
        let f = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .ok()?;
        let m = f.metadata().ok()?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if !m.file_type().is_file()
            || m.mode() & 0o022 != 0
            || (m.uid() != 0 && m.uid() != me)
            || m.len() < SIZE as u64
        {
            return None;
        }
        // SAFETY: a fresh read-only shared mapping of a file at least SIZE long; the fd may be
        // closed afterwards.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        NonNull::new(base.cast()).map(|base| Page { base })
    }

    /// The role as of now, or None: not a page of this version, closed, or never stable.
    pub fn role(&self) -> Option<&'static str> {
        // SAFETY: `base` is a live, page-aligned mapping of SIZE bytes, unmapped only on drop.
        match unsafe { read_at(self.base.as_ptr(), boottime_ns) } {
            PageRead::Role(role) => Some(role.as_str()),
            PageRead::AskTheMount => None,
        }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), SIZE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use litefs_py_fuse::Role;
    use litefs_py_fuse::state_page::StatePage;

    /// A `.health` mirror, which sets another flag bit: the role reader must not mind it.
    const MIRROR: &[u8] = br#"{"term":1}"#;

    #[test]
    fn reads_what_the_shims_writer_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("page");
        let writer = StatePage::create(&path).unwrap();
        writer.write(Role::Replica, None, false, MIRROR);
        let page = Page::open(&path).unwrap();
        assert_eq!(page.role(), Some("replica"));
        writer.write(Role::Primary, None, false, MIRROR);
        assert_eq!(page.role(), Some("primary"));
        writer.write(
            Role::Primary,
            Some(boottime_ns() + 60_000_000_000),
            false,
            MIRROR,
        );
        assert_eq!(page.role(), Some("primary"));
        writer.write(Role::Primary, Some(1), false, MIRROR);
        assert_eq!(page.role(), Some("electing"), "a primary past its deadline");
        writer.write(Role::Witness, None, false, &[]);
        assert_eq!(page.role(), Some("witness"));
        writer.close();
        assert_eq!(
            page.role(),
            None,
            "a closed page sends the reader to the mount"
        );
    }

    #[test]
    fn a_page_others_may_write_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("page");
        let writer = StatePage::create(&path).unwrap();
        writer.write(Role::Primary, None, false, MIRROR);
        assert!(Page::open(&path).is_some());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(Page::open(&path).is_none());
        std::fs::write(dir.path().join("short"), b"LFPYROLE").unwrap();
        assert!(Page::open(&dir.path().join("short")).is_none());
    }

    /// The whole check over a directory standing in for a mount: `.health` naming the page,
    /// and `.role` for when the page is gone.
    #[test]
    fn the_check_uses_the_page_then_falls_back_to_role() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let path = dir.path().join("page");
        let writer = StatePage::create(&path).unwrap();
        writer.write(Role::Primary, None, false, MIRROR);
        let health = serde_json::json!({ "role": "primary", "state_page": path });
        std::fs::write(mount.join(".health"), health.to_string()).unwrap();
        std::fs::write(mount.join(".role"), "replica\n").unwrap();

        let mut c = PrimaryCheck::new(&mount, How::ShimRole);
        assert!(c.is_primary().unwrap());
        assert!(c.is_primary().unwrap());
        let want = Counts {
            page: 2,
            health: 1,
            ..Counts::default()
        };
        assert_eq!(c.counts, want, "one .health read, then the page alone");

        writer.close();
        assert!(!c.is_primary().unwrap(), "the .role file says replica");
        assert_eq!((c.counts.page, c.counts.role_file), (2, 1));

        let mut c = PrimaryCheck::new(&mount, How::LitefsPrimaryFile);
        assert!(c.is_primary().unwrap(), "no .primary: primary");
        std::fs::write(mount.join(".primary"), "other-node\n").unwrap();
        assert!(!c.is_primary().unwrap());
        assert_eq!(c.counts.primary_file, 2);
    }
}
