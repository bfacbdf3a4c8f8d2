//! `litefs-py witness`: a raft voter only, until SIGINT/SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::Config;
use crate::node::Node;
use anyhow::Context;

use super::args::WitnessArgs;

pub fn run(args: WitnessArgs) -> anyhow::Result<()> {
    let config = Config::find_and_load(args.config.as_deref())?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let daemon = Node::builder(&config).witness().start()?;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("signal received; stopping");
    daemon.shutdown();
    Ok(())
}
