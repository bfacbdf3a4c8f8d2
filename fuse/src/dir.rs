//! Directory listings.
//!
//! A directory handle reads the whole lower listing once (at `opendir`, and again on a rewind)
//! and serves `readdir` offsets as indexes into that snapshot. Lower `d_off` cookies are opaque
//! (hashes on ext4) and cannot be mixed with the virtual files' entries; a snapshot can, and
//! POSIX allows a listing not to reflect changes made after it started.

use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use fuser::FileType;

use crate::sys;

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: Box<[u8]>,
}

impl DirEntry {
    pub fn is_dot_or_dotdot(&self) -> bool {
        &*self.name == b"." || &*self.name == b".."
    }
}

pub fn kind_from_mode(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn kind_from_dtype(dtype: u8) -> Option<FileType> {
    Some(match dtype {
        libc::DT_DIR => FileType::Directory,
        libc::DT_REG => FileType::RegularFile,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => return None,
    })
}

/// Reads every entry of the directory open at `fd` (including "." and "..").
pub fn read_all(fd: BorrowedFd<'_>) -> io::Result<Vec<DirEntry>> {
    // The listing starts from offset 0 whatever the fd's position is.
    sys::lseek(fd, 0, libc::SEEK_SET)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = sys::getdents64(fd, &mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        let mut pos = 0;
        while pos + 19 <= n {
            // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
            let rec = &buf[pos..n];
            let ino = u64::from_ne_bytes(rec[0..8].try_into().expect("8 bytes"));
            let reclen = u16::from_ne_bytes(rec[16..18].try_into().expect("2 bytes")) as usize;
            let dtype = rec[18];
            if reclen < 19 || reclen > rec.len() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let name_field = &rec[19..reclen];
            let len = name_field
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_field.len());
            let name: Box<[u8]> = name_field[..len].into();
            let kind = match kind_from_dtype(dtype) {
                Some(k) => k,
                None => {
                    let st = sys::with_name(OsStr::from_bytes(&name), |c| sys::stat_at(fd, c))?;
                    kind_from_mode(st.st_mode)
                }
            };
            out.push(DirEntry { ino, kind, name });
            pos += reclen;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn lists_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..500 {
            std::fs::write(dir.path().join(format!("file-{i:04}")), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let f = std::fs::File::open(dir.path()).unwrap();
        let entries = read_all(f.as_fd()).unwrap();
        assert_eq!(entries.len(), 503);
        assert!(
            entries
                .iter()
                .any(|e| &*e.name == b"sub" && e.kind == FileType::Directory)
        );
        assert!(
            entries
                .iter()
                .any(|e| &*e.name == b"file-0499" && e.kind == FileType::RegularFile)
        );
        assert_eq!(entries.iter().filter(|e| e.is_dot_or_dotdot()).count(), 2);
        // A second read starts over.
        assert_eq!(read_all(f.as_fd()).unwrap().len(), 503);
    }
}
