//! `litefs-py run`: the container entrypoint. It starts, in this order, and stops in reverse:
//!
//! 1. the raft node with the lease API (required: LiteFS cannot follow the cluster without it);
//! 2. LiteFS (`litefs mount -config <generated litefs.yml>`), waiting (bounded) until its FUSE
//!    mount is up at `mount.lower` and its HTTP API answers;
//! 3. the FUSE shim at `mount.dir` over `mount.lower`;
//! 4. once LiteFS is primary or has caught up with one (what LiteFS waits for before its own
//!    `exec`), the app, with `LITEFS_DIR=<mount.dir>`.
//!
//! With `proxy:` configured, the proxy starts right after the node and stops right before the
//! app, after a stop handoff ([`proxy`]).
//!
//! A stop signal (SIGTERM/SIGINT) on the node whose LiteFS is primary hands the primary off
//! first, through the same steps as `litefs-py handoff` ([`crate::handoff`]), bounded by
//! `run.stop-handoff-timeout`; the app gets the signal once that is done, so it serves (and its
//! writes pause about a second) meanwhile. The app's own exit on the primary hands off the same
//! way (docs/decisions.md, "A crashed app on the primary hands off"). `run.handoff-on-stop:
//! false` or `--no-handoff` skips it. A failed or timed-out handoff is logged and the stop goes
//! on: the others fail over.
//!
//! Shutdown (SIGTERM/SIGINT, or any of the three ending): the app first (the signal passed on,
//! `run.grace` to exit, then SIGKILL), then the shim is unmounted, then LiteFS gets SIGTERM
//! while the lease API still answers (so it releases the lease), SIGKILL and a lazy unmount of
//! its mount as the fallback, and raft last. Exit codes: see [`exit`].
//!
//! Everything runs on the calling thread except the signal thread, LiteFS's log readers, the
//! health probe ([`crate::litefs::probe`]) and the node's runtime.
//!
//! This sits above [`crate::node`]: it starts a node, then LiteFS ([`crate::litefs::process`]),
//! the shim and the app.

pub mod children;
mod leftovers;
pub mod migrate;
mod proxy;
mod supervisor;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use litefs_py_fuse::MountError;

use self::children::Events;
use self::leftovers::{LeftoverError, Owner};
use self::supervisor::Supervisor;
use crate::config::{Config, ConfigError, LeaseToken};
use crate::litefs::process::{ProcessError, is_mount_point, litefs_binary};
use crate::litefs::state::LiteFsState;
use crate::litefs::yaml::{self, LiteFsConfigError};
use crate::node::Node;

/// Exit statuses of `litefs-py run` besides the app's own (which it passes on: its exit code,
/// or 128 + the signal that killed it).
pub mod exit {
    /// litefs-py could not start: a bad config, no LiteFS binary, a port in use, LiteFS's mount
    /// or API not up in time, the shim's mount refused.
    #[allow(dead_code)] // What `cli_main` returns for every error, `run`'s included.
    pub const STARTUP: i32 = 1;
    /// LiteFS exited (or was killed) while litefs-py ran.
    pub const LITEFS_EXITED: i32 = 70;
    /// The shim's mount went away (unmounted from outside).
    pub const SHIM_GONE: i32 = 71;
    /// This node's raft stopped (a fatal error) or its lease API stopped serving.
    pub const RAFT_STOPPED: i32 = 72;
    /// LiteFS was fenced: its primary lease ran out with no renewal granted (this process was
    /// stalled), so the fencer killed it; or the fencer itself ended. Restart `run`.
    pub const FENCED: i32 = 73;
    /// The app's command is not executable.
    pub const APP_NOT_EXECUTABLE: i32 = 126;
    /// The app's command was not found.
    pub const APP_NOT_FOUND: i32 = 127;
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    LiteFsConfig(#[from] LiteFsConfigError),
    #[error(transparent)]
    LiteFs(#[from] ProcessError),
    #[error("{0:#}")]
    Daemon(anyhow::Error),
    /// The cause is in the message, not in `source()`: printed as a chain it would repeat.
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error("LiteFS did not come up within {timeout:?}: {missing}; {tail}")]
    NotUp {
        timeout: Duration,
        missing: String,
        tail: String,
    },
    /// Not `#[from]` (which would make the mount error the `source()` too, printed twice).
    #[error("mounting the shim: {0}")]
    Mount(MountError),
    #[error(transparent)]
    Leftover(#[from] LeftoverError),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    #[error(
        "the schema did not arrive within run.migrate-timeout ({timeout:?}): {why}; the app was \
         not started. Is the primary's migrate command failing (see its node's log)? Raise \
         run.migrate-timeout for long migrations"
    )]
    MigrateTimeout { timeout: Duration, why: String },
}

impl From<MountError> for RunError {
    fn from(e: MountError) -> RunError {
        RunError::Mount(e)
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |error| RunError::Io { what, error }
}

/// What `run` is told to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: Config,
    /// The app: program and arguments.
    pub command: Vec<OsString>,
    /// `run.grace`, or `--grace`.
    pub grace: Duration,
    /// `run.handoff-on-stop`, unless `--no-handoff`.
    pub handoff_on_stop: bool,
    /// `run.stop-handoff-timeout`.
    pub stop_handoff_timeout: Duration,
    /// Where the generated litefs.yml goes.
    pub litefs_config: PathBuf,
    /// FUSE `allow_other` on the shim (an app running as another user).
    pub allow_other: bool,
    /// This run's lease API token, new each run: the lease API and the LiteFS it starts share
    /// it, nothing else has it.
    pub lease_token: LeaseToken,
    /// `--migrate` / `run.migrate`: a shell command the primary runs before its app starts
    /// (and again when a node becomes primary in a new raft term); replicas start their app
    /// once its result has replicated ([`migrate`]).
    pub migrate: Option<String>,
    /// `run.migrate-timeout`: how long a replica waits for the schema.
    pub migrate_timeout: Duration,
}

impl RunOptions {
    /// The options `config` gives (its `run:` section), and a new lease token.
    pub fn new(config: Config, command: Vec<OsString>) -> Result<RunOptions, RunError> {
        let lease_token = LeaseToken::generate().map_err(io("making the lease API token"))?;
        Ok(RunOptions {
            grace: config.run.grace,
            migrate: config.run.migrate.clone(),
            migrate_timeout: config.run.migrate_timeout,
            handoff_on_stop: config.run.handoff_on_stop,
            stop_handoff_timeout: config.run.stop_handoff_timeout,
            litefs_config: config.run.litefs_config_path(&config.cluster.data_dir),
            config,
            command,
            allow_other: false,
            lease_token,
        })
    }
}

/// Runs everything until the app, LiteFS or the shim ends, or a signal says stop; returns the
/// exit status for the process. An `Err` is a start-up failure (exit status [`exit::STARTUP`]);
/// whatever was started is stopped by then.
pub fn run(opts: RunOptions) -> Result<i32, RunError> {
    if opts.command.is_empty() {
        return Err(RunError::Invalid(
            "no command to run: litefs-py run --config FILE -- CMD ARGS...".into(),
        ));
    }
    // Before anything starts, so that no signal and no child's exit is missed.
    let events = Events::start().map_err(io("installing signal handlers"))?;
    let binary = litefs_binary(opts.config.litefs.binary.as_deref())?;
    let litefs_yml = yaml::generate(&opts.config)?;
    preflight(&opts.config)?;
    write_litefs_config(&opts.litefs_config, &litefs_yml)?;
    let state = LiteFsState::new();
    let daemon = Node::builder(&opts.config)
        .litefs(state.clone())
        .lease_token(opts.lease_token.clone())
        .start()
        .map_err(RunError::Daemon)?;
    let proxy = match proxy::start(&opts.config, &daemon) {
        Ok(p) => p,
        Err(e) => {
            daemon.shutdown();
            return Err(e.into());
        }
    };
    // The supervisor stops the proxy right before the app (after a stop handoff).
    let mut sup = Supervisor::new(opts, events, state, daemon, proxy, current_umask());
    let result = sup.start_and_watch(&binary);
    sup.shutdown();
    result
}

/// Directories exist (created if missing), and nothing is mounted at `mount.dir` yet.
fn preflight(config: &Config) -> Result<(), RunError> {
    let m = &config.mount;
    if m.lower.starts_with(&m.dir) {
        return Err(RunError::Invalid(format!(
            "mount.lower {} is inside mount.dir {}: the shim would hide it",
            m.lower.display(),
            m.dir.display()
        )));
    }
    // First: a dead mount there makes even `create_dir_all` fail (ENOTCONN, then EEXIST).
    // LiteFS would unmount a dead mount at mount.lower itself, but the kernel may give its new
    // mount the very id the dead one had, and `LiteFs::mount_appeared` tells LiteFS's mount
    // apart by id: start-up would time out.
    leftovers::clear(&m.dir, Owner::Shim)?;
    leftovers::clear(&m.lower, Owner::LiteFs)?;
    for (key, dir) in [
        ("mount.dir", &m.dir),
        ("mount.lower", &m.lower),
        ("litefs.data-dir", &config.litefs.data_dir),
        ("cluster.data-dir", &config.cluster.data_dir),
    ] {
        std::fs::create_dir_all(dir).map_err(io(format!("{key} {}", dir.display())))?;
    }
    if is_mount_point(&m.dir) {
        return Err(RunError::Invalid(format!(
            "mount.dir {} is already a mount point: unmount it (`umount {}`), or choose another mount.dir",
            m.dir.display(),
            m.dir.display()
        )));
    }
    Ok(())
}

fn write_litefs_config(path: &std::path::Path, yaml: &str) -> Result<(), RunError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(format!("{}", parent.display())))?;
    }
    // Mode 0600 from its creation (it names the data dir and the lease API), written whole
    // then renamed: a LiteFS started by hand meanwhile never reads half a file.
    crate::config::write_private(path, yaml.as_bytes())
        .map_err(io(format!("writing {}", path.display())))?;
    tracing::info!(path = %path.display(), "wrote LiteFS's config");
    Ok(())
}

fn current_umask() -> libc::mode_t {
    // SAFETY: umask has no preconditions; set and restored at once (single caller thread at
    // this point of start-up, and nothing else in the process creates files meanwhile).
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old
    }
}
