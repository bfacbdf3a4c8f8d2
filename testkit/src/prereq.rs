//! What a real-mount test needs, and what it does when the machine lacks it: locally it says so
//! and passes; on CI (`CI=true`) it fails, because a skipped test there would hide that nothing
//! was tested.

use std::path::{Path, PathBuf};

/// Skips the test with a line saying why, or fails it when `CI=true`.
#[track_caller]
pub fn skip_or_fail(why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    assert!(!ci, "CI=true and this test cannot run: {why}");
    eprintln!("SKIPPED: {why}");
}

/// Root and /dev/fuse.
pub fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() }) == 0 && Path::new("/dev/fuse").exists()
}

/// The LiteFS binary if the real-LiteFS tests can run here (root, /dev/fuse, a binary), else
/// `None` after [`skip_or_fail`].
#[track_caller]
pub fn litefs() -> Option<PathBuf> {
    if !can_mount() {
        skip_or_fail("needs root and /dev/fuse");
        return None;
    }
    match crate::litefs::find_binary(None) {
        Ok(b) => Some(b),
        Err(why) => {
            skip_or_fail(&why);
            None
        }
    }
}
