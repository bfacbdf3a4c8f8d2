//! `litefs-py mount`: the shim in the foreground until SIGINT/SIGTERM; with a config file, the
//! raft node too (on its own tokio runtime; the FUSE session keeps its own threads).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::Config;
use crate::node::Node;
use anyhow::Context;
use litefs_py_fuse::{ClusterView, DataPath, MountOptions, StateHandle};

use super::args::{DataPathArg, MountArgs};

/// How long files still open on the detached mount get before the connection is aborted.
const UNMOUNT_GRACE: Duration = Duration::from_secs(2);

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..len]) {
            return s.to_string();
        }
    }
    "localhost".to_string()
}

pub fn run(args: MountArgs) -> anyhow::Result<()> {
    let config = match Config::find(args.config.as_deref())? {
        Some(path) => Some(Config::load(&path)?),
        None => None,
    };
    let lower = args
        .lower
        .clone()
        .or_else(|| config.as_ref().map(|c| c.mount.lower.clone()))
        .unwrap_or_else(crate::config::default_lower);
    let mut opts = MountOptions::new(&lower, &args.mountpoint);
    opts.data_path = match (args.data_path, config.as_ref()) {
        (Some(DataPathArg::Auto), _) | (None, None) => DataPath::Auto,
        (Some(DataPathArg::Passthrough), _) => DataPath::Passthrough,
        (Some(DataPathArg::Symlink), _) => DataPath::Symlink,
        (None, Some(c)) => c.mount.data_path.for_shim(),
    };
    opts.allow_other = args.allow_other;
    if let Some(n) = args.threads {
        opts.threads = n as usize;
    }
    opts.auto_unmount = !args.no_auto_unmount;

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }

    // With a config: the raft node decides what the files say. Without: a one-node cluster,
    // primary, no raft at all (the embedded default).
    let (state, daemon) = match &config {
        Some(config) => {
            let node = Node::builder(config)
                .hostname(args.hostname.clone())
                .start()?;
            (node.state().clone(), Some(node))
        }
        None => {
            let name = args.hostname.unwrap_or_else(hostname);
            (StateHandle::new(ClusterView::single_node(name)), None)
        }
    };
    let result = serve(&opts, state, &stop);
    if let Some(daemon) = daemon {
        daemon.shutdown();
    }
    result
}

/// Mounts and serves until a signal or an unmount from outside.
fn serve(opts: &MountOptions, state: StateHandle, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut shim = litefs_py_fuse::mount(opts, state)?;
    while !stop.load(Ordering::Relaxed) {
        if shim.session_ended() {
            tracing::info!("the mount was unmounted from outside; exiting");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("signal received; unmounting");
    shim.unmount_with_grace(UNMOUNT_GRACE)
        .context("unmounting")?;
    Ok(())
}
