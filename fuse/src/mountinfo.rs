//! `/proc/self/mountinfo`, parsed in one place for the whole project (the shim's preflight,
//! `run`'s clean-up of dead mounts, the test kit and the benchmark).
//!
//! The one other reader is the unmount watchdog in [`crate::mount`]: it runs after `fork` and
//! must not allocate, so it matches raw bytes against a line prepared by [`escape`].

use std::io;
use std::path::{Path, PathBuf};

/// One line of mountinfo (proc(5)), the fields this project uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Field 1: unique id of the mount (reused after unmount).
    pub id: u64,
    /// Field 2: the parent mount's id.
    pub parent_id: u64,
    /// Field 3: `major:minor` of the filesystem's device, as written there.
    pub dev: String,
    /// Field 5: the mount point, unescaped.
    pub point: PathBuf,
    /// The first field after ` - `: `fuse`, `fuse.litefs`, `ext4`, …
    pub fstype: String,
    /// The second field after ` - `: the mount source (`litefs-py`, `/dev/vda1`, …).
    pub source: String,
}

impl Mount {
    /// LiteFS's FUSE mount: it mounts as `fuse` (or `fuse.litefs`) with the source `litefs`.
    pub fn is_litefs(&self) -> bool {
        (self.fstype == "fuse" || self.fstype == "fuse.litefs") && self.source == "litefs"
    }

    /// Any FUSE filesystem: `fuse`, `fuseblk` or `fuse.<subtype>`.
    pub fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype == "fuseblk" || self.fstype.starts_with("fuse.")
    }
}

/// Parses one line; `None` for a line that is not of mountinfo's form.
pub fn parse_line(line: &str) -> Option<Mount> {
    let (head, tail) = line.split_once(" - ")?;
    let mut f = head.split(' ');
    let id = f.next()?.parse().ok()?;
    let parent_id = f.next()?.parse().ok()?;
    let dev = f.next()?.to_string();
    let _root = f.next()?;
    let point = PathBuf::from(unescape(f.next()?));
    let mut t = tail.split(' ');
    let fstype = t.next()?.to_string();
    let source = unescape(t.next().unwrap_or(""));
    Some(Mount {
        id,
        parent_id,
        dev,
        point,
        fstype,
        source,
    })
}

/// Every well-formed line of `text`, in the kernel's order (later mounts last).
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

/// The calling process's mount table.
pub fn read() -> io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The mounts at exactly `point`, oldest first (the last one is what the path shows).
pub fn at(point: &Path) -> io::Result<Vec<Mount>> {
    Ok(read()?.into_iter().filter(|m| m.point == point).collect())
}

/// Whether what `point` shows is LiteFS's own FUSE mount (`fuse` or `fuse.litefs`, source
/// `litefs`). False if mountinfo cannot be read.
pub fn is_litefs_mount(point: &Path) -> bool {
    at(point).is_ok_and(|m| m.last().is_some_and(Mount::is_litefs))
}

/// Whether anything is mounted at exactly `point` (false if mountinfo cannot be read).
pub fn is_mount_point(point: &Path) -> bool {
    at(point).is_ok_and(|m| !m.is_empty())
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` (octal).
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = u32::from(oct[0] - b'0') * 64
                    + u32::from(oct[1] - b'0') * 8
                    + u32::from(oct[2] - b'0');
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The inverse of [`unescape`], on raw path bytes.
pub fn escape(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &c in path {
        if matches!(c, b' ' | b'\t' | b'\n' | b'\\') {
            out.extend_from_slice(format!("\\{c:03o}").as_bytes());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
97 22 0:48 / /tmp/with\\040space rw,nosuid,nodev,relatime shared:50 - fuse litefs-py rw,user_id=0
98 22 0:49 / /var/lib/lower rw,nosuid shared:51 - fuse.litefs litefs rw,user_id=0
not a mountinfo line
";

    #[test]
    fn parses_fields_and_unescapes_the_mount_point() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 3, "the malformed line is skipped");
        assert_eq!(m[1].id, 97);
        assert_eq!(m[1].parent_id, 22);
        assert_eq!(m[1].dev, "0:48");
        assert_eq!(m[1].point, PathBuf::from("/tmp/with space"));
        assert_eq!(m[1].fstype, "fuse");
        assert_eq!(m[1].source, "litefs-py");
        assert!(m[1].is_fuse() && m[2].is_fuse() && !m[0].is_fuse());
        assert!(m[2].is_litefs() && !m[1].is_litefs() && !m[0].is_litefs());
        assert_eq!(m[2].fstype, "fuse.litefs");
        assert!(m[2].is_litefs() && !m[1].is_litefs() && !m[0].is_litefs());
    }

    #[test]
    fn escape_and_unescape_are_inverse() {
        let raw = b"/mnt/a b\\c\td";
        let esc = escape(raw);
        assert_eq!(esc, b"/mnt/a\\040b\\134c\\011d");
        assert_eq!(unescape(std::str::from_utf8(&esc).unwrap()).as_bytes(), raw);
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(
            unescape("/trailing\\04"),
            "/trailing\\04",
            "a short escape is literal"
        );
        assert_eq!(
            unescape("\\777"),
            "\\777",
            "out of a byte's range is literal"
        );
    }

    #[test]
    fn reads_this_process_mount_table() {
        let all = read().expect("/proc/self/mountinfo");
        assert!(all.iter().any(|m| m.point == Path::new("/")), "{all:?}");
        assert!(is_mount_point(Path::new("/")));
        assert!(!is_mount_point(Path::new("/definitely/not/a/mount")));
    }
}
