//! Name links: the symlink data path over LiteFS (docs/architecture.md, "Data-path modes").
//!
//! Over LiteFS's mount in symlink mode, every name at the shim's root except the virtual files
//! is a symlink to the same name in LiteFS's mount, whether LiteFS has that file yet or not. A
//! link is a function of its name only: it never changes while the mount lives, so the kernel
//! may keep its entry, its attributes and its target (`FUSE_CACHE_SYMLINKS`) for as long as it
//! likes, and a request that opens a database costs the shim nothing once the name is known.
//! A name that does not exist yet is a dangling link: SQLite resolves it and creates the
//! database on LiteFS's mount, so even the first connection to a new database bypasses the shim.
//!
//! That holds because LiteFS's root is flat and fixed: it has no directories, no renames and no
//! links of its own (v0.5.14's `RootNode`), so a name can only ever mean "LiteFS's file of that
//! name". A rename is refused here before it reaches LiteFS (which has none either): a renamed
//! link would keep its cached target.
//!
//! The table maps names to node ids while the kernel holds a reference (plus the ids handed out
//! in listings, bounded by LiteFS's files); a forgotten name gets a fresh id when it is next
//! looked up.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use fuser::{FileAttr, FileType};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::error::{FsError, FsResult};
use crate::fs::ShimFs;
use crate::inode::ROOT_ID;

/// How long the kernel may keep a link's entry and attributes: they cannot go stale, so the
/// bound is only there to keep the number finite.
pub(crate) const LINK_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long the kernel may keep the root directory's attributes in name-link mode. The path
/// walk to every link checks the root's mode (`default_permissions`); LiteFS changes it with
/// the role (0777 on the primary, 0555 on a replica), which only matters here for removing a
/// name at the root, so a second of staleness is harmless.
pub(crate) const ROOT_TTL: Duration = Duration::from_secs(1);

/// Link ids: above the inode table's ranges (direct lower numbers below 2^62, symlink views
/// with bit 62, allocated ids from 2^63 up) and below the virtual files at the top.
const LINK_BASE: u64 = (1 << 63) | (1 << 62);
const LINK_END: u64 = u64::MAX - 16;

#[derive(Debug)]
struct Link {
    name: Box<[u8]>,
    /// Kernel references (lookups not yet forgotten).
    nlookup: u64,
}

#[derive(Debug)]
struct Links {
    by_name: FxHashMap<Box<[u8]>, u64>,
    by_id: FxHashMap<u64, Link>,
    next: u64,
}

/// The root's names and their link ids.
#[derive(Debug)]
pub(crate) struct NameLinks {
    links: Mutex<Links>,
    /// `<lower dir>/`: every target is this followed by the name.
    prefix: Box<[u8]>,
}

impl NameLinks {
    pub fn new(lower: &std::path::Path) -> Self {
        let mut prefix = lower.as_os_str().as_bytes().to_vec();
        if prefix.last() != Some(&b'/') {
            prefix.push(b'/');
        }
        NameLinks {
            links: Mutex::new(Links {
                by_name: FxHashMap::default(),
                by_id: FxHashMap::default(),
                next: LINK_BASE,
            }),
            prefix: prefix.into(),
        }
    }

    pub fn is_link(id: u64) -> bool {
        (LINK_BASE..LINK_END).contains(&id)
    }

    /// The id of `name`'s link, with one more kernel reference when `count` (a lookup; a plain
    /// listing hands out the id without one).
    fn id(&self, name: &[u8], count: bool) -> u64 {
        let mut l = self.links.lock();
        let id = match l.by_name.get(name) {
            Some(&id) => id,
            None => {
                let id = l.next;
                l.next += 1;
                l.by_name.insert(name.into(), id);
                l.by_id.insert(
                    id,
                    Link {
                        name: name.into(),
                        nlookup: 0,
                    },
                );
                id
            }
        };
        if count {
            l.by_id.get_mut(&id).expect("both maps agree").nlookup += 1;
        }
        id
    }

    /// The kernel dropped `n` references to `id`; at none, the name leaves the table.
    fn forget(&self, id: u64, n: u64) {
        let mut l = self.links.lock();
        let Some(link) = l.by_id.get_mut(&id) else {
            return;
        };
        link.nlookup = link.nlookup.saturating_sub(n);
        if link.nlookup == 0
            && let Some(link) = l.by_id.remove(&id)
        {
            l.by_name.remove(&link.name);
        }
    }

    fn target(&self, id: u64) -> FsResult<Vec<u8>> {
        let l = self.links.lock();
        let link = l.by_id.get(&id).ok_or(FsError::UnknownInode(id))?;
        Ok([&*self.prefix, &*link.name].concat())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.links.lock().by_id.len()
    }
}

impl ShimFs {
    /// The link a root name is, in name-link mode (None: not a link; the caller goes on).
    pub(crate) fn link_lookup(&self, parent: u64, name: &OsStr) -> Option<FileAttr> {
        let links = self.links.as_ref()?;
        if parent != ROOT_ID {
            return None;
        }
        let id = links.id(name.as_bytes(), true);
        Some(self.link_attr(id, name.len()))
    }

    /// A listed root name's link id (name-link mode), without a kernel reference.
    pub(crate) fn link_listed(&self, name: &[u8]) -> Option<u64> {
        Some(self.links.as_ref()?.id(name, false))
    }

    pub(crate) fn is_link(&self, ino: u64) -> bool {
        self.links.is_some() && NameLinks::is_link(ino)
    }

    pub(crate) fn link_getattr(&self, ino: u64) -> FsResult<FileAttr> {
        let links = self.links.as_ref().ok_or(FsError::UnknownInode(ino))?;
        let len = links.target(ino)?.len() - links.prefix.len();
        Ok(self.link_attr(ino, len))
    }

    pub(crate) fn link_target(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.links
            .as_ref()
            .ok_or(FsError::UnknownInode(ino))?
            .target(ino)
    }

    pub(crate) fn link_forget(&self, ino: u64, n: u64) {
        if let Some(links) = &self.links {
            links.forget(ino, n);
        }
    }

    /// Refuses a rename at the root in name-link mode (see the module's doc).
    pub(crate) fn refuse_link_rename(&self, parent: u64, newparent: u64) -> FsResult<()> {
        if self.links.is_some() && (parent == ROOT_ID || newparent == ROOT_ID) {
            return Err(FsError::NotSupported);
        }
        Ok(())
    }

    /// How long the kernel may cache the entry and attributes of `ino`: zero for everything
    /// the lower dir can change, long for links, a second for the root over them.
    pub fn cache_ttl(&self, ino: u64) -> Duration {
        if self.links.is_none() {
            Duration::ZERO
        } else if NameLinks::is_link(ino) {
            LINK_TTL
        } else if ino == ROOT_ID {
            ROOT_TTL
        } else {
            Duration::ZERO
        }
    }

    /// Whether the kernel may cache symlink targets (`FUSE_CACHE_SYMLINKS`): only links are
    /// symlinks the shim answers for in name-link mode (LiteFS has none of its own).
    pub fn caches_symlinks(&self) -> bool {
        self.links.is_some()
    }

    fn link_attr(&self, id: u64, name_len: usize) -> FileAttr {
        let prefix = self.links.as_ref().map_or(0, |l| l.prefix.len());
        let size = (prefix + name_len) as u64;
        self.own_attr(id, FileType::Symlink, 0o777, size, self.started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_keeps_its_id_while_referenced_and_leaves_when_forgotten() {
        let links = NameLinks::new(std::path::Path::new("/lower"));
        let a = links.id(b"app.db", true);
        assert!(NameLinks::is_link(a));
        assert_eq!(links.id(b"app.db", true), a);
        assert_ne!(links.id(b"other.db", true), a);
        assert_eq!(links.target(a).unwrap(), b"/lower/app.db");
        links.forget(a, 1);
        assert_eq!(
            links.target(a).unwrap(),
            b"/lower/app.db",
            "one reference left"
        );
        links.forget(a, 1);
        assert!(links.target(a).is_err(), "forgotten: gone");
        let again = links.id(b"app.db", true);
        assert_ne!(again, a, "a forgotten name gets a fresh id");
        assert_eq!(links.len(), 2);
    }

    #[test]
    fn a_listed_name_has_an_id_without_a_reference() {
        let links = NameLinks::new(std::path::Path::new("/lower/"));
        let id = links.id(b"x.db", false);
        assert_eq!(links.id(b"x.db", true), id);
        assert_eq!(links.target(id).unwrap(), b"/lower/x.db");
        links.forget(id, 1);
        assert_eq!(links.len(), 0);
    }

    #[test]
    fn link_ids_stay_clear_of_every_other_range() {
        use crate::virtual_files::VirtualFile;
        for f in VirtualFile::ALL {
            assert!(!NameLinks::is_link(f.ino()));
        }
        assert!(!NameLinks::is_link(ROOT_ID));
        assert!(!NameLinks::is_link((1 << 62) | 12345), "symlink views");
        assert!(!NameLinks::is_link((1 << 63) + 7), "allocated ids");
    }
}
