//! Thin wrappers over the few system interfaces the benchmark reads or pokes: /proc files,
//! the page cache, and raw syscalls timed without allocation (mount tables: the test kit).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Paths are turned into C strings once, outside timed loops, so the loops measure syscalls only.
pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("benchmark paths contain no NUL")
}

pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Writes dirty pages back and empties the page, dentry and inode caches, so the next reads
/// come from the disk (needs root).
pub fn drop_caches() -> Result<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", b"3")
        .context("writing /proc/sys/vm/drop_caches (cold-cache runs need root)")
}

/// Read syscalls the process made. fuser reads one request per read(2) on /dev/fuse, and the
/// shim reads no lower file data itself while passthrough is active, so a delta of this is the
/// number of FUSE requests the daemon received.
pub fn proc_syscr(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("syscr:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A `/proc/<pid>/status` field given in kB (VmRSS, VmHWM), in kB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Online CPUs of the machine, whatever this process's affinity (`--cpu` narrows that).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

pub fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("model name")?
            .split_once(':')
            .map(|(_, v)| v.trim().to_string())
    })
}

pub fn mem_total_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// stat(2) into a reused buffer: Ok(()) or the errno.
pub fn stat(path: &CString) -> Result<(), i32> {
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and buffer.
    if unsafe { libc::stat(path.as_ptr(), &mut st) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

pub fn open(path: &CString, flags: i32, mode: libc::mode_t) -> io::Result<i32> {
    // SAFETY: valid path.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

pub fn close(fd: i32) -> io::Result<()> {
    // SAFETY: the caller owns fd.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// F_SETLK on one byte, never blocking.
pub fn setlk(fd: i32, typ: i32, byte: i64) -> io::Result<()> {
    // SAFETY: zeroed flock is valid; fields set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = byte;
    fl.l_len = 1;
    // SAFETY: valid fd and flock.
    if unsafe { libc::fcntl(fd, libc::F_SETLK, &fl) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
