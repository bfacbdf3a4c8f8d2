//! The command line. Parsing only: each command turns its arguments into typed options.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// The LiteFS release litefs-py is built and tested against.
pub const LITEFS_VERSION: &str = "v0.5.14";

#[derive(Debug, Parser)]
#[command(
    name = "litefs-py",
    version,
    about = "High availability for SQLite apps on LiteFS, without Consul"
)]
pub struct Cli {
    /// Log filter: error, warn, info, debug, trace, or a tracing directive such as
    /// `litefs_py_fuse=debug`. Defaults to $LITEFS_PY_LOG, else info.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount the shim over a lower dir (LiteFS's FUSE dir, or any directory) in the foreground.
    ///
    /// Everything passes through to the lower dir; `.primary`, `.role` and `.health` are
    /// answered by litefs-py. Without a cluster this node is a one-node cluster and primary.
    /// SIGINT or SIGTERM unmounts and exits 0; if the process dies, a watchdog unmounts.
    Mount(MountArgs),
    /// Print the litefs-py version and the LiteFS version it expects.
    Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataPathArg {
    /// Every file is a shim file: data via kernel passthrough, locks forwarded per owner.
    Passthrough,
    /// Regular files appear as symlinks into the lower dir: SQLite's I/O and locks bypass
    /// the shim (tools that refuse symlinks, O_NOFOLLOW, will not open them).
    Symlink,
}

#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// Where the app sees its files.
    pub mountpoint: PathBuf,

    /// The directory to pass through to: LiteFS's FUSE dir (`fuse.dir` in litefs.yml).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/litefs-py/lower")]
    pub lower: PathBuf,

    /// How database files reach the app.
    #[arg(long, value_enum, default_value_t = DataPathArg::Passthrough)]
    pub data_path: DataPathArg,

    /// Let other users (e.g. an app running as www-data) use the mount.
    #[arg(long)]
    pub allow_other: bool,

    /// FUSE worker threads [default: number of CPUs, between 2 and 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: Option<u16>,

    /// The name `.primary` shows for this node on the other nodes [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// Do not fork the watchdog that unmounts if this process is killed.
    #[arg(long)]
    pub no_auto_unmount: bool,
}
