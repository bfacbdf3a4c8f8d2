//! A slow disk under raft's data dir. Each node's `raft/` is an ext4 filesystem of its own on a
//! loop device (a sparse image in the harness's dir); a slow-disk fault moves the node's
//! processes into a cgroup of ours (cgroup.rs: v1 blkio, else v2 io) whose throttle allows that
//! loop device only a few read and write operations per second, and moves them back afterwards. raft commits with
//! fsync (redb, `Durability::Immediate`), and the pages an fsync writes are submitted by the
//! fsyncing thread, so its commits wait for the throttle.
//!
//! Not device-mapper's `delay` target: this kernel has no device-mapper (CONFIG_MD is off, no
//! /dev/mapper/control, no modules to load), while the blkio throttle is built in; see
//! docs/decisions.md. Everything is undone on drop: the throttle lifted, processes moved back,
//! cgroups removed, filesystems unmounted, loop devices detached, images deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use litefs_py_testkit::process;

/// Size of each node's raft filesystem (sparse: only what raft writes takes space).
const IMAGE_BYTES: u64 = 512 << 20;

fn run(program: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = process::output_within(cmd, Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("{program} {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One node's raft filesystem.
struct Disk {
    image: PathBuf,
    loop_dev: Option<String>,
    mount: Option<PathBuf>,
    /// `major:minor` of the loop device.
    dev: String,
}

/// The nodes' raft filesystems; declared before the cluster, so dropped after its nodes stopped
/// (the nodes detach their mounts when dropped; see `RunNode::data_mount`).
pub struct Disks {
    dir: tempfile::TempDir,
    disks: BTreeMap<u64, Disk>,
}

impl Disks {
    /// Checks the tools; images go in a temp dir under `parent`.
    pub fn new(parent: &Path) -> Result<Disks> {
        for tool in ["losetup", "mkfs.ext4", "mount"] {
            let mut v = Command::new(tool);
            v.arg("--version");
            process::output_within(v, Duration::from_secs(10)).map_err(|e| {
                anyhow::anyhow!("{tool}: {e}: install util-linux and e2fsprogs (scripts/setup)")
            })?;
        }
        let dir = tempfile::Builder::new()
            .prefix("litefs-nemesis-disks-")
            .tempdir_in(parent)
            .context("creating the disks' dir")?;
        Ok(Disks {
            dir,
            disks: BTreeMap::new(),
        })
    }

    /// Makes node `id`'s filesystem and mounts it at `at` (its `raft/`, created if missing).
    pub fn attach(&mut self, id: u64, at: &Path) -> Result<()> {
        let image = self.dir.path().join(format!("raft-n{id}.img"));
        let f = std::fs::File::create(&image).context("creating a disk image")?;
        f.set_len(IMAGE_BYTES).context("sizing a disk image")?;
        drop(f);
        let mut disk = Disk {
            image: image.clone(),
            loop_dev: None,
            mount: None,
            dev: String::new(),
        };
        let img = image.to_string_lossy().to_string();
        let dev = run("losetup", &["--find", "--show", &img])?;
        disk.loop_dev = Some(dev.clone());
        // Inserted now, so that drop detaches the loop device if anything below fails.
        self.disks.insert(id, disk);
        let disk = self.disks.get_mut(&id).expect("just inserted");
        let name = dev.trim_start_matches("/dev/");
        disk.dev = std::fs::read_to_string(format!("/sys/block/{name}/dev"))
            .with_context(|| format!("reading {dev}'s device number"))?
            .trim()
            .to_string();
        run("mkfs.ext4", &["-q", "-F", &dev])?;
        std::fs::create_dir_all(at).with_context(|| format!("creating {}", at.display()))?;
        run("mount", &[&dev, &at.to_string_lossy()])?;
        disk.mount = Some(at.to_path_buf());
        Ok(())
    }

    /// `major:minor` of node `id`'s raft disk.
    pub fn dev(&self, id: u64) -> Option<&str> {
        self.disks.get(&id).map(|d| d.dev.as_str())
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        for (id, d) in std::mem::take(&mut self.disks) {
            // The node's guard detached it already, unless the cluster never got that far.
            if let Some(m) = &d.mount
                && let Err(e) = litefs_py_testkit::mount::detach(m)
            {
                eprintln!("nemesis: unmounting node {id}'s raft disk: {e}");
            }
            // A lazily unmounted filesystem still in use keeps the device: detaching then marks
            // it to go when the last user does (the kernel's autoclear).
            if let Some(dev) = &d.loop_dev
                && let Err(e) = run("losetup", &["-d", dev])
            {
                eprintln!("nemesis: detaching {dev}: {e:#}");
            }
            let _ = std::fs::remove_file(&d.image);
        }
    }
}
